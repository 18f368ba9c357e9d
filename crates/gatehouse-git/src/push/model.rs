//! git's reading of a receive-pack request, transcribed function by function from git v2.47.3
//! (`builtin/receive-pack.c`: `read_head_info`, `queue_command`, `queue_commands_from_cert`,
//! `read_push_options`, `cmd_receive_pack`; `pkt-line.c`: `packet_read_with_status`; `connect.c`:
//! `parse_feature_value`; `gpg-interface.c`: `parse_signed_buffer`), with C strings kept as
//! NUL-terminated byte buffers. It reads a whole input at once and keeps git's structure, not
//! the incremental reader's, so that the two are independent readings to compare: the unit tests
//! and the `push_request` fuzz target check that [`super::PushReader`] never names other refs
//! than this model does. It is a test oracle, not used at run time.

use super::{Feed, ObjectFormat, PushError, PushLimits, PushReader, PushRequest, valid_ref_name};

/// What `receive-pack` does with an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// git dies before it acts on any command (the reason, as git words it).
    Dies(&'static str),
    /// git reads these commands (the ones its pre-receive hook is given, in order).
    Commands {
        /// `(old, new, ref)`: ids in lowercase hex, the ref as bytes.
        updates: Vec<(String, String, Vec<u8>)>,
        /// The push options it read, when it read them.
        push_options: Option<Vec<Vec<u8>>>,
        /// Where the pack starts (the bytes git read before it).
        pack_offset: usize,
    },
}

/// `packet_read_with_status`'s answer.
enum Status {
    Normal,
    Flush,
    Delim,
    ResponseEnd,
}

struct Reader<'a> {
    src: &'a [u8],
    pos: usize,
    chomp: bool,
    /// `reader->buffer`, NUL-terminated after `pktlen` bytes.
    buffer: Vec<u8>,
    pktlen: usize,
}

type Die = &'static str;

impl Reader<'_> {
    /// `packet_reader_read` with `PACKET_READ_DIE_ON_ERR_PACKET` and, when `chomp`,
    /// `PACKET_READ_CHOMP_NEWLINE`; no `GENTLE_ON_EOF`: a short read dies.
    fn read(&mut self) -> Result<Status, Die> {
        let Some(head) = self.src.get(self.pos..self.pos + 4) else {
            return Err("the remote end hung up unexpectedly");
        };
        self.pos += 4;
        let mut len: i64 = 0;
        for &c in head {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err("protocol error: bad line length character"),
            };
            len = len << 4 | i64::from(v);
        }
        match len {
            0 => return Ok(Status::Flush),
            1 => return Ok(Status::Delim),
            2 => return Ok(Status::ResponseEnd),
            3 => return Err("protocol error: bad line length"),
            _ => {}
        }
        let mut len = (len - 4) as usize;
        // sizeof(packet_buffer) == LARGE_PACKET_MAX
        if len >= 65520 {
            return Err("protocol error: bad line length");
        }
        let Some(data) = self.src.get(self.pos..self.pos + len) else {
            return Err("the remote end hung up unexpectedly");
        };
        self.pos += len;
        self.buffer.clear();
        self.buffer.extend_from_slice(data);
        if self.chomp && len > 0 && self.buffer[len - 1] == b'\n' {
            len -= 1;
        }
        self.buffer.truncate(len);
        self.buffer.push(0);
        if self.buffer.starts_with(b"ERR ") {
            return Err("remote error");
        }
        self.pktlen = len;
        Ok(Status::Normal)
    }

    fn line(&self) -> &[u8] {
        &self.buffer
    }
}

/// `strlen`
fn strlen(s: &[u8]) -> usize {
    s.iter().position(|&c| c == 0).unwrap_or(s.len())
}

/// `hexval`
fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `get_oid_hex` for the repository's format: the id's hex, lowercase.
fn get_oid_hex(s: &[u8], algo: ObjectFormat) -> Option<String> {
    let n = algo.hex_len();
    let hex = s.get(..n)?;
    hex.iter()
        .all(|&c| hexval(c).is_some())
        .then(|| hex.iter().map(|c| c.to_ascii_lowercase() as char).collect())
}

/// git's `isspace`.
fn isspace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// `parse_feature_value` over a NUL-terminated `list`: the value's start and length.
fn parse_feature_value(list: &[u8], feature: &[u8]) -> Option<(usize, usize)> {
    let end = strlen(list);
    let list = &list[..end];
    let mut fl = 0usize;
    while fl < list.len() {
        // strstr
        let found = (fl..=list.len().saturating_sub(feature.len()))
            .find(|&i| list[i..].starts_with(feature))?;
        if fl == found || isspace(list[found - 1]) {
            let value = found + feature.len();
            if value == list.len() || isspace(list[value]) {
                return Some((value, 0));
            } else if list[value] == b'=' {
                let v = value + 1;
                let len = list[v..]
                    .iter()
                    .position(|&c| matches!(c, b' ' | b'\t' | b'\n'))
                    .unwrap_or(list.len() - v);
                return Some((v, len));
            }
        }
        fl = found + 1;
    }
    None
}

/// `queue_command`: the line's first `linelen` bytes are the command; the ids may be read past
/// them (C reads on until the NUL), as git does.
fn queue_command(
    line: &[u8],
    linelen: usize,
    algo: ObjectFormat,
) -> Result<(String, String, Vec<u8>), Die> {
    const BAD: Die = "protocol error: expected old/new/ref";
    let n = algo.hex_len();
    let old = get_oid_hex(line, algo).ok_or(BAD)?;
    let mut p = n;
    if line.get(p) != Some(&b' ') {
        return Err(BAD);
    }
    p += 1;
    let new = get_oid_hex(&line[p..], algo).ok_or(BAD)?;
    p += n;
    if line.get(p) != Some(&b' ') {
        return Err(BAD);
    }
    p += 1;
    let refname = line[p..linelen.max(p)].to_vec();
    Ok((old, new, refname))
}

/// `parse_signed_buffer`
fn parse_signed_buffer(buf: &[u8]) -> usize {
    const SIGS: [&[u8]; 4] = [
        b"-----BEGIN PGP SIGNATURE-----",
        b"-----BEGIN PGP MESSAGE-----",
        b"-----BEGIN SIGNED MESSAGE-----",
        b"-----BEGIN SSH SIGNATURE-----",
    ];
    let size = buf.len();
    let mut len = 0;
    let mut matched = size;
    while len < size {
        if SIGS.iter().any(|s| buf[len..].starts_with(s)) {
            matched = len;
        }
        match buf[len..].iter().position(|&c| c == b'\n') {
            Some(eol) => len += eol + 1,
            None => len = size,
        }
    }
    matched
}

/// `queue_commands_from_cert`
fn queue_commands_from_cert(
    commands: &mut Vec<(String, String, Vec<u8>)>,
    push_cert: &[u8],
    algo: ObjectFormat,
) -> Result<(), Die> {
    // `if (*tail) die(...)`: `tail` points at the last command's `next`, which is always NULL.
    let Some(boc) = push_cert.windows(2).position(|w| w == b"\n\n") else {
        return Err("malformed push certificate");
    };
    let mut boc = boc + 2;
    let eoc = parse_signed_buffer(push_cert);
    // The strbuf is NUL-terminated: reads past a line stop at a NUL or LF.
    let mut buf = push_cert.to_vec();
    buf.push(0);
    while boc < eoc {
        let eol = buf[boc..eoc].iter().position(|&c| c == b'\n');
        let linelen = eol.unwrap_or(eoc - boc);
        commands.push(queue_command(&buf[boc..], linelen, algo)?);
        boc = match eol {
            Some(e) => boc + e + 1,
            None => eoc,
        };
    }
    Ok(())
}

/// The reader over `data` fed in pieces of `piece` bytes: the request and where the pack starts,
/// `None` when `data` ends inside the list.
pub fn read_in_pieces(
    data: &[u8],
    piece: usize,
) -> Result<Option<(PushRequest, usize)>, PushError> {
    let mut reader = PushReader::new(PushLimits::default());
    let mut at = 0;
    while at < data.len() {
        let end = (at + piece.max(1)).min(data.len());
        if let Feed::Done(n) = reader.feed(&data[at..end])? {
            return reader.finish().map(|r| Some((r, at + n)));
        }
        at = end;
    }
    Ok(None)
}

/// Panics where [`PushReader`] reads `data` otherwise than git (this model) does:
/// - the result does not depend on how the bytes are cut (each size in `pieces`);
/// - what the reader accepts, git reads the same way: the same commands in the same order, the
///   same push options, the pack at the same offset;
/// - what it refuses, git dies on, or git would be handed something the reader cannot name for
///   the policy (a ref git itself refuses to update, a push option that is not UTF-8);
/// - when it wants more, git reading this input would have hit its end.
pub fn assert_reader_agrees(data: &[u8], pieces: &[usize]) {
    let whole = read_in_pieces(data, data.len());
    for &piece in pieces {
        assert_eq!(read_in_pieces(data, piece), whole, "pieces of {piece}");
    }
    let format = match &whole {
        Ok(Some((r, _))) => r.object_format,
        _ => ObjectFormat::Sha1,
    };
    match (&whole, receive_pack(data, format, true)) {
        (
            Ok(Some((req, off))),
            Outcome::Commands {
                updates,
                push_options,
                pack_offset,
            },
        ) => {
            let mine: Vec<_> = req
                .updates
                .iter()
                .map(|u| (u.old.clone(), u.new.clone(), u.name.as_bytes().to_vec()))
                .collect();
            assert_eq!(mine, updates, "commands");
            assert_eq!(*off, pack_offset, "where the pack starts");
            let opts: Vec<Vec<u8>> = req
                .push_options
                .iter()
                .map(|o| o.as_bytes().to_vec())
                .collect();
            assert_eq!(opts, push_options.unwrap_or_default(), "push options");
        }
        (Ok(Some(_)), Outcome::Dies(why)) => panic!("git dies ({why}), the reader accepts"),
        (Ok(None), Outcome::Dies(why)) => {
            assert!(
                why.contains("hung up"),
                "the reader waits where git dies: {why}"
            );
        }
        (Ok(None), Outcome::Commands { .. }) => panic!("the reader waits where git goes on"),
        (Err(_), Outcome::Dies(_)) => {}
        (
            Err(e),
            Outcome::Commands {
                updates,
                push_options,
                ..
            },
        ) => {
            let unnameable = updates
                .iter()
                .any(|(_, _, r)| std::str::from_utf8(r).map_or(true, |r| !valid_ref_name(r)));
            let bad_option = push_options
                .iter()
                .flatten()
                .any(|o| std::str::from_utf8(o).is_err());
            assert!(
                (unnameable && *e == PushError::BadRefName)
                    || (bad_option && *e == PushError::BadPushOption),
                "the reader refuses ({e}) what git reads: {updates:?}"
            );
        }
    }
}

/// `cmd_receive_pack` from `read_head_info` to where it reads the pack, on a repository of
/// `algo` that advertises push options when `advertise_push_options` (and atomic pushes).
pub fn receive_pack(input: &[u8], algo: ObjectFormat, advertise_push_options: bool) -> Outcome {
    match run(input, algo, advertise_push_options) {
        Ok(o) => o,
        Err(why) => Outcome::Dies(why),
    }
}

fn run(input: &[u8], algo: ObjectFormat, advertise_push_options: bool) -> Result<Outcome, Die> {
    let mut reader = Reader {
        src: input,
        pos: 0,
        chomp: true,
        buffer: Vec::new(),
        pktlen: 0,
    };
    let mut use_push_options = false;
    let mut commands = Vec::new();
    let mut push_cert: Vec<u8> = Vec::new();
    // read_head_info
    loop {
        if !matches!(reader.read()?, Status::Normal) {
            break;
        }
        let line = reader.line().to_vec();
        if reader.pktlen > 8 && line.starts_with(b"shallow ") {
            if get_oid_hex(&line[8..], algo).is_none() {
                return Err("protocol error: expected shallow sha");
            }
            continue;
        }
        let linelen = strlen(&line);
        if linelen < reader.pktlen {
            let feature_list = &line[linelen + 1..];
            if advertise_push_options
                && parse_feature_value(feature_list, b"push-options").is_some()
            {
                use_push_options = true;
            }
            let (hash, len): (&[u8], usize) =
                match parse_feature_value(feature_list, b"object-format") {
                    Some((at, len)) => (&feature_list[at..], len),
                    None => (b"sha1", 4),
                };
            let name: &[u8] = match algo {
                ObjectFormat::Sha1 => b"sha1",
                ObjectFormat::Sha256 => b"sha256",
            };
            // xstrncmpz(the_hash_algo->name, hash, len)
            if hash.get(..len) != Some(name) {
                return Err("error: unsupported object format");
            }
        }
        if line[..linelen] == *b"push-cert" {
            let mut true_flush = false;
            reader.chomp = false;
            loop {
                match reader.read()? {
                    Status::Flush => {
                        true_flush = true;
                        break;
                    }
                    Status::Normal => {}
                    _ => return Err("protocol error: got an unexpected packet"),
                }
                let l = reader.line();
                let s = &l[..strlen(l)];
                if s == b"push-cert-end\n" {
                    break;
                }
                push_cert.extend_from_slice(s);
            }
            reader.chomp = true;
            if true_flush {
                break;
            }
            continue;
        }
        commands.push(queue_command(&line, linelen, algo)?);
    }
    if !push_cert.is_empty() {
        queue_commands_from_cert(&mut commands, &push_cert, algo)?;
    }
    if commands.is_empty() {
        return Ok(Outcome::Commands {
            updates: commands,
            push_options: None,
            pack_offset: reader.pos,
        });
    }
    let mut push_options = None;
    if use_push_options {
        let mut options = Vec::new();
        while let Status::Normal = reader.read()? {
            let l = reader.line();
            options.push(l[..strlen(l)].to_vec());
        }
        push_options = Some(options);
    }
    Ok(Outcome::Commands {
        updates: commands,
        push_options,
        pack_offset: reader.pos,
    })
}
