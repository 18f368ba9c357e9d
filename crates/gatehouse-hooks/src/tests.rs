//! Signatures as each sender computes them. The expected values were computed apart from this
//! code (Python's `hmac`, as Gitea's `deliver.go` and GitHub's documentation describe them), and
//! the Standard Webhooks vector is the specification's own example.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

/// Gitea's body: `json.MarshalIndent(p, "", "  ")`.
const JSON: &str = "{\n  \"ref\": \"refs/heads/main\",\n  \"before\": \"0000000000000000000000000000000000000000\",\n  \"after\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\n  \"repository\": {\n    \"full_name\": \"Acme/API\"\n  },\n  \"sender\": {\n    \"login\": \"alice\",\n    \"username\": \"alice\"\n  }\n}";
/// HMAC-SHA256("s3cret", JSON), hex.
const JSON_MAC: &str = "67bfd4365af30f9e905f20f7d6345652f12cf2a879ade2b58792dd6bf8dc13aa";
/// HMAC-SHA256("s3cret", the form body `payload=<JSON, URL-encoded as Go's url.Values>`).
const FORM_MAC: &str = "cdafe3ef15061546f72e79540f068c51d434334ebf3ec643d08c1ff2d416864a";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn form_body() -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", JSON)
        .finish()
        .into_bytes()
}

fn secrets() -> Vec<Vec<u8>> {
    vec![b"old-secret".to_vec(), b"s3cret".to_vec()]
}

fn gitea(sig: &str) -> HeaderMap {
    headers(&[
        ("content-type", "application/json"),
        ("x-gitea-delivery", "7b2f0c3e-1b6b-4f55-9f3e-0e1a2b3c4d5e"),
        ("x-gitea-event", "push"),
        ("x-gitea-event-type", "push"),
        ("x-gitea-signature", sig),
        ("x-hub-signature-256", &format!("sha256={sig}")),
        ("authorization", "Bearer forge-side"),
    ])
}

#[test]
fn gitea_forgejo_and_gogs_sign_the_json_as_bare_hex() {
    assert_eq!(hex_hmac(b"s3cret", JSON.as_bytes()), JSON_MAC);
    let v = verify(
        HookKind::Gitea,
        &secrets(),
        &gitea(JSON_MAC),
        JSON.as_bytes(),
        0,
        0,
    )
    .unwrap();
    assert_eq!(
        (
            v.delivery_id.as_str(),
            v.event.as_str(),
            v.event_type.as_deref()
        ),
        ("7b2f0c3e-1b6b-4f55-9f3e-0e1a2b3c4d5e", "push", Some("push"))
    );
    for (kind, prefix) in [(HookKind::Forgejo, "forgejo"), (HookKind::Gogs, "gogs")] {
        let h = headers(&[
            (&format!("x-{prefix}-delivery"), "d-1"),
            (&format!("x-{prefix}-event"), "push"),
            (&format!("x-{prefix}-signature"), JSON_MAC),
        ]);
        verify(kind, &secrets(), &h, JSON.as_bytes(), 0, 0).unwrap();
        // Another sender's header is not this one's.
        assert_eq!(
            verify(kind, &secrets(), &gitea(JSON_MAC), JSON.as_bytes(), 0, 0).unwrap_err(),
            Rejected::Unsigned(if prefix == "forgejo" {
                "x-forgejo-signature"
            } else {
                "x-gogs-signature"
            })
        );
    }
}

#[test]
fn a_form_delivery_is_verified_over_its_decoded_payload_field_and_github_over_the_body() {
    let mut h = gitea(JSON_MAC);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let v = verify(HookKind::Gitea, &secrets(), &h, &form_body(), 0, 0).unwrap();
    assert_eq!(v.json, JSON.as_bytes(), "the payload field, decoded");
    // Gitea's HMAC over the form body itself is not Gitea's signature.
    h.insert("x-gitea-signature", HeaderValue::from_static(FORM_MAC));
    assert_eq!(
        verify(HookKind::Gitea, &secrets(), &h, &form_body(), 0, 0).unwrap_err(),
        Rejected::BadSignature
    );
    // GitHub signs the body as sent.
    let gh = |sig: &str, ct: &str| {
        headers(&[
            ("content-type", ct),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-event", "push"),
            ("x-hub-signature-256", sig),
        ])
    };
    let v = verify(
        HookKind::Github,
        &secrets(),
        &gh(
            &format!("sha256={FORM_MAC}"),
            "application/x-www-form-urlencoded",
        ),
        &form_body(),
        0,
        0,
    )
    .unwrap();
    assert_eq!(v.json, JSON.as_bytes());
    verify(
        HookKind::Github,
        &secrets(),
        &gh(&format!("sha256={JSON_MAC}"), "application/json"),
        JSON.as_bytes(),
        0,
        0,
    )
    .unwrap();
    // Without the prefix, or in Gitea's bare form, it is malformed.
    assert_eq!(
        verify(
            HookKind::Github,
            &secrets(),
            &gh(JSON_MAC, "application/json"),
            JSON.as_bytes(),
            0,
            0
        )
        .unwrap_err(),
        Rejected::Malformed("x-hub-signature-256")
    );
}

#[test]
fn unsigned_wrongly_signed_or_ambiguous_deliveries_are_refused() {
    let body = JSON.as_bytes();
    let k = HookKind::Gitea;
    // A hook without a secret on the forge sends the header empty.
    assert_eq!(
        verify(k, &secrets(), &gitea(""), body, 0, 0).unwrap_err(),
        Rejected::Unsigned("x-gitea-signature")
    );
    // One byte changed in the body, or in the signature.
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert_eq!(
        verify(k, &secrets(), &gitea(JSON_MAC), &tampered, 0, 0).unwrap_err(),
        Rejected::BadSignature
    );
    let mut sig = JSON_MAC.to_owned();
    sig.replace_range(0..1, "7");
    assert_eq!(
        verify(k, &secrets(), &gitea(&sig), body, 0, 0).unwrap_err(),
        Rejected::BadSignature
    );
    // A secret not configured (rotated out).
    assert_eq!(
        verify(k, &[b"other".to_vec()], &gitea(JSON_MAC), body, 0, 0).unwrap_err(),
        Rejected::BadSignature
    );
    // Not hex, too short, a prefix Gitea never writes.
    for bad in ["zz", &JSON_MAC[..62], &format!("sha256={JSON_MAC}")] {
        assert_eq!(
            verify(k, &secrets(), &gitea(bad), body, 0, 0).unwrap_err(),
            Rejected::Malformed("x-gitea-signature"),
            "{bad}"
        );
    }
    // Two signature headers: which one the forge meant cannot be known.
    let mut h = gitea(JSON_MAC);
    h.append("x-gitea-signature", HeaderValue::from_static("00"));
    assert_eq!(
        verify(k, &secrets(), &h, body, 0, 0).unwrap_err(),
        Rejected::Unsigned("x-gitea-signature")
    );
    // No delivery id: a replay could not be recognised.
    let mut h = gitea(JSON_MAC);
    h.remove("x-gitea-delivery");
    assert_eq!(
        verify(k, &secrets(), &h, body, 0, 0).unwrap_err(),
        Rejected::NoDeliveryId("x-gitea-delivery")
    );
    // A form without its payload field.
    let mut h = gitea(JSON_MAC);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    assert_eq!(
        verify(k, &secrets(), &h, b"other=1", 0, 0).unwrap_err(),
        Rejected::NoPayload
    );
}

#[test]
fn standard_webhooks_verify_the_specifications_example_within_the_tolerance() {
    let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = br#"{"test": 2432232314}"#;
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
        sig
    );
    let h = |sig: &str, ts: &str| {
        headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ])
    };
    let now = 1_614_265_330;
    let keys = vec![b"another key of 24 bytes.".to_vec(), key];
    let v = verify(
        HookKind::Standard,
        &keys,
        &h(&format!("v1,bm9wZQ== {sig}"), "1614265330"),
        body,
        now + 299,
        300,
    )
    .unwrap();
    assert_eq!(
        (v.delivery_id.as_str(), v.event.as_str()),
        ("msg_p5jXN8AQM9LWM0D4loKWxJek", "message")
    );
    assert_eq!(
        verify(
            HookKind::Standard,
            &keys,
            &h(sig, "1614265330"),
            body,
            now + 301,
            300
        )
        .unwrap_err(),
        Rejected::Stale(301)
    );
    assert_eq!(
        verify(
            HookKind::Standard,
            &keys,
            &h(sig, "1614265331"),
            body,
            now,
            300
        )
        .unwrap_err(),
        Rejected::BadSignature,
        "the timestamp is signed"
    );
    for ts in ["+1614265330", "1614265330.0", "-1", ""] {
        assert!(
            verify(HookKind::Standard, &keys, &h(sig, ts), body, now, 300).is_err(),
            "{ts:?}"
        );
    }
    assert_eq!(
        verify(
            HookKind::Standard,
            &keys,
            &h("v1a,abc", "1614265330"),
            body,
            now,
            300
        )
        .unwrap_err(),
        Rejected::Malformed("webhook-signature"),
        "no v1 signature at all"
    );
    assert!(standard_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    assert!(standard_key("whsec_c2hvcnQ=").is_err());
}

#[test]
fn a_payload_is_read_for_its_repository_sender_push_and_finished_job() {
    let s = Summary::read("push", JSON.as_bytes());
    assert_eq!(s.repo.as_deref(), Some("Acme/API"));
    assert_eq!(s.sender.as_deref(), Some("alice"));
    assert_eq!(
        s.push,
        Some(PushUpdate {
            git_ref: "refs/heads/main".into(),
            before: "0".repeat(40),
            after: "a".repeat(40),
        })
    );
    assert_eq!(Summary::read("create", JSON.as_bytes()).push, None);
    assert_eq!(Summary::read("push", b"not json"), Summary::default());
    let job = br#"{"action":"completed","workflow_job":{"id":31,"run_id":7,"run_attempt":2,
        "status":"completed","conclusion":"success"},"repository":{"full_name":"acme/api"}}"#;
    assert_eq!(
        Summary::read("workflow_job", job).job_finished,
        Some(JobFinished {
            job: 31,
            run_id: 7,
            run_attempt: 2,
            conclusion: "success".into()
        })
    );
    let running = String::from_utf8_lossy(job)
        .replace("\"completed\",\"workflow", "\"in_progress\",\"workflow");
    assert_eq!(
        Summary::read("workflow_job", running.as_bytes()).job_finished,
        None
    );
}

#[test]
fn backoff_doubles_up_to_its_bound_and_jitters_down_by_at_most_half() {
    let (min, max) = (Duration::from_secs(5), Duration::from_secs(600));
    assert_eq!(backoff(0, min, max, 0.0), Duration::from_secs(5));
    assert_eq!(backoff(3, min, max, 0.0), Duration::from_secs(40));
    assert_eq!(backoff(40, min, max, 0.0), max);
    assert_eq!(backoff(3, min, max, 1.0), Duration::from_secs(20));
}

#[test]
fn repository_globs_match_within_a_segment_ignoring_case_where_the_forge_does() {
    assert!(repo_glob("acme/*", "Acme/API", true));
    assert!(
        !repo_glob("acme/*", "Acme/API", false),
        "a generic upstream keeps case"
    );
    assert!(repo_glob("Acme/*", "Acme/API", false));
    assert!(repo_glob("*/api", "acme/api", true));
    assert!(repo_glob("acme/api-*", "acme/api-v2", true));
    assert!(!repo_glob("acme/*", "acme/api/x", true));
    assert!(!repo_glob("acme/api", "acme/api2", true));
    assert!(!repo_glob("ac*/api", "other/api", true));
}

#[test]
fn relayed_headers_keep_the_event_and_never_a_signature_or_credential() {
    let h = gitea(JSON_MAC);
    let r = relayed_headers(HookKind::Gitea, &h);
    assert!(r.contains("x-gitea-event: push\n"), "{r}");
    assert!(r.contains("content-type: application/json\n"), "{r}");
    assert!(!r.contains("signature"), "{r}");
    assert!(!r.contains("authorization"), "{r}");
    // A Standard Webhooks sender's X-* headers are nobody's word.
    assert_eq!(
        relayed_headers(HookKind::Standard, &h),
        "content-type: application/json\n"
    );
}

#[test]
fn a_form_must_be_exactly_one_payload_field_escaped_as_go_escapes_it() {
    let mut h = gitea(JSON_MAC);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let good = form_body();
    assert!(verify(HookKind::Gitea, &secrets(), &h, &good, 0, 0).is_ok());
    // A second payload field after the signed one: receivers taking the last would read it.
    let mut two = good.clone();
    two.extend_from_slice(b"&payload=%7B%7D");
    // A stray `%` Go's ParseQuery refuses (it would skip the field and read the next one).
    let stray = b"payload=%7B%22a%22%3A%2220%%22%7D".to_vec();
    for (bad, why) in [
        (two, "two fields"),
        (b"payload=%7B%7D;x=1".to_vec(), "a `;`"),
        (stray, "a stray %"),
        (b"payload=%7".to_vec(), "a cut escape"),
        (b"payload=a b".to_vec(), "a raw space"),
        (b"x=1&payload=%7B%7D".to_vec(), "another field first"),
    ] {
        assert_eq!(
            verify(HookKind::Gitea, &secrets(), &h, &bad, 0, 0).unwrap_err(),
            Rejected::BadForm,
            "{why}"
        );
    }
    assert_eq!(
        verify(HookKind::Gitea, &secrets(), &h, b"other=1", 0, 0).unwrap_err(),
        Rejected::NoPayload
    );
}

#[test]
fn event_and_delivery_headers_that_disagree_are_refused() {
    let body = JSON.as_bytes();
    let mut h = gitea(JSON_MAC);
    h.insert("x-github-event", HeaderValue::from_static("workflow_job"));
    assert_eq!(
        verify(HookKind::Gitea, &secrets(), &h, body, 0, 0).unwrap_err(),
        Rejected::Inconsistent("x-github-event")
    );
    let mut h = gitea(JSON_MAC);
    h.insert("x-gogs-delivery", HeaderValue::from_static("another-id"));
    assert_eq!(
        verify(HookKind::Gitea, &secrets(), &h, body, 0, 0).unwrap_err(),
        Rejected::Inconsistent("x-gogs-delivery")
    );
    let mut h = gitea(JSON_MAC);
    h.insert("x-github-event-type", HeaderValue::from_static("issues"));
    assert_eq!(
        verify(HookKind::Gitea, &secrets(), &h, body, 0, 0).unwrap_err(),
        Rejected::Inconsistent("x-github-event-type")
    );
    // Gitea's own set (its, Gogs' and GitHub's names, all saying the same) is fine.
    let mut h = gitea(JSON_MAC);
    for (n, v) in [
        ("x-gogs-event", "push"),
        ("x-gogs-event-type", "push"),
        ("x-github-event", "push"),
        ("x-github-event-type", "push"),
        ("x-gogs-delivery", "7b2f0c3e-1b6b-4f55-9f3e-0e1a2b3c4d5e"),
        ("x-github-delivery", "7b2f0c3e-1b6b-4f55-9f3e-0e1a2b3c4d5e"),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    assert!(verify(HookKind::Gitea, &secrets(), &h, body, 0, 0).is_ok());
}

#[test]
fn standard_webhooks_bound_the_work_an_attacker_can_ask_for() {
    let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = br#"{"test": 2432232314}"#;
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let h = |id: &str, sig: &str| {
        headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", sig),
        ])
    };
    let many = std::iter::repeat_n("v1,AAAA", 17)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        verify(
            HookKind::Standard,
            std::slice::from_ref(&key),
            &h("msg_p5jXN8AQM9LWM0D4loKWxJek", &format!("{many} {sig}")),
            body,
            1_614_265_330,
            300
        )
        .unwrap_err(),
        Rejected::Malformed("webhook-signature")
    );
    // An id with the separator in it could make two messages sign alike.
    assert_eq!(
        verify(
            HookKind::Standard,
            &[key],
            &h("msg.1", sig),
            body,
            1_614_265_330,
            300
        )
        .unwrap_err(),
        Rejected::NoDeliveryId("webhook-id")
    );
}
