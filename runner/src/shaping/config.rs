//! Testground's NetworkConfig (compat §3.2), decoded by hand from JSON so that every mistake is
//! reported with the key it concerns (`default.loss: 150 is not a percentage (0 to 100)`).
//!
//! Decoding is lenient where the SDKs differ and strict where a value cannot mean anything:
//! missing keys are zero or false (the JS SDK sends partial objects), `null` is the same as
//! missing, unknown keys are ignored; negative numbers, percentages outside 0..=100, latencies
//! beyond [`MAX_DELAY_NS`], unknown `network` names, filters other than 0/1/2 and malformed subnets
//! are errors.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::netns::Ipv4Cidr;

/// The only data network a Testground run has.
pub const DEFAULT_NETWORK: &str = "default";
/// The largest latency or jitter accepted: one minute. netem holds delays in 64 ns ticks in a u32
/// (at most 274 s); anything near that is an outage, which `enable: false` expresses better.
pub const MAX_DELAY_NS: u64 = 60_000_000_000;
/// The smallest non-zero bandwidth: HTB takes bytes per second, so fewer than 8 bits/s is zero.
pub const MIN_BANDWIDTH: u64 = 8;

/// What happens to packets for a rule's subnet (Testground's FilterAction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Delivered (removes a reject or drop route set earlier).
    #[default]
    Accept,
    /// Refused at once: a `prohibit` route (the sender gets EACCES / ICMP admin-prohibited).
    Reject,
    /// Silently dropped: a `blackhole` route (the sender times out).
    Drop,
}

/// How traffic leaving the data interface is shaped (Testground's LinkShape). Delays are in
/// nanoseconds, bandwidth in bits per second (0 = unlimited), percentages from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LinkShape {
    pub latency: u64,
    pub jitter: u64,
    pub bandwidth: u64,
    pub filter: Filter,
    pub loss: f32,
    pub corrupt: f32,
    pub corrupt_corr: f32,
    pub reorder: f32,
    pub reorder_corr: f32,
    pub duplicate: f32,
    pub duplicate_corr: f32,
}

impl LinkShape {
    /// Whether this shape needs a netem qdisc (any delay, loss, corruption, reordering or
    /// duplication, or a correlation of them).
    pub fn needs_netem(&self) -> bool {
        self.latency != 0
            || self.jitter != 0
            || [
                self.loss,
                self.corrupt,
                self.corrupt_corr,
                self.reorder,
                self.reorder_corr,
                self.duplicate,
                self.duplicate_corr,
            ]
            .iter()
            .any(|p| *p != 0.0)
    }

    /// Whether the shape asks for anything at all besides its filter.
    pub fn shapes(&self) -> bool {
        self.bandwidth != 0 || self.needs_netem()
    }

    /// The netem settings that are not zero, as `tc` would spell them (for messages).
    pub fn netem_summary(&self) -> String {
        let mut parts = Vec::new();
        if self.latency != 0 || self.jitter != 0 {
            parts.push(format!("latency {}us jitter {}us", self.latency / 1000, self.jitter / 1000));
        }
        for (name, value) in [
            ("loss", self.loss),
            ("corrupt", self.corrupt),
            ("corrupt_corr", self.corrupt_corr),
            ("reorder", self.reorder),
            ("reorder_corr", self.reorder_corr),
            ("duplicate", self.duplicate),
            ("duplicate_corr", self.duplicate_corr),
        ] {
            if value != 0.0 {
                parts.push(format!("{name} {value}%"));
            }
        }
        parts.join(", ")
    }
}

/// A shape and a filter for the traffic to one subnet (Testground's LinkRule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkRule {
    #[serde(flatten)]
    pub shape: LinkShape,
    pub subnet: Ipv4Cidr,
}

/// Testground's routing policy for the control network. Anything but `allow_all` is `deny_all`,
/// as in Testground's sidecar (an empty or missing policy included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPolicy {
    AllowAll,
    #[default]
    DenyAll,
}

/// An address asked for with `IPv4` (the prefix is kept for the record; the data network's own
/// prefix is what the interface gets, as in Testground).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ipv4Interface {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv4Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One network configuration, as an instance published it on `network:<hostname>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkConfig {
    pub network: String,
    #[serde(rename = "IPv4")]
    pub ipv4: Option<Ipv4Interface>,
    /// Accepted and ignored (Testground never supported it either); recorded in `network.json`.
    #[serde(rename = "IPv6")]
    pub ipv6: Option<String>,
    pub enable: bool,
    pub default: LinkShape,
    pub rules: Vec<LinkRule>,
    pub callback_state: String,
    pub callback_target: Option<u64>,
    pub routing_policy: RoutingPolicy,
}

impl Default for NetworkConfig {
    /// Testground's initial config: the default network, enabled, unshaped, deny_all.
    fn default() -> NetworkConfig {
        NetworkConfig {
            network: DEFAULT_NETWORK.into(),
            ipv4: None,
            ipv6: None,
            enable: true,
            default: LinkShape::default(),
            rules: Vec::new(),
            callback_state: String::new(),
            callback_target: None,
            routing_policy: RoutingPolicy::DenyAll,
        }
    }
}

/// A config that cannot be applied as written: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The JSON path, like `rules[1].subnet` (empty for the whole document).
    pub key: String,
    pub problem: String,
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: if key.is_empty() { "(config)".into() } else { key.into() }, problem: problem.into() }
}

impl NetworkConfig {
    /// Decodes and validates a config published by an SDK. Note that a missing `enable` is
    /// `false`, which takes the data network down (Go's zero value; compat §3.2).
    pub fn from_json(value: &Value) -> Result<NetworkConfig, ConfigError> {
        let obj = value.as_object().ok_or_else(|| bad("", format!("expected a JSON object, got {}", kind(value))))?;
        let network = string(obj, "", "network")?.unwrap_or_default();
        if network != DEFAULT_NETWORK {
            return Err(bad(
                "network",
                format!("unknown network {network:?}; the only data network is {DEFAULT_NETWORK:?}"),
            ));
        }
        let ipv4 = match string(obj, "", "IPv4")? {
            None => None,
            Some(s) => Some(parse_interface(&s).map_err(|p| bad("IPv4", p))?),
        };
        let ipv6 = string(obj, "", "IPv6")?;
        let enable = match present(obj, "enable") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad("enable", format!("expected true or false, got {}", kind(v)))),
        };
        let default = match present(obj, "default") {
            None => LinkShape::default(),
            Some(v) => shape(v, "default")?,
        };
        let rules = match present(obj, "rules") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| rule(v, &format!("rules[{i}]"))).collect::<Result<_, _>>()?
            }
            Some(v) => return Err(bad("rules", format!("expected a list of rules, got {}", kind(v)))),
        };
        let callback_state = string(obj, "", "callback_state")?.unwrap_or_default();
        let callback_target = match present(obj, "callback_target") {
            None => None,
            Some(v) => Some(integer(v, "callback_target")?),
        };
        let routing_policy = match string(obj, "", "routing_policy")?.as_deref() {
            Some("allow_all") => RoutingPolicy::AllowAll,
            _ => RoutingPolicy::DenyAll,
        };
        Ok(NetworkConfig {
            network,
            ipv4,
            ipv6,
            enable,
            default,
            rules,
            callback_state,
            callback_target,
            routing_policy,
        })
    }

    /// Whether any part of the config needs netem.
    pub fn needs_netem(&self) -> bool {
        self.default.needs_netem() || self.rules.iter().any(|r| r.shape.needs_netem())
    }

    /// The rules that shape traffic (each gets its own HTB class), in the order they are matched:
    /// longest prefix first, then as listed.
    pub fn shaped_rules(&self) -> Vec<&LinkRule> {
        let mut rules: Vec<&LinkRule> = self.rules.iter().filter(|r| r.shape.shapes()).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.subnet.prefix()));
        rules
    }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn string(obj: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(bad(&path(prefix, key), format!("expected a string, got {}", kind(v)))),
    }
}

/// A non-negative integer (JSON numbers from Go and JS may be written as floats like `1e6`).
fn integer(v: &Value, key: &str) -> Result<u64, ConfigError> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f < 0.0 => Err(bad(key, format!("{v} is negative"))),
        Some(f) if f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        Some(_) => Err(bad(key, format!("{v} is not a whole number"))),
        None => Err(bad(key, format!("expected a number, got {}", kind(v)))),
    }
}

fn percent(v: &Value, key: &str) -> Result<f32, ConfigError> {
    let f = v.as_f64().ok_or_else(|| bad(key, format!("expected a percentage, got {}", kind(v))))?;
    if !(0.0..=100.0).contains(&f) {
        return Err(bad(key, format!("{v} is not a percentage (0 to 100)")));
    }
    Ok(f as f32)
}

fn shape(v: &Value, prefix: &str) -> Result<LinkShape, ConfigError> {
    let obj = v.as_object().ok_or_else(|| bad(prefix, format!("expected an object, got {}", kind(v))))?;
    shape_of(obj, prefix)
}

fn shape_of(obj: &Map<String, Value>, prefix: &str) -> Result<LinkShape, ConfigError> {
    let int = |key: &str| {
        present(obj, key).map(|v| integer(v, &path(prefix, key))).transpose().map(Option::unwrap_or_default)
    };
    let pct = |key: &str| {
        present(obj, key).map(|v| percent(v, &path(prefix, key))).transpose().map(Option::unwrap_or_default)
    };
    let latency = int("latency")?;
    let jitter = int("jitter")?;
    for (key, value) in [("latency", latency), ("jitter", jitter)] {
        if value > MAX_DELAY_NS {
            return Err(bad(
                &path(prefix, key),
                format!("{value} ns is more than a minute (the limit is {MAX_DELAY_NS} ns); use enable: false to cut a link"),
            ));
        }
    }
    let bandwidth = int("bandwidth")?;
    if bandwidth != 0 && bandwidth < MIN_BANDWIDTH {
        return Err(bad(
            &path(prefix, "bandwidth"),
            format!("{bandwidth} bits/s is less than one byte per second; use 0 for unlimited"),
        ));
    }
    let filter = match int("filter")? {
        0 => Filter::Accept,
        1 => Filter::Reject,
        2 => Filter::Drop,
        n => return Err(bad(&path(prefix, "filter"), format!("{n} is not a filter (0 accept, 1 reject, 2 drop)"))),
    };
    Ok(LinkShape {
        latency,
        jitter,
        bandwidth,
        filter,
        loss: pct("loss")?,
        corrupt: pct("corrupt")?,
        corrupt_corr: pct("corrupt_corr")?,
        reorder: pct("reorder")?,
        reorder_corr: pct("reorder_corr")?,
        duplicate: pct("duplicate")?,
        duplicate_corr: pct("duplicate_corr")?,
    })
}

fn rule(v: &Value, prefix: &str) -> Result<LinkRule, ConfigError> {
    let obj = v.as_object().ok_or_else(|| bad(prefix, format!("expected an object, got {}", kind(v))))?;
    let shape = shape_of(obj, prefix)?;
    let key = path(prefix, "subnet");
    let subnet = match string(obj, prefix, "subnet")? {
        None => return Err(bad(&key, "missing; a rule applies to a subnet like 16.0.0.3/32")),
        Some(s) => parse_subnet(&s).map_err(|p| bad(&key, p))?,
    };
    Ok(LinkRule { shape, subnet })
}

/// `ADDRESS/PREFIX`, with or without host bits (Go's net.ParseCIDR accepts both).
fn parse_interface(s: &str) -> Result<Ipv4Interface, String> {
    let syntax = || format!("{s:?} is not an IPv4 address with a prefix, like 16.0.1.1/16");
    let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
    if prefix > 32 {
        return Err(format!("prefix length {prefix} is out of range (0 to 32)"));
    }
    Ok(Ipv4Interface { addr, prefix })
}

/// A rule's subnet; host bits are cleared, as Go's net.ParseCIDR does.
fn parse_subnet(s: &str) -> Result<Ipv4Cidr, String> {
    if s.contains(':') {
        return Err(format!("{s:?} is an IPv6 subnet; only IPv4 is supported"));
    }
    let iface = parse_interface(s)?;
    let mask = if iface.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(iface.prefix)) };
    Ipv4Cidr::new(Ipv4Addr::from_bits(iface.addr.to_bits() & mask), iface.prefix).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_the_rust_sdk_sends() {
        let v = json!({"network":"default","IPv4":"16.0.1.1/24","IPv6":null,"enable":true,
            "default":{"latency":10000000,"jitter":0,"bandwidth":1048576,"filter":0,"loss":0.0,"corrupt":0.0,
            "corrupt_corr":0.0,"reorder":0.0,"reorder_corr":0.0,"duplicate":0.0,"duplicate_corr":0.0},
            "rules":[{"latency":0,"jitter":0,"bandwidth":0,"filter":2,"loss":0.0,"corrupt":0.0,"corrupt_corr":0.0,
            "reorder":0.0,"reorder_corr":0.0,"duplicate":0.0,"duplicate_corr":0.0,"subnet":"16.0.0.3/32"}],
            "callback_state":"latency-reduced","callback_target":2,"routing_policy":"allow_all"});
        let c = NetworkConfig::from_json(&v).unwrap();
        assert_eq!(c.ipv4, Some(Ipv4Interface { addr: Ipv4Addr::new(16, 0, 1, 1), prefix: 24 }));
        assert!(c.enable);
        assert_eq!(c.default.latency, 10_000_000);
        assert_eq!(c.default.bandwidth, 1_048_576);
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].shape.filter, Filter::Drop);
        assert_eq!(c.rules[0].subnet.to_string(), "16.0.0.3/32");
        assert_eq!(c.callback_target, Some(2));
        assert_eq!(c.routing_policy, RoutingPolicy::AllowAll);
        assert!(c.needs_netem());
        assert!(c.shaped_rules().is_empty());
    }

    #[test]
    fn partial_configs_get_zero_defaults() {
        // What the JS SDK sends (compat §2.6).
        let v = json!({"network":"default","enable":true,"default":{"latency":100000000,"bandwidth":1048576},
            "callback_state":"network-configured","routing_policy":"deny_all"});
        let c = NetworkConfig::from_json(&v).unwrap();
        assert_eq!(c.default.jitter, 0);
        assert_eq!(c.default.loss, 0.0);
        assert_eq!(c.default.filter, Filter::Accept);
        assert!(c.rules.is_empty());
        assert_eq!(c.callback_target, None);
        // Only the network name: disabled (Go's zero value), deny_all.
        let c = NetworkConfig::from_json(&json!({"network":"default"})).unwrap();
        assert!(!c.enable);
        assert_eq!(c.routing_policy, RoutingPolicy::DenyAll);
        assert!(!c.default.shapes());
        // Anything but allow_all is deny_all, as in Testground.
        let c = NetworkConfig::from_json(&json!({"network":"default","routing_policy":""})).unwrap();
        assert_eq!(c.routing_policy, RoutingPolicy::DenyAll);
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases = [
            (json!([1]), "(config): expected a JSON object, got a list"),
            (json!({"network":"other"}), "network: unknown network \"other\"; the only data network is \"default\""),
            (json!({"network":"default","default":{"latency":-5}}), "default.latency: -5 is negative"),
            (json!({"network":"default","default":{"loss":150}}), "default.loss: 150 is not a percentage (0 to 100)"),
            (json!({"network":"default","default":{"loss":"1%"}}), "default.loss: expected a percentage, got a string"),
            (json!({"network":"default","default":{"bandwidth":1.5}}), "default.bandwidth: 1.5 is not a whole number"),
            (
                json!({"network":"default","default":{"bandwidth":3}}),
                "default.bandwidth: 3 bits/s is less than one byte per second; use 0 for unlimited",
            ),
            (
                json!({"network":"default","default":{"filter":7}}),
                "default.filter: 7 is not a filter (0 accept, 1 reject, 2 drop)",
            ),
            (
                json!({"network":"default","rules":[{"filter":2}]}),
                "rules[0].subnet: missing; a rule applies to a subnet like 16.0.0.3/32",
            ),
            (
                json!({"network":"default","rules":[{"subnet":"16.0.0/8"}]}),
                "rules[0].subnet: \"16.0.0/8\" is not an IPv4 address with a prefix, like 16.0.1.1/16",
            ),
            (
                json!({"network":"default","rules":[{"subnet":"16.0.0.0/40"}]}),
                "rules[0].subnet: prefix length 40 is out of range (0 to 32)",
            ),
            (
                json!({"network":"default","rules":[{"subnet":"fd00::/8"}]}),
                "rules[0].subnet: \"fd00::/8\" is an IPv6 subnet; only IPv4 is supported",
            ),
            (
                json!({"network":"default","IPv4":"16.0.0.300/16"}),
                "IPv4: \"16.0.0.300/16\" is not an IPv4 address with a prefix, like 16.0.1.1/16",
            ),
            (json!({"network":"default","enable":"yes"}), "enable: expected true or false, got a string"),
        ];
        for (v, expected) in cases {
            assert_eq!(NetworkConfig::from_json(&v).unwrap_err().to_string(), expected, "{v}");
        }
        let long = json!({"network":"default","default":{"latency":61_000_000_000u64}});
        assert!(NetworkConfig::from_json(&long)
            .unwrap_err()
            .to_string()
            .starts_with("default.latency: 61000000000 ns"));
    }

    #[test]
    fn rule_subnets_drop_host_bits_and_sort_longest_first() {
        let v = json!({"network":"default","rules":[
            {"subnet":"16.0.0.0/16","bandwidth":8000},
            {"subnet":"16.0.0.9/24","filter":1},
            {"subnet":"16.0.0.3/32","latency":1000}]});
        let c = NetworkConfig::from_json(&v).unwrap();
        assert_eq!(c.rules[1].subnet.to_string(), "16.0.0.0/24");
        let order: Vec<String> = c.shaped_rules().iter().map(|r| r.subnet.to_string()).collect();
        assert_eq!(order, ["16.0.0.3/32", "16.0.0.0/16"]);
    }
}
