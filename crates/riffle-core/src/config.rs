//! Layered configuration: built-in defaults → `./riffle.toml` → `--config`
//! files → environment `RIFFLE__SECTION__KEY` → explicit overrides from
//! command-line flags. Unknown keys are errors everywhere.
//!
//! This module holds the layering mechanics ([`ConfigSources`], the
//! [`Section`] trait, [`ConfigError`]) and the sections every process needs
//! (`[server]`, `[bus]`, `[log]`, `[ingest]`, `[auth]`, `[telemetry]`). A
//! domain crate keeps its own section beside the code it configures (e.g.
//! `riffle_ads::AdsConfig` for `[ads]`, with its defaults in its own
//! `default.toml`); the binary's composition root assembles the whole file
//! from the sections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The built-in defaults of the core sections, also the reference for
/// docs/configuration.md.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// One top-level table of the configuration file, owned by the crate it
/// configures.
pub trait Section: Serialize + DeserializeOwned {
    /// The table's key (`"ads"` for `[ads]`); error messages start with it.
    const KEY: &'static str;
    /// The built-in defaults: a TOML document holding the `[KEY]` table
    /// (it may hold other tables too).
    const DEFAULTS: &'static str;

    /// Checks the values, naming the key (`"ads.top_n: …"`) and the value
    /// in the error.
    fn validate(&self) -> Result<(), ConfigError>;

    /// The built-in defaults of this section alone.
    fn defaults() -> Self {
        Figment::from(Toml::string(Self::DEFAULTS))
            .extract_inner(Self::KEY)
            .unwrap_or_else(|e| panic!("built-in defaults of [{}] parse: {e}", Self::KEY))
    }
}

/// The sections every process has; the composition root embeds them.
macro_rules! core_section {
    ($ty:ty, $key:literal) => {
        impl Section for $ty {
            const KEY: &'static str = $key;
            const DEFAULTS: &'static str = DEFAULT_TOML;
            fn validate(&self) -> Result<(), ConfigError> {
                <$ty>::check(self)
            }
        }
    };
}
core_section!(ServerConfig, "server");
core_section!(BusConfig, "bus");
core_section!(LogConfig, "log");
core_section!(IngestConfig, "ingest");
core_section!(AuthConfig, "auth");
core_section!(TelemetryConfig, "telemetry");

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

    /// Parses a `--roles` value; the error message starts with `roles:`.
    pub fn parse(s: &str) -> Result<Role, ConfigError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "roles: {s:?} is not one of ingest, process, serve, datasets-publish, datasets-consume"
                ))
            })
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

    /// The message without the `configuration:` prefix.
    pub fn message(&self) -> &str {
        &self.0
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

/// Parses a standalone TOML document (a file other than the server's
/// configuration, e.g. feature definitions) into `T`; the error names the
/// key, the problem and `origin` (the file).
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::new(format!("{origin}: {e}")))
}

impl ConfigSources {
    /// Layers the sources over `defaults` (the built-in TOML documents of
    /// every section of `T`, merged in order) and deserializes `T`. Unknown
    /// keys are errors if `T` and its sections deny them. Validation is the
    /// caller's: it knows which sections `T` holds.
    pub fn load<T: DeserializeOwned>(&self, defaults: &[&str]) -> Result<T, ConfigError> {
        let mut figment = Figment::new();
        for text in defaults {
            figment = figment.merge(Toml::string(text));
        }
        if let Some(path) = &self.cwd_file {
            if path.exists() {
                figment = figment.merge(Toml::file_exact(path));
            }
        }
        for path in &self.files {
            if !path.exists() {
                return Err(ConfigError::new(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if self.use_env {
            figment = figment.merge(Env::prefixed("RIFFLE__").split("__").lowercase(true));
        }
        for (key, value) in &self.overrides {
            figment = figment.merge(Serialized::default(key, value.clone()));
        }
        figment
            .extract()
            .map_err(|e| ConfigError::new(e.to_string()))
    }
}

impl LogConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.segment_bytes < 4096 || self.segment_bytes > 1 << 30 {
            return Err(ConfigError::new(format!(
                "log.segment_bytes: {} is outside 4096..=1073741824 (1 GiB)",
                self.segment_bytes
            )));
        }
        if self.default_partitions == 0 {
            return Err(ConfigError::new(
                "log.default_partitions: must be at least 1",
            ));
        }
        Ok(())
    }
}

impl IngestConfig {
    fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("ingest.max_body_bytes", self.max_body_bytes),
            ("ingest.max_event_bytes", self.max_event_bytes),
            ("ingest.max_events_per_request", self.max_events_per_request),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!("{key}: must be at least 1")));
            }
        }
        // A body is admitted against the in-flight budget; a budget smaller
        // than one body would refuse such bodies with 429 forever.
        if self.max_inflight_bytes < self.max_body_bytes {
            return Err(ConfigError::new(format!(
                "ingest.max_inflight_bytes: {} is below ingest.max_body_bytes ({})",
                self.max_inflight_bytes, self.max_body_bytes
            )));
        }
        if self.topic_partitions == 0 {
            return Err(ConfigError::new(
                "ingest.topic_partitions: must be at least 1",
            ));
        }
        if let Err(reason) = validate_topic_name(&self.dead_letter_topic) {
            return Err(ConfigError::new(format!(
                "ingest.dead_letter_topic: {reason}"
            )));
        }
        for (event_type, topic) in &self.routes {
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
            if !self.routes.contains_key(event_type.as_str()) {
                return Err(ConfigError::new(format!(
                    "ingest.routes: no route for event type \"{}\"",
                    event_type.as_str()
                )));
            }
        }
        Ok(())
    }
}

impl BusConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.kind != BusKind::Kafka {
            return Ok(());
        }
        let kafka = &self.kafka;
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
        Ok(())
    }
}

impl ServerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.roles.is_empty() {
            return Err(ConfigError::new(
                "server.roles: at least one role is required",
            ));
        }
        if self.tls.enabled
            && (self.tls.cert_path.as_os_str().is_empty()
                || self.tls.key_path.as_os_str().is_empty())
        {
            return Err(ConfigError::new(
                "server.tls: cert_path and key_path are required when enabled",
            ));
        }
        Ok(())
    }

    /// Where `riffle serve` keeps the generated admin token.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

impl AuthConfig {
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl TelemetryConfig {
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Topic names: 1–200 bytes of `[A-Za-z0-9._-]`, not starting with `.`
/// (they are directory names on disk and path segments in the HTTP API).
pub fn validate_topic_name(name: &str) -> Result<(), crate::InvalidValue> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("topic name \"{name}\" must be 1 to 200 characters").into());
    }
    // Names starting with '.' are reserved for the log's staging and
    // deletion directories.
    if name.starts_with('.') {
        return Err(format!("topic name \"{name}\" must not start with '.'").into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name \"{name}\" has invalid character {bad:?} (allowed: A-Z a-z 0-9 . _ -)"
        )
        .into());
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
    fn core_defaults_parse() {
        assert_eq!(ServerConfig::defaults().http_addr, "127.0.0.1:8080");
        assert_eq!(IngestConfig::defaults().routes["ad_click"], "ad_clicks");
        assert_eq!(LogConfig::defaults().fsync, FsyncPolicy::Group);
        for result in [
            ServerConfig::defaults().validate(),
            BusConfig::defaults().validate(),
            LogConfig::defaults().validate(),
            IngestConfig::defaults().validate(),
        ] {
            result.expect("defaults are valid");
        }
    }

    #[test]
    fn ingest_limits_that_would_refuse_everything_are_rejected() {
        let mut ingest = IngestConfig::defaults();
        ingest.max_inflight_bytes = 1024;
        let err = ingest.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.max_inflight_bytes: 1024 is below"),
            "{err}"
        );
        let mut ingest = IngestConfig::defaults();
        ingest.max_events_per_request = 0;
        let err = ingest.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.max_events_per_request: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn roles_are_validated_naming_the_key() {
        let mut server = ServerConfig::defaults();
        server.roles.clear();
        assert!(server
            .validate()
            .unwrap_err()
            .to_string()
            .contains("server.roles:"));
        assert_eq!(
            Role::parse("datasets-consume").unwrap(),
            Role::DatasetsConsume
        );
        assert!(Role::parse("everything")
            .unwrap_err()
            .to_string()
            .contains("\"everything\""));
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic_name("ad_clicks").is_ok());
        assert!(validate_topic_name("a/b")
            .unwrap_err()
            .message()
            .contains("'/'"));
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(".hidden").is_err());
        assert!(validate_topic_name("a.b").is_ok());
        assert!(validate_topic_name("").is_err());
    }
}
