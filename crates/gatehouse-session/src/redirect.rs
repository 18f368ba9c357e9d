//! Where a browser may be sent after signing in: a path on Gatehouse's own host, never anywhere
//! else, whatever `return_to` looks like.

/// The longest `return_to` kept; longer ones become `/`.
const MAX_RETURN_TO: usize = 2048;

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let h = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A path on this host, as a browser would read it: `/`, not `//`, no backslash (browsers read
/// `\` as `/`), no control characters (browsers drop tabs and newlines), and, in the raw form,
/// no whitespace at all.
fn local_path(s: &str, raw: bool) -> bool {
    s.starts_with('/')
        && !s.starts_with("//")
        && !s.contains('\\')
        && !s
            .chars()
            .any(|c| c.is_control() || (raw && c.is_whitespace()))
}

/// Whether the path part has `.` or `..` segments (which could climb into `/.gatehouse/`).
fn has_dot_segments(s: &str) -> bool {
    let path = s.split(['?', '#']).next().unwrap_or("");
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Non-ASCII characters percent-encoded as UTF-8, so the result fits a `Location` header.
fn ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Returns `return_to` when it is a path (with query) on this host, `/` otherwise.
///
/// Refused: absolute URLs, scheme-relative `//host`, backslashes (`/\host`, which browsers read
/// as `//host`), control characters and whitespace (browsers drop tabs and newlines, turning
/// `/\t/host` into `//host`), and the same tricks percent-encoded once or twice. Gatehouse's own
/// endpoints (`/.gatehouse/...`) are refused too, so a sign-in never lands on sign-out.
pub fn safe_return_to(return_to: &str) -> String {
    if return_to.len() > MAX_RETURN_TO || !local_path(return_to, true) {
        return "/".into();
    }
    // Decoded once and twice, it must still be a local path without dot segments.
    let mut cur = return_to.to_owned();
    for _ in 0..2 {
        if has_dot_segments(&cur) {
            return "/".into();
        }
        match percent_decode(&cur) {
            Some(d) if local_path(&d, false) => cur = d,
            Some(_) | None => return "/".into(),
        }
    }
    if has_dot_segments(&cur) {
        return "/".into();
    }
    let path = cur.split(['?', '#']).next().unwrap_or("");
    if path == "/.gatehouse" || path.starts_with("/.gatehouse/") {
        return "/".into();
    }
    ascii(return_to)
}

#[cfg(test)]
mod tests {
    use super::safe_return_to;

    #[test]
    fn local_paths_are_kept() {
        for ok in [
            "/",
            "/demo/hello",
            "/a?b=c&d=%2Fe",
            "/a#frag",
            "/@evil.example",
            "/a%20b",
            "/x/.../y",
            // Not Gatehouse's pages (`/.gatehouse`, `/.gatehouse/...`): the upstream's.
            "/.gatehouse-session",
            "/.gatehousefoo/bar",
        ] {
            assert_eq!(safe_return_to(ok), ok);
        }
        assert_eq!(safe_return_to("/caf\u{e9}"), "/caf%C3%A9");
    }

    #[test]
    fn everything_that_could_leave_the_host_becomes_root() {
        for bad in [
            "//evil.example",
            "https://evil.example",
            "http://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2Fevil.example",
            "/%2fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252Fevil.example",
            "/%255Cevil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/\n/evil.example",
            " /evil",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/%zz",
            "/.gatehouse/logout",
            "/.gatehouse",
            "/%2egatehouse/logout",
            "/./.gatehouse/login",
            "/x/../.gatehouse/logout",
            "/x/%2e%2e/.gatehouse/logout",
            "/a/../b",
        ] {
            assert_eq!(safe_return_to(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(3000))), "/");
    }
}
