//! Gatehouse's shared vocabulary: who is calling ([`Principal`]), what they touch ([`Resource`]),
//! what they want to do ([`Action`]), what was decided ([`Decision`]), a [`Redacted`] wrapper for
//! secrets and the injected [`Clock`].
//!
//! This crate owns plain data types only. It must not do I/O, spawn tasks or depend on tokio, hyper or
//! any protocol crate: every other crate depends on it, so it stays small and pure.
#![forbid(unsafe_code)]

mod action;
mod clock;
mod prehashed;
mod principal;
mod redacted;
mod resource;
mod revocation;
mod trace;

pub use action::{Action, ParseActionError};
pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use prehashed::{Prehashed, PrehashedHasher};
pub use principal::{Claims, Principal, PrincipalKind, Workload};
pub use redacted::Redacted;
pub use resource::{OwnerRef, RepoRef, Resource, Route, Via};
pub use revocation::{JOB_ENDED_FOR, RevocationChange, RevocationKind, Revocations, Revoked};
pub use trace::TraceParent;

/// The outcome of an authorization decision, with what a human needs to understand it.
///
/// Cheap to clone (shared text): the policy engine hands out copies of cached decisions, and the
/// audit record keeps the deciding policy and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Ids of the policies that determined the decision (empty for the default deny).
    pub policies: std::sync::Arc<[String]>,
    /// A stable, machine-readable reason code (`allowed`, `no_matching_permit`, `forbidden`, ...).
    pub reason: std::sync::Arc<str>,
    /// `policies` joined with commas, or `default-deny`.
    deciding: std::sync::Arc<str>,
}

impl Decision {
    /// A decision by `policies` (none: the default deny) for `reason`.
    pub fn new(allowed: bool, policies: Vec<String>, reason: &str) -> Self {
        let deciding = if policies.is_empty() {
            "default-deny".into()
        } else {
            policies.join(",").into()
        };
        Self {
            allowed,
            policies: policies.into(),
            reason: reason.into(),
            deciding,
        }
    }

    /// The policy id that decided, or `default-deny` when none matched.
    pub fn deciding_policy(&self) -> std::sync::Arc<str> {
        self.deciding.clone()
    }
}

#[cfg(test)]
mod decision_tests {
    use super::Decision;

    #[test]
    fn the_deciding_policy_names_every_policy_or_the_default_deny() {
        let d = Decision::new(true, vec!["a".into(), "b".into()], "allowed");
        assert_eq!(&*d.deciding_policy(), "a,b");
        assert_eq!(&*d.reason, "allowed");
        let d = Decision::new(false, vec![], "no_matching_permit");
        assert_eq!(&*d.deciding_policy(), "default-deny");
        assert!(d.policies.is_empty());
    }
}
