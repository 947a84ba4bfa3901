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
}
