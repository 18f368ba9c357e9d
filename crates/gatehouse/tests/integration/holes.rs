//! The smaller holes of issue 15, each with its allowed twin: an introspection answer without an
//! audience, an LFS batch `operation` read as Go reads it, names a forge cannot have, cross-site
//! writes with cached Basic credentials, and help text that must not print a token.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;

use std::time::Duration;

use gatehouse_testkit::{GitHttpServer, Idp, TempDir, raw_http, wait_for};

use crate::common::{POLICY, bin, builder, denial, repos};

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
fn real_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// FAULT INJECTION (a stand-in, named as such): an RFC 7662 introspection endpoint that answers
/// every token as active for alice, with `aud: "gatehouse"` when the token starts with `aud-`
/// and without any `aud` otherwise. oidc-provider always writes `aud`, so the answer the check is
/// about cannot come from the real IdP.
fn introspection_stand_in(issuer: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut rd = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if rd.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = rd.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).into_owned();
            let token = url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let exp = real_now() + 600;
            let mut answer = serde_json::json!({
                "active": true, "iss": issuer, "sub": "alice", "preferred_username": "alice",
                "groups": ["dev"], "exp": exp, "client_id": "somebody",
            });
            if token.starts_with("aud-") {
                answer["aud"] = "gatehouse".into();
            }
            let answer = answer.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    port
}

#[test]
fn an_introspection_answer_without_an_audience_is_refused() {
    let tmp = TempDir::new("introspect-aud");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let stand_in = introspection_stand_in(idp.issuer());
    let secret = tmp.path().join("introspection.secret");
    std::fs::write(&secret, "gatehouse-secret\n").unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(
            idp,
            &format!(
                "[issuers.introspection]\nendpoint = \"http://127.0.0.1:{stand_in}/introspect\"\nclient_id = \"gatehouse\"\nclient_secret = {{ file = \"{}\" }}",
                secret.display()
            ),
        )
        .policy(POLICY)
        .start();
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";
    // No `aud`: the answer does not say the token was meant for Gatehouse.
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", "Bearer opaque-token-without-audience")],
    );
    assert_eq!(s, 401, "{raw}");
    assert!(
        raw.contains("error_description=\"token audience is not accepted\""),
        "{raw}"
    );
    // The twin: the same answer naming Gatehouse's audience passes.
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", "Bearer aud-opaque-token")],
    );
    assert_eq!(s, 200, "{raw}");
}

/// Policy: dev may read LFS objects of demo/*, not write them; `api-writers` may write through
/// demo/*'s API, dev may not.
const LFS_AND_ECHO: &str = r#"
@id("dev-lfs-read")
permit(principal in Gatehouse::Group::"dev", action == Gatehouse::Action::"lfs:read",
       resource in Gatehouse::Owner::"demo");

@id("api-writers")
permit(principal in Gatehouse::Group::"api-writers", action == Gatehouse::Action::"repo:write",
       resource in Gatehouse::Owner::"demo");
"#;

#[test]
fn an_lfs_batch_is_read_as_the_forge_reads_it_and_forge_names_are_checked_on_every_route() {
    let tmp = TempDir::new("lfs-names");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(&format!("{POLICY}\n{LFS_AND_ECHO}"))
        .start();
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    let batch = |id: &str, body: &str| {
        let len = body.len().to_string();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        write!(
            s,
            "POST /demo/hello.git/info/lfs/objects/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {alice}\r\nX-Request-Id: {id}\r\nAccept: application/vnd.git-lfs+json\r\nContent-Type: application/vnd.git-lfs+json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    // Gitea decodes with Go's encoding/json: keys match without regard to case and the last one
    // wins, so this is an upload, which alice may not do.
    let r = batch(
        "lfs-upload-last-key",
        r#"{"operation":"download","Operation":"upload","objects":[]}"#,
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("lfs:write"), "{r}");
    let r = batch(
        "lfs-upload-upper-case",
        r#"{"OPERATION":"upload","objects":[]}"#,
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // Both refusals are on record as lfs:write denials (that they reached no upstream is checked
    // below: only the downloads' bodies reached nginx).
    for id in ["lfs-upload-last-key", "lfs-upload-upper-case"] {
        let rid = format!(r#""request_id":"{id}""#);
        let record = denial(&gw, id, |l| l.contains(&rid));
        assert!(record.contains(r#""action":"lfs:write""#), "{record}");
    }
    // The twins: a download, however spelled, is decided as one and forwarded, through the
    // production upstream path (nginx), with its body as the client sent it.
    let twins = [
        r#"{"operation":"download","objects":[{"oid":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":12}]}"#,
        r#"{"Operation":"upload","operation":"download","objects":[]}"#,
    ];
    for body in twins {
        let r = batch("lfs-download", body);
        assert!(r.starts_with("HTTP/1.1 200"), "{body}: {r}");
        assert!(r.contains(r#""transfer":"basic""#), "{body}: {r}");
    }
    // Only the two downloads reached the upstream, byte for byte. (nginx logs a request when it
    // has finished it, which may be just after the client has its answer.)
    let escaped: Vec<String> = twins.iter().map(|b| b.replace('"', "\\\"")).collect();
    let bodies = wait_for("nginx to log both batches", Duration::from_secs(10), || {
        let b = upstream.lfs_bodies();
        (b.len() >= escaped.len()).then_some(b)
    });
    assert_eq!(bodies, escaped);

    // An API write by a reader is refused, and nothing reaches the upstream; its allowed twin,
    // by a member of `api-writers`, goes through.
    let carol = format!("Bearer {}", gw.token("carol", &["api-writers"]));
    let post = |auth: &str, id: &str| {
        raw_http(
            gw.port,
            "POST",
            "/api/v1/repos/demo/hello/issues",
            &[
                ("Authorization", auth),
                ("X-Request-Id", id),
                ("Content-Length", "0"),
            ],
        )
    };
    let (s, raw) = post(&alice, "api-write-by-alice");
    assert_eq!(s, 403, "{raw}");
    let (s, raw) = post(&carol, "api-write-by-carol");
    assert_eq!(s, 201, "{raw}");
    // The refused write came first: had it reached nginx, it would be logged before this one.
    let writes = upstream.writes_through("api-write-by-carol");
    assert!(
        !writes.iter().any(|w| w.starts_with("api-write-by-alice ")),
        "{writes:?}"
    );
    gw.audit_when("the refused API write's record", |a| {
        a.lines().any(|l| {
            l.contains("\"request_id\":\"api-write-by-alice\"")
                && l.contains("\"decision\":\"deny\"")
                && l.contains("\"action\":\"repo:write\"")
        })
    });

    // Names a Gitea owner or repository cannot have are refused on every route, before any
    // policy: no Unicode spelling reaches a forge that might fold it onto another name.
    for path in [
        "/demo/hello%C4%B0/settings",
        "/%C4%B0demo/hello",
        "/demo/hello%C4%B0.git/info/refs?service=git-upload-pack",
        "/api/v1/repos/demo/hello%C4%B0",
        "/api/v1/users/adm%C4%B1n",
        "/api/v1/orgs/d%EF%BD%85mo/repos",
    ] {
        let (s, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &alice)]);
        assert_eq!(s, 400, "{path}: {raw}");
        assert!(raw.contains("bad_path"), "{path}: {raw}");
    }
    // The twins: the same routes with ASCII names reach the policy (which says no to these).
    for path in [
        "/demo/hello/settings",
        "/api/v1/users/admin",
        "/demo/hello/src/branch/main/%E6%96%87.txt",
    ] {
        let (s, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &alice)]);
        assert_eq!(s, 403, "{path}: {raw}");
    }
}

#[test]
fn a_cross_site_write_is_refused_whatever_credential_the_browser_replays() {
    let tmp = TempDir::new("cross-site");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .start();
    // The credential a browser caches after a Basic prompt, and replays to this site whoever
    // makes it send the request.
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("alice:{}", gw.token("alice", &["dev"])))
    );
    let post = |extra: &[(&str, &str)]| {
        let mut h = vec![("Authorization", basic.as_str()), ("Content-Length", "0")];
        h.extend_from_slice(extra);
        raw_http(gw.port, "POST", "/explore/_echo", &h)
    };
    // Each with its own request id, to find it upstream (it must not be there) and on record.
    for extra in [
        [
            ("Sec-Fetch-Site", "cross-site"),
            ("X-Request-Id", "cross-site-basic"),
        ],
        [
            ("Sec-Fetch-Site", "same-site"),
            ("X-Request-Id", "same-site-basic"),
        ],
        [
            ("Origin", "https://evil.example"),
            ("X-Request-Id", "evil-origin-basic"),
        ],
    ] {
        let (s, raw) = post(&extra);
        assert_eq!(s, 403, "{extra:?}: {raw}");
        assert!(raw.contains("cross_site_request"), "{extra:?}: {raw}");
    }
    // A Bearer token too: the rule is about where the request comes from.
    let bearer = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (s, raw) = raw_http(
        gw.port,
        "POST",
        "/explore/_echo",
        &[
            ("Authorization", &bearer),
            ("Sec-Fetch-Site", "cross-site"),
            ("X-Request-Id", "cross-site-bearer"),
            ("Content-Length", "0"),
        ],
    );
    assert_eq!(s, 403, "{raw}");
    // The twins: the same write from the site itself, and from a client that is no browser.
    let (s, raw) = post(&[("Sec-Fetch-Site", "same-origin")]);
    assert_eq!(s, 200, "{raw}");
    let (s, raw) = post(&[("Origin", "http://127.0.0.1")]);
    assert_eq!(s, 200, "{raw}");
    let (s, raw) = post(&[("X-Request-Id", "no-browser-twin")]);
    assert_eq!(s, 200, "{raw}");
    // None of the refused writes reached the upstream: had one, nginx would have logged it before
    // this last twin, sent after them all. Each is on record as refused.
    let writes = upstream.writes_through("no-browser-twin");
    for id in [
        "cross-site-basic",
        "same-site-basic",
        "evil-origin-basic",
        "cross-site-bearer",
    ] {
        assert!(
            !writes.iter().any(|w| w.starts_with(&format!("{id} "))),
            "{id} reached the upstream: {writes:?}"
        );
        let rid = format!(r#""request_id":"{id}""#);
        let record = denial(&gw, id, |l| l.contains(&rid));
        assert!(
            record.contains(r#""path":"/explore/_echo""#)
                && record.contains(r#""status":403"#)
                && record.contains(r#""reason":"cross_site_request""#),
            "{record}"
        );
    }
    // A cross-site read is not refused for being cross-site.
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &basic), ("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(s, 200, "{raw}");
}

/// Every subcommand's `--help`, two levels deep, with a token in the environment: none prints it.
#[test]
fn no_help_text_prints_a_token_from_the_environment() {
    const SENTINEL: &str = "sentinel-token-value-4f1d";
    let help = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--help")
            .env("GATEHOUSE_TOKEN", SENTINEL)
            .env("GATEHOUSE_CONFIG", "/nonexistent/gatehouse.toml")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top = help(&[]);
    let mut seen = 0;
    for sub in commands(&top) {
        let text = help(&[&sub]);
        assert!(
            !text.contains(SENTINEL),
            "`gatehouse {sub} --help` printed the token"
        );
        seen += 1;
        for subsub in commands(&text) {
            let text = help(&[&sub, &subsub]);
            assert!(
                !text.contains(SENTINEL),
                "`gatehouse {sub} {subsub} --help` printed the token"
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "too few commands found in:\n{top}");
    // The twin: the option is still documented as read from the environment.
    assert!(help(&["ssh-cert"]).contains("GATEHOUSE_TOKEN"));
}
