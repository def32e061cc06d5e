//! Batch ingest: validates a request's events, routes each to its topic and
//! partition (topic by event type, partition by the entity key through
//! Kafka's murmur2), appends one batch per partition and acknowledges only
//! when every accepted event is durable. Invalid events are reported by
//! index and never stop the valid ones.
//!
//! Backpressure: request bytes in flight (validated but not yet durable) are
//! bounded by `max_inflight_bytes`; past it a request is refused with
//! [`IngestError::Backpressure`] (HTTP 429 + `Retry-After`) instead of
//! queueing without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use riffle_core::config::IngestConfig;
use riffle_core::event::{parse_event, Event, EventError, EventType, ParseLimits};
use riffle_core::time::Clock;
use riffle_core::{ErrorCode, HasCode};
use riffle_log::{partition_for_key, BusError, EventBus, RecordBatch, TopicConfig};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::metrics;

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    JsonArray,
    Ndjson,
}

impl BodyFormat {
    /// From the Content-Type; without a decisive one, by the first
    /// non-blank byte (`[` means a JSON array).
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> BodyFormat {
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        match media.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => BodyFormat::Ndjson,
            _ => match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => BodyFormat::JsonArray,
                _ => BodyFormat::Ndjson,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub error: String,
    #[serde(skip)]
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body: {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },
    #[error("events: {count} events exceed the limit of {max} per request")]
    TooManyEvents { count: usize, max: usize },
    #[error("body: {0}")]
    InvalidBody(String),
    #[error("ingest is at its in-flight limit; retry after {} s", retry_after.as_secs())]
    Backpressure { retry_after: Duration },
    #[error("topic: {0}")]
    Topic(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl HasCode for IngestError {
    fn code(&self) -> ErrorCode {
        match self {
            IngestError::BodyTooLarge { .. } | IngestError::TooManyEvents { .. } => {
                ErrorCode::PayloadTooLarge
            }
            IngestError::InvalidBody(_) => ErrorCode::InvalidArgument,
            IngestError::Backpressure { .. } => ErrorCode::ResourceExhausted,
            IngestError::Topic(_) => ErrorCode::NotFound,
            IngestError::Bus(e) => match e.code() {
                // A durable-append failure is the server's problem, and a
                // retry (with the same event ids) is the client's remedy.
                ErrorCode::Internal | ErrorCode::DataLoss => ErrorCode::Unavailable,
                code => code,
            },
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Backpressure { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// One validated event on its way to the log.
struct Routed {
    topic: usize,
    partition: u32,
    event_type: EventType,
}

pub struct Ingestor {
    bus: Arc<dyn EventBus>,
    config: IngestConfig,
    clock: Arc<dyn Clock>,
    /// Route table indexed by `EventType::tag() - 1`.
    routes: Vec<Arc<str>>,
    inflight: Arc<Semaphore>,
    id_prefix: String,
    id_counter: AtomicU64,
}

impl Ingestor {
    pub fn new(bus: Arc<dyn EventBus>, config: IngestConfig, clock: Arc<dyn Clock>) -> Self {
        let routes = EventType::ALL
            .iter()
            .map(|t| Arc::from(config.routes[t.as_str()].as_str()))
            .collect();
        // Server-assigned ids: a per-process random prefix and a counter, so
        // they are unique across restarts without coordination.
        let id_prefix = format!("{:016x}", rand_u64());
        let permits = config.max_inflight_bytes.min(Semaphore::MAX_PERMITS);
        Ingestor {
            bus,
            inflight: Arc::new(Semaphore::new(permits)),
            config,
            clock,
            routes,
            id_prefix,
            id_counter: AtomicU64::new(0),
        }
    }

    /// Whether ingest routes events to this topic (such topics hold only
    /// validated, binary-encoded events).
    pub fn is_event_topic(&self, topic: &str) -> bool {
        self.routes.iter().any(|t| &**t == topic)
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Creates every routed topic that does not exist yet.
    pub async fn ensure_topics(&self, defaults: &TopicConfig) -> Result<(), BusError> {
        let mut seen = std::collections::BTreeSet::new();
        let dead_letter: Arc<str> = Arc::from(self.config.dead_letter_topic.as_str());
        for topic in self.routes.iter().chain(std::iter::once(&dead_letter)) {
            if !seen.insert(topic.clone()) {
                continue;
            }
            let mut config = defaults.clone();
            config.partitions = self.config.topic_partitions;
            match self.bus.create_topic(topic, config).await {
                Ok(_) | Err(BusError::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn limits(&self) -> ParseLimits {
        ParseLimits {
            now_ms: self.clock.now_ms(),
            max_future_skew_ms: self.config.max_future_skew_ms,
            max_event_bytes: self.config.max_event_bytes,
        }
    }

    /// Reserves in-flight budget for a body of `len` bytes, or refuses.
    pub fn admit(&self, len: usize) -> Result<InflightPermit, IngestError> {
        if len > self.config.max_body_bytes {
            return Err(IngestError::BodyTooLarge {
                size: len,
                max: self.config.max_body_bytes,
            });
        }
        let permits = len.clamp(1, self.config.max_inflight_bytes.max(1)) as u32;
        match self.inflight.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                metrics::INFLIGHT_BYTES.add(permits as i64);
                Ok(InflightPermit {
                    _permit: permit,
                    bytes: permits,
                })
            }
            Err(_) => {
                metrics::REQUESTS_THROTTLED.inc();
                Err(IngestError::Backpressure {
                    retry_after: Duration::from_secs(self.config.retry_after_secs.max(1)),
                })
            }
        }
    }

    /// Validates and appends the events of a request body. `topic` overrides
    /// the route table (every event goes to that existing topic).
    pub async fn ingest_body(
        &self,
        body: &[u8],
        format: BodyFormat,
        topic: Option<&str>,
    ) -> Result<IngestOutcome, IngestError> {
        let _permit = self.admit(body.len())?;
        self.ingest_admitted(body, format, topic).await
    }

    /// [`Ingestor::ingest_body`] for a body whose in-flight budget the
    /// caller already holds (the HTTP server reserves it from
    /// `Content-Length` before reading the body).
    pub async fn ingest_admitted(
        &self,
        body: &[u8],
        format: BodyFormat,
        topic: Option<&str>,
    ) -> Result<IngestOutcome, IngestError> {
        if body.len() > self.config.max_body_bytes {
            return Err(IngestError::BodyTooLarge {
                size: body.len(),
                max: self.config.max_body_bytes,
            });
        }
        metrics::BYTES_RECEIVED.inc_by(body.len() as u64);
        let started = Instant::now();
        let limits = self.limits();
        let mut parsed: Vec<Result<Event<'_>, (EventError, Option<EventType>)>> = Vec::new();
        match format {
            BodyFormat::Ndjson => {
                for line in body.split(|b| *b == b'\n') {
                    let line = trim_ascii(line);
                    if line.is_empty() {
                        continue;
                    }
                    self.check_count(parsed.len() + 1)?;
                    parsed.push(parse_event(line, &limits).map_err(|e| (e, sniff_type(line))));
                }
            }
            BodyFormat::JsonArray => {
                let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
                    .map_err(|e| {
                        IngestError::InvalidBody(format!("expected a JSON array of events: {e}"))
                    })?;
                self.check_count(elements.len())?;
                for raw in elements {
                    let json = raw.get().as_bytes();
                    parsed.push(parse_event(json, &limits).map_err(|e| (e, sniff_type(json))));
                }
            }
        }
        let outcome = self.append_labelled(parsed, topic).await?;
        metrics::ACK_SECONDS.observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    fn check_count(&self, count: usize) -> Result<(), IngestError> {
        if count > self.config.max_events_per_request {
            return Err(IngestError::TooManyEvents {
                count,
                max: self.config.max_events_per_request,
            });
        }
        Ok(())
    }

    /// Appends already parsed events (the gRPC path builds them from
    /// protobuf); each `Err` is reported as a rejection at its index.
    pub async fn append(
        &self,
        events: Vec<Result<Event<'_>, EventError>>,
        topic_override: Option<&str>,
    ) -> Result<IngestOutcome, IngestError> {
        let events = events
            .into_iter()
            .map(|e| e.map_err(|error| (error, None)))
            .collect();
        self.append_labelled(events, topic_override).await
    }

    /// Like [`Ingestor::append`], with the event type of rejected events
    /// when it could be read (for the rejection metric's label).
    pub async fn append_labelled(
        &self,
        events: Vec<Result<Event<'_>, (EventError, Option<EventType>)>>,
        topic_override: Option<&str>,
    ) -> Result<IngestOutcome, IngestError> {
        let override_topic = match topic_override {
            Some(name) => Some(
                self.bus
                    .partition_count(name)
                    .await
                    .map(|n| (Arc::<str>::from(name), n))
                    .map_err(|_| IngestError::Topic(format!("topic \"{name}\" not found")))?,
            ),
            None => None,
        };
        let mut topics: Vec<(Arc<str>, u32)> = Vec::new();
        let mut topic_index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut batches: HashMap<(usize, u32), RecordBatch> = HashMap::new();
        let mut outcome = IngestOutcome::default();
        let mut accepted_by_type = [0u64; EventType::ALL.len()];
        let mut rejected_by: HashMap<(&'static str, &'static str), u64> = HashMap::new();
        let mut id_buf = String::new();
        // Binary events are about half their JSON size; size each partition's
        // buffer for an even share so appends rarely reallocate.
        let batch_capacity = (events.len() * 96 / 4).clamp(1024, 1 << 20);
        for (index, event) in events.into_iter().enumerate() {
            let mut event = match event {
                Ok(event) => event,
                Err((error, event_type)) => {
                    let label = event_type.map_or("unknown", EventType::as_str);
                    *rejected_by.entry((label, error.reason())).or_default() += 1;
                    outcome.rejected.push(Rejection {
                        index,
                        reason: error.reason(),
                        error: format!("event {index}: {error}"),
                    });
                    continue;
                }
            };
            let event_type = event.event_type();
            let routed = {
                let (name, partitions) = match &override_topic {
                    Some((name, n)) => (name.clone(), *n),
                    None => {
                        let name = self.routes[event_type.tag() as usize - 1].clone();
                        let n = match topic_index.get(&name) {
                            Some(i) => topics[*i].1,
                            None => self.bus.partition_count(&name).await?,
                        };
                        (name, n)
                    }
                };
                let topic = *topic_index.entry(name.clone()).or_insert_with(|| {
                    topics.push((name, partitions));
                    topics.len() - 1
                });
                Routed {
                    topic,
                    partition: partition_for_key(event.partition_key().as_bytes(), partitions),
                    event_type,
                }
            };
            if event.event_id.is_none() {
                use std::fmt::Write;
                id_buf.clear();
                let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
                let _ = write!(id_buf, "{}-{n:x}", self.id_prefix);
                event.event_id = Some(id_buf.clone().into());
            }
            let batch = batches
                .entry((routed.topic, routed.partition))
                .or_insert_with(|| RecordBatch::with_capacity(batch_capacity));
            batch.push_encoded(
                Some(event.partition_key().as_bytes()),
                event.event_time,
                |out| event.encode(out),
            );
            accepted_by_type[routed.event_type.tag() as usize - 1] += 1;
            outcome.accepted += 1;
        }
        let appends = batches.into_iter().map(|((topic, partition), batch)| {
            let name = topics[topic].0.clone();
            async move { self.bus.append(&name, partition, batch).await }
        });
        for result in futures::future::join_all(appends).await {
            result?;
        }
        for (i, count) in accepted_by_type.iter().enumerate() {
            if *count > 0 {
                metrics::EVENTS_ACCEPTED
                    .with_label_values(&[EventType::ALL[i].as_str()])
                    .inc_by(*count);
            }
        }
        for ((event_type, reason), count) in rejected_by {
            metrics::EVENTS_REJECTED
                .with_label_values(&[event_type, reason])
                .inc_by(count);
        }
        Ok(outcome)
    }
}

/// Holds a request's share of the in-flight budget until dropped.
pub struct InflightPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: u32,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        metrics::INFLIGHT_BYTES.sub(self.bytes as i64);
    }
}

/// The event type of an event that failed validation, if its
/// `"event_type"` is a known type (only used for metric labels).
pub fn sniff_type(json: &[u8]) -> Option<EventType> {
    const KEY: &[u8] = b"\"event_type\"";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &json[at..];
    let open = rest.iter().position(|b| *b == b'"')?;
    let colon_ok = rest[..open]
        .iter()
        .all(|b| b.is_ascii_whitespace() || *b == b':');
    if !colon_ok {
        return None;
    }
    let value = &rest[open + 1..];
    let close = value.iter().position(|b| *b == b'"')?;
    EventType::parse(std::str::from_utf8(&value[..close]).ok()?)
}

fn trim_ascii(mut line: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = line {
        if first.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = line {
        if last.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    line
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
