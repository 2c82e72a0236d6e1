//! Connection helpers that know nothing of HTTP or of the request path:
//! read buffers (reused per thread, grown while reads fill them), a
//! connection that replays bytes already read off it ([`Rewind`]), the
//! lazy polling of a connection's timer and shutdown token ([`LazyPoll`]),
//! and the socket under a client connection ([`Socket`]).

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;

use crate::tcp::Tcp;

/// First read size; doubled, up to `MAX_READ`, while reads fill it.
pub(crate) const READ_SIZE: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;
/// Below this much room left, a read gets a fresh `read_size`.
const MIN_READ: usize = 2 * 1024;

/// A connection found busy is checked again after twice as long as the
/// last time, up to this: under load it costs a wake-up a second, not one
/// per check.
pub(crate) const MAX_CHECK: Duration = Duration::from_secs(1);

/// How long closing a connection may wait to flush (a TLS close_notify to
/// a client that does not read).
pub(crate) const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);

thread_local! {
    /// Read buffers of this thread's finished exchanges, the latest last.
    /// A response's head and body are views into its buffer, so a buffer
    /// is free again once the client has its response; the next exchange
    /// takes it back instead of allocating 8 KiB (glibc's slow path), and
    /// works in memory the cache still holds.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept per thread; past this, the oldest is let go. A buffer is
/// busy from its request's send until the client has the response, so a
/// thread needs about as many as it has exchanges in flight: 16 ran dry at
/// 50 connections, and the misses cost an 8 KiB allocation each
/// (bench/callgrind with 50 connections: 16,415 → 15,776 instructions a
/// request). 64 hold at most 512 KiB a thread.
const SPARE_BUFFERS: usize = 64;

/// The latest finished exchange's buffer that no response still uses,
/// else a new (empty, unallocated) one. One that grew for a large
/// response is let go rather than kept.
pub(crate) fn spare_buffer() -> BytesMut {
    SPARE.with_borrow_mut(|spare| {
        for i in (0..spare.len()).rev() {
            if spare[i].try_reclaim(READ_SIZE) {
                let buf = spare.swap_remove(i);
                if buf.capacity() <= 2 * READ_SIZE {
                    return buf;
                }
            }
        }
        BytesMut::new()
    })
}

/// Keeps a finished exchange's (or a parked connection's) buffer for the
/// next one on this thread.
pub(crate) fn keep_spare(mut buf: BytesMut) {
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() == SPARE_BUFFERS {
            spare.remove(0);
        }
        spare.push(buf);
    });
}

/// Reads more of a connection into `buf`; 0 when the peer closed its
/// side. The buffer is allocated on the first read, so an idle connection
/// holds none; a body's chunks are split off it, so a fresh one is needed
/// only once they have used it up. `read_size` doubles, up to 128 KiB,
/// while reads fill it.
pub(crate) fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let spare = buf.capacity() - buf.len();
    let spare = if spare < MIN_READ {
        buf.reserve(*read_size);
        buf.capacity() - buf.len()
    } else {
        spare
    };
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if n == spare && *read_size < MAX_READ {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// The socket under a client connection, to wait on while it is parked.
pub(crate) trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for Tcp {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio_rustls::server::TlsStream<Tcp> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// A connection with bytes read off it already, served first to whoever
/// reads next: HTTP/2 after its preface was sniffed, and both sides of a
/// tunnel after an upgrade.
pub(crate) struct Rewind<I> {
    inner: I,
    read: Bytes,
}

impl<I> Rewind<I> {
    pub fn new(inner: I, read: Bytes) -> Self {
        Rewind { inner, read }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's timer and shutdown token, polled once to register and
/// after that only when they may be ready (the timer once elapsed, the
/// token when its own waker was called): a wake-up is almost always the
/// connection's own, and polling the token takes its lock.
#[derive(Default)]
pub(crate) struct LazyPoll {
    timer_armed: bool,
    token: Option<(Arc<Flagged>, std::task::Waker)>,
    /// Shutdown began (it stays begun).
    pub closing: bool,
}

impl LazyPoll {
    /// Whether shutdown has begun.
    pub fn shutdown(
        &mut self,
        cx: &mut Context<'_>,
        cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> bool {
        if self.closing {
            return true;
        }
        let (flag, waker) = self.token.get_or_insert_with(|| Flagged::waker(cx));
        if flag.fired.swap(false, Relaxed)
            && cancelled.poll(&mut Context::from_waker(waker)).is_ready()
        {
            self.closing = true;
        }
        self.closing
    }

    /// Whether `timer` fired.
    pub fn timer(&mut self, cx: &mut Context<'_>, timer: Pin<&mut tokio::time::Sleep>) -> bool {
        if self.timer_armed && !timer.is_elapsed() {
            return false;
        }
        self.timer_armed = true;
        timer.poll(cx).is_ready()
    }

    /// Moves `timer` to `at`; the next check polls it to register again.
    pub fn reset(&mut self, timer: Pin<&mut tokio::time::Sleep>, at: Instant) {
        timer.reset(at);
        self.timer_armed = false;
    }
}

/// A waker that notes it was called before waking the task, so the future
/// it was given to is polled again only then.
struct Flagged {
    fired: AtomicBool,
    task: std::task::Waker,
}

impl Flagged {
    /// Starts fired, so that the first poll registers.
    fn waker(cx: &Context<'_>) -> (Arc<Flagged>, std::task::Waker) {
        let flag = Arc::new(Flagged {
            fired: AtomicBool::new(true),
            task: cx.waker().clone(),
        });
        let waker = std::task::Waker::from(flag.clone());
        (flag, waker)
    }
}

impl std::task::Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Relaxed);
        self.task.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_buffer_comes_back_once_no_response_uses_it() {
        SPARE.with_borrow_mut(Vec::clear);
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let head = buf.split().freeze();
        let at = head.as_ptr();
        SPARE.with_borrow_mut(|s| s.push(buf));
        // A response still reads from it: a fresh buffer instead.
        assert_eq!(spare_buffer().capacity(), 0);
        assert_eq!(SPARE.with_borrow(Vec::len), 1);
        drop(head);
        let again = spare_buffer();
        assert_eq!(again.as_ptr(), at, "the same allocation, from its start");
        assert!(again.capacity() >= READ_SIZE);
        assert_eq!(SPARE.with_borrow(Vec::len), 0);
    }
}
