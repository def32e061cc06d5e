//! The repartition step, model-checked: records land on arbitrary input
//! partitions (as a producer with another partitioner, or without keys,
//! would put them), some twice on different partitions; tasks run with
//! random emit and checkpoint intervals and are killed (aborted mid-flight)
//! and restarted at random points. The final counts per key must equal
//! those of a correctly partitioned run — the number of distinct ids per
//! key, which no processing order changes — and the order-dependent part of
//! the output (the first id each task saw per key) must never change once
//! emitted, which holds only if replay follows the order of the first run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use riffle_core::time::{Clock, SystemClock};
use riffle_log::{
    Admin, EmbeddedLog, EventBus, LogOptions, RecordBatch, StartPosition, TopicConfig,
};
use riffle_stream::{
    run_task, CheckpointStore, Collector, FsCheckpointStore, Operator, RepartitionConfig, Sink,
    SinkRecord, SourceBatch, StreamError, TaskConfig, TaskStatus,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 3;
const INPUT: &str = "in";
const OUTPUT: &str = "out";
const REPARTITION: &str = "keycount.repartition";
const PIPELINE: &str = "keycount";
const COUNTS: Sink = Sink::named("counts");

/// Counts distinct ids per key; remembers the first id it processed per key.
#[derive(Default)]
struct KeyCount {
    seen: BTreeSet<u32>,
    counts: BTreeMap<u8, (u64, u32)>,
    dirty: BTreeSet<u8>,
}

fn decode(value: &[u8]) -> Result<(u32, u8), StreamError> {
    if value.len() != 5 {
        return Err(StreamError::Operator {
            operator: "keycount".into(),
            reason: format!("record of {} bytes", value.len()),
        });
    }
    Ok((
        u32::from_le_bytes(value[..4].try_into().expect("4")),
        value[4],
    ))
}

impl Operator for KeyCount {
    type In<'a> = SourceBatch<'a>;
    type Out = SinkRecord;

    fn name(&self) -> &str {
        "keycount"
    }

    fn process_batch<'a>(
        &mut self,
        batch: SourceBatch<'a>,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        for record in batch.iter() {
            let (id, key) = decode(record.value)?;
            if batch.forward_to(&[key]).is_some() {
                out.collect(SinkRecord::forward(&batch, &record, &[key]));
                continue;
            }
            if !self.seen.insert(id) {
                continue;
            }
            let entry = self.counts.entry(key).or_insert((0, id));
            entry.0 += 1;
            self.dirty.insert(key);
        }
        Ok(())
    }

    fn handle_tick(
        &mut self,
        _now: i64,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            let (count, first) = self.counts[&key];
            let mut value = count.to_le_bytes().to_vec();
            value.extend_from_slice(&first.to_le_bytes());
            out.collect(SinkRecord {
                sink: COUNTS,
                key: Some(vec![key]),
                value,
                timestamp: 0,
                headers: Vec::new(),
            });
        }
        Ok(())
    }

    fn handle_checkpoint(
        &mut self,
        _id: riffle_stream::CheckpointId,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<Vec<u8>> {
        self.handle_tick(0, out)?;
        let mut state = Vec::new();
        state.extend_from_slice(&(self.seen.len() as u32).to_le_bytes());
        for id in &self.seen {
            state.extend_from_slice(&id.to_le_bytes());
        }
        for (key, (count, first)) in &self.counts {
            state.push(*key);
            state.extend_from_slice(&count.to_le_bytes());
            state.extend_from_slice(&first.to_le_bytes());
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[u8]) -> riffle_stream::Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        let n = u32::from_le_bytes(state[..4].try_into().expect("4")) as usize;
        let mut at = 4;
        for _ in 0..n {
            self.seen
                .insert(u32::from_le_bytes(state[at..at + 4].try_into().expect("4")));
            at += 4;
        }
        while at < state.len() {
            let key = state[at];
            let count = u64::from_le_bytes(state[at + 1..at + 9].try_into().expect("8"));
            let first = u32::from_le_bytes(state[at + 9..at + 13].try_into().expect("4"));
            self.counts.insert(key, (count, first));
            at += 13;
        }
        Ok(())
    }
}

/// One input record: an id, its key, and where the producer put it.
#[derive(Debug, Clone)]
struct Input {
    id: u32,
    key: u8,
    partition: u32,
}

#[derive(Debug, Clone)]
struct Scenario {
    chunks: Vec<Vec<Input>>,
    /// After chunk i, kill the task of this partition (if any).
    kills: Vec<Option<u32>>,
    emit_ms: u64,
    checkpoint_ms: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let record = (
        0u8..12,
        0u32..PARTITIONS,
        0u32..PARTITIONS,
        prop::bool::weighted(0.1),
    );
    (
        prop::collection::vec(prop::collection::vec(record, 1..60), 2..8),
        5u64..40,
        20u64..200,
        prop::collection::vec(prop::option::weighted(0.6, 0u32..PARTITIONS), 8),
    )
        .prop_map(|(chunks, emit_ms, checkpoint_ms, kills)| {
            let mut next_id = 0u32;
            let chunks = chunks
                .into_iter()
                .map(|chunk| {
                    let mut out = Vec::new();
                    for (key, partition, dup_partition, duplicate) in chunk {
                        let id = next_id;
                        next_id += 1;
                        out.push(Input { id, key, partition });
                        if duplicate {
                            // The same record again, through another path.
                            out.push(Input {
                                id,
                                key,
                                partition: dup_partition,
                            });
                        }
                    }
                    out
                })
                .collect();
            Scenario {
                chunks,
                kills,
                emit_ms,
                checkpoint_ms,
            }
        })
}

struct Harness {
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    emit: Duration,
    checkpoint: Duration,
    shutdown: watch::Sender<bool>,
    tasks: BTreeMap<u32, JoinHandle<()>>,
}

impl Harness {
    /// Starts (or restarts) the task of `partition`: a supervisor that
    /// restarts it when it fails (e.g. it met a round record of the killed
    /// run, which finished a commit after the kill).
    fn start(&mut self, partition: u32) {
        let config = TaskConfig {
            pipeline: PIPELINE.into(),
            input_topic: INPUT.into(),
            partition,
            sinks: vec![(COUNTS, OUTPUT.into())],
            repartition: Some(RepartitionConfig {
                topic: REPARTITION.into(),
                partitions: PARTITIONS,
            }),
            emit_interval: self.emit,
            checkpoint_interval: self.checkpoint,
            max_poll_bytes: 256,
            stop_at: None,
        };
        let (bus, checkpoints) = (self.bus.clone(), self.checkpoints.clone());
        let shutdown = self.shutdown.subscribe();
        let handle = tokio::spawn(async move {
            loop {
                let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                let result = run_task(
                    bus.clone(),
                    checkpoints.clone(),
                    clock,
                    config.clone(),
                    KeyCount::default(),
                    Arc::new(TaskStatus::new(partition)),
                    shutdown.clone(),
                )
                .await;
                if result.is_ok() || *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        self.tasks.insert(partition, handle);
    }

    async fn kill(&mut self, partition: u32) {
        if let Some(handle) = self.tasks.remove(&partition) {
            handle.abort();
            let _ = handle.await;
        }
        self.start(partition);
    }
}

/// Every record of `topic` (all partitions), in partition then offset order.
async fn read_all(bus: &dyn EventBus, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for partition in 0..PARTITIONS {
        let end = bus
            .resolve_offset(topic, partition, StartPosition::Latest)
            .await
            .unwrap();
        let mut offset = 0;
        while offset < end {
            let fetched = bus.fetch(topic, partition, offset, 1 << 20).await.unwrap();
            for record in fetched.records.iter() {
                out.push((
                    record.key.unwrap_or_default().to_vec(),
                    record.value.to_vec(),
                ));
                offset = record.offset + 1;
            }
        }
    }
    out
}

/// Final (count, first) per key from the output, checking that a key's
/// first id never changed between its records.
fn final_counts(output: &[(Vec<u8>, Vec<u8>)]) -> Result<BTreeMap<u8, u64>, String> {
    let mut counts = BTreeMap::new();
    let mut firsts: BTreeMap<u8, u32> = BTreeMap::new();
    for (key, value) in output {
        let key = key[0];
        let count = u64::from_le_bytes(value[..8].try_into().unwrap());
        let first = u32::from_le_bytes(value[8..12].try_into().unwrap());
        if let Some(previous) = firsts.insert(key, first) {
            if previous != first {
                return Err(format!(
                    "key {key}: first id changed from {previous} to {first}: replay did not follow the first run's order"
                ));
            }
        }
        counts.insert(key, count);
    }
    Ok(counts)
}

fn run(scenario: Scenario) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    run_in(scenario, dir.path())
}

/// Runs `scenario` on a log under `dir` (kept after the run).
fn run_in(scenario: Scenario, dir: &std::path::Path) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let root = dir.join("log");
        let log =
            tokio::task::spawn_blocking(move || EmbeddedLog::open(root, LogOptions::default()))
                .await
                .unwrap()
                .unwrap();
        let bus: Arc<dyn EventBus> = Arc::new(log);
        let topic = TopicConfig {
            partitions: PARTITIONS,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: 1 << 20,
        };
        for name in [INPUT, OUTPUT, REPARTITION] {
            bus.create_topic(name, topic.clone()).await.unwrap();
        }
        let (shutdown, _) = watch::channel(false);
        let mut harness = Harness {
            bus: bus.clone(),
            checkpoints: Arc::new(FsCheckpointStore::new(dir.join("checkpoints"))),
            emit: Duration::from_millis(scenario.emit_ms),
            checkpoint: Duration::from_millis(scenario.checkpoint_ms),
            shutdown,
            tasks: BTreeMap::new(),
        };
        for partition in 0..PARTITIONS {
            harness.start(partition);
        }
        let mut expected: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
        for (i, chunk) in scenario.chunks.iter().enumerate() {
            let mut batches: Vec<RecordBatch> =
                (0..PARTITIONS).map(|_| RecordBatch::new()).collect();
            for input in chunk {
                expected.entry(input.key).or_default().insert(input.id);
                let mut value = input.id.to_le_bytes().to_vec();
                value.push(input.key);
                // No key: the producer's partition is all there is.
                batches[input.partition as usize].push(None, &value, 0);
            }
            for (partition, batch) in batches.into_iter().enumerate() {
                if !batch.is_empty() {
                    bus.append(INPUT, partition as u32, batch).await.unwrap();
                }
            }
            if let Some(Some(partition)) = scenario.kills.get(i) {
                tokio::time::sleep(Duration::from_millis(scenario.emit_ms)).await;
                harness.kill(*partition).await;
            }
        }
        let expected: BTreeMap<u8, u64> = expected
            .into_iter()
            .map(|(key, ids)| (key, ids.len() as u64))
            .collect();
        // Wait (bounded) for the output to converge; a wrong implementation
        // fails here with the last difference.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last;
        loop {
            let output = read_all(bus.as_ref(), OUTPUT).await;
            let counts = final_counts(&output).map_err(TestCaseError::fail)?;
            if counts == expected {
                break;
            }
            last = format!("counts {counts:?}\nexpected {expected:?}");
            if tokio::time::Instant::now() >= deadline {
                return Err(TestCaseError::fail(last));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        harness.shutdown.send(true).unwrap();
        for (_, handle) in std::mem::take(&mut harness.tasks) {
            handle.await.unwrap();
        }
        // After a clean stop the output still agrees, and nothing was
        // counted twice on the way.
        let output = read_all(bus.as_ref(), OUTPUT).await;
        let counts = final_counts(&output).map_err(TestCaseError::fail)?;
        prop_assert_eq!(counts, expected);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_partitioning_and_kills_count_like_a_correctly_partitioned_run(s in scenario()) {
        run(s)?;
    }
}

/// A task reading only records already on their partition forwards
/// nothing and writes no round record: the repartition topic stays empty.
#[test]
fn correctly_partitioned_input_costs_no_repartition_writes() {
    let scenario = Scenario {
        chunks: vec![(0..50)
            .map(|id| {
                let key = (id % 12) as u8;
                Input {
                    id,
                    key,
                    partition: riffle_log::partition_for_key(&[key], PARTITIONS),
                }
            })
            .collect()],
        kills: vec![None],
        emit_ms: 10,
        checkpoint_ms: 50,
    };
    let dir = tempfile::tempdir().unwrap();
    run_in(scenario, dir.path()).unwrap();
    let log = EmbeddedLog::open(dir.path().join("log"), LogOptions::default()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for partition in 0..PARTITIONS {
            let end = log
                .resolve_offset(REPARTITION, partition, StartPosition::Latest)
                .await
                .unwrap();
            assert_eq!(end, 0, "partition {partition} of the repartition topic");
        }
    });
}
