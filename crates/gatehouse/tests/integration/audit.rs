use std::time::Duration;

use gatehouse_testkit::{TempDir, TestGateway, raw_http, wait_for};

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

/// A gateway on the built-in upstream with the test policy (`[audit]` lines added), and alice's
/// `Authorization` value.
fn audited_gateway(tmp: &TempDir, audit_extra: &str) -> (TestGateway, String) {
    let (root, _) = repos(tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .audit_extra(audit_extra)
        .start();
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    (gw, alice)
}

/// Stops the gateway as production does (SIGTERM), so that its last records are written.
fn stop(gw: &mut TestGateway) {
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(30))
        .expect("gatehouse stops on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", gw.log());
}

#[test]
fn audit_log_verifies_and_a_one_byte_edit_is_found() {
    let tmp = TempDir::new("audit");
    let (mut gw, alice) = audited_gateway(&tmp, "");
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
    stop(&mut gw);

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
fn a_rotating_audit_log_verifies_across_its_files_and_an_edit_in_an_old_one_is_found() {
    let tmp = TempDir::new("audit-rotate");
    // One record per write, so that the log rotates every few records however the writer's
    // batches fall on a loaded machine (rotation is checked after each write: forty records
    // written in one batch once made a single rotated file).
    let (mut gw, alice) = audited_gateway(&tmp, "rotate_size = \"4KiB\"\nbatch_max = 1");
    for _ in 0..40 {
        let (status, _) = raw_http(
            gw.port,
            "GET",
            "/demo/hello.git/info/refs?service=git-upload-pack",
            &[("Authorization", &alice)],
        );
        assert_eq!(status, 200);
    }
    stop(&mut gw);

    let path = gw.audit_path();
    let dir = path.parent().unwrap();
    let mut rotated: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let range = name.strip_prefix("audit.log.")?;
            let (a, b) = range.split_once('-')?;
            Some((
                a.parse::<u64>().ok()?,
                b.parse::<u64>().ok()?,
                dir.join(&name),
            ))
        })
        .collect();
    rotated.sort();
    assert!(
        rotated.len() >= 2,
        "40 records of ~400 bytes in 4 KiB files"
    );
    // The ranges follow each other, and each new file opens by naming the one before.
    for w in rotated.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "{rotated:?}");
    }
    let live = std::fs::read_to_string(&path).unwrap();
    let last = rotated.last().unwrap();
    assert!(
        live.lines()
            .next()
            .unwrap()
            .contains(r#""event":"audit_continued","#)
            && live.contains(&format!("continues audit.log.{}-{}", last.0, last.1)),
        "{live}"
    );
    let (ok, out) = verify(&path);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("across {} files", rotated.len() + 1)),
        "{out}"
    );

    // One byte changed in a rotated-out file: found, and that file named.
    let old = std::fs::read_to_string(&rotated[0].2).unwrap();
    let edited = old.replacen("\"status\":200", "\"status\":201", 1);
    assert_ne!(old, edited);
    std::fs::write(&rotated[0].2, &edited).unwrap();
    let (ok, out) = verify(&path);
    assert!(!ok, "an edited rotated file verified: {out}");
    assert!(
        out.contains(&rotated[0].2.display().to_string()) && out.contains("hash chain broken"),
        "{out}"
    );
    std::fs::write(&rotated[0].2, &old).unwrap();

    // Retention removes the oldest file: what is left still verifies, from a later record.
    std::fs::remove_file(&rotated[0].2).unwrap();
    let (ok, out) = verify(&path);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("from record {}", rotated[0].1 + 1)),
        "{out}"
    );
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
