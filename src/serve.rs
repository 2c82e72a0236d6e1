//! `fulcrum serve`: owns the process around the data plane — the worker
//! threads, binding listeners, SIGHUP reload (all-or-nothing: a refused
//! config leaves the running one serving) and SIGTERM drain.

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use fulcrum_config::{Severity, Snapshot};
use fulcrum_proxy::DataPlane;
use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{EXIT_INVALID, EXIT_USAGE};
use fulcrum_control::listeners::Listeners;
use fulcrum_control::standards::Watch;
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
    let (plane, writer) = DataPlane::new(snapshot);
    listeners.commit(&plane.snapshot(), bound, &plane);

    let mut poll = tokio::time::interval(fulcrum_control::standards::POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // A reload is gated by the standards as they are now, not
                // as they were at the last poll.
                if let Some(w) = &mut watch {
                    w.poll(&plane.snapshot());
                }
                reload(path, &writer, &mut listeners, watch.as_ref()).await
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
    writer: &fulcrum_proxy::Writer,
    listeners: &mut Listeners,
    watch: Option<&Watch>,
) {
    let plane = writer.plane();
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
    writer.swap(snapshot);
    listeners.commit(&plane.snapshot(), bound, plane);
    info!(from = %current.version, to = %version, "config reloaded");
}
