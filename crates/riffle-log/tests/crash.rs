//! Crash test: a child process appends batches from several concurrent
//! writers and prints each acknowledgement; the parent SIGKILLs it at random
//! moments. After every kill the log must hold every acknowledged record,
//! in order, exactly once, and nothing else but well-formed records that
//! were written by the child (an append can be durable a moment before its
//! acknowledgement is printed).
//!
//! The child is this same test binary, re-run with `RIFFLE_CRASH_CHILD_DIR`
//! set, so the test needs no extra binary.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use riffle_log::{Admin, EmbeddedLog, LogOptions, Producer, RecordBatch};

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
const WRITERS: u32 = 4;
const ROUNDS: u32 = 24;

fn options() -> LogOptions {
    let mut options = LogOptions::default();
    options.default_topic.segment_bytes = 64 << 10; // many segment rolls
    options
}

/// The child: appends until killed. Each acknowledgement line is
/// `ACK <partition> <base> <count> <writer> <round> <first_seq>`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("RIFFLE_CRASH_CHILD_DIR") else {
        return; // only meaningful as the child of `acknowledged_records_survive_sigkill`
    };
    let round: u32 = std::env::var("RIFFLE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(EmbeddedLog::open(&dir, options()).unwrap());
        if !log.topic_exists(TOPIC) {
            let mut config = options().default_topic.clone();
            config.partitions = PARTITIONS;
            log.create_topic(TOPIC, config).await.unwrap();
        }
        println!("READY");
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                let mut rng = rand::rngs::StdRng::seed_from_u64((round * 100 + writer) as u64);
                loop {
                    let partition = rng.gen_range(0..PARTITIONS);
                    let count = rng.gen_range(1..200u64);
                    let mut batch = RecordBatch::new();
                    for i in 0..count {
                        let value = format!(
                            "w{writer}-r{round}-s{}-{}",
                            seq + i,
                            "x".repeat(rng.gen_range(0..120))
                        );
                        batch.push(
                            Some(format!("k{}", seq + i).as_bytes()),
                            value.as_bytes(),
                            (seq + i) as i64,
                        );
                    }
                    let base = log.append(TOPIC, partition, batch).await.unwrap();
                    println!("ACK {partition} {base} {count} {writer} {round} {seq}");
                    seq += count;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

use rand::SeedableRng;

#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: u32,
    base: u64,
    count: u64,
    writer: u32,
    round: u32,
    first_seq: u64,
}

fn parse_value(value: &[u8]) -> (u32, u32, u64) {
    let text = std::str::from_utf8(value).expect("record value is utf-8");
    let mut parts = text.splitn(4, '-');
    let writer = parts
        .next()
        .unwrap()
        .strip_prefix('w')
        .unwrap()
        .parse()
        .unwrap();
    let round = parts
        .next()
        .unwrap()
        .strip_prefix('r')
        .unwrap()
        .parse()
        .unwrap();
    let seq = parts
        .next()
        .unwrap()
        .strip_prefix('s')
        .unwrap()
        .parse()
        .unwrap();
    let pad = parts.next().unwrap();
    assert!(pad.bytes().all(|b| b == b'x'), "garbage in value {text:?}");
    (writer, round, seq)
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut all_acks: Vec<Ack> = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("RIFFLE_CRASH_CHILD_DIR", dir.path())
            .env("RIFFLE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child has recovered and started writing.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child started");
            if line.ends_with("READY") {
                break;
            }
        }
        let mut acks_this_round = 0;
        let kill_after = rng.gen_range(1..60);
        while acks_this_round < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(at) = line.find("ACK ") {
                        acks_this_round += 1;
                        all_acks.push(parse_ack(&line[at..]));
                    }
                }
                Err(e) => panic!("child stalled: {e}"),
            }
        }
        // SAFETY: kill(2) on the pid of our own child, not reaped yet.
        unsafe {
            libc::kill(child.0.id() as i32, libc::SIGKILL);
        }
        child.0.wait().unwrap();
        reader.join().unwrap();
        // Acks printed before the kill are acknowledged too.
        while let Ok(line) = rx.try_recv() {
            if let Some(at) = line.find("ACK ") {
                all_acks.push(parse_ack(&line[at..]));
            }
        }
        verify(&rt, dir.path(), &all_acks);
    }
    assert!(
        all_acks.len() >= ROUNDS as usize,
        "too few acknowledgements: {}",
        all_acks.len()
    );
}

/// Kills the child if the parent fails, so no writer outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parse_ack(line: &str) -> Ack {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    Ack {
        partition: f[0] as u32,
        base: f[1],
        count: f[2],
        writer: f[3] as u32,
        round: f[4] as u32,
        first_seq: f[5],
    }
}

fn verify(rt: &tokio::runtime::Runtime, dir: &std::path::Path, acks: &[Ack]) {
    let log = EmbeddedLog::open(dir, options()).unwrap();
    let mut stored: BTreeMap<(u32, u64), (u32, u32, u64)> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0;
        let mut seen = HashSet::new();
        let mut last_seq: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        loop {
            let batch = rt
                .block_on(log.fetch(TOPIC, partition, offset, 1 << 20))
                .unwrap();
            if batch.records.is_empty() {
                break;
            }
            for r in batch.records.iter() {
                assert_eq!(r.offset, offset, "offset gap in partition {partition}");
                let id = parse_value(r.value);
                assert!(
                    seen.insert(id),
                    "record {id:?} stored twice in partition {partition}"
                );
                // Each writer's records in one partition keep their order.
                if let Some(prev) = last_seq.insert((id.0, id.1), id.2) {
                    assert!(
                        prev < id.2,
                        "order broken for writer {} round {}",
                        id.0,
                        id.1
                    );
                }
                stored.insert((partition, r.offset), id);
                offset += 1;
            }
        }
    }
    for ack in acks {
        for i in 0..ack.count {
            let at = (ack.partition, ack.base + i);
            let got = stored
                .get(&at)
                .unwrap_or_else(|| panic!("acknowledged record {at:?} lost ({ack:?})"));
            assert_eq!(
                *got,
                (ack.writer, ack.round, ack.first_seq + i),
                "wrong record at {at:?}"
            );
        }
    }
    log.close().unwrap();
}
