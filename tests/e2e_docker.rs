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

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{
    docker_ids, docker_inspect, docker_turn, is_root, leftovers, nix_home, repo, text, tg_nix_command, verdicts, works,
};

/// True when the test can run. Outside CI a missing requirement is said loudly; in CI it fails.
fn ready(test: &str) -> bool {
    common::ready(
        test,
        common::first_missing(&[
            (is_root(), "root (the single-user Nix store, the Docker socket)"),
            (works("nix-build", &["--version"]), "Nix (nix-build; scripts/setup.sh installs nix-bin)"),
            (works("docker", &["info"]), "a running Docker daemon (scripts/setup.sh starts dockerd)"),
        ]),
    )
}

fn tg_nix(args: &[&str]) -> Output {
    tg_nix_command(args).output().expect("tg-nix runs")
}

/// `tg-nix run … --json`: exit code, report, stderr.
fn run(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tg_nix(&all);
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out.stderr))
}

fn run_ids(report: &Value) -> Vec<String> {
    report["runs"].as_array().into_iter().flatten().map(|r| r["run_id"].as_str().unwrap_or("").to_string()).collect()
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
    let _turn = docker_turn();
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

/// 50 containers pinging each other need 2450 data-network neighbour entries, past the host-wide
/// ARP cache cap (gc_thresh3, 1024 by default): they pass only because the runner seeds each
/// container's eth1 with its peers before signalling `network-initialized` (architecture.md,
/// "Scale").
#[test]
fn ping_rust_fifty_containers_pass_past_the_arp_cap() {
    if !ready("ping_rust_fifty_containers_pass_past_the_arp_cap") {
        return;
    }
    let _turn = docker_turn();
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
        "50",
        "--timeout",
        "300s",
    ]);
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), vec!["pass"; 50]);
    assert_clean(&run_ids(&report)[0]);
    eprintln!("ping-rust, 50 containers, run to report: {:.2}s", started.elapsed().as_secs_f64());
}

#[test]
fn placebo_cases_get_their_exact_verdicts() {
    if !ready("placebo_cases_get_their_exact_verdicts") {
        return;
    }
    let _turn = docker_turn();
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
    let _turn = docker_turn();
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

#[test]
fn interrupt_cleans_up_and_terminate_cleans_a_killed_run() {
    if !ready("interrupt_cleans_up_and_terminate_cleans_a_killed_run") {
        return;
    }
    let _turn = docker_turn();
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

/// A second Docker daemon of the test's own, in its own network namespace (so its
/// `testground-control` bridge, 192.18.0.1, and the sync service bound there clash with nothing on
/// the host, where other runs use the main daemon), with its own socket, data root and exec root.
/// The main daemon is never stopped or paused: other tests and runs may be using it.
struct SecondDaemon {
    netns: String,
    dir: PathBuf,
    exec_root: PathBuf,
    socket: String,
    child: Option<std::process::Child>,
}

impl SecondDaemon {
    fn start(name: &str) -> SecondDaemon {
        let netns = format!("tgnix-{name}");
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let ok = |cmd: &mut Command| {
            let out = cmd.output().expect("runs");
            assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
        };
        ok(Command::new("ip").args(["netns", "add", &netns]));
        ok(Command::new("ip").args(["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]));
        let dir = repo().join(format!("target/tg-nix-e2e-docker-{name}"));
        // Socket paths are limited to 108 bytes: containerd's live under the exec root.
        let exec_root = std::env::temp_dir().join(format!("tgnix-{name}"));
        for d in [&dir, &exec_root] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).expect("daemon dir");
        }
        let socket = format!("unix://{}", dir.join("docker.sock").display());
        let mut daemon = SecondDaemon { netns, dir, exec_root, socket, child: None };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("dockerd.log")).expect("log");
        // nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["dockerd", "--host", &self.socket])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.exec_root.join("exec"))
            .arg("--pidfile")
            .arg(self.exec_root.join("docker.pid"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !works("docker", &["-H", &self.socket, "info"]) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!("the second dockerd did not come up; its log ends:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL to the daemon (nsenter execs it: the child is dockerd itself).
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What a killed daemon leaves: its containerd, shims and their containers' processes (all
    /// named by this daemon's own exec root, so nothing of the main daemon's), and the mounts of
    /// its data root.
    fn reap(&self) {
        let root = self.exec_root.display().to_string();
        let mut pids: Vec<i32> = Vec::new();
        let mut parents: Vec<(i32, i32)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if text(&cmdline).contains(&root) && pid != std::process::id() as i32 {
                pids.push(pid);
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        // Their descendants too (the containers' init and plan processes).
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            pids.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
            i += 1;
        }
        for pid in pids {
            // SAFETY: plain syscall on a pid this test's daemon started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir) || m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
    }

    /// `tg-nix <args>` in the daemon's network namespace, talking to it through DOCKER_HOST.
    fn tg_nix(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.current_dir(repo())
            .env("TG_NIX_HOME", nix_home())
            .env("DOCKER_HOST", &self.socket)
            .env_remove("RUST_LOG")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_tg-nix"))
            .args(args);
        cmd
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker").args(["-H", &self.socket]).args(args).output().expect("docker");
        text(&out.stdout)
    }
}

impl Drop for SecondDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall on our child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reap();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

/// The tg-nix process of `cmd`, waited for at most `limit`: a hang fails the test.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("tg-nix starts");
    let deadline = Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("tg-nix output");
            panic!("tg-nix hung for {limit:?}; stderr:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("tg-nix output")
}

#[test]
fn a_daemon_that_dies_mid_run_gives_lost_verdicts() {
    if !ready("a_daemon_that_dies_mid_run_gives_lost_verdicts") {
        return;
    }
    let _turn = docker_turn();
    let mut daemon = SecondDaemon::start("dies");
    let mut cmd = daemon.tg_nix(&[
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
        "2",
        "--timeout",
        "300s",
        "--json",
    ]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("tg-nix starts");
    let deadline = Instant::now() + Duration::from_secs(240);
    while daemon.docker(&["ps", "-q", "--filter", "label=tg-nix.run"]).lines().count() < 2 {
        if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("the containers did not start on the second daemon:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.kill9();
    let deadline = Instant::now() + Duration::from_secs(120);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("tg-nix hung after its Docker daemon died:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let (code, stderr) = (out.status.code().unwrap_or(-1), text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(code, 1, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), ["lost", "lost"], "stderr:\n{stderr}\nreport: {report:#}");
    let reason = report["runs"][0]["instances"][0]["verdict"]["error"].as_str().unwrap_or("");
    assert!(reason.contains("tg-placebo-rust-stall-"), "the reason names the container: {report:#}");

    // With no daemon at all: a clear message, exit 4 (the run's leftovers go with the test's
    // daemon; the main one is never stopped).
    let out = output_within(daemon.tg_nix(&["terminate"]), Duration::from_secs(120));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot reach the Docker daemon"), "{stderr}");
}

#[test]
fn an_image_that_fails_to_load_is_a_clear_setup_error() {
    if !ready("an_image_that_fails_to_load_is_a_clear_setup_error") {
        return;
    }
    let _turn = docker_turn();
    // The image's full id, from a normal run on the main daemon (it is a pure function of the
    // program, so the fresh daemon will be asked to load the same id).
    let (code, _, stderr) = placebo("ok", "120s");
    assert_eq!(code, 0, "{stderr}");
    let (short, _) = image_line(&stderr);
    let images = Command::new("docker").args(["images", "--no-trunc", "-q"]).output().expect("docker");
    let id = text(&images.stdout)
        .lines()
        .find(|l| l.starts_with(&short))
        .map(String::from)
        .unwrap_or_else(|| panic!("image {short} not in docker images"));

    // A fresh daemon has no image, so tg-nix writes the tar and loads it. The tar's path is a
    // FIFO: what tg-nix writes is drained, and what Docker then reads is not a tar.
    let daemon = SecondDaemon::start("badimage");
    let images_dir = nix_home().join("data/work/images");
    std::fs::create_dir_all(&images_dir).expect("images dir");
    let tar = images_dir.join(format!("image-{}.tar", id.trim_start_matches("sha256:")));
    let _ = std::fs::remove_file(&tar);
    let made = Command::new("mkfifo").arg(&tar).status().expect("mkfifo");
    assert!(made.success());
    let fifo = tar.clone();
    let feeder = std::thread::spawn(move || {
        let mut written = Vec::new();
        if let Ok(mut r) = std::fs::File::open(&fifo) {
            let _ = std::io::Read::read_to_end(&mut r, &mut written);
        }
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&fifo) {
            let _ = std::io::Write::write_all(&mut w, b"this is not a tar archive\n");
        }
        written.len()
    });
    let out = output_within(
        daemon.tg_nix(&[
            "run",
            "--plan",
            "plans/placebo-rust",
            "--case",
            "ok",
            "--builder",
            "nix:rust",
            "--runner",
            "local:docker",
            "--timeout",
            "120s",
        ]),
        Duration::from_secs(180),
    );
    let written = feeder.join().expect("feeder");
    let stderr = text(&out.stderr);
    assert!(written > 0, "tg-nix wrote nothing into the image tar:\n{stderr}");
    assert_eq!(out.status.code(), Some(4), "stderr:\n{stderr}");
    assert!(stderr.contains("image tg-nix/placebo-rust:"), "the message names the image:\n{stderr}");
    assert!(stderr.contains("group single"), "the message names the group:\n{stderr}");
    // Nothing left behind: no tar, no image, no container or network.
    assert!(!tar.exists(), "{} was left behind", tar.display());
    assert_eq!(daemon.docker(&["images", "-q"]).trim(), "", "an image was left behind");
    assert_eq!(daemon.docker(&["ps", "-aq"]).trim(), "");
    assert_eq!(daemon.docker(&["network", "ls", "-q", "--filter", "label=tg-nix.run"]).trim(), "");
}
