//! The form of an RFC 8693 token exchange request, read and checked: what is asked (roles, an
//! environment, audiences) and with what (the subject token). No HTTP here and no decision: the
//! gateway's `/.gatehouse/token` adapter reads the body with this, verifies the subject token,
//! asks the policy and issues.

use gatehouse_core::Redacted;

/// `grant_type` of a token exchange.
pub const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// What an exchange issues.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Subject token types accepted: the token is then verified as any credential is, whatever its
/// declared type says.
const SUBJECT_TYPES: [&str; 3] = [
    "urn:ietf:params:oauth:token-type:jwt",
    ACCESS_TOKEN_TYPE,
    "urn:ietf:params:oauth:token-type:id_token",
];

/// A checked exchange request.
#[derive(Debug)]
pub struct ExchangeForm {
    /// The subject token (never logged).
    pub subject_token: Redacted<String>,
    /// The roles asked for (`scope`), each a valid role name, at least one.
    pub roles: Vec<String>,
    /// The environment to bind the token to (`environment`, an extension parameter).
    pub environment: Option<String>,
    /// `audience` and `resource` values, for the caller to check against its own audience.
    pub targets: Vec<String>,
}

/// Why a request is refused: an RFC 6749 §5.2 / RFC 8693 §2.2.2 error code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeFormError {
    /// `invalid_request`, `unsupported_grant_type` or `invalid_scope`.
    pub code: &'static str,
    /// For the client.
    pub description: String,
}

fn err(code: &'static str, description: impl Into<String>) -> ExchangeFormError {
    ExchangeFormError {
        code,
        description: description.into(),
    }
}

/// A role name: what the policy's `Role` entity and the issued token's groups hold.
pub fn valid_role(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Reads an `application/x-www-form-urlencoded` exchange request. Each parameter may appear
/// once (`audience` and `resource` may repeat); unknown parameters are ignored (RFC 6749 §3.2).
pub fn parse_exchange_form(body: &[u8]) -> Result<ExchangeForm, ExchangeFormError> {
    let mut grant_type = None;
    let mut subject_token: Option<Redacted<String>> = None;
    let mut subject_type = None;
    let mut requested_type = None;
    let mut scope = None;
    let mut environment = None;
    let mut targets = Vec::new();
    let mut actor = false;
    let once = |slot: &mut Option<String>, k: &str, v: String| {
        if slot.replace(v).is_some() {
            Err(err(
                "invalid_request",
                format!("{k} is given more than once"),
            ))
        } else {
            Ok(())
        }
    };
    for (k, v) in url::form_urlencoded::parse(body) {
        let v = v.into_owned();
        match k.as_ref() {
            "grant_type" => once(&mut grant_type, "grant_type", v)?,
            "subject_token" if subject_token.is_some() => {
                return Err(err(
                    "invalid_request",
                    "subject_token is given more than once",
                ));
            }
            "subject_token" => subject_token = Some(Redacted::new(v)),
            "subject_token_type" => once(&mut subject_type, "subject_token_type", v)?,
            "requested_token_type" => once(&mut requested_type, "requested_token_type", v)?,
            "scope" => once(&mut scope, "scope", v)?,
            "environment" => once(&mut environment, "environment", v)?,
            "audience" | "resource" => targets.push(v),
            "actor_token" | "actor_token_type" => actor = true,
            _ => {}
        }
    }
    match grant_type.as_deref() {
        Some(EXCHANGE_GRANT) => {}
        Some(_) => {
            return Err(err(
                "unsupported_grant_type",
                format!("this endpoint does token exchange only (grant_type={EXCHANGE_GRANT})"),
            ));
        }
        None => return Err(err("invalid_request", "grant_type is missing")),
    }
    if actor {
        return Err(err(
            "invalid_request",
            "delegation (actor_token) is not supported",
        ));
    }
    let subject_token =
        subject_token.ok_or_else(|| err("invalid_request", "subject_token is missing"))?;
    match subject_type.as_deref() {
        Some(t) if SUBJECT_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(err(
                "invalid_request",
                format!("subject_token_type {t} is not supported"),
            ));
        }
        None => return Err(err("invalid_request", "subject_token_type is missing")),
    }
    match requested_type.as_deref() {
        None | Some(ACCESS_TOKEN_TYPE) | Some("urn:ietf:params:oauth:token-type:jwt") => {}
        Some(t) => {
            return Err(err(
                "invalid_request",
                format!("requested_token_type {t} cannot be issued: ask for {ACCESS_TOKEN_TYPE}"),
            ));
        }
    }
    if environment.as_deref() == Some("") {
        return Err(err("invalid_request", "environment is empty"));
    }
    let mut roles: Vec<String> = scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    if roles.is_empty() {
        return Err(err("invalid_scope", "ask for at least one role in scope"));
    }
    if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
        return Err(err(
            "invalid_scope",
            format!("{bad:?} is not a role name (letters, digits, - _ . :, at most 64)"),
        ));
    }
    roles.sort();
    roles.dedup();
    Ok(ExchangeForm {
        subject_token,
        roles,
        environment,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=t&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

    fn parse(extra: &str) -> Result<ExchangeForm, ExchangeFormError> {
        parse_exchange_form(format!("{BASE}&{extra}").as_bytes())
    }

    #[test]
    fn a_well_formed_request_is_read() {
        let f = parse("scope=b+a+b&audience=u&resource=v&environment=env-1&x=ignored").unwrap();
        assert_eq!(f.roles, ["a", "b"]);
        assert_eq!(f.targets, ["u", "v"]);
        assert_eq!(f.environment.as_deref(), Some("env-1"));
        assert_eq!(f.subject_token.expose(), "t");
    }

    #[test]
    fn each_malformed_request_gets_its_code() {
        let code = |body: &str| {
            parse_exchange_form(body.as_bytes())
                .map(|_| ())
                .unwrap_err()
                .code
        };
        assert_eq!(
            code("grant_type=client_credentials"),
            "unsupported_grant_type"
        );
        assert_eq!(code(""), "invalid_request");
        assert_eq!(code(&format!("{BASE}&scope=a&scope=b")), "invalid_request");
        assert_eq!(
            code(&format!("{BASE}&subject_token=u&scope=a")),
            "invalid_request"
        );
        assert_eq!(
            code(&format!("{BASE}&scope=a&actor_token=x")),
            "invalid_request"
        );
        assert_eq!(
            code(&format!(
                "{BASE}&scope=a&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"
            )),
            "invalid_request"
        );
        assert_eq!(
            code(&format!("{BASE}&scope=a&environment=")),
            "invalid_request"
        );
        assert_eq!(code(BASE), "invalid_scope");
        assert_eq!(code(&format!("{BASE}&scope=a%22b")), "invalid_scope");
        assert_eq!(
            code(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=t&scope=a"
            ),
            "invalid_request",
            "no subject_token_type"
        );
    }

    #[test]
    fn role_names() {
        assert!(valid_role("deployer"));
        assert!(valid_role("team:release-2.x_ops"));
        assert!(!valid_role(""));
        assert!(!valid_role("a b"));
        assert!(!valid_role(&"r".repeat(65)));
    }
}
