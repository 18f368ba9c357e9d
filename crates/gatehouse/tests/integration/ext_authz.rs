//! Gatehouse as Envoy's external authorizer. No Envoy binary can be installed here, so the
//! contract Envoy speaks is tested: a real gRPC client built from envoy-types calls
//! `envoy.service.auth.v3.Authorization/Check` on the running `gatehouse serve`, with the
//! attributes Envoy sends (method, path, host, headers, the client's address, the mTLS peer's
//! SPIFFE id, a body prefix), and the HTTP variant is asked as Envoy's `http_service` asks it.
//! Allow with identity headers to set and remove, deny with the RFC 9457 body, the challenge,
//! a SPIFFE workload, a refused ref in a forwarded push, a spoofed identity header and an
//! untrusted caller; every decision on record.

use std::collections::HashMap;

use gatehouse_extauthz::envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use gatehouse_extauthz::envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use gatehouse_extauthz::envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request,
};
use gatehouse_extauthz::envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use gatehouse_extauthz::envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use gatehouse_extauthz::envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse,
};
use gatehouse_testkit::{GitHttpServer, TempDir, raw_http, raw_http_with_body};

use crate::common::{POLICY, builder, denial, record_of, repos};

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// `main` is protected in demo: dev pushes other branches only.
const PROTECT_MAIN: &str = r#"
@id("main-protected")
@reason("main_is_protected")
forbid(principal,
       action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
                  Gatehouse::Action::"ref:delete"],
       resource in Gatehouse::Owner::"demo")
  when { context.ref == "refs/heads/main" };
"#;

const DEPLOYER: &str = "spiffe://cluster.local/ns/ci/sa/deployer";

struct Ask<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    principal: &'a str,
    body: Option<(&'a [u8], i64)>,
}

impl Default for Ask<'_> {
    fn default() -> Self {
        Ask {
            method: "GET",
            path: "/demo/hello.git/info/refs?service=git-upload-pack",
            headers: &[],
            principal: "",
            body: None,
        }
    }
}

fn check_request(a: &Ask<'_>) -> CheckRequest {
    let mut headers: HashMap<String, String> = a
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect();
    // Envoy sends the pseudo-headers too, its request id, and marks a body it buffered.
    headers.insert(":authority".into(), "git.example.com".into());
    headers.insert("x-request-id".into(), "envoy-req-1".into());
    headers.insert("x-forwarded-proto".into(), "https".into());
    if a.body.is_some() {
        headers
            .entry("x-envoy-auth-partial-body".into())
            .or_insert_with(|| "false".into());
    }
    headers.insert(":path".into(), a.path.into());
    headers.insert(":method".into(), a.method.into());
    // Envoy reports the bytes received when it asks (0 for a check sent on the headers alone).
    let (raw_body, size) = a.body.map_or((Vec::new(), 0), |(b, s)| (b.to_vec(), s));
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "10.20.30.40".into(),
                        ..SocketAddress::default()
                    })),
                }),
                principal: a.principal.into(),
                ..Peer::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "7391".into(),
                    method: a.method.into(),
                    headers,
                    path: a.path.into(),
                    host: "git.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    size,
                    raw_body,
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn check(port: u16, a: Ask<'_>) -> CheckResponse {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to the ext_authz service");
        client
            .check(check_request(&a))
            .await
            .expect("Check")
            .into_inner()
    })
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

fn allowed_headers(r: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not allowed: {r:?}")
    };
    let set = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (set, ok.headers_to_remove.clone())
}

fn denied(r: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not denied: {r:?}")
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    (
        d.status.as_ref().map_or(0, |s| s.code),
        headers,
        d.body.clone(),
    )
}

/// The reason code a denial carries (`X-Gatehouse-Reason`).
fn reason(r: &CheckResponse) -> String {
    denied(r).1.remove("x-gatehouse-reason").unwrap_or_default()
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

/// A push's body as git sends it: the command list, a flush, then (the start of) the pack.
fn push_body(updates: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut s = String::new();
    for (i, (old, new, name)) in updates.iter().enumerate() {
        let caps = if i == 0 {
            "\0report-status side-band-64k"
        } else {
            ""
        };
        s.push_str(&pkt(&format!("{old} {new} {name}{caps}\n")));
    }
    s.push_str("0000");
    let mut b = s.into_bytes();
    b.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
    b
}

#[test]
fn envoy_check_decides_with_the_gateways_policy() {
    let tmp = TempDir::new("ext-authz");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(&format!("{POLICY}\n{PROTECT_MAIN}"))
        .extra(&format!(
            "[ext_authz]\ntrusted_proxies = [\"127.0.0.1\"]\ngrpc_listen = \"127.0.0.1:0\"\n\n\
             [[ext_authz.workloads]]\nspiffe_id = \"{DEPLOYER}\"\nusername = \"deployer\"\ngroups = [\"dev\"]\n"
        ))
        .start();
    let port = gw.ext_authz_port();
    let dev = format!("Bearer {}", gw.token("alice", &["dev"]));
    let ci = format!("Bearer {}", gw.token("ci-bot", &["ci"]));

    // Allowed: the identity headers to set, and what Envoy removes upstream.
    let r = check(
        port,
        Ask {
            headers: &[("authorization", &dev), ("user-agent", "git/2.47.0")],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), OK, "{r:?}");
    let (set, remove) = allowed_headers(&r);
    assert_eq!(set.get("x-webauth-user").map(String::as_str), Some("alice"));
    assert!(remove.contains(&"authorization".to_owned()), "{remove:?}");
    assert!(
        remove.iter().all(|n| !set.contains_key(n)),
        "a header both set and removed: {set:?} {remove:?}"
    );
    let rec = record_of(&gw, "alice's allowed check", |l| {
        l.contains(r#""event":"ext_authz""#) && l.contains(r#""decision":"allow""#)
    });
    assert!(rec.contains(r#""source":"10.20.30.40""#), "{rec}");
    assert!(rec.contains(r#""request_id":"envoy-req-1""#), "{rec}");
    assert!(rec.contains(r#""repo":"demo/hello""#), "{rec}");

    // Denied by the policy: PERMISSION_DENIED, with the status and RFC 9457 body for the client
    // (a line git prints as `remote: ...` for git).
    let r = check(
        port,
        Ask {
            path: "/secret/repo/issues?state=open",
            headers: &[("authorization", &ci)],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    let (status, headers, body) = denied(&r);
    assert_eq!(status, 403);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["code"], "no_matching_permit", "{body}");
    assert_eq!(doc["status"], 403);
    let r = check(
        port,
        Ask {
            path: "/secret/repo.git/info/refs?service=git-upload-pack",
            headers: &[("authorization", &ci), ("user-agent", "git/2.47.0")],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    let (status, _, body) = denied(&r);
    assert_eq!(status, 403);
    assert!(body.starts_with("Gatehouse: "), "{body}");

    // No credential: UNAUTHENTICATED, with the challenge git answers by asking for credentials.
    let r = check(
        port,
        Ask {
            headers: &[("user-agent", "git/2.47.0")],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), UNAUTHENTICATED, "{r:?}");
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 401);
    assert_eq!(
        headers.get("www-authenticate").map(String::as_str),
        Some("Basic realm=\"Gatehouse\"")
    );

    // The mTLS peer's SPIFFE id names a configured workload; an unknown one names no one.
    let r = check(
        port,
        Ask {
            principal: DEPLOYER,
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), OK, "{r:?}");
    let (set, _) = allowed_headers(&r);
    assert_eq!(
        set.get("x-webauth-user").map(String::as_str),
        Some("deployer")
    );
    let rec = record_of(&gw, "the workload's check", |l| {
        l.contains(r#""event":"ext_authz""#) && l.contains(DEPLOYER)
    });
    assert!(rec.contains(r#""decision":"allow""#), "{rec}");
    let r = check(
        port,
        Ask {
            principal: "spiffe://cluster.local/ns/ci/sa/intruder",
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), UNAUTHENTICATED, "{r:?}");

    // A push with its command list in the forwarded body is decided ref by ref.
    let zero = "0".repeat(40);
    let one = "1".repeat(40);
    let push = |updates: &[(&str, &str, &str)]| {
        let body = push_body(updates);
        check(
            port,
            Ask {
                method: "POST",
                path: "/demo/hello.git/git-receive-pack",
                headers: &[
                    ("authorization", &dev),
                    ("content-type", "application/x-git-receive-pack-request"),
                    ("user-agent", "git/2.47.0"),
                ],
                body: Some((&body, body.len() as i64)),
                ..Ask::default()
            },
        )
    };
    let r = push(&[(&zero, &one, "refs/heads/feature")]);
    assert_eq!(code(&r), OK, "{r:?}");
    let r = push(&[
        (&zero, &one, "refs/heads/feature"),
        (&one, &zero, "refs/heads/main"),
    ]);
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    let (status, headers, body) = denied(&r);
    assert_eq!(status, 403);
    assert!(body.contains("refs/heads/main"), "{body}");
    assert_eq!(
        headers.get("x-gatehouse-reason").map(String::as_str),
        Some("main_is_protected")
    );
    let rec = denial(&gw, "the refused ref", |l| {
        l.contains(r#""event":"ext_authz""#) && l.contains("main_is_protected")
    });
    assert!(rec.contains(r#""refs":["#), "{rec}");
    // A command list cut off by the body limit is not guessed at.
    let body = push_body(&[(&zero, &one, "refs/heads/feature")]);
    let r = check(
        port,
        Ask {
            method: "POST",
            path: "/demo/hello.git/git-receive-pack",
            headers: &[
                ("authorization", &dev),
                ("x-envoy-auth-partial-body", "true"),
            ],
            body: Some((&body[..20], 100_000)),
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    assert_eq!(reason(&r), "ref_move_undecidable", "{r:?}");
    // Without the body (no with_request_body), a push is refused by default.
    let r = check(
        port,
        Ask {
            method: "POST",
            path: "/demo/hello.git/git-receive-pack",
            headers: &[("authorization", &dev)],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    assert_eq!(reason(&r), "ref_rules_need_the_gateway", "{r:?}");

    // A spoofed identity header is refused: Envoy would pass it to the forge.
    let r = check(
        port,
        Ask {
            headers: &[("authorization", &dev), ("x-webauth-user", "root")],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    assert_eq!(reason(&r), "identity_header_from_client", "{r:?}");

    // The HTTP variant: Envoy's http_service with path_prefix /.gatehouse/ext_authz.
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/.gatehouse/ext_authz/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &dev), ("Host", "git.example.com")],
    );
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("x-webauth-user: alice"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-envoy-auth-headers-to-remove: "),
        "{raw}"
    );
    let body = push_body(&[(&one, &zero, "refs/heads/main")]);
    let (status, raw) = raw_http_with_body(
        gw.port,
        "POST",
        "/.gatehouse/ext_authz/demo/hello.git/git-receive-pack",
        &[("Authorization", &dev), ("User-Agent", "git/2.47.0")],
        &body,
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("main_is_protected"), "{raw}");

    // Only trusted proxies may ask.
    let other = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .extra("[ext_authz]\ntrusted_proxies = [\"10.9.8.7\"]\ngrpc_listen = \"127.0.0.1:0\"\n")
        .start();
    let r = check(
        other.ext_authz_port(),
        Ask {
            headers: &[("authorization", &dev)],
            ..Ask::default()
        },
    );
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    assert_eq!(reason(&r), "untrusted_front_proxy", "{r:?}");
    let (status, raw) = raw_http(
        other.port,
        "GET",
        "/.gatehouse/ext_authz/demo/hello.git/info/refs?service=git-upload-pack",
        &[("Authorization", &dev)],
    );
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("untrusted_front_proxy"), "{raw}");
}

/// Envoy multiplexes its Checks on a few HTTP/2 connections. Many Checks in flight on one
/// connection (decided together by the connection's task, answered in shared writes) each get
/// their own answer; and a gateway asked to stop with an idle Envoy connection open tells it to
/// go away and exits, without waiting for Envoy to hang up.
#[test]
fn checks_in_flight_on_one_connection_each_get_their_own_answer() {
    let tmp = TempDir::new("ext-authz-mux");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let mut gw = builder()
        .with_upstream_url(&upstream.url())
        .policy(POLICY)
        .shutdown_grace("5s")
        .extra("[ext_authz]\ntrusted_proxies = [\"127.0.0.1\"]\ngrpc_listen = \"127.0.0.1:0\"\n")
        .start();
    let port = gw.ext_authz_port();
    let users = ["alice", "bob", "carol"];
    let tokens: Vec<String> = users
        .iter()
        .map(|u| format!("Bearer {}", gw.token(u, &["dev"])))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to the ext_authz service");
        // 4 rounds of 64 Checks at once: each user's, and one without a credential.
        for round in 0..4 {
            let mut asks = Vec::new();
            for i in 0..64usize {
                let mut c = client.clone();
                let who = i % (users.len() + 1);
                let auth: Vec<(&str, &str)> = tokens
                    .get(who)
                    .map(|t| ("authorization", t.as_str()))
                    .into_iter()
                    .collect();
                let mut req = check_request(&Ask {
                    headers: &auth,
                    ..Ask::default()
                });
                let id = format!("mux-{round}-{i}");
                if let Some(h) = req
                    .attributes
                    .as_mut()
                    .and_then(|a| a.request.as_mut())
                    .and_then(|r| r.http.as_mut())
                {
                    h.headers.insert("x-request-id".into(), id.clone());
                }
                asks.push(tokio::spawn(async move {
                    let r = c.check(req).await.expect("Check").into_inner();
                    (who, id, r)
                }));
            }
            for a in asks {
                let (who, id, r) = a.await.unwrap();
                match users.get(who) {
                    Some(user) => {
                        assert_eq!(code(&r), OK, "{id}: {r:?}");
                        let (set, _) = allowed_headers(&r);
                        assert_eq!(
                            set.get("x-webauth-user").map(String::as_str),
                            Some(*user),
                            "{id} answered with another Check's identity: {set:?}"
                        );
                    }
                    None => {
                        assert_eq!(code(&r), UNAUTHENTICATED, "{id}: {r:?}");
                        assert_eq!(denied(&r).0, 401, "{id}");
                    }
                }
            }
        }
        client
    });
    // Every Check is on record once, under its own request id and principal.
    let is_mux =
        |l: &&str| l.contains(r#""event":"ext_authz""#) && l.contains(r#""request_id":"mux-"#);
    let log = gw.audit_when("the multiplexed Checks' records", |t| {
        t.lines().filter(is_mux).count() >= 4 * 64
    });
    let mux: Vec<&str> = log.lines().filter(is_mux).collect();
    assert_eq!(
        mux.len(),
        4 * 64,
        "ext_authz records of the multiplexed Checks"
    );
    for round in 0..4 {
        for i in 0..64usize {
            let tag = format!(r#""request_id":"mux-{round}-{i}""#);
            let recs: Vec<&&str> = mux.iter().filter(|l| l.contains(&tag)).collect();
            assert_eq!(recs.len(), 1, "{tag}");
            for (who, user) in users.iter().enumerate() {
                assert_eq!(
                    recs[0].contains(&format!(r#""{user}""#)),
                    who == i % (users.len() + 1),
                    "{tag} names the wrong principal: {}",
                    recs[0]
                );
            }
        }
    }

    // The connection stays open (the client is alive); the gateway still stops promptly.
    gw.signal("TERM");
    let exited = gw.wait_exit(std::time::Duration::from_secs(4));
    assert!(
        exited.is_some_and(|s| s.success()),
        "gatehouse did not stop with an idle ext_authz connection open: {exited:?}"
    );
    drop(client);
}
