//! Pre-flight: before a change serves anything, every new or changed
//! backend is probed directly, with the pool's health request and with the
//! requests the standards and tests expect that pool to serve. A server
//! that answers its health check but not logins (incident 2) is refused
//! here, not found by users.

use std::net::SocketAddr;

use serde::Serialize;

/// What pre-flight found for every probed backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    pub backends: Vec<BackendProbe>,
}

/// One backend's probes, in the order sent.
#[derive(Debug, Clone, Serialize)]
pub struct BackendProbe {
    pub pool: String,
    pub addr: SocketAddr,
    /// Why it was probed: `new`, or what changed in its pool.
    pub reason: String,
    pub checks: Vec<ProbeCheck>,
}

/// One probe: a TCP connect, the health request or a rule's request.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheck {
    /// `connect`, `health GET /healthz`, or `rule "logins reach auth": POST /auth/login`.
    pub what: String,
    /// The response status, when one came.
    pub status: Option<u16>,
    /// Passed, or why not.
    pub error: Option<String>,
}

impl BackendProbe {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.error.is_none())
    }
}
