//! End-to-end: dataset pub/sub over gRPC (`riffle.v1.Datasets` on the main
//! gRPC port) against the real `riffle serve`, with the semantics of the
//! REST surface: publish streamed in chunks, the long-poll, data download,
//! pins, bearer-token auth and error codes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use riffle_server::proto::datasets_client::DatasetsClient;
use riffle_server::proto::{
    CreateTopicRequest, GetDataRequest, GetVersionRequest, LatestRequest, LatestResponse,
    PinRequest, PublishChunk, PublishHeader, UnpinRequest, VersionInfo,
};
use riffle_testkit::{parse_metrics, Server, TestDir};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long a test waits for an observable condition (a poll being held).
const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

async fn client(server: &Server) -> DatasetsClient<Channel> {
    DatasetsClient::connect(format!("http://127.0.0.1:{}", server.grpc_port))
        .await
        .expect("connect to the gRPC port")
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A deterministic payload that does not compress to nothing.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 9) as u8) ^ seed)
        .collect()
}

fn header(topic: &str) -> PublishHeader {
    PublishHeader {
        topic: topic.into(),
        ..Default::default()
    }
}

/// The publish stream: the header rides on the first chunk with its data.
fn chunks(header: PublishHeader, parts: &[&[u8]]) -> Vec<PublishChunk> {
    let mut out: Vec<PublishChunk> = parts
        .iter()
        .map(|part| PublishChunk {
            header: None,
            data: bytes::Bytes::copy_from_slice(part),
        })
        .collect();
    if out.is_empty() {
        out.push(PublishChunk::default());
    }
    out[0].header = Some(header);
    out
}

async fn publish(
    client: &mut DatasetsClient<Channel>,
    token: Option<&str>,
    header: PublishHeader,
    parts: &[&[u8]],
) -> Result<VersionInfo, Status> {
    let stream = futures::stream::iter(chunks(header, parts));
    let request = match token {
        Some(token) => with_token(stream, token),
        None => Request::new(stream),
    };
    client.publish(request).await.map(|r| r.into_inner())
}

async fn create_topic(client: &mut DatasetsClient<Channel>, token: &str, name: &str) {
    let topic = client
        .create_topic(with_token(
            CreateTopicRequest {
                name: name.into(),
                owner: "ml-platform".into(),
                description: "ranker weights".into(),
                retention_count: Some(10),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("create topic")
        .into_inner();
    assert_eq!(topic.name, name);
    assert_eq!(topic.owner, "ml-platform");
    assert_eq!(topic.retention_count, Some(10));
    assert_eq!(topic.retention_age_ms, None);
    assert!(!topic.encrypted);
    assert_eq!(topic.created_by, "admin");
    assert!(topic.created_at_ms > 0);
}

async fn latest(
    client: &mut DatasetsClient<Channel>,
    topic: &str,
    after: u64,
    wait_ms: u64,
) -> LatestResponse {
    client
        .latest(LatestRequest {
            topic: topic.into(),
            after,
            wait_ms,
            ..Default::default()
        })
        .await
        .expect("latest")
        .into_inner()
}

/// GetData → (the chunks' sizes, the bytes, the checksum metadata).
async fn get_data(
    client: &mut DatasetsClient<Channel>,
    request: GetDataRequest,
) -> (Vec<usize>, Vec<u8>, String) {
    let response = client.get_data(request).await.expect("get data");
    let checksum = response
        .metadata()
        .get("x-riffle-checksum")
        .expect("x-riffle-checksum")
        .to_str()
        .unwrap()
        .to_string();
    let mut stream = response.into_inner();
    let mut sizes = Vec::new();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("data chunk");
        sizes.push(chunk.data.len());
        data.extend_from_slice(&chunk.data);
    }
    (sizes, data, checksum)
}

#[tokio::test]
async fn publish_in_chunks_then_latest_and_data_round_trip() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let token = dir.admin_token();
    let mut client = client(&server).await;
    let topic = "models.ranker";
    create_topic(&mut client, &token, topic).await;

    // Above the 1 MiB inline limit: the payload streams into the blob store.
    let data = payload(1_800_000, 0x5a);
    let parts: Vec<&[u8]> = data.chunks(600_000).collect();
    assert_eq!(parts.len(), 3);
    let mut publish_header = header(topic);
    publish_header
        .metadata
        .insert("trained_on".into(), "2024-05-01".into());
    let published = publish(&mut client, Some(&token), publish_header, &parts)
        .await
        .expect("publish");
    assert_eq!(published.topic, topic);
    assert_eq!(published.version, 1);
    assert_eq!(published.size, data.len() as u64);
    assert_eq!(published.checksum, sha256(&data));
    assert_eq!(published.scopes, ["*"]);
    assert_eq!(published.metadata["trained_on"], "2024-05-01");
    assert!(!published.withdrawn);

    let answer = latest(&mut client, topic, 0, 0).await;
    assert!(answer.found);
    assert_eq!(answer.reason, "latest");
    assert_eq!(answer.version.as_ref(), Some(&published));

    let fetched = client
        .get_version(GetVersionRequest {
            topic: topic.into(),
            version: 1,
        })
        .await
        .expect("get version")
        .into_inner();
    assert_eq!(fetched, published);

    let (sizes, downloaded, checksum) = get_data(
        &mut client,
        GetDataRequest {
            topic: topic.into(),
            version: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(downloaded, data);
    assert_eq!(checksum, published.checksum);
    assert!(sizes.len() >= 2, "chunk sizes {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 1 << 20), "chunk sizes {sizes:?}");

    let (_, range, _) = get_data(
        &mut client,
        GetDataRequest {
            topic: topic.into(),
            version: 1,
            offset: Some(1_000_000),
            length: Some(5),
        },
    )
    .await;
    assert_eq!(range, &data[1_000_000..1_000_005]);
    let status = client
        .get_data(GetDataRequest {
            topic: topic.into(),
            version: 1,
            offset: Some(data.len() as u64),
            length: None,
        })
        .await
        .expect_err("offset at the end");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Metadata-only: a new version reusing the payload; data is refused.
    let mut reuse = header(topic);
    reuse.existing_checksum = Some(published.checksum.clone());
    let status = publish(&mut client, Some(&token), reuse.clone(), &[b"x".as_slice()])
        .await
        .expect_err("metadata-only publish with data");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("data: "), "{status:?}");
    let second = publish(&mut client, Some(&token), reuse, &[])
        .await
        .expect("metadata-only publish");
    assert_eq!(second.version, 2);
    assert_eq!(second.checksum, published.checksum);
    assert_eq!(second.size, published.size);

    let status = client
        .get_version(GetVersionRequest {
            topic: topic.into(),
            version: 0,
        })
        .await
        .expect_err("version 0");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "version: versions start at 1");
    let status = client
        .get_version(GetVersionRequest {
            topic: "models.absent".into(),
            version: 1,
        })
        .await
        .expect_err("absent topic");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// Polls `/metrics` until `riffle_datasets_polls_waiting` reaches `count`.
async fn wait_for_waiting_polls(server: &Server, count: f64) {
    let until = Instant::now() + CONDITION_DEADLINE;
    loop {
        let response = server
            .http
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        let text = response.text().await.expect("metrics body");
        let waiting = parse_metrics(&text)
            .into_iter()
            .find(|(name, _, _)| name == "riffle_datasets_polls_waiting")
            .map_or(0.0, |(_, _, value)| value);
        if waiting >= count {
            return;
        }
        assert!(
            Instant::now() < until,
            "no long-poll held open after {CONDITION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn long_poll_is_answered_by_a_publish_made_meanwhile() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let token = dir.admin_token();
    let mut client = client(&server).await;
    let topic = "configs.flags";
    create_topic(&mut client, &token, topic).await;
    let first = publish(
        &mut client,
        Some(&token),
        header(topic),
        &[b"{\"v\":1}".as_slice()],
    )
    .await
    .expect("publish v1");
    assert_eq!(first.version, 1);

    // Nothing newer than version 1 yet: the poll is held open.
    let poll = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = latest(&mut client, topic, 1, 20_000).await;
            (answer, started.elapsed())
        })
    };
    wait_for_waiting_polls(&server, 1.0).await;
    let second = publish(
        &mut client,
        Some(&token),
        header(topic),
        &[b"{\"v\":2}".as_slice()],
    )
    .await
    .expect("publish v2");
    assert_eq!(second.version, 2);

    let (answer, elapsed) = poll.await.expect("poll task");
    assert!(answer.found, "the poll timed out: {answer:?}");
    assert_eq!(answer.reason, "latest");
    assert_eq!(answer.version, Some(second));
    assert!(
        elapsed < Duration::from_secs(20),
        "answered after {elapsed:?}"
    );

    // Holding the newest version, a short poll finds nothing (REST 204).
    let nothing = latest(&mut client, topic, 2, 50).await;
    assert_eq!(nothing, LatestResponse::default());
}

#[tokio::test]
async fn publish_needs_a_token_with_the_publish_role() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let token = dir.admin_token();
    let mut client = client(&server).await;
    let topic = "models.guarded";
    create_topic(&mut client, &token, topic).await;

    let status = publish(&mut client, None, header(topic), &[b"payload".as_slice()])
        .await
        .expect_err("publish without a token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("authorization: "),
        "{status:?}"
    );

    let status = publish(
        &mut client,
        Some("not-the-token"),
        header(topic),
        &[b"payload".as_slice()],
    )
    .await
    .expect_err("publish with a wrong token");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "authorization: unknown token");

    let mut bad = Request::new(CreateTopicRequest {
        name: "models.other".into(),
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let status = client.create_topic(bad).await.expect_err("basic auth");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Nothing was published.
    assert!(!latest(&mut client, topic, 0, 0).await.found);
    let status = client
        .get_version(GetVersionRequest {
            topic: topic.into(),
            version: 1,
        })
        .await
        .expect_err("no version 1");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn pin_overrides_latest_until_unpinned() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let token = dir.admin_token();
    let mut client = client(&server).await;
    let topic = "models.pinned";
    create_topic(&mut client, &token, topic).await;
    for body in ["one", "two"] {
        publish(&mut client, Some(&token), header(topic), &[body.as_bytes()])
            .await
            .expect("publish");
    }

    let pin = client
        .pin(with_token(
            PinRequest {
                topic: topic.into(),
                version: 1,
                scope: None,
            },
            &token,
        ))
        .await
        .expect("pin")
        .into_inner();
    assert_eq!(pin.topic, topic);
    assert_eq!(pin.version, 1);
    assert_eq!(pin.scope, None);
    assert_eq!(pin.pinned_by, "admin");

    let answer = latest(&mut client, topic, 0, 0).await;
    assert!(answer.found);
    assert_eq!(answer.reason, "pinned");
    assert_eq!(answer.version.as_ref().map(|v| v.version), Some(1));
    // A consumer on version 2 is moved back to the pinned version.
    let answer = latest(&mut client, topic, 2, 0).await;
    assert_eq!(answer.reason, "pinned");
    assert_eq!(answer.version.as_ref().map(|v| v.version), Some(1));

    let status = client
        .pin(with_token(
            PinRequest {
                topic: topic.into(),
                version: 2,
                scope: Some("region".into()),
            },
            &token,
        ))
        .await
        .expect_err("bad scope");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("scope: "), "{status:?}");

    let mut bad_scope = header(topic);
    bad_scope.scopes = vec!["no-equals-sign".into()];
    let status = publish(&mut client, Some(&token), bad_scope, &[b"three".as_slice()])
        .await
        .expect_err("publish with a bad scope");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("scope: "), "{status:?}");

    let unpinned = client
        .unpin(with_token(
            UnpinRequest {
                topic: topic.into(),
                scope: None,
            },
            &token,
        ))
        .await
        .expect("unpin")
        .into_inner();
    assert_eq!(unpinned.topic, topic);
    assert_eq!(unpinned.unpinned, None);
    let answer = latest(&mut client, topic, 0, 0).await;
    assert_eq!(answer.reason, "latest");
    assert_eq!(answer.version.as_ref().map(|v| v.version), Some(2));
}

#[tokio::test]
async fn without_a_datasets_role_methods_are_unavailable() {
    let dir = TestDir::new();
    let server =
        Server::start_with_env(&dir, &[("RIFFLE__SERVER__ROLES", "[ingest,process,serve]")]).await;
    let mut client = client(&server).await;
    let status = client
        .latest(LatestRequest {
            topic: "models.any".into(),
            ..Default::default()
        })
        .await
        .expect_err("no datasets role");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "dataset service not running in this process (roles)"
    );
}
