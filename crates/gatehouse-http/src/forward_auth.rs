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
use gatehouse_authn::AuthnError;
use gatehouse_config::{ForwardAuthHeaders, RefMovesInBody};
use gatehouse_decide::RouteRequest;
use gatehouse_git::{GitService, RequestKind, classify};
use gatehouse_policy::{AuthzRequest, RequestFacts};
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::{Body, full};
use crate::proxy::{Admitted, Gateway, client_kind, path_refusal};
use crate::respond::{ClientKind, Refusal};
use crate::route_refs;

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
        let refuse = |rec: &mut AuditRecord, r: Refusal, kind: ClientKind| {
            rec.decision = Some("deny");
            rec.reason = Some(r.code());
            (r, kind)
        };
        let Some(fa) = &self.settings.forward_auth else {
            return Err(refuse(
                rec,
                Refusal::BadRequest {
                    code: "not_found",
                    detail: "forward auth is not configured on this gateway ([forward_auth])"
                        .into(),
                },
                ClientKind::Api,
            ));
        };
        let trusted = &fa.trusted_proxies;
        if !trusted.iter().any(|n| n.contains(adm.peer)) {
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: "untrusted_front_proxy".into(),
                    what: "forward auth from an address not in forward_auth.trusted_proxies".into(),
                },
                ClientKind::Api,
            ));
        }
        let h = req.headers();
        // Refusals a front proxy passes to the client (it turns anything but 401 and 403 into a
        // 500).
        let forbid = |rec: &mut AuditRecord, reason: &'static str, what: &str| {
            refuse(
                rec,
                Refusal::Forbidden {
                    reason: reason.into(),
                    what: what.to_owned(),
                },
                ClientKind::Api,
            )
        };
        // The client's address, as the trusted front proxy reports it (`X-Forwarded-For`, its
        // rightmost entry that is not itself a front proxy).
        let client = crate::forwarded::client_ip(adm.peer, h, trusted);
        rec.source = Some(crate::forwarded::ip_text(client).into());
        // The front proxy passes the client's headers along: the set it does not write itself
        // could describe another request, and an identity header would reach the forge.
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
            return Err(forbid(
                rec,
                "ambiguous_original_request",
                "a request that names its method or URI in more than the front proxy's own headers",
            ));
        }
        if let Some(n) = h.keys().find(|n| self.strip.drops(n)) {
            return Err(forbid(
                rec,
                "identity_header_from_client",
                &format!(
                    "a request with its own `{n}` header, which the front proxy would pass to the forge"
                ),
            ));
        }
        let bad = |rec: &mut AuditRecord, code: &'static str, detail: &str| {
            refuse(
                rec,
                Refusal::BadRequest {
                    code,
                    detail: detail.to_owned(),
                },
                ClientKind::Api,
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
        let host = first(h, &["x-forwarded-host"])
            .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
            .unwrap_or_else(|| adm.host.to_string());
        rec.method = Some(method.clone().into());
        rec.host = Some(host.as_str().into());
        let c = classify(
            self.settings.flavor,
            &method,
            &host,
            uri.path(),
            uri.query(),
        )
        .map_err(|e| refuse(rec, path_refusal(e), ClientKind::Api))?;
        let kind = client_kind(Some(&c), h);
        // The front proxy forwards the path and query as the client sent them, not as Gatehouse
        // normalized them: what it would send otherwise, or with a forge credential in the query,
        // is refused.
        if c.forward_path != uri.path() {
            return Err(forbid(
                rec,
                "unnormalized_path",
                "a path the forge could read otherwise than Gatehouse (dot segments, doubled slashes, needless escapes)",
            ));
        }
        if uri.query().is_some_and(|q| {
            matches!(
                gatehouse_git::without_forge_credentials(q),
                Some(std::borrow::Cow::Owned(_)) | None
            ) && !q.is_empty()
        }) {
            return Err(forbid(
                rec,
                "forge_credential_in_query",
                "a forge credential (token, access_token, sudo) in the query, which the front proxy would pass to the forge",
            ));
        }
        if let Some(r) = crate::portal::cross_site_write(h, &host, &method, &method) {
            return Err(refuse(rec, r, kind));
        }
        rec.path = Some(c.decoded_path.clone());
        rec.action = Some(c.action.as_str());
        rec.repo = c.resource.repo().map(|r| r.path());

        // Named as through the gateway: a credential, or a session cookie on a web route.
        let principal = self
            .request_caller(h, &c, adm, rec, kind)
            .await
            .map_err(|(r, k)| refuse(rec, r, k))?;
        let Some(principal) = principal else {
            return Err(refuse(
                rec,
                Refusal::Unauthenticated {
                    error: AuthnError::Missing,
                    presented: false,
                },
                kind,
            ));
        };
        let facts = RequestFacts {
            source_ip: client,
            method: &method,
            host: &host,
            wiki: c.wiki,
            via: c.via,
            git_ref: None,
        };
        let decision = self.decider.decide(&AuthzRequest {
            principal: &principal,
            action: c.action,
            resource: &c.resource,
            facts,
        });
        rec.policy = Some(decision.deciding_policy());
        rec.reason = Some(decision.reason.clone());
        if !decision.allowed {
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: decision.reason,
                    what: format!("{} on the requested resource", c.action),
                },
                kind,
            ));
        }
        // A push, and a route whose refs are in its body, cannot be decided ref by ref: the
        // body is not seen.
        let push = c.kind == RequestKind::GitRpc(GitService::ReceivePack);
        let body_refs = c
            .moves
            .is_some_and(|m| self.decider.route_body_needed(&c, m));
        if (push || body_refs) && fa.ref_moves_in_body == RefMovesInBody::Refuse {
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: "ref_rules_need_the_gateway".into(),
                    what: "a request whose refs are named in its body, which forward auth never sees (forward_auth.ref_moves_in_body)".into(),
                },
                kind,
            ));
        }
        // A route whose refs are in its URL is decided ref by ref here too.
        if let Some(m) = c.moves
            && !body_refs
        {
            let verdict = self
                .decider
                .route_refs(
                    &principal,
                    &c,
                    m,
                    RouteRequest {
                        method: &method,
                        content_type: None,
                        body: b"",
                    },
                    facts,
                )
                .await;
            let verdict = verdict.map_err(|e| refuse(rec, route_refs::refusal(e), kind))?;
            route_refs::settle(rec, &verdict, c.via).map_err(|r| refuse(rec, r, kind))?;
        }
        rec.decision = Some("allow");
        // A write is on record, synced, before the front proxy lets it through.
        if c.action.may_change_forge(&method) {
            self.commit_forwarding(rec, adm)
                .await
                .map_err(|r| (r, kind))?;
        }
        let mut resp = Response::new(full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::OK;
        self.set_identity(resp.headers_mut(), &principal)
            .map_err(|r| refuse(rec, r, kind))?;
        resp.headers_mut()
            .insert("x-gatehouse-decision", HeaderValue::from_static("allow"));
        Ok(resp)
    }
}
