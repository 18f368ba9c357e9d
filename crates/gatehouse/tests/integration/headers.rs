use gatehouse_testkit::{GitHttpServer, TempDir, raw_http};

use crate::common::{POLICY, builder, echo, repos};

fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split(';')
        .find_map(|kv| kv.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// A gateway for Gitea in front of the nginx echo, stripping `X-Custom-Identity` besides its own
/// list.
fn echo_gateway(tmp: &TempDir) -> (GitHttpServer, gatehouse_testkit::TestGateway) {
    let (root, _) = repos(tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .extra("[identity_headers]\nstrip = [\"X-Custom-Identity\"]\n")
        .start();
    (upstream, gw)
}

#[test]
fn the_upstream_sees_only_gatehouse_identity_headers() {
    let tmp = TempDir::new("headers");
    let (upstream, gw) = echo_gateway(&tmp);
    let alice = gw.token("alice", &["dev"]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (raw, body) = echo(
        gw.port,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X-WEBAUTH-USER", "admin"),
            ("X-WebAuth-Email", "admin@evil.example"),
            ("x-webauth-fullname", "Admin"),
            ("X-Forwarded-User", "admin"),
            ("X-WEBAUTH-LOGIN", "admin"),
            ("X-Gatehouse-Other", "forged"),
            ("x-custom-identity", "admin"),
            ("X-Forwarded-Host", "evil.example"),
            ("Remote-User", "admin"),
            ("X-Gatehouse-Assertion", "forged"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Connection", "keep-alive, x-gatehouse-assertion"),
            ("traceparent", traceparent),
            ("X-Request-Id", "req-abc-123"),
        ],
    );
    let body = body.as_str();
    assert_eq!(field(body, "user"), "alice");
    assert_eq!(field(body, "email"), "");
    assert_eq!(field(body, "remote_user"), "");
    // Any X-WEBAUTH-* (whichever the forge reads), any X-Gatehouse-*, the configured names.
    assert_eq!(
        field(body, "login"),
        "",
        "a client-sent X-WEBAUTH-LOGIN survived"
    );
    assert_eq!(
        field(body, "xfu"),
        "",
        "a client-sent X-Forwarded-User survived"
    );
    assert_eq!(
        field(body, "other"),
        "",
        "a client-sent X-Gatehouse-* survived"
    );
    assert_eq!(
        field(body, "custom"),
        "",
        "a configured strip name survived"
    );
    // The host the client named, with its port; the client's own claim is not believed.
    assert_eq!(field(body, "xfh"), format!("127.0.0.1:{}", gw.port));
    assert_eq!(
        field(body, "authorization"),
        "",
        "the client's token was forwarded"
    );
    assert_eq!(
        field(body, "xff"),
        "127.0.0.1",
        "a client-sent X-Forwarded-For survived"
    );
    assert_eq!(field(body, "proto"), "http");
    assert_eq!(field(body, "request_id"), "req-abc-123");
    assert!(raw.contains("x-request-id: req-abc-123"));
    let tp = field(body, "traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp != traceparent,
        "{tp}"
    );

    // The assertion is an ES256 JWT for the upstream, verifiable with the published keys.
    let assertion = field(body, "assertion");
    assert_ne!(assertion, "forged");
    let (_, jwks_raw) = raw_http(gw.port, "GET", "/.well-known/jwks.json", &[]);
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(jwks_raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[upstream.url()]);
    v.set_issuer(&["urn:gatehouse:test"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v)
        .expect("assertion verifies")
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["groups"], serde_json::json!(["dev"]));
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 60);

    // The request's audit record: who, from where, to which host and path, under which trace.
    let audit = gw.audit_when("the echo request's record", |t| t.contains("req-abc-123"));
    let rec: serde_json::Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["request_id"] == "req-abc-123")
        .expect("a record with the client's request id");
    assert_eq!(rec["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{rec}");
    assert_eq!(rec["principal"]["subject"], "alice", "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    assert_eq!(rec["host"], "127.0.0.1", "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    assert_eq!(rec["path"], "/explore/_echo", "{rec}");
    assert_eq!(rec["action"], "web:access", "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["policy"], "echo", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["outcome"], "complete", "{rec}");
    assert!(rec["bytes_out"].as_u64().unwrap_or(0) > 0, "{rec}");
    let metrics = gw.metrics();
    for want in [
        "gatehouse_requests_total{action=\"web:access\",decision=\"allow\",status=\"200\"} 1",
        "gatehouse_request_duration_seconds_count{action=\"web:access\"} 1",
        "gatehouse_audit_write_seconds_count",
    ] {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }

    // Without credentials the forged header gets nowhere.
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/explore/_echo",
        &[("X-WEBAUTH-USER", "admin")],
    );
    assert_eq!(status, 401, "{raw}");
    assert!(!raw.contains("user=admin"));
    drop(gw);

    // With the assertion turned off, a client's X-Gatehouse-Assertion is still not forwarded.
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .extra("[identity_headers]\nassertion = \"\"\n")
        .start();
    let bearer = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (_, body) = echo(
        gw.port,
        &[
            ("Authorization", &bearer),
            ("X-Gatehouse-Assertion", "forged"),
        ],
    );
    assert_eq!(field(&body, "assertion"), "", "{body}");
    assert_eq!(field(&body, "user"), "alice");
}

/// Identity headers in every spelling an upstream may read as theirs (`_` for `-`, any case),
/// every identity family a forge or app may trust, and the forge's own query credentials are
/// dropped; a header or parameter that is none of those passes (the allowed twin). The echo is
/// real nginx with `underscores_in_headers on`.
#[test]
fn no_spelling_of_an_identity_header_or_forge_credential_reaches_the_upstream() {
    let tmp = TempDir::new("header-spellings");
    let (_upstream, gw) = echo_gateway(&tmp);
    let alice = gw.token("alice", &["dev"]);
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/explore/_echo?token=t1&keep=1&access_token=t2&%73udo=admin&sudoku=9",
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X_WEBAUTH_LOGIN", "admin"),
            ("x_webauth_email", "admin@evil.example"),
            ("X_Gatehouse_Assertion", "forged"),
            ("X_Custom_Identity", "admin"),
            ("Remote_User", "admin"),
            ("Remote-Email", "admin@evil.example"),
            ("X-Remote-User", "admin"),
            ("X_Forwarded_User", "admin"),
            ("X-Forwarded-Access-Token", "stolen"),
            ("X-Auth-Request-User", "admin"),
            ("X_authentik_username", "admin"),
            ("X-Original-URL", "/admin"),
            ("X_Rewrite_URL", "/admin"),
            ("Sudo", "admin"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("X_Request_Id", "forged-id"),
            ("X_Custom_Thing", "kept"),
        ],
    );
    assert_eq!(status, 200, "{raw}");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    for name in [
        "login",
        "email",
        "custom",
        "remote_user",
        "remote_email",
        "xremote",
        "xfu",
        "xfat",
        "auth_request",
        "authentik",
        "original_url",
        "rewrite_url",
        "sudo",
    ] {
        assert_eq!(
            field(body, name),
            "",
            "a client's {name} reached the upstream: {body}"
        );
    }
    assert_ne!(field(body, "assertion"), "forged", "{body}");
    assert_eq!(field(body, "user"), "alice");
    assert_eq!(field(body, "xff"), "127.0.0.1", "{body}");
    assert_ne!(field(body, "request_id"), "forged-id", "{body}");
    // The twins: a header and parameters that carry no identity pass unchanged.
    assert_eq!(field(body, "thing"), "kept", "{body}");
    assert_eq!(field(body, "args"), "keep=1&sudoku=9", "{body}");
}

/// Requests from different clients ride one pooled keep-alive connection to the upstream, in
/// HTTP/1.1, with the client's `Host` (or with `preserve_host = false`, the upstream's authority);
/// with `pool_max_idle = 0` every request opens its own.
#[test]
fn upstream_connections_are_pooled() {
    let tmp = TempDir::new("pool");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let conns_seen = |extra: &str, want_host: &dyn Fn(u16) -> String| {
        let gw = builder()
            .with_upstream_url(&upstream.url())
            .upstream_extra(extra)
            .forge_kind("gitea")
            .policy(POLICY)
            .start();
        let bearer = format!("Bearer {}", gw.token("alice", &["dev"]));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            // A new client connection each time (raw_http closes after one request).
            let (_, body) = echo(gw.port, &[("Authorization", &bearer)]);
            assert_eq!(field(&body, "upstream_http"), "HTTP/1.1");
            assert_eq!(field(&body, "host"), want_host(gw.port));
            seen.insert(field(&body, "upstream_conn").to_owned());
        }
        seen.len()
    };
    let client_host = |port: u16| format!("127.0.0.1:{port}");
    let upstream_host = |_: u16| format!("127.0.0.1:{}", upstream.port);
    // Five requests share one upstream connection, or two: a connection goes back to the pool
    // when its response body has been read, which on a loaded machine the next request can
    // overtake. Without pooling every request opens its own.
    let pooled = conns_seen("", &client_host);
    assert!(
        (1..=2).contains(&pooled),
        "five requests should share upstream connections: {pooled}"
    );
    let pooled = conns_seen("preserve_host = false", &upstream_host);
    assert!((1..=2).contains(&pooled), "{pooled}");
    assert_eq!(conns_seen("pool_max_idle = 0", &client_host), 5);
}
