use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::proc::{Child, TempDir};

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// A WebSocket echo server (the `ws` package, `idp/ws-echo.mjs`): it first sends a JSON object
/// with the handshake's path, headers and subprotocol, then echoes every message. A plain HTTP
/// request gets that object as its body.
pub struct WsEcho {
    pub port: u16,
    _child: Child,
    _dir: TempDir,
}

impl WsEcho {
    pub fn start() -> Self {
        let dir = TempDir::new("ws-echo");
        let mut cmd = Command::new("node");
        cmd.arg("ws-echo.mjs")
            .current_dir(idp_dir())
            .env("WS_PORT", "0");
        let mut child = Child::spawn("ws-echo", &mut cmd, &dir.path().join("ws-echo.log"));
        let port = child.wait_logged_port("the WebSocket echo server to listen", "ws echo on ");
        Self {
            port,
            _child: child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn client_command(url: &str, headers: &[(&str, &str)]) -> Command {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let mut cmd = Command::new("node");
    cmd.arg("ws-client.mjs")
        .current_dir(idp_dir())
        .env("WS_URL", url)
        .env("WS_HEADERS", serde_json::Value::Object(headers).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Opens a WebSocket (subprotocol `echo.v1`) with a real client (the `ws` package,
/// `idp/ws-client.mjs`), sends a text message and `bytes` of binary, checks both echoes and
/// closes. Returns the client's report: `{"opened": true, "hello": {...}, "echoed": [...],
/// "closed": {...}}` or `{"opened": false, "status": N, "body": "..."}`.
pub fn ws_exchange(url: &str, headers: &[(&str, &str)], bytes: usize) -> serde_json::Value {
    let out = client_command(url, headers)
        .env("WS_SEND", bytes.to_string())
        .output()
        .expect("run node ws-client.mjs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws client failed: {text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("ws client printed {text:?}: {e}"))
}

/// A WebSocket client that stays connected after its echo checks, until the server side closes.
pub struct HeldWebSocket {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl HeldWebSocket {
    /// Connects and waits until the echo checks are done and the connection is being held.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        Self::spawn(client_command(url, headers))
    }

    /// Like `open`, but while held the client sends a short message every `every` (the echo
    /// server answers each), so the relay is never quiet for long.
    pub fn open_chatty(url: &str, headers: &[(&str, &str)], every: Duration) -> Self {
        let mut cmd = client_command(url, headers);
        cmd.env("WS_CHATTER_MS", every.as_millis().to_string());
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("WS_SEND", "1024")
            .env("WS_HOLD", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node ws-client.mjs");
        let stdout = child.stdout.take().expect("client stdout");
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(l)) if l == "held" => {}
            other => panic!("ws client did not hold its connection: {other:?}"),
        }
        Self { child, lines }
    }

    /// Whether the client still holds its connection (it exits when the connection closes).
    pub fn is_open(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most `limit`) for the connection to be closed; returns the client's report.
    pub fn closed(mut self, limit: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll ws client") {
                assert!(status.success(), "ws client failed: {status:?}");
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the WebSocket was not closed within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let line = self
            .lines
            .next()
            .and_then(Result::ok)
            .expect("ws client report");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ws client printed {line:?}: {e}"))
    }
}

impl Drop for HeldWebSocket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
