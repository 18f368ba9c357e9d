//! The command list at the start of a `git-receive-pack` request (the ref updates a push asks
//! for), read exactly as git's `receive-pack` reads it, before the pack, so that policy can decide
//! per ref and no ref git acts on goes undecided.
//!
//! The rules are git's, from `builtin/receive-pack.c` (`read_head_info`, `queue_command`,
//! `queue_commands_from_cert`, `read_push_options`), `pkt-line.c` (`packet_read_with_status`
//! with `PACKET_READ_CHOMP_NEWLINE | PACKET_READ_DIE_ON_ERR_PACKET`), `connect.c`
//! (`parse_feature_value`) and `gpg-interface.c` (`parse_signed_buffer`), read at git v2.47.3
//! (the same functions are unchanged at v2.55). In short:
//!
//! - Any packet other than a data packet (flush, delimiter, response end) ends the list; a data
//!   packet starting `ERR ` makes git die. One trailing LF is removed from each line.
//! - `shallow <id>` lines may come anywhere in the list (longer than 8 bytes, valid hex id).
//! - Every line with a NUL carries a feature list: the C string after the first NUL (a second
//!   NUL ends it). Any such line may switch features on; a feature is a word that starts the list
//!   or follows a space, and ends at a space, `=` or the end.
//! - A line whose C string is `push-cert` starts a certificate: its packets are appended raw (no
//!   LF removed, each up to its first NUL) until `push-cert-end\n`, after which the list goes on;
//!   a flush inside the certificate ends the whole list. At the end, the commands of the
//!   certificate are the lines after its first `\n\n` and before its last signature header line,
//!   and they follow any unsigned commands (git's "both" check compares a pointer that is always
//!   NULL, so a mix is accepted).
//! - A command is `<old> SP <new> SP <ref>`, ids in the repository's hash (hex of either case),
//!   the ref up to the first NUL. A zero new id deletes the ref whatever the old id says.
//! - Push options follow the list only when a feature list asked for `push-options` and the
//!   list has commands. git reads them only when it also advertised them; reading them whenever
//!   the client asked is never less than git reads.
//!
//! Where git would die, or would act on something Gatehouse cannot name for the policy (a ref
//! name `check-ref-format` refuses, not UTF-8, an id length the declared object format does not
//! have), the reader refuses: what Gatehouse cannot decide is never forwarded.
//!
//! The reader is incremental: each byte is looked at once, whatever the chunking, so a command
//! list sent a byte at a time costs what it costs in one piece. A differential test against the
//! real `git receive-pack` (`tests/receive_pack.rs`) and a fuzz target against [`model`] (a
//! straight transcription of git's functions) check that the two readings agree.

use crate::pktline::{PktLength, pkt_frame, pkt_length};

#[doc(hidden)]
pub mod corpus;
#[doc(hidden)]
pub mod model;

/// The defaults of [`PushLimits`].
pub const MAX_COMMAND_BYTES: usize = 4 * 1024 * 1024;

/// The default most ref updates in one push.
pub const MAX_COMMANDS: usize = 100_000;

/// How much of a push is read before the pack at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    /// Bytes of command list, certificate and push options.
    pub max_bytes: usize,
    /// Ref updates (and, separately, push options and shallow lines).
    pub max_commands: usize,
}

impl PushLimits {
    /// Limits from configured values (a byte count too large for this platform means none).
    pub fn new(max_bytes: u64, max_commands: usize) -> Self {
        PushLimits {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_commands,
        }
    }
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_bytes: MAX_COMMAND_BYTES,
            max_commands: MAX_COMMANDS,
        }
    }
}

/// Why a push's command list is refused. Every case is the client's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// A pkt-line length git refuses (not four hex digits, `0003`, or over 65523).
    #[error("invalid pkt-line length")]
    BadLength,
    /// A line starting `ERR ` (git dies on it).
    #[error("error packet in the command list")]
    ErrPacket,
    /// A delimiter or response-end packet inside a push certificate.
    #[error("unexpected packet in the push certificate")]
    Unexpected,
    /// A command that is not `<old-id> SP <new-id> SP <ref>`.
    #[error("invalid ref update command")]
    BadCommand,
    /// A `shallow` line without a valid id.
    #[error("invalid shallow line")]
    BadShallow,
    /// A ref name git would refuse, or one that is not UTF-8.
    #[error("invalid ref name")]
    BadRefName,
    /// An `object-format` that is not `sha1` or `sha256`, two different ones, or ids of another
    /// length than the declared format has.
    #[error("unsupported or inconsistent object format")]
    ObjectFormat,
    /// A push certificate without the empty line before its commands.
    #[error("invalid push certificate")]
    BadCertificate,
    /// A push option that is not UTF-8.
    #[error("push option is not UTF-8")]
    BadPushOption,
    /// More bytes before the pack, or more updates, options or shallow lines, than the limits.
    #[error("push command list too large")]
    TooLarge,
    /// The input ended before the command list (and push options) did.
    #[error("the push ended inside its command list")]
    Truncated,
}

/// What a ref update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefOp {
    /// The old id is all zeros (and the new one is not).
    Create,
    /// Both ids are set.
    Update,
    /// The new id is all zeros, whatever the old one is: git deletes the ref even when the old
    /// id is zero or names no object.
    Delete,
}

impl RefOp {
    /// The action the policy is asked about for a ref changed this way.
    pub const fn action(self) -> gatehouse_core::Action {
        match self {
            RefOp::Create => gatehouse_core::Action::RefCreate,
            RefOp::Update => gatehouse_core::Action::RefUpdate,
            RefOp::Delete => gatehouse_core::Action::RefDelete,
        }
    }

    /// `create`, `update` or `delete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefOp::Create => "create",
            RefOp::Update => "update",
            RefOp::Delete => "delete",
        }
    }
}

/// One `<old-id> <new-id> <ref>` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The ref's current id, lowercase hex (all zeros to create it).
    pub old: String,
    /// The ref's new id, lowercase hex (all zeros to delete it).
    pub new: String,
    /// The full ref name, e.g. `refs/heads/main`.
    pub name: String,
}

impl RefUpdate {
    /// Create, update or delete, as git's `update()` tells them apart.
    pub fn op(&self) -> RefOp {
        if is_zero(&self.new) {
            RefOp::Delete
        } else if is_zero(&self.old) {
            RefOp::Create
        } else {
            RefOp::Update
        }
    }
}

/// The object format of the ids in a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectFormat {
    /// 40 hex digits.
    #[default]
    Sha1,
    /// 64 hex digits.
    Sha256,
}

impl ObjectFormat {
    /// Hex digits in an id.
    pub const fn hex_len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 40,
            ObjectFormat::Sha256 => 64,
        }
    }
}

/// The features `receive-pack` reads from the client's feature lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushFeatures {
    /// `report-status`: the client reads a report.
    pub report_status: bool,
    /// `report-status-v2`.
    pub report_status_v2: bool,
    /// `side-band-64k` (receive-pack uses no other side-band).
    pub side_band_64k: bool,
    /// `quiet`.
    pub quiet: bool,
    /// `atomic` (honoured by git when it advertised it).
    pub atomic: bool,
    /// `push-options`: push options follow the command list.
    pub push_options: bool,
}

/// The command list of a push.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushRequest {
    /// Ids from `shallow` lines, lowercase.
    pub shallow: Vec<String>,
    /// The ref updates, in git's order (unsigned commands, then the certificate's).
    pub updates: Vec<RefUpdate>,
    /// What the feature lists asked for.
    pub features: PushFeatures,
    /// The object format the ids were read in.
    pub object_format: ObjectFormat,
    /// Push options (`git push -o ...`), when the client asked to send them.
    pub push_options: Vec<String>,
    /// Some of the commands came in a push certificate.
    pub signed: bool,
}

impl PushRequest {
    /// Whether the client reads a report-status (v1 or v2) after the push.
    pub fn wants_report(&self) -> bool {
        self.features.report_status || self.features.report_status_v2
    }
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `read_head_info`'s loop.
    Head,
    /// Inside a push certificate.
    Cert,
    /// `read_push_options`.
    Options,
    /// The command list (and options) ended; the pack follows.
    Done,
}

/// The outcome of feeding bytes to a [`PushReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The command list goes on.
    NeedMore,
    /// The command list ended after this many bytes of the chunk just fed; the rest (if any) is
    /// the start of the pack.
    Done(usize),
}

/// Reads a push's command list incrementally (sans I/O): feed it the request body as it
/// arrives, in chunks of any size, until it says [`Feed::Done`].
#[derive(Debug)]
pub struct PushReader {
    limits: PushLimits,
    phase: Phase,
    /// The packet being read: its four length digits, then its payload.
    pkt: Vec<u8>,
    /// The current packet's total length, once its header is read.
    pkt_len: Option<usize>,
    /// Bytes taken so far.
    taken: usize,
    /// The certificate's payloads, each up to its first NUL.
    cert: Vec<u8>,
    /// The object format, once a feature list declared it or an id was read.
    format: Option<ObjectFormat>,
    req: PushRequest,
}

impl PushReader {
    /// A reader for one push.
    pub fn new(limits: PushLimits) -> Self {
        PushReader {
            limits,
            phase: Phase::Head,
            pkt: Vec::new(),
            pkt_len: None,
            taken: 0,
            cert: Vec::new(),
            format: None,
            req: PushRequest::default(),
        }
    }

    /// Takes the next bytes of the request body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Feed, PushError> {
        let mut rest = chunk;
        while self.phase != Phase::Done {
            let Some(len) = self.pkt_len else {
                let take = (4 - self.pkt.len()).min(rest.len());
                self.take(&rest[..take])?;
                rest = &rest[take..];
                let Ok(&head) = <&[u8; 4]>::try_from(self.pkt.as_slice()) else {
                    return Ok(Feed::NeedMore);
                };
                match pkt_length(head).map_err(|_| PushError::BadLength)? {
                    PktLength::Data(n) => {
                        if self.taken - 4 + n > self.limits.max_bytes {
                            return Err(PushError::TooLarge);
                        }
                        self.pkt_len = Some(n);
                    }
                    special => {
                        self.pkt.clear();
                        self.end_of_section(special)?;
                    }
                }
                continue;
            };
            let take = (len - self.pkt.len()).min(rest.len());
            self.take(&rest[..take])?;
            rest = &rest[take..];
            if self.pkt.len() < len {
                return Ok(Feed::NeedMore);
            }
            let pkt = std::mem::take(&mut self.pkt);
            self.pkt_len = None;
            let done = self.line(&pkt[4..]);
            self.pkt = pkt;
            self.pkt.clear();
            done?;
        }
        Ok(Feed::Done(chunk.len() - rest.len()))
    }

    /// The command list, once [`feed`](Self::feed) said [`Feed::Done`]; else why the input that
    /// ended here cannot be decided ([`PushError::Truncated`]).
    pub fn finish(self) -> Result<PushRequest, PushError> {
        match self.phase {
            Phase::Done => Ok(self.req),
            _ => Err(PushError::Truncated),
        }
    }

    /// Whether the command list has ended.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Bytes taken so far (the command list's length, once done).
    pub fn taken(&self) -> usize {
        self.taken
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        self.taken += bytes.len();
        if self.taken > self.limits.max_bytes {
            return Err(PushError::TooLarge);
        }
        self.pkt.extend_from_slice(bytes);
        Ok(())
    }

    /// A flush, delimiter or response-end packet: `packet_reader_read` returns something other
    /// than `PACKET_READ_NORMAL`.
    fn end_of_section(&mut self, special: PktLength) -> Result<(), PushError> {
        match self.phase {
            Phase::Head => self.end_of_head(),
            // In a certificate only a flush is expected; it ends the whole list.
            Phase::Cert if special == PktLength::Flush => self.end_of_head(),
            Phase::Cert => Err(PushError::Unexpected),
            Phase::Options | Phase::Done => {
                self.phase = Phase::Done;
                Ok(())
            }
        }
    }

    /// The end of `read_head_info`: the certificate's commands are queued after the others; push
    /// options follow when asked for and there are commands.
    fn end_of_head(&mut self) -> Result<(), PushError> {
        if !self.cert.is_empty() {
            let cert = std::mem::take(&mut self.cert);
            self.commands_from_cert(&cert)?;
            self.req.signed = true;
        }
        self.phase = if self.req.features.push_options && !self.req.updates.is_empty() {
            Phase::Options
        } else {
            Phase::Done
        };
        Ok(())
    }

    /// A data packet's payload.
    fn line(&mut self, payload: &[u8]) -> Result<(), PushError> {
        if self.phase == Phase::Cert {
            // Read without removing the LF; git's DIE_ON_ERR_PACKET still applies.
            if payload.starts_with(b"ERR ") {
                return Err(PushError::ErrPacket);
            }
            let s = c_str(payload);
            if s == b"push-cert-end\n" {
                self.phase = Phase::Head;
            } else {
                self.cert.extend_from_slice(s);
            }
            return Ok(());
        }
        let line = payload.strip_suffix(b"\n").unwrap_or(payload);
        if line.starts_with(b"ERR ") {
            return Err(PushError::ErrPacket);
        }
        if self.phase == Phase::Options {
            let option = std::str::from_utf8(c_str(line)).map_err(|_| PushError::BadPushOption)?;
            if self.req.push_options.len() >= self.limits.max_commands {
                return Err(PushError::TooLarge);
            }
            self.req.push_options.push(option.to_owned());
            return Ok(());
        }
        if line.len() > 8 && line.starts_with(b"shallow ") {
            let len = self.format().hex_len();
            let hex = c_str(&line[8..]);
            let id = hex
                .get(..len)
                .filter(|h| is_hex(h))
                .ok_or(PushError::BadShallow)?;
            if self.req.shallow.len() >= self.limits.max_commands {
                return Err(PushError::TooLarge);
            }
            self.req.shallow.push(lowercase(id));
            return Ok(());
        }
        let text = c_str(line);
        if let Some(features) = line.get(text.len() + 1..) {
            self.features(c_str(features))?;
        }
        if text == b"push-cert" {
            self.phase = Phase::Cert;
            return Ok(());
        }
        self.command(text)
    }

    /// One feature list (`parse_feature_request` for each feature `receive-pack` reads).
    fn features(&mut self, list: &[u8]) -> Result<(), PushError> {
        let f = &mut self.req.features;
        f.report_status |= feature_value(list, b"report-status").is_some();
        f.report_status_v2 |= feature_value(list, b"report-status-v2").is_some();
        f.side_band_64k |= feature_value(list, b"side-band-64k").is_some();
        f.quiet |= feature_value(list, b"quiet").is_some();
        f.atomic |= feature_value(list, b"atomic").is_some();
        f.push_options |= feature_value(list, b"push-options").is_some();
        // git compares the declared format (sha1 when none is named) with the repository's and
        // dies on a difference: two different declarations cannot both hold.
        let declared = match feature_value(list, b"object-format") {
            None | Some(b"sha1") => ObjectFormat::Sha1,
            Some(b"sha256") => ObjectFormat::Sha256,
            Some(_) => return Err(PushError::ObjectFormat),
        };
        match self.format {
            Some(f) if f != declared => Err(PushError::ObjectFormat),
            _ => {
                self.format = Some(declared);
                self.req.object_format = declared;
                Ok(())
            }
        }
    }

    /// The object format ids are read in: the declared one, else SHA-1 from here on (a later
    /// declaration of SHA-256 is then refused, as git on a SHA-1 repository would die on it;
    /// on a SHA-256 repository git would accept it, and Gatehouse refuses what it cannot tell).
    fn format(&mut self) -> ObjectFormat {
        *self.format.get_or_insert(ObjectFormat::Sha1)
    }

    /// `queue_command`: `<old> SP <new> SP <ref>`.
    fn command(&mut self, line: &[u8]) -> Result<(), PushError> {
        let update = parse_command(line, self.format())?;
        if self.req.updates.len() >= self.limits.max_commands {
            return Err(PushError::TooLarge);
        }
        self.req.updates.push(update);
        Ok(())
    }

    /// `queue_commands_from_cert`: the lines after the first `\n\n` and before the last line
    /// that starts a signature.
    fn commands_from_cert(&mut self, cert: &[u8]) -> Result<(), PushError> {
        let boc = find(cert, b"\n\n").ok_or(PushError::BadCertificate)? + 2;
        let eoc = signature_start(cert);
        let mut at = boc;
        while at < eoc {
            let end = cert[at..eoc]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(eoc, |i| at + i);
            self.command(&cert[at..end])?;
            at = if end < eoc { end + 1 } else { eoc };
        }
        Ok(())
    }
}

/// Reads a whole command list from the start of `buf`, as [`PushReader`] does in pieces: the
/// request and where the pack starts, or `None` when `buf` ends inside the list.
pub fn parse_push_request(
    buf: &[u8],
    limits: PushLimits,
) -> Result<Option<(PushRequest, usize)>, PushError> {
    let mut reader = PushReader::new(limits);
    match reader.feed(buf)? {
        Feed::Done(n) => reader.finish().map(|r| Some((r, n))),
        Feed::NeedMore => Ok(None),
    }
}

/// `<old> SP <new> SP <ref>` with ids of `format`'s length (hex digits of either case, as git's
/// `parse_oid_hex`), the ref a name git accepts.
fn parse_command(line: &[u8], format: ObjectFormat) -> Result<RefUpdate, PushError> {
    let n = format.hex_len();
    let id = |at: usize| {
        line.get(at..at + n)
            .filter(|h| is_hex(h))
            .ok_or(PushError::BadCommand)
    };
    let old = id(0)?;
    let new = id(n + 1)?;
    if line.get(n) != Some(&b' ') || line.get(2 * n + 1) != Some(&b' ') {
        return Err(PushError::BadCommand);
    }
    let name = std::str::from_utf8(&line[2 * n + 2..]).map_err(|_| PushError::BadRefName)?;
    if !valid_ref_name(name) {
        return Err(PushError::BadRefName);
    }
    Ok(RefUpdate {
        old: lowercase(old),
        new: lowercase(new),
        name: name.to_owned(),
    })
}

/// The bytes of `b` up to its first NUL: what C code sees of it.
fn c_str(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

fn is_hex(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_hexdigit)
}

fn lowercase(hex: &[u8]) -> String {
    hex.iter().map(|b| b.to_ascii_lowercase() as char).collect()
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// git's `isspace` (`sane_ctype`): space, tab, LF and CR only.
fn is_git_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `parse_feature_value`: the value of `feature` in `list` (empty when it has none), if the
/// list names it.
fn feature_value<'a>(list: &'a [u8], feature: &[u8]) -> Option<&'a [u8]> {
    let mut start = 0;
    while start < list.len() {
        let found = start + find(&list[start..], feature)?;
        if found == start || is_git_space(list[found - 1]) {
            let value = found + feature.len();
            match list.get(value) {
                None => return Some(&list[value..]),
                Some(&b) if is_git_space(b) => return Some(&list[value..value]),
                Some(b'=') => {
                    let v = &list[value + 1..];
                    let end = v
                        .iter()
                        .position(|b| matches!(b, b' ' | b'\t' | b'\n'))
                        .unwrap_or(v.len());
                    return Some(&v[..end]);
                }
                Some(_) => {}
            }
        }
        start = found + 1;
    }
    None
}

/// The signature headers `gpg-interface.c` knows (OpenPGP, X.509, SSH).
const SIGNATURE_HEADERS: [&[u8]; 4] = [
    b"-----BEGIN PGP SIGNATURE-----",
    b"-----BEGIN PGP MESSAGE-----",
    b"-----BEGIN SIGNED MESSAGE-----",
    b"-----BEGIN SSH SIGNATURE-----",
];

/// `parse_signed_buffer`: where the last line that starts a signature begins, else the end.
fn signature_start(buf: &[u8]) -> usize {
    let mut found = buf.len();
    let mut at = 0;
    while at < buf.len() {
        let line = &buf[at..];
        if SIGNATURE_HEADERS.iter().any(|h| line.starts_with(h)) {
            found = at;
        }
        at = line
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| at + i + 1);
    }
    found
}

/// Whether git would accept `name` as the ref of a push command (`check-ref-format`, for names
/// under `refs/`). Non-ASCII is allowed, as git allows it.
pub fn valid_ref_name(name: &str) -> bool {
    if !name.starts_with("refs/") || name.len() > 4096 || name.ends_with('/') || name.ends_with('.')
    {
        return false;
    }
    if name.contains("..") || name.contains("@{") {
        return false;
    }
    if name.bytes().any(|b| {
        b < 0x20 || b == 0x7f || matches!(b, b' ' | b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\')
    }) {
        return false;
    }
    name.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

/// The receive-pack answer for a refused push: `unpack ok`, then `ng <ref> <reason>` for every
/// ref (a push with one refused ref is refused whole), in side-band when the client asked for it
/// (`side-band-64k`, the only side-band `receive-pack` speaks), with the reasons also on the
/// progress band so that git prints them as `remote: ...`.
pub fn refused_push_report<R: std::fmt::Display>(
    push: &PushRequest,
    refused: &[(usize, R)],
) -> Vec<u8> {
    let mut report = Vec::new();
    pkt_frame(&mut report, b"unpack ok\n");
    for (i, u) in push.updates.iter().enumerate() {
        let why = match refused.iter().find(|(j, _)| *j == i) {
            Some((_, reason)) => format!("denied by Gatehouse policy: {reason}"),
            None => "push declined by Gatehouse: another ref in this push was refused".to_owned(),
        };
        pkt_frame(&mut report, format!("ng {} {why}\n", u.name).as_bytes());
    }
    report.extend_from_slice(b"0000");
    if !push.features.side_band_64k {
        return report;
    }
    let mut out = Vec::new();
    for (i, reason) in refused {
        if let Some(u) = push.updates.get(*i) {
            let msg = format!(
                "\x02Gatehouse: {} {} denied by policy ({reason})\n",
                u.op().as_str(),
                u.name
            );
            pkt_frame(&mut out, msg.as_bytes());
        }
    }
    for chunk in report.chunks(65515) {
        let mut band = Vec::with_capacity(chunk.len() + 1);
        band.push(1u8);
        band.extend_from_slice(chunk);
        pkt_frame(&mut out, &band);
    }
    out.extend_from_slice(b"0000");
    out
}

#[cfg(test)]
mod tests;
