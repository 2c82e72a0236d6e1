//! HTTP/1.1 from clients: one task per connection reads each request
//! head, hands the request to a [`Service`] (the request path), writes the
//! response with its own framing and keeps the connection alive, parks it
//! or closes it. hyper's server connection cost, per request, a boxed
//! request future, a fresh 8 KiB read buffer and its dispatcher's
//! bookkeeping; here the connection reads into one buffer for as long as
//! it is busy, and the request runs inside the connection's own future.
//!
//! What this module owns:
//! - reading heads ([`super::head`]): a head over the limits is answered
//!   431 (414 while the request line alone is over them), a malformed one
//!   400, and the connection closed. Every header reaches the service as
//!   it came.
//! - the request body, framed by the head's decision ([`super::framing`])
//!   and read off the connection only as the service asks for it
//!   ([`IncomingBody`]); `Expect: 100-continue` answered on the first ask.
//! - the response: an HTTP/1.1 backend's header lines written as the
//!   backend codec kept them ([`Lines`]), and our own framing:
//!   Content-Length when the body's length is known, else chunked
//!   (HTTP/1.1) or until close (HTTP/1.0); a body that breaks off closes
//!   the connection unfinished, so no client takes it for whole.
//! - the connection's life: the header deadline, parking when idle (the
//!   buffer goes back and only the socket waits), `Connection: close`,
//!   graceful shutdown, a client that leaves mid-request (its request is
//!   dropped, and with it the backend exchange), and handing an upgraded
//!   connection to the tunnel.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use fulcrum_config::snapshot::Listener;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use hyper::body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::chunked::{Chunked, Decoded};
use super::framing::{Framing, FramingError};
use super::head::{
    HeadLimits, Lines, RequestHead, RequestHeadError, parse_request_head, worth_parsing,
};
use super::{has_token, put_decimal, put_hex};
use crate::body::{Handover, IncomingBody, set_waker};
use crate::counters::Counters;
use crate::error::ProxyError;
use crate::io::{
    LazyPoll, MAX_CHECK, READ_SIZE, Rewind, SHUTDOWN_WRITE, Socket, keep_spare, poll_fill,
    spare_buffer,
};
use crate::tunnel::Tunnel;

/// A response whose encoded head and small frames reach this is written
/// before more of its body is read.
const FLUSH_AT: usize = 64 * 1024;
/// Data frames this large are written from their own buffer, not copied.
const COPY_UNDER: usize = 16 * 1024;

/// What answers the requests of a connection: the request path. The
/// connection knows nothing of it but this.
pub(crate) trait Service {
    type Body: hyper::body::Body<Data = Bytes> + Unpin;

    /// The response to one request. Dropped unfinished when the client
    /// leaves.
    fn call(&self, req: Request<IncomingBody>) -> impl Future<Output = Response<Self::Body>>;

    /// An HTTP/1.1 backend's header lines, which go out as they are
    /// (the response's own header map then holds only what was added).
    fn lines(body: &Self::Body) -> Option<&Lines>;

    /// The tunnel the last response (a 101) agreed on, if any.
    fn take_tunnel(&self) -> Option<Tunnel>;

    /// Called where a body lies once the client has been handed all of
    /// it (`at`), before the flush: what the body's end means (its
    /// outcome) is recorded now. A response is large, and dropping it
    /// there would copy it first.
    fn finish(body: &mut Self::Body, at: Instant);
}

/// The client connection's side of the listener.
pub(crate) struct ConnContext<'a> {
    pub client: SocketAddr,
    pub settings: &'a Listener,
    pub counters: &'a Arc<Counters>,
    /// For the reloads that may change `settings`.
    pub plane: &'a crate::DataPlane,
    /// The config generation `settings` are from.
    pub generation: u64,
}

/// Serves HTTP/1.1 on `io` until the client or the listener ends it.
/// `read`: bytes already read off the connection (while telling HTTP/1.1
/// from HTTP/2).
pub(crate) async fn serve<I, S>(
    io: I,
    read: BytesMut,
    ctx: ConnContext<'_>,
    service: &S,
    shutdown: &CancellationToken,
    epoch: Instant,
) where
    I: Socket + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service,
{
    let settings = ctx.settings;
    let mut conn = ClientConn {
        io,
        buf: read,
        read_size: READ_SIZE,
        scanned: 0,
        served: 0,
        idle_since: epoch,
        park_after: PARK_AFTER.min(settings.idle_timeout / 2),
        park_wait: Duration::ZERO,
        header_timeout: settings.header_timeout,
        generation: ctx.generation,
    };
    let counters = ctx.counters;
    let reloads = &ctx.plane.reloads;
    loop {
        // Boxed: the request's future lives in it, and an idle (parked)
        // connection should not hold that much.
        let end = Box::pin(busy(&mut conn, &ctx, service, shutdown)).await;
        match end {
            End::Park => {}
            End::Close => {
                let _ = tokio::time::timeout(SHUTDOWN_WRITE, conn.io.shutdown()).await;
                return;
            }
            End::Drop => return,
            End::Upgrade(tunnel) => {
                let io = Rewind::new(conn.io, conn.buf.freeze());
                let send_timeout = ctx.settings.send_timeout;
                return Box::pin(tunnel.run(io, send_timeout, shutdown.clone(), counters.clone()))
                    .await;
            }
        }
        Counters::inc(&counters.client_parked);
        keep_spare(std::mem::take(&mut conn.buf));
        // Parked, the next head is due as it was; a connection that never
        // sent one is a slowloris, one that did is idle.
        let (deadline, first) = if conn.served == 0 {
            (epoch + settings.header_timeout, true)
        } else {
            let wait = settings.idle_timeout.min(settings.header_timeout);
            (conn.idle_since + wait, false)
        };
        // A reload that changed this listener's settings (limits,
        // timeouts) closes its connections, idle ones at once, busy ones
        // after their response, so the next request comes on a connection
        // that has them: what NGINX's and HAProxy's old processes do with
        // their keep-alive connections.
        loop {
            // Made before the generation is read: a reload after the
            // read wakes it.
            let reloaded = reloads.notify.notified();
            if ctx.plane.listener_outdated(settings, &mut conn.generation) {
                tracing::debug!(client = %ctx.client, "closing an idle client connection: its listener's settings changed");
                return;
            }
            tokio::select! {
                ready = conn.io.tcp().readable() => {
                    if ready.is_err() {
                        return;
                    }
                    break;
                }
                // Another config: look again, still parked (and holding
                // no buffer, however many connections a reload wakes).
                () = reloaded => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if first {
                        counters.head_timed_out(ctx.client);
                    } else {
                        Counters::inc(&counters.client_idle_closed);
                        tracing::debug!(client = %ctx.client, "closing idle client connection");
                    }
                    return;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// An idle connection hands its read buffer back after this long, or after
/// half its idle timeout if that is shorter, and waits for its next request
/// holding only the socket. Short, so that a burst of new connections holds
/// few buffers at once (10,000 connections opened in a second: 59 MiB with
/// 10 ms, 71 MiB with 50 ms, 174 MiB with 1 s, measured with hyper's
/// larger buffers).
const PARK_AFTER: Duration = Duration::from_millis(10);

/// A client connection between requests.
struct ClientConn<I> {
    io: I,
    /// Read off the socket and not yet used: the next head, or a body.
    buf: BytesMut,
    read_size: usize,
    /// How much of a partial head in `buf` has been looked at for its end.
    scanned: usize,
    /// Requests answered on this connection.
    served: u64,
    /// When the last response was written (or the connection opened).
    idle_since: Instant,
    park_after: Duration,
    /// How long this busy period waits, idle, before parking: `park_after`
    /// at first, doubled (up to `MAX_CHECK`) each time the timer finds the
    /// connection busy again, so that one under load wakes for its timer
    /// about once a second, not every `park_after`.
    park_wait: Duration,
    header_timeout: Duration,
    /// The config generation the connection's settings are from.
    generation: u64,
}

/// Why a busy connection stopped.
enum End {
    /// Idle with nothing read: wait for the socket alone.
    Park,
    /// Done: flush and close the write side.
    Close,
    /// Failed or timed out (counted): drop the socket.
    Drop,
    /// A 101 went out: the connection is the tunnel's.
    Upgrade(Tunnel),
}

impl<I: AsyncRead + AsyncWrite + Unpin> ClientConn<I> {
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, &mut self.read_size, cx)
    }

    /// Writes all of `out[*pos..]`.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        out: &[u8],
        pos: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *pos < out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &out[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the client left (closed or broke its side) while its
    /// request is in progress. Bytes it sends meanwhile (a pipelined
    /// request) are kept for later, up to a head's worth.
    fn gone(&mut self, cx: &mut Context<'_>, max_head: usize) -> bool {
        while self.buf.len() < max_head {
            match self.fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }
}

impl<I> ClientConn<I> {
    /// When waiting for the next head must end: at the header deadline
    /// once some of it is here, else when the connection should park.
    fn head_due(&self) -> Instant {
        if self.buf.is_empty() {
            self.idle_since + self.park_wait.min(self.header_timeout)
        } else {
            self.idle_since + self.header_timeout
        }
    }
}

/// What a busy connection polls besides its socket: the timer of its
/// next head (lazy: armed once, and when it fires it reads the
/// connection's state again and moves on to the real deadline, which
/// mostly moves later; one per request would cost a timer-wheel entry
/// each) and the listener's shutdown, both polled only when they may be
/// ready (polling the token takes its lock).
struct Waits<'a, 'b> {
    timer: Pin<&'a mut Sleep>,
    cancelled: Pin<&'a mut WaitForCancellationFuture<'b>>,
    lazy: LazyPoll,
}

/// Serves requests until the connection idles long enough to park, or
/// ends.
async fn busy<I, S>(
    conn: &mut ClientConn<I>,
    ctx: &ConnContext<'_>,
    service: &S,
    shutdown: &CancellationToken,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let limits = HeadLimits::of(&ctx.settings.limits);
    conn.park_wait = conn.park_after;
    let timer = tokio::time::sleep_until(conn.head_due());
    let cancelled = shutdown.cancelled();
    tokio::pin!(timer, cancelled);
    let mut waits = Waits {
        timer,
        cancelled,
        lazy: LazyPoll::default(),
    };
    let mut out = Vec::new();
    if conn.buf.capacity() == 0 {
        conn.buf = spare_buffer();
    }
    loop {
        let head = match next_head(conn, limits, &mut waits).await {
            Ok(head) => head,
            // Closed, failed, or shut down while idle.
            Err(None) => return End::Close,
            // Nothing of a head yet: wait parked, where the deadline
            // still holds.
            Err(Some(RequestHeadError::Timeout)) if conn.buf.is_empty() => return End::Park,
            Err(Some(RequestHeadError::Timeout)) => {
                ctx.counters.head_timed_out(ctx.client);
                return End::Drop;
            }
            Err(Some(e)) => return refuse(conn, ctx, e, &mut out).await,
        };
        if let Some(end) = exchange(conn, ctx, service, head, &mut waits, limits, &mut out).await {
            return end;
        }
        if out.capacity() > FLUSH_AT {
            out = Vec::new();
        }
    }
}

/// Reads the next request head. Err(None): the connection closed, failed
/// or is shutting down.
async fn next_head<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ClientConn<I>,
    limits: HeadLimits,
    waits: &mut Waits<'_, '_>,
) -> Result<RequestHead, Option<RequestHeadError>> {
    std::future::poll_fn(|cx| {
        loop {
            // Parsed once its end is here (or it is too large to wait for).
            if worth_parsing(&mut conn.buf, &mut conn.scanned, limits.max_head) {
                match parse_request_head(&mut conn.buf, limits) {
                    Ok(Some(head)) => {
                        conn.scanned = 0;
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) => conn.scanned = conn.buf.len(),
                    Err(e) => return Poll::Ready(Err(Some(e))),
                }
            }
            if waits.lazy.shutdown(cx, waits.cancelled.as_mut()) {
                return Poll::Ready(Err(None));
            }
            match conn.fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(None)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            // Sooner than the timer holds: a head that was partly here
            // at the last check has since been served.
            let due = conn.head_due();
            if waits.timer.deadline() > due {
                waits.lazy.reset(waits.timer.as_mut(), due);
            }
            if waits.lazy.timer(cx, waits.timer.as_mut()) {
                if Instant::now() < due {
                    if conn.buf.is_empty() {
                        conn.park_wait = (conn.park_wait * 2).min(MAX_CHECK);
                    }
                    waits.lazy.reset(waits.timer.as_mut(), conn.head_due());
                    continue;
                }
                return Poll::Ready(Err(Some(RequestHeadError::Timeout)));
            }
            return Poll::Pending;
        }
    })
    .await
}

/// Answers a head that was refused, and ends the connection.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ClientConn<I>,
    ctx: &ConnContext<'_>,
    e: RequestHeadError,
    out: &mut Vec<u8>,
) -> End {
    let refusal = match e {
        RequestHeadError::TooLarge => ProxyError::HeaderTooLarge,
        RequestHeadError::UriTooLong => ProxyError::UriTooLong,
        RequestHeadError::Malformed | RequestHeadError::Timeout => {
            ProxyError::BadRequest("malformed request head")
        }
    };
    let counters = ctx.counters;
    match &refusal {
        ProxyError::HeaderTooLarge => Counters::inc(&counters.client_header_too_large),
        ProxyError::UriTooLong => Counters::inc(&counters.client_uri_too_long),
        _ => Counters::inc(&counters.client_bad_request),
    }
    tracing::debug!(client = %ctx.client, error = %refusal, "request head refused");
    out.clear();
    write_refusal(out, &refusal);
    let mut pos = 0;
    let _ = std::future::poll_fn(|cx| conn.poll_write_all(cx, out, &mut pos)).await;
    End::Close
}

/// One request: the service's response, written out. None: the
/// connection goes on to the next request.
async fn exchange<I, S>(
    conn: &mut ClientConn<I>,
    ctx: &ConnContext<'_>,
    service: &S,
    head: RequestHead,
    waits: &mut Waits<'_, '_>,
    limits: HeadLimits,
    out: &mut Vec<u8>,
) -> Option<End>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let RequestHead {
        request,
        framing,
        mut close,
        keep_alive,
        expect_continue,
    } = head;
    let reply_to = ReplyTo {
        http10: request.version() == Version::HTTP_10,
        head: request.method() == Method::HEAD,
        keep_alive,
        close: false,
    };
    if request.method() == Method::CONNECT {
        // Whatever the answer, the client would take a 2xx for a
        // tunnel nobody carries.
        close = true;
    }
    let (mut pump, body) = Pump::new(framing, expect_continue, &mut conn.buf);
    let handling = service.call(request.map(|()| body));
    tokio::pin!(handling);
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if pump.poll(conn, cx).is_err() || conn.gone(cx, limits.max_head) {
            return Poll::Ready(None);
        }
        waits.lazy.shutdown(cx, waits.cancelled.as_mut());
        Poll::Pending
    })
    .await;
    let Some(mut response) = response else {
        // The client left: its request (and the backend exchange) go.
        tracing::debug!(client = %ctx.client, "client went away mid-request");
        return Some(End::Drop);
    };
    let close = close
        || waits.lazy.closing
        || !pump.finished
        // Its listener's settings changed: this response is the last
        // (a 101's connection is the tunnel's, whatever they are).
        || (response.status() != StatusCode::SWITCHING_PROTOCOLS
            && ctx.plane.listener_outdated(ctx.settings, &mut conn.generation));
    let reply_to = ReplyTo { close, ..reply_to };
    let (upgrade, close) =
        match respond::<I, S>(conn, &mut response, &mut pump, reply_to, ctx, waits, out).await {
            Ok(how) => how,
            Err(()) => return Some(End::Drop),
        };
    conn.served += 1;
    if upgrade {
        return Some(match service.take_tunnel() {
            Some(t) => End::Upgrade(t),
            None => End::Close,
        });
    }
    close.then_some(End::Close)
}

/// What writing a response to a client depends on in its request (the
/// backend side has [`super::framing::Asked`]).
#[derive(Clone, Copy)]
struct ReplyTo {
    http10: bool,
    head: bool,
    /// An HTTP/1.0 client asked to keep the connection.
    keep_alive: bool,
    /// The connection ends after this response, whatever it says.
    close: bool,
}

/// Writes `response`, pumping the request's body meanwhile for a backend
/// that still reads it. Ok: whether it was a 101, and whether the
/// connection closes after it. Err: the client or the body failed and
/// the connection is dropped.
async fn respond<I, S>(
    conn: &mut ClientConn<I>,
    response: &mut Response<S::Body>,
    pump: &mut Pump,
    reply_to: ReplyTo,
    ctx: &ConnContext<'_>,
    waits: &mut Waits<'_, '_>,
    out: &mut Vec<u8>,
) -> Result<(bool, bool), ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let mut close = reply_to.close;
    let max_head = HeadLimits::of(&ctx.settings.limits).max_head;
    let send_timeout = ctx.settings.send_timeout;
    let status = response.status().as_u16();
    let upgrade = status == 101;
    let no_body = reply_to.head || (100..200).contains(&status) || status == 204 || status == 304;
    close |= response
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"));
    let framing = if no_body {
        Framing::Empty
    } else if let Some(n) = response.body().size_hint().exact() {
        Framing::Length(n)
    } else if reply_to.http10 {
        close = true;
        Framing::Close
    } else {
        Framing::Chunked
    };
    out.clear();
    encode_head(
        out,
        response,
        S::lines(response.body()),
        framing,
        Connection {
            close: close && !upgrade,
            keep_alive: reply_to.http10 && reply_to.keep_alive && !close,
        },
    );
    let body = response.body_mut();
    let mut writer = BodyWriter::new(out, framing);
    std::future::poll_fn(|cx| {
        // The backend may still be reading the request's body.
        if pump.poll(conn, cx).is_err() {
            return Poll::Ready(Err(()));
        }
        let written = writer.poll(&mut conn.io, body, cx);
        if written.is_pending() {
            if conn.gone(cx, max_head) {
                return Poll::Ready(Err(()));
            }
            // A client that takes none of its response for
            // `send_timeout` (a slow reader) loses its connection.
            if let Some(since) = writer.stalled_since {
                let due = since + send_timeout;
                if waits.timer.deadline() != due {
                    waits.lazy.reset(waits.timer.as_mut(), due);
                }
                if waits.lazy.timer(cx, waits.timer.as_mut()) && Instant::now() >= due {
                    Counters::inc(&ctx.counters.client_send_timeout);
                    tracing::debug!(client = %ctx.client, "client took none of its response in send_timeout; closing");
                    return Poll::Ready(Err(()));
                }
            }
        }
        written
    })
    .await?;
    // One clock read for the outcome's end and the connection's idle
    // clock.
    conn.idle_since = Instant::now();
    S::finish(body, conn.idle_since);
    std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_flush(cx))
        .await
        .map_err(|_| ())?;
    Ok((upgrade, close))
}

// ---- request body -----------------------------------------------------

/// The connection's side of a request body: reads and decodes it when
/// the reader asks, and hands it over.
struct Pump {
    /// `Length` (bytes still to read) or `Chunked`; `Empty` otherwise.
    framing: Framing,
    decoder: Chunked,
    slot: Option<Arc<Handover>>,
    /// `Expect: 100-continue`, not answered yet: the client waits for it.
    continue_at: Option<usize>,
    /// Read to its end: the connection can carry another request.
    finished: bool,
    /// Stopped for good (ended or failed).
    stopped: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the pump did with the bytes it had.
enum PumpStep {
    Data(Bytes, bool),
    /// The body's trailers, and its end.
    Trailers(HeaderMap),
    End,
    More,
    Fail(&'static str),
}

impl Pump {
    /// The body of a request framed as `framing` (Err: it could be read
    /// two ways, and is never read), taken whole from `buf` if it is all
    /// there.
    fn new(
        framing: Result<Framing, FramingError>,
        expect_continue: bool,
        buf: &mut BytesMut,
    ) -> (Pump, IncomingBody) {
        let (body, slot, finished) = match framing {
            Err(e) => (IncomingBody::Refused(e), None, false),
            Ok(Framing::Length(n)) if buf.len() as u64 >= n => (
                IncomingBody::Full(Some(buf.split_to(n as usize).freeze())),
                None,
                true,
            ),
            Ok(Framing::Length(n)) => {
                let slot = Arc::new(Handover::default());
                slot.lock().left = Some(n);
                (IncomingBody::Streamed(slot.clone()), Some(slot), false)
            }
            Ok(Framing::Chunked) => {
                let slot = Arc::new(Handover::default());
                (IncomingBody::Streamed(slot.clone()), Some(slot), false)
            }
            Ok(_) => (IncomingBody::Full(None), None, true),
        };
        let pump = Pump {
            framing: framing.unwrap_or(Framing::Empty),
            decoder: Chunked::default(),
            stopped: slot.is_none(),
            slot,
            continue_at: (expect_continue && buf.is_empty() && !finished).then_some(0),
            finished,
        };
        (pump, body)
    }

    /// Reads and hands over the next piece when the reader waits for one.
    /// Err: writing `100 Continue` failed (the connection is gone).
    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut ClientConn<I>,
        cx: &mut Context<'_>,
    ) -> Result<(), ()> {
        let Some(slot) = self.slot.as_ref().filter(|_| !self.stopped) else {
            return Ok(());
        };
        loop {
            {
                let mut s = slot.lock();
                if !s.want || s.data.is_some() {
                    set_waker(&mut s.conn, cx);
                    return Ok(());
                }
            }
            if let Some(pos) = self.continue_at.as_mut() {
                match conn.poll_write_all(cx, CONTINUE, pos) {
                    Poll::Ready(Ok(())) => self.continue_at = None,
                    Poll::Ready(Err(_)) => return Err(()),
                    Poll::Pending => return Ok(()),
                }
            }
            let step = match &mut self.framing {
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    PumpStep::Data(data, *left == 0)
                }
                Framing::Chunked => match self.decoder.decode(&mut conn.buf) {
                    Ok(Some(Decoded::Data(d))) => PumpStep::Data(d, false),
                    Ok(Some(Decoded::Trailers(t))) => PumpStep::Trailers(t),
                    Ok(Some(Decoded::End)) => PumpStep::End,
                    Ok(None) => PumpStep::More,
                    Err(_) => PumpStep::Fail("malformed chunked body"),
                },
                _ => PumpStep::More,
            };
            let step = match step {
                PumpStep::More => match conn.fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        PumpStep::Fail("the client closed the connection mid-body")
                    }
                    Poll::Ready(Err(_)) => PumpStep::Fail("reading the body failed"),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => return Ok(()),
                },
                step => step,
            };
            if let Some(finished) = hand_over(slot, step) {
                self.finished = finished;
                self.stopped = true;
            }
            return Ok(());
        }
    }
}

/// Gives the reader what the pump read, and wakes it. Some: the body is
/// over for the pump, read to its end (true) or failed (false).
fn hand_over(slot: &Handover, step: PumpStep) -> Option<bool> {
    let mut s = slot.lock();
    s.want = false;
    let over = match step {
        PumpStep::Data(d, last) => {
            if let Some(left) = s.left.as_mut() {
                *left -= d.len() as u64;
            }
            s.data = Some(d);
            s.ended = last;
            last.then_some(true)
        }
        PumpStep::Trailers(t) => {
            s.trailers = Some(t);
            s.ended = true;
            Some(true)
        }
        PumpStep::End => {
            s.ended = true;
            Some(true)
        }
        PumpStep::Fail(why) => {
            s.failed = Some(why);
            Some(false)
        }
        PumpStep::More => unreachable!("the pump reads more before it hands over"),
    };
    if let Some(w) = &s.reader {
        w.wake_by_ref();
    }
    over
}

// ---- response ---------------------------------------------------------

/// What the response says about the connection.
struct Connection {
    close: bool,
    /// An HTTP/1.0 client's keep-alive, granted.
    keep_alive: bool,
}

/// `lines`: the backend's headers, already encoded and without framing
/// or hop-by-hop headers; they go first, then the response's own.
/// `framing`: `Empty` (the headers stay as they are), `Length`, `Chunked`
/// or `Close`.
fn encode_head<B>(
    out: &mut Vec<u8>,
    response: &Response<B>,
    lines: Option<&Lines>,
    framing: Framing,
    conn: Connection,
) {
    // HTTP/1.1 to HTTP/1.0 clients too, as RFC 9110 §6.2 asks; the
    // framing and keep-alive are what HTTP/1.0 understands.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(response.status().as_str().as_bytes());
    out.push(b' ');
    match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(
            response
                .status()
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    let framed = !matches!(framing, Framing::Empty);
    let ours = conn.close || conn.keep_alive;
    let mut dated = false;
    if let Some(lines) = lines {
        out.extend_from_slice(&lines.bytes);
        dated = lines.has_date;
    }
    for (name, value) in response.headers() {
        if (framed && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING))
            || (ours && name == header::CONNECTION)
        {
            continue;
        }
        dated |= name == header::DATE;
        crate::headers::put_line(out, name, &[value.as_bytes()]);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => {
            out.extend_from_slice(b"transfer-encoding: ");
            // The backend's other codings (`gzip, chunked`) are the
            // client's to undo: only the chunking is ours.
            if let Some(codings) = lines.and_then(|l| l.codings.as_ref()) {
                out.extend_from_slice(codings);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n");
        }
        _ => {}
    }
    if conn.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if conn.keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !dated {
        put_date(out);
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// `date: ...\r\n` for the current second, as hyper kept it.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
}

fn put_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, line)| {
        if *at != secs || line.is_empty() {
            *at = secs;
            line.clear();
            line.extend_from_slice(b"date: ");
            line.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            line.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    });
}

/// A refusal the connection answers itself, before any request exists.
fn write_refusal(out: &mut Vec<u8>, e: &ProxyError) {
    let body = e.body();
    let status = e.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    put_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\nconnection: close\r\n");
    put_date(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Writes a response body as it comes: small frames gathered into one
/// buffer (with the head, one write for a small response), large ones
/// written from their own.
struct BodyWriter<'a> {
    out: &'a mut Vec<u8>,
    pos: usize,
    /// A large data frame, written after `out`.
    big: Option<Bytes>,
    /// `Empty` (nothing is written), `Length` (bytes still due),
    /// `Chunked` or `Close`.
    framing: Framing,
    trailers: Option<HeaderMap>,
    /// The body said it ended; its terminator goes out after `big`.
    body_ended: bool,
    /// Everything of the body is in `out` or written.
    body_done: bool,
    /// The body broke off: what came of it (the head, at least) is still
    /// written, but never its end.
    broken: bool,
    /// Since when the client has taken no bytes (a write is pending).
    stalled_since: Option<Instant>,
}

impl<'a> BodyWriter<'a> {
    /// `out` holds the encoded head.
    fn new(out: &'a mut Vec<u8>, framing: Framing) -> Self {
        BodyWriter {
            out,
            pos: 0,
            big: None,
            framing,
            trailers: None,
            body_ended: false,
            body_done: false,
            broken: false,
            stalled_since: None,
        }
    }

    /// Ready(Err): the body broke off or the client's socket failed; the
    /// connection must close without finishing the response. A body that
    /// broke off still has its head and what came of it written first: a
    /// client told nothing at all would take the backend's failure for
    /// the proxy's (HAProxy and NGINX do the same).
    fn poll<I, B>(&mut self, io: &mut I, body: &mut B, cx: &mut Context<'_>) -> Poll<Result<(), ()>>
    where
        I: AsyncWrite + Unpin,
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        loop {
            if self.body_ended && !self.body_done && !self.broken && self.big.is_none() {
                self.end()?;
            }
            if !self.body_ended && self.big.is_none() && self.out.len() - self.pos < FLUSH_AT {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.frame(frame)?;
                        self.body_ended = body.is_end_stream();
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.body_ended = true;
                        continue;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        self.broken = true;
                        self.body_ended = true;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if self.pos < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.stalled_since = None;
                        self.pos += n;
                        if self.pos == self.out.len() {
                            self.out.clear();
                            self.pos = 0;
                        }
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(Err(())),
                    Poll::Pending => return self.stalled(),
                }
            }
            if let Some(big) = self.big.as_mut() {
                match Pin::new(&mut *io).poll_write(cx, big) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.stalled_since = None;
                        big.advance(n);
                        if big.is_empty() {
                            self.big = None;
                            if let Framing::Chunked = self.framing {
                                self.out.extend_from_slice(b"\r\n");
                            }
                        }
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(Err(())),
                    Poll::Pending => return self.stalled(),
                }
            }
            return if self.broken {
                Poll::Ready(Err(()))
            } else if self.body_done {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
    }

    /// The client takes no more for now: noted, once, for `send_timeout`.
    fn stalled(&mut self) -> Poll<Result<(), ()>> {
        self.stalled_since.get_or_insert_with(Instant::now);
        Poll::Pending
    }

    fn frame(&mut self, frame: Frame<Bytes>) -> Result<(), ()> {
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    self.trailers = Some(t);
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Empty | Framing::Upgrade => return Ok(()),
            Framing::Length(left) => {
                // More than the head said would be read as the next
                // response.
                if data.len() as u64 > *left {
                    return Err(());
                }
                *left -= data.len() as u64;
            }
            Framing::Chunked => {
                put_hex(self.out, data.len() as u64);
                self.out.extend_from_slice(b"\r\n");
            }
            Framing::Close => {}
        }
        if data.len() >= COPY_UNDER {
            self.big = Some(data);
            return Ok(());
        }
        self.out.extend_from_slice(&data);
        if let Framing::Chunked = self.framing {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), ()> {
        match self.framing {
            // Shorter than the head said: the client must not take it
            // for whole.
            Framing::Length(left) if left > 0 => return Err(()),
            Framing::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                if let Some(t) = self.trailers.take() {
                    for (name, value) in &t {
                        crate::headers::put_line(self.out, name, &[value.as_bytes()]);
                    }
                }
                self.out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        self.body_done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::task::Waker;

    fn head_of(resp: http::Response<()>, framing: Framing, conn: Connection) -> String {
        let mut out = Vec::new();
        encode_head(&mut out, &resp, None, framing, conn);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_response_head_carries_our_framing_not_the_backends() {
        let keep = Connection {
            close: false,
            keep_alive: false,
        };
        let resp = http::Response::builder()
            .header("content-length", "99")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let text = head_of(resp, Framing::Length(3), keep);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n") && !text.contains("99"), "{text}");

        // HEAD: the length of the body it would have had stays.
        let resp = http::Response::builder()
            .header("content-length", "99")
            .header("date", "then")
            .body(())
            .unwrap();
        let close = Connection {
            close: true,
            keep_alive: false,
        };
        let text = head_of(resp, Framing::Empty, close);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: then\r\nconnection: close\r\n\r\n"
        );

        let mut resp = http::Response::builder()
            .status(404)
            .header("connection", "close")
            .body(())
            .unwrap();
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Gone Fishing"));
        let text = head_of(
            resp,
            Framing::Chunked,
            Connection {
                close: true,
                keep_alive: false,
            },
        );
        assert!(
            text.starts_with(
                "HTTP/1.1 404 Gone Fishing\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }

    /// Runs a `BodyWriter` over `frames` into memory.
    fn write_body(framing: Framing, frames: Vec<Frame<Bytes>>) -> Result<Vec<u8>, ()> {
        let stream =
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut body = http_body_util::StreamBody::new(stream);
        let mut out = Vec::new();
        let mut sink = Vec::new();
        let mut writer = BodyWriter::new(&mut out, framing);
        let waker = Waker::noop();
        match writer.poll(&mut sink, &mut body, &mut Context::from_waker(waker)) {
            Poll::Ready(Ok(())) => Ok(sink),
            Poll::Ready(Err(())) => Err(()),
            Poll::Pending => panic!("a ready body and sink left the writer pending"),
        }
    }

    #[test]
    fn chunked_bodies_keep_their_order_around_large_frames_and_end_with_trailers() {
        let big = Bytes::from(vec![b'x'; COPY_UNDER]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("done"));
        let got = write_body(
            Framing::Chunked,
            vec![
                Frame::data(Bytes::from_static(b"ab")),
                Frame::data(big.clone()),
                Frame::data(Bytes::from_static(b"c")),
                Frame::trailers(trailers),
            ],
        )
        .unwrap();
        let want = [
            &b"2\r\nab\r\n4000\r\n"[..],
            &big,
            b"\r\n1\r\nc\r\n0\r\nx-t: done\r\n\r\n",
        ]
        .concat();
        assert_eq!(got, want);
    }

    #[test]
    fn a_body_that_disagrees_with_its_length_is_never_sent_as_whole() {
        let short = write_body(
            Framing::Length(5),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert!(short.is_err());
        let long = write_body(
            Framing::Length(2),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert!(long.is_err());
        let exact = write_body(
            Framing::Length(3),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert_eq!(exact.unwrap(), b"abc");
    }

    #[test]
    fn a_body_that_breaks_off_still_has_its_head_and_what_came_written() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(io::Error::other("the backend left")),
        ];
        let mut body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec();
        let mut sink = Vec::new();
        let mut writer = BodyWriter::new(&mut out, Framing::Length(10));
        let polled = writer.poll(
            &mut sink,
            &mut body,
            &mut Context::from_waker(Waker::noop()),
        );
        assert_eq!(polled, Poll::Ready(Err(())));
        assert_eq!(sink, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\npart");
    }
}
