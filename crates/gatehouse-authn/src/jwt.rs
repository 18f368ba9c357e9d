//! Compact JWS parsing before any key is chosen. Attacker-controlled bytes: fuzzed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::AuthnError;

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 48 * 1024;

/// A token split and decoded, signature not yet checked.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt {
    /// The `alg` header, exactly as sent.
    pub alg: String,
    /// The `kid` header, if any.
    pub kid: Option<String>,
    /// The payload's claims.
    pub claims: Map<String, Value>,
    /// `base64(header).base64(payload)`: the signed message.
    pub signing_input: String,
    /// The base64url signature.
    pub signature: String,
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    typ: Option<Value>,
}

/// Whether a `typ` header says the token may be an access token or an ID token: none, `JWT`
/// (RFC 7519 §5.1), or `at+jwt` (RFC 9068 §2.1), each with or without `application/`, in any
/// case (media types are case-insensitive, RFC 7515 §4.1.9). Any other type is another kind of
/// token signed by the same key (`dpop+jwt`, `logout+jwt`, `secevent+jwt`,
/// `token-introspection+jwt`, ...), and is refused (RFC 8725 §3.11): accepting one would let a
/// proof or an event pass as a credential. (`null` counts as none.)
fn access_token_type(typ: Option<&Value>) -> bool {
    match typ {
        None => true,
        Some(Value::String(t)) => {
            let t = t.to_ascii_lowercase();
            let t = t.strip_prefix("application/").unwrap_or(&t);
            t == "jwt" || t == "at+jwt"
        }
        Some(_) => false,
    }
}

/// Splits and decodes a compact JWS. Refuses anything that is not exactly three base64url parts
/// with a JSON-object header (with a string `alg`, no `crit`) and a JSON-object payload.
pub fn parse_unverified(token: &str) -> Result<UnverifiedJwt, AuthnError> {
    parse_unverified_up_to(token, MAX_TOKEN_LEN)
}

/// The longest ID token read at sign-in: it arrives server-side from the IdP, not in a header, and
/// carries every group of people in large organisations.
pub(crate) const MAX_ID_TOKEN_LEN: usize = 256 * 1024;

/// [`parse_unverified`] with another length limit.
pub(crate) fn parse_unverified_up_to(
    token: &str,
    limit: usize,
) -> Result<UnverifiedJwt, AuthnError> {
    if token.len() > limit || token.is_empty() {
        return Err(AuthnError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(AuthnError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthnError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| AuthnError::Malformed)?;
    if header.crit.is_some() {
        // No critical extension is understood, so none may be accepted (RFC 7515 §4.1.11).
        return Err(AuthnError::Malformed);
    }
    if !access_token_type(header.typ.as_ref()) {
        return Err(AuthnError::WrongTokenType);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| AuthnError::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| AuthnError::Malformed)?;
    if s.is_empty() && !header.alg.eq_ignore_ascii_case("none") {
        return Err(AuthnError::Malformed);
    }
    Ok(UnverifiedJwt {
        alg: header.alg,
        kid: header.kid,
        claims,
        signing_input: format!("{h}.{p}"),
        signature: s.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_a_token() {
        let t = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"iss":"x"}"#)
        );
        let j = parse_unverified(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.alg, "RS256");
        assert_eq!(j.kid.as_deref(), Some("k1"));
        assert_eq!(j.claims.get("iss").and_then(Value::as_str), Some("x"));
    }

    #[test]
    fn only_access_and_id_token_types_pass() {
        let with_typ = |typ: &str| {
            format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"RS256","typ":{typ}}}"#)),
                b64(r#"{"iss":"x"}"#)
            )
        };
        for ok in [
            r#""JWT""#,
            r#""jwt""#,
            r#""at+jwt""#,
            r#""AT+JWT""#,
            r#""application/at+jwt""#,
            r#""application/jwt""#,
            "null",
        ] {
            assert!(parse_unverified(&with_typ(ok)).is_ok(), "{ok}");
        }
        for bad in [
            r#""dpop+jwt""#,
            r#""logout+jwt""#,
            r#""secevent+jwt""#,
            r#""token-introspection+jwt""#,
            r#""application/logout+jwt""#,
            r#""JOSE""#,
            r#""""#,
            "1",
        ] {
            assert_eq!(
                parse_unverified(&with_typ(bad)).err(),
                Some(AuthnError::WrongTokenType),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_garbage() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            &format!("{}.{}.sig", b64("[]"), b64("{}")),
            &format!("{}.{}.sig", b64(r#"{"alg":1}"#), b64("{}")),
            &format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64("[1]")),
            &format!(
                "{}.{}.sig",
                b64(r#"{"alg":"RS256","crit":["exp"]}"#),
                b64("{}")
            ),
            &format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}")),
        ] {
            assert_eq!(
                parse_unverified(t).err(),
                Some(AuthnError::Malformed),
                "{t}"
            );
        }
    }

    #[test]
    fn alg_none_parses_so_it_can_be_refused_by_name() {
        let t = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"iss":"x"}"#));
        assert_eq!(
            parse_unverified(&t).map(|j| j.alg).ok().as_deref(),
            Some("none")
        );
    }
}
