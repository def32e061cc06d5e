//! Segments and their sparse index. See the module documentation of
//! [`super`] for the on-disk format.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use riffle_core::codec::{ReadError, Reader};

use crate::error::{BusError, Result};
use crate::format::{validate_batch, BatchHeader, BATCH_HEADER_LEN, MAX_BATCH_BYTES};

pub(crate) const INDEX_ENTRY_LEN: usize = 16;

/// One sparse index entry: the batch that starts at `position` has base
/// offset `segment base + rel_offset`, and every record stored before
/// `position` has a timestamp ≤ `max_ts_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
    pub max_ts_before: i64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut out = [0u8; INDEX_ENTRY_LEN];
        out[0..4].copy_from_slice(&self.rel_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
        out[8..16].copy_from_slice(&self.max_ts_before.to_le_bytes());
        out
    }

    /// `bytes` must hold a whole entry: callers pass exactly
    /// [`INDEX_ENTRY_LEN`] bytes read from the index file.
    pub fn decode(bytes: &[u8]) -> IndexEntry {
        let read = |r: &mut Reader<'_>| -> Result<IndexEntry, ReadError> {
            let rel_offset = r.u32("rel_offset")?;
            let position = r.u32("position")?;
            let max_ts_before = r.i64("max_ts_before")?;
            Ok(IndexEntry {
                rel_offset,
                position,
                max_ts_before,
            })
        };
        read(&mut Reader::new(bytes)).expect("an index entry is 16 bytes")
    }
}

pub(crate) fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

pub(crate) fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

/// What is known about a segment when it is opened or created.
pub(crate) struct SegmentState {
    pub len: u64,
    pub end_offset: u64,
    pub max_timestamp: i64,
    pub closed: bool,
    pub index: Vec<IndexEntry>,
}

/// A segment file. Readers use positional reads on `file` and never take the
/// partition's writer lock.
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub file: File,
    /// Bytes that are durable and may be served.
    visible_len: AtomicU64,
    /// Offset after the last servable record.
    visible_end: AtomicU64,
    max_timestamp: AtomicI64,
    closed: AtomicBool,
    /// The index of the active segment lives here; closed segments read
    /// theirs from the index file so memory does not grow with the topic.
    active_index: RwLock<Vec<IndexEntry>>,
    /// The open index file of a closed segment. Held so that readers can
    /// finish even after retention unlinked the file.
    index_file: parking_lot::Mutex<Option<Arc<File>>>,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: u64, file: File, state: SegmentState) -> Segment {
        Segment {
            base_offset,
            log_path: dir.join(segment_file_name(base_offset)),
            index_path: dir.join(index_file_name(base_offset)),
            file,
            visible_len: AtomicU64::new(state.len),
            visible_end: AtomicU64::new(state.end_offset),
            max_timestamp: AtomicI64::new(state.max_timestamp),
            closed: AtomicBool::new(state.closed),
            active_index: RwLock::new(state.index),
            index_file: parking_lot::Mutex::new(None),
        }
    }

    pub fn visible_len(&self) -> u64 {
        self.visible_len.load(Ordering::Acquire)
    }

    pub fn visible_end(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes bytes up to `len` (ending at offset `end`) servable.
    pub fn publish(&self, len: u64, end: u64, max_ts: i64) {
        self.max_timestamp.fetch_max(max_ts, Ordering::AcqRel);
        self.visible_len.fetch_max(len, Ordering::AcqRel);
        self.visible_end.fetch_max(end, Ordering::AcqRel);
    }

    pub fn last_active_index_entry(&self) -> Option<IndexEntry> {
        self.active_index.read().last().copied()
    }

    pub fn push_index(&self, entry: IndexEntry) {
        self.active_index.write().push(entry);
    }

    /// Seals the segment: writes its index file (ending with a closing entry
    /// for the segment end) and drops the in-memory index.
    pub fn close(&self, len: u64, end: u64, max_ts: i64) -> Result<()> {
        let mut index = self.active_index.write();
        let mut bytes = Vec::with_capacity((index.len() + 1) * INDEX_ENTRY_LEN);
        for entry in index.iter() {
            bytes.extend_from_slice(&entry.encode());
        }
        bytes.extend_from_slice(
            &IndexEntry {
                rel_offset: (end - self.base_offset) as u32,
                position: len as u32,
                max_ts_before: max_ts,
            }
            .encode(),
        );
        write_file_durably(&self.index_path, &bytes)?;
        self.open_index_file()?;
        self.publish(len, end, max_ts);
        self.closed.store(true, Ordering::Release);
        index.clear();
        index.shrink_to_fit();
        Ok(())
    }

    fn index_entry_at(&self, file: &File, i: u64) -> Result<IndexEntry> {
        let mut buf = [0u8; INDEX_ENTRY_LEN];
        file.read_exact_at(&mut buf, i * INDEX_ENTRY_LEN as u64)
            .map_err(|e| BusError::io(&self.index_path, e))?;
        Ok(IndexEntry::decode(&buf))
    }

    /// The closed segment's index file, opened once and kept open.
    pub fn open_index_file(&self) -> Result<Arc<File>> {
        let mut slot = self.index_file.lock();
        if let Some(file) = slot.as_ref() {
            return Ok(file.clone());
        }
        let file =
            Arc::new(File::open(&self.index_path).map_err(|e| BusError::io(&self.index_path, e))?);
        *slot = Some(file.clone());
        Ok(file)
    }

    /// Binary search over the index: the position of the last indexed batch
    /// for which `before(entry)` holds, or 0.
    fn search(&self, before: impl Fn(&IndexEntry) -> bool) -> Result<u64> {
        if !self.is_closed() {
            let index = self.active_index.read();
            if !self.is_closed() {
                let n = index.partition_point(|e| before(e));
                return Ok(if n == 0 {
                    0
                } else {
                    index[n - 1].position as u64
                });
            }
        }
        let file = self.open_index_file()?;
        let len = file
            .metadata()
            .map_err(|e| BusError::io(&self.index_path, e))?
            .len()
            / INDEX_ENTRY_LEN as u64;
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if before(&self.index_entry_at(&file, mid)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(0);
        }
        Ok(self.index_entry_at(&file, lo - 1)?.position as u64)
    }

    /// A position at or before the batch containing `offset`.
    pub fn position_for_offset(&self, offset: u64) -> Result<u64> {
        let rel = offset.saturating_sub(self.base_offset);
        self.search(|e| (e.rel_offset as u64) <= rel)
    }

    /// A position before which every record's timestamp is < `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> Result<u64> {
        self.search(|e| e.max_ts_before < timestamp)
    }

    pub fn corrupt(&self, position: u64, reason: impl Into<String>) -> BusError {
        BusError::Corrupt {
            path: self.log_path.clone(),
            position,
            reason: reason.into(),
        }
    }
}

/// Writes a small file atomically: temp file, fsync, rename, fsync directory.
pub(crate) fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| BusError::io(&tmp, e))?;
    file.write_all_at(bytes, 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| BusError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BusError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BusError::io(dir, e))
}

/// What a scan of a segment file found.
pub(crate) struct ScanResult {
    /// Bytes of whole, valid batches from the start of the file.
    pub valid_len: u64,
    pub end_offset: u64,
    pub max_timestamp: i64,
    pub index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub invalid_tail: Option<String>,
    pub file_len: u64,
}

/// Validates every batch of a segment file from the start, rebuilding the
/// sparse index; stops at the first batch that is torn, corrupt, or does not
/// continue the offset sequence.
pub(crate) fn scan_segment(
    file: &File,
    path: &Path,
    base_offset: u64,
    index_interval: u64,
) -> Result<ScanResult> {
    let file_len = file.metadata().map_err(|e| BusError::io(path, e))?.len();
    let mut result = ScanResult {
        valid_len: 0,
        end_offset: base_offset,
        max_timestamp: i64::MIN,
        index: Vec::new(),
        invalid_tail: None,
        file_len,
    };
    let chunk_len: usize = 8 << 20;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start: u64 = 0; // file position of buf[0]
    let mut since_index: u64 = 0;
    let mut pos: u64 = 0;
    while pos < file_len {
        // Make sure buf holds at least the header at `pos`.
        let need_header = pos + BATCH_HEADER_LEN as u64;
        if need_header > file_len {
            result.invalid_tail = Some(format!(
                "{} trailing bytes are too short for a batch header",
                file_len - pos
            ));
            break;
        }
        if pos < buf_start || need_header > buf_start + buf.len() as u64 {
            buf_start = pos;
            let n = chunk_len.min((file_len - pos) as usize);
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| BusError::io(path, e))?;
        }
        let rel = (pos - buf_start) as usize;
        let header = match BatchHeader::parse(&buf[rel..]) {
            Ok(h) => h,
            Err(reason) => {
                result.invalid_tail = Some(reason.to_string());
                break;
            }
        };
        let total = header.total_len() as u64;
        if pos + total > file_len {
            result.invalid_tail = Some(format!(
                "batch at offset {} is torn ({} of {total} bytes present)",
                header.base_offset,
                file_len - pos
            ));
            break;
        }
        if pos + total > buf_start + buf.len() as u64 {
            buf_start = pos;
            let n = chunk_len.max(total as usize).min((file_len - pos) as usize);
            debug_assert!(n <= MAX_BATCH_BYTES.max(chunk_len));
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| BusError::io(path, e))?;
        }
        let rel = (pos - buf_start) as usize;
        if let Err(reason) = validate_batch(&buf[rel..rel + total as usize]) {
            result.invalid_tail = Some(reason.to_string());
            break;
        }
        if header.base_offset != result.end_offset {
            result.invalid_tail = Some(format!(
                "batch base offset {} does not follow offset {}",
                header.base_offset, result.end_offset
            ));
            break;
        }
        if pos > 0 && since_index >= index_interval {
            result.index.push(IndexEntry {
                rel_offset: (header.base_offset - base_offset) as u32,
                position: pos as u32,
                max_ts_before: result.max_timestamp,
            });
            since_index = 0;
        }
        since_index += total;
        result.max_timestamp = result.max_timestamp.max(header.max_ts);
        result.end_offset = header.next_offset();
        pos += total;
        result.valid_len = pos;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed segment of the log fixture that `tests/golden.rs` writes
    /// and compares byte for byte (regenerated only with `RIFFLE_BLESS=1`).
    const FIXTURE_LOG: &[u8] =
        include_bytes!("../../tests/fixtures/segment/topics/golden/0/00000000000000000000.log");
    const FIXTURE_INDEX: &[u8] =
        include_bytes!("../../tests/fixtures/segment/topics/golden/0/00000000000000000000.index");
    /// 2024-05-01T12:00:00.000Z, the fixture's time base.
    const T0: i64 = 1_714_564_800_000;

    /// The fixture's index decodes to the entries the module docs describe:
    /// one per batch after the first (index interval 1 byte), then the
    /// closing entry; each points at the batch it names, and a rescan of
    /// the segment rebuilds exactly the same index.
    #[test]
    fn fixture_index_decodes_entry_by_entry() {
        assert_eq!(FIXTURE_INDEX.len() % INDEX_ENTRY_LEN, 0);
        let entries: Vec<IndexEntry> = FIXTURE_INDEX
            .chunks(INDEX_ENTRY_LEN)
            .map(IndexEntry::decode)
            .collect();
        let entry = |rel_offset, position, max_ts_before| IndexEntry {
            rel_offset,
            position,
            max_ts_before,
        };
        assert_eq!(
            entries,
            vec![
                entry(3, 188, T0 + 2_000),
                entry(5, 324, T0 + 3_000),
                entry(7, 1940, T0 + 4_500),
                // Closing entry: segment end offset, size and max timestamp.
                entry(8, 3515, T0 + 5_000),
            ]
        );
        for (entry, bytes) in entries.iter().zip(FIXTURE_INDEX.chunks(INDEX_ENTRY_LEN)) {
            assert_eq!(&entry.encode()[..], bytes);
        }
        let (closing, batches) = entries.split_last().unwrap();
        for entry in batches {
            let header = BatchHeader::parse(&FIXTURE_LOG[entry.position as usize..]).unwrap();
            assert_eq!(header.base_offset, u64::from(entry.rel_offset));
        }
        assert_eq!(closing.position as usize, FIXTURE_LOG.len());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(0));
        std::fs::write(&path, FIXTURE_LOG).unwrap();
        let scan = scan_segment(&File::open(&path).unwrap(), &path, 0, 1).unwrap();
        assert_eq!(scan.invalid_tail, None);
        assert_eq!(scan.index, batches);
        assert_eq!(
            (scan.end_offset, scan.valid_len, scan.max_timestamp),
            (
                u64::from(closing.rel_offset),
                u64::from(closing.position),
                closing.max_ts_before
            )
        );
    }
}
