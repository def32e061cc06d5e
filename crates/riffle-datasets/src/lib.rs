//! Versioned dataset publish/subscribe (Gutenberg-style).
//!
//! A publisher appends immutable, numbered versions to a topic; consumers
//! hold the newest version whose scopes match their labels, or a pinned
//! one, and learn of changes by long-polling the consume path, which
//! answers from an in-memory cache of every topic's versions and pins
//! (never a database query per poll). Metadata lives behind
//! [`MetadataStore`] (SQLite by default), payloads inline in it (small) or
//! in a content-addressed [`BlobStore`] (object_store; local filesystem by
//! default). [`client::Subscription`] is the Rust client: background
//! long-poll, atomic swap of the decoded dataset, checksum verification and
//! a fallback cache on disk. docs/datasets.md is the wire protocol.

pub mod access;
pub mod blob;
pub mod client;
pub mod config;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod crypto;
pub mod error;
pub mod metrics;
pub mod model;
pub mod service;
pub mod sqlite;
pub mod store;

pub use blob::{BlobStore, ObjectBlobStore};
pub use config::{DatasetToken, DatasetsConfig};
pub use error::{DatasetError, Result};
pub use model::{Labels, Scope};
pub use service::DatasetService;
pub use sqlite::SqliteMetadataStore;
pub use store::MetadataStore;
