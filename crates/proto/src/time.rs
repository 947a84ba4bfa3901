//! Time as it appears on the wire: milliseconds since the Unix epoch inside the system, RFC 3339
//! in UTC at the API surface.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats milliseconds since the epoch as RFC 3339 in UTC with millisecond precision.
pub fn rfc3339(unix_ms: i64) -> String {
    let unix_ms = u64::try_from(unix_ms).unwrap_or(0);
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Formats an optional timestamp.
pub fn rfc3339_opt(unix_ms: Option<i64>) -> Option<String> {
    unix_ms.map(rfc3339)
}

/// Parses an RFC 3339 timestamp back to milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(text).ok()?;
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// The start of the UTC calendar month that `unix_ms` falls in, in milliseconds since the epoch.
pub fn month_start_ms(unix_ms: i64) -> i64 {
    // "YYYY-MM-" of the RFC 3339 form, then the first day at midnight.
    let text = rfc3339(unix_ms);
    parse_rfc3339(&format!("{}01T00:00:00Z", &text[..8])).unwrap_or(0)
}

/// The wall clock, in milliseconds since the epoch.
pub fn now_unix_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ms = 1_795_000_000_123;
        let text = rfc3339(ms);
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(parse_rfc3339(&text), Some(ms));
    }

    #[test]
    fn a_month_starts_on_its_first_day_at_midnight_utc() {
        let start = parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        assert_eq!(month_start_ms(start), start);
        assert_eq!(
            month_start_ms(start - 1),
            parse_rfc3339("2026-10-01T00:00:00Z").unwrap()
        );
        let late = parse_rfc3339("2026-11-30T23:59:59.999Z").unwrap();
        assert_eq!(month_start_ms(late), start);
        assert_eq!(month_start_ms(0), 0);
    }
}
