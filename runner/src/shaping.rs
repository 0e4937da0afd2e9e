//! Network shaping: the sidecar's job of applying the NetworkConfigs instances publish on
//! `network:<hostname>` (compat §3), done with netlink from tg-nix's own process.
//!
//! - [`config`]: the NetworkConfig JSON, decoded with zero defaults and validated key by key.
//! - [`apply`]: [`Shaper`] applies a config inside one network namespace (an fd, or a path such as
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
//! ([`RunAbort`]): the instance waits on its callback barrier and would otherwise hang.

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
/// others say the run was aborted because of it).
#[derive(Debug, Clone)]
pub struct RunAbort {
    token: CancellationToken,
    cause: Arc<Mutex<Option<(String, String)>>>,
}

impl RunAbort {
    /// A stop that also fires when `parent` (the user's interrupt) does.
    pub fn new(parent: &CancellationToken) -> RunAbort {
        RunAbort { token: parent.child_token(), cause: Arc::new(Mutex::new(None)) }
    }

    /// Stops the run because of `instance`'s `error` (only the first cause is kept).
    pub fn fail(&self, instance: &str, error: String) {
        {
            let mut cause = self.cause.lock().unwrap_or_else(|p| p.into_inner());
            cause.get_or_insert((instance.to_string(), error));
        }
        self.token.cancel();
    }

    /// Cancelled on [`RunAbort::fail`] or when the parent token is.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The instance and error that stopped the run, if one did.
    pub fn cause(&self) -> Option<(String, String)> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

/// Everything [`spawn_follower`] needs for one instance.
#[derive(Debug)]
pub struct Follower {
    pub service: Service,
    pub ns: Namespace,
    /// The instance's hostname (its topic is `network:<hostname>`).
    pub hostname: String,
    /// The instance's network namespace (kept open by the follower while it runs).
    pub netns: std::os::fd::OwnedFd,
    pub links: Links,
    pub caps: Arc<Capabilities>,
    /// Where the per-config lines go (`<outputs>/network.json`).
    pub record: PathBuf,
    pub abort: RunAbort,
}

/// Runs [`follow`] for one instance on its own task; a config that cannot be applied stops the
/// run through [`RunAbort::fail`]. Abort the returned handle when the instance has finished.
pub fn spawn_follower(f: Follower) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use std::os::fd::AsFd;
        let shaper = match Shaper::open(NetnsRef::Fd(f.netns.as_fd()), f.links, &f.hostname).await {
            Ok(shaper) => shaper,
            Err(e) => return f.abort.fail(&f.hostname, e.to_string()),
        };
        if let Err(e) = follow(f.service, f.ns, shaper, f.caps, f.record).await {
            tracing::warn!("{e}");
            f.abort.fail(&f.hostname, e.to_string());
        }
    })
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
