//! The webhook relay's wiring: `[webhooks]` to the hooks crate's settings (secrets read here,
//! from files, the environment or the secrets broker, and re-read every minute), the assertion
//! signer over Gatehouse's own issuer, the relay worker and the hourly prune.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gatehouse_authn::OwnIssuer;
use gatehouse_config::{Config, HookConfig, HookKindConfig, HookSecret, read_secret};
use gatehouse_core::{Clock, Redacted};
use gatehouse_hooks::{HookKind, HookSettings, Hooks, TargetSettings};
use gatehouse_store::Store;
use tokio::sync::watch;
use zeroize::Zeroizing;

fn kind_of(k: HookKindConfig) -> HookKind {
    match k {
        HookKindConfig::Gitea => HookKind::Gitea,
        HookKindConfig::Forgejo => HookKind::Forgejo,
        HookKindConfig::Gogs => HookKind::Gogs,
        HookKindConfig::Github => HookKind::Github,
        HookKindConfig::Standard => HookKind::Standard,
    }
}

/// One configured secret of a hook, as read now.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Its value (decoded for Standard Webhooks).
    Value(Redacted<Vec<u8>>),
    /// Not usable: a file that is gone or empty, a variable unset, a broker secret deleted,
    /// disabled, expired or malformed. Deliveries signed with it are refused.
    Withdrawn(String),
    /// The broker's store did not answer: the value read before stands.
    Unavailable(String),
}

/// Reads secret `j` of hook `i` (`h`): a file, a variable, or the newest version of a broker
/// secret if it is enabled and valid now.
async fn read_entry(
    i: usize,
    j: usize,
    h: &HookConfig,
    broker: Option<&gatehouse_secrets::Broker>,
) -> Entry {
    let what = format!("webhooks.hooks[{i}].secrets[{j}]");
    let Some(src) = h.secrets.get(j) else {
        return Entry::Withdrawn(format!("{what}: not configured"));
    };
    let text: Zeroizing<String> = match src {
        HookSecret::Source(src) => match read_secret(&what, src) {
            Ok(t) => Zeroizing::new(t.into_inner()),
            Err(e) => return Entry::Withdrawn(e.to_string()),
        },
        HookSecret::Broker { secret } => {
            let Some(b) = broker else {
                return Entry::Withdrawn(format!("{what}: {{ secret = .. }} needs [secrets]"));
            };
            match b.get(secret, None).await {
                Ok((v, _)) => match std::str::from_utf8(v.expose()) {
                    Ok(t) => Zeroizing::new(t.to_owned()),
                    Err(_) => {
                        return Entry::Withdrawn(format!("{what}: secret {secret} is not text"));
                    }
                },
                Err(gatehouse_secrets::SecretError::Store(e)) => {
                    return Entry::Unavailable(format!("{what}: secret {secret}: {e}"));
                }
                Err(e) => return Entry::Withdrawn(format!("{what}: secret {secret}: {e}")),
            }
        }
    };
    // A file's trailing newline is not part of the secret the forge was given.
    let t = text.trim_end_matches(['\n', '\r']);
    match kind_of(h.kind) {
        HookKind::Standard => match gatehouse_hooks::standard_key(t) {
            Ok(k) => Entry::Value(Redacted::new(k)),
            Err(e) => Entry::Withdrawn(format!("{what}: {e}")),
        },
        _ if t.is_empty() => Entry::Withdrawn(format!("{what}: the secret is empty")),
        _ => Entry::Value(Redacted::new(t.as_bytes().to_vec())),
    }
}

/// The hooks `[webhooks]` configures, over `store`; `None` without `[webhooks]`.
pub(crate) async fn hooks(
    cfg: &Config,
    store: &Store,
    broker: Option<&gatehouse_secrets::Broker>,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<Hooks>>> {
    let Some(w) = &cfg.webhooks else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, h) in w.hooks.iter().enumerate() {
        let kind = kind_of(h.kind);
        let mut secrets = Vec::new();
        for j in 0..h.secrets.len() {
            match read_entry(i, j, h, broker).await {
                Entry::Value(v) => secrets.push(v),
                // A file or variable the operator names must be there at start.
                Entry::Withdrawn(why) if matches!(h.secrets[j], HookSecret::Source(_)) => {
                    anyhow::bail!("{why}");
                }
                // A broker secret may be put, or corrected, only once the gateway runs (the
                // CLI talks to it): until then deliveries signed with it are refused.
                Entry::Withdrawn(why) | Entry::Unavailable(why) => {
                    tracing::warn!(hook = %h.name, "{why}: deliveries signed with it are refused until it can be read");
                }
            }
        }
        let mut targets = Vec::new();
        for (j, t) in h.targets.iter().enumerate() {
            let what = format!("webhooks.hooks[{i}].targets[{j}].signing_secret");
            let text = read_secret(&what, &t.signing_secret)?;
            let key = gatehouse_hooks::standard_key(text.expose().trim_end_matches(['\n', '\r']))
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            targets.push(TargetSettings {
                name: t.name.clone(),
                url: t.url.clone(),
                events: t.events.clone(),
                repositories: t.repositories.clone(),
                signing_key: Redacted::new(key),
                max_in_flight: t.max_in_flight,
                ordered: t.ordered,
                timeout: t.timeout.0,
                give_up_after: t.give_up_after.0,
                retry_min: t.retry_min.0,
                retry_max: t.retry_max.0,
            });
        }
        out.push(HookSettings {
            name: h.name.clone(),
            kind,
            secrets,
            max_body: usize::try_from(h.max_body.0).context("webhooks: max_body")?,
            replay_window: h.replay_window.0,
            tolerance: h.tolerance.0,
            end_jobs: h.end_jobs,
            job_issuer: h.job_issuer.clone(),
            targets,
        });
    }
    tracing::info!(hooks = out.len(), "webhook relay ready");
    // Repositories are named as the gateway (and its push index) names them: case-folded on
    // Gitea, Forgejo and Gogs.
    let fold_case = !matches!(cfg.forge.kind, gatehouse_config::ForgeKind::Generic);
    Ok(Some(Arc::new(Hooks::new(
        out,
        store.clone(),
        clock,
        fold_case,
    ))))
}

/// Re-reads every hook's secrets every `every` (files, the environment, the broker), so a
/// rotation needs no restart. Each secret is decided on its own: one withdrawn (a file removed
/// or emptied, a broker secret deleted, disabled, expired or malformed) stops being accepted;
/// one the store cannot answer for keeps its value read before.
pub(crate) async fn reread_secrets(
    hooks: Arc<Hooks>,
    cfg: Vec<HookConfig>,
    broker: Option<Arc<gatehouse_secrets::Broker>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The last value of every secret of every hook (None: withdrawn).
    let mut last: Vec<Vec<Option<Redacted<Vec<u8>>>>> = Vec::new();
    for (i, h) in cfg.iter().enumerate() {
        let mut row = Vec::new();
        for j in 0..h.secrets.len() {
            row.push(match read_entry(i, j, h, broker.as_deref()).await {
                Entry::Value(v) => Some(v),
                Entry::Withdrawn(_) | Entry::Unavailable(_) => None,
            });
        }
        last.push(row);
    }
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        for (i, h) in cfg.iter().enumerate() {
            for j in 0..h.secrets.len() {
                let entry = read_entry(i, j, h, broker.as_deref()).await;
                let Some(slot) = last.get_mut(i).and_then(|r| r.get_mut(j)) else {
                    continue;
                };
                match entry {
                    Entry::Value(v) => *slot = Some(v),
                    Entry::Withdrawn(why) => {
                        if slot.take().is_some() {
                            tracing::warn!(hook = %h.name, "{why}: deliveries signed with it are refused from now on");
                        }
                    }
                    Entry::Unavailable(why) => {
                        tracing::warn!(hook = %h.name, "{why}: the value read before stays");
                    }
                }
            }
            let now: Vec<Redacted<Vec<u8>>> = last
                .get(i)
                .map(|r| r.iter().flatten().cloned().collect())
                .unwrap_or_default();
            hooks.set_secrets(&h.name, now);
        }
    }
}

/// Signs the relay's assertions with Gatehouse's own key.
#[derive(Debug)]
pub(crate) struct OwnSigner {
    pub(crate) own: Arc<OwnIssuer>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl gatehouse_hooks::DeliverySigner for OwnSigner {
    fn sign(&self, audience: &str, claims: serde_json::Value) -> Result<String, String> {
        self.own
            .webhook_assertion(audience, claims, self.clock.now().as_secs())
            .map_err(|e| e.to_string())
    }
}

/// Deletes, every hour, the deliveries every target is done with that are older than
/// `webhooks.retention`, and the delivery ids older than the longest replay window.
pub(crate) async fn sweep(
    hooks: Arc<Hooks>,
    retention: Duration,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let window = hooks
        .all()
        .map(|h| h.replay_window)
        .max()
        .unwrap_or(retention);
    loop {
        let now = clock.now().as_secs();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        match hooks
            .store()
            .hooks()
            .prune(
                now.saturating_sub(secs(retention)),
                now.saturating_sub(secs(window)),
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                "webhook deliveries past their retention deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "webhook deliveries could not be pruned"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
