//! CLI commands that talk to a running server: topics, produce, consume,
//! tail.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use riffle_ingest::tail::{DeadLetter, LineFormat, SinkError, TailConfig, TailSink, Tailer};
use serde_json::{json, Value};

use crate::client::{encode, Client};

pub async fn topics_create(
    client: &Client,
    name: &str,
    partitions: Option<u32>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    segment_bytes: Option<u64>,
) -> anyhow::Result<()> {
    let mut body = json!({ "name": name });
    if let Some(p) = partitions {
        body["partitions"] = json!(p);
    }
    if let Some(r) = retention_ms {
        body["retention_ms"] = json!(r);
    }
    if let Some(r) = retention_bytes {
        body["retention_bytes"] = json!(r);
    }
    if let Some(s) = segment_bytes {
        body["segment_bytes"] = json!(s);
    }
    let (_, created) = client
        .send_json(client.request(Method::POST, "/v1/topics").json(&body))
        .await?;
    println!("{}", serde_json::to_string(&created)?);
    Ok(())
}

pub async fn topics_list(client: &Client) -> anyhow::Result<()> {
    let body = client.get("/v1/topics").await?;
    let empty = Vec::new();
    let topics = body["topics"].as_array().unwrap_or(&empty);
    println!(
        "{:<32} {:>10} {:>14} {:>16}",
        "TOPIC", "PARTITIONS", "RETENTION_MS", "RETENTION_BYTES"
    );
    for t in topics {
        println!(
            "{:<32} {:>10} {:>14} {:>16}",
            t["name"].as_str().unwrap_or(""),
            t["partitions"].to_string(),
            t["retention_ms"].to_string(),
            t["retention_bytes"].to_string()
        );
    }
    Ok(())
}

pub async fn topics_describe(client: &Client, name: &str) -> anyhow::Result<()> {
    let body = client.get(&format!("/v1/topics/{}", encode(name))).await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

pub async fn topics_delete(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .send_json(client.request(Method::DELETE, &format!("/v1/topics/{}", encode(name))))
        .await?;
    println!("deleted topic {name}");
    Ok(())
}

/// Reads NDJSON events from stdin and sends them in batches to a topic.
/// Rejected events are reported on stderr with their line number; the exit
/// status is non-zero if any was rejected.
pub async fn produce(client: &Client, topic: &str, batch_size: usize) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut lines: Vec<(usize, String)> = Vec::with_capacity(batch_size);
    let mut accepted = 0u64;
    let mut rejected = 0u64;
    let mut line_no = 0usize;
    let mut reader = stdin.lock();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).context("reading stdin")?;
        if n > 0 {
            line_no += 1;
            if !line.trim().is_empty() {
                lines.push((line_no, line));
            }
        }
        if (n == 0 && !lines.is_empty()) || lines.len() >= batch_size {
            let body: String = lines
                .iter()
                .map(|(_, l)| l.trim_end_matches('\n'))
                .collect::<Vec<_>>()
                .join("\n");
            let (_, response) = send_with_retry(client, || {
                client
                    .request(Method::POST, &format!("/v1/events?topic={}", encode(topic)))
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
            })
            .await?;
            accepted += response["accepted"].as_u64().unwrap_or(0);
            for r in response["rejected"].as_array().into_iter().flatten() {
                rejected += 1;
                let index = r["index"].as_u64().unwrap_or(0) as usize;
                let line = lines.get(index).map(|(n, _)| *n).unwrap_or(0);
                eprintln!("line {line}: {}", r["error"].as_str().unwrap_or(""));
            }
            lines.clear();
        }
        if n == 0 {
            break;
        }
    }
    eprintln!("produced {accepted} events to {topic}, {rejected} rejected");
    if rejected > 0 {
        bail!("{rejected} events were rejected");
    }
    Ok(())
}

/// Retries 429 (honouring Retry-After) and connection failures a few times;
/// a request the server answered otherwise is never sent twice.
async fn send_with_retry(
    client: &Client,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> anyhow::Result<(StatusCode, Value)> {
    const ATTEMPTS: u32 = 8;
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match build().send().await {
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS && attempt < ATTEMPTS => {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(delay);
                tokio::time::sleep(wait).await;
            }
            Ok(r) => return client.parse_response(r).await,
            Err(e) if attempt == ATTEMPTS => {
                bail!("cannot reach the server at {}: {e}", client.base)
            }
            Err(_) => tokio::time::sleep(delay).await,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the last attempt returns")
}

pub struct ConsumeArgs {
    pub topic: String,
    pub from: Option<String>,
    pub group: Option<String>,
    pub max: Option<u64>,
    pub partition: Option<u32>,
    pub follow: bool,
    pub value_only: bool,
}

/// Prints records as NDJSON; commits offsets for `--group` after each
/// printed batch.
pub async fn consume(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let topic_path = format!("/v1/topics/{}", encode(&args.topic));
    let description = client.get(&topic_path).await?;
    let count = description["partition_count"].as_u64().unwrap_or(0) as u32;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p < count => vec![p],
        Some(p) => bail!(
            "--partition: {p} is out of range (topic \"{}\" has {count} partitions)",
            args.topic
        ),
        None => (0..count).collect(),
    };
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let committed = match &args.group {
        Some(group) => client
            .get(&format!(
                "/v1/groups/{}/offsets?topic={}",
                encode(group),
                encode(&args.topic)
            ))
            .await?["offsets"]
            .clone(),
        None => Value::Null,
    };
    let resolved: BTreeMap<u32, u64> = match args.from.as_deref() {
        None | Some("earliest") => offsets_at(client, &topic_path, "position=earliest").await?,
        Some("latest") => offsets_at(client, &topic_path, "position=latest").await?,
        Some(text) if text.chars().all(|c| c.is_ascii_digit()) => {
            let offset: u64 = text.parse()?;
            partitions.iter().map(|p| (*p, offset)).collect()
        }
        Some(text) => {
            riffle_core::time::parse_rfc3339_ms(text).with_context(|| {
                format!("--from: expected earliest, latest, an offset or an RFC 3339 time, got \"{text}\"")
            })?;
            offsets_at(client, &topic_path, &format!("timestamp={}", encode(text))).await?
        }
    };
    for p in &partitions {
        // A group's committed offset wins unless --from was given.
        let from_group = committed[p.to_string()]
            .as_u64()
            .filter(|_| args.from.is_none());
        positions.insert(
            *p,
            from_group.unwrap_or_else(|| resolved.get(p).copied().unwrap_or(0)),
        );
    }
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    loop {
        let mut progressed = false;
        let mut caught_up = true;
        for p in &partitions {
            let remaining = args.max.map(|m| m - printed).unwrap_or(u64::MAX);
            if remaining == 0 {
                break;
            }
            let offset = positions[p];
            let body = client
                .get(&format!(
                    "{topic_path}/partitions/{p}/records?offset={offset}&max={}",
                    remaining.min(1000)
                ))
                .await?;
            let records = body["records"].as_array().cloned().unwrap_or_default();
            let next = body["next_offset"].as_u64().unwrap_or(offset);
            if next < body["high_watermark"].as_u64().unwrap_or(next) {
                caught_up = false;
            }
            if records.is_empty() {
                continue;
            }
            progressed = true;
            let mut out = stdout.lock();
            for mut record in records {
                if args.value_only {
                    writeln!(out, "{}", record["value"])?;
                } else {
                    record["topic"] = json!(args.topic);
                    writeln!(out, "{record}")?;
                }
                printed += 1;
            }
            out.flush()?;
            positions.insert(*p, next);
            if let Some(group) = &args.group {
                client
                    .send_json(
                        client
                            .request(
                                Method::POST,
                                &format!("/v1/groups/{}/offsets", encode(group)),
                            )
                            .json(&json!({"topic": args.topic, "offsets": {p.to_string(): next}})),
                    )
                    .await?;
            }
        }
        if args.max.is_some_and(|m| printed >= m) {
            return Ok(());
        }
        if !progressed {
            if !args.follow && caught_up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn offsets_at(
    client: &Client,
    topic_path: &str,
    query: &str,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let body = client.get(&format!("{topic_path}/offsets?{query}")).await?;
    Ok(body["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["partition"].as_u64()? as u32, p["offset"].as_u64()?)))
        .collect())
}

/// Sends tailed lines to the server's ingest endpoint.
pub struct HttpSink {
    pub client: Client,
}

#[async_trait::async_trait]
impl TailSink for HttpSink {
    async fn send_events(&self, events: Vec<Vec<u8>>) -> Result<Vec<Option<String>>, SinkError> {
        let count = events.len();
        let body = events.join(&b'\n');
        let response = self
            .client
            .request(Method::POST, "/v1/events")
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        classify(status, retry_after, &body)?;
        let mut out = vec![None; count];
        for r in body["rejected"].as_array().into_iter().flatten() {
            if let Some(i) = r["index"].as_u64() {
                if let Some(slot) = out.get_mut(i as usize) {
                    *slot = Some(r["error"].as_str().unwrap_or("rejected").to_string());
                }
            }
        }
        Ok(out)
    }

    async fn send_dead_letters(
        &self,
        topic: &str,
        letters: Vec<DeadLetter>,
    ) -> Result<(), SinkError> {
        // Escaping can make a dead letter several times larger than its line
        // (binary junk becomes \u0000 ...): send them in requests that stay
        // well under the server's body limit, and cut a single huge raw
        // line rather than be refused forever.
        const REQUEST_BUDGET: usize = 2 << 20;
        const MAX_RAW_BYTES: usize = 64 << 10;
        let mut chunk: Vec<Value> = Vec::new();
        let mut chunk_bytes = 0usize;
        for mut letter in letters {
            if letter.raw.len() > MAX_RAW_BYTES {
                let mut cut = MAX_RAW_BYTES;
                while !letter.raw.is_char_boundary(cut) {
                    cut -= 1;
                }
                letter.raw.truncate(cut);
                letter.reason.push_str(" (raw line cut to 64 KiB)");
            }
            let record = json!({"key": letter.file, "value": letter});
            let size = record.to_string().len();
            if !chunk.is_empty() && chunk_bytes + size > REQUEST_BUDGET {
                self.post_dead_letters(topic, std::mem::take(&mut chunk))
                    .await?;
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(record);
        }
        if !chunk.is_empty() {
            self.post_dead_letters(topic, chunk).await?;
        }
        Ok(())
    }
}

impl HttpSink {
    async fn post_dead_letters(&self, topic: &str, records: Vec<Value>) -> Result<(), SinkError> {
        let response = self
            .client
            .request(
                Method::POST,
                &format!("/v1/topics/{}/records", encode(topic)),
            )
            .json(&json!({ "records": records }))
            .send()
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        classify(status, None, &body)
    }
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &Value,
) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(SinkError::Backpressure { retry_after });
    }
    if status.is_server_error() {
        return Err(SinkError::Unavailable(format!("{status}: {message}")));
    }
    Err(SinkError::Refused(format!("{status}: {message}")))
}

pub struct TailArgs {
    pub patterns: Vec<String>,
    pub format: LineFormat,
    pub checkpoint: PathBuf,
    pub dead_letter_topic: String,
    pub poll_interval: Duration,
    pub once: bool,
}

pub async fn tail(client: Client, args: TailArgs) -> anyhow::Result<()> {
    let mut config = TailConfig::new(args.patterns, args.checkpoint);
    config.format = args.format;
    config.dead_letter_topic = args.dead_letter_topic;
    let sink = Arc::new(HttpSink { client });
    let mut tailer = Tailer::new(config, sink)?;
    if args.once {
        let stats = tailer.poll_once().await?;
        eprintln!("{stats:?}");
        return Ok(());
    }
    tailer
        .run(args.poll_interval, crate::shutdown_signal())
        .await;
    Ok(())
}
