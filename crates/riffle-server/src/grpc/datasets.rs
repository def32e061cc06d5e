//! gRPC dataset pub/sub (`riffle.v1.Datasets`, proto/riffle/v1/datasets.proto)
//! on the main gRPC port. Every method is the twin of a REST endpoint in
//! [`crate::rest::datasets`] and goes through the same service calls, the same
//! [`crate::rest::datasets::authorize`] (bearer token from the `authorization`
//! metadata) and the same validation; errors carry the status of their
//! [`riffle_core::ErrorCode`]. Publish streams the payload into the service
//! chunk by chunk, and GetData streams it out, so neither holds a whole
//! payload in memory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use riffle_core::time::parse_time_arg;
use riffle_core::ErrorCode;
use riffle_datasets::access::Permission;
use riffle_datasets::model::{Labels, Pin, Scope, Topic, Version};
use riffle_datasets::service::{Answer, CreateTopic, PublishRequest};
use riffle_datasets::DatasetError;
use serde::Deserialize;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;
use crate::proto::datasets_server::{Datasets, DatasetsServer};
use crate::proto::{
    self, CreateTopicRequest, DataChunk, GetDataRequest, GetVersionRequest, LatestRequest,
    LatestResponse, PinInfo, PinRequest, PublishChunk, UnpinRequest, UnpinResponse, VersionInfo,
};
use crate::rest::datasets::{authorize, metadata_map, DatasetsState};

/// Largest message a client may send. Publish chunks are meant to be far
/// smaller (the payload streams through); this only bounds one message.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 8 << 20;

/// Largest `DataChunk` GetData sends.
pub const MAX_DATA_CHUNK_BYTES: usize = 1 << 20;

pub struct DatasetsGrpc {
    /// `None` when this process has no datasets role.
    pub state: watch::Receiver<Option<Arc<DatasetsState>>>,
    /// Whether this process has the `datasets-publish` role: without it the
    /// mutating calls are refused, as on the REST consume listener.
    pub publish_role: bool,
}

/// The tonic service with its message limit.
pub fn server(
    state: watch::Receiver<Option<Arc<DatasetsState>>>,
    publish_role: bool,
) -> DatasetsServer<DatasetsGrpc> {
    DatasetsServer::new(DatasetsGrpc {
        state,
        publish_role,
    })
    .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
}

impl DatasetsGrpc {
    fn get(&self) -> Result<Arc<DatasetsState>, Status> {
        self.state.borrow().clone().ok_or_else(|| {
            Status::unavailable("dataset service not running in this process (roles)")
        })
    }

    /// Every call's prologue: the service (in a publish process for
    /// [`Permission::Publish`]), the caller's token checked for
    /// `permission` on the topic `topic_of` names, then the request body
    /// and the actor for the audit trail.
    async fn admit<T>(
        &self,
        request: Request<T>,
        topic_of: fn(&T) -> &str,
        permission: Permission,
    ) -> Result<(Arc<DatasetsState>, T, String), Status> {
        let state = if permission == Permission::Publish {
            self.get_for_publish()?
        } else {
            self.get()?
        };
        let actor = authorize(
            &state,
            request.metadata().as_ref(),
            topic_of(request.get_ref()),
            permission,
        )
        .await?;
        Ok((state, request.into_inner(), actor))
    }

    /// The state, for a mutating call.
    fn get_for_publish(&self) -> Result<Arc<DatasetsState>, Status> {
        let state = self.get()?;
        if !self.publish_role {
            return Err(Status::failed_precondition(
                "this process has no datasets-publish role: publish, pin and topic changes go to a publish process",
            ));
        }
        Ok(state)
    }
}

fn status(e: DatasetError) -> Status {
    ApiError::from(e).into()
}

fn invalid(message: impl Into<String>) -> Status {
    ApiError::bad_request(message).into()
}

fn check_version_number(version: u64) -> Result<u64, Status> {
    match version {
        0 => Err(invalid("version: versions start at 1")),
        n => Ok(n),
    }
}

fn topic_info(topic: &Topic) -> proto::Topic {
    proto::Topic {
        name: topic.name.clone(),
        owner: topic.owner.clone(),
        description: topic.description.clone(),
        retention_count: topic.retention_count,
        retention_age_ms: topic.retention_age_ms,
        encrypted: topic.wrapped_key.is_some(),
        created_at_ms: topic.created_at_ms,
        created_by: topic.created_by.clone(),
        last_published_at_ms: topic.last_published_at_ms,
        last_consumed_at_ms: topic.last_consumed_at_ms,
    }
}

fn version_info(version: &Version) -> VersionInfo {
    VersionInfo {
        topic: version.topic.clone(),
        version: version.version,
        metadata: version.metadata.clone(),
        checksum: version.checksum.clone(),
        size: version.size,
        created_at_ms: version.created_at_ms,
        scopes: version.scopes.iter().map(Scope::to_string).collect(),
        withdrawn: version.withdrawn,
    }
}

fn pin_info(pin: &Pin) -> PinInfo {
    PinInfo {
        topic: pin.topic.clone(),
        scope: pin.scope.as_ref().map(Scope::to_string),
        version: pin.version,
        pinned_at_ms: pin.pinned_at_ms,
        pinned_by: pin.pinned_by.clone(),
    }
}

/// The fields of an [`Answer`]'s JSON (serialized once per poll group and
/// shared by every consumer waiting on it, REST and gRPC alike).
#[derive(Deserialize)]
struct AnswerFields {
    topic: String,
    version: u64,
    metadata: BTreeMap<String, String>,
    checksum: String,
    size: u64,
    created_at_ms: i64,
    scopes: Vec<String>,
    reason: String,
}

fn latest_response(state: &DatasetsState, answer: &Answer) -> Result<LatestResponse, Status> {
    let fields: AnswerFields = serde_json::from_slice(&answer.json)
        .map_err(|e| Status::internal(format!("answer: {e}")))?;
    debug_assert_eq!(fields.version, answer.version);
    // The answer does not say; a pin may hand out a withdrawn version.
    let withdrawn = state
        .service
        .cached_topic(&fields.topic)
        .ok()
        .and_then(|view| {
            view.versions
                .iter()
                .find(|v| v.version == fields.version)
                .map(|v| v.withdrawn)
        })
        .unwrap_or(false);
    Ok(LatestResponse {
        found: true,
        version: Some(VersionInfo {
            topic: fields.topic,
            version: fields.version,
            metadata: fields.metadata,
            checksum: fields.checksum,
            size: fields.size,
            created_at_ms: fields.created_at_ms,
            scopes: fields.scopes,
            withdrawn,
        }),
        reason: fields.reason,
    })
}

/// The plaintext byte range of a GetData request; `None` = everything.
/// Unsatisfiable ranges are OUT_OF_RANGE, as a bad `Range` header is.
fn byte_range(
    offset: Option<u64>,
    length: Option<u64>,
    size: u64,
) -> Result<Option<Range<u64>>, Status> {
    if offset.is_none() && length.is_none() {
        return Ok(None);
    }
    let start = offset.unwrap_or(0);
    if start >= size {
        return Err(ApiError::new(
            ErrorCode::OutOfRange,
            format!("offset: {start} is not within the {size}-byte payload"),
        )
        .into());
    }
    let end = match length {
        Some(0) => {
            return Err(ApiError::new(ErrorCode::OutOfRange, "length: 0 selects no bytes").into())
        }
        Some(length) => start.saturating_add(length).min(size),
        None => size,
    };
    Ok(Some(start..end))
}

/// Splits a payload chunk into `DataChunk`s of at most
/// [`MAX_DATA_CHUNK_BYTES`] (slices of the same buffer, no copy).
fn data_chunks(mut bytes: Bytes) -> Vec<Result<DataChunk, Status>> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(MAX_DATA_CHUNK_BYTES));
    while !bytes.is_empty() {
        let data = bytes.split_to(bytes.len().min(MAX_DATA_CHUNK_BYTES));
        out.push(Ok(DataChunk { data }));
    }
    out
}

#[tonic::async_trait]
impl Datasets for DatasetsGrpc {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<proto::Topic>, Status> {
        let (state, request, actor) = self
            .admit(request, |r| r.name.as_str(), Permission::Publish)
            .await?;
        let topic = state
            .service
            .create_topic(
                CreateTopic {
                    name: request.name,
                    owner: request.owner,
                    description: request.description,
                    retention_count: request.retention_count,
                    retention_age_ms: request.retention_age_ms,
                    encrypted: request.encrypted,
                },
                &actor,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(topic_info(&topic)))
    }

    async fn publish(
        &self,
        request: Request<Streaming<PublishChunk>>,
    ) -> Result<Response<VersionInfo>, Status> {
        let state = self.get_for_publish()?;
        let (metadata, _, mut chunks) = request.into_parts();
        let first = chunks.message().await?.unwrap_or_default();
        let Some(header) = first.header else {
            return Err(invalid(
                "header: the first PublishChunk must carry a PublishHeader",
            ));
        };
        let topic = header.topic;
        let actor = authorize(&state, metadata.as_ref(), &topic, Permission::Publish).await?;
        let scopes = header
            .scopes
            .iter()
            .map(|s| Scope::parse_field(s, "scope"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        let publish = PublishRequest {
            scopes,
            metadata: metadata_map(&header.metadata)?,
            staged: header.staged,
        };
        let version = match header.existing_checksum {
            Some(checksum) => {
                // Metadata-only: the payload already exists; data is a mistake.
                let mut data = !first.data.is_empty();
                while !data {
                    match chunks.message().await? {
                        Some(chunk) => data = !chunk.data.is_empty(),
                        None => break,
                    }
                }
                if data {
                    return Err(invalid(
                        "data: a metadata-only publish (existing_checksum) takes no payload",
                    ));
                }
                state
                    .service
                    .publish_existing(&topic, publish, &checksum, &actor)
                    .await
            }
            None => {
                let rest = chunks.map(|chunk| match chunk {
                    Ok(PublishChunk {
                        header: Some(_), ..
                    }) => Err(std::io::Error::other(
                        "header: only the first PublishChunk carries a header",
                    )),
                    Ok(chunk) => Ok(chunk.data),
                    Err(e) => Err(std::io::Error::other(e.message().to_string())),
                });
                let body = stream::once(async move { Ok(first.data) })
                    .chain(rest)
                    .boxed();
                state.service.publish(&topic, publish, body, &actor).await
            }
        }
        .map_err(status)?;
        Ok(Response::new(version_info(&version)))
    }

    async fn latest(
        &self,
        request: Request<LatestRequest>,
    ) -> Result<Response<LatestResponse>, Status> {
        let (state, request, _actor) = self
            .admit(request, |r| r.topic.as_str(), Permission::Consume)
            .await?;
        let labels = Labels::parse_field(&request.labels, "labels").map_err(status)?;
        let answer = match &request.at {
            Some(at) => {
                if request.wait_ms > 0 || request.after > 0 {
                    return Err(invalid(
                        "at: a point-in-time lookup takes neither wait_ms nor after",
                    ));
                }
                let at_ms = parse_time_arg(at).map_err(|e| invalid(format!("at: {e}")))?;
                state
                    .service
                    .latest_at(&request.topic, &labels, at_ms)
                    .map_err(status)?
                    .map(Arc::new)
            }
            None => state
                .service
                .latest(
                    &request.topic,
                    &labels,
                    request.after,
                    Duration::from_millis(request.wait_ms),
                )
                .await
                .map_err(status)?,
        };
        let response = match answer {
            Some(answer) => latest_response(&state, &answer)?,
            None => LatestResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<VersionInfo>, Status> {
        let (state, request, _actor) = self
            .admit(request, |r| r.topic.as_str(), Permission::Consume)
            .await?;
        let number = check_version_number(request.version)?;
        let version = state
            .service
            .version(&request.topic, number)
            .await
            .map_err(status)?;
        Ok(Response::new(version_info(&version)))
    }

    type GetDataStream = BoxStream<'static, Result<DataChunk, Status>>;

    async fn get_data(
        &self,
        request: Request<GetDataRequest>,
    ) -> Result<Response<Self::GetDataStream>, Status> {
        let (state, request, _actor) = self
            .admit(request, |r| r.topic.as_str(), Permission::Consume)
            .await?;
        let number = check_version_number(request.version)?;
        let meta = state
            .service
            .version(&request.topic, number)
            .await
            .map_err(status)?;
        let range = byte_range(request.offset, request.length, meta.size)?;
        let data = state
            .service
            .open_data(&request.topic, number, range)
            .await
            .map_err(status)?;
        let body = data
            .body
            .flat_map(|chunk| {
                stream::iter(match chunk {
                    Ok(bytes) => data_chunks(bytes),
                    Err(e) => vec![Err(status(e))],
                })
            })
            .boxed();
        let mut response = Response::new(body);
        let headers = response.metadata_mut();
        headers.insert(
            "x-riffle-version",
            MetadataValue::from(data.version.version),
        );
        if let Ok(checksum) = MetadataValue::try_from(data.version.checksum.as_str()) {
            headers.insert("x-riffle-checksum", checksum);
        }
        Ok(response)
    }

    async fn pin(&self, request: Request<PinRequest>) -> Result<Response<PinInfo>, Status> {
        let (state, request, actor) = self
            .admit(request, |r| r.topic.as_str(), Permission::Publish)
            .await?;
        let scope = request
            .scope
            .as_deref()
            .map(|s| Scope::parse_field(s, "scope"))
            .transpose()
            .map_err(status)?;
        let pin = state
            .service
            .pin(&request.topic, scope, request.version, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pin_info(&pin)))
    }

    async fn unpin(
        &self,
        request: Request<UnpinRequest>,
    ) -> Result<Response<UnpinResponse>, Status> {
        let (state, request, actor) = self
            .admit(request, |r| r.topic.as_str(), Permission::Publish)
            .await?;
        let scope = request
            .scope
            .as_deref()
            .map(|s| Scope::parse_field(s, "scope"))
            .transpose()
            .map_err(status)?;
        state
            .service
            .unpin(&request.topic, scope.clone(), &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(UnpinResponse {
            topic: request.topic,
            unpinned: scope.as_ref().map(Scope::to_string),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_range_mirrors_the_range_header() {
        assert_eq!(byte_range(None, None, 10).unwrap(), None);
        assert_eq!(byte_range(Some(2), None, 10).unwrap(), Some(2..10));
        assert_eq!(byte_range(None, Some(3), 10).unwrap(), Some(0..3));
        assert_eq!(byte_range(Some(8), Some(5), 10).unwrap(), Some(8..10));
        let code = |r: Result<Option<Range<u64>>, Status>| r.unwrap_err().code();
        assert_eq!(
            code(byte_range(Some(10), None, 10)),
            tonic::Code::OutOfRange
        );
        assert_eq!(code(byte_range(Some(0), None, 0)), tonic::Code::OutOfRange);
        assert_eq!(
            code(byte_range(Some(1), Some(0), 10)),
            tonic::Code::OutOfRange
        );
    }

    #[test]
    fn data_chunks_are_at_most_one_mebibyte() {
        let payload = Bytes::from(vec![7u8; 2 * MAX_DATA_CHUNK_BYTES + 5]);
        let sizes: Vec<usize> = data_chunks(payload)
            .into_iter()
            .map(|c| c.unwrap().data.len())
            .collect();
        assert_eq!(sizes, [MAX_DATA_CHUNK_BYTES, MAX_DATA_CHUNK_BYTES, 5]);
        assert!(data_chunks(Bytes::new()).is_empty());
    }
}
