//! gRPC ingest (`riffle.v1.Ingest/Publish`, client streaming), with the
//! semantics of `POST /v1/events`.

use std::borrow::Cow;
use std::sync::Arc;

use riffle_core::event::{parse_event, Event, EventBody, EventError, EventType, ParseLimits};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Permission;
use crate::proto::ingest_server::Ingest;
use crate::proto::{self, event, PublishRequest, PublishResponse, Rejection};
use crate::state::Services;

/// Rejections listed in one Publish response; the rest are only counted.
pub const MAX_LISTED_REJECTIONS: usize = 10_000;

pub struct IngestService {
    pub services: watch::Receiver<Option<Arc<Services>>>,
    /// Whether this process runs the ingest role.
    pub ingest_role: bool,
}

fn limits(services: &Services) -> ParseLimits {
    let config = services.ingestor.config();
    ParseLimits {
        now_ms: services.clock.now_ms(),
        max_future_skew_ms: config.max_future_skew_ms,
        max_event_bytes: config.max_event_bytes,
    }
}

fn s(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value)
}

/// Converts one protobuf event; validation is the same as for JSON.
/// The event type a protobuf event declares through its body, if typed.
fn declared_type(e: &proto::Event) -> Option<EventType> {
    use proto::event::Body;
    Some(match e.body.as_ref()? {
        Body::Json(json) => return riffle_ingest::ingest::sniff_type(json.as_bytes()),
        Body::AdClick(_) => EventType::AdClick,
        Body::AdImpression(_) => EventType::AdImpression,
        Body::StreamStarted(_) => EventType::StreamStarted,
        Body::StreamHeartbeat(_) => EventType::StreamHeartbeat,
        Body::StreamEnded(_) => EventType::StreamEnded,
        Body::ViewerJoined(_) => EventType::ViewerJoined,
        Body::ViewerLeft(_) => EventType::ViewerLeft,
        Body::GiftSent(_) => EventType::GiftSent,
        Body::ChatMessage(_) => EventType::ChatMessage,
        Body::Follow(_) => EventType::Follow,
        Body::RecImpression(_) => EventType::RecImpression,
        Body::RecClick(_) => EventType::RecClick,
    })
}

fn convert<'a>(e: &'a proto::Event, limits: &ParseLimits) -> Result<Event<'a>, EventError> {
    use proto::event::Body;
    let size = prost::Message::encoded_len(e);
    if size > limits.max_event_bytes {
        return Err(EventError::TooLarge {
            size,
            max: limits.max_event_bytes,
        });
    }
    let body = match &e.body {
        Some(Body::Json(json)) => return parse_event(json.as_bytes(), limits),
        Some(Body::AdClick(a)) => EventBody::AdClick {
            ad_id: s(&a.ad_id),
            user_id: s(&a.user_id),
            ip: s(&a.ip),
            country: s(&a.country),
        },
        Some(Body::AdImpression(a)) => EventBody::AdImpression {
            ad_id: s(&a.ad_id),
            user_id: s(&a.user_id),
            ip: s(&a.ip),
            country: s(&a.country),
        },
        Some(Body::StreamStarted(b)) => EventBody::StreamStarted {
            stream_id: s(&b.stream_id),
            streamer_id: s(&b.streamer_id),
            category: s(&b.category),
            language: s(&b.language),
        },
        Some(Body::StreamHeartbeat(b)) => EventBody::StreamHeartbeat {
            stream_id: s(&b.stream_id),
        },
        Some(Body::StreamEnded(b)) => EventBody::StreamEnded {
            stream_id: s(&b.stream_id),
        },
        Some(Body::ViewerJoined(b)) => EventBody::ViewerJoined {
            stream_id: s(&b.stream_id),
            user_id: s(&b.user_id),
        },
        Some(Body::ViewerLeft(b)) => EventBody::ViewerLeft {
            stream_id: s(&b.stream_id),
            user_id: s(&b.user_id),
        },
        Some(Body::GiftSent(b)) => EventBody::GiftSent {
            stream_id: s(&b.stream_id),
            user_id: s(&b.user_id),
            amount: b.amount,
        },
        Some(Body::ChatMessage(b)) => EventBody::ChatMessage {
            stream_id: s(&b.stream_id),
            user_id: s(&b.user_id),
        },
        Some(Body::Follow(b)) => EventBody::Follow {
            user_id: s(&b.user_id),
            streamer_id: s(&b.streamer_id),
        },
        Some(Body::RecImpression(b)) => EventBody::RecImpression {
            request_id: s(&b.request_id),
            user_id: s(&b.user_id),
            stream_id: s(&b.stream_id),
            position: b.position,
            variant: s(&b.variant),
            model_version: s(&b.model_version),
        },
        Some(Body::RecClick(b)) => EventBody::RecClick {
            request_id: s(&b.request_id),
            user_id: s(&b.user_id),
            stream_id: s(&b.stream_id),
        },
        None => {
            return Err(EventError::MissingField {
                field: "event_type",
            })
        }
    };
    let event_time = match &e.event_time {
        Some(event::EventTime::EpochMs(ms)) => *ms,
        Some(event::EventTime::Rfc3339(text)) => riffle_core::time::parse_rfc3339_ms(text)
            .map_err(|err| EventError::InvalidValue {
                field: "event_time",
                detail: err.to_string(),
            })?,
        None => {
            return Err(EventError::MissingField {
                field: "event_time",
            })
        }
    };
    let event = Event {
        event_id: (!e.event_id.is_empty()).then(|| s(&e.event_id)),
        event_time,
        event_version: if e.event_version == 0 {
            1
        } else {
            e.event_version
        },
        body,
    };
    event.validate(limits)?;
    Ok(event)
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishResponse>, Status> {
        let services = self
            .services
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("the log is still recovering; retry shortly"))?;
        if !self.ingest_role {
            return Err(Status::unavailable(
                "this process does not run the ingest role (server.roles)",
            ));
        }
        services
            .auth
            .check_grpc(request.metadata(), Permission::Ingest)?;
        let mut stream = request.into_inner();
        let mut response = PublishResponse::default();
        let mut base_index: u64 = 0;
        while let Some(message) = stream.message().await? {
            let size = prost::Message::encoded_len(&message);
            let _permit = services
                .ingestor
                .admit(size)
                .map_err(|e| Status::from(crate::error::ApiError::from(e)))?;
            if message.events.len() > services.ingestor.config().max_events_per_request {
                return Err(Status::resource_exhausted(format!(
                    "events: {} events exceed the limit of {} per message",
                    message.events.len(),
                    services.ingestor.config().max_events_per_request
                )));
            }
            let limits = limits(&services);
            let started = std::time::Instant::now();
            riffle_ingest::metrics::BYTES_RECEIVED.inc_by(size as u64);
            let parsed: Vec<_> = message
                .events
                .iter()
                .map(|e| convert(e, &limits).map_err(|err| (err, declared_type(e))))
                .collect();
            let count = parsed.len() as u64;
            let outcome = services
                .ingestor
                .append_labelled(parsed, None)
                .await
                .map_err(|e| Status::from(crate::error::ApiError::from(e)))?;
            riffle_ingest::metrics::ACK_SECONDS.observe(started.elapsed().as_secs_f64());
            response.accepted += outcome.accepted as u64;
            response.rejected_total += outcome.rejected.len() as u64;
            for rejection in outcome.rejected {
                // The stream may be long: keep memory bounded by listing
                // only the first rejections; `rejected_total` counts all.
                if response.rejected.len() >= MAX_LISTED_REJECTIONS {
                    break;
                }
                let index = base_index + rejection.index as u64;
                let error = rejection
                    .error
                    .split_once(": ")
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or(rejection.error);
                response.rejected.push(Rejection {
                    index,
                    error: format!("event {index}: {error}"),
                    reason: rejection.reason.to_string(),
                });
            }
            base_index += count;
        }
        Ok(Response::new(response))
    }
}
