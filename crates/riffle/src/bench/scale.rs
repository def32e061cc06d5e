//! `riffle bench scale-out`: ad click aggregation spread over `riffle serve
//! --roles process` child processes, on Kafka (1, 2, 3 … processes sharing
//! the input by the consumer-group protocol) and on the embedded log (one
//! process: the embedded log lives in one process), same workload, same
//! run; then the rebalance time after a SIGKILL.
//!
//! Each run gets its own pipeline name and topics, pre-filled with the same
//! generated clicks (binary-encoded and keyed by `ad_id`, as ingest writes
//! them). Throughput is the steady-state rate: the records committed
//! between 10 % and 90 % of the input over the time between those points
//! (start-up, group joins and restores are outside the window).
//! Progress is read from the committed offsets of the pipeline's group;
//! the members' CPU time over the same window (from /proc) gives events
//! per CPU-second.
//!
//! `--mispartitioned 0,100` repeats the Kafka runs with that percentage of
//! the clicks on a partition other than their ad's (what a producer with
//! librdkafka's default partitioner writes): they are forwarded through the
//! repartition topic, and the per-CPU-second rates show what that costs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_log::kafka::{KafkaBus, KafkaOptions};
use riffle_log::{EmbeddedLog, EventBus, LogOptions, RecordBatch, TopicConfig};
use riffle_sim::ads::{AdsConfig as SimConfig, AdsGenerator};

use super::harness::{ServeChild, ServeOptions};

#[derive(Args, Debug, Clone)]
pub struct ScaleOutArgs {
    /// Kafka bootstrap servers (host:port,…) to run the Kafka side on.
    #[arg(long)]
    pub brokers: String,
    /// Events per run.
    #[arg(long, default_value_t = 400_000)]
    pub events: u64,
    /// Distinct ads (Zipf exponent 1.1).
    #[arg(long, default_value_t = 100_000)]
    pub ads: u32,
    /// Input partitions (the most tasks the processes can share).
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Process counts to measure on Kafka, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub processes: Vec<usize>,
    /// Percentages of clicks on a partition other than their ad's, comma-separated; the Kafka
    /// runs repeat for each.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub mispartitioned: Vec<u32>,
    /// librdkafka properties for every client, KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// Directory to work in (default: temporary, under the current directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A member process of a run: `riffle serve --roles process`. `kill` ends
/// it with SIGKILL; dropping it ends it at once (SIGTERM and its stdin
/// closed, see [`ServeOptions::exit_on_stdin_eof`]).
type Member = ServeChild;

/// CPU seconds (user + system) process `pid` has used, from /proc (0 once
/// it is gone).
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may hold spaces;
    // after it, field 3 (state) is index 0, utime (14) index 11, stime 12.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn members_cpu(members: &[Member]) -> f64 {
    members.iter().map(|m| cpu_seconds_of(m.pid())).sum()
}

fn generate(args: &ScaleOutArgs, mispartitioned: u32) -> anyhow::Result<Vec<(u32, RecordBatch)>> {
    let mut generator = AdsGenerator::new(SimConfig {
        ads: args.ads,
        rate: 50_000.0,
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
    let mut batches = Vec::new();
    let mut open: Vec<RecordBatch> = (0..args.partitions).map(|_| RecordBatch::new()).collect();
    let mut json = Vec::with_capacity(256);
    let mut n = 0u64;
    while let Some(click) = generator.next_event() {
        n += 1;
        json.clear();
        generator.write_json(&click, &mut json);
        let event = parse_event(&json, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = event.partition_key().as_bytes();
        let partition = super::harness::producer_partition(key, args.partitions, n, mispartitioned);
        let batch = &mut open[partition as usize];
        batch.push_encoded(Some(key), event.event_time, |out| event.encode(out));
        if batch.len() >= 2_000 {
            batches.push((partition, std::mem::take(batch)));
        }
    }
    for (partition, batch) in open.into_iter().enumerate() {
        if !batch.is_empty() {
            batches.push((partition as u32, batch));
        }
    }
    Ok(batches)
}

async fn fill(
    bus: &dyn EventBus,
    topic: &str,
    batches: &[(u32, RecordBatch)],
    partitions: u32,
) -> anyhow::Result<()> {
    bus.create_topic(
        topic,
        TopicConfig {
            partitions,
            retention_ms: -1,
            retention_bytes: -1,
            segment_bytes: 64 << 20,
        },
    )
    .await?;
    for chunk in batches.chunks(16) {
        let appends = chunk
            .iter()
            .map(|(partition, batch)| bus.append(topic, *partition, batch.clone()));
        for result in futures::future::join_all(appends).await {
            result?;
        }
    }
    Ok(())
}

/// One measured run's view of its pipeline group.
struct Run {
    pipeline: String,
    input: String,
    total: u64,
}

impl Run {
    fn new(tag: &str, total: u64) -> Run {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let pipeline = format!("bench-{tag}-{nanos}");
        Run {
            input: format!("{pipeline}.clicks"),
            pipeline,
            total,
        }
    }

    /// `riffle serve --roles process` for this run's pipeline.
    fn spawn(
        &self,
        dir: &Path,
        index: usize,
        config: &Path,
        kafka: bool,
    ) -> anyhow::Result<Member> {
        let data = dir.join(format!("{}-{index}", self.pipeline));
        std::fs::create_dir_all(&data)?;
        let mut env = vec![
            ("RIFFLE__ADS__PIPELINE".into(), self.pipeline.clone()),
            ("RIFFLE__ADS__INPUT_TOPIC".into(), self.input.clone()),
            (
                "RIFFLE__ADS__AGGREGATES_TOPIC".into(),
                format!("{}.aggregates", self.pipeline),
            ),
            ("RIFFLE__ADS__ARCHIVE_DIR".into(), String::new()),
            // Commits every 50 ms: progress is observed at that grain, so
            // the measured window must span many of them.
            ("RIFFLE__ADS__EMIT_INTERVAL_MS".into(), "50".into()),
        ];
        if !kafka {
            env.push(("RIFFLE__BUS__KIND".into(), "embedded".into()));
        }
        ServeChild::start(ServeOptions {
            roles: Some("process".into()),
            args: vec!["--config".into(), config.into()],
            env,
            stderr: Some(data.with_extension("log")),
            // Exits with the benchmark, however it ends.
            exit_on_stdin_eof: true,
            ..ServeOptions::new(data)
        })
    }
}

/// Committed input offsets of a run, per partition.
enum Progress<'a> {
    /// From the brokers (the group's committed offsets).
    Kafka(&'a dyn EventBus),
    /// From the one process's `GET /v1/pipelines` (the embedded log is
    /// inside that process), at its base URL.
    Http(reqwest::Client, String),
}

impl Progress<'_> {
    async fn committed(&self, run: &Run) -> anyhow::Result<BTreeMap<u32, u64>> {
        match self {
            Progress::Kafka(bus) => Ok(bus.committed_offsets(&run.pipeline, &run.input).await?),
            Progress::Http(client, base) => {
                let url = format!("{base}/v1/pipelines");
                let Ok(response) = client.get(&url).send().await else {
                    return Ok(BTreeMap::new());
                };
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                Ok(body["pipelines"][0]["partitions"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                (
                                    p["partition"].as_u64().unwrap_or(0) as u32,
                                    p["committed_offset"].as_u64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    async fn sum(&self, run: &Run) -> anyhow::Result<u64> {
        Ok(self.committed(run).await?.values().sum())
    }
}

/// The steady-state rate: records committed between 10 % and 90 % of
/// `total` over the time between those two points (start-up, group joins,
/// restores and the last emit are outside the window). Returns (records,
/// seconds).
async fn measure(
    progress: &Progress<'_>,
    run: &Run,
    members: &[Member],
    deadline: Duration,
) -> anyhow::Result<Measured> {
    let until = Instant::now() + deadline;
    let (low, high) = (run.total / 10, run.total * 9 / 10);
    let mut start: Option<(Instant, u64, f64)> = None;
    loop {
        let sum = progress.sum(run).await?;
        let now = Instant::now();
        match start {
            None if sum >= low => start = Some((now, sum, members_cpu(members))),
            Some((at, base, cpu)) if sum >= high => {
                return Ok(Measured {
                    records: sum - base,
                    seconds: now.duration_since(at).as_secs_f64(),
                    cpu: members_cpu(members) - cpu,
                });
            }
            _ => {}
        }
        anyhow::ensure!(
            now < until,
            "{}: only {sum} of {} committed",
            run.pipeline,
            run.total
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What [`measure`] saw in its window.
struct Measured {
    records: u64,
    seconds: f64,
    /// CPU seconds of every member.
    cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }

    fn per_cpu(&self) -> f64 {
        self.records as f64 / self.cpu.max(1e-9)
    }
}

/// Three members process a backlog (8× the workload); one is SIGKILLed
/// about a second after 5 % is done. Reports
/// the rate before the kill, how long each orphaned partition stood still
/// (kill → its first commit by a new owner, the handoff time), and the rate
/// of the survivors once every partition moves again.
async fn rebalance(
    args: &ScaleOutArgs,
    kafka: &dyn EventBus,
    work: &Path,
    config: &Path,
) -> anyhow::Result<()> {
    let big = ScaleOutArgs {
        events: args.events * 8,
        ..args.clone()
    };
    let batches = generate(&big, 0)?;
    let run = Run::new("rebalance", big.events);
    fill(kafka, &run.input, &batches, args.partitions).await?;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(run.spawn(work, i, config, true)?);
    }
    let progress = Progress::Kafka(kafka);
    let until = Instant::now() + Duration::from_secs(600);
    // Warm up to 5 %, then take the pre-kill rate over 1 s.
    while progress.sum(&run).await? < run.total / 20 {
        anyhow::ensure!(Instant::now() < until, "rebalance run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, s0) = (Instant::now(), progress.sum(&run).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = progress.committed(&run).await?;
    let pre_rate = (before.values().sum::<u64>() - s0) as f64 / t0.elapsed().as_secs_f64();
    let killed_at = Instant::now();
    members[0].kill()?;
    // A partition "moves again" at its first commit after the kill.
    let at_kill = progress.committed(&run).await?;
    let mut moved: BTreeMap<u32, Duration> = BTreeMap::new();
    let mut all_moving: Option<(Instant, u64)> = None;
    loop {
        let now = progress.committed(&run).await?;
        for (partition, offset) in &now {
            let start = at_kill.get(partition).copied().unwrap_or(0);
            let total_for_partition = *offset;
            if total_for_partition > start && !moved.contains_key(partition) {
                moved.insert(*partition, killed_at.elapsed());
            }
        }
        let sum: u64 = now.values().sum();
        let done = sum >= run.total;
        if all_moving.is_none() && (moved.len() == args.partitions as usize || done) {
            all_moving = Some((Instant::now(), sum));
        }
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "rebalance run stalled at {sum}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (moving_at, moving_sum) = all_moving.expect("set before done");
    let post_seconds = moving_at.elapsed().as_secs_f64();
    let post_rate = (run.total - moving_sum) as f64 / post_seconds.max(1e-9);
    let handoff = moved.values().max().copied().unwrap_or_default();
    println!(
        "rebalance (3 → 2 processes, SIGKILL at {:.0}% of {} events): rate before kill {pre_rate:.0} events/s",
        100.0 * at_kill.values().sum::<u64>() as f64 / run.total as f64,
        run.total
    );
    println!(
        "  kill → every partition committing again: {:.2} s (per partition: {})",
        handoff.as_secs_f64(),
        moved
            .iter()
            .map(|(p, d)| format!("{p}: {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  survivors afterwards: {post_rate:.0} events/s over {post_seconds:.1} s ({:.0}% of the pre-kill rate)",
        100.0 * post_rate / pre_rate
    );
    drop(members);
    Ok(())
}

pub async fn bench_scale_out(args: ScaleOutArgs) -> anyhow::Result<()> {
    super::print_machine();
    let (work, _temporary) = super::bench_dir(args.dir.clone(), "scale-out")?;
    let mut options = KafkaOptions::new(args.brokers.clone());
    let mut properties_toml = String::new();
    for property in &args.properties {
        let (key, value) = property
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--property {property:?}: expected KEY=VALUE"))?;
        options.properties.insert(key.into(), value.into());
        properties_toml.push_str(&format!("{key:?} = {value:?}\n"));
    }
    let kafka: Arc<dyn EventBus> = Arc::new(KafkaBus::connect(options).await?);
    let config = work.join("scale-out.toml");
    std::fs::write(
        &config,
        format!(
            "[bus]\nkind = \"kafka\"\n\n[bus.kafka]\nbrokers = {brokers:?}\ncheckpoint_dir = {checkpoints:?}\n\n[ingest]\ntopic_partitions = {partitions}\n\n[bus.kafka.properties]\n{properties_toml}",
            brokers = args.brokers,
            checkpoints = work.join("checkpoints").display().to_string(),
            partitions = args.partitions,
        ),
    )?;
    let started = Instant::now();
    let batches = generate(&args, 0)?;
    println!(
        "workload: {} ad_click events, {} ads (Zipf 1.1), {} partitions, generated in {:.1} s",
        args.events,
        args.ads,
        args.partitions,
        started.elapsed().as_secs_f64()
    );
    let deadline = Duration::from_secs(600);

    // Embedded: the log lives in the one process that runs every task.
    {
        let run = Run::new("embedded", args.events);
        let data = work.join(format!("{}-0", run.pipeline));
        let log = EmbeddedLog::open(data.join("log"), LogOptions::default())?;
        fill(&log, &run.input, &batches, args.partitions).await?;
        log.close()?;
        let member = run.spawn(&work, 0, &config, false)?;
        let progress = Progress::Http(reqwest::Client::new(), member.base().to_string());
        let members = [member];
        let m = measure(&progress, &run, &members, deadline).await?;
        drop(members);
        println!(
            "embedded log, 1 process: {} records in {:.2} s = {:.0} events/s; {:.0} events per CPU-second",
            m.records,
            m.seconds,
            m.rate(),
            m.per_cpu()
        );
    }

    let mut rates = Vec::new();
    for &pct in &args.mispartitioned {
        anyhow::ensure!(pct <= 100, "--mispartitioned: {pct} is not a percentage");
        let batches = if pct == 0 {
            batches.clone()
        } else {
            generate(&args, pct)?
        };
        for &n in &args.processes {
            let run = Run::new(&format!("kafka{n}-mis{pct}"), args.events);
            fill(kafka.as_ref(), &run.input, &batches, args.partitions).await?;
            let members: Vec<Member> = (0..n)
                .map(|i| run.spawn(&work, i, &config, true))
                .collect::<anyhow::Result<_>>()?;
            let m = measure(&Progress::Kafka(kafka.as_ref()), &run, &members, deadline).await?;
            drop(members);
            if pct == 0 {
                rates.push((n, m.rate()));
            }
            println!(
                "kafka, {n} process(es), {pct} % mis-partitioned: {} records in {:.2} s = {:.0} events/s; {:.0} events per CPU-second (riffle processes)",
                m.records,
                m.seconds,
                m.rate(),
                m.per_cpu()
            );
        }
    }

    if let (Some(one), Some(best)) = (
        rates.first(),
        rates.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        println!(
            "scaling on kafka: {} process(es) {:.2}x of 1 process",
            best.0,
            best.1 / one.1
        );
    }
    rebalance(&args, kafka.as_ref(), &work, &config).await
}
