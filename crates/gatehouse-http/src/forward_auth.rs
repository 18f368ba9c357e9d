//! `/.gatehouse/auth`: Gatehouse as the authorizer of a front proxy that serves the forge itself
//! (nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`). The proxy asks with the
//! original request's head: its method and URI in `X-Original-Method` / `X-Original-URI` (or
//! `X-Forwarded-Method` / `X-Forwarded-Uri`), its host in `X-Forwarded-Host` (else `Host`), and
//! the client's `Authorization`. Gatehouse classifies, authenticates and decides that request
//! through the decision core, exactly as if it had come through the gateway, and answers:
//! - `200` with the identity headers (`[identity_headers]`) for the proxy to copy upstream;
//! - `401` with the challenge git and browsers expect;
//! - `403` (or `400`) with the reason, also in `X-Gatehouse-Reason` (as every refusal has it).
//!
//! Only the front proxies in `forward_auth.trusted_proxies` may ask: for anyone else the headers
//! describe whatever request they like. The body is not seen, so a push is decided as `git:write`
//! without its per-ref rules, and a web or API route whose refs are named in its body is decided
//! on what its URL says: per-ref rules need Gatehouse in the request path (documented).

use gatehouse_audit::AuditRecord;
use gatehouse_config::ForwardAuthHeaders;
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::described::{Answer, Described, bare_host};
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};

fn first<'h>(h: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .find_map(|n| h.get(*n))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl Gateway {
    /// Decides the request a front proxy describes.
    pub(crate) async fn forward_auth(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        rec.event = "forward_auth";
        let refuse = |rec: &mut AuditRecord, r: Refusal| {
            rec.decision = Some("deny");
            rec.reason = Some(r.code());
            (r, ClientKind::Api)
        };
        let Some(fa) = &self.settings.forward_auth else {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "not_found",
                    detail: "forward auth is not configured on this gateway ([forward_auth])"
                        .into(),
                },
            ));
        };
        // A front proxy is trusted by its address, or by a name in the client certificate it
        // presented (verified against server.tls.client_ca_file).
        let by_address = fa.trusted_proxies.iter().any(|n| n.contains(adm.peer));
        let by_certificate = adm.peer_names.as_deref().is_some_and(|names| {
            names
                .iter()
                .any(|n| fa.trusted_proxy_names.iter().any(|t| t == n))
        });
        if !by_address && !by_certificate {
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: "untrusted_front_proxy".into(),
                    what: "forward auth from an address not in forward_auth.trusted_proxies, without a client certificate named in forward_auth.trusted_proxy_names".into(),
                },
            ));
        }
        let trusted_here;
        let trusted = if by_address {
            &fa.trusted_proxies[..]
        } else {
            // Its X-Forwarded-For is believed as a trusted address's would be.
            trusted_here = [gatehouse_config::IpNet::single(adm.peer)];
            &trusted_here[..]
        };
        let h = req.headers();
        // The front proxy passes the client's headers along: the set it does not write itself
        // could describe another request.
        let (ours, theirs) = match fa.request_headers {
            ForwardAuthHeaders::Original => (
                ["x-original-uri", "x-original-method"],
                ["x-forwarded-uri", "x-forwarded-method"],
            ),
            ForwardAuthHeaders::Forwarded => (
                ["x-forwarded-uri", "x-forwarded-method"],
                ["x-original-uri", "x-original-method"],
            ),
        };
        if theirs.iter().any(|n| h.contains_key(*n))
            || ours.iter().any(|n| h.get_all(*n).iter().count() > 1)
        {
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: "ambiguous_original_request".into(),
                    what: "a request that names its method or URI in more than the front proxy's own headers".into(),
                },
            ));
        }
        let bad = |rec: &mut AuditRecord, code: &'static str, detail: &str| {
            refuse(
                rec,
                Refusal::BadRequest {
                    code,
                    detail: detail.to_owned(),
                },
            )
        };
        let method = first(h, &[ours[1]]).unwrap_or("GET").to_ascii_uppercase();
        let Some(uri) = first(h, &[ours[0]]) else {
            return Err(bad(
                rec,
                "missing_original_uri",
                "the front proxy did not say which request it asks about (X-Original-URI)",
            ));
        };
        let Ok(uri) = uri.parse::<http::Uri>() else {
            return Err(bad(rec, "bad_original_uri", "X-Original-URI is not a URI"));
        };
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(bad(
                rec,
                "bad_original_uri",
                "X-Original-URI names a host: it must be the path and query",
            ));
        }
        let host = first(h, &["x-forwarded-host"])
            .map(bare_host)
            .unwrap_or_else(|| adm.host.to_string());
        // The client's address, as the trusted front proxy reports it (`X-Forwarded-For`, its
        // rightmost entry that is not itself a front proxy).
        let client = crate::forwarded::client_ip(adm.peer, h, trusted);
        let described = Described {
            method,
            uri,
            host,
            headers: h,
            client,
            body: None,
            workload: None,
            ref_moves_in_body: fa.ref_moves_in_body,
            // nginx turns anything but 2xx, 401 and 403 into a 500; Caddy and Traefik pass the
            // answer on.
            sign_in_redirect: fa.request_headers == ForwardAuthHeaders::Forwarded,
        };
        match self.decide_described(described, adm, rec).await? {
            Answer::Respond(r) => Ok(r),
            Answer::Allow { set } => {
                // `set` says `X-Gatehouse-Decision: allow` already.
                let mut resp = Response::new(full(bytes::Bytes::new()));
                *resp.status_mut() = StatusCode::OK;
                *resp.headers_mut() = set;
                Ok(resp)
            }
        }
    }
}
