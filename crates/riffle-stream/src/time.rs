//! Event-time windows.
//!
//! All times are epoch milliseconds (`i64`, UTC) and every window is half-open,
//! `[start, end)`. Fixed windows are aligned to the epoch with floor division,
//! so negative timestamps fall into the window that starts at or before them
//! (`-1` with a 1 min tumbling window is in `[-60000, 0)`).
//!
//! * **Tumbling** `size_ms`: windows `[k·size, (k+1)·size)`; each timestamp is
//!   in exactly one.
//! * **Hopping** `size_ms`, `slide_ms`: windows `[k·slide, k·slide + size)`.
//!   `slide_ms` must not exceed `size_ms` (a gap between windows would drop
//!   events silently). When `size_ms` is a multiple of `slide_ms` every
//!   timestamp is in exactly `size_ms / slide_ms` windows; otherwise it is in
//!   either `⌊size/slide⌋` or `⌈size/slide⌉` of them, depending on where it falls.
//! * **Session** `gap_ms`: each event opens a proto-window `[ts, ts + gap)`
//!   and overlapping proto-windows merge (see [`SessionWindows`]). Two events
//!   are in the same session iff a chain of events connects them in which
//!   neighbours are *less than* `gap_ms` apart; events exactly `gap_ms` apart
//!   start a new session, because their half-open proto-windows only touch.
//!
//! Timestamps are expected within the RFC 3339 range of
//! [`riffle_core::time`] (years 0000–9999), which is all ingest accepts;
//! arithmetic saturates outside it rather than wrapping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StreamError};

/// Largest accepted window size or session gap: about 34 years. Keeps
/// `ts + size` far from overflow for every RFC 3339 timestamp.
pub const MAX_WINDOW_MS: i64 = 1 << 40;

/// Most windows a single event may fall into with a hopping window. One event
/// updating more windows than this is almost certainly a misconfigured slide
/// (e.g. a 1 h window sliding by 1 ms).
pub const MAX_WINDOWS_PER_EVENT: i64 = 1_024;

/// A half-open interval of event time, `[start, end)`, in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub fn new(start: i64, end: i64) -> Self {
        debug_assert!(start < end, "empty window [{start}, {end})");
        Self { start, end }
    }

    pub fn contains(&self, ts: i64) -> bool {
        self.start <= ts && ts < self.end
    }

    pub fn len_ms(&self) -> i64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the two windows share at least one millisecond.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// How events are grouped into windows; the pipeline configuration form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    Tumbling { size_ms: i64 },
    Hopping { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

impl WindowSpec {
    /// Checks every field; the error names the field and its value,
    /// e.g. `window.size_ms: 0 must be positive`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            WindowSpec::Tumbling { size_ms } => check_duration("window.size_ms", size_ms),
            WindowSpec::Hopping { size_ms, slide_ms } => {
                check_duration("window.size_ms", size_ms)?;
                check_duration("window.slide_ms", slide_ms)?;
                if slide_ms > size_ms {
                    return Err(StreamError::invalid(
                        "window.slide_ms",
                        slide_ms,
                        format!(
                            "must not exceed window.size_ms ({size_ms}): events between windows would be lost"
                        ),
                    ));
                }
                let per_event = (size_ms + slide_ms - 1) / slide_ms;
                if per_event > MAX_WINDOWS_PER_EVENT {
                    return Err(StreamError::invalid(
                        "window.slide_ms",
                        slide_ms,
                        format!(
                            "puts each event in {per_event} windows of size {size_ms}, more than {MAX_WINDOWS_PER_EVENT}"
                        ),
                    ));
                }
                Ok(())
            }
            WindowSpec::Session { gap_ms } => check_duration("window.gap_ms", gap_ms),
        }
    }
}

fn check_duration(field: &'static str, value: i64) -> Result<()> {
    if value <= 0 {
        return Err(StreamError::invalid(field, value, "must be positive"));
    }
    if value > MAX_WINDOW_MS {
        return Err(StreamError::invalid(
            field,
            value,
            format!("exceeds the maximum of {MAX_WINDOW_MS}"),
        ));
    }
    Ok(())
}

/// A validated [`WindowSpec`] that assigns timestamps to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner {
    spec: WindowSpec,
}

impl WindowAssigner {
    pub fn new(spec: WindowSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self { spec })
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// The windows that contain `ts`, in ascending order of start.
    ///
    /// Tumbling: exactly one. Hopping: every window of the spec containing
    /// `ts`. Session: the single proto-window `[ts, ts + gap)`, to be merged
    /// per key with [`SessionWindows`].
    pub fn assign(&self, ts: i64) -> Windows {
        let (size, slide) = match self.spec {
            WindowSpec::Tumbling { size_ms } => (size_ms, size_ms),
            WindowSpec::Hopping { size_ms, slide_ms } => (size_ms, slide_ms),
            WindowSpec::Session { gap_ms } => {
                return Windows {
                    next_start: ts,
                    last_start: ts,
                    size: gap_ms,
                    slide: gap_ms,
                }
            }
        };
        // Window k contains ts iff k·slide <= ts < k·slide + size, i.e.
        // ⌊(ts - size) / slide⌋ < k <= ⌊ts / slide⌋.
        let last_k = ts.div_euclid(slide);
        let first_k = ts.saturating_sub(size).div_euclid(slide) + 1;
        Windows {
            next_start: first_k.saturating_mul(slide),
            last_start: last_k.saturating_mul(slide),
            size,
            slide,
        }
    }
}

/// Iterator over the windows of one timestamp; see [`WindowAssigner::assign`].
#[derive(Debug, Clone)]
pub struct Windows {
    next_start: i64,
    last_start: i64,
    size: i64,
    slide: i64,
}

impl Iterator for Windows {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.next_start > self.last_start {
            return None;
        }
        let start = self.next_start;
        self.next_start = start.saturating_add(self.slide);
        if self.next_start == start {
            // Saturated at i64::MAX: make this the last window.
            self.last_start = start - 1;
        }
        Some(Window::new(start, start.saturating_add(self.size)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.next_start > self.last_start {
            return (0, Some(0));
        }
        let n = ((self.last_start - self.next_start) / self.slide + 1) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Windows {}

/// The outcome of adding one timestamp to [`SessionWindows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMerge {
    /// The session that now contains the timestamp.
    pub session: Window,
    /// Earlier sessions that were merged into `session` and no longer exist;
    /// their accumulated state must be folded into `session`'s. Empty when the
    /// timestamp fell inside an existing session or opened a new one.
    pub absorbed: Vec<Window>,
}

/// The session windows of one key.
///
/// A session is `[first_ts, last_ts + gap)`. It is *closed* once the
/// watermark reaches its end (`watermark >= last_ts + gap`): every event that
/// could still extend it would have `ts < end <= watermark`, i.e. be late.
/// This is the same rule [`crate::watermark::LatenessPolicy`] uses for every
/// window, so a late event that would extend a closed session is classified
/// against that session's end.
///
/// Closing does not remove a session: to let late events within the allowed
/// lateness update (or bridge) emitted sessions, the caller emits sessions from
/// [`SessionWindows::closed`] and removes them with
/// [`SessionWindows::drain_closed`] only once `watermark - allowed_lateness`
/// has passed their end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWindows {
    gap_ms: i64,
    /// Non-overlapping sessions, start → end.
    sessions: BTreeMap<i64, i64>,
}

impl SessionWindows {
    pub fn new(gap_ms: i64) -> Result<Self> {
        check_duration("window.gap_ms", gap_ms)?;
        Ok(Self {
            gap_ms,
            sessions: BTreeMap::new(),
        })
    }

    pub fn gap_ms(&self) -> i64 {
        self.gap_ms
    }

    /// Adds an event at `ts` and merges every session its proto-window
    /// `[ts, ts + gap)` overlaps.
    pub fn insert(&mut self, ts: i64) -> SessionMerge {
        let proto = Window::new(ts, ts.saturating_add(self.gap_ms));
        let mut start = proto.start;
        let mut end = proto.end;
        let mut absorbed = Vec::new();
        // Sessions do not overlap one another, so the ones overlapping the
        // proto-window are contiguous in start order: at most one starting
        // before ts, then those starting inside [ts, ts + gap).
        if let Some((&s, &e)) = self.sessions.range(..=ts).next_back() {
            if e > ts {
                if e >= proto.end {
                    return SessionMerge {
                        session: Window::new(s, e),
                        absorbed,
                    };
                }
                absorbed.push(Window::new(s, e));
                start = s;
            }
        }
        let overlapping_later: Vec<(i64, i64)> = self
            .sessions
            .range((
                std::ops::Bound::Excluded(ts),
                std::ops::Bound::Excluded(proto.end),
            ))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping_later {
            absorbed.push(Window::new(s, e));
            end = end.max(e);
        }
        for window in &absorbed {
            self.sessions.remove(&window.start);
        }
        self.sessions.insert(start, end);
        SessionMerge {
            session: Window::new(start, end),
            absorbed,
        }
    }

    /// All sessions in start order.
    pub fn iter(&self) -> impl Iterator<Item = Window> + '_ {
        self.sessions.iter().map(|(&s, &e)| Window::new(s, e))
    }

    /// Sessions that the watermark has closed (`end <= watermark`), in start
    /// order, without removing them.
    pub fn closed(&self, watermark: i64) -> impl Iterator<Item = Window> + '_ {
        self.iter().filter(move |w| w.end <= watermark)
    }

    /// Removes and returns the sessions with `end <= up_to`, in start order.
    pub fn drain_closed(&mut self, up_to: i64) -> Vec<Window> {
        let closed: Vec<Window> = self.closed(up_to).collect();
        for window in &closed {
            self.sessions.remove(&window.start);
        }
        closed
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_core::HasCode;

    fn windows(spec: WindowSpec, ts: i64) -> Vec<(i64, i64)> {
        WindowAssigner::new(spec)
            .unwrap()
            .assign(ts)
            .map(|w| (w.start, w.end))
            .collect()
    }

    #[test]
    fn tumbling_floors_negative_times() {
        let spec = WindowSpec::Tumbling { size_ms: 60_000 };
        assert_eq!(windows(spec, -1), vec![(-60_000, 0)]);
        assert_eq!(windows(spec, 0), vec![(0, 60_000)]);
        assert_eq!(windows(spec, 59_999), vec![(0, 60_000)]);
        assert_eq!(windows(spec, -60_000), vec![(-60_000, 0)]);
    }

    #[test]
    fn hopping_returns_every_containing_window() {
        let spec = WindowSpec::Hopping {
            size_ms: 10,
            slide_ms: 5,
        };
        assert_eq!(windows(spec, 7), vec![(0, 10), (5, 15)]);
        assert_eq!(windows(spec, -3), vec![(-10, 0), (-5, 5)]);
        let uneven = WindowSpec::Hopping {
            size_ms: 10,
            slide_ms: 4,
        };
        assert_eq!(windows(uneven, 8), vec![(0, 10), (4, 14), (8, 18)]);
        assert_eq!(windows(uneven, 10), vec![(4, 14), (8, 18)]);
    }

    #[test]
    fn session_assign_is_the_proto_window() {
        assert_eq!(
            windows(WindowSpec::Session { gap_ms: 30 }, -5),
            vec![(-5, 25)]
        );
    }

    #[test]
    fn validation_names_field_and_value() {
        let err = WindowSpec::Tumbling { size_ms: 0 }.validate().unwrap_err();
        assert_eq!(err.to_string(), "window.size_ms: 0 must be positive");
        let err = WindowSpec::Hopping {
            size_ms: 10,
            slide_ms: 11,
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "window.slide_ms: 11 must not exceed window.size_ms (10): events between windows would be lost"
        );
        let err = WindowSpec::Hopping {
            size_ms: 3_600_000,
            slide_ms: 1,
        }
        .validate()
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("window.slide_ms: 1 puts each event in 3600000 windows"));
        let err = WindowSpec::Session { gap_ms: -4 }.validate().unwrap_err();
        assert_eq!(err.to_string(), "window.gap_ms: -4 must be positive");
        assert_eq!(err.code(), riffle_core::ErrorCode::InvalidArgument);
    }

    #[test]
    fn spec_deserializes_strictly() {
        let spec: WindowSpec =
            serde_json::from_str(r#"{"kind":"hopping","size_ms":600000,"slide_ms":60000}"#)
                .unwrap();
        assert_eq!(
            spec,
            WindowSpec::Hopping {
                size_ms: 600_000,
                slide_ms: 60_000
            }
        );
        assert!(serde_json::from_str::<WindowSpec>(r#"{"kind":"tumbling","size":1}"#).is_err());
        assert!(serde_json::from_str::<WindowSpec>(
            r#"{"kind":"tumbling","size_ms":1,"slide_ms":1}"#
        )
        .is_err());
    }

    #[test]
    fn sessions_merge_and_bridge() {
        let mut sessions = SessionWindows::new(10).unwrap();
        assert_eq!(sessions.insert(0).session, Window::new(0, 10));
        // Exactly gap apart: a new session.
        let second = sessions.insert(10);
        assert_eq!(second.session, Window::new(10, 20));
        assert!(second.absorbed.is_empty());
        sessions.insert(30);
        // Bridges the first two.
        let bridge = sessions.insert(1);
        assert_eq!(bridge.session, Window::new(0, 20));
        assert_eq!(
            bridge.absorbed,
            vec![Window::new(0, 10), Window::new(10, 20)]
        );
        // Inside an existing session: nothing changes.
        let inside = sessions.insert(5);
        assert_eq!(inside.session, Window::new(0, 20));
        assert!(inside.absorbed.is_empty());
        // Extends a later session backwards.
        let back = sessions.insert(25);
        assert_eq!(back.session, Window::new(25, 40));
        assert_eq!(back.absorbed, vec![Window::new(30, 40)]);
        let all = sessions.insert(19);
        assert_eq!(all.session, Window::new(0, 40));
        assert_eq!(all.absorbed, vec![Window::new(0, 20), Window::new(25, 40)]);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.closed(40).count(), 1);
        assert_eq!(sessions.drain_closed(39), vec![]);
        assert_eq!(sessions.drain_closed(40), vec![Window::new(0, 40)]);
        assert!(sessions.is_empty());
    }
}
