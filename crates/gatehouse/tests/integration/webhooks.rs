//! The webhook relay through the real gateway: deliveries signed as Gitea signs them
//! (`services/webhook/deliver.go`: HMAC-SHA256 of the JSON, bare hex) are kept and relayed once
//! to a receiver that checks Gatehouse's Standard Webhooks signature; bad, unsigned, replayed and
//! oversized ones are refused and never relayed; a push event is marked with the pusher of the
//! real `git push` made through Gatehouse, or as having reached the forge around it; a receiver
//! that is down gets the delivery once it is back, even across a `kill -9` of the gateway; the
//! dead letters are retried and a delivery replayed with `gatehouse hooks`; two nodes on one
//! PostgreSQL relay each delivery once; a finished `workflow_job` ends the job's tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use gatehouse_testkit::{Idp, Postgres, TempDir, TestGateway, raw_http_with_body};
use serde_json::{Value, json};

use crate::common::{POLICY, bin, builder, clone_demo, commit_file, local_head, repos};
use crate::state_api::call;

pub(crate) const HOOK_SECRET: &str = "gitea-hook-secret";
/// Gatehouse's own Standard Webhooks secret for the receiver (32 bytes, base64).
const SIGNING: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether Gatehouse's Standard Webhooks signature holds.
    fn signed(&self) -> bool {
        let key = gatehouse_hooks::standard_key(SIGNING).unwrap();
        let (Some(id), Some(ts), Some(sig)) = (
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        ) else {
            return false;
        };
        let want = gatehouse_hooks::standard_signature(&key, id, ts.parse().unwrap(), &self.body);
        sig.split(' ').any(|s| s == want)
    }

    /// The claims of Gatehouse's assertion (signature not checked here: see `assertion_key`).
    fn assertion(&self) -> Value {
        let jwt = self.header("gatehouse-assertion").expect("no assertion");
        let mid = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(mid)
                .unwrap(),
        )
        .unwrap()
    }
}

/// A receiver on 127.0.0.1 answering every request with `status` (settable).
struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start(status: u16) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), status)
    }

    fn on(l: TcpListener, status: u16) -> Self {
        let port = l.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (status.clone(), got.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (s, g) = (s.clone(), g.clone());
                std::thread::spawn(move || serve(conn, &s, &g));
            }
        });
        Receiver { port, status, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until it got at least `n` requests (30 s at most).
    fn wait_for(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} request(s) received, {n} expected",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(conn: TcpStream, status: &AtomicU16, got: &Mutex<Vec<Got>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut headers = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or(0);
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.trim_end().split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let code = status.load(Ordering::SeqCst);
    got.lock().unwrap().push(Got { headers, body });
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// A push event as Gitea writes it (`json.MarshalIndent(p, "", "  ")`).
pub(crate) fn push_event(git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "ref": git_ref, "before": before, "after": after,
        "compare_url": "", "commits": [], "total_commits": 0,
        "repository": { "id": 1, "name": "hello", "full_name": "demo/hello",
                        "owner": { "login": "demo", "username": "demo" } },
        "pusher": { "login": "gitea-user", "username": "gitea-user" },
        "sender": { "login": "gitea-user", "username": "gitea-user" },
    }))
    .unwrap()
}

/// POSTs `body` to hook `name` as Gitea delivers it, signed with `secret` (no signature header
/// when `None`); returns the status and the answer.
pub(crate) fn deliver(
    gw: &TestGateway,
    name: &str,
    event: &str,
    id: &str,
    body: &[u8],
    secret: Option<&str>,
) -> (u16, String) {
    let sig = secret.map(|s| gatehouse_hooks::hex_hmac(s.as_bytes(), body));
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("X-Gitea-Delivery", id),
        ("X-Gitea-Event", event),
        ("X-Gitea-Event-Type", event),
        ("X-GitHub-Delivery", id),
        ("X-GitHub-Event", event),
    ];
    let hub = sig.as_ref().map(|s| format!("sha256={s}"));
    if let (Some(s), Some(hub)) = (&sig, &hub) {
        h.push(("X-Gitea-Signature", s));
        h.push(("X-Hub-Signature-256", hub));
    }
    raw_http_with_body(
        gw.port,
        "POST",
        &format!("/.gatehouse/hooks/{name}"),
        &h,
        body,
    )
}

pub(crate) fn hook_config(tmp: &TempDir, targets: &str, hook_extra: &str) -> String {
    let secret = tmp.path().join("hook.secret");
    std::fs::write(&secret, format!("{HOOK_SECRET}\n")).unwrap();
    let signing = tmp.path().join("signing.secret");
    std::fs::write(&signing, SIGNING).unwrap();
    format!(
        "[webhooks]\n[[webhooks.hooks]]\nname = \"gitea\"\nkind = \"gitea\"\nsecrets = [{{ file = \"{}\" }}]\nmax_body = \"64KiB\"\n{hook_extra}{}",
        secret.display(),
        targets.replace("SIGNING_FILE", &signing.display().to_string())
    )
}

pub(crate) fn target(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[webhooks.hooks.targets]]\nname = \"{name}\"\nurl = \"{url}\"\nsigning_secret = {{ file = \"SIGNING_FILE\" }}\nretry_min = \"200ms\"\nretry_max = \"1s\"\n{extra}"
    )
}

const HOOK_POLICY: &str = r#"
@id("hook-ops")
permit(principal in Gatehouse::Group::"ops",
       action in [Gatehouse::Action::"hook:read", Gatehouse::Action::"hook:replay"], resource);
"#;

fn gateway(tmp: &TempDir, webhooks: &str) -> TestGateway {
    let (root, _) = repos(tmp);
    builder()
        .with_builtin_upstream(&root)
        .policy(&format!("{POLICY}\n{HOOK_POLICY}"))
        .extra(webhooks)
        .start()
}

fn hooks_cli(gw: &TestGateway, token: &str, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("hooks")
        .args(args)
        .args(["--server", &gw.url()])
        .env("GATEHOUSE_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit_lines(gw: &TestGateway, pick: impl Fn(&Value) -> bool, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = std::fs::read_to_string(gw.audit_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| pick(r))
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_signed_delivery_is_relayed_once_marked_with_its_pusher_and_bad_ones_never() {
    let tmp = TempDir::new("hooks-relay");
    let rx = Receiver::start(204);
    let other = Receiver::start(200);
    let gw = gateway(
        &tmp,
        &hook_config(
            &tmp,
            &format!(
                "{}{}",
                target("deploy", &rx.url(), "events = [\"push\"]\n"),
                target("issues-only", &other.url(), "events = [\"issues\"]\n"),
            ),
            "",
        ),
    );
    let bare = tmp.path().join("repos/demo/hello.git");

    // Alice pushes through Gatehouse.
    let alice = gw.token("alice", &["dev"]);
    let (git, work) = clone_demo(tmp.path(), &gw.url(), &alice, "alice");
    let before = local_head(&git, &work);
    commit_file(&git, &work, "a.txt", "through the gateway\n");
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let after = local_head(&git, &work);
    // The forge's push event for that update.
    let body = push_event("refs/heads/main", &before, &after);
    let (status, answer) = deliver(&gw, "gitea", "push", "d-1", &body, Some(HOOK_SECRET));
    assert_eq!(status, 202, "{answer}");

    let got = rx.wait_for(1);
    let d = &got[0];
    assert_eq!(d.body, body, "the exact bytes the forge signed");
    assert!(d.signed(), "Gatehouse's Standard Webhooks signature: {d:?}");
    assert_eq!(d.header("x-gitea-event"), Some("push"));
    assert_eq!(d.header("x-gitea-delivery"), Some("d-1"));
    assert_eq!(
        d.header("x-gitea-signature"),
        None,
        "the forge's secret's MAC stays"
    );
    assert_eq!(d.header("x-hub-signature-256"), None);
    let a = d.assertion();
    assert_eq!(a["token_use"], "webhook");
    assert_eq!(a["push"]["seen"], true, "{a}");
    assert_eq!(a["push"]["pusher"]["name"], "alice", "{a}");
    assert_eq!(a["push"]["confirmed"], true, "{a}");
    assert_eq!(a["source_delivery"], "d-1");
    assert_eq!(a["repository"], "demo/hello");
    assert!(a["body_sha256"].as_str().is_some_and(|s| s.len() == 64));

    // The same commit pushed around the gateway, straight into the repository on disk.
    commit_file(&git, &work, "b.txt", "around the gateway\n");
    git.ok(
        &work,
        &[
            "push",
            "-q",
            &bare.to_string_lossy(),
            "HEAD:refs/heads/main",
        ],
    );
    let sneaked = local_head(&git, &work);
    let body2 = push_event("refs/heads/main", &after, &sneaked);
    assert_eq!(
        deliver(&gw, "gitea", "push", "d-2", &body2, Some(HOOK_SECRET)).0,
        202
    );
    let got = rx.wait_for(2);
    let a = got[1].assertion();
    assert_eq!(a["push"]["seen"], false, "{a}");
    assert!(a["push"].get("pusher").is_none(), "{a}");

    // Refused, and never relayed: a replay, a wrong secret, no signature, a changed body,
    // too large, an unknown hook, a GET.
    let (s, a) = deliver(&gw, "gitea", "push", "d-1", &body, Some(HOOK_SECRET));
    assert_eq!(s, 409, "replayed: {a}");
    assert!(a.contains("delivery_replayed"), "{a}");
    let (s, a) = deliver(&gw, "gitea", "push", "d-3", &body, Some("wrong"));
    assert_eq!(s, 403, "{a}");
    assert!(a.contains("signature_invalid"), "{a}");
    let (s, a) = deliver(&gw, "gitea", "push", "d-4", &body, None);
    assert_eq!(s, 403, "{a}");
    assert!(a.contains("signature_missing"), "{a}");
    let mut changed = body.clone();
    changed.extend_from_slice(b" ");
    let sig = gatehouse_hooks::hex_hmac(HOOK_SECRET.as_bytes(), &body);
    let (s, _) = raw_http_with_body(
        gw.port,
        "POST",
        "/.gatehouse/hooks/gitea",
        &[
            ("X-Gitea-Delivery", "d-5"),
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Signature", &sig),
        ],
        &changed,
    );
    assert_eq!(s, 403);
    let big = vec![b' '; 65 * 1024];
    let (s, a) = deliver(&gw, "gitea", "push", "d-6", &big, Some(HOOK_SECRET));
    assert_eq!(s, 413, "{a}");
    let (s, _) = deliver(&gw, "nope", "push", "d-7", &body, Some(HOOK_SECRET));
    assert_eq!(s, 404);
    let (s, _) = gatehouse_testkit::raw_http(gw.port, "GET", "/.gatehouse/hooks/gitea", &[]);
    assert_eq!(s, 405);
    // The delivery id is not signed: the same signed body under a new id is a replay too (so
    // Gitea's Redeliver of a delivery Gatehouse already kept is refused: it is relayed anyway).
    let (s, a) = deliver(&gw, "gitea", "push", "d-8", &body, Some(HOOK_SECRET));
    assert_eq!(s, 409, "{a}");
    // Headers that disagree with the verified event (unsigned, but relayed and read).
    let (s, a) = raw_http_with_body(
        gw.port,
        "POST",
        "/.gatehouse/hooks/gitea",
        &[
            ("X-Gitea-Delivery", "d-10"),
            ("X-Gitea-Event", "push"),
            ("X-GitHub-Event", "workflow_job"),
            (
                "X-Gitea-Signature",
                &gatehouse_hooks::hex_hmac(HOOK_SECRET.as_bytes(), &body2),
            ),
        ],
        &body2,
    );
    assert_eq!(s, 400, "{a}");
    assert!(a.contains("headers_inconsistent"), "{a}");
    // A form delivery (Gitea's other content type): the HMAC covers the JSON in its payload
    // field; a form with a second payload field is refused.
    let issue = serde_json::to_vec_pretty(&json!({
        "action": "opened", "issue": { "number": 1, "title": "50% off & more" },
        "repository": { "full_name": "demo/hello" }, "sender": { "login": "bob" },
    }))
    .unwrap();
    let form = format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(&issue).collect::<String>()
    );
    let form_sig = gatehouse_hooks::hex_hmac(HOOK_SECRET.as_bytes(), &issue);
    let post_form = |id: &str, body: &[u8]| {
        raw_http_with_body(
            gw.port,
            "POST",
            "/.gatehouse/hooks/gitea",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Gitea-Delivery", id),
                ("X-Gitea-Event", "issues"),
                ("X-Gitea-Signature", &form_sig),
            ],
            body,
        )
    };
    let (s, a) = post_form("d-11", format!("{form}&payload=%7B%7D").as_bytes());
    assert_eq!(s, 400, "{a}");
    assert!(a.contains("form_malformed"), "{a}");
    let (s, a) = post_form("d-12", form.as_bytes());
    assert_eq!(s, 202, "{a}");
    let issues = other.wait_for(1);
    assert_eq!(
        issues[0].body,
        form.as_bytes(),
        "the form, as the forge sent it"
    );
    assert_eq!(
        issues[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(issues[0].signed());
    assert_eq!(issues[0].assertion()["sender"], "bob");

    let got = rx.wait_for(2);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(rx.got().len(), 2, "relayed exactly once each: {got:?}");
    let ids: Vec<&str> = got.iter().filter_map(|g| g.header("webhook-id")).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|i| i.starts_with("whd_")), "{ids:?}");
    assert_eq!(
        other.got().len(),
        1,
        "the push events are filtered out by event"
    );

    // Audited: each accepted and refused delivery, and each relay attempt.
    let accepted = audit_lines(
        &gw,
        |r| r["action"] == "hook:deliver" && r["decision"] == "allow",
        3,
    );
    assert_eq!(accepted.len(), 3);
    assert_eq!(accepted[2]["hook"]["event"], "issues");
    assert_eq!(accepted[0]["hook"]["pusher"], "alice", "{}", accepted[0]);
    assert_eq!(accepted[0]["hook"]["push_seen"], true);
    assert_eq!(accepted[1]["hook"]["push_seen"], false);
    let refused = audit_lines(
        &gw,
        |r| r["action"] == "hook:deliver" && r["decision"] == "deny",
        6,
    );
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    for want in [
        "delivery_replayed",
        "signature_invalid",
        "signature_missing",
        "payload_too_large",
        "not_found",
        "method_not_allowed",
    ] {
        assert!(reasons.contains(&want), "{want}: {reasons:?}");
    }
    let relayed = audit_lines(
        &gw,
        |r| r["event"] == "hook_relay" && r["hook"]["outcome"] == "delivered",
        3,
    );
    assert_eq!(relayed.len(), 3);
    assert_eq!(relayed[0]["hook"]["target"], "gitea/deploy");
    let replayed = refused
        .iter()
        .find(|r| r["reason"] == "delivery_replayed")
        .unwrap();
    assert_eq!(replayed["hook"]["event"], "push", "{replayed}");
    let text = std::fs::read_to_string(gw.audit_path()).unwrap();
    assert!(
        !text.contains(HOOK_SECRET),
        "the hook's secret reached the audit log"
    );

    // A branch created, then deleted, through Gatehouse: the deletion's push event (GitHub and
    // Gitea send one for a tag) names the pusher too.
    git.ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/feature"]);
    let feature = local_head(&git, &work);
    git.ok(&work, &["push", "-q", "origin", ":refs/heads/feature"]);
    let gone = push_event("refs/heads/feature", &feature, &"0".repeat(40));
    assert_eq!(
        deliver(&gw, "gitea", "push", "d-13", &gone, Some(HOOK_SECRET)).0,
        202
    );
    let a = rx.wait_for(3)[2].assertion();
    assert_eq!(a["push"]["seen"], true, "{a}");
    assert_eq!(a["push"]["pusher"]["name"], "alice", "{a}");
}

#[test]
fn a_standard_webhooks_sender_is_verified_and_relayed_under_gatehouses_own_signature() {
    let tmp = TempDir::new("hooks-standard");
    let rx = Receiver::start(200);
    let sender_secret = "whsec_c2VuZGVyLXNlY3JldC1vZi0zMi1ieXRlcy1sb25nISE=";
    std::fs::write(tmp.path().join("sender.whsec"), sender_secret).unwrap();
    let signing = tmp.path().join("signing.secret");
    std::fs::write(&signing, SIGNING).unwrap();
    let gw = gateway(
        &tmp,
        &format!(
            "[webhooks]\n[[webhooks.hooks]]\nname = \"billing\"\nkind = \"standard\"\nsecrets = [{{ file = \"{}\" }}]\ntolerance = \"5m\"\n{}",
            tmp.path().join("sender.whsec").display(),
            target("ledger", &rx.url(), "").replace("SIGNING_FILE", &signing.display().to_string())
        ),
    );
    let key = gatehouse_hooks::standard_key(sender_secret).unwrap();
    let body = br#"{"type":"invoice.paid","data":{"id":"in_1"}}"#;
    let now = crate::secrets::now();
    let send = |id: &str, ts: i64, sig: &str| {
        raw_http_with_body(
            gw.port,
            "POST",
            "/.gatehouse/hooks/billing",
            &[
                ("Content-Type", "application/json"),
                ("webhook-id", id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", sig),
                ("X-GitHub-Event", "push"),
            ],
            body,
        )
    };
    let good = gatehouse_hooks::standard_signature(&key, "msg_1", now, body);
    let (s, a) = send("msg_1", now, &format!("v1,bm90LWl0 {good}"));
    assert_eq!(s, 202, "{a}");
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, body);
    assert!(got[0].signed(), "re-signed with the target's secret");
    assert_eq!(
        got[0].header("x-github-event"),
        None,
        "a sender's X-* headers are not relayed"
    );
    assert_eq!(got[0].assertion()["event"], "invoice.paid");
    // The same message again, an old one, a forged one.
    assert_eq!(send("msg_1", now, &good).0, 409);
    let old = gatehouse_hooks::standard_signature(&key, "msg_2", now - 600, body);
    assert_eq!(send("msg_2", now - 600, &old).0, 403);
    let forged =
        gatehouse_hooks::standard_signature(b"not the secret, 24 bytes+", "msg_3", now, body);
    assert_eq!(send("msg_3", now, &forged).0, 403);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.got().len(), 1);
}

#[test]
fn a_target_down_gets_each_delivery_once_it_is_back_even_across_a_kill_9() {
    let tmp = TempDir::new("hooks-down");
    // The target is down: nothing listens on its port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut gw = gateway(
        &tmp,
        &hook_config(&tmp, &target("deploy", &url, "ordered = true\n"), ""),
    );
    let ops = gw.token("oncall", &["ops"]);
    let zero = "0".repeat(40);
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = push_event("refs/heads/main", &zero, &format!("{i}").repeat(40));
        let (s, answer) = deliver(
            &gw,
            "gitea",
            "push",
            &format!("u-{i}"),
            &body,
            Some(HOOK_SECRET),
        );
        assert_eq!(s, 202, "{answer}");
        let doc: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        ids.push(doc["delivery"].as_str().unwrap().to_owned());
    }
    // Failing and retried; the first of the repository's deliveries first (ordered).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = hooks_cli(
            &gw,
            &ops,
            &["status", "--hook", "gitea", "--state", "pending"],
        );
        let tried = s
            .lines()
            .any(|l| l.starts_with(ids[0].as_str()) && l.contains("connection failed"));
        if tried || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("gitea/deploy\tpending\t3"), "{status}");
    assert!(
        status
            .lines()
            .filter(|l| l.starts_with("whd_") && !l.starts_with(ids[0].as_str()))
            .all(|l| l.contains("\t0\t-")),
        "the later ones wait for the first: {status}"
    );

    // The gateway dies while the target is down; the deliveries are in the store. The target
    // comes back after the restart.
    gw.kill_and_restart();
    let rx = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), 200);
    rx.wait_for(3);
    std::thread::sleep(Duration::from_millis(1500));
    let got = rx.got();
    let order: Vec<&str> = got.iter().filter_map(|g| g.header("webhook-id")).collect();
    assert_eq!(order, ids, "each once after recovery, in order");
    assert!(got.iter().all(Got::signed));
}

#[test]
fn dead_letters_are_listed_retried_and_a_delivery_replayed_with_the_cli() {
    let tmp = TempDir::new("hooks-dead");
    let rx = Receiver::start(410);
    let gw = gateway(
        &tmp,
        &hook_config(&tmp, &target("deploy", &rx.url(), ""), ""),
    );
    let ops = gw.token("oncall", &["ops"]);
    let alice = gw.token("alice", &["dev"]);
    let body = push_event("refs/heads/main", &"0".repeat(40), &"1".repeat(40));
    assert_eq!(
        deliver(&gw, "gitea", "push", "g-1", &body, Some(HOOK_SECRET)).0,
        202
    );
    rx.wait_for(1);
    // 410 Gone: given up at once, a dead letter.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let s = hooks_cli(&gw, &ops, &["status", "--state", "dead"]);
        if s.contains("\tdead\t") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dead.contains("gitea/deploy\tdead\t1"), "{dead}");
    let id = dead
        .lines()
        .find(|l| l.starts_with("whd_"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_owned();
    // Reading or retrying needs hook:read / hook:replay.
    let (s, _) = call(gw.port, "GET", "/.gatehouse/deliveries", &alice, None).unwrap();
    assert_eq!(s, 403);
    let (s, _) = call(
        gw.port,
        "POST",
        "/.gatehouse/deliveries:retry",
        &alice,
        None,
    )
    .unwrap();
    assert_eq!(s, 403);

    rx.status.store(200, Ordering::SeqCst);
    assert_eq!(hooks_cli(&gw, &ops, &["retry"]).trim(), "1 sent again");
    let got = rx.wait_for(2);
    assert_eq!(
        got[1].header("webhook-id"),
        Some(id.as_str()),
        "its same id"
    );
    let s = hooks_cli(&gw, &ops, &["status", "--delivery", &id]);
    assert!(s.contains("\tdelivered\t"), "{s}");
    // Nothing dead is left to retry.
    assert_eq!(hooks_cli(&gw, &ops, &["retry"]).trim(), "0 sent again");
    // A replay sends a delivered one again, under the same id.
    assert_eq!(
        hooks_cli(&gw, &ops, &["replay", &id]).trim(),
        "1 sent again"
    );
    let got = rx.wait_for(3);
    assert_eq!(got[2].header("webhook-id"), Some(id.as_str()));
    assert!(got[2].signed());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.got().len(), 3);
    let json_status = hooks_cli(&gw, &ops, &["status", "--json"]);
    let doc: Value = serde_json::from_str(&json_status).unwrap();
    // A retry or replay starts the count (and the backoff) again.
    assert_eq!(doc["deliveries"][0]["attempts"], 1, "{doc}");
    assert_eq!(doc["deliveries"][0]["state"], "delivered", "{doc}");
}

#[test]
fn two_nodes_on_one_postgresql_relay_each_delivery_once() {
    let pg = Postgres::shared();
    let url = pg.create_database("hooks_two_nodes");
    let tmp = TempDir::new("hooks-two-nodes");
    let (root, _) = repos(&tmp);
    let url_file = tmp.path().join("store-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let rx = Receiver::start(200);
    let cfg = format!(
        "[store]\nurl = {{ file = \"{}\" }}\n\n{}",
        url_file.display(),
        hook_config(
            &tmp,
            &target("deploy", &rx.url(), "max_in_flight = 8\n"),
            ""
        )
    );
    let a = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&cfg)
        .start();
    let b = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&cfg)
        .start();
    let n = 40;
    for i in 0..n {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = push_event("refs/heads/main", &"0".repeat(40), &format!("{i:040x}"));
        assert_eq!(
            deliver(
                node,
                "gitea",
                "push",
                &format!("p-{i}"),
                &body,
                Some(HOOK_SECRET)
            )
            .0,
            202
        );
    }
    // One delivery id sent to both nodes: the second is a replay.
    let body = push_event("refs/heads/main", &"0".repeat(40), &"3".repeat(40));
    assert_eq!(
        deliver(&a, "gitea", "push", "p-0", &body, Some(HOOK_SECRET)).0,
        409
    );
    assert_eq!(
        deliver(&b, "gitea", "push", "p-1", &body, Some(HOOK_SECRET)).0,
        409
    );
    rx.wait_for(n);
    std::thread::sleep(Duration::from_millis(1500));
    let got = rx.got();
    let mut ids: Vec<&str> = got.iter().filter_map(|g| g.header("webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (n, n), "each delivered once");
    // Both nodes' audit logs together hold one relay record per delivery.
    let count = |gw: &TestGateway| {
        std::fs::read_to_string(gw.audit_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["event"] == "hook_relay")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&a) + count(&b) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&a) + count(&b), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_workflow_job_ends_the_jobs_tokens() {
    let tmp = TempDir::new("hooks-jobs");
    let (root, _) = repos(&tmp);
    let idp = Idp::shared();
    let secret = tmp.path().join("gh.secret");
    std::fs::write(&secret, HOOK_SECRET).unwrap();
    let gw = builder()
        .with_builtin_upstream(&root)
        .with_idp_extra(idp, "workload = \"github-actions\"\n")
        .policy(&format!(
            "{POLICY}\n@id(\"jobs-read\")\npermit(principal, action == Gatehouse::Action::\"git:read\", resource in Gatehouse::Owner::\"demo\") when {{ principal has workload }};\n"
        ))
        .extra(&format!(
            "[webhooks]\n[[webhooks.hooks]]\nname = \"github\"\nkind = \"github\"\nsecrets = [{{ file = \"{}\" }}]\nend_jobs = true\njob_issuer = \"{}\"\n",
            secret.display(),
            idp.issuer()
        ))
        .start();
    let claims = crate::secrets::job_claims_for(idp, "prod", "4242");
    let token = idp.sign(claims, "RS256", None).await;
    let refs = "/demo/hello.git/info/refs?service=git-upload-pack";
    let get = |t: &str| call(gw.port, "GET", refs, t, None).map_or(0, |(s, _)| s);
    assert_eq!(get(&token), 200);
    // GitHub signs the body as sent: `X-Hub-Signature-256: sha256=<hex>`.
    let event = serde_json::to_vec(&json!({
        "action": "completed",
        "workflow_job": { "id": 4242, "run_id": 77, "run_attempt": 1, "status": "completed",
                          "conclusion": "success", "head_sha": "e5b6f8c1" },
        "repository": { "full_name": "demo/hello" },
        "sender": { "login": "octocat" },
    }))
    .unwrap();
    let sig = format!(
        "sha256={}",
        gatehouse_hooks::hex_hmac(HOOK_SECRET.as_bytes(), &event)
    );
    let (s, a) = raw_http_with_body(
        gw.port,
        "POST",
        "/.gatehouse/hooks/github",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-GitHub-Event", "workflow_job"),
            ("X-Hub-Signature-256", &sig),
        ],
        &event,
    );
    assert_eq!(s, 202, "{a}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&token) != 401 {
        assert!(
            Instant::now() < deadline,
            "the job's token still works 10 s after the job completed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = audit_lines(
        &gw,
        |r| r["event"] == "hook_relay" && r["hook"]["target"] == "github/@end-jobs",
        1,
    );
    assert_eq!(ended[0]["hook"]["outcome"], "delivered", "{:?}", ended);
}

/// A hook's secret held by the secrets broker: the gateway starts before it exists (the CLI
/// that puts it talks to the gateway), takes it up without a restart (`webhooks.secret_refresh`),
/// and a new version replaces the old one, which is then refused.
#[test]
fn a_hook_secret_from_the_broker_is_taken_up_and_rotated_without_a_restart() {
    let tmp = TempDir::new("hooks-broker-secret");
    // The secret the forge used so far, in a file, beside the broker's.
    let old_file = tmp.path().join("old-hook.secret");
    std::fs::write(&old_file, "old-file-secret\n").unwrap();
    let gw = crate::secrets::gateway_with(
        &tmp,
        "",
        &format!(
            "\n[webhooks]\nsecret_refresh = \"1s\"\n[[webhooks.hooks]]\nname = \"gitea\"\nkind = \"gitea\"\nsecrets = [{{ file = \"{}\" }}, {{ secret = \"ops/hooks/gitea\" }}]\n",
            old_file.display()
        ),
    );
    let ops = gw.token("oncall", &["ops"]);
    let zero = "0".repeat(40);
    let mut n = 0;
    let mut send = |secret: &str| {
        n += 1;
        let body = push_event("refs/heads/main", &zero, &format!("{n:040x}"));
        deliver(&gw, "gitea", "push", &format!("b-{n}"), &body, Some(secret)).0
    };
    // The broker's secret does not exist yet: the file's verifies, nothing else.
    assert_eq!(send("first-secret"), 403);
    assert_eq!(send("old-file-secret"), 202);
    crate::secrets::ok(&crate::secrets::secret_cli(
        &gw,
        &ops,
        &["put", "ops/hooks/gitea"],
        b"first-secret\n",
    ));
    let within = |what: &str, send: &mut dyn FnMut() -> u16, want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = send();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {got}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    within("the new secret", &mut || send("first-secret"), 202);
    // Rotated in the broker: the new value is taken up, the old one refused.
    crate::secrets::ok(&crate::secrets::secret_cli(
        &gw,
        &ops,
        &["put", "ops/hooks/gitea"],
        b"second-secret",
    ));
    within("the rotated secret", &mut || send("second-secret"), 202);
    assert_eq!(send("first-secret"), 403);
    // The old file removed: withdrawn at the next read, the broker's still accepted.
    assert_eq!(send("old-file-secret"), 202);
    std::fs::remove_file(&old_file).unwrap();
    within("the withdrawn file", &mut || send("old-file-secret"), 403);
    assert_eq!(send("second-secret"), 202);
    let log = gw.log();
    assert!(
        !log.contains("first-secret")
            && !log.contains("second-secret")
            && !log.contains("old-file-secret"),
        "a hook secret reached the log"
    );
}
