//! The embedded log: Riffle's default event bus, a Kafka-shaped durable log
//! in one process.
//!
//! # On-disk format
//!
//! ```text
//! <root>/topics/<topic>/topic.json              name + TopicConfig (JSON)
//! <root>/topics/<topic>/<partition>/<base>.log   segment: record batches
//! <root>/topics/<topic>/<partition>/<base>.index sparse index (closed segments)
//! <root>/groups/<group>.json                    committed offsets of a group
//! <root>/txn.journal                            redo record of the transaction
//!                                               being applied (empty otherwise)
//! ```
//!
//! `<base>` is the segment's first offset, 20 zero-padded digits. A segment
//! is a sequence of record batches in the format of [`crate::format`], each
//! with a CRC32C over its header and records. Index entries are 16 bytes
//! (`rel_offset u32, position u32, max_ts_before i64`, little-endian), added
//! at the first batch after every `index_interval_bytes`; the index of a
//! closed segment ends with a closing entry `(end - base, size, max_ts)`. The
//! same entries serve offset look-ups (last entry with offset ≤ target) and
//! timestamp look-ups (last entry whose `max_ts_before` < target).
//!
//! # Invariants
//!
//! * Offsets within a partition are consecutive; batch `n+1` starts at the
//!   offset after batch `n`, and a segment's first batch starts at `<base>`.
//! * Only durable bytes are served: readers see a partition up to its
//!   durable end, which advances only after fdatasync (or at once with
//!   `fsync = "never"`, which is documented as not durable).
//! * A closed segment is fsynced and its index written and fsynced before the
//!   next segment file is created, so only the last segment can have a torn
//!   tail. On open it is validated batch by batch; the first torn, corrupt or
//!   out-of-sequence batch and everything after it is truncated and logged
//!   with the byte count. A closed segment whose index is missing or does not
//!   match its size is rescanned to rebuild the index; damage found there is
//!   corruption, not a torn write, so the bytes are kept and reads of the
//!   damaged range fail with `Corrupt` instead of silently skipping offsets.
//! * Every batch is CRC-checked again whenever it is read: corrupt data is
//!   reported as `Corrupt`, never returned.
//! * One writer per partition (a mutex held only for `pwrite`); readers use
//!   positional reads on their own snapshot of the segment list and never
//!   take the writer's lock. Retention only unlinks whole closed segments,
//!   which readers that still hold them can finish reading.
//! * A transaction is first written whole to `txn.journal` and fsynced (the
//!   commit point), then applied to the partitions and groups, then the
//!   journal is truncated. Recovery re-applies a journal it finds, skipping
//!   the parts already applied (a partition whose end is at or past the
//!   recorded base offset already has the batch).

mod consumer;
mod flusher;
mod groups;
mod partition;
mod segment;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex, RwLock};
use riffle_core::config::{validate_topic_name, FsyncPolicy, LogConfig};
use riffle_core::time::{Clock, SystemClock};
use tracing::{info, warn};

use self::flusher::Flusher;
use self::groups::Groups;
pub use self::partition::Truncation;
use self::partition::{Partition, PartitionSettings};
use self::segment::{sync_dir, write_file_durably};
use crate::bus::{
    Admin, Consumer, ConsumerConfig, EventBus, FetchedBatch, Offset, Producer, StartPosition,
    TopicConfig, TopicDescription, TopicMetadata, TopicPartition, Transaction,
};
use crate::error::{BusError, Result};
use crate::format::{RecordBatch, BATCH_HEADER_LEN, MAX_BATCH_BYTES};
use crate::metrics;

/// Settings of the embedded log (the `[log]` section of the configuration).
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub fsync: FsyncPolicy,
    pub group_commit_interval: Duration,
    pub group_commit_max_bytes: u64,
    pub index_interval_bytes: u64,
    pub retention_check_interval: Duration,
    pub default_topic: TopicConfig,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions::from_config(
            &<riffle_core::config::LogConfig as riffle_core::config::Section>::defaults(),
        )
    }
}

impl LogOptions {
    pub fn from_config(config: &LogConfig) -> Self {
        LogOptions {
            fsync: config.fsync,
            group_commit_interval: Duration::from_millis(config.group_commit_interval_ms),
            group_commit_max_bytes: config.group_commit_max_bytes,
            index_interval_bytes: config.index_interval_bytes.max(1),
            retention_check_interval: Duration::from_millis(
                config.retention_check_interval_ms.max(10),
            ),
            default_topic: TopicConfig {
                partitions: config.default_partitions,
                retention_ms: config.default_retention_ms,
                retention_bytes: config.default_retention_bytes,
                segment_bytes: config.segment_bytes,
            },
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TopicFile {
    name: String,
    config: TopicConfig,
}

struct Topic {
    name: Arc<str>,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
}

pub(crate) struct Inner {
    root: PathBuf,
    options: LogOptions,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    pub(crate) groups: Groups,
    flusher: Arc<Flusher>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    txn: Arc<tokio::sync::Mutex<txn::Journal>>,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Bumped whenever any partition's durable end advances or a group's
    /// membership changes; idle consumers wait on it.
    pub(crate) epoch: Arc<tokio::sync::watch::Sender<u64>>,
    truncations: Vec<Truncation>,
    /// Serialises topic creation and deletion (file work outside `topics`).
    admin: Mutex<()>,
}

/// The embedded, durable, partitioned log. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl EmbeddedLog {
    /// Opens or creates a log under `root`, recovering every partition and
    /// re-applying an interrupted transaction. Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn open(root: impl AsRef<Path>, options: LogOptions) -> Result<EmbeddedLog> {
        Self::open_with_clock(root, options, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        root: impl AsRef<Path>,
        options: LogOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<EmbeddedLog> {
        let root = root.as_ref().to_path_buf();
        let timer = std::time::Instant::now();
        let topics_dir = root.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(|e| BusError::io(&topics_dir, e))?;
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let epoch = Arc::new(epoch);
        let mut topics = BTreeMap::new();
        let mut truncations = Vec::new();
        for entry in std::fs::read_dir(&topics_dir).map_err(|e| BusError::io(&topics_dir, e))? {
            let entry = entry.map_err(|e| BusError::io(&topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                // A topic whose creation or deletion was interrupted.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            let topic = open_topic(&entry.path(), &options, &epoch, &mut truncations)?;
            topics.insert(name, Arc::new(topic));
        }
        let groups = Groups::open(&root.join("groups"))?;
        let interval = match options.fsync {
            FsyncPolicy::Always => Duration::ZERO,
            _ => options.group_commit_interval,
        };
        let flusher = Flusher::new(interval, options.group_commit_max_bytes);
        let journal = txn::Journal::open(&root.join("txn.journal"))?;
        let inner = Arc::new(Inner {
            root,
            options,
            topics: RwLock::new(topics),
            groups,
            flusher: flusher.clone(),
            threads: Mutex::new(Vec::new()),
            txn: Arc::new(tokio::sync::Mutex::new(journal)),
            clock,
            closed: AtomicBool::new(false),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            epoch,
            truncations,
            admin: Mutex::new(()),
        });
        {
            let mut journal = inner.txn.try_lock().expect("journal is not shared yet");
            txn::recover(&inner, &mut journal)?;
        }
        let mut threads = vec![flusher.spawn()];
        let weak = Arc::downgrade(&inner);
        let stop = inner.stop.clone();
        let interval = inner.options.retention_check_interval;
        threads.push(
            std::thread::Builder::new()
                .name("riffle-log-retention".into())
                .spawn(move || retention_loop(weak, stop, interval))
                .expect("spawn retention thread"),
        );
        *inner.threads.lock() = threads;
        let log = EmbeddedLog { inner };
        info!(
            root = %log.inner.root.display(),
            topics = log.inner.topics.read().len(),
            elapsed_ms = timer.elapsed().as_millis() as u64,
            "embedded log opened"
        );
        Ok(log)
    }

    /// Torn or corrupt tails that were truncated when this log was opened.
    pub fn recovery_truncations(&self) -> &[Truncation] {
        &self.inner.truncations
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    /// Flushes every partition, stops the background threads and refuses
    /// further appends. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let topics: Vec<_> = self.inner.topics.read().values().cloned().collect();
        for topic in &topics {
            for partition in &topic.partitions {
                partition.flush()?;
            }
        }
        self.inner.flusher.shutdown();
        *self.inner.stop.0.lock() = true;
        self.inner.stop.1.notify_all();
        for handle in self.inner.threads.lock().drain(..) {
            let _ = handle.join();
        }
        info!(root = %self.inner.root.display(), "embedded log closed");
        Ok(())
    }

    /// Applies retention to every partition now. Returns bytes deleted.
    pub fn enforce_retention(&self) -> Result<u64> {
        enforce_retention(&self.inner)
    }

    /// Per-partition end offsets, for metrics and lag.
    pub fn end_offsets(&self) -> Vec<(TopicPartition, u64, u64)> {
        let topics = self.inner.topics.read();
        let mut out = Vec::new();
        for topic in topics.values() {
            for p in &topic.partitions {
                out.push((
                    TopicPartition::new(topic.name.to_string(), p.id),
                    p.start_offset(),
                    p.end_offset(),
                ));
            }
        }
        out
    }

    pub fn topic_exists(&self, name: &str) -> bool {
        self.inner.topics.read().contains_key(name)
    }

    pub fn segment_count(&self, topic: &str, partition: u32) -> Result<usize> {
        Ok(self.inner.partition(topic, partition)?.segment_count())
    }

    /// The partition count of a topic, without awaiting (hot paths).
    pub fn partitions_of(&self, topic: &str) -> Option<u32> {
        self.inner
            .topics
            .read()
            .get(topic)
            .map(|t| t.partitions.len() as u32)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.shutdown();
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
    }
}

fn open_topic(
    dir: &Path,
    options: &LogOptions,
    epoch: &Arc<tokio::sync::watch::Sender<u64>>,
    truncations: &mut Vec<Truncation>,
) -> Result<Topic> {
    let meta_path = dir.join("topic.json");
    let bytes = std::fs::read(&meta_path).map_err(|e| BusError::io(&meta_path, e))?;
    let file: TopicFile = serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
        path: meta_path.clone(),
        position: 0,
        reason: e.to_string(),
    })?;
    let name: Arc<str> = Arc::from(file.name.as_str());
    let settings = PartitionSettings {
        segment_bytes: file.config.segment_bytes,
        index_interval: options.index_interval_bytes,
        retention_ms: file.config.retention_ms,
        retention_bytes: file.config.retention_bytes,
    };
    let mut partitions = Vec::with_capacity(file.config.partitions as usize);
    for id in 0..file.config.partitions {
        let partition = Partition::open(
            &dir.join(id.to_string()),
            name.clone(),
            id,
            settings,
            epoch.clone(),
            truncations,
        )?;
        partitions.push(Arc::new(partition));
    }
    Ok(Topic {
        name,
        config: file.config,
        partitions,
    })
}

fn enforce_retention(inner: &Inner) -> Result<u64> {
    let now = inner.clock.now_ms();
    let topics: Vec<_> = inner.topics.read().values().cloned().collect();
    let mut deleted = 0;
    for topic in topics {
        for partition in &topic.partitions {
            deleted += partition.enforce_retention(now)?;
        }
    }
    Ok(deleted)
}

/// Waits without holding the log alive, so dropping the last handle is
/// never delayed by this thread.
fn retention_loop(
    inner: std::sync::Weak<Inner>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    interval: Duration,
) {
    loop {
        {
            let mut stopped = stop.0.lock();
            if *stopped {
                return;
            }
            stop.1.wait_for(&mut stopped, interval);
            if *stopped {
                return;
            }
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if let Err(e) = enforce_retention(&strong) {
            warn!(error = %e, "retention failed");
        }
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::TopicNotFound(name.to_string()))
    }

    pub(crate) fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| BusError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
                count: t.partitions.len() as u32,
            })
    }

    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics
            .read()
            .get(topic)
            .map(|t| t.partitions.len() as u32)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        Ok(())
    }

    pub(crate) fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchedBatch> {
        let p = self.partition(topic, partition)?;
        let high_watermark = p.end_offset();
        let records = p.read(offset, max_bytes)?;
        metrics::READ_RECORDS.inc_by(records.len() as u64);
        Ok(FetchedBatch {
            topic: p.topic.clone(),
            partition,
            records,
            high_watermark,
        })
    }

    pub(crate) fn resolve(&self, topic: &str, partition: u32, at: StartPosition) -> Result<Offset> {
        let p = self.partition(topic, partition)?;
        match at {
            StartPosition::Earliest => Ok(p.start_offset()),
            StartPosition::Latest => Ok(p.end_offset()),
            StartPosition::Offset(offset) => {
                let (start, end) = (p.start_offset(), p.end_offset());
                if offset < start || offset > end {
                    return Err(BusError::OffsetOutOfRange {
                        topic: topic.to_string(),
                        partition,
                        offset,
                        start,
                        end,
                    });
                }
                Ok(offset)
            }
            StartPosition::Timestamp(ts) => p.offset_for_timestamp(ts),
        }
    }
}

#[async_trait]
impl Producer for EmbeddedLog {
    async fn append(&self, topic: &str, partition: u32, batch: RecordBatch) -> Result<Offset> {
        let inner = &self.inner;
        inner.check_open()?;
        if batch.is_empty() {
            return Err(BusError::InvalidArgument("batch: no records".into()));
        }
        check_batch(&batch)?;
        let p = inner.partition(topic, partition)?;
        let timer = std::time::Instant::now();
        let never = inner.options.fsync == FsyncPolicy::Never;
        let records = batch.len() as u64;
        // The writer lock is held only for one pwrite by other appenders.
        // (A transaction holds it across its fsyncs; moving contended appends
        // off the async worker is a follow-up for when pipelines commit
        // transactions alongside ingest.)
        let appended = p.append(&batch, 0, 0, never)?;
        if inner.closed.load(Ordering::Acquire) {
            // `close` may already have flushed this partition and stopped the
            // flusher; make this write durable here rather than wait forever.
            p.flush()?;
        }
        if !never {
            let mut durable = p.subscribe_durable();
            inner.flusher.mark_dirty(&p, appended.bytes);
            tokio::select! {
                biased;
                done = durable.wait_for(|end| *end >= appended.end_offset) => {
                    done.map_err(|_| BusError::Closed)?;
                }
                error = p.failed() => return Err(error),
            }
        }
        metrics::APPEND_SECONDS.observe(timer.elapsed().as_secs_f64());
        metrics::APPENDED_RECORDS.inc_by(records);
        metrics::APPENDED_BYTES.inc_by(appended.bytes);
        Ok(appended.base_offset)
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.inner
            .partition_count(topic)
            .ok_or_else(|| BusError::TopicNotFound(topic.to_string()))
    }
}

#[async_trait]
impl Admin for EmbeddedLog {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicMetadata> {
        let inner = self.inner.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || create_topic(&inner, &name, config))
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let inner = self.inner.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || delete_topic(&inner, &name))
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?
    }

    async fn list_topics(&self) -> Result<Vec<TopicMetadata>> {
        Ok(self
            .inner
            .topics
            .read()
            .values()
            .map(|t| TopicMetadata {
                name: t.name.to_string(),
                config: t.config.clone(),
            })
            .collect())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let topic = self.inner.topic(name)?;
        Ok(TopicDescription {
            metadata: TopicMetadata {
                name: topic.name.to_string(),
                config: topic.config.clone(),
            },
            partitions: topic
                .partitions
                .iter()
                .map(|p| crate::bus::PartitionInfo {
                    partition: p.id,
                    start_offset: p.start_offset(),
                    end_offset: p.end_offset(),
                    size_bytes: p.size_bytes(),
                })
                .collect(),
        })
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchedBatch> {
        self.inner.fetch(topic, partition, offset, max_bytes)
    }

    async fn resolve_offset(
        &self,
        topic: &str,
        partition: u32,
        at: StartPosition,
    ) -> Result<Offset> {
        self.inner.resolve(topic, partition, at)
    }

    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, Offset>> {
        groups::validate_group_name(group)?;
        Ok(self.inner.groups.committed(group, topic))
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<()> {
        commit_offsets(&self.inner, group, offsets).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        Ok(self.inner.groups.list())
    }
}

/// Refuses batches the log could not store and read back. Framing is
/// correct by construction (`push_with_headers` refuses 16-bit overflows;
/// larger keys or values exceed the size limit checked here), so the full
/// framing walk runs only in debug builds, off the release hot path.
pub(crate) fn check_batch(batch: &RecordBatch) -> Result<()> {
    let size = batch.byte_len() + BATCH_HEADER_LEN;
    if size > MAX_BATCH_BYTES {
        return Err(BusError::BatchTooLarge {
            size,
            max: MAX_BATCH_BYTES,
        });
    }
    debug_assert_eq!(batch.check_framing(), Ok(()));
    Ok(())
}

pub(crate) async fn commit_offsets(
    inner: &Arc<Inner>,
    group: &str,
    offsets: &[(TopicPartition, Offset)],
) -> Result<()> {
    for (tp, _) in offsets {
        inner.partition(&tp.topic, tp.partition)?;
    }
    // Serialised with transactions so a journal replay never overwrites a
    // newer plain commit.
    let _txn = inner.txn.lock().await;
    let inner2 = inner.clone();
    let group = group.to_string();
    let offsets = offsets.to_vec();
    tokio::task::spawn_blocking(move || inner2.groups.commit(&group, &offsets))
        .await
        .map_err(|e| BusError::Backend(e.to_string()))?
}

#[async_trait]
impl EventBus for EmbeddedLog {
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        self.inner.check_open()?;
        Ok(Box::new(consumer::EmbeddedConsumer::new(
            self.inner.clone(),
            config,
        )?))
    }

    async fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn Transaction>> {
        self.inner.check_open()?;
        Ok(Box::new(txn::EmbeddedTransaction::new(
            self.inner.clone(),
            transactional_id,
        )))
    }
}

fn create_topic(inner: &Inner, name: &str, config: TopicConfig) -> Result<TopicMetadata> {
    inner.check_open()?;
    validate_topic_name(name)?;
    config.validate()?;
    // Topic creation and deletion are serialised by `admin`; the topic map
    // itself is write-locked only for the insert, so appends and reads
    // never wait for the fsyncs below.
    let _admin = inner.admin.lock();
    if inner.topics.read().contains_key(name) {
        return Err(BusError::TopicExists(name.to_string()));
    }
    let topics_dir = inner.root.join("topics");
    let staging = topics_dir.join(format!(".{name}.creating"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| BusError::io(&staging, e))?;
    let file = TopicFile {
        name: name.to_string(),
        config: config.clone(),
    };
    write_file_durably(
        &staging.join("topic.json"),
        &serde_json::to_vec_pretty(&file).expect("topic file serializes"),
    )?;
    let final_dir = topics_dir.join(name);
    std::fs::rename(&staging, &final_dir).map_err(|e| BusError::io(&final_dir, e))?;
    sync_dir(&topics_dir)?;
    let topic = open_topic(&final_dir, &inner.options, &inner.epoch, &mut Vec::new())?;
    // The partition directories were created after the rename: make their
    // entries durable before anything is acknowledged in them.
    sync_dir(&final_dir)?;
    inner
        .topics
        .write()
        .insert(name.to_string(), Arc::new(topic));
    info!(
        topic = name,
        partitions = config.partitions,
        "created topic"
    );
    Ok(TopicMetadata {
        name: name.to_string(),
        config,
    })
}

fn delete_topic(inner: &Inner, name: &str) -> Result<()> {
    inner.check_open()?;
    // Not while a transaction is between its commit point and its apply:
    // it may be writing to this topic. (Runs on a blocking thread.)
    let _txn = inner.txn.blocking_lock();
    let _admin = inner.admin.lock();
    let topic = {
        let mut topics = inner.topics.write();
        topics
            .remove(name)
            .ok_or_else(|| BusError::TopicNotFound(name.to_string()))?
    };
    for p in &topic.partitions {
        p.mark_deleted();
    }
    let topics_dir = inner.root.join("topics");
    let dir = topics_dir.join(name);
    let doomed = topics_dir.join(format!(".{name}.deleted"));
    let _ = std::fs::remove_dir_all(&doomed);
    std::fs::rename(&dir, &doomed).map_err(|e| BusError::io(&dir, e))?;
    sync_dir(&topics_dir)?;
    let _ = std::fs::remove_dir_all(&doomed);
    inner.groups.remove_topic(name)?;
    info!(topic = name, "deleted topic");
    Ok(())
}

/// Lag of every group on every partition it has committed offsets for.
pub fn group_lags(log: &EmbeddedLog) -> Vec<(String, TopicPartition, u64)> {
    let mut out = Vec::new();
    let ends: HashMap<TopicPartition, u64> = log
        .end_offsets()
        .into_iter()
        .map(|(tp, _, end)| (tp, end))
        .collect();
    for group in log.inner.groups.list() {
        for (tp, end) in &ends {
            if let Some(committed) = log.inner.groups.committed_one(&group, tp) {
                out.push((group.clone(), tp.clone(), end.saturating_sub(committed)));
            }
        }
    }
    out
}
