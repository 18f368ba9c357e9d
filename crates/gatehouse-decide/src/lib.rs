//! The decision, made once for every front door (the HTTP proxy, the SSH front door and
//! `gatehouse policy explain`): who the caller is, with its groups on the forge; what the policy
//! says of a request; and, for a web or API route that moves refs, which refs those are and what
//! the policy says of each.
//!
//! It knows no transport: a front door reads the credential, the path and, where a route needs
//! it, a bounded body, and turns the verdict into its own answer (an HTTP refusal, a line for
//! the SSH client, `policy explain`'s report). It must not read sockets, write the audit log or
//! know how an answer is shaped; the I/O it does is the authenticator's key fetches and the
//! forge API calls (`gatehouse-forge`) it is configured with.
#![forbid(unsafe_code)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_authn::{Authenticator, AuthnError, Credential};
use gatehouse_core::{Decision, Principal, RepoRef, Resource};
use gatehouse_forge::{ForgeApi, ForgeError, ForgeGroups, LookupError, resolve_moves};
use gatehouse_git::{
    Classified, ForgeFlavor, PlanError, PushRequest, RefMove, RefOp, body_fields, plan_moves,
    read_route_fields, route_rest,
};
use gatehouse_policy::{
    AuthzRequest, Explanation, PolicyEngine, RefDecisions, RefFacts, RequestFacts,
};

/// Why the caller could not be named.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The credential is missing, malformed or does not verify (or the keys are unavailable).
    #[error(transparent)]
    Authn(#[from] AuthnError),
    /// The forge cannot say which organisations and teams the caller is in, and
    /// `forge.groups.on_error` is `refuse`.
    #[error(transparent)]
    Groups(#[from] ForgeError),
}

/// Why the refs a route moves could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RouteRefsError {
    /// The request does not say for sure (a field the forge would read otherwise, a missing
    /// field, a route no API can resolve): see [`PlanError`].
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The forge's API could not say what the request leaves to it.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// A ref-moving route that names no repository (never classified so).
    #[error("a ref-moving route that names no repository")]
    NoRepository,
}

/// One ref a route moves, and what the policy said of it.
#[derive(Debug, Clone)]
pub struct DecidedRef {
    /// The repository it is in (a pull request's head may be in a fork).
    pub repo: RepoRef,
    /// The full ref name.
    pub name: String,
    /// Created, updated or deleted.
    pub op: RefOp,
    /// The policy's answer.
    pub decision: Decision,
}

/// The refs a route moves, each decided, in the order they were planned.
#[derive(Debug, Clone, Default)]
pub struct RefVerdict {
    /// Every ref asked.
    pub refs: Vec<DecidedRef>,
}

impl RefVerdict {
    /// The first refused ref: one refusal refuses the request.
    pub fn first_denial(&self) -> Option<&DecidedRef> {
        self.refs.iter().find(|r| !r.decision.allowed)
    }
}

/// What a front door hands over of a ref-moving route's request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The method, upper-case.
    pub method: &'a str,
    /// The first `Content-Type`, as sent.
    pub content_type: Option<&'a str>,
    /// The body, when [`Decider::route_body_needed`] said it is (else empty).
    pub body: &'a [u8],
}

/// The decision core: one per process, shared by every front door.
pub struct Decider {
    authn: Arc<Authenticator>,
    policy: Arc<ArcSwap<PolicyEngine>>,
    flavor: ForgeFlavor,
    forge_groups: Option<Arc<ForgeGroups>>,
    forge_api: Option<Arc<ForgeApi>>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("flavor", &self.flavor)
            .field("forge_groups", &self.forge_groups.is_some())
            .field("forge_api", &self.forge_api.is_some())
            .finish_non_exhaustive()
    }
}

impl Decider {
    /// The core over an authenticator and a (hot-reloaded) policy, for a forge of `flavor`.
    pub fn new(
        authn: Arc<Authenticator>,
        policy: Arc<ArcSwap<PolicyEngine>>,
        flavor: ForgeFlavor,
    ) -> Self {
        Self {
            authn,
            policy,
            flavor,
            forge_groups: None,
            forge_api: None,
        }
    }

    /// Adds callers' forge organisations and teams to their groups.
    pub fn with_forge_groups(mut self, g: Option<Arc<ForgeGroups>>) -> Self {
        self.forge_groups = g;
        self
    }

    /// Asks the forge's API what a ref-moving route leaves to it.
    pub fn with_forge_api(mut self, a: Option<Arc<ForgeApi>>) -> Self {
        self.forge_api = a;
        self
    }

    /// The forge's API, when `[forge.api]` is configured.
    pub fn forge_api(&self) -> Option<&Arc<ForgeApi>> {
        self.forge_api.as_ref()
    }

    /// The authenticator (Gatehouse's own issuer, readiness).
    pub fn authn(&self) -> &Arc<Authenticator> {
        &self.authn
    }

    /// The policy now in force.
    pub fn policy(&self) -> Arc<PolicyEngine> {
        self.policy.load_full()
    }

    /// The forge flavor requests are read for.
    pub fn flavor(&self) -> ForgeFlavor {
        self.flavor
    }

    /// Verifies a credential and names its holder.
    pub async fn authenticate(&self, cred: &Credential) -> Result<Arc<Principal>, AuthnError> {
        self.authn.authenticate(cred).await
    }

    /// The principal with its forge groups added, when `[forge.groups]` is on (a principal
    /// from a token, a browser session or an SSH certificate alike).
    pub async fn enrich(&self, mut p: Arc<Principal>) -> Result<Arc<Principal>, ForgeError> {
        if let Some(fg) = &self.forge_groups {
            fg.enrich(Arc::make_mut(&mut p)).await?;
        }
        Ok(p)
    }

    /// [`Self::authenticate`], then [`Self::enrich`].
    pub async fn caller(&self, cred: &Credential) -> Result<Arc<Principal>, CallerError> {
        let p = self.authenticate(cred).await?;
        Ok(self.enrich(p).await?)
    }

    /// What the policy says of a request. A revoked caller is refused before the policy is
    /// asked, whatever front door and credential brought it (a browser session or an SSH
    /// certificate never passes [`Self::authenticate`]), with the revocation as the reason.
    pub fn decide(&self, q: &AuthzRequest<'_>) -> Decision {
        match self.authn.revoked(q.principal) {
            Some(r) => Decision::new(false, Vec::new(), r.reason()),
            None => self.policy.load().evaluate(q),
        }
    }

    /// Whether the policy lets a token exchange give one role (`token:exchange`), a revoked
    /// caller refused first.
    pub fn decide_exchange(&self, q: &gatehouse_policy::ExchangeRequest<'_>) -> Decision {
        match self.authn.revoked(q.principal) {
            Some(r) => Decision::new(false, Vec::new(), r.reason()),
            None => self.policy.load().decide_exchange(q),
        }
    }

    /// Whether the policy lets the caller act on Gatehouse's own state (environments,
    /// revocations), a revoked caller refused first.
    pub fn decide_admin(&self, q: &gatehouse_policy::AdminRequest<'_>) -> Decision {
        match self.authn.revoked(q.principal) {
            Some(r) => Decision::new(false, Vec::new(), r.reason()),
            None => self.policy.load().decide_admin(q),
        }
    }

    /// The same, with the policies that decided it.
    pub fn explain(&self, q: &AuthzRequest<'_>) -> Explanation {
        match self.authn.revoked(q.principal) {
            Some(r) => Explanation {
                decision: Decision::new(false, Vec::new(), r.reason()),
                deciding: Vec::new(),
                errors: Vec::new(),
            },
            None => self.policy.load().explain(q),
        }
    }

    /// Every ref a push changes, each decided (`ref:create|update|delete` with the ref and its
    /// old and new ids in the context), after `git:write` was allowed: for a push over HTTP,
    /// over SSH and one a proxy forwarded the command list of. One refused ref refuses the push.
    pub fn push_refs(
        &self,
        principal: &Principal,
        resource: &Resource,
        facts: RequestFacts<'_>,
        push: &PushRequest,
    ) -> RefDecisions {
        self.policy
            .load()
            .decide_refs(principal, resource, facts, push)
    }

    /// Whether a ref-moving route's body must be read: only when its handler names refs in
    /// form or JSON fields.
    pub fn route_body_needed(&self, c: &Classified, moves: RefMove) -> bool {
        let rest = route_rest(&c.decoded_path, c.via);
        !body_fields(self.flavor, moves, c.via, &rest).is_empty()
    }

    /// Every ref a ref-moving web or API route moves, each decided: read from the URL and the
    /// body as the forge reads them, with what only the forge knows looked up on its API, and
    /// asked as `ref:create|update|delete` with `facts` (whose `git_ref` is ignored).
    pub async fn route_refs(
        &self,
        principal: &Principal,
        c: &Classified,
        moves: RefMove,
        req: RouteRequest<'_>,
        facts: RequestFacts<'_>,
    ) -> Result<RefVerdict, RouteRefsError> {
        let rest = route_rest(&c.decoded_path, c.via);
        let wanted = body_fields(self.flavor, moves, c.via, &rest);
        let fields = read_route_fields(
            c.via,
            req.method,
            req.content_type,
            c.forward_query.as_deref(),
            req.body,
            wanted,
        )?;
        let planned = plan_moves(self.flavor, moves, c.via, &rest, fields.fields())?;
        let Resource::Repo(repo) = &c.resource else {
            return Err(RouteRefsError::NoRepository);
        };
        let moved = resolve_moves(
            self.forge_api.as_deref(),
            self.flavor.case_insensitive(),
            repo,
            planned,
        )
        .await?;
        let policy = self.policy.load();
        let refs = moved
            .into_iter()
            .map(|m| {
                let resource = Resource::Repo(m.repo.clone());
                let decision = policy.evaluate(&AuthzRequest {
                    principal,
                    action: m.op.action(),
                    resource: &resource,
                    facts: RequestFacts {
                        // The forge makes the commit: its id is not known before it does.
                        git_ref: Some(RefFacts {
                            name: &m.name,
                            old: "",
                            new: "",
                        }),
                        ..facts
                    },
                });
                DecidedRef {
                    repo: m.repo,
                    name: m.name,
                    op: m.op,
                    decision,
                }
            })
            .collect();
        Ok(RefVerdict { refs })
    }
}

#[cfg(test)]
mod tests;
