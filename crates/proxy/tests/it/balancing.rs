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
    // A header sent empty is no key either (as HAProxy's hdr() takes
    // it): a client that always sends `x-user:` must not pin a backend.
    let mut t = std::collections::HashMap::new();
    for _ in 0..200 {
        let r = c
            .send(
                c.request(Method::GET, "x.test", "/").header("x-user", ""),
                "",
            )
            .await;
        *t.entry(r.body).or_insert(0) += 1;
    }
    assert_eq!(t.len(), 2, "{t:?}");
}

/// `header:host` hashes the host the request names on every protocol:
/// HTTP/2 sends it as `:authority`, with no Host header, so every HTTP/2
/// request used to hash as keyless, all on one backend (incident 4's
/// skew). Each host lands where it lands over HTTP/1.1.
#[tokio::test]
async fn hash_on_host_is_the_same_over_http2() {
    use crate::edge::{frame, frames_until, h2c_open};
    use tokio::io::AsyncWriteExt;
    let mut bs = Vec::new();
    for n in ["a", "b", "c"] {
        bs.push(Backend::start(n).await);
    }
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mut p = pool("p", &addrs);
    p.algorithm = Algorithm::Hash(HashPolicy {
        key: HashKey::Header(http::header::HOST),
        on_missing: MissingKey::HashEmpty,
    });
    let proxy = TestProxy::start(SnapshotBuilder::new().pool(p).catch_all("p").build()).await;
    let h1 = Client::new(proxy.addr);
    let mut h2 = h2c_open(proxy.addr).await;
    let hits = || bs.iter().map(|b| b.hits()).collect::<Vec<_>>();
    let mut owners = std::collections::HashSet::new();
    for (k, stream) in (0..8u32).zip((1..).step_by(2)) {
        let host = format!("h{k}.test");
        let over_h1 = h1.get(&host, "/").await.backend().unwrap().to_owned();
        // GET http://{host}/: static :method GET, :scheme http, :path /,
        // and a literal :authority.
        let mut block = vec![0x82, 0x86, 0x84, 0x41, host.len() as u8];
        block.extend_from_slice(host.as_bytes());
        let before = hits();
        h2.write_all(&frame(1, 0x5, stream, &block)).await.unwrap();
        frames_until(&mut h2, |kind, id| kind == 1 && id == stream)
            .await
            .expect("a response");
        let after = hits();
        let over_h2 = (0..3).find(|&i| after[i] > before[i]).unwrap();
        assert_eq!(
            ["a", "b", "c"][over_h2],
            over_h1,
            "{host}: HTTP/2 went elsewhere"
        );
        owners.insert(over_h1);
    }
    assert!(owners.len() > 1, "every host on one backend: {owners:?}");
}
