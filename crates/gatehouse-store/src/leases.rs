//! Two records the secrets broker keeps beside the secrets:
//!
//! - **Leases**: one per read of a value, naming who read which version of which secret, for
//!   which job, until when. A lease never holds the value. Revoking one records that its holder
//!   is done with the value (the job ended, `secret exec`'s child exited) or must be treated as
//!   done; revoking is final.
//! - **The push index**: every ref update of a push Gatehouse allowed, written once the push's
//!   audit record was durable and before the push reached the forge. A provenance check asks it
//!   whether a job's commit reached the job's ref that way.

use sqlx::Row;

use crate::{Store, StoreError, on_db};

/// A lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `lease_` and 26 base32 characters.
    pub id: String,
    /// The secret's path.
    pub path: String,
    /// The version read.
    pub version: i64,
    /// The reader: `issuer subject`.
    pub holder: String,
    /// The reader's credential id, when it has one.
    pub token_id: Option<String>,
    /// The reader's CI job, when it is one.
    pub job_id: Option<String>,
    /// When it was read, in seconds since the epoch.
    pub issued_at: i64,
    /// When the lease lapses by itself.
    pub expires_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

impl Lease {
    /// Whether it is neither revoked nor lapsed at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A lease to record.
#[derive(Debug, Clone)]
pub struct NewLease<'a> {
    /// Its id.
    pub id: &'a str,
    /// The secret's path.
    pub path: &'a str,
    /// The version read.
    pub version: i64,
    /// The reader.
    pub holder: &'a str,
    /// The reader's credential id.
    pub token_id: Option<&'a str>,
    /// The reader's job.
    pub job_id: Option<&'a str>,
    /// Now.
    pub issued_at: i64,
    /// When it lapses.
    pub expires_at: i64,
}

/// Which leases to list. Every field given narrows the list.
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter<'a> {
    /// Of this job.
    pub job_id: Option<&'a str>,
    /// On secrets under this prefix.
    pub prefix: Option<&'a str>,
    /// Held by this reader.
    pub holder: Option<&'a str>,
    /// Only those live at this time.
    pub live_at: Option<i64>,
}

const LEASE_COLUMNS: &str = "id, path, version, holder, token_id, job_id, issued_at, expires_at, \
                             revoked_at, revoked_by, reason";

/// The most leases one listing returns.
pub const LEASE_LIST_MAX: i64 = 1000;

macro_rules! lease_of {
    ($row:expr) => {{
        let r = $row;
        Ok::<_, sqlx::Error>(Lease {
            id: r.try_get("id")?,
            path: r.try_get("path")?,
            version: r.try_get("version")?,
            holder: r.try_get("holder")?,
            token_id: r.try_get("token_id")?,
            job_id: r.try_get("job_id")?,
            issued_at: r.try_get("issued_at")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            revoked_by: r.try_get("revoked_by")?,
            reason: r.try_get("reason")?,
        })
    }};
}

/// The leases of a [`Store`].
#[derive(Debug)]
pub struct Leases<'a> {
    store: &'a Store,
}

impl<'a> Leases<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Records a lease (durably, before the value it covers is handed out).
    pub async fn create(&self, l: &NewLease<'_>) -> Result<(), StoreError> {
        let what = "recording a lease";
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "INSERT INTO secret_leases (id, path, version, holder, token_id, job_id, \
                 issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(l.id)
            .bind(l.path)
            .bind(l.version)
            .bind(l.holder)
            .bind(l.token_id)
            .bind(l.job_id)
            .bind(l.issued_at)
            .bind(l.expires_at)
            .execute(pool)
            .await
            .map(drop)
            .map_err(StoreError::query(what))
        })
    }

    /// The lease `id`, revoked or not.
    pub async fn get(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let what = "reading a lease";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LEASE_COLUMNS} FROM secret_leases WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            row.map(|r| lease_of!(r))
                .transpose()
                .map_err(StoreError::query(what))
        })
    }

    /// Revokes the lease `id` unless it is revoked already. `Ok(true)`: it is revoked now.
    pub async fn revoke(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let what = "revoking a lease";
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secret_leases SET revoked_at = $1, revoked_by = $2, reason = $3 \
                 WHERE id = $4 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(by)
            .bind(reason)
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(StoreError::query(what))
        })
    }

    /// Revokes every lease of the job `job_id` not revoked yet; how many.
    pub async fn revoke_job(
        &self,
        job_id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let what = "revoking a job's leases";
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE secret_leases SET revoked_at = $1, revoked_by = $2, reason = $3 \
                 WHERE job_id = $4 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(by)
            .bind(reason)
            .bind(job_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(StoreError::query(what))
        })
    }

    /// The leases `f` selects, newest first, at most [`LEASE_LIST_MAX`].
    pub async fn list(&self, f: &LeaseFilter<'_>) -> Result<Vec<Lease>, StoreError> {
        let what = "listing leases";
        // Every condition is always present and switched off by a NULL parameter, so the SQL
        // text is fixed and every value is bound. A prefix is compared as a substring (SQLite's
        // LIKE ignores case; PostgreSQL's does not).
        let prefix = f.prefix.filter(|p| !p.is_empty());
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LEASE_COLUMNS} FROM secret_leases \
                 WHERE ($1 IS NULL OR job_id = $1) \
                   AND ($2 IS NULL OR substr(path, 1, CAST($5 AS INTEGER)) = $2) \
                   AND ($3 IS NULL OR holder = $3) \
                   AND ($4 IS NULL OR (revoked_at IS NULL AND expires_at > $4)) \
                 ORDER BY issued_at DESC, id LIMIT {LEASE_LIST_MAX}"
            )))
            .bind(f.job_id)
            .bind(prefix)
            .bind(f.holder)
            .bind(f.live_at)
            .bind(prefix.map_or(0, |p| p.chars().count() as i64))
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.into_iter()
                .map(|r| lease_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Deletes the leases that lapsed or were revoked before `before`; how many.
    pub async fn prune(&self, before: i64) -> Result<u64, StoreError> {
        let what = "pruning leases";
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "DELETE FROM secret_leases WHERE expires_at < $1 \
                 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
            )
            .bind(before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(StoreError::query(what))
        })
    }
}

/// One ref update of an allowed push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPush {
    /// `owner/name`, as the gateway names the repository (lower-case on a case-insensitive
    /// forge).
    pub repo: String,
    /// The full ref name.
    pub git_ref: String,
    /// The new object id, lower-case hex.
    pub commit: String,
    /// Which gateway's audit log holds the record.
    pub node: String,
    /// The audit record (`forwarding`) that announced it, in that log.
    pub audit_seq: i64,
    /// When.
    pub pushed_at: i64,
    /// Who pushed (user name).
    pub pushed_by: String,
    /// When the forge's report said `ok` for this ref; `None` until then (and for ever, when it
    /// refused the ref, or its report never came).
    pub confirmed_at: Option<i64>,
    /// The object id the ref had before (`None` in records from before it was kept).
    pub old: Option<String>,
    /// The pusher's issuer and subject.
    pub pusher_issuer: Option<String>,
    /// The pusher's subject at that issuer.
    pub pusher_subject: Option<String>,
}

const PUSH_COLUMNS: &str = "repo, ref, commit_id, node, audit_seq, pushed_at, pushed_by, \
                            confirmed_at, old_id, pusher_issuer, pusher_subject";

macro_rules! push_of {
    ($row:expr) => {{
        let r = $row;
        Ok::<_, sqlx::Error>(IndexedPush {
            repo: r.try_get("repo")?,
            git_ref: r.try_get("ref")?,
            commit: r.try_get("commit_id")?,
            node: r.try_get("node")?,
            audit_seq: r.try_get("audit_seq")?,
            pushed_at: r.try_get("pushed_at")?,
            pushed_by: r.try_get("pushed_by")?,
            confirmed_at: r.try_get("confirmed_at")?,
            old: r.try_get("old_id")?,
            pusher_issuer: r.try_get("pusher_issuer")?,
            pusher_subject: r.try_get("pusher_subject")?,
        })
    }};
}

/// The push index of a [`Store`].
#[derive(Debug)]
pub struct PushIndex<'a> {
    store: &'a Store,
}

impl<'a> PushIndex<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Records the ref updates of one push, unconfirmed, in one transaction (before the push
    /// is forwarded).
    pub async fn record(&self, pushes: &[IndexedPush]) -> Result<(), StoreError> {
        let what = "indexing a push";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                for p in pushes {
                    sqlx::query(
                        "INSERT INTO push_index (repo, ref, commit_id, node, audit_seq, \
                         pushed_at, pushed_by, old_id, pusher_issuer, pusher_subject) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (repo, ref, commit_id, node, audit_seq) DO NOTHING",
                    )
                    .bind(&p.repo)
                    .bind(&p.git_ref)
                    .bind(p.commit.to_ascii_lowercase())
                    .bind(&p.node)
                    .bind(p.audit_seq)
                    .bind(p.pushed_at)
                    .bind(&p.pushed_by)
                    .bind(p.old.as_ref().map(|o| o.to_ascii_lowercase()))
                    .bind(&p.pusher_issuer)
                    .bind(&p.pusher_subject)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?;
                }
                tx.commit().await.map_err(StoreError::query(what))
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Confirms the refs `refs` of the push `node`/`audit_seq`: the forge's report said `ok`.
    /// Returns how many rows were confirmed.
    pub async fn confirm(
        &self,
        node: &str,
        audit_seq: i64,
        refs: &[String],
        now: i64,
    ) -> Result<u64, StoreError> {
        let what = "confirming a push";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                let mut n = 0;
                for r in refs {
                    n += sqlx::query(
                        "UPDATE push_index SET confirmed_at = $1 WHERE node = $2 \
                         AND audit_seq = $3 AND ref = $4 AND confirmed_at IS NULL",
                    )
                    .bind(now)
                    .bind(node)
                    .bind(audit_seq)
                    .bind(r)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?
                    .rows_affected();
                }
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(n)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// The newest push through Gatehouse that moved `git_ref` of `repo` from `old` to `new`
    /// (a push event's `before` and `after`), confirmed ones first; `None` when no push
    /// Gatehouse allowed made that update.
    pub async fn find_update(
        &self,
        repo: &str,
        git_ref: &str,
        old: &str,
        new: &str,
    ) -> Result<Option<IndexedPush>, StoreError> {
        let what = "reading the push index";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PUSH_COLUMNS} FROM push_index \
                 WHERE repo = $1 AND ref = $2 AND commit_id = $3 AND old_id = $4 \
                 ORDER BY (confirmed_at IS NULL), pushed_at DESC LIMIT 1"
            )))
            .bind(repo)
            .bind(git_ref)
            .bind(new.to_ascii_lowercase())
            .bind(old.to_ascii_lowercase())
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            row.map(|r| push_of!(r))
                .transpose()
                .map_err(StoreError::query(what))
        })
    }

    /// The newest push that moved `git_ref` of `repo` to `commit` through Gatehouse and that the
    /// forge confirmed; else the newest one not (yet) confirmed; else `None`.
    pub async fn find(
        &self,
        repo: &str,
        git_ref: &str,
        commit: &str,
    ) -> Result<Option<IndexedPush>, StoreError> {
        let what = "reading the push index";
        // The index also holds deletions (the zero id): no job runs the zero id.
        if commit.bytes().all(|b| b == b'0') {
            return Ok(None);
        }
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PUSH_COLUMNS} FROM push_index \
                 WHERE repo = $1 AND ref = $2 AND commit_id = $3 \
                 ORDER BY (confirmed_at IS NULL), pushed_at DESC LIMIT 1"
            )))
            .bind(repo)
            .bind(git_ref)
            .bind(commit.to_ascii_lowercase())
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query(what))?;
            row.map(|r| push_of!(r))
                .transpose()
                .map_err(StoreError::query(what))
        })
    }

    /// The confirmed pushes of `git_ref` of `repo`, newest first, at most `limit` (an annotated
    /// tag's ref names the tag object, which the caller peels).
    pub async fn confirmed_for_ref(
        &self,
        repo: &str,
        git_ref: &str,
        limit: i64,
    ) -> Result<Vec<IndexedPush>, StoreError> {
        let what = "reading the push index";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PUSH_COLUMNS} FROM push_index \
                 WHERE repo = $1 AND ref = $2 AND confirmed_at IS NOT NULL \
                   AND commit_id <> $4 AND commit_id <> $5 \
                 ORDER BY pushed_at DESC LIMIT $3"
            )))
            .bind(repo)
            .bind(git_ref)
            .bind(limit)
            .bind("0".repeat(40))
            .bind("0".repeat(64))
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.into_iter()
                .map(|r| push_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Deletes what was pushed before `before`; how many.
    pub async fn prune(&self, before: i64) -> Result<u64, StoreError> {
        let what = "pruning the push index";
        on_db!(self.store.db(), |pool| {
            sqlx::query("DELETE FROM push_index WHERE pushed_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(StoreError::query(what))
        })
    }
}
