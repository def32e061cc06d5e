//! Every built-in feature against a brute-force oracle over a simulated
//! history (with duplicates and out-of-order events), at random instants:
//! offline (events applied in time order, read at each instant) and online
//! (events applied in arrival order, read at the end). The oracle recomputes
//! each value from the list of distinct events, with no state.

use std::collections::{BTreeMap, HashMap, HashSet};

use riffle_core::event::{parse_event, ParseLimits};
use riffle_features::engine::{event_hash, pair_id};
use riffle_features::{
    Aggregation, Entity, EntityKind, Feature, FeatureEngine, FeatureSet, Value, Window,
};
use riffle_sim::live::{LiveConfig, LiveGenerator};
use riffle_sim::rng::Rng;

/// One distinct event, flattened.
#[derive(Debug, Clone)]
struct Ev {
    kind: String,
    id: u64,
    time: i64,
    stream: Option<String>,
    streamer: Option<String>,
    user: Option<String>,
    category: Option<String>,
    language: Option<String>,
    amount: i64,
}

struct History {
    /// Every emitted event (duplicates included), in arrival order.
    arrivals: Vec<String>,
    distinct: Vec<Ev>,
}

fn history(seed: u64) -> History {
    let mut generator = LiveGenerator::new(LiveConfig {
        seed,
        users: 400,
        streamers: 60,
        duration_ms: 3 * 3_600_000,
        duplicates: 0.03,
        out_of_order: 0.1,
        max_out_of_order_ms: 20_000,
        ..LiveConfig::default()
    })
    .unwrap();
    let limits = ParseLimits::new(i64::MAX / 2);
    let mut arrivals = Vec::new();
    let mut distinct = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    while let Some(event) = generator.next_event() {
        buf.clear();
        generator.write_json(&event, &mut buf);
        let text = String::from_utf8(buf.clone()).unwrap();
        let parsed = parse_event(text.as_bytes(), &limits).unwrap();
        if seen.insert(event.id) {
            let field = |name: &str| parsed.body.field_str(name).map(str::to_owned);
            distinct.push(Ev {
                kind: parsed.event_type().as_str().to_owned(),
                id: event_hash(parsed.event_id.as_deref().unwrap()),
                time: parsed.event_time,
                stream: field("stream_id"),
                streamer: field("streamer_id"),
                user: field("user_id"),
                category: field("category"),
                language: field("language"),
                amount: parsed.body.field_u64("amount").unwrap_or(0) as i64,
            });
        }
        arrivals.push(text);
    }
    History { arrivals, distinct }
}

/// The oracle's view: every distinct event with time <= t that reached the
/// entity, with its stream's metadata attached when the stream's start is
/// among them.
fn facts_of(
    events: &[Ev],
    meta: &HashMap<String, (i64, String, String, String)>,
    entity: EntityKind,
    id: &str,
    t: i64,
) -> Vec<Ev> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.time <= t) {
        let mut e = e.clone();
        if e.kind != "follow" {
            if let Some((start, streamer, category, language)) =
                e.stream.as_ref().and_then(|s| meta.get(s))
            {
                if *start <= t {
                    e.streamer = Some(streamer.clone());
                    e.category = Some(category.clone());
                    e.language = Some(language.clone());
                } else if entity != EntityKind::Stream {
                    continue;
                }
            } else if entity != EntityKind::Stream {
                continue;
            }
        }
        let key = match entity {
            EntityKind::Stream => e.stream.clone(),
            EntityKind::Streamer => e.streamer.clone(),
            EntityKind::User => e.user.clone(),
            EntityKind::UserStreamer => match (&e.user, &e.streamer) {
                (Some(u), Some(s)) => Some(pair_id(u, s)),
                _ => None,
            },
        };
        if key.as_deref() == Some(id) {
            out.push(e);
        }
    }
    out
}

fn field<'e>(e: &'e Ev, name: &str) -> Option<&'e str> {
    match name {
        "stream_id" => e.stream.as_deref(),
        "streamer_id" => e.streamer.as_deref(),
        "user_id" => e.user.as_deref(),
        "category" => e.category.as_deref(),
        "language" => e.language.as_deref(),
        _ => None,
    }
}

fn window_start(window: Window, t: i64) -> i64 {
    match window {
        Window::Lifetime => i64::MIN,
        Window::Sliding { ms, tile_ms } => (t.div_euclid(tile_ms) - ms / tile_ms + 1) * tile_ms,
    }
}

/// (time, ±1) at each open/close; (end, duration) of each ended session.
type Timeline = Vec<(i64, i64)>;

/// Sessions of one key: transitions, ended sessions, whether one is open.
fn sessions(mut events: Vec<&Ev>) -> (Timeline, Timeline, bool) {
    events.sort_by_key(|e| (e.time, e.id));
    let (mut transitions, mut ended, mut started) = (Vec::new(), Vec::new(), None);
    for e in events {
        match (e.kind == "viewer_joined", started) {
            (true, None) => {
                started = Some(e.time);
                transitions.push((e.time, 1));
            }
            (false, Some(s)) => {
                started = None;
                transitions.push((e.time, -1));
                ended.push((e.time, e.time - s));
            }
            _ => {}
        }
    }
    (transitions, ended, started.is_some())
}

fn oracle(feature: &Feature, entity: EntityKind, facts: &[Ev], t: i64) -> Value {
    let reads = |e: &&Ev| feature.events.contains(&e.kind);
    let from = window_start(feature.window, t);
    let in_window: Vec<&Ev> = facts
        .iter()
        .filter(reads)
        .filter(|e| e.time >= from)
        .collect();
    let all: Vec<&Ev> = facts.iter().filter(reads).collect();
    let secs = |ms: i64| Value::Float(ms as f64 / 1000.0);
    let name = feature.field.as_deref().unwrap_or("");
    match feature.aggregation {
        Aggregation::Count => Value::Int(in_window.len() as i64),
        Aggregation::RatePerMin => {
            let Window::Sliding { ms, .. } = feature.window else {
                unreachable!()
            };
            Value::Float(in_window.len() as f64 * 60_000.0 / ms as f64)
        }
        Aggregation::Ratio => {
            let per = facts
                .iter()
                .filter(|e| feature.per.contains(&e.kind) && e.time >= from)
                .count();
            if per == 0 {
                Value::Null
            } else {
                Value::Float(in_window.len() as f64 / per as f64)
            }
        }
        Aggregation::Sum => Value::Int(in_window.iter().map(|e| e.amount).sum()),
        Aggregation::Avg => {
            if in_window.is_empty() {
                Value::Null
            } else {
                Value::Float(
                    in_window.iter().map(|e| e.amount).sum::<i64>() as f64 / in_window.len() as f64,
                )
            }
        }
        Aggregation::Min => in_window
            .iter()
            .map(|e| e.amount)
            .min()
            .map_or(Value::Null, Value::Int),
        Aggregation::Max => in_window
            .iter()
            .map(|e| e.amount)
            .max()
            .map_or(Value::Null, Value::Int),
        Aggregation::DistinctCount => Value::Int(
            in_window
                .iter()
                .filter_map(|e| field(e, name))
                .collect::<HashSet<_>>()
                .len() as i64,
        ),
        Aggregation::TopK => {
            let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
            for e in &in_window {
                if let Some(v) = field(e, name) {
                    *counts.entry(v).or_insert(0) += 1;
                }
            }
            let mut ranked: Vec<_> = counts.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            Value::List(
                ranked
                    .into_iter()
                    .take(feature.k)
                    .map(|(v, _)| v.to_owned())
                    .collect(),
            )
        }
        Aggregation::RecentK => {
            let mut newest: HashMap<&str, (i64, u64)> = HashMap::new();
            for e in &all {
                if let Some(v) = field(e, name) {
                    let o = newest.entry(v).or_insert((e.time, e.id));
                    *o = (*o).max((e.time, e.id));
                }
            }
            let mut ranked: Vec<_> = newest.into_iter().collect();
            ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
            Value::List(
                ranked
                    .into_iter()
                    .take(feature.k)
                    .map(|(v, _)| v.to_owned())
                    .collect(),
            )
        }
        Aggregation::Last => all
            .iter()
            .filter(|e| field(e, name).is_some())
            .max_by_key(|e| (e.time, e.id))
            .map_or(Value::Null, |e| {
                Value::Str(field(e, name).unwrap().to_owned())
            }),
        Aggregation::TimeSinceLast => all
            .iter()
            .map(|e| e.time)
            .max()
            .map_or(Value::Null, |m| secs(t - m)),
        Aggregation::Age => all
            .iter()
            .map(|e| e.time)
            .min()
            .map_or(Value::Null, |m| secs(t - m)),
        Aggregation::OpenSessions
        | Aggregation::OpenSessionsGrowth
        | Aggregation::SessionDurationAvg
        | Aggregation::SessionDurationSum => {
            let mut by_key: HashMap<String, Vec<&Ev>> = HashMap::new();
            for e in &all {
                let key = match entity {
                    EntityKind::Stream => e.user.clone(),
                    EntityKind::User | EntityKind::UserStreamer => e.stream.clone(),
                    EntityKind::Streamer => Some(format!(
                        "{}|{}",
                        e.stream.as_deref().unwrap(),
                        e.user.as_deref().unwrap()
                    )),
                };
                by_key.entry(key.unwrap()).or_default().push(e);
            }
            let (mut open, mut growth, mut total, mut n) = (0, 0, 0, 0);
            for events in by_key.into_values() {
                let (transitions, ended, is_open) = sessions(events);
                open += i64::from(is_open);
                growth += transitions
                    .iter()
                    .filter(|(time, _)| *time >= from)
                    .map(|(_, d)| d)
                    .sum::<i64>();
                for (end, duration) in ended {
                    if end >= from {
                        total += duration;
                        n += 1;
                    }
                }
            }
            match feature.aggregation {
                Aggregation::OpenSessions => Value::Int(open),
                Aggregation::OpenSessionsGrowth => Value::Int(growth),
                Aggregation::SessionDurationSum => secs(total),
                _ if n == 0 => Value::Null,
                _ => Value::Float(total as f64 / 1000.0 / n as f64),
            }
        }
        Aggregation::Live => {
            let alive = all
                .iter()
                .filter(|e| e.kind != "stream_ended")
                .map(|e| e.time)
                .max();
            let ended = all
                .iter()
                .filter(|e| e.kind == "stream_ended")
                .map(|e| e.time)
                .max();
            Value::Bool(
                alive.is_some_and(|a| t - a < feature.timeout_ms && ended.is_none_or(|e| e < a)),
            )
        }
        Aggregation::HourOfDay | Aggregation::DayOfWeek => unreachable!("context"),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// Stream metadata from the history's stream_started events.
fn metadata(events: &[Ev]) -> HashMap<String, (i64, String, String, String)> {
    events
        .iter()
        .filter(|e| e.kind == "stream_started")
        .map(|e| {
            (
                e.stream.clone().unwrap(),
                (
                    e.time,
                    e.streamer.clone().unwrap(),
                    e.category.clone().unwrap(),
                    e.language.clone().unwrap(),
                ),
            )
        })
        .collect()
}

/// Entities to check: a sample of every kind seen in the history.
fn sample_entities(events: &[Ev], rng: &mut Rng) -> Vec<(EntityKind, String)> {
    let meta = metadata(events);
    let mut seen: BTreeMap<(EntityKind, String), ()> = BTreeMap::new();
    for e in events {
        let streamer = e.streamer.clone().or_else(|| {
            e.stream
                .as_ref()
                .and_then(|s| meta.get(s))
                .map(|m| m.1.clone())
        });
        if let Some(s) = &e.stream {
            seen.insert((EntityKind::Stream, s.clone()), ());
        }
        if let Some(s) = &streamer {
            seen.insert((EntityKind::Streamer, s.clone()), ());
        }
        if let Some(u) = &e.user {
            seen.insert((EntityKind::User, u.clone()), ());
            if let Some(s) = &streamer {
                seen.insert((EntityKind::UserStreamer, pair_id(u, s)), ());
            }
        }
    }
    let mut out = Vec::new();
    for kind in EntityKind::ALL {
        let ids: Vec<&String> = seen
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| id)
            .collect();
        for _ in 0..25 {
            out.push((kind, ids[rng.below(ids.len() as u64) as usize].clone()));
        }
    }
    out
}

/// Every emitted event as (event time, id hash, text), in `(time, id)`
/// order — the offline replay order; with `distinct`, one copy per id.
fn time_ordered(arrivals: &[String], distinct: bool) -> Vec<(i64, u64, &String)> {
    let limits = ParseLimits::new(i64::MAX / 2);
    let mut seen = HashSet::new();
    let mut ordered: Vec<(i64, u64, &String)> = arrivals
        .iter()
        .filter_map(|text| {
            let event = parse_event(text.as_bytes(), &limits).unwrap();
            let id = event_hash(event.event_id.as_deref().unwrap());
            (!distinct || seen.insert(id)).then_some((event.event_time, id, text))
        })
        .collect();
    ordered.sort();
    ordered
}

fn check_entity(
    set: &FeatureSet,
    engine: &FeatureEngine,
    events: &[Ev],
    meta: &HashMap<String, (i64, String, String, String)>,
    (kind, id): &(EntityKind, String),
    t: i64,
    checked: &mut HashMap<String, u64>,
) {
    let facts = facts_of(events, meta, *kind, id, t);
    let features: Vec<&Feature> = set.of(Entity::Stored(*kind)).collect();
    let Some((_, values)) = engine.states.read(*kind, id, t) else {
        // No state yet: the oracle must see no fact either.
        let reading: Vec<&Ev> = facts
            .iter()
            .filter(|e| {
                features
                    .iter()
                    .any(|f| f.events.contains(&e.kind) || f.per.contains(&e.kind))
            })
            .collect();
        assert!(
            reading.is_empty(),
            "{kind} {id} at {t}: no state but {} facts",
            reading.len()
        );
        return;
    };
    for (feature, value) in features.iter().zip(&values) {
        let expected = oracle(feature, *kind, &facts, t);
        assert!(
            same(value, &expected),
            "{} of {kind} {id} at {t}: engine {value:?}, oracle {expected:?}",
            feature.name
        );
        *checked.entry(feature.name.clone()).or_insert(0) += u64::from(!expected.is_null());
    }
}

#[test]
fn every_default_feature_matches_the_oracle_offline_at_random_instants() {
    let set = FeatureSet::defaults();
    let history = history(11);
    let mut rng = Rng::new(3);
    let mut events = history.distinct.clone();
    events.sort_by_key(|e| (e.time, e.id));
    let meta = metadata(&events);
    let entities = sample_entities(&events, &mut rng);
    let (first, last) = (events[0].time, events.last().unwrap().time);
    let mut instants: Vec<i64> = (0..30).map(|_| rng.range_inclusive(first, last)).collect();
    instants.sort();

    let limits = ParseLimits::new(i64::MAX / 2);
    let by_time = time_ordered(&history.arrivals, true);
    let mut engine = FeatureEngine::new(&set);
    let mut next = 0;
    let mut checked = HashMap::new();
    for &t in &instants {
        while next < by_time.len() && by_time[next].0 <= t {
            engine.apply(&parse_event(by_time[next].2.as_bytes(), &limits).unwrap());
            next += 1;
        }
        for entity in &entities {
            check_entity(&set, &engine, &events, &meta, entity, t, &mut checked);
        }
    }
    // Every stored feature was seen with a value, so none passed by being
    // null on both sides.
    for feature in set.features.iter().filter(|f| f.entity != Entity::Context) {
        assert!(
            checked.get(&feature.name).copied().unwrap_or(0) > 0,
            "{} was never non-null in the sample",
            feature.name
        );
    }
}

#[test]
fn arrival_order_and_duplicates_give_the_offline_state() {
    let set = FeatureSet::defaults();
    let history = history(12);
    let limits = ParseLimits::new(i64::MAX / 2);
    let mut online = FeatureEngine::new(&set);
    for text in &history.arrivals {
        online.apply(&parse_event(text.as_bytes(), &limits).unwrap());
    }
    assert!(online.enricher.duplicates > 0, "the history has duplicates");
    let mut events = history.distinct.clone();
    events.sort_by_key(|e| (e.time, e.id));
    let meta = metadata(&events);
    let t = events.last().unwrap().time;
    let mut rng = Rng::new(4);
    let mut checked = HashMap::new();
    for entity in sample_entities(&events, &mut rng) {
        check_entity(&set, &online, &events, &meta, &entity, t, &mut checked);
    }
}

#[test]
fn context_features_are_functions_of_the_instant() {
    let set = FeatureSet::defaults();
    let engine = FeatureEngine::new(&set);
    // 2026-01-07T15:30:00Z, a Wednesday.
    let values = engine.states.context(1_767_799_800_000);
    assert_eq!(
        values,
        vec![
            ("hour_of_day", Value::Int(15)),
            ("day_of_week", Value::Int(2))
        ]
    );
}

/// The live set, property-style: for every stream at instants around each
/// stream's last sign of life (where a vanished stream flips to offline)
/// and at random instants, `stream_live` equals the oracle — offline in
/// time order, for several seeds, with duplicates and disorder.
#[test]
fn live_status_matches_the_oracle_for_every_stream_including_vanished_ones() {
    let set = FeatureSet::defaults();
    let live = set.get("stream_live").unwrap().clone();
    let position = set
        .of(Entity::Stored(EntityKind::Stream))
        .position(|f| f.name == "stream_live")
        .unwrap();
    let limits = ParseLimits::new(i64::MAX / 2);
    let mut flips_checked = 0;
    for seed in [21, 22, 23] {
        let history = history(seed);
        let mut events = history.distinct.clone();
        events.sort_by_key(|e| (e.time, e.id));
        let streams: Vec<String> = metadata(&events).into_keys().collect();
        // Around every stream's last heartbeat: just before and at the
        // timeout.
        let mut instants: Vec<i64> = Vec::new();
        for s in &streams {
            let last_alive = events
                .iter()
                .filter(|e| e.stream.as_deref() == Some(s) && e.kind != "stream_ended")
                .map(|e| e.time)
                .max()
                .unwrap();
            instants.extend([
                last_alive + live.timeout_ms - 1,
                last_alive + live.timeout_ms,
            ]);
        }
        let mut rng = Rng::new(seed);
        let (first, last) = (events[0].time, events.last().unwrap().time);
        instants.extend((0..50).map(|_| rng.range_inclusive(first, last)));
        instants.retain(|t| *t <= last);
        instants.sort();
        instants.dedup();

        let by_time = time_ordered(&history.arrivals, true);
        let mut engine = FeatureEngine::new(&set);
        let mut next = 0;
        for &t in &instants {
            while next < by_time.len() && by_time[next].0 <= t {
                engine.apply(&parse_event(by_time[next].2.as_bytes(), &limits).unwrap());
                next += 1;
            }
            for s in &streams {
                let facts: Vec<Ev> = events
                    .iter()
                    .filter(|e| e.time <= t && e.stream.as_deref() == Some(s))
                    .cloned()
                    .collect();
                let expected = oracle(&live, EntityKind::Stream, &facts, t);
                let got = engine
                    .states
                    .read(EntityKind::Stream, s, t)
                    .map_or(Value::Bool(false), |(_, v)| v[position].clone());
                assert_eq!(got, expected, "stream_live of {s} at {t} (seed {seed})");
                let vanished = !facts.iter().any(|e| e.kind == "stream_ended");
                if vanished && expected == Value::Bool(false) && !facts.is_empty() {
                    flips_checked += 1;
                }
            }
        }
    }
    assert!(flips_checked > 0, "no vanished stream was checked offline");
}

/// Training examples: one per organic join, every feature as of the join
/// (exactly the events ordered before it), the label looking forward.
#[test]
fn exported_examples_are_point_in_time_and_labelled_forward() {
    use riffle_features::export::{Exporter, LabelSpec};

    let set = FeatureSet::defaults();
    let history = history(31);
    let limits = ParseLimits::new(i64::MAX / 2);
    let ordered = time_ordered(&history.arrivals, false);
    let mut exporter = Exporter::new(&set, LabelSpec::default());
    assert_eq!(
        exporter.columns().len(),
        set.features.len(),
        "one column per feature"
    );
    for (_, _, text) in &ordered {
        exporter.push(&parse_event(text.as_bytes(), &limits).unwrap());
    }
    assert_eq!(exporter.out_of_order, 0);
    let end = ordered.last().unwrap().0;
    let (examples, censored) = exporter.finish(end);
    let joins = history
        .distinct
        .iter()
        .filter(|e| e.kind == "viewer_joined")
        .count();
    assert!(examples.len() > 50, "{} examples", examples.len());
    assert!(examples.len() as u64 + censored <= joins as u64);
    let positives = examples.iter().filter(|e| e.label).count();
    assert!(positives > 0 && positives < examples.len(), "{positives}");

    // Labels, brute force: the viewer's next leave of that stream.
    let mut distinct = history.distinct.clone();
    distinct.sort_by_key(|e| (e.time, e.id));
    let mut rng = Rng::new(9);
    for _ in 0..200 {
        let example = &examples[rng.below(examples.len() as u64) as usize];
        let leave = distinct.iter().find(|e| {
            e.kind == "viewer_left"
                && e.time >= example.time_ms
                && e.user.as_deref() == Some(example.user_id.as_str())
                && e.stream.as_deref() == Some(example.stream_id.as_str())
        });
        match leave {
            Some(leave) => {
                assert_eq!(example.watch_ms, Some(leave.time - example.time_ms));
                assert_eq!(example.label, leave.time - example.time_ms >= 60_000);
            }
            None => {
                assert!(example.label && end - example.time_ms >= 60_000);
            }
        }
    }

    // Features: a fresh engine fed exactly the events ordered before the
    // join, read at the join's time, gives the same values.
    let picks: Vec<&riffle_features::export::Example> = (0..40)
        .map(|_| &examples[rng.below(examples.len() as u64) as usize])
        .collect();
    for example in picks {
        let id = event_hash(&example.event_id);
        let mut engine = FeatureEngine::new(&set);
        for (time, hash, text) in &ordered {
            if (*time, *hash) >= (example.time_ms, id) {
                break;
            }
            engine.apply(&parse_event(text.as_bytes(), &limits).unwrap());
        }
        let mut expected = Vec::new();
        let t = example.time_ms;
        let pair = example
            .streamer_id
            .as_deref()
            .map(|s| pair_id(&example.user_id, s));
        for (kind, id) in [
            (EntityKind::Stream, Some(example.stream_id.as_str())),
            (EntityKind::Streamer, example.streamer_id.as_deref()),
            (EntityKind::User, Some(example.user_id.as_str())),
            (EntityKind::UserStreamer, pair.as_deref()),
        ] {
            let n = engine.states.names(kind).count();
            match id.and_then(|id| engine.states.read(kind, id, t)) {
                Some((_, values)) => expected.extend(values),
                None => expected.extend(std::iter::repeat_n(Value::Null, n)),
            }
        }
        expected.extend(engine.states.context(t).into_iter().map(|(_, v)| v));
        assert_eq!(example.features, expected, "example {}", example.event_id);
        // The join does not count itself.
        let viewers = exporter_column(&set, "stream_joins_5m");
        let joins_before = distinct
            .iter()
            .filter(|e| {
                e.kind == "viewer_joined"
                    && e.stream.as_deref() == Some(example.stream_id.as_str())
                    && (e.time, e.id) < (t, id)
                    && e.time >= (t.div_euclid(60_000) - 4) * 60_000
            })
            .count() as i64;
        assert_eq!(example.features[viewers], Value::Int(joins_before));
    }
}

/// The index of a feature in the export's columns (stream features first).
fn exporter_column(set: &FeatureSet, name: &str) -> usize {
    set.of(Entity::Stored(EntityKind::Stream))
        .position(|f| f.name == name)
        .unwrap()
}

/// Changed entities become online store rows whose decoded values equal
/// the engine's; a later batch carries higher versions, and a replayed
/// older row cannot roll a stored one back.
#[tokio::test]
async fn changed_entities_round_trip_through_the_online_store() {
    use riffle_core::time::{Clock, ManualClock};
    use riffle_features::{MemoryOnlineStore, OnlineStore};
    use std::sync::Arc;

    let set = FeatureSet::defaults();
    let history = history(41);
    let limits = ParseLimits::new(i64::MAX / 2);
    let ordered = time_ordered(&history.arrivals, false);
    let half = ordered.len() / 2;
    let clock = ManualClock::new(1_800_000_000_000);
    let store = MemoryOnlineStore::new(Arc::new(clock.clone()));
    let mut engine = FeatureEngine::new(&set);
    for (_, _, text) in &ordered[..half] {
        engine.apply(&parse_event(text.as_bytes(), &limits).unwrap());
    }
    let t1 = ordered[half - 1].0;
    let first = engine.states.take_rows(t1, clock.now_ms());
    assert!(!first.is_empty());
    assert!(
        engine.states.take_rows(t1, clock.now_ms()).is_empty(),
        "nothing changed since"
    );
    store.put_batch(&first).await.unwrap();
    for (_, _, text) in &ordered[half..] {
        engine.apply(&parse_event(text.as_bytes(), &limits).unwrap());
    }
    let t2 = ordered.last().unwrap().0;
    let second = engine.states.take_rows(t2, clock.now_ms());
    store.put_batch(&second).await.unwrap();
    // Replaying the first batch (a restart from an older checkpoint) does
    // not roll rows back.
    store.put_batch(&first).await.unwrap();

    for kind in EntityKind::ALL {
        let mut ids: Vec<String> = engine.states.ids(kind).map(|id| id.to_string()).collect();
        ids.sort();
        ids.truncate(50);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rows = store.get_batch(kind, &refs).await.unwrap();
        for (id, row) in ids.iter().zip(rows) {
            let row = row.unwrap_or_else(|| panic!("{kind} {id} has no row"));
            let (state, values) = engine.states.read(kind, id, t2).unwrap();
            assert_eq!(row.version, state.version, "{kind} {id}");
            let decoded: Vec<Value> = engine
                .states
                .decode_row(&row)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            // Rows not changed in the second half carry values read at t1.
            if second.iter().any(|r| r.entity == kind && &r.id == id) {
                assert_eq!(decoded, values, "{kind} {id}");
            }
        }
    }
    // Rows expire by their entity's TTL (streams: 1 h).
    clock.advance(3_600_000);
    let stream = second
        .iter()
        .find(|r| r.entity == EntityKind::Stream)
        .unwrap();
    assert!(store
        .get_batch(EntityKind::Stream, &[&stream.id])
        .await
        .unwrap()[0]
        .is_none());
}
