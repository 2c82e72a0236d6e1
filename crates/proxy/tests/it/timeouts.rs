//! Every timeout fires and ends the request or connection the right way.

use std::time::Duration;

use fulcrum_testkit::{Backend, Blackhole, Client, Mode, SnapshotBuilder, TestProxy, pool};

use crate::raw_until_closed;

#[tokio::test]
async fn response_timeout_is_504_naming_pool_and_backend() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Hang);
    let mut p = pool("slow", &[a.addr]);
    p.retries.attempts = 2; // a timeout must not be retried
    let proxy = TestProxy::start(SnapshotBuilder::new().pool(p).catch_all("slow").build()).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 504);
    assert!(
        r.body.contains("\"slow\"") && r.body.contains(&a.addr.to_string()),
        "{}",
        r.body
    );
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let hole = Blackhole::start().await;
    let mut p = pool("p", &[hole.addr]);
    // Shorter than the connect timeout: the response timeout only starts
    // once connected, so it must not be what fires here.
    p.timeouts.response = Duration::from_millis(50);
    let proxy = TestProxy::start(SnapshotBuilder::new().pool(p).catch_all("p").build()).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("connecting to backend"), "{}", r.body);
}

#[tokio::test]
async fn header_timeout_closes_a_slow_client() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener_timeouts(Duration::from_millis(200), Duration::from_secs(30))
        .build();
    let proxy = TestProxy::start(snap).await;
    let got = raw_until_closed(proxy.addr, b"GET / HTTP/1.1\r\nHost: x.test\r\n").await;
    assert!(
        got.is_some(),
        "connection with half a request head never closed"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener_timeouts(Duration::from_secs(30), Duration::from_millis(200))
        .build();
    let proxy = TestProxy::start(snap).await;
    let got = raw_until_closed(proxy.addr, b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .expect("idle connection never closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(a.hits(), 1);
}
