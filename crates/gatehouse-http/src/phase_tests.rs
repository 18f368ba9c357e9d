//! The request phases, tested without sockets: a real `Gateway` over the real decision core
//! (Gatehouse's own issuer, a Cedar policy), a real audit log in a temporary directory, and
//! requests built in memory and handed to `Gateway::handle` as a connection would hand them.
//! The upstream is an address nothing listens on, so a request that passes every phase ends in
//! `502`: which phase refused, and with what, is what each test checks. The front doors that
//! only ask (forward auth, `Gateway::check`) run over the same phases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_audit::{AuditOptions, AuditSink};
use gatehouse_authn::{Authenticator, OwnIssuer, TokenRequest, generate_signing_key_pem};
use gatehouse_config::Config;
use gatehouse_core::{Clock, PrincipalKind, Redacted, SystemClock};
use gatehouse_decide::Decider;
use gatehouse_git::{ForgeFlavor, PushLimits};
use gatehouse_policy::PolicyEngine;
use http::{Request, Response};
use http_body_util::BodyExt as _;

use crate::body::{Body, full};
use crate::proxy::{ConnInfo, Gateway, GatewaySettings};
use crate::{CheckInput, CheckOutcome, Metrics, Upstream};

const POLICY: &str = r#"
@id("devs")
permit(principal in Gatehouse::Group::"dev", action, resource);

@id("main")
@reason("main_is_protected")
forbid(principal,
       action in [Gatehouse::Action::"ref:create", Gatehouse::Action::"ref:update",
                  Gatehouse::Action::"ref:delete"],
       resource)
when { context.ref == "refs/heads/main" };
"#;

struct Harness {
    gw: Arc<Gateway>,
    dir: PathBuf,
    own: Arc<OwnIssuer>,
    _writer: std::thread::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> i64 {
    SystemClock.now().as_secs()
}

fn harness(name: &str) -> Harness {
    let dir = std::env::temp_dir().join(format!("gatehouse-phases-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let text = r#"
[server]
listen = "127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:9"
[forge]
kind = "gitea"
[tokens]
signing_key = { file = "unused.pem" }
[policy]
file = "policy.cedar"
[audit]
file = "audit.log"
[forward_auth]
trusted_proxies = ["127.0.0.1"]
[ext_authz]
trusted_proxies = ["127.0.0.1"]
"#;
    let cfg = Config::parse(text, &dir, "phases.toml").unwrap_or_else(|e| panic!("{e}"));
    let pem = Redacted::new(generate_signing_key_pem().unwrap_or_else(|e| panic!("{e}")));
    let own = Arc::new(OwnIssuer::new(&cfg.tokens, &pem).unwrap_or_else(|e| panic!("{e}")));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let authn = Arc::new(
        Authenticator::new(&cfg.issuers, own.clone(), clock.clone())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let policy = PolicyEngine::new(POLICY, "default").unwrap_or_else(|e| panic!("{e}"));
    let decider = Arc::new(Decider::new(
        authn,
        Arc::new(ArcSwap::from_pointee(policy)),
        ForgeFlavor::Gitea,
    ));
    let (audit, writer) = AuditSink::open(
        &AuditOptions {
            path: dir.join("audit.log"),
            queue_capacity: 64,
            batch_max: 16,
            flush_interval: Duration::from_millis(5),
            rotate_size: None,
            rotate_age: None,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream::new(&cfg.upstream).unwrap_or_else(|e| panic!("{e}"));
    let settings = GatewaySettings {
        flavor: ForgeFlavor::Gitea,
        trusted_proxies: Vec::new(),
        identity: cfg.identity_headers.clone(),
        assertion_audience: "forge".into(),
        portal_repositories: Vec::new(),
        portal_links: Vec::new(),
        builtin_repos_dir: None,
        websocket_idle_timeout: Duration::from_secs(60),
        upstream_body_idle_timeout: Duration::from_secs(60),
        client_body_idle_timeout: Duration::from_secs(60),
        push_limits: PushLimits::new(1 << 20, 1000),
        forward_auth: cfg.forward_auth.clone(),
        ext_authz: cfg.ext_authz.clone(),
    };
    let gw = Arc::new(Gateway::new(
        settings,
        decider,
        audit,
        upstream,
        Arc::new(Metrics::new()),
        clock,
    ));
    Harness {
        gw,
        dir,
        own,
        _writer: writer,
    }
}

impl Harness {
    fn token(&self, groups: &[&str]) -> String {
        let (t, _) = self
            .own
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
        t.expose().to_owned()
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        peer: IpAddr,
    ) -> (Response<()>, String) {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "git.example");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req: Request<Body> = b
            .body(full(bytes::Bytes::copy_from_slice(body)))
            .unwrap_or_else(|e| panic!("{e}"));
        let conn = ConnInfo {
            peer: SocketAddr::new(peer, 40000),
            tls: false,
            peer_names: None,
        };
        let resp = self.gw.clone().handle(req, conn).await;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (
            Response::from_parts(parts, ()),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// The audit record whose line `is_it` picks, once the writer has it on disk.
    async fn record(&self, is_it: impl Fn(&str) -> bool) -> String {
        for _ in 0..200 {
            let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| is_it(l)) {
                return l.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no such record in:\n{}",
            std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default()
        );
    }
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

#[tokio::test]
async fn phase2_refuses_a_path_that_climbs_and_phase3_challenges_git() {
    let h = harness("p2p3");
    let (r, _) = h
        .send("GET", "/acme/../../etc/passwd", &[], b"", LOCAL)
        .await;
    assert_eq!(r.status(), 400);
    let (r, body) = h
        .send(
            "GET",
            "/acme/api.git/info/refs?service=git-upload-pack",
            &[("user-agent", "git/2.47.0")],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 401, "{body}");
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"Gatehouse\"");
    let rec = h
        .record(|l| l.contains("\"authn_error\":\"missing\""))
        .await;
    assert!(rec.contains("\"decision\":\"deny\""), "{rec}");
}

#[tokio::test]
async fn phase2_refuses_a_cross_site_write_before_any_credential() {
    let h = harness("xsite");
    let auth = format!("Bearer {}", h.token(&["dev"]));
    let (r, body) = h
        .send(
            "POST",
            "/acme/api/settings",
            &[("authorization", &auth), ("sec-fetch-site", "cross-site")],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 403, "{body}");
    assert_eq!(r.headers()["x-gatehouse-reason"], "cross_site_request");
}

#[tokio::test]
async fn phase4_asks_the_policy_and_phase6_forwards_what_it_allows() {
    let h = harness("p4");
    let ci = format!("Bearer {}", h.token(&["ci"]));
    let (r, _) = h
        .send(
            "GET",
            "/acme/api.git/info/refs?service=git-upload-pack",
            &[("authorization", &ci)],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-gatehouse-reason"], "no_matching_permit");
    // Allowed: every phase passes and the (unreachable) upstream is asked.
    let dev = format!("Bearer {}", h.token(&["dev"]));
    let (r, _) = h
        .send(
            "GET",
            "/acme/api.git/info/refs?service=git-upload-pack",
            &[("authorization", &dev)],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 502);
    let rec = h
        .record(|l| l.contains("\"policy\":\"devs\"") && l.contains("\"status\":502"))
        .await;
    assert!(rec.contains("\"action\":\"git:read\""), "{rec}");
}

#[tokio::test]
async fn phase4b_decides_a_push_ref_by_ref() {
    let h = harness("p4b");
    let dev = format!("Bearer {}", h.token(&["dev"]));
    let (zero, one) = ("0".repeat(40), "1".repeat(40));
    let body = format!(
        "{}{}0000PACK",
        pkt(&format!("{zero} {one} refs/heads/feature\0report-status\n")),
        pkt(&format!("{one} {zero} refs/heads/main\n")),
    );
    let (r, text) = h
        .send(
            "POST",
            "/acme/api.git/git-receive-pack",
            &[
                ("authorization", &dev),
                ("content-type", "application/x-git-receive-pack-request"),
            ],
            body.as_bytes(),
            LOCAL,
        )
        .await;
    // git's own answer: the push is refused as a whole, main named with its reason.
    assert_eq!(r.status(), 200, "{text}");
    assert!(text.contains("ng refs/heads/main"), "{text}");
    let rec = h.record(|l| l.contains("main_is_protected")).await;
    assert!(rec.contains("\"refs\":["), "{rec}");
}

#[tokio::test]
async fn phase4c_decides_a_web_route_ref_by_ref() {
    let h = harness("p4c");
    let dev = format!("Bearer {}", h.token(&["dev"]));
    let (r, body) = h
        .send(
            "POST",
            "/acme/api/branches/delete?name=main",
            &[
                ("authorization", &dev),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 403, "{body}");
    assert_eq!(r.headers()["x-gatehouse-reason"], "main_is_protected");
    let (r, _) = h
        .send(
            "POST",
            "/acme/api/branches/delete?name=feature",
            &[
                ("authorization", &dev),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"",
            LOCAL,
        )
        .await;
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn forward_auth_runs_the_same_phases_for_a_trusted_front_proxy() {
    let h = harness("fa");
    let dev = format!("Bearer {}", h.token(&["dev"]));
    let ask = [
        ("authorization", dev.as_str()),
        (
            "x-original-uri",
            "/acme/api.git/info/refs?service=git-upload-pack",
        ),
    ];
    let (r, body) = h.send("GET", "/.gatehouse/auth", &ask, b"", LOCAL).await;
    assert_eq!(r.status(), 200, "{body}");
    assert_eq!(r.headers()["x-webauth-user"], "alice");
    let (r, _) = h
        .send(
            "GET",
            "/.gatehouse/auth",
            &ask,
            b"",
            IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-gatehouse-reason"], "untrusted_front_proxy");
}

#[tokio::test]
async fn an_envoy_check_runs_the_same_phases() {
    let h = harness("check");
    let input = |token: &str, path: &str| {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert("authorization", v);
        }
        CheckInput {
            peer: LOCAL,
            client: Some(IpAddr::V4(Ipv4Addr::new(10, 2, 3, 4))),
            method: "GET".into(),
            path: path.into(),
            host: "git.example".into(),
            headers,
            body: None,
            spiffe_id: None,
            request_id: Some("r-1".into()),
        }
    };
    let path = "/acme/api.git/info/refs?service=git-upload-pack";
    match h.gw.check(input(&h.token(&["dev"]), path)).await {
        CheckOutcome::Allow { set, remove, .. } => {
            assert_eq!(set["x-webauth-user"], "alice");
            assert!(remove.contains(&http::header::AUTHORIZATION));
        }
        d => panic!("{d:?}"),
    }
    match h.gw.check(input(&h.token(&["ci"]), path)).await {
        CheckOutcome::Deny {
            status, headers, ..
        } => {
            assert_eq!(status, 403);
            assert_eq!(headers["x-gatehouse-reason"], "no_matching_permit");
        }
        a => panic!("{a:?}"),
    }
    let rec = h
        .record(|l| l.contains("\"event\":\"ext_authz\"") && l.contains("\"decision\":\"deny\""))
        .await;
    assert!(rec.contains("\"source\":\"10.2.3.4\""), "{rec}");
}

fn admitted() -> crate::proxy::Admitted {
    crate::proxy::Admitted {
        request_id: "req-1".into(),
        // traceparent 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
        trace: gatehouse_audit::SpanIds {
            trace_id: [
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c,
            ],
            span_id: [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
            parent_span_id: Some([0x11; 8]),
            sampled: true,
        },
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        client_text: "192.0.2.7".into(),
        peer_text: "192.0.2.7".into(),
        host: "git.example".into(),
        port: None,
        websocket: None,
        peer_names: None,
    }
}

#[tokio::test]
async fn phase5_the_upstream_gets_gatehouses_identity_and_nothing_the_client_claimed() {
    let h = harness("p5");
    let token = h.token(&["dev"]);
    let principal =
        h.gw.decider()
            .caller(&gatehouse_authn::Credential::Bearer(Redacted::new(
                token.clone(),
            )))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let req: Request<Body> = Request::builder()
        .uri("/acme/api.git/info/refs?service=git-upload-pack")
        .header("host", "git.example")
        .header("authorization", format!("Bearer {token}"))
        .header("x-webauth-user", "root")
        .header("X_WEBAUTH_USER", "root")
        .header("sudo", "root")
        .header("connection", "keep-alive, x-custom")
        .header("x-custom", "hop")
        .header("expect", "100-continue")
        .header("x-forwarded-for", "203.0.113.9")
        .body(full(bytes::Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (parts, _) =
        h.gw.upstream_request(req, &principal, &admitted(), false, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
    let hd = &parts.headers;
    assert_eq!(hd["x-webauth-user"], "alice");
    assert_eq!(hd.get_all("x-webauth-user").iter().count(), 1);
    for gone in [
        "x_webauth_user",
        "sudo",
        "authorization",
        "connection",
        "x-custom",
        "expect",
    ] {
        assert!(!hd.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(hd["x-request-id"], "req-1");
    // The client's own X-Forwarded-For is not believed from an untrusted peer.
    assert_eq!(hd["x-forwarded-for"], "192.0.2.7");
    assert!(hd.contains_key("traceparent"));

    // W3C Trace Context: the caller's tracestate goes on with its traceparent, and not without.
    let with_state = |continued: bool| {
        let req: Request<Body> = Request::builder()
            .uri("/acme/api.git/info/refs?service=git-upload-pack")
            .header("host", "git.example")
            .header("tracestate", "vendor=abc")
            .body(full(bytes::Bytes::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let adm = crate::proxy::Admitted {
            trace: gatehouse_audit::SpanIds {
                parent_span_id: continued.then_some([0x11; 8]),
                ..admitted().trace
            },
            ..admitted()
        };
        let (parts, _) =
            h.gw.upstream_request(req, &principal, &adm, false, false)
                .unwrap_or_else(|e| panic!("{e:?}"));
        parts.headers.get("tracestate").cloned()
    };
    assert_eq!(
        with_state(true).as_ref().map(|v| v.as_bytes()),
        Some(&b"vendor=abc"[..])
    );
    assert_eq!(with_state(false), None);
}

#[tokio::test]
async fn phase6_the_upstream_cannot_set_gatehouses_cookies_or_switch_protocols_unasked() {
    let h = harness("p6");
    let resp = Response::builder()
        .status(200)
        .header("set-cookie", "__Host-gatehouse-session=forged; Path=/")
        .header("set-cookie", "forge_session=1; Path=/")
        .header("connection", "close")
        .body(full(bytes::Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = h.gw.upstream_response(resp, &admitted());
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, vec!["forge_session=1; Path=/"]);
    assert!(!r.headers().contains_key("connection"));
    let resp = Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .body(full(bytes::Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.gw.upstream_response(resp, &admitted()).status(), 502);
}
