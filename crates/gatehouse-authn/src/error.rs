/// Why a credential was refused. The `Display` text is the stable `error_description` a client
/// sees (RFC 6750); it never contains the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// No credential was presented.
    #[error("missing credentials")]
    Missing,
    /// The `Authorization` header is not a scheme Gatehouse accepts, or is malformed.
    #[error("unsupported authorization scheme")]
    UnsupportedScheme,
    /// Not a well-formed compact JWS.
    #[error("token is malformed")]
    Malformed,
    /// The JWT's `typ` names another kind of token (`dpop+jwt`, `logout+jwt`, `secevent+jwt`,
    /// ...), which must never pass as an access token (RFC 8725 §3.11).
    #[error("token is not an access token")]
    WrongTokenType,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// No key with the token's `kid` (even after a refetch).
    #[error("token was signed by an unknown key")]
    UnknownKey,
    /// Introspection says the token is not active (revoked, expired or unknown).
    #[error("token is not active")]
    Inactive,
    /// The token, its subject or its service account was revoked (`gatehouse revoke`).
    #[error("token has been revoked")]
    Revoked(gatehouse_core::Revoked),
    /// `iss` names no trusted issuer.
    #[error("token issuer is not trusted")]
    WrongIssuer,
    /// `aud` names no accepted audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `alg` is not in the issuer's allow-list, is `none`, or does not fit the key.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// A required claim is absent or has the wrong type.
    #[error("token lacks a required claim")]
    MissingClaim(String),
    /// A mapped claim cannot be used (e.g. a user name with characters no forge accepts).
    #[error("token has an unusable identity claim")]
    BadClaim(String),
    /// A claim fails the issuer's `bound_claims` (absent, or a value not allowed).
    #[error("token claims are not accepted here")]
    Unbound(String),
    /// The issuer's keys could not be fetched: the identity provider is unreachable.
    #[error("identity provider keys are unavailable")]
    KeysUnavailable,
    /// The issuer's introspection endpoint could not be asked (unreachable or refused us).
    #[error("token introspection is unavailable")]
    IntrospectionUnavailable,
    /// The ID token's `nonce` is not the one this sign-in sent.
    #[error("token nonce does not match")]
    NonceMismatch,
    /// The issuer's discovery document could not be fetched or names another issuer.
    #[error("identity provider is unavailable")]
    ProviderUnavailable,
    /// A bug or an unusable local key.
    #[error("internal authentication error")]
    Internal(String),
}

impl AuthnError {
    /// Whether the fault lies with the server side (answer 503, not 401).
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            AuthnError::KeysUnavailable
                | AuthnError::IntrospectionUnavailable
                | AuthnError::ProviderUnavailable
                | AuthnError::Internal(_)
        )
    }

    /// A short stable code for metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            AuthnError::Missing => "missing",
            AuthnError::UnsupportedScheme => "unsupported_scheme",
            AuthnError::Malformed => "malformed",
            AuthnError::WrongTokenType => "wrong_token_type",
            AuthnError::Expired => "expired",
            AuthnError::NotYetValid => "not_yet_valid",
            AuthnError::IssuedInFuture => "issued_in_future",
            AuthnError::BadSignature => "bad_signature",
            AuthnError::UnknownKey => "unknown_key",
            AuthnError::Inactive => "inactive",
            AuthnError::Revoked(r) => r.reason(),
            AuthnError::WrongIssuer => "wrong_issuer",
            AuthnError::WrongAudience => "wrong_audience",
            AuthnError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthnError::MissingClaim(_) => "missing_claim",
            AuthnError::BadClaim(_) => "bad_claim",
            AuthnError::Unbound(_) => "claim_not_bound",
            AuthnError::KeysUnavailable => "keys_unavailable",
            AuthnError::IntrospectionUnavailable => "introspection_unavailable",
            AuthnError::NonceMismatch => "nonce_mismatch",
            AuthnError::ProviderUnavailable => "provider_unavailable",
            AuthnError::Internal(_) => "internal",
        }
    }
}
