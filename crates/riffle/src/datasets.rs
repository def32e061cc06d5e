//! `riffle datasets …`: the dataset pub/sub CLI over the REST API of the
//! publish listener (every endpoint; default http://127.0.0.1:8081).
//! `watch` uses the client library (`riffle_datasets::client`) like an
//! application would.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::client::{encode, resolve_token, Client};

#[derive(Args, Clone)]
pub struct DatasetsOpts {
    /// Dataset server base URL: the publish listener (datasets.publish_addr) serves every
    /// endpoint; the consume listener (datasets.consume_addr) serves reads.
    #[arg(
        long,
        env = "RIFFLE_DATASETS_SERVER",
        default_value = "http://127.0.0.1:8081",
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
    /// PEM file of the CA that signed the server's certificate (https:// servers).
    #[arg(long, value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
}

impl DatasetsOpts {
    fn token(&self) -> Option<String> {
        resolve_token(self.token.clone(), &self.client_data_dir, &self.server)
    }

    fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token(), self.ca_cert.as_deref())
    }
}

#[derive(Subcommand)]
pub enum DatasetsCommand {
    /// Create, list, describe and delete dataset topics.
    Topics {
        #[command(subcommand)]
        command: Option<TopicsCommand>,
        /// With no subcommand: list topics with no publish and no consumption in this period
        /// (e.g. 30d), candidates for cleanup.
        #[arg(long, value_name = "DURATION", global = true)]
        unused_for: Option<String>,
    },
    /// Publish a new version from a file (or stdin with '-'): streamed, any size.
    Publish {
        topic: String,
        /// Payload file, '-' for stdin. Omit with --checksum (metadata-only publish).
        file: Option<PathBuf>,
        /// Audience scope K=V or '*' (repeatable). None: global.
        #[arg(long = "scope", value_name = "K=V")]
        scopes: Vec<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Visible to nobody until scopes are added or a rollout starts.
        #[arg(long)]
        staged: bool,
        /// Metadata-only publish: reuse the payload with this checksum (sha256:<hex>).
        #[arg(long)]
        checksum: Option<String>,
    },
    /// Version history of a topic.
    Versions { topic: String },
    /// The version a consumer with these labels should hold (long-polls with --wait).
    Latest {
        topic: String,
        /// Consumer labels K=V,K=V.
        #[arg(long, default_value = "")]
        labels: String,
        /// The version held now: answer only with news.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Hold the request up to this long (e.g. 30s) for a newer version.
        #[arg(long)]
        wait: Option<String>,
        /// Latest as of this time (RFC 3339 or epoch ms).
        #[arg(long)]
        at: Option<String>,
    },
    /// Download a version's payload (the latest for --labels when no --version).
    #[command(disable_version_flag = true)]
    Get {
        topic: String,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, default_value = "")]
        labels: String,
        /// Output file; default stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Follow a topic with the client library: print every version change.
    Watch {
        topic: String,
        #[arg(long, default_value = "")]
        labels: String,
        /// Fallback cache directory (used when the server is unreachable).
        #[arg(long)]
        fallback_dir: Option<PathBuf>,
        /// Exit after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Pin a topic (or one scope of it) to a version.
    #[command(disable_version_flag = true)]
    Pin {
        topic: String,
        version: u64,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove a pin: consumers return to the latest version.
    Unpin {
        topic: String,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Add audience scopes to a published version.
    #[command(disable_version_flag = true)]
    Scopes {
        topic: String,
        version: u64,
        #[arg(long = "scope", value_name = "K=V", required = true)]
        scopes: Vec<String>,
    },
    /// Start a staged rollout: --stage SCOPE@DELAY, in order (e.g. cluster=canary@0s
    /// region=us-east@10m '*@1h'); each delay counts from the previous stage.
    #[command(disable_version_flag = true)]
    Rollout {
        topic: String,
        version: u64,
        #[arg(long = "stage", value_name = "SCOPE@DELAY", required = true)]
        stages: Vec<String>,
    },
    /// Show a rollout, or change it: pause, resume, abort, fast-forward.
    Rollouts {
        topic: String,
        /// Rollout id; omit to list the topic's rollouts.
        id: Option<u64>,
        #[arg(long)]
        action: Option<String>,
    },
    /// Who published, pinned, rolled out or deleted what, and when.
    Audit { topic: String },
}

#[derive(Subcommand)]
pub enum TopicsCommand {
    Create {
        name: String,
        /// Keep at most this many versions (pinned ones always stay).
        #[arg(long)]
        retention_count: Option<u64>,
        /// Delete versions older than this (e.g. 30d).
        #[arg(long)]
        retention_age: Option<String>,
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Encrypt payloads at rest (AES-256-GCM, per-topic key).
        #[arg(long)]
        encrypted: bool,
    },
    List,
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn topic_path(topic: &str) -> String {
    format!("/v1/datasets/topics/{}", encode(topic))
}

pub async fn run(command: DatasetsCommand, opts: DatasetsOpts) -> anyhow::Result<()> {
    let client = opts.client()?;
    match command {
        DatasetsCommand::Topics {
            command,
            unused_for,
        } => match command {
            None | Some(TopicsCommand::List) => {
                let path = match unused_for {
                    Some(age) => format!("/v1/datasets/topics?unused_for={}", encode(&age)),
                    None => "/v1/datasets/topics".to_string(),
                };
                print(&client.get(&path).await?);
            }
            Some(TopicsCommand::Create {
                name,
                retention_count,
                retention_age,
                owner,
                description,
                encrypted,
            }) => {
                let body = json!({
                    "name": name,
                    "retention_count": retention_count,
                    "retention_age": retention_age,
                    "owner": owner,
                    "description": description,
                    "encrypted": encrypted,
                });
                let (_, value) = client
                    .send_json(
                        client
                            .request(Method::POST, "/v1/datasets/topics")
                            .json(&body),
                    )
                    .await?;
                print(&value);
            }
            Some(TopicsCommand::Describe { name }) => print(&client.get(&topic_path(&name)).await?),
            Some(TopicsCommand::Delete { name }) => {
                let (_, value) = client
                    .send_json(client.request(Method::DELETE, &topic_path(&name)))
                    .await?;
                print(&value);
            }
        },
        DatasetsCommand::Publish {
            topic,
            file,
            scopes,
            meta,
            staged,
            checksum,
        } => {
            let mut query: Vec<String> = scopes
                .iter()
                .map(|s| format!("scope={}", encode(s)))
                .collect();
            for pair in &meta {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--meta: {pair:?} is not KEY=VALUE"))?;
                query.push(format!("meta.{}={}", encode(k), encode(v)));
            }
            if staged {
                query.push("staged=true".into());
            }
            let path = format!("{}/versions?{}", topic_path(&topic), query.join("&"));
            let request = client.request(Method::POST, &path);
            let request = match (&checksum, file) {
                (Some(sum), None) => {
                    let path = format!("{path}&checksum={}", encode(sum));
                    client.request(Method::POST, &path)
                }
                (Some(_), Some(_)) => bail!("--checksum publishes existing data: give no file"),
                (None, None) => bail!("file: give a payload file, or '-' for stdin"),
                (None, Some(file)) if file.as_os_str() == "-" => {
                    let stdin = tokio::io::stdin();
                    let stream = tokio_util_stream(stdin);
                    request.body(reqwest::Body::wrap_stream(stream))
                }
                (None, Some(file)) => {
                    let handle = tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("file: cannot open {}", file.display()))?;
                    let length = handle.metadata().await?.len();
                    request
                        .header(reqwest::header::CONTENT_LENGTH, length)
                        .body(reqwest::Body::wrap_stream(tokio_util_stream(handle)))
                }
            };
            // A big upload may take long: no overall timeout.
            let (_, value) = client
                .send_json(request.timeout(Duration::from_secs(24 * 3600)))
                .await?;
            print(&value);
        }
        DatasetsCommand::Versions { topic } => print(
            &client
                .get(&format!("{}/versions", topic_path(&topic)))
                .await?,
        ),
        DatasetsCommand::Latest {
            topic,
            labels,
            after,
            wait,
            at,
        } => {
            let mut query = vec![
                format!("labels={}", encode(&labels)),
                format!("after={after}"),
            ];
            let mut timeout = Duration::from_secs(30);
            if let Some(wait) = &wait {
                let ms = riffle_datasets::model::parse_duration_ms(wait, "--wait")?;
                timeout += Duration::from_millis(ms);
                query.push(format!("wait={}", encode(wait)));
            }
            if let Some(at) = &at {
                if after != 0 || wait.is_some() {
                    bail!("--at: a point-in-time lookup takes neither --after nor --wait");
                }
                query = vec![
                    format!("labels={}", encode(&labels)),
                    format!("at={}", encode(at)),
                ];
            }
            let path = format!("{}/latest?{}", topic_path(&topic), query.join("&"));
            let (status, value) = client
                .send_json(client.request(Method::GET, &path).timeout(timeout))
                .await?;
            if status == StatusCode::NO_CONTENT {
                eprintln!("no newer version for these labels");
                std::process::exit(3);
            }
            print(&value);
        }
        DatasetsCommand::Get {
            topic,
            version,
            labels,
            output,
        } => {
            let number = match version {
                Some(n) => n,
                None => {
                    let path = format!("{}/latest?labels={}", topic_path(&topic), encode(&labels));
                    let (status, value) =
                        client.send_json(client.request(Method::GET, &path)).await?;
                    if status == StatusCode::NO_CONTENT {
                        bail!("topic {topic:?} has no version for labels {labels:?}");
                    }
                    value["version"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("server answered without a version: {value}"))?
                }
            };
            download(&client, &topic, number, output).await?;
        }
        DatasetsCommand::Watch {
            topic,
            labels,
            fallback_dir,
            count,
        } => watch(&opts, topic, labels, fallback_dir, count).await?,
        DatasetsCommand::Pin {
            topic,
            version,
            scope,
        } => {
            let (_, value) = client
                .send_json(
                    client
                        .request(Method::PUT, &format!("{}/pin", topic_path(&topic)))
                        .json(&json!({"version": version, "scope": scope})),
                )
                .await?;
            print(&value);
        }
        DatasetsCommand::Unpin { topic, scope } => {
            let mut path = format!("{}/pin", topic_path(&topic));
            if let Some(scope) = &scope {
                path.push_str(&format!("?scope={}", encode(scope)));
            }
            let (_, value) = client
                .send_json(client.request(Method::DELETE, &path))
                .await?;
            print(&value);
        }
        DatasetsCommand::Scopes {
            topic,
            version,
            scopes,
        } => {
            let (_, value) = client
                .send_json(
                    client
                        .request(
                            Method::POST,
                            &format!("{}/versions/{version}/scopes", topic_path(&topic)),
                        )
                        .json(&json!({"scopes": scopes})),
                )
                .await?;
            print(&value);
        }
        DatasetsCommand::Rollout {
            topic,
            version,
            stages,
        } => {
            let mut parsed = Vec::new();
            for stage in &stages {
                let (scope, delay) = stage.rsplit_once('@').unwrap_or((stage.as_str(), "0s"));
                parsed.push(json!({"scope": scope, "delay": delay}));
            }
            let (_, value) = client
                .send_json(
                    client
                        .request(
                            Method::POST,
                            &format!("{}/versions/{version}/rollout", topic_path(&topic)),
                        )
                        .json(&json!({"stages": parsed})),
                )
                .await?;
            print(&value);
        }
        DatasetsCommand::Rollouts { topic, id, action } => match (id, action) {
            (None, None) => print(
                &client
                    .get(&format!("{}/rollouts", topic_path(&topic)))
                    .await?,
            ),
            (None, Some(_)) => bail!("--action needs a rollout id"),
            (Some(id), None) => print(
                &client
                    .get(&format!("{}/rollouts/{id}", topic_path(&topic)))
                    .await?,
            ),
            (Some(id), Some(action)) => {
                let (_, value) = client
                    .send_json(
                        client
                            .request(
                                Method::POST,
                                &format!("{}/rollouts/{id}", topic_path(&topic)),
                            )
                            .json(&json!({"action": action.replace('-', "_")})),
                    )
                    .await?;
                print(&value);
            }
        },
        DatasetsCommand::Audit { topic } => {
            print(&client.get(&format!("{}/audit", topic_path(&topic))).await?)
        }
    }
    Ok(())
}

/// Streams a reader as request body chunks of up to 256 KiB.
fn tokio_util_stream<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
}

async fn download(
    client: &Client,
    topic: &str,
    version: u64,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    use sha2::Digest;
    let path = format!("{}/versions/{version}/data", topic_path(topic));
    let response = client
        .request(Method::GET, &path)
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the server at {}: {e}", client.base))?;
    if !response.status().is_success() {
        client.parse_response(response).await?;
        bail!("download failed");
    }
    let expected = response
        .headers()
        .get("x-riffle-checksum")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!("the server sent no x-riffle-checksum: cannot verify the payload")
        })?;
    let expected_size = response.content_length();
    // With -o the payload goes to a temporary file next to the output and is
    // renamed into place only once verified; a bad download leaves nothing.
    let temporary = output.as_ref().map(|path| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        path.with_file_name(name)
    });
    let mut hasher = sha2::Sha256::new();
    let mut received = 0u64;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &temporary {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("--output: cannot create {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut body = response.bytes_stream();
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            received += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(())
    }
    .await;
    drop(out);
    let actual = format!("sha256:{:x}", hasher.finalize());
    let verdict = copied.and_then(|()| {
        if expected_size.is_some_and(|size| size != received) {
            bail!(
                "size mismatch: server announced {} bytes, received {received}",
                expected_size.unwrap_or(0)
            );
        }
        if expected != actual {
            bail!("checksum mismatch: server announced {expected}, payload hashes to {actual}");
        }
        Ok(())
    });
    match (verdict, &temporary, &output) {
        (Ok(()), Some(temporary), Some(path)) => {
            tokio::fs::rename(temporary, path)
                .await
                .with_context(|| format!("--output: cannot rename into {}", path.display()))?;
            eprintln!("{topic} version {version} → {} ({actual})", path.display());
            Ok(())
        }
        (Ok(()), _, _) => Ok(()),
        (Err(e), Some(temporary), _) => {
            let _ = tokio::fs::remove_file(temporary).await;
            Err(e)
        }
        (Err(e), None, _) => Err(e),
    }
}

async fn watch(
    opts: &DatasetsOpts,
    topic: String,
    labels: String,
    fallback_dir: Option<PathBuf>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use riffle_datasets::client::{Subscription, SubscriptionConfig};
    let labels = riffle_datasets::Labels::parse_field(&labels, "--labels")?;
    let mut config = SubscriptionConfig::new(opts.server.clone(), topic.clone()).labels(labels);
    if let Some(token) = opts.token() {
        config = config.token(token);
    }
    if let Some(dir) = fallback_dir {
        config = config.fallback_dir(dir);
    }
    let subscription = Subscription::start(config, |bytes: &[u8]| Ok(bytes.len()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    subscription.on_change(move |loaded| {
        let _ = tx.send(json!({
            "topic": topic,
            "version": loaded.version,
            "checksum": loaded.checksum,
            "size": loaded.size,
            "metadata": loaded.metadata,
            "source": format!("{:?}", loaded.source).to_lowercase(),
        }));
    });
    let mut seen = 0u64;
    while let Some(change) = rx.recv().await {
        println!("{change}");
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    subscription.stop();
    Ok(())
}
