//! Applying a [`NetworkConfig`] to one network namespace over netlink: the traffic-control tree
//! on the data link, filter routes, the control link's routing policy, the data address and the
//! data link's state. No `tc` or `ip` processes.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use serde::Serialize;

use super::config::{Filter, LinkShape, NetworkConfig, RoutingPolicy};
use super::{tc, ShapingError};
use crate::capability::{Capabilities, Feature, Support};
use crate::netns::{netlink_io, rtnl, thread, Ipv4Cidr};

/// Where a network namespace is: an open fd (local:exec's instances) or a path such as
/// `/proc/<pid>/ns/net` (a container's, for local:docker).
#[derive(Debug, Clone, Copy)]
pub enum NetnsRef<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

/// The interfaces a config is applied to, inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The data network interface (`eth1`): shaped, filtered, re-addressed, taken down.
    pub data: String,
    /// The control network interface (`eth0`): the routing policy applies here.
    pub control: String,
    /// The data network (TEST_SUBNET); a new `IPv4` must lie in it and gets its prefix.
    pub data_subnet: Ipv4Cidr,
    /// Hosts on the control network that stay reachable under deny_all (the sync service, ...):
    /// each gets a /32 route on the control link before other routes are removed.
    pub keep: Vec<Ipv4Addr>,
}

/// What one apply did, for the record (`network.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// One line per change, in tc/ip notation (`class 1:2 htb rate 125000 bytes/s`).
    pub steps: Vec<String>,
    /// Parts of the config that were accepted and ignored, with why.
    pub ignored: Vec<String>,
    #[serde(serialize_with = "millis")]
    pub took: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The kernel features a config needs, with what needs them. Checked against [`Capabilities`]
/// before anything changes, so a config the host cannot apply leaves the namespace untouched.
pub fn requirements(cfg: &NetworkConfig) -> Vec<(Feature, String)> {
    let mut needs = Vec::new();
    let shaped = cfg.shaped_rules();
    if cfg.default.shapes() || !shaped.is_empty() {
        needs.push((Feature::Qdisc("htb"), "bandwidth and per-rule shaping".to_string()));
    }
    let mut netem_users = Vec::new();
    if cfg.default.needs_netem() {
        netem_users.push(format!("default: {}", cfg.default.netem_summary()));
    }
    for rule in &shaped {
        if rule.shape.needs_netem() {
            netem_users.push(format!("rule {}: {}", rule.subnet, rule.shape.netem_summary()));
        }
    }
    if !netem_users.is_empty() {
        needs.push((Feature::Qdisc("netem"), netem_users.join("; ")));
    }
    if !shaped.is_empty() {
        needs.push((Feature::Classifier("u32"), "per-subnet rules with a shape".to_string()));
    }
    needs
}

/// The kernel module and config option behind a feature, for the fix in an error message.
pub fn kernel_module(feature: Feature) -> (&'static str, &'static str) {
    match feature {
        Feature::Qdisc("htb") => ("sch_htb", "CONFIG_NET_SCH_HTB"),
        Feature::Qdisc("netem") => ("sch_netem", "CONFIG_NET_SCH_NETEM"),
        Feature::Qdisc("tbf") => ("sch_tbf", "CONFIG_NET_SCH_TBF"),
        Feature::Classifier("u32") => ("cls_u32", "CONFIG_NET_CLS_U32"),
        _ => ("", ""),
    }
}

/// Fails with [`ShapingError::Unsupported`] if `caps` lacks something `cfg` needs.
pub fn check_support(instance: &str, cfg: &NetworkConfig, caps: &Capabilities) -> Result<(), ShapingError> {
    for (feature, needed_for) in requirements(cfg) {
        let support = caps.get(feature).cloned().unwrap_or(Support::Error { reason: "not probed".into() });
        if !support.is_supported() {
            let (module, option) = kernel_module(feature);
            return Err(ShapingError::Unsupported(Box::new(super::MissingFeature {
                instance: instance.to_string(),
                feature: feature.to_string(),
                module: module.to_string(),
                option: option.to_string(),
                needed_for,
                detail: support.reason().unwrap_or_default().to_string(),
            })));
        }
    }
    Ok(())
}

/// Applies configs to one namespace, remembering what it changed (the control routes deny_all
/// removed, whether a qdisc tree is installed, the current data address).
pub struct Shaper {
    handle: Handle,
    instance: String,
    links: Links,
    data_index: u32,
    control_index: u32,
    /// The routes deny_all removed from the control link; `None` while allowed.
    denied: Option<Vec<RouteMessage>>,
    tree_installed: bool,
    data_ip: Option<Ipv4Addr>,
    // Keeps a namespace opened by path alive while we work in it.
    _netns: Option<OwnedFd>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper").field("instance", &self.instance).field("links", &self.links).finish()
    }
}

impl Shaper {
    /// Opens a netlink connection inside `netns` and finds the two links. `instance` names the
    /// instance in errors (its hostname).
    pub async fn open(netns: NetnsRef<'_>, links: Links, instance: &str) -> Result<Shaper, ShapingError> {
        let owned = match netns {
            NetnsRef::Fd(_) => None,
            NetnsRef::Path(path) => Some(OwnedFd::from(File::open(path).map_err(|source| {
                let hint = if source.kind() == io::ErrorKind::PermissionDenied {
                    "; shaping enters the namespace and needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
                } else {
                    ""
                };
                ShapingError::Namespace {
                    instance: instance.into(),
                    detail: format!("{}: {source}{hint}", path.display()),
                }
            })?)),
        };
        let fd = match (&owned, netns) {
            (Some(fd), _) => fd.as_fd(),
            (None, NetnsRef::Fd(fd)) => fd,
            (None, NetnsRef::Path(_)) => unreachable!("opened above"),
        };
        let handle = thread::open_netlink(fd, None)
            .await
            .map_err(|e| ShapingError::Namespace { instance: instance.into(), detail: e.to_string() })?
            .into_handle();
        let fail = |step: String| {
            let instance = instance.to_string();
            move |source| ShapingError::Netlink { instance, step, source }
        };
        let data_index =
            rtnl::link_index(&handle, &links.data).await.map_err(fail(format!("looking up {}", links.data)))?;
        let control_index =
            rtnl::link_index(&handle, &links.control).await.map_err(fail(format!("looking up {}", links.control)))?;
        let mut shaper = Shaper {
            handle,
            instance: instance.to_string(),
            links,
            data_index,
            control_index,
            denied: None,
            tree_installed: false,
            data_ip: None,
            _netns: owned,
        };
        shaper.data_ip = shaper.current_data_ip().await?;
        Ok(shaper)
    }

    /// The instance this shaper works for.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The data link's current IPv4 address.
    pub fn data_ip(&self) -> Option<Ipv4Addr> {
        self.data_ip
    }

    fn fail(&self, step: impl Into<String>) -> impl FnOnce(io::Error) -> ShapingError + '_ {
        let step = step.into();
        move |source| ShapingError::Netlink { instance: self.instance.clone(), step, source }
    }

    /// Applies `cfg`: checks it against `caps` and the links first (nothing changes if that
    /// fails), then the data address, the tc tree, the filter routes, the routing policy and
    /// finally the data link's state.
    pub async fn apply(&mut self, cfg: &NetworkConfig, caps: &Capabilities) -> Result<Applied, ShapingError> {
        let started = Instant::now();
        check_support(&self.instance, cfg, caps)?;
        if let Some(ipv4) = cfg.ipv4 {
            if !self.links.data_subnet.contains(ipv4.addr)
                || self
                    .links
                    .data_subnet
                    .host(ipv4.addr.to_bits() - self.links.data_subnet.network().to_bits())
                    .is_none()
            {
                return Err(ShapingError::Config {
                    instance: self.instance.clone(),
                    source: super::ConfigError {
                        key: "IPv4".into(),
                        problem: format!(
                            "{} is not a host address of the data network {}",
                            ipv4.addr, self.links.data_subnet
                        ),
                    },
                });
            }
        }
        let mut steps = Vec::new();
        let mut ignored = Vec::new();
        if cfg.ipv6.is_some() {
            ignored.push("IPv6: not supported (Testground ignored it too)".to_string());
        }
        if cfg.default.filter != Filter::Accept {
            ignored.push("default.filter: filters apply per rule subnet (Testground ignored it too)".to_string());
        }
        if let Some(ipv4) = cfg.ipv4 {
            if Some(ipv4.addr) != self.data_ip {
                self.readdress(ipv4.addr).await?;
                steps.push(format!("address {}/{} on {}", ipv4.addr, self.links.data_subnet.prefix(), self.links.data));
            }
        }
        self.shape(cfg, &mut steps).await?;
        for rule in &cfg.rules {
            self.filter(rule.subnet, rule.shape.filter, &mut steps).await?;
        }
        self.routing_policy(cfg.routing_policy, &mut steps).await?;
        let link = LinkUnspec::new_with_index(self.data_index);
        let message = if cfg.enable { link.up().build() } else { link.down().build() };
        let state = if cfg.enable { "up" } else { "down" };
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(netlink_io)
            .map_err(self.fail(format!("setting {} {state}", self.links.data)))?;
        steps.push(format!("link {} {state}", self.links.data));
        Ok(Applied { steps, ignored, took: started.elapsed() })
    }

    async fn current_data_ip(&self) -> Result<Option<Ipv4Addr>, ShapingError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(self.data_index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(netlink_io).map_err(self.fail("listing addresses"))? {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    }

    /// Replaces the data link's IPv4 address (Testground reconnects the container with the new
    /// address; here the address is swapped in place, and the data network's prefix kept).
    async fn readdress(&mut self, addr: Ipv4Addr) -> Result<(), ShapingError> {
        let prefix = self.links.data_subnet.prefix();
        // The old address goes first: removing a primary address also removes the secondaries
        // in its subnet, which the new one would be.
        let mut old = Vec::new();
        let mut addrs = self.handle.address().get().set_link_index_filter(self.data_index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(netlink_io).map_err(self.fail("listing addresses"))? {
            if msg.header.family == AddressFamily::Inet && msg.header.index == self.data_index {
                old.push(msg);
            }
        }
        for msg in old {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(netlink_io)
                .map_err(self.fail(format!("removing the old address from {}", self.links.data)))?;
        }
        let step = format!("adding {addr}/{prefix} to {}", self.links.data);
        self.handle
            .address()
            .add(self.data_index, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_io)
            .map_err(self.fail(step))?;
        self.data_ip = Some(addr);
        Ok(())
    }

    /// Rebuilds the tc tree on the data link from scratch (or removes it when nothing is shaped:
    /// the link's default queue is as unlimited as HTB at the maximum rate).
    async fn shape(&mut self, cfg: &NetworkConfig, steps: &mut Vec<String>) -> Result<(), ShapingError> {
        let ifindex = self.data_index;
        let shaped = cfg.shaped_rules();
        if self.tree_installed {
            let mut delete = self.handle.qdisc().del(ifindex as i32);
            delete.message_mut().header.parent = TcHandle::ROOT;
            match delete.execute().await.map_err(netlink_io) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
                Err(e) => return Err(self.fail(format!("removing the qdiscs of {}", self.links.data))(e)),
            }
            self.tree_installed = false;
        }
        if !cfg.default.shapes() && shaped.is_empty() {
            return Ok(());
        }
        let create = NLM_F_CREATE | NLM_F_EXCL;
        self.tc(RouteNetlinkMessage::NewQueueDiscipline(tc::htb_root(ifindex)), create, "qdisc 1: root htb default 2")
            .await?;
        self.tree_installed = true;
        self.class(tc::DEFAULT_MINOR, &cfg.default, steps).await?;
        for (i, rule) in shaped.iter().enumerate() {
            let minor = tc::RULE_MINOR_BASE + i as u16;
            self.class(minor, &rule.shape, steps).await?;
            let prio = 1 + i as u16;
            let what =
                format!("filter prio {prio} u32 match ip dst {} flowid {}", rule.subnet, tc::describe_class(minor));
            let filter = tc::u32_dst_filter(ifindex, prio, rule.subnet, minor);
            self.tc(RouteNetlinkMessage::NewTrafficFilter(filter), create, &what).await?;
            steps.push(what);
        }
        Ok(())
    }

    /// An HTB class and, if the shape needs it, a netem qdisc below it.
    async fn class(&mut self, minor: u16, shape: &LinkShape, steps: &mut Vec<String>) -> Result<(), ShapingError> {
        let rate = tc::htb_rate(shape.bandwidth);
        let what = if shape.bandwidth == 0 {
            format!("class {} htb rate max", tc::describe_class(minor))
        } else {
            format!("class {} htb rate {rate} bytes/s", tc::describe_class(minor))
        };
        let class = tc::htb_class(self.data_index, minor, rate);
        self.tc(RouteNetlinkMessage::NewTrafficClass(class), NLM_F_CREATE | NLM_F_EXCL, &what).await?;
        steps.push(what);
        if shape.needs_netem() {
            let what = format!("qdisc {minor:x}: netem {}", shape.netem_summary());
            let qdisc = tc::netem(self.data_index, minor, minor, shape);
            self.tc(RouteNetlinkMessage::NewQueueDiscipline(qdisc), NLM_F_CREATE | NLM_F_EXCL, &what).await?;
            steps.push(what);
        }
        Ok(())
    }

    async fn tc(&self, message: RouteNetlinkMessage, flags: u16, what: &str) -> Result<(), ShapingError> {
        rtnl::request_ack(&self.handle, message, flags)
            .await
            .map_err(self.fail(format!("{what} on {}", self.links.data)))
    }

    /// Drop → blackhole route, Reject → prohibit route, Accept → neither (compat §3.3).
    async fn filter(&self, subnet: Ipv4Cidr, filter: Filter, steps: &mut Vec<String>) -> Result<(), ShapingError> {
        let route = |kind| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.network(), subnet.prefix())
                .kind(kind)
                .build()
        };
        match filter {
            Filter::Drop | Filter::Reject => {
                let (kind, name) = if filter == Filter::Drop {
                    (RouteType::BlackHole, "blackhole")
                } else {
                    (RouteType::Prohibit, "prohibit")
                };
                // Replacing swaps a route of the other kind for the same destination.
                self.handle
                    .route()
                    .add(route(kind))
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_io)
                    .map_err(self.fail(format!("adding route {name} {subnet}")))?;
                steps.push(format!("route {name} {subnet}"));
            }
            Filter::Accept => {
                let mut removed = false;
                for kind in [RouteType::BlackHole, RouteType::Prohibit] {
                    match self.handle.route().del(route(kind)).execute().await.map_err(netlink_io) {
                        Ok(()) => removed = true,
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {}
                        Err(e) => return Err(self.fail(format!("removing filter routes for {subnet}"))(e)),
                    }
                }
                if removed {
                    steps.push(format!("route accept {subnet} (filter routes removed)"));
                }
            }
        }
        Ok(())
    }

    /// deny_all: keeps /32 routes to the [`Links::keep`] hosts and removes every other route of
    /// the main table on the control link, remembering them; allow_all puts them back.
    async fn routing_policy(&mut self, policy: RoutingPolicy, steps: &mut Vec<String>) -> Result<(), ShapingError> {
        match (policy, self.denied.is_some()) {
            (RoutingPolicy::DenyAll, false) => {
                for host in self.links.keep.clone() {
                    let route = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(host, 32)
                        .output_interface(self.control_index)
                        .scope(RouteScope::Link)
                        .build();
                    self.handle
                        .route()
                        .add(route)
                        .replace()
                        .execute()
                        .await
                        .map_err(netlink_io)
                        .map_err(self.fail(format!("adding a host route to {host}")))?;
                }
                let mut removed = Vec::new();
                for route in self.control_routes().await? {
                    if self.is_kept(&route) {
                        continue;
                    }
                    self.handle
                        .route()
                        .del(route.clone())
                        .execute()
                        .await
                        .map_err(netlink_io)
                        .map_err(self.fail(format!("removing a route from {}", self.links.control)))?;
                    removed.push(route);
                }
                steps.push(format!(
                    "deny_all: {} route(s) removed from {}, kept {:?}",
                    removed.len(),
                    self.links.control,
                    self.links.keep
                ));
                self.denied = Some(removed);
            }
            (RoutingPolicy::AllowAll, true) => {
                let routes = self.denied.take().unwrap_or_default();
                let count = routes.len();
                for route in routes {
                    let message = RouteNetlinkMessage::NewRoute(route);
                    rtnl::request_ack(&self.handle, message, NLM_F_CREATE | NLM_F_REPLACE)
                        .await
                        .map_err(self.fail(format!("restoring a route on {}", self.links.control)))?;
                }
                steps.push(format!("allow_all: {count} route(s) restored on {}", self.links.control));
            }
            _ => {}
        }
        Ok(())
    }

    fn is_kept(&self, route: &RouteMessage) -> bool {
        route.header.destination_prefix_length == 32
            && route.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(ip))
                    if self.links.keep.contains(ip))
            })
    }

    /// The main table's IPv4 unicast routes through the control link.
    async fn control_routes(&self) -> Result<Vec<RouteMessage>, ShapingError> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        let mut out = Vec::new();
        while let Some(route) = routes.try_next().await.map_err(netlink_io).map_err(self.fail("listing routes"))? {
            let main = route.header.table == RouteHeader::RT_TABLE_MAIN
                || route
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
            let via_control =
                route.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == self.control_index));
            if main && via_control && route.header.kind == RouteType::Unicast {
                out.push(route);
            }
        }
        Ok(out)
    }
}

/// One-shot apply: opens the namespace, applies `cfg`, closes. A runner that applies several
/// configs to the same namespace keeps a [`Shaper`] instead (it remembers what deny_all removed).
pub async fn apply(
    netns: NetnsRef<'_>,
    links: &Links,
    cfg: &NetworkConfig,
    caps: &Capabilities,
    instance: &str,
) -> Result<Applied, ShapingError> {
    // Refuse before opening anything, so an unsupported config costs nothing.
    check_support(instance, cfg, caps)?;
    let mut shaper = Shaper::open(netns, links.clone(), instance).await?;
    shaper.apply(cfg, caps).await
}
