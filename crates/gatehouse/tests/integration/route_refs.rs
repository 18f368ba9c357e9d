//! One rule, every way: "nobody but `release` moves `main` or a release tag" holds for the web
//! editor, branch and tag routes, releases, pull request merges and updates and the contents API
//! as it does for `git push`. Through a Gitea-kind gateway whose upstream is the forge STAND-IN
//! (`forge-standin.mjs`: no Gitea can be installed here), which records every request that
//! reaches it and answers the pull request, release and default-branch lookups as Gitea's API
//! does: every refused request is refused with the rule's reason and never reaches the forge;
//! its allowed twin reaches it unchanged, body and all.

use gatehouse_testkit::{ForgeStandIn, TempDir, TestGateway, raw_http_with_body};

use crate::common::{builder, denial};

const POLICY: &str = r#"
@id("instance")
permit(principal, action in [Gatehouse::Action::"web:access", Gatehouse::Action::"api:read"],
       resource is Gatehouse::Route);

@id("devs")
permit(principal in Gatehouse::Group::"dev",
       action in [Gatehouse::Action::"read", Gatehouse::Action::"repo:write",
                  Gatehouse::Action::"git:write"],
       resource in Gatehouse::Forge::"default");

@id("main-is-protected")
@reason("main_is_protected")
forbid(principal,
       action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
                  Gatehouse::Action::"ref:delete"],
       resource)
when { context.ref == "refs/heads/main" }
unless { principal in Gatehouse::Group::"release" };

@id("release-tags")
@reason("release_tags_are_for_release")
forbid(principal,
       action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
                  Gatehouse::Action::"ref:delete"],
       resource)
when { context.ref like "refs/tags/v*" }
unless { principal in Gatehouse::Group::"release" };
"#;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const MULTIPART: &str = "multipart/form-data; boundary=b0undary";

struct Forge {
    _tmp: TempDir,
    forge: ForgeStandIn,
    gw: TestGateway,
}

fn forge() -> Forge {
    let tmp = TempDir::new("route-refs");
    let forge = ForgeStandIn::start_with(
        &serde_json::json!({}),
        &serde_json::json!({
            "acme/api": {
                "default_branch": "main",
                "pulls": {
                    "7": {"base": "main", "head": "feature", "head_repo": "acme/api"},
                    "8": {"base": "dev", "head": "main", "head_repo": "Bob/API"},
                    "9": {"base": "dev", "head": "feature", "head_repo": "acme/api"},
                    "10": {"base": "dev", "head": "gone", "head_repo": null},
                },
                "releases": {"4": "v1.0", "5": "nightly"},
                "tags": ["v1.0", "nightly", "v0.9"],
            },
            "acme/new": {"default_branch": "main", "empty": true},
        }),
    );
    let token_file = tmp.path().join("forge-token");
    std::fs::write(&token_file, &forge.token).unwrap();
    let gw = builder()
        .with_upstream_url(&forge.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .extra(&format!(
            "[forge.api]\ntoken = {{ file = \"{}\" }}\ncache_ttl = \"1m\"\n",
            token_file.display()
        ))
        .start();
    Forge {
        _tmp: tmp,
        forge,
        gw,
    }
}

impl Forge {
    fn send(
        &self,
        who: &[&str],
        method: &str,
        path: &str,
        ct: &str,
        body: &str,
        id: &str,
    ) -> (u16, String) {
        let auth = format!("Bearer {}", self.gw.token(&format!("user-{id}"), who));
        let mut headers = vec![("Authorization", auth.as_str()), ("X-Request-Id", id)];
        if !ct.is_empty() {
            headers.push(("Content-Type", ct));
        }
        raw_http_with_body(self.gw.port, method, path, &headers, body.as_bytes())
    }

    /// What reached the forge with this request id.
    fn reached(&self, id: &str) -> Option<serde_json::Value> {
        self.forge
            .received()
            .into_iter()
            .find(|r| r["request_id"] == id)
    }
}

/// A ref-moving request: refused for `dev` with `reason` (nothing reaches the forge, the deny
/// is on record with the refused ref), and reaching the forge unchanged for `release`.
struct Case {
    method: &'static str,
    path: &'static str,
    ct: &'static str,
    body: &'static str,
    /// The refused ref and why.
    refused: (&'static str, &'static str),
}

#[test]
fn nobody_but_release_moves_main_or_release_tags_whichever_way_they_try() {
    let f = forge();
    let main = ("refs/heads/main", "main_is_protected");
    let v1 = ("refs/tags/v1.0", "release_tags_are_for_release");
    let cases = [
        // The web editor, upload, delete, patch and cherry-pick commit to the path's branch.
        Case {
            method: "POST",
            path: "/acme/api/_edit/main/README.md",
            ct: FORM,
            body: "_csrf=x&commit_choice=direct&content=hi",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_new/main/docs/new.md",
            ct: FORM,
            body: "commit_choice=direct",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_delete/main/README.md",
            ct: FORM,
            body: "commit_choice=direct",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_upload/main/docs",
            ct: FORM,
            body: "commit_choice=direct&files=abc",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_diffpatch/main",
            ct: FORM,
            body: "commit_choice=direct&content=diff",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_cherrypick/abcdef1234/main",
            ct: FORM,
            body: "commit_choice=direct&revert=true",
            refused: main,
        },
        // A Content-Type the form binding does not bind: the forge commits to the path's
        // branch, whatever the query asks for.
        Case {
            method: "POST",
            path: "/acme/api/_delete/main/README.md?commit_choice=commit-to-new-branch&new_branch_name=ok",
            ct: "text/plain",
            body: "",
            refused: main,
        },
        // An empty repository's editor commits to (creates) its default branch, whatever the path.
        Case {
            method: "POST",
            path: "/acme/new/_upload/feature/",
            ct: FORM,
            body: "commit_choice=direct&files=abc",
            refused: main,
        },
        Case {
            method: "PUT",
            path: "/api/v1/repos/acme/new/contents/README.md",
            ct: JSON,
            body: r#"{"content":"aGk="}"#,
            refused: main,
        },
        // "Commit to a new branch" named main is a create of main.
        Case {
            method: "POST",
            path: "/acme/api/_edit/feature/x.md",
            ct: FORM,
            body: "commit_choice=commit-to-new-branch&new_branch_name=main",
            refused: main,
        },
        // Branches and tags in the web UI.
        Case {
            method: "POST",
            path: "/acme/api/branches/_new/commit/abcdef1",
            ct: FORM,
            body: "new_branch_name=main",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/branches/_new/branch/dev",
            ct: FORM,
            body: "new_branch_name=v1.0&create_tag=on",
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/acme/api/branches/delete?name=main",
            ct: FORM,
            body: "_csrf=x",
            refused: main,
        },
        // The web UI's delete button: the name in the query, the body FormData (multipart).
        Case {
            method: "POST",
            path: "/acme/api/branches/delete?name=main",
            ct: MULTIPART,
            body: "--b0undary\r\nContent-Disposition: form-data; name=\"_csrf\"\r\n\r\nx\r\n--b0undary--\r\n",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_edit/main/README.md",
            ct: MULTIPART,
            body: "--b0undary\r\nContent-Disposition: form-data; name=\"commit_choice\"\r\n\r\ndirect\r\n--b0undary\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nhello\r\n--b0undary--\r\n",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/settings/rename_branch",
            ct: FORM,
            body: "from=main&to=trunk",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/tags/delete",
            ct: FORM,
            body: "id=4",
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/acme/api/releases/new",
            ct: FORM,
            body: "tag_name=v1.0&tag_target=dev&title=One",
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/acme/api/releases/edit/v1.0",
            ct: FORM,
            body: "title=One",
            refused: v1,
        },
        // Pull requests: the base (merge) and head (update, cleanup) come from the forge's API.
        Case {
            method: "POST",
            path: "/acme/api/pulls/7/merge",
            ct: FORM,
            body: "do=merge",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/pulls/9/merge",
            ct: FORM,
            body: "do=squash&delete_branch_after_merge=on",
            refused: ("", ""),
        },
        // The REST API.
        Case {
            method: "PUT",
            path: "/api/v1/repos/acme/api/contents/README.md",
            ct: JSON,
            body: r#"{"message":"m","content":"aGk=","branch":"main","sha":"abc"}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/contents/new.md",
            ct: JSON,
            body: r#"{"content":"aGk="}"#,
            refused: main,
        },
        Case {
            method: "DELETE",
            path: "/api/v1/repos/acme/api/contents/README.md",
            ct: JSON,
            body: r#"{"sha":"abc","branch":"main"}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/contents",
            ct: JSON,
            body: r#"{"files":[{"operation":"create","path":"a","content":"aGk="}],"branch":"feature","new_branch":"main"}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/diffpatch",
            ct: JSON,
            body: r#"{"content":"diff","branch":"main"}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/branches",
            ct: JSON,
            body: r#"{"new_branch_name":"main","old_ref_name":"dev"}"#,
            refused: main,
        },
        Case {
            method: "DELETE",
            path: "/api/v1/repos/acme/api/branches/main",
            ct: "",
            body: "",
            refused: main,
        },
        Case {
            method: "PATCH",
            path: "/api/v1/repos/acme/api/branches/main",
            ct: JSON,
            body: r#"{"name":"trunk"}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/tags",
            ct: JSON,
            body: r#"{"tag_name":"v1.0","target":"dev"}"#,
            refused: v1,
        },
        Case {
            method: "DELETE",
            path: "/api/v1/repos/acme/api/tags/v1.0",
            ct: "",
            body: "",
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/releases",
            ct: JSON,
            body: r#"{"tag_name":"v1.0","target_commitish":"dev","name":"One"}"#,
            refused: v1,
        },
        Case {
            method: "PATCH",
            path: "/api/v1/repos/acme/api/releases/4",
            ct: JSON,
            body: r#"{"draft":false}"#,
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/pulls/7/merge",
            ct: JSON,
            body: r#"{"Do":"merge","delete_branch_after_merge":false}"#,
            refused: main,
        },
        // Gitea 1.23 and later.
        Case {
            method: "POST",
            path: "/acme/api/branches/rename",
            ct: FORM,
            body: "from=main&to=trunk",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/branches/merge-upstream",
            ct: FORM,
            body: "branch=main",
            refused: main,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/merge-upstream",
            ct: JSON,
            body: r#"{"branch":"main","ff_only":true}"#,
            refused: main,
        },
        Case {
            method: "PUT",
            path: "/api/v1/repos/acme/api/branches/main",
            ct: JSON,
            body: r#"{"new_commit_id":"abc123","force":true}"#,
            refused: main,
        },
        Case {
            method: "POST",
            path: "/acme/api/_edit/feature/x.md",
            ct: FORM,
            body: "commit_choice=direct&from_base_branch=dev&new_branch_name=main",
            refused: main,
        },
        // The web UI's "update branch" of pull request 8, whose head is `main` of Bob/API.
        Case {
            method: "POST",
            path: "/acme/api/pulls/8/update",
            ct: FORM,
            body: "_csrf=x",
            refused: main,
        },
        // The forge finds a tag to delete, and a release to edit, without regard to case, and
        // strips a leading `--` from a tag it creates.
        Case {
            method: "DELETE",
            path: "/api/v1/repos/acme/api/tags/V0.9",
            ct: "",
            body: "",
            refused: ("refs/tags/v0.9", "release_tags_are_for_release"),
        },
        Case {
            method: "POST",
            path: "/acme/api/releases/edit/V1.0",
            ct: FORM,
            body: "title=One",
            refused: v1,
        },
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/tags",
            ct: JSON,
            body: r#"{"tag_name":"--v1.0","target":"dev"}"#,
            refused: v1,
        },
        // The head of pull request 8 is `main` of another repository, Bob/API.
        Case {
            method: "POST",
            path: "/api/v1/repos/acme/api/pulls/8/update",
            ct: "",
            body: "",
            refused: main,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let at = format!("{} {} {}", c.method, c.path, c.body);
        let (ref_name, reason) = c.refused;
        if !ref_name.is_empty() {
            let id = format!("rr-deny-{i}");
            let (status, raw) = f.send(&["dev"], c.method, c.path, c.ct, c.body, &id);
            assert_eq!(status, 403, "{at}: {raw}");
            assert!(raw.contains(reason), "{at}: {raw}");
            assert!(f.reached(&id).is_none(), "{at} reached the forge");
            let rec = denial(&f.gw, &at, |l| l.contains(&format!("\"{id}\"")));
            let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
            assert_eq!(rec["reason"], reason, "{at}");
            let refs = rec["refs"].as_array().expect("refs on record");
            assert!(
                refs.iter()
                    .any(|r| r["name"] == ref_name && r["decision"] == "deny"),
                "{at}: {refs:?}"
            );
        }
        // The allowed twin: the same request by release reaches the forge exactly as sent.
        let id = format!("rr-allow-{i}");
        let (status, raw) = f.send(&["dev", "release"], c.method, c.path, c.ct, c.body, &id);
        assert_eq!(status, 200, "{at}: {raw}");
        let got = f
            .reached(&id)
            .unwrap_or_else(|| panic!("{at} did not reach the forge"));
        assert_eq!(got["method"], c.method, "{at}");
        assert_eq!(got["url"], c.path, "{at}");
        assert_eq!(got["body"], c.body, "{at}");
        assert_eq!(got["user"], format!("user-{id}"), "{at}");
    }
}

#[test]
fn what_cannot_be_read_for_sure_or_looked_up_is_refused() {
    let f = forge();
    let dev = &["dev", "release"][..];
    let cases: [(&str, &str, &str, &str, u16, &str); 10] = [
        // Another spelling of `branch` that some JSON decoder of the forge would read.
        (
            "PUT",
            "/api/v1/repos/acme/api/contents/x",
            JSON,
            r#"{"branch":"feature","Branch":"main"}"#,
            400,
            "bad_ref_fields",
        ),
        // A form media type that also says `json`: the forge reads the body as a form.
        (
            "PUT",
            "/api/v1/repos/acme/api/contents/x",
            "application/x-www-form-URLENCODED; a=json",
            r#"{"branch":"feature","content":"aGk="}"#,
            400,
            "body_not_json",
        ),
        // A form on an API route is bound under other names: only JSON is read there.
        (
            "PUT",
            "/api/v1/repos/acme/api/contents/x",
            FORM,
            "branch_name=main",
            400,
            "body_not_json",
        ),
        // A field given in the body and the query.
        (
            "POST",
            "/acme/api/branches/delete?name=feature",
            FORM,
            "name=main",
            400,
            "bad_ref_fields",
        ),
        // A JSON body on a web route.
        (
            "POST",
            "/acme/api/_edit/feature/x",
            JSON,
            r#"{"CommitChoice":"direct"}"#,
            400,
            "bad_ref_fields",
        ),
        // No such pull request or release on the forge.
        (
            "POST",
            "/acme/api/pulls/99/merge",
            FORM,
            "do=merge",
            404,
            "ref_lookup_failed",
        ),
        (
            "POST",
            "/acme/api/tags/delete",
            FORM,
            "id=99",
            404,
            "ref_lookup_failed",
        ),
        // A pull request number Go would read, but not as plain digits.
        (
            "POST",
            "/acme/api/pulls/+7/merge",
            FORM,
            "do=merge",
            400,
            "bad_ref_fields",
        ),
        // A deleted branch is restored by its record's id, which the API does not resolve.
        (
            "POST",
            "/acme/api/branches/restore",
            FORM,
            "branch_id=3&name=feature",
            403,
            "ref_move_undecidable",
        ),
        // A multipart part Go would decode (quoted-printable) is refused rather than guessed at.
        (
            "POST",
            "/acme/api/branches/delete",
            MULTIPART,
            "--b0undary\r\nContent-Disposition: form-data; name=\"name\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nm=61in\r\n--b0undary--\r\n",
            400,
            "bad_ref_fields",
        ),
    ];
    for (i, (method, path, ct, body, status, code)) in cases.iter().enumerate() {
        let id = format!("rr-bad-{i}");
        let (got, raw) = f.send(dev, method, path, ct, body, &id);
        assert_eq!(got, *status, "{method} {path} {body}: {raw}");
        assert!(raw.contains(code), "{method} {path} {body}: {raw}");
        assert!(
            f.reached(&id).is_none(),
            "{method} {path} reached the forge"
        );
    }
    // A head repository that no longer exists has no branch to delete: the merge is decided on
    // its base alone.
    let (got, raw) = f.send(
        dev,
        "POST",
        "/acme/api/pulls/10/merge",
        FORM,
        "do=merge",
        "rr-gone",
    );
    assert_eq!(got, 200, "{raw}");

    // A pull request is asked afresh every time (it can be retargeted in between); a
    // repository's default branch is cached.
    let before = f.forge.calls();
    let (got, raw) = f.send(
        dev,
        "POST",
        "/acme/api/pulls/9/merge",
        FORM,
        "do=merge",
        "rr-fresh-1",
    );
    assert_eq!(got, 200, "{raw}");
    let (got, raw) = f.send(
        dev,
        "POST",
        "/acme/api/pulls/9/update",
        FORM,
        "",
        "rr-fresh-2",
    );
    assert_eq!(got, 200, "{raw}");
    assert_eq!(f.forge.calls() - before, 2);
    let before = f.forge.calls();
    for i in 0..3 {
        let id = format!("rr-cached-{i}");
        let (got, raw) = f.send(
            dev,
            "POST",
            "/acme/api/_edit/feature/x.md",
            FORM,
            "commit_choice=direct",
            &id,
        );
        assert_eq!(got, 200, "{raw}");
    }
    assert_eq!(
        f.forge.calls() - before,
        1,
        "the repository was asked more than once"
    );

    // FAULT INJECTION: the forge's API fails; what needs a lookup is refused (503), what does
    // not is decided as before.
    f.forge.fail_with(500);
    let (got, raw) = f.send(
        dev,
        "POST",
        "/acme/api/pulls/7/update",
        FORM,
        "",
        "rr-fault-1",
    );
    assert_eq!(got, 503, "{raw}");
    assert!(raw.contains("ref_lookup_failed"), "{raw}");
    assert!(f.reached("rr-fault-1").is_none());
    let (got, raw) = f.send(
        &["dev"],
        "DELETE",
        "/api/v1/repos/acme/api/branches/feature",
        "",
        "",
        "rr-fault-2",
    );
    assert_eq!(got, 200, "{raw}");
    f.forge.fail_with(0);
}

/// `gatehouse policy explain` tells the refs a route moves from its URL and body (and the
/// forge's API, with the gateway's `[forge.api]`), and each decision, as the gateway decides.
#[test]
fn policy_explain_shows_which_refs_a_route_moves_and_each_decision() {
    let f = forge();
    let explain = |groups: &[&str], method: &str, url: &str, body: Option<&str>| {
        let token = f.gw.token("erin", groups);
        let mut args = vec![
            "policy", "explain", "--token", &token, "--method", method, "--url", url,
        ];
        if let Some(b) = body {
            args.extend(["--body", b]);
        }
        let out = f.gw.cli(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = explain(
        &["dev"],
        "POST",
        "https://git.example.com/acme/api/_edit/main/docs/x.md",
        Some("commit_choice=direct"),
    );
    assert_eq!(code, Some(3), "{text}");
    for line in [
        "decision:  DENY",
        "reason:    main_is_protected",
        "via:       web",
        "moves:     refs (commit)",
        "ref:       DENY  ref:update refs/heads/main on acme/api (main_is_protected, policy main-is-protected)",
        "ref:       ALLOW ref:update refs/heads/main/docs on acme/api",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    // The new-branch choice creates the new branch only.
    let (code, text) = explain(
        &["dev"],
        "POST",
        "https://git.example.com/acme/api/_edit/main/docs/x.md",
        Some("commit_choice=commit-to-new-branch&new_branch_name=fix"),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ref:       ALLOW ref:create refs/heads/fix on acme/api"),
        "{text}"
    );
    assert!(!text.contains("refs/heads/main"), "{text}");
    // A merge's base comes from the forge's API.
    let (code, text) = explain(
        &["dev"],
        "POST",
        "https://git.example.com/api/v1/repos/acme/api/pulls/7/merge",
        Some(r#"{"Do":"merge"}"#),
    );
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("ref:       DENY  ref:update refs/heads/main on acme/api"),
        "{text}"
    );
    assert!(
        text.contains("ref:       ALLOW ref:delete refs/heads/feature on acme/api"),
        "{text}"
    );
    let (code, text) = explain(
        &["dev", "release"],
        "POST",
        "https://git.example.com/api/v1/repos/acme/api/pulls/7/merge",
        Some(r#"{"Do":"merge"}"#),
    );
    assert_eq!(code, Some(0), "{text}");
    // What the gateway would refuse unread is refused here too.
    let (code, text) = explain(
        &["dev"],
        "PUT",
        "https://git.example.com/api/v1/repos/acme/api/contents/x",
        Some(r#"{"branch":"x","Branch":"main"}"#),
    );
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("the body cannot be read"), "{text}");
}
