//! The admin API and the controller in process: the router against its
//! OpenAPI document, the journal's live event stream, the dashboard's files,
//! guarded rollbacks and a head the store could not move.

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
    let report = c.apply(change(backend.addr, "v2")).await;
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

fn change(backend: std::net::SocketAddr, comment: &str) -> ChangeRequest {
    ChangeRequest {
        source: config(backend, comment),
        label: format!("{comment}.toml"),
        author: "alice".into(),
        message: comment.into(),
        origin: Origin::Api,
        canary: None,
        bake: DEFAULT_BAKE,
        force: false,
        parent: None,
        max_moved: None,
    }
}

/// The guard's rollback waits its turn behind a change in progress; when
/// that change has replaced the judged version by then, nothing is rolled
/// back and nothing is said to have failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_rollback_of_a_version_replaced_meanwhile_does_nothing() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), backend.addr).await;
    let report = c.apply(change(backend.addr, "v2")).await;
    assert_eq!(report.head, Some(2), "{report:?}");
    let r = c.rollback_if(1, None, "guard", "judged v1").await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(c.view().stable.meta.number, 2);
    let r = c.rollback_if(2, None, "guard", "judged v2").await;
    assert_eq!(r.unwrap().unwrap().to.meta.number, 1);
    let rollbacks = c
        .journal()
        .store()
        .events(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == fulcrum_control::store::EventKind::RolledBack)
        .count();
    assert_eq!(rollbacks, 1);
}

/// A head the store could not move is journaled as drift (a restart would
/// serve the old one), and the next change moves it from where it stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_store_could_not_move_is_moved_by_the_next_change() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), backend.addr).await;
    let head = dir.path().join("state/HEAD");
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    let report = c.apply(change(backend.addr, "v2")).await;
    assert_eq!(report.head, Some(2), "v2 serves: {report:?}");
    let events = c.journal().store().events(0, 100).unwrap();
    let drift = events
        .iter()
        .find(|e| e.kind == fulcrum_control::store::EventKind::Drift)
        .expect("journaled");
    assert!(drift.summary.contains("head stays v1"), "{drift:?}");
    std::fs::remove_dir(&head).unwrap();
    std::fs::write(&head, "1\n").unwrap();
    c.apply(change(backend.addr, "v3")).await;
    assert_eq!(std::fs::read_to_string(&head).unwrap().trim(), "3");
}

/// A config over the admin API's body limit is answered in JSON, so the
/// CLI prints its one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_too_large_to_send_is_refused_in_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = serve(controller(dir.path(), backend.addr).await).await;
    let body = format!("# {}\n", "x".repeat(3 << 20));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /config HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.contains("\"error\":\"cannot read the config sent: it is over 2 MB"),
        "{got}"
    );
    stop.cancel();
}

/// One raw request with a body; the whole answer.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// A method an endpoint does not take gets a JSON line like every other
/// mistake; the scheme's name is case-insensitive; a bake that would
/// block every change for days, and a canary share out of range, are
/// refused before the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_schemes_and_bakes_the_api_does_not_take_are_answered_in_json() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = serve(controller(dir.path(), backend.addr).await).await;
    let got = raw(
        addr,
        "DELETE /config HTTP/1.1\r\nAuthorization: Bearer t",
        "",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 405"), "{got}");
    assert!(
        got.contains("{\"error\":\"this endpoint does not take"),
        "{got}"
    );
    let got = raw(addr, "GET /status HTTP/1.1\r\nAuthorization: bearer t", "").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let config = config(backend.addr, "slow bake");
    let got = raw(
        addr,
        "POST /config?canary=0.1&bake=25h HTTP/1.1\r\nAuthorization: Bearer t",
        &config,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("`bake` is at most 1day, not 1day 1h"), "{got}");
    // A canary share out of range never enters the pipeline either.
    for share in ["0", "1.5", "NaN"] {
        let got = raw(
            addr,
            &format!("POST /config?canary={share} HTTP/1.1\r\nAuthorization: Bearer t"),
            &config,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{share}: {got}");
        assert!(got.contains("`canary` is a share of clients"), "{got}");
    }
    stop.cancel();
}

/// The admin listener bounds what a client may hold, as the data plane's
/// listeners do: a head sent slowly, or a connection left idle, is closed
/// after the header timeout, and connections past the cap are closed at
/// once, so a flood cannot take the file descriptors the data plane needs.
#[tokio::test(start_paused = true)]
async fn slow_idle_and_surplus_admin_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = serve(controller(dir.path(), backend.addr).await).await;
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest))
            .await
            .is_ok()
    };
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert!(closed(half).await, "a half-sent head held its connection");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(closed(idle).await, "an idle connection was held");

    let mut held = Vec::new();
    for _ in 0..fulcrum_control::admin::MAX_CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Each is served, so each is counted.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let surplus = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let mut surplus = surplus;
    let n = tokio::time::timeout(Duration::from_secs(1), surplus.read_to_end(&mut rest))
        .await
        .expect("the surplus connection was kept")
        .unwrap();
    assert_eq!(n, 0);
    drop(held);
    stop.cancel();
}

/// A client that reconnects gets every event it missed, not only the
/// first page of them: the stream reads the journal back page by page
/// (here, pages of one) before it goes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_replays_every_missed_event_past_its_page() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path(), backend.addr).await;
    for v in ["v2", "v3"] {
        c.apply(change(backend.addr, v)).await;
    }
    let last = c.journal().store().last_seq().unwrap();
    assert!(last >= 3, "{last}");
    let (addr, stop) = serve(c.clone()).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?stream=true&limit=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&format!("id: {last}\n")) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("not every event came: {seen}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let ids: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=last).collect::<Vec<_>>());
    stop.cancel();
}
