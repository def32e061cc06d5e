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

use riffle_core::{check, check_eq, ErrorCode, HasCode};

use crate::error::StoreError;
use crate::store::{
    AggregateRow, AggregateStore, Deleted, PartialTop, SourcePosition, TopRow, WriteBatch,
    MINUTE_MS,
};

/// `Err` carries a description of the first violated expectation.
pub type CheckResult = Result<(), String>;

/// A minute-aligned instant near 2023-11-14.
const T0: i64 = 28_333_333 * MINUTE_MS;
const M: i64 = MINUTE_MS;

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
    store.replace_range(T0, T0 + M, &[], &[]).map_err(err)?;
    store.apply(&WriteBatch::default()).map_err(err)?;
    check_eq!(everything(store)?, vec![], "store after empty writes");
    Ok(())
}

/// Applying the same batch twice leaves exactly what applying it once does.
pub fn apply_is_idempotent(store: &dyn AggregateStore) -> CheckResult {
    let batch = WriteBatch {
        partial_tops: vec![],
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
        partial_tops: vec![],
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
        partial_tops: vec![],
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
        partial_tops: vec![],
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
        partial_tops: vec![],
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
/// keeps everything outside it and inserts the new rows. Top rows whose
/// window ends in `(from, to]` go with it; the others stay.
pub fn replace_range_replaces_exactly_the_range(store: &dyn AggregateStore) -> CheckResult {
    // Window ends: T0 (= from, outside), T0+1 (inside), T0+2 (= to, inside),
    // T0+3 (outside).
    let kept_at_from = top_row(5, 0, T0, &[("a", 2)]);
    let kept_after = top_row(5, 0, T0 + 3 * M, &[("a", 6)]);
    store
        .apply(&WriteBatch {
            partial_tops: vec![],
            rows: rows(&[
                (T0 - M, "a", 0, 1),
                (T0, "a", 0, 2),
                (T0, "a", 3, 3),
                (T0, "b", 0, 4),
                (T0 + M, "c", 0, 5),
                (T0 + 2 * M, "a", 0, 6),
            ]),
            tops: vec![
                kept_at_from.clone(),
                top_row(5, 0, T0 + M, &[("a", 3)]),
                top_row(5, 1, T0 + 2 * M, &[("d", 1)]),
                kept_after.clone(),
            ],
            positions: vec![SourcePosition::new("ad_click_aggregates/0", 3)],
        })
        .map_err(err)?;
    store
        .replace_range(
            T0,
            T0 + 2 * M,
            &rows(&[(T0, "a", 0, 20), (T0 + M, "d", 1, 40), (T0 + M, "d", 1, 41)]),
            &[],
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
        None,
        "top row of a window ending inside the range"
    );
    check_eq!(
        store.top(5, 1, T0 + 2 * M).map_err(err)?,
        None,
        "top row of a window ending at to_ms"
    );
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(kept_at_from),
        "top row of a window ending at from_ms"
    );
    check_eq!(
        store.top(5, 0, T0 + 3 * M).map_err(err)?,
        Some(kept_after),
        "top row of a window ending after the range"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(3),
        "position after replace_range"
    );

    // Out-of-range rows reject the whole call.
    let before = everything(store)?;
    let rejected = store.replace_range(
        T0,
        T0 + M,
        &rows(&[(T0, "x", 0, 1), (T0 + M, "x", 0, 1)]),
        &[],
    );
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
        .replace_range(T0 + 2 * M, T0 + 2 * M, &[], &[])
        .map_err(err)?;
    check_eq!(
        everything(store)?,
        before,
        "rows after replacing an empty range"
    );
    store.replace_range(T0 - M, T0 + M, &[], &[]).map_err(err)?;
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
    store.replace_range(from, to, &set_a, &[]).map_err(err)?;
    let writing = AtomicBool::new(true);
    let rounds = 30;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let result = (0..rounds).try_for_each(|round| {
                let rows = if round % 2 == 0 { &set_b } else { &set_a };
                store.replace_range(from, to, rows, &[]).map_err(err)
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
            partial_tops: vec![],
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
        ("to_ms", store.replace_range(T0, T0 - M, &[], &[]).map(drop)),
        ("from_ms", store.replace_range(1, M, &[], &[]).map(drop)),
        (
            "rows[0].key.ad_id",
            store.replace_range(T0, T0 + M, &rows(&[(T0, "", 0, 1)]), &[]),
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
                partial_tops: vec![],
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
                partial_tops: vec![],
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

fn partial(
    partition: u32,
    limit: u32,
    window_minutes: u32,
    filter_id: u32,
    window_end_ms: i64,
    ads: &[(&str, u64)],
) -> PartialTop {
    PartialTop {
        partition,
        limit,
        top: top_row(window_minutes, filter_id, window_end_ms, ads),
    }
}

fn partials_batch(partials: Vec<PartialTop>) -> WriteBatch {
    WriteBatch {
        partial_tops: partials,
        ..WriteBatch::default()
    }
}

/// The top rows of `windows` (`(window_minutes, filter_id, window_end_ms)`).
fn tops_of(
    store: &dyn AggregateStore,
    windows: &[(u32, u32, i64)],
) -> Result<Vec<Option<TopRow>>, String> {
    windows
        .iter()
        .map(|&(window, filter, end)| store.top(window, filter, end).map_err(err))
        .collect()
}

/// `result` is an `InvalidArgument` naming `param` (in `param()` and in the
/// message).
fn check_invalid<T: std::fmt::Debug>(
    what: &str,
    param: &str,
    result: Result<T, StoreError>,
) -> CheckResult {
    let error = match result {
        Err(error) => error,
        Ok(value) => return Err(format!("{what}: bad {param} was accepted ({value:?})")),
    };
    check_eq!(
        error.code(),
        ErrorCode::InvalidArgument,
        "{what} ({param}): code of {error}"
    );
    check_eq!(
        error.param(),
        Some(param),
        "{what}: parameter named by {error}"
    );
    check!(
        error.to_string().contains(param),
        "{what}: message does not name {param}: {error}"
    );
    Ok(())
}

/// The merged top of a window is the top-N of the union of its partitions'
/// partials, ranked by count descending then ad id ascending (also across
/// partitions and at the truncation edge), whatever order the partials and
/// their entries arrive in; windows and filters never mix.
pub fn partial_tops_merge_across_partitions(store: &dyn AggregateStore) -> CheckResult {
    // Entries deliberately unsorted. Ties cross partitions against
    // partition order: b (partition 2) and c (partition 1) at 8; d
    // (partition 2) and e (partition 0) at 5, right at the limit of 4.
    let p0 = partial(0, 4, 5, 0, T0, &[("f", 1), ("e", 5), ("a", 9)]);
    let p1 = partial(1, 4, 5, 0, T0, &[("g", 0), ("c", 8)]);
    let p2 = partial(2, 4, 5, 0, T0, &[("d", 5), ("b", 8)]);
    let merged = top_row(5, 0, T0, &[("a", 9), ("b", 8), ("c", 8), ("d", 5)]);
    // Partials of the same window land across transactions.
    store
        .apply(&partials_batch(vec![p2.clone()]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[("b", 8), ("d", 5)])),
        "merged top of one partition (its entries sorted)"
    );
    store
        .apply(&partials_batch(vec![
            p0.clone(),
            partial(0, 4, 5, 1, T0, &[("z", 100)]),
            partial(1, 4, 10, 0, T0, &[("y", 100)]),
            partial(0, 4, 5, 0, T0 + M, &[("x", 100)]),
            p1.clone(),
        ]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(merged.clone()),
        "merged top of three partitions"
    );
    check_eq!(
        store.latest_top(5, 0, T0 + M - 1).map_err(err)?,
        Some(merged),
        "latest_top sees the merged top"
    );
    check_eq!(
        store.top(5, 1, T0).map_err(err)?,
        Some(top_row(5, 1, T0, &[("z", 100)])),
        "merged top of another filter"
    );
    check_eq!(
        store.top(10, 0, T0).map_err(err)?,
        Some(top_row(10, 0, T0, &[("y", 100)])),
        "merged top of another window length"
    );
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("x", 100)])),
        "merged top of another window end"
    );

    // The same partials in the opposite order, in one batch, rank the same.
    let moved = |p: &PartialTop| PartialTop {
        top: TopRow {
            window_end_ms: T0 + 2 * M,
            ..p.top.clone()
        },
        ..p.clone()
    };
    store
        .apply(&partials_batch(vec![moved(&p1), moved(&p0), moved(&p2)]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0 + 2 * M).map_err(err)?,
        Some(top_row(
            5,
            0,
            T0 + 2 * M,
            &[("a", 9), ("b", 8), ("c", 8), ("d", 5)]
        )),
        "merged top of partials applied in reverse order"
    );

    // Within a batch the partials win over a `tops` row of their window, and
    // a later partial of the same partition wins over an earlier one.
    store
        .apply(&WriteBatch {
            tops: vec![top_row(5, 0, T0 + 3 * M, &[("q", 1000)])],
            partial_tops: vec![
                partial(0, 4, 5, 0, T0 + 3 * M, &[("old", 50)]),
                partial(0, 4, 5, 0, T0 + 3 * M, &[("new", 1)]),
            ],
            ..WriteBatch::default()
        })
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0 + 3 * M).map_err(err)?,
        Some(top_row(5, 0, T0 + 3 * M, &[("new", 1)])),
        "merged top of a batch with a tops row and a partition written twice"
    );
    check_eq!(everything(store)?, vec![], "partials write no count rows");
    Ok(())
}

/// Upserting a partition's partial again replaces that partition's
/// contribution (its old ads do not linger) and leaves the other partitions'.
pub fn re_upserting_a_partial_replaces_only_its_partition(
    store: &dyn AggregateStore,
) -> CheckResult {
    let p1 = partial(1, 3, 5, 0, T0, &[("c", 7), ("d", 3)]);
    store
        .apply(&partials_batch(vec![
            partial(0, 3, 5, 0, T0, &[("a", 10), ("b", 4)]),
            p1.clone(),
            partial(0, 3, 5, 0, T0 + M, &[("a", 1)]),
        ]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[("a", 10), ("c", 7), ("b", 4)])),
        "merged top before the upsert"
    );
    let update = partials_batch(vec![partial(0, 3, 5, 0, T0, &[("b", 12)])]);
    store.apply(&update).map_err(err)?;
    let expected = top_row(5, 0, T0, &[("b", 12), ("c", 7), ("d", 3)]);
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(expected.clone()),
        "merged top after partition 0 changed"
    );
    store.apply(&update).map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(expected),
        "merged top after the same upsert again"
    );
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("a", 1)])),
        "partition 0 of another window"
    );

    // An empty partial still counts as the partition's (empty) contribution.
    store
        .apply(&partials_batch(vec![PartialTop {
            top: top_row(5, 0, T0, &[]),
            ..p1
        }]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[("b", 12)])),
        "merged top after partition 1 became empty"
    );
    store
        .apply(&partials_batch(vec![partial(0, 3, 5, 0, T0, &[])]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[])),
        "merged top of a window whose partials are all empty"
    );
    Ok(())
}

/// The merged top keeps the greatest `limit` of the window's stored
/// partials, breaking a tie at the edge by ad id.
pub fn partial_top_limit_truncates(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&partials_batch(vec![
            partial(0, 2, 5, 0, T0, &[("a", 5), ("b", 4), ("c", 3)]),
            partial(1, 2, 5, 0, T0, &[("d", 6), ("e", 1)]),
            // Different limits: the greatest wins.
            partial(0, 1, 5, 0, T0 + M, &[("a", 5), ("b", 4)]),
            partial(1, 3, 5, 0, T0 + M, &[("c", 3), ("d", 2)]),
            // A limit above the union keeps the whole union.
            partial(0, 10, 5, 0, T0 + 2 * M, &[("a", 1)]),
            partial(1, 10, 5, 0, T0 + 2 * M, &[("b", 1)]),
            // Limit 1 and a tie: the smaller ad id.
            partial(0, 1, 5, 0, T0 + 3 * M, &[("b", 7)]),
            partial(1, 1, 5, 0, T0 + 3 * M, &[("a", 7)]),
        ]))
        .map_err(err)?;
    let cases = [
        (T0, top_row(5, 0, T0, &[("d", 6), ("a", 5)])),
        (
            T0 + M,
            top_row(5, 0, T0 + M, &[("a", 5), ("b", 4), ("c", 3)]),
        ),
        (T0 + 2 * M, top_row(5, 0, T0 + 2 * M, &[("a", 1), ("b", 1)])),
        (T0 + 3 * M, top_row(5, 0, T0 + 3 * M, &[("a", 7)])),
    ];
    for (end, expected) in cases {
        check_eq!(
            store.top(5, 0, end).map_err(err)?,
            Some(expected),
            "merged top of the window ending T0+{}",
            (end - T0) / M
        );
    }
    // The limit is that of the partials stored now: lowering the only large
    // one shrinks the merged top.
    store
        .apply(&partials_batch(vec![partial(
            1,
            1,
            5,
            0,
            T0 + M,
            &[("c", 3), ("d", 2)],
        )]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("a", 5)])),
        "merged top after the limits dropped to 1"
    );
    Ok(())
}

/// `replace_range` drops every partial and top row of the windows ending in
/// `(from, to]`, stores the given partials and re-merges those windows; a
/// window left without partials loses its top row, windows outside are
/// untouched, and a partial ending outside the interval rejects the whole
/// call.
pub fn replace_range_replaces_partial_tops(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&WriteBatch {
            rows: rows(&[(T0 - M, "a", 0, 1), (T0, "a", 0, 2), (T0 + M, "b", 0, 3)]),
            tops: vec![
                // Plain top rows (no partials): in range and after it.
                top_row(5, 1, T0 + M, &[("p", 1)]),
                top_row(5, 1, T0 + 3 * M, &[("q", 1)]),
            ],
            partial_tops: vec![
                partial(0, 3, 5, 0, T0, &[("a", 9)]),
                partial(1, 3, 5, 0, T0, &[("b", 8)]),
                partial(0, 3, 5, 0, T0 + M, &[("a", 7)]),
                partial(1, 3, 5, 0, T0 + M, &[("b", 6)]),
                partial(0, 3, 5, 0, T0 + 2 * M, &[("a", 5)]),
                partial(0, 3, 5, 0, T0 + 3 * M, &[("a", 4)]),
                partial(0, 3, 10, 0, T0 + 2 * M, &[("a", 3)]),
            ],
            positions: vec![SourcePosition::new("ad_click_aggregates/0", 7)],
        })
        .map_err(err)?;
    let windows = [
        (5, 0, T0),
        (5, 0, T0 + M),
        (5, 0, T0 + 2 * M),
        (5, 0, T0 + 3 * M),
        (5, 1, T0 + M),
        (5, 1, T0 + 3 * M),
        (10, 0, T0 + 2 * M),
    ];
    let before = tops_of(store, &windows)?;

    store
        .replace_range(
            T0,
            T0 + 2 * M,
            &rows(&[(T0, "c", 0, 4)]),
            &[
                partial(1, 3, 5, 0, T0 + M, &[("n", 2)]),
                partial(2, 3, 10, 0, T0 + 2 * M, &[("m", 1)]),
            ],
        )
        .map_err(err)?;
    let expected = vec![
        // Ends at from_ms: outside.
        before[0].clone(),
        // Both old partitions gone, only the new partial.
        Some(top_row(5, 0, T0 + M, &[("n", 2)])),
        // Ends at to_ms: inside, and no partial left.
        None,
        before[3].clone(),
        // A plain top row in range goes too.
        None,
        before[5].clone(),
        // Old partition 0 dropped, new partition 2 stored.
        Some(top_row(10, 0, T0 + 2 * M, &[("m", 1)])),
    ];
    check_eq!(
        tops_of(store, &windows)?,
        expected,
        "top rows after replace_range [T0, T0+2) with partials"
    );
    check_eq!(
        everything(store)?,
        rows(&[(T0 - M, "a", 0, 1), (T0, "c", 0, 4)]),
        "rows after replace_range with partials"
    );
    check_eq!(
        store.position("ad_click_aggregates/0").map_err(err)?,
        Some(7),
        "position after replace_range with partials"
    );

    // The dropped partials are really gone and the new ones really stored:
    // later partials merge with exactly the latter.
    store
        .apply(&partials_batch(vec![
            partial(1, 3, 5, 0, T0 + 2 * M, &[("o", 1)]),
            partial(0, 3, 5, 0, T0 + M, &[("o", 1)]),
        ]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0 + 2 * M).map_err(err)?,
        Some(top_row(5, 0, T0 + 2 * M, &[("o", 1)])),
        "a window emptied by replace_range gets a new partial"
    );
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("n", 2), ("o", 1)])),
        "a replaced window gets a partial of another partition"
    );

    // A partial ending outside (from, to] rejects the call; nothing changes.
    let rows_before = everything(store)?;
    let tops_before = tops_of(store, &windows)?;
    let fine = partial(0, 3, 5, 0, T0 + M, &[("z", 99)]);
    let replacement = rows(&[(T0, "z", 0, 99)]);
    check_invalid(
        "partial ending at from_ms",
        "partials[1].top.window_end_ms",
        store.replace_range(
            T0,
            T0 + 2 * M,
            &replacement,
            &[fine.clone(), partial(0, 3, 5, 0, T0, &[("z", 99)])],
        ),
    )?;
    check_invalid(
        "partial ending after to_ms",
        "partials[0].top.window_end_ms",
        store.replace_range(
            T0,
            T0 + 2 * M,
            &replacement,
            &[partial(0, 3, 5, 0, T0 + 3 * M, &[("z", 99)]), fine.clone()],
        ),
    )?;
    check_invalid(
        "partial in an empty range",
        "partials[0].top.window_end_ms",
        store.replace_range(T0 + M, T0 + M, &[], &[fine]),
    )?;
    check_eq!(
        everything(store)?,
        rows_before,
        "rows after rejected replace_range calls"
    );
    check_eq!(
        tops_of(store, &windows)?,
        tops_before,
        "top rows after rejected replace_range calls"
    );

    // Replacing with no partials clears every window ending in the range.
    store
        .replace_range(T0 - M, T0 + 3 * M, &[], &[])
        .map_err(err)?;
    check_eq!(
        tops_of(store, &windows)?,
        vec![None; windows.len()],
        "top rows after replace_range without partials"
    );
    Ok(())
}

/// `delete_before` drops the partials of the windows it drops, so a late
/// partial for such a window merges with nothing stale.
pub fn delete_before_drops_partial_tops(store: &dyn AggregateStore) -> CheckResult {
    store
        .apply(&WriteBatch {
            rows: rows(&[(T0 - M, "a", 0, 1)]),
            partial_tops: vec![
                partial(0, 3, 5, 0, T0, &[("a", 9)]),
                partial(1, 3, 5, 0, T0, &[("b", 5)]),
                partial(0, 3, 5, 0, T0 + M, &[("c", 3)]),
                partial(1, 3, 5, 0, T0 + M, &[("d", 2)]),
            ],
            ..WriteBatch::default()
        })
        .map_err(err)?;
    check_eq!(
        store.delete_before(T0).map_err(err)?,
        Deleted {
            count_rows: 1,
            top_rows: 1
        },
        "what delete_before(T0) removed"
    );
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        None,
        "merged top of a window ending at the cut"
    );
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("c", 3), ("d", 2)])),
        "merged top of a window ending after the cut"
    );
    // A late partial of partition 1 for the deleted window: partition 0's
    // deleted partial must not come back.
    store
        .apply(&partials_batch(vec![partial(1, 3, 5, 0, T0, &[("b", 6)])]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[("b", 6)])),
        "merged top of a deleted window after a late partial"
    );
    // The kept window's partials are all still there.
    store
        .apply(&partials_batch(vec![partial(
            0,
            3,
            5,
            0,
            T0 + M,
            &[("c", 4)],
        )]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0 + M).map_err(err)?,
        Some(top_row(5, 0, T0 + M, &[("c", 4), ("d", 2)])),
        "merged top of a kept window after an upsert"
    );
    check_eq!(
        store.delete_before(T0).map_err(err)?,
        Deleted {
            count_rows: 0,
            top_rows: 1
        },
        "delete_before(T0) after the late partial"
    );
    Ok(())
}

/// Invalid partial tops are rejected as `InvalidArgument` naming the
/// element and field, by `apply` and `replace_range`, and change nothing.
pub fn bad_partial_tops_name_the_parameter(store: &dyn AggregateStore) -> CheckResult {
    let good = partial(0, 3, 5, 0, T0, &[("a", 1)]);
    store
        .apply(&WriteBatch {
            rows: rows(&[(T0, "a", 0, 1)]),
            partial_tops: vec![good.clone()],
            ..WriteBatch::default()
        })
        .map_err(err)?;
    let with_top = |change: fn(&mut TopRow)| {
        let mut bad = good.clone();
        change(&mut bad.top);
        bad
    };
    let zero_limit = PartialTop {
        limit: 0,
        ..good.clone()
    };
    let short_counts = with_top(|top| top.counts.clear());
    let zero_window = with_top(|top| top.window_minutes = 0);
    let unaligned = with_top(|top| top.window_end_ms += 1);
    let in_range = |p: &PartialTop| PartialTop {
        top: TopRow {
            window_end_ms: p.top.window_end_ms + M,
            ..p.top.clone()
        },
        ..p.clone()
    };
    let apply_partials = |partials: Vec<PartialTop>| store.apply(&partials_batch(partials));
    let replace = |partials: &[PartialTop]| store.replace_range(T0, T0 + 2 * M, &[], partials);
    let cases: Vec<(&str, Result<(), StoreError>)> = vec![
        (
            "partial_tops[0].limit",
            apply_partials(vec![zero_limit.clone()]),
        ),
        (
            "partial_tops[1].top.counts",
            apply_partials(vec![good.clone(), short_counts.clone()]),
        ),
        (
            "partial_tops[0].top.window_minutes",
            apply_partials(vec![zero_window.clone()]),
        ),
        (
            "partial_tops[0].top.window_end_ms",
            apply_partials(vec![unaligned.clone()]),
        ),
        ("partials[0].limit", replace(&[in_range(&zero_limit)])),
        (
            "partials[1].top.counts",
            replace(&[in_range(&good), in_range(&short_counts)]),
        ),
        (
            "partials[0].top.window_minutes",
            replace(&[in_range(&zero_window)]),
        ),
        (
            "partials[0].top.window_end_ms",
            replace(&[in_range(&unaligned)]),
        ),
    ];
    for (index, (param, result)) in cases.into_iter().enumerate() {
        check_invalid(&format!("case {index}"), param, result)?;
    }
    check_eq!(
        everything(store)?,
        rows(&[(T0, "a", 0, 1)]),
        "rows after rejected partial tops"
    );
    check_eq!(
        tops_of(store, &[(5, 0, T0), (5, 0, T0 + M)])?,
        vec![Some(top_row(5, 0, T0, &[("a", 1)])), None],
        "top rows after rejected partial tops"
    );
    Ok(())
}

/// A batch with an invalid partial, or a regressed position, lands nothing:
/// no rows, top rows, positions, nor its valid partials (which would show up
/// when the window is merged again later).
pub fn a_rejected_batch_lands_no_partials(store: &dyn AggregateStore) -> CheckResult {
    let source = "ad_click_aggregates/0";
    store
        .apply(&WriteBatch {
            rows: rows(&[(T0, "a", 0, 1)]),
            partial_tops: vec![partial(0, 3, 5, 0, T0, &[("a", 1)])],
            positions: vec![SourcePosition::new(source, 5)],
            ..WriteBatch::default()
        })
        .map_err(err)?;
    let windows = [(5, 0, T0), (5, 0, T0 + M), (5, 1, T0)];
    let tops_before = tops_of(store, &windows)?;
    let rows_before = everything(store)?;
    let sneaky = partial(1, 3, 5, 0, T0, &[("z", 100)]);

    let invalid = WriteBatch {
        rows: rows(&[(T0, "a", 0, 99), (T0 + M, "n", 0, 1)]),
        tops: vec![top_row(5, 1, T0, &[("t", 1)])],
        partial_tops: vec![sneaky.clone(), partial(0, 0, 5, 0, T0 + M, &[("n", 1)])],
        positions: vec![SourcePosition::new(source, 6)],
    };
    check_invalid(
        "batch with an invalid partial",
        "partial_tops[1].limit",
        store.apply(&invalid),
    )?;
    let stale = WriteBatch {
        rows: rows(&[(T0, "a", 0, 99)]),
        partial_tops: vec![sneaky],
        positions: vec![SourcePosition::new(source, 4)],
        ..WriteBatch::default()
    };
    match store.apply(&stale) {
        Err(StoreError::PositionRegressed { .. }) => {}
        other => {
            return Err(format!(
                "stale batch with partials: expected PositionRegressed, got {other:?}"
            ))
        }
    }
    check_eq!(
        everything(store)?,
        rows_before,
        "rows after rejected batches"
    );
    check_eq!(
        tops_of(store, &windows)?,
        tops_before,
        "top rows after rejected batches"
    );
    check_eq!(
        store.position(source).map_err(err)?,
        Some(5),
        "position after rejected batches"
    );
    // Re-merging the window shows whether partition 1's partial was stored.
    store
        .apply(&partials_batch(vec![partial(0, 3, 5, 0, T0, &[("a", 2)])]))
        .map_err(err)?;
    check_eq!(
        store.top(5, 0, T0).map_err(err)?,
        Some(top_row(5, 0, T0, &[("a", 2)])),
        "merged top after rejected batches (a rejected partial was stored)"
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
            bad_parameters_name_the_parameter,
            partial_tops_merge_across_partitions,
            re_upserting_a_partial_replaces_only_its_partition,
            partial_top_limit_truncates,
            replace_range_replaces_partial_tops,
            delete_before_drops_partial_tops,
            bad_partial_tops_name_the_parameter,
            a_rejected_batch_lands_no_partials);
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
