//! What the forge did with a push: `receive-pack`'s report-status, read from its answer as it
//! streams to the client.
//!
//! git's `receive-pack` (`builtin/receive-pack.c`, `report()` and `report_v2()`) answers a push
//! that asked for `report-status` (or `report-status-v2`) with pkt-lines `unpack ok` (or `unpack
//! <error>`), then per command `ok <ref>` or `ng <ref> <reason>` (v2 adds `option ...` lines
//! after an `ok`), then a flush. With `side-band-64k` that report is itself cut into band-1
//! packets (`send_sideband`), mixed with progress on band 2 and a fatal error on band 3, and a
//! flush ends the whole answer. git's `send-pack` (`receive_status()`) reads it the same way.
//!
//! Only a complete report that says `unpack ok` confirms anything: the refs it says `ok` to are
//! the refs the forge moved. Anything else (no report asked for, a cut-off answer, a band-3
//! error, a malformed packet, more refs than a push can have) confirms nothing. Bytes come
//! from the forge, but the reader is bounded all the same: it keeps one partial packet per
//! level and at most [`MAX_REPORTED`] refs.

use crate::pktline::{Pkt, read_pkt};

/// The most refs a report may name (more is treated as malformed).
pub const MAX_REPORTED: usize = 100_000;

/// What a report said, once read to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The refs the forge moved (`ok <ref>`), when the report was whole and said `unpack ok`.
    pub ok: Vec<String>,
    /// The refs it refused, with its reasons.
    pub ng: Vec<(String, String)>,
    /// The report was read to its end and said `unpack ok`.
    pub complete: bool,
}

/// Reads a `receive-pack` answer incrementally ([`ReportReader::feed`]).
#[derive(Debug)]
pub struct ReportReader {
    sideband: bool,
    /// The outer stream's partial packet.
    outer: Vec<u8>,
    /// With side-band: band 1's partial packet.
    inner: Vec<u8>,
    unpack: Option<bool>,
    ok: Vec<String>,
    ng: Vec<(String, String)>,
    /// The report's flush was read.
    ended: bool,
    failed: bool,
}

impl ReportReader {
    /// A reader for an answer to a push that asked for `side-band-64k` (`sideband`) or not.
    pub fn new(sideband: bool) -> Self {
        Self {
            sideband,
            outer: Vec::new(),
            inner: Vec::new(),
            unpack: None,
            ok: Vec::new(),
            ng: Vec::new(),
            ended: false,
            failed: false,
        }
    }

    /// Reads the next bytes of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed || (self.ended && !self.sideband) {
            return;
        }
        let mut buf = std::mem::take(&mut self.outer);
        buf.extend_from_slice(chunk);
        let at = self.each_pkt(&buf, |me, pkt| {
            if !me.sideband {
                me.report_line(pkt);
                return;
            }
            match pkt {
                Pkt::Data([1, rest @ ..]) => {
                    let mut inner = std::mem::take(&mut me.inner);
                    inner.extend_from_slice(rest);
                    let used = me.each_pkt(&inner, Self::report_line);
                    inner.drain(..used);
                    me.inner = inner;
                }
                // Progress.
                Pkt::Data([2, ..]) => {}
                // A fatal error, or a band git does not speak.
                Pkt::Data(_) | Pkt::Delim | Pkt::ResponseEnd => me.failed = true,
                // The end of the whole answer.
                Pkt::Flush => {}
            }
        });
        buf.drain(..at);
        self.outer = buf;
    }

    /// Hands each whole packet at the start of `buf` to `f` until one fails the read (or, without
    /// side-band, ends the report); returns how many bytes were read.
    fn each_pkt(&mut self, buf: &[u8], mut f: impl FnMut(&mut Self, Pkt<'_>)) -> usize {
        let mut at = 0;
        loop {
            match read_pkt(&buf[at..]) {
                Err(_) => {
                    self.failed = true;
                    return at;
                }
                Ok(None) => return at,
                Ok(Some((pkt, n))) => {
                    at += n;
                    f(self, pkt);
                    if self.failed || (self.ended && !self.sideband) {
                        return at;
                    }
                }
            }
        }
    }

    /// One packet of the report itself.
    fn report_line(&mut self, pkt: Pkt<'_>) {
        if self.ended {
            // Nothing follows a report's flush but the answer's own.
            if !matches!(pkt, Pkt::Flush) || !self.sideband {
                self.failed = true;
            }
            return;
        }
        let line = match pkt {
            Pkt::Flush => {
                // A report is `unpack ...` first; a flush before it is not one.
                if self.unpack.is_none() {
                    self.failed = true;
                }
                self.ended = true;
                return;
            }
            Pkt::Delim | Pkt::ResponseEnd => {
                self.failed = true;
                return;
            }
            Pkt::Data(d) => d,
        };
        let Ok(text) = std::str::from_utf8(line) else {
            self.failed = true;
            return;
        };
        let text = text.strip_suffix('\n').unwrap_or(text);
        match self.unpack {
            None => match text.strip_prefix("unpack ") {
                Some(status) => self.unpack = Some(status == "ok"),
                None => self.failed = true,
            },
            Some(_) => {
                if let Some(r) = text.strip_prefix("ok ") {
                    self.ok.push(r.to_owned());
                } else if let Some(rest) = text.strip_prefix("ng ") {
                    let (r, why) = rest.split_once(' ').unwrap_or((rest, ""));
                    self.ng.push((r.to_owned(), why.to_owned()));
                } else if text.starts_with("option ") {
                    // report-status-v2's details of the `ok` before it.
                } else {
                    self.failed = true;
                }
                if self.ok.len() + self.ng.len() > MAX_REPORTED {
                    self.failed = true;
                }
            }
        }
    }

    /// What the report said, as far as it was read: refs are confirmed only by a whole report
    /// that said `unpack ok`.
    pub fn finish(self) -> PushReport {
        let complete = !self.failed && self.ended && self.unpack == Some(true);
        PushReport {
            ok: if complete { self.ok } else { Vec::new() },
            ng: self.ng,
            complete,
        }
    }
}

/// `receive-pack`'s whole output over SSH (or from a local `git receive-pack`): its ref
/// advertisement, which ends with the first flush (after a `version 1` line, when asked for),
/// then its answer to the push. Keeps the answer, at most `max` bytes of it; a longer one, or
/// an advertisement that is not pkt-lines, keeps nothing.
#[derive(Debug)]
pub struct AnswerCapture {
    in_advert: bool,
    partial: Vec<u8>,
    answer: Vec<u8>,
    max: usize,
    spoiled: bool,
}

impl AnswerCapture {
    /// A capture keeping at most `max` bytes of the answer.
    pub fn new(max: usize) -> Self {
        Self {
            in_advert: true,
            partial: Vec::new(),
            answer: Vec::new(),
            max,
            spoiled: false,
        }
    }

    /// The next bytes of the output.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.spoiled {
            return;
        }
        if self.in_advert {
            self.partial.extend_from_slice(chunk);
            let mut at = 0;
            loop {
                match read_pkt(&self.partial[at..]) {
                    Err(_) => {
                        self.spoiled = true;
                        return;
                    }
                    Ok(None) => break,
                    Ok(Some((pkt, n))) => {
                        at += n;
                        if pkt == Pkt::Flush {
                            self.in_advert = false;
                            break;
                        }
                    }
                }
            }
            if self.in_advert {
                self.partial.drain(..at);
                return;
            }
            let rest = self.partial.split_off(at);
            self.partial = Vec::new();
            return self.keep(&rest);
        }
        self.keep(chunk);
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.answer.len() + bytes.len() > self.max {
            self.spoiled = true;
            self.answer = Vec::new();
        } else {
            self.answer.extend_from_slice(bytes);
        }
    }

    /// The answer, when the advertisement ended and the answer was kept whole.
    pub fn into_answer(self) -> Option<Vec<u8>> {
        (!self.spoiled && !self.in_advert).then_some(self.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktline::pkt_frame;

    fn report(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            pkt_frame(&mut out, l.as_bytes());
        }
        out.extend_from_slice(b"0000");
        out
    }

    fn sideband(report: &[u8], cut: usize) -> Vec<u8> {
        let mut out = Vec::new();
        pkt_frame(&mut out, b"\x02Resolving deltas: 100% (1/1)\n");
        for chunk in report.chunks(cut) {
            let mut band = vec![1u8];
            band.extend_from_slice(chunk);
            pkt_frame(&mut out, &band);
        }
        out.extend_from_slice(b"0000");
        out
    }

    fn read(sb: bool, bytes: &[u8], step: usize) -> PushReport {
        let mut r = ReportReader::new(sb);
        for c in bytes.chunks(step.max(1)) {
            r.feed(c);
        }
        r.finish()
    }

    #[test]
    fn a_whole_report_confirms_its_ok_refs_however_it_is_cut() {
        let rep = report(&[
            "unpack ok\n",
            "ok refs/heads/main\n",
            "option refname refs/heads/main\n",
            "ng refs/heads/dev pre-receive hook declined\n",
            "ok refs/tags/v1\n",
        ]);
        let want = PushReport {
            ok: vec!["refs/heads/main".into(), "refs/tags/v1".into()],
            ng: vec![("refs/heads/dev".into(), "pre-receive hook declined".into())],
            complete: true,
        };
        for step in [1, 2, 3, 7, 1000] {
            assert_eq!(read(false, &rep, step), want, "plain, step {step}");
            for cut in [1, 5, 11, 65515] {
                assert_eq!(
                    read(true, &sideband(&rep, cut), step),
                    want,
                    "band, {cut}/{step}"
                );
            }
        }
    }

    #[test]
    fn anything_but_a_whole_unpack_ok_report_confirms_nothing() {
        let unpack_failed = report(&[
            "unpack index-pack abnormal exit\n",
            "ng refs/heads/main unpacker error\n",
        ]);
        assert_eq!(read(false, &unpack_failed, 3).ok, Vec::<String>::new());
        let whole = report(&["unpack ok\n", "ok refs/heads/main\n"]);
        // Cut off before its flush.
        let cut = &whole[..whole.len() - 4];
        assert!(!read(false, cut, 4).complete);
        assert!(read(false, cut, 4).ok.is_empty());
        // A band-3 error in the middle.
        let mut err = sideband(&whole, 5);
        let mut fatal = Vec::new();
        pkt_frame(&mut fatal, b"\x03fatal: the remote end hung up\n");
        err.splice(0..0, fatal);
        assert!(read(true, &err, 9).ok.is_empty());
        // Not a report at all, or a malformed packet.
        for junk in [
            &b"0008NAK\n0000"[..],
            b"zzzz",
            b"0000",
            b"000eunpack ok\n0003",
        ] {
            assert!(read(false, junk, 2).ok.is_empty(), "{junk:?}");
            assert!(read(true, junk, 2).ok.is_empty(), "{junk:?}");
        }
        // A line the report does not have.
        let odd = report(&[
            "unpack ok\n",
            "ok refs/heads/main\n",
            "maybe refs/heads/x\n",
        ]);
        assert!(read(false, &odd, 5).ok.is_empty());
        // Something after the report's flush without side-band.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"0009hello");
        assert_eq!(
            read(false, &trailing, 3).ok,
            ["refs/heads/main"],
            "read no further"
        );
    }

    #[test]
    fn over_ssh_the_answer_follows_the_advertisement() {
        let mut out = Vec::new();
        pkt_frame(&mut out, b"4b825dc642cb6eb9a060e54bf8d69288fbee4904 refs/heads/main\0report-status side-band-64k\n");
        pkt_frame(
            &mut out,
            b"4b825dc642cb6eb9a060e54bf8d69288fbee4904 refs/tags/v1\n",
        );
        out.extend_from_slice(b"0000");
        let rep = report(&["unpack ok\n", "ok refs/heads/main\n"]);
        let answer = sideband(&rep, 7);
        out.extend_from_slice(&answer);
        for step in [1, 3, 64, 10_000] {
            let mut c = AnswerCapture::new(1 << 20);
            for ch in out.chunks(step) {
                c.feed(ch);
            }
            let got = c.into_answer().unwrap();
            assert_eq!(got, answer, "step {step}");
            assert_eq!(read(true, &got, 5).ok, ["refs/heads/main"]);
        }
        // Too long an answer, or an advertisement that never ends, keeps nothing.
        let mut c = AnswerCapture::new(10);
        c.feed(&out);
        assert_eq!(c.into_answer(), None);
        let mut c = AnswerCapture::new(1 << 20);
        c.feed(&out[..40]);
        assert_eq!(c.into_answer(), None);
    }
}
