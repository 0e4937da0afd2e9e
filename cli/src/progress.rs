//! Build progress on stderr: a plain line per step; on a terminal also the build's latest log
//! line, rewritten in place.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use tg_nix_builders::Progress;

/// Progress of one build unit (`build  <group>: …`).
pub struct BuildProgress {
    prefix: String,
    tty: bool,
    /// Whether an in-place line is showing (it must be cleared before a plain line).
    live: Mutex<bool>,
}

impl BuildProgress {
    pub fn new(group: &str) -> BuildProgress {
        BuildProgress {
            prefix: format!("build  {group}: "),
            tty: std::io::stderr().is_terminal(),
            live: Mutex::new(false),
        }
    }

    pub fn report(&self, p: Progress<'_>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        match p {
            Progress::Step(step) => {
                if *live {
                    let _ = write!(err, "\r\x1b[2K");
                    *live = false;
                }
                let _ = writeln!(err, "{}{step}", self.prefix);
            }
            Progress::Log(line) if self.tty => {
                let width = std::env::var("COLUMNS")
                    .ok()
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(100)
                    .saturating_sub(1);
                let text: String =
                    format!("{}{}", self.prefix, line.trim()).chars().filter(|c| !c.is_control()).take(width).collect();
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
                *live = true;
            }
            Progress::Log(_) => {}
        }
    }

    /// Clears the in-place line, if any.
    pub fn finish(&self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if *live {
            eprint!("\r\x1b[2K");
            *live = false;
        }
    }
}
