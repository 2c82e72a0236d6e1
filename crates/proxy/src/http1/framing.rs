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

/// The framing headers of a request, as one pass over its head saw them.
#[derive(Debug, Default)]
pub(crate) struct RequestFraming {
    length: Option<u64>,
    bad_length: bool,
    transfer_encodings: u32,
    chunked: bool,
}

impl RequestFraming {
    pub fn content_length(&mut self, value: &[u8]) {
        // One plain number: a list, even of equal ones, is refused.
        match parse_length(value) {
            Some(n) if self.length.is_none() && !value.contains(&b',') => self.length = Some(n),
            _ => self.bad_length = true,
        }
    }

    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encodings += 1;
        self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
    }

    /// The body's framing; None when it could be read two ways
    /// (Content-Length and Transfer-Encoding together, several or odd
    /// ones, Transfer-Encoding on HTTP/1.0).
    pub fn decide(&self, http10: bool) -> Option<Framing> {
        if self.transfer_encodings > 0 {
            let single_chunked = self.transfer_encodings == 1 && self.chunked;
            return (!http10 && single_chunked && self.length.is_none() && !self.bad_length)
                .then_some(Framing::Chunked);
        }
        if self.bad_length {
            return None;
        }
        Some(match self.length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
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
        match (parse_length(value), self.length) {
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
