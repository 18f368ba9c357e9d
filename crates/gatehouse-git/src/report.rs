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
//! Only a complete report that says `unpack ok` confirms anything, and only a branch or a tag
//! it says `ok` to plainly:
//! - an `ok` with report-status-v2 options (`option refname`, `option new-oid`: the ref was handed
//!   to a `proc-receive` hook, AGit's `refs/for/*`, and what moved is another ref, or the same ref
//!   to another id) confirms nothing;
//! - a ref outside `refs/heads/` and `refs/tags/` is never confirmed (with report-status v1 a
//!   `proc-receive` ref comes back as a plain `ok`);
//! - a ref the report names twice counts as git's client counts it: the last status wins.
//!
//! Anything else (no report asked for, a cut-off answer, a band-3 error, a malformed packet,
//! more refs than a push can have) confirms nothing. The answer ends at the outer flush, as
//! git's demultiplexer reads it; nothing after it is read. Band 1 carries only the report and
//! `receive-pack`'s keepalives (empty band-1 packets, `0005\x01`), which add nothing. Bytes come
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
    /// Each ref's status, in the report's order: `Some(plain)` for `ok` (`plain` while no
    /// option followed it), `None` for `ng`.
    statuses: Vec<(String, Option<bool>)>,
    ng: Vec<(String, String)>,
    /// The last line was an `ok` or an `option`: an `option` may follow.
    options_may_follow: bool,
    /// The report's flush was read.
    ended: bool,
    /// With side-band: the answer's own flush was read; nothing after it is.
    done: bool,
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
            statuses: Vec::new(),
            ng: Vec::new(),
            options_may_follow: false,
            ended: false,
            done: false,
            failed: false,
        }
    }

    /// Reads the next bytes of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed || self.done || (self.ended && !self.sideband) {
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
                Pkt::Flush => me.done = true,
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
                    if self.failed || self.done || (self.ended && !self.sideband) {
                        return at;
                    }
                }
            }
        }
    }

    /// One packet of the report itself.
    fn report_line(&mut self, pkt: Pkt<'_>) {
        if self.ended {
            // Nothing follows a report's flush but keepalives and the answer's own flush.
            self.failed = true;
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
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        // Ref names are UTF-8 (git's `check_refname_format` and the push reader's); a refusal's
        // reason is whatever a hook printed.
        let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).ok();
        if self.unpack.is_none() {
            match line.strip_prefix(b"unpack ") {
                Some(status) => self.unpack = Some(status == b"ok"),
                None => self.failed = true,
            }
            return;
        }
        if let Some(r) = line.strip_prefix(b"ok ") {
            match text(r) {
                Some(r) => self.statuses.push((r, Some(true))),
                None => self.failed = true,
            }
            self.options_may_follow = true;
        } else if let Some(rest) = line.strip_prefix(b"ng ") {
            let (r, why) = match rest.iter().position(|b| *b == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            match text(r) {
                Some(r) => {
                    self.statuses.push((r.clone(), None));
                    self.ng.push((r, String::from_utf8_lossy(why).into_owned()));
                }
                None => self.failed = true,
            }
            self.options_may_follow = false;
        } else if line.starts_with(b"option ") {
            // report-status-v2's details of the `ok` before it: what moved is not plainly
            // that ref to the pushed id.
            match self.statuses.last_mut() {
                Some((_, Some(plain))) if self.options_may_follow => *plain = false,
                _ => self.failed = true,
            }
        } else {
            self.failed = true;
        }
        if self.statuses.len() > MAX_REPORTED {
            self.failed = true;
        }
    }

    /// Whether the report has been read to its flush (or can no longer be): what follows (the
    /// hooks' progress, keepalives, the answer's own flush) changes nothing, so its outcome can
    /// be acted on before the answer ends. git runs the `post-receive` hook, which starts CI
    /// jobs, after it sends the report.
    pub fn report_read(&self) -> bool {
        self.ended || self.failed
    }

    /// What the report said, as far as it was read: refs are confirmed only by a whole report
    /// that said `unpack ok`, and only a branch or tag whose last status was a plain `ok`.
    pub fn finish(self) -> PushReport {
        let complete = !self.failed && self.ended && self.unpack == Some(true);
        let mut ok = Vec::new();
        if complete {
            let mut seen = std::collections::HashSet::new();
            for (r, status) in self.statuses.iter().rev() {
                if seen.insert(r.as_str())
                    && *status == Some(true)
                    && (r.starts_with("refs/heads/") || r.starts_with("refs/tags/"))
                {
                    ok.push(r.clone());
                }
            }
            ok.reverse();
        }
        PushReport {
            ok,
            ng: self.ng,
            complete,
        }
    }
}

/// `receive-pack`'s whole output over SSH (or from a local `git receive-pack`): its ref
/// advertisement, which ends with its one flush (after a `version 1` line, when asked for), then
/// its answer to the push, read as it streams. Which way the answer comes (side-band or not) is
/// known only once the client's command list has been read, so it is read both ways at once,
/// each bounded; [`AnswerCapture::finish`] takes the one the push asked for.
#[derive(Debug)]
pub struct AnswerCapture {
    in_advert: bool,
    partial: Vec<u8>,
    plain: ReportReader,
    banded: ReportReader,
    spoiled: bool,
}

impl Default for AnswerCapture {
    fn default() -> Self {
        Self::new()
    }
}

impl AnswerCapture {
    /// A capture from the start of `receive-pack`'s output.
    pub fn new() -> Self {
        Self {
            in_advert: true,
            partial: Vec::new(),
            plain: ReportReader::new(false),
            banded: ReportReader::new(true),
            spoiled: false,
        }
    }

    /// The next bytes of the output.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.spoiled {
            return;
        }
        if !self.in_advert {
            self.plain.feed(chunk);
            self.banded.feed(chunk);
            return;
        }
        self.partial.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            match read_pkt(&self.partial[at..]) {
                Err(_) => {
                    self.spoiled = true;
                    self.partial = Vec::new();
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
        let rest = self.partial.split_off(at);
        if self.in_advert {
            self.partial = rest;
        } else {
            self.partial = Vec::new();
            self.plain.feed(&rest);
            self.banded.feed(&rest);
        }
    }

    /// What the answer's report said, read as the push asked for it (`sideband`).
    pub fn finish(self, sideband: bool) -> PushReport {
        if self.spoiled || self.in_advert {
            return PushReport::default();
        }
        if sideband {
            self.banded.finish()
        } else {
            self.plain.finish()
        }
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
        let mut advert = Vec::new();
        pkt_frame(&mut advert, b"version 1\n");
        pkt_frame(&mut advert, b"4b825dc642cb6eb9a060e54bf8d69288fbee4904 refs/heads/main\0report-status side-band-64k\n");
        pkt_frame(
            &mut advert,
            b"4b825dc642cb6eb9a060e54bf8d69288fbee4904 .have\n",
        );
        pkt_frame(
            &mut advert,
            b"shallow 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n",
        );
        advert.extend_from_slice(b"0000");
        let mut empty_repo = Vec::new();
        pkt_frame(
            &mut empty_repo,
            b"0000000000000000000000000000000000000000 capabilities^{}\0report-status\n",
        );
        empty_repo.extend_from_slice(b"0000");
        let rep = report(&["unpack ok\n", "ok refs/heads/main\n"]);
        for adv in [&advert, &empty_repo] {
            for (sb, answer) in [(true, sideband(&rep, 7)), (false, rep.clone())] {
                let mut out = adv.clone();
                out.extend_from_slice(&answer);
                for step in [1, 3, 64, 10_000] {
                    let mut c = AnswerCapture::new();
                    for ch in out.chunks(step) {
                        c.feed(ch);
                    }
                    assert_eq!(
                        c.finish(sb).ok,
                        ["refs/heads/main"],
                        "sideband {sb}, step {step}"
                    );
                }
            }
        }
        // An advertisement that never ends, or is not pkt-lines, confirms nothing.
        let mut c = AnswerCapture::new();
        c.feed(&advert[..40]);
        assert!(!c.finish(true).complete);
        let mut c = AnswerCapture::new();
        c.feed(b"zzzz0000");
        c.feed(&rep);
        assert!(!c.finish(false).complete);
    }

    #[test]
    fn keepalives_options_repeats_and_what_follows_the_end_read_as_git_reads_them() {
        // receive-pack's keepalives (empty band-1 packets), before and after the report.
        let rep = report(&["unpack ok\n", "ok refs/heads/main\n"]);
        let mut out = Vec::new();
        out.extend_from_slice(b"0005\x01");
        let band = sideband(&rep, 9);
        out.extend_from_slice(&band[..band.len() - 4]);
        out.extend_from_slice(b"0005\x010005\x01");
        pkt_frame(&mut out, b"\x02post-receive says hello\n");
        out.extend_from_slice(b"0000");
        assert_eq!(read(true, &out, 3).ok, ["refs/heads/main"]);
        // report-status-v2: a ref a proc-receive hook handled moved another ref, or to another
        // id: not confirmed. An option after an `ng`, or first, is malformed.
        let v2 = report(&[
            "unpack ok\n",
            "ok refs/heads/main\n",
            "option refname refs/pull/7/head\n",
            "ok refs/heads/dev\n",
            "option new-oid 0123456789012345678901234567890123456789\n",
            "ok refs/heads/plain\n",
        ]);
        assert_eq!(read(false, &v2, 4).ok, ["refs/heads/plain"]);
        let stray = report(&["unpack ok\n", "ng refs/heads/x no\n", "option refname y\n"]);
        assert!(!read(false, &stray, 4).complete);
        // A ref named twice: the last status counts, as git's client reads it.
        let twice = report(&[
            "unpack ok\n",
            "ok refs/heads/x\n",
            "ng refs/heads/x proc-receive failed to report status\n",
            "ng refs/heads/y no\n",
            "ok refs/heads/y\n",
        ]);
        assert_eq!(read(false, &twice, 5).ok, ["refs/heads/y"]);
        // Only branches and tags: `refs/for/*` is the forge's to handle.
        let agit = report(&["unpack ok\n", "ok refs/for/main\n", "ok refs/tags/v1\n"]);
        assert_eq!(read(false, &agit, 5).ok, ["refs/tags/v1"]);
        // A hook's reason in any bytes does not spoil the report.
        let mut latin = Vec::new();
        pkt_frame(&mut latin, b"unpack ok\n");
        pkt_frame(&mut latin, b"ng refs/heads/x caf\xe9\n");
        pkt_frame(&mut latin, b"ok refs/heads/main\n");
        latin.extend_from_slice(b"0000");
        assert_eq!(read(false, &latin, 2).ok, ["refs/heads/main"]);
        // The answer ends at its flush: a report after it is never read.
        let mut late = Vec::new();
        late.extend_from_slice(b"0000");
        late.extend_from_slice(&sideband(&rep, 5));
        assert!(read(true, &late, 3).ok.is_empty());
    }
}
