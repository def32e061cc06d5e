//! The records of the `ad_click_aggregates` topic (the first queue of the
//! seed's two-queue design) and of the late topic.
//!
//! An aggregates record is one JSON object (the record key is the `ad_id`
//! for counts, the window for tops):
//!
//! ```text
//! {"type":"count","minute":1714564800000,"ad_id":"ad-7","filter_id":0,"count":31}
//! {"type":"top","window_end":1714565100000,"window_minutes":5,"filter_id":0,
//!  "partition":2,"limit":100,"ad_ids":["ad-1","ad-9"],"counts":[812,640]}
//! ```
//!
//! and, whenever a task's watermark moves, its progress (key `partition`):
//!
//! ```text
//! {"type":"progress","partition":2,"watermark":1714565085000}
//! ```
//!
//! so that query servers in other processes (role `serve` without
//! `process`) know each partition's watermark for the `complete` flag.
//!
//! Counts and tops carry absolute values: a `count` is the full click count of
//! (minute, ad, filter) so far, a `top` the full top-N of one input partition
//! for the window `[window_end − window_minutes, window_end)`. Applying a
//! record twice equals applying it once.
//!
//! A late-topic record's value is the event as JSON (docs/events.md), its key
//! the `ad_id` (when known) and its headers `reason` (`too_late`,
//! `beyond_dedup_horizon`, `malformed`, `wrong_type`), `detail` (free text)
//! and `watermark` (the task watermark in epoch ms, decimal).

use riffle_core::codec::FormatError;
use serde::{Deserialize, Serialize};

use crate::store::{AggregateRow, PartialTop, TopRow};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregateRecord {
    Count {
        minute: i64,
        ad_id: String,
        filter_id: u32,
        count: u64,
    },
    Top {
        window_end: i64,
        window_minutes: u32,
        filter_id: u32,
        partition: u32,
        limit: u32,
        ad_ids: Vec<String>,
        counts: Vec<u64>,
    },
    Progress {
        partition: u32,
        watermark: i64,
    },
}

impl AggregateRecord {
    pub fn decode(bytes: &[u8]) -> Result<AggregateRecord, FormatError> {
        serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid(e.to_string()))
    }
}

impl From<AggregateRecord> for Decoded {
    fn from(record: AggregateRecord) -> Decoded {
        match record {
            AggregateRecord::Count {
                minute,
                ad_id,
                filter_id,
                count,
            } => Decoded::Row(AggregateRow::new(minute, ad_id, filter_id, count)),
            AggregateRecord::Top {
                window_end,
                window_minutes,
                filter_id,
                partition,
                limit,
                ad_ids,
                counts,
            } => Decoded::Partial(PartialTop {
                partition,
                limit,
                top: TopRow {
                    window_end_ms: window_end,
                    window_minutes,
                    filter_id,
                    ad_ids,
                    counts,
                },
            }),
            AggregateRecord::Progress {
                partition,
                watermark,
            } => Decoded::Progress {
                partition,
                watermark,
            },
        }
    }
}

/// An aggregates record in store terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Row(AggregateRow),
    Partial(PartialTop),
    /// The task watermark of an input partition.
    Progress {
        partition: u32,
        watermark: i64,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "count")]
struct CountRef<'a> {
    minute: i64,
    ad_id: &'a str,
    filter_id: u32,
    count: u64,
}

/// Appends the JSON of a count record to `out`.
pub fn write_count(out: &mut Vec<u8>, minute: i64, ad_id: &str, filter_id: u32, count: u64) {
    serde_json::to_writer(
        out,
        &CountRef {
            minute,
            ad_id,
            filter_id,
            count,
        },
    )
    .expect("writing JSON to a Vec cannot fail");
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "top")]
struct TopRef<'a> {
    window_end: i64,
    window_minutes: u32,
    filter_id: u32,
    partition: u32,
    limit: u32,
    ad_ids: &'a [&'a str],
    counts: &'a [u64],
}

/// Appends the JSON of a progress record to `out`.
pub fn write_progress(out: &mut Vec<u8>, partition: u32, watermark: i64) {
    serde_json::to_writer(
        out,
        &AggregateRecord::Progress {
            partition,
            watermark,
        },
    )
    .expect("serializing into memory cannot fail");
}

/// Appends the JSON of a partial top record to `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_top(
    out: &mut Vec<u8>,
    window_end: i64,
    window_minutes: u32,
    filter_id: u32,
    partition: u32,
    limit: u32,
    ad_ids: &[&str],
    counts: &[u64],
) {
    serde_json::to_writer(
        out,
        &TopRef {
            window_end,
            window_minutes,
            filter_id,
            partition,
            limit,
            ad_ids,
            counts,
        },
    )
    .expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_records_decode() {
        let mut out = Vec::new();
        write_count(&mut out, 60_000, "ad-\"1", 3, 9);
        assert_eq!(
            AggregateRecord::decode(&out).unwrap(),
            AggregateRecord::Count {
                minute: 60_000,
                ad_id: "ad-\"1".into(),
                filter_id: 3,
                count: 9
            }
        );
        out.clear();
        write_top(&mut out, 120_000, 2, 0, 1, 10, &["a", "b"], &[5, 4]);
        let decoded: Decoded = AggregateRecord::decode(&out).unwrap().into();
        assert_eq!(
            decoded,
            Decoded::Partial(PartialTop {
                partition: 1,
                limit: 10,
                top: TopRow {
                    window_end_ms: 120_000,
                    window_minutes: 2,
                    filter_id: 0,
                    ad_ids: vec!["a".into(), "b".into()],
                    counts: vec![5, 4],
                }
            })
        );
        assert!(AggregateRecord::decode(br#"{"type":"count","minute":1}"#).is_err());
        assert!(AggregateRecord::decode(br#"{"type":"other"}"#).is_err());
    }
}
