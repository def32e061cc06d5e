//! `[ads]`: the configuration of the ad click aggregation pipeline, with
//! its built-in defaults in `default.toml` beside this file.

use riffle_core::config::{validate_topic_name, ConfigError, Section};
use serde::{Deserialize, Serialize};

impl Section for AdsConfig {
    const KEY: &'static str = "ads";
    const DEFAULTS: &'static str = include_str!("default.toml");

    fn validate(&self) -> Result<(), ConfigError> {
        self.check()
    }
}

/// The ad click aggregation pipeline (`[ads]`); docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdsConfig {
    /// Run the pipeline and its aggregate writer in `riffle serve`.
    pub enabled: bool,
    /// Pipeline name: its consumer group, checkpoint directory and the
    /// prefix of its late topic (`<pipeline>.late`).
    pub pipeline: String,
    pub input_topic: String,
    pub aggregates_topic: String,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub dedup_horizon_ms: i64,
    pub emit_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    /// A partition with no new records for this long no longer holds back
    /// the pipeline watermark (which decides `complete` in answers).
    pub idle_timeout_ms: i64,
    /// How many ads each top-N result keeps (the largest `count` a
    /// `popular_ads` query may ask for).
    pub top_n: u32,
    /// Aggregates older than this are deleted from the store.
    pub retention_ms: i64,
    /// Directory of the Parquet archive of the raw input (relative paths
    /// are under `server.data_dir`); empty turns archiving off.
    pub archive_dir: String,
    /// How often the input written since the last pass is archived.
    pub archive_interval_ms: u64,
    pub filters: Vec<AdFilterConfig>,
    pub popular: Vec<PopularConfig>,
}

/// A predefined filter: the conjunction of the non-empty conditions; within
/// a condition any listed value matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdFilterConfig {
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub country: Vec<String>,
    /// CIDR ranges.
    #[serde(default)]
    pub ip: Vec<String>,
    #[serde(default)]
    pub user_id: Vec<String>,
}

/// One maintained top-N: the most clicked ads over a sliding window of
/// `window_minutes` minutes, for one filter (0 = all clicks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopularConfig {
    pub window_minutes: u32,
    #[serde(default)]
    pub filter_id: u32,
}

impl AdsConfig {
    /// The topic where events beyond the allowed lateness go.
    pub fn late_topic(&self) -> String {
        format!("{}.late", self.pipeline)
    }

    /// The internal topic through which tasks send clicks to the task that
    /// owns their ad (same partition count as the input).
    pub fn repartition_topic(&self) -> String {
        format!("{}.repartition", self.pipeline)
    }

    /// The consumer group whose members share ownership of the input
    /// partitions (the pipeline's offsets are committed under `pipeline`).
    pub fn owners_group(&self) -> String {
        format!("{}.owners", self.pipeline)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let err =
            |key: &str, message: String| Err(ConfigError::new(format!("ads.{key}: {message}")));
        for (key, topic) in [
            ("pipeline", &self.pipeline),
            ("input_topic", &self.input_topic),
            ("aggregates_topic", &self.aggregates_topic),
        ] {
            if let Err(reason) = validate_topic_name(topic) {
                return err(key, reason.to_string());
            }
        }
        if self.input_topic == self.aggregates_topic {
            return err(
                "aggregates_topic",
                format!("must differ from input_topic ({:?})", self.input_topic),
            );
        }
        if self.out_of_orderness_ms < 0 {
            return err(
                "out_of_orderness_ms",
                format!("{} must not be negative", self.out_of_orderness_ms),
            );
        }
        if self.allowed_lateness_ms < 0 {
            return err(
                "allowed_lateness_ms",
                format!("{} must not be negative", self.allowed_lateness_ms),
            );
        }
        // Lateness is judged per minute window, so a click up to
        // allowed_lateness + 1 min behind the watermark still counts and must
        // still be checked for duplicates.
        let min_horizon = self.allowed_lateness_ms.saturating_add(60_000);
        if self.dedup_horizon_ms < min_horizon {
            return err(
                "dedup_horizon_ms",
                format!(
                    "{} must be at least allowed_lateness_ms + 60000 ({min_horizon}): a shorter horizon lets duplicates of late events through",
                    self.dedup_horizon_ms
                ),
            );
        }
        if self.emit_interval_ms == 0 {
            return err("emit_interval_ms", "must be at least 1".into());
        }
        if self.checkpoint_interval_ms < self.emit_interval_ms {
            return err(
                "checkpoint_interval_ms",
                format!(
                    "{} must be at least emit_interval_ms ({})",
                    self.checkpoint_interval_ms, self.emit_interval_ms
                ),
            );
        }
        if self.idle_timeout_ms <= 0 {
            return err(
                "idle_timeout_ms",
                format!("{} must be positive", self.idle_timeout_ms),
            );
        }
        if self.top_n == 0 || self.top_n > 10_000 {
            return err("top_n", format!("{} is outside 1..=10000", self.top_n));
        }
        if self.retention_ms <= 0 {
            return err(
                "retention_ms",
                format!("{} must be positive", self.retention_ms),
            );
        }
        if !self.archive_dir.is_empty() && self.archive_interval_ms == 0 {
            return err("archive_interval_ms", "must be at least 1".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, filter) in self.filters.iter().enumerate() {
            if filter.id == 0 {
                return err(
                    &format!("filters[{i}].id"),
                    "0 is reserved for \"no filter\"".into(),
                );
            }
            if !ids.insert(filter.id) {
                return err(
                    &format!("filters[{i}].id"),
                    format!("{} is used twice", filter.id),
                );
            }
            if filter.name.is_empty() || !names.insert(filter.name.as_str()) {
                return err(
                    &format!("filters[{i}].name"),
                    format!("{:?} is empty or used twice", filter.name),
                );
            }
            if filter.country.is_empty() && filter.ip.is_empty() && filter.user_id.is_empty() {
                return err(
                    &format!("filters[{i}]"),
                    "needs at least one condition (country, ip or user_id)".into(),
                );
            }
            for (j, range) in filter.ip.iter().enumerate() {
                if let Err(reason) = riffle_core::net::Cidr::parse(range) {
                    return err(&format!("filters[{i}].ip[{j}]"), reason.to_string());
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, popular) in self.popular.iter().enumerate() {
            if popular.window_minutes == 0 || popular.window_minutes > 1440 {
                return err(
                    &format!("popular[{i}].window_minutes"),
                    format!("{} is outside 1..=1440", popular.window_minutes),
                );
            }
            if popular.filter_id != 0 && !ids.contains(&popular.filter_id) {
                return err(
                    &format!("popular[{i}].filter_id"),
                    format!(
                        "{} is not the id of a filter in ads.filters",
                        popular.filter_id
                    ),
                );
            }
            if !seen.insert((popular.window_minutes, popular.filter_id)) {
                return err(&format!("popular[{i}]"), "is listed twice".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let ads = AdsConfig::defaults();
        ads.validate().expect("defaults are valid");
        assert_eq!(ads.input_topic, "ad_clicks");
        assert_eq!(ads.filters.len(), 3);
    }

    #[test]
    fn archive_keys_default_to_hourly_and_need_an_interval() {
        let mut ads = AdsConfig::defaults();
        assert_eq!(
            (ads.archive_dir.as_str(), ads.archive_interval_ms),
            ("archive", 3_600_000)
        );
        ads.archive_interval_ms = 0;
        let err = ads.validate().unwrap_err();
        assert!(err.to_string().contains("ads.archive_interval_ms"), "{err}");
        ads.archive_dir = String::new();
        ads.validate()
            .expect("no interval is needed without an archive");
    }
}
