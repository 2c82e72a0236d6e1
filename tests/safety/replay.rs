//! `diff --traffic` as a gate: `moved` counts the replayed requests that
//! land on another pool or backend (not a change of distribution), a log
//! that cannot be replayed is an error, and replay says what the log did
//! not record.

use std::fmt::Write as _;

use super::{json, run};

/// A config with one catch-all route to pool `p` (three backends) under
/// `algorithm`, plus `extra` appended.
fn config(algorithm: &str, extra: &str) -> String {
    format!(
        r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "all"
pool = "p"

[pool.p]
{algorithm}
backends = [{{ addr = "127.0.0.1:9101" }}, {{ addr = "127.0.0.1:9102" }}, {{ addr = "127.0.0.1:9103" }}]
{extra}"#
    )
}

/// `n` access-log lines: 300 clients, 500 paths, each line as `serve` writes it.
fn log(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        writeln!(
            out,
            r#"{{"time":"2026-01-01T00:00:00.000Z","method":"GET","host":"app.example.com","path":"/p/{}","route":"all","pool":"p","backend":"127.0.0.1:9101","status":200,"duration_ms":1.0,"bytes":2,"version":"v1","request_id":"r{i}","client_ip":"10.0.{}.{}","attempts":1}}"#,
            (i * 7) % 500,
            (i % 300) / 250,
            (i % 300) % 250
        )
        .unwrap();
    }
    out
}

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn diff(old: &str, new: &str, log: &str, more: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["diff", old, new, "--traffic", log, "--format", "json"];
    args.extend(more);
    let out = run(&args);
    (out.status.code(), json(&out))
}

#[test]
fn a_change_of_hash_key_moves_two_thirds_and_fails_the_budget() {
    let f = Files::new();
    let old = f.write(
        "old.toml",
        &config("algorithm = \"hash\"\nhash = { key = \"client_ip\" }", ""),
    );
    let new = f.write(
        "new.toml",
        &config("algorithm = \"hash\"\nhash = { key = \"path\" }", ""),
    );
    let log = f.write("access.log", &log(1200));
    let (code, doc) = diff(&old, &new, &log, &["--max-moved", "0.05"]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["exceeded"], true);
    let i = &doc["impact"];
    let moved = i["moved"].as_f64().unwrap();
    // Each request's backend is decided anew by another key: about two in
    // three land elsewhere, while the spread over the three stays even.
    assert!((moved - 2.0 / 3.0).abs() < 0.06, "moved {moved}");
    let shift = i["distribution_shift"].as_f64().unwrap();
    assert!(shift < 0.06, "distribution shift {shift}");
    assert_eq!(i["pool_changed"], 0.0);

    let human = run(&["diff", &old, &new, "--traffic", &log, "--max-moved", "0.05"]);
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("(EXCEEDED --max-moved 5.0%)"), "{text}");
    assert!(text.contains("distribution shift: "), "{text}");
}

#[test]
fn a_new_route_moves_only_its_own_requests_from_a_round_robin_pool() {
    // Round robin gives no request a backend of its own: diverting a tenth
    // of the traffic must not count the rest as moved because the
    // rotation's turn shifted.
    let f = Files::new();
    let old = f.write("old.toml", &config("algorithm = \"round_robin\"", ""));
    let new_text = config("algorithm = \"round_robin\"", "\n[pool.static]\nbackends = [{ addr = \"127.0.0.1:9301\" }]\n")
        .replace(
            "[[route]]\nname = \"all\"",
            "[[route]]\nname = \"static\"\nmatch = { path_prefix = \"/p/1\" }\npool = \"static\"\n\n[[route]]\nname = \"all\"",
        );
    let new = f.write("new.toml", &new_text);
    let log = f.write("access.log", &log(1000));
    let (code, doc) = diff(&old, &new, &log, &["--max-moved", "0.5"]);
    assert_eq!(code, Some(0), "{doc:#}");
    let i = &doc["impact"];
    let pool_changed = i["pool_changed"].as_f64().unwrap();
    assert!(pool_changed > 0.05, "{doc:#}");
    assert_eq!(i["moved"].as_f64().unwrap(), pool_changed);

    // Weights 1:1:1 → 2:1:1 under round robin: the least share that must
    // move is how much the spread changes, 1/2 − 1/3.
    let heavier = f.write(
        "heavier.toml",
        &config("algorithm = \"round_robin\"", "").replace("9101\" }", "9101\", weight = 2 }"),
    );
    let (_, doc) = diff(&old, &heavier, &log, &[]);
    let moved = doc["impact"]["moved"].as_f64().unwrap();
    assert!((moved - (0.5 - 1.0 / 3.0)).abs() < 1e-9, "moved {moved}");
}

/// Which headers a log redacted was decided by the config that wrote it:
/// replay takes a route's value in the clear or redacted, whatever the
/// replayed config's `redact` says. Adding `redact` changes no routing, and
/// a log written with it still routes its lines where `serve` did.
#[test]
fn replay_reads_a_header_redacted_or_not_whatever_the_config_redacts() {
    let f = Files::new();
    let tenant = |redact: &str, tenant_backend: &str| {
        config("algorithm = \"round_robin\"", &format!(
            "\n[pool.blue]\nbackends = [{{ addr = \"{tenant_backend}\" }}]\n\n[access_log]\npath = \"access.log\"\nheaders = [\"x-tenant\"]\n{redact}"
        ))
        .replace(
            "[[route]]\nname = \"all\"",
            "[[route]]\nname = \"tenant\"\nmatch = { headers = [{ name = \"x-tenant\", value = \"blue\" }] }\npool = \"blue\"\n\n[[route]]\nname = \"all\"",
        )
    };
    let lines = |value: &dyn Fn(usize) -> String| {
        let mut out = String::new();
        for i in 0..200 {
            writeln!(
                out,
                r#"{{"time":"2026-01-01T00:00:00.000Z","method":"GET","host":"app.example.com","path":"/p/{i}","route":"all","pool":"p","backend":"127.0.0.1:9101","status":200,"duration_ms":1.0,"bytes":2,"version":"v1","request_id":"r{i}","client_ip":"10.0.0.{}","attempts":1,"headers":{{"x-tenant":"{}"}}}}"#,
                i % 250,
                value(i)
            )
            .unwrap();
        }
        out
    };
    let plain = f.write("old.toml", &tenant("", "127.0.0.1:9201"));
    let redacting = f.write(
        "new.toml",
        &tenant("redact = [\"x-tenant\"]", "127.0.0.1:9201"),
    );
    let moved = f.write("moved.toml", &tenant("", "127.0.0.1:9202"));
    let color = |i: usize| if i.is_multiple_of(2) { "blue" } else { "red" };
    let clear = f.write("clear.log", &lines(&|i| color(i).to_owned()));
    let hashed = f.write(
        "hashed.log",
        &lines(&|i| fulcrum_config::keys::redact(color(i).as_bytes())),
    );
    for log in [&clear, &hashed] {
        // Redacting the header moves nothing.
        let (code, doc) = diff(&plain, &redacting, log, &["--max-moved", "0.01"]);
        assert_eq!(code, Some(0), "{log}: {doc:#}");
        assert_eq!(doc["impact"]["moved"].as_f64(), Some(0.0), "{log}: {doc:#}");
        // Moving the tenant's pool moves its half of the lines.
        let (_, doc) = diff(&plain, &moved, log, &[]);
        assert_eq!(doc["impact"]["moved"].as_f64(), Some(0.5), "{log}: {doc:#}");
    }
}

/// A log line without `host` or `client_ip` (not one `serve` wrote whole)
/// is replayed with no host or client 0.0.0.0: said when a config routes on
/// the host or hashes on the client. A route on the `cookie` header can
/// never be replayed (no log records that header), and the warning says so
/// instead of suggesting a key `check` refuses.
#[test]
fn replay_says_when_lines_lack_the_host_or_client_and_that_cookie_routes_cannot_be_replayed() {
    let f = Files::new();
    let text = config("algorithm = \"hash\"\nhash = { key = \"client_ip\" }", "")
        .replace(
            "[[route]]\nname = \"all\"",
            "[[route]]\nname = \"app\"\nmatch = { host = \"app.example.com\" }\npool = \"p\"\n\n[[route]]\nname = \"beta\"\nmatch = { headers = [{ name = \"cookie\", regex = \".*beta=1.*\" }] }\npool = \"p\"\n\n[[route]]\nname = \"all\"",
        );
    let old = f.write("old.toml", &text);
    let new = f.write("new.toml", &text.replace("9103", "9104"));
    let stripped: String = log(10)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let l = if i < 4 {
                l.replace(r#""host":"app.example.com","#, "")
            } else {
                l.to_owned()
            };
            let l = if i < 3 {
                l.replace(r#","client_ip":"10.0.0."#, r#","ip":"10.0.0."#)
            } else {
                l
            };
            l + "\n"
        })
        .collect();
    let log = f.write("access.log", &stripped);
    let (_, doc) = diff(&old, &new, &log, &[]);
    let warnings: Vec<(String, String)> = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["code"].as_str().unwrap().to_owned(),
                w["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let find = |needle: &str| {
        warnings
            .iter()
            .find(|(_, m)| m.contains(needle))
            .unwrap_or_else(|| panic!("no warning on {needle}: {warnings:#?}"))
    };
    let (code, message) = find("`host` field");
    assert_eq!(code, "unrecorded-field");
    assert!(message.contains("4 of the log's 10 lines"), "{message}");
    let (code, message) = find("`client_ip` field");
    assert_eq!(code, "unrecorded-field");
    assert!(message.contains("3 of the log's 10 lines"), "{message}");
    let (code, message) = find("header `cookie`");
    assert_eq!(code, "unrecorded-header");
    assert!(message.contains("cannot be replayed"), "{message}");
    assert!(!message.contains("headers = [\"cookie\"]"), "{message}");
}

#[test]
fn a_log_that_cannot_be_replayed_exits_2_in_one_line() {
    let f = Files::new();
    let c = f.write("c.toml", &config("algorithm = \"random\"", ""));
    for (name, text, says) in [
        ("empty.log", "", "holds no request"),
        ("blank.log", "\n\n  \n", "holds no request"),
        ("garbage.log", "this is not json\n", "line 1: not JSON"),
        ("other.log", "{\"level\":\"info\"}\n", "line 1: no `method`"),
    ] {
        let log = f.write(name, text);
        for format in ["human", "json"] {
            let out = run(&[
                "diff",
                &c,
                &c,
                "--traffic",
                &log,
                "--max-moved",
                "0.05",
                "--format",
                format,
            ]);
            assert_eq!(out.status.code(), Some(2), "{name}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "{name}: {err}");
            assert!(err.contains(says), "{name}: {err}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains("within"));
        }
        let rules = f.write(
            "rules.toml",
            "[[rule]]\nname = \"x\"\npool = \"p\"\nmax_backend_share = 0.9\n",
        );
        let out = run(&["check", &c, "--standards", &rules, "--traffic", &log]);
        assert_eq!(out.status.code(), Some(2), "check --traffic {name}");
    }
    let out = run(&["diff", &c, &c, "--traffic", "/nonexistent/access.log"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
}

/// The log `serve` itself writes: the data plane, on a config that hashes
/// on `x-user` and adds `x-tenant` to its access log, serves real
/// requests; then `diff` and `check --traffic` replay that very file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_log_serve_wrote_knows_what_it_recorded() {
    use fulcrum_testkit::{Backend, Client, TestProxy, eventually};
    use http::Method;

    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let f = Files::new();
    let log_path = f.0.path().join("access.log");
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    let with = |algorithm: &str, route_match: &str| {
        format!(
            "[access_log]\npath = {:?}\nheaders = [\"x-tenant\"]\n\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\n{route_match}pool = \"p\"\n\n[pool.p]\n{algorithm}\nbackends = [{}]\n",
            log_path.display().to_string(),
            list.join(", ")
        )
    };
    let old_text = with(
        "algorithm = \"hash\"\nhash = { key = \"header:x-user\" }",
        "",
    );
    let snapshot = fulcrum_config::check("old.toml", &old_text)
        .snapshot
        .expect("valid");
    let proxy = TestProxy::start(snapshot).await;
    let client = Client::new(proxy.addr);
    let n = 300;
    for i in 0..n {
        let mut req = client
            .request(Method::GET, "app.example.com", &format!("/item/{}", i % 40))
            .header("x-user", format!("u{i}"));
        if i % 2 == 0 {
            req = req.header("x-tenant", format!("t{}", i % 3));
        }
        assert_eq!(client.send(req, "").await.status, 200);
    }
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        eventually(std::time::Duration::from_secs(10), || read()
            .lines()
            .count()
            == n)
        .await,
        "the access log has {} lines",
        read().lines().count()
    );
    let first: serde_json::Value = serde_json::from_str(read().lines().nth(1).unwrap()).unwrap();
    assert_eq!(first["headers"]["x-user"], "u1");
    assert_eq!(first["headers"]["x-tenant"], serde_json::Value::Null);

    let old = f.write("old.toml", &old_text);
    let log = log_path.display().to_string();
    // Replayed through the config that wrote it, nothing moves, and the
    // replay spreads the requests over the backends exactly as the data
    // plane did.
    let (code, doc) = diff(&old, &old, &log, &["--max-moved", "0"]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["impact"]["requests"], n);
    assert_eq!(doc["impact"]["moved"], 0.0);
    assert_eq!(doc["warnings"], serde_json::json!([]));
    // A request retried on another backend (a keep-alive connection the
    // backend closed as it was reused) is logged with its last backend:
    // only those may differ.
    let lines: Vec<serde_json::Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let retried = lines.iter().filter(|l| l["attempts"] != 1).count() as f64;
    for b in doc["impact"]["pools"][0]["backends"].as_array().unwrap() {
        let served = lines.iter().filter(|l| l["backend"] == b["addr"]).count() as f64;
        let replayed = b["before"].as_f64().unwrap() * n as f64;
        assert!(
            (replayed - served).abs() <= retried + 1e-6,
            "{b} served {served}"
        );
    }

    // What the log recorded (x-user, which the config reads, and x-tenant,
    // which [access_log] adds) replays without a warning.
    let by_tenant = f.write(
        "tenant.toml",
        &with(
            "algorithm = \"hash\"\nhash = { key = \"header:x-tenant\" }",
            "",
        ),
    );
    let (_, doc) = diff(&old, &by_tenant, &log, &[]);
    assert_eq!(
        doc["impact"]["unrecorded"],
        serde_json::json!([]),
        "{doc:#}"
    );
    let moved = doc["impact"]["moved"].as_f64().unwrap();
    assert!(moved > 0.3, "a new hash key moves most requests: {moved}");

    // What it did not record is named, with the lines that lack it.
    let by_region = f.write(
        "region.toml",
        &with(
            "algorithm = \"hash\"\nhash = { key = \"cookie:session\" }",
            "match = { headers = [{ name = \"x-region\", value = \"eu\" }] }\n",
        ),
    );
    let (_, doc) = diff(&old, &by_region, &log, &[]);
    let unrecorded = doc["impact"]["unrecorded"].as_array().unwrap();
    let names: Vec<(&str, &str, u64)> = unrecorded
        .iter()
        .map(|u| {
            (
                u["kind"].as_str().unwrap(),
                u["name"].as_str().unwrap(),
                u["missing"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("header", "x-region", n as u64),
            ("cookie", "session", n as u64)
        ]
    );
    assert_eq!(unrecorded[0]["read_by"][0], "route `all` (match)");
    let codes: Vec<&str> = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["unrecorded-header", "unrecorded-cookie"]);
    let human = run(&["diff", &old, &by_region, "--traffic", &log]);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("warning[unrecorded-header]: route `all` (match) reads header `x-region`, which the traffic log does not record on 300 of its 300 lines"),
        "{text}"
    );

    // check --traffic says the same of the config it checks.
    let rules = f.write(
        "rules.toml",
        "[[rule]]\nname = \"spread\"\npool = \"p\"\nmax_backend_share = 1.0\n",
    );
    let out = run(&[
        "check",
        &by_region,
        "--standards",
        &rules,
        "--traffic",
        &log,
        "--format",
        "json",
    ]);
    let doc = json(&out);
    assert_eq!(
        doc["standards"]["unrecorded"][0]["name"], "x-region",
        "{doc:#}"
    );
    let out = run(&[
        "check",
        &by_region,
        "--standards",
        &rules,
        "--traffic",
        &log,
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("warning[unrecorded-cookie]: pool `p` (hash key) reads cookie `session`"),
        "{text}"
    );
    proxy.shutdown().await;
}
