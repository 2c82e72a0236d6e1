//! The data plane's integration tests: real backends and the real proxy on
//! 127.0.0.1:0, one binary with a module per concern.

mod balancing;
mod codec;
mod edge;
mod failures;
mod fuzz;
mod hardening;
mod headers;
mod http1;
mod pooling;
mod reload;
mod routing;
mod slow;
mod timeouts;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for waiting on background work (health checks, timers);
/// only ever reached when a test is about to fail.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Reads from `s` until what came is `done`; panics if the connection
/// closes first or nothing more comes in time.
pub async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Writes `bytes` on a fresh connection and reads until the proxy closes
/// it; `None` if it stays open longer than `PATIENCE`.
pub async fn raw_until_closed(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one header line every 50 ms (each byte is progress, none may
/// extend the header deadline) until the proxy closes the connection;
/// false if it is still open after 100 lines (5 s).
pub async fn trickle_until_closed(s: &mut TcpStream) -> bool {
    for i in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.write_all(format!("X-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            return true;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            return true;
        }
    }
    false
}
