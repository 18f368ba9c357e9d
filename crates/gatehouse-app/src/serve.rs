//! `gatehouse serve`: build every part from the config, run, drain on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use gatehouse_audit::{AuditOptions, AuditRecord, AuditSink};
use gatehouse_authn::{Authenticator, OwnIssuer};
use gatehouse_config::{Config, ForgeKind, LogFormat, read_secret};
use gatehouse_core::{Clock, SystemClock};
use gatehouse_decide::Decider;
use gatehouse_forge::{ForgeApi, ForgeClient, ForgeGroups};
use gatehouse_git::ForgeFlavor;
use gatehouse_http::{Gateway, GatewaySettings, Metrics, ServeOptions, TlsReloader, Upstream};
use gatehouse_policy::PolicyEngine;
use gatehouse_session::Sessions;
use gatehouse_ssh::{SshGateway, SshSettings};

use crate::sockets::Inherited;
use tokio::sync::watch;

/// Options of `gatehouse serve` beyond the config file.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// The config file.
    pub config: PathBuf,
}

pub(crate) fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a journal, a file or a log shipper gets
    // plain text (and `NO_COLOR` turns them off everywhere).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `gatehouse_build_info{version, commit, build_date} 1`: which binary a node runs.
fn register_build_info(r: &mut prometheus_client::registry::Registry) {
    let info = prometheus_client::metrics::info::Info::new(vec![
        ("version", crate::BUILD.version),
        ("commit", crate::BUILD.commit),
        ("build_date", crate::BUILD.date),
    ]);
    r.register(
        "build",
        "The running binary's version, commit and build date",
        info,
    );
}

/// The forge's API clients of `[forge.groups]` and `[forge.api]`, built here from the
/// configuration (the forge crate takes only what it needs).
pub(crate) type ForgeClients = (Option<Arc<ForgeGroups>>, Option<Arc<ForgeApi>>);

pub(crate) fn forge_clients(cfg: &Config, clock: Arc<dyn Clock>) -> Result<ForgeClients> {
    let client = |url: &Option<String>,
                  token: &gatehouse_config::SecretSource,
                  key: &str,
                  timeout: std::time::Duration|
     -> Result<ForgeClient> {
        let api = url
            .clone()
            .or_else(|| cfg.upstream.url.clone())
            .with_context(|| format!("{key}: no forge API URL"))?
            .trim_end_matches('/')
            .to_owned();
        let token = read_secret(key, token)?;
        Ok(ForgeClient {
            api,
            token: gatehouse_core::Redacted::new(token.expose().trim().to_owned()),
            timeout,
        })
    };
    let groups = match &cfg.forge.groups {
        Some(g) => Some(Arc::new(
            ForgeGroups::new(
                client(&g.api_url, &g.token, "forge.groups.token", g.timeout.0)?,
                g.clone(),
                clock.clone(),
            )
            .context("forge groups")?,
        )),
        None => None,
    };
    let api = match &cfg.forge.api {
        Some(a) => Some(Arc::new(
            ForgeApi::new(
                client(&a.url, &a.token, "forge.api.token", a.timeout.0)?,
                a.cache_ttl.0,
                clock,
            )
            .context("forge API")?,
        )),
        None => None,
    };
    Ok((groups, api))
}

pub(crate) fn flavor(kind: ForgeKind) -> ForgeFlavor {
    match kind {
        ForgeKind::Gitea => ForgeFlavor::Gitea,
        ForgeKind::Forgejo => ForgeFlavor::Forgejo,
        ForgeKind::Gogs => ForgeFlavor::Gogs,
        ForgeKind::Generic => ForgeFlavor::Generic,
    }
}

pub(crate) fn load_policy(cfg: &Config) -> Result<PolicyEngine> {
    let text = std::fs::read(&cfg.policy.file)
        .with_context(|| format!("cannot read policy file {}", cfg.policy.file.display()))?;
    parse_policy(cfg, &text)
}

fn parse_policy(cfg: &Config, bytes: &[u8]) -> Result<PolicyEngine> {
    let file = cfg.policy.file.display();
    let text =
        std::str::from_utf8(bytes).with_context(|| format!("policy file {file} is not UTF-8"))?;
    PolicyEngine::new(text, &cfg.forge.name)
        .map_err(|e| anyhow::anyhow!(policy_refusal(&file.to_string(), &e)))
}

/// A refused policy as a compiler says it: the kind of problem, then one `file:line:column:
/// message` line per problem Cedar found.
pub(crate) fn policy_refusal(file: &str, e: &gatehouse_policy::PolicyError) -> String {
    let head = match e {
        gatehouse_policy::PolicyError::Parse(_) => "policy syntax error",
        gatehouse_policy::PolicyError::Validation(_) => {
            "policy does not validate against the Gatehouse schema"
        }
        other => return format!("policy file {file}: {other}"),
    };
    let mut out = format!("{head} in {file}:");
    for p in e.problems() {
        if p.line > 0 {
            out.push_str(&format!(
                "\n  {file}:{}:{}: {}",
                p.line, p.column, p.message
            ));
        } else {
            out.push_str(&format!("\n  {file}: {}", p.message));
        }
    }
    out
}

pub(crate) fn own_issuer(cfg: &Config) -> Result<Arc<OwnIssuer>> {
    let pem = read_secret("tokens.signing_key", &cfg.tokens.signing_key)?;
    Ok(Arc::new(OwnIssuer::new(&cfg.tokens, &pem)?))
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Watches the policy file; a valid new version replaces the old one, an invalid one is logged,
/// counted and ignored (the old policy stays in force).
async fn watch_policy(
    cfg: Config,
    engine: Arc<ArcSwap<PolicyEngine>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let every = cfg.policy.reload_interval.0;
    if every.is_zero() {
        return;
    }
    let path = cfg.policy.file.clone();
    let mut last = (mtime(&path), std::fs::read(&path).ok());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        let m = mtime(&path);
        if m == last.0 {
            continue;
        }
        let bytes = std::fs::read(&path).ok();
        if bytes == last.1 {
            last.0 = m;
            continue;
        }
        last = (m, bytes);
        // Parse exactly the bytes just compared, not a second read of the file.
        let parsed = match &last.1 {
            Some(b) => parse_policy(&cfg, b),
            None => Err(anyhow::anyhow!(
                "cannot read policy file {}",
                path.display()
            )),
        };
        match parsed {
            Ok(p) => {
                let n = p.len();
                engine.store(Arc::new(p));
                metrics.policy_reloaded(true, n);
                tracing::info!(policies = n, file = %path.display(), "policy reloaded");
            }
            Err(e) => {
                metrics.policy_reloaded(false, 0);
                tracing::error!(error = format!("{e:#}"), file = %path.display(), "policy reload failed; keeping the previous policy");
            }
        }
    }
}

async fn refresh_keys(authn: Arc<Authenticator>, mut stop: watch::Receiver<bool>) {
    for i in authn.issuers() {
        let _ = i.refresh().await;
    }
    loop {
        // Retry quickly while an issuer has no keys, otherwise follow the cache TTL.
        let missing = authn.issuers().any(|i| !i.status().loaded);
        let wait = if missing {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        for i in authn.issuers() {
            if i.is_stale() {
                let _ = i.refresh().await;
            }
        }
    }
}

async fn watch_tls(tls: Arc<TlsReloader>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous certificate")
            }
        }
    }
}

/// Removes expired sessions and abandoned sign-ins every five minutes.
async fn sweep_sessions(sessions: Arc<Sessions>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        match sessions.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
    }
}

/// Purges the deleted secrets whose retention has passed, every hour.
async fn sweep_secrets(broker: Arc<gatehouse_secrets::Broker>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        match broker.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "deleted secrets past their retention purged"),
            Err(e) => tracing::warn!(error = %e, "secret sweep failed"),
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// A running gateway's parts that outlive the async runtime: the audit writer must be joined after
/// every request task has ended, so that no record is lost.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) writer: std::thread::JoinHandle<()>,
}

/// Runs the gateway from a loaded config until SIGTERM or Ctrl-C. `on_ready` runs once the
/// listeners are bound.
pub(crate) async fn run(
    cfg: Config,
    config_path: &Path,
    mut inherited: Inherited,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<Running> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let traces = crate::traces::Traces::start(&cfg)?;
    let ssh_metrics = gatehouse_ssh::SshMetrics::default();
    let metrics = Arc::new(Metrics::with(|r| {
        ssh_metrics.register(r);
        register_build_info(r);
        traces.register(r);
    }));

    let policy = load_policy(&cfg)?;
    metrics.policy_reloaded(true, policy.len());
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let own = own_issuer(&cfg)?;
    // The store first: a node must know what is revoked before it serves anything.
    let store = crate::store::open(&cfg, None).await?;
    let (revoked, revocation_feed) = crate::store::revocations(&store, &cfg, clock.clone()).await?;
    let secrets = crate::store::secrets_broker(&store, &cfg, clock.clone())?;
    let hooks = crate::webhooks::hooks(&cfg, &store, secrets.as_deref(), clock.clone()).await?;
    let authn =
        Arc::new(Authenticator::new(&cfg.issuers, own, clock.clone())?.with_revocations(revoked));
    let upstream = Upstream::new(&cfg.upstream)?;
    let push_limits =
        gatehouse_git::PushLimits::new(cfg.git.max_command_list.0, cfg.git.max_ref_updates);
    let ssh_settings = match &cfg.ssh {
        Some(ssh) => Some(
            SshSettings::new(
                ssh,
                cfg.upstream.git_http_backend.as_ref(),
                &cfg.tokens.issuer,
                // SSH paths name repositories as Gitea's do (case-insensitively), or keep their
                // case with a generic upstream.
                match cfg.forge.kind {
                    ForgeKind::Generic => ForgeFlavor::Generic,
                    _ => ForgeFlavor::Gitea,
                },
                push_limits,
            )
            .context("ssh")?,
        ),
        None => None,
    };
    let ssh = match ssh_settings {
        Some(mut settings) => {
            let ssh_cfg = cfg.ssh.as_ref();
            let l = match ssh_cfg.map(|s| s.listen) {
                Some(a) => inherited.listen(a, "ssh").await?,
                None => anyhow::bail!("ssh: no listen address"),
            };
            // Without `ssh.external_address`, clients are told the address the front door
            // listens on: the bound one, so that port 0 (the kernel's choice) names a real port.
            if ssh_cfg.is_some_and(|s| s.external_address.is_none()) {
                settings.external_address = l.local_addr()?.to_string();
            }
            Some((settings, l))
        }
        None => None,
    };
    let (forge_groups, forge_api) = forge_clients(&cfg, clock.clone())?;
    let sessions = match &cfg.session {
        Some(scfg) => Some(Arc::new(
            Sessions::new(
                scfg,
                &cfg.issuers,
                Arc::new(crate::store::StoreSessions(store.clone())),
                &authn,
                clock.clone(),
            )
            .context("browser sessions")?,
        )),
        None => None,
    };
    // The one decision core every front door calls.
    let decider = Arc::new(
        Decider::new(authn.clone(), policy.clone(), flavor(cfg.forge.kind))
            .with_forge_groups(forge_groups)
            .with_forge_api(forge_api),
    );

    let m = metrics.clone();
    let (audit, writer) = AuditSink::open(
        &AuditOptions {
            path: cfg.audit.file.clone(),
            queue_capacity: cfg.audit.queue_capacity,
            batch_max: cfg.audit.batch_max,
            flush_interval: cfg.audit.flush_interval.0,
            rotate_size: cfg.audit.rotate_size.map(|s| s.0),
            rotate_age: cfg.audit.rotate_age.map(|a| a.0),
        },
        Some(Box::new(move |s| {
            m.audit_flushed(s.duration.as_secs_f64(), s.ok)
        })),
    )?;
    // With a secrets broker or the webhook relay, every allowed push is indexed (for provenance
    // checks, and to name who made the update a push event reports) before it is forwarded.
    let audit = audit.with_push_index((secrets.is_some() || hooks.is_some()).then(|| {
        Arc::new(crate::store::StorePushIndex::new(
            store.clone(),
            &cfg.audit.file,
            clock.clone(),
        )) as Arc<dyn gatehouse_audit::PushIndexSink>
    }));

    let tls = match &cfg.server.tls {
        Some(t) => {
            let r = TlsReloader::with_client_ca(
                t.cert_file.clone(),
                t.key_file.clone(),
                t.client_ca_file.clone(),
            )?;
            Some(r)
        }
        None => None,
    };
    let listener = inherited.listen(cfg.server.listen, "server").await?;
    let admin = match &cfg.admin {
        Some(a) => Some(inherited.listen(a.listen, "admin").await?),
        None => None,
    };
    let ext_authz = match cfg.ext_authz.as_ref().and_then(|e| e.grpc_listen) {
        Some(a) => Some(inherited.listen(a, "ext_authz").await?),
        None => None,
    };
    inherited.all_claimed()?;

    let assertion_audience = cfg
        .identity_headers
        .assertion_audience
        .clone()
        .or_else(|| cfg.upstream.url.clone())
        .unwrap_or_else(|| "gatehouse-upstream".to_owned());
    let (ssh_gateway, ssh_listener) = match ssh {
        Some((settings, l)) => (
            Some(Arc::new(SshGateway::new(
                settings,
                decider.clone(),
                audit.clone(),
                clock.clone(),
                ssh_metrics,
            ))),
            Some(l),
        ),
        None => (None, None),
    };
    let gateway = Arc::new(
        Gateway::new(
            GatewaySettings {
                flavor: flavor(cfg.forge.kind),
                trusted_proxies: cfg.server.trusted_proxies.clone(),
                identity: cfg.identity_headers.clone(),
                assertion_audience,
                portal_repositories: cfg
                    .session
                    .as_ref()
                    .map(|s| s.repositories.clone())
                    .unwrap_or_default(),
                portal_links: cfg
                    .session
                    .as_ref()
                    .map(|s| s.links.clone())
                    .unwrap_or_default(),
                builtin_repos_dir: cfg
                    .upstream
                    .git_http_backend
                    .as_ref()
                    .map(|g| g.repos_dir.clone()),
                websocket_idle_timeout: cfg.server.websocket_idle_timeout.0,
                upstream_body_idle_timeout: cfg.upstream.body_idle_timeout.0,
                client_body_idle_timeout: cfg.server.body_idle_timeout.0,
                push_limits,
                forward_auth: cfg.forward_auth.clone(),
                ext_authz: cfg.ext_authz.clone(),
            },
            decider.clone(),
            audit.clone(),
            upstream,
            metrics.clone(),
            clock.clone(),
        )
        .with_sessions(sessions.clone())
        .with_ssh(
            ssh_gateway
                .clone()
                .map(|g| Arc::new(SshCerts(g)) as Arc<dyn gatehouse_http::SshCertIssuer>),
        )
        .with_state(Some(Arc::new(crate::store::StoreState {
            store: store.clone(),
            clock: clock.clone(),
        })))
        .with_secrets(secrets.clone())
        .with_hooks(hooks.clone())
        .with_job_tokens(
            cfg.job_tokens
                .as_ref()
                .map(|j| gatehouse_http::JobTokenSettings {
                    ttl: j.ttl.0,
                    recheck: j.recheck.0,
                }),
        )
        .with_spans(
            traces.sink(),
            cfg.traces.as_ref().map_or(1.0, |t| t.sample_ratio),
            cfg.traces.as_ref().is_some_and(|t| t.trust_caller_sampling),
        ),
    );

    audit
        .send(AuditRecord {
            time: clock.now(),
            event: "gateway_start",
            detail: Some(format!(
                "gatehouse {} config {}",
                env!("CARGO_PKG_VERSION"),
                config_path.display()
            )),
            ..AuditRecord::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(watch_policy(
        cfg.clone(),
        policy,
        metrics.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(refresh_keys(authn.clone(), stop_rx.clone()));
    {
        let mut stop = stop_rx.clone();
        tokio::spawn(revocation_feed.run(async move {
            let _ = stop.changed().await;
        }));
    }
    if let Some(s) = &sessions {
        tokio::spawn(sweep_sessions(s.clone(), stop_rx.clone()));
    }
    if let Some(b) = &secrets {
        tokio::spawn(sweep_secrets(b.clone(), stop_rx.clone()));
    }
    if let (Some(h), Some(w)) = (&hooks, &cfg.webhooks) {
        tokio::spawn(crate::webhooks::reread_secrets(
            h.clone(),
            w.hooks.clone(),
            secrets.clone(),
            w.secret_refresh.0,
            stop_rx.clone(),
        ));
        tokio::spawn(crate::webhooks::sweep(
            h.clone(),
            w.retention.0,
            clock.clone(),
            stop_rx.clone(),
        ));
        let relay = Arc::new(
            gatehouse_hooks::Relay::new(
                h.clone(),
                audit.clone(),
                Some(Arc::new(crate::webhooks::OwnSigner {
                    own: authn.own().clone(),
                    clock: clock.clone(),
                })
                    as Arc<dyn gatehouse_hooks::DeliverySigner>),
                Some(gateway.clone() as Arc<dyn gatehouse_hooks::JobEnder>),
                crate::store::node_name(&cfg.audit.file),
            )
            .context("webhook relay")?,
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(relay.run(async move {
            let _ = stop.changed().await;
        }));
    }
    if cfg.job_tokens.is_some() {
        let (gw, mut stop) = (gateway.clone(), stop_rx.clone());
        tokio::spawn(async move {
            gw.watch_minted_jobs(async move {
                let _ = stop.changed().await;
            })
            .await;
        });
    }
    let server_tls = match &tls {
        Some(r) => {
            let every = cfg
                .server
                .tls
                .as_ref()
                .map_or(Duration::from_secs(10), |t| t.reload_interval.0);
            tokio::spawn(watch_tls(r.clone(), every, stop_rx.clone()));
            Some(r.server_config()?)
        }
        None => None,
    };
    if let Some(l) = admin {
        let gw = gateway.clone();
        let mut stop = stop_rx.clone();
        tracing::info!(addr = %l.local_addr()?, "admin listener ready");
        tokio::spawn(gatehouse_http::serve_admin(l, gw, async move {
            let _ = stop.changed().await;
        }));
    }
    if let Some(ssh) = ssh_gateway {
        let (l, mut stop) = (ssh_listener, stop_rx.clone());
        if let Some(l) = l {
            let (host_key, fp) = ssh.settings().host_key_line();
            tracing::info!(addr = %l.local_addr()?, host_key = %host_key, fingerprint = %fp, "ssh listening");
            tokio::spawn(ssh.serve(l, async move {
                let _ = stop.changed().await;
            }));
        }
    }
    if let Some(l) = ext_authz {
        let (gw, mut stop) = (gateway.clone(), stop_rx.clone());
        tracing::info!(addr = %l.local_addr()?, service = "envoy.service.auth.v3.Authorization", "ext_authz listening");
        tokio::spawn(gatehouse_extauthz::serve(gw, l, async move {
            let _ = stop.changed().await;
        }));
    }
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, tls = server_tls.is_some(), "gatehouse listening");
    on_ready(local);
    let opts = ServeOptions {
        header_read_timeout: cfg.server.header_read_timeout.0,
        idle_timeout: cfg.server.idle_timeout.0,
        shutdown_grace: cfg.server.shutdown_grace.0,
        max_header_bytes: cfg.server.max_header_bytes,
        extra_accept_threads: match cfg.server.threading {
            gatehouse_config::Threading::WorkStealing => 0,
            gatehouse_config::Threading::ThreadPerCore => threads(&cfg).saturating_sub(1),
        },
    };
    let served =
        gatehouse_http::serve(listener, server_tls, gateway, opts, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = audit
        .send(AuditRecord {
            time: clock.now(),
            event: "gateway_stop",
            ..AuditRecord::default()
        })
        .await;
    traces.finish(cfg.server.shutdown_grace.0).await;
    served?;
    tracing::info!("gatehouse stopped");
    Ok(Running { writer })
}

/// Runs a gateway on a fresh runtime, and after it stops joins the audit writer so that every
/// queued record reaches the disk.
pub(crate) fn run_blocking(
    cfg: Config,
    config_path: &Path,
    inherited: Inherited,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("gatehouse");
    match cfg.server.threading {
        // One worker here (background work and one accept loop); the others run their own.
        gatehouse_config::Threading::ThreadPerCore => {
            builder.worker_threads(1);
        }
        gatehouse_config::Threading::WorkStealing => {
            if cfg.server.worker_threads > 0 {
                builder.worker_threads(cfg.server.worker_threads);
            }
        }
    }
    let rt = builder.build()?;
    let result = rt.block_on(run(cfg, config_path, inherited, on_ready));
    // Dropping the runtime ends any request still running after the grace period; its audit
    // record is queued (as aborted) before the last sink goes away and the writer exits.
    rt.shutdown_timeout(Duration::from_secs(2));
    let running = result?;
    if running.writer.join().is_err() {
        anyhow::bail!("audit writer panicked");
    }
    Ok(())
}

/// `gatehouse serve --config FILE`.
pub fn serve(args: &ServeArgs) -> Result<()> {
    // First, while the process has one thread: it changes the environment.
    let inherited = Inherited::from_env()?;
    let cfg = Config::load(&args.config)?;
    init_logging(&cfg);
    tracing::info!(
        version = crate::BUILD.version,
        commit = crate::BUILD.commit,
        built = crate::BUILD.date,
        config = %args.config.display(),
        env_overrides = ?cfg.env_overrides,
        "gatehouse starting"
    );
    run_blocking(cfg, &args.config, inherited, |_| {})
}

/// The SSH front door as the HTTP gateway's certificate issuer (`/.gatehouse/ssh/cert`): the
/// composition root joins the two, so neither crate depends on the other.
#[derive(Debug)]
struct SshCerts(Arc<SshGateway>);

impl gatehouse_http::SshCertIssuer for SshCerts {
    fn issue(
        &self,
        public_key: &str,
        principal: &gatehouse_core::Principal,
    ) -> Result<gatehouse_http::SshCert, gatehouse_http::SshCertError> {
        let issued = self
            .0
            .issue_user_cert(public_key, principal)
            .map_err(|e| match e {
                gatehouse_ssh::SshError::CredentialExpired => {
                    gatehouse_http::SshCertError::CredentialExpired
                }
                e => gatehouse_http::SshCertError::BadKey(e.to_string()),
            })?;
        let settings = self.0.settings();
        let (_, fingerprint) = settings.host_key_line();
        Ok(gatehouse_http::SshCert {
            certificate: issued.certificate,
            serial: issued.serial,
            valid_before: issued.valid_before,
            ssh_address: settings.external_address.clone(),
            known_hosts: self.0.known_hosts_line(),
            host_key_fingerprint: fingerprint,
        })
    }
}

/// The threads that serve requests: `server.worker_threads`, or one per CPU.
fn threads(cfg: &Config) -> usize {
    match cfg.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    }
}
