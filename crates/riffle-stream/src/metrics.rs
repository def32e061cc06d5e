//! Metrics of pipeline tasks, registered in the process-wide Prometheus
//! registry. Every series is labelled by `pipeline` (and `partition` where
//! it is per task).

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec,
};

use crate::operator::CounterSpec;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 4.0,
    8.0,
];

pub static RECORDS_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_stream_records_in_total",
        "Input records processed by a pipeline task",
        &["pipeline", "partition"]
    )
    .unwrap()
});

pub static RECORDS_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_stream_records_out_total",
        "Output records committed by a pipeline task",
        &["pipeline", "partition"]
    )
    .unwrap()
});

/// The series of an operator's declared counter ([`CounterSpec`]),
/// registered on first use. Two operators declaring the same metric share
/// it (their pipeline label tells them apart).
pub fn operator_counter(spec: &CounterSpec) -> IntCounterVec {
    static COUNTERS: LazyLock<Mutex<HashMap<&'static str, IntCounterVec>>> =
        LazyLock::new(Default::default);
    COUNTERS
        .lock()
        .entry(spec.metric)
        .or_insert_with(|| {
            register_int_counter_vec!(spec.metric, spec.help, &["pipeline", "partition"])
                .unwrap_or_else(|e| panic!("registering operator counter {}: {e}", spec.metric))
        })
        .clone()
}

pub static WATERMARK_LAG_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "riffle_stream_watermark_lag_seconds",
        "Wall clock minus the task's event-time watermark",
        &["pipeline", "partition"]
    )
    .unwrap()
});

pub static EMIT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "riffle_stream_emit_seconds",
        "Duration of one emit: output records and input offsets in one transaction",
        &["pipeline"],
        SECONDS_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static CHECKPOINT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "riffle_stream_checkpoint_seconds",
        "Duration of one task checkpoint (emit, snapshot, durable write)",
        &["pipeline"],
        SECONDS_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static CHECKPOINT_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "riffle_stream_checkpoint_bytes",
        "Size of a task's last checkpoint",
        &["pipeline", "partition"]
    )
    .unwrap()
});

pub static FRESHNESS_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "riffle_stream_freshness_seconds",
        "End-to-end freshness: wall clock when the aggregate writer made a batch queryable minus the newest event time it reflects (records carry event time as timestamp)",
        &["pipeline"],
        SECONDS_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static FORWARDED_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_stream_records_forwarded_total",
        "Input records a task sent to the task owning their key through the repartition topic (they were not on their key's partition)",
        &["pipeline", "partition"]
    )
    .unwrap()
});

pub static FORWARDED_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_stream_forwarded_records_in_total",
        "Records forwarded to a task by other tasks, processed (repeats of a forward excluded)",
        &["pipeline", "partition"]
    )
    .unwrap()
});
