//! HTTP/1.1 from clients: one task per connection reads each request
//! head, hands the request to the request path, writes the response with
//! its own framing and keeps the connection alive, parks it or closes it.
//! hyper's server connection cost, per request, a boxed request future, a
//! fresh 8 KiB read buffer and its dispatcher's bookkeeping; here the
//! connection reads into one buffer for as long as it is busy, and the
//! request runs inside the connection's own future.
//!
//! What this module owns:
//! - the head: parsed in place with httparse, header values sharing the
//!   read buffer. A head over the limits is answered 431 (414 while the
//!   request line alone is over them), a malformed one 400, and the
//!   connection closed.
//! - request framing (RFC 9112 §6.3): Content-Length or chunked. Every
//!   header reaches the request path as it came, so its screen sees a
//!   smuggling shape; a request whose framing could be read two ways gets
//!   no body, and its connection closes after the response.
//! - the request body, read off the connection only as the request path
//!   asks for it; `Expect: 100-continue` answered on the first ask.
//! - the response: an HTTP/1.1 backend's header lines written as the
//!   backend codec kept them (`h1::Lines`), and our own framing:
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
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use hyper::body::{Body as _, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::error::ProxyError;
use crate::h1::{Chunked, Decoded, Lines, Span, has_token, parse_length, put_decimal, put_hex};
use crate::listener::{ConnInfo, MAX_CHECK, Rewind, SHUTDOWN_WRITE, Socket, Watch};
use crate::proxy::RawBody;

/// Header slots for httparse; `limits.max_headers` is at most this.
const MAX_HEADERS: usize = 1000;
/// A response whose encoded head and small frames reach this is written
/// before more of its body is read.
const FLUSH_AT: usize = 64 * 1024;
/// Data frames this large are written from their own buffer, not copied.
const COPY_UNDER: usize = 16 * 1024;

/// Serves HTTP/1.1 on `io` until the client or the listener ends it.
/// `read`: bytes already read off the connection (while telling HTTP/1.1
/// from HTTP/2).
pub(crate) async fn serve<I>(
    io: I,
    read: BytesMut,
    info: Arc<ConnInfo>,
    shutdown: &CancellationToken,
    epoch: Instant,
) where
    I: Socket + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &info.settings;
    let mut conn = Conn {
        io,
        buf: read,
        read_size: crate::h1::READ_SIZE,
        served: 0,
        idle_since: epoch,
        park_after: PARK_AFTER.min(settings.idle_timeout / 2),
        park_wait: Duration::ZERO,
        header_timeout: settings.header_timeout,
    };
    let counters = &info.plane.counters;
    loop {
        // Boxed: the request's future lives in it, and an idle (parked)
        // connection should not hold that much.
        let end = Box::pin(busy(&mut conn, &info, shutdown)).await;
        match end {
            End::Park => {}
            End::Close => {
                let _ = tokio::time::timeout(SHUTDOWN_WRITE, conn.io.shutdown()).await;
                return;
            }
            End::Drop => return,
            End::Upgrade(tunnel) => {
                let io = Rewind::new(conn.io, conn.buf.freeze());
                return Box::pin(tunnel.run(io, shutdown.clone(), info.plane.counters.clone()))
                    .await;
            }
        }
        Counters::inc(&counters.client_parked);
        crate::h1::keep_spare(std::mem::take(&mut conn.buf));
        // Parked, the next head is due as it was; a connection that never
        // sent one is a slowloris, one that did is idle.
        let (deadline, first) = if conn.served == 0 {
            (epoch + settings.header_timeout, true)
        } else {
            let wait = settings.idle_timeout.min(settings.header_timeout);
            (conn.idle_since + wait, false)
        };
        tokio::select! {
            ready = conn.io.tcp().readable() => {
                if ready.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if first {
                    crate::listener::head_timed_out(counters, info.client);
                } else {
                    Counters::inc(&counters.client_idle_closed);
                    tracing::debug!(client = %info.client, "closing idle client connection");
                }
                return;
            }
            _ = shutdown.cancelled() => return,
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
struct Conn<I> {
    io: I,
    /// Read off the socket and not yet used: the next head, or a body.
    buf: BytesMut,
    read_size: usize,
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
    Upgrade(crate::tunnel::Tunnel),
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::h1::poll_fill(&mut self.io, &mut self.buf, &mut self.read_size, cx)
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
}

/// Serves requests until the connection idles long enough to park, or
/// ends.
async fn busy<I>(conn: &mut Conn<I>, info: &Arc<ConnInfo>, shutdown: &CancellationToken) -> End
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &info.settings;
    let counters = &info.plane.counters;
    let limits = &settings.limits;
    // A head may be this large: the request line's own limit on top of
    // the headers'. Past it, the client is told which one it broke.
    let max_head = limits.max_header_bytes as usize + limits.max_uri_bytes as usize + 1024;
    let max_headers = (limits.max_headers as usize).min(MAX_HEADERS);
    let max_uri = limits.max_uri_bytes as usize;
    // The connection's timer is lazy: armed once, and when it fires it
    // reads the connection's state again and moves on to the real
    // deadline, which mostly moves later (one per request would cost a
    // timer-wheel entry each). Polled only when it may be ready, as is the
    // shutdown token (polling it takes its lock).
    conn.park_wait = conn.park_after;
    let timer = tokio::time::sleep_until(conn.head_due());
    let cancelled = shutdown.cancelled();
    tokio::pin!(timer, cancelled);
    let mut watch = Watch::default();
    let mut out = Vec::new();
    if conn.buf.capacity() == 0 {
        conn.buf = crate::h1::spare_buffer();
    }
    loop {
        // ---- the next head
        let head = std::future::poll_fn(|cx| {
            loop {
                if !conn.buf.is_empty() {
                    match parse_head(&mut conn.buf, max_head, max_headers, max_uri) {
                        Ok(Some(head)) => return Poll::Ready(Ok(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(Some(e))),
                    }
                }
                if watch.shutdown(cx, cancelled.as_mut()) {
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
                if timer.deadline() > due {
                    watch.reset(timer.as_mut(), due);
                }
                if watch.timer(cx, timer.as_mut()) {
                    if Instant::now() < due {
                        if conn.buf.is_empty() {
                            conn.park_wait = (conn.park_wait * 2).min(MAX_CHECK);
                        }
                        watch.reset(timer.as_mut(), conn.head_due());
                        continue;
                    }
                    return Poll::Ready(Err(Some(HeadError::Timeout)));
                }
                return Poll::Pending;
            }
        })
        .await;
        let head = match head {
            Ok(head) => head,
            // Closed, failed, or shut down while idle.
            Err(None) => return End::Close,
            // Nothing of a head yet: wait parked, where the deadline
            // still holds.
            Err(Some(HeadError::Timeout)) if conn.buf.is_empty() => return End::Park,
            Err(Some(HeadError::Timeout)) => {
                crate::listener::head_timed_out(counters, info.client);
                return End::Drop;
            }
            Err(Some(e)) => {
                let refusal = e.refusal();
                match &refusal {
                    ProxyError::HeaderTooLarge => Counters::inc(&counters.client_header_too_large),
                    ProxyError::UriTooLong => Counters::inc(&counters.client_uri_too_long),
                    _ => Counters::inc(&counters.client_bad_request),
                }
                tracing::debug!(client = %info.client, error = %refusal, "request head refused");
                out.clear();
                write_refusal(&mut out, &refusal);
                let mut pos = 0;
                let _ = std::future::poll_fn(|cx| conn.poll_write_all(cx, &out, &mut pos)).await;
                return End::Close;
            }
        };

        // ---- the request
        let Head {
            request,
            framing,
            mut close,
            keep_alive,
            expect_continue,
        } = head;
        let http10 = request.version() == Version::HTTP_10;
        let head_request = request.method() == Method::HEAD;
        if request.method() == Method::CONNECT {
            // Whatever the answer, the client would take a 2xx for a
            // tunnel nobody carries.
            close = true;
        }
        let (mut body, raw) = Pump::new(framing, expect_continue, &mut conn.buf);
        let request = request.map(|()| RawBody::H1(raw));
        let handling = crate::proxy::handle(&info.plane, request, info, None);
        tokio::pin!(handling);
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if body.poll(conn, cx).is_err() || gone(conn, cx, max_head) {
                return Poll::Ready(None);
            }
            watch.shutdown(cx, cancelled.as_mut());
            Poll::Pending
        })
        .await;
        let Some(response) = response else {
            // The client left: its request (and the backend exchange) go.
            tracing::debug!(client = %info.client, "client went away mid-request");
            return End::Drop;
        };
        // ---- the response
        let (parts, mut resp_body) = response.into_parts();
        let status = parts.status.as_u16();
        let upgrade = status == 101;
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        close |= watch.closing
            || !body.finished()
            || parts
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v.as_bytes(), b"close"));
        let framing = if no_body {
            Out::None
        } else if let Some(n) = resp_body.size_hint().exact() {
            Out::Length(n)
        } else if http10 {
            close = true;
            Out::Close
        } else {
            Out::Chunked
        };
        out.clear();
        encode_head(
            &mut out,
            &parts,
            resp_body.lines(),
            framing,
            Connection {
                close: close && !upgrade,
                keep_alive: http10 && keep_alive && !close,
            },
        );
        drop(parts);
        let mut writer = Writer::new(&mut out, framing);
        let written = std::future::poll_fn(|cx| {
            // The backend may still be reading the request's body.
            if body.poll(conn, cx).is_err() {
                return Poll::Ready(Err(()));
            }
            let written = writer.poll(&mut conn.io, &mut resp_body, cx);
            if written.is_pending() && gone(conn, cx, max_head) {
                return Poll::Ready(Err(()));
            }
            written
        })
        .await;
        drop(resp_body);
        if written.is_err() {
            return End::Drop;
        }
        if std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_flush(cx))
            .await
            .is_err()
        {
            return End::Drop;
        }
        conn.served += 1;
        conn.idle_since = Instant::now();
        if upgrade {
            let tunnel = info.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
            return match tunnel {
                Some(t) => End::Upgrade(t),
                None => End::Close,
            };
        }
        if close {
            return End::Close;
        }
        if out.capacity() > FLUSH_AT {
            out = Vec::new();
        }
    }
}

impl<I> Conn<I> {
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

/// Whether the client left (closed or broke its side) while its request
/// is in progress. Bytes it sends meanwhile (a pipelined request) are kept
/// for later, up to a head's worth.
fn gone<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<I>,
    cx: &mut Context<'_>,
    max_head: usize,
) -> bool {
    while conn.buf.len() < max_head {
        match conn.fill(cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return false,
        }
    }
    false
}

// ---- request head -----------------------------------------------------

/// A request head, parsed.
struct Head {
    request: Request<()>,
    framing: Framing,
    /// The connection ends after this request (`Connection: close`,
    /// HTTP/1.0 without keep-alive, or framing that cannot be trusted).
    close: bool,
    /// An HTTP/1.0 client asked to keep the connection.
    keep_alive: bool,
    expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Content-Length and Transfer-Encoding together, several or odd ones:
    /// the request path refuses it, and its body is never read.
    Unframeable,
}

#[derive(Debug)]
enum HeadError {
    Malformed,
    TooLarge,
    UriTooLong,
    Timeout,
}

impl HeadError {
    fn refusal(&self) -> ProxyError {
        match self {
            HeadError::TooLarge => ProxyError::HeaderTooLarge,
            HeadError::UriTooLong => ProxyError::UriTooLong,
            HeadError::Malformed | HeadError::Timeout => {
                ProxyError::BadRequest("malformed request head")
            }
        }
    }
}

/// Parses a request head off the front of `buf`: None while incomplete.
fn parse_head(
    buf: &mut BytesMut,
    max_head: usize,
    max_headers: usize,
    max_uri: usize,
) -> Result<Option<Head>, HeadError> {
    let mut spans = SmallVec::<[Span; 32]>::new();
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = (s.as_ptr() as usize - base) as u32;
        (start, start + s.len() as u32)
    };
    let (len, method, path, minor) = {
        // Not zeroed first: a head rarely has more than a dozen headers.
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &buf[..],
            &mut slots[..max_headers],
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
            Ok(_) => return Err(too_large(buf, max_uri)),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        };
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| HeadError::Malformed)?;
        let path = at(req.path.unwrap_or_default().as_bytes());
        for h in req.headers.iter() {
            spans.push(Span {
                name: at(h.name.as_bytes()),
                value: at(h.value),
            });
        }
        (len, method, path, req.version.unwrap_or_default())
    };
    if (path.1 - path.0) as usize > max_uri {
        return Err(HeadError::UriTooLong);
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0 as usize..path.1 as usize))
        .map_err(|_| HeadError::Malformed)?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut length = None;
    let mut bad_length = false;
    let (mut te, mut chunked) = (0, false);
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for s in &spans {
        let name = HeaderName::from_bytes(&head[s.name.0 as usize..s.name.1 as usize])
            .map_err(|_| HeadError::Malformed)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(s.value.0 as usize..s.value.1 as usize))
                .map_err(|_| HeadError::Malformed)?;
        if name == header::CONTENT_LENGTH {
            // One plain number: a list, even of equal ones, is refused.
            match parse_length(value.as_bytes()) {
                Some(n) if length.is_none() && !value.as_bytes().contains(&b',') => {
                    length = Some(n)
                }
                _ => bad_length = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            te += 1;
            chunked = value
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
            keep_alive |= has_token(value.as_bytes(), b"keep-alive");
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    let framing = if te > 0 {
        if minor == 0 || te > 1 || !chunked || length.is_some() || bad_length {
            Framing::Unframeable
        } else {
            Framing::Chunked
        }
    } else if bad_length {
        Framing::Unframeable
    } else {
        match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let http10 = minor == 0;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        close: framing == Framing::Unframeable || if http10 { !keep_alive } else { close },
        keep_alive: http10 && keep_alive,
        expect_continue: !http10 && expect_continue,
    }))
}

/// A head over the limit: its request line alone (414), or its headers.
fn too_large(buf: &[u8], max_uri: usize) -> HeadError {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > max_uri {
        HeadError::UriTooLong
    } else {
        HeadError::TooLarge
    }
}

// ---- request body -----------------------------------------------------

/// A request body as the request path reads it.
#[derive(Debug)]
pub(crate) enum Body {
    /// All of it (or none) came with the head.
    Full(Option<Bytes>),
    /// Still on the connection, which reads it when asked (`Pump`).
    Streamed(Arc<Slot>),
}

/// Hands a streamed body over from the connection to whoever reads it,
/// one piece at a time. The reader may be another task (an HTTP/2
/// backend's connection).
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<Handover>);

#[derive(Debug, Default)]
struct Handover {
    data: Option<Bytes>,
    /// Bytes of a Content-Length body not yet handed over.
    left: Option<u64>,
    ended: bool,
    failed: Option<&'static str>,
    /// The reader waits for more.
    want: bool,
    reader: Option<Waker>,
    conn: Option<Waker>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// Why the client's body could not be read.
#[derive(Debug)]
pub(crate) struct BodyReadError(&'static str);

impl std::fmt::Display for BodyReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyReadError {}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Streamed(slot) => {
                let mut s = slot.lock();
                if let Some(d) = s.data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if let Some(why) = s.failed {
                    return Poll::Ready(Some(Err(BodyReadError(why))));
                }
                if s.ended {
                    return Poll::Ready(None);
                }
                set_waker(&mut s.reader, cx);
                if !s.want {
                    s.want = true;
                    if let Some(w) = &s.conn {
                        w.wake_by_ref();
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Streamed(slot) => {
                let s = slot.lock();
                s.ended && s.data.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Streamed(slot) => {
                let s = slot.lock();
                match s.left {
                    Some(n) => {
                        SizeHint::with_exact(n + s.data.as_ref().map_or(0, |d| d.len() as u64))
                    }
                    None => SizeHint::default(),
                }
            }
        }
    }
}

/// The connection's side of a request body: reads and decodes it when
/// the reader asks, and hands it over.
struct Pump {
    framing: Framing,
    decoder: Chunked,
    slot: Option<Arc<Slot>>,
    /// `Expect: 100-continue`, not answered yet: the client waits for it.
    continue_at: Option<usize>,
    /// Read to its end: the connection can carry another request.
    finished: bool,
    /// Stopped for good (ended or failed).
    stopped: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Pump {
    /// The body of a request with `framing`, taken whole from `buf` if it
    /// is all there.
    fn new(framing: Framing, expect_continue: bool, buf: &mut BytesMut) -> (Pump, Body) {
        let (body, slot, finished) = match framing {
            Framing::None => (Body::Full(None), None, true),
            Framing::Unframeable => (Body::Full(None), None, false),
            Framing::Length(n) if buf.len() as u64 >= n => (
                Body::Full(Some(buf.split_to(n as usize).freeze())),
                None,
                true,
            ),
            Framing::Length(n) => {
                let slot = Arc::new(Slot::default());
                slot.lock().left = Some(n);
                (Body::Streamed(slot.clone()), Some(slot), false)
            }
            Framing::Chunked => {
                let slot = Arc::new(Slot::default());
                (Body::Streamed(slot.clone()), Some(slot), false)
            }
        };
        let pump = Pump {
            framing,
            decoder: Chunked::default(),
            stopped: slot.is_none(),
            slot,
            continue_at: (expect_continue && buf.is_empty() && !finished).then_some(0),
            finished,
        };
        (pump, body)
    }

    fn finished(&self) -> bool {
        self.finished
    }

    /// Reads and hands over the next piece when the reader waits for one.
    /// Err: writing `100 Continue` failed (the connection is gone).
    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<I>,
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
                    Step::Data(data, *left == 0)
                }
                Framing::Chunked => match self.decoder.decode(&mut conn.buf) {
                    Ok(Some(Decoded::Data(d))) => Step::Data(d, false),
                    // Request trailers are dropped, as the backends'
                    // encoder would drop them.
                    Ok(Some(Decoded::Trailers(_) | Decoded::End)) => Step::End,
                    Ok(None) => Step::More,
                    Err(_) => Step::Fail("malformed chunked body"),
                },
                _ => Step::More,
            };
            let step = match step {
                Step::More => match conn.fill(cx) {
                    Poll::Ready(Ok(0)) => Step::Fail("the client closed the connection mid-body"),
                    Poll::Ready(Err(_)) => Step::Fail("reading the body failed"),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => return Ok(()),
                },
                step => step,
            };
            let mut s = slot.lock();
            s.want = false;
            match step {
                Step::Data(d, last) => {
                    if let Some(left) = s.left.as_mut() {
                        *left -= d.len() as u64;
                    }
                    s.data = Some(d);
                    if last {
                        s.ended = true;
                        self.finished = true;
                        self.stopped = true;
                    }
                }
                Step::End => {
                    s.ended = true;
                    self.finished = true;
                    self.stopped = true;
                }
                Step::Fail(why) => {
                    s.failed = Some(why);
                    self.stopped = true;
                }
                Step::More => unreachable!("handled above"),
            }
            if let Some(w) = &s.reader {
                w.wake_by_ref();
            }
            return Ok(());
        }
    }
}

enum Step {
    Data(Bytes, bool),
    End,
    More,
    Fail(&'static str),
}

// ---- response ---------------------------------------------------------

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304): the headers stay as they are.
    None,
    /// Content-Length: bytes still due.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    Close,
}

/// What the response says about the connection.
struct Connection {
    close: bool,
    /// An HTTP/1.0 client's keep-alive, granted.
    keep_alive: bool,
}

/// `lines`: the backend's headers, already encoded and without framing
/// or hop-by-hop headers; they go first, then those in `parts`.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    lines: Option<&Lines>,
    framing: Out,
    conn: Connection,
) {
    // HTTP/1.1 to HTTP/1.0 clients too, as RFC 9110 §6.2 asks; the
    // framing and keep-alive are what HTTP/1.0 understands.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    let framed = !matches!(framing, Out::None);
    let ours = conn.close || conn.keep_alive;
    let mut dated = false;
    if let Some(lines) = lines {
        out.extend_from_slice(&lines.bytes);
        dated = lines.has_date;
    }
    for (name, value) in &parts.headers {
        if (framed && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING))
            || (ours && name == header::CONNECTION)
        {
            continue;
        }
        dated |= name == header::DATE;
        crate::headers::put_line(out, name, &[value.as_bytes()]);
    }
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
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
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    pos: usize,
    /// A large data frame, written after `out`.
    big: Option<Bytes>,
    framing: Out,
    trailers: Option<HeaderMap>,
    /// The body said it ended; its terminator goes out after `big`.
    body_ended: bool,
    /// Everything of the body is in `out` or written.
    body_done: bool,
}

impl<'a> Writer<'a> {
    /// `out` holds the encoded head.
    fn new(out: &'a mut Vec<u8>, framing: Out) -> Self {
        Writer {
            out,
            pos: 0,
            big: None,
            framing,
            trailers: None,
            body_ended: false,
            body_done: false,
        }
    }

    /// Ready(Err): the body broke off or the client's socket failed; the
    /// connection must close without finishing the response.
    fn poll<I, B>(&mut self, io: &mut I, body: &mut B, cx: &mut Context<'_>) -> Poll<Result<(), ()>>
    where
        I: AsyncWrite + Unpin,
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        loop {
            if self.body_ended && !self.body_done && self.big.is_none() {
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
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(())),
                    Poll::Pending => {}
                }
            }
            if self.pos < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.pos += n;
                        if self.pos == self.out.len() {
                            self.out.clear();
                            self.pos = 0;
                        }
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(Err(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Some(big) = self.big.as_mut() {
                match Pin::new(&mut *io).poll_write(cx, big) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        big.advance(n);
                        if big.is_empty() {
                            self.big = None;
                            if let Out::Chunked = self.framing {
                                self.out.extend_from_slice(b"\r\n");
                            }
                        }
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(Err(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            return if self.body_done {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
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
            Out::None => return Ok(()),
            Out::Length(left) => {
                // More than the head said would be read as the next
                // response.
                if data.len() as u64 > *left {
                    return Err(());
                }
                *left -= data.len() as u64;
            }
            Out::Chunked => {
                put_hex(self.out, data.len() as u64);
                self.out.extend_from_slice(b"\r\n");
            }
            Out::Close => {}
        }
        if data.len() >= COPY_UNDER {
            self.big = Some(data);
            return Ok(());
        }
        self.out.extend_from_slice(&data);
        if let Out::Chunked = self.framing {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), ()> {
        match self.framing {
            // Shorter than the head said: the client must not take it
            // for whole.
            Out::Length(left) if left > 0 => return Err(()),
            Out::Chunked => {
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

    fn parse(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
        parse_head(&mut BytesMut::from(bytes), 4096, 100, 1024)
    }

    fn framing(headers: &str) -> Framing {
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        parse(head.as_bytes()).unwrap().unwrap().framing
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_what_could_be_read_two_ways() {
        assert_eq!(framing(""), Framing::None);
        assert_eq!(framing("Content-Length: 0\r\n"), Framing::None);
        assert_eq!(framing("Content-Length: 12\r\n"), Framing::Length(12));
        assert_eq!(framing("Transfer-Encoding: chunked\r\n"), Framing::Chunked);
        for odd in [
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "Content-Length: 3, 3\r\n",
            "Content-Length: +3\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(framing(odd), Framing::Unframeable, "{odd}");
        }
        let head = parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Unframeable);
        assert!(
            head.close,
            "a request that cannot be framed ends its connection"
        );
    }

    #[test]
    fn a_head_parses_in_place_with_every_header_as_it_came() {
        let mut buf = BytesMut::from(
            &b"\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nExpect: 100-continue\r\n\r\nnext"[..],
        );
        let head = parse_head(&mut buf, 4096, 100, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"next", "only the head is consumed");
        let req = &head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a?b");
        let values: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(head.expect_continue && !head.close);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn connection_options_decide_keep_alive() {
        let close = |h: &[u8]| parse(h).unwrap().unwrap().close;
        assert!(close(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!close(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.close && h.keep_alive);
    }

    #[test]
    fn heads_over_the_limits_say_which_limit() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(5000));
        assert!(matches!(
            parse(long_line.as_bytes()),
            Err(HeadError::UriTooLong)
        ));
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        assert!(matches!(
            parse(long_uri.as_bytes()),
            Err(HeadError::UriTooLong)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(5000));
        assert!(matches!(parse(big.as_bytes()), Err(HeadError::TooLarge)));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..101 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(parse(many.as_bytes()), Err(HeadError::TooLarge)));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nA B: c\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }

    fn head_of(resp: http::Response<()>, framing: Out, conn: Connection) -> String {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, None, framing, conn);
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
        let text = head_of(resp, Out::Length(3), keep);
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
        let text = head_of(resp, Out::None, close);
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
            Out::Chunked,
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

    /// Runs a `Writer` over `frames` into memory.
    fn write_body(framing: Out, frames: Vec<Frame<Bytes>>) -> Result<Vec<u8>, ()> {
        let stream =
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut body = http_body_util::StreamBody::new(stream);
        let mut out = Vec::new();
        let mut sink = Vec::new();
        let mut writer = Writer::new(&mut out, framing);
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
            Out::Chunked,
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
            Out::Length(5),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert!(short.is_err());
        let long = write_body(
            Out::Length(2),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert!(long.is_err());
        let exact = write_body(
            Out::Length(3),
            vec![Frame::data(Bytes::from_static(b"abc"))],
        );
        assert_eq!(exact.unwrap(), b"abc");
    }
}
