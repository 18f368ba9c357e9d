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

use std::net::IpAddr;
use std::sync::Arc;

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
use gatehouse_http::{CheckInput, CheckOutcome, Gateway};
use http::header::{HeaderMap, HeaderName};

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

/// The `Authorization` service over a gateway.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    gateway: Arc<Gateway>,
}

impl ExtAuthz {
    /// The service deciding through `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
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
        let Some(peer) = request.remote_addr().map(|a| a.ip()) else {
            return Err(tonic::Status::internal("the caller's address is unknown"));
        };
        let input = match check_input(request.get_ref(), peer) {
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

/// Serves the `Authorization` service on `listener` (plain HTTP/2) until `shutdown` completes.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ExtAuthz::new(gateway).server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests;
