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

#[test]
fn addr_patterns_match_an_address_an_ip_or_a_block() {
    let a: SocketAddr = "10.0.1.5:8080".parse().unwrap();
    let yes = [
        "10.0.1.5:8080",
        "10.0.1.5",
        "10.0.1.0/24",
        "10.0.0.0/8",
        "0.0.0.0/0",
    ];
    let no = ["10.0.1.5:8081", "10.0.1.6", "10.0.2.0/24", "::1", "::/0"];
    for t in yes {
        assert!(AddrPattern::parse(t).unwrap().matches(a), "{t}");
    }
    for t in no {
        assert!(!AddrPattern::parse(t).unwrap().matches(a), "{t}");
    }
    let v6: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    assert!(AddrPattern::parse("2001:db8::/32").unwrap().matches(v6));
    assert_eq!(
        AddrPattern::parse("10.0.1.0/33").unwrap_err(),
        "`/33` in `10.0.1.0/33` is not a prefix length (0 to 32)"
    );
    assert!(AddrPattern::parse("auth.internal:80").is_err());
}

#[test]
fn allowed_backends_is_a_pool_assertion_with_every_entry_checked() {
    let src = "[[rule]]\nname = \"auth servers\"\npool = \"auth\"\nallowed_backends = [\"10.0.1.0/24\", \"10.0.2.0/40\", \"auth-1\"]\n\n[[rule]]\nname = \"none\"\npool = \"auth\"\nallowed_backends = []\n";
    let parsed = parse_standards("s.toml", src);
    let at: Vec<(&str, &str)> = parsed
        .diagnostics
        .iter()
        .map(|d| (d.code, d.key_path.as_str()))
        .collect();
    assert_eq!(
        at,
        [
            ("invalid-address", "rule[0].allowed_backends[1]"),
            ("invalid-address", "rule[0].allowed_backends[2]"),
            ("invalid-value", "rule[1].allowed_backends"),
        ]
    );
    let ok = parse_standards(
        "s.toml",
        "[[rule]]\nname = \"auth servers\"\npool = \"auth\"\nallowed_backends = [\"10.0.1.0/24\"]\n",
    );
    let rule = &ok.standards.unwrap().rules[0];
    assert_eq!(
        rule.allowed_backends,
        Some(vec![AddrPattern::Net("10.0.1.0".parse().unwrap(), 24)])
    );
    assert_eq!(rule.assertions[0].0, "allowed_backends");
}

/// A rule's request is routed as `serve` routes it: the `Host` header is
/// its host, and a URL's host goes as the `Host` header (routes and hash
/// keys on `host` see it). A Host naming another host than the URL is what
/// `serve` refuses with 400.
#[test]
fn a_rule_request_has_the_host_serve_would_route_on() {
    let r = rules(
        "[[rule]]\nname = \"a\"\nrequest = \"GET /auth/login\"\nheaders = { host = \"App.Example.com:8080\" }\nexpect_pool = \"auth\"\n\
         [[rule]]\nname = \"b\"\nrequest = \"GET http://legacy.example.com:8080/x\"\nexpect_pool = \"web\"\n",
    );
    let a = r[0].request.as_ref().unwrap();
    assert_eq!(a.host.as_deref(), Some("app.example.com"));
    let b = r[1].request.as_ref().unwrap();
    assert_eq!(b.host.as_deref(), Some("legacy.example.com"));
    assert_eq!(b.headers["host"], "legacy.example.com:8080");
    let d = only(
        "[[rule]]\nname = \"c\"\nrequest = \"GET http://a.example/x\"\nheaders = { host = \"b.example\" }\nexpect_pool = \"web\"\n",
    );
    assert_eq!(d.code, "invalid-request");
    assert!(d.message.contains("another host"), "{}", d.message);
}
