//! The whole forge, not only Git: through a Gitea-kind gateway in front of nginx, a repository's
//! web pages and REST API are that repository in every spelling the forge folds, administration
//! is its own action, `context.via` tells the web UI from the API, and a repository named only by
//! number is refused. Every refusal has its allowed twin, never reaches the upstream and is on
//! record.

use gatehouse_testkit::{GitHttpServer, TempDir, TestGateway, raw_http};

use crate::common::{builder, denial, repos};

const FORGE_POLICY: &str = r#"
@id("instance")
permit(principal, action in [Gatehouse::Action::"web:access", Gatehouse::Action::"api:read"],
       resource is Gatehouse::Route);

@id("devs-work")
permit(principal in Gatehouse::Group::"dev",
       action in [Gatehouse::Action::"read", Gatehouse::Action::"repo:write"],
       resource in Gatehouse::Forge::"default");

@id("api-writes-only")
@reason("writes_through_the_api_only")
forbid(principal in Gatehouse::Group::"api-only", action == Gatehouse::Action::"repo:write",
       resource)
unless { context.via == "api" };

@id("admins")
permit(principal in Gatehouse::Group::"admins", action in Gatehouse::Action::"admin",
       resource in Gatehouse::Forge::"default");

@id("hello-viewers")
permit(principal in Gatehouse::Group::"viewers", action == Gatehouse::Action::"repo:read",
       resource == Gatehouse::Repo::"demo/hello");

@id("secret-closed")
@reason("restricted_repository")
forbid(principal, action, resource == Gatehouse::Repo::"secret/repo")
unless { principal in Gatehouse::Group::"security" };
"#;

/// A Gitea-kind gateway with [`FORGE_POLICY`] in front of nginx serving demo/hello and secret/repo.
fn forge_gateway(tag: &str) -> (TempDir, GitHttpServer, TestGateway) {
    let tmp = TempDir::new(tag);
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(FORGE_POLICY)
        .start();
    (tmp, upstream, gw)
}

#[test]
fn web_pages_and_api_routes_are_decided_on_their_repository() {
    let (_tmp, upstream, gw) = forge_gateway("forge-routes");
    let bearer = |sub: &str, groups: &[&str]| format!("Bearer {}", gw.token(sub, groups));
    let alice = bearer("alice", &["dev"]);
    let sec = bearer("sam", &["dev", "security"]);
    let root_user = bearer("root", &["dev", "admins"]);
    let api_only = bearer("bot", &["dev", "api-only"]);
    let ask = |method: &str, path: &str, auth: &str, id: &str| {
        raw_http(
            gw.port,
            method,
            path,
            &[
                ("Authorization", auth),
                ("X-Request-Id", id),
                ("Content-Length", "0"),
            ],
        )
    };

    // Every spelling of the closed repository that Gitea folds onto it is refused...
    for (i, (m, p)) in [
        ("GET", "/secret/repo.git/archive/main.zip"),
        ("GET", "/secret/repo.rss"),
        ("GET", "/Secret/Repo.atom"),
        ("GET", "/SECRET/repo/raw/branch/main/README.md"),
        ("GET", "/secret/repo.git/objects/info/commit-graph"),
        ("GET", "/api/v1/repos/Secret/REPO/contents/README.md"),
        ("POST", "/secret/repo/issues/new"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("closed-{i}");
        let (s, raw) = ask(m, p, &alice, &id);
        assert_eq!(s, 403, "{m} {p}: {raw}");
        assert!(raw.contains("restricted_repository"), "{m} {p}: {raw}");
        let rid = format!(r#""request_id":"{id}""#);
        let rec = denial(&gw, p, |l| l.contains(&rid));
        assert!(rec.contains(r#""repo":"secret/repo""#), "{rec}");
        // ...and its allowed twin: the same route for the security team.
        let (s, raw) = ask(m, p, &sec, &format!("twin-{i}"));
        assert_ne!(s, 403, "{m} {p} for the security team: {raw}");
    }
    // A route no Gitea version registers is still the repository's, never a free route.
    let (s, _) = ask(
        "GET",
        "/secret/repo/-/no/such/page",
        &alice,
        "unknown-route",
    );
    assert_eq!(s, 403);

    // Twins: administration is its own action (refused to a developer, allowed to an
    // administrator), and `context.via` tells the API from the web UI (the API-only identity
    // writes an issue over the API, not through the web UI).
    for (m, p, refused, allowed, reason) in [
        (
            "POST",
            "/demo/hello/settings/hooks/gitea/new",
            (&alice, "admin-by-dev"),
            (&root_user, "admin-by-admin"),
            "no_matching_permit",
        ),
        (
            "DELETE",
            "/api/v1/repos/demo/hello",
            (&alice, "api-delete-by-dev"),
            (&root_user, "api-delete-by-admin"),
            "no_matching_permit",
        ),
        (
            "POST",
            "/demo/hello/issues/new",
            (&api_only, "via-web"),
            (&alice, "web-issue"),
            "writes_through_the_api_only",
        ),
    ] {
        let (s, raw) = ask(m, p, refused.0, refused.1);
        assert_eq!(s, 403, "{m} {p}: {raw}");
        assert!(raw.contains(reason), "{m} {p}: {raw}");
        let id = format!(r#""request_id":"{}""#, refused.1);
        denial(&gw, p, |l| l.contains(&id));
        let (s, raw) = ask(m, p, allowed.0, allowed.1);
        assert_ne!(s, 403, "{m} {p}: {raw}");
    }
    let (s, raw) = ask(
        "POST",
        "/api/v1/repos/demo/hello/issues",
        &api_only,
        "via-api",
    );
    assert_eq!(s, 201, "the API-only identity over the API: {raw}");
    let rec = denial(&gw, "the refused administration", |l| {
        l.contains(r#""request_id":"admin-by-dev""#)
    });
    assert!(rec.contains(r#""action":"repo:admin""#), "{rec}");

    // A repository named only by its number cannot be decided: refused, on record.
    let (s, raw) = ask("GET", "/api/v1/repositories/1", &root_user, "by-number");
    assert_eq!(s, 403, "{raw}");
    assert!(raw.contains("repository_named_by_number"), "{raw}");
    denial(&gw, "the numbered repository", |l| {
        l.contains(r#""request_id":"by-number""#) && l.contains("repository_named_by_number")
    });

    // None of the refused writes reached the forge; the allowed ones did.
    let writes = upstream.writes_through("via-api");
    for id in ["closed-6", "admin-by-dev", "api-delete-by-dev", "via-web"] {
        assert!(
            !writes.iter().any(|w| w.starts_with(&format!("{id} "))),
            "{id} reached the upstream: {writes:?}"
        );
    }
    for id in ["admin-by-admin", "api-delete-by-admin", "twin-6"] {
        assert!(
            writes.iter().any(|w| w.starts_with(&format!("{id} "))),
            "{id} did not reach the upstream: {writes:?}"
        );
    }
    // The path goes upstream as it came.
    assert!(
        writes
            .iter()
            .any(|w| w == "twin-6 POST /secret/repo/issues/new"),
        "{writes:?}"
    );
}

/// The who-am-I page says what a caller may do with each listed repository in the web UI and API
/// as well as over Git.
#[test]
fn who_am_i_lists_web_and_api_access_per_repository() {
    let (_tmp, _upstream, gw) = forge_gateway("forge-whoami");
    let whoami = |sub: &str, groups: &[&str]| -> serde_json::Value {
        let auth = format!("Bearer {}", gw.token(sub, groups));
        let (s, raw) = raw_http(
            gw.port,
            "GET",
            "/.gatehouse/",
            &[("Authorization", &auth), ("Accept", "application/json")],
        );
        assert_eq!(s, 200, "{raw}");
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap()
    };
    let hello = |doc: &serde_json::Value| -> serde_json::Value {
        doc["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["repo"] == "demo/hello")
            .cloned()
            .unwrap_or_else(|| panic!("demo/hello is not listed: {doc}"))
    };
    let dev = whoami("alice", &["dev"]);
    let h = hello(&dev);
    assert_eq!(h["read"], true, "{h}");
    assert_eq!(
        h["web"],
        serde_json::json!({"view": true, "work": true, "administer": false}),
        "{h}"
    );
    // The closed repository is not listed for a developer.
    assert!(
        !dev["repositories"].to_string().contains("secret/repo"),
        "{dev}"
    );
    let admin = whoami("root", &["dev", "admins"]);
    assert_eq!(hello(&admin)["web"]["administer"], true, "{admin}");
}

/// `gatehouse policy explain` shows the classification: resource, action, via and the ref move.
#[test]
fn policy_explain_shows_what_a_web_route_does() {
    let (_tmp, _upstream, gw) = forge_gateway("forge-explain");
    let token = gw.token("alice", &["dev"]);
    let out = gw.cli(&[
        "policy",
        "explain",
        "--token",
        &token,
        "--method",
        "POST",
        "--url",
        "https://git.example.com/Demo/Hello/_edit/main/README.md",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    for line in [
        "action:    Gatehouse::Action::\"git:write\"",
        "resource:  Gatehouse::Repo::\"demo/hello\"",
        "via:       web",
        "moves:     refs (commit)",
        "forwarded: /Demo/Hello/_edit/main/README.md",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    let out = gw.cli(&[
        "policy",
        "explain",
        "--token",
        &token,
        "--url",
        "https://git.example.com/org/acme/settings",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("resource:  Gatehouse::Owner::\"acme\"")
            && text.contains("action:    Gatehouse::Action::\"owner:admin\""),
        "{text}"
    );
}
