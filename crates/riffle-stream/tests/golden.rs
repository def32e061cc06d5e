//! Golden bytes of the stream engine's stored formats: task checkpoint files
//! (version 2, and version 1 which is still read) and the dedup snapshot.
//! Fixtures live in `tests/fixtures/checkpoint/` and `tests/fixtures/dedup/`.
//!
//! Each test builds a fixed input, encodes it with today's code and requires
//! the committed bytes, then decodes the committed bytes and checks every
//! field. Checkpoints survive upgrades, so a change that alters these bytes
//! needs a new format version and a reader for the old one, not new
//! fixtures.
//!
//! To regenerate the fixtures deliberately (a reviewed format change), run
//! with `RIFFLE_BLESS=1`:
//!
//! ```text
//! RIFFLE_BLESS=1 cargo test -p riffle-stream --test golden
//! ```
//!
//! A normal run never writes them.

use std::path::{Path, PathBuf};

use riffle_stream::checkpoint::{self, CheckpointStore, FsCheckpointStore};
use riffle_stream::dedup::{id_hash, DedupConfig, Deduplicator, Verdict, DEFAULT_SEED};
use riffle_stream::{RepartitionPosition, TaskCheckpoint};

/// 2024-05-01T12:00:00.000Z.
const T0: i64 = 1_714_564_800_000;

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

fn blessing() -> bool {
    std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1")
}

/// Requires `actual` to equal the fixture at `path` (with `RIFFLE_BLESS=1`,
/// writes it there first) and returns the fixture's bytes.
fn golden(path: &Path, actual: &[u8]) -> Vec<u8> {
    if blessing() {
        std::fs::create_dir_all(path.parent().expect("fixture has a directory")).unwrap();
        std::fs::write(path, actual).unwrap();
    }
    let expected = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it deliberately with RIFFLE_BLESS=1)",
            path.display()
        )
    });
    if expected != actual {
        let at = expected
            .iter()
            .zip(actual)
            .position(|(e, a)| e != a)
            .unwrap_or(expected.len().min(actual.len()));
        panic!(
            "{}: today's code writes different bytes (first difference at byte {at}; fixture \
             {} bytes, written {}). Stored state must keep restoring: a format change needs a \
             new version and a reader for the old one. Re-bless (RIFFLE_BLESS=1) only for a \
             reviewed, intended change.",
            path.display(),
            expected.len(),
            actual.len(),
        );
    }
    expected
}

// ---------------------------------------------------------------------------
// Task checkpoints
// ---------------------------------------------------------------------------

fn golden_checkpoint() -> TaskCheckpoint {
    TaskCheckpoint {
        id: 7,
        input_offset: 1234,
        // A fixed instant, not the wall clock.
        created_ms: T0 + 42,
        state: b"operator state \x00\x01\xfe\xff".to_vec(),
        repartition: RepartitionPosition {
            offset: 99,
            round: 12,
            origins: vec![5, 0, u64::MAX],
        },
    }
}

/// Where [`FsCheckpointStore`] keeps checkpoint `id` of pipeline `p`,
/// topic `t`, partition 0 under `root`.
fn store_path(root: &Path, id: u64) -> PathBuf {
    root.join("p").join("t-0").join(format!("{id:020}.ckpt"))
}

#[test]
fn checkpoint_v2_matches_the_fixture() {
    let expected = golden_checkpoint();
    let path = fixture("checkpoint/v2.ckpt");
    let bytes = golden(&path, &checkpoint::encode(&expected));

    let decoded = checkpoint::decode(&bytes).expect("the v2 fixture decodes");
    assert_eq!(decoded.id, 7);
    assert_eq!(decoded.input_offset, 1234);
    assert_eq!(decoded.created_ms, T0 + 42);
    assert_eq!(decoded.state, b"operator state \x00\x01\xfe\xff");
    assert_eq!(decoded.repartition.offset, 99);
    assert_eq!(decoded.repartition.round, 12);
    assert_eq!(decoded.repartition.origins, vec![5, 0, u64::MAX]);
    assert_eq!(decoded, expected);

    // The store writes exactly these bytes under its file name, and reads
    // the fixture back from there.
    let dir = tempfile::tempdir().unwrap();
    let store = FsCheckpointStore::new(dir.path());
    let saved = store.save("p", "t", 0, &expected).unwrap();
    assert_eq!(saved, bytes.len() as u64);
    assert_eq!(std::fs::read(store_path(dir.path(), 7)).unwrap(), bytes);
    let other = tempfile::tempdir().unwrap();
    let file = store_path(other.path(), 7);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(
        FsCheckpointStore::new(other.path())
            .load_latest("p", "t", 0)
            .unwrap(),
        Some(expected)
    );
}

/// Version 1, written before repartitioning existed: today's code no longer
/// writes it, so the fixture is assembled from the documented layout (the
/// same bytes `checkpoint::tests::version_1_files_still_read` pins). It
/// must keep reading, with a zero repartition position.
#[test]
fn checkpoint_v1_fixture_still_reads() {
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"RFCK");
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&5u64.to_le_bytes()); // id
    v1.extend_from_slice(&1234u64.to_le_bytes()); // input_offset
    v1.extend_from_slice(&1_700_000_000_000i64.to_le_bytes()); // created_ms
    v1.extend_from_slice(&3u64.to_le_bytes()); // state_len
    v1.extend_from_slice(b"abc");
    let crc = crc32c::crc32c(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    let bytes = golden(&fixture("checkpoint/v1.ckpt"), &v1);

    let expected = TaskCheckpoint {
        id: 5,
        input_offset: 1234,
        created_ms: 1_700_000_000_000,
        state: b"abc".to_vec(),
        repartition: RepartitionPosition::default(),
    };
    let decoded = checkpoint::decode(&bytes).expect("the v1 fixture decodes");
    assert_eq!(decoded.id, 5);
    assert_eq!(decoded.input_offset, 1234);
    assert_eq!(decoded.created_ms, 1_700_000_000_000);
    assert_eq!(decoded.state, b"abc");
    assert_eq!(decoded.repartition, RepartitionPosition::default());
    assert_eq!(decoded, expected);

    // A task restores from a v1 file through the store.
    let dir = tempfile::tempdir().unwrap();
    let file = store_path(dir.path(), 5);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let store = FsCheckpointStore::new(dir.path());
    assert_eq!(store.load_latest("p", "t", 0).unwrap(), Some(expected));
}

// ---------------------------------------------------------------------------
// Dedup snapshot
// ---------------------------------------------------------------------------

fn dedup_config() -> DedupConfig {
    DedupConfig {
        horizon_ms: 600_000,
        bucket_ms: 60_000,
        seed: DEFAULT_SEED,
    }
}

/// Ids held by the golden deduplicator, with their event times.
const HELD: &[(&str, i64)] = &[
    ("evt-1", T0 + 1_000),
    ("evt-2", T0 + 59_999),
    ("evt-3", T0 + 60_000),
    ("évènement-4", T0 + 185_000),
    ("evt-5", T0 - 60_000),
];
/// Dropped by the eviction: their bucket ends before the expiry bound.
const EVICTED: &[(&str, i64)] = &[("old-1", T0 - 600_001), ("old-2", T0 - 660_000)];

/// A deduplicator that held ids in several buckets (two in one), saw a
/// duplicate and evicted an old bucket, so the snapshot has a real expiry
/// bound.
fn golden_dedup() -> Deduplicator {
    let mut dedup = Deduplicator::new(dedup_config(), 300_000).unwrap();
    for (id, time) in EVICTED.iter().chain(HELD) {
        assert_eq!(dedup.check_and_insert(id.as_bytes(), *time), Verdict::New);
    }
    assert_eq!(
        dedup.check_and_insert(b"evt-1", T0 + 2_000),
        Verdict::Duplicate
    );
    // Expiry bound T0 - 120_000: the buckets of both old ids end before it.
    assert_eq!(dedup.evict(T0 + 480_000), EVICTED.len());
    dedup
}

#[test]
fn dedup_snapshot_matches_the_fixture() {
    let dedup = golden_dedup();
    let bytes = golden(&fixture("dedup/v1.snapshot"), &dedup.snapshot());

    let restored =
        Deduplicator::restore(dedup_config(), 300_000, &bytes).expect("the dedup fixture restores");
    // Seed and bucket width: restore refuses a snapshot whose header
    // disagrees with the configuration.
    assert_eq!(restored.config(), dedup_config());
    assert_eq!(restored.expiry(), T0 - 120_000);
    assert_eq!(restored.len(), HELD.len());
    // The lowest bucket held is evt-5's, [T0 - 60 s, T0).
    assert_eq!(restored.oldest_bucket(), Some((T0 - 60_000, T0)));
    for (id, _) in HELD {
        assert!(restored.contains(id.as_bytes()), "{id} is held");
    }
    for (id, _) in EVICTED {
        assert!(!restored.contains(id.as_bytes()), "{id} was evicted");
    }
    assert_eq!(restored, dedup);
    // Equal states give identical bytes: the restored state writes the
    // fixture again.
    assert_eq!(restored.snapshot(), bytes);

    // It keeps working as the deduplicator that was snapshotted.
    let mut restored = restored;
    assert_eq!(
        restored.check_and_insert(b"evt-3", T0 + 3_000),
        Verdict::Duplicate
    );
    assert_eq!(
        restored.check_and_insert(b"old-1", T0 - 120_001),
        Verdict::Expired
    );
    assert_eq!(restored.check_and_insert(b"evt-6", T0), Verdict::New);

    // The snapshot stores hashes, and the hash is part of the format.
    let stored: Vec<u64> = HELD
        .iter()
        .map(|(id, _)| id_hash(DEFAULT_SEED, id.as_bytes()))
        .collect();
    for hash in stored {
        let le = hash.to_le_bytes();
        assert!(
            bytes.windows(8).any(|w| w == le),
            "hash {hash:#x} is in the snapshot"
        );
    }
}
