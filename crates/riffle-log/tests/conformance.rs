//! The bus conformance suite against the embedded log.

use std::sync::Arc;

use riffle_log::{EmbeddedLog, EventBus, LogOptions};

async fn embedded() -> Arc<dyn EventBus> {
    // Leaked so the directory outlives the test's bus handles.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap())
}

riffle_log::bus_conformance_suite!(embedded);
