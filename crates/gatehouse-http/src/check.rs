//! The front-door decision for a caller that is not an HTTP request to this server: Envoy's
//! gRPC `Authorization/Check` (the `gatehouse-extauthz` crate). [`Gateway::check`] admits the
//! question as the gateway admits a request (a request id, an audit slot reserved before any
//! work, the in-flight gauge), decides it through `decide_described` and writes its audit record
//! (`"event":"ext_authz"`) and metrics, whatever the outcome.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use gatehouse_audit::AuditRecord;
use gatehouse_core::{Principal, PrincipalKind};
use http::header::{HeaderMap, HeaderName};
use http_body_util::BodyExt as _;

use crate::body::BodyEnd;
use crate::described::{Answer, BodyPrefix, Described, bare_host, forwarded_body_complete};
use crate::forwarded::ip_text;
use crate::proxy::{Admitted, Gateway, Pending};
use crate::respond::{ClientKind, Refusal};

/// A request an Envoy proxy asks about, as its `CheckRequest` describes it.
#[derive(Debug, Clone)]
pub struct CheckInput {
    /// The address the question came from (an Envoy proxy, which must be trusted).
    pub peer: IpAddr,
    /// The client's address as Envoy saw it (`source.address`); the peer when absent.
    pub client: Option<IpAddr>,
    /// The method.
    pub method: String,
    /// The request target: path and query, as the client sent it.
    pub path: String,
    /// The `Host` or `:authority`.
    pub host: String,
    /// The client's headers (pseudo-headers left out).
    pub headers: HeaderMap,
    /// The start of the body, when Envoy forwarded it (`with_request_body`, as bytes); whether
    /// it is all of it is read from `x-envoy-auth-partial-body` and the client's
    /// `Content-Length` in `headers` (see `described::forwarded_body_complete`).
    pub body: Option<bytes::Bytes>,
    /// The SPIFFE id (URI SAN) of the client's verified mTLS certificate (`source.principal`).
    pub spiffe_id: Option<String>,
    /// Envoy's request id (`x-request-id`), kept as the audit record's.
    pub request_id: Option<String>,
}

/// What Envoy is told.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// Let the request through.
    Allow {
        /// Headers to set on the upstream request (the identity headers), replacing any.
        set: HeaderMap,
        /// Header names to remove from it.
        remove: Vec<HeaderName>,
    },
    /// Answer the client with this and forward nothing.
    Deny {
        /// The HTTP status for the client.
        status: u16,
        /// The headers for the client (the challenge, the reason).
        headers: HeaderMap,
        /// The body (an RFC 9457 problem document, or a line for git).
        body: bytes::Bytes,
        /// Whether the policy (or a refusal of the request itself) said no, rather than the
        /// caller being unknown: gRPC `PERMISSION_DENIED` against `UNAUTHENTICATED`.
        unauthenticated: bool,
    },
}

impl Gateway {
    /// The principal of a mesh workload, by the SPIFFE id of its certificate.
    fn workload(&self, spiffe_id: &str) -> Option<Arc<Principal>> {
        let ea = self.settings.ext_authz.as_ref()?;
        let w = ea.workloads.iter().find(|w| w.spiffe_id == spiffe_id)?;
        let domain = spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default();
        let mut groups = w.groups.clone();
        groups.sort();
        groups.dedup();
        Some(Arc::new(Principal {
            kind: PrincipalKind::Service,
            issuer: format!("spiffe://{domain}"),
            subject: spiffe_id.to_owned(),
            username: w.username.clone(),
            display_name: None,
            email: None,
            groups,
            token_id: None,
            expires_at: None,
            environment: None,
            workload: None,
            derived_from: Vec::new(),
        }))
    }

    /// Decides a request Envoy asks about, audits it and says what Envoy should do.
    pub async fn check(&self, input: CheckInput) -> CheckOutcome {
        let started = tokio::time::Instant::now();
        // Kept by the gateway's own rule for a client's `X-Request-Id`.
        let request_id = crate::forwarded::own_request_id(input.request_id.as_deref());
        let client = input.client.unwrap_or(input.peer);
        let client_text: Arc<str> = ip_text(client).into();
        let host: Arc<str> = bare_host(&input.host).into();
        // Envoy sends the trace context of the request it asks about (when it traces): the
        // Check is a span of that trace.
        let trace = crate::forwarded::trace_context(&input.headers, self.sample_ratio, || {
            self.follows_sampling_of(input.peer)
        });
        let raw_uri = input
            .path
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let rec = AuditRecord {
            time: self.clock.now(),
            event: "ext_authz",
            request_id: Some(request_id.clone()),
            trace_id: Some(trace.trace_id_hex()),
            source: Some(client_text.clone()),
            method: Some(input.method.clone().into()),
            host: Some(host.clone()),
            ..AuditRecord::default()
        };
        let slot = match self.audit().reserve() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, request_id = %request_id, "refusing ext_authz check: audit log unavailable");
                self.unaudited_span(rec, raw_uri.path(), trace, started);
                return denial(&Refusal::AuditUnavailable, ClientKind::Api, &request_id).await;
            }
        };
        let mut pending = Pending {
            slot: Some(slot),
            rec,
            raw_uri,
            started,
            bytes_in: Arc::new(AtomicU64::new(0)),
            action: "none",
            in_flight: Some(self.metrics().in_flight()),
            metrics: self.metrics().clone(),
            span: self.span_for(trace),
        };
        let adm = Admitted {
            request_id: request_id.clone(),
            trace,
            client,
            peer: input.peer,
            client_text: client_text.clone(),
            peer_text: ip_text(input.peer).into(),
            host: host.clone(),
            port: None,
            websocket: None,
            peer_names: None,
        };
        let outcome = self.check_phases(&input, &adm, &mut pending.rec).await;
        let rec = &mut pending.rec;
        if let Some(a) = rec.action {
            pending.action = a;
        }
        let (outcome, status) = match outcome {
            Ok(Answer::Allow { set }) => {
                let remove = self.removed_upstream(&set);
                (CheckOutcome::Allow { set, remove }, 200)
            }
            Ok(Answer::Respond(resp)) => {
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (
                    CheckOutcome::Deny {
                        status: parts.status.as_u16(),
                        headers: parts.headers,
                        body,
                        unauthenticated: true,
                    },
                    parts.status.as_u16(),
                )
            }
            Err((refusal, kind)) => {
                if rec.decision.is_none() || !matches!(refusal, Refusal::Forbidden { .. }) {
                    rec.decision = Some(match refusal {
                        Refusal::BadRequest { .. }
                        | Refusal::Unauthenticated { .. }
                        | Refusal::Forbidden { .. }
                        | Refusal::Undecidable(_)
                        | Refusal::PayloadTooLarge => "deny",
                        _ => "error",
                    });
                    rec.reason = Some(refusal.code());
                }
                let status = refusal.status().as_u16();
                (denial(&refusal, kind, &request_id).await, status)
            }
        };
        rec.status = Some(status);
        if let Some(done) = pending.take(status) {
            done.finish(0, 0, BodyEnd::Complete);
        }
        outcome
    }

    async fn check_phases(
        &self,
        input: &CheckInput,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Answer, (Refusal, ClientKind)> {
        let refuse = |rec: &mut AuditRecord, r: Refusal| {
            rec.decision = Some("deny");
            rec.reason = Some(r.code());
            (r, ClientKind::Api)
        };
        let ea = self.ext_authz_for(adm.peer).map_err(|r| refuse(rec, r))?;
        let Ok(uri) = input.path.parse::<http::Uri>() else {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_original_uri",
                    detail: "the request's path is not a URI path".into(),
                },
            ));
        };
        if uri.scheme().is_some() || uri.authority().is_some() || !input.path.starts_with('/') {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_original_uri",
                    detail: "the request's path must be a path and query".into(),
                },
            ));
        }
        if input.method.is_empty() || !input.method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_method",
                    detail: "the request's method is not a method".into(),
                },
            ));
        }
        // A SPIFFE id no workload is configured for names no one: the request must then carry
        // its own credential.
        let workload = input.spiffe_id.as_deref().and_then(|id| self.workload(id));
        let described = Described {
            method: input.method.to_ascii_uppercase(),
            uri,
            host: adm.host.to_string(),
            headers: &input.headers,
            client: adm.client,
            body: input.body.as_ref().map(|b| BodyPrefix {
                bytes: b,
                complete: forwarded_body_complete(
                    b.len(),
                    &input.headers,
                    true,
                    ea.max_request_bytes.0,
                ),
            }),
            workload,
            ref_moves_in_body: ea.ref_moves_in_body,
            sign_in_redirect: true,
        };
        self.decide_described(described, adm, rec).await
    }
}

/// The refusal rendered as the gateway renders it, for Envoy to send the client.
async fn denial(r: &Refusal, kind: ClientKind, request_id: &str) -> CheckOutcome {
    let (parts, body) = r.to_response(kind, request_id).into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    CheckOutcome::Deny {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        unauthenticated: matches!(r, Refusal::Unauthenticated { .. }),
    }
}
