//! The CLI's one error type: a headline, its causes, a hint, and a documented exit code.

use std::fmt::Write as _;

/// Exit codes of `tg-nix` (also listed in `tg-nix --help` and docs/cli.md).
pub mod exit {
    pub const OK: i32 = 0;
    /// The run happened and at least one instance did not pass.
    pub const TESTS_FAILED: i32 = 1;
    /// The composition, manifest or command line is wrong.
    pub const BAD_INPUT: i32 = 2;
    pub const BUILD_FAILED: i32 = 3;
    /// The host could not set the run up (namespaces, sync service, files).
    pub const INFRA: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub headline: String,
    pub causes: Vec<String>,
    pub hint: Option<String>,
}

impl CliError {
    pub fn input(headline: impl Into<String>, hint: impl Into<String>) -> CliError {
        CliError { code: exit::BAD_INPUT, headline: headline.into(), causes: Vec::new(), hint: Some(hint.into()) }
    }

    pub fn infra(headline: impl Into<String>) -> CliError {
        CliError { code: exit::INFRA, headline: headline.into(), causes: Vec::new(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// `error: …`, each cause under `caused by:`, then `hint: …`.
    pub fn render(&self) -> String {
        let mut out = format!("error: {}\n", self.headline);
        for cause in &self.causes {
            let _ = writeln!(out, "  caused by: {cause}");
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "  hint: {hint}");
        }
        out
    }
}

/// Builds the cause list from an error's source chain.
fn chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut causes = Vec::new();
    let mut source = err.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    causes
}

impl From<tg_nix_model::ModelError> for CliError {
    fn from(e: tg_nix_model::ModelError) -> CliError {
        // The model's message already names the file, the key and (in its hint) the fix.
        CliError { code: exit::BAD_INPUT, headline: e.to_string(), causes: Vec::new(), hint: None }
    }
}

impl From<tg_nix_builders::BuildError> for CliError {
    fn from(e: tg_nix_builders::BuildError) -> CliError {
        use tg_nix_builders::BuildError as B;
        let code = match &e {
            B::UnknownBuilder { .. } | B::Config { .. } | B::Unsupported { .. } | B::Locked { .. } => exit::BAD_INPUT,
            B::Spawn { .. } | B::Command { .. } | B::NoProgram { .. } | B::Rewrite { .. } => exit::BUILD_FAILED,
            B::NotReady { .. } | B::Setup { .. } | B::Io { .. } | B::State { .. } | B::Image { .. } => exit::INFRA,
        };
        let hint = match &e {
            B::Spawn { command, .. } if command.starts_with("nix") => {
                Some("is Nix installed? `tg-nix setup` (as root) installs nothing but says what is missing; scripts/setup.sh installs nix-bin".to_string())
            }
            B::Spawn { .. } => Some("is cargo installed and on PATH? (`tg-nix doctor` checks)".to_string()),
            B::Rewrite { .. } => Some("fix the module or version in the group's [[groups.build.dependencies]]".to_string()),
            B::NotReady { fix, .. } => Some(fix.clone()),
            B::Setup { .. } => Some("`tg-nix doctor` says what this host has; `tg-nix setup --force` imports everything again".to_string()),
            _ => None,
        };
        let headline = match &e {
            B::NotReady { .. } => format!("the nix builders are not ready: {e}"),
            B::Setup { .. } => e.to_string(),
            _ => format!("build failed: {e}"),
        };
        CliError { code, headline, causes: chain(&e), hint }
    }
}

impl From<tg_nix_runner::RunnerError> for CliError {
    fn from(e: tg_nix_runner::RunnerError) -> CliError {
        use tg_nix_runner::RunnerError as R;
        let (code, hint) = match &e {
            R::Model(_) => (exit::BAD_INPUT, None),
            R::Net(_) => (
                exit::INFRA,
                Some("run as root for network namespaces, or pass --host-network (no isolation); `tg-nix doctor` says what this host can do".to_string()),
            ),
            _ => (exit::INFRA, None),
        };
        CliError { code, headline: format!("the run could not be set up: {e}"), causes: chain(&e), hint }
    }
}
