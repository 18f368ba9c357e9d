//! Phases 2 to 4 for a request another proxy serves and only asks about: nginx `auth_request`,
//! Caddy `forward_auth` and Traefik `forwardAuth` (`forward_auth`), Envoy's ext_authz over HTTP
//! (`ext_authz_http`) and over gRPC (the `gatehouse-extauthz` crate, through [`Gateway::check`]).
//! Each front door only reads how its proxy describes the original request (method, URI, host,
//! the client's headers and address, a body prefix where the proxy forwards one, the mTLS peer's
//! SPIFFE id) into a [`Described`]; the request is then classified, its caller named and the
//! policy asked exactly as through the gateway, by the same functions (`classify`,
//! `Gateway::request_caller`, the decision core, `route_refs::settle`).
//!
//! What the proxy passes to the forge is the request as the client sent it, so what the gateway
//! would have cleaned on the way is refused here instead: a path the forge would read otherwise,
//! a forge credential in the query, an identity header from the client.

use std::net::IpAddr;
use std::sync::Arc;

use gatehouse_audit::{AuditPrincipal, AuditRecord};
use gatehouse_authn::AuthnError;
use gatehouse_config::RefMovesInBody;
use gatehouse_core::Principal;
use gatehouse_git::{GitService, PushReader, RequestKind, classify};
use gatehouse_policy::{AuthzRequest, RequestFacts};
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway, client_kind, path_refusal};
use crate::respond::{ClientKind, Refusal};

/// Said on every answer that lets a request through.
pub(crate) const X_GATEHOUSE_DECISION: HeaderName = HeaderName::from_static("x-gatehouse-decision");

/// The original request, as the asking proxy describes it.
#[derive(Debug)]
pub(crate) struct Described<'a> {
    /// The method, upper-case.
    pub(crate) method: String,
    /// The path and query, as the client sent them.
    pub(crate) uri: http::Uri,
    /// The host, lower-case, without a port.
    pub(crate) host: String,
    /// The client's headers, as the proxy passes them on.
    pub(crate) headers: &'a HeaderMap,
    /// The client's address.
    pub(crate) client: IpAddr,
    /// The start of the request's body, when the proxy forwards it (Envoy's
    /// `with_request_body`); `None` when it never does.
    pub(crate) body: Option<BodyPrefix<'a>>,
    /// The caller named by the proxy's mTLS peer (a SPIFFE id in `[[ext_authz.workloads]]`),
    /// for a request that carries no credential of its own.
    pub(crate) workload: Option<Arc<Principal>>,
    /// What to do when a push or a route naming its refs in its body comes without that body.
    pub(crate) ref_moves_in_body: RefMovesInBody,
    /// Whether a browser without a session is answered with a redirect to sign in (the proxy
    /// passes any answer on) rather than a 401 (nginx `auth_request`, which turns anything but
    /// 2xx, 401 and 403 into a 500).
    pub(crate) sign_in_redirect: bool,
}

/// The part of a request body a proxy forwarded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPrefix<'a> {
    /// The bytes.
    pub(crate) bytes: &'a [u8],
    /// Whether they are the whole body.
    pub(crate) complete: bool,
}

/// What the asking proxy is told of an allowed request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Let it through, with these identity headers on the upstream request (and, for a proxy
    /// that removes headers, `Gateway::removed_upstream` removed from it).
    Allow {
        /// The identity headers to set (`[identity_headers]`).
        set: HeaderMap,
    },
    /// Answer the client with this (a browser sent to sign in).
    Respond(Response<Body>),
}

type Refused = (Refusal, ClientKind);

fn refuse(rec: &mut AuditRecord, r: Refusal, kind: ClientKind) -> Refused {
    rec.decision = Some("deny");
    rec.reason = Some(r.code());
    (r, kind)
}

fn forbid(rec: &mut AuditRecord, reason: &'static str, what: &str) -> Refused {
    refuse(
        rec,
        Refusal::Forbidden {
            reason: reason.into(),
            what: what.to_owned(),
        },
        ClientKind::Api,
    )
}

/// Whether a body prefix Envoy forwarded is the whole body. Envoy says so with
/// `x-envoy-auth-partial-body: false`, but it starts the check once it has buffered
/// `max_request_bytes` and then compares only with what it buffered: a body of exactly that length
/// is marked whole while more may be coming. So the mark must be there and say `false`, and the
/// body be shorter than `max_request_bytes`, or (when the client's headers are the request's,
/// `client_length`) exactly as long as the client's `Content-Length`.
pub(crate) fn forwarded_body_complete(
    len: usize,
    headers: &HeaderMap,
    client_length: bool,
    max_request_bytes: u64,
) -> bool {
    let marked_whole = headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false"));
    if !marked_whole {
        return false;
    }
    let declared = client_length
        .then(|| headers.get(header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    declared == Some(len as u64) || (len as u64) < max_request_bytes
}

/// A front proxy's `Host` or `X-Forwarded-Host`: lower-case, without a port.
pub(crate) fn bare_host(h: &str) -> String {
    let h = h.trim();
    let bare = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.split(':').next().unwrap_or(h)
    };
    bare.to_ascii_lowercase()
}

impl Gateway {
    /// Decides the request a proxy describes: `Ok` when it may go on (with the headers to set),
    /// or the refusal to show, with the record filled in either way.
    pub(crate) async fn decide_described(
        &self,
        d: Described<'_>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Answer, Refused> {
        let h = d.headers;
        rec.source = Some(crate::forwarded::ip_text(d.client).into());
        rec.method = Some(d.method.clone().into());
        rec.host = Some(d.host.as_str().into());
        // The proxy passes the client's headers on: an identity header would reach the forge.
        if let Some(n) = h.keys().find(|n| self.strip.drops(n)) {
            return Err(forbid(
                rec,
                "identity_header_from_client",
                &format!(
                    "a request with its own `{n}` header, which the front proxy would pass to the forge"
                ),
            ));
        }
        let method = &d.method;
        let uri = &d.uri;
        let host = &d.host;
        let c = classify(self.settings.flavor, method, host, uri.path(), uri.query())
            .map_err(|e| refuse(rec, path_refusal(e), ClientKind::Api))?;
        let kind = client_kind(Some(&c), h);
        // The proxy forwards the path and query as the client sent them, not as Gatehouse
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
        if let Some(r) = crate::portal::cross_site_write(h, host, method, method) {
            return Err(refuse(rec, r, kind));
        }
        rec.path = Some(c.decoded_path.clone());
        rec.action = Some(c.action.as_str());
        rec.repo = c.resource.repo().map(|r| r.path());
        // An LFS batch says in its body whether it downloads or uploads: read when the proxy
        // forwarded the whole body, else decided as the upload it may be.
        let action = match d.body {
            Some(b) if c.kind == RequestKind::LfsBatch && b.complete => {
                crate::authorize::lfs_batch_action(b.bytes)
                    .map_err(|r| refuse(rec, r, ClientKind::Git))?
            }
            _ => c.action,
        };
        rec.action = Some(action.as_str());

        // Named as through the gateway: a credential, or a session cookie on a web route; else
        // the proxy's mTLS peer, when it is a configured workload.
        let principal = match self.request_caller(h, &c, adm, rec, kind).await? {
            Some(p) => p,
            None => match d.workload.clone() {
                Some(w) => {
                    let w = self.enrich(w, adm, kind).await?;
                    rec.principal = Some(AuditPrincipal::of(&w));
                    rec.authn_error = None;
                    w
                }
                None => {
                    if d.sign_in_redirect
                        && let Some(sessions) = &self.sessions
                        && c.kind == RequestKind::Web
                        && (method == "GET" || method == "HEAD")
                        && crate::portal::wants_html(h)
                    {
                        rec.decision = Some("deny");
                        rec.reason = Some("login_required".into());
                        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
                        return Ok(Answer::Respond(crate::portal::login_redirect(sessions, pq)));
                    }
                    return Err(refuse(
                        rec,
                        Refusal::Unauthenticated {
                            error: AuthnError::Missing,
                            presented: false,
                        },
                        kind,
                    ));
                }
            },
        };
        let facts = RequestFacts {
            source_ip: d.client,
            method,
            host,
            wiki: c.wiki,
            via: c.via,
            git_ref: None,
        };
        let decision = self.decider.decide(&AuthzRequest {
            principal: &principal,
            action,
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
                    what: crate::proxy::describe(action, &c.resource),
                },
                kind,
            ));
        }

        let push = c.kind == RequestKind::GitRpc(GitService::ReceivePack);
        let body_refs = c
            .moves
            .is_some_and(|m| self.decider.route_body_needed(&c, m));
        if push || body_refs {
            if crate::body::is_encoded(h) && d.body.is_some() {
                return Err(refuse(
                    rec,
                    Refusal::BadRequest {
                        code: "compressed_body",
                        detail: "a compressed body cannot be read; Gatehouse must read which refs this request moves".into(),
                    },
                    kind,
                ));
            }
            match (d.body, d.ref_moves_in_body) {
                (None, RefMovesInBody::DecideWithoutRefRules) => {}
                (None, RefMovesInBody::Refuse) => {
                    return Err(refuse(
                        rec,
                        Refusal::Forbidden {
                            reason: "ref_rules_need_the_gateway".into(),
                            what: "a request whose refs are named in its body, which this front door is not shown (ref_moves_in_body)".into(),
                        },
                        kind,
                    ));
                }
                (Some(body), _) if push => {
                    self.described_push(body, &principal, &c, facts, rec, kind)?;
                }
                (Some(body), _) => {
                    if !body.complete {
                        return Err(refuse(
                            rec,
                            Refusal::Undecidable(
                                "the refs this request moves are named in a body the proxy forwarded only in part (raise its max_request_bytes)",
                            ),
                            kind,
                        ));
                    }
                    if let Some(m) = c.moves {
                        self.decide_route_refs(h, body.bytes, &principal, &c, m, facts, rec)
                            .await
                            .map_err(|r| refuse(rec, r, kind))?;
                    }
                }
            }
        } else if let Some(m) = c.moves {
            // A route whose refs are in its URL is decided ref by ref here too.
            self.decide_route_refs(h, b"", &principal, &c, m, facts, rec)
                .await
                .map_err(|r| refuse(rec, r, kind))?;
        }
        rec.decision = Some("allow");
        // A write is on record, synced, before the proxy lets it through.
        if action.may_change_forge(method) {
            self.commit_forwarding(rec, adm)
                .await
                .map_err(|r| (r, kind))?;
        }
        let mut set = HeaderMap::new();
        self.set_identity(&mut set, &principal)
            .map_err(|r| refuse(rec, r, kind))?;
        set.insert(X_GATEHOUSE_DECISION, HeaderValue::from_static("allow"));
        Ok(Answer::Allow { set })
    }

    /// The names Envoy removes from an allowed request (its ext_authz answers): every identity
    /// header a client could have sent, and `Authorization` unless
    /// `identity.forward_authorization`, except those `set` sets (Envoy removes after it
    /// sets: a name on both lists would be dropped).
    pub(crate) fn removed_upstream(&self, set: &HeaderMap) -> Vec<HeaderName> {
        let mut remove: Vec<HeaderName> = self.strip.names().to_vec();
        if !self.settings.identity.forward_authorization {
            remove.push(header::AUTHORIZATION);
        }
        remove.retain(|n| !set.contains_key(n));
        remove
    }

    /// A push's command list, read from the forwarded body prefix and decided ref by ref.
    fn described_push(
        &self,
        body: BodyPrefix<'_>,
        principal: &Principal,
        c: &gatehouse_git::Classified,
        facts: RequestFacts<'_>,
        rec: &mut AuditRecord,
        kind: ClientKind,
    ) -> Result<(), Refused> {
        let bad = |rec: &mut AuditRecord, detail: String| {
            refuse(
                rec,
                Refusal::BadRequest {
                    code: "bad_push_commands",
                    detail,
                },
                kind,
            )
        };
        let mut reader = PushReader::new(self.settings.push_limits);
        if let Err(e) = reader.feed(body.bytes) {
            return Err(bad(rec, e.to_string()));
        }
        if !reader.is_done() && !body.complete {
            return Err(refuse(
                rec,
                Refusal::Undecidable(
                    "the push's command list goes on past the body prefix the proxy forwarded (raise its max_request_bytes)",
                ),
                kind,
            ));
        }
        let push = reader.finish().map_err(|e| bad(rec, e.to_string()))?;
        let decisions = self.decider.push_refs(principal, &c.resource, facts, &push);
        rec.refs = Some(
            push.updates
                .iter()
                .zip(&decisions.per_ref)
                .map(|(u, d)| {
                    gatehouse_audit::AuditRef::decided(&u.name, u.op().as_str(), &u.old, &u.new, d)
                })
                .collect(),
        );
        if let Some(denial) = decisions.first_denial() {
            let name = decisions
                .refused()
                .first()
                .and_then(|(i, _)| push.updates.get(*i))
                .map_or("", |u| u.name.as_str());
            rec.policy = Some(denial.deciding_policy());
            rec.reason = Some(denial.reason.clone());
            return Err(refuse(
                rec,
                Refusal::Forbidden {
                    reason: denial.reason.clone(),
                    what: format!(
                        "push to {name} of {}",
                        crate::proxy::describe(gatehouse_core::Action::GitWrite, &c.resource)
                    ),
                },
                kind,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_body_complete;
    use crate::test_util::headers;

    #[test]
    fn a_forwarded_body_is_whole_only_when_envoy_could_know() {
        let max = 1024;
        let marked = headers(&[("x-envoy-auth-partial-body", "false")]);
        assert!(forwarded_body_complete(10, &marked, true, max));
        // No mark, or marked partial: a prefix.
        assert!(!forwarded_body_complete(10, &headers(&[]), true, max));
        let cut = headers(&[("x-envoy-auth-partial-body", "true")]);
        assert!(!forwarded_body_complete(10, &cut, true, max));
        // Exactly max_request_bytes: Envoy marks it whole while more may come ...
        assert!(!forwarded_body_complete(1024, &marked, true, max));
        // ... unless the client's Content-Length says that is all.
        let declared = headers(&[
            ("x-envoy-auth-partial-body", "false"),
            ("content-length", "1024"),
        ]);
        assert!(forwarded_body_complete(1024, &declared, true, max));
        // The HTTP variant's Content-Length is Envoy's own, never the client's.
        assert!(!forwarded_body_complete(1024, &declared, false, max));
        let longer = headers(&[
            ("x-envoy-auth-partial-body", "false"),
            ("content-length", "5000"),
        ]);
        assert!(!forwarded_body_complete(1024, &longer, true, max));
    }
}
