//! Wall-clock helpers: Unix milliseconds and the few text forms the simulator prints.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn datetime(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// ISO 8601 UTC to the second, with `Z`: `2024-05-23T12:34:56Z`.
pub(crate) fn iso8601(ms: i64) -> String {
    let t = datetime(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `HH:MM:SS` in UTC.
pub(crate) fn hms(ms: i64) -> String {
    let t = datetime(ms);
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// What `date` prints: `Thu May 23 12:34:56 UTC 2024`.
pub(crate) fn date_line(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = datetime(ms);
    let day = DAYS
        .get(usize::from(t.weekday().number_days_from_monday()))
        .copied()
        .unwrap_or("Mon");
    let month = MONTHS
        .get(usize::from(u8::from(t.month())).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!("{day} {month} {:2} {} UTC {}", t.day(), hms(ms), t.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        // 2024-05-23T12:34:56Z, a Thursday.
        let ms = 1_716_467_696_000;
        assert_eq!(iso8601(ms), "2024-05-23T12:34:56Z");
        assert_eq!(iso8601(ms + 999), "2024-05-23T12:34:56Z");
        assert_eq!(date_line(ms), "Thu May 23 12:34:56 UTC 2024");
        assert_eq!(date_line(0), "Thu Jan  1 00:00:00 UTC 1970");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert!(now_ms() > ms);
    }
}
