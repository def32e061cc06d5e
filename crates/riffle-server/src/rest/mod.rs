//! The REST surface of the main listener (`/v1/...`, health, metrics):
//! one module per domain, each with its own `routes()`; shared extractors
//! in [`extract`].

use axum::extract::DefaultBodyLimit;
use axum::Router;
use riffle_core::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod ads;
pub(crate) mod datasets;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod ops;
pub(crate) mod topics;

pub fn router(state: AppState) -> Router {
    // The ingest limit is enforced by the ingestor (with a precise message);
    // the transport limit only stops absurd bodies early.
    let body_limit = state.config.ingest.max_body_bytes.saturating_add(1);
    Router::new()
        .merge(ops::routes())
        .merge(events::routes())
        .merge(topics::routes())
        .merge(ads::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}
