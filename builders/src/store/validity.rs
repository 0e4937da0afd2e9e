//! Asking the local Nix store which paths it already has, many at a time.
//!
//! `nix-store --check-validity --print-invalid P…` prints the invalid paths and exits 0, so one
//! process answers for a whole build plan (about 15 ms, nearly all of it start-up) where a
//! `test -e` would not consult the database and a call per path would cost 15 ms each.

use std::io;
use std::process::Command;

use super::path::StorePath;

/// Paths per `nix-store` process: far below the kernel's argument limit (about 80 bytes a path).
const PATHS_PER_CALL: usize = 10_000;

/// The paths among `paths` that are not valid in the local store (not built or added, or
/// garbage-collected), in the order given. One `nix-store` process per 10,000 paths; none for an
/// empty slice.
pub fn invalid_paths(paths: &[StorePath]) -> io::Result<Vec<StorePath>> {
    invalid_paths_with("nix-store", paths)
}

/// [`invalid_paths`] with an explicit `nix-store` program.
pub fn invalid_paths_with(nix_store: &str, paths: &[StorePath]) -> io::Result<Vec<StorePath>> {
    let mut invalid = Vec::new();
    for chunk in paths.chunks(PATHS_PER_CALL) {
        let output = Command::new(nix_store)
            .args(["--check-validity", "--print-invalid"])
            .args(chunk.iter().map(ToString::to_string))
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("could not run `{nix_store} --check-validity`: {e}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(io::Error::other(format!(
                "`{nix_store} --check-validity --print-invalid` with {} paths failed ({}):\n{}",
                chunk.len(),
                output.status,
                tail.join("\n")
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines().filter(|l| !l.is_empty()) {
            let path = line.parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("`{nix_store} --check-validity` printed `{line}`: {e}"),
                )
            })?;
            invalid.push(path);
        }
    }
    Ok(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_runs_nothing() {
        assert!(invalid_paths_with("/nonexistent/nix-store", &[]).unwrap().is_empty());
    }

    #[test]
    fn missing_program_is_an_error_naming_it() {
        let p: StorePath = "/nix/store/00000000000000000000000000000000-x".parse().unwrap();
        let err = invalid_paths_with("/nonexistent/nix-store", &[p]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/nix-store --check-validity"), "{err}");
    }
}
