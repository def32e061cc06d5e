//! SQLite metadata store (sqlx).
//!
//! One database file (`<data-dir>/datasets/metadata.db` by default) in WAL
//! mode with `synchronous=FULL`: a publish is acknowledged only after its
//! transaction is durable, so it survives kill -9 and power loss. Every
//! write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's single
//! write lock up front: concurrent publishers (in this process or another
//! process on the same file) queue on the lock instead of failing to
//! upgrade a read transaction, and version numbers come from the topic
//! row's `next_version` inside that transaction — gap-free by construction.
//! Integers are stored as SQLite INTEGER (i64); JSON columns hold metadata
//! maps, scope lists and rollout stages. `ds_meta.schema_version` guards
//! the format; `ds_meta.generation` is the store-wide generation counter.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use riffle_core::ErrorCode;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::error::{DatasetError, Result};
use crate::model::{
    AuditEntry, DataLocation, NewAudit, NewTopic, NewVersion, Pin, Rollout, RolloutEffect,
    RolloutStage, RolloutState, Scope, Topic, Version,
};
use crate::store::{MetadataStore, TopicSnapshot};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ds_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ds_topics (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        description TEXT NOT NULL,
        retention_count INTEGER,
        retention_age_ms INTEGER,
        wrapped_key BLOB,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        next_version INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        last_published_at_ms INTEGER,
        last_consumed_at_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS ds_versions (
        topic TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        metadata TEXT NOT NULL,
        checksum TEXT NOT NULL,
        size INTEGER NOT NULL,
        blob_key TEXT,
        inline_data BLOB,
        scopes TEXT NOT NULL,
        withdrawn INTEGER NOT NULL,
        PRIMARY KEY (topic, version))",
    "CREATE INDEX IF NOT EXISTS ds_versions_blob ON ds_versions (blob_key)",
    "CREATE INDEX IF NOT EXISTS ds_versions_checksum ON ds_versions (topic, checksum)",
    "CREATE TABLE IF NOT EXISTS ds_pins (
        topic TEXT NOT NULL,
        scope TEXT NOT NULL,
        version INTEGER NOT NULL,
        pinned_at_ms INTEGER NOT NULL,
        pinned_by TEXT NOT NULL,
        PRIMARY KEY (topic, scope))",
    "CREATE TABLE IF NOT EXISTS ds_rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        version INTEGER NOT NULL,
        stages TEXT NOT NULL,
        next_stage INTEGER NOT NULL,
        state TEXT NOT NULL,
        next_at_ms INTEGER,
        remaining_ms INTEGER,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        revision INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ds_rollouts_state ON ds_rollouts (state)",
    "CREATE TABLE IF NOT EXISTS ds_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        version INTEGER,
        detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ds_audit_topic ON ds_audit (topic, id)",
];

const VERSION_COLUMNS: &str =
    "topic, version, created_at_ms, created_by, metadata, checksum, size, blob_key, scopes, withdrawn";
const TOPIC_COLUMNS: &str = "name, owner, description, retention_count, retention_age_ms, wrapped_key, created_at_ms, created_by, generation, last_published_at_ms, last_consumed_at_ms";
const ROLLOUT_COLUMNS: &str = "id, topic, version, stages, next_stage, state, next_at_ms, remaining_ms, created_at_ms, created_by, updated_at_ms, revision";

/// The default [`MetadataStore`].
#[derive(Debug, Clone)]
pub struct SqliteMetadataStore {
    pool: SqlitePool,
}

impl SqliteMetadataStore {
    /// Opens (creating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                DatasetError::unavailable(format!(
                    "metadata store: cannot create {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        // Switching to WAL takes an exclusive lock that busy_timeout does not
        // wait for: do it once, on one connection, before the pool opens
        // several (WAL is a property of the file from then on).
        // Another process opening the same new file at the same moment may
        // hold that lock briefly: retry for a while.
        let mut attempt = 0;
        loop {
            use sqlx::ConnectOptions;
            let opened = base
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await;
            match opened {
                Ok(connection) => {
                    sqlx::Connection::close(connection).await.map_err(|e| {
                        DatasetError::unavailable(format!("metadata store: open: {e}"))
                    })?;
                    break;
                }
                Err(e) if attempt < 100 && e.to_string().contains("locked") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(DatasetError::unavailable(format!(
                        "metadata store: open {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Self::with_options(base, 8).await
    }

    /// A `sqlite:` URL (`sqlite::memory:` is a private in-memory database).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| DatasetError::invalid(format!("datasets.metadata_url: {url:?}: {e}")))?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10));
        // An in-memory database lives in one connection.
        let max = if url.contains(":memory:") { 1 } else { 8 };
        Self::with_options(options, max).await
    }

    async fn with_options(options: SqliteConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| DatasetError::unavailable(format!("metadata store: open: {e}")))?;
        let store = SqliteMetadataStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        let found: Option<i64> =
            sqlx::query_scalar("SELECT value FROM ds_meta WHERE key = 'schema_version'")
                .fetch_optional(&mut *tx)
                .await?;
        match found {
            None => {
                sqlx::query("INSERT INTO ds_meta (key, value) VALUES ('schema_version', ?)")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(DatasetError::new(
                    ErrorCode::FailedPrecondition,
                    format!("metadata store has schema version {v}, this build reads version {SCHEMA_VERSION}"),
                ))
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn to_i64(v: u64, field: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| DatasetError::invalid(format!("{field}: {v} is too large")))
}

fn json_col<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| {
        DatasetError::data_loss(format!("metadata store: column {col}: {e}: {text:?}"))
    })
}

fn topic_from_row(row: &SqliteRow) -> Result<Topic> {
    Ok(Topic {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        description: row.try_get("description")?,
        retention_count: row
            .try_get::<Option<i64>, _>("retention_count")?
            .map(|v| v as u64),
        retention_age_ms: row
            .try_get::<Option<i64>, _>("retention_age_ms")?
            .map(|v| v as u64),
        wrapped_key: row.try_get("wrapped_key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        created_by: row.try_get("created_by")?,
        generation: row.try_get::<i64, _>("generation")? as u64,
        last_published_at_ms: row.try_get("last_published_at_ms")?,
        last_consumed_at_ms: row.try_get("last_consumed_at_ms")?,
    })
}

fn version_from_row(row: &SqliteRow) -> Result<Version> {
    let blob: Option<String> = row.try_get("blob_key")?;
    let scopes: Vec<String> = json_col(row, "scopes")?;
    Ok(Version {
        topic: row.try_get("topic")?,
        version: row.try_get::<i64, _>("version")? as u64,
        created_at_ms: row.try_get("created_at_ms")?,
        created_by: row.try_get("created_by")?,
        metadata: json_col(row, "metadata")?,
        checksum: row.try_get("checksum")?,
        size: row.try_get::<i64, _>("size")? as u64,
        location: blob.map_or(DataLocation::Inline, DataLocation::Blob),
        scopes: scopes
            .iter()
            .map(|s| Scope::parse_field(s, "scopes"))
            .collect::<Result<_>>()?,
        withdrawn: row.try_get::<i64, _>("withdrawn")? != 0,
    })
}

fn pin_from_row(row: &SqliteRow) -> Result<Pin> {
    let scope: String = row.try_get("scope")?;
    Ok(Pin {
        topic: row.try_get("topic")?,
        scope: if scope.is_empty() {
            None
        } else {
            Some(Scope::parse_field(&scope, "scope")?)
        },
        version: row.try_get::<i64, _>("version")? as u64,
        pinned_at_ms: row.try_get("pinned_at_ms")?,
        pinned_by: row.try_get("pinned_by")?,
    })
}

fn rollout_from_row(row: &SqliteRow) -> Result<Rollout> {
    let state: String = row.try_get("state")?;
    Ok(Rollout {
        id: row.try_get::<i64, _>("id")? as u64,
        topic: row.try_get("topic")?,
        version: row.try_get::<i64, _>("version")? as u64,
        stages: json_col::<Vec<RolloutStage>>(row, "stages")?,
        next_stage: row.try_get::<i64, _>("next_stage")? as usize,
        state: RolloutState::parse(&state)?,
        next_at_ms: row.try_get("next_at_ms")?,
        remaining_ms: row
            .try_get::<Option<i64>, _>("remaining_ms")?
            .map(|v| v as u64),
        created_at_ms: row.try_get("created_at_ms")?,
        created_by: row.try_get("created_by")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        revision: row.try_get::<i64, _>("revision")? as u64,
    })
}

fn scopes_json(scopes: &[Scope]) -> String {
    let strings: Vec<String> = scopes.iter().map(Scope::to_string).collect();
    serde_json::to_string(&strings).expect("strings serialize")
}

fn pin_scope_key(scope: Option<&Scope>) -> String {
    scope.map(Scope::to_string).unwrap_or_default()
}

async fn write_audit(
    tx: &mut Transaction<'static, Sqlite>,
    topic: &str,
    audit: &NewAudit,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO ds_audit (topic, at_ms, actor, action, version, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(topic)
    .bind(audit.at_ms)
    .bind(&audit.actor)
    .bind(&audit.action)
    .bind(audit.version.map(|v| v as i64))
    .bind(&audit.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The next value of the store-wide generation counter: generations are
/// unique over all topics and all incarnations of a name, so a deleted and
/// recreated topic never looks unchanged to a cache.
async fn next_generation(tx: &mut Transaction<'static, Sqlite>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO ds_meta (key, value) VALUES ('generation', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
    )
    .fetch_one(&mut **tx)
    .await?)
}

/// Moves the topic to a new generation; `NotFound` when it does not exist.
async fn bump(tx: &mut Transaction<'static, Sqlite>, topic: &str) -> Result<()> {
    let generation = next_generation(tx).await?;
    let done = sqlx::query("UPDATE ds_topics SET generation = ? WHERE name = ?")
        .bind(generation)
        .bind(topic)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(topic_not_found(topic));
    }
    Ok(())
}

fn topic_not_found(topic: &str) -> DatasetError {
    DatasetError::not_found(format!("topic {topic:?} not found"))
}

fn version_not_found(topic: &str, version: u64) -> DatasetError {
    DatasetError::not_found(format!("topic {topic:?} has no version {version}"))
}

async fn version_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    topic: &str,
    version: u64,
) -> Result<Option<Version>> {
    let row = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM ds_versions WHERE topic = ? AND version = ?"
    ))
    .bind(topic)
    .bind(to_i64(version, "version")?)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

#[async_trait]
impl MetadataStore for SqliteMetadataStore {
    async fn create_topic(&self, topic: &NewTopic, audit: NewAudit) -> Result<Topic> {
        let mut tx = self.begin_write().await?;
        let generation = next_generation(&mut tx).await?;
        let inserted = sqlx::query(
            "INSERT INTO ds_topics (name, owner, description, retention_count, retention_age_ms, wrapped_key, created_at_ms, created_by, next_version, generation)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&topic.name)
        .bind(&topic.owner)
        .bind(&topic.description)
        .bind(topic.retention_count.map(|v| to_i64(v, "retention_count")).transpose()?)
        .bind(topic.retention_age_ms.map(|v| to_i64(v, "retention_age")).transpose()?)
        .bind(&topic.wrapped_key)
        .bind(audit.at_ms)
        .bind(&audit.actor)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(DatasetError::new(
                ErrorCode::AlreadyExists,
                format!("topic {:?} already exists", topic.name),
            ));
        }
        write_audit(&mut tx, &topic.name, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {TOPIC_COLUMNS} FROM ds_topics WHERE name = ?"
        ))
        .bind(&topic.name)
        .fetch_one(&mut *tx)
        .await?;
        let created = topic_from_row(&row)?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_topic(&self, name: &str) -> Result<Option<Topic>> {
        let row = sqlx::query(&format!(
            "SELECT {TOPIC_COLUMNS} FROM ds_topics WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self) -> Result<Vec<Topic>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOPIC_COLUMNS} FROM ds_topics ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn delete_topic(&self, name: &str, audit: NewAudit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM ds_topics WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(topic_not_found(name));
        }
        for table in ["ds_versions", "ds_pins", "ds_rollouts"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE topic = ?"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        write_audit(&mut tx, name, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn generations(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT name, generation FROM ds_topics")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("name")?,
                    row.try_get::<i64, _>("generation")? as u64,
                ))
            })
            .collect()
    }

    async fn snapshot(&self, name: &str) -> Result<Option<TopicSnapshot>> {
        // One read transaction: WAL gives it a consistent view.
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {TOPIC_COLUMNS} FROM ds_topics WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let topic = topic_from_row(&row)?;
        let versions = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM ds_versions WHERE topic = ? ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(version_from_row)
        .collect::<Result<Vec<_>>>()?;
        let pins = sqlx::query("SELECT * FROM ds_pins WHERE topic = ? ORDER BY scope")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(pin_from_row)
            .collect::<Result<Vec<_>>>()?;
        let active_rollouts = sqlx::query_scalar::<_, i64>(
            "SELECT version FROM ds_rollouts WHERE topic = ? AND state IN ('running', 'paused')",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|v| v as u64)
        .collect();
        tx.commit().await?;
        Ok(Some(TopicSnapshot {
            topic,
            versions,
            pins,
            active_rollouts,
        }))
    }

    async fn publish(&self, topic: &str, version: NewVersion) -> Result<Version> {
        let blob_key = match &version.location {
            DataLocation::Inline => None,
            DataLocation::Blob(key) => Some(key.clone()),
        };
        let mut tx = self.begin_write().await?;
        let generation = next_generation(&mut tx).await?;
        let number: Option<i64> = sqlx::query_scalar(
            "UPDATE ds_topics SET next_version = next_version + 1, generation = ?,
                 last_published_at_ms = ? WHERE name = ? RETURNING next_version - 1",
        )
        .bind(generation)
        .bind(version.created_at_ms)
        .bind(topic)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(number) = number else {
            return Err(topic_not_found(topic));
        };
        let metadata = serde_json::to_string(&version.metadata).expect("map serializes");
        sqlx::query(
            "INSERT INTO ds_versions (topic, version, created_at_ms, created_by, metadata, checksum, size, blob_key, inline_data, scopes, withdrawn)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(topic)
        .bind(number)
        .bind(version.created_at_ms)
        .bind(&version.created_by)
        .bind(&metadata)
        .bind(&version.checksum)
        .bind(to_i64(version.size, "size")?)
        .bind(&blob_key)
        .bind(&version.inline_data)
        .bind(scopes_json(&version.scopes))
        .execute(&mut *tx)
        .await?;
        let scopes: Vec<String> = version.scopes.iter().map(Scope::to_string).collect();
        let audit = NewAudit::new(
            version.created_at_ms,
            &version.created_by,
            "publish",
            Some(number as u64),
        )
        .detail(format!(
            "size={} checksum={} scopes={}",
            version.size,
            version.checksum,
            scopes.join(",")
        ));
        write_audit(&mut tx, topic, &audit).await?;
        let stored = version_in_tx(&mut tx, topic, number as u64)
            .await?
            .ok_or_else(|| DatasetError::internal("published version vanished"))?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_version(&self, topic: &str, version: u64) -> Result<Option<Version>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM ds_versions WHERE topic = ? AND version = ?"
        ))
        .bind(topic)
        .bind(to_i64(version, "version")?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn list_versions(&self, topic: &str) -> Result<Vec<Version>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM ds_versions WHERE topic = ? ORDER BY version DESC"
        ))
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn inline_data(&self, topic: &str, version: u64) -> Result<Option<Vec<u8>>> {
        let data: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT inline_data FROM ds_versions WHERE topic = ? AND version = ?",
        )
        .bind(topic)
        .bind(to_i64(version, "version")?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(data.flatten())
    }

    async fn add_scopes(
        &self,
        topic: &str,
        version: u64,
        scopes: &[Scope],
        audit: NewAudit,
    ) -> Result<Version> {
        let mut tx = self.begin_write().await?;
        let Some(mut stored) = version_in_tx(&mut tx, topic, version).await? else {
            return Err(version_not_found(topic, version));
        };
        for scope in scopes {
            if !stored.scopes.contains(scope) {
                stored.scopes.push(scope.clone());
            }
        }
        sqlx::query("UPDATE ds_versions SET scopes = ? WHERE topic = ? AND version = ?")
            .bind(scopes_json(&stored.scopes))
            .bind(topic)
            .bind(version as i64)
            .execute(&mut *tx)
            .await?;
        bump(&mut tx, topic).await?;
        write_audit(&mut tx, topic, &audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn find_by_checksum(&self, topic: &str, checksum: &str) -> Result<Option<Version>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM ds_versions WHERE topic = ? AND checksum = ? ORDER BY version DESC LIMIT 1"
        ))
        .bind(topic)
        .bind(checksum)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn pin(
        &self,
        topic: &str,
        scope: Option<&Scope>,
        version: u64,
        audit: NewAudit,
    ) -> Result<Pin> {
        let mut tx = self.begin_write().await?;
        if version_in_tx(&mut tx, topic, version).await?.is_none() {
            return Err(version_not_found(topic, version));
        }
        sqlx::query(
            "INSERT INTO ds_pins (topic, scope, version, pinned_at_ms, pinned_by) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (topic, scope) DO UPDATE SET version = excluded.version,
                 pinned_at_ms = excluded.pinned_at_ms, pinned_by = excluded.pinned_by",
        )
        .bind(topic)
        .bind(pin_scope_key(scope))
        .bind(version as i64)
        .bind(audit.at_ms)
        .bind(&audit.actor)
        .execute(&mut *tx)
        .await?;
        bump(&mut tx, topic).await?;
        write_audit(&mut tx, topic, &audit).await?;
        tx.commit().await?;
        Ok(Pin {
            topic: topic.into(),
            scope: scope.cloned(),
            version,
            pinned_at_ms: audit.at_ms,
            pinned_by: audit.actor,
        })
    }

    async fn unpin(&self, topic: &str, scope: Option<&Scope>, audit: NewAudit) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM ds_pins WHERE topic = ? AND scope = ?")
            .bind(topic)
            .bind(pin_scope_key(scope))
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            let what = scope.map_or("the whole topic".to_string(), |s| format!("scope {s}"));
            return Err(DatasetError::not_found(format!(
                "topic {topic:?} has no pin for {what}"
            )));
        }
        bump(&mut tx, topic).await?;
        write_audit(&mut tx, topic, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_pins(&self, topic: &str) -> Result<Vec<Pin>> {
        let rows = sqlx::query("SELECT * FROM ds_pins WHERE topic = ? ORDER BY scope")
            .bind(topic)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(pin_from_row).collect()
    }

    async fn audit(&self, topic: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM ds_audit WHERE topic = ? ORDER BY id")
            .bind(topic)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get::<i64, _>("id")? as u64,
                    topic: row.try_get("topic")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    version: row.try_get::<Option<i64>, _>("version")?.map(|v| v as u64),
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn create_rollout(
        &self,
        topic: &str,
        version: u64,
        stages: &[RolloutStage],
        next_at_ms: i64,
        audit: NewAudit,
    ) -> Result<Rollout> {
        let mut tx = self.begin_write().await?;
        if version_in_tx(&mut tx, topic, version).await?.is_none() {
            return Err(version_not_found(topic, version));
        }
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM ds_rollouts WHERE topic = ? AND version = ? AND state IN ('running', 'paused')",
        )
        .bind(topic)
        .bind(version as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = active {
            return Err(DatasetError::new(
                ErrorCode::FailedPrecondition,
                format!("version {version} of topic {topic:?} already has active rollout {id}"),
            ));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO ds_rollouts (topic, version, stages, next_stage, state, next_at_ms, remaining_ms, created_at_ms, created_by, updated_at_ms, revision)
             VALUES (?, ?, ?, 0, 'running', ?, NULL, ?, ?, ?, 1) RETURNING id",
        )
        .bind(topic)
        .bind(version as i64)
        .bind(serde_json::to_string(stages).expect("stages serialize"))
        .bind(next_at_ms)
        .bind(audit.at_ms)
        .bind(&audit.actor)
        .bind(audit.at_ms)
        .fetch_one(&mut *tx)
        .await?;
        bump(&mut tx, topic).await?;
        write_audit(&mut tx, topic, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM ds_rollouts WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let rollout = rollout_from_row(&row)?;
        tx.commit().await?;
        Ok(rollout)
    }

    async fn get_rollout(&self, id: u64) -> Result<Option<Rollout>> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM ds_rollouts WHERE id = ?"
        ))
        .bind(to_i64(id, "rollout id")?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    async fn active_rollouts(&self) -> Result<Vec<Rollout>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM ds_rollouts WHERE state IN ('running', 'paused') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn list_rollouts(&self, topic: &str) -> Result<Vec<Rollout>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM ds_rollouts WHERE topic = ? ORDER BY id"
        ))
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn save_rollout(
        &self,
        rollout: &Rollout,
        effect: &RolloutEffect,
        audit: NewAudit,
    ) -> Result<Rollout> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE ds_rollouts SET next_stage = ?, state = ?, next_at_ms = ?, remaining_ms = ?,
                 updated_at_ms = ?, revision = revision + 1 WHERE id = ? AND revision = ?",
        )
        .bind(rollout.next_stage as i64)
        .bind(rollout.state.as_str())
        .bind(rollout.next_at_ms)
        .bind(
            rollout
                .remaining_ms
                .map(|v| to_i64(v, "remaining_ms"))
                .transpose()?,
        )
        .bind(rollout.updated_at_ms)
        .bind(rollout.id as i64)
        .bind(rollout.revision as i64)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(DatasetError::conflict(format!(
                "rollout {} changed concurrently (revision {} is stale)",
                rollout.id, rollout.revision
            )));
        }
        if effect.add_scope.is_some() || effect.withdraw {
            let Some(mut version) = version_in_tx(&mut tx, &rollout.topic, rollout.version).await?
            else {
                return Err(version_not_found(&rollout.topic, rollout.version));
            };
            if effect.withdraw {
                version.scopes.clear();
            }
            if let Some(scope) = &effect.add_scope {
                if !version.scopes.contains(scope) {
                    version.scopes.push(scope.clone());
                }
            }
            sqlx::query(
                "UPDATE ds_versions SET scopes = ?, withdrawn = withdrawn OR ? WHERE topic = ? AND version = ?",
            )
            .bind(scopes_json(&version.scopes))
            .bind(effect.withdraw)
            .bind(&rollout.topic)
            .bind(rollout.version as i64)
            .execute(&mut *tx)
            .await?;
        }
        bump(&mut tx, &rollout.topic).await?;
        write_audit(&mut tx, &rollout.topic, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM ds_rollouts WHERE id = ?"
        ))
        .bind(rollout.id as i64)
        .fetch_one(&mut *tx)
        .await?;
        let saved = rollout_from_row(&row)?;
        tx.commit().await?;
        Ok(saved)
    }

    async fn delete_versions(
        &self,
        topic: &str,
        versions: &[u64],
        audit: NewAudit,
    ) -> Result<Vec<Version>> {
        let mut tx = self.begin_write().await?;
        let mut deleted = Vec::new();
        for &number in versions {
            let pinned: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM ds_pins WHERE topic = ? AND version = ? LIMIT 1")
                    .bind(topic)
                    .bind(to_i64(number, "version")?)
                    .fetch_optional(&mut *tx)
                    .await?;
            if pinned.is_some() {
                continue;
            }
            // A rollout may have started since the janitor read its snapshot.
            let rolling: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM ds_rollouts WHERE topic = ? AND version = ? AND state IN ('running', 'paused') LIMIT 1",
            )
            .bind(topic)
            .bind(number as i64)
            .fetch_optional(&mut *tx)
            .await?;
            if rolling.is_some() {
                continue;
            }
            let Some(version) = version_in_tx(&mut tx, topic, number).await? else {
                continue;
            };
            sqlx::query("DELETE FROM ds_versions WHERE topic = ? AND version = ?")
                .bind(topic)
                .bind(number as i64)
                .execute(&mut *tx)
                .await?;
            deleted.push(version);
        }
        if !deleted.is_empty() {
            bump(&mut tx, topic).await?;
            let list: Vec<String> = deleted.iter().map(|v| v.version.to_string()).collect();
            let audit = NewAudit {
                detail: if audit.detail.is_empty() {
                    format!("versions {}", list.join(","))
                } else {
                    format!("{}: versions {}", audit.detail, list.join(","))
                },
                ..audit
            };
            write_audit(&mut tx, topic, &audit).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>> {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT blob_key FROM ds_versions WHERE blob_key IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(keys.into_iter().collect())
    }

    async fn touch_consumed(&self, topic: &str, at_ms: i64) -> Result<()> {
        // Not a change consumers need to see: no generation bump.
        sqlx::query(
            "UPDATE ds_topics SET last_consumed_at_ms = MAX(COALESCE(last_consumed_at_ms, 0), ?) WHERE name = ?",
        )
        .bind(at_ms)
        .bind(topic)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
