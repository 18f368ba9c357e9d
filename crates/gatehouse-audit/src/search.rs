//! `gatehouse audit search`: which identity pushed what, from the audit log.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

/// What to look for. Every given field must match.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// A commit id or a prefix of at least 4 hex digits: a ref update whose new id starts with it.
    pub commit: Option<String>,
    /// `owner/name` (compared without regard to ASCII case).
    pub repo: Option<String>,
    /// A ref: `refs/heads/main`, or `main` for `refs/heads/main` or `refs/tags/main`.
    pub git_ref: Option<String>,
}

/// One record of a CI job (`gatehouse audit search --job`): what it asked, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// When.
    pub time: String,
    /// The request id.
    pub request_id: String,
    /// `request`, `push`, ...
    pub event: String,
    /// The policy action asked (`secret:get`, `git:read`, ...).
    pub action: String,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    /// The reason code.
    pub reason: String,
    /// The repository, when the request was about one.
    pub repo: String,
    /// What was done (`secret prod/acme/api/db-password version 3`), never a value.
    pub detail: String,
    /// The commit the job runs.
    pub commit: String,
    /// The secret, version and lease, for a request of the secrets broker.
    pub secret: Option<crate::AuditSecret>,
    /// The file the record is in.
    pub file: std::path::PathBuf,
    /// Its line.
    pub line: u64,
}

#[derive(Deserialize)]
struct JobWorkload {
    #[serde(default)]
    job_id: String,
    #[serde(default)]
    commit: String,
}

#[derive(Deserialize)]
struct JobPrincipal {
    #[serde(default)]
    workload: Option<JobWorkload>,
}

#[derive(Deserialize)]
struct JobLine {
    #[serde(default)]
    event: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    principal: Option<JobPrincipal>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    forwarding_seq: Option<u64>,
    #[serde(default)]
    secret: Option<crate::AuditSecret>,
}

/// Every record of the CI job `job_id` (its `principal.workload.job_id`), oldest first: what
/// the job read (secrets by path and version), cloned, pushed, and what it was refused.
pub fn search_job(path: &Path, job_id: &str) -> Result<Vec<JobRecord>, SearchError> {
    if job_id.is_empty() {
        return Err(SearchError::Query("--job needs a job id".into()));
    }
    // (seq, record): a request that changed the forge has a `forwarding` record and a
    // completion naming it (`forwarding_seq`); the completion stands for both.
    let mut out: Vec<(u64, JobRecord)> = Vec::new();
    let mut completed = std::collections::HashSet::new();
    each_record(path, |rec: JobLine, file, line| {
        let Some(w) = rec.principal.and_then(|p| p.workload) else {
            return;
        };
        if w.job_id != job_id {
            return;
        }
        if let Some(f) = rec.forwarding_seq {
            completed.insert(f);
        }
        out.push((
            rec.seq,
            JobRecord {
                time: rec.time,
                request_id: rec.request_id.unwrap_or_default(),
                event: rec.event,
                action: rec.action.unwrap_or_default(),
                decision: rec.decision.unwrap_or_default(),
                reason: rec.reason.unwrap_or_default(),
                repo: rec.repo.unwrap_or_default(),
                detail: rec.detail.unwrap_or_default(),
                commit: w.commit,
                secret: rec.secret,
                file: file.to_path_buf(),
                line,
            },
        ));
    })?;
    Ok(out
        .into_iter()
        .filter(|(seq, _)| !completed.contains(seq))
        .map(|(_, r)| r)
        .collect())
}

/// One ref update that matched, with the push it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMatch {
    /// When the push arrived.
    pub time: String,
    /// The request id.
    pub request_id: String,
    /// Who pushed: forge user name.
    pub username: String,
    /// Who pushed: subject and issuer.
    pub subject: String,
    /// The issuer that vouched for them.
    pub issuer: String,
    /// The repository.
    pub repo: String,
    /// The ref.
    pub name: String,
    /// `create`, `update` or `delete`.
    pub op: String,
    /// Old id.
    pub old: String,
    /// New id.
    pub new: String,
    /// The decision on this ref (`allow` or `deny`).
    pub decision: String,
    /// Its reason code.
    pub reason: String,
    /// The HTTP status of the push, when known.
    pub status: Option<u16>,
    /// Whether the push's completion record was found. A push that can change the forge is
    /// first recorded as `forwarding` (synced before it went upstream); a match found only
    /// there was forwarded but its end was never recorded (the gateway died first).
    pub finished: bool,
    /// The file it was found in: the log, or one rotated out of it.
    pub file: std::path::PathBuf,
    /// The line of that file.
    pub line: u64,
}

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The log could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The query is unusable.
    #[error("{0}")]
    Query(String),
}

#[derive(Deserialize)]
struct Principal {
    subject: String,
    issuer: String,
    username: String,
}

#[derive(Deserialize)]
struct Ref {
    name: String,
    op: String,
    old: String,
    new: String,
    decision: String,
    reason: String,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    event: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    principal: Option<Principal>,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    refs: Option<Vec<Ref>>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    forwarding_seq: Option<u64>,
}

/// Reads every record of the log at `path`, its rotated files first, oldest first, as `T`,
/// and hands each to `f` with its file and line. A line that is not such a record (not JSON, or
/// another shape) is skipped: `verify` is the tool for damage.
fn each_record<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut f: impl FnMut(T, &Path, u64),
) -> Result<(), SearchError> {
    let io = |p: &Path, e: std::io::Error| SearchError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let parts = crate::rotated_parts(path).map_err(|e| io(path, e))?;
    let files = parts
        .iter()
        .map(|(_, _, p)| p.as_path())
        .chain(std::iter::once(path));
    for file_path in files {
        let file = File::open(file_path).map_err(|e| io(file_path, e))?;
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| io(file_path, e))?;
            if let Ok(rec) = serde_json::from_slice::<T>(&line) {
                f(rec, file_path, i as u64 + 1);
            }
        }
    }
    Ok(())
}

fn ref_matches(wanted: &str, name: &str) -> bool {
    name == wanted
        || (!wanted.starts_with("refs/")
            && (name == format!("refs/heads/{wanted}") || name == format!("refs/tags/{wanted}")))
}

/// Finds the ref updates that match `q`, oldest first. Lines that are not push records are
/// skipped; a line that is not JSON at all is skipped too (`verify` is the tool for damage).
pub fn search(path: &Path, q: &SearchQuery) -> Result<Vec<PushMatch>, SearchError> {
    let commit = match &q.commit {
        Some(c) => {
            let c = c.trim().to_ascii_lowercase();
            if c.len() < 4 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SearchError::Query(format!(
                    "--commit `{c}` is not a commit id (at least 4 hex digits)"
                )));
            }
            Some(c)
        }
        None => None,
    };
    if commit.is_none() && q.repo.is_none() && q.git_ref.is_none() {
        return Err(SearchError::Query(
            "give at least one of --commit, --repo and --ref".into(),
        ));
    }
    let mut found = Found::default();
    each_record(path, |rec: Line, file, line| {
        found.add(rec, q, commit.as_deref(), file, line);
    })?;
    Ok(found.out)
}

/// The matches so far, and where those known only from a `forwarding` record are (by that
/// record's `seq` and the ref), so that the completion record naming it (`forwarding_seq`)
/// takes their place.
#[derive(Default)]
struct Found {
    out: Vec<PushMatch>,
    forwarded: std::collections::HashMap<(u64, String), usize>,
}

impl Found {
    /// Adds the ref updates of `rec` (line `line` of `file`) that match the query.
    fn add(&mut self, rec: Line, q: &SearchQuery, commit: Option<&str>, file: &Path, line: u64) {
        let Some(refs) = rec.refs else { return };
        let repo = rec.repo.unwrap_or_default();
        if q.repo
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(&repo))
        {
            return;
        }
        for r in refs {
            if commit.is_some_and(|c| !r.new.starts_with(c)) {
                continue;
            }
            if q.git_ref
                .as_deref()
                .is_some_and(|w| !ref_matches(w, &r.name))
            {
                continue;
            }
            let (username, subject, issuer) = rec
                .principal
                .as_ref()
                .map(|p| (p.username.clone(), p.subject.clone(), p.issuer.clone()))
                .unwrap_or_default();
            let forwarding = rec.event == "forwarding";
            let m = PushMatch {
                time: rec.time.clone(),
                request_id: rec.request_id.clone().unwrap_or_default(),
                username,
                subject,
                issuer,
                repo: repo.clone(),
                name: r.name,
                op: r.op,
                old: r.old,
                new: r.new,
                decision: r.decision,
                reason: r.reason,
                status: rec.status,
                finished: !forwarding,
                file: file.to_owned(),
                line,
            };
            let announced = rec
                .forwarding_seq
                .and_then(|s| self.forwarded.remove(&(s, m.name.clone())));
            if forwarding {
                self.forwarded
                    .insert((rec.seq, m.name.clone()), self.out.len());
                self.out.push(m);
            } else if let Some(at) = announced {
                self.out[at] = m;
            } else {
                self.out.push(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pusher_of_a_commit() {
        let dir = std::env::temp_dir().join(format!("gh-search-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("audit.log");
        let rec = |user: &str, repo: &str, name: &str, new: &str, decision: &str| {
            format!(
                r#"{{"seq":1,"prev":"x","time":"t","event":"request","request_id":"r-{user}","principal":{{"kind":"user","subject":"{user}","issuer":"i","username":"{user}","groups":[]}},"repo":"{repo}","refs":[{{"name":"{name}","op":"update","old":"{z}","new":"{new}","decision":"{decision}","reason":"allowed"}}],"status":200}}"#,
                z = "1".repeat(40)
            )
        };
        let text = [
            rec(
                "alice",
                "demo/hello",
                "refs/heads/main",
                &format!("abcdef{}", "0".repeat(34)),
                "allow",
            ),
            r#"{"seq":2,"prev":"y","time":"t","event":"request","repo":"demo/hello","status":200}"#
                .to_owned(),
            rec(
                "bob",
                "demo/other",
                "refs/heads/main",
                &format!("abcdef{}", "1".repeat(34)),
                "deny",
            ),
            "not json".to_owned(),
            rec(
                "carol",
                "demo/hello",
                "refs/tags/v1",
                &format!("123456{}", "0".repeat(34)),
                "allow",
            ),
        ]
        .join("\n");
        std::fs::write(&log, text).unwrap_or_else(|e| panic!("{e}"));
        let q = |commit: Option<&str>, repo: Option<&str>, r: Option<&str>| {
            search(
                &log,
                &SearchQuery {
                    commit: commit.map(str::to_owned),
                    repo: repo.map(str::to_owned),
                    git_ref: r.map(str::to_owned),
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let m = q(Some("ABCDEF"), None, None);
        assert_eq!(
            m.iter().map(|m| m.username.as_str()).collect::<Vec<_>>(),
            vec!["alice", "bob"]
        );
        assert_eq!(m[0].line, 1);
        let m = q(Some("abcdef"), Some("Demo/Hello"), Some("main"));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].username, "alice");
        assert_eq!(q(None, Some("demo/hello"), Some("v1"))[0].username, "carol");
        assert!(q(Some("fffff"), None, None).is_empty());

        // A file rotated out of the log is searched first, and named in its matches.
        let old = dir.join("audit.log.1-1");
        let older = rec(
            "dave",
            "demo/hello",
            "refs/heads/main",
            &format!("abcdef{}", "2".repeat(34)),
            "allow",
        );
        std::fs::write(&old, format!("{older}\n")).unwrap_or_else(|e| panic!("{e}"));
        let m = q(Some("abcdef"), None, None);
        assert_eq!(
            m.iter()
                .map(|m| (m.username.as_str(), m.file.clone(), m.line))
                .collect::<Vec<_>>(),
            vec![
                ("dave", old.clone(), 1),
                ("alice", log.clone(), 1),
                ("bob", log.clone(), 3)
            ]
        );
        std::fs::remove_file(&old).unwrap_or_else(|e| panic!("{e}"));
        assert!(search(&log, &SearchQuery::default()).is_err());
        assert!(
            search(
                &log,
                &SearchQuery {
                    commit: Some("xyz".into()),
                    ..SearchQuery::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn a_push_is_one_match_and_a_forwarded_push_without_an_end_is_still_found() {
        let dir = std::env::temp_dir().join(format!("gh-search-fwd-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("audit.log");
        let line = |seq: u64, event: &str, id: &str, name: &str, status: &str| {
            format!(
                r#"{{"seq":{seq},"prev":"x","time":"t","event":"{event}","request_id":"{id}","principal":{{"kind":"user","subject":"a","issuer":"i","username":"alice","groups":[]}},"repo":"demo/hello","refs":[{{"name":"{name}","op":"create","old":"{z}","new":"{n}","decision":"allow","reason":"allowed"}}]{status}}}"#,
                z = "0".repeat(40),
                n = "a".repeat(40),
            )
        };
        let text = [
            line(1, "forwarding", "r1", "refs/heads/one", ""),
            line(2, "forwarding", "r2", "refs/heads/two", ""),
            line(
                3,
                "request",
                "r1",
                "refs/heads/one",
                r#","status":200,"forwarding_seq":1"#,
            ),
            // Another push under the same (client-chosen) request id and ref, not announced:
            // not taken for r2's end.
            line(4, "request", "r2", "refs/heads/two", r#","status":403"#),
        ]
        .join("\n");
        std::fs::write(&log, text).unwrap_or_else(|e| panic!("{e}"));
        let m = search(
            &log,
            &SearchQuery {
                commit: Some("aaaa".into()),
                ..SearchQuery::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!((m[2].line, m[2].finished), (4, true));
        // r1: its completion record replaces its announcement.
        assert_eq!(
            (m[0].name.as_str(), m[0].finished),
            ("refs/heads/one", true)
        );
        assert_eq!((m[0].status, m[0].line), (Some(200), 3));
        // r2: forwarded, then nothing (the gateway died): still found, and said to be unfinished.
        assert_eq!(
            (m[1].name.as_str(), m[1].finished),
            ("refs/heads/two", false)
        );
        assert_eq!(m[1].status, None);
    }
}
