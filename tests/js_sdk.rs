//! The real JS SDK (npm `@testground/sdk` 0.1.2, pinned in tests/js-sdk/package-lock.json) against
//! `tg-nix sync-service`: tests/js-sdk/sync-conformance.js drives the SDK's own sync client
//! (signals, barriers, publish/subscribe with replay, the SDK's sugar, run events) and must end on
//! its own after closing its clients, which needs the server to complete the close handshake.
//!
//! Needs node and npm (on first run, `npm ci` fetches the package from the npm registry). Without
//! them the test is skipped loudly, or fails when CI=true.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The script's bound: a client that hangs (e.g. on an unanswered Close) must fail, not block CI.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// `npm ci` downloads 35 small packages.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the sync service may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("tests/js-sdk")
}

/// A child process that is killed and reaped when dropped, also when the test panics.
struct KillOnDrop {
    child: Child,
    what: &'static str,
}

impl KillOnDrop {
    fn spawn(cmd: &mut Command, what: &'static str) -> KillOnDrop {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        KillOnDrop { child, what }
    }

    /// Waits up to `limit` for the process to exit; None (still running) on timeout.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// True if `program --version` runs.
fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output captured into files, so a killed process leaves what it wrote and no pipe can fill up.
struct Captured {
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Captured {
    fn new(dir: &Path, name: &str) -> Captured {
        Captured { stdout: dir.join(format!("{name}.stdout")), stderr: dir.join(format!("{name}.stderr")) }
    }

    fn attach(&self, cmd: &mut Command) {
        cmd.stdin(Stdio::null())
            .stdout(File::create(&self.stdout).expect("stdout file"))
            .stderr(File::create(&self.stderr).expect("stderr file"));
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn show(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("--- stdout ---\n{}\n--- stderr ---\n{stderr}", self.stdout())
    }
}

/// Installs the pinned SDK from package-lock.json if it is not there yet.
fn npm_ci(dir: &Path, scratch: &Path) {
    let out = Captured::new(scratch, "npm-ci");
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]).current_dir(dir);
    out.attach(&mut cmd);
    let mut npm = KillOnDrop::spawn(&mut cmd, "npm ci");
    match npm.wait_for(NPM_TIMEOUT) {
        Some(status) if status.success() => {}
        Some(status) => panic!("npm ci in {} failed ({status})\n{}", dir.display(), out.show()),
        None => panic!("npm ci in {} took over {NPM_TIMEOUT:?}\n{}", dir.display(), out.show()),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until the service accepts TCP connections, failing early if it exits.
fn wait_until_listening(service: &mut KillOnDrop, port: u16, log: &Captured) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!("tg-nix sync-service exited before listening ({status})\n{}", log.show());
        }
        if Instant::now() >= deadline {
            panic!("tg-nix sync-service not listening on 127.0.0.1:{port} after {STARTUP_TIMEOUT:?}\n{}", log.show());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn js_sdk_0_1_2_against_the_sync_service() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let dir = js_dir();
    let installed = dir.join("node_modules/@testground/sdk/package.json").is_file();
    let missing: Vec<&str> =
        ["node", "npm"].into_iter().filter(|p| (*p == "node" || !installed) && !available(p)).collect();
    if !missing.is_empty() {
        let what = missing.join(" and ");
        if ci {
            panic!("js_sdk needs {what} and CI=true: install nodejs and npm");
        }
        eprintln!(
            "\n!!!!! SKIPPED js_sdk_0_1_2_against_the_sync_service: {what} not found; install nodejs and npm !!!!!\n"
        );
        return;
    }
    let scratch = tempfile::Builder::new().prefix("tg-nix-js-sdk").tempdir().expect("temp dir");
    if !installed {
        npm_ci(&dir, scratch.path());
    }

    let port = free_port();
    let service_log = Captured::new(scratch.path(), "sync-service");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
    cmd.args(["sync-service", "--listen", &format!("127.0.0.1:{port}")]).env_remove("RUST_LOG");
    service_log.attach(&mut cmd);
    let mut service = KillOnDrop::spawn(&mut cmd, "tg-nix sync-service");
    wait_until_listening(&mut service, port, &service_log);

    // The SDK writes a file named `stdout` into its cwd: run it in the scratch directory.
    let work = scratch.path().join("cwd");
    let outputs = scratch.path().join("outputs");
    let temp = scratch.path().join("temp");
    for d in [&work, &outputs, &temp] {
        std::fs::create_dir(d).expect("scratch subdirectory");
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let run_id = format!("js-sdk-{}-{nanos}", std::process::id());
    let script_out = Captured::new(scratch.path(), "node");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("sync-conformance.js"))
        .current_dir(&work)
        .env("SYNC_SERVICE_HOST", "127.0.0.1")
        .env("SYNC_SERVICE_PORT", port.to_string())
        .env("TEST_PLAN", "js-sdk-conformance")
        .env("TEST_CASE", "sync")
        .env("TEST_RUN", &run_id)
        .env("TEST_INSTANCE_COUNT", "2")
        .env("TEST_GROUP_ID", "single")
        .env("TEST_GROUP_INSTANCE_COUNT", "2")
        .env("TEST_INSTANCE_PARAMS", "")
        .env("TEST_INSTANCE_ROLE", "")
        .env("TEST_REPO", "")
        .env("TEST_BRANCH", "")
        .env("TEST_TAG", "")
        .env("TEST_SIDECAR", "false")
        // The SDK's parseCIDR throws on an empty subnet; this is what local:exec passes.
        .env("TEST_SUBNET", "127.1.0.0/16")
        .env("TEST_OUTPUTS_PATH", &outputs)
        .env("TEST_TEMP_PATH", &temp)
        .env("TEST_START_TIME", "2024-01-01T00:00:00Z")
        .env("LOG_LEVEL", "info");
    script_out.attach(&mut cmd);
    let started = Instant::now();
    let mut node = KillOnDrop::spawn(&mut cmd, "node sync-conformance.js");
    let Some(status) = node.wait_for(SCRIPT_TIMEOUT) else {
        drop(node);
        panic!(
            "sync-conformance.js still running after {SCRIPT_TIMEOUT:?} (a hang: killed)\n{}\n--- sync service ---\n{}",
            script_out.show(),
            service_log.show()
        );
    };
    let elapsed = started.elapsed();
    assert!(
        status.success(),
        "sync-conformance.js failed ({status}) after {elapsed:?}\n{}\n--- sync service ---\n{}",
        script_out.show(),
        service_log.show()
    );
    assert!(script_out.stdout().contains("PASS - "), "no PASS line\n{}", script_out.show());
    // The service is still up and served every client to the end.
    assert!(
        service.child.try_wait().expect("service status").is_none(),
        "the sync service exited\n{}",
        service_log.show()
    );
    eprintln!("js sdk conformance passed in {elapsed:?}");
}
