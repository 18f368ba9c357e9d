//! The revocation log and the feed that replays it into each node's in-memory set.
//!
//! Every revocation made or lifted is one appended row with an increasing sequence number. A node
//! loads the whole log at start, then applies what follows its last sequence number when
//! PostgreSQL notifies it (`LISTEN gatehouse_revocations`, sent in the writer's transaction) and,
//! as the fallback that needs nothing but the table, on a poll. Sequence numbers become visible
//! in order: SQLite has one writer at a time, and PostgreSQL writers take a self-conflicting lock
//! on the log until they commit, so a reader never sees seq 8 before seq 7 and skips it.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Clock, RevocationChange, RevocationKind, Revocations};
use sqlx::Row;
use sqlx::postgres::PgListener;

use crate::{Db, Store, StoreError, on_db};

/// The PostgreSQL channel a revocation is announced on (the payload is its sequence number).
pub(crate) const CHANNEL: &str = "gatehouse_revocations";

/// Rows read per query when catching up.
const PAGE: i64 = 1000;

/// A revocation to record.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    /// What it names.
    pub kind: RevocationKind,
    /// The jti, session id, serial, subject or service account.
    pub value: String,
    /// Why (free text for the record; never a secret).
    pub reason: String,
    /// Who revoked it (an operator, `cli:<user>`, an admin API caller).
    pub actor: String,
    /// When it lapses (the credential's own expiry), in seconds since the epoch; `None`: never.
    pub until: Option<i64>,
}

/// A revocation in force, as `gatehouse revoke list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// The change that made it.
    pub change: RevocationChange,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When, in seconds since the epoch.
    pub at: i64,
}

/// The revocation log of a [`Store`].
#[derive(Debug)]
pub struct RevocationLog<'a> {
    store: &'a Store,
}

/// A log entry from either backend's row (a macro: each arm of `on_db!` decodes its own row
/// type, as `env_of!` does for environments).
macro_rules! change_of {
    ($row:expr) => {{
        let r = $row;
        let kind: String = r.try_get("kind")?;
        let kind = RevocationKind::parse(&kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown revocation kind {kind:?} in the log").into())
        })?;
        Ok::<_, sqlx::Error>(RevocationChange {
            seq: r.try_get("seq")?,
            lift: r.try_get("lift")?,
            kind,
            value: r.try_get("value")?,
            until: r.try_get("until")?,
        })
    }};
}

const INSERT: &str = "INSERT INTO revocation_log (lift, kind, value, reason, actor, at, until) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq";

impl<'a> RevocationLog<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Records `r` and returns the change every node will apply. Revoking what is already
    /// revoked records it again with the new reason; its lapse time is the later of the two
    /// (never lapsing wins): a revocation is ended only by lifting it, never shortened by
    /// another.
    pub async fn revoke(&self, r: NewRevocation, now: i64) -> Result<RevocationChange, StoreError> {
        r.kind.check_value(&r.value).map_err(StoreError::Invalid)?;
        let (seq, until) = self
            .append(false, r.kind, &r.value, &r.reason, &r.actor, now, r.until)
            .await?;
        Ok(RevocationChange {
            seq,
            lift: false,
            kind: r.kind,
            value: r.value,
            until,
        })
    }

    /// Lifts the revocation of `kind` `value`. `Ok(None)`: none was in force.
    pub async fn lift(
        &self,
        kind: RevocationKind,
        value: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<RevocationChange>, StoreError> {
        if kind == RevocationKind::Environment || kind == RevocationKind::Job {
            // An ended environment or job stays ended: lifting would bring back every credential
            // that was bound to it.
            return Err(StoreError::Invalid(format!(
                "an ended {kind} cannot be resumed: its credentials stay revoked"
            )));
        }
        let in_force = self
            .in_force(now)
            .await?
            .into_iter()
            .any(|r| r.change.kind == kind && r.change.value == value);
        if !in_force {
            return Ok(None);
        }
        let (seq, _) = self
            .append(true, kind, value, "lifted", actor, now, None)
            .await?;
        Ok(Some(RevocationChange {
            seq,
            lift: true,
            kind,
            value: value.to_owned(),
            until: None,
        }))
    }

    /// Appends one entry; returns its sequence number and, for a revocation, its lapse time
    /// merged with the one in force (see [`Self::revoke`]). Read and insert are one
    /// transaction that holds the log's write lock, so two revocations of one credential
    /// cannot both miss each other.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        lift: bool,
        kind: RevocationKind,
        value: &str,
        reason: &str,
        actor: &str,
        at: i64,
        until: Option<i64>,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let what = "recording a revocation";
        const LATEST: &str = "SELECT lift, until FROM revocation_log \
                              WHERE kind = $1 AND value = $2 ORDER BY seq DESC LIMIT 1";
        // The lapse time, merged with what is in force; then the insert (each arm binds for its
        // own driver).
        macro_rules! write {
            ($tx:expr) => {{
                let mut until = until;
                if !lift {
                    let latest = sqlx::query(LATEST)
                        .bind(kind.as_str())
                        .bind(value)
                        .fetch_optional(&mut *$tx)
                        .await
                        .map_err(StoreError::query(what))?;
                    if let Some(row) = latest {
                        let was_lift: bool =
                            row.try_get("lift").map_err(StoreError::query(what))?;
                        let was: Option<i64> =
                            row.try_get("until").map_err(StoreError::query(what))?;
                        if !was_lift && was.is_none_or(|u| u >= at) {
                            until = match (was, until) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                _ => None,
                            };
                        }
                    }
                }
                let row = sqlx::query(INSERT)
                    .bind(lift)
                    .bind(kind.as_str())
                    .bind(value)
                    .bind(reason)
                    .bind(actor)
                    .bind(at)
                    .bind(until)
                    .fetch_one(&mut *$tx)
                    .await
                    .map_err(StoreError::query(what))?;
                let seq: i64 = row.try_get("seq").map_err(StoreError::query(what))?;
                (seq, until)
            }};
        }
        match self.store.db() {
            Db::Sqlite(pool) => {
                // BEGIN IMMEDIATE takes SQLite's single write lock before the read: sequence
                // numbers in commit order, and no other writer between read and insert.
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(StoreError::query(what))?;
                let out = write!(tx);
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(out)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(StoreError::query(what))?;
                // SHARE ROW EXCLUSIVE conflicts with itself and not with readers: writers queue
                // and commit in the order they took their sequence numbers.
                sqlx::query("LOCK TABLE revocation_log IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?;
                let out = write!(tx);
                // Delivered to listeners when (and only if) the transaction commits.
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(out.0.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?;
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(out)
            }
        }
    }

    /// The changes after `seq`, in order, at most `limit`.
    pub async fn since(&self, seq: i64, limit: i64) -> Result<Vec<RevocationChange>, StoreError> {
        let what = "reading the revocation log";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(
                "SELECT seq, lift, kind, value, until FROM revocation_log \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(seq)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|r| change_of!(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Every revocation in force at `now`: the latest change of each kind and value, when it is
    /// a revocation that has not lapsed.
    pub async fn in_force(&self, now: i64) -> Result<Vec<RevocationRecord>, StoreError> {
        let what = "listing revocations";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(
                "SELECT l.seq, l.lift, l.kind, l.value, l.until, l.reason, l.actor, l.at \
                 FROM revocation_log l \
                 WHERE l.seq = (SELECT max(m.seq) FROM revocation_log m \
                                WHERE m.kind = l.kind AND m.value = l.value) \
                   AND NOT l.lift AND (l.until IS NULL OR l.until >= $1) \
                 ORDER BY l.seq",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.iter()
                .map(|row| {
                    Ok(RevocationRecord {
                        change: change_of!(row)?,
                        reason: row.try_get("reason")?,
                        actor: row.try_get("actor")?,
                        at: row.try_get("at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Deletes what no node needs to replay: every entry of a kind and value whose latest entry
    /// is a revocation that lapsed more than a day before `now` (its credentials are long
    /// expired) or a lift older than a day. Always a key's entries together, judged by its
    /// latest: deleting only a lapsed newest entry would bring an older one back. Never the
    /// log's newest entry (nodes check their last entry is still there). Returns how many.
    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        on_db!(self.store.db(), |pool| {
            Ok(sqlx::query(
                "DELETE FROM revocation_log \
                 WHERE seq < (SELECT max(seq) FROM revocation_log) \
                   AND EXISTS (SELECT 1 FROM revocation_log l \
                               WHERE l.kind = revocation_log.kind \
                                 AND l.value = revocation_log.value \
                                 AND l.seq = (SELECT max(m.seq) FROM revocation_log m \
                                              WHERE m.kind = l.kind AND m.value = l.value) \
                                 AND ((NOT l.lift AND l.until IS NOT NULL AND l.until < $1) \
                                      OR (l.lift AND l.at < $1)))",
            )
            .bind(now.saturating_sub(86_400))
            .execute(pool)
            .await
            .map_err(StoreError::query("pruning the revocation log"))?
            .rows_affected())
        })
    }

    /// The newest sequence number in the log (0: empty).
    pub async fn head(&self) -> Result<i64, StoreError> {
        let what = "reading the revocation log's head";
        on_db!(self.store.db(), |pool| {
            let row = sqlx::query("SELECT coalesce(max(seq), 0) AS head FROM revocation_log")
                .fetch_one(pool)
                .await
                .map_err(StoreError::query(what))?;
            row.try_get::<i64, _>("head")
                .map_err(StoreError::query(what))
        })
    }

    /// Applies to `set` every change after its sequence number. Returns how many were applied.
    ///
    /// The read starts at the last change `set` applied, which must still be there as the node
    /// saw it. When it is not, the log is not the one this node followed (the store was restored
    /// from a backup, or replaced, and perhaps written to since, reusing sequence numbers), and
    /// it is applied again from the start: otherwise the entries up to the node's position would
    /// be skipped as already seen. (Pruning can remove that entry too, in the moment between a
    /// newer entry's commit and this node reading it; the reload is then merely redundant.)
    pub async fn catch_up(&self, set: &Revocations) -> Result<usize, StoreError> {
        let mut n = 0;
        if let Some(last) = set.last_applied() {
            let page = self.since(last.seq - 1, PAGE).await?;
            if page.first() != Some(&last) {
                tracing::warn!(
                    node_seq = last.seq,
                    "the revocation log is not the one this node followed (restored from a \
                     backup?): reloading it"
                );
                return self.reload(set).await;
            }
            n += page.len() - 1;
            set.apply(&page);
            if (page.len() as i64) < PAGE {
                return Ok(n);
            }
        }
        loop {
            let page = self.since(set.seq(), PAGE).await?;
            n += page.len();
            set.apply(&page);
            if (page.len() as i64) < PAGE {
                return Ok(n);
            }
        }
    }

    /// Replaces `set` with the whole log.
    async fn reload(&self, set: &Revocations) -> Result<usize, StoreError> {
        let mut all = Vec::new();
        loop {
            let page = self
                .since(all.last().map_or(0, |c: &RevocationChange| c.seq), PAGE)
                .await?;
            let done = (page.len() as i64) < PAGE;
            all.extend(page);
            if done {
                break;
            }
        }
        set.replace(&all);
        Ok(all.len())
    }
}

/// Keeps a node's [`Revocations`] in step with the store: a PostgreSQL notification wakes it at
/// once; a poll every `poll` catches what a dropped listener missed, and is all SQLite needs (a
/// `gatehouse revoke` in another process writes the same file).
#[derive(Debug)]
pub struct RevocationFeed {
    store: Store,
    set: Arc<Revocations>,
    clock: Arc<dyn Clock>,
    poll: Duration,
}

impl RevocationFeed {
    /// A feed into `set`; call [`Self::load`] before serving, then [`Self::run`].
    pub fn new(store: Store, set: Arc<Revocations>, clock: Arc<dyn Clock>, poll: Duration) -> Self {
        Self {
            store,
            set,
            clock,
            poll: poll.max(Duration::from_millis(10)),
        }
    }

    /// Reads the whole log: a node must not serve before it knows what is revoked.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let n = self.store.revocations().catch_up(&self.set).await?;
        let now = self.clock.now().as_secs();
        self.set.mark_synced(now);
        self.set.prune(now);
        Ok(n)
    }

    /// Follows the log until `shutdown` resolves. Errors are logged and retried on the next
    /// poll: while the store is unreachable the node keeps refusing what it knew was revoked.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut listener = None;
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut pruned_at = tokio::time::Instant::now();
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let woke_by_notice = match &mut listener {
                Some(l) => tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tick.tick() => false,
                    n = l.recv() => match n {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation notifications lost; polling");
                            listener = None;
                            false
                        }
                    },
                },
                None => tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tick.tick() => false,
                },
            };
            match self.store.revocations().catch_up(&self.set).await {
                Ok(n) => {
                    self.set.mark_synced(self.clock.now().as_secs());
                    if failing {
                        tracing::info!("revocation log reachable again");
                        failing = false;
                    }
                    if n > 0 {
                        tracing::debug!(
                            applied = n,
                            woke_by_notice,
                            seq = self.set.seq(),
                            "revocations applied"
                        );
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "cannot read the revocation log; known revocations stay in force");
                    }
                    failing = true;
                }
            }
            if !woke_by_notice {
                self.set.prune(self.clock.now().as_secs());
            }
            // Lapsed entries leave the database too, once an hour (any node may; it is idempotent).
            if pruned_at.elapsed() >= std::time::Duration::from_secs(3600) {
                pruned_at = tokio::time::Instant::now();
                match self
                    .store
                    .revocations()
                    .prune(self.clock.now().as_secs())
                    .await
                {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "lapsed revocations pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning the revocation log failed"),
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let Db::Postgres(pool) = self.store.db() else {
            return None;
        };
        let mut l = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for revocations; polling");
                return None;
            }
        };
        match l.listen(CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for revocations; polling");
                None
            }
        }
    }
}
