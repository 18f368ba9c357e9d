use std::process::Command;
use std::time::Duration;

use gatehouse_testkit::{TempDir, wait_for};

use crate::common::{POLICY, builder, repos};

fn cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["gatehouse.test".to_owned()]).unwrap();
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, ck.cert.pem()).unwrap();
    std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
    (c, k)
}

/// curl against the gateway's TLS port trusting only `ca`; returns (http version, status).
fn curl(port: u16, ca: &std::path::Path, extra: &[&str]) -> Option<(String, String)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("gatehouse.test:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!(
            "https://gatehouse.test:{port}/.well-known/jwks.json"
        ))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (v, c) = s.split_once(' ')?;
    Some((v.to_owned(), c.to_owned()))
}

#[test]
fn tls_with_http2_and_certificate_reload_without_restart() {
    let tmp = TempDir::new("tls");
    let (root, _) = repos(&tmp);
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (a_crt, a_key) = cert(&certs, "a");
    let live_crt = certs.join("live.crt");
    let live_key = certs.join("live.key");
    std::fs::copy(&a_crt, &live_crt).unwrap();
    std::fs::copy(&a_key, &live_key).unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .server_extra(&format!(
            "tls = {{ cert_file = \"{}\", key_file = \"{}\", reload_interval = \"100ms\" }}",
            live_crt.display(),
            live_key.display()
        ))
        .start();

    assert_eq!(
        curl(gw.port, &a_crt, &[]),
        Some(("2".into(), "200".into())),
        "HTTP/2 over ALPN"
    );
    assert_eq!(
        curl(gw.port, &a_crt, &["--http1.1"]),
        Some(("1.1".into(), "200".into()))
    );

    let (b_crt, b_key) = cert(&certs, "b");
    std::fs::copy(&b_key, &live_key).unwrap();
    std::fs::copy(&b_crt, &live_crt).unwrap();
    wait_for("the new certificate", Duration::from_secs(10), || {
        curl(gw.port, &b_crt, &[])
    });
    assert_eq!(
        curl(gw.port, &a_crt, &[]),
        None,
        "the old certificate is still served"
    );

    // A broken replacement keeps the current certificate.
    std::fs::write(&live_crt, "not a certificate").unwrap();
    wait_for(
        "the failed reload to be logged",
        Duration::from_secs(10),
        || {
            gw.log()
                .contains("TLS certificate reload failed")
                .then_some(())
        },
    );
    assert!(curl(gw.port, &b_crt, &[]).is_some());
}
