//! Deduplication against a HashMap model with the same horizon semantics.

use std::collections::HashMap;

use proptest::prelude::*;
use riffle_stream::{DedupConfig, Deduplicator, Verdict};

#[derive(Debug, Clone)]
enum Op {
    Insert { id: u8, event_time: i64 },
    Evict(i64),
    SnapshotRestore,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..60, -500i64..3_000).prop_map(|(id, event_time)| Op::Insert { id, event_time }),
        2 => (-500i64..4_000).prop_map(Op::Evict),
        1 => Just(Op::SnapshotRestore),
    ]
}

fn event_id(id: u8) -> Vec<u8> {
    format!("evt-{id}").into_bytes()
}

/// id → event time of the accepted occurrence; an id is held while its
/// bucket `[floor(t / b)·b, +b)` ends after the expiry bound.
struct Model {
    config: DedupConfig,
    accepted: HashMap<u8, i64>,
    expiry: i64,
}

impl Model {
    fn held(&self, event_time: i64) -> bool {
        let bucket_start = event_time - event_time.rem_euclid(self.config.bucket_ms);
        bucket_start + self.config.bucket_ms > self.expiry
    }

    fn check_and_insert(&mut self, id: u8, event_time: i64) -> Verdict {
        if event_time < self.expiry {
            return Verdict::Expired;
        }
        if let Some(&first) = self.accepted.get(&id) {
            if self.held(first) {
                return Verdict::Duplicate;
            }
        }
        self.accepted.insert(id, event_time);
        Verdict::New
    }

    fn evict(&mut self, watermark: i64) {
        self.expiry = self.expiry.max(watermark - self.config.horizon_ms);
    }

    fn held_count(&self) -> usize {
        self.accepted.values().filter(|&&t| self.held(t)).count()
    }
}

fn config_strategy() -> impl Strategy<Value = DedupConfig> {
    (0i64..600, 1i64..200, any::<u64>()).prop_map(|(horizon_ms, bucket_ms, seed)| DedupConfig {
        horizon_ms,
        bucket_ms,
        seed,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_model(config in config_strategy(), ops in prop::collection::vec(op_strategy(), 1..200)) {
        let mut dedup = Deduplicator::new(config, 0).unwrap();
        let mut model = Model { config, accepted: HashMap::new(), expiry: i64::MIN };
        for op in ops {
            match op {
                Op::Insert { id, event_time } => {
                    let got = dedup.check_and_insert(&event_id(id), event_time);
                    prop_assert_eq!(got, model.check_and_insert(id, event_time), "id {} at {}", id, event_time);
                }
                Op::Evict(watermark) => {
                    dedup.evict(watermark);
                    model.evict(watermark);
                    prop_assert_eq!(dedup.expiry(), model.expiry);
                    // Only ids within the horizon (rounded out to a bucket) are held.
                    prop_assert_eq!(dedup.len(), model.held_count());
                    for (&id, &t) in &model.accepted {
                        prop_assert_eq!(dedup.contains(&event_id(id)), model.held(t));
                        if model.held(t) {
                            prop_assert!(t >= model.expiry - config.bucket_ms);
                        }
                    }
                    if let Some((start, end)) = dedup.oldest_bucket() {
                        prop_assert!(end > model.expiry, "bucket [{}, {}) should be gone", start, end);
                    }
                }
                Op::SnapshotRestore => {
                    let bytes = dedup.snapshot();
                    let restored = Deduplicator::restore(config, 0, &bytes).unwrap();
                    prop_assert_eq!(&restored, &dedup);
                    prop_assert_eq!(restored.snapshot(), bytes);
                    dedup = restored;
                }
            }
        }
    }

    #[test]
    fn restored_copy_gives_identical_verdicts(
        config in config_strategy(),
        before in prop::collection::vec(op_strategy(), 0..100),
        after in prop::collection::vec(op_strategy(), 0..100),
    ) {
        let mut original = Deduplicator::new(config, 0).unwrap();
        let apply = |dedup: &mut Deduplicator, op: &Op| match *op {
            Op::Insert { id, event_time } => Some(dedup.check_and_insert(&event_id(id), event_time)),
            Op::Evict(watermark) => {
                dedup.evict(watermark);
                None
            }
            Op::SnapshotRestore => None,
        };
        for op in &before {
            apply(&mut original, op);
        }
        let mut restored = Deduplicator::restore(config, 0, &original.snapshot()).unwrap();
        for op in &after {
            prop_assert_eq!(apply(&mut restored, op), apply(&mut original, op));
        }
        prop_assert_eq!(restored.snapshot(), original.snapshot());
    }

    #[test]
    fn any_damaged_byte_is_rejected(
        inserts in prop::collection::vec((0u8..60, -500i64..3_000), 0..50),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let config = DedupConfig { horizon_ms: 100, bucket_ms: 10, seed: 1 };
        let mut dedup = Deduplicator::new(config, 0).unwrap();
        for (id, t) in inserts {
            dedup.check_and_insert(&event_id(id), t);
        }
        let mut bytes = dedup.snapshot();
        let at = position.index(bytes.len());
        bytes[at] ^= flip;
        prop_assert!(Deduplicator::restore(config, 0, &bytes).is_err());
        bytes.truncate(at);
        prop_assert!(Deduplicator::restore(config, 0, &bytes).is_err());
    }
}
