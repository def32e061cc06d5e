//! The watermark tracker against a model that recomputes everything from the
//! raw history of observations, with a manual clock.

use std::collections::BTreeMap;

use proptest::prelude::*;
use riffle_core::time::{Clock, ManualClock};
use riffle_stream::{Lateness, LatenessPolicy, WatermarkConfig, WatermarkTracker, Window};

#[derive(Debug, Clone)]
enum Op {
    Observe { partition: u32, event_time: i64 },
    Advance(i64),
    Current,
    Add(u32),
    Remove(u32),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..4, -1_000i64..20_000)
            .prop_map(|(partition, event_time)| Op::Observe { partition, event_time }),
        3 => (0i64..1_500).prop_map(Op::Advance),
        4 => Just(Op::Current),
        1 => (0u32..6).prop_map(Op::Add),
        1 => (0u32..6).prop_map(Op::Remove),
    ]
}

/// Raw history per partition: registration time and every (wall, event time).
#[derive(Default)]
struct Model {
    partitions: BTreeMap<u32, (i64, Vec<(i64, i64)>)>,
    watermark: i64,
}

impl Model {
    fn candidate(&self, now: i64, config: WatermarkConfig) -> i64 {
        let active: Vec<i64> = self
            .partitions
            .values()
            .filter(|(registered, events)| {
                let last = events
                    .iter()
                    .map(|&(wall, _)| wall)
                    .fold(*registered, i64::max);
                now - last < config.idle_timeout_ms
            })
            .map(|(_, events)| match events.iter().map(|&(_, t)| t).max() {
                Some(max) => max - config.out_of_orderness_ms,
                None => i64::MIN,
            })
            .collect();
        match active.into_iter().min() {
            Some(min) => min,
            None => now - config.out_of_orderness_ms,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_min_over_active_partitions(
        out_of_orderness_ms in 0i64..500,
        idle_timeout_ms in 1i64..3_000,
        initial in prop::collection::btree_set(0u32..4, 0..4),
        ops in prop::collection::vec(op_strategy(), 1..120),
    ) {
        let config = WatermarkConfig { out_of_orderness_ms, idle_timeout_ms };
        let clock = ManualClock::new(1_000_000);
        let mut tracker = WatermarkTracker::new(config, clock.clone(), initial.iter().copied()).unwrap();
        let mut model = Model { watermark: i64::MIN, ..Model::default() };
        for &p in &initial {
            model.partitions.insert(p, (clock.now_ms(), Vec::new()));
        }
        for op in ops {
            match op {
                Op::Observe { partition, event_time } => {
                    tracker.observe(partition, event_time);
                    let now = clock.now_ms();
                    model.partitions.entry(partition).or_insert((now, Vec::new())).1.push((now, event_time));
                }
                Op::Advance(by) => clock.advance(by),
                Op::Add(p) => {
                    tracker.add_partition(p);
                    let now = clock.now_ms();
                    model.partitions.entry(p).or_insert((now, Vec::new()));
                }
                Op::Remove(p) => {
                    tracker.remove_partition(p);
                    model.partitions.remove(&p);
                }
                Op::Current => {
                    let before = tracker.last();
                    let got = tracker.current();
                    model.watermark = model.watermark.max(model.candidate(clock.now_ms(), config));
                    prop_assert!(got >= before, "watermark went back from {} to {}", before, got);
                    prop_assert_eq!(got, model.watermark);
                    for (&p, (registered, events)) in &model.partitions {
                        let last = events.iter().map(|&(wall, _)| wall).fold(*registered, i64::max);
                        prop_assert_eq!(tracker.is_idle(p), clock.now_ms() - last >= idle_timeout_ms);
                    }
                }
            }
        }
    }

    #[test]
    fn restore_never_moves_back(
        events in prop::collection::vec((0u32..3, 0i64..10_000), 1..40),
        later in prop::collection::vec((0u32..3, 0i64..10_000), 0..40),
    ) {
        let config = WatermarkConfig { out_of_orderness_ms: 100, idle_timeout_ms: 1_000 };
        let clock = ManualClock::new(0);
        let mut tracker = WatermarkTracker::new(config, clock.clone(), 0..3).unwrap();
        for &(p, t) in &events {
            tracker.observe(p, t);
        }
        let at_checkpoint = tracker.current();
        let snapshot: riffle_stream::WatermarkSnapshot =
            serde_json::from_str(&serde_json::to_string(&tracker.snapshot()).unwrap()).unwrap();
        let mut restored = WatermarkTracker::new(config, clock.clone(), 0..3).unwrap();
        restored.restore(&snapshot);
        prop_assert_eq!(restored.snapshot(), tracker.snapshot());
        prop_assert_eq!(restored.current(), at_checkpoint);
        // Same inputs afterwards, same watermark.
        for &(p, t) in &later {
            tracker.observe(p, t);
            restored.observe(p, t);
            prop_assert_eq!(restored.current(), tracker.current());
        }
    }

    #[test]
    fn lateness_matches_definition(
        start in -10_000i64..10_000,
        len in 1i64..5_000,
        allowed in 0i64..5_000,
        watermark in -20_000i64..20_000,
    ) {
        let window = Window { start, end: start + len };
        let policy = LatenessPolicy { allowed_lateness_ms: allowed };
        let expected = if watermark < window.end {
            Lateness::OnTime
        } else if watermark < window.end + allowed {
            Lateness::LateWithinAllowed
        } else {
            Lateness::TooLate
        };
        prop_assert_eq!(policy.classify(window, watermark), expected);
    }
}
