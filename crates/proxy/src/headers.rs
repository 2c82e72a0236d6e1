//! Header rewriting between client and backend: hop-by-hop headers removed
//! (RFC 9110 §7.6.1), X-Forwarded-* added, and the request id.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::BytesMut;
use fastrand::Rng;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header describes one connection, not the message, by its
/// name alone (RFC 9110 §7.6.1): never forwarded as it came. An upgrade's
/// `Connection`/`Upgrade` are put back by the request path when it carries
/// the upgrade through. Besides these, headers the Connection header
/// names are hop-by-hop too ([`connection_named`]).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: most names are ruled out by one comparison. Any
    // case: a backend's header names reach this as they came.
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        17 => is(b"transfer-encoding"),
        n => n > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"),
    }
}

/// The header names a Connection value lists, its options (`close`,
/// `keep-alive`, `upgrade`) aside. Usually none, and then no allocation.
pub fn connection_named(value: &[u8], into: &mut Vec<HeaderName>) {
    // The usual values, whole (every keep-alive response of most
    // backends carries one): no tokens to split and compare.
    if matches!(value, b"keep-alive" | b"Keep-Alive" | b"close" | b"Close") {
        return;
    }
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.is_empty()
            || token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
            || token.eq_ignore_ascii_case(b"upgrade")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            into.push(name);
        }
    }
}

/// Removes hop-by-hop headers, including those the Connection header
/// names, but never one of `kept` (what routing read: a request's Host
/// and routing headers, which a client could otherwise name away from the
/// backend). Allocates only when a Connection header names some.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, kept: &[HeaderName]) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        connection_named(value.as_bytes(), &mut named);
    }
    named.retain(|n| !kept.contains(n));
    for name in named {
        headers.remove(name);
    }
    // A scan per hop-by-hop name present: usually one scan, or two.
    while let Some(name) = headers
        .keys()
        .find(|n| is_hop_by_hop(n.as_str().as_bytes()))
        .cloned()
    {
        headers.remove(name);
    }
}

/// Whether a field must not travel as a trailer (RFC 9110 §6.5.1): one a
/// recipient could take for part of the head, where it decides framing
/// (`content-length`), routing (`host`), authentication, caching,
/// conditionals, the response's control data or how to read the content
/// (`content-type`); the hop-by-hop ones; and those the proxy sets itself
/// (`x-forwarded-*`, `x-request-id`), which a trailer could otherwise
/// spoof to a backend that merges trailers into its headers. The rest
/// pass, both ways, where the receiver can take trailers.
pub fn is_forbidden_trailer(name: &HeaderName) -> bool {
    use header::*;
    const FORBIDDEN: &[HeaderName] = &[
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        CONTENT_ENCODING,
        CONTENT_TYPE,
        CONTENT_RANGE,
        TRAILER,
        TE,
        EXPECT,
        MAX_FORWARDS,
        CACHE_CONTROL,
        PRAGMA,
        RANGE,
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        WWW_AUTHENTICATE,
        PROXY_AUTHENTICATE,
        COOKIE,
        SET_COOKIE,
        AGE,
        EXPIRES,
        DATE,
        LOCATION,
        RETRY_AFTER,
        VARY,
        WARNING,
    ];
    FORBIDDEN.contains(name) || is_hop_by_hop(name.as_str().as_bytes()) || Forwarded::sets(name)
}

/// `trailers` without the fields that must not be trailers; None when
/// none is left.
pub fn allowed_trailers(mut trailers: HeaderMap) -> Option<HeaderMap> {
    if trailers.keys().any(is_forbidden_trailer) {
        let names: Vec<HeaderName> = trailers
            .keys()
            .filter(|n| is_forbidden_trailer(n))
            .cloned()
            .collect();
        for name in names {
            trailers.remove(name);
        }
    }
    (!trailers.is_empty()).then_some(trailers)
}

/// Whether `v` is a valid `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC
/// 3986 §3.2.2): an IP literal in brackets, or a non-empty registered
/// name or IPv4 address (unreserved characters and sub-delims), then an
/// optional port of at most five digits. No userinfo (`a@b`), no path or
/// query (`a/b?c`), no whitespace: what a Host header or a request
/// target's authority may be. RFC 3986 also allows `%XX` escapes in a
/// name; they are refused, as HTTP/2 cannot carry them in `:authority`
/// (a request an `h2` pool could never send) and no real host needs one.
pub fn is_authority(v: &[u8]) -> bool {
    if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        return is_ip_literal(&v[1..end]) && is_port(&v[end + 1..]);
    }
    // A registered name or IPv4 address, in one pass up to its port.
    let name = v.iter().take_while(|&&b| REG_NAME[usize::from(b)]).count();
    name > 0 && is_port(&v[name..])
}

/// Nothing, or `:` and at most five digits.
fn is_port(rest: &[u8]) -> bool {
    match rest.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The bytes of a registered name (RFC 3986 §3.2.2) besides `%XX`:
/// unreserved characters and sub-delims. A table: a Host is checked on
/// every request.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

/// The inside of `[...]`: an IPv6 address (no zone), or IPvFuture.
fn is_ip_literal(inner: &[u8]) -> bool {
    if let Some(rest) = inner
        .strip_prefix(b"v")
        .or_else(|| inner.strip_prefix(b"V"))
    {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
    }
    std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The client's address as a header value, made once per connection so
/// that each request's X-Forwarded-For is a reference count, not a format.
pub fn client_ip_value(client_ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client_ip.to_string()).expect("an IP address is a valid header value")
}

/// The headers the proxy sets on a request on its way to a backend:
/// X-Forwarded-For (the client's address appended to any list the client
/// sent), -Proto (`http` or `https`, how the client reached the listener),
/// -Host, and X-Request-Id. A client's own copies of these are replaced.
pub struct Forwarded<'a> {
    /// From [`client_ip_value`].
    pub client_ip: &'a HeaderValue,
    pub host: Option<&'a HeaderValue>,
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
}

impl Forwarded<'_> {
    /// Whether `name` is one of the headers set here, so that a client's
    /// copy is not passed on.
    #[inline]
    pub fn sets(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == REQUEST_ID
    }

    /// Sets them in a header map (for HTTP/2 backends).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let xff = self.for_value(headers.get_all(&X_FORWARDED_FOR).iter());
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.proto),
        );
        if let Some(host) = self.host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        headers.insert(REQUEST_ID.clone(), self.request_id.clone());
    }

    /// Writes them as header lines (for the HTTP/1.1 encoder, which leaves
    /// the client's copies out: [`Forwarded::sets`]). `client_for` holds
    /// the X-Forwarded-For lines the client sent, in order: one list, as
    /// RFC 9110 §5.3 reads several lines of one field. The same headers as
    /// [`Forwarded::apply`], without a hash-map insert for each.
    pub fn write(&self, out: &mut Vec<u8>, client_for: &[&HeaderValue]) {
        out.extend_from_slice(X_FORWARDED_FOR.as_str().as_bytes());
        out.extend_from_slice(b": ");
        for prev in client_for {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        put_line(out, &X_FORWARDED_PROTO, &[self.proto.as_bytes()]);
        if let Some(host) = self.host {
            put_line(out, &X_FORWARDED_HOST, &[host.as_bytes()]);
        }
        put_line(out, &REQUEST_ID, &[self.request_id.as_bytes()]);
    }

    /// Upper bound of what [`Forwarded::write`] adds, `client_for` aside.
    pub fn max_written(&self) -> usize {
        100 + self.client_ip.len() + self.host.map_or(0, HeaderValue::len) + self.request_id.len()
    }

    fn for_value<'v>(&self, mut client_for: impl Iterator<Item = &'v HeaderValue>) -> HeaderValue {
        let Some(first) = client_for.next() else {
            return self.client_ip.clone();
        };
        // Proxies in front of us already listed the chain: extend it.
        let mut v = first.as_bytes().to_vec();
        for prev in client_for {
            v.extend_from_slice(b", ");
            v.extend_from_slice(prev.as_bytes());
        }
        v.extend_from_slice(b", ");
        v.extend_from_slice(self.client_ip.as_bytes());
        HeaderValue::from_bytes(&v).expect("header values joined by commas")
    }
}

/// Writes one HTTP/1.1 header line, `name: value\r\n`, the value given in
/// pieces.
#[inline]
pub fn put_line(out: &mut Vec<u8>, name: &HeaderName, value: &[&[u8]]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for piece in value {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(b"\r\n");
}

/// The client's request id (its first X-Request-Id) if it sent a usable
/// one, else a fresh one: 16 lower-case hex digits from the fast RNG,
/// formatted on the stack.
pub fn request_id(client: Option<&HeaderValue>, rng: &mut Rng) -> HeaderValue {
    if let Some(v) = client.filter(|v| !v.is_empty() && v.len() <= 128) {
        return v.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rng.u64(..);
    let mut buf = [0u8; 16];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Cut from a block shared by the thread's next ids: a reference
    // count, where a value of its own would be an allocation per request.
    let id = ID_BLOCK.with_borrow_mut(|block| {
        if block.capacity() < buf.len() {
            *block = BytesMut::with_capacity(ID_BLOCK_LEN);
        }
        block.extend_from_slice(&buf);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value")
}

/// Bytes in a block of request ids: 64 ids.
const ID_BLOCK_LEN: usize = 64 * 16;

thread_local! {
    static ID_BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("proxy-connection", "x".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, &[]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        // What routing read stays, whatever Connection names.
        h.insert("connection", "host, x-tenant, x-other".parse().unwrap());
        h.insert("host", "a.test".parse().unwrap());
        h.insert("x-tenant", "blue".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, &[header::HOST, HeaderName::from_static("x-tenant")]);
        let mut names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-kept", "x-tenant"]);
    }

    #[test]
    fn authorities_are_host_and_port_and_nothing_else() {
        for good in [
            "a",
            "app.example.com",
            "app.example.com:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[v1.fe]",
            "xn--bcher-kva.example",
            "a:",
            "sub_domain.example",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ": a",
            ":80",
            "a b",
            "a/b?c",
            "a@b",
            "a:b",
            "a:123456",
            "a:80:80",
            "[::1",
            "[zz]",
            "[::1]x",
            "[fe80::1%25eth0]",
            "a%41b",
            "a%4",
            "a%zz",
            "a\tb",
            "é.example",
            "a\"b",
            "a#b",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    /// What passes as a Host goes to an `h2` pool as `:authority`: every
    /// byte a name may hold, `http` takes in an authority too.
    #[test]
    fn every_host_that_passes_is_an_http2_authority() {
        for b in 0..=255u8 {
            for host in [vec![b'a', b, b'a'], vec![b'a', b, b'a', b':', b'8']] {
                if is_authority(&host) {
                    assert!(
                        http::uri::Authority::try_from(host.as_slice()).is_ok(),
                        "{:?}",
                        String::from_utf8_lossy(&host)
                    );
                }
            }
        }
    }

    #[test]
    fn trailers_keep_only_what_may_be_a_trailer() {
        let mut t = HeaderMap::new();
        for (n, v) in [
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
            ("content-length", "5"),
            ("host", "evil.test"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=b"),
            ("authorization", "Basic x"),
            ("content-type", "text/evil"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "spoofed"),
            ("connection", "close"),
        ] {
            t.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let kept = allowed_trailers(t).unwrap();
        let mut names: Vec<_> = kept.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["grpc-status", "x-checksum"]);
        let mut only_bad = HeaderMap::new();
        only_bad.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        assert!(allowed_trailers(only_bad).is_none());
    }

    #[test]
    fn hop_by_hop_names() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "proxy-connection",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "content-length",
            "trailers",
            "tk",
            "x-upgrade",
            "proxy",
            "host",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        h.insert("x-request-id", "client".parse().unwrap());
        let (ip, host, id) = (
            client_ip_value("127.0.0.1".parse().unwrap()),
            "a.test".parse().unwrap(),
            "id-1".parse().unwrap(),
        );
        let fwd = Forwarded {
            client_ip: &ip,
            host: Some(&host),
            proto: "http",
            request_id: &id,
        };
        let mut lines = Vec::new();
        let client_for: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        fwd.write(&mut lines, &client_for);
        assert!(lines.len() <= fwd.max_written() + "10.0.0.1, 10.0.0.2, ".len());
        fwd.apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-request-id"], "id-1");
        // Written as lines, the same headers as in the map.
        let text = String::from_utf8(lines).unwrap();
        let mut from_map: Vec<_> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        let mut written: Vec<_> = text.lines().map(str::to_owned).collect();
        from_map.sort();
        written.sort();
        assert_eq!(written, from_map);
        assert!(h.keys().all(Forwarded::sets));
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut rng = Rng::with_seed(1);
        let id = request_id(None, &mut rng);
        assert_eq!(id.len(), 16);
        // Across the end of a block of ids, each stays whole and distinct.
        let ids: Vec<_> = (0..200).map(|_| request_id(None, &mut rng)).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id.len(), 16);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert!(!ids[..i].contains(id), "{id:?} twice");
        }
        let abc = HeaderValue::from_static("abc");
        assert_eq!(request_id(Some(&abc), &mut rng), "abc");
        let long = HeaderValue::from_bytes(&[b'a'; 129]).unwrap();
        assert_eq!(request_id(Some(&long), &mut rng).len(), 16);
    }
}
