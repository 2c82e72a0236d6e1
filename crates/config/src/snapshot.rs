//! The compiled, immutable form of a valid config: what the data plane and
//! the safety tools read. Built only by `compile` from a validated config, so
//! every reference in it (route → pool, backend index) is known to resolve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use regex::Regex;

pub use crate::routes::Routes;

/// One whole config, ready to serve. Cheap to share: the data plane holds it
/// in an `Arc` behind an `ArcSwap` and never mutates it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Identifies this config in logs, the access log and metrics: a short
    /// hash of the source text, so the same file always has the same version.
    pub version: Arc<str>,
    /// The same short hash of the source text, whether or not `version`
    /// names the config: two files that share a `version` label are still
    /// told apart in the log and the access log.
    pub hash: Arc<str>,
    pub admin: Option<Admin>,
    pub listeners: Vec<Listener>,
    /// In config order: the first route that matches a request wins.
    /// Indexed for lookup; see [`Routes`].
    pub routes: Routes,
    /// Indexed by `Route::pool`; in config (name) order.
    pub pools: Vec<Pool>,
    pub access_log: Option<AccessLog>,
    /// How the guard watches live traffic after a change.
    pub guard: Guard,
    /// The rule files the config ships with (`tests = [...]`), read and
    /// parsed when it was checked: every change must pass them.
    pub tests: Vec<crate::standards::Standards>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The file holding the admin API's bearer token, as written (relative
    /// to the config file).
    pub token_file: Option<String>,
    /// Present when the admin API terminates TLS.
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// Deadline for a client to send a complete request head; also bounds
    /// how long an idle keep-alive connection waits for its next request.
    pub header_timeout: Duration,
    /// How long a client keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest wait for the next chunk of a request body (slow-body clients).
    pub body_timeout: Duration,
    /// Bytes per second a request body must average once it has had
    /// `body_timeout` (slow-body clients sending a piece now and then);
    /// 0: no minimum.
    pub min_body_rate: u32,
    /// Longest a client may take no bytes of its response (slow readers),
    /// over HTTP/1.1 and on an HTTP/2 connection with streams to send.
    pub send_timeout: Duration,
    pub limits: Limits,
    pub http2: Http2,
    /// Present when the listener terminates TLS.
    pub tls: Option<Tls>,
}

/// What one client may make the listener hold: each bound refuses the
/// request (or connection) rather than let one client tie up memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers together, in bytes; over it: 431.
    pub max_header_bytes: u32,
    /// Number of request header fields; over it: 431.
    pub max_headers: u32,
    /// Request target (path and query), in bytes; over it: 414.
    pub max_uri_bytes: u32,
    /// Request body, in bytes, declared or streamed; over it: 413.
    pub max_body_bytes: u64,
    /// Open client connections; past it new ones are accepted and closed at once.
    pub max_connections: u32,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_header_bytes: 16 * 1024,
        max_headers: 100,
        max_uri_bytes: 8 * 1024,
        max_body_bytes: 10 * 1024 * 1024,
        max_connections: 10_000,
    };
}

/// HTTP/2 from clients: over TLS by ALPN, in cleartext by prior knowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2 {
    pub enabled: bool,
    /// HTTP/2 alone: cleartext connections must open with the h2 preface
    /// (h2c, prior knowledge), and TLS offers only `h2` by ALPN.
    pub only: bool,
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the proxy accepts them
    /// (the "rapid reset" attack, CVE-2023-44487); past it: GOAWAY.
    pub max_pending_reset_streams: u32,
    /// Streams the proxy may reset for protocol errors on one connection
    /// before it sends GOAWAY (CVE-2024-27316 style floods).
    pub max_local_error_reset_streams: u32,
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

impl Http2 {
    pub const DEFAULT: Http2 = Http2 {
        enabled: true,
        only: false,
        max_concurrent_streams: 100,
        max_pending_reset_streams: 20,
        max_local_error_reset_streams: 100,
        keep_alive_interval: Duration::from_secs(20),
        keep_alive_timeout: Duration::from_secs(10),
    };
}

/// TLS termination: the certificates `check` read and verified, parsed,
/// so `serve` uses exactly what was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Chosen by SNI against each one's DNS names; the first is the default
    /// (clients without SNI, or names no certificate covers).
    pub certificates: Vec<Certificate>,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Clone)]
pub struct Certificate {
    /// As written in the config, for logs.
    pub cert_path: String,
    /// Lower-case DNS names from the leaf's subjectAltName; `*.example.com`
    /// wildcards kept as written.
    pub dns_names: Vec<String>,
    /// End of the leaf's validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// Chain and private key, the key checked to match the leaf.
    pub key: Arc<rustls::sign::CertifiedKey>,
}

impl Certificate {
    /// Whether this certificate covers `name` (lower-case): an exact DNS
    /// name, or a `*.` wildcard standing for exactly one label.
    pub fn covers(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => n == name,
        })
    }
}

impl PartialEq for Certificate {
    /// Same chain (DER) from the same path: a reload re-reading an
    /// unchanged file yields an equal certificate.
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.key.cert == other.key.cert
    }
}
impl Eq for Certificate {}

impl std::fmt::Debug for Certificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    /// Index into `Snapshot::pools`.
    pub pool: usize,
    /// The statuses that count as this route failing its users (its
    /// outcome signal): by default every 4xx and 5xx.
    pub failure_statuses: StatusSet,
}

/// A set of response statuses, as `["401", "403", "5xx"]` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    /// Exact statuses.
    pub exact: Vec<u16>,
    /// Whole classes: 4 for `4xx`.
    pub classes: Vec<u16>,
}

impl StatusSet {
    /// Every 4xx and 5xx: what a route's users see as a failure unless it
    /// says otherwise.
    pub fn client_and_server_errors() -> StatusSet {
        StatusSet {
            exact: Vec::new(),
            classes: vec![4, 5],
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        self.classes.contains(&(status / 100)) || self.exact.contains(&status)
    }
}

/// The guard: detectors over live traffic that name the change that
/// preceded an anomaly, and roll it back during its canary or probation.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub enabled: bool,
    /// Roll a change back by itself (during its canary or probation), or
    /// only alert.
    pub rollback: bool,
    /// The sliding window rates and shares are judged over.
    pub window: Duration,
    /// After promotion, how long a change is still rolled back on a verdict.
    pub probation: Duration,
    /// An alert within this long of a change names it as the likely cause.
    pub attribution: Duration,
    /// Requests each side needs in the window before any verdict.
    pub min_requests: u32,
    /// One-sided confidence a difference must have to count (e.g. 0.999).
    pub confidence: f64,
    /// The smallest rise of an error or outcome rate that matters (0.05:
    /// five points).
    pub min_effect: f64,
    /// How much slower a change must make a route to count: its median as
    /// a ratio of the baseline's, or its requests past the baseline's p99
    /// stretched by this ratio.
    pub latency_ratio: f64,
    /// A backend taking more than this share of a pool with other healthy
    /// backends is skew.
    pub max_backend_share: f64,
    /// Below this fraction of healthy backends, a pool is in trouble.
    pub min_healthy_fraction: f64,
    /// Failing evaluations in a row before acting.
    pub consecutive: u32,
    /// Where alerts are also POSTed as JSON.
    pub webhook: Option<String>,
}

impl Guard {
    pub const DEFAULT: Guard = Guard {
        enabled: true,
        rollback: true,
        window: Duration::from_secs(10),
        probation: Duration::from_secs(300),
        attribution: Duration::from_secs(1800),
        min_requests: 20,
        confidence: 0.999,
        min_effect: 0.05,
        latency_ratio: 1.5,
        max_backend_share: 0.8,
        min_healthy_fraction: 0.5,
        consecutive: 2,
        webhook: None,
    };
}

/// All present conditions must hold; an absent condition matches anything.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: matches any host that
    /// ends with it and has at least one more label (not `example.com`).
    Suffix(String),
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends when compiled: it must match the whole path.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: http::HeaderName,
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone)]
pub enum HeaderValueMatch {
    Present,
    Exact(String),
    /// Anchored at both ends when compiled.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    /// How the proxy speaks to this pool's backends.
    pub protocol: Protocol,
    pub backends: Vec<Backend>,
    pub health: Option<HealthCheck>,
    pub outlier: Option<Outlier>,
    /// Below this fraction of healthy backends the pool balances over all of
    /// them, healthy or not, rather than overload the few that are left.
    /// 0.0 disables panic mode.
    pub panic_threshold: f64,
    /// A backend that comes back (its health checks pass again, its
    /// ejection ends) or is added by a change takes a share of its weight
    /// growing from 10 % to all of it over this long, so a cold server is
    /// not handed its whole load at once. `round_robin`, `least_request`
    /// and `random` pools only.
    pub slow_start: Option<Duration>,
    /// Idle keep-alive connections kept to each backend (HTTP/1.1 pools,
    /// per worker thread); one released beyond this is closed.
    pub idle_per_backend: u32,
    pub timeouts: Timeouts,
    pub retries: Retries,
}

impl Pool {
    /// As NGINX's usual `keepalive 32`, doubled: enough that a steady load
    /// reuses its connections, few enough that a burst does not leave
    /// hundreds of idle ones holding memory on both sides.
    pub const DEFAULT_IDLE_PER_BACKEND: u32 = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (cleartext h2c), multiplexed on one
    /// connection per backend.
    H2,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    /// 0..=1000 (validated); 0 means drained: never picked.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    Random,
    Hash(HashPolicy),
    First,
}

impl Algorithm {
    /// The config spelling, also used in diagnostics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastRequest => "least_request",
            Algorithm::Random => "random",
            Algorithm::Hash(_) => "hash",
            Algorithm::First => "first",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub on_missing: MissingKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-case header name.
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

/// What a `hash` pool does with a request that lacks the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    /// Hash the empty key: every such request goes to the same backend.
    /// Predictable, and exactly the skew `check` standards look for.
    HashEmpty,
    /// Pick a backend at random by weight.
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes before an unhealthy backend is healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy backend is unhealthy.
    pub unhealthy_threshold: u32,
    /// Inclusive range of status codes that count as a pass.
    pub expect_status: (u16, u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Consecutive 5xx responses or connect failures that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each further ejection in a row adds it again.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Never eject more than this fraction of a pool's backends at once.
    pub max_ejected_fraction: f64,
}

impl Outlier {
    /// Whether `max_ejected_fraction` lets a pool of `weighted` backends
    /// with a weight eject its first: 0.3 of three never does.
    pub fn can_eject(&self, weighted: usize) -> bool {
        self.max_ejected_fraction * weighted as f64 >= 1.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the request being sent to the response head arriving.
    pub response: Duration,
    /// How long an unused keep-alive connection to a backend is kept.
    pub idle: Duration,
    /// How long an upgraded connection (WebSocket) may pass no bytes either
    /// way before the proxy closes both sides.
    pub tunnel: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Further attempts after the first; 0 disables retries. At most
    /// [`Retries::MAX_ATTEMPTS`] (validated).
    pub attempts: u32,
    /// Retries in flight may not exceed this fraction of requests in flight…
    pub budget: f64,
    /// …except that this many concurrent retries are always allowed.
    pub min_concurrent: u32,
}

impl Retries {
    /// Bounds the work one request can cause, and lets the data plane keep
    /// the backends a request tried in a fixed-size array.
    pub const MAX_ATTEMPTS: u32 = 10;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub target: LogTarget,
    /// Headers whose values are logged only as a keyed hash
    /// (`keys::redact`), besides the credentials that always are.
    pub redact: Vec<http::HeaderName>,
    /// Headers and cookies recorded on every line besides those the
    /// config reads (`Snapshot::logged_keys`), so a later config that
    /// routes or hashes on them can be replayed against this log.
    pub headers: Vec<http::HeaderName>,
    pub cookies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(std::path::PathBuf),
}

/// What routing needs to know of a request. Borrowed, so the data plane
/// builds it from a live request without copying.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port, from the `Host` header or the URI authority.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The host routing reads: the `Host` header's, else the URI's; without
/// its port, lower-case, an IPv6 literal with its brackets. One function
/// for `serve` and for the tools that say where a request goes.
#[inline]
pub fn host_of<'a>(
    header: Option<&'a http::HeaderValue>,
    uri: &'a http::Uri,
) -> Option<std::borrow::Cow<'a, str>> {
    let raw = match header {
        Some(h) => h.to_str().ok()?,
        None => uri.host()?,
    };
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        &raw[..raw.find(']').map_or(raw.len(), |i| i + 1)]
    } else {
        // A plain scan from the end: a host is a few bytes, fewer than
        // memrchr's setup costs (76 instructions a request, bench/callgrind).
        raw.bytes()
            .rposition(|b| b == b':')
            .map_or(raw, |i| &raw[..i])
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

impl Snapshot {
    /// The first route whose conditions all hold, with its index.
    pub fn route(&self, req: &RequestView<'_>) -> Option<(usize, &Route)> {
        self.routes.find(req)
    }

    pub fn pool(&self, name: &str) -> Option<(usize, &Pool)> {
        self.pools
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.name == name)
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(req.host))
            && self.path.as_ref().is_none_or(|p| p.matches(req.path))
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

impl HostMatch {
    pub fn matches(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        match self {
            HostMatch::Exact(want) => host.eq_ignore_ascii_case(want),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            HeaderValueMatch::Present => values.next().is_some(),
            HeaderValueMatch::Exact(want) => values.any(|v| v.as_bytes() == want.as_bytes()),
            HeaderValueMatch::Regex(re) => values.any(|v| v.to_str().is_ok_and(|s| re.is_match(s))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            host,
            path,
            headers,
        }
    }

    #[test]
    fn wildcard_host_needs_a_subdomain() {
        let m = HostMatch::Suffix(".example.com".into());
        assert!(m.matches(Some("app.example.com")));
        assert!(m.matches(Some("A.Example.COM")));
        assert!(!m.matches(Some("example.com")));
        assert!(!m.matches(Some("badexample.com")));
        assert!(!m.matches(None));
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = RouteMatch {
            host: Some(HostMatch::Exact("app.example.com".into())),
            path: Some(PathMatch::Prefix("/auth/".into())),
            methods: vec![Method::POST],
            headers: vec![HeaderMatch {
                name: http::HeaderName::from_static("x-tenant"),
                value: HeaderValueMatch::Exact("blue".into()),
            }],
        };
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "blue".parse().unwrap());
        assert!(m.matches(&view(
            &Method::POST,
            Some("app.example.com"),
            "/auth/login",
            &h
        )));
        assert!(!m.matches(&view(
            &Method::GET,
            Some("app.example.com"),
            "/auth/login",
            &h
        )));
        assert!(!m.matches(&view(&Method::POST, Some("app.example.com"), "/web", &h)));
        assert!(!m.matches(&view(
            &Method::POST,
            Some("app.example.com"),
            "/auth/login",
            &HeaderMap::new()
        )));
    }
}
