//! Reports of a run: the terminal summary, `--json`, and the report files of `--report-dir`
//! (report.json, junit.xml, summary.md, index.html), all from one [`RunReport`] per run. The
//! file renderers take a list of runs, so a matrix (a run per cell) reuses them as they are.

pub mod escape;
pub mod html;
pub mod junit;
pub mod markdown;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::CliError;

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
    /// When the run started, RFC 3339 in UTC to the second (`2024-05-01T12:00:00Z`).
    pub started_at: String,
    pub outputs_dir: PathBuf,
    /// Set by `tg-nix matrix` only: how the matrix judged the cell this run belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<CellMark>,
}

/// How a matrix judged a cell, beyond its last run's own outcome (docs/cli.md, `matrix`).
#[derive(Debug, Clone, Serialize)]
pub struct CellMark {
    /// `pass`, `fail`, `flaky` (failed, then passed on a retry), `known-failure` (failed, matches
    /// an unexpired known-failures entry) or `fixed?` (passed, but matches such an entry).
    pub verdict: String,
    /// `ran` or `cached`.
    pub state: String,
    /// For readers: the attempts of a flaky cell, a known failure's reason, an expired entry.
    pub note: String,
}

impl CellMark {
    /// The verdict as an HTML class suffix (letters and dashes only).
    pub fn class(&self) -> String {
        self.verdict.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
    }
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
            started_at: humantime::format_rfc3339_seconds(
                std::time::SystemTime::now().checked_sub(outcome.duration).unwrap_or(std::time::UNIX_EPOCH),
            )
            .to_string(),
            outputs_dir: outputs_dir.to_path_buf(),
            cell: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.outcome == "success"
    }

    /// Passed, or failed as a known failure of a matrix (which does not fail the whole).
    pub fn accepted(&self) -> bool {
        self.passed() || self.cell.as_ref().is_some_and(|c| c.verdict == "known-failure")
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

/// The files `--report-dir` writes, in the order they are written.
pub const REPORT_FILES: [&str; 4] = ["report.json", "junit.xml", "summary.md", "index.html"];

/// Creates the report directory (before anything is built, so a bad `--report-dir` fails fast).
pub fn prepare_report_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::input(
            format!("--report-dir {}: cannot create it: {e}", dir.display()),
            "give a directory tg-nix may create and write to",
        )
    })
}

/// Writes report.json (the same document as `--json`), junit.xml, summary.md and index.html
/// for these runs into `dir`; log links are relative to `dir`. Returns the paths written.
pub fn write_report_dir(dir: &Path, reports: &[RunReport]) -> Result<Vec<PathBuf>, CliError> {
    prepare_report_dir(dir)?;
    let contents = [
        render_json(reports) + "\n",
        junit::render(reports),
        markdown::render(reports, dir),
        html::render(reports, dir),
    ];
    let mut written = Vec::new();
    for (name, text) in REPORT_FILES.iter().zip(contents) {
        let path = dir.join(name);
        // Written beside and renamed, so a reader (a CI step, a browser) never sees half a file.
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, text)
            .and_then(|_| std::fs::rename(&partial, &path))
            .map_err(|e| CliError::infra(format!("cannot write the report {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tg_nix_runner::{InstanceResult, Verdict};

    use super::*;

    fn instance(group: &str, index: u64, verdict: Verdict, stderr: &[&str]) -> InstanceResult {
        InstanceResult {
            group: group.to_string(),
            group_index: index,
            global_index: 0,
            hostname: format!("{group}-{index}"),
            data_ip: None,
            verdict,
            outputs_dir: PathBuf::from(format!("/tmp/out/run1/{group}/{index}")),
            stderr_tail: stderr.iter().map(|s| s.to_string()).collect(),
            duration: Duration::from_millis(1500 + index * 10),
        }
    }

    /// A run with every kind of verdict, a hostile group id and hostile stderr.
    pub(crate) fn sample() -> RunReport {
        let instances = vec![
            instance("dialer", 0, Verdict::Pass, &[]),
            instance(
                "dialer",
                1,
                Verdict::Failure { error: "ping | failed <b>".into() },
                &["<script>alert(1)</script>"],
            ),
            instance(
                "g<b>",
                0,
                Verdict::Crash { error: "index out of bounds".into() },
                &["\u{1b}[31mpanicked\u{1b}[0m"],
            ),
            instance("g<b>", 1, Verdict::Timeout { success_recorded: true }, &[]),
            instance("g<b>", 2, Verdict::Signal { signal: "SIGABRT (6)".into(), success_recorded: false }, &[]),
            instance("listener", 0, Verdict::ExitCode { code: 3, success_recorded: true }, &["line 1", "line 2"]),
            instance("listener", 1, Verdict::NoOutcome, &[]),
            instance("listener", 2, Verdict::StartFailed { error: "no such file".into() }, &[]),
            instance("listener", 3, Verdict::Cancelled, &[]),
            instance("listener", 4, Verdict::Aborted { reason: "dialer[1] network config".into() }, &[]),
        ];
        let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
        for i in &instances {
            let g = groups.entry(i.group.clone()).or_insert(GroupSummary { ok: 0, total: 0 });
            g.total += 1;
            g.ok += u64::from(i.verdict.is_pass());
        }
        RunReport {
            run_id: "cs0l1l8m1a2b3c4d5e6f".into(),
            composition_run: "default".into(),
            plan: "placebo-rust".into(),
            case: "mixed".into(),
            runner: "local:exec".into(),
            outcome: "failure".into(),
            groups,
            instances,
            sync_outcomes: BTreeMap::new(),
            duration_secs: 4.5,
            started_at: "2024-05-01T12:00:00Z".into(),
            outputs_dir: PathBuf::from("/tmp/out/run1"),
            cell: None,
        }
    }

    #[test]
    fn report_dir_holds_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_report_dir(&dir.path().join("r"), &[sample()]).unwrap();
        assert_eq!(written.len(), REPORT_FILES.len());
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
        assert_eq!(json["runs"][0]["instances"].as_array().unwrap().len(), 10);
        for path in &written {
            assert!(std::fs::metadata(path).unwrap().len() > 0, "{}", path.display());
        }
    }
}
