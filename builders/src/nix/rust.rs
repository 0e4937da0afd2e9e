//! `nix:rust`: a cargo package built hermetically in the Nix sandbox.
//!
//! - **Resolve**: copy the plan into a staging dir (no target/, .git, manifest.toml or
//!   compositions/), apply the group's dependency rewrites to the staged Cargo.toml/Cargo.lock
//!   (`version` → `cargo update -p <module> --precise <version>`, and the requirement itself when
//!   it does not admit that version; `target` → a local crate copied under `tg-nix-patches/` and
//!   `[patch.crates-io]`), `cargo vendor --locked --versioned-dirs` the lock, and add the source
//!   and the vendor dir to the store as fixed paths. Their NAR hashes are their identity:
//!   identical vendor dirs are one path, whatever the group.
//! - **Derive**: render `templates/rust.nix.hbs` into `<work>/nix/<plan>/<group>-<key>.nix`, beside
//!   the library `tg-nix.nix`, `builder-rust.sh` and this machine's `imports.nix`.
//! - **Realise**: `nix-build` it with a GC root under /nix/var/nix/gcroots/tg-nix/; the program
//!   is `<out>/bin/<bin>`.
//!
//! The resolve step caches its results in the state DB (rewritten manifest + lock by input hash,
//! vendor path by lock hash), so an unchanged unit resolves without cargo or the network.
//! build_config keys are exec:rust's: `path`, `bin`, `features`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tg_nix_model::Dependency;

use super::derive;
use super::realise::nix_build;
use super::setup::{library_digest, render, write_library, Imports};
use super::stage::{copy_tree, digest_tree};
use super::state::State;
use super::{
    add_recursive_at, comment, fixed_path_of, invalid_paths, io_err, nix_str, output, sha256_hex, store_name,
    write_if_changed, GCROOTS,
};
use crate::{Artifact, BuildError, BuildRequest, Progress};

pub const ID: &str = "nix:rust";

const TEMPLATE: &str = include_str!("../../../templates/rust.nix.hbs");
/// Where target rewrites are copied inside the staged package.
const PATCHES_DIR: &str = "tg-nix-patches";
/// Part of every resolve cache key: bump it whenever `resolve` changes what it makes of the same
/// inputs, so that no home keeps using results of the old logic.
const RESOLVE_VERSION: &str = "resolve-2";
/// Testground's files at the top of a plan: not build inputs (editing a composition must not
/// rebuild the plan).
const NOT_SOURCE: &[&str] = &["manifest.toml", "compositions"];

/// A generated, not yet built, unit.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub group: String,
    /// The expression; it evaluates to the derivation (`nix-build FILE`).
    pub file: PathBuf,
    /// The program inside the output: `bin/<bin>`.
    pub bin: String,
    /// The GC root nix-build writes (`-o`).
    pub out_link: PathBuf,
    /// The store paths of the staged source and the vendored dependencies.
    pub src: String,
    pub deps: String,
    /// What the resolve step said that a user should know (a generated lockfile…).
    pub notes: Vec<String>,
    /// The hash of every input of the unit (see `fingerprint`): the key of its build record.
    pub fingerprint: String,
    /// What the unit is made of, as tg-nix.lock pins it, with the .drv and output paths computed
    /// without Nix.
    pub pin: Pin,
}

/// What a nix:rust unit is made of, exactly: tg-nix.lock holds one per unit, and `--locked`
/// builds a unit only when it resolves to this again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The program: `<out>/bin/<bin>`.
    pub bin: String,
    /// The packages of the rewritten modules as Cargo.lock has them after the rewrites.
    #[serde(default)]
    pub rewrites: Vec<PinnedRewrite>,
    /// SHA-256 (hex) of the Cargo.lock the build used.
    pub cargo_lock: String,
    /// The staged source, the vendored dependencies and the Rust toolchain, by NAR hash.
    pub src: Fixed,
    pub deps: Fixed,
    pub toolchain: Fixed,
    /// The derivation and its output.
    pub drv: String,
    pub out: String,
}

/// A store path and its NAR hash (sha256, nix base32).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixed {
    pub path: String,
    pub nar_hash: String,
}

/// One package of a rewritten module, as cargo resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedRewrite {
    pub module: String,
    /// What the composition asked for.
    pub requested: String,
    pub version: String,
    /// Cargo.lock's `source` (`registry+…`), or `path` for a local target.
    pub source: String,
    /// Cargo.lock's checksum of the crate (registry crates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// Resolve, derive and realise one unit. With `req.locked`, the unit must resolve to that pin
/// again (else nothing is built); the result is recorded under the unit's fingerprint, so that
/// [`already_built`] finds it next time.
pub fn build(req: &BuildRequest<'_>) -> Result<Artifact, BuildError> {
    let group = &req.unit.group_id;
    super::check_sandbox().map_err(|e| for_group(e, group))?;
    if !super::is_root() {
        return Err(BuildError::NotReady {
            message: format!("group `{group}`: {ID} builds in root's single-user Nix store"),
            fix: "run tg-nix as root".to_string(),
        });
    }
    let gen = generate(req)?;
    if let Some(want) = req.locked {
        check_pin(group, want, &gen.pin)?;
    }
    std::fs::create_dir_all(GCROOTS).map_err(|e| io_err(Path::new(GCROOTS), e))?;
    (req.progress)(Progress::Step(&format!("nix-build {}", gen.file.display())));
    let realised = nix_build(&gen.file, &gen.out_link, group, req.progress)?;
    let program = Path::new(&realised.out).join("bin").join(&gen.bin);
    if !program.is_file() {
        return Err(BuildError::NoProgram {
            group: group.clone(),
            message: format!("{} is not in the build output", program.display()),
        });
    }
    if realised.out != gen.pin.out {
        return Err(BuildError::NoProgram {
            group: group.clone(),
            message: format!(
                "nix-build made {}, but tg-nix computed {} (a bug in tg-nix's store math: please report it)",
                realised.out, gen.pin.out
            ),
        });
    }
    let pin = gen.pin;
    State::open(req.state_dir)?.put(&built_key(&gen.fingerprint), &pin)?;
    let how = if realised.built { "built" } else { "cached (nothing to build)" };
    (req.progress)(Progress::Step(&format!("{how}: {}", realised.out)));
    Ok(Artifact { program, cached: Some(!realised.built), pin: Some(pin) })
}

/// A "host not ready" error told as the group's (other errors already name it).
fn for_group(e: BuildError, group: &str) -> BuildError {
    match e {
        BuildError::NotReady { message, fix } => {
            BuildError::NotReady { message: format!("group `{group}` ({ID}): {message}"), fix }
        }
        other => other,
    }
}

/// The state DB key of a unit's build record.
fn built_key(fingerprint: &str) -> String {
    format!("built/{fingerprint}")
}

/// The units among `reqs` (all nix:rust, one home) whose inputs are those of a recorded build
/// whose output is still valid (and, with `locked`, whose record is that pin): found by hashing
/// the plan and the rewrite targets, without staging, cargo or Nix evaluation, and one validity
/// check for all of them. Anything unusual (no imports, no record, an unreadable file) gives
/// `None`: the full build then does the work or says what is wrong.
pub fn already_built(reqs: &[&BuildRequest<'_>]) -> Vec<Option<Artifact>> {
    let Some(first) = reqs.first() else { return Vec::new() };
    // No setup yet, or the sandbox is off: `build` says so (a cached output is never served on a
    // host that could not build it hermetically again).
    if !first.state_dir.exists() || super::check_sandbox().is_err() {
        return vec![None; reqs.len()];
    }
    let Ok(state) = State::open(first.state_dir) else { return vec![None; reqs.len()] };
    let Ok(imports) = Imports::from_state(&state, first.state_dir) else { return vec![None; reqs.len()] };
    let pins: Vec<Option<Pin>> = reqs
        .iter()
        .map(|req| {
            let fp = fingerprint(req, &imports).ok()?;
            let pin: Pin = state.get(&built_key(&fp))?;
            match req.locked {
                Some(want) if *want != pin => None,
                _ => Some(pin),
            }
        })
        .collect();
    drop(state);
    let outs: Vec<&str> = pins.iter().flatten().map(|p| p.out.as_str()).collect();
    if outs.is_empty() {
        return vec![None; reqs.len()];
    }
    let Ok(invalid) = invalid_paths(&outs) else { return vec![None; reqs.len()] };
    pins.into_iter()
        .map(|pin| {
            let pin = pin.filter(|p| !invalid.contains(&p.out))?;
            let program = Path::new(&pin.out).join("bin").join(&pin.bin);
            Some(Artifact { program, cached: Some(true), pin: Some(pin) })
        })
        .collect()
}

/// Everything a unit's build depends on, hashed: tg-nix's version, the template and library,
/// the imports, the build config, the plan's source tree and each rewrite (with its target's
/// tree). Cargo's version is not in it (the resolve cache does not key on it either).
fn fingerprint(req: &BuildRequest<'_>, imports: &Imports) -> Result<String, BuildError> {
    let cfg = crate::exec_rust::config(req, ID)?;
    let rewrites = rewrites_of(req)?;
    let mut material = format!(
        "fingerprint-1\0{RESOLVE_VERSION}\0{}\0{}\0{}\0{}\0{:?}\0{:?}\0{}\0",
        env!("CARGO_PKG_VERSION"),
        sha256_hex(TEMPLATE.as_bytes()),
        library_digest(&imports.render()),
        cfg.package_dir.strip_prefix(req.plan_dir).unwrap_or(Path::new("")).display(),
        cfg.bin,
        cfg.features,
        digest_tree(req.plan_dir, NOT_SOURCE)?,
    );
    for r in &rewrites {
        material.push_str(&format!("{}\0{}\0", r.dep.module, r.dep.version));
        if let Some(t) = &r.target {
            material.push_str(&digest_tree(t, &[])?);
        }
        material.push('\0');
    }
    Ok(sha256_hex(material.as_bytes()))
}

/// A pin that `have` does not match, told as what changed.
fn check_pin(group: &str, want: &Pin, have: &Pin) -> Result<(), BuildError> {
    let mut diffs = Vec::new();
    let mut differs = |what: &str, lock: &str, now: &str| {
        if !now.is_empty() && lock != now {
            diffs.push(format!("{what}: the lock has {lock}, the composition now gives {now}"));
        }
    };
    let rewrites = |p: &Pin| {
        p.rewrites
            .iter()
            .map(|r| format!("{} {} ({})", r.module, r.version, r.requested))
            .collect::<Vec<_>>()
            .join(", ")
    };
    differs("dependency rewrites", &rewrites(want), &rewrites(have));
    differs("Cargo.lock (sha256)", &want.cargo_lock, &have.cargo_lock);
    differs("source (the plan's files)", &want.src.nar_hash, &have.src.nar_hash);
    differs("vendored dependencies", &want.deps.nar_hash, &have.deps.nar_hash);
    differs("Rust toolchain", &want.toolchain.path, &have.toolchain.path);
    differs("binary", &want.bin, &have.bin);
    differs("derivation", &want.drv, &have.drv);
    differs("output", &want.out, &have.out);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(BuildError::Locked { group: group.to_string(), diffs })
}

/// The rewritten modules' packages in a Cargo.lock.
fn pinned_rewrites(lock: &str, rewrites: &[Rewrite<'_>]) -> Vec<PinnedRewrite> {
    let doc = lock.parse::<toml::Table>().unwrap_or_default();
    let packages = doc.get("package").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for r in rewrites {
        for p in &packages {
            if p.get("name").and_then(|n| n.as_str()) != Some(r.dep.module.as_str()) {
                continue;
            }
            let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(String::from);
            out.push(PinnedRewrite {
                module: r.dep.module.clone(),
                requested: match &r.target {
                    Some(t) => format!("{} from {}", r.dep.version, t.display()),
                    None => r.dep.version.clone(),
                },
                version: field("version").unwrap_or_default(),
                source: field("source").unwrap_or_else(|| "path".to_string()),
                checksum: field("checksum"),
            });
        }
    }
    out
}

/// One rewrite, with its target made absolute.
struct Rewrite<'a> {
    dep: &'a Dependency,
    target: Option<PathBuf>,
}

impl Rewrite<'_> {
    fn describe(&self) -> String {
        match &self.target {
            Some(t) => format!("{} = {} from {}", self.dep.module, self.dep.version, t.display()),
            None => format!("{} = {}", self.dep.module, self.dep.version),
        }
    }
}

/// The resolve cache: a rewritten manifest and lock, and the package's binaries.
#[derive(Debug, Serialize, Deserialize)]
struct Resolved {
    manifest: String,
    lock: String,
    bins: Vec<String>,
    notes: Vec<String>,
}

/// The vendor cache: the fixed path of a lock's vendored crates.
#[derive(Debug, Serialize, Deserialize)]
struct Vendored {
    path: String,
    nar_hash: String,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Resolve and derive: stage, rewrite, lock, vendor, import, render. Builds nothing.
pub fn generate(req: &BuildRequest<'_>) -> Result<Generated, BuildError> {
    let group = req.unit.group_id.as_str();
    let step = |s: &str| (req.progress)(Progress::Step(s));
    let cfg = crate::exec_rust::config(req, ID)?;
    let imports = Imports::load(req.state_dir).map_err(|e| for_group(e, group))?;
    let plan = store_name(
        &req.plan_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plan".to_string()),
    );
    let rel = cfg.package_dir.strip_prefix(req.plan_dir).unwrap_or(Path::new("")).to_path_buf();
    let package_dir = if rel.as_os_str().is_empty() { ".".to_string() } else { rel.to_string_lossy().into_owned() };
    let rewrites = rewrites_of(req)?;
    let fingerprint = fingerprint(req, &imports)?;

    // Stage. Cargo looks for a workspace root above the package: a home inside a cargo workspace
    // (a checkout's target/) would capture a plan that has no [workspace] of its own, so stage
    // in the temp dir then.
    let gen_dir = req.work_dir.join("nix").join(&plan);
    std::fs::create_dir_all(&gen_dir).map_err(|e| io_err(&gen_dir, e))?;
    let stage_parent = if gen_dir.ancestors().any(|d| d.join("Cargo.toml").is_file()) {
        std::env::temp_dir()
    } else {
        gen_dir.clone()
    };
    let stage = tempfile::Builder::new()
        .prefix(".tg-nix-stage-")
        .tempdir_in(&stage_parent)
        .map_err(|e| io_err(&stage_parent, e))?;
    let src_root = stage.path().join(format!("{plan}-src"));
    std::fs::create_dir_all(&src_root).map_err(|e| io_err(&src_root, e))?;
    copy_plan(req.plan_dir, &src_root)?;
    let pkg = src_root.join(&rel);
    let manifest_path = pkg.join("Cargo.toml");
    for r in &rewrites {
        if let Some(t) = &r.target {
            copy_tree(t, &pkg.join(PATCHES_DIR).join(store_name(&r.dep.module)), &[])?;
        }
    }

    // Rewrite and lock, or take both from the resolve cache.
    let manifest = read(&manifest_path)?;
    let lock_path = find_lock(&pkg, &src_root);
    let lock = lock_path.as_deref().map(read).transpose()?.unwrap_or_default();
    // Cargo also finds binaries by file layout (src/main.rs, src/bin/): part of the key too.
    let mut material = format!("{RESOLVE_VERSION}\0{manifest}\0{lock}\0{package_dir}\0{}\0", bin_layout(&pkg));
    for r in &rewrites {
        material.push_str(&format!("{}\0{}\0", r.dep.module, r.dep.version));
        if let Some(t) = &r.target {
            material.push_str(&read(&t.join("Cargo.toml"))?);
        }
    }
    let resolve_key = format!("resolve/{}", sha256_hex(material.as_bytes()));
    let cached: Option<Resolved> = State::open(req.state_dir)?.get(&resolve_key);
    let resolved = match cached {
        Some(r) => r,
        None => {
            if !rewrites.is_empty() {
                step(&format!("resolving {} dependency rewrite(s) with cargo …", rewrites.len()));
            }
            let r = resolve(group, &pkg, &src_root, &manifest_path, lock_path.is_some(), &rewrites)
                .map_err(|e| unstage(e, &src_root, req.plan_dir))?;
            State::open(req.state_dir)?.put(&resolve_key, &r)?;
            r
        }
    };
    write_if_changed(&manifest_path, &resolved.manifest)?;
    let lock_path = find_lock(&pkg, &src_root).unwrap_or_else(|| pkg.join("Cargo.lock"));
    write_if_changed(&lock_path, &resolved.lock)?;
    for note in &resolved.notes {
        step(note);
    }
    let bin = match (&cfg.bin, resolved.bins.as_slice()) {
        (Some(b), bins) if bins.contains(b) => b.clone(),
        (Some(b), bins) => {
            return Err(BuildError::Config {
                group: group.to_string(),
                key: "bin".to_string(),
                message: format!("the package has no binary `{b}` (it has: {})", bins.join(", ")),
            })
        }
        (None, [one]) => one.clone(),
        (None, []) => {
            return Err(BuildError::NoProgram {
                group: group.to_string(),
                message: "the package has no binary target".into(),
            })
        }
        (None, bins) => {
            return Err(BuildError::NoProgram {
                group: group.to_string(),
                message: format!(
                    "the package has {} binaries ({}); choose one with build_config.bin",
                    bins.len(),
                    bins.join(", ")
                ),
            })
        }
    };

    // The source as Nix will see it (cargo may have left a target/ behind), its path computed
    // here; then one validity check for it and for the vendor dir of an identical lock.
    let _ = std::fs::remove_dir_all(pkg.join("target"));
    let (src, src_hash) = fixed_path_of(&src_root)?;
    let vendor_key = format!("vendor/{}", sha256_hex(resolved.lock.as_bytes()));
    let known: Option<Vendored> = State::open(req.state_dir)?.get(&vendor_key);
    let mut check = vec![src.as_str()];
    check.extend(known.as_ref().map(|v| v.path.as_str()));
    let invalid = invalid_paths(&check).map_err(|f| f.for_group(group))?;
    if invalid.contains(&src) {
        add_recursive_at(&src_root, &src, group)?;
    }
    let vendored = match known.filter(|v| !invalid.contains(&v.path)) {
        Some(v) => v,
        None => {
            step("vendoring dependencies (cargo vendor --locked --versioned-dirs) …");
            let started = std::time::Instant::now();
            // The store name is the directory's name.
            let dir = stage.path().join("vendor").join(format!("{plan}-deps"));
            output(
                cargo()
                    .args(["vendor", "--locked", "--versioned-dirs", "--quiet", "--manifest-path"])
                    .arg(&manifest_path)
                    .arg(&dir)
                    .current_dir(&pkg),
            )
            .map_err(|f| f.for_group(group))?;
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            let vendor_secs = started.elapsed().as_secs_f64();
            let (path, nar_hash) = fixed_path_of(&dir)?;
            if !invalid_paths(&[&path]).map_err(|f| f.for_group(group))?.is_empty() {
                add_recursive_at(&dir, &path, group)?;
            }
            step(&format!(
                "vendored into {path} (cargo vendor {vendor_secs:.1}s, hash + import {:.1}s)",
                started.elapsed().as_secs_f64() - vendor_secs
            ));
            let v = Vendored { path, nar_hash };
            State::open(req.state_dir)?.put(&vendor_key, &v)?;
            v
        }
    };

    // Derive: the expression, and the .drv and output paths it evaluates to, computed here
    // (tests/derive_paths.rs holds them against nix-instantiate).
    let lib_digest = write_library(&gen_dir, &imports.render())?;
    let paths = derive::rust_plan(&derive::RustPlanInputs {
        imports: &imports,
        name: &plan,
        src: (&format!("{plan}-src"), &src_hash),
        deps: (&format!("{plan}-deps"), &vendored.nar_hash),
        package_dir: &package_dir,
        bin: &bin,
        features: &cfg.features,
        builder_script: derive::BUILDER_SCRIPT,
    })
    .map_err(|e| BuildError::NoProgram {
        group: group.to_string(),
        message: format!("cannot compute the derivation's store paths: {e}"),
    })?;
    let data = serde_json::json!({
        "tg_nix_version": env!("CARGO_PKG_VERSION"),
        "plan": comment(&plan),
        "group": comment(group),
        "rewrites": rewrites.iter().map(|r| comment(&r.describe())).collect::<Vec<_>>(),
        "drv_name": nix_str(&plan),
        "src_name": nix_str(&format!("{plan}-src")),
        "src_hash": nix_str(&src_hash),
        "src_what": nix_str(&format!("the staged source of plan {plan}")),
        "deps_name": nix_str(&format!("{plan}-deps")),
        "deps_hash": nix_str(&vendored.nar_hash),
        "deps_what": nix_str(&format!("the vendored dependencies of plan {plan}")),
        "package_dir": nix_str(&package_dir),
        "bin": nix_str(&bin),
        "features": cfg.features.iter().map(|f| nix_str(f)).collect::<Vec<_>>(),
    });
    let text = render(TEMPLATE, &data);
    let key = sha256_hex(format!("{text}\0{lib_digest}").as_bytes());
    let file = gen_dir.join(format!("{}-{}.nix", store_name(group), &key[..12]));
    write_if_changed(&file, &text)?;
    Ok(Generated {
        group: group.to_string(),
        file,
        bin: bin.clone(),
        out_link: Path::new(GCROOTS).join(format!("{plan}-{}", &key[..16])),
        pin: Pin {
            bin,
            rewrites: pinned_rewrites(&resolved.lock, &rewrites),
            cargo_lock: sha256_hex(resolved.lock.as_bytes()),
            src: Fixed { path: src.clone(), nar_hash: src_hash },
            deps: Fixed { path: vendored.path.clone(), nar_hash: vendored.nar_hash },
            toolchain: Fixed { path: imports.rust.path.clone(), nar_hash: imports.rust.nar_hash.clone() },
            drv: paths.drv.to_string(),
            out: paths.out.to_string(),
        },
        src,
        deps: vendored.path,
        notes: resolved.notes,
        fingerprint,
    })
}

/// The unit's dependency rewrites, each target made absolute and checked to be a crate.
fn rewrites_of<'a>(req: &BuildRequest<'a>) -> Result<Vec<Rewrite<'a>>, BuildError> {
    let group = req.unit.group_id.as_str();
    req
        .unit
        .dependencies
        .iter()
        .map(|dep| {
            let target = dep.target.as_ref().map(|t| {
                let p = Path::new(t);
                if p.is_absolute() { p.to_path_buf() } else { req.plan_dir.join(p) }
            });
            if let Some(t) = &target {
                if !t.join("Cargo.toml").is_file() {
                    return Err(BuildError::Config {
                        group: group.to_string(),
                        key: format!("dependencies.{}.target", dep.module),
                        message: format!(
                            "{}: no Cargo.toml there; for {ID} a target is a local crate directory (absolute, or relative to the plan directory)",
                            t.display()
                        ),
                    });
                }
            }
            Ok(Rewrite { dep, target })
        })
        .collect()
}

/// The files cargo discovers binaries from, as one string.
fn bin_layout(pkg: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(pkg.join("src/bin"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    format!("main.rs={} bin=[{}]", pkg.join("src/main.rs").is_file(), names.join(","))
}

/// Copies the plan's files that are build inputs.
fn copy_plan(plan_dir: &Path, to: &Path) -> Result<(), BuildError> {
    copy_tree(plan_dir, to, NOT_SOURCE)
}

fn read(path: &Path) -> Result<String, BuildError> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// The Cargo.lock of the package: beside it, or in a directory above it inside the plan.
fn find_lock(pkg: &Path, root: &Path) -> Option<PathBuf> {
    pkg.ancestors().take_while(|d| d.starts_with(root)).map(|d| d.join("Cargo.lock")).find(|p| p.is_file())
}

/// Applies the rewrites in the staged package with cargo; returns the manifest and lock to use.
fn resolve(
    group: &str,
    pkg: &Path,
    root: &Path,
    manifest_path: &Path,
    has_lock: bool,
    rewrites: &[Rewrite<'_>],
) -> Result<Resolved, BuildError> {
    let mut notes = Vec::new();
    let run = |cmd: &mut Command| output(cmd.current_dir(pkg)).map_err(|f| f.for_group(group));
    if !has_lock {
        run(cargo().arg("generate-lockfile").arg("--manifest-path").arg(manifest_path))?;
        notes.push("the plan has no Cargo.lock: generated one (tg-nix keeps it for this manifest; commit a Cargo.lock to pin it yourself)".to_string());
    }
    let mut doc: toml_edit::DocumentMut = read(manifest_path)?.parse().map_err(|e| BuildError::Config {
        group: group.to_string(),
        key: "path".into(),
        message: format!("{}: {e}", manifest_path.display()),
    })?;

    // Targets: [patch.crates-io] <module> = { path = "tg-nix-patches/<module>" }. A lock that
    // already holds the registry's crate keeps it (cargo only warns that the patch was not used),
    // so unlock the module, then check that the lock now takes it from the path.
    let patches: Vec<&Rewrite<'_>> = rewrites.iter().filter(|r| r.target.is_some()).collect();
    if !patches.is_empty() {
        for r in &patches {
            let mut entry = toml_edit::InlineTable::new();
            entry.insert("path", format!("{PATCHES_DIR}/{}", store_name(&r.dep.module)).into());
            doc["patch"]["crates-io"][r.dep.module.as_str()] = toml_edit::value(entry);
        }
        write_if_changed(manifest_path, &doc.to_string())?;
        for r in &patches {
            let module = r.dep.module.as_str();
            let mut update = cargo();
            update.args(["update", "--manifest-path"]).arg(manifest_path).args(["-p", module]);
            run(&mut update).map_err(|e| {
                rewrite_error(e, &[r], &format!("cargo update -p {module} (with the [patch.crates-io] entry)"))
            })?;
            let lock = find_lock(pkg, root).map(|p| read(&p)).transpose()?.unwrap_or_default();
            if !from_path_in_lock(&lock, module) {
                let patched = read(&pkg.join(PATCHES_DIR).join(store_name(module)).join("Cargo.toml"))?;
                let version = patched
                    .parse::<toml_edit::DocumentMut>()
                    .ok()
                    .and_then(|d| d["package"]["version"].as_str().map(String::from));
                return Err(BuildError::Rewrite {
                    group: group.to_string(),
                    rewrite: r.describe(),
                    detail: format!(
                        "cargo did not use the local crate (version {}): it must be named `{module}` and match every requirement on `{module}` in the plan's dependency tree",
                        version.as_deref().unwrap_or("unknown")
                    ),
                });
            }
        }
    }

    // Versions: first as a lock change only, so that the source stays the same when the manifest
    // already admits the version; else pin the requirement too (`=version`) and try again.
    for r in rewrites.iter().filter(|r| r.target.is_none()) {
        let module = r.dep.module.as_str();
        let version = r.dep.version.trim_start_matches('=').trim_start_matches('v');
        let mut update = cargo();
        update.args(["update", "--manifest-path"]).arg(manifest_path).args(["-p", module, "--precise", version]);
        if let Err(first) = run(&mut update) {
            if !pin_requirement(&mut doc, module, version) {
                return Err(rewrite_error(first, &[r], &format!("cargo update -p {module} --precise {version}")));
            }
            write_if_changed(manifest_path, &doc.to_string())?;
            let mut again = cargo();
            again.args(["update", "--manifest-path"]).arg(manifest_path).args(["-p", module, "--precise", version]);
            run(&mut again).map_err(|e| {
                rewrite_error(
                    e,
                    &[r],
                    &format!("cargo update -p {module} --precise {version} (requirement pinned to ={version})"),
                )
            })?;
            notes
                .push(format!("{module}: the manifest's requirement did not admit {version}; pinned it to ={version}"));
        }
    }

    let Some(lock) = find_lock(pkg, root) else {
        return Err(BuildError::NoProgram {
            group: group.to_string(),
            message: format!("cargo left no Cargo.lock in {} or above it", pkg.display()),
        });
    };
    let lock = read(&lock)?;
    Ok(Resolved { manifest: read(manifest_path)?, lock, bins: binaries(group, pkg, manifest_path)?, notes })
}

/// True when Cargo.lock takes `module` from a path (a package entry without `source`).
fn from_path_in_lock(lock: &str, module: &str) -> bool {
    let Ok(doc) = lock.parse::<toml::Table>() else { return false };
    doc.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .any(|p| p.get("name").and_then(|n| n.as_str()) == Some(module) && p.get("source").is_none())
}

/// The failing command of a rewrite, told as the rewrite that failed (`what`: the command in
/// short).
fn rewrite_error(e: BuildError, rewrites: &[&Rewrite<'_>], what: &str) -> BuildError {
    match e {
        BuildError::Command { group, status, stderr_tail, .. } => BuildError::Rewrite {
            group,
            rewrite: rewrites.iter().map(|r| r.describe()).collect::<Vec<_>>().join(", "),
            detail: format!("`{what}` in a staged copy of the plan failed ({status}):\n{stderr_tail}"),
        },
        other => other,
    }
}

/// Cargo's messages name the staged copy, which is gone by the time a user reads them: name the
/// plan instead.
fn unstage(e: BuildError, staged: &Path, plan_dir: &Path) -> BuildError {
    let (from, to) = (staged.to_string_lossy().into_owned(), plan_dir.to_string_lossy().into_owned());
    match e {
        BuildError::Rewrite { group, rewrite, detail } => {
            BuildError::Rewrite { group, rewrite, detail: detail.replace(&from, &to) }
        }
        BuildError::Command { group, command, status, stderr_tail } => BuildError::Command {
            group,
            command: command.replace(&from, &to),
            status,
            stderr_tail: stderr_tail.replace(&from, &to),
        },
        other => other,
    }
}

/// Sets every direct requirement on `module` (in [dependencies], [dev-dependencies],
/// [build-dependencies], also per target) to `=version`. False when there is none to set.
fn pin_requirement(doc: &mut toml_edit::DocumentMut, module: &str, version: &str) -> bool {
    fn pin_in(table: &mut dyn toml_edit::TableLike, module: &str, version: &str) -> bool {
        let mut changed = false;
        for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = table.get_mut(kind).and_then(|i| i.as_table_like_mut()) else { continue };
            for (name, item) in deps.iter_mut() {
                let renamed =
                    item.as_table_like().and_then(|t| t.get("package")).and_then(|p| p.as_str()) == Some(module);
                if name.get() != module && !renamed {
                    continue;
                }
                if item.is_str() {
                    *item = toml_edit::value(format!("={version}"));
                    changed = true;
                } else if let Some(t) = item.as_table_like_mut() {
                    if t.contains_key("path") || t.contains_key("git") {
                        continue;
                    }
                    t.insert("version", toml_edit::value(format!("={version}")));
                    changed = true;
                }
            }
        }
        changed
    }
    let mut changed = pin_in(doc.as_table_mut(), module, version);
    if let Some(targets) = doc.get_mut("target").and_then(|t| t.as_table_like_mut()) {
        for (_, t) in targets.iter_mut() {
            if let Some(t) = t.as_table_like_mut() {
                changed |= pin_in(t, module, version);
            }
        }
    }
    changed
}

/// The binary targets of the package (cargo's own view: [[bin]], src/main.rs, src/bin/).
fn binaries(group: &str, pkg: &Path, manifest_path: &Path) -> Result<Vec<String>, BuildError> {
    let out = output(
        cargo()
            .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"])
            .arg(manifest_path)
            .current_dir(pkg),
    )
    .map_err(|f| f.for_group(group))?;
    let meta: serde_json::Value = serde_json::from_str(&out).map_err(|e| BuildError::NoProgram {
        group: group.to_string(),
        message: format!("cargo metadata printed no JSON: {e}"),
    })?;
    let want = manifest_path.canonicalize().unwrap_or_else(|_| manifest_path.to_path_buf());
    let mut bins = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let path = PathBuf::from(p["manifest_path"].as_str().unwrap_or(""));
        if path.canonicalize().unwrap_or(path) != want {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["kind"].as_array().into_iter().flatten().any(|k| k == "bin") {
                if let Some(name) = t["name"].as_str() {
                    bins.push(name.to_string());
                }
            }
        }
    }
    bins.sort();
    Ok(bins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_direct_requirements_only() {
        let mut doc: toml_edit::DocumentMut = r#"
[package]
name = "p"

[dependencies]
# keep me
serde_json = "1"
tokio = { version = "1", features = ["rt"] }
local = { path = "../local" }
alias = { package = "itoa", version = "1" }

[target.'cfg(unix)'.dev-dependencies]
tokio = "1.2"
"#
        .parse()
        .unwrap();
        assert!(pin_requirement(&mut doc, "serde_json", "1.0.140"));
        assert!(pin_requirement(&mut doc, "tokio", "1.40.0"));
        assert!(pin_requirement(&mut doc, "itoa", "1.0.11"));
        assert!(!pin_requirement(&mut doc, "local", "1.0.0"));
        assert!(!pin_requirement(&mut doc, "hex", "0.4.3"));
        let text = doc.to_string();
        assert!(text.contains("# keep me\nserde_json = \"=1.0.140\""), "{text}");
        assert!(text.contains(r#"tokio = { version = "=1.40.0", features = ["rt"] }"#), "{text}");
        assert!(text.contains(r#"alias = { package = "itoa", version = "=1.0.11" }"#), "{text}");
        assert!(text.contains("[target.'cfg(unix)'.dev-dependencies]\ntokio = \"=1.40.0\""), "{text}");
        assert!(text.contains(r#"local = { path = "../local" }"#), "{text}");
    }

    #[test]
    fn lock_sources() {
        let lock = "version = 4\n[[package]]\nname = \"itoa\"\nversion = \"1.0.19\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n[[package]]\nname = \"tiny\"\nversion = \"0.1.0\"\n";
        assert!(!from_path_in_lock(lock, "itoa"));
        assert!(from_path_in_lock(lock, "tiny"));
        assert!(!from_path_in_lock("not toml [", "tiny"));
    }

    #[test]
    fn template_renders_a_nix_expression() {
        let data = serde_json::json!({
            "tg_nix_version": "0", "plan": "p", "group": "g", "rewrites": ["serde_json = 1.0.140"],
            "drv_name": nix_str("p"), "src_name": nix_str("p-src"), "src_hash": nix_str("0a"), "src_what": nix_str("s"),
            "deps_name": nix_str("p-deps"), "deps_hash": nix_str("0b"), "deps_what": nix_str("d"),
            "package_dir": nix_str("."), "bin": nix_str("p"), "features": [nix_str("a"), nix_str("b")],
        });
        let text = render(TEMPLATE, &data);
        assert!(text.contains("#   serde_json = 1.0.140\n"), "{text}");
        assert!(text.contains(r#"src = tg.fixedPath { name = "p-src"; narHash = "0a"; what = "s"; };"#), "{text}");
        assert!(text.contains(r#"features = [ "a" "b" ];"#), "{text}");
        assert!(text.contains("builderScript = ./builder-rust.sh;"), "{text}");
    }
}
