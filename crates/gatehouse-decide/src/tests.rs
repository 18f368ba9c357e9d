use std::net::{IpAddr, Ipv4Addr};

use gatehouse_authn::{OwnIssuer, TokenRequest, generate_signing_key_pem};
use gatehouse_config::Config;
use gatehouse_core::{Action, Clock, ManualClock, PrincipalKind, Redacted, Via};
use gatehouse_git::classify;

use super::*;

const POLICY: &str = r#"
@id("devs")
permit(principal in Gatehouse::Group::"dev", action in Gatehouse::Action::"write",
       resource in Gatehouse::Forge::"default");

@id("main")
@reason("main_is_protected")
forbid(principal,
       action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
                  Gatehouse::Action::"ref:delete"],
       resource)
when { context.ref == "refs/heads/main" }
unless { principal in Gatehouse::Group::"release" };
"#;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:3000"
[tokens]
signing_key = { file = "unused.pem" }
[policy]
file = "policy.cedar"
[audit]
file = "audit.log"
"#;

fn now() -> i64 {
    gatehouse_core::SystemClock.now().as_secs()
}

/// A core over Gatehouse's own issuer and [`POLICY`], and a token of `groups` from it.
fn core(groups: &[&str]) -> (Decider, Credential) {
    let cfg = Config::parse(CONFIG, std::path::Path::new("."), "test.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    let pem = Redacted::new(generate_signing_key_pem().unwrap_or_else(|e| panic!("{e}")));
    let own = Arc::new(OwnIssuer::new(&cfg.tokens, &pem).unwrap_or_else(|e| panic!("{e}")));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now()));
    let (token, _) = own
        .issue(
            &TokenRequest {
                subject: "alice".into(),
                username: None,
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ttl: None,
                name: None,
                email: None,
                kind: PrincipalKind::User,
                environment: None,
                derived_from: Vec::new(),
                workload: None,
            },
            now(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let authn =
        Arc::new(Authenticator::new(&cfg.issuers, own, clock).unwrap_or_else(|e| panic!("{e}")));
    let policy = PolicyEngine::new(POLICY, "default").unwrap_or_else(|e| panic!("{e}"));
    let d = Decider::new(
        authn,
        Arc::new(ArcSwap::from_pointee(policy)),
        ForgeFlavor::Gitea,
    );
    (d, Credential::Bearer(token))
}

fn facts(method: &str) -> RequestFacts<'_> {
    RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method,
        host: "git.example",
        wiki: false,
        via: Via::Web,
        git_ref: None,
    }
}

async fn refs_of(groups: &[&str], method: &str, path: &str, body: &str) -> RefVerdict {
    let (d, cred) = core(groups);
    let p = d.caller(&cred).await.unwrap_or_else(|e| panic!("{e}"));
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let c = classify(ForgeFlavor::Gitea, method, "git.example", path, query)
        .unwrap_or_else(|e| panic!("{e}"));
    let m = c.moves.unwrap_or_else(|| panic!("{path} moves no refs"));
    d.route_refs(
        &p,
        &c,
        m,
        RouteRequest {
            method,
            content_type: Some("application/x-www-form-urlencoded"),
            body: body.as_bytes(),
        },
        facts(method),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_caller_is_named_and_decided_once_for_every_front_door() {
    let (d, cred) = core(&["dev"]);
    let p = d.caller(&cred).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.username, "alice");
    let c = classify(
        ForgeFlavor::Gitea,
        "POST",
        "git.example",
        "/acme/api/git-receive-pack",
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q = AuthzRequest {
        principal: &p,
        action: c.action,
        resource: &c.resource,
        facts: facts("POST"),
    };
    assert!(d.decide(&q).allowed);
    assert_eq!(d.explain(&q).decision.allowed, d.decide(&q).allowed);
    assert_eq!(c.action, Action::GitWrite);
    // A bad credential is the authenticator's refusal.
    let bad = Credential::Bearer(Redacted::new("x.y.z".into()));
    assert!(matches!(d.caller(&bad).await, Err(CallerError::Authn(_))));
}

#[tokio::test]
async fn a_route_that_moves_main_is_refused_ref_by_ref() {
    let v = refs_of(&["dev"], "POST", "/acme/api/branches/delete?name=main", "").await;
    // The name is in the (forwarded) query, which the core reads with the body.
    let denied = v.first_denial().unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(
        (denied.name.as_str(), denied.op),
        ("refs/heads/main", RefOp::Delete)
    );
    let v = refs_of(
        &["dev"],
        "POST",
        "/acme/api/settings/rename_branch",
        "from=main&to=trunk",
    )
    .await;
    let denied = v.first_denial().unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(denied.name, "refs/heads/main");
    assert_eq!(denied.op, RefOp::Delete);
    assert_eq!(&*denied.decision.reason, "main_is_protected");
    assert_eq!(v.refs.len(), 2);
    let v = refs_of(
        &["dev", "release"],
        "POST",
        "/acme/api/settings/rename_branch",
        "from=main&to=trunk",
    )
    .await;
    assert!(v.first_denial().is_none(), "{v:?}");
}

#[tokio::test]
async fn what_only_the_forge_knows_fails_closed_without_its_api() {
    let (d, cred) = core(&["dev"]);
    let p = d.caller(&cred).await.unwrap_or_else(|e| panic!("{e}"));
    let c = classify(
        ForgeFlavor::Gitea,
        "POST",
        "git.example",
        "/acme/api/pulls/7/merge",
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let m = c.moves.unwrap_or_else(|| panic!("no moves"));
    assert!(d.route_body_needed(&c, m));
    let r = d
        .route_refs(
            &p,
            &c,
            m,
            RouteRequest {
                method: "POST",
                content_type: Some("application/x-www-form-urlencoded"),
                body: b"do=merge",
            },
            facts("POST"),
        )
        .await;
    assert!(matches!(r, Err(RouteRefsError::Lookup(_))), "{r:?}");
    // A field the binding and FormValue read differently is the plan's refusal.
    let c = classify(
        ForgeFlavor::Gitea,
        "POST",
        "git.example",
        "/acme/api/branches/_new/branch/main",
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = d
        .route_refs(
            &p,
            &c,
            RefMove::BranchCreate,
            RouteRequest {
                method: "POST",
                content_type: Some("application/x-www-form-urlencoded"),
                body: b"new_branch_name=a&new_branch_name=b",
            },
            facts("POST"),
        )
        .await;
    assert!(matches!(r, Err(RouteRefsError::Plan(_))), "{r:?}");
}
