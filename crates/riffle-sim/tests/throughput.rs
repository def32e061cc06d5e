//! Generation rate, measured, never asserted (timing depends on the machine):
//! `cargo test -p riffle-sim --release --test throughput -- --ignored --nocapture`

use std::time::Instant;

use riffle_sim::ads::{AdsConfig, AdsGenerator};

fn config() -> AdsConfig {
    AdsConfig {
        ads: 2_000_000,
        count: Some(5_000_000),
        duplicate_fraction: 0.05,
        out_of_order_fraction: 0.05,
        late_within_fraction: 0.01,
        late_beyond_fraction: 0.01,
        rate: 50_000.0,
        ..AdsConfig::default()
    }
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn generation_rate() {
    let n = config().count.unwrap();
    let setup = Instant::now();
    let mut generator = AdsGenerator::new(config()).unwrap();
    let setup = setup.elapsed();
    generator.track_truth(false);
    let start = Instant::now();
    let mut checksum = 0u64;
    for e in generator.by_ref() {
        checksum = checksum.wrapping_add(e.ad as u64 ^ e.event_time_ms as u64);
    }
    let events_only = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(generator.emitted(), n);

    let mut generator = AdsGenerator::new(config()).unwrap();
    let mut out = Vec::with_capacity(256);
    let mut bytes = 0usize;
    let start = Instant::now();
    while let Some(e) = generator.next_event() {
        out.clear();
        generator.write_json(&e, &mut out);
        out.push(b'\n');
        bytes += out.len();
    }
    let with_json_and_truth = n as f64 / start.elapsed().as_secs_f64();
    let truth = generator.truth().unwrap();
    assert_eq!(truth.summary.events, n);
    println!(
        "2M ads, {n} events: zipf table {setup:?}; events only {:.2} M/s; \
         + JSON + ground truth {:.2} M/s ({} MB of NDJSON, {} truth cells; checksum {checksum})",
        events_only / 1e6,
        with_json_and_truth / 1e6,
        bytes / 1_000_000,
        truth.counts.len()
    );
}
