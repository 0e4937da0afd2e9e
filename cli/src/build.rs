//! Building a composition's units (for `tg-nix build` and `tg-nix run`): once per distinct unit;
//! units that are already built are found with one store query and cost nothing; the others
//! build in parallel (`--jobs`). The pins of nix:* units go to tg-nix.lock beside the composition,
//! or, with `--locked`, are read from it and must be met.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use tg_nix_builders::{Artifact, BuildError, BuildRequest};
use tg_nix_model::BuildUnit;

use crate::args::BuildArgs;
use crate::error::{exit, CliError};
use crate::home::Home;
use crate::lock::{self, Lock, LockedUnit};
use crate::progress::BuildDisplay;
use crate::run::Target;

/// A build unit and every group that uses it (groups with equal dedup keys share one build).
pub struct DistinctUnit<'a> {
    pub unit: &'a BuildUnit,
    pub groups: Vec<String>,
}

impl DistinctUnit<'_> {
    pub fn label(&self) -> String {
        self.groups.join(",")
    }
}

/// `units` grouped by dedup key, in the order of their first group.
pub fn distinct_units<'a>(units: impl IntoIterator<Item = &'a BuildUnit>) -> Vec<DistinctUnit<'a>> {
    let mut out: Vec<DistinctUnit<'a>> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for unit in units {
        let key = tg_nix_builders::dedup_key(unit);
        match index.get(&key) {
            Some(&i) => out[i].groups.push(unit.group_id.clone()),
            None => {
                index.insert(key, out.len());
                out.push(DistinctUnit { unit, groups: vec![unit.group_id.clone()] });
            }
        }
    }
    out
}

/// What one unit's build gave.
#[derive(Debug, Clone, Serialize)]
pub struct UnitResult {
    pub groups: Vec<String>,
    pub builder: String,
    pub program: PathBuf,
    /// `cached` (found built, nothing run), `unchanged` (the builder ran and built nothing) or `built`.
    pub outcome: &'static str,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv: Option<String>,
}

/// Every unit's result, and the lock written (if any).
pub struct Built {
    pub units: Vec<UnitResult>,
    /// The program of each group id.
    pub programs: BTreeMap<String, PathBuf>,
    pub lock: Option<PathBuf>,
}

/// One unit's build result and how long it took (seconds).
type Attempt = (Result<Artifact, BuildError>, f64);

/// Builds every distinct unit of `target` once; see the module comment.
pub fn build_all(target: &Target, home: &Home, locked: bool, jobs: usize) -> Result<Built, CliError> {
    let started = Instant::now();
    let units = distinct_units(&target.prepared.builds);
    let has_nix = units.iter().any(|u| u.unit.builder.starts_with("nix:"));
    let lock = match &target.composition {
        Some(path) if has_nix => Some(Lock::load(path)?),
        None if locked => {
            return Err(CliError::input(
                "--locked needs a composition file (its tg-nix.lock pins the build)",
                "give the composition instead of --plan, or leave out --locked",
            ))
        }
        _ => None,
    };
    // Under --locked every nix:* unit must have its pin before anything is built.
    let composition_name = target
        .composition
        .as_deref()
        .and_then(|c| c.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pins = units
        .iter()
        .map(|u| match (&lock, locked && u.unit.builder.starts_with("nix:")) {
            (Some(lock), true) => lock.pin_for(&composition_name, &target.prepared.plan, u.unit).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let display = BuildDisplay::new();
    let (target_dir, work_dir, state_dir) = (home.cargo_target_dir(), home.work_dir(), home.state_dir());
    let progress: Vec<_> = units.iter().map(|u| display.unit(&u.label())).collect();
    let reporters: Vec<_> = progress.iter().map(|p| move |x: tg_nix_builders::Progress<'_>| p.report(x)).collect();
    let requests: Vec<BuildRequest<'_>> = units
        .iter()
        .zip(&reporters)
        .zip(&pins)
        .map(|((u, p), pin)| BuildRequest {
            plan_dir: &target.plan_dir,
            unit: u.unit,
            cargo_target_dir: &target_dir,
            work_dir: &work_dir,
            state_dir: &state_dir,
            progress: p,
            locked: *pin,
        })
        .collect();

    let found = tg_nix_builders::already_built(&requests);
    let todo: Vec<usize> = (0..units.len()).filter(|&i| found[i].is_none()).collect();
    let results: Mutex<Vec<Option<Attempt>>> = Mutex::new(found.into_iter().map(|a| a.map(|a| (Ok(a), 0.0))).collect());
    for (i, u) in units.iter().enumerate() {
        if let Some((Ok(a), _)) = &results.lock().unwrap_or_else(|e| e.into_inner())[i] {
            display.line(&format!("build  {} done (cached): {}", u.label(), a.program.display()));
        }
    }
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(todo.len()) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                let req = &requests[i];
                display.line(&format!("build  {} ({}) …", units[i].label(), req.unit.builder));
                let t = Instant::now();
                let result = tg_nix_builders::build(req);
                let secs = t.elapsed().as_secs_f64();
                match &result {
                    Ok(a) => display.line(&format!(
                        "build  {} done in {secs:.2}s{}: {}",
                        units[i].label(),
                        if a.cached == Some(true) { " (nothing to build)" } else { "" },
                        a.program.display()
                    )),
                    Err(_) => failed.store(true, Ordering::Relaxed),
                }
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some((result, secs));
            });
        }
    });
    drop(requests);
    drop(reporters);
    drop(progress);

    let mut built = Built { units: Vec::new(), programs: BTreeMap::new(), lock: None };
    let mut locked_units = Vec::new();
    for (i, result) in results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().enumerate() {
        let u = &units[i];
        let Some((result, seconds)) = result else { continue };
        let artifact = result?;
        let outcome = match (todo.contains(&i), artifact.cached) {
            (false, _) => "cached",
            (true, Some(true)) => "unchanged",
            (true, _) => "built",
        };
        for g in &u.groups {
            built.programs.insert(g.clone(), artifact.program.clone());
        }
        if let Some(pin) = &artifact.pin {
            locked_units.push(LockedUnit {
                compositions: Vec::new(),
                groups: u.groups.clone(),
                plan: target.prepared.plan.clone(),
                builder: u.unit.builder.clone(),
                key: lock::unit_key(&target.prepared.plan, u.unit),
                pin: pin.clone(),
            });
        }
        built.units.push(UnitResult {
            groups: u.groups.clone(),
            builder: u.unit.builder.clone(),
            program: artifact.program.clone(),
            outcome,
            seconds,
            out: artifact.pin.as_ref().map(|p| p.out.clone()),
            drv: artifact.pin.as_ref().map(|p| p.drv.clone()),
        });
    }
    if built.units.len() != units.len() {
        // A worker stopped early after another unit failed; that failure was returned above.
        return Err(CliError::infra("a build was not attempted after another one failed"));
    }

    if let Some(mut lock) = lock {
        if !locked {
            lock.set(&composition_name, locked_units);
            if lock.save()? {
                display.line(&format!("lock   wrote {}", lock.path().display()));
            }
        }
        tg_nix_builders::nix::root_pins(lock.path(), &lock.pins().collect::<Vec<_>>())?;
        built.lock = Some(lock.path().to_path_buf());
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "builds done");
    Ok(built)
}

/// `tg-nix build`.
pub fn run(args: &BuildArgs, home: &Home) -> Result<i32, CliError> {
    let target = Target::resolve(&args.target, home)?;
    let started = Instant::now();
    let built = build_all(&target, home, args.target.locked, args.target.jobs)?;
    let built_count = built.units.iter().filter(|u| u.outcome == "built").count();
    if args.json {
        let doc = serde_json::json!({
            "plan": target.prepared.plan,
            "units": built.units,
            "lock": built.lock,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        for u in &built.units {
            println!(
                "{:<10} {:<10} {}",
                u.outcome,
                u.groups.join(","),
                u.out.as_deref().unwrap_or(&u.program.to_string_lossy())
            );
        }
        let summary = if built_count == 0 {
            "nothing to build: every unit was already built".to_string()
        } else {
            format!("built {built_count} of {} unit(s)", built.units.len())
        };
        println!("{summary} ({:.2}s)", started.elapsed().as_secs_f64());
    }
    Ok(exit::OK)
}
