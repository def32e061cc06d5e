//! The ad click oracle shared by the end-to-end tests: generated traffic
//! (riffle_sim) with its ground truth, a brute-force recount of filtered
//! counts and top-N rows, and a reader of a stopped server's aggregate store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use reqwest::StatusCode;
use riffle_ads::{rank_cmp, AggKey, AggregateStore, RedbAggregateStore};
use riffle_sim::ads::{AdsConfig as SimConfig, AdsGenerator, Category, GroundTruth};
use serde_json::Value;

use crate::{now_ms, Server};

pub const MINUTE: i64 = 60_000;
/// The server's defaults (`[ads]` in riffle-ads/src/default.toml) the generator is tuned to.
pub const OUT_OF_ORDERNESS: i64 = 15_000;
pub const ALLOWED_LATENESS: i64 = 300_000;

pub fn rfc3339(ms: i64) -> String {
    riffle_core::time::format_rfc3339_ms(ms)
}

pub fn minute_of(t: i64) -> i64 {
    t.div_euclid(MINUTE) * MINUTE
}

// ------------------------------------------------------------------ traffic

/// One generated click, rendered.
pub struct Click {
    pub ad_id: String,
    pub minute: i64,
    pub user_id: String,
    pub ip: Ipv4Addr,
    pub country: String,
    pub category: Category,
}

impl Click {
    /// Counted by a correct pipeline: not a duplicate, not beyond the
    /// allowed lateness.
    pub fn counted(&self) -> bool {
        !matches!(self.category, Category::Duplicate | Category::LateBeyond)
    }
}

/// Generated traffic split into the NDJSON bodies the client POSTs, with the
/// simulator's ground truth.
pub struct Traffic {
    pub clicks: Vec<Click>,
    pub chunks: Vec<String>,
    pub chunk_len: Vec<usize>,
    /// Every event as one JSON line, in generation order.
    pub lines: Vec<String>,
    pub truth: GroundTruth,
    /// `[first_minute, end_minute)` holds every counted click.
    pub first_minute: i64,
    pub end_minute: i64,
}

/// Starts 40 minutes ago (minute-aligned): historical, so every range is
/// final long before the test ends, yet well inside every retention.
pub fn historical_start() -> i64 {
    minute_of(now_ms()) - 40 * MINUTE
}

/// Traffic per the assumption in `riffle_sim::ads`: the pipeline keeps one
/// watermark per input partition (4), which trails the single-stream
/// watermark of the truth by the time since the partition's last on-time
/// event; a 3-minute late-beyond margin tolerates 2 minutes of that, and the
/// 30 s warm-up lets every partition see events before the first fault.
pub fn traffic(seed: u64, rate: f64, duration_ms: u64, start_ms: i64, chunks: usize) -> Traffic {
    traffic_of(sim_config(seed, rate, duration_ms, start_ms), chunks)
}

/// Traffic with duplicates and a little disorder but no late clicks, over
/// less event time than the allowed lateness: every click counts, whatever
/// order a pipeline sees them in (e.g. forwarded from another partition
/// after a delay).
pub fn on_time_traffic(
    seed: u64,
    rate: f64,
    duration_ms: u64,
    start_ms: i64,
    chunks: usize,
) -> Traffic {
    assert!(duration_ms as i64 + 2 * MINUTE <= ALLOWED_LATENESS);
    let config = SimConfig {
        late_within_fraction: 0.0,
        late_beyond_fraction: 0.0,
        ..sim_config(seed, rate, duration_ms, start_ms)
    };
    traffic_of(config, chunks)
}

fn sim_config(seed: u64, rate: f64, duration_ms: u64, start_ms: i64) -> SimConfig {
    SimConfig {
        seed,
        ads: 300,
        users: 5_000,
        ips: 2_000,
        start_ms,
        rate,
        duration_ms: Some(duration_ms),
        duplicate_fraction: 0.06,
        out_of_order_fraction: 0.05,
        late_within_fraction: 0.03,
        late_beyond_fraction: 0.02,
        out_of_orderness_ms: OUT_OF_ORDERNESS,
        allowed_lateness_ms: ALLOWED_LATENESS,
        late_beyond_margin_ms: 3 * MINUTE,
        warmup_ms: 30_000,
        ..SimConfig::default()
    }
}

/// Renders the generator's events (see [`traffic`]).
pub fn traffic_of(config: SimConfig, chunks: usize) -> Traffic {
    let mut generator = AdsGenerator::new(config).expect("valid generator config");
    let mut lines = Vec::new();
    let mut clicks = Vec::new();
    while let Some(event) = generator.next_event() {
        lines.push(generator.to_json(&event));
        clicks.push(Click {
            ad_id: riffle_sim::ads::ad_id(event.ad),
            minute: minute_of(event.event_time_ms),
            user_id: format!("u-{}", event.user),
            ip: event.ip,
            country: generator.country(&event).to_string(),
            category: event.category,
        });
    }
    let truth = generator.truth().expect("truth is tracked");
    let per_chunk = lines.len().div_ceil(chunks);
    let chunk_len = lines.chunks(per_chunk).map(<[String]>::len).collect();
    let chunks = lines.chunks(per_chunk).map(|c| c.join("\n")).collect();
    let lines_kept = lines.clone();
    let counted_minutes = || clicks.iter().filter(|c| c.counted()).map(|c| c.minute);
    let first_minute = counted_minutes().min().expect("some clicks");
    let end_minute = counted_minutes().max().expect("some clicks") + MINUTE;
    Traffic {
        chunks,
        chunk_len,
        lines: lines_kept,
        truth,
        first_minute,
        end_minute,
        clicks,
    }
}

impl Traffic {
    pub fn events(&self) -> usize {
        self.clicks.len()
    }

    /// Asserts that the traffic has every kind of fault the tests rely on.
    pub fn assert_shape(&self, min_span_minutes: i64) {
        let c = self.truth.summary.by_category;
        let total = c.total();
        assert!(c.duplicate * 100 >= total * 5, "duplicates below 5%: {c:?}");
        assert!(
            c.out_of_order > 0 && c.late_within > 0 && c.late_beyond > 0,
            "{c:?}"
        );
        let ads: BTreeSet<&str> = self.clicks.iter().map(|c| c.ad_id.as_str()).collect();
        assert!(ads.len() >= 200, "only {} distinct ads", ads.len());
        assert!(
            self.end_minute - self.first_minute >= min_span_minutes * MINUTE,
            "event time spans only {} minutes",
            (self.end_minute - self.first_minute) / MINUTE
        );
    }
}

// ------------------------------------------------------- filters and oracle

/// A configured filter as `GET /v1/ads/filters` lists it.
pub struct FilterDef {
    pub id: u32,
    pub countries: Vec<String>,
    /// (network, prefix length).
    pub cidrs: Vec<(u32, u32)>,
    pub users: Vec<String>,
}

impl FilterDef {
    pub fn matches(&self, click: &Click) -> bool {
        let ip = u32::from(click.ip);
        (self.countries.is_empty() || self.countries.contains(&click.country))
            && (self.users.is_empty() || self.users.contains(&click.user_id))
            && (self.cidrs.is_empty()
                || self
                    .cidrs
                    .iter()
                    .any(|&(net, len)| len == 0 || (ip >> (32 - len)) == (net >> (32 - len))))
    }
}

/// What the pipeline is configured with, read from `GET /v1/ads/filters`.
pub struct AdsSetup {
    pub filters: Vec<FilterDef>,
    /// (window_minutes, filter_id).
    pub popular: Vec<(u32, u32)>,
    pub top_n: usize,
}

pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

pub async fn ads_setup(server: &Server) -> AdsSetup {
    let (status, body) = server.get_json("/v1/ads/filters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let filters = body["filters"]
        .as_array()
        .expect("filters")
        .iter()
        .map(|f| FilterDef {
            id: f["id"].as_u64().expect("id") as u32,
            countries: strings(&f["country"]),
            cidrs: strings(&f["ip"])
                .iter()
                .map(|cidr| {
                    let (net, len) = cidr.split_once('/').expect("CIDR");
                    (
                        u32::from(net.parse::<Ipv4Addr>().expect("IPv4")),
                        len.parse().expect("prefix length"),
                    )
                })
                .collect(),
            users: strings(&f["user_id"]),
        })
        .collect();
    let popular = body["popular"]
        .as_array()
        .expect("popular")
        .iter()
        .map(|p| {
            (
                p["window_minutes"].as_u64().unwrap() as u32,
                p["filter_id"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    AdsSetup {
        filters,
        popular,
        top_n: body["top_n"].as_u64().expect("top_n") as usize,
    }
}

/// (window_minutes, filter_id, window_end_ms) → (ad_ids, counts).
pub type Tops = BTreeMap<(u32, u32, i64), (Vec<String>, Vec<u64>)>;

/// The exact results, recounted by brute force from the generated clicks.
pub struct Expected {
    pub rows: BTreeMap<AggKey, u64>,
    pub tops: Tops,
}

pub fn expected(traffic: &Traffic, setup: &AdsSetup) -> Expected {
    let mut rows: BTreeMap<AggKey, u64> = BTreeMap::new();
    for click in traffic.clicks.iter().filter(|c| c.counted()) {
        *rows
            .entry(AggKey::new(click.minute, click.ad_id.clone(), 0))
            .or_default() += 1;
        for filter in setup.filters.iter().filter(|f| f.matches(click)) {
            *rows
                .entry(AggKey::new(click.minute, click.ad_id.clone(), filter.id))
                .or_default() += 1;
        }
    }
    // The oracle's unfiltered counts are the simulator's truth.
    let unfiltered: BTreeMap<(String, i64), u64> = rows
        .iter()
        .filter(|(k, _)| k.filter_id == 0)
        .map(|(k, c)| ((k.ad_id.clone(), k.minute_start_ms), *c))
        .collect();
    assert!(
        unfiltered == traffic.truth.counts,
        "brute-force unfiltered counts differ from the simulator's truth"
    );
    let mut tops = Tops::new();
    for &(window, filter_id) in &setup.popular {
        let span = window as i64 * MINUTE;
        let mut end = traffic.first_minute + MINUTE;
        while end <= traffic.end_minute - MINUTE + span {
            let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
            for (key, count) in rows.range(AggKey::new(end - span, "", 0)..AggKey::new(end, "", 0))
            {
                if key.filter_id == filter_id {
                    *sums.entry(key.ad_id.as_str()).or_default() += count;
                }
            }
            if !sums.is_empty() {
                let mut ranked: Vec<(u64, &str)> = sums.into_iter().map(|(a, c)| (c, a)).collect();
                ranked.sort_by(|a, b| rank_cmp(*a, *b));
                ranked.truncate(setup.top_n);
                tops.insert(
                    (window, filter_id, end),
                    (
                        ranked.iter().map(|(_, a)| a.to_string()).collect(),
                        ranked.iter().map(|(c, _)| *c).collect(),
                    ),
                );
            }
            end += MINUTE;
        }
    }
    Expected { rows, tops }
}

// ------------------------------------------------------------- the store

/// What a stopped server left in `<data-dir>/ads/aggregates.redb`.
#[derive(PartialEq)]
pub struct StoreContents {
    pub rows: BTreeMap<AggKey, u64>,
    pub tops: Tops,
}

pub fn store_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("ads").join("aggregates.redb")
}

/// Reads every count row and every top row of `setup.popular` around
/// `[first_minute, end_minute)`. Only while the server is stopped.
pub fn read_store(data_dir: &Path, traffic: &Traffic, setup: &AdsSetup) -> StoreContents {
    let store = RedbAggregateStore::open(store_path(data_dir)).expect("open the aggregate store");
    read_store_of(&store, traffic, setup)
}

/// [`read_store`] of an open store.
pub fn read_store_of(
    store: &RedbAggregateStore,
    traffic: &Traffic,
    setup: &AdsSetup,
) -> StoreContents {
    let (from, to) = (
        traffic.first_minute - 60 * MINUTE,
        traffic.end_minute + 60 * MINUTE,
    );
    let rows = store
        .scan(from, to, None)
        .expect("scan")
        .into_iter()
        .map(|row| (row.key, row.count))
        .collect();
    let mut tops = Tops::new();
    for &(window, filter_id) in &setup.popular {
        let mut end = from;
        while end <= to {
            if let Some(top) = store.top(window, filter_id, end).expect("top") {
                tops.insert((window, filter_id, end), (top.ad_ids, top.counts));
            }
            end += MINUTE;
        }
    }
    StoreContents { rows, tops }
}

/// Asserts two maps are equal, printing the first differences (not both
/// maps) when they are not.
#[track_caller]
pub fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) {
    if actual == expected {
        return;
    }
    let mut differences = Vec::new();
    for (key, value) in actual {
        match expected.get(key) {
            Some(e) if e == value => {}
            other => differences.push(format!("{key:?}: actual {value:?}, expected {other:?}")),
        }
    }
    for (key, value) in expected {
        if !actual.contains_key(key) {
            differences.push(format!("{key:?}: actual None, expected {value:?}"));
        }
    }
    panic!(
        "{what}: {} differences ({} actual entries, {} expected), e.g.:\n{}",
        differences.len(),
        actual.len(),
        expected.len(),
        differences[..differences.len().min(10)].join("\n")
    );
}

/// POSTs one chunk and asserts every event was accepted.
pub async fn post_chunk(server: &Server, body: &str, len: usize) {
    let (status, response) = server
        .post_events("application/x-ndjson", body.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(
        response,
        serde_json::json!({"accepted": len, "rejected": []})
    );
}
