//! HTTP/2 to backends (`protocol = "h2"`): one multiplexed prior-knowledge
//! connection per backend, made on first use and again after it closes.
//! Owning the connection (rather than the pooled client) lets the request
//! carry the client's authority as `:authority` while the connection still
//! goes to the backend the balancer picked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fulcrum_config::snapshot::Timeouts;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::body::{ClientBodyError, RequestBody};
use crate::tcp::Tcp;

/// A request body on its way over HTTP/2, telling when its last frame has
/// gone to the connection: the response timeout runs from then, as over
/// HTTP/1.1, so a slow upload to a healthy backend is not its timeout.
/// hyper sends the body from the connection's task, hence the channel.
#[derive(Debug)]
pub(crate) struct SentBody {
    body: RequestBody,
    sent: Option<oneshot::Sender<()>>,
}

impl SentBody {
    /// The body, and what resolves once it has been sent (or dropped
    /// unsent: the exchange failed, and its error says why).
    pub fn new(body: RequestBody) -> (SentBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut b = SentBody {
            body,
            sent: Some(tx),
        };
        // An empty body goes with the head, never polled.
        if b.body.is_end_stream() {
            b.done();
        }
        (b, rx)
    }

    fn done(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
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
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.done();
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
}

impl H2Backend {
    pub fn new(addr: SocketAddr, timeouts: &Timeouts) -> Self {
        H2Backend {
            addr,
            connect_timeout: timeouts.connect,
            sender: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        }
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
            .handshake(TokioIo::new(stream))
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
