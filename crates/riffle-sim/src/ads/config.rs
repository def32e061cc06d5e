//! [`AdsConfig`]: what the ad traffic generator produces.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Most ads the generator supports (ids `ad-0000001` … `ad-2000000`).
pub const MAX_ADS: u32 = 2_000_000;
/// The tumbling window of the ground truth: one minute.
pub const WINDOW_MS: i64 = 60_000;
/// 2024-05-01T12:00:00Z, the default first event time.
pub const DEFAULT_START_MS: i64 = 1_714_564_800_000;
/// Default bounded out-of-orderness of the watermark (`ads.out_of_orderness_ms`).
pub const DEFAULT_OUT_OF_ORDERNESS_MS: i64 = 15_000;
/// Default allowed lateness (`ads.allowed_lateness_ms`).
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 300_000;
/// Default extra distance of "late beyond" events behind the lateness limit:
/// one window, so that they are too late for a per-window lateness rule too.
pub const DEFAULT_LATE_BEYOND_MARGIN_MS: i64 = WINDOW_MS;

/// A country and its relative share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryWeight {
    /// The `country` field value, e.g. `USA`: 1–16 ASCII letters or digits.
    pub code: String,
    /// Relative weight, > 0.
    pub weight: u32,
}

/// Configuration of [`super::AdsGenerator`]. Every field has a default, so
/// a JSON/TOML object needs only the fields it changes; unknown fields are
/// rejected. Call [`AdsConfig::validate`] (the generator does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdsConfig {
    /// Seed of the random generator: the same config gives the same events.
    pub seed: u64,
    /// Number of distinct ads, 1..=2,000,000; ids `ad-0000001` (the most
    /// popular) … `ad-{ads:07}`.
    pub ads: u32,
    /// Zipf exponent of ad popularity (ad of rank k has weight k^-s);
    /// 0 is uniform. Default 1.1.
    pub zipf_exponent: f64,
    /// Number of distinct users (`u-1` … `u-{users}`), drawn uniformly.
    pub users: u32,
    /// Number of distinct IPv4 addresses, spread over `ip_ranges`, drawn
    /// uniformly; at most the number of addresses in the ranges.
    pub ips: u32,
    /// CIDR ranges the addresses come from (round-robin), so that CIDR
    /// filters have something to match. Default: five /16 ranges.
    pub ip_ranges: Vec<String>,
    /// Countries with relative weights.
    pub countries: Vec<CountryWeight>,
    /// Event time of the first event, epoch ms.
    pub start_ms: i64,
    /// Events per second of event time: event `i` (0-based, in emission
    /// order) arrives at `start_ms + floor(i * 1000 / rate)`.
    pub rate: f64,
    /// Number of events to emit (all categories, duplicates included).
    /// Neither `count` nor `duration_ms`: unbounded.
    pub count: Option<u64>,
    /// Emit events while the arrival clock is before `start_ms + duration_ms`.
    pub duration_ms: Option<u64>,
    /// Share of events that repeat a recent event (same `event_id`, same fields).
    pub duplicate_fraction: f64,
    /// Share of fresh events whose time lies up to `max_out_of_order_ms`
    /// before the maximum event time seen (not late).
    pub out_of_order_fraction: f64,
    /// Largest lag of an out-of-order event, 1..=out_of_orderness_ms. Default 15 s.
    pub max_out_of_order_ms: i64,
    /// Share of events that are late but within the allowed lateness.
    pub late_within_fraction: f64,
    /// Share of events that are late beyond the allowed lateness.
    pub late_beyond_fraction: f64,
    /// Bounded out-of-orderness of the watermark the categories refer to. Default 15 s.
    pub out_of_orderness_ms: i64,
    /// Allowed lateness the categories refer to. Default 5 min.
    pub allowed_lateness_ms: i64,
    /// How much further than the allowed lateness "late beyond" events lie.
    /// Default one window (60 s); raise it by the expected skew between
    /// partition watermarks when a pipeline tracks them per partition.
    pub late_beyond_margin_ms: i64,
    /// No faults (of any kind) while the arrival clock is before
    /// `start_ms + warmup_ms`. Default 0.
    pub warmup_ms: i64,
    /// Prefix of event ids; the id is the prefix followed by a sequence
    /// number. Default `clk-{seed}-`. ASCII letters, digits and `-_.:`.
    pub id_prefix: Option<String>,
}

impl Default for AdsConfig {
    fn default() -> Self {
        AdsConfig {
            seed: 0,
            ads: 10_000,
            zipf_exponent: 1.1,
            users: 100_000,
            ips: 50_000,
            ip_ranges: [
                "73.162.0.0/16",
                "84.132.0.0/16",
                "121.134.0.0/16",
                "177.64.0.0/16",
                "49.36.0.0/16",
            ]
            .map(String::from)
            .to_vec(),
            countries: [
                ("USA", 30),
                ("IND", 15),
                ("BRA", 10),
                ("DEU", 10),
                ("KOR", 10),
                ("GBR", 8),
                ("JPN", 7),
                ("FRA", 5),
                ("CAN", 5),
            ]
            .map(|(code, weight)| CountryWeight {
                code: code.to_string(),
                weight,
            })
            .to_vec(),
            start_ms: DEFAULT_START_MS,
            rate: 10_000.0,
            count: None,
            duration_ms: None,
            duplicate_fraction: 0.0,
            out_of_order_fraction: 0.0,
            max_out_of_order_ms: DEFAULT_OUT_OF_ORDERNESS_MS,
            late_within_fraction: 0.0,
            late_beyond_fraction: 0.0,
            out_of_orderness_ms: DEFAULT_OUT_OF_ORDERNESS_MS,
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
            late_beyond_margin_ms: DEFAULT_LATE_BEYOND_MARGIN_MS,
            warmup_ms: 0,
            id_prefix: None,
        }
    }
}

/// A configuration value that cannot work; the message names the field and
/// quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

/// A parsed CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub base: u32,
    pub size: u64,
}

pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR range like \"81.2.0.0/16\""))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (8..=32).contains(l))
        .ok_or_else(|| format!("{s:?}: prefix length must be 8..=32"))?;
    let base = u32::from(addr);
    let host_bits = 32 - len;
    if host_bits > 0 && base & ((1u32 << host_bits) - 1) != 0 {
        return Err(format!("{s:?}: host bits must be zero"));
    }
    Ok(Cidr {
        base,
        size: 1u64 << host_bits,
    })
}

impl AdsConfig {
    /// The event id prefix in effect.
    pub fn effective_id_prefix(&self) -> String {
        self.id_prefix
            .clone()
            .unwrap_or_else(|| format!("clk-{}-", self.seed))
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ads == 0 || self.ads > MAX_ADS {
            return Err(invalid(
                "ads",
                format!("{} is out of range 1..={MAX_ADS}", self.ads),
            ));
        }
        if !(self.zipf_exponent.is_finite() && (0.0..=10.0).contains(&self.zipf_exponent)) {
            return Err(invalid(
                "zipf_exponent",
                format!("{} is out of range 0..=10", self.zipf_exponent),
            ));
        }
        if self.users == 0 {
            return Err(invalid("users", "0 must be at least 1"));
        }
        if self.ip_ranges.is_empty() {
            return Err(invalid("ip_ranges", "[] must list at least one range"));
        }
        let mut addresses = 0u64;
        for range in &self.ip_ranges {
            addresses += parse_cidr(range).map_err(|m| invalid("ip_ranges", m))?.size;
        }
        if self.ips == 0 || self.ips as u64 > addresses {
            return Err(invalid(
                "ips",
                format!(
                    "{} is out of range 1..={} (the addresses in ip_ranges)",
                    self.ips, addresses
                ),
            ));
        }
        if self.countries.is_empty() {
            return Err(invalid("countries", "[] must list at least one country"));
        }
        for c in &self.countries {
            if c.code.is_empty()
                || c.code.len() > 16
                || !c.code.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(invalid(
                    "countries",
                    format!("code {:?} must be 1-16 ASCII letters or digits", c.code),
                ));
            }
            if c.weight == 0 {
                return Err(invalid(
                    "countries",
                    format!("weight of {:?} is 0, must be at least 1", c.code),
                ));
            }
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1e9) {
            return Err(invalid(
                "rate",
                format!("{} must be > 0 and <= 1e9 events/s", self.rate),
            ));
        }
        if let (Some(count), Some(duration_ms)) = (self.count, self.duration_ms) {
            return Err(invalid(
                "count",
                format!(
                    "{count} given together with duration_ms {duration_ms}: set one or the other"
                ),
            ));
        }
        for (field, value) in [
            ("duplicate_fraction", self.duplicate_fraction),
            ("out_of_order_fraction", self.out_of_order_fraction),
            ("late_within_fraction", self.late_within_fraction),
            ("late_beyond_fraction", self.late_beyond_fraction),
        ] {
            if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
                return Err(invalid(field, format!("{value} is out of range 0..=1")));
            }
        }
        let sum = self.duplicate_fraction
            + self.out_of_order_fraction
            + self.late_within_fraction
            + self.late_beyond_fraction;
        if sum > 1.0 {
            return Err(invalid(
                "duplicate_fraction",
                format!(
                    "duplicate_fraction + out_of_order_fraction + late_within_fraction + \
                     late_beyond_fraction = {sum} exceeds 1"
                ),
            ));
        }
        if self.out_of_orderness_ms < 0 {
            return Err(invalid(
                "out_of_orderness_ms",
                format!("{} must not be negative", self.out_of_orderness_ms),
            ));
        }
        if self.out_of_order_fraction > 0.0
            && !(1..=self.out_of_orderness_ms).contains(&self.max_out_of_order_ms)
        {
            return Err(invalid(
                "max_out_of_order_ms",
                format!(
                    "{} is out of range 1..={} (out_of_orderness_ms)",
                    self.max_out_of_order_ms, self.out_of_orderness_ms
                ),
            ));
        }
        if self.allowed_lateness_ms < 0 {
            return Err(invalid(
                "allowed_lateness_ms",
                format!("{} must not be negative", self.allowed_lateness_ms),
            ));
        }
        if self.late_within_fraction > 0.0 && self.allowed_lateness_ms <= WINDOW_MS {
            return Err(invalid(
                "allowed_lateness_ms",
                format!(
                    "{} must exceed the {WINDOW_MS} ms window when late_within_fraction > 0 \
                     (no time would be both in a closed window and within the lateness)",
                    self.allowed_lateness_ms
                ),
            ));
        }
        if self.late_beyond_margin_ms < WINDOW_MS {
            return Err(invalid(
                "late_beyond_margin_ms",
                format!(
                    "{} must be at least the {WINDOW_MS} ms window",
                    self.late_beyond_margin_ms
                ),
            ));
        }
        if self.warmup_ms < 0 {
            return Err(invalid(
                "warmup_ms",
                format!("{} must not be negative", self.warmup_ms),
            ));
        }
        // The oldest time any event can get must stay >= 0.
        let reach = self.out_of_orderness_ms as i128
            + self.allowed_lateness_ms as i128
            + self.late_beyond_margin_ms as i128
            + WINDOW_MS as i128;
        if self.start_ms < 0 || (self.start_ms as i128) < reach {
            return Err(invalid(
                "start_ms",
                format!(
                    "{} must be at least {reach} (out_of_orderness_ms + allowed_lateness_ms + \
                     late_beyond_margin_ms + one window) so late events keep non-negative times",
                    self.start_ms
                ),
            ));
        }
        if self.start_ms > i64::MAX / 4 {
            return Err(invalid(
                "start_ms",
                format!("{} is too large", self.start_ms),
            ));
        }
        if let Some(prefix) = &self.id_prefix {
            if prefix.len() > 100
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return Err(invalid(
                    "id_prefix",
                    format!("{prefix:?} must be at most 100 ASCII letters, digits or -_.:"),
                ));
            }
        }
        Ok(())
    }
}
