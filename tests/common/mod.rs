//! What the end-to-end tests share: where the repo is, what the host has, and the rule for a
//! missing prerequisite (fail under CI=true, skip loudly otherwise).

// Each test file is its own crate and uses only part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
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
