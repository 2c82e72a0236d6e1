//! Request bodies on their way through: as an HTTP/1.1 connection hands
//! them over ([`IncomingBody`]) or an HTTP/2 stream gives them
//! ([`RawBody`]), bounded by the listener's limits as they are read
//! ([`ClientBody`]), and as they go to a backend ([`RequestBody`]).

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::http1::framing::FramingError;

/// A request body as an HTTP/1.1 connection hands it to the request path.
#[derive(Debug)]
pub(crate) enum IncomingBody {
    /// All of it (or none) came with the head.
    Full(Option<Bytes>),
    /// Still on the connection, which reads it when asked (its pump).
    Streamed(std::sync::Arc<Handover>),
    /// The head's framing could not be trusted: the request path refuses
    /// the request, and nothing of its body is ever read.
    Refused(FramingError),
}

/// Hands a streamed body over from the connection to whoever reads it,
/// one piece at a time. The reader may be another task (an HTTP/2
/// backend's connection).
#[derive(Debug, Default)]
pub(crate) struct Handover(Mutex<HandoverState>);

#[derive(Debug, Default)]
pub(crate) struct HandoverState {
    pub data: Option<Bytes>,
    /// Bytes of a Content-Length body not yet handed over.
    pub left: Option<u64>,
    pub ended: bool,
    /// The body's trailers, handed over after its last data.
    pub trailers: Option<http::HeaderMap>,
    pub failed: Option<&'static str>,
    /// The reader waits for more.
    pub want: bool,
    pub reader: Option<Waker>,
    pub conn: Option<Waker>,
}

impl Handover {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HandoverState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// Why the client's body could not be read.
#[derive(Debug)]
pub(crate) struct BodyReadError(pub &'static str);

impl std::fmt::Display for BodyReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyReadError {}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        match self.get_mut() {
            IncomingBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            IncomingBody::Refused(_) => Poll::Ready(Some(Err(BodyReadError("unframeable body")))),
            IncomingBody::Streamed(slot) => {
                let mut s = slot.lock();
                if let Some(d) = s.data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if let Some(why) = s.failed {
                    return Poll::Ready(Some(Err(BodyReadError(why))));
                }
                if s.ended {
                    return Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))));
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
            IncomingBody::Full(b) => b.is_none(),
            IncomingBody::Refused(_) => false,
            IncomingBody::Streamed(slot) => {
                let s = slot.lock();
                s.ended && s.data.is_none() && s.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            IncomingBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            IncomingBody::Refused(_) => SizeHint::default(),
            IncomingBody::Streamed(slot) => {
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

/// A client's request body as its connection gives it.
#[derive(Debug)]
pub(crate) enum RawBody {
    H1(IncomingBody),
    H2(Incoming),
}

impl RawBody {
    /// Why the HTTP/1.1 codec could not frame this body, if it could not.
    pub fn framing_error(&self) -> Option<FramingError> {
        match self {
            RawBody::H1(IncomingBody::Refused(e)) => Some(*e),
            _ => None,
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RawBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RawBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            RawBody::H1(b) => b.is_end_stream(),
            RawBody::H2(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RawBody::H1(b) => b.size_hint(),
            RawBody::H2(b) => b.size_hint(),
        }
    }
}

/// Body sent to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// A buffered body (possibly empty), resendable on retry.
    Full(Option<Bytes>),
    /// The client's body, streamed through: one attempt only.
    Stream(ClientBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
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

/// The client's request body, bounded as it streams: at most
/// `limits.max_body_bytes` in all (whatever Content-Length said), no
/// longer than `body_timeout` between two pieces, and no slower than
/// `min_body_rate` on average (slow-body clients that send a piece now
/// and then).
#[derive(Debug)]
pub struct ClientBody {
    inner: RawBody,
    read: u64,
    limit: u64,
    timeout: Duration,
    /// Bytes per second; 0: none.
    min_rate: u32,
    /// Made on the first wait only: a body that is already there costs no
    /// timer, and no clock read.
    pace: Option<Pace>,
}

/// A body's clock, from its first wait on the client.
#[derive(Debug)]
struct Pace {
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When the body first waited, and how much of it had come by then.
    since: Instant,
    read_then: u64,
    /// When the last piece came.
    last: Instant,
}

impl Pace {
    /// The next piece is due `timeout` after the last; the body as a
    /// whole by `timeout` after its first wait plus a second for every
    /// `min_rate` bytes since.
    fn due(&self, read: u64, timeout: Duration, min_rate: u32) -> Instant {
        let piece = self.last + timeout;
        if min_rate == 0 {
            return piece;
        }
        let earned = Duration::from_secs_f64((read - self.read_then) as f64 / f64::from(min_rate));
        piece.min(self.since + timeout + earned)
    }
}

/// Why the client's body stopped: the backend request fails with this as
/// its source, which is how the proxy tells a client fault from a backend one.
#[derive(Debug)]
pub enum ClientBodyError {
    Read(Box<dyn std::error::Error + Send + Sync>),
    TooLarge,
    /// No piece for `body_timeout`.
    Timeout,
    /// Pieces now and then, but slower than `min_body_rate`.
    TooSlow,
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Read(e) => write!(f, "reading the client's body: {e}"),
            ClientBodyError::TooLarge => f.write_str("the client's body is over the limit"),
            ClientBodyError::Timeout => f.write_str("the client stopped sending its body"),
            ClientBodyError::TooSlow => f.write_str("the client sent its body too slowly"),
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientBodyError::Read(e) => Some(&**e),
            _ => None,
        }
    }
}

impl ClientBody {
    pub(crate) fn new(inner: RawBody, limit: u64, timeout: Duration, min_rate: u32) -> Self {
        ClientBody {
            inner,
            read: 0,
            limit,
            timeout,
            min_rate,
            pace: None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    // What may not be a trailer never reaches a backend.
                    Ok(t) => match crate::headers::allowed_trailers(t) {
                        Some(t) => Frame::trailers(t),
                        None => return Poll::Ready(None),
                    },
                    Err(frame) => frame,
                };
                if let Some(d) = frame.data_ref() {
                    this.read += d.len() as u64;
                    if this.read > this.limit {
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                    }
                }
                if let Some(pace) = this.pace.as_mut() {
                    pace.last = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Read(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (read, timeout, min_rate) = (this.read, this.timeout, this.min_rate);
                let pace = this.pace.get_or_insert_with(|| {
                    let now = Instant::now();
                    Pace {
                        timer: Box::pin(tokio::time::sleep_until(now + timeout)),
                        since: now,
                        read_then: read,
                        last: now,
                    }
                });
                let due = pace.due(read, timeout, min_rate);
                if pace.timer.deadline() != due {
                    pace.timer.as_mut().reset(due);
                }
                match pace.timer.as_mut().poll(cx) {
                    Poll::Ready(()) if due < pace.last + timeout => {
                        Poll::Ready(Some(Err(ClientBodyError::TooSlow)))
                    }
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
