//! Model-based test: random appends, reads, timestamp seeks, commits,
//! retention and reopen against an in-memory model of a partitioned log
//! with segments.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use riffle_core::config::FsyncPolicy;
use riffle_core::time::ManualClock;
use riffle_log::{
    Admin, BusError, EmbeddedLog, LogOptions, Producer, RecordBatch, StartPosition, TopicConfig,
    TopicPartition,
};

const PARTITIONS: u32 = 2;
const SEGMENT_BYTES: u64 = 4096;
const RETENTION_BYTES: i64 = 12_000;
const RETENTION_MS: i64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: u32,
        records: Vec<(Option<u8>, usize, i64)>,
    },
    Read {
        partition: u32,
        offset_pick: u16,
        max_bytes: usize,
    },
    SeekTimestamp {
        partition: u32,
        ts: i64,
    },
    Commit {
        partition: u32,
        offset_pick: u16,
    },
    AdvanceClockAndRetain {
        ms: i64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, prop::collection::vec((prop::option::of(any::<u8>()), 0usize..600, 0i64..100_000), 1..12))
            .prop_map(|(partition, records)| Op::Append { partition, records }),
        3 => (0..PARTITIONS, any::<u16>(), 1usize..5000).prop_map(|(partition, offset_pick, max_bytes)| Op::Read { partition, offset_pick, max_bytes }),
        2 => (0..PARTITIONS, -10i64..110_000).prop_map(|(partition, ts)| Op::SeekTimestamp { partition, ts }),
        1 => (0..PARTITIONS, any::<u16>()).prop_map(|(partition, offset_pick)| Op::Commit { partition, offset_pick }),
        1 => (0i64..40_000).prop_map(|ms| Op::AdvanceClockAndRetain { ms }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    ts: i64,
}

#[derive(Debug, Default, Clone)]
struct Segment {
    base: u64,
    bytes: u64,
    max_ts: i64,
}

#[derive(Debug, Default)]
struct ModelPartition {
    records: BTreeMap<u64, Rec>,
    segments: Vec<Segment>,
    start: u64,
    end: u64,
}

impl ModelPartition {
    fn new() -> Self {
        ModelPartition {
            segments: vec![Segment {
                base: 0,
                bytes: 0,
                max_ts: i64::MIN,
            }],
            ..Default::default()
        }
    }

    fn append(&mut self, batch: &[Rec]) -> u64 {
        let bytes: u64 = 48
            + batch
                .iter()
                .map(|r| {
                    4 + 8
                        + 4
                        + r.key.as_ref().map_or(0, |k| k.len() as u64)
                        + 4
                        + r.value.len() as u64
                        + 2
                })
                .sum::<u64>();
        let active = self.segments.last().unwrap();
        if active.bytes > 0 && active.bytes + bytes > SEGMENT_BYTES {
            self.segments.push(Segment {
                base: self.end,
                bytes: 0,
                max_ts: i64::MIN,
            });
        }
        let base = self.end;
        let active = self.segments.last_mut().unwrap();
        active.bytes += bytes;
        for r in batch {
            active.max_ts = active.max_ts.max(r.ts);
            self.records.insert(self.end, r.clone());
            self.end += 1;
        }
        base
    }

    fn retain(&mut self, now: i64) {
        let mut total: i64 = self.segments.iter().map(|s| s.bytes as i64).sum();
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            let expired = s.max_ts < now - RETENTION_MS;
            let oversized = total - s.bytes as i64 >= RETENTION_BYTES;
            if !(expired || oversized) {
                break;
            }
            total -= s.bytes as i64;
            self.segments.remove(0);
        }
        self.start = self.segments[0].base;
        let start = self.start;
        self.records.retain(|o, _| *o >= start);
    }

    fn offset_for_ts(&self, ts: i64) -> u64 {
        self.records
            .iter()
            .find(|(_, r)| r.ts >= ts)
            .map(|(o, _)| *o)
            .unwrap_or(self.end)
    }
}

fn options() -> LogOptions {
    // The model checks logic, the crash test checks durability.
    LogOptions {
        fsync: FsyncPolicy::Never,
        index_interval_bytes: 512,
        ..LogOptions::default()
    }
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> EmbeddedLog {
    EmbeddedLog::open_with_clock(dir, options(), Arc::new(clock.clone())).unwrap()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100_000);
    let mut log = open(dir.path(), &clock);
    rt.block_on(log.create_topic(
        "t",
        TopicConfig {
            partitions: PARTITIONS,
            retention_ms: RETENTION_MS,
            retention_bytes: RETENTION_BYTES,
            segment_bytes: SEGMENT_BYTES,
        },
    ))
    .unwrap();
    let mut model: Vec<ModelPartition> = (0..PARTITIONS).map(|_| ModelPartition::new()).collect();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append { partition, records } => {
                let recs: Vec<Rec> = records
                    .into_iter()
                    .map(|(key, len, ts)| {
                        counter += 1;
                        let mut value = format!("{counter}:").into_bytes();
                        value.resize(value.len() + len, b'x');
                        Rec {
                            key: key.map(|k| vec![k; (k % 5) as usize]),
                            value,
                            ts,
                        }
                    })
                    .collect();
                let mut batch = RecordBatch::new();
                for r in &recs {
                    batch.push(r.key.as_deref(), &r.value, r.ts);
                }
                let base = rt.block_on(log.append("t", partition, batch)).unwrap();
                let expected = model[partition as usize].append(&recs);
                prop_assert_eq!(base, expected);
            }
            Op::Read {
                partition,
                offset_pick,
                max_bytes,
            } => {
                let m = &model[partition as usize];
                let span = m.end - m.start + 3;
                let offset = (m.start + offset_pick as u64 % span).saturating_sub(1);
                let result = rt.block_on(log.fetch("t", partition, offset, max_bytes));
                if offset < m.start || offset > m.end {
                    prop_assert!(
                        matches!(result, Err(BusError::OffsetOutOfRange { .. })),
                        "offset {} gave {:?}",
                        offset,
                        result.map(|b| b.records.len())
                    );
                    continue;
                }
                let batch = result.unwrap();
                prop_assert_eq!(batch.high_watermark, m.end);
                if offset < m.end {
                    prop_assert!(!batch.records.is_empty(), "no records at {}", offset);
                }
                for (expected_offset, r) in (offset..).zip(batch.records.iter()) {
                    prop_assert_eq!(r.offset, expected_offset);
                    let want = &m.records[&r.offset];
                    prop_assert_eq!(r.key, want.key.as_deref());
                    prop_assert_eq!(r.value, &want.value[..]);
                    prop_assert_eq!(r.timestamp, want.ts);
                }
            }
            Op::SeekTimestamp { partition, ts } => {
                let got = rt
                    .block_on(log.resolve_offset("t", partition, StartPosition::Timestamp(ts)))
                    .unwrap();
                prop_assert_eq!(
                    got,
                    model[partition as usize].offset_for_ts(ts),
                    "timestamp {}",
                    ts
                );
            }
            Op::Commit {
                partition,
                offset_pick,
            } => {
                let m = &model[partition as usize];
                let offset = m.start + offset_pick as u64 % (m.end - m.start + 1);
                rt.block_on(
                    log.commit_offsets("g", &[(TopicPartition::new("t", partition), offset)]),
                )
                .unwrap();
                committed.insert(partition, offset);
            }
            Op::AdvanceClockAndRetain { ms } => {
                clock.advance(ms);
                log.enforce_retention().unwrap();
                for m in model.iter_mut() {
                    m.retain(riffle_core::time::Clock::now_ms(&clock));
                }
            }
            Op::Reopen => {
                log.close().unwrap();
                drop(log);
                log = open(dir.path(), &clock);
                prop_assert!(
                    log.recovery_truncations().is_empty(),
                    "clean reopen truncated {:?}",
                    log.recovery_truncations()
                );
            }
        }
        let description = rt.block_on(log.describe_topic("t")).unwrap();
        for p in &description.partitions {
            let m = &model[p.partition as usize];
            prop_assert_eq!(
                (p.start_offset, p.end_offset),
                (m.start, m.end),
                "partition {}",
                p.partition
            );
        }
        prop_assert_eq!(
            &rt.block_on(log.committed_offsets("g", "t")).unwrap(),
            &committed
        );
    }
    log.close().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
