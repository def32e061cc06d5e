//! TLS end to end: `riffle serve` with `[server.tls]` serves HTTPS (and
//! refuses to start with a bad certificate); the CLI connects with
//! `--ca-cert`. Certificates are made with the openssl command line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use riffle_testkit::{free_ports, riffle_command, run_cli, wait_with_deadline, TestDir};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (Debian package openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a leaf certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=riffle-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

fn serve(dir: &TestDir, config: &Path, http: u16, grpc: u16) -> std::process::Child {
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    riffle_command(dir)
        .args(["serve", "--exit-on-stdin-eof", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir.data_dir())
        .args([
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--datasets-publish-addr",
            "127.0.0.1:0",
            "--datasets-consume-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn https_serves_and_cli_trusts_the_given_ca() {
    let dir = TestDir::new();
    make_certs(dir.path());
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[server.tls]\nenabled = true\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display()
        ),
    )
    .unwrap();
    let [http, grpc] = free_ports::<2>();
    let mut child = serve(&dir, &config, http, grpc);
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "server exited: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap()
        );
        assert!(Instant::now() < deadline, "https server not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Plain HTTP to the TLS port does not get an API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served on the TLS port"
    );

    let server = format!("https://127.0.0.1:{http}");
    let ca = dir.path().join("ca.pem");
    let data_dir = dir.data_dir();
    let output = run_cli(
        &dir,
        &[
            "topics",
            "list",
            "--server",
            &server,
            "--ca-cert",
            &ca.to_string_lossy(),
            "--data-dir",
            &data_dir.to_string_lossy(),
        ],
        None,
    );
    output.assert_success();
    assert!(output.stdout.contains("ad_clicks"), "{}", output.stdout);

    // Without the CA the CLI refuses the certificate.
    let output = run_cli(&dir, &["topics", "list", "--server", &server], None);
    assert!(!output.status.success(), "{}", output.stdout);

    // SAFETY: kill(2) on the pid of a child this test spawned and has not
    // reaped yet; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_with_deadline(&mut child, Duration::from_secs(20))
        .expect("server exits after SIGTERM");
    assert!(status.success());
}

#[test]
fn a_bad_certificate_stops_startup_with_a_clear_error() {
    let dir = TestDir::new();
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[server.tls]\nenabled = true\ncert_path = \"{0}\"\nkey_path = \"{0}\"\n",
            dir.path().join("bad.pem").display()
        ),
    )
    .unwrap();
    let [http, grpc] = free_ports::<2>();
    let mut child = serve(&dir, &config, http, grpc);
    let status = wait_with_deadline(&mut child, Duration::from_secs(20))
        .expect("serve exits on a bad certificate");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("server.tls"),
        "error names the config section: {log}"
    );
}
