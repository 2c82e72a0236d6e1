//! Incident fixtures through `check --standards`, `diff --traffic`, `test`
//! and `explain`, asserting exit codes, the rule named and the evidence.

use super::{fixture, json, run};

fn f(name: &str) -> String {
    fixture(name).display().to_string()
}

fn check_json(config: &str) -> (Option<i32>, serde_json::Value) {
    let out = run(&[
        "check",
        &f(config),
        "--standards",
        &f("standards.toml"),
        "--format",
        "json",
    ]);
    (out.status.code(), json(&out))
}

/// The one broken rule's failures, asserting it is the only broken one.
fn broken<'a>(doc: &'a serde_json::Value, rule: &str) -> &'a Vec<serde_json::Value> {
    let rules = doc["standards"]["rules"].as_array().unwrap();
    let failed: Vec<&str> = rules
        .iter()
        .filter(|r| r["passed"] == false)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&rule), "{failed:?}");
    let r = rules.iter().find(|r| r["name"] == rule).unwrap();
    r["failures"].as_array().unwrap()
}

fn share_of(evidence: &serde_json::Value, addr: &str) -> f64 {
    evidence["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr)
        .unwrap()["share"]
        .as_f64()
        .unwrap()
}

#[test]
fn healthy_config_meets_the_standards() {
    let (code, doc) = check_json("healthy.toml");
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["standards"]["failed"], 0);
    assert_eq!(doc["standards"]["passed"], 7);
}

#[test]
fn incident_1_auth_route_to_another_pool_is_refused() {
    let (code, doc) = check_json("incident-1.toml");
    assert_eq!(code, Some(1));
    let fails = broken(&doc, "logins reach the auth pool");
    assert_eq!(fails[0]["assertion"], "expect_pool");
    assert_eq!(fails[0]["evidence"]["kind"], "routing");
    assert_eq!(fails[0]["evidence"]["route"], "auth");
    assert_eq!(fails[0]["evidence"]["pool"], "web");
    // It points at the config line that changed: `pool = "web"`, line 14.
    assert_eq!(fails[0]["config"]["line"], 14);
    let unused = broken(&doc, "every pool serves a route");
    assert!(
        unused[0]["message"]
            .as_str()
            .unwrap()
            .contains("pool `auth`")
    );
}

#[test]
fn incident_2_swapped_servers_are_refused_and_warned_about() {
    let (code, doc) = check_json("incident-2.toml");
    assert_eq!(code, Some(1));
    let fails = broken(&doc, "auth runs on the auth servers only");
    assert_eq!(fails[0]["assertion"], "allowed_backends");
    let message = fails[0]["message"].as_str().unwrap();
    assert!(
        message.contains("pool `auth` sends traffic to 127.0.0.1:9201, 127.0.0.1:9202, which are not among the servers it may use"),
        "{message}"
    );
    // The `backends` line of the auth pool.
    assert_eq!(fails[0]["config"]["line"], 25);
    let health = broken(&doc, "auth is redundant and evenly balanced");
    assert_eq!(health[0]["assertion"], "require_health_check");

    let (code, doc) = diff_json("incident-2.toml", None);
    assert_eq!(code, Some(0));
    let warnings = doc["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{doc:#}");
    assert_eq!(warnings[0]["code"], "backends-replaced");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("every backend of pool `auth` is replaced at once")
    );
    let text = String::from_utf8(run(&["diff", &f("healthy.toml"), &f("incident-2.toml")]).stdout)
        .unwrap();
    assert!(
        text.contains("~ pool auth health: path /healthz, interval 1s, timeout 2s, healthy_threshold 2, unhealthy_threshold 3, expect_status 200-399 → none"),
        "{text}"
    );
    assert!(text.contains("warning[backends-replaced]"), "{text}");
}

#[test]
fn incident_3_cut_timeouts_are_refused_and_their_cost_predicted() {
    let (code, doc) = check_json("incident-3.toml");
    assert_eq!(code, Some(1));
    let fails = broken(&doc, "auth timeouts stay sane");
    let assertions: Vec<&str> = fails
        .iter()
        .map(|f| f["assertion"].as_str().unwrap())
        .collect();
    assert_eq!(assertions, ["connect_timeout", "response_timeout"]);

    // traffic.log: 152 of its 400 logins took longer than 50 ms.
    let (code, doc) = diff_json("incident-3.toml", Some("0.05"));
    assert_eq!(code, Some(0), "timeouts move no request: {doc:#}");
    let change = &doc["changes"][0];
    assert_eq!(change["field"], "timeouts");
    assert_eq!(change["old"], "connect 2s, response 30s");
    assert_eq!(change["new"], "connect 10ms, response 50ms");
    let t = &doc["impact"]["timeouts"][0];
    assert_eq!(t["pool"], "auth");
    assert_eq!(
        (t["old"].as_str(), t["new"].as_str()),
        (Some("30s"), Some("50ms"))
    );
    assert_eq!(
        (t["over"].as_u64(), t["requests"].as_u64()),
        (Some(152), Some(400))
    );
    assert_eq!(t["share"], 0.38);
    let text = String::from_utf8(
        run(&[
            "diff",
            &f("healthy.toml"),
            &f("incident-3.toml"),
            "--traffic",
            &f("traffic.log"),
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        text.contains("pool auth timeouts.response: 30s → 50ms: 152 of 400 recorded requests (38.0%) took longer than 50ms"),
        "{text}"
    );
    assert!(
        text.contains(
            "~ pool auth timeouts: connect 2s, response 30s → connect 10ms, response 50ms"
        ),
        "{text}"
    );
}

#[test]
fn incident_4_first_and_absent_hash_key_are_refused_with_shares() {
    for config in ["incident-4-first.toml", "incident-4-hash.toml"] {
        let (code, doc) = check_json(config);
        assert_eq!(code, Some(1), "{config}");
        let fails = broken(&doc, "auth is redundant and evenly balanced");
        assert_eq!(fails.len(), 1, "{config}: {fails:#?}");
        assert_eq!(fails[0]["assertion"], "max_backend_share");
        let ev = &fails[0]["evidence"];
        assert_eq!(ev["kind"], "shares");
        assert_eq!(ev["pool"], "auth");
        assert_eq!(ev["requests"], 3000);
        // Every login on one backend: `first` by design; `hash` because
        // x-session is absent from every request (hash_empty).
        assert_eq!(share_of(ev, "127.0.0.1:9101"), 1.0, "{config}");
        assert_eq!(share_of(ev, "127.0.0.1:9102"), 0.0, "{config}");
    }
}

#[test]
fn incident_5_starving_weights_are_refused_with_shares() {
    let (code, doc) = check_json("incident-5.toml");
    assert_eq!(code, Some(1));
    let fails = broken(&doc, "auth is redundant and evenly balanced");
    let ev = &fails[0]["evidence"];
    // Smooth round robin over 3000 requests at 20:1:1 is exact up to one period.
    assert!((share_of(ev, "127.0.0.1:9101") - 20.0 / 22.0).abs() < 0.001);
    let human = run(&[
        "check",
        &f("incident-5.toml"),
        "--standards",
        &f("standards.toml"),
    ]);
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("FAIL auth is redundant and evenly balanced"),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:9101 90.9%"), "{text}");
    assert!(text.contains("6 passed, 1 failed"), "{text}");
}

#[test]
fn check_sarif_points_at_rule_and_config_line() {
    let out = run(&[
        "check",
        &f("incident-1.toml"),
        "--standards",
        &f("standards.toml"),
        "--format",
        "sarif",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(doc["version"], "2.1.0");
    let results = doc["runs"][0]["results"].as_array().unwrap();
    let r = results
        .iter()
        .find(|r| r["ruleId"] == "standard/expect_pool")
        .unwrap();
    let locs = r["locations"].as_array().unwrap();
    let loc = |i: usize| &locs[i]["physicalLocation"];
    assert!(
        loc(0)["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("incident-1.toml")
    );
    assert_eq!(loc(0)["region"]["startLine"], 14);
    assert!(
        loc(1)["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("standards.toml")
    );
    assert_eq!(loc(1)["region"]["startLine"], 13);
}

fn diff_json(new: &str, max_moved: Option<&str>) -> (Option<i32>, serde_json::Value) {
    let (old, new, log) = (f("healthy.toml"), f(new), f("traffic.log"));
    let mut args = vec!["diff", &old, &new, "--traffic", &log, "--format", "json"];
    if let Some(m) = max_moved {
        args.extend(["--max-moved", m]);
    }
    let out = run(&args);
    (out.status.code(), json(&out))
}

#[test]
fn diff_of_identical_configs_moves_nothing() {
    let (code, doc) = diff_json("healthy.toml", Some("0"));
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["changes"].as_array().unwrap().len(), 0);
    assert_eq!(doc["impact"]["moved"], 0.0);
    assert_eq!(doc["exceeded"], false);
}

#[test]
fn diff_flags_each_incident_with_the_moved_share() {
    // traffic.log: 1000 requests, 400 logins (POST /auth/login), 600 pages.
    let (code, doc) = diff_json("incident-1.toml", Some("0.05"));
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["exceeded"], true);
    let c = &doc["changes"][0];
    assert_eq!(
        (c["kind"].as_str(), c["field"].as_str()),
        (Some("route"), Some("pool"))
    );
    assert_eq!(
        (c["old"].as_str(), c["new"].as_str()),
        (Some("auth"), Some("web"))
    );
    // Every login changes pool: 40% of all requests.
    assert!((doc["impact"]["pool_changed"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    assert!(doc["impact"]["moved"].as_f64().unwrap() >= 0.4);
    let auth = doc["impact"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "auth")
        .unwrap();
    assert_eq!(auth["pool_changed"], 1.0);

    for (config, field) in [
        ("incident-4-first.toml", "algorithm"),
        ("incident-4-hash.toml", "algorithm"),
        ("incident-5.toml", "algorithm"),
    ] {
        let (code, doc) = diff_json(config, Some("0.05"));
        assert_eq!(code, Some(1), "{config}: {doc:#}");
        assert!(
            doc["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["field"] == field),
            "{config}"
        );
        let auth = doc["impact"]["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == "auth")
            .unwrap();
        let after = |addr: &str| {
            auth["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == addr)
                .unwrap()["after"]
                .as_f64()
                .unwrap()
        };
        let moved = doc["impact"]["moved"].as_f64().unwrap();
        if config.starts_with("incident-4") {
            assert_eq!(after("127.0.0.1:9101"), 1.0, "{config}");
            // Two thirds of the logins (40% of traffic) leave their backend.
            assert!(
                (moved - 0.4 * 2.0 / 3.0).abs() < 0.03,
                "{config}: moved {moved}"
            );
        } else {
            assert!(
                (after("127.0.0.1:9101") - 20.0 / 22.0).abs() < 0.01,
                "{config}"
            );
        }
    }
    // Without a budget, a big move is reported but exits 0.
    let (code, _) = diff_json("incident-5.toml", None);
    assert_eq!(code, Some(0));
}

#[test]
fn diff_human_names_the_change() {
    let out = run(&["diff", &f("healthy.toml"), &f("incident-5.toml")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("~ pool auth algorithm: least_request → round_robin"),
        "{text}"
    );
    assert!(
        text.contains("~ backend auth/127.0.0.1:9101 weight: 1 → 20"),
        "{text}"
    );
}

/// Every key a config can say shows in the diff (the guard reads it for
/// what a change touched): a pool's protocol, a route's outcome signal,
/// the access log and the guard's own settings.
#[test]
fn diff_names_protocol_failure_statuses_access_log_guard_and_listener_changes() {
    let old = std::fs::read_to_string(fixture("healthy.toml")).unwrap();
    // The same log file, named from elsewhere: a relative path is its
    // config's directory's.
    let log = fixture("traffic.log").display().to_string();
    let new = old
        .replace("path = \"traffic.log\"", &format!("path = {log:?}"))
        .replace(
            "headers = [\"x-user\"]",
            "headers = [\"x-user\", \"x-tenant\"]",
        )
        .replace(
            "pool = \"auth\"\n",
            "pool = \"auth\"\nguard = { failure_statuses = [\"401\", \"5xx\"] }\n",
        )
        .replace(
            "algorithm = \"least_request\"",
            "algorithm = \"least_request\"\nprotocol = \"h2\"",
        )
        .replace("[admin]", "[guard]\nwindow = \"30s\"\n\n[admin]")
        .replace(
            "bind = \"127.0.0.1:8080\"\n",
            "bind = \"127.0.0.1:8080\"\nheader_timeout = \"5s\"\nlimits = { max_body_bytes = 1024 }\n",
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.toml");
    std::fs::write(&path, &new).unwrap();
    let out = run(&["diff", &f("healthy.toml"), &path.display().to_string()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "~ route auth failure_statuses: 4xx, 5xx → 401, 5xx",
        "~ pool auth protocol: http1 → h2",
        "~ access_log access_log settings: headers x-user → headers x-user x-tenant",
        "~ guard guard settings: window 10s → window 30s",
        "~ listener public timeouts: header_timeout 10s → header_timeout 5s",
        "~ listener public limits: max_body_bytes 10485760 → max_body_bytes 1024",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

/// Changes a diff used to call "no semantic change": a `first` pool's
/// backends reordered (another primary), a hash pool's `on_missing`, the
/// admin API's token file and the config's `tests`.
#[test]
fn diff_names_order_on_missing_admin_and_tests_changes() {
    let dir = tempfile::tempdir().unwrap();
    let log = fixture("traffic.log").display().to_string();
    let old = std::fs::read_to_string(fixture("healthy.toml"))
        .unwrap()
        .replace("path = \"traffic.log\"", &format!("path = {log:?}"))
        .replace(
            "algorithm = \"least_request\"",
            "algorithm = \"hash\"\nhash = { key = \"header:x-user\" }",
        )
        .replace("algorithm = \"round_robin\"", "algorithm = \"first\"");
    std::fs::write(
        dir.path().join("t.toml"),
        TESTS
            .split("\n[[rule]]\nname = \"logins over")
            .next()
            .unwrap(),
    )
    .unwrap();
    let new = old
        .replace(
            "hash = { key = \"header:x-user\" }",
            "hash = { key = \"header:x-user\", on_missing = \"random\" }",
        )
        .replace(
            "{ addr = \"127.0.0.1:9201\" }, { addr = \"127.0.0.1:9202\" }",
            "{ addr = \"127.0.0.1:9202\" }, { addr = \"127.0.0.1:9201\" }",
        )
        .replace(
            "listen = \"127.0.0.1:9901\"",
            "listen = \"127.0.0.1:9901\"\ntoken_file = \"tok\"",
        )
        .replace(
            "version = \"healthy-1\"",
            "version = \"healthy-1\"\ntests = [\"t.toml\"]",
        );
    let (a, b) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&a, &old).unwrap();
    std::fs::write(&b, &new).unwrap();
    let out = run(&["diff", &a.display().to_string(), &b.display().to_string()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "~ pool auth algorithm: hash on header:x-user (on_missing hash_empty) → hash on header:x-user (on_missing random)",
        "~ pool web order: 127.0.0.1:9201, 127.0.0.1:9202 → 127.0.0.1:9202, 127.0.0.1:9201",
        "~ admin admin settings: token_file none → token_file tok",
        "~ tests tests settings: files none",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

const TESTS: &str = r#"
[[rule]]
name = "logins go to auth"
request = "POST http://app.example.com/auth/login"
expect_route = "auth"
expect_pool = "auth"

[[rule]]
name = "logins over DELETE are not auth"
request = "DELETE http://app.example.com/auth/login"
expect_pool = "auth"
"#;

#[test]
fn test_verb_prints_each_rule_a_summary_and_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("tests.toml");
    std::fs::write(&tests, TESTS).unwrap();
    let t = tests.display().to_string();
    let out = run(&["test", &f("healthy.toml"), &t]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("PASS logins go to auth"), "{text}");
    assert!(
        text.contains("FAIL logins over DELETE are not auth"),
        "{text}"
    );
    assert!(
        text.contains("route `web` sends it to pool `web`"),
        "{text}"
    );
    assert!(text.contains("1 passed, 1 failed"), "{text}");

    let out = run(&["test", &f("healthy.toml"), &t, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(
        (doc["passed"].as_u64(), doc["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(doc["uncovered_routes"], serde_json::json!([]));
    assert_eq!(
        doc["files"][0]["rules"][1]["failures"][0]["assertion"],
        "expect_pool"
    );

    // Only the first rule: passes, but `web` is exercised by no test.
    std::fs::write(
        &tests,
        TESTS
            .split("\n[[rule]]\nname = \"logins over")
            .next()
            .unwrap(),
    )
    .unwrap();
    let out = run(&["test", &f("healthy.toml"), &t]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("routes no test exercises: web"));
    let out = run(&[
        "test",
        &f("healthy.toml"),
        &t,
        "--require-coverage",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["uncovered_routes"], serde_json::json!(["web"]));

    // A broken rules file is an invalid input (78) with its position.
    std::fs::write(&tests, "[[rule]]\nname = \"x\"\nexpect_pol = \"auth\"\n").unwrap();
    let out = run(&["test", &f("healthy.toml"), &t]);
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("unknown key `expect_pol`"), "{text}");
    assert!(text.contains("did you mean `expect_pool`?"), "{text}");
}

#[test]
fn explain_shows_routes_pool_and_hash_ring_position() {
    let config = format!("{}/examples/hash-by-user.toml", env!("CARGO_MANIFEST_DIR"));
    let args = [
        "explain",
        &config,
        "GET http://www.example.com/cart",
        "-H",
        "x-user-id: alice",
    ];
    let out = run(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(out.status.code(), Some(0));
    let doc = json(&out);
    assert_eq!(doc["routes"][0]["route"], "api");
    assert_eq!(doc["routes"][0]["matched"], false);
    assert_eq!(
        doc["routes"][0]["reason"],
        "host `www.example.com` is not `api.example.com`"
    );
    assert_eq!(doc["routes"][1]["matched"], true);
    assert_eq!(doc["route"], "app");
    let pool = &doc["pool"];
    assert_eq!(pool["pool"], "app");
    assert_eq!(
        pool["algorithm"],
        "hash on header:x-user-id (on_missing random)"
    );
    assert_eq!(pool["backends"].as_array().unwrap().len(), 3);
    let hash = &pool["hash"];
    assert_eq!(hash["key"], "header:x-user-id");
    assert_eq!(hash["value"], "alice");
    // xxh3_64("alice"), as the data plane computes it.
    assert_eq!(
        hash["hash"],
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(b"alice"))
    );
    assert_eq!(hash["ring_size"], 480);
    let pick = pool["pick"].as_str().unwrap().to_owned();
    // The same key always picks the same backend.
    let again = json(&run(&[&args[..], &["--format", "json"]].concat()));
    assert_eq!(again["pool"]["pick"], pick.as_str());

    let out = run(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("1. ✗ api"), "{text}");
    assert!(text.contains("2. ✓ app"), "{text}");
    assert!(
        text.contains("hash: key header:x-user-id = \"alice\""),
        "{text}"
    );
    assert!(text.contains(&format!("pick: {pick}")), "{text}");
}

#[test]
fn serve_refuses_to_start_a_config_that_breaks_the_standards() {
    let out = run(&[
        "serve",
        "-c",
        &f("incident-5.toml"),
        "--standards",
        &f("standards.toml"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not starting"), "{err}");
    assert!(
        err.contains("auth is redundant and evenly balanced"),
        "{err}"
    );
}

/// Files for one check: `(name, text)` in a temporary directory; returns
/// it and the paths of the files in order.
fn files(list: &[(&str, &str)]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = list
        .iter()
        .map(|(name, text)| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        })
        .collect();
    (dir, paths)
}

/// healthy.toml with its access log named from anywhere.
fn healthy() -> String {
    let log = fixture("traffic.log").display().to_string();
    std::fs::read_to_string(fixture("healthy.toml"))
        .unwrap()
        .replace("path = \"traffic.log\"", &format!("path = {log:?}"))
}

/// Gates that passed what they should refuse: outlier detection that can
/// never eject, and a `header:host` pool judged on declared hosts (every
/// synthetic request used to have none, so it failed as one key).
#[test]
fn standards_see_an_outlier_that_never_ejects_and_declared_hosts() {
    let config = healthy().replace(
        "algorithm = \"least_request\"",
        "algorithm = \"hash\"\nhash = { key = \"header:host\" }\noutlier = { max_ejected_fraction = 0.3 }",
    );
    let rules = "[traffic]\nheaders = { host = 1000 }\n\n\
                 [[rule]]\nname = \"ejects\"\npool = \"auth\"\nrequire_outlier_detection = true\n\n\
                 [[rule]]\nname = \"spread\"\npool = \"auth\"\nmax_backend_share = 0.6\n";
    let (_dir, p) = files(&[("c.toml", &config), ("s.toml", rules)]);
    let out = run(&["check", &p[0], "--standards", &p[1], "--format", "json"]);
    let doc = json(&out);
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    let failures = broken(&doc, "ejects");
    assert!(
        failures[0]["message"]
            .as_str()
            .unwrap()
            .contains("can never eject"),
        "{failures:?}"
    );
    let spread = doc["standards"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "spread")
        .unwrap();
    assert_eq!(spread["passed"], true, "{spread:#}");
    let codes: Vec<&str> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"outlier-never-ejects"), "{codes:?}");
}

/// `check --format sarif` has a result for each broken rule of the
/// config's own `tests`, as for `--standards`; and a failure's hint never
/// says to move a catch-all route up (it would take every request).
#[test]
fn sarif_carries_the_configs_own_tests_and_hints_spare_catch_alls() {
    let tests = "[[rule]]\nname = \"logins to web\"\nrequest = \"GET http://app.example.com/auth/login\"\nexpect_pool = \"web\"\n";
    let config = healthy().replace(
        "version = \"healthy-1\"",
        "version = \"healthy-1\"\ntests = [\"t.toml\"]",
    );
    let (_dir, p) = files(&[("t.toml", tests), ("c.toml", &config)]);
    let out = run(&["check", &p[1], "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    let results = doc["runs"][0]["results"].as_array().unwrap();
    let broken: Vec<&serde_json::Value> = results
        .iter()
        .filter(|r| r["ruleId"] == "standard/expect_pool")
        .collect();
    assert_eq!(broken.len(), 1, "{results:#?}");
    let text = broken[0]["message"]["text"].as_str().unwrap();
    assert!(text.contains("logins to web"), "{text}");
    let out = run(&["check", &p[1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL logins to web"), "{text}");
    assert!(!text.contains("move `web` above"), "{text}");
}

/// Methods are a set: the same ones in another order (or case) are no
/// change, so no routing change for the guard to widen to every route.
/// And `check --traffic` without `--standards` is refused: nothing would
/// read the log.
#[test]
fn reordered_methods_are_no_change_and_traffic_needs_standards() {
    let config = healthy();
    let reordered = config.replace(
        "methods = [\"GET\", \"POST\"]",
        "methods = [\"post\", \"GET\"]",
    );
    assert_ne!(config, reordered);
    let (_dir, p) = files(&[("a.toml", &config), ("b.toml", &reordered)]);
    let out = run(&["diff", &p[0], &p[1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no semantic change"), "{text}");
    let out = run(&["check", &p[0], "--traffic", &f("traffic.log")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--standards"));
}
