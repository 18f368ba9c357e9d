//! Git's pkt-line framing and the command list at the start of a `git-receive-pack` request
//! (the ref updates a push asks for), read before the pack so that policy can decide per ref.
//!
//! Everything here parses attacker-controlled bytes: fuzzed (`fuzz/fuzz_targets/push_request.rs`).

/// The largest pkt-line, header included (git's `LARGE_PACKET_MAX`).
pub const PKT_MAX: usize = 65520;

/// The most bytes of command list (and push options) read before the pack.
pub const MAX_COMMAND_BYTES: usize = 4 * 1024 * 1024;

/// The most ref updates one push may carry.
pub const MAX_COMMANDS: usize = 100_000;

/// One pkt-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// `0000`
    Flush,
    /// `0001` (protocol v2)
    Delim,
    /// `0002` (protocol v2)
    ResponseEnd,
    /// A line's payload, without its length prefix (and with its trailing LF, if any).
    Data(&'a [u8]),
}

/// Why bytes are not a valid push request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PktError {
    /// A length prefix that is not four hex digits, is 3 or less (other than the special
    /// packets) or is over [`PKT_MAX`].
    #[error("invalid pkt-line length")]
    BadLength,
    /// A command that is not `<old-id> SP <new-id> SP <ref>`.
    #[error("invalid ref update command")]
    BadCommand,
    /// A ref name git would not accept.
    #[error("invalid ref name")]
    BadRefName,
    /// The command list does not follow the protocol (e.g. a special packet where a line belongs).
    #[error("unexpected packet in the command list")]
    Unexpected,
    /// More than [`MAX_COMMAND_BYTES`] before the pack, or more than [`MAX_COMMANDS`] updates.
    #[error("push command list too large")]
    TooLarge,
    /// A push certificate that is not well-formed.
    #[error("invalid push certificate")]
    BadCertificate,
}

/// Reads one pkt-line from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and how many bytes it took.
pub fn read_pkt(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, PktError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = 0usize;
    for &b in head {
        let d = (b as char).to_digit(16).ok_or(PktError::BadLength)?;
        len = len * 16 + d as usize;
    }
    match len {
        0 => return Ok(Some((Pkt::Flush, 4))),
        1 => return Ok(Some((Pkt::Delim, 4))),
        2 => return Ok(Some((Pkt::ResponseEnd, 4))),
        3 => return Err(PktError::BadLength),
        n if n > PKT_MAX => return Err(PktError::BadLength),
        _ => {}
    }
    match buf.get(4..len) {
        Some(data) => Ok(Some((Pkt::Data(data), len))),
        None => Ok(None),
    }
}

/// What a ref update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefOp {
    /// The old id is all zeros.
    Create,
    /// Both ids are set.
    Update,
    /// The new id is all zeros.
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
}

impl RefOp {
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
    /// The ref's current id (all zeros to create it).
    pub old: String,
    /// The ref's new id (all zeros to delete it).
    pub new: String,
    /// The full ref name, e.g. `refs/heads/main`.
    pub name: String,
}

impl RefUpdate {
    /// Create, update or delete.
    pub fn op(&self) -> RefOp {
        if is_zero(&self.old) {
            RefOp::Create
        } else if is_zero(&self.new) {
            RefOp::Delete
        } else {
            RefOp::Update
        }
    }
}

/// The command list of a push.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushRequest {
    /// `shallow <id>` lines sent before the commands.
    pub shallow: Vec<String>,
    /// The ref updates, in order.
    pub updates: Vec<RefUpdate>,
    /// Capabilities named on the first command (`report-status`, `atomic`, `push-options`, ...).
    pub capabilities: Vec<String>,
    /// Push options (`git push -o ...`), when the `push-options` capability was asked for.
    pub push_options: Vec<String>,
    /// The commands came in a signed push certificate.
    pub signed: bool,
}

impl PushRequest {
    /// Whether the client asked for a capability (`atomic`, `report-status`, `side-band-64k`, ...).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c == name || c.split_once('=').is_some_and(|(k, _)| k == name))
    }
}

/// The outcome of reading the start of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushParse {
    /// The command list is complete; the pack (if any) starts at `pack_offset`.
    Complete {
        /// The commands.
        request: PushRequest,
        /// Where the command list (and push options) end.
        pack_offset: usize,
    },
    /// More bytes are needed.
    NeedMore,
}

fn is_hex_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Whether git would accept `name` as a full ref name (`git check-ref-format`, for names under
/// `refs/`).
pub fn valid_ref_name(name: &str) -> bool {
    if !name.starts_with("refs/") || name.len() > 4096 || name.ends_with('/') || name.ends_with('.')
    {
        return false;
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") || name == "@" {
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

fn strip_lf(d: &[u8]) -> &[u8] {
    d.strip_suffix(b"\n").unwrap_or(d)
}

fn text(d: &[u8]) -> Result<&str, PktError> {
    std::str::from_utf8(strip_lf(d)).map_err(|_| PktError::BadCommand)
}

fn parse_command(line: &str) -> Result<RefUpdate, PktError> {
    let mut parts = line.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(PktError::BadCommand);
    };
    if !is_hex_id(old)
        || !is_hex_id(new)
        || old.len() != new.len()
        || (is_zero(old) && is_zero(new))
    {
        return Err(PktError::BadCommand);
    }
    if !valid_ref_name(name) {
        return Err(PktError::BadRefName);
    }
    Ok(RefUpdate {
        old: old.to_owned(),
        new: new.to_owned(),
        name: name.to_owned(),
    })
}

/// A cursor over pkt-lines that reports "need more" instead of failing on a short buffer.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<Option<Pkt<'a>>, PktError> {
        if self.pos > MAX_COMMAND_BYTES {
            return Err(PktError::TooLarge);
        }
        match read_pkt(&self.buf[self.pos..])? {
            Some((p, n)) => {
                self.pos += n;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e? {
            Some(p) => p,
            None => return Ok(PushParse::NeedMore),
        }
    };
}

/// Reads the command list at the start of a receive-pack request body: `shallow` lines, the
/// commands (the first with its capabilities) or a push certificate, the flush packet, and the
/// push options when the `push-options` capability was asked for.
pub fn parse_push_request(buf: &[u8]) -> Result<PushParse, PktError> {
    let mut r = Reader { buf, pos: 0 };
    let mut req = PushRequest::default();
    let mut first = need!(r.next());
    // shallow lines
    while let Pkt::Data(d) = first {
        let line = text(d)?;
        match line.strip_prefix("shallow ") {
            Some(id) if is_hex_id(id) => {
                req.shallow.push(id.to_owned());
                first = need!(r.next());
            }
            Some(_) => return Err(PktError::BadCommand),
            None => break,
        }
    }
    let Pkt::Data(d) = first else {
        // A flush with no command: nothing to update (git sends this for an up-to-date push).
        return match first {
            Pkt::Flush => Ok(PushParse::Complete {
                request: req,
                pack_offset: r.pos,
            }),
            _ => Err(PktError::Unexpected),
        };
    };
    let d = strip_lf(d);
    let (head, caps) = match d.iter().position(|&b| b == 0) {
        Some(i) => (&d[..i], Some(&d[i + 1..])),
        None => (d, None),
    };
    if let Some(caps) = caps {
        let caps = std::str::from_utf8(caps).map_err(|_| PktError::BadCommand)?;
        req.capabilities = caps
            .split(' ')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
    }
    let head = std::str::from_utf8(head).map_err(|_| PktError::BadCommand)?;
    if head == "push-cert" {
        req.signed = true;
        if !parse_certificate(&mut r, &mut req)? {
            return Ok(PushParse::NeedMore);
        }
    } else {
        req.updates.push(parse_command(head)?);
        loop {
            match need!(r.next()) {
                Pkt::Flush => break,
                Pkt::Data(d) => {
                    req.updates.push(parse_command(text(d)?)?);
                    if req.updates.len() > MAX_COMMANDS {
                        return Err(PktError::TooLarge);
                    }
                }
                _ => return Err(PktError::Unexpected),
            }
        }
    }
    if req.has_capability("push-options") {
        loop {
            match need!(r.next()) {
                Pkt::Flush => break,
                Pkt::Data(d) => req.push_options.push(text(d)?.to_owned()),
                _ => return Err(PktError::Unexpected),
            }
        }
    }
    Ok(PushParse::Complete {
        request: req,
        pack_offset: r.pos,
    })
}

/// Reads a push certificate's lines up to `push-cert-end` and the flush after it; `Ok(false)`
/// when more bytes are needed. The commands are the lines after the first empty line and before
/// the signature.
fn parse_certificate(r: &mut Reader<'_>, req: &mut PushRequest) -> Result<bool, PktError> {
    let mut in_commands = false;
    let mut in_signature = false;
    loop {
        let Some(p) = r.next()? else { return Ok(false) };
        let Pkt::Data(d) = p else {
            return Err(PktError::BadCertificate);
        };
        let line = text(d).map_err(|_| PktError::BadCertificate)?;
        if line == "push-cert-end" {
            break;
        }
        if in_signature {
            continue;
        }
        if line.starts_with("-----BEGIN ") {
            in_signature = true;
        } else if line.is_empty() {
            in_commands = true;
        } else if in_commands {
            req.updates.push(parse_command(line)?);
            if req.updates.len() > MAX_COMMANDS {
                return Err(PktError::TooLarge);
            }
        }
    }
    if req.updates.is_empty() {
        return Err(PktError::BadCertificate);
    }
    match r.next()? {
        Some(Pkt::Flush) => Ok(true),
        Some(_) => Err(PktError::BadCertificate),
        None => Ok(false),
    }
}

/// Frames a pkt-line.
fn pkt_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// The receive-pack answer for a refused push: `unpack ok`, then `ng <ref> <reason>` for every
/// ref (a push with one refused ref is refused whole), in side-band when the client asked for it,
/// with the reasons also on the progress band so that git prints them as `remote: ...`.
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
    if !(push.has_capability("side-band-64k") || push.has_capability("side-band")) {
        return report;
    }
    let max = if push.has_capability("side-band-64k") {
        65515
    } else {
        995
    };
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
    for chunk in report.chunks(max) {
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
