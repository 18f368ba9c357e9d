//! `gatehouse check --config FILE`: the pre-flight. It builds every part `serve` builds, from the
//! same functions, without listening or changing anything, and then looks further than `serve`
//! does at start: whether the issuers and the upstream answer, whether the TLS certificate is about
//! to expire, whether the listen addresses can be bound.
//!
//! Each finding is one line: `ok`, `warn` (serve starts, but something will not work or soon
//! stops working) or `FAIL` (serve refuses to start, or a certificate has expired). Exit code 0
//! when nothing failed (with `--strict`: nor warned), 1 otherwise; 2 is clap's for a bad
//! command line.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use gatehouse_authn::Authenticator;
use gatehouse_config::Config;
use gatehouse_core::{Clock, SystemClock};
use gatehouse_http::{Probe, TlsReloader, Upstream};
use gatehouse_store::AtOpen;

/// Options of `gatehouse check`.
#[derive(Debug, Clone)]
pub struct CheckArgs {
    /// The config file.
    pub config: PathBuf,
    /// A server certificate expiring within this many days is a warning.
    pub tls_days: u64,
    /// Warnings count as failures (exit 1).
    pub strict: bool,
    /// How long to wait for each issuer, the upstream and the store.
    pub timeout: Duration,
}

/// What was found, printed as it is found.
#[derive(Debug, Default)]
struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl Display) {
        println!("ok    {what}: {detail}");
    }

    fn warn(&mut self, what: &str, detail: impl Display) {
        self.warnings += 1;
        println!("warn  {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: impl Display) {
        self.failures += 1;
        println!("FAIL  {what}: {detail}");
    }

    /// `ok` with `detail` when `r` is, `FAIL` with the error's whole chain when it is not.
    fn result<T>(
        &mut self,
        what: &str,
        r: Result<T>,
        detail: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match r {
            Ok(v) => {
                let d = detail(&v);
                self.ok(what, d);
                Some(v)
            }
            Err(e) => {
                self.fail(what, format!("{e:#}"));
                None
            }
        }
    }
}

/// `gatehouse check`: prints one line per finding and a summary; returns the exit code.
pub fn check(args: &CheckArgs) -> Result<u8> {
    let mut r = Report::default();
    let cfg = match Config::load(&args.config) {
        Ok(c) => {
            if c.env_overrides.is_empty() {
                r.ok("config", args.config.display());
            } else {
                r.ok(
                    "config",
                    format!(
                        "{} with the environment overrides {}",
                        args.config.display(),
                        c.env_overrides.join(", ")
                    ),
                );
            }
            c
        }
        Err(e) => {
            r.fail("config", format!("{e:#}"));
            println!("\n1 failure: nothing else can be checked without a valid config");
            return Ok(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(check_all(&cfg, args, &mut r));
    println!();
    let verdict = match (r.failures, r.warnings) {
        (0, 0) => "all checks passed".to_owned(),
        (0, w) => format!("{w} warning(s); serve would start"),
        (f, w) => format!("{f} failure(s), {w} warning(s); serve would refuse to start or fail"),
    };
    println!("{verdict}");
    Ok(u8::from(r.failures > 0 || (args.strict && r.warnings > 0)))
}

async fn check_all(cfg: &Config, args: &CheckArgs, r: &mut Report) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let file = cfg.policy.file.display().to_string();
    let policy = crate::serve::load_policy(cfg);
    r.result("policy", policy, |p| {
        format!("{} policies in {file} validate against the schema", p.len())
    });
    let own = r.result("tokens.signing_key", crate::serve::own_issuer(cfg), |o| {
        format!("key {} for issuer {}", o.signing_kid(), o.issuer())
    });
    r.result(
        "forge",
        crate::serve::forge_clients(cfg, clock.clone()),
        |(g, a)| match (g.is_some(), a.is_some()) {
            (false, false) => "no forge API client configured".to_owned(),
            (g, a) => format!(
                "tokens read for{}{}",
                if g { " [forge.groups]" } else { "" },
                if a { " [forge.api]" } else { "" }
            ),
        },
    );
    check_tls(cfg, args, r);
    check_upstream(cfg, args, r).await;
    check_traces(cfg, args, r).await;
    check_listeners(cfg, r);
    check_audit(cfg, r);
    // An embedded store that does not exist yet is created by opening it: it is removed again
    // afterwards, so that the check changes nothing.
    let new_sqlite = match &cfg.store.url {
        gatehouse_config::StoreUrl::Plain(u) => u
            .strip_prefix("sqlite://")
            .map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty() && !p.exists()),
        gatehouse_config::StoreUrl::Secret(_) => None,
    };
    let store = match new_sqlite
        .as_ref()
        .and_then(|p| p.parent())
        .filter(|dir| !dir.as_os_str().is_empty() && !dir.exists())
    {
        // Opening it would create its directory as whoever runs the check: said, not done.
        Some(dir) => {
            r.ok(
                "store",
                format!(
                    "{} will be created at start, and its directory {}",
                    new_sqlite
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                    dir.display()
                ),
            );
            None
        }
        None => check_store(cfg, args, r, clock.clone()).await,
    };
    if let Some(own) = own {
        let authn = r.result(
            "issuers",
            Authenticator::new(&cfg.issuers, own, clock.clone()).map_err(anyhow::Error::from),
            |a| format!("{} configured", a.issuers().count()),
        );
        if let Some(authn) = authn {
            let authn = Arc::new(authn);
            if let (Some(scfg), Some(store)) = (&cfg.session, &store) {
                r.result(
                    "session",
                    gatehouse_session::Sessions::new(
                        scfg,
                        &cfg.issuers,
                        Arc::new(crate::store::StoreSessions(store.clone())),
                        &authn,
                        clock.clone(),
                    )
                    .map_err(anyhow::Error::from),
                    |_| format!("browser sign-in at {}", scfg.external_url),
                );
            }
            check_issuers(&authn, args, r).await;
        }
    }
    if let Some(store) = store {
        store.close().await;
    }
    if let Some(path) = new_sqlite {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

fn check_tls(cfg: &Config, args: &CheckArgs, r: &mut Report) {
    if let Some(t) = &cfg.server.tls {
        let loaded = TlsReloader::with_client_ca(
            t.cert_file.clone(),
            t.key_file.clone(),
            t.client_ca_file.clone(),
        )
        .and_then(|tls| tls.server_config())
        .map_err(anyhow::Error::from);
        if r.result("server.tls", loaded, |_| {
            format!("{} and its key load", t.cert_file.display())
        })
        .is_some()
        {
            cert_expiry(&t.cert_file, args.tls_days, r);
        }
    }
    if let Some(ssh) = &cfg.ssh {
        // The SSH front door generates a missing host key or CA key at start; loading the
        // settings here would generate it now, as whoever runs the check. Said, not done.
        let mut keys = vec![&ssh.host_key, &ssh.user_ca_key];
        if let Some(u) = &ssh.upstream {
            keys.push(&u.ca_key);
        }
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !k.exists())
            .map(|k| k.display().to_string())
            .collect();
        if !missing.is_empty() {
            r.ok(
                "ssh",
                format!("{} will be generated at start", missing.join(", ")),
            );
            return;
        }
        let settings = gatehouse_ssh::SshSettings::new(
            ssh,
            cfg.upstream.git_http_backend.as_ref(),
            &cfg.tokens.issuer,
            match cfg.forge.kind {
                gatehouse_config::ForgeKind::Generic => gatehouse_git::ForgeFlavor::Generic,
                _ => gatehouse_git::ForgeFlavor::Gitea,
            },
            gatehouse_git::PushLimits::new(cfg.git.max_command_list.0, cfg.git.max_ref_updates),
        );
        r.result("ssh", settings.map_err(anyhow::Error::from), |s| {
            format!("host key {}", s.host_key_line().1)
        });
    }
}

/// The server certificate's validity: expired or not yet valid fails, expiring within `days`
/// warns.
fn cert_expiry(file: &Path, days: u64, r: &mut Report) {
    let what = "server.tls.cert_file";
    let Ok(pem) = std::fs::read(file) else {
        return; // reported by the load above
    };
    let leaf = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(std::result::Result::ok)
        .find(|p| p.label == "CERTIFICATE");
    let Some(leaf) = leaf else {
        r.fail(what, format!("{}: no CERTIFICATE block", file.display()));
        return;
    };
    let cert = match leaf.parse_x509() {
        Ok(c) => c,
        Err(e) => {
            r.fail(what, format!("{}: {e}", file.display()));
            return;
        }
    };
    let now = SystemClock.now().as_secs();
    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let left_days = (not_after - now).div_euclid(86_400);
    let until = cert.validity().not_after.to_string();
    if now < not_before {
        r.fail(
            what,
            format!("not valid before {}", cert.validity().not_before),
        );
    } else if now >= not_after {
        r.fail(what, format!("expired on {until}"));
    } else if left_days < i64::try_from(days).unwrap_or(i64::MAX) {
        r.warn(
            what,
            format!("expires in {left_days} day(s), on {until} (warned within {days} days)"),
        );
    } else {
        r.ok(what, format!("valid until {until} ({left_days} days)"));
    }
}

async fn check_upstream(cfg: &Config, args: &CheckArgs, r: &mut Report) {
    let Some(up) = r.result(
        "upstream",
        Upstream::new(&cfg.upstream).map_err(anyhow::Error::from),
        |_| "configuration loads".to_owned(),
    ) else {
        return;
    };
    match up.probe() {
        Some(Probe::Tcp(addr)) => {
            let what = "upstream reachable";
            match tokio::time::timeout(args.timeout, tcp_probe(&addr)).await {
                Ok(Ok(peer)) => r.ok(what, format!("{addr} accepts connections ({peer})")),
                Ok(Err(e)) => r.warn(what, format!("{addr}: {e}")),
                Err(_) => r.warn(what, format!("{addr}: timed out after {:?}", args.timeout)),
            }
        }
        Some(Probe::Unix(path)) => {
            let what = "upstream reachable";
            match tokio::net::UnixStream::connect(&path).await {
                Ok(_) => r.ok(what, format!("{} accepts connections", path.display())),
                Err(e) => r.warn(what, format!("{}: {e}", path.display())),
            }
        }
        None => {
            if let Some(g) = &cfg.upstream.git_http_backend {
                let what = "upstream.git_http_backend";
                // serve starts without these (its readiness says so): warnings.
                if !up.local_ready() {
                    r.warn(
                        what,
                        format!("repos_dir {} is not a directory", g.repos_dir.display()),
                    );
                }
                match tokio::process::Command::new(&g.git)
                    .arg("--version")
                    .output()
                    .await
                {
                    Ok(o) if o.status.success() => r.ok(
                        what,
                        format!(
                            "{} ({}), repositories in {}",
                            g.git.display(),
                            String::from_utf8_lossy(&o.stdout).trim(),
                            g.repos_dir.display()
                        ),
                    ),
                    Ok(o) => r.warn(
                        what,
                        format!("{} --version exited with {}", g.git.display(), o.status),
                    ),
                    Err(e) => r.warn(what, format!("cannot run {}: {e}", g.git.display())),
                }
            }
        }
    }
}

/// `[traces]`: refused by a binary built without the `otlp` feature (serve would not start);
/// else the header secrets read and the collector's address connected to (a collector that is
/// down only loses spans: a warning).
async fn check_traces(cfg: &Config, args: &CheckArgs, r: &mut Report) {
    let Some(t) = &cfg.traces else {
        return;
    };
    if !crate::traces::BUILT_WITH_OTLP {
        r.fail("traces", crate::traces::unsupported());
        return;
    }
    for (name, src) in &t.headers {
        let what = format!("traces.headers.{name}");
        r.result(&what, crate::traces::header_value(name, src), |_| {
            "readable".to_owned()
        });
    }
    let url = t.traces_url();
    let Ok(u) = url::Url::parse(&url) else {
        r.fail("traces", format!("{url} is not a URL"));
        return;
    };
    let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
        r.fail("traces", format!("{url} names no host"));
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let what = "traces collector reachable";
    match tokio::time::timeout(args.timeout, tcp_probe(&addr)).await {
        Ok(Ok(peer)) => r.ok(
            what,
            format!(
                "{url} accepts connections ({peer}); sampling {} of new traces",
                t.sample_ratio
            ),
        ),
        Ok(Err(e)) => r.warn(
            what,
            format!("{url}: {e} (spans are lost while it is down)"),
        ),
        Err(_) => r.warn(what, format!("{url}: timed out after {:?}", args.timeout)),
    }
}

/// Resolves `host:port` and connects to the first address that answers; the error names the
/// step (the DNS lookup or the connection) and the operating system's reason.
async fn tcp_probe(addr: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("DNS lookup failed ({e})"))?
        .collect();
    let mut last = String::from("DNS lookup gave no address");
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(_) => return Ok(a),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = format!("connection refused by {a}");
            }
            Err(e) => last = format!("cannot connect to {a} ({e})"),
        }
    }
    Err(last)
}

/// Each listen address is bound and released at once: taken by another process warns (another
/// node still running, or the old one during a restart); refused by the system fails (a port
/// below 1024 without `CAP_NET_BIND_SERVICE`, an address this host does not have). Sockets handed
/// over by systemd (`LISTEN_FDS`) are not checked.
fn check_listeners(cfg: &Config, r: &mut Report) {
    if std::env::var_os("LISTEN_FDS").is_some() {
        r.ok(
            "listeners",
            "handed over by the service manager (LISTEN_FDS)",
        );
        return;
    }
    let mut addrs = vec![("server.listen", cfg.server.listen)];
    if let Some(a) = &cfg.admin {
        addrs.push(("admin.listen", a.listen));
    }
    if let Some(s) = &cfg.ssh {
        addrs.push(("ssh.listen", s.listen));
    }
    if let Some(a) = cfg.ext_authz.as_ref().and_then(|e| e.grpc_listen) {
        addrs.push(("ext_authz.grpc_listen", a));
    }
    for (what, addr) in addrs {
        if addr.port() == 0 {
            r.ok(what, format!("{addr} (the kernel picks the port)"));
            continue;
        }
        match std::net::TcpListener::bind(addr) {
            Ok(_) => r.ok(what, format!("{addr} can be bound")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.warn(
                what,
                format!("{addr} is in use (another Gatehouse still running, or another program)"),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => r.fail(
                what,
                format!("{addr}: permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE)"),
            ),
            Err(e) => r.fail(what, format!("{addr}: {e}")),
        }
    }
}

/// The audit log can be opened for appending (its directory exists and is writable). An audit
/// log that does not exist yet is not created.
fn check_audit(cfg: &Config, r: &mut Report) {
    let what = "audit.file";
    let path = &cfg.audit.file;
    if path.exists() {
        match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => r.ok(what, format!("{} is writable", path.display())),
            Err(e) => r.fail(what, format!("{}: {e}", path.display())),
        }
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() && !m.permissions().readonly() => {
            // Whether this user may create a file there: try with a name nobody else uses.
            let probe = dir.join(format!(".gatehouse-check-{}", std::process::id()));
            match std::fs::File::create(&probe) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    r.ok(what, format!("{} will be created", path.display()));
                }
                Err(e) => r.fail(
                    what,
                    format!("cannot create files in {}: {e}", dir.display()),
                ),
            }
        }
        Ok(_) => r.fail(
            what,
            format!("{} is not a writable directory", dir.display()),
        ),
        Err(e) => r.fail(what, format!("directory {}: {e}", dir.display())),
    }
}

/// The store is reachable and its schema current (or will be made so at start, with `migrate =
/// "auto"`), and what is built on it (the secrets broker's master keys, the webhook hooks'
/// secrets) loads.
async fn check_store(
    cfg: &Config,
    args: &CheckArgs,
    r: &mut Report,
    clock: Arc<dyn Clock>,
) -> Option<gatehouse_store::Store> {
    let what = "store";
    let store =
        match tokio::time::timeout(args.timeout, crate::store::open(cfg, Some(AtOpen::Inspect)))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                r.fail(what, format!("{e:#}"));
                return None;
            }
            Err(_) => {
                r.fail(what, format!("no answer within {:?}", args.timeout));
                return None;
            }
        };
    match store.status().await {
        Ok(status) => {
            let pending = status.iter().filter(|s| !s.applied).count();
            let at = status
                .iter()
                .filter(|s| s.applied)
                .map(|s| s.version)
                .max()
                .unwrap_or(0);
            let place = format!("{} ({})", store.location(), store.backend());
            match (pending, cfg.store.migrate) {
                (0, _) => r.ok(what, format!("{place} at schema version {at}")),
                (n, gatehouse_config::MigrateMode::Auto) => r.ok(
                    what,
                    format!("{place}: {n} migration(s) pending, applied at start (migrate = \"auto\")"),
                ),
                (n, gatehouse_config::MigrateMode::Manual) => r.fail(
                    what,
                    format!(
                        "{place}: {n} migration(s) pending and migrate = \"manual\": run `gatehouse store migrate`"
                    ),
                ),
            }
        }
        Err(e) => r.fail(what, format!("{e:#}")),
    }
    // Built once: the webhook hooks read their secrets through this broker, as in `serve`.
    let broker = if cfg.secrets.is_some() {
        r.result(
            "secrets",
            crate::store::secrets_broker(&store, cfg, clock.clone()),
            |_| "master keys read".to_owned(),
        )
        .flatten()
    } else {
        None
    };
    if let Some(w) = &cfg.webhooks {
        r.result(
            "webhooks",
            crate::webhooks::hooks(cfg, &store, broker.as_deref(), clock).await,
            |_| format!("{} hook(s)", w.hooks.len()),
        );
    }
    Some(store)
}

/// Every issuer's discovery document and key set, fetched now. An issuer that does not answer is
/// a warning: serve starts without it, and refuses its tokens until it answers.
async fn check_issuers(authn: &Authenticator, args: &CheckArgs, r: &mut Report) {
    // Discovery, then the key set: two requests. All issuers at once, so that a start with
    // `check` as its pre-flight waits for the slowest issuer, not for their sum.
    let limit = args
        .timeout
        .max(Duration::from_secs(1))
        .checked_mul(2)
        .unwrap_or(Duration::MAX);
    let probes = authn.issuers().map(|issuer| async move {
        (
            issuer.issuer().to_owned(),
            tokio::time::timeout(limit, issuer.probe()).await,
        )
    });
    for (name, result) in futures_util::future::join_all(probes).await {
        let what = format!("issuer {name}");
        match result {
            Ok(Ok((uri, n))) => r.ok(&what, format!("{n} signing key(s) from {uri}")),
            Ok(Err(e)) => r.warn(
                &what,
                format!("{e}; its tokens are refused until it answers"),
            ),
            Err(_) => r.warn(&what, format!("no answer within {limit:?}")),
        }
    }
}
