//! Request and response heads, parsed in place with httparse: a request
//! head becomes an `http::Request` whose header values share the read
//! buffer; a backend's response head becomes its status and the header
//! lines passed on to the client as they came ([`Lines`]). Each head's
//! framing is decided here, in the same pass ([`super::framing`]).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use smallvec::SmallVec;

use super::framing::{
    Asked, Framing, FramingError, RequestFraming, ResponseFraming, ResponseFramingError,
};
use super::{Span, has_token};

/// Header slots for httparse on a request; `limits.max_headers` is at
/// most this.
pub(crate) const MAX_REQUEST_HEADERS: usize = 1000;
/// A response head larger than this is refused (hyper's client allowed
/// about 400 KiB; no sane backend needs more than a few KiB).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Header lines in a response head.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;

// ---- request ----------------------------------------------------------

/// A request head, parsed.
pub(crate) struct RequestHead {
    pub request: Request<()>,
    /// Err: the body could be read two ways, or not at all; the request
    /// path refuses the request, and its body is never read.
    pub framing: Result<Framing, FramingError>,
    /// The connection ends after this request (`Connection: close`,
    /// HTTP/1.0 without keep-alive, or framing that cannot be trusted).
    pub close: bool,
    /// An HTTP/1.0 client asked to keep the connection.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Why a request head was refused (or never completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestHeadError {
    Malformed,
    TooLarge,
    UriTooLong,
    Timeout,
}

/// The limits a request head is parsed under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// The whole head, request line included.
    pub max_head: usize,
    pub max_headers: usize,
    pub max_uri: usize,
}

impl HeadLimits {
    pub fn of(limits: &fulcrum_config::snapshot::Limits) -> Self {
        HeadLimits {
            // The request line's own limit on top of the headers'. Past
            // it, the client is told which one it broke.
            max_head: limits.max_header_bytes as usize + limits.max_uri_bytes as usize + 1024,
            max_headers: (limits.max_headers as usize).min(MAX_REQUEST_HEADERS),
            max_uri: limits.max_uri_bytes as usize,
        }
    }
}

/// Whether parsing `buf` again can find more than the last parse did: at
/// once the first time (`*scanned == 0`: most heads come whole in one
/// read, and cost no scan), and after a parse found it incomplete (the
/// caller then sets `*scanned` to the buffer's length) only once the
/// blank line that ends a head has come, or the buffer has grown too large
/// to wait for one. So a head trickled in a byte at a time is scanned once
/// and parsed twice, where parsing it again from its first byte after
/// every read would cost work quadratic in its length. The caller sets
/// `*scanned` back to 0 once a head is taken.
///
/// Empty lines before a head are dropped first (RFC 9112 §2.2 lets a
/// server ignore them, and httparse skips them): each would otherwise look
/// like a head's end, and a stream of them would be parsed whole on every
/// read.
#[inline]
pub(crate) fn worth_parsing(buf: &mut BytesMut, scanned: &mut usize, max_head: usize) -> bool {
    // The common case, inline: a fresh head that does not open with an
    // empty line (called three times per exchange on each side).
    match buf.first() {
        None => false,
        Some(b'\r' | b'\n') => worth_parsing_slow(buf, scanned, max_head),
        Some(_) => *scanned == 0 || buf.len() >= max_head || head_ended(buf, scanned),
    }
}

#[cold]
fn worth_parsing_slow(buf: &mut BytesMut, scanned: &mut usize, max_head: usize) -> bool {
    let mut empty = 0;
    while let Some(rest) = buf.get(empty..) {
        empty += match rest {
            [b'\n', ..] => 1,
            [b'\r', b'\n', ..] => 2,
            _ => break,
        };
    }
    if empty > 0 {
        buf.advance(empty);
        *scanned = 0;
    }
    !buf.is_empty() && (*scanned == 0 || buf.len() >= max_head || head_ended(buf, scanned))
}

/// Whether `buf` holds the blank line that ends a head, looking only at
/// what came since `*scanned` (which it moves on).
fn head_ended(buf: &[u8], scanned: &mut usize) -> bool {
    // A blank line split across two reads: look back two bytes.
    let mut i = (*scanned).min(buf.len()).saturating_sub(2);
    while let Some(lf) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + lf;
        match buf.get(at + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return true,
            _ => i = at + 1,
        }
    }
    *scanned = buf.len();
    false
}

thread_local! {
    /// Header maps of this thread's latest forwarded requests, emptied
    /// for the next ones: building a request's map cost two allocations
    /// and dropping it two frees (bench/callgrind, round 9). Several, as
    /// a request keeps its map until its response head has come, and a
    /// thread parses the requests of its other connections meanwhile.
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Maps kept per thread (one per request in flight, as the read buffers
/// of `io::SPARE_BUFFERS`), and the most headers a kept one may have room
/// for: a map that grew past it is let go.
const MAPS_KEPT: usize = 64;
const SPARE_MAP_HEADERS: usize = 64;

/// Gives a request's header map back once it is done with (its response
/// head has come, or its last attempt failed), for a request head this
/// thread parses next.
pub(crate) fn keep_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_HEADERS {
        return;
    }
    map.clear();
    SPARE_MAPS.with_borrow_mut(|spare| {
        if spare.len() < MAPS_KEPT {
            spare.push(map);
        }
    });
}

/// Parses a request head off the front of `buf`: None while incomplete.
pub(crate) fn parse_request_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, RequestHeadError> {
    let mut spans = SmallVec::<[Span; 32]>::new();
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = (s.as_ptr() as usize - base) as u32;
        (start, start + s.len() as u32)
    };
    let (len, method, path, minor) = {
        // Not zeroed first: a head rarely has more than a dozen headers.
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &buf[..],
            &mut slots[..limits.max_headers],
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= limits.max_head => len,
            Ok(httparse::Status::Partial) if buf.len() < limits.max_head => return Ok(None),
            Ok(_) => return Err(too_large(buf, limits.max_uri)),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestHeadError::TooLarge),
            Err(_) => return Err(RequestHeadError::Malformed),
        };
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| RequestHeadError::Malformed)?;
        let path = at(req.path.unwrap_or_default().as_bytes());
        for h in req.headers.iter() {
            spans.push(Span {
                name: at(h.name.as_bytes()),
                value: at(h.value),
            });
        }
        (len, method, path, req.version.unwrap_or_default())
    };
    if (path.1 - path.0) as usize > limits.max_uri {
        return Err(RequestHeadError::UriTooLong);
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0 as usize..path.1 as usize))
        .map_err(|_| RequestHeadError::Malformed)?;
    let mut request = Request::new(());
    let headers = request.headers_mut();
    if let Some(spare) = SPARE_MAPS.with_borrow_mut(Vec::pop) {
        // The map it replaces is `HeaderMap::new()`'s, which holds no
        // allocation: there is nothing to drop.
        std::mem::forget(std::mem::replace(headers, spare));
    }
    headers.reserve(spans.len());
    let mut framing = RequestFraming::default();
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for s in &spans {
        let name = HeaderName::from_bytes(&head[s.name.0 as usize..s.name.1 as usize])
            .map_err(|_| RequestHeadError::Malformed)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(s.value.0 as usize..s.value.1 as usize))
                .map_err(|_| RequestHeadError::Malformed)?;
        if name == header::CONTENT_LENGTH {
            framing.content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            framing.transfer_encoding(value.as_bytes());
        } else if name == header::CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
            keep_alive |= has_token(value.as_bytes(), b"keep-alive");
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    let http10 = minor == 0;
    let framing = framing.decide(http10);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(RequestHead {
        request,
        framing,
        close: framing.is_err() || if http10 { !keep_alive } else { close },
        keep_alive: http10 && keep_alive,
        expect_continue: !http10 && expect_continue,
    }))
}

/// A head over the limit: its request line alone (414), or its headers.
fn too_large(buf: &[u8], max_uri: usize) -> RequestHeadError {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > max_uri {
        RequestHeadError::UriTooLong
    } else {
        RequestHeadError::TooLarge
    }
}

// ---- response ---------------------------------------------------------

/// A backend's response head, parsed.
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub lines: Lines,
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Why a backend's response head was refused.
#[derive(Debug)]
pub(crate) enum ResponseHeadError {
    /// Over 64 KiB or 128 header lines.
    TooLarge,
    /// Not HTTP/1.x, or malformed.
    Malformed(httparse::Error),
    Framing(ResponseFramingError),
}

impl ResponseHeadError {
    /// What was wrong, for the client's 502.
    pub fn why(&self) -> &'static str {
        match self {
            ResponseHeadError::TooLarge => "its head is over 64 KiB or 128 lines",
            ResponseHeadError::Malformed(_) => "its head is not HTTP/1.x",
            ResponseHeadError::Framing(ResponseFramingError::BadContentLength) => {
                "its Content-Length is not one number"
            }
            ResponseHeadError::Framing(ResponseFramingError::BadTransferEncoding) => {
                "Transfer-Encoding in an HTTP/1.0 response"
            }
            ResponseHeadError::Framing(ResponseFramingError::UnexpectedUpgrade) => {
                "101 Switching Protocols to a request that asked for no upgrade"
            }
        }
    }
}

impl std::fmt::Display for ResponseHeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseHeadError::TooLarge => f.write_str("response head too large"),
            ResponseHeadError::Malformed(e) => write!(f, "malformed response head: {e}"),
            ResponseHeadError::Framing(ResponseFramingError::BadContentLength) => {
                f.write_str("invalid Content-Length")
            }
            ResponseHeadError::Framing(ResponseFramingError::BadTransferEncoding) => {
                f.write_str("Transfer-Encoding in an HTTP/1.0 response")
            }
            ResponseHeadError::Framing(ResponseFramingError::UnexpectedUpgrade) => {
                f.write_str("switched protocols unasked")
            }
        }
    }
}

/// Parses a response head off the front of `buf`: None while incomplete.
/// Informational (1xx) responses other than 101 are consumed and skipped.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    asked: Asked<'_>,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    loop {
        // Not zeroed first, unlike an array: a head rarely has more than
        // a dozen of the MAX_RESPONSE_HEADERS it may have.
        let mut spans = SmallVec::<[Span; MAX_RESPONSE_HEADERS]>::new();
        let base = buf.as_ptr() as usize;
        let (len, code, minor, reason) = {
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &buf[..],
                &mut slots,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
                Ok(httparse::Status::Complete(_)) => return Err(ResponseHeadError::TooLarge),
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {
                    return Ok(None);
                }
                Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                    return Err(ResponseHeadError::TooLarge);
                }
                Err(e) => return Err(ResponseHeadError::Malformed(e)),
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
                    .map_err(|_| ResponseHeadError::Malformed(httparse::Error::Status))?;
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
        return response_head(&head, &spans, code, minor, reason, asked).map(Some);
    }
}

fn response_head(
    head: &Bytes,
    spans: &[Span],
    code: u16,
    minor: u8,
    reason: Option<hyper::ext::ReasonPhrase>,
    asked: Asked<'_>,
) -> Result<ResponseHead, ResponseHeadError> {
    let status = StatusCode::from_u16(code)
        .map_err(|_| ResponseHeadError::Malformed(httparse::Error::Status))?;
    let at = |r: (u32, u32)| &head[r.0 as usize..r.1 as usize];
    let mut framing = ResponseFraming::default();
    let mut close = false;
    // Names the Connection header lists: hop-by-hop too. Rarely any.
    let mut named = Vec::new();
    let mut roles = SmallVec::<[Role; 32]>::with_capacity(spans.len());
    // Every Transfer-Encoding coding, in order: rarely any.
    let mut codings = Vec::new();
    for s in spans {
        let (name, value) = (at(s.name), at(s.value));
        let role = Role::of(name);
        match role {
            Role::Length => framing.content_length(value),
            Role::TransferEncoding => {
                framing.transfer_encoding(value);
                if !codings.is_empty() {
                    codings.extend_from_slice(b", ");
                }
                codings.extend_from_slice(value);
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
    let (body, keep_alive) = framing
        .decide(code, minor == 0, asked, minor == 1 && !close)
        .map_err(ResponseHeadError::Framing)?;
    // The lines passed on: not the hop-by-hop ones, which are this
    // connection's (but a 101's Upgrade, for the request path to answer),
    // and not the framing, which is the client side's to write; except a
    // Content-Length on a response without a body (to HEAD), which says
    // what the body would have had.
    let keep_length = body == Framing::Empty && !framing.bad_length && framing.chunked.is_none();
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
    Ok(ResponseHead {
        status,
        version: if minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        lines: Lines {
            bytes: Bytes::from(lines),
            has_date,
            codings: passed_codings(codings, body),
        },
        reason,
        framing: body,
        keep_alive,
    })
}

/// The transfer codings a response's body carries besides chunked
/// (`gzip` of `gzip, chunked`): the codec takes the chunked coding off,
/// the others are the client's to undo, so they go on with the body.
fn passed_codings(mut codings: Vec<u8>, framing: Framing) -> Option<Box<Bytes>> {
    if codings.is_empty() || !matches!(framing, Framing::Chunked | Framing::Close) {
        return None;
    }
    if framing == Framing::Chunked {
        let last = codings
            .iter()
            .rposition(|&b| b == b',')
            .map_or(0, |i| i + 1);
        codings.truncate(last.saturating_sub(1));
    }
    let kept = codings.trim_ascii();
    (!kept.is_empty()).then(|| Box::new(Bytes::copy_from_slice(kept)))
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
    /// Transfer codings of the body besides chunked (`gzip`), which the
    /// client must get: an HTTP/1.1 client in its Transfer-Encoding, and
    /// no other kind of client can take them. Boxed: rare, and the lines
    /// travel with every response.
    pub codings: Option<Box<Bytes>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head: 4096,
        max_headers: 100,
        max_uri: 1024,
    };

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, RequestHeadError> {
        parse_request_head(&mut BytesMut::from(bytes), LIMITS)
    }

    fn framing(headers: &str) -> Result<Framing, FramingError> {
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        parse(head.as_bytes()).unwrap().unwrap().framing
    }

    #[test]
    fn a_kept_header_map_serves_the_next_request_empty() {
        SPARE_MAPS.with_borrow_mut(Vec::clear);
        let many = "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n";
        let first = parse(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
            .unwrap()
            .unwrap();
        let (parts, ()) = first.request.into_parts();
        let room = parts.headers.capacity();
        keep_map(parts.headers);
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), 1);
        let next = parse(b"GET / HTTP/1.1\r\nHost: y\r\n\r\n")
            .unwrap()
            .unwrap();
        let headers = next.request.headers();
        assert_eq!(headers.len(), 1, "nothing of the first request is left");
        assert_eq!(headers[header::HOST], "y");
        assert_eq!(headers.capacity(), room, "the first request's map, reused");
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), 0);
        // An empty map (HTTP/2's taken) is not kept.
        keep_map(HeaderMap::new());
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), 0);
    }

    #[test]
    fn request_framing_follows_rfc_9112_and_refuses_what_could_be_read_two_ways() {
        assert_eq!(framing(""), Ok(Framing::Empty));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Framing::Empty));
        assert_eq!(framing("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n"),
            Ok(Framing::Chunked)
        );
        for odd in [
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "Content-Length: 3, 3\r\n",
            "Content-Length: +3\r\n",
            "Content-Length: 3 3\r\n",
            "Content-Length: \r\n",
            "Content-Length: 0x10\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert!(
                matches!(framing(odd), Err(FramingError::Ambiguous(_))),
                "{odd}"
            );
        }
        let head = parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.framing.is_err());
        assert!(
            head.close,
            "a request that cannot be framed ends its connection"
        );
    }

    #[test]
    fn content_length_is_read_whatever_its_leading_zeros_and_refused_past_u64() {
        assert_eq!(
            framing("Content-Length: 00000000000000000005\r\n"),
            Ok(Framing::Length(5))
        );
        let zeros = format!("Content-Length: {}7\r\n", "0".repeat(300));
        assert_eq!(framing(&zeros), Ok(Framing::Length(7)));
        assert_eq!(framing("Content-Length: 000\r\n"), Ok(Framing::Empty));
        assert_eq!(
            framing("Content-Length: 18446744073709551615\r\n"),
            Ok(Framing::Length(u64::MAX))
        );
        for too_large in ["18446744073709551616", "99999999999999999999999"] {
            let h = format!("Content-Length: {too_large}\r\n");
            assert_eq!(framing(&h), Err(FramingError::TooLarge), "{too_large}");
        }
    }

    #[test]
    fn a_request_head_parses_in_place_with_every_header_as_it_came() {
        let mut buf = BytesMut::from(
            &b"\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nExpect: 100-continue\r\n\r\nnext"[..],
        );
        let head = parse_request_head(&mut buf, LIMITS).unwrap().unwrap();
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
    fn request_heads_over_the_limits_say_which_limit() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(5000));
        assert_eq!(
            parse(long_line.as_bytes()).err(),
            Some(RequestHeadError::UriTooLong)
        );
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse(long_uri.as_bytes()).err(),
            Some(RequestHeadError::UriTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(5000));
        assert_eq!(
            parse(big.as_bytes()).err(),
            Some(RequestHeadError::TooLarge)
        );
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..101 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            parse(many.as_bytes()).err(),
            Some(RequestHeadError::TooLarge)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nA B: c\r\n\r\n").err(),
            Some(RequestHeadError::Malformed)
        );
    }

    const GET: Asked = Asked {
        head: false,
        connect: false,
        upgrade: false,
        request_id: None,
    };

    fn head(raw: &[u8], asked: Asked) -> Result<(ResponseHead, BytesMut), ResponseHeadError> {
        let mut buf = BytesMut::from(raw);
        let head = parse_response_head(&mut buf, asked)?.expect("a complete head");
        Ok((head, buf))
    }

    fn refused(raw: &[u8], asked: Asked) -> ResponseHeadError {
        match head(raw, asked) {
            Err(e) => e,
            Ok(_) => panic!("{:?} accepted", String::from_utf8_lossy(raw)),
        }
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
            assert!(matches!(
                refused(&raw, GET),
                ResponseHeadError::Framing(ResponseFramingError::BadContentLength)
            ));
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
                parse_response_head(&mut buf, GET).unwrap().is_none(),
                "complete at {i}"
            );
            buf.extend_from_slice(&raw[i..]);
            let h = parse_response_head(&mut buf, GET).unwrap().unwrap();
            assert_eq!(h.status, 201);
        }
        let up = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframe";
        assert!(matches!(
            refused(up, GET),
            ResponseHeadError::Framing(ResponseFramingError::UnexpectedUpgrade)
        ));
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
    fn response_heads_over_the_limits_are_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD + 10, b'a');
        let mut buf = BytesMut::from(&big[..]);
        assert!(matches!(
            parse_response_head(&mut buf, GET),
            Err(ResponseHeadError::TooLarge)
        ));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(refused(&big, GET), ResponseHeadError::TooLarge));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(refused(&many, GET), ResponseHeadError::TooLarge));
        assert!(matches!(
            refused(b"HTTP/2 200\r\n\r\n", GET),
            ResponseHeadError::Malformed(_)
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
        assert_eq!(
            h.lines.codings.as_deref().map(|c| &c[..]),
            Some(&b"gzip"[..])
        );
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET).unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        assert_eq!(
            h.lines.codings.as_deref().map(|c| &c[..]),
            Some(&b"gzip"[..])
        );
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: br ,Chunked\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(
            h.lines.codings.as_deref().map(|c| &c[..]),
            Some(&b"gzip, br"[..])
        );
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!(h.lines.codings, None);
        assert!(matches!(
            refused(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET
            ),
            ResponseHeadError::Framing(ResponseFramingError::BadTransferEncoding)
        ));
    }

    #[test]
    fn keep_alive_only_for_http11_without_close() {
        let (h, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", GET).unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
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

    #[test]
    fn the_end_of_a_head_is_found_once_however_it_trickles_in() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 3, 7] {
            let (mut buf, mut scanned) = (Vec::new(), 0);
            let mut ended_at = None;
            for piece in head.chunks(step) {
                buf.extend_from_slice(piece);
                if head_ended(&buf, &mut scanned) {
                    ended_at = Some(buf.len());
                    break;
                }
                assert!(scanned == buf.len(), "scanned {scanned} of {}", buf.len());
            }
            assert_eq!(ended_at, Some(head.len()), "step {step}");
        }
        let mut scanned = 0;
        assert!(head_ended(b"GET / HTTP/1.1\nHost: x\n\n", &mut scanned));
        assert!(!head_ended(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
            &mut scanned
        ));
    }

    /// A stream of empty lines is dropped as it comes, so that none of
    /// them sets off a parse of all the others; the head after them is
    /// parsed when its own end comes.
    #[test]
    fn empty_lines_before_a_head_are_dropped_not_parsed() {
        let (mut buf, mut scanned) = (BytesMut::new(), 0);
        for _ in 0..1000 {
            buf.extend_from_slice(b"\r\n");
            assert!(!worth_parsing(&mut buf, &mut scanned, 100));
            assert!(buf.is_empty());
            buf.extend_from_slice(b"\n");
            assert!(!worth_parsing(&mut buf, &mut scanned, 100));
        }
        buf.extend_from_slice(b"\r");
        assert!(worth_parsing(&mut buf, &mut scanned, 100), "first look");
        assert_eq!(&buf[..], b"\r", "a CR alone waits for its LF");
        scanned = buf.len();
        buf.extend_from_slice(b"\nGET / HTTP/1.1\r\n");
        assert!(worth_parsing(&mut buf, &mut scanned, 100), "first look");
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        scanned = buf.len();
        buf.extend_from_slice(b"Host: x\r\n");
        assert!(!worth_parsing(&mut buf, &mut scanned, 100));
        buf.extend_from_slice(b"\r\n");
        assert!(worth_parsing(&mut buf, &mut scanned, 100));
    }
}
