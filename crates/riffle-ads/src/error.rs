use std::path::PathBuf;

use riffle_core::{ErrorCode, HasCode};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Every failure of an [`AggregateStore`](crate::AggregateStore) backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A caller-supplied value is invalid; `param` is the parameter's name as
    /// it appears in the API (`from_ms`, `rows[3].key.minute_start_ms`, …).
    #[error("invalid {param}: {reason}")]
    InvalidArgument { param: String, reason: String },
    /// A batch carried a source position behind the stored one: a stale
    /// writer (e.g. a zombie after a rebalance) whose absolute counts would
    /// overwrite newer ones. Nothing of the batch was applied.
    #[error("position of source \"{source_name}\" would move back from {stored} to {given}")]
    PositionRegressed {
        source_name: String,
        stored: u64,
        given: u64,
    },
    /// The file was written by an incompatible version of this store.
    #[error(
        "aggregate store {path} has format version {found}, this build reads version {expected}"
    )]
    IncompatibleFormat {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    /// A stored value cannot be decoded.
    #[error("corrupt aggregate store {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The embedded database failed.
    #[error("aggregate store {path}: {operation}: {source}")]
    Storage {
        path: PathBuf,
        operation: &'static str,
        // Boxed: redb's error is large and would bloat every `Result`.
        #[source]
        source: Box<redb::Error>,
    },
}

impl StoreError {
    pub(crate) fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            param: param.into(),
            reason: reason.into(),
        }
    }

    /// The name of the offending parameter, for [`StoreError::InvalidArgument`].
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
            StoreError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            StoreError::PositionRegressed { .. } | StoreError::IncompatibleFormat { .. } => {
                ErrorCode::FailedPrecondition
            }
            StoreError::Corrupt { .. } => ErrorCode::DataLoss,
            StoreError::Storage { source, .. } => match source.as_ref() {
                redb::Error::Corrupted(_) => ErrorCode::DataLoss,
                redb::Error::DatabaseAlreadyOpen | redb::Error::WouldBlock => {
                    ErrorCode::Unavailable
                }
                _ => ErrorCode::Internal,
            },
        }
    }
}

/// Why the ad click pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] riffle_core::config::ConfigError),
    /// A topic it needs is missing and cannot be created, or does not fit.
    #[error(transparent)]
    Topic(#[from] riffle_stream::StreamError),
    #[error("joining ownership group {group:?}: {source}")]
    Ownership {
        group: String,
        source: riffle_stream::StreamError,
    },
}

impl HasCode for StartError {
    fn code(&self) -> ErrorCode {
        match self {
            StartError::Config(error) => error.code(),
            StartError::Topic(error) | StartError::Ownership { source: error, .. } => error.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let invalid = StoreError::invalid("from_ms", "must be a multiple of 60000, got 5");
        assert_eq!(invalid.code(), ErrorCode::InvalidArgument);
        assert_eq!(invalid.param(), Some("from_ms"));
        assert_eq!(
            invalid.to_string(),
            "invalid from_ms: must be a multiple of 60000, got 5"
        );
        let regressed = StoreError::PositionRegressed {
            source_name: "ad_click_aggregates/3".into(),
            stored: 10,
            given: 4,
        };
        assert_eq!(regressed.code(), ErrorCode::FailedPrecondition);
        assert_eq!(regressed.param(), None);
        let locked = StoreError::Storage {
            path: "x".into(),
            operation: "open",
            source: Box::new(redb::Error::DatabaseAlreadyOpen),
        };
        assert_eq!(locked.code(), ErrorCode::Unavailable);
        assert!(locked.is_retryable());
        let corrupt = StoreError::Storage {
            path: "x".into(),
            operation: "read",
            source: Box::new(redb::Error::Corrupted("bad page".into())),
        };
        assert_eq!(corrupt.code(), ErrorCode::DataLoss);
        assert!(!corrupt.is_retryable());
    }
}
