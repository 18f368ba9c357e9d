use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch, with sub-second precision kept in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime {
    nanos: i128,
}

impl UnixTime {
    /// A time from whole seconds since the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Self {
            nanos: secs as i128 * 1_000_000_000,
        }
    }

    /// A time from nanoseconds since the epoch.
    pub const fn from_nanos(nanos: i128) -> Self {
        Self { nanos }
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.nanos.div_euclid(1_000_000_000) as i64
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i128 {
        self.nanos
    }

    /// This time plus a duration.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self {
            nanos: self.nanos.saturating_add(d.as_nanos() as i128),
        }
    }

    /// RFC 3339 text with millisecond precision, in UTC.
    pub fn to_rfc3339(self) -> String {
        let dt = time::OffsetDateTime::from_unix_timestamp_nanos(self.nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        dt.format(&fmt).unwrap_or_default()
    }
}

/// Where Gatehouse reads the time. Production uses [`SystemClock`]; tests use [`ManualClock`] so
/// that expiry logic is checked without sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> UnixTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixTime::from_nanos(d.as_nanos() as i128)
    }
}

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    secs: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `secs` since the epoch.
    pub fn new(secs: i64) -> Self {
        Self {
            secs: Arc::new(AtomicI64::new(secs)),
        }
    }

    /// Moves the clock forward by `secs` (or back, when negative).
    pub fn advance(&self, secs: i64) {
        self.secs.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, secs: i64) {
        self.secs.store(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.secs.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now().as_secs(), 1_000);
        c.advance(30);
        assert_eq!(c.clone().now().as_secs(), 1_030);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            UnixTime::from_secs(1_700_000_000).to_rfc3339(),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
