//! The `tg-nix` binary: commands, orchestration and reports. Libraries do the work (model, builders,
//! runner, sync); this crate reads the command line, wires them together, prints, and exits with a
//! documented code (see `error::exit`).

mod args;
mod build;
mod doctor;
mod error;
mod gen;
mod history;
mod home;
mod lock;
mod matrix;
mod progress;
mod render;
mod report;
mod run;
mod run_docker;
mod setup;

use std::io::Write as _;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;

use args::{Cli, Command, RunsCommand};
use error::{exit, CliError};
use home::Home;

fn main() {
    // Rust ignores SIGPIPE, which turns `tg-nix … | head` into a panic on the next print. Restore
    // the default so a closed pipe ends tg-nix quietly, like any Unix filter.
    // SAFETY: called before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::INFRA);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    let _ = std::io::stdout().flush();
    // Don't wait for blocked readers (a stdin, a hung child pipe) to finish at shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn dispatch(cli: Cli) -> i32 {
    let home = Home::locate(cli.home);
    let result = match cli.command {
        Command::Run(args) => {
            let cancel = CancellationToken::new();
            tokio::spawn(interrupts(cancel.clone()));
            run::run(*args, home, cancel).await
        }
        Command::Matrix(args) => {
            let cancel = CancellationToken::new();
            tokio::spawn(interrupts(cancel.clone()));
            matrix::run(*args, home, cancel).await
        }
        Command::Build(args) => {
            let home = home.clone();
            // Builds block (cargo, nix-build): keep them off the async workers.
            tokio::task::spawn_blocking(move || build::run(&args, &home))
                .await
                .unwrap_or_else(|e| Err(CliError::infra(format!("build task failed: {e}"))))
        }
        Command::Describe { plan, json } => describe(&plan, json),
        Command::SyncService { listen, max_message_size } => sync_service(listen, max_message_size).await,
        Command::Setup { force, json } => {
            let home = home.clone();
            // Imports block on nix-store and apt for seconds: keep them off the async workers.
            tokio::task::spawn_blocking(move || setup::run(&home, force, json))
                .await
                .unwrap_or_else(|e| Err(CliError::infra(format!("setup task failed: {e}"))))
        }
        Command::Gen { composition, set, json } => {
            let home = home.clone();
            let data = tg_nix_model::TemplateData::from_env(set);
            tokio::task::spawn_blocking(move || gen::run(&composition, &data, &home, json))
                .await
                .unwrap_or_else(|e| Err(CliError::infra(format!("gen task failed: {e}"))))
        }
        Command::Render { composition, set } => render::run(&composition, set),
        Command::Doctor { json, network } => {
            let checks = doctor::checks(&home).await;
            let selfcheck = if network { Some(doctor::network().await) } else { None };
            if json {
                let value = match &selfcheck {
                    Some(sc) => serde_json::json!({"checks": checks, "network": doctor::network_json(sc)}),
                    None => serde_json::to_value(&checks).unwrap_or_default(),
                };
                println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                print!("{}", doctor::render(&checks));
                if let Some(sc) = &selfcheck {
                    print!("\n{}", doctor::render_network(sc));
                }
            }
            Ok(exit::OK)
        }
        Command::Runs { command } => {
            let home = home.clone();
            // The state DB open may wait for another tg-nix process: off the async workers.
            tokio::task::spawn_blocking(move || match command {
                RunsCommand::List { plan, limit, json } => history::list(&home, plan.as_deref(), limit, json),
                RunsCommand::Show { id, json } => history::show(&home, &id, json),
            })
            .await
            .unwrap_or_else(|e| Err(CliError::infra(format!("runs task failed: {e}"))))
        }
        Command::Outputs { id, output } => {
            let home = home.clone();
            tokio::task::spawn_blocking(move || history::outputs(&home, &id, output))
                .await
                .unwrap_or_else(|e| Err(CliError::infra(format!("outputs task failed: {e}"))))
        }
        Command::Terminate { json } => run_docker::terminate(json).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tg-nix", &mut std::io::stdout());
            Ok(exit::OK)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.render());
            e.code
        }
    }
}

/// The first SIGINT (or SIGTERM) cancels the run: instances get SIGTERM, then SIGKILL after a
/// grace period, and everything the run made is removed. The second one exits at once; the kernel
/// then kills the instances (PDEATHSIG) and their namespaces go with them.
async fn interrupts(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("interrupted: stopping instances (press Ctrl-C again to exit at once)");
    cancel.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("interrupted again: exiting now");
    std::process::exit(exit::INTERRUPTED);
}

fn describe(plan: &std::path::Path, json: bool) -> Result<i32, CliError> {
    let manifest = tg_nix_model::Manifest::load(&plan.join("manifest.toml"))?;
    if json {
        let cases: Vec<serde_json::Value> = manifest
            .testcases
            .iter()
            .map(|c| {
                let params: serde_json::Map<String, serde_json::Value> = c
                    .params
                    .iter()
                    .map(|(k, p)| {
                        (k.clone(), serde_json::json!({
                            "type": p.kind, "desc": p.desc, "unit": p.unit,
                            "default": p.default.as_ref().map(tg_nix_model::param_default_string),
                        }))
                    })
                    .collect();
                serde_json::json!({ "name": c.name, "instances": { "min": c.instances.min, "max": c.instances.max }, "params": params })
            })
            .collect();
        let doc = serde_json::json!({
            "name": manifest.name,
            "builders": manifest.builders.keys().collect::<Vec<_>>(),
            "runners": manifest.runners.keys().collect::<Vec<_>>(),
            "testcases": cases,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(exit::OK);
    }
    let mut out = format!("plan {}\n", manifest.name);
    out.push_str(&format!("  builders: {}\n", manifest.builders.keys().cloned().collect::<Vec<_>>().join(", ")));
    out.push_str(&format!("  runners:  {}\n", manifest.runners.keys().cloned().collect::<Vec<_>>().join(", ")));
    for case in &manifest.testcases {
        out.push_str(&format!("\ncase {}  (instances {}..={})\n", case.name, case.instances.min, case.instances.max));
        for (name, p) in &case.params {
            let default = p.default.as_ref().map(tg_nix_model::param_default_string).unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "  {name}: {} = {default}{}{}\n",
                p.kind.as_deref().unwrap_or("string"),
                p.unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default(),
                p.desc.as_deref().map(|d| format!("  — {d}")).unwrap_or_default(),
            ));
        }
    }
    print!("{out}");
    Ok(exit::OK)
}

async fn sync_service(listen: std::net::SocketAddr, max_message_size: usize) -> Result<i32, CliError> {
    tg_nix_sync::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        CliError::infra(format!("cannot listen on {listen}: {e}")).with_hint("choose another address with --listen")
    })?;
    let local = listener.local_addr().unwrap_or(listen);
    if !local.ip().is_loopback() {
        eprintln!("warning: the sync service has no authentication; {local} is reachable from other hosts");
    }
    eprintln!("sync service listening on ws://{local} (Ctrl-C to stop)");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let config = tg_nix_sync::ServerConfig { max_message_size, ..Default::default() };
    tg_nix_sync::serve(listener, tg_nix_sync::Service::new(), config, shutdown)
        .await
        .map_err(|e| CliError::infra(format!("sync service failed: {e}")))?;
    Ok(exit::OK)
}
