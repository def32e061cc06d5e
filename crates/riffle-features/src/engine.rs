//! The feature operator's core, shared by every driver (the stream
//! engine online, the log replay offline): events in, feature vectors as of
//! an instant out.
//!
//! Two halves, matching the pipeline's topology (docs/adr/0004):
//!
//! * [`Enricher`], at a stream's home: drops duplicates (by `event_id`,
//!   within a horizon of event time), remembers each stream's metadata from
//!   its `stream_started`, and turns each event into [`Fact`]s — the event
//!   for the stream's own features at once, and the event with the stream's
//!   streamer, category and language attached for the streamer, user and
//!   (user, streamer) features once the metadata is known (facts of a
//!   stream whose start has not arrived wait for it).
//! * [`States`], at every entity's home: each entity's feature state,
//!   updated by facts and read as of an instant.
//!
//! Every aggregation is commutative, so the state after a set of facts does
//! not depend on their order: online (arrival order) and offline (time
//! order) agree. [`FeatureEngine`] puts both halves in one process, as the
//! offline replay does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use riffle_core::event::Event;

use crate::definition::{Aggregation, Entity, Feature, FeatureSet, Window};
use crate::store::EntityKind;
use crate::value::Value;

/// The event types features read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    StreamStarted,
    StreamHeartbeat,
    StreamEnded,
    ViewerJoined,
    ViewerLeft,
    GiftSent,
    ChatMessage,
    Follow,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "stream_started" => Kind::StreamStarted,
            "stream_heartbeat" => Kind::StreamHeartbeat,
            "stream_ended" => Kind::StreamEnded,
            "viewer_joined" => Kind::ViewerJoined,
            "viewer_left" => Kind::ViewerLeft,
            "gift_sent" => Kind::GiftSent,
            "chat_message" => Kind::ChatMessage,
            "follow" => Kind::Follow,
            _ => return None,
        })
    }
}

/// An event as features see it. `id` is a 64-bit hash of the `event_id`:
/// the identity for deduplication and for breaking ties between events of
/// the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub kind: Kind,
    pub id: u64,
    pub time_ms: i64,
    pub stream_id: Option<Arc<str>>,
    pub streamer_id: Option<Arc<str>>,
    pub user_id: Option<Arc<str>>,
    pub category: Option<Arc<str>>,
    pub language: Option<Arc<str>>,
    pub amount: u64,
}

/// The 64-bit identity of an event id or a value (stable across
/// processes, runs and versions: it is kept in checkpointed state).
pub fn event_hash(event_id: &str) -> u64 {
    // FNV-1a: fixed, so every process and the offline replay agree.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in event_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Fact {
    /// The fact of a live event; `None` for event types features do not
    /// read, and for an event without an id (ingest always assigns one).
    pub fn from_event(event: &Event<'_>) -> Option<Fact> {
        let kind = Kind::parse(event.event_type().as_str())?;
        let id = event_hash(event.event_id.as_deref()?);
        let field = |name: &str| event.body.field_str(name).map(Arc::<str>::from);
        Some(Fact {
            kind,
            id,
            time_ms: event.event_time,
            stream_id: field("stream_id"),
            streamer_id: field("streamer_id"),
            user_id: field("user_id"),
            category: field("category"),
            language: field("language"),
            amount: event.body.field_u64("amount").unwrap_or(0),
        })
    }

    fn order(&self) -> (i64, u64) {
        (self.time_ms, self.id)
    }
}

// ---------------------------------------------------------------- enricher

#[derive(Debug, Clone)]
struct StreamMeta {
    streamer_id: Arc<str>,
    category: Arc<str>,
    language: Arc<str>,
}

/// What one event becomes (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Derived {
    /// For the stream's own features (or, for a follow, none).
    pub stream: Option<Fact>,
    /// For the streamer, user and (user, streamer) features.
    pub others: Vec<Fact>,
}

/// Facts of a stream whose `stream_started` has not arrived, per stream, at
/// most this many (later arrivals beyond it are counted and dropped).
pub const MAX_PENDING_PER_STREAM: usize = 100_000;

/// Dedup and stream metadata at a stream's home.
#[derive(Debug)]
pub struct Enricher {
    horizon_ms: i64,
    seen: HashMap<u64, i64>,
    max_time_ms: i64,
    evicted_below_ms: i64,
    meta: HashMap<Arc<str>, StreamMeta>,
    pending: HashMap<Arc<str>, Vec<Fact>>,
    pub duplicates: u64,
    pub pending_dropped: u64,
}

impl Enricher {
    /// Duplicates are recognised within `horizon_ms` of event time behind
    /// the newest event.
    pub fn new(horizon_ms: i64) -> Enricher {
        Enricher {
            horizon_ms,
            seen: HashMap::new(),
            max_time_ms: i64::MIN,
            evicted_below_ms: i64::MIN,
            meta: HashMap::new(),
            pending: HashMap::new(),
            duplicates: 0,
            pending_dropped: 0,
        }
    }

    pub fn apply(&mut self, fact: Fact) -> Derived {
        if self.seen.insert(fact.id, fact.time_ms).is_some() {
            self.duplicates += 1;
            return Derived::default();
        }
        self.max_time_ms = self.max_time_ms.max(fact.time_ms);
        let floor = self.max_time_ms.saturating_sub(self.horizon_ms);
        if self.seen.len() > 1024
            && floor > self.evicted_below_ms.saturating_add(self.horizon_ms / 4)
        {
            self.seen.retain(|_, t| *t >= floor);
            self.evicted_below_ms = floor;
        }
        if fact.kind == Kind::Follow {
            return Derived {
                stream: None,
                others: vec![fact],
            };
        }
        let Some(stream) = fact.stream_id.clone() else {
            return Derived::default();
        };
        if fact.kind == Kind::StreamStarted && !self.meta.contains_key(&stream) {
            if let (Some(streamer_id), Some(category), Some(language)) = (
                fact.streamer_id.clone(),
                fact.category.clone(),
                fact.language.clone(),
            ) {
                let meta = StreamMeta {
                    streamer_id,
                    category,
                    language,
                };
                let mut others = vec![fact.clone()];
                for waiting in self.pending.remove(&stream).unwrap_or_default() {
                    others.push(enrich(waiting, &meta));
                }
                self.meta.insert(stream, meta);
                return Derived {
                    stream: Some(fact),
                    others,
                };
            }
        }
        let others = match self.meta.get(&stream) {
            Some(meta) => vec![enrich(fact.clone(), meta)],
            None => {
                let waiting = self.pending.entry(stream).or_default();
                if waiting.len() < MAX_PENDING_PER_STREAM {
                    waiting.push(fact.clone());
                } else {
                    self.pending_dropped += 1;
                }
                Vec::new()
            }
        };
        Derived {
            stream: Some(fact),
            others,
        }
    }
}

fn enrich(mut fact: Fact, meta: &StreamMeta) -> Fact {
    fact.streamer_id = Some(meta.streamer_id.clone());
    fact.category = Some(meta.category.clone());
    fact.language = Some(meta.language.clone());
    fact
}

// ------------------------------------------------------------------- tiles

/// Values per tile of a window (one slot for a lifetime window), oldest
/// first; tiles that can no longer be in any window are dropped.
#[derive(Debug, Clone)]
struct Tiled<T> {
    tile_ms: i64,
    span: i64,
    slots: VecDeque<(i64, T)>,
}

impl<T: Default> Tiled<T> {
    fn new(window: Window) -> Tiled<T> {
        let (tile_ms, span) = match window {
            Window::Lifetime => (0, i64::MAX),
            Window::Sliding { ms, tile_ms } => (tile_ms, ms / tile_ms),
        };
        Tiled {
            tile_ms,
            span,
            slots: VecDeque::new(),
        }
    }

    fn tile(&self, time_ms: i64) -> i64 {
        if self.tile_ms == 0 {
            0
        } else {
            time_ms.div_euclid(self.tile_ms)
        }
    }

    /// The slot of `time_ms`, or `None` when its tile has left every window
    /// a future read can ask for.
    fn slot(&mut self, time_ms: i64) -> Option<&mut T> {
        let tile = self.tile(time_ms);
        let newest = self.slots.back().map_or(tile, |(t, _)| (*t).max(tile));
        if tile <= newest.saturating_sub(self.span) {
            return None;
        }
        let at = self.slots.partition_point(|(t, _)| *t < tile);
        if self.slots.get(at).is_none_or(|(t, _)| *t != tile) {
            self.slots.insert(at, (tile, T::default()));
        }
        let floor = newest.saturating_sub(self.span);
        let mut at = at;
        while self.slots.front().is_some_and(|(t, _)| *t <= floor) {
            self.slots.pop_front();
            at -= 1;
        }
        Some(&mut self.slots[at].1)
    }

    /// The tiles of the window that ends with the tile of `at_ms`.
    fn window(&self, at_ms: i64) -> impl Iterator<Item = &T> {
        let last = self.tile(at_ms);
        let first = last.saturating_sub(self.span);
        self.slots
            .iter()
            .filter(move |(t, _)| *t > first && *t <= last)
            .map(|(_, v)| v)
    }

    /// The first instant inside the window of `at_ms`.
    fn window_start(&self, at_ms: i64) -> i64 {
        if self.tile_ms == 0 {
            i64::MIN
        } else {
            (self.tile(at_ms) - self.span + 1).saturating_mul(self.tile_ms)
        }
    }
}

// ---------------------------------------------------------------- sessions

/// Viewing sessions per session key (the user on a stream, the stream of a
/// user, …): each key's join/leave events in (time, id) order, and what
/// they add up to, maintained by difference so any arrival order gives the
/// same totals.
#[derive(Debug, Clone)]
struct Sessions {
    keys: HashMap<Arc<str>, Vec<(i64, u64, bool)>>,
    open: i64,
    /// +1 / −1 at each open / close transition.
    transitions: Tiled<i64>,
    /// (total ms, sessions) by the tile a session ended in.
    ended: Tiled<(i64, i64)>,
}

#[derive(Default)]
struct SessionSummary {
    open: bool,
    transitions: Vec<(i64, i64)>,
    ended: Vec<(i64, i64)>,
}

fn summarise(events: &[(i64, u64, bool)]) -> SessionSummary {
    let mut summary = SessionSummary::default();
    let mut started = None;
    for &(time, _, join) in events {
        match (join, started) {
            (true, None) => {
                started = Some(time);
                summary.transitions.push((time, 1));
            }
            (false, Some(start)) => {
                started = None;
                summary.transitions.push((time, -1));
                summary.ended.push((time, time - start));
            }
            _ => {}
        }
    }
    summary.open = started.is_some();
    summary
}

impl Sessions {
    fn new(window: Window) -> Sessions {
        Sessions {
            keys: HashMap::new(),
            open: 0,
            transitions: Tiled::new(window),
            ended: Tiled::new(window),
        }
    }

    fn apply(&mut self, key: Arc<str>, time: i64, id: u64, join: bool) {
        let events = self.keys.entry(key).or_default();
        let before = summarise(events);
        let at = events.partition_point(|e| (e.0, e.1) < (time, id));
        events.insert(at, (time, id, join));
        let after = summarise(events);
        self.open += i64::from(after.open) - i64::from(before.open);
        for (summary, sign) in [(before, -1), (after, 1)] {
            for (t, delta) in summary.transitions {
                if let Some(slot) = self.transitions.slot(t) {
                    *slot += sign * delta;
                }
            }
            for (t, duration) in summary.ended {
                if let Some(slot) = self.ended.slot(t) {
                    slot.0 += sign * duration;
                    slot.1 += sign;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ states

#[derive(Debug, Clone)]
enum State {
    Count(Tiled<i64>),
    Ratio(Tiled<(i64, i64)>),
    Sum(Tiled<i64>),
    Avg(Tiled<(i64, i64)>),
    Min(Tiled<Option<i64>>),
    Max(Tiled<Option<i64>>),
    DistinctLifetime(HashSet<u64>),
    /// Each value's newest time, the window's tiles (for its position) and
    /// the floor values were last evicted below.
    DistinctWindow(HashMap<Arc<str>, i64>, Tiled<()>, i64),
    TopK(Tiled<HashMap<Arc<str>, i64>>),
    RecentK(HashMap<Arc<str>, (i64, u64)>),
    Last(Option<((i64, u64), Arc<str>)>),
    Newest(Option<i64>),
    Oldest(Option<i64>),
    Sessions(Box<Sessions>),
    Live {
        alive: Option<i64>,
        ended: Option<i64>,
    },
    Context,
}

fn field_of<'f>(fact: &'f Fact, field: &str) -> Option<&'f Arc<str>> {
    match field {
        "stream_id" => fact.stream_id.as_ref(),
        "streamer_id" => fact.streamer_id.as_ref(),
        "user_id" => fact.user_id.as_ref(),
        "category" => fact.category.as_ref(),
        "language" => fact.language.as_ref(),
        _ => None,
    }
}

impl State {
    fn new(feature: &Feature) -> State {
        let window = feature.window;
        match feature.aggregation {
            Aggregation::Count | Aggregation::RatePerMin => State::Count(Tiled::new(window)),
            Aggregation::Ratio => State::Ratio(Tiled::new(window)),
            Aggregation::Sum => State::Sum(Tiled::new(window)),
            Aggregation::Avg => State::Avg(Tiled::new(window)),
            Aggregation::Min => State::Min(Tiled::new(window)),
            Aggregation::Max => State::Max(Tiled::new(window)),
            Aggregation::DistinctCount => match window {
                Window::Lifetime => State::DistinctLifetime(HashSet::new()),
                Window::Sliding { .. } => {
                    State::DistinctWindow(HashMap::new(), Tiled::new(window), i64::MIN)
                }
            },
            Aggregation::TopK => State::TopK(Tiled::new(window)),
            Aggregation::RecentK => State::RecentK(HashMap::new()),
            Aggregation::Last => State::Last(None),
            Aggregation::TimeSinceLast => State::Newest(None),
            Aggregation::Age => State::Oldest(None),
            Aggregation::OpenSessions
            | Aggregation::OpenSessionsGrowth
            | Aggregation::SessionDurationAvg
            | Aggregation::SessionDurationSum => State::Sessions(Box::new(Sessions::new(window))),
            Aggregation::Live => State::Live {
                alive: None,
                ended: None,
            },
            Aggregation::HourOfDay | Aggregation::DayOfWeek => State::Context,
        }
    }

    fn apply(&mut self, feature: &Feature, entity: EntityKind, fact: &Fact, is_per: bool) {
        let time = fact.time_ms;
        // Amounts are u64 on the wire; sums saturate rather than wrap.
        let amount = fact.amount.min(i64::MAX as u64) as i64;
        let value = feature.field.as_deref().and_then(|f| field_of(fact, f));
        match self {
            State::Count(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    *slot += 1;
                }
            }
            State::Ratio(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    if is_per {
                        slot.1 += 1;
                    } else {
                        slot.0 += 1;
                    }
                }
            }
            State::Sum(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    *slot = slot.saturating_add(amount);
                }
            }
            State::Avg(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    slot.0 = slot.0.saturating_add(amount);
                    slot.1 += 1;
                }
            }
            State::Min(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    *slot = Some(slot.map_or(amount, |m| m.min(amount)));
                }
            }
            State::Max(tiles) => {
                if let Some(slot) = tiles.slot(time) {
                    *slot = Some(slot.map_or(amount, |m| m.max(amount)));
                }
            }
            State::DistinctLifetime(set) => {
                if let Some(value) = value {
                    set.insert(event_hash(value));
                }
            }
            State::DistinctWindow(last, tiles, evicted) => {
                if let Some(value) = value {
                    let seen = last.entry(value.clone()).or_insert(time);
                    *seen = (*seen).max(time);
                    // The tiles only track the window's position, to evict
                    // values that left every future window — once per tile
                    // the window moves, not per event.
                    let _ = tiles.slot(time);
                    if let Some((newest, _)) = tiles.slots.back() {
                        let floor = (newest - tiles.span + 1).saturating_mul(tiles.tile_ms);
                        if floor > *evicted {
                            last.retain(|_, t| *t >= floor);
                            *evicted = floor;
                        }
                    }
                }
            }
            State::TopK(tiles) => {
                if let (Some(value), Some(slot)) = (value, tiles.slot(time)) {
                    *slot.entry(value.clone()).or_insert(0) += 1;
                }
            }
            State::RecentK(recent) => {
                if let Some(value) = value {
                    let order = fact.order();
                    let entry = recent.entry(value.clone()).or_insert(order);
                    *entry = (*entry).max(order);
                    let keep = 64 * feature.k.max(1);
                    if recent.len() > 2 * keep {
                        let mut orders: Vec<(i64, u64)> = recent.values().copied().collect();
                        orders.sort_unstable_by(|a, b| b.cmp(a));
                        let cut = orders[keep - 1];
                        recent.retain(|_, o| *o >= cut);
                    }
                }
            }
            State::Last(last) => {
                if let Some(value) = value {
                    let order = fact.order();
                    if last.as_ref().is_none_or(|(o, _)| order > *o) {
                        *last = Some((order, value.clone()));
                    }
                }
            }
            State::Newest(newest) => *newest = Some(newest.map_or(time, |n| n.max(time))),
            State::Oldest(oldest) => *oldest = Some(oldest.map_or(time, |o| o.min(time))),
            State::Sessions(sessions) => {
                let key = session_key(entity, fact);
                if let Some(key) = key {
                    let join = fact.kind == Kind::ViewerJoined;
                    sessions.apply(key, time, fact.id, join);
                }
            }
            State::Live { alive, ended } => {
                if fact.kind == Kind::StreamEnded {
                    *ended = Some(ended.map_or(time, |e| e.max(time)));
                } else {
                    *alive = Some(alive.map_or(time, |a| a.max(time)));
                }
            }
            State::Context => {}
        }
    }

    fn read(&self, feature: &Feature, at_ms: i64) -> Value {
        let seconds = |ms: i64| Value::Float(ms as f64 / 1000.0);
        match self {
            State::Count(tiles) => {
                let count: i64 = tiles.window(at_ms).sum();
                match (feature.aggregation, feature.window) {
                    (Aggregation::RatePerMin, Window::Sliding { ms, .. }) => {
                        Value::Float(count as f64 * 60_000.0 / ms as f64)
                    }
                    _ => Value::Int(count),
                }
            }
            State::Ratio(tiles) => {
                let (num, den) = tiles
                    .window(at_ms)
                    .fold((0, 0), |(n, d), (a, b)| (n + a, d + b));
                if den == 0 {
                    Value::Null
                } else {
                    Value::Float(num as f64 / den as f64)
                }
            }
            State::Sum(tiles) => {
                Value::Int(tiles.window(at_ms).fold(0i64, |a, b| a.saturating_add(*b)))
            }
            State::Avg(tiles) => {
                let (sum, n) = tiles
                    .window(at_ms)
                    .fold((0i64, 0), |(s, c), (a, b)| (s.saturating_add(*a), c + b));
                if n == 0 {
                    Value::Null
                } else {
                    Value::Float(sum as f64 / n as f64)
                }
            }
            State::Min(tiles) => tiles
                .window(at_ms)
                .flatten()
                .min()
                .map_or(Value::Null, |v| Value::Int(*v)),
            State::Max(tiles) => tiles
                .window(at_ms)
                .flatten()
                .max()
                .map_or(Value::Null, |v| Value::Int(*v)),
            State::DistinctLifetime(set) => Value::Int(set.len() as i64),
            State::DistinctWindow(last, tiles, _) => {
                let from = tiles.window_start(at_ms);
                Value::Int(
                    last.values()
                        .filter(|t| **t >= from && **t <= at_ms)
                        .count() as i64,
                )
            }
            State::TopK(tiles) => {
                let mut counts: HashMap<&str, i64> = HashMap::new();
                for slot in tiles.window(at_ms) {
                    for (value, n) in slot {
                        *counts.entry(value).or_insert(0) += n;
                    }
                }
                let mut ranked: Vec<(&str, i64)> = counts.into_iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                Value::List(
                    ranked
                        .into_iter()
                        .take(feature.k)
                        .map(|(v, _)| v.to_owned())
                        .collect(),
                )
            }
            State::RecentK(recent) => {
                let mut ranked: Vec<(&(i64, u64), &Arc<str>)> = recent
                    .iter()
                    .filter(|(_, o)| o.0 <= at_ms)
                    .map(|(v, o)| (o, v))
                    .collect();
                ranked.sort_by(|a, b| b.0.cmp(a.0));
                Value::List(
                    ranked
                        .into_iter()
                        .take(feature.k)
                        .map(|(_, v)| v.to_string())
                        .collect(),
                )
            }
            State::Last(last) => last
                .as_ref()
                .map_or(Value::Null, |(_, v)| Value::Str(v.to_string())),
            State::Newest(newest) => newest.map_or(Value::Null, |t| seconds(at_ms - t)),
            State::Oldest(oldest) => oldest.map_or(Value::Null, |t| seconds(at_ms - t)),
            State::Sessions(sessions) => match feature.aggregation {
                Aggregation::OpenSessions => Value::Int(sessions.open),
                Aggregation::OpenSessionsGrowth => {
                    Value::Int(sessions.transitions.window(at_ms).sum())
                }
                Aggregation::SessionDurationSum => {
                    seconds(sessions.ended.window(at_ms).map(|(ms, _)| ms).sum())
                }
                _ => {
                    let (ms, n) = sessions
                        .ended
                        .window(at_ms)
                        .fold((0, 0), |(s, c), (a, b)| (s + a, c + b));
                    if n == 0 {
                        Value::Null
                    } else {
                        Value::Float(ms as f64 / 1000.0 / n as f64)
                    }
                }
            },
            State::Live { alive, ended } => {
                let live = alive.is_some_and(|a| {
                    a <= at_ms
                        && at_ms - a < feature.timeout_ms
                        && ended.is_none_or(|e| e < a || e > at_ms)
                });
                Value::Bool(live)
            }
            State::Context => context_value(feature.aggregation, at_ms),
        }
    }
}

/// Hour of day (0–23) and day of week (0 = Monday) in UTC.
fn context_value(aggregation: Aggregation, at_ms: i64) -> Value {
    let days = at_ms.div_euclid(86_400_000);
    match aggregation {
        Aggregation::HourOfDay => Value::Int(at_ms.rem_euclid(86_400_000) / 3_600_000),
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        _ => Value::Int((days + 3).rem_euclid(7)),
    }
}

/// The session key of a join/leave fact at an entity.
fn session_key(entity: EntityKind, fact: &Fact) -> Option<Arc<str>> {
    match entity {
        EntityKind::Stream => fact.user_id.clone(),
        EntityKind::User | EntityKind::UserStreamer => fact.stream_id.clone(),
        EntityKind::Streamer => match (&fact.stream_id, &fact.user_id) {
            (Some(s), Some(u)) => Some(Arc::from(format!("{s}|{u}"))),
            _ => None,
        },
    }
}

/// The id of `entity` a fact belongs to, if it names one.
pub fn entity_id(entity: EntityKind, fact: &Fact) -> Option<Arc<str>> {
    match entity {
        EntityKind::Stream => fact.stream_id.clone(),
        EntityKind::Streamer => fact.streamer_id.clone(),
        EntityKind::User => fact.user_id.clone(),
        EntityKind::UserStreamer => match (&fact.user_id, &fact.streamer_id) {
            (Some(u), Some(s)) => Some(pair_id(u, s).into()),
            _ => None,
        },
    }
}

/// The id of a (user, streamer) entity.
pub fn pair_id(user_id: &str, streamer_id: &str) -> String {
    format!("{user_id}|{streamer_id}")
}

/// One entity's features.
#[derive(Debug, Clone)]
pub struct EntityState {
    /// Facts applied; never decreases (the online row's version).
    pub version: u64,
    /// Event time of the newest fact.
    pub as_of_ms: i64,
    states: Vec<State>,
}

/// The features of one entity kind, with the event kinds each reads.
#[derive(Debug)]
struct EntityPlan {
    features: Vec<Feature>,
    /// Per feature: the kinds in `events`, and in `per`.
    reads: Vec<(Vec<Kind>, Vec<Kind>)>,
}

/// Every entity's feature state at one home (or all of them, offline).
#[derive(Debug)]
pub struct States {
    plans: Vec<EntityPlan>,
    context: Vec<Feature>,
    entities: HashMap<(EntityKind, Arc<str>), EntityState>,
    /// Entities changed since the last [`States::take_rows`].
    dirty: HashSet<(EntityKind, Arc<str>)>,
    /// Per entity kind: the row TTL and the vector's schema fingerprint.
    ttl_ms: [i64; 4],
    schemas: [u64; 4],
}

impl States {
    pub fn new(set: &FeatureSet) -> States {
        let kinds = |names: &[String]| -> Vec<Kind> {
            names.iter().filter_map(|n| Kind::parse(n)).collect()
        };
        let plans = EntityKind::ALL
            .into_iter()
            .map(|kind| {
                let features: Vec<Feature> = set.of(Entity::Stored(kind)).cloned().collect();
                let reads = features
                    .iter()
                    .map(|f| (kinds(&f.events), kinds(&f.per)))
                    .collect();
                EntityPlan { features, reads }
            })
            .collect::<Vec<_>>();
        let ttl_ms = EntityKind::ALL.map(|kind| {
            set.ttl_ms
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(7 * 86_400_000, |(_, ttl)| *ttl)
        });
        // Name, aggregation and window: a feature whose window changed
        // under the same name is another feature.
        let schemas = EntityKind::ALL.map(|kind| {
            let described: Vec<(&str, String)> = plans[kind as usize]
                .features
                .iter()
                .map(|f| {
                    (
                        f.name.as_str(),
                        format!("{}/{:?}", f.aggregation.as_str(), f.window),
                    )
                })
                .collect();
            crate::value::schema_fingerprint(described.iter().map(|(n, d)| (*n, d.as_str())))
        });
        States {
            plans,
            context: set.of(Entity::Context).cloned().collect(),
            entities: HashMap::new(),
            dirty: HashSet::new(),
            ttl_ms,
            schemas,
        }
    }

    /// The fingerprint of `entity`'s feature vector (see
    /// [`crate::value::encode_vector`]).
    pub fn schema(&self, entity: EntityKind) -> u64 {
        self.schemas[entity as usize]
    }

    /// The rows of the entities changed since the last call, their values
    /// read as of `at_ms` and expiring `ttl` after `now_ms` (wall clock),
    /// for [`crate::OnlineStore::put_batch`]. Values of sliding windows
    /// also change as time passes without events: a driver re-emits those
    /// entities with [`States::touch_all`] when a tile boundary passes.
    pub fn take_rows(&mut self, at_ms: i64, now_ms: i64) -> Vec<crate::EntityRow> {
        let mut dirty: Vec<(EntityKind, Arc<str>)> = self.dirty.drain().collect();
        dirty.sort();
        let mut rows = Vec::with_capacity(dirty.len());
        for (kind, id) in dirty {
            let Some((state, values)) = self.read(kind, &id, at_ms) else {
                continue;
            };
            let mut value = Vec::with_capacity(16 * values.len());
            crate::value::encode_vector(self.schemas[kind as usize], &values, &mut value);
            rows.push(crate::EntityRow {
                entity: kind,
                id: id.to_string(),
                version: state.version,
                as_of_ms: state.as_of_ms,
                expires_at_ms: now_ms.saturating_add(self.ttl_ms[kind as usize]),
                value: value.into(),
            });
        }
        rows
    }

    /// Marks every entity changed (its row is written again by the next
    /// [`States::take_rows`]).
    pub fn touch_all(&mut self) {
        self.dirty.extend(self.entities.keys().cloned());
    }

    /// A stored row's values by feature name, checked against this feature
    /// set's schema.
    pub fn decode_row(
        &self,
        row: &crate::EntityRow,
    ) -> Result<Vec<(&str, Value)>, riffle_core::codec::FormatError> {
        let values = crate::value::decode_vector(self.schemas[row.entity as usize], &row.value)?;
        Ok(self.names(row.entity).zip(values).collect())
    }

    /// Applies a fact to `entity`'s state (if a feature of it reads the
    /// fact's kind); returns the entity id it updated.
    pub fn apply(&mut self, entity: EntityKind, fact: &Fact) -> Option<Arc<str>> {
        let plan = &self.plans[entity as usize];
        let reads = |(events, per): &(Vec<Kind>, Vec<Kind>)| {
            events.contains(&fact.kind) || per.contains(&fact.kind)
        };
        if !plan.reads.iter().any(reads) {
            return None;
        }
        let id = entity_id(entity, fact)?;
        let state = self
            .entities
            .entry((entity, id.clone()))
            .or_insert_with(|| EntityState {
                version: 0,
                as_of_ms: i64::MIN,
                states: plan.features.iter().map(State::new).collect(),
            });
        state.version += 1;
        state.as_of_ms = state.as_of_ms.max(fact.time_ms);
        self.dirty.insert((entity, id.clone()));
        for (i, feature) in plan.features.iter().enumerate() {
            let (events, per) = &plan.reads[i];
            if events.contains(&fact.kind) {
                state.states[i].apply(feature, entity, fact, false);
            } else if per.contains(&fact.kind) {
                state.states[i].apply(feature, entity, fact, true);
            }
        }
        Some(id)
    }

    /// The names of `entity`'s features, in the order [`States::read`]
    /// returns their values.
    pub fn names(&self, entity: EntityKind) -> impl Iterator<Item = &str> {
        self.plans[entity as usize]
            .features
            .iter()
            .map(|f| f.name.as_str())
    }

    /// `entity`'s feature values as of `at_ms`; `None` for an entity with
    /// no fact yet. Exact when no applied fact is newer than `at_ms` — the
    /// offline replay reads each instant before applying later facts, and
    /// online reads are at the newest event time the task has seen.
    pub fn read(
        &self,
        entity: EntityKind,
        id: &str,
        at_ms: i64,
    ) -> Option<(&EntityState, Vec<Value>)> {
        let state = self.entities.get(&(entity, Arc::from(id)))?;
        let plan = &self.plans[entity as usize];
        let values = plan
            .features
            .iter()
            .zip(&state.states)
            .map(|(feature, s)| s.read(feature, at_ms))
            .collect();
        Some((state, values))
    }

    /// The context features as of `at_ms`, by name.
    pub fn context(&self, at_ms: i64) -> Vec<(&str, Value)> {
        self.context
            .iter()
            .map(|f| (f.name.as_str(), context_value(f.aggregation, at_ms)))
            .collect()
    }

    /// Entities with state, of one kind, in no particular order.
    pub fn ids(&self, entity: EntityKind) -> impl Iterator<Item = &Arc<str>> {
        self.entities
            .keys()
            .filter(move |(k, _)| *k == entity)
            .map(|(_, id)| id)
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

/// Both halves in one process: what the offline replay runs, and the
/// reference the distributed pipeline must equal.
#[derive(Debug)]
pub struct FeatureEngine {
    pub enricher: Enricher,
    pub states: States,
}

/// How far behind the newest event a duplicate is still recognised.
pub const DEDUP_HORIZON_MS: i64 = 3_600_000;

impl FeatureEngine {
    pub fn new(set: &FeatureSet) -> FeatureEngine {
        FeatureEngine {
            enricher: Enricher::new(DEDUP_HORIZON_MS),
            states: States::new(set),
        }
    }

    /// Applies one event (ignored if features do not read its type).
    pub fn apply(&mut self, event: &Event<'_>) {
        if let Some(fact) = Fact::from_event(event) {
            self.apply_fact(fact);
        }
    }

    pub fn apply_fact(&mut self, fact: Fact) {
        let derived = self.enricher.apply(fact);
        if let Some(fact) = &derived.stream {
            self.states.apply(EntityKind::Stream, fact);
        }
        for fact in &derived.others {
            for entity in [
                EntityKind::Streamer,
                EntityKind::User,
                EntityKind::UserStreamer,
            ] {
                self.states.apply(entity, fact);
            }
        }
    }
}
