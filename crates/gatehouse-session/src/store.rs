//! Where sessions and pending sign-ins live between requests.
//!
//! A store keeps opaque, already sealed bytes under a key (the SHA-256 of a session id or
//! `state`, never the value itself) with an expiry time it can sweep by. The file-backed store is
//! the embedded default; a PostgreSQL store implements the same trait over one table
//! `(kind, key, expires_at, value)`.

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A signed-in session.
    Session,
}

/// Every record kind.
const KINDS: [RecordKind; 1] = [RecordKind::Session];

impl RecordKind {
    /// The record kind's name (a directory or a column value).
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "sessions",
        }
    }
}

/// A store failure (I/O); never carries a record's contents.
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
    /// Reads and removes a record in one step: of two concurrent calls, one gets it.
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
}

/// The embedded default: one file per record under a directory (`sessions/`), each
/// written to a temporary file and renamed into place, readable only by Gatehouse's user.
/// File layout: 8 bytes big-endian expiry, then the sealed value.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

fn valid_key(key: &str) -> Result<(), StoreError> {
    if key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(StoreError("invalid record key".into()))
    }
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StoreError {
    StoreError(format!("{what} {}: {e}", p.display()))
}

impl FileStore {
    /// Opens (creating) the store directory, mode 0700.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for kind in KINDS {
            let d = dir.join(kind.as_str());
            std::fs::create_dir_all(&d).map_err(|e| io("create", &d, e))?;
        }
        set_private(dir, 0o700)?;
        for kind in KINDS {
            set_private(&dir.join(kind.as_str()), 0o700)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, kind: RecordKind, key: &str) -> PathBuf {
        self.dir.join(kind.as_str()).join(key)
    }

    /// A unique hidden name beside a record (a write in progress, or a record being taken);
    /// `sweep` removes leftovers after an hour.
    fn scratch(&self, kind: RecordKind, key: &str, what: &str) -> PathBuf {
        self.dir
            .join(kind.as_str())
            .join(format!(".{key}.{}.{what}", unique_suffix()))
    }

    async fn read_record(p: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(p).await {
            Ok(mut bytes) => {
                if bytes.len() < 8 {
                    return Err(StoreError(format!("{}: truncated record", p.display())));
                }
                Ok(Some(bytes.split_off(8)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", p, e)),
        }
    }
}

#[cfg(unix)]
fn set_private(p: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", p, e))
}

#[cfg(not(unix))]
fn set_private(_: &Path, _: u32) -> Result<(), StoreError> {
    Ok(())
}

fn unique_suffix() -> String {
    let mut b = [0u8; 8];
    // A failed RNG only makes a name collision possible, which the rename then reports.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SessionStore for FileStore {
    fn put<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
        expires_at: i64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            valid_key(key)?;
            let path = self.path(kind, key);
            let tmp = self.scratch(kind, key, "tmp");
            let mut bytes = Vec::with_capacity(8 + value.len());
            bytes.extend_from_slice(&expires_at.to_be_bytes());
            bytes.extend_from_slice(value);
            let t = tmp.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                use std::io::Write as _;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&t).map_err(|e| io("create", &t, e))?;
                f.write_all(&bytes).map_err(|e| io("write", &t, e))?;
                std::fs::rename(&t, &path).map_err(|e| {
                    let _ = std::fs::remove_file(&t);
                    io("rename", &path, e)
                })
            })
            .await
            .map_err(|e| StoreError(format!("write task: {e}")))?
        })
    }

    fn get<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            valid_key(key)?;
            Self::read_record(&self.path(kind, key)).await
        })
    }

    fn take<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            valid_key(key)?;
            let path = self.path(kind, key);
            let claimed = self.scratch(kind, key, "taken");
            // rename(2) is atomic: of two concurrent takers, only one moves the file.
            match tokio::fs::rename(&path, &claimed).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("claim", &path, e)),
            }
            let out = Self::read_record(&claimed).await;
            let _ = tokio::fs::remove_file(&claimed).await;
            out
        })
    }

    fn delete<'a>(
        &'a self,
        kind: RecordKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            valid_key(key)?;
            let p = self.path(kind, key);
            match tokio::fs::remove_file(&p).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("delete", &p, e)),
            }
        })
    }

    fn sweep(&self, now: i64) -> BoxFuture<'_, Result<usize, StoreError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
                use std::io::Read as _;
                let mut removed = 0;
                for kind in KINDS {
                    let d = dir.join(kind.as_str());
                    let entries = std::fs::read_dir(&d).map_err(|e| io("list", &d, e))?;
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        if name.starts_with('.') {
                            // A temporary file left by a crash: gone after an hour.
                            let old = entry
                                .metadata()
                                .and_then(|m| m.modified())
                                .ok()
                                .and_then(|m| m.elapsed().ok())
                                .is_some_and(|age| age.as_secs() > 3600);
                            if old && std::fs::remove_file(&p).is_ok() {
                                removed += 1;
                            }
                            continue;
                        }
                        let mut head = [0u8; 8];
                        let expired = std::fs::File::open(&p)
                            .and_then(|mut f| f.read_exact(&mut head))
                            .map(|()| i64::from_be_bytes(head) < now)
                            .unwrap_or(true);
                        if expired && std::fs::remove_file(&p).is_ok() {
                            removed += 1;
                        }
                    }
                }
                Ok(removed)
            })
            .await
            .map_err(|e| StoreError(format!("sweep task: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const K2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("gh-store-{}", unique_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn put_get_take_delete_sweep() {
        let d = tmp();
        let s = FileStore::open(&d).unwrap();
        assert!(s.get(RecordKind::Session, K).await.unwrap().is_none());
        s.put(RecordKind::Session, K, 100, b"sealed").await.unwrap();
        assert_eq!(
            s.get(RecordKind::Session, K).await.unwrap().unwrap(),
            b"sealed"
        );
        s.put(RecordKind::Session, K2, 100, b"login").await.unwrap();
        assert_eq!(
            s.take(RecordKind::Session, K2).await.unwrap().unwrap(),
            b"login"
        );
        assert!(
            s.take(RecordKind::Session, K2).await.unwrap().is_none(),
            "single use"
        );
        // Sweep removes only what expired.
        assert_eq!(s.sweep(100).await.unwrap(), 0);
        assert_eq!(s.sweep(101).await.unwrap(), 1);
        assert!(s.get(RecordKind::Session, K).await.unwrap().is_none());
        s.delete(RecordKind::Session, K).await.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn keys_that_are_not_hashes_are_refused() {
        let d = tmp();
        let s = FileStore::open(&d).unwrap();
        for bad in ["../x", "", "ABCD", &"a".repeat(65)] {
            assert!(s.get(RecordKind::Session, bad).await.is_err(), "{bad}");
            assert!(s.put(RecordKind::Session, bad, 1, b"x").await.is_err());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn records_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tmp();
        let s = FileStore::open(&d).unwrap();
        s.put(RecordKind::Session, K, 1, b"x").await.unwrap();
        let mode = std::fs::metadata(d.join("sessions").join(K))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn concurrent_takes_give_the_record_once() {
        let d = tmp();
        let s = std::sync::Arc::new(FileStore::open(&d).unwrap());
        for round in 0..20 {
            s.put(RecordKind::Session, K2, 100, b"once").await.unwrap();
            let a = tokio::spawn({
                let s = s.clone();
                async move { s.take(RecordKind::Session, K2).await.unwrap() }
            });
            let b = tokio::spawn({
                let s = s.clone();
                async move { s.take(RecordKind::Session, K2).await.unwrap() }
            });
            let got = [a.await.unwrap(), b.await.unwrap()];
            assert_eq!(
                got.iter().filter(|g| g.is_some()).count(),
                1,
                "round {round}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
