//! The task runtime: one task per input partition drives an [`Operator`]
//! from the bus, emits its output through bus transactions and takes
//! checkpoints.
//!
//! # Exactly-once protocol (see docs/adr/0002)
//!
//! * **Emit** (every `emit_interval`, and before every checkpoint): the
//!   operator's tick output and the input offset reached are committed in
//!   one [`Transaction`]: output batches to the sink topics (same partition
//!   number as the input) plus the group offset `(pipeline, input) →
//!   position`. So the committed group offset always names exactly the input
//!   whose output is in the sink topics.
//! * **Checkpoint** (every `checkpoint_interval`): emit first (so the state
//!   covers exactly the committed position), then store the operator's state
//!   with that position in the [`CheckpointStore`].
//! * **Restore**: load the newest checkpoint (state + offset `c`; none → the
//!   partition's first offset), read the committed offset `k ≥ c`, replay
//!   from `c`. Output produced for input before `k` was committed before the
//!   crash, so the runtime processes `[c, k)` and discards what the operator
//!   emits for it — at `k` exactly, including the operator's pending tick
//!   output. The operator is deterministic in its input, so from `k` on it
//!   emits what the uninterrupted run would have. Sinks downstream are
//!   idempotent upserts keyed by (window, key) in any case, so even a bus
//!   without transactions would only repeat rows, never change results.
//! * **Shutdown**: emit and checkpoint, so a clean restart replays nothing.
//!
//! # Repartitioning
//!
//! Other producers do not partition the way a pipeline needs (librdkafka's
//! default partitioner is not murmur2, and keys may be absent or
//! different), so a task can send a record to the task that owns its key:
//! with [`TaskConfig::repartition`] set, the operator asks
//! [`SourceBatch::forward_to`] where a record belongs and emits
//! [`SinkRecord::forward`] for one that is not its own. Forwarded records go
//! to the same-numbered partition of the repartition topic
//! (`<pipeline>.repartition`, one partition per input partition) in the
//! emit transaction, like any output; each task reads its input partition
//! *and* its repartition partition.
//!
//! Replay must process the two in the same order as the first run, or a
//! decision that depends on order (lateness against the watermark, which
//! copy of a duplicate wins) could differ from what was already emitted.
//! So the order is written down, in the repartition partition itself:
//!
//! * A task processes its input records as they arrive, and the forwarded
//!   records it has read only at the end of an emit round, after them. A
//!   round that processed forwarded records appends a **round record** to
//!   its own repartition partition in the round's transaction: `(task
//!   incarnation, round number, input offset I, repartition offset R)` —
//!   "input up to I, then forwarded records up to R".
//! * Replay reads the repartition partition from the checkpoint on and
//!   follows the round records in order (round number = previous + 1; the
//!   first one in the log wins): input to `I`, then forwarded records to
//!   `R`. Output is dropped until the committed pair of offsets is reached.
//!   A round record always follows the records it covers in the log, so
//!   replay never waits for data it does not have.
//! * A live task that reads a *newer* round record it did not write (a
//!   zombie of a previous owner) fails and restarts, following the log.
//! * Every forwarded record carries its origin (source partition, source
//!   offset); a task skips a forwarded record whose origin it has already
//!   passed, so a source that re-forwards after a crash (Kafka without
//!   transactions) never makes a record count twice, with or without an
//!   `event_id`.
//!
//! Records already on the right partition cost nothing extra: no write, no
//! round record (rounds without forwarded records write none).
//!
//! Backpressure: the task polls at most `max_poll_bytes` at a time and
//! awaits every transaction, so it never reads faster than its output is
//! made durable; memory is the operator's state plus one poll (and the
//! forwarded records of one round).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use riffle_core::codec::Reader;
use riffle_core::time::Clock;
use riffle_log::{
    partition_for_key, Consumer, ConsumerConfig, EventBus, RecordBatch, RecordSet, RecordView,
    StartPosition, TopicPartition,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::{CheckpointStore, RepartitionPosition, TaskCheckpoint};
use crate::error::{Result, StreamError};
use crate::metrics;
use crate::operator::{
    CheckpointId, Collector, CounterSpec, Operator, OperatorProgress, MAX_COUNTERS,
};

/// Header of a forwarded record: source partition (u32 LE) + source offset
/// (u64 LE).
pub const ORIGIN_HEADER: &str = "riffle-origin";
/// Header of a round record: incarnation, round, input offset, repartition
/// offset (4 × u64 LE).
pub const ROUND_HEADER: &str = "riffle-round";
/// Names one output of an operator. The operator declares its sinks as
/// constants and emits to them by name; a task binds each name to a topic
/// ([`TaskConfig::sinks`]), so adding an output cannot shift the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sink(&'static str);

impl Sink {
    /// A sink called `name` (unique among a task's sinks).
    pub const fn named(name: &'static str) -> Sink {
        Sink(name)
    }

    /// A record forwarded through the repartition topic to the task owning
    /// its key (see [`SinkRecord::forward`]); never bound to a topic.
    pub const FORWARD: Sink = Sink("riffle.forward");

    pub fn name(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
/// Forwarded records buffered in one round before the task ends the round
/// early (bounds the memory of a flood of forwarded records).
const MAX_PENDING_BYTES: usize = 16 << 20;

/// A borrowed view of the input records of one poll, limited to the offsets
/// `[from, until)` the runtime wants processed now.
#[derive(Clone, Copy)]
pub struct SourceBatch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    records: &'a RecordSet,
    from: u64,
    until: u64,
    /// The input's partition count when records may be forwarded; 0 when
    /// the task has no repartition topic.
    partitions: u32,
    /// Records of the repartition topic (already on their partition).
    forwarded: bool,
    /// Offsets to pass over, ascending (round records, repeated forwards).
    skip: &'a [u64],
}

impl<'a> SourceBatch<'a> {
    /// A batch of every record of `records` with an offset in `[from, until)`.
    pub fn new(
        topic: &'a str,
        partition: u32,
        records: &'a RecordSet,
        from: u64,
        until: u64,
    ) -> Self {
        SourceBatch {
            topic,
            partition,
            records,
            from,
            until,
            partitions: 0,
            forwarded: false,
            skip: &[],
        }
    }

    /// The batch of a task whose input has `partitions` partitions, so
    /// that [`SourceBatch::forward_to`] tells records of other partitions'
    /// keys (the runtime sets it for tasks with a repartition topic).
    pub fn routed(self, partitions: u32) -> Self {
        SourceBatch { partitions, ..self }
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordView<'a>> + 'a {
        let (from, until, skip) = (self.from, self.until, self.skip);
        self.records
            .iter()
            .skip_while(move |r| r.offset < from)
            .take_while(move |r| r.offset < until)
            .filter(move |r| skip.is_empty() || skip.binary_search(&r.offset).is_err())
    }

    /// Where a record with partition key `key` must be processed: `Some(p)`
    /// when it belongs to another partition's task and the operator should
    /// emit [`SinkRecord::forward`] to it; `None` to process it here (it is
    /// on its partition, was forwarded already, or the task does not
    /// repartition).
    pub fn forward_to(&self, key: &[u8]) -> Option<u32> {
        if self.partitions == 0 || self.forwarded {
            return None;
        }
        let owner = partition_for_key(key, self.partitions);
        (owner != self.partition).then_some(owner)
    }

    /// Whether these records came through the repartition topic.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }
}

/// One output record of a task. It goes to the topic the [`TaskConfig`]
/// binds to `sink`, in the same partition number as the task's input; with
/// [`Sink::FORWARD`], to the repartition topic's partition of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub sink: Sink,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: i64,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl SinkRecord {
    /// `record` of `batch`, forwarded unchanged (value and timestamp) to the
    /// task owning partition key `key` (see [`SourceBatch::forward_to`]).
    pub fn forward(batch: &SourceBatch<'_>, record: &RecordView<'_>, key: &[u8]) -> SinkRecord {
        let mut origin = Vec::with_capacity(12);
        origin.extend_from_slice(&batch.partition.to_le_bytes());
        origin.extend_from_slice(&record.offset.to_le_bytes());
        SinkRecord {
            sink: Sink::FORWARD,
            key: Some(key.to_vec()),
            value: record.value.to_vec(),
            timestamp: record.timestamp,
            headers: vec![(ORIGIN_HEADER, origin)],
        }
    }
}

/// The repartition topic of a task (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepartitionConfig {
    /// `<pipeline>.repartition`, with as many partitions as the input.
    pub topic: String,
    /// The input topic's partition count: keys map to partitions modulo it
    /// (Kafka's murmur2, as ingest routes them).
    pub partitions: u32,
}

/// How a task runs.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The pipeline name: the consumer group of its input offsets and the
    /// directory of its checkpoints.
    pub pipeline: String,
    pub input_topic: String,
    pub partition: u32,
    /// The topic of each sink the operator emits to ([`SinkRecord::sink`]).
    pub sinks: Vec<(Sink, String)>,
    /// Where records of other partitions' keys go; `None`: the operator
    /// processes everything in place.
    pub repartition: Option<RepartitionConfig>,
    pub emit_interval: Duration,
    pub checkpoint_interval: Duration,
    pub max_poll_bytes: usize,
    /// Bounded run: stop (after a final emit and checkpoint) once every
    /// record before this offset is processed.
    pub stop_at: Option<u64>,
}

/// The last checkpoint of a task, as reported by `GET /v1/pipelines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub id: CheckpointId,
    pub input_offset: u64,
    pub at_ms: i64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// A point-in-time view of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskSnapshot {
    pub partition: u32,
    /// `restoring`, `replaying`, `running`, `stopped` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    /// The next input offset to process.
    pub processed_offset: u64,
    /// The input partition's end offset at the last poll.
    pub end_offset: u64,
    /// The committed offset: everything before it has its output durable.
    pub committed_offset: u64,
    pub watermark: Option<i64>,
    pub max_event_time: Option<i64>,
    pub records_in: u64,
    pub records_out: u64,
    /// Input records sent to another partition's task (repartition topic).
    pub forwarded_out: u64,
    /// Records other tasks forwarded to this one, processed.
    pub forwarded_in: u64,
    /// The next offset of the repartition partition to process.
    pub repartition_offset: Option<u64>,
    /// The operator's own counters by name ([`Operator::counters`]).
    #[serde(flatten)]
    pub counters: BTreeMap<&'static str, u64>,
    pub restored_from: Option<CheckpointId>,
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Wall clock of the last record seen (for idleness).
    pub last_record_ms: Option<i64>,
}

/// Shared, lock-protected status of one task; the task writes it after
/// every poll, readers copy it.
#[derive(Debug, Default)]
pub struct TaskStatus {
    inner: Mutex<TaskSnapshot>,
}

impl TaskStatus {
    pub fn new(partition: u32) -> Self {
        TaskStatus {
            inner: Mutex::new(TaskSnapshot {
                partition,
                state: "restoring",
                ..TaskSnapshot::default()
            }),
        }
    }

    pub fn snapshot(&self) -> TaskSnapshot {
        self.inner.lock().clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut TaskSnapshot)) {
        f(&mut self.inner.lock());
    }
}

/// What a finished bounded run (or a shut-down task) hands back.
pub struct TaskOutcome<O> {
    pub operator: O,
    pub position: u64,
}

/// A round record (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Round {
    incarnation: u64,
    seq: u64,
    input: u64,
    repartition: u64,
}

impl Round {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        for v in [self.incarnation, self.seq, self.input, self.repartition] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn of(record: &RecordView<'_>) -> Option<Round> {
        let (_, value) = record.headers().find(|(name, _)| *name == ROUND_HEADER)?;
        let mut r = Reader::new(value);
        let incarnation = r.u64("incarnation").ok()?;
        let seq = r.u64("seq").ok()?;
        let input = r.u64("input").ok()?;
        let repartition = r.u64("repartition").ok()?;
        Some(Round {
            incarnation,
            seq,
            input,
            repartition,
        })
    }
}

fn origin_of(record: &RecordView<'_>) -> Option<(u32, u64)> {
    let (_, value) = record.headers().find(|(name, _)| *name == ORIGIN_HEADER)?;
    let mut r = Reader::new(value);
    let partition = r.u32("partition").ok()?;
    let offset = r.u64("offset").ok()?;
    Some((partition, offset))
}

/// `pipeline`'s committed offset of `tp`, and the first offset of `tp`.
async fn committed_and_first(
    bus: &Arc<dyn EventBus>,
    pipeline: &str,
    tp: &TopicPartition,
) -> Result<(Option<u64>, u64)> {
    let committed = bus
        .committed_offsets(pipeline, &tp.topic)
        .await?
        .get(&tp.partition)
        .copied();
    let first = bus
        .resolve_offset(&tp.topic, tp.partition, StartPosition::Earliest)
        .await?;
    Ok((committed, first))
}

/// Records read but not processed yet, oldest first; every set holds
/// records at or after `position`.
#[derive(Default)]
struct Pending {
    sets: VecDeque<RecordSet>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, records: RecordSet) {
        if records.is_empty() {
            return;
        }
        self.bytes += records.byte_len();
        self.sets.push_back(records);
    }

    /// Drops sets that end at or before `position`.
    fn release(&mut self, position: u64) {
        while let Some(front) = self.sets.front() {
            if front.next_offset().is_some_and(|next| next > position) {
                break;
            }
            self.bytes -= front.byte_len();
            self.sets.pop_front();
        }
    }
}

/// The task's side of its repartition partition.
struct Repartition {
    tp: TopicPartition,
    partitions: u32,
    consumer: Option<Box<dyn Consumer>>,
    /// Next repartition offset to process (R).
    position: u64,
    /// Committed repartition offset at restore.
    committed: u64,
    /// The next offset the consumer will return.
    read_to: u64,
    /// Last round followed or written.
    round: u64,
    /// Random per task run: tells own round records from others'.
    incarnation: u64,
    origins: Vec<u64>,
    pending: Pending,
    skip: Vec<u64>,
    /// The largest offset of a forwarded (non-round) record read.
    max_data: Option<u64>,
    forwarded_in: u64,
}

struct Runner<'r, O> {
    bus: &'r Arc<dyn EventBus>,
    store: &'r Arc<dyn CheckpointStore>,
    clock: &'r Arc<dyn Clock>,
    config: &'r TaskConfig,
    status: &'r TaskStatus,
    op: O,
    out: Collector<SinkRecord>,
    tp: TopicPartition,
    position: u64,
    committed: u64,
    /// Output is dropped until the committed point is reached (replay).
    suppressing: bool,
    input_pending: Pending,
    rp: Option<Repartition>,
    next_checkpoint_id: CheckpointId,
    records_in: u64,
    records_out: u64,
    forwarded_out: u64,
    reported: OperatorProgress,
    /// The operator's declared counters and their series of this task.
    counters: Vec<(&'static str, prometheus::IntCounter)>,
    labels: [String; 2],
}

/// Refuses a task whose sinks or counters cannot be told apart.
fn check_task<O: Operator>(config: &TaskConfig, op: &O) -> Result<()> {
    let refuse = |reason: String| {
        Err(StreamError::Operator {
            operator: op.name().to_owned(),
            reason,
        })
    };
    for (i, (sink, _)) in config.sinks.iter().enumerate() {
        if *sink == Sink::FORWARD {
            return refuse(format!(
                "sink {:?} is the repartition step's, not a topic",
                sink.name()
            ));
        }
        if config.sinks[..i].iter().any(|(s, _)| s == sink) {
            return refuse(format!("sink {:?} is bound twice", sink.name()));
        }
    }
    let counters = op.counters();
    if counters.len() > MAX_COUNTERS {
        return refuse(format!(
            "declares {} counters, at most {MAX_COUNTERS} are supported",
            counters.len()
        ));
    }
    check_counters(counters).or_else(refuse)
}

/// Names a counter cannot take: counters are flattened into the task's
/// status object, beside these fields of [`TaskSnapshot`] and the fields a
/// pipeline report adds next to a snapshot (`lag`, `idle`).
pub const RESERVED_COUNTER_NAMES: &[&str] = &[
    "partition",
    "state",
    "error",
    "processed_offset",
    "end_offset",
    "committed_offset",
    "watermark",
    "max_event_time",
    "records_in",
    "records_out",
    "forwarded_out",
    "forwarded_in",
    "repartition_offset",
    "restored_from",
    "last_checkpoint",
    "last_record_ms",
    "lag",
    "idle",
];

fn check_counters(counters: &[CounterSpec]) -> Result<(), String> {
    for (i, counter) in counters.iter().enumerate() {
        if counters[..i].iter().any(|c| c.name == counter.name) {
            return Err(format!("counter {:?} is declared twice", counter.name));
        }
        if RESERVED_COUNTER_NAMES.contains(&counter.name) {
            return Err(format!(
                "counter {:?} has the name of a status field",
                counter.name
            ));
        }
    }
    Ok(())
}

/// Runs one task until `shutdown` turns true (then emits and checkpoints)
/// or, for a bounded run, until `config.stop_at` is reached.
pub async fn run_task<O>(
    bus: Arc<dyn EventBus>,
    store: Arc<dyn CheckpointStore>,
    clock: Arc<dyn Clock>,
    config: TaskConfig,
    op: O,
    status: Arc<TaskStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<TaskOutcome<O>>
where
    O: for<'a> Operator<In<'a> = SourceBatch<'a>, Out = SinkRecord>,
{
    check_task(&config, &op)?;
    // Every declared counter is in the status from the start (0 until the
    // first report), so readers never miss a field while a task restores.
    status.update(|s| {
        for spec in op.counters() {
            s.counters.entry(spec.name).or_insert(0);
        }
    });
    let tp = TopicPartition::new(config.input_topic.clone(), config.partition);
    let labels = [config.pipeline.clone(), config.partition.to_string()];
    let rp = config.repartition.as_ref().map(|r| Repartition {
        tp: TopicPartition::new(r.topic.clone(), config.partition),
        partitions: r.partitions,
        consumer: None,
        position: 0,
        committed: 0,
        read_to: 0,
        round: 0,
        incarnation: std::hash::RandomState::new().build_hasher().finish(),
        origins: vec![0; r.partitions as usize],
        pending: Pending::default(),
        skip: Vec::new(),
        max_data: None,
        forwarded_in: 0,
    });
    let counters = op
        .counters()
        .iter()
        .map(|spec| {
            let series = metrics::operator_counter(spec)
                .with_label_values(&[labels[0].as_str(), labels[1].as_str()]);
            (spec.name, series)
        })
        .collect();
    let mut runner = Runner {
        bus: &bus,
        store: &store,
        clock: &clock,
        config: &config,
        status: &status,
        op,
        out: Collector::new(),
        tp,
        position: 0,
        committed: 0,
        suppressing: false,
        input_pending: Pending::default(),
        rp,
        next_checkpoint_id: 1,
        records_in: 0,
        records_out: 0,
        forwarded_out: 0,
        reported: OperatorProgress::default(),
        counters,
        labels,
    };
    let result = runner.run(&mut shutdown).await;
    match result {
        Ok(()) => {
            status.update(|s| s.state = "stopped");
            Ok(TaskOutcome {
                position: runner.position,
                operator: runner.op,
            })
        }
        Err(error) => {
            tracing::error!(
                pipeline = %config.pipeline,
                partition = config.partition,
                %error,
                "pipeline task failed"
            );
            status.update(|s| {
                s.state = "failed";
                s.error = Some(error.to_string());
            });
            Err(error)
        }
    }
}

impl<O> Runner<'_, O>
where
    O: for<'a> Operator<In<'a> = SourceBatch<'a>, Out = SinkRecord>,
{
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let start = self.restore().await?;
        let mut consumer = self
            .bus
            .consumer(ConsumerConfig {
                max_poll_bytes: self.config.max_poll_bytes,
                ..ConsumerConfig::assign(self.config.pipeline.clone(), vec![self.tp.clone()])
            })
            .await?;
        consumer
            .seek(&self.tp, StartPosition::Offset(start))
            .await?;
        self.position = start;
        if let Some(rp) = &mut self.rp {
            let mut rp_consumer = self
                .bus
                .consumer(ConsumerConfig {
                    max_poll_bytes: self.config.max_poll_bytes,
                    ..ConsumerConfig::assign(self.config.pipeline.clone(), vec![rp.tp.clone()])
                })
                .await?;
            rp_consumer
                .seek(&rp.tp, StartPosition::Offset(rp.position))
                .await?;
            rp.read_to = rp.position;
            rp.consumer = Some(rp_consumer);
        }
        self.suppressing = self.position < self.committed
            || self
                .rp
                .as_ref()
                .is_some_and(|rp| rp.position < rp.committed);
        let committed = self.committed;
        self.status.update(|s| {
            s.processed_offset = start;
            s.committed_offset = committed;
            s.state = "replaying";
        });
        if !self.replay(consumer.as_mut(), shutdown).await? {
            // Shut down before the replay reached the committed point: the
            // checkpoint on disk is still the right place to restart from.
            self.publish_status();
            return Ok(());
        }
        self.status.update(|s| s.state = "running");
        let mut next_emit = Instant::now() + self.config.emit_interval;
        let mut next_checkpoint = Instant::now() + self.config.checkpoint_interval;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(stop_at) = self.config.stop_at {
                if self.position >= stop_at {
                    // The end of a bounded input (operator contract, point 5);
                    // its output goes out with the final checkpoint below.
                    self.op.on_close(&mut self.out)?;
                    break;
                }
            }
            let deadline = next_emit.min(next_checkpoint);
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let polled = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                polled = consumer.poll(timeout) => polled?,
            };
            for fetched in polled {
                if fetched.partition != self.tp.partition || *fetched.topic != *self.tp.topic {
                    continue;
                }
                let now = self.clock.now_ms();
                self.status.update(|s| {
                    s.end_offset = fetched.high_watermark;
                    if !fetched.records.is_empty() {
                        s.last_record_ms = Some(now);
                    }
                });
                self.input_pending.push(fetched.records);
            }
            let until = self.config.stop_at.unwrap_or(u64::MAX);
            self.feed_pending_input(until)?;
            self.publish_status();
            let pending_full = self
                .rp
                .as_ref()
                .is_some_and(|rp| rp.pending.bytes >= MAX_PENDING_BYTES);
            let now = Instant::now();
            if now >= next_emit || pending_full {
                self.emit().await?;
                next_emit = now + self.config.emit_interval;
            }
            if now >= next_checkpoint {
                self.checkpoint().await?;
                next_checkpoint = Instant::now() + self.config.checkpoint_interval;
            }
        }
        self.checkpoint().await?;
        self.publish_status();
        Ok(())
    }

    /// Loads the newest checkpoint into the operator; returns the offset to
    /// start reading at and sets `committed` (and the repartition side).
    async fn restore(&mut self) -> Result<u64> {
        let store = self.store.clone();
        let (pipeline, topic, partition) = (
            self.config.pipeline.clone(),
            self.tp.topic.clone(),
            self.tp.partition,
        );
        let checkpoint =
            tokio::task::spawn_blocking(move || store.load_latest(&pipeline, &topic, partition))
                .await
                .map_err(|e| StreamError::Operator {
                    operator: self.op.name().to_owned(),
                    reason: format!("checkpoint load panicked: {e}"),
                })??;
        let (committed, first) =
            committed_and_first(self.bus, &self.config.pipeline, &self.tp).await?;
        let mut rp_position = RepartitionPosition::default();
        let start = match &checkpoint {
            Some(cp) => {
                self.op.restore(&cp.state)?;
                self.next_checkpoint_id = cp.id + 1;
                rp_position = cp.repartition.clone();
                let restored = cp.id;
                self.status.update(|s| {
                    s.restored_from = Some(restored);
                    s.last_checkpoint = Some(CheckpointInfo {
                        id: cp.id,
                        input_offset: cp.input_offset,
                        at_ms: cp.created_ms,
                        bytes: cp.state.len() as u64,
                        duration_ms: 0,
                    });
                });
                tracing::info!(
                    pipeline = %self.config.pipeline,
                    partition = self.tp.partition,
                    checkpoint = cp.id,
                    offset = cp.input_offset,
                    repartition_offset = cp.repartition.offset,
                    committed = ?committed,
                    "restored task from checkpoint"
                );
                cp.input_offset
            }
            None => {
                self.op.restore(&[])?;
                first
            }
        };
        if start < first {
            tracing::warn!(
                pipeline = %self.config.pipeline,
                partition = self.tp.partition,
                checkpoint_offset = start,
                first_offset = first,
                "input before the first retained offset is gone; results for it cannot be replayed"
            );
        }
        let start = start.max(first);
        let end = self
            .bus
            .resolve_offset(&self.tp.topic, self.tp.partition, StartPosition::Latest)
            .await?;
        // A committed offset past the end (the log was restored from an
        // older backup than the group offsets) must not suppress output of
        // new input that reuses those offsets.
        if committed.is_some_and(|c| c > end) {
            tracing::warn!(
                pipeline = %self.config.pipeline,
                partition = self.tp.partition,
                committed = ?committed,
                end,
                "committed offset is past the end of the input; ignoring it"
            );
        }
        self.committed = committed.unwrap_or(start).min(end).max(start);
        if let Some(rp_tp) = self.rp.as_ref().map(|rp| rp.tp.clone()) {
            let (committed, first) =
                committed_and_first(self.bus, &self.config.pipeline, &rp_tp).await?;
            let rp = self.rp.as_mut().expect("checked");
            if rp_position.offset < first {
                tracing::warn!(
                    pipeline = %self.config.pipeline,
                    partition = rp.tp.partition,
                    checkpoint_offset = rp_position.offset,
                    first_offset = first,
                    "forwarded records before the first retained repartition offset are gone"
                );
            }
            rp.position = rp_position.offset.max(first);
            rp.round = rp_position.round;
            if rp_position.origins.len() == rp.partitions as usize {
                rp.origins = rp_position.origins;
            }
            rp.committed = committed.unwrap_or(rp.position).max(rp.position);
        }
        Ok(start)
    }

    /// Replays up to the committed point and past every round record in the
    /// repartition partition at start, in the order the round records give.
    /// Returns false when shut down first.
    async fn replay(
        &mut self,
        input: &mut dyn Consumer,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool> {
        if let Some(rp) = &self.rp {
            let end = self
                .bus
                .resolve_offset(&rp.tp.topic, rp.tp.partition, StartPosition::Latest)
                .await?;
            // Kafka transaction markers take offsets no record reaches, so
            // two empty polls end the replay too. A round record left unread
            // because a broker reported a short end offset stops the live
            // task when it meets it (a newer round it did not write), and
            // the restart reads further.
            let mut empty_polls = 0;
            loop {
                let rp = self.rp.as_mut().expect("checked");
                if rp.read_to >= end || empty_polls >= 2 {
                    break;
                }
                if *shutdown.borrow() {
                    return Ok(false);
                }
                let consumer = rp.consumer.as_mut().expect("opened in run");
                let polled = consumer.poll(Duration::from_millis(200)).await?;
                empty_polls += 1;
                for fetched in polled {
                    let rp = self.rp.as_mut().expect("checked");
                    if fetched.partition != rp.tp.partition || *fetched.topic != *rp.tp.topic {
                        continue;
                    }
                    let records = fetched.records;
                    let Some(next) = records.next_offset() else {
                        continue;
                    };
                    empty_polls = 0;
                    rp.read_to = rp.read_to.max(next);
                    let mut rounds = Vec::new();
                    for record in records.iter() {
                        match Round::of(&record) {
                            Some(round) => rounds.push(round),
                            None => rp.max_data = Some(record.offset),
                        }
                    }
                    rp.pending.push(records);
                    for round in rounds {
                        self.follow_round(input, round).await?;
                    }
                }
            }
        }
        if self.suppressing {
            let rp_done = self
                .rp
                .as_ref()
                .is_none_or(|rp| rp.position >= rp.committed);
            if !rp_done {
                tracing::warn!(
                    pipeline = %self.config.pipeline,
                    partition = self.tp.partition,
                    "the round records end before the committed repartition offset; output is no longer dropped"
                );
            }
            let target = self.committed;
            while self.position < target {
                if *shutdown.borrow() {
                    return Ok(false);
                }
                self.feed_input_to(input, target).await?;
            }
            self.reach_committed();
        }
        Ok(true)
    }

    /// Replays one round record: input up to its offset, then forwarded
    /// records up to its repartition offset.
    async fn follow_round(&mut self, input: &mut dyn Consumer, round: Round) -> Result<()> {
        let rp = self.rp.as_ref().expect("repartition");
        if round.seq <= rp.round {
            // The round of the checkpoint itself, or a zombie's repeat.
            return Ok(());
        }
        if round.seq != rp.round + 1 || round.repartition < rp.position {
            tracing::warn!(
                pipeline = %self.config.pipeline,
                partition = self.tp.partition,
                round = round.seq,
                expected = rp.round + 1,
                "passing over a round record that does not continue the chain (a repeat)"
            );
            return Ok(());
        }
        let until = self.config.stop_at.unwrap_or(u64::MAX).min(round.input);
        while self.position < until {
            self.feed_input_to(input, until).await?;
        }
        self.feed_forwarded(round.repartition)?;
        let rp = self.rp.as_mut().expect("repartition");
        rp.round = round.seq;
        self.check_committed();
        Ok(())
    }

    /// Reads input and processes it up to `target` (at least one poll).
    async fn feed_input_to(&mut self, input: &mut dyn Consumer, target: u64) -> Result<()> {
        if self.input_pending.sets.is_empty() {
            for fetched in input.poll(Duration::from_millis(200)).await? {
                if fetched.partition == self.tp.partition && *fetched.topic == *self.tp.topic {
                    self.status
                        .update(|s| s.end_offset = s.end_offset.max(fetched.high_watermark));
                    self.input_pending.push(fetched.records);
                }
            }
        }
        self.feed_pending_input(target)?;
        self.publish_status();
        Ok(())
    }

    /// Processes the buffered input records before `target`, stopping at
    /// the committed point while output is dropped.
    fn feed_pending_input(&mut self, target: u64) -> Result<()> {
        while let Some(records) = self.input_pending.sets.front().cloned() {
            let next = records.next_offset().unwrap_or(self.position);
            let rp_at_committed = self
                .rp
                .as_ref()
                .is_none_or(|rp| rp.position >= rp.committed);
            let mut until = next.min(target);
            if self.suppressing && rp_at_committed && self.position <= self.committed {
                until = until.min(self.committed);
            }
            self.feed(&records, self.position, until)?;
            self.position = self.position.max(until);
            self.check_committed();
            if until < next {
                break;
            }
            self.input_pending.release(self.position);
        }
        Ok(())
    }

    /// Ends suppression once both positions are at the committed point.
    fn check_committed(&mut self) {
        let rp_at = self
            .rp
            .as_ref()
            .is_none_or(|rp| rp.position >= rp.committed);
        if self.suppressing && rp_at && self.position >= self.committed {
            self.reach_committed();
        }
    }

    fn reach_committed(&mut self) {
        if !self.suppressing {
            return;
        }
        self.suppressing = false;
        if let Err(error) = self.op.handle_tick(self.clock.now_ms(), &mut self.out) {
            tracing::warn!(%error, "tick at the end of replay failed");
        }
        let dropped = self.out.drain().count();
        tracing::info!(
            pipeline = %self.config.pipeline,
            partition = self.tp.partition,
            offset = self.committed,
            repartition_offset = ?self.rp.as_ref().map(|rp| rp.committed),
            dropped,
            "replay reached the committed offset"
        );
    }

    fn feed(&mut self, records: &RecordSet, from: u64, until: u64) -> Result<()> {
        if from >= until {
            return Ok(());
        }
        let partitions = self.rp.as_ref().map_or(0, |rp| rp.partitions);
        let batch = SourceBatch {
            partitions,
            ..SourceBatch::new(&self.tp.topic, self.tp.partition, records, from, until)
        };
        let count = batch.iter().count() as u64;
        self.op.process_batch(batch, &mut self.out)?;
        self.records_in += count;
        metrics::RECORDS_IN
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(count);
        Ok(())
    }

    /// Processes the buffered forwarded records before `until` and moves
    /// the repartition position there.
    fn feed_forwarded(&mut self, until: u64) -> Result<()> {
        let rp = self.rp.as_mut().expect("repartition");
        let mut fed = 0u64;
        for records in rp.pending.sets.iter() {
            let from = rp.position;
            if from >= until {
                break;
            }
            rp.skip.clear();
            for record in records.iter() {
                if record.offset < from || record.offset >= until {
                    continue;
                }
                if record.headers().any(|(name, _)| name == ROUND_HEADER) {
                    rp.skip.push(record.offset);
                    continue;
                }
                if let Some((source, offset)) = origin_of(&record) {
                    if let Some(next) = rp.origins.get_mut(source as usize) {
                        if offset < *next {
                            rp.skip.push(record.offset);
                            continue;
                        }
                        *next = offset + 1;
                    }
                }
                fed += 1;
            }
            let batch = SourceBatch {
                forwarded: true,
                partitions: rp.partitions,
                skip: &rp.skip,
                ..SourceBatch::new(&rp.tp.topic, rp.tp.partition, records, from, until)
            };
            self.op.process_batch(batch, &mut self.out)?;
            let next = records.next_offset().unwrap_or(from);
            rp.position = next.min(until).max(from);
        }
        rp.position = rp.position.max(until);
        rp.pending.release(rp.position);
        rp.forwarded_in += fed;
        self.records_in += fed;
        if fed > 0 {
            // Forwarded clicks keep the task busy even when its own input
            // partition is quiet: it must not count as idle.
            let now = self.clock.now_ms();
            self.status.update(|s| s.last_record_ms = Some(now));
        }
        metrics::FORWARDED_IN
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(fed);
        Ok(())
    }

    /// Live: reads what is in the repartition partition now and ends the
    /// round. Returns the round record to write, if the round processed
    /// forwarded records.
    async fn end_round(&mut self) -> Result<Option<Round>> {
        let Some(rp) = self.rp.as_mut() else {
            return Ok(None);
        };
        let consumer = rp.consumer.as_mut().expect("opened in run");
        loop {
            let polled = consumer.poll(Duration::from_millis(1)).await?;
            let mut got = false;
            for fetched in polled {
                if fetched.partition != rp.tp.partition || *fetched.topic != *rp.tp.topic {
                    continue;
                }
                let records = fetched.records;
                let Some(next) = records.next_offset() else {
                    continue;
                };
                got = true;
                rp.read_to = rp.read_to.max(next);
                for record in records.iter() {
                    match Round::of(&record) {
                        Some(round) if round.incarnation == rp.incarnation => {}
                        Some(round) if round.seq <= rp.round => tracing::warn!(
                            pipeline = %self.config.pipeline,
                            partition = rp.tp.partition,
                            round = round.seq,
                            "passing over a stale round record of another task run"
                        ),
                        Some(round) => {
                            return Err(StreamError::Operator {
                                operator: self.op.name().to_owned(),
                                reason: format!(
                                    "another task run wrote round {} of partition {} while this one is at round {}; restarting to follow it",
                                    round.seq, rp.tp.partition, rp.round
                                ),
                            });
                        }
                        None => rp.max_data = Some(record.offset),
                    }
                }
                rp.pending.push(records);
            }
            if !got || rp.pending.bytes >= MAX_PENDING_BYTES {
                break;
            }
        }
        let Some(last) = rp.max_data.filter(|l| *l >= rp.position) else {
            // Only round records (or nothing) arrived: nothing to order.
            let read_to = rp.read_to;
            rp.pending.release(read_to);
            return Ok(None);
        };
        self.feed_forwarded(last + 1)?;
        let rp = self.rp.as_mut().expect("repartition");
        rp.round += 1;
        Ok(Some(Round {
            incarnation: rp.incarnation,
            seq: rp.round,
            input: self.position,
            repartition: rp.position,
        }))
    }

    fn publish_status(&mut self) {
        let progress: OperatorProgress = self.op.progress();
        let now = self.clock.now_ms();
        // Operator counters restart with the operator; the metrics only grow.
        let before = self.reported;
        for (i, (_, series)) in self.counters.iter().enumerate() {
            series.inc_by(progress.counters[i].saturating_sub(before.counters[i]));
        }
        self.reported = progress;
        if let Some(watermark) = progress.watermark {
            metrics::WATERMARK_LAG_SECONDS
                .with_label_values(&[&self.labels[0], &self.labels[1]])
                .set((now - watermark) as f64 / 1000.0);
        }
        let (forwarded_in, repartition_offset) = self
            .rp
            .as_ref()
            .map_or((0, None), |rp| (rp.forwarded_in, Some(rp.position)));
        self.status.update(|s| {
            s.processed_offset = self.position;
            s.committed_offset = self.committed;
            s.watermark = progress.watermark;
            s.max_event_time = progress.max_event_time;
            s.records_in = self.records_in;
            s.records_out = self.records_out;
            s.forwarded_out = self.forwarded_out;
            s.forwarded_in = forwarded_in;
            s.repartition_offset = repartition_offset;
            for (i, (name, _)) in self.counters.iter().enumerate() {
                s.counters.insert(name, progress.counters[i]);
            }
        });
    }

    /// Ends the round: processes the forwarded records read, then commits
    /// the tick output and the input position(s) in one transaction.
    async fn emit(&mut self) -> Result<()> {
        let round = self.end_round().await?;
        self.op.handle_tick(self.clock.now_ms(), &mut self.out)?;
        self.commit_output(round).await
    }

    async fn commit_output(&mut self, round: Option<Round>) -> Result<()> {
        let rp_moved = self
            .rp
            .as_ref()
            .is_some_and(|rp| rp.position != rp.committed);
        if self.out.is_empty() && self.position == self.committed && !rp_moved && round.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let mut batches: Vec<RecordBatch> = self
            .config
            .sinks
            .iter()
            .map(|_| RecordBatch::new())
            .collect();
        let partitions = self.rp.as_ref().map_or(0, |rp| rp.partitions);
        let mut forwards: Vec<RecordBatch> = Vec::new();
        let mut count = 0u64;
        let mut forwarded = 0u64;
        for record in self.out.drain() {
            let batch = if record.sink == Sink::FORWARD {
                let Some(key) = record.key.as_deref().filter(|_| partitions > 0) else {
                    return Err(StreamError::Operator {
                        operator: self.op.name().to_owned(),
                        reason: "forwarded a record without a key, or without a repartition topic"
                            .into(),
                    });
                };
                let to = partition_for_key(key, partitions) as usize;
                if forwards.len() <= to {
                    forwards.resize_with(partitions as usize, RecordBatch::new);
                }
                forwarded += 1;
                &mut forwards[to]
            } else {
                let bound = self
                    .config
                    .sinks
                    .iter()
                    .position(|(sink, _)| *sink == record.sink);
                let Some(batch) = bound.and_then(|i| batches.get_mut(i)) else {
                    return Err(StreamError::Operator {
                        operator: self.op.name().to_owned(),
                        reason: format!(
                            "emitted to sink {:?}, which the task does not bind to a topic (it binds {:?})",
                            record.sink.name(),
                            self.config.sinks.iter().map(|(s, _)| s.name()).collect::<Vec<_>>()
                        ),
                    });
                };
                count += 1;
                batch
            };
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_slice()))
                .collect();
            batch.push_with_headers(
                record.key.as_deref(),
                &record.value,
                record.timestamp,
                &headers,
            )?;
        }
        if let (Some(round), Some(rp)) = (round, &self.rp) {
            if forwards.len() <= rp.tp.partition as usize {
                forwards.resize_with(partitions as usize, RecordBatch::new);
            }
            let encoded = round.encode();
            forwards[rp.tp.partition as usize].push_with_headers(
                None,
                &[],
                self.clock.now_ms(),
                &[(ROUND_HEADER, &encoded)],
            )?;
        }
        let txn_id = format!(
            "{}/{}/{}",
            self.config.pipeline, self.tp.topic, self.tp.partition
        );
        let mut txn = self.bus.begin_transaction(&txn_id).await?;
        for ((_, topic), batch) in self.config.sinks.iter().zip(batches) {
            if !batch.is_empty() {
                txn.append(topic, self.tp.partition, batch)?;
            }
        }
        let mut offsets = vec![(self.tp.clone(), self.position)];
        if let Some(rp) = &self.rp {
            for (partition, batch) in forwards.into_iter().enumerate() {
                if !batch.is_empty() {
                    txn.append(&rp.tp.topic, partition as u32, batch)?;
                }
            }
            offsets.push((rp.tp.clone(), rp.position));
        }
        txn.commit_offsets(&self.config.pipeline, &offsets);
        txn.commit().await?;
        self.committed = self.position;
        if let Some(rp) = &mut self.rp {
            rp.committed = rp.position;
        }
        self.records_out += count;
        self.forwarded_out += forwarded;
        metrics::RECORDS_OUT
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(count);
        metrics::FORWARDED_OUT
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(forwarded);
        metrics::EMIT_SECONDS
            .with_label_values(&[&self.labels[0]])
            .observe(started.elapsed().as_secs_f64());
        self.publish_status();
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        self.emit().await?;
        let id = self.next_checkpoint_id;
        let state = self.op.handle_checkpoint(id, &mut self.out)?;
        // Output produced by the checkpoint hook belongs to the cut too.
        self.commit_output(None).await?;
        let checkpoint = TaskCheckpoint {
            id,
            input_offset: self.position,
            created_ms: self.clock.now_ms(),
            state,
            repartition: self
                .rp
                .as_ref()
                .map(|rp| RepartitionPosition {
                    offset: rp.position,
                    round: rp.round,
                    origins: rp.origins.clone(),
                })
                .unwrap_or_default(),
        };
        let store = self.store.clone();
        let (pipeline, topic, partition) = (
            self.config.pipeline.clone(),
            self.tp.topic.clone(),
            self.tp.partition,
        );
        let info = CheckpointInfo {
            id,
            input_offset: checkpoint.input_offset,
            at_ms: checkpoint.created_ms,
            bytes: 0,
            duration_ms: 0,
        };
        let bytes = tokio::task::spawn_blocking(move || {
            store.save(&pipeline, &topic, partition, &checkpoint)
        })
        .await
        .map_err(|e| StreamError::Operator {
            operator: self.op.name().to_owned(),
            reason: format!("checkpoint save panicked: {e}"),
        })??;
        self.next_checkpoint_id = id + 1;
        self.op.handle_commit(id)?;
        let duration = started.elapsed();
        metrics::CHECKPOINT_SECONDS
            .with_label_values(&[&self.labels[0]])
            .observe(duration.as_secs_f64());
        metrics::CHECKPOINT_BYTES
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .set(bytes as i64);
        self.status.update(|s| {
            s.last_checkpoint = Some(CheckpointInfo {
                bytes,
                duration_ms: duration.as_millis() as u64,
                ..info
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod counter_name_tests {
    use super::*;

    const fn spec(name: &'static str) -> CounterSpec {
        CounterSpec {
            name,
            metric: "riffle_test_total",
            help: "test",
        }
    }

    #[test]
    fn reserved_names_are_the_status_fields() {
        let snapshot = serde_json::to_value(TaskSnapshot::default()).unwrap();
        let fields: std::collections::BTreeSet<&str> = snapshot
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut reserved: std::collections::BTreeSet<&str> =
            RESERVED_COUNTER_NAMES.iter().copied().collect();
        for added_by_reports in ["lag", "idle"] {
            assert!(reserved.remove(added_by_reports));
        }
        assert_eq!(fields, reserved);
    }

    #[test]
    fn duplicate_and_reserved_counter_names_are_refused() {
        assert!(check_counters(&[spec("late"), spec("duplicates")]).is_ok());
        let twice = check_counters(&[spec("late"), spec("late")]).unwrap_err();
        assert!(twice.contains("\"late\" is declared twice"), "{twice}");
        for name in ["state", "lag", "watermark"] {
            let error = check_counters(&[spec(name)]).unwrap_err();
            assert!(
                error.contains(&format!("{name:?} has the name of a status field")),
                "{error}"
            );
        }
    }
}
