//! The server: REST (axum) and gRPC (tonic) over the log and the ingest
//! path, with auth, metrics and health. Domain crates never depend on this
//! crate; it composes them.

mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod rest;
pub mod state;

pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("riffle.v1");
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use anyhow::Context;
use riffle_core::config::Role;
use riffle_core::time::{Clock, SystemClock};
use riffle_ingest::Ingestor;
use riffle_log::{EmbeddedLog, EventBus, LogOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::state::{AppState, Services};

/// Addresses the server actually listens on (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// With role `datasets-publish`.
    pub datasets_publish: Option<SocketAddr>,
    /// With role `datasets-consume`.
    pub datasets_consume: Option<SocketAddr>,
}

/// The server's TLS material (`server.tls`): the HTTP listener's config
/// and the PEM certificate and key for gRPC; `None` without TLS.
async fn load_tls(
    config: &Config,
) -> anyhow::Result<(
    Option<axum_server::tls_rustls::RustlsConfig>,
    Option<(Vec<u8>, Vec<u8>)>,
)> {
    if !config.server.tls.enabled {
        return Ok((None, None));
    }
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
    Ok((Some(rustls), Some((cert, key))))
}

/// The sockets `serve` listens on, bound before anything is started.
struct Listeners {
    http: std::net::TcpListener,
    grpc: tokio::net::TcpListener,
    datasets_publish: Option<std::net::TcpListener>,
    datasets_consume: Option<std::net::TcpListener>,
    bound: BoundAddrs,
}

/// Binds every listener of the roles this process runs; an address in use
/// names its config key.
async fn bind_listeners(config: &Config) -> anyhow::Result<Listeners> {
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
    let roles = &config.server.roles;
    let publish_listener = if roles.contains(&Role::DatasetsPublish) {
        Some(bind_std(
            &config.datasets.publish_addr,
            "datasets.publish_addr",
        )?)
    } else {
        None
    };
    let consume_listener = if roles.contains(&Role::DatasetsConsume) {
        Some(bind_std(
            &config.datasets.consume_addr,
            "datasets.consume_addr",
        )?)
    } else {
        None
    };
    let bound = BoundAddrs {
        http: http_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
        datasets_publish: publish_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?,
        datasets_consume: consume_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?,
    };
    Ok(Listeners {
        http: http_listener,
        grpc: grpc_listener,
        datasets_publish: publish_listener,
        datasets_consume: consume_listener,
        bound,
    })
}

/// The admin token: `auth.admin_token`, or the one in
/// `<data_dir>/admin.token`, generated there (mode 0600) on first start.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if config.auth.admin_token.is_empty() {
        let path = config.admin_token_path();
        let (token, created) = auth::load_or_create_admin_token(&path)
            .with_context(|| format!("admin token file {}", path.display()))?;
        if created {
            info!(path = %path.display(), "generated admin token (mode 0600); the CLI reads it from there");
        } else {
            info!(path = %path.display(), "using admin token");
        }
        Ok(token)
    } else {
        Ok(config.auth.admin_token.clone())
    }
}

/// Where the dataset service is published once started (the listeners'
/// routers and the gRPC service read it; `serve` keeps the sender until
/// it ends).
type DatasetsSender = watch::Sender<Option<Arc<rest::datasets::DatasetsState>>>;

/// The threads of the dedicated dataset listener runtimes.
type DatasetThreads = Vec<std::thread::JoinHandle<anyhow::Result<()>>>;

/// The dataset listeners this process's roles bind.
struct DatasetListeners {
    publish: Option<std::net::TcpListener>,
    consume: Option<std::net::TcpListener>,
}

/// Starts the dataset service and its publish and consume listeners, each
/// on a dedicated runtime (the publish path isolated from the consume
/// path). Returns their threads and the service's background tasks; both
/// empty when this process runs no datasets role.
async fn start_dataset_listeners(
    config: &Arc<Config>,
    listeners: DatasetListeners,
    admin_token: String,
    http_tls: Option<axum_server::tls_rustls::RustlsConfig>,
    datasets_tx: &DatasetsSender,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<(DatasetThreads, Vec<tokio::task::JoinHandle<()>>)> {
    let DatasetListeners {
        publish: publish_listener,
        consume: consume_listener,
    } = listeners;
    let mut datasets_threads = Vec::new();
    if publish_listener.is_none() && consume_listener.is_none() {
        return Ok((datasets_threads, Vec::new()));
    }
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let (state, tasks) = start_datasets(
        config,
        admin_token,
        publish_listener.is_some(),
        stop_rx.clone(),
    )
    .await?;
    let _ = datasets_tx.send(Some(state));
    let app = rest::datasets::DatasetsApp {
        state: datasets_tx.subscribe(),
    };
    if let Some(listener) = publish_listener {
        datasets_threads.push(spawn_dedicated(
            "ds-publish",
            config.datasets.publish_workers,
            listener,
            rest::datasets::publish_router(app.clone()),
            http_tls.clone(),
            stop_rx.clone(),
            grace,
        )?);
    }
    if let Some(listener) = consume_listener {
        datasets_threads.push(spawn_dedicated(
            "ds-consume",
            config.datasets.consume_workers,
            listener,
            rest::datasets::consume_router(app),
            http_tls.clone(),
            stop_rx.clone(),
            grace,
        )?);
    }
    Ok((datasets_threads, tasks))
}

/// Binds a listener of `key` (a config key, for the error message).
fn bind_std(addr: &str, key: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{key}: cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `router` on `listener` from a runtime of its own (`workers`
/// threads) in a thread of its own, until `stop`.
fn spawn_dedicated(
    name: &'static str,
    workers: usize,
    listener: std::net::TcpListener,
    router: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("{name}: cannot start its runtime"))?;
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || runtime.block_on(serve_router(listener, router, tls, stop, grace)))?;
    Ok(thread)
}

/// Serves `router` on `listener` (HTTPS with `tls`) until `stop`, then
/// drains connections for `grace`: the main listener and both dataset
/// listeners run this.
async fn serve_router(
    listener: std::net::TcpListener,
    router: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            handle.graceful_shutdown(Some(grace));
        });
    }
    let app = router.into_make_service();
    if let Some(rustls) = tls {
        axum_server::from_tcp_rustls(listener, rustls)
            .handle(handle)
            .serve(app)
            .await?;
    } else {
        axum_server::from_tcp(listener)
            .handle(handle)
            .serve(app)
            .await?;
    }
    Ok(())
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
    let (http_tls, tls_identity) = load_tls(&config).await?;
    let Listeners {
        http: http_listener,
        grpc: grpc_listener,
        datasets_publish: publish_listener,
        datasets_consume: consume_listener,
        bound,
    } = bind_listeners(&config).await?;
    on_bound(bound);
    let show = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    info!(
        http = %bound.http,
        grpc = %bound.grpc,
        datasets_publish = %show(bound.datasets_publish),
        datasets_consume = %show(bound.datasets_consume),
        tls = config.server.tls.enabled,
        "listening"
    );

    let admin_token = admin_token(&config)?;

    let (services_tx, services_rx) = watch::channel::<Option<Arc<Services>>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let (datasets_tx, datasets_rx) = watch::channel(None);
    let (datasets_threads, datasets_tasks) = start_dataset_listeners(
        &config,
        DatasetListeners {
            publish: publish_listener,
            consume: consume_listener,
        },
        admin_token.clone(),
        http_tls.clone(),
        &datasets_tx,
        stop_rx.clone(),
    )
    .await?;

    // Recover the log in the background so health and readiness answer
    // while a large log is scanned.
    let recovery = spawn_recovery(&config, admin_token, services_tx.clone(), stop_rx.clone());
    let state = AppState {
        config: config.clone(),
        services: services_rx.clone(),
    };
    let http_task = spawn_http(
        http_listener,
        rest::router(state),
        http_tls,
        &config,
        stop_rx.clone(),
    );
    let grpc_task = spawn_grpc(
        grpc_listener,
        &config,
        services_rx,
        datasets_rx,
        tls_identity,
        stop_rx.clone(),
    );

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
    shut_down(
        &config,
        http_task,
        grpc_task,
        datasets_threads,
        datasets_tasks,
        &services_tx,
    )
    .await?;
    info!("shutdown complete");
    Ok(())
}

/// Opens the log and starts the pipelines in the background (when this
/// process runs a role that needs them) and publishes the services once
/// ready; an error ends `serve`.
fn spawn_recovery(
    config: &Arc<Config>,
    admin_token: String,
    services_tx: watch::Sender<Option<Arc<Services>>>,
    stop_rx: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    let core_roles = config
        .server
        .roles
        .iter()
        .any(|r| matches!(r, Role::Ingest | Role::Process | Role::Serve));
    let config = config.clone();
    tokio::spawn(async move {
        if !core_roles {
            info!("ready (no ingest, process or serve role: the log is not opened)");
            return Ok(());
        }
        match start_services(&config, admin_token, stop_rx).await {
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
}

/// Serves the REST router on the main listener (HTTPS when TLS is on)
/// until the stop signal, then drains connections for the grace period.
fn spawn_http(
    listener: std::net::TcpListener,
    router: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    config: &Config,
    stop: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    tokio::spawn(serve_router(listener, router, tls, stop, grace))
}

/// Serves gRPC ingest and datasets on the gRPC listener until the stop
/// signal.
fn spawn_grpc(
    listener: tokio::net::TcpListener,
    config: &Config,
    services: watch::Receiver<Option<Arc<Services>>>,
    datasets: watch::Receiver<Option<Arc<rest::datasets::DatasetsState>>>,
    tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    let roles = &config.server.roles;
    let service = grpc::IngestService {
        services,
        ingest_role: roles.contains(&Role::Ingest),
    };
    let datasets_service = grpc::datasets::server(datasets, roles.contains(&Role::DatasetsPublish));
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
            .add_service(datasets_service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await?;
        anyhow::Ok(())
    })
}

/// The shutdown sequence after the stop signal: drain HTTP and gRPC (open
/// gRPC streams get the same grace as HTTP connections), stop the dataset
/// listeners, let the pipelines emit and checkpoint, close the log.
async fn shut_down(
    config: &Config,
    http_task: JoinHandle<anyhow::Result<()>>,
    grpc_task: JoinHandle<anyhow::Result<()>>,
    datasets_threads: DatasetThreads,
    datasets_tasks: Vec<JoinHandle<()>>,
    services: &watch::Sender<Option<Arc<Services>>>,
) -> anyhow::Result<()> {
    info!("shutting down: draining connections");
    let http_result = http_task.await.context("http task")?;
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
    for thread in datasets_threads {
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("dataset listener thread")?;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "dataset listener failed"),
            Err(_) => warn!("dataset listener thread panicked"),
        }
    }
    for task in datasets_tasks {
        let _ = task.await;
    }
    // Read only now: recovery may have finished while connections drained.
    let services = services.borrow().clone();
    if let Some(services) = services {
        if let Some(ads) = &services.ads {
            // Tasks saw the stop signal: they emit, checkpoint and return.
            ads.join().await;
            info!("ad click pipeline stopped and checkpointed");
        }
        if let Some(log) = services.log.clone() {
            tokio::task::spawn_blocking(move || log.close())
                .await
                .context("closing the log")??;
        }
    }
    http_result?;
    grpc_result?;
    Ok(())
}

async fn start_services(
    config: &Config,
    admin_token: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Services>> {
    let options = LogOptions::from_config(&config.log);
    let log_defaults = options.default_topic.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (log, bus) = open_bus(config, options, &clock).await?;
    let ingestor = Arc::new(Ingestor::new(
        bus.clone(),
        config.ingest.clone(),
        clock.clone(),
    ));
    ingestor.ensure_topics(&log_defaults).await?;
    let roles = riffle_ads::PipelineRoles {
        process: config.server.roles.contains(&Role::Process),
        serve: config.server.roles.contains(&Role::Serve),
    };
    let ads = if config.ads.enabled && (roles.process || roles.serve) {
        Some(start_ads(config, &bus, &clock, &log_defaults, roles, stop).await?)
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

/// Opens the bus `[bus]` names: the embedded log under `<data-dir>/log`
/// (recovered first) or a Kafka cluster.
async fn open_bus(
    config: &Config,
    options: LogOptions,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Option<EmbeddedLog>, Arc<dyn EventBus>)> {
    match config.bus.kind {
        riffle_core::config::BusKind::Embedded => {
            let log_dir = config.server.data_dir.join("log");
            let clock = clock.clone();
            let log = tokio::task::spawn_blocking(move || {
                EmbeddedLog::open_with_clock(&log_dir, options, clock)
            })
            .await??;
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
            Ok((Some(log), bus))
        }
        riffle_core::config::BusKind::Kafka => open_kafka(config).await.map(|bus| (None, bus)),
    }
}

#[cfg(feature = "kafka")]
async fn open_kafka(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    let kafka = &config.bus.kafka;
    let options = riffle_log::kafka::KafkaOptions {
        brokers: kafka.brokers.clone(),
        transactions: kafka.transactions,
        replication_factor: kafka.replication_factor,
        request_timeout: Duration::from_millis(kafka.request_timeout_ms),
        properties: kafka.properties.clone(),
    };
    let bus = riffle_log::kafka::KafkaBus::connect(options)
        .await
        .with_context(|| format!("bus.kafka.brokers = {:?}", kafka.brokers))?;
    info!(brokers = %kafka.brokers, transactions = kafka.transactions, "connected to Kafka");
    Ok(Arc::new(bus))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka(_config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    anyhow::bail!("bus.kind: \"kafka\" needs a riffle built with the `kafka` feature (the released binary has it)")
}

/// Starts the ad click pipeline with this process's roles. Tasks (role
/// `process`) checkpoint under `bus.kafka.checkpoint_dir` on Kafka (a
/// directory every member shares) or `<data-dir>/checkpoints`; the writer
/// (role `serve`) materialises the aggregates into
/// `<data-dir>/ads/aggregates.redb`, which the queries read.
async fn start_ads(
    config: &Config,
    bus: &Arc<dyn EventBus>,
    clock: &Arc<dyn Clock>,
    log_defaults: &riffle_log::TopicConfig,
    roles: riffle_ads::PipelineRoles,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<riffle_ads::AdsPipeline>> {
    let store: Arc<dyn riffle_ads::AggregateStore> = if roles.serve {
        let ads_dir = config.server.data_dir.join("ads");
        std::fs::create_dir_all(&ads_dir)
            .with_context(|| format!("cannot create {}", ads_dir.display()))?;
        let store_path = ads_dir.join("aggregates.redb");
        let store =
            tokio::task::spawn_blocking(move || riffle_ads::RedbAggregateStore::open(store_path))
                .await??;
        Arc::new(store)
    } else {
        // Process-only: no queries here, nothing is written to a store.
        Arc::new(riffle_ads::MemoryAggregateStore::new())
    };
    let checkpoint_dir = match config.bus.kind {
        riffle_core::config::BusKind::Kafka if !config.bus.kafka.checkpoint_dir.is_empty() => {
            std::path::PathBuf::from(&config.bus.kafka.checkpoint_dir)
        }
        _ => config.server.data_dir.join("checkpoints"),
    };
    let checkpoints: Arc<dyn riffle_stream::CheckpointStore> =
        Arc::new(riffle_stream::FsCheckpointStore::new(checkpoint_dir));
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
        roles,
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

/// Opens the dataset metadata store (SQLite), the blob store and the master
/// key, builds the service and starts its background loops (cache refresh
/// always; rollout driver and janitor with the publish role).
async fn start_datasets(
    config: &Config,
    admin_token: String,
    publish_role: bool,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    Arc<rest::datasets::DatasetsState>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let ds = &config.datasets;
    let base = config.server.data_dir.join("datasets");
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let store = if ds.metadata_url.is_empty() {
        riffle_datasets::SqliteMetadataStore::open(&base.join("metadata.db")).await
    } else {
        riffle_datasets::SqliteMetadataStore::connect(&ds.metadata_url).await
    }
    .map_err(|e| anyhow::anyhow!("datasets metadata store: {e}"))?;
    let blob_dir = config.server.data_dir.join(&ds.blob_dir);
    let blobs = riffle_datasets::ObjectBlobStore::local(&blob_dir)
        .map_err(|e| anyhow::anyhow!("datasets.blob_dir {}: {e}", blob_dir.display()))?;
    let master = if ds.master_key.is_empty() {
        riffle_datasets::crypto::MasterKey::load_or_create(&base.join("master.key"))
    } else {
        riffle_datasets::crypto::MasterKey::from_hex(&ds.master_key, "datasets.master_key")
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let service_config = riffle_datasets::service::ServiceConfig {
        inline_max_bytes: ds.inline_max_bytes,
        max_payload_bytes: (ds.max_payload_bytes > 0).then_some(ds.max_payload_bytes),
        cache_refresh: Duration::from_millis(ds.cache_refresh_ms),
        max_wait: Duration::from_millis(ds.max_wait_ms),
        rollout_tick: Duration::from_millis(ds.rollout_tick_ms),
        janitor_interval: Duration::from_millis(ds.janitor_interval_ms),
        orphan_grace_ms: ds.orphan_grace_ms.min(i64::MAX as u64) as i64,
        consumed_flush: Duration::from_secs(10),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let service = riffle_datasets::DatasetService::start(
        Arc::new(store),
        Arc::new(blobs),
        clock,
        master,
        service_config,
    )
    .await
    .map_err(|e| anyhow::anyhow!("dataset service: {e}"))?;
    let tasks = service.spawn_background(publish_role, stop);
    info!(
        blob_dir = %blob_dir.display(),
        publish = publish_role,
        "dataset service started"
    );
    let policy =
        riffle_datasets::access::AccessPolicy::new(admin_token, config.datasets.tokens.clone());
    Ok((
        Arc::new(rest::datasets::DatasetsState { service, policy }),
        tasks,
    ))
}
