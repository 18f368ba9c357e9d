//! Where sessions live between requests.
//!
//! A store keeps opaque, already sealed bytes under a key (the SHA-256 of a session id, never the
//! id itself) with an expiry time it can sweep by, and a renewal lease, so that of several
//! gateway nodes sharing the store one renews a session at a time. The app implements this over
//! `gatehouse-store` (SQLite or PostgreSQL); [`MemoryStore`] is for tests.

use futures_util::future::BoxFuture;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A signed-in session.
    Session,
}

impl RecordKind {
    /// The record kind's name (a column value).
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "sessions",
        }
    }
}

/// A store failure; never carries a record's contents.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

/// A session store. Keys are lowercase hex; values are opaque sealed bytes.
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Writes (or replaces) a record.
    fn put<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Reads a record.
    fn get<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Reads and removes a record in one step: of two concurrent calls, on any nodes, one gets it.
    fn take<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Removes a record (absent is fine).
    fn delete<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes every record that expired before `now`; returns how many.
    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Takes the record's renewal lease for `holder` for `lease_ms` milliseconds of the store's
    /// own clock (so that nodes whose clocks disagree agree on whose lease it is), unless
    /// another holder's has not run out. `false`: held by another, or no record.
    fn try_lease<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Replaces the record only while `holder` has its lease (`false`: it was taken or deleted
    /// meanwhile, and stays so).
    fn update_leased<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Gives the lease back, if `holder` has it.
    fn release<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A store in memory: for tests of this crate and of its users, never for serving (nothing is
/// shared between processes or kept across a restart).
#[derive(Debug)]
pub struct MemoryStore {
    records: std::sync::Mutex<std::collections::HashMap<(RecordKind, String), Record>>,
    /// The store's own clock, for leases (as a database's would be).
    started: std::time::Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            records: std::sync::Mutex::default(),
            started: std::time::Instant::now(),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    expires_at: i64,
    value: Vec<u8>,
    lease: Option<(String, i64)>,
}

impl MemoryStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut std::collections::HashMap<(RecordKind, String), Record>) -> T,
    ) -> T {
        let mut m = self.records.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut m)
    }
}

impl SessionStore for MemoryStore {
    fn put<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|m| {
            let lease = m.get(&(kind, key.to_owned())).and_then(|r| r.lease.clone());
            m.insert(
                (kind, key.to_owned()),
                Record {
                    expires_at,
                    value: value.to_vec(),
                    lease,
                },
            );
        });
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let v = self.with(|m| m.get(&(kind, key.to_owned())).map(|r| r.value.clone()));
        Box::pin(async { Ok(v) })
    }

    fn take<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let v = self.with(|m| m.remove(&(kind, key.to_owned())).map(|r| r.value));
        Box::pin(async { Ok(v) })
    }

    fn delete<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|m| m.remove(&(kind, key.to_owned())));
        Box::pin(async { Ok(()) })
    }

    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        let n = self.with(|m| {
            let before = m.len();
            m.retain(|_, r| r.expires_at >= now);
            before - m.len()
        });
        Box::pin(async move { Ok(n) })
    }

    fn try_lease<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
        lease_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let until_ms = now_ms.saturating_add(lease_ms);
        let got = self.with(|m| match m.get_mut(&(kind, key.to_owned())) {
            Some(r)
                if r.lease
                    .as_ref()
                    .is_none_or(|(h, u)| *u < now_ms || h == holder) =>
            {
                r.lease = Some((holder.to_owned(), until_ms));
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(got) })
    }

    fn update_leased<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let done = self.with(|m| match m.get_mut(&(kind, key.to_owned())) {
            Some(r) if r.lease.as_ref().is_some_and(|(h, _)| h == holder) => {
                r.expires_at = expires_at;
                r.value = value.to_vec();
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(done) })
    }

    fn release<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|m| {
            if let Some(r) = m.get_mut(&(kind, key.to_owned()))
                && r.lease.as_ref().is_some_and(|(h, _)| h == holder)
            {
                r.lease = None;
            }
        });
        Box::pin(async { Ok(()) })
    }
}
