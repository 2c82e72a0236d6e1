//! The HTTP/1.1 backend pool: keep-alive connections are reused, a
//! connection whose response body was not read to the end is not, a
//! pooled connection the backend closed is not a failed request, and
//! connections idle past `timeouts.idle` or beyond `idle_per_backend` are
//! closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use fulcrum_testkit::{Client, TestProxy, eventually, pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::PATIENCE;

/// A keep-alive HTTP/1.1 backend that counts the connections it accepted
/// and those that were closed on it, and answers every request with
/// `body`. `Shape` bends that.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    KeepAlive,
    /// Close each connection after its first response, without saying so
    /// (no `Connection: close`).
    CloseAfterOne,
    /// On the first connection, send the head and half the body, then
    /// wait for the proxy to close it.
    FirstHalfBody,
    /// Keep-alive, each response 100 ms late, so requests overlap.
    Slow,
    /// Answer a connection's first request, then close it as its second
    /// arrives: a keep-alive timeout that fires as the request goes out.
    DropSecond,
}

struct CountingBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingBackend {
    async fn start(body: &'static [u8], shape: Shape) -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let first = a.fetch_add(1, SeqCst) == 0;
                let shape = match shape {
                    Shape::FirstHalfBody if !first => Shape::KeepAlive,
                    s => s,
                };
                let c = c.clone();
                tokio::spawn(async move {
                    serve(s, body, shape).await;
                    c.fetch_add(1, SeqCst);
                });
            }
        });
        CountingBackend {
            addr,
            accepted,
            closed,
        }
    }
}

/// Answers requests (heads only, no bodies) until the peer closes.
async fn serve(mut s: TcpStream, body: &[u8], shape: Shape) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut served = 0;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if shape == Shape::DropSecond && served == 1 {
                return;
            }
            served += 1;
            if shape == Shape::Slow {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let sent = match shape {
                Shape::FirstHalfBody => &body[..body.len() / 2],
                _ => body,
            };
            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(sent).await.is_err() {
                return;
            }
            if shape == Shape::CloseAfterOne {
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_backend_connection() {
    let b = CountingBackend::start(b"ok", Shape::KeepAlive).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let client = Client::new(proxy.addr);
    for _ in 0..5 {
        let r = client.get("x.test", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
    }
    assert_eq!(b.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_a_failure() {
    // Every connection ends after one response: each later request finds
    // its pooled connection closed and must go out on a new one, even a
    // POST, which may not be retried after it was sent.
    let b = CountingBackend::start(b"ok", Shape::CloseAfterOne).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let client = Client::new(proxy.addr);
    for _ in 0..3 {
        let r = client
            .send(client.request(http::Method::POST, "x.test", "/"), "x")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        // Let the proxy see the close before the next request.
        assert!(
            eventually(PATIENCE, || b.closed.load(SeqCst)
                == b.accepted.load(SeqCst))
            .await
        );
    }
    assert_eq!(b.accepted.load(SeqCst), 3);
}

#[tokio::test]
async fn a_response_body_not_read_to_the_end_does_not_go_back_to_the_pool() {
    let b = CountingBackend::start(b"0123456789", Shape::FirstHalfBody).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    // The client gives up on a body that stalls halfway: the rest of it
    // would still come on that backend connection, which must be closed
    // rather than reused.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = s.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    assert!(eventually(PATIENCE, || b.closed.load(SeqCst) == 1).await);
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "0123456789");
    assert_eq!(b.accepted.load(SeqCst), 2);
}

#[tokio::test]
async fn idle_backend_connections_are_closed_after_the_idle_timeout() {
    let b = CountingBackend::start(b"ok", Shape::KeepAlive).await;
    let mut p = pool("p", &[b.addr]);
    p.timeouts.idle = Duration::from_millis(100);
    let proxy = TestProxy::serving(p).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 200);
    assert!(
        eventually(PATIENCE, || b.closed.load(SeqCst) == 1).await,
        "the proxy kept an idle backend connection open"
    );
}

#[tokio::test]
async fn a_burst_keeps_at_most_idle_per_backend_connections() {
    let b = CountingBackend::start(b"ok", Shape::Slow).await;
    let mut p = pool("p", &[b.addr]);
    p.idle_per_backend = 2;
    let proxy = TestProxy::serving(p).await;
    let client = Client::new(proxy.addr);
    // Six requests at once need six backend connections.
    let replies = futures_util::future::join_all((0..6).map(|_| client.get("x.test", "/"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(b.accepted.load(SeqCst), 6);
    assert!(
        eventually(PATIENCE, || b.closed.load(SeqCst) == 4).await,
        "closed {} of 6 backend connections, want 4",
        b.closed.load(SeqCst)
    );
    // The two kept serve the next requests.
    for _ in 0..2 {
        assert_eq!(client.get("x.test", "/").await.status, 200);
    }
    assert_eq!(b.accepted.load(SeqCst), 6);
}

#[tokio::test]
async fn a_large_body_streams_through_both_ways() {
    let b = fulcrum_testkit::Backend::start("a").await;
    b.set_mode(fulcrum_testkit::Mode::Echo);
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let client = Client::new(proxy.addr);
    // Over the buffering limit: streamed to the backend, then back.
    for size in [1 << 20, 200 * 1024 + 7] {
        let r = client
            .send(
                client.request(http::Method::POST, "x.test", "/"),
                vec![b'x'; size],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), size);
    }
}

#[tokio::test]
async fn a_backend_answering_before_the_body_is_sent_is_heard() {
    // Answers as soon as it has the head, then reads (and drops) the rest.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nearly";
                if s.write_all(reply).await.is_err() {
                    return;
                }
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let proxy = TestProxy::serving(pool("p", &[addr])).await;
    let client = Client::new(proxy.addr);
    let r = client
        .send(
            client.request(http::Method::POST, "x.test", "/"),
            vec![b'x'; 4 << 20],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (413, "early"));
}

/// A backend that closes a pooled connection just as a request goes out
/// on it (its keep-alive timeout racing the request): no byte of a
/// response came, so an idempotent request is sent again on a new
/// connection, and succeeds (RFC 9112 §9.3.1). A POST is not: the backend
/// may have acted on it, and it gets 502.
#[tokio::test]
async fn a_pooled_connection_closed_as_the_request_goes_out_is_retried_once_if_idempotent() {
    let b = CountingBackend::start(b"ok", Shape::DropSecond).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let client = Client::new(proxy.addr);
    assert_eq!(client.get("x.test", "/").await.status, 200);
    let r = client.get("x.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(b.accepted.load(SeqCst), 2);
    let r = client
        .send(client.request(http::Method::POST, "x.test", "/"), "x")
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
}
