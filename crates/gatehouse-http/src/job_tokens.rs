//! Per-job tokens for Gitea Actions runners: `POST /.gatehouse/jobs:mint`.
//!
//! Gitea Actions issues no OIDC tokens. A runner holds one Gatehouse credential (a service
//! token) and, for each job it runs, asks for a token of that job with JSON
//! `{"repository": "acme/api", "run_id": 42, "job_id": 77}` (the run is `GITHUB_RUN_ID`; the job
//! is the numeric id of the forge's jobs API). The forge's API is asked first: the job must exist
//! **in that repository**, belong to that run and be running. Then one policy question,
//! `job:mint` on the repository with the job as the forge describes it in `context.job` (so a
//! policy can bind a runner's credential to the jobs that runner runs). The token's claims (repository, ref, commit, workflow, run, job,
//! event, runner, actor) come from the forge, never from the runner. The token lives no longer
//! than `job_tokens.ttl` or the runner's credential, is revoked with the runner's credential,
//! ends with `job:end`, and stops reading secrets once the forge says the job is no longer
//! running ([`Gateway::job_still_running`]).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::AuditRecord;
use gatehouse_authn::TokenRequest;
use gatehouse_core::{Principal, PrincipalKind, RepoRef, UnixTime};
use gatehouse_forge::JobRefused;
use gatehouse_policy::{AdminAction, AdminRequest, AdminResource};
use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::proxy::{Admitted, Gateway};
use crate::respond::{ClientKind, Refusal};
use crate::state_api::{bad, json, object};

/// `[job_tokens]`, as the app hands it over.
#[derive(Debug, Clone, Copy)]
pub struct JobTokenSettings {
    /// The longest a minted token lives.
    pub ttl: Duration,
    /// How long the forge's "still running" answer is reused.
    pub recheck: Duration,
}

/// The platform of the tokens minted here.
pub const GITEA_ACTIONS: &str = "gitea-actions";

/// The jobs this node minted a token for and has not yet seen end, by job id.
pub(crate) type MintedJobs = std::sync::Mutex<std::collections::HashMap<String, Watched>>;

/// A job watched until it ends: where it is on the forge, its attempt, its token's expiry.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    owner: String,
    repo: String,
    job: u64,
    attempt: Option<u64>,
    expires: i64,
}

/// The most jobs watched at once per node (more are left to their tokens' expiry).
const MAX_WATCHED: usize = 10_000;

/// A decimal id field (a JSON number or a string of digits).
fn id_field(
    m: &serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<u64, (Refusal, ClientKind)> {
    let v = match m.get(k) {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s))
            if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    };
    v.filter(|n| *n > 0)
        .ok_or_else(|| bad(format!("{k} is a positive number")))
}

fn refused(e: JobRefused) -> (Refusal, ClientKind) {
    let r = match e {
        JobRefused::NotThere(what) => Refusal::Forbidden {
            reason: "job_not_verified".into(),
            what,
        },
        JobRefused::NotRunning { .. } => Refusal::Conflict {
            code: "job_not_running",
            detail: e.to_string(),
        },
        JobRefused::Inconsistent(_) | JobRefused::Unavailable(_) => {
            tracing::warn!(error = %e, "a job could not be checked on the forge");
            Refusal::ForgeUnavailable("a job's state".into())
        }
    };
    (r, ClientKind::Api)
}

impl Gateway {
    /// Enables `POST /.gatehouse/jobs:mint` (needs the forge's API on the decider).
    pub fn with_job_tokens(mut self, s: Option<JobTokenSettings>) -> Self {
        self.job_tokens = s;
        self
    }

    /// Serves `POST /.gatehouse/jobs:mint`.
    pub(crate) async fn mint_job_token(
        &self,
        req: Request<Body>,
        adm: &Admitted,
        rec: &mut AuditRecord,
    ) -> Result<Response<Body>, (Refusal, ClientKind)> {
        let kind = ClientKind::Api;
        let (Some(settings), Some(forge)) = (self.job_tokens, self.decider.forge_api()) else {
            return Err((
                Refusal::NotFound(
                    "this gateway mints no job tokens ([job_tokens] and [forge.api])".into(),
                ),
                kind,
            ));
        };
        if req.method() != Method::POST {
            return Err((
                Refusal::MethodNotAllowed("mint a job token with POST".into()),
                kind,
            ));
        }
        let method = req.method().clone();
        let (principal, _actor) = self
            .api_caller(req.headers(), &method, req.uri().path(), adm, rec)
            .await?;
        let body = crate::proxy::read_limited(req.into_body(), 4096)
            .await
            .map_err(|r| (r, kind))?;
        let f = object(&body)?;
        let repository = match f.get("repository") {
            Some(serde_json::Value::String(s)) => s.to_ascii_lowercase(),
            _ => return Err(bad("repository is owner/name")),
        };
        let (owner, name) = repository
            .split_once('/')
            .filter(|(o, n)| gatehouse_forge::valid_name(o) && gatehouse_forge::valid_name(n))
            .ok_or_else(|| bad("repository is owner/name"))?;
        let run = id_field(&f, "run_id")?;
        let job = id_field(&f, "job_id")?;
        let repo = RepoRef {
            owner: owner.to_owned(),
            name: name.to_owned(),
        };
        rec.repo = Some(repository.clone());
        // The forge first: the policy decides on the job as the forge describes it (its ref, its
        // runner), never as the runner says it is. (An authenticated caller can tell from the
        // answer whether a job runs, as anyone who may read the repository on the forge can.)
        let running = forge
            .running_job(owner, name, run, job)
            .await
            .map_err(|e| {
                let r = refused(e);
                rec.action = Some(AdminAction::JobMint.as_str());
                rec.decision = Some("deny");
                rec.reason = Some(r.0.code());
                r
            })?;
        self.admit_admin(
            &AdminRequest {
                principal: &principal,
                action: AdminAction::JobMint,
                resource: AdminResource::Repo {
                    repo: &repo,
                    job: &running.workload,
                },
                source_ip: adm.client,
                method: "POST",
                host: &adm.host,
            },
            rec,
            format!("job:mint on {repository}"),
        )?;
        let w = running.workload;
        let attempt = w.run_attempt.parse::<u64>().ok();
        let Some(job_id) = w.job_id(&w.issuer) else {
            return Err(bad("the job has no id"));
        };
        let now = self.clock.now().as_secs();
        let ttl = i64::try_from(settings.ttl.as_secs()).unwrap_or(i64::MAX);
        let end = principal
            .expires_at
            .unwrap_or(i64::MAX)
            .min(now.saturating_add(ttl));
        if end <= now {
            return Err(bad("the runner's credential has expired"));
        }
        // Bought with the runner's credential: revoking it revokes every token it minted.
        let mut derived_from = principal.derived_from.clone();
        derived_from.extend(principal.token_id.clone());
        let own = self.decider.authn().own().clone();
        let username = gatehouse_authn::workload_username(&w, &job_id);
        let detail = format!(
            "job token for {job_id} ({repository} {} {})",
            w.git_ref, w.commit
        );
        let (git_ref, commit) = (w.git_ref.clone(), w.commit.clone());
        let (token, exp) = own
            .issue(
                &TokenRequest {
                    subject: job_id.clone(),
                    username: Some(username),
                    groups: Vec::new(),
                    ttl: Some(Duration::from_secs(u64::try_from(end - now).unwrap_or(1))),
                    name: None,
                    email: None,
                    kind: PrincipalKind::Service,
                    environment: None,
                    derived_from,
                    workload: Some(Arc::new(w)),
                },
                now,
            )
            .map_err(|e| {
                tracing::error!(error = %e, "a job token could not be issued");
                (
                    Refusal::StoreUnavailable("the job token could not be signed".into()),
                    kind,
                )
            })?;
        if let Ok(mut m) = self.minted_jobs.lock()
            && m.len() < MAX_WATCHED
        {
            m.insert(
                job_id.clone(),
                Watched {
                    owner: owner.to_owned(),
                    repo: name.to_owned(),
                    job,
                    attempt,
                    expires: exp,
                },
            );
        }
        rec.reason = Some("job_token_minted".into());
        rec.detail = Some(format!(
            "{detail}, expires {}",
            UnixTime::from_secs(exp).to_rfc3339()
        ));
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": token.expose(),
                "token_type": "Bearer",
                "expires_in": exp - now,
                "job_id": job_id,
                "repository": repository,
                "ref": git_ref,
                "commit": commit,
            }),
        ))
    }

    /// For a token minted for a Gitea Actions job: whether the forge still says the job runs
    /// (its answer reused for `job_tokens.recheck`). A job that ended is refused as a revoked
    /// token is; one that cannot be checked is refused too.
    pub(crate) async fn job_still_running(
        &self,
        p: &Principal,
    ) -> Result<(), (Refusal, ClientKind)> {
        let Some(w) = p.workload.as_ref().filter(|w| w.platform == GITEA_ACTIONS) else {
            return Ok(());
        };
        let kind = ClientKind::Api;
        let (Some(settings), Some(forge)) = (self.job_tokens, self.decider.forge_api()) else {
            return Err((
                Refusal::ForgeUnavailable("job tokens are not configured here".into()),
                kind,
            ));
        };
        let job: u64 = w.job.parse().map_err(|_| {
            (
                Refusal::ForgeUnavailable("the token names no job".into()),
                kind,
            )
        })?;
        let max_age = i64::try_from(settings.recheck.as_secs()).unwrap_or(30);
        let (owner, name) = w.repository.split_once('/').unwrap_or(("", ""));
        let attempt = w.run_attempt.parse::<u64>().ok();
        match forge.job_running(owner, name, job, attempt, max_age).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                // The watcher revokes it (tokens on every front door, leases) on its next pass,
                // retrying until the store takes it; this request is refused now.
                if let (Some(id), Ok(mut m)) = (w.job_id(&w.issuer), self.minted_jobs.lock()) {
                    m.entry(id).or_insert_with(|| Watched {
                        owner: owner.to_owned(),
                        repo: name.to_owned(),
                        job,
                        attempt,
                        expires: p.expires_at.unwrap_or(i64::MAX),
                    });
                }
                Err((
                    Refusal::Unauthenticated {
                        error: gatehouse_authn::AuthnError::Revoked(gatehouse_core::Revoked {
                            kind: gatehouse_core::RevocationKind::Job,
                        }),
                        presented: true,
                    },
                    kind,
                ))
            }
            Err(e) => Err(refused(e)),
        }
    }

    /// Ends a job whose token this gateway minted, once the forge says it has finished: its
    /// tokens are revoked (every front door, every node) and its leases too. Returns whether
    /// both were written; the watcher keeps the job and tries again otherwise.
    async fn end_minted_job(&self, job_id: &str, token_exp: i64) -> bool {
        // The revocation outlives every token of the job.
        let until = self
            .clock
            .now()
            .as_secs()
            .saturating_add(gatehouse_core::JOB_ENDED_FOR)
            .max(token_exp.saturating_add(60));
        match self
            .end_job_until(
                job_id,
                "the forge says the job has finished",
                "gatehouse:job-tokens",
                until,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(job = %job_id, "job ended on the forge: its tokens and leases are revoked");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %job_id, "an ended job could not be ended here yet; trying again");
                false
            }
        }
    }

    /// Ends the job `job_id` on every node: its tokens are revoked (for
    /// [`gatehouse_core::JOB_ENDED_FOR`]), then its leases. Returns how many leases were revoked.
    pub(crate) async fn end_job_everywhere(
        &self,
        job_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<u64, String> {
        let until = self
            .clock
            .now()
            .as_secs()
            .saturating_add(gatehouse_core::JOB_ENDED_FOR);
        self.end_job_until(job_id, reason, by, until).await
    }

    async fn end_job_until(
        &self,
        job_id: &str,
        reason: &str,
        by: &str,
        until: i64,
    ) -> Result<u64, String> {
        if let Some(state) = &self.state {
            state
                .revoke(
                    gatehouse_core::RevocationKind::Job,
                    job_id,
                    reason,
                    by,
                    Some(until),
                )
                .await
                .map_err(|e| format!("the job's tokens could not be revoked: {e:?}"))?;
        }
        // Its leases after its tokens: nothing can read under a new one then.
        match &self.secrets {
            Some(b) => b
                .end_job(job_id, by)
                .await
                .map_err(|e| format!("the job's leases could not be revoked: {e}")),
            None => Ok(0),
        }
    }

    /// Asks the forge, every `job_tokens.recheck`, about each job this gateway minted a token
    /// for, and ends those that finished (see [`Gateway::end_minted_job`]); forgets those whose
    /// tokens have expired. Runs until `stop` resolves.
    pub async fn watch_minted_jobs(&self, stop: impl std::future::Future<Output = ()>) {
        let (Some(settings), Some(forge)) = (self.job_tokens, self.decider.forge_api().cloned())
        else {
            return;
        };
        let every = settings.recheck.max(Duration::from_secs(1));
        let max_age = i64::try_from(settings.recheck.as_secs()).unwrap_or(30);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = self.clock.now().as_secs();
            let jobs: Vec<(String, Watched)> = {
                let mut m = self
                    .minted_jobs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                m.retain(|_, w| w.expires > now);
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            for (id, w) in jobs {
                let ended = match forge
                    .job_running(&w.owner, &w.repo, w.job, w.attempt, max_age)
                    .await
                {
                    Ok(true) => false,
                    Ok(false) => self.end_minted_job(&id, w.expires).await,
                    Err(e) => {
                        tracing::debug!(error = %e, job = %id, "a minted job could not be checked");
                        false
                    }
                };
                if ended {
                    self.minted_jobs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                }
            }
        }
    }
}
