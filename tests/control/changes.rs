//! Changes through the pipeline: applied and rolled back with their exact
//! bytes; refused by the standards, the config's own tests, a pre-flight
//! probe (incident 2) and the traffic-impact budget, each leaving the
//! running config serving and the refusal in the journal; a stale parent;
//! SIGHUP of an invalid file; a store that cannot record the change; an
//! impact replay told which headers its sample lacks.

use fulcrum_testkit::{Backend, Mode};

use super::{Lb, TOKEN, config, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_rollback_restores_the_exact_bytes_and_serves_them() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let web = Backend::start("web").await;
    let v1 = config(&[old.addr], web.addr, "# v1, as the team wrote it\n");
    let lb = Lb::start(&v1);
    assert_eq!(lb.get("/auth/login").await.1, "old");

    let v2 = config(&[new.addr], web.addr, "");
    let file = lb.file("new.toml", &v2);
    let out = lb.cli(&["apply", file.to_str().unwrap(), "-m", "auth moves to new"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for step in [
        "✓ check: valid",
        "✓ diff:",
        "✓ preflight:",
        "✓ store: stored as v2",
        "✓ swap:",
    ] {
        assert!(text.contains(step), "{step:?} in {text}");
    }
    assert!(text.contains("added backend auth/"), "the diff: {text}");
    assert!(text.contains("applied: v2 serves every request"), "{text}");
    assert_eq!(lb.get("/auth/login").await.1, "new");

    let out = lb.cli(&["history"]);
    let text = stdout(&out);
    assert!(
        text.lines().next().unwrap().starts_with("v2    serving"),
        "{text}"
    );
    assert!(text.contains("auth moves to new"), "{text}");

    let out = lb.cli(&["rollback", "--reason", "logins fail"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("v1 serves every request"),
        "{}",
        stdout(&out)
    );
    let (_, headers, body) = lb.call("GET", "/config", "", Some(TOKEN)).await;
    assert_eq!(body, v1, "the exact bytes of v1");
    assert_eq!(
        headers["fulcrum-hash"].to_str().unwrap(),
        fulcrum_config::content_version(&v1)
    );
    assert_eq!(headers["fulcrum-version"].to_str().unwrap(), "1");
    assert_eq!(lb.get("/auth/login").await.1, "old");

    let kinds: Vec<String> = lb
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in ["start", "applied", "promoted", "rolled_back"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let rolled = lb.last_event("rolled_back").await.unwrap();
    assert!(
        rolled["summary"].as_str().unwrap().contains("logins fail"),
        "{rolled}"
    );
}

const LOGIN_RULE: &str = r#"[[rule]]
name = "logins reach the auth pool"
request = "GET http://app.example.com/auth/login"
expect_pool = "auth"
"#;

/// The auth route pointed at the web pool (incident 1).
fn wrong_pool(auth: std::net::SocketAddr, web: std::net::SocketAddr, extra: &str) -> String {
    config(&[auth], web, extra).replacen(
        "pool = \"auth\"\n\n[[route]]",
        "pool = \"web\"\n\n[[route]]",
        1,
    )
}

async fn assert_refused(lb: &Lb, file: &str, text: &str, extra: &[&str], step: &str, needle: &str) {
    let path = lb.file(file, text);
    let mut args = vec!["apply", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = lb.cli(&args);
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}{}", stderr(&out));
    assert!(
        shown.contains(&format!("refused: {step}: ")),
        "{step} in {shown}"
    );
    assert!(shown.contains(needle), "{needle:?} in {shown}");
    assert!(shown.contains("refused: nothing changed"), "{shown}");
    let refused = lb.last_event("refused").await;
    let refused = refused.expect("the refusal is in the journal");
    assert!(
        refused["summary"].as_str().unwrap().contains(step),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standards_tests_probes_and_the_impact_budget_refuse_changes() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let tests = "tests = [\"login.tests.toml\"]\n";
    let v1 = config(&[auth.addr], web.addr, tests);
    let files = [
        ("standards.toml", LOGIN_RULE),
        ("login.tests.toml", LOGIN_RULE),
    ];
    let lb = Lb::start_with(&v1, &files, &["--standards", "{dir}/standards.toml"]);
    for _ in 0..40 {
        assert_eq!(lb.get("/auth/login").await.1, "auth");
    }

    // Incident 1 against the server's standards.
    assert_refused(
        &lb,
        "one.toml",
        &wrong_pool(auth.addr, web.addr, tests),
        &[],
        "standards",
        "logins reach the auth pool",
    )
    .await;
    // The same, caught by the config's own tests when the server holds
    // no standards for it: a second server without --standards.
    let lb2 = Lb::start_with(&v1, &files, &[]);
    assert_refused(
        &lb2,
        "one.toml",
        &wrong_pool(auth.addr, web.addr, tests),
        &[],
        "tests",
        "logins reach the auth pool",
    )
    .await;
    drop(lb2);

    // Incident 2: the auth servers replaced by ones that pass /healthz but
    // answer every login 404.
    let impostor = Backend::start("impostor").await;
    impostor.set_mode(Mode::Status(404));
    assert_refused(
        &lb,
        "two.toml",
        &config(&[impostor.addr], web.addr, tests),
        &[],
        "preflight",
        "404",
    )
    .await;
    assert!(
        impostor.hits() >= 1,
        "the rule's login was sent to it directly"
    );

    // Every login moves to another backend, over a 5 % budget.
    let other = Backend::start("other").await;
    assert_refused(
        &lb,
        "three.toml",
        &config(&[other.addr], web.addr, tests),
        &["--max-moved", "0.05"],
        "impact",
        "would move",
    )
    .await;

    // Nothing changed through all of it.
    assert_eq!(lb.get("/auth/login").await.1, "auth");
    let (_, h, _) = lb.call("GET", "/config", "", Some(TOKEN)).await;
    assert_eq!(h["fulcrum-version"].to_str().unwrap(), "1");

    // --force goes past a refusal that may be overridden, and says so.
    let forced = lb.file("four.toml", &config(&[other.addr], web.addr, tests));
    let out = lb.cli(&[
        "apply",
        forced.to_str().unwrap(),
        "--max-moved",
        "0.05",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("forced past: impact"),
        "{}",
        stdout(&out)
    );
    let applied = lb.last_event("applied").await.unwrap();
    assert!(
        applied["summary"].as_str().unwrap().contains("forced"),
        "{applied}"
    );
    assert_eq!(lb.get("/auth/login").await.1, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_against_a_stale_parent_is_a_409() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let v1 = config(&[auth.addr], web.addr, "");
    let lb = Lb::start(&v1);
    let v2 = config(&[auth.addr], web.addr, "# two\n");
    let (status, report) = lb.json("POST", "/config?parent=1&author=alice", &v2).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "applied");
    // Bob made his change against v1 too.
    let v3 = config(&[auth.addr], web.addr, "# three\n");
    let (status, report) = lb.json("POST", "/config?parent=1&author=bob", &v3).await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["outcome"], "conflict");
    let why = report["refusals"][0]["message"].as_str().unwrap();
    assert!(why.contains("v2 serves now"), "{why}");
    let (_, h, _) = lb.call("GET", "/config", "", Some(TOKEN)).await;
    assert_eq!(h["fulcrum-version"].to_str().unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_of_an_invalid_file_is_refused_and_journaled() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[auth.addr], web.addr, ""));
    std::fs::write(&lb.config, super::super::BROKEN).unwrap();
    lb.served.signal("HUP");
    lb.served.wait_log("reload refused", 1);
    assert_eq!(lb.get("/auth/login").await.1, "auth");
    let refused = lb.last_event("refused").await;
    let refused = refused.expect("journaled");
    assert_eq!(refused["actor"], "file");
    assert!(
        refused["summary"].as_str().unwrap().contains("invalid"),
        "{refused}"
    );
    assert_eq!(refused["detail"]["outcome"], "invalid");
    // `drift` tells the file from what runs.
    let out = lb.cli(&["drift"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("differs from the running v1"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_store_cannot_record_is_refused_and_journaled() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[old.addr], web.addr, ""));
    // A directory where v2's file goes: renaming onto it fails, even as
    // root, while the journal (an open file) can still be appended to.
    let blocker = lb.dir.path().join("fulcrum.state/versions/000002.json");
    std::fs::create_dir(&blocker).unwrap();

    let v2 = config(&[new.addr], web.addr, "");
    let path = lb.file("new.toml", &v2);
    let out = lb.cli(&["apply", path.to_str().unwrap(), "-m", "auth moves to new"]);
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}{}", stderr(&out));
    assert!(shown.contains("✗ store: "), "{shown}");
    assert!(
        shown.contains("refused: store: cannot store the change"),
        "{shown}"
    );
    assert_eq!(lb.get("/auth/login").await.1, "old");

    let refused = lb.last_event("refused").await;
    let refused = refused.expect("the store failure is in the journal");
    assert!(
        refused["summary"].as_str().unwrap().contains("store: "),
        "{refused}"
    );
    assert_eq!(refused["detail"]["outcome"], "failed", "{refused}");
    assert_eq!(
        refused["detail"]["refusals"][0]["step"], "store",
        "{refused}"
    );

    // Once the store can write again, the same change goes through as v2.
    std::fs::remove_dir(&blocker).unwrap();
    let out = lb.cli_ok(&["apply", path.to_str().unwrap()]);
    assert!(stdout(&out).contains("stored as v2"), "{}", stdout(&out));
    assert_eq!(lb.get("/auth/login").await.1, "new");
}

/// Pre-flight's impact replays the recent requests, which carry only the
/// headers the running config reads. A change that routes on a new one is
/// blind there: it says so, as `diff --traffic` does, rather than show
/// 0% moved as if it knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_impact_step_says_which_headers_the_recent_requests_did_not_record() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let v1 = config(&[a.addr], web.addr, "");
    let lb = Lb::start(&v1);
    for _ in 0..5 {
        assert_eq!(lb.get("/auth/x").await.0, 200);
    }
    let v2 = v1.replace(
        "[[route]]\nname = \"auth\"",
        "[[route]]\nname = \"beta\"\nmatch = { headers = [{ name = \"x-beta\", value = \"1\" }] }\npool = \"web\"\n\n[[route]]\nname = \"auth\"",
    );
    let (status, report) = lb.json("POST", "/config", &v2).await;
    assert_eq!(status, 200, "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("x-beta"), "{report:#}");
}

/// A backend that pre-flight finds down, added to a pool with a health
/// check, starts down: its checks bring it in once it passes, as the
/// warning says. It used to start up and take its share of requests until
/// its checks failed enough times (and the 5xx it answered were the
/// change's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_preflight_found_down_takes_no_request_until_its_checks_pass() {
    let up = Backend::start("up").await;
    // Its health check fails; requests it would serve.
    let unchecked = Backend::start("unchecked").await;
    unchecked.fail_health(true);
    let web = Backend::start("web").await;
    let lb = Lb::start(&config(&[up.addr], web.addr, ""));
    let file = lb.file(
        "new.toml",
        &config(&[up.addr, unchecked.addr], web.addr, ""),
    );
    let out = lb.cli_ok(&["apply", file.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("its health checks keep it out until it passes"),
        "{}",
        stdout(&out)
    );
    for _ in 0..20 {
        assert_eq!(lb.get("/auth/login").await, (200, "up".to_owned()));
    }
    assert_eq!(unchecked.hits(), 0);
    // Once its checks pass, it takes its share.
    unchecked.fail_health(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while unchecked.hits() == 0 {
        assert!(std::time::Instant::now() < deadline, "never joined");
        lb.get("/auth/login").await;
    }
}
