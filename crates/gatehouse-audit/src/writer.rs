//! The single writer: bounded channel in, batched appends with `fdatasync` out.

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
}

type FlushHook = Box<dyn Fn(FlushStats) + Send>;

/// The sending side of the audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    healthy: Arc<AtomicBool>,
}

/// A reserved place in the audit queue: holding one guarantees the record can be queued.
#[derive(Debug)]
pub struct AuditSlot {
    permit: mpsc::OwnedPermit<AuditRecord>,
}

impl AuditSlot {
    /// Queues the record for writing.
    pub fn send(self, record: AuditRecord) {
        self.permit.send(record);
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
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&opts.path)
            .map_err(io)?;
        let (seq, prev) = read_tail(&mut file, &opts.path)?;
        let meta = file.metadata().ok();
        let regular = meta.as_ref().is_some_and(std::fs::Metadata::is_file);
        let len = meta.map_or(0, |m| m.len());
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            file,
            regular,
            len,
            head_path: ChainHead::path_for(&opts.path),
            seq,
            prev,
            healthy: healthy.clone(),
            batch_max: opts.batch_max.max(1),
            flush_interval: opts.flush_interval,
            head_written: None,
            on_flush,
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok((AuditSink { tx, healthy }, handle))
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
            .send(record)
            .await
            .map_err(|_| AuditUnavailable::Closed)
    }
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
    batch_max: usize,
    flush_interval: Duration,
    on_flush: Option<FlushHook>,
    /// When the head file was last written; it is rewritten at most every `HEAD_INTERVAL`
    /// and when the writer stops.
    head_written: Option<Instant>,
}

/// The head file (open, write, sync, rename) is rewritten at most this often under load.
const HEAD_INTERVAL: Duration = Duration::from_millis(100);

/// How long after its last batch the writer keeps polling the queue rather than waiting on it.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<AuditRecord>) {
        self.run_batches(rx);
        // The last batches may have skipped the head update; bring it up to date.
        if self.seq > 0
            && let Err(e) = self.write_head()
        {
            tracing::warn!(error = %e, "audit head file not updated at shutdown");
        }
    }

    fn run_batches(&mut self, mut rx: mpsc::Receiver<AuditRecord>) {
        let mut pending: Vec<AuditRecord> = Vec::new();
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
            // Group commit: gather what arrives until the interval since the last batch is over.
            if let Some(t) = last_flush {
                let wait = self.flush_interval.saturating_sub(t.elapsed());
                if !wait.is_zero() && !closed {
                    std::thread::sleep(wait);
                }
            }
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
            let started = Instant::now();
            last_flush = Some(started);
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
                    pending.clear();
                    failures = 0;
                    self.healthy.store(true, Ordering::Release);
                }
                Err(e) => {
                    failures += 1;
                    self.healthy.store(false, Ordering::Release);
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
        &self,
        rx: &mut mpsc::Receiver<AuditRecord>,
        last_flush: Option<Instant>,
    ) -> Option<AuditRecord> {
        if !self.flush_interval.is_zero()
            && let Some(last) = last_flush
        {
            while last.elapsed() < ACTIVE_WINDOW {
                match rx.try_recv() {
                    Ok(r) => return Some(r),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(self.flush_interval)
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                }
            }
        }
        rx.blocking_recv()
    }

    /// Appends a batch and syncs it. On failure the file is cut back to where it was, so that a
    /// torn batch never stays in the chain, and the batch is retried later.
    fn append(&mut self, batch: &[AuditRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut seq = self.seq;
        let mut prev = self.prev.clone();
        for record in batch {
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
        self.seq = seq;
        self.prev = prev;
        // The batch is durable. A head that fails to update only lags the log, which `verify`
        // accepts; retrying the batch would write it twice.
        if self
            .head_written
            .is_some_and(|t| t.elapsed() < HEAD_INTERVAL)
        {
            return Ok(());
        }
        self.head_written = Some(Instant::now());
        if let Err(e) = self.write_head() {
            tracing::warn!(error = %e, "audit head file not updated; truncation checks lag until the next batch");
        }
        Ok(())
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
        std::fs::rename(&tmp, &self.head_path)
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
