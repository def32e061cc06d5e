//! Ad click traffic: a deterministic generator of `ad_click` events with
//! injected duplicates, out-of-order and late events, and the exact
//! [`GroundTruth`] a correct pipeline must compute from them.
//!
//! # The stream
//!
//! Events are produced in **emission (arrival) order**. Event `i` (0-based,
//! counting every emitted event, duplicates included) arrives at
//! `arrival(i) = start_ms + floor(i * 1000 / rate)` on the event-time clock;
//! in `riffle simulate ads --realtime` that clock is the wall clock. Each event
//! is an `ad_click` envelope (docs/events.md) with fields `event_type`,
//! `event_id` (`{id_prefix}{sequence}`), `event_time` (epoch ms), `ad_id`
//! (`ad-0000001` is the most popular; Zipf with exponent `zipf_exponent`),
//! `user_id` (`u-1` … `u-{users}`, uniform), `ip` (one of `ips` addresses
//! spread over `ip_ranges`, uniform) and `country` (weighted).
//!
//! # Categories
//!
//! Let `M` be the largest event time among the events emitted *before* this
//! one, `W = M − out_of_orderness_ms` the watermark (as ARCHITECTURE.md defines it:
//! max event time seen − bounded out-of-orderness), `L` the allowed lateness,
//! and a window the tumbling minute `[m, m + 60 s)` containing the time. Each
//! event gets exactly one category:
//!
//! | category | event time `t` | under `riffle_stream::watermark::LatenessPolicy` |
//! |---|---|---|
//! | `OnTime` | `arrival(i)`, so `t ≥ M` (the maximum only grows through these) | on time |
//! | `OutOfOrder` | uniform in `[M − max_out_of_order_ms, M − 1]`, hence `t ≥ W` | on time (window end > `t` ≥ `W`) |
//! | `LateWithin` | uniform in `[W − L + 1, minute_start(W) − 1]`: its window has ended (`end ≤ W`), but `t > W − L` | late within allowed lateness (`end ≤ W < end + L`): counted, updates an emitted result |
//! | `LateBeyond` | uniform in `[W − L − margin − 60 s + 1, W − L − margin]`, `margin = late_beyond_margin_ms ≥ 60 s` | too late (`end + L ≤ t + 60 s + L ≤ W`): **not counted**, goes to the late topic |
//! | `Duplicate` | a copy (same `event_id`, same fields) of one of the last 1024 emitted non-duplicate, counted events whose time is still `> W − L`, or else of the latest on-time event | dropped by dedup |
//!
//! So "late beyond" means: older than `W − L − margin`, which puts its whole
//! minute window at least `margin − 60 s ≥ 0` behind the lateness limit —
//! too late both for a per-event rule (`t + L ≤ W`) and for a per-window rule
//! (`window_end + L ≤ W`). A category is chosen per event with the configured
//! probabilities (`OnTime` takes the rest); no faults are injected before the
//! first event or while `arrival(i) < start_ms + warmup_ms`, so the shares
//! come out slightly below the fractions early in a stream.
//!
//! # Ground truth and its assumption
//!
//! The truth assumes the pipeline sees **one ordered stream**, in emission
//! order, with a watermark that is exactly `W` above. A pipeline reading
//! several partitions takes the minimum of per-partition watermarks, which is
//! never ahead of `W`: out-of-order and late-within events are therefore still
//! counted, and late-beyond events are still too late as long as the
//! partitions' watermarks trail `W` by less than `margin − 60 s` (raise
//! `late_beyond_margin_ms` and set `warmup_ms` so every partition has seen
//! events before the first fault). A per-event rule (`t + L ≤ W`) is the
//! stricter one and holds with the default margin.
//!
//! The counts are exact per (`ad_id`, minute): every distinct `event_id`
//! counted once in the minute of its event time, except late-beyond events.
//! Duplicates never change a count and never repeat a late-beyond event.

mod config;
mod truth;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use config::{
    AdsConfig, ConfigError, CountryWeight, DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_LATE_BEYOND_MARGIN_MS, DEFAULT_OUT_OF_ORDERNESS_MS, DEFAULT_START_MS, MAX_ADS,
    WINDOW_MS,
};
pub use truth::{CategoryCounts, GroundTruth, LateBeyondEvent, TruthError, TruthSummary};

use crate::rng::Rng;
use crate::zipf::Zipf;
use config::{parse_cidr, Cidr};

/// How many recent events a duplicate may repeat.
pub const DUPLICATE_WINDOW: usize = 1024;

/// What kind of arrival an event is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    OnTime,
    OutOfOrder,
    LateWithin,
    LateBeyond,
    Duplicate,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::OnTime,
        Category::OutOfOrder,
        Category::LateWithin,
        Category::LateBeyond,
        Category::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::OnTime => "on_time",
            Category::OutOfOrder => "out_of_order",
            Category::LateWithin => "late_within",
            Category::LateBeyond => "late_beyond",
            Category::Duplicate => "duplicate",
        }
    }
}

/// One generated click, compact (no strings); render it with
/// [`AdsGenerator::write_json`] or the id helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdClick {
    /// The event id's sequence number (the id is `{id_prefix}{seq}`);
    /// a duplicate has the sequence number of its original.
    pub seq: u64,
    pub event_time_ms: i64,
    /// Ad rank, 1-based: the id is `ad-{ad:07}`.
    pub ad: u32,
    /// User number, 1-based: the id is `u-{user}`.
    pub user: u32,
    pub ip: Ipv4Addr,
    /// Index into the configured countries.
    pub country: u16,
    pub category: Category,
}

/// `ad-0000042` for rank 42.
pub fn ad_id(rank: u32) -> String {
    format!("ad-{rank:07}")
}

/// Start of the minute containing `t` (epoch ms).
pub fn minute_start(t: i64) -> i64 {
    t - t.rem_euclid(WINDOW_MS)
}

/// Multiply-xor hasher for the truth map (keys are small integers).
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

#[derive(Default)]
struct TruthState {
    counts: HashMap<(u32, i64), u64, BuildHasherDefault<FastHasher>>,
    late_beyond: Vec<AdClick>,
}

/// The generator: an iterator of [`AdClick`]s in emission order.
pub struct AdsGenerator {
    config: AdsConfig,
    prefix: String,
    rng: Rng,
    zipf: Zipf,
    country_cumulative: Vec<u64>,
    country_total: u64,
    /// Per range: (first address index of its block, block size, range).
    ip_blocks: Vec<(u64, u64, Cidr)>,
    /// Cumulative fault thresholds: duplicate, out-of-order, late within, late beyond.
    thresholds: [f64; 4],
    emitted: u64,
    next_seq: u64,
    max_time: Option<i64>,
    min_time: Option<i64>,
    recent: Vec<AdClick>,
    recent_pos: usize,
    last_on_time: Option<AdClick>,
    by_category: CategoryCounts,
    truth: Option<TruthState>,
}

impl AdsGenerator {
    /// Validates the config and builds the tables (the Zipf table of 2M ads
    /// takes some tens of milliseconds). Ground truth is tracked; see
    /// [`AdsGenerator::track_truth`].
    pub fn new(config: AdsConfig) -> Result<AdsGenerator, ConfigError> {
        config.validate()?;
        let zipf = Zipf::new(config.ads, config.zipf_exponent);
        let mut cumulative = Vec::with_capacity(config.countries.len());
        let mut total = 0u64;
        for c in &config.countries {
            total += c.weight as u64;
            cumulative.push(total);
        }
        let ranges: Vec<Cidr> = config
            .ip_ranges
            .iter()
            .map(|r| parse_cidr(r).expect("validated"))
            .collect();
        let ip_blocks = ip_blocks(&ranges, config.ips as u64);
        let d = config.duplicate_fraction;
        let o = d + config.out_of_order_fraction;
        let w = o + config.late_within_fraction;
        let b = w + config.late_beyond_fraction;
        Ok(AdsGenerator {
            prefix: config.effective_id_prefix(),
            rng: Rng::new(config.seed),
            zipf,
            country_cumulative: cumulative,
            country_total: total,
            ip_blocks,
            thresholds: [d, o, w, b],
            emitted: 0,
            next_seq: 0,
            max_time: None,
            min_time: None,
            recent: Vec::with_capacity(DUPLICATE_WINDOW),
            recent_pos: 0,
            last_on_time: None,
            by_category: CategoryCounts::default(),
            truth: Some(TruthState::default()),
            config,
        })
    }

    /// Turns ground-truth tracking on or off (off saves memory on long,
    /// unbounded streams; [`AdsGenerator::truth`] then returns `None`).
    /// Turning it off drops what was tracked.
    pub fn track_truth(&mut self, on: bool) {
        match (on, self.truth.is_some()) {
            (true, false) => self.truth = Some(TruthState::default()),
            (false, true) => self.truth = None,
            _ => {}
        }
    }

    pub fn config(&self) -> &AdsConfig {
        &self.config
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    pub fn by_category(&self) -> CategoryCounts {
        self.by_category
    }

    /// Largest event time emitted so far (`M`).
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_time
    }

    /// Smallest event time emitted so far (late events included).
    pub fn min_event_time(&self) -> Option<i64> {
        self.min_time
    }

    /// `M − out_of_orderness_ms`.
    pub fn watermark(&self) -> Option<i64> {
        self.max_time.map(|m| m - self.config.out_of_orderness_ms)
    }

    /// Arrival time of the next event on the event-time clock, or `None`
    /// when the stream is finished.
    pub fn next_arrival_ms(&self) -> Option<i64> {
        if let Some(count) = self.config.count {
            if self.emitted >= count {
                return None;
            }
        }
        let t = self.arrival(self.emitted);
        if let Some(d) = self.config.duration_ms {
            if (t - self.config.start_ms) as i128 >= d as i128 {
                return None;
            }
        }
        Some(t)
    }

    fn arrival(&self, i: u64) -> i64 {
        self.config.start_ms + ((i as f64) * 1000.0 / self.config.rate).floor() as i64
    }

    /// The event id of an event.
    pub fn event_id(&self, event: &AdClick) -> String {
        format!("{}{}", self.prefix, event.seq)
    }

    pub fn country(&self, event: &AdClick) -> &str {
        &self.config.countries[event.country as usize].code
    }

    /// Appends the event's JSON envelope (no newline).
    pub fn write_json(&self, event: &AdClick, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event_type\":\"ad_click\",\"event_id\":\"");
        out.extend_from_slice(self.prefix.as_bytes());
        push_u64(out, event.seq);
        out.extend_from_slice(b"\",\"event_time\":");
        push_u64(out, event.event_time_ms as u64);
        out.extend_from_slice(b",\"ad_id\":\"ad-");
        push_padded7(out, event.ad);
        out.extend_from_slice(b"\",\"user_id\":\"u-");
        push_u64(out, event.user as u64);
        out.extend_from_slice(b"\",\"ip\":\"");
        let [a, b, c, d] = event.ip.octets();
        push_u64(out, a as u64);
        out.push(b'.');
        push_u64(out, b as u64);
        out.push(b'.');
        push_u64(out, c as u64);
        out.push(b'.');
        push_u64(out, d as u64);
        out.extend_from_slice(b"\",\"country\":\"");
        out.extend_from_slice(self.country(event).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// The event as a JSON string.
    pub fn to_json(&self, event: &AdClick) -> String {
        let mut out = Vec::with_capacity(160);
        self.write_json(event, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    /// The ground truth of everything emitted so far (`None` when tracking
    /// is off).
    pub fn truth(&self) -> Option<GroundTruth> {
        let state = self.truth.as_ref()?;
        let counts = state
            .counts
            .iter()
            .map(|(&(ad, minute), &count)| ((ad_id(ad), minute), count))
            .collect();
        let late_beyond = state
            .late_beyond
            .iter()
            .map(|e| LateBeyondEvent {
                event_id: self.event_id(e),
                ad_id: ad_id(e.ad),
                event_time: e.event_time_ms,
            })
            .collect();
        let c = self.by_category;
        Some(GroundTruth {
            summary: TruthSummary {
                seed: self.config.seed,
                window_ms: WINDOW_MS,
                out_of_orderness_ms: self.config.out_of_orderness_ms,
                allowed_lateness_ms: self.config.allowed_lateness_ms,
                late_beyond_margin_ms: self.config.late_beyond_margin_ms,
                events: c.total(),
                by_category: c,
                unique_events: c.total() - c.duplicate,
                counted_events: c.total() - c.duplicate - c.late_beyond,
                min_event_time_ms: self.min_time,
                max_event_time_ms: self.max_time,
            },
            counts,
            late_beyond,
        })
    }

    fn draw_category(&mut self, arrival: i64) -> Category {
        if self.max_time.is_none() || arrival < self.config.start_ms + self.config.warmup_ms {
            return Category::OnTime;
        }
        let u = self.rng.next_f64();
        let [d, o, w, b] = self.thresholds;
        if u < d {
            Category::Duplicate
        } else if u < o {
            Category::OutOfOrder
        } else if u < w {
            Category::LateWithin
        } else if u < b {
            Category::LateBeyond
        } else {
            Category::OnTime
        }
    }

    fn fresh(&mut self, event_time_ms: i64, category: Category) -> AdClick {
        let ad = self.zipf.sample(&mut self.rng) + 1;
        let user = self.rng.below(self.config.users as u64) as u32 + 1;
        let k = self.rng.below(self.config.ips as u64);
        let block = self.ip_blocks.partition_point(|b| b.0 + b.1 <= k);
        let (first, _, range) = self.ip_blocks[block];
        // An odd multiplier permutes the (power-of-two sized) range, so the
        // addresses spread over it instead of clustering at its start.
        let offset = ((k - first).wrapping_mul(0x9E37_79B1)) & (range.size - 1);
        let ip = Ipv4Addr::from(range.base.wrapping_add(offset as u32));
        let r = self.rng.below(self.country_total);
        let country = self.country_cumulative.partition_point(|&c| c <= r) as u16;
        let seq = self.next_seq;
        self.next_seq += 1;
        AdClick {
            seq,
            event_time_ms,
            ad,
            user,
            ip,
            country,
            category,
        }
    }

    fn remember(&mut self, event: AdClick) {
        if self.recent.len() < DUPLICATE_WINDOW {
            self.recent.push(event);
        } else {
            self.recent[self.recent_pos] = event;
            self.recent_pos = (self.recent_pos + 1) % DUPLICATE_WINDOW;
        }
    }

    /// The next event in emission order, or `None` at the end of the stream.
    pub fn next_event(&mut self) -> Option<AdClick> {
        let arrival = self.next_arrival_ms()?;
        self.emitted += 1;
        let category = self.draw_category(arrival);
        let l = self.config.allowed_lateness_ms;
        let event = match category {
            Category::OnTime => self.fresh(arrival, category),
            Category::Duplicate => {
                let w = self.watermark().expect("faults only after the first event");
                let pick = self.rng.below(self.recent.len() as u64) as usize;
                let original = if self.recent[pick].event_time_ms > w - l {
                    self.recent[pick]
                } else {
                    self.last_on_time
                        .expect("faults only after an on-time event")
                };
                AdClick {
                    category: Category::Duplicate,
                    ..original
                }
            }
            Category::OutOfOrder => {
                let m = self.max_time.expect("faults only after the first event");
                let t = self
                    .rng
                    .range_inclusive(m - self.config.max_out_of_order_ms, m - 1);
                self.fresh(t, category)
            }
            Category::LateWithin => {
                let w = self.watermark().expect("faults only after the first event");
                let t = self.rng.range_inclusive(w - l + 1, minute_start(w) - 1);
                self.fresh(t, category)
            }
            Category::LateBeyond => {
                let w = self.watermark().expect("faults only after the first event");
                let hi = w - l - self.config.late_beyond_margin_ms;
                let t = self.rng.range_inclusive(hi - WINDOW_MS + 1, hi);
                self.fresh(t, category)
            }
        };
        self.by_category.add(category);
        self.min_time = Some(
            self.min_time
                .map_or(event.event_time_ms, |m| m.min(event.event_time_ms)),
        );
        if category == Category::OnTime {
            self.max_time = Some(event.event_time_ms);
            self.last_on_time = Some(event);
        }
        match category {
            Category::Duplicate => {}
            Category::LateBeyond => {
                if let Some(truth) = &mut self.truth {
                    truth.late_beyond.push(event);
                }
            }
            _ => {
                self.remember(event);
                if let Some(truth) = &mut self.truth {
                    *truth
                        .counts
                        .entry((event.ad, minute_start(event.event_time_ms)))
                        .or_insert(0) += 1;
                }
            }
        }
        Some(event)
    }
}

impl Iterator for AdsGenerator {
    type Item = AdClick;

    fn next(&mut self) -> Option<AdClick> {
        self.next_event()
    }
}

/// Splits `ips` addresses over the ranges as evenly as their sizes allow
/// (water-filling, smallest range first); returns each range's block of
/// address indexes, in the configured order.
fn ip_blocks(ranges: &[Cidr], ips: u64) -> Vec<(u64, u64, Cidr)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].size);
    let mut share = vec![0u64; ranges.len()];
    let mut remaining = ips;
    for (done, &i) in order.iter().enumerate() {
        let left = (ranges.len() - done) as u64;
        share[i] = ranges[i].size.min(remaining.div_ceil(left));
        remaining -= share[i];
    }
    debug_assert_eq!(remaining, 0, "validated: ips <= addresses in the ranges");
    let mut first = 0;
    ranges
        .iter()
        .zip(share)
        .map(|(range, size)| {
            let block = (first, size, *range);
            first += size;
            block
        })
        .collect()
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_padded7(out: &mut Vec<u8>, n: u32) {
    if n >= 10_000_000 {
        push_u64(out, n as u64);
        return;
    }
    let mut buf = [b'0'; 7];
    let mut n = n;
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf);
}
