//! HTTP/2 to backends (`protocol = "h2"`): one multiplexed prior-knowledge
//! connection per backend, made on first use and again after it closes.
//! Owning the connection (rather than the pooled client) lets the request
//! carry the client's authority as `:authority` while the connection still
//! goes to the backend the balancer picked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fulcrum_config::snapshot::Timeouts;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::{ClientBodyError, RequestBody};
use crate::error::ProxyError;
use crate::tcp::Tcp;

/// A request body on its way over HTTP/2, telling the attempt how its
/// upload goes. hyper sends the body from the connection's task and, when
/// the body fails, only resets the stream: the reason and the progress
/// reach the attempt through [`Upload`].
#[derive(Debug)]
pub(crate) struct SentBody {
    body: RequestBody,
    sent: Option<oneshot::Sender<Option<ProxyError>>>,
    waiting: Arc<Mutex<Option<Instant>>>,
}

/// The attempt's side of a [`SentBody`].
pub(crate) struct Upload {
    /// Resolves once the body has gone (`None`), or failed by the client's
    /// fault (`Some`); dropped unsent when the exchange failed.
    pub sent: oneshot::Receiver<Option<ProxyError>>,
    /// Since when a piece has waited for the backend to take it (its flow
    /// control window closed); `None` while hyper asks for the next one.
    waiting: Arc<Mutex<Option<Instant>>>,
}

impl Upload {
    /// When the backend will have held a piece for `limit`: the moment an
    /// upload it stopped taking times out.
    pub fn stalled_at(&self, limit: Duration) -> Option<Instant> {
        let waiting = *self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.map(|since| since + limit)
    }

    /// The client's fault that failed the exchange, if it was one.
    pub fn fault(&mut self) -> Option<ProxyError> {
        self.sent.try_recv().ok().flatten()
    }
}

impl SentBody {
    pub fn new(body: RequestBody) -> (SentBody, Upload) {
        let (tx, rx) = oneshot::channel();
        let waiting = Arc::new(Mutex::new(None));
        let mut b = SentBody {
            body,
            sent: Some(tx),
            waiting: waiting.clone(),
        };
        // An empty body goes with the head, never polled.
        if b.body.is_end_stream() {
            b.done(None);
        }
        (b, Upload { sent: rx, waiting })
    }

    fn done(&mut self, fault: Option<ProxyError>) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(fault);
        }
    }

    fn wait_since(&self, since: Option<Instant>) {
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = since;
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        this.wait_since(None);
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Err(e))) => this.done(Some(e.to_proxy_error())),
            Poll::Ready(None) => this.done(None),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.done(None),
            Poll::Ready(Some(Ok(_))) => this.wait_since(Some(Instant::now())),
            Poll::Pending => {}
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why no h2 connection to the backend could be had.
#[derive(Debug)]
pub(crate) enum H2ConnectError {
    /// TCP connect refused or failed.
    Connect(std::io::Error),
    /// TCP connect slower than the pool's `timeouts.connect`.
    Timeout,
    /// Connected, but the backend does not speak HTTP/2 prior knowledge.
    Handshake(hyper::Error),
}

#[derive(Debug)]
pub(crate) struct H2Backend {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// The live connection's handle; replaced when it closes. Read with one
    /// atomic load on the request path.
    sender: ArcSwapOption<SendRequest<SentBody>>,
    /// Only one task connects at a time; the others wait and reuse its
    /// connection. Taken only when there is no live connection.
    connecting: tokio::sync::Mutex<()>,
    /// The last connection's first bytes were an HTTP/1 response: the
    /// backend does not speak HTTP/2 (`protocol = "h2"` set for an HTTP/1.1
    /// server), which h2 itself only reports as a broken connection.
    spoke_http1: Arc<AtomicBool>,
}

impl H2Backend {
    pub fn new(addr: SocketAddr, timeouts: &Timeouts) -> Self {
        H2Backend {
            addr,
            connect_timeout: timeouts.connect,
            sender: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            spoke_http1: Arc::default(),
        }
    }

    /// Whether the backend answered the last connection in HTTP/1.
    pub fn spoke_http1(&self) -> bool {
        self.spoke_http1.load(Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn live(&self) -> Option<SendRequest<SentBody>> {
        self.sender
            .load()
            .as_ref()
            .filter(|s| !s.is_closed())
            .map(|s| SendRequest::clone(s))
    }

    /// A handle on a live connection, connecting first if there is none.
    pub async fn sender(&self) -> Result<SendRequest<SentBody>, H2ConnectError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let stream = tokio::time::timeout(self.connect_timeout, Tcp::connect(self.addr))
            .await
            .map_err(|_| H2ConnectError::Timeout)?
            .map_err(H2ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Find a dead backend connection before a request does.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(FirstBytes {
                io: stream,
                spoke_http1: Some(self.spoke_http1.clone()),
            }))
            .await
            .map_err(H2ConnectError::Handshake)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "h2 backend connection ended");
            }
        });
        self.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// A backend connection that notes whether the first bytes it reads are
/// an HTTP/1 status line, then gets out of the way.
struct FirstBytes {
    io: Tcp,
    /// Until the first read that returns bytes.
    spoke_http1: Option<Arc<AtomicBool>>,
}

impl AsyncRead for FirstBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(flag) = self.spoke_http1.take()
        {
            flag.store(buf.filled()[before..].starts_with(b"HTTP/"), Relaxed);
        }
        res
    }
}

impl AsyncWrite for FirstBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        from: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, from)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        from: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, from)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
