//! The edge protocols end to end on real sockets: TLS with certificates
//! made at test time (rcgen), SNI, ALPN, HTTP/2 from clients (TLS and h2c)
//! and to backends, translation between the two versions, trailers,
//! WebSocket passthrough, HTTP/2 abuse, and reloads under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum_config::snapshot::{Certificate, Protocol, Tls, TlsVersion};
use fulcrum_testkit::{Backend, Client, Mode, SnapshotBuilder, TestProxy, pool};
use http::{Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::PATIENCE;

/// A self-signed certificate for `names`, compiled as `check` would.
fn certificate(names: &[&str]) -> (Certificate, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let private = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![der.clone()],
        private,
        &rustls::crypto::ring::default_provider(),
    )
    .unwrap();
    (
        Certificate {
            cert_path: format!("{}.pem", names.first().unwrap_or(&"none")),
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            not_after: i64::MAX,
            key: Arc::new(certified),
        },
        der,
    )
}

fn tls_of(certs: Vec<Certificate>) -> Tls {
    Tls {
        certificates: certs,
        min_version: TlsVersion::Tls12,
    }
}

/// Connects with TLS, trusting `roots`, offering `alpn`; returns the stream
/// and the certificate the server presented.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls_handshake(tcp, sni, roots, alpn).await
}

/// [`tls_connect`] over a connection already open.
async fn tls_handshake(
    tcp: TcpStream,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn presented(s: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn tls_proxy(certs: Vec<Certificate>, backend: &Backend) -> TestProxy {
    TestProxy::start(
        SnapshotBuilder::new()
            .pool(pool("p", &[backend.addr]))
            .catch_all("p")
            .listener(|l| l.tls = Some(tls_of(certs)))
            .build(),
    )
    .await
}

/// GET `path` over an established HTTP/1.1 or HTTP/2 connection.
async fn get_on<I>(io: I, h2: bool, host: &str, path: &str) -> (u16, http::HeaderMap, String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let req = Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn tls_terminates_and_forwards_with_https_proto() {
    let a = Backend::start("a").await;
    let (cert, der) = certificate(&["app.test"]);
    let proxy = tls_proxy(vec![cert], &a).await;
    let s = tls_connect(proxy.addr, "app.test", &[der], &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, body) = get_on(s, false, "app.test", "/x").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    let seen = a.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "app.test");
}

/// `header_timeout` runs from when the connection was accepted, through
/// the TLS handshake: a client that takes most of it to shake hands does
/// not get it again for its head (a slowloris over TLS held its
/// connection for up to twice the timeout).
#[tokio::test]
async fn the_header_deadline_of_a_tls_connection_counts_its_handshake() {
    let a = Backend::start("a").await;
    let (cert, der) = certificate(&["app.test"]);
    let proxy = TestProxy::start(
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener_timeouts(Duration::from_millis(400), Duration::from_secs(60))
            .listener(|l| l.tls = Some(tls_of(vec![cert])))
            .build(),
    )
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut s = tls_handshake(tcp, "app.test", &[der], &[b"http/1.1"]).await;
    // Past the deadline counted from the accept, within one counted from
    // the handshake.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.contains(" 200 "),
        "served past its header deadline: {got}"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let a = Backend::start("a").await;
    let (one, one_der) = certificate(&["one.test"]);
    let (wild, wild_der) = certificate(&["*.two.test"]);
    let proxy = tls_proxy(vec![one, wild], &a).await;
    let roots = [one_der.clone(), wild_der.clone()];
    let s = tls_connect(proxy.addr, "one.test", &roots, &[]).await;
    assert_eq!(presented(&s), one_der);
    let s = tls_connect(proxy.addr, "api.two.test", &roots, &[]).await;
    assert_eq!(presented(&s), wild_der, "wildcard picked by SNI");
    // A name no certificate covers gets the first (default) one, which the
    // client then rejects: the handshake fails rather than mis-serving.
    let mut store = rustls::RootCertStore::empty();
    store.add(one_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let res = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await;
    assert!(
        res.is_err(),
        "the default certificate does not cover other.test"
    );
    assert!(
        fulcrum_testkit::eventually(PATIENCE, || proxy
            .plane
            .counters()
            .client_tls_handshake_failed
            == 1)
        .await
    );
}

#[tokio::test]
async fn h2_over_tls_by_alpn_reaches_an_http1_backend_with_host() {
    let a = Backend::start("a").await;
    let (cert, der) = certificate(&["app.test"]);
    let proxy = tls_proxy(vec![cert], &a).await;
    let s = tls_connect(proxy.addr, "app.test", &[der], &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, headers, body) = get_on(s, true, "app.test", "/h2").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    assert!(headers.get("connection").is_none());
    // The HTTP/1.1 backend's own headers, and the proxy's, made it over.
    assert_eq!(headers["x-backend"], "a");
    assert!(headers.contains_key("x-request-id"));
    let seen = a.last().unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    // `:authority` became `Host`.
    assert_eq!(seen.headers["host"], "app.test");
    assert_eq!(seen.path, "/h2");
}

#[tokio::test]
async fn h2c_prior_knowledge_end_to_end() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let c = Client::h2c(proxy.addr);
    let r = c.get("app.test", "/one").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    let r = c.get("app.test", "/two").await;
    assert_eq!(r.status, 200);
    assert_eq!(a.last().unwrap().headers["host"], "app.test");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(
        Client::new(proxy.addr).get("app.test", "/").await.status,
        200
    );
}

/// A pool `p` of `backends` spoken to over HTTP/2 (`protocol = "h2"`).
fn h2_pool(backends: &[SocketAddr]) -> fulcrum_config::snapshot::Pool {
    let mut p = pool("p", backends);
    p.protocol = Protocol::H2;
    p
}

/// A client's POST over raw HTTP/1.1 with `Connection: close`, 16 KiB at a
/// time every `every`, and everything the proxy sent back.
async fn slow_post(proxy: &TestProxy, pieces: usize, every: Duration) -> String {
    let piece = vec![b'x'; 16 * 1024];
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        pieces * piece.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..pieces {
        tokio::time::sleep(every).await;
        s.write_all(&piece).await.unwrap();
    }
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// Over HTTP/2 as over HTTP/1.1, the response timeout runs from the
/// request's last byte: a slow upload (0.8 s) to a healthy backend whose
/// timeout is 300 ms gets its answer, not 504.
#[tokio::test]
async fn h2_response_timeout_runs_from_the_end_of_a_slow_upload() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(h2_pool(&[a.addr])).await;
    let got = slow_post(&proxy, 8, Duration::from_millis(100)).await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    let seen = a.last().unwrap();
    assert_eq!(
        (seen.version, seen.body.len()),
        (Version::HTTP_2, 128 * 1024)
    );
    assert_eq!(proxy.plane.counters().backend_response_timeout, 0);
}

/// …and a backend that never answers a request it has whole still times
/// out.
#[tokio::test]
async fn h2_backend_silent_after_the_whole_request_times_out() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Hang);
    let proxy = TestProxy::serving(h2_pool(&[a.addr])).await;
    let got = slow_post(&proxy, 1, Duration::ZERO).await;
    assert!(got.starts_with("HTTP/1.1 504 "), "{got}");
    assert_eq!(proxy.plane.counters().backend_response_timeout, 1);
}

/// An h2 backend that accepts requests and never reads their bodies nor
/// answers: its flow-control windows (64 KiB) close and stay closed.
async fn h2_backend_that_never_reads() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|_req| {
                std::future::pending::<Result<http::Response<Empty<Bytes>>, std::convert::Infallible>>(
                )
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(65_535)
                    .initial_connection_window_size(65_535)
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

/// Over HTTP/2 as over HTTP/1.1, a backend must take each piece of an
/// upload within `timeouts.response` (300 ms): one whose window stays
/// closed gets 504, not a request held for as long as the client waits.
#[tokio::test]
async fn h2_backend_that_stops_taking_an_upload_times_out() {
    let proxy = TestProxy::serving(h2_pool(&[h2_backend_that_never_reads().await])).await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let len = 1 << 20;
    tokio::spawn(async move {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
        );
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b'x'; len]).await;
        // Held open: the answer must not wait for the client to give up.
        tokio::time::sleep(PATIENCE).await;
    });
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, rd.read_to_end(&mut got))
        .await
        .expect("no answer while the client waits")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 504 "), "{got}");
    assert_eq!(proxy.plane.counters().backend_response_timeout, 1);
}

/// A client's body over the limit, sent to an h2 pool, is the client's
/// fault (413) as over HTTP/1.1: not a reset counted against the backend
/// (with one failure ejecting, three such requests would empty the pool).
#[tokio::test]
async fn h2_pool_a_client_body_over_the_limit_is_413_and_not_the_backends_fault() {
    let a = Backend::start("a").await;
    let mut p = h2_pool(&[a.addr]);
    p.outlier = Some(fulcrum_config::snapshot::Outlier {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(30),
        max_ejected_fraction: 1.0,
    });
    let snap = SnapshotBuilder::new()
        .pool(p)
        .catch_all("p")
        .listener(|l| l.limits.max_body_bytes = 1000)
        .build();
    let proxy = TestProxy::start(snap).await;
    for _ in 0..3 {
        let mut req = String::from(
            "POST / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for _ in 0..4 {
            req.push_str(&format!("1f4\r\n{}\r\n", "b".repeat(500)));
        }
        req.push_str("0\r\n\r\n");
        let got = crate::raw_until_closed(proxy.addr, req.as_bytes()).await;
        let got = String::from_utf8_lossy(got.as_deref().unwrap_or_default());
        assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    }
    let c = proxy.plane.counters();
    assert_eq!((c.client_body_too_large, c.backend_reset), (3, 0));
    let state = proxy.plane.backend("p", a.addr).unwrap();
    assert_eq!(state.failures(), 0);
    assert!(!state.is_ejected());
    assert_eq!(Client::new(proxy.addr).get("x.test", "/").await.status, 200);
}

/// An HTTP/1.0 request without Host, to an h2 pool: it names the backend,
/// as over HTTP/1.1 (h2 cannot send a request without an authority, and
/// that failure was a reset counted against the backend).
#[tokio::test]
async fn h2_pool_a_request_without_host_names_the_backend() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(h2_pool(&[a.addr])).await;
    let got = crate::raw_until_closed(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    let got = String::from_utf8_lossy(got.as_deref().unwrap_or_default());
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    let seen = a.last().unwrap();
    assert_eq!(seen.authority, Some(a.addr.to_string()));
    assert_eq!(proxy.plane.counters().backend_reset, 0);
}

/// The framing the screen decided goes to an h2 backend as it goes to an
/// HTTP/1.1 one: the length alone, whatever text the client sent.
#[tokio::test]
async fn h2_pool_gets_the_content_length_normalised() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(h2_pool(&[a.addr])).await;
    let got = crate::raw_until_closed(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\nContent-Length: 0005\r\n\r\nhello",
    )
    .await;
    assert!(got.unwrap_or_default().starts_with(b"HTTP/1.1 200 "));
    let seen = a.last().unwrap();
    assert_eq!(seen.headers["content-length"], "5");
    assert_eq!(&seen.body[..], b"hello");
}

#[tokio::test]
async fn h2_backend_gets_authority_and_trailers_come_back() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Trailers);
    let proxy = TestProxy::serving(h2_pool(&[a.addr])).await;

    // An HTTP/1.1 client with hop-by-hop headers, to an h2 backend.
    let io = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/grpc")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-drop")
        .header("x-drop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = a.last().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.authority.as_deref(), Some("app.test"));
    assert!(seen.headers.get("host").is_none(), "{:?}", seen.headers);
    for h in ["connection", "keep-alive", "x-drop"] {
        assert!(seen.headers.get(h).is_none(), "{h} forwarded to h2");
    }
    assert_eq!(seen.headers["te"], "trailers");

    // Trailers through to an h2 client (HTTP/1.1 clients only get them
    // when chunked; h2 always carries them).
    let r = h2c_collect(proxy.addr, "/grpc").await;
    assert_eq!(r.0, 200);
    assert_eq!(
        r.1.as_ref().and_then(|t| t.get("x-trailer")).unwrap(),
        "done"
    );
}

async fn h2c_collect(addr: SocketAddr, path: &str) -> (u16, Option<http::HeaderMap>) {
    let io = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://app.test{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    (status, collected.trailers().cloned())
}

#[tokio::test]
async fn h2_pool_to_a_dead_backend_is_502_and_counted() {
    let a = Backend::start("a").await;
    let addr = a.addr;
    drop(a);
    let proxy = TestProxy::serving(h2_pool(&[addr])).await;
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(proxy.plane.counters().backend_connect_failed, 1);
}

/// An h2 pool whose backend speaks HTTP/1.1 only (`protocol = "h2"` set
/// by mistake): it answers the preface with an HTTP/1.1 400. That is said
/// as such (not "closed the connection without a response"), and since no
/// request reached it, even a POST goes on to the next backend.
#[tokio::test]
async fn an_h2_pool_backend_that_speaks_http1_is_named_and_skipped() {
    // It takes the preface for a request head and answers it, as NGINX
    // does (then reads on; closing at once could reset the connection
    // before the answer is read).
    let h1 = fulcrum_testkit::RawBackend::start(|_| {
        fulcrum_testkit::RawReply::Send(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
    })
    .await;
    let b = Backend::start("b").await;
    let mut p = h2_pool(&[h1.addr, b.addr]);
    p.algorithm = fulcrum_config::snapshot::Algorithm::First;
    p.retries.attempts = 1;
    let proxy = TestProxy::serving(p).await;
    let post =
        b"POST / HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
    let got = crate::raw_until_closed(proxy.addr, post)
        .await
        .unwrap_or_default();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert_eq!(b.last().unwrap().body, "hello");
    let c = proxy.plane.counters();
    assert_eq!((c.backend_connect_failed, c.backend_reset), (1, 0));

    // Alone in its pool, the 502 names the cause.
    let proxy = TestProxy::serving(h2_pool(&[h1.addr])).await;
    let got = crate::raw_until_closed(proxy.addr, post)
        .await
        .unwrap_or_default();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(got.contains("does not accept HTTP/2"), "{got}");
}

#[tokio::test]
async fn a_client_that_half_closes_before_its_response_is_taken_to_be_gone() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Delay(Duration::from_millis(300)));
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    // Seen while the request is at the backend: as NGINX does, the client
    // is taken to be gone (HAProxy would still answer a half-close).
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(crate::PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("the connection stayed open")
        .unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(
        format!("ws://{}/chat", proxy.addr),
        TcpStream::connect(proxy.addr).await.unwrap(),
    )
    .await
    .expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "world"] {
        ws.send(Message::text(msg)).await.unwrap();
        let back = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
    assert_eq!(proxy.plane.counters().tunnels_opened, 1);
}

#[tokio::test]
async fn idle_websocket_is_closed_after_the_tunnel_timeout() {
    use futures_util::StreamExt;
    let a = Backend::start("a").await;
    let mut p = pool("p", &[a.addr]);
    p.timeouts.tunnel = Duration::from_millis(200);
    let proxy = TestProxy::serving(p).await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/chat", proxy.addr),
        TcpStream::connect(proxy.addr).await.unwrap(),
    )
    .await
    .unwrap();
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("idle tunnel never closed");
    assert!(!matches!(end, Some(Ok(m)) if m.is_text()));
    assert_eq!(proxy.plane.counters().tunnels_idle_closed, 1);
}

/// A WebSocket client that keeps sending but never reads holds the tunnel
/// clear of idleness; what the backend sends back piles up in front of it.
/// `send_timeout` (300 ms here; the tunnel's idle timeout is 30 s) closes
/// it, as it closes any connection whose client takes nothing.
#[tokio::test]
async fn a_websocket_client_that_reads_nothing_is_closed_after_the_send_timeout() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let a = Backend::start("a").await;
    a.set_mode(Mode::Echo);
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.send_timeout = Duration::from_millis(300))
        .build();
    let proxy = TestProxy::start(snap).await;
    // A small receive window, so what comes back piles up at the proxy.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/chat", proxy.addr),
        socket.connect(proxy.addr).await.unwrap(),
    )
    .await
    .unwrap();
    let sender = tokio::spawn(async move {
        // At most 64 MiB: more than the sockets' buffers on the way hold.
        for _ in 0..64 {
            let sent = ws.send(Message::binary(vec![0u8; 1 << 20]));
            if !matches!(tokio::time::timeout(PATIENCE, sent).await, Ok(Ok(()))) {
                break;
            }
        }
    });
    assert!(
        fulcrum_testkit::eventually(PATIENCE, || proxy.plane.counters().client_send_timeout == 1)
            .await,
        "the tunnel stayed open"
    );
    assert_eq!(proxy.plane.counters().tunnels_idle_closed, 0);
    sender.abort();
}

// ---- HTTP/2 abuse ----

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const GOAWAY: u8 = 7;

/// A GET / for x.test as a HEADERS block (HPACK: static :method GET,
/// :scheme http, :path /, and :authority).
pub(crate) const GET_X_TEST: [u8; 11] = [
    0x82, 0x86, 0x84, 0x41, 0x06, b'x', b'.', b't', b'e', b's', b't',
];

/// An h2c connection to `addr`, its preface and an empty SETTINGS sent.
pub(crate) async fn h2c_open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    s
}

/// Reads until the server closes or sends GOAWAY; `Some(bytes read)`, or
/// `None` if it did neither in `PATIENCE`.
async fn until_goaway_or_close(s: &mut TcpStream) -> Option<usize> {
    let mut total = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(total),
            Ok(Ok(n)) => {
                total += n;
                seen.extend_from_slice(&buf[..n]);
                // Walk complete frames looking for GOAWAY (type 7).
                let mut i = 0;
                while seen.len() >= i + 9 {
                    let len = ((seen[i] as usize) << 16)
                        | ((seen[i + 1] as usize) << 8)
                        | seen[i + 2] as usize;
                    if seen[i + 3] == 7 {
                        return Some(total);
                    }
                    if seen.len() < i + 9 + len {
                        break;
                    }
                    i += 9 + len;
                }
                seen.drain(..i);
            }
        }
    }
}

/// Reads the server's frames, as (type, stream id, payload), up to and
/// including the first for which `last` holds; `None` if the connection
/// closes, or nothing more comes within `PATIENCE`, before one does.
pub(crate) async fn frames_until<R: AsyncRead + Unpin>(
    s: &mut R,
    last: impl Fn(u8, u32) -> bool,
) -> Option<Vec<(u8, u32, Vec<u8>)>> {
    let mut seen = Vec::new();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        seen.extend_from_slice(&buf[..n]);
        let mut i = 0;
        while seen.len() >= i + 9 {
            let len =
                ((seen[i] as usize) << 16) | ((seen[i + 1] as usize) << 8) | seen[i + 2] as usize;
            if seen.len() < i + 9 + len {
                break;
            }
            let kind = seen[i + 3];
            let id = u32::from_be_bytes(seen[i + 5..i + 9].try_into().unwrap()) & 0x7fff_ffff;
            frames.push((kind, id, seen[i + 9..i + 9 + len].to_vec()));
            if last(kind, id) {
                return Some(frames);
            }
            i += 9 + len;
        }
        seen.drain(..i);
    }
}

/// The error code of the server's GOAWAY; `None` if the connection closed
/// (or went silent) without one: a plain close is not a GOAWAY.
pub(crate) async fn goaway<R: AsyncRead + Unpin>(s: &mut R) -> Option<u32> {
    let frames = frames_until(s, |kind, _| kind == GOAWAY).await?;
    let (_, _, payload) = frames.last()?;
    Some(u32::from_be_bytes(payload.get(4..8)?.try_into().unwrap()))
}

/// Waits until the proxy has counted an HTTP/2 protocol error: hyper
/// reports a connection's error when the connection ends, which may be
/// just after the client has read its GOAWAY.
async fn h2_protocol_errors(proxy: &TestProxy, at_least: u64) -> u64 {
    fulcrum_testkit::eventually(PATIENCE, || {
        proxy.plane.counters().client_h2_protocol_error >= at_least
    })
    .await;
    proxy.plane.counters().client_h2_protocol_error
}

async fn h2_proxy() -> (Backend, TestProxy) {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    (a, proxy)
}

#[tokio::test]
async fn continuation_flood_is_cut_off() {
    let (_a, proxy) = h2_proxy().await;
    // Frames are read as they come, while the flood is written: once the
    // proxy closes, unread bytes may reset the connection and take a
    // GOAWAY still in the socket with them.
    let (mut rd, mut wr) = h2c_open(proxy.addr).await.into_split();
    let seen = tokio::spawn(async move { goaway(&mut rd).await });
    // HEADERS without END_HEADERS, then endless CONTINUATION of literal
    // headers (0x40: literal with a new name). Flags 0: no END_HEADERS.
    let mut lit = vec![0x40, 5];
    lit.extend_from_slice(b"x-pad");
    lit.push(100);
    lit.extend_from_slice(&[b'a'; 100]);
    wr.write_all(&frame(1, 0, 1, &GET_X_TEST)).await.unwrap();
    let mut sent = 0usize;
    for _ in 0..20_000 {
        let payload: Vec<u8> = lit.iter().cycle().take(lit.len() * 100).copied().collect();
        if wr.write_all(&frame(9, 0, 1, &payload)).await.is_err() {
            break;
        }
        sent += payload.len();
        if sent > 64 * 1024 * 1024 {
            break;
        }
    }
    assert!(
        seen.await.unwrap().is_some(),
        "a CONTINUATION flood of {sent} bytes got no GOAWAY"
    );
    assert_eq!(h2_protocol_errors(&proxy, 1).await, 1);
    // The proxy still serves others.
    assert_eq!(Client::h2c(proxy.addr).get("x.test", "/").await.status, 200);
}

#[tokio::test]
async fn rapid_reset_is_answered_with_goaway() {
    let (_a, proxy) = h2_proxy().await;
    let (mut rd, mut wr) = h2c_open(proxy.addr).await.into_split();
    let seen = tokio::spawn(async move { goaway(&mut rd).await });
    // Open a stream and reset it at once, thousands of times, in one go:
    // HEADERS (END_STREAM | END_HEADERS) + RST_STREAM (CANCEL).
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(1, 0x5, id, &GET_X_TEST));
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = wr.write_all(&burst).await;
    assert!(
        seen.await.unwrap().is_some(),
        "5000 reset streams and no GOAWAY"
    );
    assert!(h2_protocol_errors(&proxy, 1).await >= 1);
    assert_eq!(Client::h2c(proxy.addr).get("x.test", "/").await.status, 200);
}

/// `GET_X_TEST` with a connection-specific field, `connection: close`
/// (HPACK literal, new name), which makes the request malformed
/// (RFC 9113 §8.2.2): a stream the server must reset with PROTOCOL_ERROR.
fn malformed_get() -> Vec<u8> {
    let mut block = GET_X_TEST.to_vec();
    block.extend_from_slice(&[0x40, 10]);
    block.extend_from_slice(b"connection");
    block.push(5);
    block.extend_from_slice(b"close");
    block
}

#[tokio::test]
async fn protocol_error_floods_are_answered_with_goaway() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.http2.max_local_error_reset_streams = 5)
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = h2c_open(proxy.addr).await;
    // As many malformed requests as the limit, then a good one: each
    // malformed stream is reset, and the connection still serves.
    let mut burst: Vec<u8> = (0..5u32)
        .flat_map(|i| frame(1, 0x5, 1 + 2 * i, &malformed_get()))
        .collect();
    burst.extend(frame(1, 0x5, 11, &GET_X_TEST));
    s.write_all(&burst).await.unwrap();
    let frames = frames_until(&mut s, |kind, id| (kind, id) == (1, 11) || kind == GOAWAY)
        .await
        .expect("no answer to the request after the malformed ones");
    let kinds: Vec<(u8, u32)> = frames.iter().map(|&(k, id, _)| (k, id)).collect();
    assert_eq!(kinds.last(), Some(&(1, 11)), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|f| f.0 == 3).count(), 5, "{kinds:?}");
    // One more: past the limit, GOAWAY with ENHANCE_YOUR_CALM, and the
    // connection closes.
    s.write_all(&frame(1, 0x5, 13, &malformed_get()))
        .await
        .unwrap();
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    assert_eq!(goaway(&mut s).await, Some(ENHANCE_YOUR_CALM));
    let mut buf = [0u8; 4096];
    let closed = async {
        while let Ok(n) = s.read(&mut buf).await
            && n > 0
        {}
    };
    assert!(
        tokio::time::timeout(PATIENCE, closed).await.is_ok(),
        "left open after its GOAWAY"
    );
    assert_eq!(h2_protocol_errors(&proxy, 1).await, 1);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn rapid_reset_paced_under_the_pending_count_is_cut_off_too() {
    // A backend slow enough that no stream is answered before its reset.
    let a = Backend::start("a").await;
    a.set_mode(Mode::Delay(Duration::from_millis(200)));
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let mut s = h2c_open(proxy.addr).await;
    // 100 HEADERS, a 20 ms wait (so the proxy has accepted them all, and
    // none counts as pending), 100 RST_STREAM; again and again.
    let mut next = 1u32;
    let mut cut = false;
    for _ in 0..100 {
        let ids: Vec<u32> = (0..100).map(|i| next + 2 * i).collect();
        next += 200;
        let opens: Vec<u8> = ids
            .iter()
            .flat_map(|&id| frame(1, 0x5, id, &GET_X_TEST))
            .collect();
        let resets: Vec<u8> = ids
            .iter()
            .flat_map(|&id| frame(3, 0, id, &8u32.to_be_bytes()))
            .collect();
        if s.write_all(&opens).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if s.write_all(&resets).await.is_err() {
            cut = true;
            break;
        }
        if proxy.plane.counters().client_h2_protocol_error > 0 {
            break;
        }
    }
    if !cut {
        cut = until_goaway_or_close(&mut s).await.is_some();
    }
    assert!(cut, "paced rapid reset was never cut off");
    assert_eq!(proxy.plane.counters().client_h2_protocol_error, 1);
    // About the first batch reached the backend, not thousands.
    assert!(a.hits() <= 200, "{} requests reached the backend", a.hits());
    assert_eq!(Client::h2c(proxy.addr).get("x.test", "/").await.status, 200);
}

/// Every frame the server sends until it closes the connection, as (type,
/// stream id), in order. Acknowledges its SETTINGS and PINGs as a client
/// would (a graceful close waits for the PING after the first GOAWAY).
pub(crate) async fn frames_until_closed(s: &mut TcpStream) -> Vec<(u8, u32)> {
    frames_until_closed_acking(s, true).await
}

/// `frames_until_closed`, acknowledging PINGs only when `pings` is set.
pub(crate) async fn frames_until_closed_acking(s: &mut TcpStream, pings: bool) -> Vec<(u8, u32)> {
    let mut seen = Vec::new();
    let mut frames = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("an idle h2c connection was never closed: {frames:?}"))
            .unwrap_or(0);
        if n == 0 {
            return frames;
        }
        seen.extend_from_slice(&buf[..n]);
        let mut i = 0;
        while seen.len() >= i + 9 {
            let len =
                ((seen[i] as usize) << 16) | ((seen[i + 1] as usize) << 8) | seen[i + 2] as usize;
            if seen.len() < i + 9 + len {
                break;
            }
            let (kind, flags) = (seen[i + 3], seen[i + 4]);
            let id = u32::from_be_bytes(seen[i + 5..i + 9].try_into().unwrap()) & 0x7fff_ffff;
            let payload = &seen[i + 9..i + 9 + len];
            let ack = match (kind, flags & 1) {
                (4, 0) => Some(frame(4, 1, 0, &[])),
                (6, 0) if pings => Some(frame(6, 1, 0, payload)),
                _ => None,
            };
            if let Some(ack) = ack {
                // The server may have closed already.
                let _ = s.write_all(&ack).await;
            }
            frames.push((kind, id));
            i += 9 + len;
        }
        seen.drain(..i);
    }
}

#[tokio::test]
async fn an_h2c_connection_without_a_request_gets_goaway_before_it_closes() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.header_timeout = Duration::from_millis(200))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = h2c_open(proxy.addr).await;
    let frames = frames_until_closed(&mut s).await;
    assert!(
        frames.iter().any(|&(kind, _)| kind == GOAWAY),
        "closed without a GOAWAY: {frames:?}"
    );
    assert_eq!(proxy.plane.counters().client_header_timeout, 1);
}

/// Idle past `idle_timeout` after a request: a GOAWAY, then the close.
#[tokio::test]
async fn an_h2c_connection_idle_after_its_request_gets_goaway_before_it_closes() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.idle_timeout = Duration::from_millis(200))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = h2c_open(proxy.addr).await;
    s.write_all(&frame(1, 0x5, 1, &GET_X_TEST)).await.unwrap();
    let frames = frames_until_closed(&mut s).await;
    let answered = frames.iter().position(|&f| f == (1, 1));
    let goaway = frames.iter().position(|&(kind, _)| kind == GOAWAY);
    assert!(
        matches!((answered, goaway), (Some(r), Some(g)) if r < g),
        "the response, then a GOAWAY: {frames:?}"
    );
    assert_eq!(a.hits(), 1);
    let c = proxy.plane.counters();
    assert_eq!((c.client_idle_closed, c.client_header_timeout), (1, 0));
}

/// A graceful close waits for the client to acknowledge a PING after the
/// first GOAWAY; a client that never does cannot hold an idle connection
/// for the send timeout (30 s) that way: it closes a second after.
#[tokio::test]
async fn an_idle_h2c_connection_closes_even_if_the_client_never_acknowledges_the_ping() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.idle_timeout = Duration::from_millis(200))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = h2c_open(proxy.addr).await;
    s.write_all(&frame(1, 0x5, 1, &GET_X_TEST)).await.unwrap();
    let frames = frames_until_closed_acking(&mut s, false).await;
    assert!(
        frames.iter().any(|&(kind, _)| kind == GOAWAY),
        "closed without a GOAWAY: {frames:?}"
    );
    assert_eq!(proxy.plane.counters().client_idle_closed, 1);
}

/// A request that crosses the GOAWAY of a quiet connection is still
/// answered, though its answer comes after the close would have.
#[tokio::test]
async fn a_request_that_crosses_a_quiet_goaway_is_answered_before_the_close() {
    let a = Backend::start("a").await;
    // Answered 1.3 s after the GOAWAY: past the close of a quiet
    // connection (1 s), well within the response timeout.
    a.set_mode(Mode::Delay(Duration::from_millis(1300)));
    let mut p = pool("p", &[a.addr]);
    p.timeouts.response = Duration::from_secs(5);
    let snap = SnapshotBuilder::new()
        .pool(p)
        .catch_all("p")
        .listener(|l| l.header_timeout = Duration::from_millis(200))
        .build();
    let proxy = TestProxy::start(snap).await;
    let mut s = h2c_open(proxy.addr).await;
    assert!(until_goaway_or_close(&mut s).await.is_some());
    s.write_all(&frame(1, 0x5, 1, &GET_X_TEST)).await.unwrap();
    let frames = frames_until_closed_acking(&mut s, false).await;
    assert!(
        frames.contains(&(1, 1)),
        "closed before the answer: {frames:?}"
    );
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn an_h2c_only_listener_refuses_http1_and_serves_h2c() {
    let a = Backend::start("a").await;
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| l.http2.only = true)
        .build();
    let proxy = TestProxy::start(snap).await;
    let got = crate::raw_until_closed(proxy.addr, b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .expect("HTTP/1.1 left open on an h2c-only listener");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 505 "), "{text}");
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.plane.counters().client_bad_request, 1);
    let r = Client::h2c(proxy.addr).get("x.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
}

#[tokio::test]
async fn an_h2_only_tls_listener_offers_h2_alone() {
    let a = Backend::start("a").await;
    let (cert, der) = certificate(&["app.test"]);
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .listener(|l| {
            l.tls = Some(tls_of(vec![cert]));
            l.http2.only = true;
        })
        .build();
    let proxy = TestProxy::start(snap).await;
    let s = tls_connect(
        proxy.addr,
        "app.test",
        std::slice::from_ref(&der),
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, _, body) = get_on(s, true, "app.test", "/").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    // A client that negotiates no protocol gets nothing.
    let mut s = tls_connect(proxy.addr, "app.test", &[der], &[]).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn ping_and_settings_floods_are_bounded() {
    let (_a, proxy) = h2_proxy().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    // Never read: the acks pile up on the proxy's side unless it stops
    // reading (back-pressure) or closes.
    let mut flood = Vec::new();
    for i in 0..10_000u64 {
        flood.extend(frame(6, 0, 0, &i.to_be_bytes())); // PING
        flood.extend(frame(4, 0, 0, &[])); // SETTINGS
    }
    let mut written = 0usize;
    let bounded = loop {
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(&flood)).await {
            Err(_) => break true,     // the proxy stopped reading
            Ok(Err(_)) => break true, // the proxy closed
            Ok(Ok(())) => {
                written += flood.len();
                if written > 256 * 1024 * 1024 {
                    break false;
                }
            }
        }
    };
    assert!(
        bounded,
        "the proxy took {written} bytes of PING/SETTINGS without pushing back"
    );
    assert_eq!(Client::h2c(proxy.addr).get("x.test", "/").await.status, 200);
}

// ---- reload under load ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_through_tls_and_h2_fails_nothing() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (cert, der) = certificate(&["app.test"]);
    let snap = |backend: SocketAddr, version: &str, cert: &Certificate| {
        SnapshotBuilder::new()
            .version(version)
            .pool(pool("p", &[backend]))
            .catch_all("p")
            .listener(|l| l.tls = Some(tls_of(vec![cert.clone()])))
            .build()
    };
    let proxy = TestProxy::start(snap(a.addr, "v1", &cert)).await;
    let addr = proxy.addr;

    let mut workers = Vec::new();
    for w in 0..4 {
        let der = der.clone();
        workers.push(tokio::spawn(async move {
            let h2 = w % 2 == 0;
            let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
            let mut ok = 0;
            let mut failed = Vec::new();
            // New connections keep coming (new handshakes across the
            // reloads), each carrying several requests.
            for _ in 0..15 {
                let s = tls_connect(addr, "app.test", std::slice::from_ref(&der), alpn).await;
                let results = requests_on(s, h2, 5).await;
                for r in results {
                    match r {
                        Ok(200) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
            }
            (ok, failed)
        }));
    }
    // Reload repeatedly while they run: backends and certificate objects
    // change, the listener stays.
    for i in 0..20 {
        let (backend, version) = if i % 2 == 0 {
            (b.addr, "v2")
        } else {
            (a.addr, "v1")
        };
        proxy.swap(snap(backend, version, &cert));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert_eq!(total, 4 * 15 * 5);
    assert!(a.hits() > 0 && b.hits() > 0, "both configs served");
}

/// `n` GETs on one connection; the status of each, or the error.
async fn requests_on<I>(io: I, h2: bool, n: usize) -> Vec<Result<u16, String>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut out = Vec::new();
    if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        // Concurrent streams on one connection.
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get("https://app.test/")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        r.into_body().collect().await.map_err(|e| e.to_string())?;
                        Ok(s)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }));
        }
        for t in tasks {
            out.push(t.await.unwrap());
        }
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..n {
            let req = Request::get("/")
                .header("host", "app.test")
                .body(Full::new(Bytes::new()))
                .unwrap();
            out.push(match send.send_request(req).await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    match r.into_body().collect().await {
                        Ok(_) => Ok(s),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            });
        }
    }
    out
}

/// A backend that speaks only HTTP/2 with prior knowledge (as gRPC servers
/// do): an HTTP/1.1 request gets a protocol error. Counts health probes.
async fn h2_only_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(AtomicU64::new(0));
    let counted = probes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    if req.uri().path() == "/healthz" {
                        counted.fetch_add(1, Relaxed);
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"h2-only"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, probes)
}

#[tokio::test]
async fn health_checks_speak_h2_to_an_h2_pool() {
    let (addr, probes) = h2_only_backend().await;
    let mut p = h2_pool(&[addr]);
    p.health = Some(fulcrum_testkit::health_check());
    let proxy = TestProxy::serving(p).await;

    // More probes than the unhealthy threshold have answered...
    let answered = fulcrum_testkit::eventually(PATIENCE, || {
        probes.load(std::sync::atomic::Ordering::Relaxed) >= 4
    })
    .await;
    assert!(answered, "the h2-only backend was never probed over h2");
    // ...and the backend is still up and serving.
    let state = proxy.plane.backend("p", addr).unwrap();
    assert!(state.status().healthy, "{:?}", state.status());
    let r = Client::new(proxy.addr).get("x.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "h2-only");
}

// ---- the rows of hardening.md's limits table that had no test ----

#[tokio::test]
async fn a_client_below_tls_min_version_is_refused() {
    let a = Backend::start("a").await;
    let (cert, der) = certificate(&["x.test"]);
    let mut tls = tls_of(vec![cert]);
    tls.min_version = TlsVersion::Tls13;
    let proxy = TestProxy::start(
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener(|l| l.tls = Some(tls))
            .build(),
    )
    .await;
    let mut store = rustls::RootCertStore::empty();
    store.add(der.clone()).unwrap();
    let only_12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(only_12))
        .connect(ServerName::try_from("x.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "a TLS 1.2 client got through");
    // TLS 1.3 is served.
    let s = tls_connect(proxy.addr, "x.test", &[der], &[b"http/1.1"]).await;
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(get_on(s, false, "x.test", "/").await.0, 200);
    assert_eq!(proxy.plane.counters().client_tls_handshake_failed, 1);
}

/// Frames from `s` as (type, flags, stream, payload) until `done` holds
/// for one, acknowledging SETTINGS; `None` if the connection closed or
/// `PATIENCE` passed first.
async fn frame_where(
    s: &mut TcpStream,
    done: impl Fn(u8, u32, &[u8]) -> bool,
) -> Option<(u8, u32, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while seen.len() >= 9 {
            let len = u32::from_be_bytes([0, seen[0], seen[1], seen[2]]) as usize;
            if seen.len() < 9 + len {
                break;
            }
            let (kind, flags) = (seen[3], seen[4]);
            let id = u32::from_be_bytes(seen[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let payload = seen[9..9 + len].to_vec();
            seen.drain(..9 + len);
            if kind == 4 && flags & 1 == 0 {
                s.write_all(&frame(4, 1, 0, &[])).await.ok()?;
            }
            if done(kind, id, &payload) {
                return Some((kind, id, payload));
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_are_refused() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Delay(Duration::from_millis(500)));
    let proxy = TestProxy::start(
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener(|l| l.http2.max_concurrent_streams = 2)
            .build(),
    )
    .await;
    let mut s = h2c_open(proxy.addr).await;
    // The server says so (SETTINGS_MAX_CONCURRENT_STREAMS, id 3)…
    let (_, _, settings) = frame_where(&mut s, |kind, _, _| kind == 4)
        .await
        .expect("the server's SETTINGS");
    let max = settings
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == 3)
        .map(|c| u32::from_be_bytes(c[2..6].try_into().unwrap()));
    assert_eq!(max, Some(2), "{settings:?}");
    // …and refuses a third stream while two are open (REFUSED_STREAM, 7).
    for id in [1, 3, 5] {
        s.write_all(&frame(1, 0x5, id, &GET_X_TEST)).await.unwrap();
    }
    let (_, id, code) = frame_where(&mut s, |kind, _, _| kind == 3)
        .await
        .expect("a RST_STREAM");
    assert_eq!(
        (id, u32::from_be_bytes(code[..4].try_into().unwrap())),
        (5, 7)
    );
    // The two within the limit are answered.
    let answered = std::cell::RefCell::new(Vec::new());
    frame_where(&mut s, |kind, id, _| {
        if kind == 1 {
            answered.borrow_mut().push(id);
        }
        answered.borrow().len() == 2
    })
    .await;
    let mut answered = answered.into_inner();
    answered.sort_unstable();
    assert_eq!(answered, [1, 3]);
}

/// A dead peer: the proxy PINGs an HTTP/2 connection every
/// `keep_alive_interval` and closes it when no acknowledgement comes within
/// `keep_alive_timeout`.
#[tokio::test]
async fn an_h2c_client_that_never_answers_a_ping_is_closed() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener(|l| {
                l.http2.keep_alive_interval = Duration::from_millis(100);
                l.http2.keep_alive_timeout = Duration::from_millis(100);
            })
            .build(),
    )
    .await;
    let mut s = h2c_open(proxy.addr).await;
    // A request, so the connection is past its header deadline, then
    // silence: PINGs go unanswered.
    s.write_all(&frame(1, 0x5, 1, &GET_X_TEST)).await.unwrap();
    let ping = frame_where(&mut s, |kind, _, _| kind == 6).await;
    assert!(ping.is_some(), "no PING came");
    assert!(
        frame_where(&mut s, |_, _, _| false).await.is_none(),
        "the connection stayed open"
    );
    let c = proxy.plane.counters();
    assert_eq!((c.client_ping_timeout, c.client_header_timeout), (1, 0));
}
