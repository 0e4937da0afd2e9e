//! The `local:docker` runner: one container per instance, driven through the Docker Engine API
//! (bollard; never the docker CLI), with Testground's names, labels and networks (compat §6.2).
//!
//! - The control network `testground-control` (192.18.0.0/16, gateway 192.18.0.1) is created if
//!   missing. The embedded sync service listens on the host at the gateway, port 5050, and every
//!   container resolves `testground-sync-service` to it through its /etc/hosts (extra hosts).
//! - A per-run internal data network `tg-<plan>-<case>-<run>-default` with Testground's subnet
//!   allocation (`16.0.0.0/16`, then `16.1.0.0/16`, … by the number of such networks) and labels.
//! - Each container is created on the control network (eth0), connected to the data network
//!   before it starts (eth1) with a static address and MAC (host `index + 2`, 02:42 + IP), started
//!   with bounded parallelism, and its logs are streamed into the instance's outputs exactly as
//!   local:exec writes them. Once it runs, its `eth1` gets an externally learned neighbour entry
//!   for every other container of the run ([`crate::netns::seed_neighbours`]), so all-to-all
//!   traffic does not depend on the host-wide ARP cache cap (docs/architecture.md, "Scale").
//! - The runner plays the sidecar: once a container runs with both networks it follows the
//!   container's `network:<hostname>` topic and applies its configs inside `/proc/<pid>/ns/net`
//!   ([`crate::shaping`], as local:exec does: data link `eth1`, control link `eth0`, host routes
//!   to the sync service and the `name:ip` additional hosts kept under deny_all), then signals
//!   `network-initialized` for it and reports its pid ([`RunEvent::InstanceStarted`]). A config
//!   that cannot be applied stops the run (verdict `network_config` for that instance, `aborted`
//!   for the others).
//! - Verdicts come from [`crate::verdict`] like local:exec's, plus the container's OOM kill.
//! - Containers and the data network are removed at the end (success, failure, timeout, cancel)
//!   unless `keep_containers`; [`terminate`] removes what a killed tg-nix left, by label.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ImportImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tg_nix_model::InstanceEnv;
use tg_nix_sync::keys::Namespace;
use tg_nix_sync::{ServerConfig, Service};

use crate::capability::Capabilities;
use crate::local_exec::{
    apply_events, capture_stderr, capture_stdout, create_private_dir, unique_hostname, watch_run_events,
    write_run_out_if_missing, InstanceResult, RunOutcome, SYNC_PORT,
};
use crate::netns::{self, mac_for, Ipv4Cidr, MAX_PRESEEDED_INSTANCES};
use crate::shaping::{self, RunAbort};
use crate::verdict::{decide, Exit, Observed};
use crate::{RunEvent, RunnerError};

/// Testground's control network.
pub const CONTROL_NETWORK: &str = "testground-control";
pub const CONTROL_SUBNET: &str = "192.18.0.0/16";
pub const CONTROL_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 18, 0, 1);
/// The label every container and data network of a tg-nix run carries (value: the run id);
/// `tg-nix terminate` removes whatever has it.
pub const RUN_LABEL: &str = "tg-nix.run";
/// The container's interface on the control network (its NetworkMode, attached first).
pub const CONTROL_IFNAME: &str = "eth0";
/// The container's interface on the data network (connected second, before start).
pub const DATA_IFNAME: &str = "eth1";
/// How long a cancelled container gets between SIGTERM and SIGKILL.
const CANCEL_GRACE_SECS: i32 = 3;
/// How long the Docker API may take to answer one request (streams are not bounded by it).
const API_TIMEOUT: Duration = Duration::from_secs(300);

/// `run_config` of local:docker (Testground's keys that make sense here).
#[derive(Debug, Clone)]
pub struct DockerRunConfig {
    /// Leave containers and the data network after the run (for debugging).
    pub keep_containers: bool,
    /// How long to wait for an ended container's output to be collected.
    pub outcomes_collection_timeout: Duration,
    /// label → port: env `<LABEL>_PORT`, the port exposed and published on a random host port.
    pub exposed_ports: BTreeMap<String, u16>,
    /// Env ADDITIONAL_HOSTS; entries `name:ip` also become /etc/hosts lines.
    pub additional_hosts: Vec<String>,
    pub log_level: Option<String>,
    /// `name=soft:hard`, Docker's syntax.
    pub ulimits: Vec<String>,
    /// Containers created and started at once (Testground: 16).
    pub start_parallelism: usize,
}

impl Default for DockerRunConfig {
    fn default() -> Self {
        DockerRunConfig {
            keep_containers: false,
            outcomes_collection_timeout: Duration::from_secs(45),
            exposed_ports: BTreeMap::new(),
            additional_hosts: Vec::new(),
            log_level: None,
            ulimits: vec![default_nofile()],
            start_parallelism: 16,
        }
    }
}

/// Testground's `nofile=1048576:1048576`, lowered to this host's hard limit: a container cannot
/// get more than the daemon has (runc fails to start it), and the daemon usually has what we have.
fn default_nofile() -> String {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_max } else { 1024 };
    let n = hard.min(1_048_576);
    format!("nofile={n}:{n}")
}

/// One group of instances that run the same image.
#[derive(Debug, Clone)]
pub struct DockerGroup {
    /// TEST_GROUP_ID.
    pub id: String,
    /// The image id (`sha256:…`) or tag.
    pub image: String,
    pub instances: u64,
    pub params: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, String>,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct DockerRunSpec {
    pub run_id: String,
    pub plan: String,
    pub case: String,
    pub groups: Vec<DockerGroup>,
    /// `<outputs>/<plan>/<run_id>`; instance outputs go to `<group>/<index>/` below it.
    pub outputs_dir: PathBuf,
    /// Temp dirs of this run (mounted at /temp); removed when the run ends.
    pub work_dir: PathBuf,
    pub timeout: Duration,
    pub disable_metrics: bool,
    pub config: DockerRunConfig,
}

fn docker_err(what: impl Into<String>) -> impl FnOnce(DockerError) -> RunnerError {
    let what = what.into();
    move |e| RunnerError::Docker { what, message: docker_message(&e) }
}

/// The daemon's own message when there is one (bollard's Display adds noise around it).
fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Connects to the Docker Engine (DOCKER_HOST, else the default socket) and agrees on an API
/// version with it (Docker 20.10 speaks 1.41).
pub async fn connect() -> Result<Docker, RunnerError> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let unreachable =
        |e: DockerError| RunnerError::DockerUnavailable { host: host.clone(), message: docker_message(&e) };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?.with_timeout(API_TIMEOUT);
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// Makes sure Docker has the image `id` tagged `tag`. When it has the id already nothing is
/// written or loaded (returns false); otherwise `write_tar` writes the image tar to the path it
/// is given (under `work_dir`), which is loaded and removed (returns true).
pub async fn ensure_image(
    docker: &Docker,
    id: &str,
    tag: &str,
    work_dir: &Path,
    write_tar: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<bool, RunnerError> {
    match docker.inspect_image(id).await {
        Ok(_) => {
            tag_image(docker, id, tag).await?;
            return Ok(false);
        }
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(docker_err(format!("inspecting image {id}"))(e)),
    }
    create_private_dir(work_dir)?;
    let tar = work_dir.join(format!("image-{}.tar", id.trim_start_matches("sha256:")));
    let loaded = load_tar(docker, id, tag, &tar, write_tar).await;
    let _ = std::fs::remove_file(&tar);
    loaded?;
    Ok(true)
}

async fn load_tar(
    docker: &Docker,
    id: &str,
    tag: &str,
    tar: &Path,
    write_tar: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), RunnerError> {
    write_tar(tar).map_err(|message| RunnerError::Image { tag: tag.to_string(), message })?;
    let file =
        tokio::fs::File::open(tar).await.map_err(|source| RunnerError::Io { path: tar.to_path_buf(), source })?;
    let body = tokio_util::io::ReaderStream::new(file);
    let mut stream = docker.import_image_stream(ImportImageOptionsBuilder::default().quiet(true).build(), body, None);
    // Every item counts: an error can come after a first Ok (compat notes on bollard).
    while let Some(item) = stream.next().await {
        item.map_err(|e| RunnerError::Image { tag: tag.to_string(), message: docker_message(&e) })?;
    }
    match docker.inspect_image(id).await {
        Ok(_) => Ok(()),
        Err(e) => Err(RunnerError::Image {
            tag: tag.to_string(),
            message: format!("Docker loaded the tar but has no image {id} ({})", docker_message(&e)),
        }),
    }
}

async fn tag_image(docker: &Docker, id: &str, tag: &str) -> Result<(), RunnerError> {
    let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    docker
        .tag_image(id, Some(TagImageOptionsBuilder::default().repo(repo).tag(version).build()))
        .await
        .map_err(docker_err(format!("tagging {id} as {tag}")))
}

/// Reuses `testground-control` when it has Testground's subnet, or creates it.
async fn ensure_control_network(docker: &Docker) -> Result<(), RunnerError> {
    match docker.inspect_network(CONTROL_NETWORK, None).await {
        Ok(net) => {
            let subnets: Vec<String> =
                net.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().filter_map(|c| c.subnet).collect();
            if subnets.iter().any(|s| s == CONTROL_SUBNET) {
                Ok(())
            } else {
                Err(RunnerError::Docker {
                    what: format!("network {CONTROL_NETWORK}"),
                    message: format!(
                        "it exists with subnet {} instead of {CONTROL_SUBNET}; remove it (no container may use it) \
                         and run again",
                        subnets.join(", ")
                    ),
                })
            }
        }
        Err(e) if is_status(&e, 404) => {
            let request = NetworkCreateRequest {
                name: CONTROL_NETWORK.to_string(),
                driver: Some("bridge".to_string()),
                attachable: Some(true),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(CONTROL_SUBNET.to_string()),
                        gateway: Some(CONTROL_GATEWAY.to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(HashMap::from([("testground.name".to_string(), "control".to_string())])),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => Ok(()),
                // Another run created it in the meantime.
                Err(e) if is_status(&e, 409) => Ok(()),
                Err(e) => Err(docker_err(format!("creating network {CONTROL_NETWORK}"))(e)),
            }
        }
        Err(e) => Err(docker_err(format!("inspecting network {CONTROL_NETWORK}"))(e)),
    }
}

/// Testground's `nextDataNetwork(n)`: `(16 + n/256).(n%256).0.0/16`.
pub fn data_subnet(n: u32) -> Option<(String, Ipv4Addr)> {
    let first = 16 + n / 256;
    if first > 31 {
        return None;
    }
    let second = (n % 256) as u8;
    Some((format!("{first}.{second}.0.0/16"), Ipv4Addr::new(first as u8, second, 0, 1)))
}

/// Docker names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn docker_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// Creates the run's data network; returns its name and subnet.
async fn create_data_network(docker: &Docker, spec: &DockerRunSpec) -> Result<(String, String), RunnerError> {
    let name = docker_name(&format!("tg-{}-{}-{}-default", spec.plan, spec.case, spec.run_id));
    let filters = HashMap::from([("label".to_string(), vec!["testground.name=default".to_string()])]);
    let existing = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(docker_err("listing networks"))?;
    let mut n = existing.len() as u32;
    let mut last_error = String::new();
    // Counting is Testground's rule; a removed network in the middle makes the count collide with
    // one still there, so try the next ones.
    for _ in 0..64 {
        let Some((subnet, gateway)) = data_subnet(n) else { break };
        let labels = HashMap::from([
            ("testground.plan".to_string(), spec.plan.clone()),
            ("testground.testcase".to_string(), spec.case.clone()),
            ("testground.run_id".to_string(), spec.run_id.clone()),
            ("testground.name".to_string(), "default".to_string()),
            (RUN_LABEL.to_string(), spec.run_id.clone()),
        ]);
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_string()),
            internal: Some(true),
            attachable: Some(true),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.clone()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(labels),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => return Ok((name, subnet)),
            Err(e) => {
                last_error = docker_message(&e);
                n += 1;
            }
        }
    }
    Err(RunnerError::Docker { what: format!("creating the data network {name}"), message: last_error })
}

/// One instance to start.
struct Planned {
    group: String,
    group_index: u64,
    global_index: u64,
    hostname: String,
    name: String,
    image: String,
    outputs: PathBuf,
    temp: PathBuf,
    env: Vec<String>,
    /// Its static address on the data network ([`data_host`]), None when the subnet has no room
    /// left (Docker then picks one).
    data_ip: Option<Ipv4Addr>,
}

/// Instance `global` of a run gets host `global + 2` of the data subnet: host 1 is the gateway,
/// as local:exec numbers them.
fn data_host(subnet: Ipv4Cidr, global: u64) -> Option<Ipv4Addr> {
    u32::try_from(global).ok().and_then(|g| g.checked_add(2)).and_then(|n| subnet.host(n))
}

/// Every instance's `(data address, MAC)`, seeded into each container's `eth1` (see
/// [`netns::mac_for`]); empty beyond [`MAX_PRESEEDED_INSTANCES`], where the data network relies on
/// ARP and the host's cap.
fn data_peers(planned: &[Planned]) -> Vec<(Ipv4Addr, [u8; 6])> {
    if planned.len() > MAX_PRESEEDED_INSTANCES as usize {
        tracing::warn!(
            instances = planned.len(),
            limit = MAX_PRESEEDED_INSTANCES,
            "the data network relies on ARP for this many containers: the host's ARP cache \
             (net.ipv4.neigh.default.gc_thresh3, shared by every namespace) must hold every pair \
             of instances that talk, or they fail with \"No route to host\"; raise it on the host \
             if they do"
        );
        return Vec::new();
    }
    planned.iter().filter_map(|p| p.data_ip).map(|ip| (ip, mac_for(ip))).collect()
}

/// Runs every instance of `spec` to its verdict. Returns Err only when the run could not be set
/// up (Docker, networks, the sync service); instance failures are verdicts in the outcome.
pub async fn run(
    docker: &Docker,
    spec: DockerRunSpec,
    progress: UnboundedSender<RunEvent>,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunnerError> {
    let started = Instant::now();
    create_private_dir(&spec.work_dir)?;
    ensure_control_network(docker).await?;

    let addr = SocketAddr::from((CONTROL_GATEWAY, SYNC_PORT));
    let listener = std::net::TcpListener::bind(addr).map_err(|e| RunnerError::Sync { addr, source: e })?;
    listener.set_nonblocking(true).map_err(|e| RunnerError::Sync { addr, source: e })?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| RunnerError::Sync { addr, source: e })?;
    let service = Service::new();
    let server_stop = CancellationToken::new();
    let server =
        tokio::spawn(tg_nix_sync::serve(listener, service.clone(), ServerConfig::default(), server_stop.clone()));
    let ns = Namespace { run: spec.run_id.clone(), plan: spec.plan.clone(), case: spec.case.clone() };
    let watcher = tokio::spawn(watch_run_events(service.subscribe(&ns.run_events()), progress.clone()));

    let result = match create_data_network(docker, &spec).await {
        Ok((network, subnet)) => {
            let result = run_instances(docker, &spec, &network, &subnet, &service, &ns, &progress, &cancel).await;
            if !spec.config.keep_containers {
                cleanup(docker, &spec.run_id).await;
            }
            result
        }
        Err(e) => Err(e),
    };

    server_stop.cancel();
    let _ = server.await;
    let sync_outcomes = watcher.await.unwrap_or_default();
    if let Err(e) = std::fs::remove_dir_all(&spec.work_dir) {
        tracing::warn!("could not remove {}: {e}", spec.work_dir.display());
    }
    let mut instances = result?;
    instances.sort_by_key(|r| r.global_index);
    Ok(RunOutcome { run_id: spec.run_id, instances, sync_outcomes, duration: started.elapsed() })
}

#[allow(clippy::too_many_arguments)]
async fn run_instances(
    docker: &Docker,
    spec: &DockerRunSpec,
    network: &str,
    subnet: &str,
    service: &Service,
    ns: &Namespace,
    progress: &UnboundedSender<RunEvent>,
    cancel: &CancellationToken,
) -> Result<Vec<InstanceResult>, RunnerError> {
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let data_subnet: Ipv4Cidr = subnet.parse().map_err(|e| {
        RunnerError::Internal(format!("the data network {network} has subnet {subnet:?}, not an IPv4 CIDR: {e}"))
    })?;
    // What the kernel can shape, checked before each config is applied (a few ms, once per run).
    let caps = Arc::new(crate::capability::probe().await);
    let total: u64 = spec.groups.iter().map(|g| g.instances).sum();
    let _ = progress.send(RunEvent::RunStarted { run_id: spec.run_id.clone(), instances: total });
    let start_time = SystemTime::now();
    let mut hostnames = HashSet::new();
    let mut planned = Vec::new();
    let mut global = 0u64;
    for group in &spec.groups {
        for index in 0..group.instances {
            let hostname = unique_hostname(&group.id, index, global, &mut hostnames);
            let outputs = spec.outputs_dir.join(&group.id).join(index.to_string());
            create_private_dir(&outputs)?;
            let temp = spec.work_dir.join("temp").join(global.to_string());
            create_private_dir(&temp)?;
            let env = InstanceEnv {
                plan: spec.plan.clone(),
                case: spec.case.clone(),
                run: spec.run_id.clone(),
                instance_count: total,
                group_id: group.id.clone(),
                group_instance_count: group.instances,
                params: group.params.clone(),
                role: String::new(),
                sidecar: true,
                subnet: subnet.to_string(),
                outputs_path: PathBuf::from("/outputs"),
                temp_path: PathBuf::from("/temp"),
                start_time,
                capture_profiles: group.profiles.clone(),
                disable_metrics: spec.disable_metrics,
                hostname: hostname.clone(),
                sync_service_host: "testground-sync-service".to_string(),
                sync_service_port: SYNC_PORT,
                influxdb_url: "http://testground-influxdb:8086".to_string(),
                redis_host: "testground-redis".to_string(),
                log_level: spec.config.log_level.clone(),
            };
            let mut vars: Vec<String> = env.to_vars()?.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !spec.config.additional_hosts.is_empty() {
                vars.push(format!("ADDITIONAL_HOSTS={}", spec.config.additional_hosts.join(",")));
            }
            for (label, port) in &spec.config.exposed_ports {
                vars.push(format!("{}_PORT={port}", label.trim().to_uppercase()));
            }
            planned.push(Planned {
                group: group.id.clone(),
                group_index: index,
                global_index: global,
                hostname,
                name: docker_name(&format!("tg-{}-{}-{}-{}-{}", spec.plan, spec.case, spec.run_id, group.id, index)),
                image: group.image.clone(),
                outputs,
                temp,
                env: vars,
                data_ip: data_host(data_subnet, global),
            });
            global += 1;
        }
    }

    let shared = Arc::new(Shared {
        docker: docker.clone(),
        network: network.to_string(),
        peers: data_peers(&planned),
        spec_labels: HashMap::from([
            ("testground.purpose".to_string(), "plan".to_string()),
            ("testground.plan".to_string(), spec.plan.clone()),
            ("testground.testcase".to_string(), spec.case.clone()),
            ("testground.run_id".to_string(), spec.run_id.clone()),
            (RUN_LABEL.to_string(), spec.run_id.clone()),
        ]),
        config: spec.config.clone(),
        service: service.clone(),
        ns: ns.clone(),
        network_initialized: ns.state("network-initialized"),
        starting: Semaphore::new(spec.config.start_parallelism.max(1)),
        deadline,
        abort: RunAbort::new(cancel),
        progress: progress.clone(),
        caps,
        links: shaping_links(data_subnet, &spec.config.additional_hosts),
    });
    // A config published for a hostname that is no instance here would never be read: stop the run.
    let hostnames = planned.iter().map(|p| p.hostname.clone()).collect();
    let unknown_hosts =
        shaping::spawn_unknown_host_watch(shared.service.clone(), shared.ns.clone(), hostnames, shared.abort.clone());
    let mut tasks = JoinSet::new();
    for p in planned {
        let shared = shared.clone();
        tasks.spawn(async move {
            let result = instance(&shared, p).await;
            let _ = shared.progress.send(RunEvent::InstanceFinished { result: result.clone() });
            result
        });
    }
    let mut results = Vec::with_capacity(total as usize);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => return Err(RunnerError::Internal(format!("instance supervisor failed: {e}"))),
        }
    }
    unknown_hosts.abort();
    Ok(results)
}

struct Shared {
    docker: Docker,
    network: String,
    /// Seeded into every container's `eth1` before its `network-initialized` ([`seed_peers`]).
    peers: Vec<(Ipv4Addr, [u8; 6])>,
    spec_labels: HashMap<String, String>,
    config: DockerRunConfig,
    service: Service,
    ns: Namespace,
    network_initialized: String,
    starting: Semaphore,
    deadline: tokio::time::Instant,
    /// The user's interrupt, or a network config that could not be applied.
    abort: RunAbort,
    progress: UnboundedSender<RunEvent>,
    caps: Arc<Capabilities>,
    /// What shaping works on in every container ([`shaping_links`]).
    links: shaping::Links,
}

/// The links shaping works on inside a container: data `eth1` on `data_subnet`, control `eth0`,
/// and the hosts kept reachable under deny_all (compat §3.3): the sync service on the control
/// gateway (also the Docker host, the gateway of the default route) and each `name:ip` additional
/// host (names without an address have nothing to route to).
pub fn shaping_links(data_subnet: Ipv4Cidr, additional_hosts: &[String]) -> shaping::Links {
    shaping::Links {
        data: DATA_IFNAME.into(),
        control: CONTROL_IFNAME.into(),
        data_subnet,
        keep: kept_hosts(additional_hosts),
    }
}

fn kept_hosts(additional_hosts: &[String]) -> Vec<Ipv4Addr> {
    let mut keep = vec![CONTROL_GATEWAY];
    for host in additional_hosts {
        if let Some(ip) = host.rsplit_once(':').and_then(|(_, ip)| ip.trim().parse::<Ipv4Addr>().ok()) {
            if !keep.contains(&ip) {
                keep.push(ip);
            }
        }
    }
    keep
}

/// Follows the container's `network:<hostname>` topic and applies its configs inside the
/// container's network namespace, entered through its pid.
fn spawn_follower(shared: &Shared, p: &Planned, pid: u32) -> tokio::task::JoinHandle<()> {
    shaping::spawn_follower(shaping::Follower {
        service: shared.service.clone(),
        ns: shared.ns.clone(),
        hostname: p.hostname.clone(),
        netns: shaping::FollowerNetns::Path(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        links: shared.links.clone(),
        caps: shared.caps.clone(),
        record: p.outputs.join("network.json"),
        abort: shared.abort.clone(),
    })
}

/// What [`start`] learnt about a running container.
struct Started {
    pid: Option<u32>,
    data_ip: Option<Ipv4Addr>,
}

/// Creates, connects and starts one container.
async fn start(shared: &Shared, p: &Planned) -> Result<Started, String> {
    let docker = &shared.docker;
    let mut labels = shared.spec_labels.clone();
    labels.insert("testground.group_id".to_string(), p.group.clone());
    let mut extra_hosts = vec![format!("testground-sync-service:{CONTROL_GATEWAY}")];
    extra_hosts.extend(shared.config.additional_hosts.iter().filter(|h| h.contains(':')).cloned());
    let ulimits = shared.config.ulimits.iter().map(|u| parse_ulimit(u)).collect::<Result<Vec<_>, _>>()?;
    let exposed: Vec<String> = shared.config.exposed_ports.values().map(|p| format!("{p}/tcp")).collect();
    let body = ContainerCreateBody {
        hostname: Some(p.hostname.clone()),
        image: Some(p.image.clone()),
        env: Some(p.env.clone()),
        labels: Some(labels),
        exposed_ports: if exposed.is_empty() { None } else { Some(exposed) },
        host_config: Some(HostConfig {
            network_mode: Some(CONTROL_NETWORK.to_string()),
            // Docker's init (tini) as PID 1: the kernel ignores default-action signals sent to a
            // namespace's init, so a plan that calls abort() as PID 1 would die of SIGSEGV instead
            // of SIGABRT, and SIGTERM on cancel would be ignored. tini forwards signals and exits
            // with 128+n when the plan dies of signal n, which [`exit_from_code`] reads back.
            init: Some(true),
            binds: Some(vec![format!("{}:/outputs", p.outputs.display()), format!("{}:/temp", p.temp.display())]),
            extra_hosts: Some(extra_hosts),
            ulimits: Some(ulimits),
            publish_all_ports: Some(!shared.config.exposed_ports.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&p.name).build()), body)
        .await
        .map_err(|e| format!("creating container {}: {}", p.name, docker_message(&e)))?;
    // Connected before start, so the data network is eth1 (the control network is eth0). The
    // address is static and the MAC follows it, so every container's neighbours are known before
    // the first one starts (the MAC is Docker 20.10's own choice for that address; newer daemons,
    // which may pick random ones, are told).
    let endpoint = EndpointSettings {
        ipam_config: p
            .data_ip
            .map(|ip| EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
        mac_address: p.data_ip.map(|ip| format_mac(mac_for(ip))),
        ..Default::default()
    };
    docker
        .connect_network(
            &shared.network,
            NetworkConnectRequest { container: p.name.clone(), endpoint_config: Some(endpoint) },
        )
        .await
        .map_err(|e| format!("connecting {} to {}: {}", p.name, shared.network, docker_message(&e)))?;
    docker
        .start_container(&p.name, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(|e| format!("starting container {}: {}", p.name, docker_message(&e)))?;
    let inspect = docker
        .inspect_container(&p.name, None)
        .await
        .map_err(|e| format!("inspecting container {}: {}", p.name, docker_message(&e)))?;
    let pid = inspect.state.and_then(|s| s.pid).filter(|pid| *pid > 0).map(|pid| pid as u32);
    let data = inspect.network_settings.and_then(|n| n.networks).and_then(|mut n| n.remove(&shared.network));
    let data_ip = data.as_ref().and_then(|e| e.ip_address.as_deref()).and_then(|ip| ip.parse().ok());
    let data_mac = data.as_ref().and_then(|e| e.mac_address.clone());
    if let (Some(ip), Some(mac)) = (p.data_ip, &data_mac) {
        let wanted = format_mac(mac_for(ip));
        // The entries seeded in its peers would be wrong: ARP corrects them, after some seconds
        // of probing.
        if data_ip != Some(ip) || !mac.eq_ignore_ascii_case(&wanted) {
            tracing::warn!(
                "container {} has {} / {mac} on {} instead of {ip} / {wanted}; its peers find it by ARP",
                p.name,
                data_ip.map(|a| a.to_string()).unwrap_or_default(),
                shared.network
            );
        }
    }
    Ok(Started { pid, data_ip })
}

/// `02:42:10:00:00:02`.
fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Gives the running container `pid` an externally learned neighbour entry on `eth1` for every
/// other instance of the run (see [`netns::seed_neighbours`]). A failure only costs ARP (the
/// container may also have ended already), so it is logged, not fatal.
async fn seed_peers(shared: &Shared, p: &Planned, pid: u32) {
    let Some(own) = p.data_ip else { return };
    if shared.peers.is_empty() {
        return;
    }
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!("{}: cannot seed its neighbours, opening {}: {e}", p.name, path.display());
            return;
        }
    };
    let peers = shared.peers.iter().copied().filter(|(ip, _)| *ip != own);
    if let Err(e) = netns::seed_neighbours(std::os::fd::AsFd::as_fd(&file), DATA_IFNAME, peers).await {
        tracing::warn!("{}: seeding its neighbours on {DATA_IFNAME} failed, its traffic relies on ARP: {e}", p.name);
    }
}

/// `nofile=1048576:1048576` (soft:hard, or one value for both).
fn parse_ulimit(s: &str) -> Result<ResourcesUlimits, String> {
    let bad = || format!("run_config.ulimits: `{s}` is not name=soft[:hard]");
    let (name, values) = s.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = values.split_once(':').unwrap_or((values, values));
    Ok(ResourcesUlimits {
        name: Some(name.trim().to_string()),
        soft: Some(soft.trim().parse().map_err(|_| bad())?),
        hard: Some(hard.trim().parse().map_err(|_| bad())?),
    })
}

/// Docker's exit code of a container: 128+n when its process died from signal n.
pub fn exit_from_code(code: i64) -> Exit {
    if (129..=128 + 64).contains(&code) {
        Exit::Signal((code - 128) as i32)
    } else {
        Exit::Code(code as i32)
    }
}

/// One instance from creation to verdict.
async fn instance(shared: &Shared, p: Planned) -> InstanceResult {
    let began = Instant::now();
    let mut observed = Observed::default();
    let mut stderr_tail = Vec::new();
    let mut data_ip = None;
    let docker = &shared.docker;

    let started = {
        let _permit = shared.starting.acquire().await;
        if shared.abort.token().is_cancelled() {
            Err(None)
        } else {
            start(shared, &p).await.map_err(Some)
        }
    };
    match started {
        Err(None) => observed.cancelled = true,
        Err(Some(error)) => observed.start_error = Some(error),
        Ok(info) => {
            data_ip = info.data_ip;
            if let Some(pid) = info.pid {
                seed_peers(shared, &p, pid).await;
            }
            // No pid: the container has already ended, there is nothing left to shape.
            let follower = info.pid.map(|pid| spawn_follower(shared, &p, pid));
            // The sidecar's part of the network-init handshake (compat §3.1 step 3).
            shared.service.signal_entry(&shared.network_initialized);
            let _ = shared.progress.send(RunEvent::InstanceStarted {
                group: p.group.clone(),
                group_index: p.group_index,
                pid: info.pid,
            });
            let logs = tokio::spawn(stream_logs(docker.clone(), p.name.clone(), p.outputs.clone()));
            let mut wait = docker.wait_container(&p.name, None);
            tokio::select! {
                end = wait.next() => match end {
                    Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => {}
                    Some(Err(e)) => observed.lost = Some(format!("waiting for container {}: {}", p.name, docker_message(&e))),
                    None => observed.lost = Some(format!("the Docker daemon ended the wait for {}", p.name)),
                },
                _ = tokio::time::sleep_until(shared.deadline) => {
                    observed.timed_out = true;
                    let _ = docker.kill_container(&p.name, Some(KillContainerOptionsBuilder::default().signal("KILL").build())).await;
                }
                _ = shared.abort.token().cancelled() => {
                    observed.cancelled = true;
                    let _ = docker.stop_container(&p.name, Some(StopContainerOptionsBuilder::default().t(CANCEL_GRACE_SECS).build())).await;
                }
            }
            if let Some(follower) = follower {
                follower.abort();
            }
            if observed.lost.is_none() {
                match docker.inspect_container(&p.name, None).await {
                    Ok(inspect) => {
                        let state = inspect.state.unwrap_or_default();
                        observed.oom_killed = state.oom_killed.unwrap_or(false);
                        if !observed.timed_out && !observed.cancelled {
                            observed.exit = state.exit_code.map(exit_from_code);
                        }
                    }
                    Err(e) => observed.lost = Some(format!("inspecting container {}: {}", p.name, docker_message(&e))),
                }
            }
            match tokio::time::timeout(shared.config.outcomes_collection_timeout, logs).await {
                Ok(Ok((events, tail))) => {
                    apply_events(&mut observed, &events.events);
                    write_run_out_if_missing(&p.outputs, &events.event_lines).await;
                    stderr_tail = tail;
                }
                _ => tracing::warn!("the logs of {} were not collected in time", p.name),
            }
        }
    }
    shared.abort.explain(&p.hostname, &mut observed);
    if let Err(e) = std::fs::remove_dir_all(&p.temp) {
        tracing::debug!("removing {}: {e}", p.temp.display());
    }
    InstanceResult {
        group: p.group,
        group_index: p.group_index,
        global_index: p.global_index,
        hostname: p.hostname,
        data_ip,
        verdict: decide(&observed),
        outputs_dir: p.outputs,
        stderr_tail,
        duration: began.elapsed(),
    }
}

/// Follows a container's logs into `stdout` and `stderr` files in its outputs, through the same
/// capture as local:exec (events from stdout lines, the stderr tail).
async fn stream_logs(
    docker: Docker,
    name: String,
    outputs: PathBuf,
) -> (crate::local_exec::StdoutCapture, Vec<String>) {
    let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
    let stdout = tokio::spawn(capture_stdout(out_r, outputs.join("stdout")));
    let stderr = tokio::spawn(capture_stderr(err_r, outputs.join("stderr")));
    let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
    let mut logs = docker.logs(&name, Some(options));
    while let Some(item) = logs.next().await {
        match item {
            Ok(bollard::container::LogOutput::StdOut { message }) => {
                let _ = out_w.write_all(&message).await;
            }
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                let _ = err_w.write_all(&message).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("logs of {name}: {}", docker_message(&e));
                break;
            }
        }
    }
    drop(out_w);
    drop(err_w);
    let events =
        stdout.await.unwrap_or(crate::local_exec::StdoutCapture { events: Vec::new(), event_lines: Vec::new() });
    let tail = stderr.await.unwrap_or_default();
    (events, tail)
}

/// Removes the containers and data network of run `run_id` (or of every tg-nix run when None).
/// Safe to run twice: what is already gone is skipped.
async fn remove_labelled(docker: &Docker, run_id: Option<&str>) -> Result<(usize, usize), RunnerError> {
    let label = match run_id {
        Some(id) => format!("{RUN_LABEL}={id}"),
        None => RUN_LABEL.to_string(),
    };
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(docker_err("listing containers"))?;
    let mut removed_containers = 0;
    let mut removals = JoinSet::new();
    for c in containers {
        let Some(id) = c.id else { continue };
        let docker = docker.clone();
        removals.spawn(async move {
            match docker
                .remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build()))
                .await
            {
                Ok(()) => true,
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => false,
                Err(e) => {
                    tracing::warn!("removing container {id}: {}", docker_message(&e));
                    false
                }
            }
        });
    }
    while let Some(done) = removals.join_next().await {
        if matches!(done, Ok(true)) {
            removed_containers += 1;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(docker_err("listing networks"))?;
    let mut removed_networks = 0;
    for n in networks {
        let Some(id) = n.id else { continue };
        match docker.remove_network(&id).await {
            Ok(()) => removed_networks += 1,
            Err(e) if is_status(&e, 404) => {}
            Err(e) => tracing::warn!("removing network {id}: {}", docker_message(&e)),
        }
    }
    Ok((removed_containers, removed_networks))
}

async fn cleanup(docker: &Docker, run_id: &str) {
    if let Err(e) = remove_labelled(docker, Some(run_id)).await {
        tracing::warn!("cleaning up run {run_id}: {e}");
    }
}

/// What [`terminate`] removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Terminated {
    pub containers: usize,
    pub networks: usize,
}

/// Removes every container and network a tg-nix run left (found by the [`RUN_LABEL`] label),
/// e.g. after `kill -9` of tg-nix. The control network stays (it is shared and cheap).
pub async fn terminate(docker: &Docker) -> Result<Terminated, RunnerError> {
    let (containers, networks) = remove_labelled(docker, None).await?;
    Ok(Terminated { containers, networks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testground_data_subnets() {
        assert_eq!(data_subnet(0).unwrap().0, "16.0.0.0/16");
        assert_eq!(data_subnet(1).unwrap(), ("16.1.0.0/16".to_string(), Ipv4Addr::new(16, 1, 0, 1)));
        assert_eq!(data_subnet(256).unwrap().0, "17.0.0.0/16");
        assert_eq!(data_subnet(4095).unwrap().0, "31.255.0.0/16");
        assert!(data_subnet(4096).is_none());
    }

    #[test]
    fn static_data_addresses_skip_the_network_and_gateway() {
        let subnet: Ipv4Cidr = "16.3.0.0/16".parse().unwrap();
        assert_eq!(data_host(subnet, 0), Some(Ipv4Addr::new(16, 3, 0, 2)));
        assert_eq!(data_host(subnet, 300), Some(Ipv4Addr::new(16, 3, 1, 46)));
        assert_eq!(data_host(subnet, 65531), Some(Ipv4Addr::new(16, 3, 255, 253)));
        assert_eq!(data_host(subnet, 65532), Some(Ipv4Addr::new(16, 3, 255, 254)));
        assert_eq!(data_host(subnet, 65533), None, "the broadcast address");
        assert_eq!(data_host(subnet, u64::MAX), None);
        assert_eq!(format_mac(mac_for(Ipv4Addr::new(16, 3, 0, 2))), "02:42:10:03:00:02");
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_from_code(0), Exit::Code(0));
        assert_eq!(exit_from_code(3), Exit::Code(3));
        assert_eq!(exit_from_code(134), Exit::Signal(6));
        assert_eq!(exit_from_code(137), Exit::Signal(9));
        assert_eq!(exit_from_code(255), Exit::Code(255));
    }

    #[test]
    fn deny_all_keeps_the_sync_service_and_addressed_additional_hosts() {
        let hosts = ["http-echo:192.18.5.5".to_string(), "byname".to_string(), "x:192.18.0.1".to_string()];
        assert_eq!(kept_hosts(&hosts), [CONTROL_GATEWAY, Ipv4Addr::new(192, 18, 5, 5)]);
        assert_eq!(kept_hosts(&[]), [CONTROL_GATEWAY]);
    }

    #[test]
    fn ulimits_and_names() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.soft, u.hard), (Some(1024), Some(2048)));
        assert_eq!(parse_ulimit("nproc=10").unwrap().hard, Some(10));
        assert!(parse_ulimit("nofile").is_err());
        assert_eq!(docker_name("tg-p-c-r-g/1 x-0"), "tg-p-c-r-g-1-x-0");
    }
}
