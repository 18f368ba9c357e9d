//! The webhook relay: forge deliveries proved, kept and handed on.
//!
//! A hook (`/.gatehouse/hooks/{name}`) takes deliveries of one sender (Gitea, Forgejo, Gogs,
//! GitHub or any Standard Webhooks sender), verifies each as that sender signs it
//! ([`verify()`]), refuses a delivery id (or a signed body) seen within the replay window,
//! reads what the relay needs from the payload ([`Summary`]), marks a push event with the push
//! Gatehouse allowed for that ref update (or with none: it reached the forge around the
//! gateway), and commits the delivery and one row per target to the store before the sender
//! is answered ([`Hooks::accept`]). The [`Relay`] then sends each to its targets, with a
//! Standard Webhooks signature of Gatehouse's own and a signed assertion of what Gatehouse
//! verified, retrying with exponential backoff and jitter until a 2xx or the target's give-up
//! time, and audits every attempt. A finished `workflow_job` ends the job (tokens, leases)
//! through the app's [`JobEnder`], as a durable row of its own.
//!
//! This crate must not decide access, read configuration files or know HTTP routing: the HTTP
//! crate hands it a request's headers and body, the app hands it its settings, its store, its
//! signer and its job ender.
#![forbid(unsafe_code)]

mod payload;
mod relay;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Clock, Redacted};
use gatehouse_store::{Accepted, NewDelivery, NewTarget, Store};
pub use gatehouse_store::{AttemptFilter, AttemptRow, StoreError};
use http::HeaderMap;

pub use payload::{JobFinished, PushUpdate, Summary};
pub use relay::{DeliverySigner, JobEnder, Relay, backoff};
pub use verify::{
    Rejected, Verified, hex_hmac, is_token, standard_key, standard_signature, verify,
};

/// Who signs a hook's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Gitea.
    Gitea,
    /// Forgejo.
    Forgejo,
    /// Gogs.
    Gogs,
    /// GitHub.
    Github,
    /// Any Standard Webhooks sender.
    Standard,
}

impl HookKind {
    /// Its name in the store and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Gitea => "gitea",
            HookKind::Forgejo => "forgejo",
            HookKind::Gogs => "gogs",
            HookKind::Github => "github",
            HookKind::Standard => "standard",
        }
    }
}

/// One target of a hook.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// Its name within the hook.
    pub name: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Only these events (event or event type); all when empty.
    pub events: Vec<String>,
    /// Only these repositories (`owner/name`, `*` within a segment); all when empty.
    pub repositories: Vec<String>,
    /// The decoded Standard Webhooks key Gatehouse signs with.
    pub signing_key: Redacted<Vec<u8>>,
    /// At most this many in flight, per node.
    pub max_in_flight: usize,
    /// One repository's deliveries in accept order.
    pub ordered: bool,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Give up on a delivery this long after it was accepted.
    pub give_up_after: Duration,
    /// The first retry's delay; each next one doubles, up to `retry_max`.
    pub retry_min: Duration,
    /// The longest delay between two attempts.
    pub retry_max: Duration,
}

/// One hook.
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// Its name (the URL's last segment).
    pub name: String,
    /// Who signs it.
    pub kind: HookKind,
    /// The secrets a delivery may be signed with (decoded for Standard Webhooks), as first read:
    /// [`Hooks::new`] moves them out, and [`Hooks::set_secrets`] replaces them.
    pub secrets: Vec<Redacted<Vec<u8>>>,
    /// The largest body accepted.
    pub max_body: usize,
    /// A delivery id seen again within this is refused.
    pub replay_window: Duration,
    /// Standard Webhooks: how far the timestamp may be from now.
    pub tolerance: Duration,
    /// A finished `workflow_job` ends that job.
    pub end_jobs: bool,
    /// The issuer of the job tokens it ends, when not the kind's default.
    pub job_issuer: Option<String>,
    /// Where its deliveries go.
    pub targets: Vec<TargetSettings>,
}

/// The row name of the job-ending work of a hook (not a URL: the relay calls the [`JobEnder`]).
pub const END_JOBS_TARGET: &str = "@end-jobs";

/// Why a delivery was not accepted, and whose move it is.
#[derive(Debug, thiserror::Error)]
pub enum HookRefusal {
    /// No hook of this name.
    #[error("no webhook named {0}")]
    UnknownHook(String),
    /// The sender's signature, id or timestamp does not hold (the sender's, or an attacker's).
    #[error("{0}")]
    Rejected(#[from] Rejected),
    /// The delivery id, or the same signed body, was seen within the replay window.
    #[error("delivery {id} was already received")]
    Replayed {
        /// The sender's delivery id.
        id: String,
        /// Its (verified) event.
        event: String,
    },
    /// The store could not keep it (Gatehouse's side: the sender should deliver again).
    #[error("the delivery could not be kept: {0}")]
    Store(#[from] StoreError),
}

impl HookRefusal {
    /// A stable code for the answer and the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            HookRefusal::UnknownHook(_) => "hook_not_found",
            HookRefusal::Rejected(r) => r.code(),
            HookRefusal::Replayed { .. } => "delivery_replayed",
            HookRefusal::Store(_) => "store_unavailable",
        }
    }
}

/// A delivery accepted and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Gatehouse's id (`whd_…`), the idempotency id targets see.
    pub id: String,
    /// The sender's id.
    pub source_id: String,
    /// Its event.
    pub event: String,
    /// The repository.
    pub repo: Option<String>,
    /// The sender.
    pub sender: Option<String>,
    /// The targets it goes to.
    pub targets: Vec<String>,
    /// For a push event: who pushed through Gatehouse, or `None` when the update matched no
    /// push Gatehouse allowed (`push_seen` false).
    pub pusher: Option<String>,
    /// For a push event: whether Gatehouse allowed a push with this ref update.
    pub push_seen: Option<bool>,
}

/// A hook's secrets, shared with the deliveries verifying against them.
type Secrets = Arc<Vec<Redacted<Vec<u8>>>>;

/// The hooks of a gateway and the store they keep deliveries in.
#[derive(Debug)]
pub struct Hooks {
    hooks: HashMap<String, Arc<HookSettings>>,
    /// Each hook's secrets as last read (they are re-read while the gateway runs).
    secrets: std::sync::RwLock<HashMap<String, Secrets>>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// Whether repository names compare case-insensitively, as the push index names them
    /// (Gitea, Forgejo and Gogs fold case; a generic upstream does not).
    fold_case: bool,
    wake: tokio::sync::Notify,
}

impl Hooks {
    /// The hooks `hooks`, keeping deliveries in `store`; `fold_case`: the gateway names
    /// repositories case-insensitively (in the push index too).
    pub fn new(
        mut hooks: Vec<HookSettings>,
        store: Store,
        clock: Arc<dyn Clock>,
        fold_case: bool,
    ) -> Self {
        // The secrets move into the map (one copy, replaced on each re-read).
        let secrets = hooks
            .iter_mut()
            .map(|h| (h.name.clone(), Arc::new(std::mem::take(&mut h.secrets))))
            .collect();
        Self {
            hooks: hooks
                .into_iter()
                .map(|h| (h.name.clone(), Arc::new(h)))
                .collect(),
            secrets: std::sync::RwLock::new(secrets),
            store,
            clock,
            fold_case,
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The hook `name`.
    pub fn hook(&self, name: &str) -> Option<&HookSettings> {
        self.hooks.get(name).map(|h| &**h)
    }

    /// Every hook.
    pub fn all(&self) -> impl Iterator<Item = &Arc<HookSettings>> {
        self.hooks.values()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Replaces the secrets of hook `name` (a re-read: a rotation without a restart).
    pub fn set_secrets(&self, name: &str, secrets: Vec<Redacted<Vec<u8>>>) {
        if self.hooks.contains_key(name) {
            self.secrets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned(), Arc::new(secrets));
        }
    }

    /// Wakes the relay: something is due now (a delivery kept, a retry asked for).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Verifies a delivery to hook `name` and keeps it, with a row for each target it goes to;
    /// only once this returns `Ok` may the sender be told it was received.
    pub async fn accept(
        &self,
        name: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Receipt, HookRefusal> {
        let hook = self
            .hooks
            .get(name)
            .ok_or_else(|| HookRefusal::UnknownHook(name.to_owned()))?;
        let now = self.clock.now().as_secs();
        let current = self
            .secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_default();
        let secrets: Vec<&[u8]> = current.iter().map(|s| s.expose().as_slice()).collect();
        let tolerance = i64::try_from(hook.tolerance.as_secs()).unwrap_or(i64::MAX);
        let v = verify(hook.kind, &secrets, headers, body, now, tolerance)?;
        let summary = Summary::read(&v.event, &v.json);
        // A push event names the ref update it reports: the push index says whether Gatehouse
        // allowed a push with exactly that update, and who made it.
        let (mut pusher, mut push_seen, mut annotation) = (None, None, None);
        if let (Some(p), Some(repo)) = (&summary.push, &summary.repo) {
            let found = self
                .store
                .pushes()
                .find_update(&self.repo_key(repo), &p.git_ref, &p.before, &p.after)
                .await?;
            push_seen = Some(found.is_some());
            annotation = Some(match &found {
                Some(f) => {
                    pusher = Some(f.pushed_by.clone());
                    serde_json::json!({ "push": {
                        "seen": true,
                        "ref": p.git_ref, "before": p.before, "after": p.after,
                        "pusher": {
                            "name": f.pushed_by,
                            "issuer": f.pusher_issuer,
                            "subject": f.pusher_subject,
                        },
                        "audit": { "node": f.node, "seq": f.audit_seq },
                        "pushed_at": f.pushed_at,
                        "confirmed": f.confirmed_at.is_some(),
                    }})
                }
                None => serde_json::json!({ "push": {
                    "seen": false,
                    "ref": p.git_ref, "before": p.before, "after": p.after,
                }}),
            });
        }
        if let Some(j) = &summary.job_finished {
            let a = annotation.get_or_insert_with(|| serde_json::json!({}));
            a["job_finished"] = serde_json::json!({
                "job": j.job, "run_id": j.run_id, "run_attempt": j.run_attempt,
                "conclusion": j.conclusion,
            });
        }
        let event_names = [Some(v.event.as_str()), v.event_type.as_deref()];
        let mut targets: Vec<(String, Option<String>, i64)> = hook
            .targets
            .iter()
            .filter(|t| {
                t.events.is_empty()
                    || t.events
                        .iter()
                        .any(|e| event_names.contains(&Some(e.as_str())))
            })
            .filter(|t| {
                t.repositories.is_empty()
                    || summary.repo.as_deref().is_some_and(|r| {
                        t.repositories
                            .iter()
                            .any(|g| repo_glob(g, r, self.fold_case))
                    })
            })
            .map(|t| {
                (
                    target_key(&hook.name, &t.name),
                    t.ordered
                        .then(|| summary.repo.as_deref().map(|r| self.repo_key(r)))
                        .flatten(),
                    now.saturating_add(secs(t.give_up_after)),
                )
            })
            .collect();
        if hook.end_jobs && summary.job_finished.is_some() && summary.repo.is_some() {
            targets.push((
                target_key(&hook.name, END_JOBS_TARGET),
                None,
                now.saturating_add(7 * 86_400),
            ));
        }
        let at = self.clock.now();
        let id = format!(
            "whd_{}",
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                at.as_secs().max(0).unsigned_abs(),
                0,
            ))
            .simple()
        );
        let headers_text = relayed_headers(hook.kind, headers);
        // The sender's id is not signed (but for Standard Webhooks): a signed body sent again
        // under a new id is a replay too.
        let body_key = format!("sha256:{}", sha256_hex(&v.json));
        let also_seen = (hook.kind != HookKind::Standard).then_some(body_key.as_str());
        let annotation_text = annotation.as_ref().map(serde_json::Value::to_string);
        let new_targets: Vec<NewTarget<'_>> = targets
            .iter()
            .map(|(name, key, give_up)| NewTarget {
                name,
                order_key: key.as_deref(),
                give_up_at: *give_up,
            })
            .collect();
        let kept = self
            .store
            .hooks()
            .accept(
                &NewDelivery {
                    id: &id,
                    hook: &hook.name,
                    source_id: &v.delivery_id,
                    scheme: hook.kind.as_str(),
                    event: &v.event,
                    repo: summary.repo.as_deref(),
                    sender: summary.sender.as_deref(),
                    headers: &headers_text,
                    body,
                    annotation: annotation_text.as_deref(),
                    received_at: now,
                    also_seen,
                },
                &new_targets,
                now.saturating_sub(secs(hook.replay_window)),
            )
            .await?;
        match kept {
            Accepted::Duplicate => Err(HookRefusal::Replayed {
                id: v.delivery_id,
                event: v.event,
            }),
            Accepted::New(_) => {
                self.wake();
                Ok(Receipt {
                    id,
                    source_id: v.delivery_id,
                    event: v.event,
                    repo: summary.repo,
                    sender: summary.sender,
                    targets: targets.into_iter().map(|t| t.0).collect(),
                    pusher,
                    push_seen,
                })
            }
        }
    }
}

impl Hooks {
    /// `owner/name` as the gateway (and its push index) names it.
    fn repo_key(&self, repo: &str) -> String {
        if self.fold_case {
            repo.to_ascii_lowercase()
        } else {
            repo.to_owned()
        }
    }
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A target's name in the store: `{hook}/{target}`.
pub fn target_key(hook: &str, target: &str) -> String {
    format!("{hook}/{target}")
}

/// Whether `owner/name` matches `glob` (`*` matches any run of characters within a segment),
/// ignoring case when `fold_case` (as Gitea, Forgejo and Gogs name repositories).
pub fn repo_glob(glob: &str, repo: &str, fold_case: bool) -> bool {
    let (Some((go, gn)), Some((ro, rn))) = (glob.split_once('/'), repo.split_once('/')) else {
        return false;
    };
    if rn.contains('/') || gn.contains('/') {
        return false;
    }
    let f = |s: &str| {
        if fold_case {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        }
    };
    seg_glob(&f(go), &f(ro)) && seg_glob(&f(gn), &f(rn))
}

fn seg_glob(g: &str, s: &str) -> bool {
    match g.split_once('*') {
        None => g == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| seg_glob(rest, &tail[i..]))
        }
    }
}

/// The headers relayed with a delivery: its content type and, from a forge, its event headers
/// (the `X-Gitea-*`, `X-Forgejo-*`, `X-Gogs-*` and `X-GitHub-*` ones, which `verify` checked
/// agree with the verified event and id), never a signature, an `Authorization` or the sender's
/// `webhook-*` (Gatehouse signs anew). A Standard Webhooks sender's `X-*` headers are nobody's
/// word and are not relayed. One `Name: value` per line.
pub fn relayed_headers(kind: HookKind, h: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in h {
        let n = name.as_str();
        let keep = n == "content-type"
            || (kind != HookKind::Standard
                && ["x-gitea-", "x-forgejo-", "x-gogs-", "x-github-"]
                    .iter()
                    .any(|p| n.starts_with(p))
                && !n.contains("signature"));
        if let (true, Ok(v)) = (keep, value.to_str()) {
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
