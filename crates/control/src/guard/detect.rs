//! The detectors, each a pure function of the counts in the window, the
//! baseline's counts and the two snapshots. A finding on a route or pool
//! the change did not touch is at most marginal: after a change, probation
//! compares before with after and cannot tell the change from the world;
//! in a canary, both cohorts are served alike there, so a difference is
//! chance. A change to routing touches every route and pool.

use std::collections::HashSet;
use std::time::Duration;

use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{Guard as Settings, StatusSet};
use fulcrum_proxy::BackendStatus;
use fulcrum_proxy::stats::quantile;

use super::judge::{chi_square_fit, fisher_rise, mann_whitney_greater, wilson};
use super::window::{Counts, RouteCounts};
use super::{BackendView, Finding, PoolView, RouteSide, RouteView, Verdict, expect};

/// A change's effect must also be this large for backend shares (a hash
/// pool with few active keys is never exactly even).
const SHARE_EFFECT: f64 = 0.2;
/// A latency rise must also be this many milliseconds (median or tail).
const LATENCY_FLOOR_MS: f64 = 5.0;
/// Ends the text of a marginal finding that was already so before the
/// change: not the change's doing, so more traffic would not decide it.
const AS_BEFORE: &str = ", as before the change";

fn server_errors() -> StatusSet {
    StatusSet {
        exact: Vec::new(),
        classes: vec![5],
    }
}

/// The names of the routes and pools a change touched, and of the pools
/// the touched routes sent traffic to before it.
#[derive(Debug, Default)]
pub struct Touched {
    pub routes: HashSet<String>,
    pub pools: HashSet<String>,
    pub fed: HashSet<String>,
}

/// Names the change from `old` to `new` touched: routes, and pools (a
/// backend's pool counts). A change to routing itself (a route added,
/// removed, matching otherwise or moved) can send requests to any route,
/// so it touches them all. Known from the configs alone: a canary's first
/// look, before its stable cohort has counts, knows it too.
pub fn touched(old: &Snapshot, new: &Snapshot) -> Touched {
    let mut routes = HashSet::new();
    let mut pools = HashSet::new();
    for c in fulcrum_safety::diff::semantic(old, new) {
        match c.kind {
            "route" if c.op != "changed" || matches!(c.field, Some("match" | "order")) => {
                routes.extend(new.routes.iter().map(|r| r.name.to_string()));
                pools.extend(new.pools.iter().map(|p| p.name.to_string()));
            }
            "route" => {
                routes.insert(c.name.clone());
            }
            "pool" => {
                pools.insert(c.name.clone());
            }
            "backend" => {
                pools.insert(c.name.split('/').next().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    // A pool is the change's business when a route it touched sent it
    // traffic before (incident 1 changed the route, not the pool).
    let fed = old
        .routes
        .iter()
        .filter(|r| routes.contains(&*r.name))
        .map(|r| old.pools[r.pool].name.to_string())
        .collect();
    Touched { routes, pools, fed }
}

fn rate(k: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

fn p99_ms(h: &[u64]) -> Option<f64> {
    quantile(h, 0.99).map(|d| d.as_secs_f64() * 1000.0)
}

fn median_ms(h: &[u64]) -> Option<f64> {
    quantile(h, 0.5).map(|d| d.as_secs_f64() * 1000.0)
}

/// A rise of `k/n` over `kb/nb` (or, with no baseline, a rate plainly
/// above the minimum effect).
fn rise(what: &str, k: u64, n: u64, base: Option<(u64, u64)>, s: &Settings) -> (Verdict, String) {
    let min = s.min_requests as u64;
    if n < min {
        return (Verdict::NoData, format!("{n} requests, fewer than {min}"));
    }
    let r = k as f64 / n as f64;
    match base.filter(|(_, nb)| *nb >= min) {
        Some((kb, nb)) => {
            let rb = kb as f64 / nb as f64;
            let p = fisher_rise(k, n, kb, nb);
            let text = format!(
                "{what} {:.1}% of {n} against {:.1}% of {nb} before (p = {p:.2e})",
                r * 100.0,
                rb * 100.0
            );
            if p < 1.0 - s.confidence && r - rb >= s.min_effect {
                (Verdict::Fail, text)
            } else if p < 0.05 && r - rb >= s.min_effect / 2.0 {
                (Verdict::Marginal, text)
            } else {
                (Verdict::Pass, text)
            }
        }
        None => {
            // No baseline to compare with: an empty or zero baseline must
            // not turn "errors" into "no data".
            let (lo, _) = wilson(k, n, s.confidence);
            let text = format!(
                "{what} {:.1}% of {n}, no baseline (at least {:.1}% at {}% confidence)",
                r * 100.0,
                lo * 100.0,
                s.confidence * 100.0
            );
            if lo > s.min_effect {
                (Verdict::Fail, text)
            } else {
                (Verdict::Pass, text)
            }
        }
    }
}

/// Latency wants a longer look than rates: a p99 over a second of
/// traffic moves with the machine's weather, not the change.
const LATENCY_SPAN: Duration = Duration::from_secs(2);

fn latency(
    cur: &RouteCounts,
    base: Option<&RouteCounts>,
    span: Duration,
    s: &Settings,
) -> (Verdict, String) {
    let (h, min) = (cur.histogram(), s.min_requests as u64);
    if span < LATENCY_SPAN.min(s.window) {
        return (
            Verdict::NoData,
            format!(
                "{:.1} s of traffic, less than {} s",
                span.as_secs_f64(),
                LATENCY_SPAN.as_secs()
            ),
        );
    }
    let n: u64 = h.iter().sum();
    let Some(b) = base
        .map(RouteCounts::histogram)
        .filter(|b| b.iter().sum::<u64>() >= min)
    else {
        return (Verdict::NoData, "no baseline latency".into());
    };
    if n < min {
        return (Verdict::NoData, format!("{n} requests, fewer than {min}"));
    }
    let (p99, p99b) = (p99_ms(&h).unwrap_or(0.0), p99_ms(&b).unwrap_or(0.0));
    let (p50, p50b) = (median_ms(&h).unwrap_or(0.0), median_ms(&b).unwrap_or(0.0));
    let p = mann_whitney_greater(&h, &b);
    let by = |x: f64, xb: f64| x >= xb * s.latency_ratio && x - xb >= LATENCY_FLOOR_MS;
    // The tail, by how many requests are in it rather than by the p99,
    // which over a few dozen requests is the slowest one: one outlier.
    let far_ms = (p99b * s.latency_ratio).max(p99b + LATENCY_FLOOR_MS);
    let far = slower_than(&h, far_ms);
    let text = format!(
        "p99 {p99:.1} ms against {p99b:.1} ms before, {far} of {n} requests over {far_ms:.1} ms, median {p50:.1} ms against {p50b:.1} ms (Mann-Whitney p = {p:.2e})"
    );
    // The baseline has at most 1 % of its requests over its p99; the tail
    // grew when the change's share over it stretched is surely above that.
    let tail = |confidence: f64| wilson(far, n, confidence).0 > 0.01;
    // The median as well as the tail: a slow backend weighted up
    // (incident 3) makes most requests slow while the p99, slow already,
    // stays put.
    let slower = |confidence: f64| by(p50, p50b) || tail(confidence);
    if p < 1.0 - s.confidence && slower(s.confidence) {
        (Verdict::Fail, text)
    } else if p < 0.05 && slower(0.95) {
        (Verdict::Marginal, text)
    } else {
        (Verdict::Pass, text)
    }
}

/// Requests in histogram `h` that surely took over `ms`: those in
/// buckets that start above it.
fn slower_than(h: &[u64], ms: f64) -> u64 {
    let us = (ms * 1000.0).ceil() as u64;
    h.iter()
        .enumerate()
        .filter(|(i, _)| fulcrum_proxy::stats::bucket_floor(*i) >= us)
        .map(|(_, c)| c)
        .sum()
}

/// Error rate, outcome signal and latency of every route.
pub fn routes(
    new: &Snapshot,
    counts: &Counts,
    span: Duration,
    (base, touched): (Option<&(Snapshot, Counts)>, Option<&Touched>),
    s: &Settings,
    out: &mut Vec<Finding>,
) -> Vec<RouteView> {
    let empty = RouteCounts::default();
    new.routes
        .iter()
        .map(|r| {
            let name = r.name.to_string();
            let pool = new.pools[r.pool].name.to_string();
            let cur = counts.routes.get(&r.name).unwrap_or(&empty);
            let b = base.and_then(|(_, c)| c.routes.get(&r.name));
            let n = cur.requests();
            let errors = server_errors();
            let side = |c: &RouteCounts| {
                (
                    c.matching(&errors),
                    c.matching(&r.failure_statuses),
                    c.requests(),
                )
            };
            let (e, o, _) = side(cur);
            let bs = b.map(side);
            let mut found = vec![
                ("errors", rise("5xx", e, n, bs.map(|(e, _, n)| (e, n)), s)),
                (
                    "outcome",
                    rise(
                        "failed (by its failure statuses)",
                        o,
                        n,
                        bs.map(|(_, o, n)| (o, n)),
                        s,
                    ),
                ),
                ("latency", latency(cur, b, span, s)),
            ];
            // After a change, a route it did not touch (nor its pool) is not
            // the change's doing as far as before-and-after can tell.
            let mine = touched.is_none_or(|t| t.routes.contains(&name) || t.pools.contains(&pool));
            if !mine {
                untouched(&mut found, "this route or its pool");
            }
            let (verdict, reason) = conclude(found, (Some(&name), None), mine, out);
            RouteView {
                requests: n,
                error_rate: rate(e, n),
                outcome_rate: rate(o, n),
                p99_ms: p99_ms(&cur.histogram()),
                baseline: b.map(|b| {
                    let (e, o, n) = side(b);
                    RouteSide {
                        requests: n,
                        error_rate: rate(e, n),
                        outcome_rate: rate(o, n),
                        p99_ms: p99_ms(&b.histogram()),
                    }
                }),
                verdict,
                reason,
                name,
                pool,
            }
        })
        .collect()
}

/// Requests no route took, as a share of all: a change that routes
/// requests nowhere (a route removed, a match mistyped, with no catch-all)
/// answers them with Fulcrum's own 404, on no route and no pool, where the
/// route and pool detectors cannot see them.
pub fn unrouted(counts: &Counts, base: Option<&(Snapshot, Counts)>, s: &Settings) -> Finding {
    let all = |c: &Counts| c.unrouted + c.routes.values().map(RouteCounts::requests).sum::<u64>();
    let (verdict, text) = rise(
        "requests no route took (404)",
        counts.unrouted,
        all(counts),
        base.map(|(_, c)| (c.unrouted, all(c))),
        s,
    );
    Finding {
        detector: "unrouted",
        route: None,
        pool: None,
        verdict,
        summary: format!("no route: unrouted: {text}"),
        unsure: verdict == Verdict::Marginal,
    }
}

fn total(c: &Counts) -> u64 {
    c.pools
        .values()
        .map(|p| p.unserved + p.backends.iter().map(|b| b.requests).sum::<u64>())
        .sum()
}

fn pool_requests(c: &Counts, pool: &str) -> u64 {
    c.pools.get(pool).map_or(0, |p| {
        p.unserved + p.backends.iter().map(|b| b.requests).sum::<u64>()
    })
}

/// Each detector's verdict and why, in one route's or pool's judgement.
type Found = Vec<(&'static str, (Verdict, String))>;

/// Failures where the change touched nothing, as far as before-and-after
/// can tell, are only marginal: not the change's doing.
fn untouched(found: &mut Found, what: &str) {
    for (_, (v, text)) in found {
        if *v == Verdict::Fail {
            *v = Verdict::Marginal;
            text.push_str("; the change did not touch ");
            text.push_str(what);
        }
    }
}

/// The worst verdict of a route (or pool) and the findings that gave it;
/// every finding goes to `out`. On a part the change touched (`mine`), a
/// marginal finding is unsure unless it was so before the change.
fn conclude(
    found: Found,
    (route, pool): (Option<&str>, Option<&str>),
    mine: bool,
    out: &mut Vec<Finding>,
) -> (Verdict, String) {
    let verdict = found
        .iter()
        .map(|(_, (v, _))| *v)
        .max()
        .unwrap_or(Verdict::NoData);
    let reason = found
        .iter()
        .filter(|(_, (v, _))| *v == verdict)
        .map(|(d, (_, t))| format!("{d}: {t}"))
        .collect::<Vec<_>>()
        .join("; ");
    let scope = match (route, pool) {
        (Some(r), _) => format!("route {r}"),
        (None, p) => format!("pool {}", p.unwrap_or_default()),
    };
    for (detector, (v, text)) in found {
        out.push(Finding {
            detector,
            route: route.map(str::to_owned),
            pool: pool.map(str::to_owned),
            verdict: v,
            unsure: mine && v == Verdict::Marginal && !text.contains(AS_BEFORE),
            summary: format!("{scope}: {detector}: {text}"),
        });
    }
    (verdict, reason)
}

/// What the pools are like now: each backend's health, and the expected
/// shares that follow from it.
pub struct Live<'a> {
    pub health: &'a [BackendStatus],
    pub expected: &'a mut expect::Memo,
    /// Backends (pool, address) whose health or ejection changed within
    /// the window judged: their share over it cannot be held to what
    /// their state now expects.
    pub flipped: &'a HashSet<(String, String)>,
}

/// Traffic lost, shares against expectation, skew and health of every pool.
pub fn pools(
    new: &Snapshot,
    counts: &Counts,
    span: Duration,
    (base, touched): (Option<&(Snapshot, Counts)>, Option<&Touched>),
    live: Live<'_>,
    s: &Settings,
    out: &mut Vec<Finding>,
) -> Vec<PoolView> {
    let Live {
        health,
        expected: memo,
        flipped,
    } = live;
    let all = total(counts);
    new.pools
        .iter()
        .map(|p| {
            let name = p.name.to_string();
            let live: Vec<Option<&BackendStatus>> = p
                .backends
                .iter()
                .map(|b| health.iter().find(|h| h.pool == p.name && h.addr == b.addr))
                .collect();
            let available: Vec<bool> = live
                .iter()
                .map(|h| h.is_none_or(|h| h.healthy && !h.ejected))
                .collect();
            // Each backend's requests and mean latency (seconds) in the window.
            let (observed, latency): (Vec<u64>, Vec<f64>) = p
                .backends
                .iter()
                .map(|b| {
                    let c = backend_counts(counts, &p.name, b.addr);
                    c.filter(|x| x.requests > 0).map_or((0, 0.0), |x| {
                        (
                            x.requests,
                            x.latency_sum_us as f64 / x.requests as f64 / 1e6,
                        )
                    })
                })
                .unzip();
            let n: u64 = observed.iter().sum();
            let per_second = n as f64 / span.as_secs_f64().max(0.001);
            let expected = memo.shares(&new.hash, p, &available, &latency, per_second);
            let shares = match p
                .backends
                .iter()
                .find(|b| flipped.contains(&(name.clone(), b.addr.to_string())))
            {
                Some(b) => (
                    Verdict::NoData,
                    format!("{}'s health changed within the window: shares are compared once a window has passed", b.addr),
                ),
                None => as_before(fit(&observed, &expected, s), p, &expected, base, s),
            };
            let mut found = vec![
                ("shift", shift(&name, counts, all, base, s)),
                ("shares", shares),
                ("skew", skew(p, &observed, &available, base, s)),
                ("health", healthy(p, &available, s)),
            ];
            let mine = touched.is_none_or(|t| t.pools.contains(&name) || t.fed.contains(&name));
            if !mine {
                untouched(&mut found, "this pool or the routes to it");
            }
            let weighted = available
                .iter()
                .zip(&p.backends)
                .filter(|(_, b)| b.weight > 0)
                .count();
            let up = available
                .iter()
                .zip(&p.backends)
                .filter(|(a, b)| **a && b.weight > 0)
                .count();
            let (verdict, reason) = conclude(found, (None, Some(&name)), mine, out);
            PoolView {
                algorithm: p.algorithm.name(),
                healthy_fraction: if weighted == 0 {
                    0.0
                } else {
                    up as f64 / weighted as f64
                },
                requests: n,
                verdict,
                reason,
                backends: p
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendView {
                        addr: b.addr.to_string(),
                        observed: rate(observed[i], n),
                        expected: Some(expected[i]),
                        requests: observed[i],
                        healthy: live[i].is_none_or(|h| h.healthy),
                        ejected: live[i].is_some_and(|h| h.ejected),
                    })
                    .collect(),
                name,
            }
        })
        .collect()
}

/// A pool that took a fair share of all requests before and has lost
/// nearly all of it (incident 1: logins leaving the auth pool).
fn shift(
    pool: &str,
    counts: &Counts,
    all: u64,
    base: Option<&(Snapshot, Counts)>,
    s: &Settings,
) -> (Verdict, String) {
    let min = s.min_requests as u64;
    let Some((_, b)) = base else {
        return (Verdict::NoData, "no baseline".into());
    };
    let (before, base_all) = (pool_requests(b, pool), total(b));
    let now = pool_requests(counts, pool);
    if before < min || all < min {
        return (
            Verdict::NoData,
            format!("{before} requests before, {all} now"),
        );
    }
    let (sb, sn) = (before as f64 / base_all as f64, now as f64 / all as f64);
    let p = fisher_rise(before, base_all, now, all);
    let text = format!(
        "{:.1}% of all requests before, {:.1}% now (p = {p:.2e})",
        sb * 100.0,
        sn * 100.0
    );
    if p < 1.0 - s.confidence && sn < sb * 0.1 && sb - sn >= s.min_effect {
        (Verdict::Fail, format!("lost its traffic: {text}"))
    } else if p < 0.05 && sn < sb * 0.5 {
        (
            Verdict::Marginal,
            format!("lost much of its traffic: {text}"),
        )
    } else {
        (Verdict::Pass, text)
    }
}

/// A `shares` failure on a pool the change left balanced as it was (same
/// algorithm, backends and weights) whose shares before the change failed
/// the same expectation: the unevenness is not the change's (a `hash` pool
/// with two active clients), so it is marginal.
fn as_before(
    found: (Verdict, String),
    p: &fulcrum_config::snapshot::Pool,
    expected: &[f64],
    base: Option<&(Snapshot, Counts)>,
    s: &Settings,
) -> (Verdict, String) {
    let (Verdict::Fail, text) = &found else {
        return found;
    };
    let Some((old, counts)) = base else {
        return found;
    };
    let same = old
        .pool(&p.name)
        .is_some_and(|(_, o)| o.algorithm == p.algorithm && o.backends == p.backends);
    if !same {
        return found;
    }
    let before: Vec<u64> = p
        .backends
        .iter()
        .map(|b| backend_counts(counts, &p.name, b.addr).map_or(0, |x| x.requests))
        .collect();
    match fit(&before, expected, s) {
        (Verdict::Fail, _) => (Verdict::Marginal, format!("{text}{AS_BEFORE}")),
        _ => found,
    }
}

/// What backend `addr` of pool `pool` counted in `counts`.
fn backend_counts<'a>(
    counts: &'a Counts,
    pool: &str,
    addr: std::net::SocketAddr,
) -> Option<&'a super::window::BackendCounts> {
    let addr = addr.to_string();
    counts
        .pools
        .get(pool)
        .and_then(|c| c.backends.iter().find(|x| x.addr == addr))
}

/// Observed backend shares against the balancer's expectation.
fn fit(observed: &[u64], expected: &[f64], s: &Settings) -> (Verdict, String) {
    let n: u64 = observed.iter().sum();
    let min = (s.min_requests as u64).max(5);
    let smallest = expected
        .iter()
        .copied()
        .filter(|e| *e > 0.0)
        .fold(1.0, f64::min);
    if n < min || (n as f64) * smallest < 5.0 {
        return (
            Verdict::NoData,
            format!("{n} requests, too few to compare shares"),
        );
    }
    let p = chi_square_fit(observed, expected);
    let (worst, dev) = observed
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (o, e))| (i, *o as f64 / n as f64 - e))
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap_or((0, 0.0));
    let text = format!(
        "backend {} has {:.1}% of {n} requests where {:.1}% is expected (chi-square p = {p:.2e})",
        worst + 1,
        (expected[worst] + dev) * 100.0,
        expected[worst] * 100.0
    );
    if p < 1.0 - s.confidence && dev.abs() >= SHARE_EFFECT {
        (Verdict::Fail, text)
    } else if p < 0.05 && dev.abs() >= SHARE_EFFECT / 2.0 {
        (Verdict::Marginal, text)
    } else {
        (Verdict::Pass, text)
    }
}

/// One backend carrying a pool that has others to share with (incidents
/// 4 and 5), unless it was already so before the change.
fn skew(
    p: &fulcrum_config::snapshot::Pool,
    observed: &[u64],
    available: &[bool],
    base: Option<&(Snapshot, Counts)>,
    s: &Settings,
) -> (Verdict, String) {
    let n: u64 = observed.iter().sum();
    let others = available
        .iter()
        .zip(&p.backends)
        .filter(|(a, b)| **a && b.weight > 0)
        .count();
    if n < s.min_requests as u64 || others < 2 {
        return (
            Verdict::NoData,
            format!("{n} requests over {others} available backend(s)"),
        );
    }
    let (i, top) = observed
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map(|(i, c)| (i, *c))
        .unwrap_or((0, 0));
    let addr = p.backends[i].addr.to_string();
    let (lo, _) = wilson(top, n, s.confidence);
    let (likely, _) = wilson(top, n, s.confidence.min(0.95));
    let text = format!(
        "{addr} takes {:.1}% of {n} requests with {others} backends available",
        top as f64 / n as f64 * 100.0
    );
    if likely <= s.max_backend_share {
        return (Verdict::Pass, text);
    }
    let before = base.and_then(|(_, c)| c.pools.get(&p.name)).and_then(|c| {
        let total: u64 = c.backends.iter().map(|b| b.requests).sum();
        let mine = c.backends.iter().find(|b| b.addr == addr)?.requests;
        (total >= s.min_requests as u64).then(|| mine as f64 / total as f64)
    });
    match before {
        Some(b) if b > s.max_backend_share => (
            Verdict::Marginal,
            format!("{text}{AS_BEFORE} ({:.1}%)", b * 100.0),
        ),
        // Above the share at 95 %, not yet at `confidence`: the volume
        // that would decide is still to come (about 130 requests for
        // incident 5's 90.9 %).
        _ if lo <= s.max_backend_share => (
            Verdict::Marginal,
            format!(
                "{text}, likely above the guard's max_backend_share {} but not yet sure",
                s.max_backend_share
            ),
        ),
        _ => (
            Verdict::Fail,
            format!(
                "{text}, above the guard's max_backend_share {}",
                s.max_backend_share
            ),
        ),
    }
}

fn healthy(
    p: &fulcrum_config::snapshot::Pool,
    available: &[bool],
    s: &Settings,
) -> (Verdict, String) {
    let weighted = p.backends.iter().filter(|b| b.weight > 0).count();
    let up = available
        .iter()
        .zip(&p.backends)
        .filter(|(a, b)| **a && b.weight > 0)
        .count();
    if weighted == 0 {
        return (Verdict::NoData, "no weighted backend".into());
    }
    let f = up as f64 / weighted as f64;
    let text = format!("{up} of {weighted} backends healthy");
    if f < s.min_healthy_fraction {
        (Verdict::Fail, text)
    } else {
        (Verdict::Pass, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings::DEFAULT;

    #[test]
    fn one_failure_in_five_requests_is_no_verdict() {
        assert_eq!(rise("5xx", 1, 5, Some((0, 500)), &S).0, Verdict::NoData);
        assert_eq!(rise("5xx", 1, 5, None, &S).0, Verdict::NoData);
        // Nor is one in twenty against a clean baseline a failure.
        assert_ne!(rise("5xx", 1, 20, Some((0, 200)), &S).0, Verdict::Fail);
        assert_ne!(rise("5xx", 1, 20, None, &S).0, Verdict::Fail);
    }

    #[test]
    fn a_zero_or_empty_baseline_still_fails_a_change_with_errors() {
        assert_eq!(rise("5xx", 30, 100, Some((0, 400)), &S).0, Verdict::Fail);
        assert_eq!(
            rise("5xx", 30, 100, Some((0, 3)), &S).0,
            Verdict::Fail,
            "too small a baseline is none"
        );
        assert_eq!(rise("5xx", 30, 100, None, &S).0, Verdict::Fail);
    }

    #[test]
    fn noise_and_tiny_effects_pass() {
        assert_eq!(rise("5xx", 3, 150, Some((2, 150)), &S).0, Verdict::Pass);
        // Significant with a million requests, but a rise of half a point.
        assert_eq!(
            rise("5xx", 15_000, 1_000_000, Some((10_000, 1_000_000)), &S).0,
            Verdict::Pass
        );
    }

    fn snapshot(auth: &str) -> Snapshot {
        let text = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"auth\"\nmatch = {{ path_prefix = \"{auth}\" }}\npool = \"auth\"\n\n\
             [[route]]\nname = \"web\"\npool = \"web\"\n\n\
             [pool.auth]\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n\n\
             [pool.web]\nbackends = [{{ addr = \"127.0.0.1:2\" }}]\n"
        );
        fulcrum_config::check_with("t", &text, &fulcrum_config::NoFiles)
            .snapshot
            .expect("a valid config")
    }

    #[test]
    fn a_routing_change_touches_every_route_and_pool() {
        let old = snapshot("/auth/");
        // Nothing changed: nothing touched.
        let t = touched(&old, &old);
        assert!(t.routes.is_empty() && t.pools.is_empty());
        // The auth route matches less: logins it no longer takes land on
        // `web`, which the change therefore touched too.
        let t = touched(&old, &snapshot("/auth/v2/"));
        assert!(t.routes.contains("web") && t.pools.contains("web"), "{t:?}");
    }

    #[test]
    fn requests_routed_nowhere_fail_when_their_share_rises() {
        let counts = |routed: u64, unrouted: u64| {
            let mut c = Counts {
                unrouted,
                ..Counts::default()
            };
            c.routes.insert(
                "web".into(),
                RouteCounts {
                    statuses: vec![(200, routed)],
                    ..RouteCounts::default()
                },
            );
            c
        };
        let base = (snapshot("/auth/"), counts(300, 0));
        assert_eq!(
            unrouted(&counts(300, 0), Some(&base), &S).verdict,
            Verdict::Pass
        );
        assert_eq!(
            unrouted(&counts(0, 300), Some(&base), &S).verdict,
            Verdict::Fail
        );
        assert_eq!(unrouted(&counts(0, 300), None, &S).verdict, Verdict::Fail);
    }

    /// Incident 3's shape: one backend in eleven slow (60 ms) before, ten
    /// in eleven after. The p99 is that backend's both times; the median
    /// moves from 1 ms to 60 ms.
    #[test]
    fn most_requests_turning_slow_fail_though_the_p99_stays() {
        let at = |us| fulcrum_proxy::stats::bucket(us) as u16;
        let route = |fast: u64, slow: u64| RouteCounts {
            latency: vec![(at(1_000), fast), (at(60_000), slow)],
            ..RouteCounts::default()
        };
        let long = Duration::from_secs(5);
        let (before, after) = (route(1000, 100), route(100, 1000));
        let (verdict, text) = latency(&after, Some(&before), long, &S);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        assert_eq!(p99_ms(&after.histogram()), p99_ms(&before.histogram()));
        assert_eq!(latency(&before, Some(&before), long, &S).0, Verdict::Pass);
    }

    /// A change a little slower throughout (Mann-Whitney sure of it) with
    /// one slow request among twenty: over twenty requests that one is the
    /// p99, and it used to fail the change. A tail of many slow requests
    /// still fails.
    #[test]
    fn one_slow_request_is_not_a_slower_tail() {
        let at = |us| fulcrum_proxy::stats::bucket(us) as u16;
        let route = |latency: Vec<(u16, u64)>| RouteCounts {
            latency,
            ..RouteCounts::default()
        };
        let long = Duration::from_secs(5);
        let before = route(vec![(at(1_000), 200)]);
        let outlier = route(vec![(at(1_100), 19), (at(100_000), 1)]);
        let (verdict, text) = latency(&outlier, Some(&before), long, &S);
        // Marginal at most (one in twenty is suspicious at 95 %): no rollback.
        assert!(verdict < Verdict::Fail, "{text}");
        let tail = route(vec![(at(1_100), 80), (at(100_000), 20)]);
        let (verdict, text) = latency(&tail, Some(&before), long, &S);
        assert_eq!(verdict, Verdict::Fail, "{text}");
    }

    #[test]
    fn shares_far_from_expectation_fail_and_near_pass() {
        assert_eq!(fit(&[100, 0], &[0.5, 0.5], &S).0, Verdict::Fail);
        assert_eq!(fit(&[55, 45], &[0.5, 0.5], &S).0, Verdict::Pass);
        assert_eq!(fit(&[6, 4], &[0.5, 0.5], &S).0, Verdict::NoData);
    }

    /// The `shares` finding for pool `auth` (backends :1 and :3, round
    /// robin, both up), its shares now `now` and before `before`.
    fn shares_of(now: [u64; 2], before: [u64; 2], flipped: &[&str]) -> Verdict {
        pool_finding("shares", now, before, flipped).map_or(Verdict::NoData, |(v, _)| v)
    }

    /// Detector `detector`'s verdict on pool `auth`, as `shares_of`, and
    /// whether it is unsure.
    fn pool_finding(
        detector: &str,
        now: [u64; 2],
        before: [u64; 2],
        flipped: &[&str],
    ) -> Option<(Verdict, bool)> {
        // The change touches the pool (a timeout) and not its balancing.
        let snapshot = |extra: &str| {
            let text = format!(
                "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n\
                 [[route]]\nname = \"auth\"\npool = \"auth\"\n\n\
                 [pool.auth]\nbackends = [{{ addr = \"127.0.0.1:1\" }}, {{ addr = \"127.0.0.1:3\" }}]\n{extra}"
            );
            fulcrum_config::check_with("t", &text, &fulcrum_config::NoFiles)
                .snapshot
                .unwrap()
        };
        let snap = snapshot("timeouts = { response = \"20s\" }\n");
        let counts = |c: [u64; 2]| {
            let mut counts = Counts::default();
            counts.pools.insert(
                "auth".into(),
                super::super::window::PoolCounts {
                    backends: ["127.0.0.1:1", "127.0.0.1:3"]
                        .iter()
                        .zip(c)
                        .map(|(a, n)| super::super::window::BackendCounts {
                            addr: a.to_string(),
                            requests: n,
                            latency_sum_us: n * 1000,
                        })
                        .collect(),
                    unserved: 0,
                },
            );
            counts
        };
        let base = (snapshot(""), counts(before));
        let touched = touched(&base.0, &snap);
        let flipped = flipped
            .iter()
            .map(|a| ("auth".to_owned(), a.to_string()))
            .collect();
        let mut out = Vec::new();
        let mut memo = expect::Memo::default();
        pools(
            &snap,
            &counts(now),
            Duration::from_secs(10),
            (Some(&base), Some(&touched)),
            Live {
                health: &[],
                expected: &mut memo,
                flipped: &flipped,
            },
            &S,
            &mut out,
        );
        out.iter()
            .find(|f| f.detector == detector)
            .map(|f| (f.verdict, f.unsure))
    }

    /// Incident 5's 90.9 % over 66 requests is likely skew, not yet sure:
    /// marginal and unsure, which holds a canary's promotion; over 165 it
    /// fails. A pool skewed as much before the change is marginal and not
    /// unsure: more traffic would not decide it.
    #[test]
    fn likely_skew_is_unsure_until_the_volume_decides() {
        let skew = |now, before| pool_finding("skew", now, before, &[]).unwrap();
        assert_eq!(skew([60, 6], [50, 50]), (Verdict::Marginal, true));
        assert_eq!(skew([150, 15], [50, 50]), (Verdict::Fail, false));
        assert_eq!(skew([150, 15], [100, 0]), (Verdict::Marginal, false));
        assert_eq!(skew([30, 30], [50, 50]), (Verdict::Pass, false));
        // Shares the same before: marginal, and nothing to wait for.
        let shares = pool_finding("shares", [100, 0], [100, 0], &[]).unwrap();
        assert_eq!(shares, (Verdict::Marginal, false));
    }

    /// A canary's first look, before its stable cohort has counts, still
    /// knows what the change touched: a pool it did not touch that is
    /// unhealthy is only marginal, not a reason to drop the canary.
    #[test]
    fn an_untouched_pool_is_spared_before_the_baseline_has_counts() {
        let snapshot = |auth: &str| {
            let text = format!(
                "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n\
                 [[route]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth/\" }}\npool = \"auth\"\n\n\
                 [[route]]\nname = \"web\"\npool = \"web\"\n\n\
                 [pool.auth]\nbackends = [{{ addr = \"127.0.0.1:1\", weight = {auth} }}]\n\n\
                 [pool.web]\nbackends = [{{ addr = \"127.0.0.1:2\" }}, {{ addr = \"127.0.0.1:4\" }}, {{ addr = \"127.0.0.1:5\" }}]\n"
            );
            fulcrum_config::check_with("t", &text, &fulcrum_config::NoFiles)
                .snapshot
                .unwrap()
        };
        let (old, new) = (snapshot("1"), snapshot("2"));
        let touched = touched(&old, &new);
        let down = |addr: &str| BackendStatus {
            pool: "web".into(),
            addr: addr.parse().unwrap(),
            healthy: false,
            ejected: false,
            in_flight: 0,
            requests: 0,
            failures: 0,
        };
        let health = [down("127.0.0.1:4"), down("127.0.0.1:5")];
        let mut out = Vec::new();
        pools(
            &new,
            &Counts::default(),
            Duration::from_secs(1),
            (None, Some(&touched)),
            Live {
                health: &health,
                expected: &mut expect::Memo::default(),
                flipped: &HashSet::new(),
            },
            &S,
            &mut out,
        );
        let web = out
            .iter()
            .find(|f| f.detector == "health" && f.pool.as_deref() == Some("web"))
            .unwrap();
        assert_eq!(web.verdict, Verdict::Marginal, "{}", web.summary);
    }

    /// `shares` fails a change that unbalanced a pool, not one that left
    /// it as uneven as it was (a hash pool with two active clients), nor
    /// one judged over a window in which a backend's health changed (its
    /// share over the window cannot match what its state now expects).
    #[test]
    fn shares_spare_unevenness_that_predates_the_change_or_a_health_change() {
        assert_eq!(shares_of([100, 0], [50, 50], &[]), Verdict::Fail);
        assert_eq!(shares_of([100, 0], [100, 0], &[]), Verdict::Marginal);
        assert_eq!(
            shares_of([100, 0], [50, 50], &["127.0.0.1:3"]),
            Verdict::NoData
        );
    }
}
