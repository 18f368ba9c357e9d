//! `[traces]`: every HTTP request and front-door decision exported as an OpenTelemetry span over
//! OTLP/HTTP, when the binary is built with the `otlp` feature. A binary built without it refuses
//! a config that asks for traces rather than silently sending none.

use std::sync::Arc;
#[cfg(feature = "otlp")]
use std::time::Duration;

use anyhow::Result;
use gatehouse_config::Config;

/// The running exporter, or nothing.
#[derive(Debug, Default)]
pub(crate) struct Traces {
    #[cfg(feature = "otlp")]
    running: Option<(Arc<gatehouse_otlp::OtlpSpans>, gatehouse_otlp::OtlpTask)>,
}

/// A `[traces]` header's value, read from its file or variable: a value that cannot be sent as
/// a header is refused, naming the key and never the value (the exporter would drop it silently,
/// and every export fail).
pub(crate) fn header_value(
    name: &str,
    src: &gatehouse_config::SecretSource,
) -> Result<gatehouse_core::Redacted<String>> {
    let what = format!("traces.headers.{name}");
    let v = gatehouse_config::read_secret(&what, src)?;
    let v = v.expose().trim();
    if v.is_empty() || http::HeaderValue::from_str(v).is_err() {
        anyhow::bail!(
            "{what}: the value read is not a header value (empty, or a line break or other control character inside)"
        );
    }
    Ok(gatehouse_core::Redacted::new(v.to_owned()))
}

/// Whether this binary can export traces.
pub(crate) const BUILT_WITH_OTLP: bool = cfg!(feature = "otlp");

/// What to say when `[traces]` is set and this binary cannot honour it.
pub(crate) fn unsupported() -> &'static str {
    "[traces] asks for OTLP trace export, but this gatehouse was built without the `otlp` feature: \
     build it with `cargo build --release --features otlp`, or remove [traces]"
}

impl Traces {
    /// Starts the exporter `[traces]` asks for (on the current runtime).
    pub(crate) fn start(cfg: &Config) -> Result<Self> {
        let Some(t) = &cfg.traces else {
            return Ok(Self::default());
        };
        #[cfg(feature = "otlp")]
        {
            let mut headers = Vec::new();
            for (name, src) in &t.headers {
                headers.push((name.clone(), header_value(name, src)?));
            }
            let settings = gatehouse_otlp::OtlpSettings {
                url: t.traces_url(),
                service_name: t.service_name.clone(),
                service_version: crate::LONG_VERSION.to_owned(),
                instance_id: crate::store::node_name(&cfg.audit.file),
                headers,
                timeout: t.timeout.0,
                max_queue: t.max_queue,
                batch_delay: gatehouse_otlp::BATCH_DELAY,
            };
            let running = gatehouse_otlp::OtlpSpans::start(settings)?;
            tracing::info!(collector = %t.traces_url(), sample_ratio = t.sample_ratio, "exporting spans over OTLP");
            Ok(Self {
                running: Some(running),
            })
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = t;
            anyhow::bail!(unsupported())
        }
    }

    /// The sink the gateway hands finished requests to.
    pub(crate) fn sink(&self) -> Option<Arc<dyn gatehouse_audit::SpanSink>> {
        #[cfg(feature = "otlp")]
        if let Some((s, _)) = &self.running {
            return Some(s.clone() as Arc<dyn gatehouse_audit::SpanSink>);
        }
        None
    }

    /// Registers the exporter's metrics.
    pub(crate) fn register(&self, _registry: &mut prometheus_client::registry::Registry) {
        #[cfg(feature = "otlp")]
        if let Some((s, _)) = &self.running {
            s.register(_registry);
        }
    }

    /// Sends what is queued (at most `grace`), at shutdown.
    pub(crate) async fn finish(self, _grace: std::time::Duration) {
        #[cfg(feature = "otlp")]
        if let Some((s, task)) = self.running {
            task.finish(&s, _grace.max(Duration::from_secs(1))).await;
        }
    }
}
