//! `exec:rust`: `cargo build --release` of the plan's package on the host.
//!
//! Not hermetic (it uses the host's toolchain and cargo cache), so it is the fast path for editing a
//! plan; `nix:rust` is the reproducible one. build_config keys:
//! - `path`: the package directory relative to the plan directory (default: the plan directory);
//! - `bin`: which binary target to use when the package has several;
//! - `features`: cargo features to enable (a string or a list of strings).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Artifact, BuildError, BuildRequest};

pub const ID: &str = "exec:rust";

const KNOWN_KEYS: &[&str] = &["path", "bin", "features"];
/// How many lines of cargo's stderr a failed build shows.
const STDERR_TAIL_LINES: usize = 40;

/// The build_config of a cargo package, shared by exec:rust and nix:rust.
pub(crate) struct Config {
    /// The package directory: the plan directory, or `path` inside it.
    pub package_dir: PathBuf,
    pub bin: Option<String>,
    pub features: Vec<String>,
}

/// Reads and checks build_config for the builder `id` (messages name it).
pub(crate) fn config(req: &BuildRequest<'_>, id: &str) -> Result<Config, BuildError> {
    let group = &req.unit.group_id;
    let bad = |key: &str, message: String| BuildError::Config { group: group.clone(), key: key.to_string(), message };
    for key in req.unit.build_config.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(bad(key, format!("unknown key for {id} (known keys: {})", KNOWN_KEYS.join(", "))));
        }
    }
    let package_dir = match req.unit.build_config.get("path") {
        None => req.plan_dir.to_path_buf(),
        Some(toml::Value::String(p)) => {
            let rel = Path::new(p);
            // A plan must not build code outside its own directory through `path`.
            if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(bad("path", format!("`{p}` must be a relative path inside the plan directory")));
            }
            req.plan_dir.join(rel)
        }
        Some(other) => return Err(bad("path", format!("expected a string, found {}", other.type_str()))),
    };
    let bin = match req.unit.build_config.get("bin") {
        None => None,
        Some(toml::Value::String(b)) => Some(b.clone()),
        Some(other) => return Err(bad("bin", format!("expected a string, found {}", other.type_str()))),
    };
    let features = match req.unit.build_config.get("features") {
        None => Vec::new(),
        Some(toml::Value::String(f)) => f.split([',', ' ']).filter(|s| !s.is_empty()).map(String::from).collect(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| bad("features", "expected a list of strings".into())))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("features", format!("expected a string or a list, found {}", other.type_str()))),
    };
    if !package_dir.join("Cargo.toml").is_file() {
        return Err(BuildError::NoProgram {
            group: group.clone(),
            message: format!(
                "{} has no Cargo.toml; {id} builds a cargo package (set build_config.path to its directory)",
                package_dir.display()
            ),
        });
    }
    Ok(Config { package_dir, bin, features })
}

pub fn build(req: &BuildRequest<'_>) -> Result<Artifact, BuildError> {
    let group = req.unit.group_id.clone();
    if !req.unit.dependencies.is_empty() {
        return Err(BuildError::Unsupported {
            group,
            builder: ID.to_string(),
            what: "dependency rewrites".to_string(),
            hint: "use the hermetic builder `nix:rust` for [[groups.build.dependencies]]".to_string(),
        });
    }
    let cfg = config(req, ID)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build")
        .arg("--release")
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(cfg.package_dir.join("Cargo.toml"));
    if cfg.package_dir.join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    if let Some(bin) = &cfg.bin {
        cmd.arg("--bin").arg(bin);
    }
    if !cfg.features.is_empty() {
        cmd.arg("--features").arg(cfg.features.join(","));
    }
    cmd.env("CARGO_TARGET_DIR", req.cargo_target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = format!("cargo build --release --manifest-path {}", cfg.package_dir.join("Cargo.toml").display());
    tracing::info!(group = %group, %command, "building");
    let mut child =
        cmd.spawn().map_err(|source| BuildError::Spawn { group: group.clone(), command: command.clone(), source })?;

    // Read stderr on its own thread: a chatty build could otherwise fill the pipe and deadlock
    // against our read of stdout.
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::debug!(target: "cargo", "{line}");
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });

    let mut executables = Vec::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(exe) = executable_of(&line) {
            executables.push(exe);
        }
    }
    let status =
        child.wait().map_err(|source| BuildError::Spawn { group: group.clone(), command: command.clone(), source })?;
    let stderr_tail = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(BuildError::Command { group, command, status: status.to_string(), stderr_tail });
    }
    match executables.len() {
        1 => Ok(Artifact { program: executables.remove(0), cached: None, pin: None }),
        0 => Err(BuildError::NoProgram { group, message: "the package has no binary target".into() }),
        _ => Err(BuildError::NoProgram {
            group,
            message: format!(
                "the package has {} binaries ({}); choose one with build_config.bin",
                executables.len(),
                executables
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The executable a `compiler-artifact` message of a bin target names, if any.
fn executable_of(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let kinds = msg.get("target")?.get("kind")?.as_array()?;
    if !kinds.iter().any(|k| k.as_str() == Some("bin")) {
        return None;
    }
    msg.get("executable")?.as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_bin_executables_only() {
        let bin =
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"ping"},"executable":"/t/release/ping"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"x"},"executable":null}"#;
        let build_script = r#"{"reason":"compiler-artifact","target":{"kind":["custom-build"]},"executable":null}"#;
        assert_eq!(executable_of(bin), Some(PathBuf::from("/t/release/ping")));
        assert_eq!(executable_of(lib), None);
        assert_eq!(executable_of(build_script), None);
        assert_eq!(executable_of("not json"), None);
        assert_eq!(executable_of(r#"{"reason":"build-finished","success":true}"#), None);
    }
}
