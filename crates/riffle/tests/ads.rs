//! End-to-end tests of the ad click pipeline through the real `riffle`
//! binary: generated traffic (riffle_sim, with duplicates, out-of-order and
//! late events) is POSTed to `/v1/events`, `riffle serve` aggregates it, and
//! the results are read back from the aggregate store (with the server
//! stopped), through the HTTP queries and through `riffle reconcile` /
//! `riffle recalc`.
//!
//! The oracle is the simulator's `GroundTruth` for the unfiltered counts and a
//! brute-force recount of the generated events here for the filtered counts
//! and the top-N rows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use riffle_ads::{AggKey, AggregateRow, AggregateStore, RedbAggregateStore, WriteBatch};
use riffle_sim::ads::GroundTruth;
use riffle_sim::rng::Rng;
use riffle_testkit::oracle::*;
use riffle_testkit::*;
use serde_json::{json, Value};

/// How long the pipeline may take to catch up after the last event.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ the server

/// Config overrides for one server run.
fn ads_env(emit_ms: u64, checkpoint_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("RIFFLE__ADS__EMIT_INTERVAL_MS", emit_ms.to_string()),
        (
            "RIFFLE__ADS__CHECKPOINT_INTERVAL_MS",
            checkpoint_ms.to_string(),
        ),
    ]
}

async fn start(dir: &TestDir, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(dir, &env).await
}

fn offsets(value: &Value) -> BTreeMap<u64, u64> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an offset map: {value}"))
        .iter()
        .map(|(p, o)| (p.parse().expect("partition"), o.as_u64().expect("offset")))
        .collect()
}

/// Polls `GET /v1/pipelines` until the pipeline has processed all of its
/// input (at least `min_input` records), committed the output of all of it,
/// and the aggregate writer has applied every aggregates record — the same
/// on several polls in a row. Returns the last report.
async fn wait_caught_up(server: &Server, min_input: u64) -> Value {
    let until = Instant::now() + CATCH_UP_DEADLINE;
    let mut previous: Option<Value> = None;
    let mut stable = 0;
    loop {
        let (status, body) = server.get_json("/v1/pipelines").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let report = body["pipelines"][0].clone();
        let input = server.end_offsets("ad_clicks").await;
        let aggregates = server.end_offsets("ad_click_aggregates").await;
        let partitions = report["partitions"].as_array().expect("partitions");
        let tasks_done = partitions.len() == input.len()
            && partitions.iter().all(|p| {
                let end = input[&p["partition"].as_u64().unwrap()];
                p["state"] == "running"
                    && p["lag"] == 0
                    && p["processed_offset"] == end
                    && p["committed_offset"] == end
            });
        let writer = &report["writer"];
        let writer_done = writer["state"] == "running" && {
            let positions = offsets(&writer["positions"]);
            aggregates
                .iter()
                .all(|(p, end)| positions.get(p).copied().unwrap_or(0) == *end)
        };
        let done = tasks_done && writer_done && input.values().sum::<u64>() >= min_input;
        let fingerprint = json!([input, aggregates]);
        if done && previous.as_ref() == Some(&fingerprint) {
            stable += 1;
            if stable >= 3 {
                return report;
            }
        } else {
            stable = 0;
        }
        previous = done.then_some(fingerprint);
        if Instant::now() >= until {
            let log = server.log();
            panic!(
                "pipeline did not catch up within {CATCH_UP_DEADLINE:?} (input {input:?}, aggregates {aggregates:?}):\n{report:#}\nserver log tail:\n{}",
                &log[log.len().saturating_sub(4000)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(event_id, reason header)` of every record of the late topic.
async fn late_records(server: &Server) -> Vec<(String, String)> {
    server
        .all_records("ads.late")
        .await
        .iter()
        .map(|r| {
            (
                r["value"]["event_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("late record without event_id: {r}"))
                    .to_string(),
                r["headers"]["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[track_caller]
fn stop_gracefully(server: &mut Server) {
    let status = server.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "SIGTERM exit: {status}\n{}", server.log());
}

/// The results of one run of the pipeline over the traffic.
struct RunResult {
    store: StoreContents,
    late: Vec<(String, String)>,
}

/// Ingests every chunk into a fresh server, waits for the pipeline, stops
/// the server and reads the store.
async fn run_straight(
    traffic: &Traffic,
    setup: Option<&AdsSetup>,
    env: &[(&'static str, String)],
) -> (RunResult, AdsSetup) {
    let dir = TestDir::new();
    let mut server = start(&dir, env).await;
    let own_setup = ads_setup(&server).await;
    for (body, len) in traffic.chunks.iter().zip(&traffic.chunk_len) {
        post_chunk(&server, body, *len).await;
    }
    wait_caught_up(&server, traffic.events() as u64).await;
    let late = late_records(&server).await;
    stop_gracefully(&mut server);
    let store = read_store(&dir.data_dir(), traffic, setup.unwrap_or(&own_setup));
    (RunResult { store, late }, own_setup)
}

/// Polls `GET /v1/pipelines` until every task has written a checkpoint
/// since it started (its last checkpoint is not the one it restored from).
async fn wait_fresh_checkpoints(server: &Server) {
    let until = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        let (status, body) = server.get_json("/v1/pipelines").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let partitions = body["pipelines"][0]["partitions"].as_array().cloned();
        let fresh = partitions.is_some_and(|ps| {
            !ps.is_empty()
                && ps.iter().all(|p| {
                    let id = &p["last_checkpoint"]["id"];
                    !id.is_null() && *id != p["restored_from"]
                })
        });
        if fresh {
            return;
        }
        assert!(
            Instant::now() < until,
            "no fresh checkpoint of every task: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ingests the chunks while the server is killed with SIGKILL at random
/// moments (seeded) and restarted on the same data dir, `min_rounds` times
/// or more; chunks that were not acknowledged are sent again. Returns the
/// result and how often each chunk was sent.
async fn run_with_kills(
    traffic: &Traffic,
    setup: &AdsSetup,
    seed: u64,
    min_rounds: usize,
) -> (RunResult, Vec<u32>) {
    let dir = TestDir::new();
    let mut rng = Rng::new(seed);
    let chunks: Arc<Vec<(String, usize)>> = Arc::new(
        traffic
            .chunks
            .iter()
            .cloned()
            .zip(traffic.chunk_len.iter().copied())
            .collect(),
    );
    let next_chunk = Arc::new(AtomicUsize::new(0));
    let attempts: Arc<Vec<AtomicU32>> =
        Arc::new((0..chunks.len()).map(|_| AtomicU32::new(0)).collect());
    let mut rounds = 0;
    let mut rounds_after_ingest = 0;
    let mut replays = 0;
    let mut restores = 0;
    loop {
        let ingesting = next_chunk.load(Ordering::SeqCst) < chunks.len();
        if !ingesting && rounds >= min_rounds && rounds_after_ingest >= 4 {
            break;
        }
        // Checkpoints from every 100 ms to rarer than the rounds last, so
        // restarts replay anything from nothing to a whole round's input.
        let checkpoint_ms = [100, 250, 1000, 5000][rng.below(4) as usize];
        let mut server = start(&dir, &ads_env(20, checkpoint_ms)).await;
        let acked_this_round = Arc::new(AtomicUsize::new(0));
        let client = ingesting.then(|| {
            let (http, url) = (server.http.clone(), server.url("/v1/events"));
            let (chunks, next_chunk, attempts, acked) = (
                chunks.clone(),
                next_chunk.clone(),
                attempts.clone(),
                acked_this_round.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next_chunk.load(Ordering::SeqCst);
                    let Some((body, len)) = chunks.get(i) else {
                        return;
                    };
                    attempts[i].fetch_add(1, Ordering::SeqCst);
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await;
                    // Killed mid-request: the chunk is sent again next round.
                    let Ok(response) = sent else { return };
                    let status = response.status();
                    let Ok(answer) = response.json::<Value>().await else {
                        return;
                    };
                    assert_eq!(status, StatusCode::OK, "chunk {i}: {answer}");
                    assert_eq!(answer, json!({"accepted": len, "rejected": []}));
                    next_chunk.store(i + 1, Ordering::SeqCst);
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            })
        });
        if ingesting {
            // Kill after 0-2 acknowledged chunks plus a random few ms, so
            // the kill often lands inside a request (and always while the
            // pipeline processes what came before).
            let target = rng.below(3) as usize;
            let until = Instant::now() + Duration::from_secs(30);
            while acked_this_round.load(Ordering::SeqCst) < target
                && next_chunk.load(Ordering::SeqCst) < chunks.len()
            {
                assert!(Instant::now() < until, "the client made no progress");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else {
            if rounds_after_ingest % 2 == 0 {
                // Every other round after ingestion lets each task write a
                // checkpoint of its own before the kill, so the next start
                // restores from one however slow the machine is (random
                // kills alone may all land before the first checkpoint).
                wait_fresh_checkpoints(&server).await;
            }
            rounds_after_ingest += 1;
        }
        let jitter = rng.below(if ingesting { 30 } else { 200 });
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let status = server.signal_and_wait(libc::SIGKILL);
        assert!(!status.success(), "SIGKILL exit: {status}");
        if let Some(client) = client {
            client.await.expect("ingest client");
        }
        let log = server.log();
        replays += log.contains("replay reached the committed offset") as usize;
        restores += log.contains("restored task from checkpoint") as usize;
        rounds += 1;
    }
    assert!(rounds >= min_rounds);
    eprintln!("SIGKILL rounds: {rounds} ({rounds_after_ingest} after ingestion), {restores} restored from a checkpoint, {replays} replayed committed input");
    assert!(
        replays > 0 && restores > 0,
        "no restart replayed input after a checkpoint ({rounds} rounds, {replays} replays, {restores} restores): the kills tested nothing"
    );
    let mut server = start(&dir, &ads_env(20, 250)).await;
    wait_caught_up(&server, traffic.events() as u64).await;
    let late = late_records(&server).await;
    stop_gracefully(&mut server);
    let store = read_store(&dir.data_dir(), traffic, setup);
    let attempts = attempts.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    (RunResult { store, late }, attempts)
}

/// The late topic holds exactly the late-beyond events, once each, as
/// `too_late`.
#[track_caller]
fn assert_late_exact(run: &str, late: &[(String, String)], truth: &GroundTruth) {
    let mut seen = BTreeMap::new();
    for (id, reason) in late {
        assert_eq!(reason, "too_late", "{run}: late record {id}");
        *seen.entry(id.as_str()).or_insert(0) += 1;
    }
    let expected: BTreeMap<&str, i32> = truth
        .late_beyond_ids()
        .into_iter()
        .map(|id| (id, 1))
        .collect();
    assert_same(
        &format!("{run}: late topic (event id → records)"),
        &seen,
        &expected,
    );
}

// ------------------------------------------------------------------ tests

/// The requirement: the same traffic gives identical aggregates
/// straight through, with frequent checkpoints, and with SIGKILL + restart,
/// and they equal the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_way_determinism_straight_checkpointed_and_killed() {
    let traffic = traffic(41, 20.0, 12 * 60_000, historical_start(), 48);
    traffic.assert_shape(10);

    // (a) Straight through: no checkpoint before the final one.
    let (straight, setup) = run_straight(&traffic, None, &ads_env(200, 3_600_000)).await;
    let expected = expected(&traffic, &setup);
    assert!(
        setup.popular.len() >= 2 && setup.filters.len() >= 2,
        "the default config has filters and several top-N windows"
    );
    assert_same("(a) count rows", &straight.store.rows, &expected.rows);
    assert_same("(a) top rows", &straight.store.tops, &expected.tops);
    assert_late_exact("(a)", &straight.late, &traffic.truth);

    // (b) Checkpoints every 100 ms, emits every 20 ms.
    let (checkpointed, _) = run_straight(&traffic, Some(&setup), &ads_env(20, 100)).await;
    assert_same(
        "(b) count rows",
        &checkpointed.store.rows,
        &straight.store.rows,
    );
    assert_same(
        "(b) top rows",
        &checkpointed.store.tops,
        &straight.store.tops,
    );
    assert_late_exact("(b)", &checkpointed.late, &traffic.truth);

    // (c) SIGKILL at random moments, restarted on the same data dir.
    let (killed, attempts) = run_with_kills(&traffic, &setup, 0x5EED, 20).await;
    assert_same("(c) count rows", &killed.store.rows, &straight.store.rows);
    assert_same("(c) top rows", &killed.store.tops, &straight.store.tops);
    // Re-sent chunks repeat records in the log; dedup drops the repeats of
    // late events too, so the late topic is still exact.
    assert_late_exact("(c)", &killed.late, &traffic.truth);
    let resent = attempts.iter().filter(|a| **a > 1).count();
    eprintln!(
        "three-way: {} events, {} count rows, {} top rows, {} late-beyond; (c): {resent} chunks re-sent",
        traffic.events(),
        expected.rows.len(),
        expected.tops.len(),
        traffic.truth.late_beyond.len(),
    );
}

/// `GET /v1/ads/...` answers against the truth, and every bad parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_http_match_the_truth_and_reject_bad_parameters() {
    let traffic = traffic(7, 5.0, 11 * 60_000, historical_start(), 8);
    traffic.assert_shape(10);
    let dir = TestDir::new();
    let mut env = ads_env(50, 200);
    // Caught-up partitions stop holding the watermark back quickly, so
    // the whole historical range becomes complete.
    env.push(("RIFFLE__ADS__IDLE_TIMEOUT_MS", "500".to_string()));
    let server = start(&dir, &env).await;
    let setup = ads_setup(&server).await;
    let expected = expected(&traffic, &setup);
    for (body, len) in traffic.chunks.iter().zip(&traffic.chunk_len) {
        post_chunk(&server, body, *len).await;
    }
    wait_caught_up(&server, traffic.events() as u64).await;
    let (from, to) = (traffic.first_minute, traffic.end_minute);

    // The configured filters.
    let (status, body) = server.get_json("/v1/ads/filters").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "filters": [
                {"id": 1, "name": "country_usa", "country": ["USA"], "ip": [], "user_id": []},
                {"id": 2, "name": "net_73_162", "country": [], "ip": ["73.162.0.0/16"], "user_id": []},
                {"id": 3, "name": "usa_in_net_73", "country": ["USA"], "ip": ["73.0.0.0/8"], "user_id": []},
            ],
            "popular": [
                {"window_minutes": 1, "filter_id": 0},
                {"window_minutes": 5, "filter_id": 0},
                {"window_minutes": 5, "filter_id": 1},
            ],
            "top_n": 100,
        })
    );

    // The pipeline status: offsets, lag, watermark and a checkpoint at the
    // end of the input, per partition.
    let records = server.all_records("ad_clicks").await;
    let mut max_time: BTreeMap<u64, i64> = BTreeMap::new();
    for r in &records {
        let t = max_time
            .entry(r["partition"].as_u64().unwrap())
            .or_insert(i64::MIN);
        *t = (*t).max(r["timestamp"].as_i64().unwrap());
    }
    let input = server.end_offsets("ad_clicks").await;
    let until = Instant::now() + CATCH_UP_DEADLINE;
    let report = loop {
        let (status, body) = server.get_json("/v1/pipelines").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let report = body["pipelines"][0].clone();
        let checkpointed = report["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["last_checkpoint"]["input_offset"] == p["end_offset"]);
        let complete = report["watermark"].as_i64().is_some_and(|w| w >= to);
        if checkpointed && complete {
            break report;
        }
        assert!(
            Instant::now() < until,
            "no checkpoint at the end of the input or watermark before {to}: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["name"], "ads");
    assert_eq!(report["input_topic"], "ad_clicks");
    assert_eq!(report["output_topic"], "ad_click_aggregates");
    assert_eq!(report["late_topic"], "ads.late");
    assert_eq!(report["lag"], 0);
    let partitions = report["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), input.len());
    let (mut duplicates, mut late) = (0, 0);
    for p in partitions {
        let partition = p["partition"].as_u64().unwrap();
        let end = input[&partition];
        assert!(end > 0, "partition {partition} got no clicks");
        assert_eq!(p["end_offset"], end, "{p}");
        assert_eq!(p["processed_offset"], end, "{p}");
        assert_eq!(p["committed_offset"], end, "{p}");
        assert_eq!(p["records_in"], end, "{p}");
        assert_eq!(p["lag"], 0, "{p}");
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(p["max_event_time"], max_time[&partition], "{p}");
        assert_eq!(
            p["watermark"],
            max_time[&partition] - OUT_OF_ORDERNESS,
            "{p}"
        );
        let checkpoint = &p["last_checkpoint"];
        assert!(checkpoint["id"].as_u64().unwrap() >= 1, "{p}");
        assert!(checkpoint["bytes"].as_u64().unwrap() > 0, "{p}");
        assert!(checkpoint["at_ms"].as_i64().unwrap() <= now_ms(), "{p}");
        duplicates += p["duplicates"].as_u64().unwrap();
        late += p["late"].as_u64().unwrap();
    }
    let by_category = traffic.truth.summary.by_category;
    assert_eq!(duplicates, by_category.duplicate);
    assert_eq!(late, by_category.late_beyond);

    // aggregated_count for a few ads (most popular to rare), whole range and
    // sub-ranges, unfiltered and filtered (by name and by id).
    let count = |ad: &str, from: i64, to: i64, filter: u32| -> u64 {
        let range = AggKey::new(from, "", 0)..AggKey::new(to, "", 0);
        expected
            .rows
            .range(range)
            .filter(|(k, _)| k.ad_id == ad && k.filter_id == filter)
            .map(|(_, c)| *c)
            .sum()
    };
    let mut rng = Rng::new(99);
    let ads = [
        "ad-0000001",
        "ad-0000002",
        "ad-0000010",
        "ad-0000042",
        "ad-0000250",
    ];
    for ad in ads {
        assert!(
            traffic.truth.count_range(ad, from, to) > 0,
            "{ad} has clicks"
        );
        let mut ranges = vec![(from, to)];
        for _ in 0..3 {
            let a = from + rng.below(((to - from) / MINUTE) as u64) as i64 * MINUTE;
            let b = a + (1 + rng.below(((to - a) / MINUTE) as u64) as i64) * MINUTE;
            ranges.push((a, b));
        }
        for (a, b) in ranges {
            let (status, body) = server
                .get_json(&format!("/v1/ads/{ad}/aggregated_count?from={a}&to={b}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(
                body,
                json!({"ad_id": ad, "count": traffic.truth.count_range(ad, a, b),
                    "from": a, "to": b, "filter_id": 0, "complete": true})
            );
            for filter in ["country_usa", "1", "net_73_162"] {
                let (status, body) = server
                    .get_json(&format!(
                        "/v1/ads/{ad}/aggregated_count?from={}&to={}&filter={filter}",
                        rfc3339(a),
                        rfc3339(b)
                    ))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let id = if filter == "net_73_162" { 2 } else { 1 };
                assert_eq!(
                    body["count"],
                    count(ad, a, b, id),
                    "{ad} {filter} [{a}, {b})"
                );
                assert_eq!(body["filter_id"], id);
                assert_eq!(body["complete"], true);
            }
        }
    }
    // An ad without clicks, an empty range, ranges before the retention and
    // after the data: 0, not an error. A range over everything: the total.
    let cases = [
        ("ad-9999999", from, to, 0),
        ("ad-0000001", from + MINUTE, from + MINUTE, 0),
        (
            "ad-0000001",
            minute_of(now_ms()) - 60 * 86_400_000,
            minute_of(now_ms()) - 31 * 86_400_000,
            0,
        ),
        ("ad-0000001", to + 60 * MINUTE, to + 24 * 60 * MINUTE, 0),
        (
            "ad-0000001",
            0,
            minute_of(i64::MAX / 4),
            traffic.truth.count_range("ad-0000001", from, to),
        ),
    ];
    for (ad, a, b, expected_count) in cases {
        let (status, body) = server
            .get_json(&format!("/v1/ads/{ad}/aggregated_count?from={a}&to={b}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{ad} [{a}, {b}): {body}");
        assert_eq!(body["count"], expected_count, "{ad} [{a}, {b}): {body}");
    }
    // Defaults: the current minute, which is still open.
    let (status, body) = server.get_json("/v1/ads/ad-0000001/aggregated_count").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 0);
    assert_eq!(body["complete"], false, "{body}");
    assert_eq!(
        body["to"].as_i64().unwrap() - body["from"].as_i64().unwrap(),
        MINUTE
    );

    // popular_ads against the brute-force top-N.
    for &(window, filter_id) in &setup.popular {
        let span = window as i64 * MINUTE;
        for end in [from + span, from + 7 * MINUTE, to - MINUTE, to] {
            let (ids, counts) = expected
                .tops
                .get(&(window, filter_id, end))
                .cloned()
                .unwrap_or_default();
            for n in [1usize, 3, 100] {
                let filter = if filter_id == 1 {
                    "&filter=country_usa"
                } else {
                    ""
                };
                let (status, body) = server
                    .get_json(&format!(
                        "/v1/ads/popular_ads?count={n}&window={window}&to={end}{filter}"
                    ))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let k = n.min(ids.len());
                assert_eq!(
                    body,
                    json!({"ad_ids": ids[..k], "counts": counts[..k], "window": window,
                        "to": end, "filter_id": filter_id, "complete": true}),
                    "window {window} filter {filter_id} end {end} count {n}"
                );
            }
        }
    }
    // Defaults: 10 ads over the shortest window, ending with the current
    // minute (open, so not complete).
    let (status, body) = server.get_json("/v1/ads/popular_ads").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window"], 1);
    assert_eq!(body["complete"], false);
    let (_, body) = server
        .get_json(&format!("/v1/ads/popular_ads?window=5&to={to}"))
        .await;
    assert_eq!(body["ad_ids"].as_array().unwrap().len(), 10, "{body}");

    // Bad parameters: 400 naming the parameter; an unknown filter: 404.
    let bad = [
        (
            format!(
                "/v1/ads/ad-0000001/aggregated_count?from={}&to={to}",
                from + 1
            ),
            "from",
        ),
        (
            format!(
                "/v1/ads/ad-0000001/aggregated_count?from={from}&to={}",
                to - 30_000
            ),
            "to",
        ),
        (
            format!("/v1/ads/ad-0000001/aggregated_count?from={to}&to={from}"),
            "to",
        ),
        (
            "/v1/ads/ad-0000001/aggregated_count?from=yesterday".to_string(),
            "from",
        ),
        (
            format!("/v1/ads/ad-0000001/aggregated_count?from={from}&to=2024-13-45T99:00:00Z"),
            "to",
        ),
        ("/v1/ads/popular_ads?window=five".to_string(), "window"),
        ("/v1/ads/popular_ads?window=7".to_string(), "window"),
        (
            "/v1/ads/popular_ads?window=1&filter=country_usa".to_string(),
            "window",
        ),
        ("/v1/ads/popular_ads?count=0".to_string(), "count"),
        ("/v1/ads/popular_ads?count=101".to_string(), "count"),
        ("/v1/ads/popular_ads?count=ten".to_string(), "count"),
        ("/v1/ads/popular_ads?to=noon".to_string(), "to"),
        (format!("/v1/ads/popular_ads?to={}", to + 1), "to"),
    ];
    for (path, param) in &bad {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = assert_api_error(&body, "invalid_argument");
        assert!(
            message.starts_with(&format!("invalid {param}: ")),
            "{path}: the message does not name {param:?}: {message}"
        );
    }
    for path in [
        "/v1/ads/ad-0000001/aggregated_count?filter=no_such_filter",
        "/v1/ads/ad-0000001/aggregated_count?filter=99",
        "/v1/ads/popular_ads?filter=no_such_filter",
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        let message = assert_api_error(&body, "not_found");
        assert!(message.contains("unknown filter"), "{path}: {message}");
    }
}

/// Corrupted aggregates are found by `riffle reconcile` and repaired by
/// `riffle recalc` while live ingestion goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_corruption_and_recalc_repairs_it_under_live_traffic() {
    let traffic = traffic(23, 5.0, 11 * 60_000, historical_start(), 8);
    traffic.assert_shape(10);
    let dir = TestDir::new();
    let env = ads_env(50, 500);
    let mut server = start(&dir, &env).await;
    let setup = ads_setup(&server).await;
    let expected = expected(&traffic, &setup);
    for (body, len) in traffic.chunks.iter().zip(&traffic.chunk_len) {
        post_chunk(&server, body, *len).await;
    }
    wait_caught_up(&server, traffic.events() as u64).await;
    stop_gracefully(&mut server);
    let (from, to) = (traffic.first_minute, traffic.end_minute);

    // Corrupt five keys with the library, rows only (no positions): a count
    // too high, one too low (filtered), one zeroed, one stray row, and a
    // filtered one too high.
    let stored = read_store(&dir.data_dir(), &traffic, &setup);
    assert_same("before corruption", &stored.rows, &expected.rows);
    let pick = |ad: &str, filter_id: u32, min_count: u64| -> (AggKey, u64) {
        expected
            .rows
            .iter()
            .filter(|(k, c)| k.ad_id == ad && k.filter_id == filter_id && **c >= min_count)
            .map(|(k, c)| (k.clone(), *c))
            .nth(3)
            .unwrap_or_else(|| panic!("no row of {ad} filter {filter_id} with {min_count}+"))
    };
    let mut corrupted: BTreeMap<AggKey, (u64, u64)> = BTreeMap::new(); // key → (stored, expected)
    let (k, c) = pick("ad-0000001", 0, 1);
    corrupted.insert(k, (c + 5, c));
    let (k, c) = pick("ad-0000002", 1, 2);
    corrupted.insert(k, (c - 1, c));
    let (k, c) = pick("ad-0000003", 0, 1);
    corrupted.insert(k, (0, c));
    corrupted.insert(AggKey::new(from + 2 * MINUTE, "ad-0999999", 0), (4, 0));
    let (k, c) = pick("ad-0000004", 2, 1);
    corrupted.insert(k, (c + 1, c));
    assert_eq!(corrupted.len(), 5);
    {
        let store = RedbAggregateStore::open(store_path(&dir.data_dir())).expect("open store");
        let rows = corrupted
            .iter()
            .map(|(key, (stored, _))| AggregateRow {
                key: key.clone(),
                count: *stored,
            })
            .collect();
        store
            .apply(&WriteBatch {
                rows,
                ..WriteBatch::default()
            })
            .expect("apply the corrupt rows");
    }

    let server = start(&dir, &env).await;
    let (from_arg, to_arg) = (from.to_string(), to.to_string());
    let out = server.cli(
        &dir,
        &["reconcile", "--from", &from_arg, "--to", &to_arg, "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "reconcile must fail:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("--json report");
    assert_eq!(report["mismatch_count"], 5, "{report:#}");
    assert_eq!(report["truncated"], false);
    let listed: BTreeMap<AggKey, (u64, u64)> = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                AggKey::new(
                    m["minute"].as_i64().unwrap(),
                    m["ad_id"].as_str().unwrap(),
                    m["filter_id"].as_u64().unwrap() as u32,
                ),
                (
                    m["stored"].as_u64().unwrap(),
                    m["expected"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_same("reconcile mismatches", &listed, &corrupted);
    assert_eq!(
        report["expected_total"],
        traffic.truth.summary.counted_events
    );
    assert!(out.stderr.contains("riffle recalc"), "{}", out.stderr);
    eprintln!("reconcile stderr: {}", out.stderr);
    // The text report lists the same keys.
    let text = server.cli(&dir, &["reconcile", "--from", &from_arg, "--to", &to_arg]);
    assert_eq!(text.status.code(), Some(1), "{}", text.stderr);
    for (key, (stored, expected_count)) in &corrupted {
        let line = format!(
            "mismatch ad_id={} minute={} filter_id={} stored={stored} expected={expected_count}",
            key.ad_id, key.minute_start_ms, key.filter_id
        );
        assert!(
            text.stdout.contains(&line),
            "{line} not in:\n{}",
            text.stdout
        );
    }
    // The Parquet archive: one pass now, then the same reconciliation from
    // it finds exactly the same mismatches.
    let (status, pass) = server
        .send(
            server
                .http
                .post(server.url("/v1/ads/archive"))
                .bearer_auth(dir.admin_token()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pass}");
    assert_eq!(pass["records"], traffic.events() as u64, "{pass}");
    let archived = dir.data_dir().join("archive").join("ad_clicks");
    assert!(archived.join("0").is_dir(), "{pass}");
    let out = server.cli(
        &dir,
        &[
            "reconcile",
            "--from",
            &from_arg,
            "--to",
            &to_arg,
            "--source",
            "parquet",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let from_archive: Value = serde_json::from_str(out.stdout.trim()).expect("--json report");
    assert_eq!(from_archive["source"], "parquet", "{from_archive:#}");
    assert_eq!(from_archive["mismatches"], report["mismatches"]);
    assert_eq!(from_archive["expected_rows"], report["expected_rows"]);
    let (status, refused) = server
        .send(
            server
                .http
                .post(server.url("/v1/ads/reconcile"))
                .bearer_auth(dir.admin_token())
                .json(&json!({"from": from, "to": to, "source": "s3"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("invalid source"), "{refused}");

    // A range start that is not minute-aligned is refused, naming `from`.
    for command in ["reconcile", "recalc"] {
        let misaligned = (from + 1).to_string();
        let out = server.cli(&dir, &[command, "--from", &misaligned, "--to", &to_arg]);
        assert!(!out.status.success(), "{command}: {}", out.stdout);
        eprintln!("{command} misaligned stderr: {}", out.stderr);
        assert!(
            out.stderr.contains("invalid from:"),
            "{command}: the error does not name from: {}",
            out.stderr
        );
    }

    // Live traffic at the current time goes on meanwhile.
    let stop_live = Arc::new(AtomicBool::new(false));
    let live_sent: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let live = {
        let (http, url) = (server.http.clone(), server.url("/v1/events"));
        let (stop_live, live_sent) = (stop_live.clone(), live_sent.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop_live.load(Ordering::SeqCst) {
                let now = now_ms();
                let events: Vec<Value> = (0..20)
                    .map(|i| {
                        n += 1;
                        ad_click(
                            &format!("live-{n}"),
                            &format!("live-ad-{}", (n + i) % 16),
                            &format!("u-{n}"),
                            &rfc3339(now),
                        )
                    })
                    .collect();
                let response = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(ndjson(&events))
                    .send()
                    .await
                    .expect("live POST");
                assert_eq!(response.status(), StatusCode::OK);
                {
                    let mut sent = live_sent.lock().unwrap();
                    for e in &events {
                        *sent
                            .entry(e["ad_id"].as_str().unwrap().to_string())
                            .or_default() += 1;
                    }
                }
                // Pacing of the live traffic, not synchronisation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The range is final once the live events carry the watermark past
    // to + allowed lateness.
    let until = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        let (_, body) = server.get_json("/v1/pipelines").await;
        let watermark = body["pipelines"][0]["watermark"].as_i64();
        if watermark.is_some_and(|w| w >= to + ALLOWED_LATENESS)
            && live_sent.lock().unwrap().values().sum::<u64>() > 0
        {
            break;
        }
        assert!(Instant::now() < until, "watermark stuck: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recalculated from the archive (the live tail comes from the log), and
    // checked against the log below.
    let out = server.cli(
        &dir,
        &[
            "recalc", "--from", &from_arg, "--to", &to_arg, "--source", "parquet",
        ],
    );
    out.assert_success();
    let status: Value = serde_json::from_str(out.stdout.trim()).expect("recalc status JSON");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["source"], "parquet", "{status}");
    let in_range = expected
        .rows
        .keys()
        .filter(|k| (from..to).contains(&k.minute_start_ms))
        .count();
    assert_eq!(status["rows_written"], in_range as u64, "{status}");
    let out = server.cli(&dir, &["reconcile", "--from", &from_arg, "--to", &to_arg]);
    out.assert_success();
    assert!(out.stdout.contains("\n0 mismatches"), "{}", out.stdout);

    // The answers are the truth again, for the corrupted keys and overall.
    for key in corrupted.keys() {
        let (status, body) = server
            .get_json(&format!(
                "/v1/ads/{}/aggregated_count?from={}&to={}&filter={}",
                key.ad_id,
                key.minute_start_ms,
                key.minute_start_ms + MINUTE,
                key.filter_id
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want = expected.rows.get(key).copied().unwrap_or(0);
        assert_eq!(body["count"], want, "{key:?}: {body}");
    }
    for ad in ["ad-0000001", "ad-0000002", "ad-0000003"] {
        let (_, body) = server
            .get_json(&format!(
                "/v1/ads/{ad}/aggregated_count?from={from}&to={to}"
            ))
            .await;
        assert_eq!(
            body["count"],
            traffic.truth.count_range(ad, from, to),
            "{body}"
        );
        assert_eq!(body["complete"], true, "{body}");
    }
    let end = from + 6 * MINUTE;
    let (_, body) = server
        .get_json(&format!("/v1/ads/popular_ads?count=100&window=5&to={end}"))
        .await;
    let (ids, counts) = &expected.tops[&(5, 0, end)];
    assert_eq!(body["ad_ids"], json!(ids), "{body}");
    assert_eq!(body["counts"], json!(counts), "{body}");

    // Live ingestion was not disturbed: every live click is counted.
    stop_live.store(true, Ordering::SeqCst);
    live.await.expect("live ingestion");
    let live_sent = live_sent.lock().unwrap().clone();
    let total_live: u64 = live_sent.values().sum();
    let mut server = server;
    wait_caught_up(&server, traffic.events() as u64 + total_live).await;
    let now = minute_of(now_ms()) + MINUTE;
    for (ad, sent) in &live_sent {
        let (_, body) = server
            .get_json(&format!(
                "/v1/ads/{ad}/aggregated_count?from={}&to={now}",
                now - 60 * MINUTE
            ))
            .await;
        assert_eq!(body["count"], *sent, "{ad}: {body}");
    }
    stop_gracefully(&mut server);

    // And the store holds exactly the truth over the range again.
    let repaired = read_store(&dir.data_dir(), &traffic, &setup);
    let in_range_rows: BTreeMap<AggKey, u64> = repaired
        .rows
        .into_iter()
        .filter(|(k, _)| (from..to).contains(&k.minute_start_ms))
        .collect();
    assert_same("rows after recalc", &in_range_rows, &expected.rows);
    let in_range_tops: Tops = repaired
        .tops
        .into_iter()
        .filter(|((_, _, end), _)| *end > from && *end <= to)
        .collect();
    let expected_tops: Tops = expected
        .tops
        .iter()
        .filter(|((_, _, end), _)| *end > from && *end <= to)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_same("tops after recalc", &in_range_tops, &expected_tops);
}
