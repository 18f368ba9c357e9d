use super::*;
use crate::json_body::read_json_fields;

const FORM_CT: Option<&str> = Some("application/x-www-form-urlencoded");

fn named(name: &str, op: RefOp) -> PlannedMove {
    mv(RefSource::Named(name.into()), op)
}

/// Plans a web route with a form body.
fn web(
    flavor: ForgeFlavor,
    m: RefMove,
    path: &str,
    body: &str,
) -> Result<Vec<PlannedMove>, PlanError> {
    let rest = route_rest(path, Via::Web);
    let (path_only, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let rest: Vec<&str> = if query.is_some() {
        route_rest(path_only, Via::Web)
    } else {
        rest
    };
    let form = Form::read("POST", FORM_CT, query, body.as_bytes())?;
    plan_moves(flavor, m, Via::Web, &rest, Fields::Form(&form))
}

fn gitea_web(m: RefMove, path: &str, body: &str) -> Result<Vec<PlannedMove>, PlanError> {
    web(ForgeFlavor::Gitea, m, path, body)
}

/// Plans a web route with a body of the given type.
fn web_typed(
    m: RefMove,
    path: &str,
    ct: Option<&str>,
    body: &str,
) -> Result<Vec<PlannedMove>, PlanError> {
    let (path_only, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let rest = route_rest(path_only, Via::Web);
    let form = Form::read("POST", ct, query, body.as_bytes())?;
    plan_moves(ForgeFlavor::Gitea, m, Via::Web, &rest, Fields::Form(&form))
}

/// Plans an API route with a JSON body.
fn api(
    flavor: ForgeFlavor,
    m: RefMove,
    path: &str,
    body: &str,
) -> Result<Vec<PlannedMove>, PlanError> {
    let rest = route_rest(path, Via::Api);
    let json = read_json_fields(body.as_bytes(), body_fields(flavor, m, Via::Api, &rest))?;
    plan_moves(flavor, m, Via::Api, &rest, Fields::Json(&json))
}

fn gitea_api(m: RefMove, path: &str, body: &str) -> Result<Vec<PlannedMove>, PlanError> {
    api(ForgeFlavor::Gitea, m, path, body)
}

use RefOp::{Create, Delete, Update};

#[test]
fn the_web_editor_commits_to_the_branch_in_its_path_or_to_a_new_one() {
    // The branch is a prefix of the path: every prefix is asked.
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_edit/main/docs/README.md",
            "commit_choice=direct"
        ),
        Ok(vec![
            mv(
                RefSource::AnyOf(vec![
                    "refs/heads/main".into(),
                    "refs/heads/main/docs".into(),
                    "refs/heads/main/docs/README.md".into(),
                ]),
                Update
            ),
            // In an empty repository the editor creates the default branch.
            mv(RefSource::DefaultBranchIfEmpty, Create),
        ])
    );
    // Anything but the new-branch choice commits to the path's branch.
    for choice in [
        "",
        "commit_choice=",
        "commit_choice=Commit-To-New-Branch&new_branch_name=x",
    ] {
        let got = gitea_web(RefMove::Commit, "/acme/api/_delete/main/x", choice).unwrap();
        assert_eq!(got[0].op, Update, "{choice}");
    }
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_upload/main/",
            "commit_choice=commit-to-new-branch&new_branch_name=feature%2Fx"
        ),
        Ok(vec![named("refs/heads/feature/x", Create)])
    );
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_upload/main",
            "commit_choice=commit-to-new-branch"
        ),
        Err(PlanError::Missing("new_branch_name"))
    );
    // Cherry-pick and revert: `_cherrypick/{sha}/{branch}`.
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_cherrypick/abcdef1/release/1.0",
            "revert=true"
        ),
        Ok(vec![
            mv(
                RefSource::AnyOf(vec![
                    "refs/heads/release".into(),
                    "refs/heads/release/1.0".into()
                ]),
                Update
            ),
            mv(RefSource::DefaultBranchIfEmpty, Create),
        ])
    );
    // A choice given twice (body and query) is refused.
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_edit/main/x?commit_choice=direct",
            "commit_choice=commit-to-new-branch&new_branch_name=y"
        ),
        Err(PlanError::Form(FormError::Repeated("commit_choice".into())))
    );
    assert_eq!(
        gitea_web(RefMove::Commit, "/acme/api/_edit", ""),
        Err(PlanError::Missing("the branch in the path"))
    );
}

#[test]
fn branches_and_tags_on_the_web() {
    assert_eq!(
        gitea_web(
            RefMove::BranchCreate,
            "/acme/api/branches/_new/branch/main",
            "new_branch_name=dev"
        ),
        Ok(vec![named("refs/heads/dev", Create)])
    );
    // `create_tag` makes the same form create a tag.
    for on in ["on", "true", "1", "T"] {
        assert_eq!(
            gitea_web(
                RefMove::BranchCreate,
                "/acme/api/branches/_new/commit/abc",
                &format!("new_branch_name=v1&create_tag={on}")
            ),
            Ok(vec![named("refs/tags/v1", Create)])
        );
    }
    assert_eq!(
        gitea_web(
            RefMove::BranchCreate,
            "/acme/api/branches/_new/tag/v1",
            "new_branch_name=v1&create_tag=yes"
        ),
        Err(PlanError::BadBool("create_tag"))
    );
    // The name is in the query (the web UI's delete button) or the body.
    assert_eq!(
        gitea_web(
            RefMove::BranchDelete,
            "/acme/api/branches/delete?name=main",
            ""
        ),
        Ok(vec![named("refs/heads/main", Delete)])
    );
    assert_eq!(
        gitea_web(
            RefMove::BranchDelete,
            "/acme/api/branches/delete",
            "name=main"
        ),
        Ok(vec![named("refs/heads/main", Delete)])
    );
    assert_eq!(
        web(
            ForgeFlavor::Gogs,
            RefMove::BranchDelete,
            "/acme/api/branches/delete/feature/x",
            ""
        ),
        Ok(vec![named("refs/heads/feature/x", Delete)])
    );
    assert_eq!(
        gitea_web(
            RefMove::BranchRename,
            "/acme/api/settings/rename_branch",
            "from=main&to=trunk"
        ),
        Ok(vec![
            named("refs/heads/main", Delete),
            named("refs/heads/trunk", Create)
        ])
    );
    assert!(matches!(
        gitea_web(
            RefMove::BranchRestore,
            "/acme/api/branches/restore",
            "branch_id=3&name=main"
        ),
        Err(PlanError::Undecidable(_))
    ));
    assert_eq!(
        gitea_web(RefMove::TagDelete, "/acme/api/tags/delete", "id=12"),
        Ok(vec![mv(RefSource::ReleaseTag(12), Delete)])
    );
    for bad in [
        "id=-1",
        "id=%2B12",
        "id=0",
        "id=x",
        "id=99999999999999999999",
    ] {
        assert!(
            matches!(
                gitea_web(RefMove::TagDelete, "/acme/api/tags/delete", bad),
                Err(PlanError::BadNumber(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(
        gitea_web(
            RefMove::Release,
            "/acme/api/releases/new",
            "tag_name=v2&tag_target=main"
        ),
        Ok(vec![named("refs/tags/v2", Create)])
    );
    assert_eq!(
        gitea_web(RefMove::Release, "/acme/api/releases/edit/v2/rc", "title=x"),
        Ok(vec![
            named("refs/tags/v2/rc", Create),
            mv(RefSource::ReleaseTagsLike("v2/rc".into()), Create)
        ])
    );
}

#[test]
fn pull_requests_need_the_forge_to_say_which_branches() {
    assert_eq!(
        gitea_web(RefMove::Merge, "/acme/api/pulls/7/merge", "do=merge"),
        Ok(vec![
            mv(RefSource::PullBase(7), Update),
            mv(RefSource::PullHead(7), Delete)
        ])
    );
    // Only an explicit "no" leaves the head branch out.
    assert_eq!(
        gitea_web(
            RefMove::Merge,
            "/acme/api/pulls/7/merge",
            "do=merge&delete_branch_after_merge=false"
        ),
        Ok(vec![mv(RefSource::PullBase(7), Update)])
    );
    assert_eq!(
        gitea_api(
            RefMove::Merge,
            "/api/v1/repos/acme/api/pulls/7/merge",
            r#"{"Do":"squash","delete_branch_after_merge":false}"#
        ),
        Ok(vec![mv(RefSource::PullBase(7), Update)])
    );
    assert_eq!(
        gitea_web(RefMove::UpdateBranch, "/acme/api/pulls/7/update", ""),
        Ok(vec![mv(RefSource::PullHead(7), Update)])
    );
    assert_eq!(
        gitea_web(RefMove::BranchDelete, "/acme/api/pulls/7/cleanup", ""),
        Ok(vec![mv(RefSource::PullHead(7), Delete)])
    );
    assert!(matches!(
        gitea_web(RefMove::Merge, "/acme/api/pulls/007x/merge", ""),
        Err(PlanError::BadNumber(_))
    ));
}

#[test]
fn the_contents_api_reads_branch_and_new_branch_as_gitea_does() {
    let p = "/api/v1/repos/acme/api/contents/README.md";
    assert_eq!(
        gitea_api(RefMove::Commit, p, r#"{"content":"aGk=","branch":"main"}"#),
        Ok(vec![
            named("refs/heads/main", Update),
            mv(RefSource::IfEmpty("refs/heads/main".into()), Create)
        ])
    );
    assert_eq!(
        gitea_api(RefMove::Commit, p, r#"{"content":"aGk="}"#),
        Ok(vec![
            mv(RefSource::DefaultBranch, Update),
            mv(RefSource::DefaultBranchIfEmpty, Create)
        ])
    );
    assert_eq!(
        gitea_api(RefMove::Commit, p, r#"{"branch":"","new_branch":""}"#),
        Ok(vec![
            mv(RefSource::DefaultBranch, Update),
            mv(RefSource::DefaultBranchIfEmpty, Create)
        ])
    );
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            p,
            r#"{"branch":"main","new_branch":"feature"}"#
        ),
        Ok(vec![named("refs/heads/feature", Create)])
    );
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            p,
            r#"{"branch":"main","new_branch":"main"}"#
        ),
        Ok(vec![
            named("refs/heads/main", Update),
            mv(RefSource::IfEmpty("refs/heads/main".into()), Create)
        ])
    );
    // Without `branch`, the new branch may be the default branch: both are asked.
    assert_eq!(
        gitea_api(RefMove::Commit, p, r#"{"new_branch":"main"}"#),
        Ok(vec![
            named("refs/heads/main", Create),
            named("refs/heads/main", Update)
        ])
    );
    // Spellings another decoder reads as `branch` are refused.
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            p,
            r#"{"branch":"feature","Branch":"main"}"#
        ),
        Err(PlanError::Json(JsonBodyError::Repeated("branch")))
    );
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            "/api/v1/repos/acme/api/diffpatch",
            r#"{"branch":"main","content":"diff"}"#
        ),
        Ok(vec![
            named("refs/heads/main", Update),
            mv(RefSource::IfEmpty("refs/heads/main".into()), Create)
        ])
    );
    // Gogs commits on `branch`, made from the default branch when it is another.
    let gogs = |b: &str| api(ForgeFlavor::Gogs, RefMove::Commit, p, b);
    assert_eq!(
        gogs(r#"{"message":"m","content":"aGk="}"#),
        Ok(vec![
            mv(RefSource::DefaultBranch, Update),
            mv(RefSource::DefaultBranchIfEmpty, Create)
        ])
    );
    assert_eq!(
        gogs(r#"{"branch":"main"}"#),
        Ok(vec![
            named("refs/heads/main", Create),
            named("refs/heads/main", Update)
        ])
    );
    assert_eq!(
        gogs(r#"{"branch":"a..b"}"#),
        Err(PlanError::BadRefName("refs/heads/a..b".into()))
    );
}

#[test]
fn branches_tags_and_releases_in_the_api() {
    let b = "/api/v1/repos/acme/api/branches";
    assert_eq!(
        gitea_api(
            RefMove::BranchCreate,
            b,
            r#"{"new_branch_name":"dev","old_ref_name":"main"}"#
        ),
        Ok(vec![named("refs/heads/dev", Create)])
    );
    assert_eq!(
        gitea_api(RefMove::BranchCreate, b, "{}"),
        Err(PlanError::Missing("new_branch_name"))
    );
    assert_eq!(
        gitea_api(
            RefMove::BranchDelete,
            "/api/v1/repos/acme/api/branches/release/1.0",
            ""
        ),
        Ok(vec![named("refs/heads/release/1.0", Delete)])
    );
    assert_eq!(
        gitea_api(
            RefMove::BranchRename,
            "/api/v1/repos/acme/api/branches/main",
            r#"{"name":"trunk"}"#
        ),
        Ok(vec![
            named("refs/heads/main", Delete),
            named("refs/heads/trunk", Create)
        ])
    );
    assert_eq!(
        gitea_api(
            RefMove::TagCreate,
            "/api/v1/repos/acme/api/tags",
            r#"{"tag_name":"v1","target":"main"}"#
        ),
        Ok(vec![named("refs/tags/v1", Create)])
    );
    assert_eq!(
        gitea_api(RefMove::TagDelete, "/api/v1/repos/acme/api/tags/v1", ""),
        Ok(vec![
            named("refs/tags/v1", Delete),
            mv(RefSource::TagsLike("v1".into()), Delete)
        ])
    );
    assert_eq!(
        gitea_api(
            RefMove::Release,
            "/api/v1/repos/acme/api/releases",
            r#"{"tag_name":"v1"}"#
        ),
        Ok(vec![named("refs/tags/v1", Create)])
    );
    assert_eq!(
        gitea_api(
            RefMove::Release,
            "/api/v1/repos/acme/api/releases/4",
            r#"{"draft":false}"#
        ),
        Ok(vec![mv(RefSource::ReleaseTag(4), Create)])
    );
    assert_eq!(
        gitea_api(
            RefMove::UpdateBranch,
            "/api/v1/repos/acme/api/pulls/3/update",
            ""
        ),
        Ok(vec![mv(RefSource::PullHead(3), Update)])
    );
    assert_eq!(
        api(
            ForgeFlavor::Forgejo,
            RefMove::UpdateBranch,
            "/api/v1/repos/acme/api/sync_fork",
            ""
        ),
        Ok(vec![mv(RefSource::DefaultBranch, Update)])
    );
    assert_eq!(
        api(
            ForgeFlavor::Forgejo,
            RefMove::UpdateBranch,
            "/api/v1/repos/acme/api/sync_fork/dev",
            ""
        ),
        Ok(vec![named("refs/heads/dev", Update)])
    );
}

/// Found by the `route_moves` fuzz target: a path with nothing after the repository.
#[test]
fn no_path_after_the_repository_is_an_error_not_a_panic() {
    let json = JsonFields::default();
    for m in RefMove::ALL {
        for via in [Via::Web, Via::Api] {
            for flavor in [ForgeFlavor::Gitea, ForgeFlavor::Gogs] {
                let _ = plan_moves(flavor, m, via, &[], Fields::Json(&json));
            }
        }
    }
}

/// What the form binding and `FormValue` read differently is read the way the handler reads it
/// (found by review: each of these moved `main` while Gatehouse asked about another branch).
#[test]
fn fields_are_read_the_way_the_handler_reads_them() {
    let main_update = |got: Result<Vec<PlannedMove>, PlanError>| {
        let got = got.unwrap();
        assert!(
            got.iter().any(|m| m.op == Update
                && matches!(&m.source, RefSource::AnyOf(ns) if ns[0] == "refs/heads/main")),
            "{got:?}"
        );
    };
    // Another Content-Type: the binding binds nothing, so the editor commits to the path's
    // branch, whatever the query says.
    main_update(web_typed(
        RefMove::Commit,
        "/acme/api/_delete/main/README.md?commit_choice=commit-to-new-branch&new_branch_name=ok",
        Some("text/plain"),
        "",
    ));
    main_update(web_typed(
        RefMove::Commit,
        "/acme/api/_delete/main/README.md?commit_choice=commit-to-new-branch&new_branch_name=ok",
        None,
        "",
    ));
    // Multipart: the binding reads the parts alone. A new branch named only in the query is no
    // new branch there (the forge commits to the path's branch): refused as incomplete.
    let mp = Some("multipart/form-data; boundary=x");
    let part = |name: &str, v: &str| {
        format!("--x\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n")
    };
    let body = format!("{}--x--\r\n", part("commit_choice", "commit-to-new-branch"));
    assert_eq!(
        web_typed(
            RefMove::Commit,
            "/acme/api/_edit/main/x?new_branch_name=ok",
            mp,
            &body
        ),
        Err(PlanError::Missing("new_branch_name"))
    );
    // ... and a switch in the query does not make a branch a tag.
    let body = format!("{}--x--\r\n", part("new_branch_name", "v1.0"));
    assert_eq!(
        web_typed(
            RefMove::BranchCreate,
            "/acme/api/branches/_new/branch/main?create_tag=true",
            mp,
            &body
        ),
        Ok(vec![named("refs/heads/v1.0", Create)])
    );
    // A type naming both decoders is refused: the forge may bind the parts or not.
    let body = format!(
        "{}{}--x--\r\n",
        part("commit_choice", "commit-to-new-branch"),
        part("new_branch_name", "release/9")
    );
    assert!(matches!(
        web_typed(
            RefMove::Commit,
            "/acme/api/_edit/feature/README.md",
            Some("multipart/form-data; boundary=form-urlencoded"),
            &body.replace("--x", "--form-urlencoded"),
        ),
        Err(PlanError::Form(FormError::Multipart(_)))
    ));
    // The delete button: the name in the query, read by `FormValue`, whatever the body is.
    let body = format!("{}--x--\r\n", part("_csrf", "t"));
    assert_eq!(
        web_typed(
            RefMove::BranchDelete,
            "/acme/api/branches/delete?name=main",
            mp,
            &body
        ),
        Ok(vec![named("refs/heads/main", Delete)])
    );
    // Gitea 1.25 commits to a new branch when `from_base_branch` is set, whatever the choice.
    assert_eq!(
        gitea_web(
            RefMove::Commit,
            "/acme/api/_edit/main/x",
            "commit_choice=direct&from_base_branch=main&new_branch_name=release%2Fx"
        ),
        Ok(vec![named("refs/heads/release/x", Create)])
    );
    // `HEAD` that is no branch is the default branch.
    let got = gitea_web(RefMove::Commit, "/acme/api/_edit/HEAD/README.md", "").unwrap();
    assert!(
        got.contains(&mv(RefSource::DefaultBranch, Update)),
        "{got:?}"
    );
}

/// Routes of Gitea versions after the route tables' (1.23 to 1.25).
#[test]
fn later_routes_move_refs_too() {
    assert_eq!(
        gitea_web(
            RefMove::BranchRename,
            "/acme/api/branches/rename",
            "from=main&to=trunk"
        ),
        Ok(vec![
            named("refs/heads/main", Delete),
            named("refs/heads/trunk", Create)
        ])
    );
    assert_eq!(
        gitea_web(
            RefMove::UpdateBranch,
            "/acme/api/branches/merge-upstream",
            "branch=main"
        ),
        Ok(vec![named("refs/heads/main", Update)])
    );
    assert_eq!(
        gitea_api(
            RefMove::UpdateBranch,
            "/api/v1/repos/acme/api/merge-upstream",
            r#"{"branch":"main","ff_only":true}"#
        ),
        Ok(vec![named("refs/heads/main", Update)])
    );
    assert_eq!(
        gitea_api(
            RefMove::UpdateBranch,
            "/api/v1/repos/acme/api/branches/main",
            r#"{"new_commit_id":"abc"}"#
        ),
        Ok(vec![named("refs/heads/main", Update)])
    );
}

/// Gitea 1.26's `force_push` overwrites an existing new branch: that is an update of it too.
#[test]
fn a_forced_new_branch_is_an_update_too() {
    let p = "/api/v1/repos/acme/api/contents/README.md";
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            p,
            r#"{"branch":"dev","new_branch":"main","force_push":true}"#
        ),
        Ok(vec![
            named("refs/heads/main", Create),
            named("refs/heads/main", Update)
        ])
    );
    assert_eq!(
        gitea_api(
            RefMove::Commit,
            p,
            r#"{"branch":"dev","new_branch":"main","force_push":false}"#
        ),
        Ok(vec![named("refs/heads/main", Create)])
    );
}

/// Found by review: the forge strips one leading `--` from a tag it creates, finds a tag to
/// delete and a release to edit without regard to case, and reads an API body as a form when
/// its media type (any case) says so.
#[test]
fn tag_names_and_api_bodies_as_the_forge_reads_them() {
    assert_eq!(
        gitea_api(
            RefMove::TagCreate,
            "/api/v1/repos/acme/api/tags",
            r#"{"tag_name":"--v2.0"}"#
        ),
        Ok(vec![
            named("refs/tags/--v2.0", Create),
            named("refs/tags/v2.0", Create)
        ])
    );
    assert_eq!(
        gitea_web(
            RefMove::BranchCreate,
            "/acme/api/branches/_new/branch/main",
            "new_branch_name=--v2&create_tag=on"
        ),
        Ok(vec![
            named("refs/tags/--v2", Create),
            named("refs/tags/v2", Create)
        ])
    );
    assert_eq!(
        gitea_api(RefMove::TagDelete, "/api/v1/repos/acme/api/tags/V1.0", ""),
        Ok(vec![
            named("refs/tags/V1.0", Delete),
            mv(RefSource::TagsLike("V1.0".into()), Delete)
        ])
    );
    assert_eq!(
        gitea_web(RefMove::Release, "/acme/api/releases/edit/V3.0", ""),
        Ok(vec![
            named("refs/tags/V3.0", Create),
            mv(RefSource::ReleaseTagsLike("V3.0".into()), Create)
        ])
    );
    let wanted = body_fields(
        ForgeFlavor::Gitea,
        RefMove::Commit,
        Via::Api,
        &["contents", "x"],
    );
    for ct in [
        "application/x-www-form-URLENCODED; a=json",
        "Application/X-WWW-Form-Urlencoded; a=json",
        "text/plain; a=json",
        "multipart/form-data; boundary=json",
        "APPLICATION/JSON",
    ] {
        assert_eq!(
            read_route_fields(Via::Api, "POST", Some(ct), None, b"{}", wanted),
            Err(PlanError::NotJson),
            "{ct}"
        );
    }
    assert!(
        read_route_fields(
            Via::Api,
            "POST",
            Some("application/json; charset=utf-8"),
            None,
            b"{}",
            wanted
        )
        .is_ok()
    );
}
