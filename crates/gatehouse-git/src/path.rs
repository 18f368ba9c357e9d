//! Request-path normalization: the one spelling of a path that policy sees and the upstream gets.

use std::fmt::Write as _;

/// Why a path was refused. Each variant is a client error (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("path has an invalid percent-encoding")]
    BadPercentEncoding,
    /// `%2F` or `%5C`: an encoded separator could name another path upstream.
    #[error("path has an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A backslash, NUL or other control character.
    #[error("path has a forbidden character")]
    ForbiddenCharacter,
    /// The decoded path is not UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// `..` segments climb above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path is too long")]
    TooLong,
    /// A repository path whose owner or repository name is not a valid forge name.
    #[error("invalid owner or repository name")]
    BadRepoName,
    /// A query parameter that Gatehouse must read appears twice or is malformed.
    #[error("ambiguous or malformed query")]
    BadQuery,
    /// A forge route that names a repository only by its number (`/api/v1/repositories/{id}`):
    /// which repository it reaches cannot be known without asking the forge.
    #[error("the route names a repository only by number, so Gatehouse cannot decide it")]
    NumberedRepository,
}

/// The longest request path accepted, in bytes before decoding.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// A decoded path without empty or dot segments. It always starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

impl NormalizedPath {
    /// The decoded segments, in order.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether the original path ended in `/`.
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// A path made of these segments (used after rewriting, e.g. lower-casing repository names).
    pub fn from_segments(segments: Vec<String>, trailing_slash: bool) -> Self {
        let trailing_slash = trailing_slash && !segments.is_empty();
        Self {
            segments,
            trailing_slash,
        }
    }

    /// The decoded path, e.g. `/demo/hello.git/info/refs`.
    pub fn decoded(&self) -> String {
        let mut s =
            String::with_capacity(self.segments.iter().map(|x| x.len() + 1).sum::<usize>() + 1);
        for seg in &self.segments {
            s.push('/');
            s.push_str(seg);
        }
        if self.segments.is_empty() || self.trailing_slash {
            s.push('/');
        }
        s
    }

    /// The path percent-encoded for the wire: what the upstream receives and decodes back to
    /// exactly [`NormalizedPath::decoded`].
    pub fn encoded(&self) -> String {
        let mut s =
            String::with_capacity(self.segments.iter().map(|x| x.len() + 1).sum::<usize>() + 1);
        for seg in &self.segments {
            s.push('/');
            encode_segment(seg, &mut s);
        }
        if self.segments.is_empty() || self.trailing_slash {
            s.push('/');
        }
        s
    }
}

fn is_pchar_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn encode_segment(seg: &str, out: &mut String) {
    for &b in seg.as_bytes() {
        if is_pchar_unreserved(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one segment; refuses encoded separators and control characters.
fn decode_segment(raw: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        let decoded = if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercentEncoding);
            };
            i += 3;
            let v = h * 16 + l;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            v
        } else {
            i += 1;
            b
        };
        if decoded == b'\\' || decoded < 0x20 || decoded == 0x7f {
            return Err(PathError::ForbiddenCharacter);
        }
        out.push(decoded);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Normalizes a request path (without its query): percent-decodes it, drops empty and `.`
/// segments, resolves `..` (refusing to climb above the root) and refuses encoded separators,
/// backslashes and control characters.
///
/// The result is what policy is evaluated on and, re-encoded, what the upstream receives, so no
/// spelling of a path can reach a different resource than the one authorized.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_seg in bytes[1..].split(|&b| b == b'/') {
        let seg = decode_segment(raw_seg)?;
        trailing_slash = false;
        match seg.as_str() {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    let path = NormalizedPath::from_segments(segments, trailing_slash);
    // Re-encoding may lengthen a path (a byte becomes `%XX`): the forwarded form must be within
    // the limit too, or normalizing it again would fail. Only long paths can cross it.
    if raw.len().saturating_mul(3) > MAX_PATH_LEN && path.encoded().len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize_path(p)
            .map(|p| p.decoded())
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/demo/hello.git/info/refs"), "/demo/hello.git/info/refs");
        assert_eq!(n("/demo/"), "/demo/");
    }

    #[test]
    fn duplicate_slashes_and_dots_collapse() {
        assert_eq!(n("//demo///hello.git"), "/demo/hello.git");
        assert_eq!(n("/demo/./hello.git"), "/demo/hello.git");
        assert_eq!(n("/demo/../secret/repo.git"), "/secret/repo.git");
        assert_eq!(n("/demo/x/.."), "/demo/");
    }

    #[test]
    fn encoded_dots_are_decoded_before_resolving() {
        assert_eq!(n("/demo/%2e%2e/secret/repo.git"), "/secret/repo.git");
        assert_eq!(n("/demo/%2E%2e/secret"), "/secret");
        assert_eq!(n("/demo/.%2e/secret"), "/secret");
        assert_eq!(n("/%64emo/hello"), "/demo/hello");
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize_path("demo"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(
            normalize_path("/demo%2Fsecret/x"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/demo%2fsecret/x"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/demo%5Csecret"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/demo\\secret"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(
            normalize_path("/demo%00"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(
            normalize_path("/demo%0a"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(
            normalize_path("/demo%zz"),
            Err(PathError::BadPercentEncoding)
        );
        assert_eq!(
            normalize_path("/demo%2"),
            Err(PathError::BadPercentEncoding)
        );
        assert_eq!(normalize_path("/%ff%fe"), Err(PathError::NotUtf8));
        assert_eq!(
            normalize_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
        // Under the limit as sent, over it once re-encoded (each backtick becomes `%60`).
        let expands = format!("/{}", "`".repeat(MAX_PATH_LEN / 2));
        assert!(expands.len() <= MAX_PATH_LEN);
        assert_eq!(normalize_path(&expands), Err(PathError::TooLong));
        // Just within the limit once re-encoded: accepted, and its encoding normalizes again.
        let fits = format!("/{}", "`".repeat((MAX_PATH_LEN - 1) / 3));
        let p = normalize_path(&fits).unwrap();
        assert!(p.encoded().len() <= MAX_PATH_LEN);
        assert_eq!(
            normalize_path(&p.encoded()).map(|q| q.encoded()),
            Ok(p.encoded())
        );
    }

    #[test]
    fn encoding_round_trips() {
        let p = normalize_path("/a%20b/c%25d/%C3%A9?/x").map(|p| p.encoded());
        assert_eq!(p.as_deref(), Ok("/a%20b/c%25d/%C3%A9%3F/x"));
        for raw in ["/a%20b/c%25d", "/%C3%A9/x/", "/demo/hello.git"] {
            let once = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            let twice = normalize_path(&once.encoded()).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(once, twice);
        }
    }
}
