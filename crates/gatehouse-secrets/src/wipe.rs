//! Buffers that hold a secret's value on its way in or out (a request body, a JSON answer, a
//! parsed document) and are zeroized when they are done, however they are done.
//!
//! What they cannot reach, and docs/secrets.md says so: the socket's kernel buffers, a TLS
//! library's record buffers, the HTTP library's read buffer the bytes arrived in, and the scratch
//! buffer serde_json unescapes a string with escapes into.

use std::io;

use zeroize::{Zeroize, Zeroizing};

/// A growable byte buffer that never leaves an unzeroized copy behind: when it must grow, it
/// moves into a larger buffer and zeroizes the old one (a `Vec` growing by itself would free
/// the old allocation as it was). Zeroized, spare capacity included, when dropped.
#[derive(Default)]
pub struct WipingBuf(Zeroizing<Vec<u8>>);

impl WipingBuf {
    /// An empty buffer with room for `capacity` bytes before it first grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// Appends `b`.
    pub fn extend(&mut self, b: &[u8]) {
        let need = self.0.len() + b.len();
        if need > self.0.capacity() {
            let mut bigger = Vec::with_capacity(need.max(self.0.capacity().saturating_mul(2)));
            bigger.extend_from_slice(&self.0);
            // The old allocation is zeroized as it is dropped here.
            self.0 = Zeroizing::new(bigger);
        }
        self.0.extend_from_slice(b);
    }

    /// The bytes so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AsRef<[u8]> for WipingBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl io::Write for WipingBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.extend(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for WipingBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WipingBuf([redacted; {} bytes])", self.0.len())
    }
}

/// Zeroizes every string in a JSON document, keys included, in place.
pub fn wipe_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe_json),
        serde_json::Value::Object(m) => wipe_map(m),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

fn wipe_map(m: &mut serde_json::Map<String, serde_json::Value>) {
    // A map's keys cannot be changed in place: take the entries out, wiping each.
    for (mut k, mut v) in std::mem::take(m) {
        k.zeroize();
        wipe_json(&mut v);
    }
}

/// A parsed JSON object that may hold a value: its strings are zeroized when it is dropped.
#[derive(Default)]
pub struct WipedOnDrop(pub serde_json::Map<String, serde_json::Value>);

impl std::ops::Deref for WipedOnDrop {
    type Target = serde_json::Map<String, serde_json::Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for WipedOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WipedOnDrop([redacted; {} fields])", self.0.len())
    }
}

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        wipe_map(&mut self.0);
    }
}

/// A JSON document that may hold a value: its strings are zeroized when it is dropped.
pub struct WipedValue(pub serde_json::Value);

impl std::ops::Deref for WipedValue {
    type Target = serde_json::Value;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for WipedValue {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for WipedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WipedValue([redacted])")
    }
}

impl Drop for WipedValue {
    fn drop(&mut self) {
        wipe_json(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn growing_keeps_every_byte_in_order() {
        let mut b = WipingBuf::with_capacity(2);
        for chunk in [&b"abc"[..], b"", b"defgh", &[b'x'; 100]] {
            b.extend(chunk);
        }
        b.write_all(b"!").unwrap();
        let mut want = b"abcdefgh".to_vec();
        want.extend_from_slice(&[b'x'; 100]);
        want.push(b'!');
        assert_eq!(b.as_slice(), &want[..]);
        assert_eq!(b.len(), want.len());
        assert!(format!("{b:?}").contains("redacted"), "{b:?}");
        assert!(!format!("{b:?}").contains("abc"), "{b:?}");
    }

    #[test]
    fn json_strings_are_wiped_in_place() {
        let mut v = serde_json::json!({
            "value": "hunter2",
            "nested": {"list": ["a-secret", 3, null, {"k": "deep-secret"}]},
            "n": 1
        });
        let mut s = match &mut v["value"] {
            serde_json::Value::String(s) => std::mem::take(s),
            _ => unreachable!(),
        };
        // `String::zeroize` empties the string after overwriting it; what matters is that the
        // document no longer holds any of its strings.
        s.zeroize();
        assert!(s.is_empty());
        wipe_json(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "a-secret", "deep-secret", "value", "nested"] {
            assert!(!text.contains(secret), "{secret} survived: {text}");
        }
        let mut top = serde_json::json!(["x-secret"]);
        wipe_json(&mut top);
        assert_eq!(top, serde_json::json!([""]));
    }

    #[test]
    fn guards_wipe_when_dropped() {
        let parsed: serde_json::Value = serde_json::from_str(r#"{"value":"s3cr3t"}"#).unwrap();
        let serde_json::Value::Object(m) = parsed else {
            unreachable!()
        };
        let g = WipedOnDrop(m);
        assert_eq!(g.get("value").and_then(|v| v.as_str()), Some("s3cr3t"));
        drop(g);
        let mut g = WipedValue(serde_json::json!({"value": "s3cr3t"}));
        g["other"] = serde_json::json!("x");
        assert_eq!(g["value"], "s3cr3t");
        let mut inner = std::mem::replace(&mut g.0, serde_json::Value::Null);
        wipe_json(&mut inner);
        assert_eq!(inner, serde_json::json!({}));
    }
}
