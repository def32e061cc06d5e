use riffle_core::{ErrorCode, HasCode};

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Every failure of the dataset service, its stores and its client, one
/// variant per failure class. The message is lowercase and names the
/// offending field or value (`scope: "region" is not K=V`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A compare-and-set lost to a concurrent writer: re-read and retry.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Internal(String),
    /// A request the API refused because of its method (REST only).
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl DatasetError {
    /// The variant of `code` (e.g. an error a server answered with).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        match code {
            ErrorCode::InvalidArgument => DatasetError::InvalidArgument(message),
            ErrorCode::NotFound => DatasetError::NotFound(message),
            ErrorCode::MethodNotAllowed => DatasetError::MethodNotAllowed(message),
            ErrorCode::AlreadyExists => DatasetError::AlreadyExists(message),
            ErrorCode::Unauthenticated => DatasetError::Unauthenticated(message),
            ErrorCode::PermissionDenied => DatasetError::PermissionDenied(message),
            ErrorCode::PayloadTooLarge => DatasetError::PayloadTooLarge(message),
            ErrorCode::ResourceExhausted => DatasetError::ResourceExhausted(message),
            ErrorCode::FailedPrecondition => DatasetError::FailedPrecondition(message),
            ErrorCode::OutOfRange => DatasetError::OutOfRange(message),
            ErrorCode::Unavailable => DatasetError::Unavailable(message),
            ErrorCode::DataLoss => DatasetError::DataLoss(message),
            ErrorCode::Internal => DatasetError::Internal(message),
        }
    }

    /// A compare-and-set that lost to a concurrent writer
    /// (`FailedPrecondition`; [`DatasetError::is_conflict`] tells it apart).
    pub fn conflict(message: impl Into<String>) -> Self {
        DatasetError::Conflict(message.into())
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, DatasetError::Conflict(_))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        DatasetError::InvalidArgument(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        DatasetError::NotFound(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        DatasetError::Internal(message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        DatasetError::Unavailable(message.into())
    }

    pub fn data_loss(message: impl Into<String>) -> Self {
        DatasetError::DataLoss(message.into())
    }

    pub fn message(&self) -> &str {
        match self {
            DatasetError::InvalidArgument(m)
            | DatasetError::NotFound(m)
            | DatasetError::AlreadyExists(m)
            | DatasetError::Conflict(m)
            | DatasetError::FailedPrecondition(m)
            | DatasetError::Unauthenticated(m)
            | DatasetError::PermissionDenied(m)
            | DatasetError::PayloadTooLarge(m)
            | DatasetError::ResourceExhausted(m)
            | DatasetError::OutOfRange(m)
            | DatasetError::Unavailable(m)
            | DatasetError::DataLoss(m)
            | DatasetError::Internal(m)
            | DatasetError::MethodNotAllowed(m) => m,
        }
    }

    /// The same failure with `context` put before the message.
    pub fn within(self, context: &str) -> Self {
        let code = self.code();
        let conflict = self.is_conflict();
        let message = format!("{context}: {}", self.message());
        if conflict {
            DatasetError::Conflict(message)
        } else {
            DatasetError::new(code, message)
        }
    }
}

impl HasCode for DatasetError {
    fn code(&self) -> ErrorCode {
        match self {
            DatasetError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            DatasetError::NotFound(_) => ErrorCode::NotFound,
            DatasetError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            DatasetError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            DatasetError::Conflict(_) | DatasetError::FailedPrecondition(_) => {
                ErrorCode::FailedPrecondition
            }
            DatasetError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            DatasetError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            DatasetError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            DatasetError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            DatasetError::OutOfRange(_) => ErrorCode::OutOfRange,
            DatasetError::Unavailable(_) => ErrorCode::Unavailable,
            DatasetError::DataLoss(_) => ErrorCode::DataLoss,
            DatasetError::Internal(_) => ErrorCode::Internal,
        }
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
