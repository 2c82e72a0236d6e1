//! Test kit: real backends on 127.0.0.1:0 (HTTP/1.1 and h2c, with a
//! WebSocket echo) whose behaviour tests switch at runtime, a snapshot
//! builder, an in-process proxy, and a small client.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{
    Algorithm, Backend as BackendCfg, HealthCheck, Http2, Limits, Listener, Pool, Protocol,
    Retries, Route, RouteMatch, Routes, Timeouts,
};
use fulcrum_proxy::DataPlane;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How a test backend answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with body = name.
    Normal,
    /// This status, body = name.
    Status(u16),
    /// Answer normally after this delay.
    Delay(Duration),
    /// Read the request, never answer.
    Hang,
    /// Read the request, then drop the connection without a response.
    Reset,
    /// Send the head (with `Content-Length: 100`) and part of the body,
    /// then drop the connection.
    CloseMidResponse,
    /// Send a chunked head and one chunk, then drop the connection.
    CloseMidChunked,
    /// 200 with body = name, then trailers `x-trailer: done`.
    Trailers,
    /// 200 with the request body echoed back.
    Echo,
}

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub version: http::Version,
    /// The request target's authority (`:authority` over HTTP/2).
    pub authority: Option<String>,
    /// Request trailers, when the body had some.
    pub trailers: Option<HeaderMap>,
    pub body: Bytes,
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    health_fails: AtomicBool,
    hits: AtomicU64,
    health_hits: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// A real HTTP/1.1 backend on loopback.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Mutex<CancellationToken>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind a test backend")
    }

    /// A backend on a given address (the demo backends of `serve`).
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: Mutex::new(Mode::Normal),
            health_fails: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            health_hits: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(Backend {
            addr,
            shared,
            stop: Mutex::new(stop),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }
    /// Health checks get 503 while requests are still served normally.
    pub fn fail_health(&self, fail: bool) {
        self.shared.health_fails.store(fail, Relaxed);
    }
    /// Requests received, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Relaxed)
    }
    pub fn health_hits(&self) -> u64 {
        self.shared.health_hits.load(Relaxed)
    }
    /// The last request received (health checks excluded).
    pub fn last(&self) -> Option<Seen> {
        self.shared.seen.lock().unwrap().last().cloned()
    }
    /// Closes the listener and every open connection.
    pub fn kill(&self) {
        self.stop.lock().unwrap().cancel();
    }
    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = bind(self.addr).expect("rebind the test backend's port");
        let stop = CancellationToken::new();
        *self.stop.lock().unwrap() = stop.clone();
        tokio::spawn(accept_loop(listener, self.shared.clone(), stop));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(shared.clone(), req));
            // HTTP/1.1 and h2c prior knowledge on the same port, so any
            // test backend can serve a `protocol = "h2"` pool.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Signals hyper to drop the connection without answering.
#[derive(Debug)]
struct Abort;
impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("test backend drops the connection")
    }
}
impl std::error::Error for Abort {}

async fn answer(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Abort> {
    if let Some(key) = websocket_key(&req) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(websocket_echo(upgrade));
        shared.hits.fetch_add(1, Relaxed);
        let mut r = reply(
            &shared.name,
            StatusCode::SWITCHING_PROTOCOLS,
            TestBody::Full(None),
        );
        let h = r.headers_mut();
        h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            http::header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
                .parse()
                .unwrap(),
        );
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let request_body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    if parts.uri.path() == "/healthz" {
        shared.health_hits.fetch_add(1, Relaxed);
        let down = shared.health_fails.load(Relaxed);
        let status = if down {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(reply(
            &shared.name,
            status,
            TestBody::Full(Some(Bytes::from_static(b"ok"))),
        ));
    }
    shared.hits.fetch_add(1, Relaxed);
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        version: parts.version,
        authority: parts.uri.authority().map(|a| a.to_string()),
        trailers,
        body: request_body.clone(),
    });
    let mode = shared.mode.lock().unwrap().clone();
    let body = || TestBody::Full(Some(Bytes::from(shared.name.clone())));
    match mode {
        Mode::Normal => Ok(reply(&shared.name, StatusCode::OK, body())),
        Mode::Status(s) => Ok(reply(
            &shared.name,
            StatusCode::from_u16(s).unwrap(),
            body(),
        )),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(reply(&shared.name, StatusCode::OK, body()))
        }
        Mode::Hang => std::future::pending().await,
        Mode::Reset => Err(Abort),
        Mode::CloseMidResponse => {
            let mut r = reply(&shared.name, StatusCode::OK, TestBody::broken());
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, "100".parse().unwrap());
            Ok(r)
        }
        Mode::CloseMidChunked => Ok(reply(&shared.name, StatusCode::OK, TestBody::broken())),
        Mode::Trailers => {
            let mut t = HeaderMap::new();
            t.insert("x-trailer", "done".parse().unwrap());
            Ok(reply(
                &shared.name,
                StatusCode::OK,
                TestBody::Trailers(Some(Bytes::from(shared.name.clone())), Some(t)),
            ))
        }
        Mode::Echo => Ok(reply(
            &shared.name,
            StatusCode::OK,
            TestBody::Full(Some(request_body)),
        )),
    }
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let upgrade = req.headers().get(http::header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    req.headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned)
}

/// Echoes every text and binary message until the client closes.
async fn websocket_echo(upgrade: hyper::upgrade::OnUpgrade) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Ok(io) = upgrade.await else { return };
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None)
            .await;
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            return;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

fn reply(name: &str, status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

/// A body that is either whole, whole with trailers, or breaks after its
/// first chunk.
enum TestBody {
    Full(Option<Bytes>),
    /// The first chunk, then (after a pause, so the head and chunk are
    /// surely on the wire) an error that makes hyper drop the connection.
    Broken(Option<Bytes>, Option<Pin<Box<tokio::time::Sleep>>>),
    Trailers(Option<Bytes>, Option<HeaderMap>),
}

impl TestBody {
    fn broken() -> Self {
        TestBody::Broken(Some(Bytes::from_static(b"part")), None)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Abort;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Abort>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Broken(b, pause) => {
                if let Some(b) = b.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                let pause = pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                match pause.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Abort))),
                    Poll::Pending => Poll::Pending,
                }
            }
            TestBody::Trailers(b, t) => Poll::Ready(match b.take() {
                Some(b) => Some(Ok(Frame::data(b))),
                None => t.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }
    // An exact size makes hyper send Content-Length, as most real backends do.
    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Full(None))
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Broken(..) | TestBody::Trailers(..) => SizeHint::default(),
        }
    }
}

/// A request as a [`RawBackend`] read it off the wire.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    /// The head, request line to blank line included, byte for byte.
    pub head: String,
    /// The body as it came on the wire (chunk sizes and trailers
    /// included), as far as the backend read it.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The values of header `name` (any case), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// What a [`RawBackend`] does with a request whose head it has read.
pub enum RawReply {
    /// Reads the body, writes these bytes, keeps the connection.
    Send(Vec<u8>),
    /// Reads the body, writes these bytes, closes the connection.
    SendAndClose(Vec<u8>),
    /// Writes these bytes and closes at once, without reading the body.
    Early(Vec<u8>),
    /// Reads the body and never answers (a hung backend).
    Silent,
}

/// An HTTP/1.1 backend on loopback that writes exactly the bytes a test
/// gives it and records exactly what it received: for what a real
/// server would never send, and for checking the bytes the proxy sent.
pub struct RawBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    stop: CancellationToken,
}

type Replier = dyn Fn(&RawRequest) -> RawReply + Send + Sync;

impl RawBackend {
    pub async fn start(reply: impl Fn(&RawRequest) -> RawReply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let reply: Arc<Replier> = Arc::new(reply);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let (seen, reply, stop) = (seen2.clone(), reply.clone(), stop2.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = raw_conn(s, seen, reply) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        RawBackend { addr, seen, stop }
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn raw_conn(mut s: TcpStream, seen: Arc<Mutex<Vec<RawRequest>>>, reply: Arc<Replier>) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !raw_read(&mut s, &mut buf).await {
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let mut req = RawRequest {
            head: String::from_utf8_lossy(&head).into_owned(),
            body: Vec::new(),
        };
        let answer = reply(&req);
        if let RawReply::Early(bytes) = &answer {
            seen.lock().unwrap().push(req);
            let _ = s.write_all(bytes).await;
            return;
        }
        let length = req
            .header("content-length")
            .first()
            .map(|v| v.parse().unwrap());
        let chunked = req
            .header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let complete = |b: &[u8]| raw_body_len(b, length, chunked);
        let n = loop {
            if let Some(n) = complete(&buf) {
                break n;
            }
            if !raw_read(&mut s, &mut buf).await {
                req.body = std::mem::take(&mut buf);
                seen.lock().unwrap().push(req);
                return;
            }
        };
        req.body = buf.drain(..n).collect();
        seen.lock().unwrap().push(req);
        match answer {
            RawReply::Silent => return std::future::pending().await,
            RawReply::Send(bytes) => {
                if s.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            RawReply::SendAndClose(bytes) | RawReply::Early(bytes) => {
                let _ = s.write_all(&bytes).await;
                return;
            }
        }
    }
}

async fn raw_read(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// How many bytes of `b` a whole body takes, once it is all there.
fn raw_body_len(b: &[u8], length: Option<usize>, chunked: bool) -> Option<usize> {
    if !chunked {
        let n = length.unwrap_or(0);
        return (b.len() >= n).then_some(n);
    }
    let mut at = 0;
    loop {
        let line = b[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[at..at + line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2;
        if size == 0 {
            // Trailer lines up to the blank one.
            loop {
                let line = b[at..].windows(2).position(|w| w == b"\r\n")?;
                at += line + 2;
                if line == 0 {
                    return Some(at);
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// A loopback address whose connects hang: a listener with backlog 1 that
/// never accepts, its accept queue filled, so the kernel drops further SYNs.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fill: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = s.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fill = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(c)) => fill.push(c),
                _ => break,
            }
        }
        Blackhole {
            addr,
            _listener: listener,
            _fill: fill,
        }
    }
}

// ---- snapshots ----

/// A pool of `backends` (weight 1 each) with short test timeouts, round
/// robin, no health checks, no outlier ejection, no retries.
pub fn pool(name: &str, backends: &[SocketAddr]) -> Pool {
    Pool {
        name: name.into(),
        algorithm: Algorithm::RoundRobin,
        protocol: Protocol::Http1,
        backends: backends
            .iter()
            .map(|&addr| BackendCfg { addr, weight: 1 })
            .collect(),
        health: None,
        outlier: None,
        panic_threshold: 0.0,
        slow_start: None,
        idle_per_backend: Pool::DEFAULT_IDLE_PER_BACKEND,
        timeouts: Timeouts {
            connect: Duration::from_millis(300),
            response: Duration::from_millis(300),
            idle: Duration::from_secs(30),
            tunnel: Duration::from_secs(30),
        },
        retries: Retries {
            attempts: 0,
            budget: 0.2,
            min_concurrent: 3,
        },
    }
}

/// A fast health check: every 50 ms, flips after 2 results.
pub fn health_check() -> HealthCheck {
    HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        expect_status: (200, 299),
    }
}

/// Builds a [`Snapshot`] with one listener named "test".
pub struct SnapshotBuilder(Snapshot);

impl Default for SnapshotBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        SnapshotBuilder(Snapshot {
            version: "test-1".into(),
            hash: "0123456789ab".into(),
            admin: None,
            listeners: vec![Listener {
                name: "test".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                header_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(30),
                body_timeout: Duration::from_secs(5),
                min_body_rate: 1024,
                send_timeout: Duration::from_secs(5),
                limits: Limits::DEFAULT,
                http2: Http2::DEFAULT,
                tls: None,
            }],
            routes: Routes::default(),
            pools: Vec::new(),
            access_log: None,
            guard: fulcrum_config::snapshot::Guard::DEFAULT,
            tests: Vec::new(),
        })
    }
    /// The label `v`, and a content hash of its own, as a config that
    /// names a new version has new content.
    pub fn version(mut self, v: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut h);
        self.0.version = v.into();
        self.0.hash = format!("{:012x}", h.finish() & 0xffff_ffff_ffff).into();
        self
    }
    /// The content hash alone: another config under the same label.
    pub fn hash(mut self, h: &str) -> Self {
        self.0.hash = h.into();
        self
    }
    pub fn pool(mut self, pool: Pool) -> Self {
        self.0.pools.push(pool);
        self
    }
    /// A route to the pool named `pool` (which must be added first).
    pub fn route(mut self, name: &str, matcher: RouteMatch, pool: &str) -> Self {
        let (idx, _) = self.0.pool(pool).expect("add the pool before its route");
        let mut routes = self.0.routes.to_vec();
        routes.push(Route {
            name: name.into(),
            matcher,
            pool: idx,
            failure_statuses: fulcrum_config::snapshot::StatusSet::client_and_server_errors(),
        });
        self.0.routes = Routes::new(routes);
        self
    }
    /// A route taking every request to `pool`.
    pub fn catch_all(self, pool: &str) -> Self {
        self.route("all", RouteMatch::default(), pool)
    }
    pub fn listener_timeouts(mut self, header: Duration, idle: Duration) -> Self {
        self.0.listeners[0].header_timeout = header;
        self.0.listeners[0].idle_timeout = idle;
        self
    }
    /// Changes the listener's settings (limits, TLS, HTTP/2, timeouts).
    pub fn listener(mut self, f: impl FnOnce(&mut Listener)) -> Self {
        f(&mut self.0.listeners[0]);
        self
    }
    pub fn edit(mut self, f: impl FnOnce(&mut Snapshot)) -> Self {
        f(&mut self.0);
        self
    }
    pub fn build(self) -> Snapshot {
        self.0
    }
}

/// `DataPlane` + `serve` on 127.0.0.1:0, in-process.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub plane: Arc<DataPlane>,
    /// What a control plane would hold: tests change the config through it.
    pub writer: fulcrum_proxy::Writer,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    /// A proxy whose one route sends every request to `pool`.
    pub async fn serving(pool: Pool) -> TestProxy {
        let name = pool.name.clone();
        TestProxy::start(SnapshotBuilder::new().pool(pool).catch_all(&name).build()).await
    }

    pub async fn start(snapshot: Snapshot) -> TestProxy {
        let name = snapshot.listeners[0].name.clone();
        let (plane, writer) = DataPlane::new(snapshot);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fulcrum_proxy::serve(
            listener,
            name,
            plane.clone(),
            shutdown.clone(),
        ));
        TestProxy {
            addr,
            plane,
            writer,
            shutdown,
            task: Some(task),
        }
    }
    pub fn swap(&self, snapshot: Snapshot) {
        self.writer.swap(snapshot);
    }
    /// Starts a graceful shutdown; the returned handle finishes when
    /// `serve` returns.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        self.shutdown.cancel();
        self.task.take().expect("shut down once")
    }
    pub async fn shutdown(mut self) {
        self.begin_shutdown().await.unwrap().unwrap();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---- client ----

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The backend that answered, from its `x-backend` header.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client aimed at one proxy.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            inner: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// An HTTP/2 client with prior knowledge (h2c): every request on one
    /// multiplexed connection.
    pub fn h2c(addr: SocketAddr) -> Client {
        Client {
            addr,
            inner: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    /// A request to `http://host{path}` sent to the proxy.
    pub fn request(&self, method: Method, host: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("host", host)
    }

    pub async fn send(&self, req: http::request::Builder, body: impl Into<Bytes>) -> Reply {
        let resp = self
            .inner
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .expect("the proxy answers");
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Reply {
            status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.send(self.request(Method::GET, host, path), Bytes::new())
            .await
    }

    /// Sends `n` GETs one after another; counts answers per backend name
    /// (or "status NNN" for answers without one).
    pub async fn tally(&self, n: usize, host: &str, path: &str) -> HashMap<String, usize> {
        let mut t = HashMap::new();
        for _ in 0..n {
            let r = self.get(host, path).await;
            let k = r
                .backend()
                .map_or_else(|| format!("status {}", r.status), str::to_owned);
            *t.entry(k).or_insert(0) += 1;
        }
        t
    }
}

/// Polls `cond` every 10 ms until it holds, for at most `limit`. For
/// waiting on background tasks (health checks) without a fixed sleep.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
