//! Verdicts: what happened to one instance, decided from what was observed, never by accident.
//!
//! An instance passes only when it recorded a success event, recorded no failure or crash event,
//! and exited with status 0 inside the run's timeout (DESIGN.md decision 6). Testground's runners
//! each looked at only half of that (local:docker at sync events, local:exec at stdout, neither at
//! exit codes); tg-nix requires both, so a plan that records success and then crashes fails.

use serde::{Deserialize, Serialize};

/// How the process ended, as far as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Exit {
    /// Exited normally with this status.
    Code(i32),
    /// Killed by this signal number (not by the runner).
    Signal(i32),
}

/// Everything the runner observed about one instance; [`decide`] turns it into a [`Verdict`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub success_event: bool,
    /// The error of the first failure event, if any.
    pub failure_event: Option<String>,
    /// The error of the first crash event, if any.
    pub crash_event: Option<String>,
    /// None when the process never started or its end was not seen (timeout, cancel).
    pub exit: Option<Exit>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Set when the instance could not be started at all.
    pub start_error: Option<String>,
    /// The kernel's OOM killer ended it (local:docker reads it from the container's state).
    pub oom_killed: bool,
    /// The runner lost track of it (the Docker daemon stopped answering); its end is unknown.
    pub lost: Option<String>,
    /// Set when the runner stopped the instance because a network config it published could not
    /// be applied (the error names the instance, the key or the missing kernel feature).
    pub network_error: Option<String>,
    /// Set when the runner stopped the instance because the run was aborted for another
    /// instance's sake (the reason says which and why).
    pub aborted: Option<String>,
}

/// The verdict for one instance. Exactly one variant passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// success event, no failure or crash event, exit status 0.
    Pass,
    /// The plan recorded a failure event.
    Failure { error: String },
    /// The plan recorded a crash event (a panic, with its message).
    Crash { error: String },
    /// Still running when the run's timeout expired; the runner killed it.
    Timeout { success_recorded: bool },
    /// Died from a signal it did not get from the runner (abort, segfault, OOM killer, …).
    Signal { signal: String, success_recorded: bool },
    /// Exited with a non-zero status.
    ExitCode { code: i32, success_recorded: bool },
    /// Exited 0 without recording any outcome event.
    NoOutcome,
    /// The runner could not start it.
    StartFailed { error: String },
    /// The run was interrupted (SIGINT) before it finished.
    Cancelled,
    /// Killed by the kernel's OOM killer (its container ran out of memory).
    OomKilled { success_recorded: bool },
    /// The runner lost track of it (the Docker daemon failed mid-run).
    Lost { error: String },
    /// A network config it published could not be applied; the runner stopped the run.
    NetworkConfig { error: String },
    /// Stopped because the run was aborted for another instance (its network config failed).
    Aborted { reason: String },
}

impl Verdict {
    /// Whether this verdict is a pass. Every variant is listed: a new one must choose.
    pub fn is_pass(&self) -> bool {
        match self {
            Verdict::Pass => true,
            Verdict::Failure { .. }
            | Verdict::Crash { .. }
            | Verdict::Timeout { .. }
            | Verdict::Signal { .. }
            | Verdict::ExitCode { .. }
            | Verdict::NoOutcome
            | Verdict::StartFailed { .. }
            | Verdict::Cancelled
            | Verdict::OomKilled { .. }
            | Verdict::Lost { .. }
            | Verdict::NetworkConfig { .. }
            | Verdict::Aborted { .. } => false,
        }
    }

    /// A short label for tables: `pass`, `failure`, `crash`, `timeout`, …
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Failure { .. } => "failure",
            Verdict::Crash { .. } => "crash",
            Verdict::Timeout { .. } => "timeout",
            Verdict::Signal { .. } => "signal",
            Verdict::ExitCode { .. } => "exit-code",
            Verdict::NoOutcome => "no-outcome",
            Verdict::StartFailed { .. } => "start-failed",
            Verdict::Cancelled => "cancelled",
            Verdict::OomKilled { .. } => "oom-killed",
            Verdict::Lost { .. } => "lost",
            Verdict::NetworkConfig { .. } => "network-config",
            Verdict::Aborted { .. } => "aborted",
        }
    }

    /// One sentence saying why the instance did not pass (or that it did).
    pub fn reason(&self) -> String {
        let after = |success: bool| if success { " after recording success" } else { "" };
        match self {
            Verdict::Pass => "recorded success and exited 0".into(),
            Verdict::Failure { error } => format!("recorded a failure event: {error}"),
            Verdict::Crash { error } => format!("recorded a crash event: {error}"),
            Verdict::Timeout { success_recorded } => {
                format!("still running at the run timeout{}; killed", after(*success_recorded))
            }
            Verdict::Signal { signal, success_recorded } => format!("killed by {signal}{}", after(*success_recorded)),
            Verdict::ExitCode { code, success_recorded } => {
                format!("exited with status {code}{}", after(*success_recorded))
            }
            Verdict::NoOutcome => "exited 0 without recording success, failure or crash".into(),
            Verdict::StartFailed { error } => format!("could not be started: {error}"),
            Verdict::Cancelled => "interrupted before it finished".into(),
            Verdict::OomKilled { success_recorded } => {
                format!("killed by the kernel's OOM killer (out of memory){}", after(*success_recorded))
            }
            Verdict::Lost { error } => format!("lost: {error}"),
            Verdict::NetworkConfig { error } => format!("its network config could not be applied: {error}"),
            Verdict::Aborted { reason } => format!("stopped because the run was aborted: {reason}"),
        }
    }
}

/// Decides the verdict. The order says which reason is reported when several apply: the plan's
/// own account (crash, failure) first, because it is the most specific, then how the process ended.
pub fn decide(o: &Observed) -> Verdict {
    if let Some(error) = &o.start_error {
        return Verdict::StartFailed { error: error.clone() };
    }
    if let Some(error) = &o.crash_event {
        return Verdict::Crash { error: error.clone() };
    }
    if let Some(error) = &o.failure_event {
        return Verdict::Failure { error: error.clone() };
    }
    if let Some(error) = &o.network_error {
        return Verdict::NetworkConfig { error: error.clone() };
    }
    if let Some(reason) = &o.aborted {
        return Verdict::Aborted { reason: reason.clone() };
    }
    if o.cancelled {
        return Verdict::Cancelled;
    }
    if let Some(error) = &o.lost {
        return Verdict::Lost { error: error.clone() };
    }
    if o.oom_killed {
        return Verdict::OomKilled { success_recorded: o.success_event };
    }
    if o.timed_out {
        return Verdict::Timeout { success_recorded: o.success_event };
    }
    match o.exit {
        None => Verdict::Cancelled,
        Some(Exit::Signal(sig)) => Verdict::Signal { signal: signal_name(sig), success_recorded: o.success_event },
        Some(Exit::Code(code)) if code != 0 => Verdict::ExitCode { code, success_recorded: o.success_event },
        Some(Exit::Code(_)) if o.success_event => Verdict::Pass,
        Some(Exit::Code(_)) => Verdict::NoOutcome,
    }
}

/// `SIGABRT (6)` for a signal number.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{} ({sig})", s.as_str()),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, success: bool) -> Observed {
        Observed { success_event: success, exit: Some(Exit::Code(code)), ..Default::default() }
    }

    #[test]
    fn decision_table() {
        let cases: Vec<(&str, Observed, Verdict)> = vec![
            ("success + exit 0", exited(0, true), Verdict::Pass),
            ("exit 0 without event", exited(0, false), Verdict::NoOutcome),
            ("success then exit 3", exited(3, true), Verdict::ExitCode { code: 3, success_recorded: true }),
            ("exit 101, no event", exited(101, false), Verdict::ExitCode { code: 101, success_recorded: false }),
            (
                "failure event, exit 0",
                Observed { failure_event: Some("boom".into()), ..exited(0, false) },
                Verdict::Failure { error: "boom".into() },
            ),
            (
                "success and failure events",
                Observed { failure_event: Some("late".into()), ..exited(0, true) },
                Verdict::Failure { error: "late".into() },
            ),
            (
                "crash event beats exit code",
                Observed { crash_event: Some("panicked".into()), ..exited(1, false) },
                Verdict::Crash { error: "panicked".into() },
            ),
            (
                "abort",
                Observed { exit: Some(Exit::Signal(6)), ..Default::default() },
                Verdict::Signal { signal: "SIGABRT (6)".into(), success_recorded: false },
            ),
            (
                "timeout after success",
                Observed { success_event: true, timed_out: true, ..Default::default() },
                Verdict::Timeout { success_recorded: true },
            ),
            (
                "failure before timeout",
                Observed { failure_event: Some("x".into()), timed_out: true, ..Default::default() },
                Verdict::Failure { error: "x".into() },
            ),
            ("cancelled", Observed { cancelled: true, success_event: true, ..Default::default() }, Verdict::Cancelled),
            (
                "start error",
                Observed { start_error: Some("ENOENT".into()), ..Default::default() },
                Verdict::StartFailed { error: "ENOENT".into() },
            ),
            ("no exit seen", Observed { success_event: true, ..Default::default() }, Verdict::Cancelled),
            (
                "oom killed",
                Observed { oom_killed: true, exit: Some(Exit::Signal(9)), ..Default::default() },
                Verdict::OomKilled { success_recorded: false },
            ),
            (
                "daemon lost",
                Observed { lost: Some("gone".into()), success_event: true, ..Default::default() },
                Verdict::Lost { error: "gone".into() },
            ),
            (
                "network config failed",
                Observed { network_error: Some("netem".into()), cancelled: true, ..Default::default() },
                Verdict::NetworkConfig { error: "netem".into() },
            ),
            (
                "aborted for another instance",
                Observed { aborted: Some("b-1 failed".into()), cancelled: true, ..Default::default() },
                Verdict::Aborted { reason: "b-1 failed".into() },
            ),
        ];
        for (name, observed, expected) in cases {
            let got = decide(&observed);
            assert_eq!(got, expected, "{name}");
            assert_eq!(got.is_pass(), name == "success + exit 0", "{name}: is_pass");
        }
    }

    #[test]
    fn serde_twin_round_trips_every_variant() {
        let all = [
            Verdict::Pass,
            Verdict::Failure { error: "e".into() },
            Verdict::Crash { error: "e".into() },
            Verdict::Timeout { success_recorded: false },
            Verdict::Signal { signal: "SIGKILL (9)".into(), success_recorded: true },
            Verdict::ExitCode { code: 3, success_recorded: true },
            Verdict::NoOutcome,
            Verdict::StartFailed { error: "e".into() },
            Verdict::Cancelled,
            Verdict::OomKilled { success_recorded: true },
            Verdict::Lost { error: "e".into() },
            Verdict::NetworkConfig { error: "e".into() },
            Verdict::Aborted { reason: "r".into() },
        ];
        for v in all {
            let json = serde_json::to_string(&v).unwrap();
            assert!(json.contains(&format!("\"verdict\":\"{}\"", v.label().replace('-', "_"))), "{json}");
            assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), v);
        }
    }
}
