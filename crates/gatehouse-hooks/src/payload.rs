//! What the relay reads in a verified payload: the repository, the sender, a push's ref update
//! and a finished job. Field names as Gitea's `modules/structs/hook.go` (and GitHub, whose names
//! Gitea, Forgejo and Gogs keep) write them.

use serde_json::Value;

/// A push event's ref update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUpdate {
    /// `refs/heads/main`.
    pub git_ref: String,
    /// The object id before (zeros for a new ref).
    pub before: String,
    /// The object id after (zeros for a deleted ref).
    pub after: String,
}

/// A `workflow_job` event that says a job finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFinished {
    /// The job's id (Gitea: the job; GitHub: the check run).
    pub job: u64,
    /// Its run.
    pub run_id: u64,
    /// Its attempt (0 when not said).
    pub run_attempt: u64,
    /// `success`, `failure`, `cancelled`, ...
    pub conclusion: String,
}

/// What the relay reads in a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// `owner/name`, as the payload writes it.
    pub repo: Option<String>,
    /// The sender's login.
    pub sender: Option<String>,
    /// A push's ref update.
    pub push: Option<PushUpdate>,
    /// A finished job.
    pub job_finished: Option<JobFinished>,
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
        .filter(|s| !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control))
        .map(str::to_owned)
}

fn number(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
        .or_else(|| cur.as_str().and_then(|s| s.parse().ok()))
}

fn oid(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Summary {
    /// Reads `json` as a payload of `event`; what is not there, or not of its form, is `None`
    /// (a payload that is not JSON reads as nothing).
    pub fn read(event: &str, json: &[u8]) -> Summary {
        let Ok(v) = serde_json::from_slice::<Value>(json) else {
            return Summary::default();
        };
        let repo = text(&v, &["repository", "full_name"])
            .filter(|r| r.split('/').count() == 2 && r.split('/').all(|p| !p.is_empty()));
        let sender = text(&v, &["sender", "login"]).or_else(|| text(&v, &["sender", "username"]));
        let push = (event == "push")
            .then(|| {
                let git_ref = text(&v, &["ref"]).filter(|r| r.starts_with("refs/"))?;
                let before = text(&v, &["before"]).filter(|o| oid(o))?;
                let after = text(&v, &["after"]).filter(|o| oid(o))?;
                Some(PushUpdate {
                    git_ref,
                    before: before.to_ascii_lowercase(),
                    after: after.to_ascii_lowercase(),
                })
            })
            .flatten();
        let job_finished = (event == "workflow_job"
            && text(&v, &["action"]).as_deref() == Some("completed"))
        .then(|| {
            Some(JobFinished {
                job: number(&v, &["workflow_job", "id"])?,
                run_id: number(&v, &["workflow_job", "run_id"])?,
                run_attempt: number(&v, &["workflow_job", "run_attempt"]).unwrap_or(0),
                conclusion: text(&v, &["workflow_job", "conclusion"]).unwrap_or_default(),
            })
        })
        .flatten();
        Summary {
            repo,
            sender,
            push,
            job_finished,
        }
    }
}
