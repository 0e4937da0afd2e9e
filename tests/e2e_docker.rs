//! End to end through the real binary with the `local:docker` runner: images written by tg-nix
//! from nix:rust store paths and loaded into the real Docker daemon, containers on Testground's
//! control network and a per-run data network, verdicts, cleanup, and `tg-nix terminate`.
//!
//! These need root, Debian's nix-bin (after `tg-nix setup`, which the first test runs) and a
//! running Docker daemon (scripts/setup.sh starts one). With CI=true a missing requirement fails
//! the test; otherwise it is skipped loudly. The docker CLI is used here only to look at what the
//! runner did; tg-nix itself talks to the Engine API.
//!
//! Every run binds the sync service on the control network's gateway (192.18.0.1:5050), so the
//! tests take turns. They share the nix:* caches of e2e_nix (target/tg-nix-e2e-nix-home).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// True when the test can run. Outside CI a missing requirement is said loudly; in CI it fails.
fn ready(test: &str) -> bool {
    let missing = if !is_root() {
        "root (the single-user Nix store, the Docker socket)"
    } else if !works("nix-build", &["--version"]) {
        "Nix (nix-build; scripts/setup.sh installs nix-bin)"
    } else if !works("docker", &["info"]) {
        "a running Docker daemon (scripts/setup.sh starts dockerd)"
    } else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {missing} and CI=true: run the suite as root after scripts/setup.sh");
    }
    eprintln!("\n!!!!! SKIPPED {test}: needs {missing} !!!!!\n");
    false
}

fn home() -> PathBuf {
    std::env::var_os("TG_NIX_TEST_NIX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tg-nix-e2e-nix-home"))
}

fn tg_nix_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
    cmd.current_dir(repo()).env("TG_NIX_HOME", home()).env_remove("RUST_LOG").args(args);
    cmd
}

fn tg_nix(args: &[&str]) -> Output {
    tg_nix_command(args).output().expect("tg-nix runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One docker run at a time (the sync service's address is fixed), and `tg-nix setup` once.
fn turn() -> MutexGuard<'static, bool> {
    static TURN: Mutex<bool> = Mutex::new(false);
    let mut done = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        let out = tg_nix(&["setup"]);
        assert!(out.status.success(), "tg-nix setup failed:\n{}", text(&out.stderr));
        *done = true;
    }
    done
}

/// `tg-nix run … --json`: exit code, report, stderr.
fn run(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tg_nix(&all);
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out.stderr))
}

fn verdicts(report: &Value) -> Vec<String> {
    report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| i["verdict"]["verdict"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn run_ids(report: &Value) -> Vec<String> {
    report["runs"].as_array().into_iter().flatten().map(|r| r["run_id"].as_str().unwrap_or("").to_string()).collect()
}

/// Ids of containers (`ps`) or networks (`network ls`) with the label `filter`.
fn docker_ids(what: &[&str], filter: &str) -> Vec<String> {
    let mut args = what.to_vec();
    args.extend_from_slice(&["-q", "--filter", filter]);
    let out = Command::new("docker").args(&args).output().expect("docker runs");
    text(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

fn leftovers(filter: &str) -> (Vec<String>, Vec<String>) {
    (docker_ids(&["ps", "-a"], filter), docker_ids(&["network", "ls"], filter))
}

fn assert_clean(run_id: &str) {
    let filter = format!("label=tg-nix.run={run_id}");
    assert_eq!(leftovers(&filter), (vec![], vec![]), "containers/networks of run {run_id} remain");
}

fn placebo(case: &str, timeout: &str) -> (i32, Value, String) {
    run(&[
        "--plan",
        "plans/placebo-rust",
        "--case",
        case,
        "--builder",
        "nix:rust",
        "--runner",
        "local:docker",
        "--timeout",
        timeout,
    ])
}

#[test]
fn ping_rust_two_versions_and_twenty_instances_pass() {
    if !ready("ping_rust_two_versions_and_twenty_instances_pass") {
        return;
    }
    let _turn = turn();
    let (code, report, stderr) = run(&["plans/ping-rust/compositions/ping-docker.toml", "--timeout", "120s"]);
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), ["pass", "pass"]);
    assert_clean(&run_ids(&report)[0]);

    let started = Instant::now();
    let (code, report, stderr) = run(&[
        "--plan",
        "plans/ping-rust",
        "--case",
        "ping",
        "--builder",
        "nix:rust",
        "--runner",
        "local:docker",
        "--instances",
        "20",
        "--timeout",
        "180s",
    ]);
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), vec!["pass"; 20]);
    assert_clean(&run_ids(&report)[0]);
    eprintln!("ping-rust, 20 containers, run to report: {:.2}s", started.elapsed().as_secs_f64());
}

#[test]
fn placebo_cases_get_their_exact_verdicts() {
    if !ready("placebo_cases_get_their_exact_verdicts") {
        return;
    }
    let _turn = turn();
    let cases = [
        ("ok", "pass", 0),
        ("failure", "failure", 1),
        ("panic", "crash", 1),
        ("exit-after-success", "exit_code", 1),
        ("no-event", "no_outcome", 1),
        ("abort", "signal", 1),
        ("stall", "timeout", 1),
    ];
    for (case, verdict, exit) in cases {
        let timeout = if case == "stall" { "15s" } else { "120s" };
        let (code, report, stderr) = placebo(case, timeout);
        assert_eq!(verdicts(&report), [verdict], "case {case}: stderr:\n{stderr}\nreport: {report:#}");
        assert_eq!(code, exit, "case {case}: stderr:\n{stderr}");
        assert_clean(&run_ids(&report)[0]);
        if case == "abort" {
            let reason = report["runs"][0]["instances"][0]["verdict"]["signal"].as_str().unwrap_or("");
            assert!(reason.contains("SIGABRT"), "{report:#}");
        }
    }
}

/// The `image  <tag> <id> loaded|present` line.
fn image_line(stderr: &str) -> (String, bool) {
    let line =
        stderr.lines().find(|l| l.starts_with("image  ")).unwrap_or_else(|| panic!("no image line in:\n{stderr}"));
    let id = line.split_whitespace().nth(2).unwrap_or("").to_string();
    (id, line.contains(" loaded "))
}

#[test]
fn an_image_is_written_once_and_its_id_is_stable() {
    if !ready("an_image_is_written_once_and_its_id_is_stable") {
        return;
    }
    let _turn = turn();
    let (code, _, stderr) = placebo("ok", "120s");
    assert_eq!(code, 0, "{stderr}");
    let (id, _) = image_line(&stderr);
    // Remove it: the next run must write and load it again, with the same id.
    let tags = Command::new("docker")
        .args(["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker");
    let full_id = text(&tags.stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| panic!("image {id} not in docker images:\n{}", text(&tags.stdout)));
    let rmi = Command::new("docker").args(["rmi", "-f", &full_id]).output().expect("docker");
    assert!(rmi.status.success(), "{}", text(&rmi.stderr));

    let (code, _, stderr) = placebo("ok", "120s");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(image_line(&stderr), (id.clone(), true), "{stderr}");
    let (code, _, stderr) = placebo("ok", "120s");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(image_line(&stderr), (id, false), "a second load happened:\n{stderr}");
}

/// Starts a stalling run in the background and waits until its containers run.
fn start_stalling_run(instances: &str) -> (std::process::Child, Vec<String>) {
    let child = tg_nix_command(&[
        "run",
        "--plan",
        "plans/placebo-rust",
        "--case",
        "stall",
        "--builder",
        "nix:rust",
        "--runner",
        "local:docker",
        "--instances",
        instances,
        "--timeout",
        "300s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("tg-nix starts");
    let mut child = child;
    let want: usize = instances.parse().unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let running = docker_ids(&["ps"], "label=tg-nix.run");
        if running.len() >= want {
            return (child, running);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the stalling run's containers did not start");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn docker_inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", format, id]).output().expect("docker");
    text(&out.stdout).trim().to_string()
}

#[test]
fn interrupt_cleans_up_and_terminate_cleans_a_killed_run() {
    if !ready("interrupt_cleans_up_and_terminate_cleans_a_killed_run") {
        return;
    }
    let _turn = turn();
    assert_eq!(leftovers("label=tg-nix.run"), (vec![], vec![]), "leftovers from an earlier run");

    // SIGINT: tg-nix stops the containers and removes them and the data network itself.
    let (mut child, containers) = start_stalling_run("2");
    // Control on eth0, data on eth1, seen from inside the container's network namespace.
    let pid = docker_inspect(&containers[0], "{{.State.Pid}}");
    let addrs = Command::new("nsenter").args(["-t", &pid, "-n", "ip", "-o", "-4", "addr", "show"]).output();
    if let Ok(addrs) = addrs {
        let addrs = text(&addrs.stdout);
        let on = |dev: &str| addrs.lines().find(|l| l.split_whitespace().nth(1) == Some(dev)).unwrap_or("").to_string();
        assert!(on("eth0").contains(" 192.18."), "eth0 is not on the control network:\n{addrs}");
        let subnet = docker_inspect(&containers[0], "{{range .Config.Env}}{{println .}}{{end}}");
        let subnet = subnet.lines().find_map(|l| l.strip_prefix("TEST_SUBNET=")).unwrap_or("").to_string();
        let prefix: String = subnet.split('.').take(2).collect::<Vec<_>>().join(".");
        assert!(on("eth1").contains(&format!(" {prefix}.")), "eth1 is not on the data network {subnet}:\n{addrs}");
    }
    // SAFETY: plain syscall on our child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().expect("tg-nix ends");
    assert_eq!(status.code(), Some(130));
    assert_eq!(leftovers("label=tg-nix.run"), (vec![], vec![]), "SIGINT left containers or networks");

    // SIGKILL: everything stays until `tg-nix terminate`.
    let (mut child, _) = start_stalling_run("2");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let (containers, networks) = leftovers("label=tg-nix.run");
    assert_eq!((containers.len(), networks.len()), (2, 1), "a killed run leaves its containers and network");
    let out = tg_nix(&["terminate", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).expect("terminate --json");
    assert_eq!(done["containers"], 2);
    assert_eq!(done["networks"], 1);
    assert_eq!(leftovers("label=tg-nix.run"), (vec![], vec![]), "terminate left something");
}
