//! Riffle's ad click aggregation (issue 3, ADR 0002).
//!
//! # What exists
//!
//! The **aggregate store layer** — the end of the seed's two-queue design:
//!
//! ```text
//! ad click pipeline ──► ad_click_aggregates topic ──► aggregate writer ──► AggregateStore ──► ads queries
//!                                                                       └─► recalc / reconcile
//! ```
//!
//! * [`AggregateStore`], the trait every backend implements: [`apply`] a
//!   [`WriteBatch`] of absolute per-minute counts ([`AggregateRow`], keyed by
//!   [`AggKey`] = minute × ad × filter), top-N rows ([`TopRow`]) and writer
//!   positions ([`SourcePosition`]) in one transaction; `count` over a
//!   half-open minute range; `top` / `latest_top`; `scan` for
//!   reconciliation; `replace_range` for recalculation; `delete_before`
//!   for retention.
//! * [`RedbAggregateStore`], the embedded backend (one redb file, fsynced
//!   commits; format and invariants in [`redb_store`]).
//! * [`MemoryAggregateStore`], an in-memory backend that doubles as the
//!   oracle of the model-based tests.
//! * [`conformance`], the suite every backend passes, instantiated with
//!   [`aggregate_store_suite!`]; a PostgreSQL backend adds one line to run it.
//! * `archive` (feature `parquet`, on by default): the hourly Parquet
//!   archive of the raw input by log offset range, which [`recount`] can
//!   replay instead of the log once log retention has deleted the events.
//!
//! # Why the writer is exactly-once
//!
//! Rows carry absolute counts, so an upsert is idempotent: applying a row
//! twice equals applying it once. The writer puts the input position it has
//! consumed up to into the same batch as the rows it produced; both commit in
//! one transaction. After a crash it resumes from
//! [`AggregateStore::position`] and any re-applied rows are harmless.
//! Positions never move back: a batch from a stale writer is rejected whole
//! ([`StoreError::PositionRegressed`]) instead of overwriting newer counts
//! with older ones.
//!
//! # The pipeline on top
//!
//! [`operator`] (one [`AdClickOperator`] per input partition: dedup,
//! lateness, per-minute counts per ad and filter, exact top-N per window),
//! [`records`] (the `ad_click_aggregates` and late topic records),
//! [`writer`] (the aggregate writer; the store merges partial tops — the
//! reduce step), [`service`] (the running [`AdsPipeline`]: tasks, writer,
//! retention, status, reconcile and recalc jobs), [`recount`] (batch
//! recount from the log or the archive) and [`query`] (the HTTP query
//! rules). ADR 0002 explains the exactly-once argument.
//!
//! [`apply`]: AggregateStore::apply

#[cfg(feature = "parquet")]
pub mod archive;
pub mod config;
#[cfg(feature = "testsuite")]
pub mod conformance;
mod error;
pub mod filter;
mod memory;
pub mod metrics;
pub mod operator;
pub mod query;
pub mod records;
pub mod recount;
pub mod redb_store;
pub mod service;
mod store;
pub mod writer;

pub use config::{AdFilterConfig, AdsConfig, PopularConfig};
pub use error::{Result, StartError, StoreError};
pub use filter::{FilterInfo, FilterSet};
pub use memory::MemoryAggregateStore;
pub use operator::{AdClickOperator, AdsSpec};
pub use redb_store::RedbAggregateStore;
pub use service::{AdsPipeline, PipelineReport, PipelineRoles};
pub use store::{
    merge_partials, rank_cmp, AggKey, AggregateRow, AggregateStore, Deleted, PartialTop,
    SourcePosition, TopRow, WriteBatch, MINUTE_MS, NO_FILTER,
};
