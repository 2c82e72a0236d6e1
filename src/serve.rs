//! `fulcrum serve`: owns the process around the data plane — binding
//! listeners, SIGHUP reload (all-or-nothing: a refused config leaves the
//! running one serving) and SIGTERM drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_config::{Severity, Snapshot};
use fulcrum_proxy::DataPlane;
use tokio::net::TcpListener;
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
    threads: Option<usize>,
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
    let runtime = match threads {
        // One thread means one: the whole proxy runs on the thread that can
        // be pinned to a core.
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fulcrum: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(path, snapshot, grace, demo_backends, watch))
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
    let mut listeners = Listeners::default();
    let bound = match listeners.bind_new(&snapshot).await {
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
    let bound = match listeners.bind_new(&snapshot).await {
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
    /// Fires once the listening socket is closed.
    closed: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

/// The listeners being served, by name. A reload binds what is new first
/// and only then stops what went away, so a bind failure changes nothing.
#[derive(Default)]
struct Listeners {
    running: HashMap<Arc<str>, Running>,
    /// Listeners removed by a reload, finishing their in-flight requests.
    draining: Vec<JoinHandle<()>>,
}

struct Bound {
    name: Arc<str>,
    bind: SocketAddr,
    socket: TcpListener,
}

impl Listeners {
    async fn bind_new(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, String> {
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            if self.running.get(&l.name).is_some_and(|r| r.bind == l.bind) {
                continue;
            }
            let socket = TcpListener::bind(l.bind).await.map_err(|e| {
                format!(
                    "listener {:?}: cannot bind {}: {e} (is another process using it?)",
                    l.name, l.bind
                )
            })?;
            bound.push(Bound {
                name: l.name.clone(),
                bind: l.bind,
                socket,
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
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                info!(listener = %name, "listener removed; draining");
                r.shutdown.cancel();
                self.draining.push(r.task);
            }
        }
        for b in bound {
            let addr = b
                .socket
                .local_addr()
                .map_or_else(|_| b.bind.to_string(), |a| a.to_string());
            info!(listener = %b.name, addr = %addr, "listening");
            let shutdown = CancellationToken::new();
            let (closed_tx, closed) = oneshot::channel();
            let task = tokio::spawn({
                let (name, plane, shutdown) = (b.name.clone(), plane.clone(), shutdown.clone());
                async move {
                    match fulcrum_proxy::accept(b.socket, name.clone(), plane, shutdown).await {
                        Ok(open) => {
                            let _ = closed_tx.send(());
                            open.finished().await;
                        }
                        Err(e) => error!(listener = %name, "listener failed: {e}"),
                    }
                }
            });
            self.running.insert(
                b.name,
                Running {
                    bind: b.bind,
                    shutdown,
                    closed,
                    task,
                },
            );
        }
    }

    /// Stop every listener and wait up to `grace` for in-flight requests.
    /// True when everything finished in time.
    async fn drain(self, grace: Duration) -> bool {
        let mut tasks = self.draining;
        let mut closed = Vec::new();
        for r in self.running.into_values() {
            r.shutdown.cancel();
            closed.push(r.closed);
            tasks.push(r.task);
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
