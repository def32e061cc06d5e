//! The ad click operator: one instance per input partition of `ad_clicks`.
//! The task of partition `p` owns the ads whose murmur2(`ad_id`) modulo the
//! partition count is `p` — where ingest writes them — so every click of an
//! ad, and every duplicate of a click, is counted by one task.
//!
//! Per click, in input order:
//!
//! 1. decode; a record that is not a valid `ad_click` goes to the late topic
//!    with reason `malformed` / `wrong_type` (never dropped silently);
//! 2. a click of an ad another partition owns (written by a producer that
//!    partitions differently, or without a key) is forwarded unchanged to
//!    that partition's task through the repartition topic
//!    ([`riffle_stream::runtime`], "Repartitioning") and not counted here;
//! 3. dedup by `event_id` over the horizon; duplicates are dropped and
//!    counted — also repeats of a too-late event, so a re-sent batch never
//!    puts an event in the late topic twice;
//! 4. classify its minute window `[m, m + 60 s)` against the task watermark
//!    `W = max event time seen before it − out_of_orderness`: if
//!    `m + 60 s + allowed_lateness ≤ W` it is too late → late topic;
//! 5. count it in (m, ad) for "no filter" and every filter it matches, and
//!    in every configured top-N window `(e − M, e]` containing it
//!    (`e ∈ {m + 1 min, …, m + M min}`): a per-window sum per ad plus an
//!    incrementally maintained top-N (sums only grow within a window, so an
//!    ad outside the top can only enter by beating the last entry — exact).
//!
//! Every tick emits the changed (minute, ad, filter) counts and the changed
//! partial tops as absolute values, then drops state the watermark has moved
//! past the allowed lateness (an event for it would be too late anyway, so
//! eviction timing never changes a result). Everything depends on the input
//! only — not on wall clock or tick timing — which is what makes replay
//! after a crash reproduce the uninterrupted run.
//!
//! # Checkpointed state (format version 2, little-endian)
//!
//! ```text
//! magic "RFAD" | version u32 | max_event_time i64 (i64::MIN = none)
//! late u64 | duplicates u64 | rejected u64
//! slots u16, then per slot its filter id u32
//! popular u16, then per entry (window_minutes u32, filter_id u32)
//! dedup_len u64, dedup snapshot (riffle_stream::dedup format)
//! minutes u32, per minute: minute i64, then per slot: n u32, n × (ad, count u32)
//! per popular entry: windows u32, per window: end i64, n u32, n × (ad, sum u64)
//! ad := len u16, utf-8 bytes
//! ```
//!
//! On restore, slots and popular entries are matched by filter id and
//! (window_minutes, filter_id): state of a filter or window removed from the
//! config is dropped, a new one starts empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::AdsConfig;
use foldhash::fast::RandomState;
use riffle_core::codec::FormatError;
use riffle_core::codec::Reader;
use riffle_core::config::{ConfigError, Section};
use riffle_core::event::{Event, EventBody, ParseLimits};
use riffle_stream::dedup::{DedupConfig, Deduplicator, Verdict};
use riffle_stream::{
    Collector, CounterSpec, Lateness, LatenessPolicy, Operator, OperatorProgress, Sink, SinkRecord,
    SourceBatch, StreamError, Window, MAX_COUNTERS,
};

use crate::filter::FilterSet;
use crate::records::{write_count, write_top};
use crate::store::{rank_cmp, MINUTE_MS};

/// Counts and partial tops: the aggregates topic.
pub const AGGREGATES_SINK: Sink = Sink::named("aggregates");
/// Clicks beyond the allowed lateness and unusable records: the late topic.
pub const LATE_SINK: Sink = Sink::named("late");

/// The operator's counters, in the order [`OperatorProgress::counters`]
/// holds them (the status fields and series the pipeline always had).
const COUNTERS: &[CounterSpec] = &[
    CounterSpec {
        name: "late",
        metric: "riffle_stream_late_total",
        help: "Events beyond the allowed lateness, written to the late topic",
    },
    CounterSpec {
        name: "duplicates",
        metric: "riffle_stream_duplicates_dropped_total",
        help: "Events dropped as duplicates of an event_id already counted",
    },
    CounterSpec {
        name: "rejected",
        metric: "riffle_stream_rejected_total",
        help: "Input records a pipeline could not use (written to the late topic with the reason)",
    },
];

const MAGIC: &[u8; 4] = b"RFAD";
/// 2: window sums became u64.
const STATE_VERSION: u32 = 2;
const NOT_IN_TOP: u32 = u32::MAX;

/// The compiled, validated pipeline settings shared by every task.
#[derive(Debug, Clone)]
pub struct AdsSpec {
    pub pipeline: String,
    pub out_of_orderness_ms: i64,
    pub lateness: LatenessPolicy,
    pub dedup: DedupConfig,
    pub filters: Arc<FilterSet>,
    /// (window_minutes, filter_id) of every maintained top-N.
    pub popular: Vec<(u32, u32)>,
    pub top_n: u32,
}

impl AdsSpec {
    pub fn from_config(config: &AdsConfig) -> Result<AdsSpec, ConfigError> {
        config.validate()?;
        Ok(AdsSpec {
            pipeline: config.pipeline.clone(),
            out_of_orderness_ms: config.out_of_orderness_ms,
            lateness: LatenessPolicy {
                allowed_lateness_ms: config.allowed_lateness_ms,
            },
            // Validated: the horizon covers allowed lateness + one minute
            // window, the oldest click that still counts.
            dedup: DedupConfig {
                horizon_ms: config.dedup_horizon_ms,
                ..DedupConfig::default()
            },
            filters: Arc::new(FilterSet::new(config)?),
            popular: config
                .popular
                .iter()
                .map(|p| (p.window_minutes, p.filter_id))
                .collect(),
            top_n: config.top_n,
        })
    }

    /// The longest top-N window, in ms.
    pub fn max_window_ms(&self) -> i64 {
        self.popular
            .iter()
            .map(|(m, _)| *m as i64 * MINUTE_MS)
            .max()
            .unwrap_or(MINUTE_MS)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    count: u32,
    dirty: bool,
}

/// The counts of one minute: one row per ad holding a cell per filter slot,
/// so a click costs one hash lookup whatever the number of filters.
#[derive(Debug, Default)]
struct MinuteCounts {
    rows: HashMap<u32, u32, RandomState>,
    /// Row → ad.
    ads: Vec<u32>,
    /// Row-major: `cells[row * slots + slot]`.
    cells: Vec<Cell>,
    /// Whether the row is already in the operator's dirty list.
    row_dirty: Vec<bool>,
}

impl MinuteCounts {
    fn row(&mut self, ad: u32, slots: usize) -> usize {
        let next = self.ads.len() as u32;
        let row = *self.rows.entry(ad).or_insert(next) as usize;
        if row == self.ads.len() {
            self.ads.push(ad);
            self.cells.resize(self.cells.len() + slots, Cell::default());
            self.row_dirty.push(false);
        }
        row
    }
}

#[derive(Debug, Clone, Copy)]
struct TopEntry {
    sum: u64,
    /// Index in `TopWindow::top`, or [`NOT_IN_TOP`].
    pos: u32,
}

#[derive(Debug, Default)]
struct TopWindow {
    sums: HashMap<u32, TopEntry, RandomState>,
    /// (sum, ad), best first by [`rank_cmp`].
    top: Vec<(u64, u32)>,
    changed: bool,
}

/// Ad ids interned per task: state refers to ads by `u32`.
#[derive(Debug, Default)]
struct AdDict {
    ids: HashMap<Box<str>, u32, RandomState>,
    names: Vec<Box<str>>,
}

impl AdDict {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }
}

/// `a` ranks before `b`: more clicks, then smaller ad id.
fn better(a: (u64, u32), b: (u64, u32), names: &[Box<str>]) -> bool {
    rank_cmp((a.0, &names[a.1 as usize]), (b.0, &names[b.1 as usize])).is_lt()
}

impl TopWindow {
    /// Adds `by` clicks of `ad` and keeps `top` the exact top `limit`.
    fn bump(&mut self, ad: u32, by: u32, limit: usize, names: &[Box<str>]) {
        let entry = self.sums.entry(ad).or_insert(TopEntry {
            sum: 0,
            pos: NOT_IN_TOP,
        });
        entry.sum += u64::from(by);
        let sum = entry.sum;
        let mut pos = if entry.pos != NOT_IN_TOP {
            let pos = entry.pos as usize;
            self.top[pos].0 = sum;
            pos
        } else if self.top.len() < limit {
            self.top.push((sum, ad));
            entry.pos = (self.top.len() - 1) as u32;
            self.top.len() - 1
        } else if better((sum, ad), *self.top.last().expect("limit >= 1"), names) {
            let last = self.top.len() - 1;
            let evicted = self.top[last].1;
            self.top[last] = (sum, ad);
            entry.pos = last as u32;
            if let Some(e) = self.sums.get_mut(&evicted) {
                e.pos = NOT_IN_TOP;
            }
            last
        } else {
            return;
        };
        self.changed = true;
        while pos > 0 && better(self.top[pos], self.top[pos - 1], names) {
            self.top.swap(pos, pos - 1);
            let moved_down = self.top[pos].1;
            if let Some(e) = self.sums.get_mut(&moved_down) {
                e.pos = pos as u32;
            }
            pos -= 1;
        }
        if let Some(e) = self.sums.get_mut(&ad) {
            e.pos = pos as u32;
        }
    }

    /// Rebuilds `top` from `sums` (after a restore).
    fn rebuild(&mut self, limit: usize, names: &[Box<str>]) {
        let mut all: Vec<(u64, u32)> = self.sums.iter().map(|(ad, e)| (e.sum, *ad)).collect();
        all.sort_by(|a, b| rank_cmp((a.0, &names[a.1 as usize]), (b.0, &names[b.1 as usize])));
        all.truncate(limit);
        for entry in self.sums.values_mut() {
            entry.pos = NOT_IN_TOP;
        }
        for (i, (_, ad)) in all.iter().enumerate() {
            if let Some(e) = self.sums.get_mut(ad) {
                e.pos = i as u32;
            }
        }
        self.top = all;
        self.changed = false;
    }
}

/// The per-partition operator (see the module docs).
pub struct AdClickOperator {
    spec: Arc<AdsSpec>,
    partition: u32,
    name: String,
    dict: AdDict,
    minutes: BTreeMap<i64, MinuteCounts>,
    /// (minute, row) of rows with a changed cell since the last tick.
    dirty: Vec<(i64, u32)>,
    /// Per popular entry: window end → window.
    windows: Vec<BTreeMap<i64, TopWindow>>,
    popular_slots: Vec<usize>,
    dedup: Deduplicator,
    max_event_time: Option<i64>,
    newest_input_ts: i64,
    /// The watermark the last progress record carried (not checkpointed: a
    /// restored task announces its watermark again).
    announced_watermark: Option<i64>,
    late: u64,
    duplicates: u64,
    rejected: u64,
    /// Clicks sent to the task owning their ad (not checkpointed).
    forwarded: u64,
    scratch: Vec<u8>,
}

impl AdClickOperator {
    pub fn new(spec: Arc<AdsSpec>, partition: u32) -> Result<Self, StreamError> {
        let dedup = Deduplicator::new(spec.dedup, spec.lateness.allowed_lateness_ms)?;
        let popular_slots = spec
            .popular
            .iter()
            .map(|(_, filter_id)| {
                spec.filters
                    .slot_of(*filter_id)
                    .ok_or_else(|| StreamError::Operator {
                        operator: "ad_clicks".into(),
                        reason: format!("popular filter_id {filter_id} is not a configured filter"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AdClickOperator {
            name: format!("{}/{partition}", spec.pipeline),
            windows: spec.popular.iter().map(|_| BTreeMap::new()).collect(),
            popular_slots,
            spec,
            partition,
            dict: AdDict::default(),
            minutes: BTreeMap::new(),
            dirty: Vec::new(),
            dedup,
            max_event_time: None,
            newest_input_ts: 0,
            announced_watermark: None,
            late: 0,
            duplicates: 0,
            rejected: 0,
            forwarded: 0,
            scratch: Vec::new(),
        })
    }

    /// Clicks this instance forwarded to the task owning their ad.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// The task watermark: max event time seen − out-of-orderness.
    pub fn watermark(&self) -> Option<i64> {
        self.max_event_time
            .map(|t| t.saturating_sub(self.spec.out_of_orderness_ms))
    }

    fn late_record(
        &self,
        out: &mut Collector<SinkRecord>,
        key: Option<&str>,
        value: Vec<u8>,
        timestamp: i64,
        reason: &'static str,
        detail: String,
    ) {
        let watermark = self.watermark().map(|w| w.to_string()).unwrap_or_default();
        out.collect(SinkRecord {
            sink: LATE_SINK,
            key: key.map(|k| k.as_bytes().to_vec()),
            value,
            timestamp,
            headers: vec![
                ("reason", reason.as_bytes().to_vec()),
                ("detail", detail.into_bytes()),
                ("watermark", watermark.into_bytes()),
            ],
        });
    }

    /// Writes `event` (as JSON) to the late topic with `reason`.
    fn late_event(
        &mut self,
        out: &mut Collector<SinkRecord>,
        event: &Event<'_>,
        key: Option<&str>,
        timestamp: i64,
        reason: &'static str,
        detail: String,
    ) {
        self.scratch.clear();
        event.write_json(&mut self.scratch);
        let value = self.scratch.clone();
        self.late_record(out, key, value, timestamp, reason, detail);
    }

    fn count(&mut self, minute: i64, mask: u64, ad: u32) {
        let slots = self.spec.filters.slots();
        let counts = self.minutes.entry(minute).or_default();
        let row = counts.row(ad, slots);
        let cells = &mut counts.cells[row * slots..(row + 1) * slots];
        let mut bits = mask;
        while bits != 0 {
            let slot = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            cells[slot].count += 1;
            cells[slot].dirty = true;
        }
        if !counts.row_dirty[row] {
            counts.row_dirty[row] = true;
            self.dirty.push((minute, row as u32));
        }
        let limit = self.spec.top_n as usize;
        for (i, &slot) in self.popular_slots.iter().enumerate() {
            if mask & (1 << slot) == 0 {
                continue;
            }
            let minutes = self.spec.popular[i].0 as i64;
            for k in 1..=minutes {
                let end = minute + k * MINUTE_MS;
                self.windows[i]
                    .entry(end)
                    .or_default()
                    .bump(ad, 1, limit, &self.dict.names);
            }
        }
    }

    fn evict(&mut self) {
        let Some(watermark) = self.watermark() else {
            return;
        };
        let lateness = self.spec.lateness.allowed_lateness_ms;
        // A minute m is final once m + 1 min + lateness <= W.
        let first_live_minute = watermark
            .saturating_sub(lateness)
            .saturating_sub(MINUTE_MS)
            .saturating_add(1);
        self.minutes = self.minutes.split_off(&first_live_minute);
        // A window ending at e is final once e + lateness <= W.
        let first_live_end = watermark.saturating_sub(lateness).saturating_add(1);
        for windows in &mut self.windows {
            *windows = windows.split_off(&first_live_end);
        }
    }

    fn encode_state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.max_event_time.unwrap_or(i64::MIN).to_le_bytes());
        for counter in [self.late, self.duplicates, self.rejected] {
            out.extend_from_slice(&counter.to_le_bytes());
        }
        let slots = self.spec.filters.slots();
        out.extend_from_slice(&(slots as u16).to_le_bytes());
        for slot in 0..slots {
            out.extend_from_slice(&self.spec.filters.id_of_slot(slot).to_le_bytes());
        }
        out.extend_from_slice(&(self.spec.popular.len() as u16).to_le_bytes());
        for (minutes, filter_id) in &self.spec.popular {
            out.extend_from_slice(&minutes.to_le_bytes());
            out.extend_from_slice(&filter_id.to_le_bytes());
        }
        let dedup = self.dedup.snapshot();
        out.extend_from_slice(&(dedup.len() as u64).to_le_bytes());
        out.extend_from_slice(&dedup);
        let put_ad = |out: &mut Vec<u8>, ad: u32| {
            let name = self.dict.names[ad as usize].as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
        };
        out.extend_from_slice(&(self.minutes.len() as u32).to_le_bytes());
        for (minute, counts) in &self.minutes {
            out.extend_from_slice(&minute.to_le_bytes());
            for slot in 0..slots {
                let cell = |row: usize| counts.cells[row * slots + slot];
                let n = (0..counts.ads.len()).filter(|&r| cell(r).count > 0).count();
                out.extend_from_slice(&(n as u32).to_le_bytes());
                for (row, ad) in counts.ads.iter().enumerate() {
                    if cell(row).count > 0 {
                        put_ad(&mut out, *ad);
                        out.extend_from_slice(&cell(row).count.to_le_bytes());
                    }
                }
            }
        }
        for windows in &self.windows {
            out.extend_from_slice(&(windows.len() as u32).to_le_bytes());
            for (end, window) in windows {
                out.extend_from_slice(&end.to_le_bytes());
                out.extend_from_slice(&(window.sums.len() as u32).to_le_bytes());
                // By interned ad id (first-seen order), not in hash order
                // (random per process): the same history encodes to the
                // same bytes in every process.
                let mut sums: Vec<(u32, u64)> =
                    window.sums.iter().map(|(ad, e)| (*ad, e.sum)).collect();
                sums.sort_unstable();
                for (ad, sum) in sums {
                    put_ad(&mut out, ad);
                    out.extend_from_slice(&sum.to_le_bytes());
                }
            }
        }
        out
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>("magic")? != *MAGIC {
            return Err("bad magic".into());
        }
        let version = r.u32("version")?;
        if version != STATE_VERSION {
            return Err(format!("unsupported state version {version}").into());
        }
        let max_event_time = r.i64("max_event_time")?;
        self.max_event_time = (max_event_time != i64::MIN).then_some(max_event_time);
        self.late = r.u64("late")?;
        self.duplicates = r.u64("duplicates")?;
        self.rejected = r.u64("rejected")?;
        let stored_slots = r.u16("slots")? as usize;
        let mut slot_map = Vec::with_capacity(stored_slots);
        for _ in 0..stored_slots {
            let filter_id = r.u32("slot filter_id")?;
            slot_map.push(self.spec.filters.slot_of(filter_id));
        }
        let stored_popular = r.u16("popular")? as usize;
        let mut popular_map = Vec::with_capacity(stored_popular);
        for _ in 0..stored_popular {
            let window_minutes = r.u32("popular window_minutes")?;
            let filter_id = r.u32("popular filter_id")?;
            let key = (window_minutes, filter_id);
            popular_map.push(self.spec.popular.iter().position(|p| *p == key));
        }
        let dedup_len = r.u64("dedup_len")?;
        let dedup = r.bytes(dedup_len, "dedup snapshot")?;
        self.dedup = Deduplicator::restore(
            self.spec.dedup,
            self.spec.lateness.allowed_lateness_ms,
            dedup,
        )
        .map_err(|e| e.to_string())?;
        let slots = self.spec.filters.slots();
        let minutes = r.u32("minutes")?;
        for _ in 0..minutes {
            let minute = r.i64("minute")?;
            let mut counts = MinuteCounts::default();
            for target in &slot_map {
                let n = r.u32("minute ads")?;
                for _ in 0..n {
                    let name = r.str_u16("ad id")?;
                    let count = r.u32("count")?;
                    if let Some(slot) = target {
                        let ad = self.dict.intern(name);
                        let row = counts.row(ad, slots);
                        counts.cells[row * slots + slot].count = count;
                    }
                }
            }
            self.minutes.insert(minute, counts);
        }
        let limit = self.spec.top_n as usize;
        for target in &popular_map {
            let windows = r.u32("windows")?;
            for _ in 0..windows {
                let end = r.i64("window end")?;
                let n = r.u32("window ads")?;
                let mut window = TopWindow::default();
                for _ in 0..n {
                    let name = r.str_u16("ad id")?;
                    let sum = r.u64("sum")?;
                    if target.is_some() {
                        let ad = self.dict.intern(name);
                        window.sums.insert(
                            ad,
                            TopEntry {
                                sum,
                                pos: NOT_IN_TOP,
                            },
                        );
                    }
                }
                if let Some(i) = target {
                    window.rebuild(limit, &self.dict.names);
                    self.windows[*i].insert(end, window);
                }
            }
        }
        if !r.is_empty() {
            return Err(format!("{} trailing bytes", r.remaining()).into());
        }
        Ok(())
    }
}

/// Reads one input record: Riffle's binary event encoding (what ingest
/// writes), or an event as a JSON object (what a plain Kafka producer of
/// another stack writes straight to the topic, docs/events.md). The JSON
/// future-skew check compares with the record's own timestamp, not the wall
/// clock, so a replay decides exactly as the first run did.
fn decode_input(value: &[u8], record_timestamp: i64) -> Result<Event<'_>, String> {
    if value.first() == Some(&riffle_core::event::BINARY_FORMAT_V1) {
        return Event::decode(value).map_err(|e| e.to_string());
    }
    riffle_core::event::parse_event(value, &ParseLimits::new(record_timestamp))
        .map_err(|e| format!("not a binary event, and as JSON: {e}"))
}

impl Operator for AdClickOperator {
    type In<'a> = SourceBatch<'a>;
    type Out = SinkRecord;

    fn name(&self) -> &str {
        &self.name
    }

    fn process_batch<'a>(
        &mut self,
        batch: SourceBatch<'a>,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        for record in batch.iter() {
            self.newest_input_ts = self.newest_input_ts.max(record.timestamp);
            let event = match decode_input(record.value, record.timestamp) {
                Ok(event) => event,
                Err(error) => {
                    self.rejected += 1;
                    self.late_record(
                        out,
                        None,
                        record.value.to_vec(),
                        record.timestamp,
                        "malformed",
                        format!("offset {}: {error}", record.offset),
                    );
                    continue;
                }
            };
            let EventBody::AdClick {
                ad_id,
                user_id,
                ip,
                country,
            } = &event.body
            else {
                self.rejected += 1;
                self.late_event(
                    out,
                    &event,
                    None,
                    record.timestamp,
                    "wrong_type",
                    format!(
                        "event_type {:?} is not ad_click",
                        event.event_type().as_str()
                    ),
                );
                continue;
            };
            if batch.forward_to(ad_id.as_bytes()).is_some() {
                self.forwarded += 1;
                out.collect(SinkRecord::forward(&batch, &record, ad_id.as_bytes()));
                continue;
            }
            let time = event.event_time;
            let minute = time.div_euclid(MINUTE_MS) * MINUTE_MS;
            let watermark = self.watermark();
            if let Some(watermark) = watermark {
                self.dedup.evict(watermark);
            }
            // Dedup before lateness: a repeat of an event already seen —
            // counted or already in the late topic — is a duplicate, so a
            // client re-sending a batch after a failure puts nothing in the
            // late topic twice.
            let mut expired = false;
            if let Some(event_id) = &event.event_id {
                match self.dedup.check_and_insert(event_id.as_bytes(), time) {
                    Verdict::New => {}
                    Verdict::Duplicate => {
                        self.duplicates += 1;
                        continue;
                    }
                    // Older than every id held: also too late, as the
                    // horizon covers the lateness + 1 min (routed below).
                    Verdict::Expired => expired = true,
                }
            }
            if let Some(watermark) = watermark {
                let window = Window::new(minute, minute + MINUTE_MS);
                if self.spec.lateness.classify(window, watermark) == Lateness::TooLate {
                    self.late += 1;
                    self.late_event(
                        out,
                        &event,
                        Some(ad_id),
                        record.timestamp,
                        "too_late",
                        format!(
                            "window [{}, {}) ended more than allowed_lateness_ms ({}) before the watermark",
                            window.start, window.end, self.spec.lateness.allowed_lateness_ms
                        ),
                    );
                    continue;
                }
            }
            if expired {
                self.late += 1;
                self.late_event(
                    out,
                    &event,
                    Some(ad_id),
                    record.timestamp,
                    "beyond_dedup_horizon",
                    format!(
                        "event_time {time} is older than the dedup horizon ({} ms) allows",
                        self.spec.dedup.horizon_ms
                    ),
                );
                continue;
            }
            let mask = self.spec.filters.matches(country, ip, user_id);
            let ad = self.dict.intern(ad_id);
            self.count(minute, mask, ad);
            self.max_event_time = Some(self.max_event_time.map_or(time, |max| max.max(time)));
        }
        Ok(())
    }

    fn handle_tick(
        &mut self,
        _now_ms: i64,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<()> {
        let timestamp = self.newest_input_ts;
        if let Some(watermark) = self.watermark() {
            if self.announced_watermark != Some(watermark) {
                self.announced_watermark = Some(watermark);
                let mut value = Vec::with_capacity(48);
                crate::records::write_progress(&mut value, self.partition, watermark);
                out.collect(SinkRecord {
                    sink: AGGREGATES_SINK,
                    key: Some(self.partition.to_string().into_bytes()),
                    value,
                    timestamp,
                    headers: Vec::new(),
                });
            }
        }
        let slots = self.spec.filters.slots();
        for (minute, row) in self.dirty.drain(..) {
            let Some(counts) = self.minutes.get_mut(&minute) else {
                continue;
            };
            let row = row as usize;
            counts.row_dirty[row] = false;
            let name = &self.dict.names[counts.ads[row] as usize];
            for slot in 0..slots {
                let cell = &mut counts.cells[row * slots + slot];
                if !cell.dirty {
                    continue;
                }
                cell.dirty = false;
                let mut value = Vec::with_capacity(96);
                write_count(
                    &mut value,
                    minute,
                    name,
                    self.spec.filters.id_of_slot(slot),
                    cell.count as u64,
                );
                out.collect(SinkRecord {
                    sink: AGGREGATES_SINK,
                    key: Some(name.as_bytes().to_vec()),
                    value,
                    timestamp,
                    headers: Vec::new(),
                });
            }
        }
        for (i, windows) in self.windows.iter_mut().enumerate() {
            let (window_minutes, filter_id) = self.spec.popular[i];
            for (end, window) in windows.iter_mut() {
                if !window.changed {
                    continue;
                }
                window.changed = false;
                let ads: Vec<&str> = window
                    .top
                    .iter()
                    .map(|(_, ad)| &*self.dict.names[*ad as usize])
                    .collect();
                let counts: Vec<u64> = window.top.iter().map(|(sum, _)| *sum).collect();
                let mut value = Vec::with_capacity(64 + ads.len() * 24);
                write_top(
                    &mut value,
                    *end,
                    window_minutes,
                    filter_id,
                    self.partition,
                    self.spec.top_n,
                    &ads,
                    &counts,
                );
                out.collect(SinkRecord {
                    sink: AGGREGATES_SINK,
                    key: Some(format!("top/{window_minutes}/{filter_id}/{end}").into_bytes()),
                    value,
                    timestamp,
                    headers: Vec::new(),
                });
            }
        }
        self.evict();
        Ok(())
    }

    fn counters(&self) -> &'static [CounterSpec] {
        COUNTERS
    }

    fn progress(&self) -> OperatorProgress {
        let mut counters = [0; MAX_COUNTERS];
        counters[..3].copy_from_slice(&[self.late, self.duplicates, self.rejected]);
        OperatorProgress {
            watermark: self.watermark(),
            max_event_time: self.max_event_time,
            counters,
        }
    }

    fn handle_checkpoint(
        &mut self,
        _checkpoint: riffle_stream::CheckpointId,
        out: &mut Collector<SinkRecord>,
    ) -> riffle_stream::Result<Vec<u8>> {
        // The runtime ticks right before a checkpoint; tick again in case a
        // caller did not, so the state never holds unemitted changes (the
        // dirty marks are not part of the snapshot).
        self.handle_tick(0, out)?;
        Ok(self.encode_state())
    }

    fn restore(&mut self, state: &[u8]) -> riffle_stream::Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        self.decode_state(state)
            .map_err(|reason| StreamError::CorruptSnapshot {
                what: "ad click operator",
                reason: reason.to_string(),
            })
    }

    fn on_close(&mut self, out: &mut Collector<SinkRecord>) -> riffle_stream::Result<()> {
        self.handle_tick(0, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] = br#"{"event_type":"ad_click","event_id":"e-1","event_time":1714564800123,"ad_id":"ad-7","user_id":"u-1","ip":"73.162.0.9","country":"USA"}"#;

    #[test]
    fn json_and_binary_inputs_decode_to_the_same_event() {
        let from_json = decode_input(JSON, 1_714_564_800_500).expect("json decodes");
        let mut binary = Vec::new();
        from_json.encode(&mut binary);
        let from_binary = decode_input(&binary, 0).expect("binary decodes");
        assert_eq!(from_binary, from_json);
        assert_eq!(from_json.event_time, 1_714_564_800_123);
        assert!(matches!(&from_json.body, EventBody::AdClick { ad_id, .. } if ad_id == "ad-7"));
    }

    #[test]
    fn json_input_is_judged_against_the_record_timestamp_not_the_clock() {
        // Ten minutes ahead of its record timestamp: rejected, whatever the
        // wall clock says, so a replay rejects it too.
        let error = decode_input(JSON, 1_714_564_800_123 - 600_000).unwrap_err();
        assert!(error.contains("event_time"), "{error}");
        let garbage = decode_input(b"\x07garbage", 0).unwrap_err();
        assert!(garbage.contains("JSON"), "{garbage}");
    }
}
