//! Window assignment and session merging against brute-force oracles.

use proptest::prelude::*;
use riffle_stream::{SessionWindows, Window, WindowAssigner, WindowSpec};

/// Every window of `size`/`slide` containing `ts`, found by scanning every
/// possible start in `(ts - size, ts]` for a multiple of `slide`.
fn brute_windows(size: i64, slide: i64, ts: i64) -> Vec<Window> {
    ((ts - size + 1)..=ts)
        .filter(|start| start % slide == 0)
        .map(|start| Window {
            start,
            end: start + size,
        })
        .collect()
}

fn spec_strategy() -> impl Strategy<Value = WindowSpec> {
    prop_oneof![
        (1i64..=2_000).prop_map(|size_ms| WindowSpec::Tumbling { size_ms }),
        // size a multiple of slide
        (1i64..=200, 1i64..=10).prop_map(|(slide_ms, n)| WindowSpec::Hopping {
            size_ms: slide_ms * n,
            slide_ms
        }),
        // anything valid, including uneven sizes (at most
        // MAX_WINDOWS_PER_EVENT windows per event, which the assigner
        // enforces and `too_many_windows_per_event_is_rejected` checks)
        (1i64..=2_000, 1i64..=2_000)
            .prop_filter("at most 1024 windows per event", |(a, b)| {
                (a.max(b) + a.min(b) - 1) / a.min(b) <= riffle_stream::time::MAX_WINDOWS_PER_EVENT
            })
            .prop_map(|(a, b)| WindowSpec::Hopping {
                size_ms: a.max(b),
                slide_ms: a.min(b),
            }),
    ]
}

fn ts_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        -10_000i64..10_000,
        riffle_core::time::MIN_RFC3339_MS..=riffle_core::time::MAX_RFC3339_MS,
    ]
}

/// Sessions of `events` by sorting and splitting wherever neighbours are at
/// least `gap` apart.
fn brute_sessions(events: &[i64], gap: i64) -> Vec<Window> {
    let mut sorted = events.to_vec();
    sorted.sort_unstable();
    let mut sessions: Vec<Window> = Vec::new();
    let mut iter = sorted.into_iter();
    let Some(first) = iter.next() else {
        return sessions;
    };
    let (mut start, mut last) = (first, first);
    for ts in iter {
        if ts - last >= gap {
            sessions.push(Window {
                start,
                end: last + gap,
            });
            start = ts;
        }
        last = ts;
    }
    sessions.push(Window {
        start,
        end: last + gap,
    });
    sessions
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn assignment_matches_brute_force(spec in spec_strategy(), ts in ts_strategy()) {
        let assigner = WindowAssigner::new(spec).unwrap();
        let (size, slide) = match spec {
            WindowSpec::Tumbling { size_ms } => (size_ms, size_ms),
            WindowSpec::Hopping { size_ms, slide_ms } => (size_ms, slide_ms),
            WindowSpec::Session { .. } => unreachable!(),
        };
        let assigned = assigner.assign(ts);
        let claimed_len = assigned.len();
        let got: Vec<Window> = assigned.collect();
        prop_assert_eq!(claimed_len, got.len());
        for window in &got {
            prop_assert!(window.contains(ts), "{:?} does not contain {}", window, ts);
            prop_assert_eq!(window.len_ms(), size);
        }
        prop_assert_eq!(&got, &brute_windows(size, slide, ts));
        if size % slide == 0 {
            prop_assert_eq!(got.len() as i64, size / slide);
        } else {
            let n = got.len() as i64;
            prop_assert!(n == size / slide || n == size / slide + 1, "{} windows", n);
        }
    }

    #[test]
    fn session_proto_window_contains_ts(gap in 1i64..10_000, ts in ts_strategy()) {
        let assigner = WindowAssigner::new(WindowSpec::Session { gap_ms: gap }).unwrap();
        let got: Vec<Window> = assigner.assign(ts).collect();
        prop_assert_eq!(got, vec![Window { start: ts, end: ts + gap }]);
    }

    #[test]
    fn sessions_match_sort_and_merge(
        gap in 1i64..50,
        events in prop::collection::vec(-300i64..300, 0..60),
        watermark in -400i64..400,
    ) {
        let mut sessions = SessionWindows::new(gap).unwrap();
        for (i, &ts) in events.iter().enumerate() {
            let before: Vec<Window> = sessions.iter().collect();
            let merge = sessions.insert(ts);
            let after: Vec<Window> = sessions.iter().collect();
            prop_assert!(merge.session.contains(ts));
            prop_assert!(after.contains(&merge.session));
            for absorbed in &merge.absorbed {
                prop_assert!(before.contains(absorbed));
                prop_assert!(absorbed.start >= merge.session.start && absorbed.end <= merge.session.end);
                prop_assert!(!after.contains(absorbed) || *absorbed == merge.session);
            }
            // Whatever existed before and is gone now must have been reported.
            for old in &before {
                if !after.contains(old) {
                    prop_assert!(merge.absorbed.contains(old), "{:?} vanished unreported", old);
                }
            }
            prop_assert_eq!(after, brute_sessions(&events[..=i], gap));
        }
        let expected = brute_sessions(&events, gap);
        let closed: Vec<Window> = sessions.closed(watermark).collect();
        let expected_closed: Vec<Window> =
            expected.iter().copied().filter(|w| w.end <= watermark).collect();
        prop_assert_eq!(&closed, &expected_closed);
        prop_assert_eq!(sessions.drain_closed(watermark), expected_closed);
        let rest: Vec<Window> = sessions.iter().collect();
        let expected_rest: Vec<Window> =
            expected.into_iter().filter(|w| w.end > watermark).collect();
        prop_assert_eq!(rest, expected_rest);
    }
}

#[test]
fn too_many_windows_per_event_is_rejected() {
    let err = WindowAssigner::new(WindowSpec::Hopping {
        size_ms: 1025,
        slide_ms: 1,
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("window.slide_ms") && err.to_string().contains("1025 windows"),
        "{err}"
    );
    assert!(WindowAssigner::new(WindowSpec::Hopping {
        size_ms: 1024,
        slide_ms: 1,
    })
    .is_ok());
}
