//! Traffic samples: the requests the simulator replays. Either synthetic,
//! drawn from a team's `[traffic]` description (only the headers and cookies
//! it declares, so a pool hashing on one nobody sends is caught), or
//! recorded: the JSON lines of Fulcrum's access log, with what each line
//! recorded, so a config that reads a header the log did not keep is told
//! so rather than replayed as if every request lacked it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use fastrand::Rng;
use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::{Algorithm, HashKey, RequestView};
use fulcrum_config::standards::TrafficSpec;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

/// One request of a sample, owning what routing and hashing read.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
    pub client_ip: IpAddr,
    /// From a recorded line: from arrival to the last byte sent, and the
    /// status sent. `None` in a synthetic sample.
    pub duration_ms: Option<f64>,
    pub status: Option<u16>,
}

impl SampleRequest {
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            headers: &self.headers,
        }
    }
}

/// The sample a simulation runs over, and how the model behaves.
#[derive(Debug, Clone)]
pub enum Traffic {
    /// Drawn from the spec, fed to each pool directly (a synthetic sample
    /// stands for the traffic of any pool).
    Synthetic(TrafficSpec),
    /// Recorded requests, routed through the config under test; the spec
    /// still gives the model's concurrency and seed.
    Recorded {
        log: Recording,
        spec: TrafficSpec,
        /// Where it came from, for reports.
        source: String,
    },
}

impl Traffic {
    pub fn spec(&self) -> &TrafficSpec {
        match self {
            Traffic::Synthetic(s) | Traffic::Recorded { spec: s, .. } => s,
        }
    }

    /// One line for reports: what the shares were computed over.
    pub fn describe(&self) -> String {
        match self {
            Traffic::Synthetic(s) => {
                let mut d = format!(
                    "synthetic sample: {} requests, {} client IPs, {} paths",
                    s.requests, s.clients, s.paths
                );
                for (h, n) in &s.headers {
                    d.push_str(&format!(", header {h} ({n} values)"));
                }
                for (c, n) in &s.cookies {
                    d.push_str(&format!(", cookie {c} ({n} values)"));
                }
                if s.headers.is_empty() && s.cookies.is_empty() {
                    d.push_str(", no headers or cookies");
                }
                d
            }
            Traffic::Recorded { log, source, .. } => {
                format!(
                    "recorded sample: {} requests from {source}",
                    log.requests.len()
                )
            }
        }
    }
}

/// The synthetic sample: request `i` is `GET /s/{p}` from client
/// `10.a.b.c`, with `p`, the client and each declared header's and
/// cookie's value drawn uniformly (seeded) from their declared number of
/// distinct values. No other header is sent.
pub fn synthetic(spec: &TrafficSpec) -> Vec<SampleRequest> {
    let mut rng = Rng::with_seed(spec.seed);
    (0..spec.requests)
        .map(|_| {
            let client = rng.u32(0..spec.clients as u32);
            let path = format!("/s/{}", rng.usize(0..spec.paths));
            let mut headers = HeaderMap::new();
            for (name, &n) in &spec.headers {
                // `parse_standards` refuses a name that is not a header
                // (`invalid-header-name`), so none is dropped here unseen;
                // the check only guards a spec built in code.
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    let v = format!("v{}", rng.usize(0..n));
                    headers.insert(name, HeaderValue::from_str(&v).expect("ASCII"));
                }
            }
            let cookies: Vec<String> = spec
                .cookies
                .iter()
                .map(|(c, &n)| format!("{c}=v{}", rng.usize(0..n)))
                .collect();
            if !cookies.is_empty()
                && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
            {
                headers.insert(http::header::COOKIE, v);
            }
            // A declared `host` is the host the requests name, which is
            // what a `header:host` pool hashes.
            let host = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            SampleRequest {
                method: Method::GET,
                host,
                path,
                headers,
                client_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | client)),
                duration_ms: None,
                status: None,
            }
        })
        .collect()
}

/// An access log that cannot be replayed: a line that is not one of
/// `serve`'s, or a log with no request at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficError {
    /// 1-based; 0 when the problem is the whole file.
    pub line: usize,
    pub message: String,
}

impl TrafficError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        if self.line == 0 {
            "replay needs the access log of a `fulcrum serve` that has served traffic ([access_log] path)"
        } else {
            "each line must be one JSON object as `fulcrum serve` writes to its access log"
        }
    }
}

impl fmt::Display for TrafficError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        write!(f, "{} ({})", self.message, self.hint())
    }
}

impl std::error::Error for TrafficError {}

/// A parsed access log: its requests, and how many lines recorded each
/// header and cookie. `serve` writes every header and cookie its config
/// reads (plus those `[access_log]` names) on every line, `null` when the
/// request lacked it, so a name missing from a line was not recorded there,
/// which is not the same as absent from the request.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub requests: Vec<SampleRequest>,
    /// Lower-case header name → lines that recorded it.
    pub headers: BTreeMap<String, usize>,
    /// Cookie name → lines that recorded it.
    pub cookies: BTreeMap<String, usize>,
    /// `host`, `client_ip` → lines that had the field (every line of a log
    /// `serve` wrote).
    pub fields: BTreeMap<&'static str, usize>,
}

/// A header or cookie a config reads that some lines of the log did not
/// record: replay treats it as absent on those lines, and says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unrecorded {
    /// `header`, `cookie`, or `field` (a line's `host` or `client_ip`).
    pub kind: &'static str,
    pub name: String,
    /// What reads it: `route web (match)`, `pool auth (hash key)`.
    pub read_by: Vec<String>,
    /// Lines that did not record it, of `lines`.
    pub missing: usize,
    pub lines: usize,
}

impl Unrecorded {
    /// One line for human output.
    pub fn message(&self) -> String {
        let (read_by, missing, lines) = (self.read_by.join(", "), self.missing, self.lines);
        if self.kind == "field" {
            let default = if self.name == "host" {
                "no host"
            } else {
                "client 0.0.0.0"
            };
            return format!(
                "{read_by} reads the `{}` field, which {missing} of the log's {lines} lines lack: replay takes {default} there (a log `fulcrum serve` wrote has it on every line)",
                self.name
            );
        }
        if self.kind == "header" && self.name == "cookie" {
            return format!(
                "{read_by} reads header `cookie`, which no access log records (cookies are recorded by name, redacted): replay takes it as absent on all {lines} lines; a route on a cookie cannot be replayed"
            );
        }
        format!(
            "{} reads {} `{}`, which the traffic log does not record on {} of its {} lines: replay takes it as absent there; to replay it, record it in the running config with `[access_log] {}s = [\"{}\"]`",
            self.read_by.join(", "),
            self.kind,
            self.name,
            self.missing,
            self.lines,
            self.kind,
            self.name
        )
    }
}

impl Recording {
    /// The headers and cookies `snapshot` routes or hashes on that some
    /// line did not record, with what reads each.
    pub fn unrecorded(&self, snapshot: &Snapshot) -> Vec<Unrecorded> {
        let lines = self.requests.len();
        let mut out: Vec<Unrecorded> = Vec::new();
        let mut note = |kind: &'static str, name: &str, reader: String| {
            let recorded = match kind {
                "header" => self.headers.get(name),
                "field" => self.fields.get(name),
                _ => self.cookies.get(name),
            };
            let missing = lines - recorded.copied().unwrap_or(0).min(lines);
            if missing == 0 {
                return;
            }
            match out.iter_mut().find(|u| u.kind == kind && u.name == name) {
                Some(u) if !u.read_by.contains(&reader) => u.read_by.push(reader),
                Some(_) => {}
                None => out.push(Unrecorded {
                    kind,
                    name: name.to_owned(),
                    read_by: vec![reader],
                    missing,
                    lines,
                }),
            }
        };
        for r in &snapshot.routes {
            for h in &r.matcher.headers {
                note(
                    "header",
                    h.name.as_str(),
                    format!("route `{}` (match)", r.name),
                );
            }
            if r.matcher.host.is_some() {
                note("field", "host", format!("route `{}` (match)", r.name));
            }
        }
        for p in &snapshot.pools {
            if let Algorithm::Hash(policy) = &p.algorithm {
                let reader = format!("pool `{}` (hash key)", p.name);
                match &policy.key {
                    HashKey::Header(h) if h == http::header::HOST => note("field", "host", reader),
                    HashKey::Header(h) => note("header", h.as_str(), reader),
                    HashKey::Cookie(c) => note("cookie", c, reader),
                    HashKey::ClientIp => note("field", "client_ip", reader),
                    HashKey::Path => {}
                }
            }
        }
        out
    }
}

/// Parse Fulcrum access-log lines (blank lines skipped). The fields used are
/// `method`, `host`, `path`, `client_ip`, `duration_ms`, `status`, and the
/// `headers` and `cookies` objects (values already redacted where
/// sensitive, kept as logged so replay compares hashes with hashes; `null`
/// for one the request lacked). A log without a single request is an
/// error: replaying nothing would report that nothing moves.
pub fn parse_access_log(text: &str) -> Result<Recording, TrafficError> {
    let mut out = Recording::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let req = parse_line(line, &mut out).map_err(|message| TrafficError {
            line: i + 1,
            message,
        })?;
        out.requests.push(req);
    }
    if out.requests.is_empty() {
        return Err(TrafficError {
            line: 0,
            message: "the log holds no request".into(),
        });
    }
    Ok(out)
}

/// One line; counts what it recorded into `rec`.
fn parse_line(line: &str, rec: &mut Recording) -> Result<SampleRequest, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str());
    let method = Method::from_bytes(s("method").ok_or("no `method`")?.as_bytes())
        .map_err(|_| "`method` is not an HTTP method".to_owned())?;
    let path = s("path").ok_or("no `path`")?.to_owned();
    let client_ip = match s("client_ip") {
        Some(ip) => ip
            .parse()
            .map_err(|_| format!("`client_ip` {ip:?} is not an IP"))?,
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    // Recorded, even as `null` (a request without a host): `serve` writes
    // both on every line.
    for field in ["host", "client_ip"] {
        if v.get(field).is_some() {
            *rec.fields.entry(field).or_default() += 1;
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(h) = v.get("headers").and_then(|h| h.as_object()) {
        for (name, value) in h {
            let invalid = || format!("header `{name}` is not a valid header");
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            *rec.headers.entry(n.as_str().to_owned()).or_default() += 1;
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::String(val) => {
                    headers.append(n, HeaderValue::from_str(val).map_err(|_| invalid())?);
                }
                _ => return Err(invalid()),
            }
        }
    }
    if let Some(c) = v.get("cookies").and_then(|c| c.as_object()) {
        let mut pairs = Vec::new();
        for (k, val) in c {
            *rec.cookies.entry(k.clone()).or_default() += 1;
            if let Some(val) = val.as_str() {
                pairs.push(format!("{k}={val}"));
            }
        }
        if !pairs.is_empty() {
            let val = HeaderValue::from_str(&pairs.join("; "))
                .map_err(|_| "`cookies` holds an invalid value".to_owned())?;
            headers.append(http::header::COOKIE, val);
        }
    }
    Ok(SampleRequest {
        method,
        host: s("host").map(str::to_owned),
        path,
        headers,
        client_ip,
        duration_ms: v.get("duration_ms").and_then(|d| d.as_f64()),
        status: v
            .get("status")
            .and_then(|d| d.as_u64())
            .and_then(|d| u16::try_from(d).ok()),
    })
}
