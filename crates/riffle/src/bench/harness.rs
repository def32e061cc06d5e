//! What the benchmarks share: free loopback ports, `riffle serve` child
//! processes, readiness polling, latency histograms and small helpers.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

/// Longest wait for a child to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often readiness is polled; also the resolution of readiness times
/// the benchmarks report (`ads-serve`'s recovery).
const READY_POLL: Duration = Duration::from_millis(5);
/// How long a child stopped with SIGTERM may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Makes the kernel SIGKILL the child if the thread spawning it dies, so no
/// child outlives the benchmark.
pub(crate) fn pdeathsig(command: &mut Command) {
    // SAFETY: runs in the forked child before exec and only calls prctl,
    // which is async-signal-safe. The death signal follows the spawning
    // thread: the benchmarks spawn from the thread that drives the
    // benchmark future (the runtime's `block_on`), which lives as long as
    // the process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `url` until it answers 2xx; fails after `timeout`.
pub(crate) async fn wait_http_ok(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    poll_http_ok(client, url, timeout, || Ok(())).await
}

/// Polls `url` until it answers 2xx; fails after `timeout`, or as soon as
/// `check` fails (a child that died).
async fn poll_http_ok(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        check()?;
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > timeout {
            bail!("{url} not ready after {} s", timeout.as_secs());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// How to run a [`ServeChild`]: `<bin> serve [--exit-on-stdin-eof]
/// [--roles ROLES] --data-dir DATA --http-addr <free port> --grpc-addr
/// 127.0.0.1:0 --datasets-publish-addr … --datasets-consume-addr … ARGS…`.
pub(crate) struct ServeOptions {
    /// The riffle binary (default: this executable).
    pub bin: Option<PathBuf>,
    /// The child's working directory (default: this process's).
    pub current_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// `--roles` (default: the server's, every role).
    pub roles: Option<String>,
    /// Further arguments of `serve`.
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Free ports for the dataset publish and consume listeners (their URLs
    /// exposed, readiness waited for); else `127.0.0.1:0`.
    pub dataset_ports: bool,
    /// File the child's stderr is written to (created on every spawn);
    /// default: inherited.
    pub stderr: Option<PathBuf>,
    /// `--exit-on-stdin-eof` with a pipe as stdin: the child exits at once
    /// when the pipe closes, when this process ends however it ends, or
    /// when the child is stopped (see [`ServeChild`]'s `Drop`).
    pub exit_on_stdin_eof: bool,
}

impl ServeOptions {
    pub fn new(data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            bin: None,
            current_dir: None,
            data_dir,
            roles: None,
            args: Vec::new(),
            env: Vec::new(),
            dataset_ports: false,
            stderr: None,
            exit_on_stdin_eof: false,
        }
    }
}

/// A `riffle serve` child process on free loopback ports. Dropping it stops
/// the server gracefully (SIGTERM, then SIGKILL after a grace period); the
/// kernel also SIGKILLs it if this process dies first, so no server
/// outlives the benchmark.
pub(crate) struct ServeChild {
    options: ServeOptions,
    bin: PathBuf,
    child: Option<Child>,
    base: String,
    publish: Option<String>,
    consume: Option<String>,
}

impl ServeChild {
    pub fn start(options: ServeOptions) -> anyhow::Result<ServeChild> {
        let bin = match &options.bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?,
        };
        let mut server = ServeChild {
            options,
            bin,
            child: None,
            base: String::new(),
            publish: None,
            consume: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts the process on fresh ports (a killed server's may still be
    /// held by connections in TIME_WAIT) and the same data directory.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        debug_assert!(self.child.is_none(), "server already running");
        let options = &self.options;
        let http_port = free_port()?;
        let datasets = if options.dataset_ports {
            Some((free_port()?, free_port()?))
        } else {
            None
        };
        let mut command = Command::new(&self.bin);
        command.arg("serve");
        if options.exit_on_stdin_eof {
            command.arg("--exit-on-stdin-eof").stdin(Stdio::piped());
        }
        if let Some(roles) = &options.roles {
            command.args(["--roles", roles]);
        }
        command
            .arg("--data-dir")
            .arg(&options.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(["--grpc-addr", "127.0.0.1:0"]);
        match datasets {
            Some((publish, consume)) => command
                .args(["--datasets-publish-addr", &format!("127.0.0.1:{publish}")])
                .args(["--datasets-consume-addr", &format!("127.0.0.1:{consume}")]),
            None => command
                .args(["--datasets-publish-addr", "127.0.0.1:0"])
                .args(["--datasets-consume-addr", "127.0.0.1:0"]),
        };
        command
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("RIFFLE_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(dir) = &options.current_dir {
            command.current_dir(dir);
        }
        if let Some(path) = &options.stderr {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            command.stderr(file);
        }
        pdeathsig(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} serve", self.bin.display()))?;
        self.child = Some(child);
        self.base = format!("http://127.0.0.1:{http_port}");
        self.publish = datasets.map(|(p, _)| format!("http://127.0.0.1:{p}"));
        self.consume = datasets.map(|(_, c)| format!("http://127.0.0.1:{c}"));
        Ok(())
    }

    /// The HTTP listener, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The dataset publish listener (with `dataset_ports`).
    pub fn publish(&self) -> &str {
        self.publish.as_deref().unwrap_or_default()
    }

    /// The dataset consume listener (with `dataset_ports`).
    pub fn consume(&self) -> &str {
        self.consume.as_deref().unwrap_or_default()
    }

    /// The running process's id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("server is not running");
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("riffle serve exited: {status}");
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200 on the HTTP listener and on the
    /// dataset listeners if they have ports; fails at once if the process
    /// exits, and after [`READY_TIMEOUT`].
    pub async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let urls: Vec<String> = [
            Some(&self.base),
            self.consume.as_ref(),
            self.publish.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|base| format!("{base}/readyz"))
        .collect();
        for url in urls {
            poll_http_ok(client, &url, READY_TIMEOUT, || self.check_alive()).await?;
        }
        Ok(())
    }

    /// SIGKILL, as a crash: no shutdown checkpoint, no flush.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("server is not running")?;
        child.kill().context("killing riffle serve")?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid, which has not been
        // reaped yet (so cannot have been reused).
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        // A child run with --exit-on-stdin-eof exits at once when its stdin
        // closes, as if killed: that is how scale-out members always ended
        // (`Child::wait` closes stdin before waiting).
        drop(child.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Latencies in microseconds from 1 µs to 1 h, 3 significant digits.
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds: 1 µs to 1 h, 3 digits"),
        )
    }

    pub fn record(&mut self, latency: Duration) {
        self.0
            .saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds add up");
    }

    /// Nearest-rank quantile `q` (0..=1; 1 is the maximum), zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.0.value_at_quantile(q))
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// MemTotal from /proc/meminfo in GiB.
pub(crate) fn total_memory_gib() -> Option<f64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0))
}

/// The partition a simulated producer writes the `n`-th click to: its key's
/// murmur2 partition, except the first `mispartitioned` of every 100 clicks,
/// which go to another partition, cycling through the others (a producer
/// that does not partition by murmur2, spread evenly).
pub(crate) fn producer_partition(key: &[u8], partitions: u32, n: u64, mispartitioned: u32) -> u32 {
    let partition = riffle_log::partition_for_key(key, partitions);
    if partitions > 1 && (n % 100) < u64::from(mispartitioned) {
        let shift = 1 + (n / 100) % u64::from(partitions - 1);
        ((u64::from(partition) + shift) % u64::from(partitions)) as u32
    } else {
        partition
    }
}
