//! `diff`: what changes between two configs, by meaning (routes, pools,
//! backends, weights, algorithms, health, timeouts; never text lines), and
//! with a recorded traffic sample, the impact: which requests change route,
//! pool or backend, replayed through both configs by the simulator, and
//! which a shorter timeout would have cut.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{
    Algorithm, HashKey, HeaderValueMatch, HostMatch, Http2, Limits, Listener, LogTarget,
    MissingKey, PathMatch, Pool, Protocol, Route, RouteMatch, Tls, TlsVersion,
};
use fulcrum_config::standards::TrafficSpec;
use serde::Serialize;

use crate::simulate::{Outcome, replay};
use crate::traffic::{Recording, Unrecorded};

/// One semantic change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `route`, `pool`, `backend`, `admin`, `listener`, `access_log`,
    /// `guard` or `tests`.
    pub kind: &'static str,
    /// `added`, `removed` or `changed`.
    pub op: &'static str,
    /// `auth`, or `auth/127.0.0.1:9101` for a backend.
    pub name: String,
    /// What changed, for `changed`: `pool`, `match`, `order`,
    /// `failure_statuses`, `algorithm`, `protocol`, `weight`, `health`,
    /// `outlier`, `timeouts`, `retries`, `panic_threshold`, `slow_start`,
    /// `idle_per_backend`, `listen` (admin), `settings` (admin, access
    /// log, guard and tests).
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
    /// Changes that deserve a second look, and what replay could not see.
    pub warnings: Vec<Warning>,
    pub impact: Option<Impact>,
}

/// Something a reviewer should look at; never changes the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// `backends-replaced`, `unrecorded-header`, `unrecorded-cookie` or
    /// `unrecorded-field`.
    pub code: &'static str,
    pub message: String,
}

/// Compare `old` and `new`; with a recorded log, replay it through both.
pub fn diff(old: &Snapshot, new: &Snapshot, traffic: Option<(&Recording, &TrafficSpec)>) -> Diff {
    let mut warnings = replaced_backends(old, new);
    let impact = traffic.map(|(log, spec)| impact(old, new, log, spec));
    for u in impact.iter().flat_map(|i| &i.unrecorded) {
        warnings.push(Warning {
            code: match u.kind {
                "header" => "unrecorded-header",
                "field" => "unrecorded-field",
                _ => "unrecorded-cookie",
            },
            message: u.message(),
        });
    }
    Diff {
        old_version: old.version.to_string(),
        new_version: new.version.to_string(),
        changes: semantic(old, new),
        warnings,
        impact,
    }
}

/// A pool that keeps its name but none of its backends: the shape of
/// incident 2 (the auth servers swapped for servers that do not serve
/// auth). Legal, sometimes meant, never to go by unnoticed.
fn replaced_backends(old: &Snapshot, new: &Snapshot) -> Vec<Warning> {
    let mut out = Vec::new();
    for p in &old.pools {
        let Some((_, n)) = new.pool(&p.name) else {
            continue;
        };
        if !p
            .backends
            .iter()
            .any(|b| n.backends.iter().any(|x| x.addr == b.addr))
        {
            let addrs = |pool: &Pool| {
                pool.backends
                    .iter()
                    .map(|b| b.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(Warning {
                code: "backends-replaced",
                message: format!(
                    "every backend of pool `{}` is replaced at once ({} → {}): none of the new servers has served this pool; make sure they serve what it serves (a health check on a path that exercises it, a `fulcrum test` request, or allowed_backends in the standards), or replace them a few at a time",
                    p.name,
                    addrs(p),
                    addrs(n)
                ),
            });
        }
    }
    out
}

/// Every change from `old` to `new`, by meaning: routes, then pools and
/// their backends, then where Fulcrum listens, then the access log and the
/// guard. Nothing a config can say is left out: the guard reads this list
/// for what a change touched.
pub fn semantic(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = route_changes(old, new);
    out.extend(pool_changes(old, new));
    out.extend(listener_changes(old, new));
    out.extend(section_changes(old, new));
    out
}

fn change(
    kind: &'static str,
    op: &'static str,
    name: &str,
    field: Option<&'static str>,
    old: Option<String>,
    new: Option<String>,
) -> Change {
    Change {
        kind,
        op,
        name: name.to_owned(),
        field,
        old,
        new,
    }
}

/// Routes removed, added, or given another pool, match or position; a
/// route is the same route while it keeps its name.
fn route_changes(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    let pool_name = |s: &Snapshot, r: &Route| s.pools[r.pool].name.to_string();
    for (i, r) in old.routes.iter().enumerate() {
        let Some(j) = new.routes.iter().position(|n| n.name == r.name) else {
            out.push(change(
                "route",
                "removed",
                &r.name,
                None,
                Some(describe_match(&r.matcher)),
                None,
            ));
            continue;
        };
        let n = &new.routes[j];
        if pool_name(old, r) != pool_name(new, n) {
            out.push(change(
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
            out.push(change(
                "route",
                "changed",
                &r.name,
                Some("match"),
                Some(a),
                Some(b),
            ));
        }
        if i != j {
            out.push(change(
                "route",
                "changed",
                &r.name,
                Some("order"),
                Some((i + 1).to_string()),
                Some((j + 1).to_string()),
            ));
        }
        let (a, b) = (
            describe_statuses(&r.failure_statuses),
            describe_statuses(&n.failure_statuses),
        );
        if a != b {
            out.push(change(
                "route",
                "changed",
                &r.name,
                Some("failure_statuses"),
                Some(a),
                Some(b),
            ));
        }
    }
    for r in &new.routes {
        if !old.routes.iter().any(|o| o.name == r.name) {
            out.push(change(
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
    out
}

/// Pools removed, added, or kept under their name with other settings or
/// backends.
fn pool_changes(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    for p in &old.pools {
        match new.pool(&p.name) {
            None => out.push(change(
                "pool",
                "removed",
                &p.name,
                None,
                Some(describe_pool(p)),
                None,
            )),
            Some((_, n)) => {
                out.extend(setting_changes(p, n));
                out.extend(backend_changes(p, n));
            }
        }
    }
    for p in &new.pools {
        if old.pool(&p.name).is_none() {
            out.push(change(
                "pool",
                "added",
                &p.name,
                None,
                None,
                Some(describe_pool(p)),
            ));
        }
    }
    out
}

/// Each setting of a kept pool that differs, showing only the keys that
/// differ so a one-key edit reads as one.
fn setting_changes(p: &Pool, n: &Pool) -> Vec<Change> {
    let mut out = Vec::new();
    let mut field = |f, a: String, b: String| {
        if a != b {
            out.push(change(
                "pool",
                "changed",
                &p.name,
                Some(f),
                Some(a),
                Some(b),
            ));
        }
    };
    field("algorithm", describe_algorithm(p), describe_algorithm(n));
    field("protocol", protocol(p).into(), protocol(n).into());
    for (f, a, b) in [
        ("health", health(p), health(n)),
        ("outlier", outlier(p), outlier(n)),
        ("timeouts", timeouts(p), timeouts(n)),
        ("retries", retries(p), retries(n)),
    ] {
        let (a, b) = changed_keys(&a, &b);
        field(f, a, b);
    }
    field(
        "panic_threshold",
        p.panic_threshold.to_string(),
        n.panic_threshold.to_string(),
    );
    let slow_start = |p: &Pool| p.slow_start.map_or_else(|| "off".to_owned(), dur);
    field("slow_start", slow_start(p), slow_start(n));
    field(
        "idle_per_backend",
        p.idle_per_backend.to_string(),
        n.idle_per_backend.to_string(),
    );
    out
}

/// A kept pool's backends removed, reweighted or added; a backend is the
/// same backend while it keeps its address.
fn backend_changes(p: &Pool, n: &Pool) -> Vec<Change> {
    let mut out = Vec::new();
    for b in &p.backends {
        let name = format!("{}/{}", p.name, b.addr);
        match n.backends.iter().find(|x| x.addr == b.addr) {
            None => out.push(change(
                "backend",
                "removed",
                &name,
                None,
                Some(format!("weight {}", b.weight)),
                None,
            )),
            Some(x) if x.weight != b.weight => out.push(change(
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
            out.push(change(
                "backend",
                "added",
                &format!("{}/{}", p.name, b.addr),
                None,
                None,
                Some(format!("weight {}", b.weight)),
            ));
        }
    }
    // A `first` pool sends every request to its first available backend:
    // the same backends in another order are another primary.
    let order = |p: &Pool| {
        let addrs: Vec<String> = p.backends.iter().map(|b| b.addr.to_string()).collect();
        addrs.join(", ")
    };
    if matches!(n.algorithm, Algorithm::First) && order(p) != order(n) {
        out.push(change(
            "pool",
            "changed",
            &p.name,
            Some("order"),
            Some(order(p)),
            Some(order(n)),
        ));
    }
    out
}

/// Where Fulcrum listens: the admin API's address, token and TLS, and
/// listeners removed, rebound or added.
fn listener_changes(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    let listen = |s: &Snapshot| s.admin.as_ref().map(|a| a.listen.to_string());
    if listen(old) != listen(new) {
        out.push(change(
            "admin",
            "changed",
            "admin",
            Some("listen"),
            listen(old),
            listen(new),
        ));
    }
    let admin = |s: &Snapshot| -> Settings {
        let a = s.admin.as_ref();
        let token = a.and_then(|a| a.token_file.clone());
        let mut keys = vec![("token_file", token.unwrap_or_else(|| "none".into()))];
        keys.extend(tls(a.and_then(|a| a.tls.as_ref())));
        keys
    };
    if admin(old) != admin(new) {
        let (a, b) = changed_keys(&admin(old), &admin(new));
        out.push(change(
            "admin",
            "changed",
            "admin",
            Some("settings"),
            Some(a),
            Some(b),
        ));
    }
    for l in &old.listeners {
        match new.listeners.iter().find(|n| n.name == l.name) {
            None => out.push(change(
                "listener",
                "removed",
                &l.name,
                None,
                Some(l.bind.to_string()),
                None,
            )),
            Some(n) => out.extend(listener_setting_changes(l, n)),
        }
    }
    for l in &new.listeners {
        if !old.listeners.iter().any(|o| o.name == l.name) {
            out.push(change(
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

/// Each setting of a kept listener that differs, showing only the keys
/// that differ: a certificate renewal reads as its new expiry.
fn listener_setting_changes(l: &Listener, n: &Listener) -> Vec<Change> {
    let mut out = Vec::new();
    for (f, a, b) in [
        (
            "bind",
            vec![("bind", l.bind.to_string())],
            vec![("bind", n.bind.to_string())],
        ),
        ("timeouts", listener_timeouts(l), listener_timeouts(n)),
        ("limits", limits(&l.limits), limits(&n.limits)),
        ("http2", http2(&l.http2), http2(&n.http2)),
        ("tls", tls(l.tls.as_ref()), tls(n.tls.as_ref())),
    ] {
        if a != b {
            let (a, b) = if f == "bind" {
                (a[0].1.clone(), b[0].1.clone())
            } else {
                changed_keys(&a, &b)
            };
            out.push(change(
                "listener",
                "changed",
                &l.name,
                Some(f),
                Some(a),
                Some(b),
            ));
        }
    }
    out
}

fn listener_timeouts(l: &Listener) -> Settings {
    vec![
        ("header_timeout", dur(l.header_timeout)),
        ("idle_timeout", dur(l.idle_timeout)),
        ("body_timeout", dur(l.body_timeout)),
        ("min_body_rate", l.min_body_rate.to_string()),
        ("send_timeout", dur(l.send_timeout)),
    ]
}

fn limits(l: &Limits) -> Settings {
    vec![
        ("max_header_bytes", l.max_header_bytes.to_string()),
        ("max_headers", l.max_headers.to_string()),
        ("max_uri_bytes", l.max_uri_bytes.to_string()),
        ("max_body_bytes", l.max_body_bytes.to_string()),
        ("max_connections", l.max_connections.to_string()),
    ]
}

fn http2(h: &Http2) -> Settings {
    vec![
        ("enabled", h.enabled.to_string()),
        ("only", h.only.to_string()),
        (
            "max_concurrent_streams",
            h.max_concurrent_streams.to_string(),
        ),
        (
            "max_pending_reset_streams",
            h.max_pending_reset_streams.to_string(),
        ),
        (
            "max_local_error_reset_streams",
            h.max_local_error_reset_streams.to_string(),
        ),
        ("keep_alive_interval", dur(h.keep_alive_interval)),
        ("keep_alive_timeout", dur(h.keep_alive_timeout)),
    ]
}

/// Each certificate as its file, names and expiry (a renewal from the
/// same file shows as a later expiry), and the minimum version.
fn tls(t: Option<&Tls>) -> Settings {
    let Some(t) = t else {
        return vec![("tls", "none".to_owned())];
    };
    let certificates = t
        .certificates
        .iter()
        .map(|c| {
            let until = std::time::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(c.not_after).unwrap_or(0));
            format!(
                "{} ({}, until {})",
                c.cert_path,
                c.dns_names.join(" "),
                humantime::format_rfc3339_seconds(until)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let min_version = match t.min_version {
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    };
    vec![
        ("certificates", certificates),
        ("min_version", min_version.to_owned()),
    ]
}

/// The access log's and the guard's settings, each as one change listing
/// the keys that differ.
fn section_changes(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    for (kind, a, b) in [
        ("access_log", access_log(old), access_log(new)),
        ("guard", guard(old), guard(new)),
        ("tests", tests(old), tests(new)),
    ] {
        if a != b {
            let (a, b) = changed_keys(&a, &b);
            out.push(change(
                kind,
                "changed",
                kind,
                Some("settings"),
                Some(a),
                Some(b),
            ));
        }
    }
    out
}

/// The rule files every change must pass (`tests = [...]`): each by its
/// name, and whether its rules changed (a file edited under the same name
/// is another gate).
fn tests(s: &Snapshot) -> Settings {
    let files = s.tests.iter().map(|t| t.file.as_str()).collect::<Vec<_>>();
    let rules = s
        .tests
        .iter()
        .map(|t| {
            let text = format!("{:?}", (&t.rules, &t.traffic));
            format!(
                "{}: {} rule(s), content {}",
                t.file,
                t.rules.len(),
                fulcrum_config::content_version(&text)
            )
        })
        .collect::<Vec<_>>();
    vec![
        (
            "files",
            if files.is_empty() {
                "none".into()
            } else {
                files.join(", ")
            },
        ),
        ("rules", rules.join("; ")),
    ]
}

/// `401, 403, 5xx`.
fn describe_statuses(s: &fulcrum_config::snapshot::StatusSet) -> String {
    let classes = s.classes.iter().map(|c| format!("{c}xx"));
    let exact = s.exact.iter().map(u16::to_string);
    exact.chain(classes).collect::<Vec<_>>().join(", ")
}

/// As the config writes it.
fn protocol(p: &Pool) -> &'static str {
    match p.protocol {
        Protocol::Http1 => "http1",
        Protocol::H2 => "h2",
    }
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
        // A set: the same methods in another order match the same requests.
        let mut ms: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        ms.sort_unstable();
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
        Algorithm::Hash(h) => {
            let key = match &h.key {
                HashKey::Header(n) => format!("header:{n}"),
                HashKey::Cookie(c) => format!("cookie:{c}"),
                HashKey::ClientIp => "client_ip".into(),
                HashKey::Path => "path".into(),
            };
            let missing = match h.on_missing {
                MissingKey::HashEmpty => "hash_empty",
                MissingKey::Random => "random",
            };
            format!("hash on {key} (on_missing {missing})")
        }
        a => a.name().to_owned(),
    }
}

/// A setting as `key value` pairs, in config words, for [`changed_keys`].
type Settings = Vec<(&'static str, String)>;

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn health(p: &Pool) -> Settings {
    match &p.health {
        None => Vec::new(),
        Some(h) => vec![
            ("path", h.path.clone()),
            ("interval", dur(h.interval)),
            ("timeout", dur(h.timeout)),
            ("healthy_threshold", h.healthy_threshold.to_string()),
            ("unhealthy_threshold", h.unhealthy_threshold.to_string()),
            (
                "expect_status",
                format!("{}-{}", h.expect_status.0, h.expect_status.1),
            ),
        ],
    }
}

fn outlier(p: &Pool) -> Settings {
    match &p.outlier {
        None => vec![("enabled", "false".into())],
        Some(o) => vec![
            ("enabled", "true".into()),
            ("consecutive_failures", o.consecutive_failures.to_string()),
            ("base_ejection", dur(o.base_ejection)),
            ("max_ejection", dur(o.max_ejection)),
            ("max_ejected_fraction", o.max_ejected_fraction.to_string()),
        ],
    }
}

fn access_log(s: &Snapshot) -> Settings {
    let Some(l) = &s.access_log else {
        return Vec::new();
    };
    let names = |h: &[http::HeaderName]| {
        h.iter()
            .map(http::HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let path = match &l.target {
        LogTarget::Stdout => "stdout".to_owned(),
        LogTarget::File(p) => p.display().to_string(),
    };
    // The lists only when they name something: `redact ` says nothing.
    let mut out = vec![("path", path)];
    out.extend(
        [
            ("redact", names(&l.redact)),
            ("headers", names(&l.headers)),
            ("cookies", l.cookies.join(" ")),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty()),
    );
    out
}

fn guard(s: &Snapshot) -> Settings {
    let g = &s.guard;
    vec![
        ("enabled", g.enabled.to_string()),
        ("rollback", g.rollback.to_string()),
        ("window", dur(g.window)),
        ("probation", dur(g.probation)),
        ("attribution", dur(g.attribution)),
        ("min_requests", g.min_requests.to_string()),
        ("confidence", g.confidence.to_string()),
        ("min_effect", g.min_effect.to_string()),
        ("latency_ratio", g.latency_ratio.to_string()),
        ("max_backend_share", g.max_backend_share.to_string()),
        ("min_healthy_fraction", g.min_healthy_fraction.to_string()),
        ("consecutive", g.consecutive.to_string()),
        (
            "webhook",
            g.webhook.clone().unwrap_or_else(|| "none".into()),
        ),
    ]
}

fn timeouts(p: &Pool) -> Settings {
    let t = &p.timeouts;
    vec![
        ("connect", dur(t.connect)),
        ("response", dur(t.response)),
        ("idle", dur(t.idle)),
        ("tunnel", dur(t.tunnel)),
    ]
}

fn retries(p: &Pool) -> Settings {
    let r = &p.retries;
    vec![
        ("attempts", r.attempts.to_string()),
        ("budget", r.budget.to_string()),
        ("min_concurrent", r.min_concurrent.to_string()),
    ]
}

/// `connect 2s, response 30s` → `connect 10ms, response 50ms`: only the
/// keys whose value differs (all of a side that has keys the other lacks,
/// as when a health check is added). Equal settings give two equal strings.
fn changed_keys(a: &Settings, b: &Settings) -> (String, String) {
    let same_keys = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0);
    let show = |s: &Settings, keep: &dyn Fn(usize) -> bool| {
        if s.is_empty() {
            return "none".to_owned();
        }
        s.iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (k, v))| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !same_keys {
        return (show(a, &|_| true), show(b, &|_| true));
    }
    let differs = |i: usize| a[i].1 != b[i].1;
    (show(a, &differs), show(b, &differs))
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
    /// The share of replayed requests that land on another pool or
    /// backend: what `--max-moved` gates. A request whose backend its pool
    /// decides from the request itself (`hash`, `first`) moves when that
    /// backend changes; one its pool draws for (`round_robin`, `random`,
    /// `least_request`) has no backend of its own and moves by as much as
    /// the pool's spread over its backends changes.
    pub moved: f64,
    /// How far the spread of all requests over (pool, backend) changes: the
    /// total variation distance between the two replays' distributions. A
    /// change of hash key keeps it near 0 while moving most clients, so it
    /// is reported beside `moved`, never gated.
    pub distribution_shift: f64,
    /// Share of all requests whose route changes / whose pool changes.
    pub route_changed: f64,
    pub pool_changed: f64,
    pub routes: Vec<RouteImpact>,
    pub pools: Vec<PoolImpact>,
    /// Pools whose response timeout gets shorter, with the recorded
    /// requests that took longer than the new one.
    pub timeouts: Vec<TimeoutImpact>,
    /// Headers and cookies the configs read that the log did not record.
    pub unrecorded: Vec<Unrecorded>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteImpact {
    pub route: String,
    pub requests_before: usize,
    pub requests_after: usize,
    /// Of the requests this route took before, the share that now take
    /// another route / reach another pool / land on another pool or
    /// backend (moved, as `Impact::moved`).
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
    /// Share of the pool's requests (before) that move, as `Impact::moved`.
    pub moved: f64,
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

/// A shorter response timeout, against the recorded durations of the
/// requests the pool serves under both configs.
#[derive(Debug, Clone, Serialize)]
pub struct TimeoutImpact {
    pub pool: String,
    /// `response`.
    pub timeout: &'static str,
    pub old: String,
    pub new: String,
    /// Recorded requests to the pool, under both configs, with a duration.
    pub requests: usize,
    /// Of those, how many took longer than the new timeout. An upper bound
    /// of the requests it would cut: the recorded duration runs to the last
    /// byte sent, the timeout only to the response head.
    pub over: usize,
    pub share: f64,
}

/// Requests per (pool, backend address), before and after.
type Distribution = BTreeMap<(Option<String>, Option<String>), (f64, f64)>;

/// Where a request may land in its pool: certain when the request alone
/// decided its backend, else the pool's weight shares (what round robin,
/// random and least_request all spread towards).
fn spread(s: &Snapshot, o: &Outcome) -> Vec<(SocketAddr, f64)> {
    let (Some(p), Some(picked)) = (o.pool, o.backend) else {
        return Vec::new();
    };
    let pool = &s.pools[p];
    if picked.sticky {
        return vec![(pool.backends[picked.index].addr, 1.0)];
    }
    let total: f64 = pool.backends.iter().map(|b| f64::from(b.weight)).sum();
    pool.backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (b.addr, f64::from(b.weight) / total))
        .collect()
}

/// Total variation distance: the least share that must move to turn one
/// spread into the other (1 between nothing and somewhere).
fn tv(a: &[(SocketAddr, f64)], b: &[(SocketAddr, f64)]) -> f64 {
    let mass = |x: &[(SocketAddr, f64)]| x.iter().map(|p| p.1).sum::<f64>();
    let at = |x: &[(SocketAddr, f64)], addr: SocketAddr| {
        x.iter().find(|p| p.0 == addr).map_or(0.0, |p| p.1)
    };
    let mut d: f64 = a.iter().map(|&(addr, p)| (p - at(b, addr)).abs()).sum();
    d += b
        .iter()
        .filter(|p| !a.iter().any(|q| q.0 == p.0))
        .map(|p| p.1)
        .sum::<f64>();
    (d + (mass(a) - mass(b)).abs()) / 2.0
}

/// Replay the log's requests through both snapshots and compare where they go.
pub fn impact(old: &Snapshot, new: &Snapshot, log: &Recording, spec: &TrafficSpec) -> Impact {
    let requests = &log.requests;
    let a = replay(old, requests, spec, true);
    let b = replay(new, requests, spec, true);
    let n = requests.len().max(1) as f64;
    let key = |s: &Snapshot, o: &Outcome| {
        let pool = o.pool.map(|p| s.pools[p].name.to_string());
        let backend = match (o.pool, o.backend) {
            (Some(p), Some(i)) => Some(s.pools[p].backends[i.index].addr.to_string()),
            _ => None,
        };
        (pool, backend)
    };
    let route_name = |s: &Snapshot, o: &Outcome| o.route.map(|r| s.routes[r].name.to_string());

    let mut dist = Distribution::new();
    let (mut route_changed, mut pool_changed, mut moved) = (0usize, 0usize, 0.0f64);
    // Per route: before, after, route changed, pool changed; and moved.
    let mut routes: BTreeMap<String, ([usize; 4], f64)> = BTreeMap::new();
    // Per pool: before, after, pool changed; and moved.
    let mut pools: BTreeMap<String, ([usize; 3], f64)> = BTreeMap::new();
    for (x, y) in a.iter().zip(&b) {
        let (kx, ky) = (key(old, x), key(new, y));
        dist.entry(kx.clone()).or_default().0 += 1.0;
        dist.entry(ky.clone()).or_default().1 += 1.0;
        let (rx, ry) = (route_name(old, x), route_name(new, y));
        let pool_moved = kx.0 != ky.0;
        let m = if pool_moved {
            1.0
        } else {
            tv(&spread(old, x), &spread(new, y))
        };
        route_changed += (rx != ry) as usize;
        pool_changed += pool_moved as usize;
        moved += m;
        if let Some(r) = &rx {
            let e = routes.entry(r.clone()).or_default();
            e.0[0] += 1;
            e.0[2] += (rx != ry) as usize;
            e.0[3] += pool_moved as usize;
            e.1 += m;
        }
        if let Some(r) = &ry {
            routes.entry(r.clone()).or_default().0[1] += 1;
        }
        if let Some(p) = &kx.0 {
            let e = pools.entry(p.clone()).or_default();
            e.0[0] += 1;
            e.0[2] += pool_moved as usize;
            e.1 += m;
        }
        if let Some(p) = &ky.0 {
            pools.entry(p.clone()).or_default().0[1] += 1;
        }
    }
    let distribution_shift = dist.values().map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0 / n;
    let frac = |x: f64, of: usize| if of == 0 { 0.0 } else { x / of as f64 };
    let routes = routes
        .into_iter()
        .map(|(route, (c, m))| RouteImpact {
            route,
            requests_before: c[0],
            requests_after: c[1],
            route_changed: frac(c[2] as f64, c[0]),
            pool_changed: frac(c[3] as f64, c[0]),
            backend_changed: frac(m, c[0]),
        })
        .collect();
    let pools = pools
        .into_iter()
        .map(|(pool, (c, m))| {
            let backends = backend_shares(old, new, &pool, &dist, c);
            PoolImpact {
                backends,
                pool_changed: frac(c[2] as f64, c[0]),
                moved: frac(m, c[0]),
                requests_before: c[0],
                requests_after: c[1],
                pool,
            }
        })
        .collect();
    let mut unrecorded = log.unrecorded(new);
    for mut u in log.unrecorded(old) {
        let read_by = u.read_by.iter().map(|r| format!("old {r}"));
        match unrecorded
            .iter_mut()
            .find(|x| x.kind == u.kind && x.name == u.name)
        {
            Some(x) => x.read_by.extend(read_by),
            None => {
                u.read_by = read_by.collect();
                unrecorded.push(u);
            }
        }
    }
    Impact {
        requests: requests.len(),
        moved: moved / n,
        distribution_shift,
        route_changed: frac(route_changed as f64, requests.len()),
        pool_changed: frac(pool_changed as f64, requests.len()),
        routes,
        pools,
        timeouts: timeout_cuts(old, new, log, &a, &b),
        unrecorded,
    }
}

/// Each backend's share of `pool`'s requests on each side.
fn backend_shares(
    old: &Snapshot,
    new: &Snapshot,
    pool: &str,
    dist: &Distribution,
    counts: [usize; 3],
) -> Vec<BackendImpact> {
    let mut addrs: Vec<String> = Vec::new();
    for s in [old, new] {
        if let Some((_, p)) = s.pool(pool) {
            for be in &p.backends {
                let a = be.addr.to_string();
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
        }
    }
    let share = |s: &Snapshot, side: usize, addr: &str| -> Option<f64> {
        let (_, p) = s.pool(pool)?;
        p.backends.iter().find(|b| b.addr.to_string() == addr)?;
        let total = counts[side];
        let hits = dist
            .get(&(Some(pool.to_owned()), Some(addr.to_owned())))
            .map_or(0.0, |d| if side == 0 { d.0 } else { d.1 });
        Some(if total == 0 { 0.0 } else { hits / total as f64 })
    };
    addrs
        .iter()
        .map(|addr| BackendImpact {
            addr: addr.clone(),
            before: share(old, 0, addr),
            after: share(new, 1, addr),
        })
        .collect()
}

/// For each pool whose response timeout gets shorter: of the recorded
/// requests it serves under both configs, those that took longer than the
/// new timeout (incident 3: timeouts cut below what logins need).
fn timeout_cuts(
    old: &Snapshot,
    new: &Snapshot,
    log: &Recording,
    a: &[Outcome],
    b: &[Outcome],
) -> Vec<TimeoutImpact> {
    let mut out = Vec::new();
    for (j, n) in new.pools.iter().enumerate() {
        let Some((i, o)) = old.pool(&n.name) else {
            continue;
        };
        let (before, after) = (o.timeouts.response, n.timeouts.response);
        if after >= before {
            continue;
        }
        let limit_ms = after.as_secs_f64() * 1000.0;
        let durations: Vec<f64> = log
            .requests
            .iter()
            .zip(a.iter().zip(b))
            .filter(|(_, (x, y))| x.pool == Some(i) && y.pool == Some(j))
            .filter_map(|(r, _)| r.duration_ms)
            .collect();
        if durations.is_empty() {
            continue;
        }
        let over = durations.iter().filter(|&&d| d > limit_ms).count();
        out.push(TimeoutImpact {
            pool: n.name.to_string(),
            timeout: "response",
            old: dur(before),
            new: dur(after),
            requests: durations.len(),
            over,
            share: over as f64 / durations.len() as f64,
        });
    }
    out
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
            "  moved: {} of requests land on another pool or backend",
            pct(i.moved)
        ));
        if let Some(m) = max_moved {
            let verdict = if i.moved > m { "EXCEEDED" } else { "within" };
            out.push_str(&format!(" ({verdict} --max-moved {})", pct(m)));
        }
        out.push_str(&format!(
            "\n  distribution shift: {} (how far the spread over pools and backends changes; not gated)",
            pct(i.distribution_shift)
        ));
        out.push_str(&format!(
            "\n  route changed: {}, pool changed: {}\n",
            pct(i.route_changed),
            pct(i.pool_changed)
        ));
        for r in &i.routes {
            out.push_str(&format!(
                "  route {}: {} → {} requests; of its requests {} change route, {} change pool, {} move\n",
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
                "  pool {}: {} → {} requests ({} of its requests go to another pool, {} move)\n",
                p.pool,
                p.requests_before,
                p.requests_after,
                pct(p.pool_changed),
                pct(p.moved)
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
        for t in &i.timeouts {
            out.push_str(&format!(
                "  pool {} timeouts.{}: {} → {}: {} of {} recorded requests ({}) took longer than {}: up to that many would be cut (504)\n",
                t.pool, t.timeout, t.old, t.new, t.over, t.requests, pct(t.share), t.new
            ));
        }
    }
    for w in &d.warnings {
        out.push_str(&format!("warning[{}]: {}\n", w.code, w.message));
    }
    out
}
