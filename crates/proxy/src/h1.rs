//! HTTP/1.1 to backends (`protocol = "http1"`): a small client codec and
//! the keep-alive pool it draws on, both driven from the request's own
//! task. hyper's client connection cost a task per connection and, per
//! request, a dispatch channel, a oneshot, a body channel and two task
//! wake-ups; here the request's task writes the request and reads the
//! response itself, and the response body reads straight from the socket
//! when the client side asks for more.
//!
//! What this module owns:
//! - the pool: idle connections sit in a stack per worker thread (no lock,
//!   and the connection most recently used, the warmest, goes first),
//!   closed after `timeouts.idle` (those beyond `idle_per_backend` after
//!   a second) by one sweeper task per backend and thread that runs only
//!   while the stack holds connections. A connection goes back only once
//!   its response body has been read to the end, so a request never waits
//!   behind, or reads the tail of, someone else's response.
//! - the codec: the request head (and a buffered body) encoded into one
//!   buffer and written with one `write`; a streamed body sent with its
//!   Content-Length or chunked; the response head parsed with httparse and
//!   its headers passed on as the encoded lines they came as ([`Lines`]);
//!   the body framed per RFC 9112 §6.3 (no body, Content-Length, chunked
//!   with trailers, or until close); one response timer per connection.
//! - upgrades: on `101` the socket, with any bytes read past the head, is
//!   handed to the tunnel.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fulcrum_config::snapshot::Timeouts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use hyper::body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use thread_local::ThreadLocal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::RuntimeFlavor;
use tokio::time::Instant;

use crate::headers::{Forwarded, put_line};
use crate::proxy::{ClientBodyError, RequestBody};

/// A response head larger than this is refused (hyper's client allowed
/// about 400 KiB; no sane backend needs more than a few KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Header lines in a response head or trailer section.
const MAX_HEADERS: usize = 128;
/// A chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// A trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// First read size; doubled, up to `MAX_READ`, while reads fill it.
pub(crate) const READ_SIZE: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;
/// Below this much room left, a read gets a fresh `read_size`.
const MIN_READ: usize = 2 * 1024;

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
    /// The response head is over 64 KiB or 128 header lines.
    HeadTooLarge,
    /// The response head is not HTTP/1.x.
    Parse(httparse::Error),
    /// A header name or value that `http` refuses.
    BadHeader,
    /// Content-Length is not a number, or several that differ.
    BadContentLength,
    /// Transfer-Encoding on an HTTP/1.0 response: framing it cannot have.
    BadTransferEncoding,
    /// A malformed chunk-size line, or chunk data not followed by CRLF.
    BadChunk,
    /// A trailer section over 16 KiB or 128 lines.
    TrailersTooLarge,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    UnexpectedUpgrade,
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
            Error::HeadTooLarge => f.write_str("backend response head too large"),
            Error::Parse(e) => write!(f, "malformed backend response head: {e}"),
            Error::BadHeader => f.write_str("invalid header in backend response"),
            Error::BadContentLength => f.write_str("invalid Content-Length in backend response"),
            Error::BadTransferEncoding => {
                f.write_str("Transfer-Encoding in an HTTP/1.0 backend response")
            }
            Error::BadChunk => f.write_str("malformed chunked body from backend"),
            Error::TrailersTooLarge => f.write_str("backend trailers too large"),
            Error::UnexpectedUpgrade => f.write_str("backend switched protocols unasked"),
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
            Error::Parse(e) => Some(e),
            Error::ClientBody(e) => Some(e),
            _ => None,
        }
    }
}

/// Idle connections of one backend on one thread, oldest at the bottom.
#[derive(Default)]
struct Stack {
    conns: Vec<Idle>,
    /// A sweeper task is (or, on a multi-thread runtime, cannot be) running
    /// for this stack.
    armed: bool,
    /// When the sweeper wakes next; it is told to wake sooner when the
    /// stack grows past `idle_per_backend`.
    sweep_at: Option<Instant>,
    wake_sweeper: Arc<tokio::sync::Notify>,
}

/// Idle connections beyond `idle_per_backend` are closed once idle this
/// long: a burst's surplus goes within a second, while connections that a
/// steady load above that number keeps reusing are not closed and opened
/// again request after request (measured: bench/RESULTS.md, round 7).
const SURPLUS_GRACE: Duration = Duration::from_secs(1);

struct Idle {
    io: TcpStream,
    since: Instant,
    timer: Timer,
}

/// A backend connection's response timer, kept with it from request to
/// request: it is armed in the timer wheel once and moved on lazily (see
/// `Conn::poll_deadline`), where a timer per request cost an insertion
/// into and a removal from the wheel each.
type Timer = Pin<Box<tokio::time::Sleep>>;

impl Stack {
    /// Closes the connections idle for `timeout` or longer, and those
    /// beyond `max_idle` idle for `SURPLUS_GRACE`.
    fn prune(&mut self, now: Instant, timeout: Duration, max_idle: usize) {
        let idle_for = |i: &Idle| now.duration_since(i.since);
        let stale = self
            .conns
            .iter()
            .take_while(|i| idle_for(i) >= timeout)
            .count();
        let surplus = self
            .conns
            .iter()
            .take(self.conns.len().saturating_sub(max_idle))
            .take_while(|i| idle_for(i) >= SURPLUS_GRACE)
            .count();
        let n = stale.max(surplus);
        if n > 0 {
            self.conns.drain(..n);
        }
    }

    /// When the sweeper should next look: at the oldest connection's idle
    /// timeout, or sooner for a surplus. None when there is nothing to do.
    fn next_sweep(&self, timeout: Duration, max_idle: usize) -> Option<Instant> {
        let oldest = self.conns.first()?;
        let at = oldest.since + timeout;
        Some(if self.conns.len() > max_idle {
            at.min(oldest.since + SURPLUS_GRACE)
        } else {
            at
        })
    }
}

pub(crate) struct H1Backend {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per thread; one released beyond is closed.
    pub max_idle: usize,
    idle: ThreadLocal<RefCell<Stack>>,
}

impl std::fmt::Debug for H1Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Backend")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl H1Backend {
    pub fn new(addr: SocketAddr, timeouts: &Timeouts, max_idle: u32) -> Self {
        H1Backend {
            addr,
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            max_idle: max_idle as usize,
            idle: ThreadLocal::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most recently used idle connection that is within the idle
    /// timeout and still open.
    fn checkout(&self, now: Instant) -> Option<(TcpStream, Timer)> {
        let mut stack = self.idle.get()?.borrow_mut();
        while let Some(i) = stack.conns.pop() {
            if now.duration_since(i.since) < self.idle_timeout && still_open(&i.io) {
                return Some((i.io, i.timer));
            }
        }
        None
    }

    /// Puts a connection whose response ended back on this thread's stack,
    /// or closes it when `idle_per_backend` are already there.
    fn release(self: &Arc<Self>, io: TcpStream, timer: Timer) {
        if self.max_idle == 0 {
            return; // dropping `io` closes it
        }
        let now = Instant::now();
        let mut stack = self.idle.get_or_default().borrow_mut();
        // The sweeper does this on its own; here too for runtimes that
        // cannot run one (below), so a pool that shrinks does not keep its
        // peak forever.
        stack.prune(now, self.idle_timeout, self.max_idle);
        stack.conns.push(Idle {
            io,
            since: now,
            timer,
        });
        let Some(due) = stack.next_sweep(self.idle_timeout, self.max_idle) else {
            return;
        };
        if !stack.armed {
            stack.armed = true;
            stack.sweep_at = Some(due);
            self.arm_sweeper(due, stack.wake_sweeper.clone());
        } else if stack.sweep_at.is_some_and(|at| due < at) {
            // A surplus, due sooner than the sweeper looks.
            stack.sweep_at = Some(due);
            stack.wake_sweeper.notify_one();
        }
    }

    /// Starts the task that closes this thread's idle connections once
    /// they pass `timeouts.idle`, even when no request comes to do it. It
    /// must run on this thread to reach this thread's stack, which holds
    /// on the current-thread runtimes that serve requests (one per worker
    /// thread). Elsewhere (a multi-thread runtime in a test) the stack is
    /// only pruned when connections are released.
    fn arm_sweeper(self: &Arc<Self>, first: Instant, wake: Arc<tokio::sync::Notify>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
            rt.spawn(sweep(Arc::downgrade(self), first, wake));
        }
    }

    async fn connect(&self) -> Result<TcpStream, H1Error> {
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| H1Error::ConnectTimeout)?
            .map_err(H1Error::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(io)
    }

    /// Sends `req` on an idle connection, or a new one if none is left,
    /// and reads the response head. A pooled connection the backend closed
    /// before it took any of the request is skipped for the next one, so a
    /// backend closing a keep-alive connection is never seen as a failure
    /// of the request. The response timeout starts when the request can be
    /// sent: at once on a pooled connection, after the connect on a new one.
    pub async fn send(
        self: &Arc<Self>,
        head: Outgoing<'_>,
        body: RequestBody,
        response_timeout: Duration,
    ) -> Result<Response<H1Body>, H1Error> {
        let (mut upload, asked) = encode(&head, body);
        let now = Instant::now();
        let mut deadline = now + response_timeout;
        loop {
            let (mut conn, pooled) = match self.checkout(now) {
                Some((io, timer)) => (Conn::new(io, timer), true),
                None => {
                    let io = Box::pin(self.connect()).await?;
                    deadline = Instant::now() + response_timeout;
                    let timer = Box::pin(tokio::time::sleep_until(deadline));
                    (Conn::new(io, timer), false)
                }
            };
            let mut checked = false;
            let exchange = std::future::poll_fn(|cx| {
                if let Poll::Ready(res) = conn.poll_exchange(cx, &mut upload, asked) {
                    return Poll::Ready(Some(res));
                }
                match conn.poll_deadline(cx, deadline, &mut checked) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            });
            match exchange.await {
                None => return Err(H1Error::ResponseTimeout),
                Some(Ok(head)) => return Ok(self.respond(conn, head, upload)),
                Some(Err(Error::Io(_) | Error::Closed)) if pooled && !upload.wrote => continue,
                Some(Err(e)) => return Err(H1Error::Send(e)),
            }
        }
    }

    /// The response for a parsed head. A body already whole in the read
    /// buffer (the common small response) is taken out at once and the
    /// connection goes straight back to the pool.
    fn respond(self: &Arc<Self>, mut conn: Conn, head: Head, upload: Upload) -> Response<H1Body> {
        // Boxed: rare, and it would make every body larger.
        let upload = (!upload.done()).then(|| Box::new(upload));
        let reusable = head.keep_alive && upload.is_none();
        let (kind, conn) = match head.framing {
            Framing::Upgrade => (Kind::Upgrade, Some(conn)),
            Framing::Empty => {
                self.finish(conn, reusable);
                (Kind::Full(None), None)
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let body = conn.buf.split_to(n as usize).freeze();
                self.finish(conn, reusable);
                (Kind::Full((n > 0).then_some(body)), None)
            }
            Framing::Length(n) => (Kind::Length(n), Some(conn)),
            Framing::Chunked => (Kind::Chunked(Chunked::default()), Some(conn)),
            Framing::Eof => (Kind::Eof, Some(conn)),
        };
        let live = conn.map(|conn| Live {
            conn,
            upload,
            keep_alive: head.keep_alive,
            backend: self.clone(),
        });
        let mut resp = Response::new(H1Body {
            kind,
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
    fn finish(self: &Arc<Self>, conn: Conn, reusable: bool) {
        let Conn { io, buf, timer, .. } = conn;
        if reusable && buf.is_empty() {
            self.release(io, timer);
        }
        keep_spare(buf);
    }
}

/// Sleeps until the oldest idle connection of this thread's stack passes
/// the idle timeout (or, with more than `idle_per_backend` idle, the
/// surplus grace; a release that makes a surplus wakes it sooner), closes
/// what has, and ends once the stack is empty (the next release starts a
/// new one). Holds the backend weakly, so a reload that drops it closes
/// its connections at once.
async fn sweep(backend: Weak<H1Backend>, mut at: Instant, wake: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = wake.notified() => {}
        }
        let Some(b) = backend.upgrade() else { return };
        let Some(cell) = b.idle.get() else { return };
        let mut stack = cell.borrow_mut();
        stack.prune(Instant::now(), b.idle_timeout, b.max_idle);
        stack.sweep_at = stack.next_sweep(b.idle_timeout, b.max_idle);
        match stack.sweep_at {
            Some(next) => at = next,
            None => {
                stack.armed = false;
                return;
            }
        }
    }
}

/// Whether an idle connection can carry a request: not closed by the
/// backend, and without bytes nobody asked for. No system call unless the
/// socket turned readable since its last read drained it.
fn still_open(io: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

// ---- request ----------------------------------------------------------

/// What the response depends on in the request.
#[derive(Clone, Copy)]
struct Asked<'a> {
    head: bool,
    connect: bool,
    upgrade: bool,
    /// The request's id, which the response carries back to the client
    /// (in place of any the backend set).
    request_id: Option<&'a [u8]>,
}

/// The request on its way out: encoded bytes not yet written, then the
/// rest of a streamed body.
struct Upload {
    out: Vec<u8>,
    pos: usize,
    /// Some of the request reached the socket: from here on a failure may
    /// have reached the backend too.
    wrote: bool,
    body: Option<RequestBody>,
    framing: Out,
}

#[derive(Clone, Copy)]
enum Out {
    /// Bytes of a Content-Length body still to come.
    Length(u64),
    Chunked,
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
    }
    let mut client_for = None;
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
            if client_for.is_none() && *name == crate::headers::X_FORWARDED_FOR {
                client_for = Some(value);
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
        fwd.write(&mut out, client_for);
    }
    let (framing, body) = match body {
        // As hyper's client did: no body, no framing header, unless the
        // client said `Content-Length: 0` itself.
        RequestBody::Full(None) => {
            if had_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
            (Out::Length(0), None)
        }
        RequestBody::Full(Some(b)) => {
            put_length(&mut out, b.len() as u64);
            out.extend_from_slice(&b);
            (Out::Length(0), None)
        }
        RequestBody::Stream(s) => match s.size_hint().exact() {
            Some(n) => {
                put_length(&mut out, n);
                (Out::Length(n), Some(RequestBody::Stream(s)))
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                (Out::Chunked, Some(RequestBody::Stream(s)))
            }
        },
    };
    let upload = Upload {
        out,
        pos: 0,
        wrote: false,
        body,
        framing,
    };
    (upload, asked)
}

/// `content-length: N` and the blank line that ends the head.
fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_decimal(out, n);
    out.extend_from_slice(b"\r\n\r\n");
}

pub(crate) fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub(crate) fn put_hex(out: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

impl Upload {
    fn done(&self) -> bool {
        self.body.is_none() && self.pos == self.out.len()
    }

    /// Writes what is encoded, then pulls and encodes the body's next
    /// frame, until the body has ended (ready) or the socket or the client
    /// make it wait (pending). The client's body is read only as fast as
    /// the backend takes it.
    fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while self.pos < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]))
                    .map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.wrote = true;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            self.out.clear();
            self.pos = 0;
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Request trailers are dropped, as hyper's client did:
                    // the client's `Trailer` header is hop-by-hop and gone.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    match &mut self.framing {
                        Out::Length(left) => {
                            // More than declared would be read by the
                            // backend as the start of another request.
                            if data.len() as u64 > *left {
                                return Poll::Ready(Err(Error::ClientBodyLength));
                            }
                            *left -= data.len() as u64;
                        }
                        Out::Chunked => {
                            put_hex(&mut self.out, data.len() as u64);
                            self.out.extend_from_slice(b"\r\n");
                        }
                    }
                    self.out.extend_from_slice(&data);
                    if let Out::Chunked = self.framing {
                        self.out.extend_from_slice(b"\r\n");
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::ClientBody(e))),
                None => {
                    match self.framing {
                        Out::Length(0) => {}
                        Out::Length(_) => return Poll::Ready(Err(Error::ClientBodyLength)),
                        Out::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                    }
                    self.body = None;
                }
            }
        }
    }
}

// ---- response head ----------------------------------------------------

thread_local! {
    /// Read buffers of this thread's finished exchanges, the latest last.
    /// A response's head and body are views into its buffer, so a buffer
    /// is free again once the client has its response; the next exchange
    /// takes it back instead of allocating 8 KiB (glibc's slow path), and
    /// works in memory the cache still holds.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept per thread; past this, the oldest is let go.
const SPARE_BUFFERS: usize = 16;

/// The latest finished exchange's buffer that no response still uses,
/// else a new (empty, unallocated) one. One that grew for a large
/// response is let go rather than kept.
pub(crate) fn spare_buffer() -> BytesMut {
    SPARE.with_borrow_mut(|spare| {
        for i in (0..spare.len()).rev() {
            if spare[i].try_reclaim(READ_SIZE) {
                let buf = spare.swap_remove(i);
                if buf.capacity() <= 2 * READ_SIZE {
                    return buf;
                }
            }
        }
        BytesMut::new()
    })
}

/// A backend connection in use, with what has been read and not consumed.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    read_size: usize,
    timer: Timer,
}

impl Conn {
    fn new(io: TcpStream, timer: Timer) -> Self {
        Conn {
            io,
            buf: spare_buffer(),
            read_size: READ_SIZE,
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
    /// heard, and one that sends while it reads never waits on us.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        upload: &mut Upload,
        asked: Asked,
    ) -> Poll<Result<Head, Error>> {
        if !upload.done()
            && let Poll::Ready(Err(e)) = upload.poll(&mut self.io, cx)
        {
            return Poll::Ready(Err(e));
        }
        loop {
            if !self.buf.is_empty()
                && let Some(head) = parse_head(&mut self.buf, asked)?
            {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }
}

/// Reads more of a connection into `buf`; 0 when the peer closed its
/// side. The buffer is allocated on the first read, so an idle connection
/// holds none; a body's chunks are split off it, so a fresh one is needed
/// only once they have used it up. `read_size` doubles, up to 128 KiB,
/// while reads fill it.
pub(crate) fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let spare = buf.capacity() - buf.len();
    let spare = if spare < MIN_READ {
        buf.reserve(*read_size);
        buf.capacity() - buf.len()
    } else {
        spare
    };
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if n == spare && *read_size < MAX_READ {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// Keeps a finished exchange's (or a parked connection's) buffer for the
/// next one on this thread.
pub(crate) fn keep_spare(mut buf: BytesMut) {
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() == SPARE_BUFFERS {
            spare.remove(0);
        }
        spare.push(buf);
    });
}

struct Head {
    status: StatusCode,
    version: Version,
    lines: Lines,
    reason: Option<hyper::ext::ReasonPhrase>,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Eof,
    Upgrade,
}

/// Where a header's name and value lie in a head (request or response).
#[derive(Clone, Copy)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// Parses a response head off the front of `buf`: None while incomplete.
/// Informational (1xx) responses other than 101 are consumed and skipped.
fn parse_head(buf: &mut BytesMut, asked: Asked<'_>) -> Result<Option<Head>, Error> {
    loop {
        // Not zeroed first, unlike an array: a head rarely has more than
        // a dozen of the MAX_HEADERS it may have.
        let mut spans = SmallVec::<[Span; MAX_HEADERS]>::new();
        let base = buf.as_ptr() as usize;
        let (len, code, minor, reason) = {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &buf[..],
                &mut slots,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                Ok(httparse::Status::Complete(_)) => return Err(Error::HeadTooLarge),
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
                Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                    return Err(Error::HeadTooLarge);
                }
                Err(e) => return Err(Error::Parse(e)),
            };
            let code = resp.code.unwrap_or_default();
            // Header values are kept as slices of the frozen head; the
            // parser's borrow of the buffer ends here, so note where.
            for h in resp.headers.iter() {
                let at = |s: &[u8]| {
                    let start = (s.as_ptr() as usize - base) as u32;
                    (start, start + s.len() as u32)
                };
                spans.push(Span {
                    name: at(h.name.as_bytes()),
                    value: at(h.value),
                });
            }
            let reason = if (100..200).contains(&code) && code != 101 {
                None
            } else {
                let status = StatusCode::from_u16(code)
                    .map_err(|_| Error::Parse(httparse::Error::Status))?;
                let reason = resp.reason.unwrap_or_default();
                // Kept for the client only when it is not the usual one.
                (Some(reason) != status.canonical_reason())
                    .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
                    .flatten()
            };
            (len, code, resp.version.unwrap_or_default(), reason)
        };
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let head = buf.split_to(len).freeze();
        return build_head(&head, &spans, code, minor, reason, asked).map(Some);
    }
}

fn build_head(
    head: &Bytes,
    spans: &[Span],
    code: u16,
    minor: u8,
    reason: Option<hyper::ext::ReasonPhrase>,
    asked: Asked<'_>,
) -> Result<Head, Error> {
    let status = StatusCode::from_u16(code).map_err(|_| Error::Parse(httparse::Error::Status))?;
    let at = |r: (u32, u32)| &head[r.0 as usize..r.1 as usize];
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    // Whether the last Transfer-Encoding coding is chunked, if there is one.
    let mut chunked: Option<bool> = None;
    let mut close = false;
    // Names the Connection header lists: hop-by-hop too. Rarely any.
    let mut named = Vec::new();
    let mut roles = SmallVec::<[Role; 32]>::with_capacity(spans.len());
    for s in spans {
        let (name, value) = (at(s.name), at(s.value));
        let role = Role::of(name);
        match role {
            Role::Length => match (parse_length(value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => bad_length = true,
            },
            Role::TransferEncoding => {
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Role::Connection => {
                close |= has_token(value, b"close");
                crate::headers::connection_named(value, &mut named);
            }
            _ => {}
        }
        roles.push(role);
    }
    // Only HTTP/1.1 responses keep the connection (RFC 9112 §9.3).
    let mut keep_alive = minor == 1 && !close;
    let framing = if code == 101 {
        if !asked.upgrade {
            return Err(Error::UnexpectedUpgrade);
        }
        keep_alive = false;
        Framing::Upgrade
    } else if asked.head || code == 204 || code == 304 {
        Framing::Empty
    } else if asked.connect && (200..300).contains(&code) {
        // The connection became a tunnel nobody carries: close it.
        keep_alive = false;
        Framing::Empty
    } else if let Some(chunked) = chunked {
        if minor == 0 {
            return Err(Error::BadTransferEncoding);
        }
        if length.is_some() || bad_length {
            // Both: Transfer-Encoding wins, and the connection, whose
            // framing someone got wrong, is not reused (RFC 9112 §6.3).
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Eof
        }
    } else if bad_length {
        return Err(Error::BadContentLength);
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Eof
    };
    // The lines passed on: not the hop-by-hop ones, which are this
    // connection's (but a 101's Upgrade, for the request path to answer),
    // and not the framing, which is the client side's to write; except a
    // Content-Length on a response without a body (to HEAD), which says
    // what the body would have been.
    let keep_length = framing == Framing::Empty && !bad_length && chunked.is_none();
    let mut has_date = false;
    let mut len = 0;
    for (s, role) in spans.iter().zip(roles.iter_mut()) {
        let pass = match *role {
            Role::Pass => true,
            Role::Date => {
                has_date = true;
                true
            }
            Role::Length => keep_length,
            Role::RequestId => asked.request_id.is_none(),
            Role::Upgrade => code == 101,
            Role::TransferEncoding | Role::Connection | Role::HopByHop => false,
        } && (named.is_empty()
            || !named
                .iter()
                .any(|n| at(s.name).eq_ignore_ascii_case(n.as_str().as_bytes())));
        if pass {
            len += (s.name.1 - s.name.0 + s.value.1 - s.value.0) as usize + 4;
        } else {
            *role = Role::HopByHop;
        }
    }
    const ID_NAME: &[u8] = b"x-request-id: ";
    // Sized exactly: a Vec with room to spare would cost another
    // allocation on its way into `Bytes`.
    len += asked
        .request_id
        .map_or(0, |id| ID_NAME.len() + id.len() + 2);
    let mut lines = Vec::with_capacity(len);
    for (s, role) in spans.iter().zip(&roles) {
        if *role == Role::HopByHop {
            continue;
        }
        let (name, value) = (at(s.name), at(s.value));
        lines.extend_from_slice(name);
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(value);
        lines.extend_from_slice(b"\r\n");
    }
    if let Some(id) = asked.request_id {
        lines.extend_from_slice(ID_NAME);
        lines.extend_from_slice(id);
        lines.extend_from_slice(b"\r\n");
    }
    Ok(Head {
        status,
        version: if minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        lines: Lines {
            bytes: Bytes::from(lines),
            has_date,
        },
        reason,
        framing,
        keep_alive,
    })
}

/// What a response header is to the codec, told by its name in any case.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Passed on as it came.
    Pass,
    Date,
    Length,
    TransferEncoding,
    Connection,
    Upgrade,
    RequestId,
    /// This connection's, not passed on (also what is left out after the
    /// first pass).
    HopByHop,
}

impl Role {
    fn of(name: &[u8]) -> Role {
        // By length first: one comparison at most.
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            4 if is(b"date") => Role::Date,
            7 if is(b"upgrade") => Role::Upgrade,
            10 if is(b"connection") => Role::Connection,
            12 if is(b"x-request-id") => Role::RequestId,
            14 if is(b"content-length") => Role::Length,
            17 if is(b"transfer-encoding") => Role::TransferEncoding,
            _ if crate::headers::is_hop_by_hop(name) => Role::HopByHop,
            _ => Role::Pass,
        }
    }
}

/// A backend's response headers as they go on to the client: encoded
/// lines (`name: value\r\n`) with the hop-by-hop and framing headers left
/// out. An HTTP/1.1 client gets them as they are, with no header map built
/// and taken apart again; an HTTP/2 client gets [`Lines::to_map`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Lines {
    pub bytes: Bytes,
    /// A `Date` line is among them (the client side adds one otherwise).
    pub has_date: bool,
}

impl Lines {
    /// The lines as a header map.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in self.bytes.split(|&b| b == b'\n') {
            let Some(line) = line.strip_suffix(b"\r") else {
                continue;
            };
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            // Both were checked when the head was parsed.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                map.append(n, v);
            }
        }
        map
    }
}

/// A Content-Length value: digits, or a list of the same digits (`5, 5`).
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

// ---- response body ----------------------------------------------------

/// A backend's response body, read from the connection as the client side
/// asks for it. The connection goes back to the pool the moment the body's
/// end has been read; a body dropped before that closes it.
pub(crate) struct H1Body {
    kind: Kind,
    /// The connection the body still comes on.
    live: Option<Live>,
    /// The response's headers.
    lines: Lines,
}

struct Live {
    conn: Conn,
    /// A streamed request body the backend answered before it was all
    /// sent: it keeps going while the response is read.
    upload: Option<Box<Upload>>,
    keep_alive: bool,
    backend: Arc<H1Backend>,
}

enum Kind {
    /// Whole already (or none).
    Full(Option<Bytes>),
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    Eof,
    /// 101: the connection is for the tunnel.
    Upgrade,
    Done,
}

/// The connection of a 101 response, for the tunnel: bytes the backend
/// sent past the head come first.
pub(crate) type Upgraded = crate::listener::Rewind<TcpStream>;

impl H1Body {
    /// The response's headers, as they go on.
    pub fn lines(&self) -> &Lines {
        &self.lines
    }

    /// The connection of a 101 response, taken for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        if !matches!(self.kind, Kind::Upgrade) {
            return None;
        }
        self.kind = Kind::Done;
        let live = self.live.take()?;
        Some(Upgraded::new(live.conn.io, live.conn.buf.freeze()))
    }

    /// The body has ended: its connection goes back to the pool if the
    /// request went out whole and the response allows it.
    fn end(&mut self) {
        self.kind = Kind::Done;
        if let Some(live) = self.live.take() {
            let reusable = live.keep_alive && live.upload.is_none();
            live.backend.finish(live.conn, reusable);
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match &mut self.kind {
                Kind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                Kind::Upgrade | Kind::Done => return Poll::Ready(None),
                _ => {}
            }
            let Some(live) = self.live.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(up) = live.upload.as_mut()
                && let Poll::Ready(res) = up.poll(&mut live.conn.io, cx)
            {
                res?;
                live.upload = None;
            }
            let buf = &mut live.conn.buf;
            let (frame, ended) = match &mut self.kind {
                Kind::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    (
                        Some(Frame::data(buf.split_to(n as usize).freeze())),
                        *left == 0,
                    )
                }
                Kind::Chunked(dec) => match dec.decode(buf)? {
                    Some(Decoded::Data(d)) => (Some(Frame::data(d)), false),
                    Some(Decoded::Trailers(t)) => (Some(Frame::trailers(t)), true),
                    Some(Decoded::End) => (None, true),
                    None => (None, false),
                },
                Kind::Eof if !buf.is_empty() => (Some(Frame::data(buf.split().freeze())), false),
                _ => (None, false),
            };
            if ended {
                self.end();
            }
            if frame.is_some() || ended {
                return Poll::Ready(frame.map(Ok));
            }
            if ready!(live_fill(self.live.as_mut(), cx))? == 0 {
                if matches!(self.kind, Kind::Eof) {
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
            this.kind = Kind::Done;
            this.live = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Length(n) => *n == 0,
            Kind::Upgrade | Kind::Done => true,
            Kind::Chunked(_) | Kind::Eof => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Length(n) => SizeHint::with_exact(*n),
            Kind::Upgrade | Kind::Done => SizeHint::with_exact(0),
            Kind::Chunked(_) | Kind::Eof => SizeHint::default(),
        }
    }
}

/// The chunked transfer coding, decoded from the front of the read buffer.
/// Only whole lines are consumed, so input split anywhere decodes the same.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer fields, then a blank line.
    Trailers,
    Done,
}

#[derive(Debug)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl Chunked {
    /// The next piece of the body, or None until more bytes are read.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                        if buf.len() >= MAX_CHUNK_LINE {
                            return Err(Error::BadChunk);
                        }
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..=lf])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64);
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Some(Decoded::Data(buf.split_to(n as usize).freeze())));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return match buf.first() {
                            None | Some(b'\r') => Ok(None),
                            Some(_) => Err(Error::BadChunk),
                        };
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(Error::BadChunk);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Some(Decoded::End));
                    }
                    if buf.is_empty() || buf[..] == *b"\r" {
                        return Ok(None);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete(done)) if done.0 <= MAX_TRAILERS => done,
                        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => {
                            return Ok(None);
                        }
                        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                            return Err(Error::TrailersTooLarge);
                        }
                        Err(e) => return Err(Error::Parse(e)),
                    };
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| Error::BadHeader)?;
                        let value =
                            HeaderValue::from_bytes(f.value).map_err(|_| Error::BadHeader)?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    self.state = ChunkState::Done;
                    return Ok(Some(if trailers.is_empty() {
                        Decoded::End
                    } else {
                        Decoded::Trailers(trailers)
                    }));
                }
                ChunkState::Done => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// The size on a chunk-size line (`1a;name=value\r\n`); extensions are
/// ignored but may not hold a CR, and the line must end in CRLF, so no
/// reader after us can split it differently.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line.strip_suffix(b"\r\n").ok_or(Error::BadChunk)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::BadChunk);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size << 4 | u64::from(d);
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(Error::BadChunk);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const GET: Asked = Asked {
        head: false,
        connect: false,
        upgrade: false,
        request_id: None,
    };

    /// Feeds `parts` one after the other and decodes all it can after each.
    fn chunked(parts: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>, usize), Error> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for part in parts {
            buf.extend_from_slice(part);
            while let Some(d) = dec.decode(&mut buf)? {
                match d {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => return Ok((data, trailers, buf.len())),
                }
            }
        }
        Err(Error::Closed)
    }

    const BODY: &[u8] =
        b"5;ext=\"a b\"\r\nhello\r\n6 ; x\r\n world\r\n00\r\nx-t: 1\r\nx-u: two\r\n\r\n";

    #[test]
    fn chunked_split_at_every_byte_boundary() {
        for i in 0..=BODY.len() {
            let (data, trailers, left) = chunked(&[&BODY[..i], &BODY[i..]]).unwrap();
            assert_eq!(data, b"hello world", "split at {i}");
            let t = trailers.unwrap();
            assert_eq!(
                (t["x-t"].as_bytes(), t["x-u"].as_bytes()),
                (&b"1"[..], &b"two"[..]),
                "split at {i}"
            );
            assert_eq!(left, 0);
        }
        let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
        let (data, trailers, _) = chunked(&bytes).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap().len(), 2);
    }

    #[test]
    fn chunked_without_trailers_leaves_what_follows() {
        let (data, trailers, left) = chunked(&[b"3\r\nabc\r\n0\r\n\r\nNEXT"]).unwrap();
        assert_eq!((data.as_slice(), trailers, left), (&b"abc"[..], None, 4));
        let all = b"3\r\nabc\r\n0\r\n\r\n";
        for i in 0..=all.len() {
            let (data, _, _) = chunked(&[&all[..i], &all[i..]]).unwrap();
            assert_eq!(data, b"abc");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcXY0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"3x\r\nabc\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabc\r\n0\r\nbad header\r\n\r\n",
        ] {
            assert!(
                chunked(&[bad]).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b'1'; MAX_CHUNK_LINE + 1];
        assert!(matches!(chunked(&[&long]), Err(Error::BadChunk)));
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() <= MAX_TRAILERS {
            trailers.extend_from_slice(b"x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            chunked(&[&trailers]),
            Err(Error::TrailersTooLarge)
        ));
    }

    fn head(raw: &[u8], asked: Asked) -> Result<(Head, BytesMut), Error> {
        let mut buf = BytesMut::from(raw);
        let head = parse_head(&mut buf, asked)?.expect("a complete head");
        Ok((head, buf))
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let (h, rest) = head(
            b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 5\r\nX-Multi: a\r\nx-multi: b\r\n\r\nhello",
            GET,
        )
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert!(h.reason.is_none());
        assert_eq!(h.lines.to_map()["server"], "t");
        assert_eq!(h.lines.to_map().get_all("x-multi").iter().count(), 2);
        assert_eq!(&rest[..], b"hello");
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", GET).unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        for bad in [&b"5, 6"[..], b"x", b"-1", b""] {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: ".to_vec();
            raw.extend_from_slice(bad);
            raw.extend_from_slice(b"\r\n\r\n");
            assert!(matches!(head(&raw, GET), Err(Error::BadContentLength)));
        }
    }

    #[test]
    fn no_body_for_head_204_304() {
        let asked_head = Asked { head: true, ..GET };
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", asked_head).unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        assert_eq!(h.lines.to_map()["content-length"], "10");
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let (h, _) = head(raw.as_bytes(), GET).unwrap();
            assert_eq!(
                (h.framing, h.keep_alive),
                (Framing::Empty, true),
                "{status}"
            );
        }
    }

    #[test]
    fn informational_responses_are_skipped_but_101_is_not() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        for i in 0..raw.len() {
            let mut buf = BytesMut::from(&raw[..i]);
            assert!(
                parse_head(&mut buf, GET).unwrap().is_none(),
                "complete at {i}"
            );
            buf.extend_from_slice(&raw[i..]);
            let h = parse_head(&mut buf, GET).unwrap().unwrap();
            assert_eq!(h.status, 201);
        }
        let up = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframe";
        assert!(matches!(head(up, GET), Err(Error::UnexpectedUpgrade)));
        let (h, rest) = head(
            up,
            Asked {
                upgrade: true,
                ..GET
            },
        )
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Upgrade, false));
        assert_eq!(&rest[..], b"frame");
        assert_eq!(
            h.lines.to_map()["upgrade"],
            "websocket",
            "a 101 keeps its Upgrade"
        );
        assert!(!h.lines.to_map().contains_key("connection"));
    }

    #[test]
    fn a_spare_buffer_comes_back_once_no_response_uses_it() {
        SPARE.with_borrow_mut(Vec::clear);
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let head = buf.split().freeze();
        let at = head.as_ptr();
        SPARE.with_borrow_mut(|s| s.push(buf));
        // A response still reads from it: a fresh buffer instead.
        assert_eq!(spare_buffer().capacity(), 0);
        assert_eq!(SPARE.with_borrow(Vec::len), 1);
        drop(head);
        let again = spare_buffer();
        assert_eq!(again.as_ptr(), at, "the same allocation, from its start");
        assert!(again.capacity() >= READ_SIZE);
        assert_eq!(SPARE.with_borrow(Vec::len), 0);
    }

    #[test]
    fn the_response_carries_the_request_id_in_place_of_the_backends() {
        let asked = Asked {
            request_id: Some(b"ours"),
            ..GET
        };
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nContent-Length: 0\r\nDate: d\r\n\r\n",
            asked,
        )
        .unwrap();
        assert_eq!(&h.lines.bytes[..], b"Date: d\r\nx-request-id: ours\r\n");
        assert!(h.lines.has_date);
    }

    #[test]
    fn hop_by_hop_headers_are_not_passed_on() {
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
              X-Private: secret\r\nProxy-Authenticate: Basic\r\nTrailer: x-sum\r\n\
              Upgrade: h2c\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        let map = h.lines.to_map();
        let names: Vec<_> = map.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn heads_over_the_limits_are_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        let mut buf = BytesMut::from(&big[..]);
        assert!(matches!(
            parse_head(&mut buf, GET),
            Err(Error::HeadTooLarge)
        ));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(head(&big, GET), Err(Error::HeadTooLarge)));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(head(&many, GET), Err(Error::HeadTooLarge)));
        assert!(matches!(
            head(b"HTTP/2 200\r\n\r\n", GET),
            Err(Error::Parse(_))
        ));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_chunked_and_not_reused() {
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(h.lines.to_map().get("content-length").is_none());
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET).unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        assert!(matches!(
            head(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET
            ),
            Err(Error::BadTransferEncoding)
        ));
    }

    #[test]
    fn keep_alive_only_for_http11_without_close() {
        let (h, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", GET).unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
            GET,
        )
        .unwrap();
        assert!(!h.keep_alive);
        let (h, _) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            GET,
        )
        .unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.version, Version::HTTP_10);
        let (h, _) = head(b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", GET).unwrap();
        assert_eq!(h.reason.unwrap().as_bytes(), b"Fine");
    }

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
        assert!(!asked.head && !asked.upgrade && up.body.is_none());
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
        };
        let (up, _) = encode(&head, RequestBody::Full(None));
        assert_eq!(
            up.out,
            b"GET / HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\n\r\n"
        );
        let mut out = Vec::new();
        put_decimal(&mut out, 0);
        out.push(b' ');
        put_decimal(&mut out, u64::MAX);
        out.push(b' ');
        put_hex(&mut out, 0x1a2b);
        assert_eq!(out, b"0 18446744073709551615 1a2b");
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_forwarded_ones_are_set() {
        let (method, headers) = parts(
            Method::GET,
            &[
                ("host", "a.test"),
                ("connection", "keep-alive, Upgrade, X-Private"),
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
        };
        let (out, asked) = encode(&head, RequestBody::Full(None));
        assert!(!asked.upgrade);
        assert_eq!(
            String::from_utf8(out.out).unwrap(),
            "GET / HTTP/1.1\r\nhost: a.test\r\nx-kept: yes\r\n\
             x-forwarded-for: 203.0.113.7, 127.0.0.1\r\nx-forwarded-proto: https\r\n\
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

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_idle_per_backend_stay_while_reused_and_go_a_second_after() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            tunnel: Duration::from_secs(60),
        };
        let b = Arc::new(H1Backend::new(addr, &timeouts, 1));
        let mut peers = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(TcpStream::connect(addr).await.unwrap());
            peers.push(listener.accept().await.unwrap().0);
        }
        let timer = || Box::pin(tokio::time::sleep(Duration::from_secs(5)));
        let idle = |b: &Arc<H1Backend>| b.idle.get().map_or(0, |s| s.borrow().conns.len());
        // Three requests at once end: all three kept, two over the limit.
        for io in conns {
            b.release(io, timer());
        }
        assert_eq!(idle(&b), 3);
        // A steady load reuses them within the grace: none is closed.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = Instant::now();
            let taken: Vec<_> = (0..3).map(|_| b.checkout(now).unwrap()).collect();
            for (io, t) in taken {
                b.release(io, t);
            }
            assert_eq!(idle(&b), 3);
        }
        // Idle past the grace, the surplus goes, the limit's worth stays.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(idle(&b), 1);
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
        assert_eq!(b.idle.get().unwrap().borrow().conns.len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.idle.get().unwrap().borrow().conns.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stack = b.idle.get().unwrap().borrow();
        assert!(stack.conns.is_empty() && !stack.armed);
    }
}
