//! Runners start a run's instances, play Testground's sidecar for them, and decide each one's
//! verdict.
//!
//! - [`local_exec`]: one host process per instance; with root, each in its own network, mount and
//!   UTS namespaces on a per-run hub ([`netns`]), so plans see Testground's network contract
//!   (`eth0` control, `eth1` data, `testground-sync-service` resolvable, their own hostname).
//! - [`local_docker`]: one container per instance through the Docker Engine API, on Testground's
//!   control and data networks, with the same env contract, outputs and verdicts.
//! - [`verdict`]: the one place where pass and fail are decided.
//! - [`capability`]: what this host can do (root, namespaces, qdiscs), for `tg-nix doctor`.
//! - [`shaping`]: applies the NetworkConfigs instances publish (netlink: HTB, netem, u32,
//!   filter routes, routing policy), for any namespace (an fd or `/proc/<pid>/ns/net`).
//!
//! A runner reports through [`RunEvent`]s and returns results; it never prints. It must not build
//! anything: it receives programs that exist.
//!
//! ```
//! use tg_nix_runner::verdict::{decide, Exit, Observed};
//! let observed = Observed { success_event: true, exit: Some(Exit::Code(0)), ..Default::default() };
//! assert!(decide(&observed).is_pass());
//! ```

pub mod capability;
pub mod local_docker;
pub mod local_exec;
pub mod netns;
pub mod shaping;
pub mod verdict;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use local_exec::{ExecRunSpec, GroupLaunch, InstanceResult, Isolation, RunOutcome, SyncTally};
pub use verdict::Verdict;

/// What a run reports while it goes. Reporters (terminal, JSON) read these; the runner never prints.
#[derive(Debug, Clone)]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        instances: u64,
    },
    InstanceStarted {
        group: String,
        group_index: u64,
        pid: Option<u32>,
    },
    /// An event an instance published on the run_events topic.
    SyncEvent {
        event: tg_nix_model::Event,
    },
    InstanceFinished {
        result: InstanceResult,
    },
}

/// Why a run could not be carried out (as opposed to instances failing, which are verdicts).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Net(#[from] netns::NetError),
    #[error("cannot start the sync service on {addr}: {source}")]
    Sync { addr: SocketAddr, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] tg_nix_model::ModelError),
    /// local:docker: the Docker Engine could not be reached at all.
    #[error("cannot reach the Docker daemon at {host}: {message}")]
    DockerUnavailable { host: String, message: String },
    /// local:docker: a Docker API call failed; `what` says which.
    #[error("docker: {what}: {message}")]
    Docker { what: String, message: String },
    /// local:docker: an image could not be written or loaded.
    #[error("image {tag}: {message}")]
    Image { tag: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}
