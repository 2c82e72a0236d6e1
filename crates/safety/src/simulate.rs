//! The simulator: drives the data plane's own `Balancer::pick` (and routes
//! with `Snapshot::route`) over a traffic sample, with a model of the pool
//! in place of live backend state. The model: every backend healthy (so the
//! shares are what the config asks for, not what an outage makes of it);
//! each request holds its backend until `concurrency` later picks of the
//! same pool have been made (so `least_request` sees load); a seeded RNG
//! per pool (so a run is reproducible, and an unchanged pool picks the same
//! backends under two configs).

use std::collections::{HashMap, VecDeque};

use fastrand::Rng;
use fulcrum_config::Snapshot;
use fulcrum_config::balance::{Balancer, PoolView, hash_key};
use fulcrum_config::keys::redact;
use fulcrum_config::snapshot::{Algorithm, HeaderValueMatch, MissingKey, Pool, Routes};
use fulcrum_config::standards::TrafficSpec;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::traffic::SampleRequest;

/// A pool as the model sees it.
#[derive(Debug)]
pub struct ModelView {
    weights: Vec<u32>,
    in_flight: Vec<u64>,
    /// Backends of requests still in flight, oldest first.
    queue: VecDeque<usize>,
    concurrency: usize,
}

impl ModelView {
    pub fn new(pool: &Pool, concurrency: usize) -> ModelView {
        ModelView {
            weights: pool.backends.iter().map(|b| b.weight).collect(),
            in_flight: vec![0; pool.backends.len()],
            queue: VecDeque::new(),
            concurrency,
        }
    }

    /// A request was sent to backend `i`; the oldest in flight completes
    /// once more than `concurrency` are.
    fn sent(&mut self, i: usize) {
        self.in_flight[i] += 1;
        self.queue.push_back(i);
        while self.queue.len() > self.concurrency {
            if let Some(done) = self.queue.pop_front() {
                self.in_flight[done] -= 1;
            }
        }
    }
}

impl PoolView for ModelView {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn healthy(&self, _: usize) -> bool {
        true
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.in_flight[i]
    }
}

/// One pool's simulation: its real balancer, the model, a seeded RNG.
#[derive(Debug)]
pub struct PoolSim {
    pub balancer: Balancer,
    pub view: ModelView,
    rng: Rng,
    /// `first`: the pick never depends on chance or load.
    first: bool,
    /// Picks per backend so far.
    pub counts: Vec<u64>,
    /// Of those, picks made by a draw (random, load, round-robin turn)
    /// rather than by the request itself.
    pub drawn: u64,
    /// `hash` pools: each hashed key the request decided by (the empty
    /// key's hash for those without one under `hash_empty`), its requests
    /// and its backend. What makes a hash pool's spread a matter of how
    /// many keys there are and how heavy the heaviest are.
    pub keys: HashMap<u64, (u64, usize)>,
}

/// A backend picked for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    /// The request alone decided it (`first`, or `hash` on a key it
    /// carries or on the empty key): under the same pool it always lands
    /// there. Otherwise it is one draw of the pool's spread.
    pub sticky: bool,
}

impl PoolSim {
    pub fn new(pool: &Pool, spec: &TrafficSpec) -> PoolSim {
        PoolSim {
            balancer: Balancer::new(pool),
            view: ModelView::new(pool, spec.concurrency),
            rng: Rng::with_seed(spec.seed ^ xxh3_64(pool.name.as_bytes())),
            first: pool.algorithm == Algorithm::First,
            counts: vec![0; pool.backends.len()],
            drawn: 0,
            keys: HashMap::new(),
        }
    }

    /// The backend the balancer picks for `req`, exactly as `serve` would
    /// with every backend healthy.
    pub fn pick(&mut self, req: &SampleRequest) -> Option<Picked> {
        let policy = self.balancer.hash_policy();
        let key = policy.and_then(|p| hash_key(p, &req.view(), req.client_ip));
        let sticky = self.first
            || policy.is_some_and(|p| key.is_some() || p.on_missing == MissingKey::HashEmpty);
        let pick = self.balancer.pick(&self.view, key, &[], &mut self.rng)?;
        self.view.sent(pick.index);
        self.counts[pick.index] += 1;
        self.drawn += u64::from(!sticky);
        if policy.is_some() && sticky {
            let k = key.unwrap_or_else(Balancer::empty_key);
            self.keys.entry(k).or_insert((0, pick.index)).0 += 1;
        }
        Some(Picked {
            index: pick.index,
            sticky,
        })
    }
}

/// How a pool's requests spread over its backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shares {
    pub pool: String,
    pub algorithm: &'static str,
    /// Requests of the sample that reached the pool.
    pub requests: u64,
    /// `counted` (the shares are the simulated counts), `exact` (computed
    /// from the weights, or from each request's own key) or `estimated`
    /// (a sample of a spread that chance or keys decide: each share comes
    /// with an interval); see [`crate::share`].
    pub method: &'static str,
    /// Of the intervals, when `estimated`.
    pub confidence: Option<f64>,
    /// `hash` pools: however their keys fall on the ring, the busiest
    /// backend gets at least this share (a lower confidence bound, from
    /// the heaviest keys alone).
    pub floor: Option<f64>,
    /// `hash` pools: distinct keys among the sample's requests.
    pub keys: Option<usize>,
    pub backends: Vec<BackendShare>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendShare {
    pub addr: String,
    pub weight: u32,
    /// Simulated picks.
    pub requests: u64,
    /// Of the pool's requests; 0 when the pool had none.
    pub share: f64,
    /// The interval around `share`, when `estimated`.
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Shares {
    pub fn from_counts(pool: &Pool, counts: &[u64]) -> Shares {
        let total: u64 = counts.iter().sum();
        Shares {
            pool: pool.name.to_string(),
            algorithm: pool.algorithm.name(),
            requests: total,
            method: "counted",
            confidence: None,
            floor: None,
            keys: None,
            backends: pool
                .backends
                .iter()
                .zip(counts)
                .map(|(b, &n)| BackendShare {
                    addr: b.addr.to_string(),
                    weight: b.weight,
                    requests: n,
                    share: if total == 0 {
                        0.0
                    } else {
                        n as f64 / total as f64
                    },
                    low: None,
                    high: None,
                })
                .collect(),
        }
    }

    /// The backend with the largest share.
    pub fn max(&self) -> Option<&BackendShare> {
        self.backends
            .iter()
            .max_by(|a, b| a.share.total_cmp(&b.share))
    }

    /// `127.0.0.1:9101 95.5%, 127.0.0.1:9102 2.3%, …`
    pub fn summary(&self) -> String {
        self.backends
            .iter()
            .map(|b| format!("{} {:.1}%", b.addr, b.share * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `pool` simulated over `requests`.
pub fn simulate_pool<'a>(
    pool: &Pool,
    requests: impl IntoIterator<Item = &'a SampleRequest>,
    spec: &TrafficSpec,
) -> PoolSim {
    let mut sim = PoolSim::new(pool, spec);
    for r in requests {
        sim.pick(r);
    }
    sim
}

/// The simulated counts of `pool` over `requests`.
pub fn pool_shares<'a>(
    pool: &Pool,
    requests: impl IntoIterator<Item = &'a SampleRequest>,
    spec: &TrafficSpec,
) -> Shares {
    Shares::from_counts(pool, &simulate_pool(pool, requests, spec).counts)
}

/// Where one request of a replay went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub route: Option<usize>,
    pub pool: Option<usize>,
    pub backend: Option<Picked>,
}

/// Replay `requests` in order through `snapshot`: route, then pick in the
/// route's pool. `recorded` says the sample came from an access log, whose
/// sensitive values are redacted: routes then compare the redacted form of
/// their expected values (see [`for_recorded`]).
pub fn replay(
    snapshot: &Snapshot,
    requests: &[SampleRequest],
    spec: &TrafficSpec,
    recorded: bool,
) -> Vec<Outcome> {
    replay_pools(snapshot, requests, spec, recorded).0
}

/// [`replay`], and each pool's simulation after it (in snapshot order).
pub fn replay_pools(
    snapshot: &Snapshot,
    requests: &[SampleRequest],
    spec: &TrafficSpec,
    recorded: bool,
) -> (Vec<Outcome>, Vec<PoolSim>) {
    let redacted;
    let snapshot = if recorded {
        redacted = for_recorded(snapshot);
        &redacted
    } else {
        snapshot
    };
    let mut sims: Vec<PoolSim> = snapshot
        .pools
        .iter()
        .map(|p| PoolSim::new(p, spec))
        .collect();
    let outcomes = requests
        .iter()
        .map(|r| match snapshot.route(&r.view()) {
            None => Outcome {
                route: None,
                pool: None,
                backend: None,
            },
            Some((i, route)) => Outcome {
                route: Some(i),
                pool: Some(route.pool),
                backend: sims[route.pool].pick(r),
            },
        })
        .collect();
    (outcomes, sims)
}

/// The snapshot as matched against an access log: an exact header
/// condition matches the value as written or its redacted form. Which
/// headers the log redacted was decided by the config that wrote it, not
/// by the one replayed (a change may add or drop `redact`), so both forms
/// are taken; a clear value that reads `h:` and 32 hex digits is not one a
/// route names. (A regex on a redacted header cannot be evaluated on a
/// hash; it sees the hash, and docs/standards.md says so.)
pub fn for_recorded(snapshot: &Snapshot) -> Snapshot {
    let mut s = snapshot.clone();
    let mut routes = s.routes.to_vec();
    for route in &mut routes {
        for h in &mut route.matcher.headers {
            if let HeaderValueMatch::Exact(v) = &h.value {
                let either = format!("^(?:{}|{})$", regex::escape(v), redact(v.as_bytes()));
                h.value = HeaderValueMatch::Regex(
                    regex::Regex::new(&either).expect("an escaped value and a hash form a regex"),
                );
            }
        }
    }
    // The routing table is immutable so its index cannot go stale: rebuild it.
    s.routes = Routes::new(routes);
    s
}
