//! Phase 4c: a web or API route that moves refs (the web editor, branch and tag routes,
//! releases, merges, the contents API) is decided ref by ref, as a push is. This module is the
//! HTTP adapter: it reads the body when the decision core says the route needs it (at most
//! [`MAX_ROUTE_BODY`], then handed on unchanged), hands method, `Content-Type` and body to
//! `Decider::route_refs`, puts every decided ref on the audit record and turns a refusal into
//! the HTTP answer. One refused ref refuses the request before a byte of it reaches the forge.

use gatehouse_audit::{AuditRecord, AuditRef};
use gatehouse_core::Principal;
use gatehouse_core::Via;
use gatehouse_decide::{RefVerdict, RouteRefsError, RouteRequest};
use gatehouse_forge::LookupError;
use gatehouse_git::{Classified, PlanError, RefMove};
use gatehouse_policy::RequestFacts;
use http::Request;
use http::header::{self, HeaderMap};

use crate::body::{Body, full};
use crate::proxy::{Admitted, Gateway, read_limited};
use crate::respond::{ClientKind, Refusal};

/// The largest body of a ref-moving route that is read for its fields.
pub(crate) const MAX_ROUTE_BODY: usize = 1024 * 1024;

type Refused = (Refusal, ClientKind);

/// The refusal of refs that could not be decided.
pub(crate) fn refusal(e: RouteRefsError) -> Refusal {
    match e {
        RouteRefsError::Plan(PlanError::Undecidable(why)) => Refusal::Undecidable(why),
        RouteRefsError::Plan(e @ PlanError::NotJson) => Refusal::BadRequest {
            code: "body_not_json",
            detail: e.to_string(),
        },
        RouteRefsError::Plan(e) => Refusal::BadRequest {
            code: "bad_ref_fields",
            detail: e.to_string(),
        },
        RouteRefsError::Lookup(e) => Refusal::RefLookup {
            not_found: matches!(e, LookupError::NotFound(_)),
            detail: e.to_string(),
        },
        RouteRefsError::NoRepository => {
            Refusal::Undecidable("a ref-moving route that names no repository")
        }
    }
}

/// Puts every decided ref on the record; the first refused one refuses the request (on record
/// with its policy and reason).
pub(crate) fn settle(rec: &mut AuditRecord, v: &RefVerdict, via: Via) -> Result<(), Refusal> {
    rec.refs = Some(
        v.refs
            .iter()
            .map(|r| AuditRef::decided(&r.name, r.op.as_str(), "", "", &r.decision))
            .collect(),
    );
    let Some(r) = v.first_denial() else {
        return Ok(());
    };
    rec.decision = Some("deny");
    rec.policy = Some(r.decision.deciding_policy());
    rec.reason = Some(r.decision.reason.clone());
    Err(Refusal::Forbidden {
        reason: r.decision.reason.clone(),
        what: format!(
            "{} of {} on {} (through the {})",
            r.op.action().as_str(),
            r.name,
            r.repo,
            via.as_str()
        ),
    })
}

impl Gateway {
    /// Decides every ref a ref-moving web or API route moves; hands the request on (its body, if
    /// read, put back whole) when all are allowed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn authorize_route_refs(
        &self,
        req: Request<Body>,
        moves: RefMove,
        principal: &Principal,
        c: &Classified,
        adm: &Admitted,
        method: &str,
        rec: &mut AuditRecord,
        kind: ClientKind,
    ) -> Result<Request<Body>, Refused> {
        let (req, bytes) = if self.decider.route_body_needed(c, moves) {
            if crate::body::is_encoded(req.headers()) {
                return Err((
                    Refusal::BadRequest {
                        code: "compressed_body",
                        detail: "a compressed body cannot be read; Gatehouse must read which refs this request moves".into(),
                    },
                    kind,
                ));
            }
            let (parts, body) = req.into_parts();
            let bytes = read_limited(body, MAX_ROUTE_BODY)
                .await
                .map_err(|r| (r, kind))?;
            (Request::from_parts(parts, full(bytes.clone())), bytes)
        } else {
            (req, bytes::Bytes::new())
        };
        let facts = RequestFacts {
            source_ip: adm.client,
            method,
            host: &adm.host,
            wiki: c.wiki,
            via: c.via,
            git_ref: None,
        };
        self.decide_route_refs(req.headers(), &bytes, principal, c, moves, facts, rec)
            .await
            .map_err(|r| (r, kind))?;
        Ok(req)
    }

    /// Every ref a ref-moving route moves, read from its `Content-Type` (Go's `Header.Get`: the
    /// first) and `body` (empty when not needed), decided by the core and put on the record;
    /// the first refused ref, or what could not be decided, is the refusal. The gateway and the
    /// front doors that only ask both decide here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn decide_route_refs(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        principal: &Principal,
        c: &Classified,
        moves: RefMove,
        facts: RequestFacts<'_>,
        rec: &mut AuditRecord,
    ) -> Result<(), Refusal> {
        let content_type = match headers.get(header::CONTENT_TYPE) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| Refusal::BadRequest {
                code: "bad_content_type",
                detail: "the Content-Type is not text".into(),
            })?),
        };
        let verdict = self
            .decider
            .route_refs(
                principal,
                c,
                moves,
                RouteRequest {
                    method: facts.method,
                    content_type,
                    body,
                },
                facts,
            )
            .await
            .map_err(refusal)?;
        settle(rec, &verdict, c.via)
    }
}
