//! What the end-to-end tests share: where the repo is, what the host has, and the rule for a
//! missing prerequisite (fail under CI=true, skip loudly otherwise).

// Each test file is its own crate and uses only part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Where plans are built (CARGO_TARGET_DIR of tg-nix's exec:rust builds): TG_NIX_TEST_PLAN_TARGET,
/// or `target/plans`.
pub fn plan_target() -> PathBuf {
    std::env::var_os("TG_NIX_TEST_PLAN_TARGET").map(PathBuf::from).unwrap_or_else(|| repo().join("target/plans"))
}

/// The tg-nix home whose nix:* caches e2e_nix, e2e_docker and e2e_network share:
/// TG_NIX_TEST_NIX_HOME, or `target/tg-nix-e2e-nix-home`.
pub fn nix_home() -> PathBuf {
    std::env::var_os("TG_NIX_TEST_NIX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tg-nix-e2e-nix-home"))
}

/// `tg-nix ARGS` in the repo, with the shared nix:* home ([`nix_home`]).
pub fn tg_nix_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
    cmd.current_dir(repo()).env("TG_NIX_HOME", nix_home()).env_remove("RUST_LOG").args(args);
    cmd
}

/// One docker run at a time (the sync service's address is fixed), and `tg-nix setup` once.
pub fn docker_turn() -> MutexGuard<'static, bool> {
    static TURN: Mutex<bool> = Mutex::new(false);
    let mut done = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        let out = tg_nix_command(&["setup"]).output().expect("tg-nix runs");
        assert!(out.status.success(), "tg-nix setup failed:\n{}", text(&out.stderr));
        *done = true;
    }
    done
}

/// Ids of containers (`ps`) or networks (`network ls`) with the label `filter`.
pub fn docker_ids(what: &[&str], filter: &str) -> Vec<String> {
    let mut args = what.to_vec();
    args.extend_from_slice(&["-q", "--filter", filter]);
    let out = Command::new("docker").args(&args).output().expect("docker runs");
    text(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Containers and networks with the label `filter`.
pub fn leftovers(filter: &str) -> (Vec<String>, Vec<String>) {
    (docker_ids(&["ps", "-a"], filter), docker_ids(&["network", "ls"], filter))
}

/// `docker inspect -f FORMAT ID`, trimmed.
pub fn docker_inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", format, id]).output().expect("docker");
    text(&out.stdout).trim().to_string()
}

/// True when `program args…` runs and succeeds.
pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// True when `test` can run: `missing` names the first missing prerequisite, if any. With CI=true
/// a missing prerequisite fails the test; otherwise it is skipped, loudly.
pub fn ready(test: &str, missing: Option<&str>) -> bool {
    let Some(missing) = missing else { return true };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {missing} and CI=true: run the suite as root after scripts/setup.sh");
    }
    eprintln!("\n!!!!! SKIPPED {test}: needs {missing} !!!!!\n");
    false
}

/// The first of `checks` that fails, as what it needs: `[(is_root(), "root (…)"), …]`.
pub fn first_missing<'a>(checks: &[(bool, &'a str)]) -> Option<&'a str> {
    checks.iter().find(|(ok, _)| !ok).map(|(_, what)| *what)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every instance's verdict in a `run --json` report, in order.
pub fn verdicts(report: &Value) -> Vec<String> {
    report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| i["verdict"]["verdict"].as_str().unwrap_or("?").to_string())
        .collect()
}
