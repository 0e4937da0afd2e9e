//! Builders turn a plan directory and a build unit of a composition into a runnable artifact.
//!
//! - `exec:rust`: `cargo build --release` of the plan's package on the host, the fast
//!   non-hermetic path (the Rust counterpart of Testground's `exec:go`);
//! - `nix:rust`: the same package built hermetically in the Nix sandbox, with dependency
//!   rewrites, from a generated Nix expression ([`nix`]; `tg-nix setup` prepares the host).
//!
//! This crate must not run instances or know about runners: it returns a path and nothing else.
//! It reports progress through [`BuildRequest::progress`] and never prints.
//!
//! ```no_run
//! use std::path::Path;
//! # fn unit() -> tg_nix_model::BuildUnit { unimplemented!() }
//! let artifact = tg_nix_builders::build(&tg_nix_builders::BuildRequest {
//!     plan_dir: Path::new("plans/ping-rust"),
//!     unit: &unit(),
//!     cargo_target_dir: Path::new("/tmp/tg-nix-target"),
//!     work_dir: Path::new("/tmp/tg-nix/data/work"),
//!     state_dir: Path::new("/tmp/tg-nix/data/state"),
//!     progress: &|p| eprintln!("{p:?}"),
//!     locked: None,
//! })?;
//! println!("{}", artifact.program.display());
//! # Ok::<(), tg_nix_builders::BuildError>(())
//! ```

mod exec_rust;
pub mod image;
pub mod nix;
pub mod store;

use std::path::{Path, PathBuf};

use tg_nix_model::BuildUnit;

/// The builder ids this crate knows, in the order `tg-nix describe` lists them.
pub const BUILDERS: &[&str] = &[exec_rust::ID, nix::rust::ID];

/// What one build needs.
pub struct BuildRequest<'a> {
    /// The plan directory (holds manifest.toml and, for Rust plans, Cargo.toml).
    pub plan_dir: &'a Path,
    /// The build unit from the prepared composition.
    pub unit: &'a BuildUnit,
    /// Where cargo keeps its build cache; shared across plans so their dependencies build once.
    pub cargo_target_dir: &'a Path,
    /// tg-nix's work dir (`<home>/data/work`): nix:* builders stage sources there and write the
    /// generated expressions under `nix/<plan>/`.
    pub work_dir: &'a Path,
    /// tg-nix's state DB (`<home>/data/state`): what `tg-nix setup` imported, resolve and vendor
    /// caches.
    pub state_dir: &'a Path,
    /// Where the builder says what it is doing.
    pub progress: &'a (dyn Fn(Progress<'_>) + Sync),
    /// `--locked`: what tg-nix.lock pins for this unit. A nix:* unit that resolves to anything
    /// else fails ([`BuildError::Locked`]) before building.
    pub locked: Option<&'a nix::Pin>,
}

/// What a builder is doing; the caller decides how to show it.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A step worth a line of its own ("vendoring dependencies …", "cached").
    Step(&'a str),
    /// The latest line of a running build's log: a terminal may show it in place; plain output
    /// drops it.
    Log(&'a str),
}

/// A built plan program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The executable to start once per instance.
    pub program: PathBuf,
    /// Whether nothing had to be built, when the builder can tell (nix:* can: Nix's store is the
    /// cache; exec:rust leaves that to cargo).
    pub cached: Option<bool>,
    /// What a nix:* unit is made of (tg-nix.lock records it); `None` for exec:* builders.
    pub pin: Option<nix::Pin>,
}

/// Why a build failed. Each variant says which build unit and carries what a user needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("group `{group}`: unknown builder `{builder}` (known builders: {known})")]
    UnknownBuilder { group: String, builder: String, known: String },
    #[error("group `{group}`: build_config.{key}: {message}")]
    Config { group: String, key: String, message: String },
    #[error("group `{group}`: {builder} does not support {what}; {hint}")]
    Unsupported { group: String, builder: String, what: String, hint: String },
    #[error("group `{group}`: could not start `{command}`: {source}")]
    Spawn { group: String, command: String, source: std::io::Error },
    #[error("group `{group}`: `{command}` failed ({status})\n{stderr_tail}")]
    Command { group: String, command: String, status: String, stderr_tail: String },
    #[error("group `{group}`: {message}")]
    NoProgram { group: String, message: String },
    /// A `[[groups.build.dependencies]]` rewrite that cargo could not apply.
    #[error("group `{group}`: dependency rewrite `{rewrite}` failed: {detail}")]
    Rewrite { group: String, rewrite: String, detail: String },
    /// Under `--locked`, the unit no longer resolves to what tg-nix.lock pins.
    #[error(
        "group `{group}`: does not match tg-nix.lock (--locked):\n  {}\nrun without --locked to resolve again and update the lock",
        diffs.join("\n  ")
    )]
    Locked { group: String, diffs: Vec<String> },
    /// The host is not ready for a nix:* builder (Nix, its sandbox, the imports); `fix` says how.
    #[error("{message}")]
    NotReady { message: String, fix: String },
    /// `tg-nix setup` failed at one step.
    #[error("setup: {step}: {message}")]
    Setup { step: String, message: String },
    /// A file tg-nix manages (staging, generated expressions, GC roots) could not be written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A container image could not be made (local:docker): `tag` names it.
    #[error("image {tag}: {message}")]
    Image { tag: String, message: String },
    /// The state DB could not be opened, read or written.
    #[error("state DB {path}: {message}")]
    State { path: String, message: String },
}

/// Builds one unit with the builder it names.
pub fn build(req: &BuildRequest<'_>) -> Result<Artifact, BuildError> {
    match req.unit.builder.as_str() {
        exec_rust::ID => exec_rust::build(req),
        nix::rust::ID => nix::rust::build(req),
        other => Err(BuildError::UnknownBuilder {
            group: req.unit.group_id.clone(),
            builder: other.to_string(),
            known: BUILDERS.join(", "),
        }),
    }
}

/// For each request, its artifact when it is already built and nothing needs doing (nix:* units
/// with unchanged inputs and a valid output, found with one store query for all of them); `None`
/// where [`build`] has work to do. Never fails: whatever it cannot tell, `build` will.
pub fn already_built(reqs: &[BuildRequest<'_>]) -> Vec<Option<Artifact>> {
    let mut found = vec![None; reqs.len()];
    let nix: Vec<(usize, &BuildRequest<'_>)> =
        reqs.iter().enumerate().filter(|(_, r)| r.unit.builder == nix::rust::ID).collect();
    let refs: Vec<&BuildRequest<'_>> = nix.iter().map(|(_, r)| *r).collect();
    for ((i, _), artifact) in nix.iter().zip(nix::rust::already_built(&refs)) {
        found[*i] = artifact;
    }
    found
}

/// A unit's [`dedup_key`] within `plan` as a stable digest (SHA-256, 32 hex digits): how files
/// such as tg-nix.lock name a unit.
pub fn unit_digest(plan: &str, unit: &BuildUnit) -> String {
    nix::sha256_hex(format!("{plan}\0{}", dedup_key(unit)).as_bytes())[..32].to_string()
}

/// The key under which two build units produce the same artifact: builder, config, selectors and
/// dependency rewrites (Testground's dedup rule). Units with equal keys are built once.
pub fn dedup_key(unit: &BuildUnit) -> String {
    let mut deps: Vec<String> = unit
        .dependencies
        .iter()
        .map(|d| format!("{}:{}:{}", d.module, d.version, d.target.as_deref().unwrap_or("")))
        .collect();
    deps.sort();
    let mut selectors = unit.selectors.clone();
    selectors.sort();
    format!(
        "{}\n{}\n{}\n{}",
        unit.builder,
        toml::to_string(&unit.build_config).unwrap_or_default(),
        selectors.join(","),
        deps.join(",")
    )
}
