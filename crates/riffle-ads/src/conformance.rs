//! The conformance suite every [`AggregateStore`] backend must pass.
//!
//! Each check is a plain function taking a fresh, empty store; a backend's
//! test file instantiates them all with a factory returning anything that is
//! `AsRef<dyn AggregateStore>` (a `Box<dyn AggregateStore>`, or a fixture
//! that also owns a temporary directory):
//!
//! ```ignore
//! riffle_ads::aggregate_store_suite!(|| Box::new(MemoryAggregateStore::new()) as Box<dyn AggregateStore>);
//! ```
//!
//! Persistence across reopen is backend-specific and tested next to each
//! backend (`tests/redb.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

use riffle_core::ErrorCode;

use crate::error::StoreError;
use crate::store::{
    AggregateRow, AggregateStore, Deleted, SourcePosition, TopRow, WriteBatch, MINUTE_MS,
};

/// `Err` carries a description of the first violated expectation.
pub type CheckResult = Result<(), String>;

/// A minute-aligned instant near 2023-11-14.
const T0: i64 = 28_333_333 * MINUTE_MS;
const M: i64 = MINUTE_MS;

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

macro_rules! check_eq {
    ($actual:expr, $expected:expr, $($fmt:tt)+) => {{
        let actual = $actual;
        let expected = $expected;
        if actual != expected {
            return Err(format!(
                "{}: expected {:?}, got {:?}",
                format!($($fmt)+),
                expected,
                actual
            ));
        }
    }};
}

fn err(error: StoreError) -> String {
    format!("unexpected error: {error}")
}

fn rows(items: &[(i64, &str, u32, u64)]) -> Vec<AggregateRow> {
    items
        .iter()
        .map(|&(minute, ad_id, filter_id, count)| {
            AggregateRow::new(minute, ad_id, filter_id, count)
        })
        .collect()
}

fn batch_of(items: &[(i64, &str, u32, u64)]) -> WriteBatch {
    WriteBatch {
        rows: rows(items),
        ..WriteBatch::default()
    }
}

fn top_row(window_minutes: u32, filter_id: u32, window_end_ms: i64, ads: &[(&str, u64)]) -> TopRow {
    TopRow {
        window_end_ms,
        window_minutes,
        filter_id,
        ad_ids: ads.iter().map(|(ad, _)| ad.to_string()).collect(),
        counts: ads.iter().map(|(_, count)| *count).collect(),
    }
}

/// Every row of the store within a generous range around `T0`.
fn everything(store: &dyn AggregateStore) -> Result<Vec<AggregateRow>, String> {
    store.scan(T0 - 1000 * M, T0 + 1000 * M, None).map_err(err)
}

/// An empty store answers every query with nothing, not an error.
pub fn empty_store_answers(store: &dyn AggregateStore) -> CheckResult {
    check_eq!(
        store.count("nobody", 0, T0, T0 + 60 * M).map_err(err)?,
        0,
        "count of an unknown ad"
    );
    check_eq!(
        store.count("nobody", 0, T0, T0).map_err(err)?,
        0,
        "count of an empty range"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        None,
        "position of an unknown source"
    );
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        None,
        "top of an unknown window"
    );
    check_eq!(
        store.latest_top(5, 0, T0).map_err(err)?,
        None,
        "latest top of an empty store"
    );
    check_eq!(
        store.scan(T0, T0 + M, None).map_err(err)?,
        vec![],
        "scan of an empty store"
    );
    check_eq!(
        store.delete_before(T0).map_err(err)?,
        Deleted::default(),
        "delete_before on an empty store"
    );
    store.replace_range(T0, T0 + M, &[]).map_err(err)?;
    store.apply(&WriteBatch::default()).map_err(err)?;
    check_eq!(everything(store)?, vec![], "store after empty writes");
    Ok(())
}

/// Applying the same batch twice leaves exactly what applying it once does.
pub fn apply_is_idempotent(store: &dyn AggregateStore) -> CheckResult {
    let batch = WriteBatch {
        rows: rows(&[(T0, "a", 0, 3), (T0, "a", 1, 2), (T0 + M, "b", 0, 9)]),
        tops: vec![top_row(5, 0, T0 + 2 * M, &[("b", 9), ("a", 3)])],
        positions: vec![SourcePosition::new("ad_click_aggregates/0", 17)],
    };
    store.apply(&batch).map_err(err)?;
    let rows_once = everything(store)?;
    let mut expected = batch.rows.clone();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    check_eq!(rows_once.clone(), expected, "rows after one apply");
    store.apply(&batch).map_err(err)?;
    check_eq!(
        everything(store)?,
        rows_once,
        "rows after applying the batch twice"
    );
    check_eq!(
        store.count("a", 0, T0, T0 + 2 * M).map_err(err)?,
        3,
        "count of a after two applies"
    );
    check_eq!(
        store.top(5, 0, T0 + 2 * M).map_err(err)?,
        Some(batch.tops[0].clone()),
        "top row after two applies"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(17),
        "position after two applies"
    );
    Ok(())
}

/// The last write of a key wins, across batches and within one batch, even
/// when it is smaller (counts are absolute, not deltas).
pub fn last_write_wins(store: &dyn AggregateStore) -> CheckResult {
    store.apply(&batch_of(&[(T0, "a", 0, 5)])).map_err(err)?;
    store.apply(&batch_of(&[(T0, "a", 0, 3)])).map_err(err)?;
    check_eq!(
        store.count("a", 0, T0, T0 + M).map_err(err)?,
        3,
        "count after overwrite with a smaller value"
    );
    store
        .apply(&batch_of(&[
            (T0, "b", 0, 1),
            (T0, "b", 0, 7),
            (T0, "b", 0, 4),
        ]))
        .map_err(err)?;
    check_eq!(
        store.count("b", 0, T0, T0 + M).map_err(err)?,
        4,
        "count after three writes in one batch"
    );
    let tops = WriteBatch {
        tops: vec![
            top_row(5, 0, T0, &[("a", 5)]),
            top_row(5, 0, T0, &[("b", 7), ("a", 3)]),
        ],
        ..WriteBatch::default()
    };
    store.apply(&tops).map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(tops.tops[1].clone()),
        "top row written twice in one batch"
    );
    check_eq!(
        everything(store)?,
        rows(&[(T0, "a", 0, 3), (T0, "b", 0, 4)]),
        "rows after overwrites"
    );
    Ok(())
}

/// `count` sums exactly the minutes of `[from, to)` for one ad and one filter.
pub fn count_ranges_are_half_open(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&batch_of(&[
            (T0 - M, "a", 0, 100),
            (T0, "a", 0, 1),
            (T0 + M, "a", 0, 10),
            (T0 + 2 * M, "a", 0, 1000),
            (T0, "a", 1, 20_000),
            (T0 + M, "a", 7, 300_000),
            (T0, "aa", 0, 4_000_000),
            (T0, "b", 0, 9),
            (-M, "a", 0, 50_000_000),
            (0, "a", 0, 600_000_000),
        ]))
        .map_err(err)?;
    let cases: &[(&str, u32, i64, i64, u64)] = &[
        ("a", 0, T0, T0 + M, 1),
        ("a", 0, T0, T0 + 2 * M, 11),
        ("a", 0, T0 - M, T0 + 3 * M, 1111),
        ("a", 0, T0 + M, T0 + 2 * M, 10),
        ("a", 0, T0 + 2 * M, T0 + 3 * M, 1000),
        ("a", 0, T0 + 3 * M, T0 + 60 * M, 0),
        ("a", 0, T0 - 60 * M, T0 - M, 0),
        ("a", 0, T0, T0, 0),
        ("a", 1, T0 - M, T0 + 3 * M, 20_000),
        ("a", 7, T0, T0 + M, 0),
        ("a", 7, T0 + M, T0 + 2 * M, 300_000),
        ("a", 2, T0 - M, T0 + 3 * M, 0),
        ("aa", 0, T0 - M, T0 + 3 * M, 4_000_000),
        ("b", 0, T0, T0 + M, 9),
        ("a", 0, -M, 0, 50_000_000),
        ("a", 0, -2 * M, M, 650_000_000),
        ("a", 0, 0, M, 600_000_000),
    ];
    for &(ad, filter, from, to, expected) in cases {
        check_eq!(
            store.count(ad, filter, from, to).map_err(err)?,
            expected,
            "count({ad:?}, filter {filter}, [{}, {}) minutes from T0)",
            (from - T0) / M,
            (to - T0) / M
        );
    }
    Ok(())
}

/// `scan` returns exactly the rows of `[from, to)`, ordered by (minute, ad,
/// filter), optionally of one filter.
pub fn scan_orders_and_filters(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&batch_of(&[
            (T0 + M, "b", 0, 1),
            (T0, "b", 2, 2),
            (T0, "a", 1, 3),
            (T0, "b", 0, 4),
            (T0 - M, "a", 0, 5),
            (T0 + 2 * M, "a", 0, 6),
            (T0, "a", 0, 7),
        ]))
        .map_err(err)?;
    check_eq!(
        store.scan(T0, T0 + 2 * M, None).map_err(err)?,
        rows(&[
            (T0, "a", 0, 7),
            (T0, "a", 1, 3),
            (T0, "b", 0, 4),
            (T0, "b", 2, 2),
            (T0 + M, "b", 0, 1)
        ]),
        "scan [T0, T0+2)"
    );
    check_eq!(
        store.scan(T0 - M, T0 + 3 * M, Some(0)).map_err(err)?,
        rows(&[
            (T0 - M, "a", 0, 5),
            (T0, "a", 0, 7),
            (T0, "b", 0, 4),
            (T0 + M, "b", 0, 1),
            (T0 + 2 * M, "a", 0, 6)
        ]),
        "scan [T0-1, T0+3) filter 0"
    );
    check_eq!(
        store.scan(T0, T0 + 3 * M, Some(2)).map_err(err)?,
        rows(&[(T0, "b", 2, 2)]),
        "scan filter 2"
    );
    check_eq!(
        store.scan(T0, T0 + 3 * M, Some(9)).map_err(err)?,
        vec![],
        "scan of an unused filter"
    );
    check_eq!(
        store.scan(T0, T0, None).map_err(err)?,
        vec![],
        "scan of an empty range"
    );
    Ok(())
}

/// Positions commit together with rows, never move back, and a rejected
/// batch changes nothing at all.
pub fn positions_commit_with_rows(store: &dyn AggregateStore) -> CheckResult {
    let first = WriteBatch {
        rows: rows(&[(T0, "a", 0, 1)]),
        tops: vec![],
        positions: vec![
            SourcePosition::new("ad_click_aggregates/0", 10),
            SourcePosition::new("ad_click_aggregates/1", 4),
        ],
    };
    store.apply(&first).map_err(err)?;
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(10),
        "position of partition 0"
    );
    check_eq!(
        store.position("ad_click_aggregates/1").map_err(err)?,
        Some(4),
        "position of partition 1"
    );
    check_eq!(
        store.position("ad_click_aggregates/2").map_err(err)?,
        None,
        "position of partition 2"
    );
    check_eq!(
        store.count("a", 0, T0, T0 + M).map_err(err)?,
        1,
        "row written with the positions"
    );

    // A stale writer: partition 0 moves back; nothing of its batch may land,
    // not even the position of partition 1 that would move forward.
    let stale = WriteBatch {
        rows: rows(&[(T0, "a", 0, 99), (T0, "z", 0, 1)]),
        tops: vec![top_row(1, 0, T0 + M, &[("a", 99)])],
        positions: vec![
            SourcePosition::new("ad_click_aggregates/1", 9),
            SourcePosition::new("ad_click_aggregates/0", 5),
        ],
    };
    match store.apply(&stale) {
        Err(error @ StoreError::PositionRegressed { .. }) => {
            check_eq!(
                error.code(),
                ErrorCode::FailedPrecondition,
                "code of a regressed position"
            );
            check!(
                error.to_string().contains("ad_click_aggregates/0"),
                "regression error does not name the source: {error}"
            );
        }
        other => {
            return Err(format!(
                "stale batch: expected PositionRegressed, got {other:?}"
            ))
        }
    }
    check_eq!(
        store.position("ad_click_aggregates/1").map_err(err)?,
        Some(4),
        "partition 1 after a rejected batch"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(10),
        "partition 0 after a rejected batch"
    );
    check_eq!(
        everything(store)?,
        rows(&[(T0, "a", 0, 1)]),
        "rows after a rejected batch"
    );
    check_eq!(
        store.top(1, 0, T0 + M).map_err(err)?,
        None,
        "top row of a rejected batch"
    );

    // An invalid row rejects the batch, positions included.
    let invalid = WriteBatch {
        rows: rows(&[(T0, "a", 0, 50), (T0 + 1, "a", 0, 1)]),
        tops: vec![],
        positions: vec![SourcePosition::new("ad_click_aggregates/0", 20)],
    };
    check!(
        store.apply(&invalid).is_err(),
        "a batch with an unaligned row was accepted"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(10),
        "position after an invalid batch"
    );
    check_eq!(
        store.count("a", 0, T0, T0 + M).map_err(err)?,
        1,
        "count after an invalid batch"
    );

    // The same position again (a re-applied batch) is fine, and moves rows.
    let again = WriteBatch {
        rows: rows(&[(T0, "a", 0, 2)]),
        tops: vec![],
        positions: vec![SourcePosition::new("ad_click_aggregates/0", 10)],
    };
    store.apply(&again).map_err(err)?;
    check_eq!(
        store.count("a", 0, T0, T0 + M).map_err(err)?,
        2,
        "count after a batch at the same position"
    );
    store
        .apply(&WriteBatch {
            positions: vec![SourcePosition::new("ad_click_aggregates/0", 11)],
            ..WriteBatch::default()
        })
        .map_err(err)?;
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(11),
        "position moved by a rows-free batch"
    );
    Ok(())
}

/// `replace_range` removes every row of the range (all ads, all filters),
/// keeps everything outside it and inserts the new rows.
pub fn replace_range_replaces_exactly_the_range(store: &dyn AggregateStore) -> CheckResult {
    let top = top_row(5, 0, T0 + M, &[("a", 3)]);
    store
        .apply(&WriteBatch {
            rows: rows(&[
                (T0 - M, "a", 0, 1),
                (T0, "a", 0, 2),
                (T0, "a", 3, 3),
                (T0, "b", 0, 4),
                (T0 + M, "c", 0, 5),
                (T0 + 2 * M, "a", 0, 6),
            ]),
            tops: vec![top.clone()],
            positions: vec![SourcePosition::new("ad_click_aggregates/0", 3)],
        })
        .map_err(err)?;
    store
        .replace_range(
            T0,
            T0 + 2 * M,
            &rows(&[(T0, "a", 0, 20), (T0 + M, "d", 1, 40), (T0 + M, "d", 1, 41)]),
        )
        .map_err(err)?;
    check_eq!(
        everything(store)?,
        rows(&[
            (T0 - M, "a", 0, 1),
            (T0, "a", 0, 20),
            (T0 + M, "d", 1, 41),
            (T0 + 2 * M, "a", 0, 6)
        ]),
        "rows after replace_range [T0, T0+2)"
    );
    check_eq!(
        store.count("a", 3, T0, T0 + M).map_err(err)?,
        0,
        "count of a replaced filter row"
    );
    check_eq!(
        store.count("c", 0, T0 - M, T0 + 3 * M).map_err(err)?,
        0,
        "count of a replaced ad"
    );
    check_eq!(
        store.count("a", 0, T0 - M, T0 + 3 * M).map_err(err)?,
        27,
        "count across the replaced range"
    );
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top),
        "top row after replace_range"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(3),
        "position after replace_range"
    );

    // Out-of-range rows reject the whole call.
    let before = everything(store)?;
    let rejected = store.replace_range(T0, T0 + M, &rows(&[(T0, "x", 0, 1), (T0 + M, "x", 0, 1)]));
    check_eq!(
        rejected
            .as_ref()
            .err()
            .and_then(|e| e.param().map(str::to_string)),
        Some("rows[1].key.minute_start_ms".to_string()),
        "parameter named by an out-of-range row"
    );
    check_eq!(
        everything(store)?,
        before.clone(),
        "rows after a rejected replace_range"
    );

    // Replacing with nothing deletes; an empty range changes nothing.
    store
        .replace_range(T0 + 2 * M, T0 + 2 * M, &[])
        .map_err(err)?;
    check_eq!(
        everything(store)?,
        before,
        "rows after replacing an empty range"
    );
    store.replace_range(T0 - M, T0 + M, &[]).map_err(err)?;
    check_eq!(
        everything(store)?,
        rows(&[(T0 + M, "d", 1, 41), (T0 + 2 * M, "a", 0, 6)]),
        "rows after replacing [T0-1, T0+1) with nothing"
    );
    Ok(())
}

/// Readers never see a half-done `replace_range`: every concurrent `scan`
/// and `count` matches either the old or the new contents.
pub fn replace_range_is_atomic_for_readers(store: &dyn AggregateStore) -> CheckResult {
    let from = T0;
    let to = T0 + 10 * M;
    let mut set_a = Vec::new();
    let mut set_b = Vec::new();
    for minute in 0..10 {
        for ad in 0..20 {
            set_a.push(AggregateRow::new(
                T0 + minute * M,
                format!("ad-{ad:02}"),
                0,
                1,
            ));
            if ad % 2 == 0 {
                set_b.push(AggregateRow::new(
                    T0 + minute * M,
                    format!("ad-{ad:02}"),
                    0,
                    3,
                ));
            }
        }
    }
    set_a.sort_by(|a, b| a.key.cmp(&b.key));
    set_b.sort_by(|a, b| a.key.cmp(&b.key));
    store.replace_range(from, to, &set_a).map_err(err)?;
    let writing = AtomicBool::new(true);
    let rounds = 30;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let result = (0..rounds).try_for_each(|round| {
                let rows = if round % 2 == 0 { &set_b } else { &set_a };
                store.replace_range(from, to, rows).map_err(err)
            });
            writing.store(false, Ordering::SeqCst);
            result
        });
        let mut observed = 0usize;
        let mut read_result: CheckResult = Ok(());
        while writing.load(Ordering::SeqCst) || observed == 0 {
            observed += 1;
            match store.scan(from, to, None) {
                Ok(rows) if rows == set_a || rows == set_b => {}
                Ok(rows) => {
                    read_result = Err(format!(
                        "scan saw a mix of old and new rows ({} rows, neither set A ({}) nor set B ({}))",
                        rows.len(),
                        set_a.len(),
                        set_b.len()
                    ));
                    break;
                }
                Err(error) => {
                    read_result = Err(err(error));
                    break;
                }
            }
            match store.count("ad-00", 0, from, to) {
                Ok(10) | Ok(30) => {}
                other => {
                    read_result = Err(format!("count saw a partial replace: {other:?}"));
                    break;
                }
            }
        }
        let write_result = writer.join().expect("writer thread panicked");
        write_result.and(read_result)
    })?;
    // An even number of rounds ends on set A.
    check_eq!(
        store.scan(from, to, None).map_err(err)?,
        set_a,
        "rows after the last replace"
    );
    Ok(())
}

/// Top rows round trip exactly, and `latest_top` picks the newest window
/// ending at or before the given instant, per (window, filter).
pub fn top_rows_round_trip(store: &dyn AggregateStore) -> CheckResult {
    let tops = vec![
        top_row(5, 0, T0, &[("a", 9), ("b", 8), ("c", 8)]),
        top_row(5, 0, T0 + M, &[("b", 12), ("a", 10)]),
        top_row(5, 0, T0 + 3 * M, &[]),
        top_row(5, 1, T0 + 2 * M, &[("ünïcødé \"ad\"", 1)]),
        top_row(10, 0, T0 + 5 * M, &[("a", u64::MAX)]),
        top_row(5, 0, -M, &[("old", 1)]),
    ];
    store
        .apply(&WriteBatch {
            tops: tops.clone(),
            ..WriteBatch::default()
        })
        .map_err(err)?;
    for top in &tops {
        check_eq!(
            store
                .top(top.window_minutes, top.filter_id, top.window_end_ms)
                .map_err(err)?,
            Some(top.clone()),
            "top({}, {}, {})",
            top.window_minutes,
            top.filter_id,
            top.window_end_ms
        );
    }
    check_eq!(
        store.top(5, 0, T0 + 2 * M).map_err(err)?,
        None,
        "top of a window never written"
    );
    check_eq!(
        store.top(5, 2, T0).map_err(err)?,
        None,
        "top of another filter"
    );
    let latest: &[(u32, u32, i64, Option<usize>)] = &[
        (5, 0, T0 + 2 * M + 1, Some(1)),
        (5, 0, T0 + 3 * M, Some(2)),
        (5, 0, T0 + 3 * M - 1, Some(1)),
        (5, 0, T0 + M - 1, Some(0)),
        (5, 0, T0 - 1, Some(5)),
        (5, 0, -M - 1, None),
        (5, 0, i64::MAX, Some(2)),
        (5, 1, T0 + 100 * M, Some(3)),
        (5, 1, T0 + M, None),
        (10, 0, T0 + 4 * M, None),
        (10, 0, T0 + 5 * M, Some(4)),
        (15, 0, i64::MAX, None),
        (5, 2, i64::MAX, None),
    ];
    for &(window, filter, at, expected) in latest {
        check_eq!(
            store.latest_top(window, filter, at).map_err(err)?,
            expected.map(|index| tops[index].clone()),
            "latest_top({window}, {filter}, {at})"
        );
    }
    Ok(())
}

/// `delete_before` drops rows of earlier minutes and top rows whose window
/// ended at or before the cut, and keeps everything else.
pub fn delete_before_is_retention(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&WriteBatch {
            rows: rows(&[
                (T0 - 2 * M, "a", 0, 1),
                (T0 - M, "b", 1, 2),
                (T0 - M, "a", 0, 3),
                (T0, "a", 0, 4),
                (T0 + M, "b", 0, 5),
            ]),
            tops: vec![
                top_row(5, 0, T0 - M, &[("a", 1)]),
                top_row(5, 0, T0, &[("a", 3)]),
                top_row(5, 1, T0 + M, &[("b", 2)]),
            ],
            positions: vec![SourcePosition::new("ad_click_aggregates/0", 8)],
        })
        .map_err(err)?;
    check_eq!(
        store.delete_before(T0).map_err(err)?,
        Deleted {
            count_rows: 3,
            top_rows: 2
        },
        "what delete_before(T0) removed"
    );
    check_eq!(
        everything(store)?,
        rows(&[(T0, "a", 0, 4), (T0 + M, "b", 0, 5)]),
        "rows after delete_before(T0)"
    );
    check_eq!(
        store.count("a", 0, T0 - 10 * M, T0 + M).map_err(err)?,
        4,
        "count after retention"
    );
    check_eq!(
        store.latest_top(5, 0, i64::MAX).map_err(err)?,
        None,
        "top rows of filter 0 after retention"
    );
    check!(
        store.top(5, 1, T0 + M).map_err(err)?.is_some(),
        "a window ending after the cut was deleted"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(8),
        "position after retention"
    );
    check_eq!(
        store.delete_before(T0).map_err(err)?,
        Deleted::default(),
        "delete_before(T0) again"
    );
    Ok(())
}

/// Every invalid argument is rejected as `InvalidArgument` naming the
/// parameter, and changes nothing.
pub fn bad_parameters_name_the_parameter(store: &dyn AggregateStore) -> CheckResult {
    store.apply(&batch_of(&[(T0, "a", 0, 1)])).map_err(err)?;
    let bad_top = TopRow {
        window_end_ms: T0,
        window_minutes: 5,
        filter_id: 0,
        ad_ids: vec!["a".into(), "b".into()],
        counts: vec![1],
    };
    let cases: Vec<(&str, Result<(), StoreError>)> = vec![
        ("from_ms", store.count("a", 0, T0 + 1, T0 + M).map(drop)),
        ("to_ms", store.count("a", 0, T0, T0 + M - 1).map(drop)),
        ("to_ms", store.count("a", 0, T0 + M, T0).map(drop)),
        ("ad_id", store.count("", 0, T0, T0 + M).map(drop)),
        ("window_minutes", store.top(0, 0, T0).map(drop)),
        ("window_end_ms", store.top(5, 0, T0 + 7).map(drop)),
        ("window_minutes", store.latest_top(0, 0, T0).map(drop)),
        ("from_ms", store.scan(T0 - 30_000, T0, None).map(drop)),
        ("to_ms", store.scan(T0, T0 - M, Some(0)).map(drop)),
        ("to_ms", store.replace_range(T0, T0 - M, &[]).map(drop)),
        ("from_ms", store.replace_range(1, M, &[]).map(drop)),
        (
            "rows[0].key.ad_id",
            store.replace_range(T0, T0 + M, &rows(&[(T0, "", 0, 1)])),
        ),
        ("minute_ms", store.delete_before(T0 + 59_999).map(drop)),
        (
            "rows[1].key.minute_start_ms",
            store.apply(&batch_of(&[(T0, "a", 0, 2), (T0 - 1, "a", 0, 2)])),
        ),
        (
            "rows[0].key.ad_id",
            store.apply(&batch_of(&[(T0, "", 0, 2)])),
        ),
        (
            "tops[0].counts",
            store.apply(&WriteBatch {
                tops: vec![bad_top.clone()],
                ..WriteBatch::default()
            }),
        ),
        (
            "tops[0].window_minutes",
            store.apply(&WriteBatch {
                tops: vec![TopRow {
                    window_minutes: 0,
                    counts: vec![1, 1],
                    ..bad_top.clone()
                }],
                ..WriteBatch::default()
            }),
        ),
        (
            "tops[0].window_end_ms",
            store.apply(&WriteBatch {
                tops: vec![TopRow {
                    window_end_ms: T0 + 1,
                    counts: vec![1, 1],
                    ..bad_top
                }],
                ..WriteBatch::default()
            }),
        ),
        (
            "positions[0].source",
            store.apply(&WriteBatch {
                positions: vec![SourcePosition::new("", 1)],
                ..WriteBatch::default()
            }),
        ),
        (
            "positions[1].source",
            store.apply(&WriteBatch {
                positions: vec![SourcePosition::new("t/0", 1), SourcePosition::new("t/0", 2)],
                ..WriteBatch::default()
            }),
        ),
    ];
    for (index, (param, result)) in cases.into_iter().enumerate() {
        let Err(error) = result else {
            return Err(format!("case {index}: bad {param} was accepted"));
        };
        check_eq!(
            error.code(),
            ErrorCode::InvalidArgument,
            "case {index} ({param}): code of {error}"
        );
        check_eq!(
            error.param(),
            Some(param),
            "case {index}: parameter named by {error}"
        );
        check!(
            error.to_string().contains(param),
            "case {index}: message does not name {param}: {error}"
        );
    }
    check_eq!(
        everything(store)?,
        rows(&[(T0, "a", 0, 1)]),
        "rows after rejected calls"
    );
    check_eq!(
        store.position("t/0").map_err(err)?,
        None,
        "position after rejected batches"
    );
    check_eq!(
        store.latest_top(5, 0, i64::MAX).map_err(err)?,
        None,
        "top rows after rejected batches"
    );
    Ok(())
}

/// Instantiates every conformance check as a `#[test]` for one backend.
/// `$factory` is called once per test and returns a fresh, empty store as
/// anything implementing `AsRef<dyn AggregateStore>`.
#[macro_export]
macro_rules! aggregate_store_suite {
    ($factory:expr) => {
        $crate::aggregate_store_suite!(@tests $factory;
            empty_store_answers,
            apply_is_idempotent,
            last_write_wins,
            count_ranges_are_half_open,
            scan_orders_and_filters,
            positions_commit_with_rows,
            replace_range_replaces_exactly_the_range,
            replace_range_is_atomic_for_readers,
            top_rows_round_trip,
            delete_before_is_retention,
            bad_parameters_name_the_parameter);
    };
    (@tests $factory:expr; $($name:ident),+) => {
        $(
            #[test]
            fn $name() {
                let fixture = ($factory)();
                let store: &dyn $crate::AggregateStore =
                    ::std::convert::AsRef::<dyn $crate::AggregateStore>::as_ref(&fixture);
                if let Err(message) = $crate::conformance::$name(store) {
                    panic!("{}: {}", stringify!($name), message);
                }
            }
        )+
    };
}
