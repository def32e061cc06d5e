//! The dataset client against a mock of the consume path: an in-test axum
//! server that holds versions in memory, long-polls `latest`, serves data,
//! and can be told to corrupt payloads, answer 503, lie about versions, or
//! die and come back on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use riffle_datasets::client::{Source, Status, Subscription, SubscriptionConfig};
use riffle_datasets::Labels;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Every wait in these tests: generous, since nothing sleeps for a fixed
/// time and a wait only ends early when its condition holds.
const DEADLINE: Duration = Duration::from_secs(10);

fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What a test dataset decodes to: the version written in the payload and
/// a body derived from it, so a reader can check they belong together.
#[derive(Debug, PartialEq)]
struct Dataset {
    version: u64,
    rows: Vec<u64>,
}

fn payload_for(version: u64) -> Vec<u8> {
    format!("v{version}:{}", "x".repeat(version as usize % 7)).into_bytes()
}

fn decode(bytes: &[u8]) -> Result<Dataset, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("payload: {e}"))?;
    let (head, tail) = text
        .split_once(':')
        .ok_or_else(|| format!("payload: {text:?} has no ':'"))?;
    let version: u64 = head
        .strip_prefix('v')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("payload: {head:?} is not v<n>"))?;
    if tail.contains('!') {
        return Err(format!("payload: version {version} is marked undecodable"));
    }
    Ok(Dataset {
        version,
        rows: vec![version; 64],
    })
}

struct MockVersion {
    payload: Vec<u8>,
    checksum: String,
}

#[derive(Default)]
struct MockState {
    versions: Mutex<BTreeMap<u64, MockVersion>>,
    /// Answer this (version, reason) instead of the newest, whenever it is
    /// not what the consumer holds (a lying server, for the regress test).
    forced: Mutex<Option<(u64, &'static str)>>,
    corrupt: AtomicBool,
    unavailable: AtomicBool,
    latest_requests: AtomicU64,
    data_requests: AtomicU64,
    /// Bumped on every change: long-polls re-evaluate.
    changed: watch::Sender<u64>,
    /// Set while the server is being killed: long-polls end at once.
    dying: watch::Sender<bool>,
    /// The last `latest` request's query, as it arrives.
    last_query: watch::Sender<Option<LatestQuery>>,
    last_auth: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct LatestQuery {
    after: u64,
    wait: String,
    labels: Option<String>,
}

fn parse_wait(wait: &str) -> Duration {
    if let Some(ms) = wait.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap());
    }
    Duration::from_secs(wait.strip_suffix('s').unwrap().parse().unwrap())
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl MockState {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn publish(&self, version: u64) {
        self.publish_bytes(version, payload_for(version));
    }

    fn publish_bytes(&self, version: u64, payload: Vec<u8>) {
        let checksum = checksum(&payload);
        self.versions
            .lock()
            .insert(version, MockVersion { payload, checksum });
        self.bump();
    }

    fn force(&self, answer: Option<(u64, &'static str)>) {
        *self.forced.lock() = answer;
        self.bump();
    }

    /// The answer for a consumer holding `after`, if it is news.
    fn answer(&self, after: u64) -> Option<serde_json::Value> {
        let versions = self.versions.lock();
        let forced = *self.forced.lock();
        let (version, reason) = match forced {
            Some(forced) => forced,
            None => (*versions.keys().next_back()?, "latest"),
        };
        let news = match (forced, reason) {
            (None, "latest") => version > after,
            _ => version != after,
        };
        if !news {
            return None;
        }
        let held = versions.get(&version)?;
        Some(json!({
            "topic": "prices",
            "version": version,
            "metadata": {"source": "mock", "n": version.to_string()},
            "checksum": held.checksum,
            "size": held.payload.len(),
            "created_at": "2024-01-01T00:00:00Z",
            "created_at_ms": 1_704_067_200_000i64 + version as i64,
            "scopes": ["*"],
            "reason": reason,
        }))
    }
}

async fn latest(
    State(state): State<Arc<MockState>>,
    Path(topic): Path<String>,
    Query(query): Query<LatestQuery>,
    headers: HeaderMap,
) -> Response {
    state.latest_requests.fetch_add(1, Ordering::SeqCst);
    state.last_query.send_replace(Some(query.clone()));
    *state.last_auth.lock() = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if topic != "prices" {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("topic {topic:?} not found"),
        );
    }
    if state.unavailable.load(Ordering::SeqCst) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try later");
    }
    let mut changed = state.changed.subscribe();
    let mut dying = state.dying.subscribe();
    let deadline = tokio::time::Instant::now() + parse_wait(&query.wait);
    loop {
        changed.borrow_and_update();
        if let Some(answer) = state.answer(query.after) {
            return Json(answer).into_response();
        }
        if *dying.borrow_and_update() {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            );
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = dying.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

async fn data(
    State(state): State<Arc<MockState>>,
    Path((topic, version)): Path<(String, u64)>,
) -> Response {
    state.data_requests.fetch_add(1, Ordering::SeqCst);
    if state.unavailable.load(Ordering::SeqCst) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try later");
    }
    let versions = state.versions.lock();
    let Some(held) = versions.get(&version).filter(|_| topic == "prices") else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("version {version} not found"),
        );
    };
    let mut payload = held.payload.clone();
    if state.corrupt.load(Ordering::SeqCst) {
        payload[0] ^= 0x20;
    }
    ([("x-riffle-checksum", held.checksum.clone())], payload).into_response()
}

/// The mock server: one `MockState` that outlives restarts on one port.
struct Mock {
    state: Arc<MockState>,
    addr: SocketAddr,
    running: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

impl Mock {
    async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut mock = Mock {
            state: Arc::new(MockState::default()),
            addr,
            running: None,
        };
        mock.serve(listener);
        mock
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = Router::new()
            .route("/v1/datasets/topics/{topic}/latest", get(latest))
            .route(
                "/v1/datasets/topics/{topic}/versions/{version}/data",
                get(data),
            )
            .with_state(self.state.clone());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .await
                .unwrap();
        });
        self.running = Some((stop_tx, task));
    }

    /// Stops accepting, ends the long-polls in flight and waits until every
    /// connection is closed, so the port refuses connections afterwards.
    async fn kill(&mut self) {
        let (stop_tx, task) = self.running.take().expect("mock is running");
        self.state.dying.send_replace(true);
        stop_tx.send_replace(true);
        task.await.unwrap();
        self.state.dying.send_replace(false);
    }

    async fn restart(&mut self) {
        assert!(self.running.is_none(), "mock is already running");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

fn config(mock: &Mock) -> SubscriptionConfig {
    SubscriptionConfig::new(mock.url(), "prices")
        .wait(Duration::from_secs(30))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .request_timeout(Duration::from_secs(5))
}

async fn status_where(
    subscription: &Subscription<Dataset>,
    what: &str,
    condition: impl Fn(&Status) -> bool,
) -> Status {
    match subscription.wait_for_status(DEADLINE, condition).await {
        Some(status) => status,
        None => panic!("status never {what}: {:?}", subscription.status()),
    }
}

async fn version_at_least(subscription: &Subscription<Dataset>, version: u64) -> u64 {
    match subscription.wait_for_version(version, DEADLINE).await {
        Some(loaded) => loaded.version,
        None => panic!(
            "version {version} never arrived: {:?}",
            subscription.status()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_v1_then_v2_by_long_poll_with_callbacks_in_order() {
    let mock = Mock::start().await;
    let labels = Labels::from_pairs([("region", "eu"), ("app", "ranker")]);
    let subscription =
        Subscription::start(config(&mock).labels(labels).token("t0ken"), decode).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_callback = seen.clone();
    subscription.on_change(move |loaded| {
        assert_eq!(loaded.value.version, loaded.version);
        seen_by_callback.lock().push(loaded.version);
    });
    // Nothing published yet: the service confirms there is nothing.
    let status = status_where(&subscription, "connected", |s| s.connected).await;
    assert_eq!(status.version, None);
    assert_eq!(status.stale_since_ms, None);
    assert!(subscription.current().is_none());

    mock.state.publish(1);
    assert_eq!(version_at_least(&subscription, 1).await, 1);
    let v1 = subscription.current().unwrap();
    assert_eq!(v1.value, decode(&payload_for(1)).unwrap());
    assert_eq!(v1.source, Source::Service);
    assert_eq!(v1.checksum, checksum(&payload_for(1)));
    assert_eq!(v1.size, payload_for(1).len() as u64);
    assert_eq!(v1.metadata.get("n").map(String::as_str), Some("1"));
    assert_eq!(v1.created_at_ms, 1_704_067_200_001);

    // The next request is a long-poll holding v1; v2 arrives through it,
    // well before its 30 s wait could have run out.
    let polling = mock.state.latest_requests.load(Ordering::SeqCst);
    let mut queries = mock.state.last_query.subscribe();
    tokio::time::timeout(
        DEADLINE,
        queries.wait_for(|q| q.as_ref().is_some_and(|q| q.after == 1 && q.wait == "30s")),
    )
    .await
    .expect("a long-poll holding v1")
    .unwrap();
    mock.state.publish(2);
    assert_eq!(version_at_least(&subscription, 2).await, 2);
    assert!(
        mock.state.latest_requests.load(Ordering::SeqCst) <= polling + 2,
        "v2 came by long-poll, not by repeated polling"
    );
    assert_eq!(*seen.lock(), vec![1, 2]);

    let query = mock.state.last_query.borrow().clone().unwrap();
    assert_eq!(query.labels.as_deref(), Some("app=ranker,region=eu"));
    assert_eq!(mock.state.last_auth.lock().as_deref(), Some("Bearer t0ken"));
    let status = subscription.status();
    assert_eq!(status.version, Some(2));
    assert_eq!(status.source, Some(Source::Service));
    assert!(status.connected);
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.rejected_versions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_fallback_copy_when_the_service_is_down_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut mock = Mock::start().await;
    mock.state.publish(1);
    let first = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(version_at_least(&first, 1).await, 1);
    first.stop();
    drop(first);
    mock.kill().await;

    let second = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    // No waiting: the copy is there when `start` returns.
    let held = second.current().expect("fallback copy loaded at start");
    assert_eq!(held.version, 1);
    assert_eq!(held.source, Source::Fallback);
    assert_eq!(held.value, decode(&payload_for(1)).unwrap());
    assert_eq!(held.checksum, checksum(&payload_for(1)));
    let status = status_where(&second, "failing", |s| s.consecutive_failures >= 1).await;
    assert_eq!(status.source, Some(Source::Fallback));
    assert!(!status.connected);
    assert!(status.stale_since_ms.is_some(), "{status:?}");
    assert!(status.last_error.is_some());

    let registry = prometheus::Registry::new();
    second.register_metrics(&registry).unwrap();
    let text = scrape(&registry);
    assert!(
        text.contains("riffle_datasets_client_version{topic=\"prices\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("riffle_datasets_client_failures_total{topic=\"prices\"}"),
        "{text}"
    );
    assert!(
        text.contains("riffle_datasets_client_staleness_seconds{topic=\"prices\"}"),
        "{text}"
    );

    mock.state.publish(2);
    mock.restart().await;
    assert_eq!(version_at_least(&second, 2).await, 2);
    let held = second.current().unwrap();
    assert_eq!(held.source, Source::Service);
    let status = status_where(&second, "caught up", |s| s.connected).await;
    assert_eq!(status.version, Some(2));
    assert_eq!(status.stale_since_ms, None);
    assert_eq!(status.consecutive_failures, 0);
    assert!(
        scrape(&registry).contains("riffle_datasets_client_staleness_seconds{topic=\"prices\"} 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_copy_that_is_still_current_is_confirmed_by_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start().await;
    mock.state.publish(3);
    let first = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(version_at_least(&first, 3).await, 3);
    drop(first);

    let second = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(second.current().map(|l| l.version), Some(3));
    // The first request is a probe (wait=0ms), so the confirmation does
    // not take a whole long-poll.
    let status = status_where(&second, "connected", |s| s.connected).await;
    assert_eq!(status.stale_since_ms, None);
    assert_eq!(status.source, Some(Source::Fallback));
    assert_eq!(
        mock.state.data_requests.load(Ordering::SeqCst),
        1,
        "not downloaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_while_the_service_is_down_and_recovers() {
    let mut mock = Mock::start().await;
    mock.state.publish(1);
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    assert_eq!(version_at_least(&subscription, 1).await, 1);
    status_where(&subscription, "connected", |s| s.connected).await;

    mock.kill().await;
    let status = status_where(&subscription, "failing twice", |s| {
        s.consecutive_failures >= 2
    })
    .await;
    assert!(!status.connected);
    assert_eq!(status.version, Some(1));
    assert_eq!(status.source, Some(Source::Service));
    let since = status
        .stale_since_ms
        .expect("stale while the service is down");
    assert!(since <= now_ms());
    assert_eq!(subscription.current().unwrap().value.version, 1);

    mock.state.publish(2);
    mock.restart().await;
    assert_eq!(version_at_least(&subscription, 2).await, 2);
    let status = status_where(&subscription, "recovered", |s| s.connected).await;
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.stale_since_ms, None);
    assert!(status.failures_total >= 2);
    assert!(status.last_error.is_some(), "the last error is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_on_503_and_on_unknown_topics() {
    let mock = Mock::start().await;
    mock.state.publish(1);
    mock.state.unavailable.store(true, Ordering::SeqCst);
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    let status = status_where(&subscription, "failing", |s| s.consecutive_failures >= 3).await;
    assert!(!status.connected);
    let error = status.last_error.unwrap();
    assert!(
        error.contains("http 503") && error.contains("try later"),
        "{error}"
    );
    // One request per failure: retries go through the backoff.
    let requests = mock.state.latest_requests.load(Ordering::SeqCst);
    let failures = subscription.status().failures_total;
    assert!(
        requests <= failures + 1,
        "{requests} requests for {failures} failures"
    );

    mock.state.unavailable.store(false, Ordering::SeqCst);
    assert_eq!(version_at_least(&subscription, 1).await, 1);

    let unknown = Subscription::start(
        SubscriptionConfig::new(mock.url(), "nope")
            .backoff(Duration::from_millis(10), Duration::from_millis(100)),
        decode,
    )
    .unwrap();
    let status = status_where(&unknown, "refused", |s| s.consecutive_failures >= 2).await;
    assert!(status.connected, "the service answered");
    let error = status.last_error.unwrap();
    assert!(
        error.contains("http 404") && error.contains("\"nope\""),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_corrupt_payload_and_accepts_it_once_fixed() {
    let mock = Mock::start().await;
    mock.state.publish(1);
    let dir = tempfile::tempdir().unwrap();
    let subscription = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(version_at_least(&subscription, 1).await, 1);
    let registry = prometheus::Registry::new();
    subscription.register_metrics(&registry).unwrap();

    mock.state.corrupt.store(true, Ordering::SeqCst);
    mock.state.publish(2);
    let status = status_where(&subscription, "rejecting", |s| s.rejected_versions >= 2).await;
    assert_eq!(status.version, Some(1), "the old version is kept");
    assert!(status.connected);
    assert!(status.stale_since_ms.is_some());
    let error = status.last_error.unwrap();
    assert!(
        error.contains("version 2") && error.contains("checksum mismatch"),
        "{error}"
    );
    assert_eq!(subscription.current().unwrap().value.version, 1);
    let text = scrape(&registry);
    assert!(
        !text.contains("riffle_datasets_client_rejected_total{topic=\"prices\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("riffle_datasets_client_version{topic=\"prices\"} 1"),
        "{text}"
    );
    // Nothing unverified reaches the fallback copy.
    let meta = std::fs::read_to_string(dir.path().join("prices/meta.json")).unwrap();
    assert!(meta.contains("\"version\": 1"), "{meta}");

    mock.state.corrupt.store(false, Ordering::SeqCst);
    assert_eq!(version_at_least(&subscription, 2).await, 2);
    let status = status_where(&subscription, "recovered", |s| s.consecutive_failures == 0).await;
    assert_eq!(status.stale_since_ms, None);
    assert!(status.rejected_versions >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_fails_to_decode_is_rejected_and_not_fetched_again() {
    let mock = Mock::start().await;
    mock.state.publish(1);
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    assert_eq!(version_at_least(&subscription, 1).await, 1);

    mock.state.publish_bytes(2, b"v2:!".to_vec());
    let status = status_where(&subscription, "rejected", |s| s.consecutive_failures >= 3).await;
    assert_eq!(status.rejected_versions, 1);
    assert_eq!(status.version, Some(1));
    let downloads = mock.state.data_requests.load(Ordering::SeqCst);
    assert_eq!(downloads, 2, "v1 once, the undecodable v2 once");

    mock.state.publish(3);
    assert_eq!(version_at_least(&subscription, 3).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_regresses_except_to_a_pinned_version() {
    let mock = Mock::start().await;
    mock.state.publish(1);
    mock.state.publish(2);
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    assert_eq!(version_at_least(&subscription, 2).await, 2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_callback = seen.clone();
    subscription.on_change(move |loaded| seen_by_callback.lock().push(loaded.version));

    mock.state.force(Some((1, "latest")));
    let status = status_where(&subscription, "ignoring", |s| s.consecutive_failures >= 2).await;
    assert_eq!(status.version, Some(2));
    let error = status.last_error.unwrap();
    assert!(
        error.contains("ignored version 1") && error.contains("holding 2"),
        "{error}"
    );
    assert_eq!(subscription.current().unwrap().version, 2);

    let mut changes = subscription.watch();
    mock.state.force(Some((1, "pinned")));
    let pinned = tokio::time::timeout(
        DEADLINE,
        changes.wait_for(|held| held.as_ref().is_some_and(|l| l.version == 1)),
    )
    .await
    .expect("the pinned version arrives")
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(pinned.value.version, 1);
    assert_eq!(*seen.lock(), vec![1]);
    let status = status_where(&subscription, "settled", |s| s.consecutive_failures == 0).await;
    assert_eq!(status.version, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_garbage_fallback_copy_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut mock = Mock::start().await;
    mock.state.publish(5);
    let first = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(version_at_least(&first, 5).await, 5);
    drop(first);
    mock.kill().await;

    let topic_dir = dir.path().join("prices");
    let payloads: Vec<_> = std::fs::read_dir(&topic_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "meta.json")
        .collect();
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    let good = std::fs::read(&payloads[0]).unwrap();

    // A payload of the right size whose bytes differ from what the meta
    // records (as after a torn write): refused.
    let mut torn = good.clone();
    torn[1] = b'9';
    std::fs::write(&payloads[0], &torn).unwrap();
    let subscription = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert!(subscription.current().is_none());
    let status = subscription.status();
    assert_eq!(status.version, None);
    let error = status.fallback_error.unwrap();
    assert!(
        error.contains("fallback") && error.contains("does not match"),
        "{error}"
    );
    drop(subscription);

    // Garbage meta: refused too.
    std::fs::write(&payloads[0], &good).unwrap();
    std::fs::write(topic_dir.join("meta.json"), b"\x00garbage").unwrap();
    let subscription = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert!(subscription.current().is_none());
    let error = subscription.status().fallback_error.unwrap();
    assert!(error.contains("meta.json: malformed"), "{error}");

    // And once the service is back, the copy is rewritten properly.
    mock.restart().await;
    assert_eq!(version_at_least(&subscription, 5).await, 5);
    drop(subscription);
    let restarted = Subscription::start(config(&mock).fallback_dir(dir.path()), decode).unwrap();
    assert_eq!(restarted.current().map(|l| l.version), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_half_loaded_value() {
    const LAST: u64 = 30;
    let mock = Mock::start().await;
    mock.state.publish(1);
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    assert_eq!(version_at_least(&subscription, 1).await, 1);

    // Each reader runs until it has seen the last version, so it reads
    // across every swap; the publisher starts once all are reading.
    let ready = Arc::new(watch::Sender::new(0usize));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let subscription = subscription.clone();
            let ready = ready.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut newest = 0;
                while newest < LAST {
                    let held = subscription.current().expect("a version is held");
                    assert_eq!(held.value.version, held.version);
                    assert!(held.value.rows.iter().all(|&r| r == held.version));
                    assert!(
                        held.version >= newest,
                        "went back from {newest} to {}",
                        held.version
                    );
                    newest = held.version;
                    if reads == 0 {
                        ready.send_modify(|n| *n += 1);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    tokio::time::timeout(DEADLINE, ready.subscribe().wait_for(|n| *n == 3))
        .await
        .expect("readers started")
        .unwrap();
    for version in 2..=LAST {
        mock.state.publish(version);
        // Let each one land so every swap is one the readers can race.
        assert!(version_at_least(&subscription, version).await >= version);
    }
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(subscription.current().unwrap().version, LAST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_task_and_wakes_waiters() {
    let mock = Mock::start().await;
    let subscription = Subscription::start(config(&mock), decode).unwrap();
    status_where(&subscription, "connected", |s| s.connected).await;
    let waiter = {
        let subscription = subscription.clone();
        tokio::spawn(async move { subscription.wait_for_version(1, DEADLINE).await })
    };
    subscription.stop();
    assert!(waiter.await.unwrap().is_none());
    let requests = mock.state.latest_requests.load(Ordering::SeqCst);
    mock.state.publish(1);
    assert!(subscription
        .wait_for_version(1, Duration::from_millis(200))
        .await
        .is_none());
    assert!(mock.state.latest_requests.load(Ordering::SeqCst) <= requests + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_validates_the_config() {
    let error = Subscription::start(SubscriptionConfig::new("http://127.0.0.1:1", "a/b"), decode)
        .unwrap_err();
    assert!(
        error.message().starts_with("topic: \"a/b\""),
        "{}",
        error.message()
    );
    let error =
        Subscription::start(SubscriptionConfig::new("127.0.0.1:1", "t"), decode).unwrap_err();
    assert!(
        error.message().starts_with("base_url:"),
        "{}",
        error.message()
    );
}

fn scrape(registry: &prometheus::Registry) -> String {
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .unwrap();
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
