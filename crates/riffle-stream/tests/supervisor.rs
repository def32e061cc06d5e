//! The generic supervisor on the embedded log: a task per owned partition,
//! failed tasks restarted from their checkpoint, final checkpoints on
//! shutdown; sinks addressed by name; operator-declared counters in the
//! task status.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use riffle_core::time::{Clock, SystemClock};
use riffle_log::{EmbeddedLog, EventBus, LogOptions, RecordBatch, TopicConfig};
use riffle_stream::{
    run_task, Backoff, CheckpointStore, Collector, CounterSpec, FsCheckpointStore, Operator,
    OperatorProgress, PartitionTasks, Sink, SinkRecord, SourceBatch, StreamError, Supervisor,
    TaskConfig, TaskSet, TaskSnapshot, TaskStatus, MAX_COUNTERS,
};
use tokio::sync::watch;

const INPUT: &str = "numbers";
const OUTPUT: &str = "sums";
const PIPELINE: &str = "sum";
const PARTITIONS: u32 = 2;
const SUMS: Sink = Sink::named("sums");
const COUNTERS: &[CounterSpec] = &[CounterSpec {
    name: "odd",
    metric: "riffle_test_odd_total",
    help: "Odd numbers seen (supervisor test)",
}];

/// Sums the u64 values of its partition and emits the sum every tick;
/// counts odd values. With `fail_at`, fails when it meets that value.
struct Sum {
    sum: u64,
    odd: u64,
    dirty: bool,
    fail_at: Option<u64>,
    /// Refuses any state, even a fresh start's (a task that fails before
    /// it reads anything).
    refuse_restore: bool,
}

impl Operator for Sum {
    type In<'a> = SourceBatch<'a>;
    type Out = SinkRecord;

    fn name(&self) -> &str {
        "sum"
    }

    fn counters(&self) -> &'static [CounterSpec] {
        COUNTERS
    }

    fn progress(&self) -> OperatorProgress {
        let mut counters = [0; MAX_COUNTERS];
        counters[0] = self.odd;
        OperatorProgress {
            counters,
            ..OperatorProgress::default()
        }
    }

    fn process_batch<'a>(
        &mut self,
        batch: SourceBatch<'a>,
        _out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        for record in batch.iter() {
            let value = u64::from_le_bytes(record.value.try_into().expect("8 bytes"));
            if self.fail_at == Some(value) {
                return Err(StreamError::Operator {
                    operator: "sum".into(),
                    reason: format!("met {value}"),
                });
            }
            self.sum += value;
            self.odd += value % 2;
            self.dirty = true;
        }
        Ok(())
    }

    fn handle_tick(
        &mut self,
        _now: i64,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        if std::mem::take(&mut self.dirty) {
            out.collect(SinkRecord {
                sink: SUMS,
                key: None,
                value: self.sum.to_le_bytes().to_vec(),
                timestamp: 0,
                headers: Vec::new(),
            });
        }
        Ok(())
    }

    fn handle_checkpoint(
        &mut self,
        _id: riffle_stream::CheckpointId,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<Vec<u8>> {
        self.handle_tick(0, out)?;
        let mut state = self.sum.to_le_bytes().to_vec();
        state.extend_from_slice(&self.odd.to_le_bytes());
        Ok(state)
    }

    fn restore(&mut self, state: &[u8]) -> riffle_stream::Result<()> {
        if self.refuse_restore {
            return Err(StreamError::Operator {
                operator: "sum".into(),
                reason: "refuses to restore".into(),
            });
        }
        if !state.is_empty() {
            self.sum = u64::from_le_bytes(state[..8].try_into().expect("8"));
            self.odd = u64::from_le_bytes(state[8..16].try_into().expect("8"));
        }
        Ok(())
    }
}

/// Builds `Sum` tasks; the first operator built for partition 0 fails at
/// value `fail_at`.
struct SumTasks {
    builds: [AtomicU32; PARTITIONS as usize],
    fail_at: Option<u64>,
}

impl PartitionTasks for SumTasks {
    type Operator = Sum;

    fn pipeline(&self) -> &str {
        PIPELINE
    }

    fn task_config(&self, partition: u32) -> TaskConfig {
        config(partition, vec![(SUMS, OUTPUT.into())])
    }

    fn operator(&self, partition: u32) -> riffle_stream::Result<Sum> {
        let build = self.builds[partition as usize].fetch_add(1, Ordering::SeqCst);
        Ok(Sum {
            sum: 0,
            odd: 0,
            dirty: false,
            fail_at: self.fail_at.filter(|_| partition == 0 && build == 0),
            refuse_restore: false,
        })
    }
}

fn config(partition: u32, sinks: Vec<(Sink, String)>) -> TaskConfig {
    TaskConfig {
        pipeline: PIPELINE.into(),
        input_topic: INPUT.into(),
        partition,
        sinks,
        repartition: None,
        emit_interval: Duration::from_millis(10),
        checkpoint_interval: Duration::from_millis(50),
        max_poll_bytes: 1 << 16,
        stop_at: None,
    }
}

/// Values 1..=n, value v on partition v % PARTITIONS.
async fn bus_with_numbers(dir: &std::path::Path, n: u64) -> Arc<dyn EventBus> {
    let log = EmbeddedLog::open(dir.join("log"), LogOptions::default()).unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(log);
    for topic in [INPUT, OUTPUT] {
        bus.create_topic(
            topic,
            TopicConfig {
                partitions: PARTITIONS,
                retention_ms: -1,
                retention_bytes: -1,
                segment_bytes: 1 << 20,
            },
        )
        .await
        .unwrap();
    }
    for partition in 0..PARTITIONS {
        let mut batch = RecordBatch::new();
        for v in (1..=n).filter(|v| v % PARTITIONS as u64 == partition as u64) {
            batch.push(None, &v.to_le_bytes(), 0);
        }
        if !batch.is_empty() {
            bus.append(INPUT, partition, batch).await.unwrap();
        }
    }
    bus
}

/// Polls `tasks` until `done` holds for its snapshots (10 s at most).
async fn wait_for(tasks: &TaskSet, what: &str, done: impl Fn(&[TaskSnapshot]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshots = tasks.snapshots();
        if done(&snapshots) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {snapshots:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_every_owned_partition_restarts_failures_and_checkpoints_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100u64;
    let bus = bus_with_numbers(dir.path(), n).await;
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(FsCheckpointStore::new(dir.path().join("checkpoints")));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let factory = Arc::new(SumTasks {
        builds: Default::default(),
        fail_at: Some(50),
    });
    let tasks = TaskSet::default();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let supervisor = Supervisor::new(
        factory.clone(),
        bus.clone(),
        checkpoints.clone(),
        clock,
        tasks.clone(),
    )
    .with_backoff(Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
    });
    let handle = supervisor
        .spawn("sum.owners", INPUT, shutdown)
        .await
        .unwrap();

    let per_partition = n / PARTITIONS as u64;
    wait_for(&tasks, "both partitions processed", |s| {
        s.len() == PARTITIONS as usize
            && s.iter()
                .all(|t| t.state == "running" && t.processed_offset == per_partition)
    })
    .await;
    // Partition 0 failed once at 50 and was rebuilt; partition 1 never.
    assert_eq!(factory.builds[0].load(Ordering::SeqCst), 2);
    assert_eq!(factory.builds[1].load(Ordering::SeqCst), 1);
    let snapshots = tasks.snapshots();
    // The declared counter is in the status under its name: the odd
    // values are all on partition 1; nothing counted twice after the
    // restart.
    assert_eq!(snapshots[0].counters.get("odd"), Some(&0));
    assert_eq!(snapshots[1].counters.get("odd"), Some(&(n / 2)));
    let json = serde_json::to_value(&snapshots[1]).unwrap();
    assert_eq!(json["odd"], n / 2, "{json}");

    shutdown_tx.send(true).unwrap();
    handle.await.unwrap();
    assert!(tasks.partitions().is_empty(), "stopped tasks leave the set");
    for partition in 0..PARTITIONS {
        let checkpoint = checkpoints
            .load_latest(PIPELINE, INPUT, partition)
            .unwrap()
            .expect("a final checkpoint");
        assert_eq!(checkpoint.input_offset, per_partition);
        let expected: u64 = (1..=n)
            .filter(|v| v % PARTITIONS as u64 == partition as u64)
            .sum();
        assert_eq!(
            u64::from_le_bytes(checkpoint.state[..8].try_into().unwrap()),
            expected,
            "sum of partition {partition}"
        );
    }
}

/// Runs a `Sum` task of partition 0 with `sinks` and returns its error.
async fn failure_with_sinks(
    bus: Arc<dyn EventBus>,
    dir: &std::path::Path,
    sinks: Vec<(Sink, String)>,
) -> String {
    let (_tx, shutdown) = watch::channel(false);
    let op = Sum {
        sum: 0,
        odd: 0,
        dirty: false,
        fail_at: None,
        refuse_restore: false,
    };
    let result = run_task(
        bus,
        Arc::new(FsCheckpointStore::new(dir.join("checkpoints"))),
        Arc::new(SystemClock),
        config(0, sinks),
        op,
        Arc::new(TaskStatus::new(0)),
        shutdown,
    )
    .await;
    result.err().expect("the task fails").to_string()
}

#[tokio::test]
async fn a_record_for_an_unbound_sink_fails_the_task_naming_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_with_numbers(dir.path(), 4).await;
    let other = Sink::named("other");
    let error = failure_with_sinks(bus, dir.path(), vec![(other, OUTPUT.into())]).await;
    assert!(
        error.contains("\"sums\"") && error.contains("\"other\""),
        "{error}"
    );
}

#[tokio::test]
async fn sinks_bound_twice_or_to_the_forward_sink_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_with_numbers(dir.path(), 4).await;
    for (sinks, expected) in [
        (
            vec![(SUMS, OUTPUT.to_string()), (SUMS, INPUT.to_string())],
            "sink \"sums\" is bound twice",
        ),
        (
            vec![(Sink::FORWARD, OUTPUT.to_string())],
            "is the repartition step's, not a topic",
        ),
    ] {
        let error = failure_with_sinks(bus.clone(), dir.path(), sinks).await;
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test]
async fn declared_counters_are_in_the_status_before_the_first_report() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_with_numbers(dir.path(), 4).await;
    let (_tx, shutdown) = watch::channel(false);
    let status = Arc::new(TaskStatus::new(0));
    // The task fails while restoring, before it reads or reports anything.
    let op = Sum {
        sum: 0,
        odd: 0,
        dirty: false,
        fail_at: None,
        refuse_restore: true,
    };
    let result = run_task(
        bus,
        Arc::new(FsCheckpointStore::new(dir.path().join("checkpoints"))),
        Arc::new(SystemClock),
        config(0, vec![(SUMS, OUTPUT.into())]),
        op,
        status.clone(),
        shutdown,
    )
    .await;
    assert!(result.is_err(), "the restore was refused");
    let json = serde_json::to_value(status.snapshot()).unwrap();
    assert_eq!(json["state"], "failed", "{json}");
    assert_eq!(json["odd"], 0, "{json}");
}
