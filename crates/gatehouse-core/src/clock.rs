use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch, with sub-second precision kept in nanoseconds. The default is the
/// epoch itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    ///
    /// Every audit record carries one: years 1970 to 9999 are written directly (days to a civil
    /// date as in Howard Hinnant's `civil_from_days`), anything else by the `time` crate.
    pub fn to_rfc3339(self) -> String {
        const MAX: i128 = 253_402_300_800 * 1_000_000_000; // 10000-01-01T00:00:00Z
        if (0..MAX).contains(&self.nanos) {
            let secs = (self.nanos / 1_000_000_000) as i64;
            let millis = ((self.nanos % 1_000_000_000) / 1_000_000) as u32;
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            let mut out = String::with_capacity(24);
            let mut num = |v: u32, digits: u32, sep: char| {
                for i in (0..digits).rev() {
                    out.push(char::from(b'0' + (v / 10u32.pow(i) % 10) as u8));
                }
                out.push(sep);
            };
            num(y, 4, '-');
            num(m, 2, '-');
            num(d, 2, 'T');
            num((rem / 3600) as u32, 2, ':');
            num((rem / 60 % 60) as u32, 2, ':');
            num((rem % 60) as u32, 2, '.');
            num(millis, 3, 'Z');
            return out;
        }
        let dt = time::OffsetDateTime::from_unix_timestamp_nanos(self.nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        dt.format(&fmt).unwrap_or_default()
    }
}

/// (year, month, day) of a count of days since 1970-01-01, for days >= 0.
fn civil_from_days(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u32, m as u32, d as u32)
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

    /// The direct writer agrees with the `time` crate's formatting everywhere it is used.
    #[test]
    fn rfc3339_agrees_with_the_time_crate() {
        let by_time = |t: UnixTime| {
            let dt = time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            dt.format(&fmt).unwrap_or_default()
        };
        let mut samples: Vec<i128> = vec![
            0,
            1,
            999_999_999,
            1_000_000_000,
            951_782_400 * 1_000_000_000,                   // 2000-02-29
            4_107_542_400 * 1_000_000_000 - 1,             // the end of 2100-02-28
            253_402_300_799 * 1_000_000_000 + 999_999_999, // 9999-12-31T23:59:59.999
            -1,
            -86_400 * 1_000_000_000,
            253_402_300_800 * 1_000_000_000,
        ];
        // Every day from 1970 to 2200 at a varying time of day, and pseudo-random instants.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for day in 0..84_000i128 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(day * 86_400_000_000_000 + i128::from(x % 86_400_000_000_000));
            samples.push(
                i128::from(x % 253_402_300_800_000_000) * 1_000_000 + i128::from(x % 1_000_000),
            );
        }
        for n in samples {
            let t = UnixTime::from_nanos(n);
            assert_eq!(t.to_rfc3339(), by_time(t), "{n}");
        }
    }
}
