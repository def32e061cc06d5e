//! Riffle on a real Kafka-protocol broker (tansu 0.6.0 on 127.0.0.1, one
//! per test, started by the test; `scripts/kafka-tools.sh` installs it):
//! several `riffle serve` processes share the ad click pipeline through
//! Kafka's consumer-group protocol, hand partitions over through the shared
//! checkpoint directory, run as separate ingest / process / serve roles, and
//! interoperate with an independent Kafka client (Python confluent-kafka).
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use riffle_log::kafka::KafkaBus;
use riffle_log::{Admin, ConsumerConfig, EventBus, StartPosition, TopicPartition};
use riffle_testkit::broker::TestBroker;
use riffle_testkit::oracle::*;
use riffle_testkit::*;
use serde_json::{json, Value};

/// Input partitions: enough to spread over three processes.
const PARTITIONS: u32 = 6;
/// How long the pipeline may take to catch up after the last event,
/// rebalances included.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

/// A broker and the config every riffle process of one test shares.
struct Cluster {
    broker: TestBroker,
    bus: KafkaBus,
    /// `--config` file: `[bus]` on the broker, the shared checkpoint dir.
    config: PathBuf,
    _shared: TestDir,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        Cluster::start_with(false).await
    }

    /// A cluster whose riffle processes commit in Kafka transactions
    /// (`bus.kafka.transactions`) or not.
    async fn start_with(transactions: bool) -> Option<Cluster> {
        let broker = TestBroker::start()?;
        let bus = KafkaBus::connect(broker.options())
            .await
            .expect("connect to tansu");
        let shared = TestDir::new();
        let checkpoints = shared.path().join("checkpoints");
        let config = shared.path().join("kafka.toml");
        std::fs::write(
            &config,
            format!(
                r#"[bus]
kind = "kafka"

[bus.kafka]
brokers = "{brokers}"
checkpoint_dir = "{checkpoints}"
transactions = {transactions}

[bus.kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[ingest]
topic_partitions = {PARTITIONS}

[ads]
emit_interval_ms = 100
checkpoint_interval_ms = 700
"#,
                brokers = broker.brokers,
                checkpoints = checkpoints.display(),
            ),
        )
        .expect("write kafka.toml");
        Some(Cluster {
            broker,
            bus,
            config,
            _shared: shared,
        })
    }

    /// Starts `riffle serve --roles <roles>` on this cluster in its own
    /// data directory.
    async fn riffle(&self, dir: &TestDir, roles: &str) -> Server {
        let config = self.config.to_string_lossy().into_owned();
        Server::start_with_args(dir, &[], &["--config", &config, "--roles", roles]).await
    }

    /// Reads every record of `topic` from the start until none arrives for
    /// a second (the broker's high watermarks are not reliable).
    async fn read_to_quiet(
        &self,
        topic: &str,
        mut each: impl FnMut(u32, riffle_log::RecordView<'_>),
    ) {
        let partitions: Vec<TopicPartition> = (0..PARTITIONS)
            .map(|p| TopicPartition::new(topic, p))
            .collect();
        let mut reader = self
            .bus
            .consumer(ConsumerConfig::assign("test-reader", partitions.clone()))
            .await
            .unwrap();
        for tp in &partitions {
            reader.seek(tp, StartPosition::Offset(0)).await.unwrap();
        }
        loop {
            let polled = reader.poll(Duration::from_secs(1)).await.unwrap();
            if polled.iter().all(|b| b.records.is_empty()) {
                return;
            }
            for batch in &polled {
                for record in batch.records.iter() {
                    each(batch.partition, record);
                }
            }
        }
    }

    /// Waits until every input record's output is committed (group `ads`
    /// has committed `total` records), every click forwarded through
    /// `ads.repartition` is processed, and `serve`'s writer has applied the
    /// whole aggregates topic. tansu's memory storage reports wrong high
    /// watermarks, so a topic's end is found by reading it to the end (no
    /// record for a second) once nothing more can be written to it.
    async fn wait_caught_up(&self, serve: &Server, total: u64) {
        let until = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            let committed = self
                .bus
                .committed_offsets("ads", "ad_clicks")
                .await
                .expect("committed offsets");
            if committed.values().sum::<u64>() == total {
                break;
            }
            assert!(
                Instant::now() < until,
                "input not committed within {CATCH_UP_DEADLINE:?}: {committed:?} of {total}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every forward was written with (or before) its input offset; the
        // round records the tasks write after them do not need processing.
        let mut forwarded: BTreeMap<u32, u64> = BTreeMap::new();
        self.read_to_quiet("ads.repartition", |partition, record| {
            if !record.headers().any(|(name, _)| name == "riffle-round") {
                forwarded.insert(partition, record.offset + 1);
            }
        })
        .await;
        loop {
            let committed = self
                .bus
                .committed_offsets("ads", "ads.repartition")
                .await
                .expect("committed offsets");
            let done = forwarded
                .iter()
                .all(|(p, end)| committed.get(p).is_some_and(|c| c >= end));
            if done {
                break;
            }
            assert!(
                Instant::now() < until,
                "forwarded clicks not processed within {CATCH_UP_DEADLINE:?}: committed {committed:?}, forwarded up to {forwarded:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        self.read_to_quiet("ad_click_aggregates", |partition, record| {
            ends.insert(partition, record.offset + 1);
        })
        .await;
        loop {
            let (status, body) = serve.get_json("/v1/pipelines").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let writer = &body["pipelines"][0]["writer"];
            let done = ends
                .iter()
                .all(|(p, end)| writer["positions"][p.to_string()].as_u64().unwrap_or(0) >= *end);
            if done {
                return;
            }
            if Instant::now() >= until {
                let log = serve.log();
                panic!(
                    "writer did not apply the aggregates {ends:?} within {CATCH_UP_DEADLINE:?}: {writer}\nlog tail:\n{}",
                    &log[log.len().saturating_sub(3000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The Python with confluent-kafka that scripts/kafka-tools.sh installed.
fn python() -> String {
    std::env::var("RIFFLE_PYTHON").unwrap_or_else(|_| {
        panic!("RIFFLE_PYTHON is not set: run the tests through scripts/test.sh")
    })
}

/// Stops `serve` cleanly and compares its aggregate store, every count
/// row and top row, with the brute-force oracle of `traffic`.
fn assert_store_matches_oracle(
    serve: &mut Server,
    dir: &TestDir,
    traffic: &Traffic,
    setup: &AdsSetup,
) {
    let status = serve.signal_and_wait(libc::SIGTERM);
    assert!(
        status.success(),
        "the serve process exits cleanly: {status}"
    );
    let store = read_store(&dir.data_dir(), traffic, setup);
    let expected = expected(traffic, setup);
    assert_same("count rows", &store.rows, &expected.rows);
    assert_same("top rows", &store.tops, &expected.tops);
}

/// The input partitions a process's tasks own right now.
async fn owned(server: &Server) -> BTreeSet<u64> {
    let (status, body) = server.get_json("/v1/pipelines").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pipelines"][0]["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["partition"].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls until `servers` together own every input partition, each one
/// exactly once (the group has settled).
async fn wait_settled(servers: &[&Server]) -> Vec<BTreeSet<u64>> {
    let until = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        let mut all = Vec::new();
        for server in servers {
            all.push(owned(server).await);
        }
        let union: BTreeSet<u64> = all.iter().flatten().copied().collect();
        let total: usize = all.iter().map(BTreeSet::len).sum();
        if union.len() == PARTITIONS as usize && total == PARTITIONS as usize {
            return all;
        }
        assert!(Instant::now() < until, "ownership did not settle: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The issue's test: three riffle processes on one Kafka run the ad click
/// oracle while one of them is killed with SIGKILL and a new one joins
/// mid-stream. Final counts and top-N rows equal the oracle exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_sigkill_and_a_join_with_exact_results() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let traffic = traffic(59, 12.0, 11 * 60_000, historical_start(), 30);
    traffic.assert_shape(9);

    let (dir_a, dir_b, dir_c, dir_d) = (
        TestDir::new(),
        TestDir::new(),
        TestDir::new(),
        TestDir::new(),
    );
    // A ingests, processes and serves; B and C only process.
    let mut a = cluster.riffle(&dir_a, "ingest,process,serve").await;
    let mut b = cluster.riffle(&dir_b, "process").await;
    let c = cluster.riffle(&dir_c, "process").await;
    let shares = wait_settled(&[&a, &b, &c]).await;
    assert!(
        shares.iter().all(|s| !s.is_empty()),
        "every member owns partitions: {shares:?}"
    );
    let setup = ads_setup(&a).await;

    let third = traffic.chunks.len() / 3;
    let mut chunks = traffic.chunks.iter().zip(&traffic.chunk_len);
    for (body, len) in chunks.by_ref().take(third) {
        post_chunk(&a, body, *len).await;
    }
    // B dies with whatever it had not checkpointed; its partitions move to
    // A and C once the group notices (session timeout).
    let b_owned = owned(&b).await;
    assert!(!b_owned.is_empty(), "B owns partitions before the kill");
    b.signal_and_wait(libc::SIGKILL);
    for (body, len) in chunks.by_ref().take(third) {
        post_chunk(&a, body, *len).await;
    }
    // D joins mid-stream: the group moves some partitions to it.
    let d = cluster.riffle(&dir_d, "process").await;
    for (body, len) in chunks {
        post_chunk(&a, body, *len).await;
    }
    let shares = wait_settled(&[&a, &c, &d]).await;
    assert!(
        !shares[2].is_empty(),
        "the joining process took over partitions: {shares:?}"
    );
    cluster.wait_caught_up(&a, traffic.events() as u64).await;

    // Late records: each too-late click is there (a replay after the kill
    // may repeat one — the late topic is at-least-once without broker
    // transactions, docs/adr/0003).
    let mut late: BTreeSet<String> = BTreeSet::new();
    cluster
        .read_to_quiet("ads.late", |_, record| {
            let too_late = record
                .headers()
                .any(|(name, value)| name == "reason" && value == b"too_late");
            if too_late {
                let event: Value = serde_json::from_slice(record.value).unwrap();
                late.insert(event["event_id"].as_str().unwrap().to_string());
            }
        })
        .await;
    let expected_late: BTreeSet<String> = traffic
        .truth
        .late_beyond_ids()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(late, expected_late, "too-late clicks in ads.late");

    assert_store_matches_oracle(&mut a, &dir_a, &traffic, &setup);
    drop((c, d));
}

/// Which way one event reaches `ad_clicks` in the mixed-producer test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// `POST /v1/events`: Riffle's ingest, keyed and partitioned by murmur2.
    Http,
    /// confluent-kafka with its default partitioner (CRC32 of the key).
    PythonDefault,
    /// confluent-kafka, no key.
    PythonNoKey,
    /// confluent-kafka with murmur2_random (Kafka's Java default).
    PythonMurmur2,
}

const PATHS: [Path; 4] = [
    Path::Http,
    Path::PythonDefault,
    Path::PythonNoKey,
    Path::PythonMurmur2,
];

/// Sends one phase of the mixed-producer test: each path's events through
/// HTTP ingest or the Python producer with that path's partitioning.
async fn send_phase(
    phase: &[(Path, &String)],
    a: &Server,
    python: &str,
    brokers: &str,
    scratch: &std::path::Path,
) {
    let mut by_path: BTreeMap<Path, Vec<&String>> = BTreeMap::new();
    for (path, line) in phase {
        by_path.entry(*path).or_default().push(line);
    }
    for (path, lines) in by_path {
        let partitioning = match path {
            Path::Http => {
                for chunk in lines.chunks(500) {
                    let body: Vec<&str> = chunk.iter().map(|l| l.as_str()).collect();
                    post_chunk(a, &body.join("\n"), chunk.len()).await;
                }
                continue;
            }
            Path::PythonDefault => "default",
            Path::PythonNoKey => "nokey",
            Path::PythonMurmur2 => "murmur2",
        };
        let file = scratch.with_extension(partitioning);
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&file, body).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_interop.py");
        let mut command = std::process::Command::new(python);
        command
            .arg(script)
            .args(["produce-events", brokers, partitioning])
            .arg(&file);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("run python");
        assert!(
            output.status.success(),
            "python produce-events {partitioning} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let sent: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(sent["sent"], lines.len(), "{sent}");
    }
}

/// The issue's repartition test: clicks reach `ad_clicks` four ways — HTTP
/// ingest, and Python confluent-kafka with its default partitioner, with no
/// key and with murmur2 — and duplicates of a click take another way than
/// the click. Two processes run the pipeline, one is killed with SIGKILL,
/// two more join (three then). Every click of an ad, and every copy of a
/// click, must meet in one task: final counts and top-N rows equal the
/// brute-force oracle exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mis_partitioned_producers_count_exactly_through_a_kill_and_joins() {
    mis_partitioned_producers(false).await;
}

/// The same with `bus.kafka.transactions = true`: forwards, round records,
/// output and both offsets commit in one Kafka transaction per emit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mis_partitioned_producers_count_exactly_with_kafka_transactions() {
    mis_partitioned_producers(true).await;
}

async fn mis_partitioned_producers(transactions: bool) {
    let Some(cluster) = Cluster::start_with(transactions).await else {
        return;
    };
    let python = python();
    // Three minutes of event time (well inside the allowed lateness): every
    // click counts however late a forward arrives, so the oracle does not
    // depend on the order the tasks see them in.
    let traffic = on_time_traffic(71, 20.0, 3 * 60_000, historical_start(), 1);
    let c = traffic.truth.summary.by_category;
    assert!(
        c.duplicate * 100 >= c.total() * 5,
        "duplicates below 5%: {c:?}"
    );

    // A path per event; a repeated event_id takes a different path than
    // the copy before it.
    let mut last_path: BTreeMap<String, usize> = BTreeMap::new();
    let mut crossed = 0;
    let routed: Vec<(Path, &String)> = traffic
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let event: Value = serde_json::from_str(line).unwrap();
            let id = event["event_id"].as_str().unwrap().to_string();
            let path = match last_path.get(&id) {
                Some(previous) => {
                    crossed += 1;
                    (previous + 1 + i % 3) % PATHS.len()
                }
                None => (i * 7 + i / 5) % PATHS.len(),
            };
            last_path.insert(id, path);
            (PATHS[path], line)
        })
        .collect();
    assert_eq!(crossed as u64, c.duplicate, "every duplicate crossed paths");

    let (dir_a, dir_b, dir_c, dir_d) = (
        TestDir::new(),
        TestDir::new(),
        TestDir::new(),
        TestDir::new(),
    );
    let scratch = dir_a.scratch("events");
    let brokers = cluster.broker.brokers.clone();
    // Two processes: A ingests, processes and serves; B processes.
    let mut a = cluster.riffle(&dir_a, "ingest,process,serve").await;
    let mut b = cluster.riffle(&dir_b, "process").await;
    wait_settled(&[&a, &b]).await;
    let setup = ads_setup(&a).await;
    let third = routed.len() / 3;
    send_phase(&routed[..third], &a, &python, &brokers, &scratch).await;
    // B dies with whatever it had not checkpointed, forwards included.
    assert!(
        !owned(&b).await.is_empty(),
        "B owns partitions before the kill"
    );
    b.signal_and_wait(libc::SIGKILL);
    send_phase(&routed[third..2 * third], &a, &python, &brokers, &scratch).await;
    // Two join: three processes share the partitions.
    let c3 = cluster.riffle(&dir_c, "process").await;
    let d = cluster.riffle(&dir_d, "process").await;
    send_phase(&routed[2 * third..], &a, &python, &brokers, &scratch).await;
    wait_settled(&[&a, &c3, &d]).await;
    cluster.wait_caught_up(&a, routed.len() as u64).await;

    // The forward path was taken, and is reported per task and in metrics.
    let (status, body) = a.get_json("/v1/pipelines").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for partition in body["pipelines"][0]["partitions"].as_array().unwrap() {
        assert!(partition["forwarded_out"].is_u64(), "{partition}");
        assert!(partition["forwarded_in"].is_u64(), "{partition}");
        assert!(partition["repartition_offset"].is_u64(), "{partition}");
    }
    let (status, metrics) = a.get_json("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let forwarded_by_a: f64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("riffle_stream_records_forwarded_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(forwarded_by_a > 0.0, "A forwarded no click");
    // Nothing was too late or unreadable.
    let mut late = Vec::new();
    cluster
        .read_to_quiet("ads.late", |_, record| {
            late.push(String::from_utf8_lossy(record.value).into_owned());
        })
        .await;
    assert!(late.is_empty(), "late or rejected records: {late:?}");
    let mut forwarded_records = 0;
    cluster
        .read_to_quiet("ads.repartition", |_, record| {
            if record.headers().any(|(name, _)| name == "riffle-origin") {
                forwarded_records += 1;
            }
        })
        .await;
    assert!(
        forwarded_records > routed.len() / 4,
        "{forwarded_records} of {} clicks forwarded",
        routed.len()
    );

    assert_store_matches_oracle(&mut a, &dir_a, &traffic, &setup);
    drop((c3, d));
}

/// Separate ingest-only, process-only and serve-only processes on the same
/// Kafka: events posted to the ingest process are counted by the process
/// member and answered by the serve process from its aggregate store; each
/// process refuses what its roles do not include.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_process_and_serve_run_as_separate_processes() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (dir_i, dir_p, dir_s) = (TestDir::new(), TestDir::new(), TestDir::new());
    let ingest = cluster.riffle(&dir_i, "ingest").await;
    let process = cluster.riffle(&dir_p, "process").await;
    let serve = cluster.riffle(&dir_s, "serve").await;

    let minute = minute_of(now_ms()) - 10 * MINUTE;
    let mut events = Vec::new();
    for i in 0..30 {
        let ad = format!("ad-{}", i % 3);
        events.push(ad_click(
            &format!("c-{i}"),
            &ad,
            "u-1",
            &rfc3339(minute + i * 1000),
        ));
    }
    // A retried click (same event_id) is counted once.
    events.push(ad_click("c-0", "ad-0", "u-1", &rfc3339(minute)));
    ingest.ingest_ok(&events).await;

    let query = format!(
        "/v1/ads/ad-0/aggregated_count?from={}&to={}",
        minute,
        minute + MINUTE
    );
    let popular = format!(
        "/v1/ads/popular_ads?count=5&window=1&to={}",
        minute + MINUTE
    );
    let until = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        let (status, body) = serve.get_json(&popular).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["counts"] == json!([10, 10, 10]) {
            break;
        }
        let counts = body["counts"].as_array().unwrap();
        assert!(
            counts.iter().all(|c| c.as_u64().unwrap() <= 10),
            "over-counted: {body}"
        );
        assert!(
            Instant::now() < until,
            "serve never saw the 30 clicks: {body}\nprocess log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = serve.get_json(&query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 10, "{body}");

    // Each process refuses what it does not run, naming the role.
    let (status, body) = ingest.get_json(&query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        assert_api_error(&body, "unavailable").contains("serve role"),
        "{body}"
    );
    for other in [&process, &serve] {
        let (status, body) = other
            .post_events("application/json", ndjson(&events[..1]))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            assert_api_error(&body, "unavailable").contains("ingest role"),
            "{body}"
        );
    }
    // The process member owns every partition; the others own none.
    assert_eq!(owned(&process).await.len(), PARTITIONS as usize);
    assert!(owned(&serve).await.is_empty());
}

/// An independent Kafka client (Python confluent-kafka) produces ad_click
/// events as JSON straight to the `ad_clicks` topic and reads Riffle's
/// `ad_click_aggregates` topic: the counts it reads are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_confluent_kafka_produces_clicks_and_reads_aggregates() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let python = python();
    let dir = TestDir::new();
    let riffle = cluster.riffle(&dir, "ingest,process,serve").await;
    let minute = minute_of(now_ms()) - 10 * MINUTE;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_interop.py");
    let run = |mode: &str, extra: &[String]| {
        let output = std::process::Command::new(&python)
            .arg(script)
            .arg(mode)
            .arg(&cluster.broker.brokers)
            .args(extra)
            .output()
            .expect("run python");
        assert!(
            output.status.success(),
            "python {mode} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // 3 ads × 7 clicks in one minute, every 5th click sent twice.
    let produced: Value =
        serde_json::from_str(&run("produce", &[minute.to_string(), "21".into()])).unwrap();
    assert_eq!(produced["sent"], 26, "{produced}");
    let until = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        let counts: Value =
            serde_json::from_str(&run("aggregates", &[minute.to_string()])).unwrap();
        if counts == json!({"ad-0": 7, "ad-1": 7, "ad-2": 7}) {
            break;
        }
        assert!(
            Instant::now() < until,
            "aggregates read by confluent-kafka: {counts}\nriffle log:\n{}",
            riffle.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same through Riffle's query API.
    let (status, body) = riffle
        .get_json(&format!(
            "/v1/ads/ad-1/aggregated_count?from={minute}&to={}",
            minute + MINUTE
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 7, "{body}");
}

/// Riffle's Kafka records are readable by offset with Riffle's own
/// consumer too: the partition a key lands on is murmur2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_routes_keys_to_the_murmur2_partition_on_kafka() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let dir = TestDir::new();
    let riffle = cluster.riffle(&dir, "ingest").await;
    let minute = minute_of(now_ms()) - 5 * MINUTE;
    let events: Vec<Value> = (0..40)
        .map(|i| ad_click(&format!("k-{i}"), &format!("ad-{i}"), "u", &rfc3339(minute)))
        .collect();
    riffle.ingest_ok(&events).await;
    let partitions: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("ad_clicks", p))
        .collect();
    let mut consumer = cluster
        .bus
        .consumer(ConsumerConfig::assign("murmur-check", partitions.clone()))
        .await
        .unwrap();
    for tp in &partitions {
        consumer.seek(tp, StartPosition::Earliest).await.unwrap();
    }
    let mut seen = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while seen < 40 {
        assert!(Instant::now() < until, "read {seen} of 40");
        for batch in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            for record in batch.records.iter() {
                let key = record.key.expect("keyed by ad_id");
                assert_eq!(
                    batch.partition,
                    riffle_log::partition_for_key(key, PARTITIONS),
                    "key {:?}",
                    String::from_utf8_lossy(key)
                );
                seen += 1;
            }
        }
    }
}
