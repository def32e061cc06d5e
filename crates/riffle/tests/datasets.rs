//! End-to-end tests of dataset pub/sub: the real `riffle serve` with its two
//! dataset listeners (publish: every endpoint; consume: reads only), driven
//! over HTTP, through `riffle datasets …` and through the client library
//! (`riffle_datasets::client::Subscription`).
//!
//! Every wait is a bounded poll on something observable (readiness, a
//! metric, a subscription status) or a join of a spawned request with a
//! generous timeout; nothing sleeps in place of synchronisation.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use riffle_datasets::client::{Source, Subscription, SubscriptionConfig};
use riffle_testkit::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long a spawned long-poll or a state change may take before the test
/// gives up (far above what any of them needs).
const JOIN_DEADLINE: Duration = Duration::from_secs(60);

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn topic_url(base: &str, topic: &str, rest: &str) -> String {
    format!("{base}/v1/datasets/topics/{topic}{rest}")
}

/// Sends a request; the status and the body as JSON (a JSON string when the
/// body is not JSON, `null` when empty).
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let bytes = response.bytes().await.expect("HTTP body");
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// The dataset REST API of one server (or of a publish/consume pair).
struct Api {
    http: reqwest::Client,
    publish: String,
    consume: String,
    admin: String,
}

impl Api {
    fn new(publish: &str, consume: &str, admin: String) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            publish: publish.to_string(),
            consume: consume.to_string(),
            admin,
        }
    }

    fn of(server: &Server, dir: &TestDir) -> Api {
        Api::new(
            &server.datasets_publish_base,
            &server.datasets_consume_base,
            dir.admin_token(),
        )
    }

    async fn create_topic(&self, body: Value) -> Value {
        let (status, created) = call(
            self.http
                .post(format!("{}/v1/datasets/topics", self.publish))
                .bearer_auth(&self.admin)
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "create {body}: {created}");
        created
    }

    /// Publishes with the admin token; `query` without the leading `?`.
    async fn publish(&self, topic: &str, query: &str, body: impl Into<reqwest::Body>) -> Value {
        let (status, version) = self.publish_as(Some(&self.admin), topic, query, body).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "publish {topic}?{query}: {version}"
        );
        version
    }

    async fn publish_as(
        &self,
        token: Option<&str>,
        topic: &str,
        query: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(topic_url(
                &self.publish,
                topic,
                &format!("/versions?{query}"),
            ))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        call(request).await
    }

    /// `GET {base}/…/latest?{query}` without a token.
    async fn latest(&self, base: &str, topic: &str, query: &str) -> (StatusCode, Value) {
        call(
            self.http
                .get(topic_url(base, topic, &format!("/latest?{query}"))),
        )
        .await
    }

    /// The version and reason a `latest` on the consume listener answered,
    /// asserting a 200.
    async fn latest_version(&self, topic: &str, query: &str) -> (u64, String) {
        let (status, body) = self.latest(&self.consume, topic, query).await;
        assert_eq!(status, StatusCode::OK, "latest {topic}?{query}: {body}");
        (
            body["version"].as_u64().unwrap(),
            body["reason"].as_str().unwrap().to_string(),
        )
    }

    async fn admin_get(&self, topic: &str, rest: &str) -> Value {
        let (status, body) = call(
            self.http
                .get(topic_url(&self.publish, topic, rest))
                .bearer_auth(&self.admin),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "GET {topic}{rest}: {body}");
        body
    }

    /// A request with the admin token and `body` as JSON (no body for
    /// `null`) that must succeed.
    async fn admin_send(
        &self,
        method: reqwest::Method,
        topic: &str,
        rest: &str,
        body: Value,
    ) -> Value {
        let mut request = self
            .http
            .request(method.clone(), topic_url(&self.publish, topic, rest))
            .bearer_auth(&self.admin);
        if !body.is_null() {
            request = request.json(&body);
        }
        let (status, answer) = call(request).await;
        assert!(
            status.is_success(),
            "{method} {topic}{rest} {body}: {status} {answer}"
        );
        answer
    }

    /// The audit actions of a topic, oldest first, as `(actor, action)`.
    async fn audit(&self, topic: &str) -> Vec<(String, String)> {
        self.admin_get(topic, "/audit").await["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Polls `{base}/metrics` until `riffle_datasets_polls_waiting` reaches
/// `at_least`: the long-polls spawned before are parked on the server.
async fn wait_for_parked_polls(http: &reqwest::Client, base: &str, at_least: f64) {
    let until = Instant::now() + JOIN_DEADLINE;
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap();
        let waiting: f64 = parse_metrics(&text)
            .iter()
            .filter(|(name, _, _)| name == "riffle_datasets_polls_waiting")
            .map(|(_, _, v)| *v)
            .sum();
        if waiting >= at_least {
            return;
        }
        assert!(
            Instant::now() < until,
            "long-polls never parked on {base} (waiting {waiting})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- processes

/// `riffle datasets <args> --server <publish listener> --data-dir <data>`.
fn datasets_cli(dir: &TestDir, server: &str, args: &[&str]) -> CliOutput {
    let data_dir = dir.data_dir();
    let data_dir = data_dir.to_string_lossy();
    let mut full = vec!["datasets"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--server", server, "--data-dir", &data_dir]);
    run_cli(dir, &full, None)
}

/// Runs a `riffle datasets` command that must succeed and print one JSON
/// document.
#[track_caller]
fn cli_json(dir: &TestDir, server: &str, args: &[&str]) -> Value {
    let out = datasets_cli(dir, server, args);
    assert!(
        out.status.success(),
        "`riffle datasets {}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`riffle datasets {}` printed no JSON ({e}):\n{}",
            args.join(" "),
            out.stdout
        )
    })
}

/// The four listen ports of one `riffle serve`.
#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    grpc: u16,
    publish: u16,
    consume: u16,
}

impl Ports {
    fn free() -> Ports {
        let [http, grpc, publish, consume] = free_ports::<4>();
        Ports {
            http,
            grpc,
            publish,
            consume,
        }
    }

    fn publish_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.publish)
    }

    fn consume_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.consume)
    }
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A `riffle serve` this file spawned itself (explicit ports, roles);
/// SIGKILLed when dropped.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Spawns `riffle serve` and waits until `ready_base/readyz` (a dataset
    /// listener) answers 200. `Err(log)` if it exited or never got ready.
    async fn serve(
        dir: &TestDir,
        ports: Ports,
        roles: Option<&str>,
        ready_base: &str,
    ) -> Result<Process, String> {
        let log = dir.scratch("serve.log");
        let mut cmd = riffle_command(dir);
        cmd.args(["serve", "--exit-on-stdin-eof", "--data-dir"])
            .arg(dir.data_dir())
            .args(["--http-addr", &format!("127.0.0.1:{}", ports.http)])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.grpc)])
            .args([
                "--datasets-publish-addr",
                &format!("127.0.0.1:{}", ports.publish),
            ])
            .args([
                "--datasets-consume-addr",
                &format!("127.0.0.1:{}", ports.consume),
            ]);
        if let Some(roles) = roles {
            cmd.args(["--roles", roles]);
        }
        let child = cmd
            .env("RIFFLE_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn riffle serve");
        let mut process = Process {
            child: Some(child),
            log,
        };
        let http = reqwest::Client::new();
        let until = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = process.child.as_mut().unwrap().try_wait().unwrap() {
                process.child = None;
                return Err(format!("exited with {status}:\n{}", process.log()));
            }
            // Only once our process logged that it listens can a 200 not
            // come from some other process.
            if process.log().contains("listening") {
                let ready = http
                    .get(format!("{ready_base}/readyz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ready {
                    return Ok(process);
                }
            }
            if Instant::now() >= until {
                return Err(format!("not ready:\n{}", process.log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Peak resident set size of a process, from `VmHWM` in /proc/<pid>/status.
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmHWM value");
    kib * 1024
}

fn free_disk_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain old data, valid when zeroed.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) fills the struct we own from a NUL-terminated path.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Every file under `root` (recursively).
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The dataset files at rest that hold `marker`: the blob store and the
/// SQLite metadata store with its WAL.
fn files_holding(data_dir: &Path, marker: &[u8]) -> Vec<PathBuf> {
    let datasets = data_dir.join("datasets");
    let mut candidates = files_under(&datasets.join("blobs"));
    for entry in std::fs::read_dir(&datasets).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("metadata.db")
        {
            candidates.push(entry.path());
        }
    }
    candidates
        .into_iter()
        .filter(|path| {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .is_ok()
                && contains(&bytes, marker)
        })
        .collect()
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_end_to_end() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let api = Api::of(&server, &dir);
    let publish = api.publish.clone();
    let consume = api.consume.clone();

    let created = api.create_topic(json!({"name": "rest"})).await;
    assert_eq!(created["name"], json!("rest"));
    assert_eq!(created["created_by"], json!("admin"));
    assert_eq!(created["encrypted"], json!(false));

    let p1 = b"global payload, version one".to_vec();
    let p2 = b"us-east payload, version two: {\"k\": 2}".to_vec();
    let v1 = api.publish("rest", "", p1.clone()).await;
    assert_eq!(v1["version"], json!(1));
    assert_eq!(v1["scopes"], json!(["*"]));
    let v1_at = v1["created_at_ms"].as_i64().unwrap();
    // v2 must be created strictly after v1's millisecond for the `at`
    // lookup below to tell them apart.
    let until = Instant::now() + JOIN_DEADLINE;
    while now_ms() <= v1_at + 1 {
        assert!(Instant::now() < until, "clock does not advance");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let v2 = api
        .publish("rest", "scope=region=us-east&meta.format=json", p2.clone())
        .await;
    assert_eq!(v2["version"], json!(2));
    assert_eq!(v2["scopes"], json!(["region=us-east"]));
    assert_eq!(v2["metadata"], json!({"format": "json"}));
    assert_eq!(v2["location"], json!("inline"));
    assert!(v2["created_at_ms"].as_i64().unwrap() > v1_at);

    // Labels choose the answer.
    let (status, east) = api.latest(&publish, "rest", "labels=region=us-east").await;
    assert_eq!(status, StatusCode::OK, "{east}");
    assert_eq!(east["version"], json!(2));
    assert_eq!(east["metadata"], json!({"format": "json"}));
    assert_eq!(east["checksum"], json!(sha256_of(&p2)));
    assert_eq!(east["size"], json!(p2.len()));
    assert_eq!(east["created_at"], v2["created_at"]);
    assert!(
        east["created_at"].as_str().unwrap().ends_with('Z'),
        "{east}"
    );
    assert_eq!(east["reason"], json!("latest"));
    let (status, eu) = api.latest(&publish, "rest", "labels=region=eu").await;
    assert_eq!(status, StatusCode::OK, "{eu}");
    assert_eq!(eu["version"], json!(1));
    assert_eq!(eu["checksum"], json!(sha256_of(&p1)));
    assert_eq!(eu["size"], json!(p1.len()));
    assert_eq!(eu["metadata"], json!({}));
    assert_eq!(api.latest_version("rest", "").await.0, 1);

    // One version's metadata.
    let meta = api.admin_get("rest", "/versions/2").await;
    assert_eq!(meta["version"], json!(2));
    assert_eq!(meta["metadata"], json!({"format": "json"}));
    assert_eq!(meta["checksum"], json!(sha256_of(&p2)));
    assert_eq!(meta["size"], json!(p2.len()));
    assert_eq!(meta["created_by"], json!("admin"));

    // Its bytes, whole and in ranges, from both listeners.
    for base in [&publish, &consume] {
        let response = api
            .http
            .get(topic_url(base, "rest", "/versions/2/data"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-riffle-checksum"].to_str().unwrap(),
            sha256_of(&p2)
        );
        assert_eq!(response.bytes().await.unwrap().as_ref(), p2.as_slice());
    }
    let response = api
        .http
        .get(topic_url(&consume, "rest", "/versions/2/data"))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"].to_str().unwrap(),
        format!("bytes 2-5/{}", p2.len())
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &p2[2..6]);
    let response = api
        .http
        .get(topic_url(&consume, "rest", "/versions/2/data"))
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        response.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", p2.len())
    );
    let body: Value = response.json().await.unwrap();
    assert_api_error(&body, "out_of_range");

    // History, newest first.
    let history = api.admin_get("rest", "/versions").await;
    let numbers: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![2, 1]);

    // Widening v2's audience to region=eu.
    let widened = api
        .admin_send(
            reqwest::Method::POST,
            "rest",
            "/versions/2/scopes",
            json!({"scopes": ["region=eu"]}),
        )
        .await;
    assert_eq!(widened["scopes"], json!(["region=us-east", "region=eu"]));
    assert_eq!(api.latest_version("rest", "labels=region=eu").await.0, 2);
    assert_eq!(api.latest_version("rest", "labels=region=ap").await.0, 1);

    // A topic-wide pin sends everyone back to v1, even a consumer holding 2.
    let pin = api
        .admin_send(reqwest::Method::PUT, "rest", "/pin", json!({"version": 1}))
        .await;
    assert_eq!(pin["version"], json!(1));
    assert_eq!(pin["scope"], Value::Null);
    assert_eq!(
        api.latest_version("rest", "labels=region=us-east&after=2")
            .await,
        (1, "pinned".to_string())
    );
    assert_eq!(
        api.latest_version("rest", "after=2").await,
        (1, "pinned".to_string())
    );
    // A scoped pin wins over the topic-wide one for its scope only.
    api.admin_send(
        reqwest::Method::PUT,
        "rest",
        "/pin",
        json!({"version": 2, "scope": "region=eu"}),
    )
    .await;
    assert_eq!(
        api.latest_version("rest", "labels=region=eu").await,
        (2, "pinned".to_string())
    );
    assert_eq!(
        api.latest_version("rest", "labels=region=us-east").await,
        (1, "pinned".to_string())
    );
    let pins = api.admin_get("rest", "/pins").await;
    assert_eq!(pins["pins"].as_array().unwrap().len(), 2, "{pins}");
    // Unpinning the topic: back to the latest, the scoped pin stays.
    let unpinned = api
        .admin_send(reqwest::Method::DELETE, "rest", "/pin", Value::Null)
        .await;
    assert_eq!(unpinned["unpinned"], Value::Null);
    assert_eq!(
        api.latest_version("rest", "labels=region=us-east").await,
        (2, "latest".to_string())
    );
    assert_eq!(
        api.latest_version("rest", "").await,
        (1, "latest".to_string())
    );
    assert_eq!(
        api.latest_version("rest", "labels=region=eu").await,
        (2, "pinned".to_string())
    );
    let (status, body) = call(
        api.http
            .delete(topic_url(&publish, "rest", "/pin?scope=region=eu"))
            .bearer_auth(&api.admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["unpinned"], json!("region=eu"));
    assert_eq!(
        api.latest_version("rest", "labels=region=eu").await,
        (2, "latest".to_string())
    );

    // Point in time: as of v1's creation, us-east held v1.
    let (status, then) = call(
        api.http
            .get(topic_url(&consume, "rest", "/latest"))
            .query(&[
                ("labels", "region=us-east"),
                ("at", v1["created_at"].as_str().unwrap()),
            ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["version"], json!(1));

    // The audit trail.
    let audit = api.audit("rest").await;
    for action in ["create_topic", "publish", "add_scopes", "pin", "unpin"] {
        assert!(
            audit.contains(&("admin".to_string(), action.to_string())),
            "no {action} by admin in {audit:?}"
        );
    }
    let count = |action: &str| audit.iter().filter(|(_, a)| a == action).count();
    assert_eq!(count("publish"), 2, "{audit:?}");
    assert_eq!(count("pin"), 2, "{audit:?}");
    assert_eq!(count("unpin"), 2, "{audit:?}");

    // The consume listener reads but never writes.
    let (status, body) = api.latest(&consume, "rest", "labels=region=us-east").await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(2))
    );
    let (status, body) = call(
        api.http
            .post(topic_url(&consume, "rest", "/versions"))
            .bearer_auth(&api.admin)
            .body("sneaky"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_api_error(&body, "method_not_allowed");
    assert_eq!(api.admin_get("rest", "").await["versions"], json!(2));

    // Errors name what is wrong.
    let (status, body) = api.latest(&consume, "nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_api_error(&body, "not_found");
    let (status, body) = api
        .publish_as(Some(&api.admin), "rest", "scope=region", "x")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = assert_api_error(&body, "invalid_argument");
    assert!(message.starts_with("scope:"), "{message}");
    let (status, body) = api.latest(&consume, "rest", "after=2&wait=10m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = assert_api_error(&body, "invalid_argument");
    assert!(message.starts_with("wait"), "{message}");
    assert_eq!(api.admin_get("rest", "").await["versions"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_woken_by_a_publish() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let api = Arc::new(Api::of(&server, &dir));
    api.create_topic(json!({"name": "poll"})).await;
    api.publish("poll", "", "one").await;

    let poller = {
        let api = api.clone();
        tokio::spawn(async move {
            let consume = api.consume.clone();
            api.latest(&consume, "poll", "after=1&wait=30s").await
        })
    };
    // Publish only once the poll is parked, so it is the publish that
    // wakes it (not an answer it found on arrival).
    wait_for_parked_polls(&api.http, &api.consume, 1.0).await;
    let v2 = api.publish("poll", "meta.note=woken", "two").await;
    assert_eq!(v2["version"], json!(2));
    let (status, body) = tokio::time::timeout(JOIN_DEADLINE, poller)
        .await
        .expect("long-poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], json!(2));
    assert_eq!(body["metadata"], json!({"note": "woken"}));
    assert_eq!(body["checksum"], json!(sha256_of(b"two")));

    // Nothing newer than 2: the wait runs out with a 204.
    let (status, body) = api.latest(&api.consume, "poll", "after=2&wait=1s").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trip() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let base = server.datasets_publish_base.clone();
    let cli = |args: &[&str]| cli_json(&dir, &base, args);
    let version_of = |v: &Value| v["version"].as_u64().unwrap_or_else(|| panic!("{v}"));

    let created = cli(&["topics", "create", "cli.t", "--owner", "ml-team"]);
    assert_eq!(created["name"], json!("cli.t"));
    assert_eq!(created["owner"], json!("ml-team"));

    let f1 = dir.scratch("v1.bin");
    let f2 = dir.scratch("v2.bin");
    let p1: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let p2 = b"region-specific model weights".to_vec();
    std::fs::write(&f1, &p1).unwrap();
    std::fs::write(&f2, &p2).unwrap();
    let v1 = cli(&[
        "publish",
        "cli.t",
        f1.to_str().unwrap(),
        "--meta",
        "format=bin",
        "--meta",
        "commit=abc123",
    ]);
    assert_eq!(version_of(&v1), 1);
    assert_eq!(v1["metadata"], json!({"format": "bin", "commit": "abc123"}));
    assert_eq!(v1["checksum"], json!(sha256_of(&p1)));
    assert_eq!(v1["scopes"], json!(["*"]));
    let v2 = cli(&[
        "publish",
        "cli.t",
        f2.to_str().unwrap(),
        "--scope",
        "region=us-east",
        "--meta",
        "format=json",
    ]);
    assert_eq!(version_of(&v2), 2);
    assert_eq!(v2["scopes"], json!(["region=us-east"]));
    assert_eq!(v2["size"], json!(p2.len()));

    let versions = cli(&["versions", "cli.t"]);
    let numbers: Vec<u64> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(version_of)
        .collect();
    assert_eq!(numbers, vec![2, 1]);

    let east = cli(&["latest", "cli.t", "--labels", "region=us-east"]);
    assert_eq!(version_of(&east), 2);
    assert_eq!(east["reason"], json!("latest"));
    assert_eq!(version_of(&cli(&["latest", "cli.t"])), 1);

    // Downloads: by version, and the latest for some labels.
    let out1 = dir.scratch("out1.bin");
    datasets_cli(
        &dir,
        &base,
        &[
            "get",
            "cli.t",
            "--version",
            "1",
            "-o",
            out1.to_str().unwrap(),
        ],
    )
    .assert_success();
    assert_eq!(std::fs::read(&out1).unwrap(), p1);
    let mut partial = out1.clone().into_os_string();
    partial.push(".partial");
    assert!(
        !std::path::Path::new(&partial).exists(),
        "the verified download was renamed into place"
    );
    // A point-in-time lookup refuses flags it would ignore.
    let refused = datasets_cli(
        &dir,
        &base,
        &[
            "latest",
            "cli.t",
            "--at",
            "2026-01-01T00:00:00Z",
            "--after",
            "1",
        ],
    );
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("--at"), "{}", refused.stderr);
    let out2 = dir.scratch("out2.bin");
    datasets_cli(
        &dir,
        &base,
        &[
            "get",
            "cli.t",
            "--labels",
            "region=us-east",
            "-o",
            out2.to_str().unwrap(),
        ],
    )
    .assert_success();
    assert_eq!(std::fs::read(&out2).unwrap(), p2);

    // Pin, unpin, scopes.
    let pin = cli(&["pin", "cli.t", "1"]);
    assert_eq!(pin["version"], json!(1));
    let pinned = cli(&[
        "latest",
        "cli.t",
        "--labels",
        "region=us-east",
        "--after",
        "2",
    ]);
    assert_eq!(
        (version_of(&pinned), &pinned["reason"]),
        (1, &json!("pinned"))
    );
    let unpinned = cli(&["unpin", "cli.t"]);
    assert_eq!(unpinned["topic"], json!("cli.t"));
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "region=us-east"])),
        2
    );
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "region=eu"])),
        1
    );
    let scoped = cli(&["scopes", "cli.t", "2", "--scope", "region=eu"]);
    assert_eq!(scoped["scopes"], json!(["region=us-east", "region=eu"]));
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "region=eu"])),
        2
    );

    let audit = cli(&["audit", "cli.t"]);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["create_topic", "publish", "pin", "unpin", "add_scopes"] {
        assert!(actions.contains(&action), "no {action} in {audit}");
    }

    // Unused topics: one published just now is not a candidate.
    cli(&["topics", "create", "cli.idle"]);
    let unused = cli(&["topics", "--unused-for", "30d"]);
    let names: Vec<&str> = unused["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("{unused}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"cli.t"), "{unused}");

    // A staged version rolled out: canary at once, everyone after 1 h.
    let f3 = dir.scratch("v3.bin");
    std::fs::write(&f3, b"candidate three").unwrap();
    let v3 = cli(&["publish", "cli.t", f3.to_str().unwrap(), "--staged"]);
    assert_eq!(version_of(&v3), 3);
    assert_eq!(v3["scopes"], json!([]));
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "cluster=canary"])),
        1,
        "a staged version is visible to nobody"
    );
    let rollout = cli(&[
        "rollout",
        "cli.t",
        "3",
        "--stage",
        "cluster=canary@0s",
        "--stage",
        "*@1h",
    ]);
    let id = rollout["id"].as_u64().unwrap().to_string();
    let status = cli(&["rollouts", "cli.t", &id]);
    assert_eq!(status["state"], json!("running"), "{status}");
    assert_eq!(status["stages_applied"], json!(1), "{status}");
    assert_eq!(status["stages"][0]["applied"], json!(true), "{status}");
    assert_eq!(status["stages"][1]["applied"], json!(false), "{status}");
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "cluster=canary"])),
        3
    );
    assert_eq!(version_of(&cli(&["latest", "cli.t"])), 1);
    let listed = cli(&["rollouts", "cli.t"]);
    assert_eq!(listed["rollouts"].as_array().unwrap().len(), 1, "{listed}");
    let done = cli(&["rollouts", "cli.t", &id, "--action", "fast-forward"]);
    assert_eq!(done["state"], json!("completed"), "{done}");
    assert_eq!(done["stages_applied"], json!(2), "{done}");
    assert_eq!(version_of(&cli(&["latest", "cli.t"])), 3);

    // An aborted rollout withdraws its version: its holders roll back.
    let f4 = dir.scratch("v4.bin");
    std::fs::write(&f4, b"bad candidate four").unwrap();
    assert_eq!(
        version_of(&cli(&[
            "publish",
            "cli.t",
            f4.to_str().unwrap(),
            "--staged"
        ])),
        4
    );
    let rollout = cli(&[
        "rollout",
        "cli.t",
        "4",
        "--stage",
        "cluster=canary@0s",
        "--stage",
        "*@1h",
    ]);
    let id = rollout["id"].as_u64().unwrap().to_string();
    assert_eq!(
        version_of(&cli(&["latest", "cli.t", "--labels", "cluster=canary"])),
        4
    );
    let aborted = cli(&["rollouts", "cli.t", &id, "--action", "abort"]);
    assert_eq!(aborted["state"], json!("aborted"), "{aborted}");
    let back = cli(&[
        "latest",
        "cli.t",
        "--labels",
        "cluster=canary",
        "--after",
        "4",
    ]);
    assert_eq!(
        (version_of(&back), &back["reason"]),
        (3, &json!("rollback"))
    );
    assert_eq!(version_of(&cli(&["latest", "cli.t"])), 3);
    // Nothing newer for a consumer already on 3: exit code 3.
    let none = datasets_cli(&dir, &base, &["latest", "cli.t", "--after", "3"]);
    assert_eq!(none.status.code(), Some(3), "{}", none.stderr);
    let withdrawn = cli(&["versions", "cli.t"]);
    assert_eq!(withdrawn["versions"][0]["withdrawn"], json!(true));

    // The listing spelled with its subcommand takes the same flag.
    let unused_list = cli(&["topics", "list", "--unused-for", "30d"]);
    let listed = unused_list["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("{unused_list}"));
    assert!(
        listed.iter().all(|t| t["name"] != json!("cli.t")),
        "{unused_list}"
    );
}

/// A snapshot of everything a mutating endpoint could change.
async fn state_of(api: &Api, topic: &str) -> Value {
    let (status, topics) = call(
        api.http
            .get(format!("{}/v1/datasets/topics", api.publish))
            .bearer_auth(&api.admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<Value> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    json!({
        "topics": names,
        "versions": api.admin_get(topic, "/versions").await,
        "pins": api.admin_get(topic, "/pins").await,
        "rollouts": api.admin_get(topic, "/rollouts").await,
        "audit": api.admin_get(topic, "/audit").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_every_mutating_endpoint() {
    let dir = TestDir::new();
    // Read from the server's working directory (the test directory).
    std::fs::write(
        dir.path().join("riffle.toml"),
        r#"
[[datasets.tokens]]
name = "ci"
token = "ci-token-0123456789abcdef"
publish = ["models.*"]
consume = []

[[datasets.tokens]]
name = "ranker"
token = "ranker-token-0123456789abc"
consume = ["secret.*"]
"#,
    )
    .unwrap();
    let server = Server::start(&dir).await;
    let api = Api::of(&server, &dir);
    let publish = api.publish.clone();

    // models.x: v1 global, v2 staged with a running rollout, a pin.
    api.create_topic(json!({"name": "models.x"})).await;
    api.publish("models.x", "", "one").await;
    api.publish("models.x", "staged=true", "two").await;
    let rollout = api
        .admin_send(
            reqwest::Method::POST,
            "models.x",
            "/versions/2/rollout",
            json!({"stages": [{"scope": "cluster=canary", "delay": "0s"},
                              {"scope": "*", "delay": "1h"}]}),
        )
        .await;
    let rollout_id = rollout["id"].as_u64().unwrap();
    api.admin_send(
        reqwest::Method::PUT,
        "models.x",
        "/pin",
        json!({"version": 1}),
    )
    .await;
    let before = state_of(&api, "models.x").await;

    let post = reqwest::Method::POST;
    let attempts: Vec<(&str, reqwest::Method, String, Option<Value>)> = vec![
        (
            "create topic",
            post.clone(),
            format!("{publish}/v1/datasets/topics"),
            Some(json!({"name": "models.y"})),
        ),
        (
            "publish",
            post.clone(),
            topic_url(&publish, "models.x", "/versions"),
            None,
        ),
        (
            "delete topic",
            reqwest::Method::DELETE,
            topic_url(&publish, "models.x", ""),
            None,
        ),
        (
            "scopes",
            post.clone(),
            topic_url(&publish, "models.x", "/versions/1/scopes"),
            Some(json!({"scopes": ["region=eu"]})),
        ),
        (
            "pin",
            reqwest::Method::PUT,
            topic_url(&publish, "models.x", "/pin"),
            Some(json!({"version": 2})),
        ),
        (
            "unpin",
            reqwest::Method::DELETE,
            topic_url(&publish, "models.x", "/pin"),
            None,
        ),
        (
            "rollout start",
            post.clone(),
            topic_url(&publish, "models.x", "/versions/1/rollout"),
            Some(json!({"stages": [{"scope": "*"}]})),
        ),
        (
            "rollout control",
            post.clone(),
            topic_url(&publish, "models.x", &format!("/rollouts/{rollout_id}")),
            Some(json!({"action": "abort"})),
        ),
    ];
    for (what, method, url, body) in &attempts {
        for (token, code) in [
            (None, "unauthenticated"),
            (Some("Bearer wrong"), "permission_denied"),
            (
                Some("Bearer ranker-token-0123456789abc"),
                "permission_denied",
            ),
        ] {
            let mut request = api.http.request(method.clone(), url);
            request = match body {
                Some(body) => request.json(body),
                None => request.body("payload"),
            };
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let (status, answer) = call(request).await;
            let expected = if code == "unauthenticated" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(status, expected, "{what} with {token:?}: {answer}");
            assert_api_error(&answer, code);
        }
    }
    let after = state_of(&api, "models.x").await;
    assert_eq!(before, after, "a refused request changed the state");

    // A named token publishes where its patterns allow, and is the actor.
    let ci = "ci-token-0123456789abcdef";
    let (status, body) = api.publish_as(Some(ci), "models.x", "", "by ci").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["created_by"], json!("ci"));
    let audit = api.audit("models.x").await;
    assert_eq!(
        audit.last().unwrap(),
        &("ci".to_string(), "publish".to_string())
    );
    api.create_topic(json!({"name": "configs.x"})).await;
    let (status, body) = api.publish_as(Some(ci), "configs.x", "", "nope").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_api_error(&body, "permission_denied");
    assert_eq!(api.admin_get("configs.x", "").await["versions"], json!(0));

    // secret.* is restricted: the ranker token consumes, nobody else.
    api.create_topic(json!({"name": "secret.a"})).await;
    api.publish("secret.a", "", "classified").await;
    let consume = api.consume.clone();
    let (status, body) = api.latest(&consume, "secret.a", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_api_error(&body, "unauthenticated");
    let (status, body) = call(
        api.http
            .get(topic_url(&consume, "secret.a", "/versions/1/data")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(
        api.http
            .get(topic_url(&consume, "secret.a", "/latest"))
            .bearer_auth(ci),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        api.http
            .get(topic_url(&consume, "secret.a", "/latest"))
            .bearer_auth("ranker-token-0123456789abc"),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(1))
    );
    let data = api
        .http
        .get(topic_url(&consume, "secret.a", "/versions/1/data"))
        .bearer_auth("ranker-token-0123456789abc")
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), StatusCode::OK);
    assert_eq!(data.bytes().await.unwrap().as_ref(), b"classified");
    // Unrestricted topics stay open to anonymous consumers.
    let (status, _) = api.latest(&consume, "models.x", "").await;
    assert_eq!(status, StatusCode::OK);
    // Listings show a restricted topic only to those who may consume it.
    let listed = |token: Option<&'static str>| {
        let mut request = api.http.get(format!("{consume}/v1/datasets/topics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            body["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let anonymous = listed(None).await;
    assert!(anonymous.contains(&"models.x".to_string()), "{anonymous:?}");
    assert!(
        !anonymous.contains(&"secret.a".to_string()),
        "{anonymous:?}"
    );
    let ranker = listed(Some("ranker-token-0123456789abc")).await;
    assert!(ranker.contains(&"secret.a".to_string()), "{ranker:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_topic_is_unreadable_at_rest() {
    let dir = TestDir::new();
    let server =
        Server::start_with_env(&dir, &[("RIFFLE__DATASETS__INLINE_MAX_BYTES", "4096")]).await;
    let api = Api::of(&server, &dir);
    let consume = api.consume.clone();

    let created = api
        .create_topic(json!({"name": "enc", "encrypted": true}))
        .await;
    assert_eq!(created["encrypted"], json!(true));
    let inline_marker = b"INLINE-SECRET-MARKER-4b1d9e";
    let blob_marker = b"BLOB-SECRET-MARKER-93ce07a2";
    let inline: Vec<u8> = inline_marker.repeat(40);
    let blob: Vec<u8> = blob_marker.repeat(10_000);
    assert!(inline.len() < 4096 && blob.len() > 4096);
    let v1 = api.publish("enc", "", inline.clone()).await;
    assert_eq!(v1["location"], json!("inline"));
    let v2 = api.publish("enc", "", blob.clone()).await;
    assert_eq!(v2["location"], json!("blob"));
    assert_eq!(v2["checksum"], json!(sha256_of(&blob)));

    // A plaintext topic next to it proves the scan sees stored payloads.
    api.create_topic(json!({"name": "plain"})).await;
    let plain_inline = b"PLAIN-INLINE-CONTROL-5a5a".repeat(40);
    let plain_blob = b"PLAIN-BLOB-CONTROL-6b6b6b".repeat(10_000);
    api.publish("plain", "", plain_inline.clone()).await;
    api.publish("plain", "", plain_blob.clone()).await;
    let data_dir = dir.data_dir();
    assert!(
        !files_holding(&data_dir, b"PLAIN-INLINE-CONTROL-5a5a").is_empty(),
        "the scan does not see inline payloads"
    );
    assert!(
        !files_holding(&data_dir, b"PLAIN-BLOB-CONTROL-6b6b6b").is_empty(),
        "the scan does not see blobs"
    );

    for marker in [&inline_marker[..], &blob_marker[..]] {
        let leaks = files_holding(&data_dir, marker);
        assert!(
            leaks.is_empty(),
            "{} found in plaintext at rest: {leaks:?}",
            String::from_utf8_lossy(marker)
        );
    }

    // The admin (a consumer with a token) reads the plaintext.
    for (number, payload) in [(1, &inline), (2, &blob)] {
        let response = api
            .http
            .get(topic_url(
                &consume,
                "enc",
                &format!("/versions/{number}/data"),
            ))
            .bearer_auth(&api.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-riffle-checksum"].to_str().unwrap(),
            sha256_of(payload)
        );
        assert_eq!(response.bytes().await.unwrap().as_ref(), payload.as_slice());
    }
    let response = api
        .http
        .get(topic_url(&consume, "enc", "/versions/2/data"))
        .bearer_auth(&api.admin)
        .header("range", "bytes=5-40000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &blob[5..40001]);

    // Nobody else.
    for rest in [
        "/versions/1/data",
        "/versions/2/data",
        "/latest",
        "/versions",
    ] {
        let (status, body) = call(api.http.get(topic_url(&consume, "enc", rest))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{rest}: {body}");
        assert_api_error(&body, "unauthenticated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_payload_with_flat_memory() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 1024;
    const MAX_RSS: u64 = 200 << 20;
    let dir = TestDir::new();
    let free = free_disk_bytes(dir.path());
    if free < 4 << 30 {
        eprintln!(
            "skipping one_gib_payload_with_flat_memory: {} MiB free under {}, need 4096",
            free >> 20,
            dir.path().display()
        );
        return;
    }
    let server = Server::start(&dir).await;
    let api = Api::of(&server, &dir);
    api.create_topic(json!({"name": "big"})).await;
    // No overall timeout: the time this takes is the benchmarks' business.
    let http = reqwest::Client::new();

    // 1 MiB chunks of a cheap pattern, each stamped with its index so no
    // two are alike; hashed as they are generated.
    let template: Arc<Vec<u8>> = Arc::new((0..CHUNK).map(|i| (i % 251) as u8).collect());
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let body = {
        let hasher = hasher.clone();
        futures::stream::iter(0..CHUNKS).map(move |i| {
            let mut chunk = template.as_ref().clone();
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            hasher.lock().unwrap().update(&chunk);
            Ok::<Bytes, std::io::Error>(Bytes::from(chunk))
        })
    };
    let (status, version) = call(
        http.post(topic_url(&api.publish, "big", "/versions"))
            .bearer_auth(&api.admin)
            .body(reqwest::Body::wrap_stream(body)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    let generated = format!(
        "sha256:{:x}",
        std::mem::take(&mut *hasher.lock().unwrap()).finalize()
    );
    assert_eq!(version["checksum"], json!(generated));
    assert_eq!(version["size"], json!(CHUNKS * CHUNK as u64));
    assert_eq!(version["location"], json!("blob"));

    let response = http
        .get(topic_url(&api.consume, "big", "/versions/1/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-riffle-checksum"].to_str().unwrap(),
        generated
    );
    let mut read = Sha256::new();
    let mut length = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("download chunk");
        length += chunk.len() as u64;
        read.update(&chunk);
    }
    assert_eq!(length, CHUNKS * CHUNK as u64);
    assert_eq!(format!("sha256:{:x}", read.finalize()), generated);

    let peak = peak_rss_bytes(server.pid());
    eprintln!(
        "server peak RSS after 1 GiB up and down: {} MiB",
        peak >> 20
    );
    assert!(
        peak < MAX_RSS,
        "server peak RSS {} MiB, limit {} MiB",
        peak >> 20,
        MAX_RSS >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_against_the_real_server() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir).await;
    let api = Api::of(&server, &dir);
    api.create_topic(json!({"name": "lib"})).await;
    api.publish("lib", "meta.n=1", "version one").await;

    let fallback = dir.path().join("fallback");
    let config = SubscriptionConfig::new(server.datasets_consume_base.clone(), "lib")
        .fallback_dir(&fallback)
        .wait(Duration::from_secs(5))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .request_timeout(Duration::from_secs(5));
    let decode = |bytes: &[u8]| Ok::<String, String>(String::from_utf8_lossy(bytes).into_owned());
    let first = Subscription::start(config.clone(), decode).unwrap();
    let held = first
        .wait_for_version(1, JOIN_DEADLINE)
        .await
        .expect("v1 loaded");
    assert_eq!(held.value, "version one");
    assert_eq!(held.source, Source::Service);
    assert_eq!(held.metadata.get("n").map(String::as_str), Some("1"));

    api.publish("lib", "meta.n=2", "version two").await;
    let held = first
        .wait_for_version(2, JOIN_DEADLINE)
        .await
        .expect("v2 pushed");
    assert_eq!((held.version, held.value.as_str()), (2, "version two"));
    assert_eq!(held.checksum, sha256_of(b"version two"));

    // The server dies: the subscription keeps v2 and says it is cut off.
    let ports = Ports {
        http: server.http_port,
        grpc: server.grpc_port,
        publish: port_of(&server.datasets_publish_base),
        consume: port_of(&server.datasets_consume_base),
    };
    server.signal_and_wait(libc::SIGKILL);
    let status = first
        .wait_for_status(JOIN_DEADLINE, |s| {
            !s.connected && s.consecutive_failures > 0
        })
        .await
        .expect("the subscription notices the server is gone");
    assert_eq!(status.version, Some(2));
    assert!(status.stale_since_ms.is_some(), "{status:?}");
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(first.current().unwrap().value, "version two");

    // A new subscription, started while the server is down, serves v2
    // from the fallback copy at once.
    let second = Subscription::start(config, decode).unwrap();
    let held = second.current().expect("fallback copy loaded at start");
    assert_eq!((held.version, held.value.as_str()), (2, "version two"));
    assert_eq!(held.source, Source::Fallback);
    assert_eq!(held.metadata.get("n").map(String::as_str), Some("2"));
    assert_eq!(second.status().fallback_error, None);

    // The server comes back on the same ports and data; v3 reaches both.
    let _restarted = Process::serve(&dir, ports, None, &ports.publish_base())
        .await
        .unwrap_or_else(|log| panic!("restart on the same ports failed:\n{log}"));
    let v3 = api.publish("lib", "meta.n=3", "version three").await;
    assert_eq!(v3["version"], json!(3));
    for (name, subscription) in [("first", &first), ("second", &second)] {
        let held = subscription
            .wait_for_version(3, JOIN_DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{name} never got v3: {:?}", subscription.status()));
        assert_eq!((held.version, held.value.as_str()), (3, "version three"));
        assert_eq!(held.source, Source::Service);
        let status = subscription
            .wait_for_status(JOIN_DEADLINE, |s| s.connected)
            .await
            .expect("reconnected");
        assert_eq!(status.version, Some(3));
    }
    first.stop();
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_share_one_store() {
    let dir = TestDir::new();
    // Ports are picked free and then bound by the child: retry if another
    // process took one meanwhile.
    let start = |roles: &'static str, ready: fn(&Ports) -> String| {
        let dir = &dir;
        async move {
            let mut last = String::new();
            for _ in 0..5 {
                let ports = Ports::free();
                match Process::serve(dir, ports, Some(roles), &ready(&ports)).await {
                    Ok(process) => return (process, ports),
                    Err(log) if log.contains("cannot listen") => last = log,
                    Err(log) => panic!("riffle serve --roles {roles}:\n{log}"),
                }
            }
            panic!("riffle serve --roles {roles} found no free ports:\n{last}");
        }
    };
    // The publisher first: it creates the admin token and the master key.
    let (_a, a_ports) = start("datasets-publish", Ports::publish_base).await;
    let (b, b_ports) = start("datasets-consume", Ports::consume_base).await;
    let api = Arc::new(Api::new(
        &a_ports.publish_base(),
        &b_ports.consume_base(),
        dir.admin_token(),
    ));
    let (status, ready) = call(api.http.get(format!("{}/readyz", api.consume))).await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    api.create_topic(json!({"name": "split"})).await;
    api.publish("split", "", "from A, version one").await;
    // B reads the shared store on its own schedule: poll until it knows v1.
    let until = Instant::now() + JOIN_DEADLINE;
    loop {
        let (status, body) = api.latest(&api.consume, "split", "").await;
        if status == StatusCode::OK {
            assert_eq!(body["version"], json!(1), "{body}");
            break;
        }
        assert!(
            Instant::now() < until,
            "B never saw v1: {status} {body}\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let poller = {
        let api = api.clone();
        tokio::spawn(async move {
            let consume = api.consume.clone();
            api.latest(&consume, "split", "after=1&wait=30s").await
        })
    };
    wait_for_parked_polls(&api.http, &api.consume, 1.0).await;
    api.publish("split", "meta.from=a", "from A, version two")
        .await;
    let (status, body) = tokio::time::timeout(JOIN_DEADLINE, poller)
        .await
        .expect("B's long-poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], json!(2));
    assert_eq!(body["metadata"], json!({"from": "a"}));
    let data = api
        .http
        .get(topic_url(&api.consume, "split", "/versions/2/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), StatusCode::OK);
    assert_eq!(data.bytes().await.unwrap().as_ref(), b"from A, version two");

    // A blob (above inline_max_bytes) A wrote: B checks it against its
    // checksum before any consumer sees it, then wakes its polls.
    let blob: Vec<u8> = (0..(3u32 << 19)).map(|i| (i % 253) as u8).collect();
    let poller = {
        let api = api.clone();
        tokio::spawn(async move {
            let consume = api.consume.clone();
            api.latest(&consume, "split", "after=2&wait=30s").await
        })
    };
    wait_for_parked_polls(&api.http, &api.consume, 1.0).await;
    let v3 = api.publish("split", "", blob.clone()).await;
    assert_eq!(v3["location"], json!("blob"));
    let (status, body) = tokio::time::timeout(JOIN_DEADLINE, poller)
        .await
        .expect("B's long-poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], json!(3));
    assert_eq!(body["checksum"], json!(sha256_of(&blob)));
    let data = api
        .http
        .get(topic_url(&api.consume, "split", "/versions/3/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), StatusCode::OK);
    assert!(data.bytes().await.unwrap().as_ref() == blob.as_slice());

    // B has no write endpoint, whatever the token.
    let consume = api.consume.clone();
    let writes = [
        (
            reqwest::Method::POST,
            format!("{consume}/v1/datasets/topics"),
            json!({"name": "via-b"}),
        ),
        (
            reqwest::Method::POST,
            topic_url(&consume, "split", "/versions"),
            Value::Null,
        ),
        (
            reqwest::Method::DELETE,
            topic_url(&consume, "split", ""),
            Value::Null,
        ),
        (
            reqwest::Method::PUT,
            topic_url(&consume, "split", "/pin"),
            json!({"version": 1}),
        ),
        (
            reqwest::Method::POST,
            topic_url(&consume, "split", "/versions/1/scopes"),
            json!({"scopes": ["a=b"]}),
        ),
    ];
    for (method, url, body) in writes {
        let (status, answer) = call(
            api.http
                .request(method.clone(), &url)
                .bearer_auth(&api.admin)
                .json(&body),
        )
        .await;
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                assert_api_error(&answer, "method_not_allowed");
            }
            StatusCode::NOT_FOUND => {
                assert_api_error(&answer, "not_found");
            }
            other => panic!("{method} {url} on the consume-only process: {other} {answer}"),
        }
    }
    assert_eq!(
        api.admin_get("split", "/versions").await["versions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
