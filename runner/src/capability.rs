//! What this host can do for tg-nix's network isolation and shaping, found out by trying it in a
//! throwaway network namespace: root, network namespaces, veth pairs on a bridge, the queueing
//! disciplines shaping needs (htb, tbf, netem) and the u32 classifier.
//!
//! `tg-nix doctor` prints the result ([`Capabilities`] implements `Display` as an aligned table,
//! and `Serialize` for `--json`); the runner can use it to fail early with a clear error instead of
//! half-applying a network configuration. Probing never touches the host's own namespace.

use std::fmt;
use std::io;

use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use serde::Serialize;

use crate::netns::{is_root, rtnl, thread};

/// The qdisc kinds probed, in the order they are reported.
pub const QDISCS: [&str; 3] = ["htb", "tbf", "netem"];
/// The classifier kinds probed.
pub const CLASSIFIERS: [&str; 1] = ["u32"];

/// Something tg-nix may need from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Running with effective uid 0.
    Root,
    /// Creating network namespaces (CAP_SYS_ADMIN).
    NetworkNamespaces,
    /// Creating a veth pair and a bridge and attaching one to the other (CONFIG_VETH, CONFIG_BRIDGE).
    VethBridge,
    /// A queueing discipline kind, e.g. `htb`.
    Qdisc(&'static str),
    /// A traffic classifier kind, e.g. `u32`.
    Classifier(&'static str),
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Root => f.write_str("root"),
            Feature::NetworkNamespaces => f.write_str("network namespaces"),
            Feature::VethBridge => f.write_str("veth + bridge"),
            Feature::Qdisc(kind) => write!(f, "qdisc {kind}"),
            Feature::Classifier(kind) => write!(f, "classifier {kind}"),
        }
    }
}

impl Serialize for Feature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The answer for one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Support {
    Supported,
    /// The host definitely cannot do it (not root, kernel lacks the module, ...).
    Unsupported {
        reason: String,
    },
    /// The probe failed in a way that says nothing about support, or could not run.
    Error {
        reason: String,
    },
}

impl Support {
    pub fn is_supported(&self) -> bool {
        matches!(self, Support::Supported)
    }

    fn label(&self) -> &'static str {
        match self {
            Support::Supported => "supported",
            Support::Unsupported { .. } => "unsupported",
            Support::Error { .. } => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Support::Supported => None,
            Support::Unsupported { reason } | Support::Error { reason } => Some(reason),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub feature: Feature,
    #[serde(flatten)]
    pub support: Support,
}

/// Everything [`probe`] found, in a stable order: root, namespaces, veth + bridge, [`QDISCS`],
/// [`CLASSIFIERS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Capabilities {
    pub checks: Vec<Check>,
}

impl Capabilities {
    /// The answer for `feature`, if it was probed.
    pub fn get(&self, feature: Feature) -> Option<&Support> {
        self.checks.iter().find(|c| c.feature == feature).map(|c| &c.support)
    }

    /// The answer for qdisc `kind` (one of [`QDISCS`]).
    pub fn qdisc(&self, kind: &str) -> Option<&Support> {
        self.checks.iter().find(|c| matches!(c.feature, Feature::Qdisc(k) if k == kind)).map(|c| &c.support)
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.checks.iter().map(|c| c.feature.to_string()).collect();
        let width = names.iter().map(String::len).chain(["CHECK".len()]).max().unwrap_or(0);
        let status_width = "unsupported".len();
        writeln!(f, "{:width$}  {:status_width$}  DETAIL", "CHECK", "STATUS")?;
        for (name, check) in names.iter().zip(&self.checks) {
            match check.support.reason() {
                Some(reason) => writeln!(f, "{name:width$}  {:status_width$}  {reason}", check.support.label())?,
                None => writeln!(f, "{name:width$}  {}", check.support.label())?,
            }
        }
        Ok(())
    }
}

/// Probes the host. Takes a few milliseconds; creates and destroys one network namespace.
pub async fn probe() -> Capabilities {
    let mut checks = vec![Check { feature: Feature::Root, support: root_support() }];
    let (netns, netlink) = match thread::create_netns(None).await {
        Ok(created) => created,
        Err(e) => {
            let support = match e.errno() {
                Some(libc::EPERM | libc::EACCES) => {
                    Support::Unsupported { reason: "permission denied; needs root (CAP_SYS_ADMIN)".into() }
                }
                _ => Support::Error { reason: e.to_string() },
            };
            checks.push(Check { feature: Feature::NetworkNamespaces, support });
            not_probed(&mut checks, "needs a network namespace");
            return Capabilities { checks };
        }
    };
    checks.push(Check { feature: Feature::NetworkNamespaces, support: Support::Supported });
    let handle = &netlink.handle;
    match probe_veth_bridge(handle).await {
        Err(support) => {
            checks.push(Check { feature: Feature::VethBridge, support });
            not_probed(&mut checks, "needs a veth interface");
        }
        Ok(ifindex) => {
            checks.push(Check { feature: Feature::VethBridge, support: Support::Supported });
            for kind in QDISCS {
                checks.push(Check { feature: Feature::Qdisc(kind), support: probe_qdisc(handle, ifindex, kind).await });
            }
            for kind in CLASSIFIERS {
                checks.push(Check { feature: Feature::Classifier(kind), support: probe_u32(handle, ifindex).await });
            }
        }
    }
    netlink.close().await;
    drop(netns);
    Capabilities { checks }
}

fn root_support() -> Support {
    if is_root() {
        Support::Supported
    } else {
        let uid = nix::unistd::geteuid();
        Support::Unsupported { reason: format!("running as uid {uid}; instances share the host network") }
    }
}

/// Adds an Error row for every feature after the ones already checked.
fn not_probed(checks: &mut Vec<Check>, why: &str) {
    let rest =
        [Feature::VethBridge].into_iter().chain(QDISCS.map(Feature::Qdisc)).chain(CLASSIFIERS.map(Feature::Classifier));
    for feature in rest {
        if !checks.iter().any(|c| c.feature == feature) {
            checks.push(Check { feature, support: Support::Error { reason: format!("not probed: {why}") } });
        }
    }
}

/// Creates a bridge and a veth pair with one end on it; returns the other end's index, where the
/// qdisc probes run (a veth, like the `eth1` shaping will configure).
async fn probe_veth_bridge(handle: &rtnetlink::Handle) -> Result<u32, Support> {
    let bridge = rtnl::add_bridge(handle, "probe-br", None).await.map_err(|e| classify(&e, "bridge interfaces"))?;
    rtnl::add_veth(handle, "probe-a", bridge, "probe-b", None, None)
        .await
        .map_err(|e| classify(&e, "veth interfaces"))?;
    rtnl::link_index(handle, "probe-b").await.map_err(|e| Support::Error { reason: format!("probe-b: {e}") })
}

/// Adds a root qdisc of `kind` with valid parameters, then removes it again.
async fn probe_qdisc(handle: &rtnetlink::Handle, ifindex: u32, kind: &'static str) -> Support {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::ROOT;
    message.header.handle = TcHandle { major: 1, minor: 0 };
    message.attributes.push(TcAttribute::Kind(kind.to_string()));
    message.attributes.extend(probe_options(kind));
    let added = rtnl::request_ack(handle, RouteNetlinkMessage::NewQueueDiscipline(message), NLM_F_CREATE | NLM_F_EXCL);
    if let Err(e) = added.await {
        return classify(&e, &format!("the {kind} qdisc"));
    }
    let mut delete = handle.qdisc().del(ifindex as i32);
    delete.message_mut().header.parent = TcHandle::ROOT;
    match delete.execute().await {
        Ok(()) => Support::Supported,
        Err(e) => Support::Error { reason: format!("added, but could not remove it: {e}") },
    }
}

/// Minimal valid parameters per kind, so that a refusal can only mean the kind is missing.
fn probe_options(kind: &str) -> Option<TcAttribute> {
    const TCA_OPTIONS: u16 = 2;
    const TCA_HTB_INIT: u16 = 2;
    const TCA_TBF_PARMS: u16 = 1;
    match kind {
        // struct tc_htb_glob { version = 3, rate2quantum = 10, defcls, debug, direct_pkts }.
        "htb" => {
            let glob = u32_bytes(&[3, 10, 0, 0, 0]);
            Some(TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob))]))
        }
        // struct tc_tbf_qopt { rate, peakrate: tc_ratespec; limit, buffer, mtu }: 1 Mbit/s,
        // 10 kB limit, a 10 ms bucket (in 64 ns ticks).
        "tbf" => {
            let mut qopt = ratespec(125_000);
            qopt.extend(ratespec(0));
            qopt.extend(u32_bytes(&[10_000, 10_000_000 >> 6, 0]));
            Some(TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt))]))
        }
        // netem's options are a bare struct tc_netem_qopt { latency, limit = 1000, loss, gap,
        // duplicate, jitter }, not nested attributes.
        "netem" => Some(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, u32_bytes(&[0, 1000, 0, 0, 0, 0])))),
        _ => None,
    }
}

/// struct tc_ratespec { cell_log: u8, linklayer: u8 = ethernet, overhead: u16, cell_align: i16,
/// mpu: u16, rate: u32 } in native byte order.
fn ratespec(rate: u32) -> Vec<u8> {
    let mut bytes = vec![0, 1, 0, 0, 0, 0, 0, 0];
    bytes.extend(rate.to_ne_bytes());
    bytes
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Adds an ingress qdisc and a match-everything u32 filter on it.
async fn probe_u32(handle: &rtnetlink::Handle, ifindex: u32) -> Support {
    if let Err(e) = handle.qdisc().add(ifindex as i32).ingress().execute().await {
        return Support::Error { reason: format!("the ingress qdisc it attaches to failed: {e}") };
    }
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    // The protocol goes into the message in network byte order (`tc ... protocol all`).
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    let request = handle.traffic_filter(ifindex as i32).add().ingress().priority(1).protocol(protocol);
    let result = match request.u32(&[TcFilterU32Option::Selector(selector)]) {
        Ok(request) => request.execute().await.map_err(crate::netns::netlink_io),
        Err(e) => return Support::Error { reason: e.to_string() },
    };
    match result {
        Ok(()) => Support::Supported,
        Err(e) => classify(&e, "the u32 classifier"),
    }
}

/// What an errno from creating `what` says about support. The kernel answers ENOENT for an unknown
/// qdisc or classifier kind and EOPNOTSUPP for an unknown link kind; EINVAL means it rejected the
/// kind or its parameters, which were valid where this was written.
fn classify(err: &io::Error, what: &str) -> Support {
    let name = match err.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EPERM | libc::EACCES) => {
            return Support::Error { reason: format!("permission denied creating {what}; needs root (CAP_NET_ADMIN)") }
        }
        _ => return Support::Error { reason: format!("creating {what}: {err}") },
    };
    Support::Unsupported { reason: format!("the kernel does not provide {what} ({name})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Capabilities {
        Capabilities {
            checks: vec![
                Check { feature: Feature::Root, support: Support::Supported },
                Check { feature: Feature::NetworkNamespaces, support: Support::Supported },
                Check { feature: Feature::VethBridge, support: Support::Supported },
                Check { feature: Feature::Qdisc("htb"), support: Support::Supported },
                Check {
                    feature: Feature::Qdisc("netem"),
                    support: Support::Unsupported {
                        reason: "the kernel does not provide the netem qdisc (ENOENT)".into(),
                    },
                },
                Check { feature: Feature::Classifier("u32"), support: Support::Error { reason: "boom".into() } },
            ],
        }
    }

    #[test]
    fn renders_an_aligned_table() {
        assert_eq!(
            sample().to_string(),
            "\
CHECK               STATUS       DETAIL
root                supported
network namespaces  supported
veth + bridge       supported
qdisc htb           supported
qdisc netem         unsupported  the kernel does not provide the netem qdisc (ENOENT)
classifier u32      error        boom
"
        );
    }

    #[test]
    fn serializes_flat_rows() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json[0], serde_json::json!({"feature": "root", "status": "supported"}));
        assert_eq!(
            json[4],
            serde_json::json!({
                "feature": "qdisc netem",
                "status": "unsupported",
                "reason": "the kernel does not provide the netem qdisc (ENOENT)"
            })
        );
    }

    #[test]
    fn lookups_find_rows() {
        let caps = sample();
        assert_eq!(caps.qdisc("htb"), Some(&Support::Supported));
        assert!(matches!(caps.qdisc("netem"), Some(Support::Unsupported { .. })));
        assert_eq!(caps.qdisc("tbf"), None);
        assert_eq!(caps.get(Feature::Root), Some(&Support::Supported));
    }

    #[test]
    fn errnos_are_classified() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(matches!(classify(&e(libc::ENOENT), "x"), Support::Unsupported { .. }));
        assert!(matches!(classify(&e(libc::EOPNOTSUPP), "x"), Support::Unsupported { .. }));
        assert!(matches!(classify(&e(libc::EINVAL), "x"), Support::Unsupported { .. }));
        assert!(matches!(classify(&e(libc::EPERM), "x"), Support::Error { .. }));
        assert!(matches!(classify(&e(libc::EBUSY), "x"), Support::Error { .. }));
    }

    #[test]
    fn probe_options_have_the_kernel_struct_sizes() {
        let len = |kind| match probe_options(kind) {
            Some(TcAttribute::Options(opts)) => match &opts[0] {
                TcOption::Other(nla) => rtnetlink::packet_core::Nla::value_len(nla),
                other => panic!("{other:?}"),
            },
            Some(TcAttribute::Other(nla)) => rtnetlink::packet_core::Nla::value_len(&nla),
            other => panic!("{other:?}"),
        };
        assert_eq!(len("htb"), 20); // sizeof(struct tc_htb_glob)
        assert_eq!(len("tbf"), 36); // sizeof(struct tc_tbf_qopt)
        assert_eq!(len("netem"), 24); // sizeof(struct tc_netem_qopt)
    }
}
