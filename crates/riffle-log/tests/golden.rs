//! Golden files of the embedded log's on-disk format: segment files (record
//! batches, `crate::format`), the sparse index of a closed segment, and the
//! small files around them (`topic.json`, a group's committed offsets, the
//! empty transaction journal). `tests/fixtures/segment/` is a whole log root
//! as the embedded log wrote it.
//!
//! One test writes a fixed sequence of batches — keys, no key, empty keys,
//! headers, an in-place encoded value, a transactional batch with a group
//! commit, and enough bytes to roll a segment — into a fresh log through the
//! public API and requires every file to equal the fixture byte for byte.
//! Another opens a copy of the fixture and reads every record back, so a
//! log written by an older build keeps opening. (The index entries are
//! checked field by field by a unit test in `embedded/segment.rs`, the
//! transaction journal by one in `embedded/txn.rs`.)
//!
//! To regenerate the fixture deliberately (a reviewed format change that
//! comes with a reader for the old files), run with `RIFFLE_BLESS=1`:
//!
//! ```text
//! RIFFLE_BLESS=1 cargo test -p riffle-log --test golden
//! ```
//!
//! A normal run never writes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use riffle_log::format::{validate_batch, BatchHeader, ATTR_TRANSACTIONAL};
use riffle_log::{
    Admin, EmbeddedLog, EventBus, LogOptions, Producer, RecordBatch, StartPosition, TopicConfig,
    TopicPartition,
};

/// 2024-05-01T12:00:00.000Z.
const T0: i64 = 1_714_564_800_000;
const TOPIC: &str = "golden";
const GROUP: &str = "golden-group";
/// The log's smallest allowed segment size, so a few KB roll one segment.
const SEGMENT_BYTES: u64 = 4096;

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/segment")
}

fn blessing() -> bool {
    std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> LogOptions {
    LogOptions {
        // An index entry at every batch after the first of a segment.
        index_interval_bytes: 1,
        ..LogOptions::default()
    }
}

/// A deterministic, incompressible-looking value that fills a segment.
fn big_value(seed: u8) -> Vec<u8> {
    (0..1500u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(u32::from(seed)) % 251) as u8)
        .collect()
}

/// What one stored record must read back as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

fn record(
    offset: u64,
    timestamp: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Expected {
    Expected {
        offset,
        timestamp,
        key: key.map(<[u8]>::to_vec),
        value: value.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
    }
}

/// Every record of the fixture, in offset order.
fn expected_records() -> Vec<Expected> {
    vec![
        // Batch at offset 0.
        record(
            0,
            T0 + 1_000,
            Some(b"user-1"),
            b"hello",
            &[("trace", b"abc")],
        ),
        record(1, T0, None, b"", &[]),
        record(
            2,
            T0 + 2_000,
            Some(b""),
            b"\x00\xffbinary",
            &[("a", b""), ("content-type", b"application/json")],
        ),
        // Transactional batch at offset 3.
        record(3, T0 + 3_000, Some(b"txn"), b"in a transaction", &[]),
        record(4, T0 + 2_500, Some(b"txn"), b"committed with offsets", &[]),
        // Batch at offset 5.
        record(5, T0 + 4_000, Some(b"big-1"), &big_value(1), &[]),
        record(6, T0 + 4_500, Some(b"enc"), b"encoded in place", &[]),
        // Batch at offset 7: the last one of the first segment.
        record(7, T0 + 5_000, Some(b"big-2"), &big_value(2), &[]),
        // Offset 8 does not fit: the segment rolls.
        record(8, T0 + 6_000, Some(b"big-3"), &big_value(3), &[]),
        record(9, T0 + 7_000, None, b"last", &[]),
    ]
}

/// (base_offset, count, attributes, txn_seq, min_ts, max_ts) of every batch
/// of every segment file, by file name.
type BatchSummary = (u64, u32, u8, u64, i64, i64);

fn expected_batches() -> Vec<(&'static str, Vec<BatchSummary>)> {
    vec![
        (
            "00000000000000000000.log",
            vec![
                (0, 3, 0, 0, T0, T0 + 2_000),
                (3, 2, ATTR_TRANSACTIONAL, 1, T0 + 2_500, T0 + 3_000),
                (5, 2, 0, 0, T0 + 4_000, T0 + 4_500),
                (7, 1, 0, 0, T0 + 5_000, T0 + 5_000),
            ],
        ),
        (
            "00000000000000000008.log",
            vec![
                (8, 1, 0, 0, T0 + 6_000, T0 + 6_000),
                (9, 1, 0, 0, T0 + 7_000, T0 + 7_000),
            ],
        ),
    ]
}

/// Writes the fixed batches into a fresh log at `root` through the public
/// API and closes it.
fn write_golden_log(root: &Path) {
    let rt = rt();
    let log = EmbeddedLog::open(root, options()).unwrap();
    rt.block_on(log.create_topic(
        TOPIC,
        TopicConfig {
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: SEGMENT_BYTES,
        },
    ))
    .unwrap();
    let records = expected_records();
    let batch_of = |range: std::ops::Range<usize>| {
        let mut batch = RecordBatch::new();
        for r in &records[range] {
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            batch
                .push_with_headers(r.key.as_deref(), &r.value, r.timestamp, &headers)
                .unwrap();
        }
        batch
    };
    let append = |batch: RecordBatch| rt.block_on(log.append(TOPIC, 0, batch)).unwrap();

    assert_eq!(append(batch_of(0..3)), 0);

    let mut txn = rt.block_on(log.begin_transaction("golden-txn")).unwrap();
    txn.append(TOPIC, 0, batch_of(3..5)).unwrap();
    txn.commit_offsets(GROUP, &[(TopicPartition::new(TOPIC, 0), 3)]);
    assert_eq!(rt.block_on(txn.commit()).unwrap(), vec![3]);

    let mut batch = batch_of(5..6);
    let encoded = &records[6];
    batch.push_encoded(encoded.key.as_deref(), encoded.timestamp, |out| {
        out.extend_from_slice(&encoded.value)
    });
    assert_eq!(append(batch), 5);
    assert_eq!(append(batch_of(7..8)), 7);
    assert_eq!(append(batch_of(8..9)), 8);
    assert_eq!(append(batch_of(9..10)), 9);
    assert_eq!(
        log.segment_count(TOPIC, 0).unwrap(),
        2,
        "the segment rolled"
    );
    log.close().unwrap();
}

/// Every file under `root` (relative path → bytes).
fn read_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write_tree(root: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (relative, bytes) in files {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[test]
fn written_log_matches_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    write_golden_log(dir.path());
    let written = read_tree(dir.path());
    if blessing() {
        let _ = std::fs::remove_dir_all(fixture_root());
        write_tree(&fixture_root(), &written);
        return;
    }
    let fixture = read_tree(&fixture_root());
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        fixture.keys().collect::<Vec<_>>(),
        "the log writes a different set of files than the fixture holds"
    );
    for (path, bytes) in &written {
        let expected = &fixture[path];
        assert!(
            bytes == expected,
            "{}: today's log writes different bytes (first difference at byte {}; fixture {} \
             bytes, written {}). Logs on disk must keep opening: a format change needs a new \
             magic or version and a reader for the old one. Re-bless (RIFFLE_BLESS=1) only for \
             a reviewed, intended change.",
            path.display(),
            first_difference(expected, bytes),
            expected.len(),
            bytes.len(),
        );
    }
}

/// The batch headers of the fixture's segment files, decoded by the log's
/// own reader.
#[test]
fn fixture_segments_hold_the_expected_batches() {
    if blessing() {
        // The fixture may be being rewritten by the test above.
        return;
    }
    let partition = fixture_root().join("topics").join(TOPIC).join("0");
    for (file, batches) in expected_batches() {
        let bytes = std::fs::read(partition.join(file)).unwrap();
        let mut position = 0;
        let mut found = Vec::new();
        while position < bytes.len() {
            let header: BatchHeader = validate_batch(&bytes[position..])
                .unwrap_or_else(|e| panic!("{file}: batch at byte {position}: {e}"));
            found.push((
                header.base_offset,
                header.count,
                header.attributes,
                header.txn_seq,
                header.min_ts,
                header.max_ts,
            ));
            position += header.total_len();
        }
        assert_eq!(found, batches, "{file}");
    }
}

/// A log directory in the fixture's (older) bytes opens without recovery
/// work and serves every record, offset look-up and committed offset.
#[test]
fn fixture_log_opens_and_reads_back() {
    if blessing() {
        // The fixture may be being rewritten by the test above.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &read_tree(&fixture_root()));
    let rt = rt();
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    assert!(
        log.recovery_truncations().is_empty(),
        "{:?}",
        log.recovery_truncations()
    );
    assert_eq!(log.segment_count(TOPIC, 0).unwrap(), 2);

    let mut read = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = rt.block_on(log.fetch(TOPIC, 0, offset, 1 << 20)).unwrap();
        assert_eq!(fetched.high_watermark, 10);
        if fetched.records.is_empty() {
            break;
        }
        for r in fetched.records.iter() {
            read.push(Expected {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.to_vec(),
                headers: r
                    .headers()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
            });
            offset = r.offset + 1;
        }
    }
    let expected = expected_records();
    assert_eq!(read.len(), expected.len(), "record count");
    for (got, want) in read.iter().zip(&expected) {
        assert_eq!(got, want, "record at offset {}", want.offset);
    }

    // A fetch from the middle of the closed segment starts at its batch.
    let fetched = rt.block_on(log.fetch(TOPIC, 0, 7, 1 << 20)).unwrap();
    assert_eq!(fetched.records.iter().next().map(|r| r.offset), Some(7));

    // Timestamp look-ups go through the closed segment's index.
    let resolve = |at| rt.block_on(log.resolve_offset(TOPIC, 0, at)).unwrap();
    assert_eq!(resolve(StartPosition::Earliest), 0);
    assert_eq!(resolve(StartPosition::Latest), 10);
    assert_eq!(resolve(StartPosition::Timestamp(T0 + 2_200)), 3);
    assert_eq!(resolve(StartPosition::Timestamp(T0 + 4_200)), 6);
    assert_eq!(resolve(StartPosition::Timestamp(T0 + 6_500)), 9);
    assert_eq!(resolve(StartPosition::Timestamp(T0 + 8_000)), 10);

    assert_eq!(
        rt.block_on(log.committed_offsets(GROUP, TOPIC)).unwrap(),
        BTreeMap::from([(0, 3)])
    );
    log.close().unwrap();

    // Opening trusted the closed segment and its index as they were.
    let reopened = read_tree(dir.path());
    let fixture = read_tree(&fixture_root());
    let index = PathBuf::from("topics/golden/0/00000000000000000000.index");
    assert_eq!(reopened.get(&index), fixture.get(&index));
}
