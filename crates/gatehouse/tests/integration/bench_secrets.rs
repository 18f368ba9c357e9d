//! The secrets broker's read path under load, for bench/secrets.sh (ignored in the test suite:
//! it measures, it does not check behaviour). One gateway per backend (SQLite in a file,
//! PostgreSQL), a GitHub-Actions-shaped job token from the real IdP:
//!
//! - cached: `BENCH_CONNS` keep-alive connections reading one secret with one token for
//!   `BENCH_SECS` seconds (the token's verification is cached after the first read; each read
//!   checks the policy, reads the secret's rows, writes its lease and opens the value);
//! - baseline, in the same run: the same connections asking `/.gatehouse/auth` (forward auth)
//!   about a clone by the same token: authentication, the policy and the audit record, no store;
//! - serial: the cached read on one connection, one at a time (what a first read compares with);
//! - first reads: `BENCH_FIRST` new jobs, each with a token never seen before, reading once, one
//!   after another (the signature verified, the claims mapped, then the read).
//!
//! With `GATEHOUSE_BENCH_OUT` set, the figures are written there as `key=value` lines;
//! `GATEHOUSE_BENCH_BIN` names the binary to measure (bench/secrets.sh passes a release build).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatehouse_testkit::{GatewayBuilder, Idp, Postgres, TempDir, TestGateway};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::secrets::{job_claims_for, ok, secret_cli};

pub(crate) fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One HTTP/1.1 keep-alive connection that sends GETs and reads answers with a Content-Length.
struct Conn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> Self {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            s,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends `head` (a whole request head) and returns the status.
    async fn get(&mut self, head: &[u8]) -> u16 {
        self.s.write_all(head).await.unwrap();
        self.buf.clear();
        let mut chunk = [0_u8; 8192];
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head_text = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status: u16 = head_text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let len: usize = head_text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no content-length: {head_text}"));
        while self.buf.len() < end + len {
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        status
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Requests per second and every latency, from `conns` connections sending `head` for `secs`.
async fn load(port: u16, head: &[u8], conns: u64, secs: u64) -> (f64, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let head = head.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(port).await;
            let mut took = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let status = c.get(&head).await;
                assert_eq!(status, 200);
                took.push(t.elapsed());
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

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn gateway(tmp: &TempDir, store: &str) -> TestGateway {
    let bin = std::env::var_os("GATEHOUSE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(crate::common::bin);
    let (root, _) = crate::common::repos(tmp);
    let key = tmp.path().join("master.key");
    let out = std::process::Command::new(&bin)
        .args(["secret", "master-key", "generate"])
        .output()
        .unwrap();
    std::fs::write(&key, &out.stdout).unwrap();
    GatewayBuilder::new(&bin)
        .with_builtin_upstream(&root)
        .with_idp_extra(Idp::shared(), "workload = \"github-actions\"\n")
        .policy(&format!(
            "{}\n{}",
            crate::common::POLICY,
            crate::secrets::SECRETS_POLICY
        ))
        .extra(&format!(
            "[secrets]\nmaster_key = {{ file = \"{}\" }}\n\n[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\n{store}",
            key.display()
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/secrets.sh runs it"]
async fn bench_secret_reads() {
    let conns = env_num("BENCH_CONNS", 4);
    let secs = env_num("BENCH_SECS", 5);
    let first = env_num("BENCH_FIRST", 100);
    let idp = Idp::shared();
    let mut out = String::new();
    let pg = Postgres::shared();
    for backend in ["sqlite", "postgres"] {
        let tmp = TempDir::new(&format!("bench-secrets-{backend}"));
        let store = if backend == "postgres" {
            let url = pg.create_database("bench_secrets");
            let f = tmp.path().join("store-url");
            std::fs::write(&f, url).unwrap();
            format!("\n[store]\nurl = {{ file = \"{}\" }}\n", f.display())
        } else {
            String::new()
        };
        let gw = gateway(&tmp, &store);
        let ops = gw.token("oncall", &["ops"]);
        ok(&secret_cli(
            &gw,
            &ops,
            &["put", "prod/demo/hello/db-password"],
            b"correct horse battery staple",
        ));
        let token = idp
            .sign(job_claims_for(idp, "prod", "1"), "RS256", None)
            .await;
        let host = format!("127.0.0.1:{}", gw.port);
        let read = format!(
            "GET /.gatehouse/secrets/prod/demo/hello/db-password HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let decide = format!(
            "GET /.gatehouse/auth HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nX-Original-Method: GET\r\nX-Original-URI: /demo/hello.git/info/refs?service=git-upload-pack\r\n\r\n"
        );
        // Warm both paths (the token's verification, the policy, the pool).
        load(gw.port, read.as_bytes(), 1, 1).await;
        load(gw.port, decide.as_bytes(), 1, 1).await;
        let (base_rate, base) = load(gw.port, decide.as_bytes(), conns, secs).await;
        let (rate, reads) = load(gw.port, read.as_bytes(), conns, secs).await;
        // One connection, one read at a time: what a first read is compared with.
        let (_, serial) = load(gw.port, read.as_bytes(), 1, secs).await;

        // New jobs: tokens signed beforehand, each read once.
        let mut tokens = Vec::new();
        for i in 0..first {
            tokens.push(
                idp.sign(
                    job_claims_for(idp, "prod", &format!("{}", 10_000 + i)),
                    "RS256",
                    None,
                )
                .await,
            );
        }
        let mut firsts = Vec::new();
        let mut c = Conn::open(gw.port).await;
        for t in &tokens {
            let head = format!(
                "GET /.gatehouse/secrets/prod/demo/hello/db-password HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\n\r\n"
            );
            let started = Instant::now();
            assert_eq!(c.get(head.as_bytes()).await, 200);
            firsts.push(started.elapsed());
        }
        firsts.sort();
        let rss = gw.rss_kib();
        for (k, v) in [
            ("reads_per_s", format!("{rate:.0}")),
            ("read_p50_ms", ms(percentile(&reads, 0.50))),
            ("read_p99_ms", ms(percentile(&reads, 0.99))),
            ("decide_per_s", format!("{base_rate:.0}")),
            ("decide_p50_ms", ms(percentile(&base, 0.50))),
            ("decide_p99_ms", ms(percentile(&base, 0.99))),
            ("serial_p50_ms", ms(percentile(&serial, 0.50))),
            ("serial_p99_ms", ms(percentile(&serial, 0.99))),
            ("first_p50_ms", ms(percentile(&firsts, 0.50))),
            ("first_p99_ms", ms(percentile(&firsts, 0.99))),
            ("first_n", first.to_string()),
            ("rss_kib", rss.to_string()),
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
