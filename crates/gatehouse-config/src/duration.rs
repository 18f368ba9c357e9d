use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as a number and a unit: `250ms`, `10s`, `5m`, `1h`, `7d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Parses `250ms`, `10s`, `5m`, `1h` or `7d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = crate::number_and_unit(s, "duration", "10s, 5m, 250ms")?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "invalid duration `{s}`: unit must be ms, s, m, h or d"
                ));
            }
        };
        Ok(Self(d))
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            let s = self.0.as_secs();
            if s != 0 && s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s.is_multiple_of(60) {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        }
    }
}

text_conversions!(ConfigDuration);
