//! Metrics of the ad click pipeline's writer and reconciliation, registered
//! in the process-wide Prometheus registry. Per-task pipeline series live in
//! `riffle_stream::metrics`.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_gauge, Histogram, IntCounter, IntGauge,
};

pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "riffle_ads_store_apply_seconds",
        "Duration of one aggregate store transaction of the writer",
        vec![
            0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0
        ]
    )
    .unwrap()
});

pub static ROWS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_ads_rows_applied_total",
        "Per-minute count rows upserted into the aggregate store"
    )
    .unwrap()
});

pub static PARTIALS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "riffle_ads_partial_tops_applied_total",
        "Partial top-N rows upserted (and merged) into the aggregate store"
    )
    .unwrap()
});

pub static RECONCILE_MISMATCHES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "riffle_ads_reconcile_mismatches",
        "Stored (ad, minute, filter) counts that differed from a recount of raw data in the last reconciliation"
    )
    .unwrap()
});
