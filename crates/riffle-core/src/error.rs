//! One error code per failure class, mapped to both an HTTP status and a
//! gRPC status so the REST and gRPC surfaces never disagree.

use serde::Serialize;

/// A value that is not valid where it was given (a topic name, a CIDR
/// range, a seed line); the message names the value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub fn new(message: impl Into<String>) -> InvalidValue {
        InvalidValue(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

/// For `?` on helpers whose reasons are strings.
impl From<String> for InvalidValue {
    fn from(message: String) -> InvalidValue {
        InvalidValue(message)
    }
}

impl HasCode for InvalidValue {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// A failure class. Crates keep their own `thiserror` enums and map each
/// variant to one of these codes at the API boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    PayloadTooLarge,
    ResourceExhausted,
    FailedPrecondition,
    OutOfRange,
    Unavailable,
    DataLoss,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DataLoss => "data_loss",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::OutOfRange => 416,
            ErrorCode::Unavailable => 503,
            ErrorCode::DataLoss => 500,
            ErrorCode::Internal => 500,
        }
    }

    /// The numeric gRPC status code (`google.rpc.Code`).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::MethodNotAllowed => 12,
            ErrorCode::NotFound => 5,
            ErrorCode::AlreadyExists => 6,
            ErrorCode::PermissionDenied => 7,
            ErrorCode::ResourceExhausted | ErrorCode::PayloadTooLarge => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::OutOfRange => 11,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
            ErrorCode::DataLoss => 15,
            ErrorCode::Unauthenticated => 16,
        }
    }

    /// Whether a client may retry the same request later and expect success.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::ResourceExhausted | ErrorCode::Unavailable)
    }
}

/// An error that knows its failure class. Every error type that reaches
/// the API implements it, so the API layer turns any of them into an HTTP
/// or gRPC error with one conversion, and callers decide about retries by
/// code.
pub trait HasCode: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> ErrorCode;

    /// How long a client should wait before retrying, when the error knows
    /// (backpressure); the API sends it as `Retry-After`.
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether retrying the same request later may succeed.
    fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_consistent() {
        assert_eq!(ErrorCode::InvalidArgument.http_status(), 400);
        assert_eq!(ErrorCode::InvalidArgument.grpc_code(), 3);
        assert_eq!(ErrorCode::ResourceExhausted.http_status(), 429);
        assert_eq!(ErrorCode::Unauthenticated.grpc_code(), 16);
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(!ErrorCode::NotFound.is_retryable());
    }
}
