//! The traffic-control requests tg-nix builds are byte for byte what `tc` (iproute2) sends for
//! the same settings. `tc` runs under `strace -e write=all` in a throwaway network namespace
//! (`unshare -n`, a veth pair); the hex dump of its RTM_NEW* request is compared with ours, minus
//! the netlink sequence number and port id. On a kernel without sch_netem `tc` fails with ENOENT
//! after sending, which is fine: the request is what is compared.
//!
//! Needs root, `unshare`, `ip`, `tc` and `strace`; without them it prints a loud SKIPPED line
//! (and fails when CI=true).

use std::io::Write;
use std::process::Command;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::RouteNetlinkMessage;

use tg_nix_runner::netns::is_root;
use tg_nix_runner::shaping::tc;
use tg_nix_runner::shaping::LinkShape;

fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true");
    }
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {test}: {why} ***\n");
}

fn tools_present(test: &str) -> bool {
    if !is_root() {
        skip(test, "needs root (unshare -n)");
        return false;
    }
    for tool in ["unshare", "ip", "tc", "strace"] {
        let found =
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
        if !found {
            skip(test, &format!("`{tool}` is not installed (apt-get install iproute2 strace util-linux)"));
            return false;
        }
    }
    true
}

/// Runs `setup` and then `traced` (a tc command) under strace in a new network namespace with a
/// veth pair `a`/`b`; returns every netlink request `traced` sent, as bytes.
fn tc_requests(setup: &str, traced: &str) -> Vec<Vec<u8>> {
    let script = format!(
        "ip link add name a type veth peer name b && {setup} strace -f -e trace=sendmsg -e write=all -xx -s 65535 {traced}"
    );
    let out = Command::new("unshare").args(["-n", "sh", "-c", &script]).output().expect("unshare runs");
    let text = String::from_utf8_lossy(&out.stderr);
    let mut requests = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in text.lines() {
        if line.starts_with("sendmsg(") {
            requests.extend(current.take());
            current = Some(Vec::new());
        } else if let (Some(bytes), Some(dump)) = (current.as_mut(), line.strip_prefix(" | ")) {
            // " | 00010  00 00 ... 00  |ascii|": offset, 16 hex bytes in two halves, then ASCII.
            let hex = dump.get(7..7 + 49).unwrap_or("");
            bytes.extend(hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")));
        }
    }
    requests.extend(current);
    assert!(!requests.is_empty(), "no sendmsg captured; strace said:\n{text}");
    requests
}

/// The request of netlink type `kind` (e.g. RTM_NEWQDISC = 36).
fn request_of_type(requests: &[Vec<u8>], kind: u16) -> Vec<u8> {
    requests
        .iter()
        .find(|r| r.len() >= 16 && u16::from_ne_bytes([r[4], r[5]]) == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no request of type {kind} among {requests:?}"))
}

/// The ifindex in a tcmsg (after the 16-byte netlink header and 4 bytes of family and padding).
fn ifindex(request: &[u8]) -> u32 {
    u32::from_ne_bytes(request[20..24].try_into().unwrap())
}

/// Compares two requests, ignoring nlmsg_seq and nlmsg_pid (bytes 8..16).
fn assert_same(what: &str, ours: &[u8], theirs: &[u8]) {
    let strip = |b: &[u8]| [&b[..8], &b[16..]].concat();
    assert_eq!(strip(ours), strip(theirs), "{what}: ours (left) and tc's (right) differ");
}

const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;

/// The tc arguments tg-nix's netem options correspond to (see `tc::netem`).
fn netem_args(s: &LinkShape) -> String {
    let mut args = String::from("netem");
    if s.latency != 0 || s.jitter != 0 {
        args += &format!(" delay {}us {}us", s.latency / 1000, s.jitter / 1000);
    }
    if s.loss != 0.0 {
        args += &format!(" loss {}%", s.loss);
    }
    if s.corrupt != 0.0 || s.corrupt_corr != 0.0 {
        args += &format!(" corrupt {}% {}%", s.corrupt, s.corrupt_corr);
    }
    if s.duplicate != 0.0 || s.duplicate_corr != 0.0 {
        args += &format!(" duplicate {}%", s.duplicate);
        if s.duplicate_corr != 0.0 {
            args += &format!(" {}%", s.duplicate_corr);
        }
    }
    if s.reorder != 0.0 {
        args += &format!(" reorder {}% {}%", s.reorder, s.reorder_corr);
    }
    args
}

#[test]
fn netem_requests_match_tc_byte_for_byte() {
    if !tools_present("netem_requests_match_tc_byte_for_byte") {
        return;
    }
    let shapes = [
        LinkShape { latency: 10_000_000, jitter: 2_000_000, loss: 1.0, ..Default::default() },
        LinkShape { latency: 100_000_000, ..Default::default() },
        LinkShape { loss: 0.1, ..Default::default() },
        LinkShape {
            latency: 25_000_000,
            jitter: 5_000_000,
            loss: 2.5,
            corrupt: 0.5,
            corrupt_corr: 10.0,
            duplicate: 2.0,
            duplicate_corr: 5.0,
            reorder: 3.0,
            reorder_corr: 50.0,
            ..Default::default()
        },
        LinkShape { latency: 1_500_000, duplicate: 33.3, corrupt: 0.01, ..Default::default() },
    ];
    let setup =
        "tc qdisc add dev a root handle 1: htb default 2 && tc class add dev a parent 1: classid 1:2 htb rate 1mbit &&";
    for shape in shapes {
        let args = netem_args(&shape);
        let theirs = request_of_type(
            &tc_requests(setup, &format!("tc qdisc add dev a parent 1:2 handle 2: {args}")),
            RTM_NEWQDISC,
        );
        let message = tc::netem(ifindex(&theirs), 2, 2, &shape);
        let ours = tc::request_bytes(RouteNetlinkMessage::NewQueueDiscipline(message), NLM_F_CREATE | NLM_F_EXCL);
        assert_same(&args, &ours, &theirs);
    }
}

#[test]
fn htb_root_and_u32_filter_match_tc_byte_for_byte() {
    if !tools_present("htb_root_and_u32_filter_match_tc_byte_for_byte") {
        return;
    }
    let theirs = request_of_type(&tc_requests("", "tc qdisc add dev a root handle 1: htb default 2"), RTM_NEWQDISC);
    let ours = tc::request_bytes(
        RouteNetlinkMessage::NewQueueDiscipline(tc::htb_root(ifindex(&theirs))),
        NLM_F_CREATE | NLM_F_EXCL,
    );
    assert_same("htb root", &ours, &theirs);

    let setup = "tc qdisc add dev a root handle 1: htb default 2 && tc class add dev a parent 1: classid 1:10 htb rate 1mbit &&";
    for (subnet, prio) in [("16.0.0.3/32", 1u16), ("16.0.4.0/24", 2), ("0.0.0.0/0", 9)] {
        let traced =
            format!("tc filter add dev a parent 1: protocol ip prio {prio} u32 match ip dst {subnet} flowid 1:10");
        let theirs = request_of_type(&tc_requests(setup, &traced), RTM_NEWTFILTER);
        let filter = tc::u32_dst_filter(ifindex(&theirs), prio, subnet.parse().unwrap(), 0x10);
        let ours = tc::request_bytes(RouteNetlinkMessage::NewTrafficFilter(filter), NLM_F_CREATE | NLM_F_EXCL);
        assert_same(&traced, &ours, &theirs);
    }
}
