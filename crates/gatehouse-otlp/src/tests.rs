#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::{AuditPrincipal, AuditRecord, SpanIds, SpanSink};
use gatehouse_core::{Principal, PrincipalKind, UnixTime};
use gatehouse_testkit::OtlpCollector;

use super::*;

fn settings(url: String, max_queue: usize) -> OtlpSettings {
    OtlpSettings {
        url,
        service_name: "gatehouse-test".into(),
        service_version: "0.1.0 (commit abc)".into(),
        instance_id: "node-a".into(),
        headers: vec![("x-api-key".into(), Redacted::new("k-123".into()))],
        timeout: Duration::from_secs(5),
        max_queue,
    }
}

fn record() -> AuditRecord {
    let alice = Arc::new(Principal {
        kind: PrincipalKind::User,
        issuer: "https://idp.example".into(),
        subject: "alice-sub".into(),
        username: "alice".into(),
        display_name: None,
        email: None,
        groups: vec!["dev".into()],
        token_id: None,
        expires_at: None,
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    });
    AuditRecord {
        time: UnixTime::from_nanos(1_796_000_000_123_000_000),
        event: "request",
        request_id: Some("req-1".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        principal: Some(AuditPrincipal::of(&alice)),
        method: Some("POST".into()),
        host: Some("git.example".into()),
        path: Some("/acme/api.git/git-receive-pack".into()),
        action: Some("git:write"),
        repo: Some("acme/api".into()),
        decision: Some("deny"),
        policy: Some("release-tags".into()),
        reason: Some("ref_denied".into()),
        status: Some(403),
        bytes_in: 120,
        bytes_out: 40,
        duration_ms: 2.5,
        outcome: Some("complete"),
        ..AuditRecord::default()
    }
}

const IDS: SpanIds = SpanIds {
    trace_id: [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ],
    span_id: [1, 2, 3, 4, 5, 6, 7, 8],
    parent_span_id: Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
    sampled: true,
};

#[tokio::test]
async fn a_finished_request_reaches_the_collector_as_the_span_it_was() {
    let collector = OtlpCollector::start();
    let (spans, task) = OtlpSpans::start(settings(collector.url(), 16)).unwrap();
    spans.finished(&record(), &IDS);
    // Not sampled: never sent.
    spans.finished(
        &record(),
        &SpanIds {
            sampled: false,
            span_id: [9; 8],
            ..IDS
        },
    );
    task.finish(&spans, Duration::from_secs(10)).await;

    let got = collector.spans();
    assert_eq!(got.len(), 1, "{got:?}");
    let s = &got[0];
    assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.span_id, "0102030405060708");
    assert_eq!(s.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(s.name, "POST");
    assert_eq!(s.kind, 2, "a server span");
    assert_eq!(s.status_code, 0, "a refusal is not an error");
    assert_eq!(s.start_unix_nano, 1_796_000_000_123_000_000);
    assert_eq!(s.end_unix_nano, 1_796_000_000_125_500_000);
    assert_eq!(s.attributes["enduser.id"], "alice");
    assert_eq!(s.attributes["gatehouse.decision"], "deny");
    assert_eq!(s.attributes["gatehouse.policy"], "release-tags");
    assert_eq!(s.attributes["gatehouse.repository"], "acme/api");
    assert_eq!(s.attributes["http.response.status_code"], "403");
    assert_eq!(s.attributes["url.path"], "/acme/api.git/git-receive-pack");
    assert_eq!(s.resource["service.name"], "gatehouse-test");
    assert_eq!(s.resource["service.instance.id"], "node-a");
    assert_eq!(s.scope, "gatehouse");
    let req = &collector.requests()[0];
    assert_eq!(req["x-api-key"], "k-123");
    assert_eq!(req["content-type"], "application/x-protobuf");
    assert_eq!(spans.counts(), (1, 0, 0));
}

#[tokio::test]
async fn a_server_error_is_an_error_span() {
    let collector = OtlpCollector::start();
    let (spans, task) = OtlpSpans::start(settings(collector.url(), 16)).unwrap();
    let mut r = record();
    r.status = Some(502);
    r.decision = Some("error");
    r.reason = Some("upstream_unavailable".into());
    spans.finished(&r, &IDS);
    let mut r = record();
    r.status = None;
    r.outcome = Some("aborted");
    spans.finished(
        &r,
        &SpanIds {
            span_id: [7; 8],
            ..IDS
        },
    );
    task.finish(&spans, Duration::from_secs(10)).await;
    let got = collector.spans();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|s| s.status_code == 2), "{got:?}");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_rather_than_waiting() {
    // A collector that never answers: the export task blocks on its first batch.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", silent.local_addr().unwrap());
    let (spans, _task) = OtlpSpans::start(settings(url, 4)).unwrap();
    let started = std::time::Instant::now();
    for i in 0..200u8 {
        spans.finished(
            &record(),
            &SpanIds {
                span_id: [i.max(1); 8],
                ..IDS
            },
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "queueing never waits"
    );
    // The test's runtime has one thread, busy here: the export task took nothing yet, so the
    // queue holds 4 and the rest were dropped.
    assert_eq!(spans.counts(), (0, 196, 0));
    let mut reg = Registry::default();
    spans.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("trace_spans_total{outcome=\"dropped\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refusing_collector_is_counted_as_failed_and_export_goes_on() {
    let collector = OtlpCollector::start();
    collector.fail_with(400);
    let (spans, task) = OtlpSpans::start(settings(collector.url(), 16)).unwrap();
    spans.finished(&record(), &IDS);
    // The first batch goes out after BATCH_DELAY; then accept again.
    for _ in 0..100 {
        if spans.counts().2 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        spans.counts().2,
        1,
        "the refused batch is counted as failed"
    );
    collector.fail_with(0);
    spans.finished(
        &record(),
        &SpanIds {
            span_id: [3; 8],
            ..IDS
        },
    );
    task.finish(&spans, Duration::from_secs(10)).await;
    assert_eq!(collector.spans().len(), 1);
    assert_eq!(spans.counts(), (1, 0, 1));
}

#[test]
fn header_values_are_never_printed() {
    let s = settings("http://127.0.0.1:1/v1/traces".into(), 1);
    let text = format!("{s:?}");
    assert!(!text.contains("k-123"), "{text}");
}
