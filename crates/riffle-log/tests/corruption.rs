//! Corruption: torn tails, flipped bytes, trailing zeros and lost indexes
//! are detected, truncated or reported, and never served.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use riffle_log::{Admin, BusError, EmbeddedLog, LogOptions, Producer, RecordBatch, TopicConfig};

fn options() -> LogOptions {
    LogOptions {
        index_interval_bytes: 256,
        ..LogOptions::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `batches` batches of 10 records into a fresh 1-partition topic
/// with small segments and returns the partition directory.
fn fill(dir: &Path, batches: u64) -> PathBuf {
    let rt = rt();
    let log = EmbeddedLog::open(dir, options()).unwrap();
    rt.block_on(log.create_topic(
        "t",
        TopicConfig {
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: 8192,
        },
    ))
    .unwrap();
    for b in 0..batches {
        let mut batch = RecordBatch::new();
        for i in 0..10 {
            batch.push(
                Some(b"key"),
                format!("batch{b}-record{i}-payload-payload").as_bytes(),
                (b * 10 + i) as i64,
            );
        }
        rt.block_on(log.append("t", 0, batch)).unwrap();
    }
    log.close().unwrap();
    dir.join("topics/t/0")
}

fn segments(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Reads every record; returns (values, first error).
fn read_all(log: &EmbeddedLog) -> (Vec<String>, Option<BusError>) {
    let rt = rt();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        match rt.block_on(log.fetch("t", 0, offset, 4096)) {
            Ok(batch) if batch.records.is_empty() => return (out, None),
            Ok(batch) => {
                for r in batch.records.iter() {
                    out.push(String::from_utf8(r.value.to_vec()).unwrap());
                    offset = r.offset + 1;
                }
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

fn expected(records: u64) -> Vec<String> {
    (0..records)
        .map(|n| format!("batch{}-record{}-payload-payload", n / 10, n % 10))
        .collect()
}

#[test]
fn torn_tail_is_truncated_to_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 40);
    let active = segments(&pdir).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 17)
        .unwrap();

    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    let report = log.recovery_truncations();
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].truncated_bytes > 0 && report[0].reason.contains("torn"),
        "{report:?}"
    );
    let (values, error) = read_all(&log);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(values, expected(390), "exactly the last batch is gone");
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        len - 17 - report[0].truncated_bytes
    );
}

#[test]
fn flipped_byte_in_active_segment_truncates_from_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 40);
    let active = segments(&pdir).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active)
        .unwrap();
    let mut byte = [0u8; 1];
    let at = len - 30; // inside the last batch's records
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();

    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    let report = log.recovery_truncations();
    assert_eq!(report.len(), 1);
    assert!(report[0].reason.contains("crc"), "{report:?}");
    let (values, error) = read_all(&log);
    assert!(error.is_none());
    assert_eq!(values, expected(390));
}

#[test]
fn trailing_zeros_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 5);
    let active = segments(&pdir).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len + 4096)
        .unwrap();

    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    assert_eq!(log.recovery_truncations()[0].truncated_bytes, 4096);
    let (values, _) = read_all(&log);
    assert_eq!(values, expected(50));
    // The log keeps working after recovery.
    let mut batch = RecordBatch::new();
    batch.push(None, b"after", 0);
    assert_eq!(rt().block_on(log.append("t", 0, batch)).unwrap(), 50);
}

#[test]
fn corruption_in_a_closed_segment_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 40);
    let files = segments(&pdir);
    assert!(
        files.len() >= 3,
        "want several segments, got {}",
        files.len()
    );
    let closed = &files[1];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(closed)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], 100).unwrap();

    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    let (values, error) = read_all(&log);
    let Some(BusError::Corrupt { path, .. }) = error else {
        panic!("expected a corruption error, got {error:?}");
    };
    assert_eq!(&path, closed);
    // Every record before the corrupt batch (the first of the segment) was
    // served, intact, and nothing from it on.
    let closed_base: u64 = closed
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(values, expected(closed_base));
    // Later segments are still readable directly.
    let later_base: u64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let batch = rt().block_on(log.fetch("t", 0, later_base, 4096)).unwrap();
    assert_eq!(batch.records.iter().next().unwrap().offset, later_base);
}

#[test]
fn missing_or_damaged_index_of_closed_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 40);
    let files = segments(&pdir);
    std::fs::remove_file(files[0].with_extension("index")).unwrap();
    std::fs::write(files[1].with_extension("index"), b"garbage").unwrap();
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    let (values, error) = read_all(&log);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(values, expected(400));
    // Random access through the rebuilt indexes.
    let batch = rt().block_on(log.fetch("t", 0, 123, 100)).unwrap();
    assert_eq!(batch.records.iter().next().unwrap().offset, 123);
}

#[test]
fn corrupt_closed_segment_without_index_is_not_silently_shortened() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = fill(dir.path(), 40);
    let files = segments(&pdir);
    let closed = &files[1];
    std::fs::remove_file(closed.with_extension("index")).unwrap();
    let len = std::fs::metadata(closed).unwrap().len();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(closed)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, len / 2).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], len / 2).unwrap();

    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    // The segment keeps its bytes: nothing was cut.
    assert_eq!(std::fs::metadata(closed).unwrap().len(), len);
    let (values, error) = read_all(&log);
    assert!(
        matches!(error, Some(BusError::Corrupt { .. })),
        "reading through the damage must fail, got {error:?}"
    );
    assert_eq!(values, expected(values.len() as u64));
    let next_base: u64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Reads stop exactly at a batch boundary (10 records per batch) inside
    // the damaged segment: everything before the bad batch is served.
    let base: u64 = closed
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(values.len() as u64 > base && (values.len() as u64) < next_base);
    assert_eq!(values.len() % 10, 0);
    // Offsets after the damaged segment are still served.
    let batch = rt().block_on(log.fetch("t", 0, next_base, 4096)).unwrap();
    assert_eq!(batch.records.iter().next().unwrap().offset, next_base);
}
