//! Sync service benchmark: real websocket clients against the server on loopback.
//!
//! `cargo bench -p tg-nix-sync [-- N...]` (default client counts: 100 1000 10000). For each N:
//! 1. barrier: every client signals a state, then waits on it with target N; per client, the time
//!    from the last signal_entry reply (over all clients) to its barrier reply;
//! 2. throughput: every client sends signal_entry requests, 8 in flight, for 3 s;
//! 3. fan-out: one publisher, N subscribers, M messages; deliveries per second and the latency from
//!    publish to delivery.
//!
//! The server runs in this process (a multi-thread tokio runtime). The clients run in a child
//! process (this same binary, told so by an environment variable): that keeps each process at one
//! file descriptor per client, so 10,000 clients fit under a 20,000 limit that cannot be raised,
//! and it lets us measure the server's own CPU time. Both share the machine's cores, so wall-clock
//! figures are for the pair; "server µs/op" is the server process's CPU time per operation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use tg_nix_sync::{serve, ServerConfig, Service};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<TcpStream>;

/// Set in the child: the server's address.
const CLIENT_ENV: &str = "TG_NIX_SYNC_BENCH_SERVER";
const ROUNDS: usize = 5;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
const PIPELINE_DEPTH: usize = 8;
/// Deliveries per fan-out run; M = this / N messages (at least 10).
const FANOUT_DELIVERIES: usize = 500_000;
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors a process needs besides one per client.
const FD_SLACK: u64 = 64;

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if let Ok(addr) = std::env::var(CLIENT_ENV) {
        let (Ok(addr), [n]) = (addr.parse(), numbers.as_slice()) else {
            eprintln!("client mode needs {CLIENT_ENV}=<addr> and one client count");
            std::process::exit(2);
        };
        let code = match runtime.block_on(clients::run(addr, *n)) {
            Ok(()) => 0,
            Err(e) => {
                println!("   failed: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let counts = if numbers.is_empty() { vec![100, 1000, 10_000] } else { numbers };
    let fd_limit = tg_nix_sync::raise_fd_limit();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("tg-nix-sync bench: {cores} cores, open-files limit {fd_limit}, clients {counts:?}");
    let rows = runtime.block_on(server_side(counts, fd_limit));
    print_table(&rows);
}

// ---- the server process -------------------------------------------------------------------------

enum Row {
    Skipped { n: usize, why: String },
    Done { n: usize, results: HashMap<String, f64>, server_us_per_op: f64 },
}

async fn server_side(counts: Vec<usize>, fd_limit: u64) -> Vec<Row> {
    let listener = (|| {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        // Thousands of clients connect at once; the default backlog would drop some SYNs.
        socket.listen(4096)
    })();
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1: {e}");
            return Vec::new();
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("listener address: {e}");
            return Vec::new();
        }
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, Service::new(), ServerConfig::default(), stop.clone()));

    let mut rows = Vec::new();
    for n in counts {
        let needed = n as u64 + FD_SLACK;
        if needed > fd_limit {
            let why =
                format!("needs ~{needed} open files per process, the limit is {fd_limit} and cannot be raised here");
            println!("\n== {n} clients: skipped, {why}");
            rows.push(Row::Skipped { n, why });
            continue;
        }
        println!("\n== {n} clients");
        rows.push(match run_child(addr, n).await {
            Ok(row) => row,
            Err(why) => {
                println!("   {why}");
                Row::Skipped { n, why }
            }
        });
    }
    stop.cancel();
    let _ = server.await;
    rows
}

/// Runs the client process for `n` clients, echoing its progress lines, sampling this process's
/// CPU time at its phase marks, and collecting its results.
async fn run_child(addr: SocketAddr, n: usize) -> Result<Row, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg(n.to_string())
        .env(CLIENT_ENV, addr.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the client process: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the client process")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut marks = HashMap::new();
    let mut results = HashMap::new();
    let read_all = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(mark) = line.strip_prefix("@mark ") {
                marks.insert(mark.to_owned(), cpu_time());
            } else if let Some(rest) = line.strip_prefix("@result ") {
                for kv in rest.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        results.insert(k.to_owned(), v.parse::<f64>().unwrap_or(f64::NAN));
                    }
                }
            } else {
                println!("{line}");
            }
        }
    };
    tokio::time::timeout(PHASE_TIMEOUT * 4, read_all).await.map_err(|_| "client process timed out".to_string())?;
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("client process failed ({status})"));
    }
    let server_cpu = match (marks.get("throughput-start"), marks.get("throughput-end")) {
        (Some(a), Some(b)) => b.saturating_sub(*a),
        _ => return Err("client process reported no throughput phase".into()),
    };
    let ops = results.get("ops").copied().unwrap_or(f64::NAN);
    let server_us_per_op = server_cpu.as_secs_f64() * 1e6 / ops;
    println!("   server CPU during throughput: {server_cpu:.2?} = {server_us_per_op:.2} µs per op");
    Ok(Row::Done { n, results, server_us_per_op })
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the valid pointer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: initialised by the successful call above (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>7} | {:>9} {:>9} {:>9} | {:>12} {:>10} {:>9} | {:>6} {:>12} {:>8} {:>8}",
        "clients",
        "bar p50",
        "bar p99",
        "bar max",
        "signal op/s",
        "client µs",
        "server µs",
        "fan M",
        "delivered/s",
        "fan p50",
        "fan p99"
    );
    println!(
        "{:>7} | {:>29} | {:>34} | {:>38}",
        "", "ms after the last signal", "per op (CPU)", "ms publish to delivery"
    );
    println!("{}", "-".repeat(120));
    for row in rows {
        match row {
            Row::Skipped { n, why } => println!("{n:>7} | skipped: {why}"),
            Row::Done { n, results, server_us_per_op } => {
                let r = |k: &str| results.get(k).copied().unwrap_or(f64::NAN);
                println!(
                    "{n:>7} | {:>9.2} {:>9.2} {:>9.2} | {:>12.0} {:>10.2} {:>9.2} | {:>6.0} {:>12.0} {:>8.2} {:>8.2}",
                    r("barrier_p50_ms"),
                    r("barrier_p99_ms"),
                    r("barrier_max_ms"),
                    r("ops_per_sec"),
                    r("client_us_per_op"),
                    server_us_per_op,
                    r("fan_messages"),
                    r("fan_delivered_per_sec"),
                    r("fan_p50_ms"),
                    r("fan_p99_ms"),
                );
            }
        }
    }
}

// ---- the client process -------------------------------------------------------------------------

mod clients {
    use super::*;

    pub(super) async fn run(addr: SocketAddr, n: usize) -> Result<(), String> {
        let started = Instant::now();
        let clients = connect_all(addr, n).await?;
        println!("   connected {n} clients in {:.2?}", started.elapsed());

        let (clients, barrier) = phase("barrier", barrier_rounds(clients, n)).await?;
        println!(
            "   barrier ({ROUNDS} rounds): release after the last signal: p50 {} p99 {} max {} ms",
            ms(barrier.p50),
            ms(barrier.p99),
            ms(barrier.max)
        );

        println!("@mark throughput-start");
        let cpu_before = cpu_time();
        let (clients, ops, elapsed) = phase("throughput", throughput(clients, n)).await?;
        let client_cpu = cpu_time().saturating_sub(cpu_before);
        println!("@mark throughput-end");
        let ops_per_sec = ops as f64 / elapsed.as_secs_f64();
        let client_us_per_op = client_cpu.as_secs_f64() * 1e6 / ops as f64;
        println!(
            "   throughput: {ops} signal_entry in {elapsed:.2?} = {ops_per_sec:.0} ops/s (depth {PIPELINE_DEPTH} per client); client CPU {client_us_per_op:.2} µs per op"
        );

        let m = (FANOUT_DELIVERIES / n).max(10);
        let (clients, fan, delivered_per_sec) = phase("fan-out", fanout(addr, clients, n, m)).await?;
        println!(
            "   fan-out: {m} messages to {n} subscribers: {delivered_per_sec:.0} deliveries/s, latency p50 {} p99 {} max {} ms",
            ms(fan.p50),
            ms(fan.p99),
            ms(fan.max)
        );
        drop(clients);
        println!(
            "@result barrier_p50_ms={} barrier_p99_ms={} barrier_max_ms={} ops={ops} ops_per_sec={ops_per_sec} client_us_per_op={client_us_per_op} fan_messages={m} fan_delivered_per_sec={delivered_per_sec} fan_p50_ms={} fan_p99_ms={}",
            ms(barrier.p50),
            ms(barrier.p99),
            ms(barrier.max),
            ms(fan.p50),
            ms(fan.p99)
        );
        Ok(())
    }

    async fn phase<T>(name: &str, f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
        tokio::time::timeout(PHASE_TIMEOUT, f)
            .await
            .map_err(|_| format!("{name}: timed out after {PHASE_TIMEOUT:?}"))?
    }

    async fn connect_all(addr: SocketAddr, n: usize) -> Result<Vec<Ws>, String> {
        let results: Vec<Result<Ws, String>> =
            futures::stream::iter(0..n).map(|_| connect(addr)).buffer_unordered(256).collect().await;
        let mut clients = Vec::with_capacity(n);
        for r in results {
            clients.push(r.map_err(|e| format!("cannot open {n} clients: {e} (after {} opened)", clients.len()))?);
        }
        Ok(clients)
    }

    async fn connect(addr: SocketAddr) -> Result<Ws, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        // Small read buffers: tungstenite allocates and zeroes one per connection.
        let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
        let (ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    }

    async fn recv_text(ws: &mut Ws) -> Result<String, String> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(f))) => return Err(format!("server closed: {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection closed".into()),
            }
        }
    }

    async fn request(ws: &mut Ws, text: String) -> Result<String, String> {
        ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
        recv_text(ws).await
    }

    async fn join_all<T: Send + 'static>(
        tasks: Vec<tokio::task::JoinHandle<Result<T, String>>>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.map_err(|e| format!("client task: {e}"))??);
        }
        Ok(out)
    }

    async fn barrier_rounds(mut clients: Vec<Ws>, n: usize) -> Result<(Vec<Ws>, Percentiles), String> {
        let mut latencies = Vec::with_capacity(n * ROUNDS);
        for round in 0..ROUNDS {
            let state = format!("barrier-{n}-{round}");
            let tasks: Vec<_> = clients
                .drain(..)
                .map(|mut ws| {
                    let state = state.clone();
                    tokio::spawn(async move {
                        request(
                            &mut ws,
                            format!(r#"{{"id":"0","is_cancel":false,"signal_entry":{{"state":"{state}"}}}}"#),
                        )
                        .await?;
                        let signalled = Instant::now();
                        let reply = request(
                            &mut ws,
                            format!(r#"{{"id":"1","is_cancel":false,"barrier":{{"state":"{state}","target":{n}}}}}"#),
                        )
                        .await?;
                        let released = Instant::now();
                        if reply != r#"{"id":"1","error":"","publish":null,"subscribe":"","signal_entry":null}"# {
                            return Err(format!("unexpected barrier reply {reply}"));
                        }
                        Ok((ws, signalled, released))
                    })
                })
                .collect();
            let results = join_all(tasks).await?;
            let last_signal = results.iter().map(|r| r.1).max().ok_or("no clients")?;
            for (ws, _, released) in results {
                // A release can reach a client before the last signaller has read its own reply;
                // that counts as zero.
                latencies.push(released.saturating_duration_since(last_signal));
                clients.push(ws);
            }
        }
        Ok((clients, Percentiles::of(latencies)))
    }

    async fn throughput(mut clients: Vec<Ws>, n: usize) -> Result<(Vec<Ws>, u64, Duration), String> {
        let started = Instant::now();
        let deadline = started + THROUGHPUT_TIME;
        let state = format!("throughput-{n}");
        let tasks: Vec<_> = clients
            .drain(..)
            .map(|mut ws| {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut next_id = 0u64;
                    let mut in_flight = 0usize;
                    let mut done = 0u64;
                    loop {
                        if Instant::now() < deadline {
                            while in_flight < PIPELINE_DEPTH {
                                let req = format!(
                                    r#"{{"id":"{next_id}","is_cancel":false,"signal_entry":{{"state":"{state}"}}}}"#
                                );
                                ws.feed(Message::text(req)).await.map_err(|e| e.to_string())?;
                                next_id += 1;
                                in_flight += 1;
                            }
                            ws.flush().await.map_err(|e| e.to_string())?;
                        } else if in_flight == 0 {
                            break;
                        }
                        recv_text(&mut ws).await?;
                        in_flight -= 1;
                        done += 1;
                        // Take every reply already here before sending more.
                        while in_flight > 0 {
                            match ws.next().now_or_never() {
                                Some(Some(Ok(Message::Text(_)))) => {
                                    in_flight -= 1;
                                    done += 1;
                                }
                                Some(Some(Ok(_))) => {}
                                Some(Some(Err(e))) => return Err(e.to_string()),
                                Some(None) => return Err("connection closed".into()),
                                None => break,
                            }
                        }
                    }
                    Ok((ws, done))
                })
            })
            .collect();
        let results = join_all(tasks).await?;
        let elapsed = started.elapsed();
        let mut total = 0;
        for (ws, done) in results {
            total += done;
            clients.push(ws);
        }
        Ok((clients, total, elapsed))
    }

    async fn fanout(
        addr: SocketAddr,
        mut clients: Vec<Ws>,
        n: usize,
        m: usize,
    ) -> Result<(Vec<Ws>, Percentiles, f64), String> {
        let topic = format!("fanout-{n}");
        let ready_state = format!("fanout-ready-{n}");
        let epoch = Instant::now();
        let tasks: Vec<_> = clients
            .drain(..)
            .map(|mut ws| {
                let (topic, ready_state) = (topic.clone(), ready_state.clone());
                tokio::spawn(async move {
                    ws.send(Message::text(format!(
                        r#"{{"id":"sub","is_cancel":false,"subscribe":{{"topic":"{topic}"}}}}"#
                    )))
                    .await
                    .map_err(|e| e.to_string())?;
                    // Replies come in request order, so this one means the subscription is in place.
                    request(
                        &mut ws,
                        format!(r#"{{"id":"ready","is_cancel":false,"signal_entry":{{"state":"{ready_state}"}}}}"#),
                    )
                    .await?;
                    let mut latencies = Vec::with_capacity(m);
                    let mut last = Instant::now();
                    for _ in 0..m {
                        let reply = recv_text(&mut ws).await?;
                        last = Instant::now();
                        let sent = sent_at(&reply).ok_or_else(|| format!("unexpected delivery {reply}"))?;
                        latencies.push((last - epoch).saturating_sub(Duration::from_nanos(sent)));
                    }
                    Ok((ws, latencies, last))
                })
            })
            .collect();

        let mut publisher = connect(addr).await?;
        // Wait until every subscriber is in place, then publish as fast as replies come back.
        request(
            &mut publisher,
            format!(r#"{{"id":"wait","is_cancel":false,"barrier":{{"state":"{ready_state}","target":{n}}}}}"#),
        )
        .await?;
        let first_publish = Instant::now();
        for i in 0..m {
            let t = epoch.elapsed().as_nanos() as u64;
            request(
                &mut publisher,
                format!(r#"{{"id":"{i}","is_cancel":false,"publish":{{"topic":"{topic}","payload":{t}}}}}"#),
            )
            .await?;
        }
        let results = join_all(tasks).await?;
        let mut latencies = Vec::with_capacity(n * m);
        let mut last_delivery = first_publish;
        for (ws, lat, last) in results {
            latencies.extend(lat);
            last_delivery = last_delivery.max(last);
            clients.push(ws);
        }
        let rate = (n * m) as f64 / (last_delivery - first_publish).as_secs_f64();
        Ok((clients, Percentiles::of(latencies), rate))
    }

    /// The publish time carried in a delivery: the payload is a number, so the subscribe field is
    /// `"<digits>"`.
    fn sent_at(reply: &str) -> Option<u64> {
        let start = reply.find(r#""subscribe":""#)? + r#""subscribe":""#.len();
        let rest = &reply[start..];
        rest[..rest.find('"')?].parse().ok()
    }

    #[derive(Clone, Copy)]
    struct Percentiles {
        p50: Duration,
        p99: Duration,
        max: Duration,
    }

    impl Percentiles {
        fn of(mut v: Vec<Duration>) -> Self {
            v.sort_unstable();
            let at =
                |q: f64| v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
            Percentiles { p50: at(0.50), p99: at(0.99), max: v.last().copied().unwrap_or_default() }
        }
    }

    fn ms(d: Duration) -> String {
        format!("{:.2}", d.as_secs_f64() * 1000.0)
    }
}
