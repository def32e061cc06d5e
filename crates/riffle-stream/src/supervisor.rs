//! Runs a pipeline's tasks on the partitions this process owns.
//!
//! A pipeline says how to build the task of a partition
//! ([`PartitionTasks`]); the [`Supervisor`] follows the bus's ownership
//! group on the pipeline's input topic ([`EventBus::join_ownership_group`]):
//!
//! * an **assigned** partition starts a task: restore from its checkpoint,
//!   replay to the committed offset, continue ([`run_task`]);
//! * a **revoked** partition's task is stopped — final emit and checkpoint —
//!   *before* the revocation is released, so the next owner restores
//!   exactly where this one stopped. Checkpoints are per partition, so only
//!   what moves is handed over;
//! * a **failed** task (the bus went away, a checkpoint could not be
//!   written, it met a newer owner's round) is logged, shown in its status
//!   and restarted from its last checkpoint with exponential backoff —
//!   state is rebuilt, never patched;
//! * on **shutdown** every task stops with a final checkpoint, then the
//!   process leaves the group, so the next owner starts from them.
//!
//! On the embedded log one process owns every partition; on Kafka the
//! consumer-group protocol splits them among the members.
//!
//! The [`TaskSet`] holds the status of the tasks running now; the pipeline
//! reads it for `GET /v1/pipelines` and its watermark
//! ([`tasks_watermark`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use riffle_core::time::Clock;
use riffle_log::{BusError, EventBus, Membership, OwnershipChange, TopicConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::CheckpointStore;
use crate::error::{Result, StreamError};
use crate::operator::Operator;
use crate::runtime::{run_task, SinkRecord, SourceBatch, TaskConfig, TaskSnapshot, TaskStatus};

/// How a pipeline builds the task of one input partition.
pub trait PartitionTasks: Send + Sync + 'static {
    type Operator: for<'a> Operator<In<'a> = SourceBatch<'a>, Out = SinkRecord> + 'static;

    /// The pipeline's name (logs).
    fn pipeline(&self) -> &str;

    /// The task of `partition`: its input, sinks, repartition topic and
    /// intervals.
    fn task_config(&self, partition: u32) -> TaskConfig;

    /// A fresh operator for `partition`; the runtime restores its state
    /// from the checkpoint. Called again for every restart.
    fn operator(&self, partition: u32) -> Result<Self::Operator>;
}

/// The status of the tasks this process runs now, by partition. Cheap to
/// clone; readers take snapshots while the supervisor adds and removes.
#[derive(Debug, Clone, Default)]
pub struct TaskSet(Arc<Mutex<BTreeMap<u32, Arc<TaskStatus>>>>);

impl TaskSet {
    pub fn snapshots(&self) -> Vec<TaskSnapshot> {
        self.0.lock().values().map(|t| t.snapshot()).collect()
    }

    pub fn partitions(&self) -> Vec<u32> {
        self.0.lock().keys().copied().collect()
    }

    fn insert(&self, partition: u32, status: Arc<TaskStatus>) {
        self.0.lock().insert(partition, status);
    }

    fn remove(&self, partition: u32) {
        self.0.lock().remove(&partition);
    }
}

/// Restart delays of failed tasks: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

/// A task this process runs for a partition it owns.
struct RunningTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Follows an ownership group and runs a task per owned partition (see
/// the module docs).
pub struct Supervisor<P: PartitionTasks> {
    pipeline: Arc<P>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    clock: Arc<dyn Clock>,
    tasks: TaskSet,
    backoff: Backoff,
    running: BTreeMap<u32, RunningTask>,
}

impl<P: PartitionTasks> Supervisor<P> {
    pub fn new(
        pipeline: Arc<P>,
        bus: Arc<dyn EventBus>,
        checkpoints: Arc<dyn CheckpointStore>,
        clock: Arc<dyn Clock>,
        tasks: TaskSet,
    ) -> Self {
        Supervisor {
            pipeline,
            bus,
            checkpoints,
            clock,
            tasks,
            backoff: Backoff::default(),
            running: BTreeMap::new(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Joins ownership group `group` on `topic` and spawns [`Self::run`].
    pub async fn spawn(
        self,
        group: &str,
        topic: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>> {
        let membership = self.bus.join_ownership_group(group, topic).await?;
        Ok(tokio::spawn(self.run(membership, shutdown)))
    }

    /// Follows `membership` until `shutdown` turns true or the group ends,
    /// then stops every task (final checkpoints) and leaves the group.
    pub async fn run(
        mut self,
        mut membership: Box<dyn Membership>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let name = self.pipeline.pipeline().to_owned();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let change = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                change = membership.next_change() => change,
            };
            match change {
                Some(OwnershipChange::Assigned(partitions)) => {
                    tracing::info!(pipeline = %name, ?partitions, "partitions assigned");
                    for partition in partitions {
                        self.start_task(partition);
                    }
                }
                Some(OwnershipChange::Revoked {
                    partitions,
                    release,
                }) => {
                    tracing::info!(pipeline = %name, ?partitions, "partitions revoked");
                    self.stop_tasks(&partitions).await;
                    let _ = release.send(());
                }
                None => {
                    tracing::warn!(pipeline = %name, "ownership group ended");
                    break;
                }
            }
        }
        let all: Vec<u32> = self.running.keys().copied().collect();
        self.stop_tasks(&all).await;
        // Leaving the group after the final checkpoints lets the next owner
        // start from them.
        drop(membership);
    }

    fn start_task(&mut self, partition: u32) {
        if self.running.contains_key(&partition) {
            return;
        }
        let config = self.pipeline.task_config(partition);
        let status = Arc::new(TaskStatus::new(partition));
        self.tasks.insert(partition, status.clone());
        let (stop, stopped) = watch::channel(false);
        let (pipeline, bus, checkpoints, clock, backoff) = (
            self.pipeline.clone(),
            self.bus.clone(),
            self.checkpoints.clone(),
            self.clock.clone(),
            self.backoff,
        );
        let handle = tokio::spawn(async move {
            let mut delay = backoff.initial;
            loop {
                let result = match pipeline.operator(partition) {
                    Ok(operator) => {
                        run_task(
                            bus.clone(),
                            checkpoints.clone(),
                            clock.clone(),
                            config.clone(),
                            operator,
                            status.clone(),
                            stopped.clone(),
                        )
                        .await
                    }
                    Err(error) => Err(error),
                };
                match result {
                    Ok(_) => return,
                    Err(_) if *stopped.borrow() => return,
                    Err(error) => {
                        // Also a task that could not be built or was refused
                        // before it ran: retried too (the status shows why),
                        // so a fixed bus or store needs no restart.
                        tracing::warn!(
                            pipeline = %pipeline.pipeline(),
                            partition,
                            %error,
                            retry_in_ms = delay.as_millis() as u64,
                            "task failed; restarting it from its last checkpoint"
                        );
                        status.update(|s| {
                            s.state = "failed";
                            s.error = Some(error.to_string());
                        });
                    }
                }
                let mut stopped = stopped.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                delay = (delay * 2).min(backoff.max);
            }
        });
        self.running.insert(partition, RunningTask { stop, handle });
    }

    async fn stop_tasks(&mut self, partitions: &[u32]) {
        let mut stopping = Vec::new();
        for partition in partitions {
            if let Some(task) = self.running.remove(partition) {
                let _ = task.stop.send(true);
                stopping.push((*partition, task.handle));
            }
        }
        for (partition, handle) in stopping {
            let _ = handle.await;
            self.tasks.remove(partition);
        }
    }
}

/// How the watermark of a pipeline follows its tasks' (see
/// [`tasks_watermark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// A caught-up partition without records for this long is idle.
    pub idle_timeout_ms: i64,
    /// When every partition is idle, the watermark is at least wall clock
    /// minus this.
    pub out_of_orderness_ms: i64,
}

impl IdlePolicy {
    /// Whether `task` is caught up and has been quiet for the idle timeout.
    pub fn is_idle(&self, task: &TaskSnapshot, now_ms: i64) -> bool {
        task.processed_offset >= task.end_offset
            && task
                .last_record_ms
                .is_none_or(|at| now_ms - at >= self.idle_timeout_ms)
    }
}

/// The watermark over `tasks`: the minimum over non-idle tasks (`None`
/// while one of them has none yet); when all are idle, the newest task
/// watermark or wall clock − out-of-orderness, whichever is later.
pub fn tasks_watermark(tasks: &[TaskSnapshot], policy: IdlePolicy, now_ms: i64) -> Option<i64> {
    let mut active_min: Option<i64> = None;
    let mut any_active = false;
    for task in tasks {
        if policy.is_idle(task, now_ms) {
            continue;
        }
        any_active = true;
        // An active partition without a watermark yet holds everything.
        let watermark = task.watermark?;
        active_min = Some(active_min.map_or(watermark, |m| m.min(watermark)));
    }
    if any_active {
        return active_min;
    }
    let newest = tasks.iter().filter_map(|t| t.watermark).max();
    let by_clock = now_ms - policy.out_of_orderness_ms;
    Some(newest.map_or(by_clock, |w| w.max(by_clock)))
}

/// Creates topic `name` with `partitions` partitions (settings from
/// `template`) if it is missing; returns its partition count. Fails if it
/// exists with fewer.
pub async fn ensure_topic(
    bus: &dyn EventBus,
    name: &str,
    partitions: u32,
    template: &TopicConfig,
) -> Result<u32> {
    let refuse = |reason: String| StreamError::Topic {
        topic: name.to_owned(),
        reason,
    };
    match bus.partition_count(name).await {
        Ok(existing) if existing >= partitions => Ok(existing),
        Ok(existing) => Err(refuse(format!(
            "has {existing} partitions, the pipeline needs at least {partitions}"
        ))),
        Err(BusError::TopicNotFound(_)) => {
            let config = TopicConfig {
                partitions,
                ..template.clone()
            };
            match bus.create_topic(name, config).await {
                Ok(_) | Err(BusError::TopicExists(_)) => Ok(partitions),
                Err(error) => Err(refuse(format!("cannot be created: {error}"))),
            }
        }
        Err(error) => Err(refuse(error.to_string())),
    }
}
