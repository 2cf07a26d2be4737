//! The gateway's TCP listeners: bound with a configurable `listen(2)` backlog (the
//! default 1,024 overflowed when 5,000–10,000 clients reconnected at once), with
//! `TCP_NODELAY` on every accepted socket, and a deadline for the request headers so a
//! client that sends them slowly (slowloris) cannot hold a connection open — its first
//! request's, and on a kept-alive HTTP connection each next one's, counted from the
//! previous response (so an idle kept-alive connection is closed after the same time).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Sleep;

/// Binds `addr` with `backlog` pending connections allowed (the kernel caps it at
/// `net.core.somaxconn`).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A listener whose connections must finish each request's headers within a deadline
/// ([`HeaderDeadline`]).
pub struct Deadlined {
    inner: TcpListener,
    header_timeout: Duration,
    pre_hello_cap: usize,
}

impl Deadlined {
    /// Wraps `inner`; `header_timeout` bounds the time to the end of each request's
    /// headers (from the accept, then from the previous response), and a WebSocket may send at most `pre_hello_cap` bytes before its
    /// session opens ([`PreHello`]).
    pub fn new(inner: TcpListener, header_timeout: Duration, pre_hello_cap: usize) -> Deadlined {
        Deadlined {
            inner,
            header_timeout,
            pre_hello_cap,
        }
    }
}

/// The bytes a WebSocket may send before its `hello` opened a session: counted from the
/// upgrade ([`PreHello::watch`]) until [`PreHello::opened`]; past the cap the socket's
/// reads fail and the connection is dropped, so half-sent large frames cannot pin
/// memory before anyone authenticated.
#[derive(Debug)]
pub struct PreHello {
    /// When the TCP connection was accepted.
    accepted: std::time::Instant,
    cap: usize,
    watching: AtomicBool,
    opened: AtomicBool,
    read: AtomicUsize,
}

impl PreHello {
    fn new(cap: usize) -> Arc<PreHello> {
        Arc::new(PreHello {
            accepted: std::time::Instant::now(),
            cap,
            watching: AtomicBool::new(false),
            opened: AtomicBool::new(false),
            read: AtomicUsize::new(0),
        })
    }

    /// The connection was upgraded to a WebSocket: count from now.
    pub fn watch(&self) {
        self.watching.store(true, Ordering::Release);
    }

    /// Its session is open: no cap beyond the frame limits from now. Returns the time
    /// since the TCP connection was accepted.
    pub fn opened(&self) -> Duration {
        self.opened.store(true, Ordering::Release);
        self.accepted.elapsed()
    }

    /// Counts `n` bytes read; false when they take the connection past the cap.
    fn admit(&self, n: usize) -> bool {
        if !self.watching.load(Ordering::Acquire) || self.opened.load(Ordering::Acquire) {
            return true;
        }
        self.read.fetch_add(n, Ordering::AcqRel) + n <= self.cap
    }
}

impl axum::serve::Listener for Deadlined {
    type Io = HeaderDeadline<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Frames are written whole (batched where several are ready), so
                    // Nagle's algorithm would only hold the last one back, waiting for
                    // the client's delayed ACK (up to 40 ms on Linux).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let mut io = HeaderDeadline::new(stream, self.header_timeout);
                    io.pre_hello = PreHello::new(self.pre_hello_cap);
                    return (io, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, as axum's
                    // own TcpListener does, rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, as handlers extract it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone)]
pub struct PeerAddr(pub SocketAddr, pub Arc<PreHello>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Deadlined>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Deadlined>) -> Self {
        PeerAddr(*stream.remote_addr(), stream.io().pre_hello.clone())
    }
}

/// What a write to an HTTP/1 connection starts with.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// `101 Switching Protocols`: a WebSocket from here on.
    Upgrade,
    /// The head of a final response (`2xx`–`5xx`).
    Final,
    /// Not a response head (a body), or only informational ones (`100 Continue`).
    Other,
}

/// What `bytes`, the start of a write, hold: hyper writes a response head in one piece,
/// first; an informational head may come with the final one in the same write (a
/// `100 Continue` and a handler that answered at once), so the heads after one are
/// looked at too.
fn written(mut bytes: &[u8]) -> Written {
    loop {
        let Some(status) = bytes.strip_prefix(b"HTTP/1.").and_then(|r| r.get(2..5)) else {
            return Written::Other;
        };
        if status == b"101" {
            return Written::Upgrade;
        }
        if !status.starts_with(b"1") {
            return Written::Final;
        }
        match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => bytes = &bytes[end + 4..],
            None => return Written::Other,
        }
    }
}

/// A stream that fails its reads once `deadline` passes before the bytes read so far
/// contain the end of an HTTP header block (`\r\n\r\n`). When a response other than
/// `101 Switching Protocols` is written, the deadline starts again for the next
/// request's headers: a kept-alive connection cannot trickle its second request, nor
/// sit idle, for longer than the first. After a `101` (a WebSocket) it is the plain
/// stream.
pub struct HeaderDeadline<T> {
    inner: T,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    /// A `101` was written: the connection is a WebSocket now, never re-armed.
    upgraded: bool,
    /// How many bytes of `\r\n\r\n` the bytes read so far end with.
    matched: u8,
    /// The pre-`hello` cap of a WebSocket on this connection.
    pre_hello: Arc<PreHello>,
}

impl<T> HeaderDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            upgraded: false,
            matched: 0,
            pre_hello: PreHello::new(usize::MAX),
        }
    }

    /// Sees the start of a write: the head of a final HTTP/1 response starts the
    /// deadline for the next request's headers again. Not a `101` (a WebSocket now),
    /// nor another `1xx`: a `100 Continue` answers `Expect: 100-continue` before the
    /// request's body is read and its handler runs, and a deadline armed there cut
    /// the connection under a handler taking longer (its response lost).
    fn on_write(&mut self, bytes: &[u8], cx: &mut Context<'_>) {
        if self.upgraded || self.deadline.is_some() {
            return;
        }
        match written(bytes) {
            Written::Upgrade => self.upgraded = true,
            Written::Other => {}
            Written::Final => {
                self.matched = 0;
                let mut deadline = Box::pin(tokio::time::sleep(self.timeout));
                // Wake the connection's task when it passes: an idle connection has
                // no read in progress to poll it (the task that writes is the one
                // that reads).
                let _ = deadline.as_mut().poll(cx);
                self.deadline = Some(deadline);
            }
        }
    }

    /// Advances the `\r\n\r\n` matcher over `bytes`; true when the sequence is complete.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[usize::from(self.matched)] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                return true;
            }
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers not complete within header_read_timeout_ms",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && polled.is_ready() {
            let fresh = buf.filled()[before..].to_vec();
            if this.scan(&fresh) {
                this.deadline = None;
            }
        }
        if let Poll::Ready(Ok(())) = &polled {
            if !this.pre_hello.admit(buf.filled().len() - before) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "more bytes before hello than the pre-hello cap",
                )));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.on_write(buf, cx);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.on_write(first, cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_response_head_is_seen_also_behind_a_100_continue_in_the_same_write() {
        assert_eq!(written(b"HTTP/1.1 200 OK\r\n\r\n"), Written::Final);
        assert_eq!(written(b"HTTP/1.1 404 Not Found\r\n\r\n"), Written::Final);
        assert_eq!(
            written(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Written::Upgrade
        );
        assert_eq!(written(b"HTTP/1.1 100 Continue\r\n\r\n"), Written::Other);
        assert_eq!(
            written(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\n{}"),
            Written::Final
        );
        assert_eq!(written(b"HTTP/1.1 100 Continue\r\n"), Written::Other);
        assert_eq!(written(b"{\"id\":1}"), Written::Other);
    }

    #[test]
    fn the_pre_hello_cap_counts_only_a_websocket_before_its_session_opens() {
        let cap = PreHello::new(100);
        assert!(cap.admit(1_000), "an HTTP request is not counted");
        cap.watch();
        assert!(cap.admit(60) && cap.admit(40));
        assert!(!cap.admit(1), "past the cap");
        let cap = PreHello::new(100);
        cap.watch();
        assert!(cap.admit(90));
        cap.opened();
        assert!(cap.admit(1_000_000), "no cap once the session is open");
    }

    #[tokio::test]
    async fn the_end_of_the_headers_is_found_across_reads() {
        let mut d = HeaderDeadline::new((), Duration::from_secs(1));
        assert!(!d.scan(b"GET /ws HTTP/1.1\r\nHost: x\r"));
        assert!(!d.scan(b"\n"));
        assert!(d.scan(b"\r\nrest"));
        let mut d = HeaderDeadline::new((), Duration::from_secs(1));
        assert!(!d.scan(b"a\r\n\r"));
        assert!(!d.scan(b"x\r\n"));
        assert!(d.scan(b"\r\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut server = HeaderDeadline::new(server, Duration::from_millis(100));
        let mut client = client;
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(n, 23);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Once the headers are complete, there is no deadline any more.
        let (client, server) = tokio::io::duplex(64);
        let mut server = HeaderDeadline::new(server, Duration::from_millis(100));
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_response_starts_the_deadline_again_for_the_next_request_but_not_a_101() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 64];
        // Kept alive after a 200: the next request's headers (or nothing, idle) have
        // the same time as the first's.
        let (mut client, server) = tokio::io::duplex(256);
        let mut server = HeaderDeadline::new(server, Duration::from_millis(100));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(
            server.read(&mut buf).await.is_ok(),
            "in time after the response"
        );
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::TimedOut,
            "idle past the deadline"
        );
        // A vectored write of a response head counts too.
        let (mut client, server) = tokio::io::duplex(256);
        let mut server = HeaderDeadline::new(server, Duration::from_millis(100));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        let head = io::IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n");
        let written = server.write_vectored(&[head]).await.unwrap();
        assert_eq!(written, head.len());
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // After a 101 the connection is a WebSocket: no deadline.
        let (mut client, server) = tokio::io::duplex(256);
        let mut server = HeaderDeadline::new(server, Duration::from_millis(100));
        client.write_all(b"GET /ws HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        server
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        server.write_all(b"HTTP/1.1 200 in a frame").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"frame").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
    }
}
