//! Header hygiene: hop-by-hop headers, identity headers a client must never set, the
//! `X-Forwarded-*` family, `X-Request-Id` and W3C `traceparent`.

use std::net::IpAddr;
use std::sync::Arc;

use gatehouse_audit::SpanIds;
use gatehouse_config::IpNet;
use gatehouse_core::TraceParent;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Identity-bearing headers stripped from every inbound request, whatever the configuration,
/// compared as [`normalized`] names: reverse-proxy identity headers the forge or an app behind
/// Gatehouse may trust, and URL overrides some frameworks honour.
const ALWAYS_STRIPPED: [&str; 8] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-original-url",
    "x-rewrite-url",
    // Gitea and Forgejo let an admin token act as the user this names (checked before the
    // reverse-proxy header).
    "sudo",
];

/// Prefixes of identity header families stripped from every inbound request: Gitea's and Gogs's
/// reverse-proxy headers (`X-WEBAUTH-*`, whichever the forge is set to read), Gatehouse's own
/// `X-Gatehouse-*` (even when the assertion is renamed or off), `Remote-*` and `X-Remote-*`
/// (Apache, Authelia), `X-Auth-Request-*` (oauth2-proxy) and `X-authentik-*`.
const ALWAYS_STRIPPED_PREFIXES: [&str; 6] = [
    "x-webauth-",
    "x-gatehouse-",
    "remote-",
    "x-remote-",
    "x-auth-request-",
    "x-authentik-",
];

/// Headers Gatehouse sets itself: a client's spelling of them with `_` is dropped, since CGI,
/// WSGI, PHP, Rack and nginx with `underscores_in_headers` read it as the same variable.
const SET_BY_GATEHOUSE: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// A header name as an upstream that reads `_` as `-` sees it (CGI's `HTTP_X_WEBAUTH_USER` is
/// the same variable for `X-WEBAUTH-USER` and `X_WEBAUTH_USER`); names are already lowercase.
pub(crate) fn normalized(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('_') {
        std::borrow::Cow::Owned(name.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Which client-sent headers never reach the upstream: the identity families above, the
/// configured identity header names and `identity_headers.strip`, in any spelling an upstream
/// may read as theirs; and `_` spellings of the headers Gatehouse sets.
#[derive(Debug)]
pub(crate) struct ClientHeaderFilter {
    /// Normalized names, exact, as header names (parsed once; a name that is none cannot
    /// arrive from a client either).
    names: Vec<HeaderName>,
}

impl ClientHeaderFilter {
    /// The filter for these configured names (identity headers and `strip`).
    pub(crate) fn new<'a>(configured: impl IntoIterator<Item = &'a str>) -> Self {
        let mut exact: Vec<String> = ALWAYS_STRIPPED.iter().map(|s| (*s).to_owned()).collect();
        for n in configured {
            let n = normalized(&n.to_ascii_lowercase()).into_owned();
            if !n.is_empty() && !exact.contains(&n) {
                exact.push(n);
            }
        }
        let names = exact
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        ClientHeaderFilter { names }
    }

    /// The exact names the filter drops (its prefixes aside), as header names (parsed once).
    pub(crate) fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// Whether a client's header `name` (lowercase, as `http` keeps it) is dropped.
    pub(crate) fn drops(&self, name: &HeaderName) -> bool {
        let raw = name.as_str();
        let n = normalized(raw);
        ALWAYS_STRIPPED_PREFIXES.iter().any(|p| n.starts_with(p))
            || self.names.iter().any(|e| e.as_str() == n)
            || (raw.contains('_') && SET_BY_GATEHOUSE.contains(&n.as_ref()))
    }
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), and the
/// non-standard `Proxy-Connection`.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds the few that are there (most messages carry none, or only
    // `Connection`); each removal costs a hashed lookup, so only those present are removed.
    let mut present: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    if present.is_empty() {
        return;
    }
    present.extend(
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .filter(|n| !is_hop_by_hop(n)),
    );
    for n in present {
        h.remove(n);
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most address
/// in `X-Forwarded-For` that is not itself a trusted proxy.
pub(crate) fn client_ip(peer: IpAddr, h: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = h
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// An address as text, the way `Display` writes it; IPv4 without the formatting machinery
/// (this runs for every request).
pub(crate) fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. A trusted peer's values are
/// extended; anybody else's are replaced. `peer` and `client` are addresses as [`ip_text`]
/// writes them.
pub(crate) fn set_forwarded(
    h: &mut HeaderMap,
    peer: &str,
    client: &str,
    proto: &str,
    host: &str,
    trusted_peer: bool,
) {
    let prior: Vec<&str> = if trusted_peer {
        h.get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if prior.is_empty() {
        HeaderValue::from_str(peer)
    } else {
        HeaderValue::from_str(&format!("{}, {peer}", prior.join(", ")))
    };
    let keep_proto = trusted_peer && h.contains_key(X_FORWARDED_PROTO);
    let keep_host = trusted_peer && h.contains_key(X_FORWARDED_HOST);
    h.remove(FORWARDED);
    if let Ok(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !keep_proto {
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
        );
    }
    if !keep_host {
        match HeaderValue::from_str(host) {
            Ok(v) => {
                h.insert(X_FORWARDED_HOST, v);
            }
            Err(_) => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(client) {
        h.insert(X_REAL_IP, v);
    }
}

/// A request id from the client when it is short and plain, or a new one.
pub(crate) fn request_id(h: &HeaderMap) -> Arc<str> {
    own_request_id(h.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()))
}

/// A request id the caller sent, kept when it is short plain text (at most 128 of letters,
/// digits, `-`, `_`, `.`, `:`), else a new one.
pub(crate) fn own_request_id(sent: Option<&str>) -> Arc<str> {
    sent.filter(|s| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    })
    .map_or_else(new_request_id, Arc::from)
}

/// A fresh UUIDv7 request id: the time in milliseconds, then random bits from the per-thread
/// generator (`Uuid::now_v7` asks the kernel for randomness on every call: a syscall per request).
fn new_request_id() -> Arc<str> {
    let (secs, nanos) = uuid::Timestamp::now(uuid::NoContext).to_unix();
    let millis = secs.saturating_mul(1000) + u64::from(nanos / 1_000_000);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next_random().to_le_bytes());
    random[8..].copy_from_slice(&next_random().to_le_bytes()[..2]);
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text)
        .into()
}

thread_local! {
    /// Per-thread state of a xorshift generator for trace and span ids, seeded from the system's
    /// CSPRNG once per thread. Ids need to be unique and hard to guess, not secret; a syscall per
    /// request for them showed up in profiles.
    static TRACE_RNG: std::cell::Cell<u64> = std::cell::Cell::new({
        let mut seed = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut seed).is_err() {
            seed.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        }
        u64::from_le_bytes(seed) | 1
    });
}

/// Seeds the system CSPRNG now rather than on the first request: its first use gathers
/// jitter entropy for tens of milliseconds (49 ms measured on the benchmark machine), which the
/// first request after every start used to pay.
pub(crate) fn warm_up_rng() {
    let _ = next_random();
}

fn next_random() -> u64 {
    TRACE_RNG.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// W3C trace context for this hop. A valid inbound `traceparent` keeps its trace id, and its
/// span becomes this one's parent; its sampled flag decides when `follow_sampling` (the caller
/// is a trusted proxy, or `traces.trust_caller_sampling`), else the ratio does, so that no
/// client can have all its requests exported. Without one, a new trace starts, sampled with
/// probability `sample_ratio` (decided by the trace id, as OpenTelemetry's `TraceIdRatioBased`
/// does). Gatehouse's own span id is new either way; [`SpanIds::traceparent`] is what the next
/// hop gets. `follow_sampling` is asked only when there is a valid `traceparent` to follow.
pub(crate) fn trace_context(
    h: &HeaderMap,
    sample_ratio: f64,
    follow_sampling: impl FnOnce() -> bool,
) -> SpanIds {
    let inbound = h
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span_id = nonzero_u64().to_be_bytes();
    match inbound {
        Some(t) => SpanIds {
            trace_id: t.trace_id,
            span_id,
            parent_span_id: Some(t.parent_id),
            sampled: if follow_sampling() {
                t.sampled()
            } else {
                ratio_samples(&t.trace_id, sample_ratio)
            },
        },
        None => {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
            trace_id[8..].copy_from_slice(&next_random().to_be_bytes());
            SpanIds {
                trace_id,
                span_id,
                parent_span_id: None,
                sampled: ratio_samples(&trace_id, sample_ratio),
            }
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = next_random();
        if v != 0 {
            return v;
        }
    }
}

/// Whether a new trace is sampled at `ratio`: the trace id's last eight bytes, as a number, below
/// `ratio` of the range.
fn ratio_samples(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // Compared in 63 bits, as u64 -> f64 loses the lowest ones anyway.
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn identity_headers_are_dropped_in_every_spelling_an_upstream_reads() {
        let f = ClientHeaderFilter::new(["X-WEBAUTH-USER", "X-Custom_Identity", ""]);
        let drops = |n: &str| f.drops(&HeaderName::from_bytes(n.as_bytes()).unwrap());
        for n in [
            "x-webauth-user",
            "X_WEBAUTH_USER",
            "x_webauth-login",
            "x-gatehouse-assertion",
            "x_gatehouse_anything",
            "x-custom-identity",
            "x_custom_identity",
            "remote-user",
            "remote_groups",
            "x-remote-user",
            "x-forwarded-user",
            "x_forwarded_email",
            "x-forwarded-preferred-username",
            "x-forwarded-groups",
            "x-forwarded-access-token",
            "x-auth-request-user",
            "x_auth_request_email",
            "x-authentik-username",
            "x-original-url",
            "x_rewrite_url",
            "sudo",
            // `_` spellings of what Gatehouse sets itself
            "x_forwarded_for",
            "x_forwarded_host",
            "x_request_id",
            "x_real_ip",
        ] {
            assert!(drops(n), "{n} reached the upstream");
        }
        for n in [
            "x-forwarded-for",
            "x-request-id",
            "traceparent",
            "x-real-ip",
            "accept",
            "x_custom_thing",
            "content-type",
            "x-remoteness",
            "sudoku",
            "user-agent",
        ] {
            assert!(!drops(n), "{n} was dropped");
        }
    }

    /// `set_forwarded` for a plain-HTTP request to `git.example`.
    fn forward(h: &mut HeaderMap, peer: IpAddr, client: IpAddr, trusted_peer: bool) {
        let (peer, client) = (ip_text(peer), ip_text(client));
        set_forwarded(h, &peer, &client, "http", "git.example", trusted_peer);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_hop_by_hop_name_goes_with_all_its_values() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for name in names {
            let mut h = headers(&[(name, "a"), ("x-kept", "1"), (name, "b")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}");
            assert!(h.contains_key("x-kept"), "{name}");
        }
        // Names listed in Connection go too, in any case and with any spacing, across values.
        let mut h = headers(&[
            ("connection", "close ,X-One"),
            ("connection", "x-two"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn forwarded_for_from_untrusted_peers_is_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let peer = ip("10.0.0.5");
        let c = client_ip(peer, &h, &[]);
        assert_eq!(c, peer);
        forward(&mut h, peer, c, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "git.example");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8"
                .parse()
                .unwrap_or_else(|e: String| panic!("{e}")),
        ];
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer = ip("10.0.0.5");
        let c = client_ip(peer, &h, &trusted);
        assert_eq!(c, ip("203.0.113.7"));
        forward(&mut h, peer, c, true);
        assert_eq!(
            h["x-forwarded-for"],
            "6.6.6.6, 203.0.113.7, 10.1.1.1, 10.0.0.5"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "203.0.113.7");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.9.99",
            "192.168.100.255",
            "255.255.255.255",
            "1.20.100.7",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(ip_text(ip(a)), ip(a).to_string(), "{a}");
        }
        for n in 0..=255u8 {
            let v4 = IpAddr::from([n, 255 - n, n / 3, n.wrapping_mul(7)]);
            assert_eq!(ip_text(v4), v4.to_string());
        }
    }

    #[test]
    fn headers_without_hop_by_hop_names_are_left_alone() {
        let mut h = headers(&[("host", "a"), ("x-kept", "1"), ("authorization", "b")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        let mut h = headers(&[("x-kept", "1"), ("proxy-connection", "keep-alive")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        let mut h = headers(&[("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            &*request_id(&headers(&[("x-request-id", "abc-123")])),
            "abc-123"
        );
        assert_ne!(
            &*request_id(&headers(&[("x-request-id", "bad id\"")])),
            "bad id\""
        );
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
        let a = uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).unwrap();
        let b = uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).unwrap();
        assert_eq!(a.get_version_num(), 7);
        assert_ne!(a, b);
        assert!(a.get_timestamp().is_some());
    }

    #[test]
    fn traceparent_is_propagated_with_a_new_span() {
        let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = trace_context(&headers(&[("traceparent", inbound)]), 0.0, || true);
        assert_eq!(ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ids.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        // The caller's flag decides, whatever the ratio for new traces.
        assert!(ids.sampled);
        let tp = ids.traceparent();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert_eq!(tp.len(), inbound.len());
        assert_ne!(tp, inbound);
        // From a caller whose flag is not followed: the ratio decides, the trace stays.
        let ids = trace_context(&headers(&[("traceparent", inbound)]), 0.0, || false);
        assert_eq!(ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ids.parent_span_id.is_some());
        assert!(!ids.sampled);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ids = trace_context(&headers(&[("traceparent", unsampled)]), 1.0, || true);
        assert!(!ids.sampled);
        assert!(ids.traceparent().ends_with("-00"));

        let fresh = trace_context(&HeaderMap::new(), 1.0, || true);
        let tp = fresh.traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts, ["00", fresh.trace_id_hex().as_str(), parts[2], "01"]);
        assert_eq!(fresh.parent_span_id, None);
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(tp.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let ids = trace_context(&headers(&[("traceparent", bad)]), 1.0, || true);
            assert_eq!(ids.parent_span_id, None, "{bad}");
            assert_ne!(
                ids.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
        }
        // A later version with more fields is read for the fields version 00 has.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next";
        let ids = trace_context(&headers(&[("traceparent", v1)]), 1.0, || true);
        assert_eq!(ids.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        assert!((0..100).all(|_| trace_context(&HeaderMap::new(), 1.0, || true).sampled));
        assert!((0..100).all(|_| !trace_context(&HeaderMap::new(), 0.0, || true).sampled));
        let n = (0..20_000)
            .filter(|_| trace_context(&HeaderMap::new(), 0.25, || true).sampled)
            .count();
        assert!((4_500..5_500).contains(&n), "{n} of 20000 sampled at 0.25");
    }
}
