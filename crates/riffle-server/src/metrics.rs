//! Server-side metrics: gauges derived from the log at scrape time
//! (per-partition end offsets, consumer-group lag) and the latency of the
//! ad click queries.

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_gauge_vec, HistogramVec, IntGaugeVec};

use crate::state::Services;

pub static PARTITION_END_OFFSET: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "riffle_log_partition_end_offset",
        "Offset the next record of a partition will get",
        &["topic", "partition"]
    )
    .unwrap()
});

pub static PARTITION_START_OFFSET: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "riffle_log_partition_start_offset",
        "First offset still stored in a partition",
        &["topic", "partition"]
    )
    .unwrap()
});

pub static GROUP_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "riffle_consumer_group_lag",
        "End offset minus committed offset, per group and partition",
        &["group", "topic", "partition"]
    )
    .unwrap()
});

/// Queries answer from a few store rows in microseconds; the buckets are fine
/// enough to tell a 1 ms p99 from a 250 µs one.
pub static ADS_QUERY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "riffle_ads_query_seconds",
        "Time an answered ad click query spends in its handler (auth, store read, answer built; not the JSON encoding)",
        &["query"],
        vec![
            0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
            0.1, 0.25, 0.5, 1.0,
        ]
    )
    .unwrap()
});

/// Re-derives the log gauges; stale label sets (deleted topics) are dropped.
pub fn refresh(services: &Services) {
    PARTITION_END_OFFSET.reset();
    PARTITION_START_OFFSET.reset();
    GROUP_LAG.reset();
    // The Kafka backend's offsets and lags are the brokers' (kafka_* metrics
    // of the cluster); these gauges describe the embedded log.
    let Some(log) = &services.log else {
        return;
    };
    for (tp, start, end) in log.end_offsets() {
        let partition = tp.partition.to_string();
        PARTITION_END_OFFSET
            .with_label_values(&[tp.topic.as_str(), partition.as_str()])
            .set(end as i64);
        PARTITION_START_OFFSET
            .with_label_values(&[tp.topic.as_str(), partition.as_str()])
            .set(start as i64);
    }
    for (group, tp, lag) in riffle_log::embedded::group_lags(log) {
        let partition = tp.partition.to_string();
        GROUP_LAG
            .with_label_values(&[group.as_str(), tp.topic.as_str(), partition.as_str()])
            .set(lag as i64);
    }
}
