//! Building blocks of Riffle's stream engine.
//!
//! What exists:
//!
//! * [`time`] — event-time windows (tumbling, hopping, session) over epoch
//!   milliseconds, half-open, with floor division for negative times, and a
//!   per-key session merger.
//! * [`watermark`] — a per-task watermark tracker (bounded out-of-orderness
//!   per partition, minimum over active partitions, idle partitions excluded
//!   after a timeout, wall-clock advance when all are idle, never backwards,
//!   checkpointable) and the lateness classifier (on time / late within the
//!   allowed lateness / too late).
//! * [`dedup`] — exact deduplication by `event_id` over an event-time horizon
//!   with 64-bit hashes in time buckets and a checksummed snapshot format.
//! * [`operator`] — the operator trait with no-op default hooks and the
//!   output [`operator::Collector`].
//!
//! * [`runtime`] — one task per input partition: polls the bus, drives an
//!   operator, commits its output and input offsets in one bus transaction
//!   every emit interval, checkpoints its state, restores and replays after
//!   a crash (the protocol is in the module docs and ADR 0002); and the
//!   repartition step that sends a record to the task owning its key
//!   through an internal topic, in the same transaction, with the order of
//!   the two inputs written down so replay reproduces it.
//! * [`supervisor`] — runs a pipeline's tasks on the partitions this
//!   process owns: follows the ownership group, stops revoked tasks with a
//!   final checkpoint before releasing them, restarts failed ones with
//!   backoff; the pipeline watermark over its tasks.
//! * [`checkpoint`] — the checkpoint store trait and its filesystem
//!   implementation (atomic, checksummed files per task).
//! * [`metrics`] — per-pipeline Prometheus series.
//!
//! Operators that need several partitions at once (the global top-N) are
//! merged downstream of the tasks; see the ad click pipeline.

pub mod checkpoint;
pub mod dedup;
pub mod error;
pub mod metrics;
pub mod operator;
pub mod runtime;
pub mod supervisor;
pub mod time;
pub mod watermark;

pub use checkpoint::{CheckpointStore, FsCheckpointStore, RepartitionPosition, TaskCheckpoint};
pub use dedup::{DedupConfig, Deduplicator, Verdict};
pub use error::{Result, StreamError};
pub use operator::{
    CheckpointId, Collector, CounterSpec, Operator, OperatorProgress, MAX_COUNTERS,
};
pub use runtime::{
    run_task, CheckpointInfo, RepartitionConfig, Sink, SinkRecord, SourceBatch, TaskConfig,
    TaskOutcome, TaskSnapshot, TaskStatus,
};
pub use supervisor::{
    ensure_topic, tasks_watermark, Backoff, IdlePolicy, PartitionTasks, Supervisor, TaskSet,
};
pub use time::{SessionMerge, SessionWindows, Window, WindowAssigner, WindowSpec};
pub use watermark::{
    Lateness, LatenessPolicy, WatermarkConfig, WatermarkSnapshot, WatermarkTracker,
};
