//! JUnit XML: the format CI systems (Jenkins, GitLab, GitHub test reporters) read. One
//! `<testsuite>` per run, one `<testcase>` per instance (classname = group, name = `group[i]`).
//! The document follows the Jenkins/Ant JUnit schema (tests/fixtures/junit.xsd holds the structure
//! it is validated against): element order, required attributes, timestamps without a zone.
//!
//! Matrix cells: a `flaky` cell's run is its passing attempt, so its testcases pass; the testsuite
//! says it was flaky in `cell_verdict`/`cell_note` properties and in `<system-out>` (the Jenkins
//! schema has no flaky element, and CI systems read a passing testcase as green). A
//! `known-failure` cell's failing testcases are `<skipped>` with the known failure's reason, so CI
//! systems do not count them as failures but still show them.

use std::fmt::Write as _;

use tg_nix_runner::Verdict;

use super::escape::xml;
use super::RunReport;

/// How a verdict shows in JUnit: a `failure` is the plan's own doing (its events, its exit), an
/// `error` is the run's (could not start, lost, network config, aborted for another instance),
/// `skipped` an instance that was interrupted before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JunitKind {
    Pass,
    Failure,
    Error,
    Skipped,
}

/// Every variant is listed: a new verdict must choose how CI systems see it.
pub fn kind(v: &Verdict) -> JunitKind {
    match v {
        Verdict::Pass => JunitKind::Pass,
        Verdict::Failure { .. }
        | Verdict::Crash { .. }
        | Verdict::Timeout { .. }
        | Verdict::Signal { .. }
        | Verdict::ExitCode { .. }
        | Verdict::NoOutcome
        | Verdict::OomKilled { .. } => JunitKind::Failure,
        Verdict::StartFailed { .. }
        | Verdict::Lost { .. }
        | Verdict::NetworkConfig { .. }
        | Verdict::Aborted { .. } => JunitKind::Error,
        Verdict::Cancelled => JunitKind::Skipped,
    }
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

/// A verdict's kind within this run: a known failure's failures and errors are skipped.
fn kind_in(r: &RunReport, v: &Verdict) -> JunitKind {
    match kind(v) {
        JunitKind::Failure | JunitKind::Error if r.cell.as_ref().is_some_and(|c| c.verdict == "known-failure") => {
            JunitKind::Skipped
        }
        k => k,
    }
}

fn counts(r: &RunReport) -> Counts {
    let mut c = Counts { tests: r.instances.len(), ..Counts::default() };
    for i in &r.instances {
        match kind_in(r, &i.verdict) {
            JunitKind::Pass => {}
            JunitKind::Failure => c.failures += 1,
            JunitKind::Error => c.errors += 1,
            JunitKind::Skipped => c.skipped += 1,
        }
    }
    c
}

/// The JUnit document for these runs (a matrix passes one report per cell).
pub fn render(reports: &[RunReport]) -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    let mut total = Counts::default();
    let mut time = 0.0;
    for r in reports {
        let c = counts(r);
        total.tests += c.tests;
        total.failures += c.failures;
        total.errors += c.errors;
        time += r.duration_secs;
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"tg-nix\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{time:.3}\">",
        total.tests, total.failures, total.errors
    );
    for (n, r) in reports.iter().enumerate() {
        let c = counts(r);
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" id=\"{n}\" package=\"{}\" hostname=\"{}\" timestamp=\"{}\" tests=\"{}\" \
             failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            xml(&format!("{}/{}/{}", r.plan, r.case, r.composition_run)),
            xml(&r.plan),
            xml(&host),
            xml(r.started_at.trim_end_matches('Z')),
            c.tests,
            c.failures,
            c.errors,
            c.skipped,
            r.duration_secs
        );
        out.push_str("    <properties>\n");
        for (name, value) in [
            ("run_id", r.run_id.as_str()),
            ("composition_run", r.composition_run.as_str()),
            ("plan", r.plan.as_str()),
            ("case", r.case.as_str()),
            ("runner", r.runner.as_str()),
            ("outcome", r.outcome.as_str()),
            ("outputs_dir", &r.outputs_dir.to_string_lossy()),
        ] {
            let _ = writeln!(out, "      <property name=\"{name}\" value=\"{}\"/>", xml(value));
        }
        if let Some(cell) = &r.cell {
            for (name, value) in
                [("cell_verdict", &cell.verdict), ("cell_state", &cell.state), ("cell_note", &cell.note)]
            {
                let _ = writeln!(out, "      <property name=\"{name}\" value=\"{}\"/>", xml(value));
            }
        }
        out.push_str("    </properties>\n");
        for i in &r.instances {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                xml(&format!("{}[{}]", i.group, i.group_index)),
                xml(&i.group),
                i.duration.as_secs_f64()
            );
            let element = match kind_in(r, &i.verdict) {
                JunitKind::Pass => None,
                JunitKind::Failure => Some("failure"),
                JunitKind::Error => Some("error"),
                JunitKind::Skipped => Some("skipped"),
            };
            if element.is_none() && i.stderr_tail.is_empty() {
                out.push_str("/>\n");
                continue;
            }
            out.push_str(">\n");
            let known = r.cell.as_ref().filter(|c| c.verdict == "known-failure");
            if let (Some("skipped"), Some(cell)) = (element, known) {
                let _ = writeln!(
                    out,
                    "      <skipped message=\"{}\">{}: {}&#10;host {} · outputs {}</skipped>",
                    xml(&format!("known failure: {}", cell.note)),
                    i.verdict.label(),
                    xml(&i.verdict.reason()),
                    xml(&i.hostname),
                    xml(&i.outputs_dir.to_string_lossy())
                );
            } else if let Some(element) = element {
                // `skipped` has no `type` attribute in the schema CI systems read.
                let kind =
                    if element == "skipped" { String::new() } else { format!(" type=\"{}\"", i.verdict.label()) };
                let _ = writeln!(
                    out,
                    "      <{element} message=\"{}\"{kind}>{}: {}&#10;host {} · outputs {}</{element}>",
                    xml(&i.verdict.reason()),
                    i.verdict.label(),
                    xml(&i.verdict.reason()),
                    xml(&i.hostname),
                    xml(&i.outputs_dir.to_string_lossy())
                );
            }
            if !i.stderr_tail.is_empty() {
                let _ = writeln!(out, "      <system-err>{}</system-err>", xml(&i.stderr_tail.join("\n")));
            }
            out.push_str("    </testcase>\n");
        }
        let mut system_out = super::summary_line(r);
        if let Some(cell) = &r.cell {
            let _ = write!(
                system_out,
                "\ncell: {} ({}){}",
                cell.verdict,
                cell.state,
                if cell.note.is_empty() { String::new() } else { format!(": {}", cell.note) }
            );
        }
        let _ = writeln!(out, "    <system-out>{}</system-out>", xml(&system_out));
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use crate::report::escape;

    #[test]
    fn every_instance_is_a_testcase_that_agrees_with_the_json() {
        let r = sample();
        let doc = render(std::slice::from_ref(&r));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        let instances = json["instances"].as_array().unwrap();
        assert_eq!(doc.matches("<testcase ").count(), instances.len());
        for (i, j) in r.instances.iter().zip(instances) {
            let head = format!(
                "<testcase name=\"{}\" classname=\"{}\"",
                escape::xml(&format!("{}[{}]", i.group, i.group_index)),
                escape::xml(&i.group)
            );
            let at = doc.find(&head).unwrap_or_else(|| panic!("no {head} in\n{doc}"));
            let case = &doc[at..];
            let case = &case[..case[1..].find("<testcase ").map(|e| e + 1).unwrap_or(case.len())];
            let label = j["verdict"]["verdict"].as_str().unwrap();
            if label == "pass" {
                assert!(!case.contains("<failure") && !case.contains("<error"), "{case}");
            } else {
                assert!(case.contains(&format!("message=\"{}\"", escape::xml(&i.verdict.reason()))), "{case}");
                // The label is the element's text; `type` only where the schema allows it.
                assert!(case.contains(&format!(">{}: ", i.verdict.label())), "{case}");
                if kind(&i.verdict) != JunitKind::Skipped {
                    assert!(case.contains(&format!("type=\"{}\"", i.verdict.label())), "{case}");
                }
            }
        }
        let failures = r.instances.iter().filter(|i| kind(&i.verdict) == JunitKind::Failure).count();
        let errors = r.instances.iter().filter(|i| kind(&i.verdict) == JunitKind::Error).count();
        assert!(doc.contains(&format!("tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\"", instances.len())));
    }

    #[test]
    fn hostile_output_stays_text() {
        let doc = render(&[sample()]);
        assert!(!doc.contains("<script>"), "{doc}");
        assert!(doc.contains("&lt;script&gt;"));
        assert!(!doc.contains('\u{1b}'));
    }
}
