//! The webhook relay under load, for bench/webhooks.sh (ignored in the test suite: it measures,
//! it does not check behaviour). One gateway per backend (SQLite in a file, PostgreSQL) with a
//! Gitea hook and one target (a receiver answering 204):
//!
//! - accept: `BENCH_CONNS` keep-alive connections POSTing signed push events (a Gitea-sized
//!   pretty-printed payload, each with its own delivery id) for `BENCH_SECS` seconds; each is
//!   verified, looked up in the push index and committed (delivery, seen id, target row) before
//!   the 202: what the forge waits for;
//! - serial: the same on one connection, one at a time;
//! - baseline, in the same run: the same connections asking `/.gatehouse/auth` (forward auth)
//!   about a clone: authentication, the policy and the audit record, no store;
//! - relayed: how long until the receiver has every accepted delivery.
//!
//! With `GATEHOUSE_BENCH_OUT` set, the figures are written there as `key=value` lines;
//! `GATEHOUSE_BENCH_BIN` names the binary to measure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_testkit::{GatewayBuilder, Postgres, TempDir, TestGateway};

use crate::bench_secrets::{env_num, ms, percentile};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "bench-hook-secret";
const SIGNING: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A receiver counting requests, answering 204 and closing.
fn receiver() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                c.fetch_add(1, Ordering::SeqCst);
                let mut conn = conn;
                let _ = conn.write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    (port, n)
}

/// A push event about the size Gitea sends for a push of three commits; `n` makes each one
/// different (the same signed body twice is a replay).
fn payload(n: u64) -> Vec<u8> {
    let commit = |i: u32| {
        serde_json::json!({
            "id": format!("{i:040x}"), "message": "Fix the thing\n\nLonger text of the commit message.",
            "url": format!("https://git.example.com/acme/api/commit/{i:040x}"),
            "author": { "name": "Alice", "email": "alice@example.com", "username": "alice" },
            "committer": { "name": "Alice", "email": "alice@example.com", "username": "alice" },
            "timestamp": "2026-12-07T10:00:00Z", "added": [], "removed": [], "modified": ["src/main.rs"],
        })
    };
    serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "refs/heads/main", "before": "1".repeat(40), "after": format!("{n:040x}"),
        "compare_url": "https://git.example.com/acme/api/compare/a...b",
        "commits": [commit(1), commit(2), commit(3)], "total_commits": 3, "head_commit": commit(3),
        "repository": { "id": 1, "name": "api", "full_name": "acme/api",
                        "owner": { "login": "acme", "username": "acme" } },
        "pusher": { "login": "alice", "username": "alice" },
        "sender": { "login": "alice", "username": "alice" },
    }))
    .unwrap()
}

async fn send(s: &mut tokio::net::TcpStream, req: &[u8], buf: &mut Vec<u8>) -> u16 {
    s.write_all(req).await.unwrap();
    buf.clear();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Requests per second and every latency from `conns` connections for `secs`; `req(i)` is the
/// i-th request of a connection's sequence (`conn * 1_000_000 + i`).
async fn load(
    port: u16,
    conns: u64,
    secs: u64,
    req: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
    want: u16,
) -> (f64, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut took = Vec::new();
            let mut i = 0;
            while Instant::now() < until {
                let r = req(c * 1_000_000 + i);
                let t = Instant::now();
                assert_eq!(send(&mut s, &r, &mut buf).await, want);
                took.push(t.elapsed());
                i += 1;
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn gateway(tmp: &TempDir, store: &str, target_port: u16) -> TestGateway {
    let bin = std::env::var_os("GATEHOUSE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(crate::common::bin);
    let (root, _) = crate::common::repos(tmp);
    std::fs::write(tmp.path().join("hook.secret"), SECRET).unwrap();
    std::fs::write(tmp.path().join("signing.whsec"), SIGNING).unwrap();
    GatewayBuilder::new(&bin)
        .with_builtin_upstream(&root)
        .policy(&format!(
            "{}\n@id(\"bench\")\npermit(principal, action == Gatehouse::Action::\"git:read\", resource in Gatehouse::Owner::\"demo\");\n",
            crate::common::POLICY
        ))
        .extra(&format!(
            "[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\n{store}\n[webhooks]\n[[webhooks.hooks]]\nname = \"gitea\"\nkind = \"gitea\"\nsecrets = [{{ file = \"{d}/hook.secret\" }}]\n[[webhooks.hooks.targets]]\nname = \"bot\"\nurl = \"http://127.0.0.1:{target_port}/\"\nsigning_secret = {{ file = \"{d}/signing.whsec\" }}\nmax_in_flight = 16\n",
            d = tmp.path().display()
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/webhooks.sh runs it"]
async fn bench_webhook_accepts() {
    let conns = env_num("BENCH_CONNS", 4);
    let secs = env_num("BENCH_SECS", 5);
    let mut out = String::new();
    let pg = Postgres::shared();
    let body_len = payload(0).len();
    for backend in ["sqlite", "postgres"] {
        let tmp = TempDir::new(&format!("bench-hooks-{backend}"));
        let store = if backend == "postgres" {
            let url = pg.create_database("bench_hooks");
            let f = tmp.path().join("store-url");
            std::fs::write(&f, url).unwrap();
            format!("\n[store]\nurl = {{ file = \"{}\" }}\n", f.display())
        } else {
            String::new()
        };
        let (rport, received) = receiver();
        let gw = gateway(&tmp, &store, rport);
        let host = format!("127.0.0.1:{}", gw.port);
        let token = gw.token("bench", &["dev"]);
        let deliver: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
            let host = host.clone();
            let run = backend.to_owned();
            Arc::new(move |i: u64| {
                let body = payload(i);
                let sig = gatehouse_hooks::hex_hmac(SECRET.as_bytes(), &body);
                let mut r = format!(
                    "POST /.gatehouse/hooks/gitea HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Gitea-Delivery: {run}-{i}-{}\r\nX-Gitea-Event: push\r\nX-Gitea-Event-Type: push\r\nX-Gitea-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
                    std::process::id(),
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            })
        };
        let decide: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
            let head = format!(
                "GET /.gatehouse/auth HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nX-Original-Method: GET\r\nX-Original-URI: /demo/hello.git/info/refs?service=git-upload-pack\r\n\r\n"
            );
            Arc::new(move |_| head.clone().into_bytes())
        };
        // Warm up, and wait for the warm-up's deliveries to be relayed.
        let warm: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
            let d = deliver.clone();
            Arc::new(move |i| d(900_000_000 + i))
        };
        let (_, w) = load(gw.port, 1, 1, warm, 202).await;
        load(gw.port, 1, 1, decide.clone(), 200).await;
        while received.load(Ordering::SeqCst) < w.len() as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (base_rate, base) = load(gw.port, conns, secs, decide, 200).await;
        let before = received.load(Ordering::SeqCst);
        let started = Instant::now();
        let (rate, accepts) = load(gw.port, conns, secs, deliver.clone(), 202).await;
        let serial_fn: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> = {
            let d = deliver.clone();
            Arc::new(move |i| d(500_000_000 + i))
        };
        let (_, serial) = load(gw.port, 1, secs, serial_fn, 202).await;
        let total = (accepts.len() + serial.len()) as u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while received.load(Ordering::SeqCst) < before + total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let relayed_in = started.elapsed();
        let relayed = received.load(Ordering::SeqCst) - before;
        let rss = gw.rss_kib();
        for (k, v) in [
            ("accepts_per_s", format!("{rate:.0}")),
            ("accept_p50_ms", ms(percentile(&accepts, 0.50))),
            ("accept_p99_ms", ms(percentile(&accepts, 0.99))),
            ("serial_p50_ms", ms(percentile(&serial, 0.50))),
            ("serial_p99_ms", ms(percentile(&serial, 0.99))),
            ("decide_per_s", format!("{base_rate:.0}")),
            ("decide_p50_ms", ms(percentile(&base, 0.50))),
            ("accepted", total.to_string()),
            ("relayed", relayed.to_string()),
            (
                "relayed_per_s",
                format!("{:.0}", relayed as f64 / relayed_in.as_secs_f64()),
            ),
            ("rss_kib", rss.to_string()),
            ("body_bytes", body_len.to_string()),
        ] {
            out.push_str(&format!("{backend}_{k}={v}\n"));
        }
    }
    eprintln!("{out}");
    out.push_str(&format!("conns={conns}\nsecs={secs}\n"));
    if let Ok(path) = std::env::var("GATEHOUSE_BENCH_OUT") {
        std::fs::write(path, out).unwrap();
    }
}
