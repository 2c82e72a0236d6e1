//! Serving a listener: accept connections, run HTTP/1.1 on each with the
//! listener's header and idle timeouts, and shut down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtime::DataPlane;

/// Serve one listener, its settings looked up by `name` in the current
/// snapshot for each new connection. On `shutdown`: stop accepting, let
/// in-flight requests finish (keep-alive connections close after their
/// current request), and return when every connection is done. The caller
/// bounds this with a grace period.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    plane: Arc<DataPlane>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut settings = plane
        .snapshot()
        .listeners
        .iter()
        .find(|l| l.name == name)
        .cloned()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("listener \"{name}\" is not in the config"),
            )
        })?;
    // Every connection task holds a sender; when all are dropped, all
    // connections are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // A reload may have changed this listener's timeouts; if it removed
        // the listener, keep the last settings until the caller stops us.
        if let Some(l) = plane.snapshot().listeners.iter().find(|l| l.name == name)
            && *l != settings
        {
            settings = l.clone();
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            client,
            plane.clone(),
            settings.header_timeout,
            settings.idle_timeout,
            shutdown.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
    Ok(())
}

/// Per connection: requests in progress and when the last one ended, for
/// the idle timeout (hyper has a header timeout but no idle timeout).
#[derive(Debug)]
pub(crate) struct ConnState {
    epoch: Instant,
    active: AtomicU32,
    idle_since_ms: AtomicU64,
}

/// Marks a request in progress on its connection until dropped (with the
/// response body, so streaming counts as busy).
pub(crate) struct ConnGuard(Arc<ConnState>);

impl ConnGuard {
    fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        ConnGuard(state.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since_ms
            .store(s.epoch.elapsed().as_millis() as u64, Relaxed);
        s.active.fetch_sub(1, Relaxed);
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    plane: Arc<DataPlane>,
    header_timeout: Duration,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    _done: mpsc::Sender<()>,
) {
    let state = Arc::new(ConnState {
        epoch: Instant::now(),
        active: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(0),
    });
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let plane = plane.clone();
        let guard = ConnGuard::new(&svc_state);
        async move { Ok::<_, Infallible>(crate::proxy::handle(&plane, req, client, guard).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Hyper starts this timer whenever it waits for a request head, so
        // it also bounds the wait for the next request on a keep-alive
        // connection.
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_check = if closing {
            None
        } else if state.active.load(Relaxed) > 0 {
            Some(Instant::now() + idle_timeout)
        } else {
            let since = state.epoch + Duration::from_millis(state.idle_since_ms.load(Relaxed));
            Some(since + idle_timeout)
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%client, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                // Idle connections close now; busy ones after their response.
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = sleep_until(idle_check), if idle_check.is_some() => {
                let idle = state.active.load(Relaxed) == 0
                    && state.epoch.elapsed().as_millis() as u64
                        >= state.idle_since_ms.load(Relaxed) + idle_timeout.as_millis() as u64;
                if idle {
                    tracing::debug!(%client, "closing idle client connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
