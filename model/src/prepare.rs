//! Checking a composition against its plan's manifest and applying every Testground precedence
//! rule (reference §4.2), producing exactly what builders and runners need.
//!
//! - build units are the `[[groups]]`, one per group id; `build_config` is "group > global >
//!   manifest `[builders.X]`" (top-level keys only, as Testground merges), selectors are the
//!   group's or else the global ones, dependencies merge per module with the group winning;
//! - `run_config` is "`global.run_config` > manifest `[runners.X]`";
//! - without `[[runs]]` one run `default` is made of every group;
//! - "test_params precedence (first wins; each step fills only missing keys): run-group
//!   `test_params` → `[runs].test_params` → `[[groups]].run.test_params` → `global.run.test_params`
//!   → manifest defaults"; profiles: run group → group → global.
//!
//! Where tg-nix is stricter than Testground it says so in the message: zero-instance groups,
//! percentages outside (0, 1], unsafe group ids, and params that packing would corrupt are errors.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use toml::Table;

use crate::composition::{Composition, Dependency, Instances, Origin};
use crate::doc::{closest, dir_name_problem, quote_key, KeyPath};
use crate::error::{ErrorKind, ModelError, Warning};
use crate::manifest::{Manifest, TestCase};
use crate::params::{check_param, param_default_string};

type Params = BTreeMap<String, String>;

/// The most instances one run may have; more is surely a typo.
pub const MAX_INSTANCES: u64 = 100_000;

/// A composition checked against its manifest, with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prepared {
    /// TEST_PLAN: the manifest's name with `/` replaced by `-`.
    pub plan: String,
    /// TEST_CASE.
    pub case: String,
    pub runner: String,
    /// `global.run_config` over the manifest's `[runners.<runner>]`.
    pub run_config: Table,
    /// TEST_DISABLE_METRICS.
    pub disable_metrics: bool,
    /// `global.concurrent_builds` (0 = unlimited), when given.
    pub concurrent_builds: Option<u64>,
    /// One per `[[groups]]` entry, in file order.
    pub builds: Vec<BuildUnit>,
    /// In file order (`default` alone when the composition has no `[[runs]]`).
    pub runs: Vec<RunSpec>,
    /// Every warning: from loading the composition, from loading the manifest, and from preparing.
    pub warnings: Vec<Warning>,
}

impl Prepared {
    /// The build unit of group `group_id`.
    pub fn build(&self, group_id: &str) -> Option<&BuildUnit> {
        self.builds.iter().find(|b| b.group_id == group_id)
    }

    /// The run called `id`.
    pub fn run(&self, id: &str) -> Option<&RunSpec> {
        self.runs.iter().find(|r| r.id == id)
    }
}

/// What to build for one `[[groups]]` entry. Two units may be identical; deduplicating them is
/// the builders' business.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildUnit {
    pub group_id: String,
    pub builder: String,
    /// Group > global > manifest `[builders.<builder>]`.
    pub build_config: Table,
    /// The group's selectors, or else the global ones.
    pub selectors: Vec<String>,
    /// The group's rewrites plus the global ones for other modules.
    pub dependencies: Vec<Dependency>,
    /// A prebuilt artifact (group's, else global's): nothing to build.
    pub artifact: Option<String>,
}

/// One run: the instances started together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSpec {
    /// `default` when the composition has no `[[runs]]`.
    pub id: String,
    /// TEST_INSTANCE_COUNT: the sum over the groups.
    pub total_instances: u64,
    pub groups: Vec<RunGroup>,
}

/// One group of instances in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunGroup {
    /// TEST_GROUP_ID.
    pub id: String,
    /// The [`BuildUnit::group_id`] whose program these instances run.
    pub build_group: String,
    /// TEST_GROUP_INSTANCE_COUNT.
    pub instances: u64,
    /// TEST_INSTANCE_PARAMS, every precedence step applied and checked for packing.
    pub test_params: BTreeMap<String, String>,
    /// TEST_CAPTURE_PROFILES.
    pub profiles: BTreeMap<String, String>,
}

impl Composition {
    /// Checks this composition against `manifest` and applies the precedence rules. Errors name
    /// the file (composition or manifest), the key path and the fix.
    pub fn prepare(&self, manifest: &Manifest) -> Result<Prepared, ModelError> {
        let prepared = Preparer { comp: self, manifest, warnings: Vec::new(), warned: HashSet::new() }.prepare();
        if !self.rendered {
            return prepared;
        }
        let source = &self.source;
        let mut prepared = prepared.map_err(|e| crate::template::in_rendered(e, source))?;
        prepared.warnings =
            prepared.warnings.into_iter().map(|w| crate::composition::rendered_warning(w, source)).collect();
        Ok(prepared)
    }
}

/// A run before its checks: where each piece came from, for messages.
struct RunSource<'c> {
    id: String,
    /// The key that stands for the run as a whole.
    path: KeyPath,
    total: Option<u64>,
    total_path: KeyPath,
    test_params: Option<(&'c BTreeMap<String, String>, KeyPath)>,
    groups: Vec<RunGroupSource<'c>>,
}

struct RunGroupSource<'c> {
    id: String,
    /// The run group's table (`runs[0].groups[1]`), or the group's for the default run.
    path: KeyPath,
    /// Index into the composition's groups.
    group: usize,
    instances: Option<(Instances, KeyPath)>,
    test_params: Option<(&'c BTreeMap<String, String>, KeyPath)>,
    profiles: Option<(&'c BTreeMap<String, String>, KeyPath)>,
}

/// Which file a key path is in.
enum InFile {
    Composition(KeyPath),
    Manifest(KeyPath),
}

struct Preparer<'a> {
    comp: &'a Composition,
    manifest: &'a Manifest,
    warnings: Vec<Warning>,
    warned: HashSet<(Option<String>, String)>,
}

fn root() -> KeyPath {
    KeyPath::root()
}

impl<'a> Preparer<'a> {
    fn single(&self) -> bool {
        self.comp.origin == Origin::CommandLine
    }

    /// The key as the user wrote it: a TOML key path, or the flag for command-line runs.
    fn shown_key(&self, path: &KeyPath) -> String {
        let s = path.to_string();
        if !self.single() {
            return s;
        }
        if let Some(param) = s.strip_prefix("groups[0].run.test_params.") {
            return format!("--test-param {param}");
        }
        const FLAGS: &[(&str, &str)] = &[
            ("global.plan", "--plan"),
            ("global.case", "--case"),
            ("global.runner", "--runner"),
            ("global.builder", "--builder"),
            ("groups[0].builder", "--builder"),
            ("global.total_instances", "--instances"),
            ("groups[0].instances", "--instances"),
            ("global.build_config", "--build-cfg"),
            ("global.run_config", "--run-cfg"),
        ];
        for (prefix, flag) in FLAGS {
            if s == *prefix || s.starts_with(&format!("{prefix}.")) {
                return flag.to_string();
            }
        }
        s
    }

    /// The hint for a composition file, or for command-line flags.
    fn fix(&self, in_file: impl Into<String>, on_command_line: impl Into<String>) -> String {
        if self.single() {
            on_command_line.into()
        } else {
            in_file.into()
        }
    }

    fn err(&self, kind: ErrorKind, path: &KeyPath, message: impl Into<String>) -> ModelError {
        ModelError::new(kind, &self.comp.source, message).at(self.shown_key(path), self.comp.lines.line(path))
    }

    fn manifest_err(&self, kind: ErrorKind, path: &KeyPath, message: impl Into<String>) -> ModelError {
        ModelError::new(kind, &self.manifest.source, message).at(path.to_string(), self.manifest.line(path))
    }

    fn err_in(&self, kind: ErrorKind, at: &InFile, message: impl Into<String>) -> ModelError {
        match at {
            InFile::Composition(p) => self.err(kind, p, message),
            InFile::Manifest(p) => self.manifest_err(kind, p, message),
        }
    }

    fn warn_in(&mut self, at: &InFile, message: String, hint: Option<String>) {
        let (file, key, line) = match at {
            InFile::Composition(p) => (self.comp.source.clone(), self.shown_key(p), self.comp.lines.line(p)),
            InFile::Manifest(p) => (self.manifest.source.clone(), p.to_string(), self.manifest.line(p)),
        };
        if self.warned.insert((Some(key.clone()), message.clone())) {
            self.warnings.push(Warning { file, key: Some(key), line, message, hint });
        }
    }

    /// Group and run ids become TEST_GROUP_ID and directory names.
    fn check_id(&self, id: &str, path: &KeyPath, what: &str) -> Result<(), ModelError> {
        if id.is_empty() {
            return Err(self
                .err(ErrorKind::Missing, path, format!("{what} is missing"))
                .hint(format!("add `id = \"…\"`: {what}s name output directories")));
        }
        if let Some(problem) = dir_name_problem(id) {
            return Err(self
                .err(ErrorKind::Invalid, path, format!("{what} {id:?} cannot be used: {problem}"))
                .hint(format!("{what}s become directory names: use letters, digits, `-`, `_` and `.` (not first)")));
        }
        Ok(())
    }

    fn prepare(mut self) -> Result<Prepared, ModelError> {
        let (c, m) = (self.comp, self.manifest);
        let g = &c.global;
        let gp = root().key("global");

        let plan = m.plan_name();
        if let Some(problem) = dir_name_problem(&plan) {
            return Err(self.manifest_err(
                ErrorKind::Invalid,
                &root().key("name"),
                format!("plan name {:?} cannot be used: {problem}", m.name),
            ));
        }

        // The test case.
        let case_names: Vec<&str> = m.testcases.iter().map(|t| t.name.as_str()).collect();
        let cases_hint = if case_names.is_empty() {
            format!("{} declares no [[testcases]]", m.source.display())
        } else {
            format!("the cases of plan `{}` are: {}", m.name, case_names.join(", "))
        };
        if g.case.is_empty() {
            return Err(self
                .err(ErrorKind::Missing, &gp.key("case"), "no test case given")
                .hint(format!("{}; {cases_hint}", self.fix("set `case` in [global]", "give --case NAME"))));
        }
        let Some((case_index, case)) = m.testcases.iter().enumerate().find(|(_, t)| t.name == g.case) else {
            let hint = match closest(&g.case, &case_names) {
                Some(close) => format!("did you mean `{close}`? {cases_hint}"),
                None => cases_hint,
            };
            return Err(self
                .err(ErrorKind::NotFound, &gp.key("case"), format!("plan `{}` has no test case `{}`", m.name, g.case))
                .hint(hint));
        };

        // The runner.
        let runners: Vec<&str> = m.runners.keys().map(String::as_str).collect();
        let runners_hint = supported("runners", &runners, m);
        if g.runner.is_empty() {
            return Err(self
                .err(ErrorKind::Missing, &gp.key("runner"), "no runner given")
                .hint(format!("{}; {runners_hint}", self.fix("set `runner` in [global]", "give --runner NAME"))));
        }
        let Some(manifest_run_config) = m.runners.get(&g.runner) else {
            return Err(self
                .err(
                    ErrorKind::NotFound,
                    &gp.key("runner"),
                    format!("plan `{}` does not support runner `{}`", m.name, g.runner),
                )
                .hint(runners_hint));
        };
        let run_config = first_wins(&[&g.run_config, manifest_run_config]);

        // Build units.
        if c.groups.is_empty() {
            return Err(self
                .err(ErrorKind::Missing, &root().key("groups"), "the composition has no [[groups]]")
                .hint("add a [[groups]] entry with an `id` and `instances = { count = N }`"));
        }
        let builders: Vec<&str> = m.builders.keys().map(String::as_str).collect();
        let mut builds = Vec::with_capacity(c.groups.len());
        for (i, grp) in c.groups.iter().enumerate() {
            let path = root().key("groups").index(i);
            self.check_id(&grp.id, &path.key("id"), "group id")?;
            if c.groups[..i].iter().any(|o| o.id == grp.id) {
                return Err(self
                    .err(ErrorKind::Invalid, &path.key("id"), format!("group id `{}` is used twice", grp.id))
                    .hint("group ids must be unique: each is a TEST_GROUP_ID and an output directory"));
            }
            let (builder, builder_path) = if !grp.builder.is_empty() {
                (&grp.builder, path.key("builder"))
            } else if !g.builder.is_empty() {
                (&g.builder, gp.key("builder"))
            } else {
                return Err(self
                    .err(ErrorKind::Missing, &path.key("builder"), format!("group `{}` has no builder", grp.id))
                    .hint(format!(
                        "{}; {}",
                        self.fix("set `builder` in [global] or in this group", "give --builder NAME"),
                        supported("builders", &builders, m)
                    )));
            };
            let Some(manifest_build_config) = m.builders.get(builder) else {
                return Err(self
                    .err(
                        ErrorKind::NotFound,
                        &builder_path,
                        format!("plan `{}` does not support builder `{builder}`", m.name),
                    )
                    .hint(supported("builders", &builders, m)));
            };
            let dependencies = merge_dependencies(&grp.build.dependencies, &g.build.dependencies);
            if let Some(bad) = dependencies.iter().find(|d| d.module.is_empty() || d.version.is_empty()) {
                return Err(self
                    .err(
                        ErrorKind::Missing,
                        &path.key("build").key("dependencies"),
                        format!("dependency {:?} needs a module and a version", bad.module),
                    )
                    .hint("write `{ module = \"…\", version = \"…\" }`"));
            }
            builds.push(BuildUnit {
                group_id: grp.id.clone(),
                builder: builder.clone(),
                build_config: first_wins(&[&grp.build_config, &g.build_config, manifest_build_config]),
                selectors: if grp.build.selectors.is_empty() {
                    g.build.selectors.clone()
                } else {
                    grp.build.selectors.clone()
                },
                dependencies,
                artifact: grp.run.artifact.clone().or_else(|| g.run.artifact.clone()).filter(|a| !a.is_empty()),
            });
        }

        // Runs.
        let sources = self.run_sources()?;
        let mut runs = Vec::with_capacity(sources.len());
        for src in &sources {
            runs.push(self.prepare_run(src, case, case_index)?);
        }

        let mut warnings = c.warnings.clone();
        warnings.extend(m.warnings.iter().cloned());
        warnings.append(&mut self.warnings);
        Ok(Prepared {
            plan,
            case: case.name.clone(),
            runner: g.runner.clone(),
            run_config,
            disable_metrics: g.disable_metrics,
            concurrent_builds: g.concurrent_builds,
            builds,
            runs,
            warnings,
        })
    }

    /// The `[[runs]]`, or the `default` run made of every group.
    fn run_sources(&mut self) -> Result<Vec<RunSource<'a>>, ModelError> {
        let c = self.comp;
        let gp = root().key("global");
        if c.runs.is_empty() {
            let groups = c
                .groups
                .iter()
                .enumerate()
                .map(|(i, grp)| RunGroupSource {
                    id: grp.id.clone(),
                    path: root().key("groups").index(i),
                    group: i,
                    instances: None,
                    test_params: None,
                    profiles: None,
                })
                .collect();
            return Ok(vec![RunSource {
                id: "default".to_string(),
                path: root().key("groups"),
                total: c.global.total_instances.filter(|n| *n > 0),
                total_path: gp.key("total_instances"),
                test_params: None,
                groups,
            }]);
        }
        if c.global.total_instances.is_some() {
            self.warn_in(
                &InFile::Composition(gp.key("total_instances")),
                "`global.total_instances` is not used when the composition has [[runs]]".to_string(),
                Some("set `total_instances` in each [[runs]] entry that needs it".to_string()),
            );
        }
        let group_ids: Vec<&str> = c.groups.iter().map(|g| g.id.as_str()).collect();
        let mut out: Vec<RunSource<'a>> = Vec::with_capacity(c.runs.len());
        for (i, run) in c.runs.iter().enumerate() {
            let path = root().key("runs").index(i);
            self.check_id(&run.id, &path.key("id"), "run id")?;
            if out.iter().any(|r| r.id == run.id) {
                return Err(self
                    .err(ErrorKind::Invalid, &path.key("id"), format!("run id `{}` is used twice", run.id))
                    .hint("run ids must be unique: `--run-ids` selects runs by id"));
            }
            if run.groups.is_empty() {
                return Err(self
                    .err(ErrorKind::Missing, &path.key("groups"), format!("run `{}` has no [[runs.groups]]", run.id))
                    .hint("add [[runs.groups]] entries with an `id` (and `group_id` naming a [[groups]] entry)"));
            }
            let mut groups: Vec<RunGroupSource<'a>> = Vec::with_capacity(run.groups.len());
            for (j, rg) in run.groups.iter().enumerate() {
                let rpath = path.key("groups").index(j);
                self.check_id(&rg.id, &rpath.key("id"), "run group id")?;
                if groups.iter().any(|o| o.id == rg.id) {
                    return Err(self
                        .err(
                            ErrorKind::Invalid,
                            &rpath.key("id"),
                            format!("run group id `{}` is used twice in run `{}`", rg.id, run.id),
                        )
                        .hint("run group ids must be unique within a run: each is a TEST_GROUP_ID"));
                }
                let (group_id, gid_path) = if rg.group_id.is_empty() {
                    (&rg.id, rpath.key("id"))
                } else {
                    (&rg.group_id, rpath.key("group_id"))
                };
                let Some(group) = c.groups.iter().position(|g| &g.id == group_id) else {
                    let listed = format!("the [[groups]] ids are: {}", group_ids.join(", "));
                    let hint = match closest(group_id, &group_ids) {
                        Some(close) => format!("did you mean `{close}`? {listed}"),
                        None => format!(
                            "`group_id` (default: the run group's `id`) names the [[groups]] entry to run; {listed}"
                        ),
                    };
                    return Err(self
                        .err(ErrorKind::NotFound, &gid_path, format!("no [[groups]] entry has id `{group_id}`"))
                        .hint(hint));
                };
                groups.push(RunGroupSource {
                    id: rg.id.clone(),
                    path: rpath.clone(),
                    group,
                    instances: rg.instances.map(|inst| (inst, rpath.key("instances"))),
                    test_params: Some((&rg.test_params, rpath.key("test_params"))),
                    profiles: Some((&rg.profiles, rpath.key("profiles"))),
                });
            }
            out.push(RunSource {
                id: run.id.clone(),
                path: path.clone(),
                total: run.total_instances.filter(|n| *n > 0),
                total_path: path.key("total_instances"),
                test_params: Some((&run.test_params, path.key("test_params"))),
                groups,
            });
        }
        Ok(out)
    }

    fn prepare_run(&mut self, src: &RunSource<'a>, case: &TestCase, case_index: usize) -> Result<RunSpec, ModelError> {
        let c = self.comp;
        if let Some(total) = src.total.filter(|t| *t > MAX_INSTANCES) {
            return Err(self
                .err(
                    ErrorKind::Invalid,
                    &src.total_path,
                    format!("total_instances = {total} is more than tg-nix runs at once ({MAX_INSTANCES})"),
                )
                .hint("is there a typo in the number?"));
        }
        let mut counts = Vec::with_capacity(src.groups.len());
        for rg in &src.groups {
            let gpath = root().key("groups").index(rg.group);
            let (inst, ipath) = match (&rg.instances, &c.groups[rg.group].instances) {
                (Some((inst, p)), _) => (*inst, p.clone()),
                (None, Some(inst)) => (*inst, gpath.key("instances")),
                (None, None) => {
                    return Err(self
                        .err(
                            ErrorKind::Missing,
                            &rg.path.key("instances"),
                            format!("group `{}` has no instance count", rg.id),
                        )
                        .hint(self.fix(
                            "add `instances = { count = N }` (or `{ percentage = P }` with total_instances)",
                            "give --instances N",
                        )));
                }
            };
            counts.push(self.count(inst, &ipath, src, &rg.id)?);
        }
        let sum = counts.iter().fold(0u64, |a, n| a.saturating_add(*n));
        let breakdown =
            || src.groups.iter().zip(&counts).map(|(g, n)| format!("{}: {n}", g.id)).collect::<Vec<_>>().join(", ");
        if sum > MAX_INSTANCES {
            return Err(self
                .err(
                    ErrorKind::Invalid,
                    &src.path,
                    format!(
                        "run `{}` has {sum} instances ({}); tg-nix runs at most {MAX_INSTANCES}",
                        src.id,
                        breakdown()
                    ),
                )
                .hint("is there a typo in a count?"));
        }
        if let Some(total) = src.total {
            if total != sum {
                return Err(self
                    .err(
                        ErrorKind::Invalid,
                        &src.total_path,
                        format!("total_instances is {total}, but the groups add up to {sum} ({})", breakdown()),
                    )
                    .hint("make the counts add up to the total, or remove total_instances"));
            }
        }
        let bounds = case.instances;
        if sum < bounds.min || sum > bounds.max {
            let at = if src.total.is_some() { &src.total_path } else { &src.path };
            return Err(self
                .err(
                    ErrorKind::Invalid,
                    at,
                    format!(
                        "run `{}` has {sum} instances, outside the range [{}, {}] of test case `{}`",
                        src.id, bounds.min, bounds.max, case.name
                    ),
                )
                .hint(format!(
                    "change the instance counts ({}); the bounds are `testcases[{case_index}].instances` in {}",
                    breakdown(),
                    self.manifest.source.display()
                )));
        }

        let mut groups = Vec::with_capacity(src.groups.len());
        for (rg, count) in src.groups.iter().zip(&counts) {
            let (test_params, profiles) = self.group_params(src, rg, case, case_index)?;
            groups.push(RunGroup {
                id: rg.id.clone(),
                build_group: c.groups[rg.group].id.clone(),
                instances: *count,
                test_params,
                profiles,
            });
        }
        Ok(RunSpec { id: src.id.clone(), total_instances: sum, groups })
    }

    /// One group's instance count: exactly one of `count` ≥ 1 or `percentage` in (0, 1].
    fn count(&self, inst: Instances, ipath: &KeyPath, src: &RunSource<'_>, group: &str) -> Result<u64, ModelError> {
        match (inst.count, inst.percentage) {
            (Some(_), Some(_)) => Err(self
                .err(ErrorKind::Invalid, ipath, format!("group `{group}` sets both `count` and `percentage`"))
                .hint("keep one of them")),
            (None, None) => Err(self
                .err(ErrorKind::Missing, ipath, format!("group `{group}`: `instances` needs `count` or `percentage`"))
                .hint("write `instances = { count = N }` or `instances = { percentage = P }`")),
            (Some(0), None) => Err(self
                .err(ErrorKind::Invalid, &ipath.key("count"), format!("group `{group}` has 0 instances"))
                .hint(self.fix(
                    "a group needs at least 1 instance; remove the group if it should not run",
                    "give --instances 1 or more",
                ))),
            (Some(n), None) if n > MAX_INSTANCES => Err(self
                .err(
                    ErrorKind::Invalid,
                    &ipath.key("count"),
                    format!("group `{group}` has {n} instances, more than tg-nix runs at once ({MAX_INSTANCES})"),
                )
                .hint("is there a typo in the number?")),
            (Some(n), None) => Ok(n),
            (None, Some(p)) => {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(self
                        .err(
                            ErrorKind::Invalid,
                            &ipath.key("percentage"),
                            format!("group `{group}`: percentage {p} is not in (0, 1]"),
                        )
                        .hint("a percentage is a share of total_instances: 0.5 means half"));
                }
                let Some(total) = src.total else {
                    return Err(self
                        .err(
                            ErrorKind::Missing,
                            &src.total_path,
                            format!("group `{group}` gives a percentage, so run `{}` needs total_instances", src.id),
                        )
                        .hint(if src.id == "default" && self.comp.runs.is_empty() {
                            "set `total_instances` in [global]"
                        } else {
                            "set `total_instances` in this [[runs]] entry"
                        }));
                };
                let n = (p * total as f64).round() as u64;
                if n == 0 {
                    return Err(self
                        .err(
                            ErrorKind::Invalid,
                            &ipath.key("percentage"),
                            format!("group `{group}`: {p} of {total} instances rounds to 0 instances"),
                        )
                        .hint("raise the percentage or total_instances, or give a count"));
                }
                Ok(n)
            }
        }
    }

    /// Test params and profiles of one run group, every precedence step applied, each final value
    /// checked for packing against the key it came from.
    fn group_params(
        &mut self,
        src: &RunSource<'_>,
        rg: &RunGroupSource<'_>,
        case: &TestCase,
        case_index: usize,
    ) -> Result<(Params, Params), ModelError> {
        let c = self.comp;
        let grp = &c.groups[rg.group];
        let gpath = root().key("groups").index(rg.group).key("run");
        let global_run = root().key("global").key("run");

        let mut layers: Vec<(&BTreeMap<String, String>, KeyPath)> = Vec::with_capacity(4);
        if let Some((m, p)) = &rg.test_params {
            layers.push((m, p.clone()));
        }
        if let Some((m, p)) = &src.test_params {
            layers.push((m, p.clone()));
        }
        layers.push((&grp.run.test_params, gpath.key("test_params")));
        layers.push((&c.global.run.test_params, global_run.key("test_params")));

        let declared: Vec<&str> = case.params.keys().map(String::as_str).collect();
        let mut params = BTreeMap::new();
        for (layer, lpath) in layers {
            for (k, v) in layer {
                if params.contains_key(k) {
                    continue;
                }
                let at = InFile::Composition(lpath.key(k));
                self.check_value("test param", k, v, &at)?;
                if !case.params.contains_key(k) {
                    let hint = match closest(k, &declared) {
                        Some(close) => Some(format!("did you mean `{close}`?")),
                        None if declared.is_empty() => None,
                        None => Some(format!("declared params: {}", declared.join(", "))),
                    };
                    self.warn_in(
                        &at,
                        format!("test param {} is not declared by test case `{}`; it is passed on anyway, as Testground does", quote_key(k), case.name),
                        hint,
                    );
                }
                params.insert(k.clone(), v.clone());
            }
        }
        let mpath = root().key("testcases").index(case_index).key("params");
        for (name, spec) in &case.params {
            if params.contains_key(name) {
                continue;
            }
            let value = match &spec.default {
                Some(d) => param_default_string(d),
                None => {
                    // TG api/manifest.go `defaultParameters` JSON-encodes a missing default: "null".
                    self.warn_in(
                        &InFile::Manifest(mpath.key(name)),
                        format!("param {} has no default and the composition sets none: instances get the string `null`, as in Testground", quote_key(name)),
                        Some("give it a `default` in the manifest, or a value in test_params".to_string()),
                    );
                    "null".to_string()
                }
            };
            self.check_value("test param", name, &value, &InFile::Manifest(mpath.key(name).key("default")))?;
            params.insert(name.clone(), value);
        }

        let mut profiles = BTreeMap::new();
        let mut layers: Vec<(&BTreeMap<String, String>, KeyPath)> = Vec::with_capacity(3);
        if let Some((m, p)) = &rg.profiles {
            layers.push((m, p.clone()));
        }
        layers.push((&grp.run.profiles, gpath.key("profiles")));
        layers.push((&c.global.run.profiles, global_run.key("profiles")));
        for (layer, lpath) in layers {
            for (k, v) in layer {
                if !profiles.contains_key(k) {
                    self.check_value("profile", k, v, &InFile::Composition(lpath.key(k)))?;
                    profiles.insert(k.clone(), v.clone());
                }
            }
        }
        Ok((params, profiles))
    }

    fn check_value(&mut self, what: &str, key: &str, value: &str, at: &InFile) -> Result<(), ModelError> {
        if let Err(problem) = check_param(key, value) {
            return Err(self
                .err_in(ErrorKind::Invalid, at, format!("{what} {}: {problem}", quote_key(key)))
                .hint(problem.hint()));
        }
        if value.contains('=') {
            self.warn_in(
                at,
                format!("the value of {what} {} contains `=`: the Go and JS SDKs drop such params (the Rust SDK keeps them)", quote_key(key)),
                None,
            );
        }
        Ok(())
    }
}

/// "plan supports: a, b" with where support is declared.
fn supported(what: &str, ids: &[&str], m: &Manifest) -> String {
    let table = if what == "runners" { "runners" } else { "builders" };
    if ids.is_empty() {
        format!("{} declares no {what}: add a [{table}.\"…\"] table", m.source.display())
    } else {
        format!(
            "plan `{}` supports {what}: {} (the [{table}.\"…\"] tables of {})",
            m.name,
            ids.join(", "),
            m.source.display()
        )
    }
}

/// Merges top-level keys, the first table that has a key wins ("we only merge root values").
fn first_wins(layers: &[&Table]) -> Table {
    let mut out = Table::new();
    for layer in layers {
        for (k, v) in layer.iter() {
            if !out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The group's rewrites, then the global ones for modules the group does not rewrite.
fn merge_dependencies(group: &[Dependency], global: &[Dependency]) -> Vec<Dependency> {
    let mut out = group.to_vec();
    for d in global {
        if !out.iter().any(|o| o.module == d.module) {
            out.push(d.clone());
        }
    }
    out
}

#[cfg(test)]
#[path = "prepare_tests.rs"]
mod tests;
