//! The HTTP/1.1 codec's edges, with raw bytes both ways: what a client
//! sends, the status it gets, and exactly what a backend received (a
//! [`RawBackend`] records it byte for byte).

use fulcrum_testkit::{RawBackend, RawReply, TestProxy, pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{PATIENCE, raw_until_closed};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A backend answering every request with `200 ok`, and a proxy before it.
async fn recorded() -> (RawBackend, TestProxy) {
    let b = RawBackend::start(|_| RawReply::Send(OK.to_vec())).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    (b, proxy)
}

/// Sends `bytes`, reads until the proxy closes; the status and the text.
async fn exchange_closed(proxy: &TestProxy, bytes: &[u8]) -> (u16, String) {
    let got = raw_until_closed(proxy.addr, bytes)
        .await
        .unwrap_or_else(|| panic!("left open after {:?}", String::from_utf8_lossy(bytes)));
    let text = String::from_utf8_lossy(&got).into_owned();
    (status_of(&text), text)
}

fn status_of(text: &str) -> u16 {
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Sends one request on a fresh connection and reads one response with a
/// Content-Length body; the connection stays open.
async fn exchange(proxy: &TestProxy, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if got.len() >= end + 4 + len {
                let text = String::from_utf8_lossy(&got).into_owned();
                return (status_of(&text), text);
            }
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

// ---- one framing decision ----

#[tokio::test]
async fn content_length_with_leading_zeros_is_read_as_its_number() {
    let (b, proxy) = recorded().await;
    let (status, _) = exchange(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 00000000000000000005\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200);
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("content-length"), ["5"]);
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test]
async fn content_length_past_u64_is_413_and_never_reaches_a_backend() {
    let (b, proxy) = recorded().await;
    for length in ["18446744073709551616", "99999999999999999999999999"] {
        let req =
            format!("POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: {length}\r\n\r\nhello");
        let (status, text) = exchange_closed(&proxy, req.as_bytes()).await;
        assert_eq!(status, 413, "{length}: {text}");
    }
    assert!(b.seen().is_empty());
    assert_eq!(proxy.plane.counters().client_body_too_large, 2);
}

// ---- Host ----

#[tokio::test]
async fn an_http11_request_without_a_valid_host_is_400() {
    let (b, proxy) = recorded().await;
    let heads = [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a/b?c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \u{e9}.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n",
        "GET http://a@b/ HTTP/1.1\r\nHost: a@b\r\n\r\n",
        "GET http://x.test/ HTTP/1.1\r\n\r\n",
    ];
    for head in heads {
        let (status, text) = exchange_closed(&proxy, head.as_bytes()).await;
        assert_eq!(status, 400, "{head:?}: {text}");
    }
    assert!(b.seen().is_empty(), "{:?}", b.seen());
    assert_eq!(
        proxy.plane.counters().client_bad_request,
        heads.len() as u64
    );
}

#[tokio::test]
async fn http10_without_host_names_the_backend() {
    let (b, proxy) = recorded().await;
    let (status, _) = exchange_closed(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(b.seen()[0].header("host"), [b.addr.to_string()]);
    assert!(b.seen()[0].header("x-forwarded-host").is_empty());
}

#[tokio::test]
async fn connection_never_names_host_or_routing_headers_away() {
    use fulcrum_config::snapshot::{HeaderMatch, HeaderValueMatch, RouteMatch};
    let b = RawBackend::start(|_| RawReply::Send(OK.to_vec())).await;
    let tenant = RouteMatch {
        headers: vec![HeaderMatch {
            name: http::HeaderName::from_static("x-tenant"),
            value: HeaderValueMatch::Present,
        }],
        ..RouteMatch::default()
    };
    let snap = fulcrum_testkit::SnapshotBuilder::new()
        .pool(pool("p", &[b.addr]))
        .route("tenant", tenant, "p")
        .build();
    let proxy = TestProxy::start(snap).await;
    let (status, _) = exchange(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: a.test:8080\r\nX-Tenant: blue\r\nX-Private: p\r\n\
          Connection: Host, X-Tenant, X-Private\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = &b.seen()[0];
    assert_eq!(seen.header("host"), ["a.test:8080"]);
    assert_eq!(seen.header("x-tenant"), ["blue"]);
    assert!(seen.header("x-private").is_empty(), "{}", seen.head);
    assert!(seen.header("connection").is_empty(), "{}", seen.head);
    assert_eq!(seen.header("x-forwarded-host"), ["a.test:8080"]);
}

#[tokio::test]
async fn connect_is_501_and_never_reaches_a_backend() {
    let (b, proxy) = recorded().await;
    let (status, text) = exchange_closed(
        &proxy,
        b"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n\x16\x03\x01",
    )
    .await;
    assert_eq!(status, 501, "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn h2_authority_and_host_are_validated_the_same_way() {
    let (b, proxy) = recorded().await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = async |uri: &str, host: Option<&str>| {
        let mut req = http::Request::get(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let (resp, _) = h2.send_request(req.body(()).unwrap(), true).unwrap();
        resp.await.unwrap().status().as_u16()
    };
    assert_eq!(send("http://a@b/", None).await, 400);
    assert_eq!(send("http://x.test/", Some("a/b?c")).await, 400);
    assert_eq!(send("http://x.test/", Some("")).await, 400);
    assert!(b.seen().is_empty());
    assert_eq!(send("http://x.test:8080/", None).await, 200);
    let seen = &b.seen()[0];
    assert_eq!(seen.header("host"), ["x.test:8080"]);
    assert_eq!(seen.header("x-forwarded-host"), ["x.test:8080"]);
}
