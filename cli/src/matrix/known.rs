//! The known-failures file of `tg-nix matrix --known-failures FILE` (docs/formats.md): entries
//! that match cells by a glob per dimension value, with a reason and an expiry date. A failing
//! cell matching an unexpired entry is a known failure; a passing one is flagged `fixed?`; an
//! expired entry no longer applies and is reported as expired.
//!
//! Everything is checked when the file is read (before anything is built, run or cached): unknown
//! keys, unknown dimensions, invalid globs and dates are errors naming the file, line and key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::CliError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(rename = "known-failure", default)]
    entries: Vec<Spanned<EntryText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryText {
    cell: Spanned<BTreeMap<String, Spanned<toml::Value>>>,
    reason: String,
    until: Spanned<toml::Value>,
}

/// One entry, checked.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 0-based position in the file.
    pub index: usize,
    /// 1-based line of the entry in the file.
    pub line: usize,
    /// Dimension → glob over its values; a dimension not named matches every value.
    pub cell: BTreeMap<String, Glob>,
    pub reason: String,
    /// `YYYY-MM-DD`; the entry applies to the end of that day (UTC).
    pub until: String,
}

impl Entry {
    pub fn matches(&self, values: &BTreeMap<String, String>) -> bool {
        self.cell.iter().all(|(dim, glob)| values.get(dim).is_some_and(|v| glob.matches(v)))
    }

    pub fn expired(&self, today: &str) -> bool {
        today > self.until.as_str()
    }

    /// `FILE:LINE`, to point a reader at the entry.
    pub fn place(&self, file: &Path) -> String {
        format!("{}:{}", file.display(), self.line)
    }
}

/// A checked known-failures file.
#[derive(Debug, Clone)]
pub struct KnownFailures {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl KnownFailures {
    /// The first unexpired entry matching these values, else the first expired one.
    pub fn find(&self, values: &BTreeMap<String, String>, today: &str) -> Option<&Entry> {
        let mut matching = self.entries.iter().filter(|e| e.matches(values));
        let first = matching.clone().find(|e| !e.expired(today));
        first.or_else(|| matching.next())
    }
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// Reads and checks a known-failures file against the matrix's dimensions.
pub fn load(path: &Path, dimensions: &[String]) -> Result<KnownFailures, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::input(format!("{}: cannot read the known-failures file: {e}", path.display()), "check the path")
    })?;
    let shape = "a known-failures file holds [[known-failure]] entries with `cell = { DIMENSION = \"GLOB\", … }`, \
                 `reason = \"…\"` and `until = \"YYYY-MM-DD\"` (docs/formats.md)";
    let file: FileText = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| format!(":{}", line_of(&text, s))).unwrap_or_default();
        CliError::input(format!("{}{at}: not a valid known-failures file: {}", path.display(), e.message()), shape)
    })?;
    let mut entries = Vec::new();
    for (index, spanned) in file.entries.into_iter().enumerate() {
        let line = line_of(&text, spanned.span());
        let entry = spanned.into_inner();
        let at = |span: Range<usize>, key: &str| {
            format!("{}:{}: known-failure[{index}].{key}", path.display(), line_of(&text, span))
        };
        let cell_span = entry.cell.span();
        let cell_map = entry.cell.into_inner();
        if cell_map.is_empty() {
            return Err(CliError::input(
                format!("{}: an empty cell pattern matches every cell", at(cell_span, "cell")),
                "name at least one dimension: `cell = { DIMENSION = \"GLOB\" }`",
            ));
        }
        let mut cell = BTreeMap::new();
        for (dim, value) in cell_map {
            let span = value.span();
            if !dimensions.contains(&dim) {
                return Err(CliError::input(
                    format!("{}: no such dimension", at(span, &format!("cell.{dim}"))),
                    format!("the matrix's dimensions are: {}", dimensions.join(", ")),
                ));
            }
            let pattern = match value.into_inner() {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(CliError::input(
                        format!("{}: not a string", at(span, &format!("cell.{dim}"))),
                        "give a glob over the dimension's values: `\"1.0.*\"`, `\"*\"`",
                    ))
                }
            };
            let glob = Glob::new(&pattern).map_err(|why| {
                CliError::input(
                    format!("{}: invalid glob {pattern:?}: {why}", at(span.clone(), &format!("cell.{dim}"))),
                    "a glob has `*` (any text), `?` (one character), `[abc]`/`[a-z]`/`[!a]` (one of), `\\` to escape",
                )
            })?;
            cell.insert(dim, glob);
        }
        let until_span = entry.until.span();
        let until = match entry.until.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Datetime(d) if d.time.is_none() && d.offset.is_none() => d.to_string(),
            other => other.to_string(),
        };
        check_date(&until).map_err(|why| {
            CliError::input(
                format!("{}: {until:?} is not a date: {why}", at(until_span, "until")),
                "give the last day the entry applies, `until = \"YYYY-MM-DD\"`",
            )
        })?;
        entries.push(Entry { index, line, cell, reason: entry.reason, until });
    }
    Ok(KnownFailures { path: path.to_path_buf(), entries })
}

/// `YYYY-MM-DD`, a real day of the Gregorian calendar.
fn check_date(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let digits = |r: Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return Err("not YYYY-MM-DD".into());
    }
    let (y, m, d): (u32, u32, u32) =
        (s[0..4].parse().unwrap_or(0), s[5..7].parse().unwrap_or(0), s[8..10].parse().unwrap_or(0));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("no month {m}")),
    };
    if d == 0 || d > days {
        return Err(format!("no day {d} in month {m} of {y}"));
    }
    Ok(())
}

/// A glob over a dimension value: `*` any text, `?` one character, `[…]` a class (`!` negates,
/// `a-z` ranges), `\` escapes the next character.
#[derive(Debug, Clone)]
pub struct Glob(Vec<Token>);

#[derive(Debug, Clone)]
enum Token {
    Char(char),
    Any,
    Star,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => Token::Char(chars.next().ok_or("a trailing `\\` escapes nothing")?),
                '[' => {
                    // `!` first negates; `]` first is a literal; the next `]` closes.
                    let negated = chars.clone().next() == Some('!');
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    loop {
                        let c = chars.next().ok_or("a `[` is not closed by `]`")?;
                        if c == ']' && !ranges.is_empty() {
                            break;
                        }
                        let c = if c == '\\' { chars.next().ok_or("a trailing `\\` escapes nothing")? } else { c };
                        let mut ahead = chars.clone();
                        if ahead.next() == Some('-') && ahead.clone().next().is_some_and(|e| e != ']') {
                            let end = ahead.next().ok_or("a `[` is not closed by `]`")?;
                            if end < c {
                                return Err(format!("the range {c}-{end} is reversed"));
                            }
                            chars = ahead;
                            ranges.push((c, end));
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Char(c),
            });
        }
        Ok(Glob(tokens))
    }

    pub fn matches(&self, value: &str) -> bool {
        let value: Vec<char> = value.chars().collect();
        matches_at(&self.0, &value)
    }
}

fn matches_at(tokens: &[Token], value: &[char]) -> bool {
    match tokens.split_first() {
        None => value.is_empty(),
        Some((Token::Star, rest)) => (0..=value.len()).any(|skip| matches_at(rest, &value[skip..])),
        Some((token, rest)) => {
            let Some((c, tail)) = value.split_first() else { return false };
            let ok = match token {
                Token::Char(t) => t == c,
                Token::Any => true,
                Token::Class { negated, ranges } => ranges.iter().any(|(a, b)| (a..=b).contains(&c)) != *negated,
                Token::Star => unreachable!("handled above"),
            };
            ok && matches_at(rest, tail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, yes, no) in [
            ("*", &["", "1.0.140"][..], &[][..]),
            ("1.0.*", &["1.0.140", "1.0."], &["1.1.0", "1.0"]),
            ("v?", &["v1"], &["v", "v12"]),
            ("[a-c]x", &["ax", "cx"], &["dx", "x"]),
            ("[!a]x", &["bx"], &["ax"]),
            ("[]]", &["]"], &["a"]),
            ("a\\*", &["a*"], &["ab"]),
        ] {
            let g = Glob::new(pattern).unwrap();
            for v in yes {
                assert!(g.matches(v), "{pattern} should match {v}");
            }
            for v in no {
                assert!(!g.matches(v), "{pattern} should not match {v}");
            }
        }
        for bad in ["[ab", "a\\", "[z-a]", "[!]"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        for good in ["2026-12-31", "2024-02-29", "2000-02-29"] {
            assert!(check_date(good).is_ok(), "{good}");
        }
        for bad in ["2026-13-01", "2026-02-29", "1900-02-29", "2026-1-1", "tomorrow", "2026-04-31", "2026-00-10"] {
            assert!(check_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_files_name_the_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let dims = vec!["a".to_string(), "b".to_string()];
        let ok = "[[known-failure]]\ncell = { a = \"1.*\" }\nreason = \"r\"\nuntil = \"2099-01-01\"\n";
        for (text, needles) in [
            (format!("{ok}\n[[known-failure]]\ncell = {{ c = \"1\" }}\nreason = \"r\"\nuntil = \"2099-01-01\"\n"), &[":7:", "cell.c", "no such dimension"][..]),
            (format!("{ok}\n[[known-failure]]\ncell = {{ a = \"[1\" }}\nreason = \"r\"\nuntil = \"2099-01-01\"\n"), &[":7:", "cell.a", "invalid glob"]),
            (format!("{ok}\n[[known-failure]]\ncell = {{ a = \"1\" }}\nreason = \"r\"\nuntil = \"2099-02-30\"\n"), &[":9:", "until", "not a date"]),
            (format!("{ok}\n[[known-failure]]\ncell = {{ a = \"1\" }}\nreason = \"r\"\nuntil = \"2099-02-03\"\nowner = \"x\"\n"), &[":10", "owner"]),
            ("[[known-failure]]\ncell = { a = \"1\" }\nuntil = \"2099-02-03\"\n".to_string(), &["reason"]),
            ("[[known-failure]]\ncell = {}\nreason = \"r\"\nuntil = \"2099-02-03\"\n".to_string(), &[":2:", "empty"]),
        ] {
            let p = dir.path().join("kf.toml");
            std::fs::write(&p, &text).unwrap();
            let err = load(&p, &dims).expect_err(&text);
            assert_eq!(err.code, crate::error::exit::BAD_INPUT);
            for needle in needles {
                assert!(err.headline.contains(needle), "{needle} not in {}", err.headline);
            }
        }
        let p = dir.path().join("kf.toml");
        std::fs::write(
            &p,
            format!("{ok}[[known-failure]]\ncell = {{ b = 2 }}\nreason = \"old\"\nuntil = 2020-01-01\n"),
        )
        .unwrap();
        let kf = load(&p, &dims).unwrap();
        assert_eq!((kf.entries[0].line, kf.entries[1].line), (1, 5));
        let values =
            |a: &str, b: &str| BTreeMap::from([("a".to_string(), a.to_string()), ("b".to_string(), b.to_string())]);
        assert_eq!(kf.find(&values("1.2", "x"), "2026-01-01").map(|e| e.index), Some(0));
        assert!(kf.find(&values("2", "x"), "2026-01-01").is_none());
        let old = kf.find(&values("2", "2"), "2026-01-01").unwrap();
        assert!(old.expired("2026-01-01") && !old.expired("2020-01-01"));
    }
}
