//! Wall-clock time as stored: RFC 3339 UTC text with exactly six fractional
//! digits, so that text order is time order on both database backends.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, UtcOffset};

const STORED: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The current time in the stored format.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// `now() + seconds`, in the stored format.
pub fn in_seconds(seconds: i64) -> String {
    format(OffsetDateTime::now_utc() + Duration::seconds(seconds))
}

pub fn format(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(STORED)
        .expect("formatting a UTC time with a fixed description cannot fail")
}

/// Parses any RFC 3339 time (client input) and normalises it to UTC.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Seconds since the Unix epoch, for token claims.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text_in_time_order() {
        let a = format(OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(1500));
        let b = format(OffsetDateTime::UNIX_EPOCH + Duration::seconds(10));
        assert_eq!(a, "1970-01-01T00:00:01.500000Z");
        assert!(a < b);
    }
}
