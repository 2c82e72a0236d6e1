//! The share of a pool's requests each backend should get, from its
//! weights, its health and its algorithm: the pool's real balancer
//! (`fulcrum_config::balance`, the one `serve` and `check` use) picking
//! for a stream of requests arriving at the observed rate, each holding
//! its backend for that backend's observed latency. So `least_request`'s
//! expectation follows the backends' speed (a slow backend getting less is
//! expected), and `hash` is fed many distinct keys, as a well-spread key
//! would be.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use fastrand::Rng;
use fulcrum_config::balance::{Balancer, PoolView};
use fulcrum_config::snapshot::{Algorithm, Pool};

/// The expected shares of each pool, computed again only when what they
/// depend on moves: the config, which backends are available, and, for
/// `least_request` alone (whose picks follow load), the request rate and
/// each backend's latency, both to within about 5 %. A model run is
/// 20,000 picks; the guard looks every quarter second, and in a steady
/// state nothing it depends on has moved.
#[derive(Default)]
pub struct Memo {
    pools: HashMap<String, (Key, Vec<f64>)>,
    /// Model runs so far.
    runs: u64,
}

struct Key {
    /// The content hash of the config the pool is from.
    config: String,
    available: Vec<bool>,
    /// Rate and latencies as steps of 5 % (`least_request` only).
    load: Vec<i32>,
}

impl Memo {
    /// [`shares`], from the last run when nothing it depends on moved.
    pub fn shares(
        &mut self,
        config: &str,
        pool: &Pool,
        available: &[bool],
        latency: &[f64],
        rate: f64,
    ) -> Vec<f64> {
        let step = |x: f64| (x.max(1e-9).ln() / 1.05f64.ln()).round() as i32;
        let load = match pool.algorithm {
            Algorithm::LeastRequest => std::iter::once(rate)
                .chain(latency.iter().copied())
                .map(step)
                .collect(),
            _ => Vec::new(),
        };
        if let Some((k, shares)) = self.pools.get(&*pool.name)
            && k.config == config
            && k.available == available
            && k.load == load
        {
            return shares.clone();
        }
        let fresh = shares(pool, available, latency, rate);
        self.runs += 1;
        let key = Key {
            config: config.to_owned(),
            available: available.to_vec(),
            load,
        };
        self.pools
            .insert(pool.name.to_string(), (key, fresh.clone()));
        fresh
    }
}

struct Model<'a> {
    weights: Vec<u32>,
    available: &'a [bool],
    in_flight: Vec<u64>,
}

impl PoolView for Model<'_> {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn healthy(&self, i: usize) -> bool {
        self.available[i]
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.in_flight[i]
    }
}

/// Picks per expectation: enough that the model's own noise (a few
/// tenths of a percent) is far below what the guard would flag.
const PICKS: usize = 20_000;

/// Each backend's expected share of `pool`'s requests, given which are
/// available, each one's mean latency (seconds) and the requests per
/// second the pool gets.
pub fn shares(pool: &Pool, available: &[bool], latency: &[f64], rate: f64) -> Vec<f64> {
    let balancer = Balancer::new(pool);
    let mut model = Model {
        weights: pool.backends.iter().map(|b| b.weight).collect(),
        available,
        in_flight: vec![0; pool.backends.len()],
    };
    let mut rng = Rng::with_seed(0x5eed);
    let gap = 1.0 / rate.max(1e-3);
    let mut done: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut counts = vec![0u64; pool.backends.len()];
    // Time in nanoseconds, so the heap orders integers.
    let ns = |s: f64| (s * 1e9) as u64;
    for k in 0..PICKS {
        let now = ns(k as f64 * gap);
        while done.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if let Some(Reverse((_, i))) = done.pop() {
                model.in_flight[i] -= 1;
            }
        }
        let key = balancer.hash_policy().map(|_| rng.u64(..));
        let Some(pick) = balancer.pick(&model, key, &[], &mut rng) else {
            break;
        };
        let i = pick.index;
        counts[i] += 1;
        model.in_flight[i] += 1;
        done.push(Reverse((
            now + ns(latency.get(i).copied().unwrap_or(0.0)),
            i,
        )));
    }
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                *c as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(algorithm: &str, weights: &[u32]) -> Pool {
        let backends: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{ addr = \"127.0.0.1:{}\", weight = {w} }}", 9000 + i))
            .collect();
        let hash = if algorithm == "hash" {
            "hash = { key = \"header:x-user\" }\n"
        } else {
            ""
        };
        let src = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\npool = \"p\"\n[pool.p]\nalgorithm = \"{algorithm}\"\n{hash}backends = [{}]\n",
            backends.join(", ")
        );
        fulcrum_config::check("t.toml", &src)
            .snapshot
            .expect("valid")
            .pools
            .remove(0)
    }

    #[test]
    fn the_model_runs_again_only_when_what_it_depends_on_moves() {
        let mut memo = Memo::default();
        let rr = pool("round_robin", &[1, 1]);
        let up = [true, true];
        memo.shares("a", &rr, &up, &[0.01, 0.01], 100.0);
        // Round robin does not follow load.
        memo.shares("a", &rr, &up, &[0.5, 0.01], 900.0);
        assert_eq!(memo.runs, 1);
        assert_eq!(
            memo.shares("a", &rr, &[true, false], &[0.5, 0.01], 900.0),
            [1.0, 0.0]
        );
        memo.shares("b", &rr, &[true, false], &[0.5, 0.01], 900.0);
        assert_eq!(memo.runs, 3);

        let lr = pool("least_request", &[1, 1]);
        memo.shares("a", &lr, &up, &[0.010, 0.01], 100.0);
        // Within the 5 % step: the same expectation.
        memo.shares("a", &lr, &up, &[0.0101, 0.01], 100.4);
        assert_eq!(memo.runs, 4);
        // One backend ten times slower: least_request sends it less.
        let slow = memo.shares("a", &lr, &up, &[0.1, 0.01], 100.0);
        assert_eq!(memo.runs, 5);
        assert!(slow[0] < slow[1], "{slow:?}");
    }

    #[test]
    fn weights_and_health_set_the_shares() {
        for algorithm in ["round_robin", "random", "hash", "least_request"] {
            let s = shares(
                &pool(algorithm, &[1, 1]),
                &[true, true],
                &[0.001, 0.001],
                100.0,
            );
            assert!((s[0] - 0.5).abs() < 0.03, "{algorithm}: {s:?}");
            let s = shares(
                &pool(algorithm, &[20, 1, 1]),
                &[true, true, true],
                &[0.001; 3],
                100.0,
            );
            assert!((s[0] - 20.0 / 22.0).abs() < 0.03, "{algorithm}: {s:?}");
            let s = shares(
                &pool(algorithm, &[1, 1]),
                &[true, false],
                &[0.001, 0.001],
                100.0,
            );
            assert!(s[0] > 0.99, "{algorithm}: {s:?}");
        }
        let s = shares(
            &pool("first", &[1, 1]),
            &[true, true],
            &[0.001, 0.001],
            100.0,
        );
        assert_eq!(s, vec![1.0, 0.0]);
    }

    #[test]
    fn least_request_expects_less_of_a_slow_backend() {
        // At 200 requests a second, a backend taking 100 ms holds about
        // ten at a time while a 1 ms one holds none: it gets less.
        let s = shares(
            &pool("least_request", &[1, 1]),
            &[true, true],
            &[0.1, 0.001],
            200.0,
        );
        assert!(s[0] < 0.45, "{s:?}");
        // Weighted up, it gets more than it did.
        let up = shares(
            &pool("least_request", &[4, 1]),
            &[true, true],
            &[0.1, 0.001],
            200.0,
        );
        assert!(up[0] > s[0] + 0.1, "{up:?} against {s:?}");
    }
}
