//! Reading a TOML document the way the manifest and composition modules need it: the parsed
//! table, the line of every key path, and a small schema walker that turns unknown keys into
//! errors ("did you mean `instances`?") and known-but-ignored Testground keys into warnings.
//!
//! We parse into a plain `toml::Table` and walk it by hand instead of deriving `Deserialize`:
//! serde's messages cannot name the key path, suggest a key, or tell "ignored" from "unknown".

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use toml::{Table, Value};

use crate::error::{ErrorKind, ModelError, Warning};
use crate::params::param_default_string;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `groups[1].build_config."go.version"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    fn parent(&self) -> Option<KeyPath> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(&quote_key(k))?;
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A key as TOML would need it written: bare when it can be, else a quoted basic string. Control
/// characters are escaped, so a hostile key cannot reach the terminal raw.
pub(crate) fn quote_key(key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len() + 2);
    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The 1-based line of every key path in a document.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SpanIndex {
    lines: HashMap<KeyPath, usize>,
}

impl SpanIndex {
    /// The line of `path`, or of its nearest ancestor that has one (a missing key is reported at
    /// the table that should hold it).
    pub(crate) fn line(&self, path: &KeyPath) -> Option<usize> {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(line) = self.lines.get(&cur) {
                return Some(*line);
            }
            p = cur.parent();
        }
        None
    }

    fn build(text: &str) -> SpanIndex {
        let starts = LineStarts::new(text);
        let mut index = SpanIndex::default();
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            index.add_table(doc.get_ref(), &KeyPath::root(), &starts);
        }
        index
    }

    fn add_table(&mut self, table: &toml::de::DeTable<'_>, path: &KeyPath, starts: &LineStarts) {
        for (key, value) in table.iter() {
            let child = path.key(key.get_ref());
            self.lines.insert(child.clone(), starts.line_col(key.span().start).0);
            self.add_value(value.get_ref(), &child, starts);
        }
    }

    fn add_value(&mut self, value: &toml::de::DeValue<'_>, path: &KeyPath, starts: &LineStarts) {
        match value {
            toml::de::DeValue::Table(t) => self.add_table(t, path, starts),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let child = path.index(i);
                    self.lines.insert(child.clone(), starts.line_col(item.span().start).0);
                    self.add_value(item.get_ref(), &child, starts);
                }
            }
            _ => {}
        }
    }
}

/// Byte offset → 1-based (line, column in characters).
struct LineStarts<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineStarts<'a> {
    fn new(text: &'a str) -> LineStarts<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts { text, starts }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self.text.get(start..offset).map(|s| s.chars().count()).unwrap_or(0) + 1;
        (line, column)
    }
}

/// A parsed document: the values, and where each key is.
#[derive(Debug)]
pub(crate) struct Doc {
    pub(crate) table: Table,
    pub(crate) lines: SpanIndex,
}

/// Parses `text`; a syntax error carries the file, line, column and the parser's message.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Doc, ModelError> {
    match toml::from_str::<Table>(text) {
        Ok(table) => Ok(Doc { table, lines: SpanIndex::build(text) }),
        Err(e) => {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = LineStarts::new(text).line_col(span.start);
                    (Some(l), u32::try_from(c).ok().and_then(std::num::NonZeroU32::new))
                }
                None => (None, None),
            };
            let message = format!("invalid TOML: {}", e.message().trim_end());
            Err(ModelError { line, column, ..ModelError::new(ErrorKind::Syntax, file, message) })
        }
    }
}

/// Reads a file for `load`: I/O and UTF-8 problems become [`ErrorKind::Io`] errors.
pub(crate) fn read(file: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(file).map_err(|e| {
        ModelError::new(ErrorKind::Io, file, format!("cannot read the file: {e}"))
            .hint("check the path; plan directories hold a manifest.toml")
    })?;
    String::from_utf8(bytes).map_err(|e| {
        ModelError::new(ErrorKind::Io, file, format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
            .hint("TOML files must be UTF-8")
    })
}

/// A Testground key that tg-nix reads past: using it is a warning, once per file and kind.
#[derive(Debug)]
pub(crate) struct Ignored {
    pub(crate) message: &'static str,
    pub(crate) hint: Option<&'static str>,
}

/// How the schema walker treats a key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// Read by tg-nix.
    Known,
    /// A Testground key tg-nix does not use: accepted with a warning.
    Ignored(&'static Ignored),
}

/// The keys of one table, and keys that users put here but that belong elsewhere.
pub(crate) struct Schema {
    /// How the table is called in messages (`[[groups]]`).
    pub(crate) what: &'static str,
    pub(crate) keys: &'static [(&'static str, Rule)],
    /// (key, hint) for keys users put here that belong elsewhere or are spelled differently.
    pub(crate) elsewhere: &'static [(&'static str, &'static str)],
}

/// Walks one document: typed getters that name the key path on error, and warning collection.
pub(crate) struct Reader<'a> {
    pub(crate) file: &'a Path,
    pub(crate) lines: &'a SpanIndex,
    ignored: Vec<(&'static Ignored, KeyPath)>,
    warnings: Vec<Warning>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &'a Path, lines: &'a SpanIndex) -> Reader<'a> {
        Reader { file, lines, ignored: Vec::new(), warnings: Vec::new() }
    }

    pub(crate) fn err(&self, kind: ErrorKind, path: &KeyPath, message: impl Into<String>) -> ModelError {
        ModelError::new(kind, self.file, message).at(path.to_string(), self.lines.line(path))
    }

    pub(crate) fn warn(&mut self, path: &KeyPath, message: impl Into<String>, hint: Option<String>) {
        self.warnings.push(Warning {
            file: self.file.to_path_buf(),
            key: Some(path.to_string()),
            line: self.lines.line(path),
            message: message.into(),
            hint,
        });
    }

    pub(crate) fn ignore(&mut self, what: &'static Ignored, path: KeyPath) {
        self.ignored.push((what, path));
    }

    /// All warnings: the direct ones, then one per kind of ignored key (listing where else it occurs).
    pub(crate) fn finish(mut self) -> Vec<Warning> {
        let mut groups: Vec<(&'static Ignored, Vec<KeyPath>)> = Vec::new();
        for (what, path) in self.ignored {
            match groups.iter_mut().find(|(w, _)| std::ptr::eq(*w, what)) {
                Some((_, paths)) => paths.push(path),
                None => groups.push((what, vec![path])),
            }
        }
        for (what, paths) in groups {
            let first = &paths[0];
            let mut message = what.message.to_string();
            if paths.len() > 1 {
                let others: Vec<String> = paths[1..].iter().take(5).map(|p| p.to_string()).collect();
                let more = paths.len().saturating_sub(6);
                message.push_str(&format!(
                    " (also at {}{})",
                    others.join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                ));
            }
            self.warnings.push(Warning {
                file: self.file.to_path_buf(),
                key: Some(first.to_string()),
                line: self.lines.line(first),
                message,
                hint: what.hint.map(String::from),
            });
        }
        self.warnings
    }

    /// Rejects keys the schema does not list, records ignored ones.
    pub(crate) fn check_keys(&mut self, table: &Table, path: &KeyPath, schema: &Schema) -> Result<(), ModelError> {
        for key in table.keys() {
            match schema.keys.iter().find(|(k, _)| *k == key) {
                Some((_, Rule::Known)) => {}
                Some((_, Rule::Ignored(what))) => self.ignore(what, path.key(key)),
                None => return Err(self.unknown_key(key, path, schema)),
            }
        }
        Ok(())
    }

    fn unknown_key(&self, key: &str, path: &KeyPath, schema: &Schema) -> ModelError {
        let here = path.key(key);
        let known: Vec<&str> = schema.keys.iter().map(|(k, _)| *k).collect();
        let hint = if let Some((_, hint)) = schema.elsewhere.iter().find(|(k, _)| *k == key) {
            hint.to_string()
        } else if let Some(close) = closest(key, &known) {
            if close.eq_ignore_ascii_case(key) {
                format!("did you mean `{close}`? keys are case-sensitive")
            } else {
                format!("did you mean `{close}`?")
            }
        } else {
            format!("the keys of {} are: {}", schema.what, known.join(", "))
        };
        self.err(ErrorKind::UnknownKey, &here, format!("unknown key `{}` in {}", quote_key(key), schema.what))
            .hint(hint)
    }

    fn wrong_type(&self, path: &KeyPath, want: &str, got: &Value) -> ModelError {
        self.err(ErrorKind::WrongType, path, format!("expected {want}, found {}", describe(got)))
    }

    pub(crate) fn string(&self, t: &Table, path: &KeyPath, key: &str) -> Result<Option<String>, ModelError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(&path.key(key), "a string", v)),
        }
    }

    pub(crate) fn u64(&self, t: &Table, path: &KeyPath, key: &str) -> Result<Option<u64>, ModelError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| self.err(ErrorKind::Invalid, &path.key(key), format!("must not be negative, found {n}"))),
            Some(v) => Err(self.wrong_type(&path.key(key), "a whole number", v)),
        }
    }

    pub(crate) fn f64(&self, t: &Table, path: &KeyPath, key: &str) -> Result<Option<f64>, ModelError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Float(x)) => Ok(Some(*x)),
            Some(Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(v) => Err(self.wrong_type(&path.key(key), "a number", v)),
        }
    }

    pub(crate) fn bool(&self, t: &Table, path: &KeyPath, key: &str) -> Result<Option<bool>, ModelError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(&path.key(key), "true or false", v)),
        }
    }

    pub(crate) fn table<'t>(&self, t: &'t Table, path: &KeyPath, key: &str) -> Result<Option<&'t Table>, ModelError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Table(inner)) => Ok(Some(inner)),
            Some(v) => Err(self.wrong_type(&path.key(key), "a table", v)),
        }
    }

    /// An array of tables (`[[groups]]`), each with its own path.
    pub(crate) fn tables<'t>(
        &self,
        t: &'t Table,
        path: &KeyPath,
        key: &str,
    ) -> Result<Vec<(KeyPath, &'t Table)>, ModelError> {
        let here = path.key(key);
        match t.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Table(inner) => Ok((here.index(i), inner)),
                    v => Err(self.wrong_type(&here.index(i), "a table", v)),
                })
                .collect(),
            Some(v) => Err(self.wrong_type(&here, &format!("an array of tables ([[{key}]])"), v)),
        }
    }

    pub(crate) fn strings(&self, t: &Table, path: &KeyPath, key: &str) -> Result<Vec<String>, ModelError> {
        let here = path.key(key);
        match t.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(self.wrong_type(&here.index(i), "a string", v)),
                })
                .collect(),
            Some(v) => Err(self.wrong_type(&here, "an array of strings", v)),
        }
    }

    /// A `k = "v"` map such as `test_params` or `profiles`. Testground's maps are string-only;
    /// tg-nix also takes numbers, booleans and arrays and encodes them as manifest defaults are
    /// encoded ([`param_default_string`]), so `iterations = 5` means `"5"`.
    pub(crate) fn string_map(
        &self,
        t: &Table,
        path: &KeyPath,
        key: &str,
    ) -> Result<BTreeMap<String, String>, ModelError> {
        let Some(map) = self.table(t, path, key)? else { return Ok(BTreeMap::new()) };
        let here = path.key(key);
        let mut out = BTreeMap::new();
        for (k, v) in map {
            match v {
                Value::Table(_) => {
                    return Err(self
                        .wrong_type(&here.key(k), "a value", v)
                        .hint(format!("quote keys that contain dots: \"{k}.…\" = \"…\"; {key} values are strings")))
                }
                v => {
                    out.insert(k.clone(), param_default_string(v));
                }
            }
        }
        Ok(out)
    }
}

/// Why `name` cannot be used as one directory name (group ids, run ids and the plan name become
/// directories under the outputs dir), or `None` when it can.
pub(crate) fn dir_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.contains("..") {
        Some("it contains `..`")
    } else if name.starts_with('.') {
        Some("it starts with `.`")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else {
        None
    }
}

/// `a string "x"`, `an integer 5`, … for type errors (values are shortened and escaped).
fn describe(v: &Value) -> String {
    let kind = type_name(v);
    let shown = match v {
        Value::Table(_) => return kind.to_string(),
        Value::Array(_) => return kind.to_string(),
        v => v.to_string(),
    };
    let shown: String = shown.chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect();
    format!("{kind} {shown}")
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The candidate closest to `word` by edit distance (case-insensitive), if it is close enough to
/// be a typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let w = word.to_lowercase();
    let mut best: Option<(usize, &'c str)> = None;
    for c in candidates {
        let d = edit_distance(&w, &c.to_lowercase());
        let limit = (c.chars().count() / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Edit distance over chars where swapping two neighbours counts as one edit (`csae` → `case`),
/// the optimal-string-alignment variant of Damerau–Levenshtein. Inputs are cut at 64 chars: longer
/// words are not typos of our keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_like_toml() {
        let p = KeyPath::root().key("groups").index(1).key("build_config").key("go.version");
        assert_eq!(p.to_string(), "groups[1].build_config.\"go.version\"");
        assert_eq!(KeyPath::root().key("builders").key("exec:go").to_string(), "builders.\"exec:go\"");
        assert_eq!(quote_key("a\u{1b}[31m\""), "\"a\\u001B[31m\\\"\"");
        assert_eq!(quote_key(""), "\"\"");
    }

    #[test]
    fn closest_table() {
        assert_eq!(closest("csae", &["case", "plan"]), Some("case"));
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let keys = ["id", "builder", "instances", "build_config", "build", "run", "resources"];
        let cases = [
            ("instnaces", Some("instances")),
            ("Instances", Some("instances")),
            ("buidler", Some("builder")),
            ("runs", Some("run")),
            ("zzzzzz", None),
            ("csae", None),
            ("", None),
        ];
        for (word, want) in cases {
            assert_eq!(closest(word, &keys), want, "{word}");
        }
    }

    #[test]
    fn lines_of_key_paths() {
        let text = "name = \"x\"\n\n[[groups]]\nid = \"a\"\n\n[[groups]]\nid = \"b\"\ninstances = { count = 2 }\n";
        let doc = parse(text, Path::new("c.toml")).expect("parses");
        let p = KeyPath::root().key("groups").index(1);
        assert_eq!(doc.lines.line(&KeyPath::root().key("name")), Some(1));
        assert_eq!(doc.lines.line(&p.key("id")), Some(7));
        assert_eq!(doc.lines.line(&p.key("instances").key("count")), Some(8));
        // A missing key is placed at its nearest ancestor.
        assert_eq!(doc.lines.line(&p.key("builder")), doc.lines.line(&p));
        assert!(doc.lines.line(&p).is_some_and(|l| (6..=7).contains(&l)), "{:?}", doc.lines.line(&p));
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = parse("a = 1\nb = = 2\n", Path::new("m.toml")).expect_err("fails");
        assert_eq!(err.kind, ErrorKind::Syntax);
        assert_eq!(err.line, Some(2));
        assert!(err.column.is_some());
        assert!(err.to_string().starts_with("m.toml:2:"), "{err}");
        let err = parse("a = 1\na = 2\n", Path::new("m.toml")).expect_err("duplicate key");
        assert_eq!(err.line, Some(2), "{err}");
    }
}
