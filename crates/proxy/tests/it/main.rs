//! The data plane's integration tests: real backends and the real proxy on
//! 127.0.0.1:0, one binary with a module per concern.

mod balancing;
mod edge;
mod failures;
mod hardening;
mod headers;
mod pooling;
mod reload;
mod routing;
mod timeouts;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for waiting on background work (health checks, timers);
/// only ever reached when a test is about to fail.
pub const PATIENCE: Duration = Duration::from_secs(5);

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
