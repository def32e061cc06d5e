//! The metadata store: topics, versions (with inline payloads), pins,
//! rollouts and the audit trail. SQLite ([`crate::SqliteMetadataStore`]) by
//! default; a PostgreSQL backend must pass the same conformance suite
//! ([`crate::conformance`]).
//!
//! Contracts every backend keeps:
//! * version numbers are assigned inside the store, per topic, strictly
//!   increasing and gap-free even under concurrent publishers (a publish
//!   that fails assigns nothing);
//! * every mutation of a topic (publish, scopes, pins, rollouts, expiry)
//!   moves the topic to a new `generation` and writes its audit entry in the
//!   same transaction, so a cache that sees a generation sees the whole
//!   change; generations are unique store-wide (never reused by a deleted
//!   and recreated topic of the same name);
//! * a pinned version, or one under an active rollout, is never deleted
//!   (`delete_versions` re-checks both inside its transaction);
//! * rollout saves are compare-and-set on `revision`.

use std::collections::HashSet;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{
    AuditEntry, NewAudit, NewTopic, NewVersion, Pin, Rollout, RolloutEffect, RolloutStage, Scope,
    Topic, Version,
};

/// A topic's complete consume-side state, read in one consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSnapshot {
    pub topic: Topic,
    /// Newest first.
    pub versions: Vec<Version>,
    pub pins: Vec<Pin>,
    /// Versions under a running or paused rollout.
    pub active_rollouts: Vec<u64>,
}

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// `AlreadyExists` when the name is taken.
    async fn create_topic(&self, topic: &NewTopic, audit: NewAudit) -> Result<Topic>;
    async fn get_topic(&self, name: &str) -> Result<Option<Topic>>;
    /// Sorted by name.
    async fn list_topics(&self) -> Result<Vec<Topic>>;
    /// Removes the topic with its versions, pins and rollouts (blobs become
    /// orphans for the janitor); the audit trail stays. `NotFound` if absent.
    async fn delete_topic(&self, name: &str, audit: NewAudit) -> Result<()>;
    /// `(name, generation)` of every topic: what a cache polls.
    async fn generations(&self) -> Result<Vec<(String, u64)>>;
    async fn snapshot(&self, name: &str) -> Result<Option<TopicSnapshot>>;

    /// Assigns the next version number and stores the version. `NotFound`
    /// if the topic does not exist.
    async fn publish(&self, topic: &str, version: NewVersion) -> Result<Version>;
    async fn get_version(&self, topic: &str, version: u64) -> Result<Option<Version>>;
    /// Every stored version, newest first.
    async fn list_versions(&self, topic: &str) -> Result<Vec<Version>>;
    /// The stored inline bytes of a version (`None` for blob versions).
    async fn inline_data(&self, topic: &str, version: u64) -> Result<Option<Vec<u8>>>;
    /// Adds scopes (already present ones are ignored); returns the version.
    async fn add_scopes(
        &self,
        topic: &str,
        version: u64,
        scopes: &[Scope],
        audit: NewAudit,
    ) -> Result<Version>;
    /// A retained version of `topic` whose payload has this checksum (for
    /// metadata-only publishes of encrypted topics).
    async fn find_by_checksum(&self, topic: &str, checksum: &str) -> Result<Option<Version>>;

    /// Pins `scope` (the whole topic when `None`) to `version`, replacing an
    /// existing pin for that scope. `NotFound` if the version does not exist.
    async fn pin(
        &self,
        topic: &str,
        scope: Option<&Scope>,
        version: u64,
        audit: NewAudit,
    ) -> Result<Pin>;
    /// `NotFound` if there is no such pin.
    async fn unpin(&self, topic: &str, scope: Option<&Scope>, audit: NewAudit) -> Result<()>;
    async fn list_pins(&self, topic: &str) -> Result<Vec<Pin>>;
    /// Oldest first.
    async fn audit(&self, topic: &str) -> Result<Vec<AuditEntry>>;

    /// `FailedPrecondition` if the version already has an active rollout.
    async fn create_rollout(
        &self,
        topic: &str,
        version: u64,
        stages: &[RolloutStage],
        next_at_ms: i64,
        audit: NewAudit,
    ) -> Result<Rollout>;
    async fn get_rollout(&self, id: u64) -> Result<Option<Rollout>>;
    /// Every running or paused rollout, oldest first.
    async fn active_rollouts(&self) -> Result<Vec<Rollout>>;
    async fn list_rollouts(&self, topic: &str) -> Result<Vec<Rollout>>;
    /// Saves `rollout` (whose `revision` is the one read) and applies
    /// `effect` to its version, atomically; `FailedPrecondition` when the
    /// stored revision moved. Returns the rollout with its new revision.
    async fn save_rollout(
        &self,
        rollout: &Rollout,
        effect: &RolloutEffect,
        audit: NewAudit,
    ) -> Result<Rollout>;

    /// Deletes these versions, skipping any that are pinned or under an
    /// active rollout now; returns the versions actually deleted.
    async fn delete_versions(
        &self,
        topic: &str,
        versions: &[u64],
        audit: NewAudit,
    ) -> Result<Vec<Version>>;
    /// Every blob key any stored version references.
    async fn referenced_blobs(&self) -> Result<HashSet<String>>;
    /// Records consumption (coarse: flushed periodically by the service).
    async fn touch_consumed(&self, topic: &str, at_ms: i64) -> Result<()>;
}
