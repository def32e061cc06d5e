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
    pub positions: Vec<SourcePosition>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tops.is_empty() && self.positions.is_empty()
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

    /// In one transaction, deletes every count row with a minute in
    /// `[from_ms, to_ms)` (all ads, all filters) and inserts `rows`, which must
    /// all lie in that range (recalculation). Top rows are not touched.
    fn replace_range(&self, from_ms: i64, to_ms: i64, rows: &[AggregateRow]) -> Result<()>;

    /// Retention: deletes every count row with a minute before `minute_ms`
    /// and every top row whose window ends at or before it (the window lies
    /// wholly before the cut). Positions are kept.
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

pub(crate) fn check_replace_rows(from_ms: i64, to_ms: i64, rows: &[AggregateRow]) -> Result<()> {
    check_range(from_ms, to_ms)?;
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
}
