//! Credentials to principals: JWT bearer tokens from configured OIDC issuers (discovery, JWKS
//! cache with rate-limited refetch on an unknown `kid`), Gatehouse's own ES256 tokens, HTTP Basic
//! carrying a token as the password, and the claim mapping that turns claims into a [`Principal`].
//!
//! It also signs: Gatehouse's own tokens and the short-lived assertion sent upstream.
//!
//! This crate never logs or returns a credential: errors carry stable descriptions only. It must
//! not know about HTTP routing, policies or the audit log. Time comes from the injected [`Clock`].
#![forbid(unsafe_code)]

mod cache;
mod claims;
mod error;
mod exchange;
mod http_error;
mod jwks;
mod jwt;
mod own;
mod workload;

pub use claims::map_principal;
pub use error::AuthnError;
pub use exchange::{
    ACCESS_TOKEN_TYPE, EXCHANGE_GRANT, ExchangeForm, ExchangeFormError, parse_exchange_form,
    valid_role,
};
pub use http_error::explain_http_error;
pub use jwks::{IssuerKeys, KeyStatus, ProviderMetadata};
pub use jwt::{MAX_TOKEN_LEN, UnverifiedJwt, parse_unverified};
pub use own::{OwnIssuer, OwnKeyError, TokenRequest, generate_signing_key_pem};
pub use workload::{BoundClaims, glob_match, workload_of, workload_username};

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_config::IssuerConfig;
use gatehouse_core::{Clock, Principal, Redacted, Revocations};

use crate::cache::TokenCache;

/// A credential as presented by a client.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(Redacted<String>),
    /// `Authorization: Basic`, whose password is a token (what `git` sends).
    BasicToken(Redacted<String>),
}

/// Turns credentials into principals. Shared by every request; cheap to clone through an `Arc`.
#[derive(Debug)]
pub struct Authenticator {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    /// Issuers that introspect opaque tokens, in config order.
    introspectors: Vec<Arc<IssuerKeys>>,
    own: Arc<OwnIssuer>,
    clock: Arc<dyn Clock>,
    cache: TokenCache,
    http: reqwest::Client,
    /// What is revoked: checked on every path, a cached token included.
    revoked: Arc<Revocations>,
}

impl Authenticator {
    /// Builds the authenticator over the configured `[[issuers]]`: prepares (but does not yet
    /// fetch) each issuer's key set; Gatehouse's own issuer is `own`.
    pub fn new(
        issuers_cfg: &[IssuerConfig],
        own: Arc<OwnIssuer>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthnError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| AuthnError::Internal(format!("http client: {e}")))?;
        let mut issuers = HashMap::new();
        let mut introspectors = Vec::new();
        let withdrawals = cache::Withdrawals::default();
        for i in issuers_cfg {
            let secret = match &i.introspection {
                Some(ic) => Some(
                    gatehouse_config::read_secret(
                        "issuers.introspection.client_secret",
                        &ic.client_secret,
                    )
                    .map_err(|e| AuthnError::Internal(e.to_string()))?,
                ),
                None => None,
            };
            let keys = Arc::new(IssuerKeys::new(
                i.clone(),
                http.clone(),
                clock.clone(),
                secret,
                withdrawals.clone(),
            ));
            if keys.introspects() {
                introspectors.push(keys.clone());
            }
            issuers.insert(i.issuer.clone(), keys);
        }
        Ok(Self {
            issuers,
            introspectors,
            own,
            clock,
            cache: TokenCache::new(16_384, withdrawals),
            http,
            revoked: Arc::default(),
        })
    }

    /// Refuses credentials `revoked` names (shared with the store's feed, which keeps it current).
    pub fn with_revocations(mut self, revoked: Arc<Revocations>) -> Self {
        self.revoked = revoked;
        self
    }

    /// What is revoked.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revoked
    }

    /// Whether `p` (from any credential: a token, a session, an SSH certificate or key) is
    /// revoked now.
    pub fn revoked(&self, p: &Principal) -> Option<gatehouse_core::Revoked> {
        // Every decision asks: with nothing revoked, no clock read.
        if self.revoked.is_empty() {
            return None;
        }
        self.revoked.check(p, self.clock.now().as_secs())
    }

    /// The configured issuers' key sets (for readiness and background refresh).
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.values()
    }

    /// The key set of the issuer named `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(iss)
    }

    /// The HTTP client used to talk to identity providers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Gatehouse's own issuer.
    pub fn own(&self) -> &Arc<OwnIssuer> {
        &self.own
    }

    /// Authenticates a credential. Verified tokens are cached by their hash until they expire;
    /// the principal is shared with the cache, so a cached token costs no copy of it. A revoked
    /// token (or subject, or service account) is refused whether it came from the cache or not:
    /// the revocation set is checked after every lookup, so the cache never serves one.
    pub async fn authenticate(&self, cred: &Credential) -> Result<Arc<Principal>, AuthnError> {
        let now = self.clock.now().as_secs();
        let p = self.verify(cred, now).await?;
        match self.revoked.check(&p, now) {
            Some(r) => Err(AuthnError::Revoked(r)),
            None => Ok(p),
        }
    }

    async fn verify(&self, cred: &Credential, now: i64) -> Result<Arc<Principal>, AuthnError> {
        let token = match cred {
            Credential::Bearer(t) | Credential::BasicToken(t) => t.expose().as_str(),
        };
        let key = cache::token_key(token);
        if let Some(p) = self.cache.get(&key, now) {
            return Ok(p);
        }
        let jwt = match parse_unverified(token) {
            Ok(jwt) => jwt,
            Err(e) if self.introspectors.is_empty() => return Err(e),
            // A JWT of another kind (a DPoP proof, a logout token): refused as what it is, and
            // never sent to an issuer's introspection endpoint.
            Err(AuthnError::WrongTokenType) => return Err(AuthnError::WrongTokenType),
            // Not a JWT: an opaque token, for an issuer that introspects (in config order).
            Err(_) => return self.introspect(token, key, now).await,
        };
        // Gitea's and Forgejo's OAuth2 providers sign access tokens that name nobody: no `iss`,
        // no `sub`, no `aud`, only the grant (`gnt`), the kind (`tt`: 0 access, 1 refresh) and
        // the times (their services/oauth2_provider/token.go). Only the forge's introspection
        // endpoint can say whose they are, so such a token goes there, as an opaque one would.
        // A refresh token is refused first: their introspection answers `active` for it too.
        if !jwt.claims.contains_key("iss") && !self.introspectors.is_empty() {
            if jwt.claims.get("tt").is_some_and(|t| t.as_i64() != Some(0)) {
                return Err(AuthnError::WrongTokenType);
            }
            return self.introspect(token, key, now).await;
        }
        let iss = jwt
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthnError::WrongIssuer)?;
        let principal = if iss == self.own.issuer() {
            self.own.verify(&jwt, now)?
        } else {
            let keys = self.issuers.get(iss).ok_or(AuthnError::WrongIssuer)?;
            keys.verify(&jwt, now).await?
        };
        let principal = Arc::new(principal);
        if let Some(exp) = principal.expires_at {
            self.cache.insert(key, principal.clone(), exp);
        }
        Ok(principal)
    }

    async fn introspect(
        &self,
        token: &str,
        key: cache::TokenKey,
        now: i64,
    ) -> Result<Arc<Principal>, AuthnError> {
        let mut last = AuthnError::Inactive;
        for i in &self.introspectors {
            match i.introspect(token, now).await {
                Ok((p, until)) => {
                    let p = Arc::new(p);
                    self.cache.insert(key, p.clone(), until);
                    return Ok(p);
                }
                // Another issuer may know it.
                Err(AuthnError::Inactive) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
