//! Proving a delivery came from its sender, as each sender signs it.
//!
//! - **Gitea, Forgejo, Gogs** (`services/webhook/deliver.go`, Forgejo's
//!   `services/webhook/shared/payloader.go`, Gogs' `internal/database/webhook.go`): HMAC-SHA256,
//!   keyed by the secret's bytes, over the JSON payload, as bare lower-case hex in
//!   `X-Gitea-Signature` / `X-Forgejo-Signature` / `X-Gogs-Signature`. With the form content
//!   type the body is `payload=<the JSON, URL-encoded>` and the HMAC still covers the JSON, so
//!   the `payload` field is decoded and that is verified. A hook without a secret sends the
//!   header empty: unsigned.
//! - **GitHub**: `X-Hub-Signature-256: sha256=<hex>` over the body as sent (form or JSON).
//! - **Standard Webhooks**: `webhook-signature` holds space-separated `v1,<base64>` signatures
//!   of `{webhook-id}.{webhook-timestamp}.{body}` under the `whsec_` secret's decoded bytes;
//!   the timestamp must be within the tolerance of now.
//!
//! Every comparison is in constant time (`aws_lc_rs::hmac::verify`), and every configured
//! secret is tried, so a rotation accepts the old and the new secret at once.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;

use crate::HookKind;

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// No signature, or an empty one.
    #[error("the delivery is not signed ({0} is missing or empty)")]
    Unsigned(&'static str),
    /// A signature that is not of the expected form.
    #[error("the signature in {0} is malformed")]
    Malformed(&'static str),
    /// A signature none of the hook's secrets made.
    #[error("the signature does not match the body under any of the hook's secrets")]
    BadSignature,
    /// The sender's delivery id is missing or unusable.
    #[error("the delivery id ({0}) is missing or malformed")]
    NoDeliveryId(&'static str),
    /// The event name is missing or unusable.
    #[error("the event ({0}) is missing or malformed")]
    NoEvent(&'static str),
    /// A Standard Webhooks timestamp too far from now.
    #[error("webhook-timestamp is {0} s away from now, more than the hook's tolerance")]
    Stale(i64),
    /// A form body without its `payload` field.
    #[error("a form delivery without its payload field")]
    NoPayload,
    /// A form body that is not exactly one `payload` field, escaped as Go escapes it.
    #[error("a form delivery must be exactly one payload field, escaped as the forge escapes it")]
    BadForm,
    /// The sender's headers say two different things (two events, two delivery ids).
    #[error("{0} disagrees with the other event headers")]
    Inconsistent(&'static str),
}

impl Rejected {
    /// A stable code for the answer and the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::Unsigned(_) => "signature_missing",
            Rejected::Malformed(_) => "signature_malformed",
            Rejected::BadSignature => "signature_invalid",
            Rejected::NoDeliveryId(_) => "delivery_id_missing",
            Rejected::NoEvent(_) => "event_missing",
            Rejected::Stale(_) => "timestamp_out_of_tolerance",
            Rejected::NoPayload => "payload_missing",
            Rejected::BadForm => "form_malformed",
            Rejected::Inconsistent(_) => "headers_inconsistent",
        }
    }
}

/// A delivery whose signature holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sender's delivery id.
    pub delivery_id: String,
    /// The event (`X-Gitea-Event` and the like; the payload's `type` for Standard Webhooks).
    pub event: String,
    /// The finer event type Gitea and Forgejo send (`pull_request_sync`), if any.
    pub event_type: Option<String>,
    /// The JSON the signature covers (the form's `payload` field, decoded, or the body).
    pub json: Vec<u8>,
}

/// The headers of a kind, by role.
struct Names {
    signature: &'static str,
    delivery: &'static str,
    event: &'static str,
    event_type: Option<&'static str>,
}

fn names(kind: HookKind) -> Names {
    match kind {
        HookKind::Gitea => Names {
            signature: "x-gitea-signature",
            delivery: "x-gitea-delivery",
            event: "x-gitea-event",
            event_type: Some("x-gitea-event-type"),
        },
        HookKind::Forgejo => Names {
            signature: "x-forgejo-signature",
            delivery: "x-forgejo-delivery",
            event: "x-forgejo-event",
            event_type: Some("x-forgejo-event-type"),
        },
        HookKind::Gogs => Names {
            signature: "x-gogs-signature",
            delivery: "x-gogs-delivery",
            event: "x-gogs-event",
            event_type: None,
        },
        HookKind::Github => Names {
            signature: "x-hub-signature-256",
            delivery: "x-github-delivery",
            event: "x-github-event",
            event_type: None,
        },
        HookKind::Standard => Names {
            signature: "webhook-signature",
            delivery: "webhook-id",
            event: "",
            event_type: None,
        },
    }
}

impl HookKind {
    /// The header that carries the sender's delivery id.
    pub fn delivery_header(self) -> &'static str {
        names(self).delivery
    }
}

/// Whether `s` is a delivery id or event name as kept and relayed.
pub fn is_token(s: &str) -> bool {
    token(s)
}

/// The one value of header `name`: `None` when absent, empty, repeated or not visible ASCII.
fn one<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut all = h.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok().map(str::trim).filter(|s| !s.is_empty())
}

/// An id or event name as kept and relayed: 1 to 128 visible ASCII characters.
fn token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether the body is a form (`application/x-www-form-urlencoded`).
fn is_form(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The `payload` field of a form body. The body must be exactly `payload=<value>`, the value
/// escaped as Go's `url.QueryEscape` writes it (what Gitea, Forgejo, Gogs and GitHub send):
/// with a second field, or an escape Go's `url.ParseQuery` would refuse, receivers could read a
/// different field than the one whose signature was checked, so such a form is refused.
fn form_payload(body: &[u8]) -> Result<Vec<u8>, Rejected> {
    let Some(value) = body.strip_prefix(b"payload=") else {
        let has_payload = url::form_urlencoded::parse(body).any(|(k, _)| k == "payload");
        return Err(if has_payload {
            Rejected::BadForm
        } else {
            Rejected::NoPayload
        });
    };
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            // A second field (`&`, or `;` which Go refuses), or a byte Go's encoder escapes.
            b'&' | b';' | b'=' => return Err(Rejected::BadForm),
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    value.get(i + 1).copied().and_then(hex),
                    value.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Rejected::BadForm);
                };
                out.push(u8::try_from(h * 16 + l).map_err(|_| Rejected::BadForm)?);
                i += 2;
            }
            b if b.is_ascii_graphic() => out.push(b),
            _ => return Err(Rejected::BadForm),
        }
        i += 1;
    }
    Ok(out)
}

/// The headers every forge that mimics others sends along (Gitea sends its own, Gogs' and
/// GitHub's; Forgejo also its own): each present must say what the verified ones say.
const EVENT_HEADERS: [&str; 4] = [
    "x-gitea-event",
    "x-forgejo-event",
    "x-gogs-event",
    "x-github-event",
];
const DELIVERY_HEADERS: [&str; 4] = [
    "x-gitea-delivery",
    "x-forgejo-delivery",
    "x-gogs-delivery",
    "x-github-delivery",
];
const EVENT_TYPE_HEADERS: [&str; 4] = [
    "x-gitea-event-type",
    "x-forgejo-event-type",
    "x-gogs-event-type",
    "x-github-event-type",
];

/// Refuses headers that disagree with the verified event, event type and delivery id: the
/// signature covers none of them, and receivers may read any one.
fn consistent(h: &HeaderMap, v: &Verified) -> Result<(), Rejected> {
    let agree = |names: &[&'static str], want: Option<&str>| -> Result<(), Rejected> {
        let mut seen = want;
        for n in names {
            let mut all = h.get_all(*n).iter();
            let Some(first) = all.next() else { continue };
            let value = first.to_str().map(str::trim).ok();
            if all.next().is_some() || value.is_none() {
                return Err(Rejected::Inconsistent(n));
            }
            match seen {
                None => seen = value,
                Some(w) if Some(w) == value => {}
                Some(_) => return Err(Rejected::Inconsistent(n)),
            }
        }
        Ok(())
    };
    agree(&EVENT_HEADERS, Some(&v.event))?;
    agree(&DELIVERY_HEADERS, Some(&v.delivery_id))?;
    agree(&EVENT_TYPE_HEADERS, v.event_type.as_deref())
}

/// Verifies `body` with `headers` as a delivery of `kind`, under any of `secrets`. `now` and
/// `tolerance` (seconds) only matter to Standard Webhooks.
pub fn verify<S: AsRef<[u8]>>(
    kind: HookKind,
    secrets: &[S],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<Verified, Rejected> {
    let n = names(kind);
    let sig = one(headers, n.signature).ok_or(Rejected::Unsigned(n.signature))?;
    let delivery_id = one(headers, n.delivery)
        .filter(|d| token(d))
        // Standard Webhooks: the id is signed with `.` as the separator, so it holds none.
        .filter(|d| kind != HookKind::Standard || !d.contains('.'))
        .ok_or(Rejected::NoDeliveryId(n.delivery))?
        .to_owned();
    let json = match kind {
        HookKind::Gitea | HookKind::Forgejo | HookKind::Gogs => {
            let mac = hex(sig).ok_or(Rejected::Malformed(n.signature))?;
            let json = if is_form(headers) {
                form_payload(body)?
            } else {
                body.to_vec()
            };
            check(secrets, &json, &mac)?;
            json
        }
        HookKind::Github => {
            let mac = sig
                .strip_prefix("sha256=")
                .and_then(hex)
                .ok_or(Rejected::Malformed(n.signature))?;
            check(secrets, body, &mac)?;
            if is_form(headers) {
                form_payload(body)?
            } else {
                body.to_vec()
            }
        }
        HookKind::Standard => {
            let ts_text = one(headers, "webhook-timestamp")
                .ok_or(Rejected::Malformed("webhook-timestamp"))?;
            let ts: i64 = ts_text
                .parse()
                .ok()
                .filter(|_| ts_text.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(Rejected::Malformed("webhook-timestamp"))?;
            if (now - ts).abs() > tolerance {
                return Err(Rejected::Stale(now - ts));
            }
            let mut signed = Vec::with_capacity(delivery_id.len() + ts_text.len() + body.len() + 2);
            signed.extend_from_slice(delivery_id.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(ts_text.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            // One tag per secret, then each offered signature compared with them: the work
            // does not grow with the number of signatures an attacker lists.
            let tags: Vec<hmac::Tag> = secrets
                .iter()
                .map(|k| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), &signed))
                .collect();
            let offered: Vec<&str> = sig.split(' ').filter(|s| !s.is_empty()).collect();
            if offered.len() > MAX_SIGNATURES {
                return Err(Rejected::Malformed(n.signature));
            }
            let mut any_v1 = false;
            let mut ok = false;
            for s in offered {
                let Some(("v1", b64)) = s.split_once(',') else {
                    continue;
                };
                any_v1 = true;
                let Ok(mac) = B64.decode(b64) else { continue };
                for t in &tags {
                    ok |=
                        aws_lc_rs::constant_time::verify_slices_are_equal(t.as_ref(), &mac).is_ok();
                }
            }
            if !any_v1 {
                return Err(Rejected::Malformed(n.signature));
            }
            if !ok {
                return Err(Rejected::BadSignature);
            }
            body.to_vec()
        }
    };
    let (event, event_type) = if kind == HookKind::Standard {
        // Standard Webhooks name the event in the payload: `{"type": "...", ...}`.
        let ev = serde_json::from_slice::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .filter(|t| token(t))
            .unwrap_or_else(|| "message".to_owned());
        (ev, None)
    } else {
        let ev = one(headers, n.event)
            .filter(|e| token(e))
            .ok_or(Rejected::NoEvent(n.event))?
            .to_owned();
        let ty = n
            .event_type
            .and_then(|t| one(headers, t))
            .filter(|t| token(t))
            .map(str::to_owned);
        (ev, ty)
    };
    let v = Verified {
        delivery_id,
        event,
        event_type,
        json,
    };
    if kind != HookKind::Standard {
        consistent(headers, &v)?;
    }
    Ok(v)
}

/// The most signatures a Standard Webhooks delivery may offer (a rotation needs two).
const MAX_SIGNATURES: usize = 16;

/// Whether any secret's HMAC-SHA256 of `data` is `mac` (constant time for each).
fn check<S: AsRef<[u8]>>(secrets: &[S], data: &[u8], mac: &[u8]) -> Result<(), Rejected> {
    let mut ok = false;
    // Every secret is tried whatever the outcome, so the time taken says nothing of which.
    for s in secrets {
        let key = hmac::Key::new(hmac::HMAC_SHA256, s.as_ref());
        ok |= hmac::verify(&key, data, mac).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(Rejected::BadSignature)
    }
}

/// Lower-case or upper-case hex of 32 bytes.
fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let val = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

/// HMAC-SHA256 of `data` under `key`, as lower-case hex (how Gitea, Forgejo and Gogs write it).
pub fn hex_hmac(key: &[u8], data: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A Standard Webhooks signature (`v1,<base64>`) of a message under the decoded secret `key`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", B64.encode(ctx.sign().as_ref()))
}

/// The key bytes of a Standard Webhooks secret: `whsec_` and base64 of 24 to 64 bytes.
pub fn standard_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .ok_or("a Standard Webhooks secret starts with whsec_")?;
    let key = B64
        .decode(b64)
        .map_err(|_| "the part after whsec_ is not base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "a Standard Webhooks secret holds 24 to 64 bytes, not {}",
            key.len()
        ));
    }
    Ok(key)
}
