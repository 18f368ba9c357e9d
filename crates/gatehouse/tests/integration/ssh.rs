//! Git over SSH through Gatehouse: real OpenSSH clients, the real `gatehouse` front door, and a
//! real upstream `sshd` with `git-shell` that trusts only Gatehouse's upstream CA.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gatehouse_testkit::{Git, SSHD_USER, Sshd, TempDir, TestGateway};

use crate::common::{POLICY, builder, commit_file, denial, head_of, repos};

pub(crate) fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `ssh-keygen -s ca ...`: a certificate made outside Gatehouse (for the refusal cases).
fn sign(ca: &Path, key_pub: &Path, serial: u64, validity: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args([
            "-I",
            "handmade",
            "-n",
            "alice",
            "-z",
            &serial.to_string(),
            "-V",
            validity,
        ])
        .args([
            "-O",
            "extension:issuer@gatehouse=urn:gatehouse:test",
            "-O",
            "extension:subject@gatehouse=alice",
            "-O",
            "extension:groups@gatehouse=dev",
        ])
        .arg(key_pub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn ssh_command(key: &Path, port: u16) -> String {
    format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -p {port}",
        key.display()
    )
}

pub(crate) fn ssh(key: &Path, port: u16, extra: &[&str]) -> Output {
    let cmd = ssh_command(key, port);
    let mut parts = cmd.split_whitespace();
    let mut c = Command::new(parts.next().unwrap());
    c.args(parts).args(extra);
    c.output().unwrap()
}

pub(crate) fn git_ssh(tmp: &Path, name: &str, key: &Path, port: u16) -> Git {
    Git::new(&tmp.join(format!("home-{name}"))).env("GIT_SSH_COMMAND", &ssh_command(key, port))
}

/// `gatehouse ssh-cert` for `key_pub` with `token`: the certificate lands beside the key.
fn ssh_cert(gw: &TestGateway, token: &str, key_pub: &Path) {
    let out = gw.cli_raw(&[
        "ssh-cert",
        "--server",
        &gw.url(),
        "--token",
        token,
        "--key",
        &key_pub.to_string_lossy(),
    ]);
    assert!(out.status.success(), "ssh-cert: {out:?}");
}

struct Front {
    gw: TestGateway,
    ssh_port: u16,
    sshd: Sshd,
    root: PathBuf,
}

/// The per-ref rules the SSH tests add to [`POLICY`].
const SSH_REF_RULES: &str = "@id(\"no-main-deletes\")\nforbid(principal, action == Gatehouse::Action::\"ref:delete\", resource) when { context.ref == \"refs/heads/main\" };\n@id(\"main-needs-release\")\n@reason(\"main_requires_release_group\")\nforbid(principal, action == Gatehouse::Action::\"ref:update\", resource) when { context.ref == \"refs/heads/main\" } unless { principal in Gatehouse::Group::\"release\" };\n@id(\"release-tags\")\n@reason(\"release_tags_only\")\nforbid(principal, action in [Gatehouse::Action::\"ref:create\", Gatehouse::Action::\"ref:update\"], resource) when { context.ref like \"refs/tags/v*\" } unless { principal in Gatehouse::Group::\"release\" };\n";

fn front(tmp: &TempDir, ci_key_pub: &str) -> Front {
    front_with(tmp, ci_key_pub, "")
}

/// A forge stand-in's sshd (real OpenSSH) and a gateway in front of it, with `policy_extra`
/// added to the policy.
fn front_with(tmp: &TempDir, ci_key_pub: &str, policy_extra: &str) -> Front {
    let (root, _) = repos(tmp);
    let ssh_dir = tmp.path().join("gw-ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    keygen(&ssh_dir.join("upstream_ca"));
    let sshd = Sshd::start(
        &root,
        &ssh_dir.join("upstream_ca.pub"),
        &["alice", "ci-bot"],
    );
    let policy = format!("{POLICY}\n{SSH_REF_RULES}\n{policy_extra}");
    let (gw, ssh_port) = ssh_gateway(
        &ssh_dir,
        &root,
        &sshd,
        &sshd.host_key(),
        ci_key_pub,
        &policy,
    );
    Front {
        gw,
        ssh_port,
        sshd,
        root,
    }
}

/// A gateway whose SSH front door logs in to `sshd` with certificates from the CA in `ssh_dir`,
/// pinning `host_key`.
fn ssh_gateway(
    ssh_dir: &Path,
    root: &Path,
    sshd: &Sshd,
    host_key: &str,
    ci_key_pub: &str,
    policy: &str,
) -> (TestGateway, u16) {
    let gw = builder()
        .with_upstream_url("http://127.0.0.1:9") // HTTP is not used here
        .no_wait_ready()
        .forge_kind("gitea")
        .policy(policy)
        .extra(&format!(
            r#"[ssh]
listen = "127.0.0.1:0"
host_key = "{dir}/host_ed25519"
user_ca_key = "{dir}/user_ca"
revoked_serials = [4242]

[[ssh.service_accounts]]
name = "ci-bot"
public_key = "{ci_key_pub}"
groups = ["ci"]

[ssh.upstream]
address = "127.0.0.1:{up}"
user = "{SSHD_USER}"
host_key = "{host_key}"
ca_key = "{dir}/upstream_ca"
repo_root = "{root}"
"#,
            dir = ssh_dir.display(),
            up = sshd.port,
            root = root.display(),
        ))
        .start();
    let ssh_port = gw.ssh_port();
    (gw, ssh_port)
}

#[test]
fn git_over_ssh_with_certificates_service_keys_and_refusals() {
    let tmp = TempDir::new("ssh");
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("alice"));
    keygen(&keys.join("ci"));
    keygen(&keys.join("stranger"));
    let ci_pub = std::fs::read_to_string(keys.join("ci.pub")).unwrap();
    let f = front(&tmp, ci_pub.trim());
    let port = f.ssh_port;
    let url = format!("ssh://git@127.0.0.1:{port}/demo/hello.git");

    // alice gets a certificate over HTTPS-style API with a Gatehouse token.
    let token = f.gw.token("alice", &["dev"]);
    let out = f.gw.cli_raw(&[
        "ssh-cert",
        "--server",
        &f.gw.url(),
        "--token",
        &token,
        "--key",
        &keys.join("alice.pub").to_string_lossy(),
        "--ssh-config",
        &tmp.path().join("ssh_config").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "ssh-cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("ssh://git@127.0.0.1:{port}/")),
        "{printed}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA256:") && stderr.contains(&format!("[127.0.0.1]:{port} ssh-ed25519")),
        "{stderr}"
    );
    // The endpoint behind it refuses what is not an OpenSSH public key, and callers without a
    // credential.
    let cert_endpoint = |auth: &str, body: &str| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            body,
        ]);
        if !auth.is_empty() {
            c.args(["-H", auth]);
        }
        let out = c
            .arg(format!("{}/.gatehouse/ssh/cert", f.gw.url()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bearer = format!("Authorization: Bearer {token}");
    let r = cert_endpoint(&bearer, "not a key");
    assert!(r.ends_with("\n400") && r.contains("bad_public_key"), "{r}");
    let alice_pub = std::fs::read_to_string(keys.join("alice.pub")).unwrap();
    let r = cert_endpoint("", alice_pub.trim());
    assert!(r.ends_with("\n401"), "{r}");
    let r = cert_endpoint(&bearer, alice_pub.trim());
    assert!(
        r.ends_with("\n200") && r.contains("ssh-ed25519-cert-v01@openssh.com"),
        "{r}"
    );
    // A certificate never outlives the credential that bought it (`ssh.cert_ttl` is 8 h here):
    // a 2-minute token buys one that ends when the token does; the 10-minute token, when it does.
    let cert_end = |r: &str| {
        let body = r.rsplit_once('\n').unwrap().0;
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        russh::keys::Certificate::from_openssh(doc["certificate"].as_str().unwrap())
            .unwrap()
            .valid_before()
    };
    let exp_of = |jwt: &str| {
        use base64::Engine as _;
        let payload = jwt.split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["exp"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cert_end(&r), exp_of(&token), "{r}");
    let short = f.gw.cli(&[
        "token",
        "issue",
        "--subject",
        "alice",
        "--group",
        "dev",
        "--ttl",
        "2m",
    ]);
    let short = String::from_utf8_lossy(&short.stdout).trim().to_owned();
    let r = cert_endpoint(&format!("Authorization: Bearer {short}"), alice_pub.trim());
    assert!(r.ends_with("\n200"), "{r}");
    assert_eq!(cert_end(&r), exp_of(&short), "{r}");

    let cert = std::fs::read_to_string(keys.join("alice-cert.pub")).unwrap();
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    let shown = Command::new("ssh-keygen")
        .args(["-L", "-f"])
        .arg(keys.join("alice-cert.pub"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{shown}"
    );
    assert!(shown.contains("groups@gatehouse"), "{shown}");

    // Clone (protocol v2), commit, push: through the front door to sshd as alice.
    let alice = git_ssh(tmp.path(), "alice", &keys.join("alice"), port);
    let work = tmp.path().join("alice-work");
    let clone = alice.clone().env("GIT_TRACE_PACKET", "1").ok(
        tmp.path(),
        &[
            "-c",
            "protocol.version=2",
            "clone",
            &url,
            &work.to_string_lossy(),
        ],
    );
    assert!(
        clone.stderr.contains("< version 2"),
        "not protocol v2:\n{}",
        clone.stderr
    );
    commit_file(&alice, &work, "over-ssh.txt", "pushed over ssh\n");
    alice.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/via-ssh"]);
    let bare = f.root.join("demo/hello.git");
    let pushed = head_of(&bare, "via-ssh");
    assert!(!pushed.is_empty(), "the push did not land upstream");

    // Per-ref rules over SSH: deleting main, a release tag, and a mixed push are refused before
    // anything reaches the upstream, and git says which ref and why.
    let main_before = head_of(&bare, "main");
    let r = alice.run(&work, &["push", "origin", "HEAD:refs/heads/main"]);
    assert!(!r.ok, "main was updated");
    assert!(
        r.stderr.contains("[remote rejected] HEAD -> main (denied by Gatehouse policy: main_requires_release_group)"),
        "{}",
        r.stderr
    );
    assert_eq!(head_of(&bare, "main"), main_before);
    let r = alice.run(&work, &["push", "origin", ":refs/heads/main"]);
    assert!(!r.ok, "main was deleted");
    assert!(
        r.stderr
            .contains("[remote rejected] main (denied by Gatehouse policy"),
        "{}",
        r.stderr
    );
    assert_eq!(head_of(&bare, "main"), main_before);
    // Its record: the deletion of main, refused by `no-main-deletes` (which gives no reason).
    let record = denial(&f.gw, "the refused deletion of main over SSH", |l| {
        l.contains(r#""policy":"no-main-deletes""#)
            && l.contains(r#""name":"refs/heads/main","op":"delete""#)
    });
    assert!(record.contains(r#""event":"ssh""#), "{record}");
    alice.ok(&work, &["tag", "v1.0"]);
    let r = alice.run(&work, &["push", "origin", "refs/tags/v1.0"]);
    assert!(!r.ok, "a release tag was pushed");
    assert!(r.stderr.contains("release_tags_only"), "{}", r.stderr);
    let r = alice.run(
        &work,
        &[
            "push",
            "--atomic",
            "origin",
            "HEAD:refs/heads/ok-branch",
            "refs/tags/v1.0",
        ],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("ok-branch"), "{}", r.stderr);
    assert!(
        head_of(&bare, "ok-branch").is_empty(),
        "half of a refused push landed"
    );
    assert!(crate::common::ref_of(&bare, "refs/tags/v1.0").is_empty());
    // Its record (the only push naming ok-branch) names both refs, the tag refused.
    let record = denial(&f.gw, "the refused --atomic push over SSH", |l| {
        l.contains(r#""name":"refs/heads/ok-branch","op":"create""#)
            && l.contains(r#""name":"refs/tags/v1.0","op":"create""#)
    });
    assert!(
        record.contains(r#""decision":"deny","reason":"release_tags_only""#),
        "{record}"
    );
    f.gw.audit_when("the refused SSH pushes' records", |a| {
        a.contains("\"reason\":\"release_tags_only\"")
            && a.contains("\"reason\":\"main_requires_release_group\"")
    });

    // The allowed twins: an ordinary branch may be deleted where main may not, and a member of
    // `release` (alice, signed in with that group) moves main and pushes the release tag.
    alice.ok(&work, &["push", "-q", "origin", ":refs/heads/via-ssh"]);
    assert!(
        head_of(&bare, "via-ssh").is_empty(),
        "via-ssh was not deleted"
    );
    keygen(&keys.join("release"));
    let release_token = f.gw.token("alice", &["dev", "release"]);
    ssh_cert(&f.gw, &release_token, &keys.join("release.pub"));
    let release = git_ssh(tmp.path(), "release", &keys.join("release"), port);
    release.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    assert_eq!(head_of(&bare, "main"), pushed, "main did not move");
    release.ok(&work, &["push", "-q", "origin", "refs/tags/v1.0"]);
    assert!(!crate::common::ref_of(&bare, "refs/tags/v1.0").is_empty());

    // Push options pass through the command list parser too.
    crate::common::offer_push_options(&bare);
    alice.ok(
        &work,
        &[
            "push",
            "-q",
            "-o",
            "ci.skip",
            "origin",
            "HEAD:refs/heads/with-options",
        ],
    );
    assert_eq!(head_of(&bare, "with-options"), pushed);

    // Which identity pushed that commit: one query of the audit log.
    let out = f.gw.cli_raw(&[
        "audit",
        "search",
        &f.gw.audit_path().to_string_lossy(),
        "--commit",
        &pushed,
    ]);
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && found.contains("alice"), "{out:?}");

    // A repository the policy does not open.
    let r = alice.run(
        tmp.path(),
        &[
            "clone",
            &format!("ssh://git@127.0.0.1:{port}/secret/repo.git"),
            "x",
        ],
    );
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("git:read on secret/repo denied by policy"),
        "{}",
        r.stderr
    );

    // The CI key: registered, read-only by policy.
    let ci = git_ssh(tmp.path(), "ci", &keys.join("ci"), port);
    let ci_work = tmp.path().join("ci-work");
    ci.ok(
        tmp.path(),
        &["clone", "-q", &url, &ci_work.to_string_lossy()],
    );
    commit_file(&ci, &ci_work, "ci.txt", "from ci\n");
    let before = head_of(&bare, "ci-branch");
    let r = ci.run(&ci_work, &["push", "origin", "HEAD:refs/heads/ci-branch"]);
    assert!(!r.ok, "ci pushed");
    assert!(
        r.stderr
            .contains("git:write on demo/hello denied by policy"),
        "{}",
        r.stderr
    );
    assert_eq!(
        head_of(&bare, "ci-branch"),
        before,
        "upstream changed after a denied push"
    );

    // No certificate and no registered key.
    let r = ssh(
        &keys.join("stranger"),
        port,
        &["git@127.0.0.1", "git-upload-pack 'demo/hello.git'"],
    );
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Permission denied"),
        "{r:?}"
    );

    // Certificates made outside Gatehouse: our CA but expired, our CA but revoked, another CA.
    // The same key with a valid handmade certificate from our CA works (the control).
    let ca = tmp.path().join("gw-ssh/user_ca");
    let other_ca = keys.join("other_ca");
    keygen(&other_ca);
    let cases: [(&str, &Path, u64, &str, bool); 5] = [
        ("expired", &ca, 1, "20200101:20200102", false),
        ("not-yet-valid", &ca, 5, "+1d:+2d", false),
        ("revoked", &ca, 4242, "-5m:+1h", false),
        ("other-ca", &other_ca, 2, "-5m:+1h", false),
        ("control", &ca, 3, "-5m:+1h", true),
    ];
    for (name, signer, serial, validity, works) in cases {
        let k = keys.join(name);
        keygen(&k);
        sign(signer, &keys.join(format!("{name}.pub")), serial, validity);
        let r = ssh(
            &k,
            port,
            &["git@127.0.0.1", "git-upload-pack 'demo/hello.git'"],
        );
        let err = String::from_utf8_lossy(&r.stderr);
        if works {
            // upload-pack waits for the client; stdin is closed, so it ends after the advertisement.
            assert!(
                String::from_utf8_lossy(&r.stdout).contains("refs/heads/main"),
                "{name}: {r:?}"
            );
        } else {
            assert!(err.contains("Permission denied"), "{name}: {r:?}");
        }
    }
    let log = f.gw.log();
    for reason in [
        "expired or not yet valid",
        "revoked (serial 4242)",
        "not signed by Gatehouse's user CA",
    ] {
        assert!(log.contains(reason), "no `{reason}` in the log:\n{log}");
    }

    // Anything but git is refused with a message.
    let r = ssh(&keys.join("alice"), port, &["git@127.0.0.1", "ls", "-la"]);
    assert_eq!(r.status.code(), Some(128), "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Gatehouse only runs git-upload-pack"),
        "{r:?}"
    );
    let r = ssh(&keys.join("alice"), port, &["-T", "git@127.0.0.1"]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("does not provide shell access"),
        "{r:?}"
    );
    let r = ssh(
        &keys.join("alice"),
        port,
        &["-W", "127.0.0.1:22", "git@127.0.0.1"],
    );
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("administratively prohibited") || e.contains("stdio forwarding failed"),
        "{r:?}"
    );
    assert!(
        f.gw.log().contains("port forwarding refused"),
        "port forwarding was not refused"
    );
    let r = ssh(
        &keys.join("alice"),
        port,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:22",
            "git@127.0.0.1",
            "git-upload-pack 'demo/hello.git'",
        ],
    );
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("remote port forwarding failed"),
        "{r:?}"
    );
    // Agent forwarding is only asked for when there is an agent: start one.
    let sock = tmp.path().join("agent.sock");
    let mut agent_cmd = Command::new("ssh-agent");
    agent_cmd.arg("-D").arg("-a").arg(&sock);
    let _agent =
        gatehouse_testkit::Child::spawn("ssh-agent", &mut agent_cmd, &tmp.path().join("agent.log"));
    gatehouse_testkit::wait_for("ssh-agent", std::time::Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    let cmd = ssh_command(&keys.join("alice"), port);
    let mut parts = cmd.split_whitespace();
    let r = Command::new(parts.next().unwrap())
        .args(parts)
        .args(["-A", "git@127.0.0.1", "git-upload-pack 'demo/hello.git'"])
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("refs/heads/main"),
        "{r:?}"
    );
    assert!(
        f.gw.log().contains("agent forwarding refused"),
        "agent forwarding was not refused"
    );

    // The audit log has each SSH session: who (certificate serial or key), what, the outcome.
    let is_push = |r: &serde_json::Value| {
        r["event"] == "ssh" && r["action"] == "git:write" && r["decision"] == "allow"
    };
    let is_denied = |r: &serde_json::Value| {
        r["event"] == "ssh" && r["principal"]["username"] == "ci-bot" && r["decision"] == "deny"
    };
    let audit = f.gw.audit_when("the SSH push records", |a| {
        let parsed: Vec<serde_json::Value> = a
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        parsed.iter().any(is_push) && parsed.iter().any(is_denied)
    });
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let push = lines
        .iter()
        .find(|r| is_push(r))
        .unwrap_or_else(|| panic!("no ssh push record:\n{audit}"));
    assert_eq!(push["principal"]["username"], "alice");
    assert_eq!(push["repo"], "demo/hello");
    assert_eq!(push["status"], 0);
    assert!(
        push["detail"]
            .as_str()
            .unwrap()
            .starts_with("certificate serial "),
        "{push}"
    );
    assert!(push["bytes_in"].as_u64().unwrap() > 0, "{push}");
    // Announced twice before the forge saw anything of it: the session before the exec reached
    // the upstream, and its refs before the command list reached git. The completion record names
    // the second.
    let at = |r: &serde_json::Value| lines.iter().position(|l| l == r).unwrap();
    let announced: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|r| r["event"] == "forwarding" && r["request_id"] == push["request_id"])
        .collect();
    assert_eq!(announced.len(), 2, "{audit}");
    let (session, refs) = (announced[0], announced[1]);
    assert!(at(session) < at(refs) && at(refs) < at(push), "{audit}");
    assert!(session.get("refs").is_none(), "{session}");
    assert_eq!(refs["decision"], "allow", "{refs}");
    assert_eq!(refs["method"], "SSH", "{refs}");
    assert!(
        refs["refs"].as_array().is_some_and(|r| !r.is_empty()),
        "{refs}"
    );
    assert_eq!(push["forwarding_seq"], refs["seq"], "{push}");
    let denied = lines
        .iter()
        .find(|r| is_denied(r))
        .unwrap_or_else(|| panic!("no denied ci push:\n{audit}"));
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .starts_with("key SHA256:"),
        "{denied}"
    );
    // SSH commands have the metrics HTTP requests have: by action, decision and exit status.
    let metrics = f.gw.metrics();
    let count = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        count("gatehouse_ssh_commands_total{action=\"git:read\",decision=\"allow\",exit=\"0\"}")
            >= 1,
        "{metrics}"
    );
    assert!(
        count("gatehouse_ssh_commands_total{action=\"git:write\",decision=\"deny\"") >= 1,
        "{metrics}"
    );
    assert!(
        count("gatehouse_ssh_command_duration_seconds_count{action=\"git:write\"}") >= 1,
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_ssh_commands_in_flight "),
        "{metrics}"
    );
}

/// `ssh.max_connections`: one connection open, the next is closed before the handshake, and a
/// slot frees when a connection ends. Built-in upstream (git on the gateway's own directory).
#[test]
fn ssh_connections_beyond_the_cap_are_closed() {
    let tmp = TempDir::new("ssh-cap");
    let (root, _) = repos(&tmp);
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("ci"));
    let ci_pub = std::fs::read_to_string(keys.join("ci.pub")).unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&format!(
            "[ssh]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n\n[[ssh.service_accounts]]\nname = \"ci-bot\"\npublic_key = \"{}\"\ngroups = [\"ci\"]\n",
            ci_pub.trim()
        ))
        .start();
    let port = gw.ssh_port();
    let fetch = || {
        ssh(
            &keys.join("ci"),
            port,
            &["git@127.0.0.1", "git-upload-pack 'demo/hello.git'"],
        )
    };
    let first = fetch();
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("refs/heads/main"),
        "{first:?}"
    );
    // Hold the only slot with an idle connection.
    let cmd = ssh_command(&keys.join("ci"), port);
    let mut parts = cmd.split_whitespace();
    let mut holder = Command::new(parts.next().unwrap());
    holder.args(parts).args(["-N", "git@127.0.0.1"]);
    let held =
        gatehouse_testkit::Child::spawn("ssh-holder", &mut holder, &tmp.path().join("holder.log"));
    // Once the holder is connected, the next connection is closed (until then it may still be
    // served: retry).
    gatehouse_testkit::wait_for(
        "a connection refused at the cap",
        std::time::Duration::from_secs(10),
        || {
            let o = fetch();
            (!o.status.success() && gw.log().contains("too many connections")).then_some(())
        },
    );
    drop(held);
    let again =
        gatehouse_testkit::wait_for("a free slot", std::time::Duration::from_secs(10), || {
            let o = fetch();
            String::from_utf8_lossy(&o.stdout)
                .contains("refs/heads/main")
                .then_some(o)
        });
    assert!(again.status.success() || !again.stdout.is_empty());
}

/// The principals the certificates presented to the forge's sshd carried, from `since` on.
fn principals_since(sshd: &Sshd, since: usize) -> Vec<(Vec<String>, String)> {
    sshd.presented_certificates()
        .into_iter()
        .skip(since)
        .map(|(text, key_id)| {
            let cert = russh::keys::Certificate::from_openssh(&text)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            (cert.valid_principals().to_vec(), key_id)
        })
        .collect()
}

/// Towards the forge, each SSH session logs in as its own caller: the forge's real sshd sees
/// alice's sessions with principal `alice` and the CI key's with `ci-bot` (both principals are
/// accepted there, so a gateway that presented one user for everybody would still get in: the
/// certificates are read back). A registered service key pushes where its policy allows. A
/// gateway that pins another host key than the forge's refuses to talk to it.
#[test]
fn the_forge_sees_each_ssh_caller_as_itself() {
    let tmp = TempDir::new("ssh-principals");
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("alice"));
    keygen(&keys.join("ci"));
    let ci_pub = std::fs::read_to_string(keys.join("ci.pub")).unwrap();
    let ci_may_push = "@id(\"ci-builds\")\npermit(principal == Gatehouse::ServiceAccount::\"ci-bot\", action in [Gatehouse::Action::\"git:read\", Gatehouse::Action::\"git:write\"], resource in Gatehouse::Owner::\"ci\");\n";
    let f = front_with(&tmp, ci_pub.trim(), ci_may_push);
    let builds = f.root.join("ci/builds.git");
    gatehouse_testkit::make_repo(&f.root, "ci", "builds");
    let chown = Command::new("chown")
        .args(["-R", SSHD_USER])
        .arg(&f.root)
        .output()
        .unwrap();
    assert!(chown.status.success(), "{chown:?}");
    let port = f.ssh_port;

    ssh_cert(
        &f.gw,
        &f.gw.token("alice", &["dev"]),
        &keys.join("alice.pub"),
    );
    let alice = git_ssh(tmp.path(), "alice", &keys.join("alice"), port);
    let ci = git_ssh(tmp.path(), "ci", &keys.join("ci"), port);

    // alice clones: every certificate the forge saw names alice, and only alice.
    let seen = f.sshd.presented_certificates().len();
    let alice_work = tmp.path().join("alice-work");
    alice.ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("ssh://git@127.0.0.1:{port}/demo/hello.git"),
            &alice_work.to_string_lossy(),
        ],
    );
    let got = principals_since(&f.sshd, seen);
    assert!(
        !got.is_empty(),
        "the clone presented no certificate to the forge"
    );
    for (principals, key_id) in &got {
        assert_eq!(principals, &["alice".to_owned()], "{key_id}");
        assert!(key_id.ends_with(" as alice"), "{key_id}");
    }

    // The CI key clones and pushes where its policy allows: the forge sees ci-bot.
    let seen = f.sshd.presented_certificates().len();
    let ci_work = tmp.path().join("ci-work");
    ci.ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("ssh://git@127.0.0.1:{port}/ci/builds.git"),
            &ci_work.to_string_lossy(),
        ],
    );
    commit_file(&ci, &ci_work, "build.txt", "built\n");
    ci.ok(
        &ci_work,
        &["push", "-q", "origin", "HEAD:refs/heads/build-1"],
    );
    assert_eq!(
        head_of(&builds, "build-1"),
        ci.ok(&ci_work, &["rev-parse", "HEAD"]).stdout.trim(),
        "the service key's push did not land"
    );
    let got = principals_since(&f.sshd, seen);
    assert!(got.len() >= 2, "{got:?}");
    for (principals, key_id) in &got {
        assert_eq!(principals, &["ci-bot".to_owned()], "{key_id}");
    }
    // Its allowed twin's refusal: the same key may not push to demo/hello.
    let r = ci.run(
        &ci_work,
        &[
            "push",
            &format!("ssh://git@127.0.0.1:{port}/demo/hello.git"),
            "HEAD:refs/heads/from-ci",
        ],
    );
    assert!(!r.ok, "ci pushed to demo/hello");
    assert!(head_of(&f.root.join("demo/hello.git"), "from-ci").is_empty());
    f.gw.audit_when("the denied CI push's record", |a| {
        a.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| {
                r["event"] == "ssh"
                    && r["principal"]["username"] == "ci-bot"
                    && r["repo"] == "demo/hello"
                    && r["action"] == "git:write"
                    && r["decision"] == "deny"
            })
    });

    // alice again, after ci-bot: still alice.
    let seen = f.sshd.presented_certificates().len();
    alice.ok(&alice_work, &["fetch", "-q", "origin"]);
    let got = principals_since(&f.sshd, seen);
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|(p, _)| p == &["alice".to_owned()]),
        "{got:?}"
    );

    // A gateway that pins another host key than the forge's: the clone fails, and no login
    // reached the forge.
    let other = tmp.path().join("other-host");
    keygen(&other);
    let wrong_key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let (wrong, wrong_port) = ssh_gateway(
        &tmp.path().join("gw-ssh"),
        &f.root,
        &f.sshd,
        wrong_key.trim(),
        ci_pub.trim(),
        &format!("{POLICY}\n{ci_may_push}"),
    );
    let seen = f.sshd.presented_certificates().len();
    // (A client of its own: `ssh -p` given first wins over the URL's port.)
    let ci_wrong = git_ssh(tmp.path(), "ci-wrong", &keys.join("ci"), wrong_port);
    let r = ci_wrong.run(
        tmp.path(),
        &[
            "clone",
            &format!("ssh://git@127.0.0.1:{wrong_port}/ci/builds.git"),
            &tmp.path().join("never").to_string_lossy(),
        ],
    );
    assert!(!r.ok, "cloned through a gateway pinning the wrong host key");
    assert!(
        r.stderr.contains("Gatehouse: the upstream SSH server"),
        "{}",
        r.stderr
    );
    assert_eq!(f.sshd.presented_certificates().len(), seen);
    assert!(
        wrong.log().contains("host key does not match"),
        "{}",
        wrong.log()
    );
}

/// The serial `ssh-keygen -L` shows for the certificate `cert`.
fn serial_of(cert: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .unwrap_or_else(|| panic!("no serial in {text}"))
        .trim()
        .to_owned()
}

/// Runs `what` until it fails (at most 1 s after the revocation); returns its stderr.
fn fails_within_a_second(what: &str, run: impl Fn() -> gatehouse_testkit::GitOutput) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = run();
        if !out.ok {
            return out.stderr;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{what}: still allowed 1 s after the revocation"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn revoked_certificates_and_service_keys_are_refused_on_the_next_command() {
    let tmp = TempDir::new("ssh-revoke");
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("alice"));
    keygen(&keys.join("ci"));
    let ci_pub = std::fs::read_to_string(keys.join("ci.pub")).unwrap();
    let f = front(&tmp, ci_pub.trim());
    let port = f.ssh_port;
    let url = format!("ssh://git@127.0.0.1:{port}/demo/hello.git");
    let token = f.gw.token("alice", &["dev"]);
    ssh_cert(&f.gw, &token, &keys.join("alice.pub"));
    let serial = serial_of(&keys.join("alice-cert.pub"));

    // A connection opened before the revocation (OpenSSH connection sharing, as a CI job or an
    // editor keeps one), and fresh connections.
    let control = tmp.path().join("alice.ctl");
    let master = format!(
        "{} -o ControlPath={}",
        ssh_command(&keys.join("alice"), port),
        control.display()
    );
    let mut parts = master.split_whitespace();
    let out = Command::new(parts.next().unwrap())
        .args(parts)
        .args(["-o", "ControlMaster=yes", "-f", "-N", "git@127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "master: {out:?}");
    let shared = Git::new(&tmp.path().join("home-shared"))
        .env("GIT_SSH_COMMAND", &format!("{master} -o ControlMaster=no"));
    let fresh = git_ssh(tmp.path(), "alice", &keys.join("alice"), port);
    let ci = git_ssh(tmp.path(), "ci", &keys.join("ci"), port);
    for g in [&shared, &fresh, &ci] {
        let out = g.run(tmp.path(), &["ls-remote", &url]);
        assert!(out.ok, "before: {}", out.stderr);
    }

    let revoke =
        f.gw.cli(&["revoke", "ssh-cert", &serial, "--reason", "laptop lost"]);
    assert!(revoke.status.success(), "{revoke:?}");
    let err = fails_within_a_second("the shared connection", || {
        shared.run(tmp.path(), &["ls-remote", &url])
    });
    assert!(err.contains("ssh_cert_revoked"), "{err}");
    let err = fails_within_a_second("a new connection", || {
        fresh.run(tmp.path(), &["ls-remote", &url])
    });
    assert!(err.contains("Permission denied"), "{err}");
    let record = denial(&f.gw, "the shared connection's command", |l| {
        l.contains("ssh_cert_revoked")
    });
    assert!(record.contains(&format!("cert:{serial}")), "{record}");
    // ci-bot's key is untouched, then revoked as a service account.
    assert!(ci.run(tmp.path(), &["ls-remote", &url]).ok);
    let revoke = f.gw.cli(&["revoke", "service-account", "ci-bot"]);
    assert!(revoke.status.success(), "{revoke:?}");
    fails_within_a_second("ci-bot", || ci.run(tmp.path(), &["ls-remote", &url]));

    // A certificate bought with a token bound to an environment dies with the environment.
    let out =
        f.gw.cli(&["env", "create", "--name", "devbox", "--ttl", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let env = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let bound = f.gw.cli(&[
        "token",
        "issue",
        "--subject",
        "alice",
        "--group",
        "dev",
        "--ttl",
        "10m",
        "--environment",
        &env,
    ]);
    assert!(bound.status.success(), "{bound:?}");
    let bound = String::from_utf8_lossy(&bound.stdout).trim().to_owned();
    keygen(&keys.join("devbox"));
    ssh_cert(&f.gw, &bound, &keys.join("devbox.pub"));
    let devbox = git_ssh(tmp.path(), "devbox", &keys.join("devbox"), port);
    assert!(devbox.run(tmp.path(), &["ls-remote", &url]).ok);
    let out = f.gw.cli(&["env", "end", &env]);
    assert!(out.status.success(), "{out:?}");
    let err = fails_within_a_second("the environment's certificate", || {
        devbox.run(tmp.path(), &["ls-remote", &url])
    });
    assert!(err.contains("Permission denied"), "{err}");
    let out =
        f.gw.cli(&["token", "issue", "--subject", "x", "--environment", &env]);
    assert!(!out.status.success(), "a token for an ended environment");

    let _ = Command::new("ssh")
        .arg("-o")
        .arg(format!("ControlPath={}", control.display()))
        .args(["-O", "exit", "git@127.0.0.1"])
        .output();
}
