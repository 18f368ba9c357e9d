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
use gatehouse_secrets::SecretError;
use gatehouse_store::Store;
use tokio::sync::watch;

fn kind_of(k: HookKindConfig) -> HookKind {
    match k {
        HookKindConfig::Gitea => HookKind::Gitea,
        HookKindConfig::Forgejo => HookKind::Forgejo,
        HookKindConfig::Gogs => HookKind::Gogs,
        HookKindConfig::Github => HookKind::Github,
        HookKindConfig::Standard => HookKind::Standard,
    }
}

/// Why a hook's secrets could not be read.
#[derive(Debug)]
pub(crate) enum SecretsRead {
    /// The configuration or a secret is wrong (the operator's move): refuse to start.
    Bad(anyhow::Error),
    /// The secrets broker's store did not answer: keep what was read before.
    Unavailable(anyhow::Error),
}

/// Reads the secrets of hook `i` (`h`): files and the environment, and the newest enabled
/// version of each broker secret. A broker secret that is deleted, disabled, expired or
/// missing is left out (it was withdrawn); the hook keeps the others.
pub(crate) async fn read_hook_secrets(
    i: usize,
    h: &HookConfig,
    broker: Option<&gatehouse_secrets::Broker>,
) -> Result<Vec<Redacted<Vec<u8>>>, SecretsRead> {
    let kind = kind_of(h.kind);
    let mut secrets = Vec::new();
    for (j, src) in h.secrets.iter().enumerate() {
        let what = format!("webhooks.hooks[{i}].secrets[{j}]");
        let text = match src {
            HookSecret::Source(src) => read_secret(&what, src)
                .map_err(|e| SecretsRead::Bad(e.into()))?
                .into_inner(),
            HookSecret::Broker { secret } => {
                let Some(b) = broker else {
                    return Err(SecretsRead::Bad(anyhow::anyhow!(
                        "{what}: {{ secret = .. }} needs [secrets]"
                    )));
                };
                match b.get(secret, None).await {
                    Ok((v, _)) => String::from_utf8(v.expose().to_vec()).map_err(|_| {
                        SecretsRead::Bad(anyhow::anyhow!("{what}: secret {secret} is not text"))
                    })?,
                    Err(
                        e @ (SecretError::NotFound(_)
                        | SecretError::Deleted(_)
                        | SecretError::Disabled { .. }
                        | SecretError::NotYetValid { .. }
                        | SecretError::Expired { .. }),
                    ) => {
                        tracing::warn!(hook = %h.name, secret = %secret, error = %e, "a hook's secret in the broker is withdrawn: deliveries signed with it are refused");
                        continue;
                    }
                    Err(e) => {
                        return Err(SecretsRead::Unavailable(anyhow::anyhow!(
                            "{what}: secret {secret}: {e}"
                        )));
                    }
                }
            }
        };
        let text = Redacted::new(text);
        // A file's trailing newline is not part of the secret the forge was given.
        let t = text.expose().trim_end_matches(['\n', '\r']);
        let key = match kind {
            HookKind::Standard => gatehouse_hooks::standard_key(t)
                .map_err(|e| SecretsRead::Bad(anyhow::anyhow!("{what}: {e}")))?,
            _ if t.is_empty() => {
                return Err(SecretsRead::Bad(anyhow::anyhow!(
                    "{what}: the secret is empty"
                )));
            }
            _ => t.as_bytes().to_vec(),
        };
        secrets.push(Redacted::new(key));
    }
    Ok(secrets)
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
        let secrets = match read_hook_secrets(i, h, broker).await {
            Ok(s) => s,
            Err(SecretsRead::Bad(e) | SecretsRead::Unavailable(e)) => return Err(e),
        };
        if secrets.is_empty() {
            // A broker secret may be put only once the gateway runs (the CLI talks to it):
            // until then, nothing verifies and every delivery is refused.
            tracing::warn!(hook = %h.name, "no secret of this hook can be read yet: its deliveries are refused until one can");
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
/// rotation needs no restart. A read the store cannot answer keeps the secrets read before;
/// a secret withdrawn from the broker stops being accepted.
pub(crate) async fn reread_secrets(
    hooks: Arc<Hooks>,
    cfg: Vec<HookConfig>,
    broker: Option<Arc<gatehouse_secrets::Broker>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        for (i, h) in cfg.iter().enumerate() {
            match read_hook_secrets(i, h, broker.as_deref()).await {
                Ok(s) => hooks.set_secrets(&h.name, s),
                Err(SecretsRead::Bad(e) | SecretsRead::Unavailable(e)) => {
                    tracing::warn!(hook = %h.name, error = %e, "a hook's secrets could not be re-read; the ones read before stay");
                }
            }
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
