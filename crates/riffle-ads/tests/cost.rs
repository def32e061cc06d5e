//! Measures (does not assert) the cost of the two hot store operations on
//! the redb backend. Run in release, on the disk that holds the target dir:
//!
//! ```text
//! cargo test -p riffle-ads --release --test cost -- --ignored --nocapture
//! ```

use std::time::Instant;

use riffle_ads::{AggregateRow, AggregateStore, RedbAggregateStore, WriteBatch, MINUTE_MS};
use riffle_testkit::Latencies;

const T0: i64 = 28_333_333 * MINUTE_MS;
const ADS: usize = 1_000;
const MINUTES: i64 = 120;
const FILTERS: u32 = 2;

#[test]
#[ignore = "measurement; run explicitly in release"]
fn measure_apply_and_count() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = RedbAggregateStore::open(dir.path().join("aggregates.redb")).unwrap();

    // 240 batches of 1,000 rows: one minute of 500 ads × 2 filters each.
    let mut apply_times = Latencies::new();
    for minute in 0..MINUTES {
        for half in 0..2 {
            let rows = (half * ADS / 2..(half + 1) * ADS / 2)
                .flat_map(|ad| {
                    (0..FILTERS).map(move |filter| {
                        AggregateRow::new(
                            T0 + minute * MINUTE_MS,
                            format!("ad-{ad:07}"),
                            filter,
                            (ad as u64 + 1) * (minute as u64 + 1),
                        )
                    })
                })
                .collect::<Vec<_>>();
            assert_eq!(rows.len(), 1_000);
            let batch = WriteBatch {
                rows,
                ..WriteBatch::default()
            };
            let started = Instant::now();
            store.apply(&batch).unwrap();
            apply_times.record(started.elapsed());
        }
    }

    let mut count_times = Latencies::new();
    let mut checksum = 0u64;
    for i in 0..20_000usize {
        let ad = format!("ad-{:07}", (i * 7919) % ADS);
        let from = T0 + ((i as i64) % (MINUTES - 60)) * MINUTE_MS;
        let started = Instant::now();
        checksum = checksum.wrapping_add(store.count(&ad, 0, from, from + 60 * MINUTE_MS).unwrap());
        count_times.record(started.elapsed());
    }
    println!(
        "apply 1,000 rows (fsynced commit, {} batches, store grows to {} rows): p50 {:?}, p99 {:?}, max {:?}",
        apply_times.len(),
        ADS as i64 * MINUTES * FILTERS as i64,
        apply_times.quantile(0.5),
        apply_times.quantile(0.99),
        apply_times.quantile(1.0)
    );
    println!(
        "count over 60 minutes ({} queries): p50 {:?}, p99 {:?}, max {:?} (checksum {checksum})",
        count_times.len(),
        count_times.quantile(0.5),
        count_times.quantile(0.99),
        count_times.quantile(1.0)
    );
}
