//! `POST /v1/events`: validated events into the log.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use riffle_ingest::BodyFormat;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Permission;
use crate::error::ApiError;
use crate::rest::extract::{read_admitted_body, ApiQuery};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", post(post_events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    topic: Option<String>,
}

async fn post_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    state.require_role(riffle_core::config::Role::Ingest)?;
    let services = state.services()?;
    services.auth.check(&headers, Permission::Ingest)?;
    let (body, _permit) = read_admitted_body(&state, &services, &headers, body).await?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = BodyFormat::detect(content_type, &body);
    let outcome = services
        .ingestor
        .ingest_admitted(&body, format, query.topic.as_deref())
        .await?;
    Ok(Json(json!({
        "accepted": outcome.accepted,
        "rejected": outcome.rejected,
    })))
}
