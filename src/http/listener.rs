//! The TCP listener, with the limits a socket needs before HTTP starts.
//!
//! axum's server sets no timeouts on a connection: a client that opens
//! sockets and then sends nothing (or a byte a minute, or stops reading what
//! it asked for) holds a file descriptor and its buffers forever, and enough
//! of them lock everyone else out. So every connection here counts against
//! a cap for the whole server and one for its peer address, and one that
//! neither sends nor receives a byte for `idle_timeout` is closed. Live
//! connections are never idle that long: WebSockets carry pings every 15 s
//! and requests end within the request timeout.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections for the whole server.
    pub max_total: usize,
    /// Open connections from one peer address (0: no per-address cap, for
    /// servers behind a proxy, where every peer is the proxy).
    pub max_per_address: usize,
    /// No byte in either direction for this long closes the connection.
    pub idle_timeout: Duration,
}

/// Counts of open connections, shared by the listener and its connections.
#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

pub struct GuardedListener {
    inner: TcpListener,
    limits: ConnectionLimits,
    open: Arc<Mutex<Open>>,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, limits: ConnectionLimits) -> Self {
        Self { inner, limits, open: Arc::default() }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Takes a slot for a connection from `peer`, or says why not.
    fn admit(&self, peer: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.max_total {
            return Err("the server has too many open connections");
        }
        let from_peer = open.by_address.get(&peer).copied().unwrap_or(0);
        if self.limits.max_per_address > 0 && from_peer >= self.limits.max_per_address {
            return Err("this address has too many open connections");
        }
        open.total += 1;
        open.by_address.insert(peer, from_peer + 1);
        Ok(Slot { open: Arc::clone(&self.open), peer })
    }
}

/// One connection's place in the counts; given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_address.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.peer);
            }
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(peer.ip()) {
                Ok(slot) => {
                    // Small responses go out at once rather than waiting
                    // for the client's delayed ACK.
                    let _ = stream.set_nodelay(true);
                    return (GuardedStream::new(stream, slot, self.limits.idle_timeout), peer);
                }
                // Dropping the stream closes it: the cheapest refusal.
                Err(reason) => tracing::warn!(peer = %peer.ip(), reason, "connection refused"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once idle for too long, reading
/// or writing: a peer that stops reading blocks writes, and is dropped too.
pub struct GuardedStream {
    inner: TcpStream,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl GuardedStream {
    fn new(inner: TcpStream, slot: Slot, idle_timeout: Duration) -> Self {
        let deadline = Box::pin(tokio::time::sleep(idle_timeout));
        Self { inner, idle_timeout, deadline, _slot: slot }
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle_timeout);
    }

    /// A write's outcome: bytes out count as activity; a blocked write
    /// times out like a silent read.
    fn wrote(&mut self, poll: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.active();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.pending(cx),
        }
    }

    /// Turns a pending operation into `TimedOut` once the deadline passed.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.pending(cx),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
