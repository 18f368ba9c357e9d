//! Envoy's (and Istio's) external authorization over gRPC: the
//! `envoy.service.auth.v3.Authorization/Check` service. It owns the mapping between Envoy's
//! contract and Gatehouse's front-door decision, and nothing else: a `CheckRequest`'s attributes
//! (method, path, host, headers, the client's address, the mTLS peer's SPIFFE id in
//! `source.principal`, the body prefix of `with_request_body`) become a
//! [`gatehouse_http::CheckInput`]; the gateway decides, audits and counts it exactly as a request
//! through the gateway or forward auth; its [`gatehouse_http::CheckOutcome`] becomes a
//! `CheckResponse`: `OK` with the identity headers to set and the names to remove upstream, or
//! `PERMISSION_DENIED` / `UNAUTHENTICATED` with the HTTP status, headers (the challenge) and RFC
//! 9457 body Envoy sends the client.
//!
//! It must not decide anything, read configuration or know the policy: a request it cannot map
//! (a path that is not one, a body that is not bytes) is refused by the gateway's decision like
//! any other bad request.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use gatehouse_http::{CheckInput, CheckOutcome, Gateway};
use http::header::{HeaderMap, HeaderName};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

pub use envoy_types;

/// gRPC status codes Envoy reads (`google.rpc.Code`).
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
const INVALID_ARGUMENT: i32 = 3;

/// The header Envoy adds when it forwarded only the start of the body
/// (`allow_partial_message`).
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// Why a `CheckRequest` could not be read as a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// Envoy sent no `attributes.request.http`.
    #[error("the CheckRequest describes no HTTP request (attributes.request.http)")]
    NoHttpRequest,
    /// A header name that is not one.
    #[error("a request header name that is not a header name")]
    BadHeaderName,
    /// A header value that cannot be a header value.
    #[error("a request header value that is not a header value")]
    BadHeaderValue,
}

/// The `Authorization` service over a gateway, for one connection.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    gateway: Arc<Gateway>,
    /// The connection's peer: the front proxy asking.
    peer: IpAddr,
}

impl ExtAuthz {
    /// The service deciding through `gateway` for the connection from `peer`.
    pub fn new(gateway: Arc<Gateway>, peer: IpAddr) -> Self {
        Self { gateway, peer }
    }

    /// The tonic server for it.
    pub fn server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

/// Reads a `CheckRequest` as the request it describes, asked about from `peer`.
pub fn check_input(req: &CheckRequest, peer: IpAddr) -> Result<CheckInput, MapError> {
    let attrs = req.attributes.as_ref();
    let http = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or(MapError::NoHttpRequest)?;
    let source = attrs.and_then(|a| a.source.as_ref());
    let client = source
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            Address::SocketAddress(s) => s.address.parse::<IpAddr>().ok(),
            _ => None,
        });
    let spiffe_id = source
        .map(|s| s.principal.as_str())
        .filter(|p| p.starts_with("spiffe://"))
        .map(str::to_owned);

    // `header_map` (raw, repeats kept) when Envoy encodes raw headers, else `headers`
    // (repeats merged). Pseudo-headers are described by the fields beside them.
    let mut headers = HeaderMap::new();
    let mut add = |k: &str, v: &[u8]| -> Result<(), MapError> {
        if k.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| MapError::BadHeaderName)?;
        let value = http::HeaderValue::from_bytes(v).map_err(|_| MapError::BadHeaderValue)?;
        headers.append(name, value);
        Ok(())
    };
    match &http.header_map {
        Some(m) if !m.headers.is_empty() => {
            for h in &m.headers {
                let v = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, v)?;
            }
        }
        _ => {
            for (k, v) in &http.headers {
                add(k, v.as_bytes())?;
            }
        }
    }
    // The body Envoy forwarded, as bytes (`pack_as_bytes`). As text, Envoy replaced what is
    // not UTF-8: not the body, so not known. Envoy marks a buffered body with
    // `x-envoy-auth-partial-body` (and drops a client's own); without it nothing was buffered,
    // whatever `size` says (0 when the check was sent on the headers alone).
    let buffered = headers.contains_key(PARTIAL_BODY);
    let body = if !http.raw_body.is_empty() {
        Some(bytes::Bytes::copy_from_slice(&http.raw_body))
    } else if !http.body.is_empty() {
        None
    } else if buffered {
        Some(bytes::Bytes::new())
    } else {
        None
    };
    // `id` is Envoy's stream id; the request's id is its `x-request-id`.
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(CheckInput {
        peer,
        client,
        method: http.method.clone(),
        path: http.path.clone(),
        host: http.host.clone(),
        headers,
        body,
        spiffe_id,
        request_id,
    })
}

fn header_options(h: &HeaderMap) -> Vec<HeaderValueOption> {
    h.iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.as_str().to_owned(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..HeaderValueOption::default()
        })
        .collect()
}

/// The `CheckResponse` for an outcome.
pub fn check_response(outcome: CheckOutcome) -> CheckResponse {
    match outcome {
        CheckOutcome::Allow { set, remove, .. } => CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                message: String::new(),
                details: Vec::new(),
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: header_options(&set),
                headers_to_remove: remove.iter().map(|n| n.as_str().to_owned()).collect(),
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: None,
        },
        CheckOutcome::Deny {
            status,
            headers,
            body,
            unauthenticated,
            ..
        } => CheckResponse {
            status: Some(rpc::Status {
                code: if unauthenticated {
                    UNAUTHENTICATED
                } else {
                    PERMISSION_DENIED
                },
                message: headers
                    .get("x-gatehouse-reason")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                details: Vec::new(),
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: header_options(&headers),
                body: String::from_utf8_lossy(&body).into_owned(),
            })),
            dynamic_metadata: None,
        },
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let input = match check_input(request.get_ref(), self.peer) {
            Ok(i) => i,
            Err(e) => {
                // Nothing to decide: Envoy answers the client 403 (its `status_on_error` aside).
                return Ok(tonic::Response::new(CheckResponse {
                    status: Some(rpc::Status {
                        code: INVALID_ARGUMENT,
                        message: e.to_string(),
                        details: Vec::new(),
                    }),
                    ..CheckResponse::default()
                }));
            }
        };
        let outcome = self.gateway.check(input).await;
        Ok(tonic::Response::new(check_response(outcome)))
    }
}

/// How long an idle connection goes between HTTP/2 pings, and how long a ping's answer may take
/// before the connection is closed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest header list a Check request may carry (Envoy sends a handful of gRPC headers; the
/// request's own headers are in the message, not here).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Serves the `Authorization` service on `listener` (plain HTTP/2, as Envoy's gRPC client speaks
/// it) until `shutdown` completes; then each connection is told to go away (HTTP/2 `GOAWAY`)
/// and finishes the Checks it has in flight before `serve` returns.
///
/// Each connection is one task, and so are its Checks: hyper hands every stream to the
/// connection's own [`ConnExecutor`] instead of spawning a task for it, and the connection polls
/// them. Checks that arrive together are decided together, and their answers leave in one write,
/// where a task per stream answered each in a write of its own (the loopback write, which also
/// runs the receiver's TCP stack, was most of a Check's system time).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connections = tokio_util::task::TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u32;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => {
                    accept_errors = 0;
                    x
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin, and never give up (Envoy
                    // would deny every request until a restart); say so at most once a second.
                    accept_errors = accept_errors.saturating_add(1);
                    if accept_errors % 20 == 1 {
                        tracing::warn!(error = %e, failures = accept_errors, "ext_authz: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = ExtAuthz::new(gateway.clone(), peer.ip()).server();
        connections.spawn(serve_conn(stream, service, stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    connections.close();
    connections.wait().await;
}

/// A stream's future, as hyper hands it to an executor.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor of one connection's streams: it queues them for the connection's task.
#[derive(Clone)]
struct ConnExecutor(tokio::sync::mpsc::UnboundedSender<StreamFuture>);

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // A Check that panics ends its own stream (hyper resets it), not the connection's task
        // and every other Check on it, as a task of its own would not have either.
        let fut = std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
            if r.is_err() {
                tracing::error!("ext_authz: a Check panicked; its stream is reset");
            }
        });
        // The receiver lives as long as the connection's task; a stream that arrives after it
        // is gone has no connection to answer on.
        let _ = self.0.send(Box::pin(fut));
    }
}

/// A connection's socket as h2 should see it: one that does not write vectors. h2 chains a DATA
/// frame longer than 256 bytes to its write buffer when the socket writes vectors, and a chained
/// frame goes out in a write of its own; otherwise it copies frames of up to 1 KiB into the
/// buffer. A Check's answer is a DATA frame of several hundred bytes (the identity headers and
/// the signed assertion), so with vectors every answer costs a write (on loopback, that write
/// also runs the receiver's TCP stack, and was most of a Check's system time); without, every
/// answer ready goes out in one.
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    service: AuthorizationServer<ExtAuthz>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut queued) = tokio::sync::mpsc::unbounded_channel();
    let mut builder = hyper::server::conn::http2::Builder::new(ConnExecutor(tx));
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .max_header_list_size(MAX_HEADER_LIST);
    let conn = builder.serve_connection(
        TokioIo::new(Unvectored(stream)),
        TowerToHyperService::new(service),
    );
    let mut conn = std::pin::pin!(conn);
    let mut streams = FuturesUnordered::<StreamFuture>::new();
    let mut conn_done = false;
    let mut closing = false;
    let mut stopped = std::pin::pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    std::future::poll_fn(|cx| {
        if !closing && stopped.as_mut().poll(cx).is_ready() {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        loop {
            if !conn_done && let Poll::Ready(r) = conn.as_mut().poll(cx) {
                conn_done = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "ext_authz: connection ended with an error");
                }
            }
            while let Poll::Ready(Some(f)) = queued.poll_recv(cx) {
                streams.push(f);
            }
            // Every stream that can go on goes on; a stream that answered woke the connection,
            // which then writes every answer ready, once.
            let mut answered = false;
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                answered = true;
            }
            if conn_done && streams.is_empty() {
                return Poll::Ready(());
            }
            if !answered || conn_done {
                return Poll::Pending;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
