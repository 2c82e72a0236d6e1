//! Per-backend runtime state: health, ejection, in-flight and counters.
//! Keyed by (pool name, addr) in the data plane's registry so it survives
//! reloads; read by the balancers, written by health checks, outlier
//! ejection and the request path, all through atomics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Live state of one backend of one pool.
#[derive(Debug)]
pub struct BackendState {
    pool: Arc<str>,
    addr: SocketAddr,
    /// Active health: starts healthy so a fresh pool serves at once.
    healthy: AtomicBool,
    ejected: AtomicBool,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Outlier bookkeeping: failures in a row, and ejections in a row (the
    /// multiplier of the next ejection's length).
    pub(crate) streak: AtomicU32,
    pub(crate) ejections_in_row: AtomicU32,
    /// Counts ejections begun and ended: the timer of an ejection that
    /// ended early (health checks passing) must not end a later one.
    ejection: AtomicU32,
    /// When it last came back (its health checks pass again, its ejection
    /// ended, a change added it), for `slow_start`: nanoseconds since
    /// [`clock`]'s start; 0 once warm.
    warm_since: AtomicU64,
}

/// A `slow_start` backend's share of its weight as it comes back: enough
/// that it is tried at once.
const MIN_WARMTH: f64 = 0.1;

/// Nanoseconds since the first call, plus one (so never 0): tokio's
/// clock, so that tests with paused time move it.
fn clock() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    start.elapsed().as_nanos() as u64 + 1
}

/// A point-in-time copy of a backend's state, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: u64,
    pub requests: u64,
    pub failures: u64,
}

impl BackendState {
    pub fn new(pool: Arc<str>, addr: SocketAddr) -> Self {
        BackendState {
            pool,
            addr,
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejection: AtomicU32::new(0),
            warm_since: AtomicU64::new(0),
        }
    }

    /// It comes back cold: under `slow_start`, it takes a growing share
    /// of its weight from now.
    pub(crate) fn start_warming(&self) {
        self.warm_since.store(clock(), Relaxed);
    }

    /// The share of its weight it takes now under a `slow_start` of
    /// `window`: 10 % as it comes back, growing evenly to all of it
    /// `window` later.
    #[inline]
    pub(crate) fn warmth(&self, window: Option<Duration>) -> f64 {
        let Some(window) = window else {
            return 1.0;
        };
        match self.warm_since.load(Relaxed) {
            0 => 1.0,
            since => self.warmth_since(since, window),
        }
    }

    #[cold]
    fn warmth_since(&self, since: u64, window: Duration) -> f64 {
        let (elapsed, window) = (clock().saturating_sub(since), window.as_nanos() as u64);
        if elapsed >= window {
            // Warm: back to the one load above.
            let _ = self.warm_since.compare_exchange(since, 0, Relaxed, Relaxed);
            return 1.0;
        }
        (elapsed as f64 / window as f64).max(MIN_WARMTH)
    }

    pub fn pool(&self) -> &Arc<str> {
        &self.pool
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Up according to active health checks (always true without checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }
    /// Currently ejected by passive outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }
    /// Healthy and not ejected: what balancing calls "healthy".
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
    /// Attempts sent to this backend (retries count once per backend tried).
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }
    /// Attempts that failed: connect failure, reset, timeout or 5xx.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            pool: self.pool.clone(),
            addr: self.addr,
            healthy: self.is_healthy(),
            ejected: self.is_ejected(),
            in_flight: self.in_flight(),
            requests: self.requests(),
            failures: self.failures(),
        }
    }

    /// Returns the previous value so callers log only real flips. Coming
    /// up, it starts warming.
    pub(crate) fn set_healthy(&self, up: bool) -> bool {
        let was = self.healthy.swap(up, Relaxed);
        if up && !was {
            self.start_warming();
        }
        was
    }
    /// Ejects the backend; the ejection's number, to end it by, or None
    /// when it was ejected already.
    pub(crate) fn eject(&self) -> Option<u32> {
        if self.ejected.swap(true, Relaxed) {
            return None;
        }
        Some(self.ejection.fetch_add(1, Relaxed) + 1)
    }

    /// Ends ejection `n`, if it is still the current one; whether it did.
    pub(crate) fn readmit(&self, n: u32) -> bool {
        let readmitted = self
            .ejection
            .compare_exchange(n, n + 1, Relaxed, Relaxed)
            .is_ok()
            && self.ejected.swap(false, Relaxed);
        if readmitted {
            self.start_warming();
        }
        readmitted
    }

    /// The current ejection's number, when the backend is ejected.
    pub(crate) fn ejection(&self) -> Option<u32> {
        let n = self.ejection.load(Relaxed);
        self.is_ejected().then_some(n)
    }
    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Counts an attempt and holds it in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// Keeps one request counted in its backend's in-flight gauge; dropping it
/// (response streamed, client gone, or attempt failed) releases it, so the
/// gauge cannot leak on any error path.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that comes back (health up again, ejection over) takes a
    /// tenth of its weight's share at first, half of it half a window
    /// later, and all of it from the window's end on; without
    /// `slow_start`, all of it at once.
    #[tokio::test(start_paused = true)]
    async fn warmth_grows_over_the_slow_start_window() {
        let b = BackendState::new("p".into(), ([10, 0, 0, 1], 80).into());
        let window = Some(Duration::from_secs(60));
        assert_eq!(b.warmth(window), 1.0, "warm at start");
        b.set_healthy(false);
        b.set_healthy(true);
        assert_eq!(b.warmth(window), MIN_WARMTH);
        assert_eq!(b.warmth(None), 1.0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!((b.warmth(window) - 0.5).abs() < 0.01);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.warmth(window), 1.0);
        assert_eq!(b.warm_since.load(Relaxed), 0, "back to the fast path");
        let n = b.eject().unwrap();
        assert!(b.readmit(n));
        assert_eq!(b.warmth(window), MIN_WARMTH, "an ejection's end too");
    }
}
