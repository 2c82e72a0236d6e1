//! HTTP/1.1, Fulcrum's own codec, both ways. The parts that only turn
//! bytes into decisions depend on nothing from the request path, so they
//! can be read, tested and fuzzed alone:
//! - [`head`]: request and response heads, parsed in place with httparse;
//! - [`framing`]: how each message's body is delimited (RFC 9112 §6.3),
//!   decided once;
//! - [`chunked`]: the chunked transfer coding.
//!
//! The parts that drive sockets use them:
//! - `server`: client connections, handing each request to a service (the
//!   request path) and writing its response;
//! - `client`: one exchange on a backend connection;
//! - `pool`: the keep-alive connections to each backend.

pub(crate) mod chunked;
pub(crate) mod client;
pub(crate) mod framing;
pub(crate) mod head;
pub(crate) mod pool;
pub(crate) mod server;

/// Where a header's name and value lie in a head (request or response).
#[derive(Clone, Copy)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// Whether a comma-separated header value lists `token`, in any case.
pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        let mut out = Vec::new();
        put_decimal(&mut out, 0);
        out.push(b' ');
        put_decimal(&mut out, u64::MAX);
        out.push(b' ');
        put_hex(&mut out, 0x1a2b);
        assert_eq!(out, b"0 18446744073709551615 1a2b");
    }
}
