//! tg-nix's home directory and what lives where in it.

use std::path::PathBuf;

/// `<home>/plans/` holds plans looked up by name; `<home>/data/outputs/<runner>/<plan>/<run>/`
/// the outputs of every run (kept); `<home>/data/work/` builds and per-run scratch space
/// (`work/nix/<plan>/` the generated Nix expressions); `<home>/data/state/` the state DB.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home` / `TG_NIX_HOME`, else `$XDG_DATA_HOME/tg-nix`, else `~/.local/share/tg-nix`.
    pub fn locate(explicit: Option<PathBuf>) -> Home {
        let root = explicit
            .or_else(|| {
                std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()).map(|d| PathBuf::from(d).join("tg-nix"))
            })
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/tg-nix")))
            .unwrap_or_else(|| PathBuf::from(".tg-nix"));
        // Paths handed to instances must not depend on the current directory.
        let root = if root.is_relative() { std::env::current_dir().unwrap_or_default().join(root) } else { root };
        Home { root }
    }

    pub fn plans_dir(&self) -> PathBuf {
        self.root.join("plans")
    }

    pub fn outputs_dir(&self, runner: &str, plan: &str) -> PathBuf {
        self.root.join("data/outputs").join(runner).join(plan)
    }

    pub fn work_dir(&self) -> PathBuf {
        self.root.join("data/work")
    }

    /// The state DB (sled): what `tg-nix setup` imported, the nix builders' resolve and vendor
    /// caches.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("data/state")
    }

    /// cargo's target dir for exec:rust builds: `CARGO_TARGET_DIR` if set (cargo's own
    /// convention), else one shared dir under work/, so plans share compiled dependencies.
    pub fn cargo_target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => self.work_dir().join("cargo-target"),
        }
    }
}
