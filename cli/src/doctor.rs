//! `tg-nix doctor`: what this host can do, each check with what it means for runs.

use std::process::Command;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.to_string(), ok, detail: detail.into() }
}

/// The first line of `program --version`, or why it could not run.
fn version_of(program: &str, arg: &str) -> Result<String, String> {
    match Command::new(program).arg(arg).output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
        }
        Ok(out) => Err(format!("`{program} {arg}` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("not found ({e})")),
    }
}

pub async fn checks(home: &crate::home::Home) -> Vec<Check> {
    let mut out = Vec::new();
    let caps = tg_nix_runner::capability::probe().await;
    for c in &caps.checks {
        let detail = match c.support.reason() {
            Some(reason) => reason.to_string(),
            None => "supported".to_string(),
        };
        let name = match &c.feature {
            tg_nix_runner::capability::Feature::Qdisc(kind) if *kind == "netem" => {
                format!("{} (latency, loss, jitter shaping)", c.feature)
            }
            _ => c.feature.to_string(),
        };
        out.push(check(&name, c.support.is_supported(), detail));
    }
    out.push(shaping_summary(&caps));
    match version_of("cargo", "--version") {
        Ok(v) => out.push(check("cargo (exec:rust builder)", true, v)),
        Err(e) => out.push(check("cargo (exec:rust builder)", false, e)),
    }
    match version_of("nix-build", "--version") {
        Ok(v) => {
            let conf = std::fs::read_to_string("/etc/nix/nix.conf").unwrap_or_default();
            let sandbox = conf.lines().any(|l| {
                let l = l.split('#').next().unwrap_or("").replace(' ', "");
                l == "sandbox=true"
            });
            out.push(check("nix", true, v));
            out.push(check(
                "nix sandbox",
                sandbox,
                if sandbox {
                    "sandbox = true in /etc/nix/nix.conf".to_string()
                } else {
                    "sandbox is not `true` in /etc/nix/nix.conf (nix:* builders refuse to build; `tg-nix setup` fixes it)".to_string()
                },
            ));
            // What `tg-nix setup` imported for this home, and whether it is still in the store.
            let state_dir = home.state_dir();
            let imports =
                tokio::task::spawn_blocking(move || tg_nix_builders::nix::status(&state_dir)).await.unwrap_or_default();
            for s in imports {
                out.push(check(&s.name, s.ok, s.detail));
            }
        }
        Err(e) => out.push(check("nix", false, format!("{e} (needed by the nix:* builders, not by exec:rust)"))),
    }
    let socket = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let docker_ok =
        socket.strip_prefix("unix://").map(|p| std::os::unix::net::UnixStream::connect(p).is_ok()).unwrap_or(false);
    out.push(check(
        "docker daemon",
        docker_ok,
        if docker_ok {
            format!("{socket} answers")
        } else {
            format!("no daemon at {socket} (needed by local:docker, not by local:exec)")
        },
    ));
    out
}

pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{} {:width$}  {}\n", if c.ok { "ok  " } else { "no  " }, c.name, c.detail));
    }
    out
}

/// The result of `doctor --network`: the accuracy table, or why it could not be measured.
pub type NetworkCheck = Result<tg_nix_runner::shaping::selfcheck::SelfCheck, String>;

/// Measures what 1 and 10 Mbit/s limits deliver between two throwaway namespaces (about 3 s each).
pub async fn network() -> NetworkCheck {
    if !tg_nix_runner::netns::is_root() {
        return Err("needs root: the measurement runs between two network namespaces".into());
    }
    let caps = tg_nix_runner::capability::probe().await;
    tg_nix_runner::shaping::selfcheck::measure(&[1_000_000, 10_000_000], 3.0, &caps).await.map_err(|e| e.to_string())
}

pub fn render_network(check: &NetworkCheck) -> String {
    match check {
        Ok(sc) => sc.to_string(),
        Err(e) => format!("shaping accuracy: not measured: {e}\n"),
    }
}

pub fn network_json(check: &NetworkCheck) -> serde_json::Value {
    match check {
        Ok(sc) => serde_json::to_value(sc).unwrap_or_default(),
        Err(e) => serde_json::json!({"error": e}),
    }
}

/// One line saying which parts of a NetworkConfig this host can apply.
fn shaping_summary(caps: &tg_nix_runner::capability::Capabilities) -> Check {
    use tg_nix_runner::capability::Feature;
    let has = |f: Feature| caps.get(f).is_some_and(|s| s.is_supported());
    let root = has(Feature::Root) && has(Feature::NetworkNamespaces);
    let parts = [
        ("bandwidth", root && has(Feature::Qdisc("htb"))),
        ("per-subnet rules", root && has(Feature::Qdisc("htb")) && has(Feature::Classifier("u32"))),
        ("filters, enable, routing_policy, IPv4", root),
        ("latency/jitter/loss/corrupt/reorder/duplicate", root && has(Feature::Qdisc("netem"))),
    ];
    let yes: Vec<&str> = parts.iter().filter(|p| p.1).map(|p| p.0).collect();
    let no: Vec<&str> = parts.iter().filter(|p| !p.1).map(|p| p.0).collect();
    let mut detail = format!("applies: {}", if yes.is_empty() { "nothing".to_string() } else { yes.join(", ") });
    if !no.is_empty() {
        detail += &format!("; refuses (the run fails at once): {}", no.join(", "));
    }
    check("network shaping (local:exec)", no.is_empty(), detail)
}
