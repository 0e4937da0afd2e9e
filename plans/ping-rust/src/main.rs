//! ping-rust: every instance pings every other instance over TCP on the data network.
//!
//! What one instance does:
//!  1. joins the run (`Client::new_and_init`),
//!  2. listens on `<data-network ip>:<port>` and answers pings from any number of peers,
//!  3. publishes `{"seq": <global seq>, "addr": "<ip>:<port>"}` on topic `peers` and reads the
//!     topic until it holds one entry per instance,
//!  4. dials every other peer and does `rounds` ping/pong exchanges of `payload_size` bytes with
//!     each, measuring round-trip times (N instances make N*(N-1) connections in all),
//!  5. signals state `done` and waits until all N instances have signalled it (so nobody stops
//!     listening while others still ping it),
//!  6. records a summary message and its outcome: success, or failure with the reason.
//!
//! Wire protocol (data network, TCP): a frame is a 4-byte big-endian length followed by that many
//! payload bytes. The dialer sends a frame, the listener sends the same frame back, the dialer
//! checks it byte for byte. The dialer half-closes the connection when its rounds are done.
//!
//! Facts about the `testground` 0.4.0 SDK (crates.io) this plan relies on (read from its source):
//!  - `Client::new_and_init().await -> Result<Client, Box<dyn std::error::Error>>` parses the
//!    environment with clap (`RunParameters::try_parse`), connects to the hard-coded
//!    `testground-sync-service:5050` (SYNC_SERVICE_HOST is ignored), waits for the
//!    `network-initialized` barrier when TEST_SIDECAR is true, then signals AND waits on
//!    `initialized_global` (target TEST_INSTANCE_COUNT) and `initialized_group_<id>` (target
//!    TEST_GROUP_INSTANCE_COUNT). The error type is not `Send`: keep it out of spawned tasks.
//!    clap also reads argv: the binary must be started without arguments.
//!  - `client.run_parameters() -> RunParameters` (a clone; public fields): `test_instance_count:
//!    u64`, `test_group_id: String`, `test_instance_params: HashMap<String, String>` (values are
//!    strings; the runner fills in manifest defaults), `test_subnet: IpNetwork`, `test_sidecar`.
//!  - `RunParameters::data_network_ip() -> io::Result<Option<IpAddr>>`: the first local address
//!    inside TEST_SUBNET, or always 127.0.0.1 when TEST_SIDECAR is false.
//!  - `client.global_seq()` / `client.group_seq()`: u64 claimed during init, starting at 1.
//!  - `client.publish(topic, impl Into<Cow<'static, serde_json::Value>>).await -> Result<u64,
//!    Error>` (the message's seq in the topic). A bare `Value` does not convert: pass
//!    `Cow::Owned(value)`.
//!  - `client.subscribe(topic, capacity).await -> impl Stream<Item = Result<Value, Error>>`; the
//!    topic is replayed from its first message. The stream is a bounded channel: while it is
//!    full, the SDK's background task (and so every other sync call) stalls. Drop it when done.
//!  - `client.signal(state)`, `client.barrier(state, target)`, `client.signal_and_wait(state,
//!    target)`, all `-> Result<_, Error>`. `barrier(state, 0)` means "all instances".
//!  - `client.record_message(msg)` only prints `{"event":{"message_event":...}}` on stdout.
//!  - `record_success(self)`, `record_failure(self, error)`, `record_crash(self, error, stack)`
//!    consume the client (it is `Clone`), print the event on stdout and publish it to the run's
//!    `run_events`, and return once the sync service acknowledged it.
//!  - Sync-service trouble after init (connection lost, unexpected reply) usually surfaces as a
//!    panic inside an SDK call, not as an `Err`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testground::client::Client;
use testground::RunParameters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_stream::StreamExt;

/// Limit for one dial, one write or one read, so that a broken peer fails the run instead of
/// hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for the sync-service steps that wait for the other instances.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// Outgoing connections one instance keeps open at the same time (keeps file descriptors bounded
/// for large runs; every instance starts with a different peer, so the load is spread evenly).
const MAX_CONCURRENT_DIALS: usize = 32;
/// Largest frame the listener accepts.
const MAX_FRAME: u32 = 16 << 20;
/// Topic on which instances publish their listen addresses.
const PEERS_TOPIC: &str = "peers";
/// State every instance signals when it has pinged all its peers.
const DONE_STATE: &str = "done";

/// The test case parameters (manifest.toml `[testcases.params]`).
struct Params {
    port: u16,
    rounds: u32,
    payload_size: u32,
}

impl Params {
    fn from_run_parameters(run: &RunParameters) -> Result<Self, String> {
        Ok(Params {
            port: int_param(run, "port")?,
            rounds: int_param(run, "rounds")?,
            payload_size: int_param(run, "payload_size")?,
        })
    }
}

/// Reads an integer parameter. Like sdk-go's `IntParam`, a missing parameter is an error: the
/// runner must pass every manifest default in TEST_INSTANCE_PARAMS.
fn int_param<T: std::str::FromStr>(run: &RunParameters, name: &str) -> Result<T, String> {
    let value = run
        .test_instance_params
        .get(name)
        .ok_or_else(|| format!("parameter `{name}` missing from TEST_INSTANCE_PARAMS"))?;
    value.trim().parse().map_err(|_| {
        let kind = std::any::type_name::<T>();
        format!("parameter `{name}` = {value:?} is not a valid integer of type {kind}")
    })
}

/// One entry of the `peers` topic.
struct Peer {
    seq: u64,
    addr: SocketAddr,
}

/// Round-trip times measured against one peer.
struct PeerResult {
    rtts: Vec<Duration>,
}

/// What the listener side saw; shared between the accept loop and the connection tasks.
#[derive(Default)]
struct ListenerStats {
    accepted: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Without a working sync service there is nobody to report to: just say why and exit.
    let client = match Client::new_and_init().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("ping-rust: could not initialise the Testground client: {e}");
            return ExitCode::FAILURE;
        }
    };

    match run(&client).await {
        Ok(summary) => {
            client.record_message(summary);
            match client.record_success().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ping-rust: could not record success: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(Failure {
            message,
            signalled_done,
        }) => {
            eprintln!("ping-rust: {message}");
            // Still count ourselves as done, so that the other instances are not left waiting
            // on the `done` barrier until the run times out.
            if !signalled_done {
                let _ = timeout(IO_TIMEOUT, client.signal(DONE_STATE)).await;
            }
            if let Err(e) = client.record_failure(message).await {
                eprintln!("ping-rust: could not record failure: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Why an instance failed, and whether it already signalled `done`.
struct Failure {
    message: String,
    signalled_done: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            signalled_done: false,
        }
    }
}

/// The whole test case; returns the summary message.
async fn run(client: &Client) -> Result<String, Failure> {
    let run_params = client.run_parameters();
    let params = Params::from_run_parameters(&run_params)?;
    let instances = run_params.test_instance_count;
    let my_seq = client.global_seq();

    // 1. Our address on the data network (the interface inside TEST_SUBNET).
    let ip: IpAddr = run_params
        .data_network_ip()
        .map_err(|e| format!("listing network interfaces: {e}"))?
        .ok_or_else(|| {
            format!(
                "no local address inside the data network TEST_SUBNET={}",
                run_params.test_subnet
            )
        })?;
    let my_addr = SocketAddr::new(ip, params.port);

    // 2. Listen before telling anyone where we are.
    let listener = TcpListener::bind(my_addr)
        .await
        .map_err(|e| format!("binding the listener on {my_addr}: {e}"))?;
    let stats = Arc::new(ListenerStats::default());
    let accept_loop = tokio::spawn(serve(listener, stats.clone()));

    // 3. Publish our address, then collect everyone's (our own entry included).
    // (`publish` takes `impl Into<Cow<'static, Value>>`, which a plain `Value` is not: wrap it.)
    let entry = serde_json::json!({ "seq": my_seq, "addr": my_addr.to_string() });
    client
        .publish(PEERS_TOPIC, Cow::Owned(entry))
        .await
        .map_err(|e| format!("publishing our address on topic `{PEERS_TOPIC}`: {e}"))?;
    let peers = timeout(SYNC_TIMEOUT, collect_peers(client, instances))
        .await
        .map_err(|_| {
            format!("timed out after {SYNC_TIMEOUT:?} waiting for {instances} entries on topic `{PEERS_TOPIC}`")
        })??;
    match peers.get(&my_seq) {
        Some(me) if me.addr == my_addr => {}
        _ => {
            return Err(format!(
                "our own entry (seq {my_seq}, {my_addr}) is missing from topic `{PEERS_TOPIC}`"
            )
            .into())
        }
    }

    // 4. Ping every other peer.
    let started = Instant::now();
    let results = ping_all(my_seq, &peers, &params).await?;
    let elapsed = started.elapsed();

    // 5. Wait until everybody has pinged everybody; only then stop answering pings.
    client
        .signal(DONE_STATE)
        .await
        .map_err(|e| format!("signalling `{DONE_STATE}`: {e}"))?;
    let waited = timeout(SYNC_TIMEOUT, client.barrier(DONE_STATE, instances)).await;
    let barrier_error = match waited {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("barrier on `{DONE_STATE}`: {e}")),
        Err(_) => Some(format!(
            "timed out after {SYNC_TIMEOUT:?} waiting for {instances} instances to reach `{DONE_STATE}`"
        )),
    };
    if let Some(message) = barrier_error {
        return Err(Failure {
            message,
            signalled_done: true,
        });
    }
    accept_loop.abort();

    let listener_errors = stats.errors.lock().expect("listener stats lock").clone();
    if !listener_errors.is_empty() {
        return Err(Failure {
            message: format!("answering pings: {}", listener_errors.join("; ")),
            signalled_done: true,
        });
    }

    // 6. Summary.
    let rtts: Vec<Duration> = results.into_iter().flat_map(|r| r.rtts).collect();
    let rtt = match (rtts.iter().min(), rtts.iter().max()) {
        (Some(min), Some(max)) => {
            let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
            format!(
                "rtt min/avg/max = {}/{}/{} µs",
                min.as_micros(),
                avg.as_micros(),
                max.as_micros()
            )
        }
        _ => "no rtt samples (rounds = 0)".to_string(),
    };
    Ok(format!(
        "ping-rust: instance seq {my_seq} (group {}) at {my_addr} pinged {} peer(s) x {} round(s) of {} B \
         in {} ms; {rtt}; answered {} incoming connections",
        run_params.test_group_id,
        peers.len() - 1,
        params.rounds,
        params.payload_size,
        elapsed.as_millis(),
        stats.accepted.load(Ordering::Relaxed),
    ))
}

/// Reads topic `peers` until it holds `instances` distinct entries, keyed by global seq.
async fn collect_peers(client: &Client, instances: u64) -> Result<BTreeMap<u64, Peer>, String> {
    // The stream is read continuously and dropped once complete, so it cannot stall the SDK for
    // long; room for every entry (up to a bound) avoids even short stalls.
    let capacity = usize::try_from(instances).unwrap_or(1024).clamp(1, 1024);
    let mut stream = client.subscribe(PEERS_TOPIC, capacity).await;
    let mut peers = BTreeMap::new();
    while (peers.len() as u64) < instances {
        let value = match stream.next().await {
            Some(Ok(value)) => value,
            Some(Err(e)) => return Err(format!("subscription to `{PEERS_TOPIC}`: {e}")),
            None => return Err(format!("subscription to `{PEERS_TOPIC}` ended early")),
        };
        let peer = parse_peer(&value)
            .ok_or_else(|| format!("malformed entry on topic `{PEERS_TOPIC}`: {value}"))?;
        if let Some(previous) = peers.insert(peer.seq, peer) {
            return Err(format!(
                "two entries on topic `{PEERS_TOPIC}` with seq {}",
                previous.seq
            ));
        }
    }
    Ok(peers)
}

fn parse_peer(value: &serde_json::Value) -> Option<Peer> {
    Some(Peer {
        seq: value.get("seq")?.as_u64()?,
        addr: value.get("addr")?.as_str()?.parse().ok()?,
    })
}

/// Pings every peer except ourselves, at most `MAX_CONCURRENT_DIALS` at a time. Fails with the
/// first error (the others are cancelled).
async fn ping_all(
    my_seq: u64,
    peers: &BTreeMap<u64, Peer>,
    params: &Params,
) -> Result<Vec<PeerResult>, String> {
    // Start with the peer after us (seq order, wrapping around): every instance starts somewhere
    // else, so no listener gets everybody's first dial at once.
    let (after, before): (Vec<&Peer>, Vec<&Peer>) = peers
        .values()
        .filter(|p| p.seq != my_seq)
        .partition(|p| p.seq > my_seq);
    let order = after.into_iter().chain(before);

    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_DIALS));
    let mut tasks = JoinSet::new();
    for peer in order {
        let (seq, addr) = (peer.seq, peer.addr);
        let (rounds, payload_size) = (params.rounds, params.payload_size);
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            ping_peer(my_seq, addr, rounds, payload_size)
                .await
                .map_err(|e| format!("pinging peer seq {seq} at {addr}: {e}"))
        });
    }

    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| format!("ping task died: {e}"))?;
        results.push(result?);
    }
    Ok(results)
}

/// Dials one peer and does `rounds` ping/pong exchanges with it.
async fn ping_peer(
    my_seq: u64,
    addr: SocketAddr,
    rounds: u32,
    payload_size: u32,
) -> Result<PeerResult, String> {
    let mut stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial timed out after {IO_TIMEOUT:?}"))?
        .map_err(|e| format!("dial: {e}"))?;
    // Each ping is a single small write; don't let Nagle's algorithm delay it.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;

    let mut frame = Vec::with_capacity(4 + payload_size as usize);
    let mut echo = vec![0u8; 4 + payload_size as usize];
    let mut rtts = Vec::with_capacity(rounds as usize);
    for round in 1..=rounds {
        // A payload that differs per sender and per round, so a misrouted or stale echo shows up.
        frame.clear();
        frame.extend_from_slice(&payload_size.to_be_bytes());
        frame.extend((0..payload_size).map(|i| {
            (my_seq as u32)
                .wrapping_mul(31)
                .wrapping_add(round)
                .wrapping_add(i) as u8
        }));

        let sent = Instant::now();
        io_step(stream.write_all(&frame), "write", round, rounds).await?;
        io_step(stream.read_exact(&mut echo), "read", round, rounds).await?;
        rtts.push(sent.elapsed());

        if echo != frame {
            return Err(format!(
                "round {round}/{rounds}: the echoed frame differs from the ping"
            ));
        }
    }
    // Half-close: the listener sees end-of-stream and closes its side.
    io_step(stream.shutdown(), "shutdown", rounds, rounds).await?;
    Ok(PeerResult { rtts })
}

/// Runs one socket operation under `IO_TIMEOUT`, naming the operation and round on failure.
async fn io_step<T>(
    op: impl std::future::Future<Output = std::io::Result<T>>,
    what: &str,
    round: u32,
    rounds: u32,
) -> Result<T, String> {
    match timeout(IO_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("round {round}/{rounds}: {what}: {e}")),
        Err(_) => Err(format!(
            "round {round}/{rounds}: {what} timed out after {IO_TIMEOUT:?}"
        )),
    }
}

/// Accept loop: answers each incoming connection in its own task, until aborted.
async fn serve(listener: TcpListener, stats: Arc<ListenerStats>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let stats = stats.clone();
                tokio::spawn(async move {
                    if let Err(e) = echo(stream).await {
                        stats
                            .errors
                            .lock()
                            .expect("listener stats lock")
                            .push(format!("connection from {from}: {e}"));
                    }
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: note it, back off a little, keep serving.
                stats
                    .errors
                    .lock()
                    .expect("listener stats lock")
                    .push(format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Listener side of one connection: sends every frame back until the dialer closes.
async fn echo(mut stream: TcpStream) -> Result<(), String> {
    stream
        .set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let mut payload = Vec::new();
    loop {
        let len = match timeout(IO_TIMEOUT, stream.read_u32()).await {
            Err(_) => return Err(format!("no ping for {IO_TIMEOUT:?}")),
            // End of stream between frames: the dialer is done.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(format!("reading a frame length: {e}")),
            Ok(Ok(len)) => len,
        };
        if len > MAX_FRAME {
            return Err(format!(
                "frame of {len} bytes is larger than the {MAX_FRAME}-byte limit"
            ));
        }
        payload.resize(len as usize, 0);
        timeout(IO_TIMEOUT, stream.read_exact(&mut payload))
            .await
            .map_err(|_| format!("reading a {len}-byte payload timed out after {IO_TIMEOUT:?}"))?
            .map_err(|e| format!("reading a {len}-byte payload: {e}"))?;

        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&payload);
        timeout(IO_TIMEOUT, stream.write_all(&frame))
            .await
            .map_err(|_| format!("writing the echo timed out after {IO_TIMEOUT:?}"))?
            .map_err(|e| format!("writing the echo: {e}"))?;
    }
}
