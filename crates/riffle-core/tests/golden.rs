//! Golden bytes of the binary event encoding, format 1 (`Event::encode` /
//! `Event::decode`): one fixture per event type under
//! `tests/fixtures/event/v1/<event_type>.bin`.
//!
//! Each test encodes a fixed event with today's code and requires the exact
//! committed bytes, then decodes the committed bytes and checks every field.
//! Records written by older builds sit in logs and archives, so a change
//! that alters these bytes must come with a new format byte or
//! `event_version` and a decoder for the old one — not with new fixtures.
//!
//! To regenerate the fixtures deliberately (a new event type, or a reviewed
//! format change), run with `RIFFLE_BLESS=1`:
//!
//! ```text
//! RIFFLE_BLESS=1 cargo test -p riffle-core --test golden
//! ```
//!
//! A normal run never writes them.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use riffle_core::event::{Event, EventBody, EventType, BINARY_FORMAT_V1};

/// 2024-05-01T12:00:00.000Z.
const T0: i64 = 1_714_564_800_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event/v1")
}

fn blessing() -> bool {
    std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1")
}

/// Requires `actual` to equal the fixture at `path`; with `RIFFLE_BLESS=1`
/// writes it there instead.
fn assert_golden(path: &Path, actual: &[u8]) {
    if blessing() {
        std::fs::create_dir_all(path.parent().expect("fixture has a directory")).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = read_fixture(path);
    if expected != actual {
        let at = expected
            .iter()
            .zip(actual)
            .position(|(e, a)| e != a)
            .unwrap_or(expected.len().min(actual.len()));
        panic!(
            "{}: today's encoder writes different bytes (first difference at byte {at}; \
             fixture {} bytes, encoded {} bytes).\n fixture: {expected:02x?}\n encoded: {actual:02x?}\n\
             Stored records must keep reading: a format change needs a new format byte or \
             event_version. Re-bless (RIFFLE_BLESS=1) only for a reviewed, intended change.",
            path.display(),
            expected.len(),
            actual.len(),
        );
    }
}

fn read_fixture(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with RIFFLE_BLESS=1 if the event type is new)",
            path.display()
        )
    })
}

fn s(text: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(text)
}

/// One fixed event per type. Between them they cover an absent and a
/// present `event_id`, multi-byte UTF-8, a negative time (zigzag), a time
/// of today's magnitude, the widest integers (ten-byte varint, `u32::MAX`)
/// and zero.
fn golden_event(event_type: EventType) -> Event<'static> {
    let (event_id, event_time, body) = match event_type {
        EventType::AdClick => (
            Some(s("click-0001")),
            T0 + 123,
            EventBody::AdClick {
                ad_id: s("ad-7"),
                user_id: s("u-1"),
                ip: s("73.162.0.9"),
                country: s("USA"),
            },
        ),
        EventType::AdImpression => (
            None,
            T0,
            EventBody::AdImpression {
                ad_id: s("ad-7"),
                user_id: s("u-2"),
                ip: s("2001:db8::1"),
                country: s("DEU"),
            },
        ),
        EventType::StreamStarted => (
            Some(s("start-ü")),
            T0 + 1,
            EventBody::StreamStarted {
                stream_id: s("s-42"),
                streamer_id: s("streamer-9"),
                category: s("just chatting"),
                language: s("日本語"),
            },
        ),
        EventType::StreamHeartbeat => (
            None,
            -1,
            EventBody::StreamHeartbeat {
                stream_id: s("s-42"),
            },
        ),
        EventType::StreamEnded => (
            Some(s("end")),
            0,
            EventBody::StreamEnded {
                stream_id: s("s-42"),
            },
        ),
        EventType::ViewerJoined => (
            Some(s("j-1")),
            T0 + 60_000,
            EventBody::ViewerJoined {
                stream_id: s("s-42"),
                user_id: s("viewer-1"),
            },
        ),
        EventType::ViewerLeft => (
            None,
            T0 + 120_000,
            EventBody::ViewerLeft {
                stream_id: s("s-42"),
                user_id: s("viewer-1"),
            },
        ),
        EventType::GiftSent => (
            Some(s("gift-1")),
            i64::MAX,
            EventBody::GiftSent {
                stream_id: s("s-42"),
                user_id: s("viewer-2"),
                amount: u64::MAX,
            },
        ),
        EventType::ChatMessage => (
            None,
            i64::MIN,
            EventBody::ChatMessage {
                stream_id: s("s-42"),
                user_id: s("viewer-3"),
            },
        ),
        EventType::Follow => (
            Some(s("f-1")),
            T0 - 1,
            EventBody::Follow {
                user_id: s("viewer-3"),
                streamer_id: s("streamer-9"),
            },
        ),
        EventType::RecImpression => (
            Some(s("ri-1")),
            T0 + 5,
            EventBody::RecImpression {
                request_id: s("req-1"),
                user_id: s("viewer-4"),
                stream_id: s("s-43"),
                position: u32::MAX,
                variant: s("b"),
                model_version: s("2024-05-01.1"),
            },
        ),
        EventType::RecClick => (
            None,
            T0 + 6,
            EventBody::RecClick {
                request_id: s("req-1"),
                user_id: s("viewer-4"),
                stream_id: s("s-43"),
            },
        ),
    };
    Event {
        event_id,
        event_time,
        event_version: 1,
        body,
    }
}

fn fixture_path(event_type: EventType) -> PathBuf {
    fixture_dir().join(format!("{}.bin", event_type.as_str()))
}

/// Encodes every type's fixed event and compares it with its fixture, then
/// decodes the committed fixture and checks it field by field. (One test,
/// so that a blessing run writes each fixture before it is read back.)
#[test]
fn event_encoding_v1_matches_the_fixtures() {
    for event_type in EventType::ALL {
        let path = fixture_path(event_type);
        let expected = golden_event(event_type);
        let mut encoded = Vec::new();
        expected.encode(&mut encoded);
        assert_golden(&path, &encoded);

        let bytes = read_fixture(&path);
        let decoded = Event::decode(&bytes)
            .unwrap_or_else(|e| panic!("{event_type}: the fixture no longer decodes: {e}"));
        assert_eq!(bytes[0], BINARY_FORMAT_V1, "{event_type}: format byte");
        assert_eq!(bytes[1], event_type.tag(), "{event_type}: type tag");
        assert_eq!(decoded.event_type(), event_type);
        assert_eq!(decoded.event_version, 1, "{event_type}: event_version");
        assert_eq!(
            decoded.event_time, expected.event_time,
            "{event_type}: event_time"
        );
        assert_eq!(
            decoded.event_id, expected.event_id,
            "{event_type}: event_id"
        );
        for field in event_type.field_names() {
            assert_eq!(
                decoded.field_str(field),
                expected.field_str(field),
                "{event_type}: field {field}"
            );
            assert_eq!(
                decoded.field_u64(field),
                expected.field_u64(field),
                "{event_type}: field {field}"
            );
        }
        assert_eq!(decoded, expected, "{event_type}: whole event");
    }
    gift_sent_fixture_matches_the_documented_layout();
}

/// The layout of the module docs, spelled out for one fixture, so that the
/// fixtures themselves are known to be what the docs describe.
fn gift_sent_fixture_matches_the_documented_layout() {
    let bytes = read_fixture(&fixture_path(EventType::GiftSent));
    let mut expected = vec![BINARY_FORMAT_V1, EventType::GiftSent.tag(), 1];
    // event_time i64::MAX zigzags to u64::MAX - 1: ten LEB128 bytes.
    expected.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    expected.push(7); // event_id: 6 bytes + 1
    expected.extend_from_slice(b"gift-1");
    expected.push(4);
    expected.extend_from_slice(b"s-42");
    expected.push(8);
    expected.extend_from_slice(b"viewer-2");
    // amount u64::MAX
    expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(
        bytes, expected,
        "gift_sent fixture vs the documented layout"
    );
}
