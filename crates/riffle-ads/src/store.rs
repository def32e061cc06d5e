//! The aggregate store contract: types, the [`AggregateStore`] trait and the
//! argument validation every backend shares (so all backends reject exactly
//! the same inputs with exactly the same parameter names).

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// One minute in epoch milliseconds; every count row and every window edge is
/// a multiple of it.
pub const MINUTE_MS: i64 = 60_000;

/// The `filter_id` of the unfiltered count of an ad.
pub const NO_FILTER: u32 = 0;

/// The key of one per-minute click count: the minute `[minute_start_ms,
/// minute_start_ms + 60 s)`, the ad, and the predefined filter
/// ([`NO_FILTER`] = every click of the ad).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggKey {
    pub minute_start_ms: i64,
    pub ad_id: String,
    pub filter_id: u32,
}

impl AggKey {
    pub fn new(minute_start_ms: i64, ad_id: impl Into<String>, filter_id: u32) -> Self {
        AggKey {
            minute_start_ms,
            ad_id: ad_id.into(),
            filter_id,
        }
    }
}

/// The full (absolute) click count of one key. Writing a row replaces the
/// stored count, so re-applying a row after a restart never double counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateRow {
    pub key: AggKey,
    pub count: u64,
}

impl AggregateRow {
    pub fn new(minute_start_ms: i64, ad_id: impl Into<String>, filter_id: u32, count: u64) -> Self {
        AggregateRow {
            key: AggKey::new(minute_start_ms, ad_id, filter_id),
            count,
        }
    }
}

/// The most clicked ads over the `window_minutes` minutes ending (exclusive)
/// at `window_end_ms`, for one filter. `ad_ids[i]` has `counts[i]` clicks;
/// the store keeps the order it is given (the pipeline writes it descending).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopRow {
    pub window_end_ms: i64,
    pub window_minutes: u32,
    pub filter_id: u32,
    pub ad_ids: Vec<String>,
    pub counts: Vec<u64>,
}

/// One partition's top-N of a window: the ads of that input partition only.
/// Because every click of an ad lands in the partition of its `ad_id`, the
/// global top-N of a window is exactly the top-N of the union of the
/// partitions' partial top-Ns (the reduce step). The store keeps the partials
/// and maintains the merged [`TopRow`] from them in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialTop {
    pub partition: u32,
    /// How many entries the merged top keeps (the pipeline's `top_n`).
    pub limit: u32,
    pub top: TopRow,
}

/// Ranks `(count, ad_id)` pairs: more clicks first, then ad id ascending, so
/// ties have one deterministic order everywhere (pipeline, store, oracle).
pub fn rank_cmp(a: (u64, &str), b: (u64, &str)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

/// Merges partial tops of one window into the global top (the reduce step).
/// `None` when there are no partials. An ad listed by several partials (only
/// possible if the input was repartitioned) gets the sum of its counts
/// rather than two entries.
pub fn merge_partials<'a>(partials: impl IntoIterator<Item = &'a PartialTop>) -> Option<TopRow> {
    let mut merged: Option<TopRow> = None;
    let mut limit = 0usize;
    let mut by_ad: std::collections::BTreeMap<&'a str, u64> = std::collections::BTreeMap::new();
    for partial in partials {
        limit = limit.max(partial.limit as usize);
        if merged.is_none() {
            merged = Some(TopRow {
                ad_ids: Vec::new(),
                counts: Vec::new(),
                ..partial.top.clone()
            });
        }
        for (ad, count) in partial.top.ad_ids.iter().zip(&partial.top.counts) {
            *by_ad.entry(ad.as_str()).or_default() += *count;
        }
    }
    let mut merged = merged?;
    let mut entries: Vec<(u64, &'a str)> = by_ad.into_iter().map(|(ad, c)| (c, ad)).collect();
    entries.sort_by(|a, b| rank_cmp(*a, *b));
    entries.truncate(limit);
    merged.ad_ids = entries.iter().map(|(_, ad)| ad.to_string()).collect();
    merged.counts = entries.iter().map(|(count, _)| *count).collect();
    Some(merged)
}

/// How far a writer has consumed one input, e.g. source
/// `"ad_click_aggregates/3"` (topic/partition). `offset` is the *next*
/// offset to read (Kafka's committed-offset convention): after a crash the
/// writer resumes exactly there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub source: String,
    pub offset: u64,
}

impl SourcePosition {
    pub fn new(source: impl Into<String>, offset: u64) -> Self {
        SourcePosition {
            source: source.into(),
            offset,
        }
    }
}

/// Everything one [`AggregateStore::apply`] commits atomically. Within a
/// batch, a later row (or top row) with the same key wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBatch {
    pub rows: Vec<AggregateRow>,
    pub tops: Vec<TopRow>,
    /// Upserted per (window, partition); the merged top of every window they
    /// touch is recomputed from all its stored partials in the same
    /// transaction (after `tops`, so it wins over a `tops` row of the same
    /// window).
    pub partial_tops: Vec<PartialTop>,
    pub positions: Vec<SourcePosition>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.tops.is_empty()
            && self.partial_tops.is_empty()
            && self.positions.is_empty()
    }
}

/// What [`AggregateStore::delete_before`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub count_rows: u64,
    pub top_rows: u64,
}

/// Storage of per-minute click counts, top-N rows and writer positions.
///
/// Methods are synchronous and may block on disk; async callers use
/// `tokio::task::spawn_blocking`. Every method is atomic: a reader sees a
/// write (an [`apply`](Self::apply), [`replace_range`](Self::replace_range)
/// or [`delete_before`](Self::delete_before)) entirely or not at all.
pub trait AggregateStore: Send + Sync {
    /// Upserts the batch's count rows and top rows and records its source
    /// positions, all in one transaction. Fails without changing anything
    /// if an argument is invalid or a position would move backwards
    /// ([`StoreError::PositionRegressed`]); an equal position is accepted, so
    /// re-applying a batch is harmless.
    fn apply(&self, batch: &WriteBatch) -> Result<()>;

    /// The stored position of `source`, `None` if it never wrote.
    fn position(&self, source: &str) -> Result<Option<u64>>;

    /// The sum of the counts of `(ad_id, filter_id)` over the minutes in
    /// `[from_ms, to_ms)`; both minute-aligned, `from_ms <= to_ms`. An unknown
    /// ad counts 0.
    fn count(&self, ad_id: &str, filter_id: u32, from_ms: i64, to_ms: i64) -> Result<u64>;

    /// The top row of exactly this window.
    fn top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        window_end_ms: i64,
    ) -> Result<Option<TopRow>>;

    /// The top row of this `(window_minutes, filter_id)` with the greatest
    /// `window_end_ms <= at_or_before_ms` (which need not be aligned).
    fn latest_top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        at_or_before_ms: i64,
    ) -> Result<Option<TopRow>>;

    /// Every count row with a minute in `[from_ms, to_ms)` (and the given
    /// filter, if any), ordered by `(minute, ad_id, filter_id)`. The result is
    /// materialised: callers (reconcile) walk long ranges in chunks.
    fn scan(&self, from_ms: i64, to_ms: i64, filter: Option<u32>) -> Result<Vec<AggregateRow>>;

    /// In one transaction (recalculation): deletes every count row with a
    /// minute in `[from_ms, to_ms)` (all ads, all filters) and inserts `rows`,
    /// which must all lie in that range; deletes every partial top and top
    /// row whose window ends in `(from_ms, to_ms]`, inserts `partials` (which
    /// must all end there) and recomputes the merged tops of those windows.
    fn replace_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        rows: &[AggregateRow],
        partials: &[PartialTop],
    ) -> Result<()>;

    /// Retention: deletes every count row with a minute before `minute_ms`
    /// and every top row and partial top whose window ends at or before it
    /// (the window lies wholly before the cut). Positions are kept.
    fn delete_before(&self, minute_ms: i64) -> Result<Deleted>;
}

fn check_aligned(param: &str, ms: i64) -> Result<()> {
    if ms.rem_euclid(MINUTE_MS) != 0 {
        return Err(StoreError::invalid(
            param,
            format!("must be a multiple of {MINUTE_MS} ms (minute-aligned), got {ms}"),
        ));
    }
    Ok(())
}

fn check_ad_id(param: &str, ad_id: &str) -> Result<()> {
    if ad_id.is_empty() {
        return Err(StoreError::invalid(param, "must not be empty"));
    }
    Ok(())
}

fn check_window_minutes(param: &str, window_minutes: u32) -> Result<()> {
    if window_minutes == 0 {
        return Err(StoreError::invalid(param, "must be at least 1"));
    }
    Ok(())
}

/// `[from_ms, to_ms)` with both ends minute-aligned and `from_ms <= to_ms`.
pub(crate) fn check_range(from_ms: i64, to_ms: i64) -> Result<()> {
    check_aligned("from_ms", from_ms)?;
    check_aligned("to_ms", to_ms)?;
    if from_ms > to_ms {
        return Err(StoreError::invalid(
            "to_ms",
            format!("must not be before from_ms ({from_ms}), got {to_ms}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_count_args(ad_id: &str, from_ms: i64, to_ms: i64) -> Result<()> {
    check_ad_id("ad_id", ad_id)?;
    check_range(from_ms, to_ms)
}

pub(crate) fn check_top_args(window_minutes: u32, window_end_ms: i64) -> Result<()> {
    check_window_minutes("window_minutes", window_minutes)?;
    check_aligned("window_end_ms", window_end_ms)
}

pub(crate) fn check_latest_top_args(window_minutes: u32) -> Result<()> {
    check_window_minutes("window_minutes", window_minutes)
}

pub(crate) fn check_delete_before(minute_ms: i64) -> Result<()> {
    check_aligned("minute_ms", minute_ms)
}

fn check_row(index: usize, row: &AggregateRow) -> Result<()> {
    check_aligned(
        &format!("rows[{index}].key.minute_start_ms"),
        row.key.minute_start_ms,
    )?;
    check_ad_id(&format!("rows[{index}].key.ad_id"), &row.key.ad_id)
}

pub(crate) fn check_batch(batch: &WriteBatch) -> Result<()> {
    for (index, row) in batch.rows.iter().enumerate() {
        check_row(index, row)?;
    }
    for (index, top) in batch.tops.iter().enumerate() {
        check_window_minutes(&format!("tops[{index}].window_minutes"), top.window_minutes)?;
        check_aligned(&format!("tops[{index}].window_end_ms"), top.window_end_ms)?;
        if top.ad_ids.len() != top.counts.len() {
            return Err(StoreError::invalid(
                format!("tops[{index}].counts"),
                format!(
                    "has {} entries but ad_ids has {}",
                    top.counts.len(),
                    top.ad_ids.len()
                ),
            ));
        }
    }
    for (index, partial) in batch.partial_tops.iter().enumerate() {
        check_partial(&format!("partial_tops[{index}]"), partial)?;
    }
    for (index, position) in batch.positions.iter().enumerate() {
        let param = format!("positions[{index}].source");
        if position.source.is_empty() {
            return Err(StoreError::invalid(param, "must not be empty"));
        }
        if batch.positions[..index]
            .iter()
            .any(|earlier| earlier.source == position.source)
        {
            return Err(StoreError::invalid(
                param,
                format!("\"{}\" appears more than once", position.source),
            ));
        }
    }
    Ok(())
}

fn check_partial(param: &str, partial: &PartialTop) -> Result<()> {
    let top = &partial.top;
    check_window_minutes(&format!("{param}.top.window_minutes"), top.window_minutes)?;
    check_aligned(&format!("{param}.top.window_end_ms"), top.window_end_ms)?;
    if partial.limit == 0 {
        return Err(StoreError::invalid(
            format!("{param}.limit"),
            "must be at least 1",
        ));
    }
    if top.ad_ids.len() != top.counts.len() {
        return Err(StoreError::invalid(
            format!("{param}.top.counts"),
            format!(
                "has {} entries but ad_ids has {}",
                top.counts.len(),
                top.ad_ids.len()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_replace_rows(
    from_ms: i64,
    to_ms: i64,
    rows: &[AggregateRow],
    partials: &[PartialTop],
) -> Result<()> {
    check_range(from_ms, to_ms)?;
    for (index, partial) in partials.iter().enumerate() {
        let param = format!("partials[{index}]");
        check_partial(&param, partial)?;
        let end = partial.top.window_end_ms;
        if end <= from_ms || end > to_ms {
            return Err(StoreError::invalid(
                format!("{param}.top.window_end_ms"),
                format!("{end} is outside the replaced window ends ({from_ms}, {to_ms}]"),
            ));
        }
    }
    for (index, row) in rows.iter().enumerate() {
        check_row(index, row)?;
        let minute = row.key.minute_start_ms;
        if minute < from_ms || minute >= to_ms {
            return Err(StoreError::invalid(
                format!("rows[{index}].key.minute_start_ms"),
                format!("{minute} is outside the replaced range [{from_ms}, {to_ms})"),
            ));
        }
    }
    Ok(())
}

/// Fails if `given` would move a stored position backwards.
pub(crate) fn check_position(source: &str, stored: Option<u64>, given: u64) -> Result<()> {
    match stored {
        Some(stored) if stored > given => Err(StoreError::PositionRegressed {
            source_name: source.to_string(),
            stored,
            given,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_accepts_negative_minutes_and_rejects_offsets() {
        assert!(check_range(-MINUTE_MS, 0).is_ok());
        assert_eq!(check_range(-1, 0).unwrap_err().param(), Some("from_ms"));
        assert_eq!(
            check_range(0, MINUTE_MS + 1).unwrap_err().param(),
            Some("to_ms")
        );
        assert_eq!(
            check_range(MINUTE_MS, 0).unwrap_err().param(),
            Some("to_ms")
        );
    }

    #[test]
    fn batch_errors_name_the_element() {
        let mut batch = WriteBatch::default();
        batch.rows.push(AggregateRow::new(0, "a", 0, 1));
        batch.rows.push(AggregateRow::new(0, "", 0, 1));
        assert_eq!(
            check_batch(&batch).unwrap_err().param(),
            Some("rows[1].key.ad_id")
        );
        batch.rows.pop();
        batch.positions.push(SourcePosition::new("t/0", 1));
        batch.positions.push(SourcePosition::new("t/0", 2));
        assert_eq!(
            check_batch(&batch).unwrap_err().param(),
            Some("positions[1].source")
        );
    }

    fn partial(partition: u32, limit: u32, ads: &[(&str, u64)]) -> PartialTop {
        PartialTop {
            partition,
            limit,
            top: TopRow {
                window_end_ms: 7 * MINUTE_MS,
                window_minutes: 5,
                filter_id: 2,
                ad_ids: ads.iter().map(|(ad, _)| ad.to_string()).collect(),
                counts: ads.iter().map(|(_, count)| *count).collect(),
            },
        }
    }

    #[test]
    fn rank_cmp_orders_by_count_desc_then_ad_id_asc() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        assert_eq!(rank_cmp((5, "z"), (3, "a")), Less);
        assert_eq!(rank_cmp((3, "a"), (5, "z")), Greater);
        assert_eq!(rank_cmp((3, "a"), (3, "b")), Less);
        assert_eq!(rank_cmp((3, "b"), (3, "a")), Greater);
        assert_eq!(rank_cmp((3, "a"), (3, "a")), Equal);
        // Byte order of ad ids, as the stores' keys use: "B" < "a" < "aa".
        let mut entries = vec![(0, "x"), (7, "aa"), (7, "a"), (u64::MAX, "m"), (7, "B")];
        entries.sort_by(|a, b| rank_cmp(*a, *b));
        assert_eq!(
            entries,
            vec![(u64::MAX, "m"), (7, "B"), (7, "a"), (7, "aa"), (0, "x")]
        );
    }

    #[test]
    fn merge_partials_is_the_ranked_union_cut_at_the_greatest_limit() {
        assert_eq!(merge_partials(&[]), None);

        // Ties across partitions against partition order, and at the cut.
        let partials = [
            partial(0, 2, &[("e", 5), ("a", 9)]),
            partial(1, 4, &[("c", 8)]),
            partial(2, 3, &[("d", 5), ("b", 8), ("f", 1)]),
        ];
        let merged = merge_partials(&partials).expect("partials given");
        assert_eq!(
            (
                merged.window_minutes,
                merged.filter_id,
                merged.window_end_ms
            ),
            (5, 2, 7 * MINUTE_MS),
            "the window comes from the partials"
        );
        assert_eq!(merged.ad_ids, ["a", "b", "c", "d"]);
        assert_eq!(merged.counts, [9, 8, 8, 5]);
        let mut reversed = partials.clone();
        reversed.reverse();
        assert_eq!(merge_partials(&reversed), Some(merged));

        // A limit above the union keeps all of it; limit 1 keeps the best.
        let all = merge_partials(&[partial(0, 10, &[("b", 1)]), partial(1, 1, &[("a", 1)])])
            .expect("partials given");
        assert_eq!(all.ad_ids, ["a", "b"]);
        let one = merge_partials(&[partial(0, 1, &[("b", 2), ("c", 3)]), partial(1, 1, &[])])
            .expect("partials given");
        assert_eq!((one.ad_ids, one.counts), (vec!["c".to_string()], vec![3]));

        // Partials without entries still make an (empty) top row.
        let empty = merge_partials(&[partial(0, 3, &[])]).expect("partials given");
        assert!(empty.ad_ids.is_empty() && empty.counts.is_empty());
    }

    #[test]
    fn partial_top_errors_name_the_field() {
        let good = partial(0, 3, &[("a", 1)]);
        let mut batch = WriteBatch {
            partial_tops: vec![
                good.clone(),
                PartialTop {
                    limit: 0,
                    ..good.clone()
                },
            ],
            ..WriteBatch::default()
        };
        assert_eq!(
            check_batch(&batch).unwrap_err().param(),
            Some("partial_tops[1].limit")
        );
        batch.partial_tops[1].limit = 1;
        batch.partial_tops[1].top.counts.push(2);
        assert_eq!(
            check_batch(&batch).unwrap_err().param(),
            Some("partial_tops[1].top.counts")
        );
        let end = good.top.window_end_ms;
        assert!(check_replace_rows(end - MINUTE_MS, end, &[], std::slice::from_ref(&good)).is_ok());
        assert_eq!(
            check_replace_rows(end, end + MINUTE_MS, &[], &[good])
                .unwrap_err()
                .param(),
            Some("partials[0].top.window_end_ms")
        );
    }
}
