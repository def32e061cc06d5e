//! A tansu broker (a Kafka-API broker) started on 127.0.0.1 for the Kafka
//! tests: the bus conformance suite on Kafka, the end-to-end scale-out tests.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Client settings tansu needs for timely group joins (issue #5).
pub const TEST_PROPERTIES: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "1000"),
];

/// A running broker; killed when dropped (and when the test process
/// dies, by `PR_SET_PDEATHSIG`).
pub struct TestBroker {
    child: Child,
    pub brokers: String,
    /// Holds the broker's SQLite storage.
    dir: std::path::PathBuf,
}

impl TestBroker {
    /// Starts tansu from `$RIFFLE_TANSU_BIN` (installed by
    /// `scripts/kafka-tools.sh`, which `scripts/test.sh` runs). Without
    /// it the test is skipped with a printed reason — except under CI,
    /// where a missing broker is a failure.
    pub fn start() -> Option<TestBroker> {
        let Ok(bin) = std::env::var("RIFFLE_TANSU_BIN") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "RIFFLE_TANSU_BIN is not set: run the tests through scripts/test.sh"
            );
            eprintln!(
                "skipped: RIFFLE_TANSU_BIN is not set (eval \"$(bash scripts/kafka-tools.sh)\")"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        // Memory storage (the prebuilt tansu has no other); it reports
        // high watermarks as the last batch's base offset + 1, which
        // the tests are written around. The broker runs in its own
        // directory.
        let dir = std::env::temp_dir().join(format!("riffle-tansu-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let mut command = Command::new(&bin);
        command
            .current_dir(&dir)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill
        // the broker when the test process exits, however it exits.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // PR_SET_PDEATHSIG fires when the spawning *thread* ends, so the
        // broker is spawned by a thread that lives as long as the process.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(command.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = receiver
            .recv()
            .expect("broker spawner thread")
            .unwrap_or_else(|e| panic!("starting tansu {bin}: {e}"));
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {brokers}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TestBroker {
            child,
            brokers,
            dir,
        })
    }

    /// Backend options for this broker with the test client settings.
    pub fn options(&self) -> riffle_log::kafka::KafkaOptions {
        let mut options = riffle_log::kafka::KafkaOptions::new(self.brokers.clone());
        for (key, value) in TEST_PROPERTIES {
            options.properties.insert(key.into(), value.into());
        }
        options
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
