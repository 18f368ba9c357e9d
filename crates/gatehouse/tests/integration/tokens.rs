use std::time::Duration;

use gatehouse_testkit::{Idp, TempDir, TestGateway, raw_http, wait_for};
use serde_json::json;

use crate::common::{POLICY, builder, repos};

#[allow(clippy::disallowed_methods)] // the gateway under test runs on the real clock
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn challenge(raw: &str) -> String {
    raw.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("www-authenticate: bearer")
        })
        .unwrap_or("")
        .to_owned()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A gateway trusting the shared IdP, with the built-in upstream serving demo/hello.
fn gateway_with_shared_idp(name: &str) -> (TempDir, &'static Idp, TestGateway) {
    let tmp = TempDir::new(name);
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp(idp)
        .policy(POLICY)
        .start();
    (tmp, idp, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_own_description() {
    let (_tmp, idp, gw) = gateway_with_shared_idp("badtokens");
    let iss = idp.issuer();
    let t = now();
    let claims = |over: serde_json::Value| {
        let mut c = json!({"iss": iss, "sub": "alice", "aud": "gatehouse", "iat": t, "exp": t + 600,
                           "preferred_username": "alice", "groups": ["dev"]});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // A well-formed token from the IdP's real key is accepted: the refusals below are about the
    // one thing each changes.
    let good = idp.sign(claims(json!({})), "RS256", None).await;
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {good}"))],
    );
    assert_eq!(status, 200, "{raw}");

    let expired = idp
        .sign(
            claims(json!({"exp": t - 600, "iat": t - 1200})),
            "RS256",
            None,
        )
        .await;
    let not_yet = idp
        .sign(claims(json!({"nbf": t + 600})), "ES256", None)
        .await;
    let wrong_iss = idp
        .sign(
            claims(json!({"iss": "https://evil.example"})),
            "RS256",
            None,
        )
        .await;
    let wrong_aud = idp
        .sign(claims(json!({"aud": "someone-else"})), "RS256", None)
        .await;
    let unknown_kid = idp
        .sign(claims(json!({})), "RS256", Some("no-such-key"))
        .await;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(&claims(json!({"groups": ["dev", "admins"]})).to_string());
    let tampered = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims(json!({})).to_string())
    );

    // HS256 "signed" with the IdP's RSA public key as the HMAC secret: the classic key-confusion
    // attack. The secret here is the key's public JWK text; any form must be refused.
    let jwks = idp.jwks().await;
    let rsa_pub = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()
        .to_string();
    let hs256 = {
        let header = jsonwebtoken::Header {
            kid: Some("rs256-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(rsa_pub.as_bytes()),
        )
        .unwrap()
    };

    // Another kind of token signed by the same key (RFC 8725 §3.11): a DPoP proof, a logout
    // token, a security event. Its claims are an access token's; its `typ` says what it is.
    let dpop = idp
        .sign_typed(claims(json!({})), "RS256", None, Some("dpop+jwt"))
        .await;
    let logout = idp
        .sign_typed(claims(json!({})), "ES256", None, Some("logout+jwt"))
        .await;
    let secevent = idp
        .sign_typed(
            claims(json!({})),
            "RS256",
            None,
            Some("application/secevent+jwt"),
        )
        .await;
    // The allowed twin: an RFC 9068 access token says `at+jwt`.
    let at_jwt = idp
        .sign_typed(claims(json!({})), "RS256", None, Some("at+jwt"))
        .await;
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {at_jwt}"))],
    );
    assert_eq!(status, 200, "{raw}");

    let cases = [
        (dpop, "token is not an access token"),
        (logout, "token is not an access token"),
        (secevent, "token is not an access token"),
        (expired, "token has expired"),
        (not_yet, "token is not yet valid"),
        (wrong_iss, "token issuer is not trusted"),
        (wrong_aud, "token audience is not accepted"),
        (unknown_kid, "token was signed by an unknown key"),
        (tampered, "token signature is invalid"),
        (alg_none, "token algorithm is not allowed"),
        (hs256, "token algorithm is not allowed"),
        ("not-a-jwt".to_owned(), "token is malformed"),
    ];
    for (token, description) in cases {
        let (status, raw) = raw_http(
            gw.port,
            "GET",
            "/api/v1/repos/demo/hello",
            &[("Authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(status, 401, "{description}: {raw}");
        let ch = challenge(&raw);
        assert!(
            ch.contains(&format!(
                "error=\"invalid_token\", error_description=\"{description}\""
            )),
            "expected `{description}`, got `{ch}`"
        );
        assert!(
            !raw.contains(&token) || token.len() < 12,
            "the token was echoed back"
        );
    }
    // No token may reach the gateway's log or audit trail.
    let log = gw.log();
    let audit = gw.audit_when("the last refusal's record", |a| {
        a.contains("\"authn_error\":\"malformed\"")
    });
    assert!(!log.contains(&good) && !audit.contains(&good));
    assert!(
        !audit.contains(&good[good.len() - 20..]),
        "a token signature reached the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_key_rotation_needs_no_restart() {
    let tmp = TempDir::new("rotation");
    let (root, _) = repos(&tmp);
    let mut idp = Idp::start();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp(&idp)
        .policy(POLICY)
        .start();
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";
    let before = idp.client_token("urn:gatehouse:rs256").await;
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {before}"))],
    );
    assert_eq!(s, 200, "{raw}");

    idp.rotate_keys(2);
    let after = idp.client_token("urn:gatehouse:rs256").await;
    let kid = |t: &str| {
        use base64::Engine as _;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&h).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(kid(&after), "rs256-2", "the IdP did not rotate");
    // The gateway learns the new key on the first token that names it (one rate-limited refetch).
    let status = wait_for(
        "the new key to be accepted",
        std::time::Duration::from_secs(10),
        || {
            let (s, _) = raw_http(
                gw.port,
                "GET",
                path,
                &[("Authorization", &format!("Bearer {after}"))],
            );
            (s == 200).then_some(s)
        },
    );
    assert_eq!(status, 200);
    // tokens signed by the old (still published) key keep working
    let (s, _) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {before}"))],
    );
    assert_eq!(s, 200);
    assert!(
        gw.metrics()
            .contains("gatehouse_jwks_fetches_total{issuer="),
        "{}",
        gw.metrics()
    );
}

/// The IdP goes away: tokens signed with keys Gatehouse already has keep working, a token naming
/// a key it never saw is refused with `unknown_key` (the refetch fails). The IdP comes back
/// having withdrawn its old keys: once Gatehouse refetches (on the first token naming a new key),
/// every token signed with a withdrawn key is refused, including one it had verified and
/// remembered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idp_going_away_and_withdrawing_its_keys() {
    let tmp = TempDir::new("idp-faults");
    let (root, _) = repos(&tmp);
    let mut idp = Idp::start();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp(&idp)
        .policy(POLICY)
        .start();
    let iss = idp.issuer();
    let t = now();
    let claims = json!({"iss": iss, "sub": "alice", "aud": "gatehouse", "iat": t, "exp": t + 600,
                        "preferred_username": "alice", "groups": ["dev"]});
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";
    let get = |token: &str| {
        raw_http(
            gw.port,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    // Signed while the IdP is up: one used now (and remembered), one kept for later, one with a
    // key id the IdP never published.
    let used = idp.sign(claims.clone(), "RS256", None).await;
    let mut unused_claims = claims.clone();
    unused_claims["jti"] = "unused".into();
    let unused = idp.sign(unused_claims, "RS256", None).await;
    let mut later_claims = claims.clone();
    later_claims["jti"] = "later".into();
    let later = idp.sign(later_claims, "RS256", None).await;
    let unknown = idp
        .sign(claims.clone(), "RS256", Some("never-published"))
        .await;
    let (s, raw) = get(&used);
    assert_eq!(s, 200, "{raw}");

    idp.stop();
    // Known key, never-seen token: verified with the keys Gatehouse holds.
    let (s, raw) = get(&unused);
    assert_eq!(s, 200, "{raw}");
    // Unknown key: the refetch fails; refused as an unknown key, not let through.
    let (s, raw) = get(&unknown);
    assert_eq!(s, 401, "{raw}");
    assert!(
        challenge(&raw).contains("token was signed by an unknown key"),
        "{raw}"
    );

    // Back, with new keys only. The first token naming a new key makes Gatehouse refetch (at most
    // once per jwks_min_refetch_interval, 1 s here).
    idp.relaunch_dropping_keys(2);
    let fresh = idp.client_token("urn:gatehouse:rs256").await;
    wait_for(
        "the new key to be accepted",
        Duration::from_secs(10),
        || (get(&fresh).0 == 200).then_some(()),
    );
    // Every token signed with a withdrawn key is refused now: never seen, and remembered.
    for (what, token) in [
        ("never seen", &later),
        ("remembered", &used),
        ("seen while down", &unused),
    ] {
        let (s, raw) = get(token);
        assert_eq!(s, 401, "{what}: {raw}");
        assert!(
            challenge(&raw).contains("token was signed by an unknown key"),
            "{what}: {raw}"
        );
    }
}

/// FAULT INJECTION (named as such): a JWKS endpoint serving `jwks` that, once `slow` is set,
/// answers each request only after `delay`. Returns its URL.
fn slow_jwks(
    jwks: String,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (jwks, slow) = (jwks.clone(), slow.clone());
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                if slow.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(delay);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
            });
        }
    });
    format!("http://127.0.0.1:{port}/jwks")
}

/// A JWKS endpoint that turns slow holds up no request that can be decided with the keys held:
/// while a token with an unknown `kid` waits for the slow refetch, a never-seen token signed
/// with a known key (the keys are stale by then) is answered first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_jwks_endpoint_holds_up_no_request_with_known_keys() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = TempDir::new("slow-jwks");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let jwks = idp.jwks().await.to_string();
    let slow = Arc::new(AtomicBool::new(false));
    let url = slow_jwks(jwks, slow.clone(), Duration::from_secs(4));
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(
            idp,
            &format!("jwks_uri = \"{url}\"\njwks_cache_ttl = \"1s\"\nhttp_timeout = \"10s\""),
        )
        .policy(POLICY)
        .start();
    let iss = idp.issuer();
    let t = now();
    let token = |jti: &str, kid: Option<&'static str>| {
        let claims = json!({"iss": iss, "sub": "alice", "aud": "gatehouse", "iat": t,
                            "exp": t + 600, "preferred_username": "alice", "groups": ["dev"],
                            "jti": jti});
        idp.sign(claims, "RS256", kid)
    };
    let known = token("known", None).await;
    let unknown = token("unknown", Some("not-published")).await;
    let port = gw.port;
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";

    slow.store(true, Ordering::SeqCst);
    // Let the keys go stale (jwks_cache_ttl is 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let unknown_done = Arc::new(AtomicBool::new(false));
    let done = unknown_done.clone();
    let waiting = std::thread::spawn(move || {
        let r = raw_http(
            port,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {unknown}"))],
        );
        done.store(true, Ordering::SeqCst);
        r
    });
    // The refetch for the unknown kid is under way (and takes 4 s)...
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !unknown_done.load(Ordering::SeqCst),
        "the refetch was not slow"
    );
    // ...and the known key's token is answered without waiting for it (the fetch has more than
    // 3.5 s to go: half that is a wide margin for a request on loopback).
    let asked = std::time::Instant::now();
    let (s, raw) = raw_http(
        port,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {known}"))],
    );
    assert_eq!(s, 200, "{raw}");
    assert!(
        !unknown_done.load(Ordering::SeqCst) && asked.elapsed() < Duration::from_millis(1800),
        "a request with known keys waited for the slow JWKS fetch ({:?})",
        asked.elapsed()
    );
    let (s, raw) = waiting.join().unwrap();
    assert_eq!(s, 401, "{raw}");
}

/// The JWKS fetches Gatehouse has made for `issuer`, successful or not.
fn jwks_fetches(metrics: &str, issuer: &str) -> u64 {
    let label = format!("issuer=\"{issuer}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_jwks_fetches_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_kids_costs_one_refetch() {
    // A refetch interval (5 s) no burst of sixteen requests outlasts, even on a loaded 2-core
    // CI machine (with 1 s, a slow burst was once worth two refetches).
    let tmp = TempDir::new("kid-burst");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&format!(
            "[[issuers]]\nissuer = \"{}\"\naudiences = [\"gatehouse\"]\nalgorithms = [\"RS256\", \"ES256\"]\nleeway = \"5s\"\njwks_min_refetch_interval = \"5s\"\n",
            idp.issuer()
        ))
        .start();
    let iss = idp.issuer();
    let t = now();
    let mut tokens = Vec::new();
    for i in 0..16 {
        let claims = json!({"iss": iss, "sub": "mallory", "aud": "gatehouse", "iat": t,
                            "exp": t + 600, "preferred_username": "mallory"});
        tokens.push(
            idp.sign(claims, "RS256", Some(&format!("made-up-{i}")))
                .await,
        );
    }
    // Past the refetch interval since the keys were loaded.
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
    let before = jwks_fetches(&gw.metrics(), &iss);
    assert!(before >= 1, "{}", gw.metrics());

    // Sixteen requests at once, each with a key id the IdP never had.
    let port = gw.port;
    let start = std::sync::Arc::new(std::sync::Barrier::new(tokens.len()));
    let answers: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                raw_http(
                    port,
                    "GET",
                    "/demo/hello.git/info/refs?service=git-upload-pack",
                    &[("Authorization", &format!("Bearer {token}"))],
                )
            })
        })
        .collect();
    for a in answers {
        let (status, raw) = a.join().unwrap();
        assert_eq!(status, 401, "{raw}");
        assert!(
            challenge(&raw).contains("token was signed by an unknown key"),
            "{raw}"
        );
    }
    let after = jwks_fetches(&gw.metrics(), &iss);
    assert_eq!(after - before, 1, "one refetch for the whole burst");
}

#[test]
fn gatehouse_tokens_and_published_keys() {
    let tmp = TempDir::new("own");
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .start();
    let (s, raw) = raw_http(gw.port, "GET", "/.well-known/jwks.json", &[]);
    assert_eq!(s, 200);
    assert!(
        raw.contains("\"alg\":\"ES256\"") && raw.contains("\"kty\":\"EC\""),
        "{raw}"
    );
    assert!(
        !raw.contains("\"d\""),
        "a private key component was published"
    );

    let out = gw.cli(&[
        "token",
        "issue",
        "--subject",
        "agent:reviewer",
        "--group",
        "dev",
        "--ttl",
        "15m",
    ]);
    assert!(out.status.success());
    let tok = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (s, _) = raw_http(
        gw.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &format!("Bearer {tok}"))],
    );
    assert_eq!(s, 200);
    let too_long = gw.cli(&["token", "issue", "--subject", "x", "--ttl", "48h"]);
    assert!(!too_long.status.success());
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("exceeds tokens.max_ttl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_from_a_prefixed_issuer_do_not_match_unprefixed_policies() {
    let tmp = TempDir::new("prefix");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let policy = r#"
@id("dev-demo")
permit(principal in Gatehouse::Group::"dev", action == Gatehouse::Action::"git:read", resource in Gatehouse::Owner::"demo");
@id("partner-dev-hello")
permit(principal in Gatehouse::Group::"partner:dev", action == Gatehouse::Action::"git:read", resource == Gatehouse::Repo::"demo/hello");
"#;
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(idp, "groups_prefix = \"partner:\"")
        .policy(policy)
        .start();
    let t = now();
    let token = idp
        .sign(
            json!({"iss": idp.issuer(), "sub": "eve", "aud": "gatehouse", "iat": t, "exp": t + 600,
                   "preferred_username": "eve", "groups": ["dev"]}),
            "ES256",
            None,
        )
        .await;
    let auth = format!("Bearer {token}");
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &auth)],
    );
    assert_eq!(s, 200, "partner:dev may read demo/hello: {raw}");
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        "/demo/other.git/info/refs?service=git-upload-pack",
        &[("Authorization", &auth)],
    );
    assert_eq!(
        s, 403,
        "the IdP's `dev` must not be Gatehouse's `dev`: {raw}"
    );
    gw.audit_when("a record with the prefixed group", |a| {
        a.contains("\"groups\":[\"partner:dev\"]")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_and_revocation_bites_after_the_cache() {
    let tmp = TempDir::new("introspection");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let secret = tmp.path().join("introspection.secret");
    std::fs::write(&secret, "gatehouse-secret\n").unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(
            idp,
            &format!(
                "[issuers.introspection]\nclient_id = \"gatehouse\"\nclient_secret = {{ file = \"{}\" }}\ncache_ttl = \"1s\"",
                secret.display()
            ),
        )
        .policy(POLICY)
        .start();
    let opaque = idp.client_token("urn:gatehouse:opaque").await;
    assert!(
        !opaque.starts_with("eyJ"),
        "expected an opaque token, got a JWT"
    );
    let path = "/demo/hello.git/info/refs?service=git-upload-pack";
    let auth = format!("Bearer {opaque}");
    let (s, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &auth)]);
    assert_eq!(s, 200, "{raw}");

    // An opaque token the IdP never issued is not active.
    let (s, raw) = raw_http(
        gw.port,
        "GET",
        path,
        &[("Authorization", "Bearer not-a-real-token-123")],
    );
    assert_eq!(s, 401, "{raw}");
    assert!(
        challenge(&raw).contains("error_description=\"token is not active\""),
        "{raw}"
    );

    // Revoked at the IdP: refused once the cached answer (1 s) has ended.
    let revoked = reqwest::Client::new()
        .post(format!("{}/token/revocation", idp.issuer()))
        .basic_auth("ci-bot", Some("ci-bot-secret"))
        .form(&[
            ("token", opaque.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        revoked.status().is_success(),
        "revocation: {}",
        revoked.status()
    );
    let raw = wait_for(
        "the revoked token to be refused",
        std::time::Duration::from_secs(10),
        || {
            let (s, raw) = raw_http(gw.port, "GET", path, &[("Authorization", &auth)]);
            (s == 401).then_some(raw)
        },
    );
    assert!(challenge(&raw).contains("token is not active"), "{raw}");
    let audit = gw.audit_when("the refusal of the revoked token", |a| {
        a.contains("\"authn_error\":\"inactive\"")
    });
    assert!(
        !audit.contains(&opaque),
        "an opaque token reached the audit log"
    );
    assert!(
        !gw.log().contains(&opaque),
        "an opaque token reached the log"
    );
}
