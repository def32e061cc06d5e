//! Metrics of the dataset service, registered in the process-wide
//! Prometheus registry (`GET /metrics`). The client library registers its
//! own series in a registry the application passes
//! ([`crate::client::Subscription::register_metrics`]).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

pub static PUBLISHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_datasets_publishes_total",
        "Versions published, by where the payload went (inline, blob, existing)",
        &["location"]
    )
    .unwrap()
});

pub static PUBLISH_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_publish_bytes_total",
        "Payload bytes received by publishes"
    )
    .unwrap()
});

pub static PUBLISH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_datasets_publish_seconds",
        "Duration of a publish: payload stored, metadata committed, cache updated",
        vec![0.001, 0.004, 0.016, 0.064, 0.256, 1.0, 4.0, 16.0, 64.0]
    )
    .unwrap()
});

pub static POLLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "riffle_datasets_polls_total",
        "Latest requests by outcome: version (200), timeout (204), error",
        &["outcome"]
    )
    .unwrap()
});

pub static POLLS_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_datasets_polls_waiting",
        "Long-polls currently held open"
    )
    .unwrap()
});

pub static POLL_GROUPS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_datasets_poll_groups",
        "Distinct (topic, labels, after) long-poll groups; identical polls share one"
    )
    .unwrap()
});

pub static POLL_RESOLUTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_poll_resolutions_total",
        "Re-resolutions of waiting poll groups after a topic changed (one per group, not per request)"
    )
    .unwrap()
});

pub static CACHE_REFRESH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_datasets_cache_refresh_seconds",
        "Duration of one refresh of the consume cache from the metadata store",
        vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap()
});

pub static CACHE_VERSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_datasets_cache_versions",
        "Versions held by the consume cache over all topics"
    )
    .unwrap()
});

pub static HIDDEN_VERSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_datasets_hidden_versions",
        "Committed versions kept from consumers because their blob is missing, unverified or does not match its checksum"
    )
    .unwrap()
});

pub static JANITOR_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_janitor_expired_versions_total",
        "Versions deleted by retention"
    )
    .unwrap()
});

pub static JANITOR_BLOBS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_janitor_deleted_blobs_total",
        "Blobs deleted because no retained version references them"
    )
    .unwrap()
});

pub static ROLLOUT_STAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_rollout_stages_total",
        "Rollout stages applied"
    )
    .unwrap()
});

pub static DATA_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_datasets_data_bytes_total",
        "Payload bytes served by data downloads"
    )
    .unwrap()
});
