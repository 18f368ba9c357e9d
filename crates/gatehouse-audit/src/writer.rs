//! The single writer: bounded channel in, batched appends with `fdatasync` out.
//!
//! Most records are group-committed: the request that queued one never waits for the disk. A
//! record queued with [`AuditSink::commit`] is one its request waits for: the writer takes it
//! at once (no gathering interval), and the caller learns its sequence number once it is synced.
//! The gateway commits the decision of every request that can change the forge this way before
//! forwarding it, so that no crash can lose the record of a write the forge applied.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::chain::{ChainHead, GENESIS, hash_line};
use crate::record::AuditRecord;

/// How the audit log is written.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The log file (appended to; created when missing).
    pub path: PathBuf,
    /// How many records may wait for the writer; when full, requests are refused.
    pub queue_capacity: usize,
    /// The most records written per batch.
    pub batch_max: usize,
    /// The writer waits at least this long between batches, gathering records: a bound on
    /// wake-ups and fsyncs under load (responses never wait for it). Zero writes at once.
    pub flush_interval: Duration,
    /// Start a new file once the log reaches this many bytes (see [`crate::rotated_parts`]).
    pub rotate_size: Option<u64>,
    /// Start a new file once this process has written to the current one for this long.
    pub rotate_age: Option<Duration>,
}

/// What one flush did, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct FlushStats {
    /// Records in the batch.
    pub records: usize,
    /// Time spent writing and syncing.
    pub duration: Duration,
    /// Whether the batch reached the disk.
    pub ok: bool,
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be opened, read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The existing log ends in a partial or unreadable record; appending would break the chain.
    #[error(
        "audit log {path} ends in a damaged record ({why}); run `gatehouse audit verify {path}` and repair it before starting"
    )]
    DamagedTail {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Why a request cannot be audited now (and so must be refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditUnavailable {
    /// The last write to the log failed.
    #[error("audit log write failed")]
    WriteFailed,
    /// The writer is behind by the whole queue.
    #[error("audit queue full")]
    QueueFull,
    /// The writer has stopped.
    #[error("audit writer stopped")]
    Closed,
    /// A committed record was not synced in time (the disk stalls).
    #[error("audit log sync took too long")]
    SyncTimeout,
    /// A push's record is durable but its ref updates could not be added to the push index.
    #[error("push index write failed")]
    PushIndexFailed,
}

/// One ref update of a push the policy allowed, for the push index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRef {
    /// `owner/name`.
    pub repo: String,
    /// The full ref name.
    pub git_ref: String,
    /// The new object id.
    pub commit: String,
    /// The sequence number of the `forwarding` record that announced it.
    pub seq: u64,
    /// When the request arrived, seconds since the epoch.
    pub at: i64,
    /// Who pushed (user name).
    pub by: String,
    /// The object id the ref had before.
    pub old: String,
    /// The pusher's issuer.
    pub issuer: String,
    /// The pusher's subject there.
    pub subject: String,
}

/// Where the ref updates of allowed pushes go once their `forwarding` record is durable, and
/// before the push is forwarded (the app implements it over the store): the audit's push index,
/// which provenance checks read.
pub trait PushIndexSink: Send + Sync + std::fmt::Debug {
    /// Records the ref updates of one push, unconfirmed; `Err` says why not.
    fn index<'a>(
        &'a self,
        refs: &'a [PushedRef],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

    /// Confirms the refs of the push announced by record `seq` that the forge's report said
    /// `ok` to.
    fn confirm<'a>(
        &'a self,
        seq: u64,
        refs: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The ref updates of an allowed push `record`, to a new object or deleting the ref: what the
/// index keeps.
fn pushed_refs(record: &AuditRecord) -> Vec<PushedRef> {
    let (Some(repo), Some(refs), Some(p)) = (&record.repo, &record.refs, &record.principal) else {
        return Vec::new();
    };
    if record.event != "forwarding" || record.decision != Some("allow") {
        return Vec::new();
    }
    let is_oid = |s: &str| {
        matches!(s.len(), 40 | 64)
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && s.bytes().any(|b| b != b'0')
    };
    let is_zero = |s: &str| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b == b'0');
    // Updates to an object and deletions of a ref (so that a push event reporting a deletion
    // made through Gatehouse finds it too); provenance reads only the former.
    refs.iter()
        .filter(|r| {
            r.decision == "allow" && (is_oid(&r.new) || (is_zero(&r.new) && is_oid(&r.old)))
        })
        .map(|r| PushedRef {
            repo: repo.clone(),
            git_ref: r.name.clone(),
            commit: r.new.to_ascii_lowercase(),
            seq: 0,
            at: record.time.as_secs(),
            by: p.username().to_owned(),
            old: r.old.to_ascii_lowercase(),
            issuer: p.principal().issuer.clone(),
            subject: p.principal().subject.clone(),
        })
        .collect()
}

/// How long [`AuditSink::commit`] waits for a place in the queue, and then for the sync.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

type FlushHook = Box<dyn Fn(FlushStats) + Send>;

/// Who waits for a committed record: told its sequence number once it is synced, or why not.
type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditUnavailable>>;

/// One record in the queue, and whoever waits for it to be durable.
#[derive(Debug)]
struct Entry {
    record: AuditRecord,
    ack: Option<Ack>,
}

/// The sending side of the audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Entry>,
    healthy: Arc<AtomicBool>,
    /// Set by [`AuditSink::commit`]: the writer stops gathering and writes now.
    urgent: Arc<AtomicBool>,
    /// The writer thread, woken (unparked) by a commit.
    writer: std::thread::Thread,
    /// The push index, when one is kept.
    index: Option<Arc<dyn PushIndexSink>>,
}

/// A reserved place in the audit queue: holding one guarantees the record can be queued.
#[derive(Debug)]
pub struct AuditSlot {
    permit: mpsc::OwnedPermit<Entry>,
}

impl AuditSlot {
    /// Queues the record for writing.
    pub fn send(self, record: AuditRecord) {
        self.permit.send(Entry { record, ack: None });
    }
}

impl AuditSink {
    /// Opens (or creates) the log, resumes its chain, and starts the writer thread. Returns the
    /// sink and the writer's handle: the writer ends once every sink clone is dropped and the
    /// queue is drained; join the handle to wait for that.
    pub fn open(
        opts: &AuditOptions,
        on_flush: Option<FlushHook>,
    ) -> Result<(AuditSink, std::thread::JoinHandle<()>), OpenError> {
        let io = |source| OpenError::Io {
            path: opts.path.display().to_string(),
            source,
        };
        recover_rotation(&opts.path).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&opts.path)
            .map_err(io)?;
        let (seq, prev) = read_tail(&mut file, &opts.path)?;
        let first_seq = read_first_seq(&mut file, &opts.path)?;
        let meta = file.metadata().ok();
        let regular = meta.as_ref().is_some_and(std::fs::Metadata::is_file);
        let len = meta.map_or(0, |m| m.len());
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let urgent = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            urgent: urgent.clone(),
            file,
            path: opts.path.clone(),
            first_seq,
            file_since: Instant::now(),
            rotate_size: opts.rotate_size,
            rotate_age: opts.rotate_age,
            rotate_retry: None,
            at_next: false,
            regular,
            len,
            head_path: ChainHead::path_for(&opts.path),
            seq,
            prev,
            healthy: healthy.clone(),
            batch_max: opts.batch_max.max(1),
            flush_interval: opts.flush_interval,
            head_written: None,
            head_behind: false,
            on_flush,
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        let sink = AuditSink {
            tx,
            healthy,
            urgent,
            writer: handle.thread().clone(),
            index: None,
        };
        Ok((sink, handle))
    }

    /// Reserves a place for one record, or says why the request must be refused.
    pub fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(AuditUnavailable::WriteFailed);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(AuditSlot { permit }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(AuditUnavailable::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditUnavailable::Closed),
        }
    }

    /// Whether the last write reached the disk.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Queues a record, waiting for room. For events outside the request path (start, stop).
    pub async fn send(&self, record: AuditRecord) -> Result<(), AuditUnavailable> {
        self.tx
            .send(Entry { record, ack: None })
            .await
            .map_err(|_| AuditUnavailable::Closed)
    }

    /// Writes the record and returns once it is durable (appended to the chain and synced), with
    /// its sequence number; or says why it is not, in which case the caller must not go on with
    /// what the record announces. Waits at most [`COMMIT_TIMEOUT`] for a place in the queue and
    /// as long again for the sync. Concurrent commits share one sync.
    ///
    /// With a push index ([`AuditSink::with_push_index`]), a `forwarding` record's allowed ref
    /// updates are indexed after the record is durable and before this returns; a failure to
    /// index is an error like a failure to write.
    pub async fn commit(&self, record: AuditRecord) -> Result<u64, AuditUnavailable> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(AuditUnavailable::WriteFailed);
        }
        let pushed = match &self.index {
            Some(_) => pushed_refs(&record),
            None => Vec::new(),
        };
        let permit = match tokio::time::timeout(COMMIT_TIMEOUT, self.tx.reserve()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(AuditUnavailable::Closed),
            Err(_) => return Err(AuditUnavailable::QueueFull),
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        permit.send(Entry {
            record,
            ack: Some(ack),
        });
        self.urgent.store(true, Ordering::Release);
        self.writer.unpark();
        let seq = match tokio::time::timeout(COMMIT_TIMEOUT, done).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(AuditUnavailable::Closed),
            Err(_) => return Err(AuditUnavailable::SyncTimeout),
        };
        if let (Some(index), false) = (&self.index, pushed.is_empty()) {
            let pushed: Vec<PushedRef> =
                pushed.into_iter().map(|p| PushedRef { seq, ..p }).collect();
            match tokio::time::timeout(COMMIT_TIMEOUT, index.index(&pushed)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, seq, "the push index was not written");
                    return Err(AuditUnavailable::PushIndexFailed);
                }
                Err(_) => {
                    tracing::error!(seq, "the push index did not answer in time");
                    return Err(AuditUnavailable::PushIndexFailed);
                }
            }
        }
        Ok(seq)
    }

    /// The forge's report on the push announced by record `seq` said `ok` to `refs`: confirms
    /// them in the push index (in the background; a failure is logged, and the push stays
    /// unconfirmed, which a provenance check reads as not pushed).
    pub fn confirm_pushed(&self, seq: u64, refs: Vec<String>) {
        let (Some(index), false) = (self.index.clone(), refs.is_empty()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            match tokio::time::timeout(COMMIT_TIMEOUT, index.confirm(seq, &refs)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, seq, "a push was not confirmed in the push index")
                }
                Err(_) => tracing::error!(
                    seq,
                    "the push index did not answer in time; a push stays unconfirmed"
                ),
            }
        });
    }

    /// Whether allowed pushes are indexed.
    pub fn indexes_pushes(&self) -> bool {
        self.index.is_some()
    }

    /// Keeps a push index: see [`AuditSink::commit`].
    pub fn with_push_index(mut self, index: Option<Arc<dyn PushIndexSink>>) -> Self {
        self.index = index;
        self
    }
}

/// Where a rotated-out file holding records `first..=last` of `log` goes: `<log>.<first>-<last>`.
fn rotated_path(log: &Path, first: u64, last: u64) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(format!(".{first}-{last}"));
    PathBuf::from(p)
}

/// Where the next file is prepared during a rotation.
fn next_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

/// Finishes or discards a rotation a crash interrupted: a `.next` file without the log is the new
/// log (the old one was already renamed aside); beside the log it was never committed.
fn recover_rotation(log: &Path) -> std::io::Result<()> {
    let next = next_path(log);
    if !next.exists() {
        return Ok(());
    }
    if log.exists() {
        std::fs::remove_file(&next)
    } else {
        std::fs::rename(&next, log)?;
        sync_dir(log)
    }
}

/// Syncs the directory holding `path`, so that a rename in it survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The sequence number of an existing log's first record (0 when it is empty).
fn read_first_seq(file: &mut File, path: &Path) -> Result<u64, OpenError> {
    let io = |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    };
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut line = Vec::new();
    std::io::BufRead::read_until(
        &mut std::io::BufReader::new(file.take(1 << 20)),
        b'\n',
        &mut line,
    )
    .map_err(io)?;
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
    }
    serde_json::from_slice::<Link>(line.trim_ascii_end())
        .map(|l| l.seq)
        .map_err(|e| OpenError::DamagedTail {
            path: path.display().to_string(),
            why: format!("the first record is unreadable: {e}"),
        })
}

/// Reads the last record of an existing log: its sequence number and hash.
fn read_tail(file: &mut File, path: &Path) -> Result<(u64, String), OpenError> {
    let io = |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok((0, GENESIS.to_owned()));
    }
    let len = meta.len();
    let damaged = |why: String| OpenError::DamagedTail {
        path: path.display().to_string(),
        why,
    };
    // Read backwards until the start of the last line is found.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    let chunk = 64 * 1024u64;
    loop {
        let start = pos.saturating_sub(chunk);
        let mut buf = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        buf.extend_from_slice(&tail);
        tail = buf;
        pos = start;
        if tail.last() != Some(&b'\n') {
            return Err(damaged("the last record has no newline".into()));
        }
        let body = &tail[..tail.len() - 1];
        if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
            tail = body[i + 1..].to_vec();
            break;
        }
        if pos == 0 {
            tail = body.to_vec();
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
    }
    let link: Link = serde_json::from_slice(&tail).map_err(|e| damaged(e.to_string()))?;
    Ok((link.seq, hash_line(&tail)))
}

struct Writer {
    file: File,
    path: PathBuf,
    /// The sequence number of the current file's first record (0 while it is empty).
    first_seq: u64,
    /// When this process started writing the current file.
    file_since: Instant,
    rotate_size: Option<u64>,
    rotate_age: Option<Duration>,
    /// After a failed rotation, not before this.
    rotate_retry: Option<Instant>,
    /// The current file is still named `<log>.next`: the last step of a rotation failed.
    at_next: bool,
    /// A regular file (synced, truncated back on failure, with a head file); otherwise a device
    /// or pipe.
    regular: bool,
    /// The file's length after the last durable batch (kept here: a `stat` per batch showed up in
    /// profiles).
    len: u64,
    head_path: PathBuf,
    seq: u64,
    prev: String,
    healthy: Arc<AtomicBool>,
    /// A commit is waiting: write without gathering.
    urgent: Arc<AtomicBool>,
    batch_max: usize,
    flush_interval: Duration,
    on_flush: Option<FlushHook>,
    /// When the head file was last written; it is rewritten at most every `HEAD_INTERVAL`
    /// and when the writer stops.
    head_written: Option<Instant>,
    /// A durable batch skipped the head update: the head lags the log until it is rewritten,
    /// which happens before the writer waits idle.
    head_behind: bool,
}

/// After a failed rotation, the next attempt waits this long.
const ROTATE_RETRY: Duration = Duration::from_secs(60);

/// The head file (open, write, sync, rename) is rewritten at most this often under load.
const HEAD_INTERVAL: Duration = Duration::from_millis(100);

/// How long after its last batch the writer keeps polling the queue rather than waiting on it.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Entry>) {
        self.run_batches(rx);
        // The last batches may have skipped the head update; bring it up to date.
        if self.seq > 0
            && let Err(e) = self.write_head()
        {
            tracing::warn!(error = %e, "audit head file not updated at shutdown");
        }
    }

    fn run_batches(&mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut pending: Vec<Entry> = Vec::new();
        let mut closed = false;
        let mut failures = 0u32;
        let mut last_flush: Option<Instant> = None;
        loop {
            if pending.is_empty() {
                match self.next_record(&mut rx, last_flush) {
                    Some(r) => pending.push(r),
                    None => break,
                }
            }
            // Group commit: gather what arrives until the interval since the last batch is over,
            // unless someone waits for a record (a commit), which is written now.
            if let Some(t) = last_flush {
                let deadline = t + self.flush_interval;
                while !closed
                    && !self.urgent.load(Ordering::Acquire)
                    && !pending.iter().any(|e| e.ack.is_some())
                {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
            // Commits queued from here on make the next batch urgent.
            let was_urgent = self.urgent.swap(false, Ordering::AcqRel);
            while pending.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(r) => pending.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // A full batch may have left the commit behind it in the queue: the next batch is
            // still urgent.
            if was_urgent && pending.len() >= self.batch_max {
                self.urgent.store(true, Ordering::Release);
            }
            let started = Instant::now();
            last_flush = Some(started);
            let first_seq = self.seq + 1;
            let result = self.append(&pending);
            let ok = result.is_ok();
            if let Some(hook) = &self.on_flush {
                hook(FlushStats {
                    records: pending.len(),
                    duration: started.elapsed(),
                    ok,
                });
            }
            match result {
                Ok(()) => {
                    for (seq, entry) in (first_seq..).zip(pending.drain(..)) {
                        if let Some(ack) = entry.ack {
                            let _ = ack.send(Ok(seq));
                        }
                    }
                    failures = 0;
                    self.healthy.store(true, Ordering::Release);
                }
                Err(e) => {
                    failures += 1;
                    self.healthy.store(false, Ordering::Release);
                    // Whoever waits for a record is told now and does not go on (its request is
                    // refused, and its own completion record says so); the others are retried.
                    pending.retain_mut(|entry| match entry.ack.take() {
                        Some(ack) => {
                            let _ = ack.send(Err(AuditUnavailable::WriteFailed));
                            false
                        }
                        None => true,
                    });
                    tracing::error!(error = %e, queued = pending.len(), "audit log write failed; refusing requests until it succeeds");
                    if closed && failures >= 5 {
                        tracing::error!(lost = pending.len(), "audit writer giving up at shutdown");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            if closed && pending.is_empty() && rx.is_empty() {
                break;
            }
        }
    }

    /// Waits for the first record of the next batch; `None` once every sink is gone.
    ///
    /// While records keep coming (a batch was written less than `ACTIVE_WINDOW` ago) the writer
    /// looks at the queue once per flush interval instead of waiting on it: a writer that waits
    /// must be woken by whoever queues the next record, and that wake-up (a futex call, often a
    /// cross-CPU interrupt) would land on a request's path. Idle, it waits and costs nothing.
    fn next_record(
        &mut self,
        rx: &mut mpsc::Receiver<Entry>,
        last_flush: Option<Instant>,
    ) -> Option<Entry> {
        if !self.flush_interval.is_zero()
            && let Some(last) = last_flush
        {
            while last.elapsed() < ACTIVE_WINDOW {
                match rx.try_recv() {
                    Ok(r) => return Some(r),
                    // A commit unparks the thread: it is not kept waiting for the interval.
                    Err(mpsc::error::TryRecvError::Empty) => std::thread::park_timeout(
                        self.flush_interval
                            .min(ACTIVE_WINDOW.saturating_sub(last.elapsed())),
                    ),
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                }
            }
        }
        // Going idle: bring the head up to date first, so that cutting the last records of a
        // burst off the log cannot pass `verify` however long the quiet lasts.
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if self.head_behind {
            self.head_written = Some(Instant::now());
            if let Err(e) = self.write_head() {
                tracing::warn!(error = %e, "audit head file not updated; truncation checks lag until the next batch");
            }
        }
        rx.blocking_recv()
    }

    /// Appends a batch and syncs it. On failure the file is cut back to where it was, so that a
    /// torn batch never stays in the chain, and the batch is retried later.
    fn append(&mut self, batch: &[Entry]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut seq = self.seq;
        let mut prev = self.prev.clone();
        for Entry { record, .. } in batch {
            seq += 1;
            let start = buf.len();
            write_entry(&mut buf, seq, &prev, record)?;
            prev = hash_line(&buf[start..]);
            buf.push(b'\n');
        }
        // A pipe or terminal cannot be synced; a regular file must be.
        let result = self.file.write_all(&buf).and_then(|()| {
            if self.regular {
                self.file.sync_data()
            } else {
                self.file.flush()
            }
        });
        if let Err(e) = result {
            if self.regular {
                let _ = self.file.set_len(self.len);
            }
            return Err(e);
        }
        self.len += buf.len() as u64;
        if self.first_seq == 0 && seq > self.seq {
            self.first_seq = self.seq + 1;
        }
        self.seq = seq;
        self.prev = prev;
        if self.rotation_due() {
            let time = batch.last().map(|e| e.record.time).unwrap_or_default();
            match self.rotate(time) {
                Ok(()) => {
                    self.rotate_retry = None;
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %self.path.display(), "audit log rotation failed; writing on in the current file and trying again in a minute");
                    self.rotate_retry = Some(Instant::now() + ROTATE_RETRY);
                }
            }
        }
        // The batch is durable. A head that fails to update only lags the log, which `verify`
        // accepts; retrying the batch would write it twice.
        if self
            .head_written
            .is_some_and(|t| t.elapsed() < HEAD_INTERVAL)
        {
            self.head_behind = true;
            return Ok(());
        }
        self.head_written = Some(Instant::now());
        if let Err(e) = self.write_head() {
            tracing::warn!(error = %e, "audit head file not updated; truncation checks lag until the next batch");
        }
        Ok(())
    }

    fn rotation_due(&self) -> bool {
        self.regular
            && self.first_seq > 0
            && self.rotate_retry.is_none_or(|t| Instant::now() >= t)
            && (self.at_next
                || self.rotate_size.is_some_and(|max| self.len >= max)
                || self
                    .rotate_age
                    .is_some_and(|age| self.file_since.elapsed() >= age))
    }

    /// Moves the full file aside as `<log>.<first>-<last>` and continues the chain in a new file
    /// whose first record (`audit_continued`) links to the last one of the old. The new file is
    /// written and synced under `<log>.next` before the old one is renamed, so that a crash at any
    /// point leaves either the old log in place (and a stale `.next`, removed at the next start)
    /// or the new one under `.next` (renamed into place at the next start).
    fn rotate(&mut self, time: gatehouse_core::UnixTime) -> std::io::Result<()> {
        let rotated = rotated_path(&self.path, self.first_seq, self.seq);
        let next = next_path(&self.path);
        if self.at_next {
            // The last rotation could not give the new file the log's name: do that first.
            std::fs::rename(&next, &self.path)?;
            self.at_next = false;
            return sync_dir(&self.path);
        }
        if rotated.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists (a file of another chain?); move it away",
                    rotated.display()
                ),
            ));
        }
        match std::fs::remove_file(&next) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut new = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&next)?;
        let marker = AuditRecord {
            time,
            event: "audit_continued",
            detail: Some(format!(
                "continues {}",
                rotated.file_name().map_or_else(
                    || rotated.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            )),
            ..AuditRecord::default()
        };
        let mut buf = Vec::with_capacity(256);
        write_entry(&mut buf, self.seq + 1, &self.prev, &marker)?;
        let hash = hash_line(&buf);
        buf.push(b'\n');
        let written = new.write_all(&buf).and_then(|()| new.sync_data());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
        // The chain now continues in the new file, whatever its name.
        self.file = new;
        self.len = buf.len() as u64;
        self.seq += 1;
        self.prev = hash;
        self.first_seq = self.seq;
        self.file_since = Instant::now();
        if let Err(e) = std::fs::rename(&next, &self.path) {
            self.at_next = true;
            return Err(e);
        }
        sync_dir(&self.path)?;
        tracing::info!(rotated = %rotated.display(), "audit log rotated");
        self.head_written = Some(Instant::now());
        self.write_head()
    }

    fn write_head(&mut self) -> std::io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        let head = ChainHead {
            seq: self.seq,
            hash: self.prev.clone(),
        };
        let tmp = self.head_path.with_extension("head.tmp");
        // One write: serde_json on an unbuffered file makes a syscall per token.
        let bytes = serde_json::to_vec(&head)?;
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.head_path)?;
        self.head_behind = false;
        Ok(())
    }
}

/// One line of the log, without its newline: `{"seq":N,"prev":"HASH",` then the record's own
/// fields in their order. The record is serialized as a struct and its opening brace replaced,
/// which writes the same bytes as a map with the record flattened into it, for less work.
fn write_entry(
    buf: &mut Vec<u8>,
    seq: u64,
    prev: &str,
    record: &AuditRecord,
) -> serde_json::Result<()> {
    buf.extend_from_slice(b"{\"seq\":");
    serde_json::to_writer(&mut *buf, &seq)?;
    buf.extend_from_slice(b",\"prev\":");
    serde_json::to_writer(&mut *buf, prev)?;
    let body = buf.len();
    serde_json::to_writer(&mut *buf, record)?;
    if buf.len() - body == 2 {
        // `{}`: a record without fields.
        buf.truncate(body);
        buf.push(b'}');
    } else {
        buf[body] = b',';
    }
    Ok(())
}

#[cfg(test)]
mod tests;
