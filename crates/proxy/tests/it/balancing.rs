//! Each algorithm's traffic split through the real proxy, within stated bounds.

use fulcrum_config::snapshot::{Algorithm, HashKey, HashPolicy, MissingKey, Pool};
use fulcrum_testkit::{Backend, Client, SnapshotBuilder, TestProxy, pool};
use http::Method;

async fn two(alg: Algorithm) -> (Backend, Backend, TestProxy) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.algorithm = alg;
    p.backends[1].weight = 2;
    let proxy = TestProxy::serving(p).await;
    (a, b, proxy)
}

#[tokio::test]
async fn round_robin_is_exact() {
    let (_a, _b, proxy) = two(Algorithm::RoundRobin).await;
    let t = Client::new(proxy.addr).tally(3000, "x.test", "/").await;
    // Smooth WRR over a 3-entry period: exactly 1000 and 2000.
    assert_eq!((t["a"], t["b"]), (1000, 2000), "{t:?}");
}

/// For weights 1:2 over n = 3000, a's count is Binomial(3000, 1/3):
/// mean 1000, sd ≈ 25.8. We allow ±130 (5 sd): a false failure has
/// probability below 1e-6.
fn within_binomial(a: usize) -> bool {
    (a as i64 - 1000).abs() <= 130
}

#[tokio::test]
async fn random_honours_weights() {
    let (_a, _b, proxy) = two(Algorithm::Random).await;
    let t = Client::new(proxy.addr).tally(3000, "x.test", "/").await;
    assert!(within_binomial(t["a"]) && t["a"] + t["b"] == 3000, "{t:?}");
}

#[tokio::test]
async fn least_request_honours_weights() {
    // Sequential requests leave in-flight at 0, so every pick is a tie and
    // the first weighted-random candidate wins: the same binomial bound.
    let (_a, _b, proxy) = two(Algorithm::LeastRequest).await;
    let t = Client::new(proxy.addr).tally(3000, "x.test", "/").await;
    assert!(within_binomial(t["a"]) && t["a"] + t["b"] == 3000, "{t:?}");
}

#[tokio::test]
async fn first_takes_the_first_available() {
    let (a, b, proxy) = two(Algorithm::First).await;
    let c = Client::new(proxy.addr);
    assert_eq!(c.tally(20, "x.test", "/").await["a"], 20);
    assert_eq!((a.hits(), b.hits()), (20, 0));
}

fn hash_pool(name: &str, addrs: &[std::net::SocketAddr]) -> Pool {
    let mut p = pool(name, addrs);
    p.algorithm = Algorithm::Hash(HashPolicy {
        key: HashKey::Header("x-user".parse().unwrap()),
        on_missing: MissingKey::HashEmpty,
    });
    p
}

async fn owners(c: &Client, keys: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(keys);
    for k in 0..keys {
        let r = c
            .send(
                c.request(Method::GET, "x.test", "/")
                    .header("x-user", format!("user-{k}")),
                "",
            )
            .await;
        out.push(r.backend().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn hash_is_sticky_and_consistent() {
    let mut bs = Vec::new();
    for n in ["a", "b", "c", "d"] {
        bs.push(Backend::start(n).await);
    }
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let snap = |n: usize| {
        SnapshotBuilder::new()
            .pool(hash_pool("p", &addrs[..n]))
            .catch_all("p")
            .build()
    };
    let proxy = TestProxy::start(snap(3)).await;
    let c = Client::new(proxy.addr);

    let one = c
        .send(
            c.request(Method::GET, "x.test", "/")
                .header("x-user", "alice"),
            "",
        )
        .await;
    for _ in 0..20 {
        let again = c
            .send(
                c.request(Method::GET, "x.test", "/")
                    .header("x-user", "alice"),
                "",
            )
            .await;
        assert_eq!(again.backend(), one.backend());
    }

    let before = owners(&c, 1000).await;
    for n in ["a", "b", "c"] {
        let share = before.iter().filter(|o| *o == n).count();
        // 160 vnodes per backend keep each share near 1/3; a loose sanity bound.
        assert!((200..=470).contains(&share), "{n}: {share}");
    }
    proxy.swap(snap(4));
    let after = owners(&c, 1000).await;
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    // Ideal is 1000/4 = 250 keys, all of them to the new backend.
    assert!(moved < 500, "{moved} keys moved");
    assert!(before.iter().zip(&after).all(|(x, y)| x == y || y == "d"));
}

#[tokio::test]
async fn hash_missing_key_policies() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = hash_pool("p", &[a.addr, b.addr]);
    let proxy = TestProxy::serving(p.clone()).await;
    let c = Client::new(proxy.addr);
    // Without the header every request hashes the empty key: one backend.
    assert_eq!(c.tally(50, "x.test", "/").await.len(), 1);

    if let Algorithm::Hash(h) = &mut p.algorithm {
        h.on_missing = MissingKey::Random;
    }
    proxy.swap(SnapshotBuilder::new().pool(p).catch_all("p").build());
    let t = c.tally(200, "x.test", "/").await;
    // P(all 200 on one backend) = 2^-199.
    assert_eq!(t.len(), 2, "{t:?}");
}
