//! The log API for clients in any language: topics, records, consumer
//! group offsets.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use riffle_core::event::Event;
use riffle_core::ErrorCode;
use riffle_log::{RecordBatch, StartPosition, TopicConfig, TopicPartition};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Permission;
use crate::error::ApiError;
use crate::rest::extract::{parse_json_body, read_admitted_body, request_body, ApiQuery};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route(
            "/v1/topics/{topic}",
            get(describe_topic).delete(delete_topic),
        )
        .route("/v1/topics/{topic}/records", post(produce_records))
        .route("/v1/topics/{topic}/offsets", get(topic_offsets))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(read_records),
        )
        .route("/v1/groups", get(list_groups))
        .route(
            "/v1/groups/{group}/offsets",
            get(group_offsets).post(commit_group_offsets),
        )
}

async fn list_topics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let topics = services.bus.list_topics().await?;
    Ok(Json(
        json!({"topics": topics.iter().map(topic_json).collect::<Vec<_>>()}),
    ))
}

fn topic_json(t: &riffle_log::TopicMetadata) -> Value {
    json!({
        "name": t.name,
        "partitions": t.config.partitions,
        "retention_ms": t.config.retention_ms,
        "retention_bytes": t.config.retention_bytes,
        "segment_bytes": t.config.segment_bytes,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    partitions: Option<u32>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    segment_bytes: Option<u64>,
}

async fn create_topic(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Admin)?;
    let body = request_body(&state, body)?;
    let request: CreateTopic = parse_json_body(&body)?;
    let defaults = &services.log_defaults;
    let config = TopicConfig {
        partitions: request.partitions.unwrap_or(defaults.partitions),
        retention_ms: request.retention_ms.unwrap_or(defaults.retention_ms),
        retention_bytes: request.retention_bytes.unwrap_or(defaults.retention_bytes),
        segment_bytes: request.segment_bytes.unwrap_or(defaults.segment_bytes),
    };
    let created = services.bus.create_topic(&request.name, config).await?;
    Ok((StatusCode::CREATED, Json(topic_json(&created))))
}

async fn describe_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let description = services.bus.describe_topic(&topic).await?;
    let mut out = topic_json(&description.metadata);
    out["partitions"] = json!(description
        .partitions
        .iter()
        .map(|p| json!({
            "partition": p.partition,
            "start_offset": p.start_offset,
            "end_offset": p.end_offset,
            "size_bytes": p.size_bytes,
        }))
        .collect::<Vec<_>>());
    out["partition_count"] = json!(description.partitions.len());
    Ok(Json(out))
}

async fn delete_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Admin)?;
    services.bus.delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    offset: Option<String>,
    max: Option<String>,
}

/// One record as served by the records endpoint.
#[derive(serde::Serialize)]
struct RecordOut {
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    value: Box<serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

/// Renders a stored value: Riffle events (binary) as their JSON form with
/// the envelope first, JSON documents as themselves, other bytes as base64
/// under `value_base64` (with `value` null).
fn render_value(value: &[u8]) -> (Box<serde_json::value::RawValue>, Option<String>) {
    use serde_json::value::RawValue;
    if value.first() == Some(&riffle_core::event::BINARY_FORMAT_V1) {
        if let Ok(event) = Event::decode(value) {
            let mut out = Vec::with_capacity(value.len() * 2);
            event.write_json(&mut out);
            if let Ok(text) = String::from_utf8(out) {
                if let Ok(raw) = RawValue::from_string(text) {
                    return (raw, None);
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok(raw) = RawValue::from_string(text.to_string()) {
            return (raw, None);
        }
    }
    (
        RawValue::from_string("null".into()).expect("null is JSON"),
        Some(base64::engine::general_purpose::STANDARD.encode(value)),
    )
}

fn render_key(key: Option<&[u8]>) -> (Option<String>, Option<String>) {
    match key {
        None => (None, None),
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(k)),
            ),
        },
    }
}

fn parse_u64_param(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{name}: expected a non-negative integer, got \"{value}\""
        ))
    })
}

async fn read_records(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<RecordsQuery>,
    headers: HeaderMap,
) -> Result<Json<RecordsOut>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let partition = u32::try_from(parse_u64_param("partition", &partition)?)
        .map_err(|_| ApiError::bad_request(format!("partition: {partition} is out of range")))?;
    let max = match &query.max {
        Some(m) => parse_u64_param("max", m)?.clamp(1, 10_000) as usize,
        None => 100,
    };
    let offset = match &query.offset {
        Some(o) => parse_u64_param("offset", o)?,
        None => {
            services
                .bus
                .resolve_offset(&topic, partition, StartPosition::Earliest)
                .await?
        }
    };
    let mut records = Vec::with_capacity(max.min(1024));
    let mut next = offset;
    let mut high_watermark = offset;
    // Bound the response by bytes as well as records; `next_offset` tells
    // the client where to continue.
    let byte_budget = (state.config.log.max_read_bytes as usize)
        .saturating_mul(4)
        .max(1 << 20);
    let mut bytes = 0usize;
    while records.len() < max && bytes < byte_budget {
        let fetched = services
            .bus
            .fetch(
                &topic,
                partition,
                next,
                state.config.log.max_read_bytes as usize,
            )
            .await?;
        high_watermark = fetched.high_watermark;
        if fetched.records.is_empty() {
            break;
        }
        for r in fetched.records.iter() {
            if records.len() >= max || bytes >= byte_budget {
                break;
            }
            bytes += r.value.len() + r.key.map_or(0, <[u8]>::len);
            let (key, key_base64) = render_key(r.key);
            let (value, value_base64) = render_value(r.value);
            records.push(RecordOut {
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key,
                key_base64,
                value,
                value_base64,
                headers: r
                    .headers()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
            });
            next = r.offset + 1;
        }
    }
    // Serialized as a struct (not through `json!`) so each value keeps the
    // order it was written in: the event envelope first.
    Ok(Json(RecordsOut {
        topic,
        partition,
        records,
        next_offset: next,
        high_watermark,
    }))
}

#[derive(serde::Serialize)]
struct RecordsOut {
    topic: String,
    partition: u32,
    records: Vec<RecordOut>,
    next_offset: u64,
    high_watermark: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceBody {
    records: Vec<ProduceRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceRecord {
    key: Option<String>,
    value: Value,
    partition: Option<u32>,
    timestamp: Option<i64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Appends arbitrary JSON records (not events) to a topic, in the spirit of
/// the Kafka REST proxy. Used for dead letters and by clients that need a
/// plain topic.
async fn produce_records(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    state.require_role(riffle_core::config::Role::Ingest)?;
    let services = state.services()?;
    services.auth.check(&headers, Permission::Ingest)?;
    let (body, _permit) = read_admitted_body(&state, &services, &headers, body).await?;
    let request: ProduceBody = parse_json_body(&body)?;
    if request.records.len() > services.ingestor.config().max_events_per_request {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "records: {} records exceed the limit of {} per request",
                request.records.len(),
                services.ingestor.config().max_events_per_request
            ),
        ));
    }
    if services.ingestor.is_event_topic(&topic) {
        return Err(ApiError::bad_request(format!(
            "topic: \"{topic}\" carries validated events; send events with POST /v1/events"
        )));
    }
    let partitions = services.bus.partition_count(&topic).await?;
    let now = services.clock.now_ms();
    let mut batches: BTreeMap<u32, (RecordBatch, Vec<usize>)> = BTreeMap::new();
    let mut value_buf = Vec::new();
    for (i, record) in request.records.iter().enumerate() {
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                return Err(ApiError::bad_request(format!(
                    "records[{i}].partition: {p} is out of range (topic \"{topic}\" has {partitions} partitions)"
                )))
            }
            (None, Some(key)) => riffle_log::partition_for_key(key.as_bytes(), partitions),
            (None, None) => (i as u32 + now as u32) % partitions,
        };
        value_buf.clear();
        serde_json::to_writer(&mut value_buf, &record.value).expect("JSON value serializes");
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let entry = batches.entry(partition).or_default();
        entry
            .0
            .push_with_headers(
                record.key.as_deref().map(str::as_bytes),
                &value_buf,
                record.timestamp.unwrap_or(now),
                &headers,
            )
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "records[{i}].{}",
                    e.to_string().trim_start_matches("invalid argument: ")
                ))
            })?;
        entry.1.push(i);
    }
    let mut offsets = vec![Value::Null; request.records.len()];
    for (partition, (batch, indexes)) in batches {
        let base = services.bus.append(&topic, partition, batch).await?;
        for (n, i) in indexes.into_iter().enumerate() {
            offsets[i] = json!({"partition": partition, "offset": base + n as u64});
        }
    }
    Ok(Json(json!({"offsets": offsets})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetsQuery {
    timestamp: Option<String>,
    position: Option<String>,
}

async fn topic_offsets(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    ApiQuery(query): ApiQuery<OffsetsQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let at = match (&query.timestamp, query.position.as_deref()) {
        (Some(ts), None) => StartPosition::Timestamp(
            riffle_core::time::parse_time_arg(ts)
                .map_err(|e| ApiError::bad_request(format!("timestamp: {e}")))?,
        ),
        (None, None) | (None, Some("latest")) => StartPosition::Latest,
        (None, Some("earliest")) => StartPosition::Earliest,
        (None, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "position: expected \"earliest\" or \"latest\", got \"{other}\""
            )))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "timestamp: cannot be combined with position",
            ))
        }
    };
    let partitions = services.bus.partition_count(&topic).await?;
    let mut out = Vec::new();
    for partition in 0..partitions {
        let offset = services.bus.resolve_offset(&topic, partition, at).await?;
        out.push(json!({"partition": partition, "offset": offset}));
    }
    Ok(Json(json!({"topic": topic, "partitions": out})))
}

async fn list_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    Ok(Json(json!({"groups": services.bus.list_groups().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    topic: String,
}

async fn group_offsets(
    State(state): State<AppState>,
    Path(group): Path<String>,
    ApiQuery(query): ApiQuery<GroupQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    services.bus.partition_count(&query.topic).await?;
    let committed = services.bus.committed_offsets(&group, &query.topic).await?;
    let offsets: BTreeMap<String, u64> = committed
        .into_iter()
        .map(|(p, o)| (p.to_string(), o))
        .collect();
    Ok(Json(
        json!({"group": group, "topic": query.topic, "offsets": offsets}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    topic: String,
    offsets: BTreeMap<String, u64>,
}

async fn commit_group_offsets(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let services = state.services()?;
    services.auth.check(&headers, Permission::Read)?;
    let body = request_body(&state, body)?;
    let request: CommitBody = parse_json_body(&body)?;
    let mut offsets = Vec::with_capacity(request.offsets.len());
    for (partition, offset) in &request.offsets {
        let partition: u32 = partition.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "offsets: partition \"{partition}\" is not a number"
            ))
        })?;
        offsets.push((
            TopicPartition::new(request.topic.clone(), partition),
            *offset,
        ));
    }
    services.bus.commit_offsets(&group, &offsets).await?;
    Ok(StatusCode::NO_CONTENT)
}
