//! [`RedbAggregateStore`]: the embedded aggregate store, one redb file.
//!
//! # On-disk format (version 1)
//!
//! | table | key | value | serves |
//! |---|---|---|---|
//! | `counts_by_ad_filter_minute` | `(ad_id: &str, filter_id: u32, minute_ms: i64)` | `count: u64` | `count`: one contiguous range scan per query |
//! | `counts_by_minute_ad_filter` | `(minute_ms: i64, ad_id: &str, filter_id: u32)` | `count: u64` | `scan`, `replace_range`, `delete_before`: contiguous by time |
//! | `top_by_window_filter_end` | `(window_minutes: u32, filter_id: u32, window_end_ms: i64)` | JSON `{"ad_ids":[..],"counts":[..]}` | `top`, `latest_top` (reverse range scan) |
//! | `partial_top_by_window_filter_end_partition` | `(window_minutes: u32, filter_id: u32, window_end_ms: i64, partition: u32)` | JSON `{"limit":n,"ad_ids":[..],"counts":[..]}` | the reduce step: the merged top row of a window is recomputed from its partials in the transaction that changes one |
//! | `source_positions` | `source: &str` | next offset to read: `u64` | exactly-once resume of writers |
//! | `meta` | `&str` | `u64` | `format_version` = 1 |
//!
//! Invariants:
//! * The two count tables hold exactly the same set of `(minute, ad, filter)
//!   → count` entries. Both are written (and deleted) in the same write
//!   transaction, so no reader ever sees them disagree. The count is stored in
//!   both (instead of a bare index in the second) so a time-range `scan` reads
//!   one table sequentially; the price is twice the bytes per row.
//! * Every minute is a multiple of 60 000 ms; every key's `ad_id` is non-empty.
//! * A source position only moves forward, and is written in the same
//!   transaction as the rows it covers.
//! * A window that has partial tops has the top row [`merge_partials`]
//!   computes from them; both change in the same transaction.
//!
//! Durability: every write transaction commits with redb's default
//! `Durability::Immediate`, i.e. the data is fsynced before `apply`,
//! `replace_range` or `delete_before` returns. Readers use MVCC snapshots
//! (one read transaction per call), so they never block the writer and see a
//! write entirely or not at all. redb serialises writers.
//!
//! Cost: `delete_before` walks all top rows (they are few: one per
//! configured window × filter × minute of retention).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::store::{
    check_batch, check_count_args, check_delete_before, check_latest_top_args, check_position,
    check_range, check_replace_rows, check_top_args, merge_partials, AggregateRow, AggregateStore,
    Deleted, PartialTop, TopRow, WriteBatch,
};

const COUNTS_BY_AD: TableDefinition<(&str, u32, i64), u64> =
    TableDefinition::new("counts_by_ad_filter_minute");
const COUNTS_BY_MINUTE: TableDefinition<(i64, &str, u32), u64> =
    TableDefinition::new("counts_by_minute_ad_filter");
const TOPS: TableDefinition<(u32, u32, i64), &[u8]> =
    TableDefinition::new("top_by_window_filter_end");
const PARTIALS: TableDefinition<(u32, u32, i64, u32), &[u8]> =
    TableDefinition::new("partial_top_by_window_filter_end_partition");
const POSITIONS: TableDefinition<&str, u64> = TableDefinition::new("source_positions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
const FORMAT_VERSION_KEY: &str = "format_version";

#[derive(Serialize, Deserialize)]
struct TopValue {
    ad_ids: Vec<String>,
    counts: Vec<u64>,
}

/// The embedded [`AggregateStore`] in one redb file; see the module docs for
/// the format.
pub struct RedbAggregateStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbAggregateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbAggregateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbAggregateStore {
    /// Opens the store at `path`, creating the file and its tables if absent.
    /// Fails with [`StoreError::IncompatibleFormat`] for another format
    /// version, and with an `Unavailable` storage error if another handle
    /// (in this or another process) has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| StoreError::Storage {
            path: path.clone(),
            operation: "open",
            source: Box::new(e.into()),
        })?;
        let store = RedbAggregateStore { db, path };
        store.init()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn op(&self, operation: &'static str) -> Op<'_> {
        Op {
            path: &self.path,
            operation,
        }
    }

    /// Creates the tables and checks (or writes) the format version.
    fn init(&self) -> Result<()> {
        let op = self.op("open");
        let txn = self.db.begin_write().at(&op)?;
        {
            txn.open_table(COUNTS_BY_AD).at(&op)?;
            txn.open_table(COUNTS_BY_MINUTE).at(&op)?;
            txn.open_table(TOPS).at(&op)?;
            txn.open_table(PARTIALS).at(&op)?;
            txn.open_table(POSITIONS).at(&op)?;
            let mut meta = txn.open_table(META).at(&op)?;
            let found = meta
                .get(FORMAT_VERSION_KEY)
                .at(&op)?
                .map(|guard| guard.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::IncompatibleFormat {
                        path: self.path.clone(),
                        found,
                        expected: FORMAT_VERSION,
                    })
                }
                None => {
                    meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION).at(&op)?;
                }
            }
        }
        txn.commit().at(&op)
    }

    fn decode_top(&self, key: (u32, u32, i64), bytes: &[u8]) -> Result<TopRow> {
        let (window_minutes, filter_id, window_end_ms) = key;
        let value: TopValue = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!(
                "top row (window_minutes {window_minutes}, filter_id {filter_id}, window_end_ms {window_end_ms}): {e}"
            ),
        })?;
        if value.ad_ids.len() != value.counts.len() {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "top row (window_minutes {window_minutes}, filter_id {filter_id}, window_end_ms {window_end_ms}): {} ad_ids but {} counts",
                    value.ad_ids.len(),
                    value.counts.len()
                ),
            });
        }
        Ok(TopRow {
            window_end_ms,
            window_minutes,
            filter_id,
            ad_ids: value.ad_ids,
            counts: value.counts,
        })
    }
}

/// The operation a redb failure happened in, for the error message.
struct Op<'a> {
    path: &'a Path,
    operation: &'static str,
}

/// Writes one count row to both tables; every writer goes through here so
/// the two indexes never disagree.
fn insert_count(
    by_ad: &mut redb::Table<(&str, u32, i64), u64>,
    by_minute: &mut redb::Table<(i64, &str, u32), u64>,
    row: &AggregateRow,
    op: &Op<'_>,
) -> Result<()> {
    let key = &row.key;
    by_ad
        .insert(
            (key.ad_id.as_str(), key.filter_id, key.minute_start_ms),
            row.count,
        )
        .at(op)?;
    by_minute
        .insert(
            (key.minute_start_ms, key.ad_id.as_str(), key.filter_id),
            row.count,
        )
        .at(op)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct PartialValue {
    limit: u32,
    ad_ids: Vec<String>,
    counts: Vec<u64>,
}

type TopKey = (u32, u32, i64);

/// Upserts `partials` and recomputes the merged top row of every window in
/// `touched` (plus the partials' windows) from all of its stored partials.
fn put_partials(
    partial_table: &mut redb::Table<(u32, u32, i64, u32), &[u8]>,
    tops: &mut redb::Table<(u32, u32, i64), &[u8]>,
    partials: &[PartialTop],
    mut touched: std::collections::BTreeSet<TopKey>,
    path: &Path,
    op: &Op<'_>,
) -> Result<()> {
    for partial in partials {
        let top = &partial.top;
        let value = serde_json::to_vec(&PartialValue {
            limit: partial.limit,
            ad_ids: top.ad_ids.clone(),
            counts: top.counts.clone(),
        })
        .expect("serialising strings and integers to JSON cannot fail");
        partial_table
            .insert(
                (
                    top.window_minutes,
                    top.filter_id,
                    top.window_end_ms,
                    partial.partition,
                ),
                value.as_slice(),
            )
            .at(op)?;
        touched.insert((top.window_minutes, top.filter_id, top.window_end_ms));
    }
    for (window_minutes, filter_id, window_end_ms) in touched {
        let mut stored = Vec::new();
        let range = (window_minutes, filter_id, window_end_ms, 0u32)
            ..=(window_minutes, filter_id, window_end_ms, u32::MAX);
        for entry in partial_table.range(range).at(op)? {
            let (key, value) = entry.at(op)?;
            let partition = key.value().3;
            let value: PartialValue =
                serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "partial top (window_minutes {window_minutes}, filter_id {filter_id}, window_end_ms {window_end_ms}, partition {partition}): {e}"
                    ),
                })?;
            stored.push(PartialTop {
                partition,
                limit: value.limit,
                top: TopRow {
                    window_end_ms,
                    window_minutes,
                    filter_id,
                    ad_ids: value.ad_ids,
                    counts: value.counts,
                },
            });
        }
        match merge_partials(&stored) {
            Some(top) => {
                let value = encode_top(&top);
                tops.insert((window_minutes, filter_id, window_end_ms), value.as_slice())
                    .at(op)?;
            }
            None => {
                tops.remove((window_minutes, filter_id, window_end_ms))
                    .at(op)?;
            }
        }
    }
    Ok(())
}

trait AtOp<T> {
    fn at(self, op: &Op<'_>) -> Result<T>;
}

impl<T, E: Into<redb::Error>> AtOp<T> for std::result::Result<T, E> {
    fn at(self, op: &Op<'_>) -> Result<T> {
        self.map_err(|source| StoreError::Storage {
            path: op.path.to_path_buf(),
            operation: op.operation,
            source: Box::new(source.into()),
        })
    }
}

fn encode_top(top: &TopRow) -> Vec<u8> {
    #[derive(Serialize)]
    struct TopValueRef<'a> {
        ad_ids: &'a [String],
        counts: &'a [u64],
    }
    serde_json::to_vec(&TopValueRef {
        ad_ids: &top.ad_ids,
        counts: &top.counts,
    })
    .expect("serialising strings and integers to JSON cannot fail")
}

impl AggregateStore for RedbAggregateStore {
    fn apply(&self, batch: &WriteBatch) -> Result<()> {
        check_batch(batch)?;
        let op = self.op("apply");
        let txn = self.db.begin_write().at(&op)?;
        {
            // Positions first: a regression aborts (drops) the transaction
            // before anything is written.
            let mut positions = txn.open_table(POSITIONS).at(&op)?;
            for position in &batch.positions {
                let stored = positions
                    .get(position.source.as_str())
                    .at(&op)?
                    .map(|guard| guard.value());
                check_position(&position.source, stored, position.offset)?;
            }
            let mut by_ad = txn.open_table(COUNTS_BY_AD).at(&op)?;
            let mut by_minute = txn.open_table(COUNTS_BY_MINUTE).at(&op)?;
            for row in &batch.rows {
                insert_count(&mut by_ad, &mut by_minute, row, &op)?;
            }
            let mut tops = txn.open_table(TOPS).at(&op)?;
            for top in &batch.tops {
                let value = encode_top(top);
                tops.insert(
                    (top.window_minutes, top.filter_id, top.window_end_ms),
                    value.as_slice(),
                )
                .at(&op)?;
            }
            let mut partials = txn.open_table(PARTIALS).at(&op)?;
            put_partials(
                &mut partials,
                &mut tops,
                &batch.partial_tops,
                Default::default(),
                &self.path,
                &op,
            )?;
            for position in &batch.positions {
                positions
                    .insert(position.source.as_str(), position.offset)
                    .at(&op)?;
            }
        }
        txn.commit().at(&op)
    }

    fn position(&self, source: &str) -> Result<Option<u64>> {
        let op = self.op("read position");
        let txn = self.db.begin_read().at(&op)?;
        let positions = txn.open_table(POSITIONS).at(&op)?;
        let stored = positions.get(source).at(&op)?;
        Ok(stored.map(|guard| guard.value()))
    }

    fn count(&self, ad_id: &str, filter_id: u32, from_ms: i64, to_ms: i64) -> Result<u64> {
        check_count_args(ad_id, from_ms, to_ms)?;
        if from_ms == to_ms {
            return Ok(0);
        }
        let op = self.op("count");
        let txn = self.db.begin_read().at(&op)?;
        let by_ad = txn.open_table(COUNTS_BY_AD).at(&op)?;
        let mut sum = 0u64;
        for entry in by_ad
            .range((ad_id, filter_id, from_ms)..(ad_id, filter_id, to_ms))
            .at(&op)?
        {
            let (_, count) = entry.at(&op)?;
            sum = sum.saturating_add(count.value());
        }
        Ok(sum)
    }

    fn top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        window_end_ms: i64,
    ) -> Result<Option<TopRow>> {
        check_top_args(window_minutes, window_end_ms)?;
        let op = self.op("read top");
        let txn = self.db.begin_read().at(&op)?;
        let tops = txn.open_table(TOPS).at(&op)?;
        let key = (window_minutes, filter_id, window_end_ms);
        let Some(value) = tops.get(key).at(&op)? else {
            return Ok(None);
        };
        self.decode_top(key, value.value()).map(Some)
    }

    fn latest_top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        at_or_before_ms: i64,
    ) -> Result<Option<TopRow>> {
        check_latest_top_args(window_minutes)?;
        let op = self.op("read top");
        let txn = self.db.begin_read().at(&op)?;
        let tops = txn.open_table(TOPS).at(&op)?;
        let mut range = tops
            .range(
                (window_minutes, filter_id, i64::MIN)
                    ..=(window_minutes, filter_id, at_or_before_ms),
            )
            .at(&op)?;
        let Some(entry) = range.next_back() else {
            return Ok(None);
        };
        let (key, value) = entry.at(&op)?;
        self.decode_top(key.value(), value.value()).map(Some)
    }

    fn scan(&self, from_ms: i64, to_ms: i64, filter: Option<u32>) -> Result<Vec<AggregateRow>> {
        check_range(from_ms, to_ms)?;
        if from_ms == to_ms {
            return Ok(Vec::new());
        }
        let op = self.op("scan");
        let txn = self.db.begin_read().at(&op)?;
        let by_minute = txn.open_table(COUNTS_BY_MINUTE).at(&op)?;
        let mut rows = Vec::new();
        // (minute, "", 0) is the smallest key of a minute, so this is exactly
        // the minutes in [from_ms, to_ms).
        for entry in by_minute
            .range((from_ms, "", 0u32)..(to_ms, "", 0u32))
            .at(&op)?
        {
            let (key, count) = entry.at(&op)?;
            let (minute, ad_id, filter_id) = key.value();
            if filter.is_some_and(|wanted| wanted != filter_id) {
                continue;
            }
            rows.push(AggregateRow::new(minute, ad_id, filter_id, count.value()));
        }
        Ok(rows)
    }

    fn replace_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        rows: &[AggregateRow],
        partials: &[PartialTop],
    ) -> Result<()> {
        check_replace_rows(from_ms, to_ms, rows, partials)?;
        let op = self.op("replace range");
        let txn = self.db.begin_write().at(&op)?;
        {
            let mut by_ad = txn.open_table(COUNTS_BY_AD).at(&op)?;
            let mut by_minute = txn.open_table(COUNTS_BY_MINUTE).at(&op)?;
            if from_ms < to_ms {
                let removed = by_minute
                    .extract_from_if((from_ms, "", 0u32)..(to_ms, "", 0u32), |_, _| true)
                    .at(&op)?;
                for entry in removed {
                    let (key, _) = entry.at(&op)?;
                    let (minute, ad_id, filter_id) = key.value();
                    by_ad.remove((ad_id, filter_id, minute)).at(&op)?;
                }
            }
            for row in rows {
                insert_count(&mut by_ad, &mut by_minute, row, &op)?;
            }
            // Window ends in (from_ms, to_ms]: drop their partials and tops,
            // then store the new partials and re-merge every such window.
            let in_range = |end: i64| end > from_ms && end <= to_ms;
            let mut partial_table = txn.open_table(PARTIALS).at(&op)?;
            let mut tops = txn.open_table(TOPS).at(&op)?;
            let mut touched = std::collections::BTreeSet::new();
            for entry in partial_table
                .extract_if(|(_, _, end, _), _| in_range(end))
                .at(&op)?
            {
                let (key, _) = entry.at(&op)?;
                let (m, f, end, _) = key.value();
                touched.insert((m, f, end));
            }
            for entry in tops.extract_if(|(_, _, end), _| in_range(end)).at(&op)? {
                let (key, _) = entry.at(&op)?;
                touched.insert(key.value());
            }
            put_partials(
                &mut partial_table,
                &mut tops,
                partials,
                touched,
                &self.path,
                &op,
            )?;
        }
        txn.commit().at(&op)
    }

    fn delete_before(&self, minute_ms: i64) -> Result<Deleted> {
        check_delete_before(minute_ms)?;
        let op = self.op("delete before");
        let txn = self.db.begin_write().at(&op)?;
        let mut deleted = Deleted::default();
        {
            let mut by_ad = txn.open_table(COUNTS_BY_AD).at(&op)?;
            let mut by_minute = txn.open_table(COUNTS_BY_MINUTE).at(&op)?;
            let removed = by_minute
                .extract_from_if(..(minute_ms, "", 0u32), |_, _| true)
                .at(&op)?;
            for entry in removed {
                let (key, _) = entry.at(&op)?;
                let (minute, ad_id, filter_id) = key.value();
                by_ad.remove((ad_id, filter_id, minute)).at(&op)?;
                deleted.count_rows += 1;
            }
            let mut tops = txn.open_table(TOPS).at(&op)?;
            let removed_tops = tops
                .extract_if(|(_, _, window_end_ms), _| window_end_ms <= minute_ms)
                .at(&op)?;
            for entry in removed_tops {
                entry.at(&op)?;
                deleted.top_rows += 1;
            }
            let mut partials = txn.open_table(PARTIALS).at(&op)?;
            for entry in partials
                .extract_if(|(_, _, window_end_ms, _), _| window_end_ms <= minute_ms)
                .at(&op)?
            {
                entry.at(&op)?;
            }
        }
        txn.commit().at(&op)?;
        Ok(deleted)
    }
}
