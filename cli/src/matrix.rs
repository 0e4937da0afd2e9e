//! `tg-nix matrix`: a composition template run once per cell of a cartesian product of
//! dimensions. Every cell is rendered and checked first (a bad cell runs nothing); the build units
//! of all cells are built together, once per distinct unit; cells whose inputs are unchanged are
//! reported from the result cache in the state DB; the others run in parallel (`--workers`).
//!
//! A cell's cache key is the SHA-256 of everything that decides its result: the tg-nix version, the
//! rendered composition, the plan directory, every group's program (a nix:* unit's output path; an
//! exec:* program's path, size and modification time), the runner and its run_config, the timeout
//! and the isolation. The value is the cell's run reports as JSON, and when they were made.
//!
//! Flakiness: with `--retries N` a failed cell runs again up to N times; one that passes on a retry
//! is `flaky` (cached as such, with every attempt's summary). A known-failures file
//! (`--known-failures`, [`known`]) turns a failing cell matching an unexpired entry into a
//! `known-failure` and flags a passing one as `fixed?`; it is applied when reporting, so editing it
//! needs no re-run.

mod known;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use tg_nix_builders::nix::state::State;
use tg_nix_model::{render_composition, Composition, Prepared, TemplateData};
use tg_nix_runner::netns::{is_root, DEFAULT_DATA_SUBNET};
use tg_nix_runner::{InstanceResult, Isolation, SyncTally};

use crate::args::MatrixArgs;
use crate::build::build_all;
use crate::error::{exit, CliError};
use crate::home::Home;
use crate::report::{self, CellMark, GroupSummary, RunReport};
use crate::run::{exec_run, prepare, RunPlan, Target};

/// The prefix of a cell's record in the state DB.
const CACHE_PREFIX: &str = "matrix-cell/";

/// A cell's dimension values, by dimension name.
type Values = BTreeMap<String, String>;
/// Group id → its program, and what identifies the program's content (for the cache key).
type Programs = BTreeMap<String, (PathBuf, String)>;

/// A matrix file as written (docs/formats.md, "Matrix files").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    /// The composition template, relative to the matrix file.
    template: PathBuf,
    /// Dimension name → its values; the cells are every combination, in name order.
    dimensions: BTreeMap<String, Vec<toml::Value>>,
    /// A cell matching every key of an entry is left out.
    #[serde(default)]
    exclude: Vec<BTreeMap<String, toml::Value>>,
}

/// One cell: its dimension values, its rendered composition, checked against its plan.
struct Cell {
    values: Values,
    name: String,
    text: String,
    plan_dir: PathBuf,
    prepared: Prepared,
}

/// What a cell's cache record holds.
#[derive(Serialize, Deserialize)]
struct CachedCell {
    cell: String,
    at: String,
    /// `success`, `failure`, or `flaky` (failed, then passed on a retry).
    outcome: String,
    /// The reports of the last attempt.
    runs: Vec<serde_json::Value>,
    /// Every attempt, in order (absent in records made before retries existed).
    #[serde(default)]
    attempts: Vec<Attempt>,
}

/// One attempt at a cell: its outcome and a line per run.
#[derive(Clone, Serialize, Deserialize)]
struct Attempt {
    outcome: String,
    summary: String,
    run_ids: Vec<String>,
}

impl Attempt {
    fn of(reports: &[RunReport]) -> Attempt {
        let passed = !reports.is_empty() && reports.iter().all(RunReport::passed);
        Attempt {
            outcome: if passed { "success" } else { "failure" }.to_string(),
            summary: reports.iter().map(report::summary_line).collect::<Vec<_>>().join("; "),
            run_ids: reports.iter().map(|r| r.run_id.clone()).collect(),
        }
    }
}

/// A cell's result, as reported.
struct CellResult {
    state: &'static str,
    /// The last attempt's reports.
    reports: Vec<RunReport>,
    attempts: Vec<Attempt>,
    seconds: f64,
}

impl CellResult {
    fn passed(&self) -> bool {
        !self.reports.is_empty() && self.reports.iter().all(RunReport::passed)
    }

    /// Passed on a retry after failing.
    fn flaky(&self) -> bool {
        self.passed() && self.attempts.iter().any(|a| a.outcome != "success")
    }

    fn outcome(&self) -> &'static str {
        if self.flaky() {
            "flaky"
        } else if self.passed() {
            "success"
        } else {
            "failure"
        }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the matrix file: the template's path and text, and the cells' values after `exclude`.
fn load(path: &Path) -> Result<(PathBuf, String, Vec<Values>), CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::input(format!("{}: cannot read the matrix file: {e}", path.display()), "check the path")
    })?;
    let file: MatrixFile = toml::from_str(&text).map_err(|e| {
        CliError::input(
            format!("{}: not a valid matrix file: {}", path.display(), e.message()),
            "a matrix file has `template = \"FILE\"`, a [dimensions] table of lists, and optional [[exclude]] tables (docs/formats.md)",
        )
    })?;
    let mut dims: Vec<(String, Vec<String>)> = Vec::new();
    for (name, values) in &file.dimensions {
        let strings = values.iter().map(scalar).collect::<Option<Vec<_>>>().ok_or_else(|| {
            CliError::input(
                format!("{}: dimensions.{name}: a value is not a string, number or boolean", path.display()),
                "list plain values: `name = [\"a\", \"b\"]`",
            )
        })?;
        dims.push((name.clone(), strings));
    }
    for (i, entry) in file.exclude.iter().enumerate() {
        for (key, value) in entry {
            if !file.dimensions.contains_key(key) {
                return Err(CliError::input(
                    format!("{}: exclude[{i}].{key}: no such dimension", path.display()),
                    format!("the dimensions are: {}", file.dimensions.keys().cloned().collect::<Vec<_>>().join(", ")),
                ));
            }
            if scalar(value).is_none() {
                return Err(CliError::input(
                    format!("{}: exclude[{i}].{key}: not a string, number or boolean", path.display()),
                    "give the dimension value the cell must have to be left out",
                ));
            }
        }
    }
    let mut cells: Vec<Values> = vec![BTreeMap::new()];
    for (name, values) in &dims {
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                values.iter().map(move |v| {
                    let mut c = cell.clone();
                    c.insert(name.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    if dims.is_empty() {
        cells.clear();
    }
    cells.retain(|cell| !file.exclude.iter().any(|entry| entry.iter().all(|(k, v)| scalar(v).as_ref() == cell.get(k))));
    if cells.is_empty() {
        return Err(CliError::input(
            format!("{}: the matrix has no cells (an empty dimension, or [[exclude]] leaves none)", path.display()),
            "give every dimension at least one value, and exclude fewer cells",
        ));
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let template = dir.join(&file.template);
    let template_text = std::fs::read_to_string(&template).map_err(|e| {
        CliError::input(
            format!("{}: template = {:?}: cannot read {}: {e}", path.display(), file.template, template.display()),
            "give the composition template's path relative to the matrix file",
        )
    })?;
    Ok((template, template_text, cells))
}

fn cell_name(values: &Values) -> String {
    values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// `i/n` (1 ≤ i ≤ n): the cells whose 0-based position p has p % n == i - 1.
fn parse_shard(s: &str) -> Result<(usize, usize), CliError> {
    let parsed = s.split_once('/').and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n >= 1 && (1..=n).contains(&i) => Ok((i, n)),
        _ => Err(CliError::input(format!("--shard {s}: not i/n with 1 ≤ i ≤ n"), "e.g. --shard 1/3, 2/3 and 3/3")),
    }
}

/// Renders and checks every cell; nothing is built when one of them is wrong.
fn render_cells(
    matrix: &Path,
    template: &Path,
    template_text: &str,
    values: Vec<Values>,
    home: &Home,
) -> Result<Vec<Cell>, CliError> {
    let base = template.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cells = Vec::new();
    for values in values {
        let name = cell_name(&values);
        let data = TemplateData::from_env(values.clone());
        let in_cell = |e: CliError| CliError { headline: format!("cell {name}: {}", e.headline), ..e };
        let text = render_composition(template_text, template, &data)
            .map_err(|e| in_cell(e.into()))?
            .unwrap_or_else(|| template_text.to_string());
        let composition = Composition::from_str(&text, template).map_err(|e| in_cell(e.into()))?;
        let (plan_dir, prepared) = prepare(&composition, &base, home).map_err(in_cell)?;
        if prepared.runner != "local:exec" {
            return Err(CliError::input(
                format!(
                    "{}: cell {name}: runner `{}`: a matrix runs local:exec cells only",
                    matrix.display(),
                    prepared.runner
                ),
                "set global.runner = \"local:exec\" in the template",
            ));
        }
        cells.push(Cell { values, name, text, plan_dir, prepared });
    }
    Ok(cells)
}

/// What identifies a program's content: a store path is its own; another file adds size and mtime.
fn program_identity(program: &Path, out: Option<&str>) -> String {
    if let Some(out) = out {
        return out.to_string();
    }
    let meta = std::fs::metadata(program).ok();
    let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{} {len} {mtime}", program.display())
}

fn cache_key(cell: &Cell, programs: &Programs, args: &MatrixArgs, isolation: &Isolation) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(concat!("tg-nix ", env!("CARGO_PKG_VERSION")));
    field(&cell.text);
    field(&cell.plan_dir.to_string_lossy());
    for (group, (_, identity)) in programs {
        field(group);
        field(identity);
    }
    field(&cell.prepared.runner);
    field(&toml::to_string(&cell.prepared.run_config).unwrap_or_default());
    field(&format!("{:?} {:?}", args.timeout, isolation));
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The mirror of a stored RunReport (the report types only serialise).
#[derive(Deserialize)]
struct StoredReport {
    run_id: String,
    composition_run: String,
    plan: String,
    case: String,
    runner: String,
    outcome: String,
    instances: Vec<StoredInstance>,
    #[serde(default)]
    sync_outcomes: BTreeMap<String, StoredTally>,
    duration_secs: f64,
    started_at: String,
    outputs_dir: PathBuf,
}

#[derive(Deserialize)]
struct StoredInstance {
    group: String,
    group_index: u64,
    global_index: u64,
    hostname: String,
    data_ip: Option<std::net::Ipv4Addr>,
    verdict: tg_nix_runner::Verdict,
    outputs_dir: PathBuf,
    stderr_tail: Vec<String>,
    duration: f64,
}

#[derive(Deserialize)]
struct StoredTally {
    success: u64,
    failure: u64,
    crash: u64,
}

fn from_stored(value: &serde_json::Value) -> Option<RunReport> {
    let s: StoredReport = serde_json::from_value(value.clone()).ok()?;
    let instances: Vec<InstanceResult> = s
        .instances
        .into_iter()
        .map(|i| InstanceResult {
            group: i.group,
            group_index: i.group_index,
            global_index: i.global_index,
            hostname: i.hostname,
            data_ip: i.data_ip,
            verdict: i.verdict,
            outputs_dir: i.outputs_dir,
            stderr_tail: i.stderr_tail,
            duration: std::time::Duration::from_secs_f64(i.duration.max(0.0)),
        })
        .collect();
    let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
    for i in &instances {
        let g = groups.entry(i.group.clone()).or_insert(GroupSummary { ok: 0, total: 0 });
        g.total += 1;
        g.ok += u64::from(i.verdict.is_pass());
    }
    Some(RunReport {
        run_id: s.run_id,
        composition_run: s.composition_run,
        plan: s.plan,
        case: s.case,
        runner: s.runner,
        outcome: s.outcome,
        groups,
        instances,
        sync_outcomes: s
            .sync_outcomes
            .into_iter()
            .map(|(k, t)| (k, SyncTally { success: t.success, failure: t.failure, crash: t.crash }))
            .collect(),
        duration_secs: s.duration_secs,
        started_at: s.started_at,
        outputs_dir: s.outputs_dir,
        cell: None,
    })
}

/// Runs one cell's runs, one after the other.
async fn run_cell(
    cell: &Cell,
    programs: &Programs,
    args: &MatrixArgs,
    isolation: &Isolation,
    home: &Home,
    cancel: &CancellationToken,
) -> Result<Vec<RunReport>, CliError> {
    let plan = RunPlan {
        target: Target { plan_dir: cell.plan_dir.clone(), prepared: cell.prepared.clone(), composition: None },
        run_ids: cell.prepared.runs.iter().map(|r| r.id.clone()).collect(),
        isolation: isolation.clone(),
    };
    let single = cell.prepared.runs.len() == 1;
    let mut reports = Vec::new();
    for run in &cell.prepared.runs {
        if cancel.is_cancelled() {
            break;
        }
        let program_of = |group: &str| programs.get(group).map(|p| p.0.clone()).unwrap_or_default();
        let (outcome, outputs_dir) =
            exec_run(&cell.prepared, run, &program_of, home, args.timeout, isolation, cancel).await?;
        let name = if single { cell.name.clone() } else { format!("{} · {}", cell.name, run.id) };
        let report = RunReport::new(&plan, &name, &outcome, &outputs_dir, cancel.is_cancelled());
        report::write_result_file(&report, &outputs_dir);
        crate::history::record(&report, Some(&args.matrix), home);
        reports.push(report);
    }
    Ok(reports)
}

/// `tg-nix matrix`.
pub async fn run(args: MatrixArgs, home: Home, cancel: CancellationToken) -> Result<i32, CliError> {
    let started = Instant::now();
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let (template, template_text, all_values) = load(&args.matrix)?;
    let known = match &args.known_failures {
        Some(path) => {
            let dimensions: Vec<String> = all_values.first().map(|v| v.keys().cloned().collect()).unwrap_or_default();
            Some(known::load(path, &dimensions)?)
        }
        None => None,
    };
    let total = all_values.len();
    let values: Vec<_> = match shard {
        Some((i, n)) => all_values.into_iter().enumerate().filter(|(p, _)| p % n == i - 1).map(|(_, v)| v).collect(),
        None => all_values,
    };
    let cells = render_cells(&args.matrix, &template, &template_text, values, &home)?;
    if let Some(dir) = &args.report_dir {
        report::prepare_report_dir(dir)?;
    }
    let isolation = if is_root() {
        Isolation::Namespaces { data_subnet: DEFAULT_DATA_SUBNET }
    } else {
        eprintln!("warning: not running as root: cells share the host network (no namespaces, no shaping)");
        Isolation::HostNetwork
    };

    // Build: every cell's groups renamed `<cell>.<group>`, one build per plan directory, so that a
    // unit shared by cells is built once.
    let programs = {
        let mut by_plan: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (i, c) in cells.iter().enumerate() {
            by_plan.entry(c.plan_dir.clone()).or_default().push(i);
        }
        let targets: Vec<Target> = by_plan
            .into_values()
            .map(|idx| {
                let mut prepared = cells[idx[0]].prepared.clone();
                prepared.builds = idx
                    .iter()
                    .flat_map(|&i| {
                        cells[i].prepared.builds.iter().map(move |b| {
                            let mut b = b.clone();
                            b.group_id = format!("{i}.{}", b.group_id);
                            b
                        })
                    })
                    .collect();
                Target { plan_dir: cells[idx[0]].plan_dir.clone(), prepared, composition: Some(args.matrix.clone()) }
            })
            .collect();
        let (home, jobs) = (home.clone(), args.jobs);
        tokio::task::spawn_blocking(move || -> Result<Programs, CliError> {
            let mut programs = BTreeMap::new();
            for target in &targets {
                for u in build_all(target, &home, false, jobs)?.units {
                    let identity = program_identity(&u.program, u.out.as_deref());
                    for g in u.groups {
                        programs.insert(g, (u.program.clone(), identity.clone()));
                    }
                }
            }
            Ok(programs)
        })
        .await
        .map_err(|e| CliError::infra(format!("build task failed: {e}")))??
    };
    let cell_programs: Vec<Programs> = (0..cells.len())
        .map(|i| {
            let prefix = format!("{i}.");
            programs.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|g| (g.to_string(), v.clone()))).collect()
        })
        .collect();
    let keys: Vec<String> = cells.iter().zip(&cell_programs).map(|(c, p)| cache_key(c, p, &args, &isolation)).collect();

    // The cache: one short open for every lookup.
    let state_dir = home.state_dir();
    let mut results: Vec<Option<CellResult>> = (0..cells.len()).map(|_| None).collect();
    if !args.rerun {
        let state = State::open(&state_dir).map_err(CliError::from)?;
        for (i, key) in keys.iter().enumerate() {
            let Some(cached) = state.get::<CachedCell>(&format!("{CACHE_PREFIX}{key}")) else { continue };
            if args.rerun_failed && cached.outcome != "success" {
                continue;
            }
            let Some(reports) = cached.runs.iter().map(from_stored).collect::<Option<Vec<_>>>() else { continue };
            if reports.is_empty() {
                continue;
            }
            let seconds = reports.iter().map(|r| r.duration_secs).sum();
            let attempts = if cached.attempts.is_empty() { vec![Attempt::of(&reports)] } else { cached.attempts };
            results[i] = Some(CellResult { state: "cached", reports, attempts, seconds });
        }
    }
    let todo: Vec<usize> = (0..cells.len()).filter(|&i| results[i].is_none()).collect();
    eprintln!(
        "matrix {}: {} of {total} cells{}, {} cached, {} to run ({} workers)",
        args.matrix.display(),
        cells.len(),
        shard.map(|(i, n)| format!(" (shard {i}/{n})")).unwrap_or_default(),
        cells.len() - todo.len(),
        todo.len(),
        args.workers.max(1)
    );

    // Run the rest, up to --workers cells at a time; each result is cached as soon as it is known.
    let cells = Arc::new(cells);
    let cell_programs = Arc::new(cell_programs);
    let args = Arc::new(args);
    let db_lock = Arc::new(std::sync::Mutex::new(()));
    let workers = Arc::new(tokio::sync::Semaphore::new(args.workers.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for &i in &todo {
        let (cells, cell_programs, args, home, cancel, isolation, workers, db_lock, state_dir, key) = (
            cells.clone(),
            cell_programs.clone(),
            args.clone(),
            home.clone(),
            cancel.clone(),
            isolation.clone(),
            workers.clone(),
            db_lock.clone(),
            state_dir.clone(),
            keys[i].clone(),
        );
        tasks.spawn(async move {
            let _permit = workers.acquire_owned().await;
            if cancel.is_cancelled() {
                return (i, Ok(None));
            }
            let cell = &cells[i];
            eprintln!("cell   {}: running", cell.name);
            let t = Instant::now();
            // The first attempt, then up to --retries more while the cell fails.
            let mut attempts = Vec::new();
            let reports = loop {
                let reports = match run_cell(cell, &cell_programs[i], &args, &isolation, &home, &cancel).await {
                    Ok(r) => r,
                    Err(e) => return (i, Err(e)),
                };
                let attempt = Attempt::of(&reports);
                let done = attempt.outcome == "success"
                    || cancel.is_cancelled()
                    || attempts.len() >= args.retries as usize
                    || reports.len() != cell.prepared.runs.len();
                attempts.push(attempt);
                if done {
                    break reports;
                }
                eprintln!("cell   {}: FAIL on attempt {}, retrying", cell.name, attempts.len());
            };
            let seconds = t.elapsed().as_secs_f64();
            let result = CellResult { state: "ran", reports, attempts, seconds };
            let complete = !cancel.is_cancelled() && result.reports.len() == cell.prepared.runs.len();
            let word = match result.outcome() {
                "flaky" => "FLAKY (passed on a retry)",
                "success" => "PASS",
                _ => "FAIL",
            };
            eprintln!("cell   {}: {word} in {seconds:.2}s", cell.name);
            if complete {
                let record = CachedCell {
                    cell: cell.name.clone(),
                    at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    outcome: result.outcome().to_string(),
                    runs: result.reports.iter().filter_map(|r| serde_json::to_value(r).ok()).collect(),
                    attempts: result.attempts.clone(),
                };
                let stored = tokio::task::spawn_blocking(move || {
                    let _guard = db_lock.lock().unwrap_or_else(|e| e.into_inner());
                    State::open(&state_dir)?.put(&format!("{CACHE_PREFIX}{key}"), &record)
                })
                .await;
                match stored {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("cannot cache cell result: {e}"),
                    Err(e) => tracing::warn!("cannot cache cell result: {e}"),
                }
            }
            (i, Ok(Some(result)))
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(result))) => results[i] = result,
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(CliError::infra(format!("a cell's task failed: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    // Report: each cell's verdict, from its outcome and the known-failures file.
    let today = known::today();
    let mut rows = Vec::new();
    let mut all_reports = Vec::new();
    let mut verdicts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, cell) in cells.iter().enumerate() {
        let Some(result) = &results[i] else { continue };
        let entry = known.as_ref().and_then(|k| k.find(&cell.values, &today));
        let live = entry.filter(|e| !e.expired(&today));
        let verdict: &'static str = match (result.outcome(), live) {
            ("flaky", _) => "flaky",
            ("success", Some(_)) => "fixed?",
            ("success", None) => "pass",
            (_, Some(_)) => "known-failure",
            (_, None) => "fail",
        };
        *verdicts.entry(verdict).or_default() += 1;
        let kf_path = args.known_failures.as_deref().unwrap_or(Path::new(""));
        let mut notes = Vec::new();
        if result.attempts.len() > 1 {
            let tried: Vec<String> = result
                .attempts
                .iter()
                .enumerate()
                .map(|(n, a)| format!("attempt {}: {} ({})", n + 1, a.summary, a.run_ids.join(", ")))
                .collect();
            notes.push(tried.join("; "));
        }
        if let Some(e) = entry {
            let place = e.place(kf_path);
            notes.push(match verdict {
                "known-failure" => format!("{} (until {}, {place})", e.reason, e.until),
                "fixed?" => {
                    format!("passed, but {place} lists it as a known failure ({}): remove the entry?", e.reason)
                }
                _ if e.expired(&today) => format!("{place}: the known failure ({}) expired on {}", e.reason, e.until),
                _ => format!("{place} lists it as a known failure ({})", e.reason),
            });
        }
        let note = notes.join(" — ");
        for r in &result.reports {
            let mut r = r.clone();
            r.composition_run = if result.state == "cached" {
                format!("{} [cached]", r.composition_run)
            } else {
                r.composition_run.clone()
            };
            r.cell =
                Some(CellMark { verdict: verdict.to_string(), state: result.state.to_string(), note: note.clone() });
            all_reports.push(r);
        }
        let known_failure = entry.map(|e| {
            serde_json::json!({
                "file": kf_path,
                "entry": e.index,
                "line": e.line,
                "reason": e.reason,
                "until": e.until,
                "expired": e.expired(&today),
            })
        });
        rows.push(serde_json::json!({
            "cell": cell.name,
            "values": cell.values,
            "state": result.state,
            "outcome": result.outcome(),
            "verdict": verdict,
            "note": note,
            "attempts": result.attempts,
            "known_failure": known_failure,
            "duration_secs": (result.seconds * 1000.0).round() / 1000.0,
            "key": keys[i],
            "run_ids": result.reports.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        }));
    }
    let expired: Vec<serde_json::Value> = known
        .iter()
        .flat_map(|k| &k.entries)
        .filter(|e| e.expired(&today))
        .map(|e| {
            eprintln!(
                "warning: {}: known-failure[{}] expired on {} and no longer applies ({})",
                e.place(&known.as_ref().map(|k| k.path.clone()).unwrap_or_default()),
                e.index,
                e.until,
                e.reason
            );
            serde_json::json!({ "entry": e.index, "line": e.line, "until": e.until, "reason": e.reason })
        })
        .collect();
    let count = |v: &str| verdicts.get(v).copied().unwrap_or(0);
    let passed = results.iter().flatten().filter(|r| r.passed()).count();
    let cached = results.iter().flatten().filter(|r| r.state == "cached").count();
    let reported = results.iter().flatten().count();
    let failed = count("fail") + if args.fail_on_flaky { count("flaky") } else { 0 };
    let ok = failed == 0 && reported == cells.len();
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let doc = serde_json::json!({
            "matrix": args.matrix,
            "cells": rows,
            "runs": all_reports,
            "total_cells": total,
            "verdicts": verdicts,
            "known_failures": args.known_failures.as_ref().map(|f| serde_json::json!({ "file": f, "expired": expired })),
            "seconds": (elapsed * 1000.0).round() / 1000.0,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let width = cells.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        println!("\n{:<width$}  {:<13} {:<6} {:>9}", "cell", "verdict", "state", "duration");
        for row in &rows {
            println!(
                "{:<width$}  {:<13} {:<6} {:>8.2}s",
                row["cell"].as_str().unwrap_or(""),
                row["verdict"].as_str().unwrap_or("").to_uppercase(),
                row["state"].as_str().unwrap_or(""),
                row["duration_secs"].as_f64().unwrap_or(0.0)
            );
            if let Some(note) = row["note"].as_str().filter(|n| !n.is_empty()) {
                println!("{:<width$}    {note}", "");
            }
        }
        let extra: String = [("flaky", "flaky"), ("known-failure", "known failure"), ("fixed?", "fixed?")]
            .iter()
            .filter(|(v, _)| count(v) > 0)
            .map(|(v, word)| format!(", {} {word}", count(v)))
            .collect();
        println!(
            "{} {passed}/{reported} cells passed ({cached} cached, {} ran{extra}) in {elapsed:.2}s",
            if ok { "PASS" } else { "FAIL" },
            reported - cached
        );
    }
    if let Some(dir) = &args.report_dir {
        match report::write_report_dir(dir, &all_reports) {
            Ok(_) => eprintln!("report {}: {}", dir.display(), report::REPORT_FILES.join(", ")),
            Err(e) => {
                eprintln!("{}", e.render());
                return Ok(exit::INFRA);
            }
        }
    }
    Ok(if cancel.is_cancelled() {
        exit::INTERRUPTED
    } else if ok {
        exit::OK
    } else {
        exit::TESTS_FAILED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn cells_are_the_product_minus_excludes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t.hbs", "x");
        let m = write(
            dir.path(),
            "m.toml",
            "template = \"t.hbs\"\n[dimensions]\nb = [1, 2]\na = [\"x\", \"y\", \"z\"]\n[[exclude]]\na = \"y\"\nb = 2\n[[exclude]]\na = \"z\"\n",
        );
        let (_, _, cells) = load(&m).unwrap();
        let names: Vec<String> = cells.iter().map(cell_name).collect();
        assert_eq!(names, ["a=x b=1", "a=x b=2", "a=y b=1"]);
    }

    #[test]
    fn bad_matrix_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t.hbs", "x");
        for (text, needle) in [
            ("template = \"t.hbs\"\nfoo = 1\n[dimensions]\na = [1]\n", "foo"),
            ("template = \"t.hbs\"\n[dimensions]\na = [1]\n[[exclude]]\na = 1\n", "no cells"),
            ("template = \"t.hbs\"\n[dimensions]\na = []\n", "no cells"),
            ("template = \"t.hbs\"\n[dimensions]\na = [1]\n[[exclude]]\nc = 1\n", "no such dimension"),
            ("template = \"nope.hbs\"\n[dimensions]\na = [1]\n", "cannot read"),
            ("template = \"t.hbs\"\n[dimensions]\na = [[1]]\n", "not a string"),
        ] {
            let m = write(dir.path(), "m.toml", text);
            let err = load(&m).err().unwrap_or_else(|| panic!("{text} loaded"));
            assert_eq!(err.code, exit::BAD_INPUT);
            assert!(err.headline.contains(needle), "{text}: {}", err.headline);
        }
    }

    #[test]
    fn shards() {
        assert_eq!(parse_shard("2/3").unwrap(), (2, 3));
        for bad in ["0/3", "4/3", "1/0", "x", "1/"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
