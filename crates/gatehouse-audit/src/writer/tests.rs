use std::io::Write as _;

use super::*;
use crate::AuditRef;
use crate::chain::{VerifyError, verify};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gh-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir.join("audit.log")
}

fn rec(i: u64) -> AuditRecord {
    AuditRecord {
        time: gatehouse_core::UnixTime::from_secs(1_700_000_000 + i as i64),
        event: "request",
        path: Some(format!("/r/{i}")),
        status: Some(200),
        ..AuditRecord::default()
    }
}

fn write_n(path: &Path, n: u64) {
    write_n_rotating(path, n, None);
}

fn write_n_rotating(path: &Path, n: u64, rotate_size: Option<u64>) {
    let opts = AuditOptions {
        path: path.to_owned(),
        queue_capacity: 16,
        batch_max: 4,
        flush_interval: Duration::from_millis(1),
        rotate_size,
        rotate_age: None,
    };
    let (sink, handle) = AuditSink::open(&opts, None).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..n {
        loop {
            match sink.reserve() {
                Ok(slot) => {
                    slot.send(rec(i));
                    break;
                }
                Err(AuditUnavailable::QueueFull) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    drop(sink);
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("{e}"));
    for l in lines {
        writeln!(f, "{l}").unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn chain_verifies_and_resumes_across_restarts() {
    let p = tmp("resume");
    write_n(&p, 10);
    write_n(&p, 5);
    let report = verify(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.records, 15);
    assert!(report.head_checked);
    assert!(lines(&p)[0].starts_with(r#"{"seq":1,"prev":"000000"#));
}

#[test]
fn one_byte_edit_is_found() {
    let p = tmp("edit");
    write_n(&p, 6);
    let mut l = lines(&p);
    l[2] = l[2].replace("/r/2", "/r/9");
    rewrite(&p, &l);
    assert_eq!(verify(&p), Err(VerifyError::Chain { line: 4 }));
}

#[test]
fn edit_of_the_last_record_is_found_by_the_head() {
    let p = tmp("edit-last");
    write_n(&p, 3);
    let mut l = lines(&p);
    l[2] = l[2].replace("\"status\":200", "\"status\":201");
    rewrite(&p, &l);
    assert!(matches!(verify(&p), Err(VerifyError::Head { .. })));
}

#[test]
fn deletion_reordering_and_truncation_are_found() {
    let p = tmp("del");
    write_n(&p, 6);
    let orig = lines(&p);

    let mut l = orig.clone();
    l.remove(3);
    rewrite(&p, &l);
    assert!(matches!(
        verify(&p),
        Err(VerifyError::Sequence { line: 4, .. })
    ));

    let mut l = orig.clone();
    l.swap(1, 2);
    rewrite(&p, &l);
    assert!(matches!(
        verify(&p),
        Err(VerifyError::Sequence { line: 2, .. })
    ));

    rewrite(&p, &orig[..4]);
    assert!(matches!(
        verify(&p),
        Err(VerifyError::Head {
            head_seq: 6,
            log_seq: 4,
            ..
        })
    ));

    let mut text = orig.join("\n");
    text.truncate(text.len() - 5);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(verify(&p), Err(VerifyError::TornTail { line: 6 })));
}

#[test]
fn refuses_to_append_after_a_torn_record() {
    let p = tmp("torn");
    write_n(&p, 2);
    let mut f = OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap_or_else(|e| panic!("{e}"));
    f.write_all(br#"{"seq":3,"pr"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = AuditOptions {
        path: p.clone(),
        queue_capacity: 4,
        batch_max: 4,
        flush_interval: Duration::ZERO,
        rotate_size: None,
        rotate_age: None,
    };
    assert!(matches!(
        AuditSink::open(&opts, None),
        Err(OpenError::DamagedTail { .. })
    ));
}

/// A log on /dev/full, which accepts open() and fails every write with ENOSPC: a real fault,
/// not a mock.
fn failing_log() -> AuditOptions {
    AuditOptions {
        path: PathBuf::from("/dev/full"),
        queue_capacity: 4,
        batch_max: 4,
        flush_interval: Duration::ZERO,
        rotate_size: None,
        rotate_age: None,
    }
}

#[test]
fn write_failure_refuses_further_requests() {
    let opts = failing_log();
    let (sink, _handle) = AuditSink::open(&opts, None).unwrap_or_else(|e| panic!("{e}"));
    let slot = sink.reserve().unwrap_or_else(|e| panic!("{e}"));
    slot.send(rec(1));
    for _ in 0..200 {
        if !sink.is_healthy() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.reserve().err(), Some(AuditUnavailable::WriteFailed));
}

/// A writer on a fresh log that polls every 2 ms, with a hook counting the records written
/// (and asserting each batch succeeded).
fn polling_writer(
    name: &str,
) -> (
    PathBuf,
    Arc<std::sync::atomic::AtomicUsize>,
    AuditSink,
    std::thread::JoinHandle<()>,
) {
    let path = tmp(name);
    let flushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = flushed.clone();
    let opts = AuditOptions {
        path: path.clone(),
        queue_capacity: 16,
        batch_max: 16,
        flush_interval: Duration::from_millis(2),
        rotate_size: None,
        rotate_age: None,
    };
    let hook: FlushHook = Box::new(move |s: FlushStats| {
        assert!(s.ok);
        seen.fetch_add(s.records, Ordering::SeqCst);
    });
    let (sink, handle) = AuditSink::open(&opts, Some(hook)).unwrap_or_else(|e| panic!("{e}"));
    (path, flushed, sink, handle)
}

#[test]
fn records_arriving_one_by_one_are_written_while_the_writer_polls() {
    // After its first batch the writer polls the queue instead of waiting on it; records that
    // arrive one at a time, each after the previous one was written, must still all be written,
    // in order, and the writer must still end once the sink is gone.
    let (path, flushed, sink, handle) = polling_writer("polling");
    for i in 0..5u64 {
        let slot = sink.reserve().unwrap_or_else(|e| panic!("{e}"));
        slot.send(rec(i));
        let mut waited = 0;
        while flushed.load(Ordering::SeqCst) < (i + 1) as usize {
            waited += 1;
            assert!(waited < 2_000, "record {i} was not written within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(sink);
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
    let got = lines(&path);
    assert_eq!(got.len(), 5);
    for (i, l) in got.iter().enumerate() {
        assert!(l.contains(&format!("\"path\":\"/r/{i}\"")), "line {i}: {l}");
    }
    let report = verify(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.records, 5);
    let head =
        std::fs::read_to_string(ChainHead::path_for(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert!(head.starts_with("{\"seq\":5,"), "head file: {head}");
}

/// The line as it used to be written: a map with the record flattened into it.
#[derive(serde::Serialize)]
struct Flattened<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// A principal whose display name and e-mail address the audit record must leave out.
fn principal(subject: &str, groups: &[&str], token_id: Option<&str>) -> gatehouse_core::Principal {
    gatehouse_core::Principal {
        kind: gatehouse_core::PrincipalKind::Service,
        issuer: "urn:gatehouse".into(),
        subject: subject.into(),
        username: "agent".into(),
        display_name: Some("Secret Name".into()),
        email: Some("e@x.test".into()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        token_id: token_id.map(str::to_owned),
        expires_at: Some(1_700_000_900),
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    }
}

#[test]
fn an_entry_is_written_as_the_record_flattened_after_its_link() {
    let principal_with_all = principal("agent:\"quoted\"", &["bots", "ci"], Some("jti-1"));
    let full = AuditRecord {
        time: gatehouse_core::UnixTime::from_nanos(1_700_000_000_123_456_789),
        event: "request",
        request_id: Some("r-1".into()),
        principal: Some(crate::AuditPrincipal::from(principal_with_all)),
        source: Some("127.0.0.1".into()),
        method: Some("GET".into()),
        action: Some("git:read"),
        policy: Some("a,b".into()),
        reason: Some("allowed".into()),
        status: Some(200),
        duration_ms: 1.5,
        ..AuditRecord::default()
    };
    for record in [full, rec(7)] {
        let mut buf = Vec::new();
        super::write_entry(&mut buf, 42, "abc", &record).unwrap();
        let expected = serde_json::to_vec(&Flattened {
            seq: 42,
            prev: "abc",
            record: &record,
        })
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf),
            String::from_utf8_lossy(&expected)
        );
    }
    let mut buf = Vec::new();
    let principal = AuditRecord {
        principal: Some(crate::AuditPrincipal::from(principal("s", &[], None))),
        time: gatehouse_core::UnixTime::from_nanos(1_700_000_000_123_456_789),
        ..AuditRecord::default()
    };
    super::write_entry(&mut buf, 1, "p", &principal).unwrap();
    let line = String::from_utf8_lossy(&buf);
    assert!(
        line.contains(r#""time":"2023-11-14T22:13:20.123Z""#),
        "{line}"
    );
    assert!(
        line.contains(
            r#""principal":{"kind":"service","subject":"s","issuer":"urn:gatehouse","username":"agent","groups":[]}"#
        ),
        "{line}"
    );
    assert!(
        !line.contains("Secret") && !line.contains("e@x.test"),
        "{line}"
    );
}

/// The rotated-out files of a log, oldest first.
fn parts(path: &Path) -> Vec<PathBuf> {
    crate::rotated_parts(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(_, _, p)| p)
        .collect()
}

#[test]
fn a_rotated_log_verifies_as_one_chain_across_its_files_and_restarts() {
    let p = tmp("rotate");
    write_n_rotating(&p, 40, Some(1000));
    // A restart resumes the chain in the current file, and rotates on.
    write_n_rotating(&p, 40, Some(1000));
    let files = parts(&p);
    assert!(files.len() >= 3, "{files:?}");
    let report = verify(&p).unwrap_or_else(|e| panic!("{e}"));
    // 80 records and one `audit_continued` record opening each new file.
    assert_eq!(report.records, 80 + files.len() as u64);
    assert_eq!(report.first_seq, 1);
    assert_eq!(report.rotated, files);
    assert!(report.head_checked);
    let first = lines(&p).remove(0);
    assert!(first.contains(r#""event":"audit_continued""#), "{first}");
    let last_part = files
        .last()
        .and_then(|f| f.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    assert!(
        first.contains(&format!("continues {}", last_part.unwrap_or_default())),
        "{first}"
    );
    // No file is left half-rotated.
    assert!(!next_path(&p).exists());
}

#[test]
fn removing_the_oldest_rotated_files_is_retention_but_a_gap_or_an_edit_is_found() {
    let p = tmp("rotate-gaps");
    write_n_rotating(&p, 60, Some(1000));
    let files = parts(&p);
    assert!(files.len() >= 3, "{files:?}");

    // Retention: the oldest file goes; the chain is verified from the next one on.
    let oldest = std::fs::read(&files[0]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&files[0]).unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.first_seq > 1, "{report:?}");
    std::fs::write(&files[0], &oldest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verify(&p).map(|r| r.first_seq), Ok(1));

    // A file missing in the middle breaks the chain.
    let middle = std::fs::read(&files[1]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&files[1]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(verify(&p), Err(VerifyError::Rotated { .. })),
        "{:?}",
        verify(&p)
    );
    std::fs::write(&files[1], &middle).unwrap_or_else(|e| panic!("{e}"));

    // A one-byte edit in a rotated-out file is found, and named.
    let mut edited = middle.clone();
    let at = edited.iter().position(|&b| b == b'/').unwrap_or(0);
    edited[at] = b'_';
    std::fs::write(&files[1], &edited).unwrap_or_else(|e| panic!("{e}"));
    let err = verify(&p).map(|_| ()).unwrap_err();
    assert!(
        err.to_string().starts_with(&files[1].display().to_string()),
        "{err}"
    );
    std::fs::write(&files[1], &middle).unwrap_or_else(|e| panic!("{e}"));

    // A file renamed to claim other records is found.
    let renamed = rotated_path(&p, 1, 2);
    std::fs::rename(&files[0], &renamed).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(verify(&p), Err(VerifyError::Misnamed { .. })));
    std::fs::rename(&renamed, &files[0]).unwrap_or_else(|e| panic!("{e}"));

    // Deleting the first records of the current file is still found: what is left does not
    // start with the record that links it to the file before.
    let mut live = lines(&p);
    assert!(!live.is_empty());
    live.remove(0);
    rewrite(&p, &live);
    assert!(verify(&p).is_err());
}

#[test]
fn a_rotation_cut_short_by_a_crash_is_finished_or_undone_at_the_next_start() {
    // Crashed after the new file was written but before the old one was renamed: the new file
    // was never part of the chain, and goes.
    let p = tmp("rotate-crash-early");
    write_n(&p, 5);
    std::fs::write(next_path(&p), b"{\"seq\":6}\n").unwrap_or_else(|e| panic!("{e}"));
    write_n(&p, 5);
    assert!(!next_path(&p).exists());
    assert_eq!(verify(&p).map(|r| r.records), Ok(10));

    // Crashed after the old file was renamed aside but before the new one took its name: the
    // new one is the log.
    let p = tmp("rotate-crash-late");
    write_n_rotating(&p, 30, Some(1000));
    assert!(!parts(&p).is_empty());
    std::fs::rename(&p, next_path(&p)).unwrap_or_else(|e| panic!("{e}"));
    write_n_rotating(&p, 5, Some(1000));
    assert!(!next_path(&p).exists());
    assert!(verify(&p).is_ok(), "{:?}", verify(&p));
}

#[test]
fn the_head_catches_up_when_the_writer_goes_idle() {
    // Batches less than 100 ms apart skip the head update. Once the records stop, the head
    // must name the last record while the gateway runs on, not only when it stops: otherwise
    // cutting the end of a burst off the log would pass `verify` for as long as it stays quiet.
    let (path, flushed, sink, handle) = polling_writer("head-idle");
    for i in 0..5u64 {
        let slot = sink.reserve().unwrap_or_else(|e| panic!("{e}"));
        slot.send(rec(i));
        while flushed.load(Ordering::SeqCst) < (i + 1) as usize {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let head_path = ChainHead::path_for(&path);
    let mut waited = Duration::ZERO;
    loop {
        let head = std::fs::read_to_string(&head_path).unwrap_or_default();
        if head.starts_with("{\"seq\":5,") {
            break;
        }
        assert!(
            waited < Duration::from_secs(5),
            "the head still says {head} with the writer idle"
        );
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    // Cutting the last record off is now found.
    let mut all = lines(&path);
    all.pop();
    rewrite(&path, &all);
    assert!(verify(&path).is_err());
    drop(sink);
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
}

/// A current-thread runtime for the async half of the sink.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .block_on(f)
}

#[test]
fn a_committed_record_is_on_disk_when_commit_returns_without_waiting_for_the_interval() {
    // A gathering interval of an hour: a commit that waited for it would hang this test (the
    // timeout below fails it first). Between two commits the writer is polling (it wrote a batch
    // less than a second ago); the commit wakes it rather than wait for its next look.
    let path = tmp("commit");
    let opts = AuditOptions {
        path: path.clone(),
        queue_capacity: 16,
        batch_max: 16,
        flush_interval: Duration::from_secs(3600),
        rotate_size: None,
        rotate_age: None,
    };
    let (sink, handle) = AuditSink::open(&opts, None).unwrap_or_else(|e| panic!("{e}"));
    // An ordinary record first: it waits for the writer like any other.
    sink.reserve()
        .unwrap_or_else(|e| panic!("{e}"))
        .send(rec(0));
    block_on(async {
        for i in 1..=3u64 {
            let seq = tokio::time::timeout(Duration::from_secs(60), sink.commit(rec(i)))
                .await
                .unwrap_or_else(|_| panic!("commit {i} waited for the gathering interval"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seq, i + 1, "the ordinary record went first");
            // Durable means readable from the file now, with its place in the chain.
            let got = lines(&path);
            assert_eq!(got.len() as u64, seq);
            assert!(got[seq as usize - 1].contains(&format!("\"path\":\"/r/{i}\"")));
        }
    });
    drop(sink);
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
    assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).records, 4);
}

#[test]
fn a_commit_that_cannot_reach_the_disk_is_refused_and_not_retried() {
    // /dev/full: every write fails. The committer is told, and the record is not written later
    // (its request was refused, so it must not be announced as forwarded).
    let opts = failing_log();
    let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = batches.clone();
    let hook: FlushHook = Box::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let (sink, handle) = AuditSink::open(&opts, Some(hook)).unwrap_or_else(|e| panic!("{e}"));
    let got = block_on(async {
        tokio::time::timeout(Duration::from_secs(60), sink.commit(rec(1)))
            .await
            .unwrap_or_else(|_| panic!("commit hung on a failing log"))
    });
    assert_eq!(got, Err(AuditUnavailable::WriteFailed));
    assert_eq!(
        block_on(sink.commit(rec(2))),
        Err(AuditUnavailable::WriteFailed),
        "an unhealthy log refuses commits at once"
    );
    // Not retried: a record kept for retrying would be tried again every 500 ms and five more
    // times at shutdown. The writer, with nothing pending, ends at once after one attempt.
    drop(sink);
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
    assert_eq!(batches.load(Ordering::SeqCst), 1);
}

/// A push index that keeps what it is given, or refuses.
#[derive(Debug, Default)]
struct Index {
    got: std::sync::Mutex<Vec<PushedRef>>,
    fail: bool,
}

impl PushIndexSink for Index {
    fn index<'a>(
        &'a self,
        refs: &'a [PushedRef],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.fail {
                return Err("the store is down".into());
            }
            self.got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(refs);
            Ok(())
        })
    }

    fn confirm<'a>(
        &'a self,
        _seq: u64,
        _refs: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { Ok(()) })
    }
}

#[tokio::test]
async fn an_allowed_push_is_indexed_once_durable_and_an_index_failure_refuses_it() {
    let path = tmp("push-index");
    let opts = AuditOptions {
        path: path.clone(),
        queue_capacity: 16,
        batch_max: 4,
        flush_interval: Duration::from_millis(1),
        rotate_size: None,
        rotate_age: None,
    };
    let (sink, handle) = AuditSink::open(&opts, None).unwrap_or_else(|e| panic!("{e}"));
    let index = Arc::new(Index::default());
    let sink = sink.with_push_index(Some(index.clone() as Arc<dyn PushIndexSink>));
    let oid = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    let zero = "0000000000000000000000000000000000000000";
    let allow = gatehouse_core::Decision::new(true, vec![], "policy_permit");
    let deny = gatehouse_core::Decision::new(false, vec![], "forbidden_by_policy");
    let push = AuditRecord {
        event: "request",
        repo: Some("acme/api".into()),
        decision: Some("allow"),
        principal: Some(
            gatehouse_core::Principal {
                kind: gatehouse_core::PrincipalKind::User,
                issuer: "urn:test".into(),
                subject: "s-alice".into(),
                username: "alice".into(),
                display_name: None,
                email: None,
                groups: vec![],
                token_id: None,
                expires_at: None,
                environment: None,
                workload: None,
                derived_from: Vec::new(),
            }
            .into(),
        ),
        refs: Some(vec![
            AuditRef::decided(
                "refs/heads/main",
                "update",
                zero,
                &oid.to_uppercase(),
                &allow,
            ),
            AuditRef::decided("refs/heads/gone", "delete", oid, zero, &allow),
            AuditRef::decided("refs/tags/v1", "create", zero, oid, &deny),
        ]),
        ..rec(1)
    };
    // The completion record of a push is not its announcement: nothing is indexed.
    sink.commit(push.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        index
            .got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    );
    let seq = sink
        .commit(push.forwarding())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = index.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The allowed updates (to a new object, and the deletion), with the record's sequence
    // number; not the denied tag.
    assert_eq!(
        got,
        [
            PushedRef {
                repo: "acme/api".into(),
                git_ref: "refs/heads/main".into(),
                commit: oid.into(),
                seq,
                at: 1_700_000_001,
                by: "alice".into(),
                old: zero.into(),
                issuer: "urn:test".into(),
                subject: "s-alice".into(),
            },
            PushedRef {
                repo: "acme/api".into(),
                git_ref: "refs/heads/gone".into(),
                commit: zero.into(),
                seq,
                at: 1_700_000_001,
                by: "alice".into(),
                old: oid.to_ascii_lowercase(),
                issuer: "urn:test".into(),
                subject: "s-alice".into(),
            },
        ]
    );
    // A denied push is not indexed.
    sink.commit(
        AuditRecord {
            decision: Some("deny"),
            ..push.clone()
        }
        .forwarding(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(index.got.lock().unwrap_or_else(|e| e.into_inner()).len(), 2);
    // An index that fails refuses the push (the caller must not forward it).
    let failing = sink.clone().with_push_index(Some(Arc::new(Index {
        fail: true,
        ..Index::default()
    }) as Arc<dyn PushIndexSink>));
    assert_eq!(
        failing.commit(push.forwarding()).await,
        Err(AuditUnavailable::PushIndexFailed)
    );
    drop((sink, failing));
    handle.join().unwrap_or_else(|_| panic!("writer panicked"));
}
