//! [`MemoryAggregateStore`]: the whole store in ordered maps behind one
//! `RwLock`. It is the second backend of the conformance suite and the oracle
//! of the model-based tests, so it is written to be obviously right rather
//! than fast: one map, keyed `(ad_id, filter_id, minute)` like the redb query
//! table, and `scan` walks all of it.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::RwLock;

use crate::error::Result;
use crate::store::{
    check_batch, check_count_args, check_delete_before, check_latest_top_args, check_position,
    check_range, check_replace_rows, check_top_args, merge_partials, AggKey, AggregateRow,
    AggregateStore, Deleted, PartialTop, TopRow, WriteBatch,
};

type CountKey = (String, u32, i64);
type TopKey = (u32, u32, i64);
type PartialKey = (u32, u32, i64, u32);

#[derive(Default)]
struct State {
    counts: BTreeMap<CountKey, u64>,
    tops: BTreeMap<TopKey, TopRow>,
    partials: BTreeMap<PartialKey, PartialTop>,
    positions: BTreeMap<String, u64>,
}

impl State {
    fn put_partials(&mut self, partials: &[PartialTop]) {
        let mut touched = BTreeSet::new();
        for partial in partials {
            let top = &partial.top;
            let key = (top.window_minutes, top.filter_id, top.window_end_ms);
            self.partials
                .insert((key.0, key.1, key.2, partial.partition), partial.clone());
            touched.insert(key);
        }
        self.remerge(touched);
    }

    fn remerge(&mut self, windows: BTreeSet<TopKey>) {
        for key in windows {
            let range = (key.0, key.1, key.2, 0)..=(key.0, key.1, key.2, u32::MAX);
            match merge_partials(self.partials.range(range).map(|(_, p)| p)) {
                Some(top) => {
                    self.tops.insert(key, top);
                }
                None => {
                    self.tops.remove(&key);
                }
            }
        }
    }
}

/// An in-memory [`AggregateStore`]; nothing survives the process.
#[derive(Default)]
pub struct MemoryAggregateStore {
    state: RwLock<State>,
}

impl MemoryAggregateStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn count_key(key: &AggKey) -> CountKey {
    (key.ad_id.clone(), key.filter_id, key.minute_start_ms)
}

impl AggregateStore for MemoryAggregateStore {
    fn apply(&self, batch: &WriteBatch) -> Result<()> {
        check_batch(batch)?;
        let mut state = self.state.write();
        for position in &batch.positions {
            let stored = state.positions.get(&position.source).copied();
            check_position(&position.source, stored, position.offset)?;
        }
        for row in &batch.rows {
            state.counts.insert(count_key(&row.key), row.count);
        }
        for top in &batch.tops {
            let key = (top.window_minutes, top.filter_id, top.window_end_ms);
            state.tops.insert(key, top.clone());
        }
        state.put_partials(&batch.partial_tops);
        for position in &batch.positions {
            state
                .positions
                .insert(position.source.clone(), position.offset);
        }
        Ok(())
    }

    fn position(&self, source: &str) -> Result<Option<u64>> {
        Ok(self.state.read().positions.get(source).copied())
    }

    fn count(&self, ad_id: &str, filter_id: u32, from_ms: i64, to_ms: i64) -> Result<u64> {
        check_count_args(ad_id, from_ms, to_ms)?;
        if from_ms == to_ms {
            return Ok(0);
        }
        let state = self.state.read();
        let range = (ad_id.to_string(), filter_id, from_ms)..(ad_id.to_string(), filter_id, to_ms);
        Ok(state
            .counts
            .range(range)
            .fold(0u64, |sum, (_, count)| sum.saturating_add(*count)))
    }

    fn top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        window_end_ms: i64,
    ) -> Result<Option<TopRow>> {
        check_top_args(window_minutes, window_end_ms)?;
        let state = self.state.read();
        Ok(state
            .tops
            .get(&(window_minutes, filter_id, window_end_ms))
            .cloned())
    }

    fn latest_top(
        &self,
        window_minutes: u32,
        filter_id: u32,
        at_or_before_ms: i64,
    ) -> Result<Option<TopRow>> {
        check_latest_top_args(window_minutes)?;
        let state = self.state.read();
        let range =
            (window_minutes, filter_id, i64::MIN)..=(window_minutes, filter_id, at_or_before_ms);
        Ok(state
            .tops
            .range(range)
            .next_back()
            .map(|(_, top)| top.clone()))
    }

    fn scan(&self, from_ms: i64, to_ms: i64, filter: Option<u32>) -> Result<Vec<AggregateRow>> {
        check_range(from_ms, to_ms)?;
        let state = self.state.read();
        let mut rows: Vec<AggregateRow> = state
            .counts
            .iter()
            .filter(|((_, filter_id, minute), _)| {
                (from_ms..to_ms).contains(minute) && filter.is_none_or(|f| f == *filter_id)
            })
            .map(|((ad_id, filter_id, minute), count)| {
                AggregateRow::new(*minute, ad_id.clone(), *filter_id, *count)
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
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
        let mut state = self.state.write();
        state
            .counts
            .retain(|(_, _, minute), _| !(from_ms..to_ms).contains(minute));
        for row in rows {
            state.counts.insert(count_key(&row.key), row.count);
        }
        let in_range = |end: i64| end > from_ms && end <= to_ms;
        let mut touched: BTreeSet<TopKey> = state
            .partials
            .keys()
            .filter(|k| in_range(k.2))
            .map(|k| (k.0, k.1, k.2))
            .collect();
        touched.extend(state.tops.keys().filter(|k| in_range(k.2)).copied());
        state.partials.retain(|k, _| !in_range(k.2));
        state.put_partials(partials);
        state.remerge(touched);
        Ok(())
    }

    fn delete_before(&self, minute_ms: i64) -> Result<Deleted> {
        check_delete_before(minute_ms)?;
        let mut state = self.state.write();
        let counts_before = state.counts.len();
        state
            .counts
            .retain(|(_, _, minute), _| *minute >= minute_ms);
        let tops_before = state.tops.len();
        state.tops.retain(|(_, _, end), _| *end > minute_ms);
        state.partials.retain(|(_, _, end, _), _| *end > minute_ms);
        Ok(Deleted {
            count_rows: (counts_before - state.counts.len()) as u64,
            top_rows: (tops_before - state.tops.len()) as u64,
        })
    }
}
