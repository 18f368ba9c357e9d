//! Verified tokens, remembered by their hash until they expire.

use std::collections::HashMap;
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

#[derive(Debug)]
pub(crate) struct TokenCache {
    max: usize,
    /// Keyed by the digest itself: hashing it again would add nothing.
    map: RwLock<HashMap<TokenKey, (Arc<Principal>, i64), Prehashed>>,
}

impl TokenCache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            map: RwLock::new(HashMap::default()),
        }
    }

    pub(crate) fn get(&self, key: &TokenKey, now: i64) -> Option<Arc<Principal>> {
        let map = self.map.read().ok()?;
        match map.get(key) {
            Some((p, exp)) if now <= *exp => Some(p.clone()),
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
        map.insert(key, (p, exp));
    }
}
