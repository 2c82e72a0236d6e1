//! Reloads and shutdown: state survives a swap, in-flight requests finish.

use std::time::Duration;

use fulcrum_config::snapshot::{AccessLog, LogTarget};
use fulcrum_testkit::{
    Backend, Client, Mode, SnapshotBuilder, TestProxy, eventually, health_check, pool,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::PATIENCE;

#[tokio::test]
async fn health_and_counters_survive_a_swap() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c3 = Backend::start("c").await;
    let mut p = pool("p", &[a.addr, b.addr]);
    p.health = Some(health_check());
    let proxy = TestProxy::serving(p.clone()).await;
    let c = Client::new(proxy.addr);
    c.tally(10, "x.test", "/").await;
    b.fail_health(true);
    let plane = proxy.plane.clone();
    assert!(
        eventually(PATIENCE, || !plane
            .backend("p", b.addr)
            .unwrap()
            .is_healthy())
        .await
    );
    let a_requests = plane.backend("p", a.addr).unwrap().requests();
    assert!(a_requests >= 5);

    // Add a backend and change the health interval: the check restarts,
    // but b stays down and a keeps its counters.
    let mut p2 = pool("p", &[a.addr, b.addr, c3.addr]);
    let mut h = health_check();
    h.interval = Duration::from_millis(60);
    p2.health = Some(h);
    proxy.swap(
        SnapshotBuilder::new()
            .version("test-2")
            .pool(p2)
            .catch_all("p")
            .build(),
    );
    assert!(!plane.backend("p", b.addr).unwrap().is_healthy());
    assert_eq!(plane.backend("p", a.addr).unwrap().requests(), a_requests);
    let t = c.tally(10, "x.test", "/").await;
    assert!(!t.contains_key("b"), "{t:?}");

    // Removed backends' checks stop.
    proxy.swap(
        SnapshotBuilder::new()
            .version("test-3")
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .build(),
    );
    let before = b.health_hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        b.health_hits() <= before + 1,
        "b is still probed after removal"
    );
}

/// The statistics a request counts in, as (label, hash, requests).
fn counted(proxy: &TestProxy) -> Vec<(String, String, u64)> {
    proxy
        .plane
        .stats()
        .iter()
        .map(|s| {
            let n = s.routes.iter().map(|r| r.requests()).sum();
            (s.version.to_string(), s.hash.to_string(), n)
        })
        .collect()
}

/// A change that kept its `version` label counts apart from the config it
/// replaces, beside it as a canary too (else the guard would compare the
/// two sides' merged counts); content served again counts on.
#[tokio::test]
async fn a_change_that_kept_its_version_label_counts_apart() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let config = |backend, hash: &str| {
        SnapshotBuilder::new()
            .version("x")
            .hash(hash)
            .pool(pool("p", &[backend]))
            .catch_all("p")
            .build()
    };
    let proxy = TestProxy::start(config(a.addr, "aaaaaaaaaaaa")).await;
    let c = Client::new(proxy.addr);
    c.tally(4, "x.test", "/").await;
    proxy.writer.stage(config(b.addr, "bbbbbbbbbbbb"), 1.0);
    c.tally(6, "x.test", "/").await;
    assert_eq!(
        counted(&proxy),
        [
            ("x".into(), "aaaaaaaaaaaa".into(), 4),
            ("x@bbbbbbbbbbbb".into(), "bbbbbbbbbbbb".into(), 6)
        ]
    );
    // Dropped, the canary's counts stay reported; the stable one's go on.
    proxy.writer.drop_canary();
    c.tally(1, "x.test", "/").await;
    assert_eq!(
        counted(&proxy),
        [
            ("x".into(), "aaaaaaaaaaaa".into(), 5),
            ("x@bbbbbbbbbbbb".into(), "bbbbbbbbbbbb".into(), 6)
        ]
    );
}

#[tokio::test]
async fn in_flight_request_finishes_on_its_snapshot() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    old.set_mode(Mode::Delay(Duration::from_millis(200)));
    let proxy = TestProxy::serving(pool("p", &[old.addr])).await;
    let c = Client::new(proxy.addr);
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get("x.test", "/").await }
    });
    assert!(eventually(PATIENCE, || old.hits() == 1).await);
    proxy.swap(
        SnapshotBuilder::new()
            .version("v2")
            .pool(pool("q", &[new.addr]))
            .catch_all("q")
            .build(),
    );
    assert_eq!(c.get("x.test", "/").await.backend(), Some("new"));
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.backend()), (200, Some("old")));
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_finish() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Delay(Duration::from_millis(200)));
    let mut proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let c = Client::new(proxy.addr);
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get("x.test", "/").await }
    });
    assert!(eventually(PATIENCE, || a.hits() == 1).await);
    let done = proxy.begin_shutdown();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn shutdown_tells_a_request_in_flight_that_its_connection_closes() {
    let a = Backend::start("a").await;
    a.set_mode(Mode::Delay(Duration::from_millis(200)));
    let mut proxy = TestProxy::serving(pool("p", &[a.addr])).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(PATIENCE, || a.hits() == 1).await);
    let done = proxy.begin_shutdown();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("the connection stayed open")
        .unwrap();
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let a = Backend::start("a").await;
    let path = std::env::temp_dir().join(format!("fulcrum-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let snap = SnapshotBuilder::new()
        .pool(pool("p", &[a.addr]))
        .catch_all("p")
        .edit(|s| {
            s.access_log = Some(AccessLog {
                target: LogTarget::File(path.clone()),
                redact: Vec::new(),
                headers: Vec::new(),
                cookies: Vec::new(),
            })
        })
        .build();
    let proxy = TestProxy::start(snap).await;
    let c = Client::new(proxy.addr);
    let r = c.get("App.test:80", "/hello?x=1").await;
    c.get("x.test", "/two").await;
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        eventually(PATIENCE, || read().lines().count() == 2).await,
        "{}",
        read()
    );
    let line: serde_json::Value = serde_json::from_str(read().lines().next().unwrap()).unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "app.test");
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["route"], "all");
    assert_eq!(line["pool"], "p");
    assert_eq!(line["backend"], a.addr.to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 1);
    assert_eq!(line["version"], "test-1");
    assert_eq!(
        line["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["attempts"], 1);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    let _ = std::fs::remove_file(&path);
}

/// One GET on `s`, read to the end of its `ok` body.
async fn get_on(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let got = crate::read_until(s, |got| got.ends_with(b"\r\n\r\na")).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// `snapshot`, its pool `p` (of `backend`) with a longer response
/// timeout: a reload that leaves the listener as it was.
fn another_pool_setting(
    mut snapshot: fulcrum_config::Snapshot,
    backend: std::net::SocketAddr,
) -> fulcrum_config::Snapshot {
    let mut p = pool("p", &[backend]);
    p.timeouts.response = Duration::from_secs(5);
    snapshot.pools = vec![p];
    snapshot
}

/// A reload that changes a listener's settings (a limit tightened during
/// an attack, say) closes that listener's idle keep-alive connections, so
/// their next request comes on a connection that has the new settings. A
/// reload that leaves the listener as it was keeps them.
#[tokio::test]
async fn a_reload_that_changes_a_listener_closes_its_idle_connections() {
    let a = Backend::start("a").await;
    let snap = |limit: u64| {
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener(|l| l.limits.max_body_bytes = limit)
            .build()
    };
    let proxy = TestProxy::start(snap(1 << 20)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200 "));
    // The same listener, another pool setting: the connection stays.
    proxy.swap(another_pool_setting(snap(1 << 20), a.addr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200 "));
    // A tighter body limit: closed once idle.
    proxy.swap(snap(1000));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the idle connection was left open");
    assert_eq!(n.unwrap(), 0, "{rest:?}");
    assert_eq!(proxy.plane.counters().client_closed_on_reload, 1);
}

/// A connection kept busy never idles, so a reload that changes its
/// listener closes it after the response in progress: that response says
/// `connection: close`.
#[tokio::test]
async fn a_reload_that_changes_a_listener_closes_a_busy_connection_after_its_response() {
    let a = Backend::start("a").await;
    let mut p = pool("p", &[a.addr]);
    p.timeouts.response = Duration::from_secs(5);
    let snap = |limit: u64| {
        SnapshotBuilder::new()
            .pool(p.clone())
            .catch_all("p")
            .listener(|l| l.limits.max_body_bytes = limit)
            .build()
    };
    let proxy = TestProxy::start(snap(1 << 20)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200 "));
    a.set_mode(Mode::Delay(Duration::from_millis(300)));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    eventually(PATIENCE, || a.hits() == 2).await;
    proxy.swap(snap(1000));
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the connection was left open after its response")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
    assert!(rest.contains("\r\nconnection: close\r\n"), "{rest}");
    assert_eq!(proxy.plane.counters().client_closed_on_reload, 1);
}

/// An HTTP/2 connection whose listener a reload changed gets a GOAWAY, so
/// the client's next requests come on a connection with the new settings
/// (`max_concurrent_streams`, limits). A reload that leaves the listener
/// as it was keeps the connection.
#[tokio::test]
async fn a_reload_that_changes_a_listener_sends_its_http2_connections_a_goaway() {
    use crate::edge::{GET_X_TEST, GOAWAY, frame, frames_until, goaway, h2c_open};
    let a = Backend::start("a").await;
    let snap = |streams: u32| {
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .listener(|l| l.http2.max_concurrent_streams = streams)
            .build()
    };
    let proxy = TestProxy::start(snap(100)).await;
    let mut s = h2c_open(proxy.addr).await;
    // GET on stream `id` (END_STREAM | END_HEADERS): its frames up to its
    // response's headers.
    let get = |id: u32| frame(1, 0x5, id, &GET_X_TEST);
    s.write_all(&get(1)).await.unwrap();
    frames_until(&mut s, |kind, id| kind == 1 && id == 1)
        .await
        .expect("no response on stream 1");
    // Another pool setting: the connection stays and serves.
    proxy.swap(another_pool_setting(snap(100), a.addr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&get(3)).await.unwrap();
    let frames = frames_until(&mut s, |kind, id| kind == 1 && id == 3)
        .await
        .expect("no response on stream 3");
    assert!(frames.iter().all(|f| f.0 != GOAWAY), "{frames:?}");
    // Fewer streams allowed: GOAWAY (NO_ERROR).
    proxy.swap(snap(10));
    assert_eq!(goaway(&mut s).await, Some(0));
    assert_eq!(proxy.plane.counters().client_closed_on_reload, 1);
}

/// The access log's lost lines are counted since start, whichever log lost
/// them: a log that cannot be opened counts every line it does not write,
/// and a reload to another path does not reset the count.
#[tokio::test]
async fn lost_access_log_lines_are_counted_across_reloads() {
    let a = Backend::start("a").await;
    let dir = std::env::temp_dir().join(format!("fulcrum-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let snap = |path: std::path::PathBuf| {
        SnapshotBuilder::new()
            .pool(pool("p", &[a.addr]))
            .catch_all("p")
            .edit(|s| {
                s.access_log = Some(AccessLog {
                    target: LogTarget::File(path),
                    redact: Vec::new(),
                    headers: Vec::new(),
                    cookies: Vec::new(),
                })
            })
            .build()
    };
    // A directory cannot be opened as the log.
    let proxy = TestProxy::start(snap(dir.clone())).await;
    let c = Client::new(proxy.addr);
    for _ in 0..3 {
        c.get("x.test", "/").await;
    }
    assert!(eventually(PATIENCE, || proxy.plane.access_log_dropped() == 3).await);
    proxy.swap(snap(dir.join("access.log")));
    c.get("x.test", "/").await;
    assert!(eventually(PATIENCE, || dir.join("access.log").exists()).await);
    assert_eq!(proxy.plane.access_log_dropped(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A snapshot of one pool whose access log goes to `path`.
fn logged(a: std::net::SocketAddr, path: &std::path::Path) -> fulcrum_config::Snapshot {
    let path = path.to_path_buf();
    SnapshotBuilder::new()
        .pool(pool("p", &[a]))
        .catch_all("p")
        .listener(|l| l.limits.max_body_bytes = 1000)
        .edit(|s| {
            s.access_log = Some(AccessLog {
                target: LogTarget::File(path),
                redact: Vec::new(),
                headers: Vec::new(),
                cookies: Vec::new(),
            })
        })
        .build()
}

/// The access log's lines, once it holds `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        eventually(PATIENCE, || read().lines().count() >= n).await,
        "{}",
        read()
    );
    read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A client that leaves before its response head (it closes, or resets
/// its HTTP/2 stream) still leaves its record: `499`, the client's doing,
/// in its route's series and the access log, and in none of the backend's
/// (which did nothing wrong). It used to leave none, so requests given up
/// on a slow backend vanished from the statistics.
#[tokio::test]
async fn a_client_that_leaves_before_its_response_is_recorded_as_499() {
    use crate::edge::{GET_X_TEST, frame, h2c_open};
    let a = Backend::start("a").await;
    a.set_mode(Mode::Hang);
    let path = std::env::temp_dir().join(format!("fulcrum-499-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let proxy = TestProxy::start(logged(a.addr, &path)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(PATIENCE, || a.hits() == 1).await);
    drop(s);
    let mut h2 = h2c_open(proxy.addr).await;
    h2.write_all(&frame(1, 0x5, 1, &GET_X_TEST)).await.unwrap();
    assert!(eventually(PATIENCE, || a.hits() == 2).await);
    // RST_STREAM, CANCEL.
    h2.write_all(&frame(3, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let lines = log_lines(&path, 2).await;
    for line in &lines {
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["route"], "all", "{line}");
        assert_eq!(line["backend"], a.addr.to_string(), "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
    }
    let stats = proxy.plane.stats();
    let stats = stats.last().unwrap();
    assert_eq!(stats.routes[0].status(499), 2);
    assert_eq!(stats.pools[0].backends[0].requests(), 0);
    let _ = std::fs::remove_file(&path);
}

/// What the request path's screen refuses (a declared body over the
/// limit, two Host headers) is a request: it has its access-log line, as
/// config.md says (only what the HTTP/1.1 codec refuses before a request
/// exists has none).
#[tokio::test]
async fn a_request_the_screen_refuses_has_its_access_log_line() {
    let a = Backend::start("a").await;
    let path = std::env::temp_dir().join(format!("fulcrum-refused-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let proxy = TestProxy::start(logged(a.addr, &path)).await;
    for (req, status) in [
        (
            "POST /up HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5000\r\n\r\n",
            "413",
        ),
        (
            "GET /two HTTP/1.1\r\nHost: x.test\r\nHost: y.test\r\n\r\n",
            "400",
        ),
    ] {
        let got = crate::raw_until_closed(proxy.addr, req.as_bytes())
            .await
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{got}");
    }
    let lines = log_lines(&path, 2).await;
    assert_eq!(
        (&lines[0]["path"], &lines[0]["status"]),
        (&"/up".into(), &413.into())
    );
    assert_eq!(
        (&lines[1]["path"], &lines[1]["status"]),
        (&"/two".into(), &400.into())
    );
    assert_eq!(lines[0]["route"], serde_json::Value::Null);
    assert_eq!(a.hits(), 0);
    let _ = std::fs::remove_file(&path);
}
