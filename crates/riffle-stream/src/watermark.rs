//! Watermarks and lateness, as ARCHITECTURE.md ("The ad click pipeline") and docs/api.md define them.
//!
//! A watermark `w` asserts that every event with `event_time < w` has
//! arrived: a window `[start, end)` is complete once `w >= end`, and an event
//! for a window that is already complete is late.
//!
//! Per input partition the watermark is `max event time seen −
//! out_of_orderness` (bounded out-of-orderness). The tracker's watermark is
//! the minimum over the partitions that are *active*; a partition is idle
//! when no event has been observed on it for `idle_timeout_ms` of wall-clock
//! time (read from an injected [`Clock`]), and idle partitions are excluded
//! so that one quiet partition cannot stall every window. When all partitions
//! are idle the stream is live and caught up, and the watermark follows the
//! wall clock, `now − out_of_orderness`. The watermark never goes backwards:
//! a partition that wakes up is included again, but its events that are now
//! behind the watermark are late rather than pulling the watermark back.
//!
//! A partition that has not delivered any event yet counts as active from the
//! moment it is registered and holds the watermark at `i64::MIN` until it
//! either delivers an event or times out, so that startup does not declare the
//! backlog of a slow partition late.

use std::collections::BTreeMap;

use riffle_core::time::Clock;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StreamError};
use crate::time::Window;

/// The seed's example: events up to 15 s out of order are on time.
pub const DEFAULT_OUT_OF_ORDERNESS_MS: i64 = 15_000;
/// Twice the out-of-orderness: long enough that a partition between two
/// bursts of a healthy producer is not dropped from the minimum, short enough
/// that a dead partition delays per-minute results by well under a window.
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 30_000;
/// Late events up to 5 min behind the watermark update emitted results.
pub const DEFAULT_ALLOWED_LATENESS_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    pub out_of_orderness_ms: i64,
    pub idle_timeout_ms: i64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: DEFAULT_OUT_OF_ORDERNESS_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
        }
    }
}

impl WatermarkConfig {
    pub fn validate(&self) -> Result<()> {
        if self.out_of_orderness_ms < 0 {
            return Err(StreamError::invalid(
                "watermark.out_of_orderness_ms",
                self.out_of_orderness_ms,
                "must not be negative",
            ));
        }
        if self.idle_timeout_ms <= 0 {
            return Err(StreamError::invalid(
                "watermark.idle_timeout_ms",
                self.idle_timeout_ms,
                "must be positive",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionState {
    max_event_time: Option<i64>,
    /// Wall-clock time of the last observed event, or of registration.
    last_active_ms: i64,
}

/// Tracks the watermark of one task over the input partitions it reads.
#[derive(Debug)]
pub struct WatermarkTracker<C: Clock> {
    config: WatermarkConfig,
    clock: C,
    partitions: BTreeMap<u32, PartitionState>,
    watermark: i64,
}

impl<C: Clock> WatermarkTracker<C> {
    /// A tracker over `partitions`, which all start active and empty. The
    /// watermark starts at `i64::MIN`.
    pub fn new(
        config: WatermarkConfig,
        clock: C,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<Self> {
        config.validate()?;
        let mut tracker = Self {
            config,
            clock,
            partitions: BTreeMap::new(),
            watermark: i64::MIN,
        };
        for partition in partitions {
            tracker.add_partition(partition);
        }
        Ok(tracker)
    }

    pub fn config(&self) -> WatermarkConfig {
        self.config
    }

    /// Starts tracking a partition (e.g. after a rebalance). No effect if it
    /// is already tracked.
    pub fn add_partition(&mut self, partition: u32) {
        let now = self.clock.now_ms();
        self.partitions.entry(partition).or_insert(PartitionState {
            max_event_time: None,
            last_active_ms: now,
        });
    }

    /// Stops tracking a partition. The watermark keeps its value.
    pub fn remove_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    /// Records an event on `partition` (registering the partition if it is
    /// new) and marks the partition active. Calling it once per batch with the
    /// batch's largest event time is equivalent to calling it per event.
    pub fn observe(&mut self, partition: u32, event_time: i64) {
        let now = self.clock.now_ms();
        let state = self.partitions.entry(partition).or_insert(PartitionState {
            max_event_time: None,
            last_active_ms: now,
        });
        state.max_event_time = Some(
            state
                .max_event_time
                .map_or(event_time, |m| m.max(event_time)),
        );
        state.last_active_ms = state.last_active_ms.max(now);
    }

    /// Whether `partition` is currently excluded from the minimum. Unknown
    /// partitions are reported as idle.
    pub fn is_idle(&self, partition: u32) -> bool {
        let now = self.clock.now_ms();
        self.partitions
            .get(&partition)
            .is_none_or(|state| self.state_is_idle(state, now))
    }

    fn state_is_idle(&self, state: &PartitionState, now: i64) -> bool {
        now.saturating_sub(state.last_active_ms) >= self.config.idle_timeout_ms
    }

    /// Recomputes the watermark at the clock's current time and returns it.
    /// Never smaller than any value returned before.
    pub fn current(&mut self) -> i64 {
        let now = self.clock.now_ms();
        let ooo = self.config.out_of_orderness_ms;
        let active_min = self
            .partitions
            .values()
            .filter(|state| !self.state_is_idle(state, now))
            .map(|state| {
                state
                    .max_event_time
                    .map_or(i64::MIN, |max| max.saturating_sub(ooo))
            })
            .min();
        let candidate = active_min.unwrap_or_else(|| now.saturating_sub(ooo));
        self.watermark = self.watermark.max(candidate);
        self.watermark
    }

    /// The watermark as last computed by [`Self::current`], without
    /// consulting the clock.
    pub fn last(&self) -> i64 {
        self.watermark
    }

    /// The state to store in a checkpoint. Wall-clock activity is not part of
    /// it: it means nothing after a restart.
    pub fn snapshot(&self) -> WatermarkSnapshot {
        WatermarkSnapshot {
            watermark: self.watermark,
            partitions: self
                .partitions
                .iter()
                .map(|(&partition, state)| PartitionSnapshot {
                    partition,
                    max_event_time: state.max_event_time,
                })
                .collect(),
        }
    }

    /// Restores checkpointed state into a tracker built for the current
    /// partition assignment: the watermark becomes the larger of both, and
    /// each tracked partition takes back its largest event time. Partitions in
    /// the snapshot that this tracker does not read are ignored (another task
    /// owns them now); every partition restarts its idle timeout from now, so
    /// the watermark only moves once each one has delivered or timed out.
    pub fn restore(&mut self, snapshot: &WatermarkSnapshot) {
        let now = self.clock.now_ms();
        self.watermark = self.watermark.max(snapshot.watermark);
        for saved in &snapshot.partitions {
            let Some(state) = self.partitions.get_mut(&saved.partition) else {
                continue;
            };
            state.max_event_time = match (state.max_event_time, saved.max_event_time) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            state.last_active_ms = now;
        }
    }
}

/// Checkpointed form of a [`WatermarkTracker`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSnapshot {
    pub watermark: i64,
    pub partitions: Vec<PartitionSnapshot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSnapshot {
    pub partition: u32,
    pub max_event_time: Option<i64>,
}

/// Where an event stands relative to the watermark, for one window it
/// belongs to. An event of a hopping window is classified per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lateness {
    /// The window is still open (`end > watermark`).
    OnTime,
    /// The window's result was emitted, but the event is within the allowed
    /// lateness: it updates the result (an upsert downstream).
    LateWithinAllowed,
    /// The window's state is gone; the event goes to `<pipeline>.late` with
    /// the reason and is counted — never dropped silently.
    TooLate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatenessPolicy {
    pub allowed_lateness_ms: i64,
}

impl Default for LatenessPolicy {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: DEFAULT_ALLOWED_LATENESS_MS,
        }
    }
}

impl LatenessPolicy {
    pub fn validate(&self) -> Result<()> {
        if self.allowed_lateness_ms < 0 {
            return Err(StreamError::invalid(
                "allowed_lateness_ms",
                self.allowed_lateness_ms,
                "must not be negative",
            ));
        }
        Ok(())
    }

    /// Classifies an event of `window` under `watermark`.
    pub fn classify(&self, window: Window, watermark: i64) -> Lateness {
        if window.end > watermark {
            return Lateness::OnTime;
        }
        if self.retain_until(window) > watermark {
            return Lateness::LateWithinAllowed;
        }
        Lateness::TooLate
    }

    /// The watermark at which `window`'s state may be dropped: from then on
    /// every event for it is [`Lateness::TooLate`].
    pub fn retain_until(&self, window: Window) -> i64 {
        window.end.saturating_add(self.allowed_lateness_ms)
    }
}

#[cfg(test)]
mod tests {
    use riffle_core::time::ManualClock;

    use super::*;

    fn tracker(clock: &ManualClock, partitions: &[u32]) -> WatermarkTracker<ManualClock> {
        WatermarkTracker::new(
            WatermarkConfig {
                out_of_orderness_ms: 100,
                idle_timeout_ms: 1_000,
            },
            clock.clone(),
            partitions.iter().copied(),
        )
        .unwrap()
    }

    #[test]
    fn minimum_over_partitions_and_idle_exclusion() {
        let clock = ManualClock::new(0);
        let mut wm = tracker(&clock, &[0, 1]);
        wm.observe(0, 5_000);
        // Partition 1 has not delivered yet and holds the watermark.
        assert_eq!(wm.current(), i64::MIN);
        wm.observe(1, 3_000);
        assert_eq!(wm.current(), 2_900);
        clock.advance(999);
        wm.observe(0, 6_000);
        assert_eq!(wm.current(), 2_900);
        clock.advance(1);
        // Partition 1 is idle now; partition 0 alone decides.
        assert!(wm.is_idle(1));
        assert_eq!(wm.current(), 5_900);
        // Partition 1 wakes up behind the watermark: no step back.
        wm.observe(1, 3_500);
        assert!(!wm.is_idle(1));
        assert_eq!(wm.current(), 5_900);
        wm.observe(1, 7_000);
        assert_eq!(wm.current(), 5_900);
        wm.observe(0, 9_000);
        assert_eq!(wm.current(), 6_900);
    }

    #[test]
    fn all_idle_follows_the_wall_clock() {
        let clock = ManualClock::new(50_000);
        let mut wm = tracker(&clock, &[0]);
        wm.observe(0, 10_000);
        assert_eq!(wm.current(), 9_900);
        clock.advance(1_000);
        assert_eq!(wm.current(), 50_900);
        // Going active with older events does not move it back.
        wm.observe(0, 20_000);
        assert_eq!(wm.current(), 50_900);
    }

    #[test]
    fn snapshot_restore_keeps_watermark_and_maxima() {
        let clock = ManualClock::new(0);
        let mut wm = tracker(&clock, &[0, 1]);
        wm.observe(0, 1_000);
        wm.observe(1, 2_000);
        assert_eq!(wm.current(), 900);
        let snapshot = wm.snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let decoded: WatermarkSnapshot = serde_json::from_str(&json).unwrap();
        let mut restored = tracker(&clock, &[0, 1]);
        restored.restore(&decoded);
        assert_eq!(restored.last(), 900);
        assert_eq!(restored.current(), 900);
        restored.observe(0, 3_000);
        assert_eq!(restored.current(), 1_900);
    }

    #[test]
    fn lateness_classification() {
        let policy = LatenessPolicy {
            allowed_lateness_ms: 50,
        };
        let window = Window::new(0, 100);
        assert_eq!(policy.classify(window, 99), Lateness::OnTime);
        assert_eq!(policy.classify(window, 100), Lateness::LateWithinAllowed);
        assert_eq!(policy.classify(window, 149), Lateness::LateWithinAllowed);
        assert_eq!(policy.classify(window, 150), Lateness::TooLate);
        assert_eq!(LatenessPolicy::default().allowed_lateness_ms, 300_000);
        let err = LatenessPolicy {
            allowed_lateness_ms: -1,
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "allowed_lateness_ms: -1 must not be negative"
        );
    }

    #[test]
    fn config_validation_and_defaults() {
        assert_eq!(WatermarkConfig::default().out_of_orderness_ms, 15_000);
        let err = WatermarkConfig {
            out_of_orderness_ms: 0,
            idle_timeout_ms: 0,
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "watermark.idle_timeout_ms: 0 must be positive"
        );
    }
}
