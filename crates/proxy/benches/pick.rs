//! One pick per algorithm, on pools of 3 and 100 backends, through the same
//! `Balancer` the data plane and `check`'s simulator use.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use fulcrum_config::balance::{Balancer, PoolView};
use fulcrum_config::snapshot::{Algorithm, HashKey, HashPolicy, MissingKey, Pool};

struct View(Vec<u32>);

impl PoolView for View {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.0[i]
    }
    fn healthy(&self, _: usize) -> bool {
        true
    }
    fn in_flight(&self, i: usize) -> u64 {
        i as u64 % 7
    }
}

fn pool(algorithm: Algorithm, n: usize) -> Pool {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)))
        .collect();
    let mut pool = fulcrum_testkit::pool("bench", &addrs);
    pool.algorithm = algorithm;
    pool.panic_threshold = 0.5;
    for (i, b) in pool.backends.iter_mut().enumerate() {
        b.weight = 1 + (i % 3) as u32;
    }
    pool
}

fn bench(c: &mut Criterion) {
    let hash = Algorithm::Hash(HashPolicy {
        key: HashKey::ClientIp,
        on_missing: MissingKey::HashEmpty,
    });
    for n in [3, 100] {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
            hash.clone(),
            Algorithm::First,
        ] {
            let pool = pool(algorithm.clone(), n);
            let view = View(pool.backends.iter().map(|b| b.weight).collect());
            let balancer = Balancer::new(&pool);
            let mut rng = fastrand::Rng::with_seed(7);
            let mut key = 0u64;
            c.bench_function(&format!("pick/{}/{n} backends", algorithm.name()), |b| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(balancer.pick(&view, Some(key), &[], &mut rng))
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
