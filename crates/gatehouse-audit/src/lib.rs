//! The audit trail: one [`AuditRecord`] per request, written as JSON lines in which every line
//! carries the SHA-256 of the line before it, so that any edit, deletion, reordering or truncation
//! is found by [`verify`].
//!
//! Records reach one writer thread through a bounded channel; the writer appends whole batches and
//! `fdatasync`s them (group commit). A caller reserves its slot *before* serving a request
//! ([`AuditSink::reserve`]); when the channel is full or the last write failed, reservation fails
//! and the request is refused. Gatehouse never serves a request it cannot audit.
//!
//! With a size or age limit the writer rotates: the full file becomes `<log>.<first>-<last>` and
//! the chain continues in a new file whose first record links to it; [`verify`] checks the
//! rotated files and the log as one chain.
//!
//! This crate must never receive a credential: records hold identities and decisions, not tokens.
#![forbid(unsafe_code)]

mod chain;
mod record;
mod search;
mod span;
mod writer;

pub use chain::{ChainHead, GENESIS, VerifyError, VerifyReport, hash_line, rotated_parts, verify};
pub use record::{AuditHook, AuditPrincipal, AuditRecord, AuditRef, AuditSecret};
pub use search::{JobRecord, PushMatch, SearchError, SearchQuery, search, search_job};
pub use span::{SpanIds, SpanSink};
pub use writer::{
    AuditOptions, AuditSink, AuditSlot, AuditUnavailable, COMMIT_TIMEOUT, FlushStats, OpenError,
    PushIndexSink, PushedRef,
};
