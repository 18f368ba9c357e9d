//! Envoy's ext_authz, HTTP variant: `http_service` with `path_prefix: /.gatehouse/ext_authz`.
//! Envoy asks with the original request's method, its path and query after the prefix, its
//! `Host`, the headers its `allowed_headers` let through and, with `with_request_body`, the
//! start of its body (`x-envoy-auth-partial-body: true` when cut). Gatehouse decides it through
//! the same front-door decision as forward auth and the gRPC service, and answers:
//! - `200` with the identity headers (list them in `allowed_upstream_headers`) and
//!   `x-envoy-auth-headers-to-remove` naming what Envoy removes upstream;
//! - `401` or `403` (or `400`, `503`) with the RFC 9457 problem document and the challenge, which
//!   Envoy passes to the client.
//!
//! Only the proxies in `ext_authz.trusted_proxies` may ask. The HTTP variant carries no mTLS
//! peer: workloads are named by their SPIFFE id through the gRPC service only.

use gatehouse_audit::AuditRecord;
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::described::{Answer, BodyPrefix, Described};
use crate::proxy::{Admitted, Gateway, read_limited};
use crate::respond::{ClientKind, Refusal};

/// The path prefix Envoy's `http_service.path_prefix` names.
pub(crate) const PREFIX: &str = "/.gatehouse/ext_authz";

/// The most of a forwarded body Gatehouse reads (Envoy's `max_request_bytes` should not be
/// larger).
pub(crate) const MAX_FORWARDED_BODY: usize = 1024 * 1024;

/// The header that tells Envoy what to remove from the upstream request.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Envoy's HTTP ext_authz client takes any 5xx answer for its own failure: with
/// `failure_mode_allow` it would let the request through, headers unremoved; without it the
/// client gets a bare 403. So what Gatehouse cannot decide now (the audit log, the forge's API,
/// the IdP's keys unavailable) is answered 403, its reason code kept.
pub(crate) fn no_server_errors((r, kind): (Refusal, ClientKind)) -> (Refusal, ClientKind) {
    if !r.status().is_server_error() {
        return (r, kind);
    }
    (
        Refusal::Forbidden {
            reason: r.code(),
            what: "a request Gatehouse cannot decide right now (try again later)".into(),
        },
        kind,
    )
}

impl Gateway {
    /// `[ext_authz]`, when on and `peer` is one of its trusted proxies; else the refusal.
    pub(crate) fn ext_authz_for(
        &self,
        peer: std::net::IpAddr,
    ) -> Result<&gatehouse_config::ExtAuthzConfig, Refusal> {
        let Some(ea) = &self.settings.ext_authz else {
            return Err(Refusal::BadRequest {
                code: "not_found",
                detail: "ext_authz is not configured on this gateway ([ext_authz])".into(),
            });
        };
        if !ea.trusted_proxies.iter().any(|n| n.contains(peer)) {
            return Err(Refusal::Forbidden {
                reason: "untrusted_front_proxy".into(),
                what: "ext_authz from an address not in ext_authz.trusted_proxies".into(),
            });
        }
        Ok(ea)
    }

    /// Decides the request Envoy describes.
    pub(crate) async fn ext_authz_http(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        rec.event = "ext_authz";
        let refuse = |rec: &mut AuditRecord, r: Refusal| {
            rec.decision = Some("deny");
            rec.reason = Some(r.code());
            (r, ClientKind::Api)
        };
        let ea = self.ext_authz_for(adm.peer).map_err(|r| refuse(rec, r))?;
        let trusted = &ea.trusted_proxies;
        let (parts, body) = req.into_parts();
        let raw = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
        let Some(original) = raw.strip_prefix(PREFIX).filter(|o| o.starts_with('/')) else {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_original_uri",
                    detail: "the path after /.gatehouse/ext_authz is not the original path".into(),
                },
            ));
        };
        let Ok(uri) = original.parse::<http::Uri>() else {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_original_uri",
                    detail: "the original path is not a URI path".into(),
                },
            ));
        };
        let h: &HeaderMap = &parts.headers;
        // Envoy sends a body only with `with_request_body`; without it, the length is 0 and
        // nothing was forwarded.
        let forwarded = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
        let bytes = if forwarded {
            read_limited(body, MAX_FORWARDED_BODY)
                .await
                .map_err(|r| refuse(rec, r))?
        } else {
            bytes::Bytes::new()
        };
        let described = Described {
            method: parts.method.as_str().to_ascii_uppercase(),
            uri,
            host: adm.host.to_string(),
            headers: h,
            client: crate::forwarded::client_ip(adm.peer, h, trusted),
            // Envoy sends this request's own length, not the client's: only its mark and
            // `max_request_bytes` say whether the body is whole (and the mark reaches Gatehouse
            // only when `allowed_headers` lets it through: without it, the body is a prefix).
            body: forwarded.then_some(BodyPrefix {
                bytes: &bytes,
                complete: crate::described::forwarded_body_complete(
                    bytes.len(),
                    h,
                    false,
                    ea.max_request_bytes.0,
                ),
            }),
            workload: None,
            ref_moves_in_body: ea.ref_moves_in_body,
            sign_in_redirect: true,
        };
        match self.decide_described(described, adm, rec).await? {
            Answer::Respond(r) => Ok(r),
            Answer::Allow { set } => {
                let remove = self.removed_upstream(&set);
                let mut resp = Response::new(full(bytes::Bytes::new()));
                *resp.status_mut() = StatusCode::OK;
                *resp.headers_mut() = set;
                let names: Vec<&str> = remove.iter().map(|n| n.as_str()).collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
                    resp.headers_mut().insert(HEADERS_TO_REMOVE, v);
                }
                Ok(resp)
            }
        }
    }
}
