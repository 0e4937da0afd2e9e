//! The `local:exec` runner: one host process per instance, driven by the embedded sync service.
//!
//! With root, every instance gets its own network, mount and UTS namespaces inside a per-run hub
//! namespace (see [`crate::netns`]): `eth0` on the control network where `testground-sync-service`
//! resolves to the embedded service, `eth1` on the data network (TEST_SUBNET), its own hostname.
//! That is what the Rust SDK 0.4.0 needs (it dials the hard-coded `testground-sync-service:5050`
//! and uses HOSTNAME). Without root, instances share the host network and reach the service on
//! loopback; Rust SDK plans cannot work there, and the runner says so.
//!
//! The runner plays the sidecar: it signals `network-initialized` once per instance, so that
//! TEST_SIDECAR=true plans get past their network-init barrier, and follows each instance's
//! `network:<hostname>` topic, applying the configs it publishes ([`crate::shaping`]) and
//! recording them in `<outputs>/network.json`. A config that cannot be applied stops the run.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tg_nix_model::{Event, InstanceEnv};
use tg_nix_sync::keys::Namespace;
use tg_nix_sync::{ServerConfig, Service};

use crate::netns::{self, Hub, HubConfig, InstanceNet, Ipv4Cidr};
use crate::shaping::{self, RunAbort};
use crate::verdict::{decide, Exit, Observed, Verdict};
use crate::{RunEvent, RunnerError};

/// How many trailing stderr lines a failed instance shows in the report.
pub const STDERR_TAIL_LINES: usize = 12;
/// How long a cancelled instance gets between SIGTERM and SIGKILL.
const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// The sync service port instances dial (Testground's).
pub const SYNC_PORT: u16 = 5050;
/// TEST_SUBNET when instances share the host network (Testground's local:exec value).
const HOST_NETWORK_SUBNET: &str = "127.1.0.0/16";

/// One group of instances that run the same program.
#[derive(Debug, Clone)]
pub struct GroupLaunch {
    /// TEST_GROUP_ID.
    pub id: String,
    pub program: PathBuf,
    pub instances: u64,
    pub params: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, String>,
}

/// Where instances' networking lives.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// Per-instance namespaces on a per-run hub (needs root).
    Namespaces { data_subnet: Ipv4Cidr },
    /// The host's network; the sync service on loopback.
    HostNetwork,
}

/// Everything one run needs; the CLI fills it from a prepared composition and built artifacts.
#[derive(Debug, Clone)]
pub struct ExecRunSpec {
    pub run_id: String,
    pub plan: String,
    pub case: String,
    pub groups: Vec<GroupLaunch>,
    /// `<outputs>/<plan>/<run_id>`; instance outputs go to `<group>/<index>/` below it.
    pub outputs_dir: PathBuf,
    /// Temp dirs and hosts files of this run; removed when the run ends.
    pub work_dir: PathBuf,
    pub timeout: Duration,
    pub isolation: Isolation,
    pub disable_metrics: bool,
    pub log_level: Option<String>,
}

/// The result of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    pub group: String,
    pub group_index: u64,
    pub global_index: u64,
    pub hostname: String,
    pub data_ip: Option<Ipv4Addr>,
    pub verdict: Verdict,
    pub outputs_dir: PathBuf,
    pub stderr_tail: Vec<String>,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
}

/// Outcome events seen on the sync service's run_events topic, per group. They tell whether the
/// plan's events also reached the service (Testground's local:docker counted only these).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SyncTally {
    pub success: u64,
    pub failure: u64,
    pub crash: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub instances: Vec<InstanceResult>,
    pub sync_outcomes: BTreeMap<String, SyncTally>,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Runs every instance of `spec` to its verdict. Returns Err only when the run itself could not be
/// set up (namespaces, sync service, output dirs); instance failures are verdicts in the outcome.
pub async fn run(
    spec: ExecRunSpec,
    progress: UnboundedSender<RunEvent>,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunnerError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    create_private_dir(&spec.work_dir)?;

    // The hub (root) or nothing (host network); the sync service listens where instances look.
    let (hub, listener, sync_host, sync_port, subnet) = match &spec.isolation {
        Isolation::Namespaces { data_subnet } => {
            // Sized to the run, so that all-to-all data traffic does not depend on ARP.
            let instances = u32::try_from(spec.groups.iter().map(|g| g.instances).sum::<u64>()).unwrap_or(u32::MAX);
            let hub = Hub::create(HubConfig::new(*data_subnet).with_instances(instances)).await?;
            let addr = SocketAddr::from((hub.control_gateway(), SYNC_PORT));
            let listener = hub.bind_tcp(addr).map_err(|e| RunnerError::Sync { addr, source: e })?;
            (Some(hub), listener, "testground-sync-service".to_string(), SYNC_PORT, data_subnet.to_string())
        }
        Isolation::HostNetwork => {
            let addr = SocketAddr::from(([127, 0, 0, 1], 0));
            let listener = std::net::TcpListener::bind(addr).map_err(|e| RunnerError::Sync { addr, source: e })?;
            let port = listener.local_addr().map_err(|e| RunnerError::Sync { addr, source: e })?.port();
            (None, listener, "127.0.0.1".to_string(), port, HOST_NETWORK_SUBNET.to_string())
        }
    };
    listener.set_nonblocking(true).map_err(|e| RunnerError::Io { path: spec.work_dir.clone(), source: e })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| RunnerError::Io { path: spec.work_dir.clone(), source: e })?;
    let service = Service::new();
    let server_stop = CancellationToken::new();
    let server =
        tokio::spawn(tg_nix_sync::serve(listener, service.clone(), ServerConfig::default(), server_stop.clone()));

    let ns = Namespace { run: spec.run_id.clone(), plan: spec.plan.clone(), case: spec.case.clone() };
    // What the kernel can shape, checked before each config is applied (a few ms, once per run).
    let caps = match &hub {
        Some(_) => Some(Arc::new(crate::capability::probe().await)),
        None => None,
    };
    let abort = RunAbort::new(&cancel);
    let watcher = tokio::spawn(watch_run_events(service.subscribe(&ns.run_events()), progress.clone()));

    let total: u64 = spec.groups.iter().map(|g| g.instances).sum();
    let _ = progress.send(RunEvent::RunStarted { run_id: spec.run_id.clone(), instances: total });
    let start_time = SystemTime::now();
    let mut hostnames = HashSet::new();
    let mut tasks = JoinSet::new();
    // Instances are set up and started one after another (a netlink round trip each), then all
    // run concurrently; the run timeout counts from the start of the run.
    let mut global = 0u64;
    for group in &spec.groups {
        for index in 0..group.instances {
            let hostname = unique_hostname(&group.id, index, global, &mut hostnames);
            let outputs = spec.outputs_dir.join(&group.id).join(index.to_string());
            create_private_dir(&outputs)?;
            let temp = spec.work_dir.join("temp").join(global.to_string());
            create_private_dir(&temp)?;
            let net = match &hub {
                Some(hub) => Some(hub.add_instance(global as u32).await?),
                None => None,
            };
            let env = InstanceEnv {
                plan: spec.plan.clone(),
                case: spec.case.clone(),
                run: spec.run_id.clone(),
                instance_count: total,
                group_id: group.id.clone(),
                group_instance_count: group.instances,
                params: group.params.clone(),
                role: String::new(),
                // Without namespaces there is nothing to shape: GO and JS plans then skip the
                // network-init barrier and configure_network warns instead of waiting forever.
                sidecar: hub.is_some(),
                subnet: subnet.clone(),
                outputs_path: outputs.clone(),
                temp_path: temp.clone(),
                start_time,
                capture_profiles: group.profiles.clone(),
                disable_metrics: spec.disable_metrics,
                hostname: hostname.clone(),
                sync_service_host: sync_host.clone(),
                sync_service_port: sync_port,
                influxdb_url: format!(
                    "http://{}:8086",
                    if hub.is_some() { "testground-influxdb" } else { "127.0.0.1" }
                ),
                redis_host: if hub.is_some() { "testground-redis".into() } else { "127.0.0.1".into() },
                log_level: spec.log_level.clone(),
            };
            let vars = env.to_vars()?;
            let instance = Instance {
                group: group.id.clone(),
                group_index: index,
                global_index: global,
                hostname,
                outputs,
                temp,
                data_ip: net.as_ref().map(|n| n.data_ip),
            };
            let child = spawn(&group.program, &vars, &instance, net.as_ref(), &spec.work_dir);
            let follower = match (&net, &caps) {
                (Some(net), Some(caps)) => net.netns_fd().try_clone_to_owned().ok().map(|netns| {
                    shaping::spawn_follower(shaping::Follower {
                        service: service.clone(),
                        ns: ns.clone(),
                        hostname: instance.hostname.clone(),
                        netns: shaping::FollowerNetns::Fd(netns),
                        links: shaping::Links {
                            data: netns::DATA_IFNAME.into(),
                            control: netns::CONTROL_IFNAME.into(),
                            data_subnet: net.data_subnet,
                            keep: vec![netns::CONTROL_GATEWAY],
                        },
                        caps: caps.clone(),
                        record: instance.outputs.join("network.json"),
                        abort: abort.clone(),
                    })
                }),
                _ => None,
            };
            // The sidecar's part of the network-init handshake (compat §3.1 step 3): this
            // instance's network is ready.
            service.signal_entry(&ns.state("network-initialized"));
            let _ = progress.send(RunEvent::InstanceStarted {
                group: instance.group.clone(),
                group_index: index,
                pid: child.as_ref().ok().and_then(|c| c.id()),
            });
            let abort = abort.clone();
            let progress = progress.clone();
            tasks.spawn(async move {
                let result = supervise(instance, child, net, deadline, abort).await;
                if let Some(follower) = follower {
                    follower.abort();
                }
                let _ = progress.send(RunEvent::InstanceFinished { result: result.clone() });
                result
            });
            global += 1;
        }
    }

    // A config published for a hostname that is no instance here would never be read: stop the run.
    let unknown_hosts = caps.as_ref().map(|_| {
        let mut known: Vec<String> = hostnames.iter().cloned().collect();
        known.sort();
        shaping::spawn_unknown_host_watch(service.clone(), ns.clone(), known, abort.clone())
    });
    let mut instances = Vec::with_capacity(total as usize);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => instances.push(result),
            Err(e) => return Err(RunnerError::Internal(format!("instance supervisor failed: {e}"))),
        }
    }
    if let Some(watch) = unknown_hosts {
        watch.abort();
    }
    instances.sort_by_key(|r| r.global_index);

    server_stop.cancel();
    let _ = server.await;
    let sync_outcomes = watcher.await.unwrap_or_default();
    drop(hub); // the namespaces and every bridge and veth in them go with it
    if let Err(e) = std::fs::remove_dir_all(&spec.work_dir) {
        tracing::warn!("could not remove {}: {e}", spec.work_dir.display());
    }
    Ok(RunOutcome { run_id: spec.run_id, instances, sync_outcomes, duration: started.elapsed() })
}

struct Instance {
    group: String,
    group_index: u64,
    global_index: u64,
    hostname: String,
    outputs: PathBuf,
    temp: PathBuf,
    data_ip: Option<Ipv4Addr>,
}

fn spawn(
    program: &Path,
    vars: &[(String, String)],
    instance: &Instance,
    net: Option<&InstanceNet>,
    work_dir: &Path,
) -> Result<Child, String> {
    let mut cmd = Command::new(program);
    // Testground's local:exec passes only the contract variables (plus PATH): no HOME, no user env.
    cmd.env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .current_dir(&instance.temp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match net {
        Some(net) => {
            let hosts = work_dir.join("hosts").join(instance.global_index.to_string());
            std::fs::create_dir_all(hosts.parent().unwrap_or(work_dir)).map_err(|e| e.to_string())?;
            std::fs::write(&hosts, netns::hosts_file_contents(&instance.hostname, net.control_ip))
                .map_err(|e| format!("writing {}: {e}", hosts.display()))?;
            net.configure_command(&mut cmd, &instance.hostname, &hosts);
        }
        None => own_process_group(&mut cmd),
    }
    cmd.spawn().map_err(|e| format!("{}: {e}", program.display()))
}

/// Puts the child in its own process group (so timeouts kill everything it started) and has the
/// kernel kill it if tg-nix dies (the thread that forks is a tokio worker, alive for the runtime).
fn own_process_group(cmd: &mut Command) {
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn supervise(
    instance: Instance,
    child: Result<Child, String>,
    net: Option<InstanceNet>,
    deadline: tokio::time::Instant,
    abort: RunAbort,
) -> InstanceResult {
    let cancel = abort.token();
    let started = Instant::now();
    let mut observed = Observed::default();
    let mut stderr_tail = Vec::new();
    match child {
        Err(error) => observed.start_error = Some(error),
        Ok(mut child) => {
            let pid = child.id();
            let stdout = child.stdout.take().map(|s| tokio::spawn(capture_stdout(s, instance.outputs.join("stdout"))));
            let stderr = child.stderr.take().map(|s| tokio::spawn(capture_stderr(s, instance.outputs.join("stderr"))));
            tokio::select! {
                status = child.wait() => {
                    if let Ok(status) = status {
                        observed.exit = status.code().map(Exit::Code).or(status.signal().map(Exit::Signal));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    observed.timed_out = true;
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
                _ = cancel.cancelled() => {
                    observed.cancelled = true;
                    kill_group(pid, libc::SIGTERM);
                    if tokio::time::timeout(CANCEL_GRACE, child.wait()).await.is_err() {
                        kill_group(pid, libc::SIGKILL);
                        let _ = child.wait().await;
                    }
                }
            }
            abort.explain(&instance.hostname, &mut observed);
            // Anything the plan left behind in its process group would keep our pipes open.
            kill_group(pid, libc::SIGKILL);
            if let Some(task) = stdout {
                if let Ok(Ok(events)) = tokio::time::timeout(Duration::from_secs(5), task).await {
                    apply_events(&mut observed, &events.events);
                    write_run_out_if_missing(&instance.outputs, &events.event_lines).await;
                }
            }
            if let Some(task) = stderr {
                if let Ok(Ok(tail)) = tokio::time::timeout(Duration::from_secs(5), task).await {
                    stderr_tail = tail;
                }
            }
        }
    }
    drop(net);
    if let Err(e) = std::fs::remove_dir_all(&instance.temp) {
        tracing::debug!("removing {}: {e}", instance.temp.display());
    }
    InstanceResult {
        group: instance.group,
        group_index: instance.group_index,
        global_index: instance.global_index,
        hostname: instance.hostname,
        data_ip: instance.data_ip,
        verdict: decide(&observed),
        outputs_dir: instance.outputs,
        stderr_tail,
        duration: started.elapsed(),
    }
}

fn kill_group(pid: Option<u32>, signal: i32) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall; a negative pid addresses the process group the child leads.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}

pub(crate) fn apply_events(observed: &mut Observed, events: &[Event]) {
    for event in events {
        match event {
            Event::Success { .. } => observed.success_event = true,
            Event::Failure { error, .. } => {
                observed.failure_event.get_or_insert_with(|| error.clone());
            }
            Event::Crash { error, .. } => {
                observed.crash_event.get_or_insert_with(|| error.clone());
            }
            _ => {}
        }
    }
}

pub(crate) struct StdoutCapture {
    pub(crate) events: Vec<Event>,
    pub(crate) event_lines: Vec<u8>,
}

/// Copies the instance's stdout to its outputs and picks out the SDK event lines (every SDK
/// prints each event as a JSON line on stdout, compat §5.1): they attribute outcomes to exactly
/// this instance, which run_events on the sync service (tagged only by group) cannot.
pub(crate) async fn capture_stdout(stream: impl AsyncRead + Unpin, path: PathBuf) -> StdoutCapture {
    let mut capture = StdoutCapture { events: Vec::new(), event_lines: Vec::new() };
    copy_lines(stream, &path, |line| {
        if let Some(event) = Event::from_stdout_line(String::from_utf8_lossy(line).trim_end()) {
            capture.event_lines.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                capture.event_lines.push(b'\n');
            }
            capture.events.push(event);
        }
    })
    .await;
    capture
}

/// Copies the instance's stderr to its outputs and keeps its last lines for the report.
pub(crate) async fn capture_stderr(stream: impl AsyncRead + Unpin, path: PathBuf) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    copy_lines(stream, &path, |line| {
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(line).trim_end().to_string());
    })
    .await;
    tail.into()
}

/// Copies `stream` to the file at `path` byte for byte and hands every line (with its newline, if
/// any; not necessarily UTF-8) to `on_line`. A file that cannot be written is logged, and the
/// stream is still drained so the instance never blocks on a full pipe.
async fn copy_lines(stream: impl AsyncRead + Unpin, path: &Path, mut on_line: impl FnMut(&[u8])) {
    let mut file = open_output(path).await;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(&line).await;
        }
        on_line(&line);
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

async fn open_output(path: &Path) -> Option<tokio::fs::File> {
    match tokio::fs::File::create(path).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot write {}: {e}", path.display());
            None
        }
    }
}

/// The Go and JS SDKs write `run.out` (their event log) themselves; the Rust SDK 0.4.0 does not.
/// For those, the runner writes the event lines the instance printed, so every instance has one.
pub(crate) async fn write_run_out_if_missing(outputs: &Path, event_lines: &[u8]) {
    let path = outputs.join("run.out");
    if !path.exists() {
        if let Err(e) = tokio::fs::write(&path, event_lines).await {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// Follows the run_events topic: forwards every event as progress and counts outcomes per group.
pub(crate) async fn watch_run_events(
    mut sub: tg_nix_sync::Subscription,
    progress: UnboundedSender<RunEvent>,
) -> BTreeMap<String, SyncTally> {
    let mut tally: BTreeMap<String, SyncTally> = BTreeMap::new();
    while let Some(payload) = sub.next().await {
        let Some(event) = Event::from_payload(&payload) else { continue };
        match &event {
            Event::Success { group } => tally.entry(group.clone()).or_default().success += 1,
            Event::Failure { group, .. } => tally.entry(group.clone()).or_default().failure += 1,
            Event::Crash { group, .. } => tally.entry(group.clone()).or_default().crash += 1,
            _ => {}
        }
        let _ = progress.send(RunEvent::SyncEvent { event });
    }
    tally
}

/// A hostname for the instance: `<group>-<index>` made DNS-safe, or `i<global>` when two groups
/// would map to the same name.
pub(crate) fn unique_hostname(group: &str, index: u64, global: u64, taken: &mut HashSet<String>) -> String {
    let mut base: String = group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    base.truncate(40);
    let base = base.trim_matches('-');
    let candidate = if base.is_empty() { format!("i{global}") } else { format!("{base}-{index}") };
    let name = if taken.contains(&candidate) { format!("i{global}") } else { candidate };
    taken.insert(name.clone());
    name
}

pub(crate) fn create_private_dir(path: &Path) -> Result<(), RunnerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| RunnerError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_safe_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(unique_hostname("alpha", 0, 0, &mut taken), "alpha-0");
        assert_eq!(unique_hostname("v0.22", 1, 1, &mut taken), "v0-22-1");
        assert_eq!(unique_hostname("v0_22", 1, 2, &mut taken), "i2");
        assert_eq!(unique_hostname("___", 0, 3, &mut taken), "i3");
    }

    #[tokio::test]
    async fn stdout_capture_finds_events_of_every_sdk() {
        let dir = std::env::temp_dir().join(format!("tgnix-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = concat!(
            "hello\n",
            "{\"ts\":1,\"event\":{\"success_event\":{\"group\":\"g\"}}}\n",
            "{\"event\":{\"message_event\":{\"message\":\"hi\"}}}\n",
            "{\"ts\":2,\"event\":{\"crash_event\":{\"groups\":\"g\",\"error\":\"oops\",\"stacktrace\":\"\"}}}"
        );
        let cap = capture_stdout(out.as_bytes(), dir.join("stdout")).await;
        let mut observed = Observed::default();
        apply_events(&mut observed, &cap.events);
        assert!(observed.success_event);
        assert_eq!(observed.crash_event.as_deref(), Some("oops"));
        assert_eq!(std::fs::read_to_string(dir.join("stdout")).unwrap(), out);
        assert_eq!(String::from_utf8(cap.event_lines).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
