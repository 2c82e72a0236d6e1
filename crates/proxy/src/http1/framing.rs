//! How each HTTP/1.1 message's body is delimited (RFC 9112 §6.3), decided
//! once from its head: the codec frames the body by this decision, and
//! nothing after it reads the length headers again.

/// How a body is delimited on the wire; also how the codec writes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (a request without one; a response to HEAD, 1xx, 204, 304).
    Empty,
    /// Content-Length: bytes still to come.
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
    /// `101 Switching Protocols`: the connection goes to another protocol.
    Upgrade,
}

/// Why a request's body cannot be framed. The codec refuses such a
/// request before any of its body is read, and closes the connection:
/// what follows on it could be read two ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// The length headers could be read two ways (a smuggling shape) or
    /// are malformed: 400, with the reason.
    Ambiguous(&'static str),
    /// A Content-Length too large to be any body's (over 2^64 - 1): 413.
    TooLarge,
}

/// The framing headers of a request, as one pass over its head saw them.
#[derive(Debug, Default)]
pub(crate) struct RequestFraming {
    lengths: u32,
    /// The first Content-Length, as [`parse_length`] read it.
    length: Option<Result<u64, LengthError>>,
    transfer_encodings: u32,
    /// The (only) Transfer-Encoding is exactly `chunked`.
    chunked: bool,
}

impl RequestFraming {
    pub fn content_length(&mut self, value: &[u8]) {
        self.lengths += 1;
        self.length.get_or_insert(parse_length(value));
    }

    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encodings += 1;
        self.chunked = trim_ows(value).eq_ignore_ascii_case(b"chunked");
    }

    /// The body's framing (RFC 9112 §6.3), or why it has none that can be
    /// trusted. Stricter than the RFC where it lets a recipient choose:
    /// a request with both length headers, several Content-Length (even
    /// equal ones) or a coding other than exactly `chunked` is refused
    /// rather than resolved, because a backend could resolve it otherwise.
    pub fn decide(&self, http10: bool) -> Result<Framing, FramingError> {
        use FramingError::Ambiguous;
        if self.transfer_encodings > 0 {
            return Err(if http10 {
                Ambiguous("Transfer-Encoding on HTTP/1.0")
            } else if self.transfer_encodings > 1 {
                Ambiguous("several Transfer-Encoding headers")
            } else if !self.chunked {
                Ambiguous("Transfer-Encoding other than exactly `chunked`")
            } else if self.lengths > 0 {
                Ambiguous("both Content-Length and Transfer-Encoding")
            } else {
                return Ok(Framing::Chunked);
            });
        }
        match self.length {
            _ if self.lengths > 1 => Err(Ambiguous("several Content-Length headers")),
            None | Some(Ok(0)) => Ok(Framing::Empty),
            Some(Ok(n)) => Ok(Framing::Length(n)),
            Some(Err(LengthError::Malformed)) => {
                Err(Ambiguous("Content-Length is not a plain number"))
            }
            Some(Err(LengthError::TooLarge)) => Err(FramingError::TooLarge),
        }
    }
}

/// `v` without the optional whitespace (space and tab, RFC 9110 §5.6.3)
/// around it: nothing else counts as blank.
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Why a Content-Length value is not a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthError {
    /// Not one run of digits (empty, a sign, a list, other bytes).
    Malformed,
    /// More than 2^64 - 1.
    TooLarge,
}

/// A request's Content-Length: one run of ASCII digits. Leading zeros are
/// read as the number they pad (`007` is 7; RFC 9110 §8.6 allows them),
/// however many there are, and the backend gets the number alone, so no
/// reader after us can take the value for another.
pub(crate) fn parse_length(v: &[u8]) -> Result<u64, LengthError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(LengthError::Malformed);
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(LengthError::TooLarge)
    })
}

/// What a response's framing depends on in its request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asked<'a> {
    pub head: bool,
    pub connect: bool,
    pub upgrade: bool,
    /// The request's id, which the response carries back to the client
    /// (in place of any the backend set).
    pub request_id: Option<&'a [u8]>,
}

/// The framing headers of a response, as one pass over its head saw them.
#[derive(Debug, Default)]
pub(crate) struct ResponseFraming {
    pub length: Option<u64>,
    pub bad_length: bool,
    /// Whether the last Transfer-Encoding coding is chunked, if there is one.
    pub chunked: Option<bool>,
}

/// A response whose framing the codec refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFramingError {
    BadContentLength,
    /// Transfer-Encoding on an HTTP/1.0 response.
    BadTransferEncoding,
    UnexpectedUpgrade,
}

impl ResponseFraming {
    pub fn content_length(&mut self, value: &[u8]) {
        match (parse_length_list(value), self.length) {
            (Some(n), None) => self.length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => self.bad_length = true,
        }
    }

    pub fn transfer_encoding(&mut self, value: &[u8]) {
        let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
        self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    }

    /// The body's framing, and whether the connection may carry another
    /// request after it (`keep_alive`: what the head's version and
    /// Connection header allow).
    pub fn decide(
        &self,
        code: u16,
        http10: bool,
        asked: Asked<'_>,
        keep_alive: bool,
    ) -> Result<(Framing, bool), ResponseFramingError> {
        Ok(if code == 101 {
            if !asked.upgrade {
                return Err(ResponseFramingError::UnexpectedUpgrade);
            }
            (Framing::Upgrade, false)
        } else if asked.head || code == 204 || code == 304 {
            (Framing::Empty, keep_alive)
        } else if asked.connect && (200..300).contains(&code) {
            // The connection became a tunnel nobody carries: close it.
            (Framing::Empty, false)
        } else if let Some(chunked) = self.chunked {
            if http10 {
                return Err(ResponseFramingError::BadTransferEncoding);
            }
            // Both: Transfer-Encoding wins, and the connection, whose
            // framing someone got wrong, is not reused (RFC 9112 §6.3).
            let both = self.length.is_some() || self.bad_length;
            if chunked {
                (Framing::Chunked, keep_alive && !both)
            } else {
                (Framing::Close, false)
            }
        } else if self.bad_length {
            return Err(ResponseFramingError::BadContentLength);
        } else if let Some(n) = self.length {
            (Framing::Length(n), keep_alive)
        } else {
            (Framing::Close, false)
        })
    }
}

/// A response's Content-Length: digits, or a list of the same digits
/// (`5, 5`, which RFC 9112 §6.3 lets a recipient read as one).
fn parse_length_list(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|&b| b == b',') {
        let n = parse_length(part.trim_ascii()).ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}
