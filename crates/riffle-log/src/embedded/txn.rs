//! Transactions of the embedded log: a redo journal makes "append these
//! batches and commit these offsets" atomic across partitions and groups.
//!
//! Journal file (`txn.journal`), empty when no transaction is in flight:
//!
//! ```text
//! magic "RTXN" | body_len u32 | crc32c(body) u32 | body
//! body := seq u64 | batches u32 | batch* | offsets u32 | offset*
//! batch := topic_len u16 topic | partition u32 | base_offset u64 | count u32
//!          | min_ts i64 | max_ts i64 | records_len u32 | records
//! offset := group_len u16 group | topic_len u16 topic | partition u32 | offset u64
//! ```
//!
//! Commit: lock the involved partitions' writers in a fixed order, fsync
//! them (so their end offsets are durable), record each batch's base offset,
//! write and fsync the journal (the commit point), append the batches and
//! fsync, write the group offsets, truncate the journal.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use riffle_core::codec::{ReadError, Reader};
use tracing::{info, warn};

use super::Inner;
use crate::bus::{Offset, TopicPartition, Transaction};
use crate::error::{BusError, Result};
use crate::format::{RecordBatch, ATTR_TRANSACTIONAL};
use crate::metrics;

const MAGIC: &[u8; 4] = b"RTXN";

pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    next_seq: u64,
}

struct Entry {
    seq: u64,
    batches: Vec<(String, u32, u64, RecordBatch)>,
    offsets: Vec<(String, TopicPartition, u64)>,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| BusError::io(path, e))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            next_seq: 1,
        })
    }

    fn write(&mut self, entry: &Entry) -> Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&entry.seq.to_le_bytes());
        body.extend_from_slice(&(entry.batches.len() as u32).to_le_bytes());
        for (topic, partition, base, batch) in &entry.batches {
            put_str(&mut body, topic);
            body.extend_from_slice(&partition.to_le_bytes());
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&(batch.len() as u32).to_le_bytes());
            body.extend_from_slice(&batch.min_timestamp().to_le_bytes());
            body.extend_from_slice(&batch.max_timestamp().to_le_bytes());
            body.extend_from_slice(&(batch.byte_len() as u32).to_le_bytes());
            body.extend_from_slice(batch.records_bytes());
        }
        body.extend_from_slice(&(entry.offsets.len() as u32).to_le_bytes());
        for (group, tp, offset) in &entry.offsets {
            put_str(&mut body, group);
            put_str(&mut body, &tp.topic);
            body.extend_from_slice(&tp.partition.to_le_bytes());
            body.extend_from_slice(&offset.to_le_bytes());
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        self.file
            .set_len(0)
            .and_then(|_| {
                use std::os::unix::fs::FileExt;
                self.file.write_all_at(&out, 0)
            })
            .and_then(|_| self.file.sync_data())
            .map_err(|e| BusError::io(&self.path, e))
    }

    fn clear(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| BusError::io(&self.path, e))
    }

    /// The entry in the journal, if a whole valid one is there. A torn or
    /// corrupt journal means the commit point was never reached.
    fn read(&mut self) -> Result<Option<Entry>> {
        let bytes = std::fs::read(&self.path).map_err(|e| BusError::io(&self.path, e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        match parse_entry(&bytes) {
            Ok(entry) => Ok(Some(entry)),
            Err(reason) => {
                warn!(path = %self.path.display(), bytes = bytes.len(), %reason, "discarding incomplete transaction journal (commit point not reached)");
                Ok(None)
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The entry in `bytes`, or why they hold no whole, valid one.
fn parse_entry(bytes: &[u8]) -> std::result::Result<Entry, String> {
    let mut r = Reader::new(bytes);
    let header = |e: ReadError| e.to_string();
    if r.array::<4>("magic").map_err(header)? != *MAGIC {
        return Err("bad magic".into());
    }
    let len = r.u32("body_len").map_err(header)?;
    let crc = r.u32("crc32c").map_err(header)?;
    let body = r.bytes(u64::from(len), "body").map_err(header)?;
    let computed = crc32c::crc32c(body);
    if computed != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:#010x}, computed {computed:#010x})"
        ));
    }
    // Offsets in errors below count from the start of the body.
    let mut r = Reader::new(body);
    let in_body = |e: ReadError| format!("body: {e}");
    let seq = r.u64("seq").map_err(in_body)?;
    let n = r.u32("batches").map_err(in_body)?;
    let mut batches = Vec::new();
    for _ in 0..n {
        let topic = r.str_u16("topic").map_err(in_body)?.to_owned();
        let partition = r.u32("partition").map_err(in_body)?;
        let base = r.u64("base_offset").map_err(in_body)?;
        let count = r.u32("count").map_err(in_body)?;
        let min_ts = r.i64("min_ts").map_err(in_body)?;
        let max_ts = r.i64("max_ts").map_err(in_body)?;
        let records_len = r.u32("records_len").map_err(in_body)?;
        let records = r
            .bytes(u64::from(records_len), "records")
            .map_err(in_body)?
            .to_vec();
        let batch = RecordBatch::from_parts(records, count, min_ts, max_ts);
        // The journal is CRC-checked and was written by us; still, never
        // replay a batch that would not read back.
        batch
            .check_framing()
            .map_err(|e| format!("batch for {topic}/{partition}: {e}"))?;
        batches.push((topic, partition, base, batch));
    }
    let n = r.u32("offsets").map_err(in_body)?;
    let mut offsets = Vec::new();
    for _ in 0..n {
        let group = r.str_u16("group").map_err(in_body)?.to_owned();
        let topic = r.str_u16("topic").map_err(in_body)?.to_owned();
        let partition = r.u32("partition").map_err(in_body)?;
        let offset = r.u64("offset").map_err(in_body)?;
        offsets.push((group, TopicPartition::new(topic, partition), offset));
    }
    Ok(Entry {
        seq,
        batches,
        offsets,
    })
}

/// Applies the batches and offsets of a committed entry, skipping what was
/// already applied before a crash.
fn apply(inner: &Inner, entry: &Entry) -> Result<Vec<Offset>> {
    let mut bases = Vec::with_capacity(entry.batches.len());
    let mut touched = Vec::new();
    for (topic, partition, base, batch) in &entry.batches {
        let p = match inner.partition(topic, *partition) {
            Ok(p) => p,
            Err(BusError::TopicNotFound(_) | BusError::PartitionNotFound { .. }) => {
                // Deleted after the commit point: nothing left to apply to.
                warn!(seq = entry.seq, topic = %topic, partition, "transaction output partition no longer exists; skipping its batch");
                bases.push(*base);
                continue;
            }
            Err(e) => return Err(e),
        };
        let end = p.written_end_offset();
        if end == *base {
            p.append(batch, ATTR_TRANSACTIONAL, entry.seq, false)?;
            touched.push(p);
        } else if end < *base {
            return Err(BusError::Corrupt {
                path: inner.root.join("txn.journal"),
                position: 0,
                reason: format!(
                    "transaction {} expects {topic}/{partition} to end at {base}, it ends at {end}",
                    entry.seq
                ),
            });
        }
        bases.push(*base);
    }
    for p in touched {
        p.flush()?;
    }
    let mut by_group: BTreeMap<&str, Vec<(TopicPartition, u64)>> = BTreeMap::new();
    for (group, tp, offset) in &entry.offsets {
        by_group
            .entry(group)
            .or_default()
            .push((tp.clone(), *offset));
    }
    for (group, offsets) in by_group {
        inner.groups.commit(group, &offsets)?;
    }
    Ok(bases)
}

/// Re-applies a transaction that reached its commit point before a crash.
pub(crate) fn recover(inner: &Inner, journal: &mut Journal) -> Result<()> {
    if let Some(entry) = journal.read()? {
        info!(
            seq = entry.seq,
            batches = entry.batches.len(),
            offsets = entry.offsets.len(),
            "re-applying committed transaction from journal"
        );
        apply(inner, &entry)?;
        journal.next_seq = entry.seq + 1;
    }
    journal.clear()
}

pub(crate) struct EmbeddedTransaction {
    inner: Arc<Inner>,
    id: String,
    batches: Vec<(String, u32, RecordBatch)>,
    offsets: Vec<(String, TopicPartition, u64)>,
}

impl EmbeddedTransaction {
    pub fn new(inner: Arc<Inner>, id: &str) -> Self {
        EmbeddedTransaction {
            inner,
            id: id.to_string(),
            batches: Vec::new(),
            offsets: Vec::new(),
        }
    }
}

#[async_trait]
impl Transaction for EmbeddedTransaction {
    fn append(&mut self, topic: &str, partition: u32, batch: RecordBatch) -> Result<()> {
        self.inner.partition(topic, partition)?;
        if batch.is_empty() {
            return Ok(());
        }
        super::check_batch(&batch)?;
        self.batches.push((topic.to_string(), partition, batch));
        Ok(())
    }

    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, Offset)]) {
        for (tp, offset) in offsets {
            self.offsets.push((group.to_string(), tp.clone(), *offset));
        }
    }

    async fn commit(self: Box<Self>) -> Result<Vec<Offset>> {
        let inner = self.inner.clone();
        inner.check_open()?;
        for (group, tp, _) in &self.offsets {
            super::groups::validate_group_name(group)?;
            inner.partition(&tp.topic, tp.partition)?;
        }
        let timer = std::time::Instant::now();
        let mut journal = inner.txn.clone().lock_owned().await;
        let id = self.id.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<Offset>> {
            // Fix every involved partition's end by flushing it and noting
            // where each batch will go; appends by others may interleave
            // after this, so the base offsets are assigned while holding
            // the journal lock and re-checked on apply.
            let mut planned: Vec<(String, u32, u64, RecordBatch)> = Vec::new();
            let mut next_end: BTreeMap<(String, u32), u64> = BTreeMap::new();
            let partitions: Vec<_> = self
                .batches
                .iter()
                .map(|(t, p, _)| (t.clone(), *p))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let locked: Vec<_> = partitions
                .iter()
                .map(|(topic, partition)| self.inner.partition(topic, *partition))
                .collect::<Result<_>>()?;
            let mut guards = Vec::new();
            for p in &locked {
                guards.push(p.lock_for_transaction()?);
            }
            for guard in &guards {
                next_end.insert((guard.topic().to_string(), guard.id()), guard.end_offset());
            }
            for (topic, partition, batch) in self.batches {
                let end = next_end
                    .get_mut(&(topic.clone(), partition))
                    .expect("locked above");
                let base = *end;
                *end += batch.len() as u64;
                planned.push((topic, partition, base, batch));
            }
            let entry = Entry {
                seq: journal.next_seq,
                batches: planned,
                offsets: self.offsets,
            };
            journal.next_seq += 1;
            journal.write(&entry)?;
            // Past the commit point the transaction must complete. If
            // applying it fails, refuse all further work: reopening the log
            // replays the journal and finishes it.
            let inner = self.inner.clone();
            let applied = (|| -> Result<Vec<Offset>> {
            let mut bases = Vec::with_capacity(entry.batches.len());
            for (topic, partition, base, batch) in &entry.batches {
                let guard = guards
                    .iter_mut()
                    .find(|g| g.topic() == topic.as_str() && g.id() == *partition)
                    .expect("locked above");
                let appended = guard.append(batch, ATTR_TRANSACTIONAL, entry.seq)?;
                debug_assert_eq!(appended, *base);
                bases.push(appended);
            }
            for guard in &mut guards {
                guard.flush()?;
            }
            drop(guards);
            let mut by_group: BTreeMap<&str, Vec<(TopicPartition, u64)>> = BTreeMap::new();
            for (group, tp, offset) in &entry.offsets {
                by_group
                    .entry(group)
                    .or_default()
                    .push((tp.clone(), *offset));
            }
            for (group, offsets) in by_group {
                self.inner.groups.commit(group, &offsets)?;
            }
            Ok(bases)
            })();
            match applied {
                Ok(bases) => {
                    journal.clear()?;
                    Ok(bases)
                }
                Err(e) => {
                    inner.closed.store(true, std::sync::atomic::Ordering::Release);
                    tracing::error!(seq = entry.seq, error = %e, "transaction failed after its commit point; the log refuses further work until reopened, when recovery completes it");
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| BusError::Backend(e.to_string()))?;
        metrics::TXN_SECONDS.observe(timer.elapsed().as_secs_f64());
        if let Err(e) = &result {
            warn!(transactional_id = %id, error = %e, "transaction failed");
        }
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Nothing reached the log or the groups before commit.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Admin, TopicConfig};
    use crate::{EmbeddedLog, LogOptions, Producer};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The one-partition `out` topic every test writes to.
    fn out_config() -> TopicConfig {
        TopicConfig {
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: 1 << 20,
        }
    }

    fn batch(value: &[u8]) -> RecordBatch {
        let mut b = RecordBatch::new();
        b.push(None, value, 1);
        b
    }

    fn values(rt: &tokio::runtime::Runtime, log: &EmbeddedLog) -> Vec<String> {
        let fetched = rt.block_on(log.fetch("out", 0, 0, 1 << 20)).unwrap();
        fetched
            .records
            .iter()
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect()
    }

    /// A crash after the commit point (journal fsynced) but before the
    /// batches reached the partition: recovery applies them.
    #[test]
    fn journal_past_commit_point_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let config = out_config();
        {
            let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
            rt.block_on(log.create_topic("out", config)).unwrap();
            rt.block_on(log.append("out", 0, batch(b"before"))).unwrap();
            log.close().unwrap();
        }
        let entry = Entry {
            seq: 7,
            batches: vec![("out".into(), 0, 1, batch(b"txn-record"))],
            offsets: vec![("g".into(), TopicPartition::new("out", 0), 1)],
        };
        Journal::open(&dir.path().join("txn.journal"))
            .unwrap()
            .write(&entry)
            .unwrap();
        let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(values(&rt, &log), vec!["before", "txn-record"]);
        assert_eq!(
            rt.block_on(log.committed_offsets("g", "out"))
                .unwrap()
                .get(&0),
            Some(&1)
        );
        assert!(std::fs::read(dir.path().join("txn.journal"))
            .unwrap()
            .is_empty());
        log.close().unwrap();

        // The same journal found again (crash after apply, before clear)
        // must not duplicate the batch.
        Journal::open(&dir.path().join("txn.journal"))
            .unwrap()
            .write(&entry)
            .unwrap();
        let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(values(&rt, &log), vec!["before", "txn-record"]);
        log.close().unwrap();
    }

    /// A torn journal means the commit point was never reached: nothing of
    /// the transaction appears.
    #[test]
    fn torn_journal_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
            rt.block_on(log.create_topic("out", out_config())).unwrap();
            log.close().unwrap();
        }
        let path = dir.path().join("txn.journal");
        let entry = Entry {
            seq: 1,
            batches: vec![("out".into(), 0, 0, batch(b"torn"))],
            offsets: vec![],
        };
        Journal::open(&path).unwrap().write(&entry).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
        assert!(values(&rt, &log).is_empty());
        log.close().unwrap();
    }

    /// A committed journal naming a topic deleted since must not stop the
    /// log from opening; the rest of the transaction is still applied.
    #[test]
    fn journal_naming_a_deleted_topic_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
            rt.block_on(log.create_topic("out", out_config())).unwrap();
            log.close().unwrap();
        }
        let entry = Entry {
            seq: 3,
            batches: vec![
                ("gone".into(), 0, 0, batch(b"lost")),
                ("out".into(), 0, 0, batch(b"kept")),
            ],
            offsets: vec![],
        };
        Journal::open(&dir.path().join("txn.journal"))
            .unwrap()
            .write(&entry)
            .unwrap();
        let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(values(&rt, &log), vec!["kept"]);
        log.close().unwrap();
    }

    /// The journal fixture, `tests/fixtures/txn/txn.journal`. Regenerate it
    /// deliberately with `RIFFLE_BLESS=1 cargo test -p riffle-log --lib
    /// golden_journal`; a normal run only compares. A journal left by a
    /// crash must replay after an upgrade, so a change to these bytes needs
    /// a new magic and a reader for the old one.
    fn journal_fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/txn/txn.journal")
    }

    /// 2024-05-01T12:00:00.000Z.
    const T0: i64 = 1_714_564_800_000;

    /// A fixed entry: two batches (headers, no key, an empty value) on two
    /// topics and two group commits.
    fn golden_entry() -> Entry {
        let mut first = RecordBatch::new();
        first
            .push_with_headers(Some(b"k-1"), b"first", T0 + 10, &[("h", b"v")])
            .unwrap();
        first.push(None, b"", T0);
        let mut second = RecordBatch::new();
        second.push(Some(b"k-2"), b"second", T0 + 20);
        Entry {
            seq: 42,
            batches: vec![
                ("golden".into(), 0, 0, first),
                ("other".into(), 2, 3, second),
            ],
            offsets: vec![
                ("g-1".into(), TopicPartition::new("golden", 0), 2),
                ("g-2".into(), TopicPartition::new("other", 2), 4),
            ],
        }
    }

    #[test]
    fn golden_journal() {
        let dir = tempfile::tempdir().unwrap();
        let written_path = dir.path().join("txn.journal");
        Journal::open(&written_path)
            .unwrap()
            .write(&golden_entry())
            .unwrap();
        let written = std::fs::read(&written_path).unwrap();
        let fixture = journal_fixture();
        if std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
            std::fs::write(&fixture, &written).unwrap();
        }
        let bytes = std::fs::read(&fixture).unwrap();
        assert!(
            written == bytes,
            "{}: today's journal writer produces different bytes ({} vs {} in the fixture)",
            fixture.display(),
            written.len(),
            bytes.len()
        );

        // Field by field, through the reader recovery uses.
        let entry = parse_entry(&bytes).expect("the journal fixture parses");
        let expected = golden_entry();
        assert_eq!(entry.seq, expected.seq);
        assert_eq!(entry.batches.len(), expected.batches.len());
        for (got, want) in entry.batches.iter().zip(&expected.batches) {
            assert_eq!((&got.0, got.1, got.2), (&want.0, want.1, want.2));
            assert_eq!(got.3.len(), want.3.len());
            assert_eq!(got.3.min_timestamp(), want.3.min_timestamp());
            assert_eq!(got.3.max_timestamp(), want.3.max_timestamp());
            assert_eq!(got.3.records_bytes(), want.3.records_bytes());
        }
        assert_eq!(entry.offsets, expected.offsets);

        // And a log that finds the fixture as its journal replays it.
        let rt = rt();
        let root = dir.path().join("log");
        {
            let log = EmbeddedLog::open(&root, LogOptions::default()).unwrap();
            rt.block_on(log.create_topic("golden", out_config()))
                .unwrap();
            let other = TopicConfig {
                partitions: 3,
                ..out_config()
            };
            rt.block_on(log.create_topic("other", other)).unwrap();
            let mut before = RecordBatch::new();
            for i in 0..3 {
                before.push(None, b"before", i);
            }
            rt.block_on(log.append("other", 2, before)).unwrap();
            log.close().unwrap();
        }
        std::fs::write(root.join("txn.journal"), &bytes).unwrap();
        let log = EmbeddedLog::open(&root, LogOptions::default()).unwrap();
        let read = |topic: &str, partition| {
            let fetched = rt
                .block_on(log.fetch(topic, partition, 0, 1 << 20))
                .unwrap();
            fetched
                .records
                .iter()
                .map(|r| {
                    (
                        r.offset,
                        r.timestamp,
                        r.key.map(<[u8]>::to_vec),
                        r.value.to_vec(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read("golden", 0),
            vec![
                (0, T0 + 10, Some(b"k-1".to_vec()), b"first".to_vec()),
                (1, T0, None, Vec::new()),
            ]
        );
        assert_eq!(
            read("other", 2)[3..],
            [(3, T0 + 20, Some(b"k-2".to_vec()), b"second".to_vec())]
        );
        let committed =
            |group: &str, topic: &str| rt.block_on(log.committed_offsets(group, topic)).unwrap();
        assert_eq!(committed("g-1", "golden"), BTreeMap::from([(0, 2)]));
        assert_eq!(committed("g-2", "other"), BTreeMap::from([(2, 4)]));
        log.close().unwrap();
    }

    #[test]
    fn oversized_transactional_batches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
        rt.block_on(log.create_topic("out", out_config())).unwrap();
        let mut txn = rt
            .block_on(crate::EventBus::begin_transaction(&log, "big"))
            .unwrap();
        let huge = vec![b'x'; 65 << 20];
        let err = txn.append("out", 0, batch(&huge)).unwrap_err();
        assert!(matches!(err, BusError::BatchTooLarge { .. }), "{err}");
        log.close().unwrap();
    }
}
