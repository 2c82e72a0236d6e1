//! Upgraded connections (WebSocket): once client and backend have agreed
//! on `101 Switching Protocols`, bytes are copied both ways until either
//! side closes, the tunnel sits idle for the pool's `timeouts.tunnel`, or
//! the listener shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::io::Rewind;
use crate::tcp::Tcp;

/// A backend's agreement to an upgrade, waiting for the client's side:
/// the client connection turns into the tunnel once it has sent the 101.
pub(crate) struct Tunnel {
    /// The backend connection, with any bytes it sent past its 101.
    pub backend: Rewind<Tcp>,
    /// The pool's `timeouts.tunnel`.
    pub idle: Duration,
}

impl Tunnel {
    /// Copies bytes both ways until either side closes, the tunnel idles
    /// past its timeout, or the listener shuts down.
    pub async fn run<C: AsyncRead + AsyncWrite + Unpin>(
        self,
        client: C,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
    ) {
        let idle = self.idle;
        Counters::inc(&counters.tunnels_opened);
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Activity::new(client, epoch, last.clone());
        let mut backend = Activity::new(self.backend, epoch, last.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        let mut deadline = epoch + idle;
        loop {
            tokio::select! {
                res = &mut copy => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    let last_seen = epoch + Duration::from_millis(last.load(Relaxed));
                    if last_seen + idle <= Instant::now() {
                        Counters::inc(&counters.tunnels_idle_closed);
                        tracing::debug!("closing idle tunnel");
                        return;
                    }
                    deadline = last_seen + idle;
                }
            }
        }
    }
}

/// Notes the time of every read that moved bytes, for the idle timeout.
struct Activity<T> {
    inner: T,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(inner: T, epoch: Instant, last: Arc<AtomicU64>) -> Self {
        Activity { inner, epoch, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last
                .store(this.epoch.elapsed().as_millis() as u64, Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
