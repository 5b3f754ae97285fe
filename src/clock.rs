//! The one clock the server reads, and how its times are written.
//!
//! Everything below the transports takes `now` as a value (the core is
//! deterministic); the transports and tools read it here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 with milliseconds; times past the format's last year (9999)
/// are shown as its last millisecond rather than refused.
pub fn rfc3339(at_ms: u64) -> String {
    Rfc3339(at_ms).to_string()
}

/// Unix milliseconds shown as [`rfc3339`] does, written straight where it
/// goes (a JSON string, a line) with no `String` of its own.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub u64);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const LAST_MS: u64 = 253_402_300_799_999;
        let at = UNIX_EPOCH + Duration::from_millis(self.0.min(LAST_MS));
        humantime::format_rfc3339_millis(at).fmt(f)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_year_9999_are_shown_not_panicked_on() {
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1000), "1970-01-01T00:00:01.000Z");
    }
}
