//! The run history through the real binary (exec:rust, placebo-rust, local:exec; needs root for
//! network namespaces): runs and matrix cells are recorded in the state DB when they end,
//! `runs list` shows them newest first, `runs show` agrees with result.json, `outputs` packs a run
//! into a .tgz laid out as `testground collect` does, unknown ids exit 2.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{is_root, plan_target, repo, text};

fn privileged(test: &str) -> bool {
    common::ready(test, (!is_root()).then_some("root for network namespaces"))
}

struct Env {
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::Builder::new().prefix("tg-nix-history-home").tempdir().expect("temp home"),
            dir: tempfile::Builder::new().prefix("tg-nix-history").tempdir().expect("temp dir"),
        }
    }

    fn tg_nix(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tg-nix"))
            .args(args)
            .current_dir(self.dir.path())
            .env("TG_NIX_HOME", self.home.path())
            .env("CARGO_TARGET_DIR", plan_target())
            .env_remove("RUST_LOG")
            .output()
            .expect("tg-nix runs")
    }

    /// Runs the command, expects `code`, returns stdout as JSON.
    fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.tg_nix(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: not JSON ({e}): {}\nstderr:\n{}", text(&out.stdout), text(&out.stderr))
        })
    }

    /// `run --plan placebo-rust --case CASE --instances N --json`: the run's report.
    fn run(&self, case: &str, instances: &str, code: i32) -> Value {
        let plan = repo().join("plans/placebo-rust");
        let plan = plan.to_str().expect("utf-8 path");
        let doc = self.json(&["run", "--plan", plan, "--case", case, "--instances", instances, "--json"], code);
        doc["runs"][0].clone()
    }
}

/// Every entry of a .tgz, with the contents of its regular files.
fn read_tgz(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .expect("a tar")
        .map(|e| {
            let mut e = e.expect("an entry");
            let name = e.path().expect("a path").to_string_lossy().into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body).expect("entry body");
            (name, body)
        })
        .collect()
}

#[test]
fn runs_are_recorded_listed_shown_and_packed() {
    if !privileged("runs_are_recorded_listed_shown_and_packed") {
        return;
    }
    let env = Env::new();
    let ok = env.run("ok", "2", 0);
    let failed = env.run("failure", "1", 1);
    let (ok_id, failed_id) = (ok["run_id"].as_str().unwrap(), failed["run_id"].as_str().unwrap());

    // Newest first, with what decided each run.
    let list = env.json(&["runs", "list", "--json"], 0);
    let runs = list["runs"].as_array().expect("runs");
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [failed_id, ok_id], "{list:#}");
    assert_eq!(runs[0]["passed"], false);
    assert_eq!(runs[0]["outcome"], "failure");
    assert_eq!((runs[0]["instances_failed"].as_u64(), runs[0]["verdicts"]["failure"].as_u64()), (Some(1), Some(1)));
    assert_eq!(runs[1]["passed"], true);
    assert_eq!((runs[1]["instances_passed"].as_u64(), runs[1]["verdicts"]["pass"].as_u64()), (Some(2), Some(2)));
    for r in runs {
        assert_eq!(r["plan"], "placebo-rust");
        assert_eq!(r["runner"], "local:exec");
        assert!(r["composition"].is_null(), "a --plan run has no composition file");
    }
    let limited = env.json(&["runs", "list", "--json", "--limit", "1"], 0);
    assert_eq!(limited["runs"].as_array().unwrap().len(), 1);
    assert_eq!(limited["runs"][0]["run_id"], failed_id);
    let other = env.json(&["runs", "list", "--json", "--plan", "ping-rust"], 0);
    assert!(other["runs"].as_array().unwrap().is_empty());
    let table = env.tg_nix(&["runs", "list"]);
    assert!(text(&table.stdout).contains(ok_id) && text(&table.stdout).contains("FAIL"), "{}", text(&table.stdout));

    // `runs show` is the record plus result.json as written.
    let outputs_dir = PathBuf::from(failed["outputs_dir"].as_str().unwrap());
    let result: Value = serde_json::from_slice(&std::fs::read(outputs_dir.join("result.json")).unwrap()).unwrap();
    let shown = env.json(&["runs", "show", failed_id, "--json"], 0);
    assert_eq!(shown["result"], result);
    assert_eq!(shown["run"], runs[0]);
    let shown_text = text(&env.tg_nix(&["runs", "show", failed_id]).stdout);
    assert!(shown_text.contains("FAIL single[0]: failure"), "{shown_text}");
    assert!(shown_text.contains("0/1 passed"), "{shown_text}");

    // `outputs`: <run_id>.tgz in the current directory, every instance's files under
    // <run_id>/<group>/<idx>/.
    let out = env.tg_nix(&["outputs", ok_id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tgz = env.dir.path().join(format!("{ok_id}.tgz"));
    assert_eq!(text(&out.stdout).trim(), format!("{ok_id}.tgz"));
    let entries = read_tgz(&tgz);
    let names: BTreeSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| *n == ok_id || n.starts_with(&format!("{ok_id}/"))), "{names:?}");
    assert!(names.contains(format!("{ok_id}/result.json").as_str()), "{names:?}");
    for inst in ok["instances"].as_array().unwrap() {
        let (group, idx) = (inst["group"].as_str().unwrap(), inst["group_index"].as_u64().unwrap());
        let dir = PathBuf::from(inst["outputs_dir"].as_str().unwrap());
        for file in ["stdout", "stderr", "run.out"] {
            let name = format!("{ok_id}/{group}/{idx}/{file}");
            let body = &entries.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name} in {names:?}")).1;
            assert_eq!(body, &std::fs::read(dir.join(file)).unwrap(), "{name}");
        }
    }
    // -o, and the same archive again: the same bytes.
    let again = env.dir.path().join("again.tgz");
    let out = env.tg_nix(&["outputs", ok_id, "-o", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&tgz).unwrap());

    // Unknown ids exit 2 and point at `runs list`; deleted outputs are a clear error.
    for args in [&["runs", "show", "nosuchrun0000000000"][..], &["outputs", "nosuchrun0000000000"][..]] {
        let out = env.tg_nix(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("tg-nix runs list"), "{}", text(&out.stderr));
    }
    std::fs::remove_dir_all(&outputs_dir).unwrap();
    let out = env.tg_nix(&["outputs", failed_id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not exist any more"), "{}", text(&out.stderr));
    let shown = env.json(&["runs", "show", failed_id, "--json"], 0);
    assert!(shown["result"].is_null() && shown["run"]["run_id"] == failed_id);
}

#[test]
fn matrix_cells_are_recorded() {
    if !privileged("matrix_cells_are_recorded") {
        return;
    }
    let env = Env::new();
    let plan = repo().join("plans/placebo-rust");
    let template = format!(
        "[metadata]\nname = \"history\"\n[global]\nplan = \"{}\"\ncase = \"{{{{vars.case}}}}\"\nbuilder = \"exec:rust\"\n\
         runner = \"local:exec\"\n[[groups]]\nid = \"only\"\ninstances = {{ count = 1 }}\n",
        plan.display()
    );
    std::fs::write(env.dir.path().join("cell.toml.hbs"), template).unwrap();
    let matrix = env.dir.path().join("matrix.toml");
    std::fs::write(&matrix, "template = \"cell.toml.hbs\"\n[dimensions]\ncase = [\"ok\", \"failure\"]\n").unwrap();
    let out = env.tg_nix(&["matrix", matrix.to_str().unwrap(), "--json", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", text(&out.stderr));
    let list = env.json(&["runs", "list", "--json"], 0);
    let runs = list["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{list:#}");
    let cases: BTreeSet<&str> = runs.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(cases, BTreeSet::from(["ok", "failure"]));
    for r in runs {
        assert_eq!(r["composition"].as_str(), matrix.to_str(), "{r}");
        assert_eq!(r["passed"], r["case"] == "ok");
    }
}
