//! Raw stage: the TOML document parsed once into spanned values, then each
//! item (`[admin]`, `[access_log]`, every listener, route and pool)
//! deserialized on its own into `deny_unknown_fields` serde structs. An error
//! in one item never hides a problem in another, and within an item the
//! offending key is set aside and the item re-read, so every unknown key and
//! wrong type in it is reported too.
//!
//! Values whose meaning needs checking (addresses, durations, enum names,
//! ranges) stay strings or wide integers here; `validate` owns their rules,
//! so its messages can be specific.

use std::ops::Range;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use crate::diag::{Diagnostic, Diags, suggest};

pub(crate) type Span = Range<usize>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Spanned<String>,
    pub token_file: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub path: Spanned<String>,
    pub redact: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<Spanned<String>>>,
    pub cookies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub min_body_rate: Option<Spanned<i64>>,
    pub send_timeout: Option<Spanned<String>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub http2: Option<Spanned<RawHttp2>>,
    pub tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_uri_bytes: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp2 {
    pub enabled: Option<Spanned<bool>>,
    pub only: Option<Spanned<bool>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub max_pending_reset_streams: Option<Spanned<i64>>,
    pub max_local_error_reset_streams: Option<Spanned<i64>>,
    pub keep_alive_interval: Option<Spanned<String>>,
    pub keep_alive_timeout: Option<Spanned<String>>,
}

/// Either one certificate (`cert` + `key`) or a list of them chosen by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub certificates: Option<Vec<Spanned<RawCertificate>>>,
    pub min_version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    pub pool: Spanned<String>,
    pub guard: Option<Spanned<RawRouteGuard>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteGuard {
    pub failure_statuses: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    pub enabled: Option<Spanned<bool>>,
    pub rollback: Option<Spanned<bool>>,
    pub window: Option<Spanned<String>>,
    pub probation: Option<Spanned<String>>,
    pub attribution: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
    pub confidence: Option<Spanned<f64>>,
    pub min_effect: Option<Spanned<f64>>,
    pub latency_ratio: Option<Spanned<f64>>,
    pub max_backend_share: Option<Spanned<f64>>,
    pub min_healthy_fraction: Option<Spanned<f64>>,
    pub consecutive: Option<Spanned<i64>>,
    pub webhook: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<Spanned<RawHeader>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub name: Spanned<String>,
    pub value: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub algorithm: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub hash: Option<Spanned<RawHash>>,
    pub backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub health: Option<Spanned<RawHealth>>,
    pub outlier: Option<Spanned<RawOutlier>>,
    pub panic_threshold: Option<Spanned<f64>>,
    pub slow_start: Option<Spanned<String>>,
    pub idle_per_backend: Option<Spanned<i64>>,
    pub timeouts: Option<Spanned<RawTimeouts>>,
    pub retries: Option<Spanned<RawRetries>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHash {
    pub key: Spanned<String>,
    pub on_missing: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Spanned<String>>,
    pub max_ejection: Option<Spanned<String>>,
    pub max_ejected_fraction: Option<Spanned<f64>>,
    pub enabled: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub response: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub tunnel: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    pub attempts: Option<Spanned<i64>>,
    pub budget: Option<Spanned<f64>>,
    pub min_concurrent: Option<Spanned<i64>>,
}

/// One item of the document.
#[derive(Debug)]
pub(crate) struct Item<T> {
    /// Key path of the item, e.g. `route[2]` or `pool.auth`.
    pub path: String,
    /// `None` when the item could not be read at all. When it had errors
    /// (already reported) but they were only in keys that could be set
    /// aside, this is what remains, with defaults in their place: enough to
    /// check the rest of the item, never enough to build a snapshot from.
    pub value: Option<T>,
    /// No error in this item's shape: `value` is exactly what the file says.
    pub clean: bool,
}

#[derive(Debug)]
pub(crate) struct NamedItem<T> {
    pub name: String,
    pub name_span: Span,
    pub item: Item<T>,
}

/// The whole document, item by item.
#[derive(Debug, Default)]
pub(crate) struct RawDoc {
    pub version: Option<Spanned<String>>,
    /// Rule files the config ships with, as written.
    pub tests: Vec<Spanned<String>>,
    pub admin: Option<Item<RawAdmin>>,
    pub guard: Option<Item<RawGuard>>,
    pub access_log: Option<Item<RawAccessLog>>,
    /// Set when a `listener` key exists, even if malformed, so a broken one
    /// is not also reported as missing.
    pub listener_key: bool,
    pub listeners: Vec<Item<RawListener>>,
    pub routes: Vec<Item<RawRoute>>,
    /// Every name under `[pool]`, including pools that failed to parse, so
    /// routes naming a broken pool are not also told it does not exist.
    pub pools: Vec<NamedItem<RawPool>>,
}

pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "tests",
    "admin",
    "guard",
    "access_log",
    "listener",
    "route",
    "pool",
];

/// Parse `source` into a [`RawDoc`]. A TOML syntax error is reported alone
/// and yields `None`: past it, positions and structure are guesses.
pub(crate) fn parse(source: &str, diags: &mut Diags<'_>) -> Option<RawDoc> {
    let root = match DeTable::parse(source) {
        Ok(root) => root,
        Err(e) => {
            syntax_error(diags, &e);
            return None;
        }
    };
    let mut doc = RawDoc::default();
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "version" => match value.get_ref().as_str() {
                Some(s) => doc.version = Some(Spanned::new(value.span(), s.to_owned())),
                None => {
                    type_error(diags, value, "version", "a string");
                }
            },
            "tests" => match value.get_ref().as_array() {
                Some(files) => {
                    for (i, f) in files.iter().enumerate() {
                        match f.get_ref().as_str() {
                            Some(s) => doc.tests.push(Spanned::new(f.span(), s.to_owned())),
                            None => {
                                type_error(diags, f, &format!("tests[{i}]"), "a file path");
                            }
                        }
                    }
                }
                None => {
                    type_error(diags, value, "tests", "an array of file paths")
                        .hint("write tests = [\"login.tests.toml\"]");
                }
            },
            "admin" => doc.admin = Some(item(diags, value, "admin".into())),
            "guard" => doc.guard = Some(item(diags, value, "guard".into())),
            "access_log" => doc.access_log = Some(item(diags, value, "access_log".into())),
            "listener" => {
                doc.listener_key = true;
                doc.listeners = array_of_tables(diags, value, "listener");
            }
            "route" => doc.routes = array_of_tables(diags, value, "route"),
            "pool" => match value.get_ref().as_table() {
                Some(pools) => {
                    for (name, pool) in pools {
                        let path = format!("pool.{}", name.get_ref());
                        doc.pools.push(NamedItem {
                            name: name.get_ref().to_string(),
                            name_span: name.span(),
                            item: item(diags, pool, path),
                        });
                    }
                }
                None => {
                    type_error(diags, value, "pool", "a table of pools")
                        .hint("declare each pool as its own table: `[pool.NAME]`");
                }
            },
            other => {
                diags
                    .error(
                        "unknown-key",
                        Some(key.span()),
                        other,
                        format!("unknown key `{other}`"),
                    )
                    .hint(suggest(other, TOP_KEYS, "top-level keys"));
            }
        }
    }
    Some(doc)
}

/// A document that does not parse. A table or key given twice is named,
/// with both lines, rather than left as TOML's bare "duplicate key".
pub(crate) fn syntax_error(diags: &mut Diags<'_>, e: &toml::de::Error) {
    let message = e.message().trim();
    if message.contains("duplicate key")
        && let Some(span) = e.span()
        && duplicate(diags, span.clone())
    {
        return;
    }
    diags
        .error("toml-syntax", e.span(), "", message.to_owned())
        .hint("fix the TOML syntax at this position; nothing else is checked until it parses");
}

/// Report the duplicate whose second occurrence is at `span`; false when
/// its line is not a table header or a `key = …` line.
fn duplicate(diags: &mut Diags<'_>, span: Span) -> bool {
    let source = diags.source();
    let start = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let end = source[span.start..]
        .find('\n')
        .map_or(source.len(), |i| span.start + i);
    let line = source[start..end].trim();
    let (this, _) = diags.line_col(span.start);
    // Earlier lines, nearest first, with their offsets.
    let earlier = || {
        source[..start]
            .lines()
            .scan(0usize, |at, l| {
                let here = *at;
                *at += l.len() + 1;
                Some((here, l.trim()))
            })
            .collect::<Vec<_>>()
    };
    let table = |l: &str| -> Option<String> {
        let inner = l.strip_prefix('[')?.split(']').next()?;
        (!l.starts_with("[[")).then(|| inner.split_whitespace().collect())
    };
    if let Some(header) = table(line) {
        let first = earlier()
            .into_iter()
            .find(|(_, l)| table(l).as_deref() == Some(header.as_str()));
        let at = first.map_or(String::new(), |(o, _)| {
            format!("at line {} and ", diags.line_col(o).0)
        });
        let (code, what, hint) = match header.strip_prefix("pool.") {
            Some(pool) => (
                "duplicate-pool",
                format!("pool `{pool}` is defined twice: {at}line {this}"),
                format!("a pool is one [pool.{pool}] table: merge the two, or rename one of them"),
            ),
            None => (
                "duplicate-key",
                format!("table [{header}] is defined twice: {at}line {this}"),
                "merge the two tables into one".to_owned(),
            ),
        };
        diags.error(code, Some(span), header, what).hint(hint);
        return true;
    }
    let Some((key, _)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim();
    // The first `key =` in the same table: back to the nearest header.
    let first = earlier()
        .into_iter()
        .rev()
        .take_while(|(_, l)| !l.starts_with('['))
        .filter(|(_, l)| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        .last();
    let at = first.map_or(String::new(), |(o, _)| {
        format!("at line {} and ", diags.line_col(o).0)
    });
    diags
        .error(
            "duplicate-key",
            Some(span),
            key,
            format!("`{key}` is set twice in one table: {at}line {this}"),
        )
        .hint("keep one of them");
    true
}

fn array_of_tables<T: DeserializeOwned>(
    diags: &mut Diags<'_>,
    value: &Spanned<DeValue<'_>>,
    key: &str,
) -> Vec<Item<T>> {
    match value.get_ref().as_array() {
        Some(array) => array
            .iter()
            .enumerate()
            .map(|(i, v)| item(diags, v, format!("{key}[{i}]")))
            .collect(),
        None => {
            type_error(diags, value, key, "an array of tables")
                .hint(format!("write each one as `[[{key}]]`, with two brackets"));
            Vec::new()
        }
    }
}

fn type_error<'d>(
    diags: &'d mut Diags<'_>,
    value: &Spanned<DeValue<'_>>,
    path: &str,
    expected: &str,
) -> &'d mut Diagnostic {
    let found = value.get_ref().type_str();
    diags
        .error(
            "invalid-type",
            Some(value.span()),
            path,
            format!("expected {expected}, found {}", article(found)),
        )
        .hint(format!("write {expected} here"))
}

/// More than this many problems in one item is noise, and the bound makes
/// the set-aside-and-retry loop obviously finite.
const MAX_ERRORS_PER_ITEM: usize = 32;

/// Deserialize one item, reporting every problem in it: on each error the
/// offending key or value is set aside and the item read again.
pub(crate) fn item<T: DeserializeOwned>(
    diags: &mut Diags<'_>,
    value: &Spanned<DeValue<'_>>,
    path: String,
) -> Item<T> {
    let span = value.span();
    let mut current = value.clone();
    // Keys set aside because of an error, by (span of their table, key), so
    // their absence is not reported again as a missing key.
    let mut set_aside: Vec<(Span, String)> = Vec::new();
    let mut clean = true;
    // Setting aside an array element would shift the indices of the ones
    // after it, and later stages name backends by index: such an item is
    // not checked further.
    let mut element_set_aside = false;
    for _ in 0..MAX_ERRORS_PER_ITEM {
        let err = match T::deserialize(ValueDeserializer::from(current.clone())) {
            Ok(v) => {
                return Item {
                    path,
                    value: (!element_set_aside).then_some(v),
                    clean,
                };
            }
            Err(e) => e,
        };
        clean = false;
        let err_span = err.span().unwrap_or_else(|| span.clone());
        // Paths come from the untouched item, so indices in it stay those of
        // the file even after earlier array elements were set aside.
        let original = locate(value, &err_span, &mut Vec::new());
        let steps = original
            .as_ref()
            .map(|f| f.steps.clone())
            .unwrap_or_default();
        let node_path = key_path(&path, &steps);
        let message = err.message();
        match Problem::classify(message) {
            Problem::Unknown { key, expected } => {
                let valid: Vec<&str> = expected.iter().map(String::as_str).collect();
                diags
                    .error(
                        "unknown-key",
                        Some(err_span.clone()),
                        node_path,
                        format!("unknown key `{key}`"),
                    )
                    .hint(suggest(&key, &valid, "keys here"));
            }
            Problem::Missing(key) => {
                if !set_aside.contains(&(err_span.clone(), key.clone())) {
                    diags
                        .error(
                            "missing-key",
                            Some(err_span.clone()),
                            format!("{node_path}.{key}"),
                            format!("required key `{key}` is missing"),
                        )
                        .hint(format!("add `{key} = …` here"));
                }
            }
            Problem::Type { expected } => {
                let found_type = original.as_ref().map_or("value", |f| f.type_str);
                diags
                    .error(
                        "invalid-type",
                        Some(err_span.clone()),
                        node_path,
                        format!("expected {expected}, found {}", article(found_type)),
                    )
                    .hint(format!("write {expected} here"));
            }
            Problem::Other => {
                diags.error(
                    "invalid-value",
                    Some(err_span.clone()),
                    node_path,
                    message.to_owned(),
                );
            }
        }
        // Set the offending node aside and try again; if it is the item
        // itself (or cannot be found) there is nothing left to read.
        let Some(found) = locate(&current, &err_span, &mut Vec::new()) else {
            break;
        };
        let Some((last, parent)) = found.steps.split_last() else {
            break;
        };
        match last {
            Step::Key(k) => set_aside.push((node_span(&current, parent), k.clone())),
            Step::Index(_) => element_set_aside = true,
        }
        if !remove(&mut current, &found.steps) {
            break;
        }
    }
    Item {
        path,
        value: None,
        clean: false,
    }
}

/// What serde said went wrong. serde's derive reports problems only through
/// these standard messages (`serde::de::Error`'s provided methods), so the
/// classification is stable across versions.
enum Problem {
    Unknown { key: String, expected: Vec<String> },
    Missing(String),
    Type { expected: String },
    Other,
}

impl Problem {
    fn classify(message: &str) -> Problem {
        if message.starts_with("unknown field") {
            let mut names = backticked(message).into_iter();
            let key = names.next().unwrap_or_default();
            Problem::Unknown {
                key,
                expected: names.collect(),
            }
        } else if message.starts_with("missing field") {
            Problem::Missing(backticked(message).into_iter().next().unwrap_or_default())
        } else if message.starts_with("invalid type") {
            let expected = message
                .rsplit_once(", expected ")
                .map_or("another type", |(_, e)| e);
            Problem::Type {
                expected: friendly_type(expected).to_owned(),
            }
        } else {
            Problem::Other
        }
    }
}

/// The names inside backticks, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// serde's Rust-flavoured expectations, in TOML words.
fn friendly_type(expected: &str) -> &str {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a boolean" | "a string" => expected,
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    }
}

fn article(type_str: &str) -> String {
    match type_str.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

struct Found {
    steps: Vec<Step>,
    type_str: &'static str,
}

/// The node (a key or a value) whose span is exactly `span`, searched depth
/// first from `node`.
fn locate(node: &Spanned<DeValue<'_>>, span: &Span, steps: &mut Vec<Step>) -> Option<Found> {
    if node.span() == *span {
        return Some(Found {
            steps: steps.clone(),
            type_str: node.get_ref().type_str(),
        });
    }
    match node.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t {
                steps.push(Step::Key(k.get_ref().to_string()));
                if k.span() == *span {
                    return Some(Found {
                        steps: steps.clone(),
                        type_str: "key",
                    });
                }
                if let Some(f) = locate(v, span, steps) {
                    return Some(f);
                }
                steps.pop();
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                steps.push(Step::Index(i));
                if let Some(f) = locate(v, span, steps) {
                    return Some(f);
                }
                steps.pop();
            }
        }
        _ => {}
    }
    None
}

fn key_path(base: &str, steps: &[Step]) -> String {
    let mut path = base.to_owned();
    for s in steps {
        match s {
            Step::Key(k) => {
                path.push('.');
                path.push_str(k);
            }
            Step::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn node_span(root: &Spanned<DeValue<'_>>, steps: &[Step]) -> Span {
    let mut node = root;
    for s in steps {
        let next = match (s, node.get_ref()) {
            (Step::Key(k), DeValue::Table(t)) => t.get(k.as_str()),
            (Step::Index(i), DeValue::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    node.span()
}

/// Remove the node at `steps` (never the root). Returns whether it did.
fn remove(root: &mut Spanned<DeValue<'_>>, steps: &[Step]) -> bool {
    let Some((last, parent_steps)) = steps.split_last() else {
        return false;
    };
    let mut node = root;
    for s in parent_steps {
        let next = match (s, node.get_mut()) {
            (Step::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str()),
            (Step::Index(i), DeValue::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node.get_mut()) {
        (Step::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        (Step::Index(i), DeValue::Array(a)) if *i < a.len() => {
            let mut kept = DeArray::new();
            for (j, v) in a.iter().enumerate() {
                if j != *i {
                    kept.push(v.clone());
                }
            }
            *a = kept;
            true
        }
        _ => false,
    }
}
