//! What the backend and the client see of each other's headers.

use fulcrum_testkit::{Backend, Client, TestProxy, pool};
use http::Method;

#[tokio::test]
async fn hop_by_hop_removed_and_forwarded_headers_added() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let c = Client::new(proxy.addr);
    let req = c
        .request(Method::GET, "App.test", "/x")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-kept", "yes");
    let r = c.send(req, "").await;
    assert_eq!(r.status, 200);
    let seen = a.last().unwrap().headers;
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(!seen.contains_key(gone), "{gone} reached the backend");
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["host"], "App.test", "Host is passed through");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "App.test");
    let id = &seen["x-request-id"];
    assert_eq!(id.len(), 16);
    assert_eq!(
        &r.headers["x-request-id"], id,
        "client sees the id the backend saw"
    );
}

#[tokio::test]
async fn client_request_id_is_kept() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let c = Client::new(proxy.addr);
    let r = c
        .send(
            c.request(Method::GET, "x.test", "/")
                .header("x-request-id", "abc-123"),
            "",
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert_eq!(a.last().unwrap().headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn a_request_without_host_names_the_backend() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    // HTTP/1.0 allows a request without Host.
    let got = crate::raw_until_closed(proxy.addr, b"GET /x HTTP/1.0\r\nX-A: 1\r\n\r\n")
        .await
        .expect("an HTTP/1.0 response ends with the connection");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = a.last().unwrap().headers;
    assert_eq!(seen["host"], a.addr.to_string().as_str());
    assert_eq!(seen["x-a"], "1");
    assert!(!seen.contains_key("x-forwarded-host"));
}

/// An IPv4 client of a dual-stack `[::]` listener arrives as
/// `::ffff:127.0.0.1`; it is its IPv4 address for the forwarded headers
/// (and the hash on `client_ip`, the canary cohort and the log), as
/// `fulcrum explain --client-ip` takes it.
#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::]:0").await else {
        eprintln!("no IPv6 on this machine: nothing to check");
        return;
    };
    let a = Backend::start("a").await;
    let snap = fulcrum_testkit::SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .build();
    let name = snap.listeners[0].name.clone();
    let (plane, _writer) = fulcrum_proxy::DataPlane::new(snap);
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(fulcrum_proxy::serve(listener, name, plane, stop.clone()));
    let r = Client::new(([127, 0, 0, 1], port).into())
        .get("x.test", "/")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.last().unwrap().headers["x-forwarded-for"], "127.0.0.1");
    stop.cancel();
}
