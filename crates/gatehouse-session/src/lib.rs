//! Browser sign-in and sessions: the OpenID Connect authorization code flow with PKCE (S256),
//! `state` bound to the browser by a signed cookie, `nonce`, ID token checks, server-side
//! sessions that renew with the refresh token and end at the IdP's end or a configured maximum,
//! RP-initiated logout, and the store the sessions live in.
//!
//! The browser carries only an opaque, signed session id. Tokens stay server-side, sealed with
//! AES-256-GCM under a key derived from the session secret; the store keys records by the
//! SHA-256 of the id, so the store alone never yields a usable cookie.
//!
//! This crate must not know about HTTP routing, pages or policies (gatehouse-http renders the
//! pages and decides which requests may use a session). It never logs or returns a token, a code
//! or a session id. Time comes from the injected [`Clock`].
#![forbid(unsafe_code)]

mod cookie;
mod crypto;
mod redirect;
mod store;

pub use cookie::{LOGIN_COOKIE, SESSION_COOKIE, cookie_values, set_cookie, without_own_cookies};
pub use redirect::safe_return_to;
pub use store::{MemoryStore, RecordKind, SessionStore, StoreError};

use std::sync::Arc;

use gatehouse_authn::{Authenticator, AuthnError, IssuerKeys, ProviderMetadata};
use gatehouse_config::{IssuerConfig, LoginConfig, SessionConfig};
use gatehouse_core::{Clock, Principal, PrincipalKind, Redacted};
use serde::{Deserialize, Serialize};

use crate::crypto::{Keys, pkce_challenge, random_token, store_key};

/// Why a sign-in or session operation failed. The `Display` text is safe to show a person; it
/// never contains a token, code or id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The callback's `state` is not the one this browser's sign-in cookie carries.
    #[error("this sign-in was not started in this browser (or was started again since)")]
    StateMismatch,
    /// The sign-in took longer than `session.login_timeout`.
    #[error("this sign-in has expired")]
    Expired,
    /// The environment the sign-in was bound to ended before it completed.
    #[error("the environment this sign-in is for has ended")]
    EnvironmentEnded,
    /// The callback lacks `code` or `state`, or repeats them.
    #[error("the sign-in response is incomplete")]
    BadCallback,
    /// The IdP answered the authorization request with an error code.
    #[error("the identity provider refused the sign-in ({0})")]
    Refused(String),
    /// The authorization response names another issuer (RFC 9207 mix-up defence).
    #[error("the sign-in response came from another identity provider")]
    IssuerMismatch,
    /// The token endpoint refused the code (wrong, expired or replayed).
    #[error("the identity provider did not accept the sign-in code")]
    CodeRejected,
    /// The ID token failed a check.
    #[error("the identity token was refused: {0}")]
    IdToken(AuthnError),
    /// No sign-in provider with that number.
    #[error("no such sign-in provider")]
    UnknownProvider,
    /// The IdP could not be reached or answered nonsense.
    #[error("the identity provider is unavailable")]
    ProviderUnavailable(String),
    /// The store failed.
    #[error("the session store is unavailable")]
    Store(#[from] StoreError),
    /// The configuration cannot work.
    #[error("session configuration: {0}")]
    Config(String),
    /// A bug.
    #[error("internal session error")]
    Internal(String),
}

impl SessionError {
    /// A stable code for audit records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::StateMismatch => "state_mismatch",
            SessionError::Expired => "login_expired",
            SessionError::EnvironmentEnded => "environment_ended",
            SessionError::BadCallback => "bad_callback",
            SessionError::Refused(_) => "idp_refused",
            SessionError::IssuerMismatch => "issuer_mismatch",
            SessionError::CodeRejected => "code_rejected",
            SessionError::IdToken(_) => "id_token_invalid",
            SessionError::UnknownProvider => "unknown_provider",
            SessionError::ProviderUnavailable(_) => "provider_unavailable",
            SessionError::Store(_) => "store_unavailable",
            SessionError::Config(_) => "config",
            SessionError::Internal(_) => "internal",
        }
    }

    /// Whether the fault lies with the server side (503) rather than the request (400).
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            SessionError::ProviderUnavailable(_)
                | SessionError::Store(_)
                | SessionError::Config(_)
                | SessionError::Internal(_)
        ) || matches!(self, SessionError::IdToken(e) if e.is_server_error())
    }
}

/// An issuer people can sign in at.
#[derive(Debug)]
pub struct Provider {
    keys: Arc<IssuerKeys>,
    login: LoginConfig,
    secret: Option<Redacted<String>>,
    name: String,
}

impl Provider {
    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        self.keys.issuer()
    }

    /// The name shown on the chooser.
    pub fn display_name(&self) -> &str {
        &self.name
    }

    /// The login settings.
    pub fn login(&self) -> &LoginConfig {
        &self.login
    }

    /// The issuer's discovery document.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, SessionError> {
        self.keys
            .metadata()
            .await
            .map_err(|e| SessionError::ProviderUnavailable(e.to_string()))
    }
}

/// What a browser gets to start a sign-in.
#[derive(Debug)]
pub struct LoginStart {
    /// The IdP's authorization URL.
    pub location: String,
    /// The sign-in cookie binding `state` to this browser.
    pub set_cookie: String,
}

/// What a browser gets when a sign-in completes.
#[derive(Debug)]
pub struct LoginDone {
    /// Where to send the browser: the URL first asked for, on this host.
    pub location: String,
    /// The session cookie, and the sign-in cookie's removal.
    pub set_cookies: Vec<String>,
    /// Who signed in.
    pub principal: Principal,
}

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    id: Redacted<String>,
    /// Who it belongs to (its `token_id` is `session:` and a hash prefix, for audit records).
    pub principal: Principal,
    /// The issuer's display name.
    pub provider_name: String,
    /// Sign-in time (seconds since the epoch).
    pub created_at: i64,
    /// When the session ends at the latest.
    pub expires_at: i64,
    /// When the current access token expires.
    pub access_expires_at: i64,
    /// Whether the session renews with a refresh token.
    pub renews: bool,
    /// How many times it was renewed.
    pub refreshes: u32,
}

/// What ending a session gives the browser.
#[derive(Debug)]
pub struct Logout {
    /// The IdP's end-session URL (RP-initiated logout), or Gatehouse's signed-out page.
    pub location: String,
    /// The session cookie's removal.
    pub set_cookie: String,
}

#[derive(Serialize, Deserialize)]
struct StoredPrincipal {
    kind: String,
    subject: String,
    username: String,
    display_name: Option<String>,
    email: Option<String>,
    groups: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    issuer: String,
    principal: StoredPrincipal,
    created_at: i64,
    expires_at: i64,
    access_expires_at: i64,
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    #[serde(default)]
    refreshes: u32,
    /// The environment the session is bound to: ending it revokes the session.
    #[serde(default)]
    environment: Option<String>,
}

/// A sign-in between `begin` and the callback. It travels sealed (AES-256-GCM) in the sign-in
/// cookie, so an unauthenticated request writes nothing server-side; the IdP's single-use code
/// makes a replayed callback fail.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    issuer: String,
    state: String,
    verifier: String,
    nonce: String,
    return_to: String,
    expires_at: i64,
    #[serde(default)]
    environment: Option<EnvironmentBinding>,
}

/// An environment a sign-in binds its session to: the session ends no later than the
/// environment, and ending the environment revokes it. The caller checks that the environment
/// is live before asking; binding only ever narrows a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvironmentBinding {
    /// The environment's id.
    pub id: String,
    /// When it ends by itself (seconds since the epoch).
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

/// How a token endpoint call failed.
enum TokenCallError {
    /// The IdP said no (`invalid_grant` and friends): the code or refresh token is dead.
    Refused(String),
    /// The IdP could not be asked, or answered nonsense.
    Unavailable(String),
}

/// Largest IdP answer read.
const MAX_IDP_ANSWER: usize = 1024 * 1024;
/// Stripes of the refresh lock (one refresh per session at a time).
const LOCK_STRIPES: usize = 64;

/// Browser sessions. One per process; shared by every request.
pub struct Sessions {
    cfg: SessionConfig,
    external: String,
    providers: Vec<Provider>,
    store: Arc<dyn SessionStore>,
    keys: Keys,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// This process's name on renewal leases (random): the striped locks serialise renewal
    /// within a process, the store's lease across the nodes that share it.
    holder: String,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("external", &self.external)
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

impl StoredPrincipal {
    fn of(p: &Principal) -> Self {
        Self {
            kind: p.kind.as_str().to_owned(),
            subject: p.subject.clone(),
            username: p.username.clone(),
            display_name: p.display_name.clone(),
            email: p.email.clone(),
            groups: p.groups.clone(),
        }
    }

    /// The principal again, as the session `id` names it until `expires_at`.
    fn principal(
        &self,
        issuer: &str,
        id: &str,
        expires_at: i64,
        environment: Option<&str>,
    ) -> Principal {
        Principal {
            kind: if self.kind == "service" {
                PrincipalKind::Service
            } else {
                PrincipalKind::User
            },
            issuer: issuer.to_owned(),
            subject: self.subject.clone(),
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            email: self.email.clone(),
            groups: self.groups.clone(),
            token_id: Some(session_ref(id)),
            expires_at: Some(expires_at),
            environment: environment.map(str::to_owned),
            workload: None,
            derived_from: Vec::new(),
        }
    }
}

/// Reads the configured session secret, or the generated one under the store directory
/// (created on first start, mode 0600).
fn session_secret(cfg: &SessionConfig) -> Result<Redacted<String>, SessionError> {
    if let Some(src) = &cfg.secret {
        let s = gatehouse_config::read_secret("session.secret", src)
            .map_err(|e| SessionError::Config(e.to_string()))?;
        return Ok(Redacted::new(s.expose().trim().to_owned()));
    }
    let path = cfg.dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(Redacted::new(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SessionError::Config(format!("{}: {e}", path.display())));
        }
    }
    std::fs::create_dir_all(&cfg.dir)
        .map_err(|e| SessionError::Config(format!("{}: {e}", cfg.dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| SessionError::Config(format!("{}: {e}", cfg.dir.display())))?;
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| SessionError::Internal("rng".into()))?;
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    // Written whole to a temporary file, then linked into place: a reader never sees a partial
    // key, and of two processes starting at once the first link wins and both use its key.
    let tmp = cfg
        .dir
        .join(format!(".secret.key.{}.tmp", std::process::id()));
    let cfg_err = |e: std::io::Error| SessionError::Config(format!("{}: {e}", path.display()));
    {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(cfg_err)?;
        f.write_all(text.as_bytes()).map_err(cfg_err)?;
        f.sync_all().map_err(cfg_err)?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Redacted::new(text)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|s| Redacted::new(s.trim().to_owned()))
            .map_err(cfg_err),
        Err(e) => Err(cfg_err(e)),
    }
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Sessions {
    /// Builds the session manager of `[session]` (`scfg`) over `store` (the app gives it the
    /// shared store every node uses), signing in with the `[[issuers]]` that have a `login` table.
    pub fn new(
        scfg: &SessionConfig,
        issuers: &[IssuerConfig],
        store: Arc<dyn SessionStore>,
        authn: &Authenticator,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SessionError> {
        let secret = session_secret(scfg)?;
        let keys = Keys::derive(secret.expose().as_bytes())?;
        let mut providers = Vec::new();
        for i in issuers {
            let Some(login) = &i.login else { continue };
            let keys = authn
                .issuer(&i.issuer)
                .ok_or_else(|| SessionError::Internal(format!("issuer {} not loaded", i.issuer)))?
                .clone();
            let secret = match &login.client_secret {
                Some(src) => Some(
                    gatehouse_config::read_secret("issuers.login.client_secret", src)
                        .map(|s| Redacted::new(s.expose().trim().to_owned()))
                        .map_err(|e| SessionError::Config(e.to_string()))?,
                ),
                None => None,
            };
            let name = login.display_name.clone().unwrap_or_else(|| {
                url::Url::parse(&i.issuer)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_else(|| i.issuer.clone())
            });
            providers.push(Provider {
                keys,
                login: login.clone(),
                secret,
                name,
            });
        }
        Ok(Self {
            cfg: scfg.clone(),
            external: scfg.external_url.trim_end_matches('/').to_owned(),
            providers,
            store,
            keys,
            clock,
            http: authn.http().clone(),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            holder: {
                let mut b = [0u8; 12];
                aws_lc_rs::rand::fill(&mut b).map_err(|_| SessionError::Internal("rng".into()))?;
                b.iter().map(|x| format!("{x:02x}")).collect()
            },
        })
    }

    /// The URL browsers reach Gatehouse at (no trailing slash).
    pub fn external_url(&self) -> &str {
        &self.external
    }

    /// The host (and port) of the external URL, lowercase.
    pub fn external_host(&self) -> String {
        url::Url::parse(&self.external)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    /// The session settings.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The sign-in provider of `issuer`, while it is configured.
    fn provider(&self, issuer: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.issuer() == issuer)
    }

    /// The lock serialising renewal and sign-out of the session stored under `key`.
    fn lock_of(&self, key: &str) -> &tokio::sync::Mutex<()> {
        &self.locks[usize::from(key.as_bytes().first().copied().unwrap_or(0)) % LOCK_STRIPES]
    }

    /// The issuers people can sign in at, in config order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The redirect URI registered at the IdPs.
    pub fn callback_url(&self) -> String {
        format!("{}/.gatehouse/callback", self.external)
    }

    /// Where the IdP sends the browser after RP-initiated logout.
    pub fn signed_out_url(&self) -> String {
        format!("{}/.gatehouse/signed-out", self.external)
    }

    /// Starts a sign-in at provider `n`: remembers `state`, `nonce` and the PKCE verifier, and
    /// returns the IdP URL and the cookie binding the sign-in to this browser.
    /// With `environment`, the session is bound to it (see [`EnvironmentBinding`]).
    pub async fn begin(
        &self,
        n: usize,
        return_to: &str,
        environment: Option<EnvironmentBinding>,
    ) -> Result<LoginStart, SessionError> {
        let p = self.providers.get(n).ok_or(SessionError::UnknownProvider)?;
        let meta = p.metadata().await?;
        let endpoint = meta.authorization_endpoint.as_deref().ok_or_else(|| {
            SessionError::ProviderUnavailable("discovery names no authorization_endpoint".into())
        })?;
        let mut url = url::Url::parse(endpoint).map_err(|e| {
            SessionError::ProviderUnavailable(format!("authorization_endpoint: {e}"))
        })?;
        let state = random_token(32)?;
        let nonce = random_token(32)?;
        let verifier = random_token(48)?;
        let now = self.clock.now().as_secs();
        let expires_at = now.saturating_add(self.cfg.login_timeout.0.as_secs() as i64);
        let pending = PendingLogin {
            issuer: p.issuer().to_owned(),
            state: state.clone(),
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            return_to: safe_return_to(return_to),
            expires_at,
            environment,
        };
        let sealed = self.seal_cookie(&pending)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &p.login.client_id)
                .append_pair("redirect_uri", &self.callback_url())
                .append_pair("scope", &p.login.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", &pkce_challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            for (k, v) in &p.login.extra_params {
                q.append_pair(k, v);
            }
        }
        Ok(LoginStart {
            location: url.into(),
            set_cookie: set_cookie(
                LOGIN_COOKIE,
                &sealed,
                self.cfg.login_timeout.0.as_secs() as i64,
            ),
        })
    }

    fn seal_cookie(&self, pending: &PendingLogin) -> Result<String, SessionError> {
        use base64::Engine as _;
        let plain =
            serde_json::to_vec(pending).map_err(|e| SessionError::Internal(e.to_string()))?;
        let sealed = self.keys.seal(LOGIN_COOKIE, &plain)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    fn open_cookie(&self, value: &str) -> Option<PendingLogin> {
        use base64::Engine as _;
        if value.len() > 4096 {
            return None;
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        serde_json::from_slice(&self.keys.open(LOGIN_COOKIE, &sealed)?).ok()
    }

    /// Completes a sign-in from the IdP's callback: opens this browser's sealed sign-in cookie and
    /// checks its `state`, checks `iss` (RFC 9207), exchanges the code with the PKCE verifier
    /// (the IdP redeems a code once), verifies the ID token (signature, issuer, audience,
    /// expiry, nonce, required claims) and creates the session. A session the browser already
    /// had is ended (no session outlives a new sign-in in the same browser).
    pub async fn finish<'a>(
        &self,
        query: Option<&str>,
        cookie_headers: impl Iterator<Item = &'a str>,
    ) -> Result<LoginDone, SessionError> {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut iss = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                "iss" => &mut iss,
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(SessionError::BadCallback);
            }
        }
        let state = state.ok_or(SessionError::BadCallback)?;
        let headers: Vec<&str> = cookie_headers.collect();
        // The state must be the one this browser's sign-in cookie carries.
        let pending = headers
            .iter()
            .flat_map(|h| cookie_values(h, LOGIN_COOKIE))
            .filter_map(|v| self.open_cookie(v))
            .find(|p| p.state == state)
            .ok_or(SessionError::StateMismatch)?;
        let now = self.clock.now().as_secs();
        if now > pending.expires_at {
            return Err(SessionError::Expired);
        }
        let p = self
            .provider(&pending.issuer)
            .ok_or(SessionError::UnknownProvider)?;
        let meta = p.metadata().await?;
        match iss {
            Some(iss) if iss != p.issuer() => return Err(SessionError::IssuerMismatch),
            // An IdP that says it sends `iss` must send it (RFC 9207 §2.4).
            None if meta.authorization_response_iss_parameter_supported => {
                return Err(SessionError::IssuerMismatch);
            }
            _ => {}
        }
        if let Some(e) = error {
            let e: String = e
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(SessionError::Refused(e));
        }
        let code = code.ok_or(SessionError::BadCallback)?;
        let tokens = self
            .token_call(
                p,
                &meta,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &self.callback_url()),
                    ("code_verifier", &pending.verifier),
                ],
            )
            .await
            .map_err(|e| match e {
                TokenCallError::Refused(_) => SessionError::CodeRejected,
                TokenCallError::Unavailable(d) => SessionError::ProviderUnavailable(d),
            })?;
        let id_token = tokens
            .id_token
            .as_deref()
            .ok_or_else(|| SessionError::IdToken(AuthnError::MissingClaim("id_token".into())))?;
        let claims = p
            .keys
            .verify_id_token(id_token, &p.login.client_id, Some(&pending.nonce), now)
            .await
            .map_err(SessionError::IdToken)?;
        let principal = self
            .principal(p, &meta, claims, &tokens.access_token)
            .await?;

        // A session this browser already had ends: one browser, one signed-in identity.
        for old in headers
            .iter()
            .flat_map(|h| cookie_values(h, SESSION_COOKIE))
            .filter_map(|v| self.keys.verify("session", v))
        {
            self.store
                .delete(RecordKind::Session, &store_key(old))
                .await?;
        }
        let id = random_token(32)?;
        let access_expires_at = access_expiry(now, tokens.expires_in);
        let hard_end = now.saturating_add(self.cfg.max_lifetime.0.as_secs() as i64);
        let expires_at = if tokens.refresh_token.is_some() {
            hard_end
        } else {
            hard_end.min(access_expires_at)
        };
        let expires_at = match &pending.environment {
            Some(env) if env.expires_at <= now => return Err(SessionError::EnvironmentEnded),
            Some(env) => expires_at.min(env.expires_at),
            None => expires_at,
        };
        let environment = pending.environment.map(|e| e.id);
        let rec = StoredSession {
            issuer: p.issuer().to_owned(),
            principal: StoredPrincipal::of(&principal),
            created_at: now,
            expires_at,
            access_expires_at,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token: Some(id_token.to_owned()),
            refreshes: 0,
            environment: environment.clone(),
        };
        self.put(RecordKind::Session, &store_key(&id), expires_at, &rec)
            .await?;
        let mut principal = principal;
        principal.token_id = Some(session_ref(&id));
        principal.expires_at = Some(expires_at);
        principal.environment = environment;
        Ok(LoginDone {
            location: format!("{}{}", self.external, pending.return_to),
            set_cookies: vec![
                set_cookie(
                    SESSION_COOKIE,
                    &self.keys.sign("session", &id),
                    expires_at.saturating_sub(now),
                ),
                set_cookie(LOGIN_COOKIE, "", 0),
            ],
            principal,
        })
    }

    /// The live session named by the request's session cookie, renewed when its access token
    /// is about to expire. `None` when there is no valid cookie or the session has ended (at
    /// its maximum, or because the IdP no longer renews it).
    pub async fn resolve<'a>(
        &self,
        cookie_headers: impl Iterator<Item = &'a str>,
    ) -> Result<Option<ActiveSession>, SessionError> {
        let ids: Vec<String> = cookie_headers
            .flat_map(|h| cookie_values(h, SESSION_COOKIE))
            .filter_map(|v| self.keys.verify("session", v))
            .map(str::to_owned)
            .collect();
        for id in ids {
            if let Some(s) = self.resolve_id(&id).await? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    async fn resolve_id(&self, id: &str) -> Result<Option<ActiveSession>, SessionError> {
        let key = store_key(id);
        let Some(mut rec) = self.get::<StoredSession>(RecordKind::Session, &key).await? else {
            return Ok(None);
        };
        let now = self.clock.now().as_secs();
        // Past its end, or its issuer is no longer trusted for sign-in: the session is over.
        let provider = self.provider(&rec.issuer).filter(|_| now < rec.expires_at);
        let Some(p) = provider else {
            self.store.delete(RecordKind::Session, &key).await?;
            return Ok(None);
        };
        let refresh_before = self.cfg.refresh_before.0.as_secs() as i64;
        let renew_at = rec.access_expires_at.saturating_sub(refresh_before);
        if rec.refresh_token.is_some() && now >= renew_at {
            let _guard = self.lock_of(&key).lock().await;
            // One renewal at a time across every node sharing the store: a rotating refresh
            // token is spent once. Whoever waited reads what the renewal wrote.
            let leased = self.lease(&key).await?;
            // The wait may have been long: decide on the time now.
            let now = self.clock.now().as_secs();
            let renewed = self.renew(p, &key, leased, now, refresh_before).await;
            if leased {
                self.store
                    .release(RecordKind::Session, &key, &self.holder)
                    .await?;
            }
            match renewed? {
                Some(r) => rec = r,
                None => return Ok(None),
            }
        }
        let principal =
            rec.principal
                .principal(&rec.issuer, id, rec.expires_at, rec.environment.as_deref());
        Ok(Some(ActiveSession {
            id: Redacted::new(id.to_owned()),
            principal,
            provider_name: p.name.clone(),
            created_at: rec.created_at,
            expires_at: rec.expires_at,
            access_expires_at: rec.access_expires_at,
            renews: rec.refresh_token.is_some(),
            refreshes: rec.refreshes,
        }))
    }

    /// How long a renewal lease lasts: past it (a node died mid-renewal), another may renew.
    /// Longer than a renewal can take (token call, key fetch and UserInfo, 10 s each at most),
    /// so a slow renewal never loses its lease to a second spend of the refresh token.
    const LEASE_MS: i64 = 45_000;
    /// How long a request waits for another node's renewal before giving up on renewing.
    const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// Takes the renewal lease of the session under `key`, waiting while another node holds it.
    /// `false`: the wait ran out (or the session is gone).
    async fn lease(&self, key: &str) -> Result<bool, SessionError> {
        let started = std::time::Instant::now();
        loop {
            let got = self
                .store
                .try_lease(RecordKind::Session, key, &self.holder, Self::LEASE_MS)
                .await?;
            if got || started.elapsed() >= Self::LEASE_WAIT {
                return Ok(got);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The session under `key` as it is now, renewed first if it still needs it and this
    /// process holds the lease (`leased`). `None`: the session has ended.
    async fn renew(
        &self,
        p: &Provider,
        key: &str,
        leased: bool,
        now: i64,
        refresh_before: i64,
    ) -> Result<Option<StoredSession>, SessionError> {
        // Another request, here or on another node, may have renewed it while this one waited.
        let Some(mut rec) = self.get::<StoredSession>(RecordKind::Session, key).await? else {
            return Ok(None);
        };
        if now < rec.access_expires_at.saturating_sub(refresh_before) {
            return Ok(Some(rec));
        }
        if !leased {
            // Another node is renewing and slow: use what there is while it is valid.
            tracing::warn!("session renewal is held by another node; not renewing here");
            return Ok((now < rec.access_expires_at).then_some(rec));
        }
        match self.refresh(p, &mut rec, now).await {
            Ok(()) => {
                let sealed = self.seal(RecordKind::Session, key, &rec)?;
                let kept = self
                    .store
                    .update_leased(
                        RecordKind::Session,
                        key,
                        &self.holder,
                        rec.expires_at,
                        &sealed,
                    )
                    .await?;
                // Signed out meanwhile (on any node): it stays signed out.
                Ok(kept.then_some(rec))
            }
            Err(TokenCallError::Refused(why)) => {
                tracing::info!(reason = %why, "session ended: the identity provider no longer renews it");
                self.store.delete(RecordKind::Session, key).await?;
                Ok(None)
            }
            Err(TokenCallError::Unavailable(why)) => {
                tracing::warn!(error = %why, "session renewal failed");
                Ok((now < rec.access_expires_at).then_some(rec))
            }
        }
    }

    /// Renews a session's tokens; a new ID token must name the same subject.
    async fn refresh(
        &self,
        p: &Provider,
        rec: &mut StoredSession,
        now: i64,
    ) -> Result<(), TokenCallError> {
        let Some(rt) = rec.refresh_token.clone() else {
            return Err(TokenCallError::Refused("no refresh token".into()));
        };
        let meta = p
            .metadata()
            .await
            .map_err(|e| TokenCallError::Unavailable(e.to_string()))?;
        let tokens = self
            .token_call(
                p,
                &meta,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await?;
        if let Some(id_token) = &tokens.id_token {
            // A renewed ID token has no nonce to check (OIDC Core §12.2) but must be valid and
            // name the same person.
            let claims = p
                .keys
                .verify_id_token(id_token, &p.login.client_id, None, now)
                .await
                .map_err(|e| {
                    let why = format!("renewed ID token: {e}");
                    // The IdP's keys being out of reach is an outage, not a refusal.
                    if e.is_server_error() {
                        TokenCallError::Unavailable(why)
                    } else {
                        TokenCallError::Refused(why)
                    }
                })?;
            if claims.get("sub").and_then(serde_json::Value::as_str)
                != Some(rec.principal.subject.as_str())
                && p.keys.config().claims.subject == "sub"
            {
                return Err(TokenCallError::Refused(
                    "renewed ID token names another subject".into(),
                ));
            }
            let principal = self
                .principal(p, &meta, claims, &tokens.access_token)
                .await
                .map_err(|e| {
                    if e.is_server_error() {
                        TokenCallError::Unavailable(e.to_string())
                    } else {
                        TokenCallError::Refused(e.to_string())
                    }
                })?;
            if principal.subject != rec.principal.subject {
                return Err(TokenCallError::Refused(
                    "renewed identity names another subject".into(),
                ));
            }
            rec.principal = StoredPrincipal::of(&principal);
            rec.id_token = Some(id_token.clone());
        }
        rec.access_expires_at = access_expiry(now, tokens.expires_in);
        rec.access_token = tokens.access_token;
        if let Some(rt) = tokens.refresh_token {
            rec.refresh_token = Some(rt);
        }
        rec.refreshes = rec.refreshes.saturating_add(1);
        Ok(())
    }

    /// The CSRF token a form acting on this session must carry.
    pub fn csrf_token(&self, s: &ActiveSession) -> String {
        self.keys.csrf(s.id.expose())
    }

    /// Whether `token` is this session's CSRF token.
    pub fn csrf_ok(&self, s: &ActiveSession, token: &str) -> bool {
        self.keys.csrf_ok(s.id.expose(), token)
    }

    /// Ends a session here and, when the IdP supports it, there: the refresh token is revoked
    /// (RFC 7009) and the browser is sent to the IdP's end-session endpoint.
    pub async fn logout(&self, s: &ActiveSession) -> Result<Logout, SessionError> {
        let key = store_key(s.id.expose());
        // The same lock as renewal: a renewal in flight cannot write the session back.
        let guard = self.lock_of(&key).lock().await;
        let rec = self
            .take::<StoredSession>(RecordKind::Session, &key)
            .await?;
        drop(guard);
        let clear = set_cookie(SESSION_COOKIE, "", 0);
        let mut location = self.signed_out_url();
        if let Some(rec) = rec
            && let Some(p) = self.provider(&rec.issuer)
            && let Ok(meta) = p.metadata().await
        {
            if let (Some(rt), Some(endpoint)) = (&rec.refresh_token, &meta.revocation_endpoint) {
                let form = [("token", rt.as_str()), ("token_type_hint", "refresh_token")];
                if let Err(e) = self.post_form(p, endpoint, &form).await {
                    tracing::warn!(error = %e, "revoking the refresh token failed");
                }
            }
            if let Some(end) = &meta.end_session_endpoint
                && let Ok(mut url) = url::Url::parse(end)
            {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(id) = &rec.id_token {
                        q.append_pair("id_token_hint", id);
                    }
                    q.append_pair("client_id", &p.login.client_id)
                        .append_pair("post_logout_redirect_uri", &self.signed_out_url());
                }
                location = url.into();
            }
        }
        Ok(Logout {
            location,
            set_cookie: clear,
        })
    }

    /// Removes expired sessions and sign-ins from the store.
    pub async fn sweep(&self) -> Result<usize, SessionError> {
        Ok(self.store.sweep(self.clock.now().as_secs()).await?)
    }

    /// Maps the ID token's claims to a principal. When the groups claim is not in the ID token
    /// and the IdP has a UserInfo endpoint, UserInfo fills in what the ID token lacks (its `sub`
    /// must match).
    async fn principal(
        &self,
        p: &Provider,
        meta: &ProviderMetadata,
        mut claims: serde_json::Map<String, serde_json::Value>,
        access_token: &str,
    ) -> Result<Principal, SessionError> {
        let groups_path = &p.keys.config().claims.groups;
        let has_groups = claims.contains_key(groups_path.split('.').next().unwrap_or(""));
        if !has_groups && let Some(ui) = &meta.userinfo_endpoint {
            match self.userinfo(ui, access_token).await {
                Ok(info) => {
                    if info.get("sub") != claims.get("sub") {
                        return Err(SessionError::IdToken(AuthnError::BadClaim(
                            "userinfo sub".into(),
                        )));
                    }
                    for (k, v) in info {
                        claims.entry(k).or_insert(v);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "userinfo failed; groups from the ID token only")
                }
            }
        }
        p.keys
            .check_required(&claims)
            .map_err(SessionError::IdToken)?;
        let mut principal = p
            .keys
            .principal_from_claims(&claims)
            .map_err(SessionError::IdToken)?;
        principal.kind = PrincipalKind::User;
        Ok(principal)
    }

    async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let resp = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("userinfo: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("userinfo: status {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| format!("userinfo: {e}"))?;
        if body.len() > MAX_IDP_ANSWER {
            return Err("userinfo: answer too large".into());
        }
        serde_json::from_slice(&body).map_err(|e| format!("userinfo: {e}"))
    }

    async fn post_form(
        &self,
        p: &Provider,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, String> {
        let mut body: Vec<(&str, &str)> = form.to_vec();
        let mut req = self
            .http
            .post(endpoint)
            .timeout(std::time::Duration::from_secs(10));
        match &p.secret {
            // RFC 6749 §2.3.1: form-encode id and secret before HTTP Basic.
            Some(s) => {
                req = req.basic_auth(
                    form_encode(&p.login.client_id),
                    Some(form_encode(s.expose())),
                );
            }
            None => body.push(("client_id", &p.login.client_id)),
        }
        req.form(&body)
            .send()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))
    }

    async fn token_call(
        &self,
        p: &Provider,
        meta: &ProviderMetadata,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenCallError> {
        let endpoint = meta.token_endpoint.as_deref().ok_or_else(|| {
            TokenCallError::Unavailable("discovery names no token_endpoint".into())
        })?;
        let resp = self
            .post_form(p, endpoint, form)
            .await
            .map_err(TokenCallError::Unavailable)?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| TokenCallError::Unavailable(format!("token endpoint: {e}")))?;
        if body.len() > MAX_IDP_ANSWER {
            return Err(TokenCallError::Unavailable(
                "token endpoint: answer too large".into(),
            ));
        }
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| TokenCallError::Unavailable(format!("token endpoint: {e}")));
        }
        match serde_json::from_slice::<OAuthErrorBody>(&body) {
            Ok(e) if status.is_client_error() => Err(TokenCallError::Refused(e.error)),
            _ => Err(TokenCallError::Unavailable(format!(
                "token endpoint: status {status}"
            ))),
        }
    }

    fn seal<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, SessionError> {
        let plain = serde_json::to_vec(value).map_err(|e| SessionError::Internal(e.to_string()))?;
        self.keys.seal(&format!("{}/{key}", kind.as_str()), &plain)
    }

    async fn put<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        expires_at: i64,
        value: &T,
    ) -> Result<(), SessionError> {
        let sealed = self.seal(kind, key, value)?;
        Ok(self.store.put(kind, key, expires_at, &sealed).await?)
    }

    fn open<T: for<'de> Deserialize<'de>>(
        &self,
        kind: RecordKind,
        key: &str,
        sealed: &[u8],
    ) -> Option<T> {
        let plain = self
            .keys
            .open(&format!("{}/{key}", kind.as_str()), sealed)?;
        serde_json::from_slice(&plain).ok()
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        let Some(sealed) = self.store.get(kind, key).await? else {
            return Ok(None);
        };
        // A record sealed under another secret (rotated) or damaged is no session.
        Ok(self.open(kind, key, &sealed))
    }

    async fn take<T: for<'de> Deserialize<'de>>(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        let Some(sealed) = self.store.take(kind, key).await? else {
            return Ok(None);
        };
        Ok(self.open(kind, key, &sealed))
    }
}

/// When an access token given now with `expires_in` expires (5 minutes when the IdP does not
/// say; a year at most, whatever it says).
fn access_expiry(now: i64, expires_in: Option<i64>) -> i64 {
    now.saturating_add(expires_in.unwrap_or(300).clamp(0, 366 * 86_400))
}

/// What audit records name a session by: a prefix of the hash of its id.
fn session_ref(id: &str) -> String {
    format!("session:{}", &store_key(id)[..16])
}

#[cfg(test)]
mod tests;
