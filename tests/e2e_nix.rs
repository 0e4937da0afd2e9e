//! End to end through the real binary with the hermetic builder `nix:rust`: `tg-nix setup`, plans
//! built in the Nix sandbox from generated expressions, dependency rewrites, Nix's store as the
//! cache, bit-for-bit reproducibility (`nix-build --check`), and runs of the outputs.
//!
//! These need root (the single-user Nix store, network namespaces) and Debian's nix-bin
//! (scripts/setup.sh installs it). With CI=true a missing requirement fails the test; otherwise it
//! is skipped loudly.
//!
//! All tests share one tg-nix home (`target/tg-nix-e2e-nix-home`, or TG_NIX_TEST_NIX_HOME), so the
//! imports and the resolve/vendor caches are made once per machine, like Nix's store itself. A
//! cold run builds ping-rust twice in the sandbox (two serde_json versions) and checks both
//! builds again with `nix-build --check`: about 10 minutes on 2 cores; a warm run about 5 (the
//! checks always rebuild).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

mod common;
use common::{is_root, nix_home, repo, text, verdicts};

/// True when the test can run. Outside CI a missing requirement is said loudly; in CI it fails.
fn ready(test: &str) -> bool {
    common::ready(
        test,
        common::first_missing(&[
            (is_root(), "root (single-user Nix store, network namespaces)"),
            (common::works("nix-build", &["--version"]), "Nix (nix-build; scripts/setup.sh installs nix-bin)"),
        ]),
    )
}

fn tg_nix(args: &[&str]) -> Output {
    common::tg_nix_command(args).output().expect("tg-nix runs")
}

/// `nix-build --check` rebuilds ping-rust under Nix's lock on its output path, which makes any
/// other build of the same derivation wait minutes: the tests that build ping-rust take turns.
static PING_RUST: Mutex<()> = Mutex::new(());

/// `tg-nix setup` once per test process (tests run on parallel threads).
fn setup() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let started = Instant::now();
    let out = tg_nix(&["setup"]);
    assert!(out.status.success(), "tg-nix setup failed:\n{}", text(&out.stderr));
    eprintln!("tg-nix setup: {:.2}s\n{}", started.elapsed().as_secs_f64(), text(&out.stderr));
    *done = true;
}

/// `tg-nix run … --json`: exit code, report, stderr.
fn run(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tg_nix(&all);
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out.stderr))
}

/// The `build  <group> done …` line of each group.
fn done_line<'a>(stderr: &'a str, group: &str) -> &'a str {
    let prefix = format!("build  {group} done ");
    stderr.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"))
}

/// The store path a `done` line names (…/bin/<program> → the output).
fn output_of(line: &str) -> PathBuf {
    let program = line.rsplit(": ").next().unwrap_or("");
    let out = Path::new(program).parent().and_then(Path::parent).expect("program in <out>/bin");
    assert!(out.starts_with("/nix/store"), "{line}");
    out.to_path_buf()
}

#[test]
fn ping_rust_builds_in_the_sandbox_and_passes() {
    if !ready("ping_rust_builds_in_the_sandbox_and_passes") {
        return;
    }
    setup();
    let _turn = PING_RUST.lock().unwrap_or_else(|e| e.into_inner());
    let args = ["--plan", "plans/ping-rust", "--case", "ping", "--builder", "nix:rust", "--instances", "2"];
    let (code, report, stderr) = run(&args);
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), ["pass", "pass"]);
    let out = output_of(done_line(&stderr, "single"));
    assert!(out.join("bin/ping-rust").is_file());
    // The binary refers to no store path: the vendored crates' paths were remapped.
    let refs = Command::new("nix-store").args(["-q", "--references"]).arg(&out).output().expect("nix-store");
    assert_eq!(text(&refs.stdout).trim(), "", "{} has runtime references", out.display());

    // Unchanged: Nix builds nothing, tg-nix says so.
    let started = Instant::now();
    let (code, report, stderr) = run(&args);
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    let line = done_line(&stderr, "single");
    assert!(line.contains("(cached)"), "{line}");
    assert_eq!(output_of(line), out);
    eprintln!("no-op rebuild + run of ping-rust (1 unit, 2 instances): {:.2}s", elapsed.as_secs_f64());
}

#[test]
fn two_dependency_versions_build_run_together_and_reproduce() {
    if !ready("two_dependency_versions_build_run_together_and_reproduce") {
        return;
    }
    setup();
    let _turn = PING_RUST.lock().unwrap_or_else(|e| e.into_inner());
    let composition = "plans/ping-rust/compositions/ping-nix-versions.toml";

    // gen: the expressions, without building.
    let out = tg_nix(&["gen", composition, "--json"]);
    assert!(out.status.success(), "tg-nix gen failed:\n{}", text(&out.stderr));
    let gen: Value = serde_json::from_slice(&out.stdout).expect("gen --json");
    let groups = gen["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{gen:#}");
    let field = |i: usize, key: &str| groups[i][key].as_str().unwrap_or_default().to_string();
    // Each group's vendored deps hold its serde_json, and only that one.
    for (i, version) in [(0, "1.0.154"), (1, "1.0.145")] {
        let deps = PathBuf::from(field(i, "deps"));
        assert!(deps.join(format!("serde_json-{version}")).is_dir(), "{}: no serde_json-{version}", deps.display());
        let serde_jsons = std::fs::read_dir(&deps)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("serde_json-"))
            .count();
        assert_eq!(serde_jsons, 1, "{}", deps.display());
    }
    assert_ne!(field(0, "deps"), field(1, "deps"));

    // run: both built in the sandbox, run together, pass.
    let (code, report, stderr) = run(&[composition]);
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    assert_eq!(verdicts(&report), ["pass", "pass"]);
    let current = output_of(done_line(&stderr, "current"));
    let older = output_of(done_line(&stderr, "older"));
    assert_ne!(current, older, "two versions, two outputs");

    // Unchanged: builds nothing.
    let started = Instant::now();
    let (code, report, stderr) = run(&[composition]);
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "stderr:\n{stderr}\nreport: {report:#}");
    for group in ["current", "older"] {
        assert!(done_line(&stderr, group).contains("(cached)"), "{stderr}");
    }
    eprintln!("no-op rebuild + run of a 2-unit composition: {:.2}s", elapsed.as_secs_f64());

    // Reproducible: Nix builds both again and compares bit for bit.
    let started = Instant::now();
    let check = Command::new("nix-build")
        .arg(field(0, "file"))
        .arg(field(1, "file"))
        .args(["--check", "--no-out-link"])
        .output()
        .expect("nix-build");
    assert!(check.status.success(), "nix-build --check failed:\n{}", text(&check.stderr));
    let printed = text(&check.stdout);
    assert!(printed.contains(current.to_str().unwrap()) && printed.contains(older.to_str().unwrap()), "{printed}");
    eprintln!("nix-build --check of both outputs: {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn a_version_that_does_not_exist_names_the_group() {
    if !ready("a_version_that_does_not_exist_names_the_group") {
        return;
    }
    setup();
    let dir = tempfile::tempdir().expect("temp dir");
    let composition = dir.path().join("bad.toml");
    let plan = repo().join("plans/ping-rust");
    std::fs::write(
        &composition,
        format!(
            r#"[global]
plan = {plan:?}
case = "ping"
builder = "nix:rust"
runner = "local:exec"
total_instances = 2

# First, so that the test fails before building anything.
[[groups]]
id = "time-traveller"
instances = {{ count = 1 }}

  [[groups.build.dependencies]]
  module = "serde_json"
  version = "9.9.9"

[[groups]]
id = "good"
instances = {{ count = 1 }}
"#
        ),
    )
    .unwrap();
    let (code, _, stderr) = run(&[composition.to_str().unwrap()]);
    assert_eq!(code, 3, "a build failure: {stderr}");
    assert!(stderr.contains("group `time-traveller`: dependency rewrite `serde_json = 9.9.9` failed"), "{stderr}");
    // cargo's own words, so the user sees what it knows about the crate.
    assert!(stderr.contains("serde_json"), "{stderr}");
    assert!(stderr.contains("hint: fix the module or version"), "{stderr}");
}

#[test]
fn a_local_target_replaces_the_crate() {
    if !ready("a_local_target_replaces_the_crate") {
        return;
    }
    setup();
    // A tiny plan on itoa, without a Cargo.lock or a [workspace] of its own, and a local "fork"
    // of itoa that the group's rewrite points at.
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("tiny");
    let fork = dir.path().join("itoa-fork");
    for d in [plan.join("src"), plan.join("compositions"), fork.join("src")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        plan.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\n",
    )
    .unwrap();
    std::fs::write(
        plan.join("src/main.rs"),
        "fn main() { println!(\"itoa says {}\", itoa::Buffer::new().format(42u32)); }\n",
    )
    .unwrap();
    std::fs::write(
        plan.join("manifest.toml"),
        "name = \"tiny\"\n[builders.\"nix:rust\"]\n[runners.\"local:exec\"]\n[[testcases]]\nname = \"t\"\ninstances = { min = 1, max = 1 }\n",
    )
    .unwrap();
    std::fs::write(fork.join("Cargo.toml"), "[package]\nname = \"itoa\"\nversion = \"1.0.99\"\nedition = \"2021\"\n")
        .unwrap();
    std::fs::write(
        fork.join("src/lib.rs"),
        "pub struct Buffer;\nimpl Buffer {\n    pub fn new() -> Buffer { Buffer }\n    pub fn format(&mut self, _: u32) -> &str { \"forked\" }\n}\n",
    )
    .unwrap();
    let composition = plan.join("compositions/forked.toml");
    std::fs::write(
        &composition,
        format!(
            "[global]\nplan = \"..\"\ncase = \"t\"\nbuilder = \"nix:rust\"\nrunner = \"local:exec\"\ntotal_instances = 1\n\n\
             [[groups]]\nid = \"forked\"\ninstances = {{ count = 1 }}\n  [[groups.build.dependencies]]\n  module = \"itoa\"\n  version = \"1.0.99\"\n  target = {:?}\n",
            fork.display().to_string()
        ),
    )
    .unwrap();

    let out = tg_nix(&["gen", composition.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "tg-nix gen failed:\n{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no Cargo.lock: generated one"), "{}", text(&out.stderr));
    assert!(!plan.join("Cargo.lock").exists(), "the plan itself is left alone");
    let gen: Value = serde_json::from_slice(&out.stdout).expect("gen --json");
    let file = gen["groups"][0]["file"].as_str().expect("file").to_string();
    // The fork travels in the source, so nothing is vendored for it.
    let deps = PathBuf::from(gen["groups"][0]["deps"].as_str().unwrap());
    assert_eq!(std::fs::read_dir(&deps).unwrap().count(), 0, "{}", deps.display());

    let build = Command::new("nix-build").arg(&file).arg("--no-out-link").output().expect("nix-build");
    assert!(build.status.success(), "nix-build failed:\n{}", text(&build.stderr));
    let out_path = text(&build.stdout).trim().to_string();
    let ran = Command::new(Path::new(&out_path).join("bin/tiny")).output().expect("tiny runs");
    assert_eq!(text(&ran.stdout), "itoa says forked\n");
}

/// `tg-nix build … --json` with `args`: exit code, report, stderr.
fn build(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tg_nix(&all);
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out.stderr))
}

/// Each unit's `outcome` in a `build --json` report, by its groups.
fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["units"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let groups: Vec<&str> = u["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            (groups.join(","), u["outcome"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// A composition of ping-rust, `dir/<name>.toml`, with one group per (id, serde_json version).
fn versions_composition(dir: &Path, name: &str, groups: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "[global]\nplan = {:?}\ncase = \"ping\"\nbuilder = \"nix:rust\"\nrunner = \"local:exec\"\ntotal_instances = {}\n",
        repo().join("plans/ping-rust").display().to_string(),
        groups.len()
    );
    for (id, version) in groups {
        text.push_str(&format!(
            "\n[[groups]]\nid = \"{id}\"\ninstances = {{ count = 1 }}\n  [[groups.build.dependencies]]\n  module = \"serde_json\"\n  version = \"{version}\"\n"
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_lock_pins_each_unit_and_locked_builds_exactly_that() {
    if !ready("the_lock_pins_each_unit_and_locked_builds_exactly_that") {
        return;
    }
    setup();
    let _turn = PING_RUST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let composition = versions_composition(dir.path(), "versions", &[("current", "1.0.154"), ("older", "1.0.145")]);
    let comp = composition.to_str().unwrap();
    let lock_path = dir.path().join("tg-nix.lock");

    // First build: both units (built here or by another test: same inputs, same outputs).
    let (code, report, stderr) = build(&[comp]);
    assert_eq!(code, 0, "{stderr}");
    let lock = std::fs::read_to_string(&lock_path).expect("tg-nix.lock written beside the composition");
    let doc: toml::Table = lock.parse().expect("the lock is TOML");
    let units = doc["unit"].as_array().expect("[[unit]]");
    assert_eq!(units.len(), 2, "{lock}");
    for unit in units {
        let (group, version) = match unit["groups"][0].as_str() {
            Some("current") => ("current", "1.0.154"),
            Some("older") => ("older", "1.0.145"),
            other => panic!("unexpected group {other:?} in {lock}"),
        };
        let rewrite = &unit["rewrites"][0];
        assert_eq!(rewrite["module"].as_str(), Some("serde_json"), "{group}");
        assert_eq!(rewrite["version"].as_str(), Some(version), "{group}");
        assert_eq!(rewrite["checksum"].as_str().map(str::len), Some(64), "{group}: crates.io checksum");
        // The .drv and output paths tg-nix computed are Nix's.
        let out = unit["out"].as_str().unwrap();
        let deriver = Command::new("nix-store").args(["-q", "--deriver", out]).output().expect("nix-store");
        assert_eq!(text(&deriver.stdout).trim(), unit["drv"].as_str().unwrap(), "{group}");
        for key in ["src", "deps", "toolchain"] {
            assert!(unit[key]["path"].as_str().unwrap().starts_with("/nix/store/"), "{group}.{key}");
            assert_eq!(unit[key]["nar_hash"].as_str().map(str::len), Some(52), "{group}.{key}");
        }
    }
    let outs: Vec<&str> = units.iter().map(|u| u["out"].as_str().unwrap()).collect();
    assert_ne!(outs[0], outs[1]);
    assert!(report["units"].as_array().is_some_and(|u| u.len() == 2), "{report:#}");

    // Again: nothing is built, and it says so; the lock is unchanged.
    let (code, report, stderr) = build(&[comp]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outcomes(&report), [("current".into(), "cached".into()), ("older".into(), "cached".into())]);
    assert!(stderr.contains("current done (cached): "), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // --locked: the same, from the lock.
    let (code, report, stderr) = build(&[comp, "--locked"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outcomes(&report).len(), 2);

    // --locked with a composition the lock does not pin: refused before anything is built.
    let changed = versions_composition(dir.path(), "versions", &[("current", "1.0.154"), ("older", "1.0.150")]);
    let (code, _, stderr) = build(&[changed.to_str().unwrap(), "--locked"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no pin for group `older`"), "{stderr}");
    assert!(stderr.contains("serde_json = 1.0.150"), "{stderr}");
    assert!(stderr.contains("without --locked"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock, "a refused build leaves the lock alone");

    // --locked with a lock whose pin the unit no longer resolves to (edited deps hash): refused
    // with what differs, nothing written.
    versions_composition(dir.path(), "versions", &[("current", "1.0.154"), ("older", "1.0.145")]);
    let older = units.iter().find(|u| u["groups"][0].as_str() == Some("older")).unwrap();
    let real_hash = older["deps"]["nar_hash"].as_str().unwrap();
    let forged = lock.replace(real_hash, &"0".repeat(52));
    std::fs::write(&lock_path, &forged).unwrap();
    let (code, _, stderr) = build(&[comp, "--locked"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("group `older`: does not match tg-nix.lock"), "{stderr}");
    assert!(stderr.contains("vendored dependencies"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), forged);

    // Without --locked: one group's version changed → exactly that unit is built; the lock
    // follows.
    std::fs::write(&lock_path, &lock).unwrap();
    versions_composition(dir.path(), "versions", &[("current", "1.0.154"), ("older", "1.0.150")]);
    let (code, report, stderr) = build(&[changed.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let got = outcomes(&report);
    assert_eq!(got[0], ("current".to_string(), "cached".to_string()), "{got:?}");
    assert_eq!(got[1].0, "older");
    assert_ne!(got[1].1, "cached", "{got:?}");
    let relocked = std::fs::read_to_string(&lock_path).unwrap();
    assert!(relocked.contains("version = \"1.0.150\"") && !relocked.contains("version = \"1.0.145\""), "{relocked}");
}

#[test]
fn a_target_path_that_does_not_exist_names_the_group() {
    if !ready("a_target_path_that_does_not_exist_names_the_group") {
        return;
    }
    setup();
    let dir = tempfile::tempdir().expect("temp dir");
    let composition = dir.path().join("missing-target.toml");
    std::fs::write(
        &composition,
        format!(
            "[global]\nplan = {:?}\ncase = \"ping\"\nbuilder = \"nix:rust\"\nrunner = \"local:exec\"\ntotal_instances = 2\n\n\
             [[groups]]\nid = \"forked\"\ninstances = {{ count = 2 }}\n  [[groups.build.dependencies]]\n  module = \"serde_json\"\n  version = \"1.0.999\"\n  target = \"../no-such-fork\"\n",
            repo().join("plans/ping-rust").display().to_string()
        ),
    )
    .unwrap();
    let (code, _, stderr) = build(&[composition.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("group `forked`: build_config.dependencies.serde_json.target"), "{stderr}");
    assert!(stderr.contains("no-such-fork: no Cargo.toml there"), "{stderr}");
    assert!(!dir.path().join("tg-nix.lock").exists(), "nothing is pinned for a failed build");
}

#[test]
fn a_host_without_the_sandbox_or_the_imports_is_refused_naming_the_group() {
    if !ready("a_host_without_the_sandbox_or_the_imports_is_refused_naming_the_group") {
        return;
    }
    setup();
    let dir = tempfile::tempdir().expect("temp dir");
    let build = |env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
        cmd.current_dir(repo()).env("TG_NIX_HOME", nix_home()).env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .args(["build", "--plan", "plans/ping-rust", "--case", "ping", "--builder", "nix:rust"])
            .output()
            .expect("tg-nix runs");
        (out.status.code().unwrap_or(-1), text(&out.stderr))
    };

    // The sandbox off in the nix.conf Nix would read (NIX_CONF_DIR, as Nix honours it).
    let conf_dir = dir.path().join("nix-conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(conf_dir.join("nix.conf"), "sandbox = false\n").unwrap();
    let (code, stderr) = build(&[("NIX_CONF_DIR", &conf_dir)]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("group `single` (nix:rust)"), "{stderr}");
    assert!(stderr.contains("`sandbox = false`"), "{stderr}");
    assert!(stderr.contains("hint: run `tg-nix setup` as root"), "{stderr}");

    // A home where `tg-nix setup` never ran: no toolchain import. Nothing is created there.
    let fresh = dir.path().join("fresh-home");
    let (code, stderr) = build(&[("TG_NIX_HOME", &fresh)]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("group `single` (nix:rust)"), "{stderr}");
    assert!(stderr.contains("`tg-nix setup` has not been run for this tg-nix home"), "{stderr}");
    assert!(stderr.contains("hint: run `tg-nix setup` as root"), "{stderr}");
    assert!(!fresh.join("data/state").exists(), "no state DB was made for a refused build");
}
