//! `riffle bench features`: the cost of the ranking path's feature read —
//! for a request with N live candidates, their stream, streamer and (user,
//! streamer) rows read from the embedded online store in one batch each
//! and decoded (stream + streamer + pair = 40 of the built-in features per
//! candidate). In-process: no HTTP (the API path comes with the features
//! API). Also the engine's throughput building the state from a simulated
//! history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{Clock, SystemClock};
use riffle_features::engine::pair_id;
use riffle_features::{EntityKind, FeatureEngine, FeatureSet, MemoryOnlineStore, OnlineStore};
use riffle_sim::live::{LiveConfig, LiveGenerator};
use riffle_sim::rng::Rng;

use super::harness::Latencies;

#[derive(Args)]
pub struct FeaturesBenchArgs {
    /// Simulator preset whose history fills the store (small, medium, twitch-100k).
    #[arg(long, default_value = "medium")]
    preset: String,
    /// Candidates per request.
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
    /// Requests to time.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

pub async fn bench_features(args: FeaturesBenchArgs) -> anyhow::Result<()> {
    let config = LiveConfig::preset(&args.preset).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let set = FeatureSet::defaults();
    let mut generator =
        LiveGenerator::new(config).map_err(|e| anyhow::anyhow!("simulator: {e}"))?;
    let limits = ParseLimits::new(i64::MAX / 2);
    let mut engine = FeatureEngine::new(&set);
    let mut buf = Vec::new();
    let mut events = 0u64;
    let mut last = 0;
    let mut engine_time = Duration::ZERO;
    while let Some(event) = generator.next_event() {
        buf.clear();
        generator.write_json(&event, &mut buf);
        let started = Instant::now();
        let parsed = parse_event(&buf, &limits)?;
        engine.apply(&parsed);
        engine_time += started.elapsed();
        events += 1;
        last = last.max(event.time_ms);
    }
    println!(
        "engine: {events} events of preset {} parsed and applied in {:.2} s ({:.0} events/s on one core, JSON parse included), {} entities",
        args.preset,
        engine_time.as_secs_f64(),
        events as f64 / engine_time.as_secs_f64().max(1e-9),
        engine.states.len()
    );

    let clock = Arc::new(SystemClock);
    let store = MemoryOnlineStore::new(clock.clone());
    let rows = engine.states.take_rows(last, clock.now_ms());
    for chunk in rows.chunks(riffle_features::MAX_BATCH) {
        store.put_batch(chunk).await?;
    }
    // Candidates: streams with a known streamer; the user: any user.
    let streams: Vec<(String, String)> = engine
        .states
        .ids(EntityKind::Stream)
        .filter_map(|id| {
            let (_, values) = engine.states.read(EntityKind::Stream, id, last)?;
            let names: Vec<&str> = engine.states.names(EntityKind::Stream).collect();
            let at = names.iter().position(|n| *n == "stream_streamer")?;
            match &values[at] {
                riffle_features::Value::Str(s) => Some((id.to_string(), s.clone())),
                _ => None,
            }
        })
        .collect();
    let users: Vec<String> = engine
        .states
        .ids(EntityKind::User)
        .map(|id| id.to_string())
        .collect();
    anyhow::ensure!(
        !streams.is_empty() && !users.is_empty(),
        "the preset's history has no streams or users"
    );
    println!(
        "store: {} rows ({} streams with a streamer, {} users); request: {} candidates x 40 features (stream + streamer + pair rows), 3 batch reads + decode",
        rows.len(),
        streams.len(),
        users.len(),
        args.candidates
    );
    let mut rng = Rng::new(7);
    let mut latencies = Latencies::new();
    let mut decoded_values = 0usize;
    for request in 0..args.requests + args.requests / 10 {
        let user = &users[rng.below(users.len() as u64) as usize];
        let picks: Vec<&(String, String)> = (0..args.candidates)
            .map(|_| &streams[rng.below(streams.len() as u64) as usize])
            .collect();
        let stream_ids: Vec<&str> = picks.iter().map(|(s, _)| s.as_str()).collect();
        let streamer_ids: Vec<&str> = picks.iter().map(|(_, b)| b.as_str()).collect();
        let pairs: Vec<String> = picks.iter().map(|(_, b)| pair_id(user, b)).collect();
        let pair_ids: Vec<&str> = pairs.iter().map(String::as_str).collect();
        let started = Instant::now();
        let mut values = 0;
        for (kind, ids) in [
            (EntityKind::Stream, &stream_ids),
            (EntityKind::Streamer, &streamer_ids),
            (EntityKind::UserStreamer, &pair_ids),
        ] {
            for row in store.get_batch(kind, ids).await?.into_iter().flatten() {
                values += engine.states.decode_row(&row)?.len();
            }
        }
        let elapsed = started.elapsed();
        // The first tenth warms caches and is not recorded.
        if request >= args.requests / 10 {
            latencies.record(elapsed);
            decoded_values += values;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "batch read of {} candidates: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} requests ({:.0} values decoded per request)",
        args.candidates,
        ms(latencies.quantile(0.5)),
        ms(latencies.quantile(0.99)),
        ms(latencies.quantile(1.0)),
        latencies.len(),
        decoded_values as f64 / latencies.len().max(1) as f64
    );
    Ok(())
}
