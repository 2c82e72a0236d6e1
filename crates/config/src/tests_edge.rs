//! Unit tests of the edge keys: TLS certificates read through an injected
//! environment (files and clock), listener limits, HTTP/2 settings, pool
//! protocol and tunnel timeout.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::snapshot::*;

/// 2030-01-01T00:00:00Z.
const NOW: i64 = 1_893_456_000;

struct Env {
    files: HashMap<String, Vec<u8>>,
    now: i64,
}

impl Environment for Env {
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "No such file or directory (os error 2)".into())
    }
    fn now_unix(&self) -> i64 {
        self.now
    }
}

/// A self-signed certificate for `names` valid until `not_after` (y, m, d),
/// as (cert PEM, key PEM).
fn cert(names: &[&str], not_after: (i32, u8, u8)) -> (String, String) {
    cert_from(names, (2025, 1, 1), not_after)
}

/// [`cert`], valid from `not_before`.
fn cert_from(
    names: &[&str],
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem())
}

fn env(files: &[(&str, &str)]) -> Env {
    Env {
        files: files
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        now: NOW,
    }
}

fn with_listener(extra: &str) -> String {
    format!(
        r#"[[listener]]
name = "public"
bind = "127.0.0.1:8443"
{extra}

[[route]]
name = "web"
pool = "web"

[pool.web]
backends = [{{ addr = "127.0.0.1:9201" }}]
"#
    )
}

fn codes_with(src: &str, env: &Env) -> Vec<&'static str> {
    check_with("fulcrum.toml", src, env)
        .diagnostics
        .iter()
        .map(|d| d.code)
        .collect()
}

#[test]
fn one_certificate_is_read_and_compiled() {
    let (c, k) = cert(&["app.example.com"], (2031, 1, 1));
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    let checked = check_with(
        "fulcrum.toml",
        &src,
        &env(&[("cert.pem", &c), ("key.pem", &k)]),
    );
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let snap = checked.snapshot.unwrap();
    let tls = snap.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(tls.certificates[0].dns_names, vec!["app.example.com"]);
    assert_eq!(tls.certificates[0].key.cert.len(), 1);
}

#[test]
fn unreadable_files_are_reported_with_their_key_paths() {
    let src = with_listener(r#"tls = { cert = "missing.pem", key = "nokey.pem" }"#);
    let checked = check_with("fulcrum.toml", &src, &env(&[]));
    assert!(checked.snapshot.is_none());
    let paths: Vec<(&str, &str)> = checked
        .diagnostics
        .iter()
        .map(|d| (d.code, d.key_path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("tls-unreadable", "listener[0].tls.cert"),
            ("tls-unreadable", "listener[0].tls.key"),
        ]
    );
    let d = &checked.diagnostics[0];
    assert!(d.message.contains("missing.pem"), "{}", d.message);
    assert_eq!((d.line, d.col), (4, 16));
    assert!(d.hint.as_deref().unwrap().contains("relative"));
}

#[test]
fn plain_check_cannot_read_certificates() {
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    assert_eq!(
        codes(&src),
        vec!["tls-unreadable", "tls-unreadable"],
        "check without an environment reads no file"
    );
}

fn codes(src: &str) -> Vec<&'static str> {
    check("fulcrum.toml", src)
        .diagnostics
        .iter()
        .map(|d| d.code)
        .collect()
}

#[test]
fn mismatched_key_is_an_error() {
    let (c, _) = cert(&["a.test"], (2031, 1, 1));
    let (_, other_key) = cert(&["b.test"], (2031, 1, 1));
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    assert_eq!(
        codes_with(&src, &env(&[("cert.pem", &c), ("key.pem", &other_key)])),
        vec!["tls-key-mismatch"]
    );
}

#[test]
fn garbage_pem_is_reported() {
    let (c, k) = cert(&["a.test"], (2031, 1, 1));
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    assert_eq!(
        codes_with(&src, &env(&[("cert.pem", "hello"), ("key.pem", &k)])),
        vec!["tls-invalid-cert"]
    );
    assert_eq!(
        codes_with(&src, &env(&[("cert.pem", &c), ("key.pem", &c)])),
        vec!["tls-invalid-key"]
    );
}

#[test]
fn expiring_within_14_days_warns_and_expired_is_refused() {
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    let (c, k) = cert(&["a.test"], (2030, 1, 10));
    let checked = check_with(
        "fulcrum.toml",
        &src,
        &env(&[("cert.pem", &c), ("key.pem", &k)]),
    );
    assert!(checked.snapshot.is_some(), "a warning does not refuse");
    assert_eq!(checked.diagnostics.len(), 1);
    let d = &checked.diagnostics[0];
    assert_eq!((d.code, d.severity), ("tls-expiring", Severity::Warning));
    assert!(
        d.message.contains("2030-01-10") && d.message.contains("in 9 days"),
        "{}",
        d.message
    );

    let (c, k) = cert(&["a.test"], (2030, 1, 20));
    assert!(codes_with(&src, &env(&[("cert.pem", &c), ("key.pem", &k)])).is_empty());

    let (c, k) = cert(&["a.test"], (2029, 12, 1));
    assert_eq!(
        codes_with(&src, &env(&[("cert.pem", &c), ("key.pem", &k)])),
        vec!["tls-expired"]
    );
}

/// Every client would refuse a certificate whose validity has not begun
/// (a clock wrong where it was issued, or the renewal's date mistyped).
#[test]
fn a_certificate_not_valid_yet_is_refused() {
    let src = with_listener(r#"tls = { cert = "cert.pem", key = "key.pem" }"#);
    let (c, k) = cert_from(&["a.test"], (2030, 6, 1), (2031, 1, 1));
    let checked = check_with(
        "fulcrum.toml",
        &src,
        &env(&[("cert.pem", &c), ("key.pem", &k)]),
    );
    assert_eq!(
        checked
            .diagnostics
            .iter()
            .map(|d| d.code)
            .collect::<Vec<_>>(),
        vec!["tls-not-yet-valid"]
    );
    assert!(
        checked.diagnostics[0].message.contains("2030-06-01"),
        "{}",
        checked.diagnostics[0].message
    );
}

#[test]
fn several_certificates_chosen_by_name() {
    let (a, ak) = cert(&["a.test"], (2031, 1, 1));
    let (b, bk) = cert(&["*.b.test", "b.test"], (2031, 1, 1));
    let src = with_listener(
        r#"tls = { certificates = [{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }], min_version = "1.3" }"#,
    );
    let checked = check_with(
        "fulcrum.toml",
        &src,
        &env(&[("a.pem", &a), ("a.key", &ak), ("b.pem", &b), ("b.key", &bk)]),
    );
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let snap = checked.snapshot.unwrap();
    let tls = snap.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    let [a, b] = &tls.certificates[..] else {
        panic!("two certificates")
    };
    assert!(a.covers("a.test") && !a.covers("b.test"));
    assert!(b.covers("x.b.test") && b.covers("b.test"));
    assert!(!b.covers("x.y.b.test"), "a wildcard stands for one label");
    assert!(!b.covers(".b.test"));
}

#[test]
fn tls_shape_errors() {
    let (c, k) = cert(&["a.test"], (2031, 1, 1));
    let files = env(&[("c.pem", &c), ("k.pem", &k)]);
    assert_eq!(
        codes_with(&with_listener(r#"tls = { cert = "c.pem" }"#), &files),
        vec!["missing-key"]
    );
    assert_eq!(
        codes_with(&with_listener(r#"tls = { min_version = "1.2" }"#), &files),
        vec!["missing-certificate"]
    );
    assert_eq!(
        codes_with(
            &with_listener(
                r#"tls = { cert = "c.pem", key = "k.pem", certificates = [{ cert = "c.pem", key = "k.pem" }] }"#
            ),
            &files
        ),
        vec!["conflicting-tls"]
    );
    assert_eq!(
        codes_with(
            &with_listener(r#"tls = { cert = "c.pem", key = "k.pem", min_version = "1.0" }"#),
            &files
        ),
        vec!["invalid-value"]
    );
}

#[test]
fn a_second_certificate_without_names_is_unreachable() {
    let (a, ak) = cert(&["a.test"], (2031, 1, 1));
    let (b, bk) = cert(&[], (2031, 1, 1));
    let src = with_listener(
        r#"tls = { certificates = [{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }] }"#,
    );
    assert_eq!(
        codes_with(
            &src,
            &env(&[("a.pem", &a), ("a.key", &ak), ("b.pem", &b), ("b.key", &bk)])
        ),
        vec!["tls-no-dns-names"]
    );
}

#[test]
fn limits_and_http2_keys() {
    let src = with_listener(
        r#"body_timeout = "5s"
min_body_rate = 100
send_timeout = "7s"
limits = { max_header_bytes = 9000, max_headers = 50, max_uri_bytes = 2048, max_body_bytes = 1024, max_connections = 7 }
http2 = { enabled = false, max_concurrent_streams = 10, max_pending_reset_streams = 5, max_local_error_reset_streams = 50, keep_alive_interval = "1s", keep_alive_timeout = "2s" }"#,
    );
    let checked = check("fulcrum.toml", &src);
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let l = &checked.snapshot.unwrap().listeners[0];
    assert_eq!(l.body_timeout, Duration::from_secs(5));
    assert_eq!(l.min_body_rate, 100);
    assert_eq!(l.send_timeout, Duration::from_secs(7));
    assert_eq!(
        l.limits,
        Limits {
            max_header_bytes: 9000,
            max_headers: 50,
            max_uri_bytes: 2048,
            max_body_bytes: 1024,
            max_connections: 7,
        }
    );
    assert_eq!(
        l.http2,
        Http2 {
            enabled: false,
            only: false,
            max_concurrent_streams: 10,
            max_pending_reset_streams: 5,
            max_local_error_reset_streams: 50,
            keep_alive_interval: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(2),
        }
    );

    let bad = with_listener(
        r#"limits = { max_header_bytes = 100, max_connections = 0, bogus = 1 }
http2 = { max_concurrent_streams = 0 }"#,
    );
    assert_eq!(
        codes(&bad),
        vec![
            "out-of-range",
            "out-of-range",
            "unknown-key",
            "out-of-range"
        ]
    );
}

#[test]
fn slow_clients_and_http2_only_keys() {
    let defaults = check("fulcrum.toml", &with_listener(""));
    let l = &defaults.snapshot.unwrap().listeners[0];
    assert_eq!(
        (l.min_body_rate, l.send_timeout, l.http2.only),
        (1024, Duration::from_secs(30), false)
    );
    let src = with_listener("min_body_rate = 0\nhttp2 = { only = true }");
    let checked = check("fulcrum.toml", &src);
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    let l = &checked.snapshot.unwrap().listeners[0];
    assert_eq!(
        (l.min_body_rate, l.http2.enabled, l.http2.only),
        (0, true, true)
    );

    let bad = with_listener(
        "min_body_rate = -1\nsend_timeout = \"0s\"\nhttp2 = { enabled = false, only = true }",
    );
    let d = check("fulcrum.toml", &bad).diagnostics;
    let got: Vec<_> = d.iter().map(|d| (d.code, d.key_path.as_str())).collect();
    assert_eq!(
        got,
        [
            ("out-of-range", "listener[0].min_body_rate"),
            ("invalid-duration", "listener[0].send_timeout"),
            ("conflicting-http2", "listener[0].http2.only"),
        ]
    );
    assert!(d[2].hint.as_deref().unwrap().contains("remove `only`"));
}

#[test]
fn pool_protocol_and_tunnel_timeout() {
    let src = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "web"
pool = "web"

[pool.web]
protocol = "h2"
timeouts = { tunnel = "10m" }
backends = [{ addr = "127.0.0.1:9201" }]
"#;
    let checked = check("fulcrum.toml", src);
    let snap = checked.snapshot.unwrap();
    assert_eq!(snap.pools[0].protocol, Protocol::H2);
    assert_eq!(snap.pools[0].timeouts.tunnel, Duration::from_secs(600));

    let bad = src.replace("\"h2\"", "\"h2c\"");
    let d = check("fulcrum.toml", &bad).diagnostics;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].key_path, "pool.web.protocol");
    assert_eq!(d[0].hint.as_deref(), Some("did you mean `h2`?"));
}
