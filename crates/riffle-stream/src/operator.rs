//! The operator trait: one step of a dataflow (map, keyed aggregate,
//! reduce, …). Every hook except [`Operator::process_batch`] has a default
//! that does nothing useful, so an operator overrides only what it needs.
//!
//! The contract a runtime ([`crate::runtime`]) honours:
//!
//! 1. [`Operator::restore`] is called once before any other hook, with the
//!    bytes the operator returned from [`Operator::handle_checkpoint`] in the
//!    checkpoint being restored (empty on a fresh start).
//! 2. Batches and watermarks arrive in order on one task; hooks are never
//!    called concurrently (`&mut self`), so operator state needs no locks.
//! 3. A checkpoint barrier calls [`Operator::handle_checkpoint`] after every
//!    record before the barrier and before any after it; the returned bytes
//!    plus the input offsets form the consistent cut. Records the operator
//!    collects there are part of the cut too.
//! 4. [`Operator::handle_commit`] is called once that checkpoint is durable,
//!    for side effects that must only happen after it (e.g. releasing
//!    outputs to a non-transactional sink).
//! 5. [`Operator::on_close`] is called at the end of a bounded input; it is
//!    not called when the task is killed.

use crate::error::{Result, StreamError};

/// Identifies a checkpoint; increases by one per checkpoint of a task.
pub type CheckpointId = u64;

/// The most counters one operator can declare ([`Operator::counters`]).
pub const MAX_COUNTERS: usize = 8;

/// A counter an operator keeps (events it routed late, dropped as
/// duplicates, …). The runtime shows it in the task status under `name`
/// and exports it as the Prometheus counter `metric`, labelled by pipeline
/// and partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSpec {
    /// The field in the task status (`GET /v1/pipelines`).
    pub name: &'static str,
    /// The Prometheus series, e.g. `riffle_stream_late_total`.
    pub metric: &'static str,
    pub help: &'static str,
}

/// What an operator reports about itself (see [`Operator::progress`]).
/// Counters are totals since the operator was created or restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorProgress {
    /// The operator's event-time watermark, once it has one.
    pub watermark: Option<i64>,
    /// The largest event time seen.
    pub max_event_time: Option<i64>,
    /// The values of the counters [`Operator::counters`] declares, in the
    /// same order; the rest stay zero.
    pub counters: [u64; MAX_COUNTERS],
}

/// Where an operator puts its output records. The runtime owns one per task
/// and reuses its buffer across batches, so emitting does not allocate once
/// the buffer has grown to the usual batch size.
#[derive(Debug)]
pub struct Collector<T> {
    records: Vec<T>,
}

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
        }
    }
}

impl<T> Collector<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn collect(&mut self, record: T) {
        self.records.push(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Hands the collected records downstream, keeping the buffer's capacity.
    pub fn drain(&mut self) -> std::vec::Drain<'_, T> {
        self.records.drain(..)
    }
}

/// One step of a dataflow. See the module docs for the calling contract.
///
/// `In<'a>` is a whole batch, so a source operator can take a borrowed view
/// of the records the bus returned ([`crate::runtime::SourceBatch`]) without
/// copying them, while an in-memory operator takes e.g. a `Vec`.
pub trait Operator: Send {
    type In<'a>;
    type Out;

    /// A stable name, used in metrics, logs and checkpoint paths.
    fn name(&self) -> &str;

    /// Consumes a batch of input records.
    fn process_batch<'a>(
        &mut self,
        batch: Self::In<'a>,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;

    /// Called by the runtime every emit interval (wall clock `now_ms`), and
    /// before every checkpoint: the place to emit results changed since the
    /// last tick (absolute upserts), so emission is batched instead of per
    /// record.
    fn handle_tick(&mut self, now_ms: i64, out: &mut Collector<Self::Out>) -> Result<()> {
        let _ = (now_ms, out);
        Ok(())
    }

    /// The counters this operator keeps, in the order
    /// [`OperatorProgress::counters`] reports them; at most
    /// [`MAX_COUNTERS`], names unique. The default keeps none.
    fn counters(&self) -> &'static [CounterSpec] {
        &[]
    }

    /// Counters and event-time progress for metrics and `GET /v1/pipelines`.
    fn progress(&self) -> OperatorProgress {
        OperatorProgress::default()
    }

    /// Called when the input watermark advances. Returns the watermark to
    /// forward downstream; the default forwards it unchanged. A window
    /// operator emits the windows the watermark closed here.
    fn handle_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector<Self::Out>,
    ) -> Result<Option<i64>> {
        let _ = out;
        Ok(Some(watermark))
    }

    /// Returns the operator's state for checkpoint `checkpoint`; the default
    /// is a stateless operator's empty state.
    fn handle_checkpoint(
        &mut self,
        checkpoint: CheckpointId,
        out: &mut Collector<Self::Out>,
    ) -> Result<Vec<u8>> {
        let _ = (checkpoint, out);
        Ok(Vec::new())
    }

    /// Called once checkpoint `checkpoint` is durable.
    fn handle_commit(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// Restores state returned by [`Self::handle_checkpoint`]. The default
    /// accepts only empty state, so an operator that starts keeping state
    /// without implementing this fails loudly instead of losing it.
    fn restore(&mut self, state: &[u8]) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        Err(StreamError::Operator {
            operator: self.name().to_owned(),
            reason: format!(
                "got {} bytes of checkpointed state but does not implement restore",
                state.len()
            ),
        })
    }

    /// Called at the end of a bounded input, e.g. to flush open windows.
    fn on_close(&mut self, out: &mut Collector<Self::Out>) -> Result<()> {
        let _ = out;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses nothing but the defaults besides `process_batch`.
    struct Double;

    impl Operator for Double {
        type In<'a> = Vec<i64>;
        type Out = i64;

        fn name(&self) -> &str {
            "double"
        }

        fn process_batch<'a>(&mut self, batch: Vec<i64>, out: &mut Collector<i64>) -> Result<()> {
            for value in batch {
                out.collect(value * 2);
            }
            Ok(())
        }
    }

    #[test]
    fn defaults_are_no_ops() {
        let mut op = Double;
        let mut out = Collector::new();
        op.restore(&[]).unwrap();
        op.process_batch(vec![1, 2], &mut out).unwrap();
        op.handle_tick(0, &mut out).unwrap();
        assert_eq!(op.progress(), OperatorProgress::default());
        assert!(op.counters().is_empty());
        assert_eq!(op.handle_watermark(10, &mut out).unwrap(), Some(10));
        assert_eq!(op.handle_checkpoint(1, &mut out).unwrap(), Vec::<u8>::new());
        op.handle_commit(1).unwrap();
        op.on_close(&mut out).unwrap();
        assert_eq!(out.drain().collect::<Vec<_>>(), vec![2, 4]);
        assert!(out.is_empty());
        let err = op.restore(&[1, 2, 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "operator \"double\": got 3 bytes of checkpointed state but does not implement restore"
        );
    }
}
