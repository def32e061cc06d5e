//! The ingest core against a real embedded log: routing, ids, limits and
//! backpressure.

use std::sync::Arc;

use riffle_core::config::{IngestConfig, Section};
use riffle_core::event::Event;
use riffle_core::time::ManualClock;
use riffle_core::HasCode;
use riffle_ingest::{BodyFormat, IngestError, Ingestor};
use riffle_log::{partition_for_key, Admin, EmbeddedLog, EventBus, LogOptions};

const NOW: i64 = 1_800_000_000_000;

fn setup(tweak: impl FnOnce(&mut IngestConfig)) -> (tempfile::TempDir, EmbeddedLog, Ingestor) {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), LogOptions::default()).unwrap();
    let mut config = IngestConfig::defaults();
    tweak(&mut config);
    let bus: Arc<dyn EventBus> = Arc::new(log.clone());
    let ingestor = Ingestor::new(bus, config, Arc::new(ManualClock::new(NOW)));
    (dir, log, ingestor)
}

fn click(ad: &str, id: Option<&str>) -> String {
    let id = id
        .map(|i| format!("\"event_id\":\"{i}\","))
        .unwrap_or_default();
    format!("{{\"event_type\":\"ad_click\",{id}\"event_time\":{},\"ad_id\":\"{ad}\",\"user_id\":\"u\",\"ip\":\"10.0.0.1\",\"country\":\"USA\"}}", NOW - 1000)
}

async fn events_of(log: &EmbeddedLog, topic: &str) -> Vec<(u32, Event<'static>, Vec<u8>)> {
    let mut out = Vec::new();
    let partitions = log.describe_topic(topic).await.unwrap().partitions;
    for p in partitions {
        let fetched = log.fetch(topic, p.partition, 0, 1 << 20).await.unwrap();
        for r in fetched.records.iter() {
            out.push((
                p.partition,
                Event::decode(r.value).unwrap().into_owned(),
                r.key.unwrap().to_vec(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn routes_by_type_and_partitions_by_entity_key() {
    let (_dir, log, ingestor) = setup(|_| {});
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let body = format!(
        "{}\n{}\n{{\"event_type\":\"gift_sent\",\"event_time\":{},\"stream_id\":\"s7\",\"user_id\":\"u1\",\"amount\":5}}\n",
        click("ad-1", Some("id-1")),
        click("ad-2", None),
        NOW
    );
    let outcome = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::Ndjson, None)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, 3);
    assert!(outcome.rejected.is_empty());
    let clicks = events_of(&log, "ad_clicks").await;
    assert_eq!(clicks.len(), 2);
    for (partition, event, key) in &clicks {
        let ad = event.field_str("ad_id").unwrap();
        assert_eq!(key, ad.as_bytes());
        assert_eq!(*partition, partition_for_key(ad.as_bytes(), 4));
    }
    let with_id = clicks
        .iter()
        .find(|(_, e, _)| e.field_str("ad_id") == Some("ad-1"))
        .unwrap();
    assert_eq!(with_id.1.event_id.as_deref(), Some("id-1"));
    let assigned = clicks
        .iter()
        .find(|(_, e, _)| e.field_str("ad_id") == Some("ad-2"))
        .unwrap();
    assert!(
        assigned
            .1
            .event_id
            .as_deref()
            .is_some_and(|id| !id.is_empty()),
        "server assigns an id"
    );
    let live = events_of(&log, "live_events").await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].2, b"s7");
}

#[tokio::test]
async fn invalid_events_are_reported_by_index_and_valid_ones_kept() {
    let (_dir, log, ingestor) = setup(|_| {});
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let body = format!(
        "[{}, {{\"event_type\":\"ad_click\",\"event_time\":1,\"ad_id\":12}}, {}]",
        click("a", None),
        click("b", None)
    );
    let outcome = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::JsonArray, None)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, 2);
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].index, 1);
    assert_eq!(
        outcome.rejected[0].error,
        "event 1: field \"ad_id\": expected string, got 12"
    );
    assert_eq!(events_of(&log, "ad_clicks").await.len(), 2);
}

#[tokio::test]
async fn a_body_that_is_not_an_array_is_refused_whole() {
    let (_dir, log, ingestor) = setup(|_| {});
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let err = ingestor
        .ingest_body(b"[{\"event_type\": ", BodyFormat::JsonArray, None)
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::InvalidBody(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("body: expected a JSON array of events"),
        "{err}"
    );
}

#[tokio::test]
async fn limits_on_body_and_event_count() {
    let (_dir, log, ingestor) = setup(|c| {
        c.max_body_bytes = 10_000;
        c.max_events_per_request = 3;
    });
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let big = vec![b' '; 10_001];
    let err = ingestor
        .ingest_body(&big, BodyFormat::Ndjson, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "body: 10001 bytes exceeds the limit of 10000 bytes"
    );
    assert_eq!(err.code().http_status(), 413);
    let body: String = (0..4)
        .map(|i| click(&format!("ad{i}"), None) + "\n")
        .collect();
    let err = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::Ndjson, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "events: 4 events exceed the limit of 3 per request"
    );
    assert!(
        events_of(&log, "ad_clicks").await.is_empty(),
        "a refused request appends nothing"
    );
}

#[tokio::test]
async fn backpressure_refuses_instead_of_queueing() {
    let (_dir, log, ingestor) = setup(|c| {
        c.max_inflight_bytes = 4096;
        c.retry_after_secs = 2;
    });
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    // Another request holds most of the in-flight budget.
    let held = ingestor.admit(4000).unwrap();
    let body = click("ad", None);
    let err = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::Ndjson, None)
        .await
        .unwrap_err();
    match &err {
        IngestError::Backpressure { retry_after } => assert_eq!(retry_after.as_secs(), 2),
        other => panic!("expected backpressure, got {other}"),
    }
    assert_eq!(err.code().http_status(), 429);
    drop(held);
    let outcome = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::Ndjson, None)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, 1);
}

#[tokio::test]
async fn topic_override_writes_to_an_existing_topic_only() {
    let (_dir, log, ingestor) = setup(|_| {});
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let err = ingestor
        .ingest_body(
            click("a", None).as_bytes(),
            BodyFormat::Ndjson,
            Some("nope"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "topic: topic \"nope\" not found");
    assert_eq!(err.code().http_status(), 404);
    log.create_topic("custom", log.options().default_topic.clone())
        .await
        .unwrap();
    ingestor
        .ingest_body(
            click("a", None).as_bytes(),
            BodyFormat::Ndjson,
            Some("custom"),
        )
        .await
        .unwrap();
    assert_eq!(events_of(&log, "custom").await.len(), 1);
    assert!(events_of(&log, "ad_clicks").await.is_empty());
}

#[test]
fn body_format_detection() {
    assert_eq!(
        BodyFormat::detect(Some("application/x-ndjson"), b"[1]"),
        BodyFormat::Ndjson
    );
    assert_eq!(
        BodyFormat::detect(Some("application/json"), b"  [{}]"),
        BodyFormat::JsonArray
    );
    assert_eq!(
        BodyFormat::detect(Some("application/json; charset=utf-8"), b"{}\n{}"),
        BodyFormat::Ndjson
    );
    assert_eq!(BodyFormat::detect(None, b"\n[ ]"), BodyFormat::JsonArray);
}

#[tokio::test]
async fn rejections_are_counted_by_event_type_and_reason() {
    let (_dir, log, ingestor) = setup(|_| {});
    ingestor
        .ensure_topics(&log.options().default_topic)
        .await
        .unwrap();
    let metric = || {
        riffle_ingest::metrics::EVENTS_REJECTED
            .with_label_values(&["ad_impression", "missing_field"])
            .get()
    };
    let before = metric();
    let body =
        format!("{{\"event_type\" : \"ad_impression\",\"event_time\":{NOW},\"ad_id\":\"a\"}}\n");
    let outcome = ingestor
        .ingest_body(body.as_bytes(), BodyFormat::Ndjson, None)
        .await
        .unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(metric(), before + 1);
}
