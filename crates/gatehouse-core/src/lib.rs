//! Gatehouse's shared vocabulary: who is calling ([`Principal`]), what they touch ([`Resource`]),
//! what they want to do ([`Action`]), what was decided ([`Decision`]), a [`Redacted`] wrapper for
//! secrets and the injected [`Clock`].
//!
//! This crate owns plain data types only. It must not do I/O, spawn tasks or depend on tokio, hyper or
//! any protocol crate: every other crate depends on it, so it stays small and pure.
#![forbid(unsafe_code)]

mod action;
mod clock;
mod principal;
mod redacted;
mod resource;

pub use action::{Action, ParseActionError};
pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use principal::{Claims, Principal, PrincipalKind};
pub use redacted::Redacted;
pub use resource::{RepoRef, Resource, Route};

/// The outcome of an authorization decision, with what a human needs to understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Ids of the policies that determined the decision (empty for the default deny).
    pub policies: Vec<String>,
    /// A stable, machine-readable reason code (`allowed`, `no_matching_permit`, `forbidden`, ...).
    pub reason: String,
}

impl Decision {
    /// The policy id that decided, or `default-deny` when none matched.
    pub fn deciding_policy(&self) -> String {
        if self.policies.is_empty() {
            "default-deny".to_owned()
        } else {
            self.policies.join(",")
        }
    }
}
