use super::corpus::{EMPTY_PACK, ZERO as Z, cases, pkt};
use super::model::assert_reader_agrees;
use super::*;

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn whole(buf: &[u8]) -> Result<Option<(PushRequest, usize)>, PushError> {
    parse_push_request(buf, PushLimits::default())
}

fn complete(buf: &[u8]) -> (PushRequest, usize) {
    match whole(buf) {
        Ok(Some(r)) => r,
        other => panic!("expected a complete command list, got {other:?}"),
    }
}

#[test]
fn every_crafted_case_is_read_as_git_reads_it() {
    for case in cases(A) {
        assert!(
            whole(&case.body) != Ok(None),
            "{}: a whole request",
            case.name
        );
        let agrees = std::panic::catch_unwind(|| {
            assert_reader_agrees(&case.body, &[1, 2, 3, 7, 4096]);
        });
        assert!(
            agrees.is_ok(),
            "{}: read otherwise than git reads it",
            case.name
        );
    }
}

#[test]
fn the_issues_certificate_names_both_refs() {
    let case = cases(A)
        .into_iter()
        .find(|c| c.name.starts_with("the issue's certificate"))
        .expect("in the corpus");
    let (req, off) = complete(&case.body);
    let names: Vec<_> = req.updates.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["refs/tags/v7.7.7", "refs/heads/feature-cert"]);
    assert!(req.signed);
    assert_eq!(&case.body[off..], EMPTY_PACK);
}

#[test]
fn features_are_a_c_string_and_any_line_may_carry_them() {
    let buf = cat(&[
        &pkt(format!(
            "{A} {Z} refs/tags/v1.0\0report-status\0 push-options\n"
        )),
        b"0000",
    ]);
    let (req, off) = complete(&buf);
    assert!(!req.features.push_options);
    assert!(req.features.report_status);
    assert_eq!(
        off,
        buf.len(),
        "nothing waits for options git will not read"
    );
    assert_eq!(req.updates[0].op(), RefOp::Delete);

    let buf = cat(&[
        &pkt(format!("{A} {B} refs/heads/a\0report-status\n")),
        &pkt(format!(
            "{A} {B} refs/heads/b\0side-band-64k push-options atomic\n"
        )),
        b"0000",
        &pkt("o1\n"),
        b"0000",
        b"PACK",
    ]);
    let (req, off) = complete(&buf);
    assert!(req.features.push_options && req.features.side_band_64k && req.features.atomic);
    assert_eq!(req.push_options, ["o1"]);
    assert_eq!(&buf[off..], b"PACK");
}

#[test]
fn feature_words_match_as_git_matches_them() {
    assert_eq!(
        feature_value(b"report-status", b"report-status"),
        Some(&b""[..])
    );
    assert_eq!(
        feature_value(b"a report-status", b"report-status"),
        Some(&b""[..])
    );
    assert_eq!(
        feature_value(b"a\treport-status\r", b"report-status"),
        Some(&b""[..])
    );
    assert_eq!(feature_value(b"report-status-v2", b"report-status"), None);
    assert_eq!(feature_value(b"xreport-status", b"report-status"), None);
    assert_eq!(
        feature_value(b"report-status=1 x", b"report-status"),
        Some(&b"1"[..])
    );
    assert_eq!(
        feature_value(b"agent=x object-format=sha256\tq", b"object-format"),
        Some(&b"sha256"[..])
    );
    assert_eq!(
        feature_value(b"object-format=sha1\rx", b"object-format"),
        Some(&b"sha1\rx"[..])
    );
    // \v and \f are not spaces to git
    assert_eq!(feature_value(b"a\x0breport-status", b"report-status"), None);
}

#[test]
fn a_zero_new_id_deletes_whatever_the_old_id_says() {
    let buf = cat(&[&pkt(format!("{Z} {Z} refs/tags/v1\n")), b"0000"]);
    let (req, _) = complete(&buf);
    assert_eq!(req.updates[0].op(), RefOp::Delete);
    assert_eq!(
        RefUpdate {
            old: A.into(),
            new: B.into(),
            name: "refs/heads/x".into()
        }
        .op(),
        RefOp::Update
    );
}

#[test]
fn ids_are_read_in_either_case_and_kept_lowercase() {
    let upper = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
    let buf = cat(&[&pkt(format!("{A} {upper} refs/heads/x\n")), b"0000"]);
    let (req, _) = complete(&buf);
    assert_eq!(req.updates[0].new, upper.to_ascii_lowercase());
}

#[test]
fn sha256_ids_when_declared() {
    let a = "a".repeat(64);
    let z = "0".repeat(64);
    let buf = cat(&[
        &pkt(format!(
            "{a} {z} refs/heads/gone\0report-status object-format=sha256"
        )),
        b"0000",
    ]);
    let (req, off) = complete(&buf);
    assert_eq!(off, buf.len());
    assert_eq!(req.object_format, ObjectFormat::Sha256);
    assert_eq!(req.updates[0].op(), RefOp::Delete);
    // Undeclared, ids are SHA-1: 64 digits are not an id and a space.
    let buf = cat(&[
        &pkt(format!("{a} {z} refs/heads/gone\0report-status")),
        b"0000",
    ]);
    assert_eq!(whole(&buf), Err(PushError::BadCommand));
    // Two formats cannot both be the repository's.
    let buf = cat(&[
        &pkt(format!("{A} {Z} refs/heads/x\0object-format=sha1\n")),
        &pkt(format!("{A} {Z} refs/heads/y\0object-format=sha256\n")),
        b"0000",
    ]);
    assert_eq!(whole(&buf), Err(PushError::ObjectFormat));
}

#[test]
fn every_prefix_asks_for_more_and_never_errs() {
    for case in cases(A) {
        let Ok(Some((_, off))) = whole(&case.body) else {
            continue;
        };
        // One reader fed a byte at a time is, after n bytes, a reader of the n-byte prefix.
        let mut reader = PushReader::new(PushLimits::default());
        for (n, b) in case.body[..off].iter().enumerate() {
            let fed = reader.feed(std::slice::from_ref(b));
            if n + 1 < off {
                assert_eq!(fed, Ok(Feed::NeedMore), "{}: {n}", case.name);
            } else {
                assert_eq!(fed, Ok(Feed::Done(1)), "{}: {n}", case.name);
            }
        }
        for n in [0, 1, 3, 4, off / 2, off - 1]
            .into_iter()
            .filter(|&n| n < off)
        {
            let mut reader = PushReader::new(PushLimits::default());
            assert_eq!(
                reader.feed(&case.body[..n]),
                Ok(Feed::NeedMore),
                "{}",
                case.name
            );
            assert_eq!(reader.finish(), Err(PushError::Truncated), "{}", case.name);
        }
    }
}

#[test]
fn malformed_commands_are_refused() {
    let bad = |line: String| whole(&cat(&[&pkt(line), b"0000"]));
    assert_eq!(bad(format!("{A} {B}")), Err(PushError::BadCommand));
    assert_eq!(
        bad(format!("{A} {B} refs/heads/x y")),
        Err(PushError::BadRefName)
    );
    assert_eq!(
        bad(format!("{A} {} refs/heads/x", &B[..39])),
        Err(PushError::BadCommand)
    );
    assert_eq!(
        bad(format!("{A}  {B} refs/heads/x")),
        Err(PushError::BadCommand)
    );
    assert_eq!(
        bad(format!("shallow nothex{A}")),
        Err(PushError::BadShallow)
    );
    assert_eq!(bad("ERR no".into()), Err(PushError::ErrPacket));
    assert_eq!(
        whole(b"0004"),
        Err(PushError::BadCommand),
        "an empty line is no command"
    );
    assert_eq!(whole(b"00040000"), Err(PushError::BadCommand));
    assert_eq!(whole(b"0003"), Err(PushError::BadLength));
    // a flush alone: nothing to update (git sends this for an up-to-date push)
    assert_eq!(whole(b"0000"), Ok(Some((PushRequest::default(), 4))));
    assert_eq!(whole(b"0001"), Ok(Some((PushRequest::default(), 4))));
}

#[test]
fn ref_names() {
    for ok in [
        "refs/heads/main",
        "refs/tags/v1.2.3",
        "refs/heads/feature/x-y_z",
        "refs/for/main%topic",
        "refs/heads/caf\u{e9}",
        "refs/heads/@",
    ] {
        assert!(valid_ref_name(ok), "{ok}");
    }
    for bad in [
        "HEAD",
        "main",
        "refs/heads/",
        "refs/heads/a..b",
        "refs/heads//a",
        "refs/heads/.hidden",
        "refs/heads/a.lock",
        "refs/heads/a@{1}",
        "refs/heads/a b",
        "refs/heads/a~1",
        "refs/heads/a^",
        "refs/heads/a:b",
        "refs/heads/a?",
        "refs/heads/a*",
        "refs/heads/a[",
        "refs/heads/a\\b",
        "refs/heads/a.",
        "refs/heads/\u{7f}",
    ] {
        assert!(!valid_ref_name(bad), "{bad}");
    }
}

#[test]
fn limits_refuse_early_without_buffering_the_rest() {
    let limits = PushLimits {
        max_bytes: 1000,
        max_commands: 5,
    };
    let line = pkt(format!("{A} {B} refs/heads/{}\n", "x".repeat(200)));
    let mut reader = PushReader::new(limits);
    let mut result = Ok(Feed::NeedMore);
    for _ in 0..10 {
        result = reader.feed(&line);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(PushError::TooLarge));
    // A packet whose header alone says it would cross the limit is refused at its header.
    let mut reader = PushReader::new(limits);
    assert_eq!(reader.feed(b"ffe0"), Err(PushError::TooLarge));
    // Too many commands
    let small = pkt(format!("{A} {B} refs/heads/x\n"));
    let mut reader = PushReader::new(limits);
    let mut result = Ok(Feed::NeedMore);
    for _ in 0..6 {
        result = reader.feed(&small);
    }
    assert_eq!(result, Err(PushError::TooLarge));
}

#[test]
fn a_byte_at_a_time_costs_what_one_piece_costs() {
    // Linear: a 1 MiB list fed a byte at a time touches each byte once (counted, not timed).
    let mut buf = pkt(format!("{A} {B} refs/heads/m0\0report-status\n"));
    let mut i = 1;
    while buf.len() < 1 << 20 {
        buf.extend_from_slice(&pkt(format!("{A} {B} refs/heads/m{i}\n")));
        i += 1;
    }
    buf.extend_from_slice(b"0000");
    let mut reader = PushReader::new(PushLimits::default());
    let mut done = None;
    for (k, b) in buf.iter().enumerate() {
        if let Feed::Done(_) = reader.feed(std::slice::from_ref(b)).expect("valid") {
            done = Some(k);
            break;
        }
    }
    assert_eq!(done, Some(buf.len() - 1));
    assert_eq!(reader.taken(), buf.len());
    assert_eq!(reader.finish().expect("done").updates.len(), i);
}

#[test]
fn refused_report_uses_side_band_only_for_side_band_64k() {
    let mut push = PushRequest {
        updates: vec![RefUpdate {
            old: A.into(),
            new: Z.into(),
            name: "refs/heads/main".into(),
        }],
        ..PushRequest::default()
    };
    push.features.report_status = true;
    let plain = refused_push_report(&push, &[(0, "no")]);
    assert!(plain.starts_with(b"000eunpack ok\n"));
    // `side-band` alone: receive-pack would not multiplex, and neither does Gatehouse.
    let banded = {
        push.features.side_band_64k = true;
        refused_push_report(&push, &[(0, "no")])
    };
    assert_ne!(plain, banded);
    assert_eq!(banded[4], 2, "the reason first, on the progress band");
}
