//! Gitea Actions jobs, as the forge's REST API describes them (Gitea 1.25 and later:
//! `GET /api/v1/repos/{owner}/{repo}/actions/jobs/{job_id}` and `.../actions/runs/{run}`, read
//! from Gitea's `routers/api/v1/repo/action.go` and `modules/structs/repo_actions.go`). Gitea
//! Actions issues no OIDC tokens, so Gatehouse mints a token per job for the runner, and asks the
//! forge first that the job exists **in that repository** (Gitea answers 404 for a job of another
//! repository), belongs to that run, and is running; the commit and ref come from the forge, never
//! from the runner. Answers are never cached for minting; [`ForgeApi::job_running`] reuses a
//! "still running" answer for a short while.

use gatehouse_core::Workload;
use serde::Deserialize;

use crate::ForgeApi;
use crate::lookups::LookupError;

/// `ActionWorkflowJob`, the fields Gatehouse reads.
#[derive(Debug, Clone, Deserialize)]
struct ApiJob {
    id: u64,
    run_id: u64,
    #[serde(default)]
    head_sha: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    run_attempt: u64,
    #[serde(default)]
    runner_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ApiUser {
    #[serde(default)]
    login: String,
}

/// `ActionWorkflowRun`, the fields Gatehouse reads. `path` is `<workflow file>@<full ref>`.
#[derive(Debug, Clone, Deserialize)]
struct ApiRun {
    id: u64,
    #[serde(default)]
    path: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    head_sha: String,
    #[serde(default)]
    head_branch: Option<String>,
    #[serde(default)]
    actor: Option<ApiUser>,
}

/// Why a job cannot have a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefused {
    /// The forge has no such job in that repository, or no such run, or the job is not the run's.
    #[error("{0}")]
    NotThere(String),
    /// The job exists but is not running.
    #[error("job {job} of {repo} is {status}, not running")]
    NotRunning {
        /// The repository.
        repo: String,
        /// The job id.
        job: u64,
        /// What the forge says it is.
        status: String,
    },
    /// The forge's answers disagree or cannot be read.
    #[error("the forge's answer cannot be used: {0}")]
    Inconsistent(String),
    /// The forge could not be asked.
    #[error("the forge could not say: {0}")]
    Unavailable(String),
}

/// A running job, with what a token for it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    /// Its claims (platform `gitea-actions`; `issuer` is the forge's API URL).
    pub workload: Workload,
}

/// Checks that `name` is a forge owner or repository name as Gitea allows (`[-.\w]`, not `.` or
/// `..`): the only names put into an API path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_commit(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ForgeApi {
    /// Job `job` of run `run` of `owner/repo`, if it exists there and is running: asked afresh.
    pub async fn running_job(
        &self,
        owner: &str,
        repo: &str,
        run: u64,
        job: u64,
    ) -> Result<RunningJob, JobRefused> {
        let full = format!("{owner}/{repo}");
        if !valid_name(owner) || !valid_name(repo) {
            return Err(JobRefused::NotThere(format!(
                "{full:?} is not a repository name"
            )));
        }
        let lookup = |e: LookupError| match e {
            LookupError::NotFound(w) => JobRefused::NotThere(format!("the forge has no {w}")),
            LookupError::Unavailable(w) => JobRefused::Unavailable(w),
        };
        let j: ApiJob = self
            .get(
                &format!("/api/v1/repos/{owner}/{repo}/actions/jobs/{job}"),
                &format!("job {job} in {full}"),
            )
            .await
            .map_err(lookup)?;
        if j.id != job {
            return Err(JobRefused::Inconsistent(format!(
                "asked for job {job}, the forge answered job {}",
                j.id
            )));
        }
        if j.run_id != run {
            return Err(JobRefused::NotThere(format!(
                "job {job} of {full} belongs to run {}, not run {run}",
                j.run_id
            )));
        }
        if j.status != "in_progress" {
            return Err(JobRefused::NotRunning {
                repo: full,
                job,
                status: if j.status.is_empty() {
                    "in no state".into()
                } else {
                    j.status
                },
            });
        }
        let r: ApiRun = self
            .get(
                &format!("/api/v1/repos/{owner}/{repo}/actions/runs/{run}"),
                &format!("run {run} in {full}"),
            )
            .await
            .map_err(lookup)?;
        if r.id != run {
            return Err(JobRefused::Inconsistent(format!(
                "asked for run {run}, the forge answered run {}",
                r.id
            )));
        }
        let commit = j.head_sha.to_ascii_lowercase();
        if !is_commit(&commit) || r.head_sha.to_ascii_lowercase() != commit {
            return Err(JobRefused::Inconsistent(format!(
                "job {job} and run {run} of {full} do not name one commit"
            )));
        }
        // The full ref is after the `@` of the run's `path`; a branch also shows as
        // `head_branch` (tags and pull requests do not).
        let (workflow, git_ref) = match r.path.rsplit_once('@') {
            Some((w, rf)) if rf.starts_with("refs/") => (w.to_owned(), rf.to_owned()),
            _ => match r.head_branch.as_deref().filter(|b| !b.is_empty()) {
                Some(b) => (r.path.clone(), format!("refs/heads/{b}")),
                None => {
                    return Err(JobRefused::Inconsistent(format!(
                        "run {run} of {full} names no ref"
                    )));
                }
            },
        };
        if git_ref.chars().any(char::is_control) || git_ref.len() > 1024 {
            return Err(JobRefused::Inconsistent(
                "the run's ref is unreadable".into(),
            ));
        }
        let ref_type = if git_ref.starts_with("refs/tags/") {
            "tag"
        } else if git_ref.starts_with("refs/heads/") {
            "branch"
        } else {
            ""
        };
        let clean =
            |s: String| -> String { s.chars().filter(|c| !c.is_control()).take(256).collect() };
        Ok(RunningJob {
            workload: Workload {
                platform: "gitea-actions".into(),
                repository: full,
                owner: owner.to_owned(),
                git_ref,
                ref_type: ref_type.into(),
                commit,
                workflow: clean(workflow),
                job: job.to_string(),
                run_id: run.to_string(),
                run_attempt: if j.run_attempt == 0 {
                    String::new()
                } else {
                    j.run_attempt.to_string()
                },
                environment: String::new(),
                event: clean(r.event),
                runner: clean(j.runner_name),
                actor: clean(r.actor.unwrap_or_default().login),
                namespace: String::new(),
                service_account: String::new(),
                issuer: self.api_url().to_owned(),
            },
        })
    }

    /// Whether job `job` of `owner/repo` is still running (in `attempt`, when given), by the
    /// forge's answer of at most `max_age` seconds ago. A job the forge no longer knows is not
    /// running.
    pub async fn job_running(
        &self,
        owner: &str,
        repo: &str,
        job: u64,
        attempt: Option<u64>,
        max_age: i64,
    ) -> Result<bool, JobRefused> {
        if !valid_name(owner) || !valid_name(repo) {
            return Ok(false);
        }
        let path = format!("/api/v1/repos/{owner}/{repo}/actions/jobs/{job}");
        let key = format!("{path}#{}", attempt.unwrap_or(0));
        if let Some(running) = self.cached_flag(&key, max_age) {
            return Ok(running);
        }
        let running = match self
            .get::<ApiJob>(&path, &format!("job {job} in {owner}/{repo}"))
            .await
        {
            // A re-run is the same job again: the token is its attempt's.
            Ok(j) => {
                j.id == job
                    && j.status == "in_progress"
                    && attempt.is_none_or(|a| a == j.run_attempt)
            }
            Err(LookupError::NotFound(_)) => false,
            Err(LookupError::Unavailable(w)) => return Err(JobRefused::Unavailable(w)),
        };
        self.remember_flag(key, running);
        Ok(running)
    }

    /// The commit an annotated tag object `sha` of `owner/repo` points at (through tags of
    /// tags, at most five deep), asked afresh: Gitea's `GET /repos/{owner}/{repo}/git/tags/{sha}`
    /// (`AnnotatedTag{object{type, sha}}`). `None` when `sha` is not an annotated tag there
    /// (Gitea answers 400 or 404) or it points at something other than a commit.
    pub async fn peel_tag(
        &self,
        owner: &str,
        repo: &str,
        sha: &str,
    ) -> Result<Option<String>, JobRefused> {
        if !valid_name(owner) || !valid_name(repo) {
            return Ok(None);
        }
        // A tag object never changes: its answer is reused (for `forge.api.cache_ttl`), so that
        // callers asking again do not make Gatehouse ask the forge again.
        let key = format!("peel:{owner}/{repo}/{}", sha.to_ascii_lowercase());
        if let Some(t) = self.cached_text(&key) {
            return Ok((!t.is_empty()).then_some(t));
        }
        let peeled = self.peel_uncached(owner, repo, sha).await?;
        self.remember_text(key, peeled.clone().unwrap_or_default());
        Ok(peeled)
    }

    async fn peel_uncached(
        &self,
        owner: &str,
        repo: &str,
        sha: &str,
    ) -> Result<Option<String>, JobRefused> {
        let mut at = sha.to_ascii_lowercase();
        for _ in 0..5 {
            if !is_commit(&at) {
                return Ok(None);
            }
            let t: ApiTag = match self
                .get(
                    &format!("/api/v1/repos/{owner}/{repo}/git/tags/{at}"),
                    &format!("tag {at} in {owner}/{repo}"),
                )
                .await
            {
                Ok(t) => t,
                Err(LookupError::NotFound(_)) => return Ok(None),
                Err(LookupError::Unavailable(w)) if w.contains("status 400") => return Ok(None),
                Err(LookupError::Unavailable(w)) => return Err(JobRefused::Unavailable(w)),
            };
            let next = t.object.sha.to_ascii_lowercase();
            match t.object.kind.as_str() {
                "commit" => return Ok(is_commit(&next).then_some(next)),
                "tag" => at = next,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// `AnnotatedTag`, the fields Gatehouse reads.
#[derive(Debug, Clone, Deserialize)]
struct ApiTag {
    object: ApiTagObject,
}

#[derive(Debug, Clone, Deserialize)]
struct ApiTagObject {
    #[serde(rename = "type")]
    kind: String,
    sha: String,
}
