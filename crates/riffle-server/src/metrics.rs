//! Server-side metrics: gauges derived from the log at scrape time
//! (per-partition end offsets, consumer-group lag).

use std::sync::LazyLock;

use prometheus::{register_int_gauge_vec, IntGaugeVec};

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

/// Re-derives the log gauges; stale label sets (deleted topics) are dropped.
pub fn refresh(services: &Services) {
    PARTITION_END_OFFSET.reset();
    PARTITION_START_OFFSET.reset();
    GROUP_LAG.reset();
    for (tp, start, end) in services.log.end_offsets() {
        let partition = tp.partition.to_string();
        PARTITION_END_OFFSET
            .with_label_values(&[tp.topic.as_str(), partition.as_str()])
            .set(end as i64);
        PARTITION_START_OFFSET
            .with_label_values(&[tp.topic.as_str(), partition.as_str()])
            .set(start as i64);
    }
    for (group, tp, lag) in riffle_log::embedded::group_lags(&services.log) {
        let partition = tp.partition.to_string();
        GROUP_LAG
            .with_label_values(&[group.as_str(), tp.topic.as_str(), partition.as_str()])
            .set(lag as i64);
    }
}
