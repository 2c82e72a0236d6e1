//! `fulcrum serve`: owns the process around the data plane and the
//! control plane — the worker threads, the config store, the admin API,
//! signals (SIGHUP applies the config file through the change pipeline,
//! SIGTERM drains) — and nothing else: every change to what serves goes
//! through `fulcrum_control`.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_control::admin::{self, Admin};
use fulcrum_control::boot::{Boot, BootError};
use fulcrum_control::change::{Controller, Settings};
use fulcrum_control::standards::{LoadError, Watch};
use fulcrum_control::store::Local;
use fulcrum_control::token::{self, Token};
use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{EXIT_INVALID, EXIT_USAGE};

pub struct Options {
    pub config: PathBuf,
    pub grace: Duration,
    pub threads: Option<NonZeroUsize>,
    pub demo_backends: bool,
    pub standards: Option<PathBuf>,
    pub state: Option<PathBuf>,
}

/// `fulcrum.toml` → `fulcrum.state/` beside it.
pub fn default_state_dir(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "fulcrum".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.state"))
}

pub fn run(o: Options) -> ExitCode {
    let watch = match o.standards.as_deref().map(Watch::load).transpose() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(match e {
                LoadError::Unreadable(_) => EXIT_USAGE,
                LoadError::Invalid(_) => EXIT_INVALID,
            });
        }
    };
    let state_dir = o
        .state
        .clone()
        .unwrap_or_else(|| default_state_dir(&o.config));
    let store = match Local::open(&state_dir) {
        Ok(s) => s,
        Err(e) => {
            // A file that does not parse may be one a newer fulcrum wrote:
            // moving the directory aside would abandon its history.
            let hint = match e {
                fulcrum_control::store::StoreError::Corrupt { .. } => {
                    "if a newer fulcrum wrote it, run that version; otherwise restore the file from a backup, or move the directory aside to start a new history"
                }
                _ => "pass --state DIR to put it elsewhere",
            };
            eprintln!(
                "fulcrum: cannot open the state directory {}: {e} ({hint})",
                state_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let threads = o
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let runtime = if threads == 1 {
        // One thread means one: the whole proxy runs on the thread that can
        // be pinned to a core.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // The control side only: signals, changes, health checks, the
        // admin API, the access-log writer. A change compiles on this
        // runtime, so its tasks get a thread of their own and do not stall
        // meanwhile.
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
    let settings = Settings {
        env: Arc::new(crate::env::FileEnv::for_config(&o.config)),
        config_path: o.config.clone(),
        standards: watch,
    };
    let boot = match runtime.block_on(Boot::decide(settings, Arc::new(store))) {
        Ok(b) => b,
        Err(e) => return refused_to_start(e),
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
    runtime.block_on(serve(boot, &o, &state_dir, serving))
}

fn refused_to_start(e: BootError) -> ExitCode {
    match e {
        BootError::Unreadable(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_USAGE)
        }
        BootError::Invalid(report) => {
            eprint!("{report}");
            eprintln!(
                "fulcrum: not starting: fix the errors above (`fulcrum check` shows them too)"
            );
            ExitCode::from(EXIT_INVALID)
        }
        BootError::Refused(report) => {
            eprintln!("fulcrum: not starting: {report}");
            ExitCode::FAILURE
        }
        BootError::Failed(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
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

async fn serve(boot: Boot, o: &Options, state_dir: &Path, serving: Vec<Handle>) -> ExitCode {
    let (Ok(mut hup), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("fulcrum: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Started before the data plane so its first health checks pass; kept
    // alive for the life of the process.
    let _demo = if o.demo_backends {
        match crate::demo::start_backends(boot.snapshot()).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("fulcrum: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Vec::new()
    };
    // The admin API's token and address first: a start that fails there
    // stores and journals nothing.
    let admin = match bind_admin(boot.snapshot(), &o.config, state_dir).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fulcrum: not starting: {e}");
            return ExitCode::FAILURE;
        }
    };
    let controller = match boot.start(serving).await {
        Ok(c) => c,
        Err(e) => return refused_to_start(e),
    };
    let guard = fulcrum_control::guard::Guard::spawn(&controller);
    let stop_admin = CancellationToken::new();
    match admin {
        Some(admin) => admin.serve(&controller, &guard, stop_admin.clone()),
        None => info!(
            "no [admin] in the config: no admin API (apply, rollback and the dashboard need one)"
        ),
    }
    tokio::spawn(fulcrum_control::health::journal_flips(Arc::downgrade(
        &controller,
    )));

    let mut poll = tokio::time::interval(fulcrum_control::standards::POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // A change is gated by the standards as they are now, not
                // as they were at the last poll.
                let reload = async {
                    controller.poll_standards().await;
                    controller.reload_file().await;
                };
                // A stop does not wait behind the reload's pre-flight
                // (probes of a backend that answers nothing take
                // seconds): the reload is dropped, and what serves drains.
                tokio::select! {
                    _ = reload => {}
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            _ = poll.tick() => controller.poll_standards().await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop_admin.cancel();
    if controller.drain(o.grace).await {
        info!("drained; exiting");
    } else {
        warn!("grace period over with requests still in flight; exiting anyway");
    }
    ExitCode::SUCCESS
}

/// The admin API on `[admin] listen`, when the config has one: bound once
/// at start (a change to `[admin]` takes effect at the next start).
/// The admin API, bound and with its token, before it serves.
struct AdminBound {
    listener: tokio::net::TcpListener,
    cfg: fulcrum_config::snapshot::Admin,
    token: Token,
}

async fn bind_admin(
    snapshot: &fulcrum_config::Snapshot,
    config: &Path,
    state_dir: &Path,
) -> Result<Option<AdminBound>, String> {
    let Some(cfg) = snapshot.admin.clone() else {
        return Ok(None);
    };
    let config_dir = config.parent().unwrap_or(Path::new("."));
    let (token, source) = Token::resolve(
        cfg.token_file.as_deref(),
        config_dir,
        std::env::var(token::ENV).ok(),
        state_dir,
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| {
            format!(
                "admin.listen: cannot bind {}: {e} (is another process using it?)",
                cfg.listen
            )
        })?;
    let addr = listener.local_addr().map_or(cfg.listen, |a| a);
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    info!(admin = %addr, token = %source, "admin API on {scheme}://{addr}; its bearer token is in {source}; the dashboard is at {scheme}://{addr}/");
    Ok(Some(AdminBound {
        listener,
        cfg,
        token,
    }))
}

impl AdminBound {
    fn serve(
        self,
        controller: &Arc<Controller>,
        guard: &Arc<fulcrum_control::guard::Guard>,
        stop: CancellationToken,
    ) {
        let (router, _) = admin::router(Arc::new(Admin {
            controller: controller.clone(),
            guard: guard.clone(),
            token: self.token,
        }));
        let tls = self
            .cfg
            .tls
            .as_ref()
            .map(|t| fulcrum_proxy::tls_acceptor(t, false));
        tokio::spawn(admin::serve(self.listener, tls, router, stop));
    }
}
