//! The connector to backends: hyper-util's `HttpConnector`, plus a note of
//! when the current attempt's connect finished, so the response timeout can
//! start when the request could first be sent rather than before the
//! connect (the legacy client gives no other way to tell the phases apart).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

tokio::task_local! {
    /// Set around one attempt's `client.request`: the connector called
    /// while polling it (a new connection for this attempt) reports here.
    static ATTEMPT: Arc<ConnectClock>;
}

/// When an attempt's own connect started and finished, in µs since `base`
/// plus one (0 = not yet).
#[derive(Debug)]
pub(crate) struct ConnectClock {
    base: Instant,
    started: AtomicU64,
    done: AtomicU64,
}

impl ConnectClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnectClock {
            base: Instant::now(),
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }
    fn mark(&self, slot: &AtomicU64) {
        slot.store(self.base.elapsed().as_micros() as u64 + 1, Relaxed);
    }
    /// The phase the attempt is in: `None` while its connect is running.
    /// `Some(t)`: the request could be sent from `t` on.
    fn sendable_since(&self) -> Option<Instant> {
        if self.started.load(Relaxed) == 0 {
            return Some(self.base); // a pooled connection: no connect
        }
        match self.done.load(Relaxed) {
            0 => None,
            d => Some(self.base + Duration::from_micros(d - 1)),
        }
    }
}

/// Runs `request` with its response timeout measured from the moment the
/// request could be sent: right away on a pooled connection, or when this
/// attempt's connect finished (the connect is bounded by the connector's
/// own timeout). `Err(())` on timeout.
pub(crate) async fn with_response_timeout<F: Future>(
    response: Duration,
    connect: Duration,
    request: F,
) -> Result<F::Output, ()> {
    let clock = ConnectClock::new();
    let fut = ATTEMPT.scope(clock.clone(), request);
    tokio::pin!(fut);
    let mut deadline = clock.base + response;
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                match clock.sendable_since() {
                    Some(t) if t + response > now => deadline = t + response,
                    Some(_) => return Err(()),
                    // Still connecting: the connector's timeout will end it;
                    // this is only a backstop.
                    None => deadline = now + connect,
                }
            }
        }
    }
}

/// `HttpConnector` that reports to the current attempt's clock.
#[derive(Clone, Debug)]
pub(crate) struct Connector(pub HttpConnector);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    // Boxed once per new backend connection, never per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let clock = ATTEMPT.try_with(|c| c.clone()).ok();
        if let Some(c) = &clock {
            c.mark(&c.started);
        }
        let connecting = tower_service::Service::<Uri>::call(&mut self.0, uri);
        Box::pin(async move {
            let out = connecting.await.map_err(Into::into);
            if let Some(c) = &clock {
                c.mark(&c.done);
            }
            out
        })
    }
}
