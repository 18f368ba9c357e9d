//! The values of a `multipart/form-data` body (what a browser sends for `new FormData(form)`,
//! which the forges' web UI posts with `fetch`), read as Go's `mime/multipart` `Reader.ReadForm`
//! reads them for `Request.ParseMultipartForm`, or refused.
//!
//! Go's reader is lenient where a browser never is: a preamble before the first boundary, bare
//! LF line ends, whitespace after a boundary, folded or repeated headers, quoted-printable parts,
//! RFC 2231 parameters (`name*=UTF-8''...`), backslash escapes in quoted strings, parts whose
//! disposition is not `form-data` (skipped there). Each of these is refused here, so that what
//! is read is what Go reads. What is read as Go reads it: a part whose disposition has a
//! non-empty `filename` is a file, not a value; other parts named by `name` are values, in order.
//! At most [`MAX_PARTS`] parts (Go's default `multipartmaxparts`). Pure; the `form_fields` fuzz
//! target holds it to never panicking.

use crate::form::FormError;

/// The most parts read (Go refuses more by default).
pub(crate) const MAX_PARTS: usize = 1000;

/// The boundary of a `multipart/form-data` content type: `multipart/form-data; boundary=...`
/// with nothing Go would read otherwise (one `boundary` parameter, a token or a quoted string
/// without escapes, the characters RFC 2046 allows, 1 to 70 of them).
pub(crate) fn boundary(content_type: &str) -> Result<String, FormError> {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(FormError::Multipart("not multipart/form-data"));
    }
    let mut found = None;
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            return Err(FormError::Multipart("an empty Content-Type parameter"));
        }
        let (k, v) = p.split_once('=').ok_or(FormError::Multipart(
            "a Content-Type parameter without a value",
        ))?;
        let k = k.trim();
        if k.contains('*') || !is_token(k) {
            return Err(FormError::Multipart("an unusual Content-Type parameter"));
        }
        if !k.eq_ignore_ascii_case("boundary") {
            continue;
        }
        if found.is_some() {
            return Err(FormError::Multipart("two boundaries"));
        }
        found = Some(param_value(v.trim())?);
    }
    let b = found.ok_or(FormError::Multipart("no boundary"))?;
    let bchar = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    if b.is_empty() || b.len() > 70 || !b.bytes().all(bchar) || b.ends_with(' ') {
        return Err(FormError::Multipart("an unusual boundary"));
    }
    Ok(b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// A parameter value: a token, or a quoted string without backslashes (Go unescapes them).
fn param_value(v: &str) -> Result<String, FormError> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or(FormError::Multipart("an unterminated quoted string"))?;
        if inner.contains(['"', '\\']) || inner.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(FormError::Multipart("an escape in a quoted string"));
        }
        return Ok(inner.to_owned());
    }
    if is_token(v) {
        Ok(v.to_owned())
    } else {
        Err(FormError::Multipart("an unusual parameter value"))
    }
}

/// What a part's headers say: its field name, and whether it is a file.
fn part_headers(head: &[u8]) -> Result<Option<String>, FormError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| FormError::Multipart("a header that is not UTF-8"))?;
    let mut disposition = None;
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            return Err(FormError::Multipart("a folded header"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(FormError::Multipart("a header line without a colon"))?;
        if !is_token(name) {
            return Err(FormError::Multipart("an unusual header name"));
        }
        if name.eq_ignore_ascii_case("content-transfer-encoding") {
            return Err(FormError::Multipart("a Content-Transfer-Encoding"));
        }
        if name.eq_ignore_ascii_case("content-disposition") {
            if disposition.is_some() {
                return Err(FormError::Multipart("two Content-Dispositions"));
            }
            disposition = Some(value.trim());
        }
    }
    let d = disposition.ok_or(FormError::Multipart("a part without Content-Disposition"))?;
    let mut params = d.split(';');
    if !params
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("form-data")
    {
        return Err(FormError::Multipart("a part that is not form-data"));
    }
    let (mut name, mut filename) = (None, None);
    for p in params {
        let (k, v) = p.trim().split_once('=').ok_or(FormError::Multipart(
            "a disposition parameter without a value",
        ))?;
        let k = k.trim().to_ascii_lowercase();
        if k.contains('*') || !is_token(&k) {
            return Err(FormError::Multipart("an unusual disposition parameter"));
        }
        let slot = match k.as_str() {
            "name" => &mut name,
            "filename" => &mut filename,
            _ => continue,
        };
        if slot.is_some() {
            return Err(FormError::Multipart("a disposition parameter given twice"));
        }
        *slot = Some(param_value(v.trim())?);
    }
    // Go: a part without a name is skipped; one with a non-empty filename is a file.
    match (name, filename) {
        (Some(n), None) if !n.is_empty() => Ok(Some(n)),
        (Some(n), Some(f)) if !n.is_empty() && f.is_empty() => Ok(Some(n)),
        _ => Ok(None),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The values of a multipart body, in order, appended to `out`.
pub(crate) fn read_values(
    content_type: &str,
    body: &[u8],
    out: &mut Vec<(String, String)>,
) -> Result<(), FormError> {
    let b = boundary(content_type)?;
    let first = format!("--{b}");
    let delim = format!("\r\n--{b}");
    let mut rest = body
        .strip_prefix(first.as_bytes())
        .ok_or(FormError::Multipart(
            "a body that does not start with its boundary",
        ))?;
    let mut parts = 0;
    loop {
        // After a boundary: `--` closes the body (then at most a line end), a line end opens a part.
        if let Some(after) = rest.strip_prefix(b"--") {
            if after.is_empty() || after == b"\r\n" {
                return Ok(());
            }
            return Err(FormError::Multipart("bytes after the closing boundary"));
        }
        rest = rest.strip_prefix(b"\r\n").ok_or(FormError::Multipart(
            "a boundary not followed by a line end",
        ))?;
        if rest.starts_with(b"\r\n") {
            return Err(FormError::Multipart("a part without headers"));
        }
        parts += 1;
        if parts > MAX_PARTS {
            return Err(FormError::Multipart("too many parts"));
        }
        let head_end = find(rest, b"\r\n\r\n")
            .ok_or(FormError::Multipart("a part whose headers do not end"))?;
        let name = part_headers(&rest[..head_end])?;
        rest = &rest[head_end + 4..];
        let end =
            find(rest, delim.as_bytes()).ok_or(FormError::Multipart("a part that does not end"))?;
        if let Some(name) = name {
            let value = std::str::from_utf8(&rest[..end]).map_err(|_| FormError::Malformed)?;
            out.push((name, value.to_owned()));
        }
        rest = &rest[end + delim.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=----WebKitFormBoundaryAbC123";

    fn read(ct: &str, body: &str) -> Result<Vec<(String, String)>, FormError> {
        let mut out = Vec::new();
        read_values(ct, body.as_bytes(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn what_a_browser_sends_is_read() {
        let body = "------WebKitFormBoundaryAbC123\r\nContent-Disposition: form-data; name=\"_csrf\"\r\n\r\ntok\r\n------WebKitFormBoundaryAbC123\r\ncontent-disposition: form-data; name=\"new_branch_name\"\r\n\r\nfeature/x\r\n------WebKitFormBoundaryAbC123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nname=main\r\n--x\r\n------WebKitFormBoundaryAbC123\r\nContent-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n\r\n------WebKitFormBoundaryAbC123--\r\n";
        assert_eq!(
            read(CT, body),
            Ok(vec![
                ("_csrf".into(), "tok".into()),
                ("new_branch_name".into(), "feature/x".into()),
                ("empty".into(), String::new()),
            ])
        );
        // A quoted boundary, an empty body of parts.
        assert_eq!(
            read("multipart/form-data; boundary=\"a b\"", "--a b--"),
            Ok(vec![])
        );
        // A value with line breaks in it.
        assert_eq!(
            read(
                "multipart/form-data; boundary=x",
                "--x\r\nContent-Disposition: form-data; name=c\r\n\r\na\r\nb\r\n--y\r\n--x--"
            ),
            Ok(vec![("c".into(), "a\r\nb\r\n--y".into())])
        );
    }

    #[test]
    fn what_go_reads_otherwise_is_refused() {
        let part = |h: &str, v: &str| format!("--x\r\n{h}\r\n\r\n{v}\r\n--x--\r\n");
        let ct = "multipart/form-data; boundary=x";
        for (ct, body) in [
            // A preamble, bare LF, whitespace after the boundary, bytes after the end.
            (
                ct,
                format!(
                    "pre\r\n{}",
                    part("Content-Disposition: form-data; name=a", "1")
                ),
            ),
            (
                ct,
                "--x\nContent-Disposition: form-data; name=a\n\n1\n--x--".to_owned(),
            ),
            (
                ct,
                "--x \r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--".to_owned(),
            ),
            (
                ct,
                format!(
                    "{}junk",
                    part("Content-Disposition: form-data; name=a", "1")
                ),
            ),
            // Headers Go reads differently.
            (ct, part("Content-Disposition: form-data;\r\n name=a", "1")),
            (
                ct,
                part(
                    "Content-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: quoted-printable",
                    "=31",
                ),
            ),
            (
                ct,
                part("Content-Disposition: form-data; name*=UTF-8''a", "1"),
            ),
            (
                ct,
                part("Content-Disposition: form-data; name=\"a\\\"b\"", "1"),
            ),
            (
                ct,
                part("Content-Disposition: form-data; name=a; name=b", "1"),
            ),
            (
                ct,
                part(
                    "Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b",
                    "1",
                ),
            ),
            (ct, part("Content-Disposition: attachment; name=a", "1")),
            (ct, part("Content-Type: text/plain", "1")),
            // Content types Go reads otherwise.
            (
                "multipart/form-data",
                part("Content-Disposition: form-data; name=a", "1"),
            ),
            (
                "multipart/form-data; boundary=x; boundary=y",
                part("Content-Disposition: form-data; name=a", "1"),
            ),
            (
                "multipart/form-data; boundary*=x",
                part("Content-Disposition: form-data; name=a", "1"),
            ),
            (
                "multipart/form-data; boundary=\"x\\\"\"",
                part("Content-Disposition: form-data; name=a", "1"),
            ),
            // A part that never ends.
            (
                ct,
                "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1".to_owned(),
            ),
        ] {
            assert!(read(ct, &body).is_err(), "{ct} {body:?}");
        }
        let many = "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
            .repeat(MAX_PARTS + 1)
            + "--x--";
        assert_eq!(read(ct, &many), Err(FormError::Multipart("too many parts")));
    }
}
