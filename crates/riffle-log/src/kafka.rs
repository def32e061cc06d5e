//! The Kafka backend of the [`EventBus`] traits (feature `kafka`), on
//! rdkafka with its bundled librdkafka. docs/adr/0001 maps every call to
//! its Kafka counterpart; docs/adr/0003 says how exactly-once holds on it.
//!
//! * **Producer**: one idempotent producer (`enable.idempotence=true`,
//!   `acks=all`) for the process; `append` sends every record of the batch
//!   to the named partition and returns once all are acknowledged. The
//!   partition is always explicit — keys are routed by the caller with
//!   Kafka's murmur2 ([`crate::partition_for_key`]), which is what Kafka's
//!   Java client does too, so a key lands on the same partition number as
//!   on the embedded log. The records of one `append` stay in order, but
//!   records of other producers (other `riffle` processes) can land between
//!   them: the returned offset is the first record's, and the rest are
//!   consecutive only when this process is the partition's one producer.
//! * **Admin**: topics through the admin API (`retention.ms`,
//!   `retention.bytes`, `segment.bytes` as topic configs); offsets through
//!   watermarks and `offsetsForTimes`; `fetch` through a dedicated
//!   group-less consumer assigned at the offset.
//! * **Consumers**: `Subscription::Topics` joins the consumer group (Kafka
//!   decides the assignment); `Subscription::Assign` reads fixed partitions
//!   without membership. Auto-commit is off: offsets move only on `commit`.
//! * **Transactions**: by default (`bus.kafka.transactions = false`) a
//!   transaction buffers its batches and offsets, appends the batches on
//!   commit and then commits the offsets (as a group-less "simple" commit).
//!   That is not atomic across a crash: output can be appended without its
//!   offsets. Exactly-once then rests on the pipeline (checkpoints hold
//!   state + offsets, replays are deterministic, every record is an
//!   absolute value keyed by (window, key), sinks upsert). With
//!   `transactions = true` the same commit runs inside a Kafka transaction
//!   (`transactional.id` per task, `sendOffsetsToTransaction`), which also
//!   fences a zombie task.
//! * **Ownership groups** ([`EventBus::join_ownership_group`]): a consumer
//!   that joins the group with the cooperative-sticky assignor on its own
//!   thread, pauses everything it is given, and reports assignments and
//!   revocations; a revocation blocks the rebalance until the owner has
//!   checkpointed and released the partitions.
//!
//! Blocking librdkafka calls (metadata, watermarks, committed offsets,
//! transactions) run on the blocking thread pool.
//!
//! **One assignment per consumer handle.** The bundled librdkafka (2.12.1)
//! aborts the process (`rd_kafka_assignment_partition_stopped: Assertion
//! 'rktp->rktp_started' failed`, librdkafka issue 5573) when a partition is
//! removed from a consumer's assignment a second time before the fetcher
//! stop of the first removal has been served: unassign, assign the same
//! partition again, unassign — which is what re-assigning on every seek
//! and an assign/unassign per `fetch` did. So no handle is ever assigned
//! twice: a consumer of fixed partitions assigns at its first poll (seeks
//! before it only move the start), a later seek replaces the handle, and
//! the `fetch` consumer keeps its assignment while reads go on where the
//! last one stopped and is replaced for any other partition or offset.
//! A handle is released with one unassign before it is destroyed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset as KOffset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::bus::{
    Admin, Consumer, ConsumerConfig, EventBus, FetchedBatch, Membership, Offset, OffsetReset,
    OwnershipChange, PartitionInfo, Producer, StartPosition, Subscription, TopicConfig,
    TopicDescription, TopicMetadata, TopicPartition, Transaction,
};
use crate::error::{BusError, Result};
use crate::format::{RecordBatch, RecordSet};

/// How the Kafka backend connects (from `[bus.kafka]`).
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub brokers: String,
    pub transactions: bool,
    pub replication_factor: i32,
    pub request_timeout: Duration,
    /// Passed to every librdkafka client.
    pub properties: BTreeMap<String, String>,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            transactions: false,
            replication_factor: 1,
            request_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Settings of every consumer: no auto-commit, no auto-created topics.
    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false");
        config
    }
}

fn backend(context: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Backend(format!("kafka {context}: {error}"))
}

fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(BusError::InvalidArgument(format!(
            "topic name {name:?}: Kafka allows 1 to 249 characters of [A-Za-z0-9._-]"
        )))
    }
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Backend(format!("kafka call did not complete: {e}")))?
}

/// The Kafka bus. Cheap to share behind an `Arc`.
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Group-less consumer for metadata, watermarks and offset look-ups.
    meta: BaseConsumer,
    /// Group-less consumer for `Admin::fetch`, one fetch at a time.
    fetcher: Arc<tokio::sync::Mutex<Fetcher>>,
    partitions: Mutex<HashMap<String, u32>>,
    /// Offset committers per group (never subscribe, so their commits are
    /// "simple" commits that any group accepts while it has no members).
    committers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Transactional producers per transactional id (transactions on).
    txn_producers: Mutex<HashMap<String, Arc<FutureProducer>>>,
}

impl KafkaBus {
    /// Connects (lazily: librdkafka connects in the background) and checks
    /// that the brokers answer a metadata request.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaBus> {
        let mut producer_config = options.client_config();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2");
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| backend("producer", e))?;
        let admin: AdminClient<DefaultClientContext> = options
            .client_config()
            .create()
            .map_err(|e| backend("admin client", e))?;
        let meta: BaseConsumer = options
            .consumer_config("riffle.meta")
            .create()
            .map_err(|e| backend("metadata consumer", e))?;
        let bus = KafkaBus {
            inner: Arc::new(Inner {
                options,
                producer,
                admin,
                meta,
                fetcher: Arc::new(tokio::sync::Mutex::new(Fetcher::default())),
                partitions: Mutex::new(HashMap::new()),
                committers: Mutex::new(HashMap::new()),
                txn_producers: Mutex::new(HashMap::new()),
            }),
        };
        let inner = bus.inner.clone();
        blocking(move || {
            inner
                .meta
                .fetch_metadata(None, inner.options.request_timeout)
                .map(|_| ())
                .map_err(|e| {
                    backend(
                        &format!("brokers {:?} unreachable", inner.options.brokers),
                        e,
                    )
                })
        })
        .await?;
        Ok(bus)
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.inner.options
    }
}

impl KafkaBus {
    /// [`Inner::check_partition`], answered from the metadata cache without
    /// the blocking pool when it can be (every append passes here).
    async fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let cached = self.inner.partitions.lock().get(topic).copied();
        if cached.is_some_and(|count| partition < count) {
            return Ok(());
        }
        let inner = self.inner.clone();
        let topic = topic.to_string();
        blocking(move || inner.check_partition(&topic, partition)).await
    }
}

impl Inner {
    fn timeout(&self) -> Duration {
        self.options.request_timeout
    }

    /// The partition count of a topic from fresh metadata.
    fn fetch_partition_count(&self, topic: &str) -> Result<u32> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.timeout())
            .map_err(|e| backend("metadata", e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(BusError::TopicNotFound(topic.to_string()));
        };
        if let Some(error) = t.error() {
            let code = RDKafkaErrorCode::from(error);
            if matches!(
                code,
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            ) {
                return Err(BusError::TopicNotFound(topic.to_string()));
            }
            return Err(backend(&format!("metadata of {topic:?}"), code));
        }
        if t.partitions().is_empty() {
            return Err(BusError::TopicNotFound(topic.to_string()));
        }
        let count = t.partitions().len() as u32;
        self.partitions.lock().insert(topic.to_string(), count);
        Ok(count)
    }

    fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(count) = self.partitions.lock().get(topic) {
            return Ok(*count);
        }
        self.fetch_partition_count(topic)
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<()> {
        let mut count = self.partition_count(topic)?;
        if partition >= count {
            // The topic may have grown since it was cached.
            count = self.fetch_partition_count(topic)?;
        }
        if partition >= count {
            return Err(BusError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
                count,
            });
        }
        Ok(())
    }

    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64)> {
        self.check_partition(topic, partition)?;
        let (low, high) = self
            .meta
            .fetch_watermarks(topic, partition as i32, self.timeout())
            .map_err(|e| backend(&format!("watermarks of {topic}/{partition}"), e))?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }

    fn committer(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        if let Some(c) = self.committers.lock().get(group) {
            return Ok(c.clone());
        }
        let consumer: BaseConsumer = self
            .options
            .consumer_config(group)
            .create()
            .map_err(|e| backend("offset committer", e))?;
        let consumer = Arc::new(consumer);
        self.committers
            .lock()
            .insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }

    fn commit_sync(&self, group: &str, offsets: &[(TopicPartition, Offset)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let tpl = offsets_list(offsets)?;
        self.committer(group)?
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| backend(&format!("commit of group {group:?}"), e))
    }

    fn txn_producer(&self, id: &str) -> Result<Arc<FutureProducer>> {
        if let Some(p) = self.txn_producers.lock().get(id) {
            return Ok(p.clone());
        }
        let mut config = self.options.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("transactional.id", id);
        let producer: FutureProducer = config
            .create()
            .map_err(|e| backend("transactional producer", e))?;
        // Fences any older producer with the same id (a zombie task).
        producer
            .init_transactions(self.timeout())
            .map_err(|e| backend(&format!("init transactions of {id:?}"), e))?;
        let producer = Arc::new(producer);
        self.txn_producers
            .lock()
            .insert(id.to_string(), producer.clone());
        Ok(producer)
    }
}

/// The partition's end offset as of the consumer's last fetch response
/// (librdkafka caches it; no broker round trip), 0 when unknown.
fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: u32,
) -> u64 {
    let Ok(name) = std::ffi::CString::new(topic) else {
        return 0;
    };
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the name
    // is a NUL-terminated string that outlives the call; low and high are
    // valid out-pointers. The call only reads librdkafka's cached offsets.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            name.as_ptr(),
            partition as i32,
            &mut low,
            &mut high,
        )
    };
    if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
        high as u64
    } else {
        0
    }
}

fn offsets_list(offsets: &[(TopicPartition, Offset)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in offsets {
        tpl.add_partition_offset(
            &tp.topic,
            tp.partition as i32,
            KOffset::Offset(*offset as i64),
        )
        .map_err(|e| backend("offset list", e))?;
    }
    Ok(tpl)
}

/// Sends every record of `batch` to one partition through `producer` and
/// returns the offset of the first once all are acknowledged.
async fn send_batch(
    producer: &FutureProducer,
    topic: &str,
    partition: u32,
    batch: &RecordBatch,
) -> Result<Offset> {
    let mut deliveries = Vec::with_capacity(batch.len());
    for record in batch.iter() {
        let mut headers = OwnedHeaders::new();
        for (name, value) in record.headers() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut future = FutureRecord::to(topic)
            .partition(partition as i32)
            .payload(record.value)
            .timestamp(record.timestamp)
            .headers(headers);
        if let Some(key) = record.key {
            future = future.key(key);
        }
        let mut pending = future;
        loop {
            match producer.send_result(pending) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: let librdkafka drain it.
                    pending = back;
                    producer.poll(Duration::from_millis(0));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(backend(&format!("produce to {topic}"), error)),
            }
        }
    }
    let mut first: Option<Offset> = None;
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(d)) => {
                let offset = d.offset.max(0) as u64;
                first = Some(first.map_or(offset, |f| f.min(offset)));
            }
            Ok(Err((error, _))) => {
                return Err(backend(&format!("produce to {topic}/{partition}"), error))
            }
            Err(_) => return Err(backend("produce", "delivery cancelled")),
        }
    }
    first.ok_or_else(|| BusError::InvalidArgument("empty record batch".into()))
}

/// Consecutive records of one partition: (first offset, records).
type Run = (u64, RecordBatch);

/// Collects polled messages into per-partition record sets. Offsets within
/// a partition may jump (transaction markers, compaction); each run of
/// consecutive offsets becomes one frame.
#[derive(Default)]
struct Collector {
    partitions: BTreeMap<(Arc<str>, u32), Vec<Run>>,
    bytes: usize,
    names: HashMap<String, Arc<str>>,
}

impl Collector {
    fn push<M: Message>(&mut self, message: &M) -> Result<()> {
        let topic = message.topic();
        let name = match self.names.get(topic) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(topic);
                self.names.insert(topic.to_string(), n.clone());
                n
            }
        };
        let offset = message.offset().max(0) as u64;
        let runs = self
            .partitions
            .entry((name, message.partition() as u32))
            .or_default();
        let continues = runs
            .last()
            .is_some_and(|(base, b)| *base + b.len() as u64 == offset);
        if !continues {
            runs.push((offset, RecordBatch::new()));
        }
        let batch = &mut runs.last_mut().expect("a run exists").1;
        let value = message.payload().unwrap_or_default();
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                headers.push((header.key, header.value.unwrap_or_default()));
            }
        }
        batch.push_with_headers(message.key(), value, timestamp, &headers)?;
        self.bytes += value.len() + message.key().map_or(0, |k| k.len()) + 16;
        Ok(())
    }

    fn finish(self, high: impl Fn(&str, u32) -> u64) -> Vec<FetchedBatch> {
        self.partitions
            .into_iter()
            .map(|((topic, partition), runs)| {
                let records = RecordSet::from_batches(runs.iter().map(|(base, b)| (*base, b)));
                let next = records.next_offset().unwrap_or(0);
                FetchedBatch {
                    high_watermark: high(&topic, partition).max(next),
                    topic,
                    partition,
                    records,
                }
            })
            .collect()
    }
}

#[async_trait]
impl Producer for KafkaBus {
    async fn append(&self, topic: &str, partition: u32, batch: RecordBatch) -> Result<Offset> {
        if batch.is_empty() {
            return Err(BusError::InvalidArgument("empty record batch".into()));
        }
        self.check_partition(topic, partition).await?;
        send_batch(&self.inner.producer, topic, partition, &batch).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(count) = self.inner.partitions.lock().get(topic) {
            return Ok(*count);
        }
        let inner = self.inner.clone();
        let topic = topic.to_string();
        blocking(move || inner.fetch_partition_count(&topic)).await
    }
}

fn topic_config_of(entries: &[rdkafka::admin::ConfigEntry], partitions: u32) -> TopicConfig {
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
    };
    TopicConfig {
        partitions,
        retention_ms: get("retention.ms").unwrap_or(-1),
        retention_bytes: get("retention.bytes").unwrap_or(-1),
        segment_bytes: get("segment.bytes").map_or(1 << 30, |v| v.max(4096) as u64),
    }
}

#[async_trait]
impl Admin for KafkaBus {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicMetadata> {
        check_name(name)?;
        config.validate()?;
        let retention_ms = config.retention_ms.to_string();
        let retention_bytes = config.retention_bytes.to_string();
        let segment_bytes = config.segment_bytes.to_string();
        let topic = NewTopic::new(
            name,
            config.partitions as i32,
            TopicReplication::Fixed(self.inner.options.replication_factor),
        )
        .set("retention.ms", &retention_ms)
        .set("retention.bytes", &retention_bytes)
        .set("segment.bytes", &segment_bytes);
        let options = AdminOptions::new().operation_timeout(Some(self.inner.timeout()));
        let results = self
            .inner
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| backend("create topic", e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    return Err(BusError::TopicExists(name.to_string()))
                }
                Err((_, RDKafkaErrorCode::InvalidTopic)) => {
                    return Err(BusError::InvalidArgument(format!("topic name {name:?}")))
                }
                Err((_, code)) => return Err(backend(&format!("create topic {name:?}"), code)),
            }
        }
        // Metadata reaches every broker shortly after creation.
        let deadline = std::time::Instant::now() + self.inner.timeout();
        loop {
            let inner = self.inner.clone();
            let topic = name.to_string();
            match blocking(move || inner.fetch_partition_count(&topic)).await {
                Ok(count) if count == config.partitions => break,
                Ok(_) | Err(BusError::TopicNotFound(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(count) => {
                    return Err(backend(
                        &format!("create topic {name:?}"),
                        format!("metadata shows {count} partitions"),
                    ))
                }
                Err(error) => return Err(error),
            }
        }
        Ok(TopicMetadata {
            name: name.to_string(),
            config,
        })
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        // The fetch handle stays assigned between fetches; unassign it from
        // a topic about to disappear. Left assigned, it keeps fetching the
        // deleted topic, and a broker answering that with a zero topic id
        // and a "current leader" tag (tansu does) makes librdkafka 2.12
        // look the topic up by a NULL name: a segfault, not an error. The
        // lock is held until the topic is gone, so no fetch reassigns it.
        let mut fetcher = self.inner.fetcher.clone().lock_owned().await;
        if fetcher.consumer.is_some() && fetcher.at.as_ref().is_none_or(|(t, _, _)| t == name) {
            fetcher = blocking(move || {
                fetcher.release();
                Ok(fetcher)
            })
            .await?;
        }
        let options = AdminOptions::new().operation_timeout(Some(self.inner.timeout()));
        let results = self
            .inner
            .admin
            .delete_topics(&[name], &options)
            .await
            .map_err(|e| backend("delete topic", e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    return Err(BusError::TopicNotFound(name.to_string()))
                }
                Err((_, code)) => return Err(backend(&format!("delete topic {name:?}"), code)),
            }
        }
        self.inner.partitions.lock().remove(name);
        drop(fetcher);
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<TopicMetadata>> {
        let inner = self.inner.clone();
        let topics: Vec<(String, u32)> = blocking(move || {
            let metadata = inner
                .meta
                .fetch_metadata(None, inner.timeout())
                .map_err(|e| backend("metadata", e))?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
                .map(|t| (t.name().to_string(), t.partitions().len() as u32))
                .collect())
        })
        .await?;
        let mut out = Vec::with_capacity(topics.len());
        for (name, partitions) in topics {
            let config = self.topic_config(&name, partitions).await;
            out.push(TopicMetadata { name, config });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let inner = self.inner.clone();
        let topic = name.to_string();
        let partitions = blocking(move || {
            let count = inner.fetch_partition_count(&topic)?;
            let mut out = Vec::with_capacity(count as usize);
            for partition in 0..count {
                let (start, end) = inner.watermarks(&topic, partition)?;
                out.push(PartitionInfo {
                    partition,
                    start_offset: start,
                    end_offset: end,
                    size_bytes: 0,
                });
            }
            Ok(out)
        })
        .await?;
        let config = self.topic_config(name, partitions.len() as u32).await;
        Ok(TopicDescription {
            metadata: TopicMetadata {
                name: name.to_string(),
                config,
            },
            partitions,
        })
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchedBatch> {
        let inner = self.inner.clone();
        let mut fetcher = self.inner.fetcher.clone().lock_owned().await;
        let topic = topic.to_string();
        blocking(move || {
            let (start, end) = inner.watermarks(&topic, partition)?;
            if offset < start || offset > end {
                return Err(BusError::OffsetOutOfRange {
                    topic,
                    partition,
                    offset,
                    start,
                    end,
                });
            }
            let name: Arc<str> = Arc::from(topic.as_str());
            if offset == end {
                return Ok(FetchedBatch {
                    topic: name,
                    partition,
                    records: RecordSet::default(),
                    high_watermark: end,
                });
            }
            let positioned = fetcher
                .at
                .as_ref()
                .is_some_and(|(t, p, next)| *t == topic && *p == partition && *next == offset);
            if !positioned {
                // A new handle for a new position: see "One assignment per
                // consumer handle" in the module docs.
                fetcher.release();
                let consumer: BaseConsumer = inner
                    .options
                    .consumer_config("riffle.fetch")
                    .create()
                    .map_err(|e| backend("fetch consumer", e))?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, partition as i32, KOffset::Offset(offset as i64))
                    .map_err(|e| backend("fetch", e))?;
                consumer
                    .assign(&tpl)
                    .map_err(|e| backend("fetch assign", e))?;
                fetcher.consumer = Some(consumer);
            }
            fetcher.at = None;
            let consumer = fetcher.consumer.as_ref().expect("assigned above");
            let mut collector = Collector::default();
            let deadline = std::time::Instant::now() + inner.timeout();
            let mut next = offset;
            while next < end && collector.bytes < max_bytes {
                let wait = if collector.bytes == 0 {
                    deadline.saturating_duration_since(std::time::Instant::now())
                } else {
                    Duration::from_millis(20)
                };
                if wait.is_zero() {
                    break;
                }
                match consumer.poll(wait) {
                    Some(Ok(message))
                        if message.topic() == topic && message.partition() as u32 == partition =>
                    {
                        next = message.offset().max(0) as u64 + 1;
                        collector.push(&message)?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        fetcher.release();
                        return Err(backend(&format!("fetch {topic}/{partition}"), error));
                    }
                    None if collector.bytes > 0 => break,
                    None => {}
                }
            }
            // Stay assigned: the next fetch usually continues from `next`.
            fetcher.at = Some((topic.clone(), partition, next));
            let mut batches = collector.finish(|_, _| end);
            Ok(batches.pop().unwrap_or(FetchedBatch {
                topic: name,
                partition,
                records: RecordSet::default(),
                high_watermark: end,
            }))
        })
        .await
    }

    async fn resolve_offset(
        &self,
        topic: &str,
        partition: u32,
        at: StartPosition,
    ) -> Result<Offset> {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        blocking(move || {
            let (start, end) = inner.watermarks(&topic, partition)?;
            match at {
                StartPosition::Earliest => Ok(start),
                StartPosition::Latest => Ok(end),
                StartPosition::Offset(o) if o >= start && o <= end => Ok(o),
                StartPosition::Offset(offset) => Err(BusError::OffsetOutOfRange {
                    topic,
                    partition,
                    offset,
                    start,
                    end,
                }),
                StartPosition::Timestamp(ms) => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&topic, partition as i32, KOffset::Offset(ms))
                        .map_err(|e| backend("offsets for times", e))?;
                    let found = inner
                        .meta
                        .offsets_for_times(tpl, inner.timeout())
                        .map_err(|e| backend("offsets for times", e))?;
                    let offset = found
                        .elements()
                        .first()
                        .map(|e| e.offset())
                        .unwrap_or(KOffset::End);
                    Ok(match offset {
                        KOffset::Offset(o) if o >= 0 => (o as u64).clamp(start, end),
                        _ => end,
                    })
                }
            }
        })
        .await
    }

    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, Offset>> {
        let inner = self.inner.clone();
        let (group, topic) = (group.to_string(), topic.to_string());
        blocking(move || {
            let count = inner.fetch_partition_count(&topic)?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..count {
                tpl.add_partition(&topic, p as i32);
            }
            let committed = inner
                .committer(&group)?
                .committed_offsets(tpl, inner.timeout())
                .map_err(|e| backend(&format!("committed offsets of {group:?}"), e))?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    KOffset::Offset(o) if o >= 0 => Some((e.partition() as u32, o as u64)),
                    _ => None,
                })
                .collect())
        })
        .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<()> {
        let inner = self.inner.clone();
        let group = group.to_string();
        let offsets = offsets.to_vec();
        blocking(move || inner.commit_sync(&group, &offsets)).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        blocking(move || {
            let groups = inner
                .meta
                .fetch_group_list(None, inner.timeout())
                .map_err(|e| backend("list groups", e))?;
            let mut names: Vec<String> = groups
                .groups()
                .iter()
                .map(|g| g.name().to_string())
                .collect();
            names.sort();
            Ok(names)
        })
        .await
    }
}

impl KafkaBus {
    /// A topic's retention and segment settings; brokers that do not
    /// answer `DescribeConfigs` get Kafka's defaults.
    async fn topic_config(&self, name: &str, partitions: u32) -> TopicConfig {
        let options = AdminOptions::new().request_timeout(Some(self.inner.timeout()));
        let resource = ResourceSpecifier::Topic(name);
        match self
            .inner
            .admin
            .describe_configs([&resource], &options)
            .await
        {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(resource)) => topic_config_of(&resource.entries, partitions),
                _ => topic_config_of(&[], partitions),
            },
            Err(_) => topic_config_of(&[], partitions),
        }
    }
}

/// The consumer behind `Admin::fetch` and the position it is assigned at.
#[derive(Default)]
struct Fetcher {
    consumer: Option<BaseConsumer>,
    /// (topic, partition, next offset) when the next fetch there can go on
    /// with the current assignment.
    at: Option<(String, u32, u64)>,
}

impl Fetcher {
    /// Unassigns and destroys the handle (blocking).
    fn release(&mut self) {
        self.at = None;
        if let Some(consumer) = self.consumer.take() {
            let _ = consumer.unassign();
        }
    }
}

/// A consumer of the bus: a group member or a reader of fixed partitions.
struct KafkaConsumer {
    group: String,
    consumer: Arc<BaseConsumer>,
    /// The settings `consumer` was made with (a seek makes a new handle).
    client: ClientConfig,
    /// Whether `consumer` has been given its (one) assignment.
    started: bool,
    max_poll_bytes: usize,
    /// Fixed partitions with the offsets the handle starts at
    /// (`Subscription::Assign`).
    assigned: Option<BTreeMap<TopicPartition, Offset>>,
    positions: BTreeMap<TopicPartition, Offset>,
    inner: Arc<Inner>,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn group(&self) -> &str {
        &self.group
    }

    async fn poll(&mut self, timeout: Duration) -> Result<Vec<FetchedBatch>> {
        let consumer = self.consumer.clone();
        let max_bytes = self.max_poll_bytes;
        let assign = match &self.assigned {
            Some(assigned) if !self.started => {
                let list: Vec<(TopicPartition, Offset)> =
                    assigned.iter().map(|(k, v)| (k.clone(), *v)).collect();
                Some(offsets_list(&list)?)
            }
            _ => None,
        };
        self.started = true;
        let batches = blocking(move || {
            if let Some(tpl) = assign {
                consumer.assign(&tpl).map_err(|e| backend("assign", e))?;
            }
            let mut collector = Collector::default();
            let mut wait = timeout;
            while collector.bytes < max_bytes {
                match consumer.poll(wait) {
                    Some(Ok(message)) => collector.push(&message)?,
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(error)) => return Err(backend("poll", error)),
                    None => break,
                }
                wait = Duration::ZERO;
            }
            Ok(collector)
        })
        .await?;
        let collector = batches;
        let consumer = &self.consumer;
        let out =
            collector.finish(|topic, partition| cached_high_watermark(consumer, topic, partition));
        for batch in &out {
            if let Some(next) = batch.records.next_offset() {
                self.positions.insert(
                    TopicPartition::new(batch.topic.to_string(), batch.partition),
                    next,
                );
            }
        }
        Ok(out)
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        if let Some(assigned) = &self.assigned {
            return assigned.keys().cloned().collect();
        }
        self.consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition() as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn position(&self, tp: &TopicPartition) -> Option<Offset> {
        if let Some(p) = self.positions.get(tp) {
            return Some(*p);
        }
        self.consumer.position().ok().and_then(|tpl| {
            tpl.elements()
                .iter()
                .find(|e| e.topic() == tp.topic && e.partition() as u32 == tp.partition)
                .and_then(|e| match e.offset() {
                    KOffset::Offset(o) if o >= 0 => Some(o as u64),
                    _ => None,
                })
        })
    }

    async fn seek(&mut self, tp: &TopicPartition, to: StartPosition) -> Result<Offset> {
        // An explicit offset is taken as it is, as Kafka's consumers do (a
        // fetch out of range then follows `auto.offset.reset`): the end a
        // broker reports can be behind what was written (tansu's memory
        // storage reports the last batch's base offset + 1), and a task
        // restoring a checkpoint must still start exactly there.
        let offset = match to {
            StartPosition::Offset(offset) => offset,
            other => self.inner_resolve(tp, other).await?,
        };
        if let Some(assigned) = &mut self.assigned {
            if !assigned.contains_key(tp) {
                return Err(BusError::InvalidArgument(format!("{tp} is not assigned")));
            }
            // The other partitions go on from where they are.
            for (partition, start) in assigned.iter_mut() {
                if let Some(position) = self.positions.get(partition) {
                    *start = *position;
                }
            }
            assigned.insert(tp.clone(), offset);
            self.positions.insert(tp.clone(), offset);
            if !self.started {
                // Not assigned yet: the first poll starts there.
                return Ok(offset);
            }
            // Re-assigning this handle could abort the process (module
            // docs): start a new one, assigned at its first poll.
            let fresh: BaseConsumer = self.client.create().map_err(|e| backend("consumer", e))?;
            let old = std::mem::replace(&mut self.consumer, Arc::new(fresh));
            self.started = false;
            blocking(move || {
                let _ = old.unassign();
                drop(old);
                Ok(())
            })
            .await?;
            return Ok(offset);
        }
        self.positions.insert(tp.clone(), offset);
        let consumer = self.consumer.clone();
        let (topic, partition) = (tp.topic.clone(), tp.partition);
        let timeout = self.inner.timeout();
        blocking(move || {
            consumer
                .seek(
                    &topic,
                    partition as i32,
                    KOffset::Offset(offset as i64),
                    timeout,
                )
                .map(|_| offset)
                .map_err(|e| backend(&format!("seek {topic}/{partition}"), e))
        })
        .await
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, Offset)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let tpl = offsets_list(offsets)?;
        if self.assigned.is_some() {
            let inner = self.inner.clone();
            let group = self.group.clone();
            let offsets = offsets.to_vec();
            return blocking(move || inner.commit_sync(&group, &offsets)).await;
        }
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| backend(&format!("commit of group {group:?}"), e))
        })
        .await
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // librdkafka's destroy can wait forever on partitions still
        // assigned; release them first (a poll still in flight on the
        // blocking pool holds the last reference and finishes the close).
        if self.assigned.is_none() {
            self.consumer.unsubscribe();
        } else if self.started {
            let _ = self.consumer.unassign();
        }
    }
}

impl KafkaConsumer {
    async fn inner_resolve(&self, tp: &TopicPartition, to: StartPosition) -> Result<Offset> {
        let bus = KafkaBus {
            inner: self.inner.clone(),
        };
        bus.resolve_offset(&tp.topic, tp.partition, to).await
    }
}

/// A buffered transaction (see the module docs for both modes).
struct KafkaTransaction {
    inner: Arc<Inner>,
    id: String,
    batches: Vec<(String, u32, RecordBatch)>,
    offsets: Vec<(String, Vec<(TopicPartition, Offset)>)>,
}

#[async_trait]
impl Transaction for KafkaTransaction {
    fn append(&mut self, topic: &str, partition: u32, batch: RecordBatch) -> Result<()> {
        if batch.is_empty() {
            return Err(BusError::InvalidArgument("empty record batch".into()));
        }
        self.batches.push((topic.to_string(), partition, batch));
        Ok(())
    }

    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, Offset)]) {
        self.offsets.push((group.to_string(), offsets.to_vec()));
    }

    async fn commit(self: Box<Self>) -> Result<Vec<Offset>> {
        let bus = KafkaBus {
            inner: self.inner.clone(),
        };
        for (topic, partition, _) in &self.batches {
            bus.check_partition(topic, *partition).await?;
        }
        if self.inner.options.transactions {
            return self.commit_transactional().await;
        }
        let appends = self.batches.iter().map(|(topic, partition, batch)| {
            send_batch(&self.inner.producer, topic, *partition, batch)
        });
        let bases = futures::future::try_join_all(appends).await?;
        for (group, offsets) in &self.offsets {
            let inner = self.inner.clone();
            let (group, offsets) = (group.clone(), offsets.clone());
            blocking(move || inner.commit_sync(&group, &offsets)).await?;
        }
        Ok(bases)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Nothing was sent: a buffered transaction aborts by dropping.
        Ok(())
    }
}

impl KafkaTransaction {
    async fn commit_transactional(self: Box<Self>) -> Result<Vec<Offset>> {
        let inner = self.inner.clone();
        let id = self.id.clone();
        let producer = blocking(move || {
            let producer = inner.txn_producer(&id)?;
            producer
                .begin_transaction()
                .map_err(|e| backend(&format!("begin transaction {id:?}"), e))?;
            Ok(producer)
        })
        .await?;
        let sent = futures::future::try_join_all(
            self.batches
                .iter()
                .map(|(topic, partition, batch)| send_batch(&producer, topic, *partition, batch)),
        )
        .await;
        let abort = |producer: Arc<FutureProducer>, timeout: Duration| async move {
            let _ = blocking(move || {
                producer
                    .abort_transaction(timeout)
                    .map_err(|e| backend("abort transaction", e))
            })
            .await;
        };
        let bases = match sent {
            Ok(bases) => bases,
            Err(error) => {
                abort(producer, self.inner.timeout()).await;
                return Err(error);
            }
        };
        let inner = self.inner.clone();
        let offsets = self.offsets.clone();
        let id = self.id.clone();
        let committed = blocking({
            let producer = producer.clone();
            move || {
                for (group, offsets) in &offsets {
                    let tpl = offsets_list(offsets)?;
                    let metadata = inner
                        .committer(group)?
                        .group_metadata()
                        .ok_or_else(|| backend("transaction", "no group metadata"))?;
                    producer
                        .send_offsets_to_transaction(&tpl, &metadata, inner.timeout())
                        .map_err(|e| backend(&format!("offsets of transaction {id:?}"), e))?;
                }
                producer
                    .commit_transaction(inner.timeout())
                    .map_err(|e| backend(&format!("commit transaction {id:?}"), e))
            }
        })
        .await;
        if let Err(error) = committed {
            abort(producer, self.inner.timeout()).await;
            // A fenced or failed producer is rebuilt on the next attempt.
            self.inner.txn_producers.lock().remove(&self.id);
            return Err(error);
        }
        Ok(bases)
    }
}

/// Reports rebalances of an ownership group to its owner.
struct OwnershipContext {
    changes: mpsc::UnboundedSender<OwnershipChange>,
    closing: Arc<AtomicBool>,
    topic: String,
}

impl ClientContext for OwnershipContext {}

impl OwnershipContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = self.partitions(tpl);
        if partitions.is_empty() || self.closing.load(Ordering::Acquire) {
            return;
        }
        let (release, released) = tokio::sync::oneshot::channel();
        if self
            .changes
            .send(OwnershipChange::Revoked {
                partitions,
                release,
            })
            .is_err()
        {
            return;
        }
        // The rebalance waits here until the owner has checkpointed and
        // stopped the tasks (or dropped the release).
        let _ = released.blocking_recv();
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Ownership only: the tasks read with their own consumers.
                let _ = consumer.pause(tpl);
                let partitions = self.partitions(tpl);
                if !partitions.is_empty() {
                    let _ = self.changes.send(OwnershipChange::Assigned(partitions));
                }
            }
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.topic, %error, "ownership group rebalance error");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

struct KafkaMembership {
    changes: mpsc::UnboundedReceiver<OwnershipChange>,
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[async_trait]
impl Membership for KafkaMembership {
    async fn next_change(&mut self) -> Option<OwnershipChange> {
        self.changes.recv().await
    }
}

impl Drop for KafkaMembership {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.changes.close();
        // Wait for the thread to leave the group (it notices `closing`
        // within one 100 ms poll), so a clean shutdown does not leave the
        // others waiting a session timeout for this member.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        let mut client = self.inner.options.consumer_config(&config.group);
        client.set(
            "auto.offset.reset",
            match config.offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        );
        let consumer: BaseConsumer = client.create().map_err(|e| backend("consumer", e))?;
        let consumer = Arc::new(consumer);
        let mut kafka = KafkaConsumer {
            group: config.group.clone(),
            consumer: consumer.clone(),
            client,
            started: false,
            max_poll_bytes: config.max_poll_bytes.max(1),
            assigned: None,
            positions: BTreeMap::new(),
            inner: self.inner.clone(),
        };
        match config.subscription {
            Subscription::Topics(topics) => {
                for topic in &topics {
                    self.partition_count(topic).await?;
                }
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&names)
                    .map_err(|e| backend("subscribe", e))?;
            }
            Subscription::Assign(partitions) => {
                let committed = {
                    let mut by_topic: BTreeMap<String, BTreeMap<u32, Offset>> = BTreeMap::new();
                    for tp in &partitions {
                        if !by_topic.contains_key(&tp.topic) {
                            let offsets = self.committed_offsets(&config.group, &tp.topic).await?;
                            by_topic.insert(tp.topic.clone(), offsets);
                        }
                    }
                    by_topic
                };
                let mut assigned = BTreeMap::new();
                for tp in partitions {
                    let start = match committed.get(&tp.topic).and_then(|c| c.get(&tp.partition)) {
                        Some(offset) => *offset,
                        None => {
                            let at = match config.offset_reset {
                                OffsetReset::Earliest => StartPosition::Earliest,
                                OffsetReset::Latest => StartPosition::Latest,
                            };
                            self.resolve_offset(&tp.topic, tp.partition, at).await?
                        }
                    };
                    assigned.insert(tp, start);
                }
                // Assigned at the first poll (module docs).
                kafka.positions = assigned.clone();
                kafka.assigned = Some(assigned);
            }
        }
        Ok(Box::new(kafka))
    }

    async fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(KafkaTransaction {
            inner: self.inner.clone(),
            id: transactional_id.replace('/', "."),
            batches: Vec::new(),
            offsets: Vec::new(),
        }))
    }

    async fn join_ownership_group(&self, group: &str, topic: &str) -> Result<Box<dyn Membership>> {
        self.partition_count(topic).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let closing = Arc::new(AtomicBool::new(false));
        let context = OwnershipContext {
            changes: tx,
            closing: closing.clone(),
            topic: topic.to_string(),
        };
        let mut config = self.inner.options.consumer_config(group);
        config.set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: BaseConsumer<OwnershipContext> = config
            .create_with_context(context)
            .map_err(|e| backend("ownership consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| backend(&format!("join group {group:?}"), e))?;
        let thread_closing = closing.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-group-{group}"))
            .spawn(move || {
                while !thread_closing.load(Ordering::Acquire) {
                    // Serves rebalance callbacks; every partition is paused.
                    if let Some(Err(error)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::debug!(%error, "ownership consumer poll");
                    }
                }
                // Leaves the group now so the others rebalance at once.
                consumer.unsubscribe();
                let _ = consumer.poll(Duration::from_millis(100));
                drop(consumer);
            })
            .map_err(|e| backend("ownership thread", e))?;
        Ok(Box::new(KafkaMembership {
            changes: rx,
            closing,
            thread: Some(thread),
        }))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}
