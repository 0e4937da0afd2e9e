//! Privileged tests of network shaping on real namespaces: configs are applied with
//! [`Shaper`] and the resulting state (qdiscs, classes, filters, routes, link flags, addresses)
//! is read back over netlink, in the instance's namespace. Without root they print a loud
//! SKIPPED line (and fail when CI=true).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::tc::{TcAttribute, TcFilterU32Option, TcMessage, TcOption};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

use tg_nix_runner::capability::{self, Capabilities};
use tg_nix_runner::netns::{is_root, Hub, HubConfig, InstanceNet, CONTROL_GATEWAY};
use tg_nix_runner::shaping::{Links, NetnsRef, NetworkConfig, Shaper, ShapingError};

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn privileged(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test} requires root in CI");
        }
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED (not root): {test} needs root for network namespaces ***\n");
        return None;
    }
    Some(SERIAL.lock().await)
}

fn links(net: &InstanceNet) -> Links {
    Links { data: "eth1".into(), control: "eth0".into(), data_subnet: net.data_subnet, keep: vec![CONTROL_GATEWAY] }
}

fn config(v: serde_json::Value) -> NetworkConfig {
    NetworkConfig::from_json(&v).expect("valid config")
}

async fn index(handle: &Handle, name: &str) -> u32 {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    links.try_next().await.unwrap().unwrap().header.index
}

async fn qdiscs(handle: &Handle, ifindex: u32) -> Vec<TcMessage> {
    let all: Vec<TcMessage> = handle.qdisc().get().execute().try_collect().await.unwrap();
    all.into_iter().filter(|m| m.header.index == ifindex as i32).collect()
}

async fn classes(handle: &Handle, ifindex: u32) -> Vec<TcMessage> {
    handle.traffic_class(ifindex as i32).get().execute().try_collect().await.unwrap()
}

async fn filters(handle: &Handle, ifindex: u32) -> Vec<TcMessage> {
    // Parent 0 asks for the filters of the root qdisc (1:).
    handle.traffic_filter(ifindex as i32).get().execute().try_collect().await.unwrap()
}

fn kind(m: &TcMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| if let TcAttribute::Kind(k) = a { Some(k.clone()) } else { None })
        .unwrap_or_default()
}

/// The raw value of option `kind` inside TCA_OPTIONS. For kinds it does not know (htb, u32),
/// netlink-packet-route keeps TCA_OPTIONS whole, as one attribute of type 2 holding the nested ones.
fn option(m: &TcMessage, kind: u16) -> Option<Vec<u8>> {
    let raw = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(nla) if nla.kind() == 2 => {
                let mut buf = vec![0; nla.value_len()];
                nla.emit_value(&mut buf);
                Some(buf)
            }
            _ => None,
        }),
        _ => None,
    })?;
    let mut rest = &raw[..];
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        if ty == kind {
            return Some(rest[4..len].to_vec());
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    None
}

/// The rate (bytes/s) of an HTB class, from struct tc_htb_opt (or TCA_HTB_RATE64).
fn htb_rate(m: &TcMessage) -> u64 {
    if let Some(r64) = option(m, 6) {
        return u64::from_ne_bytes(r64[..8].try_into().unwrap());
    }
    let parms = option(m, 1).expect("TCA_HTB_PARMS");
    u64::from(u32::from_ne_bytes(parms[8..12].try_into().unwrap()))
}

/// Blackhole and prohibit routes in the main table, as (type, "dst/prefix").
async fn filter_routes(handle: &Handle) -> Vec<(RouteType, String)> {
    let routes: Vec<_> =
        handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await.unwrap();
    routes
        .into_iter()
        .filter(|r| matches!(r.header.kind, RouteType::BlackHole | RouteType::Prohibit))
        .map(|r| {
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            (r.header.kind, format!("{}/{}", dst.unwrap_or(Ipv4Addr::UNSPECIFIED), r.header.destination_prefix_length))
        })
        .collect()
}

/// Main-table unicast routes via `ifindex`, as "dst/prefix".
async fn routes_via(handle: &Handle, ifindex: u32) -> Vec<String> {
    let routes: Vec<_> =
        handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await.unwrap();
    let mut out: Vec<String> = routes
        .into_iter()
        .filter(|r| r.header.table == 254 && r.header.kind == RouteType::Unicast)
        .filter(|r| r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == ifindex)))
        .map(|r| {
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            format!("{}/{}", dst.unwrap_or(Ipv4Addr::UNSPECIFIED), r.header.destination_prefix_length)
        })
        .collect();
    out.sort();
    out
}

async fn is_up(handle: &Handle, ifindex: u32) -> bool {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let link = links.try_next().await.unwrap().unwrap();
    link.header.flags.contains(LinkFlags::Up)
}

async fn addresses(handle: &Handle, ifindex: u32) -> Vec<Ipv4Addr> {
    let msgs: Vec<_> = handle.address().get().set_link_index_filter(ifindex).execute().try_collect().await.unwrap();
    msgs.iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

struct Fixture {
    _hub: Hub,
    net: InstanceNet,
    handle: Handle,
    caps: Capabilities,
    eth0: u32,
    eth1: u32,
}

async fn fixture() -> Fixture {
    let hub = Hub::create(HubConfig::default()).await.unwrap();
    let net = hub.add_instance(0).await.unwrap();
    let handle = net.netlink().await.unwrap();
    let eth0 = index(&handle, "eth0").await;
    let eth1 = index(&handle, "eth1").await;
    let caps = capability::probe().await;
    Fixture { _hub: hub, net, handle, caps, eth0, eth1 }
}

#[tokio::test]
async fn bandwidth_rules_and_filters_read_back() {
    let Some(_serial) = privileged("bandwidth_rules_and_filters_read_back").await else { return };
    let f = fixture().await;
    let mut shaper = Shaper::open(NetnsRef::Fd(f.net.netns_fd()), links(&f.net), "single-0").await.unwrap();
    let cfg = config(json!({"network":"default","enable":true,
        "default":{"bandwidth":1_000_000},
        "rules":[{"subnet":"16.0.0.3/32","bandwidth":10_000_000},
                 {"subnet":"16.0.0.4/32","filter":2},
                 {"subnet":"16.0.0.5/32","filter":1}],
        "callback_state":"configured","routing_policy":"allow_all"}));
    let applied = shaper.apply(&cfg, &f.caps).await.unwrap();
    assert!(applied.steps.iter().any(|s| s == "class 1:2 htb rate 125000 bytes/s"), "{:?}", applied.steps);

    let q = qdiscs(&f.handle, f.eth1).await;
    let root = q.iter().find(|m| m.header.parent == rtnetlink::packet_route::tc::TcHandle::ROOT).expect("a root qdisc");
    assert_eq!(kind(root), "htb");
    assert_eq!((root.header.handle.major, root.header.handle.minor), (1, 0));
    assert!(!q.iter().any(|m| kind(m) == "netem"), "no netem without latency");

    let mut rates: Vec<(u16, u64)> =
        classes(&f.handle, f.eth1).await.iter().map(|c| (c.header.handle.minor, htb_rate(c))).collect();
    rates.sort();
    assert_eq!(rates, vec![(2, 125_000), (0x10, 1_250_000)]);

    // The filter sends 16.0.0.3/32 to class 1:10 (netlink-packet-route decodes u32 options).
    let fl = filters(&f.handle, f.eth1).await;
    let matched = fl.iter().any(|m| {
        let opts: Vec<&TcFilterU32Option> = m
            .attributes
            .iter()
            .filter_map(|a| if let TcAttribute::Options(o) = a { Some(o) } else { None })
            .flatten()
            .filter_map(|o| if let TcOption::U32(u) = o { Some(u) } else { None })
            .collect();
        let key = opts.iter().any(|o| {
            matches!(o, TcFilterU32Option::Selector(sel) if sel.keys.iter().any(|k|
                k.off == 16 && k.mask == u32::MAX && k.val == u32::from(Ipv4Addr::new(16, 0, 0, 3))))
        });
        let class = opts.iter().any(|o| matches!(o, TcFilterU32Option::ClassId(h) if (h.major, h.minor) == (1, 0x10)));
        kind(m) == "u32" && key && class
    });
    assert!(matched, "a u32 filter for 16.0.0.3/32 → 1:10: {fl:?}");

    let mut routes = filter_routes(&f.handle).await;
    routes.sort_by_key(|r| r.1.clone());
    assert_eq!(
        routes,
        vec![(RouteType::BlackHole, "16.0.0.4/32".to_string()), (RouteType::Prohibit, "16.0.0.5/32".to_string())]
    );

    // Accept removes the filter routes; an unshaped config removes the tree.
    let cfg = config(json!({"network":"default","enable":true,
        "rules":[{"subnet":"16.0.0.4/32","filter":0},{"subnet":"16.0.0.5/32","filter":0}],
        "routing_policy":"allow_all"}));
    shaper.apply(&cfg, &f.caps).await.unwrap();
    assert!(filter_routes(&f.handle).await.is_empty());
    assert!(classes(&f.handle, f.eth1).await.is_empty());
    assert!(!qdiscs(&f.handle, f.eth1).await.iter().any(|m| kind(m) == "htb"));
}

#[tokio::test]
async fn enable_policy_and_address_read_back() {
    let Some(_serial) = privileged("enable_policy_and_address_read_back").await else { return };
    let f = fixture().await;
    let mut shaper = Shaper::open(NetnsRef::Fd(f.net.netns_fd()), links(&f.net), "single-0").await.unwrap();
    assert_eq!(routes_via(&f.handle, f.eth0).await, vec!["192.18.0.0/16"]);

    // deny_all keeps a host route to the sync service and removes the rest; enable:false.
    let cfg = config(json!({"network":"default","enable":false,"routing_policy":"deny_all"}));
    shaper.apply(&cfg, &f.caps).await.unwrap();
    assert!(!is_up(&f.handle, f.eth1).await);
    assert_eq!(routes_via(&f.handle, f.eth0).await, vec!["192.18.0.1/32"]);

    // allow_all restores the control subnet; enable:true; a new address in the data subnet.
    let cfg = config(json!({"network":"default","enable":true,"routing_policy":"allow_all","IPv4":"16.0.7.9/16"}));
    shaper.apply(&cfg, &f.caps).await.unwrap();
    assert!(is_up(&f.handle, f.eth1).await);
    assert_eq!(routes_via(&f.handle, f.eth0).await, vec!["192.18.0.0/16", "192.18.0.1/32"]);
    assert_eq!(addresses(&f.handle, f.eth1).await, vec![Ipv4Addr::new(16, 0, 7, 9)]);
    assert_eq!(shaper.data_ip(), Some(Ipv4Addr::new(16, 0, 7, 9)));

    // An address outside the data network is refused before anything changes.
    let cfg = config(json!({"network":"default","enable":false,"IPv4":"10.0.0.1/8"}));
    let err = shaper.apply(&cfg, &f.caps).await.unwrap_err();
    assert!(err.to_string().contains("IPv4: 10.0.0.1 is not a host address of the data network 16.0.0.0/16"), "{err}");
    assert!(is_up(&f.handle, f.eth1).await, "nothing applied");
}

#[tokio::test]
async fn unsupported_features_fail_before_any_change() {
    let Some(_serial) = privileged("unsupported_features_fail_before_any_change").await else { return };
    let f = fixture().await;
    if f.caps.qdisc("netem").is_some_and(|s| s.is_supported()) {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: this kernel has sch_netem; the unsupported path needs a kernel without it ***\n"
        );
        return;
    }
    let mut shaper = Shaper::open(NetnsRef::Fd(f.net.netns_fd()), links(&f.net), "lat-0").await.unwrap();
    let cfg = config(json!({"network":"default","enable":false,
        "default":{"latency":10_000_000,"bandwidth":1_000_000},"rules":[{"subnet":"16.0.0.9/32","filter":2}]}));
    let err = shaper.apply(&cfg, &f.caps).await.unwrap_err();
    assert!(matches!(err, ShapingError::Unsupported(_)), "{err:?}");
    let text = err.to_string();
    for part in ["instance lat-0", "qdisc netem", "latency 10000us", "sch_netem", "CONFIG_NET_SCH_NETEM"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // Nothing of the config was applied: no tree, no route, the link still up.
    assert!(classes(&f.handle, f.eth1).await.is_empty());
    assert!(filter_routes(&f.handle).await.is_empty());
    assert!(is_up(&f.handle, f.eth1).await);
}

#[tokio::test]
async fn follow_signals_callbacks_records_and_stops_at_a_bad_config() {
    let Some(_serial) = privileged("follow_signals_callbacks_records_and_stops_at_a_bad_config").await else { return };
    let f = fixture().await;
    let service = tg_nix_sync::Service::new();
    let ns = tg_nix_sync::keys::Namespace { run: "r".into(), plan: "p".into(), case: "c".into() };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("network.json");
    let topic = ns.topic("network:single-0");
    // Published before the follower starts: replayed from the first message.
    service.publish(
        &topic,
        json!({"network":"default","enable":true,"default":{"bandwidth":8000},"callback_state":"one"}),
    );
    service.publish(&topic, json!({"network":"default","enable":true,"default":{"loss":-1},"callback_state":"two"}));
    let shaper = Shaper::open(NetnsRef::Fd(f.net.netns_fd()), links(&f.net), "single-0").await.unwrap();
    let caps = std::sync::Arc::new(f.caps);
    let err =
        tg_nix_runner::shaping::follow(service.clone(), ns.clone(), shaper, caps, record.clone()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance single-0: invalid network config: default.loss: -1 is not a percentage (0 to 100)"
    );
    assert_eq!(service.state_count(&ns.state("one")), 1, "the first config's callback was signalled");
    assert_eq!(service.state_count(&ns.state("two")), 0, "the refused config's was not");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&record).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["applied"][0], "class 1:2 htb rate 1000 bytes/s");
    assert_eq!(lines[0]["callback"]["count"], 1);
    assert!(lines[1]["error"].as_str().unwrap().contains("default.loss"), "{}", lines[1]);
}
