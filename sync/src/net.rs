//! Socket tuning: TCP_NODELAY, a TCP stream that sets TCP_QUICKACK when a client may be waiting
//! for our ACK, and raising the open-files limit.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An accepted TCP stream that makes the kernel acknowledge at once whenever the reader waits in
/// the middle of a websocket frame.
///
/// The Rust SDK 0.4.0 writes each websocket frame in two writes (header, then payload) on a socket
/// without TCP_NODELAY, so its kernel holds the payload back until the header is acknowledged.
/// Linux delays that acknowledgement by up to ~40 ms when the connection looks interactive, which
/// made every request cost ~42 ms (compat reference §10). Setting TCP_QUICKACK sends a pending
/// acknowledgement now and turns delayed ACKs off until the kernel switches them back on.
///
/// We set it each time a read would wait while a frame is incomplete, which is when a client may be
/// waiting for our ACK to send the rest. (The reader also sets it after a request that gets no
/// immediate reply, such as a pending barrier: no reply will carry the ACK, and the client's next
/// request could be held back behind it.) Setting it before every read works too, but costs a syscall
/// per read and makes every request get an ACK packet of its own instead of one carried by the
/// reply: in the benchmark (200 clients, loopback) that was ~4.1 µs of server CPU per request
/// against ~3.0 µs this way. To know where frames end, the stream follows the websocket framing of
/// the bytes it reads (after the HTTP upgrade request).
#[derive(Debug)]
pub(crate) struct QuickAckStream {
    inner: TcpStream,
    frames: FrameTracker,
}

impl QuickAckStream {
    /// Wraps `stream` and sets TCP_NODELAY so that a reply goes out in one segment without waiting.
    pub(crate) fn new(stream: TcpStream) -> Self {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        QuickAckStream { inner: stream, frames: FrameTracker::default() }
    }

    pub(crate) fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.inner
    }
}

/// Sends a pending ACK now (and turns delayed ACKs off for a while). See [`QuickAckStream`].
pub(crate) fn set_quickack(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open TCP socket owned by the caller for the duration of the call, and the
    // option value is a live c_int whose exact size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Failure only costs latency; there is nothing to do about it.
    let _ = rc;
}

impl AsyncRead for QuickAckStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => this.frames.feed(&buf.filled()[before..]),
            Poll::Pending if !this.frames.at_boundary() => set_quickack(this.inner.as_raw_fd()),
            _ => {}
        }
        polled
    }
}

/// Follows where websocket frames start and end in the bytes a server reads: first the HTTP
/// upgrade request (up to the blank line), then frames (RFC 6455 §5.2). It only needs lengths.
#[derive(Debug)]
enum FrameTracker {
    /// In the HTTP request; how much of "\r\n\r\n" was just seen.
    Http { matched: u8 },
    /// In a frame header; its first `have` bytes.
    Header { buf: [u8; 14], have: usize },
    /// In a frame payload.
    Payload { remaining: u64 },
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::Http { matched: 0 }
    }
}

impl FrameTracker {
    const HEADER_START: FrameTracker = FrameTracker::Header { buf: [0; 14], have: 0 };

    /// True between frames, where a client has nothing half-sent.
    fn at_boundary(&self) -> bool {
        matches!(self, FrameTracker::Header { have: 0, .. })
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self {
                FrameTracker::Http { matched } => {
                    const END: &[u8; 4] = b"\r\n\r\n";
                    let byte = data[0];
                    data = &data[1..];
                    if byte == END[usize::from(*matched)] {
                        *matched += 1;
                        if usize::from(*matched) == END.len() {
                            *self = Self::HEADER_START;
                        }
                    } else {
                        *matched = u8::from(byte == b'\r');
                    }
                }
                FrameTracker::Header { buf, have } => {
                    buf[*have] = data[0];
                    data = &data[1..];
                    *have += 1;
                    if *have < 2 {
                        continue;
                    }
                    let extended = match buf[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
                    if *have < 2 + extended + mask {
                        continue;
                    }
                    let len = match extended {
                        0 => u64::from(buf[1] & 0x7f),
                        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                        _ => u64::from_be_bytes([buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9]]),
                    };
                    *self = if len == 0 { Self::HEADER_START } else { FrameTracker::Payload { remaining: len } };
                }
                FrameTracker::Payload { remaining } => {
                    let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = Self::HEADER_START;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The ceiling for the open-files limit when we may raise the hard limit.
const MAX_NOFILE: u64 = 1 << 20;

/// Raises this process's open-files limit (RLIMIT_NOFILE) as far as allowed and returns the new
/// soft limit. Every websocket client is a file descriptor, and the default soft limit (often
/// 1024) is far below the thousands of instances a run may have.
///
/// The soft limit goes up to the hard limit. As root, the hard limit first goes up to
/// `/proc/sys/fs/nr_open` (at most 2^20). On failure the limit stays as it was and that value is
/// returned. Child processes inherit the new limit.
pub fn raise_fd_limit() -> u64 {
    let Some((soft, hard)) = get_nofile() else { return 0 };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(MAX_NOFILE);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ceiling = nr_open.min(MAX_NOFILE);
    let want_hard = if root && hard < ceiling { ceiling } else { hard };
    // An unlimited hard limit is still capped by nr_open for this resource.
    let want_soft = want_hard.min(nr_open);
    if want_soft <= soft && want_hard == hard {
        return soft;
    }
    if set_nofile(want_soft, want_hard).is_err() {
        // Perhaps only the hard limit could not move: raise the soft limit within it.
        let within = hard.min(nr_open);
        if within > soft && set_nofile(within, hard).is_err() {
            tracing::debug!("cannot raise the open-files limit from {soft}");
        }
    }
    get_nofile().map_or(soft, |(soft, _)| soft)
}

fn get_nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `lim` is a valid rlimit; the kernel checks the values.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x81];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn the_frame_tracker_finds_frame_boundaries() {
        let mut stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n\r\n".to_vec();
        let handshake_end = stream.len();
        for len in [0, 5, 125, 126, 300, 65535, 70000] {
            stream.extend(frame(len));
        }
        // Fed whole, and fed in every split: the tracker is at a boundary exactly at frame ends.
        let mut ends = vec![handshake_end];
        for len in [0, 5, 125, 126, 300, 65535, 70000] {
            ends.push(ends[ends.len() - 1] + frame(len).len());
        }
        let mut whole = FrameTracker::default();
        whole.feed(&stream);
        assert!(whole.at_boundary());
        let mut byte_by_byte = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            byte_by_byte.feed(std::slice::from_ref(b));
            assert_eq!(byte_by_byte.at_boundary(), ends.contains(&(i + 1)), "after byte {i}");
        }
        // Header alone, as the Rust SDK writes it: not a boundary.
        let mut t = FrameTracker::HEADER_START;
        t.feed(&frame(40)[..6]);
        assert!(!t.at_boundary());
    }

    #[test]
    fn raising_the_fd_limit_never_lowers_it() {
        let (before, _) = get_nofile().expect("getrlimit");
        let after = raise_fd_limit();
        assert!(after >= before, "{after} < {before}");
        assert_eq!(get_nofile().map(|(s, _)| s), Some(after));
    }
}
