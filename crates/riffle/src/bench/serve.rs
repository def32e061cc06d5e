//! `riffle bench ads-serve`: the ad click service measured end to end, as it
//! is deployed: `riffle serve` in its own process (free loopback ports, its
//! own data directory) driven over HTTP by this process. The load generator
//! and the server share the machine's cores. Three measurements run one
//! after another against the same server:
//!
//! 1. Freshness. Ad clicks stamped with the wall clock at send time are
//!    ingested at a fixed rate. Two views of how long an event takes to
//!    become queryable: the server's `riffle_stream_freshness_seconds`
//!    histogram (bucket deltas over the run, one observation per batch the
//!    aggregate writer applies), and a client-side probe (one click on a
//!    fresh ad every 100 ms, polled until its count is 1).
//! 2. Query latency. Concurrent `aggregated_count` and `popular_ads` load;
//!    client-side percentiles next to the server-side
//!    `riffle_ads_query_seconds` histogram.
//! 3. Recovery. Under ingest load, shortly before the next checkpoint is due
//!    (so that about one checkpoint interval of input must be replayed, the
//!    slow case), the server is SIGKILLed and restarted on the same data
//!    directory, and timed until every pipeline partition runs with no lag.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use riffle_sim::ads::{ad_id, minute_start, AdsConfig, AdsGenerator};
use riffle_sim::rng::Rng;
use riffle_sim::zipf::Zipf;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::harness::{ms, now_ms, Latencies, ServeChild, ServeOptions};

/// Distinct ads, as in `riffle bench ads`.
const ADS: u32 = 2_000_000;
const ZIPF_EXPONENT: f64 = 1.1;
/// Ingest requests in flight at most.
const INGEST_CONNECTIONS: usize = 8;
/// Ingest sends what is due every tick: 500 events per request at 50K/s.
const INGEST_TICK: Duration = Duration::from_millis(10);
/// Largest request when catching up after a slow tick.
const MAX_BATCH_EVENTS: u64 = 5_000;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a probe asks for its count; bounds the probe's overstatement.
const PROBE_POLL: Duration = Duration::from_millis(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Passed to the server explicitly: the default, pinned so that the
/// recovery measurement knows when the next checkpoint is due.
const CHECKPOINT_INTERVAL_MS: i64 = 10_000;
/// How long before the next checkpoint is due the server is killed.
const KILL_BEFORE_CHECKPOINT_MS: i64 = 1_000;
/// Share of `popular_ads` in the query mix, in percent.
const POPULAR_PERCENT: u64 = 20;
const POPULAR_COUNT: u32 = 10;
const POPULAR_WINDOW_MINUTES: u32 = 5;
/// The `aggregated_count` range: the last five minutes (current one included).
const COUNT_RANGE_MINUTES: i64 = 5;
const MINUTE_MS: i64 = 60_000;
/// Longest wait for a pipeline to catch up (readiness: the harness's own).
const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct AdsServeArgs {
    pub rate: f64,
    pub seconds: u64,
    pub connections: usize,
    pub query_seconds: u64,
    pub dir: Option<PathBuf>,
    pub server_bin: Option<PathBuf>,
}

pub async fn bench_ads_serve(args: AdsServeArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate >= 1.0) {
        bail!("--rate: {} is not a rate of at least 1 event/s", args.rate);
    }
    if args.seconds == 0 || args.query_seconds == 0 {
        bail!("--seconds and --query-seconds must be at least 1");
    }
    let connections = args.connections.max(1);
    let (dir, _guard) = super::bench_dir(args.dir, ".riffle-bench-ads-serve-")?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let server_bin = match args.server_bin {
        Some(bin) => bin,
        None => std::env::current_exe()?,
    };
    // Event ids must not repeat across runs on the same --dir (the pipeline
    // drops duplicates), nor probe ads.
    let run_id = now_ms();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // The benchmark directory is the server's working directory (so that no
    // stray ./riffle.toml is picked up) and parent of its data directory.
    let mut server = ServeChild::start(ServeOptions {
        bin: Some(server_bin.clone()),
        current_dir: Some(dir.clone()),
        env: vec![(
            "RIFFLE__ADS__CHECKPOINT_INTERVAL_MS".into(),
            CHECKPOINT_INTERVAL_MS.to_string(),
        )],
        ..ServeOptions::new(dir.join("data"))
    })?;
    server.wait_ready(&client).await?;
    println!(
        "bench ads-serve: {} serve as a child process (load generator and server share the machine), data dir {}, {ADS} ads (Zipf {ZIPF_EXPONENT}), checkpoint interval {} s",
        server_bin.display(),
        dir.display(),
        CHECKPOINT_INTERVAL_MS / 1000
    );

    measure_freshness(&client, &server, args.rate, args.seconds, run_id).await?;
    measure_queries(&client, &server, connections, args.query_seconds, run_id).await?;
    measure_recovery(&client, &mut server, args.rate, run_id).await?;
    Ok(())
}

async fn measure_freshness(
    client: &reqwest::Client,
    server: &ServeChild,
    rate: f64,
    seconds: u64,
    run_id: i64,
) -> anyhow::Result<()> {
    let base = server.base().to_string();
    let before = scrape_metrics(client, &base).await?;
    let (stop, stopped) = watch::channel(false);
    let mut ingest = tokio::spawn(ingest_at_rate(
        client.clone(),
        base.clone(),
        rate,
        format!("bench-{run_id}-fresh-"),
        stopped.clone(),
    ));
    let probes = tokio::spawn(run_probes(
        client.clone(),
        base.clone(),
        format!("probe-{run_id}-"),
        stopped,
    ));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        finished = &mut ingest => {
            finished??;
            bail!("ingest stopped before the end of the run");
        }
    }
    stop.send_replace(true);
    let ingested = ingest.await??;
    let probed = probes.await??;
    // Everything sent must be applied before the histogram is read: the
    // pipeline's last emit and the writer's last poll follow the caught-up
    // input by at most an emit interval plus a poll.
    wait_caught_up(client, server).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = scrape_metrics(client, &base).await?;

    let acks = &ingested.acks;
    println!(
        "freshness load: {} ad_click events in {:.2} s = {:.0} events/s (target {rate:.0}/s; a request every {} ms, up to {INGEST_CONNECTIONS} in flight); ack p50 {:.2} ms, p99 {:.2} ms; 429 responses: {}",
        ingested.events,
        ingested.elapsed.as_secs_f64(),
        ingested.events as f64 / ingested.elapsed.as_secs_f64(),
        INGEST_TICK.as_millis(),
        ms(acks.quantile(0.50)),
        ms(acks.quantile(0.99)),
        ingested.throttled
    );
    let freshness = bucket_deltas(
        &histogram_buckets(
            &before,
            "riffle_stream_freshness_seconds",
            "pipeline=\"ads\"",
        ),
        &histogram_buckets(
            &after,
            "riffle_stream_freshness_seconds",
            "pipeline=\"ads\"",
        ),
    );
    println!(
        "freshness, server (riffle_stream_freshness_seconds, {} applied batches): p50 {}, p99 {}, max {}  (goal: p99 <= 1 s at 50K events/s)",
        freshness.last().map_or(0, |b| b.1),
        bucket_bound(&freshness, 0.50),
        bucket_bound(&freshness, 0.99),
        bucket_bound(&freshness, 1.0)
    );
    let delays = &probed.delays;
    println!(
        "freshness, client probe (send of a click on a fresh ad to its count being 1, {} probes, polled every {} ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} timed out after {} s  (goal: p99 <= 1 s)",
        delays.len(),
        PROBE_POLL.as_millis(),
        ms(delays.quantile(0.50)),
        ms(delays.quantile(0.99)),
        ms(delays.quantile(1.0)),
        probed.timed_out,
        PROBE_TIMEOUT.as_secs()
    );
    Ok(())
}

/// Which query a latency belongs to; indexes `QUERY_NAMES`.
const AGGREGATED_COUNT: usize = 0;
const POPULAR_ADS: usize = 1;
const QUERY_NAMES: [&str; 2] = ["aggregated_count", "popular_ads"];

async fn measure_queries(
    client: &reqwest::Client,
    server: &ServeChild,
    connections: usize,
    seconds: u64,
    run_id: i64,
) -> anyhow::Result<()> {
    let base = server.base().to_string();
    let zipf = Arc::new(Zipf::new(ADS, ZIPF_EXPONENT));
    let before = scrape_metrics(client, &base).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for connection in 0..connections {
        tasks.spawn(query_load(
            client.clone(),
            base.clone(),
            zipf.clone(),
            run_id as u64 ^ connection as u64,
            deadline,
        ));
    }
    let mut latencies = [Latencies::new(), Latencies::new()];
    while let Some(joined) = tasks.join_next().await {
        let [counts, populars] = joined??;
        latencies[AGGREGATED_COUNT].merge(&counts);
        latencies[POPULAR_ADS].merge(&populars);
    }
    let elapsed = started.elapsed();
    let after = scrape_metrics(client, &base).await?;

    let mut all = Latencies::new();
    for l in &latencies {
        all.merge(l);
    }
    let per_query = |l: &Latencies| {
        format!(
            "p50 {:.3} / p99 {:.3} / p999 {:.3} ms",
            ms(l.quantile(0.50)),
            ms(l.quantile(0.99)),
            ms(l.quantile(0.999))
        )
    };
    println!(
        "query load, client: {} requests in {:.2} s = {:.0} req/s ({connections} connections; {}% aggregated_count of a Zipf ad over the last {COUNT_RANGE_MINUTES} minutes, {POPULAR_PERCENT}% popular_ads count={POPULAR_COUNT} window={POPULAR_WINDOW_MINUTES}); latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms (aggregated_count {}; popular_ads {})  (goal: >= 20K req/s)",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        100 - POPULAR_PERCENT,
        ms(all.quantile(0.50)),
        ms(all.quantile(0.99)),
        ms(all.quantile(0.999)),
        per_query(&latencies[AGGREGATED_COUNT]),
        per_query(&latencies[POPULAR_ADS]),
    );
    let server_side: Vec<String> = QUERY_NAMES
        .iter()
        .map(|name| {
            let label = format!("query=\"{name}\"");
            let deltas = bucket_deltas(
                &histogram_buckets(&before, "riffle_ads_query_seconds", &label),
                &histogram_buckets(&after, "riffle_ads_query_seconds", &label),
            );
            format!(
                "{name} p50 {}, p99 {}, max {} ({} queries)",
                bucket_bound(&deltas, 0.50),
                bucket_bound(&deltas, 0.99),
                bucket_bound(&deltas, 1.0),
                deltas.last().map_or(0, |b| b.1)
            )
        })
        .collect();
    println!(
        "query latency, server (riffle_ads_query_seconds): {}  (goal: p99 <= 1 ms at >= 20K req/s)",
        server_side.join("; ")
    );
    Ok(())
}

/// One connection's share of the query load: requests back to back until
/// `deadline`; latencies per query (`AGGREGATED_COUNT`, `POPULAR_ADS`).
async fn query_load(
    client: reqwest::Client,
    base: String,
    zipf: Arc<Zipf>,
    seed: u64,
    deadline: Instant,
) -> anyhow::Result<[Latencies; 2]> {
    let mut rng = Rng::new(seed);
    let mut latencies = [Latencies::new(), Latencies::new()];
    let popular_url =
        format!("{base}/v1/ads/popular_ads?count={POPULAR_COUNT}&window={POPULAR_WINDOW_MINUTES}");
    while Instant::now() < deadline {
        let query = if rng.below(100) < POPULAR_PERCENT {
            POPULAR_ADS
        } else {
            AGGREGATED_COUNT
        };
        let count_url;
        let url = if query == POPULAR_ADS {
            popular_url.as_str()
        } else {
            let to = minute_start(now_ms()) + MINUTE_MS;
            count_url = format!(
                "{base}/v1/ads/{}/aggregated_count?from={}&to={to}",
                ad_id(zipf.sample(&mut rng) + 1),
                to - COUNT_RANGE_MINUTES * MINUTE_MS
            );
            count_url.as_str()
        };
        let started = Instant::now();
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
        latencies[query].record(started.elapsed());
    }
    Ok(latencies)
}

async fn measure_recovery(
    client: &reqwest::Client,
    server: &mut ServeChild,
    rate: f64,
    run_id: i64,
) -> anyhow::Result<()> {
    let resumed_ms = now_ms();
    let (stop, stopped) = watch::channel(false);
    let mut ingest = tokio::spawn(ingest_at_rate(
        client.clone(),
        server.base().to_string(),
        rate,
        format!("bench-{run_id}-kill-"),
        stopped,
    ));
    // Kill shortly before the oldest partition's next checkpoint is due:
    // then close to a whole interval of input has to be replayed.
    let oldest_checkpoint_ms = loop {
        if ingest.is_finished() {
            (&mut ingest).await??;
            bail!("ingest stopped before the server was killed");
        }
        let status = pipeline_status(client, server.base()).await?;
        let checkpoints: Option<Vec<i64>> = status
            .partitions
            .iter()
            .map(|p| p.last_checkpoint.as_ref().map(|c| c.at_ms))
            .collect();
        if let Some(at) =
            checkpoints.filter(|at| !at.is_empty() && at.iter().all(|&t| t > resumed_ms))
        {
            break at.into_iter().min().unwrap_or(resumed_ms);
        }
        if now_ms() - resumed_ms > 3 * CHECKPOINT_INTERVAL_MS {
            bail!(
                "no checkpoint of every partition within {} s of load",
                3 * CHECKPOINT_INTERVAL_MS / 1000
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kill_at_ms = oldest_checkpoint_ms + CHECKPOINT_INTERVAL_MS - KILL_BEFORE_CHECKPOINT_MS;
    let wait_ms = (kill_at_ms - now_ms()).max(0) as u64;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        finished = &mut ingest => {
            finished??;
            bail!("ingest stopped before the server was killed");
        }
    }
    stop.send_replace(true);
    let ingested = ingest.await??;
    let before_kill = pipeline_status(client, server.base()).await?;
    let since_checkpoint_ms = now_ms() - oldest_checkpoint_ms;
    server.kill()?;

    let restarted = Instant::now();
    server.spawn()?;
    server.wait_ready(client).await?;
    let ready = restarted.elapsed();
    let recovered = wait_caught_up(client, server).await?;
    let caught_up = restarted.elapsed();

    let events: u64 = recovered.partitions.iter().map(|p| p.end_offset).sum();
    let replayed: u64 = recovered.partitions.iter().map(|p| p.records_in).sum();
    let checkpoint_bytes: u64 = before_kill
        .partitions
        .iter()
        .filter_map(|p| p.last_checkpoint.as_ref().map(|c| c.bytes))
        .sum();
    let unrestored: Vec<String> = recovered
        .partitions
        .iter()
        .filter(|p| p.restored_from.is_none())
        .map(|p| p.partition.to_string())
        .collect();
    println!(
        "recovery: SIGKILL under load ({:.0} events/s) {:.1} s after the oldest partition checkpoint, with {events} events in the log and {:.1} MiB of checkpoints; after restart /readyz 200 in {:.2} s, all {} partitions running with lag 0 in {:.2} s, {replayed} events replayed, {}  (goal: <= 5 s with 10M events of state)",
        ingested.events as f64 / ingested.elapsed.as_secs_f64(),
        since_checkpoint_ms as f64 / 1000.0,
        checkpoint_bytes as f64 / (1 << 20) as f64,
        ready.as_secs_f64(),
        recovered.partitions.len(),
        caught_up.as_secs_f64(),
        if unrestored.is_empty() {
            "every partition restored from its checkpoint".to_string()
        } else {
            format!("NO checkpoint restored for partitions {}", unrestored.join(", "))
        }
    );
    Ok(())
}

struct Ingested {
    /// Events acknowledged.
    events: u64,
    /// From the first send to the last acknowledgement.
    elapsed: Duration,
    acks: Latencies,
    throttled: u64,
}

/// Sends generated ad clicks at `rate` events/s until `stop` turns true.
/// Every tick sends the events due since the start, so a late tick catches
/// up with a larger request and the rate holds on average. Each event's
/// time is the wall clock when its request is built.
async fn ingest_at_rate(
    client: reqwest::Client,
    base: String,
    rate: f64,
    id_prefix: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Ingested> {
    let started_ms = now_ms();
    let mut generator = AdsGenerator::new(AdsConfig {
        seed: started_ms as u64,
        ads: ADS,
        zipf_exponent: ZIPF_EXPONENT,
        start_ms: started_ms,
        rate,
        count: None,
        duration_ms: None,
        id_prefix: Some(id_prefix),
        ..AdsConfig::default()
    })?;
    generator.track_truth(false);
    let url = format!("{base}/v1/events");
    let in_flight = Arc::new(Semaphore::new(INGEST_CONNECTIONS));
    let mut requests = JoinSet::new();
    let mut result = Ingested {
        events: 0,
        elapsed: Duration::ZERO,
        acks: Latencies::new(),
        throttled: 0,
    };
    let mut tick = tokio::time::interval(INGEST_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut generated = 0u64;
    let mut body = Vec::new();
    'ticks: while !stop_requested(&mut tick, &mut stop).await {
        let due = (rate * started.elapsed().as_secs_f64()) as u64;
        while generated < due {
            let events = (due - generated).min(MAX_BATCH_EVENTS);
            let event_time = now_ms();
            body.clear();
            for _ in 0..events {
                let Some(mut click) = generator.next_event() else {
                    break 'ticks;
                };
                click.event_time_ms = event_time;
                generator.write_json(&click, &mut body);
                body.push(b'\n');
            }
            generated += events;
            let permit = in_flight.clone().acquire_owned().await?;
            let (client, url, body) = (client.clone(), url.clone(), Bytes::copy_from_slice(&body));
            requests.spawn(async move {
                let sent = send_events(&client, &url, body, events).await;
                drop(permit);
                sent
            });
        }
        while let Some(joined) = requests.try_join_next() {
            result.add(joined??);
        }
    }
    while let Some(joined) = requests.join_next().await {
        result.add(joined??);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

struct Sent {
    events: u64,
    ack: Duration,
    throttled: u64,
}

impl Ingested {
    fn add(&mut self, sent: Sent) {
        self.events += sent.events;
        self.acks.record(sent.ack);
        self.throttled += sent.throttled;
    }
}

#[derive(Deserialize)]
struct IngestAnswer {
    accepted: u64,
    rejected: Vec<serde_json::Value>,
}

/// POSTs an NDJSON body of `events` events, retrying on 429; fails unless
/// every event is accepted.
async fn send_events(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    events: u64,
) -> anyhow::Result<Sent> {
    let mut throttled = 0;
    loop {
        let started = Instant::now();
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        let answer = response.bytes().await?;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if !status.is_success() {
            bail!("POST {url}: {status} {}", String::from_utf8_lossy(&answer));
        }
        let ack = started.elapsed();
        let outcome: IngestAnswer =
            serde_json::from_slice(&answer).context("POST /v1/events answer")?;
        if outcome.accepted != events || !outcome.rejected.is_empty() {
            bail!(
                "POST {url}: {} of {events} events accepted; first rejection: {}",
                outcome.accepted,
                outcome
                    .rejected
                    .first()
                    .map_or_else(String::new, |r| r.to_string())
            );
        }
        return Ok(Sent {
            events,
            ack,
            throttled,
        });
    }
}

/// Waits for the next tick or a stop request; whether to stop (also when
/// the sender is gone).
async fn stop_requested(
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tick.tick() => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

struct Probed {
    delays: Latencies,
    timed_out: u64,
}

/// Starts a probe every `PROBE_INTERVAL` until `stop` turns true, then
/// waits for the probes under way.
async fn run_probes(
    client: reqwest::Client,
    base: String,
    ad_prefix: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Probed> {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut probes = JoinSet::new();
    let mut n = 0u64;
    while !stop_requested(&mut tick, &mut stop).await {
        n += 1;
        let (client, base) = (client.clone(), base.clone());
        let ad = format!("{ad_prefix}{n}");
        probes.spawn(async move { probe(&client, &base, &ad).await });
    }
    let mut probed = Probed {
        delays: Latencies::new(),
        timed_out: 0,
    };
    while let Some(joined) = probes.join_next().await {
        match joined?? {
            Some(delay) => probed.delays.record(delay),
            None => probed.timed_out += 1,
        }
    }
    Ok(probed)
}

#[derive(Deserialize)]
struct CountAnswer {
    count: u64,
}

/// Sends one click on `ad` (an ad nobody else clicks) stamped now and
/// returns how long until `aggregated_count` counts it; `None` after
/// `PROBE_TIMEOUT`.
async fn probe(client: &reqwest::Client, base: &str, ad: &str) -> anyhow::Result<Option<Duration>> {
    let sent = Instant::now();
    let event_time = now_ms();
    let body = format!(
        "{{\"event_type\":\"ad_click\",\"event_id\":\"{ad}\",\"event_time\":{event_time},\"ad_id\":\"{ad}\",\"user_id\":\"u-probe\",\"ip\":\"10.0.0.1\",\"country\":\"USA\"}}\n"
    );
    send_events(client, &format!("{base}/v1/events"), Bytes::from(body), 1).await?;
    let minute = minute_start(event_time);
    let url = format!(
        "{base}/v1/ads/{ad}/aggregated_count?from={minute}&to={}",
        minute + MINUTE_MS
    );
    loop {
        let response = client.get(&url).send().await?;
        let status = response.status();
        let answer = response.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&answer));
        }
        let answer: CountAnswer =
            serde_json::from_slice(&answer).context("aggregated_count answer")?;
        if answer.count >= 1 {
            return Ok(Some(sent.elapsed()));
        }
        if sent.elapsed() > PROBE_TIMEOUT {
            return Ok(None);
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
}

/// The parts of `GET /v1/pipelines` the benchmark reads.
#[derive(Deserialize)]
struct PipelinesAnswer {
    pipelines: Vec<PipelineStatus>,
}

#[derive(Deserialize)]
struct PipelineStatus {
    name: String,
    partitions: Vec<PartitionStatus>,
}

#[derive(Deserialize)]
struct PartitionStatus {
    partition: u32,
    state: String,
    lag: u64,
    end_offset: u64,
    /// Input records processed since the task started.
    records_in: u64,
    restored_from: Option<u64>,
    last_checkpoint: Option<CheckpointStatus>,
}

#[derive(Deserialize)]
struct CheckpointStatus {
    at_ms: i64,
    bytes: u64,
}

async fn pipeline_status(client: &reqwest::Client, base: &str) -> anyhow::Result<PipelineStatus> {
    let url = format!("{base}/v1/pipelines");
    let response = client.get(&url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
    }
    let answer: PipelinesAnswer = serde_json::from_slice(&body).context("GET /v1/pipelines")?;
    answer
        .pipelines
        .into_iter()
        .find(|p| p.name == "ads")
        .context("GET /v1/pipelines: no pipeline \"ads\" (is ads.enabled false?)")
}

/// Polls until every partition of the ads pipeline is `running` with lag 0.
async fn wait_caught_up(
    client: &reqwest::Client,
    server: &ServeChild,
) -> anyhow::Result<PipelineStatus> {
    let started = Instant::now();
    loop {
        let status = pipeline_status(client, server.base()).await?;
        let caught_up = !status.partitions.is_empty()
            && status
                .partitions
                .iter()
                .all(|p| p.state == "running" && p.lag == 0);
        if caught_up {
            return Ok(status);
        }
        if let Some(failed) = status.partitions.iter().find(|p| p.state == "failed") {
            bail!("pipeline partition {} failed", failed.partition);
        }
        if started.elapsed() > WAIT_TIMEOUT {
            let states: Vec<String> = status
                .partitions
                .iter()
                .map(|p| format!("{}: {} lag {}", p.partition, p.state, p.lag))
                .collect();
            bail!(
                "pipeline not caught up after {} s ({})",
                WAIT_TIMEOUT.as_secs(),
                states.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn scrape_metrics(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = client.get(format!("{base}/metrics")).send().await?;
    if !response.status().is_success() {
        bail!("GET /metrics: {}", response.status());
    }
    Ok(response.text().await?)
}

/// Cumulative bucket counts `(upper bound, count)` of the series of
/// histogram `name` carrying `label` (`key="value"`), in Prometheus text
/// format; ascending, `+Inf` last. Empty when the series does not exist yet.
fn histogram_buckets(metrics: &str, name: &str, label: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets = Vec::new();
    for line in metrics.lines() {
        let Some((labels, value)) = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once("} "))
        else {
            continue;
        };
        if !labels.split(',').any(|l| l == label) {
            continue;
        }
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|v| v.trim_end_matches('"'))
        else {
            continue;
        };
        let upper = if le == "+Inf" {
            f64::INFINITY
        } else {
            let Ok(upper) = le.parse::<f64>() else {
                continue;
            };
            upper
        };
        let Ok(count) = value.trim().parse::<u64>() else {
            continue;
        };
        buckets.push((upper, count));
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// `after - before`, bucket by bucket (a bucket missing before counts 0).
fn bucket_deltas(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(upper, count)| {
            let earlier = before.iter().find(|b| b.0 == upper).map_or(0, |b| b.1);
            (upper, count.saturating_sub(earlier))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of cumulative
/// `buckets` (`q = 1` gives the bucket of the maximum), as `<= 512 ms`, or
/// `> 8 s` for the overflow bucket.
fn bucket_bound(buckets: &[(f64, u64)], q: f64) -> String {
    let total = buckets.last().map_or(0, |b| b.1);
    if total == 0 {
        return "n/a (no observations)".to_string();
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let Some(index) = buckets.iter().position(|b| b.1 >= rank) else {
        return "n/a".to_string();
    };
    let upper = buckets[index].0;
    if upper.is_finite() {
        return format!("<= {}", seconds_text(upper));
    }
    match index.checked_sub(1) {
        Some(previous) => format!("> {}", seconds_text(buckets[previous].0)),
        None => "n/a".to_string(),
    }
}

fn seconds_text(seconds: f64) -> String {
    let (value, unit) = if seconds < 1e-3 {
        (seconds * 1e6, "µs")
    } else if seconds < 1.0 {
        (seconds * 1e3, "ms")
    } else {
        (seconds, "s")
    };
    format!("{} {unit}", (value * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP riffle_ads_query_seconds x
# TYPE riffle_ads_query_seconds histogram
riffle_ads_query_seconds_bucket{query=\"popular_ads\",le=\"0.000025\"} 1
riffle_ads_query_seconds_bucket{query=\"popular_ads\",le=\"0.0001\"} 90
riffle_ads_query_seconds_bucket{query=\"popular_ads\",le=\"0.001\"} 99
riffle_ads_query_seconds_bucket{query=\"popular_ads\",le=\"+Inf\"} 100
riffle_ads_query_seconds_sum{query=\"popular_ads\"} 0.5
riffle_ads_query_seconds_bucket{query=\"aggregated_count\",le=\"0.000025\"} 7
riffle_ads_query_seconds_bucket{query=\"aggregated_count\",le=\"+Inf\"} 7
";

    #[test]
    fn parses_one_series_of_a_histogram() {
        let buckets =
            histogram_buckets(SCRAPE, "riffle_ads_query_seconds", "query=\"popular_ads\"");
        assert_eq!(
            buckets,
            vec![
                (0.000025, 1),
                (0.0001, 90),
                (0.001, 99),
                (f64::INFINITY, 100)
            ]
        );
        assert!(histogram_buckets(SCRAPE, "riffle_ads_query_seconds", "query=\"nope\"").is_empty());
    }

    #[test]
    fn quantiles_name_the_bucket_that_holds_them() {
        let after = histogram_buckets(SCRAPE, "riffle_ads_query_seconds", "query=\"popular_ads\"");
        assert_eq!(bucket_bound(&after, 0.5), "<= 100 µs");
        assert_eq!(bucket_bound(&after, 0.99), "<= 1 ms");
        assert_eq!(bucket_bound(&after, 1.0), "> 1 ms");
        let before = vec![
            (0.000025, 1),
            (0.0001, 90),
            (0.001, 90),
            (f64::INFINITY, 90),
        ];
        let deltas = bucket_deltas(&before, &after);
        assert_eq!(deltas.last(), Some(&(f64::INFINITY, 10)));
        assert_eq!(bucket_bound(&deltas, 0.5), "<= 1 ms");
        assert_eq!(
            bucket_bound(&bucket_deltas(&after, &after), 0.5),
            "n/a (no observations)"
        );
        assert_eq!(seconds_text(0.0025), "2.5 ms");
        assert_eq!(seconds_text(2.0), "2 s");
    }
}
