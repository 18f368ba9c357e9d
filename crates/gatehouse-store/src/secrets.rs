//! The secrets broker's rows: per secret, its data key wrapped by a master key, its tags and
//! retention; per version, the sealed value and its state (enabled, not before, expiry).
//!
//! This module never sees a key or a value in clear: `gatehouse-secrets` seals values and wraps
//! data keys before they get here. What it owns is the shape of the rows and the atomicity of
//! each change (a new version never overwrites another; soft delete, recover and purge are
//! exclusive states).

use sqlx::Row;

use crate::{Store, StoreError, on_db};

/// A secret's row: everything but its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// The path (`prod/acme/api/db-password`).
    pub path: String,
    /// The data key, wrapped by the master key `kek`.
    pub dek: Vec<u8>,
    /// The id of the master key that wrapped it.
    pub kek: String,
    /// Its tags, as a JSON object of strings.
    pub tags: String,
    /// How many versions are kept.
    pub max_versions: i64,
    /// The newest version's number.
    pub latest: i64,
    /// When it was created (seconds since the epoch).
    pub created_at: i64,
    /// When it last changed.
    pub updated_at: i64,
    /// When it was soft-deleted, if it is.
    pub deleted_at: Option<i64>,
    /// Who deleted it.
    pub deleted_by: Option<String>,
    /// When a deleted secret is purged by itself.
    pub purge_at: Option<i64>,
}

/// A version's state (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    /// Its number (1, 2, ...).
    pub version: i64,
    /// Whether it may be read.
    pub enabled: bool,
    /// Not readable before this time, when set.
    pub not_before: Option<i64>,
    /// Not readable after this time, when set.
    pub expires_at: Option<i64>,
    /// When it was written.
    pub created_at: i64,
    /// Who wrote it.
    pub created_by: String,
}

/// A version with its sealed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Its state.
    pub meta: SecretVersion,
    /// The value, sealed under the secret's data key.
    pub sealed: Vec<u8>,
}

/// A secret to create.
#[derive(Debug, Clone)]
pub struct NewSecret<'a> {
    /// Its path.
    pub path: &'a str,
    /// Its data key, wrapped.
    pub dek: &'a [u8],
    /// The master key that wrapped it.
    pub kek: &'a str,
    /// Tags, as a JSON object.
    pub tags: &'a str,
    /// Versions kept.
    pub max_versions: i64,
}

/// The secrets of a [`Store`].
#[derive(Debug)]
pub struct SecretRows<'a> {
    store: &'a Store,
}

const SECRET_COLUMNS: &str = "path, dek, kek, tags, max_versions, latest, created_at, updated_at, \
                              deleted_at, deleted_by, purge_at";
const VERSION_COLUMNS: &str = "version, enabled, not_before, expires_at, created_at, created_by";

macro_rules! secret_of {
    ($row:expr) => {{
        let r = $row;
        Ok::<_, sqlx::Error>(SecretRow {
            path: r.try_get("path")?,
            dek: r.try_get("dek")?,
            kek: r.try_get("kek")?,
            tags: r.try_get("tags")?,
            max_versions: r.try_get("max_versions")?,
            latest: r.try_get("latest")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            deleted_at: r.try_get("deleted_at")?,
            deleted_by: r.try_get("deleted_by")?,
            purge_at: r.try_get("purge_at")?,
        })
    }};
}

macro_rules! version_of {
    ($row:expr) => {{
        let r = $row;
        Ok::<_, sqlx::Error>(SecretVersion {
            version: r.try_get("version")?,
            enabled: r.try_get("enabled")?,
            not_before: r.try_get("not_before")?,
            expires_at: r.try_get("expires_at")?,
            created_at: r.try_get("created_at")?,
            created_by: r.try_get("created_by")?,
        })
    }};
}

/// A version to write.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    /// The sealed value.
    pub sealed: &'a [u8],
    /// Not readable before, when set.
    pub not_before: Option<i64>,
    /// Not readable after, when set.
    pub expires_at: Option<i64>,
    /// Who writes it.
    pub created_by: &'a str,
    /// When.
    pub now: i64,
}

/// Inserts version `$version` (`$v`: a [`NewVersion`]) of `$path`, enabled, in the transaction
/// `$tx` (a macro: each arm of `on_db!` binds for its own driver).
macro_rules! insert_version {
    ($tx:expr, $path:expr, $version:expr, $v:expr, $what:expr) => {
        sqlx::query(
            "INSERT INTO secret_versions \
             (path, version, sealed, enabled, not_before, expires_at, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($path)
        .bind($version)
        .bind($v.sealed)
        .bind(true)
        .bind($v.not_before)
        .bind($v.expires_at)
        .bind($v.now)
        .bind($v.created_by)
        .execute(&mut *$tx)
        .await
        .map_err(StoreError::query($what))?
    };
}

impl<'a> SecretRows<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// The secret at `path`, deleted or not.
    pub async fn get(&self, path: &str) -> Result<Option<SecretRow>, StoreError> {
        let what = "reading a secret";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SECRET_COLUMNS} FROM secrets WHERE path = $1"
            )))
            .bind(path)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            row.map(|r| secret_of!(r))
                .transpose()
                .map_err(StoreError::query(what))
        })
    }

    /// Creates the secret with its version 1. `Ok(false)`: a secret is at that path already
    /// (deleted or not); nothing was written.
    pub async fn create(&self, s: &NewSecret<'_>, v: &NewVersion<'_>) -> Result<bool, StoreError> {
        let what = "creating a secret";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                let created = sqlx::query(
                    "INSERT INTO secrets (path, dek, kek, tags, max_versions, latest, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
                     ON CONFLICT (path) DO NOTHING",
                )
                .bind(s.path)
                .bind(s.dek)
                .bind(s.kek)
                .bind(s.tags)
                .bind(s.max_versions)
                .bind(v.now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?
                .rows_affected()
                    == 1;
                if !created {
                    return Ok(false);
                }
                insert_version!(tx, s.path, 1_i64, v, what);
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(true)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Adds version `after + 1` to a live secret whose newest version is `after`, whose data
    /// key is still `dek` and whose tags are still `tags` (what the writer read, sealed under and
    /// was allowed for), sets its tags to `new_tags` when given, and deletes the versions beyond
    /// its `max_versions`, in one transaction. `Ok(false)`: the secret changed meanwhile (another
    /// version, a re-tag, a delete, a purge and a new secret at the path); nothing was written.
    pub async fn add_version(
        &self,
        path: &str,
        after: i64,
        seen: (&[u8], &str),
        new_tags: Option<&str>,
        v: &NewVersion<'_>,
    ) -> Result<bool, StoreError> {
        let what = "adding a secret version";
        let version = after + 1;
        let (dek, tags) = seen;
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                let moved = sqlx::query(
                    "UPDATE secrets SET latest = $3, updated_at = $4, tags = COALESCE($7, tags) \
                     WHERE path = $1 AND latest = $2 AND dek = $5 AND tags = $6 \
                     AND deleted_at IS NULL",
                )
                .bind(path)
                .bind(after)
                .bind(version)
                .bind(v.now)
                .bind(dek)
                .bind(tags)
                .bind(new_tags)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?
                .rows_affected()
                    == 1;
                if !moved {
                    return Ok(false);
                }
                insert_version!(tx, path, version, v, what);
                sqlx::query(
                    "DELETE FROM secret_versions WHERE path = $1 AND version <= $2 - \
                     (SELECT max_versions FROM secrets WHERE path = $1)",
                )
                .bind(path)
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?;
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(true)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Version `version` of the secret at `path`, with its sealed value.
    pub async fn version(
        &self,
        path: &str,
        version: i64,
    ) -> Result<Option<VersionRow>, StoreError> {
        let what = "reading a secret version";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS}, sealed FROM secret_versions \
                 WHERE path = $1 AND version = $2"
            )))
            .bind(path)
            .bind(version)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let meta = (|| version_of!(&r))().map_err(StoreError::query(what))?;
                    let sealed: Vec<u8> = r.try_get("sealed").map_err(StoreError::query(what))?;
                    Ok(Some(VersionRow { meta, sealed }))
                }
            }
        })
    }

    /// The versions kept of the secret at `path`, newest first (no values).
    pub async fn versions(&self, path: &str) -> Result<Vec<SecretVersion>, StoreError> {
        let what = "listing secret versions";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM secret_versions WHERE path = $1 \
                 ORDER BY version DESC"
            )))
            .bind(path)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|r| version_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// The secrets whose path starts with `prefix`, by path: the live ones, or the deleted
    /// ones.
    pub async fn list(&self, prefix: &str, deleted: bool) -> Result<Vec<SecretRow>, StoreError> {
        let what = "listing secrets";
        let deleted_clause = if deleted {
            "deleted_at IS NOT NULL"
        } else {
            "deleted_at IS NULL"
        };
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SECRET_COLUMNS} FROM secrets \
                 WHERE substr(path, 1, CAST($2 AS INTEGER)) = $1 AND {deleted_clause} ORDER BY path"
            )))
            .bind(prefix)
            .bind(prefix.chars().count() as i64)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|r| secret_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Sets whether version `version` of a live secret may be read. `Ok(false)`: no such
    /// version of a live secret.
    pub async fn set_enabled(
        &self,
        path: &str,
        version: i64,
        enabled: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secret_versions SET enabled = $3 WHERE path = $1 AND version = $2 \
                 AND EXISTS (SELECT 1 FROM secrets s WHERE s.path = $1 AND s.deleted_at IS NULL)",
            )
            .bind(path)
            .bind(version)
            .bind(enabled)
            .execute(pool)
            .await
            .map_err(StoreError::query("changing a secret version"))?
            .rows_affected()
        });
        if n == 1 {
            self.touched(path, now).await?;
        }
        Ok(n == 1)
    }

    /// Sets the not-before and expiry times of version `version` of a live secret.
    pub async fn set_window(
        &self,
        path: &str,
        version: i64,
        not_before: Option<i64>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let what = "changing a secret version";
        let sql = "UPDATE secret_versions SET not_before = $3, expires_at = $4 \
                   WHERE path = $1 AND version = $2 \
                   AND EXISTS (SELECT 1 FROM secrets s WHERE s.path = $1 AND s.deleted_at IS NULL)";
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(sql)
                .bind(path)
                .bind(version)
                .bind(not_before)
                .bind(expires_at)
                .execute(pool)
                .await
                .map_err(StoreError::query(what))?
                .rows_affected()
        });
        if n == 1 {
            self.touched(path, now).await?;
        }
        Ok(n == 1)
    }

    async fn touched(&self, path: &str, now: i64) -> Result<(), StoreError> {
        on_db!(self.store.db(), |pool| {
            sqlx::query("UPDATE secrets SET updated_at = $2 WHERE path = $1")
                .bind(path)
                .bind(now)
                .execute(pool)
                .await
                .map_err(StoreError::query("changing a secret"))?;
        });
        Ok(())
    }

    /// Replaces the tags of a live secret whose tags are still `was` (what the caller was
    /// allowed to change). `Ok(false)`: no such live secret, or its tags changed meanwhile.
    pub async fn set_tags(
        &self,
        path: &str,
        was: &str,
        tags: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secrets SET tags = $3, updated_at = $4 \
                 WHERE path = $1 AND tags = $2 AND deleted_at IS NULL",
            )
            .bind(path)
            .bind(was)
            .bind(tags)
            .bind(now)
            .execute(pool)
            .await
            .map_err(StoreError::query("tagging a secret"))?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Soft-deletes a live secret: unreadable, recoverable until `purge_at`. `Ok(false)`: no
    /// live secret there.
    pub async fn soft_delete(
        &self,
        path: &str,
        by: &str,
        now: i64,
        purge_at: i64,
    ) -> Result<bool, StoreError> {
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secrets SET deleted_at = $2, deleted_by = $3, purge_at = $4, \
                 updated_at = $2 WHERE path = $1 AND deleted_at IS NULL",
            )
            .bind(path)
            .bind(now)
            .bind(by)
            .bind(purge_at)
            .execute(pool)
            .await
            .map_err(StoreError::query("deleting a secret"))?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Brings a soft-deleted secret back. `Ok(false)`: no deleted secret there.
    pub async fn recover(&self, path: &str, now: i64) -> Result<bool, StoreError> {
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secrets SET deleted_at = NULL, deleted_by = NULL, purge_at = NULL, \
                 updated_at = $2 WHERE path = $1 AND deleted_at IS NOT NULL",
            )
            .bind(path)
            .bind(now)
            .execute(pool)
            .await
            .map_err(StoreError::query("recovering a secret"))?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Erases a soft-deleted secret and all its versions for good. `Ok(false)`: no deleted
    /// secret there (a live one must be deleted first).
    pub async fn purge(&self, path: &str) -> Result<bool, StoreError> {
        let what = "purging a secret";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                let n =
                    sqlx::query("DELETE FROM secrets WHERE path = $1 AND deleted_at IS NOT NULL")
                        .bind(path)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query(what))?
                        .rows_affected();
                if n == 1 {
                    sqlx::query("DELETE FROM secret_versions WHERE path = $1")
                        .bind(path)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query(what))?;
                }
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(n == 1)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Erases every deleted secret whose `purge_at` has passed. Returns how many.
    pub async fn purge_due(&self, now: i64) -> Result<u64, StoreError> {
        let what = "purging secrets";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                sqlx::query(
                    "DELETE FROM secret_versions WHERE path IN \
                     (SELECT path FROM secrets WHERE deleted_at IS NOT NULL AND purge_at <= $1)",
                )
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?;
                let n = sqlx::query(
                    "DELETE FROM secrets WHERE deleted_at IS NOT NULL AND purge_at <= $1",
                )
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?
                .rows_affected();
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(n)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Up to `limit` secrets after `after_path` (by path) whose data key is wrapped by a master
    /// key other than `kek`: what a master key rotation still has to rewrap.
    pub async fn wrapped_by_others(
        &self,
        kek: &str,
        after_path: &str,
        limit: i64,
    ) -> Result<Vec<SecretRow>, StoreError> {
        let what = "listing data keys to rewrap";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SECRET_COLUMNS} FROM secrets WHERE kek <> $1 AND path > $2 \
                 ORDER BY path LIMIT $3"
            )))
            .bind(kek)
            .bind(after_path)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|r| secret_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Replaces a secret's wrapped data key `old_dek` (wrapped by `old_kek`) with `dek`, the
    /// same key wrapped anew by `kek`: its versions stay readable throughout. `Ok(false)`: the
    /// row changed meanwhile (rewrapped by another node, or purged and created again).
    pub async fn rewrap(
        &self,
        path: &str,
        old: (&str, &[u8]),
        dek: &[u8],
        kek: &str,
    ) -> Result<bool, StoreError> {
        let (old_kek, old_dek) = old;
        let n = on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secrets SET dek = $4, kek = $5 WHERE path = $1 AND kek = $2 AND dek = $3",
            )
            .bind(path)
            .bind(old_kek)
            .bind(old_dek)
            .bind(dek)
            .bind(kek)
            .execute(pool)
            .await
            .map_err(StoreError::query("rewrapping a data key"))?
            .rows_affected()
        });
        Ok(n == 1)
    }
}
