//! The pre-flight keys of the rule language: `probe` and `body`.

use super::*;

fn rules(source: &str) -> Vec<Rule> {
    let parsed = parse_standards("standards.toml", source);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    parsed.standards.unwrap().rules
}

/// The only diagnostic of `source`.
fn only(source: &str) -> Diagnostic {
    let parsed = parse_standards("standards.toml", source);
    assert!(parsed.standards.is_none());
    let [d] = <[Diagnostic; 1]>::try_from(parsed.diagnostics).unwrap_or_else(|d| panic!("{d:#?}"));
    d
}

#[test]
fn safe_methods_are_probed_by_default_others_only_when_asked() {
    let r = rules(
        r#"
[[rule]]
name = "status page"
request = "GET http://app.example.com/status"
expect_pool = "web"

[[rule]]
name = "logins"
request = "POST http://app.example.com/auth/login"
expect_pool = "auth"

[[rule]]
name = "test login"
request = "POST http://app.example.com/auth/login"
headers = { content-type = "application/x-www-form-urlencoded" }
probe = true
body = "user=probe&password=probe"
expect_pool = "auth"

[[rule]]
name = "not this one"
request = "HEAD http://app.example.com/big"
probe = false
expect_pool = "web"

[[rule]]
name = "admin is not served"
request = "GET http://app.example.com/admin"
expect_status = 404
"#,
    );
    let probed: Vec<(bool, Option<&str>)> =
        r.iter().map(|r| (r.probe, r.body.as_deref())).collect();
    assert_eq!(
        probed,
        [
            (true, None),
            (false, None),
            (true, Some("user=probe&password=probe")),
            (false, None),
            (false, None),
        ]
    );
}

#[test]
fn probe_and_body_need_a_request() {
    for key in ["probe = true", "body = \"x\""] {
        let d = only(&format!(
            "[[rule]]\nname = \"r\"\n{key}\npool = \"auth\"\nmin_backends = 2\n"
        ));
        assert_eq!(
            (d.code, d.key_path.as_str()),
            ("missing-key", "rule[0].request")
        );
        assert!(d.message.contains("this rule has none"), "{}", d.message);
    }
}

#[test]
fn a_body_that_would_never_be_sent_is_an_error() {
    let d = only(
        "[[rule]]\nname = \"r\"\nrequest = \"POST /auth/login\"\nexpect_pool = \"auth\"\nbody = \"user=probe\"\n",
    );
    assert_eq!(
        (d.code, d.key_path.as_str()),
        ("missing-key", "rule[0].body")
    );
    assert_eq!((d.line, d.col), (5, 8));
    assert!(d.hint.as_deref().unwrap().contains("add `probe = true`"));

    let d = only(
        "[[rule]]\nname = \"r\"\nrequest = \"POST /auth/login\"\nexpect_pool = \"auth\"\nprobe = false\nbody = \"x\"\n",
    );
    assert_eq!(
        (d.code, d.key_path.as_str()),
        ("invalid-value", "rule[0].body")
    );
    assert!(d.message.contains("`probe = false`"), "{}", d.message);
}

#[test]
fn a_request_that_must_be_refused_is_never_probed() {
    let d = only(
        "[[rule]]\nname = \"r\"\nrequest = \"GET /admin\"\nexpect_status = 404\nprobe = true\n",
    );
    assert_eq!(
        (d.code, d.key_path.as_str()),
        ("invalid-value", "rule[0].probe")
    );
    assert_eq!((d.line, d.col), (5, 9));
    assert_eq!(d.hint.as_deref(), Some("remove `probe`"));
}
