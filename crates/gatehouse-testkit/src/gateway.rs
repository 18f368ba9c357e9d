use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::idp::Idp;
use crate::proc::{Child, TempDir, wait_for};

/// Builds a config for the real `gatehouse` binary and starts it.
pub struct GatewayBuilder {
    bin: PathBuf,
    dir: TempDir,
    issuers: Vec<String>,
    upstream: String,
    forge_kind: String,
    policy: String,
    server_extra: String,
    upstream_extra: String,
    extra: String,
    audit_file: String,
    audit_extra: String,
    wait_ready: bool,
    listener: Option<std::net::TcpListener>,
    shutdown_grace: String,
}

impl GatewayBuilder {
    pub fn new(bin: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            dir: TempDir::new("gw"),
            issuers: Vec::new(),
            upstream: String::new(),
            forge_kind: "generic".into(),
            policy: String::new(),
            server_extra: String::new(),
            upstream_extra: String::new(),
            extra: String::new(),
            audit_file: "audit.log".into(),
            audit_extra: String::new(),
            wait_ready: true,
            listener: None,
            shutdown_grace: "30s".into(),
        }
    }

    /// The gateway's directory (config, keys, policy, audit log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn with_idp(self, idp: &Idp) -> Self {
        self.with_idp_extra(idp, "")
    }

    /// Trusts the IdP, with extra lines in its `[[issuers]]` table.
    pub fn with_idp_extra(mut self, idp: &Idp, extra: &str) -> Self {
        self.issuers.push(format!(
            "[[issuers]]\nissuer = \"{}\"\naudiences = [\"gatehouse\"]\nalgorithms = [\"RS256\", \"ES256\"]\nleeway = \"5s\"\njwks_min_refetch_interval = \"1s\"\n{extra}\n",
            idp.issuer()
        ));
        self
    }

    pub fn with_upstream_url(mut self, url: &str) -> Self {
        self.upstream = format!("url = \"{url}\"");
        self
    }

    pub fn with_builtin_upstream(mut self, repos: &Path) -> Self {
        self.upstream = format!(
            "git_http_backend = {{ repos_dir = \"{}\" }}",
            repos.display()
        );
        self
    }

    pub fn forge_kind(mut self, kind: &str) -> Self {
        self.forge_kind = kind.to_owned();
        self
    }

    pub fn policy(mut self, text: &str) -> Self {
        self.policy = text.to_owned();
        self
    }

    /// Lines added to `[server]`.
    pub fn server_extra(mut self, toml: &str) -> Self {
        self.server_extra.push_str(toml);
        self.server_extra.push('\n');
        self
    }

    /// Lines added to `[upstream]`.
    pub fn upstream_extra(mut self, toml: &str) -> Self {
        self.upstream_extra.push_str(toml);
        self.upstream_extra.push('\n');
        self
    }

    /// Whole sections appended to the config.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn audit_file(mut self, path: &str) -> Self {
        self.audit_file = path.to_owned();
        self
    }

    /// Lines added to `[audit]`.
    pub fn audit_extra(mut self, toml: &str) -> Self {
        self.audit_extra.push_str(toml);
        self.audit_extra.push('\n');
        self
    }

    /// Serve on this socket ([`crate::local_listener`]), handed to the gateway as systemd
    /// socket activation does (`LISTEN_FDS`), for a test that must know the port before the
    /// gateway starts (to register redirect URIs, or to set `session.external_url`). The test
    /// keeps a copy, so a restarted gateway serves on it again.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// `server.shutdown_grace` (30 s unless set).
    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.shutdown_grace = grace.to_owned();
        self
    }

    /// Do not wait for `/readyz` (for tests of a gateway that cannot become ready).
    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Writes the config and returns its path without starting anything.
    pub fn write_config(&self, port: u16, admin_port: u16) -> PathBuf {
        let d = self.dir.path();
        let key = d.join("keys/signing.pem");
        if !key.exists() {
            let out = Command::new(&self.bin)
                .args(["keys", "generate", "--out", &key.to_string_lossy()])
                .output()
                .expect("gatehouse keys generate");
            assert!(
                out.status.success(),
                "keys generate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(d.join("policy.cedar"), &self.policy).unwrap();
        let config = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "{grace}"
{server_extra}
[admin]
listen = "127.0.0.1:{admin_port}"

[upstream]
{upstream}
{upstream_extra}
[forge]
kind = "{kind}"

[tokens]
issuer = "urn:gatehouse:test"
signing_key = {{ file = "keys/signing.pem" }}

[policy]
file = "policy.cedar"
reload_interval = "100ms"

[audit]
file = "{audit}"
{audit_extra}
[log]
level = "info"
format = "json"

{issuers}
{extra}
"#,
            server_extra = self.server_extra,
            grace = self.shutdown_grace,
            upstream = self.upstream,
            upstream_extra = self.upstream_extra,
            kind = self.forge_kind,
            audit = self.audit_file,
            audit_extra = self.audit_extra,
            issuers = self.issuers.join("\n"),
            extra = self.extra,
        );
        let path = d.join("gatehouse.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    /// Starts the gateway. Its listeners bind port 0 (the kernel picks a free port, which no
    /// other component can take in between) and the ports are read back from its log; only a
    /// socket given with [`Self::listener`] is handed over instead.
    pub fn start(self) -> TestGateway {
        let port = self
            .listener
            .as_ref()
            .map_or(0, |l| l.local_addr().expect("local addr").port());
        let config = self.write_config(port, 0);
        let ready_path = if self.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        let (child, ports) = spawn_serve(
            &self.bin,
            &config,
            self.listener.as_ref(),
            &self.dir.path().join("gatehouse.log"),
            ready_path,
        );
        TestGateway {
            port: ports.http,
            admin_port: ports.admin,
            ssh_port: ports.ssh,
            ext_authz_port: ports.ext_authz,
            ready_path,
            listener: self.listener,
            bin: self.bin,
            config,
            child,
            dir: self.dir,
        }
    }
}

/// The ports a running gateway's listeners bound.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    admin: u16,
    ssh: Option<u16>,
    ext_authz: Option<u16>,
}

/// The port in the `addr` of the last log line whose message is `message` (Gatehouse logs each
/// listener's bound address: `{"message":"gatehouse listening","addr":"127.0.0.1:N",...}`).
fn logged_port(log: &str, message: &str) -> Option<u16> {
    let needle = format!("\"message\":\"{message}\"");
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    let addr = line.split("\"addr\":\"").nth(1)?.split('"').next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Starts `gatehouse serve --config <config>`, reads its listeners' ports from its log, and waits
/// until `ready_path` answers 200 on the admin port.
fn spawn_serve(
    bin: &Path,
    config: &Path,
    listener: Option<&std::net::TcpListener>,
    log: &Path,
    ready_path: &str,
) -> (Child, Ports) {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config", &config.to_string_lossy()]);
    if let Some(l) = listener {
        crate::proc::hand_over(&mut cmd, &[l]);
        cmd.env("LISTEN_FDS", "1");
    }
    let mut child = Child::spawn("gatehouse", &mut cmd, log);
    // The admin and SSH listeners are logged before the main one.
    let ports = wait_for("gatehouse to listen", Duration::from_secs(30), || {
        if !child.is_running() {
            panic!("gatehouse exited:\n{}", child.log_text());
        }
        let text = child.log_text();
        Some(Ports {
            http: logged_port(&text, "gatehouse listening")?,
            admin: logged_port(&text, "admin listener ready")?,
            ssh: logged_port(&text, "ssh listening"),
            ext_authz: logged_port(&text, "ext_authz listening"),
        })
    });
    wait_for("gatehouse to become ready", Duration::from_secs(30), || {
        if !child.is_running() {
            panic!("gatehouse exited:\n{}", child.log_text());
        }
        let (status, _) = try_get(ports.admin, ready_path)?;
        (status == 200).then_some(())
    });
    (child, ports)
}

fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(crate::proc::raw_http(port, "GET", path, &[]))
}

/// A running `gatehouse serve`.
pub struct TestGateway {
    pub port: u16,
    pub admin_port: u16,
    /// The SSH front door's port, when `[ssh]` is configured (bind it to `127.0.0.1:0`).
    ssh_port: Option<u16>,
    /// The ext_authz gRPC port, when `ext_authz.grpc_listen` is set (bind it to `127.0.0.1:0`).
    ext_authz_port: Option<u16>,
    ready_path: &'static str,
    listener: Option<std::net::TcpListener>,
    bin: PathBuf,
    config: PathBuf,
    child: Child,
    dir: TempDir,
}

impl TestGateway {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The audit log once `done` holds for its text. Records reach the file in batches, a few
    /// milliseconds after the response (responses never wait for the disk), so a test reading the
    /// log of a running gateway waits for the record it needs; panics after 10 s.
    pub fn audit_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let path = self.audit_path();
        wait_for(what, Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            done(&text).then_some(text)
        })
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.cedar")
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log(&self) -> String {
        self.child.log_text()
    }

    /// Runs the `gatehouse` CLI with this gateway's config appended as `--config`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .args(["--config", &self.config.to_string_lossy()])
            .output()
            .expect("run gatehouse")
    }

    /// Runs the `gatehouse` CLI with exactly these arguments.
    pub fn cli_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .output()
            .expect("run gatehouse")
    }

    /// A Gatehouse token for `subject` in `groups`, issued by the CLI.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        let mut args = vec!["token", "issue", "--subject", subject, "--ttl", "10m"];
        for g in groups {
            args.push("--group");
            args.push(g);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token issue: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Current resident set size, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:").unwrap_or(0)
    }

    /// Peak resident set size so far, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:").unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        self.child.signal(sig);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_timeout(timeout)
    }

    /// The SSH front door's port.
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
            .expect("this gateway has no SSH listener in its log")
    }

    /// The ext_authz gRPC service's port.
    pub fn ext_authz_port(&self) -> u16 {
        self.ext_authz_port
            .expect("this gateway has no ext_authz listener in its log")
    }

    /// Kills the gateway with SIGKILL (no shutdown, nothing flushed) and starts it again on the
    /// same config and directory (its listeners get new ports: read them again from the fields);
    /// its log goes on in `gatehouse.restarted.log`.
    pub fn kill_and_restart(&mut self) {
        self.signal("KILL");
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "gatehouse did not die on SIGKILL"
        );
        let (child, ports) = spawn_serve(
            &self.bin,
            &self.config,
            self.listener.as_ref(),
            &self.dir.path().join("gatehouse.restarted.log"),
            self.ready_path,
        );
        self.child = child;
        self.port = ports.http;
        self.admin_port = ports.admin;
        self.ssh_port = ports.ssh;
        self.ext_authz_port = ports.ext_authz;
    }

    pub fn metrics(&self) -> String {
        crate::proc::raw_http(self.admin_port, "GET", "/metrics", &[]).1
    }
}
