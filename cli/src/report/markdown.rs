//! Markdown for a CI step summary (`$GITHUB_STEP_SUMMARY`, GitLab/Gitea comments): the overall
//! verdict, a table per run (group, passed/total, what failed), then every instance that did not
//! pass with its reason and links to its logs, relative to the directory the file is written to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::escape::{link, markdown as md};
use super::{summary_line, RunReport};

/// The summary of these runs; `base` is the directory the file will be written to (log links
/// are relative to it).
pub fn render(reports: &[RunReport], base: &Path) -> String {
    let total: usize = reports.iter().map(|r| r.instances.len()).sum();
    let passed: usize = reports.iter().flat_map(|r| &r.instances).filter(|i| i.verdict.is_pass()).count();
    let word = if reports.iter().any(|r| r.outcome == "canceled") {
        "CANCELED"
    } else if !reports.is_empty() && reports.iter().all(|r| r.accepted()) {
        "PASS"
    } else {
        "FAIL"
    };
    let mark = if word == "PASS" { "✅" } else { "❌" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## {mark} tg-nix: {word} — {passed}/{total} instances passed in {} run{}\n",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    for r in reports {
        let mark = match r.cell.as_ref().map(|c| c.verdict.as_str()) {
            Some("flaky") => "⚠️ flaky",
            Some("known-failure") => "🟡 known failure",
            Some("fixed?") => "❔ fixed?",
            _ if r.passed() => "✅",
            _ => "❌",
        };
        let _ = writeln!(
            out,
            "### {} run `{}`{} · {} / {} · {} · {:.2}s\n",
            mark,
            md(&r.run_id),
            // A composition's [[runs]] id, or a matrix cell's values.
            if r.composition_run == "default" { String::new() } else { format!(" {}", md(&r.composition_run)) },
            md(&r.plan),
            md(&r.case),
            md(&r.runner),
            r.duration_secs
        );
        let _ = writeln!(out, "{}\n", md(&summary_line(r)));
        if let Some(cell) = r.cell.as_ref().filter(|c| !c.note.is_empty() || c.state == "cached") {
            let _ = writeln!(
                out,
                "> cell: **{}** ({}){}\n",
                md(&cell.verdict),
                md(&cell.state),
                if cell.note.is_empty() { String::new() } else { format!(" — {}", md(&cell.note)) }
            );
        }
        out.push_str("| group | passed | result | failures |\n|---|---:|---|---|\n");
        for (id, g) in &r.groups {
            let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
            for i in r.instances.iter().filter(|i| &i.group == id && !i.verdict.is_pass()) {
                *failures.entry(i.verdict.label()).or_default() += 1;
            }
            let failures: Vec<String> = failures.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(
                out,
                "| {} | {}/{} | {} | {} |",
                md(id),
                g.ok,
                g.total,
                if g.ok == g.total { "pass" } else { "**FAIL**" },
                if failures.is_empty() { "—".to_string() } else { failures.join(", ") }
            );
        }
        let failed: Vec<_> = r.instances.iter().filter(|i| !i.verdict.is_pass()).collect();
        if !failed.is_empty() {
            out.push('\n');
        }
        for i in failed {
            let logs: Vec<String> = ["stdout", "stderr", "run.out"]
                .iter()
                .map(|f| format!("[{f}]({})", link(base, &i.outputs_dir.join(f))))
                .collect();
            let _ = writeln!(
                out,
                "- {}\\[{}\\] **{}**: {} ({})",
                md(&i.group),
                i.group_index,
                i.verdict.label(),
                md(&i.verdict.reason()),
                logs.join(" · ")
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use crate::report::escape;

    #[test]
    fn table_and_failures_agree_with_the_json() {
        let r = sample();
        let doc = render(std::slice::from_ref(&r), Path::new("/tmp/out"));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        for (id, g) in json["groups"].as_object().unwrap() {
            let row = format!("| {} | {}/{} |", escape::markdown(id), g["ok"], g["total"]);
            assert!(doc.contains(&row), "no `{row}` in\n{doc}");
        }
        for (i, j) in r.instances.iter().zip(json["instances"].as_array().unwrap()) {
            let line = format!(
                "- {}\\[{}\\] **{}**: {}",
                escape::markdown(&i.group),
                i.group_index,
                j["verdict"]["verdict"].as_str().unwrap().replace('_', "-"),
                escape::markdown(&i.verdict.reason())
            );
            assert_eq!(doc.contains(&line), !i.verdict.is_pass(), "`{line}` in\n{doc}");
        }
        assert!(doc.contains("[stderr](run1/g%3Cb%3E/0/stderr)"), "{doc}");
        assert!(!doc.contains("<script>"));
    }
}
