//! The few top-level fields of a REST API request's JSON body that name refs (`branch`,
//! `new_branch`, `tag_name`, ...), read so that every JSON decoder the forges are built with
//! would read the same value, or refused.
//!
//! The forges decode into Go structs: Go's `encoding/json` matches a key to a field without
//! regard to case (with Unicode folding: `K`, the Kelvin sign, is `k` there) and lets the last
//! of several keys win; `json-iterator` (Gitea's default) does the same for structs of more than
//! ten fields, and for smaller ones compares only a 64-bit FNV hash of the lower-cased key, so a
//! crafted key can land in a field whose name it is not. A JSON v2 decoder compares exactly and
//! refuses duplicate keys. So, for each field Gatehouse reads:
//! - a key spelled exactly as the field's `json` tag gives its value (a string, or a boolean for
//!   the switches; `null` gives none); any other type is refused;
//! - the same key twice, another spelling of it (`Branch`, `BRANCH`), a key outside ASCII, or a
//!   key with json-iterator's hash of the field is refused;
//! - any other key is the forge's business and skipped.
//!
//! An empty body has no fields (Go's decoder returns `io.EOF`, which the binding ignores).
//! Anything but one JSON object is refused. Pure; the `json_fields` fuzz target holds it to
//! never panicking.

use std::borrow::Cow;

/// Why a JSON body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonBodyError {
    /// Not one well-formed JSON object.
    #[error("the body is not a JSON object")]
    Malformed,
    /// A field Gatehouse reads appears twice, or in two spellings.
    #[error("the body gives `{0}` more than once (or in another spelling)")]
    Repeated(&'static str),
    /// A key another decoder could read as a field Gatehouse reads.
    #[error("the body has a key that another JSON decoder could read as `{0}`")]
    Ambiguous(&'static str),
    /// A key that is not ASCII: Go folds some non-ASCII letters onto ASCII ones.
    #[error("the body has a key that is not ASCII")]
    NonAsciiKey,
    /// A field of the wrong type (the forge would refuse the request).
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// A string (`branch`).
    Str,
    /// A boolean (`delete_branch_after_merge`).
    Bool,
}

/// A value read from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonValue {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

/// The fields read from a body, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFields {
    values: Vec<(&'static str, JsonValue)>,
}

impl JsonFields {
    /// The string field `name`, if the body gave it (not `null`).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.iter().find_map(|(k, v)| match v {
            JsonValue::Str(s) if *k == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// The boolean field `name`, if the body gave it (not `null`).
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.values.iter().find_map(|(k, v)| match v {
            JsonValue::Bool(b) if *k == name => Some(*b),
            _ => None,
        })
    }
}

/// json-iterator's hash of a field name (`calcHash` with case folding, and `readFieldHash` for
/// a key without escapes): FNV-1 style over the lower-cased bytes, in 64-bit arithmetic.
fn jsoniter_hash(name: &str) -> i64 {
    let mut hash: i64 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= i64::from(b.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

struct Seed<'w> {
    wanted: &'w [(&'static str, JsonKind)],
    /// [`jsoniter_hash`]; a parameter so that the tests can make two names collide.
    hash: fn(&str) -> i64,
}

#[derive(Default)]
struct Read {
    values: Vec<(&'static str, JsonValue)>,
    seen: Vec<&'static str>,
    error: Option<JsonBodyError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
    type Value = Read;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seed<'_> {
    type Value = Read;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let mut read = Read::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if read.error.is_some() {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            if !key.is_ascii() {
                read.error = Some(JsonBodyError::NonAsciiKey);
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let hash = (self.hash)(&key);
            let mut matched = None;
            for &(name, kind) in self.wanted {
                if key.eq_ignore_ascii_case(name) {
                    if key != name || read.seen.contains(&name) {
                        read.error = Some(JsonBodyError::Repeated(name));
                    } else {
                        matched = Some((name, kind));
                    }
                    break;
                }
                if hash == (self.hash)(name) {
                    read.error = Some(JsonBodyError::Ambiguous(name));
                    break;
                }
            }
            let Some((name, kind)) = matched else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            read.seen.push(name);
            let v: serde_json::Value = map.next_value()?;
            match (kind, v) {
                (_, serde_json::Value::Null) => {}
                (JsonKind::Str, serde_json::Value::String(s)) => {
                    read.values.push((name, JsonValue::Str(s)));
                }
                (JsonKind::Bool, serde_json::Value::Bool(b)) => {
                    read.values.push((name, JsonValue::Bool(b)));
                }
                _ => read.error = Some(JsonBodyError::WrongType(name)),
            }
        }
        Ok(read)
    }
}

/// Reads the `wanted` fields (exact `json` tags and their types) of a JSON request body.
pub fn read_json_fields(
    body: &[u8],
    wanted: &[(&'static str, JsonKind)],
) -> Result<JsonFields, JsonBodyError> {
    read_with(body, wanted, jsoniter_hash)
}

fn read_with(
    body: &[u8],
    wanted: &[(&'static str, JsonKind)],
    hash: fn(&str) -> i64,
) -> Result<JsonFields, JsonBodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonFields::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = serde::de::DeserializeSeed::deserialize(Seed { wanted, hash }, &mut de)
        .map_err(|_| JsonBodyError::Malformed)?;
    de.end().map_err(|_| JsonBodyError::Malformed)?;
    if let Some(e) = read.error {
        return Err(e);
    }
    Ok(JsonFields {
        values: read.values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &[(&str, JsonKind)] = &[
        ("branch", JsonKind::Str),
        ("new_branch", JsonKind::Str),
        ("delete_branch_after_merge", JsonKind::Bool),
    ];

    fn r(s: &str) -> Result<JsonFields, JsonBodyError> {
        read_json_fields(s.as_bytes(), W)
    }

    #[test]
    fn exact_keys_are_read_and_others_skipped() {
        let f = r(r#"{"message":"m","branch":"main","new_branch":"feature/x","content":"aGk=","author":{"Branch":"x"},"delete_branch_after_merge":true}"#).unwrap();
        assert_eq!(f.str("branch"), Some("main"));
        assert_eq!(f.str("new_branch"), Some("feature/x"));
        assert_eq!(f.bool("delete_branch_after_merge"), Some(true));
        let f = r(r#"{"branch":null}"#).unwrap();
        assert_eq!(f.str("branch"), None);
        assert_eq!(r("").unwrap(), JsonFields::default());
        assert_eq!(r(" \n").unwrap(), JsonFields::default());
        // Escapes in keys are decoded: this is `branch`.
        let f = r(r#"{"br\u0061nch":"main"}"#).unwrap();
        assert_eq!(f.str("branch"), Some("main"));
    }

    #[test]
    fn what_decoders_read_differently_is_refused() {
        // Go's encoding/json takes the last of these, JSON v2 refuses them.
        assert_eq!(
            r(r#"{"branch":"dev","branch":"main"}"#),
            Err(JsonBodyError::Repeated("branch"))
        );
        assert_eq!(
            r(r#"{"branch":"dev","Branch":"main"}"#),
            Err(JsonBodyError::Repeated("branch"))
        );
        assert_eq!(
            r(r#"{"BRANCH":"main"}"#),
            Err(JsonBodyError::Repeated("branch"))
        );
        // Go folds the Kelvin sign onto `k`; anything outside ASCII is refused.
        assert_eq!(r(r#"{"ſ":"x"}"#), Err(JsonBodyError::NonAsciiKey));
        assert_eq!(
            r(r#"{"branch":5}"#),
            Err(JsonBodyError::WrongType("branch"))
        );
        assert_eq!(
            r(r#"{"delete_branch_after_merge":"true"}"#),
            Err(JsonBodyError::WrongType("delete_branch_after_merge"))
        );
        for bad in [
            "[]",
            "\"x\"",
            "null",
            "{",
            r#"{"branch":"a"} x"#,
            "{\"branch\":\"\u{0}\"}",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_iterator_hash_collisions_are_refused() {
        // json-iterator's `calcHash` of these names (FNV over the lower-cased bytes, 64-bit).
        assert_eq!(jsoniter_hash("a"), 0x0081_1d68_e40c_292c);
        assert_eq!(jsoniter_hash("branch"), 0x1305_9060_b687_3945);
        assert_eq!(jsoniter_hash("new_branch") as u64, 0xb5b6_7fb9_961b_ec52);
        assert_eq!(jsoniter_hash("Branch"), jsoniter_hash("branch"));
        // No short collision with a real name is known, so a hash that makes `xbranch`
        // collide with `branch` stands in for one.
        fn colliding(s: &str) -> i64 {
            jsoniter_hash(s.strip_prefix('x').unwrap_or(s))
        }
        assert_eq!(
            read_with(br#"{"branch":"dev","xbranch":"main"}"#, W, colliding),
            Err(JsonBodyError::Ambiguous("branch"))
        );
        let f = read_with(br#"{"branch":"dev","ybranch":"main"}"#, W, colliding).unwrap();
        assert_eq!(f.str("branch"), Some("dev"));
    }
}
