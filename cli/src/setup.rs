//! `tg-nix setup`: prepare the host for the nix:* builders (see tg_nix_builders::nix::setup).

use tg_nix_builders::nix::{setup, SetupOptions};

use crate::error::{exit, CliError};
use crate::home::Home;

pub fn run(home: &Home, force: bool, json: bool) -> Result<i32, CliError> {
    let state_dir = home.state_dir();
    let work_dir = home.work_dir();
    let progress = |line: &str| {
        if !json {
            eprintln!("setup  {line}");
        }
    };
    let report = setup(&SetupOptions { state_dir: &state_dir, work_dir: &work_dir, force, progress: &progress })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        eprintln!("setup  ready in {:.2}s (state: {})", report.seconds, state_dir.display());
    }
    Ok(exit::OK)
}
