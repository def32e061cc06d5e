//! Ingest metrics (Prometheus, process-wide registry).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

pub static EVENTS_ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_ingest_events_accepted_total",
        "Events durably appended, by event type",
        &["event_type"]
    )
    .unwrap()
});

pub static EVENTS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_ingest_events_rejected_total",
        "Events rejected by validation, by event type (\"unknown\" if unreadable) and reason",
        &["event_type", "reason"]
    )
    .unwrap()
});

pub static BYTES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_ingest_bytes_total",
        "Request body bytes received by ingest"
    )
    .unwrap()
});

pub static REQUESTS_THROTTLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_ingest_throttled_total",
        "Ingest requests refused with 429 because in-flight bytes were at the limit"
    )
    .unwrap()
});

pub static INFLIGHT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_ingest_inflight_bytes",
        "Request bytes being validated or waiting for durability"
    )
    .unwrap()
});

pub static ACK_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_ingest_ack_seconds",
        "Time from request body received to durable acknowledgement",
        vec![
            0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0
        ]
    )
    .unwrap()
});
