//! Reports of a run: the terminal summary and `--json`, both from one [`RunReport`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use tg_nix_runner::{InstanceResult, RunOutcome, SyncTally};

use crate::run::RunPlan;

#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub ok: u64,
    pub total: u64,
}

/// Everything a reader of a run needs, in one serialisable value (`--json`, result.json).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    /// The composition's [[runs]] id (`default` without [[runs]]).
    pub composition_run: String,
    pub plan: String,
    pub case: String,
    pub runner: String,
    /// `success` when every instance passed, `failure` otherwise, `canceled` when interrupted.
    pub outcome: String,
    pub groups: BTreeMap<String, GroupSummary>,
    pub instances: Vec<InstanceResult>,
    /// Outcome events that also reached the sync service, per group.
    pub sync_outcomes: BTreeMap<String, SyncTally>,
    pub duration_secs: f64,
    pub outputs_dir: PathBuf,
}

impl RunReport {
    pub fn new(
        plan: &RunPlan,
        composition_run: &str,
        outcome: &RunOutcome,
        outputs_dir: &Path,
        cancelled: bool,
    ) -> RunReport {
        let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
        for i in &outcome.instances {
            let g = groups.entry(i.group.clone()).or_insert(GroupSummary { ok: 0, total: 0 });
            g.total += 1;
            if i.verdict.is_pass() {
                g.ok += 1;
            }
        }
        let all_pass = !outcome.instances.is_empty() && outcome.instances.iter().all(|i| i.verdict.is_pass());
        let outcome_word = if cancelled {
            "canceled"
        } else if all_pass {
            "success"
        } else {
            "failure"
        };
        RunReport {
            run_id: outcome.run_id.clone(),
            composition_run: composition_run.to_string(),
            plan: plan.target.prepared.plan.clone(),
            case: plan.target.prepared.case.clone(),
            runner: plan.target.prepared.runner.clone(),
            outcome: outcome_word.to_string(),
            groups,
            instances: outcome.instances.clone(),
            sync_outcomes: outcome.sync_outcomes.clone(),
            duration_secs: (outcome.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            outputs_dir: outputs_dir.to_path_buf(),
        }
    }

    pub fn passed(&self) -> bool {
        self.outcome == "success"
    }
}

/// The terminal summary: a line per group, then every instance that did not pass with its reason,
/// the tail of its stderr and where its outputs are, then one line counting every outcome.
pub fn render_terminal(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrun {} · plan {} · case {} · {} · {} instances · {:.2}s",
        r.run_id,
        r.plan,
        r.case,
        r.runner,
        r.instances.len(),
        r.duration_secs
    );
    let width = r.groups.keys().map(String::len).max().unwrap_or(0);
    for (id, g) in &r.groups {
        let mark = if g.ok == g.total { "ok  " } else { "FAIL" };
        let sync = r.sync_outcomes.get(id).map(|t| t.success).unwrap_or(0);
        let _ = writeln!(out, "  {mark} {id:width$}  {}/{} passed  ({sync} success events over sync)", g.ok, g.total);
    }
    for i in r.instances.iter().filter(|i| !i.verdict.is_pass()) {
        let _ = writeln!(
            out,
            "\n  FAIL {}[{}] ({}): {} — {}",
            i.group,
            i.group_index,
            i.hostname,
            i.verdict.label(),
            i.verdict.reason()
        );
        let _ = writeln!(out, "       outputs: {}", i.outputs_dir.display());
        if !i.stderr_tail.is_empty() {
            let _ = writeln!(out, "       stderr (last {} lines):", i.stderr_tail.len());
            for line in &i.stderr_tail {
                let _ = writeln!(out, "       │ {line}");
            }
        }
    }
    let _ = writeln!(out, "\n  outputs: {}", r.outputs_dir.display());
    let _ = writeln!(out, "{}", summary_line(r));
    out
}

/// `PASS 10/10 instances passed` or `FAIL 7/10 instances passed: 2 timeout, 1 crash`.
pub fn summary_line(r: &RunReport) -> String {
    let passed = r.instances.iter().filter(|i| i.verdict.is_pass()).count();
    let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
    for i in r.instances.iter().filter(|i| !i.verdict.is_pass()) {
        *failures.entry(i.verdict.label()).or_default() += 1;
    }
    let word = match r.outcome.as_str() {
        "success" => "PASS",
        "canceled" => "CANCELED",
        _ => "FAIL",
    };
    let mut line = format!("{word} {passed}/{} instances passed", r.instances.len());
    if !failures.is_empty() {
        let parts: Vec<String> = failures.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = write!(line, ": {}", parts.join(", "));
    }
    line
}

pub fn render_json(reports: &[RunReport]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "runs": reports }))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Keeps the report beside the outputs as result.json, so a run can be read back later.
pub fn write_result_file(r: &RunReport, outputs_dir: &Path) {
    let path = outputs_dir.join("result.json");
    match serde_json::to_vec_pretty(r) {
        Ok(bytes) => {
            if let Err(e) = std::fs::create_dir_all(outputs_dir).and_then(|_| std::fs::write(&path, bytes)) {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("cannot serialise the report: {e}"),
    }
}
