//! Network isolation for a run: a private hub namespace with the control and data bridges, and one
//! network namespace per instance wired to both (Testground's eth0/eth1 contract, compat §3.3, §6).
//!
//! ```text
//!  hub netns (one per run)                        instance netns (one per instance)
//!  lo                                             lo
//!  tg-ctl  192.18.0.1/16 ── c{i} ═══ veth ═══ eth0  192.18.x.y/16   (control)
//!  tg-data (no address)  ── d{i} ═══ veth ═══ eth1  TEST_SUBNET + i+2 (data)
//! ```
//!
//! Instance `i` gets host number `i + 2` in both networks and MAC addresses derived from its IPs
//! ([`mac_for`]), so the control network runs on static neighbour entries rather than ARP, and
//! the data network on entries installed in advance ([`HubConfig::with_instances`]). The
//! sync service listens on 192.18.0.1:5050 inside the hub ([`Hub::bind_tcp`]); instances resolve
//! `testground-sync-service` to it through their own /etc/hosts ([`hosts_file_contents`],
//! [`InstanceNet::configure_command`]). Interfaces other than `lo` get no IPv6 (see
//! `thread::disable_ipv6_on_new_interfaces` for why).
//! Instances have no default route, which is Testground's initial `deny_all` policy: they reach
//! the control network and the data subnet, nothing else.
//!
//! Nothing is ever created in the host's namespace. Both kinds of namespace are anonymous and held
//! by file descriptors, so concurrent runs cannot collide, the host's firewall (Docker's FORWARD
//! DROP, br_netfilter) does not see the traffic, and nothing is routable to or from the host's real
//! interfaces. Teardown is dropping: once the fds, the netlink sockets and the processes inside
//! are gone, the kernel destroys the namespaces with every bridge and veth in them.
//!
//! A Linux bridge takes at most 1023 ports, so instances beyond the first [`PORTS_PER_SEGMENT`]
//! hang off extra bridges (`tg-ctl{s}`, `tg-data{s}`) chained to the first by veth trunks; it is
//! one layer-2 network either way.
//!
//! This module must not shell out (`ip`, `tc`); it speaks netlink.

mod cidr;
mod error;
pub(crate) mod rtnl;
mod spawn;
pub(crate) mod thread;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

pub use cidr::{CidrError, Ipv4Cidr};
pub(crate) use error::netlink_io;
pub use error::{NetError, Step};

use thread::Netlink;

/// Testground's control network (the `testground-control` Docker network). The hub is private to
/// the run, so this cannot collide with anything on the host and is not configurable.
pub const CONTROL_SUBNET: Ipv4Cidr = Ipv4Cidr::literal(Ipv4Addr::new(192, 18, 0, 0), 16);
/// The hub's address on the control network, where the sync service listens.
pub const CONTROL_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 18, 0, 1);
/// Testground's first data network, the TEST_SUBNET of a run that does not choose one.
pub const DEFAULT_DATA_SUBNET: Ipv4Cidr = Ipv4Cidr::literal(Ipv4Addr::new(16, 0, 0, 0), 16);
/// The control bridge in the hub.
pub const CONTROL_BRIDGE: &str = "tg-ctl";
/// The data bridge in the hub.
pub const DATA_BRIDGE: &str = "tg-data";
/// The instance's interface on the control network.
pub const CONTROL_IFNAME: &str = "eth0";
/// The instance's interface on the data network (plans hard-code it).
pub const DATA_IFNAME: &str = "eth1";
/// The names the infrastructure services have in Testground; all resolve to [`CONTROL_GATEWAY`].
pub const INFRA_HOSTNAMES: [&str; 3] = ["testground-sync-service", "testground-redis", "testground-influxdb"];
/// Instance ports per bridge; a Linux bridge holds 1023 ports, and the first one also carries
/// the trunks to the others.
pub const PORTS_PER_SEGMENT: u32 = 1000;
/// Bridges per network: the first plus as many as its spare ports can trunk to.
const SEGMENTS: u32 = 24;
/// The most instances one hub can hold.
pub const MAX_INSTANCES: u32 = PORTS_PER_SEGMENT * SEGMENTS;
// The first bridge holds its own instances plus one trunk per other segment, and a Linux bridge
// has at most 1023 ports (port numbers are 10 bits, 0 is reserved).
const _: () = assert!(PORTS_PER_SEGMENT + SEGMENTS - 1 <= 1023);
/// Instance `i` is host `i + 2`: host 1 is the hub (the gateway), as on Docker's networks.
const HOST_OFFSET: u32 = 2;
/// The largest run whose data-network neighbour entries are installed in advance. A run of N
/// instances costs N × (N − 1) entries of about 0.5 KiB of kernel memory each (measured: 3000
/// entries, 1.5 MiB), so 128 MiB at this limit; larger runs fall back to ARP (see `mac_for`).
pub const MAX_PRESEEDED_INSTANCES: u32 = 512;
/// Neighbour requests kept in flight on one netlink socket while seeding an instance.
const NEIGHBOUR_REQUESTS_IN_FLIGHT: usize = 64;

/// The MAC address of the interface holding `ip`: 02:42 followed by the address, as Docker does.
///
/// Knowing every MAC in advance lets the hub and the instances use neighbour entries installed by
/// tg-nix instead of ARP. That matters at scale: the kernel keeps one ARP cache for *all*
/// namespaces together and caps it at `net.ipv4.neigh.default.gc_thresh3` (1024 by default,
/// host-wide), counting every entry ARP creates in any namespace. Entries that are permanent or
/// marked externally learned (`NTF_EXT_LEARNED`) do not count.
///
/// - Control network: permanent entries both ways (instance → hub, hub → instance). With ARP,
///   each instance talking to the sync service costs two entries; measured with 1100 instances
///   connecting at once: "neighbor table overflow" and 288 instances unable to connect.
/// - Data network: every instance talking to every other costs N × (N − 1) entries, 2450 for 50
///   instances; measured with ping-rust at 50 instances: "neighbor table overflow" in dmesg and
///   every instance failing with "No route to host" or dial timeouts (10 and 20 instances, 90 and
///   380 entries, passed). So each instance gets an externally learned entry for every other
///   instance of the run ([`HubConfig::with_instances`]), in state STALE so that ARP still
///   corrects it if a peer's address moves (a NetworkConfig's `IPv4` keeps the link's MAC).
///   Beyond [`MAX_PRESEEDED_INSTANCES`] the data network uses plain ARP and that cap applies.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Whether this process runs with effective uid 0 (what namespace isolation needs).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The /etc/hosts an instance sees: the infrastructure names on the hub, its own name on its
/// control address.
pub fn hosts_file_contents(hostname: &str, control_ip: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {CONTROL_GATEWAY}\t{}\n\
         {control_ip}\t{hostname}\n",
        INFRA_HOSTNAMES.join(" ")
    )
}

/// How to build a run's hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// The data network (TEST_SUBNET); it must not overlap [`CONTROL_SUBNET`].
    pub data_subnet: Ipv4Cidr,
    /// How many instances the run has (indexes `0..instances`); see [`HubConfig::with_instances`].
    pub instances: u32,
}

impl HubConfig {
    /// A hub for `data_subnet` whose data network relies on ARP alone (fine for a few instances;
    /// a run should say its size with [`HubConfig::with_instances`]).
    pub fn new(data_subnet: Ipv4Cidr) -> HubConfig {
        HubConfig { data_subnet, instances: 0 }
    }

    /// Says how many instances the run has (indexes `0..instances`): each instance then gets a
    /// data-network neighbour entry for every other one when it is added, so that all-to-all
    /// traffic does not depend on the host-wide ARP cache (see [`mac_for`]). Ignored beyond
    /// [`MAX_PRESEEDED_INSTANCES`]. Instances added with an index outside the range still work,
    /// through ARP.
    pub fn with_instances(self, instances: u32) -> HubConfig {
        HubConfig { instances, ..self }
    }
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig::new(DEFAULT_DATA_SUBNET)
    }
}

/// The indexes of one segment's control and data bridges in the hub.
#[derive(Debug, Clone, Copy)]
struct Segment {
    control: u32,
    data: u32,
}

/// A run's private hub namespace with its control and data bridges.
///
/// Dropping it (or [`Hub::destroy`]) releases the namespace; the kernel removes it once no socket
/// (such as a [`Hub::bind_tcp`] listener) or process still uses it. Its bridges and veth ends go
/// with it, and a veth never outlives its peer, so keep the hub until the instances are done:
/// without it they lose `eth0` and `eth1`.
pub struct Hub {
    netns: OwnedFd,
    netlink: Netlink,
    data_subnet: Ipv4Cidr,
    /// Instances `0..preseeded` get each other's data-network neighbour entries.
    preseeded: u32,
    /// Segment 0: `tg-ctl` (which holds the gateway address) and `tg-data`.
    first: Segment,
    /// Segments 1.., each created by the first instance that needs it.
    extra: Vec<OnceCell<Segment>>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("netns", &self.netns)
            .field("data_subnet", &self.data_subnet)
            .field("preseeded", &self.preseeded)
            .field("segments", &(1 + self.extra.iter().filter(|s| s.initialized()).count()))
            .finish()
    }
}

impl Hub {
    /// Creates the hub namespace with `lo` up, the control bridge with [`CONTROL_GATEWAY`]/16 and
    /// the data bridge without an address.
    pub async fn create(config: HubConfig) -> Result<Hub, NetError> {
        if config.data_subnet.overlaps(&CONTROL_SUBNET) {
            return Err(NetError::SubnetOverlap { data: config.data_subnet, control: CONTROL_SUBNET });
        }
        let (netns, netlink) = thread::create_netns(None).await?;
        let handle = &netlink.handle;
        let fail = |step, e| NetError::at(step, None, e);
        rtnl::set_up(handle, rtnl::LOOPBACK_INDEX).await.map_err(|e| fail(Step::SetUp { link: "lo".into() }, e))?;
        let control = rtnl::add_bridge(handle, CONTROL_BRIDGE, Some(mac_for(CONTROL_GATEWAY)))
            .await
            .map_err(|e| fail(Step::AddBridge { name: CONTROL_BRIDGE.into() }, e))?;
        rtnl::add_address(handle, control, CONTROL_GATEWAY, CONTROL_SUBNET.prefix()).await.map_err(|e| {
            let address = format!("{CONTROL_GATEWAY}/{}", CONTROL_SUBNET.prefix());
            fail(Step::AddAddress { link: CONTROL_BRIDGE.into(), address }, e)
        })?;
        let data = rtnl::add_bridge(handle, DATA_BRIDGE, None)
            .await
            .map_err(|e| fail(Step::AddBridge { name: DATA_BRIDGE.into() }, e))?;
        let extra = (1..SEGMENTS).map(|_| OnceCell::new()).collect();
        let preseeded = if config.instances <= MAX_PRESEEDED_INSTANCES {
            config.instances
        } else {
            tracing::warn!(
                instances = config.instances,
                limit = MAX_PRESEEDED_INSTANCES,
                "the data network relies on ARP for this many instances: the host's ARP cache \
                 (net.ipv4.neigh.default.gc_thresh3, shared by every namespace) must hold every pair \
                 of instances that talk, or they fail with \"No route to host\"; raise it on the host \
                 if they do"
            );
            0
        };
        Ok(Hub { netns, netlink, data_subnet: config.data_subnet, preseeded, first: Segment { control, data }, extra })
    }

    /// The hub's address on the control network (where the sync service belongs).
    pub fn control_gateway(&self) -> Ipv4Addr {
        CONTROL_GATEWAY
    }

    /// The data network (TEST_SUBNET).
    pub fn data_subnet(&self) -> Ipv4Cidr {
        self.data_subnet
    }

    /// The hub namespace, e.g. to setns() into it.
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Binds a non-blocking TCP listener inside the hub (e.g. on 192.18.0.1:5050). The listener
    /// works from any thread; while it is open, it keeps the hub namespace alive.
    ///
    /// This blocks for the time of a thread spawn (tens of microseconds).
    pub fn bind_tcp(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        thread::run_in_netns(self.netns.as_fd(), || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
    }

    /// Creates instance `index`'s namespace and wires it to both networks: `eth0` with its control
    /// address, `eth1` with its data address, `lo` up, no default route, and on `eth1` a neighbour
    /// entry for each of the run's other instances (see [`HubConfig::with_instances`]).
    ///
    /// Indexes are global across the run's groups and must be unique among live instances. Calls
    /// may run concurrently. If it fails, nothing is left behind: the half-made namespace vanishes
    /// with its veths.
    pub async fn add_instance(&self, index: u32) -> Result<InstanceNet, NetError> {
        let host = index.checked_add(HOST_OFFSET).ok_or(NetError::TooManyInstances { index, max: MAX_INSTANCES })?;
        let control_ip =
            CONTROL_SUBNET.host(host).ok_or(NetError::SubnetExhausted { subnet: CONTROL_SUBNET, index, host })?;
        let data_ip =
            self.data_subnet.host(host).ok_or(NetError::SubnetExhausted { subnet: self.data_subnet, index, host })?;
        let segment = self.segment(index).await?;
        let (netns, netlink) = thread::create_netns(Some(index)).await?;
        let wired = self.wire_instance(index, &netns, &netlink.handle, segment, control_ip, data_ip).await;
        netlink.close().await;
        wired?;
        Ok(InstanceNet { index, control_ip, data_ip, data_subnet: self.data_subnet, netns: Arc::new(netns) })
    }

    async fn wire_instance(
        &self,
        index: u32,
        netns: &OwnedFd,
        inside: &rtnetlink::Handle,
        segment: Segment,
        control_ip: Ipv4Addr,
        data_ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        let fail = |step, e| NetError::at(step, Some(index), e);
        let links = [
            (format!("c{index}"), segment.control, CONTROL_IFNAME, control_ip, CONTROL_SUBNET.prefix()),
            (format!("d{index}"), segment.data, DATA_IFNAME, data_ip, self.data_subnet.prefix()),
        ];
        for (name, bridge, peer, ip, _) in &links {
            rtnl::add_veth(&self.netlink.handle, name, *bridge, peer, Some(mac_for(*ip)), Some(netns.as_fd()))
                .await
                .map_err(|e| fail(Step::AddVeth { name: name.clone(), peer: peer.to_string() }, e))?;
        }
        rtnl::set_up(inside, rtnl::LOOPBACK_INDEX).await.map_err(|e| fail(Step::SetUp { link: "lo".into() }, e))?;
        let (mut eth0, mut eth1) = (0, 0);
        for (_, _, peer, ip, prefix) in links {
            let link =
                rtnl::link_index(inside, peer).await.map_err(|e| fail(Step::FindLink { name: peer.into() }, e))?;
            rtnl::add_address(inside, link, ip, prefix)
                .await
                .map_err(|e| fail(Step::AddAddress { link: peer.into(), address: format!("{ip}/{prefix}") }, e))?;
            rtnl::set_up(inside, link).await.map_err(|e| fail(Step::SetUp { link: peer.into() }, e))?;
            if peer == CONTROL_IFNAME {
                eth0 = link;
            } else {
                eth1 = link;
            }
        }
        // Static neighbour entries on the control network, both ways (see `mac_for`).
        let gateway = CONTROL_GATEWAY;
        rtnl::add_neighbour(inside, eth0, gateway, mac_for(gateway))
            .await
            .map_err(|e| fail(Step::AddNeighbour { link: CONTROL_IFNAME.into(), address: gateway.to_string() }, e))?;
        rtnl::add_neighbour(&self.netlink.handle, self.first.control, control_ip, mac_for(control_ip)).await.map_err(
            |e| fail(Step::AddNeighbour { link: CONTROL_BRIDGE.into(), address: control_ip.to_string() }, e),
        )?;
        self.seed_data_neighbours(inside, eth1, data_ip)
            .await
            .map_err(|(ip, e)| fail(Step::AddNeighbour { link: DATA_IFNAME.into(), address: ip.to_string() }, e))
    }

    /// Gives the instance owning `own` on `eth1` an externally learned neighbour entry for every
    /// other instance of the run (see `mac_for`), several requests at a time.
    async fn seed_data_neighbours(
        &self,
        inside: &rtnetlink::Handle,
        eth1: u32,
        own: Ipv4Addr,
    ) -> Result<(), (Ipv4Addr, io::Error)> {
        let peers = (0..self.preseeded)
            .filter_map(|i| self.data_subnet.host(i + HOST_OFFSET))
            .filter(move |ip| *ip != own)
            .map(|ip| (ip, mac_for(ip)));
        add_learned_neighbours(inside, eth1, peers).await
    }

    /// The bridges instance `index` plugs into, creating its segment if it is the first there.
    async fn segment(&self, index: u32) -> Result<Segment, NetError> {
        let s = index / PORTS_PER_SEGMENT;
        if s == 0 {
            return Ok(self.first);
        }
        let cell = self.extra.get(s as usize - 1).ok_or(NetError::TooManyInstances { index, max: MAX_INSTANCES })?;
        cell.get_or_try_init(|| self.add_segment(s, index)).await.copied()
    }

    /// Creates segment `s` (> 0): a control and a data bridge, each trunked to the first one.
    async fn add_segment(&self, s: u32, index: u32) -> Result<Segment, NetError> {
        let control = self.add_leaf_bridge(&format!("{CONTROL_BRIDGE}{s}"), self.first.control, index).await?;
        let data = self.add_leaf_bridge(&format!("{DATA_BRIDGE}{s}"), self.first.data, index).await?;
        Ok(Segment { control, data })
    }

    /// Adds bridge `name` and a veth trunk `{name}-r` (on `root`) to `{name}-l` (on the new bridge).
    async fn add_leaf_bridge(&self, name: &str, root: u32, index: u32) -> Result<u32, NetError> {
        let handle = &self.netlink.handle;
        let fail = |step, e| NetError::at(step, Some(index), e);
        let bridge =
            rtnl::add_bridge(handle, name, None).await.map_err(|e| fail(Step::AddBridge { name: name.into() }, e))?;
        let (up, down) = (format!("{name}-r"), format!("{name}-l"));
        rtnl::add_veth(handle, &up, root, &down, None, None)
            .await
            .map_err(|e| fail(Step::AddVeth { name: up.clone(), peer: down.clone() }, e))?;
        let link = rtnl::link_index(handle, &down).await.map_err(|e| fail(Step::FindLink { name: down.clone() }, e))?;
        rtnl::attach_up(handle, link, bridge)
            .await
            .map_err(|e| fail(Step::AttachToBridge { link: down.clone(), bridge: name.into() }, e))?;
        Ok(bridge)
    }

    /// Closes the hub's netlink socket and its namespace fd, waiting for the socket to be gone.
    /// The namespace disappears once any listener bound in it is closed too.
    pub async fn destroy(self) {
        let Hub { netns, netlink, .. } = self;
        netlink.close().await;
        drop(netns);
    }
}

/// Installs on interface `link` of namespace `netns` an externally learned neighbour entry (state
/// STALE, see [`mac_for`]) for each `(address, MAC)` of `peers`, replacing any entry there.
///
/// For namespaces tg-nix did not wire itself, such as a Docker container's (open
/// `/proc/<pid>/ns/net`): their data network shares the host-wide ARP cache cap too. The MACs
/// must be right (Docker 20.10 derives them from the address like [`mac_for`] unless told
/// otherwise); a wrong one costs some seconds of ARP probing before the kernel corrects it.
pub async fn seed_neighbours(
    netns: BorrowedFd<'_>,
    link: &str,
    peers: impl IntoIterator<Item = (Ipv4Addr, [u8; 6])>,
) -> Result<(), NetError> {
    let netlink = thread::open_netlink(netns, None).await?;
    let seeded = async {
        let handle = &netlink.handle;
        let index = rtnl::link_index(handle, link)
            .await
            .map_err(|e| NetError::at(Step::FindLink { name: link.into() }, None, e))?;
        add_learned_neighbours(handle, index, peers)
            .await
            .map_err(|(ip, e)| NetError::at(Step::AddNeighbour { link: link.into(), address: ip.to_string() }, None, e))
    }
    .await;
    netlink.close().await;
    seeded
}

/// [`rtnl::add_learned_neighbour`] for each of `peers`, several requests at a time; the first
/// failure names its address.
async fn add_learned_neighbours(
    handle: &rtnetlink::Handle,
    index: u32,
    peers: impl IntoIterator<Item = (Ipv4Addr, [u8; 6])>,
) -> Result<(), (Ipv4Addr, io::Error)> {
    let requests = peers
        .into_iter()
        .map(|(ip, mac)| async move { rtnl::add_learned_neighbour(handle, index, ip, mac).await.map_err(|e| (ip, e)) });
    futures::stream::iter(requests)
        .buffer_unordered(NEIGHBOUR_REQUESTS_IN_FLIGHT)
        .try_for_each(|()| futures::future::ready(Ok(())))
        .await
}

/// One instance's network namespace, wired to the hub. Dropping it releases the namespace; the
/// kernel removes it (and its veths, on both ends) once no process or socket still uses it.
#[derive(Debug)]
pub struct InstanceNet {
    /// The global instance index this was created for.
    pub index: u32,
    /// `eth0`'s address on [`CONTROL_SUBNET`].
    pub control_ip: Ipv4Addr,
    /// `eth1`'s address on the data subnet.
    pub data_ip: Ipv4Addr,
    /// The data subnet (TEST_SUBNET) `data_ip` belongs to.
    pub data_subnet: Ipv4Cidr,
    netns: Arc<OwnedFd>,
}

impl InstanceNet {
    /// The instance's network namespace.
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Makes `cmd` start inside this instance: in its network namespace, in new mount and UTS
    /// namespaces with `hosts_file` bind-mounted over /etc/hosts (see [`hosts_file_contents`]) and
    /// `hostname` set, in a process group of its own (signal `-pid` to reach everything it starts),
    /// and with SIGKILL as its parent-death signal so that it dies with tg-nix.
    ///
    /// Spawn `cmd` from an async task, not from `spawn_blocking`: the parent-death signal fires when
    /// the spawning *thread* exits, and blocking-pool threads exit when idle. `cmd` keeps the
    /// namespace alive until it is dropped. A `hostname` or path with a NUL byte makes the spawn
    /// fail with EINVAL; so does a hostname longer than 64 bytes.
    pub fn configure_command(&self, cmd: &mut tokio::process::Command, hostname: &str, hosts_file: &Path) {
        spawn::configure(cmd, Arc::clone(&self.netns), hostname, hosts_file);
    }

    /// A netlink handle inside the instance's namespace (for shaping `eth1`). Its connection, and
    /// with it a reference to the namespace, lives until the handle and its clones are dropped.
    pub async fn netlink(&self) -> Result<rtnetlink::Handle, NetError> {
        Ok(thread::open_netlink(self.netns.as_fd(), Some(self.index)).await?.into_handle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_maps_infrastructure_to_the_hub() {
        let hosts = hosts_file_contents("single-0", Ipv4Addr::new(192, 18, 0, 2));
        assert_eq!(
            hosts,
            "127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             192.18.0.1\ttestground-sync-service testground-redis testground-influxdb\n\
             192.18.0.2\tsingle-0\n"
        );
    }

    #[test]
    fn macs_are_local_unicast_and_follow_the_address() {
        let mac = mac_for(Ipv4Addr::new(192, 18, 1, 7));
        assert_eq!(mac, [0x02, 0x42, 192, 18, 1, 7]);
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn constants_agree() {
        assert_eq!(CONTROL_SUBNET.host(1), Some(CONTROL_GATEWAY));
        assert_eq!(CONTROL_SUBNET.to_string(), "192.18.0.0/16");
        assert_eq!(DEFAULT_DATA_SUBNET.to_string(), "16.0.0.0/16");
        // Every hub-side name must fit IFNAMSIZ (15 characters).
        let longest = [
            format!("c{}", MAX_INSTANCES - 1),
            format!("{DATA_BRIDGE}{}-r", SEGMENTS - 1),
            format!("{CONTROL_BRIDGE}{}-l", SEGMENTS - 1),
        ];
        assert!(longest.iter().all(|n| n.len() <= 15), "{longest:?}");
        // The control network has room for every instance.
        assert!(CONTROL_SUBNET.host(MAX_INSTANCES - 1 + HOST_OFFSET).is_some());
    }
}
