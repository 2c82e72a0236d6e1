//! `explain`: why a request goes where it goes. Each route in order with the
//! condition that failed or "matched", the pool and its candidate backends,
//! and the backend the pool's real balancer picks (all backends healthy,
//! as offline there is no health to read; for `hash`, the key, its hash and
//! where it lands on the ring).

use std::net::IpAddr;

use fulcrum_config::Snapshot;
use fulcrum_config::balance::{Balancer, hash_key};
use fulcrum_config::snapshot::{
    HashKey, HeaderValueMatch, HostMatch, PathMatch, RequestView, RouteMatch,
};
use serde::Serialize;

use crate::diff::describe_algorithm;
use crate::simulate::ModelView;

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub request: String,
    pub client_ip: String,
    pub routes: Vec<RouteStep>,
    /// The matched route, if any.
    pub route: Option<String>,
    pub pool: Option<PoolStep>,
    /// 404 when no route matches, 503 when no backend can be picked.
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStep {
    pub route: String,
    pub matched: bool,
    /// The first condition that failed, or `matched`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStep {
    pub pool: String,
    pub algorithm: String,
    pub backends: Vec<Candidate>,
    pub hash: Option<HashStep>,
    /// The picked backend's address.
    pub pick: Option<String>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub addr: String,
    pub weight: u32,
    /// Always true offline: no health is known.
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct HashStep {
    /// `header:x-user`, `cookie:session`, `client_ip` or `path`.
    pub key: String,
    /// The key's value in this request, or null when it lacks it.
    pub value: Option<String>,
    /// xxh3 of the value (of "" when missing and `hash_empty`), hex.
    pub hash: Option<String>,
    /// Index of the ring point the hash lands on, the point, and the ring size.
    pub ring_index: Option<usize>,
    pub ring_point: Option<String>,
    pub ring_size: Option<usize>,
    pub on_missing: &'static str,
}

/// Why the first failing condition of `m` fails for `req`, or `None`.
pub fn mismatch(m: &RouteMatch, req: &RequestView<'_>) -> Option<String> {
    if let Some(h) = &m.host
        && !h.matches(req.host)
    {
        let want = match h {
            HostMatch::Exact(x) => format!("`{x}`"),
            HostMatch::Suffix(s) => format!("`*{s}`"),
        };
        return Some(match req.host {
            Some(got) => format!("host `{got}` is not {want}"),
            None => format!("the request has no host; {want} required"),
        });
    }
    if let Some(p) = &m.path
        && !p.matches(req.path)
    {
        return Some(match p {
            PathMatch::Exact(x) => format!("path `{}` is not `{x}`", req.path),
            PathMatch::Prefix(x) => format!("path `{}` does not start with `{x}`", req.path),
            PathMatch::Regex(r) => {
                format!("path `{}` does not match /{}/", req.path, r.as_str())
            }
        });
    }
    if !m.methods.is_empty() && !m.methods.contains(req.method) {
        let ms: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        return Some(format!(
            "method {} is not one of {}",
            req.method,
            ms.join(", ")
        ));
    }
    for h in &m.headers {
        if !h.matches(req.headers) {
            return Some(match &h.value {
                HeaderValueMatch::Present => format!("header `{}` is absent", h.name),
                HeaderValueMatch::Exact(v) => format!("header `{}` is not `{v}`", h.name),
                HeaderValueMatch::Regex(r) => {
                    format!("header `{}` does not match /{}/", h.name, r.as_str())
                }
            });
        }
    }
    None
}

pub fn explain(
    snapshot: &Snapshot,
    text: &str,
    req: &RequestView<'_>,
    client_ip: IpAddr,
) -> Explanation {
    let mut routes = Vec::new();
    let mut chosen = None;
    for r in &snapshot.routes {
        let why = mismatch(&r.matcher, req);
        routes.push(RouteStep {
            route: r.name.to_string(),
            matched: why.is_none(),
            reason: why.clone().unwrap_or_else(|| "matched".into()),
        });
        if why.is_none() {
            chosen = Some(r);
            break;
        }
    }
    // The explanation must agree with the data plane's own routing.
    debug_assert_eq!(
        chosen.map(|r| r.name.clone()),
        snapshot.route(req).map(|(_, r)| r.name.clone())
    );
    let mut status = None;
    let pool = chosen.map(|r| {
        let p = &snapshot.pools[r.pool];
        let balancer = Balancer::new(p);
        let view = ModelView::new(p, 0);
        let key = balancer
            .hash_policy()
            .and_then(|pol| hash_key(pol, req, client_ip));
        let hash = balancer.hash_policy().map(|pol| {
            let (name, value) = match &pol.key {
                // What `hash_key` hashes: the request's host, for `host`.
                HashKey::Header(n) if n == http::header::HOST => {
                    (format!("header:{n}"), req.host.map(str::to_owned))
                }
                HashKey::Header(n) => (
                    format!("header:{n}"),
                    req.headers
                        .get(n)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                ),
                HashKey::Cookie(c) => (format!("cookie:{c}"), cookie(req, c)),
                HashKey::ClientIp => ("client_ip".into(), Some(client_ip.to_string())),
                HashKey::Path => ("path".into(), Some(req.path.to_owned())),
            };
            let on_missing = match pol.on_missing {
                fulcrum_config::snapshot::MissingKey::HashEmpty => "hash_empty",
                fulcrum_config::snapshot::MissingKey::Random => "random",
            };
            let effective = key.or(match pol.on_missing {
                fulcrum_config::snapshot::MissingKey::HashEmpty => Some(Balancer::empty_key()),
                fulcrum_config::snapshot::MissingKey::Random => None,
            });
            let pos = effective.and_then(|k| balancer.ring_position(k));
            HashStep {
                key: name,
                value,
                hash: effective.map(|h| format!("{h:016x}")),
                ring_index: pos.map(|p| p.0),
                ring_point: pos.map(|p| format!("{:016x}", p.1)),
                ring_size: pos.map(|p| p.2),
                on_missing,
            }
        });
        let mut rng = fastrand::Rng::with_seed(1);
        let pick = balancer
            .pick(&view, key, &[], &mut rng)
            .map(|pk| p.backends[pk.index].addr.to_string());
        if pick.is_none() {
            status = Some(503);
        }
        let note = match p.algorithm.name() {
            "hash"
                if hash.as_ref().is_some_and(|h| h.value.is_none())
                    && hash.as_ref().is_some_and(|h| h.on_missing == "random") =>
            {
                "the request lacks the hash key: serve picks at random by weight".into()
            }
            "hash" => "the same key always goes to this backend while it is healthy".into(),
            "first" => "always the first healthy backend with weight above 0".into(),
            "round_robin" => {
                "the first pick of a fresh balancer; serve rotates per request in weight proportion"
                    .into()
            }
            _ => "one seeded draw; serve draws per request".into(),
        };
        PoolStep {
            pool: p.name.to_string(),
            algorithm: describe_algorithm(p),
            backends: p
                .backends
                .iter()
                .map(|b| Candidate {
                    addr: b.addr.to_string(),
                    weight: b.weight,
                    healthy: true,
                })
                .collect(),
            hash,
            pick,
            note,
        }
    });
    if chosen.is_none() {
        status = Some(404);
    }
    Explanation {
        request: text.to_owned(),
        client_ip: client_ip.to_string(),
        routes,
        route: chosen.map(|r| r.name.to_string()),
        pool,
        status,
    }
}

fn cookie(req: &RequestView<'_>, name: &str) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
}

pub fn render_human(e: &Explanation) -> String {
    let mut out = format!("request: {} (client {})\n", e.request, e.client_ip);
    out.push_str("routes, in order:\n");
    for (i, r) in e.routes.iter().enumerate() {
        let mark = if r.matched { "✓" } else { "✗" };
        out.push_str(&format!(
            "  {}. {mark} {:<16} {}\n",
            i + 1,
            r.route,
            r.reason
        ));
    }
    match &e.pool {
        None => out.push_str("no route matches: the request is refused with 404\n"),
        Some(p) => {
            out.push_str(&format!("route: {}\n", e.route.as_deref().unwrap_or("")));
            out.push_str(&format!("pool: {} ({})\n", p.pool, p.algorithm));
            for b in &p.backends {
                out.push_str(&format!(
                    "  {:<24} weight {:<4} {}\n",
                    b.addr,
                    b.weight,
                    if b.healthy {
                        "healthy (assumed offline)"
                    } else {
                        "unhealthy"
                    }
                ));
            }
            if let Some(h) = &p.hash {
                out.push_str(&format!(
                    "hash: key {} = {} → hash {} → ring point {} of {} ({})\n",
                    h.key,
                    h.value
                        .as_deref()
                        .map_or("(missing)".to_owned(), |v| format!("{v:?}")),
                    h.hash.as_deref().unwrap_or("none (random)"),
                    h.ring_index.map_or("-".into(), |i| i.to_string()),
                    h.ring_size.map_or("-".into(), |i| i.to_string()),
                    h.ring_point.as_deref().unwrap_or("-"),
                ));
                if h.value.is_none() {
                    out.push_str(&format!(
                        "  the request lacks the key; on_missing = {}\n",
                        h.on_missing
                    ));
                }
            }
            match &p.pick {
                Some(b) => out.push_str(&format!("pick: {b} ({})\n", p.note)),
                None => out.push_str("pick: none: no backend has weight above 0 (503)\n"),
            }
        }
    }
    out
}

/// [`explain`] a request written as people write it: `"METHOD URL"` and
/// `"name: value"` headers, routed as `serve` would route it (the URL's
/// host goes as the `Host` header; see [`served_host`]). `Err` says what
/// is wrong with the request.
///
/// [`served_host`]: fulcrum_config::standards::served_host
pub fn explain_text(
    snapshot: &Snapshot,
    text: &str,
    headers: &[String],
    client_ip: IpAddr,
) -> Result<Explanation, String> {
    let (method, uri, path) = fulcrum_config::standards::parse_request_line(text).map_err(|e| {
        format!(
            "`{text}` is not a request: {e}; write e.g. 'POST http://app.example.com/auth/login'"
        )
    })?;
    let mut map = http::HeaderMap::new();
    for h in headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}`: write 'name: value'"))?;
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.trim().as_bytes()),
            http::HeaderValue::from_str(v.trim()),
        ) else {
            return Err(format!("header `{h}` is not a valid header"));
        };
        map.append(n, v);
    }
    let host = fulcrum_config::standards::served_host(&uri, &mut map)
        .map_err(|e| format!("`{text}` {e}"))?;
    let view = RequestView {
        method: &method,
        host: host.as_deref(),
        path: &path,
        headers: &map,
    };
    Ok(explain(snapshot, text, &view, client_ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `explain` routes what `serve` would: the URL's host is the request's
    /// `Host` header, so a route on the `host` header matches it.
    #[test]
    fn the_urls_host_is_the_host_header_a_route_matches_on() {
        let text = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
name = "legacy"
match = { headers = [{ name = "host", value = "legacy.example.com" }] }
pool = "legacy"

[[route]]
name = "web"
pool = "web"

[pool.legacy]
backends = [{ addr = "127.0.0.1:9201" }]

[pool.web]
backends = [{ addr = "127.0.0.1:9202" }]
"#;
        let snapshot = fulcrum_config::check("t.toml", text).snapshot.unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let e = explain_text(&snapshot, "GET http://legacy.example.com/x", &[], ip).unwrap();
        assert_eq!(e.route.as_deref(), Some("legacy"));
        let e = explain_text(
            &snapshot,
            "GET /x",
            &["Host: legacy.example.com".into()],
            ip,
        )
        .unwrap();
        assert_eq!(e.route.as_deref(), Some("legacy"));
        let e = explain_text(&snapshot, "GET /x", &[], ip).unwrap();
        assert_eq!(e.route.as_deref(), Some("web"));
        let err = explain_text(
            &snapshot,
            "GET http://a.example/x",
            &["Host: b.example".into()],
            ip,
        )
        .unwrap_err();
        assert!(err.contains("another host"), "{err}");
    }

    /// A pool hashed on `header:host` hashes the host the request names,
    /// and `explain` shows that value: `App.Example.com:80` as
    /// `app.example.com`, the same as a request without the header.
    #[test]
    fn a_host_hash_key_shows_the_host_that_is_hashed() {
        let text = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
name = "web"
pool = "web"

[pool.web]
algorithm = "hash"
hash = { key = "header:host" }
backends = [{ addr = "127.0.0.1:9201" }, { addr = "127.0.0.1:9202" }]
"#;
        let snapshot = fulcrum_config::check("t.toml", text).snapshot.unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let hash = |url: &str, headers: &[String]| {
            let e = explain_text(&snapshot, url, headers, ip).unwrap();
            let h = e.pool.unwrap().hash.unwrap();
            (h.value, h.hash)
        };
        let named = hash("GET /x", &["Host: App.Example.com:80".into()]);
        assert_eq!(named.0.as_deref(), Some("app.example.com"));
        assert_eq!(named, hash("GET http://app.example.com/x", &[]));
    }
}
