//! Gatehouse's own state over HTTP: environments (`POST /.gatehouse/envs`, `GET` and `DELETE
//! /.gatehouse/envs/{id}`) and revocations (`GET` and `POST /.gatehouse/revocations`, `DELETE
//! /.gatehouse/revocations/{kind}/{value}`). Callers authenticate like any API client; each
//! request is one policy question (`env:create`, `env:end`, `revocation:read|create|lift`) asked
//! of the core, and audited. A write is answered only once the store has committed it.
//!
//! The state itself is behind [`StateStore`], which the app implements over `gatehouse-store`:
//! this crate never knows which database holds it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use gatehouse_audit::AuditRecord;
use gatehouse_core::{RevocationKind, UnixTime};
use gatehouse_policy::{AdminAction, AdminRequest, AdminResource};
use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal, typed_response};

/// Largest request body read.
const MAX_BODY: usize = 16 * 1024;
/// Longest life an environment is given over the API.
const MAX_ENV_TTL: i64 = 30 * 86_400;

/// An environment as the API shows it.
#[derive(Debug, Clone)]
pub struct EnvironmentView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who created it.
    pub created_by: String,
    /// When (seconds since the epoch).
    pub created_at: i64,
    /// When it ends by itself.
    pub expires_at: i64,
    /// When it was ended, if it was.
    pub ended_at: Option<i64>,
}

impl EnvironmentView {
    /// Whether credentials may still be bound to it at `now`.
    pub(crate) fn is_live(&self, now: i64) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }

    fn json(&self) -> serde_json::Value {
        let t = |s: i64| UnixTime::from_secs(s).to_rfc3339();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "created_by": self.created_by,
            "created_at": t(self.created_at),
            "expires_at": t(self.expires_at),
            "ended_at": self.ended_at.map(t),
        })
    }
}

/// A revocation in force, as the API lists it.
#[derive(Debug, Clone)]
pub struct RevocationView {
    /// What it names.
    pub kind: RevocationKind,
    /// The value.
    pub value: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When (seconds since the epoch).
    pub at: i64,
    /// When it lapses.
    pub until: Option<i64>,
}

/// Why the store refused.
#[derive(Debug, Clone)]
pub enum StateError {
    /// The request asks for something that cannot be (the text says why): the client's fault.
    Invalid(String),
    /// The store could not be used.
    Unavailable(String),
}

/// Gatehouse's durable state, as the API and the token endpoint use it.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The environment `id`, ended or not.
    fn environment<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvironmentView>, StateError>>;
    /// Creates an environment that ends by itself `ttl` seconds from now.
    fn create_environment<'a>(
        &'a self,
        name: &'a str,
        created_by: &'a str,
        ttl: i64,
    ) -> BoxFuture<'a, Result<EnvironmentView, StateError>>;
    /// Ends the environment `id` (everything bound to it is revoked first).
    fn end_environment<'a>(
        &'a self,
        id: &'a str,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvironmentView>, StateError>>;
    /// Records a revocation; its sequence number in the log.
    fn revoke<'a>(
        &'a self,
        kind: RevocationKind,
        value: &'a str,
        reason: &'a str,
        actor: &'a str,
        until: Option<i64>,
    ) -> BoxFuture<'a, Result<i64, StateError>>;
    /// Lifts one; `None`: none was in force.
    fn lift<'a>(
        &'a self,
        kind: RevocationKind,
        value: &'a str,
        actor: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, StateError>>;
    /// The revocations in force.
    fn revocations(&self) -> BoxFuture<'_, Result<Vec<RevocationView>, StateError>>;
    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>>;
}

fn refused(e: StateError) -> (Refusal, ClientKind) {
    let r = match e {
        StateError::Invalid(why) => Refusal::BadRequest {
            code: "invalid_request",
            detail: why,
        },
        StateError::Unavailable(why) => {
            // The driver's words stay in the log; the client learns only that the store failed.
            tracing::error!(error = %why, "store unavailable");
            Refusal::StoreUnavailable("the store did not answer".into())
        }
    };
    (r, ClientKind::Api)
}

pub(crate) fn bad(detail: impl Into<String>) -> (Refusal, ClientKind) {
    (
        Refusal::BadRequest {
            code: "invalid_request",
            detail: detail.into(),
        },
        ClientKind::Api,
    )
}

pub(crate) fn json(status: StatusCode, doc: &serde_json::Value) -> Response<Body> {
    typed_response(status, doc.to_string(), "application/json", "no-store")
}

/// A JSON object body, or an empty object for no body (an operation with only optional
/// fields).
pub(crate) fn object_or_empty(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, (Refusal, ClientKind)> {
    if body.is_empty() {
        Ok(serde_json::Map::new())
    } else {
        object(body)
    }
}

/// A JSON object body.
pub(crate) fn object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, (Refusal, ClientKind)> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(bad("send a JSON object")),
    }
}

pub(crate) fn text_field<'a>(
    m: &'a serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<Option<&'a str>, (Refusal, ClientKind)> {
    match m.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{k} must be a string"))),
    }
}

/// A duration field (`"8h"`, `"90s"`, `"2d"`) in seconds.
pub(crate) fn duration_field(
    m: &serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<Option<i64>, (Refusal, ClientKind)> {
    let Some(t) = text_field(m, k)? else {
        return Ok(None);
    };
    gatehouse_config::ConfigDuration::parse(t)
        .map(|d| Some(d.0.as_secs() as i64))
        .map_err(|e| bad(format!("{k}: {e}")))
}

impl Gateway {
    /// Enables the state API and environments in token exchanges (the app implements the store).
    pub fn with_state(mut self, state: Option<Arc<dyn StateStore>>) -> Self {
        self.state = state;
        self
    }

    /// Gatehouse's state, when the app gave it one.
    pub(crate) fn state(&self) -> Option<&Arc<dyn StateStore>> {
        self.state.as_ref()
    }

    fn state_store(&self) -> Result<&Arc<dyn StateStore>, (Refusal, ClientKind)> {
        self.state.as_ref().ok_or_else(|| {
            (
                Refusal::BadRequest {
                    code: "not_found",
                    detail: "this gateway has no store".into(),
                },
                ClientKind::Api,
            )
        })
    }

    /// The caller of one of Gatehouse's own APIs, and how records name it (`kind:username`):
    /// authenticated like any API client (bearer token or Basic, never a browser session), and
    /// never from another site for a write (a browser replays cached Basic credentials).
    pub(crate) async fn api_caller(
        &self,
        headers: &http::HeaderMap,
        method: &Method,
        path: &str,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<(Arc<gatehouse_core::Principal>, String), (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        if method != Method::GET
            && method != Method::HEAD
            && let Some(refusal) =
                crate::portal::cross_site_write(headers, &adm.host, method.as_str(), path)
        {
            rec.decision = Some("deny");
            return Err((refusal, kind));
        }
        let principal = match self.identify(headers, adm, rec, kind, false).await? {
            Some((p, _)) => p,
            None => return Err(crate::portal::missing(kind)),
        };
        let actor = format!("{}:{}", principal.kind.as_str(), principal.username);
        Ok((principal, actor))
    }

    /// Asks the core; a denial is a refusal (and on record).
    pub(crate) fn admit_admin(
        &self,
        q: &AdminRequest<'_>,
        rec: &mut AuditRecord,
        what: String,
    ) -> Result<(), (Refusal, ClientKind)> {
        let d = self.decider.decide_admin(q);
        rec.action = Some(q.action.as_str());
        rec.policy = Some(d.deciding_policy());
        rec.reason = Some(d.reason.clone());
        if d.allowed {
            rec.decision = Some("allow");
            Ok(())
        } else {
            rec.decision = Some("deny");
            Err((
                Refusal::Forbidden {
                    reason: d.reason.clone(),
                    what,
                },
                ClientKind::Api,
            ))
        }
    }

    /// Serves `/.gatehouse/envs...` and `/.gatehouse/revocations...`.
    pub(crate) async fn state_api(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let state = self.state_store()?.clone();
        let method = req.method().clone();
        let (principal, actor) = self
            .api_caller(req.headers(), &method, req.uri().path(), adm, rec)
            .await?;
        let path = req.uri().path().to_owned();
        let rest = path.strip_prefix("/.gatehouse/").unwrap_or("");
        let segments: Vec<String> = rest
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let body = crate::proxy::read_limited(req.into_body(), MAX_BODY)
            .await
            .map_err(|r| (r, kind))?;
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        // POST /.gatehouse/jobs/{job id, slashes and all}:end
        if let Some(job) = rest.strip_prefix("jobs/") {
            let Some(id) = job.strip_suffix(":end").filter(|_| method == Method::POST) else {
                return Err(bad("end a job with POST /.gatehouse/jobs/{id}:end"));
            };
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .map_err(|_| bad("the job id is not UTF-8"))?
                .into_owned();
            RevocationKind::Job.check_value(&id).map_err(bad)?;
            self.admit_admin(
                &AdminRequest {
                    principal: &principal,
                    action: AdminAction::JobEnd,
                    resource: AdminResource::Job { id: &id },
                    source_ip: adm.client,
                    method: "POST",
                    host: &adm.host,
                },
                rec,
                format!("job:end of {id}"),
            )?;
            let m = object_or_empty(&body)?;
            let reason = text_field(&m, "reason")?.unwrap_or("job ended");
            let until = self
                .clock
                .now()
                .as_secs()
                .saturating_add(gatehouse_core::JOB_ENDED_FOR);
            let seq = state
                .revoke(RevocationKind::Job, &id, reason, &actor, Some(until))
                .await
                .map_err(refused)?;
            // Its leases are revoked after its tokens: nothing can read under a new one then.
            let leases = match &self.secrets {
                Some(b) => b.end_job(&id, &actor).await.map_err(|e| {
                    tracing::error!(error = %e, job = %id, "the job's leases were not revoked");
                    (
                        Refusal::StoreUnavailable(
                            "the job's tokens are revoked but its leases were not; end it again"
                                .into(),
                        ),
                        kind,
                    )
                })?,
                None => 0,
            };
            rec.detail = Some(format!(
                "job {id} ended (log entry {seq}), {leases} leases revoked"
            ));
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "job": id, "ended": true, "seq": seq, "leases_revoked": leases }),
            ));
        }
        match (method.as_str(), seg.as_slice()) {
            ("POST", ["envs"]) => {
                let m = object(&body)?;
                let name = text_field(&m, "name")?.ok_or_else(|| bad("name is missing"))?;
                let ttl = duration_field(&m, "ttl")?.unwrap_or(8 * 3600);
                if !(1..=MAX_ENV_TTL).contains(&ttl) {
                    return Err(bad("ttl must be between 1s and 30d"));
                }
                self.admit_admin(
                    &AdminRequest {
                        principal: &principal,
                        action: AdminAction::EnvCreate,
                        resource: AdminResource::Environment {
                            id: "",
                            name,
                            created_by: &principal.username,
                            created_by_kind: principal.kind.as_str(),
                        },
                        source_ip: adm.client,
                        method: "POST",
                        host: &adm.host,
                    },
                    rec,
                    format!("env:create of {name:?}"),
                )?;
                let env = state
                    .create_environment(name, &actor, ttl)
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!("environment {} ({}) created", env.id, env.name));
                Ok(json(StatusCode::CREATED, &env.json()))
            }
            (m @ ("GET" | "HEAD" | "DELETE"), ["envs", id]) => {
                let env = state.environment(id).await.map_err(refused)?;
                // Seeing an environment is for those who may end it. One that does not exist is
                // asked about as nobody's, so that a caller who may not end others' cannot tell
                // which ids exist (403 either way).
                let (name, creator_kind, creator) = match &env {
                    Some(e) => {
                        let (k, u) = e.created_by.split_once(':').unwrap_or(("", &e.created_by));
                        (e.name.as_str(), k, u)
                    }
                    None => ("", "", ""),
                };
                self.admit_admin(
                    &AdminRequest {
                        principal: &principal,
                        action: AdminAction::EnvEnd,
                        resource: AdminResource::Environment {
                            id,
                            name,
                            created_by: creator,
                            created_by_kind: creator_kind,
                        },
                        source_ip: adm.client,
                        method: m,
                        host: &adm.host,
                    },
                    rec,
                    format!("env:end of {id}"),
                )?;
                let env =
                    env.ok_or_else(|| (Refusal::NotFound(format!("no environment {id}")), kind))?;
                if m != "DELETE" {
                    return Ok(json(StatusCode::OK, &env.json()));
                }
                let ended = state
                    .end_environment(id, &actor)
                    .await
                    .map_err(refused)?
                    .ok_or_else(|| (Refusal::NotFound(format!("no environment {id}")), kind))?;
                rec.detail = Some(format!("environment {id} ended"));
                Ok(json(StatusCode::OK, &ended.json()))
            }
            ("GET" | "HEAD", ["revocations"]) => {
                self.admit_admin(
                    &AdminRequest {
                        principal: &principal,
                        action: AdminAction::RevocationRead,
                        resource: AdminResource::Revocation {
                            kind: "",
                            value: "",
                        },
                        source_ip: adm.client,
                        method: method.as_str(),
                        host: &adm.host,
                    },
                    rec,
                    "revocation:read".into(),
                )?;
                let all = state.revocations().await.map_err(refused)?;
                let t = |s: i64| UnixTime::from_secs(s).to_rfc3339();
                let list: Vec<serde_json::Value> = all
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "kind": r.kind.as_str(),
                            "value": r.value,
                            "reason": r.reason,
                            "by": r.actor,
                            "at": t(r.at),
                            "until": r.until.map(t),
                        })
                    })
                    .collect();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "revocations": list }),
                ))
            }
            ("POST", ["revocations"]) => {
                let m = object(&body)?;
                let k = text_field(&m, "kind")?.ok_or_else(|| bad("kind is missing"))?;
                let rk = RevocationKind::parse(k).ok_or_else(|| {
                    bad("kind is one of token, session, ssh-cert, subject, service-account")
                })?;
                if rk == RevocationKind::Environment || rk == RevocationKind::Job {
                    // Ending an environment is `env:end` (DELETE /.gatehouse/envs/{id}), ending a
                    // job `job:end` (POST /.gatehouse/jobs/{id}:end): never a revocation anyone
                    // with revocation:create could write or re-write.
                    return Err(bad(
                        "an environment is ended with DELETE /.gatehouse/envs/{id}, a job with \
                         POST /.gatehouse/jobs/{id}:end, not revoked",
                    ));
                }
                let value = text_field(&m, "value")?.ok_or_else(|| bad("value is missing"))?;
                rk.check_value(value).map_err(bad)?;
                let reason = text_field(&m, "reason")?.unwrap_or("");
                let until = duration_field(&m, "for")?
                    .map(|d| self.clock.now().as_secs().saturating_add(d));
                self.admit_admin(
                    &AdminRequest {
                        principal: &principal,
                        action: AdminAction::RevocationCreate,
                        resource: AdminResource::Revocation { kind: k, value },
                        source_ip: adm.client,
                        method: "POST",
                        host: &adm.host,
                    },
                    rec,
                    format!("revocation:create of {k} {value}"),
                )?;
                let seq = state
                    .revoke(rk, value, reason, &actor, until)
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!("revoked {k} {value} (log entry {seq})"));
                Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "kind": k, "value": value, "seq": seq }),
                ))
            }
            ("DELETE", ["revocations", k, value]) => {
                let rk = RevocationKind::parse(k).ok_or_else(|| bad("unknown revocation kind"))?;
                self.admit_admin(
                    &AdminRequest {
                        principal: &principal,
                        action: AdminAction::RevocationLift,
                        resource: AdminResource::Revocation { kind: k, value },
                        source_ip: adm.client,
                        method: "DELETE",
                        host: &adm.host,
                    },
                    rec,
                    format!("revocation:lift of {k} {value}"),
                )?;
                match state.lift(rk, value, &actor).await.map_err(refused)? {
                    Some(seq) => {
                        rec.detail = Some(format!("lifted {k} {value} (log entry {seq})"));
                        Ok(json(
                            StatusCode::OK,
                            &serde_json::json!({ "kind": k, "value": value, "seq": seq }),
                        ))
                    }
                    None => Err((
                        Refusal::NotFound(format!("no revocation of {k} {value} is in force")),
                        kind,
                    )),
                }
            }
            _ => Err((Refusal::NotFound("no such Gatehouse endpoint".into()), kind)),
        }
    }
}
