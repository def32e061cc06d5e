//! The online store: the latest feature vector of every entity, read by the
//! ranking path in batches.
//!
//! The trait is shaped for a networked store (Redis comes with the backends
//! issue): every call is a batch and costs one round trip; a row holds all
//! features of one entity as one opaque value (`riffle-features` owns the
//! encoding), so fetching 1,000 candidates is one read. Rows carry:
//!
//! * a **version** — the number of events applied to the entity, which only
//!   grows. A write never replaces a row with a higher version, so the
//!   re-emitted older rows of a pipeline replaying after a crash cannot
//!   roll a row back, and writing the same version twice is idempotent;
//! * **`as_of_ms`** — the event time of the newest event the vector
//!   reflects (freshness metrics, consistency checks);
//! * **`expires_at_ms`** — wall-clock expiry (TTL). Expiry is judged by the
//!   store's injected clock on every read, so a backend's own expiry is only
//!   garbage collection and tests need no real waiting.

use std::fmt;

use bytes::Bytes;
use riffle_core::{ErrorCode, HasCode};

/// The most ids one batch call may name.
pub const MAX_BATCH: usize = 10_000;

/// What a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    /// A live stream (`stream_id`).
    Stream,
    /// A streamer (`streamer_id`).
    Streamer,
    /// A user (`user_id`).
    User,
    /// A (user, streamer) pair: id `<user_id>|<streamer_id>`.
    UserStreamer,
}

impl EntityKind {
    pub const ALL: [EntityKind; 4] = [
        EntityKind::Stream,
        EntityKind::Streamer,
        EntityKind::User,
        EntityKind::UserStreamer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Stream => "stream",
            EntityKind::Streamer => "streamer",
            EntityKind::User => "user",
            EntityKind::UserStreamer => "user_streamer",
        }
    }

    /// Parses an entity name (`stream`, `streamer`, `user`,
    /// `user_streamer`); the error names the value and the choices.
    pub fn parse(name: &str) -> Result<EntityKind, StoreError> {
        EntityKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| StoreError::UnknownEntity(name.to_owned()))
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entity's features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRow {
    pub entity: EntityKind,
    pub id: String,
    /// Events applied to the entity so far; never decreases.
    pub version: u64,
    /// Event time of the newest event reflected.
    pub as_of_ms: i64,
    /// Wall-clock time after which the row is gone (`i64::MAX`: never).
    pub expires_at_ms: i64,
    /// The encoded feature vector.
    pub value: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unknown entity {0:?} (known: stream, streamer, user, user_streamer)")]
    UnknownEntity(String),
    /// A bad argument: `param` names it (`ids`, `rows[3].id`, …).
    #[error("{param}: {message}")]
    InvalidArgument { param: String, message: String },
    /// The backend cannot be reached or failed; retrying may help.
    #[error("online store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> StoreError {
        StoreError::InvalidArgument {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The argument an `InvalidArgument` names.
    pub fn param(&self) -> Option<&str> {
        match self {
            StoreError::InvalidArgument { param, .. } => Some(param),
            _ => None,
        }
    }
}

impl HasCode for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::UnknownEntity(_) => ErrorCode::NotFound,
            StoreError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Checks the shape every backend refuses the same way: batch size, empty
/// or oversized ids.
pub(crate) fn check_ids(param: &str, ids: &[&str]) -> Result<(), StoreError> {
    if ids.len() > MAX_BATCH {
        return Err(StoreError::invalid(
            param,
            format!("{} ids is above the limit of {MAX_BATCH}", ids.len()),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("{param}[{i}]"), id)?;
    }
    Ok(())
}

pub(crate) fn check_id(param: &str, id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > 512 {
        return Err(StoreError::invalid(
            param,
            format!("id {id:?} must be 1 to 512 bytes"),
        ));
    }
    Ok(())
}

/// The latest feature vector per entity; see the module docs.
#[async_trait::async_trait]
pub trait OnlineStore: Send + Sync {
    /// A short backend name for metrics and logs (`memory`, `redis`).
    fn backend(&self) -> &'static str;

    /// Writes rows in one round trip. A row whose version is below the
    /// stored row's is skipped (not an error); the rest replace what is
    /// stored. The batch is validated whole first: a bad row writes nothing.
    async fn put_batch(&self, rows: &[EntityRow]) -> Result<(), StoreError>;

    /// Reads the rows of `ids` in one round trip, in the order of `ids`:
    /// `None` for an id with no row or an expired one. Repeated ids are
    /// answered each time.
    async fn get_batch(
        &self,
        entity: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Option<EntityRow>>, StoreError>;

    /// Deletes the rows of `ids` (absent ones are ignored).
    async fn delete_batch(&self, entity: EntityKind, ids: &[&str]) -> Result<(), StoreError>;

    /// Every unexpired row of `entity`, in id order, at most `limit` (the
    /// live candidate set is the stream rows). `limit` above
    /// [`MAX_BATCH`] is refused.
    async fn scan(&self, entity: EntityKind, limit: usize) -> Result<Vec<EntityRow>, StoreError>;
}
