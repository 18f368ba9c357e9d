//! The secrets broker over HTTP, under `/.gatehouse/secrets`. A secret's path is the URL path
//! after that prefix; an operation other than reading, writing or deleting is a `:verb` suffix
//! (paths never hold a `:`):
//!
//! | Request | Policy action | |
//! |---|---|---|
//! | `GET /.gatehouse/secrets?prefix=P[&deleted=true]` | `secret:list` on `Secret::"P"` | paths and tags, never a value |
//! | `GET /.gatehouse/secrets/{path}[?version=N]` | `secret:get` | the value |
//! | `GET /.gatehouse/secrets/{path}:versions` | `secret:list` | versions and their state |
//! | `PUT /.gatehouse/secrets/{path}` | `secret:put` | a new version (JSON: `value` or `value_base64`, `tags`, `not_before`, `expires_at`, `expires_in`, `max_versions`) |
//! | `POST /.gatehouse/secrets/{path}:rotate` | `secret:rotate` | a new version with a generated value |
//! | `POST /.gatehouse/secrets/{path}:tags` | `secret:put` | replaces the tags |
//! | `DELETE /.gatehouse/secrets/{path}` | `secret:delete` | soft delete |
//! | `POST /.gatehouse/secrets/{path}:disable`, `:enable` (JSON `version`), `:recover`, `:purge` | `secret:admin` | |
//! | `POST /.gatehouse/secrets:rewrap` | `secret:admin` on `Secret::""` | after a master key rotation |
//!
//! Each request is one policy question asked of the core with the secret's tags as entity tags
//! (a write that changes tags asks twice: as the secret is and as it would be), and one audit
//! record naming path and version, never the value. Answers carrying a value are `no-store`.

use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse_audit::AuditRecord;
use gatehouse_audit::AuditSecret;
use gatehouse_core::{Principal, UnixTime};
use gatehouse_policy::{AdminAction, AdminRequest, AdminResource, Provenance};
use gatehouse_secrets::wipe::{WipedOnDrop, WipingBuf};
use gatehouse_secrets::{Broker, Expect, Holder, Lease, LeaseFilter, Put, SecretError, SecretInfo};
use http::{Request, Response, StatusCode};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};
use crate::state_api::{bad, duration_field, json, object, object_or_empty, text_field};

/// Largest request body read (a value of 64 KiB in base64, and its fields).
const MAX_BODY: usize = 96 * 1024;

fn refused(e: SecretError) -> (Refusal, ClientKind) {
    let r = match &e {
        SecretError::NotFound(_) => Refusal::NotFound(e.to_string()),
        SecretError::Deleted(_)
        | SecretError::Busy(_)
        | SecretError::Changed(_)
        | SecretError::Disabled { .. }
        | SecretError::NotYetValid { .. }
        | SecretError::Expired { .. } => Refusal::Conflict {
            code: e.code(),
            detail: e.to_string(),
        },
        SecretError::Invalid(_) => Refusal::BadRequest {
            code: "invalid_request",
            detail: e.to_string(),
        },
        _ => {
            // The cause stays in the log; the client learns that the broker failed.
            tracing::error!(error = %e, code = e.code(), "secrets broker failed");
            Refusal::StoreUnavailable(format!("the secrets broker failed ({})", e.code()))
        }
    };
    (r, ClientKind::Api)
}

fn t(secs: i64) -> String {
    UnixTime::from_secs(secs).to_rfc3339()
}

fn info_json(i: &SecretInfo) -> serde_json::Value {
    serde_json::json!({
        "path": i.path,
        "tags": i.tags,
        "latest": i.latest,
        "max_versions": i.max_versions,
        "created_at": t(i.created_at),
        "updated_at": t(i.updated_at),
        "deleted_at": i.deleted_at.map(t),
        "purge_at": i.purge_at.map(t),
    })
}

/// A time field: seconds since the epoch.
fn time_field(
    m: &serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<Option<i64>, (Refusal, ClientKind)> {
    match m.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|s| *s >= 0)
            .map(Some)
            .ok_or_else(|| bad(format!("{k} is seconds since the epoch"))),
    }
}

fn tags_field(
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<BTreeMap<String, String>>, (Refusal, ClientKind)> {
    match m.get("tags") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad(format!("tag {k} must be a string"))),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Some),
        Some(_) => Err(bad("tags is an object of strings")),
    }
}

/// Who asks, from where, how, and whether its commit came through Gatehouse.
struct Asker<'a> {
    principal: &'a Principal,
    adm: &'a Admitted,
    method: &'a str,
    provenance: &'a Provenance,
}

/// The reader a lease names: issuer and subject.
fn holder_of(p: &Principal) -> String {
    format!("{} {}", p.issuer, p.subject)
}

/// Whether `p` is the reader that holds `l`: the same issuer and subject, and the same job (a
/// CI platform's subject is shared by every job of a repository or environment), else the same
/// credential when the lease names one.
fn holds(l: &Lease, p: &Principal) -> bool {
    if l.holder != holder_of(p) {
        return false;
    }
    match (&l.job_id, &l.token_id) {
        (Some(job), _) => p
            .workload
            .as_ref()
            .and_then(|w| w.job_id(&p.issuer))
            .is_some_and(|j| &j == job),
        (None, Some(t)) => p.token_id.as_ref() == Some(t),
        (None, None) => true,
    }
}

fn lease_json(l: &Lease, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": l.id,
        "path": l.path,
        "version": l.version,
        "holder": l.holder,
        "job_id": l.job_id,
        "issued_at": t(l.issued_at),
        "expires_at": t(l.expires_at),
        "live": l.is_live(now),
        "revoked_at": l.revoked_at.map(t),
        "revoked_by": l.revoked_by,
        "reason": l.reason,
    })
}

/// What the push index says of the asker's commit: asked only of a workload whose token names
/// a repository, a ref and a commit. Only a push the forge's report confirmed counts. A push
/// announced less than [`CONFIRM_WAIT`] ago and not yet confirmed is waited for (up to 2 s): the
/// forge sends its report before it runs the hooks that start jobs, and the confirmation is
/// written as soon as the report has passed the gateway (over SSH, when the session ends).
async fn provenance_of(
    broker: &Broker,
    forge: Option<&gatehouse_forge::ForgeApi>,
    p: &Principal,
    fold_case: bool,
    now: i64,
) -> Result<Provenance, (Refusal, ClientKind)> {
    let Some(w) = p
        .workload
        .as_ref()
        .filter(|w| !w.repository.is_empty() && !w.git_ref.is_empty() && !w.commit.is_empty())
    else {
        return Ok(Provenance::default());
    };
    let repo = if fold_case {
        w.repository.to_lowercase()
    } else {
        w.repository.clone()
    };
    let mut found = broker
        .provenance(&repo, &w.git_ref, &w.commit)
        .await
        .map_err(refused)?;
    for _ in 0..10 {
        match &found {
            Some(f) if f.confirmed_at.is_none() && now - f.pushed_at < CONFIRM_WAIT => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                found = broker
                    .provenance(&repo, &w.git_ref, &w.commit)
                    .await
                    .map_err(refused)?;
            }
            _ => break,
        }
    }
    let mut pushed = found.filter(|f| f.confirmed_at.is_some());
    // An annotated tag: its pushes name the tag object, the job runs the commit it points at.
    // The forge peels the tags pushed to that ref through Gatehouse.
    if pushed.is_none()
        && w.git_ref.starts_with("refs/tags/")
        && let Some(forge) = forge
        && let Some((owner, name)) = repo.split_once('/')
    {
        let candidates = broker
            .confirmed_pushes_of(&repo, &w.git_ref)
            .await
            .map_err(refused)?;
        for c in candidates {
            // A forge that cannot say shows nothing: the commit is not shown to be pushed.
            let peeled = forge
                .peel_tag(owner, name, &c.commit)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "a pushed tag could not be peeled");
                    None
                });
            if peeled.is_some_and(|c| c.eq_ignore_ascii_case(&w.commit)) {
                pushed = Some(c);
                break;
            }
        }
    }
    Ok(Provenance {
        checked: true,
        pushed: pushed.map(|f| (f.pushed_by, f.pushed_at, f.audit_seq)),
    })
}

/// How recent an unconfirmed push must be for a provenance check to wait for its confirmation
/// (seconds; counted from the push's start, before its pack was uploaded).
const CONFIRM_WAIT: i64 = 600;

impl Gateway {
    /// Enables the secrets API (the app builds the broker over the store).
    pub fn with_secrets(mut self, broker: Option<Arc<Broker>>) -> Self {
        self.secrets = broker;
        self
    }

    fn admit_secret(
        &self,
        who: &Asker<'_>,
        action: AdminAction,
        path: &str,
        tags: &BTreeMap<String, String>,
        rec: &mut AuditRecord,
    ) -> Result<(), (Refusal, ClientKind)> {
        self.admit_admin(
            &AdminRequest {
                principal: who.principal,
                action,
                resource: AdminResource::Secret {
                    path,
                    tags,
                    provenance: who.provenance,
                },
                source_ip: who.adm.client,
                method: who.method,
                host: &who.adm.host,
            },
            rec,
            format!("{} of {path}", action.as_str()),
        )
    }

    /// The broker, and who asks of it: the API's caller, refused when a Gitea Actions job's
    /// token outlived its job.
    async fn secrets_caller(
        &self,
        req: &http::request::Parts,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<(Arc<Broker>, Arc<Principal>, String), (Refusal, ClientKind)> {
        let Some(broker) = self.secrets.clone() else {
            return Err((
                Refusal::NotFound("this gateway has no secrets broker ([secrets])".into()),
                ClientKind::Api,
            ));
        };
        let (principal, actor) = self
            .api_caller(&req.headers, &req.method, req.uri.path(), adm, rec)
            .await?;
        self.job_still_running(&principal).await?;
        Ok((broker, principal, actor))
    }

    /// Serves `/.gatehouse/secrets...`.
    pub(crate) async fn secrets_api(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let (parts, body) = req.into_parts();
        let (broker, principal, actor) = self.secrets_caller(&parts, adm, rec).await?;
        let req = Request::from_parts(parts, body);
        let method = req.method().clone();
        let raw = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let rest = raw
            .strip_prefix("/.gatehouse/secrets")
            .unwrap_or("")
            .to_owned();
        // The operation is split off before decoding: an encoded `%3A` is part of the path
        // (and refused there), never an operation.
        let (target, verb) = match rest.rsplit_once(':') {
            Some((p, v)) => (p.to_owned(), Some(v.to_owned())),
            None => (rest, None),
        };
        let target = percent_encoding::percent_decode_str(&target)
            .decode_utf8()
            .map_err(|_| bad("the secret path is not UTF-8"))?
            .into_owned();
        let path = target.strip_prefix('/').unwrap_or(&target).to_owned();
        let q: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        // A put's body holds the value: read into a buffer zeroized when the request is done.
        let body_buf = read_wiped(req.into_body(), MAX_BODY)
            .await
            .map_err(|r| (r, kind))?;
        let body = body_buf.as_slice();
        let m = method.as_str();
        rec.detail = Some(format!("secret {path}"));
        rec.secret = Some(AuditSecret {
            path: path.clone(),
            ..AuditSecret::default()
        });
        // The tags the policy sees: the secret's own, when it exists.
        let existing = if path.is_empty() {
            None
        } else {
            match broker.info(&path).await {
                Ok(i) => Some(i),
                Err(SecretError::NotFound(_)) => None,
                Err(e) => return Err(refused(e)),
            }
        };
        let none = BTreeMap::new();
        // What this request is allowed to change: the secret as the policy saw it.
        let expect = match &existing {
            None => Expect::Absent,
            Some(i) => Expect::Tagged(i.tags.clone()),
        };
        let provenance = provenance_of(
            &broker,
            self.decider.forge_api().map(|f| &**f),
            &principal,
            self.decider.flavor().case_insensitive(),
            self.clock.now().as_secs(),
        )
        .await?;
        let who = Asker {
            principal: &principal,
            adm,
            method: m,
            provenance: &provenance,
        };
        let tags = existing.as_ref().map_or(&none, |i| &i.tags);
        match (m, path.as_str(), verb.as_deref()) {
            ("GET" | "HEAD", _, None) if path.is_empty() => {
                let prefix = q.get("prefix").map_or("", String::as_str);
                let deleted = q.get("deleted").is_some_and(|v| v == "true");
                self.admit_secret(&who, AdminAction::SecretList, prefix, &none, rec)?;
                rec.detail = Some(format!("secrets under {prefix:?}"));
                let list = broker.list(prefix, deleted).await.map_err(refused)?;
                // Each secret listed is one the policy lets this caller list, with its own
                // path and tags: a grant on a prefix shows nothing a forbid on a secret hides.
                let docs: Vec<serde_json::Value> = list
                    .iter()
                    .filter(|i| {
                        self.decider
                            .decide_admin(&AdminRequest {
                                principal: &principal,
                                action: AdminAction::SecretList,
                                resource: AdminResource::Secret {
                                    path: &i.path,
                                    tags: &i.tags,
                                    provenance: &provenance,
                                },
                                source_ip: adm.client,
                                method: m,
                                host: &adm.host,
                            })
                            .allowed
                    })
                    .map(info_json)
                    .collect();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "secrets": docs }),
                ))
            }
            // A value is read with GET only: each read holds a lease and is audited as one, and a
            // HEAD would take a lease for a value it never sends.
            ("GET", _, None) => {
                self.admit_secret(&who, AdminAction::SecretGet, &path, tags, rec)?;
                let version = match q.get("version") {
                    None => None,
                    Some(v) => Some(v.parse::<i64>().map_err(|_| bad("version is a number"))?),
                };
                let holder = holder_of(&principal);
                let job_id = principal
                    .workload
                    .as_ref()
                    .and_then(|w| w.job_id(&principal.issuer));
                let (value, meta, lease) = broker
                    .read(
                        &path,
                        version,
                        &Holder {
                            holder: &holder,
                            token_id: principal.token_id.as_deref(),
                            job_id: job_id.as_deref(),
                            expires_at: principal.expires_at,
                        },
                    )
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!(
                    "secret {path} version {} lease {}",
                    meta.version, lease.id
                ));
                rec.secret = Some(AuditSecret {
                    path: path.clone(),
                    version: Some(meta.version),
                    lease: Some(lease.id.clone()),
                });
                let doc = serde_json::json!({
                    "path": path,
                    "version": meta.version,
                    "created_at": t(meta.created_at),
                    "not_before": meta.not_before.map(t),
                    "expires_at": meta.expires_at.map(t),
                    "lease": { "id": lease.id, "expires_at": t(lease.expires_at) },
                });
                // Encoding a JSON object into memory does not fail; were it to, nothing is sent.
                value_answer(&doc, value.expose())
                    .map_err(|e| refused(SecretError::Internal(format!("answer not encoded: {e}"))))
            }
            ("GET", _, Some("versions")) => {
                self.admit_secret(&who, AdminAction::SecretList, &path, tags, rec)?;
                let versions = broker.versions(&path).await.map_err(refused)?;
                let docs: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.version,
                            "enabled": v.enabled,
                            "not_before": v.not_before.map(t),
                            "expires_at": v.expires_at.map(t),
                            "created_at": t(v.created_at),
                            "created_by": v.created_by,
                        })
                    })
                    .collect();
                let info = existing.as_ref().map(info_json);
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "secret": info, "versions": docs }),
                ))
            }
            ("PUT", _, None) => {
                let f = WipedOnDrop(object(body)?);
                let value: zeroize::Zeroizing<Vec<u8>> =
                    match (text_field(&f, "value")?, text_field(&f, "value_base64")?) {
                        (Some(v), None) => zeroize::Zeroizing::new(v.as_bytes().to_vec()),
                        (None, Some(b)) => {
                            use base64::Engine as _;
                            zeroize::Zeroizing::new(
                                base64::engine::general_purpose::STANDARD
                                    .decode(b)
                                    .map_err(|_| bad("value_base64 is not base64"))?,
                            )
                        }
                        _ => return Err(bad("send one of value and value_base64")),
                    };
                let new_tags = tags_field(&f)?;
                let now = self.clock.now().as_secs();
                let expires_at = match (
                    time_field(&f, "expires_at")?,
                    duration_field(&f, "expires_in")?,
                ) {
                    (Some(_), Some(_)) => {
                        return Err(bad("send expires_at or expires_in, not both"));
                    }
                    (a, None) => a,
                    (None, Some(d)) => Some(now.saturating_add(d)),
                };
                let max_versions = match f.get("max_versions") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.as_i64().ok_or_else(|| bad("max_versions is a number"))?),
                };
                match (&existing, &new_tags) {
                    // A new secret: asked about as it will be.
                    (None, t) => self.admit_secret(
                        &who,
                        AdminAction::SecretPut,
                        &path,
                        t.as_ref().unwrap_or(&none),
                        rec,
                    )?,
                    (Some(_), None) => {
                        self.admit_secret(&who, AdminAction::SecretPut, &path, tags, rec)?;
                    }
                    // Re-tagging an existing secret can move it into or out of a policy's reach:
                    // it is `secret:admin`, as it is and as it would be.
                    (Some(_), Some(t)) => {
                        self.admit_secret(&who, AdminAction::SecretPut, &path, tags, rec)?;
                        self.admit_secret(&who, AdminAction::SecretAdmin, &path, tags, rec)?;
                        self.admit_secret(&who, AdminAction::SecretAdmin, &path, t, rec)?;
                    }
                }
                let version = broker
                    .put(&Put {
                        path: &path,
                        value: &value,
                        tags: new_tags,
                        not_before: time_field(&f, "not_before")?,
                        expires_at,
                        max_versions,
                        actor: &actor,
                        expect: expect.clone(),
                    })
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!("secret {path} version {version} written"));
                rec.secret = Some(AuditSecret {
                    path: path.clone(),
                    version: Some(version),
                    lease: None,
                });
                Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "path": path, "version": version }),
                ))
            }
            ("POST", _, Some("tags")) => {
                let f = object(body)?;
                let new_tags = tags_field(&f)?.ok_or_else(|| bad("tags is missing"))?;
                self.admit_secret(&who, AdminAction::SecretAdmin, &path, tags, rec)?;
                self.admit_secret(&who, AdminAction::SecretAdmin, &path, &new_tags, rec)?;
                broker
                    .set_tags(&path, &expect, &new_tags)
                    .await
                    .map_err(refused)?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "path": path, "tags": new_tags }),
                ))
            }
            ("POST", _, Some("rotate")) => {
                let f = object_or_empty(body)?;
                let bytes = match f.get("bytes") {
                    None | Some(serde_json::Value::Null) => 32,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad("bytes is a number"))?,
                };
                self.admit_secret(&who, AdminAction::SecretRotate, &path, tags, rec)?;
                let version = broker
                    .rotate(&path, bytes, &actor, &expect)
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!("secret {path} version {version} generated"));
                rec.secret = Some(AuditSecret {
                    path: path.clone(),
                    version: Some(version),
                    lease: None,
                });
                Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "path": path, "version": version }),
                ))
            }
            ("DELETE", _, None) => {
                self.admit_secret(&who, AdminAction::SecretDelete, &path, tags, rec)?;
                let purge_at = broker.delete(&path, &actor).await.map_err(refused)?;
                rec.detail = Some(format!("secret {path} deleted"));
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "path": path, "deleted": true, "purge_at": t(purge_at) }),
                ))
            }
            ("POST", _, Some(op @ ("disable" | "enable"))) => {
                let f = object_or_empty(body)?;
                let version = match f.get("version") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.as_i64().ok_or_else(|| bad("version is a number"))?),
                };
                self.admit_secret(&who, AdminAction::SecretAdmin, &path, tags, rec)?;
                let v = broker
                    .set_enabled(&path, version, op == "enable")
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!("secret {path} version {v} {op}d"));
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "path": path, "version": v, "enabled": op == "enable" }),
                ))
            }
            ("POST", _, Some(op @ ("recover" | "purge"))) => {
                self.admit_secret(&who, AdminAction::SecretAdmin, &path, tags, rec)?;
                if op == "recover" {
                    broker.recover(&path).await.map_err(refused)?;
                } else {
                    broker.purge(&path).await.map_err(refused)?;
                }
                rec.detail = Some(format!("secret {path} {op}d"));
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "path": path, op: true }),
                ))
            }
            ("POST", "", Some("rewrap")) => {
                self.admit_secret(&who, AdminAction::SecretAdmin, "", &none, rec)?;
                let (n, skipped) = broker.rewrap_all().await.map_err(refused)?;
                rec.detail = Some(format!("{n} data keys rewrapped, {skipped} skipped"));
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "rewrapped": n,
                        "skipped": skipped,
                        "master_key": broker.master_key_id(),
                    }),
                ))
            }
            _ => Err((
                Refusal::MethodNotAllowed(format!(
                    "{m} {raw} is not a secrets operation (see docs/secrets.md)"
                )),
                kind,
            )),
        }
    }

    /// Serves `/.gatehouse/leases...`: the leases reads hold.
    ///
    /// | Request | Who | |
    /// |---|---|---|
    /// | `GET /.gatehouse/leases?job=ID&prefix=P&holder=H&live=true` | `secret:list` on `Secret::"P"`, and on each lease's secret | newest first, at most 1000 |
    /// | `GET /.gatehouse/leases/{id}` | its holder, or `secret:list` on its secret | |
    /// | `POST /.gatehouse/leases/{id}:revoke` | its holder, or `secret:admin` on its secret | JSON `reason` (optional) |
    pub(crate) async fn leases_api(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let (parts, body) = req.into_parts();
        let (broker, principal, actor) = self.secrets_caller(&parts, adm, rec).await?;
        let req = Request::from_parts(parts, body);
        let method = req.method().clone();
        let rest = req
            .uri()
            .path()
            .strip_prefix("/.gatehouse/leases")
            .unwrap_or("")
            .trim_start_matches('/')
            .to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let q: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let body = crate::proxy::read_limited(req.into_body(), MAX_BODY)
            .await
            .map_err(|r| (r, kind))?;
        let provenance = provenance_of(
            &broker,
            self.decider.forge_api().map(|f| &**f),
            &principal,
            self.decider.flavor().case_insensitive(),
            self.clock.now().as_secs(),
        )
        .await?;
        let who = Asker {
            principal: &principal,
            adm,
            method: method.as_str(),
            provenance: &provenance,
        };
        let now = self.clock.now().as_secs();
        let none = BTreeMap::new();
        // A lease's secret's tags, for the policy (none when the secret is gone).
        let tags_of = |path: String| {
            let broker = broker.clone();
            async move {
                match broker.info(&path).await {
                    Ok(i) => Ok(i.tags),
                    Err(SecretError::NotFound(_) | SecretError::Deleted(_)) => Ok(BTreeMap::new()),
                    Err(e) => Err(refused(e)),
                }
            }
        };
        let (id, verb) = match rest.split_once(':') {
            Some((i, v)) => (i.to_owned(), Some(v.to_owned())),
            None => (rest.clone(), None),
        };
        let id = percent_encoding::percent_decode_str(&id)
            .decode_utf8()
            .map_err(|_| bad("the lease id is not UTF-8"))?
            .into_owned();
        match (method.as_str(), id.as_str(), verb.as_deref()) {
            ("GET" | "HEAD", "", None) => {
                let prefix = q.get("prefix").map_or("", String::as_str);
                self.admit_secret(&who, AdminAction::SecretList, prefix, &none, rec)?;
                rec.detail = Some(format!("leases under {prefix:?}"));
                let filter = LeaseFilter {
                    job_id: q.get("job").map(String::as_str),
                    prefix: Some(prefix),
                    holder: q.get("holder").map(String::as_str),
                    live_at: q.get("live").filter(|v| *v == "true").map(|_| now),
                };
                let leases = broker.leases(&filter).await.map_err(refused)?;
                let mut tags: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
                let mut docs = Vec::new();
                for l in &leases {
                    if !tags.contains_key(&l.path) {
                        let t = tags_of(l.path.clone()).await?;
                        tags.insert(l.path.clone(), t);
                    }
                    let allowed = self
                        .decider
                        .decide_admin(&AdminRequest {
                            principal: &principal,
                            action: AdminAction::SecretList,
                            resource: AdminResource::Secret {
                                path: &l.path,
                                tags: tags.get(&l.path).unwrap_or(&none),
                                provenance: &provenance,
                            },
                            source_ip: adm.client,
                            method: method.as_str(),
                            host: &adm.host,
                        })
                        .allowed;
                    if allowed {
                        docs.push(lease_json(l, now));
                    }
                }
                Ok(json(StatusCode::OK, &serde_json::json!({ "leases": docs })))
            }
            ("GET" | "HEAD", _, None) => {
                let l = broker.lease(&id).await.map_err(refused)?;
                rec.secret = Some(AuditSecret {
                    path: l.path.clone(),
                    version: Some(l.version),
                    lease: Some(l.id.clone()),
                });
                rec.detail = Some(format!("lease {id}"));
                if holds(&l, &principal) {
                    rec.decision = Some("allow");
                    rec.reason = Some("lease_holder".into());
                } else {
                    let tags = tags_of(l.path.clone()).await?;
                    self.admit_secret(&who, AdminAction::SecretList, &l.path, &tags, rec)?;
                }
                Ok(json(StatusCode::OK, &lease_json(&l, now)))
            }
            ("POST", _, Some("revoke")) => {
                let f = object_or_empty(&body)?;
                let reason = text_field(&f, "reason")?.unwrap_or("revoked");
                if reason.len() > 200 {
                    return Err(bad("reason is at most 200 bytes"));
                }
                let l = broker.lease(&id).await.map_err(refused)?;
                rec.secret = Some(AuditSecret {
                    path: l.path.clone(),
                    version: Some(l.version),
                    lease: Some(l.id.clone()),
                });
                // Its holder may always say it is done with a value; anyone else needs
                // `secret:admin` on the secret.
                if holds(&l, &principal) {
                    rec.action = Some("lease:revoke");
                    rec.decision = Some("allow");
                    rec.reason = Some("lease_holder".into());
                } else {
                    let tags = tags_of(l.path.clone()).await?;
                    self.admit_secret(&who, AdminAction::SecretAdmin, &l.path, &tags, rec)?;
                }
                let now_revoked = broker
                    .revoke_lease(&id, &actor, reason)
                    .await
                    .map_err(refused)?;
                rec.detail = Some(format!(
                    "lease {id} on {} version {} {}",
                    l.path,
                    l.version,
                    if now_revoked {
                        "revoked"
                    } else {
                        "was revoked already"
                    }
                ));
                let l = broker.lease(&id).await.map_err(refused)?;
                Ok(json(StatusCode::OK, &lease_json(&l, now)))
            }
            _ => Err((
                Refusal::MethodNotAllowed(format!(
                    "{method} /.gatehouse/leases/{rest} is not a lease operation (see docs/secrets.md)"
                )),
                kind,
            )),
        }
    }
}

/// Reads a request body of at most `limit` bytes into a buffer zeroized when it is dropped.
async fn read_wiped(body: Body, limit: usize) -> Result<WipingBuf, Refusal> {
    let mut buf = WipingBuf::default();
    crate::proxy::read_body_into(body, limit, |d| buf.extend(d)).await?;
    Ok(buf)
}

/// The answer carrying a value: `doc` with `value` (UTF-8) or `value_base64` added, encoded
/// straight into a buffer that is zeroized once the answer has been sent (its body's last
/// holder drops it), with no other copy of the value made on the way.
fn value_answer(doc: &serde_json::Value, value: &[u8]) -> serde_json::Result<Response<Body>> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        #[serde(flatten)]
        doc: &'a serde_json::Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_base64: Option<&'a str>,
    }
    let encoded;
    let answer = match std::str::from_utf8(value) {
        Ok(text) => Answer {
            doc,
            value: Some(text),
            value_base64: None,
        },
        Err(_) => {
            use base64::Engine as _;
            encoded =
                zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(value));
            Answer {
                doc,
                value: None,
                value_base64: Some(encoded.as_str()),
            }
        }
    };
    // Room for the value escaped at its longest (`\u00XX` per byte) and the rest, so that the
    // buffer does not grow on the way (it would, safely, if it had to).
    let mut out = WipingBuf::with_capacity(value.len().saturating_mul(6).saturating_add(1024));
    serde_json::to_writer(&mut out, &answer)?;
    Ok(crate::respond::typed_response(
        StatusCode::OK,
        bytes::Bytes::from_owner(out),
        "application/json",
        "no-store",
    ))
}

#[cfg(test)]
mod value_answer_tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn answer(value: &[u8]) -> (StatusCode, serde_json::Value) {
        let doc = serde_json::json!({"path": "prod/db", "version": 3, "lease": {"id": "l-1"}});
        let r = value_answer(&doc, value).unwrap();
        let status = r.status();
        assert_eq!(r.headers()["cache-control"], "no-store");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_text_value_and_a_binary_one_come_back_as_they_were() {
        // Quotes, backslashes, control characters and non-ASCII text: escaped by the encoder,
        // read back unchanged.
        let text = "p\"a\\s\ns\u{1}w\u{7f}ö€😀rd";
        let (status, doc) = answer(text.as_bytes()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["value"], text);
        assert!(doc.get("value_base64").is_none(), "{doc}");
        assert_eq!(doc["path"], "prod/db");
        assert_eq!(doc["version"], 3);
        assert_eq!(doc["lease"]["id"], "l-1");

        let binary = [0u8, 159, 146, 150, 255, b'"'];
        let (_, doc) = answer(&binary).await;
        assert!(doc.get("value").is_none(), "{doc}");
        use base64::Engine as _;
        let back = base64::engine::general_purpose::STANDARD
            .decode(doc["value_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, binary);

        // The longest escaping (a control character is six bytes) fits the buffer as sized,
        // and a value of every control character still reads back.
        let controls: String = (0u8..0x20).map(char::from).collect::<String>().repeat(50);
        let (_, doc) = answer(controls.as_bytes()).await;
        assert_eq!(doc["value"], controls.as_str());
    }
}
