//! Health, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use riffle_core::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let core = state.config.server.roles.iter().any(|r| {
        matches!(
            r,
            riffle_core::config::Role::Ingest
                | riffle_core::config::Role::Process
                | riffle_core::config::Role::Serve
        )
    });
    if !core {
        return (StatusCode::OK, "ready (datasets only)\n").into_response();
    }
    match state.services() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "log recovery in progress\n",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(services) = state.services() {
        crate::metrics::refresh(&services);
    }
    metrics_text().await
}

/// The process-wide registry in the Prometheus text format.
pub(crate) async fn metrics_text() -> Response {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&prometheus::gather(), &mut out) {
        return ApiError::new(ErrorCode::Internal, format!("metrics: {e}")).into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
