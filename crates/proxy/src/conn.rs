//! What the request path knows of the client connection a request came
//! on ([`ConnInfo`]), an HTTP/2 connection's requests in progress
//! ([`ConnState`], [`ConnGuard`]), and the count of a listener's open
//! connections against `limits.max_connections` ([`ConnectionCount`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_config::snapshot::Listener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::runtime::DataPlane;

/// The client connections open on one listener, counted against
/// `limits.max_connections`. A listener with a socket per worker thread
/// shares one count over all of them, so the limit is the listener's, not
/// each thread's.
#[derive(Clone, Debug, Default)]
pub struct ConnectionCount(Arc<AtomicUsize>);

/// One open connection counted against `max_connections` until dropped.
/// Held by the connection task and by any tunnel it turned into.
pub(crate) struct Admission(Arc<AtomicUsize>);

impl Admission {
    /// None when `max` are open already. The count goes up before the
    /// check (a refused admission's drop takes it back down), so sockets
    /// on two threads cannot both take the last place.
    pub fn take(open: &ConnectionCount, max: u32) -> Option<Self> {
        let admitted = Admission(open.0.clone());
        (open.0.fetch_add(1, Relaxed) < max as usize).then_some(admitted)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the request path knows of the connection a request came on.
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    /// `client`'s IP, encoded once for X-Forwarded-For.
    pub client_ip: http::HeaderValue,
    pub tls: bool,
    pub settings: Arc<Listener>,
    pub plane: Arc<DataPlane>,
    /// Set by a request whose backend agreed to an upgrade: the connection
    /// becomes this tunnel once the 101 is sent.
    pub tunnel: Mutex<Option<crate::tunnel::Tunnel>>,
    /// Kept until the connection and any tunnel from it are gone.
    pub _hold: (mpsc::Sender<()>, Admission),
}

/// Per HTTP/2 connection: streams in progress and when the last one
/// ended, for the idle timeout (hyper has none).
///
/// Nothing wakes the connection when a request starts or ends: its timer
/// is lazy, re-reading these when it fires. Waking it on each change cost
/// two extra polls of the whole connection per request.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub epoch: Instant,
    pub active: AtomicU32,
    /// Requests whose head arrived on this connection.
    pub started: AtomicU64,
    idle_since_ms: AtomicU64,
}

impl ConnState {
    pub fn new(epoch: Instant) -> Self {
        ConnState {
            epoch,
            active: AtomicU32::new(0),
            started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// When the last response ended (or the connection opened).
    pub fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Relaxed))
    }
}

/// Marks a request in progress on its connection until dropped (with the
/// response body, so streaming counts as busy).
pub(crate) struct ConnGuard(Arc<ConnState>);

impl ConnGuard {
    pub fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.started.fetch_add(1, Relaxed);
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
