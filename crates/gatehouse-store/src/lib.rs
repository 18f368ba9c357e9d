//! Gatehouse's durable, shared state: one [`Store`] over two backends with one behaviour, SQLite
//! in one file (the embedded default: WAL, every commit fsynced) and PostgreSQL (several gateway
//! nodes on one database). It owns the schema, its versioned migrations and the typed stores over
//! it: the revocation log ([`RevocationLog`]) and the feed that keeps every node's in-memory
//! [`Revocations`](gatehouse_core::Revocations) current within a second ([`RevocationFeed`]),
//! sealed browser-session records with a lease that serialises their renewal across nodes
//! ([`SessionRecords`]), and ephemeral environments whose end revokes every credential bound to
//! them ([`Environments`]), the secrets' rows and leases, the push index, and the webhook
//! relay's deliveries ([`HookDeliveries`]).
//!
//! This crate must not know about HTTP, SSH, policy or configuration files: the app crate picks
//! the backend ([`Store::sqlite`] or [`Store::postgres`]) and no other crate knows which one it
//! is. Nothing here runs on a request's hot path: front doors read in-memory state the feeds
//! keep up to date.
#![forbid(unsafe_code)]

mod environments;
mod hooks;
mod leases;
mod revocations;
mod secrets;
mod sessions;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use environments::{Environment, Environments};
pub use hooks::{
    ATTEMPT_LIST_MAX, Accepted, AttemptFilter, AttemptRow, Claimed, Finish, HookDeliveries,
    NewDelivery, NewTarget, StoredDelivery,
};
pub use leases::{IndexedPush, LEASE_LIST_MAX, Lease, LeaseFilter, Leases, NewLease, PushIndex};
pub use revocations::{NewRevocation, RevocationFeed, RevocationLog, RevocationRecord};
pub use secrets::{NewSecret, NewVersion, SecretRow, SecretRows, SecretVersion, VersionRow};
pub use sessions::SessionRecords;

/// The table sqlx records applied migrations in (its default name would collide with an
/// application sharing the database).
const MIGRATIONS_TABLE: &str = "gatehouse_migrations";

/// The migrations, in order: (version, description, SQLite, PostgreSQL). A migration is never
/// edited once released (its checksum is recorded): a change is a new version.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "revocations",
        include_str!("../migrations/sqlite/0001_revocations.sql"),
        include_str!("../migrations/postgres/0001_revocations.sql"),
    ),
    (
        2,
        "sessions",
        include_str!("../migrations/sqlite/0002_sessions.sql"),
        include_str!("../migrations/postgres/0002_sessions.sql"),
    ),
    (
        3,
        "environments",
        include_str!("../migrations/sqlite/0003_environments.sql"),
        include_str!("../migrations/postgres/0003_environments.sql"),
    ),
    (
        4,
        "secrets",
        include_str!("../migrations/sqlite/0004_secrets.sql"),
        include_str!("../migrations/postgres/0004_secrets.sql"),
    ),
    (
        5,
        "secret leases and the push index",
        include_str!("../migrations/sqlite/0005_leases_pushes.sql"),
        include_str!("../migrations/postgres/0005_leases_pushes.sql"),
    ),
    (
        6,
        "webhook deliveries, and pushers in the push index",
        include_str!("../migrations/sqlite/0006_webhooks.sql"),
        include_str!("../migrations/postgres/0006_webhooks.sql"),
    ),
];

/// What went wrong, and whose move it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operator's configuration names a store that cannot be used.
    #[error("store {at}: {why}")]
    Config {
        /// The store, without credentials.
        at: String,
        /// What is wrong.
        why: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot open the store at {at}: {source}")]
    Open {
        /// The store, without credentials.
        at: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The schema is behind this Gatehouse, and migrations were not to be applied automatically.
    #[error(
        "the store at {at} lacks migrations {pending:?}: run `gatehouse store migrate`, or set \
         store.migrate = \"auto\""
    )]
    Pending {
        /// The store, without credentials.
        at: String,
        /// Versions not applied yet.
        pending: Vec<i64>,
    },
    /// The schema is ahead of, or differs from, what this Gatehouse knows.
    #[error("the store at {at} cannot be used by this Gatehouse: {why}")]
    Schema {
        /// The store, without credentials.
        at: String,
        /// What differs.
        why: String,
    },
    /// Applying a migration failed (the database is left at the last migration that succeeded).
    #[error("migrating the store at {at} failed: {source}")]
    Migrate {
        /// The store, without credentials.
        at: String,
        /// sqlx's error.
        source: MigrateError,
    },
    /// A query failed (the database went away, a constraint, a full disk).
    #[error("store query failed ({what}): {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The caller asked for something the store refuses (a value that could never match).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { what, source }
    }
}

/// What opening does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtOpen {
    /// Apply pending migrations.
    Migrate,
    /// Refuse a schema with pending migrations ([`StoreError::Pending`]).
    Require,
    /// Neither (to report on it: `gatehouse store status`).
    Inspect,
}

/// How [`Store::sqlite`] and [`Store::postgres`] open the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// What to do about the schema.
    pub at_open: AtOpen,
    /// Most connections the pool holds (PostgreSQL; SQLite uses at most this many readers).
    pub max_connections: u32,
    /// How long to wait for a connection, or for SQLite's write lock, before failing.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            at_open: AtOpen::Migrate,
            max_connections: 8,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on either backend's pool: each arm is type-checked against its own
/// driver, so SQL written once must suit both (sqlx binds `$1`-style parameters on SQLite too).
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// One migration's state, for `gatehouse store status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Its version.
    pub version: i64,
    /// What it does.
    pub description: String,
    /// Whether the database has it.
    pub applied: bool,
}

/// The store: cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    at: String,
}

impl Store {
    /// The embedded store in the SQLite file `path` (created, readable by its owner only, when
    /// missing): WAL journal, `synchronous = FULL` so every commit is on disk when acknowledged.
    pub async fn sqlite(path: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        let at = format!("sqlite://{}", path.display());
        create_private(path).map_err(|e| StoreError::Config {
            at: at.clone(),
            why: format!("cannot create {}: {e}", path.display()),
        })?;
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(opts.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.busy_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Open {
                at: at.clone(),
                source,
            })?;
        Store::ready(Db::Sqlite(pool), at, opts).await
    }

    /// The shared store in the PostgreSQL database `url` (`postgres://user:password@host/db`,
    /// with `sslmode` and the other libpq parameters as query parameters). The password never
    /// appears in errors or logs.
    pub async fn postgres(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        let connect: PgConnectOptions =
            url.parse().map_err(|e: sqlx::Error| StoreError::Config {
                at: "postgres://…".into(),
                why: format!(
                    "not a PostgreSQL URL: {}",
                    strip_secrets(&e.to_string(), url)
                ),
            })?;
        let at = format!(
            "postgres://{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.busy_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Open {
                at: at.clone(),
                source,
            })?;
        Store::ready(Db::Postgres(pool), at, opts).await
    }

    async fn ready(db: Db, at: String, opts: &StoreOptions) -> Result<Store, StoreError> {
        let store = Store { db, at };
        match opts.at_open {
            AtOpen::Migrate => {
                store.migrate().await?;
            }
            AtOpen::Require => store.check_schema().await?,
            AtOpen::Inspect => {}
        }
        Ok(store)
    }

    /// Where the store is, without credentials (`sqlite:///var/lib/gatehouse/store.db`,
    /// `postgres://db.internal:5432/gatehouse`).
    pub fn location(&self) -> &str {
        &self.at
    }

    /// `sqlite` or `postgres`, for logs and `gatehouse store status` only.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    fn migrator(&self) -> Migrator {
        let sqlite = matches!(self.db, Db::Sqlite(_));
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, lite, pg)| {
                let sql = if sqlite { lite } else { pg };
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect();
        let mut m = Migrator::with_migrations(migrations);
        m.dangerous_set_table_name(MIGRATIONS_TABLE);
        m
    }

    /// Applies every pending migration, in order, each in its own transaction (PostgreSQL: under
    /// an advisory lock, so nodes starting together apply each once). Returns the versions
    /// applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.status().await?;
        let m = self.migrator();
        let res = on_db!(&self.db, |pool| m.run(pool).await);
        res.map_err(|source| StoreError::Migrate {
            at: self.at.clone(),
            source,
        })?;
        let applied: Vec<i64> = before
            .iter()
            .filter(|s| !s.applied)
            .map(|s| s.version)
            .collect();
        if !applied.is_empty() {
            tracing::info!(store = %self.at, versions = ?applied, "store migrations applied");
        }
        Ok(applied)
    }

    /// Every migration this Gatehouse knows, and whether the database has it. A database with a
    /// migration this Gatehouse does not know, or with a known one whose text differs, is an
    /// error: it was written by another version.
    pub async fn status(&self) -> Result<Vec<MigrationState>, StoreError> {
        let applied = on_db!(&self.db, |pool| {
            let mut conn = pool.acquire().await.map_err(|source| StoreError::Open {
                at: self.at.clone(),
                source,
            })?;
            let migrate = async {
                conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
                if let Some(v) = conn.dirty_version(MIGRATIONS_TABLE).await? {
                    return Err(MigrateError::Dirty(v));
                }
                conn.list_applied_migrations(MIGRATIONS_TABLE).await
            };
            migrate.await.map_err(|source| StoreError::Migrate {
                at: self.at.clone(),
                source,
            })?
        });
        let known = self.migrator();
        for a in &applied {
            match known.iter().find(|m| m.version == a.version) {
                None => {
                    return Err(StoreError::Schema {
                        at: self.at.clone(),
                        why: format!(
                            "it has migration {} that this version does not know: a newer \
                             Gatehouse migrated it; run that version",
                            a.version
                        ),
                    });
                }
                Some(m) if m.checksum != a.checksum => {
                    return Err(StoreError::Schema {
                        at: self.at.clone(),
                        why: format!(
                            "migration {} was applied with different text than this version's",
                            a.version
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(known
            .iter()
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.iter().any(|a| a.version == m.version),
            })
            .collect())
    }

    /// Refuses a database whose schema is behind (or ahead of) this Gatehouse.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let pending: Vec<i64> = self
            .status()
            .await?
            .into_iter()
            .filter(|s| !s.applied)
            .map(|s| s.version)
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Pending {
                at: self.at.clone(),
                pending,
            })
        }
    }

    /// The revocation log.
    pub fn revocations(&self) -> RevocationLog<'_> {
        RevocationLog::new(self)
    }

    /// Ephemeral environments.
    pub fn environments(&self) -> Environments<'_> {
        Environments::new(self)
    }

    /// Sealed session records.
    pub fn sessions(&self) -> SessionRecords<'_> {
        SessionRecords::new(self)
    }

    /// The leases on secrets' values.
    pub fn leases(&self) -> Leases<'_> {
        Leases::new(self)
    }

    /// The push index (provenance: which commits reached which refs through Gatehouse).
    pub fn pushes(&self) -> PushIndex<'_> {
        PushIndex::new(self)
    }

    /// The webhook relay's deliveries and where each stands at each target.
    pub fn hooks(&self) -> HookDeliveries<'_> {
        HookDeliveries::new(self)
    }

    /// The secrets broker's rows (sealed values, wrapped data keys).
    pub fn secrets(&self) -> SecretRows<'_> {
        SecretRows::new(self)
    }

    /// Whether the database answers (a trivial query), for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(&self.db, |pool| {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map_err(StoreError::query("pinging the store"))?;
        });
        Ok(())
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        on_db!(&self.db, |pool| pool.close().await)
    }
}

/// Creates `path` empty and private (0600) when missing, so SQLite (which gives its WAL and
/// shared-memory files the database file's mode) never makes the store world-readable.
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `text` with the password of `url`, if any, replaced.
fn strip_secrets(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_owned(),
    }
}

/// Where a `store.url` points: the app crate parses the configured URL with this and opens the
/// matching backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `sqlite://PATH` (relative paths are the caller's to resolve).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, kept whole for the driver.
    Postgres,
}

impl StoreLocation {
    /// Reads `url`'s scheme. Anything else is refused, naming the two that work.
    pub fn parse(url: &str) -> Result<StoreLocation, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            if path.is_empty() {
                return Err("sqlite:// needs a file path (sqlite://gatehouse.db)".into());
            }
            if url.contains('?') {
                return Err(
                    "sqlite:// takes no parameters: Gatehouse sets WAL and full sync itself".into(),
                );
            }
            Ok(StoreLocation::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres)
        } else {
            Err("the store URL must start with sqlite:// or postgres://".into())
        }
    }
}

/// Opens the store `url` names (`sqlite://` relative paths under `base`).
pub async fn open(url: &str, base: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
    match StoreLocation::parse(url).map_err(|why| StoreError::Config {
        at: strip_secrets(url, url),
        why,
    })? {
        StoreLocation::Sqlite(p) => Store::sqlite(&base.join(p), opts).await,
        StoreLocation::Postgres => Store::postgres(url, opts).await,
    }
}

#[cfg(test)]
mod tests;
