//! Consumer groups: durably committed offsets (one JSON file per group,
//! replaced atomically) and in-process membership that splits the
//! subscribed partitions among the members.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::segment::write_file_durably;
use crate::bus::TopicPartition;
use crate::error::{BusError, Result};

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    group: String,
    /// topic → partition → next offset to read
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

#[derive(Debug, Default)]
struct Group {
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// member id → subscribed topics
    members: BTreeMap<u64, Vec<String>>,
    generation: u64,
}

pub(crate) struct Groups {
    dir: PathBuf,
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
    /// Bumped on every membership change so polling members re-check.
    pub changes: watch::Sender<u64>,
}

pub(crate) fn validate_group_name(group: &str) -> Result<()> {
    riffle_core::config::validate_topic_name(group).map_err(|e| {
        BusError::InvalidArgument(format!(
            "group: {}",
            e.message().replace("topic name", "group name")
        ))
    })
}

impl Groups {
    pub fn open(dir: &Path) -> Result<Groups> {
        std::fs::create_dir_all(dir).map_err(|e| BusError::io(dir, e))?;
        let mut groups = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| BusError::io(dir, e))? {
            let entry = entry.map_err(|e| BusError::io(dir, e))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(|e| BusError::io(&path, e))?;
                let file: GroupFile =
                    serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
                        path: path.clone(),
                        position: 0,
                        reason: e.to_string(),
                    })?;
                groups.insert(
                    file.group.clone(),
                    Group {
                        offsets: file.offsets,
                        ..Default::default()
                    },
                );
            } else if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        let (changes, _) = watch::channel(0);
        Ok(Groups {
            dir: dir.to_path_buf(),
            groups: Mutex::new(groups),
            next_member: std::sync::atomic::AtomicU64::new(1),
            changes,
        })
    }

    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<_> = self.groups.lock().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<u32, u64> {
        self.groups
            .lock()
            .get(group)
            .and_then(|g| g.offsets.get(topic).cloned())
            .unwrap_or_default()
    }

    pub fn committed_one(&self, group: &str, tp: &TopicPartition) -> Option<u64> {
        self.groups
            .lock()
            .get(group)
            .and_then(|g| g.offsets.get(&tp.topic))
            .and_then(|p| p.get(&tp.partition).copied())
    }

    /// Durably records offsets; returns once the group file is fsynced.
    pub fn commit(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        validate_group_name(group)?;
        let mut groups = self.groups.lock();
        // Build the new state aside and publish it only once it is durable,
        // so a failed write leaves memory and disk agreeing.
        let mut next = groups
            .get(group)
            .map(|g| g.offsets.clone())
            .unwrap_or_default();
        for (tp, offset) in offsets {
            next.entry(tp.topic.clone())
                .or_default()
                .insert(tp.partition, *offset);
        }
        let file = GroupFile {
            group: group.to_string(),
            offsets: next,
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("group file serializes");
        write_file_durably(&self.path(group), &bytes)?;
        groups.entry(group.to_string()).or_default().offsets = file.offsets;
        Ok(())
    }

    /// Forgets a deleted topic's offsets in every group.
    pub fn remove_topic(&self, topic: &str) -> Result<()> {
        let mut groups = self.groups.lock();
        for (name, group) in groups.iter_mut() {
            if group.offsets.remove(topic).is_some() {
                let file = GroupFile {
                    group: name.clone(),
                    offsets: group.offsets.clone(),
                };
                let bytes = serde_json::to_vec_pretty(&file).expect("group file serializes");
                write_file_durably(&self.path(name), &bytes)?;
            }
        }
        Ok(())
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.json"))
    }

    pub fn join(&self, group: &str, topics: Vec<String>) -> u64 {
        let member = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut groups = self.groups.lock();
        let entry = groups.entry(group.to_string()).or_default();
        entry.members.insert(member, topics);
        entry.generation += 1;
        drop(groups);
        self.changes.send_modify(|v| *v += 1);
        member
    }

    pub fn leave(&self, group: &str, member: u64) {
        let mut groups = self.groups.lock();
        if let Some(entry) = groups.get_mut(group) {
            if entry.members.remove(&member).is_some() {
                entry.generation += 1;
            }
        }
        drop(groups);
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn generation(&self, group: &str) -> u64 {
        self.groups.lock().get(group).map_or(0, |g| g.generation)
    }

    /// The partitions `member` owns: for each topic, its partitions are dealt
    /// round-robin to the members subscribed to it, ordered by member id.
    pub fn assignment(
        &self,
        group: &str,
        member: u64,
        partition_counts: &dyn Fn(&str) -> Option<u32>,
    ) -> (u64, Vec<TopicPartition>) {
        let groups = self.groups.lock();
        let Some(entry) = groups.get(group) else {
            return (0, Vec::new());
        };
        let mut out = Vec::new();
        let Some(my_topics) = entry.members.get(&member) else {
            return (entry.generation, out);
        };
        for topic in my_topics {
            let members: Vec<u64> = entry
                .members
                .iter()
                .filter(|(_, topics)| topics.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            let me = members.iter().position(|m| *m == member).unwrap_or(0);
            let count = partition_counts(topic).unwrap_or(0);
            for partition in 0..count {
                if partition as usize % members.len() == me {
                    out.push(TopicPartition::new(topic.clone(), partition));
                }
            }
        }
        (entry.generation, out)
    }
}
