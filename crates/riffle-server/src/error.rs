//! API errors: one [`ErrorCode`] → HTTP status and gRPC status, rendered as
//! `{"error":{"code","message"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use riffle_core::{ErrorCode, HasCode};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unavailable, message)
    }
}

/// Every crate's error converts the same way: its code, its message, and
/// the retry hint it knows (as Quickwit's `ServiceError`).
impl<E: HasCode> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
            retry_after_secs: e.retry_after().map(|d| d.as_secs().max(1)),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(tonic::Code::from_i32(e.code.grpc_code()), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}
