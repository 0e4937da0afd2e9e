//! The few rtnetlink requests the hub and instances need, each returning an `io::Error` that keeps
//! the kernel's errno (callers add the step and instance).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::error::netlink_io;

/// The loopback device's index, the same in every network namespace (the kernel creates it first).
pub(crate) const LOOPBACK_INDEX: u32 = 1;

/// Adds a bridge that is up, and returns its index. With `mac`, the bridge keeps that address
/// instead of taking its lowest port's (which changes as ports come and go).
pub(crate) async fn add_bridge(handle: &Handle, name: &str, mac: Option<[u8; 6]>) -> io::Result<u32> {
    let mut bridge = LinkBridge::new(name).up();
    if let Some(mac) = mac {
        bridge = bridge.address(mac.to_vec());
    }
    handle.link().add(bridge.build()).execute().await.map_err(netlink_io)?;
    link_index(handle, name).await
}

/// Adds a veth pair in one request: `name` stays in the handle's namespace, up and attached to
/// `bridge`; `peer` is created down, directly in `peer_netns` (or beside `name` if `None`), so no
/// name in the other namespace can collide with it. (Asking for the peer to be up in the same
/// request makes the kernel answer ENOTCONN; bring it up afterwards from its own namespace.)
pub(crate) async fn add_veth(
    handle: &Handle,
    name: &str,
    bridge: u32,
    peer: &str,
    peer_mac: Option<[u8; 6]>,
    peer_netns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut peer_message = LinkUnspec::new_with_name(peer);
    if let Some(mac) = peer_mac {
        peer_message = peer_message.address(mac.to_vec());
    }
    if let Some(netns) = peer_netns {
        // The kernel resolves this fd in our process while it handles the request, which happens
        // synchronously inside the send; `netns` is borrowed until then.
        peer_message = peer_message.setns_by_fd(netns.as_raw_fd());
    }
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message.build())))
        .controller(bridge)
        .up()
        .build();
    handle.link().add(message).execute().await.map_err(netlink_io)
}

/// The index of the interface called `name`.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> io::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await.map_err(netlink_io)? {
        Some(link) => Ok(link.header.index),
        None => Err(io::Error::from_raw_os_error(libc::ENODEV)),
    }
}

/// Brings an interface up.
pub(crate) async fn set_up(handle: &Handle, index: u32) -> io::Result<()> {
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(netlink_io)
}

/// Attaches an interface to a bridge and brings it up.
pub(crate) async fn attach_up(handle: &Handle, index: u32, bridge: u32) -> io::Result<()> {
    let message = LinkUnspec::new_with_index(index).controller(bridge).up().build();
    handle.link().set(message).execute().await.map_err(netlink_io)
}

/// Adds `addr/prefix` to an interface; the kernel adds the subnet's connected route with it.
pub(crate) async fn add_address(handle: &Handle, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    handle.address().add(index, IpAddr::V4(addr), prefix).execute().await.map_err(netlink_io)
}

/// Adds (or replaces) a permanent neighbour entry: `addr` is at `mac` on interface `index`.
pub(crate) async fn add_neighbour(handle: &Handle, index: u32, addr: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
    let request = handle.neighbours().add(index, IpAddr::V4(addr)).link_layer_address(&mac).replace();
    request.execute().await.map_err(netlink_io)
}

/// Adds (or replaces) a neighbour entry marked as learned from outside the kernel
/// (`NTF_EXT_LEARNED`), in state STALE: `addr` is believed to be at `mac` on interface `index`.
///
/// Unlike a permanent entry, it keeps ARP's self-correction: on first use it goes through
/// DELAY, and unless the traffic confirms the peer (as TCP does), unicast probes check it; if they
/// fail, ARP resolves the address afresh and updates the entry. Like a permanent entry, it is
/// never garbage-collected and does not count toward the host-wide `gc_thresh3` cap.
pub(crate) async fn add_learned_neighbour(handle: &Handle, index: u32, addr: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
    let request = handle
        .neighbours()
        .add(index, IpAddr::V4(addr))
        .link_layer_address(&mac)
        .state(NeighbourState::Stale)
        .flags(NeighbourFlags::ExtLearned)
        .replace();
    request.execute().await.map_err(netlink_io)
}

/// Sends a request that rtnetlink has no builder for (traffic control, mostly) and waits for the
/// kernel's acknowledgement. `flags` are added to NLM_F_REQUEST | NLM_F_ACK.
pub(crate) async fn request_ack(handle: &Handle, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    let mut responses = handle.request(request).map_err(netlink_io)?;
    while let Some(response) = futures::StreamExt::next(&mut responses).await {
        if let NetlinkPayload::Error(err) = response.payload {
            if err.code.is_some() {
                return Err(err.to_io());
            }
        }
    }
    Ok(())
}
