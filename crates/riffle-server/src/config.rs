//! The whole `riffle serve` configuration: riffle-core's sections every
//! process has, plus one section per domain crate, each defined (with its
//! defaults and validation) beside the code it configures.
//!
//! Adding a pipeline's section: define `FooConfig` in its crate, implement
//! [`Section`] with a `default.toml` beside it, add the field here and its
//! defaults to [`Config::DEFAULTS`] and [`Config::validate`].

use riffle_ads::AdsConfig;
use riffle_core::config::{
    AuthConfig, BusConfig, ConfigError, ConfigSources, IngestConfig, LogConfig, Section,
    ServerConfig, TelemetryConfig, DEFAULT_TOML,
};
use riffle_datasets::DatasetsConfig;
use serde::{Deserialize, Serialize};

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

impl Config {
    /// The built-in defaults of every section, merged in this order.
    pub const DEFAULTS: [&'static str; 3] =
        [DEFAULT_TOML, AdsConfig::DEFAULTS, DatasetsConfig::DEFAULTS];

    pub fn defaults() -> Config {
        Config::load(&ConfigSources::default()).expect("built-in defaults parse")
    }

    /// Layers the sources over the built-in defaults and validates every
    /// section.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let config: Config = sources.load(&Config::DEFAULTS)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section; the first problem is returned (sections in the
    /// order they were always checked: log, ingest, bus, ads, datasets,
    /// server).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log.validate()?;
        self.ingest.validate()?;
        self.bus.validate()?;
        self.ads.validate()?;
        self.datasets.validate()?;
        self.server.validate()?;
        self.auth.validate()?;
        self.telemetry.validate()
    }

    pub fn admin_token_path(&self) -> std::path::PathBuf {
        self.server.admin_token_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_core::config::{FsyncPolicy, LogFormat, Role};

    #[test]
    fn defaults_parse_and_route_every_type() {
        let config = Config::defaults();
        assert_eq!(config.server.http_addr, "127.0.0.1:8080");
        assert_eq!(config.ingest.routes["ad_click"], "ad_clicks");
        assert_eq!(config.log.fsync, FsyncPolicy::Group);
        assert_eq!(config.ads, AdsConfig::defaults());
        assert_eq!(config.datasets, DatasetsConfig::defaults());
    }

    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(name).tempdir().unwrap()
    }

    #[test]
    fn unknown_keys_are_rejected_in_core_and_domain_sections() {
        let dir = scratch("riffle-cfg");
        for (text, key) in [
            ("[log]\nsegmnet_bytes = 5\n", "segmnet_bytes"),
            ("[ads]\ntop_m = 5\n", "top_m"),
            ("[datasets]\nmax_waits_ms = 5\n", "max_waits_ms"),
            ("[adz]\ntop_n = 5\n", "adz"),
        ] {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&ConfigSources {
                files: vec![file],
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = scratch("riffle-cfg");
        let cwd = dir.path().join("riffle.toml");
        std::fs::write(
            &cwd,
            "[log]\ndefault_partitions = 7\nsegment_bytes = 8192\n[ads]\ntop_n = 50\n",
        )
        .unwrap();
        let extra = dir.path().join("extra.toml");
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
        assert_eq!(config.ads.top_n, 50);
        assert_eq!(
            config.ads.input_topic, "ad_clicks",
            "unset keys keep defaults"
        );
        assert_eq!(config.server.http_addr, "127.0.0.1:9999");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = scratch("riffle-cfg");
        for (text, needle) in [
            ("[ingest.routes]\nad_klick = \"x\"\n", "ad_klick"),
            ("[ads]\ntop_n = 0\n", "ads.top_n: 0"),
            (
                "[datasets]\ncache_refresh_ms = 5000\n",
                "datasets.cache_refresh_ms: 5000",
            ),
        ] {
            let file = dir.path().join("r.toml");
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&ConfigSources {
                files: vec![file],
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

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
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn environment_overrides_files() {
        // Env layering is exercised through figment's Jail so the process
        // environment of other tests is untouched.
        figment::Jail::expect_with(|jail| {
            jail.set_env("RIFFLE__LOG__FSYNC", "always");
            jail.set_env("RIFFLE__SERVER__HTTP_ADDR", "127.0.0.1:9000");
            jail.set_env("RIFFLE__ADS__TOP_N", "20");
            let config = Config::load(&ConfigSources {
                use_env: true,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            assert_eq!(config.log.fsync, FsyncPolicy::Always);
            assert_eq!(config.server.http_addr, "127.0.0.1:9000");
            assert_eq!(config.ads.top_n, 20);
            Ok(())
        });
    }
}
