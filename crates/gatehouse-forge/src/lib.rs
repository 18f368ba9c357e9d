//! The forge's REST API as Gatehouse uses it:
//! - which organisations and teams a caller belongs to on Gitea or Forgejo, so that a policy can
//!   say "members of the team acme/release" ([`ForgeGroups`]). Answers are cached per user for
//!   `forge.groups.cache_ttl`. Calls are made with a site administrator's token acting as the
//!   caller (`Sudo: <user>`), two calls per user (`/api/v1/user/orgs`, `/api/v1/user/teams`),
//!   paged;
//! - what a web or API route that moves refs does not say itself: a pull request's base and head
//!   branches, a release's tag, a repository's default branch ([`ForgeApi`]), cached briefly;
//! - whether a Gitea Actions job exists in a repository and is running, and its commit and ref
//!   ([`ForgeApi::running_job`]), before Gatehouse mints a token for it.
//!
//! This crate must not decide anything or know about HTTP routing; it never logs the token. Time
//! comes from the injected [`Clock`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_config::{ForgeGroupsConfig, OnForgeError};
use gatehouse_core::{Clock, Principal, Redacted};
use serde::Deserialize;

/// Why the forge could not say.
#[derive(Debug, Clone, thiserror::Error)]
#[error("forge groups unavailable: {0}")]
pub struct ForgeError(pub String);

/// How to reach the forge's API: built by the app from the config (this crate never reads the
/// whole configuration).
#[derive(Debug, Clone)]
pub struct ForgeClient {
    /// The base URL (`https://forge.example`), without a trailing `/`.
    pub api: String,
    /// The API token.
    pub token: Redacted<String>,
    /// Timeout of each call.
    pub timeout: std::time::Duration,
}

impl ForgeClient {
    fn http(&self, redirects: bool) -> Result<reqwest::Client, ForgeError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout);
        if !redirects {
            b = b.redirect(reqwest::redirect::Policy::none());
        }
        b.build()
            .map_err(|e| ForgeError(format!("http client: {e}")))
    }
}

/// Most users whose groups are remembered; the cache is emptied when full.
const MAX_CACHED: usize = 10_000;
/// Page size, and most pages read per list.
const PAGE: usize = 50;
const MAX_PAGES: usize = 20;

#[derive(Clone)]
struct Entry {
    groups: Arc<Vec<String>>,
    fetched_at: i64,
}

#[derive(Deserialize)]
struct Org {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl Org {
    fn login(&self) -> Option<&str> {
        self.username
            .as_deref()
            .or(self.name.as_deref())
            .filter(|s| !s.is_empty())
    }
}

#[derive(Deserialize)]
struct Team {
    name: String,
    #[serde(default)]
    organization: Option<Org>,
}

/// A caller's groups on the forge.
pub struct ForgeGroups {
    cfg: ForgeGroupsConfig,
    api: String,
    token: Redacted<String>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for ForgeGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeGroups")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// A name that may go into a group: printable, no separators that policies or headers treat
/// specially.
fn clean(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ForgeGroups {
    /// The enricher over the forge's API (`client`) with the `[forge.groups]` settings.
    pub fn new(
        client: ForgeClient,
        cfg: ForgeGroupsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ForgeError> {
        let http = client.http(true)?;
        Ok(Self {
            cfg,
            api: client.api,
            token: client.token,
            http,
            clock,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Adds the principal's forge groups (prefixed) to its groups. When the forge cannot be asked
    /// and nothing usable is cached, `on_error = "continue"` leaves the groups as they are and
    /// `"refuse"` returns the error.
    pub async fn enrich(&self, p: &mut Principal) -> Result<(), ForgeError> {
        match self.groups_of(&p.username).await {
            Ok(groups) => {
                p.groups.extend(groups.iter().cloned());
                p.normalize_groups();
                Ok(())
            }
            Err(e) if self.cfg.on_error == OnForgeError::Continue => {
                tracing::warn!(error = %e, user = %p.username, "forge groups unavailable; going on without them");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The user's organisations (`<prefix><org>`) and teams (`<prefix><org>/<team>`), cached.
    /// A fresh answer is used within `cache_ttl`; when the forge fails, an older answer (up to
    /// ten times `cache_ttl`) is used rather than none.
    pub async fn groups_of(&self, username: &str) -> Result<Arc<Vec<String>>, ForgeError> {
        let now = self.clock.now().as_secs();
        let ttl = self.cfg.cache_ttl.0.as_secs() as i64;
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(username).cloned());
        if let Some(e) = &cached
            && now - e.fetched_at < ttl
        {
            return Ok(e.groups.clone());
        }
        match self.fetch(username).await {
            Ok(groups) => {
                let groups = Arc::new(groups);
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() >= MAX_CACHED {
                        c.clear();
                    }
                    c.insert(
                        username.to_owned(),
                        Entry {
                            groups: groups.clone(),
                            fetched_at: now,
                        },
                    );
                }
                Ok(groups)
            }
            Err(e) => match cached {
                Some(old) if now - old.fetched_at < ttl.saturating_mul(10) => {
                    tracing::warn!(error = %e, user = %username, "forge groups: using an older answer");
                    Ok(old.groups)
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, username: &str) -> Result<Vec<String>, ForgeError> {
        let prefix = &self.cfg.prefix;
        let mut out = Vec::new();
        let Some(orgs) = self.list::<Org>("orgs", username).await? else {
            // The forge does not know this user: no forge groups.
            return Ok(out);
        };
        for o in &orgs {
            if let Some(login) = o.login().filter(|l| clean(l)) {
                out.push(format!("{prefix}{login}"));
            }
        }
        for t in self
            .list::<Team>("teams", username)
            .await?
            .unwrap_or_default()
        {
            let Some(org) = t.organization.as_ref().and_then(Org::login) else {
                continue;
            };
            if clean(org) && clean(&t.name) {
                out.push(format!("{prefix}{org}/{}", t.name));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every page of `/api/v1/user/<what>` as `username`; `None` when the forge does not know
    /// the user.
    async fn list<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        username: &str,
    ) -> Result<Option<Vec<T>>, ForgeError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let url = format!("{}/api/v1/user/{what}?limit={PAGE}&page={page}", self.api);
            let resp = self
                .http
                .get(&url)
                .header("authorization", format!("token {}", self.token.expose()))
                .header("sudo", username)
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|e| ForgeError(format!("GET /api/v1/user/{what}: {e}")))?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(ForgeError(format!(
                    "GET /api/v1/user/{what}: status {status}"
                )));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| ForgeError(format!("GET /api/v1/user/{what}: {e}")))?;
            if body.len() > 4 * 1024 * 1024 {
                return Err(ForgeError(format!(
                    "GET /api/v1/user/{what}: answer too large"
                )));
            }
            let items: Vec<T> = serde_json::from_slice(&body)
                .map_err(|e| ForgeError(format!("GET /api/v1/user/{what}: {e}")))?;
            let n = items.len();
            all.extend(items);
            if n < PAGE {
                break;
            }
        }
        Ok(Some(all))
    }
}

mod actions;
mod lookups;
pub use actions::{JobRefused, RunningJob, valid_name};
pub use lookups::{ForgeApi, LookupError, PullBranches, RepoInfo, ResolvedMove, resolve_moves};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_names_become_groups() {
        for ok in ["acme", "release-team", "a_b.c"] {
            assert!(clean(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a,b", "a\"b", "ä", &"x".repeat(256)] {
            assert!(!clean(bad), "{bad}");
        }
    }

    #[test]
    fn org_names_come_from_username_or_name() {
        let o: Org = serde_json::from_str(r#"{"username":"acme","name":"Acme Inc"}"#).unwrap();
        assert_eq!(o.login(), Some("acme"));
        let o: Org = serde_json::from_str(r#"{"name":"acme"}"#).unwrap();
        assert_eq!(o.login(), Some("acme"));
        let t: Team =
            serde_json::from_str(r#"{"id":3,"name":"release","organization":{"username":"acme"}}"#)
                .unwrap();
        assert_eq!(t.organization.unwrap().login(), Some("acme"));
    }
}
