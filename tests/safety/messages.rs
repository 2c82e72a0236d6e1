//! Each message a newcomer meets when something is wrong says what, where
//! and what to do, in every output format, and never points the wrong way.

use super::{json, run};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let p = self.0.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
}

fn out(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `web` (a catch-all) before `auth`: every login goes to `web`.
const SHADOWED: &str = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "web"
match = { path_prefix = "/" }
pool = "web"

[[route]]
name = "auth"
match = { path_prefix = "/auth/" }
pool = "auth"

[pool.auth]
backends = [{ addr = "127.0.0.1:9101" }]

[pool.web]
backends = [{ addr = "127.0.0.1:9201" }]
"#;

const LOGINS: &str = "[[rule]]\nname = \"logins reach the auth pool\"\nrequest = \"POST http://app.example.com/auth/login\"\nexpect_pool = \"auth\"\n";

#[test]
fn a_shadowed_route_is_fixed_by_reordering_never_by_repointing_the_catch_all() {
    let d = Dir::new();
    let config = d.file("fulcrum.toml", SHADOWED);
    let rules = d.file("rules.toml", LOGINS);
    let o = run(&["check", &config, "--standards", &rules]);
    assert_eq!(o.status.code(), Some(1));
    let (text, _) = out(&o);
    assert!(
        text.contains("route `auth` would send it there, but route `web` comes first and takes it: move `auth` above `web`"),
        "{text}"
    );
    assert!(!text.contains("point that route"), "{text}");
    // It points at the route to move.
    assert!(text.contains(&format!("--> {config}:10:1")), "{text}");

    // Without a route to auth at all, the catch-all is still not repointed.
    let no_auth = d.file(
        "no-auth.toml",
        SHADOWED.replace(
            "[[route]]\nname = \"auth\"\nmatch = { path_prefix = \"/auth/\" }\npool = \"auth\"\n",
            "",
        ),
    );
    let (text, _) = out(&run(&["check", &no_auth, "--standards", &rules]));
    assert!(
        text.contains("route `web` takes every request, so pointing it at `auth` would send all traffic there: add a route for this request with `pool = \"auth\"` before `web`"),
        "{text}"
    );
}

#[test]
fn a_pool_defined_twice_is_named_with_both_lines() {
    let d = Dir::new();
    let config = d.file(
        "fulcrum.toml",
        format!("{SHADOWED}\n[pool.auth]\nbackends = [{{ addr = \"127.0.0.1:9102\" }}]\n"),
    );
    let o = run(&["check", &config, "--format", "json"]);
    assert_eq!(o.status.code(), Some(78));
    let doc = json(&o);
    let d0 = &doc["diagnostics"][0];
    assert_eq!(d0["code"], "duplicate-pool");
    assert_eq!(d0["key_path"], "pool.auth");
    assert_eq!(
        d0["message"],
        "pool `auth` is defined twice: at line 15 and line 21"
    );
    assert_eq!(d0["line"], 21);
}

#[test]
fn a_port_out_of_range_says_so_without_a_dns_hint() {
    let d = Dir::new();
    let config = d.file(
        "fulcrum.toml",
        SHADOWED.replace("127.0.0.1:9101", "127.0.0.1:91010"),
    );
    let o = run(&["check", &config, "--format", "json"]);
    assert_eq!(o.status.code(), Some(78));
    let d0 = &json(&o)["diagnostics"][0];
    assert_eq!(d0["code"], "invalid-address");
    assert_eq!(
        d0["message"],
        "port 91010 of `127.0.0.1:91010` is out of range: ports go up to 65535"
    );
    assert_eq!(d0["hint"], "write a port from 1 to 65535");
}

#[test]
fn a_config_that_is_not_utf8_is_invalid_at_its_byte_offset() {
    let d = Dir::new();
    let mut bytes = b"# caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(SHADOWED.as_bytes());
    let config = d.file("fulcrum.toml", &bytes);
    let o = run(&["check", &config]);
    assert_eq!(o.status.code(), Some(78));
    let (text, _) = out(&o);
    assert!(
        text.contains(
            "error[not-utf8]: the file is not UTF-8 text: byte 0xe9 at offset 5 is not valid UTF-8"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("--> {config}:1:6")), "{text}");
    let o = run(&["check", &config, "--format", "json"]);
    assert_eq!(o.status.code(), Some(78));
    assert_eq!(json(&o)["diagnostics"][0]["code"], "not-utf8");
    let o = run(&["serve", "-c", &config]);
    assert_eq!(o.status.code(), Some(78));
    // A rules file too.
    let good = d.file("good.toml", SHADOWED);
    let rules = d.file("rules.toml", &bytes[..6]);
    let o = run(&["test", &good, &rules]);
    assert_eq!(o.status.code(), Some(78));
    assert!(out(&o).0.contains("error[not-utf8]"));
}

#[test]
fn machine_formats_get_an_error_document_even_for_an_unreadable_file() {
    let d = Dir::new();
    let good = d.file("fulcrum.toml", SHADOWED);
    let missing = "/nonexistent/fulcrum.toml";
    for args in [
        vec!["check", missing, "--format", "json"],
        vec!["test", missing, &good, "--format", "json"],
        vec!["test", &good, missing, "--format", "json"],
        vec!["diff", &good, missing, "--format", "json"],
        vec![
            "diff",
            &good,
            &good,
            "--traffic",
            missing,
            "--format",
            "json",
        ],
        vec!["explain", missing, "GET /", "--format", "json"],
        vec!["check", &good, "--standards", missing, "--format", "json"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let doc = json(&o);
        assert_eq!(doc["valid"], false, "{args:?}");
        assert_eq!(doc["diagnostics"][0]["code"], "unreadable", "{args:?}");
        assert!(
            doc["diagnostics"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with("cannot read /nonexistent/"),
            "{args:?}: {doc:#}"
        );
        assert_eq!(out(&o).1.lines().count(), 1, "{args:?}");
    }
    let o = run(&["check", missing, "--format", "sarif"]);
    assert_eq!(o.status.code(), Some(2));
    let doc = json(&o);
    let run0 = &doc["runs"][0];
    assert_eq!(run0["invocations"][0]["executionSuccessful"], false);
    assert_eq!(run0["results"][0]["ruleId"], "config/unreadable");
    assert_eq!(
        run0["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        missing
    );
}

#[test]
fn sarif_rules_carry_a_description_and_help_from_the_docs() {
    let d = Dir::new();
    let config = d.file(
        "fulcrum.toml",
        SHADOWED.replace("\"auth\"\n\n[pool", "\"auht\"\n\n[pool"),
    );
    let o = run(&["check", &config, "--format", "sarif"]);
    assert_eq!(o.status.code(), Some(78));
    let doc = json(&o);
    let rules = doc["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    let unknown = rules
        .iter()
        .find(|r| r["id"] == "config/unknown-pool")
        .unwrap();
    assert_eq!(
        unknown["fullDescription"]["text"],
        "A route names a pool that does not exist."
    );
    assert!(
        unknown["help"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Fix the name")
    );
    assert!(
        unknown["shortDescription"]["text"]
            .as_str()
            .unwrap()
            .contains("unknown-pool")
    );
    assert_eq!(
        doc["runs"][0]["invocations"][0]["executionSuccessful"],
        true
    );

    let good = d.file("good.toml", SHADOWED);
    let rules_file = d.file("rules.toml", LOGINS);
    let o = run(&[
        "check",
        &good,
        "--standards",
        &rules_file,
        "--format",
        "sarif",
    ]);
    let doc = json(&o);
    let rules = doc["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    let expect = rules
        .iter()
        .find(|r| r["id"] == "standard/expect_pool")
        .unwrap();
    assert_eq!(
        expect["fullDescription"]["text"],
        "The pool that must receive it."
    );
    assert!(
        expect["help"]["text"]
            .as_str()
            .unwrap()
            .contains("change the config line")
    );
}

#[test]
fn serve_says_when_the_host_has_no_such_address() {
    let d = Dir::new();
    // 192.0.2.0/24 is TEST-NET-1: no host has it.
    let config = d.file(
        "fulcrum.toml",
        SHADOWED.replace("127.0.0.1:8080", "192.0.2.77:8080"),
    );
    let o = run(&["serve", "-c", &config]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = out(&o);
    assert!(
        err.contains("cannot bind 192.0.2.77:8080") && err.contains("(this host has no address 192.0.2.77: bind one of its own addresses, or 0.0.0.0 for all of them)"),
        "{err}"
    );
    assert!(!err.contains("another process"), "{err}");
}

/// The first log line `serve` writes with `args`, read from its stderr (a
/// pipe, not a terminal); the process is killed once it has it.
fn first_log_line(config: &str, args: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = super::super::fulcrum()
        .args(["serve", "-c", config, "--threads", "1"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::io::BufReader::new(stderr)
        .lines()
        .next()
        .map(Result::unwrap)
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn serve_logs_plain_text_to_a_pipe_and_json_on_request() {
    let d = Dir::new();
    let config = d.file(
        "fulcrum.toml",
        SHADOWED.replace("127.0.0.1:8080", "127.0.0.1:0"),
    );
    let text = first_log_line(&config, &[]);
    assert!(text.contains("INFO") || text.contains("WARN"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "colour codes on a pipe: {text:?}");

    let line = first_log_line(&config, &["--log-format", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{v}"
    );
    assert!(v["timestamp"].is_string(), "{v}");
}
