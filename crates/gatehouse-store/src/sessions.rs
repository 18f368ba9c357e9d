//! Sealed records under a key, with an expiry and a renewal lease: what browser sessions need.
//! The values arrive sealed (gatehouse-session encrypts them); this module never sees a token.

use sqlx::Row;

use crate::{Db, Store, StoreError, on_db};

/// The session records of a [`Store`].
#[derive(Debug)]
pub struct SessionRecords<'a> {
    store: &'a Store,
}

impl<'a> SessionRecords<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Writes (or replaces) the record `kind`/`key`. A lease on it is kept.
    pub async fn put(
        &self,
        kind: &str,
        key: &str,
        expires_at: i64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "INSERT INTO session_records (kind, key, expires_at, value) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, key) DO UPDATE SET expires_at = excluded.expires_at, \
                 value = excluded.value",
            )
            .bind(kind)
            .bind(key)
            .bind(expires_at)
            .bind(value)
            .execute(pool)
            .await
            .map_err(StoreError::query("writing a session"))?;
        });
        Ok(())
    }

    /// Reads the record.
    pub async fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query("SELECT value FROM session_records WHERE kind = $1 AND key = $2")
                .bind(kind)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::query("reading a session"))?;
            row.map(|r| r.try_get::<Vec<u8>, _>("value"))
                .transpose()
                .map_err(StoreError::query("reading a session"))
        })
    }

    /// Reads and removes the record in one statement: of two concurrent calls, on any nodes,
    /// one gets it.
    pub async fn take(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(
                "DELETE FROM session_records WHERE kind = $1 AND key = $2 RETURNING value",
            )
            .bind(kind)
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query("taking a session"))?;
            row.map(|r| r.try_get::<Vec<u8>, _>("value"))
                .transpose()
                .map_err(StoreError::query("taking a session"))
        })
    }

    /// Removes the record (absent is fine).
    pub async fn delete(&self, kind: &str, key: &str) -> Result<(), StoreError> {
        on_db!(self.store.db(), |pool| {
            sqlx::query("DELETE FROM session_records WHERE kind = $1 AND key = $2")
                .bind(kind)
                .bind(key)
                .execute(pool)
                .await
                .map_err(StoreError::query("deleting a session"))?;
        });
        Ok(())
    }

    /// Removes every record that expired before `now` (seconds); how many.
    pub async fn sweep(&self, now: i64) -> Result<u64, StoreError> {
        on_db!(self.store.db(), |pool| {
            Ok(
                sqlx::query("DELETE FROM session_records WHERE expires_at < $1")
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(StoreError::query("sweeping sessions"))?
                    .rows_affected(),
            )
        })
    }

    /// Takes the renewal lease on the record for `holder` for `lease_ms` milliseconds, unless
    /// another holder's has not run out. One conditional update, so of two nodes asking at once
    /// exactly one gets it; the time is the database's, so nodes whose clocks disagree still
    /// agree on whose lease it is. `false`: held by another, or no record.
    pub async fn try_lease(
        &self,
        kind: &str,
        key: &str,
        holder: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        // The same conditional update on either backend, with the database's own time in
        // milliseconds spelled in its dialect.
        macro_rules! lease_sql {
            ($now:literal) => {
                concat!(
                    "UPDATE session_records SET lease_holder = $3, lease_until = ",
                    $now,
                    " + $4 WHERE kind = $1 AND key = $2 \
                     AND (lease_holder IS NULL OR lease_holder = $3 OR lease_until < ",
                    $now,
                    ")"
                )
            };
        }
        let sql = match self.store.db() {
            Db::Sqlite(_) => lease_sql!("CAST(unixepoch('subsec') * 1000 AS INTEGER)"),
            Db::Postgres(_) => lease_sql!("(extract(epoch FROM clock_timestamp()) * 1000)::bigint"),
        };
        let done = on_db!(self.store.db(), |pool| {
            sqlx::query(sql)
                .bind(kind)
                .bind(key)
                .bind(holder)
                .bind(lease_ms)
                .execute(pool)
                .await
                .map_err(StoreError::query("leasing a session"))?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Replaces the record's value only while `holder` has its lease: a renewal finishing after
    /// the session was signed out (taken) on another node must not bring it back. `false`: the
    /// lease or the record is gone, nothing was written.
    pub async fn update_leased(
        &self,
        kind: &str,
        key: &str,
        holder: &str,
        expires_at: i64,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        on_db!(self.store.db(), |pool| {
            let done = sqlx::query(
                "UPDATE session_records SET expires_at = $4, value = $5 \
                 WHERE kind = $1 AND key = $2 AND lease_holder = $3",
            )
            .bind(kind)
            .bind(key)
            .bind(holder)
            .bind(expires_at)
            .bind(value)
            .execute(pool)
            .await
            .map_err(StoreError::query("renewing a session"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Gives the lease back, if `holder` still has it.
    pub async fn release(&self, kind: &str, key: &str, holder: &str) -> Result<(), StoreError> {
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE session_records SET lease_holder = NULL, lease_until = NULL \
                 WHERE kind = $1 AND key = $2 AND lease_holder = $3",
            )
            .bind(kind)
            .bind(key)
            .bind(holder)
            .execute(pool)
            .await
            .map_err(StoreError::query("releasing a session lease"))?;
        });
        Ok(())
    }
}
