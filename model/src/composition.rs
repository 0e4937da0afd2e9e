//! A composition file (reference §4.2): which plan and case, which groups with how many instances,
//! how each group is built, and optionally several `[[runs]]`. Loading checks syntax, key names and
//! value types; [`Composition::prepare`](crate::Composition::prepare) checks it against the
//! manifest and applies Testground's precedence rules.
//!
//! Names (`plan`, `case`, `builder`, `runner`, `group_id`) are strings where empty means "not set",
//! as in Testground's Go structs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::{Table, Value};

use crate::doc::{self, Ignored, KeyPath, Reader, Rule, Schema, SpanIndex};
use crate::error::{ErrorKind, ModelError, Warning};
use crate::manifest::DOCKERFILE_EXTENSIONS;
use crate::template::{in_rendered, render_composition, TemplateData};

/// A parsed composition. Build one with [`Composition::load`], [`Composition::from_str`] or
/// [`Composition::single`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Composition {
    /// `[metadata]` (`name`, `author`, anything else): free-form, never interpreted.
    pub metadata: Table,
    pub global: Global,
    pub groups: Vec<Group>,
    /// `[[runs]]`; empty means one run `default` made of every group.
    pub runs: Vec<Run>,
    /// The file this came from (`command line` for [`Composition::single`]), for messages.
    pub source: PathBuf,
    /// Testground keys that tg-nix reads past.
    pub warnings: Vec<Warning>,
    #[serde(skip)]
    pub(crate) lines: SpanIndex,
    #[serde(skip)]
    pub(crate) origin: Origin,
    /// The file was a template: lines in messages are lines of the rendered text.
    #[serde(skip)]
    pub(crate) rendered: bool,
}

/// Where a composition came from; decides how key paths are shown in messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Origin {
    #[default]
    File,
    /// Built from `tg-nix run --plan …` flags: messages name the flags.
    CommandLine,
}

/// `[global]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Global {
    /// Where the plan is; tg-nix resolves it relative to the composition file, then under
    /// `<home>/plans/`. TEST_PLAN comes from the manifest's `name`, not from here.
    pub plan: String,
    /// Required for a run.
    pub case: String,
    /// The default builder of the groups.
    pub builder: String,
    /// Required for a run.
    pub runner: String,
    /// Required when a group gives a `percentage`; must equal the sum when given. 0 means unset.
    pub total_instances: Option<u64>,
    /// 0 = unlimited.
    pub concurrent_builds: Option<u64>,
    /// TEST_DISABLE_METRICS.
    pub disable_metrics: bool,
    /// Defaults for every group's `build_config`.
    pub build_config: Table,
    /// Default selectors and dependencies of every group.
    pub build: Build,
    /// Runner configuration (over the manifest's `[runners.X]`).
    pub run_config: Table,
    /// Default artifact, test params and profiles of every group.
    pub run: RunDefaults,
}

/// `[global.build]` / `[groups.build]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Build {
    /// Source selectors (Go builders: build tags).
    pub selectors: Vec<String>,
    /// `[[….build.dependencies]]`: dependency rewrites.
    pub dependencies: Vec<Dependency>,
}

/// One dependency rewrite: use `module` at `version`, fetched from `target` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub module: String,
    pub version: String,
    pub target: Option<String>,
}

/// `[global.run]` / `[groups.run]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunDefaults {
    /// A prebuilt artifact: the group is not built.
    pub artifact: Option<String>,
    pub test_params: BTreeMap<String, String>,
    /// Profiles to capture (`cpu = "*"`, `heap = "5s"`): TEST_CAPTURE_PROFILES.
    pub profiles: BTreeMap<String, String>,
}

/// One `[[groups]]` entry: a build unit, and (without `[[runs]]`) a group of instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    /// TEST_GROUP_ID and a directory name.
    pub id: String,
    /// Overrides `global.builder`.
    pub builder: String,
    pub instances: Option<Instances>,
    pub build_config: Table,
    pub build: Build,
    pub run: RunDefaults,
}

/// `instances = { count = N }` or `{ percentage = P }` (of `total_instances`). Exactly one must be
/// set; `prepare` checks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Instances {
    pub count: Option<u64>,
    pub percentage: Option<f64>,
}

/// One `[[runs]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Run {
    pub id: String,
    /// 0 means unset, as in Testground's examples (`total_instances = 0`).
    pub total_instances: Option<u64>,
    /// Params of every group of this run (under the run group's own).
    pub test_params: BTreeMap<String, String>,
    pub groups: Vec<RunGroupDef>,
}

/// One `[[runs.groups]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunGroupDef {
    /// TEST_GROUP_ID of these instances.
    pub id: String,
    /// The `[[groups]]` entry whose build they run; empty means the same as `id`.
    pub group_id: String,
    /// Defaults to the build group's `instances`.
    pub instances: Option<Instances>,
    pub test_params: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, String>,
}

static RESOURCES: Ignored = Ignored {
    message: "`resources` is ignored: the local runners do not limit memory or CPU (Testground's did not either)",
    hint: None,
};

static ROOT: Schema = Schema {
    what: "the composition",
    keys: &[("metadata", Rule::Known), ("global", Rule::Known), ("groups", Rule::Known), ("runs", Rule::Known)],
    elsewhere: &[
        ("plan", "`plan` belongs in [global]"),
        ("case", "`case` belongs in [global]"),
        ("builder", "`builder` belongs in [global] or in a [[groups]] entry"),
        ("runner", "`runner` belongs in [global]"),
        ("total_instances", "`total_instances` belongs in [global] or in a [[runs]] entry"),
        ("test_params", "`test_params` belongs in [global.run], [groups.run] or a [[runs]] entry"),
        ("group", "groups are an array of tables: [[groups]]"),
        ("run", "runs are an array of tables: [[runs]]"),
    ],
};

static GLOBAL: Schema = Schema {
    what: "[global]",
    keys: &[
        ("plan", Rule::Known),
        ("case", Rule::Known),
        ("builder", Rule::Known),
        ("runner", Rule::Known),
        ("total_instances", Rule::Known),
        ("concurrent_builds", Rule::Known),
        ("disable_metrics", Rule::Known),
        ("build_config", Rule::Known),
        ("build", Rule::Known),
        ("run_config", Rule::Known),
        ("run", Rule::Known),
    ],
    elsewhere: &[
        ("test_params", "`test_params` belongs in [global.run]: [global.run.test_params]"),
        ("profiles", "`profiles` belongs in [global.run]: [global.run.profiles]"),
        ("artifact", "`artifact` belongs in [global.run]"),
        ("selectors", "`selectors` belongs in [global.build]"),
        ("dependencies", "`dependencies` belongs in [global.build]: [[global.build.dependencies]]"),
        ("instances", "instance counts belong in each [[groups]] entry; the total is `total_instances`"),
        ("id", "`id` belongs in a [[groups]] entry"),
        ("testcase", "write `case`"),
        ("test_case", "write `case`"),
    ],
};

static BUILD: Schema = Schema {
    what: "build",
    keys: &[("selectors", Rule::Known), ("dependencies", Rule::Known)],
    elsewhere: &[
        ("dependency", "dependencies are an array of tables: [[….build.dependencies]]"),
        ("tags", "write `selectors` (Go builders pass them as build tags)"),
    ],
};

static DEPENDENCY: Schema = Schema {
    what: "a dependency",
    keys: &[("module", Rule::Known), ("version", Rule::Known), ("target", Rule::Known)],
    elsewhere: &[],
};

static RUN_DEFAULTS: Schema = Schema {
    what: "run",
    keys: &[("artifact", Rule::Known), ("test_params", Rule::Known), ("profiles", Rule::Known)],
    elsewhere: &[("params", "write `test_params`")],
};

static GROUP: Schema = Schema {
    what: "[[groups]]",
    keys: &[
        ("id", Rule::Known),
        ("builder", Rule::Known),
        ("instances", Rule::Known),
        ("resources", Rule::Ignored(&RESOURCES)),
        ("build_config", Rule::Known),
        ("build", Rule::Known),
        ("run", Rule::Known),
    ],
    elsewhere: &[
        ("test_params", "`test_params` belongs in [groups.run]: [groups.run.test_params]"),
        ("profiles", "`profiles` belongs in [groups.run]: [groups.run.profiles]"),
        ("artifact", "`artifact` belongs in [groups.run]"),
        ("selectors", "`selectors` belongs in [groups.build]"),
        ("dependencies", "`dependencies` belongs in [groups.build]: [[groups.build.dependencies]]"),
        ("count", "write `instances = { count = N }`"),
        ("percentage", "write `instances = { percentage = P }`"),
        ("runner", "the runner is the same for every group: set `runner` in [global]"),
        ("run_config", "run_config is the same for every group: [global.run_config]"),
        ("case", "`case` belongs in [global]"),
        ("plan", "`plan` belongs in [global]"),
        ("total_instances", "`total_instances` belongs in [global] or in a [[runs]] entry"),
        ("name", "a group is named by `id`"),
    ],
};

static INSTANCES: Schema = Schema {
    what: "instances",
    keys: &[("count", Rule::Known), ("percentage", Rule::Known)],
    elsewhere: &[
        ("total", "`total_instances` belongs in [global] or in a [[runs]] entry"),
        ("min", "bounds belong in the manifest; a composition gives `count` or `percentage`"),
        ("max", "bounds belong in the manifest; a composition gives `count` or `percentage`"),
    ],
};

static RUN: Schema = Schema {
    what: "[[runs]]",
    keys: &[
        ("id", Rule::Known),
        ("total_instances", Rule::Known),
        ("test_params", Rule::Known),
        ("groups", Rule::Known),
    ],
    elsewhere: &[
        ("profiles", "`profiles` belongs in each [[runs.groups]] entry"),
        ("group", "run groups are an array of tables: [[runs.groups]]"),
    ],
};

static RUN_GROUP: Schema = Schema {
    what: "[[runs.groups]]",
    keys: &[
        ("id", Rule::Known),
        ("group_id", Rule::Known),
        ("instances", Rule::Known),
        ("resources", Rule::Ignored(&RESOURCES)),
        ("test_params", Rule::Known),
        ("profiles", Rule::Known),
    ],
    elsewhere: &[
        ("group", "write `group_id`: the [[groups]] entry whose build this run group uses"),
        ("builder", "a run group uses the build of the [[groups]] entry named by `group_id`"),
        ("build", "a run group uses the build of the [[groups]] entry named by `group_id`"),
        ("build_config", "a run group uses the build of the [[groups]] entry named by `group_id`"),
        ("run", "in [[runs.groups]], `test_params` and `profiles` sit directly in the entry"),
        ("artifact", "a run group uses the artifact of the [[groups]] entry named by `group_id`"),
    ],
};

impl Composition {
    /// Reads and checks `path`, rendering it first when it is a template (see
    /// [`Composition::load_with`]) with the process environment and no `--set` variables.
    pub fn load(path: &Path) -> Result<Composition, ModelError> {
        Composition::load_with(path, &TemplateData::from_env([]))
    }

    /// Reads `path`; when it contains `{{`, renders it as a handlebars template with `data`
    /// ([`crate::render_composition`]), then parses and checks the result. I/O reads this file
    /// and the resources its template loads. Errors whose line is in the rendered text say so.
    pub fn load_with(path: &Path, data: &TemplateData) -> Result<Composition, ModelError> {
        let text = doc::read(path)?;
        match render_composition(&text, path, data)? {
            None => Composition::from_str(&text, path),
            Some(rendered) => {
                let mut c = Composition::from_str(&rendered, path).map_err(|e| in_rendered(e, path))?;
                c.warnings = c.warnings.into_iter().map(|w| rendered_warning(w, path)).collect();
                c.rendered = true;
                Ok(c)
            }
        }
    }

    /// True when the file was a template: line numbers in messages count lines of the rendered
    /// text (`tg-nix render` prints it).
    pub fn is_rendered(&self) -> bool {
        self.rendered
    }

    /// Parses composition text: syntax, key names and value types. `source` names it in messages.
    pub fn from_str(text: &str, source: &Path) -> Result<Composition, ModelError> {
        let doc = doc::parse(text, source)?;
        let mut r = Reader::new(source, &doc.lines);
        let root = KeyPath::root();
        let t = &doc.table;
        r.check_keys(t, &root, &ROOT)?;

        let metadata = r.table(t, &root, "metadata")?.cloned().unwrap_or_default();
        let global = match r.table(t, &root, "global")? {
            Some(g) => global(&mut r, g, &root.key("global"))?,
            None => Global::default(),
        };
        let mut groups = Vec::new();
        for (path, g) in r.tables(t, &root, "groups")? {
            groups.push(group(&mut r, g, &path)?);
        }
        let mut runs = Vec::new();
        for (path, run) in r.tables(t, &root, "runs")? {
            runs.push(run_def(&mut r, run, &path)?);
        }
        Ok(Composition {
            metadata,
            global,
            groups,
            runs,
            source: source.to_path_buf(),
            warnings: r.finish(),
            lines: doc.lines,
            origin: Origin::File,
            rendered: false,
        })
    }

    /// A composition built in code, for [`crate::SingleRun`].
    pub(crate) fn from_parts(global: Global, groups: Vec<Group>, source: PathBuf, origin: Origin) -> Composition {
        Composition {
            metadata: Table::new(),
            global,
            groups,
            runs: Vec::new(),
            source,
            warnings: Vec::new(),
            lines: SpanIndex::default(),
            origin,
            rendered: false,
        }
    }
}

/// A warning located in a rendered composition, said the way [`in_rendered`] says it of errors.
pub(crate) fn rendered_warning(w: Warning, path: &Path) -> Warning {
    let e =
        ModelError { key: w.key, line: w.line, hint: w.hint, ..ModelError::new(ErrorKind::Invalid, w.file, w.message) };
    let e = in_rendered(e, path);
    Warning { file: e.file, key: e.key, line: e.line, message: e.message, hint: e.hint }
}

fn name(r: &Reader<'_>, t: &Table, path: &KeyPath, key: &str) -> Result<String, ModelError> {
    Ok(r.string(t, path, key)?.unwrap_or_default())
}

fn global(r: &mut Reader<'_>, t: &Table, path: &KeyPath) -> Result<Global, ModelError> {
    r.check_keys(t, path, &GLOBAL)?;
    let build_config = r.table(t, path, "build_config")?.cloned().unwrap_or_default();
    note_dockerfile_extensions(r, &build_config, &path.key("build_config"));
    Ok(Global {
        plan: name(r, t, path, "plan")?,
        case: name(r, t, path, "case")?,
        builder: name(r, t, path, "builder")?,
        runner: name(r, t, path, "runner")?,
        total_instances: r.u64(t, path, "total_instances")?.filter(|n| *n > 0),
        concurrent_builds: r.u64(t, path, "concurrent_builds")?,
        disable_metrics: r.bool(t, path, "disable_metrics")?.unwrap_or(false),
        build_config,
        build: build(r, t, path)?,
        run_config: r.table(t, path, "run_config")?.cloned().unwrap_or_default(),
        run: run_defaults(r, t, path)?,
    })
}

fn note_dockerfile_extensions(r: &mut Reader<'_>, build_config: &Table, path: &KeyPath) {
    if build_config.contains_key("dockerfile_extensions") {
        r.ignore(&DOCKERFILE_EXTENSIONS, path.key("dockerfile_extensions"));
    }
}

fn build(r: &mut Reader<'_>, parent: &Table, parent_path: &KeyPath) -> Result<Build, ModelError> {
    let Some(t) = r.table(parent, parent_path, "build")? else { return Ok(Build::default()) };
    let path = parent_path.key("build");
    r.check_keys(t, &path, &BUILD)?;
    let mut dependencies: Vec<Dependency> = Vec::new();
    for (dpath, d) in r.tables(t, &path, "dependencies")? {
        r.check_keys(d, &dpath, &DEPENDENCY)?;
        let module = name(r, d, &dpath, "module")?;
        let version = name(r, d, &dpath, "version")?;
        let target = r.string(d, &dpath, "target")?.filter(|s| !s.is_empty());
        for (key, value) in [("module", &module), ("version", &version)] {
            if value.is_empty() {
                return Err(r
                    .err(ErrorKind::Missing, &dpath.key(key), format!("a dependency needs a `{key}`"))
                    .hint("write `{ module = \"github.com/libp2p/go-libp2p\", version = \"v0.22.0\" }` (`target` is optional)"));
            }
        }
        if dependencies.iter().any(|e| e.module == module) {
            return Err(r
                .err(
                    ErrorKind::Invalid,
                    &dpath.key("module"),
                    format!("module `{module}` is rewritten twice in this list"),
                )
                .hint("keep one entry per module"));
        }
        dependencies.push(Dependency { module, version, target });
    }
    Ok(Build { selectors: r.strings(t, &path, "selectors")?, dependencies })
}

fn run_defaults(r: &mut Reader<'_>, parent: &Table, parent_path: &KeyPath) -> Result<RunDefaults, ModelError> {
    let Some(t) = r.table(parent, parent_path, "run")? else { return Ok(RunDefaults::default()) };
    let path = parent_path.key("run");
    r.check_keys(t, &path, &RUN_DEFAULTS)?;
    Ok(RunDefaults {
        artifact: r.string(t, &path, "artifact")?.filter(|s| !s.is_empty()),
        test_params: r.string_map(t, &path, "test_params")?,
        profiles: r.string_map(t, &path, "profiles")?,
    })
}

fn instances(r: &mut Reader<'_>, parent: &Table, parent_path: &KeyPath) -> Result<Option<Instances>, ModelError> {
    let path = parent_path.key("instances");
    let t = match parent.get("instances") {
        None => return Ok(None),
        Some(Value::Table(t)) => t,
        Some(Value::Integer(n)) => {
            return Err(r
                .err(ErrorKind::WrongType, &path, format!("expected a table, found the number {n}"))
                .hint(format!("write `instances = {{ count = {n} }}`")))
        }
        Some(v) => {
            return Err(r
                .err(ErrorKind::WrongType, &path, format!("expected a table, found {}", doc::type_name(v)))
                .hint("write `instances = { count = N }` or `instances = { percentage = P }`"))
        }
    };
    r.check_keys(t, &path, &INSTANCES)?;
    Ok(Some(Instances { count: r.u64(t, &path, "count")?, percentage: r.f64(t, &path, "percentage")? }))
}

fn group(r: &mut Reader<'_>, t: &Table, path: &KeyPath) -> Result<Group, ModelError> {
    r.check_keys(t, path, &GROUP)?;
    let build_config = r.table(t, path, "build_config")?.cloned().unwrap_or_default();
    note_dockerfile_extensions(r, &build_config, &path.key("build_config"));
    Ok(Group {
        id: name(r, t, path, "id")?,
        builder: name(r, t, path, "builder")?,
        instances: instances(r, t, path)?,
        build_config,
        build: build(r, t, path)?,
        run: run_defaults(r, t, path)?,
    })
}

fn run_def(r: &mut Reader<'_>, t: &Table, path: &KeyPath) -> Result<Run, ModelError> {
    r.check_keys(t, path, &RUN)?;
    let mut groups = Vec::new();
    for (gpath, g) in r.tables(t, path, "groups")? {
        r.check_keys(g, &gpath, &RUN_GROUP)?;
        groups.push(RunGroupDef {
            id: name(r, g, &gpath, "id")?,
            group_id: name(r, g, &gpath, "group_id")?,
            instances: instances(r, g, &gpath)?,
            test_params: r.string_map(g, &gpath, "test_params")?,
            profiles: r.string_map(g, &gpath, "profiles")?,
        });
    }
    Ok(Run {
        id: name(r, t, path, "id")?,
        total_instances: r.u64(t, path, "total_instances")?.filter(|n| *n > 0),
        test_params: r.string_map(t, path, "test_params")?,
        groups,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every key of reference §4.2 at least once.
    pub(crate) const FULL: &str = r#"
[metadata]
name = "ping-interop"
author = "someone"

[global]
plan = "ping"
case = "ping"
builder = "docker:go"
runner = "local:docker"
total_instances = 4
concurrent_builds = 1
disable_metrics = true

[global.build_config]
build_base_image = "golang:1.18-buster"
path = "./go/"

[global.build]
selectors = ["v0.22"]

[[global.build.dependencies]]
module = "github.com/libp2p/go-libp2p"
version = "v0.22.0"

[global.run_config]
keep_containers = true

[global.run]
artifact = ""

[global.run.test_params]
iterations = "7"
max_latency_ms = 20

[global.run.profiles]
cpu = "*"

[[groups]]
id = "go-v0.22"
builder = "docker:generic"
instances = { count = 1 }

[groups.resources]
memory = "100Mi"

[groups.build]
selectors = ["v0.22", "extra"]

[[groups.build.dependencies]]
module = "github.com/libp2p/go-libp2p"
version = "master"
target = "github.com/fork/go-libp2p"

[groups.build_config]
modfile = "go.v0.22.mod"

[groups.build_config.build_args]
BINARY_NAME = "testplan_0500"

[groups.run]
artifact = "sha256:abc"

[groups.run.test_params]
secure_channel = "noise"

[groups.run.profiles]
heap = "5s"

[[groups]]
id = "rust"
instances = { percentage = 0.75 }

[[runs]]
id = "run_many_1"
total_instances = 0

[runs.test_params]
iterations = "1"

[[runs.groups]]
id = "a"
group_id = "go-v0.22"
instances = { count = 2 }

[runs.groups.test_params]
label = "a"

[runs.groups.profiles]
cpu = "1s"
"#;

    #[test]
    fn every_key_is_read() {
        let c = Composition::from_str(FULL, Path::new("c.toml")).expect("parses");
        assert_eq!(c.metadata.get("author").and_then(Value::as_str), Some("someone"));
        let g = &c.global;
        assert_eq!(
            (g.plan.as_str(), g.case.as_str(), g.builder.as_str(), g.runner.as_str()),
            ("ping", "ping", "docker:go", "local:docker")
        );
        assert_eq!((g.total_instances, g.concurrent_builds, g.disable_metrics), (Some(4), Some(1), true));
        assert_eq!(g.build_config.get("path").and_then(Value::as_str), Some("./go/"));
        assert_eq!(g.build.selectors, ["v0.22"]);
        assert_eq!(
            g.build.dependencies,
            [Dependency { module: "github.com/libp2p/go-libp2p".into(), version: "v0.22.0".into(), target: None }]
        );
        assert_eq!(g.run_config.get("keep_containers").and_then(Value::as_bool), Some(true));
        assert_eq!(g.run.artifact, None, "empty artifact means none");
        // A number in test_params is encoded like a manifest default.
        assert_eq!(g.run.test_params.get("max_latency_ms").map(String::as_str), Some("20"));
        assert_eq!(g.run.profiles.get("cpu").map(String::as_str), Some("*"));

        let a = &c.groups[0];
        assert_eq!((a.id.as_str(), a.builder.as_str()), ("go-v0.22", "docker:generic"));
        assert_eq!(a.instances, Some(Instances { count: Some(1), percentage: None }));
        assert_eq!(a.build.dependencies[0].target.as_deref(), Some("github.com/fork/go-libp2p"));
        assert!(a.build_config.get("build_args").and_then(Value::as_table).is_some());
        assert_eq!(a.run.artifact.as_deref(), Some("sha256:abc"));
        assert_eq!(c.groups[1].instances, Some(Instances { count: None, percentage: Some(0.75) }));

        let run = &c.runs[0];
        assert_eq!((run.id.as_str(), run.total_instances), ("run_many_1", None), "0 means unset");
        assert_eq!(run.test_params.get("iterations").map(String::as_str), Some("1"));
        let rg = &run.groups[0];
        assert_eq!((rg.id.as_str(), rg.group_id.as_str()), ("a", "go-v0.22"));
        assert_eq!(rg.profiles.get("cpu").map(String::as_str), Some("1s"));

        // `resources` is the one ignored key here.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key.as_deref(), Some("groups[0].resources"));
    }

    #[test]
    fn ignored_keys_warn() {
        let text = "[[groups]]\nid = \"a\"\n[groups.build_config.dockerfile_extensions]\npre_build = \"RUN x\"\n\
                    [[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\nresources = { cpu = \"1\" }\n";
        let c = Composition::from_str(text, Path::new("c.toml")).expect("parses");
        let keys: Vec<_> = c.warnings.iter().map(|w| w.key.clone().unwrap_or_default()).collect();
        assert_eq!(keys, ["groups[0].build_config.dockerfile_extensions", "runs[0].groups[0].resources"]);
        assert_eq!(c.warnings[0].line, Some(3));
    }

    #[test]
    fn errors_table() {
        let cases: &[(&str, ErrorKind, &str, Option<usize>, &str)] = &[
            ("[global]\ncase = \"x\"\ncsae = 1\n", ErrorKind::UnknownKey, "global.csae", Some(3), "did you mean `case`?"),
            ("[global]\ntest_params = { a = \"1\" }\n", ErrorKind::UnknownKey, "global.test_params", Some(2), "[global.run.test_params]"),
            ("[global.run]\nparams = { a = \"1\" }\n", ErrorKind::UnknownKey, "global.run.params", Some(2), "write `test_params`"),
            ("plan = \"x\"\n", ErrorKind::UnknownKey, "plan", Some(1), "belongs in [global]"),
            ("[[groups]]\nid = \"a\"\ninstnaces = { count = 1 }\n", ErrorKind::UnknownKey, "groups[0].instnaces", Some(3), "did you mean `instances`?"),
            ("[[groups]]\nid = \"a\"\n[groups.run]\ntest_param = {}\n", ErrorKind::UnknownKey, "groups[0].run.test_param", Some(4), "did you mean `test_params`?"),
            ("[[groups]]\nid = \"a\"\ntest_params = {}\n", ErrorKind::UnknownKey, "groups[0].test_params", Some(3), "[groups.run.test_params]"),
            ("[[groups]]\nid = \"a\"\ninstances = 3\n", ErrorKind::WrongType, "groups[0].instances", Some(3), "instances = { count = 3 }"),
            ("[[groups]]\nid = \"a\"\ninstances = { cuont = 3 }\n", ErrorKind::UnknownKey, "groups[0].instances.cuont", Some(3), "did you mean `count`?"),
            ("[[groups]]\nid = \"a\"\ninstances = { count = -3 }\n", ErrorKind::Invalid, "groups[0].instances.count", Some(3), "negative"),
            ("[[groups]]\nid = \"a\"\ninstances = { count = \"3\" }\n", ErrorKind::WrongType, "groups[0].instances.count", Some(3), "a whole number"),
            ("[[groups]]\nid = 1\n", ErrorKind::WrongType, "groups[0].id", Some(2), "expected a string"),
            ("[groups]\nid = \"a\"\n", ErrorKind::WrongType, "groups", Some(1), "[[groups]]"),
            ("[global]\ndisable_metrics = \"yes\"\n", ErrorKind::WrongType, "global.disable_metrics", Some(2), "true or false"),
            ("[global.build]\nselectors = \"v1\"\n", ErrorKind::WrongType, "global.build.selectors", Some(2), "an array of strings"),
            ("[[global.build.dependencies]]\nversion = \"v1\"\n", ErrorKind::Missing, "global.build.dependencies[0].module", Some(1), "needs a `module`"),
            (
                "[[groups]]\nid = \"a\"\n[[groups.build.dependencies]]\nmodule = \"m\"\nversion = \"1\"\n[[groups.build.dependencies]]\nmodule = \"m\"\nversion = \"2\"\n",
                ErrorKind::Invalid,
                "groups[0].build.dependencies[1].module",
                Some(7),
                "rewritten twice",
            ),
            ("[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\ngroup = \"g\"\n", ErrorKind::UnknownKey, "runs[0].groups[0].group", Some(5), "write `group_id`"),
            ("[[runs]]\nid = \"r\"\n[[runs.groups]]\nid = \"a\"\n[runs.groups.run]\n", ErrorKind::UnknownKey, "runs[0].groups[0].run", Some(5), "sit directly"),
            ("[[groups]]\nid = \"a\"\n[groups.run.test_params]\npeer.count = 1\n", ErrorKind::WrongType, "groups[0].run.test_params.peer", Some(4), "quote keys"),
        ];
        for (text, kind, key, line, needle) in cases {
            let err =
                Composition::from_str(text, Path::new("c.toml")).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
            assert_eq!(err.kind, *kind, "{text}\n{err}");
            assert_eq!(err.key.as_deref(), Some(*key), "{text}\n{err}");
            assert_eq!(err.line, *line, "{text}\n{err}");
            assert!(err.to_string().contains(needle), "{text}\n{err}");
        }
    }
}
