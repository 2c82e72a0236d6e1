//! Sliding windows over the data plane's cumulative per-version counters:
//! a sample of every version's statistics a few times a second, kept for a
//! little longer than the window, so the counts of any recent span are the
//! difference of two samples. Histograms and statuses are kept sparse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use fulcrum_config::snapshot::StatusSet;
use fulcrum_proxy::stats::{BUCKETS, VersionStats};

/// Nonzero (index, count) pairs, by index.
pub type Sparse = Vec<(u16, u64)>;

fn add_sparse(to: &mut Sparse, more: &Sparse) {
    for (i, n) in more {
        match to.iter_mut().find(|(j, _)| j == i) {
            Some((_, m)) => *m += n,
            None => to.push((*i, *n)),
        }
    }
    to.sort_unstable_by_key(|(i, _)| *i);
}

/// One version's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// By route name.
    pub routes: HashMap<Arc<str>, RouteCounts>,
    /// By pool name, then backend address (as text).
    pub pools: HashMap<Arc<str>, PoolCounts>,
    /// Requests no route took (Fulcrum's own 404, or refused before
    /// routing): a change that routes requests nowhere shows only here.
    pub unrouted: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RouteCounts {
    pub pool: Option<Arc<str>>,
    /// By status.
    pub statuses: Sparse,
    /// Latency histogram buckets.
    pub latency: Sparse,
}

#[derive(Debug, Clone, Default)]
pub struct PoolCounts {
    pub backends: Vec<BackendCounts>,
    pub unserved: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BackendCounts {
    pub addr: String,
    pub requests: u64,
    pub latency_sum_us: u64,
}

impl Counts {
    pub fn of(s: &VersionStats) -> Counts {
        let sparse = |v: Vec<u64>| -> Sparse {
            v.into_iter()
                .enumerate()
                .filter(|(_, n)| *n > 0)
                .map(|(i, n)| (i as u16, n))
                .collect()
        };
        Counts {
            routes: s
                .routes
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        RouteCounts {
                            pool: r.pool.clone(),
                            statuses: r.statuses(),
                            latency: sparse(r.latency.counts()),
                        },
                    )
                })
                .collect(),
            pools: s
                .pools
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        PoolCounts {
                            backends: p
                                .backends
                                .iter()
                                .map(|b| BackendCounts {
                                    addr: b.addr.to_string(),
                                    requests: b.requests(),
                                    latency_sum_us: b.latency.sum().as_micros() as u64,
                                })
                                .collect(),
                            unserved: p.no_backend.load(Relaxed),
                        },
                    )
                })
                .collect(),
            unrouted: s.unrouted.requests(),
        }
    }

    /// Add `other` to `self`, entry by entry.
    pub fn add(&mut self, other: &Counts) {
        for (name, r) in &other.routes {
            let to = self
                .routes
                .entry(name.clone())
                .or_insert_with(|| RouteCounts {
                    pool: r.pool.clone(),
                    ..RouteCounts::default()
                });
            add_sparse(&mut to.statuses, &r.statuses);
            add_sparse(&mut to.latency, &r.latency);
        }
        self.unrouted += other.unrouted;
        for (name, p) in &other.pools {
            let to = self.pools.entry(name.clone()).or_default();
            to.unserved += p.unserved;
            for b in &p.backends {
                match to.backends.iter_mut().find(|x| x.addr == b.addr) {
                    Some(x) => {
                        x.requests += b.requests;
                        x.latency_sum_us += b.latency_sum_us;
                    }
                    None => to.backends.push(b.clone()),
                }
            }
        }
    }

    /// `self - earlier`, entry by entry (what `earlier` lacks counts as 0).
    pub fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            routes: self
                .routes
                .iter()
                .map(|(name, r)| {
                    let e = earlier.routes.get(name);
                    (
                        name.clone(),
                        RouteCounts {
                            pool: r.pool.clone(),
                            statuses: sub(&r.statuses, e.map(|e| &e.statuses)),
                            latency: sub(&r.latency, e.map(|e| &e.latency)),
                        },
                    )
                })
                .collect(),
            pools: self
                .pools
                .iter()
                .map(|(name, p)| {
                    let e = earlier.pools.get(name);
                    let backends = p
                        .backends
                        .iter()
                        .map(|b| {
                            let eb = e.and_then(|e| e.backends.iter().find(|x| x.addr == b.addr));
                            BackendCounts {
                                addr: b.addr.clone(),
                                requests: b.requests.saturating_sub(eb.map_or(0, |x| x.requests)),
                                latency_sum_us: b
                                    .latency_sum_us
                                    .saturating_sub(eb.map_or(0, |x| x.latency_sum_us)),
                            }
                        })
                        .collect();
                    (
                        name.clone(),
                        PoolCounts {
                            backends,
                            unserved: p.unserved.saturating_sub(e.map_or(0, |e| e.unserved)),
                        },
                    )
                })
                .collect(),
            unrouted: self.unrouted.saturating_sub(earlier.unrouted),
        }
    }
}

fn sub(now: &Sparse, before: Option<&Sparse>) -> Sparse {
    now.iter()
        .map(|(i, n)| {
            let b = before
                .and_then(|b| b.iter().find(|(j, _)| j == i))
                .map_or(0, |(_, n)| *n);
            (*i, n.saturating_sub(b))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl RouteCounts {
    pub fn requests(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }

    /// Requests answered with a status in `set`.
    pub fn matching(&self, set: &StatusSet) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| set.contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The latency histogram, dense.
    pub fn histogram(&self) -> Vec<u64> {
        let mut h = vec![0; BUCKETS];
        for (i, n) in &self.latency {
            h[*i as usize] = *n;
        }
        h
    }
}

/// One version's samples, oldest first, and when it was first seen.
type Series = (Instant, VecDeque<(Instant, Counts)>);

/// The samples of every version, by its content hash: two configs that
/// share a `version` label are still two versions.
#[derive(Default)]
pub struct Windows {
    samples: HashMap<Arc<str>, Series>,
}

impl Windows {
    /// Take a sample of each version now; forget samples older than `keep`.
    pub fn sample(&mut self, stats: &[Arc<VersionStats>], now: Instant, keep: Duration) {
        for s in stats {
            let (_, q) = self
                .samples
                .entry(s.hash.clone())
                .or_insert_with(|| (now, VecDeque::new()));
            q.push_back((now, Counts::of(s)));
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > keep)
            {
                q.pop_front();
            }
        }
        self.samples
            .retain(|v, _| stats.iter().any(|s| s.hash == *v));
    }

    /// What the version of content `hash` counted from `from` to its
    /// latest sample, and over how long. A version first seen after `from`
    /// counted everything since it began (its statistics start at zero
    /// when it is built). `None` when there is nothing to tell yet.
    pub fn since(&self, hash: &str, from: Instant) -> Option<(Counts, Duration)> {
        let (first_seen, q) = self.samples.get(hash)?;
        let (last_t, last) = q.back()?;
        if *first_seen >= from {
            return Some((last.clone(), last_t.saturating_duration_since(from)));
        }
        let (t, base) = q.iter().find(|(t, _)| *t >= from)?;
        (last_t > t).then(|| (last.minus(base), *last_t - *t))
    }

    /// What every version but those in `left_out` counted from `from` to
    /// `to`, added up by route, pool and backend: the traffic before a
    /// change, however many versions served it (a reload every second
    /// leaves each version a second of traffic, too little to compare
    /// with alone).
    pub fn all_between(&self, from: Instant, to: Instant, left_out: &[Arc<str>]) -> Counts {
        let mut sum = Counts::default();
        for v in self.samples.keys().filter(|v| !left_out.contains(v)) {
            if let Some((c, _)) = self.between(v, from, to) {
                sum.add(&c);
            }
        }
        sum
    }

    /// What the version of content `hash` counted from `from` to `to`.
    pub fn between(&self, hash: &str, from: Instant, to: Instant) -> Option<(Counts, Duration)> {
        let (_, q) = self.samples.get(hash)?;
        let (t0, first) = q.iter().find(|(t, _)| *t >= from)?;
        let (t1, last) = q.iter().rev().find(|(t, _)| *t <= to)?;
        (t1 > t0).then(|| (last.minus(first), *t1 - *t0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_proxy::stats::{Cohort, Outcome};

    /// One version's statistics, `n` requests to route 0 counted.
    fn counted(comment: &str, n: u32) -> Arc<VersionStats> {
        let text = format!(
            "# {comment}\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"web\"\npool = \"web\"\n\n\
             [pool.web]\nbackends = [{{ addr = \"127.0.0.1:2\" }}]\n"
        );
        let snapshot = fulcrum_config::check("t", &text).snapshot.unwrap();
        let stats = Arc::new(VersionStats::of(&snapshot));
        for _ in 0..n {
            stats.record(&Outcome {
                route: Some(0),
                pool: Some(0),
                backend: Some(0),
                status: 500,
                cause: None,
                latency: Duration::from_millis(1),
                cohort: Cohort::Stable,
            });
        }
        stats
    }

    /// The window before a change adds up every version that served in
    /// it, but those it is told to leave out (a version rolled back).
    #[test]
    fn all_between_leaves_out_what_it_is_told_to() {
        let keep = Duration::from_secs(60);
        let (t0, t1) = (Instant::now(), Instant::now() + Duration::from_secs(1));
        let mut w = Windows::default();
        w.sample(&[counted("good", 0), counted("bad", 0)], t0, keep);
        let bad = counted("bad", 5);
        w.sample(&[counted("good", 3), bad.clone()], t1, keep);
        let requests = |c: &Counts| c.routes.values().map(|r| r.requests()).sum::<u64>();
        assert_eq!(requests(&w.all_between(t0, t1, &[])), 8);
        assert_eq!(
            requests(&w.all_between(t0, t1, std::slice::from_ref(&bad.hash))),
            3
        );
    }
}
