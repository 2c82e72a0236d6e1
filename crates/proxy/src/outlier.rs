//! Passive outlier ejection: backends that fail requests in a row (5xx,
//! connect failure, reset or timeout) are taken out of balancing for a
//! growing time, never more than a set fraction of the pool at once, and
//! re-admitted by a timer, or sooner by the pool's active health check
//! once it passes `healthy_threshold` times in a row (`crate::health`).

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
    let Some(ejection) = backend.eject() else {
        return; // another request ejected it first
    };
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
        // Unless its health checks re-admitted it first.
        if backend.readmit(ejection) {
            tracing::info!(pool = %backend.pool(), backend = %backend.addr(), "backend re-admitted after ejection");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> Outlier {
        Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_fraction: 0.5,
        }
    }

    fn pool(n: usize) -> Vec<Arc<BackendState>> {
        (0..n)
            .map(|i| {
                Arc::new(BackendState::new(
                    "p".into(),
                    ([10, 0, 0, i as u8], 80).into(),
                ))
            })
            .collect()
    }

    /// Lets the re-admission timer task run after the clock moved.
    async fn advance(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_grow_cap_and_reset_on_success() {
        let (c, p) = (cfg(), pool(2));
        // Each ejection's timer task must start sleeping before the clock moves.
        let fail = async |n| {
            (0..n).for_each(|_| record(&c, &p, 0, true));
            tokio::task::yield_now().await;
        };
        fail(1).await;
        assert!(!p[0].is_ejected(), "one failure is not a streak");
        fail(1).await;
        assert!(p[0].is_ejected());
        advance(9).await;
        assert!(p[0].is_ejected());
        advance(1).await;
        assert!(!p[0].is_ejected(), "first ejection lasts base_ejection");

        fail(2).await; // second in a row: 20 s
        advance(19).await;
        assert!(p[0].is_ejected());
        advance(1).await;
        assert!(!p[0].is_ejected());

        fail(2).await; // third: 30 s capped at 25 s
        advance(25).await;
        assert!(!p[0].is_ejected());

        record(&c, &p, 0, false); // success resets the multiplier
        fail(2).await;
        advance(10).await;
        assert!(!p[0].is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_max_fraction() {
        let (c, p) = (cfg(), pool(4));
        for i in 0..4 {
            record(&c, &p, i, true);
            record(&c, &p, i, true);
        }
        assert_eq!(p.iter().filter(|b| b.is_ejected()).count(), 2);
    }
}
