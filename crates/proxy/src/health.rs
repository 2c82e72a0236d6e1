//! Active health checks: one tokio task per (pool, backend) that probes the
//! backend's health path and flips its `healthy` flag after enough passes or
//! failures in a row. The data plane reconciles these tasks on every reload.

use std::sync::Arc;

use bytes::Bytes;
use fulcrum_config::snapshot::{HealthCheck, Protocol};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, timeout};

use crate::backend::BackendState;

/// The clients health checks share, one per protocol a pool may speak.
/// They keep no idle connections, so every probe also tests that the
/// backend still accepts new ones (what a killed or overloaded backend
/// fails first).
#[derive(Clone)]
pub(crate) struct HealthClient {
    http1: ProbeClient,
    h2: ProbeClient,
}

pub(crate) type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

impl HealthClient {
    pub fn speaking(&self, protocol: Protocol) -> ProbeClient {
        match protocol {
            Protocol::Http1 => self.http1.clone(),
            Protocol::H2 => self.h2.clone(),
        }
    }
}

pub(crate) fn client() -> HealthClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let build = |h2: bool| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .http2_only(h2)
            .build(connector.clone())
    };
    HealthClient {
        http1: build(false),
        h2: build(true),
    }
}

/// Starts probing `backend` per `check`. The task runs until aborted.
pub(crate) fn spawn(
    backend: Arc<BackendState>,
    check: HealthCheck,
    client: ProbeClient,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = interval(check.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Streaks live in the task: a restarted task (changed config)
        // starts counting afresh but keeps the backend's current state.
        let (mut passes, mut fails) = (0u32, 0u32);
        // The outlier ejection the passes are counted against, and how
        // many came since it began.
        let mut ejection: Option<(u32, u32)> = None;
        // A request that cannot be built fails every probe alike: say so
        // once, not at every interval.
        let mut told_unbuildable = false;
        loop {
            tick.tick().await;
            let current = backend.ejection();
            if current != ejection.map(|(n, _)| n) {
                ejection = current.map(|n| (n, 0));
            }
            match probe(&backend, &check, &client).await {
                Ok(()) => {
                    fails = 0;
                    passes = passes.saturating_add(1);
                    if passes >= check.healthy_threshold && !backend.set_healthy(true) {
                        tracing::info!(
                            pool = %backend.pool(), backend = %backend.addr(), passes,
                            "backend is healthy again: passed {passes} health checks in a row"
                        );
                    }
                    // As HAProxy's `rise` after `on-error mark-down`: an
                    // ejection ends once the active check has passed
                    // healthy_threshold times since it began, not only
                    // when its time is up.
                    if let Some((n, since)) = ejection.as_mut() {
                        *since += 1;
                        if *since >= check.healthy_threshold && backend.readmit(*n) {
                            tracing::info!(
                                pool = %backend.pool(), backend = %backend.addr(), passes = *since,
                                "backend re-admitted before its ejection ended: passed {since} health checks in a row since"
                            );
                            ejection = None;
                        }
                    }
                }
                Err(reason) => {
                    if let ProbeFailure::Unbuildable(e) = &reason
                        && !told_unbuildable
                    {
                        told_unbuildable = true;
                        tracing::error!(
                            pool = %backend.pool(), backend = %backend.addr(), path = %check.path, error = %e,
                            "health check request cannot be built; every probe of this backend fails until the config changes"
                        );
                    }
                    passes = 0;
                    if let Some((_, since)) = ejection.as_mut() {
                        *since = 0;
                    }
                    fails = fails.saturating_add(1);
                    if fails >= check.unhealthy_threshold && backend.set_healthy(false) {
                        tracing::warn!(
                            pool = %backend.pool(), backend = %backend.addr(), fails, %reason,
                            "backend is unhealthy: failed {fails} health checks in a row, last: {reason}"
                        );
                    }
                }
            }
        }
    })
}

/// Why one probe failed.
#[derive(Debug)]
enum ProbeFailure {
    Status(u16),
    Timeout,
    /// The address and path do not form a request. `check` refuses such
    /// paths, so only a snapshot that bypassed it gets here.
    Unbuildable(http::Error),
    Error(hyper_util::client::legacy::Error),
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeFailure::Status(s) => write!(f, "status {s}"),
            ProbeFailure::Timeout => write!(f, "timed out"),
            ProbeFailure::Unbuildable(_) => write!(f, "the health check request cannot be built"),
            ProbeFailure::Error(e) if e.is_connect() => write!(f, "connect failed"),
            ProbeFailure::Error(_) => write!(f, "connection failed before a response"),
        }
    }
}

async fn probe(
    backend: &BackendState,
    check: &HealthCheck,
    client: &ProbeClient,
) -> Result<(), ProbeFailure> {
    let addr = backend.addr();
    let req = Request::get(format!("http://{addr}{}", check.path))
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "fulcrum-health")
        .body(Empty::new())
        .map_err(ProbeFailure::Unbuildable)?;
    let resp = timeout(check.timeout, client.request(req))
        .await
        .map_err(|_| ProbeFailure::Timeout)?
        .map_err(ProbeFailure::Error)?;
    let status = resp.status().as_u16();
    if (check.expect_status.0..=check.expect_status.1).contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A path `check` would refuse, as a snapshot built around `check`
    /// could still carry: the probe fails, the task lives on.
    #[tokio::test]
    async fn a_path_that_forms_no_request_fails_the_check_without_panicking() {
        let backend = Arc::new(BackendState::new(
            "web".into(),
            "127.0.0.1:9".parse().unwrap(),
        ));
        let check = HealthCheck {
            path: "/a b".into(),
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            expect_status: (200, 399),
        };
        let client = client().speaking(Protocol::Http1);
        let failure = probe(&backend, &check, &client).await.unwrap_err();
        assert!(
            matches!(failure, ProbeFailure::Unbuildable(_)),
            "{failure:?}"
        );

        let task = spawn(backend.clone(), check, client);
        for _ in 0..200 {
            if !backend.is_healthy() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!backend.is_healthy(), "failed probes mark the backend down");
        assert!(!task.is_finished(), "the task goes on probing");
        task.abort();
    }
}
