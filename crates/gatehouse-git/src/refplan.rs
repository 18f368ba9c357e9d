//! Which refs a forge's web or REST API route creates, moves or deletes, read as the forge reads
//! them: from the URL, from the form or JSON fields the forge's handler binds (`routes/*.tsv`
//! names them per route, from the forge's source), or from something only the forge knows (a pull
//! request's base and head branches, a release's tag, the default branch), which the caller looks
//! up on the forge's API before asking the policy.
//!
//! Each planned move is asked as the same `ref:create|update|delete` a push asks. Where a route
//! may move one of several refs and Gatehouse cannot tell which without guessing, every one of
//! them is asked (a branch-then-file URL names the branch by a prefix of the path; a merge may or
//! may not delete its head branch). Where the forge's API cannot say which ref moves (a deleted
//! branch restored by its record's id), the route is refused. Pure: no I/O.

use crate::classify::ForgeFlavor;
use crate::forge::RefMove;
use crate::form::{Form, FormError};
use crate::json_body::{JsonBodyError, JsonFields, JsonKind};
use crate::push::{RefOp, valid_ref_name};
use gatehouse_core::Via;

/// Where the name of a moved ref comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefSource {
    /// A full ref name the request gives.
    Named(String),
    /// Any of these full names: the URL names a branch and then a file path, and the forge takes
    /// the shortest prefix of the path that is a branch. Every candidate is asked.
    AnyOf(Vec<String>),
    /// The base branch of the pull request with this index.
    PullBase(u64),
    /// The head branch of the pull request with this index (in its head repository).
    PullHead(u64),
    /// The repository's default branch.
    DefaultBranch,
    /// The repository's default branch, if the repository is empty: the forge's editor and
    /// contents API then commit there, creating it, whatever branch the request names.
    DefaultBranchIfEmpty,
    /// This full name, if the repository is empty (a commit that then creates the branch it
    /// names).
    IfEmpty(String),
    /// The tag of the release with this id.
    ReleaseTag(u64),
    /// Every tag whose name equals this one without regard to case: the forge finds a tag to
    /// delete by its lower-cased name (`GetRelease` on `lower_tag_name`).
    TagsLike(String),
    /// The tag of every release (drafts included) whose tag equals this one without regard to
    /// case: the forge finds the release to edit that way, and publishing it creates its tag.
    ReleaseTagsLike(String),
}

/// One ref a route moves, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    /// Where its name comes from.
    pub source: RefSource,
    /// Created, updated or deleted.
    pub op: RefOp,
}

impl PlannedMove {
    fn named(prefix: &str, name: &str, op: RefOp) -> Result<Self, PlanError> {
        let full = format!("{prefix}{name}");
        if !valid_ref_name(&full) {
            return Err(PlanError::BadRefName(full));
        }
        Ok(Self {
            source: RefSource::Named(full),
            op,
        })
    }
}

/// Why the refs a route moves could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The form could not be read for sure.
    #[error(transparent)]
    Form(#[from] FormError),
    /// The JSON body could not be read for sure.
    #[error(transparent)]
    Json(#[from] JsonBodyError),
    /// A field that names the ref is missing or empty (the forge would refuse the request).
    #[error("the request does not say `{0}`")]
    Missing(&'static str),
    /// A switch whose value the forge's binding would not read as a boolean.
    #[error("`{0}` is not a boolean")]
    BadBool(&'static str),
    /// The ref the request names is no valid ref name.
    #[error("`{0}` is not a valid ref name")]
    BadRefName(String),
    /// A pull request or release number that is not plain decimal digits.
    #[error("`{0}` is not a number Gatehouse reads as the forge does")]
    BadNumber(String),
    /// The forge's API cannot say which ref the route moves.
    #[error("{0}")]
    Undecidable(&'static str),
    /// An API route's body that is not JSON: the forge's binding would read it as a form,
    /// under other names; Gatehouse reads only JSON there.
    #[error("the body of this API route must be JSON (Content-Type: application/json)")]
    NotJson,
}

/// The fields read from a request for a ref-moving route ([`read_route_fields`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteFields {
    /// The route names its refs in its URL.
    None,
    /// A web route's form.
    Form(Form),
    /// An API route's JSON body.
    Json(JsonFields),
}

impl RouteFields {
    /// The fields, for [`plan_moves`].
    pub fn fields(&self) -> Fields<'_> {
        match self {
            RouteFields::None => Fields::None,
            RouteFields::Form(f) => Fields::Form(f),
            RouteFields::Json(j) => Fields::Json(j),
        }
    }
}

/// Reads the `wanted` fields ([`body_fields`]) of a request as the forge's binding reads them.
/// A web route's fields are its form (the body's and the query's, [`Form::read`]). An API
/// route's are its JSON body: go-chi/binding picks its decoder by looking for
/// `form-urlencoded`, then `multipart/form-data`, then `json` in the `Content-Type` as sent, and
/// binds a form by the Go field names (`branch_name`, not `branch`); Gatehouse reads only the
/// JSON case and refuses the others. Nothing is read when nothing is wanted.
pub fn read_route_fields(
    via: Via,
    method: &str,
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
    wanted: &'static [(&'static str, JsonKind)],
) -> Result<RouteFields, PlanError> {
    if wanted.is_empty() {
        return Ok(RouteFields::None);
    }
    if via != Via::Api {
        return Ok(RouteFields::Form(Form::read(
            method,
            content_type,
            query,
            body,
        )?));
    }
    // The binding looks at the type as sent; the forge's authentication may already have read
    // the body as a form by the media type, lower-cased (`ParseForm` in OAuth2's token lookup):
    // both must see JSON, and nothing else.
    let ct = content_type.unwrap_or_default();
    let media = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let lower = ct.to_ascii_lowercase();
    if lower.contains("form-urlencoded")
        || lower.contains("multipart/form-data")
        || !ct.contains("json")
        || !media.contains("json")
    {
        return Err(PlanError::NotJson);
    }
    Ok(RouteFields::Json(crate::json_body::read_json_fields(
        body, wanted,
    )?))
}

/// The fields of a request Gatehouse reads for a route: its form (web routes) or its JSON body
/// (API routes).
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// No body was needed.
    None,
    /// A web form: the body's fields and the query's (Go's `Request.Form`).
    Form(&'a Form),
    /// A JSON body.
    Json(&'a JsonFields),
}

/// How the forges' web handlers read a form field: `ctx.FormString` / `FormInt64` (`FormValue`:
/// the query and the body) for these; the form struct's binding for the rest, except `branch`,
/// whose handlers differ between forges and versions: both readings must agree for it.
fn form_field<'f>(f: &'f Form, name: &str) -> Result<Option<&'f str>, FormError> {
    match name {
        "name" | "id" | "from_base_branch" => f.one(name),
        "branch" => f.agreed(name),
        _ => f.bound(name),
    }
}

impl Fields<'_> {
    /// The non-empty string `name`.
    fn str(&self, name: &'static str) -> Result<Option<&str>, PlanError> {
        let v = match self {
            Fields::None => None,
            Fields::Form(f) => form_field(f, name)?,
            Fields::Json(j) => j.str(name),
        };
        Ok(v.filter(|s| !s.is_empty()))
    }

    fn required(&self, name: &'static str) -> Result<&str, PlanError> {
        self.str(name)?.ok_or(PlanError::Missing(name))
    }

    /// A switch as the forge's binding reads it (go-chi/binding: `on`, and what Go's
    /// `strconv.ParseBool` reads, an empty value being false); `None` when absent.
    fn bool(&self, name: &'static str) -> Result<Option<bool>, PlanError> {
        match self {
            Fields::None => Ok(None),
            Fields::Json(j) => Ok(j.bool(name)),
            Fields::Form(f) => match form_field(f, name)? {
                None => Ok(None),
                Some("on" | "1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(Some(true)),
                Some("" | "0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(Some(false)),
                Some(_) => Err(PlanError::BadBool(name)),
            },
        }
    }
}

const NONE: &[(&str, JsonKind)] = &[];
const COMMIT_FORM: &[(&str, JsonKind)] = &[
    ("commit_choice", JsonKind::Str),
    ("new_branch_name", JsonKind::Str),
    // Gitea 1.25: editing a repository the user cannot write to commits to a new branch of
    // their fork when this is set, whatever `commit_choice` says.
    ("from_base_branch", JsonKind::Str),
];
const FILE_OPTIONS: &[(&str, JsonKind)] = &[
    ("branch", JsonKind::Str),
    ("new_branch", JsonKind::Str),
    // Gitea 1.26: an existing `new_branch` is force-pushed over rather than refused.
    ("force_push", JsonKind::Bool),
];
const GOGS_CONTENTS: &[(&str, JsonKind)] = &[("branch", JsonKind::Str)];
const NEW_BRANCH_FORM: &[(&str, JsonKind)] = &[
    ("new_branch_name", JsonKind::Str),
    ("create_tag", JsonKind::Bool),
];
const NEW_BRANCH_JSON: &[(&str, JsonKind)] = &[("new_branch_name", JsonKind::Str)];
const NAME: &[(&str, JsonKind)] = &[("name", JsonKind::Str)];
const RENAME_FORM: &[(&str, JsonKind)] = &[("from", JsonKind::Str), ("to", JsonKind::Str)];
const TAG_NAME: &[(&str, JsonKind)] = &[("tag_name", JsonKind::Str)];
const ID: &[(&str, JsonKind)] = &[("id", JsonKind::Str)];
const MERGE: &[(&str, JsonKind)] = &[("delete_branch_after_merge", JsonKind::Bool)];
const BRANCH: &[(&str, JsonKind)] = &[("branch", JsonKind::Str)];

/// The segments of a route's decoded path after its repository: after `/{owner}/{repo}` on the
/// web, after `/api/v1/repos/{owner}/{repo}` in the API.
pub fn route_rest(decoded_path: &str, via: Via) -> Vec<&str> {
    let skip = if via == Via::Api { 5 } else { 2 };
    decoded_path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(skip)
        .collect()
}

/// The fields (and their JSON types) a ref-moving route's body must be read for; empty when
/// the URL says everything. `rest` is [`route_rest`].
pub fn body_fields(
    flavor: ForgeFlavor,
    moves: RefMove,
    via: Via,
    rest: &[&str],
) -> &'static [(&'static str, JsonKind)] {
    let first = rest.first().copied().unwrap_or_default();
    match (via, moves) {
        (Via::Api, RefMove::Commit) if flavor == ForgeFlavor::Gogs => GOGS_CONTENTS,
        (Via::Api, RefMove::Commit) => FILE_OPTIONS,
        (Via::Api, RefMove::BranchCreate) => NEW_BRANCH_JSON,
        (Via::Api, RefMove::BranchRename) => NAME,
        (Via::Api, RefMove::TagCreate | RefMove::Release) => TAG_NAME,
        (Via::Api, RefMove::Merge) => MERGE,
        (Via::Api, RefMove::UpdateBranch) if first == "merge-upstream" => BRANCH,
        (Via::Api, _) => NONE,
        (_, RefMove::Commit) => COMMIT_FORM,
        (_, RefMove::BranchCreate) => NEW_BRANCH_FORM,
        (_, RefMove::BranchDelete) if first == "branches" && flavor != ForgeFlavor::Gogs => NAME,
        (_, RefMove::BranchRename) => RENAME_FORM,
        (_, RefMove::TagDelete) => ID,
        (_, RefMove::Release) if first == "releases" && rest.get(1) == Some(&"new") => TAG_NAME,
        (_, RefMove::Merge) => MERGE,
        (_, RefMove::UpdateBranch)
            if first == "sync_fork" || rest.get(1) == Some(&"merge-upstream") =>
        {
            BRANCH
        }
        _ => NONE,
    }
}

/// A pull request index or release id as the forge's `strconv.ParseInt` reads it, limited to
/// plain digits (a sign, which Go accepts, is refused rather than read).
fn number(s: &str) -> Result<u64, PlanError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PlanError::BadNumber(s.to_owned()));
    }
    s.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && i64::try_from(*n).is_ok())
        .ok_or_else(|| PlanError::BadNumber(s.to_owned()))
}

fn joined(segs: &[&str]) -> Result<String, PlanError> {
    if segs.is_empty() {
        return Err(PlanError::Missing("the ref in the path"));
    }
    Ok(segs.join("/"))
}

/// Every prefix of a branch-then-file path that is a valid branch name, as full ref names.
fn branch_candidates(segs: &[&str]) -> Result<RefSource, PlanError> {
    let mut out = Vec::new();
    let mut name = String::new();
    for s in segs {
        if !name.is_empty() {
            name.push('/');
        }
        name.push_str(s);
        let full = format!("refs/heads/{name}");
        if valid_ref_name(&full) {
            out.push(full);
        }
    }
    if out.is_empty() {
        return Err(PlanError::Missing("the branch in the path"));
    }
    Ok(RefSource::AnyOf(out))
}

/// A tag the forge creates from `name`: Gitea and Forgejo strip one leading `--` before they
/// create it (`services/release`), so both names are asked where that applies.
fn tag_created(out: &mut Vec<PlannedMove>, name: &str) -> Result<(), PlanError> {
    out.push(PlannedMove::named("refs/tags/", name, RefOp::Create)?);
    if let Some(trimmed) = name.strip_prefix("--") {
        out.push(PlannedMove::named("refs/tags/", trimmed, RefOp::Create)?);
    }
    Ok(())
}

fn mv(source: RefSource, op: RefOp) -> PlannedMove {
    PlannedMove { source, op }
}

/// The refs a ref-moving route moves. `rest` is [`route_rest`], `fields` the body read for
/// [`body_fields`].
pub fn plan_moves(
    flavor: ForgeFlavor,
    moves: RefMove,
    via: Via,
    rest: &[&str],
    fields: Fields<'_>,
) -> Result<Vec<PlannedMove>, PlanError> {
    use RefOp::{Create, Delete, Update};
    let first = rest.first().copied().unwrap_or_default();
    let heads = "refs/heads/";
    let tags = "refs/tags/";
    // `pulls/{index}/...`
    let pull = || number(rest.get(1).copied().unwrap_or_default());
    // A merge deletes the head branch when asked, or (newer forges) when the repository's
    // setting says so and the request does not say otherwise.
    let merge = |out: &mut Vec<PlannedMove>| -> Result<(), PlanError> {
        let n = pull()?;
        out.push(mv(RefSource::PullBase(n), Update));
        if fields.bool("delete_branch_after_merge")? != Some(false) {
            out.push(mv(RefSource::PullHead(n), Delete));
        }
        Ok(())
    };
    let mut out = Vec::new();
    match (via, moves) {
        // ------------------------------------------------------------------ REST API
        (Via::Api, RefMove::Commit) if flavor == ForgeFlavor::Gogs => {
            // Gogs commits on `branch`, made from the default branch when it differs.
            match fields.str("branch")? {
                None => {
                    out.push(mv(RefSource::DefaultBranch, Update));
                    out.push(mv(RefSource::DefaultBranchIfEmpty, Create));
                }
                Some(b) => {
                    out.push(PlannedMove::named(heads, b, Create)?);
                    out.push(PlannedMove::named(heads, b, Update)?);
                }
            }
        }
        (Via::Api, RefMove::Commit) => {
            // Gitea's files service: the old branch defaults to the default branch, the new
            // one to the old; a new branch other than the old one is created.
            // In an empty repository the commit creates the branch it goes to.
            let update = |out: &mut Vec<PlannedMove>, b: &str| -> Result<(), PlanError> {
                let m = PlannedMove::named(heads, b, Update)?;
                let full = match &m.source {
                    RefSource::Named(full) => full.clone(),
                    _ => return Err(PlanError::BadRefName(b.to_owned())),
                };
                out.push(m);
                out.push(mv(RefSource::IfEmpty(full), Create));
                Ok(())
            };
            match (fields.str("branch")?, fields.str("new_branch")?) {
                (None, None) => {
                    out.push(mv(RefSource::DefaultBranch, Update));
                    out.push(mv(RefSource::DefaultBranchIfEmpty, Create));
                }
                (Some(b), None) => update(&mut out, b)?,
                (Some(b), Some(n)) if b == n => update(&mut out, b)?,
                (Some(_), Some(n)) => {
                    out.push(PlannedMove::named(heads, n, Create)?);
                    if fields.bool("force_push")? == Some(true) {
                        out.push(PlannedMove::named(heads, n, Update)?);
                    }
                }
                // The new branch may be the default branch itself: both are asked.
                (None, Some(n)) => {
                    out.push(PlannedMove::named(heads, n, Create)?);
                    out.push(PlannedMove::named(heads, n, Update)?);
                }
            }
        }
        (Via::Api, RefMove::BranchCreate) => {
            out.push(PlannedMove::named(
                heads,
                fields.required("new_branch_name")?,
                Create,
            )?);
        }
        (Via::Api, RefMove::BranchDelete) => {
            out.push(PlannedMove::named(
                heads,
                &joined(rest.get(1..).unwrap_or_default())?,
                Delete,
            )?);
        }
        (Via::Api, RefMove::BranchRename) => {
            out.push(PlannedMove::named(
                heads,
                &joined(rest.get(1..).unwrap_or_default())?,
                Delete,
            )?);
            out.push(PlannedMove::named(heads, fields.required("name")?, Create)?);
        }
        (Via::Api, RefMove::TagCreate) => tag_created(&mut out, fields.required("tag_name")?)?,
        (Via::Api, RefMove::TagDelete) => {
            let t = joined(rest.get(1..).unwrap_or_default())?;
            out.push(PlannedMove::named(tags, &t, Delete)?);
            out.push(mv(RefSource::TagsLike(t), Delete));
        }
        (Via::Api, RefMove::Release) => match (fields.str("tag_name")?, rest.get(1)) {
            (Some(t), _) => tag_created(&mut out, t)?,
            // Editing a release without naming a tag publishes (creates) its own.
            (None, Some(id)) => out.push(mv(RefSource::ReleaseTag(number(id)?), Create)),
            (None, None) => return Err(PlanError::Missing("tag_name")),
        },
        (Via::Api, RefMove::Merge) => merge(&mut out)?,
        (Via::Api, RefMove::UpdateBranch) if first == "pulls" => {
            out.push(mv(RefSource::PullHead(pull()?), Update));
        }
        // Gitea's `merge-upstream` (a fork's branch from its base repository).
        (Via::Api, RefMove::UpdateBranch) if first == "merge-upstream" => {
            out.push(PlannedMove::named(
                heads,
                fields.required("branch")?,
                Update,
            )?);
        }
        // Gitea 1.25's `PUT branches/{branch}`: the branch is moved to another commit.
        (Via::Api, RefMove::UpdateBranch) if first == "branches" => {
            out.push(PlannedMove::named(
                heads,
                &joined(rest.get(1..).unwrap_or_default())?,
                Update,
            )?);
        }
        (Via::Api, RefMove::UpdateBranch) if first == "sync_fork" => match rest.get(1..) {
            Some(b) if !b.is_empty() => out.push(PlannedMove::named(heads, &joined(b)?, Update)?),
            _ => out.push(mv(RefSource::DefaultBranch, Update)),
        },
        // ------------------------------------------------------------------ web UI
        (Via::Web, RefMove::Commit) => {
            let branch = match first {
                "_cherrypick" => rest.get(2..).unwrap_or_default(),
                _ => rest.get(1..).unwrap_or_default(),
            };
            // Anything but the new-branch choice commits to the branch in the path.
            let new_branch = fields.str("commit_choice")? == Some("commit-to-new-branch")
                || fields.str("from_base_branch")?.is_some();
            if new_branch {
                let n = fields.required("new_branch_name")?;
                out.push(PlannedMove::named(heads, n, Create)?);
            } else {
                out.push(mv(branch_candidates(branch)?, Update));
                // `HEAD` that is no branch is the default branch there.
                if branch.first() == Some(&"HEAD") {
                    out.push(mv(RefSource::DefaultBranch, Update));
                }
                // An empty repository's editor commits to its default branch, creating it,
                // whatever the path says.
                out.push(mv(RefSource::DefaultBranchIfEmpty, Create));
            }
        }
        (Via::Web, RefMove::BranchCreate) => {
            let n = fields.required("new_branch_name")?;
            match fields.bool("create_tag")? {
                Some(true) => tag_created(&mut out, n)?,
                _ => out.push(PlannedMove::named(heads, n, Create)?),
            }
        }
        (Via::Web, RefMove::BranchDelete) if first == "pulls" => {
            out.push(mv(RefSource::PullHead(pull()?), Delete));
        }
        (Via::Web, RefMove::BranchDelete) if flavor == ForgeFlavor::Gogs => {
            out.push(PlannedMove::named(
                heads,
                &joined(rest.get(2..).unwrap_or_default())?,
                Delete,
            )?);
        }
        (Via::Web, RefMove::BranchDelete) => {
            out.push(PlannedMove::named(heads, fields.required("name")?, Delete)?);
        }
        (Via::Web, RefMove::BranchRename) => {
            out.push(PlannedMove::named(heads, fields.required("from")?, Delete)?);
            out.push(PlannedMove::named(heads, fields.required("to")?, Create)?);
        }
        (Via::Web, RefMove::BranchRestore) => {
            return Err(PlanError::Undecidable(
                "a deleted branch is restored by its record's id, and the forge's API does not say which branch that is; push the branch instead",
            ));
        }
        (Via::Web, RefMove::TagDelete) => {
            let id = fields.required("id")?;
            out.push(mv(RefSource::ReleaseTag(number(id)?), Delete));
        }
        (Via::Web, RefMove::Release) if rest.get(1) == Some(&"new") => {
            tag_created(&mut out, fields.required("tag_name")?)?;
        }
        (Via::Web, RefMove::Release) => {
            // `releases/edit/{tag}`: publishing a draft creates its tag, which the forge finds
            // without regard to case.
            let t = joined(rest.get(2..).unwrap_or_default())?;
            out.push(PlannedMove::named(tags, &t, Create)?);
            out.push(mv(RefSource::ReleaseTagsLike(t), Create));
        }
        (Via::Web, RefMove::Merge) => merge(&mut out)?,
        // Forgejo's `sync_fork`, Gitea's `branches/merge-upstream`.
        (Via::Web, RefMove::UpdateBranch)
            if first == "sync_fork" || rest.get(1) == Some(&"merge-upstream") =>
        {
            out.push(PlannedMove::named(
                heads,
                fields.required("branch")?,
                Update,
            )?);
        }
        (Via::Web, RefMove::UpdateBranch) => {
            out.push(mv(RefSource::PullHead(pull()?), Update));
        }
        _ => {
            return Err(PlanError::Undecidable(
                "Gatehouse does not know which refs this route moves",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
