//! The guard against the five incidents, each forced through with
//! `apply --force` under steady login traffic: detected within 5 s, the
//! alert names the forced version, rolled back within 10 s; and no alarm
//! for a benign change over a noisy but healthy pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fulcrum_testkit::{Backend, Mode};

use super::{Lb, stdout};

/// Steady synthetic traffic: logins (and a share of web requests) from a
/// few concurrent clients until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(SystemTime, u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr, headers: &'static [(&'static str, &'static str)]) -> Traffic {
        Traffic::from(proxy, headers, &[None; 6])
    }

    /// One client per address (`None`: the default, 127.0.0.1).
    fn from(
        proxy: SocketAddr,
        headers: &'static [(&'static str, &'static str)],
        clients: &[Option<std::net::IpAddr>],
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<(SystemTime, u16, String)>>> = Arc::default();
        let tasks = clients
            .iter()
            .copied()
            .enumerate()
            .map(|(i, from)| {
                let i = i as u32;
                let (stop, seen) = (stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                    connector.set_local_address(from);
                    let client: hyper_util::client::legacy::Client<
                        _,
                        http_body_util::Empty<bytes::Bytes>,
                    > = hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(connector);
                    // Bounded: at most 3,000 requests a client (about 60 s).
                    for n in 0..3_000u32 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let path = if (n + i).is_multiple_of(3) {
                            "/"
                        } else {
                            "/auth/login"
                        };
                        let mut req = http::Request::get(format!("http://{proxy}{path}"));
                        for (k, v) in headers {
                            req = req.header(*k, *v);
                        }
                        let req = req.body(http_body_util::Empty::new()).unwrap();
                        let got =
                            match tokio::time::timeout(Duration::from_secs(2), client.request(req))
                                .await
                            {
                                Ok(Ok(r)) => {
                                    let status = r.status().as_u16();
                                    use http_body_util::BodyExt;
                                    let body = r
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    (status, String::from_utf8_lossy(&body).into_owned())
                                }
                                _ => (0, String::new()),
                            };
                        seen.lock().unwrap().push((SystemTime::now(), got.0, got.1));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Traffic { stop, seen, tasks }
    }

    async fn stop(self) -> Vec<(SystemTime, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

fn time(e: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(e["time"].as_str().unwrap()).unwrap()
}

/// Force `bad` through under traffic; assert the guard's alert names it
/// within 5 s and its rollback lands within 10 s; return the alert.
async fn forced_incident(
    v1: &str,
    bad: &str,
    traffic_headers: &'static [(&'static str, &'static str)],
) -> serde_json::Value {
    let lb = Lb::start(v1);
    let traffic = Traffic::start(lb.served.addr, traffic_headers);
    // A baseline for the window before the change.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let file = lb.file("bad.toml", bad);
    let out = lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--force",
        "-m",
        "the bad change",
    ]);
    assert!(stdout(&out).contains("applied: v2"), "{}", stdout(&out));
    let deadline = Instant::now() + Duration::from_secs(12);
    let (alert, rolled) = loop {
        let events = lb.events().await;
        let alert = events.iter().find(|e| e["kind"] == "alert").cloned();
        let rolled = events
            .iter()
            .find(|e| e["kind"] == "rolled_back" && e["actor"] == "guard")
            .cloned();
        if let (Some(a), Some(r)) = (&alert, &rolled) {
            break (a.clone(), r.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no alert and guard rollback in time: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events = lb.events().await;
    let applied = events.iter().find(|e| e["kind"] == "applied").unwrap();
    let detect = time(&alert).duration_since(time(applied)).unwrap();
    let recover = time(&rolled).duration_since(time(applied)).unwrap();
    assert!(
        detect <= Duration::from_secs(5),
        "detected after {detect:?}"
    );
    assert!(
        recover <= Duration::from_secs(10),
        "rolled back after {recover:?}"
    );
    assert_eq!(
        alert["version"], 2,
        "the alert names the forced version: {alert}"
    );
    assert!(alert["summary"].as_str().unwrap().contains("v2"), "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("the bad change"),
        "{alert}"
    );
    assert!(
        alert["detail"]["diff"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "the alert carries the diff: {alert}"
    );
    assert_eq!(rolled["detail"]["to"], 1, "{rolled}");
    // v1 serves again.
    let (_, h, _) = lb.call("GET", "/config", "", Some(super::TOKEN)).await;
    assert_eq!(h["fulcrum-version"].to_str().unwrap(), "1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = traffic.stop().await;
    // Requests that failed: only while the change served, none once it was
    // rolled back (a request in flight at that moment may end either way).
    let (applied_at, rolled_at) = (time(applied), time(&rolled));
    let failed = seen.iter().filter(|(_, s, _)| *s != 200).count();
    let during = seen
        .iter()
        .filter(|(t, s, _)| {
            *s != 200 && *t >= applied_at && *t <= rolled_at + Duration::from_millis(200)
        })
        .count();
    let after = seen
        .iter()
        .filter(|(t, s, _)| *s != 200 && *t > rolled_at + Duration::from_millis(200))
        .count();
    eprintln!(
        "detected in {detect:?}, rolled back in {recover:?}; {failed} of {} requests not 200, {during} of them while the change served",
        seen.len()
    );
    assert_eq!(
        failed, during,
        "every failed request fell while the change served"
    );
    assert_eq!(after, 0, "no request failed after the rollback");
    alert
}

fn pool(name: &str, algorithm: &str, backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[pool.{name}]\nalgorithm = \"{algorithm}\"\nbackends = [{}]\nhealth = {{ path = \"/healthz\", interval = \"100ms\" }}\n{extra}\n",
        list.join(", ")
    )
}

fn config(auth_route_pool: &str, auth_pool: &str, web: SocketAddr) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
name = "auth"
match = {{ path_prefix = "/auth/" }}
pool = "{auth_route_pool}"

[[route]]
name = "web"
pool = "web"

{auth_pool}
[pool.web]
backends = [{{ addr = "{web}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_1_logins_sent_to_the_wrong_pool() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let auth = pool("auth", "round_robin", &[(a.addr, 1), (b.addr, 1)], "");
    let alert = forced_incident(
        &config("auth", &auth, web.addr),
        &config("web", &auth, web.addr),
        &[],
    )
    .await;
    let findings = alert["detail"]["findings"].to_string();
    assert!(findings.contains("pool auth: shift"), "{findings}");
}

/// Requests routed nowhere: no route matches them any more, so Fulcrum
/// answers its own 404 on no route and no pool, where the route and pool
/// detectors see nothing (no pool has traffic left to shift).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_routes_requests_nowhere() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let auth = pool("auth", "round_robin", &[(a.addr, 1)], "");
    let v1 = config("auth", &auth, web.addr);
    let bad = v1
        .replace("path_prefix = \"/auth/\"", "path_prefix = \"/auth-v2/\"")
        .replace(
            "name = \"web\"\npool",
            "name = \"web\"\nmatch = { path_prefix = \"/static/\" }\npool",
        );
    assert_ne!(bad, v1);
    let alert = forced_incident(&v1, &bad, &[]).await;
    let findings = alert["detail"]["findings"].to_string();
    assert!(findings.contains("no route: unrouted"), "{findings}");
}

/// A change cannot switch off the guard that judges it: its own
/// `rollback = false` (or `enabled = false`) applies once it is past
/// judging; until then the settings of the version before it do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_cannot_switch_off_the_guard_that_judges_it() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let auth = pool("auth", "round_robin", &[(a.addr, 1), (b.addr, 1)], "");
    for own in ["rollback = false", "enabled = false"] {
        let bad = format!("[guard]\n{own}\n\n{}", config("web", &auth, web.addr));
        forced_incident(&config("auth", &auth, web.addr), &bad, &[]).await;
    }
}

/// A rollback the guard cannot make (the version before no longer
/// compiles: a rule file it ships with is gone) is journaled, not lost in
/// the log, and the change keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_the_guard_cannot_make_is_journaled() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let rules = tempfile::tempdir().unwrap();
    let rule_file = rules.path().join("t.toml");
    std::fs::write(
        &rule_file,
        "[[rule]]\nname = \"every pool is used\"\nevery_pool_used = true\n",
    )
    .unwrap();
    let auth = pool("auth", "round_robin", &[(a.addr, 1)], "");
    let v1 = format!(
        "tests = [{:?}]\n\n{}",
        rule_file.display().to_string(),
        config("auth", &auth, web.addr)
    );
    let lb = Lb::start(&v1);
    let traffic = Traffic::start(lb.served.addr, &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let file = lb.file("bad.toml", &config("web", &auth, web.addr));
    std::fs::remove_file(&rule_file).unwrap();
    lb.cli_ok(&["apply", file.to_str().unwrap(), "--force"]);
    let failed = lb
        .wait_event(Duration::from_secs(10), "a rollback_failed alert", |e| {
            e["kind"] == "alert" && e["detail"]["action"] == "rollback_failed"
        })
        .await;
    assert!(
        failed["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("no longer compiles"),
        "{failed}"
    );
    let (_, h, _) = lb.call("GET", "/config", "", Some(super::TOKEN)).await;
    assert_eq!(h["fulcrum-version"].to_str().unwrap(), "2");
    traffic.stop().await;
}

/// A canary promoted after a bake longer than the probation is still on
/// probation from its promotion: turning bad then, it is rolled back, not
/// only alerted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_canary_is_on_probation_from_its_promotion() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let x = Backend::start("x").await;
    let guard = "[guard]\nprobation = \"3s\"\n\n";
    let v1 = format!(
        "{guard}{}",
        config(
            "auth",
            &pool("auth", "round_robin", &[(a.addr, 1)], ""),
            web.addr
        )
    );
    let v2 = format!(
        "{guard}{}",
        config(
            "auth",
            &pool("auth", "round_robin", &[(x.addr, 1)], ""),
            web.addr
        )
    );
    let lb = Lb::start(&v1);
    let traffic = Traffic::start(lb.served.addr, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = lb.file("v2.toml", &v2);
    lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "4s",
    ]);
    // Promoted (apply waits for the bake): now x stops serving logins.
    x.set_mode(Mode::Status(404));
    let rolled = lb
        .wait_event(
            Duration::from_secs(10),
            "the promoted change's rollback",
            |e| e["kind"] == "rolled_back",
        )
        .await;
    assert_eq!(rolled["actor"], "guard", "{rolled}");
    assert_eq!(rolled["detail"]["to"], 1, "{rolled}");
    traffic.stop().await;
}

/// A canary staged while the change before it is on probation, then
/// dropped, leaves that change on probation: its watch waits under the
/// canary instead of ending with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_canary_leaves_the_change_under_it_on_probation() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let version = |weight: u32| {
        config(
            "auth",
            &pool("auth", "round_robin", &[(a.addr, 1), (b.addr, weight)], ""),
            web.addr,
        )
    };
    let lb = Lb::start(&version(1));
    let v2 = lb.file("v2.toml", &version(2));
    lb.cli_ok(&["apply", v2.to_str().unwrap()]);
    let watching = |n: u64| {
        move |g: &serde_json::Value| g["state"] == "probation" && g["change"]["number"] == n
    };
    let guard_is = async |what: &str, want: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, g) = lb.json("GET", "/guard", "").await;
            if want(&g) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {g}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    guard_is("v2 on probation", &watching(2)).await;
    let v3 = lb.file("v3.toml", &version(3));
    lb.cli_ok(&[
        "apply",
        v3.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "60s",
        "--no-wait",
    ]);
    guard_is("the canary watched", &|g| g["state"] == "canary").await;
    lb.cli_ok(&["rollback"]);
    guard_is("v2 on probation again", &watching(2)).await;
}

/// Three clients on each side of a half canary, chosen by the cohort hash.
fn both_sides() -> Vec<Option<std::net::IpAddr>> {
    let mut sides = (Vec::new(), Vec::new());
    for i in 2..=250u8 {
        let ip = std::net::IpAddr::from([127, 0, 0, i]);
        let canary = fulcrum_proxy::cohort_hash(ip) < u64::MAX / 2;
        let side = if canary { &mut sides.0 } else { &mut sides.1 };
        if side.len() < 3 {
            side.push(Some(ip));
        }
    }
    sides.0.into_iter().chain(sides.1).collect()
}

/// With `consecutive = 1`, a canary's first look (before the stable
/// cohort has counts to compare with) already knows which pools the
/// change touched: a pool it did not touch, unhealthy all along, does not
/// drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_not_dropped_for_an_unhealthy_pool_it_did_not_touch() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let web: Vec<Backend> = vec![
        Backend::start("web").await,
        Backend::start("web").await,
        Backend::start("web").await,
    ];
    web[1].fail_health(true);
    web[2].fail_health(true);
    let web_pool = pool(
        "web",
        "round_robin",
        &web.iter().map(|w| (w.addr, 1)).collect::<Vec<_>>(),
        "",
    );
    let version = |weight: u32| {
        let auth = pool("auth", "round_robin", &[(a.addr, 1), (b.addr, weight)], "");
        let one_web = format!(
            "[pool.web]\nbackends = [{{ addr = \"{}\" }}]\n",
            web[0].addr
        );
        format!(
            "[guard]\nconsecutive = 1\n\n{}",
            config("auth", &auth, web[0].addr).replace(&one_web, &web_pool)
        )
    };
    let lb = Lb::start(&version(1));
    let traffic = Traffic::from(lb.served.addr, &[], &both_sides());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = lb.file("v2.toml", &version(2));
    let out = lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "3s",
    ]);
    assert!(stdout(&out).contains("promoted"), "{}", stdout(&out));
    traffic.stop().await;
}

/// `apply FILE --canary 0.5 ARGS`, run beside the test (it waits for the
/// canary's end), once the canary is staged; its output when it ends.
async fn staged(
    lb: &Lb,
    file: &std::path::Path,
    args: &[&str],
) -> tokio::task::JoinHandle<std::process::Output> {
    let mut all = vec!["apply", file.to_str().unwrap(), "--canary", "0.5"];
    all.extend_from_slice(args);
    let mut apply = lb.cli_command(&all);
    let apply = tokio::task::spawn_blocking(move || apply.output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lb.json("GET", "/status", "").await.1["canary"].is_object() {
        assert!(Instant::now() < deadline, "never staged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    apply
}

/// Incident 5's weights as a canary at a low rate: when its bake is over,
/// too few requests have passed to be sure of the skew (about 130 at the
/// default confidence), though it is likely. The promotion waits, and the
/// canary is dropped once more requests make the skew sure. It used to be
/// promoted at once (`apply` exit 0) and rolled back on probation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_the_guard_is_unsure_of_waits_past_its_bake() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let web = Backend::start("web").await;
    let version = |weight: u32| {
        let backends = [(a.addr, weight), (b.addr, 1), (c.addr, 1)];
        config(
            "auth",
            &pool("auth", "round_robin", &backends, ""),
            web.addr,
        )
    };
    let lb = Lb::start(&version(1));
    let sides = both_sides();
    let (canary_side, stable_side) = (sides[0], sides[3]);
    // `n` logins from `from`, one after another on one connection.
    let logins = async |from: Option<std::net::IpAddr>, n| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(from);
        connector.set_nodelay(true);
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        for _ in 0..n {
            let uri: http::Uri = format!("http://{}/auth/login", lb.served.addr)
                .parse()
                .unwrap();
            let resp = client.get(uri).await.unwrap();
            assert_eq!(resp.status(), 200);
            use http_body_util::BodyExt;
            resp.into_body().collect().await.unwrap();
        }
    };
    logins(canary_side, 10).await;
    logins(stable_side, 10).await;
    let file = lb.file("v2.toml", &version(20));
    // Long enough for the 66 logins below on a slow machine.
    let bake = "6s";
    // `apply` waits for the canary's end, and says what held it.
    let apply = staged(&lb, &file, &["--bake", bake]).await;
    // 66 logins on the canary, 60 of them to one backend: at 95 % its
    // share is surely above 0.8, at the default 99.9 % not yet.
    logins(canary_side, 66).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let (_, s) = lb.json("GET", "/status", "").await;
        assert!(s["canary"].is_object(), "no longer a canary: {s}");
        if let Some(why) = s["canary"]["held"].as_str() {
            break why.to_owned();
        }
        assert!(Instant::now() < deadline, "never held: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(held.contains("pool auth: skew"), "{held}");
    // A hundred more make it sure: the guard drops the canary.
    logins(canary_side, 100).await;
    let dropped = lb
        .wait_event(Duration::from_secs(5), "the canary dropped", |e| {
            e["kind"] == "rolled_back"
        })
        .await;
    assert_eq!(dropped["actor"], "guard", "{dropped}");
    assert!(lb.last_event("promoted").await.is_none());
    let out = apply.await.unwrap();
    let said = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("held: ") && said.contains("rolled back"),
        "{said}"
    );
}

/// With `rollback = false` the guard only alerts: a failing canary is
/// held one more bake, then promoted, and `apply` says it was still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_held_past_twice_its_bake_is_promoted_and_says_so() {
    let (a, x, web) = (
        Backend::start("a").await,
        Backend::start("x").await,
        Backend::start("web").await,
    );
    x.set_mode(Mode::Status(500));
    let version = |backends: &[(SocketAddr, u32)]| {
        format!(
            "[guard]\nrollback = false\n\n{}",
            config("auth", &pool("auth", "round_robin", backends, ""), web.addr)
        )
    };
    let lb = Lb::start(&version(&[(a.addr, 1)]));
    let traffic = Traffic::from(lb.served.addr, &[], &both_sides());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = lb.file("v2.toml", &version(&[(a.addr, 1), (x.addr, 1)]));
    let started = Instant::now();
    let out = lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "2s",
    ]);
    traffic.stop().await;
    let said = stdout(&out);
    assert!(said.contains("held: "), "{said}");
    assert!(said.contains("though the guard still held it"), "{said}");
    assert!(started.elapsed() >= Duration::from_secs(4), "{said}");
    let promoted = lb.last_event("promoted").await.unwrap();
    assert!(
        promoted["summary"]
            .as_str()
            .unwrap()
            .contains("route auth: errors"),
        "{promoted}"
    );
    // The journal says so in its detail, which `apply` reads.
    let detail = &promoted["detail"];
    assert!(detail["held"].as_str().is_some(), "{promoted}");
    assert!(detail["held_ms"].as_u64().unwrap() >= 1900, "{promoted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_2_auth_servers_that_do_not_serve_logins() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let (x, y) = (Backend::start("x").await, Backend::start("y").await);
    x.set_mode(Mode::Status(404));
    y.set_mode(Mode::Status(404));
    let v1 = config(
        "auth",
        &pool("auth", "round_robin", &[(a.addr, 1), (b.addr, 1)], ""),
        web.addr,
    );
    let v2 = config(
        "auth",
        &pool("auth", "round_robin", &[(x.addr, 1), (y.addr, 1)], ""),
        web.addr,
    );
    let alert = forced_incident(&v1, &v2, &[]).await;
    assert!(
        alert["detail"]["findings"]
            .to_string()
            .contains("route auth: outcome"),
        "{alert}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_3_timeouts_cut_below_what_logins_take() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    a.set_mode(Mode::Delay(Duration::from_millis(30)));
    b.set_mode(Mode::Delay(Duration::from_millis(30)));
    let backends = [(a.addr, 1), (b.addr, 1)];
    let v1 = config(
        "auth",
        &pool("auth", "least_request", &backends, ""),
        web.addr,
    );
    let v2 = config(
        "auth",
        &pool(
            "auth",
            "least_request",
            &backends,
            "timeouts = { response = \"10ms\" }\nretries = { attempts = 0 }",
        ),
        web.addr,
    );
    let alert = forced_incident(&v1, &v2, &[]).await;
    assert!(
        alert["detail"]["findings"]
            .to_string()
            .contains("route auth: errors"),
        "{alert}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_3_a_slow_backend_weighted_up() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    b.set_mode(Mode::Delay(Duration::from_millis(60)));
    let v1 = config(
        "auth",
        &pool("auth", "round_robin", &[(a.addr, 10), (b.addr, 1)], ""),
        web.addr,
    );
    let v2 = config(
        "auth",
        &pool("auth", "round_robin", &[(a.addr, 1), (b.addr, 10)], ""),
        web.addr,
    );
    let alert = forced_incident(&v1, &v2, &[]).await;
    let findings = alert["detail"]["findings"].to_string();
    assert!(
        findings.contains("route auth: latency") || findings.contains("pool auth: skew"),
        "{findings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_4_a_hash_key_that_barely_varies() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let backends = [(a.addr, 1), (b.addr, 1)];
    let v1 = config(
        "auth",
        &pool("auth", "round_robin", &backends, ""),
        web.addr,
    );
    let v2 = config(
        "auth",
        &pool(
            "auth",
            "hash",
            &backends,
            "hash = { key = \"header:x-tenant\" }",
        ),
        web.addr,
    );
    // Every login carries the same tenant.
    let alert = forced_incident(&v1, &v2, &[("x-tenant", "acme")]).await;
    let findings = alert["detail"]["findings"].to_string();
    assert!(
        findings.contains("pool auth: skew") || findings.contains("pool auth: shares"),
        "{findings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_5_weights_that_starve_all_but_one() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let web = Backend::start("web").await;
    let v1 = config(
        "auth",
        &pool(
            "auth",
            "round_robin",
            &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
            "",
        ),
        web.addr,
    );
    let v2 = config(
        "auth",
        &pool(
            "auth",
            "round_robin",
            &[(a.addr, 20), (b.addr, 1), (c.addr, 1)],
            "",
        ),
        web.addr,
    );
    let alert = forced_incident(&v1, &v2, &[]).await;
    assert!(
        alert["detail"]["findings"]
            .to_string()
            .contains("pool auth: skew"),
        "{alert}"
    );
}

/// A backend that is healthy but noisy: 0–15 ms of latency and one 500 in
/// fifty, at random.
async fn noisy(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        let (delay, fail) = (fastrand::u64(0..15), fastrand::u32(0..50) == 0);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let status = if fail { 500 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from(name)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benign_change_over_a_noisy_healthy_pool_raises_no_alarm() {
    let (a, ta) = noisy("a").await;
    let (b, tb) = noisy("b").await;
    let web = Backend::start("web").await;
    let auth = |extra: &str| {
        pool("auth", "least_request", &[(a, 1), (b, 1)], extra).replace(
            "health = { path = \"/healthz\", interval = \"100ms\" }\n",
            "",
        )
    };
    let v1 = config("auth", &auth(""), web.addr);
    let lb = Lb::start(&v1);
    let traffic = Traffic::start(lb.served.addr, &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Benign: a longer connect timeout, through probation...
    let v2 = lb.file(
        "v2.toml",
        &config("auth", &auth("timeouts = { connect = \"3s\" }"), web.addr),
    );
    let out = lb.cli(&["apply", v2.to_str().unwrap(), "-m", "benign"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    tokio::time::sleep(Duration::from_secs(6)).await;
    // ...and as a canary.
    let v3 = lb.file(
        "v3.toml",
        &config("auth", &auth("timeouts = { connect = \"4s\" }"), web.addr),
    );
    let out = lb.cli(&[
        "apply",
        v3.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "4s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let seen = traffic.stop().await;
    let events = lb.events().await;
    let alarms: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "alert" || e["actor"] == "guard")
        .collect();
    assert!(alarms.is_empty(), "false alarm: {alarms:#?}");
    let errors = seen.iter().filter(|(_, s, _)| *s == 500).count();
    assert!(
        errors > 0,
        "the pool was noisy: {errors} of {} were 500",
        seen.len()
    );
    let (_, guard) = lb.json("GET", "/guard", "").await;
    assert_ne!(guard["verdict"], "fail", "{guard:#}");
    ta.abort();
    tb.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_dropped_by_the_guard_and_the_webhook_hears_of_it() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let (x, y) = (Backend::start("x").await, Backend::start("y").await);
    x.set_mode(Mode::Status(404));
    y.set_mode(Mode::Status(404));
    // A webhook receiver.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let heard_by = heard.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = hook.accept().await else {
                return;
            };
            let heard = heard_by.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let heard = heard.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            heard
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    // Both carry one `version` label, as a change made without bumping it
    // does: the guard tells the two sides apart by content all the same.
    let guard = format!("version = \"prod\"\n[guard]\nwebhook = \"http://{hook_addr}/alerts\"\n");
    let v1 = format!(
        "{guard}{}",
        config(
            "auth",
            &pool("auth", "round_robin", &[(a.addr, 1), (b.addr, 1)], ""),
            web.addr
        )
    );
    let v2 = format!(
        "{guard}{}",
        config(
            "auth",
            &pool("auth", "round_robin", &[(x.addr, 1), (y.addr, 1)], ""),
            web.addr
        )
    );
    let lb = Lb::start(&v1);
    let traffic = Traffic::from(lb.served.addr, &[], &both_sides());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = lb.file("bad.toml", &v2);
    lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--force",
        "--canary",
        "0.5",
        "--bake",
        "10m",
        "--no-wait",
    ]);
    let rolled = lb
        .wait_event(
            Duration::from_secs(10),
            "the guard dropping the canary",
            |e| e["kind"] == "rolled_back" && e["actor"] == "guard",
        )
        .await;
    assert_eq!(rolled["detail"]["canary"], true, "{rolled}");
    let (_, status) = lb.json("GET", "/status", "").await;
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["version"]["number"], 1);
    let alert = lb
        .events()
        .await
        .into_iter()
        .find(|e| e["kind"] == "alert")
        .unwrap();
    assert_eq!(alert["detail"]["state"], "canary", "{alert}");
    // It names what the canary changed from the stable config beside it.
    let diff = alert["detail"]["diff"].to_string();
    assert!(
        diff.contains(&format!("auth/{}", x.addr)) && diff.contains(&format!("auth/{}", a.addr)),
        "{diff}"
    );
    // After the canary is dropped, /guard judges no change (from its
    // next tick on).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, g) = lb.json("GET", "/guard", "").await;
        if g["change"].is_null() && g["state"] == "steady" {
            break;
        }
        assert!(Instant::now() < deadline, "{g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The webhook got the alert (retried in the background).
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the webhook heard nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: serde_json::Value = serde_json::from_str(&heard.lock().unwrap()[0]).unwrap();
    assert_eq!(got["change"]["number"], 2, "{got}");
    assert_eq!(got["action"], "rollback");
    traffic.stop().await;
}

/// An `apply` waiting on a canary whose server goes away says what became
/// of the canary (it is `serve`'s, and `status` shows how it ends), and
/// exits 2 as for an unreachable API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_loses_the_api_while_waiting_says_the_canary_goes_on() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let version = |w: u32| {
        let backends = [(a.addr, 1), (b.addr, w)];
        config(
            "auth",
            &pool("auth", "round_robin", &backends, ""),
            web.addr,
        )
    };
    let mut lb = Lb::start(&version(1));
    let file = lb.file("v2.toml", &version(2));
    let apply = staged(&lb, &file, &["--bake", "60s", "--force"]).await;
    lb.stop(true).await;
    let out = apply.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("stopped waiting for v2's canary"), "{err}");
}
