//! Valid stage: every rule a config must obey beyond its TOML shape (values,
//! ranges, references between items, lints), checked on the raw items with
//! every problem collected. What comes out holds only checked, typed values,
//! so compiling it into a snapshot cannot fail.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderName, Method};
use regex::Regex;
use toml::Spanned;

use crate::diag::{Diags, did_you_mean, list, suggest};
use crate::raw::{
    Item, RawBackend, RawDoc, RawHash, RawHeader, RawHealth, RawHttp2, RawLimits, RawListener,
    RawMatch, RawOutlier, RawPool, RawRetries, RawRoute, RawTimeouts, Span,
};
use crate::shadow;
use crate::snapshot::{
    AccessLog, Admin, Algorithm, Backend, HashKey, HashPolicy, HeaderMatch, HeaderValueMatch,
    HealthCheck, HostMatch, Http2, Limits, Listener, LogTarget, MissingKey, Outlier, PathMatch,
    Pool, Protocol, Retries, Route, RouteMatch, Timeouts,
};

/// A config that passed every check: only typed, in-range values, and route
/// → pool references already resolved to indices into `pools`.
#[derive(Debug)]
pub(crate) struct Valid {
    pub version: Option<String>,
    pub guard: crate::snapshot::Guard,
    pub tests: Vec<crate::standards::Standards>,
    pub admin: Option<Admin>,
    pub access_log: Option<AccessLog>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    /// Sorted by name, so indices do not depend on how TOML orders tables.
    pub pools: Vec<Pool>,
}

pub(crate) const ALGORITHMS: &[&str] = &["round_robin", "least_request", "random", "hash", "first"];
const ON_MISSING: &[&str] = &["hash_empty", "random"];
const PROTOCOLS: &[&str] = &["http1", "h2"];
const HASH_KEYS: &[&str] = &["header:NAME", "cookie:NAME", "client_ip", "path"];
const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
pub(crate) const MAX_WEIGHT: i64 = 1000;
/// Above this share of a pool's weight, one backend carries the pool
/// almost alone (4:1 is flagged, 3:1 is not).
const SKEWED_SHARE: f64 = 0.75;

const DURATION_HINT: &str = "write a number and a unit, e.g. \"500ms\", \"2s\" or \"1m\"";

/// The longest health check path: past it, backends' request-line limits
/// (NGINX's request-line buffer and Fulcrum's own `max_uri_bytes` default
/// to 8 KiB) would fail every probe, and the probe's URI stays well inside
/// what `http` parses.
const MAX_HEALTH_PATH: usize = 8 * 1024;
/// The longest `slow_start`.
const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// Check `doc`; `None` when any error was reported.
pub(crate) fn validate(
    doc: &RawDoc,
    diags: &mut Diags<'_>,
    env: &dyn crate::Environment,
) -> Option<Valid> {
    let mut v = Validator {
        d: diags,
        env,
        partial: false,
    };
    let version = doc.version.as_ref().and_then(|ver| {
        if ver.get_ref().trim().is_empty() {
            v.d.error(
                "invalid-value",
                Some(ver.span()),
                "version",
                "`version` is empty",
            )
            .hint("remove it to use a hash of the file, or write a label like \"2026-11-21.1\"");
            None
        } else {
            Some(ver.get_ref().clone())
        }
    });
    let admin = doc.admin.as_ref().and_then(|item| v.admin(item));
    let tests = v.tests(&doc.tests);
    let guard = match &doc.guard {
        Some(item) => v.guard(item),
        None => Some(crate::snapshot::Guard::DEFAULT),
    };
    let access_log = doc.access_log.as_ref().and_then(|item| v.access_log(item));
    let listeners = v.listeners(doc);

    // Pools first: routes resolve their `pool` against them.
    let mut pools: Vec<(&str, Span, Option<Pool>)> = doc
        .pools
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.name_span.clone(),
                v.pool(&p.name, p.name_span.clone(), &p.item),
            )
        })
        .collect();
    pools.sort_by(|a, b| a.0.cmp(b.0));
    let pool_names: Vec<&str> = pools.iter().map(|p| p.0).collect();

    let routes = v.routes(doc, &pool_names, &pools);

    // A pool no route sends traffic to is usually a typo on one side. Only
    // say so when every route was readable, or the warning may be false.
    if doc.routes.iter().all(|r| r.value.is_some()) {
        for (name, span, _) in &pools {
            let used = doc
                .routes
                .iter()
                .filter_map(|r| r.value.as_ref())
                .any(|r| r.pool.get_ref() == name);
            if !used {
                v.d.warning(
                    "unused-pool",
                    Some(span.clone()),
                    format!("pool.{name}"),
                    format!("no route sends traffic to pool `{name}`"),
                )
                .hint(format!(
                    "point a route at it with `pool = \"{name}\"`, or remove it"
                ));
            }
        }
    }

    if v.d.has_errors() {
        return None;
    }
    Some(Valid {
        version,
        guard: guard?,
        tests,
        admin,
        access_log,
        listeners: listeners.into_iter().flatten().collect(),
        routes: routes.into_iter().flatten().collect(),
        pools: pools.into_iter().filter_map(|p| p.2).collect(),
    })
}

struct Validator<'a, 's> {
    d: &'a mut Diags<'s>,
    env: &'a dyn crate::Environment,
    /// The item being checked had shape errors: some keys were set aside
    /// and hold defaults. Its own values are still checked, but checks that
    /// relate one key to another are skipped, since a default standing in
    /// for a broken key could make them fire falsely.
    partial: bool,
}

impl Validator<'_, '_> {
    fn admin(&mut self, item: &Item<crate::raw::RawAdmin>) -> Option<Admin> {
        let raw = item.value.as_ref()?;
        let listen = self.socket_addr(&raw.listen, "admin.listen");
        let tls = match &raw.tls {
            Some(t) => Some(crate::tls::tls(
                self.d,
                self.env,
                t.get_ref(),
                t.span(),
                "admin.tls",
            )?),
            None => None,
        };
        let listen = listen?;
        if !listen.ip().is_loopback() && tls.is_none() {
            // The token would cross the network in the clear.
            self.d
                .error(
                    "admin-not-loopback",
                    Some(raw.listen.span()),
                    "admin.listen",
                    format!(
                        "the admin API listens on {listen}, reachable from other hosts, without TLS"
                    ),
                )
                .hint("bind it to 127.0.0.1 or [::1], or add `tls = { cert = \"…\", key = \"…\" }` to [admin]");
        }
        let token_file = match &raw.token_file {
            Some(f) if f.get_ref().trim().is_empty() => {
                self.d
                    .error(
                        "invalid-value",
                        Some(f.span()),
                        "admin.token_file",
                        "`token_file` is empty",
                    )
                    .hint("name the file that holds the token, or remove the key to have `serve` generate one");
                return None;
            }
            Some(f) => Some(f.get_ref().clone()),
            None => None,
        };
        Some(Admin {
            listen,
            token_file,
            tls,
        })
    }

    /// Read and parse each rule file the config ships with, through the
    /// environment, as certificates are: what is checked is what runs.
    fn tests(&mut self, files: &[toml::Spanned<String>]) -> Vec<crate::standards::Standards> {
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let kp = format!("tests[{i}]");
            let path = f.get_ref();
            let text = match self.env.read_file(path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => {
                        self.d
                            .error(
                                "unreadable-tests",
                                Some(f.span()),
                                kp,
                                format!(
                                    "`{path}` is not UTF-8 text (byte {})",
                                    e.utf8_error().valid_up_to()
                                ),
                            )
                            .hint("save the rule file as UTF-8");
                        continue;
                    }
                },
                Err(e) => {
                    self.d
                        .error(
                            "unreadable-tests",
                            Some(f.span()),
                            kp,
                            format!("cannot read `{path}`: {e}"),
                        )
                        .hint("paths are relative to this config file; fix the path or remove it from `tests`");
                    continue;
                }
            };
            let parsed = crate::standards::parse_standards(path, &text);
            match parsed.standards {
                Some(s) => out.push(s),
                None => {
                    let first = parsed
                        .diagnostics
                        .iter()
                        .find(|d| d.is_error())
                        .map_or_else(String::new, |d| format!(": {}", d.message));
                    self.d
                        .error(
                            "invalid-tests",
                            Some(f.span()),
                            kp,
                            format!(
                                "`{path}` is not a valid rule file ({} error(s){first})",
                                parsed.diagnostics.iter().filter(|d| d.is_error()).count()
                            ),
                        )
                        .hint(format!(
                            "`fulcrum test CONFIG {path}` shows every problem in it"
                        ));
                }
            }
        }
        out
    }

    /// `["401", "403", "5xx"]`: exact statuses and whole classes.
    fn statuses(
        &mut self,
        list: &[toml::Spanned<String>],
        kp: &str,
    ) -> Option<crate::snapshot::StatusSet> {
        let mut set = crate::snapshot::StatusSet {
            exact: Vec::new(),
            classes: Vec::new(),
        };
        let mut ok = true;
        for (i, s) in list.iter().enumerate() {
            let text = s.get_ref().trim().to_ascii_lowercase();
            let class = text
                .strip_suffix("xx")
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (1..=5).contains(c));
            let exact = text.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
            match (class, exact) {
                (Some(c), _) => set.classes.push(c),
                (_, Some(c)) => set.exact.push(c),
                _ => {
                    ok = false;
                    self.d
                        .error(
                            "invalid-value",
                            Some(s.span()),
                            format!("{kp}[{i}]"),
                            format!("`{}` is not a status or a class of statuses", s.get_ref()),
                        )
                        .hint("write a status such as \"401\" or a class such as \"5xx\"");
                }
            }
        }
        if list.is_empty() {
            self.d
                .error("invalid-value", None, kp.to_owned(), "`failure_statuses` is empty")
                .hint("list the statuses that mean the route failed its users, e.g. [\"401\", \"403\", \"5xx\"], or remove it for every 4xx and 5xx");
            ok = false;
        }
        ok.then_some(set)
    }

    fn guard(&mut self, item: &Item<crate::raw::RawGuard>) -> Option<crate::snapshot::Guard> {
        let raw = item.value.as_ref()?;
        let d = crate::snapshot::Guard::DEFAULT;
        let flag = |f: &Option<toml::Spanned<bool>>, default: bool| {
            f.as_ref().map_or(default, |v| *v.get_ref())
        };
        let window = self.duration(raw.window.as_ref(), "guard.window", d.window);
        let probation = self.duration(raw.probation.as_ref(), "guard.probation", d.probation);
        let attribution =
            self.duration(raw.attribution.as_ref(), "guard.attribution", d.attribution);
        let min_requests = self.int(
            raw.min_requests.as_ref(),
            "guard.min_requests",
            d.min_requests,
            5,
            1_000_000,
        );
        let consecutive = self.int(
            raw.consecutive.as_ref(),
            "guard.consecutive",
            d.consecutive,
            1,
            100,
        );
        let mut real = |v: &Option<toml::Spanned<f64>>,
                        kp: &str,
                        default: f64,
                        lo: f64,
                        hi: f64|
         -> Option<f64> {
            let Some(v) = v else { return Some(default) };
            let x = *v.get_ref();
            if x > lo && x < hi {
                Some(x)
            } else {
                self.d
                    .error(
                        "out-of-range",
                        Some(v.span()),
                        kp,
                        format!("{x} is out of range: must be above {lo} and below {hi}"),
                    )
                    .hint(format!("remove it for the default ({default})"));
                None
            }
        };
        let confidence = real(&raw.confidence, "guard.confidence", d.confidence, 0.5, 1.0);
        let min_effect = real(&raw.min_effect, "guard.min_effect", d.min_effect, 0.0, 1.0);
        let latency_ratio = real(
            &raw.latency_ratio,
            "guard.latency_ratio",
            d.latency_ratio,
            1.0,
            100.0,
        );
        let max_backend_share = real(
            &raw.max_backend_share,
            "guard.max_backend_share",
            d.max_backend_share,
            0.0,
            1.0,
        );
        let min_healthy_fraction = real(
            &raw.min_healthy_fraction,
            "guard.min_healthy_fraction",
            d.min_healthy_fraction,
            0.0,
            1.0,
        );
        let webhook = match &raw.webhook {
            Some(w) => {
                let url = w.get_ref().trim();
                match url.parse::<http::Uri>() {
                    Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {
                        Some(Some(url.to_owned()))
                    }
                    _ => {
                        self.d
                            .error("invalid-value", Some(w.span()), "guard.webhook", format!("`{url}` is not an http:// URL"))
                            .hint("write e.g. \"http://127.0.0.1:9000/alerts\" (plain HTTP; put a TLS proxy in front for https)");
                        None
                    }
                }
            }
            None => Some(None),
        };
        Some(crate::snapshot::Guard {
            enabled: flag(&raw.enabled, d.enabled),
            rollback: flag(&raw.rollback, d.rollback),
            window: window?,
            probation: probation?,
            attribution: attribution?,
            min_requests: min_requests?,
            confidence: confidence?,
            min_effect: min_effect?,
            latency_ratio: latency_ratio?,
            max_backend_share: max_backend_share?,
            min_healthy_fraction: min_healthy_fraction?,
            consecutive: consecutive?,
            webhook: webhook?,
        })
    }

    fn access_log(&mut self, item: &Item<crate::raw::RawAccessLog>) -> Option<AccessLog> {
        let raw = item.value.as_ref()?;
        let path = raw.path.get_ref().trim();
        if path.is_empty() {
            self.d
                .error(
                    "invalid-value",
                    Some(raw.path.span()),
                    "access_log.path",
                    "`path` is empty",
                )
                .hint("write \"stdout\" or a file path, or remove [access_log] to turn it off");
            return None;
        }
        let redact = self.header_names(raw.redact.as_deref(), "access_log.redact");
        let headers = self.header_names(raw.headers.as_deref(), "access_log.headers");
        let mut cookies: Vec<String> = Vec::new();
        let mut cookies_ok = true;
        for (i, c) in raw.cookies.iter().flatten().enumerate() {
            let name = c.get_ref().trim();
            if is_token(name) {
                cookies.push(name.to_owned());
            } else {
                cookies_ok = false;
                self.d
                    .error(
                        "invalid-value",
                        Some(c.span()),
                        format!("access_log.cookies[{i}]"),
                        format!("`{}` is not a cookie name", c.get_ref()),
                    )
                    .hint("write the name alone, e.g. \"session\" for `Cookie: session=…`");
            }
        }
        Some(AccessLog {
            target: if path == "stdout" {
                LogTarget::Stdout
            } else {
                LogTarget::File(self.env.resolve(path))
            },
            redact: redact?,
            headers: headers?,
            cookies,
        })
        .filter(|_| cookies_ok)
    }

    /// Header names listed under `kp`; `None` when one is invalid.
    fn header_names(
        &mut self,
        raw: Option<&[Spanned<String>]>,
        kp: &str,
    ) -> Option<Vec<HeaderName>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, name) in raw.into_iter().flatten().enumerate() {
            match HeaderName::from_bytes(name.get_ref().trim().as_bytes()) {
                Ok(h) if h == http::header::COOKIE && kp == "access_log.headers" => {
                    ok = false;
                    self.d
                        .error(
                            "invalid-header-name",
                            Some(name.span()),
                            format!("{kp}[{i}]"),
                            "the whole `cookie` header is never logged",
                        )
                        .hint("list the cookies to record by name: `cookies = [\"session\"]`");
                }
                Ok(h) => out.push(h),
                Err(_) => {
                    ok = false;
                    self.d
                        .error(
                            "invalid-header-name",
                            Some(name.span()),
                            format!("{kp}[{i}]"),
                            format!("`{}` is not a valid header name", name.get_ref()),
                        )
                        .hint("write a header name such as \"x-api-key\"");
                }
            }
        }
        ok.then_some(out)
    }

    fn listeners(&mut self, doc: &RawDoc) -> Vec<Option<Listener>> {
        if doc.listeners.is_empty() && !doc.listener_key {
            self.d
                .error("no-listener", None, "listener", "no listener is defined")
                .hint("add one: [[listener]] with `name` and `bind = \"127.0.0.1:8080\"`");
        }
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut binds: Vec<(SocketAddr, &str)> = Vec::new();
        let mut out = Vec::new();
        for item in &doc.listeners {
            let Some(raw) = item.value.as_ref() else {
                out.push(None);
                continue;
            };
            self.partial = !item.clean;
            out.push(self.listener(item, raw, &mut names, &mut binds));
        }
        out
    }

    fn listener<'r>(
        &mut self,
        item: &'r Item<RawListener>,
        raw: &'r RawListener,
        names: &mut HashMap<&'r str, &'r str>,
        binds: &mut Vec<(SocketAddr, &'r str)>,
    ) -> Option<Listener> {
        let p = &item.path;
        let mut ok = self.unique_name("listener", "duplicate-listener", &raw.name, p, names);
        let name = raw.name.get_ref().as_str();
        let bind = self.socket_addr(&raw.bind, &format!("{p}.bind"));
        if let Some(bind) = bind {
            // Port 0 asks the OS for a free port: never a clash.
            let clash = binds
                .iter()
                .find(|(other, _)| bind.port() != 0 && binds_overlap(bind, *other));
            if let Some((other, other_path)) = clash {
                self.d
                    .error(
                        "duplicate-bind",
                        Some(raw.bind.span()),
                        format!("{p}.bind"),
                        format!("{bind} overlaps {other}, already bound by {other_path}"),
                    )
                    .hint("give each listener its own address or port");
                ok = false;
            } else {
                binds.push((bind, &item.path));
            }
        }
        let header_timeout = self.duration(
            raw.header_timeout.as_ref(),
            &format!("{p}.header_timeout"),
            Duration::from_secs(10),
        );
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &format!("{p}.idle_timeout"),
            Duration::from_secs(60),
        );
        let body_timeout = self.duration(
            raw.body_timeout.as_ref(),
            &format!("{p}.body_timeout"),
            Duration::from_secs(30),
        );
        let min_body_rate = self.int(
            raw.min_body_rate.as_ref(),
            &format!("{p}.min_body_rate"),
            1024,
            0,
            1 << 30,
        );
        let send_timeout = self.duration(
            raw.send_timeout.as_ref(),
            &format!("{p}.send_timeout"),
            Duration::from_secs(30),
        );
        let limits = self.limits(
            raw.limits.as_ref().map(|l| l.get_ref()),
            &format!("{p}.limits"),
        );
        let http2 = self.http2(
            raw.http2.as_ref().map(|h| h.get_ref()),
            &format!("{p}.http2"),
        );
        let tls = match &raw.tls {
            None => Some(None),
            Some(t) => {
                crate::tls::tls(self.d, self.env, t.get_ref(), t.span(), &format!("{p}.tls"))
                    .map(Some)
            }
        };
        Some(Listener {
            name: name.into(),
            bind: bind?,
            header_timeout: header_timeout?,
            idle_timeout: idle_timeout?,
            body_timeout: body_timeout?,
            min_body_rate: min_body_rate?,
            send_timeout: send_timeout?,
            limits: limits?,
            http2: http2?,
            tls: tls?,
        })
        .filter(|_| ok)
    }

    fn limits(&mut self, raw: Option<&RawLimits>, p: &str) -> Option<Limits> {
        let d = Limits::DEFAULT;
        // hyper needs 8 KiB of read buffer at least; a head that large is
        // also the smallest any real browser needs.
        let header_bytes = self.int(
            raw.and_then(|r| r.max_header_bytes.as_ref()),
            &format!("{p}.max_header_bytes"),
            d.max_header_bytes,
            8 * 1024,
            1024 * 1024,
        );
        let headers = self.int(
            raw.and_then(|r| r.max_headers.as_ref()),
            &format!("{p}.max_headers"),
            d.max_headers,
            8,
            1000,
        );
        let uri = self.int(
            raw.and_then(|r| r.max_uri_bytes.as_ref()),
            &format!("{p}.max_uri_bytes"),
            d.max_uri_bytes,
            256,
            64 * 1024,
        );
        let body = self.int64(
            raw.and_then(|r| r.max_body_bytes.as_ref()),
            &format!("{p}.max_body_bytes"),
            d.max_body_bytes,
            0,
            1 << 40,
        );
        let connections = self.int(
            raw.and_then(|r| r.max_connections.as_ref()),
            &format!("{p}.max_connections"),
            d.max_connections,
            1,
            1_000_000,
        );
        Some(Limits {
            max_header_bytes: header_bytes?,
            max_headers: headers?,
            max_uri_bytes: uri?,
            max_body_bytes: body?,
            max_connections: connections?,
        })
    }

    fn http2(&mut self, raw: Option<&RawHttp2>, p: &str) -> Option<Http2> {
        let d = Http2::DEFAULT;
        let streams = self.int(
            raw.and_then(|r| r.max_concurrent_streams.as_ref()),
            &format!("{p}.max_concurrent_streams"),
            d.max_concurrent_streams,
            1,
            10_000,
        );
        let pending = self.int(
            raw.and_then(|r| r.max_pending_reset_streams.as_ref()),
            &format!("{p}.max_pending_reset_streams"),
            d.max_pending_reset_streams,
            1,
            10_000,
        );
        let local = self.int(
            raw.and_then(|r| r.max_local_error_reset_streams.as_ref()),
            &format!("{p}.max_local_error_reset_streams"),
            d.max_local_error_reset_streams,
            1,
            100_000,
        );
        let interval = self.duration(
            raw.and_then(|r| r.keep_alive_interval.as_ref()),
            &format!("{p}.keep_alive_interval"),
            d.keep_alive_interval,
        );
        let timeout = self.duration(
            raw.and_then(|r| r.keep_alive_timeout.as_ref()),
            &format!("{p}.keep_alive_timeout"),
            d.keep_alive_timeout,
        );
        let enabled = raw.and_then(|r| r.enabled.as_ref());
        let only = raw.and_then(|r| r.only.as_ref());
        if let (Some(e), Some(o)) = (enabled, only)
            && !*e.get_ref()
            && *o.get_ref()
        {
            self.d
                .error(
                    "conflicting-http2",
                    Some(o.span()),
                    format!("{p}.only"),
                    "`only = true` serves HTTP/2 alone, but `enabled = false` turns HTTP/2 off",
                )
                .hint("remove `only` to serve HTTP/1.1 alone, or `enabled` to serve HTTP/2 alone");
            return None;
        }
        Some(Http2 {
            enabled: enabled.is_none_or(|e| *e.get_ref()),
            only: only.is_some_and(|o| *o.get_ref()),
            max_concurrent_streams: streams?,
            max_pending_reset_streams: pending?,
            max_local_error_reset_streams: local?,
            keep_alive_interval: interval?,
            keep_alive_timeout: timeout?,
        })
    }

    fn routes(
        &mut self,
        doc: &RawDoc,
        pool_names: &[&str],
        pools: &[(&str, Span, Option<Pool>)],
    ) -> Vec<Option<Route>> {
        if doc.routes.is_empty() {
            self.d
                .warning("no-route", None, "route", "no route is defined: every request gets 404")
                .hint("add a [[route]] with `pool = \"NAME\"`; without `match` it takes every request");
        }
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut out: Vec<Option<Route>> = Vec::new();
        // (name, key path, read cleanly) of each route, beside `out`, for
        // the shadowing lint.
        let mut seen: Vec<(&str, &str, bool)> = Vec::new();
        for item in &doc.routes {
            let Some(raw) = item.value.as_ref() else {
                out.push(None);
                seen.push(("", &item.path, false));
                continue;
            };
            self.partial = !item.clean;
            let route = self.route(item, raw, &mut names, pool_names, pools);
            if let Some(route) = route.as_ref().filter(|_| item.clean) {
                let earlier = out
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| s.2)
                    .filter_map(|(r, s)| r.as_ref().map(|r| (r, s)))
                    .find(|(r, _)| shadow::shadows(&r.matcher, &route.matcher));
                if let Some((_, (earlier_name, earlier_path, _))) = earlier {
                    let span = raw.matcher.as_ref().map_or(raw.name.span(), |m| m.span());
                    self.d
                        .warning(
                            "shadowed-route",
                            Some(span),
                            item.path.clone(),
                            format!(
                                "route `{}` can never match: route `{earlier_name}` ({earlier_path}) comes first and matches every request it would",
                                raw.name.get_ref()
                            ),
                        )
                        .hint(format!(
                            "move `{}` above `{earlier_name}`, or narrow `{earlier_name}`'s match",
                            raw.name.get_ref()
                        ));
                }
            }
            out.push(route);
            seen.push((raw.name.get_ref(), &item.path, item.clean));
        }
        out
    }

    fn route<'r>(
        &mut self,
        item: &'r Item<RawRoute>,
        raw: &'r RawRoute,
        names: &mut HashMap<&'r str, &'r str>,
        pool_names: &[&str],
        pools: &[(&str, Span, Option<Pool>)],
    ) -> Option<Route> {
        let p = &item.path;
        let ok = self.unique_name("route", "duplicate-route", &raw.name, p, names);
        let name = raw.name.get_ref().as_str();
        let matcher = match &raw.matcher {
            Some(m) => self.route_match(m.get_ref(), &format!("{p}.match")),
            None => Some(RouteMatch::default()),
        };
        let pool_name = raw.pool.get_ref().as_str();
        let pool = pool_names.iter().position(|n| *n == pool_name);
        if pool.is_none() {
            let hint = match did_you_mean(pool_name, pool_names.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None if pool_names.is_empty() => {
                    format!("define it as [pool.{pool_name}] with `backends = [...]`")
                }
                None => format!("defined pools: {}", list(pool_names)),
            };
            self.d
                .error(
                    "unknown-pool",
                    Some(raw.pool.span()),
                    format!("{p}.pool"),
                    format!("no pool named `{pool_name}`"),
                )
                .hint(hint);
        }
        // Indices count only pools that compiled; if one did not, there is
        // an error already and no snapshot will be built.
        let pool = pool.filter(|&i| pools[i].2.is_some())?;
        let index = pools[..pool].iter().filter(|p| p.2.is_some()).count();
        let failure_statuses = match raw
            .guard
            .as_ref()
            .and_then(|g| g.get_ref().failure_statuses.as_ref())
        {
            Some(list) => self.statuses(list, &format!("{p}.guard.failure_statuses")),
            None => Some(crate::snapshot::StatusSet::client_and_server_errors()),
        };
        Some(Route {
            name: name.into(),
            matcher: matcher?,
            pool: index,
            failure_statuses: failure_statuses?,
        })
        .filter(|_| ok)
    }

    fn route_match(&mut self, raw: &RawMatch, p: &str) -> Option<RouteMatch> {
        let mut ok = true;
        let host = raw.host.as_ref().and_then(|h| {
            let m = self.host(h, &format!("{p}.host"));
            ok &= m.is_some();
            m
        });

        let paths = [
            ("path", &raw.path),
            ("path_prefix", &raw.path_prefix),
            ("path_regex", &raw.path_regex),
        ];
        let given: Vec<(&str, &Spanned<String>)> = paths
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        for (key, value) in given.iter().skip(1) {
            self.d
                .error(
                    "conflicting-path-match",
                    Some(value.span()),
                    format!("{p}.{key}"),
                    format!("`{key}` given together with `{}`", given[0].0),
                )
                .hint("a route matches the path one way: keep one of `path`, `path_prefix`, `path_regex`");
            ok = false;
        }
        let path = given.first().and_then(|(key, value)| {
            let kp = format!("{p}.{key}");
            let s = value.get_ref();
            let m = match *key {
                "path_regex" => self.regex(value, &kp).map(PathMatch::Regex),
                _ if !s.starts_with('/') => {
                    self.d
                        .error(
                            "invalid-path",
                            Some(value.span()),
                            kp,
                            format!("path `{s}` does not start with `/`"),
                        )
                        .hint(format!("write \"/{s}\""));
                    None
                }
                // A route no request could match is a typo, not a route.
                _ if let Some((message, hint)) = path_problem(s, false) => {
                    self.d
                        .error("invalid-path", Some(value.span()), kp, message)
                        .hint(hint);
                    None
                }
                "path" => Some(PathMatch::Exact(s.clone())),
                _ => Some(PathMatch::Prefix(s.clone())),
            };
            ok &= m.is_some();
            m
        });

        let mut methods = Vec::new();
        for (i, m) in raw.methods.iter().flatten().enumerate() {
            let kp = format!("{p}.methods[{i}]");
            let upper = m.get_ref().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => {
                    if !STANDARD_METHODS.contains(&upper.as_str()) {
                        self.d
                            .warning(
                                "unknown-method",
                                Some(m.span()),
                                kp,
                                format!("`{upper}` is not a standard HTTP method"),
                            )
                            .hint(suggest(&upper, STANDARD_METHODS, "standard methods"));
                    }
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                _ => {
                    self.d
                        .error(
                            "invalid-method",
                            Some(m.span()),
                            kp,
                            format!("`{}` is not a valid HTTP method", m.get_ref()),
                        )
                        .hint(suggest(&upper, STANDARD_METHODS, "methods"));
                    ok = false;
                }
            }
        }

        let mut headers = Vec::new();
        for (i, h) in raw.headers.iter().flatten().enumerate() {
            match self.header(h.get_ref(), &format!("{p}.headers[{i}]")) {
                Some(h) => headers.push(h),
                None => ok = false,
            }
        }
        ok.then_some(RouteMatch {
            host,
            path,
            methods,
            headers,
        })
    }

    fn host(&mut self, raw: &Spanned<String>, kp: &str) -> Option<HostMatch> {
        let host = raw.get_ref().to_ascii_lowercase();
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let problem = if name.contains(':') {
            Some((
                format!("host `{host}` includes a port"),
                "routes match the host without its port: remove `:PORT`".to_owned(),
            ))
        } else if name.contains('*') {
            Some((
                format!("host `{host}` has a `*` that is not a leading `*.`"),
                "only a leading wildcard is supported, e.g. \"*.example.com\"".to_owned(),
            ))
        } else if name.is_empty()
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains("..")
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            Some((
                format!("`{}` is not a valid host name", raw.get_ref()),
                "write a host like \"app.example.com\" or \"*.example.com\"".to_owned(),
            ))
        } else {
            None
        };
        if let Some((message, hint)) = problem {
            self.d
                .error("invalid-host", Some(raw.span()), kp, message)
                .hint(hint);
            return None;
        }
        Some(if wildcard {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        })
    }

    fn header(&mut self, raw: &RawHeader, p: &str) -> Option<HeaderMatch> {
        let name = match HeaderName::from_bytes(raw.name.get_ref().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.d
                    .error(
                        "invalid-header-name",
                        Some(raw.name.span()),
                        format!("{p}.name"),
                        format!("`{}` is not a valid header name", raw.name.get_ref()),
                    )
                    .hint("header names are tokens: letters, digits and `-`, e.g. \"x-tenant\"");
                None
            }
        };
        let value = match (&raw.value, &raw.regex) {
            (Some(_), Some(re)) => {
                self.d
                    .error(
                        "conflicting-header-match",
                        Some(re.span()),
                        format!("{p}.regex"),
                        "`value` and `regex` given together",
                    )
                    .hint("keep `value` for an exact match or `regex` for a pattern, not both");
                None
            }
            (Some(v), None) => Some(HeaderValueMatch::Exact(v.get_ref().clone())),
            (None, Some(re)) => self
                .regex(re, &format!("{p}.regex"))
                .map(HeaderValueMatch::Regex),
            (None, None) => Some(HeaderValueMatch::Present),
        };
        Some(HeaderMatch {
            name: name?,
            value: value?,
        })
    }

    fn regex(&mut self, raw: &Spanned<String>, kp: &str) -> Option<Regex> {
        // Anchored so a pattern means the whole value, as users expect from
        // a "match" key; the group keeps alternations inside the anchors.
        match Regex::new(&format!("^(?:{})$", raw.get_ref())) {
            Ok(re) => Some(re),
            Err(e) => {
                // regex's message repeats the pattern over several lines;
                // its last line is the reason.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned();
                self.d
                    .error(
                        "invalid-regex",
                        Some(raw.span()),
                        kp,
                        format!("invalid regex `{}`: {reason}", raw.get_ref()),
                    )
                    .hint("fix the pattern (Rust regex syntax); it is matched against the whole value");
                None
            }
        }
    }

    fn pool(&mut self, name: &str, name_span: Span, item: &Item<RawPool>) -> Option<Pool> {
        let raw = item.value.as_ref()?;
        self.partial = !item.clean;
        let p = &item.path;
        let mut ok = self.name(&Spanned::new(name_span, name.to_owned()), p);

        let algorithm_name = raw
            .algorithm
            .as_ref()
            .map_or("round_robin", |a| a.get_ref());
        let known_algorithm = ALGORITHMS.contains(&algorithm_name);
        if let Some(a) = raw.algorithm.as_ref().filter(|_| !known_algorithm) {
            self.d
                .error(
                    "unknown-algorithm",
                    Some(a.span()),
                    format!("{p}.algorithm"),
                    format!("unknown algorithm `{algorithm_name}`"),
                )
                .hint(
                    match did_you_mean(algorithm_name, ALGORITHMS.iter().copied()) {
                        Some(m) => {
                            format!("did you mean `{m}`? valid algorithms: {}", list(ALGORITHMS))
                        }
                        None => format!("valid algorithms: {}", list(ALGORITHMS)),
                    },
                );
            ok = false;
        }
        let hash = raw.hash.as_ref().and_then(|h| {
            let policy = self.hash(h.get_ref(), &format!("{p}.hash"));
            ok &= policy.is_some();
            policy
        });
        if let Some(h) = &raw.hash
            && !self.partial
            && known_algorithm
            && algorithm_name != "hash"
        {
            self.d
                .warning(
                    "unused-hash",
                    Some(h.span()),
                    format!("{p}.hash"),
                    format!("`hash` is ignored: the algorithm is `{algorithm_name}`"),
                )
                .hint("remove `hash`, or set `algorithm = \"hash\"`");
        }
        let algorithm = match algorithm_name {
            "least_request" => Some(Algorithm::LeastRequest),
            "random" => Some(Algorithm::Random),
            "first" => Some(Algorithm::First),
            "hash" => {
                if raw.hash.is_none() && !self.partial {
                    let span = raw.algorithm.as_ref().map(|a| a.span());
                    self.d
                        .error(
                            "missing-hash-key",
                            span,
                            format!("{p}.hash"),
                            "`algorithm = \"hash\"` needs a `hash` table saying what to hash",
                        )
                        .hint("add `hash = { key = \"header:x-user\" }` (or \"cookie:NAME\", \"client_ip\", \"path\")");
                    ok = false;
                }
                hash.map(Algorithm::Hash)
            }
            _ => Some(Algorithm::RoundRobin),
        };

        let protocol = match raw.protocol.as_ref() {
            None => Some(Protocol::Http1),
            Some(proto) => match proto.get_ref().as_str() {
                "http1" => Some(Protocol::Http1),
                "h2" => Some(Protocol::H2),
                other => {
                    self.d
                        .error(
                            "invalid-value",
                            Some(proto.span()),
                            format!("{p}.protocol"),
                            format!("unknown protocol `{other}`"),
                        )
                        .hint(suggest(other, PROTOCOLS, "protocols"));
                    None
                }
            },
        };
        if protocol == Some(Protocol::H2) {
            self.unused_for_h2(raw, p);
        }
        let backends = self.backends(raw, p);
        ok &= backends.is_some();
        if let (Some(a), Some(b)) = (&algorithm, &backends)
            && *a != Algorithm::First
        {
            self.skewed_weights(b, raw, p);
        }
        let health = raw
            .health
            .as_ref()
            .map(|h| self.health(h.get_ref(), &format!("{p}.health")));
        let outlier = self.outlier(
            raw.outlier.as_ref().map(|o| o.get_ref()),
            &format!("{p}.outlier"),
        );
        if let (Some(Some(o)), Some(b)) = (&outlier, &backends) {
            self.outlier_never_ejects(o, b, raw, p);
        }
        let panic_threshold = self.fraction(
            raw.panic_threshold.as_ref(),
            &format!("{p}.panic_threshold"),
            0.5,
        );
        let slow_start = self.slow_start(raw, algorithm_name, p);
        let idle_per_backend = self.int(
            raw.idle_per_backend.as_ref(),
            &format!("{p}.idle_per_backend"),
            Pool::DEFAULT_IDLE_PER_BACKEND,
            0,
            100_000,
        );
        let timeouts = self.timeouts(
            raw.timeouts.as_ref().map(|t| t.get_ref()),
            &format!("{p}.timeouts"),
        );
        let retries = self.retries(
            raw.retries.as_ref().map(|r| r.get_ref()),
            &format!("{p}.retries"),
        );

        let health = match health {
            Some(Some(h)) => Some(h),
            Some(None) => return None,
            None => None,
        };
        Some(Pool {
            name: name.into(),
            algorithm: algorithm?,
            protocol: protocol?,
            backends: backends?,
            health,
            outlier: outlier?,
            panic_threshold: panic_threshold?,
            slow_start: slow_start?,
            idle_per_backend: idle_per_backend?,
            timeouts: timeouts?,
            retries: retries?,
        })
        .filter(|_| ok)
    }

    /// `slow_start`: absent (off), or a positive duration of at most an
    /// hour; ignored, with a warning, by the algorithms that do not weigh
    /// a pick (`hash` keeps each key where it hashes, `first` its order).
    fn slow_start(&mut self, raw: &RawPool, algorithm: &str, p: &str) -> Option<Option<Duration>> {
        let Some(r) = raw.slow_start.as_ref() else {
            return Some(None);
        };
        let kp = format!("{p}.slow_start");
        let d = self.duration(Some(r), &kp, Duration::from_secs(30))?;
        if d > MAX_SLOW_START {
            self.d
                .error(
                    "out-of-range",
                    Some(r.span()),
                    kp,
                    format!(
                        "`slow_start` is at most {}, not {}",
                        humantime::format_duration(MAX_SLOW_START),
                        humantime::format_duration(d)
                    ),
                )
                .hint("a server warms up in seconds or minutes; use e.g. \"30s\"");
            return None;
        }
        if matches!(algorithm, "hash" | "first") && !self.partial {
            self.d
                .warning(
                    "unused-slow-start",
                    Some(r.span()),
                    kp,
                    format!(
                        "`slow_start` is ignored: a `{algorithm}` pool does not weigh its picks"
                    ),
                )
                .hint("remove it, or use `round_robin`, `least_request` or `random`");
        }
        Some(Some(d))
    }

    /// Keys an `h2` pool reads nothing of: it keeps one multiplexed
    /// connection per backend (no idle ones to count or time out) and
    /// carries no WebSocket tunnel. Given, they would promise a limit that
    /// is not kept.
    fn unused_for_h2(&mut self, raw: &RawPool, p: &str) {
        if self.partial {
            return;
        }
        let timeouts = raw.timeouts.as_ref().map(|t| t.get_ref());
        let unused = [
            (
                "idle_per_backend",
                raw.idle_per_backend.as_ref().map(|v| v.span()),
            ),
            (
                "timeouts.idle",
                timeouts.and_then(|t| t.idle.as_ref()).map(|v| v.span()),
            ),
            (
                "timeouts.tunnel",
                timeouts.and_then(|t| t.tunnel.as_ref()).map(|v| v.span()),
            ),
        ];
        for (key, span) in unused {
            let Some(span) = span else { continue };
            self.d
                .warning(
                    "unused-for-h2",
                    Some(span),
                    format!("{p}.{key}"),
                    format!("`{key}` is ignored: an `h2` pool keeps one multiplexed connection per backend open, with no idle connections or WebSocket tunnels"),
                )
                .hint("remove it, or set `protocol = \"http1\"`");
        }
    }

    fn hash(&mut self, raw: &RawHash, p: &str) -> Option<HashPolicy> {
        let key_str = raw.key.get_ref().as_str();
        // The kind and name of a `header:`/`cookie:` key, to say which
        // name is wrong rather than list the forms again.
        let (key, named) = if let Some(name) = key_str.strip_prefix("header:") {
            let key = HeaderName::from_bytes(name.as_bytes()).ok();
            (key.map(HashKey::Header), Some(("header", name, "x-user")))
        } else if let Some(name) = key_str.strip_prefix("cookie:") {
            // As for `access_log.cookies`: a cookie name is an HTTP token
            // (RFC 6265); no request carries any other, so every request
            // would hash as keyless.
            let key = is_token(name).then(|| HashKey::Cookie(name.to_owned()));
            (key, Some(("cookie", name, "session")))
        } else {
            let key = match key_str {
                "client_ip" => Some(HashKey::ClientIp),
                "path" => Some(HashKey::Path),
                _ => None,
            };
            (key, None)
        };
        if key.is_none() {
            let (message, hint) = match named {
                Some((kind, name, example)) => (
                    format!("`{name}` is not a valid {kind} name"),
                    format!(
                        "a {kind} name is a token (letters, digits and !#$%&'*+-.^_`|~), e.g. \"{kind}:{example}\""
                    ),
                ),
                None => (
                    format!("cannot hash on `{key_str}`"),
                    format!(
                        "valid keys: {} (NAME a header or cookie name)",
                        list(HASH_KEYS)
                    ),
                ),
            };
            self.d
                .error(
                    "invalid-hash-key",
                    Some(raw.key.span()),
                    format!("{p}.key"),
                    message,
                )
                .hint(hint);
        }
        let on_missing = match raw.on_missing.as_ref() {
            None => Some(MissingKey::HashEmpty),
            Some(m) => match m.get_ref().as_str() {
                "hash_empty" => Some(MissingKey::HashEmpty),
                "random" => Some(MissingKey::Random),
                other => {
                    self.d
                        .error(
                            "invalid-value",
                            Some(m.span()),
                            format!("{p}.on_missing"),
                            format!("unknown `on_missing` value `{other}`"),
                        )
                        .hint(suggest(other, ON_MISSING, "values"));
                    None
                }
            },
        };
        Some(HashPolicy {
            key: key?,
            on_missing: on_missing?,
        })
    }

    fn backends(&mut self, raw: &RawPool, p: &str) -> Option<Vec<Backend>> {
        let list = raw.backends.get_ref();
        if list.is_empty() {
            self.d
                .error(
                    "empty-pool",
                    Some(raw.backends.span()),
                    format!("{p}.backends"),
                    "the pool has no backends: every request to it would fail",
                )
                .hint("add one: `backends = [{ addr = \"127.0.0.1:9000\" }]`");
            return None;
        }
        let mut ok = true;
        let mut out: Vec<Backend> = Vec::new();
        let mut seen: Vec<(SocketAddr, usize)> = Vec::new();
        for (i, b) in list.iter().enumerate() {
            match self.backend(b.get_ref(), &format!("{p}.backends[{i}]")) {
                Some(backend) => {
                    if let Some((_, first)) = seen.iter().find(|(a, _)| *a == backend.addr) {
                        self.d
                            .error(
                                "duplicate-backend",
                                Some(b.get_ref().addr.span()),
                                format!("{p}.backends[{i}].addr"),
                                format!(
                                    "backend {} is already listed as backends[{first}]",
                                    backend.addr
                                ),
                            )
                            .hint("list each backend once; to send it more traffic, raise its `weight`");
                        ok = false;
                    } else {
                        seen.push((backend.addr, i));
                    }
                    out.push(backend);
                }
                None => ok = false,
            }
        }
        if ok && !self.partial && out.iter().all(|b| b.weight == 0) {
            self.d
                .error(
                    "zero-weight",
                    Some(raw.backends.span()),
                    format!("{p}.backends"),
                    "every backend has weight 0 (drained): the pool can never pick one",
                )
                .hint("give at least one backend a weight of 1 or more");
            ok = false;
        }
        ok.then_some(out)
    }

    /// Weights that leave one backend carrying nearly the whole pool (the
    /// shape of incident 5): legal, sometimes meant, so a warning that says
    /// what it does. `first` ignores weights and is not judged by them.
    fn skewed_weights(&mut self, backends: &[Backend], raw: &RawPool, p: &str) {
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        let Some((i, top)) = backends.iter().enumerate().max_by_key(|(_, b)| b.weight) else {
            return;
        };
        let share = f64::from(top.weight) / total as f64;
        if weighted < 2 || share <= SKEWED_SHARE {
            return;
        }
        let span = raw.backends.get_ref().get(i).map(|b| {
            b.get_ref()
                .weight
                .as_ref()
                .map_or_else(|| b.span(), |w| w.span())
        });
        self.d
            .warning(
                "skewed-weights",
                span,
                format!("{p}.backends[{i}].weight"),
                format!(
                    "backend {} gets {:.1}% of the pool's weight: the other {} backend(s) share the rest and it carries the pool almost alone",
                    top.addr,
                    share * 100.0,
                    weighted - 1
                ),
            )
            .hint("even out the weights; drain a backend with `weight = 0`; to make a share limit a hard rule, use `max_backend_share` in the team's standards");
    }

    fn backend(&mut self, raw: &RawBackend, p: &str) -> Option<Backend> {
        let addr = self.socket_addr(&raw.addr, &format!("{p}.addr"));
        let weight = self.int(
            raw.weight.as_ref(),
            &format!("{p}.weight"),
            1,
            0,
            MAX_WEIGHT,
        );
        Some(Backend {
            addr: addr?,
            weight: weight?,
        })
    }

    fn health(&mut self, raw: &RawHealth, p: &str) -> Option<HealthCheck> {
        let path = raw.path.get_ref();
        // The probe's request is built from this path: one that forms no
        // request target would fail every check, whatever the backend.
        let problem = if !path.starts_with('/') {
            Some((
                format!("health check path `{path}` does not start with `/`"),
                format!("write \"/{path}\""),
            ))
        } else if path.len() > MAX_HEALTH_PATH {
            Some((
                format!(
                    "health check path is {} bytes: longer than {MAX_HEALTH_PATH}",
                    path.len()
                ),
                "probe a short path, such as \"/healthz\"".to_owned(),
            ))
        } else {
            path_problem(path, true)
                .map(|(message, hint)| (format!("health check {message}"), hint))
        };
        let path_ok = problem.is_none();
        if let Some((message, hint)) = problem {
            self.d
                .error(
                    "invalid-path",
                    Some(raw.path.span()),
                    format!("{p}.path"),
                    message,
                )
                .hint(hint);
        }
        let interval = self.duration(
            raw.interval.as_ref(),
            &format!("{p}.interval"),
            Duration::from_secs(5),
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{p}.timeout"),
            Duration::from_secs(2),
        );
        let healthy = self.int(
            raw.healthy_threshold.as_ref(),
            &format!("{p}.healthy_threshold"),
            2,
            1,
            100,
        );
        let unhealthy = self.int(
            raw.unhealthy_threshold.as_ref(),
            &format!("{p}.unhealthy_threshold"),
            3,
            1,
            100,
        );
        let expect = match &raw.expect_status {
            None => Some((200, 399)),
            Some(s) => self.status_range(s, &format!("{p}.expect_status")),
        };
        Some(HealthCheck {
            path: path.clone(),
            interval: interval?,
            timeout: timeout?,
            healthy_threshold: healthy?,
            unhealthy_threshold: unhealthy?,
            expect_status: expect?,
        })
        .filter(|_| path_ok)
    }

    fn status_range(&mut self, raw: &Spanned<String>, kp: &str) -> Option<(u16, u16)> {
        let s = raw.get_ref().trim();
        let parse = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match s.split_once('-') {
            Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(lo, hi)| lo <= hi),
            None => parse(s).map(|c| (c, c)),
        };
        if range.is_none() {
            self.d
                .error(
                    "invalid-value",
                    Some(raw.span()),
                    kp,
                    format!("`{s}` is not a status code or range"),
                )
                .hint("write one code like \"200\" or an inclusive range like \"200-399\" (codes 100 to 599)");
        }
        range
    }

    fn outlier(&mut self, raw: Option<&RawOutlier>, p: &str) -> Option<Option<Outlier>> {
        let failures = self.int(
            raw.and_then(|r| r.consecutive_failures.as_ref()),
            &format!("{p}.consecutive_failures"),
            5,
            1,
            1000,
        );
        let base = self.duration(
            raw.and_then(|r| r.base_ejection.as_ref()),
            &format!("{p}.base_ejection"),
            Duration::from_secs(30),
        );
        let max = self.duration(
            raw.and_then(|r| r.max_ejection.as_ref()),
            &format!("{p}.max_ejection"),
            Duration::from_secs(300),
        );
        let fraction = self.fraction(
            raw.and_then(|r| r.max_ejected_fraction.as_ref()),
            &format!("{p}.max_ejected_fraction"),
            0.5,
        );
        let (base, max) = (base?, max?);
        // Both written: no default stands in for either, so the check
        // holds even when another key of the pool is broken.
        let both = raw.is_some_and(|r| r.base_ejection.is_some() && r.max_ejection.is_some());
        if max < base && (!self.partial || both) {
            let span = raw.and_then(|r| r.max_ejection.as_ref().or(r.base_ejection.as_ref()));
            self.d
                .error(
                    "out-of-range",
                    span.map(|s| s.span()),
                    format!("{p}.max_ejection"),
                    format!(
                        "`max_ejection` ({}) is shorter than `base_ejection` ({})",
                        humantime::format_duration(max),
                        humantime::format_duration(base)
                    ),
                )
                .hint("make `max_ejection` at least `base_ejection`");
            return None;
        }
        let outlier = Outlier {
            consecutive_failures: failures?,
            base_ejection: base,
            max_ejection: max,
            max_ejected_fraction: fraction?,
        };
        // Checked even when disabled, so turning it back on cannot surprise.
        let enabled = raw
            .and_then(|r| r.enabled.as_ref())
            .is_none_or(|e| *e.get_ref());
        Some(enabled.then_some(outlier))
    }

    /// Outlier detection on, in a pool whose `max_ejected_fraction` can
    /// never let its first backend go: a pool of one is left alone, as
    /// ejecting its only backend would serve nothing.
    fn outlier_never_ejects(&mut self, o: &Outlier, backends: &[Backend], raw: &RawPool, p: &str) {
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        if weighted < 2 || o.can_eject(weighted) || self.partial {
            return;
        }
        let span = raw.outlier.as_ref().map(|r| {
            r.get_ref()
                .max_ejected_fraction
                .as_ref()
                .map_or_else(|| r.span(), |f| f.span())
        });
        self.d
            .warning(
                "outlier-never-ejects",
                span,
                format!("{p}.outlier.max_ejected_fraction"),
                format!(
                    "outlier detection can never eject a backend: `max_ejected_fraction` {} of {weighted} backends with a weight is under one",
                    o.max_ejected_fraction
                ),
            )
            .hint(format!(
                "raise it to at least {}, or set `enabled = false` to say it is off",
                (100.0 / weighted as f64).ceil() / 100.0
            ));
    }

    fn timeouts(&mut self, raw: Option<&RawTimeouts>, p: &str) -> Option<Timeouts> {
        let connect = self.duration(
            raw.and_then(|r| r.connect.as_ref()),
            &format!("{p}.connect"),
            Duration::from_secs(2),
        );
        let response = self.duration(
            raw.and_then(|r| r.response.as_ref()),
            &format!("{p}.response"),
            Duration::from_secs(30),
        );
        let idle = self.duration(
            raw.and_then(|r| r.idle.as_ref()),
            &format!("{p}.idle"),
            Duration::from_secs(60),
        );
        let tunnel = self.duration(
            raw.and_then(|r| r.tunnel.as_ref()),
            &format!("{p}.tunnel"),
            Duration::from_secs(3600),
        );
        Some(Timeouts {
            connect: connect?,
            response: response?,
            idle: idle?,
            tunnel: tunnel?,
        })
    }

    fn retries(&mut self, raw: Option<&RawRetries>, p: &str) -> Option<Retries> {
        let attempts = self.int(
            raw.and_then(|r| r.attempts.as_ref()),
            &format!("{p}.attempts"),
            1,
            0,
            Retries::MAX_ATTEMPTS as i64,
        );
        // 1.0: never short of a first retry (with one retry per request,
        // retries in flight can never outnumber requests in flight), so
        // one backend's death costs no idempotent request however many
        // were in flight on it (docs/config.md, retries).
        let budget = self.fraction(
            raw.and_then(|r| r.budget.as_ref()),
            &format!("{p}.budget"),
            1.0,
        );
        let min = self.int(
            raw.and_then(|r| r.min_concurrent.as_ref()),
            &format!("{p}.min_concurrent"),
            3,
            0,
            1000,
        );
        Some(Retries {
            attempts: attempts?,
            budget: budget?,
            min_concurrent: min?,
        })
    }

    // --- leaf values ---

    /// Names appear in metrics labels, logs and URLs of the admin API, so
    /// they keep to a plain alphabet.
    /// A valid name that no earlier item of the same kind has.
    fn unique_name<'r>(
        &mut self,
        kind: &str,
        code: &'static str,
        raw: &'r Spanned<String>,
        item_path: &'r str,
        names: &mut HashMap<&'r str, &'r str>,
    ) -> bool {
        let kp = format!("{item_path}.name");
        let mut ok = self.name(raw, &kp);
        let name = raw.get_ref().as_str();
        if let Some(first) = names.get(name) {
            self.d
                .error(
                    code,
                    Some(raw.span()),
                    kp,
                    format!("{kind} `{name}` is already defined at {first}"),
                )
                .hint(format!("{kind} names must be unique: rename one of them"));
            ok = false;
        } else {
            names.insert(name, item_path);
        }
        ok
    }

    fn name(&mut self, raw: &Spanned<String>, kp: &str) -> bool {
        let name = raw.get_ref();
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.d
                .error(
                    "invalid-name",
                    Some(raw.span()),
                    kp,
                    format!("`{name}` is not a valid name"),
                )
                .hint("use letters, digits, `-`, `_` and `.` only, e.g. \"auth\"");
        }
        ok
    }

    fn socket_addr(&mut self, raw: &Spanned<String>, kp: &str) -> Option<SocketAddr> {
        let s = raw.get_ref().trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Some(addr);
        }
        let split = s.rsplit_once(':').filter(|(host, _)| !host.is_empty());
        let ip = |host: &str| {
            host.trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok()
        };
        let (message, hint) = match split {
            // Digits, but more than a port holds: say so, whatever the host.
            Some((host, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_err() =>
            {
                (
                    format!("port {port} of `{s}` is out of range: ports go up to 65535"),
                    if ip(host) {
                        "write a port from 1 to 65535".to_owned()
                    } else {
                        "write a port from 1 to 65535, and an IP address: Fulcrum does not resolve DNS names in config".to_owned()
                    },
                )
            }
            Some((host, port)) if port.parse::<u16>().is_ok() && !ip(host) => (
                format!("`{s}` is not an IP:port address: `{host}` is not an IP address"),
                "use an IP address; Fulcrum does not resolve DNS names in config".to_owned(),
            ),
            _ => (
                format!("`{s}` is not an IP:port address"),
                "write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"".to_owned(),
            ),
        };
        self.d
            .error("invalid-address", Some(raw.span()), kp, message)
            .hint(hint);
        None
    }

    /// A humantime duration, `default` when absent. Zero is refused: every
    /// duration in the config is an interval or a deadline, and zero would
    /// mean "never" or "immediately", both outages.
    fn duration(
        &mut self,
        raw: Option<&Spanned<String>>,
        kp: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(d) if d.is_zero() => {
                self.d
                    .error(
                        "invalid-duration",
                        Some(raw.span()),
                        kp,
                        "duration must be greater than zero",
                    )
                    .hint(format!(
                        "remove it for the default ({}) or give a positive duration",
                        humantime::format_duration(default)
                    ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.d
                    .error(
                        "invalid-duration",
                        Some(raw.span()),
                        kp,
                        format!("`{}` is not a duration: {e}", raw.get_ref()),
                    )
                    .hint(DURATION_HINT);
                None
            }
        }
    }

    fn int(
        &mut self,
        raw: Option<&Spanned<i64>>,
        kp: &str,
        default: u32,
        lo: i64,
        hi: i64,
    ) -> Option<u32> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let v = *raw.get_ref();
        match u32::try_from(v) {
            Ok(n) if (lo..=hi).contains(&v) => Some(n),
            _ => {
                self.d
                    .error(
                        "out-of-range",
                        Some(raw.span()),
                        kp,
                        format!("{v} is out of range: must be {lo} to {hi}"),
                    )
                    .hint(format!(
                        "pick a value from {lo} to {hi} (default {default})"
                    ));
                None
            }
        }
    }

    /// [`Self::int`] for byte counts that may pass 4 GiB.
    fn int64(
        &mut self,
        raw: Option<&Spanned<i64>>,
        kp: &str,
        default: u64,
        lo: i64,
        hi: i64,
    ) -> Option<u64> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let v = *raw.get_ref();
        if (lo..=hi).contains(&v) {
            Some(v as u64)
        } else {
            self.d
                .error(
                    "out-of-range",
                    Some(raw.span()),
                    kp,
                    format!("{v} is out of range: must be {lo} to {hi}"),
                )
                .hint(format!(
                    "pick a value from {lo} to {hi} (default {default})"
                ));
            None
        }
    }

    fn fraction(&mut self, raw: Option<&Spanned<f64>>, kp: &str, default: f64) -> Option<f64> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let v = *raw.get_ref();
        if (0.0..=1.0).contains(&v) {
            Some(v)
        } else {
            self.d
                .error(
                    "out-of-range",
                    Some(raw.span()),
                    kp,
                    format!("{v} is out of range: must be 0.0 to 1.0"),
                )
                .hint(format!("a fraction from 0.0 to 1.0 (default {default})"));
            None
        }
    }
}

/// Whether two listeners would fight over one socket: the same address, or
/// the same port with one of them on the wildcard address of that family.
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// An HTTP token (RFC 9110 §5.6.2), the grammar of cookie names
/// (RFC 6265): visible ASCII but the separators.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Why `path` cannot be a request's path (with its query, when `query`):
/// (message, hint), or `None` when it can. Both the HTTP/1 codec
/// (proxy/src/http1/head.rs) and h2 hand the request target to
/// `http::uri::PathAndQuery`, so what it refuses no request carries, and
/// the router and the probe see what it keeps: the path alone, without the
/// query or a fragment.
fn path_problem(path: &str, query: bool) -> Option<(String, String)> {
    let whole = |s: &str| {
        PathAndQuery::try_from(s).is_ok_and(|pq| s == if query { pq.as_str() } else { pq.path() })
    };
    if whole(path) {
        return None;
    }
    // Each character tried alone, in the part of the target it is in: a
    // query may hold `` ` `` and a path may not; a path may hold `"` and a
    // query may not.
    let query_at = path.find('?').filter(|_| query).unwrap_or(path.len());
    let bad = path.char_indices().find_map(|(i, c)| {
        let alone = if i > query_at {
            format!("/?{c}")
        } else {
            format!("/{c}")
        };
        (!whole(&alone)).then_some(c)
    });
    let shown = path.escape_debug();
    Some(match bad {
        Some('?') => (
            format!("path `{shown}` has a query"),
            "routes match the path without its query: remove `?` and what follows".to_owned(),
        ),
        Some('#') => (
            format!("path `{shown}` has a fragment"),
            "a fragment is never sent in a request: remove `#` and what follows, or write `%23` for a literal `#`".to_owned(),
        ),
        Some(c) => {
            let what = match c {
                ' ' => "a space".to_owned(),
                c if c.is_control() => "a control character".to_owned(),
                c => format!("`{c}`"),
            };
            let encoded: String = c.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
            (
                format!("path `{shown}` has {what}, which no request path contains"),
                format!("write it percent-encoded, as clients send it: `{encoded}`"),
            )
        }
        // Every character is fine alone: the whole is too long for `http`.
        None => (
            format!("path is {} bytes: longer than any request target", path.len()),
            "shorten it".to_owned(),
        ),
    })
}
