//! Consumers of the embedded log: group members (partitions split among the
//! members of a group in this process) or manually assigned readers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use super::Inner;
use crate::bus::{
    Consumer, ConsumerConfig, FetchedBatch, Offset, OffsetReset, StartPosition, Subscription,
    TopicPartition,
};
use crate::error::{BusError, Result};

pub(crate) struct EmbeddedConsumer {
    inner: Arc<Inner>,
    config: ConsumerConfig,
    member: Option<u64>,
    generation: u64,
    positions: BTreeMap<TopicPartition, Offset>,
    /// Round-robin start so one busy partition cannot starve the others.
    next_start: usize,
}

impl EmbeddedConsumer {
    pub fn new(inner: Arc<Inner>, config: ConsumerConfig) -> Result<Self> {
        super::groups::validate_group_name(&config.group)?;
        let mut consumer = EmbeddedConsumer {
            inner,
            config,
            member: None,
            generation: u64::MAX,
            positions: BTreeMap::new(),
            next_start: 0,
        };
        match consumer.config.subscription.clone() {
            Subscription::Topics(topics) => {
                for topic in &topics {
                    if consumer.inner.partition_count(topic).is_none() {
                        return Err(BusError::TopicNotFound(topic.clone()));
                    }
                }
                consumer.member = Some(consumer.inner.groups.join(&consumer.config.group, topics));
                consumer.refresh_assignment()?;
            }
            Subscription::Assign(partitions) => {
                for tp in partitions {
                    consumer.inner.partition(&tp.topic, tp.partition)?;
                    let offset = consumer.initial_position(&tp)?;
                    consumer.positions.insert(tp, offset);
                }
            }
        }
        Ok(consumer)
    }

    fn initial_position(&self, tp: &TopicPartition) -> Result<Offset> {
        let partition = self.inner.partition(&tp.topic, tp.partition)?;
        match self.inner.groups.committed_one(&self.config.group, tp) {
            Some(offset)
                if offset >= partition.start_offset() && offset <= partition.end_offset() =>
            {
                Ok(offset)
            }
            committed => {
                let reset = match self.config.offset_reset {
                    OffsetReset::Earliest => partition.start_offset(),
                    OffsetReset::Latest => partition.end_offset(),
                };
                if let Some(offset) = committed {
                    warn!(group = %self.config.group, partition = %tp, committed = offset, reset, "committed offset out of range; resetting");
                }
                Ok(reset)
            }
        }
    }

    /// Re-reads the group's assignment if membership changed; keeps the
    /// positions of partitions this member still owns.
    fn refresh_assignment(&mut self) -> Result<()> {
        let Some(member) = self.member else {
            return Ok(());
        };
        let generation = self.inner.groups.generation(&self.config.group);
        if generation == self.generation {
            return Ok(());
        }
        let inner = self.inner.clone();
        let (generation, assigned) =
            self.inner
                .groups
                .assignment(&self.config.group, member, &|topic| {
                    inner.partition_count(topic)
                });
        let mut positions = BTreeMap::new();
        for tp in assigned {
            let offset = match self.positions.get(&tp) {
                Some(offset) => *offset,
                None => self.initial_position(&tp)?,
            };
            positions.insert(tp, offset);
        }
        debug!(group = %self.config.group, member, generation, partitions = positions.len(), "assignment");
        self.positions = positions;
        self.generation = generation;
        Ok(())
    }

    fn try_fetch(&mut self) -> Result<Vec<FetchedBatch>> {
        let mut out = Vec::new();
        let mut budget = self.config.max_poll_bytes;
        let tps: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        if tps.is_empty() {
            return Ok(out);
        }
        let start = self.next_start % tps.len();
        self.next_start = self.next_start.wrapping_add(1);
        for i in 0..tps.len() {
            if budget == 0 {
                break;
            }
            let tp = &tps[(start + i) % tps.len()];
            let position = self.positions[tp];
            let fetched = match self.inner.fetch(&tp.topic, tp.partition, position, budget) {
                Ok(f) => f,
                Err(BusError::OffsetOutOfRange { start, end, .. }) => {
                    // Retention deleted what we had not read yet.
                    let reset = match self.config.offset_reset {
                        OffsetReset::Earliest => start,
                        OffsetReset::Latest => end,
                    };
                    warn!(group = %self.config.group, partition = %tp, position, reset, "position out of range; resetting");
                    self.positions.insert(tp.clone(), reset);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(next) = fetched.records.next_offset() {
                self.positions.insert(tp.clone(), next);
                budget = budget.saturating_sub(fetched.records.byte_len());
                out.push(fetched);
            }
        }
        Ok(out)
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        if let Some(member) = self.member {
            self.inner.groups.leave(&self.config.group, member);
        }
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    fn group(&self) -> &str {
        &self.config.group
    }

    async fn poll(&mut self, timeout: Duration) -> Result<Vec<FetchedBatch>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut epoch = self.inner.epoch.subscribe();
        let mut changes = self.inner.groups.changes.subscribe();
        loop {
            epoch.borrow_and_update();
            changes.borrow_and_update();
            self.refresh_assignment()?;
            let batches = self.try_fetch()?;
            if !batches.is_empty() {
                return Ok(batches);
            }
            if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(BusError::Closed);
            }
            tokio::select! {
                _ = epoch.changed() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    fn position(&self, tp: &TopicPartition) -> Option<Offset> {
        self.positions.get(tp).copied()
    }

    async fn seek(&mut self, tp: &TopicPartition, to: StartPosition) -> Result<Offset> {
        if !self.positions.contains_key(tp) {
            return Err(BusError::InvalidArgument(format!(
                "partition {tp} is not assigned to this consumer"
            )));
        }
        let offset = self.inner.resolve(&tp.topic, tp.partition, to)?;
        self.positions.insert(tp.clone(), offset);
        Ok(offset)
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, Offset)]) -> Result<()> {
        super::commit_offsets(&self.inner, &self.config.group, offsets).await
    }
}
