//! What a ref-moving web or API route leaves to the forge: a pull request's base and head
//! branches, a release's tag, a repository's default branch and whether it is empty. Asked on the
//! forge's REST API (`/api/v1/repos/{owner}/{repo}/pulls/{index}`, `/releases/{id}`, the
//! repository itself) with the `forge.api` token. Release tags and repositories are cached for
//! `forge.api.cache_ttl`, so that a burst of commits asks once. Pull requests are asked afresh
//! for every request: anyone who may work on a pull request may retarget it to another base, and
//! a cached base would let a merge into `main` be decided as a merge into `dev`. A failed lookup
//! is an error: the caller refuses the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_core::{Clock, Redacted, RepoRef};
use gatehouse_git::{PlannedMove, RefOp, RefSource};
use serde::Deserialize;

use crate::ForgeError;

/// Most answers remembered; the cache is emptied when full.
const MAX_CACHED: usize = 10_000;
/// The largest answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The forge says there is no such pull request, release or repository.
    #[error("the forge has no {0}")]
    NotFound(String),
    /// The forge could not be asked, or its answer could not be read.
    #[error("the forge could not say: {0}")]
    Unavailable(String),
}

/// A pull request's branches, as the forge's API gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullBranches {
    /// The full ref of the base branch (in the repository the pull request is in).
    pub base: String,
    /// The full ref of the head branch.
    pub head: String,
    /// The head repository (`owner`, `name`), or `None` when it no longer exists.
    pub head_repo: Option<(String, String)>,
}

/// What Gatehouse needs to know of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// The default branch, as a full ref.
    pub default_branch: String,
    /// It has no commits yet: the forge's editor and contents API create its default branch.
    pub empty: bool,
}

#[derive(Debug, Clone)]
enum Answer {
    Repo(RepoInfo),
    Text(String),
    Flag(bool),
}

#[derive(Deserialize)]
struct ApiRepo {
    full_name: String,
}

#[derive(Deserialize)]
struct ApiBranch {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    repo: Option<ApiRepo>,
}

#[derive(Deserialize)]
struct ApiPull {
    base: ApiBranch,
    head: ApiBranch,
}

#[derive(Deserialize)]
struct ApiRelease {
    tag_name: String,
}

#[derive(Deserialize)]
struct ApiTag {
    name: String,
}

/// Page size of the tag and release lists, and most pages read (10,000 entries).
const LIST_PAGE: usize = 50;
const MAX_LIST_PAGES: usize = 200;

#[derive(Deserialize)]
struct ApiRepository {
    default_branch: String,
    #[serde(default)]
    empty: bool,
}

/// A branch name as the API gives it (`main`), or a full ref (an AGit pull request's head is
/// `refs/pull/7/head`), as a full ref.
fn branch_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    }
}

fn pull_branches(a: ApiPull) -> PullBranches {
    PullBranches {
        base: branch_ref(&a.base.reference),
        head: branch_ref(&a.head.reference),
        head_repo: a.head.repo.and_then(|r| {
            r.full_name
                .split_once('/')
                .map(|(o, n)| (o.to_owned(), n.to_owned()))
        }),
    }
}

/// The forge's REST API, for the refs a route does not name.
pub struct ForgeApi {
    api: String,
    token: Redacted<String>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    ttl: i64,
    cache: Mutex<HashMap<String, (Answer, i64)>>,
}

impl std::fmt::Debug for ForgeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeApi")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl ForgeApi {
    /// The lookups over the forge's API (`client`), answers of repositories and release tags
    /// reused for `cache_ttl`.
    pub fn new(
        client: crate::ForgeClient,
        cache_ttl: std::time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ForgeError> {
        let http = client.http(false)?;
        Ok(Self {
            api: client.api,
            token: client.token,
            http,
            clock,
            ttl: i64::try_from(cache_ttl.as_secs()).unwrap_or(i64::MAX),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The base and head branches of pull request `index` of `owner/repo`, asked afresh every
    /// time (a pull request can be retargeted; see the module's documentation).
    pub async fn pull(
        &self,
        owner: &str,
        repo: &str,
        index: u64,
    ) -> Result<PullBranches, LookupError> {
        let path = format!("/api/v1/repos/{owner}/{repo}/pulls/{index}");
        let what = format!("pull request {owner}/{repo}#{index}");
        let a: ApiPull = self.get(&path, &what).await?;
        Ok(pull_branches(a))
    }

    /// The tag of release `id` of `owner/repo`, as a full ref.
    pub async fn release_tag(
        &self,
        owner: &str,
        repo: &str,
        id: u64,
    ) -> Result<String, LookupError> {
        let path = format!("/api/v1/repos/{owner}/{repo}/releases/{id}");
        if let Some(Answer::Text(t)) = self.cached(&path) {
            return Ok(t);
        }
        let what = format!("release {id} of {owner}/{repo}");
        let a: ApiRelease = self.get(&path, &what).await?;
        if a.tag_name.is_empty() {
            return Err(LookupError::Unavailable(format!("{what} has no tag")));
        }
        let t = format!("refs/tags/{}", a.tag_name);
        self.remember(path, Answer::Text(t.clone()));
        Ok(t)
    }

    /// The default branch of `owner/repo` and whether it is empty.
    pub async fn repository(&self, owner: &str, repo: &str) -> Result<RepoInfo, LookupError> {
        let path = format!("/api/v1/repos/{owner}/{repo}");
        if let Some(Answer::Repo(r)) = self.cached(&path) {
            return Ok(r);
        }
        let what = format!("repository {owner}/{repo}");
        let a: ApiRepository = self.get(&path, &what).await?;
        if a.default_branch.is_empty() {
            return Err(LookupError::Unavailable(format!(
                "{what} has no default branch"
            )));
        }
        let r = RepoInfo {
            default_branch: branch_ref(&a.default_branch),
            empty: a.empty,
        };
        self.remember(path, Answer::Repo(r.clone()));
        Ok(r)
    }

    /// The tags of `owner/repo` whose names equal `name` without regard to case (the forge's
    /// `lower_tag_name`), listed afresh.
    pub async fn tags_like(
        &self,
        owner: &str,
        repo: &str,
        name: &str,
    ) -> Result<Vec<String>, LookupError> {
        let path = format!("/api/v1/repos/{owner}/{repo}/tags");
        self.names_like::<ApiTag>(&path, name, |t| t.name).await
    }

    /// The tags of the releases of `owner/repo` (drafts included) whose tags equal `name`
    /// without regard to case, listed afresh.
    pub async fn release_tags_like(
        &self,
        owner: &str,
        repo: &str,
        name: &str,
    ) -> Result<Vec<String>, LookupError> {
        let path = format!("/api/v1/repos/{owner}/{repo}/releases");
        self.names_like::<ApiRelease>(&path, name, |r| r.tag_name)
            .await
    }

    /// The names (`name_of` each entry of the list at `path`) that equal `name` without regard
    /// to case.
    async fn names_like<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        name: &str,
        name_of: impl Fn(T) -> String,
    ) -> Result<Vec<String>, LookupError> {
        let want = name.to_lowercase();
        let mut out = Vec::new();
        self.each_page::<T>(path, |t| {
            let n = name_of(t);
            if n.to_lowercase() == want {
                out.push(n);
            }
        })
        .await?;
        Ok(out)
    }

    /// Every entry of a paged list, up to [`MAX_LIST_PAGES`] pages (more is an error: the answer
    /// would be incomplete).
    async fn each_page<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        mut each: impl FnMut(T),
    ) -> Result<(), LookupError> {
        for page in 1..=MAX_LIST_PAGES {
            let items: Vec<T> = self
                .get(&format!("{path}?limit={LIST_PAGE}&page={page}"), path)
                .await?;
            let n = items.len();
            items.into_iter().for_each(&mut each);
            if n < LIST_PAGE {
                return Ok(());
            }
        }
        Err(LookupError::Unavailable(format!(
            "{path}: more than {} entries",
            LIST_PAGE * MAX_LIST_PAGES
        )))
    }

    /// The forge API's base URL.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    /// A yes-or-no answer remembered at most `max_age` seconds ago.
    pub(crate) fn cached_flag(&self, key: &str, max_age: i64) -> Option<bool> {
        let now = self.clock.now().as_secs();
        let c = self.cache.lock().ok()?;
        match c.get(key)? {
            (Answer::Flag(f), at) if now - at < max_age => Some(*f),
            _ => None,
        }
    }

    pub(crate) fn remember_flag(&self, key: String, f: bool) {
        self.remember(key, Answer::Flag(f));
    }

    /// A text answer remembered less than `forge.api.cache_ttl` ago.
    pub(crate) fn cached_text(&self, key: &str) -> Option<String> {
        match self.cached(key)? {
            Answer::Text(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn remember_text(&self, key: String, t: String) {
        self.remember(key, Answer::Text(t));
    }

    fn cached(&self, key: &str) -> Option<Answer> {
        let now = self.clock.now().as_secs();
        let c = self.cache.lock().ok()?;
        let (a, at) = c.get(key)?;
        (now - at < self.ttl).then(|| a.clone())
    }

    fn remember(&self, key: String, a: Answer) {
        let now = self.clock.now().as_secs();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(key, (a, now));
        }
    }

    pub(crate) async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, LookupError> {
        let unavailable = |e: String| LookupError::Unavailable(format!("GET {path}: {e}"));
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .header("authorization", format!("token {}", self.token.expose()))
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(LookupError::NotFound(what.to_owned()));
        }
        if !status.is_success() {
            return Err(unavailable(format!("status {status}")));
        }
        let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        if body.len() > MAX_ANSWER {
            return Err(unavailable("answer too large".into()));
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(e.to_string()))
    }
}

/// One ref a route moves, with the repository it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMove {
    /// The repository (a pull request's head may be in a fork).
    pub repo: RepoRef,
    /// The full ref name.
    pub name: String,
    /// Created, updated or deleted.
    pub op: RefOp,
}

/// A repository name from the forge's API as the policy names repositories (the characters the
/// forges allow; lower-cased where the forge compares names without case), or `None`.
fn repo_ref(owner: &str, name: &str, case_insensitive: bool) -> Option<RepoRef> {
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
        if case_insensitive {
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

/// The refs `planned` (`gatehouse_git::plan_moves` for a route of `repo`) moves, with what only
/// the forge knows looked up on `api`. No `api` and a lookup needed: an error. A pull request
/// whose head repository is gone has no head branch to move: that move is dropped.
pub async fn resolve_moves(
    api: Option<&ForgeApi>,
    case_insensitive: bool,
    repo: &RepoRef,
    planned: Vec<PlannedMove>,
) -> Result<Vec<ResolvedMove>, LookupError> {
    let api = || {
        api.ok_or_else(|| {
            LookupError::Unavailable(
                "no forge API is configured ([forge.api]) to ask which branch or tag this moves"
                    .into(),
            )
        })
    };
    let mut out = Vec::new();
    let mut pulls: HashMap<u64, PullBranches> = HashMap::new();
    let mut info: Option<RepoInfo> = None;
    for p in planned {
        let here = |name: String| ResolvedMove {
            repo: repo.clone(),
            name,
            op: p.op,
        };
        match p.source {
            RefSource::Named(n) => out.push(here(n)),
            RefSource::AnyOf(ns) => out.extend(ns.into_iter().map(here)),
            RefSource::PullBase(i) | RefSource::PullHead(i) => {
                let pr = match pulls.get(&i) {
                    Some(pr) => pr.clone(),
                    None => {
                        let pr = api()?.pull(&repo.owner, &repo.name, i).await?;
                        pulls.insert(i, pr.clone());
                        pr
                    }
                };
                if matches!(p.source, RefSource::PullBase(_)) {
                    out.push(here(pr.base));
                    continue;
                }
                let Some((owner, name)) = pr.head_repo else {
                    continue;
                };
                let head = repo_ref(&owner, &name, case_insensitive).ok_or_else(|| {
                    LookupError::Unavailable(format!(
                        "the head repository `{owner}/{name}` is no name Gatehouse reads"
                    ))
                })?;
                out.push(ResolvedMove {
                    repo: head,
                    name: pr.head,
                    op: p.op,
                });
            }
            RefSource::DefaultBranch | RefSource::DefaultBranchIfEmpty | RefSource::IfEmpty(_) => {
                let r = match &info {
                    Some(r) => r.clone(),
                    None => {
                        let r = api()?.repository(&repo.owner, &repo.name).await?;
                        info = Some(r.clone());
                        r
                    }
                };
                match p.source {
                    RefSource::DefaultBranch => out.push(here(r.default_branch)),
                    RefSource::DefaultBranchIfEmpty if r.empty => out.push(here(r.default_branch)),
                    RefSource::IfEmpty(name) if r.empty => out.push(here(name)),
                    _ => {}
                }
            }
            RefSource::TagsLike(name) => {
                for t in api()?.tags_like(&repo.owner, &repo.name, &name).await? {
                    out.push(here(format!("refs/tags/{t}")));
                }
            }
            RefSource::ReleaseTagsLike(name) => {
                for t in api()?
                    .release_tags_like(&repo.owner, &repo.name, &name)
                    .await?
                {
                    out.push(here(format!("refs/tags/{t}")));
                }
            }
            RefSource::ReleaseTag(id) => {
                out.push(here(api()?.release_tag(&repo.owner, &repo.name, id).await?));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_answers_are_read_as_full_refs() {
        let a: ApiPull = serde_json::from_str(
            r#"{"number":7,"base":{"ref":"main","repo":{"full_name":"acme/api"}},"head":{"ref":"feature/x","repo":{"full_name":"bob/api-fork"}},"merged":false}"#,
        )
        .unwrap();
        assert_eq!(
            pull_branches(a),
            PullBranches {
                base: "refs/heads/main".into(),
                head: "refs/heads/feature/x".into(),
                head_repo: Some(("bob".into(), "api-fork".into())),
            }
        );
        // A deleted fork: no head repository. An AGit head is a full ref already.
        let a: ApiPull = serde_json::from_str(
            r#"{"base":{"ref":"main"},"head":{"ref":"refs/pull/7/head","repo":null}}"#,
        )
        .unwrap();
        let p = pull_branches(a);
        assert_eq!(p.head, "refs/pull/7/head");
        assert_eq!(p.head_repo, None);
    }

    #[test]
    fn head_repositories_are_named_as_the_policy_names_them() {
        let r = repo_ref("Bob", "API.fork", true).unwrap();
        assert_eq!((r.owner.as_str(), r.name.as_str()), ("bob", "api.fork"));
        assert_eq!(repo_ref("Bob", "API", false).unwrap().owner, "Bob");
        for (o, n) in [
            ("", "x"),
            ("a/b", "x"),
            ("a", ".."),
            ("a", "x y"),
            ("ä", "x"),
        ] {
            assert_eq!(repo_ref(o, n, true), None, "{o}/{n}");
        }
    }

    #[tokio::test]
    async fn what_the_request_names_needs_no_forge_and_the_rest_fails_closed_without_one() {
        let repo = RepoRef {
            owner: "acme".into(),
            name: "api".into(),
        };
        let planned = vec![
            PlannedMove {
                source: RefSource::Named("refs/heads/dev".into()),
                op: RefOp::Create,
            },
            PlannedMove {
                source: RefSource::AnyOf(vec!["refs/heads/a".into(), "refs/heads/a/b".into()]),
                op: RefOp::Update,
            },
        ];
        let got = resolve_moves(None, true, &repo, planned).await.unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["refs/heads/dev", "refs/heads/a", "refs/heads/a/b"]);
        for source in [
            RefSource::PullBase(1),
            RefSource::PullHead(1),
            RefSource::DefaultBranch,
            RefSource::DefaultBranchIfEmpty,
            RefSource::IfEmpty("refs/heads/x".into()),
            RefSource::ReleaseTag(1),
            RefSource::TagsLike("v1".into()),
            RefSource::ReleaseTagsLike("v1".into()),
        ] {
            let planned = vec![PlannedMove {
                source,
                op: RefOp::Update,
            }];
            assert!(matches!(
                resolve_moves(None, true, &repo, planned).await,
                Err(LookupError::Unavailable(_))
            ));
        }
    }
}
