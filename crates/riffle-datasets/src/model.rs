//! The dataset model: topics, immutable versions, scopes, labels, pins,
//! audit entries and rollouts, with their validation and the one function
//! every consumer answer goes through, [`resolve`].
//!
//! Scope semantics: a version's scopes are the audiences it is published to.
//! A scope is `key=value` (a consumer whose labels carry that pair is in the
//! audience) or `*` (everyone: a global version). A version matches a
//! consumer when ANY of its scopes matches, so adding scopes (by hand or
//! by a rollout stage) only widens the audience. A version with no scopes
//! at all (published with `staged=true`, or withdrawn by an aborted
//! rollout) is visible to nobody.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// The scope that matches every consumer.
pub const GLOBAL_SCOPE: &str = "*";

const MAX_NAME_BYTES: usize = 200;
const MAX_LABEL_BYTES: usize = 128;

/// Topic names: 1–200 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(DatasetError::invalid(format!(
            "name: {name:?} must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(DatasetError::invalid(format!(
            "name: {name:?} may only contain letters, digits, '.', '_' and '-' and must not start with '.'"
        )));
    }
    Ok(())
}

fn valid_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}

/// `key=value`, or `*` for every consumer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope {
    key: String,
    value: String,
}

impl Scope {
    pub fn global() -> Self {
        Scope {
            key: GLOBAL_SCOPE.into(),
            value: String::new(),
        }
    }

    pub fn is_global(&self) -> bool {
        self.key == GLOBAL_SCOPE
    }

    /// Parses `key=value` or `*`; `field` names the parameter in errors.
    pub fn parse_field(s: &str, field: &str) -> Result<Self> {
        let s = s.trim();
        if s == GLOBAL_SCOPE {
            return Ok(Scope::global());
        }
        let Some((key, value)) = s.split_once('=') else {
            return Err(DatasetError::invalid(format!(
                "{field}: {s:?} is not key=value or \"*\""
            )));
        };
        if !valid_label_part(key) || !valid_label_part(value) {
            return Err(DatasetError::invalid(format!(
                "{field}: {s:?}: key and value must be 1 to {MAX_LABEL_BYTES} bytes of letters, digits, '.', '_', '-', '/', ':'"
            )));
        }
        Ok(Scope {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.is_global() || labels.get(&self.key) == Some(self.value.as_str())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_global() {
            f.write_str(GLOBAL_SCOPE)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self> {
        Scope::parse_field(s, "scope")
    }
}

impl TryFrom<String> for Scope {
    type Error = DatasetError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.to_string()
    }
}

/// A consumer's labels: `region=us-east,app=recommender`. One value per key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Parses `k=v,k=v` (empty = no labels); `field` names the parameter.
    pub fn parse_field(s: &str, field: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::parse_field(part, field)?;
            if scope.is_global() {
                return Err(DatasetError::invalid(format!(
                    "{field}: \"*\" is a scope, not a label"
                )));
            }
            if let Some(previous) = map.insert(scope.key.clone(), scope.value.clone()) {
                return Err(DatasetError::invalid(format!(
                    "{field}: label {:?} given twice ({previous:?} and {:?})",
                    scope.key, scope.value
                )));
            }
        }
        Ok(Labels(map))
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Labels(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Parses a duration: `250ms`, `30s`, `10m`, `1h`, `30d`, or plain
/// milliseconds. `field` names the parameter in errors.
pub fn parse_duration_ms(s: &str, field: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || {
        DatasetError::invalid(format!(
            "{field}: {s:?} is not a duration (e.g. 500ms, 30s, 10m, 1h, 30d)"
        ))
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// Where a version's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataLocation {
    /// Small payloads, in the metadata store itself.
    Inline,
    /// A content-addressed object in the blob store.
    Blob(String),
}

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub owner: String,
    pub description: String,
    /// Keep at most this many versions (pinned ones and the newest per
    /// audience are always kept).
    pub retention_count: Option<u64>,
    /// Delete versions older than this.
    pub retention_age_ms: Option<u64>,
    /// The topic's data key wrapped by the server's master key; `Some`
    /// means payloads are encrypted at rest.
    pub wrapped_key: Option<Vec<u8>>,
    pub created_at_ms: i64,
    pub created_by: String,
    /// Bumped by every change to the topic, its versions, pins or
    /// rollouts: the consume caches reload a topic when it moves.
    pub generation: u64,
    pub last_published_at_ms: Option<i64>,
    pub last_consumed_at_ms: Option<i64>,
}

/// What a create request carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub retention_count: Option<u64>,
    pub retention_age_ms: Option<u64>,
    pub wrapped_key: Option<Vec<u8>>,
}

/// One immutable version of a topic (its payload aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub topic: String,
    pub version: u64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub metadata: BTreeMap<String, String>,
    /// `sha256:<hex>` of the plaintext payload.
    pub checksum: String,
    /// Plaintext payload size in bytes.
    pub size: u64,
    pub location: DataLocation,
    pub scopes: Vec<Scope>,
    /// Withdrawn by an aborted rollout: visible to nobody, and consumers
    /// holding it are moved back.
    pub withdrawn: bool,
}

impl Version {
    pub fn matches(&self, labels: &Labels) -> bool {
        !self.withdrawn && self.scopes.iter().any(|s| s.matches(labels))
    }
}

/// What a publish hands the metadata store (the number is assigned there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub created_at_ms: i64,
    pub created_by: String,
    pub metadata: BTreeMap<String, String>,
    pub checksum: String,
    pub size: u64,
    pub location: DataLocation,
    /// The stored (possibly encrypted) inline bytes, for `Inline`.
    pub inline_data: Option<Vec<u8>>,
    pub scopes: Vec<Scope>,
}

/// A pin: consumers in `scope` (everyone when `None`) get `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub topic: String,
    pub scope: Option<Scope>,
    pub version: u64,
    pub pinned_at_ms: i64,
    pub pinned_by: String,
}

/// Who did what, when. Every publish, scope change, pin, unpin, rollout
/// transition, expiry and topic create/delete leaves one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: u64,
    pub topic: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub version: Option<u64>,
    pub detail: String,
}

/// An audit record to write (the store assigns the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub version: Option<u64>,
    pub detail: String,
}

impl NewAudit {
    pub fn new(at_ms: i64, actor: &str, action: &str, version: Option<u64>) -> Self {
        NewAudit {
            at_ms,
            actor: actor.into(),
            action: action.into(),
            version,
            detail: String::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStage {
    pub scope: Scope,
    /// Wait this long after the previous stage (after the start for the
    /// first stage) before adding `scope` to the version.
    pub delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            "completed" => RolloutState::Completed,
            "aborted" => RolloutState::Aborted,
            other => {
                return Err(DatasetError::internal(format!(
                    "rollout state {other:?} unknown"
                )))
            }
        })
    }

    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// A staged rollout of one version. `next_stage` stages have been applied;
/// while running, the next applies at `next_at_ms`; while paused,
/// `remaining_ms` of its delay is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub id: u64,
    pub topic: String,
    pub version: u64,
    pub stages: Vec<RolloutStage>,
    pub next_stage: usize,
    pub state: RolloutState,
    pub next_at_ms: Option<i64>,
    pub remaining_ms: Option<u64>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    /// Optimistic concurrency: every save must carry the revision it read.
    pub revision: u64,
}

/// What saving a rollout transition also does to the version, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutEffect {
    /// A stage applied: add this scope to the version.
    pub add_scope: Option<Scope>,
    /// Aborted: the version loses every scope and is marked withdrawn.
    pub withdraw: bool,
}

/// How a consumer's answer was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The newest version matching the consumer's labels.
    Latest,
    /// A pin for the consumer's scope (or the whole topic).
    Pinned,
    /// The consumer's version was withdrawn (aborted rollout); this is the
    /// newest it may hold instead.
    Rollback,
}

/// Picks the version a consumer with `labels` should hold: a matching
/// scoped pin (the most recent one if several match), else a topic-wide
/// pin, else the newest non-withdrawn version whose scopes match.
/// `versions` is sorted by version, newest first.
pub fn resolve<'a>(
    versions: &'a [Version],
    pins: &[Pin],
    labels: &Labels,
) -> Option<(&'a Version, Reason)> {
    let find = |n: u64| versions.iter().find(|v| v.version == n);
    let scoped = pins
        .iter()
        .filter(|p| p.scope.as_ref().is_some_and(|s| s.matches(labels)))
        .max_by_key(|p| (p.pinned_at_ms, p.version));
    let pin = scoped.or_else(|| pins.iter().find(|p| p.scope.is_none()));
    // A pin to a withdrawn version (its rollout was aborted) no longer
    // hands it out.
    if let Some(version) = pin.and_then(|p| find(p.version)).filter(|v| !v.withdrawn) {
        return Some((version, Reason::Pinned));
    }
    versions
        .iter()
        .find(|v| v.matches(labels))
        .map(|v| (v, Reason::Latest))
}

/// Whether a consumer holding `after` (0 = nothing) should be handed
/// `resolved` now. Consumers only move forward, except to a pinned version
/// or away from a withdrawn one.
pub fn is_news(resolved: &Version, reason: Reason, after: u64, after_withdrawn: bool) -> bool {
    match reason {
        Reason::Pinned => resolved.version != after,
        Reason::Latest | Reason::Rollback => {
            resolved.version > after || (after_withdrawn && resolved.version != after)
        }
    }
}

/// Versions a retention policy lets the janitor delete at `now_ms`:
/// beyond `retention_count` newest or older than `retention_age_ms`, but
/// never a pinned version, a version under an active rollout, or the
/// newest version of any of its audiences (so no consumer is left with
/// nothing), nor a withdrawn version newer than every visible one (the
/// tombstone that moves its holders back). `versions` is sorted newest
/// first.
pub fn expired_versions(
    topic: &Topic,
    versions: &[Version],
    pins: &[Pin],
    active_rollouts: &[u64],
    now_ms: i64,
) -> Vec<u64> {
    let mut expired = Vec::new();
    for (rank, v) in versions.iter().enumerate() {
        let by_count = topic
            .retention_count
            .is_some_and(|count| rank as u64 >= count);
        let by_age = topic
            .retention_age_ms
            .is_some_and(|age| now_ms.saturating_sub(v.created_at_ms) > age as i64);
        if !(by_count || by_age) {
            continue;
        }
        if pins.iter().any(|p| p.version == v.version) || active_rollouts.contains(&v.version) {
            continue;
        }
        // A withdrawn version newer than every visible one stays as a
        // tombstone: consumers still holding it must be told to move back.
        let tombstone = v.withdrawn && versions[..rank].iter().all(|w| w.withdrawn);
        if tombstone {
            continue;
        }
        let newer = &versions[..rank];
        let newest_of_an_audience = !v.withdrawn
            && v.scopes.iter().any(|s| {
                !newer
                    .iter()
                    .any(|w| !w.withdrawn && w.scopes.iter().any(|ws| ws.is_global() || ws == s))
            });
        if newest_of_an_audience {
            continue;
        }
        expired.push(v.version);
    }
    expired
}

/// Collects a metadata map from `meta.KEY=VALUE` pairs, rejecting
/// duplicates; shared by the HTTP surface and the CLI.
pub fn metadata_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (key, value) in pairs {
        if key.is_empty() || key.len() > 128 {
            return Err(DatasetError::invalid(format!(
                "meta.{key}: metadata keys must be 1 to 128 bytes"
            )));
        }
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(DatasetError::invalid(format!(
                "meta.{key}: given more than once"
            )));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64, scopes: &[&str]) -> Version {
        Version {
            topic: "t".into(),
            version: n,
            created_at_ms: n as i64 * 1000,
            created_by: "test".into(),
            metadata: BTreeMap::new(),
            checksum: String::new(),
            size: 0,
            location: DataLocation::Inline,
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            withdrawn: false,
        }
    }

    fn pin(scope: Option<&str>, n: u64, at: i64) -> Pin {
        Pin {
            topic: "t".into(),
            scope: scope.map(|s| s.parse().unwrap()),
            version: n,
            pinned_at_ms: at,
            pinned_by: "test".into(),
        }
    }

    fn labels(s: &str) -> Labels {
        Labels::parse_field(s, "labels").unwrap()
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = Scope::parse_field("region", "scope").unwrap_err();
        assert!(
            e.message().starts_with("scope: \"region\""),
            "{}",
            e.message()
        );
        let e = Labels::parse_field("a=1,a=2", "labels").unwrap_err();
        assert!(e.message().contains("given twice"), "{}", e.message());
        let e = Labels::parse_field("a=1,*", "labels").unwrap_err();
        assert!(e.message().starts_with("labels:"), "{}", e.message());
        assert!(validate_topic_name("models.ranker-v2").is_ok());
        for bad in ["", ".hidden", "a b", "a/b", &"x".repeat(201)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration_ms("30s", "wait").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("250", "wait").unwrap(), 250);
        assert_eq!(parse_duration_ms("30d", "age").unwrap(), 2_592_000_000);
        assert!(parse_duration_ms("3x", "wait")
            .unwrap_err()
            .message()
            .starts_with("wait: \"3x\""));
        assert!(parse_duration_ms("", "wait").is_err());
    }

    #[test]
    fn latest_is_the_newest_matching_version() {
        let versions = vec![
            version(4, &["cluster=canary"]),
            version(3, &["region=eu", "region=us-east"]),
            version(2, &["*"]),
            version(1, &["region=us-east"]),
        ];
        let pick = |l: &str| resolve(&versions, &[], &labels(l)).map(|(v, _)| v.version);
        assert_eq!(pick("cluster=canary,region=eu"), Some(4));
        assert_eq!(pick("region=us-east"), Some(3));
        assert_eq!(pick("region=eu"), Some(3));
        assert_eq!(pick("region=ap"), Some(2));
        assert_eq!(pick(""), Some(2));
        // Nothing global: an unlabelled consumer gets nothing.
        assert_eq!(
            resolve(&versions[..2], &[], &labels("")).map(|(v, _)| v.version),
            None
        );
    }

    #[test]
    fn pins_override_and_scoped_pins_win() {
        let versions = vec![version(3, &["*"]), version(2, &["*"]), version(1, &["*"])];
        let pins = vec![
            pin(None, 2, 10),
            pin(Some("region=eu"), 1, 5),
            pin(Some("app=x"), 3, 20),
        ];
        let pick = |l: &str| resolve(&versions, &pins, &labels(l)).unwrap();
        assert_eq!(pick("").0.version, 2);
        assert_eq!(pick("").1, Reason::Pinned);
        assert_eq!(pick("region=eu").0.version, 1);
        // Two scoped pins match: the most recent wins.
        assert_eq!(pick("region=eu,app=x").0.version, 3);
    }

    #[test]
    fn withdrawn_versions_are_skipped_and_roll_consumers_back() {
        let mut v3 = version(3, &[]);
        v3.withdrawn = true;
        let versions = vec![v3, version(2, &["*"])];
        let (v, reason) = resolve(&versions, &[], &labels("")).unwrap();
        assert_eq!((v.version, reason), (2, Reason::Latest));
        assert!(is_news(v, reason, 3, true), "moved off a withdrawn version");
        assert!(!is_news(v, reason, 3, false), "never backwards otherwise");
        assert!(!is_news(v, reason, 2, false));
        assert!(is_news(v, reason, 1, false));
        assert!(is_news(v, Reason::Pinned, 3, false), "pins move back");
        // A pin to the withdrawn version no longer hands it out.
        let pinned = resolve(&versions, &[pin(None, 3, 1)], &labels(""));
        assert_eq!(
            pinned.map(|(v, r)| (v.version, r)),
            Some((2, Reason::Latest))
        );
    }

    #[test]
    fn retention_keeps_pins_rollouts_and_each_audience_newest() {
        let topic = Topic {
            name: "t".into(),
            owner: String::new(),
            description: String::new(),
            retention_count: Some(2),
            retention_age_ms: None,
            wrapped_key: None,
            created_at_ms: 0,
            created_by: String::new(),
            generation: 0,
            last_published_at_ms: None,
            last_consumed_at_ms: None,
        };
        let versions = vec![
            version(6, &["*"]),
            version(5, &["*"]),
            version(4, &["region=eu"]),
            version(3, &["region=ap"]),
            version(2, &["*"]),
            version(1, &["*"]),
        ];
        let pins = vec![pin(None, 1, 0)];
        // 4: region=eu is covered by the newer global 5 and 6 → expired;
        // 3: likewise; 2 expired; 1 pinned.
        assert_eq!(
            expired_versions(&topic, &versions, &pins, &[], 0),
            vec![4, 3, 2]
        );
        assert_eq!(
            expired_versions(&topic, &versions, &[], &[2], 0),
            vec![4, 3, 1]
        );
        let scoped = vec![
            version(3, &["cluster=canary"]),
            version(2, &["cluster=canary"]),
            version(1, &["*"]),
        ];
        let topic1 = Topic {
            retention_count: Some(1),
            ..topic.clone()
        };
        // 1 is the only global version left: kept although over the count.
        assert_eq!(expired_versions(&topic1, &scoped, &[], &[], 0), vec![2]);
        let aged = Topic {
            retention_count: None,
            retention_age_ms: Some(2500),
            ..topic
        };
        // Created at n s, now 5 s: 2 and 1 are older than 2.5 s, but 2 is
        // the newest global version (3 is region=ap only) and stays.
        assert_eq!(
            expired_versions(&aged, &versions[3..], &[], &[], 5000),
            vec![1]
        );
    }
}
