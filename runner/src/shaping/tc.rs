//! Traffic-control messages, built byte by byte: netlink-packet-route has no HTB, netem or u32
//! selector types for requests, and building the options ourselves is what lets a test compare
//! them with what `tc` sends (tests/ strace comparison).
//!
//! The layout tg-nix puts on the data interface (Testground's, plus per-rule classes):
//!
//! ```text
//! qdisc 1: root htb default 2
//! ├── class 1:2  htb rate <default.bandwidth or max>      ── qdisc 2: netem (only if needed)
//! └── class 1:N  htb rate <rule.bandwidth or max>, N ≥ 16 ── qdisc N: netem (only if needed)
//!     selected by: filter parent 1: prio P u32 match ip dst <rule.subnet> flowid 1:N
//! ```
//!
//! Structures are in native byte order, as the kernel reads them (`struct tc_netem_qopt`,
//! `tc_htb_opt`, `tc_u32_sel`); u32 match keys are in network byte order.

use rtnetlink::packet_core::{DefaultNla, NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::config::LinkShape;
use crate::netns::Ipv4Cidr;

const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// netem's default queue length (packets), the one `tc` sends when no `limit` is given.
const NETEM_LIMIT: u32 = 1000;
/// Nanoseconds per packet-scheduler tick (the kernel's PSCHED_SHIFT is 6).
const NS_PER_TICK: u64 = 64;
/// The HTB major handle, and the minor of the default class.
pub(crate) const HTB_MAJOR: u16 = 1;
pub(crate) const DEFAULT_MINOR: u16 = 2;
/// The first minor number used for per-rule classes (and the major of their netem qdiscs).
pub(crate) const RULE_MINOR_BASE: u16 = 0x10;
/// The HTB rate for "unlimited" (bandwidth 0): Testground's u64::MAX bits/s, in bytes.
pub(crate) const MAX_RATE: u64 = u64::MAX / 8;

/// `parent 1:2 handle 2:`-style handles.
fn handle(major: u16, minor: u16) -> TcHandle {
    TcHandle { major, minor }
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// One netlink attribute (header, value, padding to 4 bytes).
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity((len + 3) & !3);
    out.extend((len as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize((len + 3) & !3, 0);
    out
}

fn options(value: Vec<u8>) -> TcAttribute {
    TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, value))
}

/// A percentage as netem's 32-bit probability, rounded the way `tc` does it (`rint(p / 100 *
/// UINT32_MAX)`). The f32 goes through its shortest decimal form, the number a user would type.
pub fn probability(percent: f32) -> u32 {
    let p: f64 = percent.to_string().parse().unwrap_or(f64::from(percent));
    ((p / 100.0) * f64::from(u32::MAX)).round_ties_even().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// A delay in nanoseconds as scheduler ticks, truncated to whole microseconds first (as
/// Testground's sidecar and `tc ... delay <n>us` do).
pub fn ticks(ns: u64) -> u32 {
    let us = ns / 1000;
    (us * 1000 / NS_PER_TICK).min(u64::from(u32::MAX)) as u32
}

/// `tc qdisc add dev <ifindex> root handle 1: htb default 2`.
pub fn htb_root(ifindex: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle::ROOT;
    m.header.handle = handle(HTB_MAJOR, 0);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    // struct tc_htb_glob { version = 3, rate2quantum = 10, defcls, debug, direct_pkts }.
    let glob = u32s(&[3, 10, u32::from(DEFAULT_MINOR), 0, 0]);
    m.attributes.push(options(nla(TCA_HTB_INIT, &glob)));
    m
}

/// struct tc_ratespec for `rate` bytes/s: ethernet link layer (so the kernel needs no rate table).
fn ratespec(rate: u64) -> Vec<u8> {
    let mut out = vec![0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0];
    out.extend((rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    out
}

/// The bytes per second HTB gets for `bandwidth` bits per second (0 = unlimited).
pub fn htb_rate(bandwidth: u64) -> u64 {
    if bandwidth == 0 {
        MAX_RATE
    } else {
        bandwidth / 8
    }
}

/// `tc class add dev <ifindex> parent 1: classid 1:<minor> htb rate <rate>` (rate = ceil, in
/// bytes per second). The bucket holds 10 ms of traffic or two full-size frames, whichever is more;
/// the quantum is set explicitly (rate / 10, kept within 1000..=200000 bytes) so the kernel does
/// not warn about it.
pub fn htb_class(ifindex: u32, minor: u16, rate: u64) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = handle(HTB_MAJOR, 0);
    m.header.handle = handle(HTB_MAJOR, minor);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    let burst = (rate / 100).max(2 * 1514);
    let buffer_ns = (u128::from(burst) * 1_000_000_000 / u128::from(rate.max(1))) as u64;
    let buffer = (buffer_ns / NS_PER_TICK).min(u64::from(u32::MAX)) as u32;
    let quantum = (rate / 10).clamp(1000, 200_000) as u32;
    // struct tc_htb_opt { rate, ceil: tc_ratespec; buffer, cbuffer, quantum, level, prio }.
    let mut opt = ratespec(rate);
    opt.extend(ratespec(rate));
    opt.extend(u32s(&[buffer, buffer, quantum, 0, 0]));
    let mut value = nla(TCA_HTB_PARMS, &opt);
    if rate > u64::from(u32::MAX) {
        value.extend(nla(TCA_HTB_RATE64, &rate.to_ne_bytes()));
        value.extend(nla(TCA_HTB_CEIL64, &rate.to_ne_bytes()));
    }
    m.attributes.push(options(value));
    m
}

/// `tc qdisc add dev <ifindex> parent 1:<parent_minor> handle <major>: netem ...` with the
/// shape's delay, jitter, loss, corruption, reordering and duplication. The options are what
/// `tc` (iproute2 6.1) sends for `delay <l>us <j>us loss <p>% corrupt <p>% <c>% duplicate <p>%
/// <c>% reorder <p>% <c>%`: struct tc_netem_qopt, then TCA_NETEM_CORR when duplication is set,
/// TCA_NETEM_REORDER when reordering is, TCA_NETEM_CORRUPT when corruption is.
pub fn netem(ifindex: u32, parent_minor: u16, major: u16, shape: &LinkShape) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = handle(HTB_MAJOR, parent_minor);
    m.header.handle = handle(major, 0);
    m.attributes.push(TcAttribute::Kind("netem".into()));
    m.attributes.push(options(netem_options(shape)));
    m
}

/// The value of netem's TCA_OPTIONS (see [`netem`]).
pub fn netem_options(shape: &LinkShape) -> Vec<u8> {
    // Reordering sends every `gap`-th packet at once; tc sets gap 1 when it is not given.
    let gap = u32::from(shape.reorder != 0.0);
    // struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter }.
    let mut value = u32s(&[
        ticks(shape.latency),
        NETEM_LIMIT,
        probability(shape.loss),
        gap,
        probability(shape.duplicate),
        ticks(shape.jitter),
    ]);
    if shape.duplicate != 0.0 || shape.duplicate_corr != 0.0 {
        // struct tc_netem_corr { delay_corr, loss_corr, dup_corr }; tc sends it whenever
        // `duplicate` is given, correlation or not.
        value.extend(nla(TCA_NETEM_CORR, &u32s(&[0, 0, probability(shape.duplicate_corr)])));
    }
    if shape.reorder != 0.0 {
        // struct tc_netem_reorder { probability, correlation }.
        let reorder = u32s(&[probability(shape.reorder), probability(shape.reorder_corr)]);
        value.extend(nla(TCA_NETEM_REORDER, &reorder));
    }
    if shape.corrupt != 0.0 || shape.corrupt_corr != 0.0 {
        // struct tc_netem_corrupt { probability, correlation }.
        let corrupt = u32s(&[probability(shape.corrupt), probability(shape.corrupt_corr)]);
        value.extend(nla(TCA_NETEM_CORRUPT, &corrupt));
    }
    value
}

/// `tc filter add dev <ifindex> parent 1: protocol ip prio <prio> u32 match ip dst <subnet>
/// flowid 1:<minor>`.
pub fn u32_dst_filter(ifindex: u32, prio: u16, subnet: Ipv4Cidr, minor: u16) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = handle(HTB_MAJOR, 0);
    m.header.handle = TcHandle::UNSPEC;
    m.header.info = (u32::from(prio) << 16) | u32::from((libc::ETH_P_IP as u16).to_be());
    m.attributes.push(TcAttribute::Kind("u32".into()));
    let classid = (u32::from(HTB_MAJOR) << 16) | u32::from(minor);
    let mask = subnet.netmask().to_bits();
    let network = subnet.network().to_bits() & mask;
    // struct tc_u32_sel { flags, offshift, nkeys, pad: u8; offmask: be16; off: u16; offoff,
    // hoff: s16; hmask: be32 } followed by one struct tc_u32_key { mask, val: be32; off,
    // offmask: s32 } matching the IPv4 destination address (offset 16 in the IP header).
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend([0u8; 12]);
    sel.extend(mask.to_be_bytes());
    sel.extend(network.to_be_bytes());
    sel.extend(16i32.to_ne_bytes());
    sel.extend(0i32.to_ne_bytes());
    let mut value = nla(TCA_U32_CLASSID, &classid.to_ne_bytes());
    value.extend(nla(TCA_U32_SEL, &sel));
    m.attributes.push(options(value));
    m
}

/// The bytes of a request as it goes to the kernel (sequence number and port id 0), for
/// comparisons with other tools.
pub fn request_bytes(message: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    request.finalize();
    let mut buf = vec![0; request.header.length as usize];
    request.serialize(&mut buf);
    buf
}

/// Addresses printed in tc's notation, for messages.
pub fn describe_class(minor: u16) -> String {
    format!("{HTB_MAJOR}:{minor:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_round_like_tc() {
        assert_eq!(probability(1.0), 0x028f_5c29);
        assert_eq!(probability(10.0), 0x1999_999a);
        assert_eq!(probability(25.0), 0x4000_0000);
        assert_eq!(probability(0.5), 0x0147_ae14);
        assert_eq!(probability(100.0), u32::MAX);
        assert_eq!(probability(0.0), 0);
    }

    #[test]
    fn delays_become_ticks() {
        assert_eq!(ticks(10_000_000), 156_250);
        assert_eq!(ticks(2_000_999), 31_250);
        assert_eq!(ticks(0), 0);
    }

    #[test]
    fn nlas_are_padded() {
        assert_eq!(nla(1, &[1, 2]), vec![6, 0, 1, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn unlimited_rate_uses_64_bit_attributes() {
        let class = htb_class(3, 2, MAX_RATE);
        let bytes = request_bytes(RouteNetlinkMessage::NewTrafficClass(class), 0);
        // 20 (tcmsg) + 8 (kind) + 4 (options) + 4 + 44 (tc_htb_opt) + 2 * (4 + 8), after the
        // 16-byte netlink header.
        assert_eq!(bytes.len(), 16 + 20 + 8 + 4 + 48 + 24);
    }
}
