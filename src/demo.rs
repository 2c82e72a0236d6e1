//! Demo backends for trying Fulcrum on one machine: the test kit's backend
//! on every backend address of a config.

use std::net::SocketAddr;

use fulcrum_config::Snapshot;
use fulcrum_testkit::Backend;
use tracing::info;

pub async fn start_backends(snapshot: &Snapshot) -> Result<Vec<Backend>, String> {
    let mut addrs: Vec<SocketAddr> = snapshot
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| b.addr))
        .collect();
    addrs.sort();
    addrs.dedup();
    let mut started = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let backend = Backend::start_on(&addr.to_string(), addr)
            .await
            .map_err(|e| {
                format!("demo backend {addr}: cannot bind: {e} (is something else on that port?)")
            })?;
        info!(backend = %addr, "demo backend started");
        started.push(backend);
    }
    Ok(started)
}
