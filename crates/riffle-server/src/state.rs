//! Shared server state. Services become available once the log has
//! recovered; until then every data endpoint answers 503 and `/readyz` says
//! so, while `/healthz` and `/metrics` already work.

use std::sync::Arc;

use riffle_core::config::Config;
use riffle_core::time::Clock;
use riffle_ingest::Ingestor;
use riffle_log::{EmbeddedLog, EventBus, TopicConfig};
use tokio::sync::watch;

use crate::auth::Auth;

pub struct Services {
    /// The embedded log, when `bus.kind = "embedded"`.
    pub log: Option<EmbeddedLog>,
    pub bus: Arc<dyn EventBus>,
    pub ingestor: Arc<Ingestor>,
    pub auth: Auth,
    pub clock: Arc<dyn Clock>,
    pub log_defaults: TopicConfig,
    /// The ad click pipeline, when `ads.enabled`.
    pub ads: Option<Arc<riffle_ads::AdsPipeline>>,
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub services: watch::Receiver<Option<Arc<Services>>>,
}
