//! `tg-nix render`: print a composition as tg-nix parses it, so that a user can see what a
//! template produced, and check it.

use std::io::Write as _;
use std::path::Path;

use tg_nix_model::{render_composition, Composition, TemplateData};

use crate::error::{exit, CliError};

/// Prints the rendered text on stdout (the file itself when it is not a template), then checks it
/// as a composition: a problem is the usual bad-input error, after the text it points into.
pub fn run(composition: &Path, set: Vec<(String, String)>) -> Result<i32, CliError> {
    let text = std::fs::read_to_string(composition).map_err(|e| {
        CliError::input(format!("{}: cannot read the file: {e}", composition.display()), "check the path")
    })?;
    let data = TemplateData::from_env(set);
    let rendered = render_composition(&text, composition, &data)?;
    let out = rendered.as_deref().unwrap_or(&text);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    if !out.is_empty() && !out.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
    let checked = Composition::load_with(composition, &data)?;
    for w in &checked.warnings {
        eprintln!("warning: {w}");
    }
    Ok(exit::OK)
}
