//! Phase 4c: a web or API route that moves refs (the web editor, branch and tag routes,
//! releases, merges, the contents API) is decided ref by ref, as a push is. The refs come from
//! the URL, from the route's form or JSON fields (read from a body of at most
//! [`MAX_ROUTE_BODY`], then handed on unchanged), or from the forge's API
//! (`gatehouse_forge::ForgeApi`); which ones, `gatehouse_git::plan_moves` says. Each is asked as
//! `ref:create|update|delete` with `context.via` `web` or `api`; one refusal refuses the request
//! before a byte of it reaches the forge.

use gatehouse_audit::{AuditRecord, AuditRef};
use gatehouse_core::{Decision, Principal, Resource};
use gatehouse_forge::{LookupError, resolve_moves};
use gatehouse_git::{
    Classified, PlanError, RefMove, body_fields, plan_moves, read_route_fields, route_rest,
};
use gatehouse_policy::{AuthzRequest, RefFacts, RequestFacts};
use http::Request;
use http::header;

use crate::body::{Body, full};
use crate::proxy::{Admitted, Gateway, read_limited};
use crate::respond::{ClientKind, Refusal};

/// The largest body of a ref-moving route that is read for its fields.
pub(crate) const MAX_ROUTE_BODY: usize = 1024 * 1024;

type Refused = (Refusal, ClientKind);

fn plan_refusal(e: PlanError, kind: ClientKind) -> Refused {
    let r = match e {
        PlanError::Undecidable(why) => Refusal::Undecidable(why),
        PlanError::NotJson => Refusal::BadRequest {
            code: "body_not_json",
            detail: e.to_string(),
        },
        e => Refusal::BadRequest {
            code: "bad_ref_fields",
            detail: e.to_string(),
        },
    };
    (r, kind)
}

fn lookup_refusal(e: LookupError, kind: ClientKind) -> Refused {
    let not_found = matches!(e, LookupError::NotFound(_));
    (
        Refusal::RefLookup {
            not_found,
            detail: e.to_string(),
        },
        kind,
    )
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
        let flavor = self.settings.flavor;
        let rest = route_rest(&c.decoded_path, c.via);
        let wanted = body_fields(flavor, moves, c.via, &rest);
        let (req, fields) = if wanted.is_empty() {
            (req, gatehouse_git::RouteFields::None)
        } else {
            if req
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
            {
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
            // Go's `Header.Get`: the first `Content-Type`.
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().map_err(|_| ()))
                .transpose()
                .map_err(|()| {
                    (
                        Refusal::BadRequest {
                            code: "bad_content_type",
                            detail: "the Content-Type is not text".into(),
                        },
                        kind,
                    )
                })?;
            let fields = read_route_fields(
                c.via,
                method,
                ct,
                c.forward_query.as_deref(),
                &bytes,
                wanted,
            )
            .map_err(|e| plan_refusal(e, kind))?;
            (Request::from_parts(parts, full(bytes)), fields)
        };
        let planned = plan_moves(flavor, moves, c.via, &rest, fields.fields())
            .map_err(|e| plan_refusal(e, kind))?;
        let Resource::Repo(repo) = &c.resource else {
            return Err((
                Refusal::Undecidable("a ref-moving route that names no repository"),
                kind,
            ));
        };

        // Which repository and ref each move is about.
        let asks = resolve_moves(
            self.forge_api.as_deref(),
            flavor.case_insensitive(),
            repo,
            planned,
        )
        .await
        .map_err(|e| lookup_refusal(e, kind))?;

        let policy = self.policy.load();
        let resources: Vec<Resource> = asks
            .iter()
            .map(|m| Resource::Repo(m.repo.clone()))
            .collect();
        let decisions: Vec<Decision> = asks
            .iter()
            .zip(&resources)
            .map(|(m, resource)| {
                policy.evaluate(&AuthzRequest {
                    principal,
                    action: m.op.action(),
                    resource,
                    facts: RequestFacts {
                        source_ip: adm.client,
                        method,
                        host: &adm.host,
                        wiki: c.wiki,
                        via: c.via,
                        // The forge makes the commit: its id is not known before it does.
                        git_ref: Some(RefFacts {
                            name: &m.name,
                            old: "",
                            new: "",
                        }),
                    },
                })
            })
            .collect();
        rec.refs = Some(
            asks.iter()
                .zip(&decisions)
                .map(|(m, d)| AuditRef::decided(&m.name, m.op.as_str(), "", "", d))
                .collect(),
        );
        let denied = asks.iter().zip(&decisions).find(|(_, d)| !d.allowed);
        if let Some((m, d)) = denied {
            rec.decision = Some("deny");
            rec.policy = Some(d.deciding_policy());
            rec.reason = Some(d.reason.clone());
            return Err((
                Refusal::Forbidden {
                    reason: d.reason.clone(),
                    what: format!(
                        "{} of {} on {} (through the {})",
                        m.op.action().as_str(),
                        m.name,
                        m.repo,
                        c.via.as_str()
                    ),
                },
                kind,
            ));
        }
        Ok(req)
    }
}
