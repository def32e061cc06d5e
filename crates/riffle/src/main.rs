//! `riffle`: the single binary. `riffle serve` runs the server; the other
//! commands talk to a running server over HTTP (`--server`), except
//! `riffle bench`, which measures in-process components.

mod ads;
mod bench;
mod client;
mod commands;
mod datasets;
mod features;
mod simulate;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use riffle_core::config::{ConfigSources, LogFormat};
use riffle_ingest::tail::LineFormat;
use riffle_server::config::Config;

#[derive(Parser)]
#[command(
    name = "riffle",
    version,
    about = "Riffle: the open real-time ML backend — durable event log, ingest, exact ad click aggregates and versioned dataset pub/sub in one binary (live-stream features and recommendations to come)",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// Server base URL.
    #[arg(
        long,
        env = "RIFFLE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// Bearer token. Default: the admin token in <data-dir>/admin.token, if readable.
    #[arg(long, env = "RIFFLE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local server, where the admin token is read from.
    #[arg(
        long = "data-dir",
        value_name = "DIR",
        env = "RIFFLE_DATA_DIR",
        default_value = "./riffle-data",
        global = true
    )]
    client_data_dir: PathBuf,
    /// PEM file of the CA that signed the server's certificate, to trust for https:// servers
    /// (the certificate itself must be a leaf, not a CA).
    #[arg(long, value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
}

impl ClientOpts {
    fn client(&self) -> anyhow::Result<client::Client> {
        let token = client::resolve_token(self.token.clone(), &self.client_data_dir, &self.server);
        client::Client::new(&self.server, token, self.ca_cert.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: embedded log, HTTP API (/v1), gRPC, the ad click pipeline, the dataset
    /// publish and consume listeners, metrics (what runs is chosen by --roles).
    Serve(ServeArgs),
    /// Versioned dataset pub/sub: topics, publish, latest/long-poll, download, watch, pins,
    /// scopes, staged rollouts, audit (talks to the dataset publish listener).
    Datasets {
        #[command(subcommand)]
        command: datasets::DatasetsCommand,
        #[command(flatten)]
        client: datasets::DatasetsOpts,
    },
    /// Create, list, describe and delete topics of a running server.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Send NDJSON events from stdin to a topic (each line is validated as an event).
    Produce {
        /// Topic to write to (must exist).
        #[arg(long)]
        topic: String,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a topic's records as NDJSON.
    Consume {
        /// Topic to read.
        topic: String,
        /// Where to start: earliest, latest, an offset (applied to every partition) or an RFC 3339 time.
        /// Default: the group's committed offsets with --group, else earliest.
        #[arg(long)]
        from: Option<String>,
        /// Consumer group: start from its committed offsets and commit after each batch printed.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Read only this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Exit once the end of every partition is reached instead of waiting for more.
        #[arg(long)]
        no_follow: bool,
        /// Print only the record values.
        #[arg(long)]
        value_only: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Follow append-only log files (globs) and send their lines as events.
    Tail {
        /// Files or glob patterns, e.g. '/var/log/ads/*.log'.
        #[arg(required = true)]
        files: Vec<String>,
        /// Line format: seed ([AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA), ndjson, or auto.
        #[arg(long, default_value = "auto")]
        format: LineFormat,
        /// Checkpoint file (file identity + byte offset per file).
        #[arg(long, default_value = "./riffle-tail.checkpoint")]
        checkpoint: PathBuf,
        /// Topic for malformed or rejected lines.
        #[arg(long, default_value = "tail.dead_letter")]
        dead_letter_topic: String,
        /// How often to look for new lines, in milliseconds.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
        /// Read what is there once, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Recount ad clicks of a time range from the raw events (log or Parquet archive) and report
    /// every (ad, minute, filter) whose stored count differs; exits with status 1 on a mismatch.
    Reconcile {
        /// Range start (inclusive): epoch ms or RFC 3339, minute-aligned.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// Range end (exclusive): epoch ms or RFC 3339, minute-aligned.
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Where raw events are read from: the log, or the Parquet archive (continued from the
        /// log past its newest file) for ranges the log's retention has deleted.
        #[arg(long, default_value = "log", value_parser = ["log", "parquet"])]
        source: String,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Recalculate the ad click aggregates of a time range from raw events (the live pipeline
    /// keeps running) and replace the stored range atomically; shows progress.
    Recalc {
        /// Range start (inclusive): epoch ms or RFC 3339, minute-aligned.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// Range end (exclusive): epoch ms or RFC 3339, minute-aligned. The range must be final:
        /// its end plus the allowed lateness at or before the pipeline watermark.
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Where raw events are read from: the log, or the Parquet archive (continued from the
        /// log past its newest file) for ranges the log's retention has deleted.
        #[arg(long, default_value = "log", value_parser = ["log", "parquet"])]
        source: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Live-stream feature definitions: list or check a features.toml (docs/features.md).
    Features {
        #[command(subcommand)]
        command: features::FeaturesCommand,
    },
    /// Generate workloads (ad clicks with faults, a live-streaming platform) and their ground truth, to a file or a server.
    Simulate {
        #[command(subcommand)]
        command: simulate::SimulateCommand,
    },
    /// Benchmarks (results go to stdout; record them in docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a topic (needs the admin token).
    Create {
        /// Topic name: 1-200 characters of A-Z a-z 0-9 . _ -
        name: String,
        /// Number of partitions (default: log.default_partitions, 4).
        #[arg(long)]
        partitions: Option<u32>,
        /// retention.ms; -1 keeps data forever.
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<i64>,
        /// retention.bytes per partition; -1 for no limit.
        #[arg(long, allow_hyphen_values = true)]
        retention_bytes: Option<i64>,
        /// segment.bytes.
        #[arg(long)]
        segment_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions with start and end offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data (needs the admin token).
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Data directory (log, admin token). Default from config: ./riffle-data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address. Default from config: 127.0.0.1:8080.
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<String>,
    /// gRPC listen address. Default from config: 127.0.0.1:50051.
    #[arg(long, value_name = "HOST:PORT")]
    grpc_addr: Option<String>,
    /// Dataset publish listener. Default from config: 127.0.0.1:8081.
    #[arg(long, value_name = "HOST:PORT")]
    datasets_publish_addr: Option<String>,
    /// Dataset consume listener. Default from config: 127.0.0.1:8082.
    #[arg(long, value_name = "HOST:PORT")]
    datasets_consume_addr: Option<String>,
    /// What this process runs, comma-separated: ingest (POST /v1/events, gRPC ingest), process
    /// (pipeline tasks of the input partitions this process owns), serve (aggregate writer and
    /// query APIs), datasets-publish, datasets-consume. Default from config: all. Without
    /// ingest, process and serve the bus is not opened (a dataset-only process). Separate
    /// ingest / process / serve processes need a shared bus: bus.kind = "kafka".
    #[arg(long, value_name = "ROLES", value_delimiter = ',')]
    roles: Vec<String>,
    /// Run on Kafka at these brokers (host:port,…): sets bus.kind = "kafka" and
    /// bus.kafka.brokers. Default from config: the embedded log.
    #[arg(long, value_name = "HOST:PORT,…")]
    kafka_brokers: Option<String>,
    /// Extra TOML config files, applied after ./riffle.toml and before RIFFLE__* variables.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Exit at once (as if killed) when standard input reaches end of file. A supervisor or
    /// test harness that keeps the other end of a pipe open takes this process with it when it
    /// dies, however it dies. Acknowledged data is durable either way.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

/// Ends the process when standard input closes (`--exit-on-stdin-eof`).
fn exit_on_stdin_eof() {
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            loop {
                match std::io::Read::read(&mut stdin, &mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            eprintln!("standard input closed (--exit-on-stdin-eof): exiting");
            std::process::exit(1);
        });
    if let Err(error) = spawned {
        eprintln!("warning: cannot watch standard input: {error}");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIFFLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut overrides = Vec::new();
    if let Some(dir) = &args.data_dir {
        overrides.push((
            "server.data_dir".to_string(),
            dir.display().to_string().into(),
        ));
    }
    if let Some(addr) = &args.http_addr {
        overrides.push(("server.http_addr".to_string(), addr.clone().into()));
    }
    if let Some(addr) = &args.grpc_addr {
        overrides.push(("server.grpc_addr".to_string(), addr.clone().into()));
    }
    if let Some(addr) = &args.datasets_publish_addr {
        overrides.push(("datasets.publish_addr".to_string(), addr.clone().into()));
    }
    if let Some(addr) = &args.datasets_consume_addr {
        overrides.push(("datasets.consume_addr".to_string(), addr.clone().into()));
    }
    if let Some(brokers) = &args.kafka_brokers {
        overrides.push((
            "bus.kind".to_string(),
            riffle_core::config::toml_value::Value::from("kafka"),
        ));
        overrides.push((
            "bus.kafka.brokers".to_string(),
            riffle_core::config::toml_value::Value::from(brokers.as_str()),
        ));
    }
    if !args.roles.is_empty() {
        let mut roles = Vec::new();
        for role in &args.roles {
            let role = riffle_core::config::Role::parse(role)
                .map_err(|e| anyhow::anyhow!("--{}", e.message()))?;
            roles.push(riffle_core::config::toml_value::Value::from(role.as_str()));
        }
        overrides.push((
            "server.roles".to_string(),
            riffle_core::config::toml_value::Value::from(roles),
        ));
    }
    Ok(Config::load(&ConfigSources {
        cwd_file: Some(PathBuf::from("riffle.toml")),
        files: args.config.clone(),
        overrides,
        use_env: true,
    })?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            init_tracing(config.telemetry.log_format, &config.telemetry.log_level);
            if args.exit_on_stdin_eof {
                exit_on_stdin_eof();
            }
            riffle_server::serve(config, shutdown_signal(), |_| {}).await
        }
        Command::Datasets { command, client } => {
            init_tracing(LogFormat::Text, "warn");
            datasets::run(command, client).await
        }
        Command::Topics { command, client } => {
            init_tracing(LogFormat::Text, "warn");
            let client = client.client()?;
            match command {
                TopicsCommand::Create {
                    name,
                    partitions,
                    retention_ms,
                    retention_bytes,
                    segment_bytes,
                } => {
                    commands::topics_create(
                        &client,
                        &name,
                        partitions,
                        retention_ms,
                        retention_bytes,
                        segment_bytes,
                    )
                    .await
                }
                TopicsCommand::List => commands::topics_list(&client).await,
                TopicsCommand::Describe { name } => commands::topics_describe(&client, &name).await,
                TopicsCommand::Delete { name } => commands::topics_delete(&client, &name).await,
            }
        }
        Command::Produce {
            topic,
            batch,
            client,
        } => {
            init_tracing(LogFormat::Text, "warn");
            commands::produce(&client.client()?, &topic, batch.max(1)).await
        }
        Command::Consume {
            topic,
            from,
            group,
            max,
            partition,
            no_follow,
            value_only,
            client,
        } => {
            init_tracing(LogFormat::Text, "warn");
            commands::consume(
                &client.client()?,
                commands::ConsumeArgs {
                    topic,
                    from,
                    group,
                    max,
                    partition,
                    follow: !no_follow,
                    value_only,
                },
            )
            .await
        }
        Command::Tail {
            files,
            format,
            checkpoint,
            dead_letter_topic,
            poll_ms,
            once,
            client,
        } => {
            init_tracing(LogFormat::Text, "info");
            commands::tail(
                client.client()?,
                commands::TailArgs {
                    patterns: files,
                    format,
                    checkpoint,
                    dead_letter_topic,
                    poll_interval: Duration::from_millis(poll_ms.max(10)),
                    once,
                },
            )
            .await
            .context("tail")
        }
        Command::Reconcile {
            from,
            to,
            source,
            json,
            client,
        } => {
            init_tracing(LogFormat::Text, "warn");
            ads::reconcile(&client.client()?, &from, &to, &source, json).await
        }
        Command::Recalc {
            from,
            to,
            source,
            client,
        } => {
            init_tracing(LogFormat::Text, "warn");
            ads::recalc(&client.client()?, &from, &to, &source).await
        }
        Command::Features { command } => features::run(command),
        Command::Simulate { command } => simulate::run(command).await,
        Command::Bench { command } => {
            init_tracing(LogFormat::Text, "warn");
            bench::run(command).await
        }
    }
}
