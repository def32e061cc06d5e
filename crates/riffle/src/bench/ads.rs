//! `riffle bench ads`: sustained aggregation throughput of the ad click
//! pipeline reading from the embedded log.
//!
//! The log is pre-filled with generated `ad_click` events (Zipf over
//! `--ads` ads, binary-encoded and partitioned by `ad_id` exactly as ingest
//! does), then the pipeline tasks run over it as in `riffle serve` — output
//! and input offsets committed in bus transactions every emit interval,
//! checkpoints every `--checkpoint-ms` — once with per-minute counts for
//! "no filter" plus the configured filters only, once adding the sliding
//! top-N windows. Reported: wall-clock throughput, process CPU seconds
//! (getrusage) and events per CPU-second, the honest per-core figure.
//!
//! `--mispartitioned 0,100` repeats both modes over inputs where that
//! percentage of the clicks sits on a partition other than its ad's (as a
//! producer with another partitioner writes them): those go through the
//! repartition topic to the task owning the ad, and a run ends when every
//! forwarded click is processed too. The difference is the cost of the
//! forward path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use riffle_ads::AdsConfig;
use riffle_ads::{AdClickOperator, AdsSpec};
use riffle_core::config::{LogConfig, Section};
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{Clock, SystemClock};
use riffle_log::{Admin, EmbeddedLog, EventBus, LogOptions, Producer, RecordBatch, TopicConfig};
use riffle_sim::ads::{AdsConfig as SimConfig, AdsGenerator};
use riffle_stream::{
    run_task, CheckpointStore, FsCheckpointStore, RepartitionConfig, TaskConfig, TaskStatus,
};
use tokio::sync::watch;

pub struct AdsBenchArgs {
    pub events: u64,
    pub ads: u32,
    pub partitions: u32,
    pub checkpoint_ms: u64,
    pub emit_ms: u64,
    pub rate: f64,
    /// Percentages of clicks written to a partition other than their ad's.
    pub mispartitioned: Vec<u32>,
    pub dir: Option<std::path::PathBuf>,
}

/// The input topic holding `pct` % mis-partitioned clicks.
fn input_topic(pct: u32) -> String {
    if pct == 0 {
        "ad_clicks".into()
    } else {
        format!("ad_clicks.mis{pct}")
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own and pass by pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn prefill(
    log: &EmbeddedLog,
    args: &AdsBenchArgs,
    template: &TopicConfig,
    mispartitioned: u32,
) -> anyhow::Result<()> {
    let topic = input_topic(mispartitioned);
    // Generated event times are in the past: keep the data whatever its
    // age, or time retention would delete it under the running tasks.
    let config = TopicConfig {
        partitions: args.partitions,
        retention_ms: -1,
        ..template.clone()
    };
    log.create_topic(&topic, config).await?;
    let mut generator = AdsGenerator::new(SimConfig {
        ads: args.ads,
        rate: args.rate,
        count: Some(args.events),
        duplicate_fraction: 0.01,
        out_of_order_fraction: 0.05,
        ..SimConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let limits = ParseLimits {
        now_ms: i64::MAX / 2,
        ..ParseLimits::new(0)
    };
    let mut batches: Vec<RecordBatch> = (0..args.partitions).map(|_| RecordBatch::new()).collect();
    let mut json = Vec::with_capacity(256);
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(click) = generator.next_event() {
        n += 1;
        json.clear();
        generator.write_json(&click, &mut json);
        let event = parse_event(&json, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = event.partition_key().as_bytes();
        let partition = super::harness::producer_partition(key, args.partitions, n, mispartitioned);
        let batch = &mut batches[partition as usize];
        batch.push_encoded(Some(key), event.event_time, |out| event.encode(out));
        if batch.len() >= 10_000 {
            let full = std::mem::take(batch);
            log.append(&topic, partition, full).await?;
        }
    }
    for (partition, batch) in batches.into_iter().enumerate() {
        if !batch.is_empty() {
            log.append(&topic, partition as u32, batch).await?;
        }
    }
    println!(
        "prefill {topic}: {} events ({mispartitioned} % not on their ad's partition) over {} partitions, {} ads (Zipf 1.1), in {:.1} s",
        args.events,
        args.partitions,
        args.ads,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run_mode(
    log: &EmbeddedLog,
    checkpoints: &Arc<dyn CheckpointStore>,
    args: &AdsBenchArgs,
    template: &TopicConfig,
    name: &str,
    with_top: bool,
    mispartitioned: u32,
) -> anyhow::Result<()> {
    let input = input_topic(mispartitioned);
    let name = format!("{name}-mis{mispartitioned}");
    let mut config = AdsConfig::defaults();
    config.pipeline = format!("bench-{name}");
    config.checkpoint_interval_ms = args.checkpoint_ms;
    config.emit_interval_ms = args.emit_ms;
    if !with_top {
        config.popular.clear();
    }
    let spec = Arc::new(AdsSpec::from_config(&config).map_err(|e| anyhow::anyhow!(e))?);
    let aggregates = format!("{}.aggregates", config.pipeline);
    let late = config.late_topic();
    let repartition = config.repartition_topic();
    for topic in [&aggregates, &late, &repartition] {
        log.create_topic(
            topic,
            TopicConfig {
                partitions: args.partitions,
                ..template.clone()
            },
        )
        .await?;
    }
    let bus: Arc<dyn EventBus> = Arc::new(log.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ends = log.end_offsets();
    let mut input_ends = Vec::new();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut statuses = Vec::new();
    for partition in 0..args.partitions {
        let end = ends
            .iter()
            .find(|(tp, _, _)| tp.topic == input && tp.partition == partition)
            .map(|(_, _, end)| *end)
            .unwrap_or(0);
        input_ends.push(end);
        let status = Arc::new(TaskStatus::new(partition));
        statuses.push(status.clone());
        let task = TaskConfig {
            pipeline: config.pipeline.clone(),
            input_topic: input.clone(),
            partition,
            sinks: vec![
                (riffle_ads::operator::AGGREGATES_SINK, aggregates.clone()),
                (riffle_ads::operator::LATE_SINK, late.clone()),
            ],
            repartition: Some(RepartitionConfig {
                topic: repartition.clone(),
                partitions: args.partitions,
            }),
            emit_interval: Duration::from_millis(config.emit_interval_ms),
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            max_poll_bytes: 1 << 20,
            // Unbounded: forwarded clicks arrive after a task's own input
            // ends; the run stops when everything is processed (below).
            stop_at: None,
        };
        let operator = AdClickOperator::new(spec.clone(), partition)?;
        handles.push(tokio::spawn(run_task(
            bus.clone(),
            checkpoints.clone(),
            clock.clone(),
            task,
            operator,
            status,
            stop_rx.clone(),
        )));
    }
    // Done: every task processed its input to the end, and every forwarded
    // click that was committed has been processed by its owner.
    loop {
        let snapshots: Vec<_> = statuses.iter().map(|s| s.snapshot()).collect();
        if let Some(failed) = snapshots.iter().find(|s| s.state == "failed") {
            anyhow::bail!("task {} failed: {:?}", failed.partition, failed.error);
        }
        let inputs_done = snapshots
            .iter()
            .zip(&input_ends)
            .all(|(s, end)| s.committed_offset >= *end);
        let out: u64 = snapshots.iter().map(|s| s.forwarded_out).sum();
        let fed: u64 = snapshots.iter().map(|s| s.forwarded_in).sum();
        if inputs_done && fed >= out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop_tx.send(true)?;
    for handle in handles {
        handle.await??;
    }
    let forwarded: u64 = statuses.iter().map(|s| s.snapshot().forwarded_out).sum();
    let cpu = cpu_seconds() - cpu_before;
    let (mut records_out, mut checkpoints_taken, mut checkpoint_bytes) = (0u64, 0u64, 0u64);
    for status in &statuses {
        let s = status.snapshot();
        records_out += s.records_out;
        if let Some(c) = s.last_checkpoint {
            checkpoints_taken += c.id;
            checkpoint_bytes += c.bytes;
        }
    }
    let windows = if with_top {
        spec.popular
            .iter()
            .map(|(m, f)| format!("{m}min/filter {f}"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        "none".into()
    };
    println!(
        "{name}: {} events in {seconds:.2} s = {:.0} events/s wall; CPU {cpu:.2} s = {:.0} events per CPU-second; {forwarded} forwarded; filters {} + no-filter, top-N windows: {windows} (top_n {}); {records_out} output records; {checkpoints_taken} checkpoints, last ones {checkpoint_bytes} bytes in total",
        args.events,
        args.events as f64 / seconds,
        args.events as f64 / cpu.max(1e-9),
        spec.filters.slots() - 1,
        spec.top_n,
    );
    Ok(())
}

pub async fn bench_ads(args: AdsBenchArgs) -> anyhow::Result<()> {
    let (dir, _guard) = super::bench_dir(args.dir.clone(), "riffle-bench-ads-")?;
    let options = LogOptions::from_config(&LogConfig::defaults());
    let template = options.default_topic.clone();
    let log = EmbeddedLog::open(dir.join("log"), options)?;
    for &pct in &args.mispartitioned {
        anyhow::ensure!(pct <= 100, "--mispartitioned: {pct} is not a percentage");
        prefill(&log, &args, &template, pct).await?;
    }
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(FsCheckpointStore::new(dir.join("checkpoints")));
    for &pct in &args.mispartitioned {
        run_mode(&log, &checkpoints, &args, &template, "counts", false, pct).await?;
        run_mode(
            &log,
            &checkpoints,
            &args,
            &template,
            "counts_top",
            true,
            pct,
        )
        .await?;
    }
    log.close()?;
    Ok(())
}
