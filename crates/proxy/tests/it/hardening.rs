//! Hostile and broken clients, with raw bytes on real sockets: every
//! request-smuggling shape gets 400 and a closed connection, and never
//! reaches a backend if found in the head, nor a malformed byte of it if
//! found as a chunked body streams; every limit answers with its status;
//! slow clients are cut off; a backend dying mid-response never looks like
//! a whole response.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_testkit::{
    Backend, Client, Mode, RawBackend, RawReply, SnapshotBuilder, TestProxy, pool,
};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{PATIENCE, raw_until_closed};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async fn proxy_with(
    f: impl FnOnce(&mut fulcrum_config::snapshot::Listener),
) -> (Backend, TestProxy) {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(f)
        .build();
    (a, TestProxy::start(snap).await)
}

/// Sends `bytes`, expects `status` and then the connection closed.
async fn refused(proxy: &TestProxy, bytes: &[u8], status: u16) -> String {
    let got = raw_until_closed(proxy.addr, bytes)
        .await
        .unwrap_or_else(|| {
            panic!(
                "connection left open after {:?}",
                String::from_utf8_lossy(bytes)
            )
        });
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "{:?} got {text:?}",
        String::from_utf8_lossy(bytes)
    );
    // One response only: nothing after it was read as a second request.
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    text
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_a_closed_connection() {
    // A backend that records every byte it receives: the testkit's
    // `Backend` counts a request only once it has read its whole body, so
    // it could not see a head forwarded before a cut.
    let b = RawBackend::start(|_| RawReply::Send(OK.to_vec())).await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x.test\r\n\r\n";
    // Refused from the head alone: not a byte of these may reach a backend.
    let at_the_head: Vec<(&str, String)> = vec![
        (
            // They agree, but a backend that takes the last would not.
            "two equal Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two differing Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3, 3\r\n\r\nabc{smuggled}"),
        ),
        (
            "Content-Length with a sign",
            format!("POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: +3\r\n\r\nabc{smuggled}"),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: identity, chunked",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two Transfer-Encoding headers",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST / HTTP/1.0\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "whitespace before the colon",
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\nHost: x.test\r\nX-A: a\0b\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR in a header value",
            format!("GET / HTTP/1.1\r\nHost: x.test\r\nX-A: a\rb\r\n\r\n{smuggled}"),
        ),
        (
            "obsolete line folding",
            format!("GET / HTTP/1.1\r\nHost: x.test\r\nX-A: a\r\n b\r\n\r\n{smuggled}"),
        ),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\nHost: x.test\r\nHost: y.test\r\n\r\n{smuggled}"),
        ),
        (
            "Host differing from the absolute target",
            format!("GET http://y.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, bytes) in &at_the_head {
        let text = refused(&proxy, bytes.as_bytes(), 400).await;
        assert!(!text.contains("smuggled"), "{name}: {text}");
    }
    assert_eq!(
        b.seen().len(),
        0,
        "a shape refused at its head reached the backend: {:#?}",
        b.seen()
    );

    // A chunked body always streams, so a malformed chunk is found only
    // when it comes: the head and the data before it have gone to the
    // backend, and the exchange is cut there, as for a body over the size
    // limit. The proxy writes its own chunk framing, so what the backend
    // got is well-formed chunks without the last one (never a whole
    // body), and not a malformed byte. Each shape has its own path, so
    // what the backend recorded can be told apart whatever its order.
    let chunked = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}0\r\n\r\n{smuggled}"
        )
    };
    let long_size_line = format!("3\r\nabc\r\n{}\r\nabc\r\n", "1".repeat(5000));
    // (name, request, the body the backend must have received)
    let mid_stream: Vec<(&str, String, &str)> = vec![
        ("bad chunk size", chunked("/1", "zz\r\nabc\r\n"), ""),
        (
            "a chunk, then a negative chunk size",
            chunked("/2", "3\r\nabc\r\n-1\r\nabc\r\n"),
            "3\r\nabc\r\n",
        ),
        (
            "a chunk-size line over 4 KiB",
            chunked("/3", &long_size_line),
            "3\r\nabc\r\n",
        ),
        (
            // The data streams before the CRLF that must end it is read:
            // it reaches the backend in a chunk of the proxy's own, the
            // stray byte after it does not.
            "chunk data not followed by CRLF",
            chunked("/4", "3\r\nabc\r\n3\r\nabcd\r\n"),
            "3\r\nabc\r\n3\r\nabc\r\n",
        ),
    ];
    for (name, bytes, _) in &mid_stream {
        let text = refused(&proxy, bytes.as_bytes(), 400).await;
        assert!(!text.contains("smuggled"), "{name}: {text}");
    }
    // The backend records a request once its connection closes.
    fulcrum_testkit::eventually(PATIENCE, || b.seen().len() >= mid_stream.len()).await;
    let seen = b.seen();
    assert_eq!(seen.len(), mid_stream.len(), "{seen:#?}");
    for (i, (name, _, body)) in mid_stream.iter().enumerate() {
        let line = format!("POST /{} HTTP/1.1\r\n", i + 1);
        let got = seen
            .iter()
            .find(|r| r.head.starts_with(&line))
            .unwrap_or_else(|| panic!("{name}: the head never reached the backend: {seen:#?}"));
        assert_eq!(got.header("transfer-encoding"), ["chunked"], "{name}");
        assert_eq!(String::from_utf8_lossy(&got.body), *body, "{name}");
    }
    assert_eq!(
        proxy.plane.counters().client_bad_request,
        (at_the_head.len() + mid_stream.len()) as u64
    );
}

#[tokio::test]
async fn a_plain_chunked_request_still_works_and_is_reframed() {
    let (a, proxy) = proxy_with(|_| {}).await;
    a.set_mode(Mode::Echo);
    let got = raw_until_closed(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("abc") || text.contains("\r\n\r\nabc") || text.contains("3\r\nabc"),
        "{text}"
    );
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn header_limits_answer_431() {
    let (a, proxy) = proxy_with(|l| {
        l.limits.max_headers = 10;
        l.limits.max_header_bytes = 8192;
    })
    .await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x.test\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    refused(&proxy, many.as_bytes(), 431).await;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    refused(&proxy, big.as_bytes(), 431).await;
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.plane.counters().client_header_too_large, 2);
}

/// Over HTTP/2 the proxy's screen, not the h2 codec, refuses a head over
/// `max_header_bytes`, so the refusal is counted as over HTTP/1.1. h2
/// sizes a head with 32 bytes a field (RFC 9113 §6.5.2) where the screen
/// counts 4, so h2 is given more room than the limit: given the limit
/// itself, it would refuse such heads first, with a 431 no counter sees.
#[tokio::test]
async fn h2_header_over_the_limit_is_431_from_the_screen_and_counted() {
    let (a, proxy) = proxy_with(|l| {
        l.limits.max_headers = 10;
        l.limits.max_header_bytes = 8192;
    })
    .await;
    let client = Client::h2c(proxy.addr);
    let big = "a".repeat(9000);
    let r = client
        .send(
            client
                .request(Method::GET, "x.test", "/")
                .header("x-big", &big),
            "",
        )
        .await;
    assert_eq!(r.status, 431);
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.plane.counters().client_header_too_large, 1);
    // Eleven small fields (Host is one): over `max_headers`, by the screen too.
    let mut req = client.request(Method::GET, "x.test", "/");
    for i in 0..10 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_eq!(client.send(req, "").await.status, 431);
    assert_eq!(proxy.plane.counters().client_header_too_large, 2);
    // Past the room h2 is given (here 8192 + 8192 + 15 × 32 + 1024 bytes
    // as h2 sizes it) the codec refuses the head itself, and no counter
    // sees it: the one exception hardening.md names.
    let huge = "a".repeat(20_000);
    let r = client
        .send(
            client
                .request(Method::GET, "x.test", "/")
                .header("x-big", &huge),
            "",
        )
        .await;
    assert_eq!(r.status, 431);
    assert_eq!(proxy.plane.counters().client_header_too_large, 2);
    // The connection still serves: only those streams were refused.
    assert_eq!(client.get("x.test", "/").await.status, 200);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn long_uri_is_414() {
    let (a, proxy) = proxy_with(|l| l.limits.max_uri_bytes = 1024).await;
    let req = format!("GET /{} HTTP/1.1\r\nHost: x.test\r\n\r\n", "a".repeat(2000));
    refused(&proxy, req.as_bytes(), 414).await;
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.plane.counters().client_uri_too_long, 1);
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_streamed() {
    let (a, proxy) = proxy_with(|l| l.limits.max_body_bytes = 1000).await;
    // Declared: refused before any of it is read.
    refused(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5000\r\n\r\n",
        413,
    )
    .await;
    assert_eq!(a.hits(), 0);
    // Chunked: counted as it streams.
    let mut req =
        String::from("POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        req.push_str(&format!("1f4\r\n{}\r\n", "b".repeat(500)));
    }
    req.push_str("0\r\n\r\n");
    refused(&proxy, req.as_bytes(), 413).await;
    assert_eq!(proxy.plane.counters().client_body_too_large, 2);
}

#[tokio::test]
async fn slow_body_gets_408() {
    let (_a, proxy) = proxy_with(|l| l.body_timeout = Duration::from_millis(200)).await;
    // Declares 10 bytes, sends 3, then stalls.
    let got = raw_until_closed(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await
    .expect("stalled body never cut off");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(proxy.plane.counters().client_body_timeout, 1);

    // Streamed (chunked, so not buffered): the same.
    let got = raw_until_closed(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .expect("stalled chunked body never cut off");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_deadline_despite_trickling() {
    let (a, proxy) = proxy_with(|l| l.header_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n")
        .await
        .unwrap();
    let closed = crate::trickle_until_closed(&mut s).await;
    assert!(closed, "a trickling client kept the connection for 5 s");
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.plane.counters().client_header_timeout, 1);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    // Before any byte, the protocol is not even known (HTTP/1.1 or h2c):
    // the deadline still holds.
    let (_a, proxy) = proxy_with(|l| l.header_timeout = Duration::from_millis(200)).await;
    let got = raw_until_closed(proxy.addr, b"").await;
    assert!(got.is_some(), "a silent connection stayed open");
    assert_eq!(proxy.plane.counters().client_header_timeout, 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let (_a, proxy) = proxy_with(|l| l.limits.max_connections = 2).await;
    let _c1 = TcpStream::connect(proxy.addr).await.unwrap();
    let _c2 = TcpStream::connect(proxy.addr).await.unwrap();
    // Accepted in order, and counted before the next accept: the third is
    // over the limit.
    assert_refused(proxy.addr).await;
    assert_eq!(proxy.plane.counters().client_connections_refused, 1);

    // Room again once one closes.
    drop(_c1);
    let mut served = false;
    for _ in 0..50 {
        if let Some(got) = raw_until_closed(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n",
        )
        .await
            && got.starts_with(b"HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a freed slot was never reused");
}

/// `serve --threads N` gives a listener a socket per thread, all sharing
/// one count: the limit is the listener's, whichever socket a connection
/// came in on.
#[tokio::test]
async fn the_connection_limit_holds_across_a_listeners_sockets() {
    let (_a, proxy) = proxy_with(|l| l.limits.max_connections = 2).await;
    let name = proxy.plane.snapshot().listeners[0].name.clone();
    let (open, shutdown) = (
        fulcrum_proxy::ConnectionCount::default(),
        tokio_util::sync::CancellationToken::new(),
    );
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(socket.local_addr().unwrap());
        let (name, plane) = (name.clone(), proxy.plane.clone());
        tokio::spawn(fulcrum_proxy::accept(
            socket,
            name,
            plane,
            shutdown.clone(),
            open.clone(),
        ));
    }
    // One connection per socket, each answered, so both are counted.
    let mut held = Vec::new();
    for addr in &addrs {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    assert_refused(addrs[0]).await;
    assert_eq!(proxy.plane.counters().client_connections_refused, 1);
    shutdown.cancel();
}

/// A backend that dies mid-body: the client's read must fail, never end
/// cleanly with a short body.
async fn mid_response(mode: Mode) {
    let (a, proxy) = proxy_with(|_| {}).await;
    a.set_mode(mode);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(format!("http://{}/", proxy.addr).parse().unwrap())
        .await
        .expect("the head arrives");
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "a truncated body looked complete");
    assert!(
        fulcrum_testkit::eventually(PATIENCE, || proxy
            .plane
            .counters()
            .backend_aborted_mid_response
            == 1)
        .await
    );
}

#[tokio::test]
async fn backend_closing_mid_content_length_body_aborts_the_client() {
    mid_response(Mode::CloseMidResponse).await;
}

#[tokio::test]
async fn backend_closing_mid_chunked_body_aborts_the_client() {
    mid_response(Mode::CloseMidChunked).await;
}

#[tokio::test]
async fn failure_modes_each_have_a_clear_response_and_a_counter() {
    use fulcrum_testkit::Client;
    // Refused: a port with nothing listening.
    let gone = Backend::start("gone").await;
    let gone_addr = gone.addr;
    drop(gone);
    let hang = Backend::start("hang").await;
    hang.set_mode(Mode::Hang);
    let storm = Backend::start("storm").await;
    storm.set_mode(Mode::Status(503));
    let snap = SnapshotBuilder::new()
        .pool(pool("refused", &[gone_addr]))
        .pool(pool("hung", &[hang.addr]))
        .pool(pool("storm", &[storm.addr]))
        .route("r", prefix("/refused"), "refused")
        .route("h", prefix("/hung"), "hung")
        .route("s", prefix("/storm"), "storm")
        .build();
    let proxy = TestProxy::start(snap).await;
    let c = Client::new(proxy.addr);

    let r = c.get("x.test", "/refused").await;
    assert_eq!(r.status, 502);
    assert!(
        r.body
            .contains(&format!("could not connect to backend {gone_addr}")),
        "{}",
        r.body
    );
    let r = c.get("x.test", "/hung").await;
    assert_eq!(r.status, 504);
    assert!(r.body.contains("did not respond in time"), "{}", r.body);
    for _ in 0..10 {
        assert_eq!(c.get("x.test", "/storm").await.status, 503);
    }
    let n = proxy.plane.counters();
    assert_eq!(n.backend_connect_failed, 1);
    assert_eq!(n.backend_response_timeout, 1);
    assert_eq!(n.backend_5xx, 10);

    // All backends down: 503 naming the pool.
    let down = Backend::start("down").await;
    let mut p = pool("auth", &[down.addr]);
    p.health = Some(fulcrum_testkit::health_check());
    let proxy = TestProxy::serving(p).await;
    down.fail_health(true);
    let c = Client::new(proxy.addr);
    assert!(fulcrum_testkit::eventually(PATIENCE, || !proxy.plane.backends()[0].healthy).await);
    let r = c.get("x.test", "/login").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("pool \"auth\" has no healthy backend"),
        "{}",
        r.body
    );
    assert_eq!(proxy.plane.counters().pool_no_backend, 1);
}

fn prefix(p: &str) -> fulcrum_config::snapshot::RouteMatch {
    fulcrum_config::snapshot::RouteMatch {
        path: Some(fulcrum_config::snapshot::PathMatch::Prefix(p.into())),
        ..Default::default()
    }
}

/// A new connection to `addr` that sends a request is closed unanswered
/// (over the connection limit), not queued.
async fn assert_refused(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
        .await
        .expect("the connection over the limit was queued, not refused");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the connection over the limit was served"
    );
}
