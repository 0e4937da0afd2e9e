//! The crate's one error type and its warnings: plain data that names the file, the key, the line
//! and the fix, so the CLI can print one paragraph and tests can assert every field.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Serialize;

/// What went wrong, for callers that branch on it (tests, exit codes). The message says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file could not be read (missing, unreadable, not UTF-8).
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key that neither Testground nor tg-nix knows at this place.
    UnknownKey,
    /// A value of the wrong TOML type (a string where a number belongs, …).
    WrongType,
    /// A required key is absent.
    Missing,
    /// The value has the right type but is not acceptable (out of range, unsafe, duplicate, …).
    Invalid,
    /// The composition names something the manifest does not declare (case, builder, runner, group).
    NotFound,
}

/// An input problem, located as precisely as the input allows.
///
/// `Display` renders `<file>:<line>:<column>: <key>: <message>` (parts that are unknown are left
/// out), then the hint on its own line as `(hint: …)`.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
pub struct ModelError {
    pub kind: ErrorKind,
    /// The file the problem is in; empty for values that come from no file (an [`crate::InstanceEnv`]).
    pub file: PathBuf,
    /// Where in the file, as a TOML key path: `groups[1].instances`, `builders."exec:go"`.
    pub key: Option<String>,
    /// 1-based line of the key (or of the syntax error).
    pub line: Option<usize>,
    /// 1-based column (in characters); set for syntax errors. (`NonZeroU32` keeps this error
    /// under 128 bytes, clippy's `result_large_err` line, for every crate that wraps it.)
    pub column: Option<NonZeroU32>,
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ModelError {
    pub(crate) fn new(kind: ErrorKind, file: impl Into<PathBuf>, message: impl Into<String>) -> ModelError {
        ModelError { kind, file: file.into(), key: None, line: None, column: None, message: message.into(), hint: None }
    }

    pub(crate) fn at(mut self, key: impl Into<String>, line: Option<usize>) -> ModelError {
        self.key = Some(key.into());
        self.line = line;
        self
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> ModelError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line, self.column, self.key.as_deref())?;
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n(hint: {hint})")?;
        }
        Ok(())
    }
}

/// Something tg-nix accepts but wants the user to know: a Testground key it ignores, a parameter
/// the manifest does not declare, a value some SDK will mangle. Same fields as [`ModelError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub file: PathBuf,
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line, None, self.key.as_deref())?;
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n(hint: {hint})")?;
        }
        Ok(())
    }
}

fn write_location(
    f: &mut fmt::Formatter<'_>,
    file: &std::path::Path,
    line: Option<usize>,
    column: Option<NonZeroU32>,
    key: Option<&str>,
) -> fmt::Result {
    if !file.as_os_str().is_empty() {
        write!(f, "{}", file.display())?;
        if let Some(line) = line {
            write!(f, ":{line}")?;
            if let Some(column) = column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
    }
    if let Some(key) = key {
        write!(f, "{key}: ")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_table() {
        let base = ModelError::new(ErrorKind::Invalid, "c.toml", "boom");
        let cases: Vec<(ModelError, &str)> = vec![
            (base.clone(), "c.toml: boom"),
            (base.clone().at("groups[1].instances", Some(7)), "c.toml:7: groups[1].instances: boom"),
            (base.clone().at("global.case", None).hint("add it"), "c.toml: global.case: boom\n(hint: add it)"),
            (ModelError { column: NonZeroU32::new(3), line: Some(2), ..base.clone() }, "c.toml:2:3: boom"),
            (ModelError::new(ErrorKind::Invalid, "", "bad").at("TEST_SUBNET", None), "TEST_SUBNET: bad"),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let w = Warning {
            file: "m.toml".into(),
            key: Some("defaults".into()),
            line: Some(2),
            message: "ignored".into(),
            hint: None,
        };
        assert_eq!(w.to_string(), "m.toml:2: defaults: ignored");
    }
}
