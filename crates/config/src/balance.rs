//! Load-balancing algorithms and hash-key extraction, as pure logic: no
//! tokio, no clock, no global RNG. A balancer is built once per pool per
//! snapshot (off the request path) and `pick` is given the live view of the
//! pool and an RNG, so the safety tools run the very same code with a
//! seeded RNG and reproduce a run. It lives beside the routing table in the
//! config crate so that the data plane and the safety tools both depend on
//! it and neither can carry a second copy: what `check` judges is what
//! `serve` runs, by the dependency graph.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::snapshot::{Algorithm, HashKey, HashPolicy, MissingKey, Pool, RequestView};
use fastrand::Rng;
use xxhash_rust::xxh3::xxh3_64;

/// What a balancer needs to know of a pool's backends at pick time, in
/// config order. The data plane reads atomics; a simulator reads its model.
pub trait PoolView {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// 0 means drained: never picked, not even in panic mode.
    fn weight(&self, i: usize) -> u32;
    /// Up by active health and not ejected.
    fn healthy(&self, i: usize) -> bool;
    fn in_flight(&self, i: usize) -> u64;
    /// The share of its weight the backend takes now, above 0 and at most
    /// 1: below 1 while it warms up (`slow_start`).
    fn warmth(&self, _i: usize) -> f64 {
        1.0
    }
}

/// Whether a draw that landed on a backend of `warmth` keeps it: always
/// once warm, else with that probability, so a warming backend takes that
/// share of its weight and the rest goes to the others by theirs.
#[inline]
fn keeps(warmth: f64, rng: &mut Rng) -> bool {
    warmth >= 1.0 || rng.f64() < warmth
}

/// The chosen backend, and whether the pool was in panic mode for this pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub panic: bool,
}

/// Healthy and weighted backends of a pool, counted for panic mode and for
/// the 503 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Backends with weight > 0.
    pub weighted: usize,
    /// Of those, how many are healthy.
    pub healthy: usize,
}

impl Census {
    pub fn of(view: &impl PoolView) -> Census {
        let mut c = Census {
            weighted: 0,
            healthy: 0,
        };
        for i in 0..view.len() {
            if view.weight(i) > 0 {
                c.weighted += 1;
                c.healthy += view.healthy(i) as usize;
            }
        }
        c
    }

    /// Below the threshold, a pool balances over all weighted backends
    /// rather than pile the whole load on the few healthy ones left.
    pub fn panics(&self, threshold: f64) -> bool {
        self.weighted > 0 && (self.healthy as f64) < threshold * self.weighted as f64
    }
}

/// One pool's balancer, compiled from its config.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    panic_threshold: f64,
    /// Cumulative weights, for weighted random draws (used by several kinds).
    cumulative: Vec<u64>,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        /// The smooth weighted round-robin sequence over one period.
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    LeastRequest,
    Random,
    Hash {
        policy: HashPolicy,
        /// Sorted (point, backend) pairs.
        ring: Vec<(u64, u32)>,
    },
    First,
}

/// Beyond this many schedule entries round robin stops precomputing and
/// falls back to weighted random: building the schedule costs
/// entries × backends, and weights that large are a config smell anyway.
const MAX_SCHEDULE: usize = 1 << 16;
/// Redraws of a random or round-robin pick landing on an unavailable backend
/// before a linear scan takes over; bounds the work when most of a pool is down.
const MAX_DRAWS: usize = 16;
/// Virtual nodes per unit of the smallest weight on the hash ring; about
/// 160 per backend keeps the spread of keys within a few percent.
const VNODES: u64 = 160;
const MAX_RING: u64 = 160_000;

impl Balancer {
    pub fn new(pool: &Pool) -> Balancer {
        let weights: Vec<u32> = pool.backends.iter().map(|b| b.weight).collect();
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += w as u64;
                total
            })
            .collect();
        let kind = match &pool.algorithm {
            Algorithm::RoundRobin => match smooth_schedule(&weights) {
                Some(schedule) => Kind::RoundRobin {
                    schedule,
                    next: AtomicUsize::new(0),
                },
                None => Kind::Random,
            },
            Algorithm::LeastRequest => Kind::LeastRequest,
            Algorithm::Random => Kind::Random,
            Algorithm::Hash(policy) => Kind::Hash {
                policy: policy.clone(),
                ring: build_ring(pool),
            },
            Algorithm::First => Kind::First,
        };
        Balancer {
            kind,
            panic_threshold: pool.panic_threshold,
            cumulative,
        }
    }

    /// The hash policy, if this is a `hash` pool: the caller extracts the
    /// key with [`hash_key`] only then.
    pub fn hash_policy(&self) -> Option<&HashPolicy> {
        match &self.kind {
            Kind::Hash { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// Where a hashed key lands on a `hash` pool's ring: the index of the
    /// first ring point at or after it, that point, and the ring's size.
    /// For `fulcrum explain`; `pick` walks on from there past unavailable
    /// backends. `None` for other algorithms or an empty ring.
    pub fn ring_position(&self, key: u64) -> Option<(usize, u64, usize)> {
        let Kind::Hash { ring, .. } = &self.kind else {
            return None;
        };
        if ring.is_empty() {
            return None;
        }
        let i = ring.partition_point(|&(p, _)| p < key) % ring.len();
        Some((i, ring[i].0, ring.len()))
    }

    /// The key a `hash` pool uses for a request that lacks one under
    /// `on_missing = "hash_empty"`.
    pub fn empty_key() -> u64 {
        xxh3_64(b"")
    }

    /// Picks a backend, or `None` when none is available. `key` is the
    /// hashed request key for `hash` pools (ignored otherwise); `exclude`
    /// lists backends already tried by this request.
    pub fn pick(
        &self,
        view: &impl PoolView,
        key: Option<u64>,
        exclude: &[usize],
        rng: &mut Rng,
    ) -> Option<Pick> {
        let panic = Census::of(view).panics(self.panic_threshold);
        let ok =
            |i: usize| view.weight(i) > 0 && (panic || view.healthy(i)) && !exclude.contains(&i);
        let index = match &self.kind {
            Kind::RoundRobin { schedule, next } => {
                // Each draw consumes one schedule entry; skipping entries of
                // unavailable backends (instead of taking the next entry)
                // keeps the others in exact weight proportion.
                let mut found = None;
                for _ in 0..MAX_DRAWS.min(schedule.len()) {
                    let i = schedule[next.fetch_add(1, Relaxed) % schedule.len()] as usize;
                    if ok(i) && keeps(view.warmth(i), rng) {
                        found = Some(i);
                        break;
                    }
                }
                found.or_else(|| {
                    let start = next.load(Relaxed);
                    (0..schedule.len())
                        .map(|k| schedule[(start + k) % schedule.len()] as usize)
                        .find(|&i| ok(i))
                })
            }
            Kind::Random => self.weighted_random(view, &ok, rng),
            Kind::LeastRequest => {
                let a = self.weighted_random(view, &ok, rng)?;
                let b = self.weighted_random(view, &ok, rng)?;
                // Lower in_flight / weight wins; cross-multiplied to stay in integers.
                let load = |x: usize, y: usize| view.in_flight(x) as u128 * view.weight(y) as u128;
                Some(if load(b, a) < load(a, b) { b } else { a })
            }
            Kind::Hash { policy, ring } => match key {
                Some(h) => ring_lookup(ring, h, &ok),
                None => match policy.on_missing {
                    MissingKey::HashEmpty => ring_lookup(ring, xxh3_64(b""), &ok),
                    MissingKey::Random => self.weighted_random(view, &ok, rng),
                },
            },
            Kind::First => (0..view.len()).find(|&i| ok(i)),
        }?;
        Some(Pick { index, panic })
    }

    /// A weighted random backend among those `ok` accepts: rejection
    /// sampling first (exact, warmth included, and one draw when all are
    /// up and warm), then an exact linear draw over the acceptable ones.
    fn weighted_random(
        &self,
        view: &impl PoolView,
        ok: &impl Fn(usize) -> bool,
        rng: &mut Rng,
    ) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        for _ in 0..MAX_DRAWS {
            let r = rng.u64(0..total);
            // First index whose cumulative weight exceeds r.
            let i = self.cumulative.partition_point(|&c| c <= r);
            if ok(i) && keeps(view.warmth(i), rng) {
                return Some(i);
            }
        }
        let weight =
            |i: usize| self.cumulative[i] - if i == 0 { 0 } else { self.cumulative[i - 1] };
        let avail: u64 = (0..self.cumulative.len())
            .filter(|&i| ok(i))
            .map(weight)
            .sum();
        if avail == 0 {
            return None;
        }
        let mut r = rng.u64(0..avail);
        for i in (0..self.cumulative.len()).filter(|&i| ok(i)) {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

/// nginx's smooth weighted round robin, unrolled over one period
/// (sum of weights / their gcd): for 5:1:1 it yields a a b a c a a.
fn smooth_schedule(weights: &[u32]) -> Option<Vec<u32>> {
    let g = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, w as u64));
    if g == 0 {
        // No weighted backend: an empty schedule, which never picks.
        return Some(Vec::new());
    }
    let w: Vec<i64> = weights.iter().map(|&w| (w as u64 / g) as i64).collect();
    let total: i64 = w.iter().sum();
    if total as usize > MAX_SCHEDULE {
        return None;
    }
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i];
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    Some(schedule)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A consistent-hash ring: each backend gets virtual nodes in proportion to
/// its weight, placed by hashing "addr#n" so placement depends only on the
/// backend's identity (adding a backend moves only the keys it takes).
fn build_ring(pool: &Pool) -> Vec<(u64, u32)> {
    let min = pool
        .backends
        .iter()
        .map(|b| b.weight)
        .filter(|&w| w > 0)
        .min();
    let Some(min) = min else { return Vec::new() };
    let mut counts: Vec<u64> = pool
        .backends
        .iter()
        .map(|b| (b.weight as u64 * VNODES).div_ceil(min as u64) * (b.weight > 0) as u64)
        .collect();
    let sum: u64 = counts.iter().sum();
    if sum > MAX_RING {
        for c in counts.iter_mut().filter(|c| **c > 0) {
            *c = (*c * MAX_RING / sum).max(1);
        }
    }
    let mut ring = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
    for (i, (b, &n)) in pool.backends.iter().zip(&counts).enumerate() {
        for v in 0..n {
            ring.push((xxh3_64(format!("{}#{v}", b.addr).as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The first ring point at or after `h` whose backend is acceptable: the
/// keys of an unavailable backend spread over the others; no other key moves.
fn ring_lookup(ring: &[(u64, u32)], h: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let start = ring.partition_point(|&(p, _)| p < h);
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1 as usize)
        .find(|&i| ok(i))
}

/// The request's hash key under `policy`, hashed with xxh3; `None` when the
/// request lacks it, or sends it empty (as HAProxy's `hdr()` balancing
/// takes a header without a value for none: under `on_missing = "random"`
/// a client that always sends `x-user:` would otherwise pin one backend).
/// Inlined across the crate boundary: it is on the request path of every
/// `hash` pool.
#[inline]
pub fn hash_key(policy: &HashPolicy, req: &RequestView<'_>, client_ip: IpAddr) -> Option<u64> {
    match &policy.key {
        // The host the request names, on every protocol: HTTP/2 carries
        // it as `:authority`, with no Host header. As routes match it:
        // lower-cased, without its port.
        HashKey::Header(name) if name == http::header::HOST => {
            req.host.map(|h| xxh3_64(h.as_bytes()))
        }
        HashKey::Header(name) => req
            .headers
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| xxh3_64(v.as_bytes())),
        HashKey::Cookie(name) => cookie(req.headers, name)
            .filter(|v| !v.is_empty())
            .map(xxh3_64),
        HashKey::ClientIp => Some(match client_ip {
            IpAddr::V4(ip) => xxh3_64(&ip.octets()),
            IpAddr::V6(ip) => xxh3_64(&ip.octets()),
        }),
        HashKey::Path => Some(xxh3_64(req.path.as_bytes())),
    }
}

/// The value of cookie `name` from the request's Cookie header(s).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Backend, Retries, Timeouts};
    use std::time::Duration;

    struct View {
        weights: Vec<u32>,
        healthy: Vec<bool>,
        in_flight: Vec<u64>,
        warmth: Vec<f64>,
    }
    impl View {
        fn new(weights: &[u32]) -> View {
            View {
                weights: weights.to_vec(),
                healthy: vec![true; weights.len()],
                in_flight: vec![0; weights.len()],
                warmth: vec![1.0; weights.len()],
            }
        }
    }
    impl PoolView for View {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn healthy(&self, i: usize) -> bool {
            self.healthy[i]
        }
        fn in_flight(&self, i: usize) -> u64 {
            self.in_flight[i]
        }
        fn warmth(&self, i: usize) -> f64 {
            self.warmth[i]
        }
    }

    /// A backend warming at 0.25 takes a quarter of its weight's share,
    /// and the others take the rest by theirs, whichever algorithm weighs
    /// its picks.
    #[test]
    fn a_warming_backend_takes_its_warmth_of_its_share() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
        ] {
            let b = Balancer::new(&pool(algorithm.clone(), &[1, 1, 1]));
            let mut v = View::new(&[1, 1, 1]);
            v.warmth[0] = 0.25;
            let mut rng = Rng::with_seed(7);
            let t = tally(&picks(&b, &v, 9000, &mut rng), 3);
            // 0.25 : 1 : 1 → 1000 : 4000 : 4000.
            assert!((800..1200).contains(&t[0]), "{algorithm:?}: {t:?}");
            assert!((3600..4400).contains(&t[1]), "{algorithm:?}: {t:?}");
        }
    }

    fn pool(algorithm: Algorithm, weights: &[u32]) -> Pool {
        Pool {
            name: "p".into(),
            algorithm,
            protocol: crate::snapshot::Protocol::Http1,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Backend {
                    addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                    weight,
                })
                .collect(),
            health: None,
            outlier: None,
            panic_threshold: 0.0,
            slow_start: None,
            idle_per_backend: Pool::DEFAULT_IDLE_PER_BACKEND,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_secs(1),
                idle: Duration::from_secs(1),
                tunnel: Duration::from_secs(1),
            },
            retries: Retries {
                attempts: 0,
                budget: 0.2,
                min_concurrent: 3,
            },
        }
    }

    fn picks(b: &Balancer, v: &View, n: usize, rng: &mut Rng) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(v, None, &[], rng).unwrap().index)
            .collect()
    }

    fn tally(picks: &[usize], n: usize) -> Vec<usize> {
        let mut t = vec![0; n];
        for &p in picks {
            t[p] += 1;
        }
        t
    }

    #[test]
    fn smooth_round_robin_is_nginx_sequence() {
        let b = Balancer::new(&pool(Algorithm::RoundRobin, &[5, 1, 1]));
        let got = picks(&b, &View::new(&[5, 1, 1]), 14, &mut Rng::with_seed(1));
        assert_eq!(got, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_redraws_keep_exact_proportions() {
        // Backend 1 down: 0 and 2 must keep exactly 3:1, not inherit 1's share.
        let b = Balancer::new(&pool(Algorithm::RoundRobin, &[3, 2, 1]));
        let mut v = View::new(&[3, 2, 1]);
        v.healthy[1] = false;
        let t = tally(&picks(&b, &v, 400, &mut Rng::with_seed(1)), 3);
        assert_eq!(t, [300, 0, 100]);
    }

    #[test]
    fn weight_zero_is_never_picked_even_in_panic() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
            Algorithm::First,
            Algorithm::Hash(HashPolicy {
                key: HashKey::Path,
                on_missing: MissingKey::Random,
            }),
        ] {
            let mut p = pool(alg.clone(), &[0, 1, 1]);
            p.panic_threshold = 0.9;
            let b = Balancer::new(&p);
            let mut v = View::new(&[0, 1, 1]);
            let mut rng = Rng::with_seed(7);
            for _ in 0..500 {
                assert_ne!(
                    b.pick(&v, Some(rng.u64(..)), &[], &mut rng).unwrap().index,
                    0,
                    "{alg:?}"
                );
            }
            v.healthy = vec![true, false, false];
            let p = b.pick(&v, Some(3), &[], &mut rng).unwrap();
            assert!(p.panic && p.index != 0, "{alg:?}");
        }
    }

    #[test]
    fn unavailable_and_excluded_are_never_picked() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
            Algorithm::First,
        ] {
            let b = Balancer::new(&pool(alg.clone(), &[1, 1, 1, 1]));
            let mut v = View::new(&[1, 1, 1, 1]);
            v.healthy[0] = false;
            let mut rng = Rng::with_seed(3);
            for _ in 0..300 {
                let i = b.pick(&v, None, &[1], &mut rng).unwrap().index;
                assert!(i == 2 || i == 3, "{alg:?} picked {i}");
            }
            assert_eq!(b.pick(&v, None, &[1, 2, 3], &mut rng), None, "{alg:?}");
        }
    }

    #[test]
    fn random_honours_weights() {
        // 1:3 over 40 000 draws: sd of backend 0's count is
        // sqrt(n p (1-p)) ≈ 87; allow 5 sd (±433) around 10 000.
        let b = Balancer::new(&pool(Algorithm::Random, &[1, 3]));
        let t = tally(
            &picks(&b, &View::new(&[1, 3]), 40_000, &mut Rng::with_seed(9)),
            2,
        );
        assert!((t[0] as i64 - 10_000).abs() < 433, "{t:?}");
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let b = Balancer::new(&pool(Algorithm::LeastRequest, &[1, 1]));
        let mut v = View::new(&[1, 1]);
        v.in_flight = vec![10, 0];
        let t = tally(&picks(&b, &v, 1000, &mut Rng::with_seed(5)), 2);
        // Backend 0 wins only when both candidates are 0: p = 1/4.
        assert!(t[0] < 320 && t[0] > 180, "{t:?}");
    }

    #[test]
    fn panic_mode_spreads_over_all_weighted() {
        let mut p = pool(Algorithm::RoundRobin, &[1, 1, 1, 1]);
        p.panic_threshold = 0.5;
        let b = Balancer::new(&p);
        let mut v = View::new(&[1, 1, 1, 1]);
        v.healthy = vec![true, false, false, false];
        let mut rng = Rng::with_seed(1);
        let got: Vec<_> = (0..8)
            .map(|_| b.pick(&v, None, &[], &mut rng).unwrap())
            .collect();
        assert!(got.iter().all(|p| p.panic));
        assert_eq!(
            tally(&got.iter().map(|p| p.index).collect::<Vec<_>>(), 4),
            [2, 2, 2, 2]
        );
        v.healthy = vec![true, true, false, false];
        assert!(!b.pick(&v, None, &[], &mut rng).unwrap().panic);
    }

    #[test]
    fn hash_is_stable_and_walks_past_down_backends() {
        let policy = HashPolicy {
            key: HashKey::Path,
            on_missing: MissingKey::HashEmpty,
        };
        let b = Balancer::new(&pool(Algorithm::Hash(policy), &[1, 1, 1]));
        let mut v = View::new(&[1, 1, 1]);
        let mut rng = Rng::with_seed(1);
        let before: Vec<usize> = (0..1000u64)
            .map(|k| {
                b.pick(&v, Some(xxh3_64(&k.to_le_bytes())), &[], &mut rng)
                    .unwrap()
                    .index
            })
            .collect();
        v.healthy[2] = false;
        for k in 0..1000u64 {
            let now = b
                .pick(&v, Some(xxh3_64(&k.to_le_bytes())), &[], &mut rng)
                .unwrap()
                .index;
            if before[k as usize] != 2 {
                assert_eq!(now, before[k as usize], "a key of a live backend moved");
            } else {
                assert_ne!(now, 2);
            }
        }
        // Missing key with HashEmpty: always the same backend.
        let first = b.pick(&v, None, &[], &mut rng).unwrap().index;
        assert!((0..50).all(|_| b.pick(&v, None, &[], &mut rng).unwrap().index == first));
    }

    #[test]
    fn cookie_parsing() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "a=1; session = xyz ;b=2".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "c"), None);
    }
}
