//! Keys derived from the session secret, and the small primitives built on them: random ids,
//! signed cookie values, sealed (encrypted and authenticated) store records, PKCE.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::SessionError;

/// The keys of one session secret.
pub(crate) struct Keys {
    cookie: hmac::Key,
    csrf: hmac::Key,
    seal: LessSafeKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(prk: &hkdf::Prk, label: &[u8]) -> Result<[u8; 32], SessionError> {
    let mut out = [0u8; 32];
    let info = [label];
    prk.expand(&info, Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SessionError::Internal("key derivation failed".into()))?;
    Ok(out)
}

impl Keys {
    /// Derives the cookie, CSRF and sealing keys from a secret of at least 32 bytes.
    pub(crate) fn derive(secret: &[u8]) -> Result<Self, SessionError> {
        if secret.len() < 32 {
            return Err(SessionError::Config(
                "session secret must be at least 32 bytes".into(),
            ));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gatehouse-session-v1").extract(secret);
        let cookie = hmac::Key::new(hmac::HMAC_SHA256, &derive(&prk, b"cookie")?);
        let csrf = hmac::Key::new(hmac::HMAC_SHA256, &derive(&prk, b"csrf")?);
        let seal_key = derive(&prk, b"store-seal")?;
        let seal = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &seal_key)
                .map_err(|_| SessionError::Internal("sealing key".into()))?,
        );
        Ok(Self { cookie, csrf, seal })
    }

    /// `<value>.<mac>`: a value a browser carries and cannot alter.
    pub(crate) fn sign(&self, purpose: &str, value: &str) -> String {
        let tag = hmac::sign(&self.cookie, format!("{purpose}\0{value}").as_bytes());
        format!("{value}.{}", B64.encode(tag.as_ref()))
    }

    /// The value of a signed string, when its MAC verifies.
    pub(crate) fn verify<'a>(&self, purpose: &str, signed: &'a str) -> Option<&'a str> {
        let (value, mac) = signed.rsplit_once('.')?;
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.cookie, format!("{purpose}\0{value}").as_bytes(), &mac).ok()?;
        Some(value)
    }

    /// The CSRF token of a session (what a sign-out form carries).
    pub(crate) fn csrf(&self, session_id: &str) -> String {
        B64.encode(hmac::sign(&self.csrf, session_id.as_bytes()).as_ref())
    }

    /// Whether `token` is the session's CSRF token.
    pub(crate) fn csrf_ok(&self, session_id: &str, token: &str) -> bool {
        B64.decode(token)
            .ok()
            .is_some_and(|t| hmac::verify(&self.csrf, session_id.as_bytes(), &t).is_ok())
    }

    /// Encrypts a record; `aad` binds it to its key so records cannot be swapped.
    pub(crate) fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| SessionError::Internal("rng".into()))?;
        let mut buf = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SessionError::Internal("seal".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts a record sealed under the same `aad`; `None` when it does not authenticate
    /// (another secret, or tampered with).
    pub(crate) fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// `n` random bytes, base64url.
pub(crate) fn random_token(n: usize) -> Result<String, SessionError> {
    let mut b = vec![0u8; n];
    rand::fill(&mut b).map_err(|_| SessionError::Internal("rng".into()))?;
    Ok(B64.encode(b))
}

/// Lowercase hex SHA-256: how values are keyed in the store.
pub(crate) fn store_key(value: &str) -> String {
    digest::digest(&digest::SHA256, value.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    B64.encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&[7u8; 32]).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Keys::derive(&[1u8; 31]).is_err());
    }

    #[test]
    fn signed_values_verify_and_tampering_does_not() {
        let k = keys();
        let s = k.sign("session", "abc");
        assert_eq!(k.verify("session", &s), Some("abc"));
        assert_eq!(k.verify("login", &s), None, "purpose is bound");
        let mut t = s.clone();
        t.replace_range(0..1, "x");
        assert_eq!(k.verify("session", &t), None);
        assert_eq!(k.verify("session", "abc"), None);
        assert_eq!(k.verify("session", "abc."), None);
        let other = Keys::derive(&[8u8; 32]).unwrap();
        assert_eq!(other.verify("session", &s), None);
    }

    #[test]
    fn sealed_records_open_only_with_their_key_and_aad() {
        let k = keys();
        let sealed = k.seal("sessions/a", b"refresh-token").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"refresh-token"));
        assert_eq!(k.open("sessions/a", &sealed).unwrap(), b"refresh-token");
        assert!(k.open("sessions/b", &sealed).is_none());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open("sessions/a", &bad).is_none());
        assert!(k.open("sessions/a", &[1, 2, 3]).is_none());
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let k = keys();
        let t = k.csrf("s1");
        assert!(k.csrf_ok("s1", &t));
        assert!(!k.csrf_ok("s2", &t));
        assert!(!k.csrf_ok("s1", "garbage!"));
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
