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
//! Not built yet: sources (consumer group, one task per partition), sinks, the
//! runtime that wires operators into a keyed dataflow and drives watermarks
//! and checkpoint barriers, the checkpoint store, and metrics. Nothing here
//! reads from or writes to the bus yet.

pub mod dedup;
pub mod error;
pub mod operator;
pub mod time;
pub mod watermark;

pub use dedup::{DedupConfig, Deduplicator, Verdict};
pub use error::{Result, StreamError};
pub use operator::{CheckpointId, Collector, Operator};
pub use time::{SessionMerge, SessionWindows, Window, WindowAssigner, WindowSpec};
pub use watermark::{
    Lateness, LatenessPolicy, WatermarkConfig, WatermarkSnapshot, WatermarkTracker,
};
