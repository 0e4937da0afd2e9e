//! `tg-nix run`: resolve the composition into a plan, build every unit, run every run, report.

use std::path::{Component, Path, PathBuf};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tg_nix_builders::BUILDERS;
use tg_nix_model::{Composition, Manifest, Prepared, RunSpec, SingleRun};
use tg_nix_runner::netns::{is_root, DEFAULT_DATA_SUBNET};
use tg_nix_runner::{ExecRunSpec, GroupLaunch, Isolation, RunEvent, RunOutcome};

use crate::args::{RunArgs, TargetArgs};
use crate::build::build_all;
use crate::error::{exit, CliError};
use crate::home::Home;
use crate::report::{self, RunReport};

/// Runners this version can run with.
const RUNNERS: &[&str] = &["local:exec", "local:docker"];

/// What to build: a composition (or a single group from flags) checked against its plan.
pub struct Target {
    pub plan_dir: PathBuf,
    pub prepared: Prepared,
    /// The composition file, when there is one (tg-nix.lock lives beside it).
    pub composition: Option<PathBuf>,
}

impl Target {
    pub fn resolve(args: &TargetArgs, home: &Home) -> Result<Target, CliError> {
        let (composition, base_dir) = match (&args.composition, &args.plan) {
            (Some(path), _) => {
                let data = tg_nix_model::TemplateData::from_env(args.set.iter().cloned());
                let composition = Composition::load_with(path, &data)?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (composition, base)
            }
            (None, Some(plan)) => {
                let case = args.case.clone().unwrap_or_default();
                let instances = match args.instances {
                    Some(n) => n,
                    None => {
                        let manifest = Manifest::load(&plan.join("manifest.toml"))?;
                        manifest.case(&case).map(|c| c.instances.min.max(1)).unwrap_or(1)
                    }
                };
                let single = SingleRun {
                    plan: plan.to_string_lossy().into_owned(),
                    case,
                    instances,
                    builder: args.builder.clone(),
                    runner: args.runner.clone(),
                    test_params: args.test_params.clone(),
                    build_config: args.build_cfg.clone(),
                    run_config: args.run_cfg.clone(),
                };
                (Composition::single(&single), std::env::current_dir().unwrap_or_default())
            }
            (None, None) => {
                return Err(CliError::input("nothing to run", "give a composition file, or --plan DIR --case NAME"))
            }
        };
        let (plan_dir, prepared) = prepare(&composition, &base_dir, home)?;
        Ok(Target { plan_dir, prepared, composition: args.composition.clone() })
    }
}

/// A validated `run`: everything is known and checked before any build starts.
pub struct RunPlan {
    pub target: Target,
    pub run_ids: Vec<String>,
    pub isolation: Isolation,
}

impl RunPlan {
    pub fn resolve(args: &RunArgs, home: &Home) -> Result<RunPlan, CliError> {
        let target = Target::resolve(&args.target, home)?;
        let prepared = &target.prepared;
        let source = target.composition.clone().unwrap_or_else(|| PathBuf::from("--plan"));
        if !RUNNERS.contains(&prepared.runner.as_str()) {
            return Err(CliError::input(
                format!("{}: global.runner: `{}` is not available in this version", source.display(), prepared.runner),
                format!("use one of: {}", RUNNERS.join(", ")),
            ));
        }
        let run_ids = select_runs(prepared, &args.run_ids, &source)?;
        let isolation = if !args.host_network && is_root() {
            // Testground's first local:docker data subnet. Every run has its own hub namespace, so
            // concurrent runs can all use it.
            Isolation::Namespaces { data_subnet: DEFAULT_DATA_SUBNET }
        } else {
            let why = if args.host_network { "--host-network was given" } else { "not running as root" };
            eprintln!(
                "warning: {why}: instances share the host network and reach the sync service on 127.0.0.1, \
                 without shaping (TEST_SIDECAR=false). Plans using the Rust SDK (crate testground 0.4.0) cannot \
                 work this way: it dials the fixed host testground-sync-service:5050 and needs TEST_SIDECAR=true. \
                 Run as root, without --host-network, for per-instance namespaces."
            );
            Isolation::HostNetwork
        };
        Ok(RunPlan { target, run_ids, isolation })
    }
}

/// A composition checked against its plan's manifest: the plan directory and the prepared
/// composition (warnings printed, every group's builder known).
pub fn prepare(composition: &Composition, base_dir: &Path, home: &Home) -> Result<(PathBuf, Prepared), CliError> {
    let plan_dir = resolve_plan_dir(&composition.global.plan, base_dir, home, composition.source.as_path())?;
    let manifest = Manifest::load(&plan_dir.join("manifest.toml"))?;
    let prepared = composition.prepare(&manifest)?;
    for warning in &prepared.warnings {
        eprintln!("warning: {warning}");
    }
    check_path_component(&prepared.plan, &plan_dir.join("manifest.toml"), "name")?;
    for unit in &prepared.builds {
        if !BUILDERS.contains(&unit.builder.as_str()) {
            return Err(CliError::input(
                format!(
                    "{}: group `{}`: builder `{}` is not available in this version",
                    composition.source.display(),
                    unit.group_id,
                    unit.builder
                ),
                format!("use one of: {}", BUILDERS.join(", ")),
            ));
        }
    }
    Ok((plan_dir, prepared))
}

/// `global.plan` relative to the composition's directory, then under `<home>/plans/`.
fn resolve_plan_dir(plan: &str, base_dir: &Path, home: &Home, source: &Path) -> Result<PathBuf, CliError> {
    if plan.is_empty() {
        return Err(CliError::input(
            format!("{}: global.plan is empty", source.display()),
            "set global.plan to the plan directory, relative to the composition file",
        ));
    }
    let candidates = [base_dir.join(plan), home.plans_dir().join(plan)];
    for candidate in &candidates {
        if candidate.join("manifest.toml").is_file() {
            return candidate.canonicalize().map_err(|e| CliError::infra(format!("{}: {e}", candidate.display())));
        }
    }
    Err(CliError::input(
        format!(
            "{}: global.plan = \"{plan}\": no manifest.toml in {} nor in {}",
            source.display(),
            candidates[0].display(),
            candidates[1].display()
        ),
        "set global.plan to the plan directory relative to the composition file, or put the plan under <home>/plans/",
    ))
}

/// Names that become directories must be one plain path component.
fn check_path_component(value: &str, file: &Path, key: &str) -> Result<(), CliError> {
    let mut parts = Path::new(value).components();
    let ok = matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) && !value.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(CliError::input(
            format!("{}: {key} = {value:?} cannot be used as a directory name", file.display()),
            format!("make `{key}` a plain name without `/`, `..` or control characters"),
        ))
    }
}

fn select_runs(prepared: &Prepared, wanted: &[String], source: &Path) -> Result<Vec<String>, CliError> {
    let all: Vec<String> = prepared.runs.iter().map(|r| r.id.clone()).collect();
    if wanted.is_empty() {
        return Ok(all);
    }
    for id in wanted {
        if !all.contains(id) {
            return Err(CliError::input(
                format!("{}: --run-ids: no run `{id}`", source.display()),
                format!("the composition's runs are: {}", all.join(", ")),
            ));
        }
    }
    Ok(wanted.to_vec())
}

/// Runs `tg-nix run`; returns the process exit code.
pub async fn run(args: RunArgs, home: Home, cancel: CancellationToken) -> Result<i32, CliError> {
    let plan = RunPlan::resolve(&args, &home)?;
    if let Some(dir) = &args.report_dir {
        report::prepare_report_dir(dir)?;
    }
    let (locked, jobs) = (args.target.locked, args.target.jobs);
    let built = {
        // Builds block (cargo, nix-build); keep them off the async workers.
        let home = home.clone();
        tokio::task::spawn_blocking(move || build_all(&plan.target, &home, locked, jobs).map(|b| (plan, b)))
            .await
            .map_err(|e| CliError::infra(format!("build task failed: {e}")))?
    };
    let (plan, built) = built?;
    let programs = built.programs;
    if plan.target.prepared.runner == "local:docker" {
        return crate::run_docker::run(&args, &plan, &programs, &home, cancel).await;
    }

    let mut reports = Vec::new();
    for run_id in &plan.run_ids {
        if cancel.is_cancelled() {
            break;
        }
        let Some(run) = plan.target.prepared.runs.iter().find(|r| &r.id == run_id) else { continue };
        let (outcome, outputs_dir) = exec_run(
            &plan.target.prepared,
            run,
            &|group| programs[group].clone(),
            &home,
            args.timeout,
            &plan.isolation,
            &cancel,
        )
        .await?;
        reports.push(record_run(&plan, run_id, &outcome, &outputs_dir, &home, &cancel, args.json));
    }
    Ok(finish(&reports, &args, &cancel))
}

/// Runs one `[[runs]]` entry of `prepared` with local:exec (`program_of` gives each build group's
/// program), printing progress lines; returns the outcome and the run's outputs dir.
pub(crate) async fn exec_run(
    prepared: &Prepared,
    run: &RunSpec,
    program_of: &(dyn Fn(&str) -> PathBuf + Sync),
    home: &Home,
    timeout: std::time::Duration,
    isolation: &Isolation,
    cancel: &CancellationToken,
) -> Result<(RunOutcome, PathBuf), CliError> {
    let id = new_run_id();
    let groups = run
        .groups
        .iter()
        .map(|g| GroupLaunch {
            id: g.id.clone(),
            program: program_of(&g.build_group),
            instances: g.instances,
            params: g.test_params.clone(),
            profiles: g.profiles.clone(),
        })
        .collect();
    let outputs_dir = home.outputs_dir("local_exec", &prepared.plan).join(&id);
    let spec = ExecRunSpec {
        run_id: id.clone(),
        plan: prepared.plan.clone(),
        case: prepared.case.clone(),
        groups,
        outputs_dir: outputs_dir.clone(),
        work_dir: home.work_dir().join("runs").join(&id),
        timeout,
        isolation: isolation.clone(),
        disable_metrics: prepared.disable_metrics,
        log_level: prepared.run_config.get("log_level").and_then(|v| v.as_str()).map(String::from),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_progress(rx));
    let outcome = tg_nix_runner::local_exec::run(spec, tx, cancel.clone()).await?;
    let _ = printer.await;
    Ok((outcome, outputs_dir))
}

/// A finished run's report: written as result.json into its outputs, recorded in the history
/// (`tg-nix runs`), printed unless `json`.
pub(crate) fn record_run(
    plan: &RunPlan,
    run_id: &str,
    outcome: &RunOutcome,
    outputs_dir: &Path,
    home: &Home,
    cancel: &CancellationToken,
    json: bool,
) -> RunReport {
    let report = RunReport::new(plan, run_id, outcome, outputs_dir, cancel.is_cancelled());
    report::write_result_file(&report, outputs_dir);
    crate::history::record(&report, plan.target.composition.as_deref(), home);
    if !json {
        print!("{}", report::render_terminal(&report));
    }
    report
}

/// The exit code of a `run`, after printing every report as JSON with `--json` and writing the
/// report files with `--report-dir` (a report that cannot be written makes the run an INFRA error,
/// since a CI job would otherwise publish nothing and still see its tests' verdict).
pub(crate) fn finish(reports: &[RunReport], args: &RunArgs, cancel: &CancellationToken) -> i32 {
    if args.json {
        println!("{}", report::render_json(reports));
    }
    if let Some(dir) = &args.report_dir {
        match report::write_report_dir(dir, reports) {
            Ok(_) => eprintln!("report {}: {}", dir.display(), report::REPORT_FILES.join(", ")),
            Err(e) => {
                eprintln!("{}", e.render());
                return exit::INFRA;
            }
        }
    }
    if cancel.is_cancelled() {
        exit::INTERRUPTED
    } else if reports.iter().all(|r| r.passed()) {
        exit::OK
    } else {
        exit::TESTS_FAILED
    }
}

/// Plain progress lines on stderr: the run starting, and each instance that does not pass as soon
/// as it ends (a passing instance is only counted in the report).
pub(crate) async fn print_progress(mut rx: mpsc::UnboundedReceiver<RunEvent>) {
    while let Some(event) = rx.recv().await {
        match event {
            RunEvent::RunStarted { run_id, instances } => eprintln!("run    {run_id}: starting {instances} instances"),
            RunEvent::InstanceFinished { result } if !result.verdict.is_pass() => eprintln!(
                "fail   {}[{}] {}: {}",
                result.group,
                result.group_index,
                result.verdict.label(),
                result.verdict.reason()
            ),
            _ => {}
        }
    }
}

/// A run id in the shape of Testground's (xid: 20 characters of base32hex): 4 bytes of time then
/// 8 random bytes, so ids sort by start time.
pub fn new_run_id() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as u32;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    let mut random = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random)).is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        random = ((nanos as u64) ^ u64::from(std::process::id())).to_be_bytes();
    }
    bytes[4..].copy_from_slice(&random);
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = String::with_capacity(20);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_look_like_testground_ids() {
        let a = new_run_id();
        let b = new_run_id();
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c)), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn path_components() {
        let f = Path::new("m.toml");
        assert!(check_path_component("ping-rust", f, "name").is_ok());
        for bad in ["", "..", "a/b", "/abs", ".", "x\0y"] {
            assert!(check_path_component(bad, f, "name").is_err(), "{bad:?}");
        }
    }
}
