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
/// failure streak reaches the threshold. `weights`: the pool's, indexed
/// like `pool`; a drained backend (weight 0) serves nothing, so it counts
/// in neither side of `max_ejected_fraction`. Must run inside a tokio
/// runtime (the re-admission timer is a task).
pub(crate) fn record(
    cfg: &Outlier,
    pool: &[Arc<BackendState>],
    weights: &[u32],
    i: usize,
    failed: bool,
) {
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
    // Requests sent before its ejection that fail after it say nothing
    // new: the streak starts again once it is back.
    if backend.is_ejected() {
        return;
    }
    let streak = backend.streak.fetch_add(1, Relaxed) + 1;
    if streak < cfg.consecutive_failures {
        return;
    }
    let serving = || (0..pool.len()).filter(|&b| weights[b] > 0);
    let ejected = serving().filter(|&b| pool[b].is_ejected()).count();
    let weighted = serving().count();
    if (ejected + 1) as f64 > cfg.max_ejected_fraction * weighted as f64 {
        // Once per streak, not once per failed request.
        if streak == cfg.consecutive_failures {
            tracing::warn!(
                pool = %backend.pool(), backend = %backend.addr(), streak, ejected,
                "backend not ejected after {streak} failures in a row: {ejected} of the {weighted} backends with a weight already ejected, the max_ejected_fraction {} allows no more",
                cfg.max_ejected_fraction
            );
        }
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
            (0..n).for_each(|_| record(&c, &p, &[1; 8], 0, true));
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

        record(&c, &p, &[1; 8], 0, false); // success resets the multiplier
        fail(2).await;
        advance(10).await;
        assert!(!p[0].is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_max_fraction() {
        let (c, p) = (cfg(), pool(4));
        for i in 0..4 {
            record(&c, &p, &[1; 4], i, true);
            record(&c, &p, &[1; 4], i, true);
        }
        assert_eq!(p.iter().filter(|b| b.is_ejected()).count(), 2);
    }

    /// Two backends serving and two drained (weight 0): half of four
    /// would let both serving ones go, an outage; half of the two that
    /// serve lets one.
    #[tokio::test(start_paused = true)]
    async fn drained_backends_do_not_count_towards_the_max_fraction() {
        let (c, p) = (cfg(), pool(4));
        let weights = [1, 1, 0, 0];
        for i in 0..2 {
            record(&c, &p, &weights, i, true);
            record(&c, &p, &weights, i, true);
        }
        assert_eq!(p.iter().filter(|b| b.is_ejected()).count(), 1);
    }

    /// Failures of requests that were in flight when the backend was
    /// ejected do not count towards its next ejection.
    #[tokio::test(start_paused = true)]
    async fn failures_while_ejected_do_not_carry_over() {
        let (c, p) = (cfg(), pool(2));
        for _ in 0..6 {
            record(&c, &p, &[1; 2], 0, true);
        }
        tokio::task::yield_now().await;
        assert!(p[0].is_ejected());
        advance(10).await;
        assert!(!p[0].is_ejected());
        record(&c, &p, &[1; 2], 0, true);
        assert!(
            !p[0].is_ejected(),
            "one failure after re-admission is not a streak"
        );
    }
}
