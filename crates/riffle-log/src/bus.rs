//! The `EventBus` contract. It mirrors Kafka's model (topics × partitions,
//! offsets, keyed records with timestamps and headers, consumer groups with
//! committed offsets, transactions that append output and commit input
//! offsets atomically) so that the embedded log and the Kafka backend are
//! interchangeable. docs/adr/0001-event-bus-kafka-mapping.md maps every call
//! to its rdkafka counterpart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::format::{RecordBatch, RecordSet};
use crate::murmur2::partition_for_key;

pub type Offset = u64;

/// Largest `segment.bytes`: index positions are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Per-topic settings, named as Kafka's topic configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: u32,
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 means no size limit.
    pub retention_bytes: i64,
    /// `segment.bytes`.
    pub segment_bytes: u64,
}

impl TopicConfig {
    pub fn validate(&self) -> Result<()> {
        use crate::error::BusError::InvalidArgument;
        if self.partitions == 0 || self.partitions > 10_000 {
            return Err(InvalidArgument(format!(
                "partitions: {} is not within 1..=10000",
                self.partitions
            )));
        }
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return Err(InvalidArgument(format!(
                "retention_ms: {} must be positive or -1",
                self.retention_ms
            )));
        }
        if self.retention_bytes < -1 || self.retention_bytes == 0 {
            return Err(InvalidArgument(format!(
                "retention_bytes: {} must be positive or -1",
                self.retention_bytes
            )));
        }
        if self.segment_bytes < 4096 {
            return Err(InvalidArgument(format!(
                "segment_bytes: {} is below the minimum 4096",
                self.segment_bytes
            )));
        }
        // Index entries hold 32-bit positions and relative offsets.
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(InvalidArgument(format!(
                "segment_bytes: {} exceeds the maximum {MAX_SEGMENT_BYTES} (1 GiB)",
                self.segment_bytes
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub config: TopicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: u32,
    /// First offset still stored (the log start offset).
    pub start_offset: Offset,
    /// The offset the next record will get; records below it are durable
    /// and readable.
    pub end_offset: Offset,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    pub metadata: TopicMetadata,
    pub partitions: Vec<PartitionInfo>,
}

/// Where a consumer starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    Offset(Offset),
    /// The first offset whose record timestamp is ≥ this (epoch ms), like
    /// Kafka's `offsetsForTimes`; the end offset if there is none.
    Timestamp(i64),
}

/// What a consumer does for a partition with no committed offset
/// (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Join the group; the group splits the topics' partitions among its
    /// members and rebalances when members come and go.
    Topics(Vec<String>),
    /// Read exactly these partitions; no group membership (offsets can still
    /// be committed under the group id).
    Assign(Vec<TopicPartition>),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub subscription: Subscription,
    pub offset_reset: OffsetReset,
    /// Upper bound on the bytes one `poll` returns (at least one batch is
    /// always returned).
    pub max_poll_bytes: usize,
}

impl ConsumerConfig {
    pub fn subscribe(group: impl Into<String>, topics: &[&str]) -> Self {
        ConsumerConfig {
            group: group.into(),
            subscription: Subscription::Topics(topics.iter().map(|t| t.to_string()).collect()),
            offset_reset: OffsetReset::Earliest,
            max_poll_bytes: 1 << 20,
        }
    }

    pub fn assign(group: impl Into<String>, partitions: Vec<TopicPartition>) -> Self {
        ConsumerConfig {
            group: group.into(),
            subscription: Subscription::Assign(partitions),
            offset_reset: OffsetReset::Earliest,
            max_poll_bytes: 1 << 20,
        }
    }
}

/// Records of one partition returned by a poll or a fetch.
#[derive(Debug, Clone)]
pub struct FetchedBatch {
    pub topic: Arc<str>,
    pub partition: u32,
    pub records: RecordSet,
    /// The partition's end offset when the fetch was served.
    pub high_watermark: Offset,
}

/// Appends records. Appends are acknowledged only once durable.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Appends `batch` to one partition and returns the offset of its first
    /// record once the whole batch is durable. Records of one call keep
    /// their order and get consecutive offsets — on Kafka only while this
    /// process is the partition's one producer (another producer's records
    /// can interleave; see `kafka.rs`).
    async fn append(&self, topic: &str, partition: u32, batch: RecordBatch) -> Result<Offset>;

    async fn partition_count(&self, topic: &str) -> Result<u32>;
}

/// Topic management and offset look-ups.
#[async_trait]
pub trait Admin: Send + Sync {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicMetadata>;
    async fn delete_topic(&self, name: &str) -> Result<()>;
    async fn list_topics(&self) -> Result<Vec<TopicMetadata>>;
    async fn describe_topic(&self, name: &str) -> Result<TopicDescription>;
    /// Reads up to `max_bytes` (at least one batch) from `offset`; an empty
    /// set at the end offset; `OffsetOutOfRange` outside the stored range.
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<FetchedBatch>;
    /// Resolves a start position to a concrete offset of one partition.
    async fn resolve_offset(
        &self,
        topic: &str,
        partition: u32,
        at: StartPosition,
    ) -> Result<Offset>;
    /// Committed offsets of a group for one topic (partition → next offset).
    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, Offset>>;
    /// Commits offsets for a group outside any consumer (REST clients).
    async fn commit_offsets(&self, group: &str, offsets: &[(TopicPartition, Offset)])
        -> Result<()>;
    async fn list_groups(&self) -> Result<Vec<String>>;
}

/// A member of a consumer group (or a manually assigned reader).
#[async_trait]
pub trait Consumer: Send {
    fn group(&self) -> &str;
    /// Returns the next records of the assigned partitions, waiting up to
    /// `timeout` for new data. An empty result means the timeout passed.
    async fn poll(&mut self, timeout: Duration) -> Result<Vec<FetchedBatch>>;
    /// The partitions this consumer currently reads.
    fn assignment(&self) -> Vec<TopicPartition>;
    /// The next offset this consumer will read from a partition.
    fn position(&self, tp: &TopicPartition) -> Option<Offset>;
    async fn seek(&mut self, tp: &TopicPartition, to: StartPosition) -> Result<Offset>;
    /// Durably commits offsets (the next offset to read, as in Kafka).
    async fn commit(&mut self, offsets: &[(TopicPartition, Offset)]) -> Result<()>;
    /// Commits the current position of every assigned partition.
    async fn commit_positions(&mut self) -> Result<()> {
        let offsets: Vec<_> = self
            .assignment()
            .into_iter()
            .filter_map(|tp| self.position(&tp).map(|o| (tp, o)))
            .collect();
        self.commit(&offsets).await
    }
}

/// Appends output records and commits input offsets as one atomic unit:
/// after a crash either all of it is visible or none of it.
#[async_trait]
pub trait Transaction: Send {
    fn append(&mut self, topic: &str, partition: u32, batch: RecordBatch) -> Result<()>;
    fn commit_offsets(&mut self, group: &str, offsets: &[(TopicPartition, Offset)]);
    /// Makes everything durable and visible at once; returns the base offset
    /// of every appended batch, in append order.
    async fn commit(self: Box<Self>) -> Result<Vec<Offset>>;
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A change of the partitions a group member owns.
#[derive(Debug)]
pub enum OwnershipChange {
    /// These partitions are now this member's.
    Assigned(Vec<u32>),
    /// These partitions are leaving this member. The group waits (Kafka: the
    /// rebalance does not complete) until `release` is sent or dropped, so the
    /// owner checkpoints and stops before anyone else takes over.
    Revoked {
        partitions: Vec<u32>,
        release: tokio::sync::oneshot::Sender<()>,
    },
}

/// Membership of a consumer group used for partition *ownership* (which
/// process runs which pipeline task), not for reading: the owner reads each
/// partition it owns with its own assigned consumer.
#[async_trait]
pub trait Membership: Send {
    /// The next change; `None` once the membership has ended.
    async fn next_change(&mut self) -> Option<OwnershipChange>;
}

/// The membership of a bus with a single process: it owns every partition,
/// once, and nothing ever moves.
pub struct SoleMember {
    pending: Option<Vec<u32>>,
}

impl SoleMember {
    pub fn new(partitions: Vec<u32>) -> Self {
        SoleMember {
            pending: Some(partitions),
        }
    }
}

#[async_trait]
impl Membership for SoleMember {
    async fn next_change(&mut self) -> Option<OwnershipChange> {
        match self.pending.take() {
            Some(partitions) => Some(OwnershipChange::Assigned(partitions)),
            None => futures::future::pending().await,
        }
    }
}

/// The whole bus: producer, admin, consumers and transactions.
#[async_trait]
pub trait EventBus: Producer + Admin + Send + Sync {
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>>;
    async fn begin_transaction(&self, transactional_id: &str) -> Result<Box<dyn Transaction>>;
    /// Joins `group` to share ownership of `topic`'s partitions with the
    /// other members. A bus that lives in one process makes its only member
    /// the owner of everything.
    async fn join_ownership_group(&self, group: &str, topic: &str) -> Result<Box<dyn Membership>> {
        let _ = group;
        let partitions = self.partition_count(topic).await?;
        Ok(Box::new(SoleMember::new((0..partitions).collect())))
    }
    /// A short name of the backend (`embedded`, `kafka`) for status pages.
    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// A record with an optional explicit partition, for [`send_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub partition: Option<u32>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: i64,
}

/// Routes records by key (murmur2, as Kafka) or explicit partition, appends
/// one batch per partition concurrently, and returns each record's
/// (partition, offset) in input order. Keyless records without a partition
/// go to partition 0 — callers that care spread them explicitly.
pub async fn send_records(
    producer: &dyn Producer,
    topic: &str,
    records: &[ProducerRecord],
) -> Result<Vec<(u32, Offset)>> {
    let partitions = producer.partition_count(topic).await?;
    let mut batches: BTreeMap<u32, (RecordBatch, Vec<usize>)> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => {
                if p >= partitions {
                    return Err(crate::BusError::PartitionNotFound {
                        topic: topic.to_string(),
                        partition: p,
                        count: partitions,
                    });
                }
                p
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => 0,
        };
        let entry = batches.entry(partition).or_default();
        entry
            .0
            .push(record.key.as_deref(), &record.value, record.timestamp);
        entry.1.push(i);
    }
    let appends = batches
        .into_iter()
        .map(|(partition, (batch, indexes))| async move {
            let base = producer.append(topic, partition, batch).await?;
            Ok::<_, crate::BusError>((partition, base, indexes))
        });
    let mut out = vec![(0, 0); records.len()];
    for result in futures::future::join_all(appends).await {
        let (partition, base, indexes) = result?;
        for (n, i) in indexes.into_iter().enumerate() {
            out[i] = (partition, base + n as u64);
        }
    }
    Ok(out)
}
