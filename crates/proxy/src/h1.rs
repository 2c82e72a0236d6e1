//! HTTP/1.1 to backends (`protocol = "http1"`): a keep-alive pool of
//! hyper's connection handles per backend, owned here rather than by
//! hyper-util's pooled client, which on every request took a mutex, boxed
//! a connect future, checked the URI and spawned a task to put the
//! connection back.
//!
//! Idle connections sit in a stack per worker thread (no lock, and the
//! connection most recently used, the warmest, goes first). A connection
//! goes back only once its response body has been read to the end, so a
//! request never waits behind, or reads the tail of, someone else's
//! response; one whose body was dropped early is closed by hyper.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_config::snapshot::Timeouts;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::RequestBody;

/// Why one attempt at a backend failed, and in which phase: the request
/// path turns this into a [`crate::ProxyError`] that says whether it may
/// be retried.
#[derive(Debug)]
pub(crate) enum H1Error {
    /// TCP connect refused or failed: nothing was sent.
    Connect(std::io::Error),
    /// TCP connect slower than the pool's `timeouts.connect`.
    ConnectTimeout,
    /// No response head within the pool's `timeouts.response`, counted from
    /// when the request could be sent.
    ResponseTimeout,
    /// The connection failed once the request was (or may have been) sent.
    Send(hyper::Error),
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
    use_: Arc<Use>,
}

/// Whether a connection is lent out, idle (since when) or closed by its
/// own task for idling too long; shared by the pool and that task, so an
/// idle connection is closed (between one and two `timeouts.idle` after
/// its last use) even when no request comes to prune it.
#[derive(Debug)]
struct Use {
    epoch: Instant,
    /// `LENT`, `CLOSED`, or ms since `epoch` at which it went idle.
    state: AtomicU64,
}

const LENT: u64 = u64::MAX;
const CLOSED: u64 = u64::MAX - 1;

impl Use {
    /// Takes an idle connection for a request; false if its task closed it.
    fn lend(&self) -> bool {
        self.state.swap(LENT, Ordering::AcqRel) != CLOSED
    }
    fn idle(&self, now: Instant) {
        let ms = now.duration_since(self.epoch).as_millis() as u64;
        let _ = self
            .state
            .compare_exchange(LENT, ms, Ordering::AcqRel, Ordering::Relaxed);
    }
}

pub(crate) struct H1Backend {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per thread; one released beyond is closed.
    pub max_idle: usize,
    idle: ThreadLocal<RefCell<Vec<Idle>>>,
}

impl std::fmt::Debug for H1Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Backend")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A connection lent to one request. Returned to its backend's pool by
/// [`Lease::release`] once the response body has ended; dropped otherwise,
/// which closes the connection.
pub(crate) struct Lease {
    sender: SendRequest<RequestBody>,
    use_: Arc<Use>,
    backend: Arc<H1Backend>,
}

impl Lease {
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut stack = self.backend.idle.get_or_default().borrow_mut();
        // The oldest sit at the bottom: drop those past the idle timeout
        // here, so a pool that shrinks does not keep its peak forever.
        let stale = stack
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.backend.idle_timeout)
            .count();
        stack.drain(..stale);
        if stack.len() >= self.backend.max_idle {
            // Dropping the sender closes the connection.
            return;
        }
        self.use_.idle(now);
        stack.push(Idle {
            sender: self.sender,
            since: now,
            use_: self.use_,
        });
    }
}

impl H1Backend {
    pub fn new(addr: SocketAddr, timeouts: &Timeouts, max_idle: u32) -> Self {
        H1Backend {
            addr,
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            max_idle: max_idle as usize,
            idle: ThreadLocal::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most recently used idle connection that is still open and
    /// within the idle timeout.
    fn checkout(&self) -> Option<(SendRequest<RequestBody>, Arc<Use>)> {
        let mut stack = self.idle.get()?.borrow_mut();
        let now = Instant::now();
        while let Some(i) = stack.pop() {
            if !i.sender.is_closed()
                && now.duration_since(i.since) < self.idle_timeout
                && i.use_.lend()
            {
                return Some((i.sender, i.use_));
            }
        }
        None
    }

    async fn connect(&self) -> Result<(SendRequest<RequestBody>, Arc<Use>), H1Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| H1Error::ConnectTimeout)?
            .map_err(H1Error::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // As toward clients (listener.rs): flattened writes.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(H1Error::Send)?;
        let use_ = Arc::new(Use {
            epoch: Instant::now(),
            state: AtomicU64::new(LENT),
        });
        let (addr, idle_timeout, watch) = (self.addr, self.idle_timeout, use_.clone());
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(backend = %addr, error = %e, "backend connection ended");
                        }
                        return;
                    }
                    // Checked once per idle timeout, never re-armed per
                    // request.
                    _ = tokio::time::sleep(idle_timeout) => {
                        let state = watch.state.load(Ordering::Acquire);
                        let idle_ms = idle_timeout.as_millis() as u64;
                        if state < CLOSED
                            && watch.epoch.elapsed().as_millis() as u64 >= state + idle_ms
                            && watch
                                .state
                                .compare_exchange(state, CLOSED, Ordering::AcqRel, Ordering::Relaxed)
                                .is_ok()
                        {
                            return; // dropping `conn` closes the socket
                        }
                    }
                }
            }
        });
        Ok((sender, use_))
    }

    /// Sends `req` on an idle connection, or a new one if none is left.
    /// A pooled connection that turns out closed hands the request back
    /// unsent (hyper's `try_send_request`), and the next one is tried, so
    /// a backend closing a keep-alive connection is never seen as a
    /// failure of the request. The response timeout starts when the
    /// request can be sent: at once on a pooled connection, after the
    /// connect on a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), H1Error> {
        let mut deadline = Instant::now() + response_timeout;
        loop {
            let ((mut sender, use_), pooled) = match self.checkout() {
                Some(s) => (s, true),
                None => {
                    let s = self.connect().await?;
                    deadline = Instant::now() + response_timeout;
                    (s, false)
                }
            };
            let sent = tokio::time::timeout_at(deadline, async {
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(req)));
                }
                sender.try_send_request(req).await.map_err(|mut e| {
                    let back = e.take_message();
                    (e.into_error(), back)
                })
            })
            .await;
            match sent {
                Err(_) => return Err(H1Error::ResponseTimeout),
                Ok(Ok(resp)) => {
                    let lease = Lease {
                        sender,
                        use_,
                        backend: self.clone(),
                    };
                    return Ok((resp, lease));
                }
                Ok(Err((_, Some(back)))) if pooled => req = back,
                Ok(Err((e, _))) => return Err(H1Error::Send(e)),
            }
        }
    }
}
