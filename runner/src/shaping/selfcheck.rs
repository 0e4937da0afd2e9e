//! `tg-nix doctor --network`: what a requested shape really delivers on this host, measured
//! between two throwaway instance namespaces on a private hub (nothing touches the host's
//! network). The sender's data link is shaped with [`Shaper`] (the same code runs use); plain TCP
//! carries `rate / 8 * seconds` bytes, and the receiver times them from the first byte to the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Links, NetnsRef, NetworkConfig, Shaper, ShapingError};
use crate::capability::Capabilities;
use crate::netns::{thread, Hub, HubConfig, CONTROL_GATEWAY};

/// One row of the accuracy table.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthSample {
    /// Requested bandwidth, bits/s.
    pub requested: u64,
    /// TCP payload throughput the receiver measured, bits/s.
    pub measured: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// (measured - requested) / requested, in percent.
    pub deviation_pct: f64,
}

/// The latency check: requested one-way latency and the TCP connect time measured with it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LatencySample {
    Measured { requested_ms: f64, connect_before_ms: f64, connect_after_ms: f64 },
    Unavailable { reason: String },
}

/// Everything `doctor --network` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SelfCheck {
    pub bandwidth: Vec<BandwidthSample>,
    pub latency: LatencySample,
}

fn io_err(instance: &str, step: &str) -> impl FnOnce(std::io::Error) -> ShapingError {
    let (instance, step) = (instance.to_string(), step.to_string());
    move |source| ShapingError::Netlink { instance, step, source }
}

/// Measures each rate in `rates` (bits/s) for about `seconds`, and latency where netem exists.
pub async fn measure(rates: &[u64], seconds: f64, caps: &Capabilities) -> Result<SelfCheck, ShapingError> {
    let hub = Hub::create(HubConfig::default())
        .await
        .map_err(|e| ShapingError::Namespace { instance: "doctor".into(), detail: e.to_string() })?;
    let ns_err =
        |e: crate::netns::NetError| ShapingError::Namespace { instance: "doctor".into(), detail: e.to_string() };
    let sender = hub.add_instance(0).await.map_err(ns_err)?;
    let receiver = hub.add_instance(1).await.map_err(ns_err)?;
    let links = Links {
        data: crate::netns::DATA_IFNAME.into(),
        control: crate::netns::CONTROL_IFNAME.into(),
        data_subnet: sender.data_subnet,
        keep: vec![CONTROL_GATEWAY],
    };
    let mut shaper = Shaper::open(NetnsRef::Fd(sender.netns_fd()), links, "doctor-sender").await?;
    let target = SocketAddr::from((receiver.data_ip, 7000));
    let listener = thread::run_in_netns(receiver.netns_fd(), || {
        let l = TcpListener::bind(target)?;
        l.set_nonblocking(false)?;
        Ok(l)
    })
    .map_err(io_err("doctor-receiver", "listening"))?;

    let mut bandwidth = Vec::new();
    for &rate in rates {
        let cfg = NetworkConfig {
            default: super::LinkShape { bandwidth: rate, ..Default::default() },
            routing_policy: super::RoutingPolicy::AllowAll,
            ..Default::default()
        };
        shaper.apply(&cfg, caps).await?;
        let bytes = (rate as f64 / 8.0 * seconds) as u64;
        let conn = thread::run_in_netns(sender.netns_fd(), || TcpStream::connect(target))
            .map_err(io_err("doctor-sender", "connecting"))?;
        let listener = listener.try_clone().map_err(io_err("doctor-receiver", "listening"))?;
        let send = std::thread::spawn(move || -> std::io::Result<()> {
            let mut conn = conn;
            let chunk = vec![0x5a_u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                conn.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            conn.shutdown(std::net::Shutdown::Write)
        });
        let (got, elapsed) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Duration)> {
            let (mut conn, _) = listener.accept()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            let mut first = None;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                got += n as u64;
            }
            Ok((got, first.map(|t| t.elapsed()).unwrap_or_default()))
        })
        .await
        .map_err(|e| io_err("doctor-receiver", "receiving")(std::io::Error::other(e)))?
        .map_err(io_err("doctor-receiver", "receiving"))?;
        let _ = send.join();
        let secs = elapsed.as_secs_f64();
        let measured = if secs > 0.0 { (got as f64 * 8.0 / secs) as u64 } else { 0 };
        let deviation_pct = (measured as f64 - rate as f64) / rate as f64 * 100.0;
        bandwidth.push(BandwidthSample { requested: rate, measured, bytes: got, seconds: secs, deviation_pct });
    }

    let latency = match caps.qdisc("netem") {
        Some(s) if s.is_supported() => {
            let connect_ms = || -> Result<f64, ShapingError> {
                let started = Instant::now();
                thread::run_in_netns(sender.netns_fd(), || TcpStream::connect(target))
                    .map_err(io_err("doctor-sender", "connecting"))?;
                let _ = listener.accept();
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            };
            let before = connect_ms()?;
            let requested_ms = 20.0;
            let cfg = NetworkConfig {
                default: super::LinkShape { latency: 20_000_000, ..Default::default() },
                routing_policy: super::RoutingPolicy::AllowAll,
                ..Default::default()
            };
            shaper.apply(&cfg, caps).await?;
            let after = connect_ms()?;
            LatencySample::Measured { requested_ms, connect_before_ms: before, connect_after_ms: after }
        }
        other => LatencySample::Unavailable {
            reason: format!(
                "sch_netem is not available in this kernel ({}); latency, jitter and loss cannot be shaped \
                 (modprobe sch_netem / CONFIG_NET_SCH_NETEM)",
                other.and_then(|s| s.reason()).unwrap_or("not probed")
            ),
        },
    };
    drop(shaper);
    Ok(SelfCheck { bandwidth, latency })
}

impl std::fmt::Display for SelfCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "shaping accuracy (TCP payload over a veth pair, HTB on the sender's eth1):")?;
        writeln!(f, "{:>14}  {:>14}  {:>9}  {:>10}  {:>7}", "REQUESTED", "MEASURED", "DEVIATION", "BYTES", "SECONDS")?;
        for s in &self.bandwidth {
            writeln!(
                f,
                "{:>14}  {:>14}  {:>8.1}%  {:>10}  {:>7.2}",
                format_rate(s.requested),
                format_rate(s.measured),
                s.deviation_pct,
                s.bytes,
                s.seconds
            )?;
        }
        match &self.latency {
            LatencySample::Measured { requested_ms, connect_before_ms, connect_after_ms } => writeln!(
                f,
                "latency: {requested_ms} ms requested on the sender; TCP connect {connect_before_ms:.2} ms before, \
                 {connect_after_ms:.2} ms after"
            ),
            LatencySample::Unavailable { reason } => writeln!(f, "latency: not available: {reason}"),
        }
    }
}

fn format_rate(bits: u64) -> String {
    if bits >= 1_000_000 {
        format!("{:.2} Mbit/s", bits as f64 / 1e6)
    } else {
        format!("{:.1} kbit/s", bits as f64 / 1e3)
    }
}
