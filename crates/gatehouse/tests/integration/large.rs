use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_testkit::{Git, GitHttpServer, TempDir, TestGateway, wait_for};

use crate::common::{POLICY, builder, git_bearer, head_of, local_head, repos};

const MIB: u64 = 1024 * 1024;

/// Pushes 200 MiB of random data through `gw` and clones it back; checks both land whole and
/// that Gatehouse's peak RSS stays under 64 MiB. Returns the pushed commit.
fn stream_200_mib(gw: &TestGateway, tmp: &TempDir, root: &Path, git: &Git, url: &str) -> String {
    let work = tmp.path().join("big");
    git.ok(tmp.path(), &["clone", "-q", url, &work.to_string_lossy()]);
    for i in 0..4 {
        let out = Command::new("head")
            .args(["-c", &(50 * MIB).to_string(), "/dev/urandom"])
            .output()
            .unwrap();
        std::fs::write(work.join(format!("blob{i}.bin")), out.stdout).unwrap();
    }
    git.ok(&work, &["add", "."]);
    git.ok(&work, &["commit", "-qm", "200 MiB of random data"]);
    let idle = gw.rss_kib();
    git.ok(&work, &["push", "-q", "origin", "main"]);
    let local = local_head(git, &work);
    assert_eq!(head_of(&root.join("demo/hello.git"), "main"), local);
    let after_push = gw.peak_rss_kib();

    let copy = tmp.path().join("copy");
    git.ok(tmp.path(), &["clone", "-q", url, &copy.to_string_lossy()]);
    let size: u64 = (0..4)
        .map(|i| {
            std::fs::metadata(copy.join(format!("blob{i}.bin")))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(size, 200 * MIB);
    let peak = gw.peak_rss_kib();
    eprintln!(
        "gatehouse RSS: idle {idle} KiB, peak after push {after_push} KiB, peak after clone {peak} KiB"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB is over 64 MiB");
    local
}

/// The same through the production upstream path: nginx + fcgiwrap + `git http-backend`.
#[test]
fn large_push_and_clone_stream_through_nginx() {
    let tmp = TempDir::new("large-nginx");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .start();
    let alice = gw.token("alice", &["dev"]);
    let git = git_bearer(&tmp.path().join("home"), &alice);
    let url = format!("{}/demo/hello.git", gw.url());
    stream_200_mib(&gw, &tmp, &root, &git, &url);
}

/// A 200 MiB push and clone stream through Gatehouse in bounded memory, and a SIGTERM in the
/// middle of a clone lets the clone finish.
#[test]
fn large_push_and_clone_stream_and_sigterm_drains() {
    let tmp = TempDir::new("large");
    let (root, _) = repos(&tmp);
    // A grace well past how long the clone can take on a loaded 2-core CI machine: this test is
    // about draining; cutting off at the end of the grace is shutdown.rs's.
    let mut gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .shutdown_grace("180s")
        .start();
    let alice = gw.token("alice", &["dev"]);
    let git = git_bearer(&tmp.path().join("home"), &alice);
    let url = format!("{}/demo/hello.git", gw.url());
    let local = stream_200_mib(&gw, &tmp, &root, &git, &url);

    // SIGTERM while a clone is streaming: the clone completes, then Gatehouse exits cleanly.
    let clone2 = tmp.path().join("during-shutdown");
    let home = tmp.path().join("home");
    let child = Command::new("git")
        .args(["clone", "-q", &url, &clone2.to_string_lossy()])
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env(
            "GIT_CONFIG_VALUE_0",
            format!("Authorization: Bearer {alice}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pack_dir = clone2.join(".git/objects/pack");
    wait_for(
        "the clone to start receiving the pack",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(&pack_dir)
                .ok()?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("tmp_pack"))
                .then_some(())
        },
    );
    gw.signal("TERM");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "clone interrupted by shutdown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = gw
        .wait_exit(Duration::from_secs(60))
        .expect("gatehouse exits after draining");
    assert!(exit.success());
    let git2 = Git::new(&home);
    assert_eq!(
        git2.ok(&clone2, &["rev-parse", "HEAD"]).stdout.trim(),
        local
    );
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    assert!(
        audit.trim_end().ends_with(
            "\"event\":\"gateway_stop\",\"bytes_in\":0,\"bytes_out\":0,\"duration_ms\":0.0}"
        ),
        "{}",
        audit.lines().last().unwrap_or("")
    );
}
