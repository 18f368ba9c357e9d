//! Envelope encryption: master keys wrap one data key per secret; data keys seal values. Both
//! with AES-256-GCM and a fresh random 96-bit nonce per operation, each bound by its associated
//! data to where it belongs (a data key to its path, a value to its path and version), so a
//! sealed value or wrapped key copied to another row does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, rand};
use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

use crate::SecretError;

/// A master key, known by its id (a digest prefix; the key never leaves the process).
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A master key from its text: 32 bytes as 64 hex digits or as base64 (standard or URL-safe,
    /// padded or not), surrounding whitespace ignored.
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        // Decoded into buffers that never grow (a growing one frees what it outgrew as it was),
        // and that are zeroized however the decoding ends.
        let mut raw: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(64));
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for i in 0..32 {
                raw.push(u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad_key())?);
            }
        } else {
            let t = t.trim_end_matches('=');
            if t.len() > 64 {
                return Err(bad_key());
            }
            if base64::engine::general_purpose::STANDARD_NO_PAD
                .decode_vec(t, &mut raw)
                .is_err()
            {
                raw.zeroize();
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode_vec(t, &mut raw)
                    .map_err(|_| bad_key())?;
            }
        }
        if raw.len() != 32 {
            return Err(bad_key());
        }
        // Hashed in place: no copy of the key outlives this function unzeroized.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"gatehouse-master-key-id\0");
        ctx.update(&raw);
        let d = ctx.finish();
        let id = format!(
            "mk-{}",
            d.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad_key())?);
        Ok(Self { id, key })
    }

    /// Generates a new master key's text (base64 of 32 random bytes), for `gatehouse secret
    /// master-key generate`.
    pub fn generate_text() -> Result<Zeroizing<String>, SecretError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::fill(raw.as_mut()).map_err(|_| SecretError::Internal("rng".into()))?;
        Ok(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(raw.as_ref()),
        ))
    }

    /// Its id, as rows record it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn bad_key() -> SecretError {
    SecretError::Config(
        "a master key is 32 bytes, written as 64 hex digits or as base64 \
         (gatehouse secret master-key generate makes one)"
            .into(),
    )
}

/// The current master key (new data keys are wrapped by it) and the previous ones (still
/// opening what they wrapped, until a rewrap moves it to the current one).
#[derive(Debug)]
pub struct MasterKeys {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeys {
    /// The set: `current`, and `previous` keys kept for opening.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        let previous = previous
            .into_iter()
            .filter(|k| k.id != current.id)
            .collect();
        Self { current, previous }
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    fn by_id(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// A new data key for the secret at `path`: the key, and it wrapped by the current master
    /// key.
    pub(crate) fn new_data_key(&self, path: &str) -> Result<(DataKey, Vec<u8>), SecretError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::fill(raw.as_mut()).map_err(|_| SecretError::Internal("rng".into()))?;
        let wrapped = seal(&self.current.key, &dek_aad(path), raw.as_ref())?;
        Ok((DataKey::from_raw(raw.as_ref())?, wrapped))
    }

    /// Opens the data key of `path` that the master key `kek` wrapped.
    pub(crate) fn open_data_key(
        &self,
        path: &str,
        kek: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, SecretError> {
        let mk = self
            .by_id(kek)
            .ok_or_else(|| SecretError::UnknownMasterKey(kek.to_owned()))?;
        let raw = open(&mk.key, &dek_aad(path), wrapped)
            .ok_or_else(|| SecretError::Corrupt(format!("the data key of {path}")))?;
        DataKey::from_raw(&raw)
    }

    /// The data key of `path`, wrapped anew by the current master key.
    pub(crate) fn rewrap(
        &self,
        path: &str,
        kek: &str,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let mk = self
            .by_id(kek)
            .ok_or_else(|| SecretError::UnknownMasterKey(kek.to_owned()))?;
        let raw = open(&mk.key, &dek_aad(path), wrapped)
            .ok_or_else(|| SecretError::Corrupt(format!("the data key of {path}")))?;
        seal(&self.current.key, &dek_aad(path), &raw)
    }
}

/// One secret's data key.
pub(crate) struct DataKey(LessSafeKey);

impl DataKey {
    fn from_raw(raw: &[u8]) -> Result<Self, SecretError> {
        Ok(Self(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, raw)
                .map_err(|_| SecretError::Internal("data key".into()))?,
        )))
    }

    /// Seals version `version`'s value.
    pub(crate) fn seal_value(
        &self,
        path: &str,
        version: i64,
        value: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        seal(&self.0, &value_aad(path, version), value)
    }

    /// Opens version `version`'s value.
    pub(crate) fn open_value(
        &self,
        path: &str,
        version: i64,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        open(&self.0, &value_aad(path, version), sealed)
            .ok_or_else(|| SecretError::Corrupt(format!("version {version} of {path}")))
    }
}

fn dek_aad(path: &str) -> Vec<u8> {
    format!("gatehouse-secret-dek/v1\0{path}").into_bytes()
}

fn value_aad(path: &str, version: i64) -> Vec<u8> {
    format!("gatehouse-secret-value/v1\0{path}\0{version}").into_bytes()
}

/// `nonce || ciphertext || tag`.
fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce).map_err(|_| SecretError::Internal("rng".into()))?;
    let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    buf.extend_from_slice(&nonce);
    // Room for the tag from the start: sealing appends it before it encrypts, and a buffer
    // that had to grow for it would leave the plaintext behind in the allocation it outgrew.
    let mut body = Zeroizing::new(Vec::with_capacity(plain.len() + key.algorithm().tag_len()));
    body.extend_from_slice(plain);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *body,
    )
    .map_err(|_| SecretError::Internal("seal".into()))?;
    buf.extend_from_slice(&body);
    Ok(buf)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_from_hex_and_base64_and_refuse_anything_else() {
        let text = MasterKey::generate_text().unwrap();
        let a = MasterKey::from_text(&text).unwrap();
        let hex: String = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            MasterKey::from_text(&format!(" {hex}\n")).unwrap().id(),
            a.id()
        );
        // URL-safe base64 (read after the standard alphabet refused it), unpadded: the same key.
        // Bytes chosen so that the text has both `-` and `_`.
        let raw: Vec<u8> = (0..32u8).map(|i| 0xfb ^ i.wrapping_mul(7)).collect();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert!(url.contains('-') && url.contains('_'), "{url}");
        let std = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(
            MasterKey::from_text(&url).unwrap().id(),
            MasterKey::from_text(&std).unwrap().id()
        );
        for bad in [
            "",
            "short",
            &"ab".repeat(31),
            &"a".repeat(64).replace('a', "g"),
        ] {
            assert!(MasterKey::from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let keys = MasterKeys::new(
            MasterKey::from_text(&MasterKey::generate_text().unwrap()).unwrap(),
            vec![],
        );
        let (dk, wrapped) = keys.new_data_key("a/b").unwrap();
        let sealed = dk.seal_value("a/b", 1, b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&*dk.open_value("a/b", 1, &sealed).unwrap(), b"hunter2");
        assert!(dk.open_value("a/b", 2, &sealed).is_err(), "another version");
        assert!(dk.open_value("a/c", 1, &sealed).is_err(), "another path");
        let id = keys.current_id().to_owned();
        assert!(
            keys.open_data_key("a/c", &id, &wrapped).is_err(),
            "a key moved to another path"
        );
        let again = keys.open_data_key("a/b", &id, &wrapped).unwrap();
        assert_eq!(&*again.open_value("a/b", 1, &sealed).unwrap(), b"hunter2");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(dk.open_value("a/b", 1, &flipped).is_err(), "tampered");
        assert!(matches!(
            keys.open_data_key("a/b", "mk-unknown", &wrapped),
            Err(SecretError::UnknownMasterKey(_))
        ));
    }

    #[test]
    fn a_rewrapped_key_opens_under_the_new_master_key_alone() {
        let t_old = MasterKey::generate_text().unwrap();
        let t_new = MasterKey::generate_text().unwrap();
        let key = |t: &str| MasterKey::from_text(t).unwrap();
        let before = MasterKeys::new(key(&t_old), vec![]);
        let old_id = before.current_id().to_owned();
        let (dk, wrapped) = before.new_data_key("p").unwrap();
        let sealed = dk.seal_value("p", 3, b"v").unwrap();
        // The rotation: a new current key, the old one kept as previous until the rewrap.
        let during = MasterKeys::new(key(&t_new), vec![key(&t_old)]);
        let new_id = during.current_id().to_owned();
        assert_ne!(old_id, new_id);
        assert!(
            during.open_data_key("p", &old_id, &wrapped).is_ok(),
            "reads in flight"
        );
        let rewrapped = during.rewrap("p", &old_id, &wrapped).unwrap();
        // After it, the old key can go.
        let after = MasterKeys::new(key(&t_new), vec![]);
        let dk = after.open_data_key("p", &new_id, &rewrapped).unwrap();
        assert_eq!(&*dk.open_value("p", 3, &sealed).unwrap(), b"v");
        assert!(after.open_data_key("p", &old_id, &wrapped).is_err());
    }
}
