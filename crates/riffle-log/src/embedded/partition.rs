//! One partition: an ordered list of segments, a single writer, lock-free
//! readers, recovery and retention.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::segment::{
    index_file_name, scan_segment, segment_file_name, sync_dir, IndexEntry, Segment, SegmentState,
    INDEX_ENTRY_LEN,
};
use crate::error::{BusError, Result};
use crate::format::{validate_batch, BatchHeader, RecordBatch, RecordSet, BATCH_HEADER_LEN};
use crate::metrics;

#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionSettings {
    pub segment_bytes: u64,
    pub index_interval: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
}

struct Writer {
    active: Arc<Segment>,
    file: Arc<File>,
    position: u64,
    next_offset: u64,
    since_index: u64,
    max_ts: i64,
}

pub(crate) struct Partition {
    pub topic: Arc<str>,
    pub id: u32,
    dir: PathBuf,
    settings: PartitionSettings,
    writer: Mutex<Writer>,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    start_offset: AtomicU64,
    /// Offset after the last durable (servable) record; waiters for
    /// durability watch it.
    durable_end: watch::Sender<u64>,
    pub(crate) dirty: AtomicBool,
    deleted: AtomicBool,
    failed: watch::Sender<bool>,
    epoch: Arc<watch::Sender<u64>>,
}

/// A torn or corrupt tail found and cut off while opening the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Truncation {
    pub topic: String,
    pub partition: u32,
    pub segment_base_offset: u64,
    pub valid_bytes: u64,
    pub truncated_bytes: u64,
    pub reason: String,
}

/// What [`Partition::append`] wrote, for the flusher and the caller.
pub(crate) struct Appended {
    pub base_offset: u64,
    pub end_offset: u64,
    pub bytes: u64,
}

impl Partition {
    /// Opens (or creates) a partition directory and recovers it: closed
    /// segments are trusted if their index is consistent (rebuilt if not),
    /// the active segment is fully validated and a torn or corrupt tail is
    /// truncated.
    pub fn open(
        dir: &Path,
        topic: Arc<str>,
        id: u32,
        settings: PartitionSettings,
        epoch: Arc<watch::Sender<u64>>,
        report: &mut Vec<Truncation>,
    ) -> Result<Partition> {
        std::fs::create_dir_all(dir).map_err(|e| BusError::io(dir, e))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| BusError::io(dir, e))? {
            let entry = entry.map_err(|e| BusError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<u64>() {
                    bases.push(base);
                }
            } else if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            let path = dir.join(segment_file_name(0));
            File::create(&path).map_err(|e| BusError::io(&path, e))?;
            sync_dir(dir)?;
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let last = bases.len() - 1;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_file_name(base));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| BusError::io(&path, e))?;
            if i < last {
                segments.push(Arc::new(open_closed_segment(
                    dir,
                    base,
                    bases[i + 1],
                    file,
                    &settings,
                    &topic,
                    id,
                )?));
            } else {
                segments.push(Arc::new(recover_active_segment(
                    dir, base, file, &settings, &topic, id, report,
                )?));
            }
        }
        let active = segments.last().unwrap().clone();
        let write_file = OpenOptions::new()
            .write(true)
            .open(&active.log_path)
            .map_err(|e| BusError::io(&active.log_path, e))?;
        let position = active.visible_len();
        let next_offset = active.visible_end();
        let start = segments[0].base_offset;
        let since_index = {
            let index = active.last_active_index_entry();
            position - index.map_or(0, |e| e.position as u64)
        };
        let writer = Writer {
            active: active.clone(),
            file: Arc::new(write_file),
            position,
            next_offset,
            since_index,
            max_ts: active.max_timestamp(),
        };
        let (durable_end, _) = watch::channel(next_offset);
        Ok(Partition {
            topic,
            id,
            dir: dir.to_path_buf(),
            settings,
            writer: Mutex::new(writer),
            segments: RwLock::new(Arc::new(segments)),
            start_offset: AtomicU64::new(start),
            durable_end,
            dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            failed: watch::channel(false).0,
            epoch,
        })
    }

    pub fn start_offset(&self) -> u64 {
        self.start_offset.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> u64 {
        *self.durable_end.borrow()
    }

    /// The offset the next append will get (includes not yet durable data).
    pub fn written_end_offset(&self) -> u64 {
        self.writer.lock().next_offset
    }

    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.durable_end.subscribe()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.visible_len()).sum()
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    fn check_live(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(BusError::TopicNotFound(self.topic.to_string()));
        }
        if *self.failed.borrow() {
            return Err(self.failure_error());
        }
        Ok(())
    }

    fn failure_error(&self) -> BusError {
        BusError::Backend(format!(
            "{}/{}: an fsync failed; the partition refuses writes until the log is reopened (recovery re-validates it)",
            self.topic, self.id
        ))
    }

    /// After a failed fsync the kernel may have dropped the dirty pages, so
    /// retrying could acknowledge lost data: fail the partition instead, and
    /// every writer waiting on it.
    pub fn fail(&self) {
        self.failed.send_replace(true);
    }

    /// Resolves with an error once the partition has failed.
    pub async fn failed(&self) -> BusError {
        let mut rx = self.failed.subscribe();
        let _ = rx.wait_for(|f| *f).await;
        self.failure_error()
    }

    /// Writes a batch to the page cache (not yet durable). `publish_now`
    /// makes it servable immediately (fsync policy `never`).
    pub fn append(
        &self,
        batch: &RecordBatch,
        attributes: u8,
        txn_seq: u64,
        publish_now: bool,
    ) -> Result<Appended> {
        let mut w = self.writer.lock();
        self.append_locked(&mut w, batch, attributes, txn_seq, publish_now)
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        batch: &RecordBatch,
        attributes: u8,
        txn_seq: u64,
        publish_now: bool,
    ) -> Result<Appended> {
        debug_assert!(!batch.is_empty());
        self.check_live()?;
        let total = (BATCH_HEADER_LEN + batch.byte_len()) as u64;
        if w.position > 0 && w.position + total > self.settings.segment_bytes {
            self.roll(w)?;
        }
        let base_offset = w.next_offset;
        let header = batch.header(base_offset, attributes, txn_seq);
        if w.position > 0 && w.since_index >= self.settings.index_interval {
            w.active.push_index(IndexEntry {
                rel_offset: (base_offset - w.active.base_offset) as u32,
                position: w.position as u32,
                max_ts_before: w.max_ts,
            });
            w.since_index = 0;
        }
        let position = w.position;
        let written = w.file.write_all_at(&header, position).and_then(|_| {
            w.file
                .write_all_at(batch.records_bytes(), position + BATCH_HEADER_LEN as u64)
        });
        if let Err(e) = written {
            // Leave no partial batch behind: later appends and recovery
            // must see a clean end.
            let _ = w.file.set_len(position);
            return Err(BusError::io(&w.active.log_path, e));
        }
        w.position += total;
        w.since_index += total;
        w.next_offset += batch.len() as u64;
        w.max_ts = w.max_ts.max(batch.max_timestamp());
        let appended = Appended {
            base_offset,
            end_offset: w.next_offset,
            bytes: total,
        };
        if publish_now {
            w.active.publish(w.position, w.next_offset, w.max_ts);
            self.publish_end(w.next_offset);
        }
        Ok(appended)
    }

    /// Locks the writer for a transaction and makes everything written so
    /// far durable, so the end offset is stable and durable while locked.
    pub fn lock_for_transaction(&self) -> Result<TxnGuard<'_>> {
        let w = self.writer.lock();
        self.check_live()?;
        let guard = TxnGuard {
            partition: self,
            writer: w,
        };
        guard.partition.flush_locked(&guard.writer)?;
        Ok(guard)
    }

    fn flush_locked(&self, w: &Writer) -> Result<()> {
        let timer = std::time::Instant::now();
        w.file
            .sync_data()
            .map_err(|e| BusError::io(&w.active.log_path, e))?;
        metrics::FSYNC_SECONDS.observe(timer.elapsed().as_secs_f64());
        w.active.publish(w.position, w.next_offset, w.max_ts);
        self.publish_end(w.next_offset);
        Ok(())
    }

    /// Seals the active segment (fsynced, index written) and starts a new one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let timer = std::time::Instant::now();
        w.file
            .sync_data()
            .map_err(|e| BusError::io(&w.active.log_path, e))?;
        w.active.close(w.position, w.next_offset, w.max_ts)?;
        self.publish_end(w.next_offset);
        let base = w.next_offset;
        let path = self.dir.join(segment_file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BusError::io(&path, e))?;
        sync_dir(&self.dir)?;
        let read_file = file.try_clone().map_err(|e| BusError::io(&path, e))?;
        let segment = Arc::new(Segment::new(
            &self.dir,
            base,
            read_file,
            SegmentState {
                len: 0,
                end_offset: base,
                max_timestamp: i64::MIN,
                closed: false,
                index: Vec::new(),
            },
        ));
        {
            let mut segments = self.segments.write();
            let mut next = Vec::clone(&segments);
            next.push(segment.clone());
            *segments = Arc::new(next);
        }
        w.active = segment;
        w.file = Arc::new(file);
        w.position = 0;
        w.since_index = 0;
        w.max_ts = i64::MIN;
        metrics::SEGMENT_ROLLS.inc();
        tracing::debug!(topic = %self.topic, partition = self.id, base, elapsed_us = timer.elapsed().as_micros() as u64, "rolled segment");
        Ok(())
    }

    /// Fsyncs what has been written and makes it servable. Called by the
    /// flusher (group commit) and by transactions.
    pub fn flush(&self) -> Result<u64> {
        let (segment, file, position, end, max_ts) = {
            let w = self.writer.lock();
            (
                w.active.clone(),
                w.file.clone(),
                w.position,
                w.next_offset,
                w.max_ts,
            )
        };
        let timer = std::time::Instant::now();
        file.sync_data()
            .map_err(|e| BusError::io(&segment.log_path, e))?;
        metrics::FSYNC_SECONDS.observe(timer.elapsed().as_secs_f64());
        segment.publish(position, end, max_ts);
        self.publish_end(end);
        Ok(end)
    }

    fn publish_end(&self, end: u64) {
        let advanced = self.durable_end.send_if_modified(|current| {
            if end > *current {
                *current = end;
                true
            } else {
                false
            }
        });
        if advanced {
            self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        }
    }

    /// Reads whole validated batches starting at the batch containing
    /// `offset`, up to about `max_bytes` (always at least one batch).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<RecordSet> {
        let end = self.end_offset();
        let start = self.start_offset();
        if offset < start || offset > end {
            return Err(BusError::OffsetOutOfRange {
                topic: self.topic.to_string(),
                partition: self.id,
                offset,
                start,
                end,
            });
        }
        if offset == end {
            return Ok(RecordSet::default());
        }
        let segments = self.segments.read().clone();
        let first = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        for segment in &segments[first..] {
            let visible = segment.visible_len();
            let position = segment.position_for_offset(offset)?;
            if position >= visible {
                continue;
            }
            let data = read_batches(segment, position, visible, offset, max_bytes)?;
            if !data.is_empty() {
                return Ok(RecordSet::from_validated(data, offset));
            }
        }
        Ok(RecordSet::default())
    }

    /// The first offset whose timestamp is ≥ `timestamp`, or the end offset.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<u64> {
        let segments = self.segments.read().clone();
        for segment in segments.iter() {
            if segment.visible_len() == 0 || segment.max_timestamp() < timestamp {
                continue;
            }
            let mut position = segment.position_for_timestamp(timestamp)?;
            let visible = segment.visible_len();
            while position < visible {
                let data = read_batches(segment, position, visible, 0, 1 << 20)?;
                if data.is_empty() {
                    break;
                }
                let set = RecordSet::from_validated(data.clone(), 0);
                if let Some(record) = set.iter().find(|r| r.timestamp >= timestamp) {
                    return Ok(record.offset.max(self.start_offset()));
                }
                position += data.len() as u64;
            }
        }
        Ok(self.end_offset())
    }

    /// Deletes whole closed segments past retention. Returns bytes deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<u64> {
        let mut deleted = Vec::new();
        {
            let mut guard = self.segments.write();
            let segments = guard.clone();
            let mut total: i64 = segments.iter().map(|s| s.visible_len() as i64).sum();
            let mut keep_from = 0;
            for segment in segments.iter().take(segments.len().saturating_sub(1)) {
                if !segment.is_closed() {
                    break;
                }
                let size = segment.visible_len() as i64;
                let expired = self.settings.retention_ms > 0
                    && segment.max_timestamp() < now_ms.saturating_sub(self.settings.retention_ms);
                let oversized = self.settings.retention_bytes > 0
                    && total - size >= self.settings.retention_bytes;
                if !(expired || oversized) {
                    break;
                }
                total -= size;
                keep_from += 1;
                deleted.push(segment.clone());
            }
            if keep_from == 0 {
                return Ok(0);
            }
            let rest = segments[keep_from..].to_vec();
            self.start_offset
                .store(rest[0].base_offset, Ordering::Release);
            *guard = Arc::new(rest);
        }
        let mut bytes = 0;
        for segment in deleted {
            bytes += segment.visible_len();
            // Readers holding the segment keep their open file; unlinking is
            // safe on POSIX.
            let _ = std::fs::remove_file(&segment.log_path);
            let _ = std::fs::remove_file(&segment.index_path);
            info!(topic = %self.topic, partition = self.id, base_offset = segment.base_offset, bytes = segment.visible_len(), "retention deleted segment");
        }
        metrics::RETENTION_DELETED_BYTES.inc_by(bytes);
        Ok(bytes)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }
}

/// A partition's writer, locked for the duration of a transaction.
pub(crate) struct TxnGuard<'a> {
    partition: &'a Partition,
    writer: parking_lot::MutexGuard<'a, Writer>,
}

impl TxnGuard<'_> {
    pub fn topic(&self) -> &str {
        &self.partition.topic
    }

    pub fn id(&self) -> u32 {
        self.partition.id
    }

    pub fn end_offset(&self) -> u64 {
        self.writer.next_offset
    }

    pub fn append(&mut self, batch: &RecordBatch, attributes: u8, txn_seq: u64) -> Result<u64> {
        let partition = self.partition;
        Ok(partition
            .append_locked(&mut self.writer, batch, attributes, txn_seq, false)?
            .base_offset)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.partition.flush_locked(&self.writer)
    }
}

/// Reads whole batches from `position` in one segment until `max_bytes` or
/// the visible end, validating each and skipping batches that end before
/// `min_offset`. Never returns a partial or corrupt batch.
fn read_batches(
    segment: &Segment,
    position: u64,
    visible: u64,
    min_offset: u64,
    max_bytes: usize,
) -> Result<Bytes> {
    let available = (visible - position) as usize;
    // The first read is sized for the request; a batch larger than that is
    // read whole afterwards.
    let mut want = max_bytes.max(BATCH_HEADER_LEN).min(available);
    let mut buf = vec![0u8; want];
    segment
        .file
        .read_exact_at(&mut buf, position)
        .map_err(|e| BusError::io(&segment.log_path, e))?;
    let mut pos = 0usize;
    let mut keep_start: Option<usize> = None;
    loop {
        if pos + BATCH_HEADER_LEN > buf.len() {
            if keep_start.is_none() && pos + BATCH_HEADER_LEN <= available {
                want = (pos + max_bytes.max(BATCH_HEADER_LEN)).min(available);
                grow(segment, &mut buf, position, want)?;
                continue;
            }
            break;
        }
        // Damage is reported only when it is the next thing to return:
        // batches before it are served first, so a reader gets every good
        // record up to the exact corrupt offset.
        let header = match BatchHeader::parse(&buf[pos..]) {
            Ok(header) => header,
            Err(_) if keep_start.is_some() => break,
            Err(reason) => return Err(segment.corrupt(position + pos as u64, reason.to_string())),
        };
        let total = header.total_len();
        if pos + total > buf.len() {
            if pos + total > available {
                if keep_start.is_some() {
                    break;
                }
                return Err(
                    segment.corrupt(position + pos as u64, "batch extends past the durable end")
                );
            }
            if keep_start.is_some() {
                break;
            }
            grow(segment, &mut buf, position, pos + total)?;
        }
        if let Err(reason) = validate_batch(&buf[pos..pos + total]) {
            if keep_start.is_some() {
                break;
            }
            return Err(segment.corrupt(position + pos as u64, reason.to_string()));
        }
        if header.next_offset() > min_offset && keep_start.is_none() {
            keep_start = Some(pos);
        }
        pos += total;
        if keep_start.is_some() && pos >= max_bytes {
            break;
        }
    }
    let Some(start) = keep_start else {
        return Ok(Bytes::new());
    };
    buf.truncate(pos);
    Ok(Bytes::from(buf).slice(start..))
}

fn grow(segment: &Segment, buf: &mut Vec<u8>, position: u64, len: usize) -> Result<()> {
    let old = buf.len();
    if len <= old {
        return Ok(());
    }
    buf.resize(len, 0);
    segment
        .file
        .read_exact_at(&mut buf[old..], position + old as u64)
        .map_err(|e| BusError::io(&segment.log_path, e))
}

#[allow(clippy::too_many_arguments)]
fn open_closed_segment(
    dir: &Path,
    base: u64,
    next_base: u64,
    file: File,
    settings: &PartitionSettings,
    topic: &str,
    partition: u32,
) -> Result<Segment> {
    let log_path = dir.join(segment_file_name(base));
    let index_path = dir.join(index_file_name(base));
    let len = file
        .metadata()
        .map_err(|e| BusError::io(&log_path, e))?
        .len();
    // A closed segment was fsynced before its successor was created; its
    // index ends with a closing entry that gives the end offset and the max
    // timestamp. If that does not check out, rebuild it by scanning.
    if let Ok(index_bytes) = std::fs::read(&index_path) {
        if !index_bytes.is_empty() && index_bytes.len() % INDEX_ENTRY_LEN == 0 {
            let last = IndexEntry::decode(&index_bytes[index_bytes.len() - INDEX_ENTRY_LEN..]);
            if last.position as u64 == len {
                let end = base + last.rel_offset as u64;
                let segment = Segment::new(
                    dir,
                    base,
                    file,
                    SegmentState {
                        len,
                        end_offset: end,
                        max_timestamp: last.max_ts_before,
                        closed: true,
                        index: Vec::new(),
                    },
                );
                segment.open_index_file()?;
                return Ok(segment);
            }
        }
    }
    warn!(
        topic,
        partition,
        base_offset = base,
        "rebuilding index of closed segment"
    );
    let scan = scan_segment(&file, &log_path, base, settings.index_interval)?;
    // A closed segment was complete and fsynced when it was sealed, so a bad
    // batch here is corruption, not a torn write. Truncating would silently
    // drop offsets; instead keep the bytes, index the valid part, and let
    // reads of the damaged range fail with `Corrupt` (data_loss).
    let (len, end_offset) = match &scan.invalid_tail {
        Some(reason) => {
            error!(topic, partition, base_offset = base, valid_bytes = scan.valid_len, damaged_bytes = scan.file_len - scan.valid_len, first_bad_offset = scan.end_offset, %reason, "closed segment is corrupt; reads of the damaged offsets will fail with data_loss");
            metrics::CORRUPT_SEGMENTS.inc();
            (scan.file_len, next_base.max(scan.end_offset))
        }
        None => (scan.valid_len, scan.end_offset),
    };
    let segment = Segment::new(
        dir,
        base,
        file,
        SegmentState {
            len,
            end_offset,
            max_timestamp: scan.max_timestamp,
            closed: false,
            index: scan.index,
        },
    );
    segment.close(len, end_offset, scan.max_timestamp)?;
    Ok(segment)
}

fn recover_active_segment(
    dir: &Path,
    base: u64,
    file: File,
    settings: &PartitionSettings,
    topic: &str,
    partition: u32,
    report: &mut Vec<Truncation>,
) -> Result<Segment> {
    let log_path = dir.join(segment_file_name(base));
    let scan = scan_segment(&file, &log_path, base, settings.index_interval)?;
    if let Some(reason) = &scan.invalid_tail {
        let truncated = scan.file_len - scan.valid_len;
        warn!(topic, partition, base_offset = base, valid_bytes = scan.valid_len, truncated_bytes = truncated, %reason, "truncated torn or corrupt log tail");
        file.set_len(scan.valid_len)
            .and_then(|_| file.sync_all())
            .map_err(|e| BusError::io(&log_path, e))?;
        metrics::TRUNCATED_BYTES.inc_by(truncated);
        report.push(Truncation {
            topic: topic.to_string(),
            partition,
            segment_base_offset: base,
            valid_bytes: scan.valid_len,
            truncated_bytes: truncated,
            reason: reason.clone(),
        });
    } else {
        // Everything present is valid; make sure it is durable before it is
        // served (the previous process may have died before its fsync).
        file.sync_data().map_err(|e| BusError::io(&log_path, e))?;
    }
    let _ = std::fs::remove_file(dir.join(index_file_name(base)));
    Ok(Segment::new(
        dir,
        base,
        file,
        SegmentState {
            len: scan.valid_len,
            end_offset: scan.end_offset,
            max_timestamp: scan.max_timestamp,
            closed: false,
            index: scan.index,
        },
    ))
}
