//! A simulated live-streaming platform: streamers going live and offline
//! on their own schedules (heartbeats while live; some streams vanish
//! without `stream_ended`), users with hidden tastes and habits on a
//! diurnal cycle who browse what is live, join, watch, chat, gift, follow
//! and come back to the streamers they watched.
//!
//! [`LiveGenerator`] is a discrete-event simulation: every future action
//! (a streamer going live, a heartbeat, a stream ending, a user starting a
//! session, leaving, chatting, gifting) sits in a time-ordered queue, so
//! the cost is a few hundred nanoseconds per event whatever the number of
//! users and streamers. Deterministic: the same [`LiveConfig`] (seed
//! included) gives the same events on every platform and run.
//!
//! The behaviour of users is [`model::UserModel`]: the same function that
//! decides organic joins here answers "which shown stream does this user
//! join, for how long" for a recommender's closed-loop evaluation.

pub mod config;
pub mod model;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::io::Write;

pub use config::{LiveConfig, CATEGORIES, LANGUAGES, PRESETS};
pub use model::{History, Join, StreamView, StreamerProfile, UserModel, UserProfile};

use crate::ads::ConfigError;
use crate::rng::Rng;
use config::HOUR_MS;
use model::{diurnal, hour_of, normal};

/// A stream: the `n`-th stream of `streamer` (`s<streamer>.<n>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub streamer: u32,
    pub n: u32,
}

/// What happened, with ids as numbers (`u<user>`, `b<streamer>`,
/// `s<streamer>.<n>` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LiveBody {
    StreamStarted {
        stream: StreamId,
        category: u16,
        language: u16,
    },
    StreamHeartbeat {
        stream: StreamId,
    },
    StreamEnded {
        stream: StreamId,
    },
    ViewerJoined {
        stream: StreamId,
        user: u32,
    },
    ViewerLeft {
        stream: StreamId,
        user: u32,
    },
    GiftSent {
        stream: StreamId,
        user: u32,
        amount: u64,
    },
    ChatMessage {
        stream: StreamId,
        user: u32,
    },
    Follow {
        user: u32,
        streamer: u32,
    },
}

impl LiveBody {
    pub fn event_type(&self) -> &'static str {
        match self {
            LiveBody::StreamStarted { .. } => "stream_started",
            LiveBody::StreamHeartbeat { .. } => "stream_heartbeat",
            LiveBody::StreamEnded { .. } => "stream_ended",
            LiveBody::ViewerJoined { .. } => "viewer_joined",
            LiveBody::ViewerLeft { .. } => "viewer_left",
            LiveBody::GiftSent { .. } => "gift_sent",
            LiveBody::ChatMessage { .. } => "chat_message",
            LiveBody::Follow { .. } => "follow",
        }
    }
}

/// One generated event. Duplicates carry the same `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveEvent {
    pub id: u64,
    pub time_ms: i64,
    pub body: LiveBody,
}

/// Counts of what a run generated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveStats {
    /// Events emitted, duplicates included.
    pub events: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub streams_started: u64,
    /// Streams that ended without `stream_ended`.
    pub streams_vanished: u64,
    /// Viewer joins (watch sessions).
    pub joins: u64,
    pub max_live: u64,
    /// Events by type (in [`LiveBody::event_type`] order of first sight).
    pub by_type: Vec<(&'static str, u64)>,
}

/// Future actions, ordered by time then by insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    GoLive(u32),
    Heartbeat(StreamId),
    End(StreamId),
    /// A user looks for something to watch (`true`: within a session).
    Browse(u32, bool),
    Leave(u32, StreamId),
    Chat(u32, StreamId),
    Gift(u32, StreamId),
}

#[derive(Debug, Clone)]
struct Live {
    n: u32,
    vanishes: bool,
    viewers: Vec<u32>,
}

/// Live streams: a dense list (uniform sampling) per category.
#[derive(Debug, Default)]
struct LiveSet {
    by_category: Vec<Vec<u32>>,
    position: Vec<u32>,
    count: u64,
}

impl LiveSet {
    fn insert(&mut self, streamer: u32, category: u16) {
        let list = &mut self.by_category[category as usize];
        self.position[streamer as usize] = list.len() as u32;
        list.push(streamer);
        self.count += 1;
    }

    fn remove(&mut self, streamer: u32, category: u16) {
        let list = &mut self.by_category[category as usize];
        let at = self.position[streamer as usize] as usize;
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.position[moved as usize] = at as u32;
        }
        self.count -= 1;
    }
}

/// A Fenwick tree of weights (viewers + 1 of each live stream), to sample a
/// live stream in proportion to its audience in O(log n).
#[derive(Debug)]
struct Fenwick {
    tree: Vec<u64>,
    total: u64,
}

impl Fenwick {
    fn new(n: usize) -> Fenwick {
        Fenwick {
            tree: vec![0; n + 1],
            total: 0,
        }
    }

    fn add(&mut self, index: usize, delta: i64) {
        self.total = (self.total as i64 + delta) as u64;
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] = (self.tree[i] as i64 + delta) as u64;
            i += i & i.wrapping_neg();
        }
    }

    /// The index whose cumulative range holds `target` (< total).
    fn find(&self, mut target: u64) -> usize {
        let mut position = 0;
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = position + step;
            if next < self.tree.len() && self.tree[next] <= target {
                position = next;
                target -= self.tree[next];
            }
            step >>= 1;
        }
        position
    }
}

const GIFT_AMOUNTS: [(u64, f64); 6] = [
    (1, 0.40),
    (5, 0.25),
    (10, 0.18),
    (50, 0.10),
    (100, 0.05),
    (500, 0.02),
];

/// The simulation; see the module docs.
pub struct LiveGenerator {
    config: LiveConfig,
    prefix: String,
    model: UserModel,
    history: History,
    rng: Rng,
    end_ms: i64,
    now_ms: i64,
    actions: BinaryHeap<Reverse<(i64, u64, Action)>>,
    action_seq: u64,
    /// Events waiting for their emission time (out-of-order delays).
    pending: BinaryHeap<Reverse<(i64, u64, LiveEvent)>>,
    pending_seq: u64,
    next_id: u64,
    live: Vec<Option<Live>>,
    next_stream: Vec<u32>,
    live_set: LiveSet,
    audience: Fenwick,
    watching: Vec<Option<StreamId>>,
    /// Streamers each user watched at least once (their comeback set).
    watched: Vec<Vec<u32>>,
    follows: HashSet<(u32, u32)>,
    stats: LiveStats,
    scratch: Vec<StreamView>,
}

impl LiveGenerator {
    pub fn new(config: LiveConfig) -> Result<LiveGenerator, ConfigError> {
        config.validate()?;
        let mut rng = Rng::new(config.seed);
        let model = build_model(&config, &mut rng);
        let streamers = config.streamers as usize;
        let users = config.users as usize;
        let mut generator = LiveGenerator {
            prefix: config.effective_id_prefix(),
            end_ms: config.start_ms.saturating_add(config.duration_ms),
            now_ms: config.start_ms,
            actions: BinaryHeap::new(),
            action_seq: 0,
            pending: BinaryHeap::new(),
            pending_seq: 0,
            next_id: 0,
            live: vec![None; streamers],
            next_stream: vec![0; streamers],
            live_set: LiveSet {
                by_category: vec![Vec::new(); config.categories as usize],
                position: vec![0; streamers],
                count: 0,
            },
            audience: Fenwick::new(streamers),
            watching: vec![None; users],
            watched: vec![Vec::new(); users],
            follows: HashSet::new(),
            stats: LiveStats::default(),
            scratch: Vec::new(),
            history: History::default(),
            model,
            rng,
            config,
        };
        generator.schedule_start();
        Ok(generator)
    }

    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// The hidden behaviour of every user and streamer.
    pub fn model(&self) -> &UserModel {
        &self.model
    }

    /// Past watches so far (the repeat-consumption state).
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    /// The event id of `event` as written (`<prefix><id>`).
    pub fn event_id(&self, event: &LiveEvent) -> String {
        format!("{}{}", self.prefix, event.id)
    }

    /// At the start, streamers are live as often as their schedule has
    /// them live at that hour (they announce with `stream_started` within a
    /// heartbeat), and everyone's first action is drawn.
    fn schedule_start(&mut self) {
        let start = self.config.start_ms;
        let hour = hour_of(start);
        for streamer in 0..self.config.streamers {
            let profile = &self.model.streamers[streamer as usize];
            let per_ms = profile.streams_per_week as f64 / (7.0 * 24.0 * HOUR_MS as f64);
            let live_share =
                (per_ms * profile.length_ms as f64 * diurnal(hour, profile.peak_hour)).min(0.9);
            if self.rng.next_f64() < live_share {
                let at = start + self.rng.below(self.config.heartbeat_ms as u64) as i64;
                self.push(at, Action::GoLive(streamer));
            } else {
                self.schedule_go_live(streamer, start);
            }
        }
        for user in 0..self.config.users {
            self.schedule_session(user, start);
        }
    }

    fn push(&mut self, at: i64, action: Action) {
        if at < self.end_ms {
            self.action_seq += 1;
            self.actions.push(Reverse((at, self.action_seq, action)));
        }
    }

    /// Draws the next time after `from` of a Poisson process of `per_ms`
    /// modulated by the diurnal curve around `peak` (by thinning).
    fn next_diurnal(&mut self, from: i64, per_ms: f64, peak: u8) -> i64 {
        let max_rate = per_ms * 1.75;
        let mut t = from as f64;
        loop {
            let u = self.rng.next_f64().max(1e-300);
            t += -u.ln() / max_rate;
            if t >= self.end_ms as f64 {
                return i64::MAX;
            }
            if self.rng.next_f64() * 1.75 < diurnal(hour_of(t as i64), peak) {
                return t as i64;
            }
        }
    }

    fn schedule_go_live(&mut self, streamer: u32, from: i64) {
        let profile = &self.model.streamers[streamer as usize];
        let per_ms = profile.streams_per_week as f64 / (7.0 * 24.0 * HOUR_MS as f64);
        let peak = profile.peak_hour;
        let at = self.next_diurnal(from, per_ms, peak);
        self.push(at, Action::GoLive(streamer));
    }

    fn schedule_session(&mut self, user: u32, from: i64) {
        let profile = &self.model.users[user as usize];
        let per_ms = profile.sessions_per_day as f64 / (24.0 * HOUR_MS as f64);
        let peak = profile.peak_hour;
        let at = self.next_diurnal(from, per_ms, peak);
        self.push(at, Action::Browse(user, false));
    }

    fn exp_after(&mut self, from: i64, per_ms: f64) -> i64 {
        if per_ms <= 0.0 {
            return i64::MAX;
        }
        let u = self.rng.next_f64().max(1e-300);
        from.saturating_add((-u.ln() / per_ms).min(1e15) as i64 + 1)
    }

    fn emit(&mut self, time_ms: i64, body: LiveBody) {
        self.next_id += 1;
        let event = LiveEvent {
            id: self.next_id,
            time_ms,
            body,
        };
        let mut delay = 0;
        if self.config.out_of_order > 0.0
            && self.config.max_out_of_order_ms > 0
            && self.rng.next_f64() < self.config.out_of_order
        {
            delay = 1 + self.rng.below(self.config.max_out_of_order_ms as u64) as i64;
            self.stats.out_of_order += 1;
        }
        self.enqueue(time_ms + delay, event);
        if self.config.duplicates > 0.0 && self.rng.next_f64() < self.config.duplicates {
            let later = 1 + self
                .rng
                .below(self.config.max_out_of_order_ms.max(1_000) as u64);
            self.stats.duplicates += 1;
            self.enqueue(time_ms + delay + later as i64, event);
        }
    }

    fn enqueue(&mut self, emit_at: i64, event: LiveEvent) {
        self.pending_seq += 1;
        self.pending
            .push(Reverse((emit_at, self.pending_seq, event)));
    }

    /// The emission time of the next event, advancing the simulation as
    /// far as needed; `None` when the run is over.
    pub fn next_arrival_ms(&mut self) -> Option<i64> {
        loop {
            let due = self.pending.peek().map(|Reverse((t, _, _))| *t);
            let next_action = self.actions.peek().map(|Reverse((t, _, _))| *t);
            match (due, next_action) {
                (Some(t), Some(a)) if t <= a => return Some(t),
                (Some(t), None) => return Some(t),
                (_, Some(_)) => self.step(),
                (None, None) => return None,
            }
        }
    }

    /// The next event in emission order (event time, except for the
    /// injected out-of-order ones and duplicates).
    pub fn next_event(&mut self) -> Option<LiveEvent> {
        self.next_arrival_ms()?;
        let Reverse((_, _, event)) = self.pending.pop()?;
        self.stats.events += 1;
        let kind = event.body.event_type();
        match self.stats.by_type.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.stats.by_type.push((kind, 1)),
        }
        Some(event)
    }

    fn step(&mut self) {
        let Some(Reverse((at, _, action))) = self.actions.pop() else {
            return;
        };
        self.now_ms = at;
        match action {
            Action::GoLive(streamer) => self.go_live(streamer, at),
            Action::Heartbeat(stream) => {
                if self.is_live(stream) {
                    self.emit(at, LiveBody::StreamHeartbeat { stream });
                    self.push(at + self.config.heartbeat_ms, Action::Heartbeat(stream));
                }
            }
            Action::End(stream) => self.end_stream(stream, at),
            Action::Browse(user, within_session) => self.browse(user, at, within_session),
            Action::Leave(user, stream) => {
                if self.watching[user as usize] == Some(stream) {
                    self.leave(user, stream, at);
                    self.after_watch(user, at);
                }
            }
            Action::Chat(user, stream) => {
                if self.watching[user as usize] == Some(stream) {
                    self.emit(at, LiveBody::ChatMessage { stream, user });
                    let rate = self.model.users[user as usize].chattiness as f64 / 60_000.0;
                    let next = self.exp_after(at, rate);
                    self.push(next, Action::Chat(user, stream));
                }
            }
            Action::Gift(user, stream) => {
                if self.watching[user as usize] == Some(stream) {
                    let amount = self.gift_amount();
                    self.emit(
                        at,
                        LiveBody::GiftSent {
                            stream,
                            user,
                            amount,
                        },
                    );
                    let rate = self.model.users[user as usize].generosity as f64 / HOUR_MS as f64;
                    let next = self.exp_after(at, rate);
                    self.push(next, Action::Gift(user, stream));
                }
            }
        }
    }

    fn is_live(&self, stream: StreamId) -> bool {
        matches!(&self.live[stream.streamer as usize], Some(live) if live.n == stream.n)
    }

    fn go_live(&mut self, streamer: u32, at: i64) {
        if self.live[streamer as usize].is_some() {
            return;
        }
        let n = self.next_stream[streamer as usize];
        self.next_stream[streamer as usize] += 1;
        let profile = &self.model.streamers[streamer as usize];
        let (category, language, median) = (profile.category, profile.language, profile.length_ms);
        let length = (median as f64 * (0.5 * normal(&mut self.rng)).exp()).max(300_000.0) as i64;
        let vanishes = self.rng.next_f64() < self.config.vanish_rate;
        let stream = StreamId { streamer, n };
        self.live[streamer as usize] = Some(Live {
            n,
            vanishes,
            viewers: Vec::new(),
        });
        self.live_set.insert(streamer, category);
        self.audience.add(streamer as usize, 1);
        self.stats.streams_started += 1;
        self.stats.max_live = self.stats.max_live.max(self.live_set.count);
        self.emit(
            at,
            LiveBody::StreamStarted {
                stream,
                category,
                language,
            },
        );
        self.push(at + self.config.heartbeat_ms, Action::Heartbeat(stream));
        self.push(at + length, Action::End(stream));
    }

    fn end_stream(&mut self, stream: StreamId, at: i64) {
        if !self.is_live(stream) {
            return;
        }
        let viewers = std::mem::take(
            &mut self.live[stream.streamer as usize]
                .as_mut()
                .expect("live")
                .viewers,
        );
        let viewer_count = viewers.len();
        for user in viewers {
            self.watching[user as usize] = None;
            self.emit(at, LiveBody::ViewerLeft { stream, user });
            self.after_watch(user, at);
        }
        let live = self.live[stream.streamer as usize].take().expect("live");
        let category = self.model.streamers[stream.streamer as usize].category;
        self.live_set.remove(stream.streamer, category);
        // The stream's weight: 1 plus one per viewer it had.
        self.audience
            .add(stream.streamer as usize, -(1 + viewer_count as i64));
        if live.vanishes {
            self.stats.streams_vanished += 1;
        } else {
            self.emit(at, LiveBody::StreamEnded { stream });
        }
        self.schedule_go_live(stream.streamer, at);
    }

    /// What a browsing user is shown organically: the live streams of the
    /// streamers they like or watched, some popular ones (sampled by
    /// audience) and some of their favourite category.
    fn consideration_set(&mut self, user: u32) -> Vec<StreamView> {
        let mut shown = std::mem::take(&mut self.scratch);
        shown.clear();
        let add = |generator: &LiveGenerator, shown: &mut Vec<StreamView>, streamer: u32| {
            if let Some(live) = &generator.live[streamer as usize] {
                if shown.iter().all(|v| v.streamer != streamer) {
                    let profile = &generator.model.streamers[streamer as usize];
                    shown.push(StreamView {
                        streamer,
                        category: profile.category,
                        language: profile.language,
                        viewers: live.viewers.len() as u32,
                    });
                }
            }
        };
        let favourite = {
            let taste = &self.model.users[user as usize].taste;
            (0..taste.len())
                .max_by(|a, b| taste[*a].total_cmp(&taste[*b]))
                .unwrap_or(0)
        };
        for i in 0..self.model.users[user as usize].favourites.len() {
            let streamer = self.model.users[user as usize].favourites[i].0;
            add(self, &mut shown, streamer);
        }
        for i in 0..self.watched[user as usize].len().min(30) {
            let streamer = self.watched[user as usize][i];
            add(self, &mut shown, streamer);
        }
        if self.audience.total > 0 {
            for _ in 0..15 {
                let target = self.rng.below(self.audience.total);
                let streamer = self.audience.find(target) as u32;
                add(self, &mut shown, streamer);
            }
        }
        let in_category = self.live_set.by_category[favourite].len() as u64;
        if in_category > 0 {
            for _ in 0..10 {
                let pick =
                    self.live_set.by_category[favourite][self.rng.below(in_category) as usize];
                add(self, &mut shown, pick);
            }
        }
        shown
    }

    fn browse(&mut self, user: u32, at: i64, within_session: bool) {
        if self.watching[user as usize].is_some() {
            if !within_session {
                self.schedule_session(user, at);
            }
            return;
        }
        let shown = self.consideration_set(user);
        let answer = self
            .model
            .respond(user, at, &shown, &self.history, &mut self.rng);
        let joined = answer.map(|join| (shown[join.index].streamer, join));
        self.scratch = shown;
        match joined {
            Some((streamer, join)) => self.join(user, streamer, at, join),
            None => self.schedule_session(user, at),
        }
    }

    fn join(&mut self, user: u32, streamer: u32, at: i64, join: Join) {
        let live = self.live[streamer as usize]
            .as_mut()
            .expect("shown streams are live");
        let stream = StreamId {
            streamer,
            n: live.n,
        };
        live.viewers.push(user);
        self.audience.add(streamer as usize, 1);
        self.watching[user as usize] = Some(stream);
        if self.history.watches(user, streamer) == 0 {
            self.watched[user as usize].push(streamer);
        }
        self.history.record(user, streamer);
        self.stats.joins += 1;
        self.emit(at, LiveBody::ViewerJoined { stream, user });
        self.push(at + join.watch_ms, Action::Leave(user, stream));
        let profile = &self.model.users[user as usize];
        let (chat, gift) = (
            profile.chattiness as f64 / 60_000.0,
            profile.generosity as f64 / HOUR_MS as f64,
        );
        let first_chat = self.exp_after(at, chat);
        self.push(first_chat, Action::Chat(user, stream));
        let first_gift = self.exp_after(at, gift);
        self.push(first_gift, Action::Gift(user, stream));
    }

    fn leave(&mut self, user: u32, stream: StreamId, at: i64) {
        self.watching[user as usize] = None;
        if let Some(live) = self.live[stream.streamer as usize].as_mut() {
            if let Some(i) = live.viewers.iter().position(|v| *v == user) {
                live.viewers.swap_remove(i);
                self.audience.add(stream.streamer as usize, -1);
            }
        }
        self.emit(at, LiveBody::ViewerLeft { stream, user });
        // Users follow streamers they like after watching them for a while.
        let streamer = stream.streamer;
        if !self.follows.contains(&(user, streamer)) {
            let affinity = self.model.users[user as usize]
                .favourites
                .iter()
                .find(|(s, _)| *s == streamer)
                .map_or(0.0, |(_, a)| *a as f64);
            let watches = self.history.watches(user, streamer) as f64;
            let p = 0.01 + 0.08 * affinity + 0.02 * watches.ln_1p();
            if self.rng.next_f64() < p {
                self.follows.insert((user, streamer));
                self.emit(at, LiveBody::Follow { user, streamer });
            }
        }
    }

    /// After a watch ends: look for another stream in the same session, or
    /// end the session.
    fn after_watch(&mut self, user: u32, at: i64) {
        if self.rng.next_f64() < self.config.continue_rate {
            let gap = 5_000 + self.rng.below(55_000) as i64;
            self.push(at + gap, Action::Browse(user, true));
        } else {
            self.schedule_session(user, at);
        }
    }

    fn gift_amount(&mut self) -> u64 {
        let mut u = self.rng.next_f64();
        for (amount, weight) in GIFT_AMOUNTS {
            if u < weight {
                return amount;
            }
            u -= weight;
        }
        GIFT_AMOUNTS[0].0
    }

    /// Appends `event` as one JSON object (no newline): flat envelope,
    /// `event_time` in epoch ms.
    pub fn write_json(&self, event: &LiveEvent, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{{\"event_type\":\"{}\",\"event_id\":\"{}{}\",\"event_time\":{}",
            event.body.event_type(),
            self.prefix,
            event.id,
            event.time_ms
        );
        let stream = |out: &mut Vec<u8>, s: &StreamId| {
            let _ = write!(out, ",\"stream_id\":\"s{}.{}\"", s.streamer, s.n);
        };
        match &event.body {
            LiveBody::StreamStarted {
                stream: s,
                category,
                language,
            } => {
                stream(out, s);
                let _ = write!(
                    out,
                    ",\"streamer_id\":\"b{}\",\"category\":\"{}\",\"language\":\"{}\"",
                    s.streamer, CATEGORIES[*category as usize], LANGUAGES[*language as usize].0
                );
            }
            LiveBody::StreamHeartbeat { stream: s } | LiveBody::StreamEnded { stream: s } => {
                stream(out, s)
            }
            LiveBody::ViewerJoined { stream: s, user }
            | LiveBody::ViewerLeft { stream: s, user }
            | LiveBody::ChatMessage { stream: s, user } => {
                stream(out, s);
                let _ = write!(out, ",\"user_id\":\"u{user}\"");
            }
            LiveBody::GiftSent {
                stream: s,
                user,
                amount,
            } => {
                stream(out, s);
                let _ = write!(out, ",\"user_id\":\"u{user}\",\"amount\":{amount}");
            }
            LiveBody::Follow { user, streamer } => {
                let _ = write!(
                    out,
                    ",\"user_id\":\"u{user}\",\"streamer_id\":\"b{streamer}\""
                );
            }
        }
        out.push(b'}');
    }

    /// Writes the hidden truth as NDJSON: a summary line, one line per
    /// user (language, taste per category, favourite streamers, weights)
    /// and one per streamer (category, language, quality, schedule).
    pub fn write_truth(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let categories = &CATEGORIES[..self.config.categories as usize];
        let summary = serde_json::json!({
            "kind": "summary",
            "seed": self.config.seed,
            "start_ms": self.config.start_ms,
            "duration_ms": self.config.duration_ms,
            "users": self.config.users,
            "streamers": self.config.streamers,
            "categories": categories,
            "utility": "2*taste[category] + (language == user's ? 0.8 : -2.0) + affinity[streamer] + quality[streamer] + repeat_weight*ln(1+past watches) + popularity_weight*ln(1+viewers); outside option: outside - 0.6*diurnal(hour, peak_hour); Gumbel noise (multinomial logit)",
        });
        writeln!(out, "{summary}")?;
        for (i, user) in self.model.users.iter().enumerate() {
            let taste: serde_json::Map<String, serde_json::Value> = categories
                .iter()
                .zip(&user.taste)
                .filter(|(_, w)| **w > 0.0)
                .map(|(c, w)| (c.to_string(), serde_json::json!(round3(*w))))
                .collect();
            let favourites: Vec<serde_json::Value> = user
                .favourites
                .iter()
                .map(|(s, a)| serde_json::json!({"streamer_id": format!("b{s}"), "affinity": round3(*a)}))
                .collect();
            let line = serde_json::json!({
                "kind": "user",
                "user_id": format!("u{i}"),
                "language": LANGUAGES[user.language as usize].0,
                "taste": taste,
                "favourites": favourites,
                "repeat_weight": round3(user.repeat_weight),
                "popularity_weight": round3(user.popularity_weight),
                "outside": round3(user.outside),
                "peak_hour": user.peak_hour,
                "sessions_per_day": round3(user.sessions_per_day),
                "chattiness_per_min": round3(user.chattiness),
                "gifts_per_hour": round3(user.generosity),
            });
            writeln!(out, "{line}")?;
        }
        for (i, streamer) in self.model.streamers.iter().enumerate() {
            let line = serde_json::json!({
                "kind": "streamer",
                "streamer_id": format!("b{i}"),
                "category": CATEGORIES[streamer.category as usize],
                "language": LANGUAGES[streamer.language as usize].0,
                "quality": round3(streamer.quality),
                "streams_per_week": round3(streamer.streams_per_week),
                "peak_hour": streamer.peak_hour,
                "median_length_ms": streamer.length_ms,
            });
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

fn round3(x: f32) -> f64 {
    (x as f64 * 1000.0).round() / 1000.0
}

/// A heavy-tailed positive draw with the given mean (log-normal, σ = 1).
fn heavy(rng: &mut Rng, mean: f64) -> f64 {
    mean * (normal(rng) - 0.5).exp()
}

fn weighted(rng: &mut Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// Draws every streamer's and user's hidden behaviour.
fn build_model(config: &LiveConfig, rng: &mut Rng) -> UserModel {
    let categories = config.categories as usize;
    let language_weights: Vec<f64> = LANGUAGES[..config.languages as usize]
        .iter()
        .map(|(_, w)| *w)
        .collect();
    // Category popularity falls off with rank (Zipf-like, s = 0.8).
    let category_weights: Vec<f64> = (0..categories)
        .map(|k| ((k + 1) as f64).powf(-0.8))
        .collect();
    let streamers: Vec<StreamerProfile> = (0..config.streamers)
        .map(|_| StreamerProfile {
            category: weighted(rng, &category_weights) as u16,
            language: weighted(rng, &language_weights) as u16,
            quality: (0.5 * normal(rng)) as f32,
            streams_per_week: heavy(rng, config.streams_per_week).min(28.0) as f32,
            peak_hour: rng.below(24) as u8,
            length_ms: (config.stream_length_ms as f64 * (0.4 * normal(rng)).exp()) as i64,
        })
        .collect();
    // Favourites are drawn among streamers in proportion to how much they
    // stream and how good they are, so liked streamers are often live.
    let appeal: Vec<f64> = streamers
        .iter()
        .map(|s| s.streams_per_week as f64 * (s.quality as f64).exp())
        .collect();
    let mut cumulative = Vec::with_capacity(appeal.len());
    let mut sum = 0.0;
    for a in &appeal {
        sum += a;
        cumulative.push(sum);
    }
    let users = (0..config.users)
        .map(|_| {
            let language = weighted(rng, &language_weights) as u16;
            let mut taste = vec![0f32; categories];
            let liked = 1 + rng.below(3) as usize;
            for _ in 0..liked {
                let c = weighted(rng, &category_weights);
                taste[c] += (0.5 + rng.next_f64()) as f32;
            }
            let total: f32 = taste.iter().sum();
            taste.iter_mut().for_each(|t| *t /= total);
            let mut favourites: Vec<(u32, f32)> = Vec::new();
            for _ in 0..rng.below(6) {
                let target = rng.next_f64() * sum;
                let streamer = cumulative.partition_point(|c| *c <= target) as u32;
                let streamer = streamer.min(config.streamers - 1);
                if favourites.iter().all(|(s, _)| *s != streamer) {
                    favourites.push((streamer, (1.0 + 1.5 * rng.next_f64()) as f32));
                }
            }
            UserProfile {
                language,
                taste,
                favourites,
                repeat_weight: (0.7 + 0.8 * rng.next_f64()) as f32,
                popularity_weight: (0.1 + 0.3 * rng.next_f64()) as f32,
                outside: (1.5 + normal(rng)) as f32,
                peak_hour: ((18.0 + 3.0 * normal(rng)).rem_euclid(24.0)) as u8,
                sessions_per_day: heavy(rng, config.sessions_per_day).min(48.0) as f32,
                // Most viewers lurk; one in seven chats, about one message
                // every three minutes on average (heavy-tailed).
                chattiness: if rng.next_f64() < 0.15 {
                    (0.3 * heavy(rng, 1.0)) as f32
                } else {
                    0.0
                },
                generosity: if rng.next_f64() < 0.1 {
                    heavy(rng, 0.5) as f32
                } else {
                    0.0
                },
            }
        })
        .collect();
    UserModel {
        users,
        streamers,
        watch_median_ms: config.watch_median_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: LiveConfig) -> (Vec<LiveEvent>, LiveStats) {
        let mut generator = LiveGenerator::new(config).unwrap();
        let mut events = Vec::new();
        while let Some(event) = generator.next_event() {
            events.push(event);
        }
        (events, generator.stats().clone())
    }

    #[test]
    fn fenwick_samples_in_proportion() {
        let mut tree = Fenwick::new(5);
        tree.add(1, 3);
        tree.add(4, 1);
        assert_eq!(tree.total, 4);
        let picks: Vec<usize> = (0..4).map(|t| tree.find(t)).collect();
        assert_eq!(picks, [1, 1, 1, 4]);
        tree.add(1, -3);
        assert_eq!(tree.find(0), 4);
    }

    #[test]
    fn same_seed_same_events_in_time_order() {
        let (a, stats) = run(LiveConfig::default());
        let (b, _) = run(LiveConfig::default());
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        assert!(stats.events > 10_000, "{stats:?}");
        assert!(stats.joins > 1_000, "{stats:?}");
        assert!(stats.streams_vanished > 0, "{stats:?}");
        let (c, _) = run(LiveConfig {
            seed: 2,
            ..LiveConfig::default()
        });
        assert_ne!(a, c);
    }

    #[test]
    fn every_view_happens_while_its_stream_is_live() {
        let (events, _) = run(LiveConfig::default());
        let mut live = HashSet::new();
        let mut ended = HashSet::new();
        let mut watching = std::collections::HashMap::new();
        for event in &events {
            match event.body {
                LiveBody::StreamStarted { stream, .. } => {
                    assert!(live.insert(stream), "{stream:?} started twice");
                }
                LiveBody::StreamHeartbeat { stream } => assert!(live.contains(&stream)),
                LiveBody::StreamEnded { stream } => {
                    assert!(live.remove(&stream));
                    ended.insert(stream);
                }
                LiveBody::ViewerJoined { stream, user } => {
                    assert!(live.contains(&stream), "join of {stream:?}, not live");
                    assert!(
                        watching.insert(user, stream).is_none(),
                        "u{user} watches twice"
                    );
                }
                LiveBody::ViewerLeft { stream, user } => {
                    assert_eq!(watching.remove(&user), Some(stream));
                }
                LiveBody::ChatMessage { stream, user }
                | LiveBody::GiftSent { stream, user, .. } => {
                    assert_eq!(watching.get(&user), Some(&stream));
                }
                LiveBody::Follow { .. } => {}
            }
        }
        assert!(!ended.is_empty());
    }

    /// The share of joins that return to a streamer the user watched
    /// before, over four days of a small platform (comebacks need days).
    fn repeat_share(repeat_weight: Option<f32>) -> f64 {
        let mut generator = LiveGenerator::new(LiveConfig {
            users: 1_000,
            streamers: 150,
            duration_ms: 4 * 24 * HOUR_MS,
            heartbeat_ms: 300_000,
            sessions_per_day: 3.0,
            ..LiveConfig::default()
        })
        .unwrap();
        if let Some(weight) = repeat_weight {
            for user in &mut generator.model.users {
                user.repeat_weight = weight;
            }
        }
        let (mut joins, mut repeats) = (0u64, 0u64);
        let mut seen = HashSet::new();
        while let Some(event) = generator.next_event() {
            if let LiveBody::ViewerJoined { stream, user } = event.body {
                joins += 1;
                if !seen.insert((user, stream.streamer)) {
                    repeats += 1;
                }
            }
        }
        repeats as f64 / joins as f64
    }

    #[test]
    fn users_come_back_to_streamers_they_watched() {
        // Repeat consumption is a large share of joins, and it comes from
        // the users' memory: without it, far fewer joins are comebacks.
        let with = repeat_share(None);
        let without = repeat_share(Some(0.0));
        assert!(with > 0.4, "repeat share {with:.3}");
        assert!(
            with > without + 0.05,
            "with {with:.3}, without {without:.3}"
        );
    }

    #[test]
    fn injected_disorder_and_duplicates_are_bounded() {
        let config = LiveConfig {
            duplicates: 0.05,
            out_of_order: 0.1,
            max_out_of_order_ms: 5_000,
            ..LiveConfig::default()
        };
        let (events, stats) = run(config);
        assert!(stats.duplicates > 0 && stats.out_of_order > 0, "{stats:?}");
        let mut max_seen = 0;
        let mut ids = HashSet::new();
        let mut duplicates = 0;
        for event in &events {
            assert!(event.time_ms >= max_seen - 6_000 - 5_000);
            max_seen = max_seen.max(event.time_ms);
            if !ids.insert(event.id) {
                duplicates += 1;
            }
        }
        assert_eq!(duplicates, stats.duplicates);
    }

    #[test]
    fn json_lines_parse_as_riffle_events() {
        let mut generator = LiveGenerator::new(LiveConfig::default()).unwrap();
        let mut kinds = HashSet::new();
        let mut buf = Vec::new();
        while let Some(event) = generator.next_event() {
            buf.clear();
            generator.write_json(&event, &mut buf);
            let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(value["event_type"], event.body.event_type());
            assert_eq!(value["event_time"], event.time_ms);
            kinds.insert(event.body.event_type());
        }
        for kind in [
            "stream_started",
            "stream_heartbeat",
            "stream_ended",
            "viewer_joined",
            "viewer_left",
            "chat_message",
            "gift_sent",
            "follow",
        ] {
            assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
        }
    }

    #[test]
    fn presets_validate_and_bad_values_name_the_field() {
        for name in PRESETS {
            LiveConfig::preset(name).unwrap().validate().unwrap();
        }
        let error = LiveConfig::preset("huge").unwrap_err();
        assert!(error.to_string().contains("\"huge\""), "{error}");
        let error = LiveConfig {
            vanish_rate: 1.5,
            ..LiveConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.field, "vanish_rate");
        assert!(error.message.contains("1.5"));
    }
}
