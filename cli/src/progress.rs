//! Build progress on stderr. On a terminal: one spinner per build unit (indicatif) showing its
//! latest build log line, with step lines printed above the spinners. Otherwise (CI logs, pipes):
//! a plain line per step, and the log lines are dropped.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tg_nix_builders::Progress;

/// The display the units of one build share.
pub struct BuildDisplay {
    multi: Option<MultiProgress>,
}

impl BuildDisplay {
    pub fn new() -> BuildDisplay {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
        BuildDisplay { multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())) }
    }

    /// A line above the spinners (or a plain line).
    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// The progress of one build unit, labelled with its group(s).
    pub fn unit(&self, label: &str) -> BuildProgress<'_> {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        BuildProgress { display: self, prefix: format!("build  {label}: "), bar }
    }
}

/// Progress of one build unit (`build  <group>: …`).
pub struct BuildProgress<'a> {
    display: &'a BuildDisplay,
    prefix: String,
    bar: Option<ProgressBar>,
}

impl BuildProgress<'_> {
    pub fn report(&self, p: Progress<'_>) {
        match (p, &self.bar) {
            (Progress::Step(step), _) => self.display.line(&format!("{}{step}", self.prefix)),
            (Progress::Log(line), Some(bar)) => {
                bar.set_message(line.trim().chars().filter(|c| !c.is_control()).collect::<String>())
            }
            (Progress::Log(_), None) => {}
        }
    }
}

impl Drop for BuildProgress<'_> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
