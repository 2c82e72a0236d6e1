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
/// ended, for the idle timeout (hyper has none); whether the client lets
/// their responses move, for `send_timeout`; and how many streams it
/// reset before their response, against rapid reset.
///
/// Nothing wakes the connection when a request starts or ends: its timer
/// is lazy, re-reading these when it fires. Waking it on each change cost
/// two extra polls of the whole connection per request. Only a client
/// resetting too many streams wakes it ([`ConnState::glitched`]).
#[derive(Debug)]
pub(crate) struct ConnState {
    pub epoch: Instant,
    pub active: AtomicU32,
    /// Requests whose head arrived on this connection.
    pub started: AtomicU64,
    idle_since_ms: AtomicU64,
    /// Response bodies that gave a piece of data and have not been asked
    /// for more since: hyper asks only when the client's flow-control
    /// window has room, so these wait on the client.
    waiting: AtomicU32,
    /// When a response body was last asked for more (ms since `epoch`).
    polled_ms: AtomicU64,
    /// Streams the client reset before their response, and streams
    /// answered: a client that resets more than `max_resets`, and more
    /// than it was answered, is cut off.
    resets: AtomicU32,
    answered: AtomicU32,
    max_resets: u32,
    /// Woken once the resets pass the limit.
    pub glitched: tokio::sync::Notify,
}

impl ConnState {
    pub fn new(epoch: Instant, max_resets: u32) -> Self {
        ConnState {
            epoch,
            active: AtomicU32::new(0),
            started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            polled_ms: AtomicU64::new(0),
            resets: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            max_resets,
            glitched: tokio::sync::Notify::new(),
        }
    }

    /// When the last response ended (or the connection opened).
    pub fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Relaxed))
    }

    /// Since when the client has let no response move while some wait
    /// on it; None when none waits.
    pub fn stalled_since(&self) -> Option<Instant> {
        (self.waiting.load(Relaxed) > 0)
            .then(|| self.epoch + Duration::from_millis(self.polled_ms.load(Relaxed)))
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Marks a request in progress on its connection until dropped (with the
/// response body, so streaming counts as busy), and tells the connection
/// whether the client lets the response move.
pub(crate) struct ConnGuard {
    state: Arc<ConnState>,
    /// The body gave data, and has not been asked for more since.
    gave: bool,
}

impl ConnGuard {
    pub fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.started.fetch_add(1, Relaxed);
        ConnGuard {
            state: state.clone(),
            gave: false,
        }
    }

    /// The response body is asked for more: the client lets it move.
    pub fn polled(&mut self) {
        if std::mem::take(&mut self.gave) {
            self.state.waiting.fetch_sub(1, Relaxed);
        }
        self.state.polled_ms.store(self.state.millis(), Relaxed);
    }

    /// The response body gave a piece of data.
    pub fn gave(&mut self) {
        if !self.gave {
            self.gave = true;
            self.state.waiting.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let s = &self.state;
        if self.gave {
            s.waiting.fetch_sub(1, Relaxed);
        }
        s.idle_since_ms.store(s.millis(), Relaxed);
        s.active.fetch_sub(1, Relaxed);
    }
}

/// A stream whose response is not out yet: dropped so, the client reset it
/// (or left). Counted against rapid reset (HAProxy 3's "glitches"): hyper
/// counts only streams reset before it accepted them, so resets paced to
/// stay under that count went on for ever.
pub(crate) struct Unanswered(Option<Arc<ConnState>>);

impl Unanswered {
    pub fn new(state: &Arc<ConnState>) -> Self {
        Unanswered(Some(state.clone()))
    }

    pub fn answered(mut self) {
        if let Some(s) = self.0.take() {
            s.answered.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let resets = s.resets.fetch_add(1, Relaxed) + 1;
            if resets > s.max_resets && resets > s.answered.load(Relaxed) {
                s.glitched.notify_one();
            }
        }
    }
}
