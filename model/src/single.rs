//! A one-group composition from command-line flags, like `testground run single`: one group with
//! id `single` (reference §4.2).

use std::path::PathBuf;

use toml::{Table, Value};

use crate::composition::{Composition, Global, Group, Instances, Origin, RunDefaults};

/// The flags of `tg-nix run --plan P --case C --instances N --builder B --runner R
/// --test-param k=v --build-cfg k=v --run-cfg k=v`. Repeated keys: the last one wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SingleRun {
    pub plan: String,
    pub case: String,
    pub instances: u64,
    pub builder: String,
    pub runner: String,
    pub test_params: Vec<(String, String)>,
    pub build_config: Vec<(String, String)>,
    pub run_config: Vec<(String, String)>,
}

/// The group id of single runs (Testground's).
pub const SINGLE_GROUP: &str = "single";

impl Composition {
    /// The composition `testground run single` would build: `global` holds plan, case, builder,
    /// runner, `total_instances` and the build and run config; group `single` holds the instance
    /// count and the test params. Nothing is checked here: [`Composition::prepare`] does it, and its
    /// messages then name the flags (`--instances: …`) instead of key paths.
    ///
    /// `--build-cfg`/`--run-cfg` values are typed as TOML would read them when that is unambiguous:
    /// `true`/`false`, whole numbers, and `[…]`/`{…}` literals; anything else is a string
    /// (so `go_version=1.20` stays the string `"1.20"`).
    pub fn single(run: &SingleRun) -> Composition {
        let global = Global {
            plan: run.plan.clone(),
            case: run.case.clone(),
            builder: run.builder.clone(),
            runner: run.runner.clone(),
            total_instances: Some(run.instances).filter(|n| *n > 0),
            build_config: config_table(&run.build_config),
            run_config: config_table(&run.run_config),
            ..Global::default()
        };
        let group = Group {
            id: SINGLE_GROUP.to_string(),
            instances: Some(Instances { count: Some(run.instances), percentage: None }),
            run: RunDefaults { test_params: run.test_params.iter().cloned().collect(), ..RunDefaults::default() },
            ..Group::default()
        };
        Composition::from_parts(global, vec![group], PathBuf::from("command line"), Origin::CommandLine)
    }
}

fn config_table(pairs: &[(String, String)]) -> Table {
    pairs.iter().map(|(k, v)| (k.clone(), flag_value(v))).collect()
}

fn flag_value(v: &str) -> Value {
    let t = v.trim();
    match t {
        "true" => return Value::Boolean(true),
        "false" => return Value::Boolean(false),
        _ => {}
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    let plain_int =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if plain_int {
        if let Ok(n) = t.parse::<i64>() {
            return Value::Integer(n);
        }
    }
    if t.starts_with('[') || t.starts_with('{') {
        if let Ok(mut doc) = toml::from_str::<Table>(&format!("v = {t}")) {
            if let Some(value) = doc.remove("v") {
                return value;
            }
        }
    }
    Value::String(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values() {
        let cases: Vec<(&str, Value)> = vec![
            ("true", Value::Boolean(true)),
            ("false", Value::Boolean(false)),
            ("5", Value::Integer(5)),
            ("-5", Value::Integer(-5)),
            ("0", Value::Integer(0)),
            ("007", Value::String("007".into())),
            ("1.20", Value::String("1.20".into())),
            ("v1", Value::String("v1".into())),
            ("", Value::String("".into())),
            ("[\"a\", \"b\"]", Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
            ("[unclosed", Value::String("[unclosed".into())),
            ("99999999999999999999", Value::String("99999999999999999999".into())),
        ];
        for (text, want) in cases {
            assert_eq!(flag_value(text), want, "{text}");
        }
    }

    #[test]
    fn single_shape() {
        let c = Composition::single(&SingleRun {
            plan: "plans/ping".into(),
            case: "ping".into(),
            instances: 3,
            builder: "exec:rust".into(),
            runner: "local:exec".into(),
            test_params: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            build_config: vec![("features".into(), "x".into())],
            run_config: vec![("keep".into(), "true".into())],
        });
        assert_eq!(c.global.plan, "plans/ping");
        assert_eq!(c.global.total_instances, Some(3));
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].id, "single");
        assert_eq!(c.groups[0].run.test_params.get("a").map(String::as_str), Some("2"), "last wins");
        assert_eq!(c.global.build_config.get("features"), Some(&Value::String("x".into())));
        assert_eq!(c.global.run_config.get("keep"), Some(&Value::Boolean(true)));
        assert_eq!(c.source, PathBuf::from("command line"));
    }
}
