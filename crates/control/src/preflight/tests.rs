//! Pre-flight against real backends on loopback.

use fulcrum_config::snapshot::{PathMatch, RouteMatch};
use fulcrum_config::standards::parse_standards;
use fulcrum_testkit::{Backend, Mode, SnapshotBuilder, health_check, pool};

use super::*;

fn rules(source: &str) -> Standards {
    let parsed = parse_standards("standards.toml", source);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    parsed.standards.unwrap()
}

/// Routes `/auth/` to pool `auth` and the rest to `web`.
fn config(auth: Pool, web: Pool) -> Snapshot {
    let auth_route = RouteMatch {
        path: Some(PathMatch::Prefix("/auth/".into())),
        ..RouteMatch::default()
    };
    SnapshotBuilder::new()
        .pool(auth)
        .pool(web)
        .route("auth", auth_route, "auth")
        .catch_all("web")
        .build()
}

fn checked(p: Pool) -> Pool {
    Pool {
        health: Some(health_check()),
        ..p
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn probed(report: &ProbeReport) -> Vec<(SocketAddr, &str)> {
    report
        .backends
        .iter()
        .map(|b| (b.addr, b.reason.as_str()))
        .collect()
}

const LOGINS: &str = r#"
[[rule]]
name = "logins reach the auth pool"
request = "GET http://app.example.com/auth/login"
expect_pool = "auth"

[[rule]]
name = "auth is redundant"
pool = "auth"
min_backends = 2
"#;

#[tokio::test]
async fn incident_2_servers_that_pass_health_but_not_logins_are_refused() {
    let (a1, a2, w) = (
        Backend::start("a1").await,
        Backend::start("a2").await,
        Backend::start("w").await,
    );
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    // `/healthz` answers 200; every other path 404.
    b1.set_mode(Mode::Status(404));
    b2.set_mode(Mode::Status(404));
    let running = config(
        checked(pool("auth", &[a1.addr, a2.addr])),
        pool("web", &[w.addr]),
    );
    let new = config(
        checked(pool("auth", &[b1.addr, b2.addr])),
        pool("web", &[w.addr]),
    );
    let standards = rules(LOGINS);

    let report = probe(Some(&running), &new, &[&standards]).await;
    assert_eq!(probed(&report), [(b1.addr, "new"), (b2.addr, "new")]);
    let checks: Vec<(CheckKind, Option<u16>, bool)> = report.backends[0]
        .checks
        .iter()
        .map(|c| (c.kind, c.status, c.error.is_none()))
        .collect();
    assert_eq!(
        checks,
        [
            (CheckKind::Connect, None, true),
            (CheckKind::Health, Some(200), true),
            (CheckKind::Rule, Some(404), false),
        ]
    );
    let seen = b1.last().expect("the login was sent");
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::GET, "/auth/login")
    );
    assert_eq!(seen.headers["host"], "app.example.com");

    let refusals = report.refusals(&new, &[&standards]);
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    assert!(
        refusals[0].starts_with(&format!(
            "pool `auth` backend {} (new): rule \"logins reach the auth pool\" (standards.toml:3:8): GET http://app.example.com/auth/login answered 404: the server does not serve it; point the pool",
            b1.addr
        )),
        "{}",
        refusals[0]
    );
    assert!(refusals[0].contains("point the pool at servers that serve it"));
    assert!(report.warnings(&new, &[&standards]).is_empty());
    assert_eq!(a1.hits() + a2.hits(), 0, "the old servers are not probed");
}

#[tokio::test]
async fn a_post_rule_is_sent_only_when_it_opts_in_and_with_its_body() {
    let (a, w) = (Backend::start("a").await, Backend::start("w").await);
    let new = config(pool("auth", &[a.addr]), pool("web", &[w.addr]));
    let without = rules(
        r#"
[[rule]]
name = "logins"
request = "POST http://app.example.com/auth/login"
expect_pool = "auth"
"#,
    );
    let report = probe(None, &new, &[&without]).await;
    assert!(report.backends.iter().all(BackendProbe::passed));
    assert_eq!(report.backends[0].checks.len(), 1, "only the connect");
    assert_eq!(a.hits(), 0, "no POST without `probe = true`");

    let with = rules(
        r#"
[[rule]]
name = "test account logs in"
request = "POST http://app.example.com/auth/login"
headers = { content-type = "application/x-www-form-urlencoded" }
probe = true
body = "user=probe&password=probe"
expect_pool = "auth"
"#,
    );
    a.set_mode(Mode::Status(401));
    let report = probe(None, &new, &[&with]).await;
    let seen = a.last().expect("the login was sent");
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::POST, "/auth/login")
    );
    assert_eq!(&seen.body[..], b"user=probe&password=probe");
    assert_eq!(
        seen.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let rule = &report.backends[0].checks[1];
    assert_eq!(rule.status, Some(401));
    assert!(
        rule.error.is_none(),
        "a 401 to a test login means logins are served"
    );
    assert!(rule.what.ends_with("with a 25-byte body"), "{}", rule.what);
    assert!(report.refusals(&new, &[&with]).is_empty());
    assert_eq!(w.hits(), 0, "the rule routes to auth only");
}

#[tokio::test]
async fn only_new_backends_and_pools_with_a_changed_health_check_are_probed() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let w = Backend::start("w").await;
    let status = rules(
        r#"
[[rule]]
name = "the status page is served"
request = "GET http://app.example.com/status"
expect_pool = "web"
"#,
    );
    let running = config(pool("auth", &[a.addr]), pool("web", &[w.addr, b.addr]));
    let new = config(
        pool("auth", &[a.addr]),
        pool("web", &[w.addr, b.addr, c.addr]),
    );
    let report = probe(Some(&running), &new, &[&status]).await;
    assert_eq!(probed(&report), [(c.addr, "new")]);
    assert_eq!((w.hits(), b.hits(), c.hits()), (0, 0, 1));

    let new = config(
        pool("auth", &[a.addr]),
        checked(pool("web", &[w.addr, b.addr])),
    );
    let report = probe(Some(&running), &new, &[&status]).await;
    assert_eq!(
        probed(&report),
        [
            (w.addr, "health check changed"),
            (b.addr, "health check changed")
        ]
    );
    assert_eq!(
        (w.health_hits(), b.health_hits(), a.health_hits()),
        (1, 1, 0)
    );

    // At start nothing runs: every backend is new.
    let report = probe(None, &new, &[]).await;
    assert_eq!(
        probed(&report),
        [(a.addr, "new"), (w.addr, "new"), (b.addr, "new")]
    );
}

#[tokio::test]
async fn a_down_backend_refuses_only_without_health_checks_or_below_the_minimum() {
    let (a, b, w) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("w").await,
    );
    let sick = Backend::start("sick").await;
    sick.fail_health(true);
    let dead = closed_port().await;
    let standards = rules(LOGINS);
    let running = config(
        checked(pool("auth", &[a.addr, b.addr])),
        pool("web", &[w.addr]),
    );

    // Health-checked pool, two others passing: warnings only.
    let new = config(
        checked(pool("auth", &[a.addr, b.addr, dead, sick.addr])),
        pool("web", &[w.addr]),
    );
    let report = probe(Some(&running), &new, &[&standards]).await;
    assert_eq!(probed(&report), [(dead, "new"), (sick.addr, "new")]);
    assert!(report.refusals(&new, &[&standards]).is_empty());
    let warnings = report.warnings(&new, &[&standards]);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(&format!(
            "pool `auth` backend {dead} (new): connect failed: "
        )),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("health GET /healthz answered 503, not 200-299; its health checks keep it out until it passes (2 backend(s) of pool `auth` pass)"),
        "{}",
        warnings[1]
    );

    // Replacing one of the two: it would start below `min_backends = 2`.
    let new = config(
        checked(pool("auth", &[a.addr, dead])),
        pool("web", &[w.addr]),
    );
    let report = probe(Some(&running), &new, &[&standards]).await;
    let refusals = report.refusals(&new, &[&standards]);
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0].contains("pool `auth` would start with 1 passing backend(s) and rule \"auth is redundant\" (standards.toml:8:8) requires 2"),
        "{}",
        refusals[0]
    );

    // No health check: it would get traffic at once.
    let new = config(
        checked(pool("auth", &[a.addr, b.addr])),
        pool("web", &[w.addr, dead]),
    );
    let report = probe(Some(&running), &new, &[&standards]).await;
    let refusals = report.refusals(&new, &[&standards]);
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0].contains("pool `web` has no health check, so it would get traffic at once"),
        "{}",
        refusals[0]
    );
}

#[tokio::test]
async fn a_server_error_on_a_healthy_backend_is_refused() {
    let (a, w) = (Backend::start("a").await, Backend::start("w").await);
    a.set_mode(Mode::Status(503));
    let new = config(checked(pool("auth", &[a.addr])), pool("web", &[w.addr]));
    let standards = rules(LOGINS);
    let report = probe(None, &new, &[&standards]).await;
    let refusals = report.refusals(&new, &[&standards]);
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0].contains("GET http://app.example.com/auth/login answered 503: the server fails it; fix the server before it takes traffic"),
        "{}",
        refusals[0]
    );
}

#[tokio::test]
async fn an_h2_pool_is_probed_over_h2c() {
    let (a, w) = (Backend::start("a").await, Backend::start("w").await);
    let auth = Pool {
        protocol: Protocol::H2,
        ..checked(pool("auth", &[a.addr]))
    };
    let new = config(auth, pool("web", &[w.addr]));
    let standards = rules(LOGINS);
    let report = probe(None, &new, &[&standards]).await;
    assert!(report.backends[0].passed(), "{report:#?}");
    assert_eq!(a.health_hits(), 1);
    let seen = a.last().expect("the login was sent");
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.authority.as_deref(), Some("app.example.com"));
    assert!(!seen.headers.contains_key("host"));
    assert!(report.refusals(&new, &[&standards]).is_empty());
}
