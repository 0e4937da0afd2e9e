use std::path::Path;

use toml::Value;

use super::*;
use crate::manifest::tests::{ping, PLACEBO};
use crate::single::SingleRun;

/// Five lines: a valid [global] for the ping manifest.
const HEAD: &str = "[global]\nplan = \"ping\"\ncase = \"ping\"\nbuilder = \"exec:rust\"\nrunner = \"local:exec\"\n";

fn prep(text: &str) -> Result<Prepared, ModelError> {
    let c = Composition::from_str(text, Path::new("c.toml"))
        .unwrap_or_else(|e| panic!("composition does not load: {e}\n{text}"));
    c.prepare(&ping())
}

fn ok(text: &str) -> Prepared {
    prep(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn default_run_is_synthesised_from_the_groups() {
    let p = ok(&format!(
        "{HEAD}[[groups]]\nid = \"alpha\"\ninstances = {{ count = 1 }}\n[[groups]]\nid = \"beta\"\ninstances = {{ count = 2 }}\n"
    ));
    assert_eq!(
        (p.plan.as_str(), p.case.as_str(), p.runner.as_str()),
        ("compatibility-rust-and-go", "ping", "local:exec")
    );
    assert_eq!(p.builds.iter().map(|b| b.group_id.as_str()).collect::<Vec<_>>(), ["alpha", "beta"]);
    assert_eq!(p.runs.len(), 1);
    let run = &p.runs[0];
    assert_eq!((run.id.as_str(), run.total_instances), ("default", 3));
    let shape: Vec<_> = run.groups.iter().map(|g| (g.id.as_str(), g.build_group.as_str(), g.instances)).collect();
    assert_eq!(shape, [("alpha", "alpha", 1), ("beta", "beta", 2)]);
    // Manifest defaults, JSON-encoded; `label` has no default: Testground passes "null".
    let want =
        params(&[("iterations", "5"), ("label", "null"), ("max_latency_ms", "1000"), ("secure_channel", "noise")]);
    assert_eq!(run.groups[0].test_params, want);
    assert_eq!(p.run("default").map(|r| r.groups.len()), Some(2));
    assert_eq!(p.build("beta").map(|b| b.builder.as_str()), Some("exec:rust"));
    // The manifest's [defaults] warning, and one `null` warning for `label` (not one per group).
    let keys: Vec<_> =
        p.warnings.iter().map(|w| (w.file.to_string_lossy().into_owned(), w.key.clone().unwrap_or_default())).collect();
    assert_eq!(
        keys,
        [
            ("ping/manifest.toml".to_string(), "defaults".to_string()),
            ("ping/manifest.toml".to_string(), "testcases[0].params.label".to_string())
        ]
    );
}

#[test]
fn runs_pick_groups_and_inherit_their_instances() {
    let text = format!(
        "{HEAD}\
[[groups]]
id = \"go\"
instances = {{ count = 3 }}
[[groups]]
id = \"rust\"
builder = \"docker:generic\"

[[runs]]
id = \"one-each\"
[[runs.groups]]
id = \"go-a\"
group_id = \"go\"
instances = {{ count = 1 }}
[[runs.groups]]
id = \"rust\"
instances = {{ count = 1 }}

[[runs]]
id = \"go-only\"
[[runs.groups]]
id = \"go\"
"
    );
    let p = ok(&text);
    assert_eq!(
        p.builds.iter().map(|b| (b.group_id.as_str(), b.builder.as_str())).collect::<Vec<_>>(),
        [("go", "exec:rust"), ("rust", "docker:generic")]
    );
    assert_eq!(
        p.runs.iter().map(|r| (r.id.as_str(), r.total_instances)).collect::<Vec<_>>(),
        [("one-each", 2), ("go-only", 3)]
    );
    let r0: Vec<_> = p.runs[0].groups.iter().map(|g| (g.id.as_str(), g.build_group.as_str(), g.instances)).collect();
    assert_eq!(r0, [("go-a", "go", 1), ("rust", "rust", 1)]);
    // go-only's run group has no instances: the group's count applies.
    assert_eq!(p.runs[1].groups[0].instances, 3);
}

#[test]
fn percentages_of_the_total() {
    let cases: &[(&str, &[u64])] = &[
        ("total_instances = 10\n", &[3, 7]),
        ("total_instances = 4\n", &[1, 3]), // 0.3 × 4 = 1.2 → 1; 0.7 × 4 = 2.8 → 3
    ];
    for (total, want) in cases {
        let text = format!(
            "{HEAD}{total}[[groups]]\nid = \"a\"\ninstances = {{ percentage = 0.3 }}\n[[groups]]\nid = \"b\"\ninstances = {{ percentage = 0.7 }}\n"
        );
        let p = ok(&text);
        assert_eq!(p.runs[0].groups.iter().map(|g| g.instances).collect::<Vec<_>>(), *want, "{total}");
    }
    // Halves round away from zero, like Go's math.Round: 0.25 × 10 = 2.5 → 3.
    let text = format!("{HEAD}total_instances = 10\n[[groups]]\nid = \"a\"\ninstances = {{ percentage = 0.25 }}\n[[groups]]\nid = \"b\"\ninstances = {{ count = 7 }}\n");
    assert_eq!(ok(&text).runs[0].groups[0].instances, 3);
    // In [[runs]], the run's own total counts.
    let text = format!(
        "{HEAD}[[groups]]\nid = \"a\"\n[[runs]]\nid = \"r\"\ntotal_instances = 4\n[[runs.groups]]\nid = \"x\"\ngroup_id = \"a\"\ninstances = {{ percentage = 0.5 }}\n[[runs.groups]]\nid = \"y\"\ngroup_id = \"a\"\ninstances = {{ percentage = 0.5 }}\n"
    );
    assert_eq!(ok(&text).runs[0].groups.iter().map(|g| g.instances).collect::<Vec<_>>(), [2, 2]);
}

#[test]
fn test_params_precedence() {
    // Each key is set at every level from some step on; the first step that has it wins.
    let text = format!(
        "{HEAD}\
[global.run.test_params]
iterations = \"global\"
max_latency_ms = \"global\"
secure_channel = \"global\"
label = \"global\"
extra = \"global\"

[[groups]]
id = \"g\"
instances = {{ count = 2 }}
[groups.run.test_params]
iterations = \"group\"
max_latency_ms = \"group\"
secure_channel = \"group\"
label = \"group\"

[[runs]]
id = \"r\"
[runs.test_params]
iterations = \"run\"
max_latency_ms = \"run\"
secure_channel = \"run\"

[[runs.groups]]
id = \"g\"
[runs.groups.test_params]
iterations = \"run-group\"
max_latency_ms = \"run-group\"
"
    );
    let p = ok(&text);
    let got = &p.runs[0].groups[0].test_params;
    let want = params(&[
        ("iterations", "run-group"),
        ("max_latency_ms", "run-group"),
        ("secure_channel", "run"),
        ("label", "group"),
        ("extra", "global"),
    ]);
    assert_eq!(got, &want);
    // Without [[runs]], the group's own test_params come first, then global, then the manifest.
    let text = format!(
        "{HEAD}[global.run.test_params]\niterations = \"global\"\nlabel = \"global\"\n[[groups]]\nid = \"g\"\ninstances = {{ count = 2 }}\n[groups.run.test_params]\niterations = \"group\"\n"
    );
    let got = &ok(&text).runs[0].groups[0].test_params;
    assert_eq!(
        got,
        &params(&[
            ("iterations", "group"),
            ("label", "global"),
            ("max_latency_ms", "1000"),
            ("secure_channel", "noise")
        ])
    );
}

#[test]
fn profiles_precedence() {
    let text = format!(
        "{HEAD}[global.run.profiles]\ncpu = \"*\"\nheap = \"global\"\nallocs = \"global\"\n\
         [[groups]]\nid = \"g\"\ninstances = {{ count = 2 }}\n[groups.run.profiles]\nheap = \"group\"\nallocs = \"group\"\n\
         [[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"g\"\nprofiles = {{ allocs = \"run-group\" }}\n"
    );
    let got = &ok(&text).runs[0].groups[0].profiles;
    assert_eq!(got, &params(&[("allocs", "run-group"), ("cpu", "*"), ("heap", "group")]));
}

#[test]
fn build_and_run_config_precedence() {
    let manifest = Manifest::from_str(
        r#"
name = "p"
[builders."exec:rust"]
path = "manifest"
bin = "manifest"
features = "manifest"
only_manifest = 1
[builders."docker:generic"]
build_args = { X = "manifest" }
[runners."local:exec"]
log_level = "info"
timeout = 5
[[testcases]]
name = "c"
instances = { min = 1, max = 10 }
"#,
        Path::new("m.toml"),
    )
    .expect("manifest");
    let text = r#"
[global]
case = "c"
builder = "exec:rust"
runner = "local:exec"
[global.build_config]
bin = "global"
features = "global"
[global.build]
selectors = ["global"]
[[global.build.dependencies]]
module = "a"
version = "global"
[[global.build.dependencies]]
module = "b"
version = "global"
[global.run]
artifact = "global-artifact"
[global.run_config]
log_level = "debug"

[[groups]]
id = "one"
instances = { count = 1 }
[groups.build_config]
features = "group"
[groups.build]
selectors = ["group"]
[[groups.build.dependencies]]
module = "a"
version = "group"
target = "fork/a"
[groups.run]
artifact = "group-artifact"

[[groups]]
id = "two"
builder = "docker:generic"
instances = { count = 1 }
"#;
    let c = Composition::from_str(text, Path::new("c.toml")).expect("composition");
    let p = c.prepare(&manifest).expect("prepares");
    let one = &p.builds[0];
    let s = |v: &str| Value::String(v.to_string());
    assert_eq!(one.build_config.get("features"), Some(&s("group")));
    assert_eq!(one.build_config.get("bin"), Some(&s("global")));
    assert_eq!(one.build_config.get("path"), Some(&s("manifest")));
    assert_eq!(one.build_config.get("only_manifest"), Some(&Value::Integer(1)));
    assert_eq!(one.selectors, ["group"]);
    let deps: Vec<_> =
        one.dependencies.iter().map(|d| (d.module.as_str(), d.version.as_str(), d.target.as_deref())).collect();
    assert_eq!(deps, [("a", "group", Some("fork/a")), ("b", "global", None)]);
    assert_eq!(one.artifact.as_deref(), Some("group-artifact"));

    // Group two uses docker:generic: the manifest table of *its* builder applies.
    let two = &p.builds[1];
    assert_eq!(two.builder, "docker:generic");
    assert!(two.build_config.get("build_args").is_some());
    assert_eq!(two.build_config.get("path"), None);
    assert_eq!(two.build_config.get("features"), Some(&s("global")));
    assert_eq!(two.selectors, ["global"]);
    assert_eq!(two.dependencies.len(), 2);
    assert_eq!(two.artifact.as_deref(), Some("global-artifact"));

    assert_eq!(p.run_config.get("log_level"), Some(&s("debug")));
    assert_eq!(p.run_config.get("timeout"), Some(&Value::Integer(5)));
}

/// (composition text, kind, in the manifest?, key, line, text in the message or hint)
type ErrorCase = (String, ErrorKind, bool, &'static str, Option<usize>, &'static str);

#[test]
fn errors_table() {
    let g1 = "[[groups]]\nid = \"a\"\ninstances = { count = 2 }\n"; // lines 6-8 after HEAD
    let head_without =
        |key: &str| HEAD.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect::<String>();
    let cases: Vec<ErrorCase> = vec![
        // The test case.
        (format!("{}{g1}", head_without("case")), ErrorKind::Missing, false, "global.case", Some(1), "the cases of plan `compatibility-rust-and-go` are: ping"),
        (format!("{}case = \"pnig\"\n{g1}", head_without("case")), ErrorKind::NotFound, false, "global.case", Some(5), "did you mean `ping`?"),
        // The runner.
        (format!("{}{g1}", head_without("runner")), ErrorKind::Missing, false, "global.runner", Some(1), "supports runners: local:docker, local:exec"),
        (format!("{}runner = \"cluster:k8s\"\n{g1}", head_without("runner")), ErrorKind::NotFound, false, "global.runner", Some(5), "does not support runner `cluster:k8s`"),
        // Builders.
        (format!("{}{g1}", head_without("builder")), ErrorKind::Missing, false, "groups[0].builder", Some(5), "set `builder` in [global] or in this group"),
        (format!("{}builder = \"exec:go\"\n{g1}", head_without("builder")), ErrorKind::NotFound, false, "global.builder", Some(5), "supports builders: docker:generic, docker:go, exec:rust"),
        (format!("{HEAD}{g1}builder = \"nix:rust\"\n"), ErrorKind::NotFound, false, "groups[0].builder", Some(9), "does not support builder `nix:rust`"),
        // Groups.
        (HEAD.to_string(), ErrorKind::Missing, false, "groups", None, "no [[groups]]"),
        (format!("{HEAD}[[groups]]\ninstances = {{ count = 2 }}\n"), ErrorKind::Missing, false, "groups[0].id", Some(6), "group id is missing"),
        (format!("{HEAD}[[groups]]\nid = \"a/b\"\ninstances = {{ count = 2 }}\n"), ErrorKind::Invalid, false, "groups[0].id", Some(7), "contains `/`"),
        (format!("{HEAD}[[groups]]\nid = \"..\"\ninstances = {{ count = 2 }}\n"), ErrorKind::Invalid, false, "groups[0].id", Some(7), "contains `..`"),
        (format!("{HEAD}[[groups]]\nid = \".a\"\ninstances = {{ count = 2 }}\n"), ErrorKind::Invalid, false, "groups[0].id", Some(7), "starts with `.`"),
        (format!("{HEAD}[[groups]]\nid = \"a\\u0000\"\ninstances = {{ count = 2 }}\n"), ErrorKind::Invalid, false, "groups[0].id", Some(7), "control character"),
        (format!("{HEAD}{g1}{g1}"), ErrorKind::Invalid, false, "groups[1].id", Some(10), "group id `a` is used twice"),
        // Instances.
        (format!("{HEAD}[[groups]]\nid = \"a\"\n"), ErrorKind::Missing, false, "groups[0].instances", Some(6), "add `instances = { count = N }`"),
        (format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{}}\n"), ErrorKind::Missing, false, "groups[0].instances", Some(8), "needs `count` or `percentage`"),
        (format!("{HEAD}total_instances = 2\n[[groups]]\nid = \"a\"\ninstances = {{ count = 2, percentage = 1.0 }}\n"), ErrorKind::Invalid, false, "groups[0].instances", Some(9), "both `count` and `percentage`"),
        (format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{ count = 0 }}\n"), ErrorKind::Invalid, false, "groups[0].instances.count", Some(8), "has 0 instances"),
        (format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{ count = 200000 }}\n"), ErrorKind::Invalid, false, "groups[0].instances.count", Some(8), "more than tg-nix runs at once (100000)"),
        (format!("{HEAD}total_instances = 2\n[[groups]]\nid = \"a\"\ninstances = {{ percentage = 1.5 }}\n"), ErrorKind::Invalid, false, "groups[0].instances.percentage", Some(9), "not in (0, 1]"),
        (format!("{HEAD}total_instances = 2\n[[groups]]\nid = \"a\"\ninstances = {{ percentage = 0.0 }}\n"), ErrorKind::Invalid, false, "groups[0].instances.percentage", Some(9), "not in (0, 1]"),
        (format!("{HEAD}total_instances = 2\n[[groups]]\nid = \"a\"\ninstances = {{ percentage = nan }}\n"), ErrorKind::Invalid, false, "groups[0].instances.percentage", Some(9), "not in (0, 1]"),
        (format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{ percentage = 0.5 }}\n"), ErrorKind::Missing, false, "global.total_instances", Some(1), "set `total_instances` in [global]"),
        (format!("{HEAD}total_instances = 10\n[[groups]]\nid = \"a\"\ninstances = {{ percentage = 0.01 }}\n[[groups]]\nid = \"b\"\ninstances = {{ count = 10 }}\n"), ErrorKind::Invalid, false, "groups[0].instances.percentage", Some(9), "rounds to 0"),
        (format!("{HEAD}total_instances = 5\n{g1}"), ErrorKind::Invalid, false, "global.total_instances", Some(6), "total_instances is 5, but the groups add up to 2 (a: 2)"),
        (format!("{HEAD}total_instances = 1000000\n{g1}"), ErrorKind::Invalid, false, "global.total_instances", Some(6), "more than tg-nix runs at once"),
        // The case's bounds (ping allows 2 to 10000).
        (format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{ count = 1 }}\n"), ErrorKind::Invalid, false, "groups", Some(6), "run `default` has 1 instances, outside the range [2, 10000] of test case `ping`"),
        (format!("{HEAD}total_instances = 1\n[[groups]]\nid = \"a\"\ninstances = {{ count = 1 }}\n"), ErrorKind::Invalid, false, "global.total_instances", Some(6), "testcases[0].instances` in ping/manifest.toml"),
        (
            format!("{HEAD}[[groups]]\nid = \"a\"\ninstances = {{ count = 60000 }}\n[[groups]]\nid = \"b\"\ninstances = {{ count = 60000 }}\n"),
            ErrorKind::Invalid, false, "groups", Some(6), "120000 instances (a: 60000, b: 60000)",
        ),
        // [[runs]].
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n"), ErrorKind::Invalid, false, "runs[1].id", Some(14), "run id `r` is used twice"),
        (format!("{HEAD}{g1}[[runs]]\n[[runs.groups]]\nid = \"a\"\n"), ErrorKind::Missing, false, "runs[0].id", Some(9), "run id is missing"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n"), ErrorKind::Missing, false, "runs[0].groups", Some(9), "run `r` has no [[runs.groups]]"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"x\"\ngroup_id = \"b\"\n"), ErrorKind::NotFound, false, "runs[0].groups[0].group_id", Some(13), "the [[groups]] ids are: a"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"aa\"\n"), ErrorKind::NotFound, false, "runs[0].groups[0].id", Some(12), "did you mean `a`?"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n[[runs.groups]]\nid = \"a\"\n"), ErrorKind::Invalid, false, "runs[0].groups[1].id", Some(14), "used twice in run `r`"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a/..\"\n"), ErrorKind::Invalid, false, "runs[0].groups[0].id", Some(12), "run group id \"a/..\" cannot be used"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\ninstances = {{ percentage = 1.0 }}\n"), ErrorKind::Missing, false, "runs[0].total_instances", Some(9), "in this [[runs]] entry"),
        (format!("{HEAD}[[groups]]\nid = \"a\"\n[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n"), ErrorKind::Missing, false, "runs[0].groups[0].instances", Some(10), "group `a` has no instance count"),
        (format!("{HEAD}{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\ninstances = {{ count = 1 }}\n"), ErrorKind::Invalid, false, "runs[0]", Some(9), "run `r` has 1 instances"),
        // Params that packing would corrupt, at the key they came from.
        (format!("{HEAD}[global.run.test_params]\nk = \"a|b\"\n{g1}"), ErrorKind::Invalid, false, "global.run.test_params.k", Some(7), "test param k: the value contains `|`"),
        (format!("{HEAD}{g1}[groups.run.test_params]\n\"a=b\" = \"1\"\n"), ErrorKind::Invalid, false, "groups[0].run.test_params.\"a=b\"", Some(10), "rename the parameter"),
        (format!("{HEAD}{g1}[groups.run.test_params]\nk = \"line\\nbreak\"\n"), ErrorKind::Invalid, false, "groups[0].run.test_params.k", Some(10), "U+000A"),
        (format!("{HEAD}{g1}[groups.run.profiles]\ncpu = \"a|b\"\n"), ErrorKind::Invalid, false, "groups[0].run.profiles.cpu", Some(10), "profile cpu: the value contains `|`"),
        (
            format!("{HEAD}{g1}[[runs]]\nid = \"r\"\ntest_params = {{ k = \"x|y\" }}\n[[runs.groups]]\nid = \"a\"\n"),
            ErrorKind::Invalid, false, "runs[0].test_params.k", Some(11), "no SDK can escape it",
        ),
    ];
    for (text, kind, in_manifest, key, line, needle) in cases {
        let err = prep(&text).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
        let file = if in_manifest { "ping/manifest.toml" } else { "c.toml" };
        assert_eq!(err.kind, kind, "{text}\n{err}");
        assert_eq!(err.file, Path::new(file), "{text}\n{err}");
        assert_eq!(err.key.as_deref(), Some(key), "{text}\n{err}");
        assert_eq!(err.line, line, "{text}\n{err}");
        assert!(err.to_string().contains(needle), "{text}\n{err}\n(wanted: {needle})");
        assert!(err.hint.is_some(), "every prepare error has a hint:\n{err}");
    }
}

#[test]
fn hostile_manifest_default_is_reported_in_the_manifest() {
    let manifest = Manifest::from_str(
        "name = \"p\"\n[builders.b]\n[runners.r]\n[[testcases]]\nname = \"c\"\ninstances = { min = 1, max = 2 }\n[testcases.params]\nsep = { default = \"a|b\" }\n",
        Path::new("m.toml"),
    )
    .expect("manifest");
    let text =
        "[global]\ncase = \"c\"\nbuilder = \"b\"\nrunner = \"r\"\n[[groups]]\nid = \"a\"\ninstances = { count = 1 }\n";
    let c = Composition::from_str(text, Path::new("c.toml")).expect("composition");
    let err = c.prepare(&manifest).expect_err("rejected");
    assert_eq!(
        (err.file.as_path(), err.key.as_deref(), err.line),
        (Path::new("m.toml"), Some("testcases[0].params.sep.default"), Some(8))
    );
    // A composition value overrides the bad default: nothing left to reject.
    let text = format!("{text}[groups.run.test_params]\nsep = \"a,b\"\n");
    let c = Composition::from_str(&text, Path::new("c.toml")).expect("composition");
    let p = c.prepare(&manifest).expect("the bad default never reaches an instance");
    assert_eq!(p.runs[0].groups[0].test_params["sep"], "a,b");
}

#[test]
fn only_winning_values_are_checked() {
    let text = format!("{HEAD}[global.run.test_params]\nk = \"a|b\"\n[[groups]]\nid = \"a\"\ninstances = {{ count = 2 }}\n[groups.run.test_params]\nk = \"fine\"\n");
    assert_eq!(ok(&text).runs[0].groups[0].test_params["k"], "fine");
}

#[test]
fn warnings_table() {
    let g1 = "[[groups]]\nid = \"a\"\ninstances = { count = 2 }\n";
    // (composition, key, text in the message or hint)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{HEAD}{g1}[groups.run.test_params]\niteration = \"1\"\n"),
            "groups[0].run.test_params.iteration",
            "did you mean `iterations`?",
        ),
        (
            format!("{HEAD}{g1}[groups.run.test_params]\nzzz = \"1\"\n"),
            "groups[0].run.test_params.zzz",
            "not declared by test case `ping`",
        ),
        (
            format!("{HEAD}{g1}[groups.run.test_params]\nlabel = \"a=b\"\n"),
            "groups[0].run.test_params.label",
            "the Go and JS SDKs drop such params",
        ),
        (
            format!("{HEAD}total_instances = 2\n{g1}[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n"),
            "global.total_instances",
            "not used when the composition has [[runs]]",
        ),
        (format!("{HEAD}{g1}[groups.resources]\nmemory = \"1Gi\"\n"), "groups[0].resources", "`resources` is ignored"),
    ];
    for (text, key, needle) in cases {
        let p = ok(&text);
        let found = p.warnings.iter().find(|w| w.key.as_deref() == Some(key));
        let w = found.unwrap_or_else(|| panic!("no warning at {key}: {:?}\n{text}", p.warnings));
        assert!(w.to_string().contains(needle), "{w}\n(wanted: {needle})");
    }
}

#[test]
fn placebo_composition() {
    let manifest = Manifest::from_str(PLACEBO, Path::new("placebo/manifest.toml")).expect("manifest");
    let text = r#"
[metadata]
name = "pr-1469-override-dependencies"

[global]
plan = "placebo"
case = "ok"
builder = "exec:go"
runner = "local:exec"
total_instances = 1

[[groups]]
id = "single"
instances = { count = 1 }

  [groups.build]
  [[groups.build.dependencies]]
  module = "github.com/testground/sdk-go"
  version = "49c90fa75405"
"#;
    let c = Composition::from_str(text, Path::new("placebo/_compositions/pr-1469.toml")).expect("composition");
    let p = c.prepare(&manifest).expect("prepares");
    assert_eq!(p.builds[0].dependencies[0].version, "49c90fa75405");
    assert_eq!(
        p.builds[0].build_config.get("module_path").and_then(Value::as_str),
        Some("github.com/testground/testground/plans/placebo")
    );
    assert_eq!(p.runs[0].groups[0].test_params, BTreeMap::new());
}

fn single(run: SingleRun) -> Result<Prepared, ModelError> {
    Composition::single(&run).prepare(&ping())
}

fn single_ok() -> SingleRun {
    SingleRun {
        plan: "ping".into(),
        case: "ping".into(),
        instances: 2,
        builder: "exec:rust".into(),
        runner: "local:exec".into(),
        test_params: vec![("iterations".into(), "9".into())],
        build_config: vec![("bin".into(), "ping".into())],
        run_config: vec![],
    }
}

#[test]
fn single_runs() {
    let p = single(single_ok()).expect("prepares");
    assert_eq!(p.runs[0].id, "default");
    assert_eq!(p.runs[0].groups[0].id, SINGLE_GROUP_ID);
    assert_eq!(p.runs[0].total_instances, 2);
    assert_eq!(p.runs[0].groups[0].test_params["iterations"], "9");
    assert_eq!(p.builds[0].build_config.get("bin").and_then(Value::as_str), Some("ping"));
    // The runner table of the manifest applies to single runs too.
    assert_eq!(p.run_config.get("log_level").and_then(Value::as_str), Some("debug"));
}

const SINGLE_GROUP_ID: &str = crate::single::SINGLE_GROUP;

#[test]
fn single_run_errors_name_flags() {
    let cases: Vec<(SingleRun, &str, &str)> = vec![
        (SingleRun { case: String::new(), ..single_ok() }, "--case", "give --case NAME"),
        (SingleRun { case: "pong".into(), ..single_ok() }, "--case", "did you mean `ping`?"),
        (SingleRun { runner: String::new(), ..single_ok() }, "--runner", "give --runner NAME"),
        (SingleRun { runner: "local:docker2".into(), ..single_ok() }, "--runner", "does not support runner"),
        (SingleRun { builder: String::new(), ..single_ok() }, "--builder", "give --builder NAME"),
        (SingleRun { builder: "exec:go".into(), ..single_ok() }, "--builder", "does not support builder"),
        (SingleRun { instances: 0, ..single_ok() }, "--instances", "give --instances 1 or more"),
        (SingleRun { instances: 1, ..single_ok() }, "--instances", "outside the range [2, 10000]"),
        (SingleRun { instances: 100_001, ..single_ok() }, "--instances", "more than tg-nix runs at once"),
        (
            SingleRun { test_params: vec![("k".into(), "a|b".into())], ..single_ok() },
            "--test-param k",
            "the value contains `|`",
        ),
    ];
    for (run, key, needle) in cases {
        let err = single(run.clone()).err().unwrap_or_else(|| panic!("accepted {run:?}"));
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert_eq!(err.file, Path::new("command line"));
        assert!(err.to_string().contains(needle), "{err}\n(wanted: {needle})");
    }
}
