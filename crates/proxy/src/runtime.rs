//! The runtime view of a snapshot (balancers, backend state, clients per
//! pool) and the [`DataPlane`] that swaps it: everything a reload rebuilds
//! off the request path, and the registries that make state outlive reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{HealthCheck, Protocol, Retries, Timeouts};
use http::HeaderValue;
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::backend::{BackendState, BackendStatus};
use crate::balance::{Balancer, PoolView};
use crate::counters::{CounterValues, Counters};
use crate::h2::H2Backend;
use crate::health::{self, HealthClient};
use crate::http1::pool::H1Backend;

/// One snapshot, compiled for serving. Requests hold an `Arc` of it for
/// their whole life, so a reload never changes a request midway.
pub(crate) struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub pools: Vec<PoolRuntime>,
    pub access_log: Option<AccessLog>,
    /// Headers and cookies each access-log line carries for replay.
    pub log_keys: crate::access_log::LogKeys,
    /// Per listener of the snapshot, in its order: the TLS acceptor of
    /// those that terminate TLS, built once here rather than per connection.
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
}

pub(crate) struct PoolRuntime {
    pub name: Arc<str>,
    pub balancer: Balancer,
    pub backends: Vec<Arc<BackendState>>,
    pub weights: Vec<u32>,
    /// `host:port` of each backend, the Host header of a request that
    /// came without one.
    pub authorities: Vec<HeaderValue>,
    /// For `protocol = "http1"` pools: each backend's keep-alive pool,
    /// indexed like `backends` (empty for h2 pools).
    pub h1: Vec<Arc<H1Backend>>,
    /// For `protocol = "h2"` pools: one multiplexed connection per backend,
    /// indexed like `backends`.
    pub h2: Option<Vec<Arc<H2Backend>>>,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub outlier: Option<fulcrum_config::snapshot::Outlier>,
    pub shared: Arc<PoolShared>,
}

/// Per pool name, kept across reloads: the retry budget's gauges and the
/// panic flag (so a transition is logged once, not per request or reload).
#[derive(Debug, Default)]
pub(crate) struct PoolShared {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub panic: AtomicBool,
}

impl PoolView for PoolRuntime {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn healthy(&self, i: usize) -> bool {
        self.backends[i].is_available()
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.backends[i].in_flight()
    }
}

type BackendKey = (Arc<str>, SocketAddr);
/// A health check and the protocol its pool speaks, which the probe must
/// speak too: an h2-only backend does not answer HTTP/1.1.
type Probe = (HealthCheck, Protocol);

/// What reloads carry over; touched only by `new` and `swap`.
#[derive(Default)]
struct Registry {
    backends: HashMap<BackendKey, Arc<BackendState>>,
    pools: HashMap<Arc<str>, Arc<PoolShared>>,
    health: HashMap<BackendKey, (Probe, JoinHandle<()>)>,
}

/// The data plane: the current runtime behind an `ArcSwap` (one atomic load
/// per request), plus the registries and tasks that outlive reloads.
pub struct DataPlane {
    current: ArcSwap<Runtime>,
    registry: Mutex<Registry>,
    health_client: HealthClient,
    pub(crate) counters: Arc<Counters>,
}

impl DataPlane {
    /// Inside a tokio runtime: starts active health checks for the
    /// snapshot's pools.
    pub fn new(snapshot: Snapshot) -> Arc<DataPlane> {
        let mut registry = Registry::default();
        let health_client = health::client();
        let runtime = build(Arc::new(snapshot), None, &mut registry, &health_client);
        Arc::new(DataPlane {
            current: ArcSwap::from_pointee(runtime),
            registry: Mutex::new(registry),
            health_client,
            counters: Arc::default(),
        })
    }

    /// Reload: compile the new runtime view and swap it in. Backends that
    /// stay (same pool name and addr) keep health, ejection and counters;
    /// in-flight requests finish on the snapshot they started with.
    pub fn swap(&self, snapshot: Snapshot) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        let runtime = build(
            Arc::new(snapshot),
            Some(&old),
            &mut registry,
            &self.health_client,
        );
        self.current.store(Arc::new(runtime));
        tracing::info!(version = %self.current.load().snapshot.version, "config swapped in");
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load().snapshot.clone()
    }

    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Every backend of the current snapshot, pool by pool in config order.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let rt = self.current.load();
        rt.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.status()))
            .collect()
    }

    /// The live state of one backend, if the current snapshot has it.
    pub fn backend(&self, pool: &str, addr: SocketAddr) -> Option<Arc<BackendState>> {
        let rt = self.current.load();
        let p = rt.pools.iter().find(|p| &*p.name == pool)?;
        p.backends.iter().find(|b| b.addr() == addr).cloned()
    }

    /// Whether `pool` was in panic mode at its last pick.
    pub fn panicking(&self, pool: &str) -> bool {
        let rt = self.current.load();
        rt.pools
            .iter()
            .any(|p| &*p.name == pool && p.shared.panic.load(Relaxed))
    }

    /// Every failure and defence counter, as counted since start: reloads
    /// do not reset them.
    pub fn counters(&self) -> CounterValues {
        self.counters.values()
    }

    /// Access log entries dropped because the writer fell behind.
    pub fn access_log_dropped(&self) -> u64 {
        self.current
            .load()
            .access_log
            .as_ref()
            .map_or(0, |l| l.dropped())
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        let registry = self
            .registry
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, task) in registry.health.values() {
            task.abort();
        }
    }
}

/// Compiles `snapshot` into a runtime, reusing state from `registry` and
/// clients and the access log from `old`, and reconciles health tasks.
fn build(
    snapshot: Arc<Snapshot>,
    old: Option<&Runtime>,
    registry: &mut Registry,
    health_client: &HealthClient,
) -> Runtime {
    let mut keep: HashMap<BackendKey, Option<Probe>> = HashMap::new();
    let pools = snapshot
        .pools
        .iter()
        .map(|pool| {
            let backends: Vec<Arc<BackendState>> = pool
                .backends
                .iter()
                .map(|b| {
                    let key = (pool.name.clone(), b.addr);
                    keep.insert(key.clone(), pool.health.clone().map(|h| (h, pool.protocol)));
                    registry
                        .backends
                        .entry(key)
                        .or_insert_with(|| Arc::new(BackendState::new(pool.name.clone(), b.addr)))
                        .clone()
                })
                .collect();
            let shared = registry.pools.entry(pool.name.clone()).or_default().clone();
            // Same timeouts: keep the backends' connections, and with them
            // the warm keep-alive connections, backend by backend.
            let same = old
                .and_then(|o| o.pools.iter().find(|p| p.name == pool.name))
                .filter(|p| p.timeouts == pool.timeouts);
            let h1 = pool
                .backends
                .iter()
                .filter(|_| pool.protocol != Protocol::H2)
                .map(|b| {
                    same.and_then(|p| {
                        p.h1.iter().find(|h| {
                            h.addr() == b.addr && h.max_idle == pool.idle_per_backend as usize
                        })
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(H1Backend::new(
                            b.addr,
                            &pool.timeouts,
                            pool.idle_per_backend,
                        ))
                    })
                })
                .collect();
            // h2 connections stay too.
            let h2 = (pool.protocol == Protocol::H2).then(|| {
                pool.backends
                    .iter()
                    .map(|b| {
                        same.and_then(|p| p.h2.as_ref())
                            .and_then(|old| old.iter().find(|h| h.addr() == b.addr))
                            .cloned()
                            .unwrap_or_else(|| Arc::new(H2Backend::new(b.addr, &pool.timeouts)))
                    })
                    .collect()
            });
            PoolRuntime {
                name: pool.name.clone(),
                balancer: Balancer::new(pool),
                weights: pool.backends.iter().map(|b| b.weight).collect(),
                authorities: pool
                    .backends
                    .iter()
                    .map(|b| {
                        HeaderValue::try_from(b.addr.to_string())
                            .expect("a socket address is a valid header value")
                    })
                    .collect(),
                backends,
                h1,
                h2,
                timeouts: pool.timeouts.clone(),
                retries: pool.retries.clone(),
                outlier: pool.outlier.clone(),
                shared,
            }
        })
        .collect();

    registry.backends.retain(|k, _| keep.contains_key(k));
    let live: std::collections::HashSet<&Arc<str>> =
        snapshot.pools.iter().map(|p| &p.name).collect();
    registry.pools.retain(|k, _| live.contains(k));
    reconcile_health(registry, &keep, health_client);

    let access_log = snapshot.access_log.as_ref().map(|cfg| {
        old.and_then(|o| o.access_log.as_ref())
            .filter(|l| *l.target() == cfg.target)
            .cloned()
            .unwrap_or_else(|| AccessLog::start(cfg.target.clone()))
    });
    let tls = snapshot
        .listeners
        .iter()
        .map(|l| {
            let tls = l.tls.as_ref()?;
            // Unchanged certificates and ALPN: keep the acceptor, and with
            // it the session ticket keys returning clients hold.
            let kept = old.and_then(|o| {
                let i = o.snapshot.listeners.iter().position(|ol| {
                    ol.name == l.name
                        && ol.tls.as_ref() == Some(tls)
                        && ol.http2.enabled == l.http2.enabled
                })?;
                o.tls[i].clone()
            });
            Some(kept.unwrap_or_else(|| crate::tls::acceptor(tls, l.http2.enabled)))
        })
        .collect();
    Runtime {
        log_keys: crate::access_log::LogKeys::of(&snapshot),
        snapshot,
        pools,
        access_log,
        tls,
    }
}

/// Stops the health tasks of removed backends, restarts those whose check
/// changed, starts new ones. Backend state is untouched, so a restarted
/// check keeps the backend's current health.
fn reconcile_health(
    registry: &mut Registry,
    want: &HashMap<BackendKey, Option<Probe>>,
    client: &HealthClient,
) {
    registry.health.retain(|key, (probe, task)| {
        let same = want.get(key).is_some_and(|w| w.as_ref() == Some(probe));
        if !same {
            task.abort();
            // Checks removed but the backend stays: nothing will ever mark
            // it up again, so it must not stay down.
            if let Some(b) = registry.backends.get(key)
                && !want.get(key).is_some_and(|w| w.is_some())
                && !b.set_healthy(true)
            {
                tracing::info!(pool = %key.0, backend = %key.1, "health checks removed: backend counts as healthy");
            }
        }
        same
    });
    for (key, probe) in want {
        let Some((check, protocol)) = probe else {
            continue;
        };
        if registry.health.contains_key(key) {
            continue;
        }
        let backend = registry.backends[key].clone();
        let task = health::spawn(backend, check.clone(), client.speaking(*protocol));
        registry
            .health
            .insert(key.clone(), ((check.clone(), *protocol), task));
    }
}
