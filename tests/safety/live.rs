//! The simulator is the data plane's balancer: shares simulated by
//! `fulcrum-safety` over a request sample equal the shares measured by
//! sending the same sample through a live in-process proxy on the same
//! config to real backends.

use std::collections::HashMap;
use std::net::IpAddr;

use fulcrum_config::standards::TrafficSpec;
use fulcrum_safety::simulate::pool_shares;
use fulcrum_safety::traffic::SampleRequest;
use fulcrum_testkit::{Backend, Client, TestProxy};
use http::{HeaderMap, Method};

/// Send `n` requests, request `i` with `x-user: u{i}`, through a live proxy
/// on `pool` (algorithm line given) and through the simulator; return the
/// per-backend counts of both, by address.
async fn both(algorithm: &str, weights: [u32; 3], n: usize) -> (Vec<u64>, Vec<u64>) {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let list: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("{{ addr = \"{}\", weight = {w} }}", b.addr))
        .collect();
    let src = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\npool = \"p\"\n[pool.p]\n{algorithm}\nbackends = [{}]\n",
        list.join(", ")
    );
    let checked = fulcrum_config::check("live.toml", &src);
    let snapshot = checked
        .snapshot
        .unwrap_or_else(|| panic!("{:#?}", checked.diagnostics));

    let sample: Vec<SampleRequest> = (0..n)
        .map(|i| {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", format!("u{i}").parse().unwrap());
            SampleRequest {
                method: Method::GET,
                host: Some("app.example.com".into()),
                path: "/".into(),
                headers,
                client_ip: IpAddr::from([127, 0, 0, 1]),
                duration_ms: None,
                status: None,
            }
        })
        .collect();
    // Requests are sent one at a time, so none is in flight at a pick:
    // the model's concurrency is 0 to match.
    let spec = TrafficSpec {
        concurrency: 0,
        ..TrafficSpec::default()
    };
    let simulated: Vec<u64> = pool_shares(&snapshot.pools[0], &sample, &spec)
        .backends
        .iter()
        .map(|b| b.requests)
        .collect();

    let proxy = TestProxy::start(snapshot).await;
    let client = Client::new(proxy.addr);
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for r in &sample {
        let req = client
            .request(Method::GET, "app.example.com", "/")
            .header("x-user", r.headers["x-user"].clone());
        let reply = client.send(req, "").await;
        assert_eq!(reply.status, 200);
        *by_name
            .entry(reply.backend().unwrap().to_owned())
            .or_default() += 1;
    }
    let live = backends
        .iter()
        .map(|b| by_name.get(b.name()).copied().unwrap_or(0))
        .collect();
    (simulated, live)
}

#[tokio::test]
async fn hash_shares_match_the_live_proxy_exactly() {
    // Deterministic per request: tolerance 0.
    let (sim, live) = both(
        "algorithm = \"hash\"\nhash = { key = \"header:x-user\" }",
        [2, 1, 1],
        400,
    )
    .await;
    assert_eq!(sim, live);
    assert!(sim.iter().all(|&c| c > 0), "{sim:?}");
}

#[tokio::test]
async fn round_robin_shares_match_the_live_proxy_exactly() {
    // A fresh smooth round-robin schedule: tolerance 0.
    let (sim, live) = both("algorithm = \"round_robin\"", [3, 1, 1], 250).await;
    assert_eq!(sim, live);
    assert_eq!(sim, [150, 50, 50]);
}

#[tokio::test]
async fn random_shares_match_the_live_proxy_within_sampling_error() {
    // Different RNG streams, same distribution: each count is binomial
    // (n = 1000, p = 1/2 or 1/4), sd ≤ 15.8; the difference of two has
    // sd ≤ 22.4. Allow 5 sd: 112 requests.
    let (sim, live) = both("algorithm = \"random\"", [2, 1, 1], 1000).await;
    for (s, l) in sim.iter().zip(&live) {
        assert!(
            (*s as i64 - *l as i64).abs() <= 112,
            "simulated {sim:?} live {live:?}"
        );
    }
}
