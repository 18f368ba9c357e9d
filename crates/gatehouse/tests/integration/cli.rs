use std::process::Command;
use std::time::Duration;

use gatehouse_testkit::{
    Child, GitHttpServer, TempDir, hand_over, local_listener, raw_http, wait_for,
};

use crate::common::{POLICY, bin, builder, denials_in, head_of, ref_of, repos};

/// Starts `gatehouse quickstart --dir DIR ARGS...` and waits for its banner.
/// Starts `gatehouse quickstart` listening on `sockets` (`("--listen", socket)`, ...): each is
/// handed over as systemd socket activation does, so its port is known before the start and never
/// released in between.
fn start_quickstart(
    tmp: &std::path::Path,
    dir: &std::path::Path,
    sockets: &[(&str, &std::net::TcpListener)],
) -> (Child, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["quickstart", "--dir", &dir.to_string_lossy()]);
    for (flag, s) in sockets {
        cmd.arg(flag).arg(s.local_addr().unwrap().to_string());
    }
    let handed: Vec<&std::net::TcpListener> = sockets.iter().map(|(_, s)| *s).collect();
    hand_over(&mut cmd, &handed);
    cmd.env("LISTEN_FDS", handed.len().to_string());
    let mut qs = Child::spawn("quickstart", &mut cmd, &tmp.join("quickstart.out"));
    let text = wait_for("the quickstart banner", Duration::from_secs(60), || {
        assert!(qs.is_running(), "quickstart exited:\n{}", qs.log_text());
        let t = qs.log_text();
        t.contains("Press Ctrl-C").then_some(t)
    });
    (qs, text)
}

/// Runs a shell script as alice would: in `work` (also her HOME), with git's identity set, no
/// prompts, and the `gatehouse` binaries on PATH.
fn run_as_alice(work: &std::path::Path, script: &str) -> std::process::Output {
    let bin_dir = bin().parent().unwrap().to_owned();
    Command::new("bash")
        .args(["-c", script])
        .current_dir(work)
        .env("HOME", work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.test")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.test")
        .output()
        .unwrap()
}

/// `gatehouse quickstart` prints commands; they are run exactly as printed.
#[test]
fn quickstart_prints_commands_that_work_as_printed() {
    let tmp = TempDir::new("quickstart");
    let dir = tmp.path().join("qs");
    let (main, admin) = (local_listener(), local_listener());
    let (mut qs, text) = start_quickstart(
        tmp.path(),
        &dir,
        &[("--listen", &main), ("--admin-listen", &admin)],
    );
    drop((main, admin)); // the quickstart holds them now
    // Its log (text format) goes to a file here, not a terminal: no colour codes in it.
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );
    assert!(text.contains("gatehouse listening"), "{text}");
    assert!(dir.join("repos/demo/hello.git/HEAD").exists());
    assert!(dir.join("keys/signing.pem").exists());
    let block = |title: &str, n: usize| -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(title))
            .unwrap_or_else(|| panic!("no `{title}` in\n{text}"));
        lines[at + 1..at + 1 + n]
            .iter()
            .map(|l| l.trim().to_owned())
            .collect()
    };
    let export_lines = block("Tokens (12 hours):", 3);
    let exports: Vec<&str> = export_lines.iter().map(String::as_str).collect();
    assert!(exports.iter().all(|e| e.starts_with("export ")), "{text}");
    let alice_cmds = block("Clone and push as alice:", 3);
    let denied_cmd = block("See a push denied", 1);
    assert!(
        alice_cmds[0].starts_with("git ") && alice_cmds[0].contains("clone"),
        "{alice_cmds:?}"
    );

    let work = tmp.path().join("user");
    std::fs::create_dir_all(&work).unwrap();
    // As on a fresh machine: no git identity configured, and none guessed from the host.
    let script = format!(
        "set -e\nunset GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL\n\
         export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=user.useConfigOnly GIT_CONFIG_VALUE_0=true\n\
         {}\n{}\n{}\n{}\n",
        exports
            .iter()
            .map(|e| e.split('#').next().unwrap_or(e).trim())
            .collect::<Vec<_>>()
            .join("\n"),
        alice_cmds[0],
        alice_cmds[1],
        alice_cmds[2]
    );
    let run = |script: &str| run_as_alice(&work, script);
    let o = run(&script);
    assert!(
        o.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let denied = format!(
        "{}\ncd hello\n{}\n",
        exports
            .iter()
            .map(|e| e.split('#').next().unwrap_or(e).trim())
            .collect::<Vec<_>>()
            .join("\n"),
        denied_cmd[0]
    );
    let bare = dir.join("repos/demo/hello.git");
    let before = head_of(&bare, "main");
    let o = run(&denied);
    assert!(!o.status.success(), "ci-bot's push was not denied");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("git:write on demo/hello denied by policy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(head_of(&bare, "main"), before, "the upstream changed");
    // The quickstart's audit log (`audit.log` in its directory) has the refusal.
    let record = denials_in(&dir.join("audit.log"), "ci-bot's refused push", 1, |l| {
        l.contains(r#""path":"/demo/hello.git/info/refs","action":"git:write","repo":"demo/hello""#)
            && l.contains(r#""subject":"ci-bot""#)
    })
    .swap_remove(0);
    assert!(
        record.contains(r#""reason":"no_matching_permit""#),
        "{record}"
    );
    // Main is protected: bob (dev, not release) is refused on main, and pushes a branch.
    let protected = block("See main protected", 2);
    let exported = exports
        .iter()
        .map(|e| e.split('#').next().unwrap_or(e).trim())
        .collect::<Vec<_>>()
        .join("\n");
    let before = head_of(&bare, "main");
    let o = run(&format!("{exported}\ncd hello\n{}\n", protected[0]));
    assert!(!o.status.success(), "bob moved main");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("main_is_protected"), "{err}");
    assert_eq!(head_of(&bare, "main"), before, "the upstream changed");
    let o = run(&format!("set -e\n{exported}\ncd hello\n{}\n", protected[1]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(head_of(&bare, "bob/change"), before);
    // A release tag: refused for bob (per-ref rule), then pushed by alice.
    let tags = block("See a release tag refused", 2);
    let o = run(&format!("{exported}\ncd hello\n{}\n", tags[0]));
    assert!(!o.status.success(), "bob pushed a release tag");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tag_requires_release_group"), "{err}");
    assert_eq!(
        ref_of(&bare, "refs/tags/v1.0"),
        "",
        "the tag reached the upstream"
    );
    let o = run(&format!("set -e\n{exported}\ncd hello\n{}\n", tags[1]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(ref_of(&bare, "refs/tags/v1.0"), "");
    // The who-am-I and metrics lines work as printed.
    let whoami = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("who am I: "))
        .unwrap_or_else(|| panic!("{text}"));
    let o = run(&format!("set -e\n{exported}\n{whoami} -sf\n"));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("alice"),
        "{o:?}"
    );
    let metrics_url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics:  "))
        .unwrap_or_else(|| panic!("{text}"));
    let o = run(&format!("curl -sf {metrics_url}"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("gatehouse_build_info"),
        "{o:?}"
    );
    // The re-issue commands work without `gatehouse` on PATH and give the same principals.
    let reissue = block("Re-issue them later", 3);
    let claims = |token: &str| -> serde_json::Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        for k in ["iat", "exp", "nbf", "jti"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    for (printed, again) in exports.iter().zip(&reissue) {
        let var = printed
            .trim_start_matches("export ")
            .split('=')
            .next()
            .unwrap();
        let o = Command::new("bash")
            .args(["-c", &format!("set -e\n{again}\nprintf %s \"${var}\"")])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{again}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let token = printed
            .split('=')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(
            claims(String::from_utf8_lossy(&o.stdout).trim()),
            claims(token),
            "{again}"
        );
    }
    // Ctrl-C (SIGINT) stops it cleanly, and the audit trail verifies.
    qs.signal("INT");
    assert!(
        qs.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let v = Command::new(bin())
        .args(["audit", "verify"])
        .arg(dir.join("audit.log"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

/// The default admin port taken by another program: a new quickstart takes a free one, says so,
/// and prints the URLs it really serves.
#[test]
fn quickstart_takes_a_free_admin_port_when_its_own_is_taken() {
    let tmp = TempDir::new("quickstart-admin");
    let dir = tmp.path().join("qs");
    let main = local_listener();
    let taken = local_listener();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let mut cmd = Command::new(bin());
    cmd.args(["quickstart", "--dir", &dir.to_string_lossy()])
        .args(["--listen", &main.local_addr().unwrap().to_string()])
        .args(["--admin-listen", &taken_addr]);
    hand_over(&mut cmd, &[&main]);
    cmd.env("LISTEN_FDS", "1");
    let mut qs = Child::spawn("quickstart", &mut cmd, &tmp.path().join("quickstart.out"));
    let text = wait_for("the quickstart banner", Duration::from_secs(60), || {
        assert!(qs.is_running(), "quickstart exited:\n{}", qs.log_text());
        let t = qs.log_text();
        t.contains("Press Ctrl-C").then_some(t)
    });
    drop(main);
    assert!(
        text.contains(&format!("note: {taken_addr} is in use")),
        "{text}"
    );
    let metrics_url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics:  "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!metrics_url.contains(&taken_addr), "{text}");
    let port: u16 = metrics_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let (status, body) = raw_http(port, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("gatehouse_build_info"));
    drop(taken);
    qs.signal("INT");
    assert!(
        qs.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn policy_check_and_explain() {
    let tmp = TempDir::new("explain");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let check = gw.cli(&["policy", "check"]);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok: 4 policies"));

    let bot = gw.token("ci-bot", &["ci"]);
    let explain = |method: &str, url: &str| {
        let o = gw.cli(&[
            "policy", "explain", "--token", &bot, "--method", method, "--url", url,
        ]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let (code, out) = explain(
        "GET",
        "http://git.example/demo/hello.git/info/refs?service=git-upload-pack",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("decision:  ALLOW") && out.contains("decided by policy `ci-read`"),
        "{out}"
    );
    let (code, out) = explain("POST", "http://git.example/demo/hello.git/git-receive-pack");
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("decision:  DENY") && out.contains("default deny"),
        "{out}"
    );
    assert!(!out.contains(&bot), "the token was printed");

    // A broken policy is refused with a readable message.
    std::fs::write(gw.policy_path(), "permit(principal, action, resource").unwrap();
    let check = gw.cli(&["policy", "check"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("policy syntax error"));
    // and so is a typo in the config
    let cfg = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .replace("[audit]\nfile", "[audit]\nfiel");
    std::fs::write(gw.config_path(), cfg).unwrap();
    let check = gw.cli(&["policy", "check"]);
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("unknown field `fiel`"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn ca_and_leaf(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    [(std::path::PathBuf, std::path::PathBuf); 2],
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let leaf = |name: &str, sans: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let server = leaf("upstream", vec!["127.0.0.1".into()]);
    let client = leaf("gatehouse-client", vec![]);
    (ca_path, [server, client])
}

/// An HTTPS upstream that requires a client certificate (mTLS), as a TLS sidecar in front of a
/// forge would: real nginx with `ssl_verify_client on`.
#[test]
fn upstream_over_https_with_a_client_certificate() {
    let tmp = TempDir::new("mtls");
    let (root, _) = repos(&tmp);
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, [(srv_crt, srv_key), (cli_crt, cli_key)]) = ca_and_leaf(&certs);
    let upstream = GitHttpServer::start_tls(&root, &srv_crt, &srv_key, &ca);
    let with_cert = builder()
        .with_upstream_url(&format!("https://127.0.0.1:{}", upstream.port))
        .upstream_extra(&format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            ca.display(),
            cli_crt.display(),
            cli_key.display()
        ))
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let tok = format!("Bearer {}", with_cert.token("alice", &["dev"]));
    let (s, raw) = raw_http(
        with_cert.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &tok)],
    );
    assert_eq!(s, 200, "{raw}");
    assert!(raw.contains("client_dn=CN=gatehouse-client"), "{raw}");
    // ALPN chose HTTP/2, and requests share that one connection.
    assert!(raw.contains("upstream_http=HTTP/2.0;"), "{raw}");
    // The client's Host (`preserve_host` is on by default) went as `:authority`, once.
    assert!(
        raw.contains(&format!(";host=127.0.0.1:{};", with_cert.port)),
        "{raw}"
    );
    let conn = |raw: &str| {
        raw.split(';')
            .find_map(|kv| kv.strip_prefix("upstream_conn="))
            .map(str::to_owned)
    };
    let first = conn(&raw);
    for _ in 0..3 {
        let (s, again) = raw_http(
            with_cert.port,
            "GET",
            "/explore/_echo",
            &[("Authorization", &tok)],
        );
        assert_eq!(s, 200, "{again}");
        assert_eq!(conn(&again), first, "{again}");
    }
    let (s, raw) = raw_http(
        with_cert.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &tok)],
    );
    assert_eq!(s, 200, "{raw}");

    // Without the client certificate the upstream refuses; with an untrusted CA the connection fails.
    let without = builder()
        .with_upstream_url(&format!("https://127.0.0.1:{}", upstream.port))
        .upstream_extra(&format!("ca_file = \"{}\"", ca.display()))
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let tok = format!("Bearer {}", without.token("alice", &["dev"]));
    let (s, raw) = raw_http(
        without.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &tok)],
    );
    assert_eq!(
        s, 400,
        "nginx should refuse a request without a client certificate: {raw}"
    );
    let (other_ca, _) = ca_and_leaf(&tmp.path().join("certs2").tap_mkdir());
    let untrusted = builder()
        .with_upstream_url(&format!("https://127.0.0.1:{}", upstream.port))
        .upstream_extra(&format!("ca_file = \"{}\"", other_ca.display()))
        .forge_kind("gitea")
        .policy(POLICY)
        .no_wait_ready()
        .start();
    let tok = format!("Bearer {}", untrusted.token("alice", &["dev"]));
    let (s, raw) = raw_http(
        untrusted.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &tok)],
    );
    assert_eq!(s, 502, "{raw}");
    assert!(raw.contains("upstream_unavailable"), "{raw}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// `gatehouse quickstart --ssh-listen`: the SSH commands it prints work as printed (a certificate
/// fetched over HTTP, a clone over SSH through the built-in upstream), a push lands, and a
/// release tag is refused by the quickstart policy's per-ref rule.
#[test]
fn quickstart_ssh_commands_work_as_printed() {
    let tmp = TempDir::new("quickstart-ssh");
    let dir = tmp.path().join("qs");
    let (main, admin, ssh_socket) = (local_listener(), local_listener(), local_listener());
    let ssh = ssh_socket.local_addr().unwrap().port();
    let (mut qs, text) = start_quickstart(
        tmp.path(),
        &dir,
        &[
            ("--listen", &main),
            ("--admin-listen", &admin),
            ("--ssh-listen", &ssh_socket),
        ],
    );
    drop((main, admin, ssh_socket)); // the quickstart holds them now
    assert!(
        text.contains(&format!("ssh://git@127.0.0.1:{ssh}/")),
        "{text}"
    );
    assert!(text.contains("(host key SHA256:"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("Git over SSH at"))
        .unwrap_or_else(|| panic!("no SSH block in\n{text}"));
    let ssh_cmds: Vec<&str> = lines[at + 1..at + 4].iter().map(|l| l.trim()).collect();
    // The banner's `export NAME=...` line, without its comment.
    let export_of = |name: &str| {
        lines
            .iter()
            .map(|l| l.trim())
            .find(|l| l.starts_with(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .split('#')
            .next()
            .unwrap()
            .trim()
            .to_owned()
    };
    let alice_export = export_of("ALICE_TOKEN");
    let git_ssh = ssh_cmds[2].split(" git clone").next().unwrap().to_owned();
    let work = tmp.path().join("user");
    std::fs::create_dir_all(&work).unwrap();
    let run = |script: &str| run_as_alice(&work, script);
    let script = format!(
        "set -e\n{alice_export}\n{}\n{}\n{}\ncd hello-ssh\necho ssh >> README.md\ngit commit -qam 'Over SSH'\n{git_ssh} git push -q origin HEAD:refs/heads/from-ssh\n",
        ssh_cmds[0], ssh_cmds[1], ssh_cmds[2]
    );
    let o = run(&script);
    assert!(
        o.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bare = dir.join("repos/demo/hello.git");
    assert!(!crate::common::head_of(&bare, "from-ssh").is_empty());
    // Bob (dev, not release) gets a certificate the same way and may not push a release tag.
    let bob_export = export_of("BOB_TOKEN");
    let as_bob = |cmd: &str| {
        cmd.replace("alice_ed25519", "bob_ed25519")
            .replace("$ALICE_TOKEN", "$BOB_TOKEN")
    };
    let tag = format!(
        "set -e\n{bob_export}\n{}\n{}\ncd hello-ssh\ngit tag v9.9\n{} git push origin refs/tags/v9.9\n",
        as_bob(ssh_cmds[0]),
        as_bob(ssh_cmds[1]),
        as_bob(&git_ssh)
    );
    let o = run(&tag);
    assert!(!o.status.success(), "a release tag was pushed");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tag_requires_release_group"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        ref_of(&bare, "refs/tags/v9.9"),
        "",
        "the refused tag reached the upstream"
    );
    let record = denials_in(
        &dir.join("audit.log"),
        "the refused tag push over SSH",
        1,
        |l| l.contains(r#""name":"refs/tags/v9.9","op":"create""#),
    )
    .swap_remove(0);
    assert!(
        record.contains(r#""decision":"deny","reason":"tag_requires_release_group""#),
        "{record}"
    );
    qs.signal("INT");
    assert!(
        qs.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}
