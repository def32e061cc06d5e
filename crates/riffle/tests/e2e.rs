//! End-to-end tests of the `riffle` binary: a real `riffle serve` process
//! on 127.0.0.1, driven over HTTP, gRPC and through the CLI commands.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use riffle_testkit::*;
use serde_json::{json, Value};

/// 2024-05-01T12:00:00Z.
const T0: i64 = 1_714_564_800_000;

fn rfc3339(ms: i64) -> String {
    riffle_core::time::format_rfc3339_ms(ms)
}

#[tokio::test]
async fn http_ingest_then_cli_consume() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;

    let c1 = ad_click("c1", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    let c2 = ad_click("c2", "ad002", "u2", "2024-05-01T12:00:01.000Z");
    let c3 = ad_click("c3", "ad001", "u3", "2024-05-01T12:00:02.000Z");
    // c2 as sent: epoch-ms time and no version (defaults to 1).
    let mut c2_sent = c2.clone();
    c2_sent["event_time"] = json!(T0 + 1000);
    c2_sent.as_object_mut().unwrap().remove("event_version");
    let impression = json!({"event_type": "ad_impression", "event_id": "i1",
        "event_time": "2024-05-01T12:00:00.500Z", "event_version": 1,
        "ad_id": "ad001", "user_id": "u9", "ip": "10.0.0.9", "country": "KOR"});
    let live: Vec<Value> = vec![
        json!({"event_type": "stream_started", "event_id": "l1",
            "event_time": "2024-05-01T12:00:00.000Z", "event_version": 1,
            "stream_id": "s1", "streamer_id": "st1", "category": "music", "language": "ko"}),
        json!({"event_type": "viewer_joined", "event_id": "l2",
            "event_time": "2024-05-01T12:00:01.000Z", "event_version": 1,
            "stream_id": "s1", "user_id": "u1"}),
        json!({"event_type": "gift_sent", "event_id": "l3",
            "event_time": "2024-05-01T12:00:02.000Z", "event_version": 1,
            "stream_id": "s1", "user_id": "u1", "amount": 5}),
    ];
    let rec_click = json!({"event_type": "rec_click", "event_id": "r1",
        "event_time": "2024-05-01T12:00:03.000Z", "event_version": 1,
        "request_id": "q1", "user_id": "u1", "stream_id": "s1"});
    let sent = vec![
        c1.clone(),
        live[0].clone(),
        c2_sent,
        impression,
        live[1].clone(),
        c3.clone(),
        rec_click,
        live[2].clone(),
    ];
    let (status, body) = server
        .post_events("application/x-ndjson", ndjson(&sent))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 8, "rejected": []}));

    // Exactly the ad clicks, as sent (canonical form), keyed by ad_id, with
    // the event time as the record timestamp.
    let records = server.consume(&dir, &["ad_clicks", "--no-follow"]);
    assert_eq!(records.len(), 3, "{records:?}");
    for r in &records {
        assert_eq!(r["topic"], json!("ad_clicks"), "{r}");
        assert_eq!(r["key"], r["value"]["ad_id"], "key is the ad_id: {r}");
        let time = riffle_core::time::parse_rfc3339_ms(r["value"]["event_time"].as_str().unwrap())
            .unwrap();
        assert_eq!(r["timestamp"], json!(time), "{r}");
    }
    let expected: BTreeMap<String, Value> = [c1, c2, c3]
        .into_iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(values_by_id(&records), expected);
    // Same key, same partition, in order.
    let ad001: Vec<&Value> = records
        .iter()
        .filter(|r| r["key"] == json!("ad001"))
        .collect();
    assert_eq!(ad001[0]["partition"], ad001[1]["partition"]);
    assert_eq!(ad001[0]["value"]["event_id"], json!("c1"));
    assert_eq!(ad001[1]["value"]["event_id"], json!("c3"));

    // --max stops after that many records even while following; the three
    // live events share stream s1, so they come in order.
    let records = server.consume(&dir, &["live_events", "--max", "2"]);
    let values: Vec<Value> = records.iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, live[..2].to_vec());

    // --value-only prints the bare values.
    let out = server.cli(
        &dir,
        &["consume", "live_events", "--no-follow", "--value-only"],
    );
    assert_eq!(out.assert_success().json_lines(), live);
}

#[tokio::test]
async fn http_bad_input_is_rejected_precisely_and_loses_nothing_else() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;

    let good_a = ad_click("a", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    let good_b = ad_click("b", "ad002", "u2", "2024-05-01T12:00:01.000Z");
    let mut wrong_type = ad_click("x2", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    wrong_type["ad_id"] = json!(12);
    let mut missing = ad_click("x3", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    missing.as_object_mut().unwrap().remove("user_id");
    let mut unknown_type = ad_click("x4", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    unknown_type["event_type"] = json!("ad_hover");
    let mut version2 = ad_click("x5", "ad001", "u1", "2024-05-01T12:00:00.000Z");
    version2["event_version"] = json!(2);
    let future_ms = now_ms() + 86_400_000;
    let mut future = ad_click("x6", "ad001", "u1", "");
    future["event_time"] = json!(future_ms);
    let huge = ad_click(
        "x7",
        "ad001",
        &"u".repeat(70_000),
        "2024-05-01T12:00:00.000Z",
    );
    let huge_line = huge.to_string();

    let body = [
        good_a.to_string(),
        r#"{"event_type":"ad_click","ad_id":"#.to_string(),
        wrong_type.to_string(),
        missing.to_string(),
        unknown_type.to_string(),
        version2.to_string(),
        future.to_string(),
        huge_line.clone(),
        good_b.to_string(),
    ]
    .join("\n");
    let (status, body) = server.post_events("application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], json!(2), "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    let indexes: Vec<u64> = rejected
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6, 7], "{body}");
    let errors: Vec<&str> = rejected
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert!(
        errors[0].starts_with("event 1: invalid json: "),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        r#"event 2: field "ad_id": expected string, got 12"#
    );
    assert_eq!(errors[2], r#"event 3: field "user_id" missing"#);
    assert_eq!(
        errors[3],
        r#"event 4: field "event_type": unknown event type "ad_hover""#
    );
    assert_eq!(
        errors[4],
        r#"event 5: field "event_version": unsupported version 2 for "ad_click" (supported: 1)"#
    );
    assert!(
        errors[5].starts_with(&format!(
            r#"event 6: field "event_time": {} is "#,
            rfc3339(future_ms)
        )) && errors[5].ends_with(" ms in the future (max skew 300000 ms)"),
        "{}",
        errors[5]
    );
    assert_eq!(
        errors[6],
        format!("event 7: event is {} bytes (max 65536)", huge_line.len())
    );
    // The valid events of the same request are kept, and only they.
    assert_eq!(server.record_count("ad_clicks").await, 2);
    let records = server.consume(&dir, &["ad_clicks", "--no-follow"]);
    assert_eq!(
        values_by_id(&records),
        BTreeMap::from([("a".to_string(), good_a), ("b".to_string(), good_b)])
    );

    // A JSON array with one bad element: the others are kept.
    let good_c = ad_click("c", "ad003", "u3", "2024-05-01T12:00:02.000Z");
    let good_d = ad_click("d", "ad004", "u4", "2024-05-01T12:00:03.000Z");
    let array = json!([good_c, wrong_type, good_d]).to_string();
    let (status, body) = server.post_events("application/json", array).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], json!(2), "{body}");
    assert_eq!(body["rejected"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["rejected"][0]["index"], json!(1), "{body}");
    assert!(
        body["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with(r#"event 1: field "ad_id": "#),
        "{body}"
    );
    assert_eq!(server.record_count("ad_clicks").await, 4);
    let ids = event_ids(&server.all_records("ad_clicks").await);
    assert_eq!(ids, ["a", "b", "c", "d"]);

    // A body that is not a JSON array at all → 400 with the standard shape.
    let (status, body) = server
        .post_events("application/json", r#"[{"event_type":"ad_click""#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = assert_api_error(&body, "invalid_argument");
    assert!(
        message.starts_with("body: expected a JSON array of events"),
        "{message}"
    );

    // Bodies over 8 MiB → 413 payload_too_large, nothing appended: one byte
    // over the limit (the ingestor's check) and two bytes over (the HTTP
    // layer's check, which stops reading there; sizes far beyond would make
    // the server close a connection the client is still writing to, and the
    // client may then see a reset instead of the response).
    let max = 8 * 1024 * 1024;
    let filler = ad_click("big", "ad009", "u9", "2024-05-01T12:00:00.000Z").to_string();
    for size in [max + 1, max + 2] {
        let mut big = String::with_capacity(size);
        while big.len() + filler.len() < size {
            big.push_str(&filler);
            big.push('\n');
        }
        while big.len() < size {
            big.push('\n');
        }
        assert_eq!(big.len(), size);
        let (status, body) = server.post_events("application/x-ndjson", big).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{size} bytes: {body}"
        );
        let message = assert_api_error(&body, "payload_too_large");
        assert!(message.contains("8388608"), "names the limit: {message}");
    }
    assert_eq!(server.record_count("ad_clicks").await, 4);

    // Unknown ?topic= → 404, nothing appended.
    let (status, body) = server
        .post_events_to(
            "/v1/events?topic=no.such.topic",
            "application/x-ndjson",
            good_a_line(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let message = assert_api_error(&body, "not_found");
    assert!(message.contains("\"no.such.topic\""), "{message}");
    assert_eq!(server.record_count("ad_clicks").await, 4);

    // An unknown query parameter → 400 in the same shape, naming it.
    let (status, body) = server
        .post_events_to(
            "/v1/events?topc=ad_clicks",
            "application/x-ndjson",
            good_a_line(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = assert_api_error(&body, "invalid_argument");
    assert!(message.contains("`topc`"), "{message}");
    assert_eq!(server.record_count("ad_clicks").await, 4);

    // Unknown endpoint → same error shape.
    let (status, body) = server.get_json("/v1/no-such-endpoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_api_error(&body, "not_found");
}

fn good_a_line() -> String {
    ad_click("z", "ad001", "u1", "2024-05-01T12:00:00.000Z").to_string()
}

#[tokio::test]
async fn auth_admin_token_and_topic_commands() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    let server = Server::start(&dir).await;

    let token_path = dir.data_dir().join("admin.token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token mode {mode:o}");
    let token = dir.admin_token();
    assert!(token.len() >= 32, "token {token:?}");

    let create = |token: Option<&str>| {
        let mut request = server
            .http
            .post(server.url("/v1/topics"))
            .json(&json!({"name": "t.http", "partitions": 3}));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        server.send(request)
    };
    let (status, body) = create(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_api_error(&body, "unauthenticated");
    let (status, body) = create(Some("wrong-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_api_error(&body, "permission_denied");
    let (status, body) = create(Some(&token)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], json!("t.http"));
    assert_eq!(body["partitions"], json!(3));
    let (status, body) = create(Some(&token)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_api_error(&body, "already_exists");
    // Deleting needs the token too.
    let (status, body) = server
        .send(server.http.delete(server.url("/v1/topics/t.http")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_api_error(&body, "unauthenticated");

    // The CLI reads the token from <data-dir>/admin.token by default.
    let out = server.cli(&dir, &["topics", "create", "t.cli", "--partitions", "2"]);
    out.assert_success();
    let created: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(created["name"], json!("t.cli"));
    assert_eq!(created["partitions"], json!(2));

    let out = server.cli(&dir, &["topics", "describe", "t.cli"]);
    out.assert_success();
    let described: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(described["name"], json!("t.cli"));
    assert_eq!(described["partition_count"], json!(2));
    for p in described["partitions"].as_array().unwrap() {
        assert_eq!(p["start_offset"], json!(0));
        assert_eq!(p["end_offset"], json!(0));
    }

    let out = server.cli(&dir, &["topics", "list"]);
    out.assert_success();
    let names: BTreeSet<&str> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for expected in [
        "t.cli",
        "t.http",
        "ad_clicks",
        "live_events",
        "tail.dead_letter",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing in:\n{}",
            out.stdout
        );
    }

    // A wrong token fails with a message and a non-zero exit; the topic stays.
    let out = server.cli(&dir, &["topics", "delete", "t.cli", "--token", "wrong"]);
    assert!(!out.status.success(), "delete with a wrong token succeeded");
    assert!(
        out.stderr
            .contains("authorization: token does not grant the admin permission"),
        "stderr: {}",
        out.stderr
    );
    assert!(out.stderr.contains("403"), "stderr: {}", out.stderr);
    server
        .cli(&dir, &["topics", "describe", "t.cli"])
        .assert_success();

    let out = server.cli(&dir, &["topics", "delete", "t.cli"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "deleted topic t.cli");
    let out = server.cli(&dir, &["topics", "describe", "t.cli"]);
    assert!(
        !out.status.success(),
        "describe of a deleted topic succeeded"
    );
    assert!(
        out.stderr.contains("t.cli") && out.stderr.contains("404"),
        "stderr: {}",
        out.stderr
    );
}

#[tokio::test]
async fn produce_then_consume_with_groups_and_start_positions() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let topic = "e2e.produced";
    server.create_topic(&dir.admin_token(), topic, 2).await;

    let ads = ["ad-a", "ad-b", "ad-c"];
    let events: Vec<Value> = (0..6)
        .map(|i| {
            ad_click(
                &format!("p{i}"),
                ads[i % 3],
                &format!("u{i}"),
                &rfc3339(T0 + i as i64 * 60_000),
            )
        })
        .collect();
    let out = server.cli_with_stdin(
        &dir,
        &["produce", "--topic", topic],
        Some(&(ndjson(&events) + "\n")),
    );
    out.assert_success();
    assert!(
        out.stderr
            .contains("produced 6 events to e2e.produced, 0 rejected"),
        "stderr: {}",
        out.stderr
    );
    assert_eq!(server.record_count(topic).await, 6);

    let by_id = |events: &[Value]| -> BTreeMap<String, Value> {
        events
            .iter()
            .map(|e| (e["event_id"].as_str().unwrap().to_string(), e.clone()))
            .collect()
    };
    let group_args = [topic, "--group", "g", "--no-follow"];
    let records = server.consume(&dir, &group_args);
    assert_eq!(values_by_id(&records), by_id(&events));
    // Offsets were committed: the same group sees nothing new.
    let again = server.consume(&dir, &group_args);
    assert!(again.is_empty(), "re-consumed: {again:?}");

    let (status, body) = server
        .get_json(&format!("/v1/groups/g/offsets?topic={topic}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ends = server.end_offsets(topic).await;
    let expected_offsets: serde_json::Map<String, Value> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(p, end)| (p.to_string(), json!(end)))
        .collect();
    assert_eq!(
        body,
        json!({"group": "g", "topic": topic, "offsets": expected_offsets})
    );

    // A rejected line is reported by its line number in the input (blank
    // lines count); the rest is produced.
    let extra = ad_click("p6", "ad-a", "u6", &rfc3339(T0 + 6 * 60_000));
    let mut bad = extra.clone();
    bad.as_object_mut().unwrap().remove("ad_id");
    let out = server.cli_with_stdin(
        &dir,
        &["produce", "--topic", topic],
        Some(&format!("{extra}\n\n{bad}\n")),
    );
    assert!(!out.status.success(), "produce with a bad line succeeded");
    assert!(
        out.stderr
            .contains(r#"line 3: event 1: field "ad_id" missing"#),
        "stderr: {}",
        out.stderr
    );
    assert!(out.stderr.contains("1 rejected"), "stderr: {}", out.stderr);

    // The group resumes where it left off: only the new event.
    let records = server.consume(&dir, &group_args);
    assert_eq!(event_ids(&records), ["p6"]);

    // --from earliest re-reads everything, even for the group.
    let records = server.consume(
        &dir,
        &[topic, "--group", "g", "--from", "earliest", "--no-follow"],
    );
    assert_eq!(
        event_ids(&records),
        ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    );

    // --from <time>: the first record at or after that time (record
    // timestamp = event time) in every partition.
    let records = server.consume(
        &dir,
        &[topic, "--from", "2024-05-01T12:02:30Z", "--no-follow"],
    );
    assert_eq!(event_ids(&records), ["p3", "p4", "p5", "p6"]);
    for r in &records {
        assert!(r["timestamp"].as_i64().unwrap() >= T0 + 150_000, "{r}");
    }
    // --from latest with --no-follow prints nothing.
    let records = server.consume(&dir, &[topic, "--from", "latest", "--no-follow"]);
    assert!(records.is_empty(), "{records:?}");
}

#[tokio::test]
async fn acknowledged_events_survive_sigterm_and_sigkill() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir).await;
    let token = dir.admin_token();

    // Graceful stop.
    let clicks: Vec<Value> = (0..30)
        .map(|i| {
            ad_click(
                &format!("t{i}"),
                &format!("ad{:03}", i % 7),
                "u1",
                &rfc3339(T0 + i),
            )
        })
        .collect();
    let viewers: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event_type": "viewer_joined", "event_id": format!("v{i}"),
                "event_time": rfc3339(T0 + i), "event_version": 1,
                "stream_id": format!("s{}", i % 5), "user_id": format!("u{i}")})
        })
        .collect();
    let mut all = clicks.clone();
    all.extend(viewers.iter().cloned());
    server.ingest_ok(&all).await;
    let status = server.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "SIGTERM exit: {status}\n{}", server.log());
    assert!(
        server.log().contains("shutdown complete"),
        "graceful shutdown not logged:\n{}",
        server.log()
    );

    let mut server = Server::start(&dir).await;
    assert_eq!(dir.admin_token(), token, "admin token kept across restarts");
    assert_eq!(server.record_count("ad_clicks").await, 30);
    assert_eq!(server.record_count("live_events").await, 20);
    let records = server.consume(&dir, &["ad_clicks", "--no-follow"]);
    let expected: BTreeMap<String, Value> = clicks
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(values_by_id(&records), expected);

    // SIGKILL while several writers are mid-stream: every event that got a
    // 200 must be there after restart.
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let acked_batches = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let acked = acked.clone();
        let acked_batches = acked_batches.clone();
        let http = server.http.clone();
        let url = server.url("/v1/events");
        writers.push(tokio::spawn(async move {
            for batch in 0u64.. {
                let events: Vec<Value> = (0..25)
                    .map(|i| {
                        ad_click(
                            &format!("k{w}-{batch}-{i}"),
                            &format!("ad{:03}", (batch + i) % 11),
                            "u2",
                            &rfc3339(T0 + i as i64),
                        )
                    })
                    .collect();
                let ids: Vec<String> = events
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_string())
                    .collect();
                let response = match http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(ndjson(&events))
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                if response.status() != StatusCode::OK {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                assert_eq!(body, json!({"accepted": 25, "rejected": []}));
                acked.lock().unwrap().extend(ids);
                acked_batches.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while acked_batches.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < until, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = server.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    for w in writers {
        w.await.expect("writer task");
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000);

    let server = Server::start(&dir).await;
    let records = server.all_records("ad_clicks").await;
    let present = values_by_id(&records); // also asserts no duplicates
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !present.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (id, value) in &expected {
        assert_eq!(present.get(id), Some(value), "pre-SIGTERM event {id}");
    }
    assert_eq!(
        server.record_count("ad_clicks").await,
        records.len() as u64,
        "end offsets match the readable records"
    );
    assert_eq!(server.record_count("live_events").await, 20);
}

#[tokio::test]
async fn tail_sends_seed_lines_and_dead_letters_without_duplicates() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;
    let log = dir.path().join("ads.log");
    let checkpoint = dir.path().join("tail.checkpoint");
    std::fs::write(
        &log,
        "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA\n\
         [AdClickEvent] ad002, 2022-03-04 00:00:02, user 2, 10.0.0.2, KOR\n\
         this is not an ad click\n\
         [AdClickEvent] ad001, 2022-03-04 00:00:03, user 3, 207.148.22.23, USA\n",
    )
    .unwrap();
    let log_arg = log.to_str().unwrap();
    let checkpoint_arg = checkpoint.to_str().unwrap();
    let tail = || {
        server
            .cli(
                &dir,
                &["tail", log_arg, "--once", "--checkpoint", checkpoint_arg],
            )
            .assert_success()
            .stderr
            .clone()
    };
    tail();
    assert!(checkpoint.exists(), "checkpoint written");

    let clicks = |records: &[Value]| -> Vec<(String, String, String, String, String)> {
        let mut out: Vec<_> = records
            .iter()
            .map(|r| {
                let v = &r["value"];
                assert_eq!(v["event_type"], json!("ad_click"));
                assert_eq!(r["key"], v["ad_id"]);
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                (
                    s("event_time"),
                    s("ad_id"),
                    s("user_id"),
                    s("ip"),
                    s("country"),
                )
            })
            .collect();
        out.sort();
        out
    };
    let row = |t: &str, ad: &str, user: &str, ip: &str, c: &str| {
        (
            t.to_string(),
            ad.to_string(),
            user.to_string(),
            ip.to_string(),
            c.to_string(),
        )
    };
    let records = server.all_records("ad_clicks").await;
    values_by_id(&records); // unique ids
    assert_eq!(
        clicks(&records),
        vec![
            row(
                "2022-03-04T00:00:01.000Z",
                "ad001",
                "1",
                "207.148.22.22",
                "USA"
            ),
            row("2022-03-04T00:00:02.000Z", "ad002", "2", "10.0.0.2", "KOR"),
            row(
                "2022-03-04T00:00:03.000Z",
                "ad001",
                "3",
                "207.148.22.23",
                "USA"
            ),
        ]
    );
    let dead = server.all_records("tail.dead_letter").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0]["value"];
    assert_eq!(letter["file"], json!(log_arg), "{letter}");
    assert_eq!(letter["line"], json!(3), "{letter}");
    assert_eq!(letter["raw"], json!("this is not an ad click"), "{letter}");
    assert_eq!(letter["byte_offset"], json!(70 + 65), "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("unrecognised line"),
        "{letter}"
    );

    // Append; the next run sends only the new lines.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(
            b"[AdClickEvent] ad003, 2022-03-04 00:00:04, user 4, 10.0.0.4, JPN\n\
              [AdClickEvent] ad003, not a time, user 5, 10.0.0.5, JPN\n",
        )
        .unwrap();
    }
    tail();
    let records = server.all_records("ad_clicks").await;
    values_by_id(&records);
    assert_eq!(clicks(&records).len(), 4, "{records:?}");
    assert!(clicks(&records).contains(&row(
        "2022-03-04T00:00:04.000Z",
        "ad003",
        "4",
        "10.0.0.4",
        "JPN"
    )));
    let dead = server.all_records("tail.dead_letter").await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let letter = &dead
        .iter()
        .find(|d| d["value"]["line"] == json!(6))
        .unwrap_or_else(|| panic!("no dead letter for line 6: {dead:?}"))["value"];
    assert_eq!(letter["file"], json!(log_arg));
    assert!(
        letter["reason"].as_str().unwrap().contains("not a time"),
        "{letter}"
    );

    // Nothing new: nothing sent.
    tail();
    assert_eq!(server.record_count("ad_clicks").await, 4);
    assert_eq!(server.record_count("tail.dead_letter").await, 2);
}

#[tokio::test]
async fn grpc_publish_stream_counts_across_batches() {
    use riffle_server::proto::{self, event, ingest_client::IngestClient};
    let dir = TestDir::new();
    let server = Server::start(&dir).await;

    let typed = |id: &str, ad: &str, user: &str, impression: bool| {
        let body = proto::AdEvent {
            ad_id: ad.into(),
            user_id: user.into(),
            ip: "10.1.2.3".into(),
            country: "KOR".into(),
        };
        proto::Event {
            event_id: id.into(),
            event_time: Some(event::EventTime::EpochMs(T0)),
            event_version: 0,
            body: Some(if impression {
                event::Body::AdImpression(body)
            } else {
                event::Body::AdClick(body)
            }),
        }
    };
    let as_json = |event: Value| proto::Event {
        body: Some(event::Body::Json(event.to_string())),
        ..Default::default()
    };
    let json_click = ad_click("g2", "gad2", "gu2", "2024-05-01T12:00:05.000Z");
    let mut missing_ad = ad_click("gx", "gad9", "gu9", "2024-05-01T12:00:05.000Z");
    missing_ad.as_object_mut().unwrap().remove("ad_id");
    let batches = vec![
        proto::PublishRequest {
            events: vec![
                typed("g1", "gad1", "gu1", false),
                as_json(json_click.clone()),
            ],
        },
        proto::PublishRequest {
            events: vec![
                typed("g3", "gad1", "gu3", false),
                as_json(missing_ad),
                typed("g4", "gad4", "gu4", true),
            ],
        },
    ];
    let mut client = IngestClient::connect(format!("http://127.0.0.1:{}", server.grpc_port))
        .await
        .expect("gRPC connect");
    let response = client
        .publish(futures::stream::iter(batches))
        .await
        .expect("Publish")
        .into_inner();
    assert_eq!(response.accepted, 4, "{response:?}");
    assert_eq!(
        response.rejected,
        vec![proto::Rejection {
            index: 3,
            error: r#"event 3: field "ad_id" missing"#.into(),
            reason: "missing_field".into(),
        }]
    );

    let expected_typed = |id: &str, ad: &str, user: &str, kind: &str| {
        json!({"event_type": kind, "event_id": id,
            "event_time": "2024-05-01T12:00:00.000Z", "event_version": 1,
            "ad_id": ad, "user_id": user, "ip": "10.1.2.3", "country": "KOR"})
    };
    let records = server.all_records("ad_clicks").await;
    for r in &records {
        assert_eq!(r["key"], r["value"]["ad_id"], "{r}");
    }
    assert_eq!(
        values_by_id(&records),
        BTreeMap::from([
            (
                "g1".to_string(),
                expected_typed("g1", "gad1", "gu1", "ad_click")
            ),
            ("g2".to_string(), json_click),
            (
                "g3".to_string(),
                expected_typed("g3", "gad1", "gu3", "ad_click")
            ),
        ])
    );
    let impressions = server.all_records("ad_impressions").await;
    assert_eq!(
        values_by_id(&impressions),
        BTreeMap::from([(
            "g4".to_string(),
            expected_typed("g4", "gad4", "gu4", "ad_impression")
        )])
    );
}

#[tokio::test]
async fn metrics_and_health() {
    let dir = TestDir::new();
    let server = Server::start(&dir).await;

    let response = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap().trim(), "ok");

    let mut events: Vec<Value> = (0..3)
        .map(|i| ad_click(&format!("m{i}"), &format!("ad{i}"), "u1", &rfc3339(T0)))
        .collect();
    events.push(json!({"event_type": "ad_impression", "event_id": "mi",
        "event_time": T0, "ad_id": "ad1", "user_id": "u1", "ip": "10.0.0.1", "country": "USA"}));
    let mut missing = ad_click("mx", "ad1", "u1", &rfc3339(T0));
    missing.as_object_mut().unwrap().remove("country");
    events.push(missing);
    let (status, body) = server
        .post_events("application/x-ndjson", ndjson(&events))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], json!(4));

    let response = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let samples = parse_metrics(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        value(
            "riffle_ingest_events_accepted_total",
            &[("event_type", "ad_click")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            "riffle_ingest_events_accepted_total",
            &[("event_type", "ad_impression")]
        ),
        Some(1.0),
        "{text}"
    );
    let rejected_missing: f64 = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "riffle_ingest_events_rejected_total"
                && l.get("reason").map(String::as_str) == Some("missing_field")
        })
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(rejected_missing, 1.0, "{text}");
    // End offsets per partition, summing to what was appended.
    let ends = server.end_offsets("ad_clicks").await;
    let mut from_metrics = BTreeMap::new();
    for (name, labels, v) in &samples {
        if name == "riffle_log_partition_end_offset" && labels["topic"] == "ad_clicks" {
            from_metrics.insert(labels["partition"].parse::<u64>().unwrap(), *v as u64);
        }
    }
    assert_eq!(from_metrics, ends, "{text}");
    assert_eq!(from_metrics.values().sum::<u64>(), 3);
}
