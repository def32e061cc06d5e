//! The log-file tailer behind `riffle tail`: follows files matched by glob
//! patterns, turns each complete line into a JSON event and hands batches of
//! them to a [`TailSink`] (in the binary, `POST /v1/events`), resuming after a
//! restart from a checkpoint without losing or repeating lines.
//!
//! # Lines
//!
//! A line ends with `\n` (a trailing `\r` is ignored). A trailing partial line
//! is left for a later poll, except at the very end of a rotated-away file
//! that has stopped growing, where it is read as the file's last line. Blank
//! lines are skipped. With [`LineFormat::Auto`] a line starting with `[` is a
//! seed ad-click line ([`crate::seed`]) and one starting with `{` is a JSON
//! event. Lines that fail to parse locally, lines longer than
//! [`TailConfig::max_line_bytes`] and events the sink rejects go to the
//! dead-letter topic as a [`DeadLetter`] naming the file, the 1-based line
//! number, the byte offset and the reason; the lines around them carry on.
//!
//! # Files
//!
//! A file is identified by `(dev, inode)` — never by its path — plus a
//! fingerprint of its head (the first line, or the first 256 bytes if that
//! line is longer) so that a recycled inode or a file rewritten in place is
//! recognised as new content:
//!
//! * **new file**: read from byte 0;
//! * **rotation** (the path now names another inode, or the file was deleted):
//!   the old file is read to its end through the handle that is still open, so
//!   lines written to it after the rename are not lost; it is forgotten once it
//!   has been unmatched for two polls in a row without growing in between;
//!   the new file at the path is read from byte 0;
//! * **truncation** (`copytruncate`: the file is shorter than our offset, or
//!   its head changed): reading restarts at byte 0, the file's `generation` is
//!   bumped and a warning is logged;
//! * a renamed file that still matches a pattern keeps its offset.
//!
//! Order is kept within a file. Across files, rotated-away files are read
//! before the others, then by path.
//!
//! # Checkpoint format
//!
//! `checkpoint_path` holds one JSON document:
//!
//! ```json
//! {"version": 1, "files": [{"path": "/var/log/ads.log", "dev": 2049, "ino": 131075,
//!   "fingerprint": "8d3c0f2a9e1b4c77", "generation": 0, "offset": 4096, "line": 52}]}
//! ```
//!
//! `offset` is the byte just after the last line whose fate is settled
//! (acknowledged by the sink, or dead-lettered and acknowledged), `line` the
//! number of lines before it, so the next line read is line `line + 1`. A
//! file with `offset > 0` always has a `fingerprint` (16 lowercase hex digits);
//! `path` is informational only. The file is replaced atomically: written to
//! `<checkpoint_path>.tmp`, fsynced, renamed over the old one and the directory
//! fsynced, so a crash leaves either the old or the new checkpoint, never a
//! torn one. Unknown keys or versions are rejected rather than guessed at.
//!
//! # Guarantees
//!
//! The checkpoint only moves after the sink has acknowledged a batch (`Ok`
//! from [`TailSink::send_events`] means the accepted events are durable, and
//! the batch's dead letters were sent too). A restart therefore never loses a
//! line. The one window that can repeat lines is a crash (or cancelled poll)
//! after the acknowledgement but before the checkpoint rename; for that,
//! every event gets a deterministic `event_id`,
//!
//! ```text
//! tail:<dev hex>.<inode hex>.<fingerprint hex>.<generation>.<byte offset of the line>
//! ```
//!
//! unless it is a JSON line that carries its own `event_id`, which is kept.
//! Re-reading a line yields the same id, so downstream deduplication removes
//! the repeats. A checkpointed file that has been rotated to a name no pattern
//! matches while the tailer was down cannot be found again: match rotated
//! names too (`app.log*`) if that matters.
//!
//! Retryable sink errors ([`SinkError::is_retryable`]) are retried with
//! exponential backoff ([`RetryPolicy`]); when the attempts run out,
//! [`Tailer::poll_once`] fails with nothing checkpointed and the next poll
//! starts again from the last checkpoint.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::seed;

pub const DEFAULT_BATCH_LINES: usize = 1000;
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
/// Half of the server's default `ingest.max_body_bytes` (8 MiB).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "tail.dead_letter";

const CHECKPOINT_VERSION: u32 = 1;
/// The head of a file that identifies its content: the first line, capped.
const FINGERPRINT_BYTES: usize = 256;
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// How much of an over-long line is kept in its dead letter.
const OVERSIZED_RAW_PREFIX_BYTES: usize = 4096;

/// How lines are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineFormat {
    /// Seed ad-click lines (`[AdClickEvent] ...`), see [`crate::seed`].
    Seed,
    /// One JSON event per line.
    Ndjson,
    /// Per line: `[` starts a seed line, `{` a JSON event.
    #[default]
    Auto,
}

impl FromStr for LineFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(LineFormat::Seed),
            "ndjson" | "json" => Ok(LineFormat::Ndjson),
            "auto" => Ok(LineFormat::Auto),
            other => Err(format!(
                "unknown line format {other:?} (expected seed, ndjson or auto)"
            )),
        }
    }
}

impl fmt::Display for LineFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineFormat::Seed => "seed",
            LineFormat::Ndjson => "ndjson",
            LineFormat::Auto => "auto",
        })
    }
}

/// How failed sink calls are retried within one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls per batch, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailConfig {
    /// Glob patterns of the files to follow.
    pub patterns: Vec<String>,
    pub format: LineFormat,
    pub checkpoint_path: PathBuf,
    /// Most lines (events and dead letters) per batch.
    pub batch_lines: usize,
    /// Longer lines are dead-lettered without being parsed.
    pub max_line_bytes: usize,
    /// A batch is also cut once its events reach this many bytes of JSON.
    pub max_batch_bytes: usize,
    pub dead_letter_topic: String,
    pub retry: RetryPolicy,
}

impl TailConfig {
    /// A config with every other setting at its default.
    pub fn new(patterns: Vec<String>, checkpoint_path: impl Into<PathBuf>) -> Self {
        Self {
            patterns,
            format: LineFormat::Auto,
            checkpoint_path: checkpoint_path.into(),
            batch_lines: DEFAULT_BATCH_LINES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            dead_letter_topic: DEFAULT_DEAD_LETTER_TOPIC.to_owned(),
            retry: RetryPolicy::default(),
        }
    }

    fn validate(&self) -> Result<(), TailError> {
        let invalid = |message: String| Err(TailError::Config(message));
        if self.patterns.is_empty() {
            return invalid("patterns: at least one glob pattern is required".to_owned());
        }
        for pattern in &self.patterns {
            if let Err(error) = glob::Pattern::new(pattern) {
                return invalid(format!("patterns: {pattern:?}: {error}"));
            }
        }
        if self.checkpoint_path.as_os_str().is_empty() {
            return invalid("checkpoint_path: empty".to_owned());
        }
        if self.batch_lines == 0 {
            return invalid("batch_lines: must be at least 1".to_owned());
        }
        if self.max_line_bytes == 0 {
            return invalid("max_line_bytes: must be at least 1".to_owned());
        }
        if self.max_batch_bytes == 0 {
            return invalid("max_batch_bytes: must be at least 1".to_owned());
        }
        if self.dead_letter_topic.is_empty() {
            return invalid("dead_letter_topic: empty".to_owned());
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// A line that did not become an accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The path the file was last seen at.
    pub file: String,
    /// 1-based line number within the file.
    pub line: u64,
    /// Offset of the line's first byte.
    pub byte_offset: u64,
    pub reason: String,
    /// The line as read (invalid UTF-8 replaced); for over-long lines only its
    /// first 4 KiB.
    pub raw: String,
}

/// Why a sink call failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The server could not be reached or failed (connection error, timeout,
    /// 5xx); retried.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The server is shedding load (429); retried after `retry_after` when it
    /// said how long to wait, else after the usual backoff.
    #[error("sink overloaded{}", retry_after.map(|d| format!(", retry after {} ms", d.as_millis())).unwrap_or_default())]
    Backpressure { retry_after: Option<Duration> },
    /// The request itself was refused (401, 413, malformed); sending it again
    /// cannot help.
    #[error("sink refused the request: {0}")]
    Refused(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Unavailable(_) | SinkError::Backpressure { .. } => true,
            SinkError::Refused(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Backpressure { retry_after } => *retry_after,
            SinkError::Unavailable(_) | SinkError::Refused(_) => None,
        }
    }
}

/// Where the tailer delivers events and dead letters.
#[async_trait]
pub trait TailSink: Send + Sync {
    /// Sends one JSON event per element. Returns one verdict per event, in
    /// order: `None` = accepted, `Some(reason)` = rejected by the server.
    /// Returns `Ok` only once the accepted events are durable.
    async fn send_events(&self, events: Vec<Vec<u8>>) -> Result<Vec<Option<String>>, SinkError>;

    /// Publishes dead letters to `topic`; `Ok` once they are durable.
    async fn send_dead_letters(
        &self,
        topic: &str,
        letters: Vec<DeadLetter>,
    ) -> Result<(), SinkError>;
}

/// Waits between retries and polls; injectable so tests never sleep.
#[async_trait]
pub trait Sleeper: Send + Sync {
    async fn sleep(&self, duration: Duration);
}

/// [`Sleeper`] on the tokio timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid tail config: {0}")]
    Config(String),
    #[error("checkpoint {}: {source}", path.display())]
    CheckpointIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {}: {detail}", path.display())]
    CheckpointInvalid { path: PathBuf, detail: String },
    #[error("checkpoint {} is in use by another tailer", path.display())]
    CheckpointLocked { path: PathBuf },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("background i/o task failed: {0}")]
    Task(String),
}

/// A file's identity on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// What one [`Tailer::poll_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Files tracked after the poll.
    pub files: usize,
    pub new_files: u64,
    /// Files that stopped matching their pattern (rotated or deleted).
    pub rotations: u64,
    pub truncations: u64,
    /// Complete lines read, blank ones included.
    pub lines: u64,
    pub blank_lines: u64,
    pub events_accepted: u64,
    pub events_rejected: u64,
    /// Every dead letter sent: local parse failures, over-long lines and
    /// events the sink rejected.
    pub dead_letters: u64,
    /// Batches acknowledged and checkpointed.
    pub batches: u64,
    pub retries: u64,
    /// Files skipped this poll because reading them failed.
    pub read_errors: u64,
}

/// Where a tracked file stands, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub path: PathBuf,
    pub id: FileId,
    /// Bytes settled (acknowledged or dead-lettered).
    pub offset: u64,
    /// Lines settled.
    pub line: u64,
    /// No pattern matches the file any more; it is being read to its end.
    pub rotated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    offset: u64,
    /// Lines before `offset`.
    line: u64,
}

impl Position {
    const START: Position = Position { offset: 0, line: 0 };
}

#[derive(Debug)]
struct TrackedFile {
    id: FileId,
    path: PathBuf,
    /// `None` only between loading a checkpoint and the first scan.
    handle: Option<Arc<File>>,
    fingerprint: Option<u64>,
    generation: u32,
    committed: Position,
    matched: bool,
    /// Consecutive polls in which no pattern matched the file.
    unmatched_polls: u32,
    /// File size at the end of the previous poll's read.
    last_seen_size: Option<u64>,
}

/// Follows files and forwards their lines; see the module docs.
pub struct Tailer {
    config: TailConfig,
    sink: Arc<dyn TailSink>,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    files: Vec<TrackedFile>,
    /// Holds an exclusive `flock` on `<checkpoint_path>.lock` while the
    /// tailer lives, so two tailers cannot interleave one checkpoint.
    _lock: File,
}

impl fmt::Debug for Tailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tailer")
            .field("config", &self.config)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tailer {
    /// Validates `config`, locks the checkpoint and loads it, if there is
    /// one.
    ///
    /// # Errors
    ///
    /// An invalid config, a checkpoint that another tailer holds, or one that
    /// cannot be read or is corrupt (it is never silently discarded, which
    /// would re-send every line).
    pub fn new(config: TailConfig, sink: Arc<dyn TailSink>) -> Result<Self, TailError> {
        config.validate()?;
        let lock = lock_checkpoint(&config.checkpoint_path)?;
        let files = load_checkpoint(&config.checkpoint_path)?;
        if !files.is_empty() {
            info!(
                checkpoint = %config.checkpoint_path.display(),
                files = files.len(),
                "resuming from checkpoint"
            );
        }
        Ok(Self {
            config,
            sink,
            clock: Arc::new(SystemClock),
            sleeper: Arc::new(TokioSleeper),
            files,
            _lock: lock,
        })
    }

    /// The clock behind the future-skew check of parsed events.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// What waits between retries and, in [`Tailer::run`], between polls.
    #[must_use]
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    pub fn config(&self) -> &TailConfig {
        &self.config
    }

    /// The tracked files, rotated-away ones included.
    pub fn files(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|file| FileStatus {
                path: file.path.clone(),
                id: file.id,
                offset: file.committed.offset,
                line: file.committed.line,
                rotated: !file.matched,
            })
            .collect()
    }

    /// Polls until `shutdown` completes, waiting `poll_interval` between
    /// polls. A failed poll is logged and the next one resumes from the last
    /// checkpoint. A poll cut short by shutdown can at most resend its last
    /// batch after a restart, with the same event ids.
    pub async fn run(&mut self, poll_interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                result = self.poll_once() => match result {
                    Ok(stats) if stats.lines > 0 || stats.rotations > 0 || stats.truncations > 0 => {
                        debug!(
                            lines = stats.lines,
                            accepted = stats.events_accepted,
                            dead_letters = stats.dead_letters,
                            files = stats.files,
                            "tail poll"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "tail poll failed; the next poll resumes from the checkpoint"),
                },
            }
            let sleeper = Arc::clone(&self.sleeper);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = sleeper.sleep(poll_interval) => {}
            }
        }
        info!("tailer stopped");
    }

    /// Discovers files, reads every complete line that is there and sends it;
    /// returns once everything read has been acknowledged and checkpointed.
    ///
    /// # Errors
    ///
    /// A sink error that retries did not cure, or a checkpoint that cannot be
    /// written. Nothing is checkpointed past the failure; the next poll
    /// starts from the last checkpoint. Unreadable single files are logged
    /// and skipped, not errors.
    pub async fn poll_once(&mut self) -> Result<PollStats, TailError> {
        let mut stats = PollStats::default();

        let scan = self.scan().await?;
        if self.reconcile(scan, &mut stats) {
            self.write_checkpoint().await?;
        }

        let limits = ParseLimits::at(self.clock.as_ref());
        let mut batch = Batch::default();
        let mut retired = Vec::new();
        for index in self.read_order() {
            if let Some(end) = self
                .read_file(index, &limits, &mut batch, &mut stats)
                .await?
            {
                retired.push((self.files[index].id, end));
            }
        }
        self.flush(&mut batch, &mut stats).await?;

        if !retired.is_empty() {
            self.files.retain(|file| {
                let done = retired
                    .iter()
                    .any(|&(id, end)| id == file.id && file.committed.offset >= end);
                if done {
                    info!(path = %file.path.display(), line = file.committed.line, "finished rotated file");
                }
                !done
            });
            self.write_checkpoint().await?;
        }
        stats.files = self.files.len();
        Ok(stats)
    }

    /// Expands the patterns and probes every file, off the async threads.
    async fn scan(&self) -> Result<ScanResult, TailError> {
        let patterns = self.config.patterns.clone();
        let excluded = vec![
            self.config.checkpoint_path.clone(),
            sibling_path(&self.config.checkpoint_path, ".tmp"),
            sibling_path(&self.config.checkpoint_path, ".lock"),
        ];
        let open: Vec<(FileId, Arc<File>)> = self
            .files
            .iter()
            .filter_map(|file| file.handle.as_ref().map(|h| (file.id, Arc::clone(h))))
            .collect();
        tokio::task::spawn_blocking(move || scan_files(&patterns, &excluded, open))
            .await
            .map_err(|error| TailError::Task(error.to_string()))
    }

    /// Applies a scan to the tracked files; returns whether the checkpoint
    /// needs rewriting.
    fn reconcile(&mut self, scan: ScanResult, stats: &mut PollStats) -> bool {
        let mut changed = false;
        let mut matched_ids = HashSet::with_capacity(scan.matched.len());
        let mut by_id: HashMap<FileId, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(index, file)| (file.id, index))
            .collect();
        for found in scan.matched {
            matched_ids.insert(found.id);
            match by_id.get(&found.id) {
                Some(&index) => {
                    let file = &mut self.files[index];
                    if file.path != found.path {
                        info!(from = %file.path.display(), to = %found.path.display(), "tailed file renamed");
                        file.path = found.path;
                        changed = true;
                    }
                    if file.handle.is_none() {
                        file.handle = found.opened;
                    }
                }
                None => {
                    info!(path = %found.path.display(), dev = found.id.dev, ino = found.id.ino, "tailing new file");
                    stats.new_files += 1;
                    changed = true;
                    by_id.insert(found.id, self.files.len());
                    self.files.push(TrackedFile {
                        id: found.id,
                        path: found.path,
                        handle: found.opened,
                        fingerprint: None,
                        generation: 0,
                        committed: Position::START,
                        matched: true,
                        unmatched_polls: 0,
                        last_seen_size: None,
                    });
                }
            }
        }

        self.files.retain(|file| {
            if file.handle.is_some() {
                return true;
            }
            warn!(
                path = %file.path.display(),
                offset = file.committed.offset,
                line = file.committed.line,
                "checkpointed file no longer matches any pattern; lines after the checkpoint cannot be read"
            );
            changed = true;
            false
        });

        for file in &mut self.files {
            let now_matched = matched_ids.contains(&file.id);
            if file.matched && !now_matched {
                info!(path = %file.path.display(), "file rotated or removed; reading the rest through its open handle");
                stats.rotations += 1;
            }
            file.matched = now_matched;
            file.unmatched_polls = if now_matched {
                0
            } else {
                file.unmatched_polls.saturating_add(1)
            };

            let Some(probe) = scan.probes.get(&file.id) else {
                continue;
            };
            if file.committed.offset == 0 {
                // Nothing settled yet: the head can still change freely.
                file.fingerprint = probe.fingerprint;
                continue;
            }
            let shrunk = probe.size < file.committed.offset;
            let rewritten = probe.fingerprint != file.fingerprint;
            if shrunk || rewritten {
                warn!(
                    path = %file.path.display(),
                    size = probe.size,
                    offset = file.committed.offset,
                    cause = if shrunk { "file shorter than the offset" } else { "first line changed" },
                    "file truncated; reading it again from the start"
                );
                stats.truncations += 1;
                file.generation = file.generation.wrapping_add(1);
                file.committed = Position::START;
                file.fingerprint = probe.fingerprint;
                file.last_seen_size = None;
                changed = true;
            }
        }
        changed
    }

    fn read_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        order.sort_by(|&a, &b| {
            let (first, second) = (&self.files[a], &self.files[b]);
            first
                .matched
                .cmp(&second.matched)
                .then_with(|| first.path.cmp(&second.path))
        });
        order
    }

    /// Reads the file at `index` from its committed offset to its end,
    /// flushing full batches on the way. Returns the end offset when the file
    /// is rotated away, finished, and may be forgotten once that is settled.
    async fn read_file(
        &mut self,
        index: usize,
        limits: &ParseLimits,
        batch: &mut Batch,
        stats: &mut PollStats,
    ) -> Result<Option<u64>, TailError> {
        let file = &self.files[index];
        let Some(handle) = file.handle.clone() else {
            return Ok(None);
        };
        let mut source = LineSource {
            id: file.id,
            fingerprint: file.fingerprint,
            generation: file.generation,
            path: file.path.display().to_string(),
        };
        let may_finish = !file.matched && file.unmatched_polls >= 2;
        let previous_size = file.last_seen_size;
        let mut cursor = file.committed;
        let mut read_end = cursor.offset;
        let mut pending: Vec<u8> = Vec::new();
        let mut oversized: Option<OversizedLine> = None;

        loop {
            let chunk = match read_chunk(Arc::clone(&handle), read_end).await {
                Ok(chunk) => chunk,
                Err(error) => {
                    warn!(path = %source.path, offset = read_end, %error, "reading file failed; skipping it this poll");
                    stats.read_errors += 1;
                    return Ok(None);
                }
            };
            if chunk.is_empty() {
                break;
            }
            if read_end == 0 && source.fingerprint.is_none() {
                source.fingerprint = head_fingerprint(&chunk);
                self.files[index].fingerprint = source.fingerprint;
            }
            read_end += chunk.len() as u64;

            let mut data = chunk.as_slice();
            if let Some(long) = oversized.as_mut() {
                let Some(newline) = find_newline(data) else {
                    long.len += data.len() as u64;
                    continue;
                };
                long.len += newline as u64;
                data = &data[newline + 1..];
                cursor.line += 1;
                let long = oversized.take().expect("checked above");
                self.push_oversized(&source, &long, cursor.line, batch, stats);
                cursor.offset = long.start + long.len + 1;
                batch.advance(index, cursor);
                if batch.is_full(&self.config) {
                    self.flush(batch, stats).await?;
                }
            }

            pending.extend_from_slice(data);
            let mut consumed = 0;
            while let Some(newline) = find_newline(&pending[consumed..]) {
                cursor.line += 1;
                let line = &pending[consumed..consumed + newline];
                self.push_line(&source, line, cursor, limits, batch, stats);
                cursor.offset += newline as u64 + 1;
                consumed += newline + 1;
                batch.advance(index, cursor);
                if batch.is_full(&self.config) {
                    self.flush(batch, stats).await?;
                }
            }
            pending.drain(..consumed);
            if pending.len() > self.config.max_line_bytes {
                oversized = Some(OversizedLine {
                    start: cursor.offset,
                    len: pending.len() as u64,
                    prefix: pending[..OVERSIZED_RAW_PREFIX_BYTES.min(pending.len())].to_vec(),
                });
                pending.clear();
            }
        }

        self.files[index].last_seen_size = Some(read_end);
        if !may_finish || previous_size != Some(read_end) {
            return Ok(None);
        }
        // Rotated away, unmatched for two polls and no longer growing: what
        // is left is the file's last line, written without a newline.
        if let Some(long) = oversized {
            cursor.line += 1;
            self.push_oversized(&source, &long, cursor.line, batch, stats);
            cursor.offset = read_end;
            batch.advance(index, cursor);
        } else if !pending.is_empty() {
            cursor.line += 1;
            self.push_line(&source, &pending, cursor, limits, batch, stats);
            cursor.offset = read_end;
            batch.advance(index, cursor);
        }
        Ok(Some(read_end))
    }

    /// Turns one complete line (without its `\n`) starting at `at.offset`
    /// into an event or a dead letter in `batch`.
    fn push_line(
        &self,
        source: &LineSource,
        line: &[u8],
        at: Position,
        limits: &ParseLimits,
        batch: &mut Batch,
        stats: &mut PollStats,
    ) {
        if line.len() > self.config.max_line_bytes {
            let long = OversizedLine {
                start: at.offset,
                len: line.len() as u64,
                prefix: line[..OVERSIZED_RAW_PREFIX_BYTES.min(line.len())].to_vec(),
            };
            self.push_oversized(source, &long, at.line, batch, stats);
            return;
        }
        stats.lines += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            stats.blank_lines += 1;
            return;
        }
        let mut json = Vec::with_capacity(line.len() + 64);
        match encode_line(
            text,
            self.config.format,
            source,
            at.offset,
            limits,
            &mut json,
        ) {
            Ok(()) => {
                batch.push_event(json, source, at, String::from_utf8_lossy(line).into_owned())
            }
            Err(reason) => batch.push_dead_letter(DeadLetter {
                file: source.path.clone(),
                line: at.line,
                byte_offset: at.offset,
                reason,
                raw: String::from_utf8_lossy(line).into_owned(),
            }),
        }
    }

    fn push_oversized(
        &self,
        source: &LineSource,
        long: &OversizedLine,
        line: u64,
        batch: &mut Batch,
        stats: &mut PollStats,
    ) {
        stats.lines += 1;
        batch.push_dead_letter(DeadLetter {
            file: source.path.clone(),
            line,
            byte_offset: long.start,
            reason: format!(
                "line is {} bytes (max {}); raw holds its first {} bytes",
                long.len,
                self.config.max_line_bytes,
                long.prefix.len()
            ),
            raw: String::from_utf8_lossy(&long.prefix).into_owned(),
        });
    }

    /// Sends the batch, dead-letters what the sink rejected, then moves and
    /// writes the checkpoint. On error nothing moves.
    async fn flush(&mut self, batch: &mut Batch, stats: &mut PollStats) -> Result<(), TailError> {
        if batch.advances.is_empty() {
            debug_assert!(batch.entries.is_empty());
            return Ok(());
        }
        let verdicts = if batch.events.is_empty() {
            Vec::new()
        } else {
            let sink = &self.sink;
            let events = &batch.events;
            with_retry(
                &self.config.retry,
                self.sleeper.as_ref(),
                stats,
                "send events",
                || sink.send_events(events.clone()),
            )
            .await?
        };
        if verdicts.len() != batch.events.len() {
            return Err(TailError::Sink(SinkError::Refused(format!(
                "sink answered {} verdicts for {} events",
                verdicts.len(),
                batch.events.len()
            ))));
        }

        let mut letters = Vec::new();
        let mut verdicts = verdicts.into_iter();
        let (mut accepted, mut rejected) = (0u64, 0u64);
        for entry in batch.entries.drain(..) {
            match entry {
                Entry::Dead(letter) => letters.push(letter),
                Entry::Event(origin) => match verdicts.next().flatten() {
                    None => accepted += 1,
                    Some(reason) => {
                        rejected += 1;
                        letters.push(DeadLetter {
                            file: origin.file,
                            line: origin.line,
                            byte_offset: origin.byte_offset,
                            reason: format!("rejected by the sink: {reason}"),
                            raw: origin.raw,
                        });
                    }
                },
            }
        }
        if !letters.is_empty() {
            warn!(
                count = letters.len(),
                topic = %self.config.dead_letter_topic,
                first_file = %letters[0].file,
                first_line = letters[0].line,
                first_reason = %letters[0].reason,
                "sending lines to the dead-letter topic"
            );
            let sink = &self.sink;
            let topic = self.config.dead_letter_topic.as_str();
            let count = letters.len() as u64;
            let letters = &letters;
            with_retry(
                &self.config.retry,
                self.sleeper.as_ref(),
                stats,
                "send dead letters",
                || sink.send_dead_letters(topic, letters.clone()),
            )
            .await?;
            stats.dead_letters += count;
        }

        for (index, position) in batch.advances.drain(..) {
            self.files[index].committed = position;
        }
        batch.events.clear();
        batch.bytes = 0;
        self.write_checkpoint().await?;
        stats.events_accepted += accepted;
        stats.events_rejected += rejected;
        stats.batches += 1;
        Ok(())
    }

    async fn write_checkpoint(&self) -> Result<(), TailError> {
        let document = CheckpointDocument {
            version: CHECKPOINT_VERSION,
            files: self
                .files
                .iter()
                .map(|file| CheckpointEntry {
                    path: file.path.to_string_lossy().into_owned(),
                    dev: file.id.dev,
                    ino: file.id.ino,
                    fingerprint: file.fingerprint.map(|fp| format!("{fp:016x}")),
                    generation: file.generation,
                    offset: file.committed.offset,
                    line: file.committed.line,
                })
                .collect(),
        };
        debug_assert!(document
            .files
            .iter()
            .all(|entry| entry.offset == 0 || entry.fingerprint.is_some()));
        let mut bytes =
            serde_json::to_vec_pretty(&document).expect("a checkpoint always serializes to json");
        bytes.push(b'\n');
        let path = self.config.checkpoint_path.clone();
        tokio::task::spawn_blocking(move || {
            write_atomically(&path, &bytes)
                .map_err(|source| TailError::CheckpointIo { path, source })
        })
        .await
        .map_err(|error| TailError::Task(error.to_string()))?
    }
}

/// Calls `call` until it succeeds, fails for good or runs out of attempts.
async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    sleeper: &dyn Sleeper,
    stats: &mut PollStats,
    what: &str,
    mut call: F,
) -> Result<T, TailError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    let mut attempt = 1;
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.is_retryable() || attempt >= policy.max_attempts {
            return Err(TailError::Sink(error));
        }
        let delay = error
            .retry_after()
            .unwrap_or_else(|| policy.backoff(attempt));
        warn!(what, attempt, delay = ?delay, %error, "sink call failed; retrying");
        stats.retries += 1;
        sleeper.sleep(delay).await;
        attempt += 1;
    }
}

/// What a line's event id and dead letter need to know about its file.
struct LineSource {
    id: FileId,
    fingerprint: Option<u64>,
    generation: u32,
    path: String,
}

impl LineSource {
    fn event_id(&self, offset: u64) -> String {
        debug_assert!(
            self.fingerprint.is_some(),
            "a complete line implies a known head"
        );
        format!(
            "tail:{:x}.{:x}.{:016x}.{}.{}",
            self.id.dev,
            self.id.ino,
            self.fingerprint.unwrap_or(0),
            self.generation,
            offset
        )
    }
}

struct OversizedLine {
    start: u64,
    /// Bytes seen so far, without the newline.
    len: u64,
    prefix: Vec<u8>,
}

struct EventOrigin {
    file: String,
    line: u64,
    byte_offset: u64,
    raw: String,
}

enum Entry {
    /// The next event of `Batch::events`.
    Event(EventOrigin),
    Dead(DeadLetter),
}

/// Lines read but not yet acknowledged.
#[derive(Default)]
struct Batch {
    events: Vec<Vec<u8>>,
    /// Events and dead letters in line order.
    entries: Vec<Entry>,
    bytes: usize,
    /// Where each file stands once this batch is settled (files are read one
    /// after the other, so the last element is the only one for its file).
    advances: Vec<(usize, Position)>,
}

impl Batch {
    fn push_event(&mut self, json: Vec<u8>, source: &LineSource, at: Position, raw: String) {
        self.bytes += json.len();
        self.events.push(json);
        self.entries.push(Entry::Event(EventOrigin {
            file: source.path.clone(),
            line: at.line,
            byte_offset: at.offset,
            raw,
        }));
    }

    fn push_dead_letter(&mut self, letter: DeadLetter) {
        self.bytes += letter.raw.len();
        self.entries.push(Entry::Dead(letter));
    }

    fn advance(&mut self, index: usize, position: Position) {
        match self.advances.last_mut() {
            Some((last, at)) if *last == index => *at = position,
            _ => self.advances.push((index, position)),
        }
    }

    fn is_full(&self, config: &TailConfig) -> bool {
        self.entries.len() >= config.batch_lines || self.bytes >= config.max_batch_bytes
    }
}

/// Parses a non-blank, trimmed line and appends its JSON event to `out`.
fn encode_line(
    text: &[u8],
    format: LineFormat,
    source: &LineSource,
    offset: u64,
    limits: &ParseLimits,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let is_seed = match format {
        LineFormat::Seed => true,
        LineFormat::Ndjson => false,
        LineFormat::Auto => match text.first() {
            Some(b'[') => true,
            Some(b'{') => false,
            _ => {
                return Err(
                    "unrecognised line: expected '[' (seed ad click) or '{' (json event) first"
                        .to_owned(),
                )
            }
        },
    };
    if is_seed {
        let text = std::str::from_utf8(text)
            .map_err(|error| format!("invalid utf-8 after byte {}", error.valid_up_to()))?;
        let mut event = seed::parse_seed_line(text).map_err(|error| error.to_string())?;
        event.event_id = Some(Cow::Owned(source.event_id(offset)));
        event.validate(limits).map_err(|error| error.to_string())?;
        event.write_json(out);
    } else {
        let mut event = parse_event(text, limits).map_err(|error| error.to_string())?;
        if event.event_id.is_none() {
            event.event_id = Some(Cow::Owned(source.event_id(offset)));
        }
        event.write_json(out);
    }
    Ok(())
}

fn find_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte == b'\n')
}

/// FNV-1a of a file's first line (capped at [`FINGERPRINT_BYTES`]); `None`
/// until that much of the file exists. Stable across builds, unlike std's
/// hasher, because ids derived from it outlive the process.
fn head_fingerprint(head: &[u8]) -> Option<u64> {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let window = &head[..head.len().min(FINGERPRINT_BYTES)];
    let len = match find_newline(window) {
        Some(newline) => newline + 1,
        None if window.len() == FINGERPRINT_BYTES => FINGERPRINT_BYTES,
        None => return None,
    };
    Some(window[..len].iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    }))
}

/// Reads up to [`READ_CHUNK_BYTES`] at `offset`; empty at end of file.
async fn read_chunk(file: Arc<File>, offset: u64) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; READ_CHUNK_BYTES];
        let len = read_full_at(&file, &mut buf, offset)?;
        buf.truncate(len);
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

struct FoundFile {
    path: PathBuf,
    id: FileId,
    /// A fresh handle when the tailer had none for this file.
    opened: Option<Arc<File>>,
}

struct Probe {
    size: u64,
    fingerprint: Option<u64>,
}

struct ScanResult {
    matched: Vec<FoundFile>,
    probes: HashMap<FileId, Probe>,
}

/// Blocking: globs, stats, opens new files and probes every open file's size
/// and head. Problems with single paths are logged and skipped.
fn scan_files(
    patterns: &[String],
    excluded: &[PathBuf],
    open: Vec<(FileId, Arc<File>)>,
) -> ScanResult {
    let mut paths = Vec::new();
    for pattern in patterns {
        let entries = match glob::glob(pattern) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(pattern, %error, "invalid glob pattern");
                continue;
            }
        };
        for entry in entries {
            match entry {
                Ok(path) => paths.push(path),
                Err(error) => warn!(pattern, %error, "cannot read a path the pattern matches"),
            }
        }
    }
    paths.sort();
    paths.dedup();

    let known: HashSet<FileId> = open.iter().map(|(id, _)| *id).collect();
    let mut handles = open;
    let mut matched: Vec<FoundFile> = Vec::with_capacity(paths.len());
    let mut matched_ids: HashSet<FileId> = HashSet::with_capacity(paths.len());
    for path in paths {
        if excluded.contains(&path) {
            continue;
        }
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) => {
                debug!(path = %path.display(), %error, "matched path vanished");
                continue;
            }
        };
        if !metadata.is_file() {
            continue;
        }
        let mut id = FileId::of(&metadata);
        let mut opened = None;
        if !known.contains(&id) {
            // Identity from the handle itself, so a rotation between the stat
            // and the open cannot pair the path with the wrong file.
            let opened_file = File::open(&path).and_then(|file| {
                let metadata = file.metadata()?;
                Ok((file, metadata))
            });
            match opened_file {
                Ok((file, metadata)) if metadata.is_file() => {
                    id = FileId::of(&metadata);
                    if !known.contains(&id) && !matched_ids.contains(&id) {
                        let file = Arc::new(file);
                        handles.push((id, Arc::clone(&file)));
                        opened = Some(file);
                    }
                }
                Ok(_) => continue,
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot open matched file");
                    continue;
                }
            }
        }
        if !matched_ids.insert(id) {
            continue; // another path (hard link, symlink) to a file already matched
        }
        matched.push(FoundFile { path, id, opened });
    }

    let probes = handles
        .iter()
        .filter_map(|(id, file)| {
            let size = file.metadata().ok()?.len();
            let mut head = [0u8; FINGERPRINT_BYTES];
            let len = read_full_at(file, &mut head, 0).ok()?;
            let probe = Probe {
                size,
                fingerprint: head_fingerprint(&head[..len]),
            };
            Some((*id, probe))
        })
        .collect();
    ScanResult { matched, probes }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointDocument {
    version: u32,
    files: Vec<CheckpointEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointEntry {
    path: String,
    dev: u64,
    ino: u64,
    fingerprint: Option<String>,
    generation: u32,
    offset: u64,
    line: u64,
}

/// `path` with `suffix` appended to its file name.
fn sibling_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn lock_checkpoint(path: &Path) -> Result<File, TailError> {
    use std::os::fd::AsRawFd;

    let io_error = |source| TailError::CheckpointIo {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(parent_dir(path)).map_err(io_error)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sibling_path(path, ".lock"))
        .map_err(io_error)?;
    // SAFETY: flock only takes a descriptor, which `lock` keeps open for the
    // duration of the call; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Err(TailError::CheckpointLocked {
                path: path.to_owned(),
            });
        }
        return Err(io_error(error));
    }
    Ok(lock)
}

fn load_checkpoint(path: &Path) -> Result<Vec<TrackedFile>, TailError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TailError::CheckpointIo {
                path: path.to_owned(),
                source,
            })
        }
    };
    let invalid = |detail: String| TailError::CheckpointInvalid {
        path: path.to_owned(),
        detail,
    };
    let document: CheckpointDocument = serde_json::from_slice(&bytes)
        .map_err(|error| invalid(format!("invalid json: {error}")))?;
    if document.version != CHECKPOINT_VERSION {
        return Err(invalid(format!(
            "unsupported version {} (expected {CHECKPOINT_VERSION})",
            document.version
        )));
    }
    let mut files: Vec<TrackedFile> = Vec::with_capacity(document.files.len());
    for entry in document.files {
        let id = FileId {
            dev: entry.dev,
            ino: entry.ino,
        };
        if files.iter().any(|file| file.id == id) {
            return Err(invalid(format!(
                "file {:?}: dev {} inode {} listed twice",
                entry.path, entry.dev, entry.ino
            )));
        }
        let fingerprint = match &entry.fingerprint {
            None => None,
            Some(hex) if hex.len() == 16 => Some(u64::from_str_radix(hex, 16).map_err(|_| {
                invalid(format!(
                    "file {:?}: fingerprint {hex:?} is not hex",
                    entry.path
                ))
            })?),
            Some(hex) => {
                return Err(invalid(format!(
                    "file {:?}: fingerprint {hex:?} is not 16 hex digits",
                    entry.path
                )))
            }
        };
        if entry.offset > 0 && fingerprint.is_none() {
            return Err(invalid(format!(
                "file {:?}: offset {} without a fingerprint",
                entry.path, entry.offset
            )));
        }
        if entry.line > entry.offset {
            return Err(invalid(format!(
                "file {:?}: {} lines cannot fit in {} bytes",
                entry.path, entry.line, entry.offset
            )));
        }
        files.push(TrackedFile {
            id,
            path: PathBuf::from(entry.path),
            handle: None,
            fingerprint,
            generation: entry.generation,
            committed: Position {
                offset: entry.offset,
                line: entry.line,
            },
            matched: true,
            unmatched_polls: 0,
            last_seen_size: None,
        });
    }
    Ok(files)
}

/// Temp file + fsync + rename + directory fsync.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = parent_dir(path);
    fs::create_dir_all(&directory)?;
    let temp = sibling_path(path, ".tmp");
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    File::open(&directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_covers_the_first_line_or_256_bytes() {
        assert_eq!(head_fingerprint(b""), None);
        assert_eq!(head_fingerprint(b"partial"), None);
        let first = head_fingerprint(b"one\n").unwrap();
        assert_eq!(head_fingerprint(b"one\ntwo\n"), Some(first));
        assert_ne!(head_fingerprint(b"uno\n"), Some(first));
        let long = vec![b'x'; 300];
        assert_eq!(
            head_fingerprint(&long[..256]),
            head_fingerprint(&long),
            "only the first 256 bytes count"
        );
        assert_eq!(head_fingerprint(&long[..255]), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        let delays: Vec<u128> = (1..=6)
            .map(|retry| policy.backoff(retry).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn line_format_parses_from_cli_words() {
        assert_eq!("seed".parse(), Ok(LineFormat::Seed));
        assert_eq!("ndjson".parse(), Ok(LineFormat::Ndjson));
        assert_eq!("auto".parse(), Ok(LineFormat::Auto));
        assert_eq!(
            "csv".parse::<LineFormat>().unwrap_err(),
            "unknown line format \"csv\" (expected seed, ndjson or auto)"
        );
        assert_eq!(LineFormat::Ndjson.to_string(), "ndjson");
    }

    #[test]
    fn config_is_validated() {
        let config = TailConfig::new(vec!["[".to_owned()], "/tmp/cp.json");
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("invalid tail config: patterns: \"[\""),
            "{error}"
        );
        let config = TailConfig {
            batch_lines: 0,
            ..TailConfig::new(vec!["*.log".to_owned()], "/tmp/cp.json")
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid tail config: batch_lines: must be at least 1"
        );
        assert_eq!(
            TailConfig::new(Vec::new(), "cp")
                .validate()
                .unwrap_err()
                .to_string(),
            "invalid tail config: patterns: at least one glob pattern is required"
        );
    }

    #[test]
    fn event_ids_name_file_content_and_offset() {
        let source = LineSource {
            id: FileId {
                dev: 0x803,
                ino: 0xabc,
            },
            fingerprint: Some(0x0123_4567_89ab_cdef),
            generation: 2,
            path: "a.log".to_owned(),
        };
        assert_eq!(
            source.event_id(4096),
            "tail:803.abc.0123456789abcdef.2.4096"
        );
        let longest = LineSource {
            id: FileId {
                dev: u64::MAX,
                ino: u64::MAX,
            },
            fingerprint: Some(u64::MAX),
            generation: u32::MAX,
            ..source
        };
        assert!(longest.event_id(u64::MAX).len() <= riffle_core::event::MAX_EVENT_ID_BYTES);
    }

    #[test]
    fn corrupt_checkpoints_are_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let cases = [
            ("{", "invalid json"),
            (r#"{"version":2,"files":[]}"#, "unsupported version 2"),
            (
                r#"{"version":1,"files":[],"extra":1}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"version":1,"files":[{"path":"a","dev":1,"ino":2,"fingerprint":null,"generation":0,"offset":5,"line":1}]}"#,
                "offset 5 without a fingerprint",
            ),
            (
                r#"{"version":1,"files":[{"path":"a","dev":1,"ino":2,"fingerprint":"xyz","generation":0,"offset":5,"line":1}]}"#,
                "not 16 hex digits",
            ),
        ];
        for (text, expected) in cases {
            fs::write(&path, text).unwrap();
            let error = load_checkpoint(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        fs::remove_file(&path).unwrap();
        assert!(load_checkpoint(&path).unwrap().is_empty());
    }
}
