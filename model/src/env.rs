//! The run environment contract: the variables every instance gets (reference §1.1), shaped so
//! that all three SDKs accept them.
//!
//! The Rust SDK 0.4.0 is the strictest reader (reference §1.3): "Removing any one of these makes
//! parsing fail: TEST_PLAN, TEST_CASE, TEST_RUN, TEST_REPO, TEST_BRANCH, TEST_TAG,
//! TEST_OUTPUTS_PATH, TEST_TEMP_PATH, TEST_INSTANCE_COUNT, TEST_INSTANCE_ROLE,
//! TEST_INSTANCE_PARAMS, TEST_SUBNET, TEST_START_TIME, TEST_CAPTURE_PROFILES,
//! TEST_GROUP_INSTANCE_COUNT, TEST_GROUP_ID, HOSTNAME, INFLUXDB_URL, REDIS_HOST", and
//! "`TEST_SUBNET=` fails. `TEST_INSTANCE_COUNT=` fails." So every one is always set, and the
//! values are checked here rather than discovered by a plan crashing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ErrorKind, ModelError};
use crate::params::pack_params;

/// The variables the Rust SDK 0.4.0 cannot start without (reference §1.3).
pub const RS_REQUIRED_VARS: &[&str] = &[
    "TEST_PLAN",
    "TEST_CASE",
    "TEST_RUN",
    "TEST_REPO",
    "TEST_BRANCH",
    "TEST_TAG",
    "TEST_OUTPUTS_PATH",
    "TEST_TEMP_PATH",
    "TEST_INSTANCE_COUNT",
    "TEST_INSTANCE_ROLE",
    "TEST_INSTANCE_PARAMS",
    "TEST_SUBNET",
    "TEST_START_TIME",
    "TEST_CAPTURE_PROFILES",
    "TEST_GROUP_INSTANCE_COUNT",
    "TEST_GROUP_ID",
    "HOSTNAME",
    "INFLUXDB_URL",
    "REDIS_HOST",
];

/// Everything one instance is told about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEnv {
    /// TEST_PLAN ([`crate::Prepared::plan`]).
    pub plan: String,
    pub case: String,
    /// TEST_RUN: the run's unique id.
    pub run: String,
    /// TEST_INSTANCE_COUNT: instances in the whole run.
    pub instance_count: u64,
    /// TEST_GROUP_ID: the run group's id.
    pub group_id: String,
    pub group_instance_count: u64,
    /// TEST_INSTANCE_PARAMS, packed by [`pack_params`].
    pub params: BTreeMap<String, String>,
    /// TEST_INSTANCE_ROLE (Testground never set it: empty).
    pub role: String,
    /// TEST_SIDECAR: whether something plays the sidecar (signals `network-initialized`).
    pub sidecar: bool,
    /// TEST_SUBNET: the data network, as a CIDR (`16.0.0.0/16`).
    pub subnet: String,
    pub outputs_path: PathBuf,
    pub temp_path: PathBuf,
    /// TEST_START_TIME, written as RFC 3339 in UTC.
    pub start_time: SystemTime,
    /// TEST_CAPTURE_PROFILES, packed like params.
    pub capture_profiles: BTreeMap<String, String>,
    pub disable_metrics: bool,
    /// HOSTNAME: the Rust SDK names its network topic after it.
    pub hostname: String,
    pub sync_service_host: String,
    pub sync_service_port: u16,
    pub influxdb_url: String,
    /// REDIS_HOST: unused, but the Rust SDK requires it.
    pub redis_host: String,
    /// LOG_LEVEL, only set when given.
    pub log_level: Option<String>,
}

impl InstanceEnv {
    /// The variables, in the order of reference §1.1: the 18 `TEST_*` keys (empty ones as `""`),
    /// then HOSTNAME, INFLUXDB_URL, REDIS_HOST, SYNC_SERVICE_HOST, SYNC_SERVICE_PORT, and LOG_LEVEL
    /// when set. Fails, naming the variable, on values an SDK would reject or that cannot be put
    /// into an environment (NUL bytes, non-UTF-8 paths).
    pub fn to_vars(&self) -> Result<Vec<(String, String)>, ModelError> {
        if self.instance_count == 0 {
            return Err(invalid("TEST_INSTANCE_COUNT", "a run needs at least 1 instance"));
        }
        if self.group_instance_count == 0 || self.group_instance_count > self.instance_count {
            return Err(invalid(
                "TEST_GROUP_INSTANCE_COUNT",
                format!(
                    "{} is not between 1 and the run's {} instances",
                    self.group_instance_count, self.instance_count
                ),
            ));
        }
        if !is_cidr(&self.subnet) {
            return Err(invalid(
                "TEST_SUBNET",
                format!("{:?} is not a CIDR such as 16.0.0.0/16 (the Rust SDK requires one)", self.subnet),
            ));
        }
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                "HOSTNAME",
                format!("{:?} is not a usable hostname (the Rust SDK requires one)", self.hostname),
            ));
        }
        let start = rfc3339_utc(self.start_time)
            .ok_or_else(|| invalid("TEST_START_TIME", "the start time is before 1970 or after 9999"))?;
        let params =
            pack_params(&self.params).map_err(|e| ModelError { key: Some("TEST_INSTANCE_PARAMS".into()), ..e })?;
        let profiles = pack_params(&self.capture_profiles).map_err(|e| ModelError {
            key: Some("TEST_CAPTURE_PROFILES".into()),
            message: e.message.replacen("test param", "profile", 1),
            ..e
        })?;

        let mut vars: Vec<(&str, String)> = vec![
            ("TEST_PLAN", self.plan.clone()),
            ("TEST_CASE", self.case.clone()),
            ("TEST_RUN", self.run.clone()),
            ("TEST_REPO", String::new()),
            ("TEST_BRANCH", String::new()),
            ("TEST_TAG", String::new()),
            ("TEST_OUTPUTS_PATH", path_str("TEST_OUTPUTS_PATH", &self.outputs_path)?),
            ("TEST_TEMP_PATH", path_str("TEST_TEMP_PATH", &self.temp_path)?),
            ("TEST_INSTANCE_COUNT", self.instance_count.to_string()),
            ("TEST_INSTANCE_ROLE", self.role.clone()),
            ("TEST_INSTANCE_PARAMS", params),
            ("TEST_SIDECAR", self.sidecar.to_string()),
            ("TEST_SUBNET", self.subnet.clone()),
            ("TEST_START_TIME", start),
            ("TEST_CAPTURE_PROFILES", profiles),
            ("TEST_GROUP_ID", self.group_id.clone()),
            ("TEST_GROUP_INSTANCE_COUNT", self.group_instance_count.to_string()),
            ("TEST_DISABLE_METRICS", self.disable_metrics.to_string()),
            ("HOSTNAME", self.hostname.clone()),
            ("INFLUXDB_URL", self.influxdb_url.clone()),
            ("REDIS_HOST", self.redis_host.clone()),
            ("SYNC_SERVICE_HOST", self.sync_service_host.clone()),
            ("SYNC_SERVICE_PORT", self.sync_service_port.to_string()),
        ];
        if let Some(level) = self.log_level.as_ref().filter(|l| !l.is_empty()) {
            vars.push(("LOG_LEVEL", level.clone()));
        }
        if let Some((k, _)) = vars.iter().find(|(_, v)| v.contains('\0')) {
            return Err(invalid(k, "contains a NUL byte, which no environment variable can hold"));
        }
        Ok(vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

fn invalid(var: &str, message: impl Into<String>) -> ModelError {
    ModelError::new(ErrorKind::Invalid, "", message).at(var, None)
}

fn path_str(var: &str, p: &Path) -> Result<String, ModelError> {
    p.to_str().map(String::from).ok_or_else(|| invalid(var, format!("{} is not valid UTF-8", p.display())))
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else { return false };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => prefix <= 32,
        Ok(IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

/// `2026-11-23T11:50:16Z`: Go's `time.RFC3339` for a UTC time (whole seconds). `None` before 1970
/// or after 9999.
pub(crate) fn rfc3339_utc(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let days = i64::try_from(secs / 86_400).ok()?;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return None;
    }
    Some(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar, counting in
/// 400-year eras of 146097 days whose years start on March 1st (so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn sample() -> InstanceEnv {
        InstanceEnv {
            plan: "ping".into(),
            case: "ping".into(),
            run: "c7fjstge5te621cen4i0".into(),
            instance_count: 3,
            group_id: "alpha".into(),
            group_instance_count: 2,
            params: [("iterations".to_string(), "5".to_string()), ("a".to_string(), "x=y".to_string())].into(),
            role: String::new(),
            sidecar: true,
            subnet: "16.0.0.0/16".into(),
            outputs_path: "/out/alpha/0".into(),
            temp_path: "/tmp/t0".into(),
            start_time: UNIX_EPOCH + Duration::from_secs(1_795_434_616),
            capture_profiles: [("cpu".to_string(), "*".to_string())].into(),
            disable_metrics: false,
            hostname: "alpha-0".into(),
            sync_service_host: "testground-sync-service".into(),
            sync_service_port: 5050,
            influxdb_url: "http://testground-influxdb:8086".into(),
            redis_host: "testground-redis".into(),
            log_level: None,
        }
    }

    fn get<'v>(vars: &'v [(String, String)], key: &str) -> Option<&'v str> {
        vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn all_vars_present() {
        let vars = sample().to_vars().expect("valid");
        for key in RS_REQUIRED_VARS {
            assert!(get(&vars, key).is_some(), "{key} missing");
        }
        let test_keys = vars.iter().filter(|(k, _)| k.starts_with("TEST_")).count();
        assert_eq!(test_keys, 18, "all 18 TEST_* keys");
        let expect = [
            ("TEST_PLAN", "ping"),
            ("TEST_RUN", "c7fjstge5te621cen4i0"),
            ("TEST_REPO", ""),
            ("TEST_BRANCH", ""),
            ("TEST_TAG", ""),
            ("TEST_INSTANCE_ROLE", ""),
            ("TEST_INSTANCE_COUNT", "3"),
            ("TEST_GROUP_ID", "alpha"),
            ("TEST_GROUP_INSTANCE_COUNT", "2"),
            ("TEST_INSTANCE_PARAMS", "a=x=y|iterations=5"),
            ("TEST_CAPTURE_PROFILES", "cpu=*"),
            ("TEST_SIDECAR", "true"),
            ("TEST_DISABLE_METRICS", "false"),
            ("TEST_SUBNET", "16.0.0.0/16"),
            ("TEST_OUTPUTS_PATH", "/out/alpha/0"),
            ("TEST_TEMP_PATH", "/tmp/t0"),
            ("TEST_START_TIME", "2026-11-23T11:50:16Z"),
            ("HOSTNAME", "alpha-0"),
            ("SYNC_SERVICE_HOST", "testground-sync-service"),
            ("SYNC_SERVICE_PORT", "5050"),
            ("INFLUXDB_URL", "http://testground-influxdb:8086"),
            ("REDIS_HOST", "testground-redis"),
        ];
        for (k, v) in expect {
            assert_eq!(get(&vars, k), Some(v), "{k}");
        }
        assert_eq!(get(&vars, "LOG_LEVEL"), None);
        let env = InstanceEnv { sidecar: false, disable_metrics: true, log_level: Some("debug".into()), ..sample() };
        let vars = env.to_vars().expect("valid");
        assert_eq!(get(&vars, "TEST_SIDECAR"), Some("false"));
        assert_eq!(get(&vars, "TEST_DISABLE_METRICS"), Some("true"));
        assert_eq!(get(&vars, "LOG_LEVEL"), Some("debug"));
        let empty = InstanceEnv { params: BTreeMap::new(), capture_profiles: BTreeMap::new(), ..sample() };
        let vars = empty.to_vars().expect("valid");
        assert_eq!((get(&vars, "TEST_INSTANCE_PARAMS"), get(&vars, "TEST_CAPTURE_PROFILES")), (Some(""), Some("")));
    }

    #[test]
    fn invalid_envs() {
        use std::os::unix::ffi::OsStrExt;
        let bad_path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/out/\xff"));
        let cases: Vec<(InstanceEnv, &str)> = vec![
            (InstanceEnv { instance_count: 0, ..sample() }, "TEST_INSTANCE_COUNT"),
            (InstanceEnv { group_instance_count: 0, ..sample() }, "TEST_GROUP_INSTANCE_COUNT"),
            (InstanceEnv { group_instance_count: 4, ..sample() }, "TEST_GROUP_INSTANCE_COUNT"),
            (InstanceEnv { subnet: String::new(), ..sample() }, "TEST_SUBNET"),
            (InstanceEnv { subnet: "16.0.0.0".into(), ..sample() }, "TEST_SUBNET"),
            (InstanceEnv { subnet: "16.0.0.0/33".into(), ..sample() }, "TEST_SUBNET"),
            (InstanceEnv { subnet: "16.0.0.0/+3".into(), ..sample() }, "TEST_SUBNET"),
            (InstanceEnv { hostname: String::new(), ..sample() }, "HOSTNAME"),
            (InstanceEnv { start_time: UNIX_EPOCH - Duration::from_secs(1), ..sample() }, "TEST_START_TIME"),
            (InstanceEnv { params: [("k".to_string(), "a|b".to_string())].into(), ..sample() }, "TEST_INSTANCE_PARAMS"),
            (
                InstanceEnv { capture_profiles: [("cpu".to_string(), "\n".to_string())].into(), ..sample() },
                "TEST_CAPTURE_PROFILES",
            ),
            (InstanceEnv { plan: "p\0".into(), ..sample() }, "TEST_PLAN"),
            (InstanceEnv { outputs_path: bad_path, ..sample() }, "TEST_OUTPUTS_PATH"),
        ];
        for (env, key) in cases {
            let err = env.to_vars().err().unwrap_or_else(|| panic!("accepted {key}"));
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert!(err.file.as_os_str().is_empty());
            assert!(err.to_string().starts_with(key), "{err}");
        }
        assert!(InstanceEnv { subnet: "fd00::/64".into(), ..sample() }.to_vars().is_ok());
    }

    #[test]
    fn rfc3339_table() {
        let cases: &[(u64, Option<&str>)] = &[
            (0, Some("1970-01-01T00:00:00Z")),
            (951_782_400, Some("2000-02-29T00:00:00Z")),
            (1_685_451_083, Some("2023-05-30T12:51:23Z")),
            (1_795_434_616, Some("2026-11-23T11:50:16Z")),
            (4_107_542_399, Some("2100-02-28T23:59:59Z")),
            (253_402_300_799, Some("9999-12-31T23:59:59Z")),
            (253_402_300_800, None),
        ];
        for (secs, want) in cases {
            let got = rfc3339_utc(UNIX_EPOCH + Duration::from_secs(*secs));
            assert_eq!(got.as_deref(), *want, "{secs}");
        }
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(u64::MAX / 2)), None);
    }
}
