//! Metrics of the event bus, registered in the process-wide Prometheus
//! registry (`prometheus::default_registry()`).

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, Histogram, IntCounter};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.0, 2.0,
];

pub static APPEND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_log_append_seconds",
        "Time from append call to durable acknowledgement",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_log_fsync_seconds",
        "Duration of one fdatasync of a partition's active segment",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static TXN_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_log_transaction_commit_seconds",
        "Duration of a transaction commit",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});

pub static APPENDED_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_appended_records_total",
        "Records durably appended"
    )
    .unwrap()
});

pub static APPENDED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_appended_bytes_total",
        "Bytes durably appended, batch headers included"
    )
    .unwrap()
});

pub static READ_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("riffle_log_read_records_total", "Records served to readers").unwrap()
});

pub static SEGMENT_ROLLS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_segment_rolls_total",
        "Segments sealed and rolled"
    )
    .unwrap()
});

pub static TRUNCATED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_recovery_truncated_bytes_total",
        "Bytes of torn or corrupt segment tails truncated during recovery"
    )
    .unwrap()
});

pub static RETENTION_DELETED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_retention_deleted_bytes_total",
        "Bytes deleted by retention"
    )
    .unwrap()
});

pub static CORRUPT_SEGMENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_log_recovery_corrupt_segments_total",
        "Closed segments found corrupt while rebuilding their index (kept; reads of the damaged range fail)"
    )
    .unwrap()
});
