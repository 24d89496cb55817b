//! Reading the two fields the harness needs straight from the raw message text, without
//! parsing the JSON: `"type"` (near the start of the envelope) and `"timestamp"` (its last
//! field), an RFC 3339 UTC time with up to nanosecond precision.

const TYPE_KEY: &[u8] = br#""type":""#;
const TS_KEY: &[u8] = br#""timestamp":""#;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The message's `type` value, looked for in its first 256 bytes.
pub fn message_type(msg: &[u8]) -> Option<&[u8]> {
    let head = msg.get(..msg.len().min(256))?;
    let start = find(head, TYPE_KEY)? + TYPE_KEY.len();
    let rest = msg.get(start..)?;
    let len = rest.iter().take(64).position(|&b| b == b'"')?;
    rest.get(..len)
}

/// The envelope's `timestamp` as Unix nanoseconds. The envelope ends with it, so the tail is
/// searched first; the whole text only when it is not there.
pub fn timestamp_ns(msg: &[u8]) -> Option<i64> {
    let tail_from = msg.len().saturating_sub(96);
    let at = match rfind(msg.get(tail_from..)?, TS_KEY) {
        Some(i) => tail_from + i,
        None => rfind(msg, TS_KEY)?,
    };
    let value = msg.get(at + TS_KEY.len()..)?;
    let end = value.iter().take(48).position(|&b| b == b'"')?;
    parse_rfc3339(value.get(..end)?)
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` → Unix nanoseconds.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    if s.len() < 20 || s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') {
        return None;
    }
    let year = digits(s.get(0..4)?)?;
    let month = digits(s.get(5..7)?)?;
    let day = digits(s.get(8..10)?)?;
    let hour = digits(s.get(11..13)?)?;
    let min = digits(s.get(14..16)?)?;
    let sec = digits(s.get(17..19)?)?;
    let mut i = 19;
    let mut nanos: i64 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let mut scale = 100_000_000;
        while let Some(&b) = s.get(i) {
            if !b.is_ascii_digit() {
                break;
            }
            nanos += i64::from(b - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset = match s.get(i) {
        Some(b'Z' | b'z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let h = digits(s.get(i + 1..i + 3)?)?;
            let m = digits(s.get(i + 4..i + 6)?)?;
            let o = (h * 3600 + m * 60) * 1_000_000_000;
            if sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    Some(secs * 1_000_000_000 + nanos - offset)
}

/// Now, as Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_variants() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339(b"2024-02-29T12:34:56.123456789Z"),
            Some(1_709_210_096_123_456_789)
        );
        assert_eq!(
            parse_rfc3339(b"2024-02-29T12:34:56.5Z"),
            Some(1_709_210_096_500_000_000)
        );
        assert_eq!(
            parse_rfc3339(b"2024-02-29T14:34:56+02:00"),
            Some(1_709_210_096_000_000_000)
        );
        assert_eq!(parse_rfc3339(b"garbage"), None);
    }

    #[test]
    fn finds_fields_in_an_envelope() {
        let msg = br#"{"uuid":"u","type":"DATA_DYNAMIC","body":{"a":{"boot_timestamp":"1970-01-01T00:00:09Z"}},"timestamp":"1970-01-01T00:00:01.25Z"}"#;
        assert_eq!(message_type(msg), Some(&b"DATA_DYNAMIC"[..]));
        assert_eq!(timestamp_ns(msg), Some(1_250_000_000));
    }
}
