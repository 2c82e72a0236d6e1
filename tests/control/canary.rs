//! Canaries: a share of clients (by address) on the new config, each
//! client pinned to one side; promoted after the bake time, or dropped at
//! once by a rollback; refused when a few addresses would give it far more
//! than its share of requests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use fulcrum_testkit::Backend;

use super::{Lb, config, get_from};

/// 127.0.0.`i`: Linux routes all of 127.0.0.0/8 to loopback, so each is a
/// distinct client address.
fn client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_serves_its_share_of_clients_each_pinned_and_a_rollback_drops_it() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[old.addr], web.addr, ""));
    let v2 = config(&[new.addr], web.addr, "");
    let (status, report) = lb.json("POST", "/config?canary=0.3&bake=10m", &v2).await;
    assert_eq!(status, 202, "{report}");
    assert_eq!(report["outcome"], "staged");

    let clients = 200u8;
    let mut on_canary = 0;
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    for i in 2..2 + clients {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(
                get_from(lb.served.addr, "/auth/login", Some(client(i)))
                    .await
                    .1,
            );
        }
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "client {i} moved sides: {seen:?}"
        );
        on_canary += (seen[0] == "new") as u32;
        *answers.entry(seen[0].clone()).or_default() += 1;
    }
    // A healthy canary: the guard has nothing to say of it.
    let events = lb.events().await;
    let guard: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "alert" || e["actor"] == "guard")
        .collect();
    assert!(guard.is_empty(), "false alarm: {guard:#?}");
    // 200 clients at p = 0.3: σ ≈ 0.032, so ±4σ is 0.17 to 0.43.
    let share = on_canary as f64 / clients as f64;
    assert!(
        (0.17..=0.43).contains(&share),
        "canary share {share}; clients by answer: {answers:?}"
    );

    let (_, status) = lb.json("GET", "/status", "").await;
    assert_eq!(status["canary"]["version"]["number"], 2);
    assert_eq!(status["canary"]["fraction"], 0.3);

    // A rollback during the bake drops the canary at once.
    let (code, body) = lb
        .json("POST", "/rollback?reason=canary%20looks%20wrong", "")
        .await;
    assert_eq!(code, 200, "{body}");
    for i in 2..2 + clients {
        assert_eq!(
            get_from(lb.served.addr, "/auth/login", Some(client(i)))
                .await
                .1,
            "old"
        );
    }
    let (_, status) = lb.json("GET", "/status", "").await;
    assert!(status["canary"].is_null());
    assert_eq!(status["version"]["number"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_promoted_when_its_bake_time_is_over() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[old.addr], web.addr, ""));
    let v2 = lb.file("v2.toml", &config(&[new.addr], web.addr, ""));
    let out = lb.cli(&[
        "apply",
        v2.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "300ms",
    ]);
    let text = super::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", super::stderr(&out));
    assert!(text.contains("staged: v2"), "{text}");
    assert!(text.contains("promoted: v2 serves every request"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.get("/auth/login").await.1 != "new" {
        assert!(Instant::now() < deadline, "v2 serves after promotion");
    }
    let kinds: Vec<String> = lb
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    let staged = kinds.iter().position(|k| k == "staged").expect("staged");
    let promoted = kinds
        .iter()
        .rposition(|k| k == "promoted")
        .expect("promoted");
    assert!(staged < promoted, "{kinds:?}");
}

/// Clients are split by address. When one address sent every recent
/// request (a CDN or another balancer in front), a canary takes every
/// request or none: the first is refused (a "10%" canary of a bad change
/// serving everyone), the second is warned of (its bake judges nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_few_client_addresses_would_skew_is_refused_or_warned_of() {
    let (old, new, web) = (
        Backend::start("old").await,
        Backend::start("new").await,
        Backend::start("web").await,
    );
    let lb = Lb::start(&config(&[old.addr], web.addr, ""));
    // One client address, low in the cohort order: a canary of slightly
    // more than its place takes it, and with it every request.
    let place = |ip: IpAddr| fulcrum_proxy::cohort_hash(ip) as f64 / u64::MAX as f64;
    let (ip, p) = (2..=250)
        .map(|i| (client(i), place(client(i))))
        .find(|(_, p)| (0.02..0.3).contains(p))
        .expect("some address places low");
    for _ in 0..10 {
        assert_eq!(get_from(lb.served.addr, "/auth/x", Some(ip)).await.0, 200);
    }
    let v2 = config(&[new.addr], web.addr, "");
    let all = format!("/config?canary={}&bake=10m", p + 0.01);
    let (status, report) = lb.json("POST", &all, &v2).await;
    assert_eq!(status, 422, "{report:#}");
    assert!(
        report["refusals"]
            .to_string()
            .contains("100.0% of 10 recent requests"),
        "{report:#}"
    );
    let none = format!("/config?canary={}&bake=10m", p / 2.0);
    let (status, report) = lb.json("POST", &none, &v2).await;
    assert_eq!(status, 202, "{report:#}");
    assert!(
        report["warnings"]
            .to_string()
            .contains("would judge nothing"),
        "{report:#}"
    );
}
