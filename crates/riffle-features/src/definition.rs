//! Feature definitions: declared once (a `features.toml` file, or the
//! builder that mirrors it), checked as a whole, then used by every driver.
//!
//! ```toml
//! tile = "1m"                       # default tile of sliding windows
//!
//! [[feature]]
//! name = "stream_chat_per_min_5m"
//! entity = "stream"                 # stream | streamer | user | user_streamer | context
//! events = ["chat_message"]
//! aggregation = "rate_per_min"
//! window = "5m"                     # "lifetime" (default) or a duration, a multiple of the tile
//!
//! [[ttl]]                           # a row expires this long after its entity's last event
//! entity = "stream"
//! ttl = "1h"
//! ```
//!
//! The built-in set is [`DEFAULT_FEATURES`] (`default_features.toml`);
//! docs/features.md documents every field and aggregation.

use std::collections::BTreeSet;

use riffle_core::config::{parse_toml, ConfigError};
use riffle_core::time::parse_duration_ms;
use serde::{Deserialize, Deserializer};

use crate::store::EntityKind;

/// The built-in feature set.
pub const DEFAULT_FEATURES: &str = include_str!("default_features.toml");

/// What a feature is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// Kept in the online store under an [`EntityKind`].
    Stored(EntityKind),
    /// A function of the instant (hour of day, day of week): computed when
    /// read, never stored.
    Context,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Stored(kind) => kind.as_str(),
            Entity::Context => "context",
        }
    }

    fn parse(name: &str) -> Option<Entity> {
        if name == "context" {
            return Some(Entity::Context);
        }
        EntityKind::parse(name).ok().map(Entity::Stored)
    }
}

/// How a feature folds its events. Every aggregation is commutative: its
/// value at an instant depends on the set of events, not their arrival
/// order (docs/adr/0004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Events per minute over the window (`count / window minutes`).
    RatePerMin,
    /// Events of `events` per event of `per` (e.g. joins per stream).
    Ratio,
    /// Sum, mean, minimum, maximum of the numeric `field`.
    Sum,
    Avg,
    Min,
    Max,
    /// Distinct values of `field`.
    DistinctCount,
    /// The `field` of the latest event (by event time, then event id).
    Last,
    /// Seconds since the latest event.
    TimeSinceLast,
    /// Seconds since the first event.
    Age,
    /// Users joined (`viewer_joined`) and not left (`viewer_left`).
    OpenSessions,
    /// Viewers now minus viewers one window ago.
    OpenSessionsGrowth,
    /// Mean length in seconds of the viewing sessions that ended in the
    /// window.
    SessionDurationAvg,
    /// Total length in seconds of the sessions that ended in the window.
    SessionDurationSum,
    /// The `k` most frequent values of `field` in the window.
    TopK,
    /// The `k` most recent distinct values of `field`.
    RecentK,
    /// Whether a stream is live: started or heart-beating within `timeout`
    /// of the instant, and not ended since (by event time).
    Live,
    /// Hour of day and day of week (UTC) of the instant (`context` only).
    HourOfDay,
    DayOfWeek,
}

impl Aggregation {
    /// The name used in `features.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::RatePerMin => "rate_per_min",
            Aggregation::Ratio => "ratio",
            Aggregation::Sum => "sum",
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::DistinctCount => "distinct_count",
            Aggregation::Last => "last",
            Aggregation::TimeSinceLast => "time_since_last",
            Aggregation::Age => "age",
            Aggregation::OpenSessions => "open_sessions",
            Aggregation::OpenSessionsGrowth => "open_sessions_growth",
            Aggregation::SessionDurationAvg => "session_duration_avg",
            Aggregation::SessionDurationSum => "session_duration_sum",
            Aggregation::TopK => "top_k",
            Aggregation::RecentK => "recent_k",
            Aggregation::Live => "live",
            Aggregation::HourOfDay => "hour_of_day",
            Aggregation::DayOfWeek => "day_of_week",
        }
    }

    fn needs_field(self) -> bool {
        matches!(
            self,
            Aggregation::Sum
                | Aggregation::Avg
                | Aggregation::Min
                | Aggregation::Max
                | Aggregation::DistinctCount
                | Aggregation::Last
                | Aggregation::TopK
                | Aggregation::RecentK
        )
    }

    fn numeric_field(self) -> bool {
        matches!(
            self,
            Aggregation::Sum | Aggregation::Avg | Aggregation::Min | Aggregation::Max
        )
    }

    fn windowed(self) -> bool {
        !matches!(
            self,
            Aggregation::Last
                | Aggregation::TimeSinceLast
                | Aggregation::Age
                | Aggregation::OpenSessions
                | Aggregation::RecentK
                | Aggregation::Live
                | Aggregation::HourOfDay
                | Aggregation::DayOfWeek
        )
    }

    fn session(self) -> bool {
        matches!(
            self,
            Aggregation::OpenSessions
                | Aggregation::OpenSessionsGrowth
                | Aggregation::SessionDurationAvg
                | Aggregation::SessionDurationSum
        )
    }

    fn context(self) -> bool {
        matches!(self, Aggregation::HourOfDay | Aggregation::DayOfWeek)
    }
}

/// The event types features can read, with the fields each carries once
/// the stream's metadata is attached (`streamer_id`, `category`,
/// `language` on every stream event; docs/adr/0004).
pub const SOURCES: [(&str, &[&str]); 8] = [
    (
        "stream_started",
        &["stream_id", "streamer_id", "category", "language"],
    ),
    (
        "stream_heartbeat",
        &["stream_id", "streamer_id", "category", "language"],
    ),
    (
        "stream_ended",
        &["stream_id", "streamer_id", "category", "language"],
    ),
    (
        "viewer_joined",
        &[
            "stream_id",
            "streamer_id",
            "category",
            "language",
            "user_id",
        ],
    ),
    (
        "viewer_left",
        &[
            "stream_id",
            "streamer_id",
            "category",
            "language",
            "user_id",
        ],
    ),
    (
        "gift_sent",
        &[
            "stream_id",
            "streamer_id",
            "category",
            "language",
            "user_id",
            "amount",
        ],
    ),
    (
        "chat_message",
        &[
            "stream_id",
            "streamer_id",
            "category",
            "language",
            "user_id",
        ],
    ),
    ("follow", &["user_id", "streamer_id"]),
];

fn fields_of(event: &str) -> Option<&'static [&'static str]> {
    SOURCES.iter().find(|(e, _)| *e == event).map(|(_, f)| *f)
}

/// The id fields an entity is keyed by.
fn key_fields(entity: EntityKind) -> &'static [&'static str] {
    match entity {
        EntityKind::Stream => &["stream_id"],
        EntityKind::Streamer => &["streamer_id"],
        EntityKind::User => &["user_id"],
        EntityKind::UserStreamer => &["user_id", "streamer_id"],
    }
}

/// A window: everything so far, or the last `ms` evaluated on tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Lifetime,
    Sliding { ms: i64, tile_ms: i64 },
}

/// One checked feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub entity: Entity,
    pub events: Vec<String>,
    pub aggregation: Aggregation,
    pub field: Option<String>,
    /// For `ratio`: the denominator's event types.
    pub per: Vec<String>,
    pub window: Window,
    /// For `top_k` / `recent_k`.
    pub k: usize,
    /// For `live`: how long after the last heartbeat a stream counts as
    /// live.
    pub timeout_ms: i64,
    pub description: String,
}

/// A checked feature set: names unique, every feature valid, entities'
/// row TTLs resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub features: Vec<Feature>,
    /// Per stored entity: how long after its last event its row expires.
    pub ttl_ms: Vec<(EntityKind, i64)>,
}

// ------------------------------------------------------------------ file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_tile", deserialize_with = "duration")]
    tile: i64,
    #[serde(default)]
    ttl: Vec<TtlEntry>,
    #[serde(default, rename = "feature")]
    features: Vec<FeatureEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlEntry {
    entity: String,
    #[serde(deserialize_with = "duration")]
    ttl: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureEntry {
    name: String,
    entity: String,
    #[serde(default)]
    events: Vec<String>,
    aggregation: Aggregation,
    field: Option<String>,
    #[serde(default)]
    per: Vec<String>,
    window: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    tile: Option<i64>,
    k: Option<usize>,
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<i64>,
    #[serde(default)]
    description: String,
}

fn default_tile() -> i64 {
    60_000
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration_ms(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    duration(d).map(Some)
}

/// The longest sliding window.
pub const MAX_WINDOW_MS: i64 = 30 * 86_400_000;
/// The most tiles one sliding window may span (bounds state per entity).
pub const MAX_TILES: i64 = 1_440;

impl FeatureSet {
    /// The built-in set.
    pub fn defaults() -> FeatureSet {
        FeatureSet::parse(DEFAULT_FEATURES, "default_features.toml").expect("built-in features")
    }

    /// Parses and checks a `features.toml`; `origin` names the file in
    /// errors, which name the feature (`feature[3] "x"`) and the key.
    pub fn parse(text: &str, origin: &str) -> Result<FeatureSet, ConfigError> {
        let file: File = parse_toml(text, origin)?;
        let fail = |what: String| Err(ConfigError::new(format!("{origin}: {what}")));
        if file.tile <= 0 {
            return fail(format!("tile: {} ms must be positive", file.tile));
        }
        let mut ttl_ms = Vec::new();
        for (i, entry) in file.ttl.iter().enumerate() {
            let Some(Entity::Stored(kind)) = Entity::parse(&entry.entity) else {
                return fail(format!(
                    "ttl[{i}].entity: {:?} is not one of stream, streamer, user, user_streamer",
                    entry.entity
                ));
            };
            if entry.ttl <= 0 || ttl_ms.iter().any(|(k, _)| *k == kind) {
                return fail(format!(
                    "ttl[{i}]: {:?} is listed twice or its ttl is not positive",
                    entry.entity
                ));
            }
            ttl_ms.push((kind, entry.ttl));
        }
        let mut names = BTreeSet::new();
        let mut features = Vec::new();
        for (i, entry) in file.features.into_iter().enumerate() {
            let at = format!("feature[{i}] {:?}", entry.name);
            let feature = check_feature(entry, file.tile)
                .map_err(|e| ConfigError::new(format!("{origin}: {at}: {e}")))?;
            if !names.insert(feature.name.clone()) {
                return fail(format!("{at}: the name is used twice"));
            }
            features.push(feature);
        }
        if features.is_empty() {
            return fail("no [[feature]] is defined".into());
        }
        for feature in &features {
            if let Entity::Stored(kind) = feature.entity {
                if !ttl_ms.iter().any(|(k, _)| *k == kind) {
                    ttl_ms.push((kind, 7 * 86_400_000));
                }
            }
        }
        ttl_ms.sort();
        Ok(FeatureSet { features, ttl_ms })
    }

    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// The features of one entity, in definition order.
    pub fn of(&self, entity: Entity) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(move |f| f.entity == entity)
    }
}

fn check_feature(entry: FeatureEntry, default_tile: i64) -> Result<Feature, String> {
    let name = entry.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("name: must be 1 to 64 characters of a-z, 0-9 and _".into());
    }
    let entity = Entity::parse(&entry.entity).ok_or_else(|| {
        format!(
            "entity: {:?} is not one of stream, streamer, user, user_streamer, context",
            entry.entity
        )
    })?;
    let aggregation = entry.aggregation;
    if aggregation.context() != (entity == Entity::Context) {
        return Err(format!(
            "aggregation: {aggregation:?} needs entity \"context\" and only it has hour_of_day and day_of_week"
        ));
    }
    let kind = match entity {
        Entity::Context => {
            if !entry.events.is_empty() {
                return Err("events: context features read no events".into());
            }
            None
        }
        Entity::Stored(kind) => Some(kind),
    };
    match (aggregation, entry.per.is_empty()) {
        (Aggregation::Ratio, true) => {
            return Err("per: ratio needs the denominator's events".into())
        }
        (Aggregation::Ratio, false) => {
            if let Some(both) = entry.per.iter().find(|e| entry.events.contains(e)) {
                return Err(format!(
                    "per: {both:?} is also in events; numerator and denominator must differ"
                ));
            }
        }
        (_, true) => {}
        (_, false) => return Err("per: only ratio takes per".into()),
    }
    if let Some(kind) = kind {
        if entry.events.is_empty() {
            return Err("events: at least one event type is needed".into());
        }
        for event in entry.events.iter().chain(&entry.per) {
            let fields = fields_of(event).ok_or_else(|| {
                format!(
                    "events: {event:?} is not one of {}",
                    SOURCES.map(|(e, _)| e).join(", ")
                )
            })?;
            for key in key_fields(kind) {
                if !fields.contains(key) {
                    return Err(format!(
                        "events: {event:?} has no {key}, so it cannot update a {} feature",
                        kind.as_str()
                    ));
                }
            }
            if let Some(field) = &entry.field {
                if !fields.contains(&field.as_str()) {
                    return Err(format!("field: {event:?} has no field {field:?}"));
                }
            }
        }
    }
    match (&entry.field, aggregation.needs_field()) {
        (None, true) => return Err(format!("field: {aggregation:?} needs a field")),
        (Some(field), false) => {
            return Err(format!(
                "field: {aggregation:?} takes no field (got {field:?})"
            ))
        }
        _ => {}
    }
    if aggregation.numeric_field() && entry.field.as_deref() != Some("amount") {
        return Err(format!(
            "field: {aggregation:?} needs a numeric field; the only one is \"amount\""
        ));
    }
    if aggregation.session() {
        let events: BTreeSet<&str> = entry.events.iter().map(String::as_str).collect();
        if events != BTreeSet::from(["viewer_joined", "viewer_left"]) {
            return Err(format!(
                "events: {aggregation:?} reads exactly viewer_joined and viewer_left"
            ));
        }
    }
    if aggregation == Aggregation::Live {
        let allowed = BTreeSet::from(["stream_started", "stream_heartbeat", "stream_ended"]);
        if kind != Some(EntityKind::Stream)
            || !entry.events.iter().all(|e| allowed.contains(e.as_str()))
        {
            return Err(
                "aggregation: live is a stream feature over stream_started, stream_heartbeat and stream_ended".into(),
            );
        }
    }
    let timeout_ms = match (aggregation, entry.timeout) {
        (Aggregation::Live, Some(t)) if t > 0 => t,
        (Aggregation::Live, _) => return Err("timeout: live needs a positive timeout".into()),
        (_, Some(_)) => return Err("timeout: only live takes a timeout".into()),
        (_, None) => 0,
    };
    let k = match (aggregation, entry.k) {
        (Aggregation::TopK | Aggregation::RecentK, Some(k)) if (1..=50).contains(&k) => k,
        (Aggregation::TopK | Aggregation::RecentK, k) => {
            return Err(format!("k: {k:?} is outside 1..=50"))
        }
        (_, Some(_)) => return Err("k: only top_k and recent_k take k".into()),
        (_, None) => 0,
    };
    let window = match entry.window.as_deref() {
        None | Some("lifetime") => {
            if entry.tile.is_some() {
                return Err("tile: a lifetime window has no tiles".into());
            }
            if aggregation == Aggregation::RatePerMin
                || aggregation == Aggregation::OpenSessionsGrowth
            {
                return Err(format!("window: {aggregation:?} needs a sliding window"));
            }
            Window::Lifetime
        }
        Some(text) => {
            if !aggregation.windowed() {
                return Err(format!("window: {aggregation:?} takes no window"));
            }
            let ms = parse_duration_ms(text).map_err(|e| format!("window: {e}"))?;
            let tile_ms = entry.tile.unwrap_or(default_tile);
            if tile_ms <= 0 || ms <= 0 || ms % tile_ms != 0 {
                return Err(format!(
                    "window: {text} is not a positive multiple of the tile ({tile_ms} ms)"
                ));
            }
            if ms > MAX_WINDOW_MS || ms / tile_ms > MAX_TILES {
                return Err(format!(
                    "window: {text} is longer than 30d or spans more than {MAX_TILES} tiles"
                ));
            }
            Window::Sliding { ms, tile_ms }
        }
    };
    Ok(Feature {
        name,
        entity,
        events: entry.events,
        aggregation,
        field: entry.field,
        per: entry.per,
        window,
        k,
        timeout_ms,
        description: entry.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_is_valid_and_covers_every_entity() {
        let set = FeatureSet::defaults();
        assert!(set.features.len() >= 40, "{} features", set.features.len());
        for entity in EntityKind::ALL {
            assert!(set.of(Entity::Stored(entity)).count() >= 3, "{entity}");
        }
        assert!(set.of(Entity::Context).count() >= 2);
        for name in [
            "stream_live",
            "stream_viewers",
            "stream_viewer_growth_5m",
            "stream_watch_time_avg_30m",
            "stream_gifts_per_min_5m",
            "stream_chat_per_min_5m",
            "stream_unique_chatters_30m",
            "stream_age",
            "streamer_followers",
            "streamer_viewers_avg",
            "streamer_streams_7d",
            "user_recent_streamers",
            "user_top_categories_7d",
            "user_top_languages_7d",
            "user_joins_24h",
            "pair_watches",
            "pair_time_since_last_watch",
            "pair_watch_time_total",
            "hour_of_day",
            "day_of_week",
        ] {
            assert!(set.get(name).is_some(), "no default feature {name}");
        }
    }

    fn one(feature: &str) -> Result<FeatureSet, ConfigError> {
        FeatureSet::parse(&format!("[[feature]]\n{feature}"), "test.toml")
    }

    #[test]
    fn bad_definitions_name_the_feature_and_the_key() {
        for (feature, expected) in [
            (
                "name = \"x\"\nentity = \"channel\"\nevents = [\"chat_message\"]\naggregation = \"count\"",
                "entity: \"channel\" is not one of",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"chat\"]\naggregation = \"count\"",
                "events: \"chat\" is not one of",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"follow\"]\naggregation = \"count\"",
                "\"follow\" has no stream_id",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"gift_sent\"]\naggregation = \"sum\"",
                "field: Sum needs a field",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"sum\"\nfield = \"user_id\"",
                "needs a numeric field",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\nwindow = \"90s\"",
                "window: 90s is not a positive multiple of the tile",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\nwindow = \"5x\"",
                "window: \"5x\" is not a duration",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"stream_heartbeat\"]\naggregation = \"live\"",
                "timeout: live needs a positive timeout",
            ),
            (
                "name = \"X\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"",
                "name: must be 1 to 64 characters",
            ),
            (
                "name = \"x\"\nentity = \"user\"\nevents = [\"chat_message\"]\naggregation = \"top_k\"\nfield = \"category\"\nk = 99",
                "k: Some(99) is outside 1..=50",
            ),
            (
                "name = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\ncolour = \"red\"",
                "colour",
            ),
            (
                "name = \"x\"\nentity = \"streamer\"\nevents = [\"stream_started\", \"viewer_joined\"]\nper = [\"stream_started\"]\naggregation = \"ratio\"",
                "per: \"stream_started\" is also in events",
            ),
        ] {
            let error = one(feature).unwrap_err().to_string();
            assert!(error.contains(expected), "{feature}\n=> {error}");
            assert!(error.contains("test.toml"), "{error}");
        }
        let twice = "[[feature]]\nname = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\n";
        let error = FeatureSet::parse(&format!("{twice}{twice}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("feature[1] \"x\": the name is used twice"),
            "{error}"
        );
    }

    #[test]
    fn windows_resolve_against_the_tile() {
        let set = one(
            "name = \"x\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\nwindow = \"10m\"\ntile = \"30s\"",
        )
        .unwrap();
        assert_eq!(
            set.features[0].window,
            Window::Sliding {
                ms: 600_000,
                tile_ms: 30_000
            }
        );
        assert_eq!(set.ttl_ms, vec![(EntityKind::Stream, 7 * 86_400_000)]);
    }
}
