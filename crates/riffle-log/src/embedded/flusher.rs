//! Group commit: one thread fsyncs every partition written since its last
//! round and wakes all writers waiting on them, so many concurrent appends
//! share one fsync. A round starts when the oldest pending write is
//! `interval` old or `max_bytes` are pending, whichever comes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::error;

use super::partition::Partition;

struct State {
    dirty: Vec<Arc<Partition>>,
    pending_bytes: u64,
    first_dirty_at: Option<Instant>,
    shutdown: bool,
}

pub(crate) struct Flusher {
    state: Mutex<State>,
    cv: Condvar,
    interval: Duration,
    max_bytes: u64,
}

impl Flusher {
    pub fn new(interval: Duration, max_bytes: u64) -> Arc<Flusher> {
        Arc::new(Flusher {
            state: Mutex::new(State {
                dirty: Vec::new(),
                pending_bytes: 0,
                first_dirty_at: None,
                shutdown: false,
            }),
            cv: Condvar::new(),
            interval,
            max_bytes,
        })
    }

    pub fn spawn(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let flusher = self.clone();
        std::thread::Builder::new()
            .name("riffle-log-flush".into())
            .spawn(move || flusher.run())
            .expect("spawn flusher thread")
    }

    pub fn mark_dirty(&self, partition: &Arc<Partition>, bytes: u64) {
        let mut state = self.state.lock();
        // A partition already marked is either in `dirty` or being flushed
        // by a round that will cover this write (it was written before this
        // call, and the round reads the write position after clearing the
        // flag).
        let newly_dirty = !partition
            .dirty
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        if newly_dirty {
            state.dirty.push(partition.clone());
            if state.first_dirty_at.is_none() {
                state.first_dirty_at = Some(Instant::now());
            }
        }
        state.pending_bytes += bytes;
        let wake = (newly_dirty && state.dirty.len() == 1) || state.pending_bytes >= self.max_bytes;
        drop(state);
        if wake {
            self.cv.notify_one();
        }
    }

    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cv.notify_one();
    }

    fn run(&self) {
        loop {
            let dirty = {
                let mut state = self.state.lock();
                while state.dirty.is_empty() && !state.shutdown {
                    self.cv.wait(&mut state);
                }
                if state.dirty.is_empty() && state.shutdown {
                    return;
                }
                while !state.shutdown && state.pending_bytes < self.max_bytes {
                    let started = state.first_dirty_at.unwrap_or_else(Instant::now);
                    let deadline = started + self.interval;
                    if Instant::now() >= deadline {
                        break;
                    }
                    self.cv.wait_until(&mut state, deadline);
                }
                state.pending_bytes = 0;
                state.first_dirty_at = None;
                std::mem::take(&mut state.dirty)
            };
            for partition in dirty {
                partition
                    .dirty
                    .store(false, std::sync::atomic::Ordering::Release);
                if let Err(e) = partition.flush() {
                    // Never retry an fsync (the kernel may have dropped the
                    // pages it failed to write): fail the partition and its
                    // waiters; reopening the log re-validates the segment.
                    error!(topic = %partition.topic, partition = partition.id, error = %e, "fsync failed; partition refuses writes until the log is reopened");
                    partition.fail();
                }
            }
        }
    }
}
