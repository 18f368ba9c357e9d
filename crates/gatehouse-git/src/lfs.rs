//! The one piece of an LFS request body Gatehouse reads: the batch `operation`.

/// What an LFS batch request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LfsOperation {
    /// Fetch objects (`lfs:read`).
    Download,
    /// Store objects (`lfs:write`).
    Upload,
}

/// Why a batch body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LfsBatchError {
    /// Not a JSON object with a string `operation`.
    #[error("LFS batch request is not valid JSON with an `operation`")]
    Malformed,
    /// An operation other than `download` or `upload`.
    #[error("unknown LFS batch operation")]
    UnknownOperation,
    /// A top-level field the batch API does not define. Gitea's decoder (jsoniter) matches field
    /// names by a 64-bit hash of their lower-cased bytes, without comparing them: a crafted name
    /// can land in `operation` there while it is just an unknown name here. So only the names
    /// the LFS batch API defines are accepted.
    #[error(
        "LFS batch request has a field the batch API does not define (only operation, transfers, ref, objects, hash_algo)"
    )]
    UnknownField,
}

/// The top-level fields of an LFS batch request (git-lfs `docs/api/batch.md`, Gitea's
/// `BatchRequest`), compared without regard to ASCII case as the forge's decoders do.
const BATCH_FIELDS: [&str; 5] = ["operation", "transfers", "ref", "objects", "hash_algo"];

/// The `operation` as Go's `encoding/json` decodes it into Gitea's `BatchRequest`
/// (`Operation string \`json:"operation"\``): every key of the top-level object that equals
/// `operation` without regard to case assigns the field, in document order, so the last one
/// wins; a `null` leaves it as it was; anything but a string or `null` is an error. (No
/// non-ASCII letter folds to one of `operation`'s in Go's case folding: only `k` and `s` have
/// such partners.) serde's derive would take the first exact `operation` and ignore
/// `Operation`: `{"operation":"download","Operation":"upload"}` would pass as a download that
/// the forge performs as an upload. A key that is none of [`BATCH_FIELDS`] is refused
/// ([`LfsBatchError::UnknownField`]).
struct GoOperation {
    op: Option<String>,
    /// A top-level key that is none of [`BATCH_FIELDS`] was seen (its value is skipped).
    unknown_field: bool,
}

impl<'de> serde::Deserialize<'de> for GoOperation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = GoOperation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an LFS batch request object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<GoOperation, A::Error> {
                let mut read = GoOperation {
                    op: None,
                    unknown_field: false,
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key.eq_ignore_ascii_case("operation") {
                        if let Some(v) = map.next_value::<Option<String>>()? {
                            read.op = Some(v);
                        }
                    } else {
                        read.unknown_field |=
                            !BATCH_FIELDS.iter().any(|f| key.eq_ignore_ascii_case(f));
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(read)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads the `operation` of an LFS batch request body, as the forge will.
pub fn lfs_batch_operation(body: &[u8]) -> Result<LfsOperation, LfsBatchError> {
    let read: GoOperation = serde_json::from_slice(body).map_err(|_| LfsBatchError::Malformed)?;
    if read.unknown_field {
        return Err(LfsBatchError::UnknownField);
    }
    match read.op.as_deref() {
        Some("download") => Ok(LfsOperation::Download),
        Some("upload") => Ok(LfsOperation::Upload),
        Some(_) => Err(LfsBatchError::UnknownOperation),
        None => Err(LfsBatchError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(
            lfs_batch_operation(br#"{"operation":"download","objects":[]}"#),
            Ok(LfsOperation::Download)
        );
        assert_eq!(
            lfs_batch_operation(br#"{"operation":"upload"}"#),
            Ok(LfsOperation::Upload)
        );
        assert_eq!(
            lfs_batch_operation(br#"{"operation":"delete"}"#),
            Err(LfsBatchError::UnknownOperation)
        );
        assert_eq!(lfs_batch_operation(b"{"), Err(LfsBatchError::Malformed));
        assert_eq!(lfs_batch_operation(b"{}"), Err(LfsBatchError::Malformed));
        assert_eq!(
            lfs_batch_operation(br#"{"operation":5}"#),
            Err(LfsBatchError::Malformed)
        );
    }

    /// Go's `encoding/json` (Gitea's decoder): keys match without regard to case, the last one
    /// wins, `null` assigns nothing, escapes in keys are decoded first.
    #[test]
    fn read_as_go_reads_it() {
        let op = |b: &str| lfs_batch_operation(b.as_bytes());
        assert_eq!(
            op(r#"{"operation":"download","Operation":"upload"}"#),
            Ok(LfsOperation::Upload)
        );
        assert_eq!(
            op(r#"{"OPERATION":"upload","operation":"download"}"#),
            Ok(LfsOperation::Download)
        );
        assert_eq!(
            op(r#"{"operation":"download","operation":"upload"}"#),
            Ok(LfsOperation::Upload)
        );
        assert_eq!(
            op(r#"{"operation":"upload","Operation":null}"#),
            Ok(LfsOperation::Upload)
        );
        assert_eq!(
            op(
                r#"{"\u006fperation":"download","oPeRaTiOn":"upload","objects":[{"oid":"x","size":1}]}"#
            ),
            Ok(LfsOperation::Upload)
        );
        // The value is compared exactly, as Gitea does (`br.Operation == "upload"`).
        assert_eq!(
            op(r#"{"operation":"Upload"}"#),
            Err(LfsBatchError::UnknownOperation)
        );
        // A name the batch API does not define is refused: Gitea's jsoniter matches names by
        // hash, so an unknown name could be `operation` there.
        assert_eq!(
            op(r#"{"operatıon":"upload","operation":"download"}"#),
            Err(LfsBatchError::UnknownField)
        );
        assert_eq!(
            op(r#"{"operation":"download","x-operation":"upload"}"#),
            Err(LfsBatchError::UnknownField)
        );
        // Every field git-lfs sends, in any case, is accepted.
        assert_eq!(
            op(
                r#"{"operation":"upload","transfers":["basic"],"Ref":{"name":"refs/heads/main"},"objects":[{"oid":"ab","size":1}],"hash_algo":"sha256"}"#
            ),
            Ok(LfsOperation::Upload)
        );
    }
}
