//! Escaping shared by the report renderers. Instance output is hostile input: every string that
//! came from a plan (group ids, reasons, stderr lines) goes through one of these before it is
//! written into XML, HTML or Markdown.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// Text and attribute values for XML and HTML: `& < > " '` become entities, and characters XML 1.0
/// forbids (control characters other than tab, newline and carriage return, which instances print
/// as ANSI colour codes) become U+FFFD, so a report stays well-formed whatever a plan printed.
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// One line of Markdown table or list text: HTML-significant characters become entities (GitHub
/// renders inline HTML), Markdown punctuation is backslash-escaped, line breaks become spaces.
pub fn markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' | '\t' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '|' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A relative URL from the directory `base` to `target` (both made absolute first), each path
/// segment percent-encoded, so a report links to instance logs wherever the tree is moved as a
/// whole. Falls back to an absolute `file://` URL when no relative path exists.
pub fn link(base: &Path, target: &Path) -> String {
    let (Ok(base), Ok(target)) = (std::path::absolute(base), std::path::absolute(target)) else {
        return encode_path(target);
    };
    let base_norm = normal(&base);
    let base: Vec<Component> = base_norm.components().collect();
    let target_norm = normal(&target);
    let target: Vec<Component> = target_norm.components().collect();
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return format!("file://{}", encode_path(&target_norm));
    }
    let mut parts: Vec<String> = vec!["..".to_string(); base.len() - common];
    parts.extend(target[common..].iter().map(|c| encode_segment(&c.as_os_str().to_string_lossy())));
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// `a/./b/../c` → `a/c` without touching the filesystem.
fn normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn encode_path(p: &Path) -> String {
    p.to_string_lossy().split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_markup_and_forbidden_characters() {
        assert_eq!(xml("<script>alert('x&y')</script>"), "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;");
        assert_eq!(xml("\u{1b}[31mred\u{1b}[0m\ta\"b"), "\u{FFFD}[31mred\u{FFFD}[0m\ta&quot;b");
    }

    #[test]
    fn markdown_escapes_tables_links_and_html() {
        assert_eq!(markdown("a|b [x](y) <b>\n*"), "a\\|b \\[x\\]\\(y\\) &lt;b&gt; \\*");
    }

    #[test]
    fn links_are_relative_and_encoded() {
        let base = Path::new("/r/reports");
        assert_eq!(link(base, Path::new("/r/out/run1/g<1>/0/stderr")), "../out/run1/g%3C1%3E/0/stderr");
        assert_eq!(link(base, Path::new("/r/reports/x y")), "x%20y");
        assert_eq!(link(Path::new("/a/b"), Path::new("/a/b/../c/./d")), "../c/d");
    }
}
