//! A hasher for map keys that are already hashes.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a key that is already uniformly distributed and not chosen by a client (a SHA-256
/// digest, or a hash keyed with a per-process random key) by taking its first eight bytes,
/// instead of hashing it again with SipHash. Not for anything else: on client-chosen keys it
/// would allow collisions on purpose.
pub type Prehashed = BuildHasherDefault<PrehashedHasher>;

/// The hasher of [`Prehashed`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }

    /// A length prefix (every digest of a kind has the same length): nothing to add.
    fn write_usize(&mut self, _: usize) {}
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn a_digest_hashes_to_its_first_eight_bytes_and_a_u64_to_itself() {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        d[8] = 0xff;
        assert_eq!(Prehashed::default().hash_one(d), 0x0123_4567_89ab_cdef);
        assert_eq!(Prehashed::default().hash_one(42u64), 42);
        // Different digests land apart; a short key still hashes.
        let mut e = d;
        e[0] ^= 1;
        assert_ne!(
            Prehashed::default().hash_one(d),
            Prehashed::default().hash_one(e)
        );
        assert_eq!(Prehashed::default().hash_one([7u8, 0]), 7);
    }
}
