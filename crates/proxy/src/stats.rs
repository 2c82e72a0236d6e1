//! Request statistics per config version: for every route, each status
//! and error cause with a latency histogram; for every backend of every
//! pool, status classes with a latency histogram. Fed once per request by
//! its [`Outcome`], with relaxed atomics only; read by `/metrics` and the
//! guard as cumulative counts, which they difference over time. A version
//! has one set, shared by every runtime that serves it, so a rollback to it
//! keeps counting where it left off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use fulcrum_config::Snapshot;

use crate::error::Cause;

/// Which side of a canary a request was served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cohort {
    Stable,
    Canary,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Stable => "stable",
            Cohort::Canary => "canary",
        }
    }
}

/// What one request came to, built once when its response ends (or it is
/// refused): fed to the statistics, the access log and the reservoir of
/// recent requests.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Indices into the snapshot that served it; `None` when routing never
    /// got that far.
    pub route: Option<u32>,
    pub pool: Option<u32>,
    pub backend: Option<u32>,
    pub status: u16,
    /// Who caused it, when the proxy answered for an error.
    pub cause: Option<Cause>,
    /// From the request head to the response's last byte.
    pub latency: Duration,
    pub cohort: Cohort,
}

/// Statuses counted one by one, per route: enough for any outcome signal
/// (`401`, `403`, `404`, `5xx`) to be read exactly.
const STATUSES: usize = 600;

/// One version's statistics, laid out like its snapshot.
#[derive(Debug)]
pub struct VersionStats {
    /// The label its series carry: the config's `version`, or, when a
    /// config of other content kept that label, `version@hash`.
    pub version: Arc<str>,
    /// The config's content hash: what these statistics are kept by.
    pub hash: Arc<str>,
    pub routes: Box<[RouteStats]>,
    /// Requests no route took: refused before routing, or matching none.
    pub unrouted: RouteStats,
    pub pools: Box<[PoolStats]>,
}

#[derive(Debug)]
pub struct RouteStats {
    /// Empty for the unrouted requests.
    pub name: Arc<str>,
    pub pool: Option<Arc<str>>,
    statuses: Box<[AtomicU64]>,
    /// Answers the proxy made for an error, by who caused it.
    causes: [AtomicU64; 3],
    pub latency: Histogram,
}

#[derive(Debug)]
pub struct PoolStats {
    pub name: Arc<str>,
    pub backends: Box<[BackendStats]>,
    /// Requests the pool answered without a backend (none available).
    pub no_backend: AtomicU64,
}

#[derive(Debug)]
pub struct BackendStats {
    pub addr: SocketAddr,
    /// Responses by class: 1xx … 5xx, then errors with no response.
    classes: [AtomicU64; 6],
    pub latency: Histogram,
}

impl VersionStats {
    pub fn of(snapshot: &Snapshot) -> VersionStats {
        VersionStats {
            version: snapshot.version.clone(),
            hash: snapshot.hash.clone(),
            routes: snapshot
                .routes
                .iter()
                .map(|r| RouteStats::new(r.name.clone(), Some(snapshot.pools[r.pool].name.clone())))
                .collect(),
            unrouted: RouteStats::new("".into(), None),
            pools: snapshot
                .pools
                .iter()
                .map(|p| PoolStats {
                    name: p.name.clone(),
                    backends: p
                        .backends
                        .iter()
                        .map(|b| BackendStats {
                            addr: b.addr,
                            classes: Default::default(),
                            latency: Histogram::default(),
                        })
                        .collect(),
                    no_backend: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Same routes, pools and backends in the same places: one version's
    /// statistics fit the other's snapshot.
    pub fn same_shape(&self, other: &VersionStats) -> bool {
        self.routes.len() == other.routes.len()
            && self
                .routes
                .iter()
                .zip(&other.routes)
                .all(|(a, b)| a.name == b.name && a.pool == b.pool)
            && self.pools.len() == other.pools.len()
            && self.pools.iter().zip(&other.pools).all(|(a, b)| {
                a.name == b.name
                    && a.backends.len() == b.backends.len()
                    && a.backends
                        .iter()
                        .zip(&b.backends)
                        .all(|(x, y)| x.addr == y.addr)
            })
    }

    /// Count one request. A few relaxed adds; no allocation.
    #[inline]
    pub fn record(&self, o: &Outcome) {
        // Once for both histograms it goes in.
        let latency = Sample::of(o.latency);
        let route = o
            .route
            .and_then(|r| self.routes.get(r as usize))
            .unwrap_or(&self.unrouted);
        route.count(o, latency);
        let Some(pool) = o.pool.and_then(|p| self.pools.get(p as usize)) else {
            return;
        };
        // What the client caused (its body, its limits) says nothing of
        // the backend it was going to, nor of the pool.
        if o.cause == Some(Cause::Client) {
            return;
        }
        match o.backend.and_then(|b| pool.backends.get(b as usize)) {
            Some(b) => {
                let class = if o.cause.is_some() {
                    5
                } else {
                    (o.status / 100).clamp(1, 5) as usize - 1
                };
                b.classes[class].fetch_add(1, Relaxed);
                b.latency.add(latency);
            }
            None => {
                pool.no_backend.fetch_add(1, Relaxed);
            }
        }
    }
}

impl RouteStats {
    fn new(name: Arc<str>, pool: Option<Arc<str>>) -> RouteStats {
        RouteStats {
            name,
            pool,
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            causes: Default::default(),
            latency: Histogram::default(),
        }
    }

    #[inline]
    fn count(&self, o: &Outcome, latency: Sample) {
        if let Some(s) = self.statuses.get(o.status as usize) {
            s.fetch_add(1, Relaxed);
        }
        if let Some(c) = o.cause {
            self.causes[cause_index(c)].fetch_add(1, Relaxed);
        }
        self.latency.add(latency);
    }

    /// Requests answered with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.statuses
            .get(status as usize)
            .map_or(0, |s| s.load(Relaxed))
    }

    /// Every status with a count above zero, in order.
    pub fn statuses(&self) -> Vec<(u16, u64)> {
        self.statuses
            .iter()
            .enumerate()
            .map(|(s, n)| (s as u16, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Answers the proxy made for an error caused by `cause`.
    pub fn errors(&self, cause: Cause) -> u64 {
        self.causes[cause_index(cause)].load(Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.latency.count()
    }
}

impl BackendStats {
    /// Responses of class `class` (1 to 5).
    pub fn class(&self, class: u16) -> u64 {
        self.classes[(class.clamp(1, 5) - 1) as usize].load(Relaxed)
    }

    /// Attempts that ended with no response the backend sent (a connect
    /// failure, a reset, a timeout), answered by the proxy.
    pub fn errors(&self) -> u64 {
        self.classes[5].load(Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.classes.iter().map(|c| c.load(Relaxed)).sum()
    }
}

fn cause_index(c: Cause) -> usize {
    match c {
        Cause::Client => 0,
        Cause::Backend => 1,
        Cause::Proxy => 2,
    }
}

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5 %)
/// of what they were, as an HDR histogram with one significant digit.
const SUB: u32 = 8;
const SUB_BITS: u32 = 3;
/// Microseconds up to 2^30 (about 18 minutes); longer is counted there.
const OCTAVES: u32 = 31;
pub const BUCKETS: usize = (SUB + (OCTAVES - SUB_BITS) * SUB) as usize;

/// A log-linear latency histogram in microseconds: one relaxed add per
/// value, any quantile to within 12.5 %.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn record(&self, d: Duration) {
        self.add(Sample::of(d));
    }

    #[inline]
    fn add(&self, s: Sample) {
        self.buckets[s.bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(s.us, Relaxed);
    }

    /// A copy of the counts, for differencing and quantiles.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us.load(Relaxed))
    }
}

/// A duration as a histogram counts it: in microseconds, and its bucket.
#[derive(Clone, Copy)]
struct Sample {
    us: u64,
    bucket: usize,
}

impl Sample {
    #[inline]
    fn of(d: Duration) -> Sample {
        // In u64: a u128 product for a value that never needs one.
        let us = d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()));
        Sample {
            us,
            bucket: bucket(us),
        }
    }
}

/// The bucket of a value in microseconds.
#[inline]
pub fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let sub = (us >> (msb - SUB_BITS)) & (SUB as u64 - 1);
    (((msb - SUB_BITS + 1) * SUB) as usize + sub as usize).min(BUCKETS - 1)
}

/// The smallest value (microseconds) that falls in bucket `i`.
pub fn bucket_floor(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB as u64 {
        return i;
    }
    let octave = i / SUB as u64 - 1; // msb - SUB_BITS
    let sub = i % SUB as u64;
    (SUB as u64 + sub) << octave
}

/// The value below which `q` (0..=1) of `counts` lie, as the upper edge
/// of its bucket; `None` for no values.
pub fn quantile(counts: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(Duration::from_micros(bucket_floor(i + 1)));
        }
    }
    Some(Duration::from_micros(bucket_floor(counts.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_contiguous() {
        for us in 0..8 {
            assert_eq!(bucket(us), us as usize);
        }
        // Each bucket starts where the one before ends.
        let mut last = 0;
        for us in 1..200_000u64 {
            let b = bucket(us);
            assert!(b == last || b == last + 1, "{us}: {b} after {last}");
            assert!(
                bucket_floor(b) <= us && us < bucket_floor(b + 1),
                "{us} in {b}"
            );
            last = b;
        }
        // Within 12.5 % everywhere.
        for us in [9u64, 1_000, 12_345, 999_999, 50_000_000] {
            let b = bucket(us);
            let width = bucket_floor(b + 1) - bucket_floor(b);
            assert!(width as f64 <= us as f64 / 8.0 + 1.0, "{us}: width {width}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let c = h.counts();
        let p50 = quantile(&c, 0.5).unwrap();
        let p99 = quantile(&c, 0.99).unwrap();
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_millis(57),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(99) && p99 <= Duration::from_millis(112),
            "{p99:?}"
        );
        assert_eq!(quantile(&[0; BUCKETS], 0.99), None);
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum(), Duration::from_millis(5050));
    }

    #[test]
    fn a_sample_is_whole_microseconds_as_as_micros_counts_them() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(999),
            Duration::new(3, 999_999_999),
            Duration::from_secs(86_400),
        ] {
            let s = Sample::of(d);
            assert_eq!(u128::from(s.us), d.as_micros(), "{d:?}");
            assert_eq!(s.bucket, bucket(s.us));
        }
        assert_eq!(Sample::of(Duration::MAX).us, u64::MAX);
    }

    #[test]
    fn an_outcome_counts_once_at_each_level() {
        let src = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[route]]\nname = \"auth\"\npool = \"auth\"\n[pool.auth]\nbackends = [{ addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }]\n";
        let snap = fulcrum_config::check("t.toml", src).snapshot.unwrap();
        let s = VersionStats::of(&snap);
        let o = Outcome {
            route: Some(0),
            pool: Some(0),
            backend: Some(1),
            status: 401,
            cause: None,
            latency: Duration::from_millis(3),
            cohort: Cohort::Stable,
        };
        s.record(&o);
        s.record(&Outcome {
            backend: None,
            status: 503,
            cause: Some(Cause::Proxy),
            ..o
        });
        s.record(&Outcome {
            route: None,
            pool: None,
            backend: None,
            status: 400,
            cause: Some(Cause::Client),
            ..o
        });
        // The client's fault, before any backend (a body too slow) or on
        // the way to one (a body too large): the route's, not the pool's
        // nor the backend's.
        for backend in [None, Some(0)] {
            s.record(&Outcome {
                backend,
                status: 413,
                cause: Some(Cause::Client),
                ..o
            });
        }
        let auth = &s.routes[0];
        assert_eq!(
            (auth.status(401), auth.status(503), auth.requests()),
            (1, 1, 4)
        );
        assert_eq!(auth.errors(Cause::Client), 2);
        assert_eq!(auth.errors(Cause::Proxy), 1);
        assert_eq!(s.pools[0].backends[1].class(4), 1);
        assert_eq!(s.pools[0].backends[0].requests(), 0);
        assert_eq!(s.pools[0].no_backend.load(Relaxed), 1);
        assert_eq!(s.unrouted.status(400), 1);
        assert_eq!(s.unrouted.errors(Cause::Client), 1);
    }
}
