//! Git's pkt-line framing (`pkt-line.c`): a four-hex-digit length that counts itself, then the
//! payload; `0000` flush, `0001` delimiter, `0002` response end.
//!
//! Everything here parses attacker-controlled bytes: fuzzed (`fuzz/fuzz_targets/push_request.rs`).

/// git's `LARGE_PACKET_MAX`: the size of the buffer git reads a pkt-line into. A payload must be
/// strictly smaller (`packet_read_with_status` dies on `len >= size`), so the largest pkt-line
/// git reads is `PKT_MAX + 3` bytes, header included.
pub const PKT_MAX: usize = 65520;

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

/// A pkt-line length git refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid pkt-line length")]
pub struct BadPktLength;

/// What a pkt-line's four length digits say: a special packet, or the length of a data packet
/// (header included). Hex digits of either case, as git's `hexval` reads them.
pub fn pkt_length(head: [u8; 4]) -> Result<PktLength, BadPktLength> {
    let mut len = 0usize;
    for b in head {
        let d = (b as char).to_digit(16).ok_or(BadPktLength)?;
        len = len * 16 + d as usize;
    }
    match len {
        0 => Ok(PktLength::Flush),
        1 => Ok(PktLength::Delim),
        2 => Ok(PktLength::ResponseEnd),
        3 => Err(BadPktLength),
        n if n - 4 >= PKT_MAX => Err(BadPktLength),
        n => Ok(PktLength::Data(n)),
    }
}

/// The meaning of a pkt-line header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PktLength {
    /// `0000`
    Flush,
    /// `0001`
    Delim,
    /// `0002`
    ResponseEnd,
    /// A data packet of this many bytes, the four header bytes included (4 for an empty one).
    Data(usize),
}

/// Reads one pkt-line from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and how many bytes it took.
pub fn read_pkt(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, BadPktLength> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    match pkt_length([a, b, c, d])? {
        PktLength::Flush => Ok(Some((Pkt::Flush, 4))),
        PktLength::Delim => Ok(Some((Pkt::Delim, 4))),
        PktLength::ResponseEnd => Ok(Some((Pkt::ResponseEnd, 4))),
        PktLength::Data(len) => Ok(buf.get(4..len).map(|data| (Pkt::Data(data), len))),
    }
}

/// Frames a pkt-line.
pub(crate) fn pkt_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkt_lines() {
        assert_eq!(read_pkt(b"0000rest"), Ok(Some((Pkt::Flush, 4))));
        assert_eq!(read_pkt(b"0001"), Ok(Some((Pkt::Delim, 4))));
        assert_eq!(read_pkt(b"0004"), Ok(Some((Pkt::Data(b""), 4))));
        assert_eq!(read_pkt(b"0008abcdXX"), Ok(Some((Pkt::Data(b"abcd"), 8))));
        assert_eq!(read_pkt(b"0008ABCD"), Ok(Some((Pkt::Data(b"ABCD"), 8))));
        assert_eq!(
            read_pkt(b"000Aabcdef"),
            Ok(Some((Pkt::Data(b"abcdef"), 10)))
        );
        assert_eq!(read_pkt(b"0008ab"), Ok(None));
        assert_eq!(read_pkt(b"00"), Ok(None));
        assert_eq!(read_pkt(b"0003"), Err(BadPktLength));
        assert_eq!(read_pkt(b"zzzz"), Err(BadPktLength));
        assert_eq!(read_pkt(b"+001"), Err(BadPktLength));
        assert_eq!(read_pkt(b" 001"), Err(BadPktLength));
    }

    #[test]
    fn the_longest_line_is_the_one_git_reads() {
        // git reads into a 65520-byte buffer and dies on a payload that does not fit below it.
        assert_eq!(pkt_length(*b"fff3"), Ok(PktLength::Data(65523)));
        assert_eq!(pkt_length(*b"fff4"), Err(BadPktLength));
        assert_eq!(pkt_length(*b"ffff"), Err(BadPktLength));
    }
}
