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

fn local_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.starts_with("//")
        && !s.contains('\\')
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Returns `return_to` when it is a path (with query) on this host, `/` otherwise.
///
/// Refused: absolute URLs, scheme-relative `//host`, backslashes (`/\host`, which browsers read
/// as `//host`), control characters and whitespace (browsers drop tabs and newlines, turning
/// `/\t/host` into `//host`), and the same tricks percent-encoded once or twice. Gatehouse's own
/// endpoints (`/.gatehouse/...`) are refused too, so a sign-in never lands on sign-out.
pub fn safe_return_to(return_to: &str) -> String {
    if return_to.len() > MAX_RETURN_TO || !local_path(return_to) {
        return "/".into();
    }
    // Decoded once and twice, it must still be a local path.
    let mut cur = return_to.to_owned();
    for _ in 0..2 {
        match percent_decode(&cur) {
            Some(d) if local_path(&d) => cur = d,
            Some(_) | None => return "/".into(),
        }
    }
    let path = cur.split(['?', '#']).next().unwrap_or("");
    if path == "/.gatehouse" || path.starts_with("/.gatehouse/") {
        return "/".into();
    }
    return_to.to_owned()
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
        ] {
            assert_eq!(safe_return_to(ok), ok);
        }
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
        ] {
            assert_eq!(safe_return_to(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(3000))), "/");
    }
}
