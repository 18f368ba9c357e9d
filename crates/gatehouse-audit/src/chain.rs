//! The hash chain and its verification.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex SHA-256 of one line, without its newline.
pub fn hash_line(line: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// The last record written, kept beside the log in `<log>.head` so that removing records from
/// the end of the log is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The last record's sequence number.
    pub seq: u64,
    /// The hash of the last record's line.
    pub hash: String,
}

impl ChainHead {
    /// Where the head of `log` is kept.
    pub fn path_for(log: &Path) -> PathBuf {
        let mut p = log.as_os_str().to_owned();
        p.push(".head");
        PathBuf::from(p)
    }
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many records were verified, across the rotated-out files and the log.
    pub records: u64,
    /// The head record, if the log is not empty.
    pub head: Option<ChainHead>,
    /// Whether a `.head` file was found and matched.
    pub head_checked: bool,
    /// The first record verified: 1, or later when older files were rotated out and removed.
    pub first_seq: u64,
    /// The rotated-out files verified before the log, oldest first.
    pub rotated: Vec<PathBuf>,
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The log could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// A line is not a JSON object with `seq` and `prev`.
    #[error("line {line}: not an audit record ({message})")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The last line has no newline: the log was cut in the middle of a record.
    #[error("line {line}: incomplete last record (the log was truncated or a write was torn)")]
    TornTail {
        /// 1-based line number.
        line: u64,
    },
    /// `seq` does not follow the previous record's.
    #[error(
        "line {line}: sequence number {found}, expected {expected} (records deleted, inserted or reordered)"
    )]
    Sequence {
        /// 1-based line number.
        line: u64,
        /// The expected number.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// `prev` is not the hash of the previous line.
    #[error("line {line}: hash chain broken: the previous record was edited, deleted or reordered")]
    Chain {
        /// 1-based line number.
        line: u64,
    },
    /// The head file names a later record than the log holds, or another hash.
    #[error("log ends at record {log_seq} but {head_file} records {head_seq}: {what}")]
    Head {
        /// The head file.
        head_file: String,
        /// The log's last sequence number.
        log_seq: u64,
        /// The head's sequence number.
        head_seq: u64,
        /// What does not match.
        what: &'static str,
    },
    /// A rotated-out file does not hold the records its name says (renamed, emptied or swapped).
    #[error("{file}: its name says records {first}-{last}, it holds {what}")]
    Misnamed {
        /// The file.
        file: String,
        /// The first record its name gives.
        first: u64,
        /// The last record its name gives.
        last: u64,
        /// What it holds.
        what: String,
    },
    /// A rotated-out file is broken.
    #[error("{file}: {source}")]
    Rotated {
        /// The file.
        file: String,
        /// What is wrong in it.
        #[source]
        source: Box<VerifyError>,
    },
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
    #[serde(default)]
    event: Option<String>,
}

/// The event that starts a file continuing the chain of a rotated-out one.
pub(crate) const CONTINUED: &str = "audit_continued";

/// The rotated-out files of `log` in its directory (`<log>.<first>-<last>`), oldest first, with
/// the record range each name gives.
pub fn rotated_parts(log: &Path) -> std::io::Result<Vec<(u64, u64, PathBuf)>> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(range) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.split_once('-'))
        else {
            continue;
        };
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        if let (Some(first), Some(last)) = (number(range.0), number(range.1)) {
            parts.push((first, last, dir.join(&file_name)));
        }
    }
    parts.sort();
    Ok(parts)
}

/// What one file of the chain holds.
struct FileChain {
    /// First and last sequence numbers (0, 0 when empty).
    first: u64,
    last: u64,
    /// Hash of the last line (the incoming `prev` when empty).
    last_hash: String,
}

/// Verifies the chain within one file. `from` is where the previous file ended (next sequence
/// number and hash); without it the file must start the chain (`seq` 1, `prev` [`GENESIS`]) or
/// continue a rotated-out file that is gone (its first record an `audit_continued` event).
fn verify_file(path: &Path, from: Option<(u64, String)>) -> Result<FileChain, VerifyError> {
    let io = |e: std::io::Error| VerifyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let (mut expected_seq, mut prev_hash) = from.clone().unwrap_or((1, GENESIS.to_owned()));
    let mut first = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Err(VerifyError::TornTail { line: line_no });
        }
        buf.pop();
        let link: Link = serde_json::from_slice(&buf).map_err(|e| VerifyError::Malformed {
            line: line_no,
            message: e.to_string(),
        })?;
        // A file that continues one no longer present: the chain is taken up from its first
        // record, which only the writer's rotation puts there.
        if line_no == 1
            && from.is_none()
            && link.seq > 1
            && link.event.as_deref() == Some(CONTINUED)
        {
            expected_seq = link.seq;
            prev_hash = link.prev.clone();
        }
        if link.seq != expected_seq {
            return Err(VerifyError::Sequence {
                line: line_no,
                expected: expected_seq,
                found: link.seq,
            });
        }
        if link.prev != prev_hash {
            return Err(VerifyError::Chain { line: line_no });
        }
        if line_no == 1 {
            first = link.seq;
        }
        prev_hash = hash_line(&buf);
        expected_seq += 1;
    }
    Ok(FileChain {
        first,
        last: if first == 0 { 0 } else { expected_seq - 1 },
        last_hash: prev_hash,
    })
}

/// Verifies a log, the rotated-out files beside it (`<log>.<first>-<last>`, see
/// [`rotated_parts`]) as one chain with it, and, when present, its `.head` file. Rotated-out
/// files may be removed oldest first (retention); one missing in the middle breaks the chain.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io = |e: std::io::Error, p: &Path| VerifyError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let parts = rotated_parts(path).map_err(|e| io(e, path))?;
    let mut from: Option<(u64, String)> = None;
    let mut first_seq = None;
    let mut rotated = Vec::new();
    // Each file's first and last record and path, for the head check.
    let mut spans: Vec<(u64, u64, PathBuf)> = Vec::new();
    for (first, last, part) in &parts {
        let file = part.display().to_string();
        let chain = verify_file(part, from.take()).map_err(|e| VerifyError::Rotated {
            file: file.clone(),
            source: Box::new(e),
        })?;
        if chain.first != *first || chain.last != *last {
            return Err(VerifyError::Misnamed {
                file,
                first: *first,
                last: *last,
                what: if chain.first == 0 {
                    "no records".to_owned()
                } else {
                    format!("records {}-{}", chain.first, chain.last)
                },
            });
        }
        first_seq.get_or_insert(chain.first);
        spans.push((chain.first, chain.last, part.clone()));
        rotated.push(part.clone());
        from = Some((chain.last + 1, chain.last_hash));
    }
    let live = verify_file(path, from.clone())?;
    if live.first != 0 {
        first_seq.get_or_insert(live.first);
        spans.push((live.first, live.last, path.to_owned()));
    }
    let (last_seq, last_hash) = match (&live, &from) {
        (l, _) if l.first != 0 => (l.last, l.last_hash.clone()),
        (_, Some((next, hash))) => (next - 1, hash.clone()),
        _ => (0, GENESIS.to_owned()),
    };
    let first_seq = first_seq.unwrap_or(0);
    let records = if last_seq == 0 {
        0
    } else {
        last_seq - first_seq + 1
    };
    let head = (last_seq > 0).then(|| ChainHead {
        seq: last_seq,
        hash: last_hash.clone(),
    });
    let head_path = ChainHead::path_for(path);
    let mut head_checked = false;
    if let Ok(mut f) = File::open(&head_path) {
        let mut s = String::new();
        f.read_to_string(&mut s).map_err(|e| io(e, &head_path))?;
        let recorded: ChainHead = serde_json::from_str(&s).map_err(|e| VerifyError::Malformed {
            line: 0,
            message: format!("{}: {e}", head_path.display()),
        })?;
        let head_file = head_path.display().to_string();
        if recorded.seq > last_seq {
            return Err(VerifyError::Head {
                head_file,
                log_seq: last_seq,
                head_seq: recorded.seq,
                what: "records were removed from the end of the log",
            });
        }
        // The head may lag the log by the batch being written when the process stopped; the
        // record it names must still be in the chain unchanged.
        if recorded.seq == last_seq && recorded.hash != last_hash {
            return Err(VerifyError::Head {
                head_file,
                log_seq: last_seq,
                head_seq: recorded.seq,
                what: "the last record was edited",
            });
        }
        if recorded.seq < last_seq && recorded.seq > 0 {
            // A head older than every file left is not checked (its file was removed).
            if let Some((first, _, file)) = spans
                .iter()
                .find(|(a, b, _)| (*a..=*b).contains(&recorded.seq))
                && !hash_at(file, recorded.seq - first, &recorded.hash)?
            {
                return Err(VerifyError::Head {
                    head_file,
                    log_seq: last_seq,
                    head_seq: recorded.seq,
                    what: "the record it names was edited",
                });
            }
        }
        head_checked = true;
    }
    Ok(VerifyReport {
        records,
        head,
        head_checked,
        first_seq,
        rotated,
    })
}

/// Whether line `index` (0-based) of a file (already verified as a chain) hashes to `hash`.
fn hash_at(path: &Path, index: u64, hash: &str) -> Result<bool, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let line = BufReader::new(file)
        .split(b'\n')
        .nth(usize::try_from(index).unwrap_or(usize::MAX));
    Ok(matches!(line, Some(Ok(l)) if hash_line(&l) == hash))
}
