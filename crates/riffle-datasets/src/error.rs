use riffle_core::ErrorCode;

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Every failure of the dataset service, its stores and its client. The
/// code maps to an HTTP and a gRPC status; the message is lowercase and
/// names the offending field or value (`scope: "region" is not K=V`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DatasetError {
    pub code: ErrorCode,
    pub message: String,
    /// A compare-and-set lost to a concurrent writer: re-read and retry.
    conflict: bool,
}

impl DatasetError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DatasetError {
            code,
            message: message.into(),
            conflict: false,
        }
    }

    /// A compare-and-set that lost to a concurrent writer
    /// (`FailedPrecondition`; [`DatasetError::is_conflict`] tells it apart).
    pub fn conflict(message: impl Into<String>) -> Self {
        DatasetError {
            conflict: true,
            ..Self::new(ErrorCode::FailedPrecondition, message)
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.conflict
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn data_loss(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DataLoss, message)
    }

    /// Whether retrying the same request later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::Unavailable | ErrorCode::ResourceExhausted | ErrorCode::Internal
        )
    }
}

impl From<sqlx::Error> for DatasetError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                DatasetError::unavailable(format!("metadata store: {error}"))
            }
            _ => DatasetError::internal(format!("metadata store: {error}")),
        }
    }
}

impl From<object_store::Error> for DatasetError {
    fn from(error: object_store::Error) -> Self {
        match &error {
            object_store::Error::NotFound { path, .. } => {
                DatasetError::not_found(format!("blob {path} not found"))
            }
            _ => DatasetError::unavailable(format!("blob store: {error}")),
        }
    }
}
