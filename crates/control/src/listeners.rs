//! The listeners a config asks for, bound and served on every worker
//! runtime. A change binds what is new first and only then stops what went
//! away, so a bind failure refuses the change and changes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_config::Snapshot;
use fulcrum_proxy::{ConnectionCount, DataPlane};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

struct Running {
    /// The address as configured (port 0 stays 0), to tell a moved listener.
    bind: SocketAddr,
    /// The address its sockets hold (port 0 resolved).
    local: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// One per socket: fires once that listening socket is closed.
    closed: Vec<oneshot::Receiver<()>>,
    /// One accept task per socket, each on its own runtime.
    tasks: Vec<JoinHandle<()>>,
}

/// The listeners being served, by name. A reload binds what is new first
/// and only then stops what went away, so a bind failure changes nothing.
pub struct Listeners {
    /// The runtimes that accept and serve connections: the only one with
    /// `--threads 1`, else one per worker thread. Each listener has a
    /// socket on each.
    serving: Vec<Handle>,
    running: HashMap<Arc<str>, Running>,
    /// Listeners removed by a reload, finishing their in-flight requests.
    draining: Vec<JoinHandle<()>>,
}

pub struct Bound {
    name: Arc<str>,
    bind: SocketAddr,
    /// One per serving runtime, all on one address.
    sockets: Vec<std::net::TcpListener>,
}

impl Listeners {
    pub fn new(serving: Vec<Handle>) -> Self {
        Listeners {
            serving,
            running: HashMap::new(),
            draining: Vec::new(),
        }
    }

    pub fn bind_new(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, String> {
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            if self.running.get(&l.name).is_some_and(|r| r.bind == l.bind) {
                continue;
            }
            // An address this process holds already (a listener renamed
            // in place) is shared with it; any other must be vacant.
            let ours = self.running.values().any(|r| r.local == Some(l.bind));
            let sockets = bind(l.bind, self.serving.len(), l.limits.max_connections, ours)
                .map_err(|e| {
                    format!(
                        "listener {:?}: cannot bind {}: {e} ({})",
                        l.name,
                        l.bind,
                        bind_hint(&e, l.bind)
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

    pub fn commit(&mut self, snapshot: &Snapshot, bound: Vec<Bound>, plane: &Arc<DataPlane>) {
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
            let local = b.sockets[0].local_addr().ok();
            let addr = local.map_or_else(|| b.bind.to_string(), |a| a.to_string());
            info!(listener = %b.name, addr = %addr, "listening");
            let shutdown = CancellationToken::new();
            let open = ConnectionCount::default();
            let mut running = Running {
                bind: b.bind,
                local,
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
    pub async fn drain(self, grace: Duration) -> bool {
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

/// What to do about a failed bind, by its cause: the OS's own words
/// ("Cannot assign requested address") do not say that the address is not
/// one of this host's.
pub fn bind_hint(e: &std::io::Error, addr: SocketAddr) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrNotAvailable => format!(
            "this host has no address {}: bind one of its own addresses, or {} for all of them",
            addr.ip(),
            if addr.is_ipv4() { "0.0.0.0" } else { "[::]" }
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "port {} is privileged: run as root, grant CAP_NET_BIND_SERVICE, or use a port from 1024",
            addr.port()
        ),
        std::io::ErrorKind::AddrInUse => {
            "another process listens there, perhaps another fulcrum: stop it, or bind another address".to_owned()
        }
        _ => "is another process using it?".to_owned(),
    }
}

/// `n` listening sockets on `addr`, each to be registered with the runtime
/// that accepts from it. Several share the address through SO_REUSEPORT,
/// and the kernel spreads incoming connections over them; all but the first
/// bind the address the first got, so port 0 means one ephemeral port for
/// all. SO_REUSEPORT is set only then: it also lets another process of the
/// same user, with it set too, bind the same port without an error and
/// take a share of its connections (one balancer of five on the wrong
/// config, as in incident 1). So unless the address is this process's own
/// already (`ours`), it must be vacant first ([`vacant`]).
fn bind(
    addr: SocketAddr,
    n: usize,
    max_connections: u32,
    ours: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let addr = if n > 1 && !ours { vacant(addr)? } else { addr };
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

/// Fails with `AddrInUse` if any socket listens on `addr`, with
/// SO_REUSEPORT or without: the kernel is asked by binding one socket
/// without it, which no listening socket lets share its address. The
/// socket is closed again at once, never having listened (so it leaves no
/// TIME_WAIT behind); the address to bind is returned, port 0 resolved to
/// the free port found.
fn vacant(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    use socket2::{Domain, Socket, Type};
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Connections of an earlier process in TIME_WAIT are no listener.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())?;
    probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("a TCP socket without an IP address"))
}
