//! Keep-alive connections to one HTTP/1.1 backend: idle connections sit in
//! a stack per worker thread (no lock, and the connection most recently
//! used, the warmest, goes first), closed after `timeouts.idle` (those
//! beyond `idle_per_backend` after a second) by one sweeper task per
//! backend and thread that runs only while the stack holds connections. A
//! connection goes back only once its response body has been read to the
//! end (`client`), so a request never waits behind, or reads the tail of,
//! someone else's response.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::tcp::Tcp;
use fulcrum_config::snapshot::Timeouts;
use thread_local::ThreadLocal;
use tokio::runtime::RuntimeFlavor;
use tokio::time::Instant;

/// Idle connections of one backend on one thread, oldest at the bottom.
#[derive(Default)]
struct Stack {
    conns: Vec<Idle>,
    /// A sweeper task is (or, on a multi-thread runtime, cannot be) running
    /// for this stack.
    armed: bool,
    /// When the sweeper wakes next; it is told to wake sooner when the
    /// stack grows past `idle_per_backend`.
    sweep_at: Option<Instant>,
    wake_sweeper: Arc<tokio::sync::Notify>,
}

/// Idle connections beyond `idle_per_backend` are closed once idle this
/// long: a burst's surplus goes within a second, while connections that a
/// steady load above that number keeps reusing are not closed and opened
/// again request after request (measured: bench/RESULTS.md, round 7).
const SURPLUS_GRACE: Duration = Duration::from_secs(1);

struct Idle {
    io: Tcp,
    since: Instant,
    timer: Timer,
}

/// A backend connection's response timer, kept with it from request to
/// request: it is armed in the timer wheel once and moved on lazily (see
/// `BackendConn::poll_deadline`), where a timer per request cost an
/// insertion into and a removal from the wheel each.
pub(crate) type Timer = Pin<Box<tokio::time::Sleep>>;

impl Stack {
    /// Closes the connections idle for `timeout` or longer, and those
    /// beyond `max_idle` idle for `SURPLUS_GRACE`.
    fn prune(&mut self, now: Instant, timeout: Duration, max_idle: usize) {
        let idle_for = |i: &Idle| now.duration_since(i.since);
        let stale = self
            .conns
            .iter()
            .take_while(|i| idle_for(i) >= timeout)
            .count();
        let surplus = self
            .conns
            .iter()
            .take(self.conns.len().saturating_sub(max_idle))
            .take_while(|i| idle_for(i) >= SURPLUS_GRACE)
            .count();
        let n = stale.max(surplus);
        if n > 0 {
            self.conns.drain(..n);
        }
    }

    /// When the sweeper should next look: at the oldest connection's idle
    /// timeout, or sooner for a surplus. None when there is nothing to do.
    fn next_sweep(&self, timeout: Duration, max_idle: usize) -> Option<Instant> {
        let oldest = self.conns.first()?;
        let at = oldest.since + timeout;
        Some(if self.conns.len() > max_idle {
            at.min(oldest.since + SURPLUS_GRACE)
        } else {
            at
        })
    }
}

/// One HTTP/1.1 backend: where it is, how to connect, and its idle
/// connections (`protocol = "http1"`).
pub(crate) struct H1Backend {
    addr: SocketAddr,
    pub(super) connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per thread; one released beyond is closed.
    pub max_idle: usize,
    idle: ThreadLocal<RefCell<Stack>>,
}

impl std::fmt::Debug for H1Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Backend")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
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

    /// The most recently used idle connection that is within the idle
    /// timeout and still open.
    pub(super) fn checkout(&self, now: Instant) -> Option<(Tcp, Timer)> {
        let mut stack = self.idle.get()?.borrow_mut();
        while let Some(i) = stack.conns.pop() {
            if now.duration_since(i.since) < self.idle_timeout && still_open(&i.io) {
                return Some((i.io, i.timer));
            }
        }
        None
    }

    /// Puts a connection whose response ended back on this thread's stack,
    /// or closes it when `idle_per_backend` are already there.
    pub(super) fn release(self: &Arc<Self>, io: Tcp, timer: Timer) {
        if self.max_idle == 0 {
            return; // dropping `io` closes it
        }
        let now = Instant::now();
        let mut stack = self.idle.get_or_default().borrow_mut();
        // The sweeper does this on its own; here too for runtimes that
        // cannot run one (below), so a pool that shrinks does not keep its
        // peak forever.
        stack.prune(now, self.idle_timeout, self.max_idle);
        stack.conns.push(Idle {
            io,
            since: now,
            timer,
        });
        let Some(due) = stack.next_sweep(self.idle_timeout, self.max_idle) else {
            return;
        };
        if !stack.armed {
            stack.armed = true;
            stack.sweep_at = Some(due);
            self.arm_sweeper(due, stack.wake_sweeper.clone());
        } else if stack.sweep_at.is_some_and(|at| due < at) {
            // A surplus, due sooner than the sweeper looks.
            stack.sweep_at = Some(due);
            stack.wake_sweeper.notify_one();
        }
    }

    /// Starts the task that closes this thread's idle connections once
    /// they pass `timeouts.idle`, even when no request comes to do it. It
    /// must run on this thread to reach this thread's stack, which holds
    /// on the current-thread runtimes that serve requests (one per worker
    /// thread). Elsewhere (a multi-thread runtime in a test) the stack is
    /// only pruned when connections are released.
    fn arm_sweeper(self: &Arc<Self>, first: Instant, wake: Arc<tokio::sync::Notify>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
            rt.spawn(sweep(Arc::downgrade(self), first, wake));
        }
    }

    /// Idle connections on this thread (tests).
    #[cfg(test)]
    pub(super) fn idle_here(&self) -> usize {
        self.idle.get().map_or(0, |s| s.borrow().conns.len())
    }

    /// Whether this thread's sweeper is still armed (tests).
    #[cfg(test)]
    pub(super) fn sweeper_armed(&self) -> bool {
        self.idle.get().is_some_and(|s| s.borrow().armed)
    }
}

/// Sleeps until the oldest idle connection of this thread's stack passes
/// the idle timeout (or, with more than `idle_per_backend` idle, the
/// surplus grace; a release that makes a surplus wakes it sooner), closes
/// what has, and ends once the stack is empty (the next release starts a
/// new one). Holds the backend weakly, so a reload that drops it closes
/// its connections at once.
async fn sweep(backend: Weak<H1Backend>, mut at: Instant, wake: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = wake.notified() => {}
        }
        let Some(b) = backend.upgrade() else { return };
        let Some(cell) = b.idle.get() else { return };
        let mut stack = cell.borrow_mut();
        stack.prune(Instant::now(), b.idle_timeout, b.max_idle);
        stack.sweep_at = stack.next_sweep(b.idle_timeout, b.max_idle);
        match stack.sweep_at {
            Some(next) => at = next,
            None => {
                stack.armed = false;
                return;
            }
        }
    }
}

/// Whether an idle connection can carry a request: not closed by the
/// backend, and without bytes nobody asked for. No system call unless the
/// socket turned readable since its last read drained it.
fn still_open(io: &Tcp) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_idle_per_backend_stay_while_reused_and_go_a_second_after() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            tunnel: Duration::from_secs(60),
        };
        let b = Arc::new(H1Backend::new(addr, &timeouts, 1));
        let mut peers = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(Tcp::connect(addr).await.unwrap());
            peers.push(listener.accept().await.unwrap().0);
        }
        let timer = || Box::pin(tokio::time::sleep(Duration::from_secs(5)));
        // Three requests at once end: all three kept, two over the limit.
        for io in conns {
            b.release(io, timer());
        }
        assert_eq!(b.idle_here(), 3);
        // A steady load reuses them within the grace: none is closed.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = Instant::now();
            let taken: Vec<_> = (0..3).map(|_| b.checkout(now).unwrap()).collect();
            for (io, t) in taken {
                b.release(io, t);
            }
            assert_eq!(b.idle_here(), 3);
        }
        // Idle past the grace, the surplus goes, the limit's worth stays.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.idle_here(), 1);
    }
}
