//! The webhook relay's records: each delivery a hook accepted (the exact body and the event
//! headers, committed before the sender is answered), one row per target saying where relaying
//! it stands, and the delivery ids seen within the replay window.
//!
//! Workers on any node claim due rows for a while (`claim`, `claimed_until`), send, then finish
//! the row under the same claim: a row is sent by one worker at a time, and a row a target
//! answered 2xx to is never claimed again unless an operator replays it.

use sqlx::Row;

use crate::{Db, Store, StoreError, on_db};

/// A delivery to keep.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// Gatehouse's id for it (`whd_…`): the idempotency id every target sees.
    pub id: &'a str,
    /// The hook that accepted it.
    pub hook: &'a str,
    /// The sender's delivery id.
    pub source_id: &'a str,
    /// How it was signed.
    pub scheme: &'a str,
    /// Its event.
    pub event: &'a str,
    /// The repository the payload names.
    pub repo: Option<&'a str>,
    /// The account the payload names as the sender.
    pub sender: Option<&'a str>,
    /// The event headers to relay, one `Name: value` per line.
    pub headers: &'a str,
    /// The exact body.
    pub body: &'a [u8],
    /// What Gatehouse adds (JSON).
    pub annotation: Option<&'a str>,
    /// Now, seconds since the epoch.
    pub received_at: i64,
    /// Another key that marks a replay besides `source_id` (a digest of the signed body, when
    /// the sender's id is not signed).
    pub also_seen: Option<&'a str>,
}

/// A target a new delivery goes to.
#[derive(Debug, Clone)]
pub struct NewTarget<'a> {
    /// The target's name.
    pub name: &'a str,
    /// Whether the target takes one repository's deliveries in order: `Some(repository)`.
    pub order_key: Option<&'a str>,
    /// When relaying gives up.
    pub give_up_at: i64,
}

/// What [`HookDeliveries::accept`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Kept, with its accept-order number.
    New(i64),
    /// A delivery with this id was seen within the replay window: nothing was kept.
    Duplicate,
}

/// A delivery as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// Its accept-order number.
    pub seq: i64,
    /// Gatehouse's id.
    pub id: String,
    /// The hook.
    pub hook: String,
    /// The sender's id.
    pub source_id: String,
    /// How it was signed.
    pub scheme: String,
    /// Its event.
    pub event: String,
    /// The repository.
    pub repo: Option<String>,
    /// The sender.
    pub sender: Option<String>,
    /// The event headers, one `Name: value` per line.
    pub headers: String,
    /// The exact body.
    pub body: Vec<u8>,
    /// What Gatehouse adds (JSON).
    pub annotation: Option<String>,
    /// When it was accepted.
    pub received_at: i64,
}

/// A row a worker claimed: send the delivery to the target, then [`HookDeliveries::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The delivery.
    pub delivery_seq: i64,
    /// The target.
    pub target: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// When relaying gives up.
    pub give_up_at: i64,
    /// The claim, to finish under.
    pub claim: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The target answered 2xx.
    Delivered {
        /// Its status.
        status: i64,
    },
    /// It did not, and another attempt comes at `next_at`.
    Retry {
        /// Its status, if it answered.
        status: Option<i64>,
        /// What went wrong.
        error: String,
        /// Not before.
        next_at: i64,
    },
    /// It did not, and relaying gives up: the row goes to the dead letters.
    Dead {
        /// Its status, if it answered.
        status: Option<i64>,
        /// What went wrong.
        error: String,
    },
}

/// A delivery's state at one target, for `gatehouse hooks status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// Gatehouse's delivery id.
    pub delivery: String,
    /// The hook.
    pub hook: String,
    /// The sender's delivery id.
    pub source_id: String,
    /// The event.
    pub event: String,
    /// The repository.
    pub repo: Option<String>,
    /// When it was accepted.
    pub received_at: i64,
    /// The target.
    pub target: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// The next attempt, when pending.
    pub next_at: i64,
    /// The target's last status.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the target took it.
    pub delivered_at: Option<i64>,
}

/// Which rows to list or requeue. Every field given narrows the selection.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter<'a> {
    /// Of this hook.
    pub hook: Option<&'a str>,
    /// To this target.
    pub target: Option<&'a str>,
    /// In this state.
    pub state: Option<&'a str>,
    /// Of this delivery (Gatehouse's id).
    pub delivery: Option<&'a str>,
}

/// The most rows one listing returns.
pub const ATTEMPT_LIST_MAX: i64 = 500;

/// The relay's records in a [`Store`].
#[derive(Debug)]
pub struct HookDeliveries<'a> {
    store: &'a Store,
}

impl<'a> HookDeliveries<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Keeps a delivery and one pending row per target, in one transaction, unless its
    /// `source_id` (or `also_seen`) reached this hook after `seen_after` (a replay). Once this
    /// returns [`Accepted::New`], the delivery is durable.
    pub async fn accept(
        &self,
        d: &NewDelivery<'_>,
        targets: &[NewTarget<'_>],
        seen_after: i64,
    ) -> Result<Accepted, StoreError> {
        let what = "accepting a webhook delivery";
        let seen: Vec<&str> = std::iter::once(d.source_id).chain(d.also_seen).collect();
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                for key in &seen {
                    // A key seen before the window is new again.
                    let fresh = sqlx::query(
                        "INSERT INTO hook_seen (hook, source_id, seen_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (hook, source_id) DO UPDATE SET seen_at = excluded.seen_at \
                         WHERE hook_seen.seen_at <= $4",
                    )
                    .bind(d.hook)
                    .bind(*key)
                    .bind(d.received_at)
                    .bind(seen_after)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?
                    .rows_affected()
                        == 1;
                    if !fresh {
                        tx.rollback().await.map_err(StoreError::query(what))?;
                        return Ok(Accepted::Duplicate);
                    }
                }
                let seq: i64 = sqlx::query(
                    "INSERT INTO hook_deliveries (id, hook, source_id, scheme, event, repo, \
                     sender, headers, body, annotation, received_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING seq",
                )
                .bind(d.id)
                .bind(d.hook)
                .bind(d.source_id)
                .bind(d.scheme)
                .bind(d.event)
                .bind(d.repo)
                .bind(d.sender)
                .bind(d.headers)
                .bind(d.body)
                .bind(d.annotation)
                .bind(d.received_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::query(what))?
                .try_get("seq")
                .map_err(StoreError::query(what))?;
                for t in targets {
                    sqlx::query(
                        "INSERT INTO hook_attempts (delivery_seq, target, repo_key, state, \
                         attempts, next_at, give_up_at, updated_at) \
                         VALUES ($1, $2, $3, 'pending', 0, $4, $5, $4)",
                    )
                    .bind(seq)
                    .bind(t.name)
                    .bind(t.order_key)
                    .bind(d.received_at)
                    .bind(t.give_up_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?;
                }
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(Accepted::New(seq))
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }

    /// Claims up to `limit` rows of `target` that are due at `now`, for `worker`, until `until`.
    /// A row is due when pending, not before its next attempt, and not claimed by a worker whose
    /// claim still runs; for an ordered target, also when no earlier delivery of its repository
    /// is still pending there.
    pub async fn claim_due(
        &self,
        target: &str,
        worker: &str,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let what = "claiming webhook deliveries";
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let claim = format!("{worker} {}", uuid::Uuid::new_v4().simple());
        // The conditions are repeated outside the subquery: PostgreSQL re-checks those (and only
        // those) on a row another worker changed while this one waited for it.
        macro_rules! sql {
            ($lock:literal) => {
                concat!(
                    "UPDATE hook_attempts SET claim = $1, claimed_until = $2, updated_at = $3 \
                     WHERE target = $4 AND state = 'pending' AND next_at <= $3 \
                       AND (claimed_until IS NULL OR claimed_until < $3) \
                       AND delivery_seq IN ( \
                         SELECT a.delivery_seq FROM hook_attempts a \
                         WHERE a.target = $4 AND a.state = 'pending' AND a.next_at <= $3 \
                           AND (a.claimed_until IS NULL OR a.claimed_until < $3) \
                           AND (a.repo_key IS NULL OR NOT EXISTS ( \
                             SELECT 1 FROM hook_attempts b WHERE b.target = a.target \
                               AND b.repo_key = a.repo_key AND b.state = 'pending' \
                               AND b.delivery_seq < a.delivery_seq)) \
                         ORDER BY a.delivery_seq LIMIT $5 ",
                    $lock,
                    ") RETURNING delivery_seq, target, attempts, give_up_at, claim"
                )
            };
        }
        macro_rules! run {
            ($pool:expr, $sql:expr) => {{
                let rows = sqlx::query($sql)
                    .bind(&claim)
                    .bind(until)
                    .bind(now)
                    .bind(target)
                    .bind(limit)
                    .fetch_all($pool)
                    .await
                    .map_err(StoreError::query(what))?;
                let mut out = rows
                    .into_iter()
                    .map(|r| {
                        Ok::<_, sqlx::Error>(Claimed {
                            delivery_seq: r.try_get("delivery_seq")?,
                            target: r.try_get("target")?,
                            attempts: r.try_get("attempts")?,
                            give_up_at: r.try_get("give_up_at")?,
                            claim: r.try_get("claim")?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::query(what))?;
                out.sort_by_key(|c| c.delivery_seq);
                Ok(out)
            }};
        }
        match self.store.db() {
            Db::Sqlite(pool) => run!(pool, sql!("")),
            Db::Postgres(pool) => run!(pool, sql!("FOR UPDATE SKIP LOCKED")),
        }
    }

    /// Releases every claim `worker` holds (at its start: a node killed mid-attempt left them,
    /// and its rows need not wait for the claims to lapse). Returns how many.
    pub async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        let what = "releasing webhook claims";
        let prefix = format!("{worker} ");
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE hook_attempts SET claim = NULL, claimed_until = NULL \
                 WHERE claim IS NOT NULL AND substr(claim, 1, CAST($2 AS INTEGER)) = $1",
            )
            .bind(&prefix)
            .bind(prefix.chars().count() as i64)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(StoreError::query(what))
        })
    }

    /// The delivery `seq`, body and all.
    pub async fn get(&self, seq: i64) -> Result<Option<StoredDelivery>, StoreError> {
        self.get_by("seq = $1", Key::Seq(seq)).await
    }

    /// The delivery Gatehouse named `id`.
    pub async fn get_by_id(&self, id: &str) -> Result<Option<StoredDelivery>, StoreError> {
        self.get_by("id = $1", Key::Id(id)).await
    }

    async fn get_by(&self, cond: &str, key: Key<'_>) -> Result<Option<StoredDelivery>, StoreError> {
        let what = "reading a webhook delivery";
        let sql = format!(
            "SELECT seq, id, hook, source_id, scheme, event, repo, sender, headers, body, \
             annotation, received_at FROM hook_deliveries WHERE {cond}"
        );
        on_db!(self.store.db(), |pool| {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql));
            let q = match key {
                Key::Seq(s) => q.bind(s),
                Key::Id(i) => q.bind(i),
            };
            let row = q
                .fetch_optional(pool)
                .await
                .map_err(StoreError::query(what))?;
            row.map(|r| {
                Ok::<_, sqlx::Error>(StoredDelivery {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    hook: r.try_get("hook")?,
                    source_id: r.try_get("source_id")?,
                    scheme: r.try_get("scheme")?,
                    event: r.try_get("event")?,
                    repo: r.try_get("repo")?,
                    sender: r.try_get("sender")?,
                    headers: r.try_get("headers")?,
                    body: r.try_get("body")?,
                    annotation: r.try_get("annotation")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .transpose()
            .map_err(StoreError::query(what))
        })
    }

    /// Records how the attempt under `c` ended. `Ok(false)`: the claim had lapsed and another
    /// worker holds the row now (nothing was written).
    pub async fn finish(&self, c: &Claimed, how: &Finish, now: i64) -> Result<bool, StoreError> {
        let what = "recording a webhook attempt";
        let (state, status, error, next_at, delivered_at) = match how {
            Finish::Delivered { status } => ("delivered", Some(*status), None, None, Some(now)),
            Finish::Retry {
                status,
                error,
                next_at,
            } => (
                "pending",
                *status,
                Some(error.as_str()),
                Some(*next_at),
                None,
            ),
            Finish::Dead { status, error } => ("dead", *status, Some(error.as_str()), None, None),
        };
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE hook_attempts SET state = $1, attempts = attempts + 1, last_status = $2, \
                 last_error = $3, next_at = COALESCE($4, next_at), delivered_at = $5, \
                 claim = NULL, claimed_until = NULL, updated_at = $6 \
                 WHERE delivery_seq = $7 AND target = $8 AND claim = $9 AND state = 'pending'",
            )
            .bind(state)
            .bind(status)
            .bind(error)
            .bind(next_at)
            .bind(delivered_at)
            .bind(now)
            .bind(c.delivery_seq)
            .bind(&c.target)
            .bind(&c.claim)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(StoreError::query(what))
        })
    }

    /// The rows `f` selects, newest delivery first, at most [`ATTEMPT_LIST_MAX`].
    pub async fn list(&self, f: &AttemptFilter<'_>) -> Result<Vec<AttemptRow>, StoreError> {
        let what = "listing webhook deliveries";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT d.id, d.hook, d.source_id, d.event, d.repo, d.received_at, a.target, \
                 a.state, a.attempts, a.next_at, a.last_status, a.last_error, a.delivered_at \
                 FROM hook_attempts a JOIN hook_deliveries d ON d.seq = a.delivery_seq \
                 WHERE ($1 IS NULL OR d.hook = $1) AND ($2 IS NULL OR a.target = $2) \
                   AND ($3 IS NULL OR a.state = $3) AND ($4 IS NULL OR d.id = $4) \
                 ORDER BY a.delivery_seq DESC, a.target LIMIT {ATTEMPT_LIST_MAX}"
            )))
            .bind(f.hook)
            .bind(f.target)
            .bind(f.state)
            .bind(f.delivery)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.into_iter()
                .map(|r| {
                    Ok::<_, sqlx::Error>(AttemptRow {
                        delivery: r.try_get("id")?,
                        hook: r.try_get("hook")?,
                        source_id: r.try_get("source_id")?,
                        event: r.try_get("event")?,
                        repo: r.try_get("repo")?,
                        received_at: r.try_get("received_at")?,
                        target: r.try_get("target")?,
                        state: r.try_get("state")?,
                        attempts: r.try_get("attempts")?,
                        next_at: r.try_get("next_at")?,
                        last_status: r.try_get("last_status")?,
                        last_error: r.try_get("last_error")?,
                        delivered_at: r.try_get("delivered_at")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// How many rows each (hook, target, state) holds, and the oldest pending one's next
    /// attempt.
    pub async fn counts(&self) -> Result<Vec<(String, String, String, i64, i64)>, StoreError> {
        let what = "counting webhook deliveries";
        on_db!(self.store.db(), |pool| {
            let rows = sqlx::query(
                "SELECT d.hook, a.target, a.state, COUNT(*) AS n, MIN(a.next_at) AS oldest \
                 FROM hook_attempts a JOIN hook_deliveries d ON d.seq = a.delivery_seq \
                 GROUP BY d.hook, a.target, a.state ORDER BY d.hook, a.target, a.state",
            )
            .fetch_all(pool)
            .await
            .map_err(StoreError::query(what))?;
            rows.into_iter()
                .map(|r| {
                    Ok::<_, sqlx::Error>((
                        r.try_get("hook")?,
                        r.try_get("target")?,
                        r.try_get("state")?,
                        r.try_get("n")?,
                        r.try_get("oldest")?,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })
    }

    /// Sends the rows `f` selects again, from `now`, giving up at `give_up_at`: with
    /// `only_dead`, those relaying gave up on (retry); else any (an operator's replay, which
    /// sends a delivered one again, under its same idempotency id). A row a worker is sending
    /// now is left alone. Returns how many.
    pub async fn requeue(
        &self,
        f: &AttemptFilter<'_>,
        only_dead: bool,
        now: i64,
        give_up_at: i64,
    ) -> Result<u64, StoreError> {
        let what = "requeueing webhook deliveries";
        on_db!(self.store.db(), |pool| {
            sqlx::query(
                "UPDATE hook_attempts SET state = 'pending', next_at = $1, give_up_at = $2, \
                 attempts = 0, delivered_at = NULL, updated_at = $1 \
                 WHERE ($3 = 0 OR state = 'dead') \
                   AND (claimed_until IS NULL OR claimed_until < $1) \
                   AND ($4 IS NULL OR target = $4) AND ($5 IS NULL OR state = $5) \
                   AND delivery_seq IN (SELECT seq FROM hook_deliveries \
                     WHERE ($6 IS NULL OR hook = $6) AND ($7 IS NULL OR id = $7))",
            )
            .bind(now)
            .bind(give_up_at)
            .bind(i64::from(only_dead))
            .bind(f.target)
            .bind(f.state)
            .bind(f.hook)
            .bind(f.delivery)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(StoreError::query(what))
        })
    }

    /// Gives up (dead letters) the pending rows past their give-up time of every target not in
    /// `known`: a target removed from the configuration would leave them waiting for ever. Rows
    /// still within their time are left to nodes that may still know the target (a rolling
    /// change of configuration). Returns how many.
    pub async fn abandon_others(&self, known: &[String], now: i64) -> Result<u64, StoreError> {
        let what = "giving up deliveries to removed targets";
        let targets: Vec<String> = on_db!(self.store.db(), |pool| {
            sqlx::query("SELECT DISTINCT target FROM hook_attempts WHERE state = 'pending'")
                .fetch_all(pool)
                .await
                .map_err(StoreError::query(what))?
                .into_iter()
                .map(|r| r.try_get::<String, _>("target"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::query(what))
        })?;
        let mut n = 0;
        for t in targets.iter().filter(|t| !known.contains(t)) {
            n += on_db!(self.store.db(), |pool| {
                sqlx::query(
                    "UPDATE hook_attempts SET state = 'dead', claim = NULL, claimed_until = NULL, \
                     last_error = 'the target is no longer configured', updated_at = $1 \
                     WHERE state = 'pending' AND target = $2 AND give_up_at < $1 \
                       AND (claimed_until IS NULL OR claimed_until < $1)",
                )
                .bind(now)
                .bind(t)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(StoreError::query(what))
            })?;
        }
        Ok(n)
    }

    /// Deletes the deliveries every target finished with (delivered or given up) before
    /// `before`, and forgets the delivery ids seen before `seen_before`. Returns how many
    /// deliveries went.
    pub async fn prune(&self, before: i64, seen_before: i64) -> Result<u64, StoreError> {
        let what = "pruning webhook deliveries";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::query(what))?;
                let gone = "SELECT seq FROM hook_deliveries d WHERE d.received_at < $1 \
                            AND NOT EXISTS (SELECT 1 FROM hook_attempts a \
                              WHERE a.delivery_seq = d.seq \
                                AND (a.state = 'pending' OR a.updated_at >= $1))";
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM hook_attempts WHERE delivery_seq IN ({gone})"
                )))
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?;
                let n = sqlx::query(
                    "DELETE FROM hook_deliveries WHERE received_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM hook_attempts a WHERE a.delivery_seq = hook_deliveries.seq)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query(what))?
                .rows_affected();
                sqlx::query("DELETE FROM hook_seen WHERE seen_at < $1")
                    .bind(seen_before)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query(what))?;
                tx.commit().await.map_err(StoreError::query(what))?;
                Ok(n)
            }};
        }
        on_db!(self.store.db(), |pool| run!(pool))
    }
}

#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Seq(i64),
    Id(&'a str),
}
