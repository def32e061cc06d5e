//! Extractors and body helpers shared by the REST handlers.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use riffle_core::ErrorCode;

use crate::error::ApiError;
use crate::state::{AppState, Services};

/// The request body, or an API error in the usual JSON shape when axum
/// refused it (above all the transport size limit, which would otherwise
/// answer 413 with a plain-text body).
/// Reads a write request's body only after auth, and only within the
/// in-flight budget: the budget is reserved from `Content-Length` (or the
/// maximum body size when the length is not declared) before a byte is
/// buffered, so slow or concurrent uploads cannot grow memory past it.
pub(crate) async fn read_admitted_body(
    state: &AppState,
    services: &Services,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Bytes, riffle_ingest::ingest::InflightPermit), ApiError> {
    let max = state.config.ingest.max_body_bytes;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > max) {
        // Discard (not buffer) a moderately oversized body before answering,
        // so clients that write the whole body first still read the 413
        // instead of a reset connection.
        if len <= max.saturating_mul(2) {
            use http_body_util::BodyExt;
            let mut body = body;
            while let Some(Ok(_frame)) = body.frame().await {}
        }
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body: {len} bytes exceeds the limit of {max} bytes"),
        ));
    }
    let permit = services.ingestor.admit(declared.unwrap_or(max))?;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("body: exceeds the limit of {max} bytes"),
            )
        } else {
            ApiError::bad_request(format!("body: {e}"))
        }
    })?;
    Ok((bytes, permit))
}

pub(crate) fn request_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "body: exceeds the limit of {} bytes",
                    state.config.ingest.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(format!("body: {}", e.body_text()))
        }
    })
}

/// `Query` whose rejection (unknown or malformed parameters) is an API
/// error in the usual JSON shape rather than axum's plain-text 400.
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(ApiQuery(query)),
            Err(e) => {
                let detail = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.body_text());
                Err(ApiError::bad_request(format!("query string: {detail}")))
            }
        }
    }
}

pub(crate) fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// The token of an `Authorization: Bearer <token>` header; `None` without
/// the header, an `unauthenticated` error when it has another form.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "authorization: expected \"Bearer <token>\"",
            )
        })
}
