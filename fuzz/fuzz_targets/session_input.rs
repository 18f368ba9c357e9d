//! What a browser controls in a sign-in: the `Cookie` header and `return_to`. Never panics; a
//! kept `return_to` is always an ASCII path on this host (it cannot start `//` or hold a
//! backslash or control character, even once or twice percent-decoded, nor lead to
//! `/.gatehouse/`), and Gatehouse's own
//! cookies never survive the upstream filter.
#![no_main]

use gatehouse_session::{SESSION_COOKIE, LOGIN_COOKIE, cookie_values, safe_return_to, without_own_cookies};
use libfuzzer_sys::fuzz_target;

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(h), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn local(s: &str) -> bool {
    s.starts_with('/') && !s.starts_with("//") && !s.contains('\\') && !s.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let r = safe_return_to(s);
    assert!(r == "/" || r.is_ascii(), "{r:?}");
    assert!(!r.chars().any(char::is_whitespace), "{r:?}");
    assert!(local(&r) && local(&decode(&r)) && local(&decode(&decode(&r))), "{r:?}");
    let path = decode(&decode(&r));
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Gatehouse's own pages are `/.gatehouse` and what is under `/.gatehouse/` (what the proxy
    // serves itself); `/.gatehouse-session` or `/.gatehousefoo` are the upstream's paths.
    assert!(path != "/.gatehouse" && !path.starts_with("/.gatehouse/"), "{r:?}");
    let _ = cookie_values(s, SESSION_COOKIE).count();
    if let Some(kept) = without_own_cookies(s) {
        assert_eq!(cookie_values(&kept, SESSION_COOKIE).count(), 0);
        assert_eq!(cookie_values(&kept, LOGIN_COOKIE).count(), 0);
    }
});
