//! [`GroundTruth`]: the exact results a correct ad click pipeline must
//! produce for a generated stream, and its file format.
//!
//! # File format (NDJSON, one object per line, each with a `kind`)
//!
//! ```text
//! {"kind":"summary","seed":7,"window_ms":60000,"out_of_orderness_ms":15000,"allowed_lateness_ms":300000,
//!  "late_beyond_margin_ms":60000,"events":2000,"by_category":{"on_time":1700,"out_of_order":100,
//!  "late_within":60,"late_beyond":40,"duplicate":100},"unique_events":1900,"counted_events":1860,
//!  "min_event_time_ms":…,"max_event_time_ms":…}
//! {"kind":"count","ad_id":"ad-0000001","minute_start_ms":1714564800000,"count":312}
//! …
//! {"kind":"late_beyond","event_id":"clk-7-123","ad_id":"ad-0000004","event_time":1714564321000}
//! …
//! ```
//!
//! The summary comes first, then the counts ordered by (`ad_id`,
//! `minute_start_ms`), then the late-beyond events in emission order.
//! Readers reject unknown kinds and fields, and files whose counts do not add
//! up to the summary (a truncated file fails to load).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Category;

/// Events per category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryCounts {
    pub on_time: u64,
    pub out_of_order: u64,
    pub late_within: u64,
    pub late_beyond: u64,
    pub duplicate: u64,
}

impl CategoryCounts {
    pub fn total(&self) -> u64 {
        self.on_time + self.out_of_order + self.late_within + self.late_beyond + self.duplicate
    }

    pub fn get(&self, category: Category) -> u64 {
        match category {
            Category::OnTime => self.on_time,
            Category::OutOfOrder => self.out_of_order,
            Category::LateWithin => self.late_within,
            Category::LateBeyond => self.late_beyond,
            Category::Duplicate => self.duplicate,
        }
    }

    pub fn add(&mut self, category: Category) {
        match category {
            Category::OnTime => self.on_time += 1,
            Category::OutOfOrder => self.out_of_order += 1,
            Category::LateWithin => self.late_within += 1,
            Category::LateBeyond => self.late_beyond += 1,
            Category::Duplicate => self.duplicate += 1,
        }
    }
}

/// Totals and the parameters the truth was computed for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthSummary {
    pub seed: u64,
    /// The counting window: 60000 (tumbling minutes).
    pub window_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub late_beyond_margin_ms: i64,
    /// Emitted events, duplicates included.
    pub events: u64,
    pub by_category: CategoryCounts,
    /// Distinct event ids (`events - duplicate`).
    pub unique_events: u64,
    /// Events a correct pipeline counts (`unique_events - late_beyond`) =
    /// the sum of all counts.
    pub counted_events: u64,
    /// Smallest and largest event time emitted (any category), if any.
    pub min_event_time_ms: Option<i64>,
    pub max_event_time_ms: Option<i64>,
}

/// An event that arrived beyond the allowed lateness: a correct pipeline
/// does not count it and writes it to its late topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateBeyondEvent {
    pub event_id: String,
    pub ad_id: String,
    pub event_time: i64,
}

/// The exact expected results of a generated stream (see the module docs of
/// [`crate::ads`] for what is counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroundTruth {
    pub summary: TruthSummary,
    /// (ad_id, minute_start_ms) → number of distinct counted events. Cells
    /// with no event are absent (their count is 0).
    pub counts: BTreeMap<(String, i64), u64>,
    /// Late-beyond events, in emission order.
    pub late_beyond: Vec<LateBeyondEvent>,
}

/// A truth file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("{0}")]
    Inconsistent(String),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Summary(TruthSummary),
    Count(CountLine),
    LateBeyond(LateBeyondEvent),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountLine {
    ad_id: String,
    minute_start_ms: i64,
    count: u64,
}

impl GroundTruth {
    /// Count of `ad_id` in the minute starting at `minute_start_ms`.
    pub fn count(&self, ad_id: &str, minute_start_ms: i64) -> u64 {
        self.counts
            .get(&(ad_id.to_string(), minute_start_ms))
            .copied()
            .unwrap_or(0)
    }

    /// Count of `ad_id` over the minutes starting in `[from_ms, to_ms)`.
    pub fn count_range(&self, ad_id: &str, from_ms: i64, to_ms: i64) -> u64 {
        if from_ms >= to_ms {
            return 0;
        }
        self.counts
            .range((ad_id.to_string(), from_ms)..(ad_id.to_string(), to_ms))
            .map(|(_, c)| c)
            .sum()
    }

    /// The ids of the late-beyond events.
    pub fn late_beyond_ids(&self) -> BTreeSet<&str> {
        self.late_beyond
            .iter()
            .map(|e| e.event_id.as_str())
            .collect()
    }

    /// Writes the NDJSON form.
    pub fn write_to(&self, out: impl Write) -> std::io::Result<()> {
        let mut out = BufWriter::new(out);
        let mut line = |l: &Line| -> std::io::Result<()> {
            serde_json::to_writer(&mut out, l)?;
            out.write_all(b"\n")
        };
        line(&Line::Summary(self.summary.clone()))?;
        for ((ad_id, minute_start_ms), count) in &self.counts {
            line(&Line::Count(CountLine {
                ad_id: ad_id.clone(),
                minute_start_ms: *minute_start_ms,
                count: *count,
            }))?;
        }
        for e in &self.late_beyond {
            line(&Line::LateBeyond(e.clone()))?;
        }
        out.flush()
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn write_file(&self, path: &Path) -> Result<(), TruthError> {
        let io = |source| TruthError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let file = std::fs::File::create(&tmp).map_err(io)?;
        self.write_to(&file).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads the NDJSON form and checks that it is complete and consistent.
    pub fn read_from(input: impl BufRead) -> Result<GroundTruth, TruthError> {
        let mut summary = None;
        let mut counts = BTreeMap::new();
        let mut late_beyond = Vec::new();
        for (i, text) in input.lines().enumerate() {
            let line = i + 1;
            let text = text.map_err(|e| TruthError::Invalid {
                line,
                message: e.to_string(),
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&text).map_err(|e| TruthError::Invalid {
                line,
                message: e.to_string(),
            })?;
            match parsed {
                Line::Summary(s) => {
                    if summary.replace(s).is_some() {
                        return Err(TruthError::Invalid {
                            line,
                            message: "a second summary line".into(),
                        });
                    }
                }
                Line::Count(c) => {
                    if counts
                        .insert((c.ad_id.clone(), c.minute_start_ms), c.count)
                        .is_some()
                    {
                        return Err(TruthError::Invalid {
                            line,
                            message: format!(
                                "a second count for ({:?}, {})",
                                c.ad_id, c.minute_start_ms
                            ),
                        });
                    }
                }
                Line::LateBeyond(e) => late_beyond.push(e),
            }
        }
        let summary = summary.ok_or_else(|| TruthError::Inconsistent("no summary line".into()))?;
        let counted: u64 = counts.values().sum();
        if counted != summary.counted_events {
            return Err(TruthError::Inconsistent(format!(
                "counts add up to {counted}, the summary says counted_events = {}",
                summary.counted_events
            )));
        }
        if late_beyond.len() as u64 != summary.by_category.late_beyond {
            return Err(TruthError::Inconsistent(format!(
                "{} late_beyond lines, the summary says {}",
                late_beyond.len(),
                summary.by_category.late_beyond
            )));
        }
        Ok(GroundTruth {
            summary,
            counts,
            late_beyond,
        })
    }

    pub fn read_file(path: &Path) -> Result<GroundTruth, TruthError> {
        let file = std::fs::File::open(path).map_err(|source| TruthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        GroundTruth::read_from(std::io::BufReader::new(file))
    }
}
