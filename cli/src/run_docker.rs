//! `tg-nix run` with the `local:docker` runner: an image per built program (written by tg-nix,
//! loaded only when Docker lacks it), then each run through `tg_nix_runner::local_docker`; and
//! `tg-nix terminate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tg_nix_builders::image::{Image, ImageSpec};
use tg_nix_runner::local_docker::{self, DockerGroup, DockerRunConfig, DockerRunSpec};

use crate::args::RunArgs;
use crate::error::{exit, CliError};
use crate::home::Home;
use crate::run::{finish, new_run_id, print_progress, record_run, RunPlan};

/// Runs every selected run of `plan` in containers; `programs` maps build groups to programs.
pub async fn run(
    args: &RunArgs,
    plan: &RunPlan,
    programs: &BTreeMap<String, PathBuf>,
    home: &Home,
    cancel: CancellationToken,
) -> Result<i32, CliError> {
    let prepared = &plan.target.prepared;
    let config = run_config(&prepared.run_config)?;
    let docker = local_docker::connect().await.map_err(|e| {
        CliError::from(e).with_hint(
            "start the Docker daemon (scripts/setup.sh starts dockerd when `docker info` fails), or point \
             DOCKER_HOST at one; local:docker needs root or membership in the docker group",
        )
    })?;

    // One image per distinct program.
    let mut images: BTreeMap<PathBuf, String> = BTreeMap::new();
    for program in programs.values() {
        if images.contains_key(program) {
            continue;
        }
        let started = Instant::now();
        let (program_c, plan_name) = (program.clone(), prepared.plan.clone());
        let image = tokio::task::spawn_blocking(move || {
            ImageSpec::for_program(&program_c, &plan_name).and_then(|spec| Image::compute(&spec))
        })
        .await
        .map_err(|e| CliError::infra(format!("image task failed: {e}")))??;
        let work = home.work_dir().join("images");
        let writer = image.clone();
        let groups: Vec<&str> = programs.iter().filter(|(_, p)| *p == program).map(|(g, _)| g.as_str()).collect();
        let loaded = local_docker::ensure_image(&docker, &image.id, &image.tag, &work, move |path| {
            writer.write_tar(path).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| {
            CliError::from(e).with_hint(format!(
                "the image of group{} {} could not be written or loaded into Docker; its tar is written under {} \
                 (is there space?) and removed afterwards; `tg-nix run` tries again next time",
                if groups.len() > 1 { "s" } else { "" },
                groups.join(", "),
                work.display()
            ))
        })?;
        eprintln!(
            "image  {} {} {} in {:.2}s",
            image.tag,
            &image.id[..19.min(image.id.len())],
            if loaded { "loaded" } else { "present" },
            started.elapsed().as_secs_f64()
        );
        images.insert(program.clone(), image.id.clone());
    }

    let mut reports = Vec::new();
    for run_id in &plan.run_ids {
        if cancel.is_cancelled() {
            break;
        }
        let Some(run) = prepared.runs.iter().find(|r| &r.id == run_id) else { continue };
        let id = new_run_id();
        let groups = run
            .groups
            .iter()
            .map(|g| DockerGroup {
                id: g.id.clone(),
                image: images[&programs[&g.build_group]].clone(),
                instances: g.instances,
                params: g.test_params.clone(),
                profiles: g.profiles.clone(),
            })
            .collect();
        let outputs_dir = home.outputs_dir("local_docker", &prepared.plan).join(&id);
        let spec = DockerRunSpec {
            run_id: id.clone(),
            plan: prepared.plan.clone(),
            case: prepared.case.clone(),
            groups,
            outputs_dir: outputs_dir.clone(),
            work_dir: home.work_dir().join("runs").join(&id),
            timeout: args.timeout,
            disable_metrics: prepared.disable_metrics,
            config: config.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let printer = tokio::spawn(print_progress(rx));
        let outcome = local_docker::run(&docker, spec, tx, cancel.clone()).await?;
        let _ = printer.await;
        reports.push(record_run(plan, run_id, &outcome, &outputs_dir, home, &cancel, args.json));
    }
    Ok(finish(&reports, args, &cancel))
}

/// `run_config` keys of local:docker; unknown keys are ignored (Testground files carry extras).
fn run_config(table: &toml::Table) -> Result<DockerRunConfig, CliError> {
    let bad = |key: &str, want: &str| {
        CliError::input(format!("run_config.{key}: expected {want}"), format!("fix `{key}` in [global.run_config]"))
    };
    let mut config = DockerRunConfig::default();
    if let Some(v) = table.get("keep_containers") {
        config.keep_containers = v.as_bool().ok_or_else(|| bad("keep_containers", "true or false"))?;
    }
    if let Some(v) = table.get("outcomes_collection_timeout") {
        config.outcomes_collection_timeout = match v {
            toml::Value::Integer(secs) if *secs >= 0 => Duration::from_secs(*secs as u64),
            toml::Value::String(s) => humantime::parse_duration(s)
                .map_err(|_| bad("outcomes_collection_timeout", "a duration like \"45s\""))?,
            _ => return Err(bad("outcomes_collection_timeout", "a duration like \"45s\"")),
        };
    }
    if let Some(v) = table.get("exposed_ports") {
        let t = v.as_table().ok_or_else(|| bad("exposed_ports", "a table of label = port"))?;
        for (label, port) in t {
            let port = match port {
                toml::Value::Integer(p) => u16::try_from(*p).ok(),
                toml::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| bad(&format!("exposed_ports.{label}"), "a port number"))?;
            config.exposed_ports.insert(label.clone(), port);
        }
    }
    if let Some(v) = table.get("additional_hosts") {
        let list = v.as_array().ok_or_else(|| bad("additional_hosts", "a list of host names"))?;
        config.additional_hosts = list
            .iter()
            .map(|h| h.as_str().map(String::from).ok_or_else(|| bad("additional_hosts", "a list of host names")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = table.get("ulimits") {
        let list = v.as_array().ok_or_else(|| bad("ulimits", "a list like [\"nofile=1048576:1048576\"]"))?;
        config.ulimits = list
            .iter()
            .map(|u| u.as_str().map(String::from).ok_or_else(|| bad("ulimits", "a list of strings")))
            .collect::<Result<_, _>>()?;
    }
    // Not a Testground key: containers created and started at once (default 16, as Testground).
    if let Some(v) = table.get("start_parallelism") {
        config.start_parallelism = match v {
            toml::Value::Integer(n) => usize::try_from(*n).ok(),
            toml::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("start_parallelism", "a number of containers, at least 1"))?;
    }
    if let Some(v) = table.get("log_level") {
        config.log_level = Some(v.as_str().ok_or_else(|| bad("log_level", "a string"))?.to_string());
    }
    Ok(config)
}

/// `tg-nix terminate`: removes every container and network tg-nix runs left behind.
pub async fn terminate(json: bool) -> Result<i32, CliError> {
    let docker = local_docker::connect().await?;
    let done = local_docker::terminate(&docker).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done).unwrap_or_default());
    } else {
        println!("removed {} containers and {} networks", done.containers, done.networks);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_keys() {
        let table: toml::Table = toml::from_str(
            r#"
            keep_containers = true
            outcomes_collection_timeout = "10s"
            exposed_ports = { chrome_debug = 5321 }
            additional_hosts = ["http-echo"]
            log_level = "debug"
            start_parallelism = 8
            unknown = 1
            "#,
        )
        .unwrap();
        let c = run_config(&table).unwrap();
        assert!(c.keep_containers);
        assert_eq!(c.outcomes_collection_timeout, Duration::from_secs(10));
        assert_eq!(c.exposed_ports["chrome_debug"], 5321);
        assert_eq!(c.additional_hosts, ["http-echo"]);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.start_parallelism, 8);
        let zero: toml::Table = toml::from_str("start_parallelism = \"0\"").unwrap();
        assert!(run_config(&zero).is_err());
        let bad: toml::Table = toml::from_str("keep_containers = \"yes\"").unwrap();
        assert!(run_config(&bad).is_err());
    }
}
