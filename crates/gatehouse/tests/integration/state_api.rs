//! Gatehouse's own state over HTTP (`/.gatehouse/envs`, `/.gatehouse/revocations`), each call a
//! policy question, and what a `kill -9` in the middle of a burst of writes does to them.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gatehouse_testkit::{TempDir, TestGateway, raw_http};
use serde_json::{Value, json};

use crate::common::{POLICY, builder, repos};

const REFS: &str = "/demo/hello.git/info/refs?service=git-upload-pack";

/// ops may do everything with Gatehouse's state; ci may create environments; anyone may end
/// the environments they created.
const STATE_POLICY: &str = r#"
@id("ops-state")
permit(principal in Gatehouse::Group::"ops",
       action in [Gatehouse::Action::"env:create", Gatehouse::Action::"env:end",
                  Gatehouse::Action::"revocation:create", Gatehouse::Action::"revocation:lift",
                  Gatehouse::Action::"revocation:read"],
       resource);
@id("ci-envs")
permit(principal in Gatehouse::Group::"ci", action == Gatehouse::Action::"env:create", resource);
@id("own-envs")
permit(principal is Gatehouse::ServiceAccount, action == Gatehouse::Action::"env:end", resource)
  when { resource.created_by == principal.username && resource.created_by_kind == "service" };
"#;

/// One request on a fresh connection; `None` when the gateway cannot be reached or the answer
/// is cut off (it died mid-request).
pub(crate) fn call(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Some((status, json))
}

fn jti(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn gateway(name: &str) -> (TempDir, TestGateway) {
    gateway_with(name, "")
}

fn gateway_with(name: &str, extra: &str) -> (TempDir, TestGateway) {
    let tmp = TempDir::new(name);
    let (root, _) = repos(&tmp);
    let gw = builder()
        .with_builtin_upstream(&root)
        .policy(&format!("{POLICY}\n{STATE_POLICY}"))
        .extra(extra)
        .start();
    (tmp, gw)
}

#[test]
fn environments_and_revocations_over_the_api_are_decided_by_the_policy() {
    let (_tmp, gw) = gateway("state-api");
    let ops = gw.token("oncall", &["ops"]);
    let ci = gw.token("ci-runner", &["ci"]);
    let dev = gw.token("alice", &["dev"]);
    let p = gw.port;

    // ci creates an environment and may end it; alice may do neither.
    let (status, env) = call(
        p,
        "POST",
        "/.gatehouse/envs",
        &ci,
        Some(&json!({"name": "pr-1", "ttl": "1h"})),
    )
    .unwrap();
    assert_eq!(status, 201, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("env-"), "{env}");
    assert_eq!(env["created_by"], "service:ci-runner");
    assert_eq!(
        call(
            p,
            "POST",
            "/.gatehouse/envs",
            &dev,
            Some(&json!({"name": "x"}))
        )
        .unwrap()
        .0,
        403
    );
    assert_eq!(
        call(p, "DELETE", &format!("/.gatehouse/envs/{id}"), &dev, None)
            .unwrap()
            .0,
        403
    );
    let (status, seen) = call(p, "GET", &format!("/.gatehouse/envs/{id}"), &ci, None).unwrap();
    assert_eq!((status, seen["name"].as_str()), (200, Some("pr-1")));
    let (status, ended) = call(p, "DELETE", &format!("/.gatehouse/envs/{id}"), &ci, None).unwrap();
    assert_eq!(status, 200, "{ended}");
    assert!(ended["ended_at"].is_string(), "{ended}");
    assert_eq!(
        call(p, "DELETE", "/.gatehouse/envs/env-nope", &ops, None)
            .unwrap()
            .0,
        404
    );
    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "ttl": "31d"}),
        json!({"ttl": "1h"}),
        json!([1]),
    ] {
        let (status, doc) = call(p, "POST", "/.gatehouse/envs", &ops, Some(&bad)).unwrap();
        assert_eq!(status, 400, "{bad}: {doc}");
        assert_eq!(doc["status"], 400, "RFC 9457: {doc}");
    }

    // ops revokes alice's token; it is refused within a second; then lifted.
    assert_eq!(
        raw_http(
            p,
            "GET",
            REFS,
            &[("Authorization", &format!("Bearer {dev}"))]
        )
        .0,
        200
    );
    let (status, doc) = call(
        p,
        "POST",
        "/.gatehouse/revocations",
        &ops,
        Some(&json!({"kind": "token", "value": jti(&dev), "reason": "left the team"})),
    )
    .unwrap();
    assert_eq!(status, 201, "{doc}");
    let start = Instant::now();
    while raw_http(
        p,
        "GET",
        REFS,
        &[("Authorization", &format!("Bearer {dev}"))],
    )
    .0 != 401
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not refused within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, list) = call(p, "GET", "/.gatehouse/revocations", &ops, None).unwrap();
    assert_eq!(status, 200);
    assert!(
        list["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["value"] == jti(&dev) && r["by"] == "service:oncall"),
        "{list}"
    );
    assert_eq!(
        call(p, "GET", "/.gatehouse/revocations", &ci, None)
            .unwrap()
            .0,
        403
    );
    let (status, _) = call(
        p,
        "DELETE",
        &format!("/.gatehouse/revocations/token/{}", jti(&dev)),
        &ops,
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let start = Instant::now();
    while raw_http(
        p,
        "GET",
        REFS,
        &[("Authorization", &format!("Bearer {dev}"))],
    )
    .0 != 200
    {
        assert!(start.elapsed() < Duration::from_secs(1), "lift not seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        call(
            p,
            "DELETE",
            "/.gatehouse/revocations/token/never",
            &ops,
            None
        )
        .unwrap()
        .0,
        404
    );
    for bad in [
        json!({"kind": "nonsense", "value": "x"}),
        json!({"kind": "ssh-cert", "value": "12ab"}),
        json!({"kind": "token"}),
    ] {
        assert_eq!(
            call(p, "POST", "/.gatehouse/revocations", &ops, Some(&bad))
                .unwrap()
                .0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        call(p, "GET", "/.gatehouse/revocations", "not-a-token", None)
            .unwrap()
            .0,
        401
    );

    // Each call is on record with its action and decision.
    let audit = gw.audit_when("the state API's records", |a| {
        a.contains("\"revocation:lift\"") && a.contains("\"env:create\"")
    });
    assert!(audit.contains("\"env:end\""), "{audit}");
}

/// A burst of revocations through one node, the node killed with SIGKILL in the middle: every
/// revocation it acknowledged is in the store after the restart, on SQLite and on PostgreSQL.
#[test]
fn a_node_killed_mid_burst_keeps_every_acknowledged_write() {
    let (_tmp, gw) = gateway("state-kill9");
    killed_mid_burst(gw);
    let pg = gatehouse_testkit::Postgres::shared();
    let url = pg.create_database("state_kill9");
    let dir = TempDir::new("state-kill9-pg-url");
    std::fs::write(dir.path().join("url"), url).unwrap();
    let (_tmp, gw) = gateway_with(
        "state-kill9-pg",
        &format!(
            "[store]\nurl = {{ file = \"{}\" }}\n",
            dir.path().join("url").display()
        ),
    );
    killed_mid_burst(gw);
}

fn killed_mid_burst(mut gw: TestGateway) {
    let ops = gw.token("oncall", &["ops"]);
    let port = gw.port;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (ops, acked) = (ops.clone(), acked.clone());
        writers.push(std::thread::spawn(move || {
            for i in 0..200 {
                let value = format!("burst-{w}-{i}");
                match call(
                    port,
                    "POST",
                    "/.gatehouse/revocations",
                    &ops,
                    Some(&json!({"kind": "token", "value": value})),
                ) {
                    Some((201, _)) => acked.lock().unwrap().push(value),
                    // The node is gone: stop.
                    None | Some((0, _)) => return,
                    Some((status, doc)) => panic!("{status}: {doc}"),
                }
            }
        }));
    }
    // Kill it once some writes are acknowledged and more are in flight.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the burst did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    gw.kill_and_restart();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40 && acked.len() < 800,
        "{} acknowledged",
        acked.len()
    );
    let list = gw.cli(&["revoke", "list"]);
    assert!(list.status.success(), "{list:?}");
    let list = String::from_utf8_lossy(&list.stdout);
    let stored: std::collections::HashSet<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|v| !stored.contains(v.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    // And the restarted node serves.
    assert_eq!(
        call(gw.port, "GET", "/.gatehouse/revocations", &ops, None)
            .unwrap()
            .0,
        200
    );
}

/// A node whose PostgreSQL refuses it is not ready (`/readyz` says `store: false`) and keeps
/// refusing what it knew was revoked; when the database is back, it is ready again.
#[test]
fn a_node_without_its_store_is_not_ready_and_keeps_its_revocations() {
    let pg = gatehouse_testkit::Postgres::shared();
    let url = pg.create_database("readyz_store");
    let dir = TempDir::new("readyz-store-url");
    std::fs::write(dir.path().join("url"), url).unwrap();
    let (_tmp, gw) = gateway_with(
        "readyz-store",
        &format!(
            "[store]\nurl = {{ file = \"{}\" }}\n",
            dir.path().join("url").display()
        ),
    );
    let ready = || raw_http(gw.admin_port, "GET", "/readyz", &[]);
    let (status, body) = ready();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"store\":true"), "{body}");
    let dev = gw.token("alice", &["dev"]);
    let out = gw.cli(&["revoke", "token", &jti(&dev)]);
    assert!(out.status.success(), "{out:?}");
    let bearer = format!("Bearer {dev}");
    let start = Instant::now();
    while raw_http(gw.port, "GET", REFS, &[("Authorization", &bearer)]).0 != 401 {
        assert!(start.elapsed() < Duration::from_secs(1), "not refused");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The database turns the gateway away.
    pg.psql(
        "postgres",
        "ALTER DATABASE readyz_store WITH ALLOW_CONNECTIONS false",
    )
    .unwrap();
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'readyz_store'",
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let (status, body) = ready();
        if status == 503 {
            assert!(body.contains("\"store\":false"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        raw_http(gw.port, "GET", REFS, &[("Authorization", &bearer)]).0,
        401,
        "a known revocation stays in force while the store is gone"
    );
    let other = gw.token("alice", &["dev"]);
    assert_eq!(
        raw_http(
            gw.port,
            "GET",
            REFS,
            &[("Authorization", &format!("Bearer {other}"))]
        )
        .0,
        200,
        "tokens are still served without the store"
    );

    pg.psql(
        "postgres",
        "ALTER DATABASE readyz_store WITH ALLOW_CONNECTIONS true",
    )
    .unwrap();
    let start = Instant::now();
    while ready().0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(15), "not ready again");
        std::thread::sleep(Duration::from_millis(100));
    }
}
