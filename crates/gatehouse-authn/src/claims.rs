//! Claim checks shared by every issuer, and the mapping from claims to a [`Principal`].

use gatehouse_config::ClaimMapping;
use gatehouse_core::{Principal, PrincipalKind};
use serde_json::{Map, Value};

use crate::AuthnError;

/// Looks a claim up by name; a name with dots that is not itself a claim is read as a path into
/// nested objects (`realm_access.roles`), whose names may hold dots themselves
/// (`kubernetes.io.namespace`: the shortest name that is there is taken first).
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    lookup_depth(claims, path, 0)
}

fn lookup_depth<'a>(claims: &'a Map<String, Value>, path: &str, depth: usize) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    // Bounded: a path has at most a few dozen dots in any config, but each level may try each.
    if depth > 8 {
        return None;
    }
    for (i, _) in path.match_indices('.') {
        if let Some(Value::Object(inner)) = claims.get(&path[..i])
            && let Some(v) = lookup_depth(inner, &path[i + 1..], depth + 1)
        {
            return Some(v);
        }
    }
    None
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthnError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| AuthnError::MissingClaim(name.to_owned())),
        Some(_) => Err(AuthnError::MissingClaim(name.to_owned())),
    }
}

/// Checks `exp` (required), `nbf`, `iat`, `aud` and the required claims against `now`.
pub(crate) fn check_standard(
    claims: &Map<String, Value>,
    now: i64,
    leeway: i64,
    audiences: &[String],
    required: &[String],
) -> Result<(), AuthnError> {
    let exp = number(claims, "exp")?.ok_or_else(|| AuthnError::MissingClaim("exp".to_owned()))?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthnError::Expired);
    }
    if number(claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(AuthnError::NotYetValid);
    }
    if number(claims, "iat")?.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(AuthnError::IssuedInFuture);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthnError::WrongAudience);
    }
    for r in required {
        if matches!(lookup(claims, r), None | Some(Value::Null)) {
            return Err(AuthnError::MissingClaim(r.clone()));
        }
    }
    Ok(())
}

/// A user name the forge can take in a header: printable ASCII without spaces or separators that
/// header parsers treat specially.
fn valid_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'+')
        })
}

/// Text that may travel in a header value: no control characters.
fn header_safe(s: &str) -> bool {
    s.len() <= 1024 && !s.chars().any(char::is_control)
}

fn string_claim(claims: &Map<String, Value>, path: &str) -> Result<Option<String>, AuthnError> {
    match lookup(claims, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if header_safe(s) => Ok(Some(s.clone())),
        Some(_) => Err(AuthnError::BadClaim(path.to_owned())),
    }
}

/// Whether a token was issued to a client for itself (the client-credentials grant): its `sub`
/// is absent or equals its `client_id` (RFC 9068 §2.2, RFC 7662 §2.2). Such a caller is a
/// machine, whatever the issuer's `principal_kind` says about its people.
pub(crate) fn issued_to_a_client(claims: &Map<String, Value>) -> bool {
    match (claims.get("client_id"), claims.get("sub")) {
        (Some(Value::String(_)), None) => true,
        (Some(Value::String(c)), Some(Value::String(s))) => c == s,
        _ => false,
    }
}

/// `alice@contoso.com` as `alice` when `contoso.com` is one of `domains` (any case); `None` for
/// a name without an `@`, with another domain, or with nothing before the `@`. Without `domains`,
/// the name as it is.
fn strip_domain(name: String, domains: &[String]) -> Option<String> {
    if domains.is_empty() {
        return Some(name);
    }
    match name.rsplit_once('@') {
        // A bare `alice` and `alice@contoso.com` must not both be the forge user `alice`.
        None => None,
        Some((local, domain))
            if !local.is_empty()
                && !local.contains('@')
                && domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) =>
        {
            Some(local.to_owned())
        }
        Some(_) => None,
    }
}

/// Maps verified claims to a principal.
pub fn map_principal(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
    issuer: &str,
    kind: PrincipalKind,
) -> Result<Principal, AuthnError> {
    let subject = match lookup(claims, &mapping.subject) {
        Some(Value::String(s)) if !s.is_empty() && header_safe(s) => s.clone(),
        _ => return Err(AuthnError::MissingClaim(mapping.subject.clone())),
    };
    let username = string_claim(claims, &mapping.username)?.unwrap_or_else(|| subject.clone());
    let username = strip_domain(username, &mapping.username_domains)
        .ok_or_else(|| AuthnError::BadClaim(mapping.username.clone()))?;
    if !valid_username(&username) {
        return Err(AuthnError::BadClaim(mapping.username.clone()));
    }
    let mut groups: Vec<String> = match lookup(claims, &mapping.groups) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(AuthnError::BadClaim(mapping.groups.clone())),
    };
    if groups.iter().any(|g| !header_safe(g) || g.contains(',')) {
        return Err(AuthnError::BadClaim(mapping.groups.clone()));
    }
    groups.sort();
    groups.dedup();
    Ok(Principal {
        kind,
        issuer: issuer.to_owned(),
        subject,
        username,
        display_name: string_claim(claims, &mapping.name)?,
        email: string_claim(claims, &mapping.email)?,
        groups,
        token_id: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
        expires_at: number(claims, "exp")?,
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn listed_domains_are_taken_off_the_user_name_and_others_refused() {
        let domains = vec!["contoso.com".to_owned()];
        assert_eq!(
            strip_domain("alice@contoso.com".into(), &domains).as_deref(),
            Some("alice")
        );
        assert_eq!(
            strip_domain("Bob@CONTOSO.COM".into(), &domains).as_deref(),
            Some("Bob")
        );
        assert_eq!(
            strip_domain("carol@fabrikam.example".into(), &domains),
            None
        );
        assert_eq!(strip_domain("dave".into(), &domains), None);
        assert_eq!(strip_domain("eve@evil.example".into(), &domains), None);
        assert_eq!(
            strip_domain("eve@contoso.com.evil.example".into(), &domains),
            None
        );
        assert_eq!(strip_domain("a@b@contoso.com".into(), &domains), None);
        assert_eq!(strip_domain("@contoso.com".into(), &domains), None);
        assert_eq!(strip_domain("x@y".into(), &[]).as_deref(), Some("x@y"));
        // Through the mapping: the principal's user name is the stripped one; another domain
        // refuses the token, naming the claim.
        let mapping = ClaimMapping {
            username: "preferred_username".into(),
            username_domains: domains,
            ..ClaimMapping::default()
        };
        let c = claims(serde_json::json!({"sub": "s", "preferred_username": "alice@contoso.com"}));
        let p = map_principal(&c, &mapping, "i", PrincipalKind::User).unwrap();
        assert_eq!(p.username, "alice");
        let c =
            claims(serde_json::json!({"sub": "s", "preferred_username": "alice@other.example"}));
        assert_eq!(
            map_principal(&c, &mapping, "i", PrincipalKind::User).err(),
            Some(AuthnError::BadClaim("preferred_username".into()))
        );
    }

    #[test]
    fn standard_claims() {
        let aud = vec!["gatehouse".to_owned()];
        let ok = claims(
            serde_json::json!({"exp": 1000, "nbf": 900, "iat": 900, "aud": ["x", "gatehouse"]}),
        );
        assert_eq!(check_standard(&ok, 950, 0, &aud, &[]), Ok(()));
        assert_eq!(
            check_standard(&ok, 1001, 0, &aud, &[]),
            Err(AuthnError::Expired)
        );
        assert_eq!(check_standard(&ok, 1001, 5, &aud, &[]), Ok(()));
        assert_eq!(
            check_standard(&ok, 800, 0, &aud, &[]),
            Err(AuthnError::NotYetValid)
        );
        assert_eq!(check_standard(&ok, 850, 60, &aud, &[]), Ok(()));
        let wrong = claims(serde_json::json!({"exp": 1000, "aud": "other"}));
        assert_eq!(
            check_standard(&wrong, 950, 0, &aud, &[]),
            Err(AuthnError::WrongAudience)
        );
        let no_exp = claims(serde_json::json!({"aud": "gatehouse"}));
        assert_eq!(
            check_standard(&no_exp, 950, 0, &aud, &[]),
            Err(AuthnError::MissingClaim("exp".into()))
        );
        assert_eq!(
            check_standard(&ok, 950, 0, &aud, &["email".to_owned()]),
            Err(AuthnError::MissingClaim("email".into()))
        );
        let future = claims(serde_json::json!({"exp": 5000, "iat": 2000, "aud": "gatehouse"}));
        assert_eq!(
            check_standard(&future, 950, 60, &aud, &[]),
            Err(AuthnError::IssuedInFuture)
        );
    }

    #[test]
    fn mapping_with_nested_and_dotted_claims() {
        let c = claims(serde_json::json!({
            "sub": "u-1", "preferred_username": "alice", "email": "a@x", "name": "Alice Ä",
            "realm_access": {"roles": ["dev", "ops", "dev"]},
            "https://example.com/groups": "a b,c",
            "jti": "t1", "exp": 99
        }));
        let mut m = ClaimMapping {
            groups: "realm_access.roles".into(),
            ..ClaimMapping::default()
        };
        let p = map_principal(&c, &m, "https://idp", PrincipalKind::User)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.username, "alice");
        assert_eq!(p.groups, vec!["dev", "ops"]);
        assert_eq!(p.display_name.as_deref(), Some("Alice Ä"));
        assert_eq!(p.expires_at, Some(99));
        m.groups = "https://example.com/groups".into();
        let p = map_principal(&c, &m, "https://idp", PrincipalKind::User)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.groups, vec!["a", "b", "c"]);
    }

    #[test]
    fn client_credentials_tokens_name_a_machine() {
        assert!(issued_to_a_client(&claims(
            serde_json::json!({"client_id": "ci-bot", "sub": "ci-bot"})
        )));
        assert!(issued_to_a_client(&claims(
            serde_json::json!({"client_id": "ci-bot"})
        )));
        assert!(!issued_to_a_client(&claims(
            serde_json::json!({"client_id": "web", "sub": "alice"})
        )));
        assert!(!issued_to_a_client(&claims(
            serde_json::json!({"sub": "alice"})
        )));
    }

    #[test]
    fn header_injection_through_claims_is_refused() {
        let m = ClaimMapping::default();
        for bad in [
            serde_json::json!({"sub": "x", "preferred_username": "alice\r\nX-WEBAUTH-USER: admin"}),
            serde_json::json!({"sub": "x", "preferred_username": "al ice"}),
            serde_json::json!({"sub": "x", "name": "A\nB"}),
            serde_json::json!({"sub": "x", "groups": ["a,b"]}),
            serde_json::json!({"sub": "x", "groups": 7}),
        ] {
            assert!(
                map_principal(&claims(bad.clone()), &m, "i", PrincipalKind::User).is_err(),
                "{bad}"
            );
        }
        // no username claim: the subject is used
        let p = map_principal(
            &claims(serde_json::json!({"sub": "ci-bot"})),
            &m,
            "i",
            PrincipalKind::Service,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.username, "ci-bot");
    }
}
