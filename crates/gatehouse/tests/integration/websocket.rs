//! WebSocket through Gatehouse: a real `ws` client and a real `ws` echo server (Node), with
//! the handshake authenticated and authorized like any request and the relay audited.

use std::time::{Duration, Instant};

use gatehouse_testkit::{HeldWebSocket, TestGateway, WsEcho, raw_http, ws_exchange};

use crate::common::builder;

/// dev may open what is under /live; nobody else may.
const POLICY: &str = r#"
@id("live")
permit(principal in Gatehouse::Group::"dev", action == Gatehouse::Action::"web:access",
       resource is Gatehouse::Route)
  when { resource.path like "/live*" };
"#;

fn gateway(echo: &WsEcho) -> TestGateway {
    builder()
        .with_upstream_url(&echo.url())
        .policy(POLICY)
        .start()
}

/// The audit records of the gateway whose status is 101, once `n` are written.
fn upgraded_records(gw: &TestGateway, n: usize) -> Vec<serde_json::Value> {
    let text = gw.audit_when("the relays' audit records", |t| {
        t.matches(r#""status":101"#).count() >= n
    });
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["status"] == 101)
        .collect()
}

#[test]
fn a_websocket_is_authorized_relayed_both_ways_and_audited() {
    let echo = WsEcho::start();
    let gw = gateway(&echo);
    let url = format!("ws://127.0.0.1:{}/live/feed?room=1", gw.port);
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));

    let r = ws_exchange(
        &url,
        &[("Authorization", &alice), ("X-WEBAUTH-USER", "admin")],
        1 << 20,
    );
    assert_eq!(r["opened"], true, "{r}");
    let hello = &r["hello"];
    // The upstream saw the handshake with Gatehouse's identity, not the client's claim.
    assert_eq!(hello["path"], "/live/feed?room=1", "{r}");
    assert_eq!(hello["headers"]["x-webauth-user"], "alice", "{r}");
    assert!(hello["headers"]["authorization"].is_null(), "{r}");
    assert_eq!(hello["headers"]["upgrade"], "websocket", "{r}");
    assert!(hello["headers"]["sec-websocket-key"].is_string(), "{r}");
    assert_eq!(hello["protocol"], "echo.v1", "{r}");
    // A text message and 1 MiB of binary came back unchanged; the close handshake went through.
    assert_eq!(r["echoed"][0]["ok"], true, "{r}");
    assert_eq!(r["echoed"][1]["ok"], true, "{r}");
    assert_eq!(r["echoed"][1]["bytes"], 1 << 20, "{r}");
    assert_eq!(r["closed"]["code"], 1000, "{r}");

    // Refused handshakes are answered like any request, and nothing is upgraded.
    let r = ws_exchange(&url, &[], 16);
    assert_eq!(
        (r["opened"].clone(), r["status"].clone()),
        (false.into(), 401.into()),
        "{r}"
    );
    let bot = format!("Bearer {}", gw.token("ci-bot", &["ci"]));
    let r = ws_exchange(&url, &[("Authorization", &bot)], 16);
    assert_eq!(
        (r["opened"].clone(), r["status"].clone()),
        (false.into(), 403.into()),
        "{r}"
    );

    // The relay's record is written when it ends: both directions counted, complete.
    let recs = upgraded_records(&gw, 1);
    let rec = &recs[0];
    assert_eq!(rec["principal"]["username"], "alice", "{rec}");
    assert_eq!(rec["action"], "web:access", "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["outcome"], "complete", "{rec}");
    assert!(rec["bytes_in"].as_u64().unwrap() > 1 << 20, "{rec}");
    assert!(rec["bytes_out"].as_u64().unwrap() > 1 << 20, "{rec}");
    assert!(gw.metrics().contains("gatehouse_tunnels_open 0"));
}

#[test]
fn an_h2c_upgrade_is_never_forwarded() {
    // After an h2c upgrade the client could send the upstream any request over the relay,
    // unseen by the policy: the upgrade headers are dropped and the request is served as is.
    let echo = WsEcho::start();
    let gw = gateway(&echo);
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (status, raw) = raw_http(
        gw.port,
        "GET",
        "/live/feed",
        &[
            ("Authorization", &alice),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
    );
    assert_eq!(status, 200, "{raw}");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    let headers = &seen["headers"];
    assert!(headers["upgrade"].is_null(), "{seen}");
    assert!(headers["http2-settings"].is_null(), "{seen}");
    assert_eq!(headers["x-webauth-user"], "alice", "{seen}");
}

#[test]
fn open_websockets_are_closed_and_recorded_when_gatehouse_stops() {
    let echo = WsEcho::start();
    let mut gw = gateway(&echo);
    let url = format!("ws://127.0.0.1:{}/live/feed", gw.port);
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));
    let held = HeldWebSocket::open(&url, &[("Authorization", &alice)]);
    assert!(gw.metrics().contains("gatehouse_tunnels_open 1"));

    // The relay does not hold the shutdown for its grace period (30 s here).
    let asked = Instant::now();
    gw.signal("TERM");
    let report = held.closed(Duration::from_secs(10));
    assert_eq!(report["opened"], true, "{report}");
    assert_eq!(report["echoed"][1]["ok"], true, "{report}");
    let exit = gw
        .wait_exit(Duration::from_secs(20))
        .expect("gatehouse stops on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", gw.log());
    assert!(asked.elapsed() < Duration::from_secs(20));

    let recs = upgraded_records(&gw, 1);
    assert_eq!(recs[0]["outcome"], "aborted", "{}", recs[0]);
    assert!(recs[0]["bytes_in"].as_u64().unwrap() > 1024, "{}", recs[0]);
}

#[test]
fn a_quiet_websocket_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let echo = WsEcho::start();
    let gw = builder()
        .with_upstream_url(&echo.url())
        .policy(POLICY)
        .server_extra("websocket_idle_timeout = \"2s\"")
        .start();
    let url = format!("ws://127.0.0.1:{}/live/feed", gw.port);
    let alice = format!("Bearer {}", gw.token("alice", &["dev"]));

    let mut busy = HeldWebSocket::open_chatty(
        &url,
        &[("Authorization", &alice)],
        Duration::from_millis(300),
    );
    let quiet = HeldWebSocket::open(&url, &[("Authorization", &alice)]);
    let opened = Instant::now();
    let report = quiet.closed(Duration::from_secs(15));
    let after = opened.elapsed();
    assert_eq!(report["opened"], true, "{report}");
    // Gatehouse closes the connections without a WebSocket close frame: 1006 at the client.
    assert_eq!(report["closed"]["code"], 1006, "{report}");
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}"
    );

    // Sending every 300 ms, the other relay has outlived the timeout and is still open.
    assert!(busy.is_open(), "the busy WebSocket was closed");
    // The gateway counts the quiet relay closed once its task has ended, which may be just after
    // the client saw the connection close.
    let waited = Instant::now();
    let metrics =
        gatehouse_testkit::wait_for("one tunnel left open", Duration::from_secs(15), || {
            let m = gw.metrics();
            (m.contains("gatehouse_tunnels_open 1") || waited.elapsed() > Duration::from_secs(10))
                .then_some(m)
        });
    assert!(metrics.contains("gatehouse_tunnels_open 1"), "{metrics}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(busy.is_open(), "the busy WebSocket was closed");
    drop(busy);

    let recs = upgraded_records(&gw, 2);
    let idle: Vec<_> = recs
        .iter()
        .filter(|r| r["outcome"] == "idle_timeout")
        .collect();
    assert_eq!(idle.len(), 1, "{recs:?}");
    assert!(
        idle[0]["duration_ms"].as_f64().unwrap() >= 2000.0,
        "{}",
        idle[0]
    );
    let other: Vec<_> = recs
        .iter()
        .filter(|r| r["outcome"] != "idle_timeout")
        .collect();
    assert_eq!(other.len(), 1, "{recs:?}");
    // The busy relay carried its messages: more than the 1 KiB echo check both ways.
    assert!(
        other[0]["bytes_in"].as_u64().unwrap() > idle[0]["bytes_in"].as_u64().unwrap(),
        "{recs:?}"
    );
    assert!(
        other[0]["duration_ms"].as_f64().unwrap() >= 4000.0,
        "{}",
        other[0]
    );
}

/// A WebSocket lives no longer than its caller's right to it: revoking the token that opened it
/// closes it within a couple of seconds, and so does the token's expiry; another caller's stays
/// open. The audit record says why.
#[test]
fn a_websocket_is_closed_when_its_token_is_revoked_or_expires() {
    let echo = WsEcho::start();
    let gw = gateway(&echo);
    let url = format!("ws://127.0.0.1:{}/live/feed", gw.port);
    let leaked = gw.token("alice", &["dev"]);
    let other = format!("Bearer {}", gw.token("alice", &["dev"]));
    let out = gw.cli(&[
        "token",
        "issue",
        "--subject",
        "carol",
        "--group",
        "dev",
        "--ttl",
        "3s",
    ]);
    assert!(out.status.success(), "{out:?}");
    let brief = format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim());

    let revoked = HeldWebSocket::open(&url, &[("Authorization", &format!("Bearer {leaked}"))]);
    let expiring = HeldWebSocket::open(&url, &[("Authorization", &brief)]);
    let mut kept = HeldWebSocket::open(&url, &[("Authorization", &other)]);
    let jti = {
        use base64::Engine as _;
        let payload = leaked.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    let out = gw.cli(&["revoke", "token", &jti, "--reason", "leaked"]);
    assert!(out.status.success(), "{out:?}");
    let asked = Instant::now();
    let report = revoked.closed(Duration::from_secs(10));
    assert_eq!(report["opened"], true, "{report}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let report = expiring.closed(Duration::from_secs(10));
    assert_eq!(report["opened"], true, "{report}");
    assert!(kept.is_open(), "another token's WebSocket was closed");
    drop(kept);
    let recs = upgraded_records(&gw, 3);
    let why: Vec<&str> = recs.iter().filter_map(|r| r["detail"].as_str()).collect();
    assert!(why.contains(&"relay closed: token_revoked"), "{recs:?}");
    assert!(
        why.contains(&"relay closed: credential_expired"),
        "{recs:?}"
    );
}
