//! Shared server state. Services become available once the log has
//! recovered; until then every data endpoint answers 503 and `/readyz` says
//! so, while `/healthz` and `/metrics` already work.

use std::sync::Arc;

use crate::config::Config;
use riffle_core::config::Role;
use riffle_core::time::Clock;
use riffle_ingest::Ingestor;
use riffle_log::{EmbeddedLog, EventBus, TopicConfig};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::error::ApiError;

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

impl AppState {
    pub fn services(&self) -> Result<Arc<Services>, ApiError> {
        self.services
            .borrow()
            .clone()
            .ok_or_else(|| ApiError::unavailable("the log is still recovering; retry shortly"))
    }

    /// Refuses a request that needs a role this process does not run
    /// (`server.roles`): 503 so a load balancer routes it elsewhere.
    pub fn require_role(&self, role: Role) -> Result<(), ApiError> {
        if self.config.server.roles.contains(&role) {
            return Ok(());
        }
        Err(ApiError::unavailable(format!(
            "this process does not run the {} role (server.roles = {:?})",
            role.as_str(),
            self.config
                .server
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
        )))
    }
}
