//! The runtime view of a snapshot (balancers, backend state, clients per
//! pool) and the [`DataPlane`] that swaps it: everything a reload rebuilds
//! off the request path, and the registries that make state outlive reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
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
use crate::recent::Recent;
use crate::stats::{Cohort, VersionStats};

/// One snapshot, compiled for serving. Requests hold an `Arc` of it for
/// their whole life, so a reload never changes a request midway.
pub(crate) struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub pools: Vec<PoolRuntime>,
    pub access_log: Option<AccessLog>,
    /// Headers and cookies each access-log line carries for replay.
    pub log_keys: crate::access_log::LogKeys,
    /// The end-to-end headers routing and hashing read, Host always among
    /// them: a client's Connection header may not name them away from the
    /// request a backend gets.
    pub routing_headers: Vec<http::HeaderName>,
    /// Per listener of the snapshot, in its order: the TLS acceptor of
    /// those that terminate TLS, built once here rather than per connection.
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    /// This version's request statistics.
    pub stats: Arc<VersionStats>,
    /// The data plane's sample of recent requests.
    pub recent: Arc<Recent>,
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
    pub slow_start: Option<std::time::Duration>,
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
    fn warmth(&self, i: usize) -> f64 {
        self.backends[i].warmth(self.slow_start)
    }
}

type BackendKey = (Arc<str>, SocketAddr);
/// A health check and the protocol its pool speaks, which the probe must
/// speak too: an h2-only backend does not answer HTTP/1.1.
type Probe = (HealthCheck, Protocol);

/// What reloads carry over; touched only by the data plane's constructor
/// and its [`Writer`].
#[derive(Default)]
struct Registry {
    backends: HashMap<BackendKey, Arc<BackendState>>,
    pools: HashMap<Arc<str>, Arc<PoolShared>>,
    health: HashMap<BackendKey, (Probe, JoinHandle<()>)>,
    /// The statistics of the versions served lately, oldest first, one
    /// per content: a version served again counts on where it left off,
    /// and `/metrics` still reports a version's last requests after it
    /// stopped serving.
    stats: Vec<Arc<VersionStats>>,
    recent: Arc<Recent>,
    /// Access-log lines lost, by every log this process has had: a reload
    /// to another path must not reset the count.
    log_dropped: Arc<AtomicU64>,
}

/// Versions whose statistics are kept.
const KEPT_VERSIONS: usize = 8;

impl Registry {
    /// The statistics of `snapshot`'s content: the kept ones when it was
    /// served before, else new ones. Kept by content, not by label: a
    /// change that did not touch `version` must not count with the config
    /// it replaced (or, as a canary, with the one beside it), so its label
    /// gets its hash.
    fn stats_for(&mut self, snapshot: &Snapshot) -> Arc<VersionStats> {
        let mut fresh = VersionStats::of(snapshot);
        let kept = self
            .stats
            .iter()
            .position(|s| s.hash == fresh.hash && s.same_shape(&fresh));
        let stats = match kept {
            Some(i) => self.stats.remove(i),
            None => {
                if self.stats.iter().any(|s| s.version == fresh.version) {
                    fresh.version = format!("{}@{}", fresh.version, fresh.hash).into();
                }
                Arc::new(fresh)
            }
        };
        self.stats.retain(|s| s.hash != stats.hash);
        self.stats.push(stats.clone());
        if self.stats.len() > KEPT_VERSIONS {
            self.stats.remove(0);
        }
        stats
    }
}

/// What serves: the stable runtime and, while a change is canaried, the
/// canary's runtime with the share of clients it gets. Both live in the one
/// `ArcSwap`, so a request sees a consistent pair.
pub(crate) struct Staged {
    pub stable: Arc<Runtime>,
    pub canary: Option<Canary>,
}

pub(crate) struct Canary {
    pub runtime: Arc<Runtime>,
    /// A client whose address hashes below this is in the canary cohort.
    threshold: u64,
    pub fraction: f64,
}

impl Staged {
    /// The runtime of a cohort (the stable one when there is no canary).
    #[inline]
    pub fn runtime(&self, cohort: Cohort) -> &Runtime {
        match (&self.canary, cohort) {
            (Some(c), Cohort::Canary) => &c.runtime,
            _ => &self.stable,
        }
    }

    /// The runtime that serves a client, by a hash of its address alone,
    /// so a client stays on one side for the whole canary.
    #[inline]
    pub fn pick(&self, client: std::net::IpAddr) -> (&Runtime, Cohort) {
        match &self.canary {
            Some(c) if cohort_hash(client) < c.threshold => (&c.runtime, Cohort::Canary),
            _ => (&self.stable, Cohort::Stable),
        }
    }
}

/// The clients a canary of `fraction` takes: those whose [`cohort_hash`]
/// is below this.
pub fn canary_threshold(fraction: f64) -> u64 {
    // 1.0 must take every client: u64::MAX itself hashes too.
    if fraction >= 1.0 {
        u64::MAX
    } else {
        (fraction.max(0.0) * u64::MAX as f64) as u64
    }
}

/// Spreads client addresses evenly over `u64`, the same on every instance.
pub fn cohort_hash(client: std::net::IpAddr) -> u64 {
    match client {
        std::net::IpAddr::V4(a) => xxhash_rust::xxh3::xxh3_64(&a.octets()),
        std::net::IpAddr::V6(a) => xxhash_rust::xxh3::xxh3_64(&a.octets()),
    }
}

/// The data plane: what serves behind an `ArcSwap` (one atomic load per
/// request), plus the registries and tasks that outlive reloads. Only the
/// [`Writer`] made with it changes what serves.
pub struct DataPlane {
    current: ArcSwap<Staged>,
    registry: Mutex<Registry>,
    health_client: HealthClient,
    pub(crate) counters: Arc<Counters>,
    /// Counts and announces each new stable config, for connections that
    /// must see whether their listener's settings changed.
    pub(crate) reloads: Reloads,
}

/// Each new stable config: a count (to tell one was missed) and a wakeup
/// (for connections waiting idle).
#[derive(Default)]
pub(crate) struct Reloads {
    pub generation: AtomicU64,
    pub notify: tokio::sync::Notify,
}

/// The one handle that changes what the data plane serves. Made once, with
/// the data plane, and not cloneable: whoever holds it (the control plane)
/// is the only writer of the running config.
pub struct Writer {
    plane: Arc<DataPlane>,
}

impl DataPlane {
    /// Inside a tokio runtime: starts active health checks for the
    /// snapshot's pools.
    pub fn new(snapshot: Snapshot) -> (Arc<DataPlane>, Writer) {
        let mut registry = Registry::default();
        let health_client = health::client();
        let runtime = build(Arc::new(snapshot), None, &mut registry, &[]);
        prune(&mut registry, &[&runtime], &health_client);
        let plane = Arc::new(DataPlane {
            current: ArcSwap::from_pointee(Staged {
                stable: Arc::new(runtime),
                canary: None,
            }),
            registry: Mutex::new(registry),
            health_client,
            counters: Arc::default(),
            reloads: Reloads::default(),
        });
        let writer = Writer {
            plane: plane.clone(),
        };
        (plane, writer)
    }

    /// The stable snapshot: what every request not in a canary gets.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load().stable.snapshot.clone()
    }

    /// Whether a new stable config since `generation` gives the listener
    /// `settings` came from other settings (or removes it): the
    /// connections it accepted with them should close after the response
    /// in progress, as an old config's do after a reload of NGINX or
    /// HAProxy (counted). Catches `generation` up either way. One atomic
    /// load while no config changes, so it can run per request.
    #[inline]
    pub(crate) fn listener_outdated(
        &self,
        settings: &fulcrum_config::snapshot::Listener,
        generation: &mut u64,
    ) -> bool {
        let now = self.reloads.generation.load(Ordering::Acquire);
        now != *generation && self.listener_changed(settings, generation, now)
    }

    #[cold]
    fn listener_changed(
        &self,
        settings: &fulcrum_config::snapshot::Listener,
        generation: &mut u64,
        now: u64,
    ) -> bool {
        *generation = now;
        let snapshot = self.snapshot();
        let outdated = snapshot
            .listeners
            .iter()
            .find(|l| l.name == settings.name)
            .is_none_or(|l| l != settings);
        if outdated {
            Counters::inc(&self.counters.client_closed_on_reload);
        }
        outdated
    }

    /// The canary's snapshot and the share of clients it serves, while a
    /// change is canaried.
    pub fn canary(&self) -> Option<(Arc<Snapshot>, f64)> {
        let staged = self.current.load();
        let c = staged.canary.as_ref()?;
        Some((c.runtime.snapshot.clone(), c.fraction))
    }

    /// The stable runtime: listener settings and TLS come from it, since a
    /// canary may not change listeners.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.current.load().stable.clone()
    }

    pub(crate) fn staged(&self) -> Arc<Staged> {
        self.current.load_full()
    }

    /// The statistics of the versions serving and served lately, oldest
    /// first.
    pub fn stats(&self) -> Vec<Arc<VersionStats>> {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
            .clone()
    }

    /// The sample of recent requests, oldest first, as access-log entries.
    pub fn recent_requests(&self) -> Vec<Arc<crate::access_log::Entry>> {
        self.runtime().recent.entries()
    }

    /// Every backend of the current snapshot, pool by pool in config order.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let rt = self.runtime();
        rt.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.status()))
            .collect()
    }

    /// The live state of one backend, if the current snapshot has it.
    pub fn backend(&self, pool: &str, addr: SocketAddr) -> Option<Arc<BackendState>> {
        let rt = self.runtime();
        let p = rt.pools.iter().find(|p| &*p.name == pool)?;
        p.backends.iter().find(|b| b.addr() == addr).cloned()
    }

    /// Whether `pool` was in panic mode at its last pick.
    pub fn panicking(&self, pool: &str) -> bool {
        let rt = self.runtime();
        rt.pools
            .iter()
            .any(|p| &*p.name == pool && p.shared.panic.load(Relaxed))
    }

    /// Every failure and defence counter, as counted since start: reloads
    /// do not reset them.
    pub fn counters(&self) -> CounterValues {
        self.counters.values()
    }

    /// Access-log lines lost since start: the writer fell behind, or the
    /// log could not be opened or written.
    pub fn access_log_dropped(&self) -> u64 {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.log_dropped.load(Relaxed)
    }
}

impl Writer {
    /// The data plane this writer changes.
    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    /// Serve `snapshot` to every request, dropping any canary. Backends
    /// that stay (same pool name and addr) keep health, ejection and
    /// counters; in-flight requests finish on the snapshot they started
    /// with.
    pub fn swap(&self, snapshot: Snapshot) {
        self.swap_probed(snapshot, &[]);
    }

    /// [`Writer::swap`], where the backends in `down` (pool name and
    /// address) were just found down: those new to the data plane in a
    /// pool with a health check start down, and join once their checks
    /// pass, rather than take requests until the first checks fail.
    pub fn swap_probed(&self, snapshot: Snapshot, down: &[(Arc<str>, SocketAddr)]) {
        note_same_label(&self.plane.snapshot(), &snapshot);
        self.serve_alone(|old, registry| {
            Some(Arc::new(build(
                Arc::new(snapshot),
                Some(&old.stable),
                registry,
                down,
            )))
        });
        let s = self.plane.snapshot();
        tracing::info!(version = %s.version, hash = %s.hash, "config swapped in");
    }

    /// Serve what `pick` chooses from what serves now, to every request,
    /// and forget what only the rest used. False when it chooses nothing.
    fn serve_alone(
        &self,
        pick: impl FnOnce(&Staged, &mut Registry) -> Option<Arc<Runtime>>,
    ) -> bool {
        let plane = &*self.plane;
        let mut registry = plane
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = plane.current.load_full();
        let Some(runtime) = pick(&old, &mut registry) else {
            return false;
        };
        prune(&mut registry, &[&runtime], &plane.health_client);
        plane.current.store(Arc::new(Staged {
            stable: runtime,
            canary: None,
        }));
        plane.reloads.generation.fetch_add(1, Ordering::Release);
        plane.reloads.notify.notify_waiters();
        true
    }

    /// Serve `snapshot` to `fraction` of clients (by address) beside the
    /// stable config, replacing any canary. A backend in both keeps one
    /// state; where both check its health differently, the stable
    /// config's check runs until the canary is promoted, so a canary
    /// cannot take a backend down for everyone.
    pub fn stage(&self, snapshot: Snapshot, fraction: f64) {
        self.stage_probed(snapshot, fraction, &[]);
    }

    /// [`Writer::stage`], with the backends just found down, as for
    /// [`Writer::swap_probed`].
    pub fn stage_probed(&self, snapshot: Snapshot, fraction: f64, down: &[(Arc<str>, SocketAddr)]) {
        let plane = &*self.plane;
        let mut registry = plane
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = plane.current.load_full();
        note_same_label(&old.stable.snapshot, &snapshot);
        let runtime = build(Arc::new(snapshot), Some(&old.stable), &mut registry, down);
        prune(
            &mut registry,
            &[&old.stable, &runtime],
            &plane.health_client,
        );
        let fraction = fraction.clamp(0.0, 1.0);
        plane.current.store(Arc::new(Staged {
            stable: old.stable.clone(),
            canary: Some(Canary {
                runtime: Arc::new(runtime),
                threshold: canary_threshold(fraction),
                fraction,
            }),
        }));
        if let Some((s, _)) = plane.canary() {
            tracing::info!(version = %s.version, hash = %s.hash, fraction, "canary staged");
        }
    }

    /// The canary serves every request. False when there is none.
    pub fn promote(&self) -> bool {
        let promoted = self.serve_alone(|old, _| old.canary.as_ref().map(|c| c.runtime.clone()));
        if promoted {
            tracing::info!(version = %self.plane.snapshot().version, "canary promoted");
        }
        promoted
    }

    /// Every request goes back to the stable config. False when there was
    /// no canary.
    pub fn drop_canary(&self) -> bool {
        let dropped = self.serve_alone(|old, _| old.canary.as_ref().map(|_| old.stable.clone()));
        if dropped {
            tracing::info!(version = %self.plane.snapshot().version, "canary dropped");
        }
        dropped
    }
}

/// A config whose text changed while its `version` label did not would
/// look like the same config in every log line: say so, with the hashes
/// that tell them apart (the access log carries the hash too).
fn note_same_label(old: &Snapshot, new: &Snapshot) {
    if old.version == new.version && old.hash != new.hash {
        tracing::warn!(
            version = %new.version,
            hash = %new.hash,
            was = %old.hash,
            "the config's content changed but its `version` did not; its content hash tells the two apart"
        );
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
/// clients and the access log from `old`. What no runtime uses any more is
/// left to [`prune`]. A backend new to the registry starts healthy, unless
/// it is in `down` and its pool has a health check to bring it up.
fn build(
    snapshot: Arc<Snapshot>,
    old: Option<&Runtime>,
    registry: &mut Registry,
    down: &[BackendKey],
) -> Runtime {
    let pools = snapshot
        .pools
        .iter()
        .map(|pool| {
            let backends: Vec<Arc<BackendState>> = pool
                .backends
                .iter()
                .map(|b| {
                    let key = (pool.name.clone(), b.addr);
                    let starts_down = pool.health.is_some() && down.contains(&key);
                    registry
                        .backends
                        .entry(key)
                        .or_insert_with(|| {
                            let state = BackendState::new(pool.name.clone(), b.addr);
                            state.set_healthy(!starts_down);
                            // Added by a change: it comes in cold (one
                            // found down does when its checks pass).
                            if old.is_some() && !starts_down {
                                state.start_warming();
                            }
                            Arc::new(state)
                        })
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
                slow_start: pool.slow_start,
                shared,
            }
        })
        .collect();

    let access_log = snapshot.access_log.as_ref().map(|cfg| {
        old.and_then(|o| o.access_log.as_ref())
            .filter(|l| *l.target() == cfg.target)
            .cloned()
            .unwrap_or_else(|| AccessLog::start(cfg.target.clone(), registry.log_dropped.clone()))
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
                        && ol.http2.only == l.http2.only
                })?;
                o.tls[i].clone()
            });
            Some(kept.unwrap_or_else(|| crate::tls::listener_acceptor(tls, &l.http2)))
        })
        .collect();
    Runtime {
        log_keys: crate::access_log::LogKeys::of(&snapshot),
        stats: registry.stats_for(&snapshot),
        recent: registry.recent.clone(),
        routing_headers: routing_headers(&snapshot),
        snapshot,
        pools,
        access_log,
        tls,
    }
}

fn routing_headers(snapshot: &Snapshot) -> Vec<http::HeaderName> {
    let keys = snapshot.request_keys();
    let mut names = vec![http::header::HOST];
    if !keys.cookies.is_empty() {
        names.push(http::header::COOKIE);
    }
    names.extend(keys.headers);
    names
}

/// Forgets the backends and pools no runtime in `live` has, and reconciles
/// health tasks with the checks they ask for. Where two runtimes check one
/// backend differently, the first one's check runs.
fn prune(registry: &mut Registry, live: &[&Runtime], health_client: &HealthClient) {
    let mut keep: HashMap<BackendKey, Option<Probe>> = HashMap::new();
    let mut pools = std::collections::HashSet::new();
    for rt in live {
        for pool in &rt.snapshot.pools {
            pools.insert(pool.name.clone());
            for b in &pool.backends {
                keep.entry((pool.name.clone(), b.addr))
                    .or_insert_with(|| pool.health.clone().map(|h| (h, pool.protocol)));
            }
        }
    }
    registry.backends.retain(|k, _| keep.contains_key(k));
    registry.pools.retain(|k, _| pools.contains(k));
    reconcile_health(registry, &keep, health_client);
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
