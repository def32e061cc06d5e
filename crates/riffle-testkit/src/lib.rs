//! Riffle's test kit: runs the real `riffle` binary (server and CLI) in a
//! private temporary directory and talks to it over HTTP on 127.0.0.1; the
//! tansu test broker; latency percentiles; the ad click oracle. A
//! dev-dependency only: nothing here reaches the release binary.
//!
//! Waiting is always a bounded poll on an observable condition (readiness,
//! process exit), never a sleep standing in for synchronisation.

pub mod broker;
pub mod latency;
pub mod oracle;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

pub use latency::Latencies;

/// The `riffle` binary under test: `$RIFFLE_TEST_BIN` if set, else the
/// `riffle` that cargo built next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/riffle`; cargo builds
/// a package's binaries before its integration tests).
pub fn riffle_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("RIFFLE_TEST_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("path of the test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in target/<profile>/deps");
        let bin = profile_dir.join(format!("riffle{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} does not exist: run the test with cargo from the `riffle` package (or set RIFFLE_TEST_BIN)",
            bin.display()
        );
        bin
    })
}

/// How long the server may take to become ready, a CLI command to finish,
/// or the server to exit after a signal.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
pub const CLI_DEADLINE: Duration = Duration::from_secs(30);
pub const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// A unique temporary directory for one test: the server's data directory
/// lives in `data/`, command output and scratch files next to it.
pub struct TestDir {
    tmp: tempfile::TempDir,
    counter: AtomicU64,
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            tmp: tempfile::Builder::new()
                .prefix("riffle-e2e-")
                // RIFFLE_TEST_KEEP=1 keeps the directories (logs, data) of
                // every test for a look after a failure.
                .disable_cleanup(std::env::var_os("RIFFLE_TEST_KEEP").is_some())
                .tempdir()
                .expect("create temp dir"),
            counter: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// A fresh, unused file name inside the test directory.
    pub fn scratch(&self, stem: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.path().join(format!("{stem}-{n}"))
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("read admin.token")
            .trim()
            .to_string()
    }
}

/// A `riffle` command with the environment cleared of every `RIFFLE*`
/// variable, run from the test directory so no stray `./riffle.toml` is
/// picked up (only one the test wrote there).
pub fn riffle_command(dir: &TestDir) -> Command {
    let mut cmd = Command::new(riffle_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RIFFLE") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_COLOR", "1").current_dir(dir.path());
    cmd
}

/// Polls `child` until it exits or the deadline passes (then kills it and
/// returns `None`).
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `riffle <args>` from the test directory (environment cleared of
/// `RIFFLE*`), feeding `stdin` if given, and waits for it (bounded by
/// [`CLI_DEADLINE`]; a command that does not finish fails the test).
pub fn run_cli(dir: &TestDir, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let stdout_path = dir.scratch("cli.stdout");
    let stderr_path = dir.scratch("cli.stderr");
    let mut cmd = riffle_command(dir);
    cmd.args(args)
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn riffle CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).expect("write stdin");
        // Dropping the pipe closes stdin (EOF).
    }
    let status = wait_with_deadline(&mut child, CLI_DEADLINE);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "`riffle {}` did not finish within {CLI_DEADLINE:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        )
    });
    CliOutput {
        status,
        stdout,
        stderr,
    }
}

/// `N` distinct free ports (all listeners are held at once).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A running `riffle serve`; killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    pub base: String,
    /// The dataset publish listener (every dataset endpoint).
    pub datasets_publish_base: String,
    /// The dataset consume listener (reads only).
    pub datasets_consume_base: String,
    pub log_path: PathBuf,
    pub http: reqwest::Client,
}

pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The stdout lines parsed as JSON (for `consume`).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line {l:?}: {e}")))
            .collect()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "command failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Server {
    /// Starts `riffle serve` on the test directory's data dir with fresh
    /// ports, retrying with other ports if one was taken meanwhile.
    pub async fn start(dir: &TestDir) -> Server {
        Server::start_with_env(dir, &[]).await
    }

    /// [`Server::start`] with extra environment variables, e.g. config
    /// overrides `("RIFFLE__ADS__EMIT_INTERVAL_MS", "20")`.
    pub async fn start_with_env(dir: &TestDir, env: &[(&str, &str)]) -> Server {
        Server::start_with_args(dir, env, &[]).await
    }

    /// [`Server::start_with_env`] with extra `riffle serve` arguments, e.g.
    /// `["--roles", "process"]`.
    pub async fn start_with_args(dir: &TestDir, env: &[(&str, &str)], args: &[&str]) -> Server {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let [http_port, grpc_port, publish_port, consume_port] = free_ports::<4>();
            let log_path = dir.scratch("server.log");
            let log = File::create(&log_path).expect("create server log");
            let child = riffle_command(dir)
                // The child exits when this test process dies, however it
                // dies: it watches the stdin pipe the Child holds open.
                .args(["serve", "--exit-on-stdin-eof", "--data-dir"])
                .arg(dir.data_dir())
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args([
                    "--datasets-publish-addr",
                    &format!("127.0.0.1:{publish_port}"),
                ])
                .args([
                    "--datasets-consume-addr",
                    &format!("127.0.0.1:{consume_port}"),
                ])
                .args(args)
                .env("RIFFLE_LOG", "info")
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn riffle serve");
            let mut server = Server {
                child: Some(child),
                data_dir: dir.data_dir(),
                http_port,
                grpc_port,
                base: format!("http://127.0.0.1:{http_port}"),
                datasets_publish_base: format!("http://127.0.0.1:{publish_port}"),
                datasets_consume_base: format!("http://127.0.0.1:{consume_port}"),
                log_path,
                http: http.clone(),
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) if log.contains("cannot listen") => {
                    last_log = log;
                    continue;
                }
                Err(log) => panic!("riffle serve did not become ready:\n{log}"),
            }
        }
        panic!("riffle serve could not bind free ports after 5 attempts:\n{last_log}");
    }

    /// Polls until our child has bound its sockets (it logs "listening")
    /// and `GET /readyz` answers 200. `Err(log)` if it exited or timed out.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + STARTUP_DEADLINE;
        let url = format!("{}/readyz", self.base);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            // Only after our own process logged that it listens on both
            // ports can a 200 not come from some other process.
            if self.log().contains("listening") {
                if let Ok(r) = self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    if r.status() == StatusCode::OK {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= until {
                return Err(format!(
                    "not ready after {STARTUP_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server is running").id() as i32
    }

    /// Sends a signal and waits (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let pid = self.pid();
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
        let mut child = self.child.take().unwrap();
        wait_with_deadline(&mut child, EXIT_DEADLINE).unwrap_or_else(|| {
            panic!(
                "server did not exit within {EXIT_DEADLINE:?} after signal {signal}:\n{}",
                self.log()
            )
        })
    }

    // ---------------------------------------------------------------- CLI

    /// Runs a CLI command against this server, appending `--server` and
    /// `--data-dir` (the CLI reads the admin token from there).
    pub fn cli(&self, dir: &TestDir, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(dir, args, None)
    }

    pub fn cli_with_stdin(&self, dir: &TestDir, args: &[&str], stdin: Option<&str>) -> CliOutput {
        let data_dir = self.data_dir.to_string_lossy();
        let mut full = args.to_vec();
        full.extend_from_slice(&["--server", &self.base, "--data-dir", &data_dir]);
        run_cli(dir, &full, stdin)
    }

    /// `riffle consume <args> ` → the printed records.
    pub fn consume(&self, dir: &TestDir, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["consume"];
        full.extend_from_slice(args);
        self.cli(dir, &full).assert_success().json_lines()
    }

    // --------------------------------------------------------------- HTTP

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request and returns the status and the body as JSON (or as a
    /// JSON string if it is not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let bytes = response.bytes().await.expect("HTTP body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post_events(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        self.post_events_to("/v1/events", content_type, body).await
    }

    pub async fn post_events_to(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// POSTs events as NDJSON and asserts they were all accepted.
    pub async fn ingest_ok(&self, events: &[Value]) {
        let (status, body) = self
            .post_events("application/x-ndjson", ndjson(events))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"accepted": events.len(), "rejected": []}));
    }

    pub async fn create_topic(&self, token: &str, name: &str, partitions: u32) {
        let (status, body) = self
            .send(
                self.http
                    .post(self.url("/v1/topics"))
                    .bearer_auth(token)
                    .json(&json!({"name": name, "partitions": partitions})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn describe(&self, topic: &str) -> Value {
        let (status, body) = self.get_json(&format!("/v1/topics/{topic}")).await;
        assert_eq!(status, StatusCode::OK, "describe {topic}: {body}");
        body
    }

    /// Per-partition end offsets of a topic, from `GET /v1/topics/{t}`.
    pub async fn end_offsets(&self, topic: &str) -> BTreeMap<u64, u64> {
        let body = self.describe(topic).await;
        body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["partition"].as_u64().unwrap(),
                    p["end_offset"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Total records in a topic (sum of end offsets; nothing is retained
    /// away in these tests).
    pub async fn record_count(&self, topic: &str) -> u64 {
        self.end_offsets(topic).await.values().sum()
    }

    /// Every record of a topic, read through
    /// `GET /v1/topics/{t}/partitions/{p}/records`, partition by partition.
    pub async fn all_records(&self, topic: &str) -> Vec<Value> {
        let partitions = self.describe(topic).await["partition_count"]
            .as_u64()
            .unwrap();
        let mut out = Vec::new();
        for p in 0..partitions {
            let mut offset = 0u64;
            loop {
                let (status, body) = self
                    .get_json(&format!(
                        "/v1/topics/{topic}/partitions/{p}/records?offset={offset}&max=1000"
                    ))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let records = body["records"].as_array().unwrap();
                if records.is_empty() {
                    break;
                }
                out.extend(records.iter().cloned());
                offset = body["next_offset"].as_u64().unwrap();
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------ events

pub fn ndjson(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An `ad_click` in the canonical form the server prints back (RFC 3339
/// with milliseconds, explicit version).
pub fn ad_click(id: &str, ad_id: &str, user_id: &str, time: &str) -> Value {
    json!({
        "event_type": "ad_click",
        "event_id": id,
        "event_time": time,
        "event_version": 1,
        "ad_id": ad_id,
        "user_id": user_id,
        "ip": "207.148.22.22",
        "country": "USA",
    })
}

/// The `value`s of records, by `event_id`.
pub fn values_by_id(records: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in records {
        let id = r["value"]["event_id"]
            .as_str()
            .unwrap_or_else(|| panic!("record without event_id: {r}"))
            .to_string();
        let previous = out.insert(id.clone(), r["value"].clone());
        assert!(previous.is_none(), "event_id {id} appears twice");
    }
    out
}

pub fn event_ids(records: &[Value]) -> Vec<String> {
    values_by_id(records).into_keys().collect()
}

/// Asserts the API error shape `{"error":{"code","message"}}` (and nothing
/// else) and returns the message.
#[track_caller]
pub fn assert_api_error(body: &Value, code: &str) -> String {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    assert_eq!(object.len(), 1, "error body has extra keys: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no \"error\" object: {body}"));
    assert_eq!(error.len(), 2, "error object has extra keys: {body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error.message is not a string: {body}"));
    assert!(!message.is_empty(), "empty error message: {body}");
    message.to_string()
}

/// Parses Prometheus text: `(name, labels) → value` for every sample.
pub fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                // Label values in these tests never contain `,` or `"`.
                for pair in rest.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    labels.insert(k.to_string(), v.trim_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}
