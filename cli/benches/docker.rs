//! `cargo bench -p tg-nix --bench docker`: start-up of N instances in containers (local:docker)
//! against N processes (local:exec), side by side, for N = 10 and 50.
//!
//! What is timed: from just before `tg-nix run` is spawned to the moment the last of the N
//! instances is past the `initialized_global` barrier. The plan is placebo-rust's `ok` case: its
//! SDK (testground 0.4.0) waits for `network-initialized`, signals and waits on
//! `initialized_global` (a barrier on all N) and on its group's barrier, then records its
//! `success_event`, stamped `ts` (ns since the epoch, the host's clock: containers share it) in
//! the instance's `stdout` in its outputs. Nothing else happens in between, so the latest
//! `success_event` ts over the N instances is when the last instance was past the barrier (an
//! upper bound by one sync round trip). It needs no hook into tg-nix and measures both runners the
//! same way. Also printed: when the first instance began (its `network-initialized` stage start:
//! the fixed cost before any instance runs) and the whole run to its report (teardown included).
//!
//! Release build (`cargo bench` builds CARGO_BIN_EXE_tg-nix in release); the default home, or
//! TG_NIX_HOME (after `tg-nix setup`). A warm-up run of each runner builds the plan and loads its
//! image first, so no build or image load is timed. Each figure is the median of
//! TG_NIX_BENCH_REPEAT runs (default 3); TG_NIX_BENCH_SIZES overrides "10,50";
//! TG_NIX_BENCH_DOCKER_RUN_CFG adds `--run-cfg` pairs to the docker runs ("k=v,k=v", for
//! experiments such as start_parallelism). Needs root, Nix and a running Docker daemon; exits
//! non-zero when one is missing. Prints figures; asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Goal of issue 4: 50 containers past `initialized_global` in under 10 s.
const GOAL_SECS: f64 = 10.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One timed run.
struct Sample {
    /// Spawn to the first instance's `network-initialized` stage start.
    first: f64,
    /// Spawn to the last instance past `initialized_global`.
    initialized: f64,
    /// Spawn to the process's exit (report written, containers removed).
    total: f64,
}

fn run_once(runner: &str, n: usize, extra: &[String]) -> Sample {
    let instances = n.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
    cmd.current_dir(repo()).env_remove("RUST_LOG").args([
        "run",
        "--plan",
        "plans/placebo-rust",
        "--case",
        "ok",
        "--builder",
        "nix:rust",
        "--runner",
        runner,
        "--instances",
        &instances,
        "--timeout",
        "300s",
        "--json",
    ]);
    cmd.args(extra);
    let t0 = now_secs();
    let clock = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let total = clock.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{runner} with {n} instances failed ({}):\n{stderr}", out.status);
        std::process::exit(1);
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        eprintln!("{runner}: the --json report does not parse ({e}):\n{stderr}");
        std::process::exit(1);
    });
    let instances = report["runs"][0]["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), n, "{report:#}");
    let (mut first, mut last) = (f64::MAX, 0.0f64);
    for instance in &instances {
        let dir = instance["outputs_dir"].as_str().expect("outputs_dir");
        let stdout = std::fs::read_to_string(Path::new(dir).join("stdout")).expect("instance stdout");
        let ts = |event: &str| {
            stdout.lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                v["event"].get(event)?;
                Some(v["ts"].as_u64()? as f64 / 1e9)
            })
        };
        let success = ts("success_event").unwrap_or_else(|| panic!("no success_event in {dir}/stdout:\n{stdout}"));
        last = last.max(success);
        if let Some(start) = ts("stage_start_event") {
            first = first.min(start);
        }
    }
    Sample { first: first - t0, initialized: last - t0, total }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here.
    }
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let missing = if !root {
        Some("root (the Nix store, network namespaces, the Docker socket)")
    } else if !works("nix-store", &["--version"]) {
        Some("Nix (scripts/setup.sh installs nix-bin)")
    } else if !works("docker", &["info"]) {
        Some("a running Docker daemon (scripts/setup.sh starts dockerd)")
    } else {
        None
    };
    if let Some(missing) = missing {
        eprintln!("bench docker: needs {missing}");
        std::process::exit(1);
    }
    let repeat: usize =
        std::env::var("TG_NIX_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).filter(|n| *n > 0).unwrap_or(3);
    let sizes: Vec<usize> = std::env::var("TG_NIX_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![10, 50]);
    let docker_extra: Vec<String> = std::env::var("TG_NIX_BENCH_DOCKER_RUN_CFG")
        .ok()
        .map(|s| {
            s.split(',').filter(|p| !p.is_empty()).flat_map(|p| ["--run-cfg".to_string(), p.to_string()]).collect()
        })
        .unwrap_or_default();

    eprintln!("warming: one run of each runner (builds placebo-rust, loads its image) …");
    for runner in ["local:exec", "local:docker"] {
        let s = run_once(runner, 2, &[]);
        eprintln!("  {runner}: {:.1}s", s.total);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);

    println!("\nplacebo-rust `ok`, spawn of `tg-nix run` (release) to … (median of {repeat} runs, seconds)");
    println!("{cpus} CPUs, load average {load} at the start; docker run_config: {docker_extra:?}");
    println!(
        "  {:<14} {:>5} {:>16} {:>22} {:>14}",
        "runner", "N", "first instance", "all initialized_global", "whole run"
    );
    let mut at_50 = None;
    for &n in &sizes {
        for runner in ["local:exec", "local:docker"] {
            let extra: &[String] = if runner == "local:docker" { &docker_extra } else { &[] };
            let samples: Vec<Sample> = (0..repeat).map(|_| run_once(runner, n, extra)).collect();
            let first = median(samples.iter().map(|s| s.first).collect());
            let init = median(samples.iter().map(|s| s.initialized).collect());
            let total = median(samples.iter().map(|s| s.total).collect());
            println!("  {runner:<14} {n:>5} {first:>16.2} {init:>22.2} {total:>14.2}");
            if runner == "local:docker" && n == 50 {
                at_50 = Some(init);
            }
        }
    }
    if let Some(init) = at_50 {
        println!(
            "\ngoal: 50 containers past initialized_global in under {GOAL_SECS:.0} s: {} ({init:.2} s)",
            if init < GOAL_SECS { "met" } else { "not met" }
        );
    }
}
