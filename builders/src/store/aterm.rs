//! The ATerm subset `.drv` files use: quoted strings, `[…]` lists and `(…)` tuples, separated by
//! commas with no whitespace (`printString` and `parseString` in Nix C++'s `derivations.cc`).
//!
//! Strings are bytes: `"` and `\` are escaped with a backslash, newline, carriage return and tab
//! become `\n`, `\r`, `\t`, and every other byte is written as it is. When reading, a backslash
//! before any other character stands for that character.

use super::path::StorePathError;

/// Why a `.drv` file could not be read. Positions are byte offsets into the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtermError {
    #[error("byte {pos}: expected {expected}, found {found}")]
    Unexpected { pos: usize, expected: &'static str, found: String },
    #[error("byte {pos}: {what} is not valid UTF-8")]
    NotUtf8 { pos: usize, what: &'static str },
    #[error("byte {pos}: {source}")]
    StorePath { pos: usize, source: StorePathError },
    #[error("byte {pos}: {what} `{key}` appears twice")]
    Duplicate { pos: usize, what: &'static str, key: String },
}

/// Appends `s` as a quoted, escaped ATerm string.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Appends `[item,item,…]`.
pub(crate) fn write_list<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut item: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(out, x);
    }
    out.push(b']');
}

/// A cursor over a `.drv` file.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { input, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn unexpected(&self, expected: &'static str) -> AtermError {
        let rest = &self.input[self.pos.min(self.input.len())..];
        let found = if rest.is_empty() {
            "end of input".to_string()
        } else {
            let shown = &rest[..rest.len().min(20)];
            format!("`{}`", String::from_utf8_lossy(shown))
        };
        AtermError::Unexpected { pos: self.pos, expected, found }
    }

    /// Consumes `token` or fails naming it.
    pub(crate) fn expect(&mut self, token: &'static str) -> Result<(), AtermError> {
        if self.input[self.pos..].starts_with(token.as_bytes()) {
            self.pos += token.len();
            Ok(())
        } else {
            Err(self.unexpected(token))
        }
    }

    /// Consumes `token` if it comes next.
    pub(crate) fn eat(&mut self, token: u8) -> bool {
        if self.input.get(self.pos) == Some(&token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads a quoted string and unescapes it.
    pub(crate) fn string(&mut self) -> Result<Vec<u8>, AtermError> {
        self.expect("\"")?;
        let mut out = Vec::new();
        loop {
            match self.input.get(self.pos) {
                None => return Err(self.unexpected("closing `\"`")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let Some(&escaped) = self.input.get(self.pos + 1) else {
                        self.pos += 1;
                        return Err(self.unexpected("an escaped character"));
                    };
                    out.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 2;
                }
                Some(&b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// Reads a quoted string that must be UTF-8; `what` names it in the error.
    pub(crate) fn utf8_string(&mut self, what: &'static str) -> Result<String, AtermError> {
        let pos = self.pos;
        String::from_utf8(self.string()?).map_err(|_| AtermError::NotUtf8 { pos, what })
    }

    /// Reads `[item,item,…]`.
    pub(crate) fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, AtermError>,
    ) -> Result<Vec<T>, AtermError> {
        self.expect("[")?;
        let mut items = Vec::new();
        if self.eat(b']') {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat(b']') {
                return Ok(items);
            }
            if !self.eat(b',') {
                return Err(self.unexpected("`,` or `]`"));
            }
        }
    }

    /// Fails unless the whole input was read.
    pub(crate) fn finish(&self) -> Result<(), AtermError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(self.unexpected("end of input"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly_what_nix_escapes() {
        let mut out = Vec::new();
        write_string(&mut out, b"a\"b\\c\nd\re\tf$g\x01\xff");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\re\\tf$g\x01\xff\"");
        let mut r = Reader::new(&out);
        assert_eq!(r.string().unwrap(), b"a\"b\\c\nd\re\tf$g\x01\xff");
        r.finish().unwrap();
    }

    #[test]
    fn unknown_escapes_stand_for_the_character() {
        let mut r = Reader::new(b"\"\\q\\$\"");
        assert_eq!(r.string().unwrap(), b"q$");
    }

    #[test]
    fn reports_positions() {
        let mut r = Reader::new(b"[\"a\";\"b\"]");
        let err = r.list(|r| r.string()).unwrap_err();
        assert_eq!(err, AtermError::Unexpected { pos: 4, expected: "`,` or `]`", found: "`;\"b\"]`".into() });
        let mut r = Reader::new(b"\"abc");
        assert_eq!(
            r.string().unwrap_err(),
            AtermError::Unexpected { pos: 4, expected: "closing `\"`", found: "end of input".into() }
        );
        let mut r = Reader::new(b"\"\xff\"");
        assert_eq!(r.utf8_string("system").unwrap_err(), AtermError::NotUtf8 { pos: 0, what: "system" });
    }
}
