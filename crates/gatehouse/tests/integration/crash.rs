//! Writes are never forwarded unaudited: Gatehouse killed with SIGKILL in the middle of a burst of
//! pushes (real git clients) and API writes leaves a log that verifies, in which every ref the
//! upstream holds and every write the upstream received was announced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse_testkit::{GitHttpServer, TempDir, try_raw_http, wait_for};

use crate::common::{POLICY, bin, builder, clone_demo, commit_file, repos};

const API_WRITES: &str = r#"
@id("dev-api")
permit(principal in Gatehouse::Group::"dev", action == Gatehouse::Action::"repo:write",
       resource in Gatehouse::Owner::"demo");
"#;

#[test]
fn a_kill_9_during_a_burst_of_writes_loses_no_record_of_what_the_forge_applied() {
    let tmp = TempDir::new("crash");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    // A long gathering interval: without the commit before forwarding, the records of the last
    // 200 ms of writes would still be in memory when the process dies.
    let mut gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(&format!("{POLICY}\n{API_WRITES}"))
        .audit_extra("flush_interval = \"200ms\"")
        .start();
    let alice = gw.token("alice", &["dev"]);
    let url = gw.url();
    let port = gw.port;

    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicUsize::new(0));
    let posted = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for t in 0..2 {
        let (git, work) = clone_demo(tmp.path(), &url, &alice, &format!("pusher{t}"));
        let (stop, pushed) = (stop.clone(), pushed.clone());
        workers.push(std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                commit_file(&git, &work, &format!("f{t}-{i}.txt"), "x\n");
                let refspec = format!("HEAD:refs/heads/burst-{t}-{i}");
                if git.run(&work, &["push", "-q", "origin", &refspec]).ok {
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in 0..2 {
        let (stop, posted, alice) = (stop.clone(), posted.clone(), alice.clone());
        workers.push(std::thread::spawn(move || {
            let auth = format!("Bearer {alice}");
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("api-{t}-{i}");
                let Some((status, _)) = try_raw_http(
                    port,
                    "POST",
                    "/api/v1/repos/demo/hello/issues",
                    &[
                        ("Authorization", &auth),
                        ("X-Request-Id", &id),
                        ("Content-Length", "0"),
                    ],
                ) else {
                    // The gateway is gone (connection refused): the burst is over.
                    break;
                };
                if status == 201 {
                    posted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Let the burst run until writes of both kinds have gone through, then kill mid-flight.
    wait_for("pushes and API writes", Duration::from_secs(60), || {
        (pushed.load(Ordering::SeqCst) >= 3 && posted.load(Ordering::SeqCst) >= 20).then_some(())
    });
    std::thread::sleep(Duration::from_millis(150));
    gw.kill_and_restart();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }

    // The restarted gateway resumed the chain; stopped cleanly, the whole log verifies.
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(30))
        .expect("gatehouse stops on SIGTERM");
    let path = gw.audit_path();
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", &path.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = std::fs::read_to_string(&path).unwrap();

    // Every burst branch the upstream holds was announced, with its decision, before it moved.
    let refs = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "--git-dir"])
        .arg(root.join("demo/hello.git"))
        .args(["for-each-ref", "--format=%(refname)", "refs/heads/burst-*"])
        .output()
        .unwrap();
    let refs = String::from_utf8_lossy(&refs.stdout).to_string();
    let refs: Vec<&str> = refs.lines().collect();
    assert!(refs.len() >= 3, "the burst pushed too little: {refs:?}");
    for r in &refs {
        let announced = audit.lines().any(|l| {
            l.contains("\"event\":\"forwarding\"")
                && l.contains(&format!("\"name\":\"{r}\""))
                && l.contains("\"decision\":\"allow\"")
        });
        assert!(
            announced,
            "{r} is on the forge but not in the audit log:\n{audit}"
        );
    }

    // Every write the upstream received (pushes and API calls) was announced under its request id.
    let writes = upstream.writes();
    assert!(
        writes.iter().filter(|w| w.contains("/api/")).count() >= 20,
        "{writes:?}"
    );
    // (A fetch is a POST too, but reads: upload-pack is not a write.)
    for w in writes.iter().filter(|w| !w.ends_with("/git-upload-pack")) {
        let id = w.split(' ').next().unwrap_or_default();
        let announced = audit.lines().any(|l| {
            l.contains("\"event\":\"forwarding\"")
                && l.contains(&format!("\"request_id\":\"{id}\""))
        });
        assert!(
            announced,
            "the upstream received `{w}` but it is not in the audit log:\n{audit}"
        );
    }
    // And the records of completed requests follow their announcements, as before.
    assert!(audit.contains("\"event\":\"request\""));
}

/// A small tmpfs, unmounted when dropped (after the gateway writing to it has stopped: declare
/// it first). Mounting needs root, as the SSH tests do.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a tmpfs (needs root): {out:?}");
        Self(path)
    }

    /// Fills what is left with a file, until the file system says it is full.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_audit_disk_refuses_writes_and_the_gateway_recovers_when_space_returns() {
    let tmp = TempDir::new("audit-full");
    let disk = SmallDisk::mount(tmp.path().join("auditfs"), "1m");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let log = disk.0.join("audit.log");
    let mut gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(&format!("{POLICY}\n{API_WRITES}"))
        .audit_file(&log.to_string_lossy())
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let post = |id: &str| {
        try_raw_http(
            gw.port,
            "POST",
            "/api/v1/repos/demo/hello/issues",
            &[
                ("Authorization", &auth),
                ("X-Request-Id", id),
                ("Content-Length", "0"),
            ],
        )
        .map(|(s, _)| s)
        .unwrap_or(0)
    };
    let ready = || gatehouse_testkit::raw_http(gw.admin_port, "GET", "/readyz", &[]).0 == 200;
    assert_eq!(post("before-full"), 201);

    // The disk fills up. The page the log ends in may still take a record or two; then every
    // write is refused before it reaches the forge, and the gateway says it is not ready.
    disk.fill();
    // (A retry of the records still queued may fit in what is left of the log's last page and
    // make the gateway healthy again for a moment: write until it is refused and stays so.)
    let mut refused = None;
    let mut i = 0;
    while i < 400 && (refused.is_none() || ready()) {
        let id = format!("while-full-{i}");
        i += 1;
        match post(&id) {
            201 => {}
            503 => refused = Some(id),
            s => panic!("{id}: status {s}"),
        }
    }
    let refused = refused.expect("no write was refused on a full audit disk");
    assert!(!ready(), "ready with a full audit disk");

    // Reads are refused too while records cannot be written.
    let (s, _) = gatehouse_testkit::raw_http(
        gw.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 503);

    // Space returns: the writer's retry succeeds, the gateway is ready and writes again.
    disk.free();
    wait_for("ready again", Duration::from_secs(20), || {
        ready().then_some(())
    });
    assert_eq!(post("after-free"), 201);
    // nginx logs a request once it has finished it: once the last write is there, an earlier
    // one that had reached it would be there too.
    let writes = upstream.writes_through("after-free");
    assert!(
        !writes.iter().any(|w| w.starts_with(&format!("{refused} "))),
        "a write the audit log could not record reached the forge"
    );

    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(30))
        .expect("gatehouse stops on SIGTERM");
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", &log.to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let audit = std::fs::read_to_string(&log).unwrap();
    // The refused write's end is on record, as refused; it was never announced.
    let recs: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["request_id"] == refused.as_str())
        .collect();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["event"], "request", "{recs:?}");
    assert_eq!(recs[0]["reason"], "audit_unavailable", "{recs:?}");
    assert_eq!(recs[0]["status"], 503, "{recs:?}");
    assert!(audit.contains("\"request_id\":\"after-free\""));
    drop(gw);
    drop(disk);
}
