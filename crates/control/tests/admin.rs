//! The admin API in process: its router against its OpenAPI document, the
//! journal's live event stream, and the dashboard's files.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_control::admin::{self, Admin, OPENAPI};
use fulcrum_control::boot::Boot;
use fulcrum_control::change::{ChangeRequest, Controller, DEFAULT_BAKE, Settings};
use fulcrum_control::store::{Local, Origin};
use fulcrum_control::token::Token;
use fulcrum_testkit::Backend;
use tokio_util::sync::CancellationToken;

struct NoFiles;
impl fulcrum_config::Environment for NoFiles {
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("{path}: no files in this test"))
    }
    fn now_unix(&self) -> i64 {
        0
    }
}

fn config(backend: std::net::SocketAddr, comment: &str) -> String {
    format!(
        "# {comment}\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\npool = \"web\"\n[pool.web]\nbackends = [{{ addr = \"{backend}\" }}]\n"
    )
}

async fn controller(dir: &std::path::Path, backend: std::net::SocketAddr) -> Arc<Controller> {
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, config(backend, "v1")).unwrap();
    let settings = Settings {
        config_path: path,
        standards: None,
        env: Arc::new(NoFiles),
    };
    let store = Local::open(&dir.join("state")).unwrap();
    let boot = Boot::decide(settings, Arc::new(store)).await.unwrap();
    boot.start(vec![tokio::runtime::Handle::current()])
        .await
        .unwrap()
}

/// The admin API on 127.0.0.1:0, token `t`, until the token is cancelled.
async fn serve(c: Arc<Controller>) -> (std::net::SocketAddr, CancellationToken) {
    let (router, _) = admin::router(Arc::new(Admin {
        guard: fulcrum_control::guard::Guard::spawn(&c),
        controller: c,
        token: Token::new("t"),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(admin::serve(listener, None, router, stop.clone()));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_router_serves_is_in_the_openapi_document_and_back() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), backend.addr).await;
    let (_, routes) = admin::router(Arc::new(Admin {
        guard: fulcrum_control::guard::Guard::spawn(&c),
        controller: c,
        token: Token::new("t"),
    }));
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(served, documented, "the router and /openapi.json disagree");
    // Every operation says what it answers.
    for (m, p) in &documented {
        assert!(doc["paths"][p][m]["responses"].is_object(), "{m} {p}");
        assert!(doc["paths"][p][m]["summary"].is_string(), "{m} {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_what_was_missed_then_each_event_as_it_happens() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), backend.addr).await;
    let (addr, stop) = serve(c.clone()).await;

    // Raw HTTP/1.1, to read the stream as it arrives. After seq 0: the
    // start event first.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?stream=true&after=0 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: start") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    // A change now arrives on the open stream.
    let report = c
        .apply(ChangeRequest {
            source: config(backend.addr, "v2"),
            label: "v2.toml".into(),
            author: "alice".into(),
            message: "a comment".into(),
            origin: Origin::Api,
            canary: None,
            bake: DEFAULT_BAKE,
            force: false,
            parent: None,
            max_moved: None,
        })
        .await;
    assert_eq!(
        report.outcome,
        fulcrum_control::gate::Outcome::Applied,
        "{report:?}"
    );
    while !seen.contains("event: promoted") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: applied"), "{seen}");
    assert!(seen.contains("\"actor\":\"alice\""), "{seen}");
    assert!(seen.contains("id: 2"), "{seen}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_loads_without_the_token_and_only_from_this_listener() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = serve(controller(dir.path(), backend.addr).await).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        // The browser enforces it: nothing from elsewhere, no inline script.
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{head}"
        );
        // Nor does any of the three name another place.
        assert!(!body.contains("://"), "{path} names another origin");
    }
    stop.cancel();
}
