//! The rule language of standards and config tests: a TOML file of
//! `[[rule]]` tables (and an optional `[traffic]` section describing the
//! synthetic traffic sample), parsed with spans and every problem collected
//! in the same [`Diagnostic`] form as the config. Pure, like the rest of the
//! crate: evaluating rules needs the balancer and lives in `fulcrum-safety`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::diag::{Diagnostic, Diags, suggest};
use crate::raw::item;
use crate::validate::ALGORITHMS;

/// A parsed standards or tests file.
#[derive(Debug, Clone, Default)]
pub struct Standards {
    pub file: String,
    pub rules: Vec<Rule>,
    pub traffic: TrafficSpec,
}

/// Where something is in a file; 1-based.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

/// One `[[rule]]`: a name, and any number of assertions, all of which must
/// hold. Absent assertions are not checked.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// `rule[2]`.
    pub key_path: String,
    /// The rule's `name = …` line.
    pub location: Location,
    /// Each assertion key present (`expect_pool`, `max_backend_share`, …)
    /// and where it is, in file order: reports point at the broken one.
    pub assertions: Vec<(&'static str, Location)>,

    // Routing: where `request` goes.
    pub request: Option<RuleRequest>,
    pub expect_route: Option<String>,
    pub expect_pool: Option<String>,
    /// For a request that must be refused: 404 when no route matches it,
    /// 503 when its pool has no backend with weight above zero.
    pub expect_status: Option<u16>,
    /// Whether pre-flight sends `request` to the new backends of the pool
    /// it routes to: `probe`, by default only for GET and HEAD, never for a
    /// request that must be refused.
    pub probe: bool,
    /// The body pre-flight sends with `request`.
    pub body: Option<String>,

    // Pools: which pools the pool assertions apply to.
    pub pool: Option<PoolSelector>,
    pub min_backends: Option<usize>,
    /// The largest share of a pool's requests any one backend may receive,
    /// simulated by driving the real balancer over the traffic sample.
    pub max_backend_share: Option<f64>,
    /// Allowed algorithm names.
    pub algorithms: Option<Vec<String>>,
    pub require_health_check: bool,
    pub require_outlier_detection: bool,
    pub connect_timeout: Option<DurationRange>,
    pub response_timeout: Option<DurationRange>,
    pub idle_timeout: Option<DurationRange>,
    /// Every backend of the pool must be one of these (incident 2: the auth
    /// servers swapped for servers that do not serve auth).
    pub allowed_backends: Option<Vec<AddrPattern>>,

    // Global.
    pub every_pool_used: bool,
    pub no_shadowed_routes: bool,
    pub admin_on_loopback: bool,
    pub require_version: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSelector {
    /// `pool = "*"`: every pool of the config.
    All,
    Named(String),
}

/// A backend address a rule allows: one `IP:PORT`, any port of one IP,
/// or a CIDR block (`10.0.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrPattern {
    Exact(SocketAddr),
    Ip(IpAddr),
    Net(IpAddr, u8),
}

impl AddrPattern {
    pub fn parse(text: &str) -> Result<AddrPattern, String> {
        let t = text.trim();
        if let Ok(a) = t.parse::<SocketAddr>() {
            return Ok(AddrPattern::Exact(a));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(AddrPattern::Ip(ip));
        }
        let (ip, len) = t
            .split_once('/')
            .ok_or_else(|| format!("`{t}` is not an IP, IP:PORT or CIDR block"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{ip}` in `{t}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => Ok(AddrPattern::Net(ip, n)),
            _ => Err(format!(
                "`/{len}` in `{t}` is not a prefix length (0 to {max})"
            )),
        }
    }

    pub fn matches(&self, addr: SocketAddr) -> bool {
        match *self {
            AddrPattern::Exact(a) => a == addr,
            AddrPattern::Ip(ip) => ip == addr.ip(),
            AddrPattern::Net(net, len) => match (net, addr.ip()) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            },
        }
    }
}

impl std::fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrPattern::Exact(a) => write!(f, "{a}"),
            AddrPattern::Ip(ip) => write!(f, "{ip}"),
            AddrPattern::Net(ip, len) => write!(f, "{ip}/{len}"),
        }
    }
}

/// Inclusive bounds; either may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Option<Duration>,
    pub max: Option<Duration>,
}

impl DurationRange {
    pub fn contains(&self, d: Duration) -> bool {
        self.min.is_none_or(|m| d >= m) && self.max.is_none_or(|m| d <= m)
    }
}

impl std::fmt::Display for DurationRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
        match (show(self.min), show(self.max)) {
            (Some(a), Some(b)) => write!(f, "{a} to {b}"),
            (Some(a), None) => write!(f, "at least {a}"),
            (None, Some(b)) => write!(f, "at most {b}"),
            (None, None) => write!(f, "any"),
        }
    }
}

/// A request written in a rule: `"POST http://app.example.com/auth/login"`
/// plus `headers`.
#[derive(Debug, Clone)]
pub struct RuleRequest {
    /// As written, for messages.
    pub text: String,
    pub method: Method,
    /// Lower-case, without port; `None` for a path-only request.
    pub host: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
}

/// How the synthetic traffic sample is drawn (see `docs/standards.md`).
/// Only what a team declares is in it: a header or cookie not listed here is
/// absent from every synthetic request, so a pool hashing on it is seen
/// sending all of them to one backend, as it would in production if the
/// header were not really sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSpec {
    pub requests: usize,
    /// Distinct client IPs, drawn uniformly.
    pub clients: usize,
    /// Distinct paths, drawn uniformly.
    pub paths: usize,
    /// Header name → how many distinct values it takes, drawn uniformly.
    pub headers: BTreeMap<String, usize>,
    /// Cookie name → how many distinct values it takes.
    pub cookies: BTreeMap<String, usize>,
    /// Requests a pool is modelled to hold in flight, across its backends:
    /// each completes after this many later picks (for `least_request`).
    pub concurrency: usize,
    pub seed: u64,
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            requests: 10_000,
            clients: 1_000,
            paths: 1_000,
            headers: BTreeMap::new(),
            cookies: BTreeMap::new(),
            concurrency: 8,
            seed: 1,
        }
    }
}

/// Every key a `[[rule]]` takes besides `name`, as docs/standards.md lists
/// them; a test holds it, with `REFUSED_RULE_KEYS`, to `RawRule`.
pub const RULE_KEYS: &[&str] = &[
    "request",
    "headers",
    "expect_route",
    "expect_pool",
    "expect_status",
    "pool",
    "min_backends",
    "max_backend_share",
    "algorithms",
    "require_health_check",
    "require_outlier_detection",
    "connect_timeout",
    "response_timeout",
    "idle_timeout",
    "allowed_backends",
    "every_pool_used",
    "no_shadowed_routes",
    "admin_on_loopback",
    "require_version",
    "probe",
    "body",
];

/// Keys `RawRule` reads only to refuse them with their reason, which a
/// bare "unknown key" would not give: `client_ip` was once documented as
/// the rule request's client address, yet no assertion depends on it.
pub const REFUSED_RULE_KEYS: &[&str] = &["client_ip"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    name: Spanned<String>,
    request: Option<Spanned<String>>,
    headers: Option<BTreeMap<String, Spanned<String>>>,
    /// Accepted only to be refused with a reason (`REFUSED_RULE_KEYS`).
    client_ip: Option<Spanned<String>>,
    expect_route: Option<Spanned<String>>,
    expect_pool: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    probe: Option<Spanned<bool>>,
    body: Option<Spanned<String>>,
    pool: Option<Spanned<String>>,
    min_backends: Option<Spanned<i64>>,
    max_backend_share: Option<Spanned<f64>>,
    algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    require_health_check: Option<Spanned<bool>>,
    require_outlier_detection: Option<Spanned<bool>>,
    connect_timeout: Option<Spanned<Vec<Spanned<String>>>>,
    response_timeout: Option<Spanned<Vec<Spanned<String>>>>,
    idle_timeout: Option<Spanned<Vec<Spanned<String>>>>,
    allowed_backends: Option<Spanned<Vec<Spanned<String>>>>,
    every_pool_used: Option<Spanned<bool>>,
    no_shadowed_routes: Option<Spanned<bool>>,
    admin_on_loopback: Option<Spanned<bool>>,
    require_version: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTraffic {
    requests: Option<Spanned<i64>>,
    clients: Option<Spanned<i64>>,
    paths: Option<Spanned<i64>>,
    headers: Option<BTreeMap<String, Spanned<i64>>>,
    cookies: Option<BTreeMap<String, Spanned<i64>>>,
    concurrency: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
}

const TOP_KEYS: &[&str] = &["rule", "traffic"];

/// The outcome of parsing one rules file.
#[derive(Debug)]
pub struct CheckedStandards {
    /// Present exactly when there is no error.
    pub standards: Option<Standards>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parse a standards or tests file, reporting every problem at once.
pub fn parse_standards(file: &str, source: &str) -> CheckedStandards {
    let mut d = Diags::new(file, source);
    let mut standards = Standards {
        file: file.to_owned(),
        ..Standards::default()
    };
    match DeTable::parse(source) {
        Err(e) => crate::raw::syntax_error(&mut d, &e),
        Ok(root) => {
            for (key, value) in root.get_ref() {
                match key.get_ref().as_ref() {
                    "rule" => match value.get_ref().as_array() {
                        Some(rules) => {
                            for (i, v) in rules.iter().enumerate() {
                                let it = item::<RawRule>(&mut d, v, format!("rule[{i}]"));
                                if let Some(raw) = it.value.filter(|_| it.clean)
                                    && let Some(rule) = rule(&mut d, file, &it.path, raw)
                                {
                                    standards.rules.push(rule);
                                }
                            }
                        }
                        None => {
                            d.error(
                                "invalid-type",
                                Some(value.span()),
                                "rule",
                                "expected an array of tables",
                            )
                            .hint("write each rule as `[[rule]]`, with two brackets");
                        }
                    },
                    "traffic" => {
                        let it = item::<RawTraffic>(&mut d, value, "traffic".into());
                        if let Some(raw) = it.value.filter(|_| it.clean)
                            && let Some(t) = traffic(&mut d, raw)
                        {
                            standards.traffic = t;
                        }
                    }
                    other => {
                        d.error(
                            "unknown-key",
                            Some(key.span()),
                            other,
                            format!("unknown key `{other}`"),
                        )
                        .hint(suggest(other, TOP_KEYS, "top-level keys"));
                    }
                }
            }
        }
    }
    // An emptied or truncated rules file would pass every gate unseen.
    if standards.rules.is_empty() && !d.has_errors() {
        d.error(
            "no-rules",
            None,
            "rule",
            "the file has no `[[rule]]`: it would pass anything",
        )
        .hint("add the rules it should hold, or stop naming the file");
    }
    let failed = d.has_errors();
    let diagnostics = d.into_sorted();
    CheckedStandards {
        standards: (!failed).then_some(standards),
        diagnostics,
    }
}

fn loc(d: &Diags<'_>, file: &str, span: std::ops::Range<usize>) -> Location {
    let (line, col) = d.line_col(span.start);
    Location {
        file: file.to_owned(),
        line,
        col,
    }
}

/// A raw `[[rule]]` checked into a [`Rule`], or `None` once any of its
/// parts reported an error.
fn rule(d: &mut Diags<'_>, file: &str, p: &str, raw: RawRule) -> Option<Rule> {
    let errors_before = error_count(d);
    let assertions = assertions(d, file, &raw);
    let name = rule_name(d, p, &raw);
    let routing = routing(d, p, &raw);
    let pools = pool_assertions(d, p, &raw);
    let rule = Rule {
        name,
        key_path: p.to_owned(),
        location: loc(d, file, raw.name.span()),
        assertions,
        request: routing.request,
        expect_route: routing.expect_route,
        expect_pool: routing.expect_pool,
        expect_status: routing.expect_status,
        probe: routing.probe,
        body: routing.body,
        pool: pools.pool,
        min_backends: pools.min_backends,
        max_backend_share: pools.max_backend_share,
        algorithms: pools.algorithms,
        require_health_check: pools.require_health_check,
        require_outlier_detection: pools.require_outlier_detection,
        connect_timeout: pools.connect_timeout,
        response_timeout: pools.response_timeout,
        idle_timeout: pools.idle_timeout,
        allowed_backends: pools.allowed_backends,
        every_pool_used: flag(&raw.every_pool_used),
        no_shadowed_routes: flag(&raw.no_shadowed_routes),
        admin_on_loopback: flag(&raw.admin_on_loopback),
        require_version: flag(&raw.require_version),
    };
    if rule.assertions.is_empty() && error_count(d) == errors_before {
        d.error(
            "rule-without-assertion",
            Some(raw.name.span()),
            p,
            format!("rule `{}` asserts nothing", rule.name),
        )
        .hint("add an assertion such as `expect_pool`, `max_backend_share` or `every_pool_used = true`");
    }
    let ok = error_count(d) == errors_before;
    ok.then_some(rule)
}

/// Errors so far; a rule compares counts because `d` holds the whole file's.
fn error_count(d: &Diags<'_>) -> usize {
    d.list.iter().filter(|x| x.is_error()).count()
}

/// An absent flag asserts nothing, like `false`.
fn flag(f: &Option<Spanned<bool>>) -> bool {
    f.as_ref().is_some_and(|b| *b.get_ref())
}

/// Each assertion key present and where, in file order: reports point at
/// the broken one.
fn assertions(d: &Diags<'_>, file: &str, raw: &RawRule) -> Vec<(&'static str, Location)> {
    let mut assertions = Vec::new();
    macro_rules! note {
        ($field:ident) => {
            if let Some(v) = &raw.$field {
                assertions.push((stringify!($field), loc(d, file, v.span())));
            }
        };
    }
    // A flag set to `false` asks nothing: no assertion.
    macro_rules! flag {
        ($field:ident) => {
            if let Some(v) = raw.$field.as_ref().filter(|v| *v.get_ref()) {
                assertions.push((stringify!($field), loc(d, file, v.span())));
            }
        };
    }
    note!(expect_route);
    note!(expect_pool);
    note!(expect_status);
    note!(min_backends);
    note!(max_backend_share);
    note!(algorithms);
    flag!(require_health_check);
    flag!(require_outlier_detection);
    note!(connect_timeout);
    note!(response_timeout);
    note!(idle_timeout);
    note!(allowed_backends);
    flag!(every_pool_used);
    flag!(no_shadowed_routes);
    flag!(admin_on_loopback);
    flag!(require_version);
    assertions.sort_by_key(|(_, l)| (l.line, l.col));
    assertions
}

/// The rule's name, trimmed; reports name it, so an empty one is an error.
fn rule_name(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> String {
    let name = raw.name.get_ref().trim().to_owned();
    if name.is_empty() {
        d.error(
            "invalid-value",
            Some(raw.name.span()),
            format!("{p}.name"),
            "the rule's name is empty",
        )
        .hint("name the rule after what it protects, e.g. \"logins reach the auth pool\"");
    }
    name
}

/// The routing part of a [`Rule`], checked.
struct RoutingAssertions {
    request: Option<RuleRequest>,
    expect_route: Option<String>,
    expect_pool: Option<String>,
    expect_status: Option<u16>,
    probe: bool,
    body: Option<String>,
}

/// The routing part: `request`, where it must go and what pre-flight sends.
fn routing(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> RoutingAssertions {
    let request = raw
        .request
        .as_ref()
        .and_then(|r| request(d, r, raw.headers.as_ref(), &format!("{p}.request")));
    if let Some(ip) = &raw.client_ip {
        // Routing, pool choice and Fulcrum's own 404/503 do not read the
        // client address, so a value here would promise a test it is not.
        d.error(
            "unknown-key",
            Some(ip.span()),
            format!("{p}.client_ip"),
            "`client_ip` has no effect",
        )
        .hint("rules assert routes, pools and statuses, which do not depend on the client's address; remove it");
    }
    request_pairing(d, p, raw);
    let probe = probe(d, p, raw, request.as_ref());
    let expect_status = expect_status(d, p, raw);
    RoutingAssertions {
        request,
        expect_route: raw
            .expect_route
            .as_ref()
            .map(|s| s.get_ref().trim().to_owned()),
        expect_pool: raw
            .expect_pool
            .as_ref()
            .map(|s| s.get_ref().trim().to_owned()),
        expect_status,
        probe,
        body: raw.body.as_ref().map(|b| b.get_ref().clone()),
    }
}

/// Errors for a `request` that asserts nothing and for routing keys that
/// have no `request` to apply to.
fn request_pairing(d: &mut Diags<'_>, p: &str, raw: &RawRule) {
    let routing =
        raw.expect_route.is_some() || raw.expect_pool.is_some() || raw.expect_status.is_some();
    if routing && raw.request.is_none() {
        d.error(
            "missing-key",
            Some(raw.name.span()),
            format!("{p}.request"),
            "`expect_route`, `expect_pool` and `expect_status` need a `request` to route",
        )
        .hint("add `request = \"METHOD URL\"`, e.g. \"POST http://app.example.com/auth/login\"");
    }
    if raw.request.is_some() && !routing {
        d.error(
            "missing-key",
            Some(raw.request.as_ref().map_or(raw.name.span(), |r| r.span())),
            format!("{p}.request"),
            "a `request` without `expect_route`, `expect_pool` or `expect_status` asserts nothing",
        )
        .hint("add `expect_pool = \"NAME\"` (or `expect_route` / `expect_status`)");
    }
    if raw.headers.is_some() && raw.request.is_none() {
        d.error(
            "missing-key",
            Some(raw.name.span()),
            format!("{p}.request"),
            "`headers` describe a `request`, and this rule has none",
        )
        .hint("add `request = \"METHOD URL\"` or remove them");
    }
}

/// `expect_status`, which must be a status Fulcrum answers by itself
/// (safety/src/rules.rs `refusal`): 404 when no route matches, 503 when the
/// pool has no backend with weight above 0. Any other status comes from a
/// backend, which rules never reach, so a rule expecting it could never
/// pass.
fn expect_status(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<u16> {
    raw.expect_status.as_ref().and_then(|s| {
        let v = *s.get_ref();
        // 503 would need a pool with no backend of weight above 0, which
        // no valid config has (`zero-weight`): it could never pass.
        if v == 404 {
            Some(v as u16)
        } else {
            d.error(
                "out-of-range",
                Some(s.span()),
                format!("{p}.expect_status"),
                format!("{v} is never a refusal by Fulcrum a rule can see: only 404 can pass"),
            )
            .hint("write 404 (no route matches); a backend's own status is pre-flight's to probe, not a rule's");
            None
        }
    })
}

/// The pool part of a [`Rule`], checked.
struct PoolAssertions {
    pool: Option<PoolSelector>,
    min_backends: Option<usize>,
    max_backend_share: Option<f64>,
    algorithms: Option<Vec<String>>,
    require_health_check: bool,
    require_outlier_detection: bool,
    connect_timeout: Option<DurationRange>,
    response_timeout: Option<DurationRange>,
    idle_timeout: Option<DurationRange>,
    allowed_backends: Option<Vec<AddrPattern>>,
}

/// The pool part: which pools, and what must hold of each.
fn pool_assertions(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> PoolAssertions {
    let pool = pool_selector(d, p, raw);
    let min_backends = min_backends(d, p, raw);
    let max_backend_share = max_backend_share(d, p, raw);
    let algorithms = algorithms(d, p, raw);
    let connect_timeout = raw
        .connect_timeout
        .as_ref()
        .and_then(|r| range(d, r, &format!("{p}.connect_timeout")));
    let response_timeout = raw
        .response_timeout
        .as_ref()
        .and_then(|r| range(d, r, &format!("{p}.response_timeout")));
    let idle_timeout = raw
        .idle_timeout
        .as_ref()
        .and_then(|r| range(d, r, &format!("{p}.idle_timeout")));
    let allowed_backends = allowed_backends(d, p, raw);
    PoolAssertions {
        pool,
        min_backends,
        max_backend_share,
        algorithms,
        require_health_check: flag(&raw.require_health_check),
        require_outlier_detection: flag(&raw.require_outlier_detection),
        connect_timeout,
        response_timeout,
        idle_timeout,
        allowed_backends,
    }
}

/// `pool`, with errors for pool assertions without one and for one without
/// pool assertions.
fn pool_selector(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<PoolSelector> {
    let pool_keys = raw.min_backends.is_some()
        || raw.max_backend_share.is_some()
        || raw.algorithms.is_some()
        || raw.require_health_check.is_some()
        || raw.require_outlier_detection.is_some()
        || raw.connect_timeout.is_some()
        || raw.response_timeout.is_some()
        || raw.idle_timeout.is_some()
        || raw.allowed_backends.is_some();
    let pool = raw.pool.as_ref().map(|s| match s.get_ref().trim() {
        "*" => PoolSelector::All,
        name => PoolSelector::Named(name.to_owned()),
    });
    if pool_keys && pool.is_none() {
        d.error(
            "missing-key",
            Some(raw.name.span()),
            format!("{p}.pool"),
            "pool assertions need a `pool` to apply to",
        )
        .hint("add `pool = \"NAME\"`, or `pool = \"*\"` for every pool");
    }
    if pool.is_some() && !pool_keys {
        d.error(
            "missing-key",
            raw.pool.as_ref().map(|s| s.span()),
            format!("{p}.pool"),
            "a `pool` without pool assertions asserts nothing",
        )
        .hint("add e.g. `min_backends = 2` or `max_backend_share = 0.5`");
    }
    pool
}

/// `min_backends`, which must not be negative.
fn min_backends(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<usize> {
    raw.min_backends.as_ref().and_then(|v| {
        usize::try_from(*v.get_ref()).ok().or_else(|| {
            d.error(
                "out-of-range",
                Some(v.span()),
                format!("{p}.min_backends"),
                format!("{} is negative", v.get_ref()),
            )
            .hint("write a count of backends, e.g. 2");
            None
        })
    })
}

/// `max_backend_share`, which must be a share in (0, 1].
fn max_backend_share(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<f64> {
    raw.max_backend_share.as_ref().and_then(|v| {
        let x = *v.get_ref();
        if x > 0.0 && x <= 1.0 {
            Some(x)
        } else {
            d.error(
                "out-of-range",
                Some(v.span()),
                format!("{p}.max_backend_share"),
                format!("{x} is not a share: must be above 0 and at most 1"),
            )
            .hint("write a fraction, e.g. 0.5 for \"no backend gets more than half\"");
            None
        }
    })
}

/// `algorithms`, keeping the known names and reporting each unknown one.
fn algorithms(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<Vec<String>> {
    raw.algorithms.as_ref().map(|list| {
        let mut out = Vec::new();
        for (i, a) in list.get_ref().iter().enumerate() {
            let name = a.get_ref().trim();
            if ALGORITHMS.contains(&name) {
                out.push(name.to_owned());
            } else {
                d.error(
                    "unknown-algorithm",
                    Some(a.span()),
                    format!("{p}.algorithms[{i}]"),
                    format!("unknown algorithm `{name}`"),
                )
                .hint(suggest(name, ALGORITHMS, "algorithms"));
            }
        }
        out
    })
}

/// `allowed_backends`, only when every pattern parses and there is one.
fn allowed_backends(d: &mut Diags<'_>, p: &str, raw: &RawRule) -> Option<Vec<AddrPattern>> {
    raw.allowed_backends.as_ref().and_then(|list| {
        let mut out = Vec::new();
        for (i, a) in list.get_ref().iter().enumerate() {
            match AddrPattern::parse(a.get_ref()) {
                Ok(pattern) => out.push(pattern),
                Err(why) => {
                    d.error(
                        "invalid-address",
                        Some(a.span()),
                        format!("{p}.allowed_backends[{i}]"),
                        why,
                    )
                    .hint("write an IP:PORT (\"10.0.1.5:8080\"), an IP (\"10.0.1.5\", any port) or a CIDR block (\"10.0.1.0/24\")");
                }
            }
        }
        if list.get_ref().is_empty() {
            d.error(
                "invalid-value",
                Some(list.span()),
                format!("{p}.allowed_backends"),
                "an empty list allows no backend at all",
            )
            .hint("list the servers this pool may use, e.g. [\"10.0.1.0/24\"]");
        }
        (out.len() == list.get_ref().len() && !out.is_empty()).then_some(out)
    })
}

/// Whether pre-flight sends the rule's request, with a diagnostic for a
/// `probe` or `body` that would not do what it says.
fn probe(d: &mut Diags<'_>, p: &str, raw: &RawRule, request: Option<&RuleRequest>) -> bool {
    let Some(req) = &raw.request else {
        if let Some(key) = raw
            .probe
            .as_ref()
            .map(|_| "probe")
            .or(raw.body.as_ref().map(|_| "body"))
        {
            d.error(
                "missing-key",
                Some(raw.name.span()),
                format!("{p}.request"),
                format!(
                    "`{key}` says what pre-flight sends of a `request`, and this rule has none"
                ),
            )
            .hint("add `request = \"METHOD URL\"` or remove it");
        }
        return false;
    };
    if let (Some(probe), Some(_)) = (&raw.probe, &raw.expect_status)
        && *probe.get_ref()
    {
        d.error(
            "invalid-value",
            Some(probe.span()),
            format!("{p}.probe"),
            "a request that must be refused (`expect_status`) is never probed: pre-flight sends only requests the config routes to a pool",
        )
        .hint("remove `probe`");
        return false;
    }
    let safe = request.is_some_and(|r| r.method == Method::GET || r.method == Method::HEAD);
    let probe = raw.expect_status.is_none() && raw.probe.as_ref().map_or(safe, |b| *b.get_ref());
    if let Some(body) = raw.body.as_ref().filter(|_| !probe) {
        let (code, why, hint) = match &raw.probe {
            Some(_) => (
                "invalid-value",
                "this rule says `probe = false`",
                "remove `body` or `probe = false`",
            ),
            None if raw.expect_status.is_some() => (
                "invalid-value",
                "a request that must be refused (`expect_status`) is never probed",
                "remove `body`",
            ),
            None => (
                "missing-key",
                "only GET and HEAD are probed unless the rule says `probe = true`",
                "add `probe = true` to send it (use a test account, never a real one), or remove `body`",
            ),
        };
        d.error(
            code,
            Some(body.span()),
            format!("{p}.body"),
            format!(
                "`body` is sent only when pre-flight probes `{}`, and {why}",
                req.get_ref().trim()
            ),
        )
        .hint(hint);
    }
    probe
}

fn request(
    d: &mut Diags<'_>,
    raw: &Spanned<String>,
    headers: Option<&BTreeMap<String, Spanned<String>>>,
    kp: &str,
) -> Option<RuleRequest> {
    let text = raw.get_ref().trim();
    let parsed = parse_request_line(text);
    let (method, uri, path) = match parsed {
        Ok(p) => p,
        Err(why) => {
            d.error("invalid-request", Some(raw.span()), kp, format!("`{text}` is not a request: {why}"))
                .hint("write METHOD and URL, e.g. \"POST http://app.example.com/auth/login\" or \"GET /healthz\"");
            return None;
        }
    };
    let mut map = HeaderMap::new();
    let mut ok = true;
    for (name, value) in headers.into_iter().flatten() {
        match (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.get_ref()),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            (n, _) => {
                ok = false;
                // A good name with a bad value is the value's fault.
                let code = if n.is_ok() {
                    "invalid-value"
                } else {
                    "invalid-header-name"
                };
                d.error(
                    code,
                    Some(value.span()),
                    format!("{}.headers.{name}", kp.trim_end_matches(".request")),
                    format!("`{name}: {}` is not a valid header", value.get_ref()),
                )
                .hint("header names are letters, digits and `-`; values are visible ASCII");
            }
        }
    }
    if !ok {
        return None;
    }
    let host = match served_host(&uri, &mut map) {
        Ok(h) => h,
        Err(why) => {
            d.error(
                "invalid-request",
                Some(raw.span()),
                kp,
                format!("`{text}` {why}"),
            )
            .hint("leave the host to the URL, or give a `host` header that names the same host");
            return None;
        }
    };
    Some(RuleRequest {
        text: text.to_owned(),
        method,
        host,
        path,
        headers: map,
    })
}

/// What `serve` would route of a request written as a URL and headers:
/// its host is the `Host` header's (lower-case, without port), and a URL
/// with a host sends it as `Host`, as an HTTP/1.1 client does, so routes
/// and hash keys on the `host` header see it. `Err` for what `serve`
/// refuses with 400: several `Host` headers, or one naming another host
/// than the URL.
pub fn served_host(uri: &http::Uri, headers: &mut HeaderMap) -> Result<Option<String>, String> {
    let host = http::header::HOST;
    if headers.get_all(&host).iter().nth(1).is_some() {
        return Err("has several Host headers, which `serve` refuses (400)".into());
    }
    match (headers.get(&host), uri.authority()) {
        (None, Some(a)) => {
            let v = http::HeaderValue::from_str(a.as_str())
                .map_err(|_| format!("has a host `{a}` that cannot be a Host header"))?;
            headers.insert(host.clone(), v);
        }
        (Some(h), Some(_))
            if crate::snapshot::host_of(Some(h), uri) != crate::snapshot::host_of(None, uri) =>
        {
            return Err(
                "has a Host header naming another host than its URL, which `serve` refuses (400)"
                    .into(),
            );
        }
        _ => {}
    }
    Ok(crate::snapshot::host_of(headers.get(&host), uri).map(std::borrow::Cow::into_owned))
}

/// `METHOD URL` → method, URL and path. Also used by `fulcrum explain` for
/// its request argument; [`served_host`] says which host `serve` routes on.
pub fn parse_request_line(text: &str) -> Result<(Method, Uri, String), String> {
    let (method, url) = text
        .split_once(char::is_whitespace)
        .ok_or("it needs a method and a URL separated by a space")?;
    let method = method.trim();
    // Methods are case-sensitive (RFC 9110 §9.1): `delete` is not DELETE,
    // and no route (whose methods are stored in capitals) would take it.
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "`{method}` is not a method a client sends: methods are case-sensitive; write `{}`",
            method.to_ascii_uppercase()
        ));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("`{}` is not a URL ({e})", url.trim()))?;
    let path = uri.path().to_owned();
    if !path.starts_with('/') {
        return Err("the path must start with `/`".into());
    }
    Ok((method, uri, path))
}

fn range(
    d: &mut Diags<'_>,
    raw: &Spanned<Vec<Spanned<String>>>,
    kp: &str,
) -> Option<DurationRange> {
    let items = raw.get_ref();
    if items.len() != 2 {
        d.error(
            "invalid-value",
            Some(raw.span()),
            kp,
            format!("a range needs two bounds, found {}", items.len()),
        )
        .hint("write [MIN, MAX], e.g. [\"100ms\", \"5s\"]; use \"\" for an open bound");
        return None;
    }
    let mut bound = |s: &Spanned<String>| -> Result<Option<Duration>, ()> {
        let t = s.get_ref().trim();
        if t.is_empty() {
            return Ok(None);
        }
        humantime::parse_duration(t).map(Some).map_err(|e| {
            d.error(
                "invalid-duration",
                Some(s.span()),
                kp,
                format!("`{t}` is not a duration: {e}"),
            )
            .hint("write a number and a unit, e.g. \"500ms\", \"2s\" or \"1m\"");
        })
    };
    let (min, max) = (bound(&items[0]), bound(&items[1]));
    let (Ok(min), Ok(max)) = (min, max) else {
        return None;
    };
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        d.error(
            "invalid-value",
            Some(raw.span()),
            kp,
            "the range's minimum is above its maximum",
        )
        .hint("write [MIN, MAX] with MIN ≤ MAX");
        return None;
    }
    Some(DurationRange { min, max })
}

fn traffic(d: &mut Diags<'_>, raw: RawTraffic) -> Option<TrafficSpec> {
    let mut t = TrafficSpec::default();
    let mut ok = true;
    // Names are checked, not skipped: a name no request can carry would
    // leave a pool hashing on it looking keyless, with no word of why.
    let header_ok = |name: &str| HeaderName::from_bytes(name.as_bytes()).is_ok();
    for (name, v) in raw.headers.iter().flatten() {
        if !header_ok(name) {
            ok = false;
            d.error(
                "invalid-header-name",
                Some(v.span()),
                format!("traffic.headers.{name}"),
                format!("`{name}` is not a valid header name"),
            )
            .hint("header names are letters, digits and `-`, with no spaces, e.g. `x-user`");
        }
    }
    for (name, v) in raw.cookies.iter().flatten() {
        if !crate::validate::is_token(name) {
            ok = false;
            d.error(
                "invalid-value",
                Some(v.span()),
                format!("traffic.cookies.{name}"),
                format!("`{name}` is not a valid cookie name"),
            )
            .hint("a cookie name is an HTTP token: letters, digits and ``!#$%&'*+-.^_`|~``, with no spaces, `=` or `;`, e.g. `session`");
        }
    }
    let mut count = |v: &Option<Spanned<i64>>, kp: &str, lo: i64, hi: i64, out: &mut usize| {
        if let Some(v) = v {
            let x = *v.get_ref();
            if (lo..=hi).contains(&x) {
                *out = x as usize;
            } else {
                ok = false;
                d.error(
                    "out-of-range",
                    Some(v.span()),
                    kp,
                    format!("{x} is out of range: must be {lo} to {hi}"),
                )
                .hint(format!("pick a value from {lo} to {hi}"));
            }
        }
    };
    count(
        &raw.requests,
        "traffic.requests",
        1,
        1_000_000,
        &mut t.requests,
    );
    count(&raw.clients, "traffic.clients", 1, 1 << 24, &mut t.clients);
    count(&raw.paths, "traffic.paths", 1, 1_000_000, &mut t.paths);
    count(
        &raw.concurrency,
        "traffic.concurrency",
        0,
        10_000,
        &mut t.concurrency,
    );
    let mut seed = 0usize;
    count(&raw.seed, "traffic.seed", 0, i64::MAX, &mut seed);
    if raw.seed.is_some() {
        t.seed = seed as u64;
    }
    for (name, v) in raw.headers.iter().flatten() {
        if !header_ok(name) {
            continue;
        }
        let mut n = 0;
        count(
            &Some(v.clone()),
            &format!("traffic.headers.{name}"),
            1,
            1_000_000,
            &mut n,
        );
        t.headers.insert(name.to_ascii_lowercase(), n);
    }
    for (name, v) in raw.cookies.iter().flatten() {
        if !crate::validate::is_token(name) {
            continue;
        }
        let mut n = 0;
        count(
            &Some(v.clone()),
            &format!("traffic.cookies.{name}"),
            1,
            1_000_000,
            &mut n,
        );
        t.cookies.insert(name.clone(), n);
    }
    ok.then_some(t)
}

#[cfg(test)]
mod tests;
