//! `/v1/ads/...` and `/v1/pipelines`: the ad click queries (docs/api.md) and
//! the pipeline status. Queries read the aggregate store (an MVCC snapshot
//! read of a few rows, microseconds) directly on the async worker.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use riffle_ads::query::{
    self, CountAnswer, CountParams, PopularAnswer, PopularParams, QueryContext,
};
use riffle_ads::AdsPipeline;
use riffle_core::ErrorCode;
use serde_json::{json, Value};

use crate::auth::Permission;
use crate::error::ApiError;
use crate::metrics::ADS_QUERY_SECONDS;
use crate::rest::extract::ApiQuery;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ads/filters", get(filters))
        .route("/v1/ads/popular_ads", get(popular_ads))
        .route("/v1/ads/{ad_id}/aggregated_count", get(aggregated_count))
        .route("/v1/ads/reconcile", post(reconcile))
        .route("/v1/ads/recalc", post(start_recalc))
        .route("/v1/ads/archive", post(archive))
        .route("/v1/ads/recalc/{id}", get(recalc_status))
        .route("/v1/pipelines", get(pipelines))
}

fn pipeline(state: &AppState, headers: &HeaderMap) -> Result<Arc<AdsPipeline>, ApiError> {
    // Queries read the aggregate store, which only the serve role keeps.
    state.require_role(riffle_core::config::Role::Serve)?;
    let services = state.services()?;
    services.auth.check(headers, Permission::Read)?;
    services.ads.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::FailedPrecondition,
            "the ad click pipeline is disabled (config ads.enabled = false)",
        )
    })
}

fn context(pipeline: &AdsPipeline) -> QueryContext<'_> {
    let spec = pipeline.spec();
    QueryContext {
        store: pipeline.store().as_ref(),
        filters: &spec.filters,
        popular: &spec.popular,
        top_n: spec.top_n,
        watermark: pipeline.watermark(),
        now_ms: pipeline.now_ms(),
    }
}

pub async fn aggregated_count(
    State(state): State<AppState>,
    Path(ad_id): Path<String>,
    ApiQuery(params): ApiQuery<CountParams>,
    headers: HeaderMap,
) -> Result<Json<CountAnswer>, ApiError> {
    let started = Instant::now();
    let pipeline = pipeline(&state, &headers)?;
    let answer = query::aggregated_count(&context(&pipeline), &ad_id, &params)?;
    ADS_QUERY_SECONDS
        .with_label_values(&["aggregated_count"])
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(answer))
}

pub async fn popular_ads(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<PopularParams>,
    headers: HeaderMap,
) -> Result<Json<PopularAnswer>, ApiError> {
    let started = Instant::now();
    let pipeline = pipeline(&state, &headers)?;
    let answer = query::popular_ads(&context(&pipeline), &params)?;
    ADS_QUERY_SECONDS
        .with_label_values(&["popular_ads"])
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(answer))
}

pub async fn filters(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let pipeline = pipeline(&state, &headers)?;
    let popular: Vec<Value> = pipeline
        .spec()
        .popular
        .iter()
        .map(|(window_minutes, filter_id)| {
            json!({"window_minutes": window_minutes, "filter_id": filter_id})
        })
        .collect();
    Ok(Json(json!({
        "filters": pipeline.filters(),
        "popular": popular,
        "top_n": pipeline.spec().top_n,
    })))
}

pub async fn pipelines(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let mut pipelines = Vec::new();
    if let Some(ads) = &services.ads {
        pipelines.push(ads.report().await);
    }
    Ok(Json(json!({ "pipelines": pipelines })))
}

/// `{"from","to","source"}` of reconcile and recalc: epoch ms or RFC 3339;
/// `source` is `"log"` (default) or `"parquet"`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeBody {
    from: Value,
    to: Value,
    #[serde(default)]
    source: Option<String>,
}

fn range_param(param: &'static str, value: &Value) -> Result<i64, ApiError> {
    let parsed = match value {
        Value::Number(n) => n.as_i64().ok_or(()),
        Value::String(s) => riffle_core::time::parse_time_arg(s).map_err(|_| ()),
        _ => Err(()),
    };
    parsed.map_err(|()| {
        ApiError::bad_request(format!(
            "invalid {param}: {value} is not epoch milliseconds or an RFC 3339 time"
        ))
    })
}

fn parse_range(
    pipeline: &AdsPipeline,
    body: &[u8],
) -> Result<(i64, i64, riffle_ads::recount::RecountSource), ApiError> {
    let range: RangeBody =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    Ok((
        range_param("from", &range.from)?,
        range_param("to", &range.to)?,
        pipeline.recount_source(range.source.as_deref())?,
    ))
}

fn admin_pipeline(state: &AppState, headers: &HeaderMap) -> Result<Arc<AdsPipeline>, ApiError> {
    state.require_role(riffle_core::config::Role::Serve)?;
    let services = state.services()?;
    services.auth.check(headers, Permission::Admin)?;
    services.ads.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::FailedPrecondition,
            "the ad click pipeline is disabled (config ads.enabled = false)",
        )
    })
}

pub async fn reconcile(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<riffle_ads::service::ReconcileReport>, ApiError> {
    let pipeline = admin_pipeline(&state, &headers)?;
    let (from, to, source) = parse_range(&pipeline, &body)?;
    Ok(Json(pipeline.reconcile(from, to, &source).await?))
}

pub async fn start_recalc(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let pipeline = admin_pipeline(&state, &headers)?;
    let (from, to, source) = parse_range(&pipeline, &body)?;
    let id = pipeline.start_recalc(from, to, source)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

/// `POST /v1/ads/archive`: one archive pass now (what the hourly loop does).
pub async fn archive(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<riffle_ads::archive::ArchiveReport>, ApiError> {
    let pipeline = admin_pipeline(&state, &headers)?;
    Ok(Json(pipeline.archive_now().await?))
}

pub async fn recalc_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<riffle_ads::service::RecalcStatus>, ApiError> {
    let pipeline = admin_pipeline(&state, &headers)?;
    let status = id
        .parse::<u64>()
        .ok()
        .and_then(|id| pipeline.recalc_status(id))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no recalculation {id:?}")))?;
    Ok(Json(status))
}
