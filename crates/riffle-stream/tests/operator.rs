//! A small windowed count operator built on the trait and the window,
//! lateness and dedup blocks, run straight through and with a checkpoint and
//! restore in the middle: the outputs must be identical.

use std::collections::BTreeMap;

use proptest::prelude::*;
use riffle_stream::{
    CheckpointId, Collector, DedupConfig, Deduplicator, Lateness, LatenessPolicy, Operator,
    StreamError, Verdict, Window, WindowAssigner, WindowSpec,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
struct Click {
    id: u32,
    ad: u8,
    ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    /// The count of a closed window; emitted again (an upsert) when a late
    /// event within the allowed lateness changes it.
    Count {
        window: Window,
        ad: u8,
        count: u64,
    },
    Late {
        id: u32,
        reason: &'static str,
    },
}

#[derive(Default)]
struct CountState {
    counts: BTreeMap<(i64, i64, u8), u64>,
    dirty: Vec<(i64, i64, u8)>,
    watermark: i64,
}

/// JSON form of [`CountState`]: JSON object keys must be strings.
#[derive(Serialize, Deserialize)]
struct SavedState {
    counts: Vec<((i64, i64, u8), u64)>,
    dirty: Vec<(i64, i64, u8)>,
    watermark: i64,
}

struct WindowCount {
    assigner: WindowAssigner,
    lateness: LatenessPolicy,
    dedup: Deduplicator,
    state: CountState,
}

impl WindowCount {
    fn new() -> Self {
        let lateness = LatenessPolicy {
            allowed_lateness_ms: 20,
        };
        let dedup_config = DedupConfig {
            horizon_ms: 40,
            bucket_ms: 10,
            seed: 3,
        };
        Self {
            assigner: WindowAssigner::new(WindowSpec::Hopping {
                size_ms: 20,
                slide_ms: 10,
            })
            .unwrap(),
            lateness,
            dedup: Deduplicator::new(dedup_config, lateness.allowed_lateness_ms).unwrap(),
            state: CountState {
                watermark: i64::MIN,
                ..CountState::default()
            },
        }
    }
}

impl Operator for WindowCount {
    type In<'a> = Vec<Click>;
    type Out = Output;

    fn name(&self) -> &str {
        "window_count"
    }

    fn process_batch<'a>(
        &mut self,
        batch: Vec<Click>,
        out: &mut Collector<Output>,
    ) -> riffle_stream::Result<()> {
        for click in batch {
            match self
                .dedup
                .check_and_insert(&click.id.to_le_bytes(), click.ts)
            {
                Verdict::Duplicate => continue,
                Verdict::Expired => {
                    out.collect(Output::Late {
                        id: click.id,
                        reason: "beyond dedup horizon",
                    });
                    continue;
                }
                Verdict::New => {}
            }
            for window in self.assigner.assign(click.ts) {
                match self.lateness.classify(window, self.state.watermark) {
                    Lateness::OnTime => {}
                    Lateness::LateWithinAllowed => {
                        self.state.dirty.push((window.start, window.end, click.ad))
                    }
                    Lateness::TooLate => {
                        out.collect(Output::Late {
                            id: click.id,
                            reason: "beyond allowed lateness",
                        });
                        continue;
                    }
                }
                *self
                    .state
                    .counts
                    .entry((window.start, window.end, click.ad))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    fn handle_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector<Output>,
    ) -> riffle_stream::Result<Option<i64>> {
        let previous = self.state.watermark;
        self.state.watermark = watermark.max(previous);
        self.state.dirty.sort_unstable();
        self.state.dirty.dedup();
        for (start, end, ad) in self.state.dirty.drain(..) {
            let count = self.state.counts[&(start, end, ad)];
            out.collect(Output::Count {
                window: Window { start, end },
                ad,
                count,
            });
        }
        for (&(start, end, ad), &count) in &self.state.counts {
            if end > previous && end <= self.state.watermark {
                out.collect(Output::Count {
                    window: Window { start, end },
                    ad,
                    count,
                });
            }
        }
        let lateness = self.lateness;
        let current = self.state.watermark;
        self.state
            .counts
            .retain(|&(start, end, _), _| lateness.retain_until(Window { start, end }) > current);
        self.dedup.evict(current);
        Ok(Some(current))
    }

    fn handle_checkpoint(
        &mut self,
        _checkpoint: CheckpointId,
        _out: &mut Collector<Output>,
    ) -> riffle_stream::Result<Vec<u8>> {
        let saved = SavedState {
            counts: self.state.counts.iter().map(|(&k, &v)| (k, v)).collect(),
            dirty: self.state.dirty.clone(),
            watermark: self.state.watermark,
        };
        let mut bytes = serde_json::to_vec(&saved).map_err(|error| StreamError::Operator {
            operator: self.name().to_owned(),
            reason: error.to_string(),
        })?;
        let dedup = self.dedup.snapshot();
        bytes.extend_from_slice(&dedup);
        bytes.extend_from_slice(&(dedup.len() as u64).to_le_bytes());
        Ok(bytes)
    }

    fn restore(&mut self, state: &[u8]) -> riffle_stream::Result<()> {
        let fail = |reason: String| StreamError::Operator {
            operator: "window_count".to_owned(),
            reason,
        };
        let (rest, len) = state
            .split_last_chunk::<8>()
            .ok_or_else(|| fail("state too short".to_owned()))?;
        let dedup_len = u64::from_le_bytes(*len) as usize;
        let split = rest
            .len()
            .checked_sub(dedup_len)
            .ok_or_else(|| fail("bad dedup length".to_owned()))?;
        let saved: SavedState =
            serde_json::from_slice(&rest[..split]).map_err(|e| fail(e.to_string()))?;
        self.state = CountState {
            counts: saved.counts.into_iter().collect(),
            dirty: saved.dirty,
            watermark: saved.watermark,
        };
        self.dedup = Deduplicator::restore(
            self.dedup.config(),
            self.lateness.allowed_lateness_ms,
            &rest[split..],
        )?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<Click>),
    Watermark(i64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let click = (0u32..80, 0u8..3, 0i64..200).prop_map(|(id, ad, ts)| Click { id, ad, ts });
    prop::collection::vec(
        prop_oneof![
            3 => prop::collection::vec(click, 0..8).prop_map(Step::Batch),
            1 => (0i64..250).prop_map(Step::Watermark),
        ],
        0..40,
    )
}

fn run(op: &mut WindowCount, steps: &[Step], out: &mut Collector<Output>) -> Vec<Output> {
    for step in steps {
        match step {
            Step::Batch(batch) => op.process_batch(batch.clone(), out).unwrap(),
            Step::Watermark(w) => {
                op.handle_watermark(*w, out).unwrap();
            }
        }
    }
    out.drain().collect()
}

#[test]
fn counts_late_updates_and_too_late() {
    let mut op = WindowCount::new();
    let mut out = Collector::new();
    let click = |id, ts| Click { id, ad: 1, ts };
    let got = run(
        &mut op,
        &[
            Step::Batch(vec![click(1, 5), click(1, 5), click(2, 12)]),
            Step::Watermark(20),
            // Late for [0,20) but within 20 ms: an updated count.
            Step::Batch(vec![click(3, 15)]),
            Step::Watermark(40),
            // [0,20) and [10,30) are gone by watermark 50: too late.
            Step::Watermark(50),
            Step::Batch(vec![click(4, 19)]),
        ],
        &mut out,
    );
    let w = |start: i64| Window {
        start,
        end: start + 20,
    };
    assert_eq!(
        got,
        vec![
            Output::Count {
                window: w(-10),
                ad: 1,
                count: 1
            },
            Output::Count {
                window: w(0),
                ad: 1,
                count: 2
            },
            Output::Count {
                window: w(0),
                ad: 1,
                count: 3
            },
            Output::Count {
                window: w(10),
                ad: 1,
                count: 2
            },
            Output::Late {
                id: 4,
                reason: "beyond allowed lateness"
            },
            Output::Late {
                id: 4,
                reason: "beyond allowed lateness"
            },
        ]
    );
}

proptest! {
    #[test]
    fn checkpoint_and_restore_gives_identical_output(steps in steps(), cut in any::<prop::sample::Index>()) {
        let mut straight = WindowCount::new();
        let mut out = Collector::new();
        let expected = run(&mut straight, &steps, &mut out);

        let cut = cut.index(steps.len() + 1);
        let mut first = WindowCount::new();
        let mut got = run(&mut first, &steps[..cut], &mut out);
        let state = first.handle_checkpoint(1, &mut out).unwrap();
        first.handle_commit(1).unwrap();
        drop(first);
        let mut second = WindowCount::new();
        second.restore(&state).unwrap();
        got.extend(run(&mut second, &steps[cut..], &mut out));
        prop_assert_eq!(got, expected);
    }
}
