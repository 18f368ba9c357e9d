//! W3C Trace Context (`traceparent`), read as the specification says: a header that does not
//! parse, or names an all-zero trace or span, is ignored (a new trace starts), never an error.

/// A `traceparent` that parsed: the caller's trace, its span (the parent of the next one) and
/// its flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id, never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span id, never all zero.
    pub parent_id: [u8; 8],
    /// The trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` value: version `00` with exactly four fields, or a later version
    /// (not `ff`) read for the four fields version `00` has and whatever follows ignored, as the
    /// specification's forward compatibility asks. Lower-case hex only.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        let mut fields = s.split('-');
        let (ver, trace, span, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let rest = fields.next();
        if ver == "00" && rest.is_some() {
            return None;
        }
        let mut v = [0u8; 1];
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut f = [0u8; 1];
        decode_lower_hex(ver, &mut v)?;
        decode_lower_hex(trace, &mut trace_id)?;
        decode_lower_hex(span, &mut parent_id)?;
        decode_lower_hex(flags, &mut f)?;
        if v[0] == 0xff || trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: f[0],
        })
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn decode_lower_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_as_the_specification_reads_it() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(t.sampled());
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let later =
            TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what")
                .unwrap();
        assert!(!later.sampled());
        assert!(
            TraceParent::parse(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t")
                .is_some()
        );
    }
}
