//! A plan's `manifest.toml` (reference §4.1): its name, the builders and runners it supports (a
//! table's presence means "supported"; its contents are default build/run config), and its test
//! cases with their instance bounds and parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::{Table, Value};

use crate::doc::{self, dir_name_problem, Ignored, KeyPath, Reader, Rule, Schema, SpanIndex};
use crate::error::{ErrorKind, ModelError, Warning};
use crate::params::check_param;

/// A parsed and checked plan manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// Becomes TEST_PLAN, with `/` replaced by `-` ([`Manifest::plan_name`]).
    pub name: String,
    /// `[builders."<id>"]`: supported builders and their default `build_config` (`enabled` removed).
    pub builders: BTreeMap<String, Table>,
    /// `[runners."<id>"]`: supported runners and their default `run_config` (`enabled` removed).
    pub runners: BTreeMap<String, Table>,
    pub testcases: Vec<TestCase>,
    /// `[extra_sources]`: builder (`:` written as `_`) → extra directories. Kept for builders that
    /// want it; tg-nix does not ship them (a warning says so).
    pub extra_sources: BTreeMap<String, Vec<String>>,
    /// The file this came from, for messages.
    pub source: PathBuf,
    /// Keys Testground knows that tg-nix ignores, and similar notes.
    pub warnings: Vec<Warning>,
    #[serde(skip)]
    pub(crate) lines: SpanIndex,
}

/// One `[[testcases]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestCase {
    pub name: String,
    pub instances: InstanceBounds,
    /// `[testcases.params]`, by name.
    pub params: BTreeMap<String, ParamSpec>,
}

/// `instances = { min, max, default }`. Only `min` and `max` are enforced, on each run's total
/// ("`instances.default` is ignored", reference §9.17); `default` is kept for tools that want a
/// suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceBounds {
    pub min: u64,
    pub max: u64,
    pub default: Option<u64>,
}

/// A declared parameter. "type/desc/unit are informational only" (reference §4.1), and so is
/// `values`; only `default` reaches instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    /// The `type` key (`int`, `string`, `enum`, …).
    pub kind: Option<String>,
    pub desc: Option<String>,
    pub unit: Option<String>,
    pub default: Option<Value>,
    /// The `values` of an enum.
    pub values: Option<Vec<Value>>,
}

static DEFAULTS: Ignored = Ignored {
    message: "[defaults] is ignored: Testground never read it either",
    hint: Some("name the builder and runner in the composition's [global] (or with --builder and --runner)"),
};
static EXTRA_SOURCES: Ignored = Ignored {
    message: "[extra_sources] is not shipped to builds by tg-nix",
    hint: Some("keep what the build needs inside the plan directory"),
};
pub(crate) static DOCKERFILE_EXTENSIONS: Ignored =
    Ignored { message: "`dockerfile_extensions` is ignored: tg-nix builders generate no Dockerfile", hint: None };

static MANIFEST: Schema = Schema {
    what: "the manifest",
    keys: &[
        ("name", Rule::Known),
        ("builders", Rule::Known),
        ("runners", Rule::Known),
        ("testcases", Rule::Known),
        ("extra_sources", Rule::Ignored(&EXTRA_SOURCES)),
        ("defaults", Rule::Ignored(&DEFAULTS)),
    ],
    elsewhere: &[
        ("testcase", "test cases are an array of tables: [[testcases]]"),
        ("instances", "`instances` belongs in a [[testcases]] entry"),
        ("params", "`params` belongs in a [[testcases]] entry: [testcases.params]"),
        ("builder", "list builders as tables: [builders.\"exec:go\"]"),
        ("runner", "list runners as tables: [runners.\"local:exec\"]"),
    ],
};

static TESTCASE: Schema = Schema {
    what: "[[testcases]]",
    keys: &[("name", Rule::Known), ("instances", Rule::Known), ("params", Rule::Known)],
    elsewhere: &[
        ("min", "write `instances = { min = …, max = … }`"),
        ("max", "write `instances = { min = …, max = … }`"),
        ("parameters", "declare parameters in [testcases.params]"),
    ],
};

static BOUNDS: Schema = Schema {
    what: "instances",
    keys: &[("min", Rule::Known), ("max", Rule::Known), ("default", Rule::Known)],
    elsewhere: &[
        (
            "count",
            "a manifest bounds the instance count: `instances = { min = …, max = … }`; counts go in the composition",
        ),
        ("minimum", "write `min`"),
        ("maximum", "write `max`"),
    ],
};

static PARAM: Schema = Schema {
    what: "a parameter",
    keys: &[
        ("type", Rule::Known),
        ("desc", Rule::Known),
        ("unit", Rule::Known),
        ("default", Rule::Known),
        ("values", Rule::Known),
    ],
    elsewhere: &[("description", "write `desc`"), ("kind", "write `type`")],
};

impl Manifest {
    /// Reads and checks `path`. I/O only reads this one file.
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let text = doc::read(path)?;
        Manifest::from_str(&text, path)
    }

    /// Parses and checks manifest text; `source` names it in messages.
    pub fn from_str(text: &str, source: &Path) -> Result<Manifest, ModelError> {
        let doc = doc::parse(text, source)?;
        let mut r = Reader::new(source, &doc.lines);
        let root = KeyPath::root();
        let t = &doc.table;
        r.check_keys(t, &root, &MANIFEST)?;

        let name = r.string(t, &root, "name")?.ok_or_else(|| {
            r.err(ErrorKind::Missing, &root.key("name"), "the manifest has no `name`")
                .hint("add `name = \"my-plan\"` at the top of manifest.toml")
        })?;
        let plan = name.replace('/', "-");
        if let Some(problem) = dir_name_problem(&plan) {
            return Err(r
                .err(ErrorKind::Invalid, &root.key("name"), format!("plan name {name:?} cannot be used: {problem}"))
                .hint(
                    "the name (with `/` replaced by `-`) names the outputs directory: use letters, digits, `-`, `_`",
                ));
        }

        let builders = config_tables(&mut r, t, &root, "builders")?;
        let runners = config_tables(&mut r, t, &root, "runners")?;

        let mut extra_sources = BTreeMap::new();
        if let Some(extra) = r.table(t, &root, "extra_sources")? {
            let path = root.key("extra_sources");
            for key in extra.keys() {
                extra_sources.insert(key.clone(), r.strings(extra, &path, key)?);
            }
        }

        let mut testcases: Vec<TestCase> = Vec::new();
        for (path, case) in r.tables(t, &root, "testcases")? {
            let tc = test_case(&mut r, case, &path)?;
            if testcases.iter().any(|c| c.name == tc.name) {
                return Err(r
                    .err(ErrorKind::Invalid, &path.key("name"), format!("test case `{}` is declared twice", tc.name))
                    .hint("give every [[testcases]] entry its own name"));
            }
            testcases.push(tc);
        }

        Ok(Manifest {
            name,
            builders,
            runners,
            testcases,
            extra_sources,
            source: source.to_path_buf(),
            warnings: r.finish(),
            lines: doc.lines,
        })
    }

    /// The test case called `name`.
    pub fn case(&self, name: &str) -> Option<&TestCase> {
        self.testcases.iter().find(|c| c.name == name)
    }

    /// TEST_PLAN: "manifest `name` (any `/` replaced by `-`)" (reference §1.1).
    pub fn plan_name(&self) -> String {
        self.name.replace('/', "-")
    }

    pub(crate) fn line(&self, path: &KeyPath) -> Option<usize> {
        self.lines.line(path)
    }
}

/// `[builders.X]` / `[runners.X]`: free-form tables. `enabled` was never read by Testground
/// ("supported means a table exists"), so it is dropped; `enabled = false` gets a warning because
/// it does not do what it says.
fn config_tables(
    r: &mut Reader<'_>,
    t: &Table,
    root: &KeyPath,
    key: &str,
) -> Result<BTreeMap<String, Table>, ModelError> {
    let mut out = BTreeMap::new();
    let Some(all) = r.table(t, root, key)? else { return Ok(out) };
    let path = root.key(key);
    for (id, value) in all {
        let here = path.key(id);
        let Value::Table(config) = value else {
            return Err(r
                .err(ErrorKind::WrongType, &here, format!("expected a table, found {}", doc::type_name(value)))
                .hint(format!("write [{key}.\"{id}\"] followed by its settings (an empty table is fine)")));
        };
        let mut config = config.clone();
        if id.is_empty() {
            return Err(r.err(ErrorKind::Invalid, &here, format!("empty {key} id")));
        }
        if let Some(enabled) = config.remove("enabled") {
            if enabled.as_bool() == Some(false) {
                r.warn(
                    &here.key("enabled"),
                    format!("`enabled = false` has no effect: the plan still supports {key} `{id}`"),
                    Some(format!("remove the [{key}.\"{id}\"] table to drop support")),
                );
            }
        }
        if key == "builders" && config.contains_key("dockerfile_extensions") {
            r.ignore(&DOCKERFILE_EXTENSIONS, here.key("dockerfile_extensions"));
        }
        out.insert(id.clone(), config);
    }
    Ok(out)
}

fn test_case(r: &mut Reader<'_>, t: &Table, path: &KeyPath) -> Result<TestCase, ModelError> {
    r.check_keys(t, path, &TESTCASE)?;
    let name = r.string(t, path, "name")?.unwrap_or_default();
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(r
            .err(ErrorKind::Missing, &path.key("name"), "a test case needs a name")
            .hint("add `name = \"my-case\"` (no control characters) to this [[testcases]] entry"));
    }
    let bounds_hint = "write `instances = { min = 1, max = 10 }`";
    let bounds = r.table(t, path, "instances")?.ok_or_else(|| {
        r.err(ErrorKind::Missing, &path.key("instances"), format!("test case `{name}` has no instance bounds"))
            .hint(bounds_hint)
    })?;
    let ipath = path.key("instances");
    r.check_keys(bounds, &ipath, &BOUNDS)?;
    let min = r.u64(bounds, &ipath, "min")?;
    let max = r.u64(bounds, &ipath, "max")?;
    let (Some(min), Some(max)) = (min, max) else {
        let missing = if min.is_none() { "min" } else { "max" };
        return Err(r
            .err(
                ErrorKind::Missing,
                &ipath.key(missing),
                format!("test case `{name}` has no `{missing}` instance count"),
            )
            .hint(bounds_hint));
    };
    if min > max || max == 0 {
        return Err(r
            .err(
                ErrorKind::Invalid,
                &ipath,
                format!("test case `{name}`: no instance count fits min = {min}, max = {max}"),
            )
            .hint("`max` must be at least 1 and at least `min`"));
    }
    let default = r.u64(bounds, &ipath, "default")?;

    let mut params = BTreeMap::new();
    if let Some(specs) = r.table(t, path, "params")? {
        let ppath = path.key("params");
        for (pname, spec) in specs {
            let here = ppath.key(pname);
            if let Err(problem) = check_param(pname, "") {
                return Err(r
                    .err(ErrorKind::Invalid, &here, format!("parameter name {}: {problem}", doc::quote_key(pname)))
                    .hint(problem.hint()));
            }
            let Value::Table(spec) = spec else {
                return Err(r
                    .err(
                        ErrorKind::WrongType,
                        &here,
                        format!("expected a parameter table, found {}", doc::type_name(spec)),
                    )
                    .hint(format!("write `{} = {{ type = \"…\", default = … }}`", doc::quote_key(pname))));
            };
            r.check_keys(spec, &here, &PARAM)?;
            let values = match spec.get("values") {
                None => None,
                Some(Value::Array(items)) => Some(items.clone()),
                Some(v) => {
                    return Err(r.err(
                        ErrorKind::WrongType,
                        &here.key("values"),
                        format!("expected an array, found {}", doc::type_name(v)),
                    ))
                }
            };
            params.insert(
                pname.clone(),
                ParamSpec {
                    kind: r.string(spec, &here, "type")?,
                    desc: r.string(spec, &here, "desc")?,
                    unit: r.string(spec, &here, "unit")?,
                    default: spec.get("default").cloned(),
                    values,
                },
            );
        }
    }
    Ok(TestCase { name, instances: InstanceBounds { min, max, default }, params })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A placebo-style manifest (TG plans/placebo), written for these tests.
    pub(crate) const PLACEBO: &str = r#"
name = "placebo"

[defaults]
builder = "exec:go"
runner = "local:exec"

[builders."docker:go"]
enabled = true
go_version = "1.16"
module_path = "github.com/testground/testground/plans/placebo"
exec_pkg = "."

[builders."exec:go"]
enabled = true
module_path = "github.com/testground/testground/plans/placebo"

[runners."local:docker"]
enabled = true

[runners."local:exec"]
enabled = true

[[testcases]]
name = "ok"
instances = { min = 1, max = 200, default = 1 }

[[testcases]]
name = "panic"
instances = { min = 1, max = 200, default = 1 }

[[testcases]]
name = "stall"
instances = { min = 1, max = 250, default = 1 }
"#;

    /// The libp2p ping manifest (LP ping/manifest.toml), shape and values as in reference §7.
    pub(crate) const PING: &str = r#"
name = "compatibility-rust-and-go"

[defaults]
builder = "docker:generic"
runner = "local:docker"

[builders."docker:generic"]
enabled = true

[builders."docker:go"]
enabled = true

[builders."exec:rust"]

[runners."local:docker"]
enabled = true

[runners."local:exec"]
log_level = "debug"

[[testcases]]
name = "ping"
instances = { min = 2, max = 10000, default = 5 }

  [testcases.params]
  secure_channel = { type = "enum", desc = "secure channel used", values = ["noise"], default = "noise" }
  max_latency_ms = { type = "int", desc = "maximum value for random local link delay", unit = "ms", default = 1000 }
  iterations = { type = "int", desc = "number of ping iterations we'll run against each peer", unit = "count", default = 5 }
  label = { type = "string", desc = "no default" }
"#;

    pub(crate) fn ping() -> Manifest {
        Manifest::from_str(PING, Path::new("ping/manifest.toml")).expect("ping manifest parses")
    }

    #[test]
    fn placebo_manifest() {
        let m = Manifest::from_str(PLACEBO, Path::new("placebo/manifest.toml")).expect("parses");
        assert_eq!(m.name, "placebo");
        assert_eq!(m.builders.keys().collect::<Vec<_>>(), ["docker:go", "exec:go"]);
        assert_eq!(m.runners.keys().collect::<Vec<_>>(), ["local:docker", "local:exec"]);
        // `enabled` is dropped from the config tables.
        assert_eq!(m.builders["exec:go"].keys().collect::<Vec<_>>(), ["module_path"]);
        assert!(m.runners["local:exec"].is_empty());
        assert_eq!(m.testcases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["ok", "panic", "stall"]);
        assert_eq!(m.case("stall").map(|c| c.instances), Some(InstanceBounds { min: 1, max: 250, default: Some(1) }));
        assert!(m.case("abort").is_none());
        // Only [defaults] warns; `enabled = true` and `instances.default` are silent.
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert_eq!(m.warnings[0].key.as_deref(), Some("defaults"));
        assert_eq!(m.warnings[0].line, Some(4));
    }

    #[test]
    fn ping_manifest() {
        let m = ping();
        assert_eq!(m.plan_name(), "compatibility-rust-and-go");
        let case = m.case("ping").expect("ping case");
        assert_eq!(case.instances, InstanceBounds { min: 2, max: 10000, default: Some(5) });
        let sc = &case.params["secure_channel"];
        assert_eq!(sc.kind.as_deref(), Some("enum"));
        assert_eq!(sc.default, Some(Value::String("noise".into())));
        assert_eq!(sc.values, Some(vec![Value::String("noise".into())]));
        let lat = &case.params["max_latency_ms"];
        assert_eq!((lat.unit.as_deref(), lat.default.clone()), (Some("ms"), Some(Value::Integer(1000))));
        assert_eq!(case.params["label"].default, None);
        assert_eq!(m.runners["local:exec"].get("log_level").and_then(Value::as_str), Some("debug"));
    }

    #[test]
    fn plan_name_replaces_slashes() {
        let m = Manifest::from_str("name = \"libp2p/ping\"", Path::new("m.toml")).expect("parses");
        assert_eq!(m.plan_name(), "libp2p-ping");
    }

    #[test]
    fn warnings_table() {
        let cases: &[(&str, &str, &str)] = &[
            ("name = \"p\"\n[builders.\"exec:go\"]\nenabled = false\n", "builders.\"exec:go\".enabled", "no effect"),
            ("name = \"p\"\n[extra_sources]\nexec_go = [\"../sdk\"]\n", "extra_sources", "not shipped"),
            (
                "name = \"p\"\n[builders.\"docker:go\".dockerfile_extensions]\npre_build = \"RUN x\"\n",
                "builders.\"docker:go\".dockerfile_extensions",
                "dockerfile_extensions",
            ),
        ];
        for (text, key, needle) in cases {
            let m = Manifest::from_str(text, Path::new("m.toml")).expect("parses");
            assert_eq!(m.warnings.len(), 1, "{text}: {:?}", m.warnings);
            assert_eq!(m.warnings[0].key.as_deref(), Some(*key), "{text}");
            assert!(m.warnings[0].message.contains(needle), "{text}: {}", m.warnings[0]);
        }
    }

    #[test]
    fn ignored_keys_are_reported_once_per_kind() {
        let text = "name = \"p\"\n[builders.a.dockerfile_extensions]\nx = \"1\"\n[builders.b.dockerfile_extensions]\ny = \"2\"\n";
        let m = Manifest::from_str(text, Path::new("m.toml")).expect("parses");
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].message.contains("also at builders.b.dockerfile_extensions"), "{}", m.warnings[0]);
    }

    #[test]
    fn errors_table() {
        // (manifest text, kind, key, line, text in the message or hint)
        let case = "[[testcases]]\nname = \"c\"\ninstances = { min = 1, max = 2 }\n";
        let cases: Vec<(String, ErrorKind, &str, Option<usize>, &str)> = vec![
            ("builders = 1\nname = \"p\"".into(), ErrorKind::WrongType, "builders", Some(1), "expected a table"),
            ("[runners]\n".into(), ErrorKind::Missing, "name", None, "add `name"),
            ("name = \"\"".into(), ErrorKind::Invalid, "name", Some(1), "it is empty"),
            ("name = \"../x\"".into(), ErrorKind::Invalid, "name", Some(1), "`..`"),
            ("name = \".hidden\"".into(), ErrorKind::Invalid, "name", Some(1), "starts with `.`"),
            ("name = \"p\"\nnmae = 1".into(), ErrorKind::UnknownKey, "nmae", Some(2), "did you mean `name`?"),
            ("Name = \"p\"".into(), ErrorKind::UnknownKey, "Name", Some(1), "case-sensitive"),
            (
                "name = \"p\"\n[builders]\n\"exec:go\" = true".into(),
                ErrorKind::WrongType,
                "builders.\"exec:go\"",
                Some(3),
                "expected a table",
            ),
            (
                format!("name = \"p\"\n{case}instnaces = 3\n"),
                ErrorKind::UnknownKey,
                "testcases[0].instnaces",
                Some(5),
                "did you mean `instances`?",
            ),
            (
                format!("name = \"p\"\n{case}min = 3\n"),
                ErrorKind::UnknownKey,
                "testcases[0].min",
                Some(5),
                "instances = { min",
            ),
            (format!("name = \"p\"\n{case}{case}"), ErrorKind::Invalid, "testcases[1].name", Some(6), "declared twice"),
            (
                "name = \"p\"\n[[testcases]]\ninstances = { min = 1, max = 2 }\n".into(),
                ErrorKind::Missing,
                "testcases[0].name",
                Some(2),
                "needs a name",
            ),
            (
                "name = \"p\"\n[[testcases]]\nname = \"c\"\n".into(),
                ErrorKind::Missing,
                "testcases[0].instances",
                Some(2),
                "min = 1, max = 10",
            ),
            (
                "name = \"p\"\n[[testcases]]\nname = \"c\"\ninstances = { min = 1 }\n".into(),
                ErrorKind::Missing,
                "testcases[0].instances.max",
                Some(4),
                "`max`",
            ),
            (
                "name = \"p\"\n[[testcases]]\nname = \"c\"\ninstances = { min = 3, max = 2 }\n".into(),
                ErrorKind::Invalid,
                "testcases[0].instances",
                Some(4),
                "min = 3, max = 2",
            ),
            (
                "name = \"p\"\n[[testcases]]\nname = \"c\"\ninstances = { min = -1, max = 2 }\n".into(),
                ErrorKind::Invalid,
                "testcases[0].instances.min",
                Some(4),
                "negative",
            ),
            (
                "name = \"p\"\n[[testcases]]\nname = \"c\"\ninstances = { min = 1, max = \"2\" }\n".into(),
                ErrorKind::WrongType,
                "testcases[0].instances.max",
                Some(4),
                "a whole number",
            ),
            (
                format!("name = \"p\"\n{case}[testcases.params]\nn = 5\n"),
                ErrorKind::WrongType,
                "testcases[0].params.n",
                Some(6),
                "n = { type",
            ),
            (
                format!("name = \"p\"\n{case}[testcases.params]\n\"a=b\" = {{ default = 1 }}\n"),
                ErrorKind::Invalid,
                "testcases[0].params.\"a=b\"",
                Some(6),
                "contains `=`",
            ),
            (
                format!("name = \"p\"\n{case}[testcases.params]\nn = {{ description = \"x\" }}\n"),
                ErrorKind::UnknownKey,
                "testcases[0].params.n.description",
                Some(6),
                "write `desc`",
            ),
            (
                format!("name = \"p\"\n{case}[testcases.params]\nn = {{ type = 1 }}\n"),
                ErrorKind::WrongType,
                "testcases[0].params.n.type",
                Some(6),
                "expected a string",
            ),
            (
                "name = \"p\"\n[[testcase]]\nname = \"c\"\n".into(),
                ErrorKind::UnknownKey,
                "testcase",
                Some(2),
                "[[testcases]]",
            ),
        ];
        for (text, kind, key, line, needle) in cases {
            let err =
                Manifest::from_str(&text, Path::new("m.toml")).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
            assert_eq!(err.kind, kind, "{text}\n{err}");
            assert_eq!(err.key.as_deref(), Some(key), "{text}\n{err}");
            assert_eq!(err.line, line, "{text}\n{err}");
            assert!(err.to_string().contains(needle), "{text}\n{err}");
        }
    }

    #[test]
    fn load_reports_missing_files_and_bad_utf8() {
        let dir = std::env::temp_dir().join(format!("tg-nix-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("nope.toml");
        let err = Manifest::load(&missing).expect_err("missing file");
        assert_eq!((err.kind, err.file.as_path()), (ErrorKind::Io, missing.as_path()));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, b"name = \"\xff\"").expect("write");
        let err = Manifest::load(&bad).expect_err("bad utf-8");
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(err.message.contains("UTF-8"), "{err}");
        let good = dir.join("manifest.toml");
        std::fs::write(&good, PLACEBO).expect("write");
        assert_eq!(Manifest::load(&good).expect("loads").source, good);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
