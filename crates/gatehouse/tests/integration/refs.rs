use gatehouse_testkit::TempDir;

use crate::common::{
    POLICY, builder, clone_demo, commit_file, denials_in, head_of, local_head, ref_of, repos,
};

pub(crate) const REF_RULES: &str = r#"
@id("tags-release-only")
@reason("tag_requires_release_group")
forbid(principal, action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update"], resource)
  when { context.ref like "refs/tags/v*" } unless { principal in Gatehouse::Group::"release" };

@id("keep-main")
@reason("main_cannot_be_deleted")
forbid(principal, action == Gatehouse::Action::"ref:delete", resource) when { context.ref == "refs/heads/main" };
"#;

fn tag_of(bare: &std::path::Path, tag: &str) -> String {
    ref_of(bare, &format!("refs/tags/{tag}"))
}

/// Per-ref push rules over HTTP, with real git clients: a refused ref is refused before anything
/// reaches the upstream, and git shows which ref and why.
#[test]
fn per_ref_rules_over_http() {
    let tmp = TempDir::new("refs");
    let (root, _) = repos(&tmp);
    let bare = root.join("demo/hello.git");
    let policy = format!("{POLICY}\n{REF_RULES}");
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(&policy)
        .start();
    let alice = gw.token("alice", &["dev"]);
    let rita = gw.token("rita", &["dev", "release"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");

    // An ordinary branch push is allowed.
    commit_file(&git, &work, "f.txt", "feature\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/feature"]);
    assert_eq!(head_of(&bare, "feature"), local_head(&git, &work));

    // A release tag by a developer is refused, with the reason git prints.
    git.ok(&work, &["tag", "v1.0"]);
    let p = git.run(&work, &["push", "origin", "v1.0"]);
    assert!(!p.ok, "tag push succeeded");
    assert!(
        p.stderr.contains("[remote rejected] v1.0 -> v1.0 (denied by Gatehouse policy: tag_requires_release_group)"),
        "{}",
        p.stderr
    );
    assert!(
        p.stderr
            .contains("remote: Gatehouse: create refs/tags/v1.0 denied by policy"),
        "{}",
        p.stderr
    );
    assert_eq!(tag_of(&bare, "v1.0"), "", "the tag reached the upstream");

    // Deleting main is refused for everyone.
    let before_main = head_of(&bare, "main");
    let d = git.run(&work, &["push", "origin", ":main"]);
    assert!(!d.ok);
    assert!(
        d.stderr
            .contains("(denied by Gatehouse policy: main_cannot_be_deleted)"),
        "{}",
        d.stderr
    );
    assert_eq!(head_of(&bare, "main"), before_main);
    // The allowed twin: an ordinary branch may be deleted.
    git.ok(&work, &["push", "-q", "origin", ":feature"]);
    assert!(
        head_of(&bare, "feature").is_empty(),
        "feature was not deleted"
    );

    // A mixed push (an allowed branch and a refused tag) is refused whole; both are reported.
    commit_file(&git, &work, "g.txt", "more\n");
    git.ok(&work, &["tag", "v2.0"]);
    let m = git.run(
        &work,
        &["push", "origin", "HEAD:refs/heads/feature2", "v2.0"],
    );
    assert!(!m.ok);
    assert!(
        m.stderr
            .contains("v2.0 -> v2.0 (denied by Gatehouse policy: tag_requires_release_group)"),
        "{}",
        m.stderr
    );
    assert!(
        m.stderr.contains("another ref in this push was refused"),
        "{}",
        m.stderr
    );
    assert_eq!(
        head_of(&bare, "feature2"),
        "",
        "part of a refused push reached the upstream"
    );
    assert_eq!(
        tag_of(&bare, "v2.0"),
        "",
        "the refused tag reached the upstream"
    );
    // Its record names both refs, the tag refused.
    let mixed = |l: &str| {
        l.contains(r#""name":"refs/heads/feature2","op":"create""#)
            && l.contains(r#""name":"refs/tags/v2.0","op":"create""#)
            && l.contains(r#""decision":"deny","reason":"tag_requires_release_group""#)
    };
    denials_in(&gw.audit_path(), "the refused mixed push", 1, mixed);
    // The same with --atomic and with push options. The upstream offers push options: to a
    // server that does not, git refuses to send them and the push never reaches the gateway.
    crate::common::offer_push_options(&bare);
    let a = git.run(
        &work,
        &[
            "push",
            "--atomic",
            "-o",
            "ci.skip",
            "origin",
            "HEAD:refs/heads/feature2",
            "v2.0",
        ],
    );
    assert!(!a.ok);
    assert!(
        a.stderr
            .contains("v2.0 -> v2.0 (denied by Gatehouse policy: tag_requires_release_group)"),
        "{}",
        a.stderr
    );
    assert_eq!(head_of(&bare, "feature2"), "");
    assert_eq!(
        tag_of(&bare, "v2.0"),
        "",
        "the refused tag reached the upstream"
    );
    // A second record of the same refusal: this push's.
    denials_in(&gw.audit_path(), "the refused atomic push", 2, mixed);

    // A member of `release` may push the tag.
    let (rgit, rwork) = clone_demo(tmp.path(), &gw.url(), &rita, "rita");
    rgit.ok(&rwork, &["tag", "v1.0"]);
    rgit.ok(&rwork, &["push", "-q", "origin", "v1.0"]);
    assert_eq!(tag_of(&bare, "v1.0"), local_head(&rgit, &rwork));

    // The audit trail names every ref update and the decision on it.
    let audit = gw.audit_when("the tag push's record", |a| {
        a.contains("\"refs\":[{\"name\":\"refs/tags/v1.0\",\"op\":\"create\"")
    });
    assert!(
        audit.contains("\"refs\":[{\"name\":\"refs/tags/v1.0\",\"op\":\"create\""),
        "{audit}"
    );
    assert!(
        audit.contains("\"decision\":\"deny\",\"reason\":\"main_cannot_be_deleted\""),
        "{audit}"
    );

    // "Which identity pushed commit X to the tag?" is one query.
    let tag_commit = local_head(&rgit, &rwork);
    let search = |args: &[&str]| {
        std::process::Command::new(crate::common::bin())
            .args(["audit", "search", &gw.audit_path().to_string_lossy()])
            .args(args)
            .output()
            .unwrap()
    };
    let by_ref = search(&["--ref", "v1.0"]);
    assert!(by_ref.status.success());
    let text = String::from_utf8_lossy(&by_ref.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the refused and the allowed push of v1.0:\n{text}"
    );
    assert!(
        lines[0].contains(" alice ") && lines[0].contains("deny (tag_requires_release_group)"),
        "{text}"
    );
    assert!(
        lines[1].contains(" rita ") && lines[1].contains("refs/tags/v1.0  create"),
        "{text}"
    );
    let by_commit = search(&["--commit", &tag_commit[..10], "--repo", "demo/hello"]);
    let text = String::from_utf8_lossy(&by_commit.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(" rita ") && text.contains("allow (allowed)"),
        "{text}"
    );
    let feature = search(&["--repo", "demo/hello", "--ref", "feature", "--json"]);
    assert!(String::from_utf8_lossy(&feature.stdout).contains("\"username\":\"alice\""));
    let none = search(&["--commit", "deadbeef"]);
    assert!(!none.status.success());
}
