//! Realise: `nix-build FILE -o <gc root>`, reading its log as it comes.
//!
//! Nix's store is the cache: an unchanged expression evaluates to output paths that are already
//! valid, and nix-build then builds nothing (it prints no "will be built" line); that is what
//! "cached" means here.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{describe, tail_of};
use crate::{BuildError, Progress};

/// How often a plain (non-terminal) progress display gets a "still building" line.
const HEARTBEAT: Duration = Duration::from_secs(20);

pub(crate) struct Realised {
    /// The output path.
    pub out: String,
    /// False when every output was already valid: nothing was built.
    pub built: bool,
}

/// Builds `file` and roots its output at `out_link`.
pub(crate) fn nix_build(
    file: &Path,
    out_link: &Path,
    group: &str,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Realised, BuildError> {
    let mut cmd = Command::new("nix-build");
    cmd.arg(file).arg("-o").arg(out_link);
    let command = describe(&cmd);
    tracing::info!(%command, "realising");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Spawn { group: group.to_string(), command: command.clone(), source })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let built = AtomicBool::new(false);
    let (tail, out) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut compiled = 0usize;
            let mut last_beat = Instant::now();
            tail_of(stderr, |line| {
                tracing::debug!(target: "nix-build", "{line}");
                let trimmed = line.trim_start();
                if trimmed.contains("will be built") {
                    built.store(true, Ordering::Relaxed);
                } else if let Some(rest) = trimmed.strip_prefix("building '") {
                    let drv = rest.trim_end_matches("'...").trim_end_matches('\'');
                    progress(Progress::Step(&format!("building {drv} in the sandbox")));
                    last_beat = Instant::now();
                } else if trimmed.starts_with("Compiling ") {
                    compiled += 1;
                }
                progress(Progress::Log(line));
                if last_beat.elapsed() >= HEARTBEAT {
                    last_beat = Instant::now();
                    progress(Progress::Step(&format!("still building: {compiled} crates compiled, now: {trimmed}")));
                }
            })
        });
        let out = std::io::read_to_string(stdout).unwrap_or_default();
        (reader.join().unwrap_or_default(), out)
    });
    let status = child.wait().map_err(|source| BuildError::Spawn {
        group: group.to_string(),
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Command {
            group: group.to_string(),
            command,
            status: status.to_string(),
            stderr_tail: tail,
        });
    }
    let out = out.lines().last().unwrap_or("").trim().to_string();
    if !out.starts_with("/nix/store/") {
        return Err(BuildError::NoProgram {
            group: group.to_string(),
            message: format!("`{command}` printed no output path\n{tail}"),
        });
    }
    Ok(Realised { out, built: built.load(Ordering::Relaxed) })
}
