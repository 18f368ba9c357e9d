//! SIGTERM through both upstream paths (nginx + fcgiwrap + `git http-backend`, and the built-in
//! `git http-backend`): the listener closes at once, a request in flight that finishes within
//! `server.shutdown_grace` completes, one still running when the grace ends is cut off and
//! recorded as aborted, and the log ends verified.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gatehouse_testkit::{GitHttpServer, TempDir, wait_for};

use crate::common::{POLICY, bin, builder, ref_of, repos};

/// A protocol-v0 upload-pack request for `head`, complete.
fn upload_pack_body(head: &str) -> Vec<u8> {
    let want = format!("want {head}\n");
    format!("{:04x}{want}00000009done\n", want.len() + 4).into_bytes()
}

/// Opens a connection and sends the head and the first `sent` bytes of an upload-pack POST.
fn start_fetch(port: u16, auth: &str, id: &str, body: &[u8], sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /demo/hello.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\
         X-Request-Id: {id}\r\nContent-Type: application/x-git-upload-pack-request\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..sent]).unwrap();
    s
}

fn shutdown_drains_and_records(upstream: &str) {
    let tmp = TempDir::new(&format!("shutdown-{upstream}"));
    let (root, _) = repos(&tmp);
    let head = ref_of(&root.join("demo/hello.git"), "refs/heads/main");
    let nginx;
    let b = builder().policy(POLICY).shutdown_grace("3s");
    let b = if upstream == "nginx" {
        nginx = GitHttpServer::start(&root);
        b.with_upstream_url(&nginx.url())
    } else {
        b.with_builtin_upstream(&root)
    };
    let mut gw = b.start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let body = upload_pack_body(&head);

    // Two fetches in flight, each with part of its body sent: one will finish, one never will.
    let mut finishing = start_fetch(gw.port, &auth, "finishes", &body, 10);
    let mut stalled = start_fetch(gw.port, &auth, "cut-off", &body, 10);
    // Both are in flight (read, decided, forwarded) before the signal.
    wait_for("both fetches in flight", Duration::from_secs(10), || {
        gw.metrics()
            .contains("gatehouse_requests_in_flight 2")
            .then_some(())
    });

    let signalled = Instant::now();
    gw.signal("TERM");
    // New connections are refused once the listener has closed.
    wait_for("the listener to close", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", gw.port))
            .is_err()
            .then_some(())
    });

    // The first finishes its body within the grace and gets its whole answer.
    finishing.write_all(&body[10..]).unwrap();
    let mut answer = Vec::new();
    finishing.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        answer.windows(4).any(|w| w == b"PACK"),
        "no pack in the answer"
    );

    // The second is cut off when the grace ends; the process exits then.
    let exit = gw
        .wait_exit(Duration::from_secs(30))
        .expect("gatehouse exits when the grace ends");
    assert!(exit.success(), "{exit:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "exited before the grace ended: {took:?}"
    );
    // Its connection ends without a pack (the built-in upstream may have sent the response
    // head already: git http-backend answers before it reads the request).
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(
        !rest.windows(4).any(|w| w == b"PACK"),
        "the stalled fetch was answered"
    );

    // The log verifies, and says what happened to each.
    let log = gw.audit_path();
    let out = std::process::Command::new(bin())
        .args(["audit", "verify", &log.to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |id: &str| {
        recs.iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {recs:?}"))
    };
    assert_eq!(of("finishes")["outcome"], "complete", "{recs:?}");
    assert_eq!(of("finishes")["status"], 200, "{recs:?}");
    assert_eq!(of("cut-off")["outcome"], "aborted", "{recs:?}");
    assert!(
        recs.iter().any(|r| r["event"] == "gateway_stop"),
        "{recs:?}"
    );
}

#[test]
fn sigterm_drains_through_nginx() {
    shutdown_drains_and_records("nginx");
}

#[test]
fn sigterm_drains_through_the_built_in_upstream() {
    shutdown_drains_and_records("builtin");
}
