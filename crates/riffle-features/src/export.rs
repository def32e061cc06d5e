//! Point-in-time training examples: the log replayed through the same
//! [`FeatureEngine`] the pipeline runs, one example per label event with
//! every feature as of that instant and a label that looks forward.
//!
//! A label event is an organic `viewer_joined` (user `u` joins stream `s`
//! at `t`). Its features are those of the stream, its streamer, the user,
//! the (user, streamer) pair and the context, computed from exactly the
//! events ordered before it by `(event time, event id)` — so the join never
//! counts itself as a viewer, and nothing after it leaks in. Its label is
//! whether `u` stayed on `s` at least `min_watch_ms` (the matching
//! `viewer_left`, looked up forward). An example whose outcome the history
//! does not reach (no `viewer_left` and the history ends within
//! `min_watch_ms`) is censored, not guessed.
//!
//! Events must be pushed in `(event time, event id)` order, duplicates
//! included or not (the engine drops them).

use std::collections::HashMap;
use std::sync::Arc;

use riffle_core::event::Event;

use crate::definition::{Entity, FeatureSet};
use crate::engine::{pair_id, Fact, FeatureEngine, Kind};
use crate::store::EntityKind;
use crate::value::Value;

/// What makes an example positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelSpec {
    /// A join is positive when the viewer stays at least this long.
    pub min_watch_ms: i64,
}

impl Default for LabelSpec {
    fn default() -> Self {
        LabelSpec {
            min_watch_ms: 60_000,
        }
    }
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub time_ms: i64,
    pub event_id: String,
    pub user_id: String,
    pub stream_id: String,
    /// `None` when the stream's start is not in the history.
    pub streamer_id: Option<String>,
    pub label: bool,
    /// How long the viewer stayed (`None`: still watching when the history
    /// ended, past `min_watch_ms`).
    pub watch_ms: Option<i64>,
    /// Values in [`Exporter::columns`] order.
    pub features: Vec<Value>,
}

/// The replay; see the module docs.
pub struct Exporter {
    engine: FeatureEngine,
    spec: LabelSpec,
    columns: Vec<String>,
    /// Examples waiting for their viewer's `viewer_left`, by (user, stream).
    open: HashMap<(Arc<str>, Arc<str>), Example>,
    done: Vec<Example>,
    /// The stream → streamer map the engine's enricher learned.
    streamers: HashMap<Arc<str>, Arc<str>>,
    last: (i64, u64),
    /// Events pushed out of `(time, id)` order (refused).
    pub out_of_order: u64,
    pub censored: u64,
}

impl Exporter {
    pub fn new(set: &FeatureSet, spec: LabelSpec) -> Exporter {
        let mut columns = Vec::new();
        for entity in [
            Entity::Stored(EntityKind::Stream),
            Entity::Stored(EntityKind::Streamer),
            Entity::Stored(EntityKind::User),
            Entity::Stored(EntityKind::UserStreamer),
            Entity::Context,
        ] {
            columns.extend(set.of(entity).map(|f| f.name.clone()));
        }
        Exporter {
            engine: FeatureEngine::new(set),
            spec,
            columns,
            open: HashMap::new(),
            done: Vec::new(),
            streamers: HashMap::new(),
            last: (i64::MIN, 0),
            out_of_order: 0,
            censored: 0,
        }
    }

    /// The feature columns of every example, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Applies one event (in `(time, id)` order); a label event first
    /// yields its example.
    pub fn push(&mut self, event: &Event<'_>) {
        let Some(fact) = Fact::from_event(event) else {
            return;
        };
        let order = (fact.time_ms, fact.id);
        if order < self.last {
            self.out_of_order += 1;
            return;
        }
        if order == self.last {
            // A duplicate (same event id), adjacent in this order.
            return;
        }
        self.last = order;
        match fact.kind {
            Kind::StreamStarted => {
                if let (Some(stream), Some(streamer)) = (&fact.stream_id, &fact.streamer_id) {
                    self.streamers
                        .entry(stream.clone())
                        .or_insert_with(|| streamer.clone());
                }
            }
            Kind::ViewerJoined => self.label_event(&fact, event.event_id.as_deref()),
            Kind::ViewerLeft => self.resolve(&fact),
            _ => {}
        }
        self.engine.apply_fact(fact);
    }

    fn label_event(&mut self, fact: &Fact, event_id: Option<&str>) {
        let (Some(user), Some(stream)) = (&fact.user_id, &fact.stream_id) else {
            return;
        };
        if self.open.contains_key(&(user.clone(), stream.clone())) {
            // A second join while the first is open (or a duplicate): the
            // session continues, no new example.
            return;
        }
        let streamer = self.streamers.get(stream).cloned();
        let t = fact.time_ms;
        let states = &self.engine.states;
        let mut features = Vec::with_capacity(self.columns.len());
        let mut read = |kind: EntityKind, id: Option<&str>| {
            let count = states.names(kind).count();
            match id.and_then(|id| states.read(kind, id, t)) {
                Some((_, values)) => features.extend(values),
                None => features.extend(std::iter::repeat_n(Value::Null, count)),
            }
        };
        read(EntityKind::Stream, Some(stream));
        read(EntityKind::Streamer, streamer.as_deref());
        read(EntityKind::User, Some(user));
        let pair = streamer.as_deref().map(|s| pair_id(user, s));
        read(EntityKind::UserStreamer, pair.as_deref());
        features.extend(states.context(t).into_iter().map(|(_, v)| v));
        let example = Example {
            time_ms: t,
            event_id: event_id.unwrap_or_default().to_owned(),
            user_id: user.to_string(),
            stream_id: stream.to_string(),
            streamer_id: streamer.map(|s| s.to_string()),
            label: false,
            watch_ms: None,
            features,
        };
        self.open.insert((user.clone(), stream.clone()), example);
    }

    fn resolve(&mut self, fact: &Fact) {
        let (Some(user), Some(stream)) = (&fact.user_id, &fact.stream_id) else {
            return;
        };
        if let Some(mut example) = self.open.remove(&(user.clone(), stream.clone())) {
            let watched = fact.time_ms - example.time_ms;
            example.watch_ms = Some(watched);
            example.label = watched >= self.spec.min_watch_ms;
            self.done.push(example);
        }
    }

    /// Examples resolved so far, in label order; drains them.
    pub fn take_ready(&mut self) -> Vec<Example> {
        std::mem::take(&mut self.done)
    }

    /// Ends the replay at `end_ms` (the history's last instant): viewers
    /// still watching are positive if they have watched `min_watch_ms` by
    /// then, else censored. Returns the remaining examples in label order.
    pub fn finish(mut self, end_ms: i64) -> (Vec<Example>, u64) {
        let mut rest = self.take_ready();
        let mut open: Vec<Example> = self.open.into_values().collect();
        open.sort_by(|a, b| (a.time_ms, &a.event_id).cmp(&(b.time_ms, &b.event_id)));
        for mut example in open {
            if end_ms - example.time_ms >= self.spec.min_watch_ms {
                example.label = true;
                rest.push(example);
            } else {
                self.censored += 1;
            }
        }
        rest.sort_by(|a, b| (a.time_ms, &a.event_id).cmp(&(b.time_ms, &b.event_id)));
        (rest, self.censored)
    }
}
