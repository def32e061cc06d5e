//! The cold-storage archive of the raw input: the records of the input topic
//! copied to Parquet files by log offset range, so that a recount can replay
//! ranges whose raw events log retention has already deleted (the Kappa
//! half of ADR 0002 beyond the log's retention).
//!
//! # Format
//!
//! ```text
//! <dir>/<topic>/<partition>/<first_offset:020>-<next_offset:020>.parquet
//!
//! message riffle_raw_record {
//!   required int64  offset;     log offset of the record
//!   required int64  timestamp;  record timestamp = event time (epoch ms)
//!   optional binary key;        record key, null when the record had none
//!   required binary value;      record value as stored: the binary-encoded event
//! }
//! key-value metadata: riffle.format = "1", riffle.topic, riffle.partition,
//!                     riffle.min_timestamp, riffle.max_timestamp (absent if no rows)
//! ```
//!
//! One row group per file, Snappy-compressed, at most [`MAX_FILE_BYTES`] of
//! keys and values per file (a pass writes several files when more is new).
//! Record headers are not archived: the ad click operator does not read them.
//!
//! # Invariants
//!
//! * A file holds exactly the records the log held at offsets
//!   `[first_offset, next_offset)`, in offset order; rows carry their offset
//!   explicitly, so gaps in the log's offsets are kept.
//! * Files of a partition never overlap. Each pass starts where the newest
//!   file ends, so consecutive files are adjacent — unless log retention
//!   deleted records before a pass copied them; the pass then starts at the
//!   log's start offset and the hole stays visible in the names. Replay
//!   refuses to cross a hole.
//! * A file is written under a temporary name (`.<name>.tmp`), fsynced,
//!   renamed and its directory fsynced: a file with a final name is
//!   complete. Files are never rewritten; a pass deletes leftover temporary
//!   files.
//!
//! Because the rows are the log's records in the log's order, replaying a
//! file through the operator is the same as fetching those offsets from the
//! log, and a recount from the archive equals one from the log
//! ([`crate::recount`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use riffle_core::{ErrorCode, HasCode};
use riffle_log::{BusError, EventBus, RecordBatch, RecordSet};
use serde::Serialize;

/// Keys plus values collected before a file is cut.
pub const MAX_FILE_BYTES: usize = 64 << 20;
const FETCH_BYTES: usize = 4 << 20;
const SCHEMA: &str = "message riffle_raw_record {
    required int64 offset;
    required int64 timestamp;
    optional binary key;
    required binary value;
}";
const FORMAT_VERSION: &str = "1";
const MIN_TS_KEY: &str = "riffle.min_timestamp";
const MAX_TS_KEY: &str = "riffle.max_timestamp";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("archiving is off (ads.archive_dir is empty)")]
    Disabled,
}

impl HasCode for ArchiveError {
    fn code(&self) -> ErrorCode {
        match self {
            ArchiveError::Io { .. } => ErrorCode::Internal,
            ArchiveError::Format { .. } => ErrorCode::DataLoss,
            ArchiveError::Bus(error) => error.code(),
            ArchiveError::Disabled => ErrorCode::FailedPrecondition,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_error(path: &Path, message: impl ToString) -> ArchiveError {
    ArchiveError::Format {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// One file written by a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedFile {
    pub partition: u32,
    pub first_offset: u64,
    pub next_offset: u64,
    pub records: u64,
    pub bytes: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    pub path: String,
}

/// What one [`archive_once`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    pub topic: String,
    pub dir: String,
    pub files: Vec<ArchivedFile>,
    pub records: u64,
    pub bytes: u64,
    /// Partitions left alone, with why (e.g. the log is behind the archive
    /// because the topic was recreated).
    pub skipped: Vec<String>,
    /// Partitions whose log had already deleted records the archive never
    /// copied (a hole in the archive), with the offsets lost.
    pub holes: Vec<String>,
}

/// A file name parsed back: the offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub first_offset: u64,
    pub next_offset: u64,
    pub path: PathBuf,
}

/// The records of one file, column by column.
#[derive(Debug, Default)]
pub struct FileRecords {
    pub offsets: Vec<u64>,
    pub timestamps: Vec<i64>,
    pub keys: Vec<Option<Vec<u8>>>,
    pub values: Vec<Vec<u8>>,
}

impl FileRecords {
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Rows `range` as a record set with their original offsets (a new
    /// batch starts at each gap in the offsets).
    pub fn record_set(&self, range: std::ops::Range<usize>) -> RecordSet {
        let mut batches: Vec<(u64, RecordBatch)> = Vec::new();
        let mut expected = None;
        for i in range {
            let offset = self.offsets[i];
            if expected != Some(offset) {
                batches.push((offset, RecordBatch::new()));
            }
            let (_, batch) = batches.last_mut().expect("a batch was pushed");
            batch.push(self.keys[i].as_deref(), &self.values[i], self.timestamps[i]);
            expected = Some(offset + 1);
        }
        RecordSet::from_batches(batches.iter().map(|(base, batch)| (*base, batch)))
    }
}

pub fn partition_dir(dir: &Path, topic: &str, partition: u32) -> PathBuf {
    dir.join(topic).join(partition.to_string())
}

fn file_name(first_offset: u64, next_offset: u64) -> String {
    format!("{first_offset:020}-{next_offset:020}.parquet")
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (first, next) = stem.split_once('-')?;
    if first.len() != 20 || next.len() != 20 {
        return None;
    }
    let (first, next) = (first.parse().ok()?, next.parse().ok()?);
    (first < next).then_some((first, next))
}

/// The archived files of one partition, by first offset (none if the
/// directory does not exist).
pub fn list_files(
    dir: &Path,
    topic: &str,
    partition: u32,
) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let partition_dir = partition_dir(dir, topic, partition);
    let entries = match fs::read_dir(&partition_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(&partition_dir)(error)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&partition_dir))?;
        let name = entry.file_name();
        let Some((first_offset, next_offset)) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        files.push(ArchiveFile {
            first_offset,
            next_offset,
            path: entry.path(),
        });
    }
    files.sort_by_key(|f| f.first_offset);
    for pair in files.windows(2) {
        if pair[1].first_offset < pair[0].next_offset {
            return Err(format_error(
                &pair[1].path,
                format!(
                    "overlaps {} (offsets before {})",
                    pair[0].path.display(),
                    pair[0].next_offset
                ),
            ));
        }
    }
    Ok(files)
}

/// The partitions that have an archive directory.
pub fn archived_partitions(dir: &Path, topic: &str) -> Result<Vec<u32>, ArchiveError> {
    let topic_dir = dir.join(topic);
    let entries = match fs::read_dir(&topic_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(&topic_dir)(error)),
    };
    let mut partitions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&topic_dir))?;
        if let Some(partition) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            partitions.push(partition);
        }
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Copies every record of `input_topic` not yet archived to `dir`, one or
/// more files per partition with new records (see the module docs).
pub async fn archive_once(
    bus: &Arc<dyn EventBus>,
    input_topic: &str,
    dir: &Path,
) -> Result<ArchiveReport, ArchiveError> {
    let description = bus.describe_topic(input_topic).await?;
    let mut report = ArchiveReport {
        topic: input_topic.to_string(),
        dir: dir.display().to_string(),
        ..ArchiveReport::default()
    };
    for info in &description.partitions {
        let partition = info.partition;
        let target = partition_dir(dir, input_topic, partition);
        let files = {
            let (dir, topic, target) = (dir.to_path_buf(), input_topic.to_string(), target.clone());
            tokio::task::spawn_blocking(move || {
                remove_temporaries(&target)?;
                list_files(&dir, &topic, partition)
            })
            .await
            .expect("archive listing panicked")?
        };
        let archived_until = files.last().map_or(0, |f| f.next_offset);
        if info.end_offset < archived_until {
            report.skipped.push(format!(
                "partition {partition}: the log ends at offset {} but the archive already reaches {archived_until} (was the topic recreated?)",
                info.end_offset
            ));
            tracing::warn!(
                partition,
                end_offset = info.end_offset,
                archived_until,
                "log behind its archive; partition not archived"
            );
            continue;
        }
        let mut offset = archived_until;
        if info.start_offset > offset {
            report.holes.push(format!(
                "partition {partition}: offsets {offset}..{} were deleted by log retention before they were archived",
                info.start_offset
            ));
            tracing::warn!(
                partition,
                from = offset,
                to = info.start_offset,
                "raw records deleted before they were archived"
            );
            offset = info.start_offset;
        }
        let end = info.end_offset;
        while offset < end {
            let (records, next) = collect_records(bus, input_topic, partition, offset, end).await?;
            let path = target.join(file_name(offset, next));
            let (topic, written_path) = (input_topic.to_string(), path.clone());
            let file = tokio::task::spawn_blocking(move || {
                write_file(&written_path, &topic, partition, offset, next, &records)
            })
            .await
            .expect("archive writer panicked")?;
            report.records += file.records;
            report.bytes += file.bytes;
            report.files.push(file);
            offset = next;
        }
    }
    Ok(report)
}

/// Fetches from `offset` until `end` or [`MAX_FILE_BYTES`]; returns the
/// records and the offset after them.
async fn collect_records(
    bus: &Arc<dyn EventBus>,
    topic: &str,
    partition: u32,
    mut offset: u64,
    end: u64,
) -> Result<(FileRecords, u64), ArchiveError> {
    let mut records = FileRecords::default();
    let mut bytes = 0usize;
    while offset < end && bytes < MAX_FILE_BYTES {
        let fetched = bus.fetch(topic, partition, offset, FETCH_BYTES).await?;
        let Some(next) = fetched.records.next_offset() else {
            break;
        };
        for record in fetched.records.iter() {
            if record.offset >= end {
                break;
            }
            records.offsets.push(record.offset);
            records.timestamps.push(record.timestamp);
            records.keys.push(record.key.map(<[u8]>::to_vec));
            records.values.push(record.value.to_vec());
            bytes += record.key.map_or(0, <[u8]>::len) + record.value.len();
        }
        offset = next.min(end);
    }
    Ok((records, offset))
}

fn remove_temporaries(partition_dir: &Path) -> Result<(), ArchiveError> {
    let entries = match fs::read_dir(partition_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error(partition_dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(partition_dir))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

fn write_file(
    path: &Path,
    topic: &str,
    partition: u32,
    first_offset: u64,
    next_offset: u64,
    records: &FileRecords,
) -> Result<ArchivedFile, ArchiveError> {
    let parent = path.parent().expect("archive files live in a directory");
    fs::create_dir_all(parent).map_err(io_error(parent))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("archive file names are ASCII");
    let temporary = parent.join(format!(".{name}.tmp"));
    let min_timestamp = records.timestamps.iter().copied().min();
    let max_timestamp = records.timestamps.iter().copied().max();
    let mut metadata = vec![
        KeyValue::new("riffle.format".into(), FORMAT_VERSION.to_string()),
        KeyValue::new("riffle.topic".into(), topic.to_string()),
        KeyValue::new("riffle.partition".into(), partition.to_string()),
    ];
    if let (Some(min), Some(max)) = (min_timestamp, max_timestamp) {
        metadata.push(KeyValue::new(MIN_TS_KEY.into(), min.to_string()));
        metadata.push(KeyValue::new(MAX_TS_KEY.into(), max.to_string()));
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(None)
        .set_key_value_metadata(Some(metadata))
        .build();
    let schema = Arc::new(parse_message_type(SCHEMA).expect("the archive schema parses"));
    let file = File::create(&temporary).map_err(io_error(&temporary))?;
    let parquet_error = |e: parquet::errors::ParquetError| format_error(&temporary, e);
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(parquet_error)?;
    let mut group = writer.next_row_group().map_err(parquet_error)?;
    let offsets: Vec<i64> = records.offsets.iter().map(|o| *o as i64).collect();
    let mut column = 0;
    while let Some(mut writer) = group.next_column().map_err(parquet_error)? {
        match column {
            0 => {
                writer
                    .typed::<Int64Type>()
                    .write_batch(&offsets, None, None)
                    .map_err(parquet_error)?;
            }
            1 => {
                writer
                    .typed::<Int64Type>()
                    .write_batch(&records.timestamps, None, None)
                    .map_err(parquet_error)?;
            }
            2 => {
                let levels: Vec<i16> = records
                    .keys
                    .iter()
                    .map(|k| i16::from(k.is_some()))
                    .collect();
                let keys: Vec<ByteArray> = records
                    .keys
                    .iter()
                    .flatten()
                    .map(|k| ByteArray::from(k.clone()))
                    .collect();
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&keys, Some(&levels), None)
                    .map_err(parquet_error)?;
            }
            _ => {
                let values: Vec<ByteArray> = records
                    .values
                    .iter()
                    .map(|v| ByteArray::from(v.clone()))
                    .collect();
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&values, None, None)
                    .map_err(parquet_error)?;
            }
        }
        writer.close().map_err(parquet_error)?;
        column += 1;
    }
    group.close().map_err(parquet_error)?;
    let file = writer.into_inner().map_err(parquet_error)?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error(path))?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_error(parent))?;
    let bytes = fs::metadata(path).map_err(io_error(path))?.len();
    Ok(ArchivedFile {
        partition,
        first_offset,
        next_offset,
        records: records.len() as u64,
        bytes,
        min_timestamp,
        max_timestamp,
        path: path.display().to_string(),
    })
}

/// The smallest and largest record timestamp of a file, from its footer;
/// `None` for a file without rows.
pub fn time_range(path: &Path) -> Result<Option<(i64, i64)>, ArchiveError> {
    let file = File::open(path).map_err(io_error(path))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format_error(path, e))?;
    let metadata: BTreeMap<&str, &str> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| Some((e.key.as_str(), e.value.as_deref()?)))
                .collect()
        })
        .unwrap_or_default();
    let parse = |key: &str| -> Result<Option<i64>, ArchiveError> {
        metadata
            .get(key)
            .map(|v| {
                v.parse()
                    .map_err(|e| format_error(path, format!("{key}: {e}")))
            })
            .transpose()
    };
    match (parse(MIN_TS_KEY)?, parse(MAX_TS_KEY)?) {
        (Some(min), Some(max)) => Ok(Some((min, max))),
        _ if reader.metadata().file_metadata().num_rows() == 0 => Ok(None),
        _ => Err(format_error(
            path,
            format!("{MIN_TS_KEY} or {MAX_TS_KEY} missing"),
        )),
    }
}

/// Reads every record of a file and checks it against its name.
pub fn read_file(file: &ArchiveFile) -> Result<FileRecords, ArchiveError> {
    let path = &file.path;
    let parquet_error = |e: parquet::errors::ParquetError| format_error(path, e);
    let handle = File::open(path).map_err(io_error(path))?;
    let reader = SerializedFileReader::new(handle).map_err(parquet_error)?;
    let mut records = FileRecords::default();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(parquet_error)?;
        let rows = group.metadata().num_rows() as usize;
        let mut offsets: Vec<i64> = Vec::with_capacity(rows);
        let mut timestamps: Vec<i64> = Vec::with_capacity(rows);
        let mut key_levels: Vec<i16> = Vec::with_capacity(rows);
        let mut keys: Vec<ByteArray> = Vec::with_capacity(rows);
        let mut values: Vec<ByteArray> = Vec::with_capacity(rows);
        let mut column = get_typed_column_reader::<Int64Type>(
            group.get_column_reader(0).map_err(parquet_error)?,
        );
        read_all(rows, |n| column.read_records(n, None, None, &mut offsets))
            .map_err(parquet_error)?;
        let mut column = get_typed_column_reader::<Int64Type>(
            group.get_column_reader(1).map_err(parquet_error)?,
        );
        read_all(rows, |n| {
            column.read_records(n, None, None, &mut timestamps)
        })
        .map_err(parquet_error)?;
        let mut column = get_typed_column_reader::<ByteArrayType>(
            group.get_column_reader(2).map_err(parquet_error)?,
        );
        read_all(rows, |n| {
            column.read_records(n, Some(&mut key_levels), None, &mut keys)
        })
        .map_err(parquet_error)?;
        let mut column = get_typed_column_reader::<ByteArrayType>(
            group.get_column_reader(3).map_err(parquet_error)?,
        );
        read_all(rows, |n| column.read_records(n, None, None, &mut values))
            .map_err(parquet_error)?;
        if offsets.len() != rows
            || timestamps.len() != rows
            || key_levels.len() != rows
            || values.len() != rows
            || keys.len() != key_levels.iter().filter(|l| **l > 0).count()
        {
            return Err(format_error(
                path,
                format!("row group {g}: columns disagree on the row count"),
            ));
        }
        let mut present = keys.into_iter();
        for level in key_levels {
            records.keys.push(
                (level > 0)
                    .then(|| present.next().map(|k| k.data().to_vec()))
                    .flatten(),
            );
        }
        records
            .offsets
            .extend(offsets.into_iter().map(|o| o as u64));
        records.timestamps.extend(timestamps);
        records
            .values
            .extend(values.into_iter().map(|v| v.data().to_vec()));
    }
    let in_order = records.offsets.windows(2).all(|w| w[0] < w[1]);
    let in_range = records
        .offsets
        .first()
        .is_none_or(|first| *first >= file.first_offset)
        && records
            .offsets
            .last()
            .is_none_or(|last| *last < file.next_offset);
    if !in_order || !in_range {
        return Err(format_error(
            path,
            format!(
                "offsets are not increasing within {}..{}",
                file.first_offset, file.next_offset
            ),
        ));
    }
    Ok(records)
}

/// Calls `read(remaining)` until it has produced `rows` records or stops.
fn read_all(
    rows: usize,
    mut read: impl FnMut(usize) -> parquet::errors::Result<(usize, usize, usize)>,
) -> parquet::errors::Result<()> {
    let mut done = 0;
    while done < rows {
        let (records, _, _) = read(rows - done)?;
        if records == 0 {
            break;
        }
        done += records;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_reject_others() {
        let name = file_name(7, 4_000);
        assert_eq!(name, "00000000000000000007-00000000000000004000.parquet");
        assert_eq!(parse_file_name(&name), Some((7, 4_000)));
        assert_eq!(parse_file_name(&format!(".{name}.tmp")), None);
        assert_eq!(parse_file_name("7-4000.parquet"), None);
        assert_eq!(
            parse_file_name("00000000000000000009-00000000000000000009.parquet"),
            None
        );
    }

    #[test]
    fn a_file_reads_back_exactly_with_gaps_and_null_keys() {
        let dir = tempfile::tempdir().unwrap();
        let records = FileRecords {
            offsets: vec![3, 4, 9],
            timestamps: vec![100, 50, 70],
            keys: vec![Some(b"a".to_vec()), None, Some(Vec::new())],
            values: vec![b"x".to_vec(), Vec::new(), b"zz".to_vec()],
        };
        let path = partition_dir(dir.path(), "t", 2).join(file_name(3, 11));
        let written = write_file(&path, "t", 2, 3, 11, &records).unwrap();
        assert_eq!(
            (written.min_timestamp, written.max_timestamp),
            (Some(50), Some(100))
        );
        let listed = list_files(dir.path(), "t", 2).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].first_offset, listed[0].next_offset), (3, 11));
        assert_eq!(time_range(&path).unwrap(), Some((50, 100)));
        let read = read_file(&listed[0]).unwrap();
        assert_eq!(read.offsets, records.offsets);
        assert_eq!(read.timestamps, records.timestamps);
        assert_eq!(read.keys, records.keys);
        assert_eq!(read.values, records.values);
        let set = read.record_set(0..3);
        let offsets: Vec<u64> = set.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![3, 4, 9]);
        assert_eq!(set.iter().nth(1).unwrap().key, None);
        assert_eq!(archived_partitions(dir.path(), "t").unwrap(), vec![2]);
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![file_name(3, 11)]);
    }
}
