//! The sync service over real websockets: exact Testground frames in, exact replies out.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tg_nix_sync::{serve, ServerConfig, Service};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// A safety net only: every wait below is for a message that must come.
const PATIENCE: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    service: Service,
    stop: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let service = Service::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, service.clone(), config, stop.clone()));
        Server { addr, service, stop, task }
    }

    async fn default() -> Server {
        Self::start(ServerConfig::default()).await
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr, "/").await
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task).await.expect("serve returns").expect("join").expect("serve ok");
    }
}

struct Client<S = TcpStream> {
    ws: WebSocketStream<S>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr, path: &str) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Client::handshake(tcp, addr, path).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn handshake(stream: S, addr: SocketAddr, path: &str) -> Client<S> {
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await.expect("handshake");
        Client { ws }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    async fn send_binary(&mut self, text: &str) {
        self.ws.send(Message::binary(text.as_bytes().to_vec())).await.expect("send");
    }

    /// The next message, whatever it is (pongs included).
    async fn next(&mut self) -> Option<Message> {
        match tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("a message within the patience limit") {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => panic!("websocket error: {e}"),
            None => None,
        }
    }

    /// The next reply; it must be a text frame.
    async fn recv(&mut self) -> String {
        match self.next().await {
            Some(Message::Text(t)) => t.as_str().to_owned(),
            other => panic!("expected a text reply, got {other:?}"),
        }
    }

    async fn request(&mut self, text: &str) -> String {
        self.send(text).await;
        self.recv().await
    }
}

fn publish_reply(id: &str, seq: u64) -> String {
    format!(r#"{{"id":"{id}","error":"","publish":{{"seq":{seq}}},"subscribe":"","signal_entry":null}}"#)
}

fn signal_reply(id: &str, seq: u64) -> String {
    format!(r#"{{"id":"{id}","error":"","publish":null,"subscribe":"","signal_entry":{{"seq":{seq}}}}}"#)
}

fn barrier_reply(id: &str) -> String {
    format!(r#"{{"id":"{id}","error":"","publish":null,"subscribe":"","signal_entry":null}}"#)
}

fn subscribe_reply(id: &str, payload: &serde_json::Value) -> String {
    let text = serde_json::to_string(&payload.to_string()).expect("string");
    format!(r#"{{"id":"{id}","error":"","publish":null,"subscribe":{text},"signal_entry":null}}"#)
}

#[tokio::test]
async fn publish_returns_the_new_log_length() {
    let server = Server::default().await;
    let mut c = server.client().await;
    let reply = c.request(r#"{"id":"0","is_cancel":false,"publish":{"topic":"t","payload":{"a":1}}}"#).await;
    assert_eq!(reply, r#"{"id":"0","error":"","publish":{"seq":1},"subscribe":"","signal_entry":null}"#);
    let reply = c.request(r#"{"id":"1","is_cancel":false,"publish":{"topic":"t","payload":"b"}}"#).await;
    assert_eq!(reply, publish_reply("1", 2));
    let reply = c.request(r#"{"id":"2","is_cancel":false,"publish":{"topic":"other","payload":null}}"#).await;
    assert_eq!(reply, publish_reply("2", 1));
    assert_eq!(server.service.topic_len("t"), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn signal_entry_counts_from_one() {
    let server = Server::default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let reply = a.request(r#"{"id":"0","is_cancel":false,"signal_entry":{"state":"s"}}"#).await;
    assert_eq!(reply, r#"{"id":"0","error":"","publish":null,"subscribe":"","signal_entry":{"seq":1}}"#);
    assert_eq!(b.request(r#"{"id":"0","is_cancel":false,"signal_entry":{"state":"s"}}"#).await, signal_reply("0", 2));
    assert_eq!(
        a.request(r#"{"id":"1","is_cancel":false,"signal_entry":{"state":"other"}}"#).await,
        signal_reply("1", 1)
    );
    assert_eq!(server.service.state_count("s"), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn barrier_replies_at_once_when_reached() {
    let server = Server::default().await;
    let mut c = server.client().await;
    let reply = c.request(r#"{"id":"0","is_cancel":false,"barrier":{"state":"s","target":0}}"#).await;
    assert_eq!(reply, r#"{"id":"0","error":"","publish":null,"subscribe":"","signal_entry":null}"#);
    server.service.signal_entry("s");
    assert_eq!(
        c.request(r#"{"id":"1","is_cancel":false,"barrier":{"state":"s","target":1}}"#).await,
        barrier_reply("1")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn barrier_waits_for_the_target() {
    let server = Server::default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(r#"{"id":"0","is_cancel":false,"barrier":{"state":"s","target":2}}"#).await;
    // Requests on a connection are applied in order, so the signal's reply coming first shows the
    // barrier is still pending at count 1.
    assert_eq!(a.request(r#"{"id":"1","is_cancel":false,"signal_entry":{"state":"s"}}"#).await, signal_reply("1", 1));
    assert_eq!(b.request(r#"{"id":"0","is_cancel":false,"signal_entry":{"state":"s"}}"#).await, signal_reply("0", 2));
    assert_eq!(a.recv().await, barrier_reply("0"));
    server.shutdown().await;
}

#[tokio::test]
async fn subscribe_replays_in_order_then_streams_payloads_as_json_text() {
    let server = Server::default().await;
    let mut publisher = server.client().await;
    let mut subscriber = server.client().await;
    let first = json!({"ip": "16.0.0.2", "port": 1234});
    let second = json!("quoted \"text\"");
    publisher.request(&format!(r#"{{"id":"0","publish":{{"topic":"t","payload":{first}}}}}"#)).await;
    publisher.request(&format!(r#"{{"id":"1","publish":{{"topic":"t","payload":{second}}}}}"#)).await;

    subscriber.send(r#"{"id":"7","is_cancel":false,"subscribe":{"topic":"t"}}"#).await;
    let reply = subscriber.recv().await;
    assert_eq!(
        reply,
        r#"{"id":"7","error":"","publish":null,"subscribe":"{\"ip\":\"16.0.0.2\",\"port\":1234}","signal_entry":null}"#
    );
    assert_eq!(subscriber.recv().await, subscribe_reply("7", &second));

    let third = json!([1, 2.5, null, {"nested": true}]);
    assert_eq!(
        publisher.request(&format!(r#"{{"id":"2","publish":{{"topic":"t","payload":{third}}}}}"#)).await,
        publish_reply("2", 3)
    );
    let reply = subscriber.recv().await;
    assert_eq!(reply, subscribe_reply("7", &third));
    // Every SDK parses the subscribe field as JSON text.
    let parsed: serde_json::Value = serde_json::from_str(&reply).expect("json");
    let payload: serde_json::Value =
        serde_json::from_str(parsed["subscribe"].as_str().expect("string")).expect("json text");
    assert_eq!(payload, third);
    server.shutdown().await;
}

#[tokio::test]
async fn binary_requests_get_text_replies() {
    let server = Server::default().await;
    let mut c = server.client().await;
    c.send_binary(r#"{"id":"0","is_cancel":false,"signal_entry":{"state":"s"}}"#).await;
    match c.next().await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), signal_reply("0", 1)),
        other => panic!("expected a text frame, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn js_frames_without_is_cancel_and_go_frames_with_newlines() {
    let server = Server::default().await;
    let mut c = Client::connect(server.addr, "/any/path").await;
    assert_eq!(c.request(r#"{"signal_entry":{"state":"s"},"id":"0"}"#).await, signal_reply("0", 1));
    assert_eq!(c.request(r#"{"publish":{"topic":"t","payload":{"x":1}},"id":"1"}"#).await, publish_reply("1", 1));
    assert_eq!(
        c.request("{\"id\":\"2\",\"is_cancel\":false,\"barrier\":{\"state\":\"s\",\"target\":1}}\n").await,
        barrier_reply("2")
    );
    server.shutdown().await;
}

/// The Rust SDK 0.4.0 session captured in compat reference §2.6, frame for frame (binary, as RS
/// sends them), with the runner's part (signalling states) done in-process.
#[tokio::test]
async fn rust_sdk_0_4_0_session() {
    let server = Server::default().await;
    let service = server.service.clone();
    let mut events = service.subscribe("run:RUNID:plan:PLAN:case:CASE:run_events");
    let mut c = server.client().await;
    let mut exchange = async |frame: &str| {
        c.send_binary(frame).await;
        c.recv().await
    };

    assert_eq!(
        exchange(r#"{"id":"0","is_cancel":false,"publish":{"topic":"run:RUNID:plan:PLAN:case:CASE:run_events","payload":{"stage_start_event":{"name":"network-initialized","group":"single"}}}}"#).await,
        r#"{"id":"0","error":"","publish":{"seq":1},"subscribe":"","signal_entry":null}"#
    );
    service.signal_entry("run:RUNID:plan:PLAN:case:CASE:states:network-initialized");
    assert_eq!(
        exchange(r#"{"id":"1","is_cancel":false,"barrier":{"state":"run:RUNID:plan:PLAN:case:CASE:states:network-initialized","target":1}}"#).await,
        r#"{"id":"1","error":"","publish":null,"subscribe":"","signal_entry":null}"#
    );
    assert_eq!(
        exchange(r#"{"id":"2","is_cancel":false,"publish":{"topic":"run:RUNID:plan:PLAN:case:CASE:run_events","payload":{"stage_end_event":{"name":"network-initialized","group":"single"}}}}"#).await,
        publish_reply("2", 2)
    );
    assert_eq!(
        exchange(r#"{"id":"3","is_cancel":false,"signal_entry":{"state":"run:RUNID:plan:PLAN:case:CASE:states:initialized_global"}}"#).await,
        r#"{"id":"3","error":"","publish":null,"subscribe":"","signal_entry":{"seq":1}}"#
    );
    assert_eq!(
        exchange(r#"{"id":"4","is_cancel":false,"barrier":{"state":"run:RUNID:plan:PLAN:case:CASE:states:initialized_global","target":1}}"#).await,
        barrier_reply("4")
    );
    assert_eq!(
        exchange(r#"{"id":"5","is_cancel":false,"signal_entry":{"state":"run:RUNID:plan:PLAN:case:CASE:states:initialized_group_single"}}"#).await,
        signal_reply("5", 1)
    );
    assert_eq!(
        exchange(r#"{"id":"6","is_cancel":false,"barrier":{"state":"run:RUNID:plan:PLAN:case:CASE:states:initialized_group_single","target":1}}"#).await,
        barrier_reply("6")
    );
    assert_eq!(
        exchange(r#"{"id":"7","is_cancel":false,"publish":{"topic":"run:RUNID:plan:PLAN:case:CASE:topics:addrs","payload":{"ip":"16.0.0.2","port":1234}}}"#).await,
        publish_reply("7", 1)
    );
    assert_eq!(
        exchange(r#"{"id":"8","is_cancel":false,"subscribe":{"topic":"run:RUNID:plan:PLAN:case:CASE:topics:addrs"}}"#)
            .await,
        r#"{"id":"8","error":"","publish":null,"subscribe":"{\"ip\":\"16.0.0.2\",\"port\":1234}","signal_entry":null}"#
    );
    let network = r#"{"network":"default","IPv4":null,"IPv6":null,"enable":true,"default":{"latency":100000000,"jitter":0,"bandwidth":1048576,"filter":0,"loss":0.0,"corrupt":0.0,"corrupt_corr":0.0,"reorder":0.0,"reorder_corr":0.0,"duplicate":0.0,"duplicate_corr":0.0},"rules":[{"latency":0,"jitter":0,"bandwidth":0,"filter":2,"loss":0.0,"corrupt":0.0,"corrupt_corr":0.0,"reorder":0.0,"reorder_corr":0.0,"duplicate":0.0,"duplicate_corr":0.0,"subnet":"16.0.0.3/32"}],"callback_state":"network-configured","routing_policy":"allow_all"}"#;
    let mut sidecar = service.subscribe("run:RUNID:plan:PLAN:case:CASE:topics:network:inst0");
    assert_eq!(
        exchange(&format!(r#"{{"id":"11","is_cancel":false,"publish":{{"topic":"run:RUNID:plan:PLAN:case:CASE:topics:network:inst0","payload":{network}}}}}"#)).await,
        publish_reply("11", 1)
    );
    // The runner, playing the sidecar, reads the config and signals its callback state.
    let config = sidecar.next().await.expect("network config");
    assert_eq!(config["callback_state"], "network-configured");
    assert_eq!(config["rules"][0]["subnet"], "16.0.0.3/32");
    service.signal_entry("run:RUNID:plan:PLAN:case:CASE:states:network-configured");
    assert_eq!(
        exchange(r#"{"id":"12","is_cancel":false,"barrier":{"state":"run:RUNID:plan:PLAN:case:CASE:states:network-configured","target":1}}"#).await,
        barrier_reply("12")
    );
    assert_eq!(
        exchange(r#"{"id":"13","is_cancel":false,"publish":{"topic":"run:RUNID:plan:PLAN:case:CASE:run_events","payload":{"success_event":{"group":"single"}}}}"#).await,
        publish_reply("13", 3)
    );
    // RS sends no Close frame: the connection just drops.
    drop(c);

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.next().await.expect("event"));
    }
    assert_eq!(*seen[0], json!({"stage_start_event":{"name":"network-initialized","group":"single"}}));
    assert_eq!(*seen[2], json!({"success_event":{"group":"single"}}));
    server.shutdown().await;
    // After serve returns, in-process subscriptions end.
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn malformed_requests_get_json_text_errors_and_the_connection_stays_usable() {
    let server = Server::default().await;
    let mut c = server.client().await;

    let reply = c.request(r#"{"id":"5","is_cancel":false,"barrier":{"state":"s","target":"two"}}"#).await;
    let prefix = r#"{"id":"5","error":"\"malformed request: "#;
    assert!(reply.starts_with(prefix), "{reply}");
    assert!(reply.ends_with(r#"\"","publish":null,"subscribe":"","signal_entry":null}"#), "{reply}");
    // The Rust SDK 0.4.0 parses the error field as JSON and panics unless it is JSON text.
    let parsed: serde_json::Value = serde_json::from_str(&reply).expect("json");
    let error: String = serde_json::from_str(parsed["error"].as_str().expect("string")).expect("error is JSON text");
    assert!(error.starts_with("malformed request: "), "{error}");

    let reply = c.request(r#"{"id":"6","is_cancel":false}"#).await;
    assert!(reply.starts_with(r#"{"id":"6","error":"\"malformed request: no operation"#), "{reply}");

    // No id to answer: nothing comes back, and the next request is answered normally.
    c.send("this is not json").await;
    c.send(r#"{"is_cancel":false,"signal_entry":{"state":"s"}}"#).await;
    // Unknown operations are ignored, like the Go service did.
    c.send(r#"{"id":"7","is_cancel":false,"signal_event":{"state":"s"}}"#).await;
    assert_eq!(c.request(r#"{"id":"8","is_cancel":false,"signal_entry":{"state":"s"}}"#).await, signal_reply("8", 1));
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_closes_only_that_connection() {
    let server = Server::start(ServerConfig { max_message_size: 1024, ..Default::default() }).await;
    let mut big = server.client().await;
    let mut other = server.client().await;
    assert_eq!(other.request(r#"{"id":"0","signal_entry":{"state":"s"}}"#).await, signal_reply("0", 1));

    let payload = "x".repeat(4096);
    big.send(&format!(r#"{{"id":"0","publish":{{"topic":"t","payload":"{payload}"}}}}"#)).await;
    match big.next().await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Size);
            assert!(frame.reason.contains("too big"), "{}", frame.reason);
        }
        other => panic!("expected a Close frame with code 1009, got {other:?}"),
    }

    assert_eq!(other.request(r#"{"id":"1","signal_entry":{"state":"s"}}"#).await, signal_reply("1", 2));
    assert_eq!(server.service.topic_len("t"), 0);
    let mut fresh = server.client().await;
    assert_eq!(fresh.request(r#"{"id":"0","publish":{"topic":"t","payload":1}}"#).await, publish_reply("0", 1));
    server.shutdown().await;
}

#[tokio::test]
async fn a_close_frame_is_answered_and_the_tcp_connection_shut() {
    let server = Server::default().await;
    let mut c = server.client().await;
    assert_eq!(c.request(r#"{"signal_entry":{"state":"s"},"id":"0"}"#).await, signal_reply("0", 1));
    // What the JS SDK does at the end: an empty Close frame.
    c.ws.send(Message::Close(None)).await.expect("send close");
    match c.next().await {
        Some(Message::Close(_)) => {}
        other => panic!("expected the Close reply, got {other:?}"),
    }
    // A client's stream ends only when the server closes the TCP connection.
    assert!(c.next().await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn pings_are_answered() {
    let server = Server::default().await;
    let mut c = server.client().await;
    c.ws.send(Message::Ping(b"hi".to_vec().into())).await.expect("ping");
    match c.next().await {
        Some(Message::Pong(data)) => assert_eq!(&data[..], b"hi"),
        other => panic!("expected a pong, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn is_cancel_stops_that_subscription() {
    let server = Server::default().await;
    let mut c = server.client().await;
    c.send(r#"{"id":"0","subscribe":{"topic":"t"}}"#).await;
    c.send(r#"{"id":"1","subscribe":{"topic":"t"}}"#).await;
    assert_eq!(c.request(r#"{"id":"2","publish":{"topic":"t","payload":1}}"#).await, subscribe_reply("0", &json!(1)));
    assert_eq!(c.recv().await, subscribe_reply("1", &json!(1)));
    assert_eq!(c.recv().await, publish_reply("2", 1));
    c.send(r#"{"id":"0","is_cancel":true}"#).await;
    assert_eq!(c.request(r#"{"id":"3","publish":{"topic":"t","payload":2}}"#).await, subscribe_reply("1", &json!(2)));
    assert_eq!(c.recv().await, publish_reply("3", 2));
    server.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_drops_subscriptions_and_barriers_but_not_counts_or_logs() {
    let server = Server::default().await;
    let mut gone = server.client().await;
    gone.send(r#"{"id":"0","subscribe":{"topic":"t"}}"#).await;
    gone.send(r#"{"id":"1","barrier":{"state":"s","target":3}}"#).await;
    assert_eq!(gone.request(r#"{"id":"2","signal_entry":{"state":"s"}}"#).await, signal_reply("2", 1));
    assert_eq!(
        gone.request(r#"{"id":"3","publish":{"topic":"t","payload":"a"}}"#).await,
        subscribe_reply("0", &json!("a"))
    );
    drop(gone);

    let mut c = server.client().await;
    assert_eq!(c.request(r#"{"id":"0","signal_entry":{"state":"s"}}"#).await, signal_reply("0", 2));
    assert_eq!(c.request(r#"{"id":"1","signal_entry":{"state":"s"}}"#).await, signal_reply("1", 3));
    assert_eq!(c.request(r#"{"id":"2","publish":{"topic":"t","payload":"b"}}"#).await, publish_reply("2", 2));
    assert_eq!(c.request(r#"{"id":"3","barrier":{"state":"s","target":3}}"#).await, barrier_reply("3"));
    assert_eq!(c.request(r#"{"id":"4","subscribe":{"topic":"t"}}"#).await, subscribe_reply("4", &json!("a")));
    assert_eq!(c.recv().await, subscribe_reply("4", &json!("b")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_pass_a_barrier() {
    tg_nix_sync::raise_fd_limit();
    const N: usize = 1000;
    let server = Server::default().await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(server.client().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let reply = c.request(r#"{"id":"0","is_cancel":false,"signal_entry":{"state":"start"}}"#).await;
                let v: serde_json::Value = serde_json::from_str(&reply).expect("json");
                let seq = v["signal_entry"]["seq"].as_u64().expect("seq");
                let reply = c
                    .request(&format!(r#"{{"id":"1","is_cancel":false,"barrier":{{"state":"start","target":{N}}}}}"#))
                    .await;
                assert_eq!(reply, barrier_reply("1"));
                (seq, c)
            })
        })
        .collect();
    let mut seqs = Vec::with_capacity(N);
    let mut keep = Vec::with_capacity(N);
    for t in tasks {
        let (seq, c) = t.await.expect("client task");
        seqs.push(seq);
        keep.push(c);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(server.service.state_count("start"), N as u64);
    server.shutdown().await;
    // Every client got the going-away Close.
    for mut c in keep.into_iter().take(10) {
        match c.next().await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_racing_new_subscribers_keep_order() {
    const MESSAGES: u64 = 400;
    const SUBSCRIBERS: usize = 16;
    let server = Server::default().await;
    let mut publisher = server.client().await;
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(server.client().await);
    }
    // The publisher pipelines all its publishes while the subscribers subscribe at once.
    let publish = tokio::spawn(async move {
        for i in 0..MESSAGES {
            publisher.send(&format!(r#"{{"id":"{i}","publish":{{"topic":"race","payload":{i}}}}}"#)).await;
        }
        for i in 0..MESSAGES {
            assert_eq!(publisher.recv().await, publish_reply(&i.to_string(), i + 1));
        }
    });
    let readers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| {
            tokio::spawn(async move {
                if n % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                c.send(r#"{"id":"s","subscribe":{"topic":"race"}}"#).await;
                for i in 0..MESSAGES {
                    assert_eq!(c.recv().await, subscribe_reply("s", &json!(i)), "subscriber {n}");
                }
            })
        })
        .collect();
    // In-process subscribers race too.
    let local: Vec<_> = (0..4)
        .map(|_| {
            let mut sub = server.service.subscribe("race");
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    assert_eq!(sub.next().await.as_deref(), Some(&json!(i)));
                }
            })
        })
        .collect();
    publish.await.expect("publisher");
    for r in readers.into_iter().chain(local) {
        r.await.expect("subscriber");
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    let server = Server::start(ServerConfig { idle_timeout: Duration::from_secs(60), ..Default::default() }).await;
    let mut c = server.client().await;
    let started = tokio::time::Instant::now();
    assert_eq!(c.request(r#"{"id":"0","signal_entry":{"state":"s"}}"#).await, signal_reply("0", 1));
    // Paused time advances by itself while everything waits.
    match c.ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a Close frame, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(60));
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_and_ends_local_subscriptions() {
    let server = Server::default().await;
    let mut c = server.client().await;
    let mut sub = server.service.subscribe("t");
    assert_eq!(c.request(r#"{"id":"0","publish":{"topic":"t","payload":1}}"#).await, publish_reply("0", 1));
    c.send(r#"{"id":"1","barrier":{"state":"never","target":5}}"#).await;
    let service = server.service.clone();
    server.shutdown().await;
    match c.next().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    assert_eq!(sub.next().await.as_deref(), Some(&json!(1)));
    assert_eq!(sub.next().await, None);
    assert!(service.is_closed());
}

/// Writes each frame the way the Rust SDK 0.4.0 (soketto) does: the header, then the payload, in
/// two writes on a socket with Nagle on.
struct TwoWrites {
    inner: TcpStream,
}

impl AsyncRead for TwoWrites {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TwoWrites {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // A masked client frame under 126 bytes has a 6-byte header.
        let n = if buf.len() > 6 { 6 } else { buf.len() };
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Regression test for compat reference §10: without TCP_QUICKACK on the server, each of these
/// requests waits ~40 ms for a delayed ACK.
#[tokio::test]
async fn split_writes_without_nodelay_are_not_delayed() {
    const REQUESTS: u32 = 40;
    let server = Server::default().await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut c = Client::handshake(TwoWrites { inner: tcp }, server.addr, "/").await;
    // Warm up, then measure; the kernel switches to delayed ACKs after a few exchanges.
    for i in 0..5 {
        c.request(&format!(r#"{{"id":"{i}","signal_entry":{{"state":"warm"}}}}"#)).await;
    }
    let started = std::time::Instant::now();
    for i in 0..REQUESTS {
        assert_eq!(
            c.request(&format!(r#"{{"id":"{i}","signal_entry":{{"state":"s"}}}}"#)).await,
            signal_reply(&i.to_string(), u64::from(i) + 1)
        );
    }
    let per_request = started.elapsed() / REQUESTS;
    // Delayed ACKs would make this ~40 ms; the bound leaves room for a busy machine.
    assert!(per_request < Duration::from_millis(10), "{per_request:?} per request");
    server.shutdown().await;
}

/// The same, when a request gets no immediate reply (a pending barrier): nothing carries the ACK
/// of its payload, and the Rust SDK's next request would wait for the delayed one.
#[tokio::test]
async fn split_writes_after_a_pending_barrier_are_not_delayed() {
    const REQUESTS: u32 = 20;
    let server = Server::default().await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut c = Client::handshake(TwoWrites { inner: tcp }, server.addr, "/").await;
    for i in 0..5 {
        c.request(&format!(r#"{{"id":"w{i}","signal_entry":{{"state":"warm"}}}}"#)).await;
    }
    let started = std::time::Instant::now();
    for i in 0..REQUESTS {
        c.send(&format!(r#"{{"id":"b{i}","barrier":{{"state":"b{i}","target":1}}}}"#)).await;
        assert_eq!(
            c.request(&format!(r#"{{"id":"s{i}","signal_entry":{{"state":"s"}}}}"#)).await,
            signal_reply(&format!("s{i}"), u64::from(i) + 1)
        );
        server.service.signal_entry(&format!("b{i}"));
        assert_eq!(c.recv().await, barrier_reply(&format!("b{i}")));
    }
    let per_round = started.elapsed() / REQUESTS;
    assert!(per_round < Duration::from_millis(10), "{per_round:?} per round");
    server.shutdown().await;
}

#[tokio::test]
async fn permessage_deflate_is_declined() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::default().await;
    let mut request = format!("ws://{}/", server.addr).into_client_request().expect("request");
    // What the JS SDK (ws) offers.
    request.headers_mut().insert(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits".parse().expect("header value"),
    );
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.expect("handshake");
    assert!(response.headers().get("sec-websocket-extensions").is_none(), "{response:?}");
    let mut c = Client { ws };
    assert_eq!(c.request(r#"{"id":"0","signal_entry":{"state":"s"}}"#).await, signal_reply("0", 1));
    server.shutdown().await;
}

#[tokio::test]
async fn topics_published_over_the_wire_are_watched_and_the_watch_ends_with_the_server() {
    let server = Server::default().await;
    let mut watch = server.service.watch_topics("run:r:topics:network:");
    let mut c = server.client().await;
    // A remote subscribe creates the topic empty: not reported.
    c.send(r#"{"id":"s","is_cancel":false,"subscribe":{"topic":"run:r:topics:network:quiet"}}"#).await;
    let reply = c.request(r#"{"id":"1","is_cancel":false,"publish":{"topic":"run:r:topics:network:typo-host","payload":{"enable":true}}}"#).await;
    assert_eq!(reply, publish_reply("1", 1));
    let name = tokio::time::timeout(PATIENCE, watch.next()).await.expect("a topic within the patience limit");
    assert_eq!(name.as_deref(), Some("run:r:topics:network:typo-host"));
    assert_eq!(watch.try_next(), None);
    drop(c);
    server.shutdown().await;
    assert_eq!(watch.next().await, None);
}
