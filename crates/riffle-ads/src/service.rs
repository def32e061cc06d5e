//! The running ad click pipeline: one [`AdClickOperator`] task per input
//! partition this process owns, the aggregate writer, retention of the
//! store, the hourly Parquet archive of the raw input (feature `parquet`),
//! and the status that `GET /v1/pipelines` and the `complete` flag of
//! queries read.
//!
//! **Roles.** `process` runs the tasks; `serve` runs the writer (which
//! materialises the aggregates topic into this process's store and merges
//! the partial top-Ns), retention and the archive. Either may run alone.
//!
//! **Ownership.** The tasks follow the bus's ownership group
//! `<pipeline>.owners` on the input topic through the stream engine's
//! [`Supervisor`]: on the embedded log this process owns every partition;
//! on Kafka the consumer-group protocol splits them among the `process`
//! members; a revoked partition's task checkpoints before it is released.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AdsConfig;
use parking_lot::Mutex;
use riffle_core::time::Clock;
use riffle_log::{EventBus, TopicConfig};
use riffle_stream::{
    ensure_topic, tasks_watermark, CheckpointStore, IdlePolicy, PartitionTasks, RepartitionConfig,
    StreamError, Supervisor, TaskConfig, TaskSet, TaskSnapshot,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::StartError;
use crate::filter::FilterInfo;
use crate::metrics;
use crate::operator::{AdClickOperator, AdsSpec, AGGREGATES_SINK, LATE_SINK};
use crate::recount::{recount_from, RecountError, RecountSource};
use crate::store::{AggregateStore, MINUTE_MS};
use crate::writer::{run_writer, WriterConfig, WriterSnapshot, WriterStatus};

/// How often retention runs over the aggregate store.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
const MAX_POLL_BYTES: usize = 1 << 20;

/// Which halves of the pipeline a process runs (`server.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineRoles {
    /// The per-partition tasks (role `process`).
    pub process: bool,
    /// The aggregate writer, store retention and the archive (role `serve`).
    pub serve: bool,
}

impl PipelineRoles {
    pub const ALL: PipelineRoles = PipelineRoles {
        process: true,
        serve: true,
    };
}

/// A started pipeline. Cheap to share; queries read it concurrently.
pub struct AdsPipeline {
    spec: Arc<AdsSpec>,
    config: AdsConfig,
    bus: Arc<dyn EventBus>,
    store: Arc<dyn AggregateStore>,
    clock: Arc<dyn Clock>,
    roles: PipelineRoles,
    partitions: u32,
    /// The tasks of the partitions this process owns now.
    tasks: TaskSet,
    writer: Arc<WriterStatus>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    recalcs: Mutex<BTreeMap<u64, Arc<Mutex<RecalcStatus>>>>,
    /// `ads.archive_dir` as given (the server makes it absolute); `None`
    /// when archiving is off.
    archive_dir: Option<PathBuf>,
    /// One archive pass at a time (the loop and `POST /v1/ads/archive`).
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    archive_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Most mismatches listed in one reconciliation report (all are counted).
pub const MAX_LISTED_MISMATCHES: usize = 10_000;

/// One stored count that differs from the recount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub ad_id: String,
    pub minute: i64,
    pub filter_id: u32,
    pub stored: u64,
    pub expected: u64,
}

/// The answer of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub from: i64,
    pub to: i64,
    /// `log` or `parquet`: where the raw events were read.
    pub source: &'static str,
    pub stored_rows: u64,
    pub expected_rows: u64,
    /// Sum of the unfiltered counts (filter 0) in the store and recounted.
    pub stored_total: u64,
    pub expected_total: u64,
    pub mismatch_count: u64,
    /// Ordered by (minute, ad_id, filter_id); at most
    /// [`MAX_LISTED_MISMATCHES`].
    pub mismatches: Vec<Mismatch>,
    pub truncated: bool,
    pub records_read: u64,
}

/// A recalculation job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecalcStatus {
    pub id: u64,
    pub from: i64,
    pub to: i64,
    /// `log` or `parquet`: where the raw events are read.
    pub source: &'static str,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    pub records_read: u64,
    pub records_total: u64,
    pub rows_written: u64,
    pub partial_tops_written: u64,
    pub error: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
}

/// One task in `GET /v1/pipelines`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    #[serde(flatten)]
    pub task: TaskSnapshot,
    /// Records in the input partition not yet processed.
    pub lag: u64,
    /// Whether the partition is idle (caught up and quiet for
    /// `idle_timeout_ms`), so it does not hold back the watermark.
    pub idle: bool,
}

/// One pipeline in `GET /v1/pipelines`.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub name: String,
    pub input_topic: String,
    pub output_topic: String,
    pub late_topic: String,
    /// The pipeline watermark: the minimum over non-idle partitions (wall
    /// clock − out-of-orderness when all are idle); `null` before data.
    pub watermark: Option<i64>,
    pub lag: u64,
    pub partitions: Vec<PartitionReport>,
    pub writer: WriterSnapshot,
}

impl AdsPipeline {
    /// Creates the topics it needs, then starts every task and the writer.
    /// `topic_template` gives retention and segment size of created topics
    /// and the partition count of the input topic if it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        bus: Arc<dyn EventBus>,
        store: Arc<dyn AggregateStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        clock: Arc<dyn Clock>,
        config: &AdsConfig,
        topic_template: &TopicConfig,
        roles: PipelineRoles,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<AdsPipeline>, StartError> {
        let spec = Arc::new(AdsSpec::from_config(config)?);
        let ensure = |name: String, partitions: u32| {
            let bus = bus.clone();
            async move { ensure_topic(bus.as_ref(), &name, partitions, topic_template).await }
        };
        let partitions = ensure(config.input_topic.clone(), topic_template.partitions).await?;
        ensure(config.aggregates_topic.clone(), partitions).await?;
        ensure(config.late_topic(), partitions).await?;
        // Forwarded clicks are routed modulo the input's partition count, so
        // the repartition topic must have exactly that many.
        let repartition_topic = config.repartition_topic();
        let existing = ensure(repartition_topic.clone(), partitions).await?;
        if existing != partitions {
            return Err(StreamError::Topic {
                topic: repartition_topic,
                reason: format!(
                    "has {existing} partitions, the input {:?} has {partitions}; they must match (delete the repartition topic while the pipeline is stopped and it is recreated)",
                    config.input_topic
                ),
            }
            .into());
        }

        let writer = Arc::new(WriterStatus::default());
        let tasks = TaskSet::default();
        let pipeline = Arc::new(AdsPipeline {
            spec: spec.clone(),
            config: config.clone(),
            bus: bus.clone(),
            store: store.clone(),
            clock: clock.clone(),
            roles,
            partitions,
            tasks: tasks.clone(),
            writer: writer.clone(),
            handles: Mutex::new(Vec::new()),
            recalcs: Mutex::new(BTreeMap::new()),
            archive_dir: (!config.archive_dir.is_empty())
                .then(|| PathBuf::from(&config.archive_dir)),
            archive_lock: Arc::new(tokio::sync::Mutex::new(())),
        });
        let mut handles = Vec::new();
        if roles.process {
            let tasks_of = Arc::new(AdsTasks {
                spec: spec.clone(),
                config: config.clone(),
                partitions,
            });
            let supervisor =
                Supervisor::new(tasks_of, bus.clone(), checkpoints, clock.clone(), tasks);
            handles.push(
                supervisor
                    .spawn(
                        &config.owners_group(),
                        &config.input_topic,
                        shutdown.clone(),
                    )
                    .await
                    .map_err(|source| StartError::Ownership {
                        group: config.owners_group(),
                        source,
                    })?,
            );
        }
        if !roles.serve {
            *pipeline.handles.lock() = handles;
            return Ok(pipeline);
        }
        let writer_config = WriterConfig {
            pipeline: config.pipeline.clone(),
            topic: config.aggregates_topic.clone(),
            max_poll_bytes: 4 * MAX_POLL_BYTES,
        };
        handles.push(tokio::spawn({
            let (bus, store, clock, shutdown) =
                (bus.clone(), store.clone(), clock.clone(), shutdown.clone());
            async move {
                let _ = run_writer(bus, store, clock, writer_config, writer, shutdown).await;
            }
        }));
        #[cfg(feature = "parquet")]
        if let Some(dir) = pipeline.archive_dir.clone() {
            handles.push(tokio::spawn(archive_loop(
                bus.clone(),
                config.input_topic.clone(),
                dir,
                pipeline.archive_lock.clone(),
                Duration::from_millis(config.archive_interval_ms),
                shutdown.clone(),
            )));
        }
        handles.push(tokio::spawn(retention_loop(
            store,
            clock,
            config.retention_ms,
            shutdown,
        )));
        *pipeline.handles.lock() = handles;
        Ok(pipeline)
    }

    pub fn spec(&self) -> &AdsSpec {
        &self.spec
    }

    pub fn config(&self) -> &AdsConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn AggregateStore> {
        &self.store
    }

    pub fn filters(&self) -> &[FilterInfo] {
        self.spec.filters.infos()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn idle_policy(&self) -> IdlePolicy {
        IdlePolicy {
            idle_timeout_ms: self.config.idle_timeout_ms,
            out_of_orderness_ms: self.config.out_of_orderness_ms,
        }
    }

    fn task_snapshots(&self) -> Vec<TaskSnapshot> {
        self.tasks.snapshots()
    }

    pub fn roles(&self) -> PipelineRoles {
        self.roles
    }

    /// The input topic's partition count when the pipeline started.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// The pipeline watermark (see [`PipelineReport::watermark`]).
    pub fn watermark(&self) -> Option<i64> {
        let snapshots = self.task_snapshots();
        self.pipeline_watermark(&snapshots, self.clock.now_ms())
    }

    /// From this process's tasks when they cover every partition (one
    /// process runs the whole pipeline); otherwise from the `progress`
    /// records the writer has read off the aggregates topic, which every
    /// partition's owner announces wherever it runs.
    fn pipeline_watermark(&self, tasks: &[TaskSnapshot], now: i64) -> Option<i64> {
        if tasks.len() >= self.partitions as usize {
            return tasks_watermark(tasks, self.idle_policy(), now);
        }
        let progress = self.writer.snapshot().progress;
        let mut active_min: Option<i64> = None;
        for p in progress.values() {
            // Quiet for idle_timeout_ms: the partition is idle and does not
            // hold the pipeline back (the rule tasks use, by announcement).
            if now - p.seen_ms < self.config.idle_timeout_ms {
                active_min = Some(active_min.map_or(p.watermark, |m| m.min(p.watermark)));
            }
        }
        if active_min.is_some() {
            return active_min;
        }
        let newest = progress.values().map(|p| p.watermark).max();
        let by_clock = now - self.config.out_of_orderness_ms;
        Some(newest.map_or(by_clock, |w| w.max(by_clock)))
    }

    /// The report of `GET /v1/pipelines`.
    pub async fn report(&self) -> PipelineReport {
        let now = self.clock.now_ms();
        let ends = self
            .bus
            .describe_topic(&self.config.input_topic)
            .await
            .map(|d| d.partitions)
            .unwrap_or_default();
        let mut snapshots = self.task_snapshots();
        for task in &mut snapshots {
            if let Some(info) = ends.iter().find(|p| p.partition == task.partition) {
                task.end_offset = task.end_offset.max(info.end_offset);
            }
        }
        let watermark = self.pipeline_watermark(&snapshots, now);
        let partitions: Vec<PartitionReport> = snapshots
            .into_iter()
            .map(|task| PartitionReport {
                lag: task.end_offset.saturating_sub(task.processed_offset),
                idle: self.idle_policy().is_idle(&task, now),
                task,
            })
            .collect();
        PipelineReport {
            name: self.config.pipeline.clone(),
            input_topic: self.config.input_topic.clone(),
            output_topic: self.config.aggregates_topic.clone(),
            late_topic: self.config.late_topic(),
            watermark,
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            writer: self.writer.snapshot(),
        }
    }

    /// The recount source named `log` (also when `None`) or `parquet`.
    pub fn recount_source(&self, name: Option<&str>) -> Result<RecountSource, RecountError> {
        match name.unwrap_or("log") {
            "log" => Ok(RecountSource::Log),
            "parquet" if !cfg!(feature = "parquet") => Err(RecountError::InvalidParam {
                param: "source",
                message: "parquet: this riffle was built without the parquet feature".into(),
            }),
            "parquet" => match &self.archive_dir {
                Some(dir) => Ok(RecountSource::Parquet(dir.clone())),
                None => Err(RecountError::InvalidParam {
                    param: "source",
                    message: "parquet: there is no archive (ads.archive_dir is empty)".into(),
                }),
            },
            other => Err(RecountError::InvalidParam {
                param: "source",
                message: format!("{other:?} is not \"log\" or \"parquet\""),
            }),
        }
    }

    /// Archives the input written since the last pass now (the same pass
    /// the hourly loop runs).
    #[cfg(feature = "parquet")]
    pub async fn archive_now(
        &self,
    ) -> Result<crate::archive::ArchiveReport, crate::archive::ArchiveError> {
        let Some(dir) = &self.archive_dir else {
            return Err(crate::archive::ArchiveError::Disabled);
        };
        let _pass = self.archive_lock.lock().await;
        crate::archive::archive_once(&self.bus, &self.config.input_topic, dir).await
    }

    /// Recounts `[from, to)` from the raw events in `source` and compares
    /// every (minute, ad, filter) with the store. Sets the
    /// `riffle_ads_reconcile_mismatches` gauge.
    pub async fn reconcile(
        &self,
        from: i64,
        to: i64,
        source: &RecountSource,
    ) -> Result<ReconcileReport, RecountError> {
        let counted = recount_from(
            &self.bus,
            &self.spec,
            &self.config.input_topic,
            source,
            from,
            to,
            &|_, _| {},
        )
        .await?;
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.scan(from, to, None))
            .await
            .expect("store scan panicked")?;
        let mut report = ReconcileReport {
            from,
            to,
            source: source.name(),
            stored_rows: stored.len() as u64,
            expected_rows: counted.rows.len() as u64,
            stored_total: stored
                .iter()
                .filter(|r| r.key.filter_id == crate::store::NO_FILTER)
                .map(|r| r.count)
                .sum(),
            expected_total: counted
                .rows
                .iter()
                .filter(|(k, _)| k.filter_id == crate::store::NO_FILTER)
                .map(|(_, c)| *c)
                .sum(),
            mismatch_count: 0,
            mismatches: Vec::new(),
            truncated: false,
            records_read: counted.records_read,
        };
        let mut stored_map: BTreeMap<crate::store::AggKey, u64> = stored
            .into_iter()
            .filter(|r| r.count > 0)
            .map(|r| (r.key, r.count))
            .collect();
        let mut differences = Vec::new();
        for (key, expected) in &counted.rows {
            let stored = stored_map.remove(key).unwrap_or(0);
            if stored != *expected {
                differences.push((key.clone(), stored, *expected));
            }
        }
        for (key, stored) in stored_map {
            differences.push((key, stored, 0));
        }
        differences.sort_by(|a, b| a.0.cmp(&b.0));
        report.mismatch_count = differences.len() as u64;
        report.truncated = differences.len() > MAX_LISTED_MISMATCHES;
        report.mismatches = differences
            .into_iter()
            .take(MAX_LISTED_MISMATCHES)
            .map(|(key, stored, expected)| Mismatch {
                ad_id: key.ad_id,
                minute: key.minute_start_ms,
                filter_id: key.filter_id,
                stored,
                expected,
            })
            .collect();
        metrics::RECONCILE_MISMATCHES.set(report.mismatch_count as i64);
        Ok(report)
    }

    /// Starts recalculating `[from, to)`: a recount from `source` replaces
    /// the range's counts and the tops of windows ending in `(from, to]` in
    /// one store transaction. The range must be final (`to + allowed
    /// lateness` at or before the watermark) so the live pipeline can no
    /// longer change it.
    pub fn start_recalc(
        self: &Arc<Self>,
        from: i64,
        to: i64,
        source: RecountSource,
    ) -> Result<u64, RecountError> {
        crate::recount::check_range(from, to)?;
        let lateness = self.config.allowed_lateness_ms;
        let final_until = self.watermark().map(|w| w - lateness);
        if final_until.is_none_or(|f| to > f) {
            return Err(RecountError::InvalidParam {
                param: "to",
                message: format!(
                    "{to} is not final yet: the live pipeline may still change it until the watermark passes to + allowed_lateness_ms (watermark {}, allowed_lateness_ms {lateness})",
                    self.watermark().map_or("none".to_string(), |w| w.to_string())
                ),
            });
        }
        let status = {
            let mut recalcs = self.recalcs.lock();
            let id = recalcs.keys().next_back().map_or(1, |id| id + 1);
            let status = Arc::new(Mutex::new(RecalcStatus {
                id,
                from,
                to,
                source: source.name(),
                state: "running",
                records_read: 0,
                records_total: 0,
                rows_written: 0,
                partial_tops_written: 0,
                error: None,
                started_ms: self.clock.now_ms(),
                finished_ms: None,
            }));
            recalcs.insert(id, status.clone());
            status
        };
        let id = status.lock().id;
        let pipeline = self.clone();
        tokio::spawn(async move {
            let progress_status = status.clone();
            let progress = move |read: u64, total: u64| {
                let mut s = progress_status.lock();
                s.records_read = read;
                s.records_total = total;
            };
            let result = async {
                let counted = recount_from(
                    &pipeline.bus,
                    &pipeline.spec,
                    &pipeline.config.input_topic,
                    &source,
                    from,
                    to,
                    &progress,
                )
                .await?;
                let rows = counted.rows();
                let (row_count, partial_count) = (rows.len() as u64, counted.partials.len() as u64);
                // The range is final, so no new output for it is produced;
                // but rows for it may still sit in the aggregates topic.
                // Let the writer apply them first, or it would overwrite
                // the recalculated values afterwards.
                pipeline.wait_for_writer(Duration::from_secs(120)).await?;
                let store = pipeline.store.clone();
                tokio::task::spawn_blocking(move || {
                    store.replace_range(from, to, &rows, &counted.partials)
                })
                .await
                .expect("store replace panicked")?;
                Ok::<_, RecountError>((row_count, partial_count))
            }
            .await;
            let now = pipeline.clock.now_ms();
            let mut s = status.lock();
            s.finished_ms = Some(now);
            match result {
                Ok((rows, partials)) => {
                    s.state = "done";
                    s.rows_written = rows;
                    s.partial_tops_written = partials;
                    tracing::info!(from, to, rows, partials, "recalculation replaced the range");
                }
                Err(error) => {
                    s.state = "failed";
                    s.error = Some(error.to_string());
                    tracing::warn!(from, to, %error, "recalculation failed");
                }
            }
        });
        Ok(id)
    }

    /// Waits until the writer has applied everything in the aggregates
    /// topic up to its end offsets at the time of the call.
    async fn wait_for_writer(&self, timeout: Duration) -> Result<(), RecountError> {
        let ends: Vec<(u32, u64)> = self
            .bus
            .describe_topic(&self.config.aggregates_topic)
            .await?
            .partitions
            .iter()
            .map(|p| (p.partition, p.end_offset))
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let positions = self.writer.snapshot().positions;
            let caught_up = ends
                .iter()
                .all(|(p, end)| positions.get(p).copied().unwrap_or(0) >= *end);
            if caught_up {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RecountError::Unavailable(format!(
                    "the aggregate writer did not catch up with {} within {} s; nothing was replaced",
                    self.config.aggregates_topic,
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn recalc_status(&self, id: u64) -> Option<RecalcStatus> {
        self.recalcs.lock().get(&id).map(|s| s.lock().clone())
    }

    /// Waits for every task to stop (after shutdown was signalled).
    pub async fn join(&self) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.handles.lock());
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// How the ad click pipeline builds the task of a partition.
struct AdsTasks {
    spec: Arc<AdsSpec>,
    config: AdsConfig,
    /// The input topic's partition count (the repartition modulus).
    partitions: u32,
}

impl PartitionTasks for AdsTasks {
    type Operator = AdClickOperator;

    fn pipeline(&self) -> &str {
        &self.config.pipeline
    }

    fn task_config(&self, partition: u32) -> TaskConfig {
        TaskConfig {
            pipeline: self.config.pipeline.clone(),
            input_topic: self.config.input_topic.clone(),
            partition,
            sinks: vec![
                (AGGREGATES_SINK, self.config.aggregates_topic.clone()),
                (LATE_SINK, self.config.late_topic()),
            ],
            repartition: Some(RepartitionConfig {
                topic: self.config.repartition_topic(),
                partitions: self.partitions,
            }),
            emit_interval: Duration::from_millis(self.config.emit_interval_ms),
            checkpoint_interval: Duration::from_millis(self.config.checkpoint_interval_ms),
            max_poll_bytes: MAX_POLL_BYTES,
            stop_at: None,
        }
    }

    fn operator(&self, partition: u32) -> riffle_stream::Result<AdClickOperator> {
        AdClickOperator::new(self.spec.clone(), partition)
    }
}

/// Archives the new input every `interval`, the first pass one interval
/// after start. A failed pass is logged and retried at the next one.
#[cfg(feature = "parquet")]
async fn archive_loop(
    bus: Arc<dyn EventBus>,
    input_topic: String,
    dir: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        let _pass = lock.lock().await;
        match crate::archive::archive_once(&bus, &input_topic, &dir).await {
            Ok(report) if !report.files.is_empty() => tracing::info!(
                files = report.files.len(),
                records = report.records,
                bytes = report.bytes,
                dir = %dir.display(),
                "raw input archived"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, dir = %dir.display(), "archive pass failed"),
        }
    }
}

async fn retention_loop(
    store: Arc<dyn AggregateStore>,
    clock: Arc<dyn Clock>,
    retention_ms: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let cut = (clock.now_ms() - retention_ms).div_euclid(MINUTE_MS) * MINUTE_MS;
        let store2 = store.clone();
        match tokio::task::spawn_blocking(move || store2.delete_before(cut)).await {
            Ok(Ok(deleted)) if deleted.count_rows + deleted.top_rows > 0 => {
                tracing::info!(
                    count_rows = deleted.count_rows,
                    top_rows = deleted.top_rows,
                    before_ms = cut,
                    "aggregate retention"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "aggregate retention failed"),
            Err(error) => tracing::warn!(%error, "aggregate retention panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
