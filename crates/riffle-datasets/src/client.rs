//! The Rust client of the consume path: a [`Subscription`] keeps the
//! newest version of one topic (for one set of labels) decoded in memory
//! and swaps it atomically when the service announces another.
//!
//! # Protocol loop
//!
//! One background task per subscription:
//!
//! 1. `GET {base}/v1/datasets/topics/{topic}/latest?labels=..&after=N&wait=..`
//!    where `after` is the version held (0 = nothing). The first request
//!    after start and after every failure asks with `wait=0ms` (a probe), so
//!    [`Status::connected`] turns true as soon as the service answers
//!    instead of one long-poll later; every other request long-polls with
//!    [`SubscriptionConfig::wait`].
//! 2. `204`: nothing new; poll again at once.
//! 3. `200`: an announced version. It is taken only if it is newer than the
//!    one held, or lower/other with reason `pinned` or `rollback`; any other
//!    answer is ignored, so the client never regresses on its own. The
//!    payload is downloaded from `.../versions/{n}/data`, its size and
//!    sha256 are checked against the announcement, it is decoded (on the
//!    blocking pool), then the fallback copy is written, then the value is
//!    swapped in, then the `on_change` callbacks run in registration order,
//!    then [`Subscription::watch`] / [`Subscription::wait_for_version`]
//!    observers are woken.
//! 4. Failures back off exponentially with full jitter (`initial_backoff`
//!    doubling up to `max_backoff`; reset by any success): connection
//!    errors, timeouts and 5xx (unreachable); 4xx such as 404 (unknown
//!    topic) and 401/403 (the config may be fixed on the server side later);
//!    a payload whose size, checksum or decoding fails (rejected: the old
//!    value stays, the same version is tried again after the backoff; a
//!    version that failed to *decode* is not downloaded again while the
//!    service keeps announcing the same checksum); and answers that break
//!    the protocol (ignored).
//!
//! # Guarantees
//!
//! * [`Subscription::current`] is one atomic load (arc-swap): it never
//!   blocks and never shows a half-loaded value; a [`Loaded`] pairs the
//!   version with the value decoded from exactly that version's bytes.
//! * Nothing unverified is ever served or written to the fallback copy.
//! * The held version only goes down when the service says `pinned` or
//!   `rollback`.
//!
//! # Fallback copy (on-disk format)
//!
//! With [`SubscriptionConfig::fallback_dir`] set, the last good version of
//! a topic is kept in `{fallback_dir}/{topic}/`:
//!
//! * `payload-{version}`: the raw payload bytes, exactly as downloaded;
//! * `meta.json`: `{"format":1,"topic","labels","version","metadata",
//!   "checksum":"sha256:<hex>","size","created_at_ms","saved_at_ms"}`.
//!
//! Each file is written to a uniquely named `*.tmp` file, fsynced and
//! renamed into place, then the directory is fsynced. The payload goes
//! first and `meta.json` last, and older `payload-*` files are removed only
//! after the new `meta.json` is in place, so a crash at any point leaves
//! either the old pair or the new pair. Loading re-checks everything:
//! the meta must parse, name this topic and these labels, and the payload
//! it names must have the recorded size and sha256 and decode; anything
//! else is logged, recorded in [`Status::last_error`] and ignored. One
//! subscription per (fallback dir, topic) at a time.
//!
//! # Staleness
//!
//! [`Status::stale_since_ms`] is `None` while the client knows it holds
//! what the service wants it to hold. After a failure, or when serving the
//! fallback copy before the service has confirmed it, it is the last time
//! the service did confirm it (or the subscription's start, if never), and
//! the staleness gauge is the time since.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntGauge, Opts};
use rand::Rng;
use riffle_core::time::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{DatasetError, Result};
use crate::model::{validate_topic_name, Labels};

const FALLBACK_FORMAT: u32 = 1;
const META_FILE: &str = "meta.json";
const PAYLOAD_PREFIX: &str = "payload-";
/// A meta file is a few hundred bytes; anything far larger is not ours.
const MAX_META_BYTES: u64 = 1 << 20;
/// Preallocate at most this much for a download whatever size is announced.
const MAX_PREALLOCATE_BYTES: u64 = 64 << 20;

/// What a subscription connects to and how it behaves.
#[derive(Clone)]
pub struct SubscriptionConfig {
    /// `http(s)://host:port` of the dataset service (a trailing `/` is fine).
    pub base_url: String,
    pub topic: String,
    /// The consumer's labels; they choose which scoped versions it gets.
    pub labels: Labels,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Keep the last good version here (in a per-topic subdirectory) and
    /// start from it when the service is unreachable.
    pub fallback_dir: Option<PathBuf>,
    /// How long one long-poll may wait for news (the server may cap it).
    pub wait: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit for connecting and for the response headers of a download,
    /// and for each gap between body chunks; a long-poll may take
    /// `wait + request_timeout`.
    pub request_timeout: Duration,
    /// Wall clock for timestamps and staleness (injectable for tests).
    pub clock: Arc<dyn Clock>,
}

impl SubscriptionConfig {
    pub fn new(base_url: impl Into<String>, topic: impl Into<String>) -> Self {
        SubscriptionConfig {
            base_url: base_url.into(),
            topic: topic.into(),
            labels: Labels::default(),
            token: None,
            fallback_dir: None,
            wait: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }

    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn fallback_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.fallback_dir = Some(dir.into());
        self
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks every field; errors name the field and the value.
    pub fn validate(&self) -> Result<()> {
        if validate_topic_name(&self.topic).is_err() {
            return Err(DatasetError::invalid(format!(
                "topic: {:?} is not a topic name (1 to 200 bytes of letters, digits, '.', '_', '-', not starting with '.')",
                self.topic
            )));
        }
        let url_ok = reqwest::Url::parse(&self.base_url)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
        if !url_ok {
            return Err(DatasetError::invalid(format!(
                "base_url: {:?} is not an http(s) url",
                self.base_url
            )));
        }
        for (field, value) in [
            ("wait", self.wait),
            ("initial_backoff", self.initial_backoff),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(DatasetError::invalid(format!(
                    "{field}: must be positive, got {value:?}"
                )));
            }
        }
        if self.max_backoff < self.initial_backoff {
            return Err(DatasetError::invalid(format!(
                "max_backoff: {:?} is below initial_backoff {:?}",
                self.max_backoff, self.initial_backoff
            )));
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(DatasetError::invalid("token: must not be empty"));
        }
        Ok(())
    }

    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    fn topic_dir(&self) -> Option<PathBuf> {
        self.fallback_dir.as_ref().map(|dir| dir.join(&self.topic))
    }
}

impl fmt::Debug for SubscriptionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionConfig")
            .field("base_url", &self.base_url)
            .field("topic", &self.topic)
            .field("labels", &self.labels.to_string())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("fallback_dir", &self.fallback_dir)
            .field("wait", &self.wait)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Where the held value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Downloaded from the service by this subscription.
    Service,
    /// Read from the fallback copy at start. It stays `Fallback` when the
    /// service later confirms the same version is still current (the bytes
    /// are not fetched again); [`Status::connected`] says whether it did.
    Fallback,
}

/// One decoded version, as held by a subscription.
#[derive(Debug)]
pub struct Loaded<T> {
    pub version: u64,
    pub metadata: BTreeMap<String, String>,
    /// `sha256:<hex>` of the payload `value` was decoded from.
    pub checksum: String,
    pub size: u64,
    pub created_at_ms: i64,
    pub value: T,
    pub source: Source,
}

/// A subscription's health, for readiness checks and dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The version held, if any.
    pub version: Option<u64>,
    pub source: Option<Source>,
    /// The last request reached the service and got an answer below 500.
    pub connected: bool,
    /// Set while the held value may be out of date: the last time the
    /// service confirmed it (or the subscription's start, if never).
    pub stale_since_ms: Option<i64>,
    /// Failures since the last success; drives the backoff.
    pub consecutive_failures: u64,
    /// Failures since start (the failures counter).
    pub failures_total: u64,
    /// The most recent failure, kept after recovery.
    pub last_error: Option<String>,
    /// Downloads refused for a size, checksum or decoding failure.
    pub rejected_versions: u64,
    /// Why a fallback copy found at start was not used (`None` when it
    /// was, or when there was none).
    pub fallback_error: Option<String>,
}

impl Status {
    /// Milliseconds since `stale_since_ms` (0 when up to date).
    pub fn staleness_ms(&self, now_ms: i64) -> u64 {
        self.stale_since_ms
            .map_or(0, |since| now_ms.saturating_sub(since).max(0) as u64)
    }
}

type Decoder<T> = dyn Fn(&[u8]) -> std::result::Result<T, String> + Send + Sync;
type Callback<T> = Arc<dyn Fn(&Loaded<T>) + Send + Sync>;

/// A handle on a running subscription; clones share it. The background
/// task stops on [`Subscription::stop`] or when the last handle is dropped.
pub struct Subscription<T> {
    handle: Arc<Handle<T>>,
}

impl<T> Clone for Subscription<T> {
    fn clone(&self) -> Self {
        Subscription {
            handle: self.handle.clone(),
        }
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.handle.shared.config.topic)
            .finish_non_exhaustive()
    }
}

struct Handle<T> {
    shared: Arc<Shared<T>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<T> Handle<T> {
    fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        self.shared.stopped.send_replace(true);
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the background task and the handles share. The task holds only
/// this, never a [`Handle`], so dropping the last handle stops it.
struct Shared<T> {
    config: SubscriptionConfig,
    http: reqwest::Client,
    decoder: Box<Decoder<T>>,
    current: ArcSwapOption<Loaded<T>>,
    /// Updated after the swap and the callbacks.
    loaded: watch::Sender<Option<Arc<Loaded<T>>>>,
    /// Bumped on every status change.
    status_changed: watch::Sender<u64>,
    stopped: watch::Sender<bool>,
    callbacks: RwLock<Vec<Callback<T>>>,
    state: Mutex<State>,
    started_at_ms: i64,
}

#[derive(Default)]
struct State {
    connected: bool,
    up_to_date: bool,
    last_confirmed_ms: Option<i64>,
    consecutive_failures: u64,
    failures_total: u64,
    last_error: Option<String>,
    rejected_versions: u64,
    fallback_error: Option<String>,
    /// (version, checksum) that failed to decode: not downloaded again.
    undecodable: Option<(u64, String)>,
}

/// Why one round of the loop failed; decides what the status says.
#[derive(Debug)]
enum Failure {
    /// Connection error, timeout or 5xx.
    Unreachable(String),
    /// The service answered with a 4xx.
    Refused(String),
    /// The payload failed size, checksum or decoding checks.
    Rejected(String),
    /// The payload failed to decode: deterministic for these bytes.
    Undecodable {
        version: u64,
        checksum: String,
        message: String,
    },
    /// An answer that breaks the protocol (ignored).
    Ignored(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m)
            | Failure::Refused(m)
            | Failure::Rejected(m)
            | Failure::Ignored(m)
            | Failure::Undecodable { message: m, .. } => m,
        }
    }
}

/// The body of a `200` from `latest`. Unknown fields are allowed so the
/// server can add some.
#[derive(Debug, Deserialize)]
struct Announcement {
    topic: String,
    version: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    checksum: String,
    size: u64,
    #[serde(default)]
    created_at_ms: i64,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FallbackMeta {
    format: u32,
    topic: String,
    labels: String,
    version: u64,
    metadata: BTreeMap<String, String>,
    checksum: String,
    size: u64,
    created_at_ms: i64,
    saved_at_ms: i64,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// Validates `config`, loads the fallback copy if there is a good one
    /// (synchronously, so [`Subscription::current`] has it on return, before
    /// any network call completes) and starts the background task. Must be
    /// called inside a tokio runtime.
    pub fn start(
        config: SubscriptionConfig,
        decoder: impl Fn(&[u8]) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            DatasetError::invalid(format!(
                "topic {:?}: Subscription::start must be called inside a tokio runtime",
                config.topic
            ))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|error| {
                DatasetError::internal(format!("http client: {}", error_chain(&error)))
            })?;
        let started_at_ms = config.clock.now_ms();
        let shared = Arc::new(Shared {
            http,
            decoder: Box::new(decoder),
            current: ArcSwapOption::empty(),
            loaded: watch::Sender::new(None),
            status_changed: watch::Sender::new(0),
            stopped: watch::Sender::new(false),
            callbacks: RwLock::new(Vec::new()),
            state: Mutex::new(State::default()),
            started_at_ms,
            config,
        });
        shared.load_fallback();
        let task = runtime.spawn(run(shared.clone()));
        Ok(Subscription {
            handle: Arc::new(Handle {
                shared,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The value held now, if any. One atomic load: never blocks.
    pub fn current(&self) -> Option<Arc<Loaded<T>>> {
        self.handle.shared.current.load_full()
    }

    /// Calls `f` (on the blocking pool, in registration order, one version
    /// at a time) for every version swapped in after this call. A value
    /// already held is not replayed: read [`Subscription::current`] after
    /// registering (a version swapped in between is seen by both).
    pub fn on_change(&self, f: impl Fn(&Loaded<T>) + Send + Sync + 'static) {
        self.handle.shared.callbacks.write().push(Arc::new(f));
    }

    /// Every version held, in order (the initial value is the one held
    /// now). Woken after the swap and the callbacks.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Loaded<T>>>> {
        self.handle.shared.loaded.subscribe()
    }

    /// Waits until a version `>= at_least` is held (and its callbacks have
    /// run) and returns it; `None` on timeout or when stopped first.
    pub async fn wait_for_version(
        &self,
        at_least: u64,
        timeout: Duration,
    ) -> Option<Arc<Loaded<T>>> {
        let mut loaded = self.handle.shared.loaded.subscribe();
        let mut stopped = self.handle.shared.stopped.subscribe();
        let wait = async move {
            loop {
                let held = loaded.borrow_and_update().clone();
                if let Some(held) = held.filter(|l| l.version >= at_least) {
                    return Some(held);
                }
                if *stopped.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    changed = loaded.changed() => changed.ok()?,
                    changed = stopped.changed() => changed.ok()?,
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Waits until `condition` holds for the status and returns that
    /// status; `None` on timeout. For readiness checks and tests.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        condition: impl Fn(&Status) -> bool,
    ) -> Option<Status> {
        let mut changed = self.handle.shared.status_changed.subscribe();
        let wait = async move {
            loop {
                changed.borrow_and_update();
                let status = self.status();
                if condition(&status) {
                    return Some(status);
                }
                changed.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    pub fn status(&self) -> Status {
        self.handle.shared.status()
    }

    /// Registers `riffle_datasets_client_version`,
    /// `riffle_datasets_client_staleness_seconds` (gauges),
    /// `riffle_datasets_client_failures_total` and
    /// `riffle_datasets_client_rejected_total` (counters), each with a
    /// `topic` label, read from the status at scrape time. The registry
    /// holds no strong reference to the subscription or its value.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<()> {
        let topic = &self.handle.shared.config.topic;
        let metrics = ClientMetrics::new(Arc::downgrade(&self.handle.shared), topic)?;
        registry
            .register(Box::new(metrics))
            .map_err(|error| DatasetError::invalid(format!("metrics for topic {topic:?}: {error}")))
    }

    /// Stops the background task; the value held stays readable.
    pub fn stop(&self) {
        self.handle.stop();
    }
}

impl<T> Shared<T> {
    fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    fn status(&self) -> Status {
        let held = self.current.load();
        let state = self.state.lock();
        Status {
            version: held.as_ref().map(|l| l.version),
            source: held.as_ref().map(|l| l.source),
            connected: state.connected,
            stale_since_ms: (!state.up_to_date)
                .then(|| state.last_confirmed_ms.unwrap_or(self.started_at_ms)),
            consecutive_failures: state.consecutive_failures,
            failures_total: state.failures_total,
            last_error: state.last_error.clone(),
            rejected_versions: state.rejected_versions,
            fallback_error: state.fallback_error.clone(),
        }
    }

    fn update_state(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock());
        self.status_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The service confirmed that the value held is the one to hold.
    fn record_confirmed(&self) {
        let now = self.now_ms();
        self.update_state(|state| {
            state.connected = true;
            state.up_to_date = true;
            state.last_confirmed_ms = Some(now);
            state.consecutive_failures = 0;
        });
    }

    /// Records `failure` and returns how long to back off.
    fn record_failure(&self, failure: Failure) -> Duration {
        let topic = &self.config.topic;
        let message = failure.message().to_string();
        let mut attempt = 0;
        self.update_state(|state| {
            state.consecutive_failures += 1;
            state.failures_total += 1;
            attempt = state.consecutive_failures;
            match &failure {
                Failure::Unreachable(_) => {
                    state.connected = false;
                    state.up_to_date = false;
                }
                Failure::Refused(_) => {
                    state.connected = true;
                    state.up_to_date = false;
                }
                Failure::Rejected(_) => {
                    state.connected = true;
                    state.up_to_date = false;
                    state.rejected_versions += 1;
                }
                Failure::Undecodable {
                    version, checksum, ..
                } => {
                    state.connected = true;
                    state.up_to_date = false;
                    state.rejected_versions += 1;
                    state.undecodable = Some((*version, checksum.clone()));
                }
                // The service answered but we keep what we hold, which the
                // last confirmation still covers.
                Failure::Ignored(_) => state.connected = true,
            }
            state.last_error = Some(message.clone());
        });
        let delay = backoff_delay(
            self.config.initial_backoff,
            self.config.max_backoff,
            attempt,
            rand::thread_rng().gen_range(0.0..=1.0),
        );
        warn!(topic = %topic, attempt, delay_ms = delay.as_millis() as u64, error = %message, "dataset subscription failure");
        delay
    }

    /// Reads, verifies and decodes the fallback copy, if any, and swaps it
    /// in. Synchronous: runs once, in `start`.
    fn load_fallback(&self) {
        let Some(dir) = self.config.topic_dir() else {
            return;
        };
        match read_fallback(&dir, &self.config.topic, &self.config.labels) {
            Ok(None) => {}
            Ok(Some((meta, payload))) => {
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (self.decoder)(&payload)
                }));
                match decoded {
                    Ok(Ok(value)) => {
                        info!(topic = %self.config.topic, version = meta.version, dir = %dir.display(), "dataset loaded from fallback copy");
                        let loaded = Arc::new(Loaded {
                            version: meta.version,
                            metadata: meta.metadata,
                            checksum: meta.checksum,
                            size: meta.size,
                            created_at_ms: meta.created_at_ms,
                            value,
                            source: Source::Fallback,
                        });
                        self.current.store(Some(loaded.clone()));
                        self.loaded.send_replace(Some(loaded));
                        self.status_changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Ok(Err(message)) => self.fallback_ignored(
                        &dir,
                        &format!("version {}: decode: {message}", meta.version),
                    ),
                    Err(_) => self.fallback_ignored(
                        &dir,
                        &format!("version {}: decoder panicked", meta.version),
                    ),
                }
            }
            Err(message) => self.fallback_ignored(&dir, &message),
        }
    }

    fn fallback_ignored(&self, dir: &Path, message: &str) {
        let error = format!("fallback {}: {message}", dir.display());
        warn!(topic = %self.config.topic, %error, "fallback copy ignored");
        self.update_state(|state| {
            state.last_error = Some(error.clone());
            state.fallback_error = Some(error);
        });
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// One round: ask `latest`, and take what it announces if it should be
    /// taken. `Ok(true)` when a version was swapped in, `Ok(false)` when
    /// the one held was confirmed.
    async fn poll_once(self: &Arc<Self>, wait: Duration) -> std::result::Result<bool, Failure> {
        let held = self.current.load_full();
        let after = held.as_ref().map_or(0, |l| l.version);
        let Some(announced) = self.fetch_latest(after, wait).await? else {
            self.record_confirmed();
            return Ok(false);
        };
        let topic = &self.config.topic;
        if announced.topic != *topic {
            return Err(Failure::Ignored(format!(
                "latest: answered for topic {:?} instead of {topic:?}",
                announced.topic
            )));
        }
        let may_go_back = matches!(announced.reason.as_str(), "pinned" | "rollback");
        if announced.version == after || (announced.version < after && !may_go_back) {
            return Err(Failure::Ignored(format!(
                "topic {topic:?}: ignored version {} (reason {:?}) while holding {after}",
                announced.version, announced.reason
            )));
        }
        let undecodable = self.state.lock().undecodable.clone();
        if undecodable.is_some_and(|(v, c)| v == announced.version && c == announced.checksum) {
            return Err(Failure::Ignored(format!(
                "topic {topic:?} version {}: still announced with checksum {} that failed to decode",
                announced.version, announced.checksum
            )));
        }
        let payload = self.download(&announced).await?;
        let version = announced.version;
        let decoder_input = payload.clone();
        let this = self.clone();
        let decoded = tokio::task::spawn_blocking(move || (this.decoder)(&decoder_input)).await;
        let value = match decoded {
            Ok(Ok(value)) => value,
            Ok(Err(message)) => {
                return Err(Failure::Undecodable {
                    message: format!("topic {topic:?} version {version}: decode: {message}"),
                    version,
                    checksum: announced.checksum,
                })
            }
            Err(_) => {
                return Err(Failure::Undecodable {
                    message: format!("topic {topic:?} version {version}: decoder panicked"),
                    version,
                    checksum: announced.checksum,
                })
            }
        };
        self.save_fallback(&announced, payload).await;
        let loaded = Arc::new(Loaded {
            version,
            metadata: announced.metadata,
            checksum: announced.checksum,
            size: announced.size,
            created_at_ms: announced.created_at_ms,
            value,
            source: Source::Service,
        });
        self.current.store(Some(loaded.clone()));
        info!(topic = %topic, version, previous = after, reason = %announced.reason, "dataset version swapped in");
        self.record_confirmed();
        self.run_callbacks(&loaded).await;
        self.loaded.send_replace(Some(loaded));
        Ok(true)
    }

    /// `None` for a `204`.
    async fn fetch_latest(
        &self,
        after: u64,
        wait: Duration,
    ) -> std::result::Result<Option<Announcement>, Failure> {
        let config = &self.config;
        let url = format!(
            "{}/v1/datasets/topics/{}/latest",
            config.base(),
            config.topic
        );
        let mut query = vec![("after", after.to_string()), ("wait", format_wait(wait))];
        if !config.labels.is_empty() {
            query.push(("labels", config.labels.to_string()));
        }
        let what = format!("topic {:?}: latest", config.topic);
        let deadline = wait + config.request_timeout;
        let request = self.request(&url).query(&query).timeout(deadline);
        let response = request
            .send()
            .await
            .map_err(|error| Failure::Unreachable(format!("{what}: {}", error_chain(&error))))?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status != reqwest::StatusCode::OK {
            return Err(http_failure(&what, response, config.request_timeout).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| Failure::Unreachable(format!("{what}: {}", error_chain(&error))))?;
        let announced: Announcement = serde_json::from_slice(&body)
            .map_err(|error| Failure::Ignored(format!("{what}: malformed answer: {error}")))?;
        if parse_checksum(&announced.checksum).is_none() {
            return Err(Failure::Ignored(format!(
                "{what}: version {}: checksum {:?} is not sha256:<64 hex>",
                announced.version, announced.checksum
            )));
        }
        Ok(Some(announced))
    }

    /// Downloads a version's payload and checks its size and sha256.
    async fn download(&self, announced: &Announcement) -> std::result::Result<Bytes, Failure> {
        let config = &self.config;
        let url = format!(
            "{}/v1/datasets/topics/{}/versions/{}/data",
            config.base(),
            config.topic,
            announced.version
        );
        let what = format!(
            "topic {:?} version {}: data",
            config.topic, announced.version
        );
        let unreachable = |error: &dyn std::error::Error| {
            Failure::Unreachable(format!("{what}: {}", error_chain(error)))
        };
        let idle = config.request_timeout;
        let timed_out = || Failure::Unreachable(format!("{what}: no progress within {idle:?}"));
        let response = tokio::time::timeout(idle, self.request(&url).send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|error| unreachable(&error))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(http_failure(&what, response, idle).await);
        }
        let expected = parse_checksum(&announced.checksum).unwrap_or_default();
        let mut hasher = Sha256::new();
        let mut payload = Vec::with_capacity(announced.size.min(MAX_PREALLOCATE_BYTES) as usize);
        let mut body = response.bytes_stream();
        while let Some(chunk) = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| timed_out())?
        {
            let chunk = chunk.map_err(|error| unreachable(&error))?;
            if (payload.len() + chunk.len()) as u64 > announced.size {
                return Err(Failure::Rejected(format!(
                    "{what}: more than the announced size {} bytes",
                    announced.size
                )));
            }
            hasher.update(&chunk);
            payload.extend_from_slice(&chunk);
        }
        if payload.len() as u64 != announced.size {
            return Err(Failure::Rejected(format!(
                "{what}: got {} bytes, announced size {}",
                payload.len(),
                announced.size
            )));
        }
        let actual = to_hex(&hasher.finalize());
        if actual != expected {
            return Err(Failure::Rejected(format!(
                "{what}: checksum mismatch: announced {}, got sha256:{actual}",
                announced.checksum
            )));
        }
        Ok(Bytes::from(payload))
    }

    async fn save_fallback(&self, announced: &Announcement, payload: Bytes) {
        let Some(dir) = self.config.topic_dir() else {
            return;
        };
        let meta = FallbackMeta {
            format: FALLBACK_FORMAT,
            topic: self.config.topic.clone(),
            labels: self.config.labels.to_string(),
            version: announced.version,
            metadata: announced.metadata.clone(),
            checksum: announced.checksum.clone(),
            size: announced.size,
            created_at_ms: announced.created_at_ms,
            saved_at_ms: self.now_ms(),
        };
        let target = dir.clone();
        let written = tokio::task::spawn_blocking(move || write_fallback(&target, &meta, &payload))
            .await
            .unwrap_or_else(|_| Err("writer panicked".to_string()));
        if let Err(message) = written {
            // The new version is still served; only a restart without the
            // service would miss it.
            warn!(topic = %self.config.topic, version = announced.version, dir = %dir.display(), error = %message, "fallback copy not written");
        }
    }

    async fn run_callbacks(&self, loaded: &Arc<Loaded<T>>) {
        let callbacks: Vec<Callback<T>> = self.callbacks.read().clone();
        if callbacks.is_empty() {
            return;
        }
        let loaded = loaded.clone();
        let topic = self.config.topic.clone();
        let ran = tokio::task::spawn_blocking(move || {
            for callback in &callbacks {
                let call = std::panic::AssertUnwindSafe(|| callback(&loaded));
                if std::panic::catch_unwind(call).is_err() {
                    warn!(topic = %topic, version = loaded.version, "on_change callback panicked");
                }
            }
        })
        .await;
        debug_assert!(ran.is_ok(), "callback panics are caught");
    }
}

async fn run<T: Send + Sync + 'static>(shared: Arc<Shared<T>>) {
    let config = &shared.config;
    let mut probe = true;
    loop {
        let wait = if probe { Duration::ZERO } else { config.wait };
        let began = Instant::now();
        match shared.poll_once(wait).await {
            Ok(swapped) => {
                // A server that ends long-polls with "nothing new" at once
                // must not make us spin.
                let early = wait.min(Duration::from_secs(1)) / 2;
                if !probe && !swapped && began.elapsed() < early {
                    tokio::time::sleep(config.initial_backoff).await;
                }
                probe = false;
            }
            Err(failure) => {
                let delay = shared.record_failure(failure);
                tokio::time::sleep(delay).await;
                probe = true;
            }
        }
    }
}

/// Full jitter: uniform in `[0, min(max, initial * 2^(attempt-1))]`;
/// `unit` is the random draw in `[0, 1]`.
fn backoff_delay(initial: Duration, max: Duration, attempt: u64, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32) as u32;
    let ceiling = initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

fn format_wait(wait: Duration) -> String {
    let ms = wait.as_millis();
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The lowercase hex of a well-formed `sha256:<64 hex>`.
fn parse_checksum(checksum: &str) -> Option<String> {
    let hex = checksum.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// `error` and its sources, `: `-separated (reqwest hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// `limit` bounds reading the error body, so a server that stalls after
/// the headers cannot hang the loop.
async fn http_failure(what: &str, response: reqwest::Response, limit: Duration) -> Failure {
    let status = response.status();
    let body = tokio::time::timeout(limit, response.bytes())
        .await
        .ok()
        .and_then(|body| body.ok())
        .unwrap_or_default();
    let detail = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(parsed) => format!("{}: {}", parsed.error.code, parsed.error.message),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let message = format!("{what}: http {}: {detail}", status.as_u16());
    if status.is_server_error() {
        Failure::Unreachable(message)
    } else {
        Failure::Refused(message)
    }
}

fn payload_file(version: u64) -> String {
    format!("{PAYLOAD_PREFIX}{version}")
}

/// The verified (meta, payload) pair in `dir`, `None` when there is no
/// copy, `Err` when there is one that must not be used.
fn read_fallback(
    dir: &Path,
    topic: &str,
    labels: &Labels,
) -> std::result::Result<Option<(FallbackMeta, Vec<u8>)>, String> {
    let meta_path = dir.join(META_FILE);
    let meta_bytes = match std::fs::File::open(&meta_path) {
        Ok(file) => {
            let mut bytes = Vec::new();
            file.take(MAX_META_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|error| format!("{META_FILE}: {error}"))?;
            bytes
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{META_FILE}: {error}")),
    };
    let meta: FallbackMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|error| format!("{META_FILE}: malformed: {error}"))?;
    if meta.format != FALLBACK_FORMAT {
        return Err(format!(
            "{META_FILE}: format {} is not {FALLBACK_FORMAT}",
            meta.format
        ));
    }
    if meta.topic != topic {
        return Err(format!(
            "{META_FILE}: topic {:?} is not {topic:?}",
            meta.topic
        ));
    }
    let labels = labels.to_string();
    if meta.labels != labels {
        return Err(format!(
            "{META_FILE}: saved for labels {:?}, not {labels:?}",
            meta.labels
        ));
    }
    let Some(expected) = parse_checksum(&meta.checksum) else {
        return Err(format!(
            "{META_FILE}: checksum {:?} is not sha256:<64 hex>",
            meta.checksum
        ));
    };
    let name = payload_file(meta.version);
    let payload = std::fs::read(dir.join(&name)).map_err(|error| format!("{name}: {error}"))?;
    if payload.len() as u64 != meta.size {
        return Err(format!(
            "{name}: {} bytes, meta says {}",
            payload.len(),
            meta.size
        ));
    }
    let actual = to_hex(&Sha256::digest(&payload));
    if actual != expected {
        return Err(format!(
            "{name}: checksum sha256:{actual} does not match meta {}",
            meta.checksum
        ));
    }
    Ok(Some((meta, payload)))
}

/// Writes the payload, then the meta, each atomically, then removes older
/// payloads. Blocking.
fn write_fallback(
    dir: &Path,
    meta: &FallbackMeta,
    payload: &[u8],
) -> std::result::Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|error| format!("create {}: {error}", dir.display()))?;
    let name = payload_file(meta.version);
    write_atomically(dir, &name, payload)?;
    let meta_json =
        serde_json::to_vec_pretty(meta).map_err(|error| format!("{META_FILE}: {error}"))?;
    write_atomically(dir, META_FILE, &meta_json)?;
    sync_dir(dir)?;
    let entries =
        std::fs::read_dir(dir).map_err(|error| format!("list {}: {error}", dir.display()))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // Leftovers of an interrupted write go too (one writer per dir).
        let superseded = file_name.starts_with(PAYLOAD_PREFIX) && file_name != name;
        if superseded || file_name.ends_with(".tmp") {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                debug!(file = file_name, %error, "fallback cleanup failed");
            }
        }
    }
    Ok(())
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::result::Result<(), String> {
    let suffix: u64 = rand::thread_rng().gen();
    let tmp = dir.join(format!("{name}.{suffix:016x}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    result.map_err(|error| {
        let _ = std::fs::remove_file(&tmp);
        format!("write {name}: {error}")
    })
}

/// Makes the renames durable.
fn sync_dir(dir: &Path) -> std::result::Result<(), String> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|error| format!("sync {}: {error}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The four metrics of one subscription, computed from its status at
/// scrape time. Holds the subscription weakly so a registry never keeps a
/// dataset alive.
struct ClientMetrics<T> {
    shared: Weak<Shared<T>>,
    version: IntGauge,
    staleness: Gauge,
    failures: IntCounter,
    rejected: IntCounter,
}

impl<T> ClientMetrics<T> {
    fn new(shared: Weak<Shared<T>>, topic: &str) -> Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("topic", topic);
        let invalid = |error: prometheus::Error| {
            DatasetError::internal(format!("metrics for topic {topic:?}: {error}"))
        };
        Ok(ClientMetrics {
            shared,
            version: IntGauge::with_opts(opts(
                "riffle_datasets_client_version",
                "Dataset version held by the subscription (0 = none).",
            ))
            .map_err(invalid)?,
            staleness: Gauge::with_opts(opts(
                "riffle_datasets_client_staleness_seconds",
                "Seconds since the service last confirmed the held version, while it may be out of date (0 = up to date).",
            ))
            .map_err(invalid)?,
            failures: IntCounter::with_opts(opts(
                "riffle_datasets_client_failures_total",
                "Failed rounds of the subscription loop (unreachable, refused, rejected or ignored answers).",
            ))
            .map_err(invalid)?,
            rejected: IntCounter::with_opts(opts(
                "riffle_datasets_client_rejected_total",
                "Downloaded versions refused for a size, checksum or decoding failure.",
            ))
            .map_err(invalid)?,
        })
    }
}

impl<T: Send + Sync> Collector for ClientMetrics<T> {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.version.desc();
        descs.extend(self.staleness.desc());
        descs.extend(self.failures.desc());
        descs.extend(self.rejected.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(shared) = self.shared.upgrade() {
            let status = shared.status();
            self.version.set(
                status
                    .version
                    .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
            );
            self.staleness
                .set(status.staleness_ms(shared.now_ms()) as f64 / 1000.0);
            // Counters only move up; the status totals are monotonic too.
            let failures = status.failures_total;
            self.failures
                .inc_by(failures.saturating_sub(self.failures.get()));
            let rejected = status.rejected_versions;
            self.rejected
                .inc_by(rejected.saturating_sub(self.rejected.get()));
        }
        let mut families = self.version.collect();
        families.extend(self.staleness.collect());
        families.extend(self.failures.collect());
        families.extend(self.rejected.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_checksum(bytes: &[u8]) -> String {
        format!("sha256:{}", to_hex(&Sha256::digest(bytes)))
    }

    fn meta_for(topic: &str, version: u64, payload: &[u8]) -> FallbackMeta {
        FallbackMeta {
            format: FALLBACK_FORMAT,
            topic: topic.into(),
            labels: "region=eu".into(),
            version,
            metadata: BTreeMap::new(),
            checksum: sha256_checksum(payload),
            size: payload.len() as u64,
            created_at_ms: 1,
            saved_at_ms: 2,
        }
    }

    fn labels() -> Labels {
        Labels::from_pairs([("region", "eu")])
    }

    #[test]
    fn backoff_is_full_jitter_capped_and_doubling() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        assert_eq!(backoff_delay(initial, max, 1, 1.0), initial);
        assert_eq!(backoff_delay(initial, max, 1, 0.0), Duration::ZERO);
        assert_eq!(
            backoff_delay(initial, max, 3, 1.0),
            Duration::from_millis(400)
        );
        assert_eq!(
            backoff_delay(initial, max, 3, 0.5),
            Duration::from_millis(200)
        );
        assert_eq!(backoff_delay(initial, max, 8, 1.0), max);
        assert_eq!(backoff_delay(initial, max, u64::MAX, 1.0), max);
        assert!(backoff_delay(initial, max, 40, 0.25) <= max);
    }

    #[test]
    fn wait_is_sent_in_seconds_or_milliseconds() {
        assert_eq!(format_wait(Duration::from_secs(30)), "30s");
        assert_eq!(format_wait(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_wait(Duration::ZERO), "0ms");
    }

    #[test]
    fn checksums_must_be_sha256_hex() {
        let good = sha256_checksum(b"abc");
        assert_eq!(
            good,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_checksum(&good).is_some());
        assert_eq!(
            parse_checksum(&good.to_ascii_uppercase().replace("SHA256", "sha256")),
            parse_checksum(&good)
        );
        for bad in [
            "",
            "sha256:",
            "md5:00",
            "sha256:xyz",
            &good[..good.len() - 1],
        ] {
            assert!(parse_checksum(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let ok = SubscriptionConfig::new("http://127.0.0.1:1/", "prices");
        assert!(ok.validate().is_ok());
        assert_eq!(ok.base(), "http://127.0.0.1:1");
        let cases = [
            (SubscriptionConfig::new("http://h", "a b"), "topic:"),
            (SubscriptionConfig::new("ftp://h", "t"), "base_url:"),
            (SubscriptionConfig::new("nope", "t"), "base_url:"),
            (
                SubscriptionConfig::new("http://h", "t").wait(Duration::ZERO),
                "wait:",
            ),
            (
                SubscriptionConfig::new("http://h", "t")
                    .backoff(Duration::from_secs(2), Duration::from_secs(1)),
                "max_backoff:",
            ),
            (SubscriptionConfig::new("http://h", "t").token(""), "token:"),
        ];
        for (config, prefix) in cases {
            let error = config.validate().unwrap_err();
            assert!(error.message().starts_with(prefix), "{}", error.message());
        }
        let debug = format!(
            "{:?}",
            SubscriptionConfig::new("http://h", "t").token("s3cret")
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn fallback_roundtrip_and_crash_between_payload_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let topic_dir = dir.path().join("prices");
        assert!(read_fallback(&topic_dir, "prices", &labels())
            .unwrap()
            .is_none());

        write_fallback(&topic_dir, &meta_for("prices", 1, b"one"), b"one").unwrap();
        let (meta, payload) = read_fallback(&topic_dir, "prices", &labels())
            .unwrap()
            .unwrap();
        assert_eq!((meta.version, payload.as_slice()), (1, &b"one"[..]));

        // A crash after the new payload but before the new meta: the old
        // pair is intact and still loads.
        write_atomically(&topic_dir, &payload_file(2), b"two").unwrap();
        let (meta, _) = read_fallback(&topic_dir, "prices", &labels())
            .unwrap()
            .unwrap();
        assert_eq!(meta.version, 1);

        // The next full write replaces the pair and removes older payloads.
        write_fallback(&topic_dir, &meta_for("prices", 3, b"three"), b"three").unwrap();
        let (meta, payload) = read_fallback(&topic_dir, "prices", &labels())
            .unwrap()
            .unwrap();
        assert_eq!((meta.version, payload.as_slice()), (3, &b"three"[..]));
        let mut names: Vec<String> = std::fs::read_dir(&topic_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["meta.json".to_string(), payload_file(3)]);
    }

    #[test]
    fn fallback_mismatches_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let topic_dir = dir.path().join("prices");
        write_fallback(&topic_dir, &meta_for("prices", 4, b"four"), b"four").unwrap();

        let error = read_fallback(&topic_dir, "other", &labels()).unwrap_err();
        assert!(error.contains("topic \"prices\""), "{error}");
        let error = read_fallback(&topic_dir, "prices", &Labels::default()).unwrap_err();
        assert!(error.contains("labels"), "{error}");

        std::fs::write(topic_dir.join(payload_file(4)), b"fout").unwrap();
        let error = read_fallback(&topic_dir, "prices", &labels()).unwrap_err();
        assert!(error.contains("does not match"), "{error}");

        std::fs::write(topic_dir.join(payload_file(4)), b"fourteen").unwrap();
        let error = read_fallback(&topic_dir, "prices", &labels()).unwrap_err();
        assert!(error.contains("8 bytes"), "{error}");

        std::fs::write(topic_dir.join(META_FILE), b"{not json").unwrap();
        let error = read_fallback(&topic_dir, "prices", &labels()).unwrap_err();
        assert!(error.contains("malformed"), "{error}");
    }

    #[test]
    fn staleness_is_zero_when_up_to_date() {
        let mut status = Status {
            version: Some(1),
            source: Some(Source::Service),
            connected: true,
            stale_since_ms: None,
            consecutive_failures: 0,
            failures_total: 0,
            last_error: None,
            rejected_versions: 0,
            fallback_error: None,
        };
        assert_eq!(status.staleness_ms(10_000), 0);
        status.stale_since_ms = Some(4_000);
        assert_eq!(status.staleness_ms(10_000), 6_000);
        assert_eq!(status.staleness_ms(1_000), 0, "clock went back");
    }
}
