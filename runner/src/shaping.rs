//! Network shaping: the sidecar's job of applying the NetworkConfigs instances publish on
//! `network:<hostname>` (compat §3), done with netlink from tg-nix's own process.
//!
//! - [`config`]: the NetworkConfig JSON, decoded with zero defaults and validated key by key.
//! - [`mod@apply`]: [`Shaper`] applies a config inside one network namespace (an fd, or a path such as
//!   `/proc/<pid>/ns/net` for a container): an HTB tree on the data link (class 1:2 for the
//!   default shape, one class per shaped rule selected by u32 destination filters, a netem qdisc
//!   under a class only when its shape needs one), blackhole/prohibit routes for rule filters,
//!   the control link's routing policy, a new data address, the data link up or down.
//! - [`tc`]: the traffic-control messages, built byte by byte (compared with `tc`'s in tests).
//! - [`selfcheck`]: `tg-nix doctor --network`, requested vs measured bandwidth between two
//!   throwaway namespaces.
//! - [`follow`]: the runner's loop per instance: subscribe, decode, apply, record in
//!   `network.json`, signal `callback_state`.
//!
//! Before anything changes, a config is checked against the host's [`Capabilities`]: one that
//! needs a qdisc or classifier this kernel lacks (netem, here) fails at once with the feature's
//! name and the fix, and nothing of it is applied. The runner then stops the run
//! ([`RunAbort`]): the instance waits on its callback barrier and would otherwise hang. So does a
//! config published for a hostname that is no instance of the run ([`spawn_unknown_host_watch`]).

pub mod apply;
pub mod config;
pub mod selfcheck;
pub mod tc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use tg_nix_sync::keys::Namespace;
use tg_nix_sync::Service;

pub use apply::{apply, check_support, requirements, Applied, Links, NetnsRef, Shaper};
pub use config::{ConfigError, Filter, LinkRule, LinkShape, NetworkConfig, RoutingPolicy};

use crate::capability::Capabilities;
use crate::verdict::Observed;

/// Why a config was not applied. Every variant names the instance.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    #[error("instance {instance}: invalid network config: {source}")]
    Config { instance: String, source: ConfigError },
    /// The config needs a qdisc or classifier this kernel lacks; nothing of it was applied.
    #[error("{0}")]
    Unsupported(Box<MissingFeature>),
    #[error("instance {instance}: cannot enter its network namespace: {detail}")]
    Namespace { instance: String, detail: String },
    #[error("instance {instance}: {step}: {source}")]
    Netlink { instance: String, step: String, source: std::io::Error },
}

/// A kernel feature a config needs and this host lacks, with what needs it and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "instance {instance}: the network config needs the {feature} ({needed_for}), but {module} is not available \
     in this kernel ({detail}); load it (modprobe {module}) or use a kernel built with {option}"
)]
pub struct MissingFeature {
    pub instance: String,
    /// `qdisc netem`, `classifier u32`, ...
    pub feature: String,
    /// `sch_netem`
    pub module: String,
    /// `CONFIG_NET_SCH_NETEM`
    pub option: String,
    pub needed_for: String,
    /// What the probe said.
    pub detail: String,
}

/// A run-wide stop with a reason: the first instance whose network config fails records why, and
/// every instance of the run is stopped (the failing one's verdict carries the reason, the
/// others say the run was aborted because of it). A fault no instance can be blamed for (a config
/// for an unknown hostname) stops every instance with the same reason.
#[derive(Debug, Clone)]
pub struct RunAbort {
    token: CancellationToken,
    cause: Arc<Mutex<Option<AbortCause>>>,
}

/// Why a [`RunAbort`] stopped the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortCause {
    /// This instance's network config could not be applied.
    Instance { instance: String, error: String },
    /// Something of the run as a whole, attributable to no single instance.
    Run { reason: String },
}

impl RunAbort {
    /// A stop that also fires when `parent` (the user's interrupt) does.
    pub fn new(parent: &CancellationToken) -> RunAbort {
        RunAbort { token: parent.child_token(), cause: Arc::new(Mutex::new(None)) }
    }

    /// Stops the run because of `instance`'s `error` (only the first cause is kept).
    pub fn fail(&self, instance: &str, error: String) {
        self.stop(AbortCause::Instance { instance: instance.to_string(), error });
    }

    /// Stops the run for a `reason` no single instance is to blame for; every instance's verdict
    /// is `aborted` with it (only the first cause is kept).
    pub fn fail_run(&self, reason: String) {
        self.stop(AbortCause::Run { reason });
    }

    fn stop(&self, first: AbortCause) {
        {
            let mut cause = self.cause.lock().unwrap_or_else(|p| p.into_inner());
            cause.get_or_insert(first);
        }
        self.token.cancel();
    }

    /// Cancelled on [`RunAbort::fail`] or when the parent token is.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// What stopped the run, if something did.
    pub fn cause(&self) -> Option<AbortCause> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Says in `observed` why the run stopped `instance`, when it was cancelled because of an
    /// abort: its own network error, the instance whose config failed, or the run's reason.
    pub fn explain(&self, instance: &str, observed: &mut Observed) {
        if !observed.cancelled {
            return;
        }
        match self.cause() {
            Some(AbortCause::Instance { instance: host, error }) if host == instance => {
                observed.network_error = Some(error);
            }
            Some(AbortCause::Instance { instance: host, .. }) => {
                observed.aborted = Some(format!("instance {host}'s network config failed"));
            }
            Some(AbortCause::Run { reason }) => observed.aborted = Some(reason),
            None => {}
        }
    }
}

/// The topic an instance publishes its configs on (without the run namespace).
pub fn topic(hostname: &str) -> String {
    format!("network:{hostname}")
}

/// The runner's sidecar loop for one instance: follows `network:<hostname>` from its first message,
/// applies each config, appends a line per config to `record` (`network.json`), and signals the
/// config's `callback_state`. Returns when the service closes, or at the first config that cannot
/// be applied (the caller fails the run with that error).
pub async fn follow(
    service: Service,
    ns: Namespace,
    mut shaper: Shaper,
    caps: Arc<Capabilities>,
    record: PathBuf,
) -> Result<u64, ShapingError> {
    let mut sub = service.subscribe(&ns.topic(&topic(shaper.instance())));
    let mut seq = 0u64;
    while let Some(payload) = sub.next().await {
        seq += 1;
        let received = unix_secs();
        let result = match NetworkConfig::from_json(&payload) {
            Err(source) => Err(ShapingError::Config { instance: shaper.instance().to_string(), source }),
            Ok(cfg) => shaper.apply(&cfg, &caps).await.map(|applied| (cfg, applied)),
        };
        match result {
            Ok((cfg, applied)) => {
                let callback = if cfg.callback_state.is_empty() {
                    Value::Null
                } else {
                    let count = service.signal_entry(&ns.state(&cfg.callback_state));
                    json!({"state": cfg.callback_state, "count": count, "target": cfg.callback_target})
                };
                append(
                    &record,
                    json!({"seq": seq, "received_at": received, "received": *payload, "config": cfg,
                           "applied": applied.steps, "ignored": applied.ignored,
                           "apply_ms": (applied.took.as_secs_f64() * 1e6).round() / 1e3, "callback": callback}),
                );
            }
            Err(e) => {
                append(
                    &record,
                    json!({"seq": seq, "received_at": received, "received": *payload, "error": e.to_string()}),
                );
                return Err(e);
            }
        }
    }
    Ok(seq)
}

/// Watches the run's `network:<hostname>` topics for one whose hostname is none of `hostnames`
/// (the run's instances) and stops the run through [`RunAbort::fail_run`] at the first: no
/// follower reads such a config, so the instance that published it would wait on its callback
/// barrier until the run timeout. Topics that exist when it starts count too, so it may be spawned
/// after the instances. Call once per run; abort the handle when the run has finished (it also
/// ends when the service closes).
///
/// The sync protocol carries no sender, so the instance that published cannot be named: every
/// instance's verdict is `aborted` with a reason naming the unknown host and the run's hostnames.
pub fn spawn_unknown_host_watch(
    service: Service,
    ns: Namespace,
    hostnames: Vec<String>,
    abort: RunAbort,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = ns.topic(&topic(""));
        let mut watch = service.watch_topics(&prefix);
        while let Some(name) = watch.next().await {
            let host = name.strip_prefix(prefix.as_str()).unwrap_or(&name);
            if !hostnames.iter().any(|h| h == host) {
                let reason = unknown_host_reason(host, &hostnames);
                tracing::warn!("{reason}");
                abort.fail_run(reason);
                return;
            }
        }
    })
}

/// The reason a config for `host` stops a run whose instances are `hostnames`.
pub fn unknown_host_reason(host: &str, hostnames: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut known = hostnames.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if hostnames.len() > SHOWN {
        known.push_str(&format!(" … {} in all", hostnames.len()));
    }
    format!(
        "a network config was published for host `{host}`, which is no instance of this run (its instances: \
         {known}); the SDK takes the hostname from $HOSTNAME: publish on network:<own hostname>"
    )
}

/// Where a [`Follower`] finds the instance's network namespace.
#[derive(Debug)]
pub enum FollowerNetns {
    /// An open namespace fd (local:exec's instances; kept open while the follower runs).
    Fd(std::os::fd::OwnedFd),
    /// A path opened when the follower starts and kept open while it runs: `/proc/<pid>/ns/net`
    /// of a container (local:docker).
    Path(PathBuf),
}

/// Everything [`spawn_follower`] needs for one instance.
#[derive(Debug)]
pub struct Follower {
    pub service: Service,
    pub ns: Namespace,
    /// The instance's hostname (its topic is `network:<hostname>`).
    pub hostname: String,
    /// The instance's network namespace.
    pub netns: FollowerNetns,
    pub links: Links,
    pub caps: Arc<Capabilities>,
    /// Where the per-config lines go (`<outputs>/network.json`).
    pub record: PathBuf,
    pub abort: RunAbort,
}

/// Runs [`follow`] for one instance on its own task; a config that cannot be applied stops the
/// run through [`RunAbort::fail`]. Abort the returned handle when the instance has finished.
///
/// When the namespace cannot be entered (no root for a container's, or the container is already
/// gone), nothing fails until the instance publishes a config: a run that never shapes is not
/// stopped for it, and one that does fails with the reason instead of waiting on its callback.
pub fn spawn_follower(f: Follower) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use std::os::fd::AsFd;
        let opened = match &f.netns {
            FollowerNetns::Fd(fd) => Shaper::open(NetnsRef::Fd(fd.as_fd()), f.links, &f.hostname).await,
            FollowerNetns::Path(path) => Shaper::open(NetnsRef::Path(path), f.links, &f.hostname).await,
        };
        let result = match opened {
            Ok(shaper) => follow(f.service, f.ns, shaper, f.caps, f.record).await.map(|_| ()),
            Err(e) => refuse_first(f.service, f.ns, &f.hostname, &f.record, e).await,
        };
        if let Err(e) = result {
            tracing::warn!("{e}");
            f.abort.fail(&f.hostname, e.to_string());
        }
    })
}

/// Waits for the instance's first config and answers it with `error` (recorded like a failed
/// apply); returns Ok when the service closes before any config came.
async fn refuse_first(
    service: Service,
    ns: Namespace,
    hostname: &str,
    record: &Path,
    error: ShapingError,
) -> Result<(), ShapingError> {
    let mut sub = service.subscribe(&ns.topic(&topic(hostname)));
    match sub.next().await {
        None => Ok(()),
        Some(payload) => {
            append(
                record,
                json!({"seq": 1, "received_at": unix_secs(), "received": *payload, "error": error.to_string()}),
            );
            Err(error)
        }
    }
}

fn unix_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Appends one JSON line; a file that cannot be written is logged, never fatal.
fn append(path: &Path, line: Value) {
    use std::io::Write;
    let result =
        std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = result {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace { run: "r".into(), plan: "network-rust".into(), case: "unknown-host".into() }
    }

    #[tokio::test]
    async fn a_config_for_an_unknown_host_aborts_the_run_naming_it() {
        let service = Service::new();
        let abort = RunAbort::new(&CancellationToken::new());
        let hostnames = vec!["single-0".to_string(), "single-1".to_string()];
        // Published before the watch starts: still seen.
        service.publish(&ns().topic(&topic("single-0")), json!({"enable": true}));
        // Another topic that merely starts like it, and a subscription (an empty topic).
        service.publish(&ns().topic("network-other"), json!(1));
        let _sub = service.subscribe(&ns().topic(&topic("nobody")));
        let watch = spawn_unknown_host_watch(service.clone(), ns(), hostnames, abort.clone());
        service.publish(&ns().topic(&topic("single-1")), json!({"enable": true}));
        tokio::task::yield_now().await;
        assert!(!abort.token().is_cancelled());
        assert!(abort.cause().is_none());

        service.publish(&ns().topic(&topic("typo-host")), json!({"enable": true}));
        abort.token().cancelled().await;
        watch.await.expect("the watch ends after aborting");
        let Some(AbortCause::Run { reason }) = abort.cause() else { panic!("{:?}", abort.cause()) };
        assert!(reason.contains("host `typo-host`"), "{reason}");
        assert!(reason.contains("its instances: single-0, single-1)"), "{reason}");
        assert!(reason.contains("$HOSTNAME"), "{reason}");

        // Every instance is told the same reason.
        for instance in ["single-0", "single-1"] {
            let mut observed = Observed { cancelled: true, ..Default::default() };
            abort.explain(instance, &mut observed);
            assert_eq!(observed.aborted.as_deref(), Some(reason.as_str()));
            assert_eq!(observed.network_error, None);
        }
    }

    #[tokio::test]
    async fn configs_for_known_hosts_only_never_abort() {
        let service = Service::new();
        let abort = RunAbort::new(&CancellationToken::new());
        let watch = spawn_unknown_host_watch(service.clone(), ns(), vec!["a-0".into()], abort.clone());
        service.publish(&ns().topic(&topic("a-0")), json!({}));
        // Another run's namespace is not this run's business.
        let other = Namespace { run: "r2".into(), ..ns() };
        service.publish(&other.topic(&topic("typo-host")), json!({}));
        service.close();
        watch.await.expect("the watch ends with the service");
        assert!(!abort.token().is_cancelled());
    }

    #[test]
    fn long_host_lists_are_shortened() {
        let hosts: Vec<String> = (0..20).map(|i| format!("g-{i}")).collect();
        let reason = unknown_host_reason("x", &hosts);
        assert!(reason.contains("g-0, g-1, g-2, g-3, g-4, g-5, g-6, g-7 … 20 in all)"), "{reason}");
    }

    #[test]
    fn an_instance_failure_names_the_instance_to_the_others() {
        let abort = RunAbort::new(&CancellationToken::new());
        abort.fail("a-0", "boom".into());
        abort.fail_run("later".into());
        let mut own = Observed { cancelled: true, ..Default::default() };
        abort.explain("a-0", &mut own);
        assert_eq!(own.network_error.as_deref(), Some("boom"));
        let mut other = Observed { cancelled: true, ..Default::default() };
        abort.explain("a-1", &mut other);
        assert_eq!(other.aborted.as_deref(), Some("instance a-0's network config failed"));
    }
}
