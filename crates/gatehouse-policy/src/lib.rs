//! The policy core: Gatehouse's forge-aware model expressed in Cedar, and `evaluate`/`explain` over
//! it. Default deny: a request is allowed only when a `permit` matches and no `forbid` does.
//!
//! Pure: no I/O, no clock, no async. Loading the policy file and reloading it on change belong to
//! the caller; this crate turns policy text into a validated [`PolicyEngine`] or a readable error.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use gatehouse_core::{Action, Decision, Principal, PrincipalKind, RepoRef, Resource, Via};
use gatehouse_git::PushRequest;

/// The Cedar schema every policy file is validated against.
pub const SCHEMA: &str = include_str!("schema.cedarschema");

/// The namespace of every Gatehouse entity type.
pub const NAMESPACE: &str = "Gatehouse";

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Cedar could not parse the policy text.
    #[error("policy syntax error: {0}")]
    Parse(Problems),
    /// The policies do not fit Gatehouse's schema (unknown entity type, attribute or action).
    #[error("policy does not validate against the Gatehouse schema: {0}")]
    Validation(Problems),
    /// Two policies carry the same `@id`.
    #[error("duplicate policy @id(\"{0}\")")]
    DuplicateId(String),
    /// Policy templates are not supported.
    #[error("policy templates are not supported")]
    Template,
    /// The built-in schema failed to load (a bug).
    #[error("internal schema error: {0}")]
    Schema(String),
}

impl PolicyError {
    /// Each problem with its place in the policy text, when Cedar gave one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Parse(p) | Self::Validation(p) => p.0.clone(),
            other => vec![Problem {
                line: 0,
                column: 0,
                message: other.to_string(),
            }],
        }
    }
}

/// One problem in a policy text, at a line and column (1-based, in characters; 0 when Cedar gave
/// no place), so that a tool prints `file:line:column: message` as compilers do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column in characters, 0 when unknown.
    pub column: usize,
    /// What is wrong, with Cedar's help text when it has some.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

/// The problems Cedar found, each at its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The line and column (1-based, in characters) of byte `offset` in `src`.
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A Cedar diagnostic as a [`Problem`] at its first labelled place in `src`.
fn problem(src: &str, d: &dyn miette::Diagnostic, extra: Option<&str>) -> Problem {
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    if let Some(extra) = extra {
        message.push_str(extra);
    }
    match d.labels().and_then(|mut l| l.next()) {
        Some(label) => {
            let (line, column) = line_column(src, label.offset());
            Problem {
                line,
                column,
                message,
            }
        }
        None => Problem {
            line: 0,
            column: 0,
            message,
        },
    }
}

/// Request facts beyond principal, action and resource.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The client's address.
    pub source_ip: IpAddr,
    /// The request method, upper-case.
    pub method: &'a str,
    /// The request host, lower-case, without port.
    pub host: &'a str,
    /// The request is for a repository's wiki.
    pub wiki: bool,
    /// Which way the request reaches the forge (`context.via`).
    pub via: Via,
    /// For the ref actions: the ref and its old and new object ids.
    pub git_ref: Option<RefFacts<'a>>,
}

/// An RFC 8693 token exchange's question, for one role: `token:exchange` on `Role::"<role>"`.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeRequest<'a> {
    /// Who the subject token names.
    pub principal: &'a Principal,
    /// The role asked for.
    pub role: &'a str,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The request host, lower-case, without port.
    pub host: &'a str,
    /// The environment the token would be bound to.
    pub environment: Option<&'a str>,
    /// How long the token would live, in seconds.
    pub lifetime: i64,
}

/// A question about Gatehouse's own state (`env:create`, `env:end`, `revocation:create`,
/// `revocation:lift`, `revocation:read`).
#[derive(Debug, Clone, Copy)]
pub struct AdminRequest<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The action's name.
    pub action: AdminAction,
    /// What it is about.
    pub resource: AdminResource<'a>,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The request method, upper-case.
    pub method: &'a str,
    /// The request host, lower-case, without port.
    pub host: &'a str,
}

/// The actions on Gatehouse's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// `env:create`
    EnvCreate,
    /// `env:end`
    EnvEnd,
    /// `revocation:create`
    RevocationCreate,
    /// `revocation:lift`
    RevocationLift,
    /// `revocation:read`
    RevocationRead,
    /// `secret:get`
    SecretGet,
    /// `secret:list`
    SecretList,
    /// `secret:put`
    SecretPut,
    /// `secret:rotate`
    SecretRotate,
    /// `secret:delete`
    SecretDelete,
    /// `secret:admin`
    SecretAdmin,
    /// `job:end`
    JobEnd,
    /// `job:mint`
    JobMint,
    /// `hook:read`
    HookRead,
    /// `hook:replay`
    HookReplay,
}

impl AdminAction {
    /// The name policies use.
    pub const fn as_str(self) -> &'static str {
        match self {
            AdminAction::EnvCreate => "env:create",
            AdminAction::EnvEnd => "env:end",
            AdminAction::RevocationCreate => "revocation:create",
            AdminAction::RevocationLift => "revocation:lift",
            AdminAction::RevocationRead => "revocation:read",
            AdminAction::SecretGet => "secret:get",
            AdminAction::SecretList => "secret:list",
            AdminAction::SecretPut => "secret:put",
            AdminAction::SecretRotate => "secret:rotate",
            AdminAction::SecretDelete => "secret:delete",
            AdminAction::SecretAdmin => "secret:admin",
            AdminAction::JobEnd => "job:end",
            AdminAction::JobMint => "job:mint",
            AdminAction::HookRead => "hook:read",
            AdminAction::HookReplay => "hook:replay",
        }
    }
}

/// What an [`AdminRequest`] is about.
#[derive(Debug, Clone, Copy)]
pub enum AdminResource<'a> {
    /// An environment (`id` "" while it is being created).
    Environment {
        /// Its id.
        id: &'a str,
        /// Its name.
        name: &'a str,
        /// The user name of who created it (or is creating it).
        created_by: &'a str,
        /// What created it: `user`, `service` or `cli` (an operator on the gateway's host).
        created_by_kind: &'a str,
    },
    /// A secret (or, for a listing, the prefix listed), with its tags.
    Secret {
        /// Its path.
        path: &'a str,
        /// Its tags.
        tags: &'a std::collections::BTreeMap<String, String>,
        /// Whether the asker's commit reached its ref through Gatehouse (`context.provenance`).
        provenance: &'a Provenance,
    },
    /// A CI job, by its id.
    Job {
        /// Its id.
        id: &'a str,
    },
    /// A repository (`job:mint`: a token for one of its CI jobs).
    Repo {
        /// The repository.
        repo: &'a RepoRef,
        /// The job, as the forge describes it (`context.job`).
        job: &'a gatehouse_core::Workload,
    },
    /// A webhook (`*` for every hook).
    Hook {
        /// Its name.
        name: &'a str,
    },
    /// A revocation of `kind` `value` (both "" for the list).
    Revocation {
        /// token, session, ssh-cert, subject, service-account, environment.
        kind: &'a str,
        /// What it names.
        value: &'a str,
    },
}

/// What the push index says of a CI job's commit: the context's `provenance` in a `secret:*`
/// question.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The asker is a workload whose token names a repository, a ref and a commit, so the push
    /// index was asked.
    pub checked: bool,
    /// The push that moved that ref to that commit through Gatehouse, when one did: who pushed,
    /// when (seconds since the epoch) and the audit record that announced it.
    pub pushed: Option<(String, i64, i64)>,
}

/// The ref a `ref:*` question is about.
#[derive(Debug, Clone, Copy)]
pub struct RefFacts<'a> {
    /// The full ref name, e.g. `refs/heads/main`.
    pub name: &'a str,
    /// The current object id (zeros when created).
    pub old: &'a str,
    /// The new object id (zeros when deleted).
    pub new: &'a str,
}

/// What the policy said about each ref of a push.
#[derive(Debug, Clone)]
pub struct RefDecisions {
    /// One decision per ref update, in the push's order.
    pub per_ref: Vec<Decision>,
}

impl RefDecisions {
    /// The refused refs: their index in the push and the reason code.
    pub fn refused(&self) -> Vec<(usize, Arc<str>)> {
        self.per_ref
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.allowed)
            .map(|(i, d)| (i, d.reason.clone()))
            .collect()
    }

    /// The first refusal, which decides the push as a whole.
    pub fn first_denial(&self) -> Option<&Decision> {
        self.per_ref.iter().find(|d| !d.allowed)
    }
}

/// One question to the policy.
#[derive(Debug, Clone)]
pub struct AuthzRequest<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// To do what.
    pub action: Action,
    /// To what.
    pub resource: &'a Resource,
    /// In which circumstances.
    pub facts: RequestFacts<'a>,
}

/// A decision with the text of the policies that made it, for `gatehouse policy explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// `(id, source text)` of each deciding policy.
    pub deciding: Vec<(String, String)>,
    /// Evaluation errors. Cedar skips a policy that errs; a skipped `forbid` could widen access,
    /// so any error turns an allow into a deny (`policy_evaluation_error`).
    pub errors: Vec<String>,
}

/// Everything a decision depends on. Decisions are pure functions of this key and the policy set,
/// so they are cached per engine (a reloaded policy is a new engine with an empty cache).
///
/// A lookup hashes the request's borrowed fields ([`PolicyEngine::cache_hash`]) and compares them
/// with [`CacheKey::matches`]: a cache hit copies nothing. The key itself is built only to be
/// stored, after a miss.
#[derive(Debug, Clone)]
struct CacheKey {
    principal: Principal,
    action: Action,
    resource: Resource,
    source_ip: IpAddr,
    method: String,
    host: String,
    wiki: bool,
    via: Via,
    git_ref: Option<(String, String, String)>,
}

impl CacheKey {
    fn new(q: &AuthzRequest<'_>) -> Self {
        let mut principal = q.principal.clone();
        // The credential's id and expiry do not reach the policy.
        principal.token_id = None;
        principal.expires_at = None;
        Self {
            principal,
            action: q.action,
            resource: q.resource.clone(),
            source_ip: q.facts.source_ip,
            method: q.facts.method.to_owned(),
            host: q.facts.host.to_owned(),
            wiki: q.facts.wiki,
            via: q.facts.via,
            git_ref: q
                .facts
                .git_ref
                .map(|r| (r.name.to_owned(), r.old.to_owned(), r.new.to_owned())),
        }
    }

    /// Whether this key is what `q` would make (the credential's id and expiry left out).
    fn matches(&self, q: &AuthzRequest<'_>) -> bool {
        let stored = AuthzRequest {
            principal: &self.principal,
            action: self.action,
            resource: &self.resource,
            facts: RequestFacts {
                source_ip: self.source_ip,
                method: &self.method,
                host: &self.host,
                wiki: self.wiki,
                via: self.via,
                git_ref: self
                    .git_ref
                    .as_ref()
                    .map(|(name, old, new)| RefFacts { name, old, new }),
            },
        };
        KeyView::of(&stored) == KeyView::of(q)
    }
}

/// Everything a cached decision is keyed by, borrowed from a request: one definition for both
/// the hash and the comparison, so the two can never disagree. The request's facts are taken
/// apart field by field, with no `..`, and the principal through [`Principal::claims`]: a field
/// added to either does not compile until it is part of the key or said to be left out.
#[derive(PartialEq, Eq, Hash)]
struct KeyView<'a> {
    claims: gatehouse_core::Claims<'a>,
    action: Action,
    resource: &'a Resource,
    source_ip: IpAddr,
    method: &'a str,
    host: &'a str,
    wiki: bool,
    via: Via,
    git_ref: Option<(&'a str, &'a str, &'a str)>,
}

impl<'a> KeyView<'a> {
    fn of(q: &AuthzRequest<'a>) -> Self {
        let RequestFacts {
            source_ip,
            method,
            host,
            wiki,
            via,
            git_ref,
        } = q.facts;
        Self {
            claims: q.principal.claims(),
            action: q.action,
            resource: q.resource,
            source_ip,
            method,
            host,
            wiki,
            via,
            git_ref: git_ref.map(|r| (r.name, r.old, r.new)),
        }
    }
}

/// Decisions by the keyed hash of their key (already a hash: not hashed again).
type DecisionCache = HashMap<u64, Vec<(CacheKey, Decision)>, gatehouse_core::Prehashed>;

/// The most decisions remembered per engine; the cache is emptied when full.
const DECISION_CACHE_MAX: usize = 65_536;

/// A validated policy set, ready to answer questions. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: PolicySet,
    schema: Schema,
    action_entities: Vec<Entity>,
    authorizer: Authorizer,
    forge: String,
    count: usize,
    /// Decisions by [`PolicyEngine::cache_hash`]; the keys tell colliding requests apart.
    cache: RwLock<DecisionCache>,
    /// Keys the cache's hashes (per engine, randomly: a client cannot aim collisions).
    cache_hasher: std::hash::RandomState,
}

fn type_name(name: &str) -> EntityTypeName {
    // The names passed here are the fixed type names of SCHEMA, which always parse.
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
        .unwrap_or_else(|_| unreachable!("fixed type name {name}"))
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(ty), EntityId::new(id))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

/// `principal.workload`, every field of the schema's `Workload` type.
fn workload_record(
    w: &gatehouse_core::Workload,
    issuer: &str,
) -> Result<RestrictedExpression, String> {
    let fields = w
        .fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), s(v)))
        .chain(std::iter::once((
            "job_id".to_owned(),
            s(&w.job_id(issuer).unwrap_or_default()),
        )));
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

impl PolicyEngine {
    /// Parses and validates policy text. Policies are named by their `@id("...")` annotation (or
    /// `policyN` by position); an optional `@reason("...")` on a `forbid` becomes the reason code
    /// a denied client sees.
    pub fn new(src: &str, forge: &str) -> Result<Self, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let parsed = PolicySet::from_str(src).map_err(|e| {
            PolicyError::Parse(Problems(
                e.iter()
                    .map(|p| problem(src, p as &dyn miette::Diagnostic, None))
                    .collect(),
            ))
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Template);
        }
        let mut policies = PolicySet::new();
        let mut seen = HashSet::new();
        let mut count = 0;
        for p in parsed.policies() {
            let p = match p.annotation("id") {
                Some(id) => {
                    if !seen.insert(id.to_owned()) {
                        return Err(PolicyError::DuplicateId(id.to_owned()));
                    }
                    p.new_id(PolicyId::new(id))
                }
                None => p.clone(),
            };
            policies.add(p).map_err(|e| {
                PolicyError::Parse(Problems(vec![Problem {
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                }]))
            })?;
            count += 1;
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Validation(Problems(
                result
                    .validation_errors()
                    .map(|e| problem(src, e as &dyn miette::Diagnostic, None))
                    .collect(),
            )));
        }
        // A policy that can never apply is a mistake, and a dangerous one in a `forbid` (one
        // written for an action that no longer applies to that resource protects nothing): it is
        // refused, not warned about.
        let never: Vec<Problem> = result
            .validation_warnings()
            .filter(|w| {
                matches!(
                    w,
                    cedar_policy::ValidationWarning::ImpossiblePolicy(_)
                        | cedar_policy::ValidationWarning::InvalidActionApplication(_)
                )
            })
            .map(|w| {
                problem(
                    src,
                    w as &dyn miette::Diagnostic,
                    Some(" (this policy can never apply; see the actions in docs/policy.md)"),
                )
            })
            .collect();
        if !never.is_empty() {
            return Err(PolicyError::Validation(Problems(never)));
        }
        let action_entities = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(e.to_string()))?
            .into_iter()
            .collect();
        Ok(Self {
            policies,
            schema,
            action_entities,
            authorizer: Authorizer::new(),
            forge: forge.to_owned(),
            count,
            cache: RwLock::new(HashMap::default()),
            cache_hasher: std::hash::RandomState::new(),
        })
    }

    /// The repositories (`owner/repo`) the policies name in their resource scope
    /// (`resource == Gatehouse::Repo::"owner/repo"`), sorted, for pages that list what a caller
    /// can reach. Conditions and `in Owner` scopes name no single repository and are not listed.
    pub fn named_repositories(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .policies
            .policies()
            .filter_map(|p| match p.resource_constraint() {
                cedar_policy::ResourceConstraint::Eq(uid)
                    if uid.type_name().basename() == "Repo" =>
                {
                    Some(uid.id().unescaped().to_owned())
                }
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no policy is loaded (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn principal_entity(&self, p: &Principal) -> Result<(EntityUid, Vec<Entity>), String> {
        let ty = match p.kind {
            PrincipalKind::User => "User",
            PrincipalKind::Service => "ServiceAccount",
        };
        let id = uid(ty, &p.username);
        let mut attrs = HashMap::from([
            ("subject".to_owned(), s(&p.subject)),
            ("issuer".to_owned(), s(&p.issuer)),
            ("username".to_owned(), s(&p.username)),
        ]);
        if let Some(e) = &p.email {
            attrs.insert("email".to_owned(), s(e));
        }
        if let Some(n) = &p.display_name {
            attrs.insert("name".to_owned(), s(n));
        }
        if let Some(w) = &p.workload
            && p.kind == PrincipalKind::Service
        {
            attrs.insert("workload".to_owned(), workload_record(w, &p.issuer)?);
        }
        let groups: Vec<EntityUid> = p.groups.iter().map(|g| uid("Group", g)).collect();
        let mut out: Vec<Entity> = groups
            .iter()
            .map(|g| Entity::new_no_attrs(g.clone(), HashSet::new()))
            .collect();
        let me = Entity::new(id.clone(), attrs, groups.into_iter().collect())
            .map_err(|e| e.to_string())?;
        out.push(me);
        Ok((id, out))
    }

    fn resource_entity(&self, r: &Resource) -> Result<(EntityUid, Vec<Entity>), String> {
        match r {
            Resource::Repo(repo) => {
                let forge = uid("Forge", &self.forge);
                let owner = uid("Owner", &repo.owner);
                let path = repo.path();
                let id = uid("Repo", &path);
                let owner_e = Entity::new(
                    owner.clone(),
                    HashMap::from([("name".to_owned(), s(&repo.owner))]),
                    HashSet::from([forge.clone()]),
                )
                .map_err(|e| e.to_string())?;
                let repo_e = Entity::new(
                    id.clone(),
                    HashMap::from([
                        ("owner".to_owned(), s(&repo.owner)),
                        ("name".to_owned(), s(&repo.name)),
                        ("path".to_owned(), s(&path)),
                    ]),
                    HashSet::from([owner]),
                )
                .map_err(|e| e.to_string())?;
                Ok((
                    id,
                    vec![Entity::new_no_attrs(forge, HashSet::new()), owner_e, repo_e],
                ))
            }
            Resource::Owner(owner) => {
                let forge = uid("Forge", &self.forge);
                let id = uid("Owner", &owner.name);
                let e = Entity::new(
                    id.clone(),
                    HashMap::from([("name".to_owned(), s(&owner.name))]),
                    HashSet::from([forge.clone()]),
                )
                .map_err(|e| e.to_string())?;
                Ok((id, vec![Entity::new_no_attrs(forge, HashSet::new()), e]))
            }
            Resource::Route(route) => {
                let id = uid(
                    "Route",
                    &format!("{} {}{}", route.method, route.host, route.path),
                );
                let e = Entity::new(
                    id.clone(),
                    HashMap::from([
                        ("host".to_owned(), s(&route.host)),
                        ("path".to_owned(), s(&route.path)),
                        ("method".to_owned(), s(&route.method)),
                    ]),
                    HashSet::new(),
                )
                .map_err(|e| e.to_string())?;
                Ok((id, vec![e]))
            }
        }
    }

    fn cedar_request(&self, q: &AuthzRequest<'_>) -> Result<(Request, Entities), String> {
        let (p, mut entities) = self.principal_entity(q.principal)?;
        let (r, res) = self.resource_entity(q.resource)?;
        entities.extend(res);
        entities.extend(self.action_entities.iter().cloned());
        let mut pairs = vec![
            (
                "source_ip".to_owned(),
                RestrictedExpression::new_ip(q.facts.source_ip.to_string()),
            ),
            ("method".to_owned(), s(q.facts.method)),
            ("host".to_owned(), s(q.facts.host)),
            (
                "wiki".to_owned(),
                RestrictedExpression::new_bool(q.facts.wiki),
            ),
            ("via".to_owned(), s(q.facts.via.as_str())),
        ];
        if let Some(r) = q.facts.git_ref {
            pairs.push(("ref".to_owned(), s(r.name)));
            pairs.push(("old".to_owned(), s(r.old)));
            pairs.push(("new".to_owned(), s(r.new)));
        }
        let ctx = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let a = uid("Action", q.action.as_str());
        let req = Request::new(p, a, r, ctx, Some(&self.schema)).map_err(|e| e.to_string())?;
        let ents = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok((req, ents))
    }

    /// Decides a token exchange for one role (never cached: exchanges are rare and each carries
    /// its own lifetime). Anything that goes wrong while building the question is a deny.
    pub fn decide_exchange(&self, q: &ExchangeRequest<'_>) -> Decision {
        let role = || -> Result<(EntityUid, Vec<Entity>), String> {
            let r = uid("Role", q.role);
            let e = Entity::new(
                r.clone(),
                HashMap::from([("name".to_owned(), s(q.role))]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?;
            Ok((r, vec![e]))
        };
        self.ask_uncached(
            q.principal,
            "token:exchange",
            role,
            q.source_ip,
            "POST",
            q.host,
            vec![
                ("environment".to_owned(), s(q.environment.unwrap_or(""))),
                (
                    "lifetime".to_owned(),
                    RestrictedExpression::new_long(q.lifetime),
                ),
            ],
        )
    }

    /// One uncached question about something other than the forge (a role, Gatehouse's own
    /// state): the request context's attributes (`wiki` false, `via` `api`) and `extra`. Anything
    /// that goes wrong while building the question is a deny.
    #[allow(clippy::too_many_arguments)]
    fn ask_uncached(
        &self,
        principal: &Principal,
        action: &str,
        resource: impl FnOnce() -> Result<(EntityUid, Vec<Entity>), String>,
        source_ip: IpAddr,
        method: &str,
        host: &str,
        extra: Vec<(String, RestrictedExpression)>,
    ) -> Decision {
        let built = (|| -> Result<(Request, Entities), String> {
            let (p, mut entities) = self.principal_entity(principal)?;
            let (r, e) = resource()?;
            entities.extend(e);
            entities.extend(self.action_entities.iter().cloned());
            let mut pairs = vec![
                (
                    "source_ip".to_owned(),
                    RestrictedExpression::new_ip(source_ip.to_string()),
                ),
                ("method".to_owned(), s(method)),
                ("host".to_owned(), s(host)),
                ("wiki".to_owned(), RestrictedExpression::new_bool(false)),
                ("via".to_owned(), s(Via::Api.as_str())),
            ];
            pairs.extend(extra);
            let ctx = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
            let a = uid("Action", action);
            let req = Request::new(p, a, r, ctx, Some(&self.schema)).map_err(|e| e.to_string())?;
            let ents = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
            Ok((req, ents))
        })();
        match built {
            Ok((req, ents)) => self.answer(&req, &ents).decision,
            Err(_) => Decision::new(false, vec![], "policy_request_invalid"),
        }
    }

    /// Decides a question about Gatehouse's own state (never cached). Anything that goes wrong
    /// while building the question is a deny.
    pub fn decide_admin(&self, q: &AdminRequest<'_>) -> Decision {
        let resource = || -> Result<(EntityUid, Vec<Entity>), String> {
            let (r, attrs) = match q.resource {
                // A repository is in its owner, in the forge, as in any git or web question.
                AdminResource::Repo { repo, .. } => {
                    return self.resource_entity(&Resource::Repo(repo.clone()));
                }
                // A secret carries its tags as Cedar entity tags.
                AdminResource::Secret { path, tags, .. } => {
                    let r = uid("Secret", path);
                    let e = Entity::new_with_tags(
                        r.clone(),
                        HashMap::from([("path".to_owned(), s(path))]),
                        HashSet::new(),
                        tags.iter().map(|(k, v)| (k.clone(), s(v))),
                    )
                    .map_err(|e| e.to_string())?;
                    return Ok((r, vec![e]));
                }
                AdminResource::Environment {
                    id,
                    name,
                    created_by,
                    created_by_kind,
                } => (
                    uid("Environment", id),
                    HashMap::from([
                        ("name".to_owned(), s(name)),
                        ("created_by".to_owned(), s(created_by)),
                        ("created_by_kind".to_owned(), s(created_by_kind)),
                    ]),
                ),
                AdminResource::Job { id } => {
                    (uid("Job", id), HashMap::from([("id".to_owned(), s(id))]))
                }
                AdminResource::Hook { name } => (
                    uid("Hook", name),
                    HashMap::from([("name".to_owned(), s(name))]),
                ),
                AdminResource::Revocation { kind, value } => {
                    let id = if kind.is_empty() {
                        "*".to_owned()
                    } else {
                        format!("{kind}:{value}")
                    };
                    (
                        uid("Revocation", &id),
                        HashMap::from([
                            ("kind".to_owned(), s(kind)),
                            ("value".to_owned(), s(value)),
                        ]),
                    )
                }
            };
            let e = Entity::new(r.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
            Ok((r, vec![e]))
        };
        let extra = match q.resource {
            AdminResource::Secret { provenance, .. } => {
                let (by, at, seq) = provenance.pushed.clone().unwrap_or_default();
                let record = RestrictedExpression::new_record([
                    (
                        "checked".to_owned(),
                        RestrictedExpression::new_bool(provenance.checked),
                    ),
                    (
                        "pushed".to_owned(),
                        RestrictedExpression::new_bool(provenance.pushed.is_some()),
                    ),
                    ("pushed_by".to_owned(), s(&by)),
                    ("pushed_at".to_owned(), RestrictedExpression::new_long(at)),
                    ("audit_seq".to_owned(), RestrictedExpression::new_long(seq)),
                ]);
                match record {
                    Ok(r) => vec![("provenance".to_owned(), r)],
                    Err(_) => return Decision::new(false, vec![], "policy_request_invalid"),
                }
            }
            AdminResource::Repo { job, .. } => match workload_record(job, &job.issuer) {
                Ok(r) => vec![("job".to_owned(), r)],
                Err(_) => return Decision::new(false, vec![], "policy_request_invalid"),
            },
            _ => Vec::new(),
        };
        self.ask_uncached(
            q.principal,
            q.action.as_str(),
            resource,
            q.source_ip,
            q.method,
            q.host,
            extra,
        )
    }

    /// Decides a request. Anything that goes wrong while building the question is a deny.
    /// Decisions are remembered for this policy set: the same question is answered from memory.
    pub fn evaluate(&self, q: &AuthzRequest<'_>) -> Decision {
        let hash = self.cache_hash(q);
        if let Ok(cache) = self.cache.read()
            && let Some(d) = cache
                .get(&hash)
                .and_then(|v| v.iter().find(|(k, _)| k.matches(q)))
        {
            return d.1.clone();
        }
        let decision = self.explain(q).decision;
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= DECISION_CACHE_MAX {
                cache.clear();
            }
            let entries = cache.entry(hash).or_default();
            if !entries.iter().any(|(k, _)| k.matches(q)) {
                entries.push((CacheKey::new(q), decision.clone()));
            }
        }
        decision
    }

    /// The hash of everything [`CacheKey`] holds, from the request's borrowed fields.
    fn cache_hash(&self, q: &AuthzRequest<'_>) -> u64 {
        use std::hash::BuildHasher as _;
        self.cache_hasher.hash_one(KeyView::of(q))
    }

    /// Decides every ref a push changes (`ref:create|update|delete`, with the ref and its old and
    /// new ids in the context), after `git:write` was allowed; HTTP and SSH pushes both ask here.
    /// One refused ref refuses the whole push: that is the caller's to enforce.
    pub fn decide_refs(
        &self,
        principal: &Principal,
        resource: &Resource,
        facts: RequestFacts<'_>,
        push: &PushRequest,
    ) -> RefDecisions {
        let per_ref = push
            .updates
            .iter()
            .map(|u| {
                self.evaluate(&AuthzRequest {
                    principal,
                    action: u.op().action(),
                    resource,
                    facts: RequestFacts {
                        git_ref: Some(RefFacts {
                            name: &u.name,
                            old: &u.old,
                            new: &u.new,
                        }),
                        ..facts
                    },
                })
            })
            .collect();
        RefDecisions { per_ref }
    }

    /// Decides a request and says which policies decided it and why.
    pub fn explain(&self, q: &AuthzRequest<'_>) -> Explanation {
        let (req, ents) = match self.cedar_request(q) {
            Ok(x) => x,
            Err(e) => {
                return Explanation {
                    decision: Decision::new(false, vec![], "policy_request_invalid"),
                    deciding: vec![],
                    errors: vec![e],
                };
            }
        };
        self.answer(&req, &ents)
    }

    /// Cedar's answer to a built request, with its reason and the deciding policies.
    fn answer(&self, req: &Request, ents: &Entities) -> Explanation {
        let resp = self.authorizer.is_authorized(req, &self.policies, ents);
        let mut ids: Vec<String> = resp
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        ids.sort();
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        let cedar_allowed = resp.decision() == cedar_policy::Decision::Allow;
        let allowed = cedar_allowed && errors.is_empty();
        let reason = if allowed {
            "allowed"
        } else if cedar_allowed {
            "policy_evaluation_error"
        } else if let Some(id) = ids.first() {
            self.policies
                .policy(&PolicyId::new(id))
                .and_then(|p| p.annotation("reason"))
                .unwrap_or("forbidden_by_policy")
        } else {
            "no_matching_permit"
        };
        let deciding = ids
            .iter()
            .filter_map(|id| {
                self.policies
                    .policy(&PolicyId::new(id))
                    .map(|p| (id.clone(), p.to_string()))
            })
            .collect();
        Explanation {
            decision: Decision::new(allowed, ids, reason),
            deciding,
            errors,
        }
    }
}

#[cfg(test)]
mod tests;
