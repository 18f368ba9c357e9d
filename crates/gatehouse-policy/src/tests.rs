use std::net::{IpAddr, Ipv4Addr};

use gatehouse_core::{Action, OwnerRef, Principal, PrincipalKind, RepoRef, Resource, Route, Via};

use super::*;

const POLICY: &str = r#"
@id("dev-demo")
permit(principal in Gatehouse::Group::"dev", action in [Gatehouse::Action::"git:read", Gatehouse::Action::"git:write"], resource in Gatehouse::Owner::"demo");

@id("ci-read")
permit(principal in Gatehouse::Group::"ci", action == Gatehouse::Action::"git:read", resource in Gatehouse::Owner::"demo");

@id("no-secret")
@reason("secret_repos_locked")
forbid(principal, action, resource == Gatehouse::Repo::"demo/secret");

@id("explore")
permit(principal, action == Gatehouse::Action::"web:access", resource is Gatehouse::Route) when { resource.path like "/explore/*" };
"#;

fn principal(user: &str, groups: &[&str]) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        issuer: "https://idp".into(),
        subject: user.into(),
        username: user.into(),
        display_name: None,
        email: Some(format!("{user}@example.test")),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        token_id: None,
        expires_at: None,
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    }
}

fn repo(o: &str, n: &str) -> Resource {
    Resource::Repo(RepoRef {
        owner: o.into(),
        name: n.into(),
    })
}

/// The facts of a request from 127.0.0.1 to `git.example` over Git.
fn facts(method: &str) -> RequestFacts<'_> {
    RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method,
        host: "git.example",
        wiki: false,
        via: Via::Git,
        git_ref: None,
    }
}

fn ask(engine: &PolicyEngine, p: &Principal, action: Action, r: &Resource) -> Decision {
    engine.evaluate(&AuthzRequest {
        principal: p,
        action,
        resource: r,
        facts: facts("GET"),
    })
}

fn ask_ref(
    engine: &PolicyEngine,
    p: &Principal,
    action: Action,
    r: &Resource,
    name: &str,
) -> Decision {
    let (old, new) = match action {
        Action::RefCreate => ("0".repeat(40), "1".repeat(40)),
        Action::RefDelete => ("1".repeat(40), "0".repeat(40)),
        _ => ("1".repeat(40), "2".repeat(40)),
    };
    engine.evaluate(&AuthzRequest {
        principal: p,
        action,
        resource: r,
        facts: RequestFacts {
            git_ref: Some(RefFacts {
                name,
                old: &old,
                new: &new,
            }),
            ..facts("POST")
        },
    })
}

fn engine() -> PolicyEngine {
    match PolicyEngine::new(POLICY, "default") {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn group_members_reach_their_owner() {
    let e = engine();
    let alice = principal("alice", &["dev"]);
    let d = ask(&e, &alice, Action::GitWrite, &repo("demo", "hello"));
    assert!(d.allowed);
    assert_eq!(&*d.policies, ["dev-demo".to_owned()]);
    assert_eq!(&*d.reason, "allowed");
}

#[test]
fn read_only_group_cannot_push() {
    let e = engine();
    let bot = principal("ci-bot", &["ci"]);
    assert!(ask(&e, &bot, Action::GitRead, &repo("demo", "hello")).allowed);
    let d = ask(&e, &bot, Action::GitWrite, &repo("demo", "hello"));
    assert!(!d.allowed);
    assert_eq!(&*d.reason, "no_matching_permit");
    assert_eq!(&*d.deciding_policy(), "default-deny");
}

#[test]
fn default_deny_outside_the_owner() {
    let e = engine();
    let alice = principal("alice", &["dev"]);
    assert!(!ask(&e, &alice, Action::GitRead, &repo("other", "hello")).allowed);
    // a group name that merely looks similar does not match
    assert!(
        !ask(
            &e,
            &principal("mallory", &["dev2"]),
            Action::GitRead,
            &repo("demo", "hello")
        )
        .allowed
    );
}

#[test]
fn forbid_wins_with_its_reason() {
    let e = engine();
    let alice = principal("alice", &["dev"]);
    let d = ask(&e, &alice, Action::GitRead, &repo("demo", "secret"));
    assert!(!d.allowed);
    assert_eq!(&*d.reason, "secret_repos_locked");
    assert_eq!(&*d.policies, ["no-secret".to_owned()]);
}

#[test]
fn routes() {
    let e = engine();
    let anyone = principal("bob", &[]);
    let route = |path: &str| {
        Resource::Route(Route {
            host: "git.example".into(),
            path: path.into(),
            method: "GET".into(),
        })
    };
    assert!(ask(&e, &anyone, Action::WebAccess, &route("/explore/repos")).allowed);
    assert!(!ask(&e, &anyone, Action::WebAccess, &route("/admin")).allowed);
}

/// Owners are resources of their own, repositories are in them, and the action groups and
/// `context.via` reach the web UI and API actions.
#[test]
fn owners_repositories_and_the_web_and_api_actions() {
    let src = r#"
@id("devs-work-on-acme")
permit (
  principal in Gatehouse::Group::"dev",
  action in [Gatehouse::Action::"read", Gatehouse::Action::"repo:write"],
  resource in Gatehouse::Owner::"acme"
);
@id("api-only-writes")
forbid (principal, action == Gatehouse::Action::"repo:write", resource)
unless { context.via == "api" };
@id("admins")
permit (principal in Gatehouse::Group::"admins", action in Gatehouse::Action::"admin", resource);
"#;
    let e = PolicyEngine::new(src, "default").unwrap_or_else(|e| panic!("{e}"));
    let alice = principal("alice", &["dev"]);
    let root = principal("root", &["admins"]);
    let acme = Resource::Owner(OwnerRef {
        name: "acme".into(),
    });
    let api = repo("acme", "api");
    let via = |v: Via, action: Action, p: &Principal, r: &Resource| {
        e.evaluate(&AuthzRequest {
            principal: p,
            action,
            resource: r,
            facts: RequestFacts {
                via: v,
                ..facts("POST")
            },
        })
        .allowed
    };
    assert!(via(Via::Web, Action::OwnerRead, &alice, &acme));
    assert!(via(Via::Web, Action::RepoRead, &alice, &api));
    assert!(via(Via::Api, Action::RepoWrite, &alice, &api));
    assert!(
        !via(Via::Web, Action::RepoWrite, &alice, &api),
        "context.via"
    );
    assert!(!via(Via::Web, Action::RepoAdmin, &alice, &api));
    assert!(!via(Via::Web, Action::OwnerAdmin, &alice, &acme));
    assert!(!via(
        Via::Web,
        Action::RepoRead,
        &alice,
        &repo("other", "x")
    ));
    assert!(via(Via::Web, Action::RepoAdmin, &root, &api));
    assert!(via(Via::Api, Action::OwnerAdmin, &root, &acme));
    // An API action on a repository is not in the schema any more: a policy saying so is refused.
    let old = r#"permit (principal, action == Gatehouse::Action::"api:read", resource in Gatehouse::Owner::"acme");"#;
    assert!(PolicyEngine::new(old, "default").is_err());
}

#[test]
fn service_accounts_are_principals_too() {
    let e = engine();
    let mut bot = principal("agent:reviewer", &["ci"]);
    bot.kind = PrincipalKind::Service;
    assert!(ask(&e, &bot, Action::GitRead, &repo("demo", "hello")).allowed);
}

#[test]
fn action_groups() {
    let e = match PolicyEngine::new(
        r#"permit(principal, action in Gatehouse::Action::"read", resource in Gatehouse::Owner::"pub");"#,
        "default",
    ) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let p = principal("x", &[]);
    assert!(ask(&e, &p, Action::GitRead, &repo("pub", "r")).allowed);
    assert!(ask(&e, &p, Action::LfsRead, &repo("pub", "r")).allowed);
    assert!(!ask(&e, &p, Action::GitWrite, &repo("pub", "r")).allowed);
}

#[test]
fn refusals_are_readable() {
    let err = |src: &str| match PolicyEngine::new(src, "default") {
        Ok(_) => panic!("accepted: {src}"),
        Err(e) => e.to_string(),
    };
    assert!(err("permit(principal, action, resource").contains("syntax"));
    assert!(
        err(r#"permit(principal in Gatehouse::Team::"x", action, resource);"#).contains("schema")
    );
    assert!(
        err(r#"permit(principal, action == Gatehouse::Action::"git:push", resource);"#)
            .contains("schema")
    );
    assert!(err("@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);")
        .contains("duplicate"));
}

#[test]
fn empty_policy_denies_everything() {
    let e = match PolicyEngine::new("", "default") {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    assert!(e.is_empty());
    assert!(
        !ask(
            &e,
            &principal("a", &["dev"]),
            Action::GitRead,
            &repo("demo", "hello")
        )
        .allowed
    );
}

#[test]
fn an_erring_forbid_fails_closed() {
    // Strict validation keeps most evaluation errors out, but not arithmetic overflow. Cedar skips
    // a policy whose evaluation errs; a skipped forbid would allow. Gatehouse denies instead.
    let src = r#"
@id("all")
permit(principal, action, resource);
@id("overflowing-forbid")
forbid(principal, action, resource) when { 9223372036854775807 + 1 > 0 };
"#;
    let e = match PolicyEngine::new(src, "default") {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let d = ask(&e, &principal("x", &[]), Action::GitRead, &repo("a", "b"));
    assert!(!d.allowed);
    assert_eq!(&*d.reason, "policy_evaluation_error");
}

#[test]
fn strict_validation_refuses_expressions_that_could_err_at_run_time() {
    let err = PolicyEngine::new(
        r#"forbid(principal, action, resource) when { ip(context.host).isLoopback() };"#,
        "default",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("schema"), "{err}");
}

#[test]
fn cached_decisions_follow_every_input() {
    let e = engine();
    let alice = principal("alice", &["dev"]);
    // the same question twice: same answer (the second from the cache)
    assert!(ask(&e, &alice, Action::GitWrite, &repo("demo", "hello")).allowed);
    assert!(ask(&e, &alice, Action::GitWrite, &repo("demo", "hello")).allowed);
    // any change to the principal, action or resource is a new question
    let mut moved = alice.clone();
    moved.groups = vec!["ci".into()];
    assert!(!ask(&e, &moved, Action::GitWrite, &repo("demo", "hello")).allowed);
    assert!(!ask(&e, &alice, Action::GitWrite, &repo("demo", "secret")).allowed);
    let mut bot = principal("alice", &["dev"]);
    bot.kind = PrincipalKind::Service;
    bot.issuer = "https://other-idp".into();
    assert!(ask(&e, &bot, Action::GitRead, &repo("demo", "hello")).allowed);
    // a reloaded policy is a new engine: nothing carries over
    let narrowed = match PolicyEngine::new("", "default") {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    assert!(!ask(&narrowed, &alice, Action::GitWrite, &repo("demo", "hello")).allowed);
}

#[test]
fn per_ref_rules() {
    let src = format!(
        "{POLICY}\n{}",
        r#"
@id("tags-release-only")
@reason("tag_requires_release_group")
forbid(principal, action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update"], resource)
  when { context.ref like "refs/tags/v*" } unless { principal in Gatehouse::Group::"release" };

@id("keep-main")
@reason("main_cannot_be_deleted")
forbid(principal, action == Gatehouse::Action::"ref:delete", resource) when { context.ref == "refs/heads/main" };
"#
    );
    let e = match PolicyEngine::new(&src, "default") {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let hello = repo("demo", "hello");
    let dev = principal("alice", &["dev"]);
    let releaser = principal("rita", &["dev", "release"]);
    // git:write's permit covers the ref actions (they are members of git:write)
    assert!(ask_ref(&e, &dev, Action::RefUpdate, &hello, "refs/heads/feature").allowed);
    assert!(ask_ref(&e, &dev, Action::RefCreate, &hello, "refs/heads/new").allowed);
    let d = ask_ref(&e, &dev, Action::RefCreate, &hello, "refs/tags/v1.0");
    assert!(!d.allowed);
    assert_eq!(&*d.reason, "tag_requires_release_group");
    assert!(ask_ref(&e, &releaser, Action::RefCreate, &hello, "refs/tags/v1.0").allowed);
    let d = ask_ref(&e, &releaser, Action::RefDelete, &hello, "refs/heads/main");
    assert_eq!(&*d.reason, "main_cannot_be_deleted");
    assert!(ask_ref(&e, &dev, Action::RefDelete, &hello, "refs/heads/feature").allowed);
    // ci may read but not write: no ref action either
    assert!(
        !ask_ref(
            &e,
            &principal("bot", &["ci"]),
            Action::RefUpdate,
            &hello,
            "refs/heads/x"
        )
        .allowed
    );
}

#[test]
fn a_cache_key_matches_only_the_request_it_was_made_from() {
    let alice = principal("alice", &["dev"]);
    let hello = repo("demo", "hello");
    let facts = RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: "GET",
        host: "git.example",
        wiki: false,
        via: Via::Git,
        git_ref: Some(RefFacts {
            name: "refs/heads/main",
            old: "a",
            new: "b",
        }),
    };
    let base = AuthzRequest {
        principal: &alice,
        action: Action::GitRead,
        resource: &hello,
        facts,
    };
    let key = CacheKey::new(&base);
    assert!(key.matches(&base));
    let e = engine();
    let hash = e.cache_hash(&base);
    // The credential's id and expiry are not part of the question.
    let mut renewed = alice.clone();
    renewed.token_id = Some("jti-2".into());
    renewed.expires_at = Some(42);
    let q = AuthzRequest {
        principal: &renewed,
        ..base
    };
    assert!(key.matches(&q));
    assert_eq!(e.cache_hash(&q), hash);
    // Every other field is.
    let mut principals = Vec::new();
    for change in 0..7 {
        let mut p = alice.clone();
        match change {
            0 => p.kind = PrincipalKind::Service,
            1 => p.issuer.push('x'),
            2 => p.subject.push('x'),
            3 => p.username.push('x'),
            4 => p.display_name = Some("Alice".into()),
            5 => p.email = Some("alice@example.com".into()),
            _ => p.groups.push("ops".into()),
        }
        principals.push(p);
    }
    let other = repo("demo", "other");
    let mut changed: Vec<AuthzRequest<'_>> = principals
        .iter()
        .map(|p| AuthzRequest {
            principal: p,
            ..base
        })
        .collect();
    changed.push(AuthzRequest {
        action: Action::GitWrite,
        ..base
    });
    changed.push(AuthzRequest {
        resource: &other,
        ..base
    });
    for f in [
        RequestFacts {
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            ..facts
        },
        RequestFacts {
            method: "POST",
            ..facts
        },
        RequestFacts {
            host: "git.other",
            ..facts
        },
        RequestFacts {
            wiki: true,
            ..facts
        },
        RequestFacts {
            via: Via::Web,
            ..facts
        },
        RequestFacts {
            git_ref: None,
            ..facts
        },
        RequestFacts {
            git_ref: Some(RefFacts {
                name: "refs/heads/dev",
                ..facts.git_ref.unwrap()
            }),
            ..facts
        },
        RequestFacts {
            git_ref: Some(RefFacts {
                old: "c",
                ..facts.git_ref.unwrap()
            }),
            ..facts
        },
        RequestFacts {
            git_ref: Some(RefFacts {
                new: "c",
                ..facts.git_ref.unwrap()
            }),
            ..facts
        },
    ] {
        changed.push(AuthzRequest { facts: f, ..base });
    }
    for (i, q) in changed.iter().enumerate() {
        assert!(!key.matches(q), "change {i} still matches");
        assert_ne!(e.cache_hash(q), hash, "change {i} hashes the same");
    }
}

/// `examples/policy-gitea.cedar` validates against the schema, with the eight policies that
/// docs/policy.md shows `gatehouse policy check` reporting for it.
#[test]
fn the_example_policy_validates() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy-gitea.cedar");
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let engine = PolicyEngine::new(&src, "default").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.len(), 8);
    // Only acme-release moves main or a release tag, by whichever way the ref is asked about.
    let api = repo("acme", "api");
    let dev = principal("alice", &["acme-devs"]);
    let rel = principal("rita", &["acme-devs", "acme-release"]);
    for via in [Via::Git, Via::Web, Via::Api] {
        let ask = |p: &Principal, action: Action, name: &str| {
            engine.evaluate(&AuthzRequest {
                principal: p,
                action,
                resource: &api,
                facts: RequestFacts {
                    via,
                    git_ref: Some(RefFacts {
                        name,
                        old: "",
                        new: "",
                    }),
                    ..facts("POST")
                },
            })
        };
        for action in [Action::RefCreate, Action::RefUpdate, Action::RefDelete] {
            let d = ask(&dev, action, "refs/heads/main");
            assert_eq!(&*d.reason, "main_is_protected", "{via:?} {action}");
            let d = ask(&dev, action, "refs/tags/v1.0");
            assert_eq!(
                &*d.reason, "release_tags_are_for_release",
                "{via:?} {action}"
            );
            assert!(ask(&dev, action, "refs/heads/feature").allowed);
            assert!(ask(&rel, action, "refs/heads/main").allowed);
            assert!(ask(&rel, action, "refs/tags/v1.0").allowed);
        }
    }
}

/// Every Cedar snippet docs/policy.md shows validates against the schema.
#[test]
fn the_documented_snippets_validate() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut n = 0;
    for block in doc.split("```cedar\n").skip(1) {
        let src = block.split("```").next().unwrap_or_default();
        if let Err(e) = PolicyEngine::new(src, "default") {
            panic!("a snippet in docs/policy.md does not validate: {e}\n{src}");
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} snippets found");
}

#[test]
fn token_exchange_is_decided_per_role_with_the_request_in_the_context() {
    let text = r#"
@id("ci-deploys-in-envs")
permit(principal, action == Gatehouse::Action::"token:exchange", resource == Gatehouse::Role::"deployer")
  when { principal.issuer == "https://ci" && context.environment != "" && context.lifetime <= 3600 };
@id("no-deployer-from-outside")
forbid(principal, action == Gatehouse::Action::"token:exchange", resource)
  unless { context.source_ip.isInRange(ip("10.0.0.0/8")) };
"#;
    let e = PolicyEngine::new(text, "forge").unwrap();
    let job = Principal {
        issuer: "https://ci".into(),
        kind: PrincipalKind::Service,
        ..principal("job-7", &[])
    };
    let ask = |p: &Principal, role: &str, env: Option<&str>, lifetime: i64, ip: [u8; 4]| {
        e.decide_exchange(&ExchangeRequest {
            principal: p,
            role,
            source_ip: IpAddr::V4(Ipv4Addr::from(ip)),
            host: "git.example.com",
            environment: env,
            lifetime,
        })
    };
    let d = ask(&job, "deployer", Some("env-1"), 600, [10, 1, 2, 3]);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.deciding_policy().as_ref(), "ci-deploys-in-envs");
    assert!(
        !ask(&job, "admin", Some("env-1"), 600, [10, 1, 2, 3]).allowed,
        "another role"
    );
    assert!(
        !ask(&job, "deployer", None, 600, [10, 1, 2, 3]).allowed,
        "not bound"
    );
    assert!(
        !ask(&job, "deployer", Some("env-1"), 7200, [10, 1, 2, 3]).allowed,
        "too long"
    );
    let outside = ask(&job, "deployer", Some("env-1"), 600, [192, 0, 2, 1]);
    assert!(!outside.allowed);
    assert_eq!(
        outside.deciding_policy().as_ref(),
        "no-deployer-from-outside"
    );
    let person = principal("alice", &["dev"]);
    assert!(
        !ask(&person, "deployer", Some("env-1"), 600, [10, 1, 2, 3]).allowed,
        "another issuer"
    );
    // The exchange action answers nothing else, and nothing else answers it.
    let q = AuthzRequest {
        principal: &job,
        action: Action::GitRead,
        resource: &repo("demo", "hello"),
        facts: RequestFacts {
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            method: "GET",
            host: "h",
            wiki: false,
            via: Via::Git,
            git_ref: None,
        },
    };
    assert!(!e.evaluate(&q).allowed);
}

#[test]
fn a_policy_reads_a_workloads_claims() {
    let engine = PolicyEngine::new(
        r#"
@id("deploy-job")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"git:read", resource in Gatehouse::Owner::"acme")
  when { principal has workload && principal.workload.platform == "github-actions"
         && principal.workload.repository == "acme/api" && principal.workload.ref == "refs/heads/main"
         && principal.workload.environment == "prod" && principal.workload.event != "pull_request" };
"#,
        "forge",
    )
    .unwrap();
    let job = |repository: &str, git_ref: &str, environment: &str| Principal {
        kind: PrincipalKind::Service,
        username: "github-actions:acme:api".into(),
        workload: Some(Arc::new(gatehouse_core::Workload {
            platform: "github-actions".into(),
            repository: repository.into(),
            owner: "acme".into(),
            git_ref: git_ref.into(),
            environment: environment.into(),
            event: "push".into(),
            ..Default::default()
        })),
        ..principal("job", &[])
    };
    let api = repo("acme", "api");
    assert!(
        ask(
            &engine,
            &job("acme/api", "refs/heads/main", "prod"),
            Action::GitRead,
            &api
        )
        .allowed
    );
    for (what, p) in [
        (
            "another repository",
            job("acme/web", "refs/heads/main", "prod"),
        ),
        ("another ref", job("acme/api", "refs/heads/dev", "prod")),
        (
            "another environment",
            job("acme/api", "refs/heads/main", "staging"),
        ),
        (
            "no workload",
            Principal {
                kind: PrincipalKind::Service,
                ..principal("job", &[])
            },
        ),
    ] {
        assert!(!ask(&engine, &p, Action::GitRead, &api).allowed, "{what}");
    }
}

#[test]
fn a_job_gets_the_secrets_of_its_repository_branch_and_environment_and_tags_narrow_them() {
    let engine = PolicyEngine::new(
        r#"
@id("job-secrets")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && principal.workload.repository == "acme/api"
         && principal.workload.ref == "refs/heads/main" && principal.workload.environment == "prod"
         && resource.path like "prod/acme/api/*" };

@id("no-break-glass")
forbid(principal, action, resource is Gatehouse::Secret)
  when { resource.hasTag("break-glass") && resource.getTag("break-glass") == "true" };

@id("payments-team")
permit(principal in Gatehouse::Group::"payments", action in [Gatehouse::Action::"secret:get", Gatehouse::Action::"secret:put"], resource is Gatehouse::Secret)
  when { resource.hasTag("team") && resource.getTag("team") == "payments" };
"#,
        "forge",
    )
    .unwrap();
    let job = |environment: &str| Principal {
        kind: PrincipalKind::Service,
        username: "github-actions:acme:api".into(),
        workload: Some(Arc::new(gatehouse_core::Workload {
            platform: "github-actions".into(),
            repository: "acme/api".into(),
            git_ref: "refs/heads/main".into(),
            environment: environment.into(),
            ..Default::default()
        })),
        ..principal("job", &[])
    };
    let ask = |p: &Principal, action: AdminAction, path: &str, tags: &[(&str, &str)]| {
        let tags: std::collections::BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        engine
            .decide_admin(&AdminRequest {
                principal: p,
                action,
                resource: AdminResource::Secret {
                    path,
                    tags: &tags,
                    provenance: &Provenance::default(),
                },
                source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                method: "GET",
                host: "git.example",
            })
            .allowed
    };
    let get = AdminAction::SecretGet;
    assert!(ask(&job("prod"), get, "prod/acme/api/db-password", &[]));
    assert!(
        !ask(&job("staging"), get, "prod/acme/api/db-password", &[]),
        "another environment"
    );
    assert!(
        !ask(&job("prod"), get, "prod/acme/web/db-password", &[]),
        "another repository's"
    );
    assert!(
        !ask(
            &job("prod"),
            AdminAction::SecretPut,
            "prod/acme/api/db-password",
            &[]
        ),
        "read only"
    );
    assert!(
        !ask(
            &job("prod"),
            get,
            "prod/acme/api/root",
            &[("break-glass", "true")]
        ),
        "tag forbids"
    );
    let alice = principal("alice", &["payments"]);
    assert!(ask(&alice, get, "any/path", &[("team", "payments")]));
    assert!(!ask(&alice, get, "any/path", &[("team", "search")]));
    assert!(!ask(&alice, get, "any/path", &[]));
}

#[test]
fn a_provenance_policy_gives_secrets_only_to_a_commit_pushed_through_gatehouse() {
    let engine = PolicyEngine::new(
        r#"
@id("job-secrets")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { principal has workload && resource.path like "prod/*" };

@id("pushed-through-gatehouse")
forbid(principal, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { resource.path like "prod/*" } unless { context.provenance.pushed };

@id("not-by-a-bot")
forbid(principal, action == Gatehouse::Action::"secret:get", resource is Gatehouse::Secret)
  when { context.provenance.checked && context.provenance.pushed_by == "mallory" };
"#,
        "forge",
    )
    .unwrap();
    let job = Principal {
        kind: PrincipalKind::Service,
        workload: Some(Arc::new(gatehouse_core::Workload {
            platform: "github-actions".into(),
            repository: "acme/api".into(),
            git_ref: "refs/heads/main".into(),
            commit: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            ..Default::default()
        })),
        ..principal("job", &[])
    };
    let tags = std::collections::BTreeMap::new();
    let ask = |p: &Provenance| {
        let d = engine.decide_admin(&AdminRequest {
            principal: &job,
            action: AdminAction::SecretGet,
            resource: AdminResource::Secret {
                path: "prod/acme/api/db",
                tags: &tags,
                provenance: p,
            },
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            method: "GET",
            host: "git.example",
        });
        (d.allowed, d.deciding_policy().to_string())
    };
    let pushed = |by: &str| Provenance {
        checked: true,
        pushed: Some((by.to_owned(), 1_800_000_000, 42)),
    };
    assert_eq!(ask(&pushed("alice")), (true, "job-secrets".into()));
    let never = Provenance {
        checked: true,
        pushed: None,
    };
    assert_eq!(ask(&never), (false, "pushed-through-gatehouse".into()));
    assert_eq!(
        ask(&Provenance::default()),
        (false, "pushed-through-gatehouse".into())
    );
    assert_eq!(ask(&pushed("mallory")), (false, "not-by-a-bot".into()));
}

#[test]
fn each_problem_is_placed_at_its_line_and_column() {
    // A syntax error on line 3, in the third column of `permit(principal, action resource)`.
    let syntax =
        "@id(\"a\")\npermit(principal, action, resource);\nforbid(principal, action resource);\n";
    let e = PolicyEngine::new(syntax, "default").err().unwrap();
    let p = e.problems();
    assert!(matches!(e, PolicyError::Parse(_)), "{e}");
    assert_eq!(p[0].line, 3, "{e}");
    assert!(p[0].column > 1, "{e}");
    // A validation error: an attribute the schema lacks, on line 5, at `principal.tema`.
    let invalid = "@id(\"ok\")\npermit(principal, action, resource);\n\n@id(\"typo\")\npermit(principal, action == Gatehouse::Action::\"git:read\", resource) when { principal.tema == \"x\" };\n";
    let e = PolicyEngine::new(invalid, "default").err().unwrap();
    assert!(matches!(e, PolicyError::Validation(_)), "{e}");
    let p = e.problems();
    assert!(!p.is_empty(), "{e}");
    let line5 = invalid.lines().nth(4).unwrap();
    let at = line5.find("principal.tema").unwrap() + 1;
    for p in &p {
        assert_eq!((p.line, p.column), (5, at), "{e}");
        assert!(p.message.contains("tema"), "{e}");
    }
    // Columns count characters, not bytes.
    assert_eq!(line_column("é\nab", 4), (2, 2));
    assert_eq!(line_column("éa", 2), (1, 2));
}
