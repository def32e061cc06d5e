//! Golden bytes of the ad click operator's checkpointed state (format
//! version 2, `AdClickOperator::handle_checkpoint` / `restore`), in
//! `tests/fixtures/operator/v2.state`.
//!
//! The test feeds a fixed set of inputs through the operator's public API —
//! binary and JSON clicks in three minutes, a duplicate, a click without an
//! `event_id`, a too-late click, a malformed record and an event of another
//! type — requires the checkpointed state to equal the committed bytes, then
//! restores a fresh operator from the committed bytes and checks what it
//! holds: its progress and counters, and (by feeding one more click per
//! counted ad and minute) every count and top-N window sum. Checkpoints
//! survive upgrades, so a change to these bytes needs a new state version
//! and a reader for the old one, not new fixtures.
//!
//! The operator writes a window's sums ordered by interned ad id (the
//! order ads were first seen), so the same input encodes to the same bytes
//! in every process (the last test checks it with windows of many ads,
//! which two operators hash in different orders).
//!
//! To regenerate the fixture deliberately (a reviewed format change), run
//! with `RIFFLE_BLESS=1`:
//!
//! ```text
//! RIFFLE_BLESS=1 cargo test -p riffle-ads --test golden
//! ```
//!
//! A normal run never writes it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use riffle_ads::records::AggregateRecord;
use riffle_ads::{AdClickOperator, AdsSpec};
use riffle_ads::{AdFilterConfig, AdsConfig, PopularConfig};
use riffle_core::config::Section;
use riffle_core::event::{Event, EventBody};
use riffle_log::{RecordBatch, RecordSet};
use riffle_stream::{Collector, Operator, SinkRecord, SourceBatch};

/// 2024-05-01T12:00:00.000Z, a minute boundary.
const T0: i64 = 1_714_564_800_000;
const MINUTE: i64 = 60_000;
const TOP_N: u32 = 3;
/// Filter ids of the spec.
const USA: u32 = 1;
const NET_10: u32 = 2;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/operator/v2.state")
}

fn blessing() -> bool {
    std::env::var("RIFFLE_BLESS").is_ok_and(|v| v == "1")
}

fn spec() -> Arc<AdsSpec> {
    let mut config = AdsConfig::defaults();
    config.out_of_orderness_ms = 10_000;
    config.allowed_lateness_ms = 60_000;
    config.dedup_horizon_ms = 120_000;
    config.top_n = TOP_N;
    let filter = |id, name: &str, country: &[&str], ip: &[&str]| AdFilterConfig {
        id,
        name: name.into(),
        country: country.iter().map(|c| c.to_string()).collect(),
        ip: ip.iter().map(|c| c.to_string()).collect(),
        user_id: Vec::new(),
    };
    config.filters = vec![
        filter(USA, "usa", &["USA"], &[]),
        filter(NET_10, "net_10", &[], &["10.0.0.0/8"]),
    ];
    config.popular = [(2, USA), (1, NET_10)]
        .into_iter()
        .map(|(window_minutes, filter_id)| PopularConfig {
            window_minutes,
            filter_id,
        })
        .collect();
    Arc::new(AdsSpec::from_config(&config).expect("valid spec"))
}

/// One input record of a test batch.
enum Input {
    Click {
        event_id: Option<&'static str>,
        time: i64,
        ad: &'static str,
        user: &'static str,
        ip: &'static str,
        country: &'static str,
    },
    /// A record value as is (JSON, garbage, another event type).
    Raw { time: i64, value: Vec<u8> },
}

fn click(
    event_id: Option<&'static str>,
    time: i64,
    ad: &'static str,
    user: &'static str,
    ip: &'static str,
    country: &'static str,
) -> Input {
    Input::Click {
        event_id,
        time,
        ad,
        user,
        ip,
        country,
    }
}

/// Encodes `inputs` as ingest does (binary events keyed by `ad_id`) and
/// hands them to `op` as one batch of partition 0.
fn feed(op: &mut AdClickOperator, inputs: &[Input], out: &mut Collector<SinkRecord>) {
    let mut batch = RecordBatch::new();
    for input in inputs {
        match input {
            Input::Click {
                event_id,
                time,
                ad,
                user,
                ip,
                country,
            } => {
                let event = Event {
                    event_id: event_id.map(Cow::Borrowed),
                    event_time: *time,
                    event_version: 1,
                    body: EventBody::AdClick {
                        ad_id: Cow::Borrowed(ad),
                        user_id: Cow::Borrowed(user),
                        ip: Cow::Borrowed(ip),
                        country: Cow::Borrowed(country),
                    },
                };
                batch.push_encoded(Some(ad.as_bytes()), *time, |out| event.encode(out));
            }
            Input::Raw { time, value } => batch.push(None, value, *time),
        }
    }
    let records = RecordSet::from_batch(&batch, 0);
    let source = SourceBatch::new("ad_clicks", 0, &records, 0, u64::MAX);
    op.process_batch(source, out).unwrap();
}

/// The inputs behind the fixture. Watermark = max event time − 10 s.
fn golden_inputs() -> Vec<Input> {
    let mut heartbeat = Vec::new();
    Event {
        event_id: None,
        event_time: T0,
        event_version: 1,
        body: EventBody::StreamHeartbeat {
            stream_id: Cow::Borrowed("s-1"),
        },
    }
    .encode(&mut heartbeat);
    vec![
        // Minute T0.
        click(Some("e-1"), T0 + 1_000, "ad-1", "u-1", "73.162.0.9", "USA"),
        click(Some("e-2"), T0 + 2_000, "ad-2", "u-2", "10.1.2.3", "DEU"),
        // Minute T0 + 1 min.
        click(Some("e-3"), T0 + 61_000, "ad-1", "u-3", "73.1.2.3", "USA"),
        // A duplicate of e-1.
        click(Some("e-1"), T0 + 1_000, "ad-1", "u-1", "73.162.0.9", "USA"),
        click(Some("e-4"), T0 + 62_000, "ad-3", "u-4", "192.0.2.1", "FRA"),
        // A duplicate of e-4, so that no two counters are equal.
        click(Some("e-4"), T0 + 62_000, "ad-3", "u-4", "192.0.2.1", "FRA"),
        // No event_id: counted, not deduplicated.
        click(None, T0 + 65_000, "ad-2", "u-5", "10.9.9.9", "DEU"),
        // Minute T0 + 2 min, as JSON (a plain Kafka producer's record).
        Input::Raw {
            time: T0 + 120_500,
            value: format!(
                r#"{{"event_type":"ad_click","event_id":"e-6","event_time":{},"ad_id":"ad-3","user_id":"u-6","ip":"192.0.2.2","country":"FRA"}}"#,
                T0 + 120_500
            )
            .into_bytes(),
        },
        // Watermark T0 + 110.5 s: minute T0 − 2 min is too late.
        click(Some("e-7"), T0 - 120_000, "ad-2", "u-7", "10.1.1.1", "DEU"),
        // Rejected: not an event (twice), and not an ad click.
        Input::Raw {
            time: T0 + 3_000,
            value: b"\x01\xff".to_vec(),
        },
        Input::Raw {
            time: T0 + 3_500,
            value: b"{not json".to_vec(),
        },
        Input::Raw {
            time: T0 + 4_000,
            value: heartbeat,
        },
    ]
}

/// Counted (minute, ad, filter) cells of the fixture, one click each.
fn golden_counts() -> BTreeMap<(i64, String, u32), u64> {
    [
        (T0, "ad-1", 0),
        (T0, "ad-1", USA),
        (T0, "ad-2", 0),
        (T0, "ad-2", NET_10),
        (T0 + MINUTE, "ad-1", 0),
        (T0 + MINUTE, "ad-1", USA),
        (T0 + MINUTE, "ad-3", 0),
        (T0 + MINUTE, "ad-2", 0),
        (T0 + MINUTE, "ad-2", NET_10),
        (T0 + 2 * MINUTE, "ad-3", 0),
    ]
    .into_iter()
    .map(|(minute, ad, filter)| ((minute, ad.to_string(), filter), 1))
    .collect()
}

/// (window_end, window_minutes, filter_id) → (ad_ids, sums) of the
/// fixture's top-N windows.
type Tops = BTreeMap<(i64, u32, u32), (Vec<String>, Vec<u64>)>;

fn golden_tops() -> Tops {
    let top = |ad: &str, sum| (vec![ad.to_string()], vec![sum]);
    BTreeMap::from([
        // 2-minute windows of the usa filter: ad-1's clicks at T0 and T0 + 1 min.
        ((T0 + MINUTE, 2, USA), top("ad-1", 1)),
        ((T0 + 2 * MINUTE, 2, USA), top("ad-1", 2)),
        ((T0 + 3 * MINUTE, 2, USA), top("ad-1", 1)),
        // 1-minute windows of net_10: ad-2's clicks.
        ((T0 + MINUTE, 1, NET_10), top("ad-2", 1)),
        ((T0 + 2 * MINUTE, 1, NET_10), top("ad-2", 1)),
    ])
}

/// Splits the aggregates records of `out` into counts, tops and the last
/// progress watermark (late-topic records are dropped).
fn aggregates(out: &mut Collector<SinkRecord>) -> (BTreeMap<(i64, String, u32), u64>, Tops) {
    let mut counts = BTreeMap::new();
    let mut tops = BTreeMap::new();
    for record in out.drain() {
        if record.sink != riffle_ads::operator::AGGREGATES_SINK {
            continue;
        }
        match AggregateRecord::decode(&record.value).unwrap() {
            AggregateRecord::Count {
                minute,
                ad_id,
                filter_id,
                count,
            } => {
                counts.insert((minute, ad_id, filter_id), count);
            }
            AggregateRecord::Top {
                window_end,
                window_minutes,
                filter_id,
                partition,
                limit,
                ad_ids,
                counts: sums,
            } => {
                assert_eq!((partition, limit), (0, TOP_N));
                tops.insert((window_end, window_minutes, filter_id), (ad_ids, sums));
            }
            AggregateRecord::Progress { .. } => {}
        }
    }
    (counts, tops)
}

#[test]
fn operator_state_matches_the_fixture() {
    let mut op = AdClickOperator::new(spec(), 0).unwrap();
    let mut out = Collector::new();
    feed(&mut op, &golden_inputs(), &mut out);
    let state = op.handle_checkpoint(1, &mut out).unwrap();
    // What the run emitted is what the state holds.
    let (counts, tops) = aggregates(&mut out);
    assert_eq!(counts, golden_counts());
    assert_eq!(tops, golden_tops());

    let path = fixture();
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &state).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it deliberately with RIFFLE_BLESS=1)",
            path.display()
        )
    });
    if bytes != state {
        let at = bytes
            .iter()
            .zip(&state)
            .position(|(e, a)| e != a)
            .unwrap_or(bytes.len().min(state.len()));
        panic!(
            "{}: today's operator checkpoints different bytes (first difference at byte {at}; \
             fixture {} bytes, written {}). Checkpoints must keep restoring: a format change \
             needs a new state version and a reader for the old one. Re-bless \
             (RIFFLE_BLESS=1) only for a reviewed, intended change.",
            path.display(),
            bytes.len(),
            state.len(),
        );
    }
}

#[test]
fn fixture_state_restores_field_by_field() {
    if blessing() {
        // The fixture may be being rewritten by the test above.
        return;
    }
    let bytes = std::fs::read(fixture()).unwrap();
    let mut op = AdClickOperator::new(spec(), 0).unwrap();
    op.restore(&bytes).expect("the fixture restores");

    // Header: max event time and the counters.
    let progress = op.progress();
    assert_eq!(progress.max_event_time, Some(T0 + 120_500));
    assert_eq!(progress.watermark, Some(T0 + 110_500));
    // late (e-7), duplicates (e-1, e-4), rejected (two garbage records,
    // the heartbeat).
    assert_eq!(progress.counters[..3], [1, 2, 3]);

    // A restored operator checkpoints the same bytes again.
    let mut out = Collector::new();
    assert_eq!(op.handle_checkpoint(2, &mut out).unwrap(), bytes);
    // Restored cells carry no pending changes: only the progress record.
    let (counts, tops) = aggregates(&mut out);
    assert!(counts.is_empty() && tops.is_empty(), "{counts:?} {tops:?}");

    // One more click per counted (minute, ad) reads every restored count
    // and window sum back as absolute values (restored + 1); a repeat of a
    // held event_id shows the dedup snapshot came back.
    feed(
        &mut op,
        &[
            click(Some("p-1"), T0 + 1_500, "ad-1", "u-1", "73.162.0.9", "USA"),
            click(Some("p-2"), T0 + 2_500, "ad-2", "u-2", "10.1.2.3", "DEU"),
            click(Some("p-3"), T0 + 61_500, "ad-1", "u-3", "73.1.2.3", "USA"),
            click(Some("p-4"), T0 + 62_500, "ad-3", "u-4", "192.0.2.1", "FRA"),
            click(Some("p-5"), T0 + 65_500, "ad-2", "u-5", "10.9.9.9", "DEU"),
            click(Some("p-6"), T0 + 120_400, "ad-3", "u-6", "192.0.2.2", "FRA"),
            click(Some("e-2"), T0 + 2_000, "ad-2", "u-2", "10.1.2.3", "DEU"),
        ],
        &mut out,
    );
    op.handle_tick(0, &mut out).unwrap();
    let (counts, tops) = aggregates(&mut out);
    let doubled = |counts: BTreeMap<_, u64>| -> BTreeMap<_, u64> {
        counts.into_iter().map(|(k, v)| (k, v * 2)).collect()
    };
    assert_eq!(counts, doubled(golden_counts()));
    let doubled_tops: Tops = golden_tops()
        .into_iter()
        .map(|(k, (ads, sums))| (k, (ads, sums.into_iter().map(|s| s * 2).collect())))
        .collect();
    assert_eq!(tops, doubled_tops);
    assert_eq!(op.progress().counters[..3], [1, 3, 3], "e-2 is a duplicate");
}

#[test]
fn the_same_state_encodes_to_the_same_bytes_whatever_the_hash_order() {
    // Many ads per window and minute: each operator's hash maps have their
    // own random seed, so only an ordered encoding gives equal bytes.
    let ads = [
        "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "a11", "a12",
    ];
    let inputs: Vec<Input> = ads
        .iter()
        .enumerate()
        .flat_map(|(i, ad)| {
            (0..=i as i64).map(move |k| click(None, T0 + k * 1_000, ad, "u", "10.1.2.3", "USA"))
        })
        .collect();
    let state = |inputs: &[Input]| {
        let mut op = AdClickOperator::new(spec(), 0).unwrap();
        let mut out = Collector::new();
        feed(&mut op, inputs, &mut out);
        op.handle_checkpoint(1, &mut out).unwrap()
    };
    let first = state(&inputs);
    for _ in 0..5 {
        assert_eq!(state(&inputs), first);
    }
}
