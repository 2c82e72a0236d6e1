//! Passive outlier ejection: backends that fail requests in a row (5xx,
//! connect failure, reset or timeout) are taken out of balancing for a
//! growing time, never more than a set fraction of the pool at once, and
//! re-admitted by a timer.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use fulcrum_config::snapshot::Outlier;

use crate::backend::BackendState;

/// Records the outcome of one attempt on `pool[i]` and ejects it when its
/// failure streak reaches the threshold. Must run inside a tokio runtime
/// (the re-admission timer is a task).
pub(crate) fn record(cfg: &Outlier, pool: &[Arc<BackendState>], i: usize, failed: bool) {
    let backend = &pool[i];
    if !failed {
        // A success clears both the streak and the ejection multiplier.
        if backend.streak.load(Relaxed) != 0 {
            backend.streak.store(0, Relaxed);
        }
        if backend.ejections_in_row.load(Relaxed) != 0 {
            backend.ejections_in_row.store(0, Relaxed);
        }
        return;
    }
    let streak = backend.streak.fetch_add(1, Relaxed) + 1;
    if streak < cfg.consecutive_failures || backend.is_ejected() {
        return;
    }
    let ejected = pool.iter().filter(|b| b.is_ejected()).count();
    if (ejected + 1) as f64 > cfg.max_ejected_fraction * pool.len() as f64 {
        tracing::warn!(
            pool = %backend.pool(), backend = %backend.addr(), streak, ejected,
            "backend not ejected after {streak} failures in a row: {ejected} of {} already ejected, the max_ejected_fraction {} allows no more",
            pool.len(), cfg.max_ejected_fraction
        );
        return;
    }
    if backend.set_ejected(true) {
        return; // another request ejected it first
    }
    backend.streak.store(0, Relaxed);
    let n = backend.ejections_in_row.fetch_add(1, Relaxed) + 1;
    let duration = cfg.base_ejection.saturating_mul(n).min(cfg.max_ejection);
    tracing::warn!(
        pool = %backend.pool(), backend = %backend.addr(), streak, ejection = n,
        duration_ms = duration.as_millis() as u64,
        "backend ejected after {streak} failures in a row, for {duration:?} (ejection {n} in a row)"
    );
    let backend = backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        backend.set_ejected(false);
        tracing::info!(pool = %backend.pool(), backend = %backend.addr(), "backend re-admitted after ejection");
    });
}
