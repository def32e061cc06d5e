//! Model-based test: random sequences of writes against `RedbAggregateStore`
//! and `MemoryAggregateStore` (the oracle) must give identical answers after
//! every step, including after the redb file is closed and reopened. Top rows
//! are also checked against a brute-force [`TopOracle`] that re-derives every
//! merged top by sorting all ads of the window's stored partials, without
//! `merge_partials` or `rank_cmp`.

use riffle_core::HasCode;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use riffle_ads::{
    merge_partials, AggregateRow, AggregateStore, MemoryAggregateStore, PartialTop,
    RedbAggregateStore, SourcePosition, TopRow, WriteBatch, MINUTE_MS,
};

const ADS: &[&str] = &["a", "aa", "ab", "b", "é"];
const FILTERS: u32 = 3;
const SOURCES: &[&str] = &["ad_click_aggregates/0", "ad_click_aggregates/1"];
const WINDOWS: &[u32] = &[1, 5];
/// Minutes are `index * MINUTE_MS` for an index in this range: negative
/// instants are included on purpose (key ordering of signed integers).
const FIRST_MINUTE: i64 = -4;
const END_MINUTE: i64 = 13;
/// The ads of each input partition (an ad lives in exactly one partition,
/// as in the pipeline); the index is the partition.
const PARTITION_ADS: &[&[&str]] = &[&["a", "é"], &["aa", "b"], &["ab", "ba", "c"]];
/// Partial tops of `apply` end in this narrow range of minutes, so several
/// partitions often meet in one window.
const PARTIAL_FIRST_MINUTE: i64 = -1;
const PARTIAL_END_MINUTE: i64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Apply(WriteBatch),
    Replace {
        from_ms: i64,
        to_ms: i64,
        rows: Vec<AggregateRow>,
        partials: Vec<PartialTop>,
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

/// A partial top of one partition ending at a minute drawn from `end`. Its
/// entries are in ad order, not ranked (the store must not rely on the
/// order), with few distinct counts so ties are common; one in twenty has the
/// invalid limit 0.
fn partial(end: impl Strategy<Value = i64>) -> impl Strategy<Value = PartialTop> {
    let limit = prop_oneof![19 => 1u32..5, 1 => Just(0u32)];
    (
        0..PARTITION_ADS.len(),
        limit,
        0..WINDOWS.len(),
        0..FILTERS,
        end,
    )
        .prop_flat_map(|(partition, limit, window, filter, end)| {
            let ads = PARTITION_ADS[partition];
            (
                Just((partition, limit, window, filter, end)),
                proptest::collection::btree_map(0..ads.len(), 0u64..5, 0..=ads.len()),
            )
        })
        .prop_map(|((partition, limit, window, filter, end), entries)| {
            let ads = PARTITION_ADS[partition];
            PartialTop {
                partition: partition as u32,
                limit,
                top: TopRow {
                    window_end_ms: end * MINUTE_MS,
                    window_minutes: WINDOWS[window],
                    filter_id: filter,
                    ad_ids: entries.keys().map(|ad| ads[*ad].to_string()).collect(),
                    counts: entries.values().copied().collect(),
                },
            }
        })
}

/// Up to four partial tops for `apply`; half the time all of one window, so
/// that several partitions meet (and tie) in it.
fn same_window_partials() -> impl Strategy<Value = Vec<PartialTop>> {
    (
        proptest::collection::vec(partial(PARTIAL_FIRST_MINUTE..PARTIAL_END_MINUTE), 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut partials, same_window)| {
            if let (true, Some(first)) = (same_window, partials.first().cloned()) {
                for partial in &mut partials {
                    partial.top.window_minutes = first.top.window_minutes;
                    partial.top.filter_id = first.top.filter_id;
                    partial.top.window_end_ms = first.top.window_end_ms;
                }
            }
            partials
        })
}

fn op() -> impl Strategy<Value = Op> {
    let apply = (
        proptest::collection::vec(row(FIRST_MINUTE..END_MINUTE), 0..8),
        proptest::collection::vec(top(), 0..3),
        same_window_partials(),
        // Offsets are random, so some batches move a position back (or name
        // a source twice) and must be rejected by both stores alike.
        proptest::collection::vec((0..SOURCES.len(), 0u64..30), 0..3),
    )
        .prop_map(|(rows, tops, partial_tops, positions)| {
            Op::Apply(WriteBatch {
                partial_tops,
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
            // Window ends in (from, to], and now and then one just outside
            // it, which both stores must reject.
            let end = if from < to {
                prop_oneof![18 => from + 1..=to, 1 => Just(from), 1 => Just(to + 1)].boxed()
            } else {
                Just(to + 1).boxed()
            };
            let partial_count = if from < to { 0..4 } else { 0..2 };
            let partials = proptest::collection::vec(partial(end), partial_count);
            (Just(from), Just(to), rows, partials)
        })
        .prop_map(|(from, to, rows, partials)| Op::Replace {
            from_ms: from * MINUTE_MS,
            to_ms: to * MINUTE_MS,
            rows,
            partials,
        });
    // Partials alone too: most `apply` batches above are rejected for a
    // regressed position, and partials must pile up in windows to merge.
    let apply_partials = same_window_partials().prop_map(|partial_tops| {
        Op::Apply(WriteBatch {
            partial_tops,
            ..WriteBatch::default()
        })
    });
    prop_oneof![
        5 => apply,
        3 => apply_partials,
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

type WindowKey = (u32, u32, i64);

fn window_of(top: &TopRow) -> WindowKey {
    (top.window_minutes, top.filter_id, top.window_end_ms)
}

/// What the top row of every window must be, derived by brute force from the
/// operations that succeeded: a plain `tops` row as written; a window with
/// partials gets all ads of all its partials sorted by (count desc, ad asc),
/// cut at the greatest limit.
#[derive(Debug, Default)]
struct TopOracle {
    partials: BTreeMap<(WindowKey, u32), PartialTop>,
    tops: BTreeMap<WindowKey, TopRow>,
    /// Every window that ever had a top row or partial.
    seen: BTreeSet<WindowKey>,
}

impl TopOracle {
    fn brute_force(&self, window: WindowKey) -> Option<TopRow> {
        let partials: Vec<&PartialTop> = self
            .partials
            .iter()
            .filter(|((key, _), _)| *key == window)
            .map(|(_, partial)| partial)
            .collect();
        let limit = partials.iter().map(|partial| partial.limit).max()? as usize;
        let mut all: Vec<(Reverse<u64>, &str)> = partials
            .iter()
            .flat_map(|partial| partial.top.ad_ids.iter().zip(&partial.top.counts))
            .map(|(ad, count)| (Reverse(*count), ad.as_str()))
            .collect();
        all.sort();
        all.truncate(limit);
        Some(TopRow {
            window_end_ms: window.2,
            window_minutes: window.0,
            filter_id: window.1,
            ad_ids: all.iter().map(|(_, ad)| ad.to_string()).collect(),
            counts: all.iter().map(|(Reverse(count), _)| *count).collect(),
        })
    }

    fn put_partials(&mut self, partials: &[PartialTop], mut touched: BTreeSet<WindowKey>) {
        for partial in partials {
            let window = window_of(&partial.top);
            self.partials
                .insert((window, partial.partition), partial.clone());
            touched.insert(window);
        }
        for window in touched {
            self.seen.insert(window);
            match self.brute_force(window) {
                Some(top) => self.tops.insert(window, top),
                None => self.tops.remove(&window),
            };
        }
    }

    fn apply(&mut self, batch: &WriteBatch) {
        for top in &batch.tops {
            self.seen.insert(window_of(top));
            self.tops.insert(window_of(top), top.clone());
        }
        self.put_partials(&batch.partial_tops, BTreeSet::new());
    }

    fn replace_range(&mut self, from_ms: i64, to_ms: i64, partials: &[PartialTop]) {
        let in_range = |end: i64| end > from_ms && end <= to_ms;
        let touched: BTreeSet<WindowKey> = self
            .tops
            .keys()
            .copied()
            .chain(self.partials.keys().map(|(window, _)| *window))
            .filter(|window| in_range(window.2))
            .collect();
        self.partials.retain(|(window, _), _| !in_range(window.2));
        self.tops.retain(|window, _| !in_range(window.2));
        self.put_partials(partials, touched);
    }

    fn delete_before(&mut self, minute_ms: i64) {
        self.partials.retain(|(window, _), _| window.2 > minute_ms);
        self.tops.retain(|window, _| window.2 > minute_ms);
    }
}

/// Every window's top row in both stores equals the brute-force oracle's.
fn compare_tops(
    step: usize,
    redb: &dyn AggregateStore,
    model: &dyn AggregateStore,
    oracle: &TopOracle,
) -> Result<(), TestCaseError> {
    for &(window, filter, end) in &oracle.seen {
        let expected = oracle.tops.get(&(window, filter, end)).cloned();
        let redb_top = redb.top(window, filter, end);
        let model_top = model.top(window, filter, end);
        prop_assert_eq!(
            model_top.as_ref().ok(),
            Some(&expected),
            "step {}: top({}, {}, {}) of the memory store vs brute force",
            step,
            window,
            filter,
            end
        );
        same_outcome(step, redb_top, model_top)?;
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
        let mut oracle = TopOracle::default();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Apply(batch) => {
                    let outcome = model.apply(batch);
                    if outcome.is_ok() {
                        oracle.apply(batch);
                    }
                    same_outcome(step, redb.apply(batch), outcome)?;
                }
                Op::Replace { from_ms, to_ms, rows, partials } => {
                    let outcome = model.replace_range(*from_ms, *to_ms, rows, partials);
                    if outcome.is_ok() {
                        oracle.replace_range(*from_ms, *to_ms, partials);
                    }
                    same_outcome(
                        step,
                        redb.replace_range(*from_ms, *to_ms, rows, partials),
                        outcome,
                    )?;
                }
                Op::DeleteBefore(minute_ms) => {
                    let outcome = model.delete_before(*minute_ms);
                    if outcome.is_ok() {
                        oracle.delete_before(*minute_ms);
                    }
                    same_outcome(step, redb.delete_before(*minute_ms), outcome)?;
                }
                Op::Reopen => {
                    drop(redb);
                    redb = open(&path);
                }
            }
            compare_reads(step, &redb, &model)?;
            compare_tops(step, &redb, &model, &oracle)?;
        }
    }
}

/// Partials of one window, one per partition (random limits and entries),
/// in any order.
fn window_partials() -> impl Strategy<Value = Vec<PartialTop>> {
    let partitions = PARTITION_ADS
        .iter()
        .map(|ads| {
            (
                any::<bool>(),
                1u32..5,
                proptest::collection::btree_map(0..ads.len(), 0u64..5, 0..=ads.len()),
            )
        })
        .collect::<Vec<_>>();
    partitions
        .prop_map(|partitions| {
            partitions
                .into_iter()
                .enumerate()
                .filter(|(_, (present, _, _))| *present)
                .map(|(partition, (_, limit, entries))| PartialTop {
                    partition: partition as u32,
                    limit,
                    top: TopRow {
                        window_end_ms: 7 * MINUTE_MS,
                        window_minutes: 5,
                        filter_id: 1,
                        ad_ids: entries
                            .keys()
                            .map(|ad| PARTITION_ADS[partition][*ad].to_string())
                            .collect(),
                        counts: entries.values().copied().collect(),
                    },
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `merge_partials` is the brute-force top-N of the union of the
    /// partials, whatever order they come in.
    #[test]
    fn merge_partials_is_the_top_n_of_the_union(partials in window_partials()) {
        let mut oracle = TopOracle::default();
        oracle.put_partials(&partials, BTreeSet::new());
        let expected = oracle.brute_force((5, 1, 7 * MINUTE_MS));
        prop_assert_eq!(expected.is_some(), !partials.is_empty());
        prop_assert_eq!(merge_partials(&partials), expected.clone());
        let reversed: Vec<PartialTop> = partials.iter().rev().cloned().collect();
        prop_assert_eq!(merge_partials(&reversed), expected);
    }
}
