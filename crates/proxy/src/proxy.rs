//! The request path: route, pick a backend, forward with rewritten headers,
//! retry within the budget, and stream the response back, keeping the
//! backend's in-flight count and the access log entry until the last byte.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use fastrand::Rng;
use fulcrum_config::snapshot::{RequestView, Retries};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::backend::InFlight;
use crate::balance::{Census, hash_key};
use crate::connect::with_response_timeout;
use crate::error::ProxyError;
use crate::headers::{self, REQUEST_ID};
use crate::listener::ConnGuard;
use crate::outlier;
use crate::runtime::{DataPlane, PoolRuntime, PoolShared};

/// Request bodies up to this size are buffered so the request can be sent
/// again; larger or chunked bodies stream and are never retried.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Body sent to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// A buffered body (possibly empty), resendable on retry.
    Full(Option<Bytes>),
    /// The client's body, streamed through: one attempt only.
    Stream(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Stream(s) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream(s) => s.size_hint(),
        }
    }
}

/// Body sent to the client. Holds everything that must live exactly as
/// long as the response: the backend's in-flight count, the pool's request
/// gauge (retry budget), the connection's idle clock and the log entry.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    _in_flight: Option<InFlight>,
    _request: Option<RequestGauge>,
    _conn: ConnGuard,
    log: Option<LogContext>,
}

enum Inner {
    Backend(Incoming),
    Full(Option<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Backend(s) => Pin::new(s).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(d) = f.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Backend(s) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Backend(s) => s.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let ctx = log.ctx;
            log.sink.send(Entry {
                time: ctx.time,
                method: ctx.method,
                host: ctx.host,
                path: ctx.path,
                route: ctx.route,
                pool: ctx.pool,
                backend: ctx.backend,
                status: ctx.status,
                duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
                bytes: self.bytes,
                version: ctx.version,
                request_id: ctx.request_id,
                client_ip: ctx.client.ip(),
                attempts: ctx.attempts,
                captured: ctx.captured,
            });
        }
    }
}

/// What the access log needs, gathered only when the log is on.
struct LogContext {
    sink: crate::access_log::AccessLog,
    ctx: LogFields,
}

struct LogFields {
    time: SystemTime,
    start: Instant,
    method: Method,
    host: Option<String>,
    path: String,
    route: Option<Arc<str>>,
    pool: Option<Arc<str>>,
    backend: Option<SocketAddr>,
    status: u16,
    version: Arc<str>,
    request_id: HeaderValue,
    client: SocketAddr,
    attempts: u32,
    captured: crate::access_log::Captured,
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

/// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: safe to send twice.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Host without port, from the Host header or the URI authority.
fn host_of(req: &Request<Incoming>) -> Option<Cow<'_, str>> {
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().host()?,
    };
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        &raw[..raw.find(']').map_or(raw.len(), |i| i + 1)]
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    plane: &DataPlane,
    req: Request<Incoming>,
    client: SocketAddr,
    conn: ConnGuard,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let rt = plane.runtime();
    let mut rng = Rng::new();
    let request_id = headers::request_id(req.headers(), &mut rng);

    let host = host_of(&req);
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

    let mut log = rt.access_log.as_ref().map(|sink| LogContext {
        sink: sink.clone(),
        ctx: LogFields {
            time: SystemTime::now(),
            start,
            method: req.method().clone(),
            host: host.as_deref().map(str::to_owned),
            path: req.uri().path().to_owned(),
            route: routed.map(|(_, r)| r.name.clone()),
            pool: pool.map(|p| p.name.clone()),
            backend: None,
            status: 0,
            version: rt.snapshot.version.clone(),
            request_id: request_id.clone(),
            client,
            attempts: 0,
            captured: crate::access_log::capture(&rt.log_keys, req.headers()),
        },
    });
    drop(host);

    let (pool, gauge) = match pool {
        Some(p) => (p, RequestGauge::new(&p.shared)),
        None => return error_response(&ProxyError::NoRoute, request_id, conn, log, None, None),
    };

    let result = forward(pool, req, client, &request_id, key, &mut rng, &mut log).await;
    match result {
        Ok((resp, in_flight)) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(REQUEST_ID.clone(), request_id);
            if let Some(l) = &mut log {
                l.ctx.status = parts.status.as_u16();
            }
            let body = ResponseBody {
                inner: Inner::Backend(body),
                bytes: 0,
                _in_flight: Some(in_flight),
                _request: Some(gauge),
                _conn: conn,
                log,
            };
            Response::from_parts(parts, body)
        }
        Err(e) => error_response(&e, request_id, conn, log, Some(gauge), None),
    }
}

fn error_response(
    e: &ProxyError,
    request_id: HeaderValue,
    conn: ConnGuard,
    mut log: Option<LogContext>,
    gauge: Option<RequestGauge>,
    in_flight: Option<InFlight>,
) -> Response<ResponseBody> {
    if let Some(l) = &mut log {
        l.ctx.status = e.status().as_u16();
    }
    let body = ResponseBody {
        inner: Inner::Full(Some(Bytes::from(e.body()))),
        bytes: 0,
        _in_flight: in_flight,
        _request: gauge,
        _conn: conn,
        log,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
    resp
}

/// Sends the request to the pool, retrying as the policy and budget allow.
async fn forward(
    pool: &PoolRuntime,
    req: Request<Incoming>,
    client: SocketAddr,
    request_id: &HeaderValue,
    key: Option<u64>,
    rng: &mut Rng,
    log: &mut Option<LogContext>,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, client.ip(), original_host.as_ref());
    parts.headers.insert(REQUEST_ID.clone(), request_id.clone());

    // Small or empty bodies are read whole so they can be sent again.
    let mut body = match body.size_hint().exact() {
        Some(0) => RequestBody::Full(None),
        Some(n) if n <= MAX_BUFFERED_BODY => {
            let bytes = body
                .collect()
                .await
                .map_err(|_| ProxyError::ClientBody)?
                .to_bytes();
            RequestBody::Full(Some(bytes))
        }
        _ => RequestBody::Stream(body),
    };
    let idempotent = idempotent(&parts.method);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let mut tried = [usize::MAX; Retries::MAX_ATTEMPTS as usize + 1];
    let max_attempts = (pool.retries.attempts as usize + 1).min(tried.len());
    let mut last_err = None;
    let mut _retry: Option<RetryGauge> = None;
    for attempt in 0..max_attempts {
        let Some(pick) = pool.balancer.pick(pool, key, &tried[..attempt], rng) else {
            // No other backend to retry on: report what went wrong last.
            return Err(last_err.unwrap_or_else(|| {
                let c = Census::of(pool);
                ProxyError::NoBackend {
                    pool: pool.name.clone(),
                    healthy: c.healthy,
                    weighted: c.weighted,
                }
            }));
        };
        note_panic(pool, pick.panic);
        let i = pick.index;
        tried[attempt] = i;
        let backend = &pool.backends[i];
        if let Some(l) = log {
            l.ctx.backend = Some(backend.addr());
            l.ctx.attempts = attempt as u32 + 1;
        }

        let resendable = matches!(body, RequestBody::Full(_));
        let more = resendable && attempt + 1 < max_attempts;
        let attempt_body = match &mut body {
            RequestBody::Full(b) => RequestBody::Full(b.clone()),
            RequestBody::Stream(_) => std::mem::replace(&mut body, RequestBody::Full(None)),
        };
        let mut out = Request::new(attempt_body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = {
            let mut u = http::uri::Parts::default();
            u.scheme = Some(Scheme::HTTP);
            u.authority = Some(pool.authorities[i].clone());
            u.path_and_query = Some(path.clone());
            Uri::from_parts(u).expect("scheme, authority and path form a URI")
        };
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = if more {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };

        let in_flight = backend.start();
        let sent = with_response_timeout(
            pool.timeouts.response,
            pool.timeouts.connect,
            pool.client.request(out),
        );
        let outcome = match sent.await {
            Err(()) => Err(ProxyError::ResponseTimeout {
                pool: pool.name.clone(),
                backend: backend.addr(),
            }),
            Ok(Err(e)) => Err(classify(&e, pool, backend.addr())),
            Ok(Ok(resp)) => Ok(resp),
        };
        let failed = match &outcome {
            Ok(resp) => resp.status().is_server_error(),
            Err(_) => true,
        };
        if failed {
            backend.count_failure();
        }
        if let Some(cfg) = &pool.outlier {
            outlier::record(cfg, &pool.backends, i, failed);
        }
        drop(_retry.take());
        match outcome {
            Ok(resp) => return Ok((resp, in_flight)),
            Err(e) => {
                tracing::debug!(pool = %pool.name, backend = %backend.addr(), error = %e, attempt, "attempt failed");
                if !(more && e.retryable(idempotent)) {
                    return Err(e);
                }
                match RetryGauge::try_new(
                    &pool.shared,
                    pool.retries.budget,
                    pool.retries.min_concurrent,
                ) {
                    Some(g) => _retry = Some(g),
                    None => {
                        tracing::debug!(pool = %pool.name, "retry budget exhausted");
                        return Err(e);
                    }
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("the loop runs at least once and returns unless it failed"))
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

/// Maps a client error to who failed and how.
fn classify(
    e: &hyper_util::client::legacy::Error,
    pool: &PoolRuntime,
    addr: SocketAddr,
) -> ProxyError {
    if !e.is_connect() {
        return ProxyError::BackendReset { backend: addr };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return ProxyError::ConnectTimeout {
                pool: pool.name.clone(),
                backend: addr,
            };
        }
        source = s.source();
    }
    ProxyError::ConnectFailed { backend: addr }
}
