//! The online store conformance suite against the in-memory backend (the
//! Redis backend runs the same suite when it lands).

use std::sync::Arc;

use riffle_core::time::ManualClock;
use riffle_features::conformance::T0;
use riffle_features::MemoryOnlineStore;

mod memory {
    use super::*;

    riffle_features::online_store_suite!(|| {
        let clock = ManualClock::new(T0);
        (MemoryOnlineStore::new(Arc::new(clock.clone())), clock)
    });
}
