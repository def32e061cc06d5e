//! `riffle bench …`: reproducible measurements of the log and the ingest
//! path. Each prints the machine, the parameters and the numbers; peers
//! (raw disk bandwidth) are measured in the same run.

mod ads;
mod datasets;
mod features;
mod harness;
#[cfg(feature = "kafka")]
mod scale;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use riffle_core::config::FsyncPolicy;
use riffle_log::{Admin, EmbeddedLog, LogOptions, Producer, RecordBatch, TopicConfig};

use harness::{ms, now_ms, total_memory_gib, wait_http_ok, Latencies, ServeChild, ServeOptions};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable append throughput of the embedded log (group commit) next to the
    /// disk's raw sequential write bandwidth with fdatasync (dd), then the
    /// consume throughput reading everything back.
    Log {
        /// Records to append.
        #[arg(long, default_value_t = 20_000_000)]
        records: u64,
        /// Value size of each record in bytes.
        #[arg(long, default_value_t = 100)]
        record_bytes: usize,
        /// Concurrent producers (each waits for its own acknowledgement, so
        /// throughput is about producers x batch / group-commit latency).
        #[arg(long, default_value_t = 16)]
        producers: usize,
        /// Records per append call.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Directory to write in (default: a temporary directory under the current one,
        /// so the disk measured is the one the data directory lives on).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of each dd peer run in MiB (default: what the log run writes).
        #[arg(long)]
        dd_mib: Option<u64>,
    },
    /// HTTP NDJSON ingest of ad_click events in batches, with durable acknowledgement:
    /// throughput, acknowledgement latency percentiles and memory.
    Ingest {
        /// Events to send in total.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Target an already running server instead of starting one in-process.
        #[arg(long)]
        server: Option<String>,
        /// Data directory for the in-process server (default: temporary, under the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Ad click aggregation throughput from the log: pre-fills ad_clicks with generated
    /// clicks (Zipf over --ads ads), then runs the pipeline tasks over it with checkpoints,
    /// once with per-minute counts (no filter + the 3 default filters), once adding the
    /// sliding top-N windows; both again for every --mispartitioned percentage (clicks
    /// forwarded to their ad's task through the repartition topic).
    Ads {
        /// Events to aggregate.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Distinct ads (Zipf exponent 1.1).
        #[arg(long, default_value_t = 2_000_000)]
        ads: u32,
        /// Partitions of ad_clicks = pipeline tasks.
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        /// Checkpoint interval.
        #[arg(long, default_value_t = 10_000)]
        checkpoint_ms: u64,
        /// Emit interval (output transaction cadence).
        #[arg(long, default_value_t = 200)]
        emit_ms: u64,
        /// Event-time rate of the generated stream (events per second of event time).
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        /// Percentages of clicks written to a partition other than their ad's (as a producer
        /// with another partitioner would), comma-separated; each gets its own input and runs:
        /// those clicks go through the repartition topic, which is the cost measured.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        mispartitioned: Vec<u32>,
        /// Directory to work in (default: temporary, under the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The ad click service end to end against a `riffle serve` child process: event-to-queryable
    /// freshness at a fixed ingest rate (server histogram and client probes), query latency
    /// under concurrent aggregated_count / popular_ads load, and recovery time after SIGKILL.
    AdsServe {
        /// Ingest rate in events per second (event time = wall clock at send).
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        /// Duration of the freshness run in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Concurrent connections of the query load.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Duration of the query load in seconds.
        #[arg(long, default_value_t = 10)]
        query_seconds: u64,
        /// Directory to work in; the server's data directory is <DIR>/data (default: temporary,
        /// under the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The riffle binary to run as the server (default: this executable).
        #[arg(long)]
        server_bin: Option<PathBuf>,
    },
    /// Dataset pub/sub against a `riffle serve --roles datasets-publish,datasets-consume` child:
    /// publish → N long-polling subscribers all updated (p50/p99/max), consume-path throughput
    /// (wrk if on the PATH), and etcd watch propagation with as many watchers as the peer.
    Datasets(datasets::DatasetsBenchArgs),
    /// Live-stream features in-process: the engine building state from a simulated history, then
    /// the ranking path's read — N candidates' stream, streamer and (user, streamer) rows from the
    /// embedded online store in one batch each, decoded (p50/p99/max).
    Features(features::FeaturesBenchArgs),
    /// Ad click aggregation over several `riffle serve --roles process` children on Kafka (1, 2,
    /// 3 … processes) and on the embedded log (one process), same workload, same run; then the
    /// rebalance after a SIGKILL: kill → every partition committing again, survivors' rate.
    #[cfg(feature = "kafka")]
    ScaleOut(scale::ScaleOutArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    print_machine();
    match command {
        BenchCommand::Ads {
            events,
            ads,
            partitions,
            checkpoint_ms,
            emit_ms,
            rate,
            mispartitioned,
            dir,
        } => {
            ads::bench_ads(ads::AdsBenchArgs {
                events,
                ads,
                partitions,
                checkpoint_ms,
                emit_ms,
                rate,
                mispartitioned,
                dir,
            })
            .await
        }
        BenchCommand::Datasets(args) => datasets::bench_datasets(args).await,
        BenchCommand::Features(args) => features::bench_features(args).await,
        #[cfg(feature = "kafka")]
        BenchCommand::ScaleOut(args) => scale::bench_scale_out(args).await,
        BenchCommand::AdsServe {
            rate,
            seconds,
            connections,
            query_seconds,
            dir,
            server_bin,
        } => {
            serve::bench_ads_serve(serve::AdsServeArgs {
                rate,
                seconds,
                connections,
                query_seconds,
                dir,
                server_bin,
            })
            .await
        }
        BenchCommand::Log {
            records,
            record_bytes,
            producers,
            batch,
            partitions,
            dir,
            dd_mib,
        } => {
            bench_log(
                records,
                record_bytes,
                producers.max(1),
                batch.max(1),
                partitions.max(1),
                dir,
                dd_mib,
            )
            .await
        }
        BenchCommand::Ingest {
            events,
            batch,
            connections,
            server,
            dir,
        } => bench_ingest(events, batch.max(1), connections.max(1), server, dir).await,
    }
}

pub(crate) fn print_machine() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = total_memory_gib()
        .map(|gib| format!("{gib:.1} GiB"))
        .unwrap_or_else(|| "unknown".into());
    let now = riffle_core::time::format_rfc3339_ms(now_ms());
    println!(
        "machine: {cores} cores, {mem} memory; date {now}; riffle {}",
        env!("CARGO_PKG_VERSION")
    );
}

pub(crate) fn bench_dir(
    dir: Option<PathBuf>,
    prefix: &str,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new().prefix(prefix).tempdir_in(".")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bench_log(
    records: u64,
    record_bytes: usize,
    producers: usize,
    batch: usize,
    partitions: u32,
    dir: Option<PathBuf>,
    dd_mib: Option<u64>,
) -> anyhow::Result<()> {
    let (dir, _guard) = bench_dir(dir, ".riffle-bench-log-")?;
    // The disk is shared and noisy: measure the peer right before and right
    // after the log run, with the same amount of data, and compare with both.
    let framed = records * (record_bytes as u64 + 22) + records.div_ceil(batch as u64) * 48;
    let dd_mib = dd_mib.unwrap_or((framed >> 20).max(64));
    let dd_before = dd_bandwidth(&dir, dd_mib)?;
    let options = LogOptions {
        fsync: FsyncPolicy::Group,
        ..LogOptions::default()
    };
    println!(
        "bench log: {records} records x {record_bytes} B, {producers} producers, batches of {batch}, {partitions} partitions, fsync=group ({} ms / {} B), dir {}",
        options.group_commit_interval.as_millis(),
        options.group_commit_max_bytes,
        dir.display()
    );
    let log = {
        let dir = dir.join("log");
        tokio::task::spawn_blocking(move || EmbeddedLog::open(dir, options)).await??
    };
    let config = TopicConfig {
        partitions,
        retention_ms: -1,
        retention_bytes: -1,
        segment_bytes: 256 << 20,
    };
    log.create_topic("bench", config).await?;
    let value = vec![b'x'; record_bytes];
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..producers {
        let log = log.clone();
        let value = value.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut round = 0u32;
            loop {
                let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                if first >= records {
                    break;
                }
                let n = (records - first).min(batch as u64);
                let mut b = RecordBatch::with_capacity(n as usize * (record_bytes + 24));
                for i in 0..n {
                    b.push(None, &value, (first + i) as i64);
                }
                let partition = (producer as u32 + round) % partitions;
                round += 1;
                let t = Instant::now();
                log.append("bench", partition, b).await?;
                latencies.record(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::new();
    for t in tasks {
        latencies.merge(&t.await??);
    }
    let elapsed = started.elapsed();
    let disk_bytes: u64 = log
        .describe_topic("bench")
        .await?
        .partitions
        .iter()
        .map(|p| p.size_bytes)
        .sum();
    let rps = records as f64 / elapsed.as_secs_f64();
    let payload_mbs = (records as f64 * record_bytes as f64) / elapsed.as_secs_f64() / 1e6;
    let disk_mbs = disk_bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "append: {:.2} s, {:.0} records/s, {:.1} MB/s payload, {:.1} MB/s written (batch headers and record framing included)",
        elapsed.as_secs_f64(),
        rps,
        payload_mbs,
        disk_mbs
    );
    println!(
        "append latency per {batch}-record batch: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(latencies.quantile(0.50)),
        ms(latencies.quantile(0.99)),
        ms(latencies.quantile(1.0))
    );

    // Consume: one reader, one partition after another, every record visited.
    let started = Instant::now();
    let mut read = 0u64;
    let mut checksum = 0u64;
    for partition in 0..partitions {
        let mut offset = 0;
        loop {
            let fetched = log.fetch("bench", partition, offset, 1 << 20).await?;
            if fetched.records.is_empty() {
                break;
            }
            for r in fetched.records.iter() {
                checksum = checksum.wrapping_add(r.value.len() as u64 ^ r.offset);
                read += 1;
                offset = r.offset + 1;
            }
        }
    }
    let consume_elapsed = started.elapsed();
    if read != records {
        bail!("read back {read} records, appended {records}");
    }
    println!(
        "consume (1 reader, page cache warm, CRC checked): {:.2} s, {:.0} records/s ({checksum:x})",
        consume_elapsed.as_secs_f64(),
        read as f64 / consume_elapsed.as_secs_f64()
    );
    log.close()?;

    let dd_after = dd_bandwidth(&dir, dd_mib)?;
    let dd = (dd_before + dd_after) / 2.0;
    println!(
        "peer dd if=/dev/zero bs=1M count={dd_mib} conv=fdatasync: {dd_before:.1} MB/s before, {dd_after:.1} MB/s after, mean {dd:.1} MB/s"
    );
    println!(
        "ratio log written / dd mean: {:.0}%  (goal >= 70%; records/s goal >= 2M)",
        100.0 * disk_mbs / dd
    );
    Ok(())
}

/// Runs dd with fdatasync in `dir` and returns MB/s (10^6 bytes).
fn dd_bandwidth(dir: &Path, mib: u64) -> anyhow::Result<f64> {
    let target = dir.join("riffle-dd.tmp");
    let started = Instant::now();
    let output = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fdatasync")
        .output()
        .context("running dd")?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&target);
    if !output.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    // dd prints "<bytes> bytes (...) copied, <seconds> s, ..."; use its own
    // timing when it parses, else ours.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let seconds = stderr
        .lines()
        .last()
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok())
        .unwrap_or(elapsed.as_secs_f64());
    Ok((mib << 20) as f64 / seconds / 1e6)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn bench_ingest(
    events: u64,
    batch: usize,
    connections: usize,
    server: Option<String>,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (dir, _guard) = bench_dir(dir, ".riffle-bench-ingest-")?;
    // The server runs as its own process, as in production, so the load
    // generator does not share its runtime (they still share the cores).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let mut child = None;
    let base = match server {
        Some(url) => {
            // Wait for readiness.
            wait_http_ok(&client, &format!("{url}/readyz"), harness::READY_TIMEOUT).await?;
            url
        }
        None => {
            let mut spawned = ServeChild::start(ServeOptions {
                env: vec![(
                    "RIFFLE__INGEST__MAX_INFLIGHT_BYTES".into(),
                    (512u64 << 20).to_string(),
                )],
                ..ServeOptions::new(dir.join("data"))
            })?;
            spawned.wait_ready(&client).await?;
            let base = spawned.base().to_string();
            child = Some(spawned);
            base
        }
    };
    // Pre-built bodies so the client spends its time sending, not formatting.
    let now_ms = now_ms() as u64;
    let bodies: Vec<bytes::Bytes> = (0..64u64)
        .map(|b| {
            let mut body = String::with_capacity(batch * 130);
            for i in 0..batch as u64 {
                let n = b * batch as u64 + i;
                body.push_str(&format!(
                    "{{\"event_type\":\"ad_click\",\"event_id\":\"b{b}-{i}\",\"event_time\":{},\"ad_id\":\"ad{}\",\"user_id\":\"u{}\",\"ip\":\"10.{}.{}.{}\",\"country\":\"{}\"}}\n",
                    now_ms - 60_000 + (n % 60_000),
                    n * 7919 % 200_000,
                    n % 100_000,
                    n % 256,
                    (n / 256) % 256,
                    n % 200,
                    ["USA", "DEU", "KOR", "BRA"][(n % 4) as usize]
                ));
            }
            bytes::Bytes::from(body)
        })
        .collect();
    let requests = events.div_ceil(batch as u64);
    println!(
        "bench ingest: {} events as {requests} NDJSON requests of {batch} ad_click events, {connections} connections, server {}",
        requests * batch as u64,
        if child.is_some() { format!("child process at {base} (load generator and server share the machine)") } else { base.clone() }
    );
    let server_pid = child.as_ref().map(|c| c.pid());
    let rss_start = server_pid.map_or(0, |pid| rss_kib(pid, "VmRSS:"));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(pid) = server_pid {
                    samples.push(rss_kib(pid, "VmRSS:"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let next = next.clone();
        let bodies = bodies.clone();
        let url = format!("{base}/v1/events");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut throttled = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let body = bodies[(i % bodies.len() as u64) as usize].clone();
                loop {
                    let t = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = response.status();
                    let bytes = response.bytes().await?;
                    if status.as_u16() == 429 {
                        throttled += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    if !status.is_success() {
                        bail!(
                            "ingest failed: {status} {}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                    latencies.record(t.elapsed());
                    break;
                }
            }
            anyhow::Ok((latencies, throttled))
        }));
    }
    let mut latencies = Latencies::new();
    let mut throttled = 0;
    for t in tasks {
        let (l, th) = t.await??;
        latencies.merge(&l);
        throttled += th;
    }
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await?;
    let sent = requests * batch as u64;
    println!(
        "ingest: {:.2} s, {:.0} events/s, {:.1} MB/s of NDJSON",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        bodies.iter().map(|b| b.len() as f64).sum::<f64>() / bodies.len() as f64 * requests as f64
            / elapsed.as_secs_f64()
            / 1e6
    );
    println!(
        "ack latency per {batch}-event request: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; 429 responses: {throttled}",
        ms(latencies.quantile(0.5)),
        ms(latencies.quantile(0.99)),
        ms(latencies.quantile(1.0))
    );
    if let Some(pid) = server_pid {
        let tail = &samples[samples.len() / 2..];
        println!(
            "server memory: RSS at start {} MiB, during run min {} / max {} MiB (second half max {} MiB), peak {} MiB",
            rss_start / 1024,
            samples.iter().min().copied().unwrap_or(0) / 1024,
            samples.iter().max().copied().unwrap_or(0) / 1024,
            tail.iter().max().copied().unwrap_or(0) / 1024,
            rss_kib(pid, "VmHWM:") / 1024
        );
    }
    drop(child);
    Ok(())
}
