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

use std::sync::Arc;
use std::time::{Duration, Instant};

use riffle_ads::{AdClickOperator, AdsSpec};
use riffle_core::config::Config;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{Clock, SystemClock};
use riffle_log::{
    partition_for_key, Admin, EmbeddedLog, EventBus, LogOptions, Producer, RecordBatch, TopicConfig,
};
use riffle_sim::ads::{AdsConfig as SimConfig, AdsGenerator};
use riffle_stream::{run_task, CheckpointStore, FsCheckpointStore, TaskConfig, TaskStatus};
use tokio::sync::watch;

pub struct AdsBenchArgs {
    pub events: u64,
    pub ads: u32,
    pub partitions: u32,
    pub checkpoint_ms: u64,
    pub emit_ms: u64,
    pub rate: f64,
    pub dir: Option<std::path::PathBuf>,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn prefill(
    log: &EmbeddedLog,
    args: &AdsBenchArgs,
    template: &TopicConfig,
) -> anyhow::Result<()> {
    // Generated event times are in the past: keep the data whatever its
    // age, or time retention would delete it under the running tasks.
    let config = TopicConfig {
        partitions: args.partitions,
        retention_ms: -1,
        ..template.clone()
    };
    log.create_topic("ad_clicks", config).await?;
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
    while let Some(click) = generator.next_event() {
        json.clear();
        generator.write_json(&click, &mut json);
        let event = parse_event(&json, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = event.partition_key().as_bytes();
        let partition = partition_for_key(key, args.partitions);
        let batch = &mut batches[partition as usize];
        batch.push_encoded(Some(key), event.event_time, |out| event.encode(out));
        if batch.len() >= 10_000 {
            let full = std::mem::take(batch);
            log.append("ad_clicks", partition, full).await?;
        }
    }
    for (partition, batch) in batches.into_iter().enumerate() {
        if !batch.is_empty() {
            log.append("ad_clicks", partition as u32, batch).await?;
        }
    }
    println!(
        "prefill: {} events over {} partitions, {} ads (Zipf 1.1), in {:.1} s",
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
) -> anyhow::Result<()> {
    let mut config = Config::defaults().ads;
    config.pipeline = format!("bench-{name}");
    config.checkpoint_interval_ms = args.checkpoint_ms;
    config.emit_interval_ms = args.emit_ms;
    if !with_top {
        config.popular.clear();
    }
    let spec = Arc::new(AdsSpec::from_config(&config).map_err(|e| anyhow::anyhow!(e))?);
    let aggregates = format!("{}.aggregates", config.pipeline);
    let late = config.late_topic();
    for topic in [&aggregates, &late] {
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
    let (_stop_tx, stop_rx) = watch::channel(false);
    let ends = log.end_offsets();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut statuses = Vec::new();
    for partition in 0..args.partitions {
        let end = ends
            .iter()
            .find(|(tp, _, _)| tp.topic == "ad_clicks" && tp.partition == partition)
            .map(|(_, _, end)| *end)
            .unwrap_or(0);
        let status = Arc::new(TaskStatus::new(partition));
        statuses.push(status.clone());
        let task = TaskConfig {
            pipeline: config.pipeline.clone(),
            input_topic: "ad_clicks".into(),
            partition,
            sinks: vec![aggregates.clone(), late.clone()],
            emit_interval: Duration::from_millis(config.emit_interval_ms),
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            max_poll_bytes: 1 << 20,
            stop_at: Some(end),
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
    for handle in handles {
        handle.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
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
        "{name}: {} events in {seconds:.2} s = {:.0} events/s wall; CPU {cpu:.2} s = {:.0} events per CPU-second; filters {} + no-filter, top-N windows: {windows} (top_n {}); {records_out} output records; {checkpoints_taken} checkpoints, last ones {checkpoint_bytes} bytes in total",
        args.events,
        args.events as f64 / seconds,
        args.events as f64 / cpu.max(1e-9),
        spec.filters.slots() - 1,
        spec.top_n,
    );
    Ok(())
}

pub async fn bench_ads(args: AdsBenchArgs) -> anyhow::Result<()> {
    let (dir, _guard) = crate::bench::bench_dir(args.dir.clone(), "riffle-bench-ads-")?;
    let options = LogOptions::from_config(&Config::defaults().log);
    let template = options.default_topic.clone();
    let log = EmbeddedLog::open(dir.join("log"), options)?;
    prefill(&log, &args, &template).await?;
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(FsCheckpointStore::new(dir.join("checkpoints")));
    run_mode(&log, &checkpoints, &args, &template, "counts", false).await?;
    run_mode(&log, &checkpoints, &args, &template, "counts_top", true).await?;
    log.close()?;
    Ok(())
}
