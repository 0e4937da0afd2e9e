//! `tg-nix matrix` through the real binary, with a fast matrix of placebo-rust (exec:rust,
//! local:exec; needs root for network namespaces): every cell runs; an unchanged matrix is
//! reported from the cache without running anything; `--rerun-failed` runs only the failed cells;
//! a changed dimension runs only the new cells; shards split the cells exactly; bad matrix files
//! exit 2 with nothing built, run or cached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{is_root, plan_target, repo, text};

/// True when the test can run. Outside CI a missing privilege is said loudly; in CI it fails.
fn privileged(test: &str) -> bool {
    common::ready(test, (!is_root()).then_some("root for network namespaces"))
}

/// A placebo-rust composition: the case and the instance count come from the cell.
const TEMPLATE: &str = r#"
[metadata]
name = "placebo-matrix"

[global]
plan = "PLAN"
case = "{{vars.case}}"
builder = "exec:rust"
runner = "local:exec"

[[groups]]
id = "only"
instances = { count = {{vars.n}} }
"#;

struct Env {
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            home: tempfile::Builder::new().prefix("tg-nix-matrix-home").tempdir().expect("temp home"),
            dir: tempfile::Builder::new().prefix("tg-nix-matrix").tempdir().expect("temp dir"),
        };
        let plan = repo().join("plans/placebo-rust");
        env.write("cell.toml.hbs", &TEMPLATE.replace("PLAN", &plan.to_string_lossy()));
        env
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn matrix(&self, dimensions: &str) -> PathBuf {
        self.write("matrix.toml", &format!("template = \"cell.toml.hbs\"\n[dimensions]\n{dimensions}"))
    }

    fn tg_nix(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tg-nix"))
            .args(args)
            .current_dir(repo())
            .env("TG_NIX_HOME", self.home.path())
            .env("CARGO_TARGET_DIR", plan_target())
            .env_remove("RUST_LOG")
            .output()
            .expect("tg-nix runs")
    }

    /// `tg-nix matrix --json …`: the exit code and the document.
    fn matrix_json(&self, matrix: &Path, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["matrix", matrix.to_str().expect("utf-8 path"), "--json", "--timeout", "60s"];
        args.extend_from_slice(extra);
        let out = self.tg_nix(&args);
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr:\n{}", text(&out.stdout), text(&out.stderr)));
        (out.status.code().unwrap_or(-1), doc)
    }

    /// How many run outputs directories the home holds.
    fn outputs(&self) -> usize {
        std::fs::read_dir(self.home.path().join("data/outputs/local_exec/placebo-rust")).map(|d| d.count()).unwrap_or(0)
    }
}

/// Cell name → state (`ran`/`cached`) and outcome.
fn cells(doc: &Value) -> Vec<(String, String, String)> {
    doc["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            (
                c["cell"].as_str().unwrap_or("?").to_string(),
                c["state"].as_str().unwrap_or("?").to_string(),
                c["outcome"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn states(doc: &Value, state: &str) -> BTreeSet<String> {
    cells(doc).into_iter().filter(|c| c.1 == state).map(|c| c.0).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn matrix_runs_caches_and_reruns() {
    if !privileged("matrix_runs_caches_and_reruns") {
        return;
    }
    let env = Env::new();
    let matrix = env.matrix("case = [\"ok\", \"failure\"]\nn = [1, 2]\n");
    let all = set(&["case=ok n=1", "case=ok n=2", "case=failure n=1", "case=failure n=2"]);
    let failed = set(&["case=failure n=1", "case=failure n=2"]);

    // First run: every cell runs; the failure cells fail.
    let report_dir = env.dir.path().join("report");
    let (code, doc) = env.matrix_json(&matrix, &["--workers", "2", "--report-dir", report_dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(states(&doc, "ran"), all, "{doc}");
    let failing: BTreeSet<String> = cells(&doc).into_iter().filter(|c| c.2 == "failure").map(|c| c.0).collect();
    assert_eq!(failing, failed);
    assert_eq!(env.outputs(), 4);
    assert_eq!(doc["runs"].as_array().map(Vec::len), Some(4));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).expect("report.json")).unwrap();
    let names: BTreeSet<String> =
        report["runs"].as_array().unwrap().iter().map(|r| r["composition_run"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, all, "the runs are named by their cells");
    for file in ["junit.xml", "summary.md", "index.html"] {
        let body = std::fs::read_to_string(report_dir.join(file)).expect(file);
        assert!(body.contains("case=failure n=2"), "{file} names the cells");
    }

    // Unchanged: everything from the cache, nothing run, same verdicts and exit code.
    let (code, doc) = env.matrix_json(&matrix, &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(states(&doc, "cached"), all, "{doc}");
    assert_eq!(env.outputs(), 4, "a cached cell starts nothing");
    let failing: BTreeSet<String> = cells(&doc).into_iter().filter(|c| c.2 == "failure").map(|c| c.0).collect();
    assert_eq!(failing, failed);
    // The terminal table says so too.
    let out = env.tg_nix(&["matrix", matrix.to_str().unwrap(), "--timeout", "60s"]);
    let table = text(&out.stdout);
    assert!(table.contains("0 ran") && table.contains("4 cached"), "{table}");
    assert_eq!(env.outputs(), 4);

    // --rerun-failed: the failed cells run again, the passes come from the cache.
    let (code, doc) = env.matrix_json(&matrix, &["--rerun-failed"]);
    assert_eq!(code, 1);
    assert_eq!(states(&doc, "ran"), failed, "{doc}");
    assert_eq!(states(&doc, "cached"), set(&["case=ok n=1", "case=ok n=2"]));
    assert_eq!(env.outputs(), 6);

    // A changed dimension value: only the new cells run.
    let matrix = env.matrix("case = [\"ok\", \"failure\"]\nn = [1, 3]\n");
    let (_, doc) = env.matrix_json(&matrix, &[]);
    assert_eq!(states(&doc, "ran"), set(&["case=ok n=3", "case=failure n=3"]), "{doc}");
    assert_eq!(states(&doc, "cached"), set(&["case=ok n=1", "case=failure n=1"]));
    assert_eq!(env.outputs(), 8);

    // Shards: every cell in exactly one of them (with --rerun, each runs).
    let mut seen = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let (_, doc) = env.matrix_json(&matrix, &["--shard", shard, "--rerun"]);
        assert!(states(&doc, "cached").is_empty(), "--rerun runs every cell: {doc}");
        seen.extend(cells(&doc).into_iter().map(|c| c.0));
    }
    seen.sort();
    let mut expected: Vec<String> =
        ["case=ok n=1", "case=ok n=3", "case=failure n=1", "case=failure n=3"].iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(env.outputs(), 12);
}

#[test]
fn bad_matrices_run_nothing() {
    let env = Env::new();
    let cases: [(&str, &str, &str); 5] = [
        (
            "no cells",
            "template = \"cell.toml.hbs\"\n[dimensions]\ncase = [\"ok\"]\nn = [1]\n[[exclude]]\ncase = \"ok\"\n",
            "no cells",
        ),
        ("empty dimension", "template = \"cell.toml.hbs\"\n[dimensions]\ncase = []\nn = [1]\n", "no cells"),
        (
            "unknown key",
            "template = \"cell.toml.hbs\"\nworkers = 3\n[dimensions]\ncase = [\"ok\"]\nn = [1]\n",
            "workers",
        ),
        ("undefined variable", "template = \"cell.toml.hbs\"\n[dimensions]\ncase = [\"ok\"]\n", "n"),
        (
            "unknown exclude key",
            "template = \"cell.toml.hbs\"\n[dimensions]\ncase = [\"ok\"]\nn = [1]\n[[exclude]]\nm = 1\n",
            "no such dimension",
        ),
    ];
    for (what, body, needle) in cases {
        let matrix = env.write("bad.toml", body);
        let out = env.tg_nix(&["matrix", matrix.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("error:") && stderr.contains(needle), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out.stdout));
    }
    let out = env.tg_nix(&["matrix", env.matrix("case = [\"ok\"]\nn = [1]\n").to_str().unwrap(), "--shard", "3/2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for sub in ["data/outputs", "data/work", "data/state"] {
        assert!(!env.home.path().join(sub).exists(), "{sub} exists: something was built, run or cached");
    }
}

/// A placebo-rust composition whose instances leave marker files in a directory per cell (the
/// `flaky` case fails until its marker exists).
const MARKED_TEMPLATE: &str = r#"
[metadata]
name = "placebo-flaky"

[global]
plan = "PLAN"
case = "{{vars.case}}"
builder = "exec:rust"
runner = "local:exec"

[global.run.test_params]
marker_dir = "MARKERS/{{vars.m}}"

[[groups]]
id = "only"
instances = { count = 1 }
"#;

impl Env {
    fn marked_matrix(&self, dimensions: &str) -> PathBuf {
        let plan = repo().join("plans/placebo-rust");
        let markers = self.dir.path().join("markers");
        self.write(
            "marked.toml.hbs",
            &MARKED_TEMPLATE.replace("PLAN", &plan.to_string_lossy()).replace("MARKERS", &markers.to_string_lossy()),
        );
        self.write("marked.toml", &format!("template = \"marked.toml.hbs\"\n[dimensions]\n{dimensions}"))
    }
}

fn cell<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["cells"]
        .as_array()
        .and_then(|cells| cells.iter().find(|c| c["cell"] == name))
        .unwrap_or_else(|| panic!("no cell {name} in {doc}"))
}

#[test]
fn flaky_cells_pass_on_a_retry() {
    if !privileged("flaky_cells_pass_on_a_retry") {
        return;
    }
    let env = Env::new();

    // Without retries the flaky case just fails (and leaves its marker behind).
    let matrix = env.marked_matrix("case = [\"flaky\"]\nm = [\"once\"]\n");
    let (code, doc) = env.matrix_json(&matrix, &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(cell(&doc, "case=flaky m=once")["verdict"], "fail", "{doc}");

    // With --retries 2 a fresh flaky cell fails once, passes on the retry: flaky, exit 0.
    let matrix = env.marked_matrix("case = [\"flaky\", \"ok\"]\nm = [\"retry\"]\n");
    let report_dir = env.dir.path().join("flaky-report");
    let (code, doc) = env.matrix_json(&matrix, &["--retries", "2", "--report-dir", report_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "flaky cells do not fail the matrix: {doc}");
    let flaky = cell(&doc, "case=flaky m=retry");
    assert_eq!(
        (&flaky["verdict"], &flaky["outcome"], &flaky["state"]),
        (&"flaky".into(), &"flaky".into(), &"ran".into())
    );
    let attempts = flaky["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "one failed attempt, one pass: {flaky}");
    assert_eq!((&attempts[0]["outcome"], &attempts[1]["outcome"]), (&"failure".into(), &"success".into()));
    assert!(attempts[0]["summary"].as_str().unwrap_or("").starts_with("FAIL"), "{flaky}");
    assert_eq!(cell(&doc, "case=ok m=retry")["verdict"], "pass");
    assert_eq!(doc["verdicts"]["flaky"], 1, "{doc}");
    let run = doc["runs"].as_array().unwrap().iter().find(|r| r["cell"]["verdict"] == "flaky").expect("a flaky run");
    assert_eq!(run["outcome"], "success", "the reported run is the passing attempt");
    // Every report says flaky: JUnit as a passing testsuite with a property, Markdown, HTML.
    let junit = std::fs::read_to_string(report_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("<property name=\"cell_verdict\" value=\"flaky\"/>"), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");
    let md = std::fs::read_to_string(report_dir.join("summary.md")).unwrap();
    assert!(md.contains("⚠️ flaky") && md.contains("attempt 1: FAIL"), "{md}");
    let html = std::fs::read_to_string(report_dir.join("index.html")).unwrap();
    assert!(html.contains("class=\"run v-flaky\"") && html.contains("data-cell-verdict=\"flaky\""), "{html}");
    let table = text(&env.tg_nix(&["matrix", matrix.to_str().unwrap(), "--timeout", "60s"]).stdout);
    assert!(table.contains("FLAKY") && table.contains("1 flaky"), "{table}");

    // From the cache: still flaky; --fail-on-flaky makes it fail the matrix.
    let (code, doc) = env.matrix_json(&matrix, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(cell(&doc, "case=flaky m=retry")["state"], "cached");
    assert_eq!(cell(&doc, "case=flaky m=retry")["verdict"], "flaky");
    let (code, doc) = env.matrix_json(&matrix, &["--fail-on-flaky"]);
    assert_eq!(code, 1, "{doc}");

    // --rerun-failed runs flaky cells again (the marker is there now: a plain pass).
    let outputs = env.outputs();
    let (code, doc) = env.matrix_json(&matrix, &["--rerun-failed"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(states(&doc, "ran"), set(&["case=flaky m=retry"]), "{doc}");
    assert_eq!(cell(&doc, "case=flaky m=retry")["verdict"], "pass");
    assert_eq!(env.outputs(), outputs + 1);
}

#[test]
fn known_failures_hide_known_cells_only() {
    if !privileged("known_failures_hide_known_cells_only") {
        return;
    }
    let env = Env::new();
    let known = env.write(
        "known.toml",
        "# expected failures\n\
         [[known-failure]]\ncell = { case = \"fail*\" }\nreason = \"upstream bug #12\"\nuntil = \"2099-12-31\"\n\n\
         [[known-failure]]\ncell = { case = \"ok\", n = \"*\" }\nreason = \"was broken\"\nuntil = 2099-12-31\n\n\
         [[known-failure]]\ncell = { case = \"no-*\" }\nreason = \"long gone\"\nuntil = \"2020-01-01\"\n",
    );
    let kf = known.to_str().unwrap();
    let matrix = env.matrix("case = [\"ok\", \"failure\", \"no-event\"]\nn = [1]\n");
    let report_dir = env.dir.path().join("known-report");
    let (code, doc) = env.matrix_json(&matrix, &["--known-failures", kf, "--report-dir", report_dir.to_str().unwrap()]);
    // The known failure is hidden, the new failure (its entry expired) still fails the matrix.
    assert_eq!(code, 1, "{doc}");
    let failure = cell(&doc, "case=failure n=1");
    assert_eq!((&failure["verdict"], &failure["outcome"]), (&"known-failure".into(), &"failure".into()), "{doc}");
    assert_eq!(failure["known_failure"]["line"], 2);
    assert!(failure["note"].as_str().unwrap_or("").contains("upstream bug #12"), "{failure}");
    let ok = cell(&doc, "case=ok n=1");
    assert_eq!(ok["verdict"], "fixed?", "a passing cell with an entry is flagged: {doc}");
    assert!(ok["note"].as_str().unwrap_or("").contains("remove the entry"), "{ok}");
    let expired = cell(&doc, "case=no-event n=1");
    assert_eq!(expired["verdict"], "fail", "an expired entry does not apply: {doc}");
    assert_eq!(expired["known_failure"]["expired"], true);
    assert!(expired["note"].as_str().unwrap_or("").contains("expired on 2020-01-01"), "{expired}");
    assert_eq!(doc["known_failures"]["expired"][0]["entry"], 2, "{doc}");
    let junit = std::fs::read_to_string(report_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("<skipped message=\"known failure: upstream bug #12"), "{junit}");
    let html = std::fs::read_to_string(report_dir.join("index.html")).unwrap();
    assert!(html.contains("data-cell-verdict=\"known-failure\"") && html.contains("data-cell-verdict=\"fixed?\""));
    let md = std::fs::read_to_string(report_dir.join("summary.md")).unwrap();
    assert!(md.contains("🟡 known failure") && md.contains("❔ fixed?"), "{md}");

    // Without the new failure only known failures are left: exit 0, from the cache.
    let matrix = env.matrix("case = [\"ok\", \"failure\"]\nn = [1]\n");
    let (code, doc) = env.matrix_json(&matrix, &["--known-failures", kf]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(states(&doc, "cached").len(), 2, "known failures apply to cached results: {doc}");
    // And without the file the failure fails again.
    let (code, _) = env.matrix_json(&matrix, &[]);
    assert_eq!(code, 1);
}

#[test]
fn bad_known_failures_run_nothing() {
    let env = Env::new();
    let matrix = env.matrix("case = [\"ok\"]\nn = [1]\n");
    let entry =
        |cell: &str, until: &str| format!("[[known-failure]]\ncell = {cell}\nreason = \"r\"\nuntil = {until}\n");
    let good = entry("{ case = \"ok\" }", "\"2099-01-01\"");
    let cases = [
        (
            "unknown dimension",
            format!("{good}{}", entry("{ version = \"1.*\" }", "\"2099-01-01\"")),
            "known.toml:6: known-failure[1].cell.version: no such dimension",
        ),
        (
            "invalid glob",
            format!("{good}{}", entry("{ case = \"[ok\" }", "\"2099-01-01\"")),
            "known.toml:6: known-failure[1].cell.case: invalid glob",
        ),
        (
            "bad date",
            format!("{good}{}", entry("{ case = \"ok\" }", "\"2099-02-30\"")),
            "known.toml:8: known-failure[1].until",
        ),
        ("not a date", entry("{ case = \"ok\" }", "\"soon\""), "known.toml:4: known-failure[0].until"),
        ("unknown key", format!("{good}owner = \"me\"\n"), "owner"),
        (
            "missing reason",
            "[[known-failure]]\ncell = { case = \"ok\" }\nuntil = \"2099-01-01\"\n".to_string(),
            "reason",
        ),
    ];
    for (what, body, needle) in cases {
        let known = env.write("known.toml", &body);
        let out = env.tg_nix(&["matrix", matrix.to_str().unwrap(), "--known-failures", known.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("error:") && stderr.contains(needle), "{what}: no `{needle}` in {stderr}");
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out.stdout));
    }
    let out = env.tg_nix(&["matrix", matrix.to_str().unwrap(), "--known-failures", "no/such/known.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for sub in ["data/outputs", "data/work", "data/state"] {
        assert!(!env.home.path().join(sub).exists(), "{sub} exists: something was built, run or cached");
    }
}
