//! Unit tests of the whole pipeline: source text in, snapshot and
//! diagnostics (and their rendering) out.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

use super::*;
use crate::snapshot::*;

/// The config shape from DESIGN.md, verbatim.
const CONTRACT: &str = r#"[admin]
listen = "127.0.0.1:9901"            # API, dashboard and /metrics

[[listener]]
name = "public"
bind = "127.0.0.1:8080"
# tls = { cert = "cert.pem", key = "key.pem" }   # terminates TLS; ALPN h2 + http/1.1

[[route]]
name = "auth"
match = { path_prefix = "/auth/", methods = ["GET", "POST"] }
pool = "auth"

[[route]]
name = "web"
match = { path_prefix = "/" }
pool = "web"

[pool.auth]
algorithm = "least_request"
backends = [{ addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9102", weight = 2 }]
health = { path = "/healthz", interval = "1s" }

[pool.web]
algorithm = "round_robin"
backends = [{ addr = "127.0.0.1:9201" }, { addr = "127.0.0.1:9202" }]
"#;

/// A small valid base that tests append to.
const BASE: &str = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "web"
pool = "web"

[pool.web]
backends = [{ addr = "127.0.0.1:9201" }]
"#;

fn run(src: &str) -> Checked {
    check("fulcrum.toml", src)
}

fn codes(src: &str) -> Vec<&'static str> {
    run(src).diagnostics.iter().map(|d| d.code).collect()
}

/// The one diagnostic with `code`, failing with everything found if there
/// is not exactly one.
fn only(src: &str, code: &str) -> Diagnostic {
    let checked = run(src);
    let found: Vec<&Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == code)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one `{code}`, got: {:#?}",
        checked.diagnostics
    );
    found[0].clone()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn contract_config_compiles() {
    let checked = run(CONTRACT);
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let s = checked.snapshot.expect("valid");
    assert_eq!(&*s.version, content_version(CONTRACT));
    assert_eq!(s.version.len(), 12);
    assert_eq!(
        s.admin,
        Some(Admin {
            listen: addr("127.0.0.1:9901"),
            token_file: None,
            tls: None,
        })
    );
    assert_eq!(
        s.listeners,
        vec![Listener {
            name: "public".into(),
            bind: addr("127.0.0.1:8080"),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            min_body_rate: 1024,
            send_timeout: Duration::from_secs(30),
            limits: Limits::DEFAULT,
            http2: Http2::DEFAULT,
            tls: None,
        }]
    );
    assert!(s.access_log.is_none());

    assert_eq!(s.routes.len(), 2);
    let auth = &s.routes[0];
    assert_eq!(&*auth.name, "auth");
    assert!(matches!(&auth.matcher.path, Some(PathMatch::Prefix(p)) if p == "/auth/"));
    assert_eq!(auth.matcher.methods, vec![Method::GET, Method::POST]);
    assert!(auth.matcher.host.is_none() && auth.matcher.headers.is_empty());
    assert_eq!(&*s.pools[auth.pool].name, "auth");
    assert_eq!(&*s.pools[s.routes[1].pool].name, "web");

    let (_, pool) = s.pool("auth").expect("auth pool");
    assert_eq!(pool.algorithm, Algorithm::LeastRequest);
    assert_eq!(
        pool.backends,
        vec![
            Backend {
                addr: addr("127.0.0.1:9101"),
                weight: 1
            },
            Backend {
                addr: addr("127.0.0.1:9102"),
                weight: 2
            },
        ]
    );
    assert_eq!(
        pool.health,
        Some(HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect_status: (200, 399),
        })
    );
    assert_eq!(
        pool.outlier,
        Some(Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.5,
        })
    );
    assert_eq!(pool.panic_threshold, 0.5);
    assert_eq!(pool.idle_per_backend, 64);
    assert_eq!(
        pool.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            tunnel: Duration::from_secs(3600),
        }
    );
    assert_eq!(pool.protocol, Protocol::Http1);
    assert_eq!(
        pool.retries,
        Retries {
            attempts: 1,
            budget: 1.0,
            min_concurrent: 3,
        }
    );
    let (_, web) = s.pool("web").expect("web pool");
    assert_eq!(web.algorithm, Algorithm::RoundRobin);
    assert!(web.health.is_none());
}

#[test]
fn every_key_compiles() {
    let src = r#"version = "2026-11-21.1"
[access_log]
path = "/var/log/fulcrum.log"
[[listener]]
name = "public"
bind = "127.0.0.1:0"
header_timeout = "5s"
idle_timeout = "500ms"
[[route]]
name = "auth"
match = { host = "App.Example.com", path_regex = "/auth/(login|logout)", methods = ["get"], headers = [{ name = "X-Tenant", value = "blue" }, { name = "x-user", regex = "[a-z]+" }, { name = "x-debug" }] }
pool = "auth"
[[route]]
name = "wild"
match = { host = "*.example.com", path = "/" }
pool = "auth"
[pool.auth]
algorithm = "hash"
hash = { key = "header:X-User", on_missing = "random" }
backends = [{ addr = "[::1]:9101", weight = 0 }, { addr = "127.0.0.1:9102", weight = 1000 }]
health = { path = "/healthz", interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 5, expect_status = "204" }
outlier = { enabled = false }
panic_threshold = 0
timeouts = { connect = "1s", response = "5s", idle = "10s" }
retries = { attempts = 0, budget = 1, min_concurrent = 0 }
"#;
    let checked = run(src);
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let s = checked.snapshot.expect("valid");
    assert_eq!(&*s.version, "2026-11-21.1");
    assert_eq!(
        s.access_log,
        Some(AccessLog {
            target: LogTarget::File("/var/log/fulcrum.log".into()),
            redact: Vec::new(),
            headers: Vec::new(),
            cookies: Vec::new(),
        })
    );
    assert_eq!(s.listeners[0].idle_timeout, Duration::from_millis(500));
    let m = &s.routes[0].matcher;
    assert_eq!(m.host, Some(HostMatch::Exact("app.example.com".into())));
    assert!(
        matches!(&m.path, Some(PathMatch::Regex(re)) if re.is_match("/auth/login") && !re.is_match("/auth/login/x"))
    );
    assert_eq!(m.methods, vec![Method::GET]);
    assert_eq!(m.headers.len(), 3);
    assert_eq!(m.headers[0].name.as_str(), "x-tenant");
    assert!(matches!(&m.headers[1].value, HeaderValueMatch::Regex(re) if !re.is_match("ab1")));
    assert!(matches!(m.headers[2].value, HeaderValueMatch::Present));
    assert_eq!(
        s.routes[1].matcher.host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    let p = &s.pools[0];
    assert_eq!(
        p.algorithm,
        Algorithm::Hash(HashPolicy {
            key: HashKey::Header(http::HeaderName::from_static("x-user")),
            on_missing: MissingKey::Random,
        })
    );
    assert_eq!(p.backends[0].weight, 0);
    assert_eq!(p.health.as_ref().map(|h| h.expect_status), Some((204, 204)));
    assert!(p.outlier.is_none());
    assert_eq!(p.panic_threshold, 0.0);
    assert_eq!(p.retries.attempts, 0);
}

#[test]
fn hash_defaults_to_hash_empty() {
    let src = BASE.replace(
        "[pool.web]\n",
        "[pool.web]\nalgorithm = \"hash\"\nhash = { key = \"client_ip\" }\n",
    );
    let s = run(&src).snapshot.expect("valid");
    assert_eq!(
        s.pools[0].algorithm,
        Algorithm::Hash(HashPolicy {
            key: HashKey::ClientIp,
            on_missing: MissingKey::HashEmpty
        })
    );
}

#[test]
fn version_is_a_stable_content_hash() {
    let a = run(BASE).snapshot.expect("valid");
    let b = run(BASE).snapshot.expect("valid");
    assert_eq!(a.version, b.version);
    let c = run(&format!("{BASE}\n")).snapshot.expect("valid");
    assert_ne!(a.version, c.version);
    assert!(a.version.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn base_is_clean() {
    let checked = run(BASE);
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
}

// --- one test per diagnostic code ---

#[test]
fn toml_syntax() {
    let d = only("[[listener]\nname = 1", "toml-syntax");
    assert_eq!((d.line, d.col), (1, 12));
    assert_eq!(run("[[listener]\nname = 1").diagnostics.len(), 1);
}

#[test]
fn unknown_key() {
    let src = BASE.replace("[pool.web]\n", "[pool.web]\nalgoritm = \"random\"\n");
    let d = only(&src, "unknown-key");
    assert_eq!(d.key_path, "pool.web.algoritm");
    assert_eq!(d.hint.as_deref(), Some("did you mean `algorithm`?"));

    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { path_prefx = \"/\" }\n",
    );
    let d = only(&src, "unknown-key");
    assert_eq!(d.key_path, "route[0].match.path_prefx");
    assert_eq!(d.hint.as_deref(), Some("did you mean `path_prefix`?"));

    let d = only(&format!("listeners = 1\n{BASE}"), "unknown-key");
    assert_eq!(d.key_path, "listeners");
    assert_eq!(d.hint.as_deref(), Some("did you mean `listener`?"));
}

#[test]
fn invalid_type() {
    let src = BASE.replace("name = \"web\"", "name = 7");
    let d = only(&src, "invalid-type");
    assert_eq!(d.key_path, "route[0].name");
    assert_eq!(d.message, "expected a string, found an integer");
    assert_eq!((d.line, d.col), (6, 8));

    let src = BASE.replace("9201\" }", "9201\", weight = \"2\" }");
    let d = only(&src, "invalid-type");
    assert_eq!(d.key_path, "pool.web.backends[0].weight");
    assert_eq!(d.message, "expected an integer, found a string");
}

#[test]
fn invalid_type_for_a_single_bracket_listener() {
    let src = BASE.replace("[[listener]]", "[listener]");
    let d = only(&src, "invalid-type");
    assert_eq!(d.key_path, "listener");
    assert_eq!(
        d.hint.as_deref(),
        Some("write each one as `[[listener]]`, with two brackets")
    );
    // A malformed `listener` is not also reported as absent.
    assert!(!codes(&src).contains(&"no-listener"));
}

#[test]
fn missing_key() {
    let src = BASE.replace("pool = \"web\"\n", "");
    let d = only(&src, "missing-key");
    assert_eq!(d.key_path, "route[0].pool");
    assert_eq!(d.message, "required key `pool` is missing");

    let src = format!("{BASE}health = {{ interval = \"1s\" }}\n");
    let d = only(&src, "missing-key");
    assert_eq!(d.key_path, "pool.web.health.path");
}

#[test]
fn invalid_value() {
    let src = BASE.replace(
        "[pool.web]\n",
        "[pool.web]\nalgorithm = \"hash\"\nhash = { key = \"path\", on_missing = \"rnadom\" }\n",
    );
    let d = only(&src, "invalid-value");
    assert_eq!(d.key_path, "pool.web.hash.on_missing");
    assert_eq!(d.hint.as_deref(), Some("did you mean `random`?"));

    let d = only(
        &format!("{BASE}health = {{ path = \"/\", expect_status = \"299-200\" }}\n"),
        "invalid-value",
    );
    assert_eq!(d.key_path, "pool.web.health.expect_status");
}

#[test]
fn no_listener() {
    let src = BASE.replace(
        "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n",
        "",
    );
    let d = only(&src, "no-listener");
    assert_eq!(d.severity, Severity::Error);
    assert!(run(&src).snapshot.is_none());
}

#[test]
fn duplicate_listener() {
    let src = format!("{BASE}[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8081\"\n");
    let d = only(&src, "duplicate-listener");
    assert_eq!(d.key_path, "listener[1].name");
    assert_eq!(
        d.message,
        "listener `public` is already defined at listener[0]"
    );
}

#[test]
fn duplicate_bind() {
    let src = format!("{BASE}[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:8080\"\n");
    let d = only(&src, "duplicate-bind");
    assert_eq!(d.key_path, "listener[1].bind");

    let src = format!("{BASE}[[listener]]\nname = \"other\"\nbind = \"0.0.0.0:8080\"\n");
    only(&src, "duplicate-bind");

    // Port 0 means "any free port": two of them never clash.
    let src = BASE.replace(":8080", ":0");
    let src = format!("{src}[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\n");
    assert!(run(&src).diagnostics.is_empty());
}

#[test]
fn invalid_address() {
    let src = BASE.replace("127.0.0.1:9201", "backend.internal:9201");
    let d = only(&src, "invalid-address");
    assert_eq!(d.key_path, "pool.web.backends[0].addr");
    assert_eq!(
        d.hint.as_deref(),
        Some("use an IP address; Fulcrum does not resolve DNS names in config")
    );

    let src = BASE.replace("127.0.0.1:8080", "8080");
    let d = only(&src, "invalid-address");
    assert_eq!(d.key_path, "listener[0].bind");
}

#[test]
fn admin_not_loopback_without_tls_is_refused() {
    let src = format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{BASE}");
    let d = only(&src, "admin-not-loopback");
    assert_eq!(d.severity, Severity::Error);
    assert!(d.hint.as_deref().unwrap().contains("tls"), "{d:?}");
    assert!(run(&src).snapshot.is_none());
    assert!(
        run(&format!("[admin]\nlisten = \"[::1]:9901\"\n{BASE}"))
            .diagnostics
            .is_empty()
    );
}

#[test]
fn admin_token_file_and_tests_are_kept() {
    let src = format!(
        "tests = []\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"admin.token\"\n{BASE}"
    );
    let s = run(&src).snapshot.expect("valid");
    assert_eq!(s.admin.unwrap().token_file.as_deref(), Some("admin.token"));
    let src = format!("[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \" \"\n{BASE}");
    assert_eq!(only(&src, "invalid-value").key_path, "admin.token_file");
}

#[test]
fn tests_files_that_cannot_be_read_or_parsed_are_errors() {
    let src = format!("tests = [\"login.tests.toml\"]\n{BASE}");
    let d = only(&src, "unreadable-tests");
    assert_eq!(d.key_path, "tests[0]");
    assert_eq!((d.line, d.col), (1, 10));
    let d = only("tests = \"x.toml\"\n", "invalid-type");
    assert_eq!(d.key_path, "tests");
}

#[test]
fn no_route() {
    let src = BASE.replace("[[route]]\nname = \"web\"\npool = \"web\"\n", "");
    let d = only(&src, "no-route");
    assert_eq!(d.severity, Severity::Warning);
    // The pool is then unused too; both are warnings, the config is valid.
    assert_eq!(codes(&src), vec!["unused-pool", "no-route"]);
    assert!(run(&src).snapshot.is_some());
}

#[test]
fn duplicate_route() {
    let src =
        format!("{BASE}[[route]]\nname = \"web\"\nmatch = {{ path = \"/x\" }}\npool = \"web\"\n");
    let d = only(&src, "duplicate-route");
    assert_eq!(d.key_path, "route[1].name");
}

#[test]
fn unknown_pool() {
    let src =
        format!("{BASE}[[route]]\nname = \"x\"\nmatch = {{ path = \"/x\" }}\npool = \"wbe\"\n");
    let d = only(&src, "unknown-pool");
    assert_eq!(d.key_path, "route[1].pool");
    assert_eq!(d.message, "no pool named `wbe`");
    assert_eq!(d.hint.as_deref(), Some("did you mean `web`?"));

    let src = BASE.replace("pool = \"web\"", "pool = \"billing\"");
    let d = only(&src, "unknown-pool");
    assert_eq!(d.hint.as_deref(), Some("defined pools: `web`"));
}

#[test]
fn unknown_pool_is_not_reported_for_a_broken_pool() {
    let src = BASE.replace("9201\" }", "9201\", wieght = 2 }");
    assert_eq!(codes(&src), vec!["unknown-key"]);
}

#[test]
fn unused_pool() {
    let src = format!("{BASE}[pool.spare]\nbackends = [{{ addr = \"127.0.0.1:9301\" }}]\n");
    let d = only(&src, "unused-pool");
    assert_eq!(d.key_path, "pool.spare");
    assert_eq!(d.severity, Severity::Warning);
}

#[test]
fn empty_pool() {
    let src = BASE.replace("[{ addr = \"127.0.0.1:9201\" }]", "[]");
    let d = only(&src, "empty-pool");
    assert_eq!(d.key_path, "pool.web.backends");
}

#[test]
fn zero_weight() {
    let src = BASE.replace("9201\" }", "9201\", weight = 0 }");
    let d = only(&src, "zero-weight");
    assert_eq!(d.key_path, "pool.web.backends");
}

#[test]
fn duplicate_backend() {
    let src = BASE.replace(
        "[{ addr = \"127.0.0.1:9201\" }]",
        "[{ addr = \"127.0.0.1:9201\" }, { addr = \"127.0.0.1:9201\", weight = 3 }]",
    );
    let d = only(&src, "duplicate-backend");
    assert_eq!(d.key_path, "pool.web.backends[1].addr");
    assert_eq!(
        d.message,
        "backend 127.0.0.1:9201 is already listed as backends[0]"
    );
}

#[test]
fn unknown_algorithm() {
    let src = BASE.replace(
        "[pool.web]\n",
        "[pool.web]\nalgorithm = \"least_requests\"\n",
    );
    let d = only(&src, "unknown-algorithm");
    assert_eq!(
        d.hint.as_deref(),
        Some(
            "did you mean `least_request`? valid algorithms: `round_robin`, `least_request`, `random`, `hash`, `first`"
        )
    );
}

#[test]
fn missing_hash_key() {
    let src = BASE.replace("[pool.web]\n", "[pool.web]\nalgorithm = \"hash\"\n");
    let d = only(&src, "missing-hash-key");
    assert_eq!(d.key_path, "pool.web.hash");
}

#[test]
fn keys_an_h2_pool_ignores_are_warned_of() {
    let src = BASE.replace(
        "[pool.web]\n",
        "[pool.web]\nprotocol = \"h2\"\nidle_per_backend = 4\ntimeouts = { idle = \"5s\", tunnel = \"1m\", response = \"5s\" }\n",
    );
    let checked = run(&src);
    assert!(checked.snapshot.is_some(), "warnings only");
    let paths: Vec<&str> = checked
        .diagnostics
        .iter()
        .filter(|d| d.code == "unused-for-h2")
        .inspect(|d| assert_eq!(d.severity, Severity::Warning))
        .map(|d| d.key_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "pool.web.idle_per_backend",
            "pool.web.timeouts.idle",
            "pool.web.timeouts.tunnel"
        ]
    );
    // The same keys on an HTTP/1.1 pool are used, and not warned of.
    let http1 = src.replace("protocol = \"h2\"\n", "");
    assert!(
        run(&http1)
            .diagnostics
            .iter()
            .all(|d| d.code != "unused-for-h2")
    );
}

#[test]
fn unused_hash() {
    let src = BASE.replace("[pool.web]\n", "[pool.web]\nhash = { key = \"path\" }\n");
    let d = only(&src, "unused-hash");
    assert_eq!(d.severity, Severity::Warning);
    assert!(run(&src).snapshot.is_some());
}

/// `slow_start`: off when absent, a positive duration of at most an hour,
/// and a warning where the algorithm does not weigh its picks.
#[test]
fn slow_start() {
    let with = |v: &str| BASE.replace("[pool.web]\n", &format!("[pool.web]\n{v}\n"));
    let pool = |src: &str| run(src).snapshot.unwrap().pools[0].slow_start;
    assert_eq!(pool(BASE), None);
    assert_eq!(
        pool(&with("slow_start = \"30s\"")),
        Some(std::time::Duration::from_secs(30))
    );
    assert!(codes(&with("slow_start = \"30s\"")).is_empty());
    only(&with("slow_start = \"2h\""), "out-of-range");
    only(&with("slow_start = \"0s\""), "invalid-duration");
    let d = only(
        &with("slow_start = \"30s\"\nalgorithm = \"first\""),
        "unused-slow-start",
    );
    assert_eq!(d.severity, Severity::Warning);
}

#[test]
fn invalid_hash_key() {
    let src = BASE.replace(
        "[pool.web]\n",
        "[pool.web]\nalgorithm = \"hash\"\nhash = { key = \"user\" }\n",
    );
    let d = only(&src, "invalid-hash-key");
    assert_eq!(d.key_path, "pool.web.hash.key");
}

/// A cookie or header name no request can carry would hash every request
/// as keyless: refused by the rule `access_log.cookies` follows.
#[test]
fn hash_key_names_must_be_tokens() {
    let hashed = |key: &str| {
        BASE.replace(
            "[pool.web]\n",
            &format!("[pool.web]\nalgorithm = \"hash\"\nhash = {{ key = \"{key}\" }}\n"),
        )
    };
    for (key, message) in [
        ("cookie:a b", "`a b` is not a valid cookie name"),
        ("cookie:a=b", "`a=b` is not a valid cookie name"),
        ("cookie:", "`` is not a valid cookie name"),
        ("header:x user", "`x user` is not a valid header name"),
    ] {
        let d = only(&hashed(key), "invalid-hash-key");
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.key_path, "pool.web.hash.key");
        assert_eq!(d.message, message);
        assert!(d.hint.as_deref().unwrap().contains("is a token"), "{d:?}");
        assert_eq!((d.line, d.col), (11, 16), "{key}");
    }
    for key in ["cookie:session", "cookie:__Host-sid", "header:x-user"] {
        let checked = run(&hashed(key));
        assert!(
            checked.diagnostics.is_empty(),
            "{key}: {:#?}",
            checked.diagnostics
        );
    }
}

#[test]
fn invalid_regex() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { path_regex = \"/(a\" }\n",
    );
    let d = only(&src, "invalid-regex");
    assert_eq!(d.key_path, "route[0].match.path_regex");
    assert_eq!(d.message, "invalid regex `/(a`: unclosed group");
}

#[test]
fn conflicting_path_match() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { path = \"/a\", path_prefix = \"/b\" }\n",
    );
    let d = only(&src, "conflicting-path-match");
    assert_eq!(d.key_path, "route[0].match.path_prefix");
}

#[test]
fn conflicting_header_match() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { headers = [{ name = \"x\", value = \"a\", regex = \"a\" }] }\n",
    );
    let d = only(&src, "conflicting-header-match");
    assert_eq!(d.key_path, "route[0].match.headers[0].regex");
}

#[test]
fn invalid_header_name() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { headers = [{ name = \"x tenant\" }] }\n",
    );
    let d = only(&src, "invalid-header-name");
    assert_eq!(d.key_path, "route[0].match.headers[0].name");
}

#[test]
fn invalid_path() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { path_prefix = \"auth/\" }\n",
    );
    let d = only(&src, "invalid-path");
    assert_eq!(d.hint.as_deref(), Some("write \"/auth/\""));
}

/// A route path holding what no request path holds (refused by the HTTP/1
/// codec, or cut off before the router sees it) could never match.
#[test]
fn route_paths_no_request_can_have_are_refused() {
    let matching = |key: &str, path: &str| {
        BASE.replace(
            "name = \"web\"\n",
            &format!("name = \"web\"\nmatch = {{ {key} = \"{path}\" }}\n"),
        )
    };
    for (key, path, message, hint) in [
        (
            "path_prefix",
            "/a b",
            "path `/a b` has a space, which no request path contains",
            "write it percent-encoded, as clients send it: `%20`",
        ),
        (
            "path",
            "/a<b",
            "path `/a<b` has `<`, which no request path contains",
            "write it percent-encoded, as clients send it: `%3C`",
        ),
        (
            "path_prefix",
            "/a\\tb",
            "path `/a\\tb` has a control character, which no request path contains",
            "write it percent-encoded, as clients send it: `%09`",
        ),
        (
            "path",
            "/search?q=1",
            "path `/search?q=1` has a query",
            "routes match the path without its query: remove `?` and what follows",
        ),
        (
            "path_prefix",
            "/docs#intro",
            "path `/docs#intro` has a fragment",
            "a fragment is never sent in a request: remove `#` and what follows, or write `%23` for a literal `#`",
        ),
    ] {
        let d = only(&matching(key, path), "invalid-path");
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.key_path, format!("route[0].match.{key}"));
        assert_eq!(d.message, message);
        assert_eq!(d.hint.as_deref(), Some(hint));
        assert_eq!(d.line, 7);
    }
    // What clients do send, raw UTF-8 and JSON-ish braces included (the
    // codec accepts both), is still a path.
    for path in ["/a%20b", "/caf\u{e9}/", "/api/{id}", "/~user/a;b=c", "/"] {
        let checked = run(&matching("path_prefix", path));
        assert!(
            checked.diagnostics.is_empty(),
            "{path}: {:#?}",
            checked.diagnostics
        );
    }
}

/// The probe's request is built from the health path: one that forms no
/// request target is refused by `check` rather than failing every probe.
#[test]
fn health_paths_must_form_a_request_target() {
    let health = |path: &str| format!("{BASE}health = {{ path = \"{path}\" }}\n");
    for (path, message) in [
        (
            "/a b".to_owned(),
            "health check path `/a b` has a space, which no request path contains".to_owned(),
        ),
        (
            "/status<".to_owned(),
            "health check path `/status<` has `<`, which no request path contains".to_owned(),
        ),
        (
            "/healthz#x".to_owned(),
            "health check path `/healthz#x` has a fragment".to_owned(),
        ),
        (
            format!("/{}", "a".repeat(8192)),
            "health check path is 8193 bytes: longer than 8192".to_owned(),
        ),
    ] {
        let d = only(&health(&path), "invalid-path");
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.key_path, "pool.web.health.path");
        assert_eq!(d.message, message);
        assert!(d.hint.is_some());
        assert_eq!((d.line, d.col), (11, 19));
    }
    // A query is sent with the path, and may hold what a path may not.
    for path in ["/healthz", "/healthz?full=1", "/h?x=a`b", "/caf\u{e9}"] {
        let s = run(&health(path)).snapshot.expect(path);
        assert_eq!(s.pools[0].health.as_ref().unwrap().path, path);
    }
}

#[test]
fn invalid_host() {
    for host in ["app.example.com:8080", "app.*.com", "", "a b"] {
        let src = BASE.replace(
            "name = \"web\"\n",
            &format!("name = \"web\"\nmatch = {{ host = \"{host}\" }}\n"),
        );
        let d = only(&src, "invalid-host");
        assert_eq!(d.key_path, "route[0].match.host");
    }
}

#[test]
fn invalid_method_and_unknown_method() {
    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { methods = [\"G ET\"] }\n",
    );
    let d = only(&src, "invalid-method");
    assert_eq!(d.key_path, "route[0].match.methods[0]");

    let src = BASE.replace(
        "name = \"web\"\n",
        "name = \"web\"\nmatch = { methods = [\"PSOT\"] }\n",
    );
    let d = only(&src, "unknown-method");
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.hint.as_deref(), Some("did you mean `POST`?"));
}

#[test]
fn invalid_name() {
    let src = BASE.replace("name = \"public\"", "name = \"my listener\"");
    let d = only(&src, "invalid-name");
    assert_eq!(d.key_path, "listener[0].name");
}

#[test]
fn invalid_duration() {
    let src = BASE.replace("8080\"\n", "8080\"\nheader_timeout = \"10 parsecs\"\n");
    let d = only(&src, "invalid-duration");
    assert_eq!(d.key_path, "listener[0].header_timeout");

    let src = format!("{BASE}health = {{ path = \"/\", interval = \"0s\" }}\n");
    let d = only(&src, "invalid-duration");
    assert_eq!(d.key_path, "pool.web.health.interval");
    assert_eq!(d.message, "duration must be greater than zero");
}

#[test]
fn out_of_range() {
    let src = BASE.replace("9201\" }", "9201\", weight = 1001 }");
    let d = only(&src, "out-of-range");
    assert_eq!(d.key_path, "pool.web.backends[0].weight");
    assert_eq!(d.message, "1001 is out of range: must be 0 to 1000");

    for extra in [
        "panic_threshold = 1.5",
        "retries = { budget = -0.1 }",
        "outlier = { max_ejected_fraction = 2 }",
        "outlier = { base_ejection = \"60s\", max_ejection = \"10s\" }",
        "health = { path = \"/\", unhealthy_threshold = 0 }",
    ] {
        only(&format!("{BASE}{extra}\n"), "out-of-range");
    }
    // Both written, beside a key of another shape: still reported, with
    // the other error, not only once that one is fixed.
    let src = format!(
        "{BASE}outlier = {{ base_ejection = \"60s\", max_ejection = \"10s\" }}\nbalance = \"x\"\n"
    );
    let codes: Vec<_> = check("t.toml", &src)
        .diagnostics
        .iter()
        .map(|d| d.code)
        .collect();
    assert!(codes.contains(&"out-of-range"), "{codes:?}");
    assert!(codes.len() >= 2, "{codes:?}");
}

// --- several problems at once ---

#[test]
fn independent_errors_are_all_reported() {
    let src = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "auth"
match = { path_prefix = 5 }
pool = "auth"

[[route]]
name = "web"
pool = "wbe"

[pool.auth]
algorithm = "least_request"
backends = [{ addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9101" }]

[pool.web]
backends = [{ addr = "127.0.0.1:9201" }]
retrys = { attempts = 2 }
"#;
    let checked = run(src);
    let found: Vec<(&str, &str)> = checked
        .diagnostics
        .iter()
        .map(|d| (d.code, d.key_path.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("invalid-type", "route[0].match.path_prefix"),
            ("unknown-pool", "route[1].pool"),
            ("duplicate-backend", "pool.auth.backends[1].addr"),
            // Right, too: with the typo, nothing routes to `web`.
            ("unused-pool", "pool.web"),
            ("unknown-key", "pool.web.retrys"),
        ]
    );
    assert!(checked.snapshot.is_none());
}

#[test]
fn a_broken_key_does_not_hide_others_in_the_same_item() {
    let src = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "web"
pool = "web"

[pool.web]
algoritm = "random"
backends = [{ addr = "127.0.0.1:9201" }, { addr = "127.0.0.1:9201", weight = "1" }]
panic_threshold = 2.0
"#;
    let found: Vec<(&str, String)> = run(src)
        .diagnostics
        .into_iter()
        .map(|d| (d.code, d.key_path))
        .collect();
    assert_eq!(
        found,
        vec![
            ("unknown-key", "pool.web.algoritm".to_owned()),
            ("duplicate-backend", "pool.web.backends[1].addr".to_owned()),
            ("invalid-type", "pool.web.backends[1].weight".to_owned()),
            ("out-of-range", "pool.web.panic_threshold".to_owned()),
        ]
    );
}

#[test]
fn diagnostics_are_in_file_order() {
    let src = format!("{BASE}[pool.spare]\nbackends = []\n")
        .replace("name = \"public\"", "name = \"a b\"");
    let lines: Vec<usize> = run(&src).diagnostics.iter().map(|d| d.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert!(lines.len() >= 2);
}

// --- shadowing ---

fn routes(defs: &[(&str, &str)]) -> String {
    let mut src = String::from("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n");
    for (name, m) in defs {
        src.push_str(&format!(
            "[[route]]\nname = \"{name}\"\nmatch = {m}\npool = \"p\"\n"
        ));
    }
    src.push_str("[pool.p]\nbackends = [{ addr = \"127.0.0.1:9000\" }]\n");
    src
}

fn shadowed(defs: &[(&str, &str)]) -> Vec<String> {
    run(&routes(defs))
        .diagnostics
        .into_iter()
        .filter(|d| d.code == "shadowed-route")
        .map(|d| d.key_path)
        .collect()
}

#[test]
fn catch_all_prefix_shadows_a_later_specific_route() {
    let src = routes(&[
        ("web", "{ path_prefix = \"/\" }"),
        ("auth", "{ path_prefix = \"/auth/\" }"),
    ]);
    let d = only(&src, "shadowed-route");
    assert_eq!(d.key_path, "route[1]");
    assert_eq!(
        d.message,
        "route `auth` can never match: route `web` (route[0]) comes first and matches every request it would"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("move `auth` above `web`, or narrow `web`'s match")
    );
}

#[test]
fn shadowing_true_positives() {
    let cases: &[&[(&str, &str)]] = &[
        &[("a", "{}"), ("b", "{ path = \"/x\" }")],
        &[
            ("a", "{ path_prefix = \"/auth\" }"),
            ("b", "{ path = \"/auth/login\" }"),
        ],
        &[
            ("a", "{ host = \"*.example.com\" }"),
            ("b", "{ host = \"app.example.com\" }"),
        ],
        &[
            ("a", "{ host = \"*.example.com\" }"),
            ("b", "{ host = \"*.eu.example.com\" }"),
        ],
        &[
            ("a", "{ methods = [\"GET\", \"POST\"] }"),
            ("b", "{ methods = [\"POST\"] }"),
        ],
        &[
            ("a", "{ path_regex = \"/a+\" }"),
            ("b", "{ path_regex = \"/a+\", methods = [\"GET\"] }"),
        ],
        &[
            ("a", "{ headers = [{ name = \"x-t\" }] }"),
            ("b", "{ headers = [{ name = \"x-t\", value = \"blue\" }] }"),
        ],
        &[
            ("a", "{ headers = [{ name = \"x-t\", value = \"blue\" }] }"),
            (
                "b",
                "{ path = \"/\", headers = [{ name = \"x-t\", value = \"blue\" }] }",
            ),
        ],
    ];
    for defs in cases {
        assert_eq!(shadowed(defs), vec!["route[1]"], "{defs:?}");
    }
}

#[test]
fn shadowing_false_positives_are_avoided() {
    let cases: &[&[(&str, &str)]] = &[
        // Specific before generic is the right order.
        &[
            ("auth", "{ path_prefix = \"/auth/\" }"),
            ("web", "{ path_prefix = \"/\" }"),
        ],
        &[("app", "{ host = \"app.example.com\" }"), ("any", "{}")],
        &[
            ("app", "{ host = \"app.example.com\" }"),
            ("wild", "{ host = \"*.example.com\" }"),
        ],
        // A method-restricted route leaves the other methods to the next.
        &[("get", "{ methods = [\"GET\"] }"), ("all", "{}")],
        &[
            ("get", "{ methods = [\"GET\"] }"),
            ("post", "{ methods = [\"POST\"] }"),
        ],
        // `*.example.com` does not match `example.com` itself.
        &[
            ("wild", "{ host = \"*.example.com\" }"),
            ("apex", "{ host = \"example.com\" }"),
        ],
        // Different regexes are never assumed to overlap.
        &[
            ("a", "{ path_regex = \"/.*\" }"),
            ("b", "{ path_regex = \"/a\" }"),
        ],
        &[
            ("a", "{ path_prefix = \"/\" }"),
            ("b", "{ path_regex = \"/a\" }"),
        ],
        &[
            ("a", "{ path = \"/a\" }"),
            ("b", "{ path_prefix = \"/a\" }"),
        ],
        &[
            ("a", "{ headers = [{ name = \"x-t\", value = \"blue\" }] }"),
            ("b", "{ headers = [{ name = \"x-t\" }] }"),
        ],
        &[
            ("a", "{ headers = [{ name = \"x-t\", regex = \"b.*\" }] }"),
            ("b", "{ headers = [{ name = \"x-t\", value = \"blue\" }] }"),
        ],
    ];
    for defs in cases {
        assert!(shadowed(defs).is_empty(), "{defs:?}");
    }
}

// --- rendering ---

#[test]
fn renders_a_diagnostic_like_rustc() {
    let src = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "auth"
match = { path_prefix = "/auth/" }
pool = "auth"

[pool.auth]
backends = [{ addr = "127.0.0.1:9101" }]

[[route]]
name = "web"
pool = "auht"
"#;
    let checked = run(src);
    assert_eq!(
        render_human("fulcrum.toml", src, &checked),
        "error[unknown-pool]: route[1].pool: no pool named `auht`
  --> fulcrum.toml:15:8
   |
15 | pool = \"auht\"
   |        ^^^^^^
   = hint: did you mean `auth`?

fulcrum.toml: 1 error, 0 warnings
"
    );
}

#[test]
fn renders_an_unknown_key_and_a_warning() {
    let src =
        "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\nheader_timout = \"5s\"\n";
    let checked = run(src);
    assert_eq!(
        render_human("fulcrum.toml", src, &checked),
        "error[unknown-key]: listener[0].header_timout: unknown key `header_timout`
 --> fulcrum.toml:4:1
  |
4 | header_timout = \"5s\"
  | ^^^^^^^^^^^^^
  = hint: did you mean `header_timeout`?

warning[no-route]: route: no route is defined: every request gets 404
 --> fulcrum.toml:1:1
  = hint: add a [[route]] with `pool = \"NAME\"`; without `match` it takes every request

fulcrum.toml: 1 error, 1 warning
"
    );
}

#[test]
fn renders_a_clean_summary() {
    let checked = run(CONTRACT);
    assert_eq!(
        render_human("fulcrum.toml", CONTRACT, &checked),
        "fulcrum.toml: ok — 1 listener, 2 routes, 2 pools, 4 backends\n"
    );
    let src = format!("{BASE}[pool.spare]\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n");
    let text = render_human("fulcrum.toml", &src, &run(&src));
    assert!(
        text.ends_with(
            "\nfulcrum.toml: ok — 1 listener, 1 route, 2 pools, 2 backends, 1 warning\n"
        ),
        "{text}"
    );
}

#[test]
fn renders_a_syntax_error() {
    let src = "[[listener]\nname = \"x\"\n";
    let checked = run(src);
    assert_eq!(
        render_human("fulcrum.toml", src, &checked),
        "error[toml-syntax]: unclosed array table, expected `]`
 --> fulcrum.toml:1:12
  |
1 | [[listener]
  |            ^
  = hint: fix the TOML syntax at this position; nothing else is checked until it parses

fulcrum.toml: 1 error, 0 warnings
"
    );
}

#[test]
fn caret_counts_characters_not_bytes() {
    let src = BASE.replace("name = \"web\"\npool", "name = \"wéb\"\npool");
    let d = only(&src, "invalid-name");
    assert_eq!((d.line, d.col), (6, 8));
    let text = render_diagnostic(&src, &d);
    assert!(text.contains("\n  |        ^^^^^\n"), "{text}");
}

#[test]
fn one_line_form_for_logs() {
    let src = BASE.replace("pool = \"web\"", "pool = \"wbe\"");
    let d = only(&src, "unknown-pool");
    assert_eq!(
        d.to_string(),
        "fulcrum.toml:7:8: error[unknown-pool] route[0].pool: no pool named `wbe` (hint: did you mean `web`?)"
    );
}

#[test]
fn json_shape() {
    let src = BASE.replace("pool = \"web\"", "pool = \"wbe\"");
    let json: serde_json::Value =
        serde_json::from_str(&render_json("fulcrum.toml", &run(&src))).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "file": "fulcrum.toml",
            "valid": false,
            "errors": 1,
            "warnings": 1,
            "version": null,
            "diagnostics": [
                {
                    "severity": "error",
                    "code": "unknown-pool",
                    "message": "no pool named `wbe`",
                    "file": "fulcrum.toml",
                    "line": 7,
                    "col": 8,
                    "key_path": "route[0].pool",
                    "hint": "did you mean `web`?"
                },
                {
                    "severity": "warning",
                    "code": "unused-pool",
                    "message": "no route sends traffic to pool `web`",
                    "file": "fulcrum.toml",
                    "line": 9,
                    "col": 7,
                    "key_path": "pool.web",
                    "hint": "point a route at it with `pool = \"web\"`, or remove it"
                }
            ]
        })
    );

    let json: serde_json::Value =
        serde_json::from_str(&render_json("fulcrum.toml", &run(BASE))).expect("json");
    assert_eq!(json["valid"], true);
    assert_eq!(json["version"], content_version(BASE).as_str());
    assert_eq!(json["diagnostics"], serde_json::json!([]));
}

fn with_backends(algorithm: &str, backends: &str) -> String {
    BASE.replace(
        "[pool.web]\nbackends = [{ addr = \"127.0.0.1:9201\" }]\n",
        &format!("[pool.web]\nalgorithm = \"{algorithm}\"\nbackends = [{backends}]\n"),
    )
}

/// Incident 5: weights that starve all but one server are warned about by
/// `check` itself, standards or not.
#[test]
fn skewed_weights_are_warned_about() {
    let src = with_backends(
        "round_robin",
        r#"{ addr = "127.0.0.1:9101", weight = 20 }, { addr = "127.0.0.1:9102" }, { addr = "127.0.0.1:9103" }"#,
    );
    let d = only(&src, "skewed-weights");
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.key_path, "pool.web.backends[0].weight");
    assert_eq!(
        d.message,
        "backend 127.0.0.1:9101 gets 90.9% of the pool's weight: the other 2 backend(s) share the rest and it carries the pool almost alone"
    );
    assert_eq!((d.line, d.col), (11, 49));
    assert!(run(&src).snapshot.is_some(), "a warning, not an error");
}

#[test]
fn moderate_or_ignored_weights_are_not_skewed() {
    let three_to_one = r#"{ addr = "127.0.0.1:9101", weight = 3 }, { addr = "127.0.0.1:9102" }"#;
    assert!(!codes(&with_backends("random", three_to_one)).contains(&"skewed-weights"));
    // A drained backend leaves one carrying the pool on purpose.
    let drained = r#"{ addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9102", weight = 0 }"#;
    assert!(!codes(&with_backends("round_robin", drained)).contains(&"skewed-weights"));
    // `first` does not balance by weight at all.
    let first = r#"{ addr = "127.0.0.1:9101", weight = 20 }, { addr = "127.0.0.1:9102" }"#;
    assert!(!codes(&with_backends("first", first)).contains(&"skewed-weights"));
}

#[test]
fn guard_defaults_and_keys() {
    let s = run(BASE).snapshot.expect("valid");
    assert_eq!(s.guard, crate::snapshot::Guard::DEFAULT);
    assert!(s.routes.iter().all(|r| r.failure_statuses.contains(404)
        && r.failure_statuses.contains(503)
        && !r.failure_statuses.contains(302)));
    let src = format!(
        "[guard]\nwindow = \"5s\"\nprobation = \"2m\"\nmin_requests = 50\nconfidence = 0.99\nmax_backend_share = 0.6\nrollback = false\nwebhook = \"http://127.0.0.1:9000/alerts\"\n{}",
        BASE.replace(
            "pool = \"web\"\n\n[pool",
            "pool = \"web\"\nguard = { failure_statuses = [\"401\", \"403\", \"5xx\"] }\n\n[pool"
        )
    );
    let s = run(&src).snapshot.expect("valid");
    assert_eq!(s.guard.window, Duration::from_secs(5));
    assert_eq!(s.guard.probation, Duration::from_secs(120));
    assert_eq!(
        (
            s.guard.min_requests,
            s.guard.confidence,
            s.guard.max_backend_share
        ),
        (50, 0.99, 0.6)
    );
    assert!(!s.guard.rollback);
    assert_eq!(
        s.guard.webhook.as_deref(),
        Some("http://127.0.0.1:9000/alerts")
    );
    let f = &s.routes.iter().next().unwrap().failure_statuses;
    assert!(f.contains(401) && f.contains(502) && !f.contains(404));
}

#[test]
fn guard_values_out_of_range_are_errors_with_their_key_path() {
    for (line, code, path) in [
        ("confidence = 1.5", "out-of-range", "guard.confidence"),
        ("latency_ratio = 0.9", "out-of-range", "guard.latency_ratio"),
        ("window = \"0s\"", "invalid-duration", "guard.window"),
        ("min_requests = 1", "out-of-range", "guard.min_requests"),
        (
            "webhook = \"https://example.com/x\"",
            "invalid-value",
            "guard.webhook",
        ),
        ("thresholds = 1", "unknown-key", "guard.thresholds"),
    ] {
        let d = only(&format!("[guard]\n{line}\n{BASE}"), code);
        assert_eq!(d.key_path, path, "{line}");
    }
    let src = BASE.replace(
        "pool = \"web\"\n\n[pool",
        "pool = \"web\"\nguard = { failure_statuses = [\"4x\"] }\n\n[pool",
    );
    let d = only(&src, "invalid-value");
    assert_eq!(d.key_path, "route[0].guard.failure_statuses[0]");
}

#[test]
fn access_log_records_what_the_config_reads_and_what_it_adds() {
    let src = format!(
        "{BASE}\n[access_log]\npath = \"stdout\"\nheaders = [\"X-Session\", \"x-tenant\"]\ncookies = [\"session\"]\n\n[pool.sticky]\nalgorithm = \"hash\"\nhash = {{ key = \"header:x-tenant\" }}\nbackends = [{{ addr = \"127.0.0.1:9301\" }}]\n"
    );
    let s = run(&src).snapshot.expect("valid");
    let log = s.access_log.as_ref().unwrap();
    assert_eq!(log.headers, ["x-session", "x-tenant"]);
    assert_eq!(log.cookies, ["session"]);
    let keys = s.logged_keys();
    assert_eq!(keys.headers, ["x-session", "x-tenant"]);
    assert_eq!(keys.cookies, ["session"]);
    // Only what the config itself reads is needed to replay it.
    assert_eq!(s.request_keys().headers, ["x-tenant"]);

    let bad = format!(
        "{BASE}\n[access_log]\npath = \"stdout\"\nheaders = [\"cookie\", \"bad header\"]\ncookies = [\"a=b\"]\n"
    );
    let d = run(&bad).diagnostics;
    let at: Vec<(&str, &str)> = d.iter().map(|d| (d.code, d.key_path.as_str())).collect();
    assert_eq!(
        at,
        [
            ("invalid-header-name", "access_log.headers[0]"),
            ("invalid-header-name", "access_log.headers[1]"),
            ("invalid-value", "access_log.cookies[0]"),
        ]
    );
    assert!(d[0].hint.as_deref().unwrap().contains("cookies = ["));
}

// --- schema ---

/// Every integer range the schema states is the validator's: the bounds
/// pass `check`, one past them is `out-of-range`. An editor flags what
/// `check` refuses, and nothing it accepts.
#[test]
fn schema_integer_ranges_are_the_validators() {
    let schema = crate::schema::config_schema();
    let listener = |k: &str, v: i64| BASE.replace("8080\"\n", &format!("8080\"\n{k} = {v}\n"));
    let limits = |k: &str, v: i64| {
        listener("limits", 0).replace("limits = 0", &format!("limits = {{ {k} = {v} }}"))
    };
    let http2 = |k: &str, v: i64| {
        listener("http2", 0).replace("http2 = 0", &format!("http2 = {{ {k} = {v} }}"))
    };
    let pool = |k: &str, v: i64| format!("{BASE}{k} = {v}\n");
    let table = |t: &'static str| move |k: &str, v: i64| format!("{BASE}{t} = {{ {k} = {v} }}\n");
    let health = |k: &str, v: i64| format!("{BASE}health = {{ path = \"/\", {k} = {v} }}\n");
    let guard = |k: &str, v: i64| format!("[guard]\n{k} = {v}\n\n{BASE}");
    // Beside a second backend: a lone backend of weight 0 is `zero-weight`.
    let weight = |_: &str, v: i64| {
        BASE.replace(
            "9201\" }",
            &format!("9201\", weight = {v} }}, {{ addr = \"127.0.0.1:9202\" }}"),
        )
    };
    let l = "/properties/listener/items/properties";
    let p = "/properties/pool/additionalProperties/properties";
    // (schema pointer, lowest, highest, the config setting KEY to a value)
    type Case<'a> = (String, i64, i64, Box<dyn Fn(&str, i64) -> String + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (format!("{l}/min_body_rate"), 0, 1 << 30, Box::new(listener)),
        (
            format!("{l}/limits/properties/max_header_bytes"),
            8192,
            1048576,
            Box::new(limits),
        ),
        (
            format!("{l}/limits/properties/max_headers"),
            8,
            1000,
            Box::new(limits),
        ),
        (
            format!("{l}/limits/properties/max_uri_bytes"),
            256,
            65536,
            Box::new(limits),
        ),
        (
            format!("{l}/limits/properties/max_body_bytes"),
            0,
            1 << 40,
            Box::new(limits),
        ),
        (
            format!("{l}/limits/properties/max_connections"),
            1,
            1_000_000,
            Box::new(limits),
        ),
        (
            format!("{l}/http2/properties/max_concurrent_streams"),
            1,
            10_000,
            Box::new(http2),
        ),
        (
            format!("{l}/http2/properties/max_pending_reset_streams"),
            1,
            10_000,
            Box::new(http2),
        ),
        (
            format!("{l}/http2/properties/max_local_error_reset_streams"),
            1,
            100_000,
            Box::new(http2),
        ),
        (
            format!("{p}/backends/items/properties/weight"),
            0,
            1000,
            Box::new(weight),
        ),
        (format!("{p}/idle_per_backend"), 0, 100_000, Box::new(pool)),
        (
            format!("{p}/health/properties/healthy_threshold"),
            1,
            100,
            Box::new(health),
        ),
        (
            format!("{p}/health/properties/unhealthy_threshold"),
            1,
            100,
            Box::new(health),
        ),
        (
            format!("{p}/outlier/properties/consecutive_failures"),
            1,
            1000,
            Box::new(table("outlier")),
        ),
        (
            format!("{p}/retries/properties/attempts"),
            0,
            10,
            Box::new(table("retries")),
        ),
        (
            format!("{p}/retries/properties/min_concurrent"),
            0,
            1000,
            Box::new(table("retries")),
        ),
        (
            "/properties/guard/properties/min_requests".into(),
            5,
            1_000_000,
            Box::new(guard),
        ),
        (
            "/properties/guard/properties/consecutive".into(),
            1,
            100,
            Box::new(guard),
        ),
    ];
    for (pointer, lo, hi, src) in &cases {
        let node = schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer}"));
        assert_eq!(node["type"], "integer", "{pointer}");
        assert_eq!(node["minimum"].as_i64(), Some(*lo), "{pointer}: minimum");
        assert_eq!(node["maximum"].as_i64(), Some(*hi), "{pointer}: maximum");
        let key = pointer.rsplit('/').next().unwrap();
        for v in [*lo, *hi] {
            // Warnings (skewed weights) may come; errors may not.
            let checked = run(&src(key, v));
            assert!(
                checked.snapshot.is_some(),
                "{key} = {v}: {:#?}",
                checked.diagnostics
            );
        }
        for v in [lo - 1, hi + 1] {
            let d = only(&src(key, v), "out-of-range");
            assert!(d.key_path.ends_with(key), "{key} = {v}: {d:?}");
        }
    }
    // The audit's example: what `check` refuses lies outside the schema.
    let max_headers = &schema
        .pointer(&format!("{l}/limits/properties/max_headers"))
        .unwrap();
    assert!(5 < max_headers["minimum"].as_i64().unwrap());
    only(&limits("max_headers", 5), "out-of-range");
}

/// Every config duration refuses zero (`invalid-duration`), and so does
/// the schema's pattern; a rules file's range bound may be zero, and its
/// pattern still allows it.
#[test]
fn schema_durations_refuse_zero_as_check_does() {
    let schema = crate::schema::config_schema();
    let pattern =
        |v: &serde_json::Value| regex::Regex::new(v["pattern"].as_str().unwrap()).unwrap();
    let interval = pattern(
        &schema["properties"]["pool"]["additionalProperties"]["properties"]["health"]["properties"]
            ["interval"],
    );
    for zero in ["0s", "0ms", " 0s 0ms ", "00h"] {
        assert!(!interval.is_match(zero), "the schema accepts {zero:?}");
        let src = format!("{BASE}health = {{ path = \"/\", interval = \"{zero}\" }}\n");
        only(&src, "invalid-duration");
    }
    for ok in ["1s", "0s 500ms", "1s 0ms", "10ms", "1h 30m", "2 min"] {
        assert!(interval.is_match(ok), "the schema refuses {ok:?}");
        let src = format!("{BASE}health = {{ path = \"/\", interval = \"{ok}\" }}\n");
        assert!(run(&src).snapshot.is_some(), "check refuses {ok:?}");
    }
    for bad in ["1500", "2 parsecs", ""] {
        assert!(!interval.is_match(bad), "the schema accepts {bad:?}");
    }
    let rules = crate::schema::rules_schema();
    let bound =
        pattern(&rules["properties"]["rule"]["items"]["properties"]["connect_timeout"]["items"]);
    assert!(bound.is_match("0s") && bound.is_match(""));
}

// Standards files: keys that promised more than the rules do.

/// The errors of the standards file `source`, which must not parse.
fn standards_errors(source: &str) -> Vec<Diagnostic> {
    let parsed = crate::standards::parse_standards("standards.toml", source);
    assert!(parsed.standards.is_none(), "{:?}", parsed.diagnostics);
    parsed.diagnostics
}

#[test]
fn traffic_header_and_cookie_names_are_checked_not_dropped() {
    // A trailing space makes a name no request carries; both are reported
    // at once, beside a well-formed header that is kept.
    let d = standards_errors(
        "[traffic]\nheaders = { \"x-session \" = 50, x-user = 10 }\ncookies = { \"se ssion\" = 5 }\n",
    );
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.code, d.key_path.as_str(), d.line))
        .collect();
    assert_eq!(
        got,
        [
            ("invalid-header-name", "traffic.headers.x-session ", 2),
            ("invalid-value", "traffic.cookies.se ssion", 3),
        ]
    );
    assert!(d.iter().all(|d| d.hint.is_some()));
    let ok = crate::standards::parse_standards(
        "standards.toml",
        "[traffic]\nheaders = { X-User = 10 }\ncookies = { session = 5 }\n\n\
         [[rule]]\nname = \"used\"\nevery_pool_used = true\n",
    );
    let t = ok.standards.expect("valid names parse").traffic;
    assert_eq!(t.headers.get("x-user"), Some(&10));
    assert_eq!(t.cookies.get("session"), Some(&5));
}

/// A rules file that would pass anything is refused: an empty (or
/// truncated) one, a rule whose only flags are `false`, a request whose
/// method no client sends (`delete` is not DELETE, and matches no route).
#[test]
fn rules_files_that_would_pass_anything_are_refused() {
    let codes = |src: &str| {
        standards_errors(src)
            .iter()
            .map(|d| d.code)
            .collect::<Vec<_>>()
    };
    assert_eq!(codes(""), ["no-rules"]);
    assert_eq!(codes("[traffic]\nrequests = 100\n"), ["no-rules"]);
    assert_eq!(
        codes("[[rule]]\nname = \"x\"\nevery_pool_used = false\nrequire_version = false\n"),
        ["rule-without-assertion"]
    );
    let d = standards_errors(
        "[[rule]]\nname = \"d\"\nrequest = \"delete http://a.test/x\"\nexpect_route = \"web\"\n",
    );
    assert_eq!(d[0].code, "invalid-request", "{d:?}");
    assert!(d[0].message.contains("write `DELETE`"), "{}", d[0].message);
    // A header's bad value is the value's fault, not its name's.
    let d = standards_errors(
        "[[rule]]\nname = \"h\"\nrequest = \"GET http://a.test/x\"\nheaders = { x-ok = \"a\\u0001b\" }\nexpect_route = \"web\"\n",
    );
    assert_eq!(d[0].code, "invalid-value", "{d:?}");
}

/// Outlier detection on where `max_ejected_fraction` can never let the
/// first backend go is as good as off: a warning. A pool of one is spared
/// (ejecting its only backend would serve nothing).
#[test]
fn outlier_detection_that_can_never_eject_is_warned_of() {
    let two = BASE.replace(
        "backends = [{ addr = \"127.0.0.1:9201\" }]",
        "backends = [{ addr = \"127.0.0.1:9201\" }, { addr = \"127.0.0.1:9202\" }]",
    );
    let with = |src: &str, f: &str| {
        src.replace(
            "[pool.web]\n",
            &format!("[pool.web]\noutlier = {{ max_ejected_fraction = {f} }}\n"),
        )
    };
    let d = only(&with(&two, "0.4"), "outlier-never-ejects");
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.key_path, "pool.web.outlier.max_ejected_fraction");
    assert!(
        d.hint.as_deref().unwrap().contains("at least 0.5"),
        "{:?}",
        d.hint
    );
    assert!(codes(&with(&two, "0.5")).is_empty());
    assert!(codes(&with(BASE, "0.4")).is_empty());
}

#[test]
fn a_rule_client_ip_is_refused_with_its_reason() {
    let d = standards_errors(
        "[[rule]]\nname = \"r\"\nrequest = \"GET /\"\nclient_ip = \"203.0.113.7\"\nexpect_pool = \"web\"\n",
    );
    let [d] = <[Diagnostic; 1]>::try_from(d).unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(
        (d.code, d.key_path.as_str(), d.line, d.col),
        ("unknown-key", "rule[0].client_ip", 4, 13)
    );
    assert!(
        d.hint
            .as_deref()
            .unwrap()
            .contains("do not depend on the client's address"),
        "{:?}",
        d.hint
    );
}

#[test]
fn expect_status_is_only_a_status_fulcrum_answers_itself() {
    let src = "[[rule]]\nname = \"r\"\nrequest = \"GET /\"\nexpect_status = 404\n";
    let parsed = crate::standards::parse_standards("standards.toml", src);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    // 200 is a valid status, but a rule's request never reaches a backend,
    // so it could never pass.
    // 503 needs a pool with no weighted backend, which `zero-weight` refuses.
    for bad in [200, 401, 502, 503, 600] {
        let src = format!("[[rule]]\nname = \"r\"\nrequest = \"GET /\"\nexpect_status = {bad}\n");
        let d = standards_errors(&src);
        let [d] = <[Diagnostic; 1]>::try_from(d).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(
            (d.code, d.key_path.as_str(), d.line),
            ("out-of-range", "rule[0].expect_status", 4)
        );
        assert!(d.hint.as_deref().unwrap().contains("404"), "{:?}", d.hint);
    }
}

/// The host routing reads: without its port, lowercase, an IPv6
/// literal with its brackets, and the URI's when there is no header.
#[test]
fn host_of_drops_the_port_and_lowercases() {
    let uri: http::Uri = "http://from.uri:81/x".parse().unwrap();
    let host = |h: &str| {
        let v = http::HeaderValue::from_str(h).unwrap();
        crate::snapshot::host_of(Some(&v), &uri).map(std::borrow::Cow::into_owned)
    };
    assert_eq!(host("a.example:8080").as_deref(), Some("a.example"));
    assert_eq!(host("A.Example").as_deref(), Some("a.example"));
    assert_eq!(host("plain").as_deref(), Some("plain"));
    assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]"));
    assert_eq!(host("[::1]").as_deref(), Some("[::1]"));
    assert_eq!(host("a.example:").as_deref(), Some("a.example"));
    assert_eq!(
        crate::snapshot::host_of(None, &uri).as_deref(),
        Some("from.uri")
    );
}
