//! The command line, as clap reads it. These are the "low" arguments: no I/O happens here;
//! `run::RunPlan::resolve` turns them into a validated plan before anything is built.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tg-nix",
    version,
    about = "Run Testground test plans: build each group, start its instances, drive them through \
             the built-in sync service, and give a verdict per instance.",
    long_about = None,
    after_help = "Examples:\n  \
        tg-nix run plans/ping-rust/compositions/ping.toml\n  \
        tg-nix run --plan plans/placebo-rust --case ok --instances 3\n  \
        tg-nix build plans/ping-rust/compositions/ping-nix-versions.toml --locked\n  \
        sudo tg-nix setup && tg-nix run --plan plans/ping-rust --case ping --builder nix:rust\n  \
        tg-nix matrix plans/ping-rust/compositions/matrix.toml --workers 4\n  \
        tg-nix describe plans/ping-rust\n  \
        tg-nix doctor\n\n\
        Exit codes: 0 every instance passed, 1 some instance failed, 2 bad input, 3 build failed,\n\
        4 the run could not be set up (host, namespaces, sync service), 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// tg-nix's home: plans/ (looked up by name), data/outputs/ and data/work/.
    /// [default: $XDG_DATA_HOME/tg-nix or ~/.local/share/tg-nix]
    #[arg(long, global = true, env = "TG_NIX_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and run a composition (or a single group given by flags) and report each instance's verdict.
    Run(Box<RunArgs>),
    /// Build every unit of a composition without running it, and pin the nix:* units in
    /// tg-nix.lock beside the composition. Nothing is rebuilt whose inputs did not change.
    Build(Box<BuildArgs>),
    /// Run a composition template once per cell of a matrix file (every combination of its
    /// dimensions): builds shared units once, runs cells in parallel, and reports unchanged cells
    /// from the result cache without running them.
    Matrix(Box<MatrixArgs>),
    /// Show a plan's test cases, their parameters and instance bounds, and its builders and runners.
    Describe {
        /// The plan directory (the one holding manifest.toml).
        plan: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the Testground sync service on its own (for plans started by hand or another runner).
    SyncService {
        /// Address to listen on. Instances of Testground plans dial port 5050.
        #[arg(long, default_value = "127.0.0.1:5050")]
        listen: SocketAddr,
        /// Largest request accepted, in bytes; a larger one closes that connection (code 1009).
        #[arg(long, default_value_t = 1 << 20)]
        max_message_size: usize,
    },
    /// Prepare this host for the hermetic nix:* builders (as root; idempotent): nix.conf with the
    /// sandbox on, GC roots, and the imports (static busybox, the Debian C toolchain as a sysroot
    /// from verified .debs, the Rust toolchain).
    Setup {
        /// Import everything again even when the records say it is in the store.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of progress lines.
        #[arg(long)]
        json: bool,
    },
    /// Write the Nix expressions of a composition's nix:* groups without building them, and print
    /// how to build them by hand (`nix-build FILE -A GROUP`).
    Gen {
        /// A Testground composition file.
        composition: PathBuf,
        /// A template variable for the composition, `name=value`; repeat for more.
        #[arg(long = "set", value_name = "K=V", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a composition as tg-nix parses it: a file holding `{{` rendered as a handlebars
    /// template (with the environment and the --set variables), any other file as it is. The
    /// rendered text is then checked; line numbers in its errors count lines of this output.
    Render {
        /// A Testground composition file.
        composition: PathBuf,
        /// A template variable, `name=value` (`{{vars.name}}`); repeat for more.
        #[arg(long = "set", value_name = "K=V", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
    },
    /// Say what this host can do: root, namespaces, bridges, qdiscs, cargo, nix, docker.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also measure shaping accuracy: the bandwidth 1 and 10 Mbit/s limits really deliver
        /// between two throwaway namespaces (and latency, where the kernel has netem). Needs root.
        #[arg(long)]
        network: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// The run history: every run (and matrix cell) recorded when it ended.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Pack a run's outputs into <run_id>.tgz, laid out as `testground collect` does
    /// (`<run_id>/<group>/<instance>/<file>`).
    Outputs {
        /// The run id (`tg-nix runs list` shows them), or a unique start of one.
        id: String,
        /// Where to write the archive [default: ./<run_id>.tgz].
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Remove every container and network that local:docker runs left behind (found by the label
    /// `tg-nix.run`), e.g. after tg-nix was killed with SIGKILL.
    Terminate {
        /// Print JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
}

/// `tg-nix runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The recorded runs, newest first.
    List {
        /// Only the runs of this plan (its manifest name).
        #[arg(long)]
        plan: Option<String>,
        /// At most this many runs; 0 lists every run.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run: its record, then from its result.json each group's pass count and every failing
    /// instance with its reason.
    Show {
        /// The run id, or a unique start of one.
        id: String,
        /// Print JSON (`{"run": record, "result": result.json}`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What to build: a composition, or a single group given by flags. Shared by `run` and `build`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A Testground composition file. Its global.plan is looked up relative to the file, then
    /// under <home>/plans/.
    #[arg(value_name = "COMPOSITION", required_unless_present = "plan")]
    pub composition: Option<PathBuf>,

    /// Run a single group of this plan directory instead of a composition (group id `single`).
    #[arg(long, value_name = "DIR", conflicts_with = "composition", requires = "case", help_heading = "Single group")]
    pub plan: Option<PathBuf>,
    /// The test case to run (with --plan).
    #[arg(long, visible_alias = "testcase", help_heading = "Single group")]
    pub case: Option<String>,
    /// How many instances (with --plan) [default: the case's minimum].
    #[arg(long, help_heading = "Single group")]
    pub instances: Option<u64>,
    /// The builder (with --plan).
    #[arg(long, default_value = "exec:rust", help_heading = "Single group")]
    pub builder: String,
    /// The runner (with --plan).
    #[arg(long, default_value = "local:exec", help_heading = "Single group")]
    pub runner: String,
    /// A test parameter, `key=value`; repeat for more.
    #[arg(long = "test-param", value_name = "K=V", value_parser = parse_key_value, help_heading = "Single group")]
    pub test_params: Vec<(String, String)>,
    /// A build_config entry, `key=value`; repeat for more.
    #[arg(long = "build-cfg", value_name = "K=V", value_parser = parse_key_value, help_heading = "Single group")]
    pub build_cfg: Vec<(String, String)>,
    /// A run_config entry, `key=value`; repeat for more.
    #[arg(long = "run-cfg", value_name = "K=V", value_parser = parse_key_value, help_heading = "Single group")]
    pub run_cfg: Vec<(String, String)>,

    /// A template variable for the composition, `name=value` (`{{vars.name}}`); repeat for more.
    /// A composition holding `{{` is rendered with these and the environment before parsing.
    #[arg(long = "set", value_name = "K=V", value_parser = parse_key_value, conflicts_with = "plan")]
    pub set: Vec<(String, String)>,

    /// Build exactly what tg-nix.lock (beside the composition) pins: a nix:* unit that the lock
    /// does not have, or that no longer resolves to its pins, is an error; the lock is not written.
    #[arg(long, help_heading = "Build")]
    pub locked: bool,
    /// How many build units to build at the same time.
    #[arg(long, value_name = "N", default_value_t = default_jobs(), help_heading = "Build")]
    pub jobs: usize,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get().clamp(1, 4)).unwrap_or(2)
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print what was built as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Only these [[runs]] ids (comma-separated) [default: all, in file order].
    #[arg(long, value_delimiter = ',')]
    pub run_ids: Vec<String>,
    /// Kill instances still running after this long, and fail them (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Run instances on the host network even as root (no namespaces; Rust SDK plans cannot work).
    #[arg(long)]
    pub host_network: bool,
    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the report files here (created if missing): report.json (as --json),
    /// junit.xml (Jenkins/Ant JUnit), summary.md (for $GITHUB_STEP_SUMMARY) and index.html
    /// (static, self-contained). Log links in them are relative to DIR.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// A matrix file (TOML: `template`, `[dimensions]`, `[[exclude]]`; docs/formats.md).
    #[arg(value_name = "MATRIX")]
    pub matrix: PathBuf,
    /// How many cells run at the same time.
    #[arg(long, value_name = "N", default_value_t = default_jobs())]
    pub workers: usize,
    /// Only the i-th of n shards (1 ≤ i ≤ n): the cells at positions i-1, i-1+n, … of the
    /// matrix's stable order, for splitting a matrix over CI jobs.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Run every cell, even those with a cached result.
    #[arg(long)]
    pub rerun: bool,
    /// Run the cells whose cached result failed; report cached passes from the cache.
    #[arg(long, conflicts_with = "rerun")]
    pub rerun_failed: bool,
    /// Kill a cell's instances still running after this long, and fail them.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How many build units to build at the same time.
    #[arg(long, value_name = "N", default_value_t = default_jobs())]
    pub jobs: usize,
    /// Print the cells and their run reports as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the report files here (as `run --report-dir`): a run per cell, named by its
    /// dimension values.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Run a failed cell again up to N times; a cell that passes on a retry is `flaky`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Fail the matrix (exit 1) when a cell is flaky; by default flaky cells do not fail it.
    #[arg(long)]
    pub fail_on_flaky: bool,
    /// A known-failures file (TOML, docs/formats.md): failing cells matching an unexpired entry
    /// are `known-failure` and do not fail the matrix.
    #[arg(long, value_name = "FILE")]
    pub known_failures: Option<PathBuf>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn single_group_flags() {
        let cli = Cli::try_parse_from([
            "tg-nix",
            "run",
            "--plan",
            "p",
            "--case",
            "ok",
            "--instances",
            "3",
            "--test-param",
            "a=b=c",
            "--timeout",
            "90s",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        let run = *run;
        assert_eq!(run.target.test_params, vec![("a".to_string(), "b=c".to_string())]);
        assert_eq!(run.timeout, Duration::from_secs(90));
        assert_eq!(run.target.instances, Some(3));
        assert!(!run.target.locked);
    }

    #[test]
    fn set_flags() {
        let cli = Cli::try_parse_from(["tg-nix", "run", "c.toml", "--set", "n=2", "--set", "v=a=b"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.target.set, [("n".to_string(), "2".to_string()), ("v".to_string(), "a=b".to_string())]);
        assert!(Cli::try_parse_from(["tg-nix", "run", "--plan", "p", "--case", "x", "--set", "n=1"]).is_err());
        assert!(Cli::try_parse_from(["tg-nix", "build", "c.toml", "--set", "novalue"]).is_err());
        let cli = Cli::try_parse_from(["tg-nix", "render", "c.toml", "--set", "n=1"]).unwrap();
        assert!(matches!(cli.command, Command::Render { set, .. } if set.len() == 1));
        let cli = Cli::try_parse_from(["tg-nix", "gen", "c.toml", "--set", "n=1"]).unwrap();
        assert!(matches!(cli.command, Command::Gen { set, .. } if set.len() == 1));
    }

    #[test]
    fn matrix_flags() {
        let cli =
            Cli::try_parse_from(["tg-nix", "matrix", "m.toml", "--workers", "3", "--shard", "1/2", "--rerun-failed"])
                .unwrap();
        let Command::Matrix(m) = cli.command else { panic!("not matrix") };
        assert_eq!((m.workers, m.shard.as_deref(), m.rerun_failed, m.rerun), (3, Some("1/2"), true, false));
        assert!(Cli::try_parse_from(["tg-nix", "matrix", "m.toml", "--rerun", "--rerun-failed"]).is_err());
        assert!(Cli::try_parse_from(["tg-nix", "matrix"]).is_err());
    }

    #[test]
    fn plan_requires_case_and_excludes_composition() {
        assert!(Cli::try_parse_from(["tg-nix", "run", "--plan", "p"]).is_err());
        assert!(Cli::try_parse_from(["tg-nix", "run", "c.toml", "--plan", "p", "--case", "x"]).is_err());
        assert!(Cli::try_parse_from(["tg-nix", "run"]).is_err());
        assert!(Cli::try_parse_from(["tg-nix", "run", "--plan", "p", "--case", "x", "--test-param", "=v"]).is_err());
        let cli = Cli::try_parse_from(["tg-nix", "build", "c.toml", "--locked", "--jobs", "1"]).unwrap();
        let Command::Build(build) = cli.command else { panic!("not build") };
        assert!(build.target.locked);
        assert_eq!(build.target.jobs, 1);
    }
}
