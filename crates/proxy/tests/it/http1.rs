//! The HTTP/1.1 server side, with raw bytes on real sockets: pipelining,
//! `Expect: 100-continue`, HTTP/1.0 keep-alive, chunked bodies both ways,
//! and the framing of responses to HEAD and to HTTP/1.0 clients.

use fulcrum_config::snapshot::Protocol;
use fulcrum_testkit::{Backend, Mode, TestProxy, pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{PATIENCE, raw_until_closed};

/// One response read off `s`: its head (lower-cased) and its body, framed
/// by Content-Length or chunked (trailers kept in the returned head).
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> (String, Vec<u8>) {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await;
    };
    let mut head = String::from_utf8(buf.drain(..end).collect())
        .unwrap()
        .to_ascii_lowercase();
    if head_only {
        return (head, Vec::new());
    }
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    if let Some(n) = length {
        while buf.len() < n {
            fill(s, buf).await;
        }
        return (head, buf.drain(..n).collect());
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(s, buf).await;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let i = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(s, buf).await;
                };
                let line: Vec<u8> = buf.drain(..i + 2).collect();
                if i == 0 {
                    return (head, body);
                }
                head.push_str(&String::from_utf8_lossy(&line).to_ascii_lowercase());
            }
        }
        while buf.len() < size + 2 {
            fill(s, buf).await;
        }
        body.extend(buf.drain(..size));
        assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
        .await
        .expect("no response in time")
        .unwrap();
    assert!(
        n > 0,
        "closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

async fn echo_proxy() -> (Backend, TestProxy) {
    let b = Backend::start("a").await;
    b.set_mode(Mode::Echo);
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    (b, proxy)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (b, proxy) = echo_proxy().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut all = Vec::new();
    for body in ["one", "two", "three"] {
        all.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    s.write_all(&all).await.unwrap();
    let mut buf = Vec::new();
    for body in ["one", "two", "three"] {
        let (head, got) = response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(got, body.as_bytes());
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (_b, proxy) = echo_proxy().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client holds its body back until told to go on.
    let mut buf = Vec::new();
    let (head, _) = response(&mut s, &mut buf, true).await;
    assert!(head.starts_with("http/1.1 100 continue"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn a_chunked_request_body_arrives_whole_and_the_connection_goes_on() {
    let (b, proxy) = echo_proxy().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Split across writes, one of them mid-chunk.
    for part in [
        &b"POST / HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"[..],
        b"c\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
    ] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut buf = Vec::new();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"abcdefg");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let (_, body) = response(&mut s, &mut buf, false).await;
    assert_eq!(body, b"hi");
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn a_response_of_unknown_length_is_chunked_with_its_trailers() {
    let b = Backend::start("a").await;
    b.set_mode(Mode::Trailers);
    // An HTTP/2 backend sends its trailers unasked.
    let mut p = pool("p", &[b.addr]);
    p.protocol = Protocol::H2;
    let proxy = TestProxy::serving(p).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("x-trailer: done"), "{head}");
    assert_eq!(body, b"a");

    // HTTP/1.0 knows no chunks: the body ends with the connection.
    let got = raw_until_closed(proxy.addr, b"GET / HTTP/1.0\r\nHost: x.test\r\n\r\n")
        .await
        .expect("an HTTP/1.0 response of unknown length ends with the connection");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.ends_with("\r\n\r\na"), "{text}");
}

#[tokio::test]
async fn http10_keep_alive_is_granted_when_asked() {
    let b = Backend::start("a").await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: x.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = response(&mut s, &mut buf, false).await;
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert_eq!(body, b"a");
    }
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn a_head_response_keeps_its_length_and_sends_no_body() {
    let b = Backend::start("abc").await;
    let proxy = TestProxy::serving(pool("p", &[b.addr])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x.test\r\n\r\nGET / HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, _) = response(&mut s, &mut buf, true).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 3"), "{head}");
    // What follows is the next response, not a body.
    let (head, body) = response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"abc");
}

#[tokio::test]
async fn a_malformed_head_is_400_and_closes() {
    let (b, proxy) = echo_proxy().await;
    for bad in [
        &b"GET / HTTP/1.1\r\nHost : x.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x.test\r\nX-A: a\r\n b\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x.test\r\n\r\n",
        b"G\0T / HTTP/1.1\r\n\r\n",
    ] {
        let got = raw_until_closed(proxy.addr, bad)
            .await
            .expect("a malformed head left the connection open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(proxy.plane.counters().client_bad_request, 4);
}
