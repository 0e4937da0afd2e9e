//! One websocket client: a reader loop that parses and applies each request, and a writer task
//! that drains the connection's outgoing queue.
//!
//! No operation needs to wait: publish, subscribe, signal_entry and barrier all change the store
//! and push their replies (now or later) into the outgoing queue. So the reader applies each
//! request synchronously and goes on reading, and a pending barrier costs nothing but an entry in
//! the store. The writer takes every queued response at once, feeds them into the websocket and
//! flushes once, so a barrier release or a burst of pipelined requests is one `write` per client.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::{self, QuickAckStream};
use crate::protocol::{self, Op, Outgoing, RequestError};
use crate::server::ServerConfig;
use crate::state::{ConnId, Outbox, Service};

type Ws = WebSocketStream<QuickAckStream>;

/// How long a client gets to complete the websocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one batch of responses may take to write before the client counts as stuck (the Go
/// service allowed 10 s per response write).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing may take: sending our Close frame, or draining a client we gave up on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Responses taken from the queue per flush.
const BATCH: usize = 256;
/// tungstenite allocates (and zeroes, on each read) a read buffer of this size per connection; the
/// default 128 KiB would cost over a gigabyte for 10,000 clients. Requests are a few hundred bytes.
const READ_BUFFER: usize = 4 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client closed the connection")]
    Closed,
    #[error("sync service shutting down")]
    Shutdown,
    #[error("no request for {0:?}")]
    Idle(Duration),
    #[error("writing to the client failed or timed out")]
    WriterGone,
    #[error("message too big: {size} bytes > {max} bytes")]
    TooBig { size: usize, max: usize },
    #[error("websocket error: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

impl End {
    /// The Close frame we send, if any.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Closed | End::WriterGone => return None,
            // The peer vanished without a Close: there is nobody to tell.
            End::WebSocket(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | End::WebSocket(tungstenite::Error::Io(_)) => return None,
            End::Shutdown => (CloseCode::Away, self.to_string()),
            End::Idle(_) => (CloseCode::Normal, self.to_string()),
            End::TooBig { .. } => (CloseCode::Size, self.to_string()),
            End::WebSocket(tungstenite::Error::Utf8(_)) => (CloseCode::Invalid, self.to_string()),
            End::WebSocket(_) => (CloseCode::Protocol, self.to_string()),
        };
        let mut reason = reason;
        // A close reason must fit in a control frame (125 bytes, 2 of them for the code).
        while reason.len() > 123 {
            reason.pop();
        }
        Some(CloseFrame { code, reason: reason.into() })
    }

    /// Whether the client may still be sending, so that closing the socket at once would reset it
    /// (and the client would lose our Close frame).
    fn needs_drain(&self) -> bool {
        matches!(
            self,
            End::TooBig { .. } | End::WebSocket(tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_))
        ) && !matches!(self, End::WebSocket(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)))
    }

    fn is_routine(&self) -> bool {
        matches!(
            self,
            End::Closed
                | End::Shutdown
                | End::Idle(_)
                // The writer logs its own failure.
                | End::WriterGone
                | End::WebSocket(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                | End::WebSocket(tungstenite::Error::Io(_))
        )
    }
}

/// Serves one accepted TCP connection until it closes, the client idles out, or `shutdown`.
pub(crate) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    service: Service,
    config: ServerConfig,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let conn = service.new_conn_id();
    let fd = stream.as_raw_fd();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    // tungstenite accepts any path and implements no extensions, so permessage-deflate offered by
    // the Go and JS SDKs is declined; all three SDKs work without it (compat reference §2.1).
    let handshake = tokio_tungstenite::accept_async_with_config(QuickAckStream::new(stream), Some(ws_config));
    let ws = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(conn, %peer, "websocket handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(conn, %peer, "websocket handshake timed out");
                return;
            }
        }
    };
    tracing::debug!(conn, %peer, "connected");

    let (sink, mut stream) = ws.split();
    let (outbox, rx) = mpsc::unbounded_channel();
    let writer = tracker.spawn(write_loop(sink, rx, conn, shutdown.clone()));

    let mut reader = Reader { conn, fd, service, outbox, subscriptions: HashMap::new(), waiting: HashSet::new() };
    let end = reader.run(&mut stream, &config, &shutdown).await;
    reader.forget_everything();
    if end.is_routine() {
        tracing::debug!(conn, %peer, "disconnected: {end}");
    } else {
        tracing::warn!(conn, %peer, "closing connection: {end}");
    }
    let _ = reader.outbox.send(Outgoing::Close(end.close_frame()));
    drop(reader);

    let Ok(sink) = writer.await else { return };
    if end.needs_drain() {
        if let Ok(mut ws) = stream.reunite(sink) {
            drain(ws.get_mut().get_mut(), &shutdown).await;
        }
    }
    // Dropping the websocket closes the TCP connection. The JS SDK waits for that after its Close.
}

/// The reading half of a connection and what it has registered in the store.
struct Reader {
    conn: ConnId,
    /// The socket, for TCP_QUICKACK. It stays open while the reader runs: the reader holds half of
    /// the websocket that owns it.
    fd: RawFd,
    service: Service,
    outbox: Outbox,
    /// Subscribe request id → topics (ids should be unique, but a client may reuse one).
    subscriptions: HashMap<Box<str>, Vec<String>>,
    /// States with a barrier of ours pending.
    waiting: HashSet<String>,
}

impl Reader {
    async fn run(&mut self, stream: &mut SplitStream<Ws>, config: &ServerConfig, shutdown: &CancellationToken) -> End {
        let idle_timeout = config.idle_timeout;
        let mut last_request = Instant::now();
        // Resetting a timer per request would touch the timer wheel each time; instead the timer
        // fires at the first possible deadline and, if requests came since, is moved forward.
        let deadline = |last: Instant| last.checked_add(idle_timeout).unwrap_or_else(far_future);
        let idle = tokio::time::sleep_until(deadline(last_request));
        tokio::pin!(idle);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let outbox = self.outbox.clone();
        let writer_gone = outbox.closed();
        tokio::pin!(writer_gone);

        loop {
            let msg = tokio::select! {
                biased;
                () = &mut cancelled => return End::Shutdown,
                () = &mut writer_gone => return End::WriterGone,
                () = &mut idle => {
                    let at = deadline(last_request);
                    if at > Instant::now() {
                        idle.as_mut().reset(at);
                        continue;
                    }
                    return End::Idle(idle_timeout);
                }
                msg = stream.next() => msg,
            };
            match msg {
                None => return End::Closed,
                Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    return End::TooBig { size, max: max_size };
                }
                Some(Err(e)) => return End::WebSocket(e),
                Some(Ok(msg)) => {
                    last_request = Instant::now();
                    match msg {
                        // RS sends binary frames, GO and JS text: the bytes are the same JSON.
                        Message::Text(text) => self.apply(text.as_bytes()),
                        Message::Binary(bytes) => self.apply(&bytes),
                        // tungstenite queues the Pong and the Close reply itself and sends them on
                        // the next read; after a Close the next read ends the stream.
                        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    /// Applies one request. Never waits: replies go to the outgoing queue.
    fn apply(&mut self, bytes: &[u8]) {
        let request = match protocol::parse_request(bytes) {
            Ok(request) => request,
            Err(e) => return self.reject(e, bytes),
        };
        let id = request.id;
        if request.is_cancel {
            if let Some(topics) = self.subscriptions.remove(&*id) {
                for topic in topics {
                    self.service.unsubscribe_remote(&topic, self.conn, Some(&id));
                }
            }
            return self.ack_now();
        }
        let reply = match request.op {
            Some(Op::Publish { topic, payload }) => {
                let seq = self.service.publish(&topic, payload);
                Outgoing::Publish { id: id.into(), seq }
            }
            Some(Op::SignalEntry { state }) => {
                let seq = self.service.signal_entry(&state);
                Outgoing::SignalEntry { id: id.into(), seq }
            }
            Some(Op::Barrier { state, target }) => {
                if self.service.barrier_remote(&state, target, self.conn, &id, &self.outbox) {
                    if !self.waiting.contains(&*state) {
                        self.waiting.insert(state.into_owned());
                    }
                    self.ack_now();
                }
                return;
            }
            Some(Op::Subscribe { topic }) => {
                let shared: Arc<str> = Arc::from(&*id);
                self.service.subscribe_remote(&topic, self.conn, shared, &self.outbox);
                self.subscriptions.entry(id.into()).or_default().push(topic.into_owned());
                // The replay may be empty, and then nothing goes back now.
                return self.ack_now();
            }
            // parse_request returns an op unless is_cancel.
            None => return,
        };
        let _ = self.outbox.send(reply);
    }

    /// Acknowledges the bytes read so far now: the request just applied has no reply to carry
    /// the ACK, and a client that writes without TCP_NODELAY (the Rust SDK) would hold its next
    /// request back until the delayed ACK came (see [`QuickAckStream`]).
    fn ack_now(&self) {
        net::set_quickack(self.fd);
    }

    fn reject(&mut self, e: RequestError, bytes: &[u8]) {
        if e.reply_to().is_none() {
            self.ack_now();
        }
        if let RequestError::UnknownOp { ref op, .. } = e {
            tracing::debug!(conn = self.conn, "ignoring unknown operation {op:?}");
            return;
        }
        let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        tracing::warn!(conn = self.conn, "{e}; request: {excerpt}");
        if let Some(id) = e.reply_to() {
            // The error field must be JSON text for the Rust SDK 0.4.0 (see `protocol::error_text`).
            let error = protocol::error_text(&e.to_string());
            let _ = self.outbox.send(Outgoing::Error { id: id.into(), error });
        }
    }

    /// Drops every subscription and pending barrier of this connection. Counts and logs stay.
    fn forget_everything(&mut self) {
        let topics: HashSet<String> = self.subscriptions.drain().flat_map(|(_, topics)| topics).collect();
        for topic in topics {
            self.service.unsubscribe_remote(&topic, self.conn, None);
        }
        for state in self.waiting.drain() {
            self.service.forget_waiters(&state, self.conn);
        }
    }
}

fn far_future() -> Instant {
    // About 30 years, like tokio's own "never" deadline.
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Sends queued responses, many per flush, until told to close or the client stops reading.
/// Returns the sink so the caller can reunite the two halves.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: ConnId,
    shutdown: CancellationToken,
) -> SplitSink<Ws, Message> {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            break;
        }
        let mut close = None;
        let write = async {
            for item in batch.drain(..) {
                match item.encode() {
                    Some(text) => sink.feed(Message::text(text)).await?,
                    None => {
                        if let Outgoing::Close(frame) = item {
                            close = Some(frame);
                        }
                        break;
                    }
                }
            }
            sink.flush().await
        };
        // A write normally completes at once, so the timers below are rarely even registered.
        let result = tokio::select! {
            biased;
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => r.map_err(|_| "timed out"),
            () = after_shutdown(&shutdown) => Err("timed out during shutdown"),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(conn, "write failed: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!(conn, "client not reading: write {e}; closing the connection");
                break;
            }
        }
        if let Some(frame) = close {
            let close = async {
                match frame {
                    Some(frame) => sink.send(Message::Close(Some(frame))).await,
                    // Complete a handshake the client started, or end a dead connection.
                    None => sink.close().await,
                }
            };
            // Errors here mean the client is already gone.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
            break;
        }
    }
    sink
}

async fn after_shutdown(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(CLOSE_TIMEOUT).await;
}

/// Half-closes `tcp` and discards what the client still sends, briefly, so that closing the socket
/// does not reset the connection before the client has read our Close frame. Needed when we stop
/// reading mid-message (oversized or broken frames).
async fn drain(tcp: &mut TcpStream, shutdown: &CancellationToken) {
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let discard = async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = discard => {}
        _ = tokio::time::sleep(CLOSE_TIMEOUT) => {}
        () = shutdown.cancelled() => {}
    }
}
