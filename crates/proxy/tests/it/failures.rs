//! Backends failing: active health, passive ejection, panic mode, retries.

use std::time::Duration;

use fulcrum_config::snapshot::{Algorithm, Outlier};
use fulcrum_testkit::{Backend, Client, Mode, TestProxy, eventually, health_check, pool};
use http::Method;

use crate::PATIENCE;

#[tokio::test]
async fn active_health_takes_a_killed_backend_out_and_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.health = Some(health_check());
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", b.addr).unwrap();
    let c = Client::new(proxy.addr);

    b.kill();
    assert!(
        eventually(PATIENCE, || !state.is_healthy()).await,
        "b never marked down"
    );
    assert_eq!(c.tally(20, "x.test", "/").await["a"], 20);

    b.restart().await;
    assert!(
        eventually(PATIENCE, || state.is_healthy()).await,
        "b never back up"
    );
    let t = c.tally(20, "x.test", "/").await;
    assert_eq!((t["a"], t["b"]), (10, 10));
}

#[tokio::test]
async fn failing_health_check_alone_marks_down() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.health = Some(health_check());
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", b.addr).unwrap();
    b.fail_health(true);
    assert!(eventually(PATIENCE, || !state.is_healthy()).await);
    assert_eq!(
        Client::new(proxy.addr).tally(10, "x.test", "/").await["a"],
        10
    );
    assert_eq!(b.hits(), 0);
}

fn outlier() -> Outlier {
    Outlier {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(200),
        max_ejection: Duration::from_secs(2),
        max_ejected_fraction: 0.5,
    }
}

#[tokio::test]
async fn passive_ejection_of_a_killed_backend_and_readmission() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.outlier = Some(outlier());
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", b.addr).unwrap();
    let c = Client::new(proxy.addr);

    b.kill();
    // Round robin alternates: b's 3rd connect failure is the 6th request.
    let t = c.tally(6, "x.test", "/").await;
    assert_eq!(t["status 502"], 3, "{t:?}");
    assert!(state.is_ejected());
    assert_eq!(state.failures(), 3);
    assert_eq!(
        c.tally(10, "x.test", "/").await["a"],
        10,
        "ejected b gets nothing"
    );

    b.restart().await;
    assert!(
        eventually(PATIENCE, || !state.is_ejected()).await,
        "never re-admitted"
    );
    let t = c.tally(10, "x.test", "/").await;
    assert_eq!((t["a"], t["b"]), (5, 5));
}

#[tokio::test]
async fn passive_ejection_on_5xx_respects_max_fraction() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.outlier = Some(outlier());
    let proxy = TestProxy::serving(p).await;
    let c = Client::new(proxy.addr);
    a.set_mode(Mode::Status(500));
    b.set_mode(Mode::Status(503));
    let t = c.tally(20, "x.test", "/").await;
    assert_eq!(t.values().sum::<usize>(), 20);
    let ejected = proxy.plane.backends().iter().filter(|s| s.ejected).count();
    // max_ejected_fraction 0.5 of 2 backends: only one may go.
    assert_eq!(ejected, 1, "{:?}", proxy.plane.backends());
}

#[tokio::test]
async fn panic_mode_spreads_over_all_backends() {
    let mut bs = Vec::new();
    for n in ["a", "b", "c"] {
        bs.push(Backend::start(n).await);
    }
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mut p = pool("p", &addrs);
    p.health = Some(health_check());
    p.panic_threshold = 0.5;
    let proxy = TestProxy::serving(p).await;
    let c = Client::new(proxy.addr);
    bs[1].fail_health(true);
    bs[2].fail_health(true);
    let plane = proxy.plane.clone();
    assert!(
        eventually(PATIENCE, || plane
            .backends()
            .iter()
            .filter(|s| !s.healthy)
            .count()
            == 2)
        .await
    );
    // 1 of 3 healthy < 0.5: traffic goes to all three, and the flag says so.
    let t = c.tally(30, "x.test", "/").await;
    assert_eq!((t["a"], t["b"], t["c"]), (10, 10, 10), "{t:?}");
    assert!(proxy.plane.panicking("p"));

    bs[1].fail_health(false);
    assert!(
        eventually(PATIENCE, || plane
            .backends()
            .iter()
            .filter(|s| s.healthy)
            .count()
            == 2)
        .await
    );
    let t = c.tally(10, "x.test", "/").await;
    assert!(!t.contains_key("c"), "{t:?}");
    assert!(!proxy.plane.panicking("p"));
}

#[tokio::test]
async fn no_healthy_backend_is_503_naming_the_pool() {
    let a = Backend::start("a").await;
    let mut p = pool("auth", &[a.addr]);
    p.health = Some(health_check());
    let proxy = TestProxy::serving(p).await;
    a.fail_health(true);
    let plane = proxy.plane.clone();
    assert!(eventually(PATIENCE, || !plane.backends()[0].healthy).await);
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "503 Service Unavailable: pool \"auth\" has no healthy backend (1 of 1 down)\n"
    );
}

/// Pool [failing, good] with `first`, so the first attempt always goes to
/// the failing backend and a retry can only go to the good one.
async fn retry_setup(mode: Mode) -> (Backend, Backend, TestProxy) {
    let bad = Backend::start("bad").await;
    let good = Backend::start("good").await;
    bad.set_mode(mode);
    let mut p = pool("p", &[bad.addr, good.addr]);
    p.algorithm = Algorithm::First;
    p.retries.attempts = 2;
    let proxy = TestProxy::serving(p).await;
    (bad, good, proxy)
}

#[tokio::test]
async fn post_to_a_resetting_backend_is_never_retried() {
    let (bad, good, proxy) = retry_setup(Mode::Reset).await;
    let c = Client::new(proxy.addr);
    let r = c
        .send(c.request(Method::POST, "x.test", "/login"), "user=a")
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!((bad.hits(), good.hits()), (1, 0));
}

#[tokio::test]
async fn get_to_a_resetting_backend_is_retried_elsewhere() {
    let (bad, good, proxy) = retry_setup(Mode::Reset).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!((r.status, r.backend()), (200, Some("good")));
    assert_eq!((bad.hits(), good.hits()), (1, 1));
}

/// A pool of one backend (often a service address with more behind it)
/// that drops a fresh connection without a response: an idempotent
/// request goes to it again, as HAProxy retries on the same server; a POST
/// does not.
#[tokio::test]
async fn a_reset_on_the_only_backend_is_retried_on_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let b = fulcrum_testkit::RawBackend::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            fulcrum_testkit::RawReply::SendAndClose(Vec::new())
        } else {
            fulcrum_testkit::RawReply::Send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            )
        }
    })
    .await;
    let mut p = pool("p", &[b.addr]);
    p.retries.attempts = 1;
    let proxy = TestProxy::serving(p).await;
    let c = Client::new(proxy.addr);
    let r = c.get("x.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    assert_eq!(n.load(Ordering::SeqCst), 2);
    // The next attempt is the first of a pair again: a POST is not retried.
    let r = c
        .send(c.request(Method::POST, "x.test", "/login"), "user=a")
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(n.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connect_failure_is_retried_even_for_post() {
    let (bad, good, proxy) = retry_setup(Mode::Normal).await;
    bad.kill();
    let c = Client::new(proxy.addr);
    let r = c
        .send(c.request(Method::POST, "x.test", "/login"), "user=a")
        .await;
    assert_eq!((r.status, r.backend()), (200, Some("good")));
    assert_eq!(good.hits(), 1);
}

#[tokio::test]
async fn a_5xx_response_is_not_retried() {
    let (bad, good, proxy) = retry_setup(Mode::Status(500)).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!((r.status, r.backend()), (500, Some("bad")));
    assert_eq!(good.hits(), 0);
    drop(bad);
}

#[tokio::test]
async fn large_bodies_stream_and_are_not_retried() {
    let (bad, good, proxy) = retry_setup(Mode::Reset).await;
    let c = Client::new(proxy.addr);
    // PUT is idempotent, but 100 KiB is over the buffering limit.
    let r = c
        .send(
            c.request(Method::PUT, "x.test", "/big"),
            vec![b'x'; 100 * 1024],
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!((bad.hits(), good.hits()), (1, 0));
}

#[tokio::test]
async fn in_flight_counts_return_to_zero_after_every_outcome() {
    let a = Backend::start("a").await;
    let mut p = pool("p", &[a.addr]);
    p.retries.attempts = 1;
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", a.addr).unwrap();
    let c = Client::new(proxy.addr);
    for mode in [
        Mode::Normal,
        Mode::Status(503),
        Mode::Reset,
        Mode::CloseMidResponse,
        Mode::Trailers,
    ] {
        a.set_mode(mode.clone());
        let _ = c.get("x.test", "/").await;
        assert!(
            eventually(PATIENCE, || state.in_flight() == 0).await,
            "{mode:?} left {} in flight",
            state.in_flight()
        );
    }
    assert!(state.requests() >= 5);
}

/// The retry policy a pool gets when its config says nothing of it.
fn default_retries() -> fulcrum_config::snapshot::Retries {
    let src = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npool = \"p\"\n\n[pool.p]\nbackends = [{ addr = \"127.0.0.1:9\" }]\n";
    let snap = fulcrum_config::check("fulcrum.toml", src).snapshot.unwrap();
    snap.pools[0].retries.clone()
}

#[tokio::test]
async fn a_backend_killed_with_requests_in_flight_costs_no_idempotent_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    for x in [&a, &b] {
        x.set_mode(Mode::Delay(Duration::from_millis(300)));
    }
    let mut p = pool("p", &[a.addr, b.addr]);
    p.retries = default_retries();
    p.timeouts.response = Duration::from_secs(5);
    let proxy = TestProxy::serving(p).await;
    let c = Client::new(proxy.addr);
    // 20 GETs at once: 10 in flight on each backend when `a` dies.
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get("x.test", &format!("/{i}")).await })
        })
        .collect();
    // Every one of a's requests has reached it, and waits for its answer.
    assert!(eventually(PATIENCE, || a.hits() == 10).await);
    a.kill();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!((r.status, r.backend()), (200, Some("b")), "{}", r.body);
    }
    let c = proxy.plane.counters();
    assert_eq!(
        (c.backend_reset, c.retry_budget_exhausted),
        (10, 0),
        "{c:?}"
    );
}

#[tokio::test]
async fn passing_health_checks_end_an_ejection_before_its_time() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.health = Some(health_check());
    // Ejections far longer than the test: only the health check can end one.
    p.outlier = Some(Outlier {
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        ..outlier()
    });
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", a.addr).unwrap();
    let c = Client::new(proxy.addr);
    a.kill();
    for _ in 0..50 {
        if state.is_ejected() {
            break;
        }
        c.get("x.test", "/").await;
    }
    assert!(state.is_ejected(), "a never ejected");
    a.restart().await;
    assert!(
        eventually(PATIENCE, || state.is_healthy() && !state.is_ejected()).await,
        "a back, its health checks passing, and still ejected"
    );
    let t = c.tally(20, "x.test", "/").await;
    assert_eq!((t["a"], t["b"]), (10, 10));
}

/// With `slow_start`, a backend whose health checks pass again comes back
/// with a tenth of its weight's share, growing to all of it over the
/// window; without it (the test above), it takes its whole share at once.
#[tokio::test]
async fn slow_start_brings_a_recovered_backend_back_gradually() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.health = Some(health_check());
    p.slow_start = Some(Duration::from_secs(60));
    let proxy = TestProxy::serving(p).await;
    let state = proxy.plane.backend("p", b.addr).unwrap();
    let c = Client::new(proxy.addr);
    // At start every backend is warm.
    let t = c.tally(20, "x.test", "/").await;
    assert_eq!((t["a"], t["b"]), (10, 10));

    b.fail_health(true);
    assert!(eventually(PATIENCE, || !state.is_healthy()).await);
    b.fail_health(false);
    assert!(eventually(PATIENCE, || state.is_healthy()).await);
    // A few seconds into a minute: about a tenth of its share, 1 in 11.
    let t = c.tally(200, "x.test", "/").await;
    let back = t.get("b").copied().unwrap_or(0);
    assert!((1..50).contains(&back), "{t:?}");
}
