//! A restart on an existing state directory: what serves after it, and
//! what the journal says of what the stop cut short; a state directory
//! that cannot be read.

use fulcrum_testkit::Backend;

use super::{Lb, config, stdout};
use crate::write_config;

/// What `fulcrum history` lists, newest first: (number, origin, message).
fn history(lb: &Lb) -> Vec<(u64, String, String)> {
    let out = lb.cli_ok(&["history", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["number"].as_u64().unwrap(),
                m["origin"].as_str().unwrap().to_owned(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Incident-shaped: the config file is edited, sent with `fulcrum apply`,
/// found bad and rolled back. A restart must not bring it back because
/// the file still holds it; nor undo a later change sent from elsewhere.
/// An edit made while stopped is still a change, journaled with its diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_what_the_api_did_with_the_config_file() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let mut lb = Lb::start(&config(&[a.addr], web.addr, ""));
    let file = lb.config.to_str().unwrap().to_owned();
    write_config(&lb.dir, "fulcrum.toml", &config(&[b.addr], web.addr, ""));
    lb.cli_ok(&["apply", &file, "-m", "move auth to b"]);
    assert_eq!(lb.serving().await, 2);
    lb.cli_ok(&["rollback", "--reason", "logins fail"]);
    assert_eq!(lb.serving().await, 1);

    lb.restart(false).await;
    assert_eq!(lb.serving().await, 1, "the rollback stands");
    assert_eq!(history(&lb).len(), 2, "nothing new stored");
    assert_eq!(lb.get("/auth/x").await.1, "a");

    // A hotfix sent from another file survives a restart too.
    let hotfix = lb.file("hotfix.toml", &config(&[a.addr, b.addr], web.addr, ""));
    lb.cli_ok(&["apply", hotfix.to_str().unwrap(), "-m", "hotfix"]);
    lb.restart(true).await;
    assert_eq!(lb.serving().await, 3, "the hotfix stands");

    // The file edited while stopped: a change, with its diff journaled.
    lb.stop(false).await;
    write_config(
        &lb.dir,
        "fulcrum.toml",
        &config(&[a.addr], web.addr, "# edited while stopped"),
    );
    lb.start_again(&[]);
    assert_eq!(lb.serving().await, 4);
    let (n, origin, message) = history(&lb).remove(0);
    assert_eq!((n, origin.as_str()), (4, "file"));
    assert!(message.ends_with("edited while stopped"), "{message}");
    let applied = lb.last_event("applied").await.unwrap();
    assert_eq!(applied["version"], 4, "{applied:#}");
    assert!(
        applied["detail"]["diff"].to_string().contains("auth"),
        "the diff from v3 names the auth pool: {applied:#}"
    );
}

/// A canary's bake does not survive a stop: after a restart the stable
/// version serves, and the journal says the canary was dropped and why
/// (`apply --canary` tells its caller to read the journal for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_canary_drops_it_and_journals_why() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let mut lb = Lb::start(&config(&[a.addr], web.addr, ""));
    let v2 = lb.file("v2.toml", &config(&[b.addr], web.addr, ""));
    lb.cli_ok(&[
        "apply",
        v2.to_str().unwrap(),
        "--canary",
        "0.5",
        "--bake",
        "10m",
        "--no-wait",
    ]);
    lb.restart(true).await;
    assert_eq!(lb.serving().await, 1);
    let dropped = lb.last_event("rolled_back").await.expect("journaled");
    assert_eq!(dropped["version"], 2, "{dropped:#}");
    assert_eq!(dropped["detail"]["canary"], true, "{dropped:#}");
    assert!(
        dropped["summary"].as_str().unwrap().contains("stopped"),
        "{dropped:#}"
    );
    // Said once: the next restart has nothing more to say of it.
    lb.restart(false).await;
    let drops = lb
        .events()
        .await
        .iter()
        .filter(|e| e["kind"] == "rolled_back")
        .count();
    assert_eq!(drops, 1);
}

/// The guard's baseline lives in memory: a restart ends a probation
/// unjudged, and the start event says so rather than leave it silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_probation_says_it_ended_unjudged() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let guard = "[guard]\nprobation = \"10m\"\n";
    let mut lb = Lb::start(&config(&[a.addr], web.addr, guard));
    let v2 = lb.file("v2.toml", &config(&[b.addr], web.addr, guard));
    lb.cli_ok(&["apply", v2.to_str().unwrap()]);
    lb.restart(false).await;
    assert_eq!(lb.serving().await, 2);
    let start = lb.last_event("start").await.unwrap();
    assert!(
        start["summary"]
            .as_str()
            .unwrap()
            .contains("probation ends here"),
        "{start:#}"
    );
    let left = start["detail"]["probation_cut_ms"].as_u64().unwrap();
    assert!(left > 9 * 60 * 1000 && left <= 10 * 60 * 1000, "{left}");
    // A start right after a start cuts nothing.
    lb.restart(false).await;
    let start = lb.last_event("start").await.unwrap();
    assert!(start["detail"]["probation_cut_ms"].is_null(), "{start:#}");
}

/// A config file that cannot be read at a restart: the head serves, and
/// the refusal is journaled as on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_an_unreadable_config_file_serves_the_head_and_journals_it() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let mut lb = Lb::start(&config(&[a.addr], web.addr, ""));
    lb.stop(false).await;
    std::fs::write(&lb.config, b"\xff\xfe not text").unwrap();
    lb.start_again(&[]);
    assert_eq!(lb.serving().await, 1);
    let refused = lb.last_event("refused").await.expect("journaled");
    assert!(
        refused["summary"]
            .as_str()
            .unwrap()
            .contains("refused at start"),
        "{refused:#}"
    );
}

/// Standards tightened while stopped: the head still serves (a restart in
/// an incident must not become an outage), and the drift is journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_breaks_the_standards_at_a_restart_is_journaled_as_drift() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let rule = |n: u32| {
        format!("[[rule]]\nname = \"redundant auth\"\npool = \"auth\"\nmin_backends = {n}\n")
    };
    let mut lb = Lb::start_with(
        &config(&[a.addr], web.addr, ""),
        &[("standards.toml", &rule(1))],
        &["--standards", "{dir}/standards.toml"],
    );
    let standards = lb.dir.path().join("standards.toml");
    lb.stop(false).await;
    std::fs::write(&standards, rule(2)).unwrap();
    lb.start_again(&["--standards".as_ref(), standards.as_os_str()]);
    assert_eq!(lb.serving().await, 1);
    let drift = lb.last_event("drift").await.expect("journaled");
    assert_eq!(drift["version"], 1, "{drift:#}");
    assert!(
        drift["detail"]["report"]
            .as_str()
            .unwrap()
            .contains("redundant auth"),
        "{drift:#}"
    );
}

/// A start that fails at the admin API (its token file is missing) exits
/// 1 and leaves no trace of having started.
#[test]
fn a_start_refused_at_the_admin_api_journals_no_start() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &["127.0.0.1:9".parse().unwrap()],
        "127.0.0.1:9".parse().unwrap(),
        "",
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntoken_file = \"missing.token\"",
    );
    let path = write_config(&dir, "fulcrum.toml", &text);
    let out = crate::fulcrum()
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing.token"), "{err}");
    let journal = dir.path().join("fulcrum.state/journal.jsonl");
    let journal = std::fs::read_to_string(journal).unwrap_or_default();
    assert!(!journal.contains("\"start\""), "{journal}");
}

/// A state directory with a file that does not parse (damaged, or written
/// by a newer fulcrum) refuses the start in one line, and does not advise
/// moving the directory aside first: that would abandon its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_directory_refuses_the_start_and_says_what_to_do() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let mut lb = Lb::start(&config(&[a.addr], web.addr, ""));
    lb.stop(false).await;
    let v1 = lb.dir.path().join("fulcrum.state/versions/000001.json");
    std::fs::write(&v1, r#"{"number":1,"origin":"from-the-future"}"#).unwrap();
    let out = crate::fulcrum()
        .args(["serve", "-c"])
        .arg(&lb.config)
        .env("FULCRUM_ADMIN_TOKEN", super::TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("cannot open the state directory"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("000001.json"), "{line}");
    assert!(line.contains("if a newer fulcrum wrote it"), "{line}");
}

/// A stop is not held behind a reload's pre-flight: SIGTERM while a
/// SIGHUP's probes wait on a backend that takes connections and answers
/// nothing (5 s, its health timeout) drains and exits at once. The reload
/// is dropped; the next start finds the edited file and adopts it, as any
/// file edited while stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_behind_a_reloads_preflight() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut lb = Lb::start(&config(&[auth.addr], web.addr, ""));
    let slow_checks = config(&[auth.addr, silent_addr], web.addr, "").replace(
        "interval = \"100ms\"",
        "interval = \"10s\", timeout = \"5s\"",
    );
    std::fs::write(&lb.config, slow_checks).unwrap();
    lb.served.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lb.served.signal("TERM");
    let status = lb
        .served
        .exit_within(std::time::Duration::from_secs(3))
        .await;
    assert!(status.success(), "{status}");
    lb.start_again(&[]);
    assert_eq!(lb.serving().await, 2, "the edited file, adopted at start");
}

/// A reload the store cannot journal (a full disk, here an immutable
/// journal) leaves no version behind: the edited file is still new at the
/// next start, and adopted. It used to stay as a version that never
/// served, and the start took the file as already seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_the_journal_refused_leaves_the_file_new_for_the_next_start() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let mut lb = Lb::start(&config(&[a.addr], web.addr, ""));
    let journal = lb.dir.path().join("fulcrum.state/journal.jsonl");
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&journal)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr {flag} (root on ext4 or tmpfs) is needed");
    };
    write_config(&lb.dir, "fulcrum.toml", &config(&[b.addr], web.addr, ""));
    chattr("+i");
    lb.served.signal("HUP");
    lb.served.wait_log("cannot store the change", 1);
    chattr("-i");
    assert_eq!(history(&lb).len(), 1, "nothing left stored");
    lb.restart(false).await;
    assert_eq!(lb.serving().await, 2, "the edited file, adopted at start");
    assert_eq!(lb.get("/auth/x").await.1, "b");
}

/// When the store's head no longer compiles (a file it names is gone) and
/// the config file is refused too, the start says both: fixing the file
/// alone would not tell the operator the head is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_broken_head_and_a_broken_file_names_both() {
    let (a, web) = (Backend::start("a").await, Backend::start("web").await);
    let tests = "[[rule]]\nname = \"used\"\nevery_pool_used = true\n";
    let text =
        config(&[a.addr], web.addr, "").replacen("[admin]", "tests = [\"t.toml\"]\n\n[admin]", 1);
    let mut lb = Lb::start_with(&text, &[("t.toml", tests)], &[]);
    lb.stop(false).await;
    std::fs::remove_file(lb.dir.path().join("t.toml")).unwrap();
    write_config(&lb.dir, "fulcrum.toml", "listener = ");
    let out = crate::fulcrum()
        .args(["serve", "-c"])
        .arg(&lb.config)
        .env("FULCRUM_ADMIN_TOKEN", super::TOKEN)
        .output()
        .unwrap();
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert!(
        said.contains("v1 from the store no longer compiles here") && said.contains("t.toml"),
        "{said}"
    );
}

/// A routine SIGHUP over a file that holds nothing new since it was last
/// read does not put the file's config back over a change sent through
/// the API since, as a start would not; an edited file still reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_over_an_unedited_file_keeps_the_change_sent_since() {
    let (a, b, web) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("web").await,
    );
    let lb = Lb::start(&config(&[a.addr], web.addr, ""));
    let hotfix = lb.file("hotfix.toml", &config(&[b.addr], web.addr, ""));
    lb.cli_ok(&["apply", hotfix.to_str().unwrap(), "-m", "hotfix"]);
    assert_eq!(lb.serving().await, 2);
    lb.served.signal("HUP");
    lb.served
        .wait_log("holds nothing new since it was last read", 1);
    assert_eq!(lb.serving().await, 2, "the hotfix stands");
    assert_eq!(history(&lb).len(), 2, "nothing stored");
    assert_eq!(lb.get("/auth/x").await.1, "b");
    // Edited, it is a change again.
    write_config(
        &lb.dir,
        "fulcrum.toml",
        &config(&[a.addr, b.addr], web.addr, ""),
    );
    lb.served.signal("HUP");
    lb.served.wait_log("config reloaded", 1);
    assert_eq!(lb.serving().await, 3);
}
