//! Layered configuration: built-in defaults (`default.toml`) → `./riffle.toml`
//! → `--config` files → environment `RIFFLE__SECTION__KEY` → explicit
//! overrides from command-line flags. Unknown keys are errors everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The built-in defaults, also the reference for docs/configuration.md.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub bus: BusConfig,
    pub log: LogConfig,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub ads: AdsConfig,
    pub datasets: DatasetsConfig,
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err =
            |key: &str, message: String| Err(ConfigError::new(format!("ads.{key}: {message}")));
        for (key, topic) in [
            ("pipeline", &self.pipeline),
            ("input_topic", &self.input_topic),
            ("aggregates_topic", &self.aggregates_topic),
        ] {
            if let Err(reason) = validate_topic_name(topic) {
                return err(key, reason);
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
                if let Err(reason) = crate::net::Cidr::parse(range) {
                    return err(&format!("filters[{i}].ip[{j}]"), reason);
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http_addr: String,
    pub grpc_addr: String,
    pub shutdown_grace_ms: u64,
    /// What this process runs (`--roles`): any of `ingest`, `process`,
    /// `serve`, `datasets-publish`, `datasets-consume`.
    pub roles: Vec<Role>,
    pub tls: TlsConfig,
}

/// A part of `riffle serve` that can run in its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `POST /v1/events`, gRPC ingest, the log API.
    Ingest,
    /// The pipelines (ad click aggregation).
    Process,
    /// Query APIs (ads, pipelines).
    Serve,
    /// Dataset publish, pin, scope, rollout and topic management endpoints
    /// on `datasets.publish_addr`, the rollout driver and the janitor.
    DatasetsPublish,
    /// Dataset consume endpoints (`latest` long-poll, version metadata and
    /// data) on `datasets.consume_addr`, answered from the in-memory cache.
    DatasetsConsume,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Ingest,
        Role::Process,
        Role::Serve,
        Role::DatasetsPublish,
        Role::DatasetsConsume,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Process => "process",
            Role::Serve => "serve",
            Role::DatasetsPublish => "datasets-publish",
            Role::DatasetsConsume => "datasets-consume",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "roles: {s:?} is not one of ingest, process, serve, datasets-publish, datasets-consume"
                )
            })
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
    pub fn validate(&self) -> Result<(), ConfigError> {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Which event bus the process runs on (`[bus]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub kind: BusKind,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// The embedded segment log under `<data_dir>/log` (`[log]`).
    Embedded,
    /// An external Kafka cluster (`[bus.kafka]`); needs a binary built with
    /// the `kafka` feature (the released one is).
    Kafka,
}

/// `[bus.kafka]`: the Kafka backend (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port,host:port`.
    pub brokers: String,
    /// Commit pipeline output and input offsets in Kafka transactions as
    /// well (docs/adr/0003). Correctness never depends on them.
    pub transactions: bool,
    /// Replication factor of the topics Riffle creates.
    pub replication_factor: i32,
    /// Directory shared by every `process` member for per-partition
    /// checkpoints; empty = `<data_dir>/checkpoints` (one machine only).
    pub checkpoint_dir: String,
    /// Bounds every metadata and admin request to the brokers.
    pub request_timeout_ms: u64,
    /// Passed through to librdkafka for every client (`security.protocol`,
    /// `sasl.*`, `ssl.*`, `session.timeout.ms`, …).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Group,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
    pub group_commit_interval_ms: u64,
    pub group_commit_max_bytes: u64,
    pub segment_bytes: u64,
    pub index_interval_bytes: u64,
    pub retention_check_interval_ms: u64,
    pub default_partitions: u32,
    pub default_retention_ms: i64,
    pub default_retention_bytes: i64,
    pub max_read_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_event_bytes: usize,
    pub max_events_per_request: usize,
    pub max_future_skew_ms: i64,
    pub max_inflight_bytes: usize,
    pub retry_after_secs: u64,
    pub topic_partitions: u32,
    pub dead_letter_topic: String,
    /// event type → topic. Every event type must have a route.
    pub routes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Empty: `riffle serve` generates one into `<data_dir>/admin.token`.
    pub admin_token: String,
    /// Empty: ingest is open.
    pub ingest_tokens: Vec<String>,
    /// Empty: reads are open.
    pub read_tokens: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

impl crate::HasCode for ConfigError {
    fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::InvalidArgument
    }
}

/// Where the layers come from. `cwd_file` is `./riffle.toml` unless a test
/// points it elsewhere; `env` is the process environment unless replaced.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    pub cwd_file: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    /// Dotted-key overrides from flags, e.g. `("server.http_addr", "…")`.
    pub overrides: Vec<(String, toml_value::Value)>,
    pub use_env: bool,
}

/// Re-exported so callers can build overrides without depending on figment.
pub mod toml_value {
    pub use figment::value::Value;
}

impl Config {
    pub fn defaults() -> Config {
        Config::load(&ConfigSources::default()).expect("built-in defaults parse")
    }

    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = &sources.cwd_file {
            if path.exists() {
                figment = figment.merge(Toml::file_exact(path));
            }
        }
        for path in &sources.files {
            if !path.exists() {
                return Err(ConfigError::new(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if sources.use_env {
            figment = figment.merge(Env::prefixed("RIFFLE__").split("__").lowercase(true));
        }
        for (key, value) in &sources.overrides {
            figment = figment.merge(Serialized::default(key, value.clone()));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::new(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let log = &self.log;
        if log.segment_bytes < 4096 || log.segment_bytes > 1 << 30 {
            return Err(ConfigError::new(format!(
                "log.segment_bytes: {} is outside 4096..=1073741824 (1 GiB)",
                log.segment_bytes
            )));
        }
        if log.default_partitions == 0 {
            return Err(ConfigError::new(
                "log.default_partitions: must be at least 1",
            ));
        }
        let ingest = &self.ingest;
        for (key, value) in [
            ("ingest.max_body_bytes", ingest.max_body_bytes),
            ("ingest.max_event_bytes", ingest.max_event_bytes),
            (
                "ingest.max_events_per_request",
                ingest.max_events_per_request,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!("{key}: must be at least 1")));
            }
        }
        // A body is admitted against the in-flight budget; a budget smaller
        // than one body would refuse such bodies with 429 forever.
        if ingest.max_inflight_bytes < ingest.max_body_bytes {
            return Err(ConfigError::new(format!(
                "ingest.max_inflight_bytes: {} is below ingest.max_body_bytes ({})",
                ingest.max_inflight_bytes, ingest.max_body_bytes
            )));
        }
        if self.ingest.topic_partitions == 0 {
            return Err(ConfigError::new(
                "ingest.topic_partitions: must be at least 1",
            ));
        }
        if let Err(reason) = validate_topic_name(&self.ingest.dead_letter_topic) {
            return Err(ConfigError::new(format!(
                "ingest.dead_letter_topic: {reason}"
            )));
        }
        for (event_type, topic) in &self.ingest.routes {
            if crate::event::EventType::parse(event_type).is_none() {
                return Err(ConfigError::new(format!(
                    "ingest.routes: unknown event type \"{event_type}\""
                )));
            }
            if let Err(reason) = validate_topic_name(topic) {
                return Err(ConfigError::new(format!(
                    "ingest.routes.{event_type}: {reason}"
                )));
            }
        }
        for event_type in crate::event::EventType::ALL {
            if !self.ingest.routes.contains_key(event_type.as_str()) {
                return Err(ConfigError::new(format!(
                    "ingest.routes: no route for event type \"{}\"",
                    event_type.as_str()
                )));
            }
        }
        if self.bus.kind == BusKind::Kafka {
            let kafka = &self.bus.kafka;
            if kafka.brokers.trim().is_empty() {
                return Err(ConfigError::new(
                    "bus.kafka.brokers: required when bus.kind = \"kafka\" (host:port,…)",
                ));
            }
            if kafka.replication_factor < 1 {
                return Err(ConfigError::new(format!(
                    "bus.kafka.replication_factor: {} must be at least 1",
                    kafka.replication_factor
                )));
            }
            if kafka.request_timeout_ms == 0 {
                return Err(ConfigError::new(
                    "bus.kafka.request_timeout_ms: must be at least 1",
                ));
            }
            for key in ["bootstrap.servers", "transactional.id", "group.id"] {
                if kafka.properties.contains_key(key) {
                    return Err(ConfigError::new(format!(
                        "bus.kafka.properties.\"{key}\": set by riffle (use bus.kafka.brokers / bus.kafka.transactions)"
                    )));
                }
            }
        }
        self.ads.validate()?;
        self.datasets.validate()?;
        if self.server.roles.is_empty() {
            return Err(ConfigError::new(
                "server.roles: at least one role is required",
            ));
        }
        if self.server.tls.enabled
            && (self.server.tls.cert_path.as_os_str().is_empty()
                || self.server.tls.key_path.as_os_str().is_empty())
        {
            return Err(ConfigError::new(
                "server.tls: cert_path and key_path are required when enabled",
            ));
        }
        Ok(())
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.server.data_dir.join("admin.token")
    }
}

/// Topic names: 1–200 bytes of `[A-Za-z0-9._-]`, not starting with `.`
/// (they are directory names on disk and path segments in the HTTP API).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("topic name \"{name}\" must be 1 to 200 characters"));
    }
    // Names starting with '.' are reserved for the log's staging and
    // deletion directories.
    if name.starts_with('.') {
        return Err(format!("topic name \"{name}\" must not start with '.'"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name \"{name}\" has invalid character {bad:?} (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// Resolves a path relative to the data directory unless already absolute.
pub fn in_data_dir(data_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        data_dir.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_route_every_type() {
        let config = Config::defaults();
        assert_eq!(config.server.http_addr, "127.0.0.1:8080");
        assert_eq!(config.ingest.routes["ad_click"], "ad_clicks");
        assert_eq!(config.log.fsync, FsyncPolicy::Group);
    }

    #[test]
    fn archive_keys_default_to_hourly_and_need_an_interval() {
        let mut ads = Config::defaults().ads;
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

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = std::env::temp_dir().join(format!("riffle-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[log]\nsegmnet_bytes = 5\n").unwrap();
        let err = Config::load(&ConfigSources {
            files: vec![file],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("segmnet_bytes"), "{err}");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("riffle-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cwd = dir.join("riffle.toml");
        std::fs::write(
            &cwd,
            "[log]\ndefault_partitions = 7\nsegment_bytes = 8192\n",
        )
        .unwrap();
        let extra = dir.join("extra.toml");
        std::fs::write(&extra, "[log]\ndefault_partitions = 9\n").unwrap();
        let config = Config::load(&ConfigSources {
            cwd_file: Some(cwd),
            files: vec![extra],
            overrides: vec![("server.http_addr".into(), "127.0.0.1:9999".into())],
            use_env: false,
        })
        .unwrap();
        assert_eq!(config.log.default_partitions, 9);
        assert_eq!(config.log.segment_bytes, 8192);
        assert_eq!(config.server.http_addr, "127.0.0.1:9999");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = std::env::temp_dir().join(format!("riffle-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("r.toml");
        std::fs::write(&file, "[ingest.routes]\nad_klick = \"x\"\n").unwrap();
        let err = Config::load(&ConfigSources {
            files: vec![file],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ad_klick"), "{err}");
    }

    #[test]
    fn ingest_limits_that_would_refuse_everything_are_rejected() {
        let mut config = Config::defaults();
        config.ingest.max_inflight_bytes = 1024;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.max_inflight_bytes: 1024 is below"),
            "{err}"
        );
        let mut config = Config::defaults();
        config.ingest.max_events_per_request = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.max_events_per_request: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic_name("ad_clicks").is_ok());
        assert!(validate_topic_name("a/b").unwrap_err().contains("'/'"));
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(".hidden").is_err());
        assert!(validate_topic_name("a.b").is_ok());
        assert!(validate_topic_name("").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped at the repository root must always load.
    #[test]
    fn shipped_example_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../riffle.example.toml");
        let config = Config::load(&ConfigSources {
            files: vec![path],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.log.segment_bytes, 128 << 20);
        assert_eq!(config.ingest.routes["ad_impression"], "prod.ad_impressions");
        assert_eq!(
            config.ingest.routes["ad_click"], "ad_clicks",
            "unlisted routes keep defaults"
        );
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(config.datasets.tokens.len(), 1);
        assert_eq!(config.datasets.tokens[0].publish, vec!["models.*", "ab.*"]);
        assert!(config.datasets.tokens[0].consume.is_empty());
        assert_eq!(config.server.roles, Role::ALL.to_vec(), "default roles");
    }

    #[test]
    fn datasets_and_roles_are_validated_naming_the_key() {
        let mut config = Config::defaults();
        config.datasets.cache_refresh_ms = 5000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("datasets.cache_refresh_ms: 5000"), "{err}");
        let mut config = Config::defaults();
        config.datasets.tokens = vec![DatasetToken {
            name: "ci".into(),
            token: "short".into(),
            publish: vec![],
            consume: vec![],
        }];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("datasets.tokens[0].token:"), "{err}");
        let mut config = Config::defaults();
        config.datasets.tokens = vec![DatasetToken {
            name: "ci".into(),
            token: "long-enough-secret-0123".into(),
            publish: vec!["bad name*".into()],
            consume: vec![],
        }];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("\"bad name*\""), "{err}");
        let mut config = Config::defaults();
        config.server.roles.clear();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("server.roles:"));
        assert_eq!(Role::parse("datasets-consume"), Ok(Role::DatasetsConsume));
        assert!(Role::parse("everything")
            .unwrap_err()
            .contains("\"everything\""));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn environment_overrides_files() {
        // Env layering is exercised through figment's Jail so the process
        // environment of other tests is untouched.
        figment::Jail::expect_with(|jail| {
            jail.set_env("RIFFLE__LOG__FSYNC", "always");
            jail.set_env("RIFFLE__SERVER__HTTP_ADDR", "127.0.0.1:9000");
            let config = Config::load(&ConfigSources {
                use_env: true,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            assert_eq!(config.log.fsync, FsyncPolicy::Always);
            assert_eq!(config.server.http_addr, "127.0.0.1:9000");
            Ok(())
        });
    }
}
