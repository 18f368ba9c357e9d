//! What a web or REST API route of Gitea, Forgejo or Gogs does: which repository, owner or
//! instance page it is about, and whether it reads, writes, administers or moves refs. The
//! knowledge is in `forge_rules.txt` (compiled in); `routes/*.tsv`, read from each forge's router
//! source, are the expectations the tests hold these rules to.
//!
//! Pure and allocation-light: a request's segments are matched against a few dozen rules of its
//! surface. Nothing here knows policies or HTTP.

use std::sync::OnceLock;

use crate::classify::ForgeFlavor;

/// What a route does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Views it.
    Read,
    /// Changes its data (not a ref of a repository's Git repository).
    Write,
    /// Administers it.
    Admin,
    /// Creates, moves or deletes refs of the repository.
    Ref(RefMove),
}

/// How a ref-moving route moves refs (see `routes/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefMove {
    /// The forge makes a commit on a branch (web editor, upload, patch, cherry-pick, contents API).
    Commit,
    /// A branch is created.
    BranchCreate,
    /// A branch is deleted.
    BranchDelete,
    /// A branch is renamed.
    BranchRename,
    /// A deleted branch is restored.
    BranchRestore,
    /// A tag is created.
    TagCreate,
    /// A tag is deleted.
    TagDelete,
    /// A release is created or edited, which may create its tag.
    Release,
    /// A pull request is merged into its base branch.
    Merge,
    /// A branch is updated from another (a pull request's head, a fork from its upstream).
    UpdateBranch,
    /// The default branch is changed.
    DefaultBranch,
}

impl RefMove {
    /// The name `routes/*.tsv` and `forge_rules.txt` use.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefMove::Commit => "commit",
            RefMove::BranchCreate => "branch-create",
            RefMove::BranchDelete => "branch-delete",
            RefMove::BranchRename => "branch-rename",
            RefMove::BranchRestore => "branch-restore",
            RefMove::TagCreate => "tag-create",
            RefMove::TagDelete => "tag-delete",
            RefMove::Release => "release",
            RefMove::Merge => "merge",
            RefMove::UpdateBranch => "update-branch",
            RefMove::DefaultBranch => "default-branch",
        }
    }

    /// Every kind of move.
    pub const ALL: [RefMove; 11] = [
        RefMove::Commit,
        RefMove::BranchCreate,
        RefMove::BranchDelete,
        RefMove::BranchRename,
        RefMove::BranchRestore,
        RefMove::TagCreate,
        RefMove::TagDelete,
        RefMove::Release,
        RefMove::Merge,
        RefMove::UpdateBranch,
        RefMove::DefaultBranch,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Which part of the forge a route is about, by the indexes of the path segments that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An instance-level page or API route.
    Instance,
    /// The owner named by segment `.0`.
    Owner(usize),
    /// The repository named by segments `.0` and `.0 + 1`.
    Repo(usize),
}

/// The decision a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decide `class` on `target`.
    Route(Target, RouteClass),
    /// The route names a repository only by a number: Gatehouse cannot tell which, so it refuses.
    Refuse,
}

/// Where a path is matched; the discriminant indexes [`RuleIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Repo = 0,
    Owner = 1,
    Top = 2,
    ApiRepo = 3,
    Api = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Methods {
    Any,
    Safe,
    Write,
}

#[derive(Debug, Clone)]
enum Seg {
    One,
    Rest,
    Lit(Vec<String>),
}

#[derive(Debug, Clone)]
enum RuleClass {
    Own(RouteClass),
    Owner(usize, RouteClass),
    Repo(usize, RouteClass),
    Refuse,
}

#[derive(Debug, Clone)]
struct Rule {
    flavors: [bool; 3],
    surface: Surface,
    methods: Methods,
    method_list: Vec<String>,
    pattern: Vec<Seg>,
    class: RuleClass,
}

const RULES_TEXT: &str = include_str!("forge_rules.txt");

/// A line of `forge_rules.txt` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forge_rules.txt line {line}: {what}")]
pub struct RuleError {
    line: usize,
    what: String,
}

fn flavor_index(f: ForgeFlavor) -> Option<usize> {
    match f {
        ForgeFlavor::Gitea => Some(0),
        ForgeFlavor::Forgejo => Some(1),
        ForgeFlavor::Gogs => Some(2),
        ForgeFlavor::Generic => None,
    }
}

fn parse_class(s: &str) -> Option<RouteClass> {
    match s {
        "read" => Some(RouteClass::Read),
        "write" => Some(RouteClass::Write),
        "admin" => Some(RouteClass::Admin),
        _ => s
            .strip_prefix("ref:")
            .and_then(RefMove::parse)
            .map(RouteClass::Ref),
    }
}

fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut out = Vec::new();
    let mut flavors = [true; 3];
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: &str| RuleError {
            line: n + 1,
            what: what.to_owned(),
        };
        if let Some(list) = line.strip_prefix('@') {
            flavors = [false; 3];
            for f in list.split_whitespace() {
                match f {
                    "all" => flavors = [true; 3],
                    "gitea" => flavors[0] = true,
                    "forgejo" => flavors[1] = true,
                    "gogs" => flavors[2] = true,
                    _ => return Err(err("unknown forge")),
                }
            }
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [surface, methods, pattern, class] = parts.as_slice() else {
            return Err(err("expected SURFACE METHODS PATTERN CLASS"));
        };
        let surface = match *surface {
            "repo" => Surface::Repo,
            "owner" => Surface::Owner,
            "top" => Surface::Top,
            "api-repo" => Surface::ApiRepo,
            "api" => Surface::Api,
            _ => return Err(err("unknown surface")),
        };
        let (methods, method_list) = match *methods {
            "*" => (Methods::Any, vec![]),
            "SAFE" => (Methods::Safe, vec![]),
            "WRITE" => (Methods::Write, vec![]),
            list => {
                let mut l: Vec<String> = list.split('|').map(str::to_owned).collect();
                if l.iter().any(|m| m == "GET") {
                    l.push("HEAD".to_owned());
                }
                (Methods::Any, l)
            }
        };
        let pattern = if *pattern == "." {
            vec![]
        } else {
            let segs: Vec<Seg> = pattern
                .split('/')
                .map(|p| match p {
                    "*" => Seg::One,
                    "**" => Seg::Rest,
                    lits => Seg::Lit(lits.split('|').map(str::to_owned).collect()),
                })
                .collect();
            if segs.iter().rev().skip(1).any(|s| matches!(s, Seg::Rest)) {
                return Err(err("`**` only last"));
            }
            segs
        };
        let class = if *class == "refuse" {
            RuleClass::Refuse
        } else if let Some((target, c)) = class.split_once(':').filter(|(t, _)| t.contains('@')) {
            let (kind, at) = target.split_once('@').ok_or_else(|| err("bad target"))?;
            let at: usize = at.parse().map_err(|_| err("bad segment index"))?;
            let c = parse_class(c).ok_or_else(|| err("unknown class"))?;
            match kind {
                "owner" => RuleClass::Owner(at, c),
                "repo" => RuleClass::Repo(at, c),
                _ => return Err(err("unknown target")),
            }
        } else {
            RuleClass::Own(parse_class(class).ok_or_else(|| err("unknown class"))?)
        };
        out.push(Rule {
            flavors,
            surface,
            methods,
            method_list,
            pattern,
            class,
        });
    }
    Ok(out)
}

/// The rules of each forge and surface, in file order.
type RuleIndex = [[Vec<Rule>; 5]; 3];

const SURFACES: [Surface; 5] = [
    Surface::Repo,
    Surface::Owner,
    Surface::Top,
    Surface::ApiRepo,
    Surface::Api,
];

fn index(rules: Vec<Rule>) -> RuleIndex {
    let mut idx: RuleIndex = Default::default();
    for (f, per_flavor) in idx.iter_mut().enumerate() {
        for surface in SURFACES {
            per_flavor[surface as usize] = rules
                .iter()
                .filter(|r| r.flavors[f] && r.surface == surface)
                .cloned()
                .collect();
        }
    }
    idx
}

/// The compiled-in rules, or the reason they do not parse (then every forge route is refused:
/// the tests make sure that never ships).
fn rules() -> Result<&'static RuleIndex, &'static RuleError> {
    static RULES: OnceLock<Result<RuleIndex, RuleError>> = OnceLock::new();
    RULES
        .get_or_init(|| parse_rules(RULES_TEXT).map(index))
        .as_ref()
}

/// Whether `forge_rules.txt` parses (for a test and for start-up checks).
pub fn rules_ok() -> Result<(), RuleError> {
    rules().map(|_| ()).map_err(Clone::clone)
}

fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

fn method_matches(r: &Rule, method: &str) -> bool {
    if !r.method_list.is_empty() {
        return r.method_list.iter().any(|m| m == method);
    }
    match r.methods {
        Methods::Any => true,
        Methods::Safe => is_safe(method),
        Methods::Write => !is_safe(method),
    }
}

fn pattern_matches(pattern: &[Seg], segs: &[&str]) -> bool {
    let mut i = 0;
    for p in pattern {
        match p {
            Seg::Rest => return true,
            Seg::One => {
                if i >= segs.len() {
                    return false;
                }
            }
            Seg::Lit(lits) => match segs.get(i) {
                Some(s) if lits.iter().any(|l| l == s) => {}
                _ => return false,
            },
        }
        i += 1;
    }
    i == segs.len()
}

/// The first rule of `surface` matching, as a verdict with segment indexes relative to the whole
/// path (`offset` is where `segs` starts in it).
fn decide(
    flavor: usize,
    surface: Surface,
    method: &str,
    segs: &[&str],
    offset: usize,
    own: Target,
) -> Option<Verdict> {
    let rules = match rules() {
        Ok(r) => r,
        Err(_) => return Some(Verdict::Refuse),
    };
    let r = rules[flavor][surface as usize]
        .iter()
        .find(|r| method_matches(r, method) && pattern_matches(&r.pattern, segs))?;
    Some(match r.class {
        RuleClass::Own(c) => Verdict::Route(own, c),
        RuleClass::Owner(at, c) => Verdict::Route(Target::Owner(offset + at), c),
        RuleClass::Repo(at, c) => Verdict::Route(Target::Repo(offset + at), c),
        RuleClass::Refuse => Verdict::Refuse,
    })
}

/// The class of a request no rule names: a read for a safe method, else a write.
fn default_class(method: &str) -> RouteClass {
    if is_safe(method) {
        RouteClass::Read
    } else {
        RouteClass::Write
    }
}

/// Names that every version of the forge we know reserves, so that no user or organisation can
/// have (or ever have had) one: a path under one is the instance's, whatever follows. Read from
/// `reservedUsernames` (Gitea `models/user/user.go` at 1.16 and 1.22; Forgejo inherits it; Gogs
/// `internal/database/users.go`), intersected across those versions. A name reserved only lately
/// (Gitea's `avatar`, `ssh_info`) could belong to a user created before, so only the exact routes
/// the forge registers under it are the instance's (`top` rules).
fn always_reserved(flavor: ForgeFlavor, seg: &str) -> bool {
    const GITEA: &[&str] = &[
        ".",
        "..",
        ".well-known",
        "admin",
        "api",
        "assets",
        "attachments",
        "avatars",
        "captcha",
        "commits",
        "debug",
        "error",
        "explore",
        "favicon.ico",
        "ghost",
        "issues",
        "login",
        "manifest.json",
        "metrics",
        "milestones",
        "new",
        "notifications",
        "org",
        "pulls",
        "raw",
        "repo",
        "robots.txt",
        "search",
        "serviceworker.js",
        "user",
    ];
    const GOGS: &[&str] = &[
        "-", "explore", "create", "assets", "css", "img", "js", "less", "plugins", "debug", "raw",
        "install", "api", "avatar", "user", "org", "help", "stars", "issues", "pulls", "commits",
        "repo", "template", "admin", "new", ".", "..",
    ];
    let list = match flavor {
        ForgeFlavor::Gitea | ForgeFlavor::Forgejo => GITEA,
        ForgeFlavor::Gogs => GOGS,
        ForgeFlavor::Generic => return false,
    };
    list.contains(&seg)
}

/// Decides a web path (`segs`, already normalized and not a Git or LFS endpoint) of a forge.
pub fn web_route(flavor: ForgeFlavor, method: &str, segs: &[&str]) -> Verdict {
    let Some(f) = flavor_index(flavor) else {
        return Verdict::Route(Target::Instance, default_class(method));
    };
    if let Some(v) = decide(f, Surface::Top, method, segs, 0, Target::Instance) {
        return v;
    }
    match segs {
        [] => Verdict::Route(Target::Instance, default_class(method)),
        [first, ..] if always_reserved(flavor, first) => {
            Verdict::Route(Target::Instance, default_class(method))
        }
        [_] => decide(f, Surface::Owner, method, &[], 1, Target::Owner(0))
            .unwrap_or(Verdict::Route(Target::Owner(0), default_class(method))),
        [_, rest @ ..] => {
            if let Some(v) = decide(f, Surface::Owner, method, rest, 1, Target::Owner(0)) {
                return v;
            }
            decide(f, Surface::Repo, method, &rest[1..], 2, Target::Repo(0))
                .unwrap_or(Verdict::Route(Target::Repo(0), default_class(method)))
        }
    }
}

/// Decides an API path: `segs` is what follows `/api/v1/`.
pub fn api_route(flavor: ForgeFlavor, method: &str, segs: &[&str]) -> Verdict {
    let Some(f) = flavor_index(flavor) else {
        return Verdict::Route(Target::Instance, default_class(method));
    };
    // The router's own `repos/search`, `repos/migrate` (two segments: never a repository path)
    // and `GET repos/issues/search` come first, matched exactly and case-sensitively; any longer
    // path under them, or another method, falls through to `repos/{owner}/{repo}`.
    if let ["repos", _owner, _repo, rest @ ..] = segs
        && !(matches!(segs, ["repos", "issues", "search"]) && is_safe(method))
    {
        return decide(f, Surface::ApiRepo, method, rest, 3, Target::Repo(1))
            .unwrap_or(Verdict::Route(Target::Repo(1), default_class(method)));
    }
    decide(f, Surface::Api, method, segs, 0, Target::Instance)
        .unwrap_or(Verdict::Route(Target::Instance, default_class(method)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_parse() {
        rules_ok().unwrap();
        let idx = rules().unwrap();
        // Every forge has rules on every surface.
        for per_flavor in idx {
            for list in per_flavor {
                assert!(!list.is_empty());
            }
        }
    }

    #[test]
    fn a_bad_rule_is_an_error_with_its_line() {
        let e = parse_rules("@ all\nrepo GET x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_rules("repo GET ** nonsense").is_err());
        assert!(parse_rules("repo GET **/x read").is_err());
        assert!(parse_rules("@ gitlab").is_err());
    }

    #[test]
    fn patterns() {
        let lit = |s: &str| Seg::Lit(vec![s.to_owned()]);
        assert!(pattern_matches(&[], &[]));
        assert!(!pattern_matches(&[], &["a"]));
        assert!(pattern_matches(&[lit("a"), Seg::Rest], &["a"]));
        assert!(pattern_matches(&[lit("a"), Seg::Rest], &["a", "b", "c"]));
        assert!(!pattern_matches(&[lit("a"), Seg::One], &["a"]));
        assert!(pattern_matches(&[lit("a"), Seg::One], &["a", "b"]));
        assert!(!pattern_matches(&[lit("a"), Seg::One], &["a", "b", "c"]));
    }
}
