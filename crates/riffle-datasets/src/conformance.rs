//! The conformance suite every [`MetadataStore`] backend must pass.
//!
//! Each check is an async function taking a fresh, empty store. A backend's
//! test file instantiates them all with an async factory returning the
//! store and a guard that keeps its resources (a temporary directory, a
//! database) alive for the test:
//!
//! ```ignore
//! riffle_datasets::metadata_store_suite!(|| async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteMetadataStore::open(&dir.path().join("m.db")).await.unwrap();
//!     (Arc::new(store) as Arc<dyn MetadataStore>, Box::new(dir) as Box<dyn std::any::Any + Send>)
//! });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use riffle_core::{check, check_eq, ErrorCode, HasCode};

use crate::error::DatasetError;
use crate::model::{
    DataLocation, NewAudit, NewTopic, NewVersion, RolloutEffect, RolloutStage, RolloutState, Scope,
};
use crate::store::MetadataStore;

/// `Err` carries a description of the first violated expectation.
pub type CheckResult = Result<(), String>;

fn err(error: DatasetError) -> String {
    format!("unexpected error: {error} ({:?})", error.code())
}

fn expect_code<T: std::fmt::Debug>(
    result: Result<T, DatasetError>,
    code: ErrorCode,
    what: &str,
) -> CheckResult {
    match result {
        Ok(value) => Err(format!("{what}: expected {code:?}, got Ok({value:?})")),
        Err(e) if e.code() == code => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {code:?}, got {:?}: {e}",
            e.code()
        )),
    }
}

fn audit(at: i64, action: &str) -> NewAudit {
    NewAudit::new(at, "tester", action, None)
}

fn topic(name: &str) -> NewTopic {
    NewTopic {
        name: name.into(),
        owner: "team-ml".into(),
        description: "a test topic".into(),
        retention_count: Some(10),
        retention_age_ms: Some(86_400_000),
        wrapped_key: None,
    }
}

fn scope(s: &str) -> Scope {
    s.parse().expect("test scope parses")
}

fn inline(at: i64, payload: &[u8], scopes: &[&str]) -> NewVersion {
    NewVersion {
        created_at_ms: at,
        created_by: "publisher".into(),
        metadata: BTreeMap::from([("format".to_string(), "json".to_string())]),
        checksum: format!("sha256:{:064x}", payload.len()),
        size: payload.len() as u64,
        location: DataLocation::Inline,
        inline_data: Some(payload.to_vec()),
        scopes: scopes.iter().map(|s| scope(s)).collect(),
    }
}

fn blob(at: i64, key: &str, scopes: &[&str]) -> NewVersion {
    NewVersion {
        created_at_ms: at,
        created_by: "publisher".into(),
        metadata: BTreeMap::new(),
        checksum: format!("sha256:{key}"),
        size: 5 << 20,
        location: DataLocation::Blob(key.into()),
        inline_data: None,
        scopes: scopes.iter().map(|s| scope(s)).collect(),
    }
}

async fn generation(store: &dyn MetadataStore, name: &str) -> Result<u64, String> {
    Ok(store
        .get_topic(name)
        .await
        .map_err(err)?
        .ok_or_else(|| format!("topic {name} vanished"))?
        .generation)
}

pub async fn topic_lifecycle(store: Arc<dyn MetadataStore>) -> CheckResult {
    check_eq!(
        store.list_topics().await.map_err(err)?,
        vec![],
        "empty store"
    );
    let created = store
        .create_topic(&topic("b.models"), audit(1000, "create_topic"))
        .await
        .map_err(err)?;
    check_eq!(created.name.as_str(), "b.models", "name");
    check_eq!(created.owner.as_str(), "team-ml", "owner");
    check_eq!(created.retention_count, Some(10), "retention_count");
    check_eq!(
        created.retention_age_ms,
        Some(86_400_000),
        "retention_age_ms"
    );
    check_eq!(created.created_at_ms, 1000, "created_at_ms");
    check_eq!(created.created_by.as_str(), "tester", "created_by");
    check_eq!(created.last_published_at_ms, None, "never published");
    store
        .create_topic(&topic("a.configs"), audit(1001, "create_topic"))
        .await
        .map_err(err)?;
    expect_code(
        store
            .create_topic(&topic("a.configs"), audit(1002, "create_topic"))
            .await,
        ErrorCode::AlreadyExists,
        "duplicate topic",
    )?;
    let names: Vec<String> = store
        .list_topics()
        .await
        .map_err(err)?
        .into_iter()
        .map(|t| t.name)
        .collect();
    check_eq!(names, vec!["a.configs", "b.models"], "list sorted by name");
    check_eq!(
        store.get_topic("b.models").await.map_err(err)?,
        Some(created),
        "get"
    );
    check!(
        store.get_topic("nope").await.map_err(err)?.is_none(),
        "unknown topic is None"
    );
    store
        .delete_topic("a.configs", audit(1003, "delete_topic"))
        .await
        .map_err(err)?;
    check!(
        store.get_topic("a.configs").await.map_err(err)?.is_none(),
        "deleted topic is gone"
    );
    expect_code(
        store
            .delete_topic("a.configs", audit(1004, "delete_topic"))
            .await,
        ErrorCode::NotFound,
        "deleting a missing topic",
    )?;
    let gens = store.generations().await.map_err(err)?;
    check_eq!(gens.len(), 1, "generations lists live topics");
    Ok(())
}

pub async fn versions_round_trip(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    let v1 = store
        .publish("t", inline(10, b"hello", &["*"]))
        .await
        .map_err(err)?;
    check_eq!(v1.version, 1, "first version");
    check_eq!(v1.location.clone(), DataLocation::Inline, "inline location");
    check_eq!(v1.scopes.clone(), vec![Scope::global()], "scopes");
    check_eq!(v1.size, 5, "size");
    check_eq!(
        v1.metadata.get("format").map(String::as_str),
        Some("json"),
        "metadata"
    );
    let v2 = store
        .publish(
            "t",
            blob(20, "sha256/ab/abcd", &["region=us-east", "cluster=canary"]),
        )
        .await
        .map_err(err)?;
    check_eq!(v2.version, 2, "second version");
    check_eq!(
        v2.location.clone(),
        DataLocation::Blob("sha256/ab/abcd".into()),
        "blob location"
    );
    check_eq!(
        store.inline_data("t", 1).await.map_err(err)?,
        Some(b"hello".to_vec()),
        "inline bytes"
    );
    check_eq!(
        store.inline_data("t", 2).await.map_err(err)?,
        None,
        "blob version has no inline bytes"
    );
    check_eq!(
        store.get_version("t", 2).await.map_err(err)?,
        Some(v2.clone()),
        "get_version"
    );
    check!(
        store.get_version("t", 3).await.map_err(err)?.is_none(),
        "missing version is None"
    );
    let listed: Vec<u64> = store
        .list_versions("t")
        .await
        .map_err(err)?
        .iter()
        .map(|v| v.version)
        .collect();
    check_eq!(listed, vec![2, 1], "list newest first");
    let topic = store.get_topic("t").await.map_err(err)?.unwrap();
    check_eq!(topic.last_published_at_ms, Some(20), "last_published_at_ms");
    check_eq!(
        store
            .find_by_checksum("t", &v2.checksum)
            .await
            .map_err(err)?
            .map(|v| v.version),
        Some(2),
        "find_by_checksum"
    );
    check!(
        store
            .find_by_checksum("t", "sha256:none")
            .await
            .map_err(err)?
            .is_none(),
        "unknown checksum"
    );
    expect_code(
        store.publish("missing", inline(30, b"x", &["*"])).await,
        ErrorCode::NotFound,
        "publish to a missing topic",
    )?;
    Ok(())
}

pub async fn version_numbers_are_gap_free_under_concurrent_publishers(
    store: Arc<dyn MetadataStore>,
) -> CheckResult {
    store
        .create_topic(&topic("busy"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    store
        .create_topic(&topic("other"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    const PUBLISHERS: usize = 8;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                // Interleave a second topic: numbering is per topic.
                let name = if i % 5 == 4 { "other" } else { "busy" };
                let v = store
                    .publish(name, inline((p * 100 + i) as i64, b"x", &["*"]))
                    .await?;
                got.push((name, v.version));
            }
            Ok::<_, DatasetError>(got)
        }));
    }
    let mut busy = BTreeSet::new();
    let mut other = BTreeSet::new();
    for task in tasks {
        let got = task
            .await
            .map_err(|e| format!("publisher panicked: {e}"))?
            .map_err(err)?;
        for (name, v) in got {
            let set = if name == "busy" {
                &mut busy
            } else {
                &mut other
            };
            check!(set.insert(v), "version {v} of {name} assigned twice");
        }
    }
    let busy_expected: BTreeSet<u64> = (1..=(PUBLISHERS * EACH * 4 / 5) as u64).collect();
    let other_expected: BTreeSet<u64> = (1..=(PUBLISHERS * EACH / 5) as u64).collect();
    check_eq!(busy, busy_expected.clone(), "busy versions are 1..=n");
    check_eq!(other, other_expected, "other versions are 1..=n");
    let stored = store.list_versions("busy").await.map_err(err)?.len();
    check_eq!(stored, busy_expected.len(), "stored versions");
    Ok(())
}

pub async fn scopes_can_be_added_later(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    store
        .publish("t", inline(10, b"a", &["cluster=canary"]))
        .await
        .map_err(err)?;
    let before = generation(store.as_ref(), "t").await?;
    let v = store
        .add_scopes(
            "t",
            1,
            &[scope("region=eu"), scope("cluster=canary")],
            NewAudit::new(20, "ops", "add_scopes", Some(1)),
        )
        .await
        .map_err(err)?;
    check_eq!(
        v.scopes.clone(),
        vec![scope("cluster=canary"), scope("region=eu")],
        "scopes after add (no duplicates, order kept)"
    );
    check_eq!(
        store
            .get_version("t", 1)
            .await
            .map_err(err)?
            .unwrap()
            .scopes,
        v.scopes,
        "stored scopes"
    );
    check!(
        generation(store.as_ref(), "t").await? > before,
        "add_scopes bumps the generation"
    );
    expect_code(
        store
            .add_scopes("t", 9, &[scope("a=b")], audit(30, "add_scopes"))
            .await,
        ErrorCode::NotFound,
        "add_scopes on a missing version",
    )?;
    Ok(())
}

pub async fn pins_per_scope(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    for at in [10, 20, 30] {
        store
            .publish("t", inline(at, b"v", &["*"]))
            .await
            .map_err(err)?;
    }
    let before = generation(store.as_ref(), "t").await?;
    let pin = store
        .pin("t", None, 1, NewAudit::new(40, "alice", "pin", Some(1)))
        .await
        .map_err(err)?;
    check_eq!(pin.version, 1, "pin version");
    check!(
        generation(store.as_ref(), "t").await? > before,
        "pin bumps the generation"
    );
    store
        .pin(
            "t",
            Some(&scope("region=eu")),
            2,
            NewAudit::new(41, "bob", "pin", Some(2)),
        )
        .await
        .map_err(err)?;
    // Re-pinning a scope replaces its pin.
    store
        .pin(
            "t",
            Some(&scope("region=eu")),
            3,
            NewAudit::new(42, "bob", "pin", Some(3)),
        )
        .await
        .map_err(err)?;
    let pins = store.list_pins("t").await.map_err(err)?;
    check_eq!(pins.len(), 2, "one pin per scope");
    let eu = pins
        .iter()
        .find(|p| p.scope == Some(scope("region=eu")))
        .ok_or("eu pin missing")?;
    check_eq!(
        (eu.version, eu.pinned_at_ms, eu.pinned_by.as_str()),
        (3, 42, "bob"),
        "replaced pin"
    );
    expect_code(
        store.pin("t", None, 99, audit(50, "pin")).await,
        ErrorCode::NotFound,
        "pin to a missing version",
    )?;
    store
        .unpin(
            "t",
            Some(&scope("region=eu")),
            NewAudit::new(60, "bob", "unpin", None),
        )
        .await
        .map_err(err)?;
    expect_code(
        store
            .unpin("t", Some(&scope("region=eu")), audit(61, "unpin"))
            .await,
        ErrorCode::NotFound,
        "unpinning twice",
    )?;
    let pins = store.list_pins("t").await.map_err(err)?;
    check_eq!(pins.len(), 1, "global pin left");
    check_eq!(pins[0].scope.clone(), None, "global pin scope");
    Ok(())
}

pub async fn audit_records_who_when_what(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), NewAudit::new(1, "admin", "create_topic", None))
        .await
        .map_err(err)?;
    store
        .publish("t", inline(10, b"v", &["*"]))
        .await
        .map_err(err)?;
    store
        .pin("t", None, 1, NewAudit::new(20, "alice", "pin", Some(1)))
        .await
        .map_err(err)?;
    store
        .unpin("t", None, NewAudit::new(30, "alice", "unpin", None))
        .await
        .map_err(err)?;
    let entries = store.audit("t").await.map_err(err)?;
    let summary: Vec<(i64, &str, &str, Option<u64>)> = entries
        .iter()
        .map(|e| (e.at_ms, e.actor.as_str(), e.action.as_str(), e.version))
        .collect();
    check_eq!(
        summary,
        vec![
            (1, "admin", "create_topic", None),
            (10, "publisher", "publish", Some(1)),
            (20, "alice", "pin", Some(1)),
            (30, "alice", "unpin", None),
        ],
        "audit trail"
    );
    check!(
        entries[1].detail.contains("checksum="),
        "publish audit detail names the checksum: {:?}",
        entries[1].detail
    );
    check!(
        entries.windows(2).all(|w| w[0].id < w[1].id),
        "audit ids increase"
    );
    Ok(())
}

pub async fn rollouts_are_compare_and_set(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    store
        .publish("t", inline(10, b"v", &["cluster=canary"]))
        .await
        .map_err(err)?;
    let stages = vec![
        RolloutStage {
            scope: scope("region=us-east"),
            delay_ms: 0,
        },
        RolloutStage {
            scope: Scope::global(),
            delay_ms: 60_000,
        },
    ];
    let rollout = store
        .create_rollout(
            "t",
            1,
            &stages,
            100,
            NewAudit::new(50, "ops", "rollout", Some(1)),
        )
        .await
        .map_err(err)?;
    check_eq!(rollout.state, RolloutState::Running, "new rollout runs");
    check_eq!(rollout.stages.clone(), stages.clone(), "stages round trip");
    check_eq!(
        (rollout.next_stage, rollout.next_at_ms),
        (0, Some(100)),
        "schedule"
    );
    expect_code(
        store
            .create_rollout("t", 1, &stages, 100, audit(51, "rollout"))
            .await,
        ErrorCode::FailedPrecondition,
        "a second active rollout of the same version",
    )?;
    expect_code(
        store
            .create_rollout("t", 7, &stages, 100, audit(51, "rollout"))
            .await,
        ErrorCode::NotFound,
        "rollout of a missing version",
    )?;
    let mut step = rollout.clone();
    step.next_stage = 1;
    step.next_at_ms = Some(60_100);
    step.updated_at_ms = 100;
    let saved = store
        .save_rollout(
            &step,
            &RolloutEffect {
                add_scope: Some(scope("region=us-east")),
                withdraw: false,
            },
            audit(100, "rollout_stage"),
        )
        .await
        .map_err(err)?;
    check_eq!(saved.revision, rollout.revision + 1, "revision moves");
    check_eq!(
        store
            .get_version("t", 1)
            .await
            .map_err(err)?
            .unwrap()
            .scopes,
        vec![scope("cluster=canary"), scope("region=us-east")],
        "stage scope applied with the save"
    );
    // A save carrying the old revision is refused and changes nothing.
    expect_code(
        store
            .save_rollout(
                &step,
                &RolloutEffect {
                    add_scope: Some(Scope::global()),
                    withdraw: false,
                },
                audit(101, "rollout_stage"),
            )
            .await,
        ErrorCode::FailedPrecondition,
        "stale revision",
    )?;
    check_eq!(
        store
            .get_version("t", 1)
            .await
            .map_err(err)?
            .unwrap()
            .scopes
            .len(),
        2,
        "refused save applied no scope"
    );
    check_eq!(
        store.active_rollouts().await.map_err(err)?.len(),
        1,
        "active rollouts"
    );
    let mut abort = saved.clone();
    abort.state = RolloutState::Aborted;
    abort.next_at_ms = None;
    let aborted = store
        .save_rollout(
            &abort,
            &RolloutEffect {
                add_scope: None,
                withdraw: true,
            },
            audit(200, "rollout_abort"),
        )
        .await
        .map_err(err)?;
    check_eq!(aborted.state, RolloutState::Aborted, "aborted");
    let version = store.get_version("t", 1).await.map_err(err)?.unwrap();
    check!(
        version.withdrawn && version.scopes.is_empty(),
        "abort withdraws the version: {version:?}"
    );
    check!(
        store.active_rollouts().await.map_err(err)?.is_empty(),
        "an aborted rollout is not active"
    );
    check_eq!(
        store.get_rollout(rollout.id).await.map_err(err)?,
        Some(aborted),
        "get_rollout"
    );
    check_eq!(
        store.list_rollouts("t").await.map_err(err)?.len(),
        1,
        "list_rollouts"
    );
    // The version is free for a new rollout once the old one ended.
    store
        .create_rollout("t", 1, &stages, 300, audit(300, "rollout"))
        .await
        .map_err(err)?;
    Ok(())
}

pub async fn delete_versions_keeps_pinned_and_tracks_blobs(
    store: Arc<dyn MetadataStore>,
) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    store
        .publish("t", blob(10, "k1", &["*"]))
        .await
        .map_err(err)?;
    store
        .publish("t", blob(20, "k2", &["*"]))
        .await
        .map_err(err)?;
    store
        .publish("t", blob(30, "k1", &["*"]))
        .await
        .map_err(err)?;
    store
        .publish("t", inline(40, b"x", &["*"]))
        .await
        .map_err(err)?;
    store
        .pin("t", None, 2, audit(50, "pin"))
        .await
        .map_err(err)?;
    let deleted: Vec<u64> = store
        .delete_versions("t", &[1, 2, 9], audit(60, "expire"))
        .await
        .map_err(err)?
        .iter()
        .map(|v| v.version)
        .collect();
    check_eq!(deleted, vec![1], "pinned and missing versions are skipped");
    let blobs = store.referenced_blobs().await.map_err(err)?;
    check!(
        blobs.contains("k1") && blobs.contains("k2") && blobs.len() == 2,
        "k1 still referenced by version 3, k2 by the pinned 2: {blobs:?}"
    );
    store
        .delete_versions("t", &[3], audit(70, "expire"))
        .await
        .map_err(err)?;
    let blobs = store.referenced_blobs().await.map_err(err)?;
    check!(
        !blobs.contains("k1"),
        "k1 unreferenced after its last version went: {blobs:?}"
    );
    let expire = store
        .audit("t")
        .await
        .map_err(err)?
        .into_iter()
        .filter(|e| e.action == "expire")
        .count();
    check_eq!(expire, 2, "each expiry is audited");
    // A version under an active rollout is kept, whatever the caller read.
    store
        .create_rollout(
            "t",
            4,
            &[RolloutStage {
                scope: Scope::global(),
                delay_ms: 60_000,
            }],
            100,
            audit(80, "rollout"),
        )
        .await
        .map_err(err)?;
    let deleted = store
        .delete_versions("t", &[4], audit(90, "expire"))
        .await
        .map_err(err)?;
    check!(
        deleted.is_empty(),
        "a version under an active rollout was deleted: {deleted:?}"
    );
    Ok(())
}

pub async fn snapshots_and_generations(store: Arc<dyn MetadataStore>) -> CheckResult {
    store
        .create_topic(&topic("t"), audit(1, "create_topic"))
        .await
        .map_err(err)?;
    let mut last = generation(store.as_ref(), "t").await?;
    store
        .publish("t", inline(10, b"a", &["*"]))
        .await
        .map_err(err)?;
    let now = generation(store.as_ref(), "t").await?;
    check!(now > last, "publish bumps the generation");
    last = now;
    store
        .publish("t", inline(20, b"b", &["region=eu"]))
        .await
        .map_err(err)?;
    store
        .pin("t", Some(&scope("region=eu")), 1, audit(30, "pin"))
        .await
        .map_err(err)?;
    let rollout = store
        .create_rollout(
            "t",
            2,
            &[RolloutStage {
                scope: Scope::global(),
                delay_ms: 10,
            }],
            40,
            audit(30, "rollout"),
        )
        .await
        .map_err(err)?;
    let snap = store
        .snapshot("t")
        .await
        .map_err(err)?
        .ok_or("snapshot of an existing topic")?;
    check!(snap.topic.generation > last, "generation moved");
    check_eq!(
        snap.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1],
        "snapshot versions newest first"
    );
    check_eq!(snap.pins.len(), 1, "snapshot pins");
    check_eq!(snap.active_rollouts.clone(), vec![2], "snapshot rollouts");
    let gens = store.generations().await.map_err(err)?;
    check_eq!(
        gens,
        vec![("t".to_string(), snap.topic.generation)],
        "generations"
    );
    check!(
        store.snapshot("missing").await.map_err(err)?.is_none(),
        "snapshot of a missing topic"
    );
    store.touch_consumed("t", 99).await.map_err(err)?;
    let consumed = store.get_topic("t").await.map_err(err)?.unwrap();
    check_eq!(consumed.last_consumed_at_ms, Some(99), "last consumed");
    check_eq!(
        consumed.generation,
        snap.topic.generation,
        "consumption is not a change"
    );
    // Deleting the topic removes versions, pins and rollouts; audit stays.
    store
        .delete_topic("t", audit(100, "delete_topic"))
        .await
        .map_err(err)?;
    check!(
        store.list_versions("t").await.map_err(err)?.is_empty(),
        "versions deleted with the topic"
    );
    check!(
        store.list_pins("t").await.map_err(err)?.is_empty(),
        "pins deleted with the topic"
    );
    check!(
        store.get_rollout(rollout.id).await.map_err(err)?.is_none(),
        "rollouts deleted with the topic"
    );
    check!(
        store.audit("t").await.map_err(err)?.len() >= 5,
        "audit survives topic deletion"
    );
    // A recreated topic starts numbering again, in a new generation.
    let recreated = store
        .create_topic(&topic("t"), audit(200, "create_topic"))
        .await
        .map_err(err)?;
    check!(
        recreated.generation > snap.topic.generation,
        "a recreated topic reuses generation {} (deleted one had {})",
        recreated.generation,
        snap.topic.generation
    );
    let v = store
        .publish("t", inline(210, b"c", &["*"]))
        .await
        .map_err(err)?;
    check_eq!(v.version, 1, "recreated topic numbering");
    Ok(())
}

/// Instantiates every conformance check as a `#[tokio::test]` for one
/// backend. `$factory` is an async closure returning
/// `(Arc<dyn MetadataStore>, Box<dyn Any + Send>)`: a fresh, empty store and
/// a guard dropped after the test.
#[macro_export]
macro_rules! metadata_store_suite {
    ($factory:expr) => {
        $crate::metadata_store_suite!(@tests $factory;
            topic_lifecycle,
            versions_round_trip,
            version_numbers_are_gap_free_under_concurrent_publishers,
            scopes_can_be_added_later,
            pins_per_scope,
            audit_records_who_when_what,
            rollouts_are_compare_and_set,
            delete_versions_keeps_pinned_and_tracks_blobs,
            snapshots_and_generations);
    };
    (@tests $factory:expr; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = ($factory)().await;
                if let Err(message) = $crate::conformance::$name(store).await {
                    panic!("{}: {}", stringify!($name), message);
                }
            }
        )+
    };
}
