use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// A STAND-IN for an OpenTelemetry collector's OTLP/HTTP receiver (no collector can be installed
/// from this machine's registries): it takes `POST /v1/traces` with an
/// `application/x-protobuf` `ExportTraceServiceRequest`, decodes it with the OpenTelemetry
/// project's own message definitions (`opentelemetry-proto`), answers as the OTLP/HTTP
/// specification says (200 with an `ExportTraceServiceResponse`, or the status it is told to
/// fail with), and keeps every span it got for the test to read.
pub struct OtlpCollectorStandIn {
    pub port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    fail_with: Arc<AtomicU16>,
}

/// One span as the collector received it, ids as lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind` (2: server).
    pub kind: i32,
    /// `Status.code` (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

impl OtlpCollectorStandIn {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP stand-in");
        let port = listener.local_addr().expect("its address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fail_with = Arc::new(AtomicU16::new(0));
        let (s, r, f) = (spans.clone(), requests.clone(), fail_with.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, r, f) = (s.clone(), r.clone(), f.clone());
                std::thread::spawn(move || serve(conn, &s, &r, &f));
            }
        });
        Self {
            port,
            spans,
            requests,
            fail_with,
        }
    }

    /// The traces URL to configure (`[traces] endpoint`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Answer every export with this status from now on (0: accept again).
    pub fn fail_with(&self, status: u16) {
        self.fail_with.store(status, Ordering::SeqCst);
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The headers of every export request received (names lower-case).
    pub fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a span `pick` accepts.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pick: impl Fn(&ReceivedSpan) -> bool,
    ) -> Option<ReceivedSpan> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pick(s)) {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(
    conn: TcpStream,
    spans: &Mutex<Vec<ReceivedSpan>>,
    requests: &Mutex<Vec<BTreeMap<String, String>>>,
    fail_with: &AtomicU16,
) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = line.trim_end().to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let status = if request_line != "POST /v1/traces HTTP/1.1" {
            404
        } else if headers.get("content-type").map(String::as_str) != Some("application/x-protobuf")
        {
            415
        } else {
            match fail_with.load(Ordering::SeqCst) {
                0 => match ExportTraceServiceRequest::decode(body.as_slice()) {
                    Ok(req) => {
                        let mut got = spans.lock().unwrap();
                        for rs in &req.resource_spans {
                            let resource =
                                map(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
                            for ss in &rs.scope_spans {
                                let scope = ss
                                    .scope
                                    .as_ref()
                                    .map(|s| s.name.clone())
                                    .unwrap_or_default();
                                for sp in &ss.spans {
                                    got.push(ReceivedSpan {
                                        trace_id: hex(&sp.trace_id),
                                        span_id: hex(&sp.span_id),
                                        parent_span_id: hex(&sp.parent_span_id),
                                        name: sp.name.clone(),
                                        kind: sp.kind,
                                        status_code: sp.status.as_ref().map_or(0, |s| s.code),
                                        start_unix_nano: sp.start_time_unix_nano,
                                        end_unix_nano: sp.end_time_unix_nano,
                                        attributes: map(&sp.attributes),
                                        resource: resource.clone(),
                                        scope: scope.clone(),
                                    });
                                }
                            }
                        }
                        200
                    }
                    Err(_) => 400,
                },
                s => s,
            }
        };
        requests.lock().unwrap().push(headers);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            415 => "Unsupported Media Type",
            _ => "Failed",
        };
        // An empty ExportTraceServiceResponse is zero bytes of protobuf.
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
