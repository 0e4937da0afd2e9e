//! The websocket server: accepts TCP connections and runs one [`crate::connection`] per client.

use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection;
use crate::state::Service;

/// Limits of the websocket server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// The largest request message accepted; a client that sends a bigger one is disconnected
    /// with close code 1009. Default 1 MiB. (The Go service allowed 32 KiB, and Go clients still
    /// die on subscribe messages over 32 KiB, compat reference §2.1.)
    pub max_message_size: usize,
    /// A connection with no request for this long is closed. Default 1 h, like the Go service.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_message_size: 1 << 20, idle_timeout: Duration::from_secs(3600) }
    }
}

/// Serves the sync protocol on `listener` until `shutdown` is cancelled.
///
/// Returns once `shutdown` is cancelled and every connection has finished (each is sent a Close
/// frame with code 1001). It then closes `service` (see [`Service::close`]), so in-process
/// subscriptions end after delivering everything that was published. It returns an error only if
/// the listener itself fails; errors of single connections are logged and stay there.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let stop = shutdown.child_token();
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!("sync service listening on {addr}");
    }
    let result = accept_loop(&listener, &service, config, &stop, &tracker).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    service.close();
    result
}

async fn accept_loop(
    listener: &TcpListener,
    service: &Service,
    config: ServerConfig,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> io::Result<()> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // A token per connection: each connection's reader polls its token on every
                // message, and its own token keeps that off the shared one's lock.
                let token = stop.child_token();
                tracker.spawn(connection::handle(stream, peer, service.clone(), config, token, tracker.clone()));
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!("accept: {e}");
            }
            Err(e) if is_resource_shortage(&e) => {
                // Out of file descriptors or memory: wait for connections to close.
                tracing::warn!("accept: {e}; retrying in {backoff:?}");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors that concern one incoming connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM | libc::ENETDOWN | libc::EHOSTUNREACH))
}

fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
