//! Batch recount of a time range from raw data in the log — the Kappa half
//! of the design: reconciliation compares it with the store, recalculation
//! replaces the store's range with it. It runs the same [`AdClickOperator`]
//! as the live pipeline, as a separate instance reading the log directly, so
//! live aggregation is not disturbed.
//!
//! # Why the recount equals the live result
//!
//! Records carry their event time as timestamp and the log indexes the
//! running maximum timestamp, so seeking to time `T` lands on the first
//! offset `k` before which every record is older than `T`. With
//! `T = from − longest top window − allowed lateness − out-of-orderness −
//! 1 min`, replay from `k` reproduces the live watermark from the first record
//! on (everything before `k` is older than the record at `k`), dedup sees
//! every original of every duplicate that can touch the range, and any
//! difference in the first record's classification only concerns minutes
//! before `T`, outside the range. A partition is read until its watermark
//! passes `to + allowed lateness` (nothing later can change the range) or
//! its end.

use std::collections::BTreeMap;
use std::sync::Arc;

use riffle_log::{EventBus, StartPosition};
use riffle_stream::{Collector, Operator, SinkRecord, SourceBatch};

use crate::operator::{AdClickOperator, AdsSpec, AGGREGATES_SINK};
use crate::records::{AggregateRecord, Decoded};
use crate::store::{AggKey, AggregateRow, PartialTop, MINUTE_MS};

const FETCH_BYTES: usize = 4 << 20;

/// The recounted aggregates of `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recount {
    pub from: i64,
    pub to: i64,
    /// Every (minute, ad, filter) with a non-zero count in the range.
    pub rows: BTreeMap<AggKey, u64>,
    /// Partial tops of the windows ending in `(from, to]`.
    pub partials: Vec<PartialTop>,
    pub records_read: u64,
}

impl Recount {
    pub fn rows(&self) -> Vec<AggregateRow> {
        self.rows
            .iter()
            .map(|(key, count)| AggregateRow {
                key: key.clone(),
                count: *count,
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecountError {
    #[error("invalid {param}: {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    #[error(transparent)]
    Bus(#[from] riffle_log::BusError),
    #[error(transparent)]
    Stream(#[from] riffle_stream::StreamError),
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
    /// The aggregate writer did not catch up in time (recalc waits for it).
    #[error("{0}")]
    Unavailable(String),
}

/// Progress of a recount: records read so far and the estimated total.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// `[from, to)` minute-aligned and non-empty.
pub(crate) fn check_range(from: i64, to: i64) -> Result<(), RecountError> {
    for (param, value) in [("from", from), ("to", to)] {
        if value.rem_euclid(MINUTE_MS) != 0 {
            return Err(RecountError::InvalidParam {
                param,
                message: format!("{value} is not minute-aligned"),
            });
        }
    }
    if from >= to {
        return Err(RecountError::InvalidParam {
            param: "to",
            message: format!("{to} must be after from ({from})"),
        });
    }
    Ok(())
}

/// Recounts `[from, to)` from `input_topic` (see the module docs).
pub async fn recount(
    bus: &Arc<dyn EventBus>,
    spec: &Arc<AdsSpec>,
    input_topic: &str,
    from: i64,
    to: i64,
    progress: Progress<'_>,
) -> Result<Recount, RecountError> {
    check_range(from, to)?;
    let lateness = spec.lateness.allowed_lateness_ms;
    let warmup = spec.max_window_ms() + lateness + spec.out_of_orderness_ms + MINUTE_MS;
    let seek_to = from.saturating_sub(warmup);
    let partitions = bus.partition_count(input_topic).await?;
    let description = bus.describe_topic(input_topic).await?;
    let mut plan = Vec::new();
    let mut total = 0u64;
    for partition in 0..partitions {
        let info = description
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .cloned();
        let (start_offset, end_offset) = info
            .map(|i| (i.start_offset, i.end_offset))
            .unwrap_or((0, 0));
        let first = bus
            .resolve_offset(input_topic, partition, StartPosition::Timestamp(seek_to))
            .await?;
        if first == start_offset && start_offset > 0 && first < end_offset {
            // Retention removed the beginning of the partition: records the
            // range depends on may be gone.
            let fetched = bus.fetch(input_topic, partition, first, 64 * 1024).await?;
            let oldest = fetched.records.iter().next().map(|r| r.timestamp);
            if oldest.is_some_and(|t| t > seek_to) {
                let earliest = oldest.unwrap_or(seek_to) + warmup;
                let earliest = earliest.div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS;
                return Err(RecountError::InvalidParam {
                    param: "from",
                    message: format!(
                        "raw data needed for {from} is no longer in the log (retention deleted partition {partition} before offset {start_offset}); the earliest complete range starts at {earliest}"
                    ),
                });
            }
        }
        total += end_offset.saturating_sub(first);
        plan.push((partition, first, end_offset));
    }
    let mut result = Recount {
        from,
        to,
        ..Recount::default()
    };
    let mut partials: BTreeMap<(u32, u32, i64, u32), PartialTop> = BTreeMap::new();
    let mut read = 0u64;
    progress(0, total);
    for (partition, first, end) in plan {
        let mut op = AdClickOperator::new(spec.clone(), partition)?;
        let mut out: Collector<SinkRecord> = Collector::new();
        let mut offset = first;
        while offset < end {
            let fetched = bus
                .fetch(input_topic, partition, offset, FETCH_BYTES)
                .await?;
            let Some(next) = fetched.records.next_offset() else {
                break;
            };
            let next = next.min(end);
            let batch = SourceBatch::new(input_topic, partition, &fetched.records, offset, next);
            op.process_batch(batch, &mut out)?;
            op.handle_tick(0, &mut out)?;
            collect(&mut out, from, to, &mut result.rows, &mut partials);
            read += next - offset;
            offset = next;
            progress(read, total);
            if op
                .watermark()
                .is_some_and(|w| w >= to.saturating_add(lateness))
            {
                break;
            }
        }
        op.on_close(&mut out)?;
        collect(&mut out, from, to, &mut result.rows, &mut partials);
    }
    result.rows.retain(|_, count| *count > 0);
    result.partials = partials.into_values().collect();
    result.records_read = read;
    progress(total.max(read), total.max(read));
    Ok(result)
}

fn collect(
    out: &mut Collector<SinkRecord>,
    from: i64,
    to: i64,
    rows: &mut BTreeMap<AggKey, u64>,
    partials: &mut BTreeMap<(u32, u32, i64, u32), PartialTop>,
) {
    for record in out.drain() {
        if record.sink != AGGREGATES_SINK {
            continue;
        }
        let Ok(decoded) = AggregateRecord::decode(&record.value) else {
            continue;
        };
        match Decoded::from(decoded) {
            Decoded::Row(row) => {
                if (from..to).contains(&row.key.minute_start_ms) {
                    rows.insert(row.key, row.count);
                }
            }
            Decoded::Partial(partial) => {
                let top = &partial.top;
                if top.window_end_ms > from && top.window_end_ms <= to {
                    partials.insert(
                        (
                            top.window_minutes,
                            top.filter_id,
                            top.window_end_ms,
                            partial.partition,
                        ),
                        partial,
                    );
                }
            }
        }
    }
}
