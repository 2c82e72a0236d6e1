//! Every timeout fires and ends the request or connection the right way.

use std::time::Duration;

use fulcrum_testkit::{
    Backend, Blackhole, Client, Mode, SnapshotBuilder, TestProxy, eventually, pool,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{PATIENCE, raw_until_closed};

#[tokio::test]
async fn response_timeout_is_504_naming_pool_and_backend() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Hang);
    let mut p = pool("slow", &[a.addr]);
    p.retries.attempts = 2; // a timeout must not be retried
    let proxy = TestProxy::serving(p).await;
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
    let proxy = TestProxy::serving(p).await;
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

/// Sends one GET on `s` and reads its response head and body (the test
/// backends answer with a Content-Length); returns the status line.
async fn get_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text.lines().next().unwrap().to_owned();
            }
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_parks_and_serves_its_next_request() {
    let a = Backend::start("a").await;
    // Parks after half the idle timeout.
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener_timeouts(Duration::from_secs(30), Duration::from_millis(400))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for parked in 1..=2 {
        assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200"));
        assert!(
            eventually(PATIENCE, || proxy.plane.counters().client_parked == parked).await,
            "the idle connection was not parked"
        );
    }
    // Parked, it still closes at the idle timeout.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("a parked connection outlived its idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(proxy.plane.counters().client_idle_closed, 1);
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn the_next_head_on_a_keep_alive_connection_has_the_header_deadline() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener_timeouts(Duration::from_millis(300), Duration::from_secs(30))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200"));
    // Straight after the response, before the connection could park.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n")
        .await
        .unwrap();
    let closed = crate::trickle_until_closed(&mut s).await;
    assert!(closed, "a trickling client kept its connection for 5 s");
    assert_eq!(a.hits(), 1);
    assert_eq!(proxy.plane.counters().client_header_timeout, 1);
}

#[tokio::test]
async fn a_parked_connection_keeps_the_header_deadline() {
    let a = Backend::start("a").await;
    // Parks after 400 ms idle; the next head is due 600 ms after the last
    // response, parked or not.
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener_timeouts(Duration::from_millis(600), Duration::from_millis(800))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200"));
    assert!(eventually(PATIENCE, || proxy.plane.counters().client_parked == 1).await);
    // A slowloris head after the park.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n").await;
    let closed = crate::trickle_until_closed(&mut s).await;
    assert!(
        closed,
        "a trickling client kept a parked connection for 5 s"
    );
    assert_eq!(a.hits(), 1);
}
