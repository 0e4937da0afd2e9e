//! Composition templating (reference §4.3): a composition that contains `{{` is a handlebars
//! template, rendered before TOML parsing; any other file is parsed exactly as written.
//!
//! The template sees two maps of strings: `env` (the whole environment, also reachable as `Env`,
//! Testground's `$.Env`) and `vars` (`--set name=value`). Rendering is strict: a variable that is
//! not defined is an error naming the file, the template line and the variable. Nothing is
//! HTML-escaped: the output is TOML.
//!
//! Helpers, beside handlebars' own (`if`, `unless`, `each`, `with`, `lookup`, `eq`, `ne`, `gt`,
//! `gte`, `lt`, `lte`, `and`, `or`, `not`, `len`, inline partials for Go's `define`/`template`):
//!
//! | helper | does |
//! |---|---|
//! | `load_resource "rel/path.toml"` | parses a TOML file relative to the composition's directory |
//! | `pick map "key"` | the one-key map `{ key = map.key }` |
//! | `split "a,b" [","]` | the list of the parts (an empty string gives an empty list) |
//! | `toml value` | the value as TOML: `"a string"`, `[1, 2]`, `{ a = 1 }` |
//! | `env "NAME" ["default"]` | the environment variable, or the default |
//! | `atoi "42"` | the number |
//! | `default value fallback` | `value`, or `fallback` when `value` is undefined |
//!
//! `load_resource` refuses absolute paths and paths that lead outside the composition's
//! directory, after following symbolic links: a composition cannot read arbitrary files.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Component, Path, PathBuf};

use handlebars::{
    Context, Handlebars, Helper, HelperDef, PathAndJson, RenderContext, RenderError, RenderErrorReason, ScopedJson,
    TemplateErrorReason,
};
use serde_json::{Map, Value as Json};

use crate::error::{ErrorKind, ModelError};

/// What a composition template sees: `vars` from `--set`, `env` from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateData {
    /// `--set name=value`; the later of two equal names wins.
    pub vars: BTreeMap<String, String>,
    /// The environment (`env.NAME`, `Env.NAME`, `env "NAME" "default"`).
    pub env: BTreeMap<String, String>,
}

impl TemplateData {
    /// `vars` as given, and the process environment (variables that are not UTF-8 are left out).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> TemplateData {
        TemplateData { vars: vars.into_iter().collect(), env: std::env::vars_os().filter_map(utf8_pair).collect() }
    }

    fn context(&self) -> Json {
        let env: Map<String, Json> = self.env.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
        let vars: Map<String, Json> = self.vars.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
        serde_json::json!({ "env": env, "Env": env, "vars": vars })
    }
}

fn utf8_pair((k, v): (std::ffi::OsString, std::ffi::OsString)) -> Option<(String, String)> {
    Some((k.into_string().ok()?, v.into_string().ok()?))
}

/// True when `text` is a template: it contains `{{`.
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Renders composition text read from `source`. Returns `None` (nothing to render) when the
/// text holds no `{{`, so plain files are parsed byte for byte as written.
pub fn render_composition(text: &str, source: &Path, data: &TemplateData) -> Result<Option<String>, ModelError> {
    if !is_template(text) {
        return Ok(None);
    }
    let dir = match source.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("load_resource", Box::new(LoadResource { dir }));
    hb.register_helper("pick", Box::new(Pick));
    hb.register_helper("split", Box::new(Split));
    hb.register_helper("toml", Box::new(Toml));
    hb.register_helper("env", Box::new(EnvLookup { env: data.env.clone() }));
    hb.register_helper("atoi", Box::new(Atoi));
    hb.register_helper("default", Box::new(Default));
    let name = source.display().to_string();
    check_shape(text, source)?;
    if let Err(e) = hb.register_template_string(&name, text) {
        let mismatched = matches!(
            e.reason(),
            TemplateErrorReason::MismatchingClosedHelper(..) | TemplateErrorReason::MismatchingClosedDecorator(..)
        );
        let better =
            if mismatched { None } else { unclosed_tag(text, source).or_else(|| unclosed_block(text, source)) };
        return Err(better.unwrap_or_else(|| template_error(&e, source)));
    }
    hb.render(&name, &data.context()).map(Some).map_err(|e| render_error(&e, source))
}

const RENDERED_NOTE_END: &str = "prints it]";

/// Says in an error's message that its line is a line of the rendered composition, not of the
/// file as written, and how to see that text.
pub(crate) fn in_rendered(mut e: ModelError, source: &Path) -> ModelError {
    // Idempotent: composition warnings pass through here on load and again on prepare.
    if e.file == source && !e.message.ends_with(RENDERED_NOTE_END) {
        if let Some(line) = e.line {
            e.message = format!(
                "{} [line {line} of the rendered composition: `tg-nix render {}` with the same --set flags {RENDERED_NOTE_END}",
                e.message,
                source.display()
            );
        }
    }
    e
}

/// A helper's own problem, carried through handlebars as a nested error.
#[derive(Debug)]
struct HelperProblem {
    message: String,
    hint: Option<String>,
}

impl fmt::Display for HelperProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HelperProblem {}

fn problem(message: impl Into<String>, hint: Option<String>) -> RenderError {
    RenderErrorReason::NestedError(Box::new(HelperProblem { message: message.into(), hint })).into()
}

/// Deepest nesting of blocks, or of parentheses in one tag, that a template may use. The parser and
/// the renderer recurse on both; this keeps a hostile file from overflowing the stack.
const MAX_NESTING: usize = 64;

/// Refuses what would make handlebars recurse without end or too deep (it has no limit of its
/// own, and a stack overflow aborts the process): nesting deeper than [`MAX_NESTING`], inline
/// partials that include themselves directly or through others, and partial names computed at
/// render time.
fn check_shape(text: &str, source: &Path) -> Result<(), ModelError> {
    let at = |i: usize, message: String, hint: &str| {
        let line = text[..i].matches('\n').count() + 1;
        ModelError { line: Some(line), ..ModelError::new(ErrorKind::Invalid, source, message).hint(hint) }
    };
    let mut open: Vec<Option<String>> = Vec::new(); // the inline partial each open block defines
    let mut includes: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("{{").map(|i| from + i) {
        let Some(len) = text[i + 2..].find("}}") else { break };
        from = i + 2 + len + 2;
        if i > 0 && text.as_bytes()[i - 1] == b'\\' {
            continue;
        }
        let tag = text[i + 2..i + 2 + len].trim_start_matches('~').trim_start();
        let mut depth = 0usize;
        for c in tag.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_NESTING {
                return Err(at(i, format!("parentheses nested deeper than {MAX_NESTING}"), "simplify the expression"));
            }
        }
        let word = |t: &str| {
            let t = t.trim_start();
            let t = t.strip_prefix('"').map(|q| q.split('"').next().unwrap_or_default()).unwrap_or(t);
            t.split(|c: char| c.is_whitespace() || c == '~').next().unwrap_or_default().to_string()
        };
        let partial = tag.strip_prefix("#>").or_else(|| tag.strip_prefix('>'));
        if let Some(p) = partial {
            if p.trim_start().starts_with('(') {
                return Err(at(
                    i,
                    "partial names computed at render time are not supported".into(),
                    "name the partial: `{{> name}}`",
                ));
            }
            let target = word(p);
            if let Some(def) = open.iter().rev().flatten().next() {
                includes.entry(def.clone()).or_default().push((target, i));
            }
        }
        if let Some(b) = tag.strip_prefix('#') {
            let def = b.strip_prefix("*inline").map(word);
            open.push(def);
            if open.len() > MAX_NESTING {
                return Err(at(i, format!("blocks nested deeper than {MAX_NESTING}"), "simplify the template"));
            }
        } else if tag.starts_with('/') {
            open.pop();
        }
    }
    // A cycle among inline partials: follow includes from each definition.
    for start in includes.keys() {
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        let mut seen: Vec<&str> = Vec::new();
        while let Some((name, pos)) = stack.pop() {
            for (next, at_i) in includes.get(name).into_iter().flatten() {
                if next == start {
                    let pos = if pos == 0 { *at_i } else { pos };
                    return Err(at(
                        pos,
                        format!("inline partial `{start}` includes itself (directly or through other partials)"),
                        "recursive partials are not supported: a composition is rendered once, without loops other than `each`",
                    ));
                }
                if !seen.contains(&next.as_str()) {
                    seen.push(next);
                    stack.push((next, if pos == 0 { *at_i } else { pos }));
                }
            }
        }
    }
    Ok(())
}

/// The first `{{` with no `}}` before the next `{{`: the parser reports where it gave up (often
/// the end of the file), this names the line where the tag starts.
fn unclosed_tag(text: &str, source: &Path) -> Option<ModelError> {
    let mut from = 0;
    while let Some(i) = text[from..].find("{{").map(|i| from + i) {
        let escaped = i > 0 && text.as_bytes()[i - 1] == b'\\';
        let rest = &text[i + 2..];
        let close = rest.find("}}");
        let next_open = rest.find("{{");
        if !escaped && (close.is_none() || next_open.is_some_and(|o| Some(o) < close)) {
            let line = text[..i].matches('\n').count() + 1;
            let column = text[..i].rsplit('\n').next().map(|l| l.chars().count() + 1).unwrap_or(1);
            let err = ModelError::new(ErrorKind::Syntax, source, "invalid template: this `{{` is not closed by `}}`")
                .hint("close the tag, or write `\\{{` for a literal `{{`");
            return Some(ModelError {
                line: Some(line),
                column: u32::try_from(column).ok().and_then(NonZeroU32::new),
                ..err
            });
        }
        from = i + 2 + close.map(|c| c + 2).unwrap_or(0);
    }
    None
}

/// The first `{{#block}}` left open at the end of the text.
fn unclosed_block(text: &str, source: &Path) -> Option<ModelError> {
    let mut open: Vec<(&str, usize)> = Vec::new();
    for (i, _) in text.match_indices("{{") {
        let tag = text[i + 2..].trim_start_matches('~');
        let name = |t: &str| {
            let t = t.trim_start_matches(['*', '>']);
            t.split(|c: char| c.is_whitespace() || c == '}' || c == '~').next().unwrap_or_default().len()
        };
        if let Some(t) = tag.strip_prefix('#') {
            let t = t.trim_start_matches(['*', '>']);
            open.push((&t[..name(t)], i));
        } else if let Some(t) = tag.strip_prefix('/') {
            let closing = &t[..name(t)];
            if open.last().is_some_and(|(n, _)| *n == closing) {
                open.pop();
            }
        }
    }
    let (name, at) = open.first()?;
    let line = text[..*at].matches('\n').count() + 1;
    let err = ModelError::new(
        ErrorKind::Syntax,
        source,
        format!("invalid template: this `{{{{#{name}}}}}` is not closed by `{{{{/{name}}}}}`"),
    )
    .hint(format!("add `{{{{/{name}}}}}` where the block ends"));
    Some(ModelError { line: Some(line), ..err })
}

fn template_error(e: &handlebars::TemplateError, source: &Path) -> ModelError {
    let (line, column) = match e.pos() {
        Some((l, c)) => (Some(l), u32::try_from(c).ok().and_then(NonZeroU32::new)),
        None => (None, None),
    };
    let reason = e.reason().to_string();
    let reason = match reason.lines().next().unwrap_or_default().trim_end() {
        // pest's list of grammar rules it expected says nothing to a user.
        r if r.starts_with("invalid handlebars syntax: expected") => "handlebars cannot parse the tag here",
        r => r,
    };
    ModelError {
        line,
        column,
        ..ModelError::new(ErrorKind::Syntax, source, format!("invalid template: {reason}"))
            .hint("handlebars syntax: `{{vars.name}}`, `{{#each list}}…{{/each}}`, `{{#if x}}…{{/if}}`; write `\\{{` for a literal `{{`")
    }
}

fn render_error(e: &RenderError, source: &Path) -> ModelError {
    let (kind, message, hint) = match e.reason() {
        RenderErrorReason::MissingVariable(path) => {
            let name = root_relative(path.as_deref().unwrap_or(""));
            (ErrorKind::Missing, undefined_message(name), Some(undefined_hint(name)))
        }
        RenderErrorReason::TemplateError(te) => return template_error(te, source),
        RenderErrorReason::HelperNotFound(name) => (
            ErrorKind::Invalid,
            format!("unknown helper `{name}`"),
            Some(
                "helpers: load_resource, pick, split, toml, env, atoi, default, and handlebars' if, unless, each, \
                 with, lookup, eq, ne, gt, gte, lt, lte, and, or, not, len"
                    .to_string(),
            ),
        ),
        RenderErrorReason::ParamNotFoundForIndex(helper, i) => {
            (ErrorKind::Missing, format!("`{helper}` needs an argument at position {}", i + 1), None)
        }
        RenderErrorReason::NestedError(inner) => match inner.downcast_ref::<HelperProblem>() {
            Some(p) => (ErrorKind::Invalid, p.message.clone(), p.hint.clone()),
            None => (ErrorKind::Invalid, format!("template: {inner}"), None),
        },
        other => (ErrorKind::Invalid, format!("template: {other}"), None),
    };
    let column = e.column_no.and_then(|c| u32::try_from(c).ok()).and_then(NonZeroU32::new);
    let mut err = ModelError { line: e.line_no, column, ..ModelError::new(kind, source, message) };
    err.hint = hint;
    err
}

fn undefined_message(name: &str) -> String {
    if name.is_empty() {
        "a value used here is undefined (a `lookup` of a key that is not there?)".to_string()
    } else {
        format!("undefined variable `{name}` in the template")
    }
}

/// `@root.vars.x` and `../vars.x` name the same variable as `vars.x`.
fn root_relative(mut name: &str) -> &str {
    while let Some(rest) = name.strip_prefix("@root.").or_else(|| name.strip_prefix("../")) {
        name = rest;
    }
    name
}

fn undefined_hint(name: &str) -> String {
    let var = |prefix: &str| name.strip_prefix(prefix).filter(|rest| !rest.is_empty() && !rest.contains('.'));
    if let Some(v) = var("vars.") {
        format!("give it on the command line: `--set {v}=VALUE`, or write `{{{{default vars.{v} \"VALUE\"}}}}`")
    } else if let Some(v) = var("env.").or_else(|| var("Env.")) {
        format!("export {v}=VALUE before running tg-nix, or write `{{{{env \"{v}\" \"DEFAULT\"}}}}`")
    } else {
        "the template sees `vars.NAME` (from --set NAME=VALUE) and `env.NAME` (the environment, also `Env.NAME`); \
         inside `each`/`with`, names are relative to the current item"
            .to_string()
    }
}

/// The value of parameter `i` of `helper`; an undefined variable is the strict-mode error.
fn param<'a, 'rc>(h: &'a Helper<'rc>, i: usize, helper: &'static str) -> Result<&'a PathAndJson<'rc>, RenderError> {
    let p = h.param(i).ok_or(RenderErrorReason::ParamNotFoundForIndex(helper, i))?;
    if p.is_value_missing() {
        return Err(RenderError::strict_error(p.relative_path()));
    }
    Ok(p)
}

fn str_param<'a>(h: &'a Helper<'_>, i: usize, helper: &'static str) -> Result<&'a str, RenderError> {
    let p = param(h, i, helper)?;
    p.value().as_str().ok_or_else(|| {
        problem(
            format!("`{helper}` wants a string at position {}, found {}", i + 1, json_type(p.value())),
            Some(format!("quote literal arguments: `{{{{{helper} \"…\"}}}}`")),
        )
    })
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// `load_resource "rel/path.toml"`.
struct LoadResource {
    dir: PathBuf,
}

impl LoadResource {
    fn load(&self, rel: &str) -> Result<Json, RenderError> {
        let hint = || {
            Some(
                "give a path relative to the composition's directory, inside it: `load_resource \"versions.toml\"`"
                    .to_string(),
            )
        };
        let path = Path::new(rel);
        if rel.is_empty() || path.is_absolute() {
            return Err(problem(format!("load_resource {rel:?}: only relative paths are allowed"), hint()));
        }
        let mut depth: i64 = 0;
        for c in path.components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(problem(
                    format!("load_resource {rel:?} leads outside the composition's directory"),
                    hint(),
                ));
            }
        }
        let full = self.dir.join(path);
        let real = full
            .canonicalize()
            .map_err(|e| problem(format!("load_resource {rel:?}: cannot read {}: {e}", full.display()), hint()))?;
        let real_dir = self.dir.canonicalize().map_err(|e| {
            problem(format!("load_resource {rel:?}: cannot read the directory {}: {e}", self.dir.display()), None)
        })?;
        if !real.starts_with(&real_dir) {
            return Err(problem(
                format!("load_resource {rel:?} resolves to {}, outside the composition's directory", real.display()),
                hint(),
            ));
        }
        let text = std::fs::read_to_string(&real)
            .map_err(|e| problem(format!("load_resource {rel:?}: cannot read {}: {e}", full.display()), hint()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(":{}", text[..s.start.min(text.len())].matches('\n').count() + 1))
                .unwrap_or_default();
            problem(
                format!("load_resource {rel:?}: {}{at} is not valid TOML: {}", full.display(), e.message().trim_end()),
                None,
            )
        })?;
        Ok(toml_to_json(toml::Value::Table(table)))
    }
}

impl HelperDef for LoadResource {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let rel = str_param(h, 0, "load_resource")?;
        Ok(ScopedJson::Derived(self.load(rel)?))
    }
}

fn toml_to_json(v: toml::Value) -> Json {
    match v {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null),
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Json::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

fn json_to_toml(v: &Json) -> Result<toml::Value, String> {
    Ok(match v {
        Json::Null => return Err("null (an empty value) has no TOML form".to_string()),
        Json::Bool(b) => toml::Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if n.is_f64() => toml::Value::Float(f),
            _ => return Err(format!("{n} does not fit a TOML integer")),
        },
        Json::String(s) => toml::Value::String(s.clone()),
        Json::Array(a) => toml::Value::Array(a.iter().map(json_to_toml).collect::<Result<_, _>>()?),
        Json::Object(o) => toml::Value::Table(
            o.iter().map(|(k, v)| Ok((k.clone(), json_to_toml(v)?))).collect::<Result<toml::Table, String>>()?,
        ),
    })
}

/// `pick map "key"`: a map with that one key.
struct Pick;

impl HelperDef for Pick {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let map = param(h, 0, "pick")?;
        let key = str_param(h, 1, "pick")?;
        let Some(obj) = map.value().as_object() else {
            return Err(problem(format!("`pick` wants a map first, found {}", json_type(map.value())), None));
        };
        let Some(value) = obj.get(key) else {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(problem(
                format!("`pick`: the map has no key `{key}`"),
                Some(format!("its keys: {}", if keys.is_empty() { "none".to_string() } else { keys.join(", ") })),
            ));
        };
        let mut one = Map::new();
        one.insert(key.to_string(), value.clone());
        Ok(ScopedJson::Derived(Json::Object(one)))
    }
}

/// `split "a,b"` or `split "a b" " "`.
struct Split;

impl HelperDef for Split {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = str_param(h, 0, "split")?;
        let sep = if h.param(1).is_some() { str_param(h, 1, "split")? } else { "," };
        if sep.is_empty() {
            return Err(problem("`split`: the separator is empty", Some("write `split VALUE \",\"`".to_string())));
        }
        let parts: Vec<Json> =
            if text.is_empty() { Vec::new() } else { text.split(sep).map(|s| Json::String(s.to_string())).collect() };
        Ok(ScopedJson::Derived(Json::Array(parts)))
    }
}

/// `toml value`: the value encoded as TOML (inline forms), ready to follow `key = `.
struct Toml;

impl HelperDef for Toml {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = param(h, 0, "toml")?;
        let encoded = json_to_toml(value.value()).map_err(|why| problem(format!("`toml`: {why}"), None))?;
        Ok(ScopedJson::Derived(Json::String(encoded.to_string())))
    }
}

/// `env "NAME"` or `env "NAME" "default"`.
struct EnvLookup {
    env: BTreeMap<String, String>,
}

impl HelperDef for EnvLookup {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = str_param(h, 0, "env")?;
        if let Some(v) = self.env.get(name) {
            return Ok(ScopedJson::Derived(Json::String(v.clone())));
        }
        if h.param(1).is_some() {
            return Ok(ScopedJson::Derived(param(h, 1, "env")?.value().clone()));
        }
        Err(RenderError::strict_error(Some(&format!("env.{name}"))))
    }
}

/// `atoi "42"`: the number (integers, and decimals such as "0.5").
struct Atoi;

impl HelperDef for Atoi {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let p = param(h, 0, "atoi")?;
        if p.value().is_number() {
            return Ok(ScopedJson::Derived(p.value().clone()));
        }
        let text = str_param(h, 0, "atoi")?.trim();
        let number = match (text.parse::<i64>(), text.parse::<f64>()) {
            (Ok(i), _) => Json::from(i),
            (_, Ok(f)) if f.is_finite() => serde_json::Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null),
            _ => {
                let from = p.relative_path().map(|r| format!(" (from `{r}`)")).unwrap_or_default();
                return Err(problem(format!("`atoi`: {text:?}{from} is not a number"), None));
            }
        };
        Ok(ScopedJson::Derived(number))
    }
}

/// `default value fallback`: `value` unless it is undefined (or null).
struct Default;

impl HelperDef for Default {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = h.param(0).ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 0))?;
        if !value.is_value_missing() && !value.value().is_null() {
            return Ok(ScopedJson::Derived(value.value().clone()));
        }
        Ok(ScopedJson::Derived(param(h, 1, "default")?.value().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Composition;

    fn data(vars: &[(&str, &str)], env: &[(&str, &str)]) -> TemplateData {
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TemplateData { vars: pairs(vars), env: pairs(env) }
    }

    fn render(text: &str, d: &TemplateData) -> Result<String, ModelError> {
        render_composition(text, Path::new("dir/c.toml"), d).map(|r| r.expect("is a template"))
    }

    fn render_err(text: &str, d: &TemplateData) -> ModelError {
        render(text, d).expect_err("fails")
    }

    #[test]
    fn plain_text_is_untouched() {
        let text = "[global]\nplan = \"p\" # a { brace } and a single {\n";
        assert_eq!(render_composition(text, Path::new("c.toml"), &data(&[], &[])).unwrap(), None);
        assert!(!is_template(text));
    }

    #[test]
    fn vars_env_and_builtins() {
        let d = data(&[("n", "3"), ("v", "1.0.1")], &[("HOME_X", "/h"), ("GitReference", "abc")]);
        let cases: &[(&str, &str)] = &[
            ("count = {{vars.n}}", "count = 3"),
            ("x = \"{{env.HOME_X}}\" y = \"{{Env.GitReference}}\"", "x = \"/h\" y = \"abc\""),
            ("{{#if vars.missing}}yes{{else}}no{{/if}}", "no"),
            ("{{#if (eq vars.v \"1.0.1\")}}same{{/if}}", "same"),
            ("{{lookup vars \"v\"}}", "1.0.1"),
            ("a = \"\\{{not.a.tag}}\" # \\{{ too\nb = {{vars.n}}", "a = \"{{not.a.tag}}\" # {{ too\nb = 3"),
            ("a = \"<&>\" {{vars.v}}", "a = \"<&>\" 1.0.1"),
            (
                "{{#*inline \"g\"}}id = \"{{this}}\"{{/inline}}{{#each (split \"a,b\")}}{{> g}};{{/each}}",
                "id = \"a\";id = \"b\";",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(render(t, &d).unwrap_or_else(|e| panic!("{t}: {e}")), *want, "{t}");
        }
    }

    #[test]
    fn helpers() {
        let d = data(&[("list", "x, y"), ("n", "42"), ("empty", "")], &[("SET", "s")]);
        let cases: &[(&str, &str)] = &[
            ("{{#each (split \"a,b,c\")}}[{{this}}]{{/each}}", "[a][b][c]"),
            ("{{#each (split vars.list \", \")}}[{{this}}]{{/each}}", "[x][y]"),
            ("{{len (split vars.empty)}}", "0"),
            ("{{toml \"a \\\"q\\\"\"}}", "'a \"q\"'"),
            ("{{toml \"it's\"}}", "\"it's\""),
            ("{{toml (split \"a,b\")}}", "[\"a\", \"b\"]"),
            ("{{toml (atoi vars.n)}}", "42"),
            ("{{toml (pick (load_resource \"r.toml\") \"n\")}}", "{ n = 7 }"),
            ("{{env \"SET\" \"d\"}} {{env \"UNSET\" \"d\"}} {{env \"SET\"}}", "s d s"),
            ("{{atoi \" 12 \"}} {{atoi \"0.5\"}} {{#if (gt (atoi vars.n) 40)}}big{{/if}}", "12 0.5 big"),
            ("{{default vars.nope \"fb\"}} {{default vars.n \"fb\"}}", "fb 42"),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("r.toml"), "n = 7\nm = \"x\"\n").expect("write");
        let source = dir.path().join("c.toml");
        for (t, want) in cases {
            let got = render_composition(t, &source, &d).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(got.as_deref(), Some(*want), "{t}");
        }
        for (t, needle) in [
            ("{{atoi \"x1\"}}", "\"x1\" is not a number"),
            ("{{pick (load_resource \"r.toml\") \"zz\"}}", "no key `zz`"),
            ("{{toml (lookup (load_resource \"r.toml\") \"n\") }}{{split 3}}", "wants a string"),
            ("{{nohelper 1}}", "unknown helper `nohelper`"),
        ] {
            let e = render_composition(t, &source, &d).expect_err(t);
            assert!(e.to_string().contains(needle), "{t}: {e}");
        }
    }

    #[test]
    fn load_resource_is_relative_and_confined() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("compositions");
        std::fs::create_dir_all(dir.join("res")).expect("mkdir");
        std::fs::write(dir.join("res/v.toml"), "[[groups]]\nid = \"g1\"\nversion = \"1.0\"\n").expect("write");
        std::fs::write(root.path().join("secret.toml"), "k = 1\n").expect("write");
        std::fs::write(dir.join("bad.toml"), "a = 1\nb = \n").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret.toml"), dir.join("link.toml")).expect("symlink");
        let source = dir.join("c.toml");
        let d = data(&[], &[]);
        let ok = "{{#each (lookup (load_resource \"res/v.toml\") \"groups\")}}{{id}}={{version}}{{/each}} \
                  {{#with (load_resource \"./res/../res/v.toml\")}}{{len groups}}{{/with}}";
        assert_eq!(render_composition(ok, &source, &d).unwrap().as_deref(), Some("g1=1.0 1"));
        for (arg, needle) in [
            ("../secret.toml", "leads outside"),
            ("res/../../secret.toml", "leads outside"),
            ("/etc/hostname", "only relative paths"),
            ("link.toml", "outside the composition's directory"),
            ("nope.toml", "cannot read"),
            ("bad.toml", "bad.toml:2 is not valid TOML"),
        ] {
            let t = format!("a = 1\nb = {{{{toml (load_resource \"{arg}\")}}}}\n");
            let e = render_composition(&t, &source, &d).expect_err(arg);
            assert_eq!((e.file.as_path(), e.line), (source.as_path(), Some(2)), "{arg}: {e}");
            assert!(e.message.contains(needle), "{arg}: {e}");
        }
    }

    #[test]
    fn undefined_variables_name_the_line_and_the_fix() {
        let d = data(&[("n", "1")], &[]);
        let e = render_err("[global]\nplan = \"p\"\ncount = {{vars.instances}}\n", &d);
        assert_eq!((e.kind, e.line), (ErrorKind::Missing, Some(3)));
        assert_eq!(e.file, Path::new("dir/c.toml"));
        assert!(e.message.contains("undefined variable `vars.instances`"), "{e}");
        assert!(e.to_string().starts_with("dir/c.toml:3:"), "{e}");
        assert!(e.hint.as_deref().unwrap_or_default().contains("--set instances=VALUE"), "{e}");

        let e = render_err("a = 1\nb = \"{{env.NO_SUCH_VAR_X}}\"\n", &d);
        assert_eq!(e.line, Some(2));
        assert!(e.hint.as_deref().unwrap_or_default().contains("export NO_SUCH_VAR_X=VALUE"), "{e}");
        let e = render_err("a = 1\n\nb = \"{{env \"NO_SUCH_VAR_X\"}}\"\n", &d);
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("env.NO_SUCH_VAR_X"), "{e}");

        // Inside blocks, and as a helper's argument.
        let e = render_err("x = 1\n{{#each (split \"a,b\")}}\ny = {{vars.inner}}\n{{/each}}\n", &d);
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("vars.inner"), "{e}");
        let e = render_err("{{#each (split \"a\")}}{{@root.vars.zz}}{{/each}}", &d);
        assert!(e.hint.as_deref().unwrap_or_default().contains("--set zz=VALUE"), "{e}");
        let e = render_err("x = 1\ny = {{toml (atoi vars.count)}}\n", &d);
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("vars.count"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let d = data(&[], &[]);
        let e = render_err("a = 1\nb = 2\n{{#each vars}}\nc = 3\n", &d);
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("`{{#each}}` is not closed by `{{/each}}`"), "{e}");
        let e = render_err("a = 1\nb = {{foo bar=}}", &d);
        assert_eq!((e.kind, e.line), (ErrorKind::Syntax, Some(2)), "{e}");
        assert!(e.message.contains("cannot parse"), "{e}");
        assert_eq!((e.kind, e.file.as_path()), (ErrorKind::Syntax, Path::new("dir/c.toml")));
        assert!(e.line.is_some(), "{e}");
        let e = render_err("a = 1\nb = {{vars.x\n", &d);
        assert_eq!((e.kind, e.line), (ErrorKind::Syntax, Some(2)), "{e}");
        assert!(e.to_string().starts_with("dir/c.toml:2:"), "{e}");
        let e = render_err("a = 1\n{{#if vars.x}}\nb = 2\n{{/each}}\n", &d);
        assert!(e.message.contains("\"if\" was opened, but \"each\" is closing"), "{e}");
        assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn recursion_and_deep_nesting_are_refused() {
        let d = data(&[("n", "1")], &[]);
        let cases: &[(&str, &str, usize)] = &[
            ("x = 1\n{{#*inline \"a\"}}x{{> a}}{{/inline}}{{> a}}\n", "`a` includes itself", 2),
            (
                "{{#*inline \"a\"}}{{> b}}{{/inline}}\n{{#*inline \"b\"}}{{#if n}}{{> \"a\"}}{{/if}}{{/inline}}{{> a}}",
                "`a` includes itself",
                1,
            ),
            ("a = 1\n{{> (lookup vars \"n\")}}", "computed at render time", 2),
        ];
        for (t, needle, line) in cases {
            let e = render_err(t, &d);
            assert!(e.message.contains(needle), "{t}: {e}");
            assert_eq!(e.line, Some(*line), "{t}: {e}");
        }
        let deep = format!("{}x{}", "{{#if vars.n}}".repeat(100), "{{/if}}".repeat(100));
        assert!(render_err(&deep, &d).message.contains("nested deeper than 64"));
        let parens = format!("{{{{toml {}vars.n{}}}}}", "(atoi ".repeat(100), ")".repeat(100));
        assert!(render_err(&parens, &d).message.contains("nested deeper than 64"));
        // Partials that do not recurse are fine, also when one includes another.
        let ok = "{{#*inline \"b\"}}[{{this}}]{{/inline}}{{#*inline \"a\"}}{{> b}}{{/inline}}{{#each (split \"x,y\")}}{{> a}}{{/each}}";
        assert_eq!(render(ok, &d).unwrap(), "[x][y]");
        let nested = format!("{}x{}", "{{#if vars.n}}".repeat(60), "{{/if}}".repeat(60));
        assert_eq!(render(&nested, &d).unwrap(), "x");
    }

    #[test]
    fn composition_lines_point_into_the_rendered_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.toml");
        let text = "[global]\nplan = \"p\"\n{{#each (split vars.ids)}}\n[[groups]]\nid = \"{{this}}\"\n{{/each}}\n[[groups]]\nid = \"x\"\ninstnaces = 1\n";
        std::fs::write(&path, text).expect("write");
        let e = Composition::load_with(&path, &data(&[("ids", "a,b,c")], &[])).expect_err("typo");
        // The typo is on line 9 of the file and line 11 of the rendered text (the lines holding
        // only `{{#each}}` and `{{/each}}` are left out of the output, as handlebars does).
        assert_eq!((e.key.as_deref(), e.line), (Some("groups[3].instnaces"), Some(11)), "{e}");
        assert!(e.message.contains("line 11 of the rendered composition"), "{e}");
        assert!(e.message.contains("tg-nix render"), "{e}");

        std::fs::write(&path, text.replace("instnaces = 1\n", "")).expect("write");
        let c = Composition::load_with(&path, &data(&[("ids", "a,b")], &[])).expect("parses");
        assert!(c.is_rendered());
        let ids: Vec<&str> = c.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "x"]);

        // Errors found when checking against the manifest say it too, once.
        std::fs::write(&path, "[global]\nplan = \"p\"\ncase = \"{{vars.case}}\"\nrunner = \"local:exec\"\nbuilder = \"exec:rust\"\n[[groups]]\nid = \"a\"\ninstances = { count = 1 }\n").expect("write");
        let manifest = crate::Manifest::from_str(
            "name = \"p\"\n[builders.\"exec:rust\"]\n[runners.\"local:exec\"]\n[[testcases]]\nname = \"ok\"\ninstances = { min = 1, max = 2 }\n",
            Path::new("manifest.toml"),
        )
        .expect("manifest");
        let c = Composition::load_with(&path, &data(&[("case", "okk")], &[])).expect("parses");
        let e = c.prepare(&manifest).expect_err("no such case");
        assert_eq!((e.key.as_deref(), e.line), (Some("global.case"), Some(3)), "{e}");
        assert_eq!(e.message.matches("of the rendered composition").count(), 1, "{e}");
        let c = Composition::load_with(&path, &data(&[("case", "ok")], &[])).expect("parses");
        assert_eq!(c.prepare(&manifest).expect("prepares").runs[0].groups[0].instances, 1);

        // A plain file is parsed as written, and says nothing about rendering.
        std::fs::write(&path, "[[groups]]\nid = \"x\"\ninstnaces = 1\n").expect("write");
        let e = Composition::load_with(&path, &data(&[], &[])).expect_err("typo");
        assert_eq!(e.line, Some(3));
        assert!(!e.message.contains("rendered"), "{e}");
    }

    #[test]
    fn warnings_are_marked_once() {
        let e = ModelError::new(ErrorKind::Invalid, "c.toml", "m").at("k", Some(2));
        let once = in_rendered(e, Path::new("c.toml"));
        assert_eq!(in_rendered(once.clone(), Path::new("c.toml")), once);
        let other = ModelError::new(ErrorKind::Invalid, "manifest.toml", "m").at("k", Some(2));
        assert_eq!(in_rendered(other.clone(), Path::new("c.toml")), other);
    }
}
