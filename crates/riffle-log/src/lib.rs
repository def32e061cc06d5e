//! The event bus: the [`EventBus`] traits that every backend implements and
//! the embedded durable segment log, Riffle's default bus.

pub mod bus;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod embedded;
pub mod error;
pub mod format;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
pub mod murmur2;

pub use bus::{
    send_records, Admin, Consumer, ConsumerConfig, EventBus, FetchedBatch, Membership, Offset,
    OffsetReset, OwnershipChange, PartitionInfo, Producer, ProducerRecord, SoleMember,
    StartPosition, Subscription, TopicConfig, TopicDescription, TopicMetadata, TopicPartition,
    Transaction,
};
pub use embedded::{EmbeddedLog, LogOptions};
pub use error::{BusError, Result};
pub use format::{RecordBatch, RecordSet, RecordView};
pub use murmur2::{murmur2, partition_for_key};
