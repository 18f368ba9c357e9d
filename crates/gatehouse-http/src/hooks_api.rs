//! The webhook relay's doors: `POST /.gatehouse/hooks/{name}` takes a forge's delivery (the
//! hooks crate verifies and keeps it before the forge is answered), and
//! `/.gatehouse/deliveries` shows and acts on what was kept (`hook:read`, `hook:replay`).
//! Also the job ender the relay calls for a finished `workflow_job`.

use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse_audit::{AuditHook, AuditRecord};
use gatehouse_hooks::AttemptFilter;
use gatehouse_hooks::{HookKind, HookRefusal, Hooks, JobFinished, Rejected};
use gatehouse_policy::{AdminAction, AdminRequest, AdminResource};
use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};
use crate::state_api::{bad, json, object_or_empty};

/// The path hooks are under.
pub(crate) const HOOKS_PREFIX: &str = "/.gatehouse/hooks/";

fn refused(e: HookRefusal) -> (Refusal, ClientKind) {
    let code = e.code();
    let r = match e {
        HookRefusal::UnknownHook(name) => Refusal::NotFound(format!("no webhook named {name}")),
        HookRefusal::Rejected(
            r @ (Rejected::NoDeliveryId(_)
            | Rejected::NoEvent(_)
            | Rejected::NoPayload
            | Rejected::BadForm
            | Rejected::Inconsistent(_)),
        ) => Refusal::BadRequest {
            code,
            detail: r.to_string(),
        },
        HookRefusal::Rejected(r) => Refusal::Forbidden {
            reason: code.into(),
            what: r.to_string(),
        },
        HookRefusal::Replayed { id, .. } => Refusal::Conflict {
            code,
            detail: format!("delivery {id} was already received"),
        },
        HookRefusal::Store(e) => {
            tracing::error!(error = %e, "a webhook delivery could not be kept");
            Refusal::StoreUnavailable("the delivery could not be kept; deliver it again".into())
        }
    };
    (r, ClientKind::Api)
}

fn no_relay() -> (Refusal, ClientKind) {
    (
        Refusal::BadRequest {
            code: "webhooks_not_configured",
            detail: "no [webhooks] on this gateway".into(),
        },
        ClientKind::Api,
    )
}

impl Gateway {
    /// Sets the webhook relay's hooks.
    pub fn with_hooks(mut self, hooks: Option<Arc<Hooks>>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Serves `POST /.gatehouse/hooks/{name}`: a delivery, answered 202 once it is kept.
    pub(crate) async fn hook_delivery(
        &self,
        req: Request<Body>,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let hooks = self.hooks.as_ref().ok_or_else(no_relay)?;
        let name = req
            .uri()
            .path()
            .strip_prefix(HOOKS_PREFIX)
            .unwrap_or("")
            .to_owned();
        rec.action = Some("hook:deliver");
        let Some(hook) = hooks.hook(&name) else {
            rec.decision = Some("deny");
            rec.reason = Some("hook_not_found".into());
            return Err(refused(HookRefusal::UnknownHook(name)));
        };
        if req.method() != Method::POST {
            rec.decision = Some("deny");
            return Err((
                Refusal::MethodNotAllowed("a webhook takes POST".into()),
                kind,
            ));
        }
        let max = hook.max_body;
        let too_long = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max as u64);
        let (parts, body) = req.into_parts();
        let refuse = |rec: &mut AuditRecord, r: (Refusal, ClientKind), code: &str| {
            rec.decision = Some("deny");
            rec.reason = Some(code.into());
            r
        };
        if too_long {
            return Err(refuse(
                rec,
                (Refusal::PayloadTooLarge, kind),
                "payload_too_large",
            ));
        }
        let body = crate::proxy::read_limited(body, max)
            .await
            .map_err(|r| refuse(rec, (r, kind), "body_refused"))?;
        rec.bytes_in = body.len() as u64;
        match hooks.accept(&name, &parts.headers, &body).await {
            Ok(receipt) => {
                rec.decision = Some("allow");
                rec.reason = Some("delivery_accepted".into());
                rec.repo = receipt.repo.clone();
                rec.detail = Some(format!(
                    "kept for {} target(s){}",
                    receipt.targets.len(),
                    match receipt.push_seen {
                        Some(true) => format!(
                            "; pushed through Gatehouse by {}",
                            receipt.pusher.as_deref().unwrap_or("?")
                        ),
                        Some(false) => "; no push through Gatehouse made this update".into(),
                        None => String::new(),
                    }
                ));
                rec.hook = Some(AuditHook {
                    hook: name,
                    event: receipt.event.clone(),
                    delivery: Some(receipt.id.clone()),
                    source_id: Some(receipt.source_id.clone()),
                    sender: receipt.sender.clone(),
                    pusher: receipt.pusher.clone(),
                    push_seen: receipt.push_seen,
                    ..AuditHook::default()
                });
                Ok(json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({
                        "delivery": receipt.id,
                        "targets": receipt.targets.len(),
                        "push_seen": receipt.push_seen,
                    }),
                ))
            }
            Err(e) => {
                rec.hook = Some(AuditHook {
                    hook: name,
                    // Known only once the signature held (a replay); else what the sender
                    // claimed is not written as fact.
                    event: match &e {
                        HookRefusal::Replayed { event, .. } => event.clone(),
                        _ => String::new(),
                    },
                    source_id: source_id_of(hook.kind, &parts.headers),
                    ..AuditHook::default()
                });
                let code = e.code();
                Err(refuse(rec, refused(e), code))
            }
        }
    }

    /// Serves `/.gatehouse/deliveries`:
    /// - `GET ?hook=&target=&state=&delivery=`: where each delivery stands at each target, and
    ///   the counts per hook, target and state (`hook:read`);
    /// - `POST /.gatehouse/deliveries:retry` `{hook, target}`: the dead letters sent again
    ///   (`hook:replay`);
    /// - `POST /.gatehouse/deliveries/{id}:replay` `{target}`: one delivery sent again, even one
    ///   delivered, under its same id (`hook:replay`).
    pub(crate) async fn deliveries_api(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let hooks = self.hooks.clone().ok_or_else(no_relay)?;
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let (principal, actor) = self
            .api_caller(req.headers(), &method, &path, adm, rec)
            .await?;
        let q: BTreeMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let body = crate::proxy::read_limited(req.into_body(), 4096)
            .await
            .map_err(|r| (r, ClientKind::Api))?;
        let rest = path.strip_prefix("/.gatehouse/deliveries").unwrap_or("");
        let admit = |rec: &mut AuditRecord, action: AdminAction, name: &str| {
            self.admit_admin(
                &AdminRequest {
                    principal: &principal,
                    action,
                    resource: AdminResource::Hook { name },
                    source_ip: adm.client,
                    method: method.as_str(),
                    host: &adm.host,
                },
                rec,
                format!("{} on hook {name}", action.as_str()),
            )
        };
        let store_err = |e: gatehouse_hooks::StoreError| {
            tracing::error!(error = %e, "the webhook deliveries could not be read or changed");
            (
                Refusal::StoreUnavailable("the store did not answer".into()),
                ClientKind::Api,
            )
        };
        let known = |h: &str| {
            hooks
                .hook(h)
                .map(|_| ())
                .ok_or_else(|| refused(HookRefusal::UnknownHook(h.to_owned())))
        };
        let now = self.clock.now().as_secs();
        match (method.as_str(), rest) {
            ("GET" | "HEAD", "") => {
                let hook = q.get("hook").map(String::as_str);
                if let Some(h) = hook {
                    known(h)?;
                }
                admit(rec, AdminAction::HookRead, hook.unwrap_or("*"))?;
                let target = match (hook, q.get("target")) {
                    (Some(h), Some(t)) => Some(gatehouse_hooks::target_key(h, t)),
                    (None, Some(_)) => return Err(bad("a target is named with its hook")),
                    _ => None,
                };
                let rows = hooks
                    .store()
                    .hooks()
                    .list(&AttemptFilter {
                        hook,
                        target: target.as_deref(),
                        state: q.get("state").map(String::as_str),
                        delivery: q.get("delivery").map(String::as_str),
                    })
                    .await
                    .map_err(store_err)?;
                let counts = hooks.store().hooks().counts().await.map_err(store_err)?;
                rec.detail = Some(format!("{} delivery rows", rows.len()));
                let short = |t: &str| t.split_once('/').map_or(t, |(_, t)| t).to_owned();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "counts": counts.iter()
                            .filter(|c| hook.is_none_or(|h| c.0 == h))
                            .map(|(h, t, s, n, oldest)| serde_json::json!({
                                "hook": h, "target": short(t), "state": s, "count": n,
                                "oldest_next_at": oldest,
                            })).collect::<Vec<_>>(),
                        "deliveries": rows.iter().map(|r| serde_json::json!({
                            "delivery": r.delivery, "hook": r.hook, "source_id": r.source_id,
                            "event": r.event, "repository": r.repo,
                            "received_at": r.received_at, "target": short(&r.target),
                            "state": r.state, "attempts": r.attempts, "next_at": r.next_at,
                            "last_status": r.last_status, "last_error": r.last_error,
                            "delivered_at": r.delivered_at,
                        })).collect::<Vec<_>>(),
                    }),
                ))
            }
            ("POST", ":retry") => {
                let m = object_or_empty(&body)?;
                let field = |k: &str| -> Result<Option<String>, (Refusal, ClientKind)> {
                    match m.get(k) {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(_) => Err(bad(format!("{k} is a string"))),
                    }
                };
                let hook = field("hook")?;
                if let Some(h) = &hook {
                    known(h)?;
                }
                admit(rec, AdminAction::HookReplay, hook.as_deref().unwrap_or("*"))?;
                let target = match (&hook, field("target")?) {
                    (Some(h), Some(t)) => Some(gatehouse_hooks::target_key(h, &t)),
                    (None, Some(_)) => return Err(bad("a target is named with its hook")),
                    _ => None,
                };
                let give_up = now.saturating_add(longest_give_up(&hooks, hook.as_deref()));
                let n = hooks
                    .store()
                    .hooks()
                    .requeue(
                        &AttemptFilter {
                            hook: hook.as_deref(),
                            target: target.as_deref(),
                            ..AttemptFilter::default()
                        },
                        true,
                        now,
                        give_up,
                    )
                    .await
                    .map_err(store_err)?;
                hooks.wake();
                rec.detail = Some(format!("{n} dead letters retried by {actor}"));
                Ok(json(StatusCode::OK, &serde_json::json!({ "requeued": n })))
            }
            ("POST", r) if r.starts_with('/') && r.ends_with(":replay") => {
                let id = &r[1..r.len() - ":replay".len()];
                let d = hooks
                    .store()
                    .hooks()
                    .get_by_id(id)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| {
                        (
                            Refusal::NotFound(format!("no delivery {id}")),
                            ClientKind::Api,
                        )
                    })?;
                admit(rec, AdminAction::HookReplay, &d.hook)?;
                let m = object_or_empty(&body)?;
                let target = match m.get("target") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(t)) => {
                        Some(gatehouse_hooks::target_key(&d.hook, t))
                    }
                    Some(_) => return Err(bad("target is a string")),
                };
                let give_up = now.saturating_add(longest_give_up(&hooks, Some(&d.hook)));
                let n = hooks
                    .store()
                    .hooks()
                    .requeue(
                        &AttemptFilter {
                            delivery: Some(id),
                            target: target.as_deref(),
                            ..AttemptFilter::default()
                        },
                        false,
                        now,
                        give_up,
                    )
                    .await
                    .map_err(store_err)?;
                hooks.wake();
                rec.repo = d.repo.clone();
                rec.hook = Some(AuditHook {
                    hook: d.hook.clone(),
                    event: d.event.clone(),
                    delivery: Some(d.id.clone()),
                    source_id: Some(d.source_id.clone()),
                    ..AuditHook::default()
                });
                rec.detail = Some(format!("replayed to {n} target(s) by {actor}"));
                Ok(json(StatusCode::OK, &serde_json::json!({ "requeued": n })))
            }
            _ => Err(bad(
                "GET /.gatehouse/deliveries, POST /.gatehouse/deliveries:retry or POST \
                 /.gatehouse/deliveries/{id}:replay",
            )),
        }
    }
}

/// The longest `give_up_after` of the targets of `hook` (of every hook when `None`).
fn longest_give_up(hooks: &Hooks, hook: Option<&str>) -> i64 {
    hooks
        .all()
        .filter(|h| hook.is_none_or(|n| h.name == n))
        .flat_map(|h| h.targets.iter())
        .map(|t| i64::try_from(t.give_up_after.as_secs()).unwrap_or(i64::MAX))
        .max()
        .unwrap_or(3 * 86_400)
}

/// The sender's delivery id, for the record of a refused delivery (when it looks like one).
fn source_id_of(kind: HookKind, h: &http::HeaderMap) -> Option<String> {
    h.get(kind.delivery_header())
        .and_then(|v| v.to_str().ok())
        .filter(|v| gatehouse_hooks::is_token(v))
        .map(str::to_owned)
}

impl gatehouse_hooks::JobEnder for Gateway {
    fn end_job<'a>(
        &'a self,
        kind: HookKind,
        issuer: Option<&'a str>,
        repository: &'a str,
        job: &'a JobFinished,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        Box::pin(async move {
            // As the job's tokens name the repository: Gatehouse's Gitea runner tokens in lower
            // case (as it names repositories), GitHub's as GitHub wrote it.
            let repository = match kind {
                HookKind::Gitea => repository.to_ascii_lowercase(),
                _ => repository.to_owned(),
            };
            // The job's id as its token names it (`Workload::job_id`).
            let (platform, issuer) = match kind {
                HookKind::Gitea => (
                    "gitea-actions",
                    match issuer {
                        Some(i) => i.to_owned(),
                        None => self
                            .decider
                            .forge_api()
                            .map(|f| f.api_url().to_owned())
                            .ok_or("Gitea jobs are named after [forge.api], which is not set")?,
                    },
                ),
                HookKind::Github => (
                    "github-actions",
                    issuer
                        .unwrap_or("https://token.actions.githubusercontent.com")
                        .to_owned(),
                ),
                HookKind::Forgejo | HookKind::Gogs | HookKind::Standard => {
                    // Forgejo's tokens name no job; Gogs has no Actions.
                    return Ok(format!(
                        "none: {} jobs cannot be named from a webhook",
                        kind.as_str()
                    ));
                }
            };
            let w = gatehouse_core::Workload {
                platform: platform.into(),
                repository: repository.clone(),
                owner: repository.split_once('/').map_or("", |(o, _)| o).to_owned(),
                job: job.job.to_string(),
                run_id: job.run_id.to_string(),
                run_attempt: if job.run_attempt == 0 {
                    String::new()
                } else {
                    job.run_attempt.to_string()
                },
                issuer,
                ..gatehouse_core::Workload::default()
            };
            let id = w
                .job_id(&w.issuer)
                .ok_or("the event names no job or repository")?;
            self.end_job_everywhere(
                &id,
                "the forge reported the job completed",
                "gatehouse:webhook",
            )
            .await?;
            Ok(id)
        })
    }
}
