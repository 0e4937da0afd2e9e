//! network-rust: network shaping through `configure_network`, checked from inside the plan.
//!
//! Two instances; global seq 1 is `a` (the one that shapes or filters, and sends), seq 2 is `b`
//! (the peer: it listens on its data-network address). Each publishes its data IP on topic
//! `addrs`. Cases (TEST_CASE):
//!
//! - `bandwidth`: for each rate in `rates`, both instances configure `bandwidth = rate` (egress);
//!   `a` sends `rate / 8 * seconds` bytes over TCP to `b`, which measures the throughput from the
//!   first byte to the end of the stream. The case fails unless every measurement lies within
//!   `tolerance` percent of its request. (Measured is TCP payload; the limit counts whole
//!   Ethernet frames, so expect about 95% of the request.)
//! - `filter`: `a` adds a rule for `b`'s /32: reject (connect must fail at once, not time out),
//!   then drop (connect must time out), then accept (connect must succeed).
//! - `enable`: `a` reaches `b`, configures `enable: false` (connect must fail), then
//!   `enable: true` (connect must succeed again).
//! - `latency`: both ask for `latency_ms` of egress latency. On a kernel without sch_netem the
//!   runner refuses the config and stops the run (the expected outcome there); with netem, the
//!   TCP connect time must grow by at least the latency of both ends.
//! - `unknown-host`: bad input on purpose. `a` publishes a NetworkConfig on `network:<host>`
//!   (parameter `host`, default `typo-host`, no instance of the run) instead of its own
//!   `network:$HOSTNAME`, and waits on its callback. No sidecar reads that topic, so the runner
//!   must stop the run at once naming the host (the expected outcome); should the callback never
//!   come, the case fails after STEP_TIMEOUT instead.
//!
//! Every configure_network uses a fresh callback state; steps only one instance takes use
//! `callback_target = 1`. Facts about the testground 0.4.0 SDK: see plans/ping-rust/src/main.rs.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use testground::client::Client;
use testground::network_conf::{
    FilterAction, LinkRule, LinkShape, NetworkConfiguration, RoutingPolicyType, DEFAULT_DATA_NETWORK,
};
use testground::RunParameters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_stream::StreamExt;

/// How long a connect may take before it counts as "timed out" (a dropped SYN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A rejected connect must fail well within this.
const FAST_FAILURE: Duration = Duration::from_secs(1);
/// Limit for the sync steps and for one whole transfer.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> ExitCode {
    let client = match Client::new_and_init().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("network-rust: could not initialise the Testground client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&client).await;
    // Neither instance leaves before the other is done with it.
    let _ = timeout(STEP_TIMEOUT, client.signal_and_wait("end", client.run_parameters().test_instance_count)).await;
    match result {
        Ok(summary) => {
            client.record_message(summary);
            match client.record_success().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("network-rust: could not record success: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("network-rust: {message}");
            if let Err(e) = client.record_failure(message).await {
                eprintln!("network-rust: could not record failure: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn int_param<T: std::str::FromStr>(run: &RunParameters, name: &str) -> Result<T, String> {
    let value = run.test_instance_params.get(name).ok_or_else(|| format!("parameter `{name}` missing"))?;
    value.trim().parse().map_err(|_| format!("parameter `{name}` = {value:?} is not a valid integer"))
}

fn zero_shape() -> LinkShape {
    LinkShape {
        latency: 0,
        jitter: 0,
        bandwidth: 0,
        filter: FilterAction::Accept,
        loss: 0.0,
        corrupt: 0.0,
        corrupt_corr: 0.0,
        reorder: 0.0,
        reorder_corr: 0.0,
        duplicate: 0.0,
        duplicate_corr: 0.0,
    }
}

fn config(
    shape: LinkShape,
    rules: Option<Vec<LinkRule>>,
    enable: bool,
    state: &str,
    target: Option<u64>,
) -> NetworkConfiguration {
    NetworkConfiguration {
        network: DEFAULT_DATA_NETWORK.to_owned(),
        ipv4: None,
        ipv6: None,
        enable,
        default: shape,
        rules,
        callback_state: state.to_owned(),
        callback_target: target,
        routing_policy: RoutingPolicyType::AllowAll,
    }
}

async fn configure(client: &Client, cfg: NetworkConfiguration) -> Result<(), String> {
    let state = cfg.callback_state.clone();
    match timeout(STEP_TIMEOUT, client.configure_network(cfg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("configure_network ({state}): {e}")),
        Err(_) => Err(format!("configure_network ({state}): no callback within {STEP_TIMEOUT:?}")),
    }
}

async fn step(client: &Client, state: &str) -> Result<(), String> {
    let n = client.run_parameters().test_instance_count;
    match timeout(STEP_TIMEOUT, client.signal_and_wait(state.to_owned(), n)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("barrier {state}: {e}")),
        Err(_) => Err(format!("barrier {state}: timed out")),
    }
}

/// Publishes our data IP and returns the peer's.
async fn peer_ip(client: &Client, me: u64) -> Result<IpAddr, String> {
    let run = client.run_parameters();
    let ip = run
        .data_network_ip()
        .map_err(|e| format!("listing interfaces: {e}"))?
        .ok_or_else(|| format!("no address in TEST_SUBNET {}", run.test_subnet))?;
    let entry = serde_json::json!({"seq": me, "ip": ip.to_string()});
    client.publish("addrs", Cow::Owned(entry)).await.map_err(|e| format!("publish addrs: {e}"))?;
    let mut stream = client.subscribe("addrs", 16).await;
    while let Some(item) = timeout(STEP_TIMEOUT, stream.next()).await.map_err(|_| "addrs: timed out".to_string())? {
        let value = item.map_err(|e| format!("addrs: {e}"))?;
        if value["seq"].as_u64() != Some(me) {
            if let Some(ip) = value["ip"].as_str().and_then(|s| s.parse().ok()) {
                return Ok(ip);
            }
        }
    }
    Err("addrs: the topic ended".into())
}

async fn run(client: &Client) -> Result<String, String> {
    let run = client.run_parameters();
    if run.test_instance_count != 2 {
        return Err(format!("this plan needs exactly 2 instances, got {}", run.test_instance_count));
    }
    let me = client.global_seq();
    let peer = peer_ip(client, me).await?;
    let port: u16 = int_param(&run, "port")?;
    match run.test_case.as_str() {
        "bandwidth" => bandwidth(client, &run, me, peer, port).await,
        "filter" => filter(client, me, peer, port).await,
        "enable" => enable(client, me, peer, port).await,
        "latency" => latency(client, &run, me, peer, port).await,
        "unknown-host" => unknown_host(client, &run, me).await,
        other => Err(format!("unknown test case {other:?}")),
    }
}

/// Accepts connections until the listener is dropped; each connection is read to its end.
fn serve(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    })
}

async fn bind(client: &Client, port: u16) -> Result<TcpListener, String> {
    let ip = client.run_parameters().data_network_ip().ok().flatten().ok_or("no data IP")?;
    TcpListener::bind(SocketAddr::new(ip, port)).await.map_err(|e| format!("listening on {ip}:{port}: {e}"))
}

async fn bandwidth(client: &Client, run: &RunParameters, me: u64, peer: IpAddr, port: u16) -> Result<String, String> {
    let rates: Vec<u64> = run
        .test_instance_params
        .get("rates")
        .ok_or("parameter `rates` missing")?
        .split(',')
        .map(|s| s.trim().parse().map_err(|_| format!("rates: {s:?} is not a number")))
        .collect::<Result<_, _>>()?;
    let seconds: u64 = int_param(run, "seconds")?;
    let tolerance: f64 = int_param::<u32>(run, "tolerance")?.into();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for (i, rate) in rates.iter().copied().enumerate() {
        let shape = LinkShape { bandwidth: rate, ..zero_shape() };
        configure(client, config(shape, None, true, &format!("bw-{i}"), None)).await?;
        let bytes = rate / 8 * seconds;
        let port = port + i as u16;
        if me == 2 {
            let listener = bind(client, port).await?;
            step(client, &format!("bw-listening-{i}")).await?;
            let (mut conn, _) = timeout(STEP_TIMEOUT, listener.accept())
                .await
                .map_err(|_| "accept timed out")?
                .map_err(|e| format!("accept: {e}"))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            let mut first = None;
            let deadline = Instant::now() + STEP_TIMEOUT;
            loop {
                let n = timeout(deadline.saturating_duration_since(Instant::now()), conn.read(&mut buf))
                    .await
                    .map_err(|_| "transfer timed out")?
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                got += n as u64;
            }
            let elapsed = first.map(|t| t.elapsed()).unwrap_or_default().as_secs_f64();
            let measured = if elapsed > 0.0 { got as f64 * 8.0 / elapsed } else { 0.0 };
            let deviation = (measured - rate as f64) / rate as f64 * 100.0;
            let line = format!(
                "requested {rate} bit/s, measured {measured:.0} bit/s ({deviation:+.1}%) over {got} bytes in {elapsed:.2}s"
            );
            println!("network-rust: {line}");
            client.record_message(line.clone());
            if deviation.abs() > tolerance {
                bad.push(line.clone());
            }
            report.push(line);
            client
                .publish("bw-results", Cow::Owned(serde_json::json!({"i": i, "ok": deviation.abs() <= tolerance})))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        } else {
            step(client, &format!("bw-listening-{i}")).await?;
            let mut conn = timeout(CONNECT_TIMEOUT, TcpStream::connect((peer, port)))
                .await
                .map_err(|_| "connect timed out")?
                .map_err(|e| format!("connect to {peer}:{port}: {e}"))?;
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                timeout(STEP_TIMEOUT, conn.write_all(&chunk[..n]))
                    .await
                    .map_err(|_| "send timed out")?
                    .map_err(|e| format!("write: {e}"))?;
                left -= n as u64;
            }
            conn.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
            report.push(format!("sent {bytes} bytes at {rate} bit/s"));
        }
        step(client, &format!("bw-done-{i}")).await?;
    }
    if me == 1 {
        // The receiver's verdicts, so both instances agree.
        let mut stream = client.subscribe("bw-results", 16).await;
        for _ in 0..rates.len() {
            let item = timeout(STEP_TIMEOUT, stream.next()).await.map_err(|_| "bw-results timed out")?;
            let value = item.ok_or("bw-results ended")?.map_err(|e| format!("bw-results: {e}"))?;
            if value["ok"] != serde_json::json!(true) {
                bad.push(format!("the receiver measured rate #{} outside the tolerance", value["i"]));
            }
        }
    }
    if bad.is_empty() {
        Ok(report.join("; "))
    } else {
        Err(format!("throughput outside {tolerance}% of the request: {}", bad.join("; ")))
    }
}

/// How a connect ended, and after how long.
#[derive(Debug)]
enum Connect {
    Connected,
    TimedOut,
    /// The OS error number and its text.
    Failed(i32, String),
}

async fn try_connect(peer: IpAddr, port: u16) -> (Connect, Duration) {
    let started = Instant::now();
    let result = match timeout(CONNECT_TIMEOUT, TcpStream::connect((peer, port))).await {
        Err(_) => Connect::TimedOut,
        Ok(Err(e)) => Connect::Failed(e.raw_os_error().unwrap_or(0), e.to_string()),
        Ok(Ok(_)) => Connect::Connected,
    };
    (result, started.elapsed())
}

async fn connected(peer: IpAddr, port: u16, what: &str) -> Result<Duration, String> {
    match try_connect(peer, port).await {
        (Connect::Connected, took) => Ok(took),
        (other, took) => Err(format!("{what}: expected a connection to {peer}:{port}, got {other:?} after {took:?}")),
    }
}

fn rule(peer: IpAddr, filter: FilterAction) -> Result<Vec<LinkRule>, String> {
    let subnet = IpNetwork::new(peer, 32).map_err(|e| e.to_string())?;
    Ok(vec![LinkRule { link_shape: LinkShape { filter, ..zero_shape() }, subnet }])
}

/// Filters are routes in the configuring instance (Testground's semantics): its own connects to
/// a rejected subnet fail with EACCES (prohibit route), to a dropped one with EINVAL (blackhole
/// route), both at once; a peer connecting *to* it under drop sees a timeout, because the replies
/// are discarded silently.
async fn filter(client: &Client, me: u64, peer: IpAddr, port: u16) -> Result<String, String> {
    let server = serve(bind(client, port).await?);
    step(client, "listening").await?;
    let mut report = Vec::new();
    if me == 1 {
        connected(peer, port, "baseline").await?;
        configure(client, config(zero_shape(), Some(rule(peer, FilterAction::Reject)?), true, "reject", Some(1)))
            .await?;
        match try_connect(peer, port).await {
            (Connect::Failed(code, e), took) if code == 13 && took < FAST_FAILURE => {
                report.push(format!("reject: refused in {took:?} ({e})"))
            }
            (other, took) => return Err(format!("reject: expected EACCES at once, got {other:?} after {took:?}")),
        }
        configure(client, config(zero_shape(), Some(rule(peer, FilterAction::Drop)?), true, "drop", Some(1))).await?;
        match try_connect(peer, port).await {
            (Connect::Failed(code, e), took) if code == 22 && took < FAST_FAILURE => {
                report.push(format!("drop: own connect discarded in {took:?} ({e})"))
            }
            (other, took) => return Err(format!("drop: expected EINVAL at once, got {other:?} after {took:?}")),
        }
    }
    // Under drop, the peer's connect to `a` must time out (a's SYN-ACKs are discarded).
    step(client, "dropped").await?;
    if me == 2 {
        match try_connect(peer, port).await {
            (Connect::TimedOut, took) => report.push(format!("drop: connect from the peer timed out after {took:?}")),
            (other, took) => {
                return Err(format!("drop: expected the peer's connect to time out, got {other:?} after {took:?}"))
            }
        }
    }
    step(client, "peer-checked").await?;
    if me == 1 {
        configure(client, config(zero_shape(), Some(rule(peer, FilterAction::Accept)?), true, "accept", Some(1)))
            .await?;
        let took = connected(peer, port, "accept").await?;
        report.push(format!("accept: connected in {took:?}"));
    }
    step(client, "accepted").await?;
    if me == 2 {
        let took = connected(peer, port, "accept (from the peer)").await?;
        report.push(format!("accept: the peer connected in {took:?}"));
    }
    step(client, "checked").await?;
    server.abort();
    Ok(report.join("; "))
}

async fn enable(client: &Client, me: u64, peer: IpAddr, port: u16) -> Result<String, String> {
    if me == 2 {
        let listener = bind(client, port).await?;
        let server = serve(listener);
        step(client, "listening").await?;
        step(client, "checked").await?;
        server.abort();
        return Ok("served".into());
    }
    step(client, "listening").await?;
    let mut report = Vec::new();
    connected(peer, port, "baseline").await?;

    configure(client, config(zero_shape(), None, false, "disabled", Some(1))).await?;
    match try_connect(peer, port).await {
        (Connect::Connected, _) => return Err("enable:false: the peer is still reachable".into()),
        (other, took) => report.push(format!("enable:false: connect failed after {took:?} ({other:?})")),
    }

    configure(client, config(zero_shape(), None, true, "enabled", Some(1))).await?;
    let took = connected(peer, port, "enable:true").await?;
    report.push(format!("enable:true: connected in {took:?}"));
    step(client, "checked").await?;
    Ok(report.join("; "))
}

async fn latency(client: &Client, run: &RunParameters, me: u64, peer: IpAddr, port: u16) -> Result<String, String> {
    let latency_ms: u64 = int_param(run, "latency_ms")?;
    let listener = if me == 2 { Some(serve(bind(client, port).await?)) } else { None };
    step(client, "listening").await?;
    let base = if me == 1 { connected(peer, port, "baseline").await? } else { Duration::ZERO };
    // On a kernel without sch_netem the runner stops the run here.
    let shape = LinkShape { latency: latency_ms * 1_000_000, ..zero_shape() };
    configure(client, config(shape, None, true, "latency", None)).await?;
    let mut report = format!("latency {latency_ms} ms applied");
    if me == 1 {
        let took = connected(peer, port, "with latency").await?;
        // The handshake crosses both ends' egress once each.
        if took < base + Duration::from_millis(2 * latency_ms) {
            return Err(format!(
                "connect took {took:?}, expected at least {:?} more than {base:?}",
                Duration::from_millis(2 * latency_ms)
            ));
        }
        report = format!("connect {base:?} before, {took:?} with {latency_ms} ms each way");
    }
    step(client, "checked").await?;
    if let Some(server) = listener {
        server.abort();
    }
    Ok(report)
}

/// Publishes a config for another hostname, as a plan with a wrong $HOSTNAME would: the SDK's
/// configure_network always uses its own, so the topic is written directly.
async fn unknown_host(client: &Client, run: &RunParameters, me: u64) -> Result<String, String> {
    let host = run.test_instance_params.get("host").cloned().unwrap_or_else(|| "typo-host".into());
    if me == 1 {
        let cfg = config(zero_shape(), None, true, "unknown-host", Some(1));
        let payload = serde_json::to_value(&cfg).map_err(|e| format!("encoding the config: {e}"))?;
        client
            .publish(format!("network:{host}"), Cow::Owned(payload))
            .await
            .map_err(|e| format!("publish network:{host}: {e}"))?;
        // The runner stops the run here; a callback (or none) means it did not.
        return match timeout(STEP_TIMEOUT, client.barrier("unknown-host", 1)).await {
            Ok(Ok(())) => Ok(format!("a config published for host {host} was applied: is it this instance?")),
            Ok(Err(e)) => Err(format!("barrier unknown-host: {e}")),
            Err(_) => Err(format!(
                "no callback within {STEP_TIMEOUT:?} for the config published for host {host}, and the run was not stopped"
            )),
        };
    }
    step(client, "unknown-host-done").await?;
    Ok("waited".into())
}
