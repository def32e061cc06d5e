//! Tests of the ad traffic generator and its ground truth. The checks below
//! re-derive everything from the emitted JSON (not from the generator's
//! internal state): watermarks, lateness (with `riffle-stream`'s own
//! `LatenessPolicy`), dedup and the per-minute counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use riffle_core::event::{parse_event, ParseLimits};
use riffle_sim::ads::{
    AdsConfig, AdsGenerator, Category, GroundTruth, TruthError, DUPLICATE_WINDOW, WINDOW_MS,
};
use riffle_sim::zipf::Zipf;
use riffle_stream::watermark::{Lateness, LatenessPolicy};
use riffle_stream::Window;
use serde_json::Value;

/// One emitted event, parsed back from its JSON.
#[derive(Debug, Clone, PartialEq)]
struct Emitted {
    json: String,
    id: String,
    time: i64,
    ad: String,
    category: Category,
}

fn generate(config: &AdsConfig) -> (Vec<Emitted>, GroundTruth) {
    let mut generator = AdsGenerator::new(config.clone()).unwrap();
    let mut out = Vec::new();
    let now = config.start_ms + 10 * 24 * 3_600_000;
    while let Some(event) = generator.next_event() {
        let json = generator.to_json(&event);
        // Every event is one that ingest accepts.
        parse_event(json.as_bytes(), &ParseLimits::new(now))
            .unwrap_or_else(|e| panic!("{json}: {e}"));
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event_type"], "ad_click");
        assert_eq!(v.as_object().unwrap().len(), 7, "{json}");
        out.push(Emitted {
            id: v["event_id"].as_str().unwrap().to_string(),
            time: v["event_time"].as_i64().unwrap(),
            ad: v["ad_id"].as_str().unwrap().to_string(),
            category: event.category,
            json,
        });
    }
    (out, generator.truth().unwrap())
}

fn faulty(count: u64, seed: u64) -> AdsConfig {
    AdsConfig {
        seed,
        ads: 500,
        rate: 1_000.0,
        count: Some(count),
        duplicate_fraction: 0.10,
        out_of_order_fraction: 0.15,
        late_within_fraction: 0.05,
        late_beyond_fraction: 0.04,
        ..AdsConfig::default()
    }
}

fn minute_window(t: i64) -> Window {
    let start = t - t.rem_euclid(WINDOW_MS);
    Window::new(start, start + WINDOW_MS)
}

#[test]
fn same_seed_same_stream_and_truth() {
    let (a, truth_a) = generate(&faulty(20_000, 11));
    let (b, truth_b) = generate(&faulty(20_000, 11));
    assert_eq!(a.len(), 20_000);
    assert_eq!(a, b);
    assert_eq!(truth_a, truth_b);
    let (c, _) = generate(&faulty(20_000, 12));
    let differing = a.iter().zip(&c).filter(|(x, y)| x.json != y.json).count();
    assert!(
        differing > 19_000,
        "another seed changes the stream: {differing}"
    );
    // A fixed seed reproduces fixed events, forever (a change here
    // invalidates every recorded workload and truth file).
    assert_eq!(a[0].json, GOLDEN_FIRST);
}

const GOLDEN_FIRST: &str = r#"{"event_type":"ad_click","event_id":"clk-11-0","event_time":1714564800000,"ad_id":"ad-0000112","user_id":"u-8724","ip":"84.132.187.167","country":"IND"}"#;

#[test]
fn zipf_skew_of_ads() {
    let config = AdsConfig {
        seed: 5,
        ads: 1_000,
        zipf_exponent: 1.1,
        count: Some(200_000),
        ..AdsConfig::default()
    };
    let (events, _) = generate(&config);
    let mut per_ad: HashMap<String, u64> = HashMap::new();
    for e in &events {
        *per_ad.entry(e.ad.clone()).or_default() += 1;
    }
    let zipf = Zipf::new(1_000, 1.1);
    let n = events.len() as f64;
    for (rank, id) in [(1u32, "ad-0000001"), (2, "ad-0000002"), (10, "ad-0000010")] {
        let p = zipf.probability(rank - 1);
        let expected = n * p;
        let sigma = (n * p * (1.0 - p)).sqrt();
        let got = per_ad.get(id).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() < 5.0 * sigma,
            "{id}: {got} events, expected {expected:.0} ± {:.0}",
            5.0 * sigma
        );
    }
    // H(1000, 1.1) ≈ 5.5728, so the top ad gets ≈ 17.94% of the clicks
    // (independently computed; ± 5 sigma at 200k draws is ± 0.43%).
    let top_share = per_ad["ad-0000001"] as f64 / n;
    assert!((0.1751..0.1838).contains(&top_share), "{top_share}");
    assert!(per_ad.keys().all(|id| {
        let rank: u32 = id.strip_prefix("ad-").unwrap().parse().unwrap();
        id.len() == 10 && (1..=1_000).contains(&rank)
    }));
}

#[test]
fn two_million_ads() {
    let config = AdsConfig {
        ads: 2_000_000,
        count: Some(50_000),
        zipf_exponent: 0.0,
        ..AdsConfig::default()
    };
    let (events, _) = generate(&config);
    let ranks: Vec<u32> = events.iter().map(|e| e.ad[3..].parse().unwrap()).collect();
    assert!(ranks.iter().all(|r| (1..=2_000_000).contains(r)));
    // Uniform over 2M: about half the draws land above 1M.
    let high = ranks.iter().filter(|&&r| r > 1_000_000).count();
    assert!((23_500..26_500).contains(&high), "{high}");
}

#[test]
fn fault_shares_match_the_configuration() {
    let config = faulty(100_000, 3);
    let (events, truth) = generate(&config);
    let mut counts: BTreeMap<Category, u64> = BTreeMap::new();
    for e in &events {
        *counts.entry(e.category).or_default() += 1;
    }
    let n = events.len() as f64;
    for (category, fraction) in [
        (Category::Duplicate, config.duplicate_fraction),
        (Category::OutOfOrder, config.out_of_order_fraction),
        (Category::LateWithin, config.late_within_fraction),
        (Category::LateBeyond, config.late_beyond_fraction),
    ] {
        let got = counts.get(&category).copied().unwrap_or(0) as f64;
        let expected = n * fraction;
        let sigma = (n * fraction * (1.0 - fraction)).sqrt();
        assert!(
            (got - expected).abs() < 5.0 * sigma,
            "{category:?}: {got}, expected {expected} ± {}",
            5.0 * sigma
        );
        assert_eq!(truth.summary.by_category.get(category), got as u64);
    }
    assert_eq!(truth.summary.events, 100_000);
}

/// Checks every event's category against its definition, re-deriving the
/// maximum event time and the watermark from the emitted events alone.
#[test]
fn categories_are_truthful() {
    for seed in [1, 2, 3] {
        let config = faulty(60_000, seed);
        let (events, _) = generate(&config);
        let policy = LatenessPolicy {
            allowed_lateness_ms: config.allowed_lateness_ms,
        };
        let l = config.allowed_lateness_ms;
        let mut max: Option<i64> = None;
        // id → (index among counted fresh events, json, time)
        let mut first: HashMap<String, (usize, String)> = HashMap::new();
        let mut counted_fresh = 0usize;
        let mut last_on_time: Option<String> = None;
        for (i, e) in events.iter().enumerate() {
            let arrival = config.start_ms + (i as i64 * 1000) / config.rate as i64;
            let context = || format!("seed {seed}, event {i}: {:?} {}", e.category, e.json);
            let Some(m) = max else {
                assert_eq!(e.category, Category::OnTime, "{}", context());
                max = Some(e.time);
                first.insert(e.id.clone(), (0, e.json.clone()));
                counted_fresh = 1;
                last_on_time = Some(e.id.clone());
                continue;
            };
            let w = m - config.out_of_orderness_ms;
            if e.category != Category::Duplicate {
                assert!(!first.contains_key(&e.id), "fresh id reused: {}", context());
            }
            match e.category {
                Category::OnTime => {
                    assert_eq!(e.time, arrival, "{}", context());
                    assert!(e.time >= m, "{}", context());
                }
                Category::OutOfOrder => {
                    assert!(e.time < m, "{}", context());
                    assert!(e.time >= m - config.max_out_of_order_ms, "{}", context());
                    assert!(e.time >= w, "{}", context());
                    assert_eq!(policy.classify(minute_window(e.time), w), Lateness::OnTime);
                }
                Category::LateWithin => {
                    assert!(e.time < w && e.time > w - l, "{}", context());
                    assert_eq!(
                        policy.classify(minute_window(e.time), w),
                        Lateness::LateWithinAllowed,
                        "{}",
                        context()
                    );
                }
                Category::LateBeyond => {
                    assert!(
                        e.time <= w - l - config.late_beyond_margin_ms,
                        "{}",
                        context()
                    );
                    assert!(e.time + l <= w, "too late per event too: {}", context());
                    assert_eq!(
                        policy.classify(minute_window(e.time), w),
                        Lateness::TooLate,
                        "{}",
                        context()
                    );
                }
                Category::Duplicate => {
                    let (index, json) = first
                        .get(&e.id)
                        .unwrap_or_else(|| panic!("duplicate of nothing: {}", context()));
                    assert_eq!(
                        json,
                        &e.json,
                        "a duplicate repeats the event: {}",
                        context()
                    );
                    assert!(
                        counted_fresh - index <= DUPLICATE_WINDOW
                            || last_on_time.as_deref() == Some(e.id.as_str()),
                        "repeats a recent event: {}",
                        context()
                    );
                    assert_ne!(
                        policy.classify(minute_window(e.time), w),
                        Lateness::TooLate,
                        "a duplicate is only a duplicate: {}",
                        context()
                    );
                }
            }
            match e.category {
                Category::Duplicate | Category::LateBeyond => {}
                _ => {
                    first.insert(e.id.clone(), (counted_fresh, e.json.clone()));
                    counted_fresh += 1;
                }
            }
            if e.category == Category::OnTime {
                last_on_time = Some(e.id.clone());
            }
            max = Some(m.max(e.time));
        }
    }
}

/// The truth equals a brute-force recount that ignores the categories:
/// dedup by id (first arrival wins), watermark from the stream, drop what
/// `LatenessPolicy` calls too late.
#[test]
fn truth_equals_brute_force_recount() {
    for seed in [21, 22] {
        let config = faulty(80_000, seed);
        let (events, truth) = generate(&config);
        let policy = LatenessPolicy {
            allowed_lateness_ms: config.allowed_lateness_ms,
        };
        let mut seen = BTreeSet::new();
        let mut max = i64::MIN;
        let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
        let mut too_late = BTreeSet::new();
        for e in &events {
            if !seen.insert(e.id.clone()) {
                continue;
            }
            let window = minute_window(e.time);
            let late = max != i64::MIN
                && policy.classify(window, max - config.out_of_orderness_ms) == Lateness::TooLate;
            if late {
                too_late.insert(e.id.clone());
            } else {
                *counts.entry((e.ad.clone(), window.start)).or_default() += 1;
            }
            max = max.max(e.time);
        }
        assert_eq!(truth.counts, counts, "seed {seed}");
        let truth_late: BTreeSet<String> = truth
            .late_beyond_ids()
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(truth_late, too_late, "seed {seed}");
        assert!(too_late.len() > 2_000, "{}", too_late.len());
        assert_eq!(truth.summary.unique_events, seen.len() as u64);
        assert_eq!(truth.summary.counted_events, counts.values().sum::<u64>());
        assert_eq!(
            truth.summary.min_event_time_ms,
            events.iter().map(|e| e.time).min()
        );
        // Range queries add up the minutes.
        let (ad, minute) = counts.keys().next().unwrap().clone();
        let total: u64 = counts
            .iter()
            .filter(|((a, _), _)| *a == ad)
            .map(|(_, c)| c)
            .sum();
        assert_eq!(truth.count_range(&ad, i64::MIN, i64::MAX), total);
        assert_eq!(truth.count(&ad, minute), counts[&(ad.clone(), minute)]);
        assert_eq!(truth.count_range(&ad, minute, minute), 0);
    }
}

#[test]
fn duration_bounds_the_arrival_clock() {
    let config = AdsConfig {
        rate: 250.0,
        duration_ms: Some(10_000),
        ..AdsConfig::default()
    };
    let mut generator = AdsGenerator::new(config.clone()).unwrap();
    let mut n = 0;
    let mut last = 0;
    while let Some(e) = generator.next_event() {
        n += 1;
        last = e.event_time_ms;
    }
    assert_eq!(n, 2_500);
    assert_eq!(last, config.start_ms + 9_996);
    assert_eq!(generator.next_arrival_ms(), None);
}

#[test]
fn warmup_suppresses_faults_and_truth_can_be_off() {
    let config = AdsConfig {
        warmup_ms: 5_000,
        ..faulty(10_000, 9)
    };
    let (events, _) = generate(&config);
    assert!(events[..5_000]
        .iter()
        .all(|e| e.category == Category::OnTime));
    assert!(events[5_000..]
        .iter()
        .any(|e| e.category != Category::OnTime));
    let mut generator = AdsGenerator::new(config).unwrap();
    generator.track_truth(false);
    assert_eq!(generator.by_ref().count(), 10_000);
    assert!(generator.truth().is_none());
    assert_eq!(generator.by_category().total(), 10_000);
}

#[test]
fn truth_file_round_trip_and_damage() {
    let (_, truth) = generate(&faulty(5_000, 4));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truth.ndjson");
    truth.write_file(&path).unwrap();
    let back = GroundTruth::read_file(&path).unwrap();
    assert_eq!(back, truth);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let summary: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["events"], 5_000);
    let count: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        count.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["ad_id", "count", "kind", "minute_start_ms"]
    );
    assert_eq!(
        lines.len(),
        1 + truth.counts.len() + truth.late_beyond.len()
    );

    // A missing count line (a truncated file) is detected.
    let without_one: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let err = GroundTruth::read_from(without_one.as_bytes()).unwrap_err();
    assert!(matches!(err, TruthError::Inconsistent(_)), "{err}");
    assert!(err.to_string().starts_with("counts add up to"), "{err}");

    // Unknown fields and kinds name the line.
    let bad = format!("{}\n{{\"kind\":\"count\",\"ad_id\":\"ad-1\",\"minute_start_ms\":0,\"count\":1,\"colour\":1}}\n", lines[0]);
    let err = GroundTruth::read_from(bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("line 2: ") && err.contains("colour"),
        "{err}"
    );
    let err = GroundTruth::read_from("{\"kind\":\"total\"}\n".as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("line 1: ") && err.contains("total"),
        "{err}"
    );
    let err = GroundTruth::read_from("".as_bytes())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "no summary line");
}

#[test]
fn config_validation_names_field_and_value() {
    let cases: Vec<(AdsConfig, &str)> = vec![
        (
            AdsConfig { ads: 0, ..Default::default() },
            "ads: 0 is out of range 1..=2000000",
        ),
        (
            AdsConfig { ads: 2_000_001, ..Default::default() },
            "ads: 2000001 is out of range 1..=2000000",
        ),
        (
            AdsConfig { zipf_exponent: -1.0, ..Default::default() },
            "zipf_exponent: -1 is out of range 0..=10",
        ),
        (
            AdsConfig { users: 0, ..Default::default() },
            "users: 0 must be at least 1",
        ),
        (
            AdsConfig { ips: 400_000, ..Default::default() },
            "ips: 400000 is out of range 1..=327680 (the addresses in ip_ranges)",
        ),
        (
            AdsConfig { ip_ranges: vec!["10.1.2.0/16".into()], ..Default::default() },
            "ip_ranges: \"10.1.2.0/16\": host bits must be zero",
        ),
        (
            AdsConfig { ip_ranges: vec!["10.1.0.0".into()], ..Default::default() },
            "ip_ranges: \"10.1.0.0\" is not a CIDR range like \"81.2.0.0/16\"",
        ),
        (
            AdsConfig { rate: 0.0, ..Default::default() },
            "rate: 0 must be > 0 and <= 1e9 events/s",
        ),
        (
            AdsConfig { count: Some(5), duration_ms: Some(1000), ..Default::default() },
            "count: 5 given together with duration_ms 1000: set one or the other",
        ),
        (
            AdsConfig { duplicate_fraction: 1.5, ..Default::default() },
            "duplicate_fraction: 1.5 is out of range 0..=1",
        ),
        (
            AdsConfig { late_beyond_fraction: f64::NAN, ..Default::default() },
            "late_beyond_fraction: NaN is out of range 0..=1",
        ),
        (
            AdsConfig { duplicate_fraction: 0.5, out_of_order_fraction: 0.6, ..Default::default() },
            "duplicate_fraction: duplicate_fraction + out_of_order_fraction + late_within_fraction + late_beyond_fraction = 1.1 exceeds 1",
        ),
        (
            AdsConfig { out_of_order_fraction: 0.1, max_out_of_order_ms: 20_000, ..Default::default() },
            "max_out_of_order_ms: 20000 is out of range 1..=15000 (out_of_orderness_ms)",
        ),
        (
            AdsConfig { late_within_fraction: 0.1, allowed_lateness_ms: 60_000, ..Default::default() },
            "allowed_lateness_ms: 60000 must exceed the 60000 ms window when late_within_fraction > 0 (no time would be both in a closed window and within the lateness)",
        ),
        (
            AdsConfig { late_beyond_margin_ms: 1_000, ..Default::default() },
            "late_beyond_margin_ms: 1000 must be at least the 60000 ms window",
        ),
        (
            AdsConfig { start_ms: 1_000, ..Default::default() },
            "start_ms: 1000 must be at least 435000 (out_of_orderness_ms + allowed_lateness_ms + late_beyond_margin_ms + one window) so late events keep non-negative times",
        ),
        (
            AdsConfig { id_prefix: Some("a b".into()), ..Default::default() },
            "id_prefix: \"a b\" must be at most 100 ASCII letters, digits or -_.:",
        ),
        (
            AdsConfig {
                countries: vec![riffle_sim::ads::CountryWeight { code: "USA".into(), weight: 0 }],
                ..Default::default()
            },
            "countries: weight of \"USA\" is 0, must be at least 1",
        ),
    ];
    for (config, message) in cases {
        assert_eq!(config.validate().unwrap_err().to_string(), message);
        assert_eq!(
            AdsGenerator::new(config).err().unwrap().to_string(),
            message
        );
    }
    AdsConfig::default().validate().unwrap();

    // From JSON: defaults fill the gaps, unknown fields are named.
    let config: AdsConfig =
        serde_json::from_str(r#"{"ads": 42, "countries": [{"code": "KOR", "weight": 3}]}"#)
            .unwrap();
    assert_eq!(config.ads, 42);
    assert_eq!(config.zipf_exponent, 1.1);
    let err = serde_json::from_str::<AdsConfig>(r#"{"adz": 42}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `adz`"), "{err}");
}

#[test]
fn ips_come_from_the_configured_ranges() {
    let config = AdsConfig {
        ips: 1_000,
        count: Some(20_000),
        ip_ranges: vec!["10.20.0.0/16".into(), "192.168.4.0/24".into()],
        ..AdsConfig::default()
    };
    let mut generator = AdsGenerator::new(config).unwrap();
    let mut distinct = BTreeSet::new();
    let mut per_range = [0u32; 2];
    while let Some(e) = generator.next_event() {
        let [a, b, c, _] = e.ip.octets();
        match (a, b, c) {
            (10, 20, _) => per_range[0] += 1,
            (192, 168, 4) => per_range[1] += 1,
            _ => panic!("{} outside the ranges", e.ip),
        }
        distinct.insert(e.ip);
    }
    assert_eq!(distinct.len(), 1_000);
    // The /24 holds only 256 addresses; the /16 takes the other 744, and
    // addresses are drawn uniformly.
    let in_small = distinct.iter().filter(|ip| ip.octets()[0] == 192).count();
    assert_eq!(in_small, 256);
    assert!((4_700..5_550).contains(&per_range[1]), "{per_range:?}");
}
