//! `[datasets]`: the configuration of dataset publish/subscribe, with its
//! built-in defaults in `default.toml` beside this file.

use riffle_core::config::{validate_topic_name, ConfigError, Section};
use serde::{Deserialize, Serialize};

impl Section for DatasetsConfig {
    const KEY: &'static str = "datasets";
    const DEFAULTS: &'static str = include_str!("default.toml");

    fn validate(&self) -> Result<(), ConfigError> {
        self.check()
    }
}

/// Dataset publish/subscribe (`[datasets]`); docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetsConfig {
    /// Listener of the publish side (role `datasets-publish`).
    pub publish_addr: String,
    /// Listener of the consume side (role `datasets-consume`).
    pub consume_addr: String,
    /// Worker threads of each side's own runtime: a flood of publishes
    /// cannot starve consumers and the reverse.
    pub publish_workers: usize,
    pub consume_workers: usize,
    /// `sqlite:` URL of the metadata store; empty: a SQLite file at
    /// `<data-dir>/datasets/metadata.db`.
    pub metadata_url: String,
    /// Blob directory, relative to the data directory.
    pub blob_dir: String,
    /// Payloads up to this size are stored inline in the metadata store.
    pub inline_max_bytes: u64,
    /// Largest payload a publish accepts (0: no limit).
    pub max_payload_bytes: u64,
    /// The consume cache polls the metadata store for changes made by other
    /// processes this often (changes made by this process are seen at once).
    pub cache_refresh_ms: u64,
    /// The longest `wait` a long-poll may ask for.
    pub max_wait_ms: u64,
    pub rollout_tick_ms: u64,
    pub janitor_interval_ms: u64,
    /// Blobs no version references are deleted once this old (a publish
    /// uploads its blob before committing the version).
    pub orphan_grace_ms: u64,
    /// Master key (64 hex chars) that wraps per-topic data keys; empty: a
    /// generated key in `<data-dir>/datasets/master.key` (mode 0600).
    pub master_key: String,
    /// Named tokens with per-topic roles; the admin token holds every role.
    pub tokens: Vec<DatasetToken>,
}

/// A dataset token: `name` is what the audit trail records as the actor.
/// Topic patterns: an exact name, a prefix ending in `*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetToken {
    pub name: String,
    pub token: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub consume: Vec<String>,
}

impl DatasetsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| {
            Err(ConfigError::new(format!("datasets.{key}: {message}")))
        };
        if self.publish_workers == 0 || self.publish_workers > 256 {
            return err(
                "publish_workers",
                format!("{} is outside 1..=256", self.publish_workers),
            );
        }
        if self.consume_workers == 0 || self.consume_workers > 256 {
            return err(
                "consume_workers",
                format!("{} is outside 1..=256", self.consume_workers),
            );
        }
        if self.inline_max_bytes > 64 << 20 {
            return err(
                "inline_max_bytes",
                format!("{} is above 64 MiB", self.inline_max_bytes),
            );
        }
        for (key, value) in [
            ("cache_refresh_ms", self.cache_refresh_ms),
            ("max_wait_ms", self.max_wait_ms),
            ("rollout_tick_ms", self.rollout_tick_ms),
            ("janitor_interval_ms", self.janitor_interval_ms),
        ] {
            if value == 0 {
                return err(key, "must be positive".into());
            }
        }
        if self.cache_refresh_ms > 1000 {
            return err(
                "cache_refresh_ms",
                format!(
                    "{} is above 1000: consumers must see changes within a second",
                    self.cache_refresh_ms
                ),
            );
        }
        if !self.master_key.is_empty()
            && (self.master_key.len() != 64
                || !self.master_key.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return err("master_key", "must be 64 hex characters".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if token.name.is_empty() || !names.insert(token.name.as_str()) {
                return err(
                    &format!("tokens[{i}].name"),
                    format!("{:?} is empty or used twice", token.name),
                );
            }
            if token.token.len() < 16 {
                return err(
                    &format!("tokens[{i}].token"),
                    "must be at least 16 characters".into(),
                );
            }
            for pattern in token.publish.iter().chain(&token.consume) {
                let name = pattern.strip_suffix('*').unwrap_or(pattern);
                if !name.is_empty() && validate_topic_name(name).is_err() {
                    return err(
                        &format!("tokens[{i}]"),
                        format!("topic pattern {pattern:?} is not a name, a prefix ending in '*', or '*'"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_validated_naming_the_key() {
        DatasetsConfig::defaults()
            .validate()
            .expect("defaults are valid");
        let mut config = DatasetsConfig::defaults();
        config.cache_refresh_ms = 5000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("datasets.cache_refresh_ms: 5000"), "{err}");
        let mut config = DatasetsConfig::defaults();
        config.tokens = vec![DatasetToken {
            name: "ci".into(),
            token: "short".into(),
            publish: vec![],
            consume: vec![],
        }];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("datasets.tokens[0].token:"), "{err}");
        let mut config = DatasetsConfig::defaults();
        config.tokens = vec![DatasetToken {
            name: "ci".into(),
            token: "long-enough-secret-0123".into(),
            publish: vec!["bad name*".into()],
            consume: vec![],
        }];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("\"bad name*\""), "{err}");
    }
}
