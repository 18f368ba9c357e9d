//! Gatehouse's cookies: reading them from a `Cookie` header, writing `Set-Cookie`, and removing
//! them from what is forwarded upstream.

/// The session cookie: an opaque, signed session id. `__Host-` makes browsers insist on Secure,
/// Path=/ and no Domain, so no other host (or subdomain) can set or read it.
pub const SESSION_COOKIE: &str = "__Host-gatehouse-session";
/// The sign-in cookie: binds a sign-in's `state` to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-gatehouse-login";

/// The values of cookie `name` in one `Cookie` header value (RFC 6265 §5.4 syntax:
/// `a=b; c=d`). Pairs without `=` and empty names are skipped.
pub fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// A `Cookie` header value with Gatehouse's own cookies removed; `None` when nothing is left.
pub fn without_own_cookies(header: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
            !pair.is_empty() && name != SESSION_COOKIE && name != LOGIN_COOKIE
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// `Set-Cookie` for a Gatehouse cookie: Secure, HttpOnly, SameSite=Lax, Path=/, no Domain.
/// `max_age` in seconds; 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_among_others() {
        let h = "a=1; __Host-gatehouse-session=abc.def ;b=2; __Host-gatehouse-session=\"x\"";
        let v: Vec<_> = cookie_values(h, SESSION_COOKIE).collect();
        assert_eq!(v, ["abc.def", "x"]);
        assert_eq!(cookie_values("novalue; =x", SESSION_COOKIE).count(), 0);
    }

    #[test]
    fn own_cookies_are_removed_others_kept() {
        assert_eq!(
            without_own_cookies("a=1; __Host-gatehouse-session=s; __Host-gatehouse-login=l; b=2")
                .as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_own_cookies("__Host-gatehouse-session=s"), None);
        assert_eq!(without_own_cookies(""), None);
    }

    #[test]
    fn set_cookie_has_every_attribute() {
        let c = set_cookie(SESSION_COOKIE, "v", 60);
        for a in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=60"] {
            assert!(c.contains(a), "{c}");
        }
        assert!(!c.contains("Domain"));
    }
}
