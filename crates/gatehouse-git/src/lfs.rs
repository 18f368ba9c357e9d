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
}

#[derive(serde::Deserialize)]
struct Batch {
    operation: String,
}

/// Reads the `operation` of an LFS batch request body.
pub fn lfs_batch_operation(body: &[u8]) -> Result<LfsOperation, LfsBatchError> {
    let b: Batch = serde_json::from_slice(body).map_err(|_| LfsBatchError::Malformed)?;
    match b.operation.as_str() {
        "download" => Ok(LfsOperation::Download),
        "upload" => Ok(LfsOperation::Upload),
        _ => Err(LfsBatchError::UnknownOperation),
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
    }
}
