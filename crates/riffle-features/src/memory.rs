//! The embedded online store: rows in memory, sharded by a hash of (entity,
//! id) so writers of different entities rarely meet on a lock. It is not a
//! second source of truth: the feature operator's checkpointed state is,
//! and a restarted pipeline writes every entity back before it serves.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::RandomState;
use parking_lot::RwLock;
use riffle_core::time::Clock;

use crate::store::{
    check_id, check_ids, EntityKind, EntityRow, OnlineStore, StoreError, MAX_BATCH,
};

const SHARDS: usize = 16;

/// Per entity kind, rows by id (looked up by `&str`, no allocation;
/// foldhash: SipHash was a tenth of a batch read's time).
type Shard = [HashMap<Box<str>, EntityRow, RandomState>; 4];

pub struct MemoryOnlineStore {
    shards: Vec<RwLock<Shard>>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl MemoryOnlineStore {
    /// An empty store judging expiry by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryOnlineStore {
        MemoryOnlineStore {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Default::default()))
                .collect(),
            hasher: Default::default(),
            clock,
        }
    }

    fn shard(&self, entity: EntityKind, id: &str) -> &RwLock<Shard> {
        let mut hasher = self.hasher.build_hasher();
        entity.hash(&mut hasher);
        id.hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    /// Drops expired rows (reads already hide them); returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut purged = 0;
        for shard in &self.shards {
            for rows in shard.write().iter_mut() {
                let before = rows.len();
                rows.retain(|_, row| row.expires_at_ms > now);
                purged += before - rows.len();
            }
        }
        purged
    }

    /// Rows held, expired ones included until purged.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().iter().map(HashMap::len).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl OnlineStore for MemoryOnlineStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn put_batch(&self, rows: &[EntityRow]) -> Result<(), StoreError> {
        if rows.len() > MAX_BATCH {
            return Err(StoreError::invalid(
                "rows",
                format!("{} rows is above the limit of {MAX_BATCH}", rows.len()),
            ));
        }
        for (i, row) in rows.iter().enumerate() {
            check_id(&format!("rows[{i}].id"), &row.id)?;
        }
        let now = self.clock.now_ms();
        for row in rows {
            let mut shard = self.shard(row.entity, &row.id).write();
            let rows = &mut shard[row.entity as usize];
            match rows.get_mut(row.id.as_str()) {
                // An expired row is gone: it blocks nothing.
                Some(stored) if stored.version > row.version && stored.expires_at_ms > now => {}
                Some(stored) => *stored = row.clone(),
                None => {
                    rows.insert(row.id.as_str().into(), row.clone());
                }
            }
        }
        Ok(())
    }

    async fn get_batch(
        &self,
        entity: EntityKind,
        ids: &[&str],
    ) -> Result<Vec<Option<EntityRow>>, StoreError> {
        check_ids("ids", ids)?;
        let now = self.clock.now_ms();
        Ok(ids
            .iter()
            .map(|id| {
                let shard = self.shard(entity, id).read();
                shard[entity as usize]
                    .get(*id)
                    .filter(|row| row.expires_at_ms > now)
                    .cloned()
            })
            .collect())
    }

    async fn delete_batch(&self, entity: EntityKind, ids: &[&str]) -> Result<(), StoreError> {
        check_ids("ids", ids)?;
        for id in ids {
            self.shard(entity, id).write()[entity as usize].remove(*id);
        }
        Ok(())
    }

    async fn scan(&self, entity: EntityKind, limit: usize) -> Result<Vec<EntityRow>, StoreError> {
        if limit > MAX_BATCH {
            return Err(StoreError::invalid(
                "limit",
                format!("{limit} is above the limit of {MAX_BATCH}"),
            ));
        }
        let now = self.clock.now_ms();
        let mut rows = BTreeMap::new();
        for shard in &self.shards {
            for (id, row) in shard.read()[entity as usize].iter() {
                if row.expires_at_ms > now {
                    rows.insert(id.clone(), row.clone());
                }
            }
        }
        Ok(rows.into_values().take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use riffle_core::time::ManualClock;

    #[tokio::test]
    async fn purge_drops_only_expired_rows() {
        let clock = ManualClock::new(1_000);
        let store = MemoryOnlineStore::new(Arc::new(clock.clone()));
        let row = |id: &str, expires_at_ms| EntityRow {
            entity: EntityKind::Stream,
            id: id.to_owned(),
            version: 1,
            as_of_ms: 0,
            expires_at_ms,
            value: Bytes::from_static(b"v"),
        };
        store
            .put_batch(&[row("a", 2_000), row("b", 5_000)])
            .await
            .unwrap();
        clock.set(3_000);
        assert_eq!(store.len(), 2, "expired rows stay until purged");
        assert_eq!(store.purge_expired(), 1);
        assert_eq!(store.len(), 1);
        let got = store.get_batch(EntityKind::Stream, &["b"]).await.unwrap();
        assert!(got[0].is_some());
    }
}
