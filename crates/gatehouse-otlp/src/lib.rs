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
use std::sync::atomic::{AtomicU64, Ordering};
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
/// How long a span waits for others to fill its batch.
const BATCH_DELAY: Duration = Duration::from_secs(1);

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

#[derive(Debug, Default)]
struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The span sink: converts and queues on the request path, never blocking.
#[derive(Debug)]
pub struct OtlpSpans {
    tx: mpsc::Sender<SpanData>,
    close: watch::Sender<bool>,
    stats: Arc<Stats>,
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
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
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
        let stats = Arc::new(Stats::default());
        // Every outcome is there from the start, at 0: an alert on `increase()` sees the first
        // lost span.
        let spans_total = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["exported", "dropped", "failed"] {
            let _ = spans_total.get_or_create(&OutcomeLabel { outcome });
        }
        let spans = Arc::new(Self {
            tx,
            close,
            stats: stats.clone(),
            spans_total,
            scope: InstrumentationScope::builder("gatehouse")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
        let handle = tokio::spawn(export_loop(
            exporter,
            rx,
            closed,
            stats,
            spans.spans_total.clone(),
            settings.url,
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
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
            self.stats.failed.load(Ordering::Relaxed),
        )
    }
}

impl SpanSink for OtlpSpans {
    fn finished(&self, record: &AuditRecord, ids: &SpanIds) {
        if !ids.sampled {
            return;
        }
        let span = span_data(record, ids, self.scope.clone());
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.spans_total
                .get_or_create(&OutcomeLabel { outcome: "dropped" })
                .inc();
        }
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    mut closed: watch::Receiver<bool>,
    stats: Arc<Stats>,
    spans_total: Family<OutcomeLabel, Counter>,
    url: String,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_MAX);
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    loop {
        let closing = *closed.borrow();
        if closing {
            // Whatever is queued goes out now.
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
        } else if batch.is_empty() {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => return,
                },
                _ = closed.changed() => continue,
            }
            // Wait a little for the batch to fill, unless it fills first.
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH_MAX {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = closed.changed() => break,
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_MAX));
        match exporter.export(sent).await {
            Ok(()) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
                spans_total
                    .get_or_create(&OutcomeLabel {
                        outcome: "exported",
                    })
                    .inc_by(n);
            }
            Err(e) => {
                stats.failed.fetch_add(n, Ordering::Relaxed);
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

fn system_time(t: gatehouse_core::UnixTime) -> SystemTime {
    let nanos = t.as_nanos();
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    } else {
        UNIX_EPOCH
    }
}

/// The span an audited event is: named as OpenTelemetry's HTTP conventions name server spans
/// (`GET`, or the event for what is not a request), with the audit record's facts as attributes.
fn span_data(r: &AuditRecord, ids: &SpanIds, scope: InstrumentationScope) -> SpanData {
    let start = system_time(r.time);
    let end = start + Duration::from_secs_f64((r.duration_ms / 1000.0).max(0.0));
    let mut attributes = Vec::with_capacity(20);
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            attributes.push(KeyValue::new(k, v));
        }
    };
    put("gatehouse.event", Some(r.event.to_owned()));
    put(
        "http.request.method",
        r.method.as_deref().map(str::to_owned),
    );
    put("server.address", r.host.as_deref().map(str::to_owned));
    put("url.path", r.path.clone());
    put("client.address", r.source.as_deref().map(str::to_owned));
    put(
        "gatehouse.request_id",
        r.request_id.as_deref().map(str::to_owned),
    );
    put("gatehouse.action", r.action.map(str::to_owned));
    put("gatehouse.repository", r.repo.clone());
    put("gatehouse.decision", r.decision.map(str::to_owned));
    put("gatehouse.policy", r.policy.as_deref().map(str::to_owned));
    put("gatehouse.reason", r.reason.as_deref().map(str::to_owned));
    put("gatehouse.authn_error", r.authn_error.map(str::to_owned));
    put("gatehouse.outcome", r.outcome.map(str::to_owned));
    if let Some(p) = &r.principal {
        let p = p.principal();
        put("enduser.id", Some(p.username.clone()));
        put("gatehouse.principal.kind", Some(p.kind.as_str().to_owned()));
        put("gatehouse.principal.issuer", Some(p.issuer.clone()));
    }
    if let Some(refs) = &r.refs {
        let denied = refs.iter().filter(|x| x.decision == "deny").count();
        attributes.push(KeyValue::new("gatehouse.refs", refs.len() as i64));
        attributes.push(KeyValue::new("gatehouse.refs_denied", denied as i64));
    }
    if let Some(h) = &r.hook {
        attributes.push(KeyValue::new("gatehouse.hook", h.hook.clone()));
        attributes.push(KeyValue::new("gatehouse.hook.event", h.event.clone()));
    }
    if let Some(status) = r.status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    attributes.push(KeyValue::new("http.request.body.size", r.bytes_in as i64));
    attributes.push(KeyValue::new("http.response.body.size", r.bytes_out as i64));
    // OpenTelemetry's HTTP server convention: a 5xx, or no answer at all, is an error; a
    // refusal (4xx) is the gateway doing its job.
    let status = match (r.status, r.decision) {
        (Some(s), _) if s >= 500 => Status::error(format!("status {s}")),
        (None, _) => Status::error("ended without a response"),
        (_, Some("error")) => Status::error(
            r.reason
                .as_deref()
                .map_or_else(|| "error".to_owned(), str::to_owned),
        ),
        _ => Status::Unset,
    };
    let name: Cow<'static, str> = match (r.event, &r.method) {
        ("request", Some(m)) => Cow::Owned(m.to_string()),
        (event, Some(m)) => Cow::Owned(format!("{event} {m}")),
        (event, None) => Cow::Borrowed(event),
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
