use std::path::PathBuf;

use riffle_core::{ErrorCode, HasCode};

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// Every failure of an event bus backend.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("topic \"{0}\" not found")]
    TopicNotFound(String),
    #[error("topic \"{0}\" already exists")]
    TopicExists(String),
    #[error("partition {partition} of topic \"{topic}\" not found (topic has {count} partitions)")]
    PartitionNotFound {
        topic: String,
        partition: u32,
        count: u32,
    },
    #[error("offset {offset} is out of range for {topic}/{partition} (available {start}..{end})")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        start: u64,
        end: u64,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the log is closed")]
    Closed,
    #[error("{0}")]
    Backend(String),
}

impl BusError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BusError::Io {
            path: path.into(),
            source,
        }
    }
}

impl HasCode for BusError {
    fn code(&self) -> ErrorCode {
        match self {
            BusError::TopicNotFound(_) | BusError::PartitionNotFound { .. } => ErrorCode::NotFound,
            BusError::TopicExists(_) => ErrorCode::AlreadyExists,
            BusError::OffsetOutOfRange { .. } => ErrorCode::OutOfRange,
            BusError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            BusError::BatchTooLarge { .. } => ErrorCode::PayloadTooLarge,
            BusError::Corrupt { .. } => ErrorCode::DataLoss,
            BusError::Io { .. } | BusError::Backend(_) => ErrorCode::Internal,
            BusError::Closed => ErrorCode::Unavailable,
        }
    }
}

/// A topic or group name that is not valid.
impl From<riffle_core::InvalidValue> for BusError {
    fn from(error: riffle_core::InvalidValue) -> BusError {
        BusError::InvalidArgument(error.message().to_owned())
    }
}
