//! Model-based test: random sequences of writes against `RedbAggregateStore`
//! and `MemoryAggregateStore` (the oracle) must give identical answers after
//! every step, including after the redb file is closed and reopened.

use std::path::Path;

use proptest::prelude::*;
use riffle_ads::{
    AggregateRow, AggregateStore, MemoryAggregateStore, RedbAggregateStore, SourcePosition, TopRow,
    WriteBatch, MINUTE_MS,
};

const ADS: &[&str] = &["a", "aa", "ab", "b", "é"];
const FILTERS: u32 = 3;
const SOURCES: &[&str] = &["ad_click_aggregates/0", "ad_click_aggregates/1"];
const WINDOWS: &[u32] = &[1, 5];
/// Minutes are `index * MINUTE_MS` for an index in this range: negative
/// instants are included on purpose (key ordering of signed integers).
const FIRST_MINUTE: i64 = -4;
const END_MINUTE: i64 = 13;

#[derive(Debug, Clone)]
enum Op {
    Apply(WriteBatch),
    Replace {
        from_ms: i64,
        to_ms: i64,
        rows: Vec<AggregateRow>,
    },
    DeleteBefore(i64),
    Reopen,
}

fn row(minutes: std::ops::Range<i64>) -> impl Strategy<Value = AggregateRow> {
    (minutes, 0..ADS.len(), 0..FILTERS, 0u64..1000).prop_map(|(minute, ad, filter, count)| {
        AggregateRow::new(minute * MINUTE_MS, ADS[ad], filter, count)
    })
}

fn top() -> impl Strategy<Value = TopRow> {
    (
        0..WINDOWS.len(),
        0..FILTERS,
        FIRST_MINUTE..END_MINUTE,
        proptest::collection::vec((0..ADS.len(), 0u64..1000), 0..4),
    )
        .prop_map(|(window, filter, end, entries)| TopRow {
            window_end_ms: end * MINUTE_MS,
            window_minutes: WINDOWS[window],
            filter_id: filter,
            ad_ids: entries.iter().map(|(ad, _)| ADS[*ad].to_string()).collect(),
            counts: entries.iter().map(|(_, count)| *count).collect(),
        })
}

fn op() -> impl Strategy<Value = Op> {
    let apply = (
        proptest::collection::vec(row(FIRST_MINUTE..END_MINUTE), 0..8),
        proptest::collection::vec(top(), 0..3),
        // Offsets are random, so some batches move a position back (or name
        // a source twice) and must be rejected by both stores alike.
        proptest::collection::vec((0..SOURCES.len(), 0u64..30), 0..3),
    )
        .prop_map(|(rows, tops, positions)| {
            Op::Apply(WriteBatch {
                rows,
                tops,
                positions: positions
                    .into_iter()
                    .map(|(source, offset)| SourcePosition::new(SOURCES[source], offset))
                    .collect(),
            })
        });
    let replace = (FIRST_MINUTE..=END_MINUTE, FIRST_MINUTE..=END_MINUTE)
        .prop_flat_map(|(a, b)| {
            let (from, to) = (a.min(b), a.max(b));
            let rows = if from < to {
                proptest::collection::vec(row(from..to), 0..8).boxed()
            } else {
                Just(Vec::new()).boxed()
            };
            (Just(from), Just(to), rows)
        })
        .prop_map(|(from, to, rows)| Op::Replace {
            from_ms: from * MINUTE_MS,
            to_ms: to * MINUTE_MS,
            rows,
        });
    prop_oneof![
        5 => apply,
        2 => replace,
        1 => (FIRST_MINUTE..=END_MINUTE).prop_map(|minute| Op::DeleteBefore(minute * MINUTE_MS)),
        1 => Just(Op::Reopen),
    ]
}

/// Both results succeeded with equal values, or both failed the same way.
fn same_outcome<T: PartialEq + std::fmt::Debug>(
    step: usize,
    redb: riffle_ads::Result<T>,
    model: riffle_ads::Result<T>,
) -> Result<(), TestCaseError> {
    match (redb, model) {
        (Ok(redb), Ok(model)) => prop_assert_eq!(redb, model, "step {}: results differ", step),
        (Err(redb), Err(model)) => {
            prop_assert_eq!(
                redb.code(),
                model.code(),
                "step {}: {} vs {}",
                step,
                redb,
                model
            );
            prop_assert_eq!(redb.to_string(), model.to_string(), "step {}", step);
        }
        (redb, model) => {
            return Err(TestCaseError::fail(format!(
                "step {step}: redb {redb:?}, model {model:?}"
            )))
        }
    }
    Ok(())
}

fn compare_reads(
    step: usize,
    redb: &dyn AggregateStore,
    model: &dyn AggregateStore,
) -> Result<(), TestCaseError> {
    let from = (FIRST_MINUTE - 1) * MINUTE_MS;
    let to = (END_MINUTE + 1) * MINUTE_MS;
    for filter in [None, Some(0), Some(1), Some(2), Some(7)] {
        same_outcome(
            step,
            redb.scan(from, to, filter),
            model.scan(from, to, filter),
        )?;
    }
    same_outcome(
        step,
        redb.scan(0, 3 * MINUTE_MS, None),
        model.scan(0, 3 * MINUTE_MS, None),
    )?;
    let edges = [FIRST_MINUTE - 1, -1, 0, 1, 4, 5, END_MINUTE - 1, END_MINUTE];
    for ad in ADS.iter().chain(&["zz"]) {
        for filter in 0..FILTERS {
            for (i, lo) in edges.iter().enumerate() {
                for hi in &edges[i..] {
                    let (lo, hi) = (lo * MINUTE_MS, hi * MINUTE_MS);
                    same_outcome(
                        step,
                        redb.count(ad, filter, lo, hi),
                        model.count(ad, filter, lo, hi),
                    )?;
                }
            }
        }
    }
    for source in SOURCES {
        same_outcome(step, redb.position(source), model.position(source))?;
    }
    for window in WINDOWS {
        for filter in 0..FILTERS {
            for at in [-MINUTE_MS - 1, 0, 5 * MINUTE_MS + 1, i64::MAX] {
                same_outcome(
                    step,
                    redb.latest_top(*window, filter, at),
                    model.latest_top(*window, filter, at),
                )?;
            }
            same_outcome(
                step,
                redb.top(*window, filter, 3 * MINUTE_MS),
                model.top(*window, filter, 3 * MINUTE_MS),
            )?;
        }
    }
    Ok(())
}

fn open(path: &Path) -> RedbAggregateStore {
    RedbAggregateStore::open(path).expect("open redb store")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redb_matches_the_memory_model(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aggregates.redb");
        let mut redb = open(&path);
        let model = MemoryAggregateStore::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Apply(batch) => same_outcome(step, redb.apply(batch), model.apply(batch))?,
                Op::Replace { from_ms, to_ms, rows } => same_outcome(
                    step,
                    redb.replace_range(*from_ms, *to_ms, rows),
                    model.replace_range(*from_ms, *to_ms, rows),
                )?,
                Op::DeleteBefore(minute_ms) => same_outcome(
                    step,
                    redb.delete_before(*minute_ms),
                    model.delete_before(*minute_ms),
                )?,
                Op::Reopen => {
                    drop(redb);
                    redb = open(&path);
                }
            }
            compare_reads(step, &redb, &model)?;
        }
    }
}
