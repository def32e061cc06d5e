//! [`LiveConfig`]: the size and the behaviour of a simulated live-streaming
//! platform, and its presets.

use serde::{Deserialize, Serialize};

pub use crate::ads::ConfigError;

/// Categories streams are in, most common first (a config uses the first
/// `categories` of them).
pub const CATEGORIES: [&str; 16] = [
    "just_chatting",
    "music",
    "gaming_fps",
    "gaming_moba",
    "gaming_rpg",
    "gaming_mobile",
    "irl",
    "sports",
    "cooking",
    "art",
    "education",
    "talk_show",
    "dance",
    "asmr",
    "fitness",
    "travel",
];

/// Languages, with the share of streamers and users speaking each (a config
/// uses the first `languages` of them, weights renormalised).
pub const LANGUAGES: [(&str, f64); 8] = [
    ("en", 0.34),
    ("ko", 0.18),
    ("ja", 0.14),
    ("es", 0.10),
    ("pt", 0.08),
    ("de", 0.06),
    ("fr", 0.05),
    ("tr", 0.05),
];

/// What the simulator produces. Every field has a default (the `small`
/// preset); `docs/simulate.md` documents each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    pub seed: u64,
    /// Event time of the simulation's start (epoch ms).
    pub start_ms: i64,
    /// Span of event time simulated.
    pub duration_ms: i64,
    pub users: u32,
    pub streamers: u32,
    /// How many of [`CATEGORIES`] are used.
    pub categories: u32,
    /// How many of [`LANGUAGES`] are used.
    pub languages: u32,
    /// A live stream sends `stream_heartbeat` this often.
    pub heartbeat_ms: i64,
    /// Mean streams per streamer per week (heavy-tailed across streamers:
    /// most stream rarely, a few every day).
    pub streams_per_week: f64,
    /// Median length of a stream.
    pub stream_length_ms: i64,
    /// Share of streams that end without `stream_ended` (the app crashed or
    /// lost its connection): their heartbeats just stop.
    pub vanish_rate: f64,
    /// Mean viewing sessions per user per day (heavy-tailed across users).
    pub sessions_per_day: f64,
    /// Median time a user watches a stream they chose, before taste and
    /// engagement scale it.
    pub watch_median_ms: i64,
    /// Probability that a user who left a stream looks for another one in
    /// the same session.
    pub continue_rate: f64,
    /// Share of events emitted again later with the same `event_id`.
    pub duplicates: f64,
    /// Share of events emitted late (behind events with a later time), by up
    /// to `max_out_of_order_ms`.
    pub out_of_order: f64,
    pub max_out_of_order_ms: i64,
    /// Event id prefix; default `live-<seed>-`.
    pub id_prefix: Option<String>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig::preset("small").expect("built-in preset")
    }
}

/// The presets `riffle simulate live --preset` accepts.
pub const PRESETS: [&str; 3] = ["small", "medium", "twitch-100k"];

impl LiveConfig {
    /// A named preset:
    /// * `small`: 3,000 users, 400 streamers, 6 hours, heartbeats every 30 s
    ///   (tests and the demo);
    /// * `medium`: 20,000 users, 2,000 streamers, 2 days;
    /// * `twitch-100k`: shaped like the public Twitch 100k dataset (Rappaz
    ///   et al., RecSys 2021): 100K users, 162K streamers, ~3M watch
    ///   sessions over 6,148 ten-minute steps (42.7 days); one heartbeat per
    ///   ten-minute step, as the dataset was crawled.
    pub fn preset(name: &str) -> Result<LiveConfig, ConfigError> {
        let small = LiveConfig {
            seed: 1,
            // 2026-01-05T00:00:00Z, a Monday.
            start_ms: 1_767_571_200_000,
            duration_ms: 6 * HOUR_MS,
            users: 3_000,
            streamers: 400,
            categories: 10,
            languages: 4,
            heartbeat_ms: 30_000,
            streams_per_week: 10.0,
            stream_length_ms: 2 * HOUR_MS,
            vanish_rate: 0.05,
            sessions_per_day: 6.0,
            watch_median_ms: 20 * 60_000,
            continue_rate: 0.5,
            duplicates: 0.0,
            out_of_order: 0.0,
            max_out_of_order_ms: 5_000,
            id_prefix: None,
        };
        match name {
            "small" => Ok(small),
            "medium" => Ok(LiveConfig {
                duration_ms: 2 * 24 * HOUR_MS,
                users: 20_000,
                streamers: 2_000,
                streams_per_week: 7.0,
                sessions_per_day: 2.0,
                categories: 16,
                languages: 8,
                ..small
            }),
            "twitch-100k" => Ok(LiveConfig {
                streams_per_week: 0.45,
                sessions_per_day: 0.42,
                duration_ms: 6_148 * 10 * 60_000,
                users: 100_000,
                streamers: 162_000,
                categories: 16,
                languages: 8,
                heartbeat_ms: 10 * 60_000,
                ..small
            }),
            other => Err(ConfigError {
                field: "preset",
                message: format!("{other:?} is not one of {}", PRESETS.join(", ")),
            }),
        }
    }

    /// The event id prefix in effect.
    pub fn effective_id_prefix(&self) -> String {
        self.id_prefix
            .clone()
            .unwrap_or_else(|| format!("live-{}-", self.seed))
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, message: String| Err(ConfigError { field, message });
        if self.duration_ms <= 0 {
            return invalid(
                "duration_ms",
                format!("{} must be positive", self.duration_ms),
            );
        }
        if self.users == 0 || self.users > 10_000_000 {
            return invalid("users", format!("{} is outside 1..=10000000", self.users));
        }
        if self.streamers == 0 || self.streamers > 10_000_000 {
            return invalid(
                "streamers",
                format!("{} is outside 1..=10000000", self.streamers),
            );
        }
        if self.categories == 0 || self.categories as usize > CATEGORIES.len() {
            return invalid(
                "categories",
                format!("{} is outside 1..={}", self.categories, CATEGORIES.len()),
            );
        }
        if self.languages == 0 || self.languages as usize > LANGUAGES.len() {
            return invalid(
                "languages",
                format!("{} is outside 1..={}", self.languages, LANGUAGES.len()),
            );
        }
        if self.heartbeat_ms < 1_000 {
            return invalid(
                "heartbeat_ms",
                format!("{} is below 1000", self.heartbeat_ms),
            );
        }
        if self.stream_length_ms < 60_000 {
            return invalid(
                "stream_length_ms",
                format!("{} is below 60000", self.stream_length_ms),
            );
        }
        if self.watch_median_ms < 1_000 {
            return invalid(
                "watch_median_ms",
                format!("{} is below 1000", self.watch_median_ms),
            );
        }
        for (field, value) in [
            ("streams_per_week", self.streams_per_week),
            ("sessions_per_day", self.sessions_per_day),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 1_000.0) {
                return invalid(field, format!("{value} is outside (0, 1000]"));
            }
        }
        for (field, value) in [
            ("vanish_rate", self.vanish_rate),
            ("continue_rate", self.continue_rate),
            ("duplicates", self.duplicates),
            ("out_of_order", self.out_of_order),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(field, format!("{value} is outside 0..=1"));
            }
        }
        if self.max_out_of_order_ms < 0 {
            return invalid(
                "max_out_of_order_ms",
                format!("{} must not be negative", self.max_out_of_order_ms),
            );
        }
        Ok(())
    }
}

pub(crate) const HOUR_MS: i64 = 3_600_000;
