//! Prometheus metrics. Typed families, no global registry.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) action: &'static str,
    pub(crate) decision: &'static str,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabel {
    pub(crate) action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FetchLabels {
    pub(crate) issuer: String,
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeliveryLabels {
    pub(crate) hook: String,
    pub(crate) target: String,
    pub(crate) state: String,
}

/// Every metric Gatehouse exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: Family<ActionLabel, Histogram>,
    pub(crate) upstream_errors: Family<KindLabel, Counter>,
    pub(crate) authn_failures: Family<KindLabel, Counter>,
    policy_reloads: Family<ResultLabel, Counter>,
    policy_rules: Gauge,
    audit_write: Histogram,
    pub(crate) audit_commit: Histogram,
    audit_failures: Counter,
    jwks_fetches: Family<FetchLabels, Counter>,
    pub(crate) tunnels_open: Gauge,
    requests_in_flight: Gauge,
    jwks_seen: Mutex<Vec<(FetchLabels, u64)>>,
    revocations: Gauge,
    revocation_seq: Gauge,
    revocations_synced: Gauge,
    webhook_deliveries: Family<DeliveryLabels, Gauge>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One request counted in `gatehouse_requests_in_flight` for as long as this lives.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a request in flight until the returned value is dropped.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.requests_in_flight.inc();
        InFlight(self.requests_in_flight.clone())
    }

    /// [`Self::new`], with more metrics registered by `extra` (the SSH front door's).
    pub fn with(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut m = Self::new();
        extra(&mut m.registry);
        m
    }

    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by classified action, decision and status",
            requests.clone(),
        );
        let duration = Family::<ActionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body",
            duration.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let authn_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "authn_failures",
            "Refused credentials by reason",
            authn_failures.clone(),
        );
        let policy_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy file reloads by result",
            policy_reloads.clone(),
        );
        let policy_rules = Gauge::default();
        registry.register(
            "policy_rules",
            "Policies in the active policy set",
            policy_rules.clone(),
        );
        let audit_write = Histogram::new(latency_buckets());
        registry.register(
            "audit_write_seconds",
            "Time to write and fsync one audit batch",
            audit_write.clone(),
        );
        let audit_commit = Histogram::new(latency_buckets());
        registry.register(
            "audit_commit_seconds",
            "Time a request that can change the forge waited for its audit record to be synced before it was forwarded",
            audit_commit.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit batches that failed to reach the disk",
            audit_failures.clone(),
        );
        let jwks_fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Issuer key set fetches by result",
            jwks_fetches.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "Upgraded connections (WebSocket and other HTTP/1.1 upgrades) being relayed",
            tunnels_open.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests on the public listener from their arrival to the end of their response body \
             (or their abort)",
            requests_in_flight.clone(),
        );
        let revocations = Gauge::default();
        registry.register(
            "revocations",
            "Revocations this node holds in memory and checks every request against",
            revocations.clone(),
        );
        let revocation_seq = Gauge::default();
        registry.register(
            "revocation_log_position",
            "The sequence number of the last revocation log entry this node applied (every node \
             of a deployment should show the same)",
            revocation_seq.clone(),
        );
        let revocations_synced = Gauge::default();
        registry.register(
            "revocations_synced_timestamp_seconds",
            "When this node last read the revocation log successfully (alert when it falls more \
             than a few seconds behind: new revocations are not reaching it)",
            revocations_synced.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Gauge>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries in the store by hook, target and state (pending: waiting for their \
             next attempt; delivered; dead: given up), as the store holds them when scraped",
            webhook_deliveries.clone(),
        );
        Self {
            registry,
            webhook_deliveries,
            revocations,
            revocation_seq,
            revocations_synced,
            tunnels_open,
            requests_in_flight,
            requests,
            duration,
            upstream_errors,
            authn_failures,
            policy_reloads,
            policy_rules,
            audit_write,
            audit_commit,
            audit_failures,
            jwks_fetches,
            jwks_seen: Mutex::new(Vec::new()),
        }
    }

    /// Records a policy reload.
    pub fn policy_reloaded(&self, ok: bool, rules: usize) {
        self.policy_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        if ok {
            self.policy_rules.set(rules as i64);
        }
    }

    /// Records an audit flush.
    pub fn audit_flushed(&self, seconds: f64, ok: bool) {
        self.audit_write.observe(seconds);
        if !ok {
            self.audit_failures.inc();
        }
    }

    /// Reads the node's revocation state into its gauges (at scrape time).
    pub(crate) fn sync_revocations(&self, r: &gatehouse_core::Revocations) {
        self.revocations
            .set(i64::try_from(r.len()).unwrap_or(i64::MAX));
        self.revocation_seq.set(r.seq());
        self.revocations_synced.set(r.synced_at());
    }

    /// Sets the webhook delivery counts to the store's (hook, target, state, count) rows; a
    /// label set no longer in the store disappears.
    pub(crate) fn sync_webhooks(&self, rows: &[(String, String, String, i64, i64)]) {
        self.webhook_deliveries.clear();
        for (hook, target, state, n, _) in rows {
            let target = target.split_once('/').map_or(target.as_str(), |(_, t)| t);
            self.webhook_deliveries
                .get_or_create(&DeliveryLabels {
                    hook: hook.clone(),
                    target: target.to_owned(),
                    state: state.clone(),
                })
                .set(*n);
        }
    }

    /// Brings the JWKS fetch counters up to the authenticator's totals.
    pub(crate) fn sync_jwks(&self, statuses: &[gatehouse_authn::KeyStatus]) {
        let Ok(mut seen) = self.jwks_seen.lock() else {
            return;
        };
        for s in statuses {
            for (result, total) in [("ok", s.fetches_ok), ("error", s.fetches_failed)] {
                let labels = FetchLabels {
                    issuer: s.issuer.clone(),
                    result,
                };
                let prev = seen.iter_mut().find(|(l, _)| *l == labels);
                let delta = match prev {
                    Some((_, v)) => {
                        let d = total.saturating_sub(*v);
                        *v = total;
                        d
                    }
                    None => {
                        seen.push((labels.clone(), total));
                        total
                    }
                };
                self.jwks_fetches.get_or_create(&labels).inc_by(delta);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
