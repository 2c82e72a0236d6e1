//! Evaluating standards and config tests: each rule's assertions against a
//! compiled snapshot, with evidence for every failure (where the request
//! went, the simulated share of each backend, the offending value) and the
//! config line responsible, so `check`, `test`, `serve` and a control
//! plane's pre-flight all say the same thing.

use fulcrum_config::Snapshot;
use fulcrum_config::locate::locate;
use fulcrum_config::snapshot::{PathMatch, Pool, RequestView, RouteMatch};
use fulcrum_config::standards::{
    AddrPattern, Location, PoolSelector, Rule, RuleRequest, Standards,
};
use serde::Serialize;

use crate::share::{Breach, judge};
use crate::simulate::{PoolSim, Shares, replay_pools, simulate_pool};
use crate::traffic::{Traffic, Unrecorded, synthetic};

/// The config a snapshot was compiled from, to point at its lines.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSource<'a> {
    pub file: &'a str,
    pub source: &'a str,
}

/// Every rule's outcome, in file order.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub standards: String,
    /// What the simulated shares were computed over.
    pub traffic: String,
    /// With a recorded sample: the headers and cookies the config reads
    /// that some lines of the log did not record (taken as absent there).
    pub unrecorded: Vec<Unrecorded>,
    pub passed: usize,
    pub failed: usize,
    pub rules: Vec<RuleOutcome>,
}

impl Evaluation {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    pub fn failures(&self) -> impl Iterator<Item = &RuleOutcome> {
        self.rules.iter().filter(|r| !r.passed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    pub name: String,
    pub key_path: String,
    pub location: Location,
    pub passed: bool,
    pub failures: Vec<Failure>,
    /// Route names this rule's request reached (for test coverage).
    #[serde(skip)]
    pub routes: Vec<String>,
}

/// One assertion that does not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The assertion key, e.g. `max_backend_share`.
    pub assertion: &'static str,
    /// What is wrong, why, and how to fix it.
    pub message: String,
    /// The assertion in the rules file.
    pub location: Location,
    /// The config line responsible, where there is one.
    pub config: Option<Location>,
    pub evidence: Option<Evidence>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// Where the rule's request went.
    Routing {
        request: String,
        route: Option<String>,
        pool: Option<String>,
        status: Option<u16>,
    },
    /// The simulated share of each backend of a pool.
    Shares(Shares),
}

/// Check `snapshot` against every rule of `standards`. Shares for
/// `max_backend_share` are simulated over `traffic` once per pool.
pub fn evaluate(
    snapshot: &Snapshot,
    config: Option<ConfigSource<'_>>,
    standards: &Standards,
    traffic: &Traffic,
) -> Evaluation {
    let mut ctx = Ctx {
        snapshot,
        config,
        traffic,
        shares: vec![None; snapshot.pools.len()],
        replayed: None,
    };
    let rules: Vec<RuleOutcome> = standards.rules.iter().map(|r| ctx.rule(r)).collect();
    let failed = rules.iter().filter(|r| !r.passed).count();
    let unrecorded = match traffic {
        Traffic::Recorded { log, .. } => log.unrecorded(snapshot),
        Traffic::Synthetic(_) => Vec::new(),
    };
    Evaluation {
        standards: standards.file.clone(),
        traffic: traffic.describe(),
        unrecorded,
        passed: rules.len() - failed,
        failed,
        rules,
    }
}

struct Ctx<'a> {
    snapshot: &'a Snapshot,
    config: Option<ConfigSource<'a>>,
    traffic: &'a Traffic,
    /// Simulated once per pool, on first use.
    shares: Vec<Option<Shares>>,
    /// A recorded sample, replayed once through every pool on first use.
    replayed: Option<Vec<PoolSim>>,
}

impl Ctx<'_> {
    fn at(&self, key_path: &str) -> Option<Location> {
        let c = self.config?;
        let (line, col) = locate(c.source, key_path).unwrap_or((1, 1));
        Some(Location {
            file: c.file.to_owned(),
            line,
            col,
        })
    }

    fn shares(&mut self, i: usize) -> Shares {
        if let Some(s) = &self.shares[i] {
            return s.clone();
        }
        let pool = &self.snapshot.pools[i];
        let s = match self.traffic {
            Traffic::Synthetic(spec) => judge(pool, &simulate_pool(pool, &synthetic(spec), spec)),
            Traffic::Recorded { log, spec, .. } => {
                let sims = self.replayed.get_or_insert_with(|| {
                    replay_pools(self.snapshot, &log.requests, spec, true).1
                });
                judge(pool, &sims[i])
            }
        };
        self.shares[i] = Some(s.clone());
        s
    }

    /// How to make a request routed by route `matched` reach pool `want`,
    /// and the config line to change. Never "point a catch-all at it",
    /// which would send all traffic there: when a later route already
    /// sends it to `want`, the routes are in the wrong order.
    fn reroute(
        &self,
        view: &RequestView<'_>,
        matched: Option<usize>,
        want: &str,
    ) -> (String, Option<Location>) {
        let s = self.snapshot;
        if s.pool(want).is_none() {
            return (format!("the config has no pool `{want}`"), None);
        }
        let Some(i) = matched else {
            return (format!("add a route for it with `pool = \"{want}\"`"), None);
        };
        let taker = &s.routes[i].name;
        let catch_all = |m: &RouteMatch| {
            m.host.is_none()
                && m.methods.is_empty()
                && m.headers.is_empty()
                && m.path
                    .as_ref()
                    .is_none_or(|p| matches!(p, PathMatch::Prefix(x) if x == "/"))
        };
        // Moving a later catch-all up would send it every request.
        let later = s
            .routes
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, r)| &*s.pools[r.pool].name == want && r.matcher.matches(view))
            .filter(|(_, r)| !catch_all(&r.matcher));
        if let Some((k, r)) = later {
            return (
                format!(
                    "route `{}` would send it there, but route `{taker}` comes first and takes it: move `{}` above `{taker}`",
                    r.name, r.name
                ),
                self.at(&format!("route[{k}]")),
            );
        }
        if catch_all(&s.routes[i].matcher) {
            return (
                format!(
                    "route `{taker}` takes every request, so pointing it at `{want}` would send all traffic there: add a route for this request with `pool = \"{want}\"` before `{taker}`"
                ),
                self.at(&format!("route[{i}]")),
            );
        }
        (
            format!(
                "point route `{taker}` at `pool = \"{want}\"`, or add a route for it before `{taker}`"
            ),
            None,
        )
    }

    fn rule(&mut self, rule: &Rule) -> RuleOutcome {
        let mut v = Verdict {
            rule,
            failures: Vec::new(),
        };
        let routes = match &rule.request {
            Some(req) => self.check_request(req, &mut v).into_iter().collect(),
            None => Vec::new(),
        };
        if let Some(sel) = &rule.pool {
            for i in self.select_pools(sel, &mut v) {
                self.check_pool(i, &mut v);
            }
        }
        self.check_config(&mut v);
        RuleOutcome {
            name: rule.name.clone(),
            key_path: rule.key_path.clone(),
            location: rule.location.clone(),
            passed: v.failures.is_empty(),
            failures: v.failures,
            routes,
        }
    }

    /// Where the rule's request goes against `expect_route`, `expect_pool`
    /// and `expect_status`; returns the route it took, for test coverage.
    fn check_request(&self, req: &RuleRequest, v: &mut Verdict<'_>) -> Option<String> {
        let rule = v.rule;
        let s = self.snapshot;
        let view = RequestView {
            method: &req.method,
            host: req.host.as_deref(),
            path: &req.path,
            headers: &req.headers,
        };
        let routed = s.route(&view);
        let route = routed.map(|(i, r)| (i, r.name.to_string()));
        let pool = routed.map(|(_, r)| &s.pools[r.pool]);
        let status = refusal(pool);
        let evidence = Evidence::Routing {
            request: req.text.clone(),
            route: route.as_ref().map(|r| r.1.clone()),
            pool: pool.map(|p| p.name.to_string()),
            status,
        };
        let went = match (&route, pool) {
            (Some((_, r)), Some(p)) => format!("route `{r}` sends it to pool `{}`", p.name),
            _ => "no route matches it (404)".to_owned(),
        };
        let route_at = route
            .as_ref()
            .and_then(|(i, _)| self.at(&format!("route[{i}].pool")));
        if let Some(want) = &rule.expect_route
            && route.as_ref().is_none_or(|(_, r)| r != want)
        {
            v.fail(
                "expect_route",
                format!(
                    "`{}` must take route `{want}`, but {went}; fix the routes' order or match conditions",
                    req.text
                ),
                route_at.clone(),
                Some(evidence.clone()),
            );
        }
        if let Some(want) = &rule.expect_pool
            && pool.is_none_or(|p| &*p.name != want)
        {
            let (hint, at) = self.reroute(&view, routed.map(|(i, _)| i), want);
            v.fail(
                "expect_pool",
                format!(
                    "`{}` must reach pool `{want}`, but {went}; {hint}",
                    req.text
                ),
                at.or_else(|| route_at.clone()),
                Some(evidence.clone()),
            );
        }
        if let Some(want) = rule.expect_status
            && status != Some(want)
        {
            let got = status.map_or_else(
                || format!("{went}, which serves it"),
                |st| format!("it gets {st}"),
            );
            v.fail(
                "expect_status",
                format!("`{}` must be refused with {want}, but {got}", req.text),
                route_at,
                Some(evidence),
            );
        }
        route.map(|(_, name)| name)
    }

    /// The pools the rule's pool assertions apply to. A named pool the
    /// config lacks fails the rule: it could never hold.
    fn select_pools(&self, sel: &PoolSelector, v: &mut Verdict<'_>) -> Vec<usize> {
        let s = self.snapshot;
        match sel {
            PoolSelector::All => (0..s.pools.len()).collect(),
            PoolSelector::Named(n) => match s.pool(n) {
                Some((i, _)) => vec![i],
                None => {
                    let first = v.rule.assertions.first().map_or("pool", |a| a.0);
                    v.fail(
                        first,
                        format!(
                            "the config has no pool `{n}`, so this rule cannot hold; name an existing pool or `*`"
                        ),
                        None,
                        None,
                    );
                    vec![]
                }
            },
        }
    }

    /// One selected pool against every pool assertion of the rule, in the
    /// order the report lists them.
    fn check_pool(&mut self, i: usize, v: &mut Verdict<'_>) {
        let rule = v.rule;
        let p: &Pool = &self.snapshot.pools[i];
        let pk = format!("pool.{}", p.name);
        let weighted = p.backends.iter().filter(|b| b.weight > 0).count();
        if let Some(min) = rule.min_backends
            && weighted < min
        {
            v.fail(
                "min_backends",
                format!(
                    "pool `{}` has {weighted} backend(s) with weight above 0; at least {min} required for redundancy",
                    p.name
                ),
                self.at(&format!("{pk}.backends")),
                None,
            );
        }
        if let Some(max) = rule.max_backend_share {
            self.check_share(i, &pk, max, v);
        }
        if let Some(allowed) = &rule.algorithms
            && !allowed.iter().any(|a| a == p.algorithm.name())
        {
            v.fail(
                "algorithms",
                format!(
                    "pool `{}` uses `{}`, which is not allowed here (allowed: {})",
                    p.name,
                    p.algorithm.name(),
                    allowed.join(", ")
                ),
                self.at(&format!("{pk}.algorithm")),
                None,
            );
        }
        if rule.require_health_check && p.health.is_none() {
            v.fail(
                "require_health_check",
                format!(
                    "pool `{}` has no active health check, so a dead backend keeps getting traffic; add `health = {{ path = \"/healthz\" }}`",
                    p.name
                ),
                self.at(&pk),
                None,
            );
        }
        let weighted = p.backends.iter().filter(|b| b.weight > 0).count();
        match &p.outlier {
            _ if !rule.require_outlier_detection => {}
            None => v.fail(
                "require_outlier_detection",
                format!(
                    "pool `{}` has outlier detection turned off; remove `outlier.enabled = false`",
                    p.name
                ),
                self.at(&format!("{pk}.outlier")),
                None,
            ),
            // On, but it can never eject: as good as off.
            Some(o) if weighted >= 2 && !o.can_eject(weighted) => v.fail(
                "require_outlier_detection",
                format!(
                    "pool `{}` can never eject a backend: `max_ejected_fraction` {} of its {weighted} backends with a weight is under one; raise it",
                    p.name, o.max_ejected_fraction
                ),
                self.at(&format!("{pk}.outlier.max_ejected_fraction")),
                None,
            ),
            Some(_) => {}
        }
        if let Some(allowed) = &rule.allowed_backends {
            self.check_backends(p, &pk, allowed, v);
        }
        self.check_timeouts(p, &pk, v);
    }

    /// `max_backend_share`: how the traffic sample spreads over pool `i`'s
    /// backends.
    fn check_share(&mut self, i: usize, pk: &str, max: f64, v: &mut Verdict<'_>) {
        let p: &Pool = &self.snapshot.pools[i];
        let shares = self.shares(i);
        if shares.requests == 0 {
            v.fail(
                "max_backend_share",
                format!(
                    "no request of the traffic sample reaches pool `{}`, so its balance cannot be shown; record traffic that reaches it",
                    p.name
                ),
                self.at(pk),
                Some(Evidence::Shares(shares)),
            );
        } else if let Some(breach) = shares.breach(max) {
            let at = if p.algorithm.name() == "round_robin" {
                self.at(&format!("{pk}.backends"))
            } else {
                self.at(&format!("{pk}.algorithm"))
            };
            v.fail(
                "max_backend_share",
                share_message(p, &shares, breach, max),
                at,
                Some(Evidence::Shares(shares.clone())),
            );
        }
    }

    /// `allowed_backends`: every backend of the pool is one it may use.
    fn check_backends(&self, p: &Pool, pk: &str, allowed: &[AddrPattern], v: &mut Verdict<'_>) {
        let outside: Vec<String> = p
            .backends
            .iter()
            .filter(|b| !allowed.iter().any(|a| a.matches(b.addr)))
            .map(|b| b.addr.to_string())
            .collect();
        if outside.is_empty() {
            return;
        }
        let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        v.fail(
            "allowed_backends",
            format!(
                "pool `{}` sends traffic to {}, which {} not among the servers it may use ({}); point the pool back at its own servers, or extend allowed_backends if these really serve it",
                p.name,
                outside.join(", "),
                if outside.len() == 1 { "is" } else { "are" },
                allowed.join(", ")
            ),
            self.at(&format!("{pk}.backends")),
            None,
        );
    }

    /// `connect_timeout`, `response_timeout` and `idle_timeout`: each of
    /// the pool's timeouts within its allowed range.
    fn check_timeouts(&self, p: &Pool, pk: &str, v: &mut Verdict<'_>) {
        let rule = v.rule;
        for (key, range, d) in [
            ("connect_timeout", rule.connect_timeout, p.timeouts.connect),
            (
                "response_timeout",
                rule.response_timeout,
                p.timeouts.response,
            ),
            ("idle_timeout", rule.idle_timeout, p.timeouts.idle),
        ] {
            if let Some(range) = range.filter(|r| !r.contains(d)) {
                let field = key.trim_end_matches("_timeout");
                v.fail(
                    key,
                    format!(
                        "pool `{}` has timeouts.{field} = {}, outside the allowed {range}",
                        p.name,
                        fulcrum_humantime(d)
                    ),
                    self.at(&format!("{pk}.timeouts.{field}")),
                    None,
                );
            }
        }
    }

    /// The config-wide assertions: `every_pool_used`, `no_shadowed_routes`,
    /// `admin_on_loopback` and `require_version`.
    fn check_config(&self, v: &mut Verdict<'_>) {
        let rule = v.rule;
        let s = self.snapshot;
        if rule.every_pool_used {
            for p in &s.pools {
                if !s.routes.iter().any(|r| s.pools[r.pool].name == p.name) {
                    v.fail(
                        "every_pool_used",
                        format!(
                            "no route sends traffic to pool `{}`; a route probably points at the wrong pool",
                            p.name
                        ),
                        self.at(&format!("pool.{}", p.name)),
                        None,
                    );
                }
            }
        }
        if rule.no_shadowed_routes {
            for (later, earlier) in fulcrum_config::shadowed_routes(s) {
                v.fail(
                    "no_shadowed_routes",
                    format!(
                        "route `{}` can never match: route `{}` before it matches every request it does; reorder them",
                        s.routes[later].name, s.routes[earlier].name
                    ),
                    self.at(&format!("route[{later}]")),
                    None,
                );
            }
        }
        if rule.admin_on_loopback
            && let Some(a) = s.admin.as_ref().filter(|a| !a.listen.ip().is_loopback())
        {
            v.fail(
                "admin_on_loopback",
                format!(
                    "the admin API listens on {}, reachable from other hosts; bind it to 127.0.0.1",
                    a.listen
                ),
                self.at("admin.listen"),
                None,
            );
        }
        if rule.require_version {
            let has_version = self
                .config
                .is_none_or(|c| locate(c.source, "version").is_some());
            if !has_version {
                v.fail(
                    "require_version",
                    "the config has no `version`; add `version = \"…\"` naming this change"
                        .to_owned(),
                    self.at(""),
                    None,
                );
            }
        }
    }
}

/// One rule's failures so far.
struct Verdict<'r> {
    rule: &'r Rule,
    failures: Vec<Failure>,
}

impl Verdict<'_> {
    /// Reports point at the broken assertion's own line, or at the rule
    /// when the file does not name it.
    fn fail(
        &mut self,
        assertion: &'static str,
        message: String,
        config: Option<Location>,
        evidence: Option<Evidence>,
    ) {
        let location = self
            .rule
            .assertions
            .iter()
            .find(|(k, _)| *k == assertion)
            .map_or_else(|| self.rule.location.clone(), |(_, l)| l.clone());
        self.failures.push(Failure {
            assertion,
            message,
            location,
            config,
            evidence,
        });
    }
}

/// The status Fulcrum answers a request with itself, as far as a config
/// shows: 404 when no route takes it (a pool always has a backend with a
/// weight: `zero-weight` refuses one without).
fn refusal(pool: Option<&Pool>) -> Option<u16> {
    pool.is_none().then_some(404)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// A confidence level, to its last significant digit: `99.99%`.
fn level(c: f64) -> String {
    format!("{}%", (c * 1e6).round() / 1e4)
}

/// What is wrong with a pool's spread, from the evidence that decides.
fn share_message(p: &Pool, shares: &Shares, breach: Breach<'_>, max: f64) -> String {
    let top = match breach {
        Breach::Backend(top) => top,
        Breach::Floor(floor) => {
            return format!(
                "pool `{}` hashes its requests on only {} of its key, and however they fall on the ring one backend receives at least {} of them ({} confidence; at most {} allowed): {}; hash on a key that varies (a user or session id), or set `on_missing = \"random\"` if most requests lack it",
                p.name,
                match shares.keys.unwrap_or(0) {
                    1 => "1 distinct value".to_owned(),
                    k => format!("{k} distinct values"),
                },
                pct(floor),
                level(crate::share::CONFIDENCE),
                pct(max),
                shares.summary()
            );
        }
    };
    let how = match shares.confidence {
        Some(c) => format!(
            "backend {} of pool `{}` would receive {} of its requests ({} interval {}–{}, all above the {} allowed)",
            top.addr,
            p.name,
            pct(top.share),
            level(c),
            pct(top.low.unwrap_or(top.share)),
            pct(top.high.unwrap_or(top.share)),
            pct(max)
        ),
        None => format!(
            "backend {} of pool `{}` would receive {} of its requests, exactly (at most {} allowed)",
            top.addr,
            p.name,
            pct(top.share),
            pct(max)
        ),
    };
    format!(
        "{how} under `{}`: {}; spread the load (weights, algorithm, or a hash key that varies)",
        p.algorithm.name(),
        shares.summary()
    )
}

fn fulcrum_humantime(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The human report: a PASS/FAIL line per rule, each failure with its
/// message and where it is, then `N passed, M failed`.
pub fn render_human(e: &Evaluation) -> String {
    let mut out = String::new();
    for r in &e.rules {
        if r.passed {
            out.push_str(&format!("PASS {}\n", r.name));
            continue;
        }
        out.push_str(&format!(
            "FAIL {}  ({}:{}:{})\n",
            r.name, r.location.file, r.location.line, r.location.col
        ));
        for f in &r.failures {
            out.push_str(&format!("  {}: {}\n", f.assertion, f.message));
            if let Some(c) = &f.config {
                out.push_str(&format!("    --> {}:{}:{}\n", c.file, c.line, c.col));
            }
            if let Some(Evidence::Shares(s)) = &f.evidence {
                let how = match s.confidence {
                    Some(c) => format!("shares estimated, with {} intervals", level(c)),
                    None => "shares exact".to_owned(),
                };
                out.push_str(&format!("    simulated over {} ({how}):\n", e.traffic));
                for b in &s.backends {
                    let interval = match (b.low, b.high) {
                        (Some(lo), Some(hi)) => format!(" ({}–{})", pct(lo), pct(hi)),
                        _ => String::new(),
                    };
                    out.push_str(&format!(
                        "      {:<24} weight {:<4} {:>6.1}%{interval}  ({} of {} simulated)\n",
                        b.addr,
                        b.weight,
                        b.share * 100.0,
                        b.requests,
                        s.requests
                    ));
                }
            }
        }
    }
    for u in &e.unrecorded {
        out.push_str(&format!(
            "warning[unrecorded-{}]: {}\n",
            u.kind,
            u.message()
        ));
    }
    out.push_str(&format!("{} passed, {} failed\n", e.passed, e.failed));
    out
}
