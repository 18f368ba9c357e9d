//! Relaying kept deliveries to their targets.
//!
//! A worker per node claims due rows of each target from the store (at most the target's
//! `max_in_flight` at a time on this node), POSTs each, and records the outcome under its claim:
//! a 2xx is delivered for good; anything else is tried again after an exponential, jittered
//! delay until the target's give-up time, then goes to the dead letters. A claim lasts longer
//! than an attempt can, so no two workers send one row at once; a node that dies mid-attempt
//! leaves its claim to lapse, and the row is sent again under the same idempotency id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::{AuditHook, AuditRecord, AuditSink};
use gatehouse_store::{Claimed, Finish, StoredDelivery};
use tokio::sync::Semaphore;

use crate::{END_JOBS_TARGET, HookSettings, Hooks, JobFinished, TargetSettings, secs};

/// Signs what Gatehouse asserts about a relayed delivery (the app implements it over its own
/// token issuer): a short-lived JWT for `audience` carrying `claims`.
pub trait DeliverySigner: Send + Sync + std::fmt::Debug {
    /// The signed assertion, or why not.
    fn sign(&self, audience: &str, claims: serde_json::Value) -> Result<String, String>;
}

/// Ends a CI job in Gatehouse (its tokens on every front door, its secret leases), as
/// `gatehouse job end` does; the app implements it.
pub trait JobEnder: Send + Sync + std::fmt::Debug {
    /// Ends the job `job` of `repository` reported by a hook of `kind`, whose tokens `issuer`
    /// signs (the kind's default when `None`); returns the job id ended, or why it could not be.
    fn end_job<'a>(
        &'a self,
        kind: crate::HookKind,
        issuer: Option<&'a str>,
        repository: &'a str,
        job: &'a JobFinished,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;
}

/// The delay before attempt `attempts + 1`: `min` doubled per attempt made, at most `max`,
/// then jittered down by up to half (`jitter` in 0..=1), so that a target back after an outage
/// is not hit by every delivery at once.
pub fn backoff(attempts: i64, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let full = min.saturating_mul(2u32.saturating_pow(exp)).min(max);
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// The relay worker of one node.
#[derive(Debug)]
pub struct Relay {
    hooks: Arc<Hooks>,
    http: reqwest::Client,
    audit: AuditSink,
    signer: Option<Arc<dyn DeliverySigner>>,
    jobs: Option<Arc<dyn JobEnder>>,
    node: String,
    /// Free slots per target key.
    slots: HashMap<String, Arc<Semaphore>>,
}

/// How often a worker looks for due rows without being woken.
const POLL: Duration = Duration::from_millis(500);

impl Relay {
    /// A worker for `hooks` on node `node`.
    pub fn new(
        hooks: Arc<Hooks>,
        audit: AuditSink,
        signer: Option<Arc<dyn DeliverySigner>>,
        jobs: Option<Arc<dyn JobEnder>>,
        node: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Gatehouse-Hookshot/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut slots = HashMap::new();
        for h in hooks.all() {
            for t in &h.targets {
                slots.insert(
                    crate::target_key(&h.name, &t.name),
                    Arc::new(Semaphore::new(t.max_in_flight)),
                );
            }
            if h.end_jobs {
                slots.insert(
                    crate::target_key(&h.name, END_JOBS_TARGET),
                    Arc::new(Semaphore::new(4)),
                );
            }
        }
        Ok(Self {
            hooks,
            http,
            audit,
            signer,
            jobs,
            node,
            slots,
        })
    }

    /// Relays until `stop` resolves; attempts in flight then finish (each within its timeout).
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let tasks = tokio_util_tracker();
        // This node's claims from before a crash: its rows are due now, not when they lapse.
        match self.hooks.store().hooks().release_claims(&self.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                released = n,
                "webhook claims of this node's last run released"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "this node's old webhook claims could not be released")
            }
        }
        // Rows of targets no longer configured would wait for ever: they are given up.
        let known: Vec<String> = self.slots.keys().cloned().collect();
        let now = self.hooks.clock().now().as_secs();
        match self.hooks.store().hooks().abandon_others(&known, now).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                rows = n,
                "deliveries to targets no longer configured were given up (dead letters)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "deliveries to removed targets could not be given up")
            }
        }
        loop {
            self.pass(&tasks).await;
            tokio::select! {
                () = &mut stop => break,
                () = self.hooks.woken() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Claims and starts what is due, for every target with a free slot.
    async fn pass(self: &Arc<Self>, tasks: &Tracker) {
        let now = self.hooks.clock().now().as_secs();
        for h in self.hooks.all() {
            let mut targets: Vec<(String, Option<usize>, Duration)> = h
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| (crate::target_key(&h.name, &t.name), Some(i), t.timeout))
                .collect();
            if h.end_jobs {
                targets.push((
                    crate::target_key(&h.name, END_JOBS_TARGET),
                    None,
                    Duration::from_secs(30),
                ));
            }
            for (key, target, timeout) in targets {
                let Some(slots) = self.slots.get(&key) else {
                    continue;
                };
                let free = slots.available_permits();
                if free == 0 {
                    continue;
                }
                // The claim outlasts the attempt (its timeout) with room to record the outcome.
                let until = now.saturating_add(secs(timeout).saturating_mul(2).saturating_add(30));
                let claimed = match self
                    .hooks
                    .store()
                    .hooks()
                    .claim_due(
                        &key,
                        &self.node,
                        now,
                        until,
                        i64::try_from(free).unwrap_or(1),
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, target = %key, "webhook deliveries could not be claimed");
                        continue;
                    }
                };
                for c in claimed {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    // The hook is shared, not copied (its targets hold signing keys).
                    let (me, hook) = (self.clone(), h.clone());
                    tasks.spawn(async move {
                        let target = target.and_then(|i| hook.targets.get(i));
                        me.attempt(&hook, target, c).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// One attempt of row `c`, recorded and audited.
    async fn attempt(&self, hook: &HookSettings, target: Option<&TargetSettings>, c: Claimed) {
        let store = self.hooks.store().hooks();
        let d = match store.get(c.delivery_seq).await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "a webhook delivery could not be read; its claim will lapse");
                return;
            }
        };
        let (status, error, retry_after) = match target {
            Some(t) => self.send(hook, t, &d).await,
            None => self.end_job(hook, &d).await,
        };
        let now = self.hooks.clock().now().as_secs();
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let how = if delivered {
            Finish::Delivered {
                status: status.unwrap_or(200),
            }
        } else {
            let err = error.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or(0)));
            let (min, max) = target
                .map_or((Duration::from_secs(5), Duration::from_secs(600)), |t| {
                    (t.retry_min, t.retry_max)
                });
            // A target's Retry-After is a floor: never sooner than the backoff.
            let delay = backoff(c.attempts, min, max, jitter())
                .max(retry_after.unwrap_or_default())
                .min(max);
            let next_at = now.saturating_add(secs(delay).max(1));
            // 410 Gone: the target says it wants no more (Standard Webhooks); a delivery past its
            // give-up time goes to the dead letters.
            if status == Some(410) || next_at > c.give_up_at {
                Finish::Dead { status, error: err }
            } else {
                Finish::Retry {
                    status,
                    error: err,
                    next_at,
                }
            }
        };
        let outcome = match &how {
            Finish::Delivered { .. } => "delivered",
            Finish::Retry { .. } => "retry",
            Finish::Dead { .. } => "dead",
        };
        let written = match store.finish(&c, &how, now).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, delivery = %d.id, "a webhook attempt could not be recorded; its claim will lapse and it is sent again");
                false
            }
        };
        let detail = match &how {
            Finish::Delivered { status } => format!("delivered (HTTP {status})"),
            Finish::Retry { error, next_at, .. } => {
                format!("failed: {error}; next attempt in {} s", next_at - now)
            }
            Finish::Dead { error, .. } => format!("failed: {error}; given up (dead letter)"),
        };
        tracing::info!(delivery = %d.id, target = %c.target, attempt = c.attempts + 1, outcome, "{detail}");
        let _ = self
            .audit
            .send(AuditRecord {
                time: self.hooks.clock().now(),
                event: "hook_relay",
                repo: d.repo.clone(),
                decision: Some(if delivered { "allow" } else { "error" }),
                reason: Some(outcome.into()),
                status: status.and_then(|s| u16::try_from(s).ok()),
                detail: Some(if written {
                    detail
                } else {
                    format!("{detail} (not recorded: the claim had lapsed)")
                }),
                hook: Some(AuditHook {
                    hook: d.hook.clone(),
                    event: d.event.clone(),
                    delivery: Some(d.id.clone()),
                    source_id: Some(d.source_id.clone()),
                    sender: d.sender.clone(),
                    target: Some(c.target.clone()),
                    attempt: Some(c.attempts + 1),
                    outcome: Some(outcome.into()),
                    ..AuditHook::default()
                }),
                ..AuditRecord::default()
            })
            .await;
    }

    /// POSTs `d` to `t`: (status, error, the target's `Retry-After`).
    async fn send(
        &self,
        hook: &HookSettings,
        t: &TargetSettings,
        d: &StoredDelivery,
    ) -> (Option<i64>, Option<String>, Option<Duration>) {
        let now = self.hooks.clock().now().as_secs();
        let mut req = self
            .http
            .post(&t.url)
            .timeout(t.timeout)
            .body(d.body.clone());
        for line in d.headers.lines() {
            if let Some((n, v)) = line.split_once(": ") {
                req = req.header(n, v);
            }
        }
        req = req
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                crate::standard_signature(t.signing_key.expose(), &d.id, now, &d.body),
            )
            .header("gatehouse-hook", &hook.name);
        if let Some(signer) = &self.signer {
            let mut claims = serde_json::json!({
                "token_use": "webhook",
                "hook": d.hook,
                "kind": d.scheme,
                "delivery": d.id,
                "source_delivery": d.source_id,
                "event": d.event,
                "repository": d.repo,
                "sender": d.sender,
                "received_at": d.received_at,
                "body_sha256": crate::sha256_hex(&d.body),
            });
            if let Some(a) = d
                .annotation
                .as_deref()
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                && let (Some(obj), Some(extra)) = (claims.as_object_mut(), a.as_object())
            {
                for (k, v) in extra {
                    obj.insert(k.clone(), v.clone());
                }
            }
            match signer.sign(&t.url, claims) {
                Ok(jwt) => req = req.header("gatehouse-assertion", jwt),
                Err(e) => {
                    return (
                        None,
                        Some(format!("the assertion could not be signed: {e}")),
                        None,
                    );
                }
            }
        }
        match req.send().await {
            Ok(resp) => {
                let status = i64::from(resp.status().as_u16());
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (Some(status), None, retry_after)
            }
            Err(e) => {
                let why = if e.is_timeout() {
                    format!("no answer within {} s", t.timeout.as_secs())
                } else if e.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "request failed".to_owned()
                };
                (None, Some(why), None)
            }
        }
    }

    /// The job-ending row of `d`: 200 once the job is ended.
    async fn end_job(
        &self,
        hook: &HookSettings,
        d: &StoredDelivery,
    ) -> (Option<i64>, Option<String>, Option<Duration>) {
        let Some(jobs) = &self.jobs else {
            return (
                None,
                Some("job ending is not available on this node".into()),
                None,
            );
        };
        // What accept read from the verified payload, kept in the annotation.
        let job = d
            .annotation
            .as_deref()
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
            .and_then(|a| {
                let j = a.get("job_finished")?;
                Some(JobFinished {
                    job: j.get("job")?.as_u64()?,
                    run_id: j.get("run_id")?.as_u64()?,
                    run_attempt: j.get("run_attempt")?.as_u64()?,
                    conclusion: j.get("conclusion")?.as_str()?.to_owned(),
                })
            });
        let (Some(job), Some(repo)) = (job, d.repo.clone()) else {
            // Kept only for a finished job: nothing to end.
            return (Some(200), None, None);
        };
        match jobs
            .end_job(hook.kind, hook.job_issuer.as_deref(), &repo, &job)
            .await
        {
            Ok(id) => {
                tracing::info!(job = %id, delivery = %d.id, "a finished job's tokens and leases are revoked");
                (Some(200), None, None)
            }
            Err(e) => (None, Some(e), None),
        }
    }
}

type Tracker = tokio_util::task::TaskTracker;

fn tokio_util_tracker() -> Tracker {
    tokio_util::task::TaskTracker::new()
}
