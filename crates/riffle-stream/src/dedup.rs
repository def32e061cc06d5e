//! Exact deduplication by `event_id` over an event-time horizon.
//!
//! # Semantics
//!
//! The deduplicator remembers the 64-bit hash of every `event_id` it has
//! accepted, filed in a time bucket of `bucket_ms` by the event's event time.
//! [`Deduplicator::evict`] moves the *expiry bound* to
//! `watermark − horizon_ms` (never backwards) and drops every bucket that
//! lies wholly before it. Then [`Deduplicator::check_and_insert`] answers:
//!
//! * [`Verdict::Expired`] — `event_time < expiry bound`: its bucket may be
//!   gone, so it cannot be checked. Because the horizon is at least the
//!   allowed lateness, such an event is also too late for its window; the
//!   caller routes it to `<pipeline>.late`. Nothing is stored.
//! * [`Verdict::Duplicate`] — an event with the same id hash is still held,
//!   whatever its event time. Nothing is stored.
//! * [`Verdict::New`] — otherwise; the hash is stored in the bucket of
//!   `event_time`.
//!
//! Ids are held until their bucket ends at or before the expiry bound, i.e.
//! up to `bucket_ms` longer than the horizon. Memory is bounded by the number
//! of distinct ids whose event time is not expired (each costs one hash-map
//! entry of 16 bytes plus 8 bytes in its bucket); the map's capacity stays at
//! its peak.
//!
//! # Hash
//!
//! FNV-1a 64 over the 8 little-endian bytes of the seed followed by the id's
//! bytes, then the MurmurHash3 `fmix64` finaliser (a bijection, so it adds no
//! collisions; it spreads FNV's weak high bits for the hash map, which uses
//! the value directly). It is stable: hashes are stored in checkpoints, so it
//! must never change for a given format version. Two distinct ids collide with
//! probability about 2⁻⁶⁴; with `n` ids held, a new id is wrongly reported as
//! a duplicate with probability about `n / 2⁶⁴` (5·10⁻¹⁴ for a million ids in
//! the horizon, i.e. one wrong drop per ~10¹⁹ events at that scale). FNV is
//! not built to resist chosen inputs; event ids come from authenticated
//! producers.
//!
//! # Snapshot format (version 1)
//!
//! All integers little-endian:
//!
//! ```text
//! magic       4 bytes  "RFDD"
//! version     u32      1
//! seed        u64
//! bucket_ms   i64
//! expiry      i64      current expiry bound (i64::MIN before any evict)
//! buckets     u32      number of buckets, then per bucket in ascending order:
//!   index     i64      event_time.div_euclid(bucket_ms)
//!   count     u32      number of hashes, then `count` × u64 hashes, ascending
//! crc32c      u32      CRC-32C (Castagnoli) of every preceding byte
//! ```
//!
//! Equal states give identical bytes. Restoring checks the magic, version,
//! checksum and every length, and refuses a snapshot whose seed or bucket
//! width differs from the configuration (its hashes or buckets would not
//! match); the horizon may change between runs.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use riffle_core::codec::{ReadError, Reader};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StreamError};

pub const DEFAULT_HORIZON_MS: i64 = 10 * 60_000;
pub const DEFAULT_BUCKET_MS: i64 = 60_000;
/// The default seed; any fixed value works, but changing it invalidates
/// existing checkpoints.
pub const DEFAULT_SEED: u64 = 0x5249_4646_4c45_6464; // "RIFFLEdd"

const MAGIC: &[u8; 4] = b"RFDD";
const FORMAT_VERSION: u32 = 1;
const SNAPSHOT_WHAT: &str = "dedup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub horizon_ms: i64,
    pub bucket_ms: i64,
    pub seed: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            horizon_ms: DEFAULT_HORIZON_MS,
            bucket_ms: DEFAULT_BUCKET_MS,
            seed: DEFAULT_SEED,
        }
    }
}

impl DedupConfig {
    /// Checks the fields and that the horizon covers `allowed_lateness_ms`:
    /// a shorter horizon would let a duplicate that is still on time for an
    /// emitted window slip through as new.
    pub fn validate(&self, allowed_lateness_ms: i64) -> Result<()> {
        if self.bucket_ms <= 0 {
            return Err(StreamError::invalid(
                "dedup.bucket_ms",
                self.bucket_ms,
                "must be positive",
            ));
        }
        if self.horizon_ms < 0 {
            return Err(StreamError::invalid(
                "dedup.horizon_ms",
                self.horizon_ms,
                "must not be negative",
            ));
        }
        if self.horizon_ms < allowed_lateness_ms {
            return Err(StreamError::invalid(
                "dedup.horizon_ms",
                self.horizon_ms,
                format!("must be at least allowed_lateness_ms ({allowed_lateness_ms})"),
            ));
        }
        Ok(())
    }
}

/// The answer of [`Deduplicator::check_and_insert`]; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    New,
    Duplicate,
    Expired,
}

/// The stable, seeded 64-bit id hash described in the module docs.
pub fn id_hash(seed: u64, event_id: &[u8]) -> u64 {
    fmix64(fnv1a64(
        fnv1a64(FNV_OFFSET_BASIS, &seed.to_le_bytes()),
        event_id,
    ))
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Keys are already well-mixed hashes; hashing them again would only cost.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else rather than panic.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type IdMap = HashMap<u64, i64, BuildHasherDefault<PassThroughHasher>>;

#[derive(Debug, Clone)]
pub struct Deduplicator {
    config: DedupConfig,
    /// Id hash → index of the bucket holding it.
    ids: IdMap,
    /// Bucket index → the hashes filed in it (each hash in exactly one).
    buckets: BTreeMap<i64, Vec<u64>>,
    expiry: i64,
}

impl PartialEq for Deduplicator {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.expiry == other.expiry
            && self.ids == other.ids
            && self.buckets.len() == other.buckets.len()
            && self.buckets.keys().eq(other.buckets.keys())
    }
}

impl Deduplicator {
    /// `allowed_lateness_ms` is only used to validate the horizon.
    pub fn new(config: DedupConfig, allowed_lateness_ms: i64) -> Result<Self> {
        config.validate(allowed_lateness_ms)?;
        Ok(Self {
            config,
            ids: IdMap::default(),
            buckets: BTreeMap::new(),
            expiry: i64::MIN,
        })
    }

    pub fn config(&self) -> DedupConfig {
        self.config
    }

    /// Events with an event time below this are [`Verdict::Expired`].
    pub fn expiry(&self) -> i64 {
        self.expiry
    }

    fn bucket_of(&self, event_time: i64) -> i64 {
        event_time.div_euclid(self.config.bucket_ms)
    }

    fn bucket_end(&self, bucket: i64) -> i64 {
        bucket
            .saturating_add(1)
            .saturating_mul(self.config.bucket_ms)
    }

    pub fn check_and_insert(&mut self, event_id: &[u8], event_time: i64) -> Verdict {
        if event_time < self.expiry {
            return Verdict::Expired;
        }
        let hash = id_hash(self.config.seed, event_id);
        let bucket = self.bucket_of(event_time);
        match self.ids.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => Verdict::Duplicate,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(bucket);
                self.buckets.entry(bucket).or_default().push(hash);
                Verdict::New
            }
        }
    }

    /// Whether `event_id` is currently held.
    pub fn contains(&self, event_id: &[u8]) -> bool {
        self.ids.contains_key(&id_hash(self.config.seed, event_id))
    }

    /// Moves the expiry bound to `watermark − horizon` (if that is later) and
    /// drops every bucket that ends at or before it. Returns how many ids were
    /// dropped.
    pub fn evict(&mut self, watermark: i64) -> usize {
        self.expiry = self
            .expiry
            .max(watermark.saturating_sub(self.config.horizon_ms));
        let mut dropped = 0;
        // Buckets below this index end at or before the expiry bound.
        let first_kept = self.bucket_of(self.expiry);
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= first_kept {
                break;
            }
            let hashes = entry.remove();
            dropped += hashes.len();
            for hash in hashes {
                let removed = self.ids.remove(&hash);
                debug_assert!(removed.is_some(), "bucket held a hash the index did not");
            }
        }
        debug_assert_eq!(
            self.ids.len(),
            self.buckets.values().map(Vec::len).sum::<usize>()
        );
        dropped
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The oldest event-time bucket still held, as `[start, end)` in ms.
    pub fn oldest_bucket(&self) -> Option<(i64, i64)> {
        let (&index, _) = self.buckets.first_key_value()?;
        Some((
            index.saturating_mul(self.config.bucket_ms),
            self.bucket_end(index),
        ))
    }

    /// Serialises the state in the format of the module docs.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.buckets.len() * 12 + self.ids.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.config.seed.to_le_bytes());
        out.extend_from_slice(&self.config.bucket_ms.to_le_bytes());
        out.extend_from_slice(&self.expiry.to_le_bytes());
        out.extend_from_slice(&(self.buckets.len() as u32).to_le_bytes());
        let mut sorted = Vec::new();
        for (&index, hashes) in &self.buckets {
            sorted.clear();
            sorted.extend_from_slice(hashes);
            sorted.sort_unstable();
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
            for hash in &sorted {
                out.extend_from_slice(&hash.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Rebuilds a deduplicator from [`Self::snapshot`] bytes under `config`.
    pub fn restore(config: DedupConfig, allowed_lateness_ms: i64, bytes: &[u8]) -> Result<Self> {
        let mut dedup = Self::new(config, allowed_lateness_ms)?;
        let corrupt = |reason: String| StreamError::CorruptSnapshot {
            what: SNAPSHOT_WHAT,
            reason,
        };
        let Some((body, crc_bytes)) = bytes.split_last_chunk::<4>() else {
            return Err(corrupt(format!("{} bytes is too short", bytes.len())));
        };
        let stored_crc = u32::from_le_bytes(*crc_bytes);
        let actual_crc = crc32c::crc32c(body);
        if stored_crc != actual_crc {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
            )));
        }
        let mut reader = Reader::new(body);
        let truncated = |error: ReadError| corrupt(error.to_string());
        if reader.array::<4>("magic").map_err(truncated)? != *MAGIC {
            return Err(corrupt("bad magic".to_owned()));
        }
        let version = reader.u32("version").map_err(truncated)?;
        if version != FORMAT_VERSION {
            return Err(corrupt(format!("unsupported format version {version}")));
        }
        let seed = reader.u64("seed").map_err(truncated)?;
        let bucket_ms = reader.i64("bucket_ms").map_err(truncated)?;
        let incompatible = |reason: String| StreamError::IncompatibleSnapshot {
            what: SNAPSHOT_WHAT,
            reason,
        };
        if seed != config.seed {
            return Err(incompatible(format!(
                "written with seed {seed:#x}, configured dedup.seed is {:#x}",
                config.seed
            )));
        }
        if bucket_ms != config.bucket_ms {
            return Err(incompatible(format!(
                "written with bucket_ms {bucket_ms}, configured dedup.bucket_ms is {}",
                config.bucket_ms
            )));
        }
        dedup.expiry = reader.i64("expiry").map_err(truncated)?;
        let bucket_count = reader.u32("buckets").map_err(truncated)?;
        let mut previous: Option<i64> = None;
        for _ in 0..bucket_count {
            let index = reader.i64("bucket index").map_err(truncated)?;
            if previous.is_some_and(|p| p >= index) {
                return Err(corrupt(format!("bucket {index} out of order")));
            }
            previous = Some(index);
            let count = reader.u32("bucket count").map_err(truncated)? as usize;
            if reader.remaining() / 8 < count {
                return Err(corrupt(format!(
                    "bucket {index} claims {count} ids, only {} bytes left",
                    reader.remaining()
                )));
            }
            let mut hashes = Vec::with_capacity(count);
            for _ in 0..count {
                let hash = reader.u64("id hash").map_err(truncated)?;
                if dedup.ids.insert(hash, index).is_some() {
                    return Err(corrupt(format!("id hash {hash:#x} held twice")));
                }
                hashes.push(hash);
            }
            dedup.buckets.insert(index, hashes);
        }
        if !reader.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", reader.remaining())));
        }
        Ok(dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_core::HasCode;

    fn dedup() -> Deduplicator {
        Deduplicator::new(
            DedupConfig {
                horizon_ms: 100,
                bucket_ms: 10,
                seed: 7,
            },
            50,
        )
        .unwrap()
    }

    #[test]
    fn hash_is_stable() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fmix64(0), 0);
        // Pinned: checkpoints store these values, so they must never change.
        assert_eq!(id_hash(0, b"a"), 0x6df9_901e_e878_b6be);
        assert_eq!(id_hash(DEFAULT_SEED, b"evt-1"), 0x4a86_c5d6_08e6_648f);
        assert_ne!(id_hash(1, b"evt-1"), id_hash(2, b"evt-1"));
    }

    #[test]
    fn verdicts_and_eviction() {
        let mut d = dedup();
        assert_eq!(d.check_and_insert(b"a", 5), Verdict::New);
        assert_eq!(d.check_and_insert(b"a", 5), Verdict::Duplicate);
        // Same id, other event time: still a duplicate.
        assert_eq!(d.check_and_insert(b"a", 55), Verdict::Duplicate);
        assert_eq!(d.check_and_insert(b"b", 15), Verdict::New);
        // Expiry 110 - 100 = 10: bucket [0,10) goes, [10,20) stays.
        assert_eq!(d.evict(110), 1);
        assert_eq!(d.expiry(), 10);
        assert_eq!(d.check_and_insert(b"a", 5), Verdict::Expired);
        assert_eq!(d.check_and_insert(b"a", 12), Verdict::New);
        assert_eq!(d.check_and_insert(b"b", 19), Verdict::Duplicate);
        // The expiry never moves back.
        d.evict(0);
        assert_eq!(d.expiry(), 10);
        assert_eq!(d.len(), 2);
        assert_eq!(d.oldest_bucket(), Some((10, 20)));
    }

    #[test]
    fn equal_states_give_identical_snapshots() {
        let mut forward = dedup();
        let mut backward = dedup();
        let ids: Vec<String> = (0..50).map(|i| format!("id-{i}")).collect();
        for id in &ids {
            forward.check_and_insert(id.as_bytes(), 3);
        }
        for id in ids.iter().rev() {
            backward.check_and_insert(id.as_bytes(), 3);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward.snapshot(), backward.snapshot());
    }

    #[test]
    fn negative_times_bucket_by_floor() {
        let mut d = dedup();
        assert_eq!(d.check_and_insert(b"n", -1), Verdict::New);
        assert_eq!(d.oldest_bucket(), Some((-10, 0)));
        assert_eq!(d.evict(100), 1);
        assert!(d.is_empty());
    }

    #[test]
    fn snapshot_rejects_damage_and_mismatch() {
        let mut d = dedup();
        d.check_and_insert(b"a", 5);
        d.check_and_insert(b"b", 25);
        let bytes = d.snapshot();
        let config = d.config();
        let restored = Deduplicator::restore(config, 50, &bytes).unwrap();
        assert_eq!(restored, d);
        assert_eq!(restored.snapshot(), bytes);

        for at in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let err = Deduplicator::restore(config, 50, &damaged).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("corrupt dedup snapshot: checksum mismatch"),
                "{err}"
            );
        }
        let err = Deduplicator::restore(config, 50, &bytes[..bytes.len() - 9]).unwrap_err();
        assert_eq!(err.code(), riffle_core::ErrorCode::DataLoss);
        let err = Deduplicator::restore(DedupConfig { seed: 8, ..config }, 50, &bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible dedup snapshot: written with seed 0x7, configured dedup.seed is 0x8"
        );
    }

    #[test]
    fn horizon_must_cover_allowed_lateness() {
        let err = Deduplicator::new(
            DedupConfig {
                horizon_ms: 60_000,
                ..DedupConfig::default()
            },
            300_000,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dedup.horizon_ms: 60000 must be at least allowed_lateness_ms (300000)"
        );
        assert!(Deduplicator::new(DedupConfig::default(), 300_000).is_ok());
    }
}
