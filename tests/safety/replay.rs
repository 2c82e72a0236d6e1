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
