//! The secrets broker: secrets at paths (`prod/acme/api/db-password`), in versions, with tags,
//! validity windows, an enabled flag, soft delete, recovery and purge; values sealed with
//! AES-256-GCM under a data key of each secret, data keys wrapped by a master key that rotates
//! online (rewrap; reads keep working throughout).
//!
//! Owns: the rules of a secret's life (what may be read when, how many versions are kept, what a
//! deleted secret allows), envelope encryption, master keys. Must not: decide who may ask (the
//! policy does, through the front door's adapter), log, audit or return a value anywhere but to
//! `get`'s caller (values are [`SecretValue`]s, zeroized on drop, redacted in `Debug`), or know
//! which database the store runs on.
#![forbid(unsafe_code)]

pub mod wipe;

mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse_core::Clock;
use gatehouse_store::{
    NewLease, NewSecret, NewVersion, SecretRow, SecretVersion, Store, StoreError,
};
use zeroize::Zeroizing;

pub use gatehouse_store::{IndexedPush, Lease, LeaseFilter};
pub use keys::{MasterKey, MasterKeys};

/// Most tags a secret carries.
pub const MAX_TAGS: usize = 15;
/// Longest secret value (bytes).
pub const MAX_VALUE: usize = 64 * 1024;
/// Longest path.
pub const MAX_PATH: usize = 512;
/// How often a write races another and is tried again before giving up.
const RETRIES: usize = 16;

/// Why a secrets operation failed, and whose move it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No secret (or no such version) there.
    #[error("no secret {0}")]
    NotFound(String),
    /// The secret is soft-deleted: recover it (or purge it) first.
    #[error("secret {0} is deleted (recover it, or purge it to reuse the path)")]
    Deleted(String),
    /// The version is disabled.
    #[error("version {version} of {path} is disabled")]
    Disabled {
        /// The path.
        path: String,
        /// The version.
        version: i64,
    },
    /// The version's not-before time has not come.
    #[error("version {version} of {path} is not valid before {not_before}")]
    NotYetValid {
        /// The path.
        path: String,
        /// The version.
        version: i64,
        /// Seconds since the epoch.
        not_before: i64,
    },
    /// The version has expired.
    #[error("version {version} of {path} expired at {expires_at}")]
    Expired {
        /// The path.
        path: String,
        /// The version.
        version: i64,
        /// Seconds since the epoch.
        expires_at: i64,
    },
    /// The request is malformed (a path, tag or value the broker does not take).
    #[error("{0}")]
    Invalid(String),
    /// A write lost too many races in a row.
    #[error("secret {0} is being written by others; try again")]
    Busy(String),
    /// The secret is no longer what the caller was allowed to change (created, re-tagged or
    /// purged meanwhile): nothing was written.
    #[error("secret {0} changed while this request was decided; try again")]
    Changed(String),
    /// A row names a master key this gateway does not have (the operator's config).
    #[error(
        "master key {0} is not configured (keep it in secrets.previous_master_keys until `gatehouse secret rewrap` has run)"
    )]
    UnknownMasterKey(String),
    /// A sealed value or wrapped key does not open: the store was altered, or a key is wrong.
    #[error("{0} does not open: the store was altered or the master key is wrong")]
    Corrupt(String),
    /// The secrets configuration cannot work.
    #[error("secrets configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug.
    #[error("internal secrets error: {0}")]
    Internal(String),
}

impl SecretError {
    /// A stable code for answers, metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::NotFound(_) => "secret_not_found",
            SecretError::Deleted(_) => "secret_deleted",
            SecretError::Disabled { .. } => "secret_disabled",
            SecretError::NotYetValid { .. } => "secret_not_yet_valid",
            SecretError::Expired { .. } => "secret_expired",
            SecretError::Invalid(_) => "invalid_request",
            SecretError::Busy(_) => "secret_busy",
            SecretError::Changed(_) => "secret_changed",
            SecretError::UnknownMasterKey(_) => "master_key_missing",
            SecretError::Corrupt(_) => "secret_corrupt",
            SecretError::Config(_) => "config",
            SecretError::Store(_) => "store_unavailable",
            SecretError::Internal(_) => "internal",
        }
    }

    /// Whether the fault is the server's (5xx) rather than the request's.
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            SecretError::UnknownMasterKey(_)
                | SecretError::Corrupt(_)
                | SecretError::Config(_)
                | SecretError::Store(_)
                | SecretError::Internal(_)
        )
    }
}

/// A secret's value: zeroized when dropped, never shown by `Debug`.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// The bytes. Hand them on; never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue([redacted; {} bytes])", self.0.len())
    }
}

/// A secret's description: what `list` shows and the policy reads. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The path.
    pub path: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// The newest version.
    pub latest: i64,
    /// Versions kept.
    pub max_versions: i64,
    /// Created (seconds since the epoch).
    pub created_at: i64,
    /// Last changed.
    pub updated_at: i64,
    /// Soft-deleted at, when it is.
    pub deleted_at: Option<i64>,
    /// Purged by itself at, when deleted.
    pub purge_at: Option<i64>,
}

impl SecretInfo {
    fn of(r: &SecretRow) -> Self {
        Self {
            path: r.path.clone(),
            // Tags were checked when written; a row altered by hand reads as untagged.
            tags: serde_json::from_str(&r.tags).unwrap_or_default(),
            latest: r.latest,
            max_versions: r.max_versions,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
            purge_at: r.purge_at,
        }
    }
}

/// A write of a new version (the first one creates the secret).
#[derive(Debug)]
pub struct Put<'a> {
    /// Where.
    pub path: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// Tags: set on the secret when given (replacing its tags), kept otherwise.
    pub tags: Option<BTreeMap<String, String>>,
    /// Not readable before (seconds since the epoch).
    pub not_before: Option<i64>,
    /// Not readable after.
    pub expires_at: Option<i64>,
    /// Versions kept, for a new secret (the broker's default otherwise).
    pub max_versions: Option<i64>,
    /// Who writes (for the record).
    pub actor: &'a str,
    /// What the caller was allowed to write into: the write is refused
    /// ([`SecretError::Changed`]) rather than land in anything else.
    pub expect: Expect,
}

/// The state of a secret a caller was allowed to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (an operator's tool, tests).
    Anything,
    /// No secret at the path.
    Absent,
    /// A live secret with exactly these tags.
    Tagged(BTreeMap<String, String>),
}

impl<'a> Put<'a> {
    /// The row of the version this put writes, its value sealed as `sealed`.
    fn version<'s>(&'s self, sealed: &'s [u8], now: i64) -> NewVersion<'s> {
        NewVersion {
            sealed,
            not_before: self.not_before,
            expires_at: self.expires_at,
            created_by: self.actor,
            now,
        }
    }
}

impl Expect {
    /// Whether `row` (None: no secret) is what was expected.
    fn holds(&self, row: Option<&SecretRow>) -> bool {
        match (self, row) {
            (Expect::Anything, _) => true,
            (Expect::Absent, r) => r.is_none(),
            (Expect::Tagged(t), Some(r)) => SecretInfo::of(r).tags == *t,
            (Expect::Tagged(_), None) => false,
        }
    }
}

/// The broker's settings (from `[secrets]`, built by the app).
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// Versions kept when a new secret does not say.
    pub max_versions: i64,
    /// How long a deleted secret stays recoverable before it is purged by itself (seconds).
    pub retention: i64,
    /// The longest a lease on a read lasts (seconds); shorter when the reader's credential or
    /// the version expires sooner.
    pub lease_ttl: i64,
    /// How long the push index keeps a push (seconds): a job running an older commit fails a
    /// provenance check.
    pub push_retention: i64,
}

/// How long a lease that ended stays listed (seconds).
pub const LEASE_KEPT: i64 = 86_400;

/// Who reads a value, for the lease on it.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The reader: its issuer and subject, space-separated.
    pub holder: &'a str,
    /// The reader's credential id.
    pub token_id: Option<&'a str>,
    /// The reader's CI job.
    pub job_id: Option<&'a str>,
    /// When the reader's credential expires.
    pub expires_at: Option<i64>,
}

/// A new lease id: `lease_` and 32 hex digits (128 random bits).
fn new_lease_id() -> Result<String, SecretError> {
    let mut raw = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| SecretError::Internal("rng".into()))?;
    let mut id = String::with_capacity(38);
    id.push_str("lease_");
    for b in raw {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}

/// Checks the shape of a lease id.
pub fn check_lease_id(id: &str) -> Result<(), SecretError> {
    match id.strip_prefix("lease_") {
        Some(hex) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(SecretError::Invalid(format!(
            "{:?} is not a lease id (lease_ and 32 hex digits)",
            id.chars().take(64).collect::<String>()
        ))),
    }
}

/// The secrets broker. One per process; cheap to share.
#[derive(Debug)]
pub struct Broker {
    store: Store,
    keys: Arc<MasterKeys>,
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
}

/// Checks a secret path: segments of letters, digits, `.`, `_` and `-`, separated by single
/// `/`, none of them `.` or `..`, at most [`MAX_PATH`] bytes.
pub fn check_path(path: &str) -> Result<(), SecretError> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(SecretError::Invalid(format!(
            "a secret path is segments of letters, digits, '.', '_' and '-' separated by '/' \
             (at most {MAX_PATH} bytes), like prod/acme/api/db-password"
        )))
    }
}

/// Checks tags: at most [`MAX_TAGS`], names of 1 to 128 letters, digits, `.`, `_`, `-`, `:`
/// or `/`, values of at most 256 printable characters.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), SecretError> {
    if tags.len() > MAX_TAGS {
        return Err(SecretError::Invalid(format!(
            "a secret has at most {MAX_TAGS} tags"
        )));
    }
    for (k, v) in tags {
        let name_ok = !k.is_empty()
            && k.len() <= 128
            && k.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/')
            });
        if !name_ok {
            return Err(SecretError::Invalid(format!(
                "tag name {k:?}: 1 to 128 letters, digits, '.', '_', '-', ':' or '/'"
            )));
        }
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(SecretError::Invalid(format!(
                "tag {k}: a value is at most 256 printable characters"
            )));
        }
    }
    Ok(())
}

impl Broker {
    /// A broker over `store`, sealing with `keys`.
    pub fn new(
        store: Store,
        keys: Arc<MasterKeys>,
        clock: Arc<dyn Clock>,
        settings: BrokerSettings,
    ) -> Self {
        Self {
            store,
            keys,
            clock,
            settings,
        }
    }

    /// The current master key's id.
    pub fn master_key_id(&self) -> &str {
        self.keys.current_id()
    }

    fn now(&self) -> i64 {
        self.clock.now().as_secs()
    }

    /// The live secret at `path`.
    async fn live(&self, path: &str) -> Result<SecretRow, SecretError> {
        check_path(path)?;
        match self.store.secrets().get(path).await? {
            None => Err(SecretError::NotFound(path.to_owned())),
            Some(r) if r.deleted_at.is_some() => Err(SecretError::Deleted(path.to_owned())),
            Some(r) => Ok(r),
        }
    }

    /// Describes the secret at `path` (deleted or not): what the policy reads before a get.
    pub async fn info(&self, path: &str) -> Result<SecretInfo, SecretError> {
        check_path(path)?;
        self.store
            .secrets()
            .get(path)
            .await?
            .map(|r| SecretInfo::of(&r))
            .ok_or_else(|| SecretError::NotFound(path.to_owned()))
    }

    /// Writes a new version (creating the secret with version 1). Returns the version.
    pub async fn put(&self, p: &Put<'_>) -> Result<i64, SecretError> {
        check_path(p.path)?;
        if p.value.len() > MAX_VALUE {
            return Err(SecretError::Invalid(format!(
                "a secret value is at most {MAX_VALUE} bytes"
            )));
        }
        if let Some(t) = &p.tags {
            check_tags(t)?;
        }
        if let (Some(nb), Some(exp)) = (p.not_before, p.expires_at)
            && exp <= nb
        {
            return Err(SecretError::Invalid(
                "expiry must come after not-before".into(),
            ));
        }
        let max_versions = p.max_versions.unwrap_or(self.settings.max_versions);
        if !(1..=1000).contains(&max_versions) {
            return Err(SecretError::Invalid(
                "keep between 1 and 1000 versions".into(),
            ));
        }
        let rows = self.store.secrets();
        let new_tags = p.tags.as_ref().map(tags_json).transpose()?;
        for _ in 0..RETRIES {
            let now = self.now();
            let row = rows.get(p.path).await?;
            if let Some(r) = &row
                && r.deleted_at.is_some()
            {
                return Err(SecretError::Deleted(p.path.to_owned()));
            }
            if !p.expect.holds(row.as_ref()) {
                return Err(SecretError::Changed(p.path.to_owned()));
            }
            match row {
                Some(r) => {
                    let dk = self.keys.open_data_key(&r.path, &r.kek, &r.dek)?;
                    let version = r.latest + 1;
                    let sealed = dk.seal_value(p.path, version, p.value)?;
                    let v = p.version(&sealed, now);
                    if rows
                        .add_version(p.path, r.latest, (&r.dek, &r.tags), new_tags.as_deref(), &v)
                        .await?
                    {
                        return Ok(version);
                    }
                }
                None => {
                    let (dk, wrapped) = self.keys.new_data_key(p.path)?;
                    let sealed = dk.seal_value(p.path, 1, p.value)?;
                    let tags = new_tags
                        .clone()
                        .map_or_else(|| tags_json(&BTreeMap::new()), Ok)?;
                    let s = NewSecret {
                        path: p.path,
                        dek: &wrapped,
                        kek: self.keys.current_id(),
                        tags: &tags,
                        max_versions,
                    };
                    let v = p.version(&sealed, now);
                    if rows.create(&s, &v).await? {
                        return Ok(1);
                    }
                }
            }
        }
        Err(SecretError::Busy(p.path.to_owned()))
    }

    /// Reads a value: `version`, or the newest. Refused when the secret is deleted, or the
    /// version is disabled, not yet valid or expired.
    pub async fn get(
        &self,
        path: &str,
        version: Option<i64>,
    ) -> Result<(SecretValue, SecretVersion), SecretError> {
        let r = self.live(path).await?;
        let v = version.unwrap_or(r.latest);
        let row = self
            .store
            .secrets()
            .version(path, v)
            .await?
            .ok_or_else(|| SecretError::NotFound(format!("{path} version {v}")))?;
        let now = self.now();
        let m = &row.meta;
        if !m.enabled {
            return Err(SecretError::Disabled {
                path: path.to_owned(),
                version: v,
            });
        }
        if let Some(nb) = m.not_before
            && now < nb
        {
            return Err(SecretError::NotYetValid {
                path: path.to_owned(),
                version: v,
                not_before: nb,
            });
        }
        if let Some(exp) = m.expires_at
            && now >= exp
        {
            return Err(SecretError::Expired {
                path: path.to_owned(),
                version: v,
                expires_at: exp,
            });
        }
        let dk = self.keys.open_data_key(&r.path, &r.kek, &r.dek)?;
        let value = dk.open_value(path, v, &row.sealed)?;
        Ok((SecretValue(value), row.meta))
    }

    /// Reads a value as [`Broker::get`] does and records a lease on it for `holder` first: the
    /// lease is durable before the value is returned. It lasts [`BrokerSettings::lease_ttl`],
    /// never past the holder's credential or the version's expiry.
    pub async fn read(
        &self,
        path: &str,
        version: Option<i64>,
        holder: &Holder<'_>,
    ) -> Result<(SecretValue, SecretVersion, Lease), SecretError> {
        let (value, meta) = self.get(path, version).await?;
        let now = self.now();
        let expires_at = [
            Some(now.saturating_add(self.settings.lease_ttl)),
            holder.expires_at,
            meta.expires_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
        .max(now.saturating_add(1));
        let id = new_lease_id()?;
        let lease = NewLease {
            id: &id,
            path,
            version: meta.version,
            holder: holder.holder,
            token_id: holder.token_id,
            job_id: holder.job_id,
            issued_at: now,
            expires_at,
        };
        self.store.leases().create(&lease).await?;
        let lease = Lease {
            id: id.clone(),
            path: path.to_owned(),
            version: meta.version,
            holder: holder.holder.to_owned(),
            token_id: holder.token_id.map(str::to_owned),
            job_id: holder.job_id.map(str::to_owned),
            issued_at: now,
            expires_at,
            revoked_at: None,
            revoked_by: None,
            reason: None,
        };
        Ok((value, meta, lease))
    }

    /// The lease `id`.
    pub async fn lease(&self, id: &str) -> Result<Lease, SecretError> {
        check_lease_id(id)?;
        self.store
            .leases()
            .get(id)
            .await?
            .ok_or_else(|| SecretError::NotFound(format!("lease {id}")))
    }

    /// Revokes the lease `id`. `Ok(false)`: it was revoked already (the first revocation stands).
    pub async fn revoke_lease(
        &self,
        id: &str,
        by: &str,
        reason: &str,
    ) -> Result<bool, SecretError> {
        check_lease_id(id)?;
        Ok(self
            .store
            .leases()
            .revoke(id, by, reason, self.now())
            .await?)
    }

    /// Revokes every lease of the job `job_id`; how many were live.
    pub async fn end_job(&self, job_id: &str, by: &str) -> Result<u64, SecretError> {
        Ok(self
            .store
            .leases()
            .revoke_job(job_id, by, "job_ended", self.now())
            .await?)
    }

    /// The leases `f` selects, newest first (at most 1000).
    pub async fn leases(&self, f: &LeaseFilter<'_>) -> Result<Vec<Lease>, SecretError> {
        Ok(self.store.leases().list(f).await?)
    }

    /// Whether `commit` reached `git_ref` of `repo` through a push Gatehouse allowed and
    /// audited: the push, from the push index, or `None`.
    pub async fn provenance(
        &self,
        repo: &str,
        git_ref: &str,
        commit: &str,
    ) -> Result<Option<IndexedPush>, SecretError> {
        if repo.is_empty() || git_ref.is_empty() || commit.is_empty() {
            return Ok(None);
        }
        Ok(self.store.pushes().find(repo, git_ref, commit).await?)
    }

    /// The last few confirmed pushes of `git_ref` of `repo`, newest first: an annotated tag's
    /// pushes name the tag object, which the caller peels to the commit a job runs.
    pub async fn confirmed_pushes_of(
        &self,
        repo: &str,
        git_ref: &str,
    ) -> Result<Vec<IndexedPush>, SecretError> {
        Ok(self
            .store
            .pushes()
            .confirmed_for_ref(repo, git_ref, 5)
            .await?)
    }

    /// The secrets under `prefix` (`""`: all), live or deleted. Never a value.
    pub async fn list(&self, prefix: &str, deleted: bool) -> Result<Vec<SecretInfo>, SecretError> {
        if !prefix.is_empty() {
            check_path(prefix.trim_end_matches('/'))?;
        }
        Ok(self
            .store
            .secrets()
            .list(prefix, deleted)
            .await?
            .iter()
            .map(SecretInfo::of)
            .collect())
    }

    /// The versions kept of a live secret, newest first.
    pub async fn versions(&self, path: &str) -> Result<Vec<SecretVersion>, SecretError> {
        self.live(path).await?;
        Ok(self.store.secrets().versions(path).await?)
    }

    /// Writes a new version with a random value (`bytes` random bytes, base64url): rotation of
    /// a secret Gatehouse generates, such as a shared token. The value is not returned.
    pub async fn rotate(
        &self,
        path: &str,
        bytes: usize,
        actor: &str,
        expect: &Expect,
    ) -> Result<i64, SecretError> {
        if !(16..=1024).contains(&bytes) {
            return Err(SecretError::Invalid(
                "a generated value has 16 to 1024 random bytes".into(),
            ));
        }
        self.live(path).await?;
        let mut raw = Zeroizing::new(vec![0u8; bytes]);
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| SecretError::Internal("rng".into()))?;
        use base64::Engine as _;
        let value = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw));
        self.put(&Put {
            path,
            value: value.as_bytes(),
            tags: None,
            not_before: None,
            expires_at: None,
            max_versions: None,
            actor,
            expect: expect.clone(),
        })
        .await
    }

    /// Enables or disables a version (the newest when `None`). Returns the version.
    pub async fn set_enabled(
        &self,
        path: &str,
        version: Option<i64>,
        enabled: bool,
    ) -> Result<i64, SecretError> {
        let r = self.live(path).await?;
        let v = version.unwrap_or(r.latest);
        if self
            .store
            .secrets()
            .set_enabled(path, v, enabled, self.now())
            .await?
        {
            Ok(v)
        } else {
            Err(SecretError::NotFound(format!("{path} version {v}")))
        }
    }

    /// Replaces a live secret's tags, if they are still what `expect` says.
    pub async fn set_tags(
        &self,
        path: &str,
        expect: &Expect,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), SecretError> {
        check_tags(tags)?;
        let r = self.live(path).await?;
        if !expect.holds(Some(&r)) {
            return Err(SecretError::Changed(path.to_owned()));
        }
        if self
            .store
            .secrets()
            .set_tags(path, &r.tags, &tags_json(tags)?, self.now())
            .await?
        {
            Ok(())
        } else {
            Err(SecretError::Changed(path.to_owned()))
        }
    }

    /// Soft-deletes a secret: unreadable until recovered, purged by itself after the retention
    /// period. Returns when it will be purged.
    pub async fn delete(&self, path: &str, actor: &str) -> Result<i64, SecretError> {
        check_path(path)?;
        let now = self.now();
        let purge_at = now.saturating_add(self.settings.retention);
        if self
            .store
            .secrets()
            .soft_delete(path, actor, now, purge_at)
            .await?
        {
            return Ok(purge_at);
        }
        match self.store.secrets().get(path).await? {
            Some(_) => Err(SecretError::Deleted(path.to_owned())),
            None => Err(SecretError::NotFound(path.to_owned())),
        }
    }

    /// Brings back a soft-deleted secret, every version as it was.
    pub async fn recover(&self, path: &str) -> Result<(), SecretError> {
        check_path(path)?;
        if self.store.secrets().recover(path, self.now()).await? {
            return Ok(());
        }
        match self.store.secrets().get(path).await? {
            Some(_) => Err(SecretError::Invalid(format!(
                "secret {path} is not deleted"
            ))),
            None => Err(SecretError::NotFound(path.to_owned())),
        }
    }

    /// Erases a soft-deleted secret for good.
    pub async fn purge(&self, path: &str) -> Result<(), SecretError> {
        check_path(path)?;
        if self.store.secrets().purge(path).await? {
            return Ok(());
        }
        match self.store.secrets().get(path).await? {
            Some(_) => Err(SecretError::Invalid(format!(
                "secret {path} is not deleted: delete it first"
            ))),
            None => Err(SecretError::NotFound(path.to_owned())),
        }
    }

    /// Purges the deleted secrets whose retention has passed. Returns how many.
    /// Leases that ended more than a day ago and pushes older than
    /// [`BrokerSettings::push_retention`] are deleted too.
    pub async fn sweep(&self) -> Result<u64, SecretError> {
        let now = self.now();
        let purged = self.store.secrets().purge_due(now).await?;
        self.store
            .leases()
            .prune(now.saturating_sub(LEASE_KEPT))
            .await?;
        self.store
            .pushes()
            .prune(now.saturating_sub(self.settings.push_retention))
            .await?;
        Ok(purged)
    }

    /// Rewraps every data key not wrapped by the current master key (after a rotation).
    /// Values are untouched and stay readable throughout. A row that cannot be rewrapped (its
    /// master key is not configured, or it does not open) is logged and skipped: the others
    /// are still rewrapped. Returns how many were rewrapped and how many were skipped.
    pub async fn rewrap_all(&self) -> Result<(usize, usize), SecretError> {
        let rows = self.store.secrets();
        let current = self.keys.current_id();
        let (mut done, mut skipped) = (0, 0);
        let mut after = String::new();
        loop {
            let batch = rows.wrapped_by_others(current, &after, 100).await?;
            let Some(last) = batch.last() else {
                return Ok((done, skipped));
            };
            after.clone_from(&last.path);
            for r in batch {
                match self.keys.rewrap(&r.path, &r.kek, &r.dek) {
                    Ok(wrapped) => {
                        if rows
                            .rewrap(&r.path, (&r.kek, &r.dek), &wrapped, current)
                            .await?
                        {
                            done += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(path = %r.path, error = %e, "data key not rewrapped");
                        skipped += 1;
                    }
                }
            }
        }
    }
}

fn tags_json(tags: &BTreeMap<String, String>) -> Result<String, SecretError> {
    serde_json::to_string(tags).map_err(|e| SecretError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests;
