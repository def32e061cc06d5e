//! `DatasetService` end to end over the real backends: a SQLite metadata
//! file, a local blob directory, a master key file and a manual clock.
//! Scopes, pins, monotonicity, rollouts (and a restart in the middle of
//! one), long-poll and its coalescing, payloads inline and in blobs, the
//! consistency check of a second process, the janitor, encryption at rest,
//! concurrent publishers and unused-topic detection.
//!
//! Nothing sleeps to synchronise: a test that expects a waiting poll to be
//! woken spawns it with a 30 s wait and joins it within [`DEADLINE`], so a
//! poll answered by its timeout instead of by the change fails the test.
//! Rollout stages and retention only move when the test moves the clock and
//! calls `drive_rollouts` / `run_janitor`.
//!
//! The tests under "Findings" pin down defects found in `src/` while writing
//! this suite; each one's doc comment says what goes wrong.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use riffle_core::time::{Clock, ManualClock};
use riffle_core::{ErrorCode, HasCode};
use riffle_datasets::crypto::{self, MasterKey};
use riffle_datasets::model::{DataLocation, Reason, RolloutStage, RolloutState, Version};
use riffle_datasets::service::{
    Answer, CreateTopic, DatasetService, JanitorReport, PublishRequest, ServiceConfig,
};
use riffle_datasets::{
    BlobStore, DatasetError, Labels, ObjectBlobStore, Scope, SqliteMetadataStore,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// 2023-11-14T22:13:20Z: every test's clock starts here.
const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Small, so payloads above 1 KiB take the blob path.
const INLINE_MAX: u64 = 1024;
/// How long a waiting poll may wait: far above [`DEADLINE`], so only the
/// change under test can end it in time.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// Bound on anything a test awaits.
const DEADLINE: Duration = Duration::from_secs(10);

// ----------------------------------------------------------------------
// Harness

/// One "machine": the files a service lives on, and the clock it reads.
struct Env {
    dir: TempDir,
    clock: ManualClock,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temporary directory"),
            clock: ManualClock::new(T0),
        }
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    fn blob_file(&self, key: &str) -> PathBuf {
        self.blob_dir().join(key)
    }

    /// A service (a process) on this machine's files and master key.
    async fn service(&self) -> Arc<DatasetService> {
        self.service_with_key(&self.dir.path().join("master.key"))
            .await
    }

    async fn service_with_key(&self, master_key: &Path) -> Arc<DatasetService> {
        let store = SqliteMetadataStore::open(&self.dir.path().join("metadata.db"))
            .await
            .expect("metadata store opens");
        let blobs = ObjectBlobStore::local(&self.blob_dir()).expect("blob store opens");
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        DatasetService::start(
            Arc::new(store),
            Arc::new(blobs),
            clock,
            MasterKey::load_or_create(master_key).expect("master key"),
            ServiceConfig {
                inline_max_bytes: INLINE_MAX,
                ..Default::default()
            },
        )
        .await
        .expect("service starts")
    }
}

fn labels(s: &str) -> Labels {
    Labels::parse_field(s, "labels").expect("test labels parse")
}

fn scope(s: &str) -> Scope {
    s.parse().expect("test scope parses")
}

fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter().map(|s| scope(s)).collect()
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `len` deterministic pseudo-random bytes; different seeds give
/// different payloads (so unencrypted blobs do not share an object).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `bytes` as a body cut into chunks of the given sizes, cycling.
fn chunked(bytes: &[u8], sizes: &[usize]) -> BoxStream<'static, io::Result<Bytes>> {
    let mut rest = Bytes::copy_from_slice(bytes);
    let mut chunks = Vec::new();
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        chunks.push(rest.split_to((*size).min(rest.len())));
    }
    stream::iter(chunks.into_iter().map(Ok)).boxed()
}

/// Chunk sizes that straddle the inline limit, the blob store's hashing
/// piece and the encryption frame.
fn uneven(bytes: &[u8]) -> BoxStream<'static, io::Result<Bytes>> {
    chunked(bytes, &[1, 7, 1000, 4093, 65_537, 3, 300_001])
}

async fn create(svc: &Arc<DatasetService>, name: &str) {
    create_with(
        svc,
        CreateTopic {
            name: name.into(),
            ..Default::default()
        },
    )
    .await;
}

async fn create_with(svc: &Arc<DatasetService>, mut request: CreateTopic) {
    request.owner = "team-data".into();
    svc.create_topic(request, "admin")
        .await
        .expect("topic created");
}

/// Publishes `bytes` to `scopes` (global when empty).
async fn publish(svc: &Arc<DatasetService>, topic: &str, to: &[&str], bytes: &[u8]) -> Version {
    svc.publish(
        topic,
        PublishRequest {
            scopes: scopes(to),
            ..Default::default()
        },
        uneven(bytes),
        "publisher",
    )
    .await
    .expect("publish succeeds")
}

async fn publish_staged(svc: &Arc<DatasetService>, topic: &str, bytes: &[u8]) -> Version {
    svc.publish(
        topic,
        PublishRequest {
            staged: true,
            ..Default::default()
        },
        uneven(bytes),
        "publisher",
    )
    .await
    .expect("staged publish succeeds")
}

async fn publish_existing(
    svc: &Arc<DatasetService>,
    topic: &str,
    checksum: &str,
) -> Result<Version, DatasetError> {
    svc.publish_existing(topic, PublishRequest::default(), checksum, "publisher")
        .await
}

/// What a consumer with `l` holding `after` is handed right now.
async fn poll_now(
    svc: &Arc<DatasetService>,
    topic: &str,
    l: &str,
    after: u64,
) -> Option<(u64, Reason)> {
    svc.latest(topic, &labels(l), after, Duration::ZERO)
        .await
        .expect("poll succeeds")
        .map(|a| (a.version, a.reason))
}

/// A poll that waits up to 30 s; it must be answered within [`DEADLINE`].
async fn poll_waiting(
    svc: &Arc<DatasetService>,
    topic: &str,
    l: &str,
    after: u64,
) -> Option<(u64, Reason)> {
    timeout(DEADLINE, svc.latest(topic, &labels(l), after, LONG_WAIT))
        .await
        .expect("the waiting poll is answered by the change, not by its 30 s timeout")
        .expect("poll succeeds")
        .map(|a| (a.version, a.reason))
}

type Waiter = JoinHandle<Result<Option<Arc<Answer>>, DatasetError>>;

fn spawn_poll(svc: &Arc<DatasetService>, topic: &str, l: &str, after: u64) -> Waiter {
    let svc = svc.clone();
    let topic = topic.to_string();
    let labels = labels(l);
    tokio::spawn(async move { svc.latest(&topic, &labels, after, LONG_WAIT).await })
}

/// Spawns a 30 s poll and returns once it is parked in a (new) poll group.
async fn park_poll(svc: &Arc<DatasetService>, topic: &str, l: &str, after: u64) -> Waiter {
    let before = svc.stats.poll_groups_created.load(Ordering::SeqCst);
    let waiter = spawn_poll(svc, topic, l, after);
    until("the poll to park", || {
        svc.stats.poll_groups_created.load(Ordering::SeqCst) > before
    })
    .await;
    assert!(!waiter.is_finished(), "the poll had nothing to wait for");
    waiter
}

async fn join(waiter: Waiter) -> Result<Option<Arc<Answer>>, DatasetError> {
    timeout(DEADLINE, waiter)
        .await
        .expect("the waiting poll is answered by the change, not by its 30 s timeout")
        .expect("poll task does not panic")
}

/// Yields to the runtime until `condition` holds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    timeout(DEADLINE, async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn read(
    svc: &DatasetService,
    topic: &str,
    number: u64,
    range: Option<Range<u64>>,
) -> Vec<u8> {
    let data = svc
        .open_data(topic, number, range.clone())
        .await
        .unwrap_or_else(|e| panic!("open_data {topic} v{number}: {e}"));
    assert_eq!(data.version.version, number);
    if let Some(range) = range {
        assert_eq!(data.range, range);
    }
    let chunks: Vec<Bytes> = data.body.try_collect().await.expect("payload streams");
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out
}

fn blob_key(version: &Version) -> String {
    match &version.location {
        DataLocation::Blob(key) => key.clone(),
        DataLocation::Inline => panic!("version {} is inline, expected a blob", version.version),
    }
}

fn stages(list: &[(&str, i64)]) -> Vec<RolloutStage> {
    list.iter()
        .map(|(s, delay)| RolloutStage {
            scope: scope(s),
            delay_ms: *delay as u64,
        })
        .collect()
}

fn assert_code<T>(result: Result<T, DatasetError>, code: ErrorCode) -> DatasetError {
    let Err(error) = result else {
        panic!("expected a {code:?} error, got a success");
    };
    assert_eq!(error.code(), code, "{}", error.message());
    error
}

async fn version_numbers(svc: &DatasetService, topic: &str) -> Vec<u64> {
    svc.list_versions(topic)
        .await
        .expect("versions list")
        .iter()
        .map(|v| v.version)
        .collect()
}

fn expired(topic: &str, versions: &[u64]) -> Vec<(String, u64)> {
    versions.iter().map(|v| (topic.to_string(), *v)).collect()
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

// ----------------------------------------------------------------------
// 1. Scopes

#[tokio::test]
async fn scopes_pick_each_consumers_version_and_widen_with_add_scopes() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "features").await;

    let v1 = publish(&svc, "features", &[], b"global").await;
    assert_eq!((v1.version, v1.scopes.clone()), (1, vec![Scope::global()]));
    env.clock.advance(MINUTE);
    let v2 = publish(&svc, "features", &["region=us-east"], b"east").await;
    assert_eq!(v2.scopes, scopes(&["region=us-east"]));
    env.clock.advance(MINUTE);
    let v3 = publish(&svc, "features", &["cluster=canary"], b"canary").await;
    assert_eq!(v3.version, 3);
    env.clock.advance(MINUTE);
    let v4 = publish_staged(&svc, "features", b"staged").await;
    assert_eq!((v4.version, v4.scopes.len()), (4, 0));

    let cases = [
        ("", 1),
        ("region=us-east", 2),
        ("cluster=canary", 3),
        ("region=us-east,cluster=canary", 3),
        ("region=eu", 1),
        ("region=us-east-2", 1),
        ("cluster=canary-2,app=x", 1),
    ];
    for (consumer, want) in cases {
        assert_eq!(
            poll_now(&svc, "features", consumer, 0).await,
            Some((want, Reason::Latest)),
            "consumer {consumer:?}"
        );
    }
    // The staged version is visible to nobody.
    assert_eq!(poll_now(&svc, "features", "cluster=canary", 3).await, None);
    assert_eq!(poll_now(&svc, "features", "", 1).await, None);

    // The answer carries the version's scopes and the reason.
    let answer = svc
        .latest("features", &labels("region=us-east"), 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&answer.json).unwrap();
    assert_eq!(json["version"], 2);
    assert_eq!(json["scopes"], serde_json::json!(["region=us-east"]));
    assert_eq!(json["reason"], "latest");
    assert_eq!(json["checksum"], sha256(b"east"));

    // As of a time: the version current then (T0 + n min is version n+1).
    let at = |l: &str, t: i64| {
        svc.latest_at("features", &labels(l), t)
            .unwrap()
            .map(|a| a.version)
    };
    assert_eq!(at("", T0 - 1), None);
    assert_eq!(at("region=us-east", T0), Some(1));
    assert_eq!(at("region=us-east", T0 + MINUTE - 1), Some(1));
    assert_eq!(at("region=us-east", T0 + MINUTE), Some(2));
    assert_eq!(at("cluster=canary", T0 + MINUTE), Some(1));
    assert_eq!(at("cluster=canary", T0 + 2 * MINUTE + 30_000), Some(3));
    assert_eq!(
        at("cluster=canary", T0 + 3 * MINUTE),
        Some(3),
        "staged is invisible"
    );
    assert_eq!(at("region=us-east,cluster=canary", T0 + 90_000), Some(2));

    // Adding scopes widens the audience, one scope at a time.
    env.clock.advance(MINUTE);
    let widened = svc
        .add_scopes("features", 4, scopes(&["region=eu"]), "dana")
        .await
        .unwrap();
    assert_eq!(widened.scopes, scopes(&["region=eu"]));
    assert_eq!(
        poll_now(&svc, "features", "region=eu", 1).await,
        Some((4, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "features", "", 1).await, None);
    assert_eq!(poll_now(&svc, "features", "region=us-east", 2).await, None);
    assert_eq!(poll_now(&svc, "features", "cluster=canary", 3).await, None);

    let widened = svc
        .add_scopes(
            "features",
            4,
            scopes(&["cluster=canary", "region=eu"]),
            "dana",
        )
        .await
        .unwrap();
    assert_eq!(
        widened.scopes,
        scopes(&["region=eu", "cluster=canary"]),
        "no duplicates"
    );
    assert_eq!(
        poll_now(&svc, "features", "cluster=canary", 3).await,
        Some((4, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "features", "region=us-east", 2).await, None);

    // A waiting unlabelled consumer is woken by the scope change.
    let waiter = park_poll(&svc, "features", "region=ap", 1).await;
    svc.add_scopes("features", 4, vec![Scope::global()], "dana")
        .await
        .unwrap();
    let answer = join(waiter).await.unwrap().expect("an answer");
    assert_eq!((answer.version, answer.reason), (4, Reason::Latest));
    for consumer in ["", "region=us-east", "cluster=canary", "region=eu"] {
        assert_eq!(
            poll_now(&svc, "features", consumer, 0).await,
            Some((4, Reason::Latest)),
            "consumer {consumer:?}"
        );
    }
    // latest_at filters by creation time; scopes are the current ones.
    assert_eq!(at("", T0 + 3 * MINUTE - 1), Some(1));
    assert_eq!(at("", T0 + 3 * MINUTE), Some(4));
    assert_eq!(at("region=us-east", T0 + 3 * MINUTE - 1), Some(2));

    // Errors name the field.
    let e = assert_code(
        svc.publish(
            "features",
            PublishRequest {
                scopes: scopes(&["region=eu"]),
                staged: true,
                ..Default::default()
            },
            uneven(b"x"),
            "publisher",
        )
        .await,
        ErrorCode::InvalidArgument,
    );
    assert!(e.message().starts_with("staged:"), "{}", e.message());
    let e = assert_code(
        svc.add_scopes("features", 4, Vec::new(), "dana").await,
        ErrorCode::InvalidArgument,
    );
    assert!(e.message().starts_with("scopes:"), "{}", e.message());
    assert_code(
        svc.add_scopes("features", 9, scopes(&["region=eu"]), "dana")
            .await,
        ErrorCode::NotFound,
    );
    assert_code(
        svc.latest("nope", &labels(""), 0, Duration::ZERO).await,
        ErrorCode::NotFound,
    );
    assert_eq!(
        version_numbers(&svc, "features").await,
        vec![4, 3, 2, 1],
        "failed publishes assign nothing"
    );
}

// ----------------------------------------------------------------------
// 2. Pins

#[tokio::test]
async fn pins_move_consumers_back_per_scope_and_are_audited() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "pins").await;
    for n in 1..=3u8 {
        publish(&svc, "pins", &[], &[n]).await;
    }
    assert_eq!(poll_now(&svc, "pins", "", 3).await, None);

    // A topic-wide pin moves everyone back, and wakes waiting consumers.
    let waiter = park_poll(&svc, "pins", "", 3).await;
    env.clock.advance(1000);
    let pin = svc.pin("pins", None, 1, "alice").await.unwrap();
    assert_eq!(
        (pin.version, pin.scope.clone(), pin.pinned_at_ms),
        (1, None, T0 + 1000)
    );
    let answer = join(waiter).await.unwrap().expect("an answer");
    assert_eq!((answer.version, answer.reason), (1, Reason::Pinned));
    assert_eq!(
        poll_now(&svc, "pins", "region=eu", 3).await,
        Some((1, Reason::Pinned))
    );
    assert_eq!(
        poll_now(&svc, "pins", "", 0).await,
        Some((1, Reason::Pinned))
    );
    assert_eq!(
        poll_now(&svc, "pins", "", 1).await,
        None,
        "already holds the pin"
    );

    // A scoped pin overrides the topic-wide one for its scope only.
    env.clock.advance(1000);
    svc.pin("pins", Some(scope("region=eu")), 2, "bob")
        .await
        .unwrap();
    assert_eq!(
        poll_now(&svc, "pins", "region=eu", 1).await,
        Some((2, Reason::Pinned))
    );
    assert_eq!(
        poll_now(&svc, "pins", "region=eu", 3).await,
        Some((2, Reason::Pinned))
    );
    assert_eq!(poll_now(&svc, "pins", "region=eu", 2).await, None);
    assert_eq!(poll_now(&svc, "pins", "region=us", 1).await, None);
    assert_eq!(
        poll_now(&svc, "pins", "", 3).await,
        Some((1, Reason::Pinned))
    );

    // Unpinning the topic returns everyone else to latest; the scope stays.
    env.clock.advance(1000);
    svc.unpin("pins", None, "alice").await.unwrap();
    assert_eq!(
        poll_now(&svc, "pins", "", 1).await,
        Some((3, Reason::Latest))
    );
    assert_eq!(
        poll_now(&svc, "pins", "region=us", 1).await,
        Some((3, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "pins", "region=eu", 2).await, None);
    assert_eq!(
        poll_now(&svc, "pins", "region=eu", 3).await,
        Some((2, Reason::Pinned))
    );

    env.clock.advance(1000);
    svc.unpin("pins", Some(scope("region=eu")), "bob")
        .await
        .unwrap();
    assert_eq!(
        poll_now(&svc, "pins", "region=eu", 2).await,
        Some((3, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "pins", "region=eu", 3).await, None);

    // Failures change nothing and leave no audit entry.
    assert_code(svc.unpin("pins", None, "alice").await, ErrorCode::NotFound);
    assert_code(svc.pin("pins", None, 9, "alice").await, ErrorCode::NotFound);
    assert_code(
        svc.pin("ghost", None, 1, "alice").await,
        ErrorCode::NotFound,
    );
    assert_eq!(
        poll_now(&svc, "pins", "", 0).await,
        Some((3, Reason::Latest))
    );

    let audit = svc.store().audit("pins").await.unwrap();
    let trail: Vec<(&str, &str, Option<u64>, &str, i64)> = audit
        .iter()
        .map(|a| {
            (
                a.action.as_str(),
                a.actor.as_str(),
                a.version,
                if a.action == "publish" {
                    ""
                } else {
                    a.detail.as_str()
                },
                a.at_ms,
            )
        })
        .collect();
    assert_eq!(
        trail,
        vec![
            ("create_topic", "admin", None, "", T0),
            ("publish", "publisher", Some(1), "", T0),
            ("publish", "publisher", Some(2), "", T0),
            ("publish", "publisher", Some(3), "", T0),
            ("pin", "alice", Some(1), "topic", T0 + 1000),
            ("pin", "bob", Some(2), "region=eu", T0 + 2000),
            ("unpin", "alice", None, "topic", T0 + 3000),
            ("unpin", "bob", None, "region=eu", T0 + 4000),
        ]
    );
    assert!(audit.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        audit[1].detail.contains(&sha256(&[1])),
        "{}",
        audit[1].detail
    );
}

// ----------------------------------------------------------------------
// 3. Monotonicity

#[tokio::test]
async fn consumers_never_move_backwards_without_a_pin() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "mono").await;
    publish(&svc, "mono", &[], b"1").await;
    publish(&svc, "mono", &[], b"2").await;
    publish(&svc, "mono", &["cluster=canary"], b"3").await;

    assert_eq!(
        poll_now(&svc, "mono", "", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "mono", "", 2).await, None);
    // Holds 3 (e.g. it lost its canary label): 2 is older, so nothing.
    assert_eq!(poll_now(&svc, "mono", "", 3).await, None);
    // Holds a number the topic never had.
    assert_eq!(poll_now(&svc, "mono", "", 99).await, None);
    assert_eq!(poll_now(&svc, "mono", "cluster=canary", 3).await, None);
    assert_eq!(poll_now(&svc, "mono", "cluster=canary", 4).await, None);
    assert_eq!(
        poll_now(&svc, "mono", "cluster=canary", 2).await,
        Some((3, Reason::Latest))
    );

    // Newer news still arrives for the consumer holding 3.
    publish(&svc, "mono", &[], b"4").await;
    assert_eq!(
        poll_now(&svc, "mono", "", 3).await,
        Some((4, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "mono", "", 99).await, None);

    // A pin is the (only) way back; unpinning goes forward again.
    svc.pin("mono", None, 1, "ops").await.unwrap();
    assert_eq!(
        poll_now(&svc, "mono", "", 4).await,
        Some((1, Reason::Pinned))
    );
    assert_eq!(
        poll_now(&svc, "mono", "", 99).await,
        Some((1, Reason::Pinned))
    );
    svc.unpin("mono", None, "ops").await.unwrap();
    assert_eq!(
        poll_now(&svc, "mono", "", 1).await,
        Some((4, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "mono", "cluster=canary", 4).await, None);
}

// ----------------------------------------------------------------------
// 4. Rollouts

#[tokio::test]
async fn rollout_stages_follow_the_clock_and_pause_resume_fast_forward_abort() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "rollout").await;
    publish(&svc, "rollout", &[], b"one").await;
    publish_staged(&svc, "rollout", b"two").await;
    let plan = stages(&[
        ("cluster=canary", 0),
        ("region=us-east", 10 * MINUTE),
        ("*", HOUR),
    ]);

    for consumer in ["", "cluster=canary", "region=us-east"] {
        assert_eq!(
            poll_now(&svc, "rollout", consumer, 0).await,
            Some((1, Reason::Latest))
        );
    }
    let rollout = svc
        .start_rollout("rollout", 2, plan.clone(), "carol")
        .await
        .unwrap();
    assert_eq!(rollout.state, RolloutState::Running);
    assert_eq!(
        rollout.next_stage, 1,
        "the zero-delay stage applies at once"
    );
    assert_eq!(rollout.next_at_ms, Some(T0 + 10 * MINUTE));
    assert_eq!(
        poll_now(&svc, "rollout", "cluster=canary", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "rollout", "region=us-east", 1).await, None);
    assert_eq!(poll_now(&svc, "rollout", "", 1).await, None);
    assert_code(
        svc.start_rollout("rollout", 2, plan.clone(), "carol").await,
        ErrorCode::FailedPrecondition,
    );

    // One millisecond early: nothing.
    env.clock.advance(10 * MINUTE - 1);
    assert_eq!(svc.drive_rollouts().await.unwrap(), 0);
    assert_eq!(poll_now(&svc, "rollout", "region=us-east", 1).await, None);
    env.clock.advance(1);
    let waiter = park_poll(&svc, "rollout", "region=us-east", 1).await;
    assert_eq!(svc.drive_rollouts().await.unwrap(), 1);
    let answer = join(waiter).await.unwrap().expect("an answer");
    assert_eq!((answer.version, answer.reason), (2, Reason::Latest));
    assert_eq!(poll_now(&svc, "rollout", "", 1).await, None);
    let status = svc.rollout(rollout.id).await.unwrap();
    assert_eq!(
        (status.next_stage, status.state),
        (2, RolloutState::Running)
    );
    assert_eq!(status.next_at_ms, Some(T0 + 10 * MINUTE + HOUR));

    // Wrong-state transitions.
    let e = assert_code(
        svc.control_rollout(rollout.id, "resume", "carol").await,
        ErrorCode::FailedPrecondition,
    );
    assert!(e.message().contains("running"), "{}", e.message());
    assert_code(
        svc.control_rollout(rollout.id, "rewind", "carol").await,
        ErrorCode::InvalidArgument,
    );

    // Pause 20 min into the hour: time passing applies nothing.
    env.clock.advance(20 * MINUTE);
    let paused = svc
        .control_rollout(rollout.id, "pause", "carol")
        .await
        .unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.remaining_ms, Some(40 * MINUTE as u64));
    assert_eq!(paused.next_at_ms, None);
    assert_code(
        svc.control_rollout(rollout.id, "pause", "carol").await,
        ErrorCode::FailedPrecondition,
    );
    env.clock.advance(2 * HOUR);
    assert_eq!(svc.drive_rollouts().await.unwrap(), 0);
    assert_eq!(poll_now(&svc, "rollout", "", 1).await, None);

    // Resume: the remaining 40 min are honoured.
    let resumed = svc
        .control_rollout(rollout.id, "resume", "carol")
        .await
        .unwrap();
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.next_at_ms, Some(env.clock.now_ms() + 40 * MINUTE));
    assert_eq!(resumed.remaining_ms, None);
    env.clock.advance(40 * MINUTE - 1);
    assert_eq!(svc.drive_rollouts().await.unwrap(), 0);
    assert_eq!(poll_now(&svc, "rollout", "", 1).await, None);
    env.clock.advance(1);
    assert_eq!(svc.drive_rollouts().await.unwrap(), 1);
    assert_eq!(
        poll_now(&svc, "rollout", "", 1).await,
        Some((2, Reason::Latest))
    );
    let done = svc.rollout(rollout.id).await.unwrap();
    assert_eq!(
        (done.state, done.next_stage, done.next_at_ms),
        (RolloutState::Completed, 3, None)
    );
    let v2 = svc.version("rollout", 2).await.unwrap();
    assert_eq!(
        v2.scopes,
        scopes(&["cluster=canary", "region=us-east", "*"])
    );
    assert!(!v2.withdrawn);
    for action in ["abort", "pause", "resume", "fast_forward"] {
        assert_code(
            svc.control_rollout(rollout.id, action, "carol").await,
            ErrorCode::FailedPrecondition,
        );
    }

    // A second rollout: fast-forward, then abort half-way.
    publish_staged(&svc, "rollout", b"three").await;
    let second = svc
        .start_rollout("rollout", 3, plan.clone(), "carol")
        .await
        .unwrap();
    assert_eq!(
        poll_now(&svc, "rollout", "cluster=canary", 2).await,
        Some((3, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "rollout", "region=us-east", 2).await, None);
    let forwarded = svc
        .control_rollout(second.id, "fast_forward", "carol")
        .await
        .unwrap();
    assert_eq!(
        (forwarded.state, forwarded.next_stage),
        (RolloutState::Running, 2)
    );
    assert_eq!(forwarded.next_at_ms, Some(env.clock.now_ms() + HOUR));
    assert_eq!(
        poll_now(&svc, "rollout", "region=us-east", 2).await,
        Some((3, Reason::Latest))
    );
    assert_eq!(poll_now(&svc, "rollout", "", 2).await, None);

    let canary_waiter = park_poll(&svc, "rollout", "cluster=canary", 3).await;
    let aborted = svc
        .control_rollout(second.id, "abort", "carol")
        .await
        .unwrap();
    assert_eq!(
        (aborted.state, aborted.next_at_ms),
        (RolloutState::Aborted, None)
    );
    let answer = join(canary_waiter).await.unwrap().expect("an answer");
    assert_eq!((answer.version, answer.reason), (2, Reason::Rollback));
    assert_eq!(
        poll_now(&svc, "rollout", "region=us-east", 3).await,
        Some((2, Reason::Rollback))
    );
    assert_eq!(poll_now(&svc, "rollout", "region=us-east", 2).await, None);
    assert_eq!(
        poll_now(&svc, "rollout", "", 2).await,
        None,
        "never saw 3: stays"
    );
    assert_eq!(
        poll_now(&svc, "rollout", "cluster=canary", 0).await,
        Some((2, Reason::Latest))
    );
    let v3 = svc
        .store()
        .get_version("rollout", 3)
        .await
        .unwrap()
        .unwrap();
    assert!(v3.withdrawn);
    assert!(v3.scopes.is_empty(), "{:?}", v3.scopes);

    // An aborted rollout never moves again.
    env.clock.advance(2 * HOUR);
    assert_eq!(svc.drive_rollouts().await.unwrap(), 0);
    assert_eq!(poll_now(&svc, "rollout", "", 2).await, None);
    for action in ["abort", "resume", "fast_forward"] {
        assert_code(
            svc.control_rollout(second.id, action, "carol").await,
            ErrorCode::FailedPrecondition,
        );
    }
    assert_code(svc.rollout(999).await, ErrorCode::NotFound);
    let e = assert_code(
        svc.start_rollout("rollout", 2, Vec::new(), "carol").await,
        ErrorCode::InvalidArgument,
    );
    assert!(e.message().starts_with("stages:"), "{}", e.message());

    let audit = svc.store().audit("rollout").await.unwrap();
    let actions: Vec<(&str, &str, Option<u64>)> = audit
        .iter()
        .filter(|a| a.action.starts_with("rollout_"))
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.version))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("rollout_start", "carol", Some(2)),
            ("rollout_stage", "system", Some(2)),
            ("rollout_stage", "system", Some(2)),
            ("rollout_pause", "carol", Some(2)),
            ("rollout_resume", "carol", Some(2)),
            ("rollout_stage", "system", Some(2)),
            ("rollout_start", "carol", Some(3)),
            ("rollout_stage", "system", Some(3)),
            ("rollout_stage", "carol", Some(3)),
            ("rollout_abort", "carol", Some(3)),
        ]
    );
}

// ----------------------------------------------------------------------
// 5. Restart

#[tokio::test]
async fn a_rollout_continues_after_a_restart() {
    let env = Env::new();
    let first = env.service().await;
    create(&first, "restart").await;
    publish(&first, "restart", &[], b"inline one").await;
    let v2 = publish_staged(&first, "restart", &payload(5, 5000)).await;
    assert!(matches!(v2.location, DataLocation::Blob(_)));
    let rollout = first
        .start_rollout(
            "restart",
            2,
            stages(&[
                ("cluster=canary", 0),
                ("region=us-east", 10 * MINUTE),
                ("*", HOUR),
            ]),
            "carol",
        )
        .await
        .unwrap();
    assert_eq!(
        poll_now(&first, "restart", "cluster=canary", 1).await,
        Some((2, Reason::Latest))
    );
    drop(first);

    env.clock.advance(MINUTE);
    let second = env.service().await;
    let status = second.rollout(rollout.id).await.unwrap();
    assert_eq!(
        (status.state, status.next_stage),
        (RolloutState::Running, 1)
    );
    assert_eq!(status.next_at_ms, Some(T0 + 10 * MINUTE));
    // The blob is verified by the new process before it is handed out.
    assert_eq!(
        poll_waiting(&second, "restart", "cluster=canary", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(second.drive_rollouts().await.unwrap(), 0, "not due yet");
    assert_eq!(
        poll_now(&second, "restart", "region=us-east", 1).await,
        None
    );

    env.clock.set(T0 + 10 * MINUTE);
    assert_eq!(second.drive_rollouts().await.unwrap(), 1);
    assert_eq!(
        poll_now(&second, "restart", "region=us-east", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(poll_now(&second, "restart", "", 1).await, None);
    let status = second.rollout(rollout.id).await.unwrap();
    assert_eq!(
        (status.state, status.next_stage),
        (RolloutState::Running, 2)
    );
    assert_eq!(status.next_at_ms, Some(T0 + 10 * MINUTE + HOUR));
    assert_eq!(second.list_rollouts("restart").await.unwrap().len(), 1);

    // Once more, down across the last stage's due time.
    drop(second);
    env.clock.advance(HOUR + MINUTE);
    let third = env.service().await;
    assert_eq!(third.drive_rollouts().await.unwrap(), 1);
    let status = third.rollout(rollout.id).await.unwrap();
    assert_eq!(
        (status.state, status.next_stage),
        (RolloutState::Completed, 3)
    );
    assert_eq!(
        poll_waiting(&third, "restart", "", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(read(&third, "restart", 2, None).await, payload(5, 5000));
}

// ----------------------------------------------------------------------
// 6. Long-poll

#[tokio::test]
async fn long_poll_is_woken_by_publish_times_out_and_sees_deletion() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "poll").await;
    publish(&svc, "poll", &[], b"one").await;

    let waiter = park_poll(&svc, "poll", "", 1).await;
    publish(&svc, "poll", &[], b"two").await;
    let answer = join(waiter)
        .await
        .unwrap()
        .expect("woken with the new version");
    assert_eq!((answer.version, answer.reason), (2, Reason::Latest));
    let json: serde_json::Value = serde_json::from_slice(&answer.json).unwrap();
    assert_eq!(
        (json["topic"].as_str(), json["version"].as_u64()),
        (Some("poll"), Some(2))
    );

    // Nothing new: the wait runs out.
    let none = svc
        .latest("poll", &labels(""), 2, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_none());

    // `wait` is bounded by max_wait.
    let max_wait = svc.config().max_wait;
    let e = assert_code(
        svc.latest("poll", &labels(""), 1, max_wait + Duration::from_millis(1))
            .await,
        ErrorCode::InvalidArgument,
    );
    assert!(e.message().starts_with("wait:"), "{}", e.message());
    let at_max = svc.latest("poll", &labels(""), 1, max_wait).await.unwrap();
    assert_eq!(at_max.map(|a| a.version), Some(2));

    // Deleting the topic answers its waiting consumers with NotFound.
    let waiter = park_poll(&svc, "poll", "", 2).await;
    let other = park_poll(&svc, "poll", "region=eu", 2).await;
    svc.delete_topic("poll", "admin").await.unwrap();
    assert_code(join(waiter).await, ErrorCode::NotFound);
    assert_code(join(other).await, ErrorCode::NotFound);
    assert_code(
        svc.latest("poll", &labels(""), 2, Duration::ZERO).await,
        ErrorCode::NotFound,
    );
}

// ----------------------------------------------------------------------
// 7. Coalescing

#[tokio::test]
async fn identical_waiting_polls_share_one_group_and_one_resolution() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "hot").await;
    publish(&svc, "hot", &[], b"one").await;
    let groups_before = svc.stats.poll_groups_created.load(Ordering::SeqCst);
    let resolutions_before = svc.stats.poll_resolutions.load(Ordering::SeqCst);

    let same: Vec<Waiter> = (0..200).map(|_| spawn_poll(&svc, "hot", "", 1)).collect();
    let others: Vec<Waiter> = (0..50)
        .map(|_| spawn_poll(&svc, "hot", "region=eu", 1))
        .collect();
    until("both poll groups to evaluate once", || {
        svc.stats.poll_groups_created.load(Ordering::SeqCst) >= groups_before + 2
            && svc.stats.poll_resolutions.load(Ordering::SeqCst) >= resolutions_before + 2
    })
    .await;
    assert!(same.iter().chain(&others).all(|w| !w.is_finished()));

    publish(&svc, "hot", &[], b"two").await;
    let mut same_answers = Vec::new();
    for waiter in same {
        same_answers.push(join(waiter).await.unwrap().expect("an answer"));
    }
    let mut other_answers = Vec::new();
    for waiter in others {
        other_answers.push(join(waiter).await.unwrap().expect("an answer"));
    }
    for answer in same_answers.iter().chain(&other_answers) {
        assert_eq!((answer.version, answer.reason), (2, Reason::Latest));
    }
    // One answer, serialized once, per group.
    assert!(same_answers
        .iter()
        .all(|a| Arc::ptr_eq(a, &same_answers[0])));
    assert!(other_answers
        .iter()
        .all(|a| Arc::ptr_eq(a, &other_answers[0])));

    let groups = svc.stats.poll_groups_created.load(Ordering::SeqCst) - groups_before;
    let resolutions = svc.stats.poll_resolutions.load(Ordering::SeqCst) - resolutions_before;
    assert_eq!(
        groups, 2,
        "one poll group per distinct (topic, labels, after)"
    );
    assert!(
        (2..=6).contains(&resolutions),
        "{resolutions} resolutions for 250 polls in 2 groups: expected one or two per group"
    );
}

// ----------------------------------------------------------------------
// 8. Payloads

#[tokio::test]
async fn payloads_inline_and_in_blobs_read_back_whole_and_ranged() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "data").await;

    let empty = publish(&svc, "data", &[], b"").await;
    assert_eq!((empty.size, &empty.location), (0, &DataLocation::Inline));
    assert_eq!(empty.checksum, sha256(b""));
    assert!(read(&svc, "data", 1, None).await.is_empty());

    let small = payload(1, 1000);
    let v2 = publish(&svc, "data", &[], &small).await;
    assert_eq!(
        (v2.version, v2.size, &v2.location),
        (2, 1000, &DataLocation::Inline)
    );
    assert_eq!(v2.checksum, sha256(&small));

    let at_limit = payload(2, INLINE_MAX as usize);
    let v3 = publish(&svc, "data", &[], &at_limit).await;
    assert_eq!(
        v3.location,
        DataLocation::Inline,
        "exactly inline_max_bytes stays inline"
    );
    let over_limit = payload(3, INLINE_MAX as usize + 1);
    let v4 = publish(&svc, "data", &[], &over_limit).await;
    assert!(
        matches!(v4.location, DataLocation::Blob(_)),
        "one byte over goes to a blob"
    );

    let big = payload(4, 3 * 1024 * 1024 + 12_345);
    let v5 = publish(&svc, "data", &[], &big).await;
    assert_eq!((v5.version, v5.size), (5, big.len() as u64));
    assert_eq!(v5.checksum, sha256(&big));
    let key = blob_key(&v5);
    // Unencrypted: the key is the content's own hash.
    let hex = sha256(&big)["sha256:".len()..].to_string();
    assert_eq!(key, format!("sha256/{}/{hex}", &hex[..2]));
    assert_eq!(
        std::fs::metadata(env.blob_file(&key)).unwrap().len(),
        big.len() as u64
    );

    assert_eq!(read(&svc, "data", 2, None).await, small);
    assert_eq!(read(&svc, "data", 3, None).await, at_limit);
    assert_eq!(read(&svc, "data", 4, None).await, over_limit);
    assert_eq!(read(&svc, "data", 5, None).await, big);
    assert_eq!(read(&svc, "data", 2, Some(10..20)).await, small[10..20]);
    assert_eq!(read(&svc, "data", 2, Some(999..1000)).await, small[999..]);
    let len = big.len() as u64;
    for range in [
        0..1,
        1..2_000_000,
        65_000..70_000,
        len - 1..len,
        262_143..262_145,
        len..len,
    ] {
        assert_eq!(
            read(&svc, "data", 5, Some(range.clone())).await,
            big[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }

    // Metadata-only publish: a new version sharing the blob.
    let v6 = publish_existing(&svc, "data", &v5.checksum).await.unwrap();
    assert_eq!(v6.version, 6);
    assert_eq!(v6.location, DataLocation::Blob(key.clone()));
    assert_eq!(
        (v6.size, v6.checksum.clone()),
        (v5.size, v5.checksum.clone())
    );
    assert_eq!(v6.scopes, vec![Scope::global()]);
    assert_eq!(
        poll_waiting(&svc, "data", "", 5).await,
        Some((6, Reason::Latest))
    );
    assert_eq!(
        read(&svc, "data", 6, Some(len - 10..len)).await,
        big[big.len() - 10..]
    );
    // Uppercase hex names the same content; inline payloads are copied.
    let upper = format!("sha256:{}", small_hex(&small).to_ascii_uppercase());
    let v7 = publish_existing(&svc, "data", &upper).await.unwrap();
    assert_eq!(
        (v7.location.clone(), v7.checksum.clone()),
        (DataLocation::Inline, sha256(&small))
    );
    assert_eq!(read(&svc, "data", 7, None).await, small);

    let bad_checksums = [
        String::new(),
        "sha256:".into(),
        "md5:0123".into(),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        small_hex(&small),
    ];
    for bad in &bad_checksums {
        let e = assert_code(
            publish_existing(&svc, "data", bad).await,
            ErrorCode::InvalidArgument,
        );
        assert!(
            e.message().starts_with("checksum:"),
            "{bad:?}: {}",
            e.message()
        );
    }
    let e = assert_code(
        publish_existing(&svc, "data", &sha256(b"never published")).await,
        ErrorCode::NotFound,
    );
    assert!(e.message().starts_with("checksum:"), "{}", e.message());
    assert_code(
        publish_existing(&svc, "ghost", &v5.checksum).await,
        ErrorCode::NotFound,
    );
    assert_code(svc.open_data("data", 99, None).await, ErrorCode::NotFound);
    assert_eq!(
        version_numbers(&svc, "data").await,
        (1..=7).rev().collect::<Vec<_>>()
    );
}

fn small_hex(bytes: &[u8]) -> String {
    sha256(bytes)["sha256:".len()..].to_string()
}

// ----------------------------------------------------------------------
// 9. Consistency check across processes

#[tokio::test]
async fn another_process_hands_out_blob_versions_only_after_verifying_them() {
    let env = Env::new();
    let publisher = env.service().await;
    create(&publisher, "shared").await;
    publish(&publisher, "shared", &[], b"first, inline").await;
    let consumer = env.service().await;
    assert_eq!(
        poll_now(&consumer, "shared", "", 0).await,
        Some((1, Reason::Latest))
    );

    // A good blob: held back until verified, then handed out.
    let good = payload(6, 200_000);
    let v2 = publish(&publisher, "shared", &[], &good).await;
    assert_eq!(
        poll_now(&consumer, "shared", "", 1).await,
        None,
        "not refreshed yet"
    );
    consumer.refresh().await.unwrap();
    // The verification is spawned on this (single-threaded) runtime and has
    // not run yet: the version is committed but held back.
    assert_eq!(consumer.cached_topic("shared").unwrap().hidden, vec![2]);
    assert_eq!(poll_now(&consumer, "shared", "", 1).await, None);
    assert_eq!(
        poll_waiting(&consumer, "shared", "", 1).await,
        Some((2, Reason::Latest))
    );
    assert!(consumer.cached_topic("shared").unwrap().hidden.is_empty());
    assert_eq!(read(&consumer, "shared", 2, None).await, good);

    // A blob corrupted before the consumer first sees it: never handed out.
    let bad = payload(7, 200_000);
    let v3 = publish(&publisher, "shared", &[], &bad).await;
    let path = env.blob_file(&blob_key(&v3));
    let mut stored = std::fs::read(&path).unwrap();
    stored[100_000] ^= 0xff;
    std::fs::write(&path, &stored).unwrap();
    let blobs = ObjectBlobStore::local(&env.blob_dir()).unwrap();
    assert_code(
        blobs
            .verify(&blob_key(&v3), None, v3.size, &v3.checksum)
            .await,
        ErrorCode::DataLoss,
    );
    consumer.refresh().await.unwrap();
    assert_eq!(consumer.cached_topic("shared").unwrap().hidden, vec![3]);
    // Long enough for a 200 KB verification to finish many times over.
    let waited = consumer
        .latest("shared", &labels(""), 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        waited.is_none(),
        "a corrupt version was handed out: {waited:?}"
    );
    consumer.refresh().await.unwrap();
    assert_eq!(consumer.cached_topic("shared").unwrap().hidden, vec![3]);
    assert_eq!(
        poll_now(&consumer, "shared", "", 0).await,
        Some((2, Reason::Latest))
    );
    assert_code(
        consumer.open_data("shared", 3, None).await,
        ErrorCode::Unavailable,
    );

    // A later good version is not blocked by the bad one.
    let v4 = publish(&publisher, "shared", &[], &payload(8, 3000)).await;
    consumer.refresh().await.unwrap();
    assert_eq!(
        poll_waiting(&consumer, "shared", "", 2).await,
        Some((v4.version, Reason::Latest))
    );
    assert_eq!(consumer.cached_topic("shared").unwrap().hidden, vec![3]);
    assert_eq!(v2.version, 2);
}

// ----------------------------------------------------------------------
// 10. Janitor

#[tokio::test]
async fn janitor_applies_retention_count_but_keeps_pinned_versions() {
    let env = Env::new();
    let svc = env.service().await;
    create_with(
        &svc,
        CreateTopic {
            name: "jc".into(),
            retention_count: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for n in 1..=5u64 {
        let v = publish(&svc, "jc", &[], &payload(100 + n, 2000 + n as usize)).await;
        assert_eq!(v.version, n);
        keys.push(blob_key(&v));
    }
    svc.pin("jc", None, 1, "ops").await.unwrap();

    env.clock.advance(DAY);
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("jc", &[3, 2]));
    assert_eq!(
        sorted(report.deleted_blobs),
        sorted(vec![keys[1].clone(), keys[2].clone()])
    );
    for (i, key) in keys.iter().enumerate() {
        let kept = [0, 3, 4].contains(&i);
        assert_eq!(
            env.blob_file(key).exists(),
            kept,
            "blob of version {}",
            i + 1
        );
    }
    assert_eq!(version_numbers(&svc, "jc").await, vec![5, 4, 1]);
    assert_eq!(read(&svc, "jc", 1, None).await, payload(101, 2001));
    assert_eq!(poll_now(&svc, "jc", "", 5).await, Some((1, Reason::Pinned)));
    assert_eq!(svc.run_janitor().await.unwrap(), JanitorReport::default());

    let expiries: Vec<_> = svc
        .store()
        .audit("jc")
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "expire")
        .map(|a| (a.actor, a.detail, a.at_ms))
        .collect();
    assert_eq!(
        expiries,
        vec![(
            "janitor".to_string(),
            "retention: versions 3,2".to_string(),
            T0 + DAY
        )]
    );

    // Unpinned, version 1 is beyond the count too.
    svc.unpin("jc", None, "ops").await.unwrap();
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("jc", &[1]));
    assert_eq!(report.deleted_blobs, vec![keys[0].clone()]);
    assert!(!env.blob_file(&keys[0]).exists());
    assert_eq!(version_numbers(&svc, "jc").await, vec![5, 4]);
    assert_eq!(poll_now(&svc, "jc", "", 1).await, Some((5, Reason::Latest)));
}

#[tokio::test]
async fn janitor_keeps_a_shared_blob_while_any_version_references_it() {
    let env = Env::new();
    let svc = env.service().await;
    create_with(
        &svc,
        CreateTopic {
            name: "js".into(),
            retention_count: Some(1),
            ..Default::default()
        },
    )
    .await;
    create(&svc, "keeper").await;
    let a = payload(200, 4000);
    let v1 = publish(&svc, "js", &[], &a).await;
    let shared_key = blob_key(&v1);
    let v2 = publish_existing(&svc, "js", &v1.checksum).await.unwrap();
    assert_eq!(v2.location, DataLocation::Blob(shared_key.clone()));

    env.clock.advance(HOUR);
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("js", &[1]));
    assert!(
        report.deleted_blobs.is_empty(),
        "{:?}",
        report.deleted_blobs
    );
    assert!(env.blob_file(&shared_key).exists());
    assert_eq!(
        poll_waiting(&svc, "js", "", 0).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(read(&svc, "js", 2, None).await, a);

    // Another topic publishes the same content: the same object.
    let c = payload(201, 4000);
    let kept = publish(&svc, "keeper", &[], &c).await;
    let v3 = publish(&svc, "js", &[], &c).await;
    assert_eq!(v3.location, kept.location);
    let v4 = publish(&svc, "js", &[], &payload(202, 4000)).await;
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("js", &[3, 2]));
    assert_eq!(report.deleted_blobs, vec![shared_key.clone()]);
    assert!(!env.blob_file(&shared_key).exists());
    assert!(
        env.blob_file(&blob_key(&kept)).exists(),
        "still referenced by topic keeper"
    );
    assert!(env.blob_file(&blob_key(&v4)).exists());
    assert_eq!(read(&svc, "keeper", 1, None).await, c);
}

#[tokio::test]
async fn janitor_applies_retention_age_but_keeps_the_newest() {
    let env = Env::new();
    let svc = env.service().await;
    create_with(
        &svc,
        CreateTopic {
            name: "ja".into(),
            retention_age_ms: Some(HOUR as u64),
            ..Default::default()
        },
    )
    .await;
    let v1 = publish(&svc, "ja", &[], &payload(300, 2000)).await; // T0
    env.clock.set(T0 + 90 * MINUTE);
    let v2 = publish(&svc, "ja", &[], &payload(301, 2000)).await;
    env.clock.set(T0 + 100 * MINUTE);
    let v3 = publish(&svc, "ja", &[], &payload(302, 2000)).await;

    env.clock.set(T0 + 120 * MINUTE);
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("ja", &[1]));
    assert_eq!(report.deleted_blobs, vec![blob_key(&v1)]);
    assert!(!env.blob_file(&blob_key(&v1)).exists());

    // Exactly as old as the limit is not older than it.
    env.clock.set(T0 + 150 * MINUTE);
    assert_eq!(svc.run_janitor().await.unwrap(), JanitorReport::default());
    env.clock.set(T0 + 150 * MINUTE + 1);
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.expired_versions, expired("ja", &[2]));
    assert_eq!(report.deleted_blobs, vec![blob_key(&v2)]);

    // The newest version of its audience outlives any age.
    env.clock.set(T0 + 1000 * DAY);
    assert_eq!(svc.run_janitor().await.unwrap(), JanitorReport::default());
    assert_eq!(version_numbers(&svc, "ja").await, vec![3]);
    assert!(env.blob_file(&blob_key(&v3)).exists());
}

#[tokio::test]
async fn janitor_deletes_orphan_blobs_only_after_the_grace_period() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "live").await;
    let live = publish(&svc, "live", &[], &payload(400, 3000)).await;
    let blobs = ObjectBlobStore::local(&env.blob_dir()).unwrap();
    let orphan = blobs
        .put(
            Bytes::from(payload(401, 3000)),
            stream::empty().boxed(),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(env.blob_file(&orphan.key).exists());
    let listed = blobs.list().await.unwrap();
    let modified_ms = listed
        .iter()
        .find(|b| b.key == orphan.key)
        .expect("the orphan is listed")
        .modified_ms;
    let grace = svc.config().orphan_grace_ms;

    // Grace is measured on the service's clock against the blob's mtime.
    env.clock.set(modified_ms + grace);
    assert_eq!(svc.run_janitor().await.unwrap(), JanitorReport::default());
    assert!(env.blob_file(&orphan.key).exists());
    env.clock.set(modified_ms + grace + 1);
    let report = svc.run_janitor().await.unwrap();
    assert_eq!(report.deleted_blobs, vec![orphan.key.clone()]);
    assert!(report.expired_versions.is_empty());
    assert!(!env.blob_file(&orphan.key).exists());

    // A referenced blob is never an orphan.
    env.clock.set(modified_ms + 100 * grace);
    assert_eq!(svc.run_janitor().await.unwrap(), JanitorReport::default());
    assert!(env.blob_file(&blob_key(&live)).exists());
}

// ----------------------------------------------------------------------
// 11. Encryption at rest

/// 32 distinctive bytes; payloads repeat them.
const MARKER: &[u8; 32] = b"<riffle plaintext marker 9f3a17>";

/// Every file under `dir` (recursively) that contains [`MARKER`].
fn files_containing_marker(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(MARKER.len())
                .any(|w| w == MARKER)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn encrypted_topics_store_no_plaintext_and_need_the_master_key() {
    let inline_plain = MARKER.repeat(20);
    let blob_plain = MARKER.repeat(8 * 1024);

    // Control: unencrypted, the scan finds the marker in the blob file.
    let control = Env::new();
    let plain_svc = control.service().await;
    create(&plain_svc, "plain").await;
    let plain_blob = publish(&plain_svc, "plain", &[], &blob_plain).await;
    assert!(files_containing_marker(control.dir.path())
        .contains(&control.blob_file(&blob_key(&plain_blob))));

    let env = Env::new();
    let svc = env.service().await;
    create_with(
        &svc,
        CreateTopic {
            name: "secret".into(),
            encrypted: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(svc.is_encrypted("secret").await.unwrap(), Some(true));
    assert_eq!(svc.is_encrypted("no-such-topic").await.unwrap(), None);
    assert!(svc.get_topic("secret").await.unwrap().wrapped_key.is_some());
    let vi = publish(&svc, "secret", &[], &inline_plain).await;
    assert_eq!(vi.location, DataLocation::Inline);
    assert_eq!(
        (vi.size, vi.checksum.clone()),
        (inline_plain.len() as u64, sha256(&inline_plain))
    );
    let vb = publish(&svc, "secret", &[], &blob_plain).await;
    let key = blob_key(&vb);
    assert_eq!(
        (vb.size, vb.checksum.clone()),
        (blob_plain.len() as u64, sha256(&blob_plain))
    );
    assert_ne!(
        key,
        blob_key(&plain_blob),
        "ciphertext is addressed by its own hash"
    );
    assert_eq!(
        std::fs::metadata(env.blob_file(&key)).unwrap().len(),
        crypto::encrypted_len(blob_plain.len() as u64)
    );

    let leaks = files_containing_marker(env.dir.path());
    assert!(leaks.is_empty(), "plaintext found on disk in {leaks:?}");
    assert!(env.dir.path().join("metadata.db").exists());

    assert_eq!(read(&svc, "secret", 1, None).await, inline_plain);
    assert_eq!(
        read(&svc, "secret", 1, Some(30..70)).await,
        inline_plain[30..70]
    );
    assert_eq!(read(&svc, "secret", 2, None).await, blob_plain);
    assert_eq!(
        read(&svc, "secret", 2, Some(65_530..65_560)).await,
        blob_plain[65_530..65_560]
    );

    // Same files, same master key (a restart): readable.
    let restarted = env.service().await;
    assert_eq!(read(&restarted, "secret", 1, None).await, inline_plain);
    assert_eq!(
        poll_waiting(&restarted, "secret", "", 1).await,
        Some((2, Reason::Latest))
    );
    assert_eq!(read(&restarted, "secret", 2, None).await, blob_plain);

    // Same files, another master key: nothing decrypts.
    let elsewhere = tempfile::tempdir().unwrap();
    let intruder = env
        .service_with_key(&elsewhere.path().join("master.key"))
        .await;
    assert_code(
        intruder.open_data("secret", 1, None).await,
        ErrorCode::DataLoss,
    );
    let e = intruder
        .open_data("secret", 2, None)
        .await
        .err()
        .expect("a blob under another master key is unreadable");
    assert!(
        matches!(e.code(), ErrorCode::DataLoss | ErrorCode::Unavailable),
        "{:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(
        poll_now(&intruder, "secret", "", 1).await,
        None,
        "the blob version is never verified"
    );
}

// ----------------------------------------------------------------------
// 12. Concurrent publishers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_every_version_number_exactly_once() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "busy").await;
    let body_of = |writer: u64, i: u64| -> Vec<u8> {
        // Every fourth publish is a blob.
        let len = if i.is_multiple_of(4) { 1500 } else { 40 };
        payload(writer * 1000 + i, len)
    };
    let tasks: Vec<JoinHandle<Vec<Version>>> = (0..4u64)
        .map(|writer| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut published = Vec::new();
                for i in 0..10u64 {
                    let metadata = BTreeMap::from([
                        ("writer".to_string(), writer.to_string()),
                        ("seq".to_string(), i.to_string()),
                    ]);
                    let version = svc
                        .publish(
                            "busy",
                            PublishRequest {
                                metadata,
                                ..Default::default()
                            },
                            uneven(&body_of(writer, i)),
                            &format!("writer-{writer}"),
                        )
                        .await
                        .expect("publish succeeds");
                    published.push(version);
                }
                published
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        let published = timeout(DEADLINE * 3, task).await.unwrap().unwrap();
        let own: Vec<u64> = published.iter().map(|v| v.version).collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "one writer's versions increase: {own:?}"
        );
        numbers.extend(own);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());

    let stored = svc.list_versions("busy").await.unwrap();
    assert_eq!(stored.len(), 40);
    for version in &stored {
        let writer: u64 = version.metadata["writer"].parse().unwrap();
        let seq: u64 = version.metadata["seq"].parse().unwrap();
        assert_eq!(version.created_by, format!("writer-{writer}"));
        assert_eq!(
            read(&svc, "busy", version.version, None).await,
            body_of(writer, seq),
            "version {}",
            version.version
        );
    }
    let publishes = svc
        .store()
        .audit("busy")
        .await
        .unwrap()
        .iter()
        .filter(|a| a.action == "publish")
        .count();
    assert_eq!(publishes, 40);
    assert_eq!(
        poll_now(&svc, "busy", "", 0).await,
        Some((40, Reason::Latest))
    );
}

// ----------------------------------------------------------------------
// 13. Unused topics

#[tokio::test]
async fn unused_topics_lists_only_topics_idle_for_the_period() {
    let env = Env::new();
    let svc = env.service().await;
    for name in ["idle", "published", "consumed"] {
        create(&svc, name).await;
        publish(&svc, name, &[], name.as_bytes()).await;
    }
    let names = |topics: Vec<riffle_datasets::model::Topic>| -> Vec<String> {
        topics.into_iter().map(|t| t.name).collect()
    };
    let period = 30 * DAY as u64;
    assert!(svc.unused_topics(period).await.unwrap().is_empty());

    env.clock.set(T0 + 30 * DAY);
    publish(&svc, "published", &[], b"again").await;
    assert_eq!(
        poll_now(&svc, "consumed", "", 0).await,
        Some((1, Reason::Latest))
    );
    create(&svc, "created").await;
    // Exactly 30 days idle is not more than 30 days.
    assert!(svc.unused_topics(period).await.unwrap().is_empty());

    env.clock.set(T0 + 30 * DAY + 1);
    assert_eq!(
        names(svc.unused_topics(period).await.unwrap()),
        vec!["idle"]
    );
    let consumed = svc.get_topic("consumed").await.unwrap();
    assert_eq!(consumed.last_consumed_at_ms, Some(T0 + 30 * DAY));

    // Reading data counts as consuming.
    read(&svc, "idle", 1, None).await;
    assert!(svc.unused_topics(period).await.unwrap().is_empty());

    env.clock.set(T0 + 61 * DAY);
    assert_eq!(
        names(svc.unused_topics(period).await.unwrap()),
        vec!["consumed", "created", "idle", "published"]
    );
}

// ----------------------------------------------------------------------
// Findings

/// An aborted rollout's version is withdrawn so that consumers holding it
/// are moved back. Once retention deletes the withdrawn version, a
/// consumer that still holds it (it was offline during the abort) is never
/// moved back.
#[tokio::test]
async fn a_consumer_holding_a_withdrawn_version_is_moved_back_after_it_expired() {
    let env = Env::new();
    let svc = env.service().await;
    create_with(
        &svc,
        CreateTopic {
            name: "w".into(),
            retention_age_ms: Some(HOUR as u64),
            ..Default::default()
        },
    )
    .await;
    publish(&svc, "w", &[], b"good").await;
    publish_staged(&svc, "w", b"bad").await;
    let rollout = svc
        .start_rollout(
            "w",
            2,
            stages(&[("cluster=canary", 0), ("*", HOUR)]),
            "carol",
        )
        .await
        .unwrap();
    assert_eq!(
        poll_now(&svc, "w", "cluster=canary", 1).await,
        Some((2, Reason::Latest))
    );
    svc.control_rollout(rollout.id, "abort", "carol")
        .await
        .unwrap();
    assert_eq!(
        poll_now(&svc, "w", "cluster=canary", 2).await,
        Some((1, Reason::Rollback))
    );

    // Version 2 is past retention_age; today the janitor expires it (a fix
    // may instead keep it as a tombstone: either way, the consumer below
    // must be moved back).
    env.clock.advance(2 * HOUR);
    svc.run_janitor().await.unwrap();
    assert_eq!(
        poll_now(&svc, "w", "cluster=canary", 2).await,
        Some((1, Reason::Rollback)),
        "a consumer still holding the withdrawn version 2 is stranded on it"
    );
}

/// `latest_at` answers history: pins (whose history is not kept) do not
/// apply, versions created after the time do not count.
#[tokio::test]
async fn latest_at_answers_history_without_pins() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "at").await;
    publish(&svc, "at", &[], b"1").await;
    publish(&svc, "at", &[], b"2").await;
    svc.pin("at", None, 1, "ops").await.unwrap();
    assert_eq!(poll_now(&svc, "at", "", 0).await, Some((1, Reason::Pinned)));
    let answer = svc.latest_at("at", &labels(""), T0).unwrap().unwrap();
    assert_eq!((answer.version, answer.reason), (2, Reason::Latest));
}

#[tokio::test]
async fn a_withdrawn_version_cannot_be_rolled_out_again() {
    let env = Env::new();
    let svc = env.service().await;
    create(&svc, "again").await;
    publish(&svc, "again", &[], b"1").await;
    publish_staged(&svc, "again", b"2").await;
    let plan = stages(&[("cluster=canary", 0), ("*", HOUR)]);
    let first = svc
        .start_rollout("again", 2, plan.clone(), "carol")
        .await
        .unwrap();
    svc.control_rollout(first.id, "abort", "carol")
        .await
        .unwrap();
    assert_code(
        svc.start_rollout("again", 2, plan, "carol").await,
        ErrorCode::FailedPrecondition,
    );
}

/// Topic generations restart at 1 when a topic is deleted and created
/// again, so another process whose cache saw the old incarnation at the
/// same generation keeps serving the old versions.
#[tokio::test]
async fn another_process_sees_a_recreated_topic_with_the_same_generation() {
    let env = Env::new();
    let publisher = env.service().await;
    create(&publisher, "reborn").await;
    publish(&publisher, "reborn", &[], b"old incarnation").await;
    let consumer = env.service().await;
    assert_eq!(
        consumer.cached_topic("reborn").unwrap().versions[0].checksum,
        sha256(b"old incarnation")
    );

    env.clock.advance(MINUTE);
    publisher.delete_topic("reborn", "admin").await.unwrap();
    create(&publisher, "reborn").await;
    publish(&publisher, "reborn", &[], b"new incarnation").await;
    consumer.refresh().await.unwrap();
    let view = consumer.cached_topic("reborn").unwrap();
    assert_eq!(
        (view.topic.created_at_ms, view.versions[0].checksum.clone()),
        (T0 + MINUTE, sha256(b"new incarnation")),
        "the consumer process still serves the deleted incarnation"
    );
}

/// The set of verified blob versions is keyed by (topic, version) and only
/// cleared by a delete made in the same process: after another process
/// deletes and re-creates a topic, its new version 1 is taken as verified
/// without checking its blob.
#[tokio::test]
async fn a_recreated_topics_blob_versions_are_verified_again() {
    let env = Env::new();
    let publisher = env.service().await;
    create(&publisher, "reborn").await;
    publish(&publisher, "reborn", &[], &payload(500, 5000)).await;
    let consumer = env.service().await;
    assert_eq!(
        poll_waiting(&consumer, "reborn", "", 0).await,
        Some((1, Reason::Latest))
    );

    publisher.delete_topic("reborn", "admin").await.unwrap();
    consumer.refresh().await.unwrap();
    assert_code(consumer.cached_topic("reborn"), ErrorCode::NotFound);
    create(&publisher, "reborn").await;
    let v1 = publish(&publisher, "reborn", &[], &payload(501, 5000)).await;
    let path = env.blob_file(&blob_key(&v1));
    let mut stored = std::fs::read(&path).unwrap();
    stored[10] ^= 0xff;
    std::fs::write(&path, &stored).unwrap();
    consumer.refresh().await.unwrap();
    assert_eq!(
        consumer.cached_topic("reborn").unwrap().hidden,
        vec![1],
        "a corrupt blob of the new incarnation skipped the consistency check"
    );
}

/// The unwrapped topic keys are cached by topic name and only dropped by a
/// create or delete made in the same process: after another process
/// re-creates an encrypted topic (with a new data key), this process
/// cannot decrypt its payloads.
#[tokio::test]
async fn a_recreated_encrypted_topic_is_readable_by_another_process() {
    let env = Env::new();
    let encrypted = || CreateTopic {
        name: "vault".into(),
        encrypted: true,
        ..Default::default()
    };
    let publisher = env.service().await;
    create_with(&publisher, encrypted()).await;
    publish(&publisher, "vault", &[], b"old secret").await;
    let consumer = env.service().await;
    assert_eq!(read(&consumer, "vault", 1, None).await, b"old secret");

    publisher.delete_topic("vault", "admin").await.unwrap();
    create_with(&publisher, encrypted()).await;
    publish(&publisher, "vault", &[], b"new secret").await;
    publish(&publisher, "vault", &[], b"newer secret").await;
    consumer.refresh().await.unwrap();
    let data = consumer.open_data("vault", 2, None).await;
    let Ok(data) = data else {
        panic!(
            "cannot read the re-created topic: {}",
            data.err().unwrap().message()
        );
    };
    let chunks: Vec<Bytes> = data.body.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"newer secret");
}
