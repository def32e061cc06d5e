//! The aggregate writer: consumes the `ad_click_aggregates` topic and upserts
//! into the [`AggregateStore`] — the second half of the seed's two-queue
//! design, and the reduce step of the top-N (the store merges the partitions'
//! partial tops in the transaction that writes them).
//!
//! Exactly-once: the writer's consumed offset per aggregates partition is a
//! [`SourcePosition`] (`<topic>/<partition>`) written in the same store
//! transaction as the rows it produced; on start it resumes from those
//! positions, not from a bus consumer group. Rows are absolute, so a batch
//! applied twice changes nothing.
//!
//! Batching: one store transaction per poll (up to `max_poll_bytes` of
//! records, all partitions), with repeated keys collapsed to their newest
//! value first — when the writer lags, batches grow and the per-row cost
//! falls, so it catches up instead of falling further behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use riffle_core::time::Clock;
use riffle_log::{ConsumerConfig, EventBus, StartPosition, TopicPartition};
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics;
use crate::records::{AggregateRecord, Decoded};
use crate::store::{AggKey, AggregateRow, AggregateStore, PartialTop, SourcePosition, WriteBatch};

/// The writer's state for `GET /v1/pipelines`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriterSnapshot {
    /// `starting`, `running`, `retrying`, `stopped` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    /// Next aggregates offset to apply, per partition.
    pub positions: BTreeMap<u32, u64>,
    /// Aggregates end offsets at the last poll, per partition.
    pub end_offsets: BTreeMap<u32, u64>,
    pub rows_applied: u64,
    pub partial_tops_applied: u64,
    pub records_skipped: u64,
    pub last_apply_ms: Option<i64>,
    /// Per input partition: the newest task watermark announced on the
    /// aggregates topic and when (server clock) it was read.
    pub progress: BTreeMap<u32, PartitionProgress>,
}

/// A task watermark as a `progress` record announced it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub watermark: i64,
    pub seen_ms: i64,
}

#[derive(Debug, Default)]
pub struct WriterStatus {
    inner: Mutex<WriterSnapshot>,
}

impl WriterStatus {
    pub fn snapshot(&self) -> WriterSnapshot {
        self.inner.lock().clone()
    }

    fn update(&self, f: impl FnOnce(&mut WriterSnapshot)) {
        f(&mut self.inner.lock());
    }
}

/// Where the writer keeps the position of one aggregates partition.
pub fn position_source(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Bus(#[from] riffle_log::BusError),
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
    /// A blocking store call panicked or was cancelled (runtime shutdown).
    #[error("aggregate store call did not complete: {0}")]
    StoreTask(#[from] tokio::task::JoinError),
}

/// What the writer reads and how.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The pipeline whose output it applies (metrics label).
    pub pipeline: String,
    /// The aggregates topic.
    pub topic: String,
    pub max_poll_bytes: usize,
}

/// Runs the writer until `shutdown` turns true.
pub async fn run_writer(
    bus: Arc<dyn EventBus>,
    store: Arc<dyn AggregateStore>,
    clock: Arc<dyn Clock>,
    config: WriterConfig,
    status: Arc<WriterStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WriterError> {
    let result = writer_loop(&bus, &store, &clock, &config, &status, &mut shutdown).await;
    let topic = &config.topic;
    match &result {
        Ok(()) => status.update(|s| s.state = "stopped"),
        Err(error) => {
            tracing::error!(%topic, %error, "aggregate writer failed");
            status.update(|s| {
                s.state = "failed";
                s.error = Some(error.to_string());
            });
        }
    }
    result
}

async fn writer_loop(
    bus: &Arc<dyn EventBus>,
    store: &Arc<dyn AggregateStore>,
    clock: &Arc<dyn Clock>,
    config: &WriterConfig,
    status: &WriterStatus,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), WriterError> {
    let topic = config.topic.as_str();
    let max_poll_bytes = config.max_poll_bytes;
    status.update(|s| s.state = "starting");
    let partitions = bus.partition_count(topic).await?;
    let assignment: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let mut consumer = bus
        .consumer(ConsumerConfig {
            max_poll_bytes,
            ..ConsumerConfig::assign(format!("{topic}.writer"), assignment.clone())
        })
        .await?;
    let mut positions = BTreeMap::new();
    for tp in &assignment {
        let stored = {
            let store = store.clone();
            let source = position_source(topic, tp.partition);
            tokio::task::spawn_blocking(move || store.position(&source)).await??
        };
        let start = match stored {
            Some(offset) => StartPosition::Offset(offset),
            None => StartPosition::Earliest,
        };
        let offset = consumer.seek(tp, start).await?;
        positions.insert(tp.partition, offset);
    }
    status.update(|s| {
        s.state = "running";
        s.positions = positions.clone();
    });
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let polled = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
            polled = consumer.poll(Duration::from_millis(200)) => polled?,
        };
        let mut rows: HashMap<AggKey, u64> = HashMap::new();
        let mut partials: HashMap<(u32, u32, i64, u32), PartialTop> = HashMap::new();
        let mut newest_input_ts = i64::MIN;
        let mut skipped = 0u64;
        let mut end_offsets = BTreeMap::new();
        let mut progress = BTreeMap::new();
        for fetched in &polled {
            end_offsets.insert(fetched.partition, fetched.high_watermark);
            for record in fetched.records.iter() {
                positions.insert(fetched.partition, record.offset + 1);
                newest_input_ts = newest_input_ts.max(record.timestamp);
                match AggregateRecord::decode(record.value).map(Decoded::from) {
                    Ok(Decoded::Row(row)) => {
                        rows.insert(row.key, row.count);
                    }
                    Ok(Decoded::Progress {
                        partition,
                        watermark,
                    }) => {
                        progress.insert(partition, watermark);
                    }
                    Ok(Decoded::Partial(partial)) => {
                        let top = &partial.top;
                        let key = (
                            top.window_minutes,
                            top.filter_id,
                            top.window_end_ms,
                            partial.partition,
                        );
                        partials.insert(key, partial);
                    }
                    Err(reason) => {
                        skipped += 1;
                        tracing::warn!(
                            %topic,
                            partition = fetched.partition,
                            offset = record.offset,
                            %reason,
                            "skipping an undecodable aggregates record"
                        );
                    }
                }
            }
        }
        let now = clock.now_ms();
        status.update(|s| {
            s.end_offsets.extend(end_offsets);
            for (&partition, &watermark) in &progress {
                let entry = s.progress.entry(partition).or_default();
                entry.watermark = entry.watermark.max(watermark);
                entry.seen_ms = now;
            }
        });
        // A poll of only progress records still moves the positions, so
        // the writer's position reaches the end of the topic.
        if rows.is_empty() && partials.is_empty() && skipped == 0 && progress.is_empty() {
            continue;
        }
        let batch = WriteBatch {
            rows: rows
                .into_iter()
                .map(|(key, count)| AggregateRow { key, count })
                .collect(),
            tops: Vec::new(),
            partial_tops: partials.into_values().collect(),
            positions: positions
                .iter()
                .map(|(p, offset)| SourcePosition::new(position_source(topic, *p), *offset))
                .collect(),
        };
        let (row_count, partial_count) = (batch.rows.len() as u64, batch.partial_tops.len() as u64);
        let batch = Arc::new(batch);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let result = {
                let (store, batch) = (store.clone(), batch.clone());
                tokio::task::spawn_blocking(move || store.apply(&batch)).await?
            };
            match result {
                Ok(()) => {
                    metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
                    break;
                }
                Err(error @ crate::error::StoreError::PositionRegressed { .. }) => {
                    return Err(error.into());
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "aggregate store write failed; retrying");
                    status.update(|s| {
                        s.state = "retrying";
                        s.error = Some(error.to_string());
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let now = clock.now_ms();
        if newest_input_ts != i64::MIN {
            riffle_stream::metrics::FRESHNESS_SECONDS
                .with_label_values(&[&config.pipeline])
                .observe((now - newest_input_ts).max(0) as f64 / 1000.0);
        }
        metrics::ROWS_APPLIED.inc_by(row_count);
        metrics::PARTIALS_APPLIED.inc_by(partial_count);
        status.update(|s| {
            s.state = "running";
            s.error = None;
            s.positions = positions.clone();
            s.rows_applied += row_count;
            s.partial_tops_applied += partial_count;
            s.records_skipped += skipped;
            s.last_apply_ms = Some(now);
        });
    }
}
