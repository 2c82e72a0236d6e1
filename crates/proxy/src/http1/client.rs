//! One HTTP/1.1 exchange with a backend (`protocol = "http1"`), driven
//! from the request's own task: hyper's client connection cost a task per
//! connection and, per request, a dispatch channel, a oneshot, a body
//! channel and two task wake-ups; here the request's task writes the
//! request and reads the response itself, and the response body reads
//! straight from the socket when the client side asks for more.
//!
//! - the request head (and a buffered body) is encoded into one buffer and
//!   written with one `write`; a streamed body is sent with its
//!   Content-Length or chunked;
//! - the response head is parsed by [`super::head`] and its body framed by
//!   its decision ([`super::framing`]): no body, Content-Length, chunked
//!   with trailers, or until close;
//! - one response timer per connection, kept across requests;
//! - on `101` the socket, with any bytes read past the head, is handed to
//!   the tunnel.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::tcp::Tcp;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::chunked::{ChunkError, Chunked, Decoded};
use super::framing::{Asked, Framing};
use super::head::{
    Lines, MAX_RESPONSE_HEAD, ResponseHead, ResponseHeadError, parse_response_head, worth_parsing,
};
use super::pool::{H1Backend, Timer};
use super::{put_decimal, put_hex};
use crate::body::{ClientBodyError, RequestBody};
use crate::headers::{Forwarded, put_line};
use crate::io::{READ_SIZE, Rewind, keep_spare, poll_fill, spare_buffer};

/// Why one attempt at a backend failed, and in which phase: the request
/// path turns this into a [`crate::ProxyError`] that says whether it may
/// be retried.
#[derive(Debug)]
pub(crate) enum H1Error {
    /// TCP connect refused or failed: nothing was sent.
    Connect(io::Error),
    /// TCP connect slower than the pool's `timeouts.connect`.
    ConnectTimeout,
    /// No response head within the pool's `timeouts.response`, counted from
    /// when the request could be sent.
    ResponseTimeout,
    /// The exchange failed once the request was (or may have been) sent.
    Send(Error),
}

/// What went wrong on a backend connection, or with the client's body
/// while it was being sent there.
#[derive(Debug)]
pub(crate) enum Error {
    /// Reading from or writing to the backend failed.
    Io(io::Error),
    /// The backend closed the connection before the response was complete.
    Closed,
    /// The response head is not one the codec accepts.
    Head(ResponseHeadError),
    /// The response's chunked body is malformed or its trailers too large.
    Chunk(ChunkError),
    /// The client's body broke off, ran over the limit or stalled.
    ClientBody(ClientBodyError),
    /// The client's body was not as long as its Content-Length said.
    ClientBodyLength,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "backend connection: {e}"),
            Error::Closed => f.write_str("backend closed the connection mid-response"),
            Error::Head(e) => write!(f, "backend {e}"),
            Error::Chunk(e) => write!(f, "chunked body from backend: {e}"),
            Error::ClientBody(e) => e.fmt(f),
            Error::ClientBodyLength => {
                f.write_str("the client's body does not match its Content-Length")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Chunk(e) => Some(e),
            Error::ClientBody(e) => Some(e),
            _ => None,
        }
    }
}

impl H1Backend {
    /// Sends `req` on an idle connection, or a new one if none is left,
    /// and reads the response head. A pooled connection the backend closed
    /// before it took any of the request is skipped for the next one, so a
    /// backend closing a keep-alive connection is never seen as a failure
    /// of the request. The response timeout runs from when the request has
    /// been sent ([`Upload::sent_since`]): a slow upload is the client's
    /// to answer for (`body_timeout`), not the backend's.
    pub async fn send(
        self: &Arc<Self>,
        head: Outgoing<'_>,
        body: RequestBody,
        response_timeout: Duration,
    ) -> Result<Response<H1Body>, H1Error> {
        let (mut upload, asked) = encode(&head, body);
        let now = Instant::now();
        let mut start = now;
        // Sent again once, on a new connection (below).
        let mut resent = false;
        loop {
            let idle = if resent { None } else { self.checkout(now) };
            let (mut conn, pooled) = match idle {
                Some((io, timer)) => (BackendConn::new(io, timer), true),
                None => {
                    let io = Box::pin(self.connect()).await?;
                    start = Instant::now();
                    let timer = Box::pin(tokio::time::sleep_until(start + response_timeout));
                    (BackendConn::new(io, timer), false)
                }
            };
            let mut checked = false;
            let exchange = std::future::poll_fn(|cx| {
                if let Poll::Ready(res) = conn.poll_exchange(cx, &mut upload, asked) {
                    return Poll::Ready(Some(res));
                }
                let Some(sent) = upload.sent_since(start) else {
                    return Poll::Pending;
                };
                match conn.poll_deadline(cx, sent + response_timeout, &mut checked) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            });
            match exchange.await {
                None => return Err(H1Error::ResponseTimeout),
                Some(Ok(head)) => return Ok(self.respond(conn, head, upload)),
                Some(Err(Error::Io(_) | Error::Closed)) if pooled && !upload.wrote => {
                    upload.broken = None;
                    continue;
                }
                // The backend closed the pooled connection as the request
                // went out (its keep-alive timeout), and no byte of a
                // response came: an idempotent request held whole in
                // `out` goes again, once, on a new connection (RFC 9112
                // §9.3.1). Another may have been acted on.
                Some(Err(Error::Io(_) | Error::Closed))
                    if pooled
                        && !resent
                        && conn.buf.is_empty()
                        && upload.stream.is_none()
                        && idempotent(head.method) =>
                {
                    upload.pos = 0;
                    upload.wrote = false;
                    upload.broken = None;
                    resent = true;
                    continue;
                }
                Some(Err(e)) => return Err(H1Error::Send(e)),
            }
        }
    }

    pub(super) async fn connect(&self) -> Result<Tcp, H1Error> {
        let io = tokio::time::timeout(self.connect_timeout, Tcp::connect(self.addr()))
            .await
            .map_err(|_| H1Error::ConnectTimeout)?
            .map_err(H1Error::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(io)
    }

    /// The response for a parsed head. A body already whole in the read
    /// buffer (the common small response) is taken out at once and the
    /// connection goes straight back to the pool.
    fn respond(
        self: &Arc<Self>,
        mut conn: BackendConn,
        head: ResponseHead,
        upload: Upload,
    ) -> Response<H1Body> {
        // Boxed: rare, and it would make every body larger.
        let upload = (!upload.done()).then(|| Box::new(upload));
        let reusable = head.keep_alive && upload.is_none();
        let (state, conn) = match head.framing {
            Framing::Upgrade => (BodyState::Upgrade, Some(conn)),
            Framing::Empty => {
                self.finish(conn, reusable);
                (BodyState::Full(None), None)
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let body = conn.buf.split_to(n as usize).freeze();
                self.finish(conn, reusable);
                (BodyState::Full((n > 0).then_some(body)), None)
            }
            Framing::Length(n) => (BodyState::Length(n), Some(conn)),
            Framing::Chunked => (BodyState::Chunked(Chunked::default()), Some(conn)),
            Framing::Close => (BodyState::Close, Some(conn)),
        };
        let live = conn.map(|conn| Live {
            conn,
            upload,
            keep_alive: head.keep_alive,
            backend: self.clone(),
        });
        let mut resp = Response::new(H1Body {
            state,
            live,
            lines: head.lines,
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        if let Some(reason) = head.reason {
            resp.extensions_mut().insert(reason);
        }
        resp
    }

    /// A connection whose exchange is over: back to the pool if it may
    /// carry another request and nothing unasked-for came after the
    /// response, closed otherwise.
    fn finish(self: &Arc<Self>, conn: BackendConn, reusable: bool) {
        let BackendConn { io, buf, timer, .. } = conn;
        if reusable && buf.is_empty() {
            self.release(io, timer);
        }
        keep_spare(buf);
    }
}

// ---- request ----------------------------------------------------------

/// The request on its way out: encoded bytes not yet written, then the
/// rest of a streamed body.
struct Upload {
    out: Vec<u8>,
    pos: usize,
    /// Some of the request reached the socket: from here on a failure may
    /// have reached the backend too.
    wrote: bool,
    /// A streamed body: boxed, as a request sent in one write (the common
    /// one) has none and should not carry its room.
    stream: Option<Box<Streamed>>,
    /// Sending broke off (the backend stopped reading, or the client's
    /// body failed): nothing more is written, but the backend's answer is
    /// still read, and the connection is not reused.
    broken: Option<Error>,
}

/// The client's body as it streams to the backend.
struct Streamed {
    /// None once it has ended (its end encoded in `Upload::out`).
    body: Option<RequestBody>,
    /// `Length` (bytes still to come) or `Chunked`.
    framing: Framing,
    /// The last moment it moved: a piece read from the client or written
    /// to the backend (None before the first).
    moved_at: Option<Instant>,
    /// It waits for the client's next piece.
    waiting_on_client: bool,
    /// The request trailers of a chunked body, written after its last
    /// chunk (others cannot carry them).
    trailers: Option<HeaderMap>,
}

/// The head of a request to send, borrowed from the request path: a retry
/// sends the same head again without a copy of its headers.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: path and query.
    pub path: &'a str,
    /// The client's headers, as they came: the encoder leaves out the
    /// hop-by-hop ones and those `forwarded` sets.
    pub headers: &'a HeaderMap,
    /// A Host to send first, for a request that came without one.
    pub host: Option<&'a HeaderValue>,
    pub forwarded: Option<&'a Forwarded<'a>>,
    /// The client's Upgrade, when the request is an upgrade to carry.
    pub upgrade: Option<&'a HeaderValue>,
    /// Whether `headers` has a Connection header, which may name more
    /// hop-by-hop headers (known from the request path's own pass).
    pub connection: bool,
    /// Headers the Connection header may not name away (Host, and what
    /// routing read).
    pub kept: &'a [http::HeaderName],
}

/// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: safe to send twice (RFC 9110
/// §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Encodes the request head, and a buffered body after it, into one
/// buffer. Framing is ours to write: the client's Content-Length and any
/// Transfer-Encoding are dropped and the body's real framing written, so a
/// backend can never read a body two ways. Hop-by-hop headers (RFC 9110
/// §7.6.1) are left out here rather than removed from the map first.
fn encode<'a>(parts: &Outgoing<'a>, body: RequestBody) -> (Upload, Asked<'a>) {
    let path = parts.path;
    let full = match &body {
        RequestBody::Full(Some(b)) => b.len(),
        _ => 0,
    };
    // Request line, framing and upgrade headers and blank line fit in the 64.
    let mut cap = parts.method.as_str().len() + path.len() + 64 + full;
    cap += parts.forwarded.map_or(0, Forwarded::max_written);
    cap += parts.upgrade.map_or(0, HeaderValue::len);
    for (name, value) in parts.headers {
        cap += name.as_str().len() + value.len() + 4;
    }
    // Names the client's Connection header lists: hop-by-hop too.
    let mut named = Vec::new();
    if parts.connection {
        for value in parts.headers.get_all(header::CONNECTION) {
            crate::headers::connection_named(value.as_bytes(), &mut named);
        }
        named.retain(|n| !parts.kept.contains(n));
    }
    // The client's X-Forwarded-For lines, extended as one list.
    let mut client_for = smallvec::SmallVec::<[&HeaderValue; 2]>::new();
    let mut out = Vec::with_capacity(cap);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = parts.host {
        put_line(&mut out, &header::HOST, &[host.as_bytes()]);
    }
    let asked = Asked {
        head: *parts.method == Method::HEAD,
        connect: *parts.method == Method::CONNECT,
        upgrade: parts.upgrade.is_some(),
        request_id: parts.forwarded.map(|f| f.request_id.as_bytes()),
    };
    let mut had_length = false;
    for (name, value) in parts.headers {
        if *name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if parts.forwarded.is_some() && Forwarded::sets(name) {
            // Unless the client named it hop-by-hop, as h2 pools read it.
            if *name == crate::headers::X_FORWARDED_FOR && !named.contains(name) {
                client_for.push(value);
            }
            continue;
        }
        if crate::headers::is_hop_by_hop(name.as_str().as_bytes()) || named.contains(name) {
            continue;
        }
        put_line(&mut out, name, &[value.as_bytes()]);
    }
    if let Some(up) = parts.upgrade {
        put_line(&mut out, &header::CONNECTION, &[b"upgrade"]);
        put_line(&mut out, &header::UPGRADE, &[up.as_bytes()]);
    }
    if let Some(fwd) = parts.forwarded {
        fwd.write(&mut out, &client_for);
    }
    let framing = match &body {
        // As hyper's client did: no body, no framing header, unless the
        // client said `Content-Length: 0` itself.
        RequestBody::Full(None) => {
            if had_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
            None
        }
        RequestBody::Full(Some(b)) => {
            put_length(&mut out, b.len() as u64);
            out.extend_from_slice(b);
            None
        }
        RequestBody::Stream(s) => Some(match s.size_hint().exact() {
            Some(n) => {
                put_length(&mut out, n);
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                Framing::Chunked
            }
        }),
    };
    let stream = framing.map(|framing| {
        Box::new(Streamed {
            body: Some(body),
            framing,
            moved_at: None,
            waiting_on_client: false,
            trailers: None,
        })
    });
    let upload = Upload {
        out,
        pos: 0,
        wrote: false,
        stream,
        broken: None,
    };
    (upload, asked)
}

/// `content-length: N` and the blank line that ends the head.
fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_decimal(out, n);
    out.extend_from_slice(b"\r\n\r\n");
}

impl Upload {
    fn done(&self) -> bool {
        self.stream.as_ref().is_none_or(|s| s.body.is_none()) && self.pos == self.out.len()
    }

    /// Writes what is encoded, then pulls and encodes the body's next
    /// frame, until the body has ended (ready) or the socket or the client
    /// make it wait (pending). The client's body is read only as fast as
    /// the backend takes it.
    fn poll(&mut self, io: &mut Tcp, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while self.pos < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]))
                    .map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.wrote = true;
                if let Some(s) = self.stream.as_mut() {
                    s.moved_at = Some(Instant::now());
                }
            }
            let Some(s) = self.stream.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let Some(body) = s.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            self.out.clear();
            self.pos = 0;
            let polled = Pin::new(body).poll_frame(cx);
            s.waiting_on_client = polled.is_pending();
            let polled = ready!(polled);
            s.moved_at = Some(Instant::now());
            match polled {
                Some(Ok(frame)) => s.encode(frame, &mut self.out)?,
                Some(Err(e)) => return Poll::Ready(Err(Error::ClientBody(e))),
                None => {
                    match s.framing {
                        Framing::Length(0) => {}
                        Framing::Length(_) => return Poll::Ready(Err(Error::ClientBodyLength)),
                        // The trailers, which only a chunked body can
                        // carry (a Content-Length one drops them).
                        _ => {
                            self.out.extend_from_slice(b"0\r\n");
                            if let Some(t) = s.trailers.take() {
                                for (name, value) in &t {
                                    put_line(&mut self.out, name, &[value.as_bytes()]);
                                }
                            }
                            self.out.extend_from_slice(b"\r\n");
                        }
                    }
                    s.body = None;
                }
            }
        }
    }

    /// When the response timeout runs from: `start` (when the request
    /// could be sent) for one sent in one write; for a streamed body, the
    /// last moment it moved, so the timeout counts from its end once it
    /// is all sent, and a backend that stops taking it times out too.
    /// None while the body waits on the client, whose own timeouts
    /// (`body_timeout`, `min_body_rate`) apply then.
    fn sent_since(&self, start: Instant) -> Option<Instant> {
        match &self.stream {
            None => Some(start),
            Some(s) if s.waiting_on_client && self.broken.is_none() => None,
            Some(s) => Some(s.moved_at.unwrap_or(start)),
        }
    }
}

impl Streamed {
    /// Encodes a frame of the client's body into `out`.
    fn encode(&mut self, frame: Frame<Bytes>, out: &mut Vec<u8>) -> Result<(), Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                self.trailers = frame.into_trailers().ok();
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                // More than declared would be read by the backend as the
                // start of another request.
                if data.len() as u64 > *left {
                    return Err(Error::ClientBodyLength);
                }
                *left -= data.len() as u64;
                out.extend_from_slice(&data);
            }
            _ => {
                put_hex(out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }
}

// ---- response ---------------------------------------------------------

/// A backend connection in use, with what has been read and not consumed.
struct BackendConn {
    io: Tcp,
    buf: BytesMut,
    read_size: usize,
    /// How much of a partial head in `buf` has been looked at for its end.
    scanned: usize,
    timer: Timer,
}

impl BackendConn {
    fn new(io: Tcp, timer: Timer) -> Self {
        BackendConn {
            io,
            buf: spare_buffer(),
            read_size: READ_SIZE,
            scanned: 0,
            timer,
        }
    }

    /// Ready once `deadline` has passed. The timer may hold an earlier
    /// request's deadline, which is never later than this one (they are
    /// all the pool's response timeout from their start): when it fires,
    /// it moves on to this one. `checked`: this exchange has polled it,
    /// so that it wakes this task; after that only a fired timer is polled.
    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Instant,
        checked: &mut bool,
    ) -> Poll<()> {
        if *checked && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        *checked = true;
        if self.timer.deadline() > deadline {
            // A reload shortened the response timeout.
            self.timer.as_mut().reset(deadline);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Reads more into `buf`; 0 when the backend closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        poll_fill(&mut self.io, &mut self.buf, &mut self.read_size, cx).map_err(Error::Io)
    }

    /// Sends the request and reads until a final response head (1xx
    /// informational responses skipped). The upload goes on while reading,
    /// so a backend that answers before it has read the whole body is
    /// heard, and one that sends while it reads never waits on us. A
    /// backend that stops reading (closes, or resets the connection) may
    /// have answered first: what it sent is read before its failure is
    /// believed.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        upload: &mut Upload,
        asked: Asked,
    ) -> Poll<Result<ResponseHead, Error>> {
        if !upload.done()
            && upload.broken.is_none()
            && let Poll::Ready(Err(e)) = upload.poll(&mut self.io, cx)
        {
            match e {
                Error::Io(_) => upload.broken = Some(e),
                // The client's fault: no answer can make up for it.
                e => return Poll::Ready(Err(e)),
            }
        }
        loop {
            // Parsed once a head's end is here (or it is too large to
            // wait for); a 1xx consumed on the way leaves the rest to scan.
            if worth_parsing(&mut self.buf, &mut self.scanned, MAX_RESPONSE_HEAD) {
                let before = self.buf.len();
                match parse_response_head(&mut self.buf, asked).map_err(Error::Head)? {
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.buf.len() < before => self.scanned = 0,
                    None => self.scanned = before,
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(upload.broken.take().unwrap_or(Error::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(upload.broken.take().unwrap_or(e))),
            }
        }
    }
}

/// A backend's response body, read from the connection as the client side
/// asks for it. The connection goes back to the pool the moment the body's
/// end has been read; a body dropped before that closes it.
pub(crate) struct H1Body {
    state: BodyState,
    /// The connection the body still comes on.
    live: Option<Live>,
    /// The response's headers.
    lines: Lines,
}

struct Live {
    conn: BackendConn,
    /// A streamed request body the backend answered before it was all
    /// sent: it keeps going while the response is read.
    upload: Option<Box<Upload>>,
    keep_alive: bool,
    backend: Arc<H1Backend>,
}

/// Where a response body stands.
enum BodyState {
    /// Whole already (or none).
    Full(Option<Bytes>),
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Close,
    /// 101: the connection is for the tunnel.
    Upgrade,
    Done,
}

impl H1Body {
    /// The response's headers, as they go on.
    pub fn lines(&self) -> &Lines {
        &self.lines
    }

    /// The connection of a 101 response, taken for the tunnel: bytes the
    /// backend sent past the head come first.
    pub fn take_upgrade(&mut self) -> Option<Rewind<Tcp>> {
        if !matches!(self.state, BodyState::Upgrade) {
            return None;
        }
        self.state = BodyState::Done;
        let live = self.live.take()?;
        Some(Rewind::new(live.conn.io, live.conn.buf.freeze()))
    }

    /// The body has ended: its connection goes back to the pool if the
    /// request went out whole and the response allows it.
    fn end(&mut self) {
        self.state = BodyState::Done;
        if let Some(live) = self.live.take() {
            let reusable = live.keep_alive && live.upload.is_none();
            live.backend.finish(live.conn, reusable);
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match &mut self.state {
                BodyState::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                BodyState::Upgrade | BodyState::Done => return Poll::Ready(None),
                _ => {}
            }
            let Some(live) = self.live.as_mut() else {
                return Poll::Ready(None);
            };
            // A request still being sent: once whole, the connection may
            // be reused; if it breaks off, the response that came is still
            // read to its end, and the connection is not reused.
            if let Some(up) = live.upload.as_mut()
                && up.broken.is_none()
                && let Poll::Ready(res) = up.poll(&mut live.conn.io, cx)
            {
                match res {
                    Ok(()) => live.upload = None,
                    Err(e) => up.broken = Some(e),
                }
            }
            let buf = &mut live.conn.buf;
            let (frame, ended) = match &mut self.state {
                BodyState::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    (
                        Some(Frame::data(buf.split_to(n as usize).freeze())),
                        *left == 0,
                    )
                }
                BodyState::Chunked(dec) => match dec.decode(buf).map_err(Error::Chunk)? {
                    Some(Decoded::Data(d)) => (Some(Frame::data(d)), false),
                    Some(Decoded::Trailers(t)) => (Some(Frame::trailers(t)), true),
                    Some(Decoded::End) => (None, true),
                    None => (None, false),
                },
                BodyState::Close if !buf.is_empty() => {
                    (Some(Frame::data(buf.split().freeze())), false)
                }
                _ => (None, false),
            };
            if ended {
                self.end();
            }
            if frame.is_some() || ended {
                return Poll::Ready(frame.map(Ok));
            }
            if ready!(live_fill(self.live.as_mut(), cx))? == 0 {
                if matches!(self.state, BodyState::Close) {
                    self.end();
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::Closed)));
            }
        }
    }
}

fn live_fill(live: Option<&mut Live>, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
    match live {
        Some(live) => live.conn.poll_fill(cx),
        None => Poll::Ready(Ok(0)),
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let res = this.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = &res {
            // Framing lost: the connection can only be closed.
            this.state = BodyState::Done;
            this.live = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Full(b) => b.is_none(),
            BodyState::Length(n) => *n == 0,
            BodyState::Upgrade | BodyState::Done => true,
            BodyState::Chunked(_) | BodyState::Close => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BodyState::Length(n) => SizeHint::with_exact(*n),
            BodyState::Upgrade | BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_config::snapshot::Timeouts;
    use http::HeaderName;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn parts(method: Method, headers: &[(&str, &str)]) -> (Method, HeaderMap) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method, map)
    }

    fn encode_for(
        (method, headers): &(Method, HeaderMap),
        body: RequestBody,
    ) -> (Upload, Asked<'static>) {
        let head = Outgoing {
            method,
            path: "/p?q=1",
            headers,
            host: None,
            forwarded: None,
            upgrade: None,
            connection: false,
            kept: &[],
        };
        let (up, asked) = encode(&head, body);
        // No `forwarded`, so no request id to borrow.
        (
            up,
            Asked {
                request_id: None,
                ..asked
            },
        )
    }

    #[test]
    fn requests_are_framed_by_their_body() {
        let (up, asked) = encode_for(
            &parts(
                Method::GET,
                &[("host", "b"), ("transfer-encoding", "chunked")],
            ),
            RequestBody::Full(None),
        );
        assert_eq!(up.out, b"GET /p?q=1 HTTP/1.1\r\nhost: b\r\n\r\n");
        assert!(!asked.head && !asked.upgrade && up.stream.is_none());
        let (up, _) = encode_for(
            &parts(Method::POST, &[("content-length", "0")]),
            RequestBody::Full(None),
        );
        assert_eq!(up.out, b"POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let (up, _) = encode_for(
            &parts(Method::PUT, &[("content-length", "99"), ("x-a", "1")]),
            RequestBody::Full(Some(Bytes::from_static(b"hello"))),
        );
        assert_eq!(
            up.out,
            b"PUT /p?q=1 HTTP/1.1\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
        );
        let (_, asked) = encode_for(&parts(Method::HEAD, &[]), RequestBody::Full(None));
        assert!(asked.head && !asked.upgrade);
        // A request that came without a Host names the backend, first.
        let (method, headers) = parts(Method::GET, &[("x-a", "1")]);
        let host = HeaderValue::from_static("10.0.0.1:80");
        let head = Outgoing {
            method: &method,
            path: "/",
            headers: &headers,
            host: Some(&host),
            forwarded: None,
            upgrade: None,
            connection: false,
            kept: &[],
        };
        let (up, _) = encode(&head, RequestBody::Full(None));
        assert_eq!(
            up.out,
            b"GET / HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_forwarded_ones_are_set() {
        let (method, headers) = parts(
            Method::GET,
            &[
                ("host", "a.test"),
                ("connection", "keep-alive, Upgrade, X-Private, Host"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic abc"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-proto", "gopher"),
                ("x-request-id", "from-client"),
                ("x-kept", "yes"),
            ],
        );
        let (ip, id) = (
            HeaderValue::from_static("127.0.0.1"),
            HeaderValue::from_static("id-1"),
        );
        let host = headers.get("host").cloned();
        let fwd = Forwarded {
            client_ip: &ip,
            host: host.as_ref(),
            proto: "https",
            request_id: &id,
        };
        let up = HeaderValue::from_static("websocket");
        let mut head = Outgoing {
            method: &method,
            path: "/",
            headers: &headers,
            host: None,
            forwarded: Some(&fwd),
            upgrade: None,
            connection: true,
            kept: &[header::HOST],
        };
        let (out, asked) = encode(&head, RequestBody::Full(None));
        assert!(!asked.upgrade);
        assert_eq!(
            String::from_utf8(out.out).unwrap(),
            "GET / HTTP/1.1\r\nhost: a.test\r\nx-kept: yes\r\n\
             x-forwarded-for: 203.0.113.7, 198.51.100.1, 127.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: a.test\r\nx-request-id: id-1\r\n\r\n"
        );
        // An upgrade the pool carries: Connection and Upgrade are ours.
        head.upgrade = Some(&up);
        let (out, asked) = encode(&head, RequestBody::Full(None));
        assert!(asked.upgrade);
        let text = String::from_utf8(out.out).unwrap();
        assert!(
            text.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("upgrade").count(), 2, "{text}");
    }

    /// A backend that answers each request (its head read up to the blank
    /// line) with the next of `replies`, closing the connection after a
    /// reply marked `close`. Counts the connections it accepted.
    async fn scripted(replies: Vec<(&'static [u8], bool)>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            'conns: while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                let mut got = Vec::new();
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let Some((reply, close)) = replies.next() else {
                            return;
                        };
                        s.write_all(reply).await.unwrap();
                        if close {
                            continue 'conns;
                        }
                    }
                    let mut chunk = [0u8; 1024];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => continue 'conns,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        });
        (addr, accepted)
    }

    fn backend(addr: SocketAddr) -> Arc<H1Backend> {
        backend_idle(addr, Duration::from_secs(60))
    }

    fn backend_idle(addr: SocketAddr, idle: Duration) -> Arc<H1Backend> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(5),
            idle,
            tunnel: Duration::from_secs(60),
        };
        Arc::new(H1Backend::new(addr, &timeouts, 8))
    }

    /// A request for `/` with `headers` and nothing added.
    fn plain<'a>(method: &'a Method, headers: &'a HeaderMap) -> Outgoing<'a> {
        Outgoing {
            method,
            path: "/",
            headers,
            host: None,
            forwarded: None,
            upgrade: None,
            connection: false,
            kept: &[],
        }
    }

    async fn get(
        b: &Arc<H1Backend>,
        method: Method,
    ) -> Result<(u16, Bytes, Option<HeaderMap>), Error> {
        let headers = HeaderMap::new();
        let head = plain(&method, &headers);
        let resp = match b
            .send(head, RequestBody::Full(None), Duration::from_secs(5))
            .await
        {
            Ok(r) => r,
            Err(H1Error::Send(e)) => return Err(e),
            Err(e) => panic!("{e:?}"),
        };
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn bodies_of_every_framing_over_a_socket() {
        let (addr, accepted) = scripted(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\nx-t: 1\r\n\r\n", false),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", true),
        ])
        .await;
        let b = backend(addr);
        assert_eq!(get(&b, Method::GET).await.unwrap().1, "ok");
        let (_, body, trailers) = get(&b, Method::GET).await.unwrap();
        assert_eq!(body, "abc");
        assert_eq!(trailers.unwrap()["x-t"], "1");
        assert_eq!(
            get(&b, Method::GET).await.unwrap(),
            (304, Bytes::new(), None)
        );
        assert_eq!(
            get(&b, Method::HEAD).await.unwrap(),
            (200, Bytes::new(), None)
        );
        // All on one connection so far.
        assert_eq!(accepted.load(SeqCst), 1);
        assert_eq!(get(&b, Method::GET).await.unwrap().1, "until close");
        assert_eq!(get(&b, Method::GET).await.unwrap().1, "ok");
        assert_eq!(accepted.load(SeqCst), 2);
        // The backend closes mid-body: an error, never a short body.
        assert!(matches!(get(&b, Method::GET).await, Err(Error::Closed)));
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_backend_is_skipped() {
        let (addr, accepted) = scripted(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", false),
        ])
        .await;
        let b = backend(addr);
        assert_eq!(get(&b, Method::POST).await.unwrap().1, "a");
        // The backend closed without saying so; let the close arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&b, Method::POST).await.unwrap().1, "b");
        assert_eq!(accepted.load(SeqCst), 2);
    }

    /// A backend on one connection that answers its n-th request after
    /// `delays[n]`.
    async fn slow_backend(delays: Vec<Duration>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for delay in delays {
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                seen.clear();
                tokio::time::sleep(delay).await;
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn a_pooled_connection_times_each_request_from_its_own_start() {
        let ms = Duration::from_millis;
        let addr = slow_backend(vec![ms(0), ms(100), ms(10_000)]).await;
        let b = backend(addr);
        let timeout = ms(200);
        let send = |b: Arc<H1Backend>| async move {
            let (method, headers) = (Method::GET, HeaderMap::new());
            let head = plain(&method, &headers);
            let started = Instant::now();
            let res = b.send(head, RequestBody::Full(None), timeout).await;
            (res.map(|r| r.status()), started.elapsed())
        };
        assert!(send(b.clone()).await.0.is_ok());
        // The connection's timer still holds the first request's deadline,
        // which passes while the second waits: that must not time it out.
        tokio::time::sleep(ms(150)).await;
        let (res, took) = send(b.clone()).await;
        assert!(res.is_ok(), "{res:?} after {took:?}");
        // A backend that never answers is cut at the timeout, counted from
        // this request's start.
        let (res, took) = send(b.clone()).await;
        assert!(matches!(res, Err(H1Error::ResponseTimeout)), "{res:?}");
        assert!(took >= timeout && took < timeout + ms(20), "{took:?}");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, _) = scripted(vec![(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
            false,
        )])
        .await;
        let b = backend_idle(addr, Duration::from_millis(200));
        get(&b, Method::GET).await.unwrap();
        assert_eq!(b.idle_here(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.idle_here(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.idle_here() == 0 && !b.sweeper_armed());
    }
}
