//! Test parameters as instances receive them: `TEST_INSTANCE_PARAMS` and `TEST_CAPTURE_PROFILES`.
//!
//! Reference §1.4: "`key=value` pairs joined with `|` … with no escaping. GO/JS readers split on
//! `|`, then on `=`, and drop any pair that does not split into exactly 2 parts … RS splits at the
//! first `=` … All three break on values that contain `|`." Testground packs whatever it is given,
//! so such params were silently lost; tg-nix refuses them before anything runs.

use std::collections::BTreeMap;
use std::fmt;

use toml::Value;

use crate::error::{ErrorKind, ModelError};

/// Why a parameter cannot be packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamProblem {
    EmptyKey,
    PipeInKey,
    EqualsInKey,
    ControlInKey(char),
    PipeInValue,
    ControlInValue(char),
}

impl ParamProblem {
    /// How to fix it, in one sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            ParamProblem::EmptyKey => "give the parameter a name",
            ParamProblem::PipeInKey | ParamProblem::PipeInValue => {
                "TEST_INSTANCE_PARAMS joins params with `|` and no SDK can escape it: use another separator, such as `,` or `;`"
            }
            ParamProblem::EqualsInKey => "the SDKs split each param at its first `=`: rename the parameter without `=`",
            ParamProblem::ControlInKey(_) | ParamProblem::ControlInValue(_) => {
                "params travel in one environment variable: remove newlines, tabs and other control characters"
            }
        }
    }
}

impl fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamProblem::EmptyKey => f.write_str("the name is empty"),
            ParamProblem::PipeInKey => f.write_str("the name contains `|`"),
            ParamProblem::EqualsInKey => f.write_str("the name contains `=`"),
            ParamProblem::ControlInKey(c) => write!(f, "the name contains the control character U+{:04X}", *c as u32),
            ParamProblem::PipeInValue => f.write_str("the value contains `|`"),
            ParamProblem::ControlInValue(c) => {
                write!(f, "the value contains the control character U+{:04X}", *c as u32)
            }
        }
    }
}

/// Checks that `key=value` survives packing and every SDK's parsing. A `=` inside the value is
/// allowed: RS keeps it, but GO and JS drop the whole pair (callers may warn).
pub fn check_param(key: &str, value: &str) -> Result<(), ParamProblem> {
    if key.is_empty() {
        return Err(ParamProblem::EmptyKey);
    }
    if key.contains('|') {
        return Err(ParamProblem::PipeInKey);
    }
    if key.contains('=') {
        return Err(ParamProblem::EqualsInKey);
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(ParamProblem::ControlInKey(c));
    }
    if value.contains('|') {
        return Err(ParamProblem::PipeInValue);
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(ParamProblem::ControlInValue(c));
    }
    Ok(())
}

/// Packs params as `k=v|k2=v2`, sorted by key (Testground used Go's random map order).
///
/// Rejects what the SDKs cannot parse back: `|` anywhere, `=` in a key, control characters
/// (newline, NUL, …) anywhere, an empty key. The error names the parameter, the reason and the fix.
pub fn pack_params(params: &BTreeMap<String, String>) -> Result<String, ModelError> {
    let mut out = String::new();
    for (k, v) in params {
        check_param(k, v).map_err(|problem| param_error(k, problem))?;
        if !out.is_empty() {
            out.push('|');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    Ok(out)
}

pub(crate) fn param_error(key: &str, problem: ParamProblem) -> ModelError {
    ModelError::new(ErrorKind::Invalid, "", format!("test param {}: {problem}", crate::doc::quote_key(key)))
        .hint(problem.hint())
}

/// Unpacks `TEST_INSTANCE_PARAMS` the way the Rust SDK does: split on `|`, then at the first `=`.
/// Items without `=` (which RS rejects) are skipped. The inverse of [`pack_params`].
pub fn unpack_params(packed: &str) -> BTreeMap<String, String> {
    packed.split('|').filter_map(|item| item.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A manifest default as Testground passes it (TG api/manifest.go `defaultParameters`): strings
/// as they are, anything else JSON-encoded the way Go's `encoding/json` does it: `10` → `10`,
/// `true` → `true`, `["a","b"]` → `["a","b"]`, `1.0` → `1`, `{b=1,a=2}` → `{"a":2,"b":1}`.
pub fn param_default_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            go_json(other, &mut out);
            out
        }
    }
}

/// Go-flavoured JSON: compact, map keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped (Go's
/// HTML-safe default), floats in Go's `'f'`/`'e'` choice. Datetimes become strings (Go decodes them
/// as `time.Time`, which marshals as an RFC 3339 string).
fn go_json(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => go_json_string(s, out),
        Value::Integer(n) => out.push_str(&n.to_string()),
        Value::Float(x) => out.push_str(&go_float(*x)),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Datetime(d) => go_json_string(&d.to_string(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(item, out);
            }
            out.push(']');
        }
        Value::Table(t) => {
            out.push('{');
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_string(k, out);
                out.push(':');
                if let Some(item) = t.get(k) {
                    go_json(item, out);
                }
            }
            out.push('}');
        }
    }
}

fn go_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go's `json.Marshal(float64)`: shortest round-trip digits, plain notation for 1e-6 ≤ |x| < 1e21,
/// else exponent notation (`1e+21`; Go pads positive exponents to two digits and then trims
/// `e-07` to `e-7`). Go refuses NaN and infinities; tg-nix writes them as TOML does.
fn go_float(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let abs = x.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{x}");
    }
    let e = format!("{x:e}");
    match e.split_once('e') {
        Some((mantissa, exp)) => match exp.strip_prefix('-') {
            Some(digits) => format!("{mantissa}e-{digits}"),
            None => format!("{mantissa}e+{exp:0>2}"),
        },
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pack_sorted_and_round_trips() {
        let params = map(&[("z", "1"), ("a", "x=y"), ("m", "")]);
        let packed = pack_params(&params).expect("packs");
        assert_eq!(packed, "a=x=y|m=|z=1");
        assert_eq!(unpack_params(&packed), params);
        assert_eq!(pack_params(&BTreeMap::new()).expect("empty"), "");
    }

    #[test]
    fn pack_rejections() {
        let cases = [
            ("", "v", ParamProblem::EmptyKey),
            ("a|b", "v", ParamProblem::PipeInKey),
            ("a=b", "v", ParamProblem::EqualsInKey),
            ("a\nb", "v", ParamProblem::ControlInKey('\n')),
            ("k", "x|y", ParamProblem::PipeInValue),
            ("k", "line\nbreak", ParamProblem::ControlInValue('\n')),
            ("k", "nul\0", ParamProblem::ControlInValue('\0')),
            ("k", "tab\t", ParamProblem::ControlInValue('\t')),
            ("k", "esc\u{1b}[0m", ParamProblem::ControlInValue('\u{1b}')),
            ("k", "c1\u{85}", ParamProblem::ControlInValue('\u{85}')),
        ];
        for (k, v, want) in cases {
            assert_eq!(check_param(k, v), Err(want), "{k:?}={v:?}");
            let err = pack_params(&map(&[(k, v)])).expect_err("rejected");
            assert_eq!(err.kind, ErrorKind::Invalid);
            assert!(err.message.starts_with("test param "), "{err}");
            assert!(err.message.contains(&want.to_string()), "{err}");
            assert_eq!(err.hint.as_deref(), Some(want.hint()));
        }
        // Accepted: unicode, spaces, `=` in values.
        assert!(pack_params(&map(&[("größe", "a b = c ✓")])).is_ok());
    }

    #[test]
    fn defaults_encode_like_go() {
        let cases: &[(&str, &str)] = &[
            ("\"noise\"", "noise"),
            ("\"\"", ""),
            ("10", "10"),
            ("-3", "-3"),
            ("true", "true"),
            ("false", "false"),
            ("1.5", "1.5"),
            ("10.0", "10"),
            ("1e21", "1e+21"),
            ("1e-7", "1e-7"),
            ("1.5e-10", "1.5e-10"),
            ("2e300", "2e+300"),
            ("0.000001", "0.000001"),
            ("0.0", "0"),
            ("[\"a\",\"b\"]", "[\"a\",\"b\"]"),
            ("[1, 2.5, true]", "[1,2.5,true]"),
            ("{ b = 1, a = \"<&>\" }", "{\"a\":\"\\u003c\\u0026\\u003e\",\"b\":1}"),
            ("[\"q\\\"uote\\n\"]", "[\"q\\\"uote\\n\"]"),
            ("1979-05-27T07:32:00Z", "\"1979-05-27T07:32:00Z\""),
            ("nan", "nan"),
        ];
        for (toml_text, want) in cases {
            let doc: toml::Table = toml::from_str(&format!("v = {toml_text}")).expect("valid toml");
            let v = doc.get("v").expect("v");
            assert_eq!(param_default_string(v), *want, "{toml_text}");
        }
    }
}
