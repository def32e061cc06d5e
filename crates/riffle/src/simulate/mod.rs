//! `riffle simulate`: workload generators driven from the command line.
//!
//! `riffle simulate ads` writes generated `ad_click` traffic (see
//! `riffle_sim::ads`) as NDJSON to a file or stdout, or POSTs it in batches to
//! a running server, optionally paced to the wall clock, and can write the
//! ground-truth file a pipeline's output is checked against.
//!
//! `riffle simulate live` (in [`live`]) does the same for a simulated
//! live-streaming platform (`riffle_sim::live`).

mod live;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use riffle_core::time::{format_rfc3339_ms, parse_time_arg, Clock, SystemClock};
use riffle_sim::ads::{AdsConfig, AdsGenerator, Category, WINDOW_MS};
use serde_json::Value;

use crate::client::{resolve_token, Client};

#[derive(Subcommand)]
pub enum SimulateCommand {
    /// Generate ad_click traffic: Zipf-distributed ads, users, IPs and weighted
    /// countries, with injected duplicates, out-of-order and late events, and
    /// optionally the exact expected per-(ad, minute) counts (--truth).
    #[command(after_long_help = ADS_AFTER_HELP)]
    Ads(Box<AdsArgs>),
    /// Generate a live-streaming platform's events: streamers going live and offline (heartbeats;
    /// some streams vanish without stream_ended), users with hidden tastes who browse, watch, chat,
    /// gift, follow and come back to streamers they watched; optionally the hidden truth (--truth).
    #[command(after_long_help = live::AFTER_HELP)]
    Live(Box<live::LiveArgs>),
}

const ADS_AFTER_HELP: &str = "\
Fault categories (each event gets one; M = max event time emitted so far,
W = M - out-of-orderness, L = allowed lateness):
  out-of-order  time in [M - max-out-of-order, M): not late
  late-within   W - L < time, and its minute window ended before W: late, counted
  late-beyond   time <= W - L - late-margin: too late, not counted, goes to the late topic
  duplicate     an exact repeat (same event_id) of a recent counted event
The truth file (NDJSON) has a summary line, one line per (ad_id, minute) with the
count a correct pipeline must report, and one line per late-beyond event.
See docs/simulate.md.

Examples:
  riffle simulate ads --count 100000 --seed 7 --duplicates 0.05 --late-beyond 0.01 \\
      --out clicks.ndjson --truth truth.ndjson
  riffle simulate ads --rate 5000 --duration 10m --realtime --server http://127.0.0.1:8080";

#[derive(Args)]
pub struct AdsArgs {
    /// JSON file with a generator config (the fields of docs/simulate.md); the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Random seed: the same seed and options give the same events. Default: a random seed (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second of event time (with --realtime, also of wall time). Default 10000.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Number of events to emit, duplicates included. Default 10000 (without --duration; unbounded with --realtime).
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    count: Option<u64>,
    /// Span of event time to emit, e.g. 500ms, 60s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<i64>,
    /// Event time of the first event: epoch ms or RFC 3339. Default: now with --realtime, otherwise
    /// the stream ends about now (now minus its length, rounded down to the minute).
    #[arg(long, value_name = "TIME", value_parser = parse_start)]
    start: Option<i64>,
    /// Number of distinct ads (up to 2000000); ad-0000001 is the most popular. Default 10000.
    #[arg(long, value_name = "N")]
    ads: Option<u32>,
    /// Zipf exponent of ad popularity; 0 is uniform. Default 1.1.
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
    /// Number of distinct users (u-1 ... u-N). Default 100000.
    #[arg(long, value_name = "N")]
    users: Option<u32>,
    /// Number of distinct IPv4 addresses, from five /16 ranges. Default 50000.
    #[arg(long, value_name = "N")]
    ips: Option<u32>,
    /// Share of events that repeat a recent event with the same event_id (0..=1).
    #[arg(long, value_name = "F")]
    duplicates: Option<f64>,
    /// Share of events up to --max-out-of-order behind the max event time (0..=1).
    #[arg(long, value_name = "F")]
    out_of_order: Option<f64>,
    /// Largest lag of an out-of-order event; at most --out-of-orderness. Default 15s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_out_of_order: Option<i64>,
    /// Share of events late but within the allowed lateness (0..=1).
    #[arg(long, value_name = "F")]
    late_within: Option<f64>,
    /// Share of events late beyond the allowed lateness (0..=1).
    #[arg(long, value_name = "F")]
    late_beyond: Option<f64>,
    /// Bounded out-of-orderness of the watermark the categories refer to. Default 15s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    out_of_orderness: Option<i64>,
    /// Allowed lateness the categories refer to. Default 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    allowed_lateness: Option<i64>,
    /// How much older than the lateness limit late-beyond events are (at least 60s). Default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    late_margin: Option<i64>,
    /// No faults during this first span of event time. Default 0s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    warmup: Option<i64>,
    /// Event id prefix. Default clk-<seed>-.
    #[arg(long, value_name = "PREFIX")]
    id_prefix: Option<String>,
    #[command(flatten)]
    sink: SinkArgs,
    /// Write the ground truth (expected per-(ad, minute) counts, late-beyond events) to this file.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// Pace to the wall clock: event time follows now, `rate` events per second.
    #[arg(long)]
    realtime: bool,
}

/// Where generated events go; shared by every generator.
#[derive(Args)]
pub struct SinkArgs {
    /// Write the events as NDJSON to this file ('-' = stdout). Default: stdout, unless --server.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    out: Option<PathBuf>,
    /// POST the events to this server's /v1/events instead of writing them.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Bearer token for --server. Default: the admin token in <data-dir>/admin.token, if readable.
    #[arg(long, env = "RIFFLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local server, where the admin token is read from.
    #[arg(long, value_name = "DIR", default_value = "./riffle-data")]
    data_dir: PathBuf,
    /// PEM file of the CA that signed an https:// server's certificate.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Events per POST (and per write).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
}

/// `500ms`, `60s`, `5m`, `1h`, `7d` → milliseconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    riffle_core::time::parse_duration_ms(s).map_err(|e| e.to_string())
}

fn parse_start(s: &str) -> Result<i64, String> {
    parse_time_arg(s).map_err(|e| e.to_string())
}

pub async fn run(command: SimulateCommand) -> anyhow::Result<()> {
    match command {
        SimulateCommand::Ads(args) => ads(*args).await,
        SimulateCommand::Live(args) => live::run(*args).await,
    }
}

/// The config from --config and the flags, and whether the start time was
/// given by either.
fn build_config(args: &AdsArgs) -> anyhow::Result<AdsConfig> {
    let (mut config, file_keys) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config: cannot read {}", path.display()))?;
            let config: AdsConfig = serde_json::from_str(&text)
                .map_err(|e| anyhow!("--config {}: {e}", path.display()))?;
            let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&text)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            (config, keys)
        }
        None => (AdsConfig::default(), Vec::new()),
    };
    let in_file = |key: &str| file_keys.iter().any(|k| k == key);
    if !in_file("seed") || args.seed.is_some() {
        config.seed = args.seed.unwrap_or_else(rand::random);
    }
    macro_rules! set {
        ($flag:ident => $field:ident) => {
            if let Some(v) = args.$flag.clone() {
                config.$field = v;
            }
        };
    }
    set!(rate => rate);
    set!(ads => ads);
    set!(zipf => zipf_exponent);
    set!(users => users);
    set!(ips => ips);
    set!(duplicates => duplicate_fraction);
    set!(out_of_order => out_of_order_fraction);
    set!(max_out_of_order => max_out_of_order_ms);
    set!(late_within => late_within_fraction);
    set!(late_beyond => late_beyond_fraction);
    set!(out_of_orderness => out_of_orderness_ms);
    set!(allowed_lateness => allowed_lateness_ms);
    set!(late_margin => late_beyond_margin_ms);
    set!(warmup => warmup_ms);
    if args.id_prefix.is_some() {
        config.id_prefix = args.id_prefix.clone();
    }
    if let Some(count) = args.count {
        config.count = Some(count);
        config.duration_ms = None;
    }
    if let Some(duration) = args.duration {
        config.duration_ms =
            Some(u64::try_from(duration).map_err(|_| anyhow!("--duration must not be negative"))?);
        config.count = None;
    }
    if config.count.is_none() && config.duration_ms.is_none() && !args.realtime {
        config.count = Some(10_000);
    }
    let now = SystemClock.now_ms();
    if let Some(start) = args.start {
        config.start_ms = start;
    } else if !in_file("start_ms") {
        config.start_ms = if args.realtime {
            now
        } else {
            let length_ms = match (config.count, config.duration_ms) {
                (Some(n), _) if config.rate > 0.0 => (n as f64 * 1000.0 / config.rate) as i64,
                (_, Some(d)) => d as i64,
                _ => 0,
            };
            let start = now.saturating_sub(length_ms);
            start - start.rem_euclid(WINDOW_MS)
        };
    }
    Ok(config)
}

/// Where the events go.
enum Sink {
    Write {
        out: Box<dyn Write + Send>,
        name: String,
    },
    Server {
        client: Client,
        accepted: u64,
        rejected: u64,
    },
}

impl Sink {
    /// `--server` (POST batches) or `--out` (a file, `-` = stdout), else
    /// stdout.
    fn open(args: &SinkArgs) -> anyhow::Result<Sink> {
        let (server, out) = (args.server.as_deref(), args.out.as_deref());
        Ok(match (server, out) {
            (Some(server), _) => {
                let token = resolve_token(args.token.clone(), &args.data_dir, server);
                Sink::Server {
                    client: Client::new(server, token, args.ca_cert.as_deref())?,
                    accepted: 0,
                    rejected: 0,
                }
            }
            (None, Some(path)) if path.as_os_str() != "-" => Sink::Write {
                out: Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    std::fs::File::create(path)
                        .with_context(|| format!("--out: cannot create {}", path.display()))?,
                )),
                name: path.display().to_string(),
            },
            _ => Sink::Write {
                out: Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    std::io::stdout(),
                )),
                name: "stdout".to_string(),
            },
        })
    }

    fn describe(&self) -> String {
        match self {
            Sink::Write { name, .. } => name.clone(),
            Sink::Server { client, .. } => client.base.clone(),
        }
    }

    /// Sends or writes one batch of NDJSON lines (`events` of them).
    async fn flush(&mut self, buf: &mut Vec<u8>, events: u64) -> anyhow::Result<()> {
        if events == 0 {
            return Ok(());
        }
        match self {
            Sink::Write { out, name } => {
                out.write_all(buf)
                    .and_then(|_| out.flush())
                    .with_context(|| format!("writing events to {name}"))?;
            }
            Sink::Server {
                client,
                accepted,
                rejected,
            } => {
                let body = Bytes::from(std::mem::take(buf));
                let response = post_batch(client, body).await?;
                *accepted += response["accepted"].as_u64().unwrap_or(0);
                for r in response["rejected"].as_array().into_iter().flatten() {
                    *rejected += 1;
                    if *rejected <= 5 {
                        eprintln!("rejected: {}", r["error"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        buf.clear();
        Ok(())
    }
}

/// A flag that turns true on Ctrl-C, so a generator stops cleanly (the
/// output and truth then cover what was emitted).
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

/// POSTs one NDJSON batch to /v1/events. 429 and 503 are retried after
/// `Retry-After` (or a growing backoff); so are failed connections. Every
/// event carries its event_id, so a retry that stores a batch twice only adds
/// duplicates, which a pipeline drops.
async fn post_batch(client: &Client, body: Bytes) -> anyhow::Result<Value> {
    const ATTEMPTS: u32 = 10;
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        let result = client
            .request(Method::POST, "/v1/events")
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r)
                if matches!(
                    r.status(),
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) && attempt < ATTEMPTS =>
            {
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(delay);
                tokio::time::sleep(wait).await;
            }
            Ok(r) => return Ok(client.parse_response(r).await?.1),
            Err(e) if attempt == ATTEMPTS => {
                bail!("cannot reach the server at {}: {e}", client.base)
            }
            Err(_) => tokio::time::sleep(delay).await,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the last attempt returns")
}

async fn ads(args: AdsArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    let seed = config.seed;
    let mut generator =
        AdsGenerator::new(config).map_err(|e| anyhow!("invalid ads config: {e}"))?;
    generator.track_truth(args.truth.is_some());

    let mut sink = Sink::open(&args.sink)?;

    let stop = stop_on_ctrl_c();

    let started = Instant::now();
    let batch = args.sink.batch;
    let mut buf: Vec<u8> = Vec::with_capacity(batch as usize * 170);
    let mut in_buf = 0u64;
    if args.realtime {
        // Emit every event once the wall clock reaches its arrival time;
        // flush when a batch is full or 100 ms after the previous flush.
        const TICK_MS: i64 = 100;
        let mut last_flush = SystemClock.now_ms();
        loop {
            let next = generator.next_arrival_ms();
            let now = SystemClock.now_ms();
            if let Some(t) = next {
                if t <= now && in_buf < batch && !stop.load(Ordering::Relaxed) {
                    let event = generator.next_event().expect("an arrival is due");
                    generator.write_json(&event, &mut buf);
                    buf.push(b'\n');
                    in_buf += 1;
                    continue;
                }
            }
            let stopping = next.is_none() || stop.load(Ordering::Relaxed);
            if in_buf >= batch || stopping || now - last_flush >= TICK_MS {
                sink.flush(&mut buf, in_buf).await?;
                in_buf = 0;
                last_flush = now;
            }
            if stopping {
                break;
            }
            let until = next.unwrap().min(last_flush + TICK_MS);
            if until > now {
                tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
            }
        }
    } else {
        while !stop.load(Ordering::Relaxed) {
            let Some(event) = generator.next_event() else {
                break;
            };
            generator.write_json(&event, &mut buf);
            buf.push(b'\n');
            in_buf += 1;
            if in_buf >= batch {
                sink.flush(&mut buf, in_buf).await?;
                in_buf = 0;
            }
        }
        sink.flush(&mut buf, in_buf).await?;
    }
    let elapsed = started.elapsed();

    if let Some(path) = &args.truth {
        let truth = generator.truth().expect("tracked");
        truth
            .write_file(path)
            .with_context(|| format!("--truth: cannot write {}", path.display()))?;
    }

    // The summary goes to stderr: stdout may carry the events.
    let counts = generator.by_category();
    let total = counts.total();
    let mut summary = format!(
        "simulated {total} ad_click events (seed {seed}) in {:.2} s ({:.0} events/s) -> {}\n",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9),
        sink.describe()
    );
    for category in Category::ALL {
        let n = counts.get(category);
        summary.push_str(&format!(
            "  {:<13}{n:>12}  {:>5.1}%\n",
            category.as_str(),
            100.0 * n as f64 / total.max(1) as f64
        ));
    }
    summary.push_str(&format!(
        "  unique event ids {}, counted by a correct pipeline {}\n",
        total - counts.duplicate,
        total - counts.duplicate - counts.late_beyond
    ));
    if let (Some(first), Some(max)) = (generator.min_event_time(), generator.max_event_time()) {
        summary.push_str(&format!(
            "  event time {} .. {}\n",
            format_rfc3339_ms(first),
            format_rfc3339_ms(max)
        ));
    }
    if let Sink::Server {
        accepted, rejected, ..
    } = &sink
    {
        summary.push_str(&format!(
            "  server accepted {accepted}, rejected {rejected}\n"
        ));
    }
    if let Some(path) = &args.truth {
        summary.push_str(&format!("  truth: {}\n", path.display()));
    }
    if stop.load(Ordering::Relaxed) {
        summary.push_str("  interrupted: the output and truth cover the events emitted so far\n");
    }
    eprint!("{summary}");
    if let Sink::Server { rejected, .. } = sink {
        if rejected > 0 {
            bail!("{rejected} events were rejected by the server; the truth file does not describe what it stored");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("3d"), Ok(259_200_000));
        assert_eq!(
            parse_duration("1.5s"),
            Err("\"1.5s\" is not a duration like 500ms, 60s, 5m, 1h or 7d".to_owned())
        );
    }
}
