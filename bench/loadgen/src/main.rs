//! An open-loop, constant-rate HTTP/1.1 load generator for `bench/run.sh`: what wrk2 does, for
//! machines where wrk2 is not packaged.
//!
//! Requests are due at evenly spaced times, `1 / rate` apart, dealt round-robin to `connections`
//! keep-alive connections, each served by its own thread that sleeps until its next request is
//! due (a nanosecond sleep, not a millisecond event-loop tick, so requests do not leave in
//! bursts). Latency is measured from when a request was *due*, not from when it was sent: a
//! connection still waiting for an earlier answer sends late and that wait counts, which corrects
//! for coordinated omission the way wrk2 does.
//!
//! Two more latencies are measured from when the request was written: to when the kernel queued
//! the last bytes of the answer on the client's socket (its `SO_TIMESTAMPNS` receive timestamp,
//! `rx_*`), and to when this thread had read them (`sent_*`, what wrk reports). The difference is
//! how late the generator's own thread woke up, which on cores shared with the server under test
//! depends on how much CPU that server uses.
//!
//! Usage: gatehouse-loadgen --addr 127.0.0.1:8080 --path /ping [--header 'Name: value']...
//!        --rate 8000 --seconds 10 [--connections 16] [--warmup-seconds 1] [--samples FILE]
//!
//! `--samples FILE` writes every measured request (connection, due, sent and done times in
//! microseconds since the start, and the kernel receive time in microseconds after the send), to
//! look at when the slow ones happen.
//!
//! Prints one line of `key=value` pairs: sent, ok, errors, achieved rate and latency percentiles
//! in milliseconds (`p*` from due, `sent_p*` as read, `rx_p*` as queued by the kernel). Exits
//! non-zero when the target cannot be reached or a connection fails.
#![forbid(unsafe_code)]

use std::io::{IoSliceMut, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    headers: Vec<String>,
    rate: f64,
    seconds: f64,
    warmup: f64,
    connections: usize,
    samples: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: String::new(),
        path: "/".into(),
        headers: Vec::new(),
        rate: 0.0,
        seconds: 10.0,
        warmup: 1.0,
        connections: 16,
        samples: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v()?,
            "--path" => a.path = v()?,
            "--header" => a.headers.push(v()?),
            "--rate" => a.rate = v()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--seconds" => a.seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup-seconds" => {
                a.warmup = v()?.parse().map_err(|e| format!("--warmup-seconds: {e}"))?;
            }
            "--samples" => a.samples = Some(v()?),
            "--connections" => {
                a.connections = v()?.parse().map_err(|e| format!("--connections: {e}"))?;
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.addr.is_empty() || a.rate <= 0.0 || a.seconds <= 0.0 || a.connections == 0 {
        return Err(
            "--addr, a positive --rate and --seconds and at least one connection are needed".into(),
        );
    }
    Ok(a)
}

/// What one connection saw: latencies (microseconds, measured requests only) and errors.
struct Outcome {
    latencies_us: Vec<u32>,
    /// From when the request was written (what wrk reports), for comparison.
    service_us: Vec<u32>,
    /// From when the request was written to when the kernel queued the last bytes of the answer
    /// on the client's socket: leaves out how late the client's own thread wakes to read it.
    kernel_us: Vec<u32>,
    /// (connection, due, sent, done) in microseconds since the start, measured requests only.
    samples: Vec<(u16, u64, u64, u64, u64)>,
    errors: u64,
    first_error: Option<String>,
}

fn request_bytes(a: &Args) -> Vec<u8> {
    let host = a.addr.clone();
    let mut r = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", a.path);
    for h in &a.headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One keep-alive connection that reads with `recvmsg` and keeps the kernel's receive
/// timestamp (`SO_TIMESTAMPNS`) of the last bytes it read.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    cmsg: Vec<u8>,
    /// When the kernel queued the last bytes read (wall clock, nanoseconds since the epoch).
    last_rx_ns: Option<i128>,
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
        Ok(Conn {
            stream,
            buf: vec![0; 16 * 1024],
            pos: 0,
            len: 0,
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
            last_rx_ns: None,
        })
    }

    /// Reads more bytes; records their kernel timestamp.
    fn fill(&mut self) -> Result<(), String> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            if self.pos == 0 {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            }
        }
        let fd = self.stream.as_raw_fd();
        let mut iov = [IoSliceMut::new(&mut self.buf[self.len..])];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut self.cmsg), MsgFlags::empty())
            .map_err(|e| format!("read: {e}"))?;
        if msg.bytes == 0 {
            return Err("connection closed".into());
        }
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(|e| format!("cmsg: {e}"))? {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                self.last_rx_ns =
                    Some(i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()));
            }
        }
        self.len += n;
        Ok(())
    }

    /// Reads one response; returns its status. Only `Content-Length` bodies are supported.
    fn read_response(&mut self) -> Result<u16, String> {
        let head_end = loop {
            if let Some(i) = self.buf[self.pos..self.len]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break self.pos + i + 4;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end])
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut len: Option<usize> = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().ok();
            }
        }
        let len = len.ok_or("response without Content-Length")?;
        let whole = head_end - self.pos + len;
        while self.len - self.pos < whole {
            self.fill()?;
        }
        self.pos += whole;
        Ok(status)
    }
}

/// The wall clock in nanoseconds since the epoch, the clock of `SO_TIMESTAMPNS`.
#[allow(
    clippy::disallowed_methods,
    reason = "the kernel stamps with the wall clock; a benchmark tool, not Gatehouse's clock"
)]
fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

fn run_connection(
    a: &Args,
    req: &[u8],
    index: usize,
    start: Instant,
    measure_from: Duration,
    end: Duration,
) -> Outcome {
    let mut out = Outcome {
        latencies_us: Vec::new(),
        service_us: Vec::new(),
        kernel_us: Vec::new(),
        samples: Vec::new(),
        errors: 0,
        first_error: None,
    };
    let fail = |out: &mut Outcome, e: String| {
        out.errors += 1;
        if out.first_error.is_none() {
            out.first_error = Some(e);
        }
    };
    let mut conn = match Conn::connect(&a.addr) {
        Ok(c) => c,
        Err(e) => {
            fail(&mut out, e);
            return out;
        }
    };
    let period = Duration::from_secs_f64(a.connections as f64 / a.rate);
    let offset = Duration::from_secs_f64(index as f64 / a.rate);
    let mut k: u32 = 0;
    loop {
        let due = offset + period * k;
        k += 1;
        if due >= end {
            break;
        }
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let sent_wall = wall_ns();
        let sent = start.elapsed();
        conn.last_rx_ns = None;
        let result = conn
            .stream
            .write_all(req)
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| conn.read_response());
        let done = start.elapsed();
        match result {
            Ok(200) => {
                if due >= measure_from {
                    let us = done.saturating_sub(due).as_micros();
                    out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    let us = done.saturating_sub(sent).as_micros();
                    out.service_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    let mut rx_us = u64::MAX;
                    match conn.last_rx_ns {
                        Some(rx) => {
                            let us = (rx - sent_wall).max(0) / 1000;
                            rx_us = u64::try_from(us).unwrap_or(u64::MAX);
                            out.kernel_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        None => fail(&mut out, "no receive timestamp".into()),
                    }
                    if a.samples.is_some() {
                        let u = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                        let c = u16::try_from(index).unwrap_or(u16::MAX);
                        out.samples.push((c, u(due), u(sent), u(done), rx_us));
                    }
                }
            }
            Ok(s) => fail(&mut out, format!("status {s}")),
            Err(e) => {
                fail(&mut out, e);
                match Conn::connect(&a.addr) {
                    Ok(c) => conn = c,
                    Err(e) => {
                        fail(&mut out, e);
                        return out;
                    }
                }
            }
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[i.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("gatehouse-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let req: Arc<[u8]> = request_bytes(&a).into();
    let measure_from = Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    // Start a little in the future so that every thread is ready before the first request is due.
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..a.connections)
        .map(|i| {
            let a = a.clone();
            let req = req.clone();
            std::thread::spawn(move || {
                let now = Instant::now();
                if start > now {
                    std::thread::sleep(start - now);
                }
                run_connection(&a, &req, i, start, measure_from, end)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut service = Vec::new();
    let mut kernel = Vec::new();
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(o) => {
                all.extend(o.latencies_us);
                service.extend(o.service_us);
                kernel.extend(o.kernel_us);
                samples.extend(o.samples);
                errors += o.errors;
                if first_error.is_none() {
                    first_error = o.first_error;
                }
            }
            Err(_) => {
                eprintln!("gatehouse-loadgen: a connection thread panicked");
                return ExitCode::FAILURE;
            }
        }
    }
    all.sort_unstable();
    service.sort_unstable();
    kernel.sort_unstable();
    if let Some(path) = &a.samples {
        samples.sort_unstable_by_key(|s| s.1);
        let mut text = String::from("conn due_us sent_us done_us rx_after_send_us\n");
        for (c, due, sent, done, rx) in samples {
            text.push_str(&format!("{c} {due} {sent} {done} {rx}\n"));
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("gatehouse-loadgen: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let expected = (a.rate * a.seconds).round();
    println!(
        "target_rate={:.0} connections={} seconds={} measured={} expected={:.0} errors={} rate={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} sent_p50_ms={:.3} sent_p99_ms={:.3} rx_p50_ms={:.3} rx_p99_ms={:.3}",
        a.rate,
        a.connections,
        a.seconds,
        all.len(),
        expected,
        errors,
        all.len() as f64 / a.seconds,
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        percentile(&all, 100.0),
        percentile(&service, 50.0),
        percentile(&service, 99.0),
        percentile(&kernel, 50.0),
        percentile(&kernel, 99.0),
    );
    if let Some(e) = first_error {
        eprintln!("gatehouse-loadgen: {errors} errors, the first: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
