use std::fmt;

use serde::{Deserialize, Serialize};

/// A size in bytes written as a number and a unit: `512KiB`, `256MiB`, `1GiB` (powers of 1024),
/// `100MB`, `1GB` (powers of 1000) or `4096B`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a number and a unit (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = crate::number_and_unit(s, "size", "256MiB, 1GiB, 100MB")?;
        let scale: u64 = match unit {
            "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => {
                return Err(format!(
                    "invalid size `{s}`: unit must be B, KB, MB, GB, KiB, MiB or GiB"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Self)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n != 0 && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}B")
    }
}

text_conversions!(ByteSize);

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units_and_print_back() {
        assert_eq!(ByteSize::parse("256MiB"), Ok(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("100MB"), Ok(ByteSize(100_000_000)));
        assert_eq!(ByteSize::parse(" 4096B "), Ok(ByteSize(4096)));
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
        for bad in [
            "",
            "12",
            "MiB",
            "1.5GiB",
            "-1MiB",
            "1mib",
            "99999999999999999999GiB",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        assert!(ByteSize::parse("18446744073709551615GiB").is_err());
    }
}
