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
