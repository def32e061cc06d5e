//! Durable per-task checkpoints: operator state plus the input offset it
//! covers, stored per (pipeline, input partition) so a partition's state can
//! move on its own (restart, or a rebalance in scale-out).
//!
//! # On-disk format (version 2)
//!
//! A checkpoint is one file
//! `<root>/<pipeline>/<topic>-<partition>/<id as 20 digits>.ckpt`, all
//! integers little-endian:
//!
//! ```text
//! magic         4 bytes  "RFCK"
//! version       u32      2 (1 is still read: no repartition part)
//! id            u64      checkpoint id, +1 per checkpoint of the task
//! input_offset  u64      next input offset to read: the state covers exactly
//!                        the records before it
//! created_ms    i64      wall clock when it was taken
//! state_len     u64      then state_len bytes of operator state
//! -- version 2 only: the task's place in its repartition partition --
//! rp_offset     u64      next repartition offset to process
//! rp_round      u64      sequence number of the last round it followed
//! origins       u32      then `origins` × u64: per source partition, the
//!                        next source offset a forwarded record may carry
//!                        (smaller ones are repeats and are skipped)
//! crc32c        u32      CRC-32C (Castagnoli) of every preceding byte
//! ```
//!
//! # Invariants
//!
//! * A file is written under a temporary name, fsynced, renamed into place
//!   and the directory fsynced: a checkpoint either exists whole or not at
//!   all, and once [`CheckpointStore::save`] returns it survives a crash.
//! * [`CheckpointStore::load_latest`] returns the newest checkpoint whose
//!   checksum verifies; a damaged newest file is reported and the one before
//!   it is used, which is why the newest [`KEEP`] checkpoints are kept.
//! * Temporary files left by a crash are ignored and removed on the next
//!   save.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use riffle_core::codec::{FormatError, Reader};

use crate::error::{Result, StreamError};
use crate::operator::CheckpointId;

const MAGIC: &[u8; 4] = b"RFCK";
/// 2: the repartition part was added.
const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 8;
/// How many checkpoints per task are kept on disk.
pub const KEEP: usize = 2;

/// One task's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCheckpoint {
    pub id: CheckpointId,
    /// The next input offset to read after restoring.
    pub input_offset: u64,
    pub created_ms: i64,
    pub state: Vec<u8>,
    /// Where the task stands in its repartition partition (all zero for a
    /// task without one, and in version 1 files).
    pub repartition: RepartitionPosition,
}

/// A task's position in the repartition topic's partition it reads (see
/// [`crate::runtime`], "Repartitioning").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepartitionPosition {
    /// The next repartition offset to process.
    pub offset: u64,
    /// The sequence number of the last round the task followed.
    pub round: u64,
    /// Per source partition, the next source offset a forwarded record may
    /// carry; a smaller one is a repeat (a re-forward after a crash).
    pub origins: Vec<u64>,
}

/// Where task checkpoints live. The filesystem implementation serves the
/// embedded mode and a directory shared by several processes; an object
/// store implementation can follow behind the same trait.
pub trait CheckpointStore: Send + Sync {
    /// Durably stores `checkpoint` for the task reading `topic`/`partition`
    /// in `pipeline`, and prunes older ones.
    fn save(
        &self,
        pipeline: &str,
        topic: &str,
        partition: u32,
        checkpoint: &TaskCheckpoint,
    ) -> Result<u64>;

    /// The newest intact checkpoint of the task, `None` if it has none.
    fn load_latest(
        &self,
        pipeline: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<TaskCheckpoint>>;

    /// Removes every checkpoint of `pipeline` (e.g. a recalculation
    /// instance that finished).
    fn remove_pipeline(&self, pipeline: &str) -> Result<()>;
}

/// Checkpoints as files under a root directory (see the module docs).
#[derive(Debug, Clone)]
pub struct FsCheckpointStore {
    root: PathBuf,
}

impl FsCheckpointStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsCheckpointStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn task_dir(&self, pipeline: &str, topic: &str, partition: u32) -> PathBuf {
        self.root
            .join(pipeline)
            .join(format!("{topic}-{partition}"))
    }
}

fn io_error(path: &Path, error: std::io::Error) -> StreamError {
    StreamError::Checkpoint {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Serialises a checkpoint in the format of the module docs.
pub fn encode(checkpoint: &TaskCheckpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + checkpoint.state.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&checkpoint.id.to_le_bytes());
    out.extend_from_slice(&checkpoint.input_offset.to_le_bytes());
    out.extend_from_slice(&checkpoint.created_ms.to_le_bytes());
    out.extend_from_slice(&(checkpoint.state.len() as u64).to_le_bytes());
    out.extend_from_slice(&checkpoint.state);
    let rp = &checkpoint.repartition;
    out.extend_from_slice(&rp.offset.to_le_bytes());
    out.extend_from_slice(&rp.round.to_le_bytes());
    out.extend_from_slice(&(rp.origins.len() as u32).to_le_bytes());
    for next in &rp.origins {
        out.extend_from_slice(&next.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parses [`encode`]'s output, checking magic, version, length and checksum.
pub fn decode(bytes: &[u8]) -> std::result::Result<TaskCheckpoint, FormatError> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(format!("{} bytes is shorter than a header", bytes.len()).into());
    }
    let (body, crc) = bytes.split_last_chunk::<4>().expect("longer than a header");
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )
        .into());
    }
    let mut r = Reader::new(body);
    if r.array::<4>("magic")? != *MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u32("version")?;
    if version != 1 && version != FORMAT_VERSION {
        return Err(format!("unsupported version {version}").into());
    }
    let id = r.u64("id")?;
    let input_offset = r.u64("input_offset")?;
    let created_ms = r.i64("created_ms")?;
    let state_len = r.u64("state_len")?;
    let after_header = r.remaining();
    let state = r.bytes(state_len, "state").map_err(|_| {
        format!(
            "state length {state_len} does not fit the file ({after_header} bytes after the header)"
        )
    })?;
    let mut repartition = RepartitionPosition::default();
    if version >= 2 {
        let part_len = r.remaining();
        if part_len < 20 {
            return Err(format!("repartition part truncated ({part_len} bytes)").into());
        }
        repartition.offset = r.u64("rp_offset")?;
        repartition.round = r.u64("rp_round")?;
        let origins = r.u32("origins")? as usize;
        if part_len != 20 + origins * 8 {
            return Err(format!(
                "repartition part is {part_len} bytes, {origins} origins need {}",
                20 + origins * 8
            )
            .into());
        }
        repartition.origins = (0..origins)
            .map(|_| r.u64("origin"))
            .collect::<std::result::Result<_, _>>()?;
    } else if !r.is_empty() {
        return Err(format!(
            "state length {state_len} does not match the file ({after_header} bytes of state)"
        )
        .into());
    }
    Ok(TaskCheckpoint {
        id,
        input_offset,
        created_ms,
        state: state.to_vec(),
        repartition,
    })
}

fn file_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".ckpt")?.parse().ok()
}

/// The checkpoint files of a task directory, newest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir, error)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if let Some(id) = file_id(&path) {
            files.push((id, path));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(files)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl CheckpointStore for FsCheckpointStore {
    fn save(
        &self,
        pipeline: &str,
        topic: &str,
        partition: u32,
        checkpoint: &TaskCheckpoint,
    ) -> Result<u64> {
        let dir = self.task_dir(pipeline, topic, partition);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let bytes = encode(checkpoint);
        let path = dir.join(format!("{:020}.ckpt", checkpoint.id));
        let tmp = dir.join(format!("{:020}.ckpt.tmp", checkpoint.id));
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| io_error(&tmp, e))?;
            file.write_all(&bytes).map_err(|e| io_error(&tmp, e))?;
            file.sync_data().map_err(|e| io_error(&tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        fsync_dir(&dir)?;
        // Prune: keep the newest KEEP, drop leftovers of interrupted saves.
        for (_, old) in list(&dir)?.into_iter().skip(KEEP) {
            let _ = fs::remove_file(old);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".tmp") && entry.path() != tmp {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(bytes.len() as u64)
    }

    fn load_latest(
        &self,
        pipeline: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<TaskCheckpoint>> {
        let dir = self.task_dir(pipeline, topic, partition);
        for (id, path) in list(&dir)? {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io_error(&path, e))?;
            match decode(&bytes) {
                Ok(checkpoint) if checkpoint.id == id => return Ok(Some(checkpoint)),
                Ok(checkpoint) => tracing::warn!(
                    path = %path.display(),
                    file_id = id,
                    stored_id = checkpoint.id,
                    "checkpoint file name and content disagree; trying an older one"
                ),
                Err(reason) => tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "damaged checkpoint; trying an older one"
                ),
            }
        }
        Ok(None)
    }

    fn remove_pipeline(&self, pipeline: &str) -> Result<()> {
        let dir = self.root.join(pipeline);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&dir, error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(id: u64) -> TaskCheckpoint {
        TaskCheckpoint {
            id,
            input_offset: id * 10,
            created_ms: 1_700_000_000_000 + id as i64,
            state: vec![id as u8; id as usize],
            repartition: RepartitionPosition {
                offset: id * 3,
                round: id,
                origins: vec![id, 0, 7],
            },
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let cp = checkpoint(3);
        let bytes = encode(&cp);
        assert_eq!(decode(&bytes).unwrap(), cp);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(decode(&damaged).is_err(), "flip at {i} not detected");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A version 1 file (written before repartitioning existed) still
    /// reads, with a zero repartition position. The bytes are pinned.
    #[test]
    fn version_1_files_still_read() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"RFCK");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&1234u64.to_le_bytes());
        v1.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
        v1.extend_from_slice(&3u64.to_le_bytes());
        v1.extend_from_slice(b"abc");
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let cp = decode(&v1).unwrap();
        assert_eq!(
            cp,
            TaskCheckpoint {
                id: 5,
                input_offset: 1234,
                created_ms: 1_700_000_000_000,
                state: b"abc".to_vec(),
                repartition: RepartitionPosition::default(),
            }
        );
    }

    #[test]
    fn newest_intact_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsCheckpointStore::new(dir.path());
        assert_eq!(store.load_latest("p", "t", 0).unwrap(), None);
        for id in 1..=4 {
            store.save("p", "t", 0, &checkpoint(id)).unwrap();
        }
        assert_eq!(store.load_latest("p", "t", 0).unwrap(), Some(checkpoint(4)));
        let task_dir = dir.path().join("p").join("t-0");
        assert_eq!(list(&task_dir).unwrap().len(), KEEP);
        // Damage the newest: the one before it is used.
        let newest = task_dir.join(format!("{:020}.ckpt", 4));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        assert_eq!(store.load_latest("p", "t", 0).unwrap(), Some(checkpoint(3)));
        // Other partitions are separate.
        assert_eq!(store.load_latest("p", "t", 1).unwrap(), None);
        store.remove_pipeline("p").unwrap();
        assert_eq!(store.load_latest("p", "t", 0).unwrap(), None);
    }
}
