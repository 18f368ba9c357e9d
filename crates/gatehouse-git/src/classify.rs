//! Request classification: which forge operation a request is, on which repository.

use gatehouse_core::{Action, RepoRef, Resource, Route};

use crate::path::{NormalizedPath, PathError, normalize_path};

/// Which kind of forge sits upstream; it decides how repository names compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForgeFlavor {
    /// Gitea: owner and repository names are case-insensitive.
    #[default]
    Gitea,
    /// Forgejo: as Gitea.
    Forgejo,
    /// Gogs: as Gitea.
    Gogs,
    /// A plain Git server (e.g. `git http-backend` over a directory): names are case-sensitive.
    Generic,
}

impl ForgeFlavor {
    /// Whether owner and repository names compare without regard to case.
    pub const fn case_insensitive(self) -> bool {
        !matches!(self, ForgeFlavor::Generic)
    }
}

/// A Git service, as named in `?service=` and in the RPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GitService {
    /// Clone and fetch.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl GitService {
    /// `git-upload-pack` or `git-receive-pack`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "git-upload-pack" => Some(GitService::UploadPack),
            "git-receive-pack" => Some(GitService::ReceivePack),
            _ => None,
        }
    }

    const fn action(self) -> Action {
        match self {
            GitService::UploadPack => Action::GitRead,
            GitService::ReceivePack => Action::GitWrite,
        }
    }
}

/// What kind of request this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `GET .../info/refs?service=...`: ref advertisement.
    GitAdvertise(GitService),
    /// `POST .../git-upload-pack` or `.../git-receive-pack`.
    GitRpc(GitService),
    /// Dumb-HTTP reads: `HEAD`, `objects/...`, `info/refs` without a service.
    GitDumb,
    /// `POST .../info/lfs/objects/batch`: read or write depends on the body's `operation`;
    /// classified as `lfs:write` until the body says `download`.
    LfsBatch,
    /// Any other LFS endpoint.
    Lfs,
    /// `/api/v1/repos/{owner}/{repo}/...`.
    RepoApi,
    /// Any other `/api/...` path.
    Api,
    /// Everything else (web UI and plain routes).
    Web,
}

/// The result of classifying a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// What kind of request it is.
    pub kind: RequestKind,
    /// The action the policy is asked about.
    pub action: Action,
    /// The repository or route the policy is asked about.
    pub resource: Resource,
    /// The normalized, percent-encoded path to forward upstream.
    pub forward_path: String,
    /// The same path decoded (for the audit record and CGI's `PATH_INFO`).
    pub decoded_path: String,
    /// The query to forward upstream: rebuilt canonically for Git endpoints, as received otherwise.
    pub forward_query: Option<String>,
    /// The request is for the repository's wiki (`repo.wiki.git`), which shares its permissions.
    pub wiki: bool,
}

/// The query sent upstream: a forge's credential parameters (`token`, `access_token`, `sudo`)
/// removed, so that the only identity the forge sees is the one Gatehouse asserts.
fn forwarded_query(flavor: ForgeFlavor, query: Option<&str>) -> Option<String> {
    let q = query?;
    if flavor == ForgeFlavor::Generic {
        return Some(q.to_owned());
    }
    crate::query::without_forge_credentials(q).map(std::borrow::Cow::into_owned)
}

/// A valid owner or repository name on Gitea, Forgejo and Gogs: ASCII letters, digits, `-`, `_`, `.`,
/// not `.` or `..`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn fold(flavor: ForgeFlavor, s: &str) -> String {
    if flavor.case_insensitive() {
        s.to_ascii_lowercase()
    } else {
        s.to_owned()
    }
}

/// Decodes an `application/x-www-form-urlencoded` component as Go's `url.ParseQuery` does.
pub(crate) fn form_decode(s: &str) -> Result<String, PathError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let h = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let l = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(h), Some(l)) = (h, l) else {
                    return Err(PathError::BadQuery);
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadQuery)
}

/// The decoded value of `service=` in a query; refuses a query that names it twice (servers
/// disagree on which one wins) or that cannot be decoded.
fn service_param(query: Option<&str>) -> Result<Option<String>, PathError> {
    let Some(q) = query else { return Ok(None) };
    let mut found = None;
    for pair in q.split(['&', ';']) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k)? == "service" {
            if found.is_some() {
                return Err(PathError::BadQuery);
            }
            found = Some(form_decode(v)?);
        }
    }
    Ok(found)
}

/// Where a repository path ends and the Git endpoint begins.
struct RepoPath<'a> {
    owner: &'a str,
    repo: &'a str,
    rest: &'a [String],
}

fn split_repo(segs: &[String]) -> Option<RepoPath<'_>> {
    match segs {
        [owner, repo, rest @ ..] => Some(RepoPath { owner, repo, rest }),
        _ => None,
    }
}

fn is_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Which Git or LFS endpoint the remainder of a repository path names, if any.
fn git_endpoint(
    rest: &[String],
    method: &str,
    query: Option<&str>,
) -> Result<Option<(RequestKind, Action)>, PathError> {
    let r: Vec<&str> = rest.iter().map(String::as_str).collect();
    let kind = match r.as_slice() {
        ["info", "refs"] => match service_param(query)? {
            None => (RequestKind::GitDumb, Action::GitRead),
            Some(name) => match GitService::from_name(&name) {
                Some(svc) => (RequestKind::GitAdvertise(svc), svc.action()),
                None => return Err(PathError::BadQuery),
            },
        },
        ["git-upload-pack"] => (RequestKind::GitRpc(GitService::UploadPack), Action::GitRead),
        ["git-receive-pack"] => (
            RequestKind::GitRpc(GitService::ReceivePack),
            Action::GitWrite,
        ),
        ["HEAD"]
        | [
            "objects",
            "info",
            "alternates" | "http-alternates" | "packs",
        ] => (RequestKind::GitDumb, Action::GitRead),
        ["objects", dir, file] if is_hex(dir, 2..=2) && is_hex(file, 38..=62) => {
            (RequestKind::GitDumb, Action::GitRead)
        }
        ["objects", "pack", file]
            if file.starts_with("pack-") && (file.ends_with(".pack") || file.ends_with(".idx")) =>
        {
            (RequestKind::GitDumb, Action::GitRead)
        }
        ["info", "lfs", "objects", "batch"] => (RequestKind::LfsBatch, Action::LfsWrite),
        ["info", "lfs", ..] => {
            let write = !matches!(method, "GET" | "HEAD" | "OPTIONS");
            (
                RequestKind::Lfs,
                if write {
                    Action::LfsWrite
                } else {
                    Action::LfsRead
                },
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

/// Whether a path that is not `/{owner}/{repo}/<endpoint>` still names a Git or LFS endpoint or a
/// `.git` directory somewhere.
fn looks_like_git(segs: &[&str]) -> bool {
    let dot_git = segs
        .iter()
        .enumerate()
        .any(|(i, s)| s.ends_with(".git") && !(segs.len() == 2 && i == 1));
    dot_git
        || segs
            .iter()
            .any(|s| matches!(*s, "git-upload-pack" | "git-receive-pack"))
        || segs
            .windows(2)
            .any(|w| w[0] == "info" && matches!(w[1], "refs" | "lfs"))
}

/// API paths under `/api/v1/repos/` that are not a repository (Gitea routes them first).
fn is_global_repos_api(segs: &[&str]) -> bool {
    matches!(segs, ["search"] | ["migrate"] | ["issues", "search"])
}

fn method_action(method: &str) -> Action {
    if matches!(method, "GET" | "HEAD" | "OPTIONS") {
        Action::ApiRead
    } else {
        Action::ApiWrite
    }
}

/// Whether the owner and repository names a forge route carries are names the forge can have
/// (Gitea, Forgejo and Gogs: ASCII letters, digits, `-`, `_`, `.`). On the web UI these are the
/// first two segments (`/{owner}/{repo}/...`, and every top-level page such as `/user/login` or
/// `/explore/repos` fits too); on the API, see [`api_names_valid`]. Anything else is refused,
/// so that no Unicode spelling (`İ`, a full-width letter) that the forge or its database might
/// fold onto another name (Go's `strings.ToLower("İ")` is `i`) reaches it under a path the policy
/// matched as something else. Other segments (file paths, branch and token names) are not names.
fn forge_names_valid(kind: RequestKind, segs: &[&str]) -> bool {
    match kind {
        RequestKind::Api => api_names_valid(segs),
        _ => segs.iter().take(2).all(|s| valid_name(s)),
    }
}

/// The owner, user and repository names in an API route outside `/api/v1/repos/{owner}/{repo}`
/// (read from Gitea's `routers/api/v1/api.go` and `routers/api/packages/api.go`): the segment
/// after `users`, `orgs`, `org`, `following`, `members`, `public_members` and `blocks` names a
/// user or organisation (`/api/v1/users/{username}/...`, `/api/v1/org/{org}/repos`,
/// `/api/v1/admin/users/{username}`, `/api/v1/orgs/{org}/members/{username}`,
/// `/api/v1/user/following/{username}`); the two after `repos`, `starred` and `unadopted` name an
/// owner and a repository (`/api/v1/teams/{id}/repos/{org}/{repo}`,
/// `/api/v1/user/starred/{owner}/{repo}`, `/api/v1/admin/unadopted/{owner}/{repo}`); after
/// `packages` only the owner is a name (package names and versions are free-form).
fn api_names_valid(segs: &[&str]) -> bool {
    let mut i = 1;
    while i < segs.len() {
        let names = match segs[i] {
            "packages" => return segs.get(i + 1).is_none_or(|s| valid_name(s)),
            "users" | "orgs" | "org" | "following" | "members" | "public_members" | "blocks" => 1,
            "repos" | "starred" | "unadopted" => 2,
            _ => 0,
        };
        if !segs.iter().skip(i + 1).take(names).all(|s| valid_name(s)) {
            return false;
        }
        i += 1 + names;
    }
    true
}

/// Builds a repository reference from raw path segments. Names are case-folded first (for
/// case-insensitive forges) so that every suffix rule applies to exactly the spelling that is
/// forwarded upstream. Strips one `.git` suffix, and `.wiki` for the wiki repository.
pub(crate) fn repo_ref(
    flavor: ForgeFlavor,
    owner: &str,
    repo: &str,
) -> Result<(RepoRef, bool), PathError> {
    let owner = fold(flavor, owner);
    let repo = fold(flavor, repo);
    let repo = repo.strip_suffix(".git").unwrap_or(&repo);
    let (repo, wiki) = match repo.strip_suffix(".wiki") {
        Some(base) if flavor != ForgeFlavor::Generic => (base, true),
        _ => (repo, false),
    };
    if !valid_name(&owner) || !valid_name(repo) || repo.to_ascii_lowercase().ends_with(".git") {
        return Err(PathError::BadRepoName);
    }
    Ok((
        RepoRef {
            owner,
            name: repo.to_owned(),
        },
        wiki,
    ))
}

/// Classifies a request: normalizes `raw_path`, decides which forge operation it is and on which
/// repository or route, and returns the path to forward.
///
/// `method` must be upper-case, `host` the request's host without port. A path that names a Git
/// endpoint with an invalid repository name is refused rather than treated as a plain route, so
/// that a repository can never be reached through the route policy.
pub fn classify(
    flavor: ForgeFlavor,
    method: &str,
    host: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Result<Classified, PathError> {
    let path = normalize_path(raw_path)?;
    let segs = path.segments();

    // Git smart-HTTP, dumb HTTP and LFS: /{owner}/{repo}[.git]/<endpoint>
    if let Some(rp) = split_repo(segs)
        && let Some((kind, action)) = git_endpoint(rp.rest, method, query)?
    {
        let (repo, wiki) = repo_ref(flavor, rp.owner, rp.repo)?;
        let mut new_segs = segs.to_vec();
        if flavor.case_insensitive() {
            new_segs[0] = new_segs[0].to_ascii_lowercase();
            new_segs[1] = new_segs[1].to_ascii_lowercase();
        }
        let forward = NormalizedPath::from_segments(new_segs, path.trailing_slash());
        let forward_query = match kind {
            RequestKind::GitAdvertise(svc) => Some(format!("service={}", svc.as_str())),
            RequestKind::GitRpc(_) | RequestKind::GitDumb => None,
            _ => forwarded_query(flavor, query),
        };
        return Ok(Classified {
            kind,
            action,
            resource: Resource::Repo(repo),
            forward_path: forward.encoded(),
            decoded_path: forward.decoded(),
            forward_query,
            wiki,
        });
    }

    let strs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if flavor == ForgeFlavor::Generic && looks_like_git(&strs) {
        // A Git endpoint at another depth than /{owner}/{repo}: a plain Git server (which serves
        // any directory under its root) would answer it, so it must never pass as a route. A forge
        // serves Git only at /{owner}/{repo}, so there such paths are ordinary routes.
        return Err(PathError::BadRepoName);
    }
    if let ["api", "v1", "repos", rest @ ..] = strs.as_slice()
        && let [owner, repo, ..] = rest
        && !is_global_repos_api(rest)
    {
        let (repo_ref, wiki) = repo_ref(flavor, owner, repo)?;
        let mut new_segs = segs.to_vec();
        if flavor.case_insensitive() {
            new_segs[3] = new_segs[3].to_ascii_lowercase();
            new_segs[4] = new_segs[4].to_ascii_lowercase();
        }
        let forward = NormalizedPath::from_segments(new_segs, path.trailing_slash());
        return Ok(Classified {
            kind: RequestKind::RepoApi,
            action: method_action(method),
            resource: Resource::Repo(repo_ref),
            forward_path: forward.encoded(),
            decoded_path: forward.decoded(),
            forward_query: forwarded_query(flavor, query),
            wiki,
        });
    }

    let (kind, action) = if strs.first() == Some(&"api") {
        (RequestKind::Api, method_action(method))
    } else {
        (RequestKind::Web, Action::WebAccess)
    };
    if flavor != ForgeFlavor::Generic && !forge_names_valid(kind, &strs) {
        return Err(PathError::BadRepoName);
    }
    let decoded = path.decoded();
    Ok(Classified {
        kind,
        action,
        resource: Resource::Route(Route {
            host: host.to_ascii_lowercase(),
            // A case-insensitive forge serves /Acme/Secrets/... as /acme/secrets/..., so route
            // policies are matched against the lower-cased path there.
            path: if flavor.case_insensitive() {
                decoded.to_lowercase()
            } else {
                decoded.clone()
            },
            method: method.to_owned(),
        }),
        forward_path: path.encoded(),
        decoded_path: decoded,
        forward_query: forwarded_query(flavor, query),
        wiki: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: Option<&str>) -> Result<Classified, PathError> {
        classify(ForgeFlavor::Gitea, method, "git.example", path, query)
    }

    fn repo(owner: &str, name: &str) -> Resource {
        Resource::Repo(RepoRef {
            owner: owner.into(),
            name: name.into(),
        })
    }

    #[test]
    fn smart_http_advertisement() -> Result<(), PathError> {
        let r = c(
            "GET",
            "/demo/hello.git/info/refs",
            Some("service=git-upload-pack"),
        )?;
        assert_eq!(r.kind, RequestKind::GitAdvertise(GitService::UploadPack));
        assert_eq!(r.action, Action::GitRead);
        assert_eq!(r.resource, repo("demo", "hello"));
        assert_eq!(r.forward_path, "/demo/hello.git/info/refs");
        assert_eq!(r.forward_query.as_deref(), Some("service=git-upload-pack"));

        let w = c(
            "GET",
            "/demo/hello/info/refs",
            Some("service=git-receive-pack"),
        )?;
        assert_eq!(w.action, Action::GitWrite);
        assert_eq!(w.resource, repo("demo", "hello"));
        Ok(())
    }

    #[test]
    fn encoded_service_names_are_decoded_like_the_forge_does() -> Result<(), PathError> {
        let w = c(
            "GET",
            "/demo/hello.git/info/refs",
            Some("s%65rvice=git%2Dreceive-pack"),
        )?;
        assert_eq!(w.action, Action::GitWrite);
        assert_eq!(w.forward_query.as_deref(), Some("service=git-receive-pack"));
        Ok(())
    }

    #[test]
    fn duplicate_or_unknown_service_is_refused() {
        assert_eq!(
            c(
                "GET",
                "/d/r.git/info/refs",
                Some("service=git-upload-pack&service=git-receive-pack")
            ),
            Err(PathError::BadQuery)
        );
        assert_eq!(
            c("GET", "/d/r.git/info/refs", Some("service=git-shell")),
            Err(PathError::BadQuery)
        );
    }

    #[test]
    fn rpc_endpoints() -> Result<(), PathError> {
        assert_eq!(
            c("POST", "/demo/hello.git/git-upload-pack", None)?.action,
            Action::GitRead
        );
        let p = c("POST", "/demo/hello.git/git-receive-pack", None)?;
        assert_eq!(p.action, Action::GitWrite);
        assert_eq!(p.kind, RequestKind::GitRpc(GitService::ReceivePack));
        // The method does not matter: a push endpoint is always a write.
        assert_eq!(
            c("GET", "/demo/hello.git/git-receive-pack", None)?.action,
            Action::GitWrite
        );
        Ok(())
    }

    #[test]
    fn spellings_resolve_to_the_same_repo() -> Result<(), PathError> {
        for p in [
            "/demo/hello.git/git-upload-pack",
            "/Demo/HELLO.git/git-upload-pack",
            "//demo//hello.git/git-upload-pack",
            "/demo/./hello/git-upload-pack",
            "/x/../demo/hello.git/git-upload-pack",
            "/%64emo/hello.git/git-upload-pack",
        ] {
            let r = c("POST", p, None)?;
            assert_eq!(r.resource, repo("demo", "hello"), "{p}");
            assert!(
                r.forward_path.starts_with("/demo/hello"),
                "{p} -> {}",
                r.forward_path
            );
        }
        Ok(())
    }

    #[test]
    fn traversal_lands_on_the_real_target() -> Result<(), PathError> {
        let r = c("POST", "/demo/../secret/repo.git/git-upload-pack", None)?;
        assert_eq!(r.resource, repo("secret", "repo"));
        assert_eq!(r.forward_path, "/secret/repo.git/git-upload-pack");
        let r = c("POST", "/demo/%2e%2e/secret/repo.git/git-upload-pack", None)?;
        assert_eq!(r.resource, repo("secret", "repo"));
        assert_eq!(
            c("POST", "/demo%2Fsecret/repo.git/git-upload-pack", None),
            Err(PathError::EncodedSeparator)
        );
        Ok(())
    }

    #[test]
    fn generic_upstream_keeps_case() -> Result<(), PathError> {
        let r = classify(
            ForgeFlavor::Generic,
            "POST",
            "h",
            "/Demo/Hello.git/git-upload-pack",
            None,
        )?;
        assert_eq!(r.resource, repo("Demo", "Hello"));
        assert_eq!(r.forward_path, "/Demo/Hello.git/git-upload-pack");
        Ok(())
    }

    #[test]
    fn invalid_repo_names_on_git_endpoints_are_refused() {
        assert_eq!(
            c("POST", "/de mo/hello.git/git-upload-pack", None),
            Err(PathError::BadRepoName)
        );
        assert_eq!(
            c("POST", "/demo/hello.git.git/git-upload-pack", None),
            Err(PathError::BadRepoName)
        );
    }

    #[test]
    fn routes_on_a_case_insensitive_forge_are_matched_lower_case() -> Result<(), PathError> {
        let r = c("GET", "/ACME/Secrets/src/branch/main", None)?;
        assert_eq!(r.resource.repo(), None);
        match r.resource {
            Resource::Route(route) => assert_eq!(route.path, "/acme/secrets/src/branch/main"),
            Resource::Repo(_) => panic!("not a route"),
        }
        // the forwarded path keeps its case (file names in a repository are case-sensitive)
        assert_eq!(r.forward_path, "/ACME/Secrets/src/branch/main");
        Ok(())
    }

    #[test]
    fn forge_paths_with_git_looking_file_names_are_routes() -> Result<(), PathError> {
        let r = c(
            "GET",
            "/api/v1/repos/acme/api/contents/vendor/lib.git",
            None,
        )?;
        assert_eq!(r.kind, RequestKind::RepoApi);
        assert_eq!(
            c("GET", "/acme/api/src/branch/main/info/refs", None)?.kind,
            RequestKind::Web
        );
        Ok(())
    }

    #[test]
    fn git_endpoints_at_other_depths_are_refused() {
        let c = |m: &str, p: &str, q: Option<&str>| classify(ForgeFlavor::Generic, m, "h", p, q);
        for p in [
            "/hello.git/info/refs",
            "/a/b/c.git/info/refs",
            "/a/b/c/git-upload-pack",
            "/a/b/c.git/HEAD",
            "/a/info/lfs/objects/batch",
            "/a/b/c/d.git",
        ] {
            assert_eq!(c("GET", p, None), Err(PathError::BadRepoName), "{p}");
        }
    }

    #[test]
    fn wiki_shares_the_repository() -> Result<(), PathError> {
        let r = c("POST", "/demo/hello.wiki.git/git-upload-pack", None)?;
        assert_eq!(r.resource, repo("demo", "hello"));
        assert!(r.wiki);
        Ok(())
    }

    #[test]
    fn dumb_http() -> Result<(), PathError> {
        for p in [
            "/d/r.git/HEAD",
            "/d/r.git/info/refs",
            "/d/r.git/objects/info/packs",
            "/d/r.git/objects/ab/cdef0123456789abcdef0123456789abcdef01",
            "/d/r.git/objects/pack/pack-0123.pack",
        ] {
            let r = c("GET", p, None)?;
            assert_eq!(
                (r.kind, r.action),
                (RequestKind::GitDumb, Action::GitRead),
                "{p}"
            );
        }
        Ok(())
    }

    #[test]
    fn lfs() -> Result<(), PathError> {
        let b = c("POST", "/d/r.git/info/lfs/objects/batch", None)?;
        assert_eq!(
            (b.kind, b.action),
            (RequestKind::LfsBatch, Action::LfsWrite)
        );
        assert_eq!(
            c("GET", "/d/r.git/info/lfs/objects/abc", None)?.action,
            Action::LfsRead
        );
        assert_eq!(
            c("PUT", "/d/r.git/info/lfs/objects/abc/12", None)?.action,
            Action::LfsWrite
        );
        assert_eq!(
            c("POST", "/d/r.git/info/lfs/locks", None)?.action,
            Action::LfsWrite
        );
        assert_eq!(
            c("GET", "/d/r.git/info/lfs/locks", None)?.action,
            Action::LfsRead
        );
        Ok(())
    }

    #[test]
    fn repo_api() -> Result<(), PathError> {
        let r = c("GET", "/api/v1/repos/Demo/Hello/issues", Some("state=open"))?;
        assert_eq!((r.kind, r.action), (RequestKind::RepoApi, Action::ApiRead));
        assert_eq!(r.resource, repo("demo", "hello"));
        assert_eq!(r.forward_path, "/api/v1/repos/demo/hello/issues");
        assert_eq!(r.forward_query.as_deref(), Some("state=open"));
        assert_eq!(
            c("DELETE", "/api/v1/repos/demo/hello", None)?.action,
            Action::ApiWrite
        );
        let s = c("GET", "/api/v1/repos/search", Some("q=x"))?;
        assert_eq!(s.kind, RequestKind::Api);
        let s = c("GET", "/api/v1/repos/issues/search", None)?;
        assert_eq!(s.kind, RequestKind::Api);
        assert_eq!(
            c("POST", "/api/v1/user/repos", None)?.action,
            Action::ApiWrite
        );
        Ok(())
    }

    #[test]
    fn everything_else_is_a_route() -> Result<(), PathError> {
        let r = c("GET", "/explore/repos/", None)?;
        assert_eq!(r.kind, RequestKind::Web);
        assert_eq!(r.action, Action::WebAccess);
        assert_eq!(
            r.resource,
            Resource::Route(Route {
                host: "git.example".into(),
                path: "/explore/repos/".into(),
                method: "GET".into()
            })
        );
        // a repository's web page is a route too
        assert_eq!(c("GET", "/demo/hello", None)?.kind, RequestKind::Web);
        assert_eq!(c("GET", "/demo/hello.git", None)?.kind, RequestKind::Web);
        Ok(())
    }

    #[test]
    fn forge_routes_with_names_the_forge_cannot_have_are_refused() {
        // Web UI: owner and repository, and top-level pages.
        for p in [
            "/acme/secret%C4%B0/settings",
            "/%C4%B0acme/repo",
            "/acme/s%EF%BD%85crets",
            "/%C4%B0",
            "/acme/sec%20rets",
        ] {
            assert_eq!(c("GET", p, None), Err(PathError::BadRepoName), "{p}");
        }
        // API: users, organisations and repositories outside /api/v1/repos/{owner}/{repo}.
        for (m, p) in [
            ("GET", "/api/v1/users/adm%C4%B1n"),
            ("DELETE", "/api/v1/orgs/%C4%B0acme"),
            ("POST", "/api/v1/org/%C4%B0acme/repos"),
            ("PUT", "/api/v1/teams/7/repos/%C4%B0acme/api"),
            ("PUT", "/api/v1/teams/7/repos/acme/ap%C4%B0"),
            ("DELETE", "/api/v1/admin/users/%C4%B0van"),
            ("PUT", "/api/v1/user/starred/acme/%C4%B0"),
            ("PUT", "/api/v1/user/following/%C4%B0van"),
            ("PUT", "/api/v1/orgs/acme/members/%C4%B0van"),
            ("POST", "/api/v1/admin/unadopted/acme/%C4%B0"),
            ("GET", "/api/v1/packages/%C4%B0acme"),
            ("PUT", "/api/packages/%C4%B0acme/generic/p/1.0/f"),
        ] {
            assert_eq!(c(m, p, None), Err(PathError::BadRepoName), "{m} {p}");
        }
        // The allowed twins: ASCII names, and anything deeper than the names.
        for p in [
            "/acme/secrets/settings",
            "/acme/secrets/src/branch/main/%E6%96%87%E4%BB%B6.txt",
            "/user/login",
            "/explore/repos",
            "/-/admin",
            "/",
            "/api/v1/users/alice",
            "/api/v1/orgs/acme/repos",
            "/api/v1/user",
            "/api/v1/teams/7/repos/acme/api",
            "/api/v1/repos/search",
            "/api/v1/users/alice/tokens/my%20token%20%E2%9C%93",
            "/api/v1/gitignore/templates/C++",
            "/api/v1/licenses/GPL-2.0+",
            "/api/packages/acme/npm/@scope/name",
            "/api/v1/packages/acme/generic/n%C3%A4me/1.0+build",
        ] {
            assert!(c("GET", p, None).is_ok(), "{p}");
        }
        // A generic upstream has no forge names: any path is a route.
        assert!(classify(ForgeFlavor::Generic, "GET", "h", "/%C4%B0/x", None).is_ok());
    }
}
