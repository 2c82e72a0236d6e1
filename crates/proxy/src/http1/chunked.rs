//! The chunked transfer coding (RFC 9112 §7.1), decoded from the front of
//! a read buffer: the same decoder reads clients' request bodies and
//! backends' response bodies. Only whole lines are consumed, so input
//! split anywhere decodes the same.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A chunk-size line, extensions included.
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Chunk extensions in one body, all lines together: each line is
/// bounded, and so is what a body of many small chunks may carry.
pub(crate) const MAX_EXTENSIONS: usize = 16 * 1024;
/// A trailer section.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Fields in a trailer section.
const MAX_TRAILER_FIELDS: usize = 128;

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// A malformed chunk-size line, one over 4 KiB, or chunk data not
    /// followed by CRLF.
    Malformed,
    /// A trailer section over 16 KiB or 128 fields.
    TrailersTooLarge,
    /// A trailer field that does not parse, or that `http` refuses.
    BadTrailer,
    /// Chunk extensions over 16 KiB in one body.
    ExtensionsTooLarge,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::Malformed => "malformed chunk",
            ChunkError::TrailersTooLarge => "trailers too large",
            ChunkError::BadTrailer => "malformed trailer field",
            ChunkError::ExtensionsTooLarge => "chunk extensions too large",
        })
    }
}

impl std::error::Error for ChunkError {}

/// The decoder's state between reads.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Bytes of chunk extensions so far.
    extensions: usize,
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

/// One piece of a decoded body.
#[derive(Debug)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl Chunked {
    /// The next piece of the body, or None until more bytes are read.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ChunkError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                        if buf.len() >= MAX_CHUNK_LINE {
                            return Err(ChunkError::Malformed);
                        }
                        return Ok(None);
                    };
                    let (size, extensions) = chunk_size(&buf[..=lf])?;
                    self.extensions += extensions;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError::ExtensionsTooLarge);
                    }
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
                            Some(_) => Err(ChunkError::Malformed),
                        };
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(ChunkError::Malformed);
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
                    let Some((len, trailers)) = trailers(buf)? else {
                        return Ok(None);
                    };
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

/// The trailer section at the front of `buf` and its length, None while
/// it is incomplete.
fn trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) if done.0 <= MAX_TRAILERS => done,
        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TrailersTooLarge),
        Err(_) => return Err(ChunkError::BadTrailer),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ChunkError::BadTrailer)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| ChunkError::BadTrailer)?;
        map.append(name, value);
    }
    Ok(Some((len, map)))
}

/// The size on a chunk-size line (`1a;name=value\r\n`), and how many
/// bytes follow it (extensions, and whitespace before them); extensions
/// are ignored but may not hold a CR, and the line must end in CRLF, so no
/// reader after us can split it differently.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), ChunkError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ChunkError::Malformed)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::Malformed);
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
        return Err(ChunkError::Malformed);
    }
    Ok((size, line.len() - digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `parts` one after the other and decodes all it can after each.
    fn chunked(parts: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>, usize), ChunkError> {
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
        panic!("the body did not end");
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

    fn refused(bytes: &[u8]) -> ChunkError {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(bytes);
        loop {
            match dec.decode(&mut buf) {
                Err(e) => return e,
                Ok(Some(Decoded::End)) | Ok(None) => {
                    panic!("{:?} accepted", String::from_utf8_lossy(bytes))
                }
                Ok(Some(_)) => {}
            }
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
        ] {
            assert_eq!(refused(bad), ChunkError::Malformed);
        }
        assert_eq!(
            refused(b"3\r\nabc\r\n0\r\nbad header\r\n\r\n"),
            ChunkError::BadTrailer
        );
        let long = [b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(refused(&long), ChunkError::Malformed);
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() <= MAX_TRAILERS {
            trailers.extend_from_slice(b"x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(refused(&trailers), ChunkError::TrailersTooLarge);
    }

    #[test]
    fn chunk_extensions_are_bounded_per_body_not_only_per_line() {
        let mut body = Vec::new();
        let ext = format!(";e={}", "x".repeat(1000));
        for _ in 0..16 {
            body.extend_from_slice(format!("1{ext}\r\na\r\n").as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(chunked(&[&body]).unwrap().0, vec![b'a'; 16]);
        let mut more = body[..body.len() - 5].to_vec();
        more.extend_from_slice(format!("1{ext}\r\na\r\n0\r\n\r\n").as_bytes());
        assert_eq!(refused(&more), ChunkError::ExtensionsTooLarge);
    }
}
