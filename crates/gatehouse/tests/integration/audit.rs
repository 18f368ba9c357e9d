use std::time::Duration;

use gatehouse_testkit::{TempDir, raw_http, wait_for};

use crate::common::{POLICY, bin, builder, repos};

fn verify(path: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", &path.to_string_lossy()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn audit_log_verifies_and_a_one_byte_edit_is_found() {
    let tmp = TempDir::new("audit");
    let (root, _) = repos(&tmp);
    let mut gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    for _ in 0..5 {
        raw_http(
            gw.port,
            "GET",
            "/demo/hello.git/info/refs?service=git-upload-pack",
            &[("Authorization", &alice)],
        );
        raw_http(
            gw.port,
            "GET",
            "/secret/repo.git/info/refs?service=git-upload-pack",
            &[("Authorization", &alice)],
        );
        raw_http(
            gw.port,
            "GET",
            "/demo/hello.git/info/refs?service=git-upload-pack",
            &[],
        );
    }
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(30))
        .expect("gatehouse stops on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", gw.log());

    let path = gw.audit_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 17, "start + 15 requests + stop:\n{text}");
    assert!(lines[0].contains("\"event\":\"gateway_start\""));
    assert!(lines[16].contains("\"event\":\"gateway_stop\""));
    assert!(text.contains("\"decision\":\"deny\",\"policy\":\"default-deny\",\"reason\":\"no_matching_permit\",\"status\":403"));
    assert!(text.contains("\"username\":\"alice\""));
    let (ok, out) = verify(&path);
    assert!(ok, "{out}");
    assert!(out.contains("17 records"), "{out}");

    // One byte changed in the middle: found, and the line named.
    let edited = text.replacen("\"status\":403", "\"status\":200", 1);
    assert_eq!(edited.len(), text.len());
    std::fs::write(&path, &edited).unwrap();
    let (ok, out) = verify(&path);
    assert!(!ok, "an edited log verified");
    assert!(out.contains("hash chain broken"), "{out}");

    // A deleted last record is found through the head file.
    let truncated: String = text.lines().take(16).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, truncated).unwrap();
    let (ok, out) = verify(&path);
    assert!(!ok);
    assert!(out.contains("removed from the end"), "{out}");
}

#[test]
fn an_unwritable_audit_log_refuses_requests() {
    let tmp = TempDir::new("audit-full");
    let (root, _) = repos(&tmp);
    // /dev/full opens fine and fails every write with ENOSPC: a real disk-full fault.
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .audit_file("/dev/full")
        .no_wait_ready()
        .start();
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    let raw = wait_for("requests to be refused", Duration::from_secs(10), || {
        let (s, raw) = raw_http(
            gw.port,
            "GET",
            "/demo/hello.git/info/refs?service=git-upload-pack",
            &[("Authorization", &alice)],
        );
        (s == 503).then_some(raw)
    });
    assert!(
        raw.contains("audit log cannot record this request"),
        "{raw}"
    );
    assert!(!raw.contains("refs/heads/main"));
    let (s, ready) = raw_http(gw.admin_port, "GET", "/readyz", &[]);
    assert_eq!(s, 503, "{ready}");
    assert!(ready.contains("\"audit\":false"));
}
