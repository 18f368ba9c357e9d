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
    /// How many records the log holds.
    pub records: u64,
    /// The head record, if the log is not empty.
    pub head: Option<ChainHead>,
    /// Whether a `.head` file was found and matched.
    pub head_checked: bool,
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
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
}

/// Verifies a log and, when present, its `.head` file.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io = |e: std::io::Error, p: &Path| VerifyError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let file = File::open(path).map_err(|e| io(e, path))?;
    let mut reader = BufReader::new(file);
    let mut prev_hash = GENESIS.to_owned();
    let mut expected_seq = 1u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io(e, path))?;
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
        prev_hash = hash_line(&buf);
        expected_seq += 1;
    }
    let records = expected_seq - 1;
    let head = (records > 0).then(|| ChainHead {
        seq: records,
        hash: prev_hash.clone(),
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
        if recorded.seq > records {
            return Err(VerifyError::Head {
                head_file,
                log_seq: records,
                head_seq: recorded.seq,
                what: "records were removed from the end of the log",
            });
        }
        // The head may lag the log by the batch being written when the process stopped; the
        // record it names must still be in the chain unchanged.
        if recorded.seq == records && Some(&recorded.hash) != head.as_ref().map(|h| &h.hash) {
            return Err(VerifyError::Head {
                head_file,
                log_seq: records,
                head_seq: recorded.seq,
                what: "the last record was edited",
            });
        }
        if recorded.seq < records
            && recorded.seq > 0
            && !hash_at(path, recorded.seq, &recorded.hash)?
        {
            return Err(VerifyError::Head {
                head_file,
                log_seq: records,
                head_seq: recorded.seq,
                what: "the record it names was edited",
            });
        }
        head_checked = true;
    }
    Ok(VerifyReport {
        records,
        head,
        head_checked,
    })
}

/// Whether record `seq` of a log (already verified as a chain) hashes to `hash`.
fn hash_at(path: &Path, seq: u64, hash: &str) -> Result<bool, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let line = BufReader::new(file).split(b'\n').nth((seq - 1) as usize);
    Ok(matches!(line, Some(Ok(l)) if hash_line(&l) == hash))
}
