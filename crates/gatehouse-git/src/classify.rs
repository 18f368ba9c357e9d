//! Request classification: which forge operation a request is, on which repository.

use gatehouse_core::{Action, OwnerRef, RepoRef, Resource, Route, Via};

use crate::forge::{self, RefMove, RouteClass, Target, Verdict};

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
    /// The request is for the repository's wiki (`repo.wiki.git`, or its pages in the web UI
    /// and API), which shares its permissions.
    pub wiki: bool,
    /// Which way the request reaches the forge: Git itself, the web UI or the REST API.
    pub via: Via,
    /// For a web or API route that creates, moves or deletes refs: how.
    pub moves: Option<RefMove>,
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
        // Gitea 1.26 serves `git archive --remote` over smart HTTP: a read, answered like a
        // dumb read (no ref is moved, no body is read).
        ["git-upload-archive"] => (RequestKind::GitDumb, Action::GitRead),
        ["git-receive-pack"] => (
            RequestKind::GitRpc(GitService::ReceivePack),
            Action::GitWrite,
        ),
        // Gitea and Gogs serve every file under `objects/info/` (`commit-graph` too), not only
        // the three `git http-backend` knows.
        ["HEAD"] | ["objects", "info", _, ..] => (RequestKind::GitDumb, Action::GitRead),
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
    // `git http-backend` also serves a repository's `HEAD` and `objects/...` to dumb clients,
    // at whatever depth the repository sits under its root.
    dot_git
        || segs.iter().any(|s| {
            matches!(
                *s,
                "git-upload-pack" | "git-receive-pack" | "git-upload-archive"
            )
        })
        || segs
            .windows(2)
            .any(|w| w[0] == "info" && matches!(w[1], "refs" | "lfs"))
        || segs.last() == Some(&"HEAD")
        || segs
            .windows(2)
            .any(|w| w[0] == "objects" && (matches!(w[1], "info" | "pack") || is_hex(w[1], 2..=2)))
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
    match (kind, segs) {
        // Under a repository, what follows its two names is the repository's own (file paths,
        // branch names): only the two names are names.
        (RequestKind::Api, ["api", "v1", "repos", owner, repo, _, ..])
            if !matches!(segs, ["api", "v1", "repos", "issues", "search"]) =>
        {
            valid_name(owner) && valid_name(repo)
        }
        (RequestKind::Api, _) => api_names_valid(segs),
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
            via: Via::Git,
            moves: None,
        });
    }

    let strs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if flavor == ForgeFlavor::Generic && looks_like_git(&strs) {
        // A Git endpoint at another depth than /{owner}/{repo}: a plain Git server (which serves
        // any directory under its root) would answer it, so it must never pass as a route. A forge
        // serves Git only at /{owner}/{repo}, so there such paths are ordinary routes.
        return Err(PathError::BadRepoName);
    }
    if flavor == ForgeFlavor::Generic {
        // A plain Git server has no web UI or API of its own: everything else is a route.
        let (kind, action, via) = if strs.first() == Some(&"api") {
            (RequestKind::Api, method_action(method), Via::Api)
        } else {
            (RequestKind::Web, Action::WebAccess, Via::Web)
        };
        let decoded = path.decoded();
        return Ok(Classified {
            kind,
            action,
            resource: Resource::Route(Route {
                host: host.to_ascii_lowercase(),
                path: decoded.clone(),
                method: method.to_owned(),
            }),
            forward_path: path.encoded(),
            decoded_path: decoded,
            forward_query: forwarded_query(flavor, query),
            wiki: false,
            via,
            moves: None,
        });
    }
    forge_route(flavor, method, host, &path, &strs, query)
}

/// The repository a web route's `{reponame}` names, read as the forge reads it: Gitea's and
/// Forgejo's `RepoAssignment` trims `.git`, then `.rss`, then `.atom` (with `[other]
/// ENABLE_FEED`, the default), each once and case-sensitively, then looks the name up without
/// regard to case; Gogs trims `.git`. API routes trim nothing. A name that still ends in one of
/// those suffixes, or in `.wiki`, is no repository any current version lets anyone create, and
/// reading it any other way than the forge risks naming another repository: it is refused.
fn route_repo(flavor: ForgeFlavor, api: bool, raw: &str) -> Result<String, PathError> {
    let mut name = raw;
    if !api {
        name = name.strip_suffix(".git").unwrap_or(name);
        if matches!(flavor, ForgeFlavor::Gitea | ForgeFlavor::Forgejo) {
            name = name.strip_suffix(".rss").unwrap_or(name);
            name = name.strip_suffix(".atom").unwrap_or(name);
        }
    }
    let folded = fold(flavor, name);
    if [".git", ".rss", ".atom", ".wiki"]
        .iter()
        .any(|s| folded.ends_with(s))
        || !valid_name(&folded)
    {
        return Err(PathError::BadRepoName);
    }
    Ok(folded)
}

/// The owner a single-segment web path names: Gitea and Forgejo serve `/{user}.rss`, `.atom`,
/// `.keys`, `.gpg` and `.png` as that user's feed, keys and avatar; Gogs serves `.keys`.
fn owner_page_name(flavor: ForgeFlavor, seg: &str) -> &str {
    let suffixes: &[&str] = match flavor {
        ForgeFlavor::Gogs => &[".keys"],
        _ => &[".rss", ".atom", ".keys", ".gpg", ".png"],
    };
    suffixes
        .iter()
        .find_map(|s| seg.strip_suffix(s))
        .unwrap_or(seg)
}

/// A forge's web or API route, decided by its route knowledge ([`crate::forge`]).
fn forge_route(
    flavor: ForgeFlavor,
    method: &str,
    host: &str,
    path: &NormalizedPath,
    strs: &[&str],
    query: Option<&str>,
) -> Result<Classified, PathError> {
    let api = matches!(strs, ["api", "v1", ..]);
    let kind = if strs.first() == Some(&"api") {
        RequestKind::Api
    } else {
        RequestKind::Web
    };
    if !forge_names_valid(kind, strs) {
        return Err(PathError::BadRepoName);
    }
    let (verdict, base) = if api {
        (forge::api_route(flavor, method, &strs[2..]), 2)
    } else {
        (forge::web_route(flavor, method, strs), 0)
    };
    let Verdict::Route(target, class) = verdict else {
        return Err(PathError::NumberedRepository);
    };
    let via = if kind == RequestKind::Api {
        Via::Api
    } else {
        Via::Web
    };
    let moves = match class {
        RouteClass::Ref(m) => Some(m),
        _ => None,
    };
    // The path goes upstream as it came: the forge's router matches its own route names
    // case-sensitively (`/Api/...` is a user's, `/api/...` the API), so changing the case of a
    // name could change which route the forge runs. Names themselves compare without case there.
    let (resource, action, kind, wiki) = match target {
        Target::Instance => {
            let action = match (kind, class) {
                (RequestKind::Web, _) => Action::WebAccess,
                (_, RouteClass::Read) => Action::ApiRead,
                _ => Action::ApiWrite,
            };
            let route = Route {
                host: host.to_ascii_lowercase(),
                path: path.decoded().to_lowercase(),
                method: method.to_owned(),
            };
            (Resource::Route(route), action, kind, false)
        }
        Target::Owner(i) => {
            let raw = strs.get(base + i).copied().unwrap_or_default();
            let name = fold(flavor, raw);
            let name = if base == 0 && strs.len() == 1 {
                owner_page_name(flavor, &name).to_owned()
            } else {
                name
            };
            if !valid_name(&name) {
                return Err(PathError::BadRepoName);
            }
            let action = match class {
                RouteClass::Read => Action::OwnerRead,
                RouteClass::Write | RouteClass::Ref(_) => Action::OwnerWrite,
                RouteClass::Admin => Action::OwnerAdmin,
            };
            (Resource::Owner(OwnerRef { name }), action, kind, false)
        }
        Target::Repo(i) => {
            let (Some(owner), Some(name)) = (strs.get(base + i), strs.get(base + i + 1)) else {
                return Err(PathError::BadRepoName);
            };
            let owner = fold(flavor, owner);
            if !valid_name(&owner) {
                return Err(PathError::BadRepoName);
            }
            let repo = RepoRef {
                owner,
                name: route_repo(flavor, api, name)?,
            };
            let action = match class {
                RouteClass::Read => Action::RepoRead,
                RouteClass::Write => Action::RepoWrite,
                RouteClass::Admin => Action::RepoAdmin,
                // Moving refs is writing code: `git:write`, as a push is.
                RouteClass::Ref(_) => Action::GitWrite,
            };
            let wiki = strs.get(base + i + 2) == Some(&"wiki");
            let kind = if api { RequestKind::RepoApi } else { kind };
            (Resource::Repo(repo), action, kind, wiki)
        }
    };
    Ok(Classified {
        kind,
        action,
        resource,
        forward_path: path.encoded(),
        decoded_path: path.decoded(),
        forward_query: forwarded_query(flavor, query),
        wiki,
        via,
        moves,
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
    fn a_repository_s_web_pages_are_the_repository_in_every_spelling() -> Result<(), PathError> {
        let r = c("GET", "/ACME/Secrets/src/branch/main/Docs/A.md", None)?;
        assert_eq!(r.resource, repo("acme", "secrets"));
        assert_eq!(
            (r.kind, r.action, r.via),
            (RequestKind::Web, Action::RepoRead, Via::Web)
        );
        // The path goes upstream as it came (the forge's router is case-sensitive).
        assert_eq!(r.forward_path, "/ACME/Secrets/src/branch/main/Docs/A.md");
        // Suffixes the forge folds name the same repository (routes/README.md, issue examples).
        for (m, p) in [
            ("GET", "/acme/secrets.git/archive/main.zip"),
            ("GET", "/acme/secrets.rss"),
            ("GET", "/acme/Secrets.atom"),
            ("GET", "/acme/secrets.git"),
            ("GET", "/acme/secrets"),
            ("POST", "/acme/secrets/issues/new"),
            ("GET", "/acme/secrets/settings"),
            ("GET", "/acme/secrets/some/route/no/forge/has"),
        ] {
            assert_eq!(c(m, p, None)?.resource, repo("acme", "secrets"), "{m} {p}");
        }
        // Git served at other paths is Git.
        let g = c("GET", "/acme/secrets.git/objects/info/commit-graph", None)?;
        assert_eq!((g.kind, g.action), (RequestKind::GitDumb, Action::GitRead));
        assert_eq!(g.resource, repo("acme", "secrets"));
        Ok(())
    }

    #[test]
    fn what_a_route_does_decides_its_action() -> Result<(), PathError> {
        let a = |m: &str, p: &str| c(m, p, None).map(|r| r.action);
        assert_eq!(a("GET", "/acme/api/src/branch/main")?, Action::RepoRead);
        assert_eq!(a("POST", "/acme/api/issues/new")?, Action::RepoWrite);
        assert_eq!(a("POST", "/acme/api/markup")?, Action::RepoRead);
        assert_eq!(a("GET", "/acme/api/settings/hooks")?, Action::RepoAdmin);
        assert_eq!(
            a("POST", "/acme/api/settings/collaboration")?,
            Action::RepoAdmin
        );
        // Unknown routes: read for a safe method, write for any other; never a free route.
        assert_eq!(a("GET", "/acme/api/-/brand-new")?, Action::RepoRead);
        assert_eq!(a("PATCH", "/acme/api/-/brand-new")?, Action::RepoWrite);
        // Owners.
        let o = c("GET", "/Acme", None)?;
        assert_eq!(
            o.resource,
            Resource::Owner(OwnerRef {
                name: "acme".into()
            })
        );
        assert_eq!(o.forward_path, "/Acme");
        assert_eq!(
            c("GET", "/alice.keys", None)?.resource,
            Resource::Owner(OwnerRef {
                name: "alice".into()
            })
        );
        assert_eq!(a("GET", "/org/acme/settings")?, Action::OwnerAdmin);
        assert_eq!(a("GET", "/org/acme/teams")?, Action::OwnerRead);
        assert_eq!(a("POST", "/acme/-/projects/new")?, Action::OwnerWrite);
        // The container registry: an owner's packages.
        let v2 = c("PUT", "/v2/Acme/tools/img/manifests/1.0", None)?;
        assert_eq!(
            (v2.resource, v2.action),
            (
                Resource::Owner(OwnerRef {
                    name: "acme".into()
                }),
                Action::OwnerWrite
            )
        );
        assert_eq!(a("GET", "/v2/acme/img/tags/list")?, Action::OwnerRead);
        assert_eq!(a("GET", "/v2/")?, Action::WebAccess);
        assert_eq!(a("GET", "/v2/_catalog")?, Action::WebAccess);
        // Instance pages.
        assert_eq!(a("GET", "/user/settings")?, Action::WebAccess);
        assert_eq!(a("GET", "/avatar/abc")?, Action::WebAccess);
        // Under a name only recent versions reserve, only the exact route is the instance's.
        assert_eq!(
            c("GET", "/avatar/abc/settings", None)?.resource,
            repo("avatar", "abc")
        );
        Ok(())
    }

    #[test]
    fn refs_moved_through_the_web_ui_and_the_api_are_writes_of_code() -> Result<(), PathError> {
        for (m, p, how) in [
            ("POST", "/acme/api/_edit/main/README.md", RefMove::Commit),
            ("POST", "/acme/api/branches/delete", RefMove::BranchDelete),
            ("POST", "/acme/api/pulls/1/merge", RefMove::Merge),
            ("PUT", "/api/v1/repos/acme/api/contents/x", RefMove::Commit),
            (
                "DELETE",
                "/api/v1/repos/acme/api/branches/main",
                RefMove::BranchDelete,
            ),
            ("POST", "/api/v1/repos/acme/api/tags", RefMove::TagCreate),
            ("POST", "/acme/api/branches/rename", RefMove::BranchRename),
            (
                "POST",
                "/acme/api/branches/merge-upstream",
                RefMove::UpdateBranch,
            ),
            (
                "POST",
                "/api/v1/repos/acme/api/merge-upstream",
                RefMove::UpdateBranch,
            ),
            (
                "PUT",
                "/api/v1/repos/acme/api/branches/main",
                RefMove::UpdateBranch,
            ),
        ] {
            let r = c(m, p, None)?;
            assert_eq!(
                (r.action, r.moves),
                (Action::GitWrite, Some(how)),
                "{m} {p}"
            );
            assert_eq!(r.resource, repo("acme", "api"), "{m} {p}");
        }
        Ok(())
    }

    /// The forge's router reads route names case-sensitively: what goes upstream is read there as
    /// it was read here (found by the fuzzer, `fuzz/seeds/path_classify/case-changes-route`).
    #[test]
    fn the_forwarded_path_is_read_upstream_as_it_was_here() -> Result<(), PathError> {
        for p in [
            "/Api/repos/x",
            "/api/v1/repos/Issues/Search",
            "/api/v1/repos/search/x/y",
            "/User/settings",
            "/Avatar/abc",
        ] {
            let r = c("GET", p, None)?;
            let again = c("GET", &r.forward_path, None)?;
            assert_eq!(
                (again.resource, again.action),
                (r.resource, r.action),
                "{p}"
            );
        }
        assert_eq!(
            c("GET", "/api/v1/repos/search/x/y", None)?.resource,
            repo("search", "x")
        );
        Ok(())
    }

    /// Found in review: each a way to reach a repository under another name than a policy knows.
    #[test]
    fn suffixes_packages_and_admin_pages_are_read_as_the_forge_reads_them() -> Result<(), PathError>
    {
        // Gitea trims `.git`, then `.rss`, then `.atom`: these are all acme/secrets.
        for p in [
            "/acme/secrets.rss.git/raw/branch/main/prod.env",
            "/acme/secrets.atom.git",
            "/acme/secrets.atom.rss",
            "/acme/secrets.atom.rss.git/settings",
        ] {
            assert_eq!(c("GET", p, None)?.resource, repo("acme", "secrets"), "{p}");
        }
        // What is left ending in a suffix no repository can have is refused, not guessed at.
        for p in [
            "/acme/secrets.git.rss",
            "/acme/secrets.wiki/settings",
            "/acme/Secrets.RSS",
        ] {
            assert_eq!(c("GET", p, None), Err(PathError::BadRepoName), "{p}");
        }
        // The API trims nothing.
        assert_eq!(
            c("GET", "/api/v1/repos/acme/secrets.git", None),
            Err(PathError::BadRepoName)
        );
        // The admin panel of Gitea 1.23 and Forgejo, and the package registry of an owner.
        let admin = c("GET", "/-/admin/users", None)?;
        assert_eq!(admin.action, Action::WebAccess);
        let pkg = c("PUT", "/api/packages/Acme/generic/p/1.0/f", None)?;
        assert_eq!(
            (pkg.resource, pkg.action, pkg.via),
            (
                Resource::Owner(OwnerRef {
                    name: "acme".into()
                }),
                Action::OwnerWrite,
                Via::Api
            )
        );
        // Gogs lets a repository be named `-`.
        let gogs = classify(ForgeFlavor::Gogs, "GET", "h", "/acme/-/src/master/x", None)?;
        assert_eq!(gogs.resource, repo("acme", "-"));
        // Only a GET of `repos/issues/search` is the search; a POST falls through to a repository.
        assert_eq!(
            c("POST", "/api/v1/repos/issues/search", None)?.resource,
            repo("issues", "search")
        );
        // What follows a repository's names is its own: a file called `users/Zoë.md` is fine.
        assert!(
            c(
                "GET",
                "/api/v1/repos/acme/api/contents/users/Zo%C3%AB.md",
                None
            )
            .is_ok()
        );
        Ok(())
    }

    #[test]
    fn dumb_http_at_any_depth_of_a_plain_git_server_is_refused() {
        for p in [
            "/secret/objects/info/packs",
            "/secret/objects/pack/pack-0123.pack",
            "/a/b/c/HEAD",
            "/a/b/c/objects/ab/cdef",
        ] {
            assert_eq!(
                classify(ForgeFlavor::Generic, "GET", "h", p, None),
                Err(PathError::BadRepoName),
                "{p}"
            );
        }
    }

    #[test]
    fn a_repository_named_by_number_is_refused() {
        for p in ["/api/v1/repositories/7", "/repo/fork/7"] {
            assert_eq!(
                c("POST", p, None),
                Err(PathError::NumberedRepository),
                "{p}"
            );
        }
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
        assert_eq!(
            (r.kind, r.action, r.via),
            (RequestKind::RepoApi, Action::RepoRead, Via::Api)
        );
        assert_eq!(r.resource, repo("demo", "hello"));
        assert_eq!(r.forward_path, "/api/v1/repos/Demo/Hello/issues");
        assert_eq!(r.forward_query.as_deref(), Some("state=open"));
        assert_eq!(
            c("DELETE", "/api/v1/repos/demo/hello", None)?.action,
            Action::RepoAdmin
        );
        assert_eq!(
            c("POST", "/api/v1/repos/demo/hello/issues", None)?.action,
            Action::RepoWrite
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
    fn instance_pages_are_routes() -> Result<(), PathError> {
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
        // The forge's router matches its own pages case-sensitively: `/Explore/repos` is not the
        // explore page but the path of a repository (of a user no one can be).
        assert_eq!(
            c("GET", "/Explore/repos", None)?.resource,
            repo("explore", "repos")
        );
        // A generic upstream has no web UI of its own: every other path is a route.
        let g = classify(ForgeFlavor::Generic, "GET", "h", "/demo/hello", None)?;
        assert_eq!((g.kind, g.action), (RequestKind::Web, Action::WebAccess));
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
