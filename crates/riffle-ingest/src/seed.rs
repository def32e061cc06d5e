//! The seed's raw ad-click log line format, read by `riffle tail`:
//!
//! ```text
//! [AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA
//! ```
//!
//! After the `[AdClickEvent]` tag come exactly five comma-separated fields:
//!
//! | # | part    | becomes      | rule |
//! |---|---------|--------------|------|
//! | 1 | `ad_id` | `ad_id`      | non-empty |
//! | 2 | time    | `event_time` | `YYYY-MM-DD HH:MM:SS`, read as UTC, not before 1970 |
//! | 3 | user    | `user_id`    | a leading `user` word (any case) followed by whitespace is stripped: `user 1` → `"1"`; anything else is kept as written |
//! | 4 | ip      | `ip`         | an IPv4 or IPv6 address |
//! | 5 | country | `country`    | non-empty |
//!
//! Whitespace around the tag, the commas and the line ends (`\r\n` included)
//! is ignored; nothing else is. The result is an `ad_click` event of version 1
//! without an `event_id`: the tailer supplies one derived from where the line
//! sits in its file (see [`crate::tail`]), so that re-reading a line yields
//! the same id.
//!
//! Errors are lowercase and name the offending part, e.g.
//! `field 3 (user): empty` or `time "2022-13-04 00:00:01": month out of range`.

use std::borrow::Cow;
use std::net::IpAddr;

use riffle_core::event::{Event, EventBody};
use riffle_core::time::{parse_rfc3339_ms, TimeError};
use riffle_core::InvalidValue;

/// The tag every seed ad-click line starts with.
pub const AD_CLICK_TAG: &str = "[AdClickEvent]";

/// Names of the five fields after the tag, in order, as used in errors.
const FIELD_NAMES: [&str; 5] = ["ad_id", "time", "user", "ip", "country"];

/// Parses one seed line into an `ad_click` event (`event_id` left empty)
/// whose strings borrow from `line`.
///
/// # Errors
///
/// A lowercase reason naming the malformed part, see the module docs.
pub fn parse_seed_line(line: &str) -> Result<Event<'_>, InvalidValue> {
    let trimmed = line.trim();
    let Some(rest) = trimmed.strip_prefix(AD_CLICK_TAG) else {
        return Err(describe_bad_tag(trimmed).into());
    };

    let mut fields = [""; 5];
    let mut count = 0;
    if !rest.trim().is_empty() {
        for part in rest.split(',') {
            if count < fields.len() {
                fields[count] = part.trim();
            }
            count += 1;
        }
    }
    if count != fields.len() {
        return Err(format!(
            "expected {} comma-separated fields after \"{AD_CLICK_TAG}\", got {count}",
            fields.len()
        )
        .into());
    }
    for (index, value) in fields.iter().enumerate() {
        if value.is_empty() {
            return Err(format!("field {} ({}): empty", index + 1, FIELD_NAMES[index]).into());
        }
    }
    let [ad_id, time, user, ip, country] = fields;

    let event_time = parse_seed_time(time)?;
    let user_id = strip_user_word(user);
    if user_id.is_empty() {
        return Err(format!("field 3 (user): no id after {user:?}").into());
    }
    if ip.parse::<IpAddr>().is_err() {
        return Err(format!("field 4 (ip): invalid ip address {ip:?}").into());
    }

    Ok(Event {
        event_id: None,
        event_time,
        event_version: 1,
        body: EventBody::AdClick {
            ad_id: Cow::Borrowed(ad_id),
            user_id: Cow::Borrowed(user_id),
            ip: Cow::Borrowed(ip),
            country: Cow::Borrowed(country),
        },
    })
}

/// Parses a seed line and appends it as one JSON event carrying `event_id`.
///
/// # Errors
///
/// As [`parse_seed_line`]; nothing is appended then.
pub fn seed_line_to_json(
    line: &str,
    event_id: &str,
    out: &mut Vec<u8>,
) -> Result<(), InvalidValue> {
    let mut event = parse_seed_line(line)?;
    event.event_id = Some(Cow::Borrowed(event_id));
    event.write_json(out);
    Ok(())
}

fn describe_bad_tag(line: &str) -> String {
    if line.starts_with('[') {
        if let Some(end) = line.find(']') {
            let tag = &line[..=end];
            return format!("unknown tag {tag:?}, expected \"{AD_CLICK_TAG}\"");
        }
    }
    format!("expected the line to start with \"{AD_CLICK_TAG}\"")
}

/// `user 1` → `1`; the word must be followed by whitespace so that ids such
/// as `username7` stay whole. A bare `user` yields an empty id.
fn strip_user_word(user: &str) -> &str {
    const WORD: &str = "user";
    let Some(head) = user.get(..WORD.len()) else {
        return user;
    };
    if !head.eq_ignore_ascii_case(WORD) {
        return user;
    }
    let after = &user[WORD.len()..];
    if after.is_empty() || after.starts_with(char::is_whitespace) {
        after.trim_start()
    } else {
        user
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC → epoch milliseconds.
fn parse_seed_time(time: &str) -> Result<i64, String> {
    let bytes = time.as_bytes();
    if bytes.len() != 19 || bytes[10] != b' ' || !time.is_ascii() {
        return Err(format!("time {time:?}: expected YYYY-MM-DD HH:MM:SS"));
    }
    // Reuse the RFC 3339 parser (range checks, leap years) by spelling the
    // time the way it expects.
    let rfc3339 = format!("{}T{}Z", &time[..10], &time[11..]);
    let ms = parse_rfc3339_ms(&rfc3339).map_err(|error| match error {
        TimeError::Rfc3339 { reason, .. } => format!("time {time:?}: {reason}"),
        other => format!("time {time:?}: {other}"),
    })?;
    if ms < 0 {
        return Err(format!("time {time:?}: before 1970-01-01 00:00:00"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad_click<'e>(event: &'e Event<'_>) -> (&'e str, &'e str, &'e str, &'e str) {
        match &event.body {
            EventBody::AdClick {
                ad_id,
                user_id,
                ip,
                country,
            } => (ad_id, user_id, ip, country),
            other => panic!("expected ad_click, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_seed_example() {
        let event = parse_seed_line(
            "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA",
        )
        .unwrap();
        assert_eq!(event.event_time, 1_646_352_001_000);
        assert_eq!(event.event_version, 1);
        assert_eq!(event.event_id, None);
        assert_eq!(ad_click(&event), ("ad001", "1", "207.148.22.22", "USA"));
    }

    #[test]
    fn tolerates_whitespace_and_crlf() {
        let event = parse_seed_line(
            "  [AdClickEvent]ad002 ,2022-03-04 00:00:02 ,\tuser   42,  2001:db8::1 ,KR \r\n",
        )
        .unwrap();
        assert_eq!(ad_click(&event), ("ad002", "42", "2001:db8::1", "KR"));
        assert_eq!(event.event_time, 1_646_352_002_000);
    }

    #[test]
    fn user_word_is_stripped_only_when_it_is_a_word() {
        assert_eq!(strip_user_word("user 1"), "1");
        assert_eq!(strip_user_word("User\t7"), "7");
        assert_eq!(strip_user_word("username7"), "username7");
        assert_eq!(strip_user_word("u-42"), "u-42");
        assert_eq!(strip_user_word("us"), "us");
        assert_eq!(strip_user_word("user"), "");
        assert_eq!(strip_user_word("é"), "é");
    }

    #[test]
    fn writes_json_with_the_given_event_id() {
        let mut out = Vec::new();
        seed_line_to_json(
            "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA",
            "tail:1",
            &mut out,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event_type": "ad_click",
                "event_id": "tail:1",
                "event_time": "2022-03-04T00:00:01.000Z",
                "event_version": 1,
                "ad_id": "ad001",
                "user_id": "1",
                "ip": "207.148.22.22",
                "country": "USA",
            })
        );
    }

    #[test]
    fn rejects_malformed_lines_naming_the_part() {
        let cases = [
            (
                "ad001, 2022-03-04 00:00:01, user 1, 1.2.3.4, USA",
                "expected the line to start with \"[AdClickEvent]\"",
            ),
            (
                "[AdImpressionEvent] ad001, 2022-03-04 00:00:01, user 1, 1.2.3.4, USA",
                "unknown tag \"[AdImpressionEvent]\", expected \"[AdClickEvent]\"",
            ),
            (
                "[AdClickEvent]",
                "expected 5 comma-separated fields after \"[AdClickEvent]\", got 0",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 1.2.3.4",
                "expected 5 comma-separated fields after \"[AdClickEvent]\", got 4",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 1.2.3.4, USA, extra",
                "expected 5 comma-separated fields after \"[AdClickEvent]\", got 6",
            ),
            (
                "[AdClickEvent] , 2022-03-04 00:00:01, user 1, 1.2.3.4, USA",
                "field 1 (ad_id): empty",
            ),
            (
                "[AdClickEvent] ad001, , user 1, 1.2.3.4, USA",
                "field 2 (time): empty",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01,  , 1.2.3.4, USA",
                "field 3 (user): empty",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, , USA",
                "field 4 (ip): empty",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 1.2.3.4,",
                "field 5 (country): empty",
            ),
            (
                "[AdClickEvent] ad001, 2022-13-04 00:00:01, user 1, 1.2.3.4, USA",
                "time \"2022-13-04 00:00:01\": month out of range",
            ),
            (
                "[AdClickEvent] ad001, 2022-02-29 00:00:01, user 1, 1.2.3.4, USA",
                "time \"2022-02-29 00:00:01\": day out of range",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 25:00:01, user 1, 1.2.3.4, USA",
                "time \"2022-03-04 25:00:01\": hour out of range",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04T00:00:01, user 1, 1.2.3.4, USA",
                "time \"2022-03-04T00:00:01\": expected YYYY-MM-DD HH:MM:SS",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00, user 1, 1.2.3.4, USA",
                "time \"2022-03-04 00:00\": expected YYYY-MM-DD HH:MM:SS",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 0a:00:01, user 1, 1.2.3.4, USA",
                "time \"2022-03-04 0a:00:01\": invalid hour",
            ),
            (
                "[AdClickEvent] ad001, 1969-12-31 23:59:59, user 1, 1.2.3.4, USA",
                "time \"1969-12-31 23:59:59\": before 1970-01-01 00:00:00",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user, 1.2.3.4, USA",
                "field 3 (user): no id after \"user\"",
            ),
            (
                "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 999.1.1.1, USA",
                "field 4 (ip): invalid ip address \"999.1.1.1\"",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_seed_line(line).unwrap_err().message(),
                expected,
                "{line}"
            );
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for line in [
            "",
            "[",
            "]",
            "[AdClickEvent",
            "[AdClickEvent],,,,",
            "[AdClickEvent] a, é2022-03-04 00:00:0, u, 1.2.3.4, X",
            "[AdClickEvent] a, 2022-03-04 00:00:01, ü, 1.2.3.4, X",
        ] {
            let _ = parse_seed_line(line);
        }
        assert!(parse_seed_line("[AdClickEvent] a, 2022-03-04 00:00:01, ü, 1.2.3.4, X").is_ok());
    }
}
