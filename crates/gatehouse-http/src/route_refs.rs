//! Phase 4c: a web or API route that moves refs (the web editor, branch and tag routes,
//! releases, merges, the contents API) is decided ref by ref, as a push is. The refs come from
//! the URL, from the route's form or JSON fields (read from a body of at most
//! [`MAX_ROUTE_BODY`], then handed on unchanged), or from the forge's API
//! (`gatehouse_forge::ForgeApi`); which ones, `gatehouse_git::plan_moves` says. Each is asked as
//! `ref:create|update|delete` with `context.via` `web` or `api`; one refusal refuses the request
//! before a byte of it reaches the forge.

use std::collections::HashMap;

use gatehouse_audit::{AuditRecord, AuditRef};
use gatehouse_core::{Decision, Principal, RepoRef, Resource};
use gatehouse_forge::{LookupError, PullBranches};
use gatehouse_git::{
    Classified, PlanError, RefMove, RefOp, RefSource, body_fields, plan_moves, read_route_fields,
    route_rest,
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
        let mut asks: Vec<(Resource, String, RefOp)> = Vec::new();
        let mut pulls: HashMap<u64, PullBranches> = HashMap::new();
        for p in planned {
            let here = |name: String| (c.resource.clone(), name, p.op);
            match p.source {
                RefSource::Named(n) => asks.push(here(n)),
                RefSource::AnyOf(ns) => asks.extend(ns.into_iter().map(here)),
                RefSource::PullBase(i) | RefSource::PullHead(i) => {
                    let pr = match pulls.get(&i) {
                        Some(pr) => pr.clone(),
                        None => {
                            let pr = self
                                .forge_api(kind)?
                                .pull(&repo.owner, &repo.name, i)
                                .await
                                .map_err(|e| lookup_refusal(e, kind))?;
                            pulls.insert(i, pr.clone());
                            pr
                        }
                    };
                    if matches!(p.source, RefSource::PullBase(_)) {
                        asks.push(here(pr.base));
                        continue;
                    }
                    // A head repository that is gone has no branch to move.
                    let Some((owner, name)) = pr.head_repo else {
                        continue;
                    };
                    let head = self.head_repo(&owner, &name).ok_or_else(|| {
                        lookup_refusal(
                            LookupError::Unavailable(format!(
                                "the head repository `{owner}/{name}` is no name Gatehouse reads"
                            )),
                            kind,
                        )
                    })?;
                    asks.push((Resource::Repo(head), pr.head, p.op));
                }
                RefSource::DefaultBranch => {
                    let b = self
                        .forge_api(kind)?
                        .default_branch(&repo.owner, &repo.name)
                        .await
                        .map_err(|e| lookup_refusal(e, kind))?;
                    asks.push(here(b));
                }
                RefSource::ReleaseTag(id) => {
                    let t = self
                        .forge_api(kind)?
                        .release_tag(&repo.owner, &repo.name, id)
                        .await
                        .map_err(|e| lookup_refusal(e, kind))?;
                    asks.push(here(t));
                }
            }
        }

        let policy = self.policy.load();
        let decisions: Vec<Decision> = asks
            .iter()
            .map(|(resource, name, op)| {
                policy.evaluate(&AuthzRequest {
                    principal,
                    action: op.action(),
                    resource,
                    facts: RequestFacts {
                        source_ip: adm.client,
                        method,
                        host: &adm.host,
                        wiki: c.wiki,
                        via: c.via,
                        // The forge makes the commit: its id is not known before it does.
                        git_ref: Some(RefFacts {
                            name,
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
                .map(|((_, name, op), d)| AuditRef::decided(name, op.as_str(), "", "", d))
                .collect(),
        );
        let denied = asks.iter().zip(&decisions).find(|(_, d)| !d.allowed);
        if let Some(((resource, name, op), d)) = denied {
            rec.decision = Some("deny");
            rec.policy = Some(d.deciding_policy());
            rec.reason = Some(d.reason.clone());
            let on = match resource {
                Resource::Repo(r) => r.to_string(),
                other => format!("{other:?}"),
            };
            return Err((
                Refusal::Forbidden {
                    reason: d.reason.clone(),
                    what: format!(
                        "{} of {name} on {on} (through the {})",
                        op.action().as_str(),
                        c.via.as_str()
                    ),
                },
                kind,
            ));
        }
        Ok(req)
    }

    fn forge_api(&self, kind: ClientKind) -> Result<&gatehouse_forge::ForgeApi, Refused> {
        self.forge_api.as_deref().ok_or_else(|| {
            lookup_refusal(
                LookupError::Unavailable(
                    "no forge API is configured ([forge.api]) to ask which branch or tag this moves"
                        .into(),
                ),
                kind,
            )
        })
    }

    /// The head repository of a pull request as the policy names repositories.
    fn head_repo(&self, owner: &str, name: &str) -> Option<RepoRef> {
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.len() <= 255
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !ok(owner) || !ok(name) {
            return None;
        }
        let fold = |s: &str| {
            if self.settings.flavor.case_insensitive() {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        Some(RepoRef {
            owner: fold(owner),
            name: fold(name),
        })
    }
}
