use super::*;

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const Z: &str = "0000000000000000000000000000000000000000";

fn pkt(s: &str) -> Vec<u8> {
    format!("{:04x}{s}", s.len() + 4).into_bytes()
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn complete(buf: &[u8]) -> (PushRequest, usize) {
    match parse_push_request(buf) {
        Ok(PushParse::Complete {
            request,
            pack_offset,
        }) => (request, pack_offset),
        other => panic!("expected a complete command list, got {other:?}"),
    }
}

#[test]
fn pkt_lines() {
    assert_eq!(read_pkt(b"0000rest"), Ok(Some((Pkt::Flush, 4))));
    assert_eq!(read_pkt(b"0001"), Ok(Some((Pkt::Delim, 4))));
    assert_eq!(read_pkt(b"0008abcdXX"), Ok(Some((Pkt::Data(b"abcd"), 8))));
    assert_eq!(read_pkt(b"0008ab"), Ok(None));
    assert_eq!(read_pkt(b"00"), Ok(None));
    assert_eq!(read_pkt(b"0003"), Err(PktError::BadLength));
    assert_eq!(read_pkt(b"zzzz"), Err(PktError::BadLength));
    assert_eq!(read_pkt(b"fff1"), Err(PktError::BadLength));
    assert_eq!(read_pkt(b"+001"), Err(PktError::BadLength));
}

#[test]
fn a_multi_ref_push_with_capabilities_and_options() {
    let buf = cat(&[
        pkt(&format!(
            "{A} {B} refs/heads/main\0report-status side-band-64k atomic push-options agent=git/2.47\n"
        )),
        pkt(&format!("{Z} {B} refs/tags/v1.0\n")),
        pkt(&format!("{A} {Z} refs/heads/old\n")),
        b"0000".to_vec(),
        pkt("ci.skip\n"),
        pkt("reviewer=alice\n"),
        b"0000".to_vec(),
        b"PACK\x00\x00\x00\x02".to_vec(),
    ]);
    let (req, off) = complete(&buf);
    assert_eq!(&buf[off..off + 4], b"PACK");
    assert_eq!(req.updates.len(), 3);
    assert_eq!(req.updates[0].name, "refs/heads/main");
    assert_eq!(req.updates[0].op(), RefOp::Update);
    assert_eq!(req.updates[1].op(), RefOp::Create);
    assert_eq!(req.updates[2].op(), RefOp::Delete);
    assert!(req.has_capability("atomic") && req.has_capability("report-status"));
    assert!(req.has_capability("agent"));
    assert!(!req.has_capability("quiet"));
    assert_eq!(req.push_options, vec!["ci.skip", "reviewer=alice"]);
    assert!(!req.signed);
}

#[test]
fn every_prefix_asks_for_more_and_never_errs() {
    let buf = cat(&[
        pkt(&format!("shallow {A}\n")),
        pkt(&format!(
            "{A} {B} refs/heads/main\0report-status push-options\n"
        )),
        b"0000".to_vec(),
        pkt("o\n"),
        b"0000".to_vec(),
    ]);
    for n in 0..buf.len() {
        assert_eq!(
            parse_push_request(&buf[..n]),
            Ok(PushParse::NeedMore),
            "prefix of {n} bytes"
        );
    }
    let (req, off) = complete(&buf);
    assert_eq!(off, buf.len());
    assert_eq!(req.shallow, vec![A.to_owned()]);
}

#[test]
fn sha256_ids_and_a_delete_only_push() {
    let a = "a".repeat(64);
    let z = "0".repeat(64);
    let buf = cat(&[
        pkt(&format!("{a} {z} refs/heads/gone\0report-status")),
        b"0000".to_vec(),
    ]);
    let (req, off) = complete(&buf);
    assert_eq!(off, buf.len());
    assert_eq!(req.updates[0].op(), RefOp::Delete);
}

#[test]
fn a_signed_push_certificate() {
    let buf = cat(&[
        pkt("push-cert\0report-status\n"),
        pkt("certificate version 0.1\n"),
        pkt("pusher Alice <a@x> 1700000000 +0000\n"),
        pkt("pushee https://git.example/demo/hello.git\n"),
        pkt("nonce 1700000000-abc\n"),
        pkt("\n"),
        pkt(&format!("{A} {B} refs/heads/main\n")),
        pkt("-----BEGIN PGP SIGNATURE-----\n"),
        pkt(&format!("{Z} {B} refs/heads/not-a-command\n")),
        pkt("-----END PGP SIGNATURE-----\n"),
        pkt("push-cert-end\n"),
        b"0000".to_vec(),
    ]);
    let (req, off) = complete(&buf);
    assert!(req.signed);
    assert_eq!(off, buf.len());
    assert_eq!(
        req.updates.len(),
        1,
        "lines inside the signature are not commands"
    );
    for n in 0..buf.len() {
        assert_eq!(
            parse_push_request(&buf[..n]),
            Ok(PushParse::NeedMore),
            "prefix of {n} bytes"
        );
    }
}

#[test]
fn malformed_commands_are_refused() {
    let bad = |line: String| parse_push_request(&cat(&[pkt(&line), b"0000".to_vec()]));
    assert_eq!(bad(format!("{A} {B}")), Err(PktError::BadCommand));
    assert_eq!(
        bad(format!("{A} {B} refs/heads/x y")),
        Err(PktError::BadRefName)
    );
    assert_eq!(
        bad(format!("{Z} {Z} refs/heads/x")),
        Err(PktError::BadCommand)
    );
    assert_eq!(
        bad(format!("{A} {} refs/heads/x", &B[..39])),
        Err(PktError::BadCommand)
    );
    let upper = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
    assert_eq!(
        bad(format!("{A} {upper} refs/heads/x")),
        Err(PktError::BadCommand)
    );
    assert_eq!(
        bad(format!("shallow nothex\n{A} {B} refs/heads/x")),
        Err(PktError::BadCommand)
    );
    assert_eq!(parse_push_request(b"0001"), Err(PktError::Unexpected));
    // a flush alone: nothing to update
    assert_eq!(
        parse_push_request(b"0000"),
        Ok(PushParse::Complete {
            request: PushRequest::default(),
            pack_offset: 4
        })
    );
}

#[test]
fn ref_names() {
    for ok in [
        "refs/heads/main",
        "refs/tags/v1.2.3",
        "refs/heads/feature/x-y_z",
        "refs/for/main%topic",
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
fn size_limits() {
    // A command list that never ends is cut off, not buffered forever.
    let line = pkt(&format!("{A} {B} refs/heads/{}\n", "x".repeat(200)));
    let mut buf = pkt(&format!("{A} {B} refs/heads/main\0report-status\n"));
    while buf.len() <= MAX_COMMAND_BYTES + PKT_MAX {
        buf.extend_from_slice(&line);
    }
    assert_eq!(parse_push_request(&buf), Err(PktError::TooLarge));
}
