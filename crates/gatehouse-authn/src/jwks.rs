//! A trusted issuer's keys: discovery, JWKS fetch and cache, rate-limited refetch on an unknown
//! `kid`, and verification of that issuer's tokens.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use gatehouse_config::{IssuerConfig, PrincipalKindConfig};
use gatehouse_core::{Clock, Principal, PrincipalKind, Redacted};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::claims::{check_standard, issued_to_a_client, map_principal};
use crate::{AuthnError, UnverifiedJwt};

/// Which algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyFamily {
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::P256 => alg == ES256,
            KeyFamily::P384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
        }
    }
}

pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) family: KeyFamily,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish()
    }
}

/// Picks the key for a token: by `kid`, or the only key of the right family when it has none.
/// `Ok(None)` when no key has that `kid`; an error when the key does not fit the algorithm.
pub(crate) fn select<'a>(
    keys: &'a [Key],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Option<&'a Key>, AuthnError> {
    match kid {
        Some(kid) => match keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            Some(k) if k.family.fits(alg) => Ok(Some(k)),
            Some(_) => Err(AuthnError::AlgorithmNotAllowed),
            None => Ok(None),
        },
        None => {
            let mut fitting = keys.iter().filter(|k| k.family.fits(alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Ok(Some(k)),
                _ => Ok(None),
            }
        }
    }
}

/// Checks a token's signature with `key`.
pub(crate) fn check_signature(
    jwt: &UnverifiedJwt,
    key: &Key,
    alg: Algorithm,
) -> Result<(), AuthnError> {
    match jsonwebtoken::crypto::verify(&jwt.signature, jwt.signing_input.as_bytes(), &key.key, alg)
    {
        Ok(true) => Ok(()),
        _ => Err(AuthnError::BadSignature),
    }
}

#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<Key>,
    fetched_at: Option<i64>,
    jwks_uri: Option<String>,
}

/// The state of an issuer's keys, for readiness and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The issuer.
    pub issuer: String,
    /// Whether keys have been loaded at least once.
    pub loaded: bool,
    /// How many usable keys are held.
    pub keys: usize,
    /// Successful fetches so far.
    pub fetches_ok: u64,
    /// Failed fetches so far.
    pub fetches_failed: u64,
}

/// One trusted issuer: its config, its current keys and the means to refresh them.
#[derive(Debug)]
pub struct IssuerKeys {
    cfg: IssuerConfig,
    bound: crate::workload::BoundClaims,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    state: ArcSwap<KeySet>,
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: AtomicI64,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    introspection_secret: Option<Redacted<String>>,
    metadata: tokio::sync::OnceCell<Arc<ProviderMetadata>>,
    /// Shared with the token cache: bumped when a fetch no longer has a key the last one had.
    withdrawals: crate::cache::Withdrawals,
}

/// What an issuer's OpenID Connect discovery document says (the parts Gatehouse uses).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ProviderMetadata {
    /// The issuer identifier; must equal the configured one.
    pub issuer: String,
    /// The key set.
    pub jwks_uri: String,
    /// Where browsers are sent to sign in.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Where codes, refresh tokens and device codes are exchanged.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// OpenID Connect UserInfo.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RP-initiated logout.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// RFC 7009 token revocation.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RFC 8628 device authorization.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// RFC 7662 introspection.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// RFC 9207: authorization responses carry `iss`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// The longest opaque token sent for introspection.
const MAX_OPAQUE_TOKEN_LEN: usize = 4096;

impl IssuerKeys {
    pub(crate) fn new(
        cfg: IssuerConfig,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        introspection_secret: Option<Redacted<String>>,
        withdrawals: crate::cache::Withdrawals,
    ) -> Self {
        // Config validation has already refused unknown and HMAC algorithms.
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        Self {
            bound: crate::workload::BoundClaims::new(&cfg.bound_claims),
            cfg,
            algorithms,
            http,
            clock,
            state: ArcSwap::from_pointee(KeySet::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: AtomicI64::new(i64::MIN),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            introspection_secret,
            metadata: tokio::sync::OnceCell::new(),
            withdrawals,
        }
    }

    /// The issuer's discovery document, fetched once (a failed fetch is retried on the next call).
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, AuthnError> {
        self.metadata
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.cfg.issuer.trim_end_matches('/')
                );
                let d: ProviderMetadata = self
                    .get_json(&url, self.cfg.http_timeout.0)
                    .await
                    .map_err(|e| {
                        tracing::warn!(issuer = %self.cfg.issuer, error = %e, "discovery failed");
                        AuthnError::ProviderUnavailable
                    })?;
                if d.issuer != self.cfg.issuer {
                    tracing::warn!(issuer = %self.cfg.issuer, named = %d.issuer, "discovery names another issuer");
                    return Err(AuthnError::ProviderUnavailable);
                }
                Ok(Arc::new(d))
            })
            .await
            .cloned()
    }

    /// The issuer's configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    /// Verifies an OpenID Connect ID token issued to `client_id` (signature with this issuer's
    /// keys, `iss`, `aud`, `azp`, `exp`, `iat`, and `nonce` when one was sent) and returns its
    /// claims.
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthnError> {
        let jwt = crate::jwt::parse_unverified_up_to(token, crate::jwt::MAX_ID_TOKEN_LEN)?;
        self.check_signed(&jwt).await?;
        let claims = jwt.claims;
        if claims.get("iss").and_then(serde_json::Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(AuthnError::WrongIssuer);
        }
        check_standard(
            &claims,
            now,
            self.cfg.leeway.0.as_secs() as i64,
            &[client_id.to_owned()],
            &[],
        )?;
        // OIDC Core §3.1.3.7: with several audiences `azp` must be there; when present it must
        // name this client.
        let several = claims
            .get("aud")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(serde_json::Value::as_str) {
            Some(azp) if azp != client_id => return Err(AuthnError::WrongAudience),
            None if several => return Err(AuthnError::WrongAudience),
            _ => {}
        }
        if claims
            .get("iat")
            .and_then(serde_json::Value::as_i64)
            .is_none()
        {
            return Err(AuthnError::MissingClaim("iat".to_owned()));
        }
        if let Some(expected) = nonce
            && claims.get("nonce").and_then(serde_json::Value::as_str) != Some(expected)
        {
            return Err(AuthnError::NonceMismatch);
        }
        Ok(claims)
    }

    /// Checks that verified claims carry every `required_claims` path of this issuer.
    pub fn check_required(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AuthnError> {
        for r in &self.cfg.required_claims {
            if matches!(
                crate::claims::lookup(claims, r),
                None | Some(serde_json::Value::Null)
            ) {
                return Err(AuthnError::MissingClaim(r.clone()));
            }
        }
        Ok(())
    }

    /// Maps verified claims (of an ID token or UserInfo answer) to a principal, as for tokens.
    pub fn principal_from_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, AuthnError> {
        self.principal(claims)
    }

    /// Whether opaque tokens are introspected at this issuer.
    pub(crate) fn introspects(&self) -> bool {
        self.cfg.introspection.is_some() && self.introspection_secret.is_some()
    }

    async fn endpoint(&self) -> Result<String, AuthnError> {
        let Some(ic) = &self.cfg.introspection else {
            return Err(AuthnError::IntrospectionUnavailable);
        };
        if let Some(e) = &ic.endpoint {
            return Ok(e.clone());
        }
        let d = self
            .metadata()
            .await
            .map_err(|_| AuthnError::IntrospectionUnavailable)?;
        d.introspection_endpoint.clone().ok_or_else(|| {
            tracing::warn!(issuer = %self.cfg.issuer, "discovery names no introspection_endpoint");
            AuthnError::IntrospectionUnavailable
        })
    }

    /// Asks the issuer about an opaque token (RFC 7662). Returns the principal and until when the
    /// answer may be reused: the earlier of the token's `exp` and the configured cache TTL.
    pub(crate) async fn introspect(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Principal, i64), AuthnError> {
        let (Some(ic), Some(secret)) = (&self.cfg.introspection, &self.introspection_secret) else {
            return Err(AuthnError::Malformed);
        };
        if token.is_empty()
            || token.len() > MAX_OPAQUE_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AuthnError::Malformed);
        }
        let endpoint = self.endpoint().await?;
        let resp = self
            .http
            .post(&endpoint)
            .basic_auth(&ic.client_id, Some(secret.expose().trim()))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .timeout(self.cfg.http_timeout.0)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "introspection request failed");
                AuthnError::IntrospectionUnavailable
            })?;
        if !resp.status().is_success() {
            tracing::warn!(issuer = %self.cfg.issuer, status = %resp.status(), "introspection refused");
            return Err(AuthnError::IntrospectionUnavailable);
        }
        let body = resp
            .bytes()
            .await
            .map_err(|_| AuthnError::IntrospectionUnavailable)?;
        let mut claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(|_| AuthnError::IntrospectionUnavailable)?;
        if claims.get("active").and_then(serde_json::Value::as_bool) != Some(true) {
            return Err(AuthnError::Inactive);
        }
        if let Some(iss) = claims.get("iss").and_then(serde_json::Value::as_str)
            && iss != self.cfg.issuer
        {
            return Err(AuthnError::WrongIssuer);
        }
        let leeway = self.cfg.leeway.0.as_secs() as i64;
        let exp = claims.get("exp").and_then(serde_json::Value::as_i64);
        if exp.is_some_and(|e| now > e.saturating_add(leeway)) {
            return Err(AuthnError::Inactive);
        }
        // `aud` is optional in an introspection answer (RFC 7662 §2.2), but an answer without
        // one does not say the token was meant for Gatehouse: a token the IdP issued to any
        // other client would pass. `audiences` is always set, so `aud` must name one of them,
        // and the required claims must be there, as for a JWT.
        let mut with_exp = claims.clone();
        with_exp.insert(
            "exp".into(),
            serde_json::Value::from(exp.unwrap_or(now + 1)),
        );
        check_standard(
            &with_exp,
            now,
            leeway,
            &self.cfg.audiences,
            &self.cfg.required_claims,
        )?;
        // `sub` is optional in an introspection answer (RFC 7662 §2.2). Without it, a token from
        // the client-credentials grant names its client: that client is the caller.
        if !claims.contains_key(&self.cfg.claims.subject)
            && let Some(client) = claims.get("client_id").cloned()
        {
            claims.insert(self.cfg.claims.subject.clone(), client);
        }
        let mut p = self.principal(&claims)?;
        let until = (now + ic.cache_ttl.0.as_secs() as i64).min(exp.unwrap_or(i64::MAX));
        // An answer without `exp` vouches for the token only as long as it is cached: what the
        // token buys (an SSH certificate) must not last longer.
        if p.expires_at.is_none() {
            p.expires_at = Some(until);
        }
        Ok((p, until))
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// The state of the keys.
    pub fn status(&self) -> KeyStatus {
        let s = self.state.load();
        KeyStatus {
            issuer: self.cfg.issuer.clone(),
            loaded: s.fetched_at.is_some(),
            keys: s.keys.len(),
            fetches_ok: self.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: self.fetches_failed.load(Ordering::Relaxed),
        }
    }

    /// Whether the cached keys are older than the cache TTL (or absent).
    pub fn is_stale(&self) -> bool {
        let now = self.clock.now().as_secs();
        match self.state.load().fetched_at {
            Some(t) => now - t >= self.cfg.jwks_cache_ttl.0.as_secs() as i64,
            None => true,
        }
    }

    /// Fetches the keys now (the background refresher's call). Keeps the old keys on failure.
    pub async fn refresh(&self) -> Result<(), AuthnError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// The fetch itself; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<(), AuthnError> {
        self.last_attempt
            .store(self.clock.now().as_secs(), Ordering::Relaxed);
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(issuer = %self.cfg.issuer, keys = set.keys.len(), "issuer keys loaded");
                let old = self.state.load();
                let withdrawn = old.keys.iter().any(|k| {
                    !set.keys
                        .iter()
                        .any(|n| n.kid == k.kid && n.family == k.family)
                });
                self.state.store(Arc::new(set));
                if withdrawn {
                    // Tokens verified with the withdrawn key must not stay accepted from the
                    // cache until they expire.
                    self.withdrawals.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(issuer = %self.cfg.issuer, "the issuer withdrew a key; every verified token is checked again");
                }
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "fetching issuer keys failed");
                Err(AuthnError::KeysUnavailable)
            }
        }
    }

    /// How many fetches were attempted, successful or not.
    fn fetches(&self) -> u64 {
        self.fetches_ok.load(Ordering::Relaxed) + self.fetches_failed.load(Ordering::Relaxed)
    }

    /// Whether a fetch was attempted less than `jwks_min_refetch_interval` ago.
    fn attempted_recently(&self) -> bool {
        let now = self.clock.now().as_secs();
        let min = self.cfg.jwks_min_refetch_interval.0.as_secs() as i64;
        let last = self.last_attempt.load(Ordering::Relaxed);
        last != i64::MIN && now.saturating_sub(last) < min
    }

    /// Fetches keys for a request that found none. Every check happens under `fetch_lock`, so a
    /// burst of such requests causes one fetch: those that waited find the keys there, or find
    /// that the attempt just failed. While the issuer is down, a request tries again at most once
    /// per `jwks_min_refetch_interval` instead of each one waiting for its own timeout.
    async fn fetch_missing(&self) -> Result<(), AuthnError> {
        let before = self.fetches();
        let _guard = self.fetch_lock.lock().await;
        if !self.is_stale() {
            return Ok(());
        }
        if self.fetches() != before || self.attempted_recently() {
            return Err(AuthnError::KeysUnavailable);
        }
        self.fetch_locked().await
    }

    /// Refetches because of an unknown `kid`, at most once per `jwks_min_refetch_interval`.
    /// Returns whether the keys may have changed since the caller looked (it then looks again).
    /// The rate limit is checked under `fetch_lock`: a burst of tokens with made-up `kid`s costs
    /// one fetch, not one each.
    async fn refetch_for_unknown_kid(&self) -> bool {
        if self.attempted_recently() {
            return false;
        }
        let before = self.fetches();
        let _guard = self.fetch_lock.lock().await;
        // Another task fetched while this one waited: its keys are the ones to look at.
        if self.fetches() != before {
            return true;
        }
        if self.attempted_recently() {
            return false;
        }
        self.fetch_locked().await.is_ok()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let timeout = self.cfg.http_timeout.0;
        let jwks_uri = match (&self.cfg.jwks_uri, &self.state.load().jwks_uri) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => self
                .metadata()
                .await
                .map_err(|e| format!("discovery: {e}"))?
                .jwks_uri
                .clone(),
        };
        self.fetch_from(jwks_uri, timeout).await
    }

    /// What `gatehouse check` asks of an issuer, fresh and without touching what this holds:
    /// the discovery document (unless `jwks_uri` is configured and nothing needs discovery), then
    /// the key set. Returns the JWKS URL and how many keys in it Gatehouse can use; an error says
    /// which step failed and why (DNS, refused, TLS, status, JSON).
    pub async fn probe(&self) -> Result<(String, usize), String> {
        let timeout = self.cfg.http_timeout.0;
        let needs_discovery = self.cfg.jwks_uri.is_none()
            || self.cfg.login.is_some()
            || self
                .cfg
                .introspection
                .as_ref()
                .is_some_and(|i| i.endpoint.is_none());
        let discovered = if needs_discovery {
            let url = format!(
                "{}/.well-known/openid-configuration",
                self.cfg.issuer.trim_end_matches('/')
            );
            let d: ProviderMetadata = self
                .get_json(&url, timeout)
                .await
                .map_err(|e| format!("discovery: {e}"))?;
            if d.issuer != self.cfg.issuer {
                return Err(format!(
                    "discovery: {url} names the issuer {:?}, not {:?} (the `issuer` key must be \
                     exactly the tokens' `iss`)",
                    d.issuer, self.cfg.issuer
                ));
            }
            Some(d.jwks_uri)
        } else {
            None
        };
        let jwks_uri = match (&self.cfg.jwks_uri, discovered) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u,
            (None, None) => return Err("no jwks_uri and no discovery".to_owned()),
        };
        let set = self
            .fetch_from(jwks_uri.clone(), timeout)
            .await
            .map_err(|e| format!("keys: {e}"))?;
        if set.keys.is_empty() {
            return Err(format!(
                "keys: {jwks_uri} has no signing key Gatehouse can use (RSA, P-256, P-384 or \
                 Ed25519)"
            ));
        }
        Ok((jwks_uri, set.keys.len()))
    }

    /// Fetches and reads the key set at `jwks_uri`.
    async fn fetch_from(
        &self,
        jwks_uri: String,
        timeout: std::time::Duration,
    ) -> Result<KeySet, String> {
        let set: JwkSet = self.get_json(&jwks_uri, timeout).await?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => KeyFamily::P256,
                    EllipticCurve::P384 => KeyFamily::P384,
                    _ => continue,
                },
                AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                    KeyFamily::Ed25519
                }
                // Symmetric keys in a JWKS are never used: HMAC is not accepted from issuers.
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            });
        }
        Ok(KeySet {
            keys,
            fetched_at: Some(self.clock.now().as_secs()),
            jwks_uri: Some(jwks_uri),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::explain_http_error(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::explain_http_error(&e)))?;
        if body.len() > 1024 * 1024 {
            return Err(format!("GET {url}: document too large"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }

    /// Checks a token's algorithm against the allow-list and its signature against this issuer's
    /// keys (refreshing stale keys, and refetching once, rate-limited, for an unknown `kid`).
    async fn check_signed(&self, jwt: &UnverifiedJwt) -> Result<(), AuthnError> {
        let alg = Algorithm::from_str(&jwt.alg).map_err(|_| AuthnError::AlgorithmNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        // Without any keys this request needs the fetch (and fails as an outage without it).
        // Keys fetched once stay in use when stale: the background task refreshes them, so a
        // request never waits on a slow or unreachable JWKS endpoint for keys it already has.
        if self.state.load().fetched_at.is_none() && self.fetch_missing().await.is_err() {
            return Err(AuthnError::KeysUnavailable);
        }
        let kid = jwt.kid.as_deref();
        let mut state = self.state.load_full();
        if select(&state.keys, kid, alg)?.is_none() && self.refetch_for_unknown_kid().await {
            state = self.state.load_full();
        }
        let key = select(&state.keys, kid, alg)?.ok_or(AuthnError::UnknownKey)?;
        check_signature(jwt, key, alg)
    }

    /// Verifies a token that names this issuer.
    pub(crate) async fn verify(
        &self,
        jwt: &UnverifiedJwt,
        now: i64,
    ) -> Result<Principal, AuthnError> {
        self.check_signed(jwt).await?;
        check_standard(
            &jwt.claims,
            now,
            self.cfg.leeway.0.as_secs() as i64,
            &self.cfg.audiences,
            &self.cfg.required_claims,
        )?;
        self.principal(&jwt.claims)
    }

    /// Maps verified claims to a principal: a token issued to a client for itself is a machine
    /// whatever `principal_kind` says, and groups get this issuer's `groups_prefix`.
    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, AuthnError> {
        self.bound.check(claims)?;
        let workload = self
            .cfg
            .workload
            .map(|platform| {
                crate::workload::workload_of(platform, claims).map(|mut w| {
                    w.issuer.clone_from(&self.cfg.issuer);
                    w
                })
            })
            .transpose()?;
        let kind = if issued_to_a_client(claims) || workload.is_some() {
            PrincipalKind::Service
        } else {
            match self.cfg.principal_kind {
                PrincipalKindConfig::User => PrincipalKind::User,
                PrincipalKindConfig::Service => PrincipalKind::Service,
            }
        };
        let mut p = match &workload {
            // A workload token rarely names a forge user: it goes by a name built from what it
            // proved, unless the mapped claim is there.
            Some(w) => {
                let mut with_name;
                let claims = if crate::claims::lookup(claims, &self.cfg.claims.username).is_none()
                    && let Some(Value::String(sub)) =
                        crate::claims::lookup(claims, &self.cfg.claims.subject)
                {
                    with_name = claims.clone();
                    with_name.insert(
                        self.cfg.claims.username.clone(),
                        Value::String(crate::workload::workload_username(w, sub)),
                    );
                    &with_name
                } else {
                    claims
                };
                map_principal(claims, &self.cfg.claims, &self.cfg.issuer, kind)?
            }
            None => map_principal(claims, &self.cfg.claims, &self.cfg.issuer, kind)?,
        };
        p.workload = workload.map(Arc::new);
        if !self.cfg.groups_prefix.is_empty() {
            for g in &mut p.groups {
                g.insert_str(0, &self.cfg.groups_prefix);
            }
        }
        Ok(p)
    }
}
