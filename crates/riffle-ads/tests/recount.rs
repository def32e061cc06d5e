//! A recount replays each input partition on its own. Clicks that a
//! producer wrote to another partition than their ad's are counted live
//! through the repartition topic, which a recount does not follow yet: it
//! must refuse (so `recalc` never writes counts without them) instead of
//! returning counts split over partitions.

use std::sync::Arc;

use riffle_ads::recount::{recount, RecountError};
use riffle_ads::AdsConfig;
use riffle_ads::{AdsSpec, MINUTE_MS};
use riffle_core::config::Section;
use riffle_log::{partition_for_key, EmbeddedLog, EventBus, LogOptions, RecordBatch, TopicConfig};

const PARTITIONS: u32 = 3;
const INPUT: &str = "ad_clicks";
/// A minute-aligned start, 2024-05-01T12:00:00Z.
const START: i64 = 1_714_564_800_000;

fn click(id: usize, ad: &str, time: i64) -> Vec<u8> {
    format!(
        r#"{{"event_type":"ad_click","event_id":"c-{id}","event_time":{time},"ad_id":"{ad}","user_id":"u-1","ip":"73.162.0.9","country":"USA"}}"#
    )
    .into_bytes()
}

/// An embedded log whose input holds 30 clicks on three ads, each on its
/// ad's partition, plus `stray` clicks of ad-0 on another partition.
async fn log_with(dir: &std::path::Path, stray: usize) -> Arc<dyn EventBus> {
    let root = dir.to_path_buf();
    let log = tokio::task::spawn_blocking(move || EmbeddedLog::open(root, LogOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(log);
    bus.create_topic(
        INPUT,
        TopicConfig {
            partitions: PARTITIONS,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    let mut batches: Vec<RecordBatch> = (0..PARTITIONS).map(|_| RecordBatch::new()).collect();
    for i in 0..30 {
        let ad = format!("ad-{}", i % 3);
        let time = START + i as i64 * 1000;
        let partition = partition_for_key(ad.as_bytes(), PARTITIONS);
        batches[partition as usize].push(Some(ad.as_bytes()), &click(i, &ad, time), time);
    }
    let home = partition_for_key(b"ad-0", PARTITIONS);
    for i in 0..stray {
        let time = START + 30_000 + i as i64 * 1000;
        let elsewhere = (home + 1) % PARTITIONS;
        batches[elsewhere as usize].push(None, &click(100 + i, "ad-0", time), time);
    }
    for (partition, batch) in batches.into_iter().enumerate() {
        if !batch.is_empty() {
            bus.append(INPUT, partition as u32, batch).await.unwrap();
        }
    }
    bus
}

fn spec() -> Arc<AdsSpec> {
    Arc::new(AdsSpec::from_config(&AdsConfig::defaults()).expect("default spec"))
}

#[tokio::test]
async fn correctly_partitioned_input_recounts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = log_with(dir.path(), 0).await;
    let counted = recount(&bus, &spec(), INPUT, START, START + MINUTE_MS, &|_, _| {})
        .await
        .expect("recount");
    let unfiltered: u64 = counted
        .rows
        .iter()
        .filter(|(key, _)| key.filter_id == 0)
        .map(|(_, count)| *count)
        .sum();
    assert_eq!(unfiltered, 30);
}

#[tokio::test]
async fn clicks_on_another_partition_make_the_recount_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let bus = log_with(dir.path(), 4).await;
    let error = recount(&bus, &spec(), INPUT, START, START + MINUTE_MS, &|_, _| {})
        .await
        .unwrap_err();
    let home = partition_for_key(b"ad-0", PARTITIONS);
    match &error {
        RecountError::MisPartitioned { partition, clicks } => {
            assert_eq!(*partition, (home + 1) % PARTITIONS);
            assert_eq!(*clicks, 4);
        }
        other => panic!("expected MisPartitioned, got {other:?}"),
    }
    assert!(error.to_string().contains("repartition topic"), "{error}");
}
