//! The dataset service: publish, the consume cache with long-poll and
//! coalescing, pins, scopes, staged rollouts and the retention janitor.
//!
//! ## Consume path
//! Every answer comes from `cache`, an immutable map topic → [`TopicView`]
//! swapped atomically (readers never lock). A view holds the topic's
//! versions, pins and active rollouts as of one store snapshot, minus the
//! versions that fail the consistency check (blob missing, or not yet
//! verified against its checksum when another process published it). The
//! cache is refreshed by comparing every topic's `generation` with the
//! store's (every `cache_refresh_ms`, and at once after a change made by
//! this process), so consumers never cause a database query.
//!
//! ## Long-poll and coalescing
//! A poll that has nothing new joins the poll group of its exact
//! `(topic, labels, after)`; one task per group waits for the topic's
//! change notifications, re-resolves once per change and hands the same
//! serialized answer to every request in the group. Requests time out
//! individually; a group whose requests all left is dropped (its task
//! aborted).
//!
//! ## Monotonicity
//! A consumer is handed a version lower than the one it holds only when a
//! pin says so or when its version was withdrawn by an aborted rollout
//! ([`crate::model::is_news`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use riffle_core::time::{format_rfc3339_ms, Clock};
use riffle_core::{ErrorCode, HasCode};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::blob::{blob_key_for, checksum_of, BlobStore};
use crate::crypto::{self, MasterKey, TopicKey};
use crate::error::{DatasetError, Result};
use crate::metrics;
use crate::model::{
    expired_versions, is_news, resolve, validate_topic_name, DataLocation, Labels, NewAudit,
    NewTopic, NewVersion, Pin, Reason, Rollout, RolloutEffect, RolloutStage, RolloutState, Scope,
    Topic, Version,
};
use crate::store::{MetadataStore, TopicSnapshot};

/// How long after a verification that failed for a reason other than
/// the blob's content it is tried again.
const VERIFY_RETRY: Duration = Duration::from_secs(5);

/// Tunables of [`DatasetService`] (from `[datasets]`).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub inline_max_bytes: u64,
    /// `None`: no limit.
    pub max_payload_bytes: Option<u64>,
    pub cache_refresh: Duration,
    pub max_wait: Duration,
    pub rollout_tick: Duration,
    pub janitor_interval: Duration,
    pub orphan_grace_ms: i64,
    /// How often the last-consumed times are written to the store.
    pub consumed_flush: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            inline_max_bytes: 1 << 20,
            max_payload_bytes: None,
            cache_refresh: Duration::from_millis(250),
            max_wait: Duration::from_secs(120),
            rollout_tick: Duration::from_millis(200),
            janitor_interval: Duration::from_secs(60),
            orphan_grace_ms: 3_600_000,
            consumed_flush: Duration::from_secs(10),
        }
    }
}

/// One topic in the consume cache.
#[derive(Debug)]
pub struct TopicView {
    pub topic: Topic,
    /// Consistent versions only, newest first.
    pub versions: Vec<Version>,
    pub pins: Vec<Pin>,
    pub active_rollouts: Vec<u64>,
    /// Committed versions held back by the consistency check.
    pub hidden: Vec<u64>,
}

/// What a consumer is handed: the version's metadata, serialized once.
#[derive(Debug)]
pub struct Answer {
    pub version: u64,
    pub reason: Reason,
    pub json: Bytes,
}

#[derive(Serialize)]
struct AnswerJson<'a> {
    topic: &'a str,
    version: u64,
    metadata: &'a BTreeMap<String, String>,
    checksum: &'a str,
    size: u64,
    created_at: String,
    created_at_ms: i64,
    scopes: Vec<String>,
    reason: Reason,
}

impl Answer {
    fn new(version: &Version, reason: Reason) -> Answer {
        let json = serde_json::to_vec(&AnswerJson {
            topic: &version.topic,
            version: version.version,
            metadata: &version.metadata,
            checksum: &version.checksum,
            size: version.size,
            created_at: format_rfc3339_ms(version.created_at_ms),
            created_at_ms: version.created_at_ms,
            scopes: version.scopes.iter().map(Scope::to_string).collect(),
            reason,
        })
        .expect("answer serializes");
        Answer {
            version: version.version,
            reason,
            json: Bytes::from(json),
        }
    }
}

#[derive(Debug, Clone)]
enum PollOutcome {
    Answer(Arc<Answer>),
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PollKey {
    topic: String,
    labels: Labels,
    after: u64,
}

struct PollGroup {
    rx: watch::Receiver<Option<PollOutcome>>,
    task: tokio::task::AbortHandle,
}

impl Drop for PollGroup {
    fn drop(&mut self) {
        self.task.abort();
        metrics::POLL_GROUPS.dec();
    }
}

/// What a publish carries besides its payload.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    pub scopes: Vec<Scope>,
    pub metadata: BTreeMap<String, String>,
    /// Publish visible to nobody (no scopes) until scopes are added or a
    /// rollout starts.
    pub staged: bool,
}

/// A topic-create request.
#[derive(Debug, Clone, Default)]
pub struct CreateTopic {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub retention_count: Option<u64>,
    pub retention_age_ms: Option<u64>,
    pub encrypted: bool,
}

/// A data download: the version, the byte range served and the bytes.
pub struct DataStream {
    pub version: Version,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes>>,
}

/// What a janitor pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JanitorReport {
    pub expired_versions: Vec<(String, u64)>,
    pub deleted_blobs: Vec<String>,
    /// Upload temporaries abandoned by a crash and deleted.
    pub swept_temporaries: usize,
}

/// Counters of one service instance (the Prometheus series are
/// process-wide; tests assert on these).
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub poll_resolutions: AtomicU64,
    pub poll_groups_created: AtomicU64,
}

pub struct DatasetService {
    store: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    master: MasterKey,
    config: ServiceConfig,
    cache: ArcSwap<HashMap<String, Arc<TopicView>>>,
    refresh_lock: tokio::sync::Mutex<()>,
    notifiers: Mutex<HashMap<String, watch::Sender<u64>>>,
    polls: Mutex<PollMap>,
    /// `(blob key, checksum)` pairs this process has checked (or written).
    verified: Mutex<HashSet<(String, String)>>,
    /// Verifications in flight or failed: not started again by a refresh
    /// (a corrupt blob stays corrupt; a restart retries).
    verifying: Mutex<HashSet<(String, String)>>,
    /// Topics whose view must be rebuilt although their generation did not
    /// move (a verification finished).
    dirty: Mutex<HashSet<String>>,
    /// Unwrapped topic keys by their wrapped form (a recreated topic has a
    /// new one).
    topic_keys: Mutex<HashMap<Vec<u8>, Arc<TopicKey>>>,
    consumed: Mutex<HashMap<String, i64>>,
    /// True once the server is stopping: waiting polls answer at once.
    stopping: watch::Sender<bool>,
    pub stats: ServiceStats,
}

#[derive(Default)]
struct PollMap {
    groups: HashMap<PollKey, Weak<PollGroup>>,
    sweep_at: usize,
}

impl std::fmt::Debug for DatasetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn topic_not_found(topic: &str) -> DatasetError {
    DatasetError::not_found(format!("topic {topic:?} not found"))
}

impl DatasetService {
    /// Builds the service and loads the cache once.
    pub async fn start(
        store: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        master: MasterKey,
        config: ServiceConfig,
    ) -> Result<Arc<Self>> {
        let service = Arc::new(DatasetService {
            store,
            blobs,
            clock,
            master,
            config,
            cache: ArcSwap::from_pointee(HashMap::new()),
            refresh_lock: tokio::sync::Mutex::new(()),
            notifiers: Mutex::new(HashMap::new()),
            polls: Mutex::new(PollMap::default()),
            verified: Mutex::new(HashSet::new()),
            verifying: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
            topic_keys: Mutex::new(HashMap::new()),
            consumed: Mutex::new(HashMap::new()),
            stopping: watch::channel(false).0,
            stats: ServiceStats::default(),
        });
        service.refresh().await?;
        Ok(service)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    // ------------------------------------------------------------------
    // Cache

    /// Reloads every topic whose generation moved (or that appeared or
    /// disappeared) and notifies its waiting polls.
    pub async fn refresh(self: &Arc<Self>) -> Result<()> {
        let _guard = self.refresh_lock.lock().await;
        let started = Instant::now();
        let generations = self.store.generations().await?;
        let current = self.cache.load_full();
        let mut next = HashMap::with_capacity(generations.len());
        let mut changed = Vec::new();
        let dirty: HashSet<String> = std::mem::take(&mut *self.dirty.lock());
        for (name, generation) in generations {
            match current.get(&name) {
                Some(view) if view.topic.generation == generation && !dirty.contains(&name) => {
                    next.insert(name, view.clone());
                }
                _ => {
                    if let Some(snapshot) = self.store.snapshot(&name).await? {
                        let view = self.build_view(snapshot);
                        let moved = current.get(&name).is_none_or(|old| {
                            old.topic.generation != view.topic.generation
                                || old.hidden != view.hidden
                        });
                        if moved {
                            changed.push(name.clone());
                        }
                        next.insert(name, Arc::new(view));
                    }
                }
            }
        }
        for name in current.keys() {
            if !next.contains_key(name) {
                changed.push(name.clone());
            }
        }
        metrics::CACHE_VERSIONS.set(next.values().map(|v| v.versions.len() as i64).sum());
        metrics::HIDDEN_VERSIONS.set(next.values().map(|v| v.hidden.len() as i64).sum());
        self.cache.store(Arc::new(next));
        metrics::CACHE_REFRESH_SECONDS.observe(started.elapsed().as_secs_f64());
        let notifiers = self.notifiers.lock();
        for name in changed {
            if let Some(tx) = notifiers.get(&name) {
                tx.send_modify(|g| *g = g.wrapping_add(1));
            }
        }
        Ok(())
    }

    /// Applies the consistency check: a blob version reaches consumers only
    /// once its blob exists and (unless this process wrote it) hashed to
    /// its checksum. Unverified blobs are verified in the background; the
    /// topic is refreshed again when that finishes.
    fn build_view(self: &Arc<Self>, snapshot: TopicSnapshot) -> TopicView {
        let TopicSnapshot {
            topic,
            versions,
            pins,
            active_rollouts,
        } = snapshot;
        let mut visible = Vec::with_capacity(versions.len());
        let mut hidden = Vec::new();
        for version in versions {
            let DataLocation::Blob(key) = &version.location else {
                visible.push(version);
                continue;
            };
            let id = (key.clone(), version.checksum.clone());
            if self.verified.lock().contains(&id) {
                visible.push(version);
                continue;
            }
            hidden.push(version.version);
            if self.verifying.lock().insert(id.clone()) {
                let topic_key = match self.topic_key(&topic) {
                    Ok(topic_key) => topic_key,
                    Err(error) => {
                        // Stays in `verifying`: nothing changes until the
                        // master key does (a restart).
                        warn!(
                            topic = %topic.name,
                            %error,
                            "cannot unwrap the topic key with datasets.master_key: its blob versions stay hidden"
                        );
                        continue;
                    }
                };
                let service = self.clone();
                let key = key.clone();
                let topic_name = topic.name.clone();
                tokio::spawn(async move {
                    let result = service
                        .blobs
                        .verify(&key, topic_key.as_deref(), version.size, &version.checksum)
                        .await;
                    match result {
                        Ok(()) => {
                            service.verified.lock().insert(id.clone());
                            service.verifying.lock().remove(&id);
                            service.dirty.lock().insert(topic_name);
                            if let Err(error) = service.refresh().await {
                                warn!(%error, "cache refresh after blob verification failed");
                            }
                        }
                        Err(error) if error.code() == ErrorCode::DataLoss => warn!(
                            topic = %version.topic,
                            version = version.version,
                            blob = %key,
                            %error,
                            "version held back from consumers: its blob failed the consistency check"
                        ),
                        Err(error) => {
                            // Not a verdict on the blob (I/O, store
                            // unavailable): try again later.
                            warn!(
                                topic = %version.topic,
                                version = version.version,
                                blob = %key,
                                %error,
                                retry_in_s = VERIFY_RETRY.as_secs(),
                                "blob verification failed; version held back until it succeeds"
                            );
                            tokio::time::sleep(VERIFY_RETRY).await;
                            service.verifying.lock().remove(&id);
                            service.dirty.lock().insert(topic_name);
                        }
                    }
                });
            }
        }
        TopicView {
            topic,
            versions: visible,
            pins,
            active_rollouts,
            hidden,
        }
    }

    fn view(&self, topic: &str) -> Result<Arc<TopicView>> {
        self.cache
            .load()
            .get(topic)
            .cloned()
            .ok_or_else(|| topic_not_found(topic))
    }

    pub fn cached_topic(&self, topic: &str) -> Result<Arc<TopicView>> {
        self.view(topic)
    }

    fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        self.notifiers
            .lock()
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    // ------------------------------------------------------------------
    // Consume

    /// Resolves the answer for a consumer holding `after` right now.
    pub fn answer_now(&self, topic: &str, labels: &Labels, after: u64) -> Result<Option<Answer>> {
        let view = self.view(topic)?;
        // A pin whose version this process has not verified yet holds its
        // consumers where they are (never fall through to the newer version
        // the pin exists to avoid).
        if view.pins.iter().any(|p| {
            view.hidden.contains(&p.version) && p.scope.as_ref().is_none_or(|s| s.matches(labels))
        }) {
            return Ok(None);
        }
        let Some((version, reason)) = resolve(&view.versions, &view.pins, labels) else {
            return Ok(None);
        };
        // A held version that is withdrawn — or gone below the newest one
        // (expired after it was withdrawn) — no longer stands in the
        // consumer's way. A held version above every cached one is news
        // this cache has not seen yet (another consume process answered
        // first): never a reason to move back.
        let newest = view.versions.first().map_or(0, |v| v.version);
        let after_withdrawn = after > 0
            && match view.versions.iter().find(|v| v.version == after) {
                Some(held) => held.withdrawn,
                // Not verified by this process yet: it stands.
                None if view.hidden.contains(&after) => false,
                None => after < newest,
            };
        if !is_news(version, reason, after, after_withdrawn) {
            return Ok(None);
        }
        let reason = if reason == Reason::Latest && version.version < after {
            Reason::Rollback
        } else {
            reason
        };
        Ok(Some(Answer::new(version, reason)))
    }

    /// The newest version matching `labels` created at or before `at_ms`.
    /// Pins are not applied (their history is not kept); scopes and the
    /// withdrawn state are as they are now.
    pub fn latest_at(&self, topic: &str, labels: &Labels, at_ms: i64) -> Result<Option<Answer>> {
        let view = self.view(topic)?;
        Ok(view
            .versions
            .iter()
            .filter(|v| v.created_at_ms <= at_ms)
            .find(|v| v.matches(labels))
            .map(|v| Answer::new(v, Reason::Latest)))
    }

    /// The long-poll: an answer at once if there is news for a consumer
    /// holding `after`, else waits up to `wait` for one (`None` at timeout).
    pub async fn latest(
        self: &Arc<Self>,
        topic: &str,
        labels: &Labels,
        after: u64,
        wait: Duration,
    ) -> Result<Option<Arc<Answer>>> {
        if wait > self.config.max_wait {
            return Err(DatasetError::invalid(format!(
                "wait: {} ms is above the maximum {} ms (datasets.max_wait_ms)",
                wait.as_millis(),
                self.config.max_wait.as_millis()
            )));
        }
        if self.view(topic).is_ok() {
            self.note_consumed(topic);
        }
        let result = self.latest_inner(topic, labels, after, wait).await;
        let outcome = match &result {
            Ok(Some(_)) => "version",
            Ok(None) => "timeout",
            Err(_) => "error",
        };
        metrics::POLLS.with_label_values(&[outcome]).inc();
        result
    }

    async fn latest_inner(
        self: &Arc<Self>,
        topic: &str,
        labels: &Labels,
        after: u64,
        wait: Duration,
    ) -> Result<Option<Arc<Answer>>> {
        if let Some(answer) = self.answer_now(topic, labels, after)? {
            return Ok(Some(Arc::new(answer)));
        }
        if wait.is_zero() {
            return Ok(None);
        }
        let group = self.poll_group(PollKey {
            topic: topic.to_string(),
            labels: labels.clone(),
            after,
        });
        let mut rx = group.rx.clone();
        let mut stopping = self.stopping.subscribe();
        let _waiting = WaitingGauge::enter();
        let waited = tokio::select! {
            waited = tokio::time::timeout(wait, rx.wait_for(Option::is_some)) => match waited {
                Err(_) => Ok(None),
                Ok(Err(_)) => Err(DatasetError::unavailable("dataset service stopping")),
                Ok(Ok(outcome)) => Ok(outcome.clone()),
            },
            // A stopping server answers "nothing new": clients poll again
            // (elsewhere) instead of seeing an error.
            _ = stopping.wait_for(|s| *s) => Ok(None),
        };
        let outcome = waited?;
        drop(group);
        match outcome {
            Some(PollOutcome::Answer(answer)) => Ok(Some(answer)),
            Some(PollOutcome::Gone) => Err(topic_not_found(topic)),
            None => Ok(None),
        }
    }

    fn poll_group(self: &Arc<Self>, key: PollKey) -> Arc<PollGroup> {
        let mut polls = self.polls.lock();
        // A group that already answered is not joined: its answer may be
        // stale for a poll that just found nothing new.
        if let Some(group) = polls
            .groups
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|g| g.rx.borrow().is_none())
        {
            return group;
        }
        if polls.groups.len() >= polls.sweep_at {
            polls.groups.retain(|_, g| g.strong_count() > 0);
            polls.sweep_at = (polls.groups.len() * 2).max(64);
        }
        let (tx, rx) = watch::channel(None);
        // Subscribe before the task evaluates: a change between the
        // caller's check and the task's first evaluation is not lost.
        let mut changes = self.subscribe(&key.topic);
        changes.borrow_and_update();
        let service = Arc::downgrade(self);
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            loop {
                let Some(service) = service.upgrade() else {
                    return;
                };
                service
                    .stats
                    .poll_resolutions
                    .fetch_add(1, Ordering::Relaxed);
                metrics::POLL_RESOLUTIONS.inc();
                match service.answer_now(&task_key.topic, &task_key.labels, task_key.after) {
                    Ok(Some(answer)) => {
                        let _ = tx.send(Some(PollOutcome::Answer(Arc::new(answer))));
                        return;
                    }
                    Err(e) if e.code() == ErrorCode::NotFound => {
                        let _ = tx.send(Some(PollOutcome::Gone));
                        return;
                    }
                    Ok(None) | Err(_) => {}
                }
                drop(service);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        let group = Arc::new(PollGroup {
            rx,
            task: task.abort_handle(),
        });
        metrics::POLL_GROUPS.inc();
        self.stats
            .poll_groups_created
            .fetch_add(1, Ordering::Relaxed);
        polls.groups.insert(key, Arc::downgrade(&group));
        group
    }

    fn note_consumed(&self, topic: &str) {
        let now = self.now();
        let mut consumed = self.consumed.lock();
        match consumed.get_mut(topic) {
            Some(at) => *at = now,
            None => {
                consumed.insert(topic.to_string(), now);
            }
        }
    }

    /// Writes the last-consumed times gathered since the previous flush.
    pub async fn flush_consumed(&self) -> Result<()> {
        let pending: Vec<(String, i64)> = self.consumed.lock().drain().collect();
        for (topic, at) in pending {
            self.store.touch_consumed(&topic, at).await?;
        }
        Ok(())
    }

    /// A version's metadata (cache first, then the store: a version another
    /// process just published may not be cached yet).
    pub async fn version(&self, topic: &str, number: u64) -> Result<Version> {
        if let Ok(view) = self.view(topic) {
            if let Some(v) = view.versions.iter().find(|v| v.version == number) {
                return Ok(v.clone());
            }
            if view.hidden.contains(&number) {
                return Err(DatasetError::unavailable(format!(
                    "topic {topic:?} version {number}: payload not verified yet"
                )));
            }
        }
        self.store.get_version(topic, number).await?.ok_or_else(|| {
            DatasetError::not_found(format!("topic {topic:?} has no version {number}"))
        })
    }

    /// Streams a version's payload (decrypted), or the plaintext byte range
    /// `range` of it.
    pub async fn open_data(
        &self,
        topic: &str,
        number: u64,
        range: Option<Range<u64>>,
    ) -> Result<DataStream> {
        let version = self.version(topic, number).await?;
        let topic_row = match self.view(topic) {
            Ok(view) => view.topic.clone(),
            Err(_) => self
                .store
                .get_topic(topic)
                .await?
                .ok_or_else(|| topic_not_found(topic))?,
        };
        let key = self.topic_key(&topic_row)?;
        let range = range.unwrap_or(0..version.size);
        debug_assert!(range.start <= range.end && range.end <= version.size);
        self.note_consumed(topic);
        let body: BoxStream<'static, Result<Bytes>> = match &version.location {
            DataLocation::Inline => {
                let stored = self
                    .store
                    .inline_data(topic, number)
                    .await?
                    .ok_or_else(|| {
                        DatasetError::data_loss(format!(
                            "topic {topic:?} version {number}: inline payload missing"
                        ))
                    })?;
                let plain = match &key {
                    Some(key) => crypto::decrypt_all(key, &stored)?,
                    None => stored,
                };
                if plain.len() as u64 != version.size {
                    return Err(DatasetError::data_loss(format!(
                        "topic {topic:?} version {number}: inline payload is {} bytes, expected {}",
                        plain.len(),
                        version.size
                    )));
                }
                let slice = Bytes::from(plain).slice(range.start as usize..range.end as usize);
                futures::stream::once(async move { Ok(slice) }).boxed()
            }
            DataLocation::Blob(blob) => {
                self.blobs
                    .read(blob, key.as_deref(), version.size, range.clone())
                    .await?
            }
        };
        let counted = body
            .inspect(|chunk| {
                if let Ok(bytes) = chunk {
                    metrics::DATA_BYTES.inc_by(bytes.len() as u64);
                }
            })
            .boxed();
        Ok(DataStream {
            version,
            range,
            body: counted,
        })
    }

    fn topic_key(&self, topic: &Topic) -> Result<Option<Arc<TopicKey>>> {
        let Some(wrapped) = &topic.wrapped_key else {
            return Ok(None);
        };
        if let Some(key) = self.topic_keys.lock().get(wrapped) {
            return Ok(Some(key.clone()));
        }
        let key = Arc::new(self.master.unwrap_topic_key(wrapped)?);
        self.topic_keys.lock().insert(wrapped.clone(), key.clone());
        Ok(Some(key))
    }

    // ------------------------------------------------------------------
    // Topics

    pub async fn create_topic(
        self: &Arc<Self>,
        request: CreateTopic,
        actor: &str,
    ) -> Result<Topic> {
        validate_topic_name(&request.name)?;
        if request.retention_count == Some(0) {
            return Err(DatasetError::invalid(
                "retention_count: 0 would delete every version; omit it for no count limit",
            ));
        }
        if request.retention_age_ms == Some(0) {
            return Err(DatasetError::invalid(
                "retention_age: 0 would delete every version; omit it for no age limit",
            ));
        }
        let wrapped_key = if request.encrypted {
            Some(self.master.new_topic_key()?.1)
        } else {
            None
        };
        let topic = self
            .store
            .create_topic(
                &NewTopic {
                    name: request.name.clone(),
                    owner: request.owner,
                    description: request.description,
                    retention_count: request.retention_count,
                    retention_age_ms: request.retention_age_ms,
                    wrapped_key,
                },
                NewAudit::new(self.now(), actor, "create_topic", None)
                    .detail(if request.encrypted { "encrypted" } else { "" }),
            )
            .await?;
        self.refresh().await?;
        info!(topic = %topic.name, actor, "dataset topic created");
        Ok(topic)
    }

    pub async fn delete_topic(self: &Arc<Self>, name: &str, actor: &str) -> Result<()> {
        self.store
            .delete_topic(name, NewAudit::new(self.now(), actor, "delete_topic", None))
            .await?;
        self.refresh().await?;
        info!(
            topic = %name,
            actor,
            "dataset topic deleted; the janitor deletes its blobs once they are orphan_grace_ms old"
        );
        Ok(())
    }

    pub async fn get_topic(&self, name: &str) -> Result<Topic> {
        self.store
            .get_topic(name)
            .await?
            .ok_or_else(|| topic_not_found(name))
    }

    pub async fn list_topics(&self) -> Result<Vec<Topic>> {
        self.flush_consumed().await?;
        self.store.list_topics().await
    }

    /// Topics with no publish and no consumption in the last `unused_ms`.
    pub async fn unused_topics(&self, unused_ms: u64) -> Result<Vec<Topic>> {
        let cutoff = self.now().saturating_sub(unused_ms as i64);
        Ok(self
            .list_topics()
            .await?
            .into_iter()
            .filter(|t| {
                let last = t
                    .last_published_at_ms
                    .into_iter()
                    .chain(t.last_consumed_at_ms)
                    .max()
                    .unwrap_or(t.created_at_ms);
                last < cutoff
            })
            .collect())
    }

    /// Whether the topic's payloads are encrypted (for the consume check).
    /// A topic not cached yet (created by another process moments ago) is
    /// looked up in the store; an unknown topic is `None`.
    pub async fn is_encrypted(&self, topic: &str) -> Result<Option<bool>> {
        if let Ok(view) = self.view(topic) {
            return Ok(Some(view.topic.wrapped_key.is_some()));
        }
        Ok(self
            .store
            .get_topic(topic)
            .await?
            .map(|t| t.wrapped_key.is_some()))
    }

    // ------------------------------------------------------------------
    // Publish

    /// Publishes a payload streamed from `body`. Payloads up to
    /// `inline_max_bytes` go into the metadata store; larger ones into the
    /// blob store (streamed, flat memory). The version is committed only
    /// after its payload is durable, then the cache is refreshed so waiting
    /// consumers are answered at once.
    pub async fn publish(
        self: &Arc<Self>,
        topic: &str,
        request: PublishRequest,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
        actor: &str,
    ) -> Result<Version> {
        let started = Instant::now();
        let topic_row = self.get_topic(topic).await?;
        let key = self.topic_key(&topic_row)?;
        let scopes = publish_scopes(&request)?;
        let inline_max = self.config.inline_max_bytes;
        let mut first = BytesMut::new();
        let mut ended = false;
        while first.len() as u64 <= inline_max {
            match body.next().await {
                Some(Ok(chunk)) => first.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(DatasetError::invalid(format!(
                        "body: reading the payload failed: {e}"
                    )))
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let (location, inline_data, checksum, size) = if ended && first.len() as u64 <= inline_max {
            let size = first.len() as u64;
            if let Some(max) = self.config.max_payload_bytes {
                if size > max {
                    return Err(too_large(max));
                }
            }
            let checksum = checksum_of(&first);
            let stored = match &key {
                Some(key) => crypto::encrypt_all(key, &first),
                None => first.to_vec(),
            };
            (DataLocation::Inline, Some(stored), checksum, size)
        } else {
            let written = self
                .blobs
                .put(
                    first.freeze(),
                    body,
                    key.as_deref(),
                    self.config.max_payload_bytes,
                )
                .await?;
            (
                DataLocation::Blob(written.key),
                None,
                written.checksum,
                written.size,
            )
        };
        let kind = match location {
            DataLocation::Inline => "inline",
            DataLocation::Blob(_) => "blob",
        };
        let version = self
            .commit_version(
                topic,
                request.metadata,
                checksum,
                size,
                location,
                inline_data,
                scopes,
                actor,
            )
            .await?;
        self.after_publish(&version).await?;
        metrics::PUBLISHES.with_label_values(&[kind]).inc();
        metrics::PUBLISH_BYTES.inc_by(size);
        metrics::PUBLISH_SECONDS.observe(started.elapsed().as_secs_f64());
        info!(
            topic,
            version = version.version,
            size,
            kind,
            actor,
            "dataset version published"
        );
        Ok(version)
    }

    /// Publishes a new version whose payload already exists: a retained
    /// version of this topic with `checksum`, or (unencrypted topics) a blob
    /// with that content in the blob store.
    pub async fn publish_existing(
        self: &Arc<Self>,
        topic: &str,
        request: PublishRequest,
        checksum: &str,
        actor: &str,
    ) -> Result<Version> {
        let topic_row = self.get_topic(topic).await?;
        let scopes = publish_scopes(&request)?;
        let hex = checksum
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                DatasetError::invalid(format!(
                    "checksum: {checksum:?} is not sha256:<64 hex digits>"
                ))
            })?
            .to_ascii_lowercase();
        let checksum = format!("sha256:{hex}");
        let (location, inline_data, size) =
            if let Some(existing) = self.store.find_by_checksum(topic, &checksum).await? {
                let inline = match existing.location {
                    DataLocation::Inline => self.store.inline_data(topic, existing.version).await?,
                    DataLocation::Blob(_) => None,
                };
                (existing.location, inline, existing.size)
            } else if topic_row.wrapped_key.is_none() {
                let key = blob_key_for(&hex);
                let size = self.blobs.head(&key).await?.ok_or_else(|| {
                    DatasetError::not_found(format!(
                        "checksum: no blob and no version of topic {topic:?} has {checksum}"
                    ))
                })?;
                (DataLocation::Blob(key), None, size)
            } else {
                return Err(DatasetError::not_found(format!(
                    "checksum: no version of encrypted topic {topic:?} has {checksum}"
                )));
            };
        let version = self
            .commit_version(
                topic,
                request.metadata,
                checksum,
                size,
                location,
                inline_data,
                scopes,
                actor,
            )
            .await?;
        // A blob published by another topic or process: verify it like any
        // foreign blob before consumers see it (build_view does).
        self.refresh().await?;
        metrics::PUBLISHES.with_label_values(&["existing"]).inc();
        info!(
            topic,
            version = version.version,
            actor,
            "dataset version published from an existing payload"
        );
        Ok(version)
    }

    /// Stores a version whose payload is already durable.
    #[allow(clippy::too_many_arguments)]
    async fn commit_version(
        &self,
        topic: &str,
        metadata: BTreeMap<String, String>,
        checksum: String,
        size: u64,
        location: DataLocation,
        inline_data: Option<Vec<u8>>,
        scopes: Vec<Scope>,
        actor: &str,
    ) -> Result<Version> {
        self.store
            .publish(
                topic,
                NewVersion {
                    created_at_ms: self.now(),
                    created_by: actor.to_string(),
                    metadata,
                    checksum,
                    size,
                    location,
                    inline_data,
                    scopes,
                },
            )
            .await
    }

    async fn after_publish(self: &Arc<Self>, version: &Version) -> Result<()> {
        if let DataLocation::Blob(key) = &version.location {
            // This process wrote and hashed the blob just now.
            self.verified
                .lock()
                .insert((key.clone(), version.checksum.clone()));
        }
        self.refresh().await
    }

    /// Refuses changes of audience for a withdrawn version: an aborted
    /// rollout's version stays withdrawn (publish it again instead).
    async fn ensure_not_withdrawn(&self, topic: &str, number: u64) -> Result<()> {
        let version = self
            .store
            .get_version(topic, number)
            .await?
            .ok_or_else(|| {
                DatasetError::not_found(format!("topic {topic:?} has no version {number}"))
            })?;
        if version.withdrawn {
            return Err(DatasetError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "version {number} of topic {topic:?} was withdrawn by an aborted rollout; publish it again (checksum={}) to roll it out",
                    version.checksum
                ),
            ));
        }
        Ok(())
    }

    pub async fn list_versions(&self, topic: &str) -> Result<Vec<Version>> {
        let versions = self.store.list_versions(topic).await?;
        if versions.is_empty() && self.store.get_topic(topic).await?.is_none() {
            return Err(topic_not_found(topic));
        }
        Ok(versions)
    }

    pub async fn add_scopes(
        self: &Arc<Self>,
        topic: &str,
        number: u64,
        scopes: Vec<Scope>,
        actor: &str,
    ) -> Result<Version> {
        if scopes.is_empty() {
            return Err(DatasetError::invalid(
                "scopes: at least one scope is required",
            ));
        }
        self.ensure_not_withdrawn(topic, number).await?;
        let listed: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        let version = self
            .store
            .add_scopes(
                topic,
                number,
                &scopes,
                NewAudit::new(self.now(), actor, "add_scopes", Some(number))
                    .detail(listed.join(",")),
            )
            .await?;
        self.refresh().await?;
        Ok(version)
    }

    // ------------------------------------------------------------------
    // Pins

    pub async fn pin(
        self: &Arc<Self>,
        topic: &str,
        scope: Option<Scope>,
        number: u64,
        actor: &str,
    ) -> Result<Pin> {
        let detail = scope.as_ref().map_or("topic".to_string(), Scope::to_string);
        let pin = self
            .store
            .pin(
                topic,
                scope.as_ref(),
                number,
                NewAudit::new(self.now(), actor, "pin", Some(number)).detail(detail),
            )
            .await?;
        self.refresh().await?;
        Ok(pin)
    }

    pub async fn unpin(
        self: &Arc<Self>,
        topic: &str,
        scope: Option<Scope>,
        actor: &str,
    ) -> Result<()> {
        let detail = scope.as_ref().map_or("topic".to_string(), Scope::to_string);
        self.store
            .unpin(
                topic,
                scope.as_ref(),
                NewAudit::new(self.now(), actor, "unpin", None).detail(detail),
            )
            .await?;
        self.refresh().await
    }

    // ------------------------------------------------------------------
    // Rollouts

    pub async fn start_rollout(
        self: &Arc<Self>,
        topic: &str,
        number: u64,
        stages: Vec<RolloutStage>,
        actor: &str,
    ) -> Result<Rollout> {
        if stages.is_empty() || stages.len() > 64 {
            return Err(DatasetError::invalid(format!(
                "stages: {} stages given, expected 1 to 64",
                stages.len()
            )));
        }
        self.ensure_not_withdrawn(topic, number).await?;
        let now = self.now();
        let described: Vec<String> = stages
            .iter()
            .map(|s| format!("{}+{}ms", s.scope, s.delay_ms))
            .collect();
        let rollout = self
            .store
            .create_rollout(
                topic,
                number,
                &stages,
                now.saturating_add(stages[0].delay_ms as i64),
                NewAudit::new(now, actor, "rollout_start", Some(number))
                    .detail(described.join(" → ")),
            )
            .await?;
        info!(
            topic,
            version = number,
            rollout = rollout.id,
            actor,
            "rollout started"
        );
        self.drive_rollouts().await?;
        self.refresh().await?;
        self.rollout(rollout.id).await
    }

    pub async fn rollout(&self, id: u64) -> Result<Rollout> {
        self.store
            .get_rollout(id)
            .await?
            .ok_or_else(|| DatasetError::not_found(format!("rollout {id} not found")))
    }

    pub async fn list_rollouts(&self, topic: &str) -> Result<Vec<Rollout>> {
        self.store.list_rollouts(topic).await
    }

    /// Applies every due stage of every running rollout. Called by the
    /// driver loop every `rollout_tick`, and by tests with a manual clock.
    /// Returns how many stages were applied.
    pub async fn drive_rollouts(self: &Arc<Self>) -> Result<usize> {
        let mut applied = 0;
        for rollout in self.store.active_rollouts().await? {
            let mut current = rollout;
            while current.state == RolloutState::Running
                && current.next_at_ms.is_some_and(|at| at <= self.now())
            {
                current = match self.apply_next_stage(&current, "system").await {
                    Ok(next) => next,
                    Err(e) if e.code() == ErrorCode::FailedPrecondition => break,
                    Err(e) => return Err(e),
                };
                applied += 1;
            }
        }
        if applied > 0 {
            self.refresh().await?;
        }
        Ok(applied)
    }

    async fn apply_next_stage(&self, rollout: &Rollout, actor: &str) -> Result<Rollout> {
        let now = self.now();
        let index = rollout.next_stage;
        let Some(stage) = rollout.stages.get(index) else {
            return Err(DatasetError::new(
                ErrorCode::FailedPrecondition,
                format!("rollout {} has no stage left", rollout.id),
            ));
        };
        let mut next = rollout.clone();
        next.next_stage = index + 1;
        next.updated_at_ms = now;
        match rollout.stages.get(index + 1) {
            Some(following) => {
                let at = now.saturating_add(following.delay_ms as i64);
                if rollout.state == RolloutState::Paused {
                    next.remaining_ms = Some(following.delay_ms);
                    next.next_at_ms = None;
                } else {
                    next.next_at_ms = Some(at);
                }
            }
            None => {
                next.state = RolloutState::Completed;
                next.next_at_ms = None;
                next.remaining_ms = None;
            }
        }
        let saved = self
            .store
            .save_rollout(
                &next,
                &RolloutEffect {
                    add_scope: Some(stage.scope.clone()),
                    withdraw: false,
                },
                NewAudit::new(now, actor, "rollout_stage", Some(rollout.version)).detail(format!(
                    "rollout {} stage {}/{}: {}",
                    rollout.id,
                    index + 1,
                    rollout.stages.len(),
                    stage.scope
                )),
            )
            .await?;
        metrics::ROLLOUT_STAGES.inc();
        info!(
            topic = %rollout.topic,
            version = rollout.version,
            rollout = rollout.id,
            stage = index + 1,
            scope = %stage.scope,
            "rollout stage applied"
        );
        Ok(saved)
    }

    /// `pause`, `resume`, `abort` or `fast_forward` (apply the next stage
    /// now). Wrong-state transitions are `FailedPrecondition`.
    pub async fn control_rollout(
        self: &Arc<Self>,
        id: u64,
        action: &str,
        actor: &str,
    ) -> Result<Rollout> {
        // Compare-and-set: retry if the driver moved the rollout meanwhile.
        for _ in 0..5 {
            let rollout = self.rollout(id).await?;
            let result = self.control_once(&rollout, action, actor).await;
            match result {
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
                Ok(saved) => {
                    self.refresh().await?;
                    return Ok(saved);
                }
            }
        }
        Err(DatasetError::unavailable(format!(
            "rollout {id}: kept changing concurrently; retry"
        )))
    }

    async fn control_once(&self, rollout: &Rollout, action: &str, actor: &str) -> Result<Rollout> {
        let now = self.now();
        let wrong_state = || {
            DatasetError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "rollout {}: cannot {action} a {} rollout",
                    rollout.id,
                    rollout.state.as_str()
                ),
            )
        };
        let mut next = rollout.clone();
        next.updated_at_ms = now;
        let audit = |name: &str| {
            NewAudit::new(now, actor, name, Some(rollout.version))
                .detail(format!("rollout {}", rollout.id))
        };
        match action {
            "pause" => {
                if rollout.state != RolloutState::Running {
                    return Err(wrong_state());
                }
                next.state = RolloutState::Paused;
                next.remaining_ms = rollout
                    .next_at_ms
                    .map(|at| at.saturating_sub(now).max(0) as u64);
                next.next_at_ms = None;
                self.store
                    .save_rollout(&next, &RolloutEffect::default(), audit("rollout_pause"))
                    .await
            }
            "resume" => {
                if rollout.state != RolloutState::Paused {
                    return Err(wrong_state());
                }
                next.state = RolloutState::Running;
                next.next_at_ms =
                    Some(now.saturating_add(rollout.remaining_ms.unwrap_or(0) as i64));
                next.remaining_ms = None;
                let saved = self
                    .store
                    .save_rollout(&next, &RolloutEffect::default(), audit("rollout_resume"))
                    .await?;
                Ok(saved)
            }
            "abort" => {
                if !rollout.state.is_active() {
                    return Err(wrong_state());
                }
                next.state = RolloutState::Aborted;
                next.next_at_ms = None;
                next.remaining_ms = None;
                let saved = self
                    .store
                    .save_rollout(
                        &next,
                        &RolloutEffect {
                            add_scope: None,
                            withdraw: true,
                        },
                        audit("rollout_abort"),
                    )
                    .await?;
                warn!(topic = %rollout.topic, version = rollout.version, rollout = rollout.id, actor, "rollout aborted: version withdrawn");
                Ok(saved)
            }
            "fast_forward" | "fast-forward" => {
                if !rollout.state.is_active() {
                    return Err(wrong_state());
                }
                self.apply_next_stage(rollout, actor).await
            }
            other => Err(DatasetError::invalid(format!(
                "action: {other:?} is not pause, resume, abort or fast_forward"
            ))),
        }
    }

    // ------------------------------------------------------------------
    // Janitor

    /// Deletes versions beyond their topic's retention (never pinned ones,
    /// never one under an active rollout, never the newest of an audience),
    /// then every blob no version references: at once for blobs of versions
    /// deleted now, after `orphan_grace_ms` for others (a publish uploads
    /// its blob before it commits the version).
    pub async fn run_janitor(self: &Arc<Self>) -> Result<JanitorReport> {
        let now = self.now();
        let mut report = JanitorReport::default();
        let mut freed = HashSet::new();
        for topic in self.store.list_topics().await? {
            if topic.retention_count.is_none() && topic.retention_age_ms.is_none() {
                continue;
            }
            let Some(snapshot) = self.store.snapshot(&topic.name).await? else {
                continue;
            };
            let expired = expired_versions(
                &snapshot.topic,
                &snapshot.versions,
                &snapshot.pins,
                &snapshot.active_rollouts,
                now,
            );
            if expired.is_empty() {
                continue;
            }
            let deleted = self
                .store
                .delete_versions(
                    &topic.name,
                    &expired,
                    NewAudit::new(now, "janitor", "expire", None).detail("retention"),
                )
                .await?;
            for version in deleted {
                if let DataLocation::Blob(key) = &version.location {
                    freed.insert(key.clone());
                }
                report
                    .expired_versions
                    .push((version.topic.clone(), version.version));
            }
        }
        let referenced = self.store.referenced_blobs().await?;
        for blob in self.blobs.list().await? {
            if referenced.contains(&blob.key) {
                continue;
            }
            let old_enough = now.saturating_sub(blob.modified_ms) > self.config.orphan_grace_ms;
            if freed.contains(&blob.key) || old_enough {
                self.blobs.delete(&blob.key).await?;
                // Content uploaded again later is a new file to verify.
                self.verified.lock().retain(|(key, _)| key != &blob.key);
                report.deleted_blobs.push(blob.key);
            }
        }
        // Uploads abandoned by a crash; an upload in progress keeps touching
        // its temporary, so the orphan grace period spares it.
        report.swept_temporaries = self
            .blobs
            .sweep_temporaries(Duration::from_millis(
                self.config.orphan_grace_ms.max(0) as u64
            ))
            .await?;
        metrics::JANITOR_EXPIRED.inc_by(report.expired_versions.len() as u64);
        metrics::JANITOR_BLOBS.inc_by(report.deleted_blobs.len() as u64);
        if !report.expired_versions.is_empty() || !report.deleted_blobs.is_empty() {
            info!(
                versions = report.expired_versions.len(),
                blobs = report.deleted_blobs.len(),
                "dataset janitor pass"
            );
            self.refresh().await?;
        }
        Ok(report)
    }

    // ------------------------------------------------------------------
    // Background loops

    /// Spawns the cache refresher (always), and with `publish_role` the
    /// rollout driver and the janitor; all stop when `stop` turns true.
    pub fn spawn_background(
        self: &Arc<Self>,
        publish_role: bool,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        {
            let service = self.clone();
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                service.stopping.send_replace(true);
            }));
        }
        tasks.push(self.spawn_loop(
            "cache refresh",
            self.config.cache_refresh,
            stop.clone(),
            |s| Box::pin(async move { s.refresh().await }),
        ));
        tasks.push(self.spawn_loop(
            "consumed flush",
            self.config.consumed_flush,
            stop.clone(),
            |s| Box::pin(async move { s.flush_consumed().await }),
        ));
        if publish_role {
            tasks.push(self.spawn_loop(
                "rollout driver",
                self.config.rollout_tick,
                stop.clone(),
                |s| Box::pin(async move { s.drive_rollouts().await.map(|_| ()) }),
            ));
            tasks.push(
                self.spawn_loop("janitor", self.config.janitor_interval, stop, |s| {
                    Box::pin(async move { s.run_janitor().await.map(|_| ()) })
                }),
            );
        }
        tasks
    }

    fn spawn_loop(
        self: &Arc<Self>,
        name: &'static str,
        every: Duration,
        mut stop: watch::Receiver<bool>,
        step: fn(Arc<Self>) -> futures::future::BoxFuture<'static, Result<()>>,
    ) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if let Err(error) = step(service.clone()).await {
                    warn!(task = name, %error, "dataset background task failed; retrying next tick");
                }
            }
            if let Err(error) = service.flush_consumed().await {
                debug!(%error, "final consumed flush failed");
            }
        })
    }
}

/// Counts a held long-poll in `riffle_datasets_polls_waiting` until
/// dropped (also when the request is cancelled).
struct WaitingGauge;

impl WaitingGauge {
    fn enter() -> WaitingGauge {
        metrics::POLLS_WAITING.inc();
        WaitingGauge
    }
}

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        metrics::POLLS_WAITING.dec();
    }
}

fn too_large(max: u64) -> DatasetError {
    DatasetError::new(
        ErrorCode::PayloadTooLarge,
        format!("body: payload exceeds datasets.max_payload_bytes ({max} bytes)"),
    )
}

fn publish_scopes(request: &PublishRequest) -> Result<Vec<Scope>> {
    if request.staged {
        if !request.scopes.is_empty() {
            return Err(DatasetError::invalid(
                "staged: a staged publish takes no scope (its rollout or a later scope change adds them)",
            ));
        }
        return Ok(Vec::new());
    }
    if request.scopes.is_empty() {
        return Ok(vec![Scope::global()]);
    }
    let mut scopes = Vec::with_capacity(request.scopes.len());
    for scope in &request.scopes {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    Ok(scopes)
}
