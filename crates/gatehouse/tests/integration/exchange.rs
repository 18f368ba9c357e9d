//! Just-in-time credentials: RFC 8693 token exchange at `/.gatehouse/token` for a subject token
//! signed by the real IdP's keys (as a CI system's OIDC token would be), bound to an environment
//! that `gatehouse env end` tears down.

use std::time::{Duration, Instant};

use gatehouse_testkit::{Idp, TempDir, TestGateway, raw_http};
use serde_json::{Value, json};

use crate::common::{POLICY, builder, repos};

const REFS: &str = "/demo/hello.git/info/refs?service=git-upload-pack";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// alice may have role `dev` in an environment, for an hour at most; nobody gets `admin`.
const EXCHANGE_POLICY: &str = r#"
@id("jit-dev")
permit(principal, action == Gatehouse::Action::"token:exchange", resource == Gatehouse::Role::"dev")
  when { principal.username == "alice" && context.environment != "" && context.lifetime <= 3600 };
"#;

async fn exchange(gw: &TestGateway, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/.gatehouse/token", gw.url()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    (status, r.json().await.unwrap_or(Value::Null))
}

fn cli_ok(gw: &TestGateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(
        out.status.success(),
        "gatehouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn get(gw: &TestGateway, token: &str) -> (u16, String) {
    raw_http(
        gw.port,
        "GET",
        REFS,
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_works_until_its_environment_ends() {
    let tmp = TempDir::new("exchange");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp(idp)
        .policy(&format!("{POLICY}\n{EXCHANGE_POLICY}"))
        .start();
    let t = now();
    let subject = |over: Value| {
        let mut c = json!({"iss": idp.issuer(), "sub": "alice", "aud": "gatehouse", "iat": t,
                           "exp": t + 600, "preferred_username": "alice", "groups": []});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let alice = idp.sign(subject(json!({})), "RS256", None).await;
    // Nobody's groups make alice a developer: without the exchange she reads nothing.
    assert_eq!(get(&gw, &alice).0, 403);

    let env = cli_ok(
        &gw,
        &["env", "create", "--name", "review-42", "--ttl", "2h"],
    );
    assert!(env.starts_with("env-"), "{env}");
    let form = |token: &str, scope: &str, env: &str| -> Vec<(String, String)> {
        let mut f = vec![
            ("grant_type".to_owned(), GRANT.to_owned()),
            ("subject_token".to_owned(), token.to_owned()),
            ("subject_token_type".to_owned(), JWT.to_owned()),
            ("scope".to_owned(), scope.to_owned()),
        ];
        if !env.is_empty() {
            f.push(("environment".to_owned(), env.to_owned()));
        }
        f
    };
    let ask = |f: Vec<(String, String)>| {
        let gw = &gw;
        async move {
            let pairs: Vec<(&str, &str)> =
                f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            exchange(gw, &pairs).await
        }
    };

    let (status, doc) = ask(form(&alice, "dev", &env)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["token_type"], "Bearer");
    assert_eq!(
        doc["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(doc["scope"], "dev");
    let expires_in = doc["expires_in"].as_i64().unwrap();
    assert!(
        (1..=600).contains(&expires_in),
        "never past the subject token: {expires_in}"
    );
    let jit = doc["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&gw, &jit).0, 200, "the role opens the repository");

    // Refusals, each with its RFC 6749 / RFC 8693 code.
    let short = idp
        .sign(subject(json!({"exp": t + 120})), "RS256", None)
        .await;
    let (_, doc) = ask(form(&short, "dev", &env)).await;
    assert!(doc["expires_in"].as_i64().unwrap() <= 120, "{doc}");
    // Nor past its environment's end (shorter here than the subject token and the default).
    let brief = cli_ok(&gw, &["env", "create", "--name", "brief", "--ttl", "90s"]);
    let (_, doc) = ask(form(&alice, "dev", &brief)).await;
    let capped = doc["expires_in"].as_i64().unwrap_or(0);
    assert!((1..=90).contains(&capped), "{doc}");
    for (what, f, code) in [
        (
            "a role not granted",
            form(&alice, "admin", &env),
            "invalid_scope",
        ),
        ("no environment", form(&alice, "dev", ""), "invalid_request"),
        (
            "an unknown environment",
            form(&alice, "dev", "env-nope"),
            "invalid_target",
        ),
        (
            "an expired subject token",
            form(
                &idp.sign(
                    subject(json!({"exp": t - 600, "iat": t - 1200})),
                    "RS256",
                    None,
                )
                .await,
                "dev",
                &env,
            ),
            "invalid_grant",
        ),
        (
            "an untrusted issuer",
            form(
                &idp.sign(
                    subject(json!({"iss": "https://evil.example"})),
                    "RS256",
                    None,
                )
                .await,
                "dev",
                &env,
            ),
            "invalid_grant",
        ),
        ("no role", form(&alice, "", &env), "invalid_scope"),
        (
            "another grant type",
            vec![("grant_type".into(), "client_credentials".into())],
            "unsupported_grant_type",
        ),
        (
            "no subject token",
            vec![("grant_type".into(), GRANT.into())],
            "invalid_request",
        ),
    ] {
        let (status, doc) = ask(f).await;
        assert_eq!(status, 400, "{what}: {doc}");
        assert_eq!(doc["error"], code, "{what}: {doc}");
        assert!(doc["error_description"].is_string(), "{what}: {doc}");
    }

    // The exchanged token cannot be exchanged out of its environment.
    let other_env = cli_ok(&gw, &["env", "create", "--name", "other"]);
    let (status, doc) = ask(form(&jit, "dev", &other_env)).await;
    assert_eq!(
        (status, doc["error"].as_str()),
        (400, Some("invalid_target")),
        "{doc}"
    );

    // Revoking the subject token revokes what was exchanged for it.
    let with_jti = idp
        .sign(subject(json!({"jti": "subject-1"})), "RS256", None)
        .await;
    let (status, doc) = ask(form(&with_jti, "dev", &env)).await;
    assert_eq!(status, 200, "{doc}");
    let derived = doc["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&gw, &derived).0, 200);
    cli_ok(&gw, &["revoke", "token", "subject-1"]);
    let start = Instant::now();
    while get(&gw, &derived).0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "derived token still accepted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        get(&gw, &jit).0,
        200,
        "a token exchanged from another subject token"
    );

    // Teardown: the token is refused on its next use, within a second.
    let out = cli_ok(&gw, &["env", "end", &env]);
    assert!(out.contains("ended"), "{out}");
    let start = Instant::now();
    loop {
        let (status, raw) = get(&gw, &jit);
        if status == 401 {
            assert!(raw.contains("revoked"), "{raw}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still accepted: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, doc) = ask(form(&alice, "dev", &env)).await;
    assert_eq!(
        (status, doc["error"].as_str()),
        (400, Some("invalid_target")),
        "{doc}"
    );
    let list = cli_ok(&gw, &["env", "list"]);
    assert!(list.contains(&other_env) && !list.contains(&env), "{list}");

    // On record, without the tokens.
    let audit = gw.audit_when("the exchanges", |a| {
        a.contains("token_exchanged") && a.contains("invalid_scope")
    });
    assert!(audit.contains("\"token_exchange\""), "{audit}");
    assert!(
        !audit.contains(&jit) && !audit.contains(&alice),
        "a token reached the audit log"
    );
}
