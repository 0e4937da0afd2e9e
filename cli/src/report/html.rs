//! The static HTML report: one self-contained file (inline CSS, no script, no network) with the
//! run metadata, a grid of groups × instances coloured by verdict, and per-instance details
//! (verdict, reason, stderr tail, links to the instance's files relative to the report).
//!
//! Every plan-provided string is escaped; ids and classes are built only from indexes and verdict
//! labels, never from group ids. A matrix cell's section has `v-flaky`, `v-known-failure`,
//! `v-fixed` (a `fixed?` cell) and `v-cached` classes, `data-cell-verdict`/`data-cell-state`, and
//! a `cell-mark` line with the verdict and its note.

use std::fmt::Write as _;
use std::path::Path;

use super::escape::{link, xml as esc};
use super::{summary_line, RunReport};

const STYLE: &str = r#"
:root { color-scheme: light; --pass:#2da44e; --fail:#cf222e; --crash:#8250df; --timeout:#d4a72c;
  --signal:#bc4c00; --infra:#57606a; --skip:#afb8c1; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1f2328; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.overall.pass { color: var(--pass); } .overall.fail { color: var(--fail); }
table.meta td { padding: 0 .8rem 0 0; } table.meta td:first-child { color: #57606a; }
table.grid { border-collapse: collapse; margin: .6rem 0; }
table.grid th { text-align: left; padding: .2rem .6rem .2rem 0; font-weight: 600; }
table.grid td.count { padding-right: .8rem; color: #57606a; }
a.cell { display: inline-block; min-width: 1.6rem; height: 1.6rem; margin: 1px; border-radius: 3px;
  text-align: center; line-height: 1.6rem; font-size: 11px; color: #fff; text-decoration: none; }
.v-pass { background: var(--pass); }
.v-failure, .v-exit-code, .v-no-outcome { background: var(--fail); }
.v-crash { background: var(--crash); }
.v-timeout { background: var(--timeout); }
.v-signal, .v-oom-killed { background: var(--signal); }
.v-start-failed, .v-lost, .v-network-config { background: var(--infra); }
.v-aborted, .v-cancelled { background: var(--skip); color: #1f2328; }
.v-flaky { background: repeating-linear-gradient(45deg, var(--pass), var(--pass) 4px, var(--timeout) 4px, var(--timeout) 8px); }
.v-cached { outline: 2px dashed #0969da; }
.v-fixed { background: repeating-linear-gradient(45deg, var(--pass), var(--pass) 4px, #0969da 4px, #0969da 8px); }
section.run.v-flaky, section.run.v-known-failure, section.run.v-fixed, section.run.v-cached { background: none; outline: none; }
.v-known-failure { background: repeating-linear-gradient(45deg, var(--fail), var(--fail) 4px, var(--skip) 4px, var(--skip) 8px); }
.legend span { display: inline-block; padding: 0 .4rem; margin-right: .3rem; border-radius: 3px; color: #fff; font-size: 12px; }
details.instance { border-left: 4px solid var(--skip); margin: .4rem 0; padding: .2rem .6rem; }
details.instance[class] { background: none; color: inherit; }
details.instance.v-pass { border-color: var(--pass); } details.instance.v-failure, details.instance.v-exit-code,
details.instance.v-no-outcome { border-color: var(--fail); } details.instance.v-crash { border-color: var(--crash); }
details.instance.v-timeout { border-color: var(--timeout); }
details.instance.v-signal, details.instance.v-oom-killed { border-color: var(--signal); }
details.instance.v-start-failed, details.instance.v-lost, details.instance.v-network-config { border-color: var(--infra); }
summary { cursor: pointer; } .label { font-weight: 600; }
pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; max-height: 24rem; }
"#;

/// The report of these runs; `base` is the directory the file will be written to (log links are
/// relative to it).
pub fn render(reports: &[RunReport], base: &Path) -> String {
    let total: usize = reports.iter().map(|r| r.instances.len()).sum();
    let passed: usize = reports.iter().flat_map(|r| &r.instances).filter(|i| i.verdict.is_pass()).count();
    let all_pass = !reports.is_empty() && reports.iter().all(|r| r.accepted());
    let (class, word) = if all_pass { ("pass", "PASS") } else { ("fail", "FAIL") };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>tg-nix report: {word} {passed}/{total}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1 class=\"overall {class}\" id=\"overall\" data-passed=\"{passed}\" data-total=\"{total}\">\
         tg-nix: {word} — {passed}/{total} instances passed</h1>\n"
    );
    out.push_str("<p class=\"legend\">");
    for label in [
        "pass",
        "failure",
        "exit-code",
        "no-outcome",
        "crash",
        "timeout",
        "signal",
        "oom-killed",
        "start-failed",
        "lost",
        "network-config",
        "aborted",
        "cancelled",
        "flaky",
        "known-failure",
        "fixed",
        "cached",
    ] {
        let _ = write!(out, "<span class=\"v-{label}\">{label}</span>");
    }
    out.push_str("</p>\n");
    for (n, r) in reports.iter().enumerate() {
        render_run(&mut out, n, r, base);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn render_run(out: &mut String, n: usize, r: &RunReport, base: &Path) {
    // A matrix cell: its verdict (and `cached`) as classes and data attributes, and its note.
    let (classes, data) = match &r.cell {
        Some(c) => (
            format!(" v-{}{}", c.class(), if c.state == "cached" { " v-cached" } else { "" }),
            format!(" data-cell-verdict=\"{}\" data-cell-state=\"{}\"", esc(&c.verdict), esc(&c.state)),
        ),
        None => (String::new(), String::new()),
    };
    let _ = writeln!(
        out,
        "<section class=\"run{classes}\" id=\"run-{n}\" data-run-id=\"{}\" data-outcome=\"{}\"{data}>\n<h2>run {} · {}</h2>",
        esc(&r.run_id),
        esc(&r.outcome),
        esc(&r.run_id),
        esc(&summary_line(r))
    );
    if let Some(c) = &r.cell {
        let _ = writeln!(
            out,
            "<p class=\"cell-mark\"><span class=\"cell-verdict v-{}\">{}</span> {}</p>",
            c.class(),
            esc(&c.verdict),
            esc(&c.note)
        );
    }
    out.push_str("<table class=\"meta\">\n");
    let duration = format!("{:.2}s", r.duration_secs);
    let outputs = r.outputs_dir.to_string_lossy();
    for (k, v) in [
        ("plan", r.plan.as_str()),
        ("case", r.case.as_str()),
        ("composition run", r.composition_run.as_str()),
        ("runner", r.runner.as_str()),
        ("outcome", r.outcome.as_str()),
        ("started", r.started_at.as_str()),
        ("duration", duration.as_str()),
    ] {
        let _ = writeln!(out, "<tr><td>{k}</td><td>{}</td></tr>", esc(v));
    }
    let _ = writeln!(
        out,
        "<tr><td>outputs</td><td><a href=\"{}\">{}</a></td></tr>\n</table>",
        esc(&link(base, &r.outputs_dir)),
        esc(&outputs)
    );

    out.push_str("<table class=\"grid\">\n");
    for (gn, (id, g)) in r.groups.iter().enumerate() {
        let _ = write!(
            out,
            "<tr class=\"group\" id=\"run-{n}-group-{gn}\"><th>{}</th><td class=\"count\">{}/{}</td><td>",
            esc(id),
            g.ok,
            g.total
        );
        for (k, i) in r.instances.iter().enumerate().filter(|(_, i)| &i.group == id) {
            let _ = write!(
                out,
                "<a class=\"cell v-{label}\" href=\"#run-{n}-instance-{k}\" title=\"{} [{}]: {label} — {}\">{}</a>",
                esc(&i.group),
                i.group_index,
                esc(&i.verdict.reason()),
                i.group_index,
                label = i.verdict.label(),
            );
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");

    for (k, i) in r.instances.iter().enumerate() {
        let label = i.verdict.label();
        let _ = writeln!(
            out,
            "<details class=\"instance v-{label}\" id=\"run-{n}-instance-{k}\" data-group=\"{}\" data-index=\"{}\" \
             data-verdict=\"{label}\"{}>",
            esc(&i.group),
            i.group_index,
            if i.verdict.is_pass() { "" } else { " open" }
        );
        let _ = writeln!(
            out,
            "<summary><span class=\"label\">{}[{}]</span> <span class=\"verdict\">{label}</span> — \
             <span class=\"reason\">{}</span></summary>",
            esc(&i.group),
            i.group_index,
            esc(&i.verdict.reason())
        );
        let ip = i.data_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            out,
            "<p>host {} · data ip {ip} · {:.2}s · outputs <a href=\"{}\">{}</a></p>",
            esc(&i.hostname),
            i.duration.as_secs_f64(),
            esc(&link(base, &i.outputs_dir)),
            esc(&i.outputs_dir.to_string_lossy())
        );
        out.push_str("<p class=\"logs\">");
        for f in ["stdout", "stderr", "run.out"] {
            let _ = write!(out, "<a href=\"{}\">{f}</a> ", esc(&link(base, &i.outputs_dir.join(f))));
        }
        out.push_str("</p>\n");
        if !i.stderr_tail.is_empty() {
            let _ = writeln!(out, "<pre class=\"stderr\">{}</pre>", esc(&i.stderr_tail.join("\n")));
        }
        out.push_str("</details>\n");
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use crate::report::escape;

    #[test]
    fn every_instance_has_a_cell_and_details_that_agree_with_the_json() {
        let r = sample();
        let doc = render(std::slice::from_ref(&r), Path::new("/tmp/out"));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        let instances = json["instances"].as_array().unwrap();
        assert_eq!(doc.matches("<a class=\"cell ").count(), instances.len());
        assert_eq!(doc.matches("<details class=\"instance ").count(), instances.len());
        for (k, (i, j)) in r.instances.iter().zip(instances).enumerate() {
            let label = j["verdict"]["verdict"].as_str().unwrap().replace('_', "-");
            let details = format!(
                "<details class=\"instance v-{label}\" id=\"run-0-instance-{k}\" data-group=\"{}\" data-index=\"{}\"",
                escape::xml(j["group"].as_str().unwrap()),
                j["group_index"]
            );
            assert!(doc.contains(&details), "no {details}");
            let reason = format!("<span class=\"reason\">{}</span>", escape::xml(&i.verdict.reason()));
            assert!(doc.contains(&reason), "no {reason}");
            assert!(doc.contains(&format!("<a class=\"cell v-{label}\" href=\"#run-0-instance-{k}\"")));
        }
        for (id, g) in json["groups"].as_object().unwrap() {
            let row = format!("<th>{}</th><td class=\"count\">{}/{}</td>", escape::xml(id), g["ok"], g["total"]);
            assert!(doc.contains(&row), "no {row}");
        }
    }

    #[test]
    fn hostile_output_is_escaped_and_nothing_is_fetched() {
        let doc = render(&[sample()], Path::new("/tmp/out"));
        assert!(!doc.to_lowercase().contains("<script"), "{doc}");
        assert!(!doc.contains("<b>"), "{doc}");
        assert!(doc.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!doc.contains("http://") && !doc.contains("https://"));
    }
}
