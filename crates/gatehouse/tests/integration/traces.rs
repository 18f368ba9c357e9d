//! `[traces]`: each request through the real gateway reaches an OTLP/HTTP receiver as the span
//! it was, in the trace the caller started and with the span id the upstream was told in
//! `traceparent`. The receiver is a STAND-IN for an OpenTelemetry collector
//! (`gatehouse_testkit::OtlpCollectorStandIn`, decoding with the OpenTelemetry project's own message
//! definitions): no collector can be installed here.
//!
//! A binary built without the `otlp` feature refuses such a config, at `check` and at `serve`.

use std::process::Command;
#[cfg(feature = "otlp")]
use std::time::Duration;

use gatehouse_testkit::{OtlpCollectorStandIn, TempDir};

use crate::common::{POLICY, bin, builder, repos};

fn traces_toml(collector: &OtlpCollectorStandIn, extra: &str) -> String {
    format!(
        "[traces]\nendpoint = \"{}\"\nservice_name = \"gatehouse-it\"\n{extra}",
        collector.url()
    )
}

#[cfg(feature = "otlp")]
fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split(';')
        .find_map(|kv| kv.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[cfg(feature = "otlp")]
#[test]
fn each_request_is_a_span_of_the_callers_trace_with_the_id_the_forge_was_told() {
    use gatehouse_testkit::GitHttpServer;

    use crate::common::echo;

    let tmp = TempDir::new("traces");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let collector = OtlpCollectorStandIn::start();
    let secret = tmp.path().join("otlp-key");
    std::fs::write(&secret, "key-from-a-file\n").unwrap();
    let mut gw = builder()
        .with_upstream_url(&upstream.url())
        .forge_kind("gitea")
        .policy(POLICY)
        .extra(&format!(
            "{}\n[forward_auth]\ntrusted_proxies = [\"127.0.0.1\"]\n",
            traces_toml(
                &collector,
                &format!(
                    "headers = {{ x-api-key = {{ file = \"{}\" }} }}\n",
                    secret.display()
                ),
            )
        ))
        .start();
    let alice = gw.token("alice", &["dev"]);

    // A caller in a sampled trace: Gatehouse's span is the child of the caller's, and the parent
    // of what the forge does (the `traceparent` it was sent).
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, body) = echo(
        gw.port,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("traceparent", inbound),
            ("X-Request-Id", "traced-1"),
        ],
    );
    let sent_upstream = field(&body, "traceparent").to_owned();
    let upstream_parent = sent_upstream.split('-').nth(2).unwrap().to_owned();
    let span = collector
        .wait_for(Duration::from_secs(15), |s| {
            s.attributes.get("gatehouse.request_id").map(String::as_str) == Some("traced-1")
        })
        .unwrap_or_else(|| panic!("no span for the request: {:?}", collector.spans()));
    assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(
        span.span_id, upstream_parent,
        "the span is the parent the forge was told"
    );
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(span.attributes["enduser.id"], "alice");
    assert_eq!(span.attributes["gatehouse.decision"], "allow");
    assert_eq!(span.attributes["gatehouse.policy"], "echo");
    assert_eq!(span.attributes["gatehouse.action"], "web:access");
    assert_eq!(span.attributes["http.response.status_code"], "200");
    assert_eq!(span.attributes["url.path"], "/explore/_echo");
    assert_eq!(span.resource["service.name"], "gatehouse-it");
    assert!(
        span.resource["service.version"].contains("commit"),
        "{:?}",
        span.resource
    );
    assert!(span.end_unix_nano >= span.start_unix_nano);
    assert_eq!(
        collector.requests()[0]["x-api-key"],
        "key-from-a-file",
        "the header secret, read from its file"
    );

    // No traceparent, no credential: a new trace, the one the audit record names, and a
    // refusal that is not an error span.
    let (status, _) = gatehouse_testkit::raw_http(
        gw.port,
        "GET",
        "/demo/hello.git/info/refs?service=git-upload-pack",
        &[("X-Request-Id", "traced-2")],
    );
    assert_eq!(status, 401);
    let span = collector
        .wait_for(Duration::from_secs(15), |s| {
            s.attributes.get("gatehouse.request_id").map(String::as_str) == Some("traced-2")
        })
        .expect("a span for the refused request");
    assert_eq!(span.parent_span_id, "", "a root span");
    assert_eq!(span.attributes["gatehouse.decision"], "deny");
    assert_eq!(span.attributes["http.response.status_code"], "401");
    assert_eq!(
        span.status_code, 0,
        "a refusal is the gateway's job, not an error"
    );
    let audit = gw.audit_when("traced-2's record", |t| t.contains("traced-2"));
    let rec: serde_json::Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["request_id"] == "traced-2")
        .unwrap();
    assert_eq!(rec["trace_id"], span.trace_id.as_str(), "{rec}");

    // A caller's trace that is not sampled is not exported, and says so upstream.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let (_, body) = echo(
        gw.port,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("traceparent", unsampled),
            ("X-Request-Id", "traced-3"),
        ],
    );
    assert!(field(&body, "traceparent").ends_with("-00"), "{body}");

    // A front proxy's question (forward auth, from a trusted proxy): a span of the client's
    // trace, named for the door.
    let (status, raw) = gatehouse_testkit::raw_http(
        gw.port,
        "GET",
        "/.gatehouse/auth",
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X-Original-URI", "/explore/_echo"),
            ("X-Original-Method", "GET"),
            (
                "traceparent",
                "00-abcdef0123456789abcdef0123456789-1111111111111111-01",
            ),
            ("X-Request-Id", "traced-fa"),
        ],
    );
    assert_eq!(status, 200, "{raw}");
    let span = collector
        .wait_for(Duration::from_secs(15), |s| {
            s.attributes.get("gatehouse.request_id").map(String::as_str) == Some("traced-fa")
        })
        .expect("a span for the forward-auth answer");
    assert_eq!(span.name, "forward_auth GET");
    assert_eq!(span.trace_id, "abcdef0123456789abcdef0123456789");
    assert_eq!(span.parent_span_id, "1111111111111111");
    assert_eq!(span.attributes["gatehouse.event"], "forward_auth");
    assert_eq!(span.attributes["gatehouse.decision"], "allow");
    assert!(!span.attributes.contains_key("http.request.body.size"));

    // The exporter's metric, on the admin listener.
    let name = "gatehouse_trace_spans_total{outcome=\"exported\"}";
    gatehouse_testkit::wait_for(
        "the exported spans counted",
        Duration::from_secs(10),
        || {
            let text = gw.metrics();
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v >= 2.0)
                .map(|_| ())
        },
    );

    // At shutdown, what is queued is sent before the process exits (not left for the next
    // batch, 1 s away).
    let (_, _) = echo(
        gw.port,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("X-Request-Id", "traced-last"),
        ],
    );
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let ids: Vec<String> = collector
        .spans()
        .iter()
        .filter_map(|s| s.attributes.get("gatehouse.request_id").cloned())
        .collect();
    assert!(ids.iter().any(|i| i == "traced-last"), "{ids:?}");
    assert!(!ids.iter().any(|i| i == "traced-3"), "{ids:?}");
}

#[cfg(feature = "otlp")]
#[test]
fn new_traces_follow_the_sample_ratio_and_only_a_trusted_callers_flag_is_followed() {
    use gatehouse_testkit::GitHttpServer;

    use crate::common::echo;

    let tmp = TempDir::new("traces-ratio");
    let (root, _) = repos(&tmp);
    let upstream = GitHttpServer::start(&root);
    let collector = OtlpCollectorStandIn::start();
    let start = |extra: &str| {
        builder()
            .with_upstream_url(&upstream.url())
            .forge_kind("gitea")
            .policy(POLICY)
            .extra(&traces_toml(&collector, extra))
            .start()
    };
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let exported = |id: &str| {
        collector
            .spans()
            .iter()
            .any(|s| s.attributes.get("gatehouse.request_id").map(String::as_str) == Some(id))
    };

    // Ratio 0, and a client that is no trusted proxy: nothing is exported, its `-01` included
    // (it keeps its trace id, and is told the trace is not sampled).
    let gw = start("sample_ratio = 0.0\n");
    let auth = format!("Bearer {}", gw.token("alice", &["dev"]));
    let (_, body) = echo(
        gw.port,
        &[("Authorization", &auth), ("X-Request-Id", "root-unsampled")],
    );
    assert!(field(&body, "traceparent").ends_with("-00"), "{body}");
    let (_, body) = echo(
        gw.port,
        &[
            ("Authorization", &auth),
            ("traceparent", sampled),
            ("X-Request-Id", "client-says-sampled"),
        ],
    );
    let tp = field(&body, "traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-00"),
        "{tp}"
    );

    // The same with every caller's flag followed: the client's sampled trace is exported.
    let trusting = start("sample_ratio = 0.0\ntrust_caller_sampling = true\n");
    let auth = format!("Bearer {}", trusting.token("alice", &["dev"]));
    let (_, body) = echo(
        trusting.port,
        &[
            ("Authorization", &auth),
            ("traceparent", sampled),
            ("X-Request-Id", "caller-sampled"),
        ],
    );
    assert!(field(&body, "traceparent").ends_with("-01"), "{body}");
    collector
        .wait_for(Duration::from_secs(15), |s| {
            s.attributes.get("gatehouse.request_id").map(String::as_str) == Some("caller-sampled")
        })
        .expect("the caller's sampled trace is exported");
    // Both gateways had over a second to send anything else they had: they had nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!exported("root-unsampled"));
    assert!(!exported("client-says-sampled"));
}

#[cfg(feature = "otlp")]
#[test]
fn check_reports_the_collector_and_a_header_secret_it_cannot_read() {
    let tmp = TempDir::new("traces-check");
    let (root, _) = repos(&tmp);
    let collector = OtlpCollectorStandIn::start();
    let b = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&traces_toml(
            &collector,
            "headers = { authorization = { env = \"GATEHOUSE_TEST_UNSET_OTLP\" } }\n",
        ));
    let config = b.write_config(0, 0);
    let o = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  traces.headers.authorization")
                && l.contains("GATEHOUSE_TEST_UNSET_OTLP")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok    traces collector reachable")
                && l.contains(&collector.url())),
        "{out}"
    );
}

/// Without the feature, `[traces]` is refused rather than silently ignored.
#[cfg(not(feature = "otlp"))]
#[test]
fn a_binary_without_otlp_refuses_traces() {
    let tmp = TempDir::new("traces-off");
    let (root, _) = repos(&tmp);
    let collector = OtlpCollectorStandIn::start();
    let b = builder()
        .with_builtin_upstream(&root)
        .policy(POLICY)
        .extra(&traces_toml(&collector, ""));
    let config = b.write_config(0, 0);
    for cmd in ["check", "serve"] {
        let o = Command::new(bin())
            .args([cmd, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{cmd}: {out}");
        assert!(
            out.contains("built without the `otlp` feature"),
            "{cmd}: {out}"
        );
    }
}
