//! `diff`: what changes between two configs, by meaning (routes, pools,
//! backends, weights, algorithms, health, timeouts; never text lines), and
//! with a recorded traffic sample, the impact: which requests change route,
//! pool or backend, replayed through both configs by the simulator.

use std::collections::BTreeMap;

use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{HeaderValueMatch, HostMatch, PathMatch, Pool, Route, RouteMatch};
use fulcrum_config::standards::TrafficSpec;
use serde::Serialize;

use crate::simulate::replay;
use crate::traffic::SampleRequest;

/// One semantic change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `route`, `pool`, `backend`, `admin` or `listener`.
    pub kind: &'static str,
    /// `added`, `removed` or `changed`.
    pub op: &'static str,
    /// `auth`, or `auth/127.0.0.1:9101` for a backend.
    pub name: String,
    /// What changed, for `changed`: `pool`, `match`, `order`, `algorithm`,
    /// `weight`, `health`, `outlier`, `timeouts`, `retries`, `panic_threshold`,
    /// `idle_per_backend`.
    pub field: Option<&'static str>,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The whole `diff` answer. Stable JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub old_version: String,
    pub new_version: String,
    pub changes: Vec<Change>,
    pub impact: Option<Impact>,
}

pub fn semantic(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    let ch = |kind, op, name: &str, field, old: Option<String>, new: Option<String>| Change {
        kind,
        op,
        name: name.to_owned(),
        field,
        old,
        new,
    };
    let pool_name = |s: &Snapshot, r: &Route| s.pools[r.pool].name.to_string();
    for (i, r) in old.routes.iter().enumerate() {
        match new.routes.iter().position(|n| n.name == r.name) {
            None => out.push(ch(
                "route",
                "removed",
                &r.name,
                None,
                Some(describe_match(&r.matcher)),
                None,
            )),
            Some(j) => {
                let n = &new.routes[j];
                if pool_name(old, r) != pool_name(new, n) {
                    out.push(ch(
                        "route",
                        "changed",
                        &r.name,
                        Some("pool"),
                        Some(pool_name(old, r)),
                        Some(pool_name(new, n)),
                    ));
                }
                let (a, b) = (describe_match(&r.matcher), describe_match(&n.matcher));
                if a != b {
                    out.push(ch(
                        "route",
                        "changed",
                        &r.name,
                        Some("match"),
                        Some(a),
                        Some(b),
                    ));
                }
                if i != j {
                    out.push(ch(
                        "route",
                        "changed",
                        &r.name,
                        Some("order"),
                        Some((i + 1).to_string()),
                        Some((j + 1).to_string()),
                    ));
                }
            }
        }
    }
    for r in &new.routes {
        if !old.routes.iter().any(|o| o.name == r.name) {
            out.push(ch(
                "route",
                "added",
                &r.name,
                None,
                None,
                Some(format!(
                    "{} → pool {}",
                    describe_match(&r.matcher),
                    pool_name(new, r)
                )),
            ));
        }
    }
    for p in &old.pools {
        match new.pool(&p.name) {
            None => out.push(ch(
                "pool",
                "removed",
                &p.name,
                None,
                Some(describe_pool(p)),
                None,
            )),
            Some((_, n)) => {
                let mut field = |f, a: String, b: String| {
                    if a != b {
                        out.push(ch("pool", "changed", &p.name, Some(f), Some(a), Some(b)));
                    }
                };
                field("algorithm", describe_algorithm(p), describe_algorithm(n));
                field(
                    "health",
                    format!("{:?}", p.health),
                    format!("{:?}", n.health),
                );
                field(
                    "outlier",
                    format!("{:?}", p.outlier),
                    format!("{:?}", n.outlier),
                );
                field(
                    "timeouts",
                    format!("{:?}", p.timeouts),
                    format!("{:?}", n.timeouts),
                );
                field(
                    "retries",
                    format!("{:?}", p.retries),
                    format!("{:?}", n.retries),
                );
                field(
                    "panic_threshold",
                    p.panic_threshold.to_string(),
                    n.panic_threshold.to_string(),
                );
                field(
                    "idle_per_backend",
                    p.idle_per_backend.to_string(),
                    n.idle_per_backend.to_string(),
                );
                for b in &p.backends {
                    let name = format!("{}/{}", p.name, b.addr);
                    match n.backends.iter().find(|x| x.addr == b.addr) {
                        None => out.push(ch(
                            "backend",
                            "removed",
                            &name,
                            None,
                            Some(format!("weight {}", b.weight)),
                            None,
                        )),
                        Some(x) if x.weight != b.weight => out.push(ch(
                            "backend",
                            "changed",
                            &name,
                            Some("weight"),
                            Some(b.weight.to_string()),
                            Some(x.weight.to_string()),
                        )),
                        Some(_) => {}
                    }
                }
                for b in &n.backends {
                    if !p.backends.iter().any(|x| x.addr == b.addr) {
                        out.push(ch(
                            "backend",
                            "added",
                            &format!("{}/{}", p.name, b.addr),
                            None,
                            None,
                            Some(format!("weight {}", b.weight)),
                        ));
                    }
                }
            }
        }
    }
    for p in &new.pools {
        if old.pool(&p.name).is_none() {
            out.push(ch(
                "pool",
                "added",
                &p.name,
                None,
                None,
                Some(describe_pool(p)),
            ));
        }
    }
    let admin = |s: &Snapshot| s.admin.as_ref().map(|a| a.listen.to_string());
    if admin(old) != admin(new) {
        out.push(ch(
            "admin",
            "changed",
            "admin",
            Some("listen"),
            admin(old),
            admin(new),
        ));
    }
    for l in &old.listeners {
        match new.listeners.iter().find(|n| n.name == l.name) {
            None => out.push(ch(
                "listener",
                "removed",
                &l.name,
                None,
                Some(l.bind.to_string()),
                None,
            )),
            Some(n) if n != l => out.push(ch(
                "listener",
                "changed",
                &l.name,
                Some("bind"),
                Some(format!("{:?}", l)),
                Some(format!("{:?}", n)),
            )),
            Some(_) => {}
        }
    }
    for l in &new.listeners {
        if !old.listeners.iter().any(|o| o.name == l.name) {
            out.push(ch(
                "listener",
                "added",
                &l.name,
                None,
                None,
                Some(l.bind.to_string()),
            ));
        }
    }
    out
}

/// `host=app.example.com path_prefix=/auth/ methods=GET,POST`, or `any request`.
pub fn describe_match(m: &RouteMatch) -> String {
    let mut parts = Vec::new();
    match &m.host {
        Some(HostMatch::Exact(h)) => parts.push(format!("host={h}")),
        Some(HostMatch::Suffix(s)) => parts.push(format!("host=*{s}")),
        None => {}
    }
    match &m.path {
        Some(PathMatch::Exact(p)) => parts.push(format!("path={p}")),
        Some(PathMatch::Prefix(p)) => parts.push(format!("path_prefix={p}")),
        Some(PathMatch::Regex(r)) => parts.push(format!("path_regex={}", r.as_str())),
        None => {}
    }
    if !m.methods.is_empty() {
        let ms: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        parts.push(format!("methods={}", ms.join(",")));
    }
    for h in &m.headers {
        parts.push(match &h.value {
            HeaderValueMatch::Present => format!("header {}", h.name),
            HeaderValueMatch::Exact(v) => format!("header {}={v}", h.name),
            HeaderValueMatch::Regex(r) => format!("header {}~{}", h.name, r.as_str()),
        });
    }
    if parts.is_empty() {
        "any request".to_owned()
    } else {
        parts.join(" ")
    }
}

pub fn describe_algorithm(p: &Pool) -> String {
    match &p.algorithm {
        fulcrum_config::snapshot::Algorithm::Hash(h) => {
            let key = match &h.key {
                fulcrum_config::snapshot::HashKey::Header(n) => format!("header:{n}"),
                fulcrum_config::snapshot::HashKey::Cookie(c) => format!("cookie:{c}"),
                fulcrum_config::snapshot::HashKey::ClientIp => "client_ip".into(),
                fulcrum_config::snapshot::HashKey::Path => "path".into(),
            };
            format!("hash on {key}")
        }
        a => a.name().to_owned(),
    }
}

fn describe_pool(p: &Pool) -> String {
    let backends: Vec<String> = p
        .backends
        .iter()
        .map(|b| format!("{}×{}", b.addr, b.weight))
        .collect();
    format!("{}, backends {}", describe_algorithm(p), backends.join(" "))
}

/// The traffic impact of a change, over a recorded sample.
#[derive(Debug, Clone, Serialize)]
pub struct Impact {
    pub requests: usize,
    /// The share of all requests that land on a different (pool, backend):
    /// the total variation distance between the before and after
    /// distributions over (pool, backend address). Compared with `--max-moved`.
    pub moved: f64,
    /// Share of all requests whose route changes / whose pool changes.
    pub route_changed: f64,
    pub pool_changed: f64,
    pub routes: Vec<RouteImpact>,
    pub pools: Vec<PoolImpact>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteImpact {
    pub route: String,
    pub requests_before: usize,
    pub requests_after: usize,
    /// Of the requests this route took before, the share that now take
    /// another route / reach another pool / another backend.
    pub route_changed: f64,
    pub pool_changed: f64,
    pub backend_changed: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolImpact {
    pub pool: String,
    pub requests_before: usize,
    pub requests_after: usize,
    /// Share of the pool's requests (before) that now reach another pool.
    pub pool_changed: f64,
    /// Each backend's share of the pool's requests, before and after (null
    /// where the pool or backend does not exist on that side).
    pub backends: Vec<BackendImpact>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendImpact {
    pub addr: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
}

/// Replay `requests` through both snapshots and compare where they go.
pub fn impact(
    old: &Snapshot,
    new: &Snapshot,
    requests: &[SampleRequest],
    spec: &TrafficSpec,
) -> Impact {
    let a = replay(old, requests, spec, true);
    let b = replay(new, requests, spec, true);
    let n = requests.len().max(1) as f64;
    let key = |s: &Snapshot, o: &crate::simulate::Outcome| {
        let pool = o.pool.map(|p| s.pools[p].name.to_string());
        let backend = match (o.pool, o.backend) {
            (Some(p), Some(i)) => Some(s.pools[p].backends[i].addr.to_string()),
            _ => None,
        };
        (pool, backend)
    };
    let route_name =
        |s: &Snapshot, o: &crate::simulate::Outcome| o.route.map(|r| s.routes[r].name.to_string());

    let mut dist: BTreeMap<(Option<String>, Option<String>), (f64, f64)> = BTreeMap::new();
    let (mut route_changed, mut pool_changed) = (0usize, 0usize);
    let mut routes: BTreeMap<String, [usize; 5]> = BTreeMap::new();
    let mut pools: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for (x, y) in a.iter().zip(&b) {
        let (kx, ky) = (key(old, x), key(new, y));
        dist.entry(kx.clone()).or_default().0 += 1.0;
        dist.entry(ky.clone()).or_default().1 += 1.0;
        let (rx, ry) = (route_name(old, x), route_name(new, y));
        route_changed += (rx != ry) as usize;
        pool_changed += (kx.0 != ky.0) as usize;
        if let Some(r) = &rx {
            let e = routes.entry(r.clone()).or_default();
            e[0] += 1;
            e[2] += (rx != ry) as usize;
            e[3] += (kx.0 != ky.0) as usize;
            e[4] += (kx != ky) as usize;
        }
        if let Some(r) = &ry {
            routes.entry(r.clone()).or_default()[1] += 1;
        }
        if let Some(p) = &kx.0 {
            let e = pools.entry(p.clone()).or_default();
            e[0] += 1;
            e[2] += (kx.0 != ky.0) as usize;
        }
        if let Some(p) = &ky.0 {
            pools.entry(p.clone()).or_default()[1] += 1;
        }
    }
    let moved = dist.values().map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0 / n;
    let frac = |x: usize, of: usize| if of == 0 { 0.0 } else { x as f64 / of as f64 };
    let routes = routes
        .into_iter()
        .map(|(route, c)| RouteImpact {
            route,
            requests_before: c[0],
            requests_after: c[1],
            route_changed: frac(c[2], c[0]),
            pool_changed: frac(c[3], c[0]),
            backend_changed: frac(c[4], c[0]),
        })
        .collect();
    let pools = pools
        .into_iter()
        .map(|(pool, c)| {
            let mut addrs: Vec<String> = Vec::new();
            for s in [old, new] {
                if let Some((_, p)) = s.pool(&pool) {
                    for be in &p.backends {
                        let a = be.addr.to_string();
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                }
            }
            let share = |s: &Snapshot, side: usize, addr: &str| -> Option<f64> {
                let (_, p) = s.pool(&pool)?;
                p.backends.iter().find(|b| b.addr.to_string() == addr)?;
                let total = c[side];
                let hits = dist
                    .get(&(Some(pool.clone()), Some(addr.to_owned())))
                    .map_or(0.0, |d| if side == 0 { d.0 } else { d.1 });
                Some(if total == 0 { 0.0 } else { hits / total as f64 })
            };
            PoolImpact {
                backends: addrs
                    .iter()
                    .map(|addr| BackendImpact {
                        addr: addr.clone(),
                        before: share(old, 0, addr),
                        after: share(new, 1, addr),
                    })
                    .collect(),
                pool_changed: frac(c[2], c[0]),
                requests_before: c[0],
                requests_after: c[1],
                pool,
            }
        })
        .collect();
    Impact {
        requests: requests.len(),
        moved,
        route_changed: frac(route_changed, requests.len()),
        pool_changed: frac(pool_changed, requests.len()),
        routes,
        pools,
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The human report.
pub fn render_human(d: &Diff, max_moved: Option<f64>) -> String {
    let mut out = format!("diff {} → {}\n", d.old_version, d.new_version);
    if d.changes.is_empty() {
        out.push_str("no semantic change\n");
    }
    for c in &d.changes {
        let sign = match c.op {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        };
        out.push_str(&format!("{sign} {} {}", c.kind, c.name));
        if let Some(f) = c.field {
            out.push_str(&format!(" {f}"));
        }
        match (&c.old, &c.new) {
            (Some(a), Some(b)) => out.push_str(&format!(": {a} → {b}")),
            (Some(a), None) => out.push_str(&format!(": {a}")),
            (None, Some(b)) => out.push_str(&format!(": {b}")),
            (None, None) => {}
        }
        out.push('\n');
    }
    if let Some(i) = &d.impact {
        out.push_str(&format!(
            "\nimpact over {} recorded requests:\n",
            i.requests
        ));
        out.push_str(&format!(
            "  moved: {} of requests land on a different pool or backend",
            pct(i.moved)
        ));
        if let Some(m) = max_moved {
            let verdict = if i.moved > m { "EXCEEDED" } else { "within" };
            out.push_str(&format!(" ({verdict} --max-moved {})", pct(m)));
        }
        out.push_str(&format!(
            "\n  route changed: {}, pool changed: {}\n",
            pct(i.route_changed),
            pct(i.pool_changed)
        ));
        for r in &i.routes {
            out.push_str(&format!(
                "  route {}: {} → {} requests; of its requests {} change route, {} change pool, {} change backend\n",
                r.route,
                r.requests_before,
                r.requests_after,
                pct(r.route_changed),
                pct(r.pool_changed),
                pct(r.backend_changed)
            ));
        }
        for p in &i.pools {
            out.push_str(&format!(
                "  pool {}: {} → {} requests ({} of its requests go to another pool)\n",
                p.pool,
                p.requests_before,
                p.requests_after,
                pct(p.pool_changed)
            ));
            for b in &p.backends {
                let s = |x: Option<f64>| x.map_or("—".to_owned(), pct);
                out.push_str(&format!(
                    "    {:<24} {:>6} → {:>6}\n",
                    b.addr,
                    s(b.before),
                    s(b.after)
                ));
            }
        }
    }
    out
}
