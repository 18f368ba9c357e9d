//! OpenTelemetry trace export over OTLP/HTTP (protobuf), built only with the `otlp` feature.
//!
//! It owns turning a finished audited event (an [`AuditRecord`] and its [`SpanIds`]) into an
//! OpenTelemetry span, queueing it without ever making a request wait, and sending batches to a
//! collector with `opentelemetry-otlp`'s HTTP exporter on the gateway's own runtime. The span's
//! trace and span ids are the ones Gatehouse put in the audit record and sent upstream in
//! `traceparent`, so the forge's spans nest under Gatehouse's and an audit line names its trace.
//!
//! It must not decide, authenticate or read configuration: the app crate gives it plain
//! [`OtlpSettings`]. It never exports a credential: a span carries what the audit record carries
//! (identities, decisions, paths), and the record never holds a token.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_audit::{AuditRecord, SpanIds, SpanSink};
use gatehouse_core::Redacted;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

/// Spans sent in one export at most.
const BATCH_MAX: usize = 512;
/// How long a span waits for others to fill its batch, by default.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);

/// What the exporter needs, resolved by the app crate from `[traces]`.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's traces URL (`.../v1/traces`).
    pub url: String,
    /// `service.name`.
    pub service_name: String,
    /// `service.version` (Gatehouse's version and commit).
    pub service_version: String,
    /// `service.instance.id`: which node of a deployment.
    pub instance_id: String,
    /// Headers sent with every export (a collector's API key): never printed.
    pub headers: Vec<(String, Redacted<String>)>,
    /// How long one export may take.
    pub timeout: Duration,
    /// Spans queued at most; more are dropped.
    pub max_queue: usize,
    /// How long a span waits for others to fill its batch ([`BATCH_DELAY`]).
    pub batch_delay: Duration,
}

/// Why the exporter could not be built (a configuration the app should have refused).
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `opentelemetry-otlp` refused the settings.
    #[error("the OTLP exporter cannot be built from [traces]: {0}")]
    Build(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The span sink: converts and queues on the request path, never blocking.
#[derive(Debug)]
pub struct OtlpSpans {
    tx: mpsc::Sender<SpanData>,
    close: watch::Sender<bool>,
    spans_total: Family<OutcomeLabel, Counter>,
    scope: InstrumentationScope,
}

/// The export task; [`OtlpTask::finish`] sends what is queued and ends it.
#[derive(Debug)]
pub struct OtlpTask {
    handle: tokio::task::JoinHandle<()>,
}

impl OtlpTask {
    /// Waits (at most `grace`) for the spans queued so far to be sent.
    pub async fn finish(self, spans: &OtlpSpans, grace: Duration) {
        let _ = spans.close.send(true);
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            tracing::warn!(
                "trace export did not finish within the shutdown grace; the spans still queued are lost"
            );
        }
    }
}

impl OtlpSpans {
    /// Builds the exporter and starts the export task on the current runtime.
    pub fn start(settings: OtlpSettings) -> Result<(Arc<Self>, OtlpTask), OtlpError> {
        // No redirects: a collector's API key must not follow one to another host (reqwest
        // drops only `Authorization` and cookies on the way).
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OtlpError::Build(e.to_string()))?;
        let headers: HashMap<String, String> = settings
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().clone()))
            .collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.url.clone())
            .with_timeout(settings.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| OtlpError::Build(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .with_attributes([
                    KeyValue::new("service.version", settings.service_version.clone()),
                    KeyValue::new("service.instance.id", settings.instance_id.clone()),
                ])
                .build(),
        );
        let (tx, rx) = mpsc::channel(settings.max_queue.max(1));
        let (close, closed) = watch::channel(false);
        // Every outcome is there from the start, at 0: an alert on `increase()` sees the first
        // lost span.
        let spans_total = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["exported", "dropped", "failed"] {
            let _ = spans_total.get_or_create(&OutcomeLabel { outcome });
        }
        let spans = Arc::new(Self {
            tx,
            close,
            spans_total,
            scope: InstrumentationScope::builder("gatehouse")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
        let handle = tokio::spawn(export_loop(
            exporter,
            rx,
            closed,
            spans.spans_total.clone(),
            settings.url,
            settings.batch_delay,
        ));
        Ok((spans, OtlpTask { handle }))
    }

    /// Registers `gatehouse_trace_spans_total{outcome}` (exported, dropped, failed).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "trace_spans",
            "Spans by outcome: exported to the collector, dropped because the queue was full, or \
             failed (the collector refused them or could not be reached)",
            self.spans_total.clone(),
        );
    }

    /// Spans exported, dropped and failed so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let n = |outcome| {
            self.spans_total
                .get_or_create(&OutcomeLabel { outcome })
                .get()
        };
        (n("exported"), n("dropped"), n("failed"))
    }
}

impl SpanSink for OtlpSpans {
    fn finished(&self, record: &AuditRecord, ids: &SpanIds) {
        if !ids.sampled {
            return;
        }
        // A place in the queue first: with a full queue (a collector that is down) a request
        // builds no span for nothing.
        match self.tx.try_reserve() {
            Ok(permit) => permit.send(span_data(record, ids, self.scope.clone())),
            Err(_) => {
                self.spans_total
                    .get_or_create(&OutcomeLabel { outcome: "dropped" })
                    .inc();
            }
        }
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    mut closed: watch::Receiver<bool>,
    spans_total: Family<OutcomeLabel, Counter>,
    url: String,
    batch_delay: Duration,
) {
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    let mut closing = false;
    loop {
        let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_MAX);
        if closing {
            // The queue takes nothing more; what it holds goes out, batch by batch.
            while batch.len() < BATCH_MAX {
                match rx.recv().await {
                    Some(s) => batch.push(s),
                    None => break,
                }
            }
        } else {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => return,
                },
                // Told to finish, or the sink is gone without saying so: finish either way.
                _ = closed.changed() => {
                    closing = true;
                    rx.close();
                    continue;
                }
            }
            // Wait a little for the batch to fill, unless it fills first.
            let deadline = tokio::time::Instant::now() + batch_delay;
            while batch.len() < BATCH_MAX {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = closed.changed() => {
                        closing = true;
                        rx.close();
                        break;
                    }
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                spans_total
                    .get_or_create(&OutcomeLabel {
                        outcome: "exported",
                    })
                    .inc_by(n);
            }
            Err(e) => {
                spans_total
                    .get_or_create(&OutcomeLabel { outcome: "failed" })
                    .inc_by(n);
                // Once a minute at most: a collector that is down must not flood the log.
                let now = tokio::time::Instant::now();
                if last_error_logged
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    last_error_logged = Some(now);
                    tracing::warn!(collector = %url, error = %e, spans = n, "trace export failed; these spans are lost");
                }
            }
        }
    }
}

/// The methods OpenTelemetry's HTTP conventions name as they are.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn system_time(t: gatehouse_core::UnixTime) -> SystemTime {
    let nanos = t.as_nanos();
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    } else {
        UNIX_EPOCH
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The span an audited event is: named as OpenTelemetry's HTTP conventions name server spans
/// (`GET`; `forward_auth GET` for a front door that only asks), with the audit record's facts
/// as attributes.
fn span_data(r: &AuditRecord, ids: &SpanIds, scope: InstrumentationScope) -> SpanData {
    let start = system_time(r.time);
    let end = Duration::try_from_secs_f64(r.duration_ms / 1000.0)
        .ok()
        .and_then(|d| start.checked_add(d))
        .unwrap_or(start);
    let mut attributes = Vec::with_capacity(24);
    let mut put = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v {
            attributes.push(KeyValue::new(k, v.to_owned()));
        }
    };
    put("gatehouse.event", Some(r.event));
    put("server.address", r.host.as_deref());
    put("url.path", r.path.as_deref());
    put("client.address", r.source.as_deref());
    put("gatehouse.request_id", r.request_id.as_deref());
    put("gatehouse.action", r.action);
    put("gatehouse.repository", r.repo.as_deref());
    put("gatehouse.decision", r.decision);
    put("gatehouse.policy", r.policy.as_deref());
    put("gatehouse.reason", r.reason.as_deref());
    put("gatehouse.authn_error", r.authn_error);
    put("gatehouse.outcome", r.outcome);
    if let Some(p) = &r.principal {
        let p = p.principal();
        put("enduser.id", Some(&p.username));
        put("gatehouse.principal.kind", Some(p.kind.as_str()));
        put("gatehouse.principal.issuer", Some(&p.issuer));
    }
    if let Some(h) = &r.hook {
        put("gatehouse.hook", Some(&h.hook));
        put("gatehouse.hook.event", Some(&h.event));
    }
    // A method OpenTelemetry does not know is `_OTHER` (and the span `HTTP`), its text kept
    // apart: a client cannot make up span names.
    let verb = match r.method.as_deref() {
        Some(m) if KNOWN_METHODS.contains(&m) => {
            put("http.request.method", Some(m));
            m
        }
        Some(m) => {
            put("http.request.method", Some("_OTHER"));
            put("http.request.method_original", Some(m));
            "HTTP"
        }
        None => "HTTP",
    };
    let name: Cow<'static, str> = match r.event {
        "request" => Cow::Owned(verb.to_owned()),
        event => Cow::Owned(format!("{event} {verb}")),
    };
    if let Some(refs) = &r.refs {
        let denied = refs.iter().filter(|x| x.decision == "deny").count();
        attributes.push(KeyValue::new("gatehouse.refs", count(refs.len() as u64)));
        attributes.push(KeyValue::new("gatehouse.refs_denied", count(denied as u64)));
    }
    if let Some(status) = r.status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    // What Gatehouse itself received and sent: a front door that only asks sees neither body.
    if r.event == "request" {
        attributes.push(KeyValue::new("http.request.body.size", count(r.bytes_in)));
        attributes.push(KeyValue::new("http.response.body.size", count(r.bytes_out)));
    }
    // OpenTelemetry's HTTP server convention: a 5xx, or no answer at all, is an error, its type
    // the reason code; a refusal (4xx) is the gateway doing its job.
    let status = match r.status {
        Some(s) if s < 500 => Status::Unset,
        status => {
            let kind = match (status, r.reason.as_deref()) {
                (Some(_), Some(reason)) => reason.to_owned(),
                (Some(s), None) => s.to_string(),
                (None, _) => "aborted".to_owned(),
            };
            attributes.push(KeyValue::new("error.type", kind));
            Status::error("")
        }
    };
    let parent = ids.parent_span_id.map(SpanId::from_bytes);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(ids.trace_id),
            SpanId::from_bytes(ids.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent.is_some(),
        span_kind: SpanKind::Server,
        name,
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope,
    }
}

#[cfg(test)]
mod tests;
