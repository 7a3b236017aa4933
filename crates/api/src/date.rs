//! Dates as upstream renders them: Java 8 `DateFormat.DEFAULT` in en_US,
//! `MMM d, yyyy h:mm:ss a`, e.g. `Nov 14, 2017 2:20:57 PM`.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

const FORMAT: &str = "%b %-d, %Y %-I:%M:%S %p";

/// Render epoch milliseconds in upstream format, in UTC.
pub fn format_millis(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format(FORMAT).to_string(),
        None => String::new(),
    }
}

/// Parse an upstream date (Java 8 form, JDK 9+ form with a comma after the year, or
/// ISO-8601) into epoch milliseconds.
pub fn parse_millis(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let java9 = s.replacen(", ", " ", 2);
    for (text, fmt) in [(s, FORMAT), (java9.as_str(), "%b %-d %Y %-I:%M:%S %p")] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_doc_date() {
        // DocUtils.date in upstream docs.
        assert_eq!(format_millis(1510669257141), "Nov 14, 2017 2:20:57 PM");
        assert_eq!(parse_millis("Nov 14, 2017 2:20:57 PM"), Some(1510669257000));
        assert_eq!(parse_millis("Nov 14, 2017, 2:20:57 PM"), Some(1510669257000));
        assert_eq!(parse_millis("2017-11-14T14:20:57Z"), Some(1510669257000));
        assert_eq!(format_millis(0), "Jan 1, 1970 12:00:00 AM");
    }
}
