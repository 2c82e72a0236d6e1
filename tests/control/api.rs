//! The admin API itself: the token on every endpoint the OpenAPI document
//! lists, the running config's bytes, metrics, and the CLI's one-line
//! errors when the API cannot be reached or refuses the token.

use fulcrum_testkit::Backend;

use super::{Lb, TOKEN, config, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_in_the_openapi_document_needs_the_token() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let text = config(&[auth.addr], web.addr, "");
    let lb = Lb::start(&text);
    let (status, doc) = lb.json("GET", "/openapi.json", "").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    let mut called = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            // Required query parameters get a plausible value.
            let query: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["required"].as_bool() == Some(true))
                .map(|p| {
                    format!(
                        "{}=GET%20http://app.example.com/auth/login",
                        p["name"].as_str().unwrap()
                    )
                })
                .collect();
            let url = if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{}", query.join("&"))
            };
            // POST /config with the running config: a change that changes nothing.
            let body = if path == "/config" { text.as_str() } else { "" };
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            let (none, headers, _) = lb.call(&method, &url, body, None).await;
            let (wrong, _, _) = lb.call(&method, &url, body, Some("not-the-token")).await;
            let (right, _, answer) = lb.call(&method, &url, body, Some(TOKEN)).await;
            if open {
                assert_eq!((none, wrong, right), (200, 200, 200), "{method} {path}");
            } else {
                assert_eq!(none, 401, "{method} {path} without a token");
                assert!(headers.contains_key("www-authenticate"), "{method} {path}");
                assert_eq!(wrong, 403, "{method} {path} with a wrong token");
                assert!(
                    ![401, 403, 404, 405].contains(&right),
                    "{method} {path} with the token: {right} {answer}"
                );
            }
            called += 1;
        }
    }
    assert!(called >= 10, "the document lists every endpoint: {called}");
    // A path the document does not list is not served.
    let (s, _, _) = lb.call("GET", "/nope", "", Some(TOKEN)).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_answers_the_exact_running_bytes_and_metrics_parse() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    // Comments and odd spacing must come back byte for byte.
    let text = format!(
        "# the team's config\n{}\n\n# end\n",
        config(&[auth.addr], web.addr, "")
    );
    let lb = Lb::start(&text);
    let (status, headers, body) = lb.call("GET", "/config", "", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body, text);
    assert_eq!(
        headers["fulcrum-hash"].to_str().unwrap(),
        fulcrum_config::content_version(&text)
    );
    assert_eq!(headers["fulcrum-version"].to_str().unwrap(), "1");

    for _ in 0..20 {
        assert_eq!(lb.get("/auth/login").await, (200, "auth".to_owned()));
    }
    assert_eq!(lb.get("/nowhere").await.1, "web");
    let (status, _, metrics) = lb.call("GET", "/metrics", "", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let mut families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let n = families.len();
    families.sort();
    families.dedup();
    assert_eq!(families.len(), n, "every metric family once: {metrics}");
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // OpenMetrics spells the last bucket `+Inf`; a strict parser refuses
    // the whole scrape over `inf`, and a query on `le="+Inf"` finds
    // nothing.
    let les: Vec<&str> = metrics
        .split("le=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(les.contains(&"+Inf"), "{metrics}");
    for le in les {
        let bound: f64 = le.parse().unwrap_or_else(|_| panic!("le=\"{le}\""));
        assert!(bound.is_finite() || le == "+Inf", "le=\"{le}\"");
    }
    let lines = metrics.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let version = fulcrum_config::content_version(&text);
    let backend = auth.addr.to_string();
    let ok = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "fulcrum_backend_responses_total"
                && s.labels.get("version") == Some(version.as_str())
                && s.labels.get("backend") == Some(backend.as_str())
                && s.labels.get("class") == Some("2xx")
        })
        .unwrap_or_else(|| panic!("no per-backend series labelled by version: {metrics}"));
    assert_eq!(value(&ok.value), 20.0);
    let route = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "fulcrum_route_requests_total"
                && s.labels.get("route") == Some("auth")
                && s.labels.get("code") == Some("200")
        })
        .expect("per-route series");
    assert_eq!(value(&route.value), 20.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "fulcrum_backend_healthy" && s.labels.get("pool") == Some("auth")),
        "{metrics}"
    );
    // The guard's expectation beside what was observed, once it has
    // sampled the window (four times a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, _, m) = lb.call("GET", "/metrics", "", Some(TOKEN)).await;
        let has = |metric: &str| m.lines().any(|l| l.starts_with(metric));
        if has("fulcrum_guard_verdict{")
            && has("fulcrum_backend_expected_share{")
            && has("fulcrum_backend_observed_share{")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no guard series: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_in_one_line_when_the_api_is_unreachable_or_the_token_wrong() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[auth.addr], web.addr, ""));

    // Nothing listens on a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = super::fulcrum()
        .args(["status", "--admin", &format!("http://{closed}")])
        .env("FULCRUM_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");

    // TLS to a plain-HTTP admin API: the server closes on the
    // ClientHello, and the client's alert meets a closed socket (this
    // used to kill the CLI by SIGPIPE, exit 141 and not a word).
    let out = super::fulcrum()
        .args(["status", "--admin", &format!("https://{}", lb.admin)])
        .env("FULCRUM_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");

    let admin = format!("http://{}", lb.admin);
    for (env, want) in [
        (None, "wants a token"),
        (Some("wrong"), "refused the token"),
    ] {
        let mut cmd = super::fulcrum();
        cmd.args(["history", "--admin", &admin])
            .env_remove("FULCRUM_ADMIN_TOKEN");
        if let Some(t) = env {
            cmd.env("FULCRUM_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
    let token = lb.file("admin.token", &format!("  {TOKEN}\n"));
    let out = super::fulcrum()
        .args(["history", "--admin", &admin, "--token-file"])
        .arg(&token)
        .env_remove("FULCRUM_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        super::stdout(&out).contains("v1"),
        "{}",
        super::stdout(&out)
    );
    // A reader that goes away (`| head`) ends it without a word.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' history --admin {admin} --token-file '{}' | head -c 0",
            env!("CARGO_BIN_EXE_fulcrum"),
            token.display()
        ))
        .output()
        .unwrap();
    assert_eq!(stderr(&out), "");
}

/// A sample's value: the parser reads OpenMetrics' `_total` counters as
/// untyped, which is no matter here.
fn value(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(n)
        | prometheus_parse::Value::Gauge(n)
        | prometheus_parse::Value::Untyped(n) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_are_journaled() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[auth.addr], web.addr, ""));
    auth.fail_health(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let down = loop {
        let found = lb
            .events()
            .await
            .into_iter()
            .find(|e| e["kind"] == "health");
        if let Some(e) = found {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no health event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(down["detail"]["backend"], auth.addr.to_string());
    assert_eq!(down["detail"]["healthy"], false);
    assert!(down["summary"].as_str().unwrap().contains("down"), "{down}");
    auth.fail_health(false);
    loop {
        let up = lb
            .events()
            .await
            .into_iter()
            .filter(|e| e["kind"] == "health")
            .any(|e| e["detail"]["healthy"] == true);
        if up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health event for the way back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_tls_still_wants_the_token() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let cert = rcgen::generate_simple_self_signed(vec![
        "admin.example.com".to_owned(),
        "127.0.0.1".to_owned(),
    ])
    .unwrap();
    let text = config(&[auth.addr], web.addr, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"admin.pem\", key = \"admin.key\" }\n",
    );
    // TLS makes a non-loopback admin address acceptable to `check`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.pem"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("admin.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let wide = crate::write_config(
        &dir,
        "wide.toml",
        &text.replace(
            "listen = \"127.0.0.1:0\"\ntls",
            "listen = \"0.0.0.0:0\"\ntls",
        ),
    );
    let out = super::fulcrum().arg("check").arg(&wide).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", super::stdout(&out));

    let lb = Lb::start_with(
        &text,
        &[
            ("admin.pem", &cert.cert.pem()),
            ("admin.key", &cert.signing_key.serialize_pem()),
        ],
        &[],
    );
    assert!(
        lb.served
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("admin API on https://"))
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let get = |auth: Option<&'static str>| {
        let tls = tls.clone();
        let admin = lb.admin;
        async move {
            let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("admin.example.com").unwrap();
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
                .unwrap();
            let header = auth
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let req =
                format!("GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{header}\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    assert!(get(None).await.starts_with("HTTP/1.1 401"));
    assert!(get(Some(TOKEN)).await.starts_with("HTTP/1.1 200"));

    // The CLI speaks TLS too, trusting the certificate it is given.
    let https = format!("https://{}", lb.admin);
    let cli = |args: &[&str]| {
        super::fulcrum()
            .args(["status", "--admin", &https])
            .args(args)
            .env("FULCRUM_ADMIN_TOKEN", TOKEN)
            .current_dir(lb.dir.path())
            .output()
            .unwrap()
    };
    let out = cli(&["--ca-file", "admin.pem"]);
    assert_eq!(out.status.code(), Some(0), "{}", super::stderr(&out));
    assert!(
        super::stdout(&out).contains("v1"),
        "{}",
        super::stdout(&out)
    );
    // Without it the self-signed certificate is refused, in one line that
    // says what to pass.
    let out = cli(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = super::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("certificate") && err.contains("--ca-file"),
        "{err}"
    );
    // With a certificate that is not the one served, the line says so,
    // not "pass --ca-file" again.
    let other = rcgen::generate_simple_self_signed(vec!["admin.example.com".into()]).unwrap();
    lb.file("other.pem", &other.cert.pem());
    let out = cli(&["--ca-file", "other.pem"]);
    assert_eq!(out.status.code(), Some(2));
    let err = super::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does not verify against other.pem"), "{err}");
}

/// examples/alerts.yml pages from metric names and labels: each must be
/// one `/metrics` serves, or an alert silently never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_example_alerts_read_is_served() {
    let (auth, web) = (Backend::start("auth").await, Backend::start("web").await);
    let lb = Lb::start(&config(&[auth.addr], web.addr, ""));
    for _ in 0..20 {
        assert_eq!(lb.get("/auth/login").await.0, 200);
    }
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alerts.yml"),
    )
    .unwrap();
    let names = regex::Regex::new(r"\bfulcrum_[a-z_]+").unwrap();
    let wanted: std::collections::BTreeSet<&str> =
        names.find_iter(&alerts).map(|m| m.as_str()).collect();
    let labels =
        regex::Regex::new(r"\$labels\.([a-z_]+)|by \(([a-z_, ]+)\)|[{,]\s*([a-z_]+)=~?\x22")
            .unwrap();
    let wanted_labels: std::collections::BTreeSet<String> = labels
        .captures_iter(&alerts)
        .flat_map(|c| {
            let found = c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str();
            found
                .split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| l != "le")
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        wanted.len() >= 5 && wanted_labels.contains("pool"),
        "{wanted:?} {wanted_labels:?}"
    );
    let served_label = regex::Regex::new(r"[{,]([a-z_]+)=\x22").unwrap();
    // The guard's gauges appear once it has a window of traffic.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, metrics) = lb.call("GET", "/metrics", "", Some(TOKEN)).await;
        let served: std::collections::BTreeSet<&str> =
            names.find_iter(&metrics).map(|m| m.as_str()).collect();
        let served_labels: std::collections::BTreeSet<&str> = served_label
            .captures_iter(&metrics)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        let missing: Vec<&&str> = wanted.iter().filter(|n| !served.contains(**n)).collect();
        let missing_labels: Vec<&String> = wanted_labels
            .iter()
            .filter(|l| !served_labels.contains(l.as_str()))
            .collect();
        if missing.is_empty() && missing_labels.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "examples/alerts.yml reads what /metrics does not serve: {missing:?} {missing_labels:?}"
        );
        for _ in 0..5 {
            lb.get("/auth/login").await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Without `--admin`, `apply` sends a config to the admin address it
/// names, also when it names files (here its `tests`), which the CLI must
/// read to take it as a config at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_finds_the_admin_api_in_a_config_that_names_files() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let text = config(&[auth.addr], web.addr, "");
    let lb = Lb::start(&text);
    lb.file(
        "t.toml",
        "[[rule]]\nname = \"logins go to auth\"\nrequest = \"GET http://app.example.com/auth/login\"\nexpect_pool = \"auth\"\n",
    );
    let new = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", lb.admin),
    );
    assert_ne!(new, text);
    let path = lb.file("new.toml", &format!("tests = [\"t.toml\"]\n{new}"));
    let out = super::fulcrum()
        .arg("apply")
        .arg(&path)
        .env("FULCRUM_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
