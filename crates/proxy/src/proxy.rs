//! The request path: screen the request (smuggling shapes, limits), route,
//! pick a backend, forward with rewritten headers over HTTP/1.1 or HTTP/2,
//! retry within the budget, and stream the response back, keeping the
//! backend's in-flight count and the access log entry until the last byte.
//! Upgrades (WebSocket) become tunnels once both sides agree.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fastrand::Rng;
use fulcrum_config::snapshot::host_of;
use fulcrum_config::snapshot::{Limits, RequestView, Retries};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::backend::InFlight;
use crate::balance::{Census, hash_key};
use crate::body::{ClientBody, ClientBodyError, RawBody, RequestBody};
use crate::conn::{ConnGuard, ConnInfo};
use crate::counters::Counters;
use crate::error::Cause;
use crate::error::ProxyError;
use crate::h2::{H2Backend, H2ConnectError, SentBody};
use crate::headers::{self, REQUEST_ID};
use crate::http1::client::{self as h1, H1Body, H1Error};
use crate::http1::framing::FramingError;
use crate::outlier;
use crate::runtime::{DataPlane, PoolRuntime, PoolShared, Runtime, Staged};
use crate::stats::{Cohort, Outcome};

/// Request bodies up to this size are buffered so the request can be sent
/// again; larger or chunked bodies stream and are never retried.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

impl ClientBodyError {
    pub(crate) fn to_proxy_error(&self) -> ProxyError {
        match self {
            ClientBodyError::Read(_) => ProxyError::ClientBody,
            ClientBodyError::TooLarge => ProxyError::BodyTooLarge,
            ClientBodyError::Timeout | ClientBodyError::TooSlow => ProxyError::BodyTimeout,
        }
    }
}

/// Body sent to the client. Holds everything that must live exactly as
/// long as the response: the backend's in-flight count, the pool's request
/// gauge (retry budget), the connection's idle clock and the log entry.
/// An HTTP/1.1 backend body puts its connection back in the pool itself,
/// as soon as it has read the body's end.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    /// Set for backend bodies: counts a backend breaking off mid-body.
    counters: Option<Arc<Counters>>,
    in_flight: Option<InFlight>,
    request_gauge: Option<RequestGauge>,
    /// HTTP/2 only: an HTTP/1.1 connection knows when its response ends,
    /// and whether its client takes it.
    conn: Option<ConnGuard>,
    /// The request's outcome, recorded when the response ends.
    track: Option<Track>,
    /// Boxed: it is large, and the response is moved several times.
    log: Option<Box<LogContext>>,
}

/// A request's outcome in the making: where it went and how it ended,
/// with the runtimes it was served by (held, so the statistics it counts
/// in are its version's even after a reload).
pub(crate) struct Track {
    staged: Arc<Staged>,
    cohort: Cohort,
    route: Option<u32>,
    pool: Option<u32>,
    attempt: Attempt,
    status: u16,
    cause: Option<Cause>,
    start: Instant,
}

/// The backend the last attempt went to, and how many attempts there were.
#[derive(Debug, Default, Clone, Copy)]
struct Attempt {
    backend: Option<u32>,
    count: u32,
}

impl Track {
    fn new(
        staged: Arc<Staged>,
        cohort: Cohort,
        route: Option<u32>,
        pool: Option<u32>,
        start: Instant,
    ) -> Track {
        Track {
            staged,
            cohort,
            route,
            pool,
            attempt: Attempt::default(),
            status: 0,
            cause: None,
            start,
        }
    }

    fn outcome(&self, end: Instant) -> Outcome {
        Outcome {
            route: self.route,
            pool: self.pool,
            backend: self.attempt.backend,
            status: self.status,
            cause: self.cause,
            latency: end.saturating_duration_since(self.start),
            cohort: self.cohort,
        }
    }
}

/// A response body as it comes from a backend, or one the proxy made.
enum Inner {
    H1(H1Body),
    H2(Incoming),
    Full(Option<Bytes>),
}

/// Why a backend's response body broke off.
#[derive(Debug)]
pub struct BodyError(BodyErrorKind);

#[derive(Debug)]
enum BodyErrorKind {
    H1(h1::Error),
    H2(hyper::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyErrorKind::H1(e) => e.fmt(f),
            BodyErrorKind::H2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            BodyErrorKind::H1(e) => Some(e),
            BodyErrorKind::H2(e) => Some(e),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(c) = this.conn.as_mut() {
            c.polled();
        }
        let frame = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::H1(s) => Pin::new(s)
                .poll_frame(cx)
                .map_err(|e| BodyError(BodyErrorKind::H1(e))),
            Inner::H2(s) => Pin::new(s)
                .poll_frame(cx)
                .map_err(|e| BodyError(BodyErrorKind::H2(e))),
        };
        let frame = match frame {
            // What may not be a trailer never reaches a client.
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => {
                let t = f.into_trailers().expect("a trailers frame");
                Poll::Ready(headers::allowed_trailers(t).map(|t| Ok(Frame::trailers(t))))
            }
            frame => frame,
        };
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                    if let Some(c) = this.conn.as_mut() {
                        c.gave();
                    }
                }
            }
            // The error reaches the client connection, which closes
            // unfinished (HTTP/1.1) or resets the stream (HTTP/2): the
            // client can never take a truncated body for a whole one.
            Poll::Ready(Some(Err(_))) => {
                if let Some(c) = &this.counters {
                    Counters::inc(&c.backend_aborted_mid_response);
                }
            }
            _ => {}
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::H1(s) => s.is_end_stream(),
            Inner::H2(s) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::H1(s) => s.size_hint(),
            Inner::H2(s) => s.size_hint(),
        }
    }
}

impl ResponseBody {
    /// The headers of a response from an HTTP/1.1 backend, kept as lines
    /// (the response's own map then holds only what the proxy added).
    pub(crate) fn lines(&self) -> Option<&crate::http1::head::Lines> {
        match &self.inner {
            Inner::H1(b) => Some(b.lines()),
            _ => None,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.track.is_some() {
            self.record(Instant::now());
        }
    }
}

impl ResponseBody {
    /// The client has all of the body: its outcome is recorded, and what
    /// it held for the backend (the in-flight count, the request gauge)
    /// goes, as when it drops.
    /// `at`: when (the client connection's clock, read once for both).
    pub(crate) fn finish(&mut self, at: Instant) {
        self.record(at);
        self.in_flight = None;
        self.request_gauge = None;
    }

    /// The one place a request's outcome is recorded (once: when the
    /// client connection has written the body, else when it drops): in
    /// its version's statistics always, and as an access-log entry when
    /// the log is on or the request is sampled for the recent-requests
    /// reservoir.
    fn record(&mut self, end: Instant) {
        if let Some(track) = self.track.take() {
            record(track, self.log.take(), self.bytes, end);
        }
    }
}

/// Records a request's outcome in its version's statistics, and as an
/// access-log entry when the log is on or the request is sampled for the
/// recent-requests reservoir.
fn record(track: Track, log: Option<Box<LogContext>>, bytes: u64, end: Instant) {
    let outcome = track.outcome(end);
    let rt = track.staged.runtime(track.cohort);
    rt.stats.record(&outcome);
    if let Some(log) = log {
        let entry = log.ctx.entry(rt, &outcome, track.attempt.count, bytes);
        if log.sampled {
            rt.recent.push(entry.clone());
        }
        if let Some(sink) = &log.sink {
            sink.send(entry);
        }
    }
}

/// A request at the pool, whose client may leave before its response
/// head (the request is then dropped where it waits): its outcome is
/// still recorded, as `499` (NGINX's "client closed request"), the
/// client's doing. Holds the request's log context and last attempt until
/// [`Abandoned::answered`].
struct Abandoned<'a> {
    staged: &'a Arc<Staged>,
    cohort: Cohort,
    route: Option<u32>,
    pool: Option<u32>,
    start: Instant,
    attempt: Attempt,
    log: Option<Box<LogContext>>,
    answered: bool,
}

/// What NGINX logs for a client that closed its request before the
/// response: not a status any response carries.
pub(crate) const CLIENT_CLOSED: u16 = 499;

impl Abandoned<'_> {
    /// The response head came: the request's log context and last
    /// attempt, for its response to record.
    fn answered(mut self) -> (Option<Box<LogContext>>, Attempt) {
        self.answered = true;
        (self.log.take(), self.attempt)
    }

    /// Records the request as its client left it.
    #[cold]
    fn record(&mut self) {
        let mut track = Track::new(
            self.staged.clone(),
            self.cohort,
            self.route,
            self.pool,
            self.start,
        );
        track.attempt = self.attempt;
        track.status = CLIENT_CLOSED;
        track.cause = Some(Cause::Client);
        record(track, self.log.take(), 0, Instant::now());
    }
}

impl Drop for Abandoned<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.answered {
            self.record();
        }
    }
}

/// What an access-log entry needs beyond the outcome, gathered only when
/// the log is on or the request is sampled.
struct LogContext {
    sink: Option<crate::access_log::AccessLog>,
    /// Kept among the recent requests.
    sampled: bool,
    ctx: LogFields,
}

struct LogFields {
    time: SystemTime,
    method: Method,
    host: Option<String>,
    path: String,
    request_id: HeaderValue,
    client: SocketAddr,
    captured: crate::access_log::Captured,
}

impl LogFields {
    fn entry(self, rt: &Runtime, o: &Outcome, attempts: u32, bytes: u64) -> Entry {
        let s = &rt.snapshot;
        let route = o.route.map(|r| &s.routes[r as usize]);
        let pool = o.pool.map(|p| &s.pools[p as usize]);
        Entry {
            time: self.time,
            method: self.method,
            host: self.host,
            path: self.path,
            route: route.map(|r| r.name.clone()),
            pool: pool.map(|p| p.name.clone()),
            backend: pool
                .zip(o.backend)
                .map(|(p, b)| p.backends[b as usize].addr),
            status: o.status,
            duration_ms: o.latency.as_secs_f64() * 1000.0,
            bytes,
            version: s.version.clone(),
            config_hash: s.hash.clone(),
            cohort: o.cohort,
            request_id: self.request_id,
            client_ip: self.client.ip(),
            attempts,
            captured: self.captured,
        }
    }
}

/// Counts a request in its pool's gauge, the base of the retry budget.
struct RequestGauge(Arc<PoolShared>);
impl RequestGauge {
    fn new(shared: &Arc<PoolShared>) -> Self {
        shared.requests.fetch_add(1, Relaxed);
        RequestGauge(shared.clone())
    }
}
impl Drop for RequestGauge {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// Counts a retry attempt in flight, against the pool's retry budget.
struct RetryGauge(Arc<PoolShared>);
impl RetryGauge {
    /// Envoy-style budget: retries in flight may not exceed
    /// max(min_concurrent, budget × requests in flight).
    fn try_new(shared: &Arc<PoolShared>, budget: f64, min_concurrent: u32) -> Option<Self> {
        let allowed = (budget * shared.requests.load(Relaxed) as f64).max(min_concurrent as f64);
        let now = shared.retries.fetch_add(1, Relaxed);
        if now as f64 >= allowed {
            shared.retries.fetch_sub(1, Relaxed);
            return None;
        }
        Some(RetryGauge(shared.clone()))
    }
}
impl Drop for RetryGauge {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Relaxed);
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    plane: &DataPlane,
    req: Request<RawBody>,
    info: &Arc<ConnInfo>,
    conn: Option<ConnGuard>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let client = info.client;
    let staged = plane.staged();
    let (rt, cohort) = staged.pick(client.ip());
    let mut rng = Rng::new();
    let scan = HeadScan::of(req.headers());
    let request_id = headers::request_id(scan.request_id, &mut rng);
    let close = req.version() <= Version::HTTP_11;
    let version = req.version();
    let host = host_of(scan.host, req.uri());
    let log = request_log(rt, &req, host.as_deref(), &request_id, client);
    if let Err(e) = screen(&req, &scan, &info.settings.limits) {
        count_refusal(&plane.counters, &e);
        tracing::debug!(%client, error = %e, "request refused");
        let track = Track::new(staged, cohort, None, None, start);
        return error_response(&e, request_id, conn, track, log, None, None, close);
    }
    // An HTTP/1.1 Upgrade (WebSocket): the request goes to the backend
    // with its Upgrade header intact.
    let upgrade = upgrade_of(&req, &scan);
    let host_header = scan.host.cloned();
    let connection = scan.connection;

    let view = RequestView {
        method: req.method(),
        host: host.as_deref(),
        path: req.uri().path(),
        headers: req.headers(),
    };
    let routed = rt.snapshot.route(&view);
    let pool = routed.map(|(_, r)| &rt.pools[r.pool]);
    let key = pool.and_then(|p| {
        p.balancer
            .hash_policy()
            .and_then(|policy| hash_key(policy, &view, client.ip()))
    });

    drop(host);
    let route = routed.map(|(i, _)| i as u32);
    let pool_index = routed.map(|(_, r)| r.pool as u32);

    let (pool, gauge) = match pool {
        Some(p) => (p, RequestGauge::new(&p.shared)),
        None => {
            Counters::inc(&plane.counters.client_no_route);
            return error_response(
                &ProxyError::NoRoute,
                request_id,
                conn,
                Track::new(staged, cohort, None, None, start),
                log,
                None,
                None,
                false,
            );
        }
    };
    // WebSocket needs HTTP/1.1 on the backend side too.
    let upgrade = upgrade.filter(|_| pool.h2.is_none());
    let ctx = Forwarding {
        counters: &plane.counters,
        client_ip: &info.client_ip,
        tls: info.tls,
        limits: &info.settings.limits,
        body_timeout: info.settings.body_timeout,
        min_body_rate: info.settings.min_body_rate,
        upgrade: upgrade.clone(),
        host: host_header,
        connection,
        kept: &rt.routing_headers,
    };

    let upgrade = upgrade.is_some().then_some(pool.timeouts.tunnel);
    let mut pending = Abandoned {
        staged: &staged,
        cohort,
        route,
        pool: pool_index,
        start,
        attempt: Attempt::default(),
        log,
        answered: false,
    };
    let result = forward(
        pool,
        req,
        &ctx,
        &request_id,
        key,
        &mut rng,
        &mut pending.attempt,
    )
    .await;
    let (log, attempt) = pending.answered();
    // Moved, not cloned: the request holds what serves until its response
    // ends, with no second count on the one reference every thread shares.
    let track = Track {
        attempt,
        ..Track::new(staged, cohort, route, pool_index, start)
    };
    match result {
        Ok((resp, in_flight)) => {
            let held = Held {
                in_flight,
                gauge,
                conn,
                track,
                log,
            };
            backend_response(resp, held, upgrade, info, version, request_id)
        }
        Err(e) => {
            count_refusal(&plane.counters, &e);
            // A client fault mid-body leaves the connection's framing
            // unknown: close it.
            let close_it = close && e.cause() == Cause::Client;
            error_response(
                &e,
                request_id,
                conn,
                track,
                log,
                Some(gauge),
                None,
                close_it,
            )
        }
    }
}

/// The request's log context, when the access log is on or the request is
/// sampled for the recent-requests reservoir.
fn request_log(
    rt: &Runtime,
    req: &Request<RawBody>,
    host: Option<&str>,
    request_id: &HeaderValue,
    client: SocketAddr,
) -> Option<Box<LogContext>> {
    let sampled = rt.recent.sample();
    (rt.access_log.is_some() || sampled).then(|| {
        log_context(
            rt.access_log.clone(),
            sampled,
            rt,
            req,
            host,
            request_id,
            client,
        )
    })
}

/// What an access-log entry needs of a request, gathered only when the
/// log is on or the request is sampled.
fn log_context(
    sink: Option<crate::access_log::AccessLog>,
    sampled: bool,
    rt: &Runtime,
    req: &Request<RawBody>,
    host: Option<&str>,
    request_id: &HeaderValue,
    client: SocketAddr,
) -> Box<LogContext> {
    Box::new(LogContext {
        sink,
        sampled,
        ctx: LogFields {
            time: SystemTime::now(),
            method: req.method().clone(),
            host: host.map(str::to_owned),
            path: req.uri().path().to_owned(),
            request_id: request_id.clone(),
            client,
            captured: crate::access_log::capture(&rt.log_keys, req.headers()),
        },
    })
}

/// What a response body holds until the response's last byte.
struct Held {
    in_flight: InFlight,
    gauge: RequestGauge,
    conn: Option<ConnGuard>,
    track: Track,
    log: Option<Box<LogContext>>,
}

/// A backend's response as it goes to the client. `upgrade`: the request
/// asked for an upgrade the pool carries, and the tunnel's idle timeout.
fn backend_response(
    resp: Response<Inner>,
    held: Held,
    upgrade: Option<Duration>,
    info: &ConnInfo,
    client: Version,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let h2_client = client == Version::HTTP_2;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let Inner::H1(b) = resp.body()
        && b.lines().codings.is_some()
        && client != Version::HTTP_11
    {
        // A transfer coding (`gzip`) only an HTTP/1.1 client can take off.
        Counters::inc(&info.plane.counters.backend_invalid_response);
        let e = ProxyError::BadResponse {
            backend: held.in_flight.backend().addr(),
            why: "a transfer coding other than chunked, which this client cannot take",
        };
        let Held {
            gauge,
            conn,
            track,
            log,
            ..
        } = held;
        return error_response(&e, request_id, conn, track, log, Some(gauge), None, false);
    }
    let (mut parts, mut body) = resp.into_parts();
    if let Some(idle) = upgrade
        && switching
        && let Inner::H1(b) = &mut body
        && let Some(backend) = b.take_upgrade()
    {
        // The client connection becomes the tunnel once it has sent this
        // 101 (see http1::server).
        let tunnel = crate::tunnel::Tunnel { backend, idle };
        *info.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
    }
    match &body {
        // Our HTTP/1.1 codec passes the backend's headers on as lines (the
        // request id among them), with no hop-by-hop header but a 101's
        // Upgrade: an HTTP/1.1 client gets them as they are, an HTTP/2 one
        // (which has no upgrades) as a map.
        Inner::H1(b) if h2_client => parts.headers = b.lines().to_map(),
        Inner::H1(_) if switching => {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        Inner::H1(_) => {}
        _ => {
            headers::strip_hop_by_hop(&mut parts.headers, &[]);
            parts.headers.insert(REQUEST_ID.clone(), request_id);
        }
    }
    let mut track = held.track;
    track.status = parts.status.as_u16();
    let body = ResponseBody {
        inner: body,
        bytes: 0,
        counters: Some(info.plane.counters.clone()),
        in_flight: Some(held.in_flight),
        request_gauge: Some(held.gauge),
        conn: held.conn,
        track: Some(track),
        log: held.log,
    };
    Response::from_parts(parts, body)
}

/// What `forward` needs from the connection and the listener.
struct Forwarding<'a> {
    counters: &'a Counters,
    client_ip: &'a HeaderValue,
    tls: bool,
    limits: &'a Limits,
    body_timeout: Duration,
    min_body_rate: u32,
    /// The client's Upgrade header, when the request is an upgrade the
    /// pool can carry.
    upgrade: Option<HeaderValue>,
    /// The client's Host header.
    host: Option<HeaderValue>,
    /// Whether the client sent a Connection header (which may name more
    /// hop-by-hop headers).
    connection: bool,
    /// Headers a Connection header may not name away: what routing read.
    kept: &'a [HeaderName],
}

/// One pass over a request's headers: what the screen and the request
/// path need of them, so that none is looked up by hash again. The
/// length headers are not among them: the HTTP/1.1 codec decided the
/// body's framing once, and the screen reads that decision.
#[derive(Default)]
struct HeadScan<'a> {
    /// Name and value bytes, as counted against `max_header_bytes`.
    bytes: usize,
    hosts: u32,
    host: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
    upgrade: Option<&'a HeaderValue>,
    connection: bool,
}

impl<'a> HeadScan<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut scan = HeadScan::default();
        for (n, v) in headers {
            scan.bytes += n.as_str().len() + v.len() + 4;
            if n == header::HOST {
                scan.hosts += 1;
                scan.host.get_or_insert(v);
            } else if n == header::CONNECTION {
                scan.connection = true;
            } else if n == header::UPGRADE {
                scan.upgrade.get_or_insert(v);
            } else if n == REQUEST_ID {
                scan.request_id.get_or_insert(v);
            }
        }
        scan
    }
}

/// Refuses what the proxy and a backend could read differently (request
/// smuggling), what names no valid host, and what is over the listener's
/// limits, before any routing or backend work. The HTTP/1.1 codec already
/// refuses, with 400 and a closed connection, whitespace before a header
/// colon, NUL and bare CR in headers; it decides the body's framing and
/// passes every header on as it came, and never reads the body of a
/// request whose framing it could not decide.
fn screen(req: &Request<RawBody>, scan: &HeadScan<'_>, limits: &Limits) -> Result<(), ProxyError> {
    if req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > limits.max_uri_bytes as usize)
    {
        return Err(ProxyError::UriTooLong);
    }
    // The HTTP/1.1 parser bounds these as it reads; HTTP/2 bounds only
    // the total, so count here for both.
    if req.headers().len() > limits.max_headers as usize {
        return Err(ProxyError::HeaderTooLarge);
    }
    if scan.bytes > limits.max_header_bytes as usize {
        return Err(ProxyError::HeaderTooLarge);
    }
    match req.body().framing_error() {
        Some(FramingError::Ambiguous(why)) => return Err(ProxyError::BadRequest(why)),
        Some(FramingError::TooLarge) => return Err(ProxyError::BodyTooLarge),
        None => {}
    }
    screen_host(req, scan)?;
    if req.method() == Method::CONNECT {
        return Err(ProxyError::NotImplemented(
            "CONNECT: Fulcrum is a reverse proxy, not a tunnel to any host",
        ));
    }
    if req.body().size_hint().lower() > limits.max_body_bytes {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: one Host, a valid `host[:port]`,
/// required in HTTP/1.1; the request target's authority (HTTP/2's
/// `:authority`), when it has one, valid too, and in HTTP/1.1 the same as
/// the Host. What routing and X-Forwarded-Host read
/// is therefore always a valid authority.
fn screen_host(req: &Request<RawBody>, scan: &HeadScan<'_>) -> Result<(), ProxyError> {
    if scan.hosts > 1 {
        return Err(ProxyError::BadRequest("several Host headers"));
    }
    if let Some(host) = scan.host
        && !headers::is_authority(host.as_bytes())
    {
        return Err(ProxyError::BadRequest("Host is not a valid host[:port]"));
    }
    let authority = req.uri().authority();
    if let Some(auth) = authority
        && !headers::is_authority(auth.as_str().as_bytes())
    {
        return Err(ProxyError::BadRequest(
            "the request target's authority is not a valid host[:port]",
        ));
    }
    let http1 = req.version() <= Version::HTTP_11;
    match (authority, scan.host) {
        // Over HTTP/2 the Host header, when sent, is what routing reads
        // and what the backend gets, whatever `:authority` said.
        (Some(auth), Some(host))
            if http1
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(auth.as_str().as_bytes()) =>
        {
            Err(ProxyError::BadRequest(
                "Host header differs from the request target's authority",
            ))
        }
        (_, None) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("no Host header"))
        }
        (None, None) if req.version() == Version::HTTP_2 => {
            Err(ProxyError::BadRequest("neither :authority nor Host"))
        }
        _ => Ok(()),
    }
}

/// The Upgrade header of an HTTP/1.1 WebSocket upgrade request
/// (`Connection: upgrade` plus `Upgrade: websocket`). Any other protocol
/// is not carried: its Upgrade is hop-by-hop and stays behind. A tunnel to
/// a backend that switches to, say, `h2c` would let the client send it
/// requests no route, limit or log of ours ever sees (h2c smuggling).
fn upgrade_of(req: &Request<RawBody>, scan: &HeadScan<'_>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !scan.connection {
        return None;
    }
    let websocket = scan
        .upgrade
        .filter(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| websocket.clone())
}

/// Counts a request that ended in an error response, by what failed.
/// Backend failures are counted per attempt, in `forward`.
fn count_refusal(c: &Counters, e: &ProxyError) {
    let counter = match e {
        ProxyError::NoRoute => &c.client_no_route,
        ProxyError::ClientBody | ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) => {
            &c.client_bad_request
        }
        ProxyError::HeaderTooLarge => &c.client_header_too_large,
        ProxyError::UriTooLong => &c.client_uri_too_long,
        ProxyError::BodyTooLarge => &c.client_body_too_large,
        ProxyError::BodyTimeout => &c.client_body_timeout,
        ProxyError::NoBackend { .. } => &c.pool_no_backend,
        _ => return,
    };
    Counters::inc(counter);
}

/// Counts one failed attempt at a backend.
fn count_attempt(c: &Counters, e: &ProxyError) {
    let counter = match e {
        ProxyError::ConnectFailed { .. } | ProxyError::BackendProtocol { .. } => {
            &c.backend_connect_failed
        }
        ProxyError::ConnectTimeout { .. } => &c.backend_connect_timeout,
        ProxyError::ResponseTimeout { .. } => &c.backend_response_timeout,
        ProxyError::BackendReset { .. } => &c.backend_reset,
        ProxyError::BadResponse { .. } => &c.backend_invalid_response,
        _ => return,
    };
    Counters::inc(counter);
}

/// `close`: end the HTTP/1 connection after this response, because what
/// follows the request on it cannot be trusted.
#[allow(clippy::too_many_arguments)]
fn error_response(
    e: &ProxyError,
    request_id: HeaderValue,
    conn: Option<ConnGuard>,
    mut track: Track,
    log: Option<Box<LogContext>>,
    gauge: Option<RequestGauge>,
    in_flight: Option<InFlight>,
    close: bool,
) -> Response<ResponseBody> {
    track.status = e.status().as_u16();
    track.cause = Some(e.cause());
    let body = ResponseBody {
        inner: Inner::Full(Some(Bytes::from(e.body()))),
        bytes: 0,
        counters: None,
        in_flight,
        request_gauge: gauge,
        conn,
        track: Some(track),
        log,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Sends the request to the pool, retrying as the policy and budget allow.
async fn forward(
    pool: &PoolRuntime,
    req: Request<RawBody>,
    ctx: &Forwarding<'_>,
    request_id: &HeaderValue,
    key: Option<u64>,
    rng: &mut Rng,
    tried_last: &mut Attempt,
) -> Result<(Response<Inner>, InFlight), ProxyError> {
    let (parts, body) = req.into_parts();
    let mut out = Outbound::new(parts, pool, ctx, request_id);
    let mut body = buffered(body, ctx).await?;
    let idempotent = h1::idempotent(&out.parts.method);
    let mut tried = [usize::MAX; Retries::MAX_ATTEMPTS as usize + 1];
    let max_attempts = (pool.retries.attempts as usize + 1).min(tried.len());
    let mut last_err = None;
    let mut _retry: Option<RetryGauge> = None;
    for attempt in 0..max_attempts {
        let Some(pick) = pool
            .balancer
            .pick(pool, key, &tried[..attempt], rng)
            .or_else(|| {
                // No other backend: a backend that dropped the connection
                // without a response may answer a second one (a restarted
                // process, a service address with more behind it), as HAProxy
                // retries on the same server. A refused or timed-out connect
                // would only fail again.
                matches!(last_err, Some(ProxyError::BackendReset { .. }))
                    .then(|| pool.balancer.pick(pool, key, &[], rng))
                    .flatten()
            })
        else {
            // No backend to retry on: report what went wrong last.
            return Err(last_err.unwrap_or_else(|| no_backend(pool)));
        };
        note_panic(pool, pick.panic);
        let i = pick.index;
        tried[attempt] = i;
        let backend = &pool.backends[i];
        *tried_last = Attempt {
            backend: Some(i as u32),
            count: attempt as u32 + 1,
        };
        let resendable = matches!(body, RequestBody::Full(_));
        let more = resendable && attempt + 1 < max_attempts;
        let attempt_body = match &mut body {
            RequestBody::Full(b) => RequestBody::Full(b.clone()),
            RequestBody::Stream(_) => std::mem::replace(&mut body, RequestBody::Full(None)),
        };
        let in_flight = backend.start();
        let outcome = out.send(pool, i, attempt_body, more, ctx).await;
        if let Err(e) = &outcome
            && e.cause() == crate::error::Cause::Client
        {
            // The client's fault, not the backend's.
            return Err(e.clone());
        }
        judge(pool, i, &outcome, ctx.counters);
        drop(_retry.take());
        let e = match outcome {
            Ok(resp) => return Ok((resp, in_flight)),
            Err(e) => e,
        };
        tracing::debug!(pool = %pool.name, backend = %backend.addr(), error = %e, attempt, "attempt failed");
        if !(more && e.retryable(idempotent)) {
            return Err(e);
        }
        let budget = &pool.retries;
        match RetryGauge::try_new(&pool.shared, budget.budget, budget.min_concurrent) {
            Some(g) => _retry = Some(g),
            None => {
                Counters::inc(&ctx.counters.retry_budget_exhausted);
                tracing::debug!(pool = %pool.name, "retry budget exhausted");
                return Err(e);
            }
        }
        last_err = Some(e);
    }
    Err(last_err.expect("the loop runs at least once and returns unless it failed"))
}

/// The request as every attempt sends it: its head, and what the pool's
/// protocol needs of it.
struct Outbound<'a> {
    parts: http::request::Parts,
    path: PathAndQuery,
    /// The host the client named: its Host header, else (HTTP/2) its
    /// `:authority`.
    original_host: Option<HeaderValue>,
    /// For h2 pools: `original_host` as the request's `:authority`.
    h2_authority: Option<Authority>,
    /// An HTTP/1.1 request without a Host header sends the host its URI
    /// named, or else names the backend, as any client of it would.
    host_missing: bool,
    request_id: &'a HeaderValue,
}

impl Drop for Outbound<'_> {
    fn drop(&mut self) {
        crate::http1::head::keep_map(std::mem::take(&mut self.parts.headers));
    }
}

impl<'a> Outbound<'a> {
    fn new(
        mut parts: http::request::Parts,
        pool: &PoolRuntime,
        ctx: &Forwarding<'_>,
        request_id: &'a HeaderValue,
    ) -> Self {
        // HTTP/2 clients name the host in `:authority`, not `Host`:
        // HTTP/1.1 backends get it as `Host`, HTTP/2 backends as
        // `:authority`.
        let original_host = ctx.host.clone().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // HTTP/1.1 backends get the client's headers through the encoder,
        // which leaves the hop-by-hop ones out and writes the forwarded
        // ones: the map is not changed. HTTP/2 backends get the map.
        let h2_authority = if pool.h2.is_some() {
            let forwarded = forwarded(ctx, original_host.as_ref(), request_id);
            h2_headers(&mut parts.headers, &forwarded, ctx.kept);
            original_host
                .as_ref()
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        } else {
            None
        };
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Outbound {
            parts,
            path,
            original_host,
            h2_authority,
            host_missing: pool.h2.is_none() && ctx.host.is_none(),
            request_id,
        }
    }

    /// One attempt at `pool.backends[i]`. `more`: another attempt may
    /// follow, so the head must stay.
    async fn send(
        &mut self,
        pool: &PoolRuntime,
        i: usize,
        body: RequestBody,
        more: bool,
        ctx: &Forwarding<'_>,
    ) -> Result<Response<Inner>, ProxyError> {
        if let Some(h2) = &pool.h2 {
            let mut out = Request::new(body);
            *out.method_mut() = self.parts.method.clone();
            // Over HTTP/2 the URI carries the client's authority; without
            // one (HTTP/1.0 without Host), the backend's, as over HTTP/1.1:
            // h2 refuses to send a request that has none.
            let authority = self
                .h2_authority
                .clone()
                .or_else(|| Authority::try_from(pool.authorities[i].as_bytes()).ok());
            *out.uri_mut() = match authority {
                Some(a) => {
                    let mut u = http::uri::Parts::default();
                    u.scheme = Some(Scheme::HTTP);
                    u.authority = Some(a);
                    u.path_and_query = Some(self.path.clone());
                    Uri::from_parts(u).expect("scheme, authority and path form a URI")
                }
                None => Uri::from(self.path.clone()),
            };
            *out.version_mut() = Version::HTTP_2;
            *out.headers_mut() = if more {
                self.parts.headers.clone()
            } else {
                std::mem::take(&mut self.parts.headers)
            };
            // Boxed, as the other rare paths: the request future is
            // allocated and moved per request, at its largest state's size.
            return Box::pin(send_h2(&h2[i], out, pool))
                .await
                .map(|r| r.map(Inner::H2));
        }
        // Over HTTP/1.1, origin form (the connection names the backend),
        // with the head borrowed: a retry needs no copy.
        let forwarded = forwarded(ctx, self.original_host.as_ref(), self.request_id);
        let head = h1::Outgoing {
            method: &self.parts.method,
            path: self.path.as_str(),
            headers: &self.parts.headers,
            host: self
                .host_missing
                .then(|| self.original_host.as_ref().unwrap_or(&pool.authorities[i])),
            forwarded: Some(&forwarded),
            upgrade: ctx.upgrade.as_ref(),
            connection: ctx.connection,
            kept: ctx.kept,
        };
        match pool.h1[i].send(head, body, pool.timeouts.response).await {
            Ok(resp) => Ok(resp.map(Inner::H1)),
            Err(e) => Err(classify(e, pool, pool.backends[i].addr())),
        }
    }
}

/// The X-Forwarded-* headers and request id a backend gets.
fn forwarded<'a>(
    ctx: &Forwarding<'a>,
    host: Option<&'a HeaderValue>,
    request_id: &'a HeaderValue,
) -> headers::Forwarded<'a> {
    headers::Forwarded {
        client_ip: ctx.client_ip,
        host,
        proto: if ctx.tls { "https" } else { "http" },
        request_id,
    }
}

/// The client's headers made into an HTTP/2 backend's: hop-by-hop ones
/// out, forwarded ones in, Host gone (it goes as `:authority`), framing
/// left to hyper.
fn h2_headers(headers: &mut HeaderMap, forwarded: &headers::Forwarded<'_>, kept: &[HeaderName]) {
    // gRPC and other h2 peers need to know trailers are welcome.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"trailers"))
    });
    headers::strip_hop_by_hop(headers, kept);
    forwarded.apply(headers);
    headers.remove(header::HOST);
    // The client's text (`0005`): hyper writes the length the body has.
    headers.remove(header::CONTENT_LENGTH);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The client's body as attempts send it: small or empty bodies are read
/// whole so they can be sent again; larger or chunked ones stream.
async fn buffered(body: RawBody, ctx: &Forwarding<'_>) -> Result<RequestBody, ProxyError> {
    let body = ClientBody::new(
        body,
        ctx.limits.max_body_bytes,
        ctx.body_timeout,
        ctx.min_body_rate,
    );
    Ok(match body.size_hint().exact() {
        Some(0) => RequestBody::Full(None),
        Some(n) if n <= MAX_BUFFERED_BODY => {
            let bytes = Box::pin(body.collect())
                .await
                .map_err(|e| e.to_proxy_error())?
                .to_bytes();
            RequestBody::Full(Some(bytes))
        }
        _ => RequestBody::Stream(body),
    })
}

/// No backend to send to: how many of the pool's are down.
fn no_backend(pool: &PoolRuntime) -> ProxyError {
    let c = Census::of(pool);
    ProxyError::NoBackend {
        pool: pool.name.clone(),
        healthy: c.healthy,
        weighted: c.weighted,
    }
}

/// Counts an attempt's outcome against its backend: in its failures, in
/// outlier ejection, and by kind.
fn judge(
    pool: &PoolRuntime,
    i: usize,
    outcome: &Result<Response<Inner>, ProxyError>,
    counters: &Counters,
) {
    let failed = match outcome {
        Ok(resp) => {
            let failed = resp.status().is_server_error();
            if failed {
                Counters::inc(&counters.backend_5xx);
            }
            failed
        }
        Err(e) => {
            count_attempt(counters, e);
            true
        }
    };
    if failed {
        pool.backends[i].count_failure();
    }
    if let Some(cfg) = &pool.outlier {
        outlier::record(cfg, &pool.backends, &pool.weights, i, failed);
    }
}

/// Logs a pool entering or leaving panic mode once per transition.
fn note_panic(pool: &PoolRuntime, panic: bool) {
    if pool.shared.panic.load(Relaxed) != panic && pool.shared.panic.swap(panic, Relaxed) != panic {
        let c = Census::of(pool);
        if panic {
            tracing::warn!(pool = %pool.name, healthy = c.healthy, backends = c.weighted,
                "pool entered panic mode: only {} of {} backends healthy, balancing over all of them", c.healthy, c.weighted);
        } else {
            tracing::warn!(pool = %pool.name, healthy = c.healthy, backends = c.weighted, "pool left panic mode");
        }
    }
}

/// One attempt over the backend's HTTP/2 connection, bounded by the pool's
/// connect and response timeouts: the wait for a stream, then the wait
/// for the response once the request's last byte has gone.
async fn send_h2(
    backend: &H2Backend,
    req: Request<RequestBody>,
    pool: &PoolRuntime,
) -> Result<Response<Incoming>, ProxyError> {
    let addr = backend.addr();
    let mut sender = backend.sender().await.map_err(|e| match e {
        H2ConnectError::Connect(e) => {
            tracing::debug!(backend = %addr, error = %e, "h2 connect failed");
            ProxyError::ConnectFailed { backend: addr }
        }
        H2ConnectError::Handshake(e) => {
            tracing::debug!(backend = %addr, error = %e, "h2 handshake failed");
            ProxyError::BackendProtocol { backend: addr }
        }
        H2ConnectError::Timeout => ProxyError::ConnectTimeout {
            pool: pool.name.clone(),
            backend: addr,
        },
    })?;
    let timed_out = || ProxyError::ResponseTimeout {
        pool: pool.name.clone(),
        backend: addr,
    };
    // A connection that broke on an HTTP/1 answer: a backend that does not
    // speak HTTP/2, which no request reached (so any may go elsewhere).
    let reset = |_: hyper::Error| {
        if backend.spoke_http1() {
            ProxyError::BackendProtocol { backend: addr }
        } else {
            ProxyError::BackendReset { backend: addr }
        }
    };
    let limit = pool.timeouts.response;
    match tokio::time::timeout(limit, sender.ready()).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(reset(e)),
        Ok(Ok(())) => {}
    }
    let (parts, body) = req.into_parts();
    let (body, mut upload) = SentBody::new(body);
    let response = sender.send_request(Request::from_parts(parts, body));
    tokio::pin!(response);
    // While the body goes, the client's pace is bounded by its own body
    // timeouts, and the backend must take each piece within `response`.
    loop {
        let stalled = upload.stalled_at(limit);
        let check = tokio::time::Instant::now() + limit;
        tokio::select! {
            // A body the client broke resets the stream: its fault.
            r = &mut response => return r.map_err(|e| upload.fault().unwrap_or_else(|| reset(e))),
            sent = &mut upload.sent => match sent {
                Ok(Some(fault)) => return Err(fault),
                // Sent, or dropped unsent: the response says why.
                _ => break,
            },
            () = tokio::time::sleep_until(stalled.unwrap_or(check)) => {
                if upload.stalled_at(limit).is_some_and(|t| t <= tokio::time::Instant::now()) {
                    return Err(timed_out());
                }
            }
        }
    }
    match tokio::time::timeout(limit, response).await {
        Ok(r) => r.map_err(|e| upload.fault().unwrap_or_else(|| reset(e))),
        Err(_) => Err(timed_out()),
    }
}

/// Maps a failed HTTP/1.1 attempt to who failed and how.
fn classify(e: H1Error, pool: &PoolRuntime, addr: SocketAddr) -> ProxyError {
    match e {
        H1Error::Connect(e) => {
            tracing::debug!(backend = %addr, error = %e, "connect failed");
            ProxyError::ConnectFailed { backend: addr }
        }
        H1Error::ConnectTimeout => ProxyError::ConnectTimeout {
            pool: pool.name.clone(),
            backend: addr,
        },
        H1Error::ResponseTimeout => ProxyError::ResponseTimeout {
            pool: pool.name.clone(),
            backend: addr,
        },
        H1Error::Send(h1::Error::ClientBody(e)) => e.to_proxy_error(),
        H1Error::Send(h1::Error::ClientBodyLength) => ProxyError::ClientBody,
        H1Error::Send(h1::Error::Head(e)) => {
            tracing::debug!(backend = %addr, error = %e, "invalid backend response");
            ProxyError::BadResponse {
                backend: addr,
                why: e.why(),
            }
        }
        H1Error::Send(e) => {
            tracing::debug!(backend = %addr, error = %e, "backend exchange failed");
            ProxyError::BackendReset { backend: addr }
        }
    }
}
