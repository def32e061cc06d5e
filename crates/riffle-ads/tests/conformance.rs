//! The aggregate store conformance suite against both backends.

use riffle_ads::{AggregateStore, MemoryAggregateStore, RedbAggregateStore};

/// A redb store in its own temporary directory (dropped after the store).
struct TempRedb {
    store: RedbAggregateStore,
    _dir: tempfile::TempDir,
}

impl AsRef<dyn AggregateStore> for TempRedb {
    fn as_ref(&self) -> &(dyn AggregateStore + 'static) {
        &self.store
    }
}

fn temp_redb() -> TempRedb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store =
        RedbAggregateStore::open(dir.path().join("aggregates.redb")).expect("open redb store");
    TempRedb { store, _dir: dir }
}

mod memory {
    use super::*;

    riffle_ads::aggregate_store_suite!(
        || Box::new(MemoryAggregateStore::new()) as Box<dyn AggregateStore>
    );
}

mod redb {
    use super::*;

    riffle_ads::aggregate_store_suite!(temp_redb);
}
