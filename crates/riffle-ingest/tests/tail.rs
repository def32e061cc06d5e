//! The tailer against real files in temp directories and a recording
//! in-memory sink, driven poll by poll (no sleeps as synchronisation).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use riffle_ingest::tail::{
    DeadLetter, LineFormat, PollStats, RetryPolicy, SinkError, Sleeper, TailConfig, TailError,
    TailSink, Tailer,
};
use serde_json::{json, Value};

type RejectRule = Box<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// Records everything it acknowledges; can be told to fail or reject.
#[derive(Default)]
struct RecordingSink {
    state: Mutex<SinkState>,
    reject: Option<RejectRule>,
}

#[derive(Default)]
struct SinkState {
    /// Accepted events, in the order they were acknowledged.
    accepted: Vec<Value>,
    /// Sizes of the acknowledged `send_events` calls.
    batches: Vec<usize>,
    dead_letters: Vec<(String, DeadLetter)>,
    /// The next this-many `send_events` calls fail with this error.
    fail_events: Option<(u32, SinkError)>,
    fail_dead_letters: Option<(u32, SinkError)>,
    event_calls: u32,
}

impl RecordingSink {
    fn rejecting(rule: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            reject: Some(Box::new(rule)),
            ..Self::default()
        }
    }

    fn fail_events(&self, times: u32, error: SinkError) {
        self.state.lock().unwrap().fail_events = Some((times, error));
    }

    fn fail_dead_letters(&self, times: u32, error: SinkError) {
        self.state.lock().unwrap().fail_dead_letters = Some((times, error));
    }

    fn accepted(&self) -> Vec<Value> {
        self.state.lock().unwrap().accepted.clone()
    }

    fn ad_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|event| event["ad_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn event_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|event| event["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn batches(&self) -> Vec<usize> {
        self.state.lock().unwrap().batches.clone()
    }

    fn dead_letters(&self) -> Vec<(String, DeadLetter)> {
        self.state.lock().unwrap().dead_letters.clone()
    }

    fn event_calls(&self) -> u32 {
        self.state.lock().unwrap().event_calls
    }
}

fn take_failure(slot: &mut Option<(u32, SinkError)>) -> Option<SinkError> {
    let (times, error) = slot.as_mut()?;
    let error = error.clone();
    *times -= 1;
    if *times == 0 {
        *slot = None;
    }
    Some(error)
}

#[async_trait]
impl TailSink for RecordingSink {
    async fn send_events(&self, events: Vec<Vec<u8>>) -> Result<Vec<Option<String>>, SinkError> {
        let mut state = self.state.lock().unwrap();
        state.event_calls += 1;
        if let Some(error) = take_failure(&mut state.fail_events) {
            return Err(error);
        }
        let mut verdicts = Vec::with_capacity(events.len());
        for bytes in &events {
            let event: Value = serde_json::from_slice(bytes).expect("the tailer sends json");
            let verdict = self.reject.as_ref().and_then(|rule| rule(&event));
            if verdict.is_none() {
                state.accepted.push(event);
            }
            verdicts.push(verdict);
        }
        state.batches.push(events.len());
        Ok(verdicts)
    }

    async fn send_dead_letters(
        &self,
        topic: &str,
        letters: Vec<DeadLetter>,
    ) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = take_failure(&mut state.fail_dead_letters) {
            return Err(error);
        }
        state
            .dead_letters
            .extend(letters.into_iter().map(|letter| (topic.to_owned(), letter)));
        Ok(())
    }
}

/// Returns at once and remembers what it was asked to wait.
#[derive(Default)]
struct RecordingSleeper {
    waits: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, duration: Duration) {
        self.waits.lock().unwrap().push(duration);
        tokio::task::yield_now().await;
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    sink: Arc<RecordingSink>,
    sleeper: Arc<RecordingSleeper>,
}

impl Fixture {
    fn new() -> Self {
        Self::with_sink(RecordingSink::default())
    }

    fn with_sink(sink: RecordingSink) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            sink: Arc::new(sink),
            sleeper: Arc::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn checkpoint(&self) -> PathBuf {
        self.path("state/tail.checkpoint.json")
    }

    fn config(&self, pattern: &str) -> TailConfig {
        TailConfig::new(
            vec![self.path(pattern).to_string_lossy().into_owned()],
            self.checkpoint(),
        )
    }

    fn tailer(&self, config: TailConfig) -> Tailer {
        Tailer::new(config, self.sink.clone())
            .unwrap()
            .with_sleeper(self.sleeper.clone())
    }

    fn waits(&self) -> Vec<Duration> {
        self.sleeper.waits.lock().unwrap().clone()
    }
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A seed line for ad `n`.
fn seed(n: u32) -> String {
    format!(
        "[AdClickEvent] ad{n:03}, 2022-03-04 00:{:02}:{:02}, user {n}, 207.148.22.{}, USA\n",
        n / 60 % 60,
        n % 60,
        n % 256
    )
}

fn seeds(range: std::ops::Range<u32>) -> String {
    range.map(seed).collect()
}

fn ads(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("ad{n:03}")).collect()
}

fn checkpoint_files(path: &Path) -> Vec<Value> {
    let document: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    assert_eq!(document["version"], 1);
    document["files"].as_array().unwrap().clone()
}

async fn poll(tailer: &mut Tailer) -> PollStats {
    tailer.poll_once().await.unwrap()
}

#[tokio::test]
async fn reads_appended_lines_across_polls_and_waits_for_partial_lines() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    let third = seed(3);
    let (third_head, third_tail) = third.split_at(20);
    append(&log, &format!("{}{}", seeds(1..3), third_head));

    let mut tailer = fx.tailer(fx.config("ads.log"));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.lines, 2);
    assert_eq!(stats.events_accepted, 2);
    assert_eq!(stats.new_files, 1);
    assert_eq!(fx.sink.ad_ids(), ads(1..3));
    let settled = seeds(1..3).len() as u64;
    assert_eq!(
        tailer.files()[0].offset,
        settled,
        "the partial line is not settled"
    );
    assert_eq!(tailer.files()[0].line, 2);

    let stats = poll(&mut tailer).await;
    assert_eq!(
        stats.lines, 0,
        "nothing new: the partial line is still partial"
    );

    append(&log, &format!("{third_tail}{}", seed(4)));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.lines, 2);
    assert_eq!(fx.sink.ad_ids(), ads(1..5));

    let checkpoint = checkpoint_files(&fx.checkpoint());
    assert_eq!(checkpoint.len(), 1);
    assert_eq!(checkpoint[0]["offset"], fs::metadata(&log).unwrap().len());
    assert_eq!(checkpoint[0]["line"], 4);
    assert_eq!(checkpoint[0]["path"], log.to_string_lossy().as_ref());

    let first = &fx.sink.accepted()[0];
    assert_eq!(
        first,
        &json!({
            "event_type": "ad_click",
            "event_id": first["event_id"],
            "event_time": "2022-03-04T00:00:01.000Z",
            "event_version": 1,
            "ad_id": "ad001",
            "user_id": "1",
            "ip": "207.148.22.1",
            "country": "USA",
        })
    );
    let ids = fx.sink.event_ids();
    assert!(ids.iter().all(|id| id.starts_with("tail:")), "{ids:?}");
    assert!(
        ids[0].ends_with(".0.0"),
        "generation 0, offset 0: {}",
        ids[0]
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        4,
        "ids are unique"
    );
}

#[tokio::test]
async fn rotation_finishes_the_old_file_through_its_handle_then_reads_the_new_one() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..4));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..4));

    // A writer keeps its handle across the rename, as a logger does until it
    // reopens; what it writes after the rename must not be lost.
    let mut old_writer = OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&log, fx.path("ads.log.1")).unwrap();
    old_writer.write_all(seeds(4..6).as_bytes()).unwrap();
    append(&log, &seeds(100..102));

    let stats = poll(&mut tailer).await;
    assert_eq!(stats.rotations, 1);
    assert_eq!(stats.new_files, 1);
    assert_eq!(
        fx.sink.ad_ids(),
        [ads(1..6), ads(100..102)].concat(),
        "the rotated file is read first, to its end"
    );
    let files = tailer.files();
    assert_eq!(files.len(), 2);
    assert!(files[0].rotated && !files[1].rotated, "{files:?}");

    // The old writer is still at it during the grace poll.
    old_writer.write_all(seed(6).as_bytes()).unwrap();
    poll(&mut tailer).await;
    assert_eq!(tailer.files().len(), 2, "kept while it still grows");
    assert_eq!(fx.sink.ad_ids().last().unwrap(), "ad006");

    drop(old_writer);
    append(&log, &seed(102));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.files, 1, "forgotten once read and no longer growing");
    assert_eq!(tailer.files()[0].path, log);
    assert_eq!(checkpoint_files(&fx.checkpoint()).len(), 1);
    assert_eq!(
        fx.sink.ad_ids(),
        [ads(1..6), ads(100..102), ads(6..7), ads(102..103)].concat()
    );
}

#[tokio::test]
async fn an_unterminated_last_line_of_a_rotated_file_is_read_once_it_stops_growing() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &format!("{}{}", seed(1), seed(2).trim_end()));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..2));

    fs::rename(&log, fx.path("ads.log.1")).unwrap();
    poll(&mut tailer).await;
    assert_eq!(
        fx.sink.ad_ids(),
        ads(1..2),
        "first poll after rotation: grace"
    );
    let stats = poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..3));
    assert_eq!(stats.files, 0);
}

#[tokio::test]
async fn a_rotated_name_that_still_matches_keeps_its_offset() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..3));
    let mut tailer = fx.tailer(fx.config("ads.log*"));
    poll(&mut tailer).await;

    fs::rename(&log, fx.path("ads.log.1")).unwrap();
    append(&fx.path("ads.log.1"), &seed(3));
    append(&log, &seed(50));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.rotations, 0);
    assert_eq!(stats.new_files, 1);
    let mut sent = fx.sink.ad_ids();
    sent.sort();
    assert_eq!(
        sent,
        [ads(1..4), ads(50..51)].concat(),
        "nothing read twice"
    );
    assert_eq!(tailer.files().len(), 2);
}

#[tokio::test]
async fn copytruncate_restarts_at_the_beginning() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..4));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;
    let first_ids = fx.sink.event_ids();

    // copytruncate: copy away, truncate in place, the writer carries on.
    fs::copy(&log, fx.path("ads.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &seed(10));

    let stats = poll(&mut tailer).await;
    assert_eq!(stats.truncations, 1);
    assert_eq!(fx.sink.ad_ids(), [ads(1..4), ads(10..11)].concat());
    assert_eq!(tailer.files()[0].line, 1, "line numbers restart");
    let new_id = fx.sink.event_ids().pop().unwrap();
    assert!(
        !first_ids.contains(&new_id),
        "new content at a reused offset gets a new id: {new_id}"
    );
    assert!(new_id.ends_with(".1.0"), "generation 1, offset 0: {new_id}");
}

#[tokio::test]
async fn truncation_hidden_by_regrowth_is_caught_by_the_changed_head() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..3));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;

    // Truncated and rewritten past the old offset between two polls.
    fs::write(&log, seeds(20..26)).unwrap();
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.truncations, 1);
    assert_eq!(fx.sink.ad_ids(), [ads(1..3), ads(20..26)].concat());
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_without_loss_or_repeats() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    let other = fx.path("other.log");
    append(&log, &seeds(1..4));
    append(&other, &seeds(200..202));
    append(&log, &seed(4)[..10]);

    let mut tailer = fx.tailer(fx.config("*.log"));
    poll(&mut tailer).await;
    drop(tailer);

    append(&log, &seed(4)[10..]);
    append(&log, &seeds(5..8));
    append(&other, &seed(202));

    let mut tailer = fx.tailer(fx.config("*.log"));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.new_files, 0, "both files come from the checkpoint");
    drop(tailer);
    let mut tailer = fx.tailer(fx.config("*.log"));
    assert_eq!(poll(&mut tailer).await.lines, 0);

    let sent = fx.sink.ad_ids();
    let of = |prefix: &str| -> Vec<String> {
        sent.iter()
            .filter(|id| id.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(of("ad0"), ads(1..8), "every line once, in order");
    assert_eq!(of("ad2"), ads(200..203));
    assert_eq!(sent.len(), 10);
}

#[tokio::test]
async fn a_crash_between_ack_and_checkpoint_repeats_lines_with_the_same_ids() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..3));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;
    let before = fs::read(fx.checkpoint()).unwrap();

    append(&log, &seeds(3..6));
    poll(&mut tailer).await;
    drop(tailer);
    // The sink acknowledged ad003..ad005 but the checkpoint never moved.
    fs::write(fx.checkpoint(), before).unwrap();

    let mut tailer = fx.tailer(fx.config("ads.log"));
    poll(&mut tailer).await;
    assert_eq!(
        fx.sink.ad_ids(),
        [ads(1..6), ads(3..6)].concat(),
        "the window repeats lines"
    );
    let ids = fx.sink.event_ids();
    assert_eq!(ids[2..5], ids[5..8], "with identical event ids, for dedup");
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 5);
}

#[tokio::test]
async fn bad_lines_go_to_the_dead_letter_topic_and_the_rest_continue() {
    let fx = Fixture::with_sink(RecordingSink::rejecting(|event| {
        (event["ad_id"] == "banned").then(|| "field \"ad_id\": ad is banned".to_owned())
    }));
    let log = fx.path("ads.log");
    let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
    let lines = [
        seed(1),                                                                         // 1
        "\n".to_owned(),                                                                 // 2 blank
        "[AdClickEvent] ad002, 2022-13-04 00:00:01, user 2, 1.2.3.4, USA\n".to_owned(),  // 3
        "   \r\n".to_owned(),                                                            // 4 blank
        "{\"event_type\":\"ad_click\",\"event_time\":1}\n".to_owned(),                   // 5
        "[AdClickEvent] banned, 2022-03-04 00:00:01, user 2, 1.2.3.4, USA\n".to_owned(), // 6
        "garbage\n".to_owned(),                                                          // 7
        format!("{long}\n"),                                                             // 8
        seed(9),                                                                         // 9
    ];
    append(&log, &lines.concat());
    let mut config = fx.config("ads.log");
    config.max_line_bytes = 100;
    let mut tailer = fx.tailer(config);

    let stats = poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ["ad001", "ad009"]);
    assert_eq!(stats.lines, 9);
    assert_eq!(stats.blank_lines, 2);
    assert_eq!(stats.events_accepted, 2);
    assert_eq!(stats.events_rejected, 1);
    assert_eq!(stats.dead_letters, 5);

    let letters = fx.sink.dead_letters();
    assert!(letters.iter().all(|(topic, _)| topic == "tail.dead_letter"));
    let file = log.to_string_lossy().into_owned();
    let offset_of = |line: usize| lines[..line - 1].concat().len() as u64;
    let oversized = format!(
        "line is {0} bytes (max 100); raw holds its first {0} bytes",
        long.len()
    );
    let summary: Vec<(u64, u64, &str)> = letters
        .iter()
        .map(|(_, letter)| {
            assert_eq!(letter.file, file);
            (letter.line, letter.byte_offset, letter.reason.as_str())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                3,
                offset_of(3),
                "time \"2022-13-04 00:00:01\": month out of range"
            ),
            (5, offset_of(5), "field \"ad_id\" missing"),
            (
                6,
                offset_of(6),
                "rejected by the sink: field \"ad_id\": ad is banned"
            ),
            (
                7,
                offset_of(7),
                "unrecognised line: expected '[' (seed ad click) or '{' (json event) first"
            ),
            (8, offset_of(8), oversized.as_str()),
        ]
    );
    assert_eq!(letters[0].1.raw, lines[2].trim_end());
    assert_eq!(letters[2].1.raw, lines[5].trim_end());
    assert_eq!(letters[4].1.raw, long);
    assert_eq!(tailer.files()[0].line, 9);
}

#[tokio::test]
async fn an_over_long_line_spanning_reads_and_polls_is_dead_lettered_once_complete() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    let mut config = fx.config("ads.log");
    config.max_line_bytes = 1000;
    let mut tailer = fx.tailer(config);

    // 600 KiB without a newline: larger than one read chunk.
    let huge = "z".repeat(600 * 1024);
    append(&log, &format!("{}{huge}", seed(1)));
    poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..2));
    assert!(
        fx.sink.dead_letters().is_empty(),
        "the long line is not over yet"
    );

    append(&log, &format!("tail\n{}", seed(3)));
    poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), [ads(1..2), ads(3..4)].concat());
    let letters = fx.sink.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].1;
    assert_eq!(letter.line, 2);
    assert_eq!(letter.byte_offset, seed(1).len() as u64);
    assert_eq!(letter.raw.len(), 4096);
    assert_eq!(
        letter.reason,
        format!(
            "line is {} bytes (max 1000); raw holds its first 4096 bytes",
            huge.len() + 4
        )
    );
    assert_eq!(tailer.files()[0].line, 3);
}

#[tokio::test]
async fn retryable_sink_errors_are_retried_with_backoff() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..4));
    fx.sink
        .fail_events(2, SinkError::Unavailable("connection refused".to_owned()));
    let mut tailer = fx.tailer(fx.config("ads.log"));

    let stats = poll(&mut tailer).await;
    assert_eq!(stats.retries, 2);
    assert_eq!(fx.sink.event_calls(), 3);
    assert_eq!(
        fx.waits(),
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
    assert_eq!(fx.sink.ad_ids(), ads(1..4));

    fx.sink.fail_events(
        1,
        SinkError::Backpressure {
            retry_after: Some(Duration::from_secs(3)),
        },
    );
    append(&log, &seed(4));
    poll(&mut tailer).await;
    assert_eq!(
        fx.waits()[2],
        Duration::from_secs(3),
        "the server's wait wins"
    );
    assert_eq!(fx.sink.ad_ids(), ads(1..5));
}

#[tokio::test]
async fn a_sink_outage_checkpoints_nothing_and_the_retry_sends_each_line_once() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..3));
    let mut config = fx.config("ads.log");
    config.retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let mut tailer = fx.tailer(config);
    poll(&mut tailer).await;
    let settled = fs::read(fx.checkpoint()).unwrap();

    append(&log, &seeds(3..6));
    fx.sink.fail_events(
        3,
        SinkError::Unavailable("503 service unavailable".to_owned()),
    );
    let error = tailer.poll_once().await.unwrap_err();
    assert!(
        matches!(&error, TailError::Sink(SinkError::Unavailable(_))),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "sink unavailable: 503 service unavailable"
    );
    assert_eq!(
        fs::read(fx.checkpoint()).unwrap(),
        settled,
        "nothing checkpointed"
    );
    assert_eq!(tailer.files()[0].line, 2);

    let stats = poll(&mut tailer).await;
    assert_eq!(stats.events_accepted, 3);
    assert_eq!(fx.sink.ad_ids(), ads(1..6), "no line lost, none repeated");
}

#[tokio::test]
async fn a_refused_request_is_not_retried() {
    let fx = Fixture::new();
    append(&fx.path("ads.log"), &seeds(1..3));
    fx.sink
        .fail_events(1, SinkError::Refused("401 unauthorized".to_owned()));
    let mut tailer = fx.tailer(fx.config("ads.log"));
    let error = tailer.poll_once().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "sink refused the request: 401 unauthorized"
    );
    assert!(fx.waits().is_empty());
    poll(&mut tailer).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..3));
}

#[tokio::test]
async fn failing_to_send_dead_letters_checkpoints_nothing() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &format!("{}garbage\n{}", seed(1), seed(3)));
    let mut config = fx.config("ads.log");
    config.retry.max_attempts = 1;
    let mut tailer = fx.tailer(config);
    fx.sink
        .fail_dead_letters(1, SinkError::Unavailable("timeout".to_owned()));
    assert!(tailer.poll_once().await.is_err());
    assert_eq!(tailer.files()[0].offset, 0);

    poll(&mut tailer).await;
    let letters = fx.sink.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.line, 2);
    // The events were sent twice (once before the dead letters failed), with
    // the same ids both times.
    assert_eq!(fx.sink.ad_ids(), ["ad001", "ad003", "ad001", "ad003"]);
    let ids = fx.sink.event_ids();
    assert_eq!(ids[..2], ids[2..]);
    assert_eq!(tailer.files()[0].line, 3);
}

#[tokio::test]
async fn mixed_seed_and_json_lines() {
    let fx = Fixture::new();
    let log = fx.path("mixed.log");
    let lines = [
        seed(1),
        "{\"event_type\":\"ad_click\",\"event_id\":\"client-7\",\"event_time\":\"2024-05-01T12:00:00Z\",\"ad_id\":\"j1\",\"user_id\":\"u\",\"ip\":\"::1\",\"country\":\"KR\"}\n".to_owned(),
        "  {\"event_type\":\"stream_heartbeat\",\"event_time\":1714564800000,\"stream_id\":\"s-1\"}\r\n".to_owned(),
    ];
    append(&log, &lines.concat());
    let mut tailer = fx.tailer(fx.config("mixed.log"));
    poll(&mut tailer).await;

    let events = fx.sink.accepted();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["ad_id"], "ad001");
    assert_eq!(events[1]["event_id"], "client-7", "a line's own id is kept");
    assert_eq!(events[1]["event_time"], "2024-05-01T12:00:00.000Z");
    assert_eq!(
        events[2],
        json!({
            "event_type": "stream_heartbeat",
            "event_id": events[2]["event_id"],
            "event_time": "2024-05-01T12:00:00.000Z",
            "event_version": 1,
            "stream_id": "s-1",
        })
    );
    let offset = (lines[0].len() + lines[1].len()).to_string();
    assert!(
        events[2]["event_id"]
            .as_str()
            .unwrap()
            .ends_with(&format!(".{offset}")),
        "generated from the line's offset: {}",
        events[2]["event_id"]
    );
}

#[tokio::test]
async fn a_forced_format_applies_to_every_line() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(
        &log,
        &format!(
            "{}{{\"event_type\":\"stream_ended\",\"event_time\":5,\"stream_id\":\"s\"}}\n",
            seed(1)
        ),
    );
    let mut config = fx.config("ads.log");
    config.format = LineFormat::Ndjson;
    let mut tailer = fx.tailer(config);
    poll(&mut tailer).await;
    assert_eq!(fx.sink.accepted()[0]["stream_id"], "s");
    let letters = fx.sink.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1.line, 1);
    assert!(
        letters[0].1.reason.starts_with("invalid json"),
        "{}",
        letters[0].1.reason
    );
}

#[tokio::test]
async fn batches_are_cut_at_batch_lines_and_each_is_checkpointed() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &format!("{}garbage\n{}", seeds(1..4), seeds(4..6)));
    let mut config = fx.config("ads.log");
    config.batch_lines = 2;
    let mut tailer = fx.tailer(config);
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.batches, 3);
    assert_eq!(fx.sink.batches(), [2, 1, 2], "the dead letter fills a slot");
    assert_eq!(fx.sink.ad_ids(), ads(1..6));
    assert_eq!(checkpoint_files(&fx.checkpoint())[0]["line"], 6);
}

#[tokio::test]
async fn new_files_matching_a_glob_are_picked_up() {
    let fx = Fixture::new();
    let mut tailer = fx.tailer(fx.config("*.log"));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.files, 0);

    append(&fx.path("b.log"), &seed(2));
    append(&fx.path("a.log"), &seed(1));
    append(&fx.path("ignored.txt"), &seed(9));
    let stats = poll(&mut tailer).await;
    assert_eq!(stats.new_files, 2);
    assert_eq!(fx.sink.ad_ids(), ads(1..3), "by path");
}

#[tokio::test]
async fn a_checkpoint_inside_the_watched_directory_is_not_tailed() {
    let fx = Fixture::new();
    append(&fx.path("a.log"), &seed(1));
    let config = TailConfig::new(
        vec![fx.path("*").to_string_lossy().into_owned()],
        fx.path("tail.checkpoint"),
    );
    let mut tailer = fx.tailer(config);
    poll(&mut tailer).await;
    poll(&mut tailer).await;
    assert_eq!(tailer.files().len(), 1);
    assert!(fx.sink.dead_letters().is_empty());
}

#[tokio::test]
async fn a_corrupt_checkpoint_stops_the_tailer_instead_of_rereading() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.checkpoint().parent().unwrap()).unwrap();
    fs::write(fx.checkpoint(), "{\"version\":1").unwrap();
    let error = Tailer::new(fx.config("*.log"), fx.sink.clone()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tail.checkpoint.json: invalid json"),
        "{error}"
    );
}

#[tokio::test]
async fn run_polls_until_shutdown() {
    let fx = Fixture::new();
    let log = fx.path("ads.log");
    append(&log, &seeds(1..3));
    let mut tailer = fx.tailer(fx.config("ads.log"));

    // Shut down once the sink holds every line; each idle wait between polls
    // yields, so the check runs between polls.
    let sink = fx.sink.clone();
    let shutdown = async move {
        while sink.ad_ids().len() < 2 {
            tokio::task::yield_now().await;
        }
    };
    tailer.run(Duration::from_millis(250), shutdown).await;
    assert_eq!(fx.sink.ad_ids(), ads(1..3));
}

#[test]
fn the_poll_future_can_be_spawned() {
    fn assert_send<T: Send>(_: T) {}
    let dir = tempfile::tempdir().unwrap();
    let mut tailer = Tailer::new(
        TailConfig::new(vec!["*.log".to_owned()], dir.path().join("cp")),
        Arc::new(RecordingSink::default()),
    )
    .unwrap();
    assert_send(tailer.poll_once());
}

#[test]
fn dead_letters_serialize_flat() {
    let letter = DeadLetter {
        file: "/var/log/ads.log".to_owned(),
        line: 7,
        byte_offset: 420,
        reason: "field 3 (user): empty".to_owned(),
        raw: "[AdClickEvent] a, 2022-03-04 00:00:01, , 1.2.3.4, US".to_owned(),
    };
    assert_eq!(
        serde_json::to_value(&letter).unwrap(),
        json!({
            "file": "/var/log/ads.log",
            "line": 7,
            "byte_offset": 420,
            "reason": "field 3 (user): empty",
            "raw": "[AdClickEvent] a, 2022-03-04 00:00:01, , 1.2.3.4, US",
        })
    );
}

#[tokio::test]
async fn two_tailers_cannot_share_a_checkpoint() {
    let fx = Fixture::new();
    let first = fx.tailer(fx.config("*.log"));
    let error = Tailer::new(fx.config("*.log"), fx.sink.clone()).unwrap_err();
    assert!(
        matches!(error, TailError::CheckpointLocked { .. }),
        "{error}"
    );
    assert!(
        error.to_string().ends_with("is in use by another tailer"),
        "{error}"
    );
    drop(first);
    fx.tailer(fx.config("*.log"));
}
