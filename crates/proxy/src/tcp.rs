//! The TCP connections the proxy reads and writes ([`Tcp`]): tokio's
//! stream, with reads and writes made by the system calls themselves.
//!
//! Why: std (and so tokio) call glibc's `recv`, `send` and `writev`, which
//! are pthread cancellation points. Once a process has a second thread
//! (every `serve` has one: the control plane's blocking writes, or the
//! workers of `--threads 2` and more), glibc wraps each such call in
//! enabling and disabling asynchronous cancellation: about 100 more
//! instructions a call, four calls an exchange (bench/callgrind, round 9).
//! Nothing in Rust cancels threads, so the wrapper buys nothing here;
//! `syscall(2)` is not a cancellation point.
//!
//! Readiness is tokio's, with its rules: a read that fills less than the
//! buffer means the socket is drained, so readiness is cleared as of
//! before the read (a later edge is never lost), and the next read waits
//! for epoll instead of costing a call that says EAGAIN.

use std::io::{self, IoSlice};
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP connection, client's or backend's.
#[derive(Debug)]
pub(crate) struct Tcp(TcpStream);

impl Tcp {
    pub fn new(stream: TcpStream) -> Tcp {
        Tcp(stream)
    }

    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Tcp> {
        TcpStream::connect(addr).await.map(Tcp)
    }
}

impl Deref for Tcp {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

/// The result of a raw system call: -1 and errno on failure.
fn sys(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn recv(fd: RawFd, into: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `into` is writable for its length; the kernel writes at
    // most that many bytes.
    sys(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            into.as_mut_ptr(),
            into.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

fn send(fd: RawFd, from: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL as std sends: a closed peer is EPIPE, never SIGPIPE.
    // SAFETY: `from` is readable for its length.
    sys(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            from.as_ptr(),
            from.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    })
}

fn writev(fd: RawFd, from: &[IoSlice<'_>]) -> io::Result<usize> {
    // IoSlice is ABI-compatible with iovec; writev takes at most IOV_MAX.
    let n = from.len().min(1024);
    // SAFETY: the slices are readable; the kernel only reads them.
    sys(unsafe { libc::syscall(libc::SYS_writev, fd, from.as_ptr(), n as libc::c_int) })
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0;
        let fd = stream.as_raw_fd();
        // The task's budget, taken as tokio's own reads take it, so a
        // connection that always has bytes still yields now and then.
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            // SAFETY: only bytes the kernel wrote are marked filled.
            let unfilled = unsafe { buf.unfilled_mut() };
            let want = unfilled.len();
            let (mut drained, mut called) = (None, false);
            // Read first, while tokio's readiness says so; wait for it
            // (registering the waker) only when it does not.
            let read = stream.try_io(Interest::READABLE, || {
                called = true;
                let n = recv(fd, unfilled)?;
                if n > 0 && n < want {
                    // Drained: answering WouldBlock makes tokio clear the
                    // readiness it saw before this read.
                    drained = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match (drained, read) {
                (Some(n), _) | (None, Ok(n)) => n,
                // Not ready (no call made), or the call found nothing.
                (None, Err(e)) if !called || e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(stream.poll_read_ready(cx))?;
                    continue;
                }
                (None, Err(e)) => return Poll::Ready(Err(e)),
            };
            coop.made_progress();
            // SAFETY: the kernel initialised `n` bytes of `unfilled`.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

/// Writes by `call` once tokio's readiness allows, as [`Tcp::poll_read`]
/// reads.
fn poll_write_with(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut call: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    let coop = ready!(tokio::task::coop::poll_proceed(cx));
    loop {
        match stream.try_io(Interest::WRITABLE, &mut call) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_write_ready(cx))?;
            }
            done => {
                coop.made_progress();
                return Poll::Ready(done);
            }
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        from: &[u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.0.as_raw_fd();
        poll_write_with(&self.0, cx, || send(fd, from))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        from: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = self.0.as_raw_fd();
        poll_write_with(&self.0, cx, || writev(fd, from))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads and writes both ways, a drained read followed by a write of
    /// the peer that must still wake the reader (readiness cleared as of
    /// before the read, never after), a vectored write, and a closed peer
    /// (EOF, then EPIPE without a signal).
    #[tokio::test]
    async fn reads_and_writes_like_the_stream_it_wraps() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(Tcp::connect(addr), listener.accept());
        let mut client = client.unwrap();
        let mut server = Tcp::new(accepted.unwrap().0);
        for round in 0..50u32 {
            let msg = format!("ping {round}");
            client.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0; 64];
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], msg.as_bytes());
        }
        let parts = [IoSlice::new(b"one "), IoSlice::new(b"two")];
        let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_vectored(cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, 7);
        let mut got = [0; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
        drop(client);
        let mut buf = [0; 8];
        assert_eq!(
            server.read(&mut buf).await.unwrap(),
            0,
            "EOF once the peer closed"
        );
        let mut err = None;
        for _ in 0..10 {
            if let Err(e) = server.write_all(b"late").await {
                err = Some(e);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let kind = err.expect("writing to a closed peer fails").kind();
        assert!(
            matches!(
                kind,
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{kind:?}"
        );
    }
}
