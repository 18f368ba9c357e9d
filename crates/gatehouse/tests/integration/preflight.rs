//! `gatehouse check`: the pre-flight finds what `serve` would refuse, and what would not work, with
//! the cause; `--version` names the build; environment overrides apply to every command.

use std::process::{Command, Output};

use gatehouse_testkit::{Idp, RefusedPort, TempDir};

use crate::common::{POLICY, bin, builder, repos};

fn check(config: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .args(["--timeout", "3s"])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o: Output = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// The line of `out` that reports `what`.
fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(what)))
        .unwrap_or_else(|| panic!("no line for {what}:\n{out}"))
}

/// A certificate for 127.0.0.1 valid from `from` to `until` days from now, and its key.
fn cert(dir: &std::path::Path, name: &str, from: i64, until: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from);
    p.not_after = now + time::Duration::days(until);
    let c = p.self_signed(&key).unwrap();
    let (cp, kp) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cp, c.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (
        cp.to_string_lossy().into_owned(),
        kp.to_string_lossy().into_owned(),
    )
}

#[test]
fn the_version_names_the_commit_and_the_build_date() {
    let o = Command::new(bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    let want = format!("gatehouse {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v}");
    let commit = v[want.len()..].split(',').next().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
    let date = v
        .split("built ")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches(')');
    let parts: Vec<&str> = date.split('-').collect();
    assert!(
        parts.len() == 3
            && [4, 2, 2] == [parts[0].len(), parts[1].len(), parts[2].len()]
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{v}"
    );
}

/// A working configuration passes, each part named; the issuer's keys were really fetched.
#[test]
fn a_good_configuration_passes_with_every_part_named() {
    let tmp = TempDir::new("check-good");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let b = builder()
        .with_builtin_upstream(&root)
        .with_idp(idp)
        .policy(POLICY);
    let config = b.write_config(0, 0);
    let (code, out) = check(&config, &["--strict"], &[]);
    assert_eq!(code, 0, "{out}");
    for what in [
        "config",
        "policy",
        "tokens.signing_key",
        "upstream.git_http_backend",
        "server.listen",
        "audit.file",
        "store",
    ] {
        assert!(line(&out, what).starts_with("ok "), "{out}");
    }
    let issuer = line(&out, &format!("issuer {}", idp.issuer()));
    assert!(
        issuer.starts_with("ok ") && issuer.contains("signing key(s) from"),
        "{out}"
    );
    assert!(out.contains("all checks passed"), "{out}");
    // Nothing was created or changed: the audit log and the embedded store are not made.
    let made: Vec<String> = std::fs::read_dir(b.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("audit") || n.contains(".db") || n.starts_with(".gatehouse-check")
        })
        .collect();
    assert!(made.is_empty(), "check left {made:?}");
}

/// What serve refuses fails (exit 1), each problem at its place; what would not work warns with
/// its cause (exit 0, or 1 with --strict).
#[test]
fn problems_are_found_with_their_place_and_cause() {
    let tmp = TempDir::new("check-bad");
    let refused = RefusedPort::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let idp = Idp::shared();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (soon_crt, soon_key) = cert(&certs, "soon", -30, 3);
    let (old_crt, old_key) = cert(&certs, "old", -30, -1);

    // Issuers that do not answer, each for its own reason.
    let bad_issuers = format!(
        "[[issuers]]\nissuer = \"http://127.0.0.1:{}\"\naudiences = [\"gatehouse\"]\n\n\
         [[issuers]]\nissuer = \"http://no-such-idp.invalid\"\naudiences = [\"gatehouse\"]\n\n\
         [[issuers]]\nissuer = \"https://127.0.0.1:{}\"\naudiences = [\"gatehouse\"]\n",
        refused.port, idp.port
    );
    let b = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{}", refused.port))
        .server_extra(&format!(
            "[server.tls]\ncert_file = \"{soon_crt}\"\nkey_file = \"{soon_key}\"\n"
        ))
        .policy(POLICY)
        .extra(&bad_issuers);
    let config = b.write_config(0, 0);
    let (code, out) = check(&config, &[], &[("GATEHOUSE__SERVER__LISTEN", &taken_addr)]);
    assert_eq!(code, 0, "warnings only: {out}");
    assert!(
        line(&out, "config").contains("GATEHOUSE__SERVER__LISTEN"),
        "{out}"
    );
    let l = line(&out, "server.tls.cert_file");
    assert!(
        l.starts_with("warn") && l.contains("expires in 2 day(s)")
            || l.contains("expires in 3 day(s)"),
        "{out}"
    );
    let l = line(&out, "upstream reachable");
    assert!(
        l.starts_with("warn") && l.contains("connection refused"),
        "{out}"
    );
    let l = line(&out, "server.listen");
    assert!(l.starts_with("warn") && l.contains("in use"), "{out}");
    let l = line(&out, &format!("issuer http://127.0.0.1:{}", refused.port));
    assert!(
        l.starts_with("warn") && l.contains("connection refused"),
        "{out}"
    );
    let l = line(&out, "issuer http://no-such-idp.invalid");
    assert!(
        l.starts_with("warn") && l.contains("DNS lookup failed"),
        "{out}"
    );
    let l = line(&out, &format!("issuer https://127.0.0.1:{}", idp.port));
    assert!(
        l.starts_with("warn") && l.contains("TLS handshake failed"),
        "{out}"
    );
    let (code, _) = check(
        &config,
        &["--strict"],
        &[("GATEHOUSE__SERVER__LISTEN", &taken_addr)],
    );
    assert_eq!(code, 1, "--strict fails on warnings");
    drop(taken);

    // Now things serve refuses: a policy that does not validate, an expired certificate, a
    // missing signing key, a store with pending migrations it may not apply.
    let cfg = std::fs::read_to_string(&config).unwrap();
    let cfg = cfg
        .replace(&soon_crt, &old_crt)
        .replace(&soon_key, &old_key)
        .replace("keys/signing.pem", "keys/missing.pem")
        + "\n[store]\nmigrate = \"manual\"\n";
    std::fs::write(&config, cfg).unwrap();
    let policy = "@id(\"ok\")\npermit(principal, action, resource);\n\n\
                  @id(\"typo\")\npermit(principal, action == Gatehouse::Action::\"git:read\", resource)\n\
                  when { principal.tema == \"x\" };\n";
    std::fs::write(b.dir().join("policy.cedar"), policy).unwrap();
    let (code, out) = check(&config, &[], &[]);
    assert_eq!(code, 1, "{out}");
    let policy_file = b.dir().join("policy.cedar").display().to_string();
    assert!(line(&out, "policy").starts_with("FAIL"), "{out}");
    assert!(
        out.contains(&format!("{policy_file}:6:")) && out.contains("tema"),
        "no file:line:column: {out}"
    );
    assert!(
        line(&out, "server.tls.cert_file").starts_with("FAIL") && out.contains("expired"),
        "{out}"
    );
    assert!(
        line(&out, "tokens.signing_key").starts_with("FAIL") && out.contains("missing.pem"),
        "{out}"
    );
    let l = line(&out, "store");
    assert!(
        l.starts_with("FAIL") && l.contains("gatehouse store migrate"),
        "{out}"
    );
    // `serve` refuses the same configuration.
    let o = Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!o.status.success());

    // A config it cannot read at all stops there, with the fix.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "signing_key = { file = \"keys/missing.pem\" }",
            "signing_key = \"inline\"",
        ),
    )
    .unwrap();
    let (code, out) = check(&config, &[], &[]);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "config");
    assert!(l.starts_with("FAIL"), "{out}");
    assert!(
        out.contains("{ file = ") && !out.contains("untagged"),
        "{out}"
    );
    assert!(!out.contains("ok    policy"), "{out}");
}
