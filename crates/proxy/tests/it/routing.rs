//! Requests reach the pool of the first matching route.

use fulcrum_config::snapshot::{HeaderMatch, HeaderValueMatch, HostMatch, PathMatch, RouteMatch};
use fulcrum_testkit::{Backend, Client, SnapshotBuilder, TestProxy, pool};
use http::Method;
use regex::Regex;

#[tokio::test]
async fn routes_by_host_path_method_and_header() {
    let names = [
        "exact", "wild", "pexact", "prefix", "regex", "post", "hdr", "default",
    ];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::start(n).await);
    }
    let mut b = SnapshotBuilder::new();
    for (n, be) in names.iter().zip(&backends) {
        b = b.pool(pool(n, &[be.addr]));
    }
    let m = |f: fn(&mut RouteMatch)| {
        let mut r = RouteMatch::default();
        f(&mut r);
        r
    };
    let snap = b
        .route(
            "exact",
            m(|r| r.host = Some(HostMatch::Exact("app.test".into()))),
            "exact",
        )
        .route(
            "wild",
            m(|r| r.host = Some(HostMatch::Suffix(".wild.test".into()))),
            "wild",
        )
        .route(
            "pexact",
            m(|r| r.path = Some(PathMatch::Exact("/login".into()))),
            "pexact",
        )
        .route(
            "prefix",
            m(|r| r.path = Some(PathMatch::Prefix("/api/".into()))),
            "prefix",
        )
        .route(
            "regex",
            m(|r| r.path = Some(PathMatch::Regex(Regex::new("^/u/[0-9]+$").unwrap()))),
            "regex",
        )
        .route("post", m(|r| r.methods = vec![Method::POST]), "post")
        .route(
            "hdr",
            m(|r| {
                r.headers = vec![HeaderMatch {
                    name: "x-tenant".parse().unwrap(),
                    value: HeaderValueMatch::Exact("blue".into()),
                }]
            }),
            "hdr",
        )
        .route(
            "default",
            m(|r| r.host = Some(HostMatch::Exact("default.test".into()))),
            "default",
        )
        .build();
    let proxy = TestProxy::start(snap).await;
    let c = Client::new(proxy.addr);

    // Host: case and port do not matter.
    assert_eq!(c.get("APP.test:8080", "/x").await.backend(), Some("exact"));
    assert_eq!(c.get("a.wild.test", "/x").await.backend(), Some("wild"));
    assert_eq!(c.get("a.b.wild.test", "/x").await.backend(), Some("wild"));
    // The wildcard needs a subdomain: falls through to the path routes.
    assert_eq!(c.get("wild.test", "/login").await.backend(), Some("pexact"));
    assert_eq!(c.get("other.test", "/login/").await.status, 404);
    assert_eq!(
        c.get("other.test", "/api/v1").await.backend(),
        Some("prefix")
    );
    assert_eq!(c.get("other.test", "/u/42").await.backend(), Some("regex"));
    assert_eq!(
        c.get("other.test", "/u/42/x").await.status,
        404,
        "regex is anchored"
    );
    let post = c
        .send(c.request(Method::POST, "other.test", "/x"), "body")
        .await;
    assert_eq!(post.backend(), Some("post"));
    let hdr = c
        .send(
            c.request(Method::GET, "other.test", "/x")
                .header("x-tenant", "blue"),
            "",
        )
        .await;
    assert_eq!(hdr.backend(), Some("hdr"));
    let wrong = c
        .send(
            c.request(Method::GET, "other.test", "/x")
                .header("x-tenant", "red"),
            "",
        )
        .await;
    assert_eq!(wrong.status, 404);
    assert_eq!(c.get("default.test", "/x").await.backend(), Some("default"));

    let none = c.get("nowhere.test", "/x").await;
    assert_eq!(none.status, 404);
    assert!(
        none.body.ends_with('\n') && none.body.contains("no route"),
        "{:?}",
        none.body
    );
    assert!(none.headers.contains_key("x-request-id"));
}
