//! The conformance suite every [`OnlineStore`] backend must pass.
//!
//! Each check is an async function taking a fresh, empty store and the
//! [`ManualClock`] it judges expiry by. A backend's test file instantiates
//! them all with a factory returning a [`Fixture`]:
//!
//! ```ignore
//! riffle_features::online_store_suite!(|| {
//!     let clock = ManualClock::new(T0);
//!     (MemoryOnlineStore::new(Arc::new(clock.clone())), clock)
//! });
//! ```

use bytes::Bytes;
use riffle_core::time::ManualClock;
use riffle_core::{check, check_eq, ErrorCode, HasCode};

use crate::store::{EntityKind, EntityRow, OnlineStore, StoreError, MAX_BATCH};

/// `Err` carries a description of the first violated expectation.
pub type CheckResult = Result<(), String>;

/// A store under test and the clock it judges expiry by.
pub trait Fixture {
    fn store(&self) -> &dyn OnlineStore;
    fn clock(&self) -> &ManualClock;
}

impl<S: OnlineStore> Fixture for (S, ManualClock) {
    fn store(&self) -> &dyn OnlineStore {
        &self.0
    }

    fn clock(&self) -> &ManualClock {
        &self.1
    }
}

/// The wall clock every fixture starts at.
pub const T0: i64 = 1_767_571_200_000;

fn row(entity: EntityKind, id: &str, version: u64, value: &str) -> EntityRow {
    EntityRow {
        entity,
        id: id.to_owned(),
        version,
        as_of_ms: T0 - 1_000 + version as i64,
        expires_at_ms: i64::MAX,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn err(error: StoreError) -> String {
    format!("unexpected error: {error}")
}

async fn values(
    store: &dyn OnlineStore,
    entity: EntityKind,
    ids: &[&str],
) -> Result<Vec<Option<String>>, String> {
    Ok(store
        .get_batch(entity, ids)
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| r.map(|r| String::from_utf8_lossy(&r.value).into_owned()))
        .collect())
}

pub async fn rows_round_trip_in_request_order(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    let written = vec![
        row(EntityKind::Stream, "s1.0", 3, "a"),
        row(EntityKind::Stream, "s2.0", 1, "b"),
        row(EntityKind::User, "u7", 9, "c"),
    ];
    store.put_batch(&written).await.map_err(err)?;
    let got = store
        .get_batch(EntityKind::Stream, &["s2.0", "missing", "s1.0", "s2.0"])
        .await
        .map_err(err)?;
    check_eq!(
        got,
        vec![
            Some(written[1].clone()),
            None,
            Some(written[0].clone()),
            Some(written[1].clone())
        ],
        "rows of [s2.0, missing, s1.0, s2.0]"
    );
    Ok(())
}

pub async fn entities_are_separate_namespaces(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    let rows: Vec<EntityRow> = EntityKind::ALL
        .into_iter()
        .map(|kind| row(kind, "same-id", 1, kind.as_str()))
        .collect();
    store.put_batch(&rows).await.map_err(err)?;
    for kind in EntityKind::ALL {
        check_eq!(
            values(store, kind, &["same-id"]).await?,
            vec![Some(kind.as_str().to_owned())],
            "value of {kind} same-id"
        );
    }
    Ok(())
}

pub async fn lower_versions_never_replace_higher_ones(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    store
        .put_batch(&[row(EntityKind::Stream, "s1.0", 5, "v5")])
        .await
        .map_err(err)?;
    // A replay re-emits older rows: they are skipped, not errors.
    store
        .put_batch(&[
            row(EntityKind::Stream, "s1.0", 4, "v4"),
            row(EntityKind::Stream, "s9.0", 1, "other"),
        ])
        .await
        .map_err(err)?;
    check_eq!(
        values(store, EntityKind::Stream, &["s1.0", "s9.0"]).await?,
        vec![Some("v5".to_owned()), Some("other".to_owned())],
        "after an older write"
    );
    // The same version again is idempotent; a newer one replaces.
    store
        .put_batch(&[row(EntityKind::Stream, "s1.0", 5, "v5")])
        .await
        .map_err(err)?;
    store
        .put_batch(&[row(EntityKind::Stream, "s1.0", 6, "v6")])
        .await
        .map_err(err)?;
    check_eq!(
        values(store, EntityKind::Stream, &["s1.0"]).await?,
        vec![Some("v6".to_owned())],
        "after a newer write"
    );
    Ok(())
}

pub async fn expired_rows_are_gone(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    let mut short = row(EntityKind::Stream, "short", 1, "x");
    short.expires_at_ms = T0 + 10_000;
    let long = row(EntityKind::Stream, "long", 1, "y");
    store.put_batch(&[short, long]).await.map_err(err)?;
    check_eq!(
        values(store, EntityKind::Stream, &["short", "long"]).await?,
        vec![Some("x".to_owned()), Some("y".to_owned())],
        "before expiry"
    );
    f.clock().advance(10_000);
    check_eq!(
        values(store, EntityKind::Stream, &["short", "long"]).await?,
        vec![None, Some("y".to_owned())],
        "at expiry"
    );
    let scanned: Vec<String> = store
        .scan(EntityKind::Stream, 10)
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| r.id)
        .collect();
    check_eq!(scanned, vec!["long".to_owned()], "scan after expiry");
    // An expired row is gone: even a lower version writes the id again
    // (an entity whose state expired starts counting from scratch).
    let mut again = row(EntityKind::Stream, "short", 0, "z");
    again.expires_at_ms = T0 + 60_000;
    store.put_batch(&[again]).await.map_err(err)?;
    check_eq!(
        values(store, EntityKind::Stream, &["short"]).await?,
        vec![Some("z".to_owned())],
        "rewritten after expiry"
    );
    Ok(())
}

pub async fn delete_removes_only_the_named_rows(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    store
        .put_batch(&[
            row(EntityKind::Stream, "a", 1, "a"),
            row(EntityKind::Stream, "b", 1, "b"),
            row(EntityKind::User, "a", 1, "user a"),
        ])
        .await
        .map_err(err)?;
    store
        .delete_batch(EntityKind::Stream, &["a", "never-written"])
        .await
        .map_err(err)?;
    check_eq!(
        values(store, EntityKind::Stream, &["a", "b"]).await?,
        vec![None, Some("b".to_owned())],
        "streams after delete"
    );
    check_eq!(
        values(store, EntityKind::User, &["a"]).await?,
        vec![Some("user a".to_owned())],
        "the user with the same id"
    );
    Ok(())
}

pub async fn scan_is_ordered_by_id_and_limited(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    let rows: Vec<EntityRow> = ["s3", "s1", "s2", "s4"]
        .into_iter()
        .map(|id| row(EntityKind::Stream, id, 1, id))
        .chain([row(EntityKind::User, "u1", 1, "u1")])
        .collect();
    store.put_batch(&rows).await.map_err(err)?;
    let ids = |rows: Vec<EntityRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    check_eq!(
        ids(store.scan(EntityKind::Stream, 10).await.map_err(err)?),
        vec!["s1", "s2", "s3", "s4"],
        "scan of streams"
    );
    check_eq!(
        ids(store.scan(EntityKind::Stream, 2).await.map_err(err)?),
        vec!["s1", "s2"],
        "scan with limit 2"
    );
    check_eq!(
        ids(store.scan(EntityKind::Streamer, 10).await.map_err(err)?),
        Vec::<String>::new(),
        "scan of an empty entity"
    );
    Ok(())
}

pub async fn a_thousand_ids_in_one_batch(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    let rows: Vec<EntityRow> = (0..1_000)
        .map(|i| row(EntityKind::Stream, &format!("s{i}.0"), 1, &format!("v{i}")))
        .collect();
    store.put_batch(&rows).await.map_err(err)?;
    let ids: Vec<String> = (0..1_000).rev().map(|i| format!("s{i}.0")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = values(store, EntityKind::Stream, &refs).await?;
    for (i, value) in got.iter().enumerate() {
        let expected = format!("v{}", 999 - i);
        check_eq!(value.as_deref(), Some(expected.as_str()), "value {i}");
    }
    Ok(())
}

pub async fn bad_arguments_name_the_argument(f: &dyn Fixture) -> CheckResult {
    let store = f.store();
    store
        .put_batch(&[row(EntityKind::Stream, "kept", 1, "k")])
        .await
        .map_err(err)?;
    let long_id = "x".repeat(513);
    let too_many: Vec<&str> = vec!["s"; MAX_BATCH + 1];
    let mut bad_rows = vec![row(EntityKind::Stream, "fine", 1, "f")];
    bad_rows.push(row(EntityKind::Stream, "", 1, "empty"));
    let cases: Vec<(&str, Result<(), StoreError>)> = vec![
        ("rows[1].id", store.put_batch(&bad_rows).await),
        (
            "ids[1]",
            store
                .get_batch(EntityKind::Stream, &["ok", &long_id])
                .await
                .map(|_| ()),
        ),
        (
            "ids",
            store
                .get_batch(EntityKind::Stream, &too_many)
                .await
                .map(|_| ()),
        ),
        ("ids[0]", store.delete_batch(EntityKind::User, &[""]).await),
        (
            "limit",
            store
                .scan(EntityKind::Stream, MAX_BATCH + 1)
                .await
                .map(|_| ()),
        ),
    ];
    for (param, result) in cases {
        let Err(error) = result else {
            return Err(format!("bad {param} was accepted"));
        };
        check_eq!(error.code(), ErrorCode::InvalidArgument, "code of {error}");
        check_eq!(error.param(), Some(param), "parameter named by {error}");
        check!(
            error.to_string().contains(param),
            "message does not name {param}: {error}"
        );
    }
    check_eq!(
        values(store, EntityKind::Stream, &["kept", "fine"]).await?,
        vec![Some("k".to_owned()), None],
        "a rejected batch writes nothing"
    );
    check_eq!(
        EntityKind::parse("channel").map_err(|e| (e.code(), e.to_string())),
        Err((
            ErrorCode::NotFound,
            "unknown entity \"channel\" (known: stream, streamer, user, user_streamer)".to_owned()
        )),
        "unknown entity"
    );
    Ok(())
}

/// Instantiates every check as a `#[tokio::test]` against fixtures from
/// `$factory` (a closure returning a [`Fixture`]).
#[macro_export]
macro_rules! online_store_suite {
    ($factory:expr) => {
        $crate::online_store_suite!(@tests $factory;
            rows_round_trip_in_request_order,
            entities_are_separate_namespaces,
            lower_versions_never_replace_higher_ones,
            expired_rows_are_gone,
            delete_removes_only_the_named_rows,
            scan_is_ordered_by_id_and_limited,
            a_thousand_ids_in_one_batch,
            bad_arguments_name_the_argument);
    };
    (@tests $factory:expr; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let fixture = ($factory)();
                if let Err(message) = $crate::conformance::$name(&fixture).await {
                    panic!("{}: {}", stringify!($name), message);
                }
            }
        )+
    };
}
