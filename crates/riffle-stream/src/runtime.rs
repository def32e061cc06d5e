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
//! Backpressure: the task polls at most `max_poll_bytes` at a time and
//! awaits every transaction, so it never reads faster than its output is
//! made durable; memory is the operator's state plus one poll.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use riffle_core::time::Clock;
use riffle_log::{
    ConsumerConfig, EventBus, RecordBatch, RecordSet, RecordView, StartPosition, TopicPartition,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoint::{CheckpointStore, TaskCheckpoint};
use crate::error::{Result, StreamError};
use crate::metrics;
use crate::operator::{CheckpointId, Collector, Operator, OperatorProgress};

/// A borrowed view of the input records of one poll, limited to the offsets
/// `[from, until)` the runtime wants processed now.
#[derive(Clone, Copy)]
pub struct SourceBatch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    records: &'a RecordSet,
    from: u64,
    until: u64,
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
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordView<'a>> + 'a {
        let (from, until) = (self.from, self.until);
        self.records
            .iter()
            .skip_while(move |r| r.offset < from)
            .take_while(move |r| r.offset < until)
    }
}

/// One output record of a task. It goes to topic `sinks[sink]` of the
/// [`TaskConfig`], in the same partition number as the task's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub sink: usize,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: i64,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// How a task runs.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The pipeline name: the consumer group of its input offsets and the
    /// directory of its checkpoints.
    pub pipeline: String,
    pub input_topic: String,
    pub partition: u32,
    /// Output topics, indexed by [`SinkRecord::sink`].
    pub sinks: Vec<String>,
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
    pub late: u64,
    pub duplicates: u64,
    pub rejected: u64,
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

    fn update(&self, f: impl FnOnce(&mut TaskSnapshot)) {
        f(&mut self.inner.lock());
    }
}

/// What a finished bounded run (or a shut-down task) hands back.
pub struct TaskOutcome<O> {
    pub operator: O,
    pub position: u64,
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
    next_checkpoint_id: CheckpointId,
    records_in: u64,
    records_out: u64,
    reported: OperatorProgress,
    labels: [String; 2],
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
    let tp = TopicPartition::new(config.input_topic.clone(), config.partition);
    let labels = [config.pipeline.clone(), config.partition.to_string()];
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
        next_checkpoint_id: 1,
        records_in: 0,
        records_out: 0,
        reported: OperatorProgress::default(),
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
        let replay_until = self.committed;
        self.status.update(|s| {
            s.processed_offset = start;
            s.committed_offset = replay_until;
            s.state = if start < replay_until {
                "replaying"
            } else {
                "running"
            };
        });
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
            for fetched in &polled {
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
                self.process(&fetched.records, replay_until)?;
            }
            self.publish_status();
            if self.position < replay_until {
                continue;
            }
            let now = Instant::now();
            if now >= next_emit {
                self.emit().await?;
                next_emit = now + self.config.emit_interval;
            }
            if now >= next_checkpoint {
                self.checkpoint().await?;
                next_checkpoint = Instant::now() + self.config.checkpoint_interval;
            }
        }
        if self.position >= replay_until {
            self.checkpoint().await?;
        }
        self.publish_status();
        Ok(())
    }

    /// Loads the newest checkpoint into the operator; returns the offset to
    /// start reading at and sets `committed`.
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
        let committed = self
            .bus
            .committed_offsets(&self.config.pipeline, &self.tp.topic)
            .await?
            .get(&self.tp.partition)
            .copied();
        let first = self
            .bus
            .resolve_offset(&self.tp.topic, self.tp.partition, StartPosition::Earliest)
            .await?;
        let start = match &checkpoint {
            Some(cp) => {
                self.op.restore(&cp.state)?;
                self.next_checkpoint_id = cp.id + 1;
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
        Ok(start)
    }

    /// Feeds the records of one poll to the operator. Records before
    /// `replay_until` were processed and emitted before a restart: their
    /// output is dropped at exactly that offset.
    fn process(&mut self, records: &RecordSet, replay_until: u64) -> Result<()> {
        let Some(next) = records.next_offset() else {
            return Ok(());
        };
        let mut from = self.position;
        let end = match self.config.stop_at {
            Some(stop_at) => next.min(stop_at),
            None => next,
        };
        if from < replay_until {
            let until = end.min(replay_until);
            self.feed(records, from, until)?;
            if until == replay_until {
                self.op.handle_tick(self.clock.now_ms(), &mut self.out)?;
                let dropped = self.out.drain().count();
                tracing::info!(
                    pipeline = %self.config.pipeline,
                    partition = self.tp.partition,
                    offset = replay_until,
                    dropped,
                    "replay reached the committed offset"
                );
                self.status.update(|s| s.state = "running");
            }
            from = until;
        }
        if from < end {
            self.feed(records, from, end)?;
        }
        Ok(())
    }

    fn feed(&mut self, records: &RecordSet, from: u64, until: u64) -> Result<()> {
        if from >= until {
            return Ok(());
        }
        let batch = SourceBatch::new(&self.tp.topic, self.tp.partition, records, from, until);
        let count = batch.iter().count() as u64;
        let last = batch.iter().last().map(|r| r.offset + 1);
        self.op.process_batch(batch, &mut self.out)?;
        self.records_in += count;
        metrics::RECORDS_IN
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(count);
        if let Some(last) = last {
            self.position = last;
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let progress: OperatorProgress = self.op.progress();
        let now = self.clock.now_ms();
        let labels = [self.labels[0].as_str(), self.labels[1].as_str()];
        // Operator counters restart with the operator; the metrics only grow.
        let before = self.reported;
        metrics::LATE
            .with_label_values(&labels)
            .inc_by(progress.late.saturating_sub(before.late));
        metrics::DUPLICATES
            .with_label_values(&labels)
            .inc_by(progress.duplicates.saturating_sub(before.duplicates));
        metrics::REJECTED
            .with_label_values(&labels)
            .inc_by(progress.rejected.saturating_sub(before.rejected));
        self.reported = progress;
        if let Some(watermark) = progress.watermark {
            metrics::WATERMARK_LAG_SECONDS
                .with_label_values(&[&self.labels[0], &self.labels[1]])
                .set((now - watermark) as f64 / 1000.0);
        }
        self.status.update(|s| {
            s.processed_offset = self.position;
            s.committed_offset = self.committed;
            s.watermark = progress.watermark;
            s.max_event_time = progress.max_event_time;
            s.records_in = self.records_in;
            s.records_out = self.records_out;
            s.late = progress.late;
            s.duplicates = progress.duplicates;
            s.rejected = progress.rejected;
        });
    }

    /// Commits the tick output and the input position in one transaction.
    async fn emit(&mut self) -> Result<()> {
        self.op.handle_tick(self.clock.now_ms(), &mut self.out)?;
        self.commit_output().await
    }

    async fn commit_output(&mut self) -> Result<()> {
        if self.out.is_empty() && self.position == self.committed {
            return Ok(());
        }
        let started = Instant::now();
        let mut batches: Vec<RecordBatch> = self
            .config
            .sinks
            .iter()
            .map(|_| RecordBatch::new())
            .collect();
        let mut count = 0u64;
        for record in self.out.drain() {
            let Some(batch) = batches.get_mut(record.sink) else {
                return Err(StreamError::Operator {
                    operator: self.op.name().to_owned(),
                    reason: format!(
                        "emitted to sink {} but the task has {} sinks",
                        record.sink,
                        self.config.sinks.len()
                    ),
                });
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
            count += 1;
        }
        let txn_id = format!(
            "{}/{}/{}",
            self.config.pipeline, self.tp.topic, self.tp.partition
        );
        let mut txn = self.bus.begin_transaction(&txn_id).await?;
        for (sink, batch) in self.config.sinks.iter().zip(batches) {
            if !batch.is_empty() {
                txn.append(sink, self.tp.partition, batch)?;
            }
        }
        txn.commit_offsets(&self.config.pipeline, &[(self.tp.clone(), self.position)]);
        txn.commit().await?;
        self.committed = self.position;
        self.records_out += count;
        metrics::RECORDS_OUT
            .with_label_values(&[&self.labels[0], &self.labels[1]])
            .inc_by(count);
        metrics::EMIT_SECONDS
            .with_label_values(&[&self.labels[0]])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        self.emit().await?;
        let id = self.next_checkpoint_id;
        let state = self.op.handle_checkpoint(id, &mut self.out)?;
        // Output produced by the checkpoint hook belongs to the cut too.
        self.commit_output().await?;
        let checkpoint = TaskCheckpoint {
            id,
            input_offset: self.position,
            created_ms: self.clock.now_ms(),
            state,
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
