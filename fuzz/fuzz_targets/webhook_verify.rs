//! A webhook delivery as an attacker sends it to `/.gatehouse/hooks/{name}`: headers and body
//! of their choosing, verified as each sender's kind (`gatehouse_hooks::verify`), read for the
//! relay (`Summary::read`) and its headers filtered for relaying. Never panics; accepts only a
//! signature the hook's secret makes; never relays a signature or a credential header.
#![no_main]

use gatehouse_hooks::{HookKind, Summary, hex_hmac, relayed_headers, verify};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let kind = match ctl % 5 {
        0 => HookKind::Gitea,
        1 => HookKind::Forgejo,
        2 => HookKind::Gogs,
        3 => HookKind::Github,
        _ => HookKind::Standard,
    };
    // Headers, one `name: value` per line, then a blank line, then the body.
    let split = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(rest.len());
    let (head, body) = (&rest[..split], rest.get(split + 2..).unwrap_or(&[]));
    let mut h = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) {
            h.append(n, v);
        }
    }
    // A form as the verifier reads one: the media type before any `;`, whatever its case.
    let form = h
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    // A valid signature now and then, so that the paths after verification run too: over the
    // decoded payload field of a form for the forges that sign the JSON, over
    // `id.timestamp.body` for Standard Webhooks.
    if ctl & 0x80 != 0 && kind == HookKind::Standard {
        let id = h
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let sig = gatehouse_hooks::standard_signature(SECRET, &id, 1_700_000_000, body);
        if let Ok(v) = HeaderValue::from_str(&sig) {
            h.insert("webhook-signature", v);
            h.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        }
    } else if ctl & 0x80 != 0 {
        let signed: Vec<u8> = if form && kind != HookKind::Github {
            url::form_urlencoded::parse(body)
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_owned().into_bytes())
                .unwrap_or_default()
        } else {
            body.to_vec()
        };
        let mac = hex_hmac(SECRET, &signed);
        let (name, value) = match kind {
            HookKind::Github => ("x-hub-signature-256", format!("sha256={mac}")),
            HookKind::Forgejo => ("x-forgejo-signature", mac),
            HookKind::Gogs => ("x-gogs-signature", mac),
            _ => ("x-gitea-signature", mac),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    let now = 1_700_000_000;
    if let Ok(v) = verify(kind, &[SECRET.to_vec()], &h, body, now, 300) {
        assert!(!v.delivery_id.is_empty() && v.delivery_id.len() <= 128);
        assert!(!v.event.is_empty());
        // What was accepted was signed with the secret: a JSON body is its payload; a form is
        // exactly one `payload` field, which is what every receiver reads, so the bytes relayed
        // hold nothing that was not verified.
        if !form {
            assert_eq!(v.json, body, "a JSON delivery's payload is its body");
        } else {
            let fields: Vec<_> = url::form_urlencoded::parse(body).collect();
            assert_eq!(fields.len(), 1, "a form of several fields was accepted");
            assert_eq!(fields[0].0, "payload");
            if std::str::from_utf8(&v.json).is_ok() {
                assert_eq!(fields[0].1.as_bytes(), v.json.as_slice());
            }
        }
        let _ = Summary::read(&v.event, &v.json);
    }
    let _ = Summary::read("push", body);
    let _ = Summary::read("workflow_job", body);
    for line in relayed_headers(kind, &h).lines() {
        let name = line.split_once(": ").map_or(line, |(n, _)| n);
        assert!(
            name == "content-type"
                || ["x-gitea-", "x-forgejo-", "x-gogs-", "x-github-"]
                    .iter()
                    .any(|p| name.starts_with(p)),
            "{line}"
        );
        assert!(!name.contains("signature"), "{line}");
    }
});
