//! End-to-end tests of `riffle simulate ads`: the binary's NDJSON output
//! against its own truth file, recomputed independently here (dedup by
//! event_id, watermark = max event time − 15 s, per-minute windows, too late
//! when window end + 5 min ≤ watermark), and the same through a real server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use riffle_core::event::{parse_event, ParseLimits};
use riffle_core::time::{Clock, SystemClock};
use riffle_testkit::*;
use serde_json::Value;

const MINUTE: i64 = 60_000;
const OUT_OF_ORDERNESS: i64 = 15_000;
const ALLOWED_LATENESS: i64 = 300_000;

fn simulate(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(riffle_bin())
        .arg("simulate")
        .arg("ads")
        .args(args)
        .current_dir(dir)
        .env_remove("RIFFLE_TOKEN")
        .output()
        .expect("run riffle");
    output
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The truth file, parsed here without `riffle_sim`.
struct Truth {
    summary: Value,
    counts: BTreeMap<(String, i64), u64>,
    late_beyond: BTreeSet<String>,
}

fn read_truth(path: &Path) -> Truth {
    let lines = read_lines(path);
    assert_eq!(lines[0]["kind"], "summary", "{}", lines[0]);
    let mut counts = BTreeMap::new();
    let mut late_beyond = BTreeSet::new();
    for line in &lines[1..] {
        match line["kind"].as_str().unwrap() {
            "count" => {
                let key = (
                    line["ad_id"].as_str().unwrap().to_string(),
                    line["minute_start_ms"].as_i64().unwrap(),
                );
                assert_eq!(key.1 % MINUTE, 0, "{line}");
                assert!(counts
                    .insert(key, line["count"].as_u64().unwrap())
                    .is_none());
            }
            "late_beyond" => {
                assert!(late_beyond.insert(line["event_id"].as_str().unwrap().to_string()));
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    Truth {
        summary: lines[0].clone(),
        counts,
        late_beyond,
    }
}

/// Brute force over events in arrival order: (counts, too-late ids).
fn recount(events: &[Value]) -> (BTreeMap<(String, i64), u64>, BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let mut max: Option<i64> = None;
    let mut counts = BTreeMap::new();
    let mut late = BTreeSet::new();
    for e in events {
        let id = e["event_id"].as_str().unwrap().to_string();
        let time = match &e["event_time"] {
            Value::String(s) => riffle_core::time::parse_rfc3339_ms(s).unwrap(),
            v => v.as_i64().unwrap(),
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        let minute = time - time.rem_euclid(MINUTE);
        let too_late =
            max.is_some_and(|m| minute + MINUTE + ALLOWED_LATENESS <= m - OUT_OF_ORDERNESS);
        if too_late {
            late.insert(id);
        } else {
            *counts
                .entry((e["ad_id"].as_str().unwrap().to_string(), minute))
                .or_insert(0) += 1;
        }
        max = Some(max.map_or(time, |m| m.max(time)));
    }
    (counts, late)
}

const FAULTS: [&str; 8] = [
    "--duplicates",
    "0.06",
    "--out-of-order",
    "0.1",
    "--late-within",
    "0.05",
    "--late-beyond",
    "0.05",
];

#[test]
fn file_output_matches_its_truth_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let run = |events: &str, truth: &str| {
        let mut args = vec![
            "--count",
            "2000",
            "--seed",
            "7",
            "--ads",
            "50",
            "--rate",
            "20",
            "--start",
            "2024-05-01T12:00:00Z",
            "--out",
            events,
            "--truth",
            truth,
        ];
        args.extend_from_slice(&FAULTS);
        let out = simulate(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let stderr = run("f.ndjson", "t.json");
    assert!(
        stderr.contains("simulated 2000 ad_click events (seed 7)"),
        "{stderr}"
    );
    assert!(stderr.contains("truth: t.json"), "{stderr}");

    let events = read_lines(&dir.path().join("f.ndjson"));
    assert_eq!(events.len(), 2000);
    let limits = ParseLimits::new(SystemClock.now_ms());
    for e in &events {
        let text = e.to_string();
        parse_event(text.as_bytes(), &limits).unwrap_or_else(|err| panic!("{text}: {err}"));
    }
    let truth = read_truth(&dir.path().join("t.json"));
    let (counts, late) = recount(&events);
    assert_eq!(truth.counts, counts);
    assert_eq!(truth.late_beyond, late);

    // The summary adds up, and every category really occurred.
    let by = &truth.summary["by_category"];
    let get = |k: &str| by[k].as_u64().unwrap();
    for k in [
        "on_time",
        "out_of_order",
        "late_within",
        "late_beyond",
        "duplicate",
    ] {
        assert!(get(k) > 0, "{k}: {by}");
        assert!(
            stderr.contains(&format!("{k:<13}{:>12}", get(k))),
            "{k}: {stderr}"
        );
    }
    let unique: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(get("duplicate"), 2000 - unique.len() as u64);
    assert_eq!(get("late_beyond"), late.len() as u64);
    assert_eq!(
        truth.summary["counted_events"].as_u64().unwrap(),
        counts.values().sum::<u64>()
    );

    // The same options and seed give byte-identical files.
    run("g.ndjson", "u.json");
    for (a, b) in [("f.ndjson", "g.ndjson"), ("t.json", "u.json")] {
        assert_eq!(
            std::fs::read(dir.path().join(a)).unwrap(),
            std::fs::read(dir.path().join(b)).unwrap(),
            "{a} vs {b}"
        );
    }
}

#[test]
fn stdout_output_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate(dir.path(), &["--count", "5", "--seed", "1"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    // Default start: the stream ends about now, so a server accepts it.
    let now = SystemClock.now_ms();
    for line in stdout.lines() {
        let t = serde_json::from_str::<Value>(line).unwrap()["event_time"]
            .as_i64()
            .unwrap();
        assert!(t <= now && t > now - 2 * MINUTE, "{line}");
    }

    for (args, message) in [
        (
            vec!["--duplicates", "1.5"],
            "error: invalid ads config: duplicate_fraction: 1.5 is out of range 0..=1",
        ),
        (
            vec!["--ads", "2000001"],
            "error: invalid ads config: ads: 2000001 is out of range 1..=2000000",
        ),
        (
            vec!["--duration", "10"],
            "\"10\" is not a duration like 500ms, 60s, 5m, 1h or 7d",
        ),
        (
            vec!["--count", "1", "--duration", "1s"],
            "'--count <N>' cannot be used with '--duration <DURATION>'",
        ),
        (
            vec!["--out", "x", "--server", "http://127.0.0.1:1"],
            "'--out <FILE>' cannot be used with '--server <URL>'",
        ),
    ] {
        let out = simulate(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // A JSON config file; unknown fields are named.
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"ads": 3, "countries": [{"code": "KOR", "weight": 1}]}"#,
    )
    .unwrap();
    let out = simulate(dir.path(), &["--config", "c.json", "--count", "50"]);
    assert!(out.status.success());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["country"], "KOR");
        assert!(["ad-0000001", "ad-0000002", "ad-0000003"].contains(&e["ad_id"].as_str().unwrap()));
    }
    std::fs::write(dir.path().join("d.json"), r#"{"adz": 3}"#).unwrap();
    let out = simulate(dir.path(), &["--config", "d.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown field `adz`"),
        "{stderr}"
    );
}

#[test]
fn realtime_paces_event_time_to_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let before = SystemClock.now_ms();
    let started = Instant::now();
    let out = simulate(
        dir.path(),
        &[
            "--realtime",
            "--rate",
            "200",
            "--count",
            "100",
            "--out",
            "r.ndjson",
        ],
    );
    let elapsed = started.elapsed();
    let after = SystemClock.now_ms();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 100 events at 200/s: the last one is due 495 ms after the first.
    assert!(elapsed.as_millis() >= 495, "{elapsed:?}");
    let events = read_lines(&dir.path().join("r.ndjson"));
    assert_eq!(events.len(), 100);
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["event_time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        times[0] >= before && times[99] <= after,
        "{before} {times:?} {after}"
    );
    assert_eq!(times[99] - times[0], 495);
}

#[tokio::test]
async fn server_output_matches_the_truth() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let truth_path = dir.scratch("truth");
    let truth_arg = truth_path.to_str().unwrap();
    let mut args = vec![
        "simulate", "ads", "--count", "3000", "--seed", "3", "--ads", "40", "--rate", "10",
        "--batch", "250", "--truth", truth_arg,
    ];
    args.extend_from_slice(&FAULTS);
    let out = server.cli(&dir, &args);
    out.assert_success();
    assert!(
        out.stderr.contains("server accepted 3000, rejected 0"),
        "{}",
        out.stderr
    );

    // The records are in ad_id-keyed partitions, so arrival order across ads
    // is lost; the recount therefore uses the generator's categories only
    // through the truth's late_beyond list and checks everything else.
    let records = server.all_records("ad_clicks").await;
    assert_eq!(records.len(), 3000);
    let truth = read_truth(&truth_path);
    let mut seen = BTreeSet::new();
    let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in &records {
        let v = &r["value"];
        assert_eq!(r["key"], v["ad_id"]);
        let id = v["event_id"].as_str().unwrap().to_string();
        if !seen.insert(id.clone()) || truth.late_beyond.contains(&id) {
            continue;
        }
        let t = riffle_core::time::parse_rfc3339_ms(v["event_time"].as_str().unwrap()).unwrap();
        *counts
            .entry((
                v["ad_id"].as_str().unwrap().to_string(),
                t - t.rem_euclid(MINUTE),
            ))
            .or_insert(0) += 1;
    }
    assert!(truth.late_beyond.is_subset(&seen));
    assert!(!truth.late_beyond.is_empty());
    assert_eq!(truth.counts, counts);
    assert_eq!(
        truth.summary["unique_events"].as_u64().unwrap(),
        seen.len() as u64
    );
}

// ---------------------------------------------------------------- live

fn simulate_live(dir: &Path, args: &[&str]) -> Output {
    Command::new(riffle_bin())
        .args(["simulate", "live"])
        .args(args)
        .current_dir(dir)
        .env_remove("RIFFLE_TOKEN")
        .output()
        .expect("run riffle")
}

const LIVE: [&str; 10] = [
    "--users",
    "300",
    "--streamers",
    "60",
    "--duration",
    "30m",
    "--seed",
    "5",
    "--start",
    "2026-01-05T18:00:00Z",
];

#[test]
fn live_output_is_reproducible_valid_and_comes_with_its_truth() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out_path = dir.path().join(format!("{name}.ndjson"));
        let truth_path = dir.path().join(format!("{name}-truth.ndjson"));
        let mut args = LIVE.to_vec();
        args.extend_from_slice(&[
            "--out",
            out_path.to_str().unwrap(),
            "--truth",
            truth_path.to_str().unwrap(),
            "--duplicates",
            "0.02",
            "--out-of-order",
            "0.05",
        ]);
        let output = simulate_live(dir.path(), &args);
        assert!(output.status.success(), "{output:?}");
        runs.push((
            std::fs::read(&out_path).unwrap(),
            std::fs::read(&truth_path).unwrap(),
        ));
    }
    assert_eq!(runs[0], runs[1], "same seed, same bytes");

    let events = read_lines(&dir.path().join("a.ndjson"));
    assert!(events.len() > 300, "{} events", events.len());
    let limits = ParseLimits::new(SystemClock.now_ms());
    let mut types = BTreeSet::new();
    for line in std::fs::read_to_string(dir.path().join("a.ndjson"))
        .unwrap()
        .lines()
    {
        let event = parse_event(line.as_bytes(), &limits)
            .unwrap_or_else(|e| panic!("{line}: not a valid Riffle event: {e}"));
        types.insert(event.event_type().as_str());
    }
    for t in [
        "stream_started",
        "stream_heartbeat",
        "viewer_joined",
        "viewer_left",
    ] {
        assert!(types.contains(t), "no {t}: {types:?}");
    }
    let truth = read_lines(&dir.path().join("a-truth.ndjson"));
    assert_eq!(truth[0]["kind"], "summary");
    let users = truth.iter().filter(|l| l["kind"] == "user").count();
    let streamers = truth.iter().filter(|l| l["kind"] == "streamer").count();
    assert_eq!((users, streamers), (300, 60));
}

#[test]
fn live_bad_options_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (vec!["--preset", "huge"], "--preset: \"huge\" is not one of"),
        (
            vec!["--vanish-rate", "1.5"],
            "vanish_rate: 1.5 is outside 0..=1",
        ),
        (vec!["--users", "0"], "users: 0 is outside"),
    ] {
        let output = simulate_live(dir.path(), &args);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn live_events_reach_the_server() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let file = dir.scratch("live.ndjson");
    let mut args = vec!["simulate", "live"];
    args.extend_from_slice(&LIVE);
    let mut to_file = args.clone();
    to_file.extend_from_slice(&["--out", file.to_str().unwrap()]);
    // `cli` appends --server; writing to a file conflicts with it, so the
    // file run goes through the plain runner.
    run_cli(&dir, &to_file, None).assert_success();
    let expected = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let out = server.cli(&dir, &args);
    out.assert_success();
    assert!(
        out.stderr
            .contains(&format!("server accepted {expected}, rejected 0")),
        "{}",
        out.stderr
    );
    assert_eq!(server.record_count("live_events").await, expected);
}
