//! Slow clients tried as an attacker would (slowhttptest's slow read and
//! slow body): a client that stops reading its response, over HTTP/1.1
//! and HTTP/2, and one that sends its body a piece now and then, each
//! within `body_timeout`. None may hold its connection, a backend
//! connection and an in-flight count for as long as it likes.

use std::time::Duration;

use fulcrum_testkit::{
    Backend, Mode, RawBackend, RawReply, SnapshotBuilder, TestProxy, eventually, pool,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{PATIENCE, read_until};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A response far larger than every socket buffer between the proxy and
/// a client that does not read.
fn huge_reply() -> Vec<u8> {
    let n = 32 * 1024 * 1024;
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    r.resize(r.len() + n, b'x');
    r
}

async fn proxy_to(
    addr: std::net::SocketAddr,
    f: impl FnOnce(&mut fulcrum_config::snapshot::Listener),
) -> TestProxy {
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[addr]))
        .catch_all("p")
        .listener(f)
        .build();
    TestProxy::start(snap).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let reply = huge_reply();
    let b = RawBackend::start(move |_| RawReply::Send(reply.clone())).await;
    let proxy = proxy_to(b.addr, |l| l.send_timeout = MS(300)).await;
    // A 4 KiB receive window, and never a read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(PATIENCE, || proxy.plane.counters().client_send_timeout == 1).await,
        "a client that reads nothing still holds its connection"
    );
    // Its backend connection and in-flight count went with it.
    assert!(eventually(PATIENCE, || proxy.plane.backends()[0].in_flight == 0).await);
    let mut buf = vec![0u8; 1 << 20];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, closed)
        .await
        .expect("the connection was closed");
}

#[tokio::test]
async fn a_client_that_reads_along_is_never_cut_off() {
    let reply = huge_reply();
    let b = RawBackend::start(move |_| RawReply::Send(reply.clone())).await;
    let proxy = proxy_to(b.addr, |l| l.send_timeout = MS(300)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while total < 32 * 1024 * 1024 {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("stalled")
            .unwrap();
        assert!(n > 0, "closed after {total} bytes");
        total += n;
    }
    assert_eq!(proxy.plane.counters().client_send_timeout, 0);
}

#[tokio::test]
async fn an_h2_client_that_lets_no_stream_move_is_cut_off_after_the_send_timeout() {
    let reply = huge_reply();
    let b = RawBackend::start(move |_| RawReply::Send(reply.clone())).await;
    let proxy = proxy_to(b.addr, |l| l.send_timeout = MS(300)).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Never releases flow-control capacity: the proxy can send 64 KiB per
    // stream, then must wait on the client.
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get("http://x.test/big").body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(PATIENCE, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    assert!(
        eventually(PATIENCE, || proxy.plane.counters().client_send_timeout == 1).await,
        "an HTTP/2 client with stalled streams still holds its connection"
    );
    assert!(eventually(PATIENCE, || proxy.plane.backends()[0].in_flight == 0).await);
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(ended.is_ok(), "the connection is still open");
}

#[tokio::test]
async fn a_body_sent_a_piece_now_and_then_is_cut_off_by_the_minimum_rate() {
    let b = RawBackend::start(|_| {
        RawReply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec())
    })
    .await;
    let proxy = proxy_to(b.addr, |l| {
        l.body_timeout = MS(300);
        l.min_body_rate = 100;
    })
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // A byte every 50 ms: each piece well within `body_timeout`, the
    // whole at 20 bytes a second, a fifth of the minimum.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..200 {
        tokio::time::sleep(MS(50)).await;
        if s.write_all(b"x").await.is_err() {
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(MS(1), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert_eq!(proxy.plane.counters().client_body_timeout, 1);
}

#[tokio::test]
async fn a_slow_body_above_the_minimum_rate_goes_through() {
    let b = Backend::start("a").await;
    b.set_mode(Mode::Echo);
    let proxy = proxy_to(b.addr, |l| {
        l.body_timeout = MS(300);
        l.min_body_rate = 100;
    })
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // 20 bytes every 100 ms: 200 bytes a second.
    for _ in 0..5 {
        tokio::time::sleep(MS(100)).await;
        s.write_all(&[b'y'; 20]).await.unwrap();
    }
    let got = read_until(&mut s, |got| got.ends_with(&[b'y'; 100])).await;
    assert!(got.starts_with(b"HTTP/1.1 200 "));
}
