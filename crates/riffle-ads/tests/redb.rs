//! Behaviour specific to the redb backend: persistence across reopen,
//! exclusive opening, format versioning and corrupt values.

use riffle_ads::{
    AggregateRow, AggregateStore, RedbAggregateStore, SourcePosition, StoreError, TopRow,
    WriteBatch, MINUTE_MS,
};
use riffle_core::{ErrorCode, HasCode};

const T0: i64 = 28_333_333 * MINUTE_MS;

fn batch() -> WriteBatch {
    WriteBatch {
        partial_tops: vec![],
        rows: vec![
            AggregateRow::new(T0, "a", 0, 7),
            AggregateRow::new(T0 + MINUTE_MS, "a", 0, 5),
            AggregateRow::new(T0, "b", 2, 1),
        ],
        tops: vec![TopRow {
            window_end_ms: T0 + 3 * MINUTE_MS,
            window_minutes: 2,
            filter_id: 0,
            ad_ids: vec!["a".into()],
            counts: vec![12],
        }],
        positions: vec![SourcePosition::new("ad_click_aggregates/3", 42)],
    }
}

#[test]
fn reopen_keeps_rows_tops_and_positions_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregates.redb");
    {
        let store = RedbAggregateStore::open(&path).unwrap();
        store.apply(&batch()).unwrap();
        store
            .replace_range(
                T0 + MINUTE_MS,
                T0 + 2 * MINUTE_MS,
                &[AggregateRow::new(T0 + MINUTE_MS, "c", 1, 3)],
                &[],
            )
            .unwrap();
    }
    let store = RedbAggregateStore::open(&path).unwrap();
    assert_eq!(store.position("ad_click_aggregates/3").unwrap(), Some(42));
    assert_eq!(store.count("a", 0, T0, T0 + 10 * MINUTE_MS).unwrap(), 7);
    assert_eq!(store.count("c", 1, T0, T0 + 10 * MINUTE_MS).unwrap(), 3);
    assert_eq!(
        store.scan(T0, T0 + 10 * MINUTE_MS, None).unwrap(),
        vec![
            AggregateRow::new(T0, "a", 0, 7),
            AggregateRow::new(T0, "b", 2, 1),
            AggregateRow::new(T0 + MINUTE_MS, "c", 1, 3),
        ]
    );
    assert_eq!(
        store.latest_top(2, 0, i64::MAX).unwrap(),
        Some(batch().tops[0].clone())
    );
    // The reopened store still fences a writer that moves back.
    let mut stale = batch();
    stale.positions[0].offset = 41;
    let error = store.apply(&stale).unwrap_err();
    assert!(
        matches!(error, StoreError::PositionRegressed { .. }),
        "{error}"
    );
}

#[test]
fn second_open_is_refused_while_the_first_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregates.redb");
    let first = RedbAggregateStore::open(&path).unwrap();
    let error = RedbAggregateStore::open(&path).unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unavailable, "{error}");
    assert!(error.to_string().contains("aggregates.redb"), "{error}");
    drop(first);
    RedbAggregateStore::open(&path).unwrap();
}

#[test]
fn another_format_version_is_refused() {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregates.redb");
    drop(RedbAggregateStore::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let error = RedbAggregateStore::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::IncompatibleFormat {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.code(), ErrorCode::FailedPrecondition);
}

#[test]
fn a_corrupt_top_row_is_reported_as_data_loss() {
    const TOPS: redb::TableDefinition<(u32, u32, i64), &[u8]> =
        redb::TableDefinition::new("top_by_window_filter_end");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregates.redb");
    drop(RedbAggregateStore::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TOPS)
            .unwrap()
            .insert((5, 0, T0), br#"{"ad_ids":["a"],"counts":[]}"#.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = RedbAggregateStore::open(&path).unwrap();
    let error = store.top(5, 0, T0).unwrap_err();
    assert_eq!(error.code(), ErrorCode::DataLoss, "{error}");
    assert!(error.to_string().contains("window_end_ms"), "{error}");
    let error = store.latest_top(5, 0, i64::MAX).unwrap_err();
    assert_eq!(error.code(), ErrorCode::DataLoss, "{error}");
}
