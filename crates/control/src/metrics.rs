//! `GET /metrics`: the data plane's per-version statistics, backend state
//! and counters in the Prometheus text format (OpenMetrics), encoded by
//! prometheus-client at scrape time from the relaxed atomics the request
//! path bumps, so serving requests never touches a metrics lock.

use std::sync::Arc;

use fulcrum_proxy::stats::{self, Histogram, PoolStats, RouteStats, VersionStats};
use fulcrum_proxy::{BackendStatus, CounterValues};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::change::Controller;

/// Everything one scrape reports, read once.
#[derive(Debug)]
struct Scrape {
    guard: Option<Arc<crate::guard::View>>,
    stats: Vec<Arc<VersionStats>>,
    backends: Vec<BackendStatus>,
    counters: CounterValues,
    access_log_dropped: u64,
    /// (number, label, cohort, fraction)
    serving: Vec<(u64, String, &'static str, f64)>,
}

/// The guard's verdicts as numbers, for alert rules: 0 no data, 1 pass,
/// 2 marginal, 3 fail.
fn verdict(v: crate::guard::Verdict) -> f64 {
    use crate::guard::Verdict;
    match v {
        Verdict::NoData => 0.0,
        Verdict::Pass => 1.0,
        Verdict::Marginal => 2.0,
        Verdict::Fail => 3.0,
    }
}

pub fn render(c: &Controller, guard: Option<Arc<crate::guard::View>>) -> String {
    let view = c.view();
    let plane = c.plane();
    let stats = plane.stats();
    // The label its series carry, which is not the config's own when
    // another config of that label is kept.
    let label = |s: &fulcrum_config::Snapshot| {
        stats
            .iter()
            .find(|v| v.hash == s.hash)
            .map_or_else(|| s.version.to_string(), |v| v.version.to_string())
    };
    let mut serving = vec![(
        view.stable.meta.number,
        label(&view.stable.snapshot),
        "stable",
        1.0 - view.canary.as_ref().map_or(0.0, |c| c.fraction),
    )];
    if let Some(cv) = &view.canary {
        serving.push((
            cv.serving.meta.number,
            label(&cv.serving.snapshot),
            "canary",
            cv.fraction,
        ));
    }
    let scrape = Scrape {
        guard,
        stats,
        backends: plane.backends(),
        counters: plane.counters(),
        access_log_dropped: plane.access_log_dropped(),
        serving,
    };
    let mut registry = Registry::with_prefix("fulcrum");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

type Labels = Vec<(&'static str, String)>;

/// The families of one scrape, written in call order.
struct Families<'e> {
    enc: DescriptorEncoder<'e>,
}

impl Families<'_> {
    /// One family and its series; a family without series is left out, so
    /// the text has no descriptor without samples.
    fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        series: Vec<(Labels, Value<'_>)>,
    ) -> Result<(), std::fmt::Error> {
        if series.is_empty() {
            return Ok(());
        }
        let mut m = self.enc.encode_descriptor(name, help, None, kind)?;
        for (labels, v) in series {
            let e = m.encode_family(&labels)?;
            match v {
                Value::Counter(n) => ConstCounter::new(n).encode(e)?,
                Value::Gauge(g) => ConstGauge::new(g).encode(e)?,
                Value::Histogram(h) => encode_histogram(h, e)?,
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut out = Families { enc };
        self.encode_serving(&mut out)?;
        self.encode_traffic(&mut out)?;
        self.encode_backend_state(&mut out)?;
        self.encode_counters(&mut out)?;
        if let Some(g) = &self.guard {
            self.encode_guard(g, &mut out)?;
        }
        out.family(
            "access_log_dropped",
            "Access-log lines lost since start: the writer fell behind, or the log could not be opened or written.",
            MetricType::Counter,
            vec![(Vec::new(), Value::Counter(self.access_log_dropped))],
        )?;
        Ok(())
    }
}

/// The series the per-version statistics feed, one list per family, so a
/// single pass over the statistics fills every family.
#[derive(Default)]
struct Traffic<'a> {
    requests: Vec<(Labels, Value<'a>)>,
    errors: Vec<(Labels, Value<'a>)>,
    route_latency: Vec<(Labels, Value<'a>)>,
    responses: Vec<(Labels, Value<'a>)>,
    backend_latency: Vec<(Labels, Value<'a>)>,
    no_backend: Vec<(Labels, Value<'a>)>,
}

impl<'a> Traffic<'a> {
    /// Every version's routes (and unrouted requests), then its pools.
    fn gather(stats: &'a [Arc<VersionStats>]) -> Traffic<'a> {
        let mut t = Traffic::default();
        for s in stats {
            let version = s.version.to_string();
            for r in s.routes.iter().chain([&s.unrouted]) {
                t.route(&version, r);
            }
            for p in s.pools.iter() {
                t.pool(&version, p);
            }
        }
        t
    }

    /// A route's requests by status, errors by cause, and latency.
    fn route(&mut self, version: &str, r: &'a RouteStats) {
        let base = vec![
            ("version", version.to_owned()),
            ("route", r.name.to_string()),
            ("pool", r.pool.as_deref().unwrap_or("").to_owned()),
        ];
        for (code, n) in r.statuses() {
            let mut l = base.clone();
            l.push(("code", code.to_string()));
            self.requests.push((l, Value::Counter(n)));
        }
        for cause in [
            fulcrum_proxy::Cause::Client,
            fulcrum_proxy::Cause::Backend,
            fulcrum_proxy::Cause::Proxy,
        ] {
            let n = r.errors(cause);
            if n > 0 {
                let mut l = base.clone();
                l.push(("cause", cause.as_str().to_owned()));
                self.errors.push((l, Value::Counter(n)));
            }
        }
        if r.requests() > 0 {
            self.route_latency
                .push((base, Value::Histogram(&r.latency)));
        }
    }

    /// A pool's unserved requests, and each backend's responses by status
    /// class and latency.
    fn pool(&mut self, version: &str, p: &'a PoolStats) {
        self.no_backend.push((
            vec![
                ("version", version.to_owned()),
                ("pool", p.name.to_string()),
            ],
            Value::Counter(p.no_backend.load(std::sync::atomic::Ordering::Relaxed)),
        ));
        for b in p.backends.iter() {
            let base = vec![
                ("version", version.to_owned()),
                ("pool", p.name.to_string()),
                ("backend", b.addr.to_string()),
            ];
            for class in 1..=5u16 {
                let mut l = base.clone();
                l.push(("class", format!("{class}xx")));
                self.responses.push((l, Value::Counter(b.class(class))));
            }
            let mut l = base.clone();
            l.push(("class", "error".to_owned()));
            self.responses.push((l, Value::Counter(b.errors())));
            self.backend_latency
                .push((base, Value::Histogram(&b.latency)));
        }
    }
}

impl Scrape {
    /// `config_info`: the versions serving and the share of clients each gets.
    fn encode_serving(&self, out: &mut Families<'_>) -> Result<(), std::fmt::Error> {
        out.family(
            "config_info",
            "The config versions serving: stored number, label and cohort (the value is the share of clients served).",
            MetricType::Gauge,
            self.serving
                .iter()
                .map(|(n, label, cohort, share)| {
                    (
                        vec![
                            ("number", n.to_string()),
                            ("version", label.clone()),
                            ("cohort", cohort.to_string()),
                        ],
                        Value::Gauge(*share),
                    )
                })
                .collect(),
        )
    }

    /// The route, backend and pool families the per-version statistics feed.
    fn encode_traffic(&self, out: &mut Families<'_>) -> Result<(), std::fmt::Error> {
        let t = Traffic::gather(&self.stats);
        out.family(
            "route_requests",
            "Requests per route by response status, per config version; route \"\" holds requests no route took.",
            MetricType::Counter,
            t.requests,
        )?;
        out.family(
            "route_errors",
            "Answers the proxy made for an error, per route, by who caused it (client, backend, proxy).",
            MetricType::Counter,
            t.errors,
        )?;
        out.family(
            "route_request_duration_seconds",
            "From the request head to the response's last byte, per route.",
            MetricType::Histogram,
            t.route_latency,
        )?;
        out.family(
            "backend_responses",
            "Responses per backend by status class; `error` when the backend sent none (connect failure, reset, timeout).",
            MetricType::Counter,
            t.responses,
        )?;
        out.family(
            "backend_request_duration_seconds",
            "From the request head to the response's last byte, per backend.",
            MetricType::Histogram,
            t.backend_latency,
        )?;
        out.family(
            "pool_unserved",
            "Requests a pool answered without a backend (503: none available), per config version.",
            MetricType::Counter,
            t.no_backend,
        )
    }

    /// Each backend's current state: healthy, ejected, requests in flight.
    fn encode_backend_state(&self, out: &mut Families<'_>) -> Result<(), std::fmt::Error> {
        let state = |f: fn(&BackendStatus) -> f64| -> Vec<(Labels, Value<'_>)> {
            self.backends
                .iter()
                .map(|b| {
                    (
                        vec![
                            ("pool", b.pool.to_string()),
                            ("backend", b.addr.to_string()),
                        ],
                        Value::Gauge(f(b)),
                    )
                })
                .collect()
        };
        out.family(
            "backend_healthy",
            "1 when active health checks pass (always 1 without checks).",
            MetricType::Gauge,
            state(|b| b.healthy as u8 as f64),
        )?;
        out.family(
            "backend_ejected",
            "1 while passive outlier detection keeps the backend out.",
            MetricType::Gauge,
            state(|b| b.ejected as u8 as f64),
        )?;
        out.family(
            "backend_in_flight",
            "Requests sent to the backend and not yet finished.",
            MetricType::Gauge,
            state(|b| b.in_flight as f64),
        )
    }

    /// The data plane's counters, one family each.
    fn encode_counters(&self, out: &mut Families<'_>) -> Result<(), std::fmt::Error> {
        for (name, n) in self.counters.pairs() {
            out.family(
                name,
                &format!("Data plane counter `{name}` (see docs/metrics.md)."),
                MetricType::Counter,
                vec![(Vec::new(), Value::Counter(n))],
            )?;
        }
        Ok(())
    }

    /// The guard's verdicts, and the expected shares beside the observed.
    fn encode_guard<'a>(
        &self,
        g: &'a crate::guard::View,
        out: &mut Families<'_>,
    ) -> Result<(), std::fmt::Error> {
        out.family(
            "guard_verdict",
            "The guard's overall verdict on the change it watches: 0 no data, 1 pass, 2 marginal, 3 fail (see docs/guard.md).",
            MetricType::Gauge,
            vec![(
                vec![("state", g.state.to_owned())],
                Value::Gauge(verdict(g.verdict)),
            )],
        )?;
        out.family(
            "guard_route_verdict",
            "The guard's verdict per route (0 no data, 1 pass, 2 marginal, 3 fail).",
            MetricType::Gauge,
            g.routes
                .iter()
                .map(|r| {
                    (
                        vec![("route", r.name.clone()), ("pool", r.pool.clone())],
                        Value::Gauge(verdict(r.verdict)),
                    )
                })
                .collect(),
        )?;
        out.family(
            "guard_pool_verdict",
            "The guard's verdict per pool (0 no data, 1 pass, 2 marginal, 3 fail).",
            MetricType::Gauge,
            g.pools
                .iter()
                .map(|p| {
                    (
                        vec![("pool", p.name.clone())],
                        Value::Gauge(verdict(p.verdict)),
                    )
                })
                .collect(),
        )?;
        let share = |f: fn(&crate::guard::BackendView) -> Option<f64>| -> Vec<(Labels, Value<'a>)> {
            g.pools
                .iter()
                .flat_map(|p| {
                    p.backends.iter().filter_map(move |b| {
                        f(b).map(|v| {
                            (
                                vec![("pool", p.name.clone()), ("backend", b.addr.clone())],
                                Value::Gauge(v),
                            )
                        })
                    })
                })
                .collect()
        };
        out.family(
            "backend_expected_share",
            "The share of its pool's requests a backend should get, from weights, health, observed latency and the algorithm (the guard's model).",
            MetricType::Gauge,
            share(|b| b.expected),
        )?;
        out.family(
            "backend_observed_share",
            "The share of its pool's requests a backend got over the guard's window.",
            MetricType::Gauge,
            share(|b| b.observed),
        )
    }
}

enum Value<'a> {
    Counter(u64),
    Gauge(f64),
    Histogram(&'a Histogram),
}

/// Octave boundaries from 128 µs to about 67 s: the log-linear histogram's
/// buckets summed into Prometheus' `le` buckets (the encoder makes them
/// cumulative).
fn encode_histogram(
    h: &Histogram,
    mut e: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    const FIRST: u64 = 128;
    const LAST: u64 = 1 << 26;
    let mut buckets = Vec::new();
    let (mut total, mut within) = (0u64, 0u64);
    let mut edge = FIRST;
    for (i, c) in h.counts().into_iter().enumerate() {
        total += c;
        within += c;
        if edge <= LAST && stats::bucket_floor(i + 1) == edge {
            buckets.push((edge as f64 / 1e6, std::mem::take(&mut within)));
            edge *= 2;
        }
    }
    // prometheus-client writes `+Inf` for f64::MAX only (INFINITY comes
    // out as `inf`, which OpenMetrics refuses).
    buckets.push((f64::MAX, within));
    e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum().as_secs_f64(),
        total,
        &buckets,
        None,
    )
}
