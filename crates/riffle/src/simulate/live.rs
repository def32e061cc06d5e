//! `riffle simulate live`: a simulated live-streaming platform's events as
//! NDJSON (file or stdout) or POSTed to a running server, optionally paced
//! to the wall clock, plus the hidden truth (every user's tastes).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use riffle_core::time::{format_rfc3339_ms, Clock, SystemClock};
use riffle_sim::live::{LiveConfig, LiveGenerator, PRESETS};

use super::{parse_duration, parse_start, stop_on_ctrl_c, Sink, SinkArgs};

pub(super) const AFTER_HELP: &str = "\
Presets (--preset): small (3,000 users, 400 streamers, 6 h; the default), medium (20,000 users,
2,000 streamers, 2 days), twitch-100k (100K users, 162K streamers, ~3M watch sessions over 6,148
ten-minute steps, one heartbeat per step: shaped like the public Twitch 100k dataset).
The truth file (NDJSON) has a summary line (the utility the users follow), one line per user
(language, taste per category, favourite streamers, weights) and one per streamer.
See docs/simulate.md.

Examples:
  riffle simulate live --out live.ndjson --truth live-truth.ndjson
  riffle simulate live --preset medium --seed 7 --duplicates 0.01 --out-of-order 0.05 --out live.ndjson
  riffle simulate live --realtime --duration 1h --server http://127.0.0.1:8080";

#[derive(Args)]
pub struct LiveArgs {
    /// Starting point: one of small, medium, twitch-100k.
    #[arg(long, default_value = "small")]
    preset: String,
    /// JSON file with generator fields (docs/simulate.md) applied over the preset; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Random seed: the same seed and options give the same events. Default: the preset's (1).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of users (u0 ... uN-1).
    #[arg(long, value_name = "N")]
    users: Option<u32>,
    /// Number of streamers (b0 ... bN-1).
    #[arg(long, value_name = "N")]
    streamers: Option<u32>,
    /// Span of event time to simulate, e.g. 30m, 6h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<i64>,
    /// Event time of the start: epoch ms or RFC 3339. Default: the simulation ends about now
    /// (now with --realtime).
    #[arg(long, value_name = "TIME", value_parser = parse_start)]
    start: Option<i64>,
    /// Heartbeat interval of live streams, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    heartbeat: Option<i64>,
    /// Share of streams that end without stream_ended (0..=1).
    #[arg(long, value_name = "F")]
    vanish_rate: Option<f64>,
    /// Share of events emitted again later with the same event_id (0..=1).
    #[arg(long, value_name = "F")]
    duplicates: Option<f64>,
    /// Share of events emitted behind later ones, by up to --max-out-of-order (0..=1).
    #[arg(long, value_name = "F")]
    out_of_order: Option<f64>,
    /// Largest delay of an out-of-order event. Default 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_out_of_order: Option<i64>,
    /// Event id prefix. Default live-<seed>-.
    #[arg(long, value_name = "PREFIX")]
    id_prefix: Option<String>,
    #[command(flatten)]
    sink: SinkArgs,
    /// Write the hidden truth (users' tastes, streamers' traits) to this file.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// Pace to the wall clock: event time follows now (see also --speed).
    #[arg(long)]
    realtime: bool,
    /// With --realtime: event time runs this many times faster than the wall clock.
    #[arg(long, value_name = "X", default_value_t = 1.0, requires = "realtime")]
    speed: f64,
}

fn build_config(args: &LiveArgs) -> anyhow::Result<LiveConfig> {
    let mut config = LiveConfig::preset(&args.preset).map_err(|e| anyhow!("--{e}"))?;
    let mut start_in_file = false;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config: cannot read {}", path.display()))?;
        // Fields in the file replace the preset's, field by field.
        let mut merged = serde_json::to_value(&config)?;
        let overrides: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| anyhow!("--config {}: {e}", path.display()))?;
        start_in_file = overrides.contains_key("start_ms");
        for (key, value) in overrides {
            merged[key] = value;
        }
        config = serde_json::from_value(merged)
            .map_err(|e| anyhow!("--config {}: {e}", path.display()))?;
    }
    macro_rules! set {
        ($flag:ident => $field:ident) => {
            if let Some(v) = args.$flag.clone() {
                config.$field = v;
            }
        };
    }
    set!(seed => seed);
    set!(users => users);
    set!(streamers => streamers);
    set!(duration => duration_ms);
    set!(heartbeat => heartbeat_ms);
    set!(vanish_rate => vanish_rate);
    set!(duplicates => duplicates);
    set!(out_of_order => out_of_order);
    set!(max_out_of_order => max_out_of_order_ms);
    if args.id_prefix.is_some() {
        config.id_prefix = args.id_prefix.clone();
    }
    let now = SystemClock.now_ms();
    if let Some(start) = args.start {
        config.start_ms = start;
    } else if !start_in_file {
        config.start_ms = if args.realtime {
            now
        } else {
            let start = now.saturating_sub(config.duration_ms);
            start - start.rem_euclid(60_000)
        };
    }
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed: {} must be a positive number", args.speed);
    }
    Ok(config)
}

pub(super) async fn run(args: LiveArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    let (seed, start_ms) = (config.seed, config.start_ms);
    let mut generator = LiveGenerator::new(config)
        .map_err(|e| anyhow!("invalid live config: {e} (presets: {})", PRESETS.join(", ")))?;
    let mut sink = Sink::open(&args.sink)?;
    let stop = stop_on_ctrl_c();
    let started = Instant::now();
    let wall_start = SystemClock.now_ms();
    let mut buf: Vec<u8> = Vec::with_capacity(args.sink.batch as usize * 160);
    let mut in_buf = 0u64;
    let mut last_flush = Instant::now();
    let mut last_time = None;
    while !stop.load(Ordering::Relaxed) {
        if args.realtime {
            // Wait until the wall clock reaches the next event's time
            // (scaled by --speed), flushing what is buffered meanwhile.
            let Some(next) = generator.next_arrival_ms() else {
                break;
            };
            let due_wall = wall_start + ((next - start_ms) as f64 / args.speed) as i64;
            let now = SystemClock.now_ms();
            if due_wall > now {
                sink.flush(&mut buf, in_buf).await?;
                in_buf = 0;
                last_flush = Instant::now();
                let wait = (due_wall - now).min(100) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
        }
        let Some(event) = generator.next_event() else {
            break;
        };
        last_time = Some(event.time_ms);
        generator.write_json(&event, &mut buf);
        buf.push(b'\n');
        in_buf += 1;
        if in_buf >= args.sink.batch
            || (args.realtime && last_flush.elapsed() >= Duration::from_millis(100))
        {
            sink.flush(&mut buf, in_buf).await?;
            in_buf = 0;
            last_flush = Instant::now();
        }
    }
    sink.flush(&mut buf, in_buf).await?;
    let elapsed = started.elapsed();

    if let Some(path) = &args.truth {
        let file = std::fs::File::create(path)
            .with_context(|| format!("--truth: cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        generator
            .write_truth(&mut out)
            .and_then(|_| std::io::Write::flush(&mut out))
            .with_context(|| format!("--truth: cannot write {}", path.display()))?;
    }

    let stats = generator.stats();
    let mut summary = format!(
        "simulated {} live events (seed {seed}) in {:.2} s ({:.0} events/s) -> {}\n",
        stats.events,
        elapsed.as_secs_f64(),
        stats.events as f64 / elapsed.as_secs_f64().max(1e-9),
        sink.describe()
    );
    for (kind, n) in &stats.by_type {
        summary.push_str(&format!("  {kind:<17}{n:>12}\n"));
    }
    summary.push_str(&format!(
        "  streams started {}, ended without stream_ended {}, most live at once {}\n  watch sessions {}, distinct (user, streamer) pairs {}, duplicates {}, out of order {}\n",
        stats.streams_started,
        stats.streams_vanished,
        stats.max_live,
        stats.joins,
        generator.history().pairs(),
        stats.duplicates,
        stats.out_of_order,
    ));
    if let Some(last) = last_time {
        summary.push_str(&format!(
            "  event time {} .. {}\n",
            format_rfc3339_ms(start_ms),
            format_rfc3339_ms(last)
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
        summary.push_str("  interrupted: the output covers the events emitted so far\n");
    }
    eprint!("{summary}");
    if let Sink::Server { rejected, .. } = sink {
        if rejected > 0 {
            anyhow::bail!("{rejected} events were rejected by the server");
        }
    }
    Ok(())
}
