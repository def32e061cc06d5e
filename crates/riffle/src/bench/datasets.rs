//! `riffle bench datasets`: dataset pub/sub measured as deployed —
//! `riffle serve --roles datasets-publish,datasets-consume` in its own
//! process on loopback, driven over HTTP by this process (which shares the
//! machine's cores with it).
//!
//! 1. Propagation. `subscribers` concurrent long-polls (one connection
//!    each, `latest?after=<held>&wait=60s` on the consume listener) wait
//!    for the next version. Once the server reports them all waiting
//!    (`riffle_datasets_polls_waiting`), a version is published on the
//!    publish listener; each subscriber's delay runs from just before the
//!    publish request is sent to the moment its answer arrives. Repeated
//!    `rounds` times.
//! 2. Consume-path throughput: `connections` keep-alive clients asking
//!    `latest` (no wait, answer 200 with the metadata) as fast as they can
//!    for `seconds`; with `wrk` on the PATH it is the load generator (far
//!    cheaper per request than this process), else an in-process client.
//! 3. Peer, same run, same machine: etcd (Debian `etcd-server`) watch
//!    propagation — the same number of watchers on one key over etcd's
//!    HTTP/JSON gateway (one connection each), a put, each watcher's delay
//!    until its event arrives. Skipped with a reason when `etcd` is absent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier};
use tokio::task::JoinSet;

use super::harness::{
    free_port, ms, pdeathsig, total_memory_gib, wait_http_ok, Latencies, ServeChild, ServeOptions,
};

const TOPIC: &str = "bench.model";
const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Args, Debug, Clone)]
pub struct DatasetsBenchArgs {
    /// Concurrent long-polling subscribers (one connection each).
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Publishes measured (each must reach every subscriber).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Payload size of each published version, in bytes.
    #[arg(long, default_value_t = 4096)]
    payload_bytes: usize,
    /// Keep-alive connections of the throughput measurement.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Duration of the throughput measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Skip the etcd peer measurement.
    #[arg(long)]
    no_etcd: bool,
    /// Working directory (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn bench_datasets(args: DatasetsBenchArgs) -> anyhow::Result<()> {
    raise_fd_limit(args.subscribers as u64 * 2 + 1024);
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    println!(
        "bench datasets: {} subscribers, {} rounds, {} B payloads; machine: {} cores, {:.1} GiB",
        args.subscribers,
        args.rounds,
        args.payload_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total_memory_gib().unwrap_or(0.0)
    );
    let mut server = ServeChild::start(ServeOptions {
        current_dir: Some(dir.clone()),
        roles: Some("datasets-publish,datasets-consume".into()),
        dataset_ports: true,
        ..ServeOptions::new(dir.join("data"))
    })?;
    let control = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    server.wait_ready(&control).await?;
    let token = std::fs::read_to_string(dir.join("data").join("admin.token"))
        .context("admin token")?
        .trim()
        .to_string();
    let create = control
        .post(format!("{}/v1/datasets/topics", server.publish()))
        .bearer_auth(&token)
        .json(&json!({"name": TOPIC, "retention_count": 10}))
        .send()
        .await?;
    if !create.status().is_success() {
        bail!("create topic: {} {}", create.status(), create.text().await?);
    }
    let publish = |round: usize| {
        let control = control.clone();
        let url = format!("{}/v1/datasets/topics/{TOPIC}/versions", server.publish());
        let token = token.clone();
        let payload = vec![b'a' + (round % 26) as u8; args.payload_bytes];
        async move {
            let response = control
                .post(url)
                .bearer_auth(token)
                .body(payload)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("publish: {} {}", response.status(), response.text().await?);
            }
            let body: Value = response.json().await?;
            body["version"]
                .as_u64()
                .context("publish answer without version")
        }
    };
    let first = publish(0).await?;

    // 1. Propagation to long-polling subscribers.
    let riffle_delays = riffle_propagation(&args, &server, &control, first, publish).await?;

    // 2. Consume-path throughput.
    consume_throughput(&args, &server).await?;

    // 3. etcd watch propagation, same machine, same run.
    let etcd_delays = if args.no_etcd {
        println!("etcd peer: skipped (--no-etcd)");
        None
    } else {
        match find_etcd() {
            None => {
                println!("etcd peer: skipped: no `etcd` on the PATH or in /usr/bin (apt-get install etcd-server)");
                None
            }
            Some(bin) => {
                drop(server);
                Some(etcd_propagation(&args, &bin, &dir).await?)
            }
        }
    };
    if let Some(etcd) = etcd_delays {
        let riffle = riffle_delays;
        println!(
            "ratio (median over rounds of p99 delay): riffle {:.1} ms / etcd {:.1} ms = {:.2}",
            ms(riffle),
            ms(etcd),
            ms(riffle) / ms(etcd).max(1e-9)
        );
    }
    Ok(())
}

/// Runs the subscribers and the publishing rounds; returns the median over
/// rounds of the p99 delay.
async fn riffle_propagation<F, Fut>(
    args: &DatasetsBenchArgs,
    server: &ServeChild,
    control: &reqwest::Client,
    first: u64,
    publish: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let client = subscriber_client()?;
    let (arrivals_tx, mut arrivals_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut subscribers = JoinSet::new();
    for _ in 0..args.subscribers {
        let client = client.clone();
        let url = format!(
            "{}/v1/datasets/topics/{TOPIC}/latest?labels=app=bench&wait=60s",
            server.consume()
        );
        let arrivals = arrivals_tx.clone();
        let mut stop = stop_rx.clone();
        subscribers.spawn(async move {
            let mut held = first;
            loop {
                let request = client.get(format!("{url}&after={held}")).send();
                let response = tokio::select! {
                    r = request => r?,
                    _ = stop.wait_for(|s| *s) => return anyhow::Ok(()),
                };
                let status = response.status();
                let body = response.bytes().await?;
                let arrived = Instant::now();
                match status.as_u16() {
                    200 => {
                        let answer: Value = serde_json::from_slice(&body)?;
                        held = answer["version"]
                            .as_u64()
                            .context("answer without version")?;
                        let _ = arrivals.send((held, arrived));
                    }
                    204 => {}
                    other => bail!("latest: {other} {}", String::from_utf8_lossy(&body)),
                }
            }
        });
    }
    drop(arrivals_tx);
    let mut p99s = Vec::new();
    for round in 1..=args.rounds {
        wait_for_waiting(control, server.consume(), args.subscribers).await?;
        let sent = Instant::now();
        let version = publish(round).await?;
        let acked = sent.elapsed();
        let mut delays = Latencies::new();
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        while delays.len() < args.subscribers as u64 {
            let next = tokio::time::timeout_at(deadline, arrivals_rx.recv()).await;
            match next {
                Ok(Some((v, at))) if v == version => delays.record(at.duration_since(sent)),
                Ok(Some(_)) => {}
                Ok(None) => bail!("subscribers stopped"),
                Err(_) => bail!(
                    "round {round}: only {} of {} subscribers got version {version} within {} s",
                    delays.len(),
                    args.subscribers,
                    WAIT_TIMEOUT.as_secs()
                ),
            }
        }
        let p99 = delays.quantile(0.99);
        p99s.push(p99);
        println!(
            "riffle round {round}: version {version} published (ack {:.1} ms) → all {} subscribers updated: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(acked),
            args.subscribers,
            ms(delays.quantile(0.50)),
            ms(p99),
            ms(delays.quantile(1.0))
        );
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = subscribers.join_next().await {
        joined??;
    }
    p99s.sort();
    let median = p99s[p99s.len() / 2];
    println!(
        "riffle propagation: median p99 over {} rounds {:.1} ms (goal p99 <= 500 ms)",
        args.rounds,
        ms(median)
    );
    Ok(median)
}

fn subscriber_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .connect_timeout(Duration::from_secs(30))
        .build()?)
}

/// Waits until the server holds `n` long-polls (its gauge), so a publish
/// measures propagation, not connection setup.
async fn wait_for_waiting(client: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let waiting = text
            .lines()
            .find_map(|l| l.strip_prefix("riffle_datasets_polls_waiting "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if waiting as usize >= n {
            return Ok(());
        }
        if started.elapsed() > WAIT_TIMEOUT {
            bail!(
                "only {waiting} of {n} long-polls waiting after {} s",
                WAIT_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consume_throughput(args: &DatasetsBenchArgs, server: &ServeChild) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/datasets/topics/{TOPIC}/latest?labels=app=bench",
        server.consume()
    );
    if let Some(wrk) = find_binary("wrk") {
        let output = Command::new(wrk)
            .args([
                "-t2",
                &format!("-c{}", args.connections),
                &format!("-d{}s", args.seconds),
                "--latency",
                &url,
            ])
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let rate = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let p99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let errors = text
            .lines()
            .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "consume throughput (wrk, {} connections, {} s): {rate} latest-requests/s, client p99 {p99}{} (goal >= 50K/s)",
            args.connections,
            args.seconds,
            if errors.is_empty() { String::new() } else { format!(", {errors}") }
        );
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let barrier = Arc::new(Barrier::new(args.connections));
    let mut tasks = JoinSet::new();
    for _ in 0..args.connections {
        let (client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let response = client.get(&url).send().await?;
                if !response.status().is_success() {
                    bail!("latest: {}", response.status());
                }
                response.bytes().await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let started = Instant::now();
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n??;
    }
    println!(
        "consume throughput (in-process reqwest client, no wrk on PATH; {} connections, {} s): {:.0} latest-requests/s (goal >= 50K/s)",
        args.connections,
        args.seconds,
        total as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ----------------------------------------------------------------------
// etcd

async fn etcd_propagation(
    args: &DatasetsBenchArgs,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<Duration> {
    let etcd = Etcd::start(bin, &dir.join("etcd"))?;
    let control = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    etcd.wait_ready(&control).await?;
    let version = control
        .get(format!("{}/version", etcd.base))
        .send()
        .await?
        .text()
        .await?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let key = b64("bench/model");
    let client = subscriber_client()?;
    let (arrivals_tx, mut arrivals_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watchers = JoinSet::new();
    for _ in 0..args.subscribers {
        let client = client.clone();
        let url = format!("{}/v3/watch", etcd.base);
        let body = json!({"create_request": {"key": key}}).to_string();
        let arrivals = arrivals_tx.clone();
        let created = created_tx.clone();
        watchers.spawn(async move {
            let response = client.post(url).body(body).send().await?;
            if !response.status().is_success() {
                bail!("etcd watch: {}", response.status());
            }
            let mut stream = response.bytes_stream();
            let mut buffer = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let at = Instant::now();
                buffer.extend_from_slice(&chunk);
                // The gateway writes one JSON object per line.
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let result = &message["result"];
                    if result["created"].as_bool() == Some(true) {
                        let _ = created.send(());
                    }
                    if let Some(events) = result["events"].as_array() {
                        for event in events {
                            if let Some(value) = event["kv"]["value"].as_str() {
                                let _ = arrivals.send((value.to_string(), at));
                            }
                        }
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    drop(arrivals_tx);
    drop(created_tx);
    let mut created = 0;
    while created < args.subscribers {
        tokio::time::timeout(WAIT_TIMEOUT, created_rx.recv())
            .await
            .context("etcd watchers not all created")?
            .context("etcd watchers ended")?;
        created += 1;
    }
    let mut p99s = Vec::new();
    for round in 1..=args.rounds {
        let value = b64(&format!("v{round}"));
        let sent = Instant::now();
        let response = control
            .post(format!("{}/v3/kv/put", etcd.base))
            .body(json!({"key": key, "value": value}).to_string())
            .send()
            .await?;
        let acked = sent.elapsed();
        if !response.status().is_success() {
            bail!("etcd put: {}", response.status());
        }
        let mut delays = Latencies::new();
        while delays.len() < args.subscribers as u64 {
            let (got, at) = tokio::time::timeout(WAIT_TIMEOUT, arrivals_rx.recv())
                .await
                .context("etcd watch events missing")?
                .context("etcd watchers ended")?;
            if got == value {
                delays.record(at.duration_since(sent));
            }
        }
        let p99 = delays.quantile(0.99);
        p99s.push(p99);
        println!(
            "etcd round {round}: put (ack {:.1} ms) → all {} watchers notified: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(acked),
            args.subscribers,
            ms(delays.quantile(0.50)),
            ms(p99),
            ms(delays.quantile(1.0))
        );
    }
    watchers.abort_all();
    p99s.sort();
    let median = p99s[p99s.len() / 2];
    println!(
        "etcd propagation ({}): median p99 over {} rounds {:.1} ms",
        version.trim(),
        args.rounds,
        ms(median)
    );
    Ok(median)
}

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find_etcd() -> Option<PathBuf> {
    find_binary("etcd")
}

struct Etcd {
    child: Child,
    base: String,
}

impl Etcd {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Etcd> {
        std::fs::create_dir_all(dir)?;
        let client = free_port()?;
        let peer = free_port()?;
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let mut command = Command::new(bin);
        command
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log);
        pdeathsig(&mut command);
        let child = command.spawn().context("starting etcd")?;
        Ok(Etcd {
            child,
            base: format!("http://127.0.0.1:{client}"),
        })
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        wait_http_ok(client, &format!("{}/health", self.base), WAIT_TIMEOUT).await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
