//! Live-stream features (docs/adr/0004-live-stream-features.md).
//!
//! Built so far: the online store every feature read goes through —
//! [`OnlineStore`], a trait shaped for a networked store (one value per
//! entity holding all its features, batch reads and writes in one round
//! trip, TTL, monotonic versions so replays are harmless), the sharded
//! in-memory backend [`MemoryOnlineStore`], and the conformance suite every
//! backend passes (feature `testsuite`); the feature definitions
//! ([`FeatureSet`]: `features.toml`, checked as a whole, and the built-in
//! set of 53 features); the [`engine`] every driver shares; the
//! point-in-time example builder of the training export ([`export`]).
//! Running the engine in the stream engine, the Parquet export command and
//! the API come next.

#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod definition;
pub mod engine;
pub mod export;
mod memory;
mod store;
pub mod value;

pub use definition::{Aggregation, Entity, Feature, FeatureSet, Window, DEFAULT_FEATURES};
pub use engine::{Enricher, Fact, FeatureEngine, States};
pub use memory::MemoryOnlineStore;
pub use store::{EntityKind, EntityRow, OnlineStore, StoreError, MAX_BATCH};
pub use value::Value;
