//! Pre-flight: before a change serves anything, every new or changed
//! backend is probed directly, with the pool's health request and with the
//! requests the standards and tests expect that pool to serve. A server
//! that answers its health check but not logins (incident 2) is refused
//! here, not found by users.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{HealthCheck, Pool, Protocol, RequestView};
use fulcrum_config::standards::{PoolSelector, Rule, Standards};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Backends probed at once.
const CONCURRENCY: usize = 32;

/// The longest pre-flight waits for a response, whatever the pool allows:
/// a change waits on its slowest backend.
const MAX_RESPONSE_WAIT: Duration = Duration::from_secs(5);

/// What pre-flight found for every probed backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    pub backends: Vec<BackendProbe>,
}

/// One backend's probes, in the order sent.
#[derive(Debug, Clone, Serialize)]
pub struct BackendProbe {
    pub pool: String,
    pub addr: SocketAddr,
    /// Why it was probed: `new`, or what changed in its pool.
    pub reason: String,
    pub checks: Vec<ProbeCheck>,
}

/// One probe: a TCP connect, the health request or a rule's request.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheck {
    pub kind: CheckKind,
    /// `connect`, `health GET /healthz`, or `rule "logins reach auth"
    /// (standards.toml:3:8): POST http://app.example.com/auth/login`.
    pub what: String,
    /// The response status, when one came.
    pub status: Option<u16>,
    /// Passed, or why not, worded to follow `what`: `failed: Connection
    /// refused`, `answered 404: the server does not serve it`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Connect,
    Health,
    Rule,
}

impl ProbeReport {
    /// The backends found down (their connect or health request failed),
    /// by pool name and address.
    pub fn down(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.backends
            .iter()
            .filter(|b| b.down().is_some())
            .map(|b| (Arc::from(b.pool.as_str()), b.addr))
            .collect()
    }
}

impl BackendProbe {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.error.is_none())
    }

    /// The failed connect or health request: the backend is down, and a
    /// health check (if the pool has one) keeps it out until it passes.
    fn down(&self) -> Option<&ProbeCheck> {
        self.checks
            .iter()
            .find(|c| c.kind != CheckKind::Rule && c.error.is_some())
    }
}

/// Probes every backend of `new` that the running data plane does not
/// already serve the same way: backends that are new to their pool, and
/// every backend of a pool whose protocol or health check changed (all of
/// them when nothing runs yet). Backends with weight 0 get no traffic and
/// are not probed. `rules` are the server's standards and the config's
/// tests: the requests of those that `new` routes to a pool are sent to
/// its probed backends.
pub async fn probe(
    running: Option<&Snapshot>,
    new: &Snapshot,
    rules: &[&Standards],
) -> ProbeReport {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets(running, new, rules).into_iter().enumerate() {
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            (i, target.run().await)
        });
    }
    let mut backends = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(probed) => backends.push(probed),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    backends.sort_by_key(|(i, _)| *i);
    ProbeReport {
        backends: backends.into_iter().map(|(_, b)| b).collect(),
    }
}

/// One backend to probe, with everything it needs (owned: probes run as
/// tasks).
struct Target {
    pool: String,
    addr: SocketAddr,
    reason: String,
    protocol: Protocol,
    connect_timeout: Duration,
    response_timeout: Duration,
    health: Option<HealthCheck>,
    requests: Arc<[Probe]>,
}

/// A request a rule expects the pool to serve.
struct Probe {
    what: String,
    method: Method,
    path: String,
    /// With the `Host` the rule names (its URL's), if any.
    headers: HeaderMap,
    body: Bytes,
}

fn targets(running: Option<&Snapshot>, new: &Snapshot, rules: &[&Standards]) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, pool) in new.pools.iter().enumerate() {
        let before = running.and_then(|r| r.pool(&pool.name)).map(|(_, p)| p);
        let changed = before.and_then(|b| {
            if b.protocol != pool.protocol {
                Some("protocol changed")
            } else if b.health != pool.health {
                Some("health check changed")
            } else {
                None
            }
        });
        let requests: Arc<[Probe]> = rule_requests(new, i, rules).into();
        for backend in pool.backends.iter().filter(|b| b.weight > 0) {
            let served = before.is_some_and(|b| b.backends.iter().any(|x| x.addr == backend.addr));
            let reason = match (served, changed) {
                (false, _) => "new",
                (true, Some(why)) => why,
                (true, None) => continue,
            };
            out.push(Target {
                pool: pool.name.to_string(),
                addr: backend.addr,
                reason: reason.to_owned(),
                protocol: pool.protocol,
                connect_timeout: pool.timeouts.connect,
                response_timeout: pool.timeouts.response.min(MAX_RESPONSE_WAIT),
                health: pool.health.clone(),
                requests: requests.clone(),
            });
        }
    }
    out
}

/// The requests of every probed rule that `snapshot` routes to pool `pool`,
/// routed exactly as `check` routes them.
fn rule_requests(snapshot: &Snapshot, pool: usize, rules: &[&Standards]) -> Vec<Probe> {
    let mut out = Vec::new();
    for standards in rules {
        for rule in standards.rules.iter().filter(|r| r.probe) {
            let Some(req) = &rule.request else { continue };
            let view = RequestView {
                method: &req.method,
                host: req.host.as_deref(),
                path: &req.path,
                headers: &req.headers,
            };
            if snapshot.route(&view).is_none_or(|(_, r)| r.pool != pool) {
                continue;
            }
            let l = &rule.location;
            let mut what = format!(
                "rule \"{}\" ({}:{}:{}): {}",
                rule.name, l.file, l.line, l.col, req.text
            );
            if let Some(body) = &rule.body {
                what.push_str(&format!(" with a {}-byte body", body.len()));
            }
            out.push(Probe {
                what,
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: Bytes::from(rule.body.clone().unwrap_or_default()),
            });
        }
    }
    out
}

impl Target {
    async fn run(self) -> BackendProbe {
        let mut checks = Vec::new();
        let connected = connect(self.addr, self.connect_timeout).await;
        let up = connected.is_ok();
        checks.push(ProbeCheck {
            kind: CheckKind::Connect,
            what: "connect".into(),
            status: None,
            error: connected.err(),
        });
        // Every request opens a connection of its own: when the connect
        // failed, they would only fail the same way.
        if up {
            if let Some(h) = &self.health {
                let probe = Probe {
                    what: format!("health GET {}", h.path),
                    method: Method::GET,
                    path: h.path.clone(),
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                };
                let (lo, hi) = h.expect_status;
                checks.push(
                    self.check(
                        CheckKind::Health,
                        &probe,
                        h.timeout.min(MAX_RESPONSE_WAIT),
                        |s| {
                            (!(lo..=hi).contains(&s))
                                .then(|| format!("answered {s}, not {lo}-{hi}"))
                        },
                    )
                    .await,
                );
            }
            for probe in self.requests.iter() {
                checks.push(
                    self.check(CheckKind::Rule, probe, self.response_timeout, |s| match s {
                        404 | 421 => Some(format!("answered {s}: the server does not serve it")),
                        500.. => Some(format!("answered {s}: the server fails it")),
                        _ => None,
                    })
                    .await,
                );
            }
        }
        BackendProbe {
            pool: self.pool,
            addr: self.addr,
            reason: self.reason,
            checks,
        }
    }

    /// Sends `probe`; `judge` says what is wrong with a status, if anything.
    async fn check(
        &self,
        kind: CheckKind,
        probe: &Probe,
        wait: Duration,
        judge: impl Fn(u16) -> Option<String>,
    ) -> ProbeCheck {
        let (status, error) = match self.send(probe, wait).await {
            Ok(s) => (Some(s), judge(s)),
            Err(e) => (None, Some(e)),
        };
        ProbeCheck {
            kind,
            what: probe.what.clone(),
            status,
            error,
        }
    }

    /// One request on a connection of its own, in the pool's protocol;
    /// the response's status.
    async fn send(&self, probe: &Probe, wait: Duration) -> Result<u16, String> {
        let stream = connect(self.addr, self.connect_timeout)
            .await
            .map_err(|e| format!("could not connect: {e}"))?;
        // The rule's Host as written (its URL's, port included), else the
        // backend's address, as `serve` names a backend for a request
        // without one.
        let authority = probe
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or_else(|| self.addr.to_string(), str::to_owned);
        let mut req = Request::new(Full::new(probe.body.clone()));
        *req.method_mut() = probe.method.clone();
        *req.headers_mut() = probe.headers.clone();
        if !req.headers().contains_key(header::USER_AGENT) {
            req.headers_mut().insert(
                header::USER_AGENT,
                HeaderValue::from_static("fulcrum-preflight"),
            );
        }
        let io = TokioIo::new(stream);
        // The connection is ours (not a pooled client's), so the request can
        // name the rule's host while it goes to this backend's address.
        let exchange = async {
            match self.protocol {
                Protocol::Http1 => {
                    *req.uri_mut() = probe.path.parse().map_err(|e| format!("{e}"))?;
                    let host = HeaderValue::try_from(authority).map_err(|e| format!("{e}"))?;
                    req.headers_mut().insert(header::HOST, host);
                    let (mut sender, conn) = http1::handshake(io).await.map_err(failed)?;
                    respond(sender.send_request(req), conn).await
                }
                Protocol::H2 => {
                    // Over HTTP/2 the host is the `:authority`.
                    req.headers_mut().remove(header::HOST);
                    *req.uri_mut() = Uri::builder()
                        .scheme("http")
                        .authority(authority)
                        .path_and_query(probe.path.as_str())
                        .build()
                        .map_err(|e| format!("{e}"))?;
                    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("failed the HTTP/2 (h2c) handshake: {e}"))?;
                    respond(sender.send_request(req), conn).await
                }
            }
        };
        timeout(wait, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("got no response within {}", show(wait))))
    }
}

/// The status `send` gets, driving the connection meanwhile. Nothing is
/// spawned: when this returns (or times out) the connection is dropped,
/// and closed.
async fn respond(
    send: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    conn: impl Future,
) -> Result<u16, String> {
    tokio::pin!(send);
    let resp = tokio::select! {
        r = &mut send => r,
        // The connection ended first: the request learns why.
        _ = conn => send.await,
    };
    resp.map(|r| r.status().as_u16()).map_err(failed)
}

fn failed(e: hyper::Error) -> String {
    format!("failed before a response: {e}")
}

/// A TCP connection; `Err` worded to follow `connect`.
async fn connect(addr: SocketAddr, wait: Duration) -> Result<TcpStream, String> {
    match timeout(wait, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("failed: {e}")),
        Err(_) => Err(format!(
            "got no connection within {} (timeouts.connect)",
            show(wait)
        )),
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl ProbeReport {
    /// One line per failure that refuses the change: what was sent to which
    /// backend, what came back, and what to do.
    pub fn refusals(&self, new: &Snapshot, rules: &[&Standards]) -> Vec<String> {
        self.verdicts(new, rules)
            .into_iter()
            .filter_map(|(refuse, line)| refuse.then_some(line))
            .collect()
    }

    /// Failures that do not refuse the change: a new backend that is down
    /// in a pool whose health checks keep it out until it passes, while
    /// enough others pass.
    pub fn warnings(&self, new: &Snapshot, rules: &[&Standards]) -> Vec<String> {
        self.verdicts(new, rules)
            .into_iter()
            .filter_map(|(refuse, line)| (!refuse).then_some(line))
            .collect()
    }

    /// Every failure, and whether it refuses the change:
    /// - a rule's request answered 404 or 421: the server does not serve
    ///   what the standards expect of the pool (incident 2);
    /// - any other failure of a rule's request on a backend that passed its
    ///   connect and health request: it would get traffic and fail it;
    /// - a failed connect or health request (the backend is down): when the
    ///   pool has no health check (it would get traffic at once) or would
    ///   start with fewer passing backends than its standards' minimum.
    fn verdicts(&self, new: &Snapshot, rules: &[&Standards]) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for b in &self.backends {
            let Some((_, pool)) = new.pool(&b.pool) else {
                continue;
            };
            let who = format!("pool `{}` backend {} ({})", b.pool, b.addr, b.reason);
            let down = b.down();
            for c in b.checks.iter().filter(|c| c.kind == CheckKind::Rule) {
                let Some(error) = &c.error else { continue };
                let wrong_server = matches!(c.status, Some(404 | 421));
                if wrong_server || down.is_none() {
                    let advice = if wrong_server {
                        "point the pool at servers that serve it, or fix the rule if the service moved"
                    } else {
                        "fix the server before it takes traffic"
                    };
                    out.push((true, format!("{who}: {} {error}; {advice}", c.what)));
                }
            }
            let Some(c) = down else { continue };
            let error = c.error.as_deref().unwrap_or_default();
            let failed = format!("{who}: {} {error}", c.what);
            if pool.health.is_none() {
                out.push((
                    true,
                    format!(
                        "{failed}; pool `{}` has no health check, so it would get traffic at once: start the backend, remove it, or add a `health` check so it waits until it passes",
                        pool.name
                    ),
                ));
                continue;
            }
            let passing = self.passing(pool);
            let (min, rule) = minimum(pool, rules);
            if passing < min {
                let source = rule.map_or_else(
                    || "a pool needs at least one".to_owned(),
                    |r| {
                        let l = &r.location;
                        format!(
                            "rule \"{}\" ({}:{}:{}) requires {min}",
                            r.name, l.file, l.line, l.col
                        )
                    },
                );
                out.push((
                    true,
                    format!(
                        "{failed}; pool `{}` would start with {passing} passing backend(s) and {source}: start the failing backends first",
                        pool.name
                    ),
                ));
            } else {
                out.push((
                    false,
                    format!(
                        "{failed}; its health checks keep it out until it passes ({passing} backend(s) of pool `{}` pass)",
                        pool.name
                    ),
                ));
            }
        }
        out
    }

    /// Backends of `pool` with weight above 0 that passed, counting those
    /// not probed (the running data plane serves them the same way).
    fn passing(&self, pool: &Pool) -> usize {
        pool.backends
            .iter()
            .filter(|b| b.weight > 0)
            .filter(|b| {
                self.backends
                    .iter()
                    .find(|p| *p.pool == *pool.name && p.addr == b.addr)
                    .is_none_or(BackendProbe::passed)
            })
            .count()
    }
}

/// The most `min_backends` any rule asks of `pool`, and that rule; 1 when
/// none does.
fn minimum<'a>(pool: &Pool, rules: &[&'a Standards]) -> (usize, Option<&'a Rule>) {
    rules
        .iter()
        .flat_map(|s| &s.rules)
        .filter(|r| match &r.pool {
            Some(PoolSelector::All) => true,
            Some(PoolSelector::Named(n)) => **n == *pool.name,
            None => false,
        })
        .filter_map(|r| Some((r.min_backends?, Some(r))))
        .max_by_key(|(min, _)| *min)
        .filter(|(min, _)| *min >= 1)
        .unwrap_or((1, None))
}

#[cfg(test)]
mod tests;
