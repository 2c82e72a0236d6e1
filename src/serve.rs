//! `fulcrum serve`: owns the process around the data plane — the worker
//! threads, binding listeners, SIGHUP reload (all-or-nothing: a refused
//! config leaves the running one serving) and SIGTERM drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_config::{Severity, Snapshot};
use fulcrum_proxy::{ConnectionCount, DataPlane};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::standards::Watch;
use crate::{EXIT_INVALID, EXIT_USAGE};
use fulcrum_safety::rules::ConfigSource;

pub fn run(
    path: &Path,
    grace: Duration,
    threads: Option<NonZeroUsize>,
    demo_backends: bool,
    standards: Option<std::path::PathBuf>,
) -> ExitCode {
    init_tracing();
    let watch = match standards.as_deref().map(Watch::load).transpose() {
        Ok(w) => w,
        Err(report) => {
            eprintln!("{report}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let snapshot = match load(path, watch.as_ref()) {
        Ok(s) => s,
        Err(Refused::Unreadable(e)) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(Refused::Invalid(report)) => {
            eprintln!("{report}");
            eprintln!(
                "fulcrum: not starting: fix the errors above (`fulcrum check` shows them too)"
            );
            return ExitCode::from(EXIT_INVALID);
        }
        Err(Refused::Standards(report)) => {
            eprintln!("fulcrum: not starting: the config {report}");
            return ExitCode::FAILURE;
        }
    };
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let runtime = if threads == 1 {
        // One thread means one: the whole proxy runs on the thread that can
        // be pinned to a core.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // The control side only: signals, reloads, health checks, the
        // access-log writer. A reload compiles on the main thread, so its
        // tasks get a thread of their own and do not stall meanwhile.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = match (threads > 1).then(|| Workers::start(threads)).transpose() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("fulcrum: cannot start {threads} worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serving = workers
        .as_ref()
        .map_or_else(|| vec![runtime.handle().clone()], |w| w.handles.clone());
    runtime.block_on(serve(path, snapshot, grace, demo_backends, watch, serving))
}

/// `--threads N` with N > 1: N threads, each running its own current-thread
/// runtime with its own socket of every listener. A connection is accepted,
/// served and proxied on one thread for its whole life, with that thread's
/// idle backend connections; no task moves between cores.
struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stop: CancellationToken::new(),
            threads: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new()
                .name("fulcrum-worker".to_owned())
                // Tasks spawned through the handle run while this blocks.
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }
}

impl Drop for Workers {
    /// Once `serve` is done: connections still open after the grace period
    /// go with their runtime.
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

enum Refused {
    Unreadable(String),
    /// The rendered diagnostics.
    Invalid(String),
    /// Valid, but breaks the standards: the report.
    Standards(String),
}

/// Read and compile the config; warnings are logged, errors refuse it, and
/// so does breaking the standards.
fn load(path: &Path, watch: Option<&Watch>) -> Result<Snapshot, Refused> {
    // Certificates are read with the rest of the file, so a reload picks
    // up renewed ones and refuses a broken pair like any other error.
    let (label, source, checked) = crate::check_file(path).map_err(Refused::Unreadable)?;
    match checked.snapshot {
        Some(snapshot) => {
            for d in checked
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Warning)
            {
                warn!("{d}");
            }
            if let Some(w) = watch {
                let config = ConfigSource {
                    file: &label,
                    source: &source,
                };
                w.judge(&snapshot, Some(config))
                    .map_err(Refused::Standards)?;
            }
            Ok(snapshot)
        }
        None => Err(Refused::Invalid(fulcrum_config::render_human(
            &label, &source, &checked,
        ))),
    }
}

async fn serve(
    path: &Path,
    snapshot: Snapshot,
    grace: Duration,
    demo_backends: bool,
    mut watch: Option<Watch>,
    serving: Vec<Handle>,
) -> ExitCode {
    let (Ok(mut hup), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("fulcrum: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Started before the data plane so its first health checks pass; kept
    // alive for the life of the process.
    let _demo = if demo_backends {
        match crate::demo::start_backends(&snapshot).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("fulcrum: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Vec::new()
    };
    let mut listeners = Listeners::new(serving);
    let bound = match listeners.bind_new(&snapshot) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(version = %snapshot.version, "config loaded");
    let plane = DataPlane::new(snapshot);
    listeners.commit(&plane.snapshot(), bound, &plane);

    let mut poll = tokio::time::interval(crate::standards::POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // A reload is gated by the standards as they are now, not
                // as they were at the last poll.
                if let Some(w) = &mut watch {
                    w.poll(&plane.snapshot());
                }
                reload(path, &plane, &mut listeners, watch.as_ref()).await
            }
            _ = poll.tick(), if watch.is_some() => {
                if let Some(w) = &mut watch {
                    w.poll(&plane.snapshot());
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if listeners.drain(grace).await {
        info!("drained; exiting");
    } else {
        warn!("grace period over with requests still in flight; exiting anyway");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-read the file and swap only if it is valid and its listeners
/// can all be bound. Otherwise nothing changes.
async fn reload(
    path: &Path,
    plane: &Arc<DataPlane>,
    listeners: &mut Listeners,
    watch: Option<&Watch>,
) {
    let current = plane.snapshot();
    let snapshot = match load(path, watch) {
        Ok(s) => s,
        Err(Refused::Unreadable(e)) => {
            error!(version = %current.version, "reload refused, still serving the running config: {e}");
            return;
        }
        Err(Refused::Invalid(report)) => {
            error!(version = %current.version, "reload refused, still serving the running config:\n{report}");
            return;
        }
        Err(Refused::Standards(report)) => {
            error!(version = %current.version, "reload refused, still serving the running config: the new config {report}");
            return;
        }
    };
    let bound = match listeners.bind_new(&snapshot) {
        Ok(b) => b,
        Err(e) => {
            error!(version = %current.version, "reload refused, still serving the running config: {e}");
            return;
        }
    };
    let version = snapshot.version.clone();
    plane.swap(snapshot);
    listeners.commit(&plane.snapshot(), bound, plane);
    info!(from = %current.version, to = %version, "config reloaded");
}

struct Running {
    /// The address as configured (port 0 stays 0), to tell a moved listener.
    bind: SocketAddr,
    shutdown: CancellationToken,
    /// One per socket: fires once that listening socket is closed.
    closed: Vec<oneshot::Receiver<()>>,
    /// One accept task per socket, each on its own runtime.
    tasks: Vec<JoinHandle<()>>,
}

/// The listeners being served, by name. A reload binds what is new first
/// and only then stops what went away, so a bind failure changes nothing.
struct Listeners {
    /// The runtimes that accept and serve connections: the only one with
    /// `--threads 1`, else one per worker thread. Each listener has a
    /// socket on each.
    serving: Vec<Handle>,
    running: HashMap<Arc<str>, Running>,
    /// Listeners removed by a reload, finishing their in-flight requests.
    draining: Vec<JoinHandle<()>>,
}

struct Bound {
    name: Arc<str>,
    bind: SocketAddr,
    /// One per serving runtime, all on one address.
    sockets: Vec<std::net::TcpListener>,
}

impl Listeners {
    fn new(serving: Vec<Handle>) -> Self {
        Listeners {
            serving,
            running: HashMap::new(),
            draining: Vec::new(),
        }
    }

    fn bind_new(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, String> {
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            if self.running.get(&l.name).is_some_and(|r| r.bind == l.bind) {
                continue;
            }
            let sockets =
                bind(l.bind, self.serving.len(), l.limits.max_connections).map_err(|e| {
                    format!(
                        "listener {:?}: cannot bind {}: {e} (is another process using it?)",
                        l.name, l.bind
                    )
                })?;
            bound.push(Bound {
                name: l.name.clone(),
                bind: l.bind,
                sockets,
            });
        }
        Ok(bound)
    }

    fn commit(&mut self, snapshot: &Snapshot, bound: Vec<Bound>, plane: &Arc<DataPlane>) {
        // Stop listeners that are gone or moved; let them drain in the background.
        let gone: Vec<Arc<str>> = self
            .running
            .iter()
            .filter(|(name, r)| {
                !snapshot
                    .listeners
                    .iter()
                    .any(|l| &l.name == *name && l.bind == r.bind)
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Listeners removed by earlier reloads that have finished draining.
        self.draining.retain(|t| !t.is_finished());
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                info!(listener = %name, "listener removed; draining");
                r.shutdown.cancel();
                self.draining.extend(r.tasks);
            }
        }
        for b in bound {
            let addr = b.sockets[0]
                .local_addr()
                .map_or_else(|_| b.bind.to_string(), |a| a.to_string());
            info!(listener = %b.name, addr = %addr, "listening");
            let shutdown = CancellationToken::new();
            let open = ConnectionCount::default();
            let mut running = Running {
                bind: b.bind,
                shutdown: shutdown.clone(),
                closed: Vec::new(),
                tasks: Vec::new(),
            };
            for (socket, runtime) in b.sockets.into_iter().zip(&self.serving) {
                let (closed_tx, closed) = oneshot::channel();
                let (name, plane, shutdown, open) = (
                    b.name.clone(),
                    plane.clone(),
                    shutdown.clone(),
                    open.clone(),
                );
                running.tasks.push(runtime.spawn(async move {
                    // Registered here, so that this socket's readiness
                    // wakes this thread, which serves what it accepts.
                    let accepted = match TcpListener::from_std(socket) {
                        Ok(s) => {
                            fulcrum_proxy::accept(s, name.clone(), plane, shutdown, open).await
                        }
                        Err(e) => Err(e),
                    };
                    match accepted {
                        Ok(open) => {
                            let _ = closed_tx.send(());
                            open.finished().await;
                        }
                        Err(e) => error!(listener = %name, "listener failed: {e}"),
                    }
                }));
                running.closed.push(closed);
            }
            self.running.insert(b.name, running);
        }
    }

    /// Stop every listener and wait up to `grace` for in-flight requests.
    /// True when everything finished in time.
    async fn drain(self, grace: Duration) -> bool {
        let mut tasks = self.draining;
        let mut closed = Vec::new();
        for r in self.running.into_values() {
            r.shutdown.cancel();
            closed.extend(r.closed);
            tasks.extend(r.tasks);
        }
        tokio::time::timeout(grace, async {
            // Announce only once every socket is closed, so that anyone
            // reading the log can rely on it.
            for c in closed {
                let _ = c.await;
            }
            info!(grace = ?grace, "draining: no new connections; waiting for in-flight requests");
            for t in tasks {
                let _ = t.await;
            }
        })
        .await
        .is_ok()
    }
}

/// `n` listening sockets on `addr`, each to be registered with the runtime
/// that accepts from it. Several share the address through SO_REUSEPORT,
/// and the kernel spreads incoming connections over them; all but the first
/// bind the address the first got, so port 0 means one ephemeral port for
/// all. SO_REUSEPORT is set only then: it also lets another process of the
/// same user, with it set too, bind the same port without an error.
fn bind(
    addr: SocketAddr,
    n: usize,
    max_connections: u32,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut sockets: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = match sockets.first() {
            Some(first) => first.local_addr()?,
            None => addr,
        };
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        // As tokio's `TcpListener::bind`: a restarted proxy need not wait
        // for its old connections to leave TIME_WAIT.
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        // As HAProxy: a queue as long as the connection limit (the kernel
        // caps it at net.core.somaxconn), so a burst of new connections
        // waits in the queue instead of having its SYNs dropped and
        // retried a second later.
        socket.listen(max_connections.min(i32::MAX as u32) as i32)?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}
