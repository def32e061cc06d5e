//! REST surface of dataset pub/sub (`/v1/datasets/...`), served on two
//! listeners of their own, each with its own runtime (worker pool): the
//! publish side (`datasets.publish_addr`, role `datasets-publish`: every
//! endpoint) and the consume side (`datasets.consume_addr`, role
//! `datasets-consume`: the read endpoints only). A flood of publishes
//! cannot starve consumers' long-polls, and the reverse. docs/datasets.md
//! is the protocol reference.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use riffle_core::time::{format_rfc3339_ms, parse_time_arg};
use riffle_core::ErrorCode;
use riffle_datasets::access::{AccessPolicy, Permission};
use riffle_datasets::model::{
    metadata_from_pairs, parse_duration_ms, DataLocation, Labels, Pin, Rollout, RolloutStage,
    Scope, Topic, Version,
};
use riffle_datasets::service::{Answer, CreateTopic, PublishRequest};
use riffle_datasets::DatasetService;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::rest::extract::bearer;

/// What the dataset routers need once the service is up.
pub struct DatasetsState {
    pub service: Arc<DatasetService>,
    pub policy: AccessPolicy,
}

#[derive(Clone)]
pub struct DatasetsApp {
    pub state: watch::Receiver<Option<Arc<DatasetsState>>>,
}

impl DatasetsApp {
    fn get(&self) -> Result<Arc<DatasetsState>, ApiError> {
        self.state
            .borrow()
            .clone()
            .ok_or_else(|| ApiError::unavailable("dataset service starting"))
    }
}

/// Every endpoint: the publish listener.
pub fn publish_router(app: DatasetsApp) -> Router {
    read_routes()
        .route("/v1/datasets/topics", get(list_topics).post(create_topic))
        .route(
            "/v1/datasets/topics/{topic}",
            get(describe_topic).delete(delete_topic),
        )
        .route(
            "/v1/datasets/topics/{topic}/versions",
            get(list_versions).post(publish),
        )
        .route(
            "/v1/datasets/topics/{topic}/versions/{version}/scopes",
            post(add_scopes),
        )
        .route(
            "/v1/datasets/topics/{topic}/versions/{version}/rollout",
            post(start_rollout),
        )
        .route("/v1/datasets/topics/{topic}/pin", put(pin).delete(unpin))
        .route("/v1/datasets/topics/{topic}/pins", get(list_pins))
        .route("/v1/datasets/topics/{topic}/rollouts", get(list_rollouts))
        .route(
            "/v1/datasets/topics/{topic}/rollouts/{id}",
            get(rollout_status).post(control_rollout),
        )
        .route("/v1/datasets/topics/{topic}/audit", get(audit))
        .fallback(super::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// The read endpoints only: the consume listener.
pub fn consume_router(app: DatasetsApp) -> Router {
    read_routes()
        .route("/v1/datasets/topics", get(list_topics))
        .route("/v1/datasets/topics/{topic}", get(describe_topic))
        .route("/v1/datasets/topics/{topic}/versions", get(list_versions))
        .fallback(super::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

fn read_routes() -> Router<DatasetsApp> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::rest::ops::metrics_text))
        .route("/v1/datasets/topics/{topic}/latest", get(latest))
        .route(
            "/v1/datasets/topics/{topic}/versions/{version}",
            get(get_version),
        )
        .route(
            "/v1/datasets/topics/{topic}/versions/{version}/data",
            get(get_data),
        )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint (the consume listener serves reads only)",
    )
}

async fn readyz(State(app): State<DatasetsApp>) -> Response {
    match app.get() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "dataset service starting\n",
        )
            .into_response(),
    }
}

/// Checks the caller's token for `permission` on `topic`; returns the
/// actor name for the audit trail.
pub(crate) async fn authorize(
    state: &DatasetsState,
    headers: &HeaderMap,
    topic: &str,
    permission: Permission,
) -> Result<String, ApiError> {
    let encrypted = state.service.is_encrypted(topic).await?.unwrap_or(false);
    Ok(state
        .policy
        .authorize(bearer(headers)?, topic, permission, encrypted)?)
}

/// `key=value` pairs of the raw query string, percent-decoded, in order.
fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn reject_unknown(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    for (key, _) in pairs {
        if !known.contains(&key.as_str()) && !key.starts_with("meta.") {
            return Err(ApiError::bad_request(format!(
                "query string: unknown parameter {key:?} (expected one of {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn single<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "{key}: given more than once"
        )));
    }
    Ok(first)
}

fn parse_u64(value: &str, field: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("{field}: {value:?} is not a non-negative integer"))
    })
}

fn parse_version_path(value: &str) -> Result<u64, ApiError> {
    match parse_u64(value, "version")? {
        0 => Err(ApiError::bad_request("version: versions start at 1")),
        n => Ok(n),
    }
}

fn rfc3339(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(format_rfc3339_ms(ms)))
}

fn topic_json(topic: &Topic) -> Value {
    json!({
        "name": topic.name,
        "owner": topic.owner,
        "description": topic.description,
        "retention_count": topic.retention_count,
        "retention_age_ms": topic.retention_age_ms,
        "encrypted": topic.wrapped_key.is_some(),
        "created_at": format_rfc3339_ms(topic.created_at_ms),
        "created_by": topic.created_by,
        "last_published_at": rfc3339(topic.last_published_at_ms),
        "last_consumed_at": rfc3339(topic.last_consumed_at_ms),
    })
}

fn version_json(version: &Version) -> Value {
    let (location, blob) = match &version.location {
        DataLocation::Inline => ("inline", None),
        DataLocation::Blob(key) => ("blob", Some(key.as_str())),
    };
    json!({
        "topic": version.topic,
        "version": version.version,
        "metadata": version.metadata,
        "checksum": version.checksum,
        "size": version.size,
        "created_at": format_rfc3339_ms(version.created_at_ms),
        "created_at_ms": version.created_at_ms,
        "created_by": version.created_by,
        "scopes": version.scopes.iter().map(Scope::to_string).collect::<Vec<_>>(),
        "withdrawn": version.withdrawn,
        "location": location,
        "blob": blob,
    })
}

fn pin_json(pin: &Pin) -> Value {
    json!({
        "topic": pin.topic,
        "scope": pin.scope.as_ref().map(Scope::to_string),
        "version": pin.version,
        "pinned_at": format_rfc3339_ms(pin.pinned_at_ms),
        "pinned_by": pin.pinned_by,
    })
}

fn rollout_json(rollout: &Rollout) -> Value {
    let stages: Vec<Value> = rollout
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "scope": s.scope.to_string(),
                "delay_ms": s.delay_ms,
                "applied": i < rollout.next_stage,
            })
        })
        .collect();
    json!({
        "id": rollout.id,
        "topic": rollout.topic,
        "version": rollout.version,
        "state": rollout.state.as_str(),
        "stages": stages,
        "stages_applied": rollout.next_stage,
        "next_stage_at": rfc3339(rollout.next_at_ms),
        "remaining_ms": rollout.remaining_ms,
        "created_at": format_rfc3339_ms(rollout.created_at_ms),
        "created_by": rollout.created_by,
        "updated_at": format_rfc3339_ms(rollout.updated_at_ms),
    })
}

fn answer_response(answer: &Answer) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer.json.clone(),
    )
        .into_response()
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

// ----------------------------------------------------------------------
// Topics

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopicBody {
    name: String,
    #[serde(default)]
    retention_count: Option<u64>,
    /// `"30d"` or milliseconds.
    #[serde(default)]
    retention_age: Option<Value>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    encrypted: bool,
}

async fn create_topic(
    State(app): State<DatasetsApp>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let state = app.get()?;
    let request: CreateTopicBody = json_body(&body)?;
    let actor = authorize(&state, &headers, &request.name, Permission::Publish).await?;
    let retention_age_ms = match &request.retention_age {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("retention_age: {n} is not a non-negative integer"))
        })?),
        Some(Value::String(s)) => Some(parse_duration_ms(s, "retention_age")?),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "retention_age: {other} is not a duration (\"30d\") or milliseconds"
            )))
        }
    };
    let topic = state
        .service
        .create_topic(
            CreateTopic {
                name: request.name,
                owner: request.owner,
                description: request.description,
                retention_count: request.retention_count,
                retention_age_ms,
                encrypted: request.encrypted,
            },
            &actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(topic_json(&topic))).into_response())
}

async fn list_topics(
    State(app): State<DatasetsApp>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let pairs = query_pairs(&raw);
    reject_unknown(&pairs, &["unused_for"])?;
    let topics = match single(&pairs, "unused_for")? {
        Some(age) => {
            let ms = parse_duration_ms(age, "unused_for")?;
            state.service.unused_topics(ms).await?
        }
        None => state.service.list_topics().await?,
    };
    // Only topics the caller may consume: restricted and encrypted topics
    // are not listed to anyone else.
    let bearer = bearer(&headers)?;
    let topics: Vec<_> = topics
        .into_iter()
        .filter(|t| {
            state
                .policy
                .authorize(
                    bearer,
                    &t.name,
                    Permission::Consume,
                    t.wrapped_key.is_some(),
                )
                .is_ok()
        })
        .collect();
    Ok(Json(json!({
        "topics": topics.iter().map(topic_json).collect::<Vec<_>>(),
    })))
}

async fn describe_topic(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let view = state.service.cached_topic(&topic)?;
    let mut out = topic_json(&view.topic);
    out["versions"] = json!(view.versions.len());
    out["latest_version"] = json!(view.versions.first().map(|v| v.version));
    out["pins"] = json!(view.pins.iter().map(pin_json).collect::<Vec<_>>());
    out["active_rollouts"] = json!(view.active_rollouts);
    out["hidden_versions"] = json!(view.hidden);
    Ok(Json(out))
}

async fn delete_topic(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    state.service.delete_topic(&topic, &actor).await?;
    Ok(Json(json!({"deleted": topic})))
}

// ----------------------------------------------------------------------
// Versions

async fn publish(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let pairs = query_pairs(&raw);
    reject_unknown(&pairs, &["scope", "staged", "checksum"])?;
    let scopes = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| Scope::parse_field(v, "scope"))
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = metadata_from_pairs(
        pairs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("meta.").map(|k| (k, v.as_str()))),
    )?;
    let staged = match single(&pairs, "staged")? {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "staged: {other:?} is not true or false"
            )))
        }
    };
    let request = PublishRequest {
        scopes,
        metadata,
        staged,
    };
    let version = match single(&pairs, "checksum")? {
        Some(checksum) => {
            // Metadata-only: the payload already exists; a body is a mistake.
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
                if !chunk.is_empty() {
                    return Err(ApiError::bad_request(
                        "body: a metadata-only publish (checksum=…) takes no payload",
                    ));
                }
            }
            state
                .service
                .publish_existing(&topic, request, checksum, &actor)
                .await?
        }
        None => {
            let stream = body
                .into_data_stream()
                .map(|chunk| chunk.map_err(std::io::Error::other))
                .boxed();
            state
                .service
                .publish(&topic, request, stream, &actor)
                .await?
        }
    };
    Ok((StatusCode::CREATED, Json(version_json(&version))).into_response())
}

async fn list_versions(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let versions = state.service.list_versions(&topic).await?;
    Ok(Json(json!({
        "topic": topic,
        "versions": versions.iter().map(version_json).collect::<Vec<_>>(),
    })))
}

async fn get_version(
    State(app): State<DatasetsApp>,
    Path((topic, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let number = parse_version_path(&version)?;
    let version = state.service.version(&topic, number).await?;
    Ok(Json(version_json(&version)))
}

/// Parses a single `Range: bytes=…` against `size`; `Ok(None)` = no header.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            ErrorCode::OutOfRange,
            format!(
                "range: {:?} is not a single satisfiable byte range of a {size}-byte payload",
                value.to_str().unwrap_or("?")
            ),
        )
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
        .ok_or_else(unsatisfiable)?;
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            size.saturating_sub(n)..size
        }
        (start, "") => {
            let s: u64 = start.parse().map_err(|_| unsatisfiable())?;
            s..size
        }
        (start, end) => {
            let s: u64 = start.parse().map_err(|_| unsatisfiable())?;
            let e: u64 = end.parse().map_err(|_| unsatisfiable())?;
            if e < s {
                return Err(unsatisfiable());
            }
            s..e.saturating_add(1).min(size)
        }
    };
    if range.start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

async fn get_data(
    State(app): State<DatasetsApp>,
    Path((topic, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let number = parse_version_path(&version)?;
    let meta = state.service.version(&topic, number).await?;
    let range = match parse_range(&headers, meta.size) {
        Ok(range) => range,
        Err(e) => {
            let mut response = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let partial = range.is_some();
    let data = state.service.open_data(&topic, number, range).await?;
    let length = data.range.end - data.range.start;
    let mut builder = Response::builder()
        .status(if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", data.version.checksum))
        .header("x-riffle-checksum", data.version.checksum.as_str())
        .header("x-riffle-version", data.version.version);
    if partial {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                data.range.start,
                data.range.end - 1,
                data.version.size
            ),
        );
    }
    let body = Body::from_stream(data.body.map(|chunk| chunk.map_err(std::io::Error::other)));
    builder
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("response: {e}")))
}

async fn latest(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let pairs = query_pairs(&raw);
    reject_unknown(&pairs, &["labels", "after", "wait", "at"])?;
    let labels = match single(&pairs, "labels")? {
        Some(s) => Labels::parse_field(s, "labels")?,
        None => Labels::default(),
    };
    let after = single(&pairs, "after")?
        .map(|s| parse_u64(s, "after"))
        .transpose()?
        .unwrap_or(0);
    let wait_ms = single(&pairs, "wait")?
        .map(|s| parse_duration_ms(s, "wait"))
        .transpose()?
        .unwrap_or(0);
    if let Some(at) = single(&pairs, "at")? {
        if wait_ms > 0 || after > 0 {
            return Err(ApiError::bad_request(
                "at: a point-in-time lookup takes neither wait nor after",
            ));
        }
        let at_ms = parse_time_arg(at).map_err(|e| ApiError::bad_request(format!("at: {e}")))?;
        return match state.service.latest_at(&topic, &labels, at_ms)? {
            Some(answer) => Ok(answer_response(&answer)),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        };
    }
    match state
        .service
        .latest(&topic, &labels, after, Duration::from_millis(wait_ms))
        .await?
    {
        Some(answer) => Ok(answer_response(&answer)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopesBody {
    scopes: Vec<String>,
}

async fn add_scopes(
    State(app): State<DatasetsApp>,
    Path((topic, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let number = parse_version_path(&version)?;
    let request: ScopesBody = json_body(&body)?;
    let scopes = request
        .scopes
        .iter()
        .enumerate()
        .map(|(i, s)| Scope::parse_field(s, &format!("scopes[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let version = state
        .service
        .add_scopes(&topic, number, scopes, &actor)
        .await?;
    Ok(Json(version_json(&version)))
}

// ----------------------------------------------------------------------
// Pins

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    version: u64,
    #[serde(default)]
    scope: Option<String>,
}

async fn pin(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let request: PinBody = json_body(&body)?;
    let scope = request
        .scope
        .as_deref()
        .map(|s| Scope::parse_field(s, "scope"))
        .transpose()?;
    let pin = state
        .service
        .pin(&topic, scope, request.version, &actor)
        .await?;
    Ok(Json(pin_json(&pin)))
}

async fn unpin(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let pairs = query_pairs(&raw);
    reject_unknown(&pairs, &["scope"])?;
    // The scope may come as `?scope=` or as `{"scope": …}`.
    let from_body = if body.is_empty() {
        None
    } else {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct UnpinBody {
            scope: Option<String>,
        }
        json_body::<UnpinBody>(&body)?.scope
    };
    let scope = single(&pairs, "scope")?
        .map(str::to_string)
        .or(from_body)
        .map(|s| Scope::parse_field(&s, "scope"))
        .transpose()?;
    state.service.unpin(&topic, scope.clone(), &actor).await?;
    Ok(Json(json!({
        "topic": topic,
        "unpinned": scope.as_ref().map(Scope::to_string),
    })))
}

async fn list_pins(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let view = state.service.cached_topic(&topic)?;
    Ok(Json(json!({
        "topic": topic,
        "pins": view.pins.iter().map(pin_json).collect::<Vec<_>>(),
    })))
}

async fn audit(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let entries = state.service.store().audit(&topic).await?;
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": format_rfc3339_ms(e.at_ms),
                "actor": e.actor,
                "action": e.action,
                "version": e.version,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({"topic": topic, "entries": entries})))
}

// ----------------------------------------------------------------------
// Rollouts

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    stages: Vec<StageBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageBody {
    scope: String,
    /// `"10m"` or milliseconds; default 0.
    #[serde(default)]
    delay: Option<Value>,
}

async fn start_rollout(
    State(app): State<DatasetsApp>,
    Path((topic, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let number = parse_version_path(&version)?;
    let request: RolloutBody = json_body(&body)?;
    let mut stages = Vec::with_capacity(request.stages.len());
    for (i, stage) in request.stages.iter().enumerate() {
        let field = format!("stages[{i}].delay");
        let delay_ms = match &stage.delay {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                ApiError::bad_request(format!("{field}: {n} is not a non-negative integer"))
            })?,
            Some(Value::String(s)) => parse_duration_ms(s, &field)?,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{field}: {other} is not a duration (\"10m\") or milliseconds"
                )))
            }
        };
        stages.push(RolloutStage {
            scope: Scope::parse_field(&stage.scope, &format!("stages[{i}].scope"))?,
            delay_ms,
        });
    }
    let rollout = state
        .service
        .start_rollout(&topic, number, stages, &actor)
        .await?;
    Ok((StatusCode::CREATED, Json(rollout_json(&rollout))).into_response())
}

async fn list_rollouts(
    State(app): State<DatasetsApp>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let rollouts = state.service.list_rollouts(&topic).await?;
    Ok(Json(json!({
        "topic": topic,
        "rollouts": rollouts.iter().map(rollout_json).collect::<Vec<_>>(),
    })))
}

async fn rollout_of_topic(
    state: &DatasetsState,
    topic: &str,
    id: &str,
) -> Result<Rollout, ApiError> {
    let id = parse_u64(id, "id")?;
    let rollout = state.service.rollout(id).await?;
    if rollout.topic != topic {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("topic {topic:?} has no rollout {id}"),
        ));
    }
    Ok(rollout)
}

async fn rollout_status(
    State(app): State<DatasetsApp>,
    Path((topic, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    authorize(&state, &headers, &topic, Permission::Consume).await?;
    let rollout = rollout_of_topic(&state, &topic, &id).await?;
    Ok(Json(rollout_json(&rollout)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    action: String,
}

async fn control_rollout(
    State(app): State<DatasetsApp>,
    Path((topic, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = app.get()?;
    let actor = authorize(&state, &headers, &topic, Permission::Publish).await?;
    let request: ControlBody = json_body(&body)?;
    let rollout = rollout_of_topic(&state, &topic, &id).await?;
    let saved = state
        .service
        .control_rollout(rollout.id, &request.action, &actor)
        .await?;
    Ok(Json(rollout_json(&saved)))
}

/// Metadata map of a publish, for callers outside HTTP (gRPC).
pub(crate) fn metadata_map(
    pairs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(metadata_from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, size: u64) -> Result<Option<Range<u64>>, ErrorCode> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, spec.parse().unwrap());
        parse_range(&headers, size).map_err(|e| e.code)
    }

    #[test]
    fn ranges_are_clamped_and_never_overflow() {
        assert_eq!(range("bytes=2-5", 10), Ok(Some(2..6)));
        assert_eq!(range("bytes=5-", 10), Ok(Some(5..10)));
        assert_eq!(range("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(range("bytes=8-100", 10), Ok(Some(8..10)));
        assert_eq!(range("bytes=0-18446744073709551615", 10), Ok(Some(0..10)));
        assert_eq!(range("bytes=5-18446744073709551615", 10), Ok(Some(5..10)));
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-1",
        ] {
            assert_eq!(range(bad, 10), Err(ErrorCode::OutOfRange), "{bad}");
        }
    }
}
