//! Serving a listener: accept connections (refusing those over
//! `limits.max_connections` at once), terminate TLS, run HTTP/1.1 or HTTP/2
//! on each (by ALPN over TLS, by the client's preface in cleartext) with the
//! listener's header, idle and HTTP/2 limits, and shut down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use fulcrum_config::snapshot::{Limits, Listener};
use http::{Request, Response};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{IncomingBody, RawBody};
use crate::conn::{Admission, ConnGuard, ConnInfo, ConnState, Unanswered};
use crate::counters::Counters;
use crate::http1::{self, head::Lines, server::ConnContext};
use crate::io::{LazyPoll, MAX_CHECK, Rewind, SHUTDOWN_WRITE, Socket};
use crate::proxy::ResponseBody;
use crate::runtime::DataPlane;
use crate::tcp::Tcp;
use crate::tunnel::Tunnel;

pub use crate::conn::ConnectionCount;

/// Serve one listener, its settings looked up by `name` in the current
/// snapshot for each new connection. On `shutdown`: stop accepting, let
/// in-flight requests finish (keep-alive connections close after their
/// current request), and return when every connection is done. The caller
/// bounds this with a grace period.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    plane: Arc<DataPlane>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    accept(listener, name, plane, shutdown, ConnectionCount::default())
        .await?
        .finished()
        .await;
    Ok(())
}

/// The connections of a listener that stopped accepting.
pub struct Open {
    done: mpsc::Receiver<()>,
}

impl Open {
    /// Wait until every connection is done.
    pub async fn finished(mut self) {
        let _ = self.done.recv().await;
    }
}

/// The first half of [`serve`]: accept until `shutdown`, then close the
/// listening socket and return the connections still open. A caller that
/// announces "no new connections" waits for this, so the announcement is
/// true when it is made. `open` counts the listener's connections across
/// reloads and across its sockets.
pub async fn accept(
    listener: TcpListener,
    name: Arc<str>,
    plane: Arc<DataPlane>,
    shutdown: CancellationToken,
    open: ConnectionCount,
) -> std::io::Result<Open> {
    let mut current: (Arc<Listener>, Option<tokio_rustls::TlsAcceptor>) = {
        let rt = plane.runtime();
        let i = rt
            .snapshot
            .listeners
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("listener \"{name}\" is not in the config"),
                )
            })?;
        (
            Arc::new(rt.snapshot.listeners[i].clone()),
            rt.tls[i].clone(),
        )
    };
    // Every connection task holds a sender; when all are dropped, all
    // connections are done.
    let (done_tx, done_rx) = mpsc::channel::<()>(1);
    loop {
        let (stream, mut client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // An IPv4 client of a `[::]` listener arrives as `::ffff:a.b.c.d`:
        // it is that IPv4 address for hashing, the canary cohort, the
        // forwarded headers and the log, as `explain --client-ip` takes it.
        client.set_ip(client.ip().to_canonical());
        // A reload may have changed this listener's settings or
        // certificates; if it removed the listener, keep the last ones
        // until the caller stops us. The generation is read first: a
        // reload after it is one the connection looks at.
        let generation = plane.reloads.generation.load(Ordering::Acquire);
        {
            let rt = plane.runtime();
            if let Some(i) = rt.snapshot.listeners.iter().position(|l| l.name == name) {
                if rt.snapshot.listeners[i] != *current.0 {
                    current.0 = Arc::new(rt.snapshot.listeners[i].clone());
                }
                current.1 = rt.tls[i].clone();
            }
        }
        let (settings, acceptor) = (&current.0, &current.1);
        // Over the limit: close at once rather than queue, so a flood
        // costs one accept each and the clients fail fast.
        let Some(slot) = Admission::take(&open, settings.limits.max_connections) else {
            Counters::inc(&plane.counters.client_connections_refused);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            epoch: Instant::now(),
            client,
            settings: settings.clone(),
            generation,
            hold: (done_tx.clone(), slot),
        };
        tokio::spawn(connection(
            Tcp::new(stream),
            accepted,
            plane.clone(),
            acceptor.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    drop(done_tx);
    Ok(Open { done: done_rx })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocols {
    /// Cleartext: HTTP/2 if the client opens with the h2 preface.
    Detect,
    Http1,
    Http2,
}

/// What the accept loop decided for one connection.
struct Accepted {
    /// When it was accepted: its header deadline runs from here, through
    /// a TLS handshake too.
    epoch: Instant,
    client: SocketAddr,
    /// The listener's settings when the connection was accepted.
    settings: Arc<Listener>,
    /// The config generation `settings` are from, for
    /// [`DataPlane::listener_outdated`].
    generation: u64,
    hold: (mpsc::Sender<()>, Admission),
}

async fn connection(
    stream: Tcp,
    accepted: Accepted,
    plane: Arc<DataPlane>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    match acceptor {
        // A task is as large as its largest state for its whole life: the
        // TLS path is boxed so plain connections are not sized for it.
        Some(acceptor) => {
            Box::pin(tls_connection(stream, acceptor, accepted, plane, shutdown)).await
        }
        None => {
            let protocols = if accepted.settings.http2.enabled {
                Protocols::Detect
            } else {
                Protocols::Http1
            };
            http(stream, accepted, false, protocols, plane, shutdown).await
        }
    }
}

async fn tls_connection(
    stream: Tcp,
    acceptor: tokio_rustls::TlsAcceptor,
    accepted: Accepted,
    plane: Arc<DataPlane>,
    shutdown: CancellationToken,
) {
    let (client, settings) = (accepted.client, &accepted.settings);
    // The handshake counts against the header deadline: a client that
    // opens TLS slowly is as much a slowloris as one that sends headers
    // slowly.
    let handshake = tokio::time::timeout_at(
        accepted.epoch + settings.header_timeout,
        acceptor.accept(stream),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            Counters::inc(&plane.counters.client_tls_handshake_failed);
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            Counters::inc(&plane.counters.client_tls_handshake_failed);
            tracing::debug!(%client, "TLS handshake timed out");
            return;
        }
    };
    let protocols = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocols::Http2,
        // HTTP/2 only, and the client negotiated nothing.
        _ if settings.http2.only => {
            Counters::inc(&plane.counters.client_bad_request);
            tracing::debug!(%client, "no h2 by ALPN on an HTTP/2-only listener; closing");
            return;
        }
        _ => Protocols::Http1,
    };
    http(tls, accepted, true, protocols, plane, shutdown).await
}

/// The request path, serving the requests of one HTTP/1.1 connection.
struct RequestPath(Arc<ConnInfo>);

impl http1::server::Service for RequestPath {
    type Body = ResponseBody;

    fn call(&self, req: Request<IncomingBody>) -> impl Future<Output = Response<ResponseBody>> {
        let info = &self.0;
        crate::proxy::handle(&info.plane, req.map(RawBody::H1), info, None)
    }

    fn lines(body: &ResponseBody) -> Option<&Lines> {
        body.lines()
    }

    fn finish(body: &mut ResponseBody, at: Instant) {
        body.finish(at);
    }

    fn take_tunnel(&self) -> Option<Tunnel> {
        self.0
            .tunnel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// HTTP/2's connection preface, which tells h2c from HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn http<I>(
    mut io: I,
    accepted: Accepted,
    tls: bool,
    protocols: Protocols,
    plane: Arc<DataPlane>,
    shutdown: CancellationToken,
) where
    I: Socket + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        epoch,
        client,
        settings,
        generation,
        hold,
    } = accepted;
    let info = Arc::new(ConnInfo {
        client,
        client_ip: crate::headers::client_ip_value(client.ip()),
        tls,
        settings: settings.clone(),
        plane: plane.clone(),
        tunnel: Mutex::new(None),
        _hold: hold,
    });
    let (h2, read) = match protocols {
        Protocols::Http1 => (false, BytesMut::new()),
        Protocols::Http2 => (true, BytesMut::new()),
        // The preface read counts against the header deadline.
        Protocols::Detect => {
            match tokio::time::timeout_at(epoch + settings.header_timeout, detect_h2(&mut io)).await
            {
                Ok(Ok(Some(found))) => found,
                Ok(_) => return,
                Err(_) => return plane.counters.head_timed_out(client),
            }
        }
    };
    if !h2 && settings.http2.only {
        return refuse_http1(io, &plane.counters, client).await;
    }
    if !h2 {
        let ctx = ConnContext {
            client,
            settings: &settings,
            counters: &plane.counters,
            plane: &plane,
            generation,
        };
        let path = RequestPath(info);
        return http1::server::serve(io, read, ctx, &path, &shutdown, epoch).await;
    }
    let state = Arc::new(ConnState::new(
        epoch,
        settings.http2.max_pending_reset_streams,
    ));
    let service = {
        let state = state.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let info = info.clone();
            let guard = ConnGuard::new(&state);
            let unanswered = Unanswered::new(&state);
            async move {
                let req = req.map(RawBody::H2);
                let resp = crate::proxy::handle(&info.plane, req, &info, Some(guard)).await;
                unanswered.answered();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let life = Life {
        state: &state,
        plane: &plane,
        settings: &settings,
        generation,
        counters: &plane.counters,
        client,
        shutdown: &shutdown,
        header_timeout: settings.header_timeout,
        idle_timeout: settings.idle_timeout,
        send_timeout: settings.send_timeout,
    };
    let io = Rewind::new(io, read.freeze());
    let mut conn = Box::pin(h2_builder(&settings).serve_connection(TokioIo::new(io), service));
    Box::pin(life.drive(&mut conn, |c| c.as_mut().graceful_shutdown())).await;
}

/// An HTTP/1 request on an HTTP/2-only listener: `505`, and the
/// connection closed.
async fn refuse_http1<I: AsyncWrite + Unpin>(mut io: I, counters: &Counters, client: SocketAddr) {
    use tokio::io::AsyncWriteExt;
    Counters::inc(&counters.client_bad_request);
    tracing::debug!(%client, "HTTP/1 on an HTTP/2-only listener; refused");
    const BODY: &str = "505 HTTP Version Not Supported: this listener serves HTTP/2 only (h2c with prior knowledge, or h2 by ALPN)\n";
    let head = format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(SHUTDOWN_WRITE, async {
        let _ = io.write_all(head.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1
/// request: whether it is HTTP/2, and the bytes read. None: closed first.
async fn detect_h2<I: Socket + AsyncRead + Unpin>(
    io: &mut I,
) -> std::io::Result<Option<(bool, BytesMut)>> {
    // A silent connection holds no buffer while it waits.
    io.tcp().readable().await?;
    let mut buf = crate::io::spare_buffer();
    buf.reserve(crate::io::READ_SIZE);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return Ok(Some((buf[..n] == *H2_PREFACE, buf)));
        }
    }
}

fn h2_builder(settings: &Listener) -> http2::Builder<TokioExecutor> {
    let h2 = &settings.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams as usize)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams as usize)
        // Bounds the HEADERS + CONTINUATION a stream may send, so a
        // CONTINUATION flood ends in an error, not in memory; above the
        // screen's limits, so the screen refuses (and counts) what is over.
        .max_header_list_size(h2_header_list_size(&settings.limits))
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout);
    builder
}

/// The `SETTINGS_MAX_HEADER_LIST_SIZE` given to h2: room for any head
/// the request path's screen would let through (whose `:method`,
/// `:scheme` and `:authority` take under 1 KiB), so that the screen, not
/// the codec, refuses a head over `limits` (431, counted in
/// `client_header_too_large`; h2's own 431 reaches no counter). h2 sizes a
/// field as its name and value plus 32 bytes (RFC 9113 §6.5.2), pseudo
/// fields included, where the screen counts the name and value plus 4 of
/// regular fields only: so the header bytes, 32 more for each of
/// `max_headers` fields and the five pseudo fields (`:method`, `:scheme`,
/// `:authority`, `:path`, `:protocol`), `max_uri_bytes` for `:path`, and
/// [`H2_PSEUDO_ROOM`] for the other pseudo names and values.
fn h2_header_list_size(limits: &Limits) -> u32 {
    limits
        .max_header_bytes
        .saturating_add(limits.max_uri_bytes)
        .saturating_add(limits.max_headers.saturating_add(5).saturating_mul(32))
        .saturating_add(H2_PSEUDO_ROOM)
}

/// Pseudo-header names and the values of `:method`, `:scheme` and
/// `:authority`, which no limit of the screen covers: a DNS name is at
/// most 253 bytes, a port 6.
const H2_PSEUDO_ROOM: u32 = 1024;

/// What an HTTP/2 connection's lifetime rules need.
struct Life<'a> {
    state: &'a ConnState,
    /// For the reloads that may change `settings`.
    plane: &'a DataPlane,
    settings: &'a Listener,
    /// The config generation `settings` are from.
    generation: u64,
    counters: &'a Counters,
    client: SocketAddr,
    shutdown: &'a CancellationToken,
    header_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
}

/// Where an HTTP/2 connection stands in `Life::drive`.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Open,
    /// The listener shuts down: GOAWAY went out, and the streams in
    /// progress finish (`serve`'s grace bounds how long).
    Draining,
    /// GOAWAY went out because the client reset too many streams: dropped
    /// at this deadline if its streams have not ended by then.
    Closing(Instant),
    /// GOAWAY went out because the connection was quiet (no request within
    /// the header timeout, or idle), or because a reload changed its
    /// listener's settings: closed at this deadline, or later once
    /// a stream that crossed the GOAWAY has finished. Waiting on the
    /// client's PING acknowledgement alone never holds it past the deadline.
    Quiet(Instant),
}

impl Life<'_> {
    /// Drives one HTTP/2 connection until it ends. Every end but the
    /// client's own starts with a GOAWAY (RFC 9113 §6.8): on shutdown, when
    /// no request came within the header timeout, when idle past the idle
    /// timeout, and when the client resets too many streams. A client that
    /// lets none of its responses move for `send_timeout` is dropped.
    async fn drive<C>(&self, conn: &mut C, mut graceful: impl FnMut(&mut C))
    where
        C: Future<Output = hyper::Result<()>> + Unpin,
    {
        let state = self.state;
        let mut step = self.idle_timeout;
        let mut stage = Stage::Open;
        let mut generation = self.generation;
        loop {
            let event = self.next_event(conn, stage, step, generation).await;
            let now = Instant::now();
            match event {
                Event::Conn(res) => {
                    // An error after we chose to close is our own doing
                    // (the GOAWAY, the cut), already counted by its cause.
                    if let Err(e) = res
                        && !matches!(stage, Stage::Closing(_) | Stage::Quiet(_))
                    {
                        count_connection_error(self.counters, &e);
                        tracing::debug!(client = %self.client, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                Event::Shutdown => {
                    // Idle streams close now; busy ones after their response.
                    graceful(conn);
                    stage = Stage::Draining;
                }
                Event::Reloaded => {
                    // The streams in progress finish; the client opens a
                    // connection with the new settings for the next ones.
                    if self.plane.listener_outdated(self.settings, &mut generation) {
                        tracing::debug!(client = %self.client, "its listener's settings changed; GOAWAY");
                        graceful(conn);
                        stage = Stage::Quiet(now + SHUTDOWN_WRITE);
                    }
                }
                Event::Glitched => {
                    Counters::inc(&self.counters.client_h2_protocol_error);
                    tracing::debug!(client = %self.client, "client reset too many streams before their response; GOAWAY");
                    graceful(conn);
                    stage = Stage::Closing(now + SHUTDOWN_WRITE);
                }
                Event::Timer => match stage {
                    Stage::Closing(at) if now >= at => return,
                    Stage::Quiet(at) if now >= at => {
                        if state.active.load(Relaxed) == 0 || self.send_timed_out(now) {
                            return;
                        }
                    }
                    Stage::Closing(_) | Stage::Quiet(_) | Stage::Draining => {}
                    Stage::Open if state.started.load(Relaxed) == 0 => {
                        if now < state.epoch + self.header_timeout {
                            continue;
                        }
                        // Never sent a request in time.
                        self.counters.head_timed_out(self.client);
                        graceful(conn);
                        stage = Stage::Quiet(now + SHUTDOWN_WRITE);
                    }
                    Stage::Open if state.active.load(Relaxed) > 0 => {
                        if self.send_timed_out(now) {
                            return;
                        }
                        step = (step * 2)
                            .min(MAX_CHECK.max(self.idle_timeout))
                            .min(self.idle_timeout);
                    }
                    Stage::Open => {
                        if state.idle_since().elapsed() >= self.idle_timeout {
                            Counters::inc(&self.counters.client_idle_closed);
                            tracing::debug!(client = %self.client, "closing idle client connection");
                            graceful(conn);
                            stage = Stage::Quiet(now + SHUTDOWN_WRITE);
                        }
                    }
                },
            }
        }
    }

    /// Whether the client has let none of its responses move for
    /// `send_timeout` (counted when it has).
    fn send_timed_out(&self, now: Instant) -> bool {
        let stalled = self
            .state
            .stalled_since()
            .is_some_and(|since| now >= since + self.send_timeout);
        if stalled {
            Counters::inc(&self.counters.client_send_timeout);
            tracing::debug!(client = %self.client, "client let no response move in send_timeout; closing");
        }
        stalled
    }

    /// `at`, or sooner when the streams' stall reaches `send_timeout`.
    fn or_stalled(&self, at: Instant) -> Instant {
        match self.state.stalled_since() {
            Some(since) => at.min(since + self.send_timeout),
            None => at,
        }
    }

    /// Until a first request arrives, the connection lives on the header
    /// deadline; after that, on the idle timeout, and while streams wait
    /// on the client, on the send timeout. The deadline is a check, not a
    /// verdict: when it fires, the state is read again. While streams are
    /// open the next check is one step away, so an idle connection is
    /// found at most then; the step grows while the connection stays busy.
    fn next_check(&self, stage: Stage, step: Duration) -> Option<Instant> {
        let state = self.state;
        let now = Instant::now();
        match stage {
            Stage::Draining => None,
            Stage::Closing(at) => Some(at),
            Stage::Quiet(at) if now < at => Some(at),
            Stage::Open if state.started.load(Relaxed) == 0 => {
                Some((state.epoch + self.header_timeout).min(now + step))
            }
            Stage::Open if state.active.load(Relaxed) > 0 => Some(self.or_stalled(now + step)),
            // Past its deadline, the streams that crossed the GOAWAY are
            // looked at every second; with none left, the timer fires now.
            Stage::Quiet(_) if state.active.load(Relaxed) > 0 => {
                Some(self.or_stalled(now + MAX_CHECK))
            }
            Stage::Quiet(_) => Some(now),
            Stage::Open => Some(state.idle_since() + self.idle_timeout),
        }
    }

    /// What happens next: the connection ends, the listener shuts down,
    /// the client resets too many streams, a config newer than
    /// `generation` serves, or the check is due.
    async fn next_event<C>(
        &self,
        conn: &mut C,
        stage: Stage,
        step: Duration,
        generation: u64,
    ) -> Event
    where
        C: Future<Output = hyper::Result<()>> + Unpin,
    {
        let open = stage == Stage::Open;
        let sleep = self.next_check(stage, step).map(tokio::time::sleep_until);
        let cancelled = open.then(|| self.shutdown.cancelled());
        let glitched = open.then(|| self.state.glitched.notified());
        let reloads = &self.plane.reloads;
        // Made before the generation is read: a reload after the read
        // wakes it.
        let reloaded = open.then(|| reloads.notify.notified());
        if open && reloads.generation.load(Ordering::Acquire) != generation {
            return Event::Reloaded;
        }
        tokio::pin!(sleep, cancelled, glitched, reloaded);
        let mut watch = LazyPoll::default();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Event::Conn(res));
            }
            if let Some(c) = cancelled.as_mut().as_pin_mut()
                && watch.shutdown(cx, c)
            {
                return Poll::Ready(Event::Shutdown);
            }
            if let Some(g) = glitched.as_mut().as_pin_mut()
                && g.poll(cx).is_ready()
            {
                return Poll::Ready(Event::Glitched);
            }
            if let Some(r) = reloaded.as_mut().as_pin_mut()
                && r.poll(cx).is_ready()
            {
                return Poll::Ready(Event::Reloaded);
            }
            if let Some(s) = sleep.as_mut().as_pin_mut()
                && watch.timer(cx, s)
            {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await
    }
}

/// What woke a connection's `Life::drive`.
enum Event {
    Conn(hyper::Result<()>),
    Shutdown,
    /// The client reset too many streams before their response.
    Glitched,
    /// Another config serves: the listener's settings may have changed.
    Reloaded,
    Timer,
}

/// Counts why hyper ended an HTTP/2 client connection with an error.
fn count_connection_error(counters: &Counters, e: &hyper::Error) {
    // hyper's only timeout on an HTTP/2 server connection is its
    // keep-alive PING's (the header deadline is `Life`'s own).
    if e.is_timeout() {
        Counters::inc(&counters.client_ping_timeout);
    } else if e.is_parse_too_large() {
        Counters::inc(&counters.client_header_too_large);
    } else if e.is_parse() {
        Counters::inc(&counters.client_bad_request);
    } else {
        Counters::inc(&counters.client_h2_protocol_error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/hardening.md gives this bound for the default limits.
    #[test]
    fn the_h2_header_list_bound_for_the_default_limits() {
        assert_eq!(h2_header_list_size(&Limits::DEFAULT), 28_960);
    }
}
