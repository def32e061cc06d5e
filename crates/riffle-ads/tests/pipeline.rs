//! Oracle test of the ad click pipeline: generated traffic (duplicates,
//! out-of-order, late within and beyond the allowed lateness) is appended to
//! an embedded log the way ingest does it, the real [`AdsPipeline`] (one task
//! per partition, aggregates topic, aggregate writer, store) runs over it,
//! and what users can read afterwards — every (minute, ad, filter) count,
//! every maintained top-N window, the late topic and the pipeline report —
//! must equal a brute-force oracle computed here from the generated events.
//!
//! The oracle re-derives the operator's rules independently (per partition,
//! in input order: watermark = max event time seen − out-of-orderness; a
//! click whose minute ended `allowed_lateness` or more before it is too late;
//! the first click of an `event_id` counts, later ones are duplicates) and is
//! itself checked against the simulator's [`GroundTruth`], so a setup whose
//! partition watermarks could misclassify an event fails loudly instead of
//! silently testing something else.
//!
//! Three ways, as STYLE.md asks: straight through (in-memory and redb
//! stores, checkpoints every 200 ms) and interrupted — a clean shutdown
//! mid-stream, then a kill with the newest checkpoint older than the
//! committed output, each followed by a restart on the same log, store and
//! checkpoint directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use riffle_ads::{AdFilterConfig, AdsConfig, PopularConfig};
use riffle_ads::{
    AdsPipeline, AggregateStore, MemoryAggregateStore, PipelineReport, RedbAggregateStore, TopRow,
    MINUTE_MS,
};
use riffle_core::config::Section;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::SystemClock;
use riffle_log::{partition_for_key, EmbeddedLog, EventBus, LogOptions, RecordBatch, TopicConfig};
use riffle_sim::ads::{ad_id, AdsConfig as TrafficConfig, AdsGenerator, Category, GroundTruth};
use riffle_stream::{CheckpointStore, FsCheckpointStore};
use tokio::sync::watch;
use tokio::time::Instant;

const PARTITIONS: u32 = 4;
const INPUT: &str = "ad_clicks";
const AGGREGATES: &str = "ad_click_aggregates";
const LATE: &str = "ads.late";
const PIPELINE: &str = "ads";
const OUT_OF_ORDERNESS_MS: i64 = 15_000;
const ALLOWED_LATENESS_MS: i64 = 300_000;
const TOP_N: u32 = 5;
/// Events appended per round while the pipeline runs.
const CHUNK: usize = 2_000;
/// How long the pipeline may take to catch up before the test fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------

/// One generated click, with what the oracle needs in plain form.
struct Click {
    json: Vec<u8>,
    event_id: String,
    ad_id: String,
    time: i64,
    country: String,
    ip: Ipv4Addr,
    user_id: String,
    partition: u32,
}

struct Traffic {
    clicks: Vec<Click>,
    truth: GroundTruth,
}

fn traffic() -> Traffic {
    let config = TrafficConfig {
        seed: 20_240_501,
        ads: 300,
        users: 2_000,
        ips: 5_000,
        rate: 40.0,
        duration_ms: Some(18 * 60_000),
        duplicate_fraction: 0.06,
        out_of_order_fraction: 0.10,
        late_within_fraction: 0.03,
        late_beyond_fraction: 0.02,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        allowed_lateness_ms: ALLOWED_LATENESS_MS,
        // Far more than the skew between partition watermarks (a few events'
        // spacing), so per-partition classification agrees with the truth.
        late_beyond_margin_ms: 180_000,
        warmup_ms: 30_000,
        ..TrafficConfig::default()
    };
    let mut generator = AdsGenerator::new(config).expect("valid traffic config");
    let mut clicks = Vec::new();
    while let Some(event) = generator.next_event() {
        let ad = ad_id(event.ad);
        clicks.push(Click {
            json: generator.to_json(&event).into_bytes(),
            event_id: generator.event_id(&event),
            partition: partition_for_key(ad.as_bytes(), PARTITIONS),
            ad_id: ad,
            time: event.event_time_ms,
            country: generator.country(&event).to_string(),
            ip: event.ip,
            user_id: format!("u-{}", event.user),
        });
    }
    let truth = generator.truth().expect("truth is tracked");
    let by = truth.summary.by_category;
    let total = by.total() as f64;
    assert!(by.total() > 30_000, "{by:?}");
    assert!(by.duplicate as f64 >= 0.05 * total, "{by:?}");
    for category in [
        Category::OutOfOrder,
        Category::LateWithin,
        Category::LateBeyond,
    ] {
        assert!(by.get(category) > 100, "too few {category:?}: {by:?}");
    }
    Traffic { clicks, truth }
}

// ---------------------------------------------------------------------------
// Pipeline configuration
// ---------------------------------------------------------------------------

fn filter(id: u32, name: &str, country: &[&str], ip: &[&str], users: &[String]) -> AdFilterConfig {
    AdFilterConfig {
        id,
        name: name.into(),
        country: country.iter().map(|s| s.to_string()).collect(),
        ip: ip.iter().map(|s| s.to_string()).collect(),
        user_id: users.to_vec(),
    }
}

fn pipeline_config() -> AdsConfig {
    let mut config = AdsConfig::defaults();
    assert_eq!(
        (config.pipeline.as_str(), config.input_topic.as_str()),
        (PIPELINE, INPUT)
    );
    assert_eq!(config.aggregates_topic, AGGREGATES);
    assert_eq!(config.late_topic(), LATE);
    config.emit_interval_ms = 20;
    config.checkpoint_interval_ms = 200;
    config.out_of_orderness_ms = OUT_OF_ORDERNESS_MS;
    config.allowed_lateness_ms = ALLOWED_LATENESS_MS;
    // The generated event times are in 2024; retention is by wall clock.
    config.retention_ms = 20 * 365 * 24 * 3_600_000;
    config.top_n = TOP_N;
    let few_users: Vec<String> = (1..=150).map(|u| format!("u-{u}")).collect();
    let other_users: Vec<String> = (1_000..=1_400).map(|u| format!("u-{u}")).collect();
    config.filters = vec![
        filter(1, "usa", &["USA"], &[], &[]),
        filter(2, "two_nets", &[], &["73.162.0.0/16", "49.36.0.0/16"], &[]),
        filter(3, "few_users", &[], &[], &few_users),
        filter(
            7,
            "ind_kor_in_net_84_or_177",
            &["IND", "KOR"],
            &["84.132.0.0/16", "177.64.0.0/17"],
            &[],
        ),
        filter(9, "usa_other_users", &["USA", "DEU"], &[], &other_users),
    ];
    config.popular = [(1, 0), (5, 0), (3, 1), (2, 3), (4, 7)]
        .into_iter()
        .map(|(window_minutes, filter_id)| PopularConfig {
            window_minutes,
            filter_id,
        })
        .collect();
    config
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (base, len) = cidr.split_once('/').expect("a CIDR");
    let base: Ipv4Addr = base.parse().expect("an IPv4 base");
    let len: u32 = len.parse().expect("a prefix length");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(base) & mask
}

fn filter_matches(filter: &AdFilterConfig, click: &Click) -> bool {
    (filter.country.is_empty() || filter.country.contains(&click.country))
        && (filter.user_id.is_empty() || filter.user_id.contains(&click.user_id))
        && (filter.ip.is_empty() || filter.ip.iter().any(|r| in_cidr(click.ip, r)))
}

struct Oracle {
    /// (minute, ad, filter) → count; zero counts are absent.
    counts: BTreeMap<(i64, String, u32), u64>,
    /// Event ids that are too late, each once.
    late: BTreeSet<String>,
    duplicates: u64,
    first_minute: i64,
    last_minute: i64,
}

fn minute_of(t: i64) -> i64 {
    t.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// Brute force over the clicks in emission order, which is each partition's
/// input order.
fn oracle(traffic: &Traffic, config: &AdsConfig) -> Oracle {
    let mut max_time: HashMap<u32, i64> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut oracle = Oracle {
        counts: BTreeMap::new(),
        late: BTreeSet::new(),
        duplicates: 0,
        first_minute: i64::MAX,
        last_minute: i64::MIN,
    };
    for click in &traffic.clicks {
        let minute = minute_of(click.time);
        // Dedup first (a repeat of a too-late event is a duplicate, not a
        // second late record), then lateness.
        if !seen.insert(&click.event_id) {
            oracle.duplicates += 1;
            continue;
        }
        if let Some(max) = max_time.get(&click.partition) {
            let watermark = max - config.out_of_orderness_ms;
            if minute + MINUTE_MS + config.allowed_lateness_ms <= watermark {
                assert!(oracle.late.insert(click.event_id.clone()));
                continue;
            }
            assert!(
                click.time >= watermark - config.dedup_horizon_ms,
                "the config must keep every click that is not too late inside the dedup horizon"
            );
        }
        let max = max_time.entry(click.partition).or_insert(click.time);
        *max = (*max).max(click.time);
        oracle.first_minute = oracle.first_minute.min(minute);
        oracle.last_minute = oracle.last_minute.max(minute);
        *oracle
            .counts
            .entry((minute, click.ad_id.clone(), 0))
            .or_default() += 1;
        for filter in &config.filters {
            if filter_matches(filter, click) {
                *oracle
                    .counts
                    .entry((minute, click.ad_id.clone(), filter.id))
                    .or_default() += 1;
            }
        }
    }
    // The oracle and the simulator's truth are independent derivations of
    // the same rules; disagreement means the setup, not the pipeline, is off.
    let unfiltered: BTreeMap<(String, i64), u64> = oracle
        .counts
        .iter()
        .filter(|((_, _, filter), _)| *filter == 0)
        .map(|((minute, ad, _), count)| ((ad.clone(), *minute), *count))
        .collect();
    assert_eq!(
        unfiltered, traffic.truth.counts,
        "oracle vs simulator truth"
    );
    let truth_late: BTreeSet<String> = traffic
        .truth
        .late_beyond_ids()
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(oracle.late, truth_late, "oracle vs simulator late events");
    assert_eq!(
        oracle.duplicates,
        traffic.truth.summary.by_category.duplicate
    );
    for filter in &config.filters {
        let matched: u64 = oracle
            .counts
            .iter()
            .filter(|((_, _, f), _)| *f == filter.id)
            .map(|(_, c)| c)
            .sum();
        assert!(
            matched > 200,
            "filter {} matches only {matched} clicks",
            filter.name
        );
    }
    oracle
}

/// Every ad of `(window_minutes, filter_id)` over the minutes in
/// `[end − window, end)`, best first: count descending, then ad id ascending
/// (written out here rather than with `rank_cmp`).
fn ranked_window(
    oracle: &Oracle,
    window_minutes: u32,
    filter_id: u32,
    end: i64,
) -> Vec<(String, u64)> {
    let from = end - window_minutes as i64 * MINUTE_MS;
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for ((minute, ad, filter), count) in &oracle.counts {
        if *filter == filter_id && *minute >= from && *minute < end {
            *sums.entry(ad).or_default() += count;
        }
    }
    let mut all: Vec<(String, u64)> = sums.into_iter().map(|(a, c)| (a.to_string(), c)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all
}

// ---------------------------------------------------------------------------
// Log, pipeline and waiting
// ---------------------------------------------------------------------------

fn topic_template() -> TopicConfig {
    TopicConfig {
        partitions: PARTITIONS,
        // Event times are in 2024: time-based retention would eat them.
        retention_ms: -1,
        retention_bytes: -1,
        segment_bytes: 8 << 20,
    }
}

async fn open_log(root: &Path) -> Arc<dyn EventBus> {
    let root = root.to_path_buf();
    let log = tokio::task::spawn_blocking(move || EmbeddedLog::open(root, LogOptions::default()))
        .await
        .unwrap()
        .expect("open the embedded log");
    let bus: Arc<dyn EventBus> = Arc::new(log);
    if bus.partition_count(INPUT).await.is_err() {
        bus.create_topic(INPUT, topic_template()).await.unwrap();
    }
    bus
}

/// Appends clicks as ingest does: parse, encode, key = ad_id, partition by
/// murmur2 of the key, one batch per partition, in order.
async fn append(bus: &dyn EventBus, clicks: &[Click], ends: &mut [u64]) {
    let limits = ParseLimits::at(&SystemClock);
    for chunk in clicks.chunks(CHUNK) {
        let mut batches: Vec<RecordBatch> = (0..PARTITIONS).map(|_| RecordBatch::new()).collect();
        for click in chunk {
            let event = parse_event(&click.json, &limits).expect("generated events are valid");
            let key = event.partition_key().as_bytes();
            let partition = partition_for_key(key, PARTITIONS);
            assert_eq!(partition, click.partition);
            batches[partition as usize]
                .push_encoded(Some(key), event.event_time, |out| event.encode(out));
        }
        for (partition, batch) in batches.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let count = batch.len() as u64;
            let base = bus.append(INPUT, partition as u32, batch).await.unwrap();
            assert_eq!(base, ends[partition]);
            ends[partition] += count;
        }
    }
}

struct Running {
    pipeline: Arc<AdsPipeline>,
    shutdown: watch::Sender<bool>,
}

async fn start(
    bus: &Arc<dyn EventBus>,
    store: &Arc<dyn AggregateStore>,
    checkpoint_dir: &Path,
    config: &AdsConfig,
) -> Running {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(FsCheckpointStore::new(checkpoint_dir));
    let pipeline = AdsPipeline::start(
        bus.clone(),
        store.clone(),
        checkpoints,
        Arc::new(SystemClock),
        config,
        &topic_template(),
        riffle_ads::PipelineRoles::ALL,
        shutdown_rx,
    )
    .await
    .expect("pipeline starts");
    Running { pipeline, shutdown }
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.pipeline.join().await;
    }
}

fn assert_healthy(report: &PipelineReport) {
    for p in &report.partitions {
        assert_ne!(
            p.task.state, "failed",
            "task {}: {:?}",
            p.task.partition, p.task.error
        );
    }
    assert_ne!(
        report.writer.state, "failed",
        "writer: {:?}",
        report.writer.error
    );
}

/// Whether every task has processed and committed `ends`.
fn tasks_committed(report: &PipelineReport, ends: &[u64]) -> bool {
    report.partitions.len() == ends.len()
        && report.partitions.iter().all(|p| {
            let end = ends[p.task.partition as usize];
            p.task.processed_offset == end && p.task.committed_offset == end
        })
}

/// Polls until every task has processed and committed all input (so its
/// final emit is in the aggregates topic, in the same transaction) and the
/// writer has applied the aggregates topic to its end, twice in a row.
async fn settle(running: &Running, bus: &dyn EventBus, ends: &[u64]) -> PipelineReport {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut stable = 0;
    loop {
        let report = running.pipeline.report().await;
        assert_healthy(&report);
        let aggregates = bus.describe_topic(AGGREGATES).await.unwrap();
        let applied = aggregates.partitions.iter().all(|a| {
            report
                .writer
                .positions
                .get(&a.partition)
                .copied()
                .unwrap_or(0)
                == a.end_offset
        });
        if tasks_committed(&report, ends) && applied {
            stable += 1;
            if stable == 2 {
                return report;
            }
        } else {
            stable = 0;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline did not settle within {SETTLE_TIMEOUT:?}: input ends {ends:?}, \
             aggregates {:?}, report {report:#?}",
            aggregates.partitions
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until every task has committed `ends` (the writer may lag).
async fn wait_committed(running: &Running, ends: &[u64]) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let report = running.pipeline.report().await;
        assert_healthy(&report);
        if tasks_committed(&report, ends) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not commit {ends:?}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until every task has processed at least one record.
async fn wait_started(running: &Running) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let report = running.pipeline.report().await;
        assert_healthy(&report);
        if report
            .partitions
            .iter()
            .all(|p| p.task.processed_offset > 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not start: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Every record of the late topic: (event_id, reason).
async fn late_records(bus: &dyn EventBus) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let fetched = bus.fetch(LATE, partition, offset, 1 << 20).await.unwrap();
            let Some(next) = fetched.records.next_offset() else {
                break;
            };
            for record in fetched.records.iter() {
                let reason = record
                    .headers()
                    .find(|(name, _)| *name == "reason")
                    .map(|(_, value)| String::from_utf8(value.to_vec()).unwrap())
                    .unwrap_or_default();
                let value: serde_json::Value = serde_json::from_slice(record.value).unwrap();
                let event_id = value["event_id"].as_str().unwrap_or_default().to_string();
                out.push((event_id, reason));
            }
            offset = next;
        }
    }
    out
}

async fn verify(
    store: &Arc<dyn AggregateStore>,
    bus: &dyn EventBus,
    oracle: &Oracle,
    config: &AdsConfig,
    report: &PipelineReport,
) {
    // Counts: every (minute, ad, filter) row equals the oracle; no extras.
    let from = oracle.first_minute - 60 * MINUTE_MS;
    let to = oracle.last_minute + 60 * MINUTE_MS;
    let rows = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.scan(from, to, None))
            .await
            .unwrap()
            .unwrap()
    };
    let stored: BTreeMap<(i64, String, u32), u64> = rows
        .into_iter()
        .map(|row| {
            (
                (row.key.minute_start_ms, row.key.ad_id, row.key.filter_id),
                row.count,
            )
        })
        .collect();
    let missing: Vec<_> = oracle
        .counts
        .iter()
        .filter(|(key, count)| stored.get(*key) != Some(*count))
        .take(10)
        .collect();
    let extra: Vec<_> = stored
        .iter()
        .filter(|(key, count)| oracle.counts.get(*key) != Some(*count))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "count rows differ from the oracle ({} stored, {} expected); expected but not stored: \
         {missing:?}; stored but not expected: {extra:?}",
        stored.len(),
        oracle.counts.len()
    );

    // Tops: every window end that covers data, for every maintained window.
    let mut checked = 0;
    let mut cut_ties = 0;
    for popular in &config.popular {
        let (window, filter_id) = (popular.window_minutes, popular.filter_id);
        let first_end = oracle.first_minute + MINUTE_MS;
        let last_end = oracle.last_minute + window as i64 * MINUTE_MS;
        let mut end = first_end - MINUTE_MS;
        while end <= last_end + MINUTE_MS {
            let ranked = ranked_window(oracle, window, filter_id, end);
            let top = &ranked[..ranked.len().min(TOP_N as usize)];
            let expected = (!top.is_empty()).then(|| TopRow {
                window_end_ms: end,
                window_minutes: window,
                filter_id,
                ad_ids: top.iter().map(|(ad, _)| ad.clone()).collect(),
                counts: top.iter().map(|(_, c)| *c).collect(),
            });
            let actual = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.top(window, filter_id, end))
                    .await
                    .unwrap()
                    .unwrap()
            };
            assert_eq!(
                actual, expected,
                "top of window {window} min, filter {filter_id}, ending {end}"
            );
            checked += expected.is_some() as usize;
            // A tie at the cut-off: the best ad outside the top has as many
            // clicks as the last one inside, so only the ad id decides.
            let n = TOP_N as usize;
            if ranked.len() > n && ranked[n].1 == ranked[n - 1].1 {
                cut_ties += 1;
            }
            end += MINUTE_MS;
        }
    }
    assert!(checked > 50, "only {checked} top windows checked");
    assert!(
        cut_ties > 0,
        "no top window has a tie at the cut-off; the test misses that case"
    );

    // The late topic: exactly the too-late clicks, once each.
    let late = late_records(bus).await;
    let mut ids = BTreeSet::new();
    for (event_id, reason) in &late {
        assert_eq!(reason, "too_late", "late record {event_id}");
        assert!(
            ids.insert(event_id.clone()),
            "late record {event_id} written twice"
        );
    }
    assert_eq!(ids, oracle.late, "late topic vs too-late clicks");

    // What GET /v1/pipelines reports.
    let duplicates: u64 = report
        .partitions
        .iter()
        .map(|p| p.task.counters["duplicates"])
        .sum();
    let too_late: u64 = report
        .partitions
        .iter()
        .map(|p| p.task.counters["late"])
        .sum();
    let rejected: u64 = report
        .partitions
        .iter()
        .map(|p| p.task.counters["rejected"])
        .sum();
    assert_eq!(duplicates, oracle.duplicates, "reported duplicates");
    assert_eq!(too_late, oracle.late.len() as u64, "reported late");
    assert_eq!(rejected, 0, "reported rejected");
    assert_eq!(report.lag, 0);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

enum Backend {
    Memory,
    Redb,
}

fn open_store(backend: Backend, dir: &Path) -> Arc<dyn AggregateStore> {
    match backend {
        Backend::Memory => Arc::new(MemoryAggregateStore::new()),
        Backend::Redb => Arc::new(RedbAggregateStore::open(dir.join("aggregates.redb")).unwrap()),
    }
}

async fn straight_through(backend: Backend) {
    let traffic = traffic();
    let config = pipeline_config();
    let oracle = oracle(&traffic, &config);
    let dir = tempfile::tempdir().unwrap();
    let bus = open_log(&dir.path().join("log")).await;
    let store = open_store(backend, dir.path());
    let running = start(&bus, &store, &dir.path().join("checkpoints"), &config).await;
    let mut ends = vec![0u64; PARTITIONS as usize];
    // Appended while the pipeline runs, so it sees the stream in many polls.
    append(bus.as_ref(), &traffic.clicks, &mut ends).await;
    let report = settle(&running, bus.as_ref(), &ends).await;
    verify(&store, bus.as_ref(), &oracle, &config, &report).await;
    running.stop().await;
    // A clean shutdown checkpoints everything, so a restart replays nothing.
    let checkpoints = FsCheckpointStore::new(dir.path().join("checkpoints"));
    for p in 0..PARTITIONS {
        let checkpoint = checkpoints
            .load_latest(PIPELINE, INPUT, p)
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint.input_offset, ends[p as usize], "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_through_memory_store_matches_oracle() {
    straight_through(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_through_redb_store_matches_oracle() {
    straight_through(Backend::Redb).await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Shutdown mid-stream, restart (restores the shutdown checkpoint), kill
/// after output was committed past the newest checkpoint, restart (restores
/// an older checkpoint and replays up to the committed offset with its
/// output suppressed), then the rest of the traffic: the results equal the
/// oracle, and nothing reached the late topic twice.
#[test]
fn shutdown_and_kill_then_restart_matches_oracle() {
    let traffic = traffic();
    let config = pipeline_config();
    let oracle = oracle(&traffic, &config);
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_dir = dir.path().join("checkpoints");
    let store = open_store(Backend::Redb, dir.path());
    let n = traffic.clicks.len();
    let (first, rest) = traffic.clicks.split_at(n * 3 / 10);
    let (second, third) = rest.split_at(n * 3 / 10);
    let mut ends = vec![0u64; PARTITIONS as usize];
    let main = runtime();

    // 1. Run over the first part; shut down cleanly as soon as every task is
    //    under way, typically with input left unprocessed.
    let bus = main.block_on(async {
        let bus = open_log(&dir.path().join("log")).await;
        let running = start(&bus, &store, &checkpoint_dir, &config).await;
        append(bus.as_ref(), first, &mut ends).await;
        wait_started(&running).await;
        running.stop().await;
        bus
    });
    let checkpoints = FsCheckpointStore::new(&checkpoint_dir);
    let after_shutdown: Vec<u64> = (0..PARTITIONS)
        .map(|p| {
            checkpoints
                .load_latest(PIPELINE, INPUT, p)
                .unwrap()
                .expect("a clean shutdown leaves a checkpoint")
                .input_offset
        })
        .collect();

    // 2. Restart without periodic checkpoints, process the second part until
    //    its output is committed, then kill the runtime: no final emit, no
    //    final checkpoint, the writer possibly in the middle of a batch.
    let mut no_checkpoints = config.clone();
    no_checkpoints.checkpoint_interval_ms = 3_600_000;
    let doomed = runtime();
    let kept_sender = doomed.block_on(async {
        let running = start(&bus, &store, &checkpoint_dir, &no_checkpoints).await;
        append(bus.as_ref(), second, &mut ends).await;
        wait_committed(&running, &ends).await;
        let report = running.pipeline.report().await;
        for p in &report.partitions {
            assert!(
                p.task.restored_from.is_some(),
                "partition {} did not restore",
                p.task.partition
            );
        }
        // Kept until after the kill: dropping it would signal a shutdown.
        running.shutdown
    });
    doomed.shutdown_timeout(Duration::from_secs(10));
    drop(kept_sender);
    let committed = main
        .block_on(bus.committed_offsets(PIPELINE, INPUT))
        .unwrap();
    for p in 0..PARTITIONS {
        let checkpoint = checkpoints
            .load_latest(PIPELINE, INPUT, p)
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint.input_offset, after_shutdown[p as usize]);
        assert_eq!(committed.get(&p), Some(&ends[p as usize]));
        assert!(
            checkpoint.input_offset < ends[p as usize],
            "partition {p}: the restart must replay committed input"
        );
    }

    // 3. Restart: restore, replay with suppressed output, then the rest.
    main.block_on(async {
        let running = start(&bus, &store, &checkpoint_dir, &config).await;
        append(bus.as_ref(), third, &mut ends).await;
        let report = settle(&running, bus.as_ref(), &ends).await;
        for p in &report.partitions {
            assert!(
                p.task.restored_from.is_some(),
                "partition {} did not restore",
                p.task.partition
            );
        }
        verify(&store, bus.as_ref(), &oracle, &config, &report).await;
        running.stop().await;
    });
}

fn hand_made(event_id: &str, time: i64) -> Click {
    let ad = "ad-0000042".to_string();
    Click {
        json: format!(
            r#"{{"event_type":"ad_click","event_id":"{event_id}","event_time":{time},"ad_id":"{ad}","user_id":"u-1","ip":"73.162.0.1","country":"USA"}}"#
        )
        .into_bytes(),
        event_id: event_id.into(),
        partition: partition_for_key(ad.as_bytes(), PARTITIONS),
        ad_id: ad,
        time,
        country: "USA".into(),
        ip: Ipv4Addr::new(73, 162, 0, 1),
        user_id: "u-1".into(),
    }
}

/// Lateness is per minute window: a click up to `allowed_lateness + 1 min`
/// older than the watermark can still be counted, so it must still be
/// deduplicated — even with the smallest dedup horizon the config accepts
/// (`dedup_horizon_ms = allowed_lateness_ms + 1 min`; less is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_within_click_at_the_dedup_horizon_is_counted_once() {
    let mut config = pipeline_config();
    config.dedup_horizon_ms = config.allowed_lateness_ms + MINUTE_MS - 1;
    let refused = config.validate().unwrap_err().to_string();
    assert!(
        refused.contains("ads.dedup_horizon_ms: 359999 must be at least"),
        "unexpected message: {refused}"
    );
    config.dedup_horizon_ms = config.allowed_lateness_ms + MINUTE_MS;
    config.validate().expect("the smallest accepted horizon");
    let t0 = 28_576_080 * MINUTE_MS; // 2024-05-01T12:00:00Z
    let clicks = vec![
        hand_made("newest", t0 + 5 * MINUTE_MS),
        // Watermark now t0 + 4:45. Minute t0 − 1 ends at t0, and
        // t0 + 5:00 > t0 + 4:45: late within the allowed lateness, but the
        // click is 5:15 older than the watermark.
        hand_made("within", t0 - 30_000),
        hand_made("within", t0 - 30_000),
        // Minute t0 − 2 ends at t0 − 1 min: t0 + 4:00 ≤ t0 + 4:45, too late.
        hand_made("beyond", t0 - 90_000),
    ];
    let dir = tempfile::tempdir().unwrap();
    let bus = open_log(&dir.path().join("log")).await;
    let store: Arc<dyn AggregateStore> = Arc::new(MemoryAggregateStore::new());
    let running = start(&bus, &store, &dir.path().join("checkpoints"), &config).await;
    let mut ends = vec![0u64; PARTITIONS as usize];
    append(bus.as_ref(), &clicks, &mut ends).await;
    let report = settle(&running, bus.as_ref(), &ends).await;
    let ad = clicks[0].ad_id.clone();
    let counts = tokio::task::spawn_blocking(move || {
        [t0 - MINUTE_MS, t0 + 5 * MINUTE_MS].map(|m| store.count(&ad, 0, m, m + MINUTE_MS).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(
        counts,
        [1, 1],
        "counts of the late-within and the newest minute"
    );
    assert_eq!(
        late_records(bus.as_ref()).await,
        vec![("beyond".to_string(), "too_late".to_string())]
    );
    let duplicates: u64 = report
        .partitions
        .iter()
        .map(|p| p.task.counters["duplicates"])
        .sum();
    assert_eq!(duplicates, 1);
    running.stop().await;
}
