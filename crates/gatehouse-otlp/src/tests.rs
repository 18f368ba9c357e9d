#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gatehouse_audit::{AuditPrincipal, AuditRecord, SpanIds, SpanSink};
use gatehouse_core::{Principal, PrincipalKind, UnixTime};
use gatehouse_testkit::OtlpCollectorStandIn;

use super::*;

/// Settings whose batches wait `batch_delay` to fill (an hour: only the shutdown flush sends).
fn settings(url: String, max_queue: usize) -> OtlpSettings {
    settings_with(url, max_queue, Duration::from_secs(3600))
}

fn settings_with(url: String, max_queue: usize, batch_delay: Duration) -> OtlpSettings {
    OtlpSettings {
        url,
        service_name: "gatehouse-test".into(),
        service_version: "0.1.0 (commit abc)".into(),
        instance_id: "node-a".into(),
        headers: vec![("x-api-key".into(), Redacted::new("k-123".into()))],
        timeout: Duration::from_secs(5),
        max_queue,
        batch_delay,
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
    let collector = OtlpCollectorStandIn::start();
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
    let collector = OtlpCollectorStandIn::start();
    let (spans, task) = OtlpSpans::start(settings(collector.url(), 16)).unwrap();
    let mut r = record();
    r.status = Some(502);
    r.decision = Some("error");
    r.reason = Some("upstream_unavailable".into());
    r.request_id = Some("502".into());
    spans.finished(&r, &IDS);
    let mut r = record();
    r.status = None;
    r.outcome = Some("aborted");
    r.request_id = Some("none".into());
    spans.finished(
        &r,
        &SpanIds {
            span_id: [7; 8],
            ..IDS
        },
    );
    // A 408 is the client's doing, whatever the record's decision says.
    let mut r = record();
    r.status = Some(408);
    r.decision = Some("error");
    r.reason = Some("request_body_timeout".into());
    r.request_id = Some("408".into());
    spans.finished(
        &r,
        &SpanIds {
            span_id: [8; 8],
            ..IDS
        },
    );
    // A method no one knows does not name the span.
    let mut r = record();
    r.method = Some("PROPFIND-ME".into());
    r.request_id = Some("odd".into());
    spans.finished(
        &r,
        &SpanIds {
            span_id: [9; 8],
            ..IDS
        },
    );
    task.finish(&spans, Duration::from_secs(10)).await;
    let got = collector.spans();
    let by = |id: &str| {
        got.iter()
            .find(|s| s.attributes["gatehouse.request_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {got:?}"))
    };
    assert_eq!(by("502").status_code, 2);
    assert_eq!(by("502").attributes["error.type"], "upstream_unavailable");
    assert_eq!(by("none").status_code, 2);
    assert_eq!(by("none").attributes["error.type"], "aborted");
    assert_eq!(by("408").status_code, 0);
    assert!(!by("408").attributes.contains_key("error.type"));
    let odd = by("odd");
    assert_eq!(odd.name, "HTTP");
    assert_eq!(odd.attributes["http.request.method"], "_OTHER");
    assert_eq!(
        odd.attributes["http.request.method_original"],
        "PROPFIND-ME"
    );
}

#[tokio::test]
async fn everything_queued_is_sent_at_shutdown_in_batches() {
    let collector = OtlpCollectorStandIn::start();
    // Batches never fill by time here: only the shutdown flush sends them.
    let (spans, task) = OtlpSpans::start(settings(collector.url(), 2000)).unwrap();
    for i in 0..1200u32 {
        let mut id = [1u8; 8];
        id[..4].copy_from_slice(&i.to_be_bytes());
        spans.finished(&record(), &SpanIds { span_id: id, ..IDS });
    }
    task.finish(&spans, Duration::from_secs(20)).await;
    assert_eq!(collector.spans().len(), 1200);
    assert!(collector.requests().len() >= 3, "batches of at most 512");
    assert_eq!(spans.counts(), (1200, 0, 0));
    // After the flush the queue takes nothing: counted as dropped, never lost silently.
    spans.finished(&record(), &IDS);
    assert_eq!(spans.counts(), (1200, 1, 0));
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
    let collector = OtlpCollectorStandIn::start();
    collector.fail_with(400);
    let (spans, task) = OtlpSpans::start(settings_with(
        collector.url(),
        16,
        Duration::from_millis(50),
    ))
    .unwrap();
    spans.finished(&record(), &IDS);
    // The first batch goes out after its delay; then accept again.
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

#[tokio::test]
async fn header_values_are_never_printed() {
    let s = settings("http://127.0.0.1:1/v1/traces".into(), 1);
    let text = format!("{s:?}");
    assert!(!text.contains("k-123"), "{text}");
    let (spans, _task) = OtlpSpans::start(s).unwrap();
    let text = format!("{spans:?}");
    assert!(!text.contains("k-123"), "{text}");
}

#[tokio::test]
async fn a_redirecting_collector_is_not_followed_with_the_key() {
    // A collector that answers every export with a redirect to another listener.
    let elsewhere = OtlpCollectorStandIn::start();
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = redirector.local_addr().unwrap().port();
    let target = elsewhere.url();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in redirector.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    let (spans, task) =
        OtlpSpans::start(settings(format!("http://127.0.0.1:{port}/v1/traces"), 4)).unwrap();
    spans.finished(&record(), &IDS);
    task.finish(&spans, Duration::from_secs(10)).await;
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    assert_eq!(spans.counts(), (0, 0, 1));
}
