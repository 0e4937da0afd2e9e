//! Composition templating through the real binary: `tg-nix render` of the ping-rust example, a
//! `tg-nix run` of a templated placebo-rust composition (exec:rust, local:exec; needs root for
//! network namespaces), and bad templates that exit 2 before anything is built or run.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{is_root, plan_target, repo, text};

/// True when the test can run. Outside CI a missing privilege is said loudly; in CI it fails.
fn privileged(test: &str) -> bool {
    common::ready(test, (!is_root()).then_some("root for network namespaces"))
}

/// A throwaway tg-nix home and a directory for compositions.
struct Env {
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::Builder::new().prefix("tg-nix-tpl-home").tempdir().expect("temp home"),
            dir: tempfile::Builder::new().prefix("tg-nix-tpl").tempdir().expect("temp dir"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn tg_nix(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tg-nix"))
            .args(args)
            .current_dir(repo())
            .env("TG_NIX_HOME", self.home.path())
            .env("CARGO_TARGET_DIR", plan_target())
            .env("TG_NIX_TPL_TEST", "from-env")
            .env_remove("RUST_LOG")
            .output()
            .expect("tg-nix runs")
    }

    /// Nothing was built or run: the home holds no outputs and no work directory.
    fn assert_nothing_ran(&self) {
        for sub in ["data/outputs", "data/work"] {
            let dir = self.home.path().join(sub);
            let entries = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert_eq!(entries, 0, "{} is not empty", dir.display());
        }
    }
}

/// A placebo-rust composition whose plan, groups and counts come from --set, a resource and the
/// environment.
const PLACEBO: &str = r#"[metadata]
name = "templated-placebo"
author = "{{env.TG_NIX_TPL_TEST}}"

[global]
plan = {{toml vars.plan}}
case = "ok"
builder = "exec:rust"
runner = "local:exec"

{{#with (load_resource "res/counts.toml")}}
{{#each (split @root.vars.groups)}}
[[groups]]
id = "{{this}}"
instances = { count = {{lookup ../counts this}} }
{{/each}}
{{/with}}
"#;

fn placebo(env: &Env) -> PathBuf {
    std::fs::create_dir_all(env.dir.path().join("res")).expect("mkdir");
    env.write("res/counts.toml", "[counts]\na = 2\nb = 1\n");
    env.write("placebo.toml", PLACEBO)
}

#[test]
fn render_prints_the_example_with_set_variables() {
    let env = Env::new();
    let example = "plans/ping-rust/compositions/ping-templated.toml";
    let out = env.tg_nix(&["render", example, "--set", "versions=older", "--set", "instances=3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let doc: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let groups = doc["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{stdout}");
    assert_eq!(groups[0]["id"].as_str(), Some("older"));
    assert_eq!(groups[0]["instances"]["count"].as_integer(), Some(3));
    assert_eq!(groups[0]["build"]["dependencies"][0]["version"].as_str(), Some("1.0.145"));

    // Defaults: every version of the resource, one instance each.
    let out = env.tg_nix(&["render", example]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: toml::Table = toml::from_str(&text(&out.stdout)).expect("TOML");
    let ids: Vec<&str> = doc["groups"].as_array().unwrap().iter().filter_map(|g| g["id"].as_str()).collect();
    assert_eq!(ids, ["current", "older"]);

    // A plain composition is printed byte for byte.
    let plain = "plans/ping-rust/compositions/ping.toml";
    let out = env.tg_nix(&["render", plain]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), std::fs::read_to_string(repo().join(plain)).expect("read"));
    env.assert_nothing_ran();
}

#[test]
fn run_of_a_templated_composition_passes() {
    if !privileged("run_of_a_templated_composition_passes") {
        return;
    }
    let env = Env::new();
    let path = placebo(&env);
    let plan = repo().join("plans/placebo-rust");
    let set_plan = format!("plan={}", plan.display());
    let path = path.to_str().expect("UTF-8 path");

    let out = env.tg_nix(&["render", path, "--set", &set_plan, "--set", "groups=a,b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    assert!(rendered.contains("author = \"from-env\"") && rendered.contains("count = 2"), "{rendered}");

    let out = env.tg_nix(&["run", path, "--set", &set_plan, "--set", "groups=a,b", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let instances = report["runs"][0]["instances"].as_array().cloned().unwrap_or_default();
    let mut seen: Vec<(String, String)> = instances
        .iter()
        .map(|i| {
            (
                i["group"].as_str().unwrap_or("?").to_string(),
                i["verdict"]["verdict"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> =
        [("a", "pass"), ("a", "pass"), ("b", "pass")].iter().map(|(g, v)| (g.to_string(), v.to_string())).collect();
    assert_eq!(seen, want, "{report:#}");
}

#[test]
fn bad_templates_exit_2_and_nothing_runs() {
    let env = Env::new();
    let path = placebo(&env);
    let path = path.to_str().expect("UTF-8 path");
    let plan = format!("plan={}", repo().join("plans/placebo-rust").display());

    // An undefined variable (`groups` not given), for each command that loads compositions.
    for cmd in ["run", "build", "gen", "render"] {
        let out = env.tg_nix(&[cmd, path, "--set", &plan]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: stderr:\n{stderr}");
        assert!(stderr.contains(&format!("{path}:12:")), "{cmd}: names file and line:\n{stderr}");
        assert!(stderr.contains("undefined variable `vars.groups`"), "{cmd}:\n{stderr}");
        assert!(stderr.contains("--set groups=VALUE"), "{cmd}: names the fix:\n{stderr}");
        assert!(out.stdout.is_empty() || cmd == "render", "{cmd}: {}", text(&out.stdout));
    }

    // A syntax error in the template, and a resource outside the composition's directory.
    let broken = env.write("broken.toml", "[global]\ncase = \"ok\"\nplan = {{toml vars.plan}\n");
    let out = env.tg_nix(&["run", broken.to_str().unwrap(), "--set", &plan]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", broken.display())) && stderr.contains("invalid template"), "{stderr}");
    let escape = env.write("escape.toml", "[global]\n{{toml (load_resource \"../x.toml\")}}\n");
    let out = env.tg_nix(&["run", escape.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("leads outside the composition's directory"), "{stderr}");

    // A TOML problem in the rendered text names the rendered line and says so.
    let typo =
        env.write("typo.toml", "{{#each (split \"a,b,c\")}}\n[[groups]]\nid = \"{{this}}\"\n{{/each}}\ncsae = 1\n");
    let out = env.tg_nix(&["run", typo.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Line 5 of the file, line 7 of the rendered text.
    assert!(stderr.contains(&format!("{}:7:", typo.display())), "{stderr}");
    assert!(stderr.contains("line 7 of the rendered composition"), "{stderr}");
    let out = env.tg_nix(&["render", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout).lines().nth(6), Some("csae = 1"), "render prints the text the error points into");

    env.assert_nothing_ran();
}
