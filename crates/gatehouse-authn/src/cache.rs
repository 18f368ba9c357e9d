//! Verified tokens, remembered by their hash until they expire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gatehouse_core::{Prehashed, Principal};

pub(crate) type TokenKey = [u8; 32];

/// SHA-256 of a token: the cache never holds the token itself.
pub(crate) fn token_key(token: &str) -> TokenKey {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

/// Counts the keys issuers have withdrawn (a `kid` that was published and is no longer): a
/// verified token is only remembered for the count it was verified under, so that a token signed
/// with a withdrawn key (a compromised one, rotated out) is checked again, and refused, at once
/// rather than accepted until it expires.
pub(crate) type Withdrawals = Arc<AtomicU64>;

#[derive(Debug)]
pub(crate) struct TokenCache {
    max: usize,
    withdrawals: Withdrawals,
    /// Keyed by the digest itself: hashing it again would add nothing.
    map: RwLock<HashMap<TokenKey, Entry, Prehashed>>,
}

/// A verified principal, when its token expires, and the withdrawal count it was verified under.
type Entry = (Arc<Principal>, i64, u64);

impl TokenCache {
    pub(crate) fn new(max: usize, withdrawals: Withdrawals) -> Self {
        Self {
            max,
            withdrawals,
            map: RwLock::new(HashMap::default()),
        }
    }

    pub(crate) fn get(&self, key: &TokenKey, now: i64) -> Option<Arc<Principal>> {
        let map = self.map.read().ok()?;
        match map.get(key) {
            Some((p, exp, seen))
                if now <= *exp && *seen == self.withdrawals.load(Ordering::Acquire) =>
            {
                Some(p.clone())
            }
            _ => None,
        }
    }

    pub(crate) fn insert(&self, key: TokenKey, p: Arc<Principal>, exp: i64) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.len() >= self.max {
            // Entries are never kept past `exp`; dropping them all is the simple bound.
            map.clear();
        }
        let seen = self.withdrawals.load(Ordering::Acquire);
        map.insert(key, (p, exp, seen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawn_key_forgets_every_verified_token() {
        let withdrawals = Withdrawals::default();
        let cache = TokenCache::new(8, withdrawals.clone());
        let p = Arc::new(Principal {
            kind: gatehouse_core::PrincipalKind::User,
            issuer: "i".into(),
            subject: "alice".into(),
            username: "alice".into(),
            display_name: None,
            email: None,
            groups: Vec::new(),
            token_id: None,
            expires_at: None,
            environment: None,
            workload: None,
            derived_from: Vec::new(),
        });
        cache.insert(token_key("a"), p, 100);
        assert!(cache.get(&token_key("a"), 50).is_some());
        assert!(cache.get(&token_key("a"), 101).is_none(), "expired");
        withdrawals.fetch_add(1, Ordering::AcqRel);
        assert!(
            cache.get(&token_key("a"), 50).is_none(),
            "kept past a withdrawal"
        );
    }
}
