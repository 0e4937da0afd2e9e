//! Builders turn a plan directory and a build unit of a composition into a runnable artifact.
//!
//! Today there is one builder, `exec:rust`: `cargo build --release` of the plan's package on the
//! host, the fast non-hermetic path (the Rust counterpart of Testground's `exec:go`). The Nix
//! builders (`nix:rust`, …) land here next, behind the same [`build`] entry point.
//!
//! This crate must not run instances or know about runners: it returns a path and nothing else.
//!
//! ```no_run
//! use std::path::Path;
//! # fn unit() -> tg_nix_model::BuildUnit { unimplemented!() }
//! let artifact = tg_nix_builders::build(&tg_nix_builders::BuildRequest {
//!     plan_dir: Path::new("plans/ping-rust"),
//!     unit: &unit(),
//!     cargo_target_dir: Path::new("/tmp/tg-nix-target"),
//! })?;
//! println!("{}", artifact.program.display());
//! # Ok::<(), tg_nix_builders::BuildError>(())
//! ```

mod exec_rust;
pub mod store;

use std::path::{Path, PathBuf};

use tg_nix_model::BuildUnit;

/// The builder ids this crate knows, in the order `tg-nix describe` lists them.
pub const BUILDERS: &[&str] = &[exec_rust::ID];

/// What one build needs.
pub struct BuildRequest<'a> {
    /// The plan directory (holds manifest.toml and, for Rust plans, Cargo.toml).
    pub plan_dir: &'a Path,
    /// The build unit from the prepared composition.
    pub unit: &'a BuildUnit,
    /// Where cargo keeps its build cache; shared across plans so their dependencies build once.
    pub cargo_target_dir: &'a Path,
}

/// A built plan program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The executable to start once per instance.
    pub program: PathBuf,
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
}

/// Builds one unit with the builder it names.
pub fn build(req: &BuildRequest<'_>) -> Result<Artifact, BuildError> {
    match req.unit.builder.as_str() {
        exec_rust::ID => exec_rust::build(req),
        other => Err(BuildError::UnknownBuilder {
            group: req.unit.group_id.clone(),
            builder: other.to_string(),
            known: BUILDERS.join(", "),
        }),
    }
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
