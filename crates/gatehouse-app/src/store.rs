//! Opening the configured store, and the `gatehouse store` and `gatehouse revoke` commands.
//! This is the one place that knows which backend `[store]` picked.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use gatehouse_config::{Config, MigrateMode, StoreUrl};
use gatehouse_core::{Clock, RevocationKind, SystemClock, UnixTime};
use gatehouse_store::{AtOpen, NewRevocation, Store, StoreOptions};

/// Opens `[store]`: its URL read from where the config says, the PostgreSQL password added,
/// migrations applied (`migrate = "auto"`) or required. `at_open` overrides the config (`store
/// migrate` migrates, `store status` only looks).
pub(crate) async fn open(cfg: &Config, at_open: Option<AtOpen>) -> Result<Store> {
    let s = &cfg.store;
    let mut url = match &s.url {
        StoreUrl::Plain(u) => gatehouse_core::Redacted::new(u.clone()),
        StoreUrl::Secret(src) => {
            let u = gatehouse_config::read_secret("store.url", src)?;
            gatehouse_core::Redacted::new(u.expose().trim().to_owned())
        }
    };
    if let Some(src) = &s.password {
        let pw = gatehouse_config::read_secret("store.password", src)?;
        url = gatehouse_core::Redacted::new(with_password(url.expose(), pw.expose().trim())?);
    }
    let opts = StoreOptions {
        at_open: at_open.unwrap_or(match s.migrate {
            MigrateMode::Auto => AtOpen::Migrate,
            MigrateMode::Manual => AtOpen::Require,
        }),
        max_connections: s.max_connections,
        busy_timeout: s.busy_timeout.0,
    };
    // A relative sqlite:// path in a URL read from a secret is under the working directory.
    let store = gatehouse_store::open(url.expose(), Path::new("."), &opts).await?;
    tracing::info!(store = %store.location(), backend = store.backend(), "store open");
    Ok(store)
}

/// `postgres://user@host/db` with `password` put in, percent-encoded.
fn with_password(url: &str, password: &str) -> Result<String> {
    let mut u = url::Url::parse(url).context("store.url is not a URL")?;
    anyhow::ensure!(
        matches!(u.scheme(), "postgres" | "postgresql"),
        "store.password is for a postgres:// store only"
    );
    u.set_password(Some(password))
        .map_err(|()| anyhow::anyhow!("store.url cannot take a password"))?;
    Ok(u.to_string())
}

/// `gatehouse store migrate`: applies pending migrations and says which.
pub fn migrate(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    runtime()?.block_on(async {
        let store = open(&cfg, Some(AtOpen::Migrate)).await?;
        let status = store.status().await?;
        let last = status.iter().map(|s| s.version).max().unwrap_or(0);
        println!(
            "store {} ({}) is at schema version {last}",
            store.location(),
            store.backend()
        );
        store.close().await;
        Ok(())
    })
}

/// `gatehouse store status`: every migration, applied or pending; exits non-zero when any is
/// pending, so deployment scripts can gate on it.
pub fn status(config: &Path) -> Result<bool> {
    let cfg = Config::load(config)?;
    runtime()?.block_on(async {
        let store = open(&cfg, Some(AtOpen::Inspect)).await?;
        let status = store.status().await?;
        println!("store {} ({})", store.location(), store.backend());
        let mut pending = false;
        for s in &status {
            pending |= !s.applied;
            println!(
                "  {:>4}  {:<8}  {}",
                s.version,
                if s.applied { "applied" } else { "pending" },
                s.description
            );
        }
        if pending {
            println!("pending migrations: run `gatehouse store migrate`");
        }
        store.close().await;
        Ok(!pending)
    })
}

/// What `gatehouse revoke` was asked.
#[derive(Debug)]
pub enum RevokeCommand {
    /// Revoke `value` of `kind`.
    Revoke {
        /// What it names.
        kind: RevocationKind,
        /// The jti, session id, serial, subject or service account.
        value: String,
        /// Why (recorded).
        reason: String,
        /// The revocation lapses after this many seconds (the credential's remaining life).
        lapse_after: Option<std::time::Duration>,
    },
    /// Lift the revocation of `value` of `kind`.
    Lift {
        /// What it names.
        kind: RevocationKind,
        /// The value revoked.
        value: String,
    },
    /// List the revocations in force.
    List,
}

/// `gatehouse revoke ...`: writes to the store every node follows, so the revocation holds
/// everywhere within `store.revocation_poll` (at once on PostgreSQL).
pub fn revoke(config: &Path, cmd: RevokeCommand) -> Result<()> {
    let cfg = Config::load(config)?;
    let now = SystemClock.now();
    let actor = cli_actor();
    runtime()?.block_on(async {
        let store = open(&cfg, None).await?;
        let log = store.revocations();
        match cmd {
            RevokeCommand::Revoke {
                kind,
                value,
                reason,
                lapse_after,
            } => {
                let until = lapse_after.map(|d| now.plus(d).as_secs());
                let c = log
                    .revoke(
                        NewRevocation {
                            kind,
                            value,
                            reason,
                            actor,
                            until,
                        },
                        now.as_secs(),
                    )
                    .await?;
                println!(
                    "revoked {} {} (log entry {}{})",
                    c.kind,
                    c.value,
                    c.seq,
                    until.map_or(String::new(), |u| format!(
                        ", lapses {}",
                        UnixTime::from_secs(u).to_rfc3339()
                    ))
                );
            }
            RevokeCommand::Lift { kind, value } => {
                match log.lift(kind, &value, &actor, now.as_secs()).await? {
                    Some(c) => println!(
                        "lifted the revocation of {kind} {value} (log entry {})",
                        c.seq
                    ),
                    None => anyhow::bail!("no revocation of {kind} {value} is in force"),
                }
            }
            RevokeCommand::List => {
                let all = log.in_force(now.as_secs()).await?;
                if all.is_empty() {
                    println!("no revocations in force");
                }
                for r in all {
                    println!(
                        "{:<16} {:<40} {}  by {}  {}{}",
                        r.change.kind.as_str(),
                        r.change.value,
                        UnixTime::from_secs(r.at).to_rfc3339(),
                        r.actor,
                        r.reason,
                        r.change.until.map_or(String::new(), |u| format!(
                            "  (lapses {})",
                            UnixTime::from_secs(u).to_rfc3339()
                        ))
                    );
                }
            }
        }
        store.close().await;
        Ok(())
    })
}

/// Who runs a CLI command, for the store's records (`cli:<login>`, the sudoer's when sudo).
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into())
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The in-memory revocations of a serving node, loaded from the store before it serves, and the
/// feed that keeps them current.
pub(crate) async fn revocations(
    store: &Store,
    cfg: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(
    Arc<gatehouse_core::Revocations>,
    gatehouse_store::RevocationFeed,
)> {
    let set = Arc::new(gatehouse_core::Revocations::new());
    let feed = gatehouse_store::RevocationFeed::new(
        store.clone(),
        set.clone(),
        clock,
        cfg.store.revocation_poll.0,
    );
    let n = feed.load().await.context("loading revocations")?;
    tracing::info!(
        log_entries = n,
        in_force_seq = set.seq(),
        "revocations loaded"
    );
    Ok((set, feed))
}

/// The secrets broker of `[secrets]` over `store`, when configured: its master keys read from
/// their files or environment variables.
pub(crate) fn secrets_broker(
    store: &Store,
    cfg: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<gatehouse_secrets::Broker>>> {
    let Some(sc) = &cfg.secrets else {
        return Ok(None);
    };
    let key = |what: &str,
               src: &gatehouse_config::SecretSource|
     -> Result<gatehouse_secrets::MasterKey> {
        let text = gatehouse_config::read_secret(what, src)?;
        let key = gatehouse_secrets::MasterKey::from_text(text.expose());
        // The key's text is zeroized once parsed (the parsed key zeroizes its own bytes).
        zeroize::Zeroize::zeroize(&mut text.into_inner());
        key.with_context(|| what.to_owned())
    };
    let current = key("secrets.master_key", &sc.master_key)?;
    let previous = sc
        .previous_master_keys
        .iter()
        .enumerate()
        .map(|(i, src)| key(&format!("secrets.previous_master_keys[{i}]"), src))
        .collect::<Result<Vec<_>>>()?;
    let keys = gatehouse_secrets::MasterKeys::new(current, previous);
    tracing::info!(master_key = keys.current_id(), "secrets broker ready");
    Ok(Some(Arc::new(gatehouse_secrets::Broker::new(
        store.clone(),
        Arc::new(keys),
        clock,
        gatehouse_secrets::BrokerSettings {
            max_versions: sc.max_versions,
            retention: sc.retention.0.as_secs() as i64,
            lease_ttl: sc.lease_ttl.0.as_secs() as i64,
            push_retention: sc.push_retention.0.as_secs() as i64,
        },
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_from_a_secret_is_encoded_into_the_url() {
        let u = with_password(
            "postgres://gh@db.internal:5432/gatehouse?sslmode=verify-full",
            "p@ss/w:rd",
        )
        .unwrap();
        assert_eq!(
            u,
            "postgres://gh:p%40ss%2Fw%3Ard@db.internal:5432/gatehouse?sslmode=verify-full"
        );
        assert!(with_password("sqlite:///x.db", "p").is_err());
    }
}

/// The audit's push index on the store: the ref updates of each allowed push, with the node and
/// the record that announced them.
#[derive(Debug)]
pub(crate) struct StorePushIndex {
    store: Store,
    node: String,
    clock: Arc<dyn Clock>,
}

impl StorePushIndex {
    /// The index of the gateway whose audit log is `audit_file` on this host.
    pub(crate) fn new(store: Store, audit_file: &std::path::Path, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            node: node_name(audit_file),
            clock,
        }
    }
}

/// This gateway's name among the nodes sharing a store: its host and its audit log, which no
/// two nodes share.
pub(crate) fn node_name(audit_file: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", audit_file.display())
}

impl gatehouse_audit::PushIndexSink for StorePushIndex {
    fn index<'a>(
        &'a self,
        refs: &'a [gatehouse_audit::PushedRef],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let rows: Vec<gatehouse_store::IndexedPush> = refs
                .iter()
                .map(|r| gatehouse_store::IndexedPush {
                    repo: r.repo.clone(),
                    git_ref: r.git_ref.clone(),
                    commit: r.commit.clone(),
                    audit_seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
                    pushed_at: r.at,
                    pushed_by: r.by.clone(),
                    node: self.node.clone(),
                    confirmed_at: None,
                    old: Some(r.old.clone()),
                    pusher_issuer: Some(r.issuer.clone()),
                    pusher_subject: Some(r.subject.clone()),
                })
                .collect();
            self.store
                .pushes()
                .record(&rows)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn confirm<'a>(
        &'a self,
        seq: u64,
        refs: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .pushes()
                .confirm(
                    &self.node,
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    refs,
                    self.clock.now().as_secs(),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// Browser sessions on the store: the session crate's five operations and renewal lease over
/// `gatehouse-store`'s session records.
#[derive(Debug)]
pub(crate) struct StoreSessions(pub(crate) Store);

fn session_err(e: gatehouse_store::StoreError) -> gatehouse_session::StoreError {
    gatehouse_session::StoreError(e.to_string())
}

impl gatehouse_session::SessionStore for StoreSessions {
    fn put<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .put(kind.as_str(), key, expires_at, value)
                .await
                .map_err(session_err)
        })
    }

    fn get<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .get(kind.as_str(), key)
                .await
                .map_err(session_err)
        })
    }

    fn take<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .take(kind.as_str(), key)
                .await
                .map_err(session_err)
        })
    }

    fn delete<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .delete(kind.as_str(), key)
                .await
                .map_err(session_err)
        })
    }

    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<usize, gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .sweep(now)
                .await
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .map_err(session_err)
        })
    }

    fn try_lease<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
        holder: &'a str,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .try_lease(kind.as_str(), key, holder, lease_ms)
                .await
                .map_err(session_err)
        })
    }

    fn update_leased<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
        holder: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .update_leased(kind.as_str(), key, holder, expires_at, value)
                .await
                .map_err(session_err)
        })
    }

    fn release<'a>(
        &'a self,
        kind: gatehouse_session::RecordKind,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), gatehouse_session::StoreError>> {
        Box::pin(async move {
            self.0
                .sessions()
                .release(kind.as_str(), key, holder)
                .await
                .map_err(session_err)
        })
    }
}

/// Gatehouse's state for the HTTP API and token exchanges, over the store.
#[derive(Debug)]
pub(crate) struct StoreState {
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
}

fn state_err(e: gatehouse_store::StoreError) -> gatehouse_http::StateError {
    match e {
        gatehouse_store::StoreError::Invalid(why) => gatehouse_http::StateError::Invalid(why),
        other => {
            tracing::error!(error = %other, "store operation failed");
            gatehouse_http::StateError::Unavailable(other.to_string())
        }
    }
}

fn env_view(e: gatehouse_store::Environment) -> gatehouse_http::EnvironmentView {
    gatehouse_http::EnvironmentView {
        id: e.id,
        name: e.name,
        created_by: e.created_by,
        created_at: e.created_at,
        expires_at: e.expires_at,
        ended_at: e.ended_at,
    }
}

impl gatehouse_http::StateStore for StoreState {
    fn ping(&self) -> BoxFuture<'_, Result<(), gatehouse_http::StateError>> {
        Box::pin(async move { self.store.ping().await.map_err(state_err) })
    }

    fn environment<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<gatehouse_http::EnvironmentView>, gatehouse_http::StateError>>
    {
        Box::pin(async move {
            let e = self.store.environments().get(id).await.map_err(state_err)?;
            Ok(e.map(env_view))
        })
    }

    fn create_environment<'a>(
        &'a self,
        name: &'a str,
        created_by: &'a str,
        ttl: i64,
    ) -> BoxFuture<'a, Result<gatehouse_http::EnvironmentView, gatehouse_http::StateError>> {
        Box::pin(async move {
            let now = self.clock.now().as_secs();
            let e = self
                .store
                .environments()
                .create(name, created_by, now, now.saturating_add(ttl))
                .await
                .map_err(state_err)?;
            Ok(env_view(e))
        })
    }

    fn end_environment<'a>(
        &'a self,
        id: &'a str,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Option<gatehouse_http::EnvironmentView>, gatehouse_http::StateError>>
    {
        Box::pin(async move {
            let now = self.clock.now().as_secs();
            let e = self
                .store
                .environments()
                .end(id, actor, now)
                .await
                .map_err(state_err)?;
            Ok(e.map(env_view))
        })
    }

    fn revoke<'a>(
        &'a self,
        kind: RevocationKind,
        value: &'a str,
        reason: &'a str,
        actor: &'a str,
        until: Option<i64>,
    ) -> BoxFuture<'a, Result<i64, gatehouse_http::StateError>> {
        Box::pin(async move {
            let now = self.clock.now().as_secs();
            let c = self
                .store
                .revocations()
                .revoke(
                    NewRevocation {
                        kind,
                        value: value.to_owned(),
                        reason: reason.to_owned(),
                        actor: actor.to_owned(),
                        until,
                    },
                    now,
                )
                .await
                .map_err(state_err)?;
            Ok(c.seq)
        })
    }

    fn lift<'a>(
        &'a self,
        kind: RevocationKind,
        value: &'a str,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, gatehouse_http::StateError>> {
        Box::pin(async move {
            let now = self.clock.now().as_secs();
            let c = self
                .store
                .revocations()
                .lift(kind, value, actor, now)
                .await
                .map_err(state_err)?;
            Ok(c.map(|c| c.seq))
        })
    }

    fn revocations(
        &self,
    ) -> BoxFuture<'_, Result<Vec<gatehouse_http::RevocationView>, gatehouse_http::StateError>>
    {
        Box::pin(async move {
            let now = self.clock.now().as_secs();
            let all = self
                .store
                .revocations()
                .in_force(now)
                .await
                .map_err(state_err)?;
            Ok(all
                .into_iter()
                .map(|r| gatehouse_http::RevocationView {
                    kind: r.change.kind,
                    value: r.change.value,
                    reason: r.reason,
                    actor: r.actor,
                    at: r.at,
                    until: r.change.until,
                })
                .collect())
        })
    }
}

/// What `gatehouse env` was asked.
#[derive(Debug)]
pub enum EnvCommand {
    /// Create an environment that ends by itself after `ttl`.
    Create {
        /// Its name.
        name: String,
        /// How long it lives.
        ttl: std::time::Duration,
    },
    /// End one now: every credential bound to it is revoked.
    End {
        /// Its id.
        id: String,
    },
    /// The environments not ended.
    List,
}

/// `gatehouse job end ID`: every token of the job (and what was bought with them) is refused on
/// every node, at once on PostgreSQL, within `store.revocation_poll` otherwise.
pub fn job_end(config: &Path, id: &str, reason: &str) -> Result<()> {
    let cfg = Config::load(config)?;
    let now = SystemClock.now().as_secs();
    let actor = cli_actor();
    runtime()?.block_on(async {
        let store = open(&cfg, None).await?;
        let c = store
            .revocations()
            .revoke(
                gatehouse_store::NewRevocation {
                    kind: gatehouse_core::RevocationKind::Job,
                    value: id.to_owned(),
                    reason: if reason.is_empty() {
                        "job ended".into()
                    } else {
                        reason.to_owned()
                    },
                    actor: actor.clone(),
                    until: Some(now.saturating_add(gatehouse_core::JOB_ENDED_FOR)),
                },
                now,
            )
            .await?;
        let leases = store
            .leases()
            .revoke_job(id, &actor, "job_ended", now)
            .await?;
        store.close().await;
        println!(
            "job {id} ended: its tokens are revoked (log entry {}), {leases} leases revoked",
            c.seq
        );
        anyhow::Ok(())
    })
}

/// `gatehouse env ...`.
pub fn env(config: &Path, cmd: EnvCommand) -> Result<()> {
    let cfg = Config::load(config)?;
    let now = SystemClock.now();
    let actor = cli_actor();
    runtime()?.block_on(async {
        let store = open(&cfg, None).await?;
        let envs = store.environments();
        match cmd {
            EnvCommand::Create { name, ttl } => {
                let e = envs
                    .create(&name, &actor, now.as_secs(), now.plus(ttl).as_secs())
                    .await?;
                // The id alone on stdout, for scripts: ENV=$(gatehouse env create ...).
                println!("{}", e.id);
                eprintln!(
                    "environment {} ({}) ends {}",
                    e.id,
                    e.name,
                    UnixTime::from_secs(e.expires_at).to_rfc3339()
                );
            }
            EnvCommand::End { id } => match envs.end(&id, &actor, now.as_secs()).await? {
                Some(e) => println!(
                    "environment {} ({}) ended: every credential bound to it is revoked",
                    e.id, e.name
                ),
                None => anyhow::bail!("no environment {id}"),
            },
            EnvCommand::List => {
                let live = envs.live(now.as_secs()).await?;
                if live.is_empty() {
                    println!("no live environments");
                }
                for e in live {
                    println!(
                        "{}  {:<24}  by {}  ends {}",
                        e.id,
                        e.name,
                        e.created_by,
                        UnixTime::from_secs(e.expires_at).to_rfc3339()
                    );
                }
            }
        }
        store.close().await;
        Ok(())
    })
}
