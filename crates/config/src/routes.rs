//! The routing table: routes in config order plus an index that finds the
//! first matching route without trying every route. The index is built with
//! the table and the table cannot be changed after, so the two never disagree.
//!
//! Lookup by host first (exact, then each `*.` suffix, then routes with no
//! host), then by path (exact map, a byte trie of prefixes, then regex and
//! path-less routes last). Each bucket lists route indices in config order,
//! so "first match wins" is the smallest matching index across the buckets
//! a request reaches; a bucket's scan stops at its first full match or as
//! soon as it passes the best index found so far.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Deref;

use regex::RegexSet;

use crate::snapshot::{HostMatch, PathMatch, RequestView, Route};

#[derive(Debug, Clone, Default)]
pub struct Routes {
    list: Vec<Route>,
    exact_hosts: HashMap<Box<str>, PathIndex>,
    suffix_hosts: HashMap<Box<str>, PathIndex>,
    any_host: PathIndex,
}

#[derive(Debug, Clone, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<u32>>,
    prefixes: Trie,
    regexes: Vec<u32>,
    /// All of `regexes`' patterns in one automaton: one pass over the path
    /// says which (if any) can match. `None` if the set would not compile
    /// within the regex crate's size limit; then each is tried in turn.
    regex_set: Option<RegexSet>,
    /// Routes without a path condition.
    pathless: Vec<u32>,
}

/// A byte trie of path prefixes; node 0 is the root (the empty prefix).
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Sorted by byte.
    edges: Vec<(u8, u32)>,
    routes: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    fn insert(&mut self, prefix: &str, route: u32) {
        let mut at = 0usize;
        for &b in prefix.as_bytes() {
            at = match self.nodes[at].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(k) => self.nodes[at].edges[k].1 as usize,
                Err(k) => {
                    let id = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.nodes[at].edges.insert(k, (b, id));
                    id as usize
                }
            };
        }
        self.nodes[at].routes.push(route);
    }
}

impl Routes {
    pub fn new(list: Vec<Route>) -> Routes {
        let mut routes = Routes {
            list,
            ..Routes::default()
        };
        for (i, route) in routes.list.iter().enumerate() {
            let i = i as u32;
            let paths = match &route.matcher.host {
                None => &mut routes.any_host,
                Some(HostMatch::Exact(h)) => routes
                    .exact_hosts
                    .entry(h.to_ascii_lowercase().into())
                    .or_default(),
                Some(HostMatch::Suffix(s)) => routes
                    .suffix_hosts
                    .entry(s.to_ascii_lowercase().into())
                    .or_default(),
            };
            match &route.matcher.path {
                Some(PathMatch::Exact(p)) => {
                    paths.exact.entry(p.as_str().into()).or_default().push(i)
                }
                Some(PathMatch::Prefix(p)) => paths.prefixes.insert(p, i),
                Some(PathMatch::Regex(_)) => paths.regexes.push(i),
                None => paths.pathless.push(i),
            }
        }
        let list = &routes.list;
        for paths in routes
            .exact_hosts
            .values_mut()
            .chain(routes.suffix_hosts.values_mut())
            .chain([&mut routes.any_host])
        {
            if paths.regexes.is_empty() {
                continue;
            }
            let patterns = paths
                .regexes
                .iter()
                .map(|&i| match &list[i as usize].matcher.path {
                    Some(PathMatch::Regex(re)) => re.as_str(),
                    _ => unreachable!("only regex routes are listed in `regexes`"),
                });
            paths.regex_set = RegexSet::new(patterns).ok();
        }
        routes
    }

    /// The first route, in config order, whose conditions all hold.
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, &Route)> {
        let mut best = u32::MAX;
        if let Some(host) = req.host {
            let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(host.to_ascii_lowercase())
            } else {
                Cow::Borrowed(host)
            };
            if let Some(paths) = self.exact_hosts.get(&*host) {
                self.scan_paths(paths, req, &mut best);
            }
            if !self.suffix_hosts.is_empty() {
                // Every `.`-suffix with at least one label before it:
                // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`.
                for (at, _) in host.match_indices('.').filter(|(at, _)| *at > 0) {
                    if let Some(paths) = self.suffix_hosts.get(&host[at..]) {
                        self.scan_paths(paths, req, &mut best);
                    }
                }
            }
        }
        self.scan_paths(&self.any_host, req, &mut best);
        (best != u32::MAX).then(|| (best as usize, &self.list[best as usize]))
    }

    fn scan_paths(&self, paths: &PathIndex, req: &RequestView<'_>, best: &mut u32) {
        if let Some(list) = paths.exact.get(req.path) {
            self.scan(list, req, best);
        }
        let trie = &paths.prefixes;
        let mut at = 0usize;
        self.scan(&trie.nodes[0].routes, req, best);
        for &b in req.path.as_bytes() {
            let node = &trie.nodes[at];
            match node.edges.binary_search_by_key(&b, |e| e.0) {
                Ok(k) => at = node.edges[k].1 as usize,
                Err(_) => break,
            }
            self.scan(&trie.nodes[at].routes, req, best);
        }
        if paths.regexes.first().is_some_and(|&i| i < *best) {
            match &paths.regex_set {
                // `is_match` allocates nothing; only a path that some regex
                // matches pays for the list of which ones.
                Some(set) if !set.is_match(req.path) => {}
                Some(set) => {
                    let candidates: Vec<u32> = set
                        .matches(req.path)
                        .iter()
                        .map(|k| paths.regexes[k])
                        .collect();
                    self.scan(&candidates, req, best);
                }
                None => self.scan(&paths.regexes, req, best),
            }
        }
        self.scan(&paths.pathless, req, best);
    }

    fn scan(&self, list: &[u32], req: &RequestView<'_>, best: &mut u32) {
        for &i in list {
            if i >= *best {
                return;
            }
            if self.list[i as usize].matcher.matches(req) {
                *best = i;
                return;
            }
        }
    }
}

impl Deref for Routes {
    type Target = [Route];
    fn deref(&self) -> &[Route] {
        &self.list
    }
}

impl<'a> IntoIterator for &'a Routes {
    type Item = &'a Route;
    type IntoIter = std::slice::Iter<'a, Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl FromIterator<Route> for Routes {
    fn from_iter<I: IntoIterator<Item = Route>>(iter: I) -> Self {
        Routes::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{HeaderMatch, HeaderValueMatch, RouteMatch};
    use http::{HeaderMap, Method};

    fn route(
        name: &str,
        host: Option<HostMatch>,
        path: Option<PathMatch>,
        methods: Vec<Method>,
    ) -> Route {
        Route {
            name: name.into(),
            matcher: RouteMatch {
                host,
                path,
                methods,
                headers: vec![],
            },
            pool: 0,
            failure_statuses: crate::snapshot::StatusSet::client_and_server_errors(),
        }
    }

    /// The indexed lookup must agree with trying every route in order, for
    /// every kind of condition and their overlaps.
    #[test]
    fn index_agrees_with_a_linear_scan() {
        let exact = |h: &str| Some(HostMatch::Exact(h.into()));
        let suffix = |s: &str| Some(HostMatch::Suffix(s.into()));
        let prefix = |p: &str| Some(PathMatch::Prefix(p.into()));
        let path = |p: &str| Some(PathMatch::Exact(p.into()));
        let regex = |r: &str| {
            Some(PathMatch::Regex(
                regex::Regex::new(&format!("^(?:{r})$")).unwrap(),
            ))
        };
        let mut list = vec![
            route(
                "post-login",
                exact("app.example.com"),
                path("/auth/login"),
                vec![Method::POST],
            ),
            route("auth", exact("app.example.com"), prefix("/auth/"), vec![]),
            route(
                "api-v",
                suffix(".example.com"),
                regex("/v[0-9]+/.*"),
                vec![],
            ),
            route("deep", suffix(".b.example.com"), prefix("/"), vec![]),
            route("any-auth", None, prefix("/auth"), vec![Method::GET]),
            route("static", None, prefix("/static/"), vec![]),
            route("exact-root", None, path("/"), vec![]),
            route("app-all", exact("app.example.com"), None, vec![]),
            route("wild-all", suffix(".example.com"), prefix("/"), vec![]),
        ];
        let mut tenant = route("tenant", None, prefix("/"), vec![]);
        tenant.matcher.headers.push(HeaderMatch {
            name: http::HeaderName::from_static("x-tenant"),
            value: HeaderValueMatch::Exact("blue".into()),
        });
        list.push(tenant);
        list.push(route("fallback", None, None, vec![]));
        let routes = Routes::new(list.clone());

        let mut blue = HeaderMap::new();
        blue.insert("x-tenant", "blue".parse().unwrap());
        let none = HeaderMap::new();
        let hosts = [
            None,
            Some("app.example.com"),
            Some("APP.Example.com"),
            Some("a.b.example.com"),
            Some("example.com"),
            Some("other.org"),
        ];
        let paths = [
            "/",
            "/auth/login",
            "/auth/",
            "/auth",
            "/authx",
            "/static/x.css",
            "/v2/users",
            "/v/x",
            "",
        ];
        let mut checked = 0;
        for host in hosts {
            for p in paths {
                for method in [Method::GET, Method::POST] {
                    for headers in [&none, &blue] {
                        let req = RequestView {
                            method: &method,
                            host,
                            path: p,
                            headers,
                        };
                        let linear = list.iter().position(|r| r.matcher.matches(&req));
                        assert_eq!(
                            routes.find(&req).map(|(i, _)| i),
                            linear,
                            "{method} {host:?} {p:?} {headers:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 9 * 2 * 2);
    }

    #[test]
    fn derefs_to_the_routes_in_config_order() {
        let routes: Routes = vec![
            route("a", None, None, vec![]),
            route("b", None, None, vec![]),
        ]
        .into_iter()
        .collect();
        assert_eq!(routes.len(), 2);
        assert_eq!(&*routes[1].name, "b");
    }
}
