//! `cargo bench -p tg-nix-runner --bench shaping`: time from publishing a NetworkConfig to the
//! release of its callback barrier, for 100 instances configuring at once (real namespaces, real
//! netlink, the in-process sync service). Prints p50/p99/max and the wall time for all of them.
//! Needs root; otherwise it says SKIPPED and exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use tg_nix_runner::capability;
use tg_nix_runner::netns::{is_root, Hub, HubConfig, CONTROL_GATEWAY, CONTROL_IFNAME, DATA_IFNAME};
use tg_nix_runner::shaping::{self, Follower, Links, RunAbort};
use tg_nix_sync::keys::Namespace;
use tg_nix_sync::Service;

const INSTANCES: u32 = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    if !is_root() {
        eprintln!("\n*** SKIPPED: the shaping benchmark needs root (network namespaces) ***\n");
        return;
    }
    let caps = Arc::new(capability::probe().await);
    let hub = Hub::create(HubConfig::default()).await.expect("hub");
    let mut nets = Vec::new();
    let setup = Instant::now();
    for i in 0..INSTANCES {
        nets.push(hub.add_instance(i).await.expect("instance"));
    }
    println!("setup: {INSTANCES} instance namespaces in {:.2?}", setup.elapsed());
    let service = Service::new();
    let ns = Namespace { run: "bench".into(), plan: "shaping".into(), case: "apply".into() };
    let abort = RunAbort::new(&CancellationToken::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut followers = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        followers.push(shaping::spawn_follower(Follower {
            service: service.clone(),
            ns: ns.clone(),
            hostname: format!("i-{i}"),
            netns: tg_nix_runner::shaping::FollowerNetns::Fd(net.netns_fd().try_clone_to_owned().expect("fd")),
            links: Links {
                data: DATA_IFNAME.into(),
                control: CONTROL_IFNAME.into(),
                data_subnet: net.data_subnet,
                keep: vec![CONTROL_GATEWAY],
            },
            caps: caps.clone(),
            record: dir.path().join(format!("network-{i}.json")),
            abort: abort.clone(),
        }));
    }
    for round in 0..3 {
        let rate = 1_000_000 * (round + 1);
        let started = Instant::now();
        let mut waits = Vec::new();
        for i in 0..INSTANCES {
            let state = format!("configured-{round}-{i}");
            let config = json!({"network": "default", "enable": true, "routing_policy": "allow_all",
                "default": {"bandwidth": rate},
                "rules": [{"subnet": format!("16.0.1.{}/32", i % 250 + 1), "filter": 2}],
                "callback_state": state});
            let t0 = Instant::now();
            service.publish(&ns.topic(&format!("network:i-{i}")), config);
            let service = service.clone();
            let key = ns.state(&state);
            waits.push(tokio::spawn(async move {
                service.barrier(&key, 1).await;
                t0.elapsed()
            }));
        }
        let mut times = Vec::new();
        for w in waits {
            times.push(w.await.expect("barrier task"));
        }
        let wall = started.elapsed();
        times.sort();
        println!(
            "round {round} ({rate} bit/s + 1 drop rule, {INSTANCES} instances at once): publish → callback released \
             p50 {:.2?}  p99 {:.2?}  max {:.2?}; all released after {wall:.2?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
    assert!(abort.cause().is_none(), "a config failed: {:?}", abort.cause());
    for f in followers {
        f.abort();
    }
}
