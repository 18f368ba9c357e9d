//! Gatehouse as the authorizer of a front proxy: real nginx with `auth_request` in front of real
//! nginx + `git http-backend`, asking `/.gatehouse/auth` before every request. A reader clones
//! and is refused a push, git is asked for credentials through the front proxy, a spoofed
//! identity header never reaches the upstream, and an address that is not a trusted front proxy
//! is refused. Every decision is on record.

use gatehouse_testkit::{AuthRequestProxy, GitHttpServer, TempDir, raw_http};

use crate::common::{POLICY, builder, clone_demo, commit_file, denial, head_of, repos};

/// Clones demo/hello from `base` with no credential configured: git must be asked for one
/// (through `GIT_ASKPASS`, which answers `user` and `token`) after the front proxy passes
/// Gatehouse's challenge on. Returns the git client and work tree, and the prompts git showed.
fn clone_when_prompted(
    tmp: &std::path::Path,
    base: &str,
    user: &str,
    token: &str,
    name: &str,
) -> (gatehouse_testkit::Git, std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let askpass = tmp.join(format!("askpass-{name}.sh"));
    let asked = tmp.join(format!("asked-{name}"));
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\ncase \"$1\" in Username*) echo {user} ;; *) echo '{token}' ;; esac\n",
            asked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let git = gatehouse_testkit::Git::new(&tmp.join(format!("home-{name}")))
        .env("GIT_ASKPASS", &askpass.to_string_lossy())
        .env("GIT_TERMINAL_PROMPT", "0");
    let work = tmp.join(name);
    git.ok(
        tmp,
        &[
            "clone",
            "-q",
            &format!("{base}/demo/hello.git"),
            &work.to_string_lossy(),
        ],
    );
    let prompts = std::fs::read_to_string(&asked).unwrap_or_default();
    (git, work, prompts)
}

#[test]
fn nginx_auth_request_decides_with_the_gateways_policy() {
    let tmp = TempDir::new("forward-auth");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra(
            "[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\nref_moves_in_body = \"decide_without_ref_rules\"\n",
        )
        .start();
    let front = AuthRequestProxy::start(gw.port, upstream.port);
    let dev = gw.token("alice", &["dev"]);
    let ci = gw.token("ci-bot", &["ci"]);
    let bare = root.join("demo/hello.git");

    // A reader clones through the front proxy and is refused a push; nothing reaches the
    // upstream.
    let (git, work) = clone_demo(tmp.path(), &front.url(), &ci, "ci");
    commit_file(&git, &work, "ci.txt", "from ci\n");
    let before = head_of(&bare, "main");
    let r = git.run(&work, &["push", "origin", "HEAD:refs/heads/ci"]);
    assert!(!r.ok, "ci pushed");
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(head_of(&bare, "ci").is_empty());
    assert_eq!(head_of(&bare, "main"), before);
    let record = denial(&gw, "ci's refused push through forward auth", |l| {
        l.contains(r#""event":"forward_auth""#) && l.contains(r#""subject":"ci-bot""#)
    });
    assert!(record.contains(r#""action":"git:write""#), "{record}");
    assert!(
        record.contains(r#""reason":"no_matching_permit""#),
        "{record}"
    );

    // A developer pushes; the upstream sees the identity Gatehouse named.
    let (git, work) = clone_demo(tmp.path(), &front.url(), &dev, "dev");
    commit_file(&git, &work, "dev.txt", "from dev\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/dev"]);
    assert!(!head_of(&bare, "dev").is_empty());

    // Without credentials git is asked for them: the challenge comes through the front proxy,
    // and git clones with a token as the password.
    let (_, _, prompts) = clone_when_prompted(tmp.path(), &front.url(), "ci-bot", &ci, "prompted");
    assert!(prompts.contains("Password"), "git was not asked: {prompts}");
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("User-Agent", "git/2.47.0")],
    );
    assert_eq!(status, 401, "{raw}");
    assert!(
        raw.contains("WWW-Authenticate: Basic realm=\"Gatehouse\""),
        "{raw}"
    );

    // A browser is sent to sign in, and back.
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/demo/hello/src/branch/main",
        &[("Accept", "text/html,application/xhtml+xml")],
    );
    assert_eq!(status, 302, "{raw}");
    assert!(
        raw.contains("/.gatehouse/login?return_to=/demo/hello/src/branch/main"),
        "{raw}"
    );

    // A client's own identity header is refused: the front proxy would pass it to the forge.
    let auth = format!("Bearer {dev}");
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/_echo",
        &[("Authorization", &auth), ("X-WEBAUTH-FULLNAME", "Admin")],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("identity_header_from_client"), "{raw}");
    // Without one, the upstream sees the identity Gatehouse named.
    let (status, raw) = raw_http(front.port, "GET", "/_echo", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("user=alice;"), "{raw}");
    // The endpoint is the front proxy's alone.
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/.gatehouse/auth",
        &[
            ("Authorization", &auth),
            ("X-Original-URI", "/demo/hello.git/info/refs"),
        ],
    );
    assert_eq!(status, 404, "{raw}");

    // A refusal's reason reaches the client through the front proxy.
    let ci_auth = format!("Bearer {ci}");
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/secret/repo.git/info/refs?service=git-upload-pack",
        &[("Authorization", &ci_auth)],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("no_matching_permit"), "{raw}");

    // What the front proxy would forward otherwise than Gatehouse reads it is refused: another
    // method or URI header set, a path with dot segments, a forge credential in the query.
    let ask = |headers: &[(&str, &str)]| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        raw_http(gw.port, "GET", "/.gatehouse/auth", &all)
    };
    for (headers, reason) in [
        (
            vec![
                (
                    "X-Original-URI",
                    "/demo/hello.git/info/refs?service=git-upload-pack",
                ),
                ("X-Forwarded-Uri", "/secret/repo.git/git-receive-pack"),
            ],
            "ambiguous_original_request",
        ),
        (
            vec![("X-Original-URI", "/secret/x/../../demo/hello.git/info/refs")],
            "unnormalized_path",
        ),
        (
            vec![(
                "X-Original-URI",
                "/demo/hello.git/info/refs?service=git-upload-pack&access_token=x",
            )],
            "forge_credential_in_query",
        ),
    ] {
        let (status, raw) = ask(&headers);
        assert_eq!(status, 403, "{headers:?}: {raw}");
        assert!(raw.contains(reason), "{headers:?}: {raw}");
    }

    // By default a push is refused: its per-ref rules cannot be applied without its body.
    let strict = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra("[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\n")
        .start();
    let strict_auth = format!("Bearer {}", strict.token("alice", &["dev"]));
    let (status, raw) = raw_http(
        strict.port,
        "GET",
        "/.gatehouse/auth",
        &[
            ("Authorization", &strict_auth),
            ("X-Original-URI", "/demo/hello.git/git-receive-pack"),
            ("X-Original-Method", "POST"),
        ],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("ref_rules_need_the_gateway"), "{raw}");

    // An address that is not a trusted front proxy is refused, whatever it says.
    let other = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra("[forward_auth]\ntrusted_proxies = [\"10.9.8.7\"]\n")
        .start();
    let (status, raw) = raw_http(
        other.port,
        "GET",
        "/.gatehouse/auth",
        &[
            ("Authorization", &auth),
            (
                "X-Original-URI",
                "/demo/hello.git/info/refs?service=git-receive-pack",
            ),
            ("X-Original-Method", "GET"),
        ],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("untrusted_front_proxy"), "{raw}");
    // ... and a trusted one must say which request it asks about.
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/.gatehouse/auth",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 400, "{raw}");
    assert!(raw.contains("missing_original_uri"), "{raw}");
}

/// The same with real Caddy (`forward_auth`, the Caddyfile of docs/forward-auth.md).
#[test]
fn caddy_forward_auth_decides_with_the_gateways_policy() {
    use gatehouse_testkit::CaddyForwardAuth;

    let tmp = TempDir::new("caddy-forward-auth");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra(
            "[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\nrequest_headers = \"forwarded\"\nref_moves_in_body = \"decide_without_ref_rules\"\n",
        )
        .start();
    let front = CaddyForwardAuth::start(gw.port, upstream.port);
    let dev = gw.token("alice", &["dev"]);
    let ci = gw.token("ci-bot", &["ci"]);
    let bare = root.join("demo/hello.git");

    // git is asked for credentials through Caddy (the challenge comes back as Gatehouse sent
    // it) and clones with a token as the password.
    let (git, work, prompts) =
        clone_when_prompted(tmp.path(), &front.url(), "ci-bot", &ci, "prompted");
    assert!(prompts.contains("Password"), "git was not asked: {prompts}");

    // The reader is refused a push; nothing reaches the upstream.
    commit_file(&git, &work, "ci.txt", "from ci\n");
    let before = head_of(&bare, "main");
    let r = git.run(&work, &["push", "origin", "HEAD:refs/heads/ci"]);
    assert!(!r.ok, "ci pushed");
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(head_of(&bare, "ci").is_empty());
    assert_eq!(head_of(&bare, "main"), before);
    let record = denial(&gw, "ci's refused push through Caddy", |l| {
        l.contains(r#""event":"forward_auth""#) && l.contains(r#""subject":"ci-bot""#)
    });
    assert!(record.contains(r#""action":"git:write""#), "{record}");

    // A developer pushes through Caddy.
    let (git, work) = clone_demo(tmp.path(), &front.url(), &dev, "dev");
    commit_file(&git, &work, "dev.txt", "from dev\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/dev"]);
    assert!(!head_of(&bare, "dev").is_empty());

    // The upstream sees the identity Gatehouse named, never the credential; a client's own
    // identity header is refused.
    let auth = format!("Bearer {dev}");
    let (status, raw) = raw_http(front.port, "GET", "/_echo", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("user=alice;"), "{raw}");
    assert!(raw.contains("authorization=;"), "{raw}");
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/_echo",
        &[("Authorization", &auth), ("X-WEBAUTH-USER", "root")],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("identity_header_from_client"), "{raw}");
    // The header set Caddy does not write is refused: a client could describe another request.
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/_echo",
        &[
            ("Authorization", &auth),
            ("X-Original-URI", "/secret/repo.git/info/refs"),
        ],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("ambiguous_original_request"), "{raw}");
    // The endpoint is Caddy's alone.
    let (status, _) = raw_http(
        front.port,
        "GET",
        "/.gatehouse/auth",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 404);

    // Behind a Caddy Gatehouse does not trust, every request is refused.
    let other = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra(
            "[forward_auth]\ntrusted_proxies = [\"10.9.8.7\"]\nrequest_headers = \"forwarded\"\n",
        )
        .start();
    let untrusted = CaddyForwardAuth::start(other.port, upstream.port);
    let (status, raw) = raw_http(untrusted.port, "GET", "/_echo", &[("Authorization", &auth)]);
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("untrusted_front_proxy"), "{raw}");
}

/// A CA, a server certificate for `gatehouse.test` and client certificates with URI names, all
/// signed by it, written to `dir`: (ca, server cert, server key, [(client cert, client key)]).
fn pki(dir: &std::path::Path, clients: &[&str]) -> (String, String, String, Vec<(String, String)>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf named like its issuer reads as self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = write("ca.crt", ca_cert.pem());
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<SanType>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name.push(DnType::CommonName, cn);
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (c, k) = leaf(
        vec![SanType::DnsName("gatehouse.test".try_into().unwrap())],
        "gatehouse.test",
    );
    let server = (write("server.crt", c), write("server.key", k));
    let clients = clients
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (c, k) = leaf(vec![SanType::URI((*name).try_into().unwrap())], name);
            (
                write(&format!("client{i}.crt"), c),
                write(&format!("client{i}.key"), k),
            )
        })
        .collect();
    (ca, server.0, server.1, clients)
}

/// A front proxy trusted by the name in its client certificate, not by its address: nginx asks
/// over TLS with its certificate; anyone else, with another certificate or none, is refused.
#[test]
fn a_front_proxy_is_trusted_by_its_client_certificate() {
    let tmp = TempDir::new("forward-auth-mtls");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let (ca, crt, key, clients) = pki(
        tmp.path(),
        &[
            "spiffe://example.test/front/nginx",
            "spiffe://example.test/intruder",
        ],
    );
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .server_extra(&format!(
            "tls = {{ cert_file = \"{crt}\", key_file = \"{key}\", client_ca_file = \"{ca}\" }}"
        ))
        .extra(
            "[forward_auth]\ntrusted_proxies = [\"10.9.8.7\"]\ntrusted_proxy_names = [\"spiffe://example.test/front/nginx\"]\nref_moves_in_body = \"decide_without_ref_rules\"\n",
        )
        .start();
    let front = AuthRequestProxy::start_tls(
        gw.port,
        upstream.port,
        std::path::Path::new(&clients[0].0),
        std::path::Path::new(&clients[0].1),
    );
    let dev = gw.token("alice", &["dev"]);
    let auth = format!("Bearer {dev}");

    // Through the trusted nginx: decided, and the upstream sees the identity.
    let (status, raw) = raw_http(front.port, "GET", "/_echo", &[("Authorization", &auth)]);
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("user=alice;"), "{raw}");
    let (git, work) = clone_demo(tmp.path(), &front.url(), &dev, "dev");
    commit_file(&git, &work, "dev.txt", "from dev\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/dev"]);

    // Directly, with another certificate from the same CA, or with none: refused.
    let ask = |cert: Option<&(String, String)>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca,
        ])
        .args([
            "--resolve",
            &format!("gatehouse.test:{}:127.0.0.1", gw.port),
        ])
        .args(["-H", &format!("Authorization: {auth}")])
        .args(["-H", "X-Original-URI: /_echo"]);
        if let Some((c, k)) = cert {
            cmd.args(["--cert", c, "--key", k]);
        }
        let out = cmd
            .arg(format!(
                "https://gatehouse.test:{}/.gatehouse/auth",
                gw.port
            ))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(ask(Some(&clients[0])), "200");
    assert_eq!(ask(Some(&clients[1])), "403");
    assert_eq!(ask(None), "403");
    let record = denial(&gw, "the intruder's question", |l| {
        l.contains(r#""event":"forward_auth""#) && l.contains("untrusted_front_proxy")
    });
    assert!(record.contains(r#""decision":"deny""#), "{record}");
}

/// Behind Caddy, which passes any answer on, a browser without a session is sent to sign in
/// and back (with `[session]` on); git still gets its challenge.
#[test]
fn caddy_sends_a_browser_to_sign_in_and_git_to_its_prompt() {
    use gatehouse_testkit::{CaddyForwardAuth, Idp};

    let tmp = TempDir::new("caddy-sign-in");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .with_idp_extra(Idp::shared(), "[issuers.login]\nclient_id = \"gatehouse\"\n")
        .policy(POLICY)
        .extra(
            "[session]\nexternal_url = \"https://git.example\"\n\n[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\nrequest_headers = \"forwarded\"\n",
        )
        .start();
    let front = CaddyForwardAuth::start(gw.port, upstream.port);
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/demo/hello/src/branch/main",
        &[("Accept", "text/html,application/xhtml+xml")],
    );
    assert_eq!(status, 302, "{raw}");
    assert!(
        raw.contains(
            "Location: https://git.example/.gatehouse/login?return_to=/demo/hello/src/branch/main"
        ),
        "{raw}"
    );
    let (status, raw) = raw_http(
        front.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("User-Agent", "git/2.47.0")],
    );
    assert_eq!(status, 401, "{raw}");
    // Caddy (Go) writes header names in its canonical case.
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"gatehouse\""),
        "{raw}"
    );
}
