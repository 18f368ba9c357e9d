//! Forge organisations and teams as groups. The forge API here is a STAND-IN
//! (`gatehouse_testkit::ForgeStandIn`): no Gitea or Forgejo can be installed from this machine's
//! registries. It answers like Gitea's `/api/v1/user/orgs` and `/api/v1/user/teams` with `Sudo`.

use gatehouse_testkit::{ForgeStandIn, TempDir, TestGateway, raw_http};

use crate::common::{builder, clone_demo, commit_file, denial, head_of, repos};

const POLICY: &str = r#"
@id("everyone-reads")
permit(principal, action == Gatehouse::Action::"git:read", resource in Gatehouse::Owner::"demo");

@id("release-team-pushes")
permit(principal in Gatehouse::Group::"forge:acme/release",
       action in [Gatehouse::Action::"git:write"], resource in Gatehouse::Owner::"demo");
"#;

/// The repositories in `tmp`, the forge stand-in with `users`, and a Gitea-kind gateway over the
/// built-in upstream that takes groups from it, caching them for `ttl`.
fn forge_groups_gateway(
    tmp: &TempDir,
    users: &serde_json::Value,
    ttl: &str,
) -> (std::path::PathBuf, ForgeStandIn, TestGateway) {
    let (root, _) = repos(tmp);
    let forge = ForgeStandIn::start(users);
    let token_file = tmp.path().join("forge-token");
    std::fs::write(&token_file, &forge.token).unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .forge_kind("gitea")
        .policy(POLICY)
        .extra(&format!(
            "[forge.groups]\napi_url = \"{}\"\ntoken = {{ file = \"{}\" }}\ncache_ttl = \"{ttl}\"\n",
            forge.url(),
            token_file.display()
        ))
        .start();
    (root, forge, gw)
}

fn who(port: u16, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    raw_http(
        port,
        "GET",
        "/.gatehouse/",
        &[("Authorization", &auth), ("Accept", "application/json")],
    )
}

#[test]
fn team_membership_on_the_forge_opens_a_push_and_outages_fail_closed() {
    let tmp = TempDir::new("forge-groups");
    let (root, forge, gw) = forge_groups_gateway(
        &tmp,
        &serde_json::json!({
            "alice": {"orgs": ["acme"], "teams": [["acme", "release"]]},
            "bob": {"orgs": ["acme"], "teams": [["acme", "readers"]]},
            "dave": {"orgs": ["acme"], "teams": [["acme", "release"]]},
        }),
        "1h",
    );
    let alice = gw.token("alice", &[]);
    let bob = gw.token("bob", &[]);

    // Alice's team on the forge lets her push; Bob's does not.
    let (status, body) = who(gw.port, &alice);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"forge:acme\"") && body.contains("\"forge:acme/release\""),
        "{body}"
    );
    let calls = forge.calls();
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");
    commit_file(&git, &work, "team.txt", "pushed as a release team member\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/team"]);
    assert!(!head_of(&root.join("demo/hello.git"), "team").is_empty());
    assert_eq!(forge.calls(), calls, "cached groups were asked for again");

    let (git, work) = clone_demo(tmp.path(), &gw.url(), &bob, "bob");
    commit_file(&git, &work, "bob.txt", "not a release team member\n");
    let r = git.run(&work, &["push", "origin", "HEAD:refs/heads/bob"]);
    assert!(!r.ok, "bob pushed");
    assert!(
        r.stderr
            .contains("git:write on demo/hello denied by policy"),
        "{}",
        r.stderr
    );
    assert!(
        head_of(&root.join("demo/hello.git"), "bob").is_empty(),
        "bob's branch reached the upstream"
    );
    let record = denial(&gw, "bob's refused push", |l| {
        l.contains(r#""path":"/demo/hello.git/info/refs","action":"git:write","repo":"demo/hello""#)
            && l.contains(r#""subject":"bob""#)
    });
    assert!(
        record.contains(r#""reason":"no_matching_permit""#),
        "{record}"
    );

    // `policy explain` asks the forge too: the same decision as the gateway's (it used to
    // skip the forge's groups and deny what the gateway allows).
    let explain = |token: &str| {
        let out = gw.cli(&[
            "policy",
            "explain",
            "--token",
            token,
            "--method",
            "POST",
            "--url",
            "https://git.example.com/demo/hello.git/git-receive-pack",
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = explain(&alice);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("forge:acme/release") && text.contains("release-team-pushes"),
        "{text}"
    );
    let (code, text) = explain(&bob);
    assert_eq!(code, Some(3), "{text}");

    // A user the forge does not know gets no forge groups (and is not refused for it).
    let carol = gw.token("carol", &[]);
    let (status, body) = who(gw.port, &carol);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("forge:"), "{body}");

    // The forge fails: a caller whose groups are not cached is refused (503, fail closed);
    // Alice's cached answer still serves.
    forge.fail_with(500);
    let dave = gw.token("dave", &[]);
    let (status, body) = who(gw.port, &dave);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("forge_groups_unavailable"), "{body}");
    let (status, _) = who(gw.port, &alice);
    assert_eq!(status, 200);
    forge.fail_with(0);
    let (status, body) = who(gw.port, &dave);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"forge:acme/release\""), "{body}");

    // The audit record carries the forge groups the decision used.
    gw.audit_when("a record with the forge groups", |a| {
        a.contains("forge:acme/release")
    });
}

/// A short `cache_ttl` through a forge outage, on git routes: once alice's cached groups have
/// expired and the forge fails, her push is refused (fail closed), nothing reaches the upstream
/// and the refusal is recorded; the forge back, the same push goes through.
#[test]
fn expired_forge_groups_during_an_outage_refuse_a_push_until_the_forge_is_back() {
    let tmp = TempDir::new("forge-groups-ttl");
    let (root, forge, gw) = forge_groups_gateway(
        &tmp,
        &serde_json::json!({
            "alice": {"orgs": ["acme"], "teams": [["acme", "release"]]},
        }),
        "1s",
    );
    let alice = gw.token("alice", &[]);
    let bare = root.join("demo/hello.git");
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");
    commit_file(&git, &work, "one.txt", "while the forge answers\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/one"]);
    assert!(!head_of(&bare, "one").is_empty());

    // The forge fails and the cached answer expires (cache_ttl 1 s): a fetch (a git route) shows
    // when the gateway has asked the forge again and failed.
    forge.fail_with(500);
    gatehouse_testkit::wait_for(
        "a git request refused for want of forge groups",
        std::time::Duration::from_secs(10),
        || (!git.run(&work, &["ls-remote", "origin"]).ok).then_some(()),
    );
    commit_file(&git, &work, "two.txt", "during the outage\n");
    let r = git.run(&work, &["push", "origin", "HEAD:refs/heads/two"]);
    assert!(!r.ok, "pushed during the outage");
    assert!(
        r.stderr.contains("forge_groups_unavailable") || r.stderr.contains("503"),
        "{}",
        r.stderr
    );
    assert!(head_of(&bare, "two").is_empty(), "pushed during the outage");
    gw.audit_when("the refusal's record", |a| {
        a.contains("\"reason\":\"forge_groups_unavailable\"")
    });

    // The forge answers again: the same push goes through.
    forge.fail_with(0);
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/two"]);
    assert!(!head_of(&bare, "two").is_empty());
}
