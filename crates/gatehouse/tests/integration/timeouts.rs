use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use gatehouse_testkit::{RefusedPort, TempDir, raw_http};

use crate::common::{POLICY, builder};

/// Reads until the peer closes the connection; returns how long that took (None if it did not
/// within `limit`).
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).ok();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed());
            }
            Err(_) => return None,
        }
    }
}

/// A fault-injecting upstream (a test double, for faults no real forge produces on demand): on
/// each connection it reads the request, sends `answer` (maybe nothing) and then stays silent,
/// holding the connection open. Returns its port.
fn fault_upstream(answer: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer);
            held.push(conn);
        }
    });
    port
}

#[test]
fn upstream_failures_are_502_and_504_with_problem_details() {
    let tmp = TempDir::new("upstream-fail");
    // Bound but never listening: connections are refused, and no other component can be given
    // the port meanwhile.
    let dead_port = RefusedPort::new();
    let dead = dead_port.port;
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{dead}"))
        .forge_kind("gitea")
        .policy(POLICY)
        .no_wait_ready()
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 502, "{raw}");
    assert!(raw.contains("\"code\":\"upstream_unavailable\""), "{raw}");
    let (s, ready) = raw_http(gw.admin_port, "GET", "/readyz", &[]);
    assert_eq!(s, 503);
    assert!(ready.contains("\"upstream\":false"), "{ready}");
    drop(gw);

    // Fault injection (named as such): an upstream that accepts connections and never answers,
    // which no real forge does on demand.
    let hung_port = fault_upstream(b"");
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{hung_port}"))
        .upstream_extra("response_timeout = \"1s\"")
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let start = Instant::now();
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        "/explore/_echo",
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 504, "{raw}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(raw.contains("\"code\":\"upstream_timeout\""), "{raw}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("gatehouse_upstream_errors_total{kind=\"timeout\"} 1"),
        "{metrics}"
    );
    drop(tmp);
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let tmp = TempDir::new("conn-timeouts");
    let root = tmp.path().join("repos");
    std::fs::create_dir_all(&root).unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .server_extra("header_read_timeout = \"1s\"\nidle_timeout = \"1s\"")
        .start();

    // A client that never finishes its headers (slowloris) is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    slow.write_all(b"GET /demo/hello.git/info/refs HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = closed_within(&mut slow, Duration::from_secs(10)).expect("slow client was not cut off");
    assert!(t < Duration::from_secs(5), "{t:?}");

    // A keep-alive connection with no request in flight is closed after the idle timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    idle.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t = closed_within(&mut idle, Duration::from_secs(15)).expect("idle connection stayed open");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(8),
        "{t:?}"
    );
}

#[test]
fn a_response_body_the_upstream_stops_sending_is_cut_off_and_audited() {
    // Fault injection (named as such): an upstream that answers the headers and the first bytes
    // of a 1000-byte body, then sends nothing more and keeps the connection open. A real forge
    // does this only when it hangs, which cannot be caused on demand.
    let stuck_port = fault_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\nten bytes.",
    );
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{stuck_port}"))
        .upstream_extra("body_idle_timeout = \"1s\"")
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "GET /explore/_echo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    // The client gets the head and the ten bytes, then the connection is closed: it is not left
    // waiting for the other 990 bytes.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nten bytes."), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );

    let audit = gw.audit_when("the cut-off response's record", |t| {
        t.contains("idle_timeout")
    });
    let rec: serde_json::Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["outcome"] == "idle_timeout")
        .expect("a record with outcome idle_timeout");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["bytes_out"], 10, "{rec}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("gatehouse_upstream_errors_total{kind=\"body_idle\"} 1"),
        "{metrics}"
    );
}

/// Sends `head` and `partial` (a body shorter than the head's `Content-Length`), then nothing;
/// returns the status and the whole answer, and how long it took to come.
fn stalled_upload(port: u16, head: &str, partial: &[u8]) -> (u16, String, Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(partial).unwrap();
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // The answer is complete once its body (Content-Length) is in.
                let text = String::from_utf8_lossy(&got);
                if let Some((h, b)) = text.split_once("\r\n\r\n")
                    && let Some(len) = h.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    && b.len() >= len
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer to a stalled upload: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text, start.elapsed())
}

#[test]
fn a_client_that_stops_sending_its_request_body_gets_408() {
    let tmp = TempDir::new("body-stall");
    let (root, _) = crate::common::repos(&tmp);
    let upstream = gatehouse_testkit::GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .server_extra("body_idle_timeout = \"1s\"")
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let head = |len: usize| {
        format!(
            "POST /demo/hello.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             User-Agent: git/2.47.3\r\nAuthorization: {auth}\r\n\
             Content-Type: application/x-git-receive-pack-request\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let zero = "0".repeat(40);
    let new = "1".repeat(40);
    let command = format!("{zero} {new} refs/heads/stalled\0report-status\n");
    let pkt = format!("{:04x}{command}", command.len() + 4);

    // Stalled inside the command list, which Gatehouse reads to decide on each ref.
    let (status, text, took) = stalled_upload(gw.port, &head(1000), &pkt.as_bytes()[..30]);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("the request body stopped arriving"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // Stalled in the pack, after an allowed command list, while it streams to the forge.
    let mut partial = pkt.clone().into_bytes();
    partial.extend_from_slice(b"0000PACK\0\0\0\x02");
    let (status, text, took) = stalled_upload(gw.port, &head(100_000), &partial);
    assert_eq!(status, 408, "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // Both are recorded, and neither counts against the upstream.
    let audit = gw.audit_when("both stalled uploads' records", |t| {
        t.matches("request_body_timeout").count() >= 2
    });
    let recs: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["status"] == 408)
        .collect();
    assert_eq!(recs.len(), 2, "{audit}");
    assert!(
        recs.iter().all(|r| r["reason"] == "request_body_timeout"),
        "{recs:?}"
    );
    let metrics = gw.metrics();
    assert!(
        !metrics.contains("gatehouse_upstream_errors_total{"),
        "{metrics}"
    );
    // Nothing was pushed.
    assert!(!root.join("demo/hello.git/refs/heads/stalled").exists());
}

#[test]
fn a_request_the_client_abandons_before_its_response_is_still_audited() {
    // Fault injection (named as such): an upstream that reads the request and never answers, so
    // that the client gives up while Gatehouse is still waiting for the response head.
    let hung_port = fault_upstream(b"");
    let policy = format!(
        "{POLICY}\n@id(\"api-write\")\npermit(principal in Gatehouse::Group::\"dev\", \
         action == Gatehouse::Action::\"repo:write\", resource in Gatehouse::Owner::\"demo\");\n"
    );
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{hung_port}"))
        .forge_kind("gitea")
        .policy(&policy)
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "POST /api/v1/repos/demo/hello/issues HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{{\"a\":\"bcd\"}}"
    )
    .unwrap();
    // Abandoned once it is on its way upstream (its announcement written).
    gw.audit_when("the write's announcement", |t| {
        t.contains("\"event\":\"forwarding\"")
    });
    drop(s);

    let audit = gw.audit_when("the abandoned request's record", |t| {
        t.contains("\"outcome\":\"aborted\"")
    });
    let recs: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["path"] == "/api/v1/repos/demo/hello/issues")
        .collect();
    // A write: announced (synced) before it went upstream, then recorded when it ended.
    assert_eq!(recs.len(), 2, "{audit}");
    assert_eq!(recs[0]["event"], "forwarding", "{audit}");
    assert_eq!(recs[0]["request_id"], recs[1]["request_id"], "{audit}");
    let rec = &recs[1];
    assert_eq!(rec["event"], "request", "{rec}");
    assert_eq!(rec["outcome"], "aborted", "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["action"], "repo:write", "{rec}");
    assert_eq!(rec["repo"], "demo/hello", "{rec}");
    assert_eq!(rec["principal"]["subject"], "alice", "{rec}");
    assert_eq!(rec["bytes_in"], 11, "{rec}");
    assert!(rec.get("status").is_none(), "{rec}");
    let out = gw.cli_raw(&["audit", "verify", gw.audit_path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            "gatehouse_requests_total{action=\"repo:write\",decision=\"allow\",status=\"499\"} 1"
        ),
        "{metrics}"
    );
}

/// The established TCP connections whose local port is `port` (from `/proc/net/tcp`).
fn established_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

#[test]
fn an_http2_connection_whose_streams_were_reset_still_goes_idle() {
    // Fault injection (named as such): an upstream that never answers, so that the client's
    // request is still in flight when the client cancels it (an HTTP/2 RST_STREAM).
    let hung_port = fault_upstream(b"");
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{hung_port}"))
        .forge_kind("gitea")
        .policy(POLICY)
        .server_extra("idle_timeout = \"1s\"")
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let url = format!("{}/explore/_echo", gw.url());
    let port = gw.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .http2_keep_alive_interval(Duration::from_millis(200))
            .http2_keep_alive_while_idle(true)
            .build()
            .unwrap();
        // Two requests on the one connection, both cancelled by the client after 300 ms.
        for _ in 0..2 {
            let r = tokio::time::timeout(
                Duration::from_millis(300),
                client.get(&url).header("Authorization", &auth).send(),
            )
            .await;
            assert!(r.is_err(), "the hung upstream answered: {r:?}");
        }
        assert_eq!(established_on(port), 1, "one HTTP/2 connection");
        // Nothing is in flight any more: the connection is closed after the idle timeout,
        // although the client keeps it alive with pings.
        let start = std::time::Instant::now();
        while established_on(port) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the connection stayed open with no request in flight"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(client);
    });
}

/// FAULT INJECTION (named as such): a TCP forwarder in front of a real upstream that can be
/// switched off and on ([`Forwarder::set`]). Off, it cuts every connection it carries and closes
/// each new one at once, as an upstream that went away does; on, it forwards again.
struct Forwarder {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    fn start(target: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (switch, carried) = (up.clone(), live.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if !switch.load(Ordering::SeqCst) {
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                carried.lock().unwrap().push(conn.try_clone().unwrap());
                for (mut from, mut to) in [
                    (conn.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, conn),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { port, up, live }
    }

    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for c in self.live.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The upstream goes away and comes back: while it is away requests get 502 with the documented
/// code, and then every request succeeds again: no pooled connection to the old upstream is
/// stuck or reused.
#[test]
fn the_upstream_going_away_and_coming_back() {
    let tmp = TempDir::new("upstream-back");
    let (root, _) = crate::common::repos(&tmp);
    let upstream = gatehouse_testkit::GitHttpServer::start(&root);
    let fwd = Forwarder::start(upstream.port);
    let gw = builder()
        .with_upstream_url(&format!("http://127.0.0.1:{}", fwd.port))
        .forge_kind("gitea")
        .policy(POLICY)
        .start();
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let get = || {
        raw_http(
            gw.port,
            "GET",
            "/explore/_echo",
            &[("Authorization", &auth)],
        )
    };
    // Several requests: the gateway keeps connections to the upstream in its pool.
    for _ in 0..5 {
        let (s, raw) = get();
        assert_eq!(s, 200, "{raw}");
    }

    fwd.set(false);
    // A pooled connection the upstream cut: the gateway finds out on its next request.
    let (s, raw) = get();
    assert_eq!(s, 502, "{raw}");
    assert!(raw.contains("\"code\":\"upstream_unavailable\""), "{raw}");
    assert!(raw.contains("application/problem+json"), "{raw}");
    for _ in 0..3 {
        let (s, raw) = get();
        assert_eq!(s, 502, "{raw}");
    }

    fwd.set(true);
    gatehouse_testkit::wait_for("the upstream to be back", Duration::from_secs(10), || {
        (get().0 == 200).then_some(())
    });
    for i in 0..20 {
        let (s, raw) = get();
        assert_eq!(s, 200, "request {i} after recovery: {raw}");
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains("gatehouse_upstream_errors_total{kind=\"unreachable\"}"),
        "{metrics}"
    );
}
