//! Upgraded connections (WebSocket): once client and backend have agreed
//! on `101 Switching Protocols`, bytes are copied both ways until either
//! side closes, the tunnel sits idle for the pool's `timeouts.tunnel`, the
//! client takes none of what is written to it for the listener's
//! `send_timeout`, or the listener shuts down.

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
    /// past its timeout, the client lets a write to it wait past
    /// `send_timeout` (a slow reader would hold the backend connection
    /// while sending a byte now and then to stay clear of idleness), or
    /// the listener shuts down.
    pub async fn run<C: AsyncRead + AsyncWrite + Unpin>(
        self,
        client: C,
        send_timeout: Duration,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
    ) {
        let idle = self.idle;
        Counters::inc(&counters.tunnels_opened);
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Activity::new(client, epoch, last.clone());
        let blocked = client.blocked.clone();
        let mut backend = Activity::new(self.backend, epoch, last.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        let mut deadline = epoch + idle.min(send_timeout);
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
                    let now = Instant::now();
                    let last_seen = epoch + Duration::from_millis(last.load(Relaxed));
                    if last_seen + idle <= now {
                        Counters::inc(&counters.tunnels_idle_closed);
                        tracing::debug!("closing idle tunnel");
                        return;
                    }
                    deadline = last_seen + idle;
                    if let Some(since) = since(epoch, &blocked) {
                        if since + send_timeout <= now {
                            Counters::inc(&counters.client_send_timeout);
                            tracing::debug!("tunnel client took nothing in send_timeout; closing");
                            return;
                        }
                        deadline = deadline.min(since + send_timeout);
                    } else {
                        deadline = deadline.min(now + send_timeout);
                    }
                }
            }
        }
    }
}

/// When a write that could not proceed began waiting: `None` for none.
fn since(epoch: Instant, blocked: &AtomicU64) -> Option<Instant> {
    match blocked.load(Relaxed) {
        u64::MAX => None,
        ms => Some(epoch + Duration::from_millis(ms)),
    }
}

/// Notes the time of every read that moved bytes, for the idle timeout,
/// and since when a write has waited (`u64::MAX`: none), for the send
/// timeout.
struct Activity<T> {
    inner: T,
    epoch: Instant,
    last: Arc<AtomicU64>,
    blocked: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(inner: T, epoch: Instant, last: Arc<AtomicU64>) -> Self {
        Activity {
            inner,
            epoch,
            last,
            blocked: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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
            this.last.store(this.now_ms(), Relaxed);
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
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if res.is_pending() {
            if this.blocked.load(Relaxed) == u64::MAX {
                this.blocked.store(this.now_ms(), Relaxed);
            }
        } else {
            this.blocked.store(u64::MAX, Relaxed);
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
