//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and
//! for the test that replays their corpus on stable (`tests/it/fuzz.rs`):
//! each takes arbitrary bytes, runs one part of the codec (or the config
//! pipeline) on them and panics when an invariant breaks. Not an API: the
//! codec's parts stay crate-private, and these are the one door to them.
//!
//! - [`request_head`]: a request head parsed whole and parsed as it would
//!   arrive in two reads decide the same, and what is decided holds;
//! - [`response_head`]: the same for a backend's response head;
//! - [`chunked`]: a chunked body decodes the same however it is split;
//! - [`request_framing`]: the codec's reading of a request head (complete,
//!   refused or taken, and its framing) against a second, plain one:
//!   httparse and RFC 9112 §6.3 ([`reference_request`]);
//! - [`config`]: TOML through check and rendering never panics, and a
//!   config comes with a snapshot exactly when it has no error.

use bytes::BytesMut;
use http::{HeaderMap, header};

use crate::http1::chunked::{ChunkError, Chunked, Decoded};
use crate::http1::framing::{Asked, Framing, FramingError};
use crate::http1::head::{
    HeadLimits, RequestHead, RequestHeadError, parse_request_head, parse_response_head,
    worth_parsing,
};
use crate::http1::put_hex;

/// The default listener's limits.
fn limits() -> HeadLimits {
    HeadLimits::of(&fulcrum_config::snapshot::Limits::DEFAULT)
}

/// Where to split `data` in two, from its first byte (the rest is the
/// input), so every split is reached.
fn split_at(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&k, rest)) => (usize::from(k) * rest.len() / 255, rest),
        None => (0, data),
    }
}

/// What a head parse decided, comparably.
#[derive(Debug, PartialEq)]
enum HeadRead {
    Incomplete,
    Refused(RequestHeadError),
    /// Bytes the head took, framing, close.
    Parsed(usize, Result<Framing, FramingError>, bool),
}

/// `fed`: bytes put in the buffer so far; what is left of them after a
/// head is what the head did not take.
fn head_read(
    fed: usize,
    buf: &BytesMut,
    parsed: Result<Option<RequestHead>, RequestHeadError>,
) -> HeadRead {
    match parsed {
        Ok(None) => HeadRead::Incomplete,
        Err(e) => HeadRead::Refused(e),
        Ok(Some(head)) => {
            check_request(&head);
            HeadRead::Parsed(fed - buf.len(), head.framing, head.close)
        }
    }
}

/// What a parsed request head must hold.
fn check_request(head: &RequestHead) {
    let headers = head.request.headers();
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let codings = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    match head.framing {
        Ok(Framing::Chunked) => assert!(codings == 1 && lengths == 0),
        Ok(Framing::Length(n)) => {
            assert!(codings == 0 && lengths == 1 && n > 0);
        }
        Ok(Framing::Empty) => assert!(codings == 0 && lengths <= 1),
        Ok(f) => panic!("a request framed as {f:?}"),
        Err(_) => assert!(head.close, "an unframeable request keeps its connection"),
    }
}

/// A request head, parsed whole, and parsed as the server reads it: the
/// first part, then the rest, parsing only once a head's end has come.
pub fn request_head(data: &[u8]) {
    let (at, data) = split_at(data);
    let whole = {
        let mut buf = BytesMut::from(data);
        let parsed = parse_request_head(&mut buf, limits());
        head_read(data.len(), &buf, parsed)
    };
    let limits = limits();
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut split = HeadRead::Incomplete;
    let mut fed = 0;
    for part in [&data[..at], &data[at..]] {
        buf.extend_from_slice(part);
        fed += part.len();
        if worth_parsing(&mut buf, &mut scanned, limits.max_head) {
            let parsed = parse_request_head(&mut buf, limits);
            split = head_read(fed, &buf, parsed);
            if split != HeadRead::Incomplete {
                break;
            }
            scanned = buf.len();
        }
    }
    // Read in two parts, a malformed start may be refused before the
    // whole is there: only what completes must agree.
    match (&whole, &split) {
        (HeadRead::Parsed(..), _) | (_, HeadRead::Parsed(..)) => assert_eq!(whole, split),
        _ => {}
    }
}

/// A response head to a request of the kind the first byte picks, parsed
/// whole and in two parts.
pub fn response_head(data: &[u8]) {
    let Some((&kind, data)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: kind & 1 != 0,
        connect: kind & 2 != 0,
        upgrade: kind & 4 != 0,
        request_id: (kind & 8 != 0).then_some(&b"id-1"[..]),
    };
    let parse = |parts: &[&[u8]]| {
        let mut buf = BytesMut::new();
        let mut last = None;
        let mut fed = 0;
        for part in parts {
            buf.extend_from_slice(part);
            fed += part.len();
            match parse_response_head(&mut buf, asked) {
                Ok(None) => last = None,
                Ok(Some(head)) => {
                    // The lines passed on are header lines, each whole.
                    let lines = &head.lines.bytes;
                    assert!(lines.is_empty() || lines.ends_with(b"\r\n"));
                    let map = head.lines.to_map();
                    let count = lines.split(|&b| b == b'\n').count() - 1;
                    assert_eq!(map.len(), count, "{:?}", String::from_utf8_lossy(lines));
                    if head.framing == Framing::Upgrade {
                        assert!(asked.upgrade && !head.keep_alive);
                    }
                    // What the head (and the 1xx before it) took.
                    let took = fed - buf.len();
                    return Some(Ok((head.status, head.framing, head.keep_alive, took)));
                }
                Err(e) => return Some(Err(format!("{e:?}"))),
            }
        }
        last
    };
    let whole = parse(&[data]);
    let at = usize::from(kind) * data.len() / 255;
    let split = parse(&[&data[..at], &data[at..]]);
    if let (Some(Ok(_)), _) | (_, Some(Ok(_))) = (&whole, &split) {
        assert_eq!(whole, split);
    }
}

/// What decoding a chunked body gave.
#[derive(Debug, PartialEq)]
struct Decoding {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// How it stopped: the end (and the bytes the body took), an error,
    /// or more bytes needed.
    end: Result<Option<usize>, ChunkError>,
}

fn decode(parts: &[&[u8]]) -> Decoding {
    let mut dec = Chunked::default();
    let mut buf = BytesMut::new();
    let mut out = Decoding {
        data: Vec::new(),
        trailers: None,
        end: Ok(None),
    };
    let mut fed = 0;
    for part in parts {
        buf.extend_from_slice(part);
        fed += part.len();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Decoded::Data(d))) => {
                    assert!(!d.is_empty());
                    out.data.extend_from_slice(&d);
                }
                Ok(Some(Decoded::Trailers(t))) => out.trailers = Some(t),
                Ok(Some(Decoded::End)) => {
                    out.end = Ok(Some(fed - buf.len()));
                    return out;
                }
                Ok(None) => break,
                Err(e) => {
                    out.end = Err(e);
                    return out;
                }
            }
        }
    }
    out
}

/// A chunked body decoded whole, in two parts, and a byte at a time (its
/// first 4 KiB): the same data, trailers and end. And the bytes as the
/// data of a body chunked as the codec writes one (chunks of the split's
/// size): they decode to exactly that data, and the body ends where its
/// last chunk does.
pub fn chunked(data: &[u8]) {
    let (at, data) = split_at(data);
    let whole = decode(&[data]);
    assert_eq!(whole, decode(&[&data[..at], &data[at..]]), "split at {at}");
    let short = &data[..data.len().min(4096)];
    let bytes: Vec<&[u8]> = short.chunks(1).collect();
    assert_eq!(decode(&[short]), decode(&bytes), "a byte at a time");

    let mut body = Vec::with_capacity(data.len() + 64);
    for piece in data.chunks(at.max(1)) {
        put_hex(&mut body, piece.len() as u64);
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let written = decode(&[&body]);
    assert_eq!(written.data, data, "the data of a body chunked by {at}");
    assert_eq!(written.end, Ok(Some(body.len())));
}

/// The codec's reading of a request head against [`reference_request`]:
/// whether it is complete, refused or taken, how many bytes it takes and
/// how its body is framed must agree, whatever the bytes.
pub fn request_framing(data: &[u8]) {
    let limits = limits();
    let mut buf = BytesMut::from(data);
    let ours = match parse_request_head(&mut buf, limits) {
        Ok(None) => Reading::Incomplete,
        Err(_) => Reading::Refused,
        Ok(Some(head)) => Reading::Framed(
            data.len() - buf.len(),
            match head.framing {
                Ok(f) => Ok(f),
                Err(FramingError::Ambiguous(_)) => Err(400),
                Err(FramingError::TooLarge) => Err(413),
            },
        ),
    };
    agree(data, ours, limits);
}

/// Panics unless `ours` is what [`reference_request`] reads in `data`.
fn agree(data: &[u8], ours: Reading, limits: HeadLimits) {
    let reference = reference_request(data, limits);
    assert_eq!(ours, reference, "{:?}", String::from_utf8_lossy(data));
}

/// How a request head was read: the differential's common ground.
#[derive(Debug, PartialEq)]
enum Reading {
    /// More bytes are needed.
    Incomplete,
    /// The head itself is refused (malformed, or over a limit).
    Refused,
    /// The head takes this many bytes; its body is framed so, or refused
    /// with this status.
    Framed(usize, Result<Framing, u16>),
}

/// A second reading of a request head: httparse for its syntax, the
/// `http` crate's own checks of method, target and header names and
/// values, then RFC 9112 §6.3 written out plainly, with the stricter
/// choices Fulcrum documents (docs/hardening.md, request smuggling).
fn reference_request(data: &[u8], limits: HeadLimits) -> Reading {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(data) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_head => len,
        Ok(httparse::Status::Partial) if data.len() < limits.max_head => {
            return Reading::Incomplete;
        }
        _ => return Reading::Refused,
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Reading::Refused;
    };
    let well_formed = path.len() <= limits.max_uri
        && http::Method::from_bytes(method.as_bytes()).is_ok()
        && http::Uri::try_from(path).is_ok()
        && req.headers.iter().all(|h| {
            http::HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                && http::HeaderValue::from_bytes(h.value).is_ok()
        });
    if !well_formed {
        return Reading::Refused;
    }
    let named = |n: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| h.value)
            .collect()
    };
    let (te, cl) = (named("transfer-encoding"), named("content-length"));
    // §6.1: Transfer-Encoding is HTTP/1.1's; in a request, chunked must
    // be its final coding, and Fulcrum takes nothing but `chunked` alone.
    if !te.is_empty() {
        let ows = |c: char| c == ' ' || c == '\t';
        let alone = te.len() == 1
            && String::from_utf8_lossy(te[0])
                .trim_matches(ows)
                .eq_ignore_ascii_case("chunked");
        let ok = req.version == Some(1) && alone && cl.is_empty();
        return Reading::Framed(len, if ok { Ok(Framing::Chunked) } else { Err(400) });
    }
    // §6.3 item 5: several Content-Length, or one that is not 1*DIGIT,
    // is unrecoverable (Fulcrum does not merge equal ones).
    let framing = match cl.as_slice() {
        [] => Ok(Framing::Empty),
        [one] if !one.is_empty() && one.iter().all(u8::is_ascii_digit) => {
            let text = std::str::from_utf8(one).expect("ASCII digits");
            let digits = text.trim_start_matches('0');
            match digits.parse::<u64>() {
                _ if digits.is_empty() => Ok(Framing::Empty),
                Ok(n) => Ok(Framing::Length(n)),
                // Only digits, and too many for a u64.
                Err(_) => Err(413),
            }
        }
        _ => Err(400),
    };
    Reading::Framed(len, framing)
}

/// A config through `check` and every rendering: no panic, a snapshot
/// exactly when there is no error, and every diagnostic placed within the
/// file.
pub fn config(data: &[u8]) {
    let env = fulcrum_config::NoFiles;
    let (source, checked) = fulcrum_config::check_bytes_with("fuzz.toml", data.to_vec(), &env);
    assert_eq!(checked.snapshot.is_some(), checked.errors() == 0);
    let lines = source.split('\n').count();
    for d in &checked.diagnostics {
        assert!(d.line >= 1 && d.line <= lines.max(1), "{d:?}");
        assert!(d.col >= 1, "{d:?}");
    }
    let _ = fulcrum_config::render_human("fuzz.toml", &source, &checked);
    let _ = fulcrum_config::render_json("fuzz.toml", &checked);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMUGGLE: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    const ZEROS: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\n";

    #[test]
    fn the_codec_and_the_reference_agree_on_the_known_shapes() {
        for data in [
            SMUGGLE,
            ZEROS,
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3,\xff2 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \tchunked \r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            request_framing(data);
        }
    }

    /// The differential can fail: the framing the codec once gave these
    /// (a smuggling shape framed by its length, a 20-digit length read as
    /// no body) is caught.
    #[test]
    #[should_panic(expected = "Content-Length: 5")]
    fn a_smuggling_shape_framed_by_its_length_fails() {
        agree(
            SMUGGLE,
            Reading::Framed(SMUGGLE.len(), Ok(Framing::Length(5))),
            limits(),
        );
    }

    #[test]
    #[should_panic(expected = "00000000000000000005")]
    fn a_long_length_read_as_no_body_fails() {
        agree(
            ZEROS,
            Reading::Framed(ZEROS.len(), Ok(Framing::Empty)),
            limits(),
        );
    }
}
