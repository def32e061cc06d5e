//! The metadata store conformance suite against SQLite: a file database
//! (what `riffle serve` uses) and a private in-memory one.

use std::any::Any;
use std::sync::Arc;

use riffle_datasets::{MetadataStore, SqliteMetadataStore};

mod file {
    use super::*;
    riffle_datasets::metadata_store_suite!(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetadataStore::open(&dir.path().join("metadata.db"))
            .await
            .unwrap();
        (
            Arc::new(store) as Arc<dyn MetadataStore>,
            Box::new(dir) as Box<dyn Any + Send>,
        )
    });
}

mod memory {
    use super::*;
    riffle_datasets::metadata_store_suite!(|| async {
        let store = SqliteMetadataStore::connect("sqlite::memory:")
            .await
            .unwrap();
        (
            Arc::new(store) as Arc<dyn MetadataStore>,
            Box::new(()) as Box<dyn Any + Send>,
        )
    });
}

/// Publishes acknowledged before a reopen are all there, numbering goes on.
#[tokio::test]
async fn publishes_survive_reopen_and_numbering_continues() {
    use riffle_datasets::model::{DataLocation, NewAudit, NewTopic, NewVersion, Scope};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    let publish = |at: i64| NewVersion {
        created_at_ms: at,
        created_by: "p".into(),
        metadata: Default::default(),
        checksum: "sha256:00".into(),
        size: 1,
        location: DataLocation::Inline,
        inline_data: Some(vec![7]),
        scopes: vec![Scope::global()],
    };
    {
        let store = SqliteMetadataStore::open(&path).await.unwrap();
        let topic = NewTopic {
            name: "t".into(),
            ..Default::default()
        };
        store
            .create_topic(&topic, NewAudit::new(1, "a", "create_topic", None))
            .await
            .unwrap();
        for at in 0..3 {
            store.publish("t", publish(at)).await.unwrap();
        }
        store.close().await;
    }
    let store = SqliteMetadataStore::open(&path).await.unwrap();
    assert_eq!(store.list_versions("t").await.unwrap().len(), 3);
    assert_eq!(store.publish("t", publish(9)).await.unwrap().version, 4);
    assert_eq!(store.inline_data("t", 2).await.unwrap(), Some(vec![7]));
}
