//! Ephemeral environments (a review app, a dev container, a CI job's sandbox): credentials bound
//! to one never outlive it, and ending it revokes all of them at once, on every node, through
//! the revocation log.

use gatehouse_core::RevocationKind;
use sqlx::Row;

use crate::{NewRevocation, Store, StoreError, on_db};

/// How long an environment's revocation outlasts the environment's own end: longer than any
/// clock leeway a credential bound to it is verified with.
const ENDED_MARGIN: i64 = 86_400;

/// An environment as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Its id (`env-` and 32 hex digits), what tokens and certificates are bound to.
    pub id: String,
    /// A name for people (free text).
    pub name: String,
    /// Who created it.
    pub created_by: String,
    /// When, in seconds since the epoch.
    pub created_at: i64,
    /// When it ends by itself.
    pub expires_at: i64,
    /// When it was ended, if it was.
    pub ended_at: Option<i64>,
    /// Who ended it.
    pub ended_by: Option<String>,
}

impl Environment {
    /// Whether credentials may still be bound to it at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }
}

/// The environments of a [`Store`].
#[derive(Debug)]
pub struct Environments<'a> {
    store: &'a Store,
}

macro_rules! env_of {
    ($row:expr) => {{
        let r = $row;
        Ok::<_, sqlx::Error>(Environment {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            ended_at: r.try_get("ended_at")?,
            ended_by: r.try_get("ended_by")?,
        })
    }};
}

impl<'a> Environments<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Creates an environment named `name` that ends by itself at `expires_at`.
    pub async fn create(
        &self,
        name: &str,
        created_by: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Environment, StoreError> {
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "an environment name is 1 to 200 printable characters".into(),
            ));
        }
        if expires_at <= now {
            return Err(StoreError::Invalid(
                "an environment must last some time".into(),
            ));
        }
        let env = Environment {
            id: format!("env-{}", uuid::Uuid::new_v4().simple()),
            name: name.to_owned(),
            created_by: created_by.to_owned(),
            created_at: now,
            expires_at,
            ended_at: None,
            ended_by: None,
        };
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "INSERT INTO environments (id, name, created_by, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&env.id)
            .bind(&env.name)
            .bind(&env.created_by)
            .bind(env.created_at)
            .bind(env.expires_at)
            .execute(pool)
            .await
            .map_err(StoreError::query("creating an environment"))?;
        });
        Ok(env)
    }

    /// The environment `id`, ended or not.
    pub async fn get(&self, id: &str) -> Result<Option<Environment>, StoreError> {
        let what = "reading an environment";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(
                "SELECT id, name, created_by, created_at, expires_at, ended_at, ended_by \
                 FROM environments WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            row.map(|r| env_of!(r))
                .transpose()
                .map_err(StoreError::query(what))
        })
    }

    /// The environments not ended and not expired at `now`, oldest first.
    pub async fn live(&self, now: i64) -> Result<Vec<Environment>, StoreError> {
        let what = "listing environments";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(
                "SELECT id, name, created_by, created_at, expires_at, ended_at, ended_by \
                 FROM environments WHERE ended_at IS NULL AND expires_at > $1 \
                 ORDER BY created_at, id",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|r| env_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Ends the environment `id`: first a revocation of everything bound to it (so that a crash
    /// between the two steps leaves its credentials refused, and ending it again finishes the
    /// job), then the record. `Ok(None)`: no such environment.
    pub async fn end(
        &self,
        id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<Environment>, StoreError> {
        let Some(env) = self.get(id).await? else {
            return Ok(None);
        };
        self.store
            .revocations()
            .revoke(
                NewRevocation {
                    kind: RevocationKind::Environment,
                    value: env.id.clone(),
                    reason: format!("environment {} ended", env.name),
                    actor: actor.to_owned(),
                    // Nothing bound to it lives past its expiry, give or take a verifier's clock
                    // leeway: the revocation outlasts both by a day.
                    until: Some(env.expires_at.saturating_add(ENDED_MARGIN)),
                },
                now,
            )
            .await?;
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE environments SET ended_at = $2, ended_by = $3 \
                 WHERE id = $1 AND ended_at IS NULL",
            )
            .bind(id)
            .bind(now)
            .bind(actor)
            .execute(pool)
            .await
            .map_err(StoreError::query("ending an environment"))?;
        });
        self.get(id).await
    }
}
