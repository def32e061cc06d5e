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
//!
//! # Replaying the archive instead
//!
//! With [`RecountSource::Parquet`] the records come from the Parquet
//! archive ([`crate::archive`]), which holds the log's records by offset
//! range. The seek is the same — the first archived record with a timestamp
//! at or after `T`, found through the files' max timestamps like the log's
//! time index — and the records go through the operator in the same offset
//! order, so the result is the same as from the log. Past the newest
//! archived offset the replay continues from the log if the log still holds
//! that offset, so a range that reaches into the not yet archived tail is
//! complete too. A hole (records neither archived nor in the log) fails the
//! recount instead of returning smaller counts.
//!
//! # Clicks on another partition than their ad's
//!
//! The live pipeline forwards such clicks (written by a producer with
//! another partitioner) to the task owning the ad through the repartition
//! topic ([`riffle_stream::runtime`]). A recount replays each input
//! partition on its own and does not follow the repartition topic yet, so
//! it cannot count them where the live pipeline did: it fails with
//! [`RecountError::MisPartitioned`] instead of returning — or, for a
//! recalculation, writing — counts that leave them out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use riffle_core::{ErrorCode, HasCode};
use riffle_log::{EventBus, RecordSet, StartPosition};
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
    /// The replayed input holds clicks that are not on their ad's
    /// partition (see the module docs).
    #[error(
        "cannot recount: partition {partition} of the input holds {clicks} clicks of ads other partitions own (written by a producer that does not partition by murmur2 of ad_id); the live pipeline counts them through the repartition topic, a recount does not follow it yet"
    )]
    MisPartitioned { partition: u32, clicks: u64 },
    #[cfg(feature = "parquet")]
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
}

impl HasCode for RecountError {
    fn code(&self) -> ErrorCode {
        match self {
            RecountError::InvalidParam { .. } => ErrorCode::InvalidArgument,
            RecountError::Bus(error) => error.code(),
            RecountError::Stream(error) => error.code(),
            RecountError::Store(error) => error.code(),
            RecountError::Unavailable(_) => ErrorCode::Unavailable,
            RecountError::MisPartitioned { .. } => ErrorCode::FailedPrecondition,
            #[cfg(feature = "parquet")]
            RecountError::Archive(error) => error.code(),
        }
    }
}

/// Where a recount reads raw events from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecountSource {
    /// The input topic of the log.
    Log,
    /// The Parquet archive under this directory ([`crate::archive`]),
    /// continued from the log past its newest file.
    Parquet(PathBuf),
}

impl RecountSource {
    /// `log` or `parquet`, as the API and the CLI spell it.
    pub fn name(&self) -> &'static str {
        match self {
            RecountSource::Log => "log",
            RecountSource::Parquet(_) => "parquet",
        }
    }
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

/// Recounts `[from, to)` from `input_topic` in the log (see the module
/// docs).
pub async fn recount(
    bus: &Arc<dyn EventBus>,
    spec: &Arc<AdsSpec>,
    input_topic: &str,
    from: i64,
    to: i64,
    progress: Progress<'_>,
) -> Result<Recount, RecountError> {
    recount_from(
        bus,
        spec,
        input_topic,
        &RecountSource::Log,
        from,
        to,
        progress,
    )
    .await
}

/// Recounts `[from, to)` from the raw events of `input_topic` in `source`.
pub async fn recount_from(
    bus: &Arc<dyn EventBus>,
    spec: &Arc<AdsSpec>,
    input_topic: &str,
    source: &RecountSource,
    from: i64,
    to: i64,
    progress: Progress<'_>,
) -> Result<Recount, RecountError> {
    check_range(from, to)?;
    let lateness = spec.lateness.allowed_lateness_ms;
    let warmup = spec.max_window_ms() + lateness + spec.out_of_orderness_ms + MINUTE_MS;
    let seek_to = from.saturating_sub(warmup);
    let mut replay = Replay {
        topic: input_topic,
        partitions: bus.partition_count(input_topic).await?,
        from,
        to,
        stop_at: to.saturating_add(lateness),
        rows: BTreeMap::new(),
        partials: BTreeMap::new(),
        read: 0,
        total: 0,
        progress,
    };
    match source {
        RecountSource::Log => {
            let plan = plan_log(bus, input_topic, from, warmup, seek_to).await?;
            replay.total = plan
                .iter()
                .map(|(_, first, end)| end.saturating_sub(*first))
                .sum();
            progress(0, replay.total);
            for (partition, first, end) in plan {
                let mut run = replay.partition(spec, partition)?;
                replay.feed_log(bus, &mut run, first, end).await?;
                replay.close(run)?;
            }
        }
        #[cfg(feature = "parquet")]
        RecountSource::Parquet(dir) => {
            parquet::replay(bus, spec, dir, from, warmup, seek_to, &mut replay).await?;
        }
        #[cfg(not(feature = "parquet"))]
        RecountSource::Parquet(_) => {
            return Err(RecountError::InvalidParam {
                param: "source",
                message: "parquet: this riffle was built without the parquet feature".into(),
            });
        }
    }
    let mut result = Recount {
        from,
        to,
        ..Recount::default()
    };
    result.rows = replay.rows;
    result.rows.retain(|_, count| *count > 0);
    result.partials = replay.partials.into_values().collect();
    result.records_read = replay.read;
    let done = replay.total.max(replay.read);
    progress(done, done);
    Ok(result)
}

/// Per partition of the log: the offset the seek lands on and the end.
async fn plan_log(
    bus: &Arc<dyn EventBus>,
    input_topic: &str,
    from: i64,
    warmup: i64,
    seek_to: i64,
) -> Result<Vec<(u32, u64, u64)>, RecountError> {
    let partitions = bus.partition_count(input_topic).await?;
    let description = bus.describe_topic(input_topic).await?;
    let mut plan = Vec::new();
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
        plan.push((partition, first, end_offset));
    }
    Ok(plan)
}

/// The state of one recount: what it collected so far and its progress.
struct Replay<'a> {
    topic: &'a str,
    /// The input's partition count: a click's ad decides its partition.
    partitions: u32,
    from: i64,
    to: i64,
    /// A partition whose watermark reached this has produced everything
    /// the range depends on.
    stop_at: i64,
    rows: BTreeMap<AggKey, u64>,
    partials: BTreeMap<(u32, u32, i64, u32), PartialTop>,
    read: u64,
    total: u64,
    progress: Progress<'a>,
}

/// The separate operator instance replaying one partition.
struct PartitionRun {
    partition: u32,
    op: AdClickOperator,
    out: Collector<SinkRecord>,
}

impl Replay<'_> {
    fn partition(&self, spec: &Arc<AdsSpec>, partition: u32) -> Result<PartitionRun, RecountError> {
        Ok(PartitionRun {
            partition,
            op: AdClickOperator::new(spec.clone(), partition)?,
            out: Collector::new(),
        })
    }

    /// Feeds the records of `records` in `[first, next)`; true once the
    /// partition's watermark has passed the stop point.
    fn feed(
        &mut self,
        run: &mut PartitionRun,
        records: &RecordSet,
        first: u64,
        next: u64,
    ) -> Result<bool, RecountError> {
        let batch = SourceBatch::new(self.topic, run.partition, records, first, next)
            .routed(self.partitions);
        let fed = batch.iter().count() as u64;
        run.op.process_batch(batch, &mut run.out)?;
        run.op.handle_tick(0, &mut run.out)?;
        collect(
            &mut run.out,
            self.from,
            self.to,
            &mut self.rows,
            &mut self.partials,
        );
        self.read += fed;
        (self.progress)(self.read, self.total.max(self.read));
        Ok(run.op.watermark().is_some_and(|w| w >= self.stop_at))
    }

    /// Feeds the log's records `[first, end)`; true once the partition is
    /// done.
    async fn feed_log(
        &mut self,
        bus: &Arc<dyn EventBus>,
        run: &mut PartitionRun,
        first: u64,
        end: u64,
    ) -> Result<bool, RecountError> {
        let mut offset = first;
        while offset < end {
            let fetched = bus
                .fetch(self.topic, run.partition, offset, FETCH_BYTES)
                .await?;
            let Some(next) = fetched.records.next_offset() else {
                break;
            };
            let next = next.min(end);
            if self.feed(run, &fetched.records, offset, next)? {
                return Ok(true);
            }
            offset = next;
        }
        Ok(false)
    }

    fn close(&mut self, mut run: PartitionRun) -> Result<(), RecountError> {
        if run.op.forwarded() > 0 {
            return Err(RecountError::MisPartitioned {
                partition: run.partition,
                clicks: run.op.forwarded(),
            });
        }
        run.op.on_close(&mut run.out)?;
        collect(
            &mut run.out,
            self.from,
            self.to,
            &mut self.rows,
            &mut self.partials,
        );
        Ok(())
    }
}

#[cfg(feature = "parquet")]
mod parquet {
    use std::path::Path;
    use std::sync::Arc;

    use riffle_log::{BusError, EventBus};

    use super::{RecountError, Replay};
    use crate::archive::{self, ArchiveFile};
    use crate::operator::AdsSpec;
    use crate::store::MINUTE_MS;

    /// Records handed to the operator at a time, like one log fetch.
    const FEED_RECORDS: usize = 16_384;

    /// One partition's plan: its files from the one the seek lands in.
    struct Plan {
        partition: u32,
        files: Vec<ArchiveFile>,
        /// The offset the seek lands on (within `files[0]`), or the end of
        /// the archive when every archived record is older than the seek.
        first: u64,
    }

    fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, archive::ArchiveError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, RecountError>> {
        let handle = tokio::task::spawn_blocking(work);
        async move { Ok(handle.await.expect("archive reader panicked")?) }
    }

    pub(super) async fn replay(
        bus: &Arc<dyn EventBus>,
        spec: &Arc<AdsSpec>,
        dir: &Path,
        from: i64,
        warmup: i64,
        seek_to: i64,
        replay: &mut Replay<'_>,
    ) -> Result<(), RecountError> {
        let topic = replay.topic.to_string();
        let description = match bus.describe_topic(&topic).await {
            Ok(description) => Some(description),
            Err(BusError::TopicNotFound(_)) => None,
            Err(error) => return Err(error.into()),
        };
        let mut partitions = {
            let (dir, topic) = (dir.to_path_buf(), topic.clone());
            blocking(move || archive::archived_partitions(&dir, &topic)).await?
        };
        if let Some(description) = &description {
            partitions.extend(description.partitions.iter().map(|p| p.partition));
        }
        partitions.sort_unstable();
        partitions.dedup();
        let log_range = |partition: u32| {
            description.as_ref().and_then(|d| {
                d.partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .map(|p| (p.start_offset, p.end_offset))
            })
        };
        let missing = |message: String| RecountError::InvalidParam {
            param: "from",
            message: format!("raw data needed for {from} is not in the archive: {message}"),
        };

        let mut plans = Vec::new();
        for partition in partitions {
            let (listed_dir, topic) = (dir.to_path_buf(), topic.clone());
            let (files, ranges) = blocking(move || {
                let files = archive::list_files(&listed_dir, &topic, partition)?;
                let ranges = files
                    .iter()
                    .map(|f| archive::time_range(&f.path))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((files, ranges))
            })
            .await?;
            let Some(oldest) = files.first() else {
                if log_range(partition).is_some_and(|(start, end)| start < end || start > 0) {
                    return Err(missing(format!(
                        "partition {partition} has no archived files in {} (run an archive pass: POST /v1/ads/archive)",
                        dir.display()
                    )));
                }
                continue;
            };
            let start = ranges
                .iter()
                .position(|r| r.is_some_and(|(_, max)| max >= seek_to))
                .unwrap_or(files.len());
            if start == 0 && oldest.first_offset > 0 {
                // The archive begins after offset 0: older records may be
                // missing unless the first archived one is already old
                // enough (as the log's own retention check).
                let oldest_ts = ranges[0].map(|(min, _)| min);
                if oldest_ts.is_some_and(|t| t > seek_to) {
                    let first_file = archive::read_file(oldest).map_err(RecountError::from)?;
                    let first_ts = first_file.timestamps.first().copied().unwrap_or(seek_to);
                    if first_ts > seek_to {
                        let earliest =
                            (first_ts + warmup).div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS;
                        return Err(missing(format!(
                            "partition {partition} is archived from offset {} on; the earliest complete range starts at {earliest}",
                            oldest.first_offset
                        )));
                    }
                }
            }
            let archived_until = files.last().map_or(0, |f| f.next_offset);
            let files: Vec<ArchiveFile> = files.into_iter().skip(start).collect();
            let first = files.first().map_or(archived_until, |f| f.first_offset);
            let rows: u64 = files.iter().map(|f| f.next_offset - f.first_offset).sum();
            replay.total += rows;
            plans.push((
                Plan {
                    partition,
                    files,
                    first,
                },
                archived_until,
            ));
        }
        (replay.progress)(0, replay.total);

        for (plan, archived_until) in plans {
            let mut run = replay.partition(spec, plan.partition)?;
            let mut done = false;
            let mut expected = plan.first;
            let mut first_file = true;
            for file in plan.files {
                if file.first_offset > expected {
                    return Err(missing(format!(
                        "partition {} has a hole at offsets {expected}..{} (deleted before they were archived)",
                        plan.partition, file.first_offset
                    )));
                }
                let records = {
                    let file = file.clone();
                    blocking(move || archive::read_file(&file)).await?
                };
                // In the first file, start at the first record the log's
                // time index would land on.
                let mut row = 0;
                if first_file {
                    row = records
                        .timestamps
                        .iter()
                        .position(|t| *t >= seek_to)
                        .unwrap_or(records.len());
                    first_file = false;
                }
                while row < records.len() && !done {
                    let until = (row + FEED_RECORDS).min(records.len());
                    let set = records.record_set(row..until);
                    let next = records
                        .offsets
                        .get(until)
                        .copied()
                        .unwrap_or(file.next_offset);
                    done = replay.feed(&mut run, &set, records.offsets[row], next)?;
                    row = until;
                }
                expected = file.next_offset;
                if done {
                    break;
                }
            }
            if !done {
                // Past the archive: the log's tail, when it still continues
                // the archive (not when the topic was recreated behind it).
                match log_range(plan.partition) {
                    Some((start, end)) if end > archived_until => {
                        if start > archived_until {
                            return Err(missing(format!(
                                "partition {} is archived up to offset {archived_until} but the log starts at {start}",
                                plan.partition
                            )));
                        }
                        replay.total += end - archived_until;
                        replay.feed_log(bus, &mut run, archived_until, end).await?;
                    }
                    _ => {}
                }
            }
            replay.close(run)?;
        }
        Ok(())
    }
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
            Decoded::Progress { .. } => {}
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
