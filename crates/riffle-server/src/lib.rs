//! The server: REST (axum) and gRPC (tonic) over the log and the ingest
//! path, with auth, metrics and health. Domain crates never depend on this
//! crate; it composes them.

mod ads;
mod auth;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod state;

pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("riffle.v1");
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use riffle_core::config::Config;
use riffle_core::time::{Clock, SystemClock};
use riffle_ingest::Ingestor;
use riffle_log::{EmbeddedLog, EventBus, LogOptions};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::state::{AppState, Services};

/// Addresses the server actually listens on (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// Runs `riffle serve` until `shutdown` resolves, then drains connections,
/// flushes and fsyncs the log. `on_bound` is told the listening addresses
/// as soon as the sockets are bound (before the log has recovered).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs) + Send,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("server.data_dir: cannot create {}", data_dir.display()))?;

    // Load TLS material before anything listens, so a bad certificate stops
    // startup instead of leaving a server that never answers.
    let (http_tls, tls_identity) = if config.server.tls.enabled {
        let tls = &config.server.tls;
        let cert = std::fs::read(&tls.cert_path).with_context(|| {
            format!(
                "server.tls.cert_path: cannot read {}",
                tls.cert_path.display()
            )
        })?;
        let key = std::fs::read(&tls.key_path).with_context(|| {
            format!(
                "server.tls.key_path: cannot read {}",
                tls.key_path.display()
            )
        })?;
        let rustls = axum_server::tls_rustls::RustlsConfig::from_pem(cert.clone(), key.clone())
            .await
            .with_context(|| {
                format!(
                    "server.tls: {} / {} is not a valid PEM certificate and key",
                    tls.cert_path.display(),
                    tls.key_path.display()
                )
            })?;
        (Some(rustls), Some((cert, key)))
    } else {
        (None, None)
    };

    let http_listener =
        std::net::TcpListener::bind(&config.server.http_addr).with_context(|| {
            format!(
                "server.http_addr: cannot listen on {}",
                config.server.http_addr
            )
        })?;
    http_listener.set_nonblocking(true)?;
    let grpc_listener = tokio::net::TcpListener::bind(&config.server.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "server.grpc_addr: cannot listen on {}",
                config.server.grpc_addr
            )
        })?;
    let bound = BoundAddrs {
        http: http_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
    };
    on_bound(bound);
    info!(http = %bound.http, grpc = %bound.grpc, tls = config.server.tls.enabled, "listening");

    let admin_token = if config.auth.admin_token.is_empty() {
        let path = config.admin_token_path();
        let (token, created) = auth::load_or_create_admin_token(&path)
            .with_context(|| format!("admin token file {}", path.display()))?;
        if created {
            info!(path = %path.display(), "generated admin token (mode 0600); the CLI reads it from there");
        } else {
            info!(path = %path.display(), "using admin token");
        }
        token
    } else {
        config.auth.admin_token.clone()
    };

    let (services_tx, services_rx) = watch::channel::<Option<Arc<Services>>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // Recover the log in the background so health and readiness answer
    // while a large log is scanned.
    let recovery = {
        let config = config.clone();
        let services_tx = services_tx.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let result = start_services(&config, admin_token, stop_rx).await;
            match result {
                Ok(services) => {
                    let _ = services_tx.send(Some(services));
                    info!("ready");
                    Ok(())
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "startup failed");
                    Err(e)
                }
            }
        })
    };

    let state = AppState {
        config: config.clone(),
        services: services_rx.clone(),
    };
    let router = http::router(state);

    let http_task = {
        let mut stop = stop_rx.clone();
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let http_tls = http_tls.clone();
        tokio::spawn(async move {
            let handle = axum_server::Handle::new();
            let stopper = {
                let handle = handle.clone();
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                    handle.graceful_shutdown(Some(grace));
                }
            };
            tokio::spawn(stopper);
            let app = router.into_make_service();
            if let Some(rustls) = http_tls {
                axum_server::from_tcp_rustls(http_listener, rustls)
                    .handle(handle)
                    .serve(app)
                    .await?;
            } else {
                axum_server::from_tcp(http_listener)
                    .handle(handle)
                    .serve(app)
                    .await?;
            }
            anyhow::Ok(())
        })
    };

    let grpc_task = {
        let mut stop = stop_rx.clone();
        let service = grpc::IngestService {
            services: services_rx.clone(),
        };
        let tls_identity = tls_identity.clone();
        let max_message = config.ingest.max_body_bytes;
        tokio::spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some((cert, key)) = tls_identity {
                builder = builder.tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )?;
            }
            builder
                .add_service(
                    proto::ingest_server::IngestServer::new(service)
                        .max_decoding_message_size(max_message),
                )
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await?;
            anyhow::Ok(())
        })
    };

    let mut stop = stop_rx.clone();
    let recovery_result = tokio::select! {
        r = recovery => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    if let Some(result) = recovery_result {
        if let Err(e) = result.context("recovery task")? {
            let _ = services_tx.send(None);
            http_task.abort();
            grpc_task.abort();
            return Err(e);
        }
    }
    let _ = stop.wait_for(|s| *s).await;
    info!("shutting down: draining connections");
    let http_result = http_task.await.context("http task")?;
    // Open gRPC streams get the same grace as HTTP connections.
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let grpc_abort = grpc_task.abort_handle();
    let grpc_result =
        match tokio::time::timeout(grace + Duration::from_millis(100), grpc_task).await {
            Ok(joined) => joined.context("grpc task")?,
            Err(_) => {
                warn!(
                    grace_ms = grace.as_millis() as u64,
                    "gRPC streams still open after the grace period; closing them"
                );
                grpc_abort.abort();
                Ok(())
            }
        };
    let services = services_tx.borrow().clone();
    if let Some(services) = services {
        if let Some(ads) = &services.ads {
            // Tasks saw the stop signal: they emit, checkpoint and return.
            ads.join().await;
            info!("ad click pipeline stopped and checkpointed");
        }
        let log = services.log.clone();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .context("closing the log")??;
    }
    http_result?;
    grpc_result?;
    info!("shutdown complete: log flushed and fsynced");
    Ok(())
}

async fn start_services(
    config: &Config,
    admin_token: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Services>> {
    let log_dir = config.server.data_dir.join("log");
    let options = LogOptions::from_config(&config.log);
    let log_defaults = options.default_topic.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log = {
        let log_dir = log_dir.clone();
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || EmbeddedLog::open_with_clock(&log_dir, options, clock))
            .await??
    };
    for truncation in log.recovery_truncations() {
        warn!(
            topic = %truncation.topic,
            partition = truncation.partition,
            segment = truncation.segment_base_offset,
            truncated_bytes = truncation.truncated_bytes,
            reason = %truncation.reason,
            "recovery truncated a torn or corrupt tail"
        );
    }
    let bus: Arc<dyn EventBus> = Arc::new(log.clone());
    let ingestor = Arc::new(Ingestor::new(
        bus.clone(),
        config.ingest.clone(),
        clock.clone(),
    ));
    ingestor.ensure_topics(&log_defaults).await?;
    let ads = if config.ads.enabled {
        Some(start_ads(config, &bus, &clock, &log_defaults, stop).await?)
    } else {
        None
    };
    Ok(Arc::new(Services {
        log,
        bus,
        ingestor,
        auth: auth::Auth::new(&config.auth, admin_token),
        clock,
        log_defaults,
        ads,
    }))
}

/// Opens the aggregate store and starts the ad click pipeline: its tasks
/// checkpoint under `<data-dir>/checkpoints`, the store lives in
/// `<data-dir>/ads/aggregates.redb`.
async fn start_ads(
    config: &Config,
    bus: &Arc<dyn EventBus>,
    clock: &Arc<dyn Clock>,
    log_defaults: &riffle_log::TopicConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<riffle_ads::AdsPipeline>> {
    let ads_dir = config.server.data_dir.join("ads");
    std::fs::create_dir_all(&ads_dir)
        .with_context(|| format!("cannot create {}", ads_dir.display()))?;
    let store_path = ads_dir.join("aggregates.redb");
    let store =
        tokio::task::spawn_blocking(move || riffle_ads::RedbAggregateStore::open(store_path))
            .await??;
    let store: Arc<dyn riffle_ads::AggregateStore> = Arc::new(store);
    let checkpoints: Arc<dyn riffle_stream::CheckpointStore> = Arc::new(
        riffle_stream::FsCheckpointStore::new(config.server.data_dir.join("checkpoints")),
    );
    let template = riffle_log::TopicConfig {
        partitions: config.ingest.topic_partitions,
        ..log_defaults.clone()
    };
    // The archive directory is relative to the data directory like the
    // other paths; the pipeline takes it as given.
    let mut ads_config = config.ads.clone();
    if !ads_config.archive_dir.is_empty() {
        let archive_dir = config.server.data_dir.join(&ads_config.archive_dir);
        ads_config.archive_dir = archive_dir.to_string_lossy().into_owned();
    }
    let pipeline = riffle_ads::AdsPipeline::start(
        bus.clone(),
        store,
        checkpoints,
        clock.clone(),
        &ads_config,
        &template,
        stop,
    )
    .await
    .map_err(|e| anyhow::anyhow!("ads pipeline: {e}"))?;
    info!(
        pipeline = %config.ads.pipeline,
        input = %config.ads.input_topic,
        "ad click pipeline started"
    );
    Ok(pipeline)
}
