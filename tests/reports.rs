//! `tg-nix run --report-dir`: the report files of real runs of placebo-rust (exec:rust,
//! local:exec) agree with the JSON report on every instance; junit.xml validates against the
//! Jenkins/Ant JUnit schema (tests/fixtures/junit.xsd, with `xmllint`); index.html renders in
//! headless Chromium (DOM dump and a PNG screenshot) with a hostile group id kept as text.
//! Needs root (namespaces), xmllint (apt libxml2-utils) and chromium; with CI=true a missing
//! prerequisite fails the test instead of skipping it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;
use common::{is_root, plan_target, repo, works};

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { home: tempfile::Builder::new().prefix("tg-nix-reports").tempdir().expect("temp home") }
    }

    /// Runs `tg-nix run ARGS --json --report-dir DIR`: exit code, the --json report, stderr.
    fn run(&self, args: &[&str], report_dir: &Path) -> (i32, Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tg-nix"))
            .current_dir(repo())
            .env("TG_NIX_HOME", self.home.path())
            .env("CARGO_TARGET_DIR", plan_target())
            .env_remove("RUST_LOG")
            .arg("run")
            .args(args)
            .arg("--json")
            .arg("--report-dir")
            .arg(report_dir)
            .output()
            .expect("tg-nix runs");
        let stderr = common::text(&out.stderr);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), json, stderr)
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// XML text escaping as the report writes it (the test repeats it rather than trusting it).
fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// `exit_code` (the JSON tag) → `exit-code` (the label the reports show).
fn label(instance: &Value) -> String {
    instance["verdict"]["verdict"].as_str().expect("verdict tag").replace('_', "-")
}

fn instances(json: &Value) -> Vec<Value> {
    json["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// report.json is the --json document; junit.xml validates and has one agreeing testcase per
/// instance; summary.md has the right headline, a row per group and a line per failed instance.
fn check_files(dir: &Path, json: &Value, passed: bool) {
    let file: Value = serde_json::from_str(&read(&dir.join("report.json"))).expect("report.json is JSON");
    assert_eq!(&file, json, "report.json differs from --json");
    let all = instances(json);
    assert!(!all.is_empty());

    let junit = read(&dir.join("junit.xml"));
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(repo().join("tests/fixtures/junit.xsd"))
        .arg(dir.join("junit.xml"))
        .output()
        .expect("xmllint runs");
    assert!(out.status.success(), "junit.xml is not valid:\n{}\n{junit}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(junit.matches("<testcase ").count(), all.len(), "{junit}");
    let failed = all.iter().filter(|i| label(i) != "pass").count();
    assert_eq!(junit.matches("<failure ").count() + junit.matches("<error ").count(), failed, "{junit}");
    for i in &all {
        let group = i["group"].as_str().expect("group");
        let head = format!(
            "<testcase name=\"{}\" classname=\"{}\"",
            xml(&format!("{group}[{}]", i["group_index"])),
            xml(group)
        );
        let at = junit.find(&head).unwrap_or_else(|| panic!("no `{head}` in\n{junit}"));
        let case = &junit[at..];
        let case = &case[..case[1..].find("<testcase ").map(|e| e + 1).unwrap_or(case.len())];
        if label(i) != "pass" {
            assert!(case.contains(&format!("type=\"{}\"", label(i))), "{case}");
        }
    }

    let md = read(&dir.join("summary.md"));
    let headline = if passed { "tg-nix: PASS" } else { "tg-nix: FAIL" };
    assert!(md.lines().next().unwrap_or("").contains(headline), "{md}");
    for run in json["runs"].as_array().expect("runs") {
        for (_, g) in run["groups"].as_object().expect("groups") {
            assert!(md.contains(&format!(" | {}/{} | ", g["ok"], g["total"])), "{md}");
        }
    }
    assert_eq!(md.lines().filter(|l| l.starts_with("- ") && l.contains("[stderr](")).count(), failed, "{md}");
}

/// Renders index.html in headless Chromium: the DOM after load, and a screenshot.
fn chromium(dir: &Path) -> String {
    let profile = tempfile::tempdir().expect("chromium profile");
    let url = format!("file://{}", dir.join("index.html").display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ];
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let dom =
        Command::new("chromium").args(common).arg(&user_data).arg("--dump-dom").arg(&url).output().expect("chromium");
    assert!(dom.status.success(), "chromium --dump-dom: {}", String::from_utf8_lossy(&dom.stderr));
    let png = dir.join("screenshot.png");
    let shot = Command::new("chromium")
        .args(common)
        .arg(&user_data)
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,900")
        .arg(&url)
        .output()
        .expect("chromium");
    assert!(shot.status.success(), "chromium --screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {} bytes", bytes.len());
    eprintln!("screenshot {}: {} bytes", png.display(), bytes.len());
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// Every instance has its details element and grid cell with its verdict class, and the counts
/// per verdict match the JSON.
fn check_dom(dom: &str, json: &Value) {
    let mut k = 0;
    for (n, run) in json["runs"].as_array().expect("runs").iter().enumerate() {
        for (idx, i) in run["instances"].as_array().expect("instances").iter().enumerate() {
            let l = label(i);
            let details = format!("<details class=\"instance v-{l}\" id=\"run-{n}-instance-{idx}\"");
            assert!(dom.contains(&details), "no `{details}` in the DOM:\n{dom}");
            let cell = format!("<a class=\"cell v-{l}\" href=\"#run-{n}-instance-{idx}\"");
            assert!(dom.contains(&cell), "no `{cell}` in the DOM");
            k += 1;
        }
    }
    assert_eq!(dom.matches("<details class=\"instance ").count(), k);
    assert_eq!(dom.matches("<a class=\"cell ").count(), k);
}

#[test]
fn reports_of_real_runs_agree_validate_and_render() {
    let test = "reports_of_real_runs_agree_validate_and_render";
    let missing = common::first_missing(&[
        (is_root(), "root (network namespaces)"),
        (works("xmllint", &["--version"]), "xmllint (apt libxml2-utils)"),
        (works("chromium", &["--version"]), "chromium (apt chromium)"),
    ]);
    if !common::ready(test, missing) {
        return;
    }
    let env = Env::new();
    let work = tempfile::tempdir().expect("temp dir");

    // A passing run: placebo `ok`, two instances.
    let pass_dir = work.path().join("pass");
    let plan = repo().join("plans/placebo-rust");
    let plan = plan.to_str().expect("utf-8 path");
    let (code, json, stderr) = env.run(&["--plan", plan, "--case", "ok", "--instances", "2"], &pass_dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(instances(&json).iter().all(|i| label(i) == "pass"), "{json}");
    check_files(&pass_dir, &json, true);
    let dom = chromium(&pass_dir);
    check_dom(&dom, &json);
    assert!(dom.contains("tg-nix: PASS — 2/2 instances passed"), "{dom}");

    // A failing run whose group id is markup: it must reach every report as text.
    let hostile = "x<img src=x onerror=document.body.setAttribute('data-pwned',1)><script>document.body.setAttribute('data-pwned',2)<";
    let composition = work.path().join("hostile.toml");
    let text = format!(
        "[global]\nplan = \"{plan}\"\ncase = \"failure\"\nbuilder = \"exec:rust\"\nrunner = \"local:exec\"\n\
         [[groups]]\nid = \"plain\"\ninstances = {{ count = 1 }}\n\
         [[groups]]\nid = \"{hostile}\"\ninstances = {{ count = 2 }}\n"
    );
    std::fs::write(&composition, text).expect("composition written");
    let fail_dir = work.path().join("fail");
    let (code, json, stderr) = env.run(&[composition.to_str().expect("utf-8 path")], &fail_dir);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(instances(&json).iter().filter(|i| label(i) == "failure").count(), 3, "{json}");
    check_files(&fail_dir, &json, false);
    for file in ["junit.xml", "summary.md", "index.html"] {
        let text = read(&fail_dir.join(file));
        assert!(!text.contains("<script") && !text.contains("<img"), "{file} carries the group id as markup");
    }
    let dom = chromium(&fail_dir);
    check_dom(&dom, &json);
    assert!(!dom.contains("<script") && !dom.contains("<img"), "markup from the group id became elements:\n{dom}");
    assert!(dom.contains("&lt;script&gt;document.body.setAttribute"), "the group id is not shown as text:\n{dom}");
    let body = &dom[dom.find("<body").expect("a body")..];
    assert!(!body[..body.find('>').unwrap_or(0)].contains("data-pwned"), "a handler from the group id ran");
    assert!(dom.contains("recorded a failure event: placebo failure"));
}
