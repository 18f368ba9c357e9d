//! Every web and REST API route of Gitea, Forgejo and Gogs, as read from each forge's router
//! source (`routes/*.tsv`, see `routes/README.md`), is classified as the table says: the same
//! target (repository, owner or instance), the same class (read, write, admin, the ref move) and
//! never a free route under a repository.

use gatehouse_core::{Action, Resource};
use gatehouse_git::{
    Classified, ForgeFlavor, JsonKind, PathError, PlanError, RefMove, RefSource, RouteClass,
    Target, Verdict, api_route, body_fields, classify, plan_moves, read_route_fields, route_rest,
    web_route,
};

struct Row {
    line: usize,
    method: String,
    pattern: String,
    class: String,
    moves: String,
}

fn table(name: &str) -> (Vec<String>, Vec<Row>) {
    let path = format!("{}/routes/{name}.tsv", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut header = Vec::new();
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with('#') {
            header.push(l.to_owned());
            continue;
        }
        if l.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split('\t').collect();
        assert!(
            f.len() >= 4,
            "{name}.tsv line {}: too few columns: {l}",
            i + 1
        );
        rows.push(Row {
            line: i + 1,
            method: f[0].to_owned(),
            pattern: f[1].to_owned(),
            class: f[2].to_owned(),
            moves: f[3].to_owned(),
        });
    }
    (header, rows)
}

const HEX: &str = "0123456789abcdef0123456789abcdef01234567";

/// A value for one route parameter (`name`, with its regular expression if the router gives one).
fn param(name: &str, re: &str) -> String {
    match name {
        "username" | "owner" => return "alice".into(),
        "reponame" | "repo" => return "demo".into(),
        "org" | "orgname" => return "acme".into(),
        _ => {}
    }
    let re = re.trim();
    if re.starts_with("**") || name == "**" {
        return "a/b".into();
    }
    if !re.is_empty() {
        let alts = re.trim_matches(|c| matches!(c, '(' | ')' | '/' | '^' | '$' | ' '));
        if alts.contains('|') && !alts.contains('[') {
            return alts.split('|').next().unwrap_or("x").to_owned();
        }
        // A single literal (`{type:pulls}`, `{editor_action:_edit}`).
        if !alts.is_empty()
            && alts
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return alts.to_owned();
        }
        if re.contains("{2}") && !re.contains("{7") {
            return "ab".into();
        }
        if re.contains("{38}") || re.contains("{38,") {
            return HEX[..38].into();
        }
        if re.contains("a-f0-9") || re.contains("0-9a-f") {
            return HEX.into();
        }
        return "commit-graph".into();
    }
    let n = name.to_ascii_lowercase();
    if n.contains("id")
        || n.contains("index")
        || ["run", "job", "attempt", "position"].contains(&n.as_str())
    {
        "1".into()
    } else {
        "x".into()
    }
}

/// A concrete path for a router pattern (`{name}`, `{name:regexp}`, `:name`, `*`).
fn instantiate(pattern: &str) -> String {
    let mut out = String::new();
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => {
                // Balanced braces: a regular expression may hold `{2}`.
                let mut depth = 0;
                let mut j = i;
                while j < b.len() {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let inner = &pattern[i + 1..j.min(pattern.len())];
                let (name, re) = inner.split_once(':').unwrap_or((inner, ""));
                out.push_str(&param(name.trim(), re));
                i = j + 1;
            }
            // Gitea's PathGroup/MatchPath captures: `<ref:*>`, `<sha>`.
            b'<' => {
                let close = pattern[i..].find('>').map_or(pattern.len(), |e| i + e);
                let inner = &pattern[i + 1..close];
                let name = inner.split(':').next().unwrap_or_default();
                out.push_str(match name {
                    "sha" => HEX,
                    "ref" => "main",
                    _ => "x",
                });
                i = close + 1;
            }
            b'^' if pattern[i..].starts_with("^:type(issues|pulls)$") => {
                out.push_str("issues");
                i += "^:type(issues|pulls)$".len();
            }
            // Macaron's `:name` and `:name(regexp)`, anywhere in a segment.
            b':' => {
                let end = pattern[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(pattern.len(), |e| i + 1 + e);
                let name = &pattern[i + 1..end];
                let (re, next) = if pattern[end..].starts_with('(') {
                    let close = pattern[end..].find(')').map_or(pattern.len(), |e| end + e);
                    (&pattern[end + 1..close], close + 1)
                } else {
                    ("", end)
                };
                out.push_str(&param(name, re));
                i = next;
            }
            b'\\' => {
                // `\.` in a macaron pattern is a literal dot.
                i += 1;
            }
            _ => {
                out.push(b[i] as char);
                i += 1;
            }
        }
    }
    let mut segs: Vec<String> = out.split('/').map(str::to_owned).collect();
    let in_repo = segs.iter().any(|s| s == "demo");
    for (k, s) in segs.iter_mut().enumerate().rev() {
        if s == "*" {
            // The last segment of a repository route is a ref and a file path.
            let last = k + 1 == out.split('/').count();
            *s = if last && in_repo {
                "main/docs/x.md".into()
            } else {
                "x".into()
            };
        }
    }
    segs.join("/")
}

fn flavor_of(name: &str) -> ForgeFlavor {
    match name {
        "gitea" => ForgeFlavor::Gitea,
        "forgejo" => ForgeFlavor::Forgejo,
        _ => ForgeFlavor::Gogs,
    }
}

/// The verdict of the route knowledge alone, for the class of instance and owner routes.
fn verdict(flavor: ForgeFlavor, method: &str, path: &str) -> Verdict {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api", "v1", rest @ ..] => api_route(flavor, method, rest),
        _ => web_route(flavor, method, &segs),
    }
}

fn class_name(c: RouteClass) -> &'static str {
    match c {
        RouteClass::Read => "read",
        RouteClass::Write => "write",
        RouteClass::Admin => "admin",
        RouteClass::Ref(_) => "ref",
    }
}

/// What is wrong with the classification of one row, if anything.
fn check(
    flavor: ForgeFlavor,
    row: &Row,
    got: &Result<Classified, PathError>,
    path: &str,
) -> Option<String> {
    let c = match (row.class.as_str(), got) {
        ("refuse", Err(PathError::NumberedRepository)) => return None,
        (_, Err(e)) => return Some(format!("refused: {e}")),
        (_, Ok(c)) => c,
    };
    let want_action = |a: Action| (c.action != a).then(|| format!("{} instead of {}", c.action, a));
    match row.class.as_str() {
        "git" => (!matches!(c.action, Action::GitRead | Action::GitWrite)
            || c.resource.repo().is_none())
        .then(|| format!("{:?} {} instead of git", c.kind, c.action)),
        "lfs" => (!matches!(c.action, Action::LfsRead | Action::LfsWrite))
            .then(|| format!("{} instead of lfs", c.action)),
        "ref" => {
            if c.resource.repo().is_none() {
                return Some(format!("{:?} is not a repository", c.resource));
            }
            let op = row.moves.split(':').next().unwrap_or_default();
            match c.moves {
                Some(m) if m.as_str() == op => want_action(Action::GitWrite),
                m => Some(format!(
                    "moves {:?} instead of {op}",
                    m.map(RefMove::as_str)
                )),
            }
        }
        "repo:read" | "repo:write" | "repo:admin" => {
            if !matches!(c.resource, Resource::Repo(_)) {
                return Some(format!("{:?} is not a repository", c.resource));
            }
            want_action(match row.class.as_str() {
                "repo:read" => Action::RepoRead,
                "repo:write" => Action::RepoWrite,
                _ => Action::RepoAdmin,
            })
        }
        "owner:read" | "owner:write" | "owner:admin" => {
            if !matches!(c.resource, Resource::Owner(_)) {
                return Some(format!("{:?} is not an owner", c.resource));
            }
            want_action(match row.class.as_str() {
                "owner:read" => Action::OwnerRead,
                "owner:write" => Action::OwnerWrite,
                _ => Action::OwnerAdmin,
            })
        }
        "instance:read" | "instance:write" => {
            if !matches!(c.resource, Resource::Route(_)) {
                return Some(format!("{:?} is not an instance route", c.resource));
            }
            let want = row.class.trim_start_matches("instance:");
            match verdict(flavor, &row.method, path) {
                Verdict::Route(Target::Instance, cl) => {
                    let got = if class_name(cl) == "admin" {
                        "write"
                    } else {
                        class_name(cl)
                    };
                    (got != want).then(|| format!("{got} instead of {want}"))
                }
                v => Some(format!("{v:?}")),
            }
        }
        other => Some(format!(
            "the table's class `{other}` is not one routes/README.md defines"
        )),
    }
}

fn check_table(name: &str, min_rows: usize) {
    let (header, rows) = table(name);
    for key in ["# forge: ", "# source: ", "# version: "] {
        assert!(
            header.iter().any(|h| h.starts_with(key)),
            "{name}.tsv has no `{key}` header line"
        );
    }
    assert!(rows.len() >= min_rows, "{name}.tsv has {} rows", rows.len());
    let flavor = flavor_of(name);
    let mut wrong = Vec::new();
    for row in &rows {
        // The router's catch-all fallbacks (Gogs' `/*` and `/{**}`, `/api/v1/*`) match any path
        // that no other route does: there is no one path to try.
        if matches!(row.pattern.as_str(), "/*" | "/{**}" | "/api/v1/*") {
            continue;
        }
        let path = instantiate(&row.pattern);
        let got = classify(flavor, &row.method, "forge.example", &path, None);
        if let Some(why) = check(flavor, row, &got, &path) {
            wrong.push(format!(
                "{name}.tsv:{} {} {} ({path}) is {}: {why}",
                row.line, row.method, row.pattern, row.class
            ));
        }
        // Never a free route under a repository.
        let under_repo = [
            "/{username}/{reponame}",
            "/:username/:reponame",
            "/api/v1/repos/{username}/{reponame}",
            "/api/v1/repos/:username/:reponame",
        ]
        .iter()
        .any(|p| row.pattern.starts_with(p));
        if under_repo
            && let Ok(c) = &got
            && matches!(c.resource, Resource::Route(_))
        {
            wrong.push(format!(
                "{name}.tsv:{} {} is a free route under a repository",
                row.line, row.pattern
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
}

#[test]
fn every_gitea_route_is_classified_as_its_router_source_says() {
    check_table("gitea", 1000);
}

#[test]
fn every_forgejo_route_is_classified_as_its_router_source_says() {
    check_table("forgejo", 1000);
}

#[test]
fn every_gogs_route_is_classified_as_its_router_source_says() {
    check_table("gogs", 300);
}

/// Fields a table lists that name a ref the route reads but does not move (a tag's target, a
/// new branch's start point), or that do not change which ref moves (a release's draft flag:
/// Gatehouse asks for the tag either way; a deleted branch's record, which it cannot read).
const NOT_MOVED: &[&str] = &[
    "tag_target",
    "target",
    "target_commitish",
    "old_ref_name",
    "old_branch_name",
    "draft",
    "branch_id",
    // The commit a branch is moved to, and the switches of such moves.
    "new_commit_id",
    "old_commit_id",
    "force",
    "force_push",
];

/// Every ref-moving route of a table: Gatehouse reads every field the table says names a moved
/// ref, and with those fields given, it can say which refs move (or, where the forge's API
/// cannot say, refuses).
fn check_moves(name: &str) {
    let (_, rows) = table(name);
    let flavor = flavor_of(name);
    let mut wrong = Vec::new();
    let mut seen = 0;
    for row in rows.iter().filter(|r| r.class == "ref") {
        seen += 1;
        let path = instantiate(&row.pattern);
        let at = format!("{name}.tsv:{} {} {path}", row.line, row.method);
        let c = match classify(flavor, &row.method, "forge.example", &path, None) {
            Ok(c) => c,
            Err(e) => {
                wrong.push(format!("{at}: {e}"));
                continue;
            }
        };
        let Some(m) = c.moves else {
            wrong.push(format!("{at}: no ref move"));
            continue;
        };
        let rest = route_rest(&c.decoded_path, c.via);
        let wanted = body_fields(flavor, m, c.via, &rest);
        let (op, sources) = row.moves.split_once(':').unwrap_or((&row.moves, ""));
        assert_eq!(op, m.as_str(), "{at}");
        let web = c.via == gatehouse_core::Via::Web;
        // A restored branch's name comes from its record, whatever the form says.
        let sources_read = if m == RefMove::BranchRestore {
            ""
        } else {
            sources
        };
        for src in sources_read.split(',').filter(|s| !s.is_empty()) {
            let (kind, field) = src.split_once(':').unwrap_or((src, ""));
            match kind {
                // Web forms are bound from the body and the query alike.
                "form" | "query" if web => {}
                "json" if !web => {}
                // A JSON body on a web route, and a form on an API route, are refused
                // (`read_route_fields`).
                "form" | "query" | "json" => continue,
                _ => continue,
            }
            if NOT_MOVED.contains(&field) {
                continue;
            }
            if !wanted.iter().any(|(w, _)| *w == field) {
                wrong.push(format!("{at}: `{src}` names a moved ref but is not read"));
            }
        }
        // With every field given, the refs that move are known.
        let value = |f: &str| match f {
            "commit_choice" => "direct",
            "id" => "3",
            _ => "feature",
        };
        let form_body: Vec<String> = wanted
            .iter()
            .map(|(f, k)| match k {
                JsonKind::Str => format!("{f}={}", value(f)),
                JsonKind::Bool => format!("{f}=true"),
            })
            .collect();
        let json_body: Vec<String> = wanted
            .iter()
            .map(|(f, k)| match k {
                JsonKind::Str => format!("\"{f}\":\"{}\"", value(f)),
                JsonKind::Bool => format!("\"{f}\":true"),
            })
            .collect();
        let (ct, body) = if web {
            ("application/x-www-form-urlencoded", form_body.join("&"))
        } else {
            ("application/json", format!("{{{}}}", json_body.join(",")))
        };
        let read = read_route_fields(c.via, &row.method, Some(ct), None, body.as_bytes(), wanted)
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        match (plan_moves(flavor, m, c.via, &rest, read.fields()), m) {
            (Err(PlanError::Undecidable(_)), RefMove::BranchRestore) => {}
            (Ok(planned), _) if !planned.is_empty() => {
                let looks_up = planned
                    .iter()
                    .any(|p| matches!(p.source, RefSource::PullBase(_) | RefSource::PullHead(_)));
                if sources.contains("lookup:pull") != looks_up {
                    wrong.push(format!(
                        "{at}: pull request lookup {looks_up}, table says {sources}"
                    ));
                }
            }
            (got, _) => wrong.push(format!("{at}: {got:?}")),
        }
    }
    assert!(seen >= 10, "{name}.tsv has {seen} ref rows");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_gitea_ref_route_says_which_refs_move() {
    check_moves("gitea");
}

#[test]
fn every_forgejo_ref_route_says_which_refs_move() {
    check_moves("forgejo");
}

#[test]
fn every_gogs_ref_route_says_which_refs_move() {
    check_moves("gogs");
}

#[test]
fn the_rules_parse() {
    gatehouse_git::rules_ok().unwrap();
}

#[test]
fn instantiation() {
    assert_eq!(
        instantiate("/{username}/{reponame}/src/*"),
        "/alice/demo/src/main/docs/x.md"
    );
    assert_eq!(
        instantiate("/:username/:reponame/pulls/:index/merge"),
        "/alice/demo/pulls/1/merge"
    );
    assert_eq!(
        instantiate("/{username}/{reponame}/objects/{head:[0-9a-f]{2}}/{hash:[0-9a-f]{38,62}}"),
        format!("/alice/demo/objects/ab/{}", &HEX[..38])
    );
    assert_eq!(
        instantiate("/{username}/{reponame}/{type:issues|pulls}/{index}"),
        "/alice/demo/issues/1"
    );
    assert_eq!(instantiate("/api/web/*"), "/api/web/x");
    assert_eq!(
        instantiate("/:username/:reponame/commit/:sha([a-f0-9]{7,40})\\.:ext(patch|diff)"),
        format!("/alice/demo/commit/{HEX}.patch")
    );
}
