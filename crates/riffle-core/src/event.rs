//! The event envelope, every event type, JSON parsing/validation and the
//! compact binary codec used for records in the log.
//!
//! # JSON
//!
//! An event is one flat JSON object: the envelope fields `event_type`
//! (required), `event_id` (optional, 1..=128 bytes), `event_time` (required,
//! RFC 3339 string or non-negative integer epoch milliseconds) and
//! `event_version` (optional positive integer, default 1), followed by the
//! fields of its type. [`parse_event`] borrows every string that has no JSON
//! escapes straight from the input, so a typical event is parsed without a
//! single allocation. `docs/events.md` is the user-facing reference.
//!
//! # Binary layout (format 1)
//!
//! ```text
//! u8      format         always 0x01; any other value is rejected
//! u8      type tag       EventType::tag(), 1..=12
//! varint  event_version  u32
//! varint  event_time     i64, zigzag-encoded
//! varint  event_id       0 = absent, n + 1 = n bytes of UTF-8 follow
//! ...     type fields    in declaration order (the order of `EventBody`):
//!                        strings as varint byte length + UTF-8 bytes,
//!                        integers as varint
//! ```
//!
//! A varint is unsigned LEB128 (7 bits per byte, low group first, high bit set
//! on every byte but the last). Invariants the decoder enforces:
//!
//! * a record is exactly one event: trailing bytes are an error;
//! * varints are minimal (no redundant zero groups) and fit their type, so
//!   every accepted byte string is exactly what [`Event::encode`] produces for
//!   the decoded event (`encode(decode(b)) == b`), which keeps byte-level
//!   comparisons and checksums of records meaningful;
//! * strings are valid UTF-8 and are borrowed from the input, never copied;
//! * malformed input yields a [`DecodeError`], never a panic.
//!
//! The decoder checks structure only; semantic rules (non-empty strings, valid
//! ip, positive amount) were enforced when the event was accepted and can be
//! re-checked with [`Event::validate`].
//!
//! Changing a type's fields means a new `event_version` for that type and a
//! decoder branch for it; tags are never reused.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::codec::{ReadError, Reader};
use crate::time::{format_rfc3339_ms, format_rfc3339_ms_buf, parse_rfc3339_ms, quoted, Clock};

/// Binary format byte written first by [`Event::encode`].
pub const BINARY_FORMAT_V1: u8 = 0x01;
/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;

// ---------------------------------------------------------------------------
// Field kinds: how a declared field is typed, parsed from JSON and validated.
// `Str` is a non-empty string, `Ip` a string holding an IPv4/IPv6 address,
// `PosU64` an integer > 0 and `U32` any integer in 0..=u32::MAX.
// ---------------------------------------------------------------------------

macro_rules! kind_type {
    (Str) => { Cow<'a, str> };
    (Ip) => { Cow<'a, str> };
    (PosU64) => { u64 };
    (U32) => { u32 };
}

macro_rules! kind_from_json {
    (Str, $name:expr, $raw:expr) => {
        take_str($name, $raw)
    };
    (Ip, $name:expr, $raw:expr) => {
        take_str($name, $raw)
    };
    (PosU64, $name:expr, $raw:expr) => {
        take_u64($name, $raw, "positive integer")
    };
    (U32, $name:expr, $raw:expr) => {
        take_u32($name, $raw)
    };
}

macro_rules! kind_validate {
    (Str, $name:expr, $value:expr) => {
        validate_non_empty($name, $value)
    };
    (Ip, $name:expr, $value:expr) => {
        validate_ip($name, $value)
    };
    (PosU64, $name:expr, $value:expr) => {
        validate_positive($name, *$value)
    };
    (U32, $name:expr, $value:expr) => {{
        let _any_u32_is_valid = $value;
        Ok::<(), EventError>(())
    }};
}

#[cfg(test)]
macro_rules! kind_arbitrary {
    (Str) => {
        test_support::arb_text()
    };
    (Ip) => {
        test_support::arb_ip()
    };
    (PosU64) => {
        1u64..=u64::MAX
    };
    (U32) => {
        proptest::prelude::any::<u32>()
    };
}

/// Declares every event type once; the JSON parser, validator, serializer,
/// binary codec and test generators are all derived from this table so that
/// they cannot disagree about a type's fields or their order.
macro_rules! event_types {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $tag:literal, $wire:literal, key: $key:ident, versions: [$($version:literal),+] {
            $($field:ident : $kind:ident),+ $(,)?
        }
    )+) => {
        /// The type of an event; the wire name is [`EventType::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($(#[doc = $doc])* $variant,)+
        }

        impl EventType {
            pub const ALL: [EventType; [$($tag),+].len()] = [$(EventType::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $wire,)+ }
            }

            pub fn parse(name: &str) -> Option<Self> {
                match name { $($wire => Some(EventType::$variant),)+ _ => None }
            }

            /// Stable tag of this type in the binary codec; never reused.
            pub fn tag(self) -> u8 {
                match self { $(EventType::$variant => $tag,)+ }
            }

            pub fn from_tag(tag: u8) -> Option<Self> {
                match tag { $($tag => Some(EventType::$variant),)+ _ => None }
            }

            pub fn supported_versions(self) -> &'static [u32] {
                match self { $(EventType::$variant => &[$($version),+],)+ }
            }

            /// The field whose value keys the event on the bus, so that all
            /// events about one ad / stream / user land on one partition.
            pub fn partition_key_field(self) -> &'static str {
                match self { $(EventType::$variant => stringify!($key),)+ }
            }

            /// The type's own fields (envelope excluded), in wire order.
            pub fn field_names(self) -> &'static [&'static str] {
                match self { $(EventType::$variant => &[$(stringify!($field)),+],)+ }
            }

            fn field_mask(self) -> u32 {
                match self { $(EventType::$variant => 0 $(| Slot::$field.bit())+,)+ }
            }
        }

        /// The type-specific part of an event. Strings borrow from the parsed
        /// input when they can.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum EventBody<'a> {
            $($(#[doc = $doc])* $variant { $($field: kind_type!($kind)),+ },)+
        }

        impl<'a> EventBody<'a> {
            pub fn event_type(&self) -> EventType {
                match self { $(EventBody::$variant { .. } => EventType::$variant,)+ }
            }

            pub fn partition_key(&self) -> &str {
                match self { $(EventBody::$variant { $key, .. } => $key,)+ }
            }

            /// A string field of this body by wire name; `None` for unknown
            /// names and for numeric fields.
            pub fn field_str(&self, name: &str) -> Option<&str> {
                match self {
                    $(EventBody::$variant { $($field),+ } => match name {
                        $(stringify!($field) => FieldValue::as_str($field),)+
                        _ => None,
                    },)+
                }
            }

            /// A numeric field of this body by wire name; `None` for unknown
            /// names and for string fields.
            pub fn field_u64(&self, name: &str) -> Option<u64> {
                match self {
                    $(EventBody::$variant { $($field),+ } => match name {
                        $(stringify!($field) => FieldValue::as_u64($field),)+
                        _ => None,
                    },)+
                }
            }

            pub fn into_owned(self) -> EventBody<'static> {
                match self {
                    $(EventBody::$variant { $($field),+ } => EventBody::$variant {
                        $($field: FieldValue::into_static($field)),+
                    },)+
                }
            }

            /// Semantic rules for each field: non-empty strings, a parseable
            /// ip, a positive amount.
            pub fn validate(&self) -> Result<(), EventError> {
                match self {
                    $(EventBody::$variant { $($field),+ } => {
                        $(kind_validate!($kind, stringify!($field), $field)?;)+
                    })+
                }
                Ok(())
            }

            fn field_count(&self) -> usize {
                self.event_type().field_names().len()
            }

            fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                match self {
                    $(EventBody::$variant { $($field),+ } => {
                        $(map.serialize_entry(stringify!($field), $field)?;)+
                    })+
                }
                Ok(())
            }

            fn encode_fields(&self, out: &mut Vec<u8>) {
                match self {
                    $(EventBody::$variant { $($field),+ } => {
                        $(FieldValue::encode($field, out);)+
                    })+
                }
            }

            fn decode_fields(event_type: EventType, reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                Ok(match event_type {
                    $(EventType::$variant => EventBody::$variant {
                        $($field: FieldValue::decode(reader, stringify!($field))?),+
                    },)+
                })
            }

            /// Converts the collected JSON values into this body; checks JSON
            /// types and presence only, [`EventBody::validate`] does the rest.
            fn from_raw(event_type: EventType, raw: &mut RawFields<'a>) -> Result<Self, EventError> {
                Ok(match event_type {
                    $(EventType::$variant => EventBody::$variant {
                        $($field: kind_from_json!($kind, stringify!($field), raw.take(Slot::$field))?),+
                    },)+
                })
            }
        }

        #[cfg(test)]
        pub(crate) fn arb_body() -> proptest::strategy::BoxedStrategy<EventBody<'static>> {
            use proptest::strategy::Strategy;
            let per_type: Vec<proptest::strategy::BoxedStrategy<EventBody<'static>>> = vec![$(
                ($(kind_arbitrary!($kind),)+)
                    .prop_map(|($($field,)+)| EventBody::$variant { $($field),+ })
                    .boxed(),
            )+];
            proptest::strategy::Union::new(per_type).boxed()
        }
    };
}

event_types! {
    /// A user clicked an ad.
    AdClick = 1, "ad_click", key: ad_id, versions: [1] {
        ad_id: Str, user_id: Str, ip: Ip, country: Str,
    }
    /// An ad was shown to a user.
    AdImpression = 2, "ad_impression", key: ad_id, versions: [1] {
        ad_id: Str, user_id: Str, ip: Ip, country: Str,
    }
    /// A streamer went live.
    StreamStarted = 3, "stream_started", key: stream_id, versions: [1] {
        stream_id: Str, streamer_id: Str, category: Str, language: Str,
    }
    /// A live stream is still live.
    StreamHeartbeat = 4, "stream_heartbeat", key: stream_id, versions: [1] {
        stream_id: Str,
    }
    /// A live stream ended.
    StreamEnded = 5, "stream_ended", key: stream_id, versions: [1] {
        stream_id: Str,
    }
    /// A viewer entered a live stream.
    ViewerJoined = 6, "viewer_joined", key: stream_id, versions: [1] {
        stream_id: Str, user_id: Str,
    }
    /// A viewer left a live stream.
    ViewerLeft = 7, "viewer_left", key: stream_id, versions: [1] {
        stream_id: Str, user_id: Str,
    }
    /// A viewer sent a gift worth `amount` (smallest currency unit) to a stream.
    GiftSent = 8, "gift_sent", key: stream_id, versions: [1] {
        stream_id: Str, user_id: Str, amount: PosU64,
    }
    /// A viewer wrote in a stream's chat (the text is not carried).
    ChatMessage = 9, "chat_message", key: stream_id, versions: [1] {
        stream_id: Str, user_id: Str,
    }
    /// A user followed a streamer.
    Follow = 10, "follow", key: user_id, versions: [1] {
        user_id: Str, streamer_id: Str,
    }
    /// A recommended stream was shown at `position` (0-based) of a response.
    RecImpression = 11, "rec_impression", key: user_id, versions: [1] {
        request_id: Str, user_id: Str, stream_id: Str, position: U32, variant: Str, model_version: Str,
    }
    /// A recommended stream was clicked.
    RecClick = 12, "rec_click", key: user_id, versions: [1] {
        request_id: Str, user_id: Str, stream_id: Str,
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = Cow::<'de, str>::deserialize(deserializer)?;
        EventType::parse(&name)
            .ok_or_else(|| de::Error::custom(format_args!("unknown event type {}", quoted(&name))))
    }
}

/// One event: the envelope plus its type's fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event<'a> {
    /// Client-chosen id used for deduplication; the server assigns one when
    /// absent.
    pub event_id: Option<Cow<'a, str>>,
    /// Event time in epoch milliseconds (UTC).
    pub event_time: i64,
    pub event_version: u32,
    pub body: EventBody<'a>,
}

impl<'a> Event<'a> {
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// The value of [`EventType::partition_key_field`].
    pub fn partition_key(&self) -> &str {
        self.body.partition_key()
    }

    /// Any string field by wire name, envelope included (`event_type`,
    /// `event_id`), so filters can address fields without matching on types.
    pub fn field_str(&self, name: &str) -> Option<&str> {
        match name {
            "event_type" => Some(self.event_type().as_str()),
            "event_id" => self.event_id.as_deref(),
            _ => self.body.field_str(name),
        }
    }

    /// Any unsigned integer field by wire name (`event_version`, `amount`,
    /// `position`).
    pub fn field_u64(&self, name: &str) -> Option<u64> {
        match name {
            "event_version" => Some(u64::from(self.event_version)),
            _ => self.body.field_u64(name),
        }
    }

    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: self.event_id.map(FieldValue::into_static),
            event_time: self.event_time,
            event_version: self.event_version,
            body: self.body.into_owned(),
        }
    }

    /// Applies every rule of [`parse_event`] that does not depend on the JSON
    /// text, for events built some other way (gRPC, simulators). The size
    /// limit is not checked.
    pub fn validate(&self, limits: &ParseLimits) -> Result<(), EventError> {
        let event_type = self.event_type();
        if !event_type
            .supported_versions()
            .contains(&self.event_version)
        {
            return Err(EventError::UnsupportedVersion {
                event_type,
                version: u64::from(self.event_version),
            });
        }
        if let Some(event_id) = &self.event_id {
            validate_non_empty("event_id", event_id)?;
            if event_id.len() > MAX_EVENT_ID_BYTES {
                return Err(EventError::InvalidValue {
                    field: "event_id",
                    detail: format!("{} bytes (max {MAX_EVENT_ID_BYTES})", event_id.len()),
                });
            }
        }
        if self.event_time < 0 {
            return Err(EventError::InvalidValue {
                field: "event_time",
                detail: format!(
                    "{} is before 1970-01-01T00:00:00.000Z",
                    format_rfc3339_ms(self.event_time)
                ),
            });
        }
        let ahead_ms = self.event_time.saturating_sub(limits.now_ms);
        if ahead_ms > limits.max_future_skew_ms {
            return Err(EventError::FutureTime {
                event_time: self.event_time,
                ahead_ms,
                max_skew_ms: limits.max_future_skew_ms,
            });
        }
        self.body.validate()
    }

    /// Appends the event as one flat JSON object, envelope first, with
    /// `event_time` as RFC 3339 in milliseconds; [`parse_event`] reads it back
    /// to an equal event.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("serializing an event into memory cannot fail");
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an event always serializes to a json object")
    }

    /// Appends the binary form described in the module docs.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(BINARY_FORMAT_V1);
        out.push(self.event_type().tag());
        write_varint(out, u64::from(self.event_version));
        write_varint(out, zigzag(self.event_time));
        match &self.event_id {
            None => write_varint(out, 0),
            Some(event_id) => {
                write_varint(out, event_id.len() as u64 + 1);
                out.extend_from_slice(event_id.as_bytes());
            }
        }
        self.body.encode_fields(out);
    }

    /// Reads one event written by [`Event::encode`], borrowing its strings
    /// from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        let mut reader = Reader::new(bytes);
        let format = read_byte(&mut reader, "format")?;
        if format != BINARY_FORMAT_V1 {
            return Err(DecodeError::UnsupportedFormat(format));
        }
        let tag = read_byte(&mut reader, "event_type")?;
        let event_type = EventType::from_tag(tag).ok_or(DecodeError::UnknownTag(tag))?;
        let event_version = FieldValue::decode(&mut reader, "event_version")?;
        let event_time = unzigzag(read_varint(&mut reader, "event_time")?);
        let event_id = match read_varint(&mut reader, "event_id")? {
            0 => None,
            len_plus_one => Some(Cow::Borrowed(read_str(
                &mut reader,
                len_plus_one - 1,
                "event_id",
            )?)),
        };
        let body = EventBody::decode_fields(event_type, &mut reader)?;
        let trailing = reader.remaining();
        if trailing != 0 {
            return Err(DecodeError::TrailingBytes(trailing));
        }
        Ok(Event {
            event_id,
            event_time,
            event_version,
            body,
        })
    }
}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let envelope_fields = if self.event_id.is_some() { 4 } else { 3 };
        let mut map = serializer.serialize_map(Some(envelope_fields + self.body.field_count()))?;
        map.serialize_entry("event_type", self.event_type().as_str())?;
        if let Some(event_id) = &self.event_id {
            map.serialize_entry("event_id", event_id)?;
        }
        let time_buf = format_rfc3339_ms_buf(self.event_time);
        let event_time = std::str::from_utf8(&time_buf).expect("the time formatter writes ascii");
        map.serialize_entry("event_time", event_time)?;
        map.serialize_entry("event_version", &self.event_version)?;
        self.body.serialize_fields(&mut map)?;
        map.end()
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Limits applied by [`parse_event`] and [`Event::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Wall-clock time the future-skew check compares against.
    pub now_ms: i64,
    /// Events more than this far ahead of `now_ms` are rejected: clients with
    /// broken clocks would otherwise hold watermarks and windows hostage.
    pub max_future_skew_ms: i64,
    /// Largest accepted JSON text of one event.
    pub max_event_bytes: usize,
}

impl ParseLimits {
    pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 300_000;
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

    /// Default limits at the given wall-clock time.
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms,
            max_future_skew_ms: Self::DEFAULT_MAX_FUTURE_SKEW_MS,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Default limits at the clock's current time.
    pub fn at<C: Clock + ?Sized>(clock: &C) -> Self {
        Self::new(clock.now_ms())
    }
}

/// Parses and validates one event from a JSON object, borrowing unescaped
/// strings from `json`.
pub fn parse_event<'a>(json: &'a [u8], limits: &ParseLimits) -> Result<Event<'a>, EventError> {
    if json.len() > limits.max_event_bytes {
        return Err(EventError::TooLarge {
            size: json.len(),
            max: limits.max_event_bytes,
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let event = EventSeed { limits }
        .deserialize(&mut deserializer)
        .map_err(|e| EventError::InvalidJson(e.to_string()))?;
    deserializer
        .end()
        .map_err(|e| EventError::InvalidJson(e.to_string()))?;
    event
}

/// Parses one event out of a larger JSON document, e.g. each element of a
/// request's JSON array via `SeqAccess::next_element_seed`, without copying
/// the element out first.
///
/// The outer `Result` is a syntax error that makes the rest of the document
/// unreadable; the inner one rejects just this event, so the caller can keep
/// going with the next element. [`ParseLimits::max_event_bytes`] is not
/// applied here (the caller bounds the whole document).
#[derive(Debug, Clone, Copy)]
pub struct EventSeed<'l> {
    pub limits: &'l ParseLimits,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Result<Event<'de>, EventError>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let raw = deserializer.deserialize_any(ObjectVisitor)?;
        Ok(raw.and_then(|raw| raw.into_event(self.limits)))
    }
}

/// Every field name any event type knows, as slots of [`RawFields`]. Keys are
/// matched once here; a key outside this list is unknown for every type.
macro_rules! slots {
    ($($name:ident),+ $(,)?) => {
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Slot { $($name),+ }

        impl Slot {
            const COUNT: usize = [$(stringify!($name)),+].len();
            const ALL: [Slot; Self::COUNT] = [$(Slot::$name),+];

            fn from_name(name: &str) -> Option<Slot> {
                match name { $(stringify!($name) => Some(Slot::$name),)+ _ => None }
            }

            fn name(self) -> &'static str {
                match self { $(Slot::$name => stringify!($name),)+ }
            }
        }
    };
}

slots! {
    event_type, event_id, event_time, event_version,
    ad_id, user_id, ip, country, stream_id, streamer_id, category, language,
    amount, request_id, position, variant, model_version,
}

const _: () = assert!(Slot::COUNT <= 32, "slot presence is tracked in a u32");

impl Slot {
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

const ENVELOPE_MASK: u32 = Slot::event_type.bit()
    | Slot::event_id.bit()
    | Slot::event_time.bit()
    | Slot::event_version.bit();

/// A JSON value as seen by the parser, kept just detailed enough to type-check
/// it and to describe it in an error. Arrays and objects are skipped, not
/// built, since no field accepts them.
#[derive(Debug, Default)]
enum RawValue<'a> {
    #[default]
    Absent,
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl RawValue<'_> {
    fn describe(&self) -> String {
        match self {
            RawValue::Absent => "nothing".to_owned(),
            RawValue::Null => "null".to_owned(),
            RawValue::Bool(b) => b.to_string(),
            RawValue::U64(n) => n.to_string(),
            RawValue::I64(n) => n.to_string(),
            // serde_json's formatting keeps the ".0" that shows it was a float.
            RawValue::F64(n) => {
                serde_json::Number::from_f64(*n).map_or_else(|| n.to_string(), |n| n.to_string())
            }
            RawValue::Str(s) => quoted(s),
            RawValue::Array => "an array".to_owned(),
            RawValue::Object => "an object".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for RawValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawValue::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(RawValue::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(RawValue::U64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(match u64::try_from(v) {
            Ok(unsigned) => RawValue::U64(unsigned),
            Err(_) => RawValue::I64(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(RawValue::F64(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Borrowed(v)))
    }

    // Only strings with escapes arrive here: they had to be unescaped into a
    // scratch buffer and so must be copied.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawValue::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawValue::Object)
    }
}

/// An object key: a known slot, or a name no event type has.
enum Key<'a> {
    Known(Slot),
    Unknown(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Slot::from_name(v).map_or(Key::Unknown(Cow::Borrowed(v)), Key::Known))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Slot::from_name(v)
                    .map_or_else(|| Key::Unknown(Cow::Owned(v.to_owned())), Key::Known))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The fields of one JSON object, sorted into slots. Semantic checks wait
/// until the whole object is read because `event_type`, which decides which
/// fields are allowed, may come last.
#[derive(Debug, Default)]
struct RawFields<'a> {
    values: [RawValue<'a>; Slot::COUNT],
    present: u32,
    first_unknown: Option<Cow<'a, str>>,
    first_duplicate: Option<Slot>,
}

impl<'a> RawFields<'a> {
    fn put(&mut self, slot: Slot, value: RawValue<'a>) {
        if self.present & slot.bit() != 0 {
            self.first_duplicate.get_or_insert(slot);
            return;
        }
        self.present |= slot.bit();
        self.values[slot as usize] = value;
    }

    fn take(&mut self, slot: Slot) -> RawValue<'a> {
        std::mem::take(&mut self.values[slot as usize])
    }

    fn into_event(mut self, limits: &ParseLimits) -> Result<Event<'a>, EventError> {
        if let Some(slot) = self.first_duplicate {
            return Err(EventError::DuplicateField { field: slot.name() });
        }
        let event_type = match self.take(Slot::event_type) {
            RawValue::Str(name) => {
                EventType::parse(&name).ok_or_else(|| EventError::UnknownType(name.into_owned()))?
            }
            other => return Err(missing_or_wrong_type("event_type", "string", &other)),
        };
        // The version decides the field set, so a newer version's fields are
        // reported as an unsupported version rather than as unknown fields.
        let event_version = match self.take(Slot::event_version) {
            RawValue::Absent | RawValue::Null => 1,
            raw => {
                let version = take_u64("event_version", raw, "positive integer")?;
                validate_positive("event_version", version)?;
                match u32::try_from(version) {
                    Ok(v) if event_type.supported_versions().contains(&v) => v,
                    _ => {
                        return Err(EventError::UnsupportedVersion {
                            event_type,
                            version,
                        })
                    }
                }
            }
        };
        if let Some(name) = self.first_unknown.take() {
            return Err(EventError::UnknownField {
                field: name.into_owned(),
                event_type,
            });
        }
        let foreign = self.present & !(ENVELOPE_MASK | event_type.field_mask());
        if foreign != 0 {
            let slot = Slot::ALL[foreign.trailing_zeros() as usize];
            return Err(EventError::UnknownField {
                field: slot.name().to_owned(),
                event_type,
            });
        }

        let event_id = match self.take(Slot::event_id) {
            RawValue::Absent | RawValue::Null => None,
            raw => Some(take_str("event_id", raw)?),
        };
        let event_time = take_event_time(self.take(Slot::event_time))?;
        let body = EventBody::from_raw(event_type, &mut self)?;
        let event = Event {
            event_id,
            event_time,
            event_version,
            body,
        };
        event.validate(limits)?;
        Ok(event)
    }
}

/// Visits the top-level value; anything but an object is rejected per event
/// (not as a syntax error) so that one bad element of an array does not sink
/// its neighbours.
struct ObjectVisitor;

impl ObjectVisitor {
    fn not_an_object<'a>(got: &str) -> Result<RawFields<'a>, EventError> {
        Err(EventError::InvalidJson(format!(
            "expected a json object, got {got}"
        )))
    }
}

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Result<RawFields<'de>, EventError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Known(slot) => {
                    let value = map.next_value::<RawValue<'de>>()?;
                    raw.put(slot, value);
                }
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    raw.first_unknown.get_or_insert(name);
                }
            }
        }
        Ok(Ok(raw))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        RawValueVisitor.visit_seq(seq)?;
        Ok(Self::not_an_object("an array"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Self::not_an_object("null"))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Self::not_an_object(&v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Self::not_an_object(&v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Self::not_an_object(&v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Self::not_an_object(&RawValue::F64(v).describe()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Self::not_an_object(&quoted(v)))
    }
}

fn missing_or_wrong_type(
    field: &'static str,
    expected: &'static str,
    got: &RawValue<'_>,
) -> EventError {
    match got {
        RawValue::Absent => EventError::MissingField { field },
        other => EventError::WrongType {
            field,
            expected,
            got: other.describe(),
        },
    }
}

fn take_str<'a>(field: &'static str, raw: RawValue<'a>) -> Result<Cow<'a, str>, EventError> {
    match raw {
        RawValue::Str(s) => Ok(s),
        other => Err(missing_or_wrong_type(field, "string", &other)),
    }
}

/// Numbers of the right JSON type but the wrong value (negative, fractional)
/// are `invalid_value`; non-numbers are `wrong_type`.
fn take_u64(
    field: &'static str,
    raw: RawValue<'_>,
    expected: &'static str,
) -> Result<u64, EventError> {
    match raw {
        RawValue::U64(v) => Ok(v),
        RawValue::I64(_) | RawValue::F64(_) => Err(EventError::InvalidValue {
            field,
            detail: format!("expected {expected}, got {}", raw.describe()),
        }),
        other => Err(missing_or_wrong_type(field, expected, &other)),
    }
}

fn take_u32(field: &'static str, raw: RawValue<'_>) -> Result<u32, EventError> {
    const EXPECTED: &str = "integer in 0..=4294967295";
    let value = take_u64(field, raw, EXPECTED)?;
    u32::try_from(value).map_err(|_| EventError::InvalidValue {
        field,
        detail: format!("expected {EXPECTED}, got {value}"),
    })
}

fn take_event_time(raw: RawValue<'_>) -> Result<i64, EventError> {
    const FIELD: &str = "event_time";
    const EXPECTED: &str = "rfc 3339 string or non-negative integer epoch ms";
    match raw {
        RawValue::Str(text) => parse_rfc3339_ms(&text).map_err(|e| EventError::InvalidValue {
            field: FIELD,
            detail: e.to_string(),
        }),
        RawValue::U64(ms) => i64::try_from(ms).map_err(|_| EventError::InvalidValue {
            field: FIELD,
            detail: format!("epoch ms {ms} out of range"),
        }),
        RawValue::I64(_) | RawValue::F64(_) => Err(EventError::InvalidValue {
            field: FIELD,
            detail: format!("expected {EXPECTED}, got {}", raw.describe()),
        }),
        other => Err(missing_or_wrong_type(FIELD, EXPECTED, &other)),
    }
}

fn validate_non_empty(field: &'static str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::InvalidValue {
            field,
            detail: "must not be empty".to_owned(),
        });
    }
    Ok(())
}

fn validate_ip(field: &'static str, value: &str) -> Result<(), EventError> {
    validate_non_empty(field, value)?;
    if value.parse::<IpAddr>().is_err() {
        return Err(EventError::InvalidValue {
            field,
            detail: format!("invalid ip address {}", quoted(value)),
        });
    }
    Ok(())
}

fn validate_positive(field: &'static str, value: u64) -> Result<(), EventError> {
    if value == 0 {
        return Err(EventError::InvalidValue {
            field,
            detail: "expected positive integer, got 0".to_owned(),
        });
    }
    Ok(())
}

/// Why an event was rejected. [`EventError::reason`] gives a short label for
/// metrics; `Display` gives the message returned to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid json: {0}")]
    InvalidJson(String),
    #[error("event is {size} bytes (max {max})")]
    TooLarge { size: usize, max: usize },
    #[error("field \"{field}\" missing")]
    MissingField { field: &'static str },
    #[error("field \"{field}\" appears more than once")]
    DuplicateField { field: &'static str },
    #[error("field \"{field}\": expected {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("field \"{field}\": {detail}")]
    InvalidValue { field: &'static str, detail: String },
    #[error("field \"event_type\": unknown event type {}", quoted(.0))]
    UnknownType(String),
    #[error(
        "field \"event_version\": unsupported version {version} for \"{event_type}\" (supported: {})",
        join_versions(event_type.supported_versions())
    )]
    UnsupportedVersion { event_type: EventType, version: u64 },
    #[error("field {}: unknown field for \"{event_type}\"", quoted(field))]
    UnknownField {
        field: String,
        event_type: EventType,
    },
    #[error(
        "field \"event_time\": {} is {ahead_ms} ms in the future (max skew {max_skew_ms} ms)",
        format_rfc3339_ms(*event_time)
    )]
    FutureTime {
        event_time: i64,
        ahead_ms: i64,
        max_skew_ms: i64,
    },
}

fn join_versions(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl EventError {
    /// The offending field, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::InvalidJson(_) | EventError::TooLarge { .. } => None,
            EventError::MissingField { field }
            | EventError::DuplicateField { field }
            | EventError::WrongType { field, .. }
            | EventError::InvalidValue { field, .. } => Some(field),
            EventError::UnknownType(_) => Some("event_type"),
            EventError::UnsupportedVersion { .. } => Some("event_version"),
            EventError::UnknownField { field, .. } => Some(field),
            EventError::FutureTime { .. } => Some("event_time"),
        }
    }

    /// A fixed label for metrics (bounded cardinality, unlike the message).
    pub fn reason(&self) -> &'static str {
        match self {
            // Duplicate keys are legal JSON grammar but make the object
            // ambiguous, so they count as malformed input.
            EventError::InvalidJson(_) | EventError::DuplicateField { .. } => "invalid_json",
            EventError::TooLarge { .. } => "too_large",
            EventError::MissingField { .. } => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::InvalidValue { .. } => "invalid_value",
            EventError::UnknownType(_) => "unknown_type",
            EventError::UnsupportedVersion { .. } => "unsupported_version",
            EventError::UnknownField { .. } => "unknown_field",
            EventError::FutureTime { .. } => "future_time",
        }
    }
}

// ---------------------------------------------------------------------------
// Binary codec
// ---------------------------------------------------------------------------

/// Why a binary record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported format byte 0x{0:02x}")]
    UnsupportedFormat(u8),
    #[error("unknown event type tag {0}")]
    UnknownTag(u8),
    #[error("truncated in field \"{0}\"")]
    Truncated(&'static str),
    #[error("field \"{0}\": invalid varint")]
    InvalidVarint(&'static str),
    #[error("field \"{field}\": {value} out of range")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("field \"{0}\": invalid utf-8")]
    InvalidUtf8(&'static str),
    #[error("{0} trailing bytes after the event")]
    TrailingBytes(usize),
}

/// The record's fields name themselves in [`ReadError`]; the decoder's
/// errors carry that name.
fn decode_error(error: ReadError) -> DecodeError {
    match error {
        ReadError::Truncated { what, .. } => DecodeError::Truncated(what),
        ReadError::InvalidUtf8 { what, .. } => DecodeError::InvalidUtf8(what),
    }
}

fn read_byte(reader: &mut Reader<'_>, field: &'static str) -> Result<u8, DecodeError> {
    reader.u8(field).map_err(decode_error)
}

/// A minimal unsigned LEB128 varint (see the module docs). Kept here rather
/// than in [`crate::codec`]: the canonical-form rules are this format's.
fn read_varint(reader: &mut Reader<'_>, field: &'static str) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for index in 0..10 {
        let byte = read_byte(reader, field)?;
        let group = u64::from(byte & 0x7f);
        // The tenth byte may only carry the single remaining bit of a u64.
        if index == 9 && byte > 1 {
            return Err(DecodeError::InvalidVarint(field));
        }
        value |= group << (7 * index);
        if byte & 0x80 == 0 {
            // A zero final group means the writer padded the number; only
            // the minimal form is accepted so encoding stays canonical.
            if byte == 0 && index > 0 {
                return Err(DecodeError::InvalidVarint(field));
            }
            return Ok(value);
        }
    }
    Err(DecodeError::InvalidVarint(field))
}

fn read_str<'a>(
    reader: &mut Reader<'a>,
    len: u64,
    field: &'static str,
) -> Result<&'a str, DecodeError> {
    reader.str(len, field).map_err(decode_error)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Small magnitudes of either sign become small unsigned numbers, so a time
/// near the epoch (or a negative test value) stays short.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The operations the generated code needs from each field's Rust type.
trait FieldValue<'a>: Sized {
    type Static;
    fn into_static(self) -> Self::Static;
    fn as_str(&self) -> Option<&str>;
    fn as_u64(&self) -> Option<u64>;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(reader: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError>;
}

impl<'a> FieldValue<'a> for Cow<'a, str> {
    type Static = Cow<'static, str>;

    fn into_static(self) -> Cow<'static, str> {
        Cow::Owned(self.into_owned())
    }

    fn as_str(&self) -> Option<&str> {
        Some(self)
    }

    fn as_u64(&self) -> Option<u64> {
        None
    }

    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(reader: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let len = read_varint(reader, field)?;
        read_str(reader, len, field).map(Cow::Borrowed)
    }
}

impl<'a> FieldValue<'a> for u64 {
    type Static = u64;

    fn into_static(self) -> u64 {
        self
    }

    fn as_str(&self) -> Option<&str> {
        None
    }

    fn as_u64(&self) -> Option<u64> {
        Some(*self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, *self);
    }

    fn decode(reader: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        read_varint(reader, field)
    }
}

impl<'a> FieldValue<'a> for u32 {
    type Static = u32;

    fn into_static(self) -> u32 {
        self
    }

    fn as_str(&self) -> Option<&str> {
        None
    }

    fn as_u64(&self) -> Option<u64> {
        Some(u64::from(*self))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, u64::from(*self));
    }

    fn decode(reader: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let value = read_varint(reader, field)?;
        u32::try_from(value).map_err(|_| DecodeError::OutOfRange { field, value })
    }
}

#[cfg(test)]
mod test_support {
    use std::borrow::Cow;
    use std::net::IpAddr;

    use proptest::prelude::*;

    /// Non-empty text that mixes plain ids with characters JSON must escape
    /// and multi-byte UTF-8.
    pub fn arb_text() -> impl Strategy<Value = Cow<'static, str>> {
        prop_oneof![
            "[a-z0-9_-]{1,12}",
            "[\"\\\\/\u{0}-\u{1f}a-zé€😀]{1,8}",
            "\\PC{1,16}",
        ]
        .prop_map(Cow::Owned)
    }

    pub fn arb_ip() -> impl Strategy<Value = Cow<'static, str>> {
        any::<IpAddr>().prop_map(|ip| Cow::Owned(ip.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MAX_RFC3339_MS;
    use proptest::prelude::*;
    use serde::Deserializer as _;

    const NOW: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

    fn limits() -> ParseLimits {
        ParseLimits::new(NOW)
    }

    fn parse(json: &str) -> Result<Event<'_>, EventError> {
        parse_event(json.as_bytes(), &limits())
    }

    fn error_of(json: &str) -> EventError {
        parse(json).expect_err(json)
    }

    fn ad_click_with(extra: &str) -> String {
        format!(
            r#"{{"event_type":"ad_click","event_time":1714564800000,"ad_id":"ad-1","user_id":"u-1","ip":"10.0.0.1","country":"KR"{extra}}}"#
        )
    }

    /// One valid JSON object per type, with every field set.
    fn example(event_type: EventType) -> String {
        let fields: Vec<String> = event_type
            .field_names()
            .iter()
            .map(|&name| match name {
                "ip" => r#""ip":"192.168.0.7""#.to_owned(),
                "amount" => r#""amount":500"#.to_owned(),
                "position" => r#""position":3"#.to_owned(),
                other => format!(r#""{other}":"{other}-1""#),
            })
            .collect();
        format!(
            r#"{{"event_type":"{event_type}","event_id":"e-1","event_time":"2024-05-01T11:59:00.250Z","event_version":1,{}}}"#,
            fields.join(",")
        )
    }

    #[test]
    fn type_table_is_consistent() {
        for (index, event_type) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(event_type.tag()), index + 1);
            assert_eq!(EventType::from_tag(event_type.tag()), Some(event_type));
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
            assert_eq!(event_type.supported_versions(), &[1]);
            assert!(event_type
                .field_names()
                .contains(&event_type.partition_key_field()));
        }
        assert_eq!(EventType::from_tag(0), None);
        assert_eq!(EventType::from_tag(13), None);
        assert_eq!(EventType::parse("ad_klick"), None);
        assert_eq!(EventType::AdClick.partition_key_field(), "ad_id");
        assert_eq!(EventType::GiftSent.partition_key_field(), "stream_id");
        assert_eq!(EventType::Follow.partition_key_field(), "user_id");
        assert_eq!(EventType::RecClick.partition_key_field(), "user_id");
    }

    #[test]
    fn event_type_serde_uses_wire_names() {
        assert_eq!(
            serde_json::to_string(&EventType::GiftSent).unwrap(),
            r#""gift_sent""#
        );
        let parsed: EventType = serde_json::from_str(r#""rec_click""#).unwrap();
        assert_eq!(parsed, EventType::RecClick);
        let err = serde_json::from_str::<EventType>(r#""nope""#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown event type \"nope\""),
            "{err}"
        );
    }

    #[test]
    fn every_type_parses_and_round_trips() {
        for event_type in EventType::ALL {
            let json = example(event_type);
            let event = parse(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(event.event_type(), event_type);
            assert_eq!(event.event_id.as_deref(), Some("e-1"));
            assert_eq!(event.event_time, NOW - 59_750);
            assert_eq!(event.event_version, 1);
            assert!(!event.partition_key().is_empty());
            assert_eq!(
                event.field_str(event_type.partition_key_field()),
                Some(event.partition_key())
            );

            // JSON -> Event -> binary -> Event
            let mut binary = Vec::new();
            event.encode(&mut binary);
            assert_eq!(Event::decode(&binary).as_ref(), Ok(&event));

            // Event -> JSON -> Event
            let mut written = Vec::new();
            event.write_json(&mut written);
            assert_eq!(parse_event(&written, &limits()).as_ref(), Ok(&event));
            assert_eq!(
                event.to_json_value(),
                serde_json::from_slice::<serde_json::Value>(&written).unwrap()
            );
        }
    }

    #[test]
    fn unescaped_strings_are_borrowed_and_escaped_ones_decoded() {
        let json = ad_click_with("").replace(r#""u-1""#, r#""a\"b\u00e9""#);
        let event = parse(&json).unwrap();
        assert!(matches!(
            &event.body,
            EventBody::AdClick {
                ad_id: Cow::Borrowed(_),
                ..
            }
        ));
        assert_eq!(event.field_str("user_id"), Some("a\"bé"));
        assert!(matches!(
            &event.body,
            EventBody::AdClick {
                user_id: Cow::Owned(_),
                ..
            }
        ));

        let mut binary = Vec::new();
        event.encode(&mut binary);
        let decoded = Event::decode(&binary).unwrap();
        assert!(matches!(
            &decoded.body,
            EventBody::AdClick {
                user_id: Cow::Borrowed("a\"bé"),
                ..
            }
        ));
    }

    #[test]
    fn escaped_field_names_are_recognised() {
        let json = ad_click_with("").replace(r#""ad_id""#, r#""ad\u005fid""#);
        assert_eq!(parse(&json).unwrap().partition_key(), "ad-1");
    }

    #[test]
    fn event_time_accepts_rfc3339_and_epoch_ms() {
        let rfc =
            ad_click_with("").replace("1714564800000", r#""2024-05-01T14:00:00.123456+02:00""#);
        assert_eq!(parse(&rfc).unwrap().event_time, NOW + 123);
        let epoch = ad_click_with("").replace("1714564800000", "0");
        assert_eq!(parse(&epoch).unwrap().event_time, 0);
    }

    #[test]
    fn optional_envelope_fields_default() {
        let minimal = ad_click_with("");
        let event = parse(&minimal).unwrap();
        assert_eq!(event.event_id, None);
        assert_eq!(event.event_version, 1);
        let nulls = ad_click_with(r#","event_id":null,"event_version":null"#);
        let event = parse(&nulls).unwrap();
        assert_eq!(event.event_id, None);
        assert_eq!(event.event_version, 1);
        // Without an event_id the JSON form leaves the key out.
        assert!(!event
            .to_json_value()
            .as_object()
            .unwrap()
            .contains_key("event_id"));
    }

    #[test]
    fn field_accessors() {
        let json = example(EventType::RecImpression);
        let event = parse(&json).unwrap();
        assert_eq!(event.field_str("event_type"), Some("rec_impression"));
        assert_eq!(event.field_str("event_id"), Some("e-1"));
        assert_eq!(event.field_str("variant"), Some("variant-1"));
        assert_eq!(event.field_str("position"), None);
        assert_eq!(event.field_str("colour"), None);
        assert_eq!(event.field_u64("position"), Some(3));
        assert_eq!(event.field_u64("event_version"), Some(1));
        assert_eq!(event.field_u64("variant"), None);
    }

    #[test]
    fn into_owned_outlives_the_input() {
        let event = {
            let json = example(EventType::GiftSent);
            parse(&json).unwrap().into_owned()
        };
        assert_eq!(event.field_str("user_id"), Some("user_id-1"));
        assert_eq!(event.field_u64("amount"), Some(500));
    }

    #[track_caller]
    fn assert_rejected(json: &str, reason: &str, field: Option<&str>, message: &str) {
        let err = error_of(json);
        assert_eq!(err.to_string(), message, "{json}");
        assert_eq!(err.reason(), reason, "{json}");
        assert_eq!(err.field(), field, "{json}");
    }

    #[test]
    fn error_messages_name_the_field_and_value() {
        let base = ad_click_with("");
        assert_rejected(
            &base.replace(r#""ad_id":"ad-1","#, ""),
            "missing_field",
            Some("ad_id"),
            r#"field "ad_id" missing"#,
        );
        assert_rejected(
            &base.replace(r#""ad_click""#, r#""ad_klick""#),
            "unknown_type",
            Some("event_type"),
            r#"field "event_type": unknown event type "ad_klick""#,
        );
        assert_rejected(
            &base.replace(r#""event_type":"ad_click","#, ""),
            "missing_field",
            Some("event_type"),
            r#"field "event_type" missing"#,
        );
        assert_rejected(
            &base.replace(r#""ad_click""#, "7"),
            "wrong_type",
            Some("event_type"),
            r#"field "event_type": expected string, got 7"#,
        );
        assert_rejected(
            &ad_click_with(r#","event_version":2"#),
            "unsupported_version",
            Some("event_version"),
            r#"field "event_version": unsupported version 2 for "ad_click" (supported: 1)"#,
        );
        assert_rejected(
            &ad_click_with(r#","event_version":0"#),
            "invalid_value",
            Some("event_version"),
            r#"field "event_version": expected positive integer, got 0"#,
        );
        assert_rejected(
            &ad_click_with(r#","event_version":"1""#),
            "wrong_type",
            Some("event_version"),
            r#"field "event_version": expected positive integer, got "1""#,
        );
        assert_rejected(
            &ad_click_with(r#","colour":"red""#),
            "unknown_field",
            Some("colour"),
            r#"field "colour": unknown field for "ad_click""#,
        );
        // A field of another type is just as unknown for this one.
        assert_rejected(
            &ad_click_with(r#","stream_id":"s-1""#),
            "unknown_field",
            Some("stream_id"),
            r#"field "stream_id": unknown field for "ad_click""#,
        );
        assert_rejected(
            &base.replace(r#""ad-1""#, r#""""#),
            "invalid_value",
            Some("ad_id"),
            r#"field "ad_id": must not be empty"#,
        );
        assert_rejected(
            &base.replace(r#""ad-1""#, "42"),
            "wrong_type",
            Some("ad_id"),
            r#"field "ad_id": expected string, got 42"#,
        );
        assert_rejected(
            &base.replace(r#""ad-1""#, "null"),
            "wrong_type",
            Some("ad_id"),
            r#"field "ad_id": expected string, got null"#,
        );
        assert_rejected(
            &base.replace(r#""ad-1""#, "[1,2]"),
            "wrong_type",
            Some("ad_id"),
            r#"field "ad_id": expected string, got an array"#,
        );
        assert_rejected(
            &base.replace("10.0.0.1", "999.0.0.1"),
            "invalid_value",
            Some("ip"),
            r#"field "ip": invalid ip address "999.0.0.1""#,
        );
        assert_rejected(
            &ad_click_with(r#","ad_id":"ad-2""#),
            "invalid_json",
            Some("ad_id"),
            r#"field "ad_id" appears more than once"#,
        );
    }

    #[test]
    fn amount_must_be_a_positive_integer() {
        let gift = |amount: &str| {
            format!(
                r#"{{"event_type":"gift_sent","event_time":1714564800000,"stream_id":"s","user_id":"u","amount":{amount}}}"#
            )
        };
        assert_rejected(
            &gift("-3"),
            "invalid_value",
            Some("amount"),
            r#"field "amount": expected positive integer, got -3"#,
        );
        assert_rejected(
            &gift("0"),
            "invalid_value",
            Some("amount"),
            r#"field "amount": expected positive integer, got 0"#,
        );
        assert_rejected(
            &gift("1.5"),
            "invalid_value",
            Some("amount"),
            r#"field "amount": expected positive integer, got 1.5"#,
        );
        assert_rejected(
            &gift("2.0"),
            "invalid_value",
            Some("amount"),
            r#"field "amount": expected positive integer, got 2.0"#,
        );
        assert_rejected(
            &gift(r#""5""#),
            "wrong_type",
            Some("amount"),
            r#"field "amount": expected positive integer, got "5""#,
        );
        assert_eq!(
            parse(&gift("18446744073709551615"))
                .unwrap()
                .field_u64("amount"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn position_is_a_u32() {
        let json = example(EventType::RecImpression);
        assert_eq!(
            parse(&json.replace(r#""position":3"#, r#""position":0"#))
                .unwrap()
                .field_u64("position"),
            Some(0)
        );
        assert_rejected(
            &json.replace(r#""position":3"#, r#""position":4294967296"#),
            "invalid_value",
            Some("position"),
            r#"field "position": expected integer in 0..=4294967295, got 4294967296"#,
        );
        assert_rejected(
            &json.replace(r#""position":3"#, r#""position":-1"#),
            "invalid_value",
            Some("position"),
            r#"field "position": expected integer in 0..=4294967295, got -1"#,
        );
    }

    #[test]
    fn event_id_rules() {
        let max = "x".repeat(MAX_EVENT_ID_BYTES);
        let json = ad_click_with(&format!(r#","event_id":"{max}""#));
        let event = parse(&json).unwrap();
        assert_eq!(event.event_id.as_deref(), Some(max.as_str()));
        assert_rejected(
            &ad_click_with(&format!(r#","event_id":"{max}x""#)),
            "invalid_value",
            Some("event_id"),
            r#"field "event_id": 129 bytes (max 128)"#,
        );
        assert_rejected(
            &ad_click_with(r#","event_id":"""#),
            "invalid_value",
            Some("event_id"),
            r#"field "event_id": must not be empty"#,
        );
        assert_rejected(
            &ad_click_with(r#","event_id":17"#),
            "wrong_type",
            Some("event_id"),
            r#"field "event_id": expected string, got 17"#,
        );
    }

    #[test]
    fn event_time_rules() {
        let with_time = |time: &str| ad_click_with("").replace("1714564800000", time);
        assert_rejected(
            &with_time(r#""2031-01-01T00:00:00Z""#),
            "future_time",
            Some("event_time"),
            &format!(
                r#"field "event_time": 2031-01-01T00:00:00.000Z is {} ms in the future (max skew 300000 ms)"#,
                1_924_992_000_000i64 - NOW
            ),
        );
        // Exactly at the skew limit is still accepted.
        assert!(parse(&with_time(&(NOW + 300_000).to_string())).is_ok());
        assert_eq!(
            error_of(&with_time(&(NOW + 300_001).to_string())).reason(),
            "future_time"
        );
        assert_rejected(
            &with_time("-5"),
            "invalid_value",
            Some("event_time"),
            r#"field "event_time": expected rfc 3339 string or non-negative integer epoch ms, got -5"#,
        );
        assert_rejected(
            &with_time("1.5"),
            "invalid_value",
            Some("event_time"),
            r#"field "event_time": expected rfc 3339 string or non-negative integer epoch ms, got 1.5"#,
        );
        assert_rejected(
            &with_time(r#""2024-13-01T00:00:00Z""#),
            "invalid_value",
            Some("event_time"),
            r#"field "event_time": invalid rfc 3339 timestamp "2024-13-01T00:00:00Z": month out of range"#,
        );
        assert_rejected(
            &with_time(r#""1969-12-31T23:59:59Z""#),
            "invalid_value",
            Some("event_time"),
            r#"field "event_time": 1969-12-31T23:59:59.000Z is before 1970-01-01T00:00:00.000Z"#,
        );
        assert_rejected(
            &with_time("true"),
            "wrong_type",
            Some("event_time"),
            r#"field "event_time": expected rfc 3339 string or non-negative integer epoch ms, got true"#,
        );
        assert_rejected(
            &ad_click_with("").replace(r#""event_time":1714564800000,"#, ""),
            "missing_field",
            Some("event_time"),
            r#"field "event_time" missing"#,
        );
    }

    #[test]
    fn size_and_syntax_errors() {
        let mut tight = limits();
        tight.max_event_bytes = 100;
        let json = ad_click_with(r#","event_id":"padding-padding-padding""#);
        let err = parse_event(json.as_bytes(), &tight).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("event is {} bytes (max 100)", json.len())
        );
        assert_eq!((err.reason(), err.field()), ("too_large", None));

        let err = error_of(r#"{"event_type":"ad_click","#);
        assert_eq!(err.reason(), "invalid_json");
        assert!(
            err.to_string()
                .starts_with("invalid json: EOF while parsing"),
            "{err}"
        );

        let err = error_of(&format!("{} {{}}", ad_click_with("")));
        assert_eq!(err.reason(), "invalid_json");
        assert!(
            err.to_string()
                .starts_with("invalid json: trailing characters"),
            "{err}"
        );

        assert_eq!(
            error_of("[1,2]").to_string(),
            "invalid json: expected a json object, got an array"
        );
        assert_eq!(
            error_of(r#""ad_click""#).to_string(),
            r#"invalid json: expected a json object, got "ad_click""#
        );
        assert_eq!(error_of("").reason(), "invalid_json");
    }

    #[test]
    fn version_is_checked_before_the_body() {
        // A newer version may have different fields, so its field errors
        // would be misleading.
        let json = r#"{"event_type":"follow","event_time":0,"event_version":3,"followee":"x"}"#;
        assert_eq!(error_of(json).reason(), "unsupported_version");
        let json = r#"{"event_type":"follow","event_time":0,"event_version":3}"#;
        assert_eq!(error_of(json).reason(), "unsupported_version");
    }

    #[test]
    fn seed_rejects_array_elements_individually() {
        let body = format!(
            r#"[{}, 5, {{"event_type":"nope"}}, {}]"#,
            ad_click_with(""),
            example(EventType::Follow)
        );
        let limits = limits();
        let mut deserializer = serde_json::Deserializer::from_str(&body);
        struct Elements<'l>(&'l ParseLimits);
        impl<'de> Visitor<'de> for Elements<'_> {
            type Value = Vec<Result<Event<'de>, EventError>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(result) = seq.next_element_seed(EventSeed { limits: self.0 })? {
                    out.push(result);
                }
                Ok(out)
            }
        }
        let results = deserializer.deserialize_seq(Elements(&limits)).unwrap();
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            "invalid json: expected a json object, got 5"
        );
        assert_eq!(results[2].as_ref().unwrap_err().reason(), "unknown_type");
        assert_eq!(results[3].as_ref().unwrap().event_type(), EventType::Follow);
    }

    #[test]
    fn binary_layout_is_as_documented() {
        let event = Event {
            event_id: Some(Cow::Borrowed("e")),
            event_time: -1,
            event_version: 1,
            body: EventBody::GiftSent {
                stream_id: Cow::Borrowed("s"),
                user_id: Cow::Borrowed("u"),
                amount: 300,
            },
        };
        let mut out = Vec::new();
        event.encode(&mut out);
        assert_eq!(out, [0x01, 8, 1, 1, 2, b'e', 1, b's', 1, b'u', 0xac, 0x02]);
    }

    #[test]
    fn decode_rejects_malformed_records() {
        let mut good = Vec::new();
        parse(&example(EventType::StreamHeartbeat))
            .unwrap()
            .encode(&mut good);
        assert_eq!(Event::decode(&[]), Err(DecodeError::Truncated("format")));
        assert_eq!(Event::decode(&[2]), Err(DecodeError::UnsupportedFormat(2)));
        assert_eq!(Event::decode(&[1, 0]), Err(DecodeError::UnknownTag(0)));
        assert_eq!(
            Event::decode(&good[..good.len() - 1]),
            Err(DecodeError::Truncated("stream_id"))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Event::decode(&trailing), Err(DecodeError::TrailingBytes(1)));
        // Version 1 written as a padded two-byte varint.
        assert_eq!(
            Event::decode(&[1, 4, 0x81, 0x00]),
            Err(DecodeError::InvalidVarint("event_version"))
        );
        assert_eq!(
            Event::decode(&[1, 4, 0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(DecodeError::OutOfRange {
                field: "event_version",
                value: 1 << 32
            })
        );
        assert_eq!(
            Event::decode(&[1, 4, 1, 0, 0, 2, 0xff, 0xfe]),
            Err(DecodeError::InvalidUtf8("stream_id"))
        );
        assert_eq!(
            Event::decode(&[
                1, 4, 1, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02
            ]),
            Err(DecodeError::InvalidVarint("stream_id"))
        );
        assert_eq!(
            DecodeError::Truncated("ad_id").to_string(),
            r#"truncated in field "ad_id""#
        );
    }

    #[test]
    fn validate_applies_parse_rules_to_built_events() {
        let json = example(EventType::GiftSent);
        let mut event = parse(&json).unwrap();
        assert_eq!(event.validate(&limits()), Ok(()));
        if let EventBody::GiftSent { amount, .. } = &mut event.body {
            *amount = 0;
        }
        assert_eq!(
            event.validate(&limits()).unwrap_err().to_string(),
            r#"field "amount": expected positive integer, got 0"#
        );
        event.event_version = 9;
        assert_eq!(
            event.validate(&limits()).unwrap_err().reason(),
            "unsupported_version"
        );
    }

    fn arb_event() -> impl Strategy<Value = Event<'static>> {
        (
            prop::option::of(test_support::arb_text()),
            any::<i64>(),
            any::<u32>(),
            arb_body(),
        )
            .prop_map(|(event_id, event_time, event_version, body)| Event {
                event_id,
                event_time,
                event_version,
                body,
            })
    }

    /// Events that satisfy every parse rule, for the JSON round trip.
    fn arb_valid_event() -> impl Strategy<Value = Event<'static>> {
        (
            prop::option::of(
                test_support::arb_text()
                    .prop_filter("event_id length", |id| id.len() <= MAX_EVENT_ID_BYTES),
            ),
            0..=MAX_RFC3339_MS,
            arb_body(),
        )
            .prop_map(|(event_id, event_time, body)| Event {
                event_id,
                event_time,
                event_version: 1,
                body,
            })
    }

    proptest! {
        #[test]
        fn binary_round_trip(event in arb_event()) {
            let mut out = vec![0xAA]; // encode appends
            event.encode(&mut out);
            prop_assert_eq!(Event::decode(&out[1..]), Ok(event));
        }

        #[test]
        fn json_round_trip(event in arb_valid_event()) {
            let limits = ParseLimits { now_ms: MAX_RFC3339_MS, ..ParseLimits::new(0) };
            let mut json = Vec::new();
            event.write_json(&mut json);
            prop_assert_eq!(parse_event(&json, &limits), Ok(event.clone()));
            let mut binary = Vec::new();
            event.encode(&mut binary);
            prop_assert_eq!(Event::decode(&binary), Ok(event));
        }

        #[test]
        fn decode_of_random_bytes_never_panics_and_accepts_only_canonical(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(event) = Event::decode(&bytes) {
                let mut again = Vec::new();
                event.encode(&mut again);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn decode_of_corrupted_records_never_panics(event in arb_event(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut bytes = Vec::new();
            event.encode(&mut bytes);
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            let _ = Event::decode(&bytes);
            let _ = Event::decode(&bytes[..bytes.len() / 2]);
        }

        #[test]
        fn parse_of_random_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse_event(text.as_bytes(), &ParseLimits::new(NOW));
        }

        #[test]
        fn zigzag_round_trip(value in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(value)), value);
        }
    }
}
