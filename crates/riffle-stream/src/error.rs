//! Errors of the stream engine, each mapped to one [`ErrorCode`].

use riffle_core::{ErrorCode, HasCode};

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A configuration value is out of range. `field` is the dotted config
    /// path (`window.size_ms`) so the message points at what to change.
    #[error("{field}: {value} {reason}")]
    InvalidConfig {
        field: &'static str,
        value: i64,
        reason: String,
    },
    /// Checkpointed state could not be decoded; restoring from it would
    /// silently change results, so the checkpoint must be rejected.
    #[error("corrupt {what} snapshot: {reason}")]
    CorruptSnapshot { what: &'static str, reason: String },
    /// A snapshot is intact but was written under a configuration that cannot
    /// be carried over (e.g. a different hash seed).
    #[error("incompatible {what} snapshot: {reason}")]
    IncompatibleSnapshot { what: &'static str, reason: String },
    /// An operator failed while processing; the message names the operator.
    #[error("operator {operator:?}: {reason}")]
    Operator { operator: String, reason: String },
    /// A checkpoint file could not be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// A topic a pipeline needs is missing and cannot be created, or does
    /// not fit (too few partitions).
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
    /// The event bus failed under a task.
    #[error(transparent)]
    Bus(#[from] riffle_log::BusError),
}

impl StreamError {
    pub(crate) fn invalid(field: &'static str, value: i64, reason: impl Into<String>) -> Self {
        StreamError::InvalidConfig {
            field,
            value,
            reason: reason.into(),
        }
    }
}

impl HasCode for StreamError {
    fn code(&self) -> ErrorCode {
        match self {
            StreamError::InvalidConfig { .. } => ErrorCode::InvalidArgument,
            StreamError::CorruptSnapshot { .. } => ErrorCode::DataLoss,
            StreamError::IncompatibleSnapshot { .. } => ErrorCode::FailedPrecondition,
            StreamError::Operator { .. } => ErrorCode::Internal,
            StreamError::Checkpoint { .. } => ErrorCode::Unavailable,
            StreamError::Topic { .. } => ErrorCode::FailedPrecondition,
            StreamError::Bus(error) => error.code(),
        }
    }
}
