//! Audited events as trace spans. Every request, decision and relay attempt already ends in one
//! [`AuditRecord`]; a [`SpanSink`] (the OTLP exporter, when configured) gets the same record with
//! the W3C ids of the span it was, so that what a tracing backend shows and what the audit log
//! says are one account of the event, and the trace continues into the forge with the
//! `traceparent` Gatehouse sent it.

use std::fmt;

use crate::AuditRecord;

/// The W3C trace context of one event: its trace, its own span, the caller's span (from the
/// `traceparent` it sent, if any) and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// This event's span id, the parent id of the hop after Gatehouse (never all zero).
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the trace is sampled (the `traceparent` flag sent on): only sampled spans are
    /// exported.
    pub sampled: bool,
}

impl SpanIds {
    /// The trace id as the 32 lower-case hex digits of `traceparent` and the audit record.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` value for the next hop: this span as its parent.
    pub fn traceparent(&self) -> String {
        // Written by hand: it is made for every request, and `format!` showed in profiles.
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Where finished events go as spans. Called on the request path once the record is final (its
/// duration, status and outcome set), so an implementation must never block or fail the request:
/// it queues, and drops (and counts) what it cannot keep.
pub trait SpanSink: Send + Sync + fmt::Debug {
    /// An event that ended: its record, as the audit log gets it, and its ids.
    fn finished(&self, record: &AuditRecord, ids: &SpanIds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_names_this_span_and_the_sampling_flag() {
        let ids = SpanIds {
            trace_id: [0x4b; 16],
            span_id: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            parent_span_id: None,
            sampled: false,
        };
        assert_eq!(
            ids.traceparent(),
            "00-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-0123456789abcdef-00"
        );
        assert_eq!(ids.trace_id_hex(), "4b".repeat(16));
    }
}
