//! Says why an HTTP request to an issuer (or any other service) failed, in the words an operator
//! acts on: the DNS lookup, a refused connection, the TLS handshake, a timeout. reqwest's own
//! message names only the URL; the cause is down its chain of sources.

use std::error::Error as _;

/// `connection refused (tcp connect error: Connection refused (os error 111))`: the kind of
/// failure first, then every cause reqwest's error carries.
pub fn explain_http_error(e: &reqwest::Error) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            // An io::Error's source skips the error it wraps (rustls' TLS errors come that way).
            if let Some(inner) = io.get_ref() {
                let text = inner.to_string();
                if chain.last() != Some(&text) {
                    chain.push(text);
                }
            }
        }
        src = s.source();
    }
    let text = chain.join(": ");
    let lower = text.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        "timed out"
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "DNS lookup failed"
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
        || lower.contains("connection refused")
    {
        "connection refused"
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
        || lower.contains("corrupt message")
        || lower.contains("invalidcontenttype")
    {
        "TLS handshake failed"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the response could not be read"
    } else {
        "request failed"
    };
    if text.is_empty() {
        format!("{kind} ({e})")
    } else {
        format!("{kind} ({text})")
    }
}
