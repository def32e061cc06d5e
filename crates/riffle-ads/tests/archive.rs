//! The Parquet archive of the raw input against the log: generated traffic
//! (duplicates, out-of-order, late) is appended to an embedded log the way
//! ingest does it and archived in passes while it grows; a recount from the
//! archive must equal the recount from the log for every range — also for
//! ranges reaching into the not yet archived tail — and must keep answering
//! once log retention has deleted the raw events, where the log recount
//! refuses the range. A hole in the archive must fail the recount instead
//! of returning smaller counts.

#![cfg(feature = "parquet")]

use std::path::Path;
use std::sync::Arc;

use riffle_ads::archive::{archive_once, list_files};
use riffle_ads::recount::{recount_from, Recount, RecountError, RecountSource};
use riffle_ads::{AdFilterConfig, AdsConfig, PopularConfig};
use riffle_ads::{AdsSpec, MINUTE_MS};
use riffle_core::config::Section;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{ManualClock, SystemClock};
use riffle_log::{partition_for_key, EmbeddedLog, EventBus, LogOptions, RecordBatch, TopicConfig};
use riffle_sim::ads::{AdsConfig as TrafficConfig, AdsGenerator};

const PARTITIONS: u32 = 3;
const INPUT: &str = "ad_clicks";
const DAY_MS: i64 = 24 * 3_600_000;

fn spec() -> Arc<AdsSpec> {
    let mut config: AdsConfig = AdsConfig::defaults();
    config.out_of_orderness_ms = 15_000;
    config.allowed_lateness_ms = 120_000;
    config.dedup_horizon_ms = 240_000;
    config.top_n = 5;
    config.filters = vec![AdFilterConfig {
        id: 1,
        name: "usa".into(),
        country: vec!["USA".into()],
        ip: Vec::new(),
        user_id: Vec::new(),
    }];
    config.popular = [(1, 0), (3, 0), (2, 1)]
        .into_iter()
        .map(|(window_minutes, filter_id)| PopularConfig {
            window_minutes,
            filter_id,
        })
        .collect();
    Arc::new(AdsSpec::from_config(&config).expect("valid spec"))
}

/// (event time, encoded event JSON) of about 50 minutes of traffic.
fn traffic() -> Vec<(i64, Vec<u8>)> {
    let config = TrafficConfig {
        seed: 77,
        ads: 120,
        users: 800,
        ips: 2_000,
        rate: 12.0,
        duration_ms: Some(50 * 60_000),
        duplicate_fraction: 0.05,
        out_of_order_fraction: 0.10,
        late_within_fraction: 0.03,
        late_beyond_fraction: 0.02,
        out_of_orderness_ms: 15_000,
        allowed_lateness_ms: 120_000,
        late_beyond_margin_ms: 60_000,
        warmup_ms: 30_000,
        ..TrafficConfig::default()
    };
    let mut generator = AdsGenerator::new(config).expect("valid traffic config");
    let mut events = Vec::new();
    while let Some(event) = generator.next_event() {
        events.push((event.event_time_ms, generator.to_json(&event).into_bytes()));
    }
    assert!(events.len() > 20_000, "{} events", events.len());
    events
}

/// Appends as ingest does: parse, encode, key = ad_id, murmur2 partition.
async fn append(bus: &dyn EventBus, events: &[(i64, Vec<u8>)]) {
    let limits = ParseLimits::at(&SystemClock);
    for chunk in events.chunks(1_000) {
        let mut batches: Vec<RecordBatch> = (0..PARTITIONS).map(|_| RecordBatch::new()).collect();
        for (_, json) in chunk {
            let event = parse_event(json, &limits).expect("generated events are valid");
            let key = event.partition_key().as_bytes();
            let partition = partition_for_key(key, PARTITIONS);
            batches[partition as usize]
                .push_encoded(Some(key), event.event_time, |out| event.encode(out));
        }
        for (partition, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                bus.append(INPUT, partition as u32, batch).await.unwrap();
            }
        }
    }
}

async fn count(
    bus: &Arc<dyn EventBus>,
    source: &RecountSource,
    from: i64,
    to: i64,
) -> Result<Recount, RecountError> {
    recount_from(bus, &spec(), INPUT, source, from, to, &|_, _| {}).await
}

fn assert_same(log: &Recount, archive: &Recount, what: &str) {
    assert_eq!(log.rows, archive.rows, "{what}: counts differ");
    assert_eq!(
        log.partials, archive.partials,
        "{what}: partial tops differ"
    );
}

fn minute(t: i64) -> i64 {
    t.div_euclid(MINUTE_MS) * MINUTE_MS
}

async fn open_log(root: &Path, clock: Arc<ManualClock>) -> Arc<dyn EventBus> {
    let root = root.to_path_buf();
    let log = tokio::task::spawn_blocking(move || {
        EmbeddedLog::open_with_clock(root, LogOptions::default(), clock)
    })
    .await
    .unwrap()
    .expect("open the embedded log");
    Arc::new(log)
}

/// Generated traffic and an empty input topic (one-day time retention,
/// small segments) on a log whose clock stands at the traffic's end.
struct Setup {
    events: Vec<(i64, Vec<u8>)>,
    start: i64,
    end: i64,
    dir: tempfile::TempDir,
    archive: std::path::PathBuf,
    clock: Arc<ManualClock>,
    log: Arc<EmbeddedLog>,
    bus: Arc<dyn EventBus>,
}

async fn setup() -> Setup {
    let events = traffic();
    let start = events.iter().map(|(t, _)| *t).min().unwrap();
    let end = events.iter().map(|(t, _)| *t).max().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let clock = Arc::new(ManualClock::new(end));
    let log = {
        let root = dir.path().join("log");
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || {
            EmbeddedLog::open_with_clock(root, LogOptions::default(), clock)
        })
        .await
        .unwrap()
        .expect("open the embedded log")
    };
    let log = Arc::new(log);
    let bus: Arc<dyn EventBus> = log.clone();
    bus.create_topic(
        INPUT,
        TopicConfig {
            partitions: PARTITIONS,
            retention_ms: DAY_MS,
            retention_bytes: -1,
            segment_bytes: 64 << 10,
        },
    )
    .await
    .unwrap();
    Setup {
        events,
        start,
        end,
        dir,
        archive,
        clock,
        log,
        bus,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recount_from_the_archive_equals_the_log_and_outlives_its_retention() {
    let Setup {
        events,
        start,
        end,
        dir: _dir,
        archive,
        clock,
        log,
        bus,
    } = setup().await;

    // Three parts: archived, archived by a second pass, never archived.
    let (first, rest) = events.split_at(events.len() / 2);
    let (second, tail) = rest.split_at(rest.len() * 3 / 5);
    append(bus.as_ref(), first).await;
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert_eq!(pass.files.len(), PARTITIONS as usize, "{pass:?}");
    append(bus.as_ref(), second).await;
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert_eq!(pass.files.len(), PARTITIONS as usize, "{pass:?}");
    let archived: u64 = pass.records;
    assert!(archived > 0);
    let nothing_new = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert!(nothing_new.files.is_empty(), "{nothing_new:?}");
    for partition in 0..PARTITIONS {
        let files = list_files(&archive, INPUT, partition).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].first_offset, 0);
        assert_eq!(files[0].next_offset, files[1].first_offset);
    }
    append(bus.as_ref(), tail).await;

    let parquet = RecountSource::Parquet(archive.clone());
    let t0 = minute(start);
    let ranges = [
        ("before the data", t0 - 10 * MINUTE_MS, t0 + 2 * MINUTE_MS),
        ("early", t0 + 12 * MINUTE_MS, t0 + 20 * MINUTE_MS),
        ("one minute", t0 + 24 * MINUTE_MS, t0 + 25 * MINUTE_MS),
        (
            "across both passes",
            t0 + 22 * MINUTE_MS,
            t0 + 33 * MINUTE_MS,
        ),
        (
            "into the unarchived tail",
            t0 + 36 * MINUTE_MS,
            minute(end) + MINUTE_MS,
        ),
        ("everything", t0 - MINUTE_MS, minute(end) + 2 * MINUTE_MS),
    ];
    let mut from_log = Vec::new();
    for (what, from, to) in ranges {
        let log_count = count(&bus, &RecountSource::Log, from, to).await.unwrap();
        let archive_count = count(&bus, &parquet, from, to).await.unwrap();
        assert_same(&log_count, &archive_count, what);
        if what != "before the data" {
            assert!(
                log_count.rows.len() > 100,
                "{what}: {} rows",
                log_count.rows.len()
            );
            assert!(!log_count.partials.is_empty(), "{what}: no partial tops");
        }
        from_log.push(log_count);
    }

    // Retention deletes the first ~25 minutes of raw events from the log.
    clock.set(t0 + 25 * MINUTE_MS + DAY_MS);
    let deleted = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.enforce_retention())
            .await
            .unwrap()
            .unwrap()
    };
    assert!(deleted > 0);
    let description = bus.describe_topic(INPUT).await.unwrap();
    assert!(description.partitions.iter().all(|p| p.start_offset > 0));
    let (_, from, to) = ranges[1];
    match count(&bus, &RecountSource::Log, from, to).await {
        Err(RecountError::InvalidParam { param, message }) => {
            assert_eq!(param, "from");
            assert!(message.contains(&from.to_string()), "{message}");
        }
        other => panic!("log recount of a deleted range: {other:?}"),
    }
    for ((what, from, to), expected) in ranges.iter().zip(&from_log) {
        let archive_count = count(&bus, &parquet, *from, *to).await.unwrap();
        assert_same(
            expected,
            &archive_count,
            &format!("{what}, after retention"),
        );
    }

    // An archive missing what the range needs (its first file lost, the
    // log deleted it too) fails the recount, naming `from`.
    let files = list_files(&archive, INPUT, 1).unwrap();
    std::fs::remove_file(&files[0].path).unwrap();
    let (_, from, to) = ranges[3];
    match count(&bus, &parquet, from, to).await {
        Err(RecountError::InvalidParam { param, message }) => {
            assert_eq!(param, "from");
            assert!(message.contains(&from.to_string()), "{message}");
        }
        other => panic!("recount over a lost archive file: {other:?}"),
    }
}

#[tokio::test]
async fn archiving_a_recreated_topic_leaves_the_archive_alone() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let bus = open_log(&dir.path().join("log"), Arc::new(ManualClock::new(0))).await;
    let config = TopicConfig {
        partitions: 1,
        retention_ms: -1,
        retention_bytes: -1,
        segment_bytes: 1 << 20,
    };
    bus.create_topic(INPUT, config.clone()).await.unwrap();
    let mut batch = RecordBatch::new();
    for i in 0..10 {
        batch.push(Some(b"k"), b"v", i);
    }
    bus.append(INPUT, 0, batch).await.unwrap();
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert_eq!(pass.records, 10);
    bus.delete_topic(INPUT).await.unwrap();
    bus.create_topic(INPUT, config).await.unwrap();
    let mut batch = RecordBatch::new();
    batch.push(None, b"w", 20);
    bus.append(INPUT, 0, batch).await.unwrap();
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert!(pass.files.is_empty(), "{pass:?}");
    assert_eq!(pass.skipped.len(), 1, "{pass:?}");
    assert_eq!(list_files(&archive, INPUT, 0).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_left_by_log_retention_is_reported_and_refused() {
    let Setup {
        events,
        start,
        end,
        dir: _dir,
        archive,
        clock,
        log,
        bus,
    } = setup().await;
    let (first, second) = events.split_at(events.len() / 2);
    append(bus.as_ref(), first).await;
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert!(pass.holes.is_empty(), "{pass:?}");
    append(bus.as_ref(), second).await;
    // Retention runs before the next pass: the log loses raw events up to
    // about minute 35, of which minutes 25..35 were never archived.
    let t0 = minute(start);
    clock.set(t0 + 35 * MINUTE_MS + DAY_MS);
    let log_for_retention = log.clone();
    tokio::task::spawn_blocking(move || log_for_retention.enforce_retention())
        .await
        .unwrap()
        .unwrap();
    let pass = archive_once(&bus, INPUT, &archive).await.unwrap();
    assert_eq!(pass.holes.len(), PARTITIONS as usize, "{pass:?}");
    for partition in 0..PARTITIONS {
        let files = list_files(&archive, INPUT, partition).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].next_offset < files[1].first_offset, "{files:?}");
    }

    let parquet = RecountSource::Parquet(archive.clone());
    // Before the hole: the archive answers, the log no longer can.
    let (from, to) = (t0 + 12 * MINUTE_MS, t0 + 18 * MINUTE_MS);
    let early = count(&bus, &parquet, from, to).await.unwrap();
    assert!(early.rows.len() > 100);
    assert!(count(&bus, &RecountSource::Log, from, to).await.is_err());
    // Across the hole: refused, naming `from`.
    let (from, to) = (t0 + 24 * MINUTE_MS, t0 + 30 * MINUTE_MS);
    match count(&bus, &parquet, from, to).await {
        Err(RecountError::InvalidParam { param, message }) => {
            assert_eq!(param, "from");
            assert!(message.contains(&from.to_string()), "{message}");
            assert!(message.contains("hole"), "{message}");
        }
        other => panic!("recount across a hole: {other:?}"),
    }
    // Well after it: the archive and the log agree again.
    let (from, to) = (t0 + 45 * MINUTE_MS, minute(end) + MINUTE_MS);
    let from_log = count(&bus, &RecountSource::Log, from, to).await.unwrap();
    let from_archive = count(&bus, &parquet, from, to).await.unwrap();
    assert!(from_log.rows.len() > 100);
    assert_same(&from_log, &from_archive, "after the hole");
}
