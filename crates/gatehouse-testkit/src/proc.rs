use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A listening socket on 127.0.0.1, on a port of the kernel's choice. Hand it to the program
/// that serves on it ([`hand_over`]) rather than releasing the port for the program to bind: a
/// released port can be taken by another component in between.
pub fn local_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")
}

/// Hands `sockets` to the program `cmd` starts as file descriptors 3, 4, ..., in order (the
/// systemd `LISTEN_FDS` numbering; nginx takes them from `NGINX`). Only that child gets them: the
/// copies are made after the fork, so no other process started meanwhile inherits one.
pub fn hand_over(cmd: &mut Command, sockets: &[&TcpListener]) {
    use command_fds::{CommandFdExt as _, FdMapping};
    let mappings = sockets
        .iter()
        .zip(3..)
        .map(|(s, child_fd)| FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(s.try_clone().expect("clone a listening socket")),
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings).expect("file descriptor mappings");
}

/// A port on 127.0.0.1 where connections are refused: a socket is bound to it but never listens,
/// so the port stays taken (nobody else can be given it) for as long as this lives.
pub struct RefusedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind an ephemeral port");
        let port = socket.local_addr().expect("local addr").port();
        Self {
            port,
            _socket: socket,
        }
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A directory removed on drop (kept when `GATEHOUSE_KEEP_TEST_DIRS=1`).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "gatehouse-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("GATEHOUSE_KEEP_TEST_DIRS").as_deref() != Ok("1") {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process that is killed (TERM, then KILL) when dropped.
pub struct Child {
    pub name: String,
    pub inner: std::process::Child,
    pub log: PathBuf,
    /// The process leads its own process group, and the whole group is ended: a pre-forking
    /// server (fcgiwrap) replaces workers that die, so ending the workers first and then the
    /// parent leaves the replacements behind. Set with [`Child::spawn_group`].
    pub kill_children: bool,
}

impl Child {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("create log file");
        let err = out.try_clone().expect("clone log handle");
        let inner = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            inner,
            log: log.to_owned(),
            kill_children: false,
        }
    }

    /// Like [`Child::spawn`], in a new process group that is ended as a whole on drop.
    pub fn spawn_group(name: &str, cmd: &mut Command, log: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
        let mut c = Self::spawn(name, cmd, log);
        c.kill_children = true;
        c
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Waits (20 s at most) until something accepts connections on 127.0.0.1:`port`; panics
    /// with the process's log if it exits first.
    pub fn wait_listening(&mut self, what: &str, port: u16) {
        wait_for(what, Duration::from_secs(20), || {
            if !self.is_running() {
                panic!("{what} exited:\n{}", self.log_text());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Waits (90 s at most: a full test run on 2 cores starts browsers, databases and IdPs at
    /// once) until the log has a line with `prefix` followed by a port number,
    /// and returns that port: how a program told to listen on port 0 says which one it got.
    /// Panics with the log and the process's state if the process exits first or never says.
    pub fn wait_logged_port(&mut self, what: &str, prefix: &str) -> u16 {
        match self.try_wait_logged_port(prefix, Duration::from_secs(90)) {
            Ok(port) => port,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// [`Self::wait_logged_port`] that returns what went wrong (with the log and the process's
    /// state) instead of panicking, for a caller that starts the program again.
    pub fn try_wait_logged_port(&mut self, prefix: &str, timeout: Duration) -> Result<u16, String> {
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return Err(format!("exited:\n{}", self.log_text()));
            }
            let text = self.log_text();
            if let Some((_, rest)) = text.lines().find_map(|l| l.split_once(prefix)) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(port) = digits.parse() {
                    return Ok(port);
                }
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "said nothing of its port after {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the kernel says of the process (its state, what it waits in, its threads) and its
    /// log so far: for a failure message about a process that hangs.
    pub fn diagnostics(&self) -> String {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let picked: Vec<&str> = status
            .lines()
            .filter(|l| {
                [
                    "State:",
                    "Threads:",
                    "VmRSS:",
                    "voluntary_ctxt",
                    "nonvoluntary_ctxt",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "pid {pid}: {} wchan={wchan}\nstat: {}\nloadavg: {}log:\n{}",
            picked.join(" | "),
            stat.trim(),
            load,
            self.log_text()
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `QUIT`, ...).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.inner.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.kill_children {
            // The whole group at once: no parent left to replace its workers.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.pid())])
                .status();
        }
        if self.is_running() {
            self.signal("TERM");
            if self.wait_timeout(Duration::from_secs(3)).is_none() {
                let _ = self.inner.kill();
                let _ = self.inner.wait();
            }
        }
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one HTTP/1.1 request with the path exactly as given (no client-side normalization) and
/// returns the status and the raw response.
pub fn raw_http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    try_raw_http(port, method, path, headers).expect("connect")
}

/// [`raw_http`] with a body (its `Content-Length` set here).
pub fn raw_http_with_body(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let length = body.len().to_string();
    let mut all = vec![("Content-Length", length.as_str())];
    all.extend_from_slice(headers);
    exchange(port, method, path, &all, body).expect("connect")
}

/// [`raw_http`], or `None` when nothing accepts connections on the port.
pub fn try_raw_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    exchange(port, method, path, headers, b"")
}

/// One HTTP/1.1 request with `headers` and `body` on a fresh connection, and the whole answer.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write request");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((status, text))
}
