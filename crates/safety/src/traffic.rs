//! Traffic samples: the requests the simulator replays. Either synthetic,
//! drawn from a team's `[traffic]` description (only the headers and cookies
//! it declares, so a pool hashing on one nobody sends is caught), or
//! recorded: the JSON lines of Fulcrum's access log.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use fastrand::Rng;
use fulcrum_config::snapshot::RequestView;
use fulcrum_config::standards::TrafficSpec;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// One request of a sample, owning what routing and hashing read.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
    pub client_ip: IpAddr,
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
        requests: Vec<SampleRequest>,
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
            Traffic::Recorded {
                requests, source, ..
            } => format!("recorded sample: {} requests from {source}", requests.len()),
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
            SampleRequest {
                method: Method::GET,
                host: None,
                path,
                headers,
                client_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | client)),
            }
        })
        .collect()
}

/// A line of an access log that cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TrafficError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {} (each line must be one JSON object as `fulcrum serve` writes to its access log)",
            self.line, self.message
        )
    }
}

impl std::error::Error for TrafficError {}

/// Parse Fulcrum access-log lines (blank lines skipped). The fields used are
/// `method`, `host`, `path`, `client_ip`, and the `headers` and `cookies`
/// objects (values already redacted where sensitive, kept as logged so
/// replay compares hashes with hashes).
pub fn parse_access_log(text: &str) -> Result<Vec<SampleRequest>, TrafficError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| TrafficError {
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let method = Method::from_bytes(
            s("method")
                .ok_or_else(|| err("no `method`".into()))?
                .as_bytes(),
        )
        .map_err(|_| err("`method` is not an HTTP method".into()))?;
        let path = s("path").ok_or_else(|| err("no `path`".into()))?.to_owned();
        let client_ip = match s("client_ip") {
            Some(ip) => ip
                .parse()
                .map_err(|_| err(format!("`client_ip` {ip:?} is not an IP")))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut headers = HeaderMap::new();
        if let Some(h) = v.get("headers").and_then(|h| h.as_object()) {
            for (name, value) in h {
                let (Ok(n), Some(Ok(val))) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    value.as_str().map(HeaderValue::from_str),
                ) else {
                    return Err(err(format!("header `{name}` is not a valid header")));
                };
                headers.append(n, val);
            }
        }
        if let Some(c) = v.get("cookies").and_then(|c| c.as_object()) {
            let pairs: Vec<String> = c
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect();
            if !pairs.is_empty() {
                let val = HeaderValue::from_str(&pairs.join("; "))
                    .map_err(|_| err("`cookies` holds an invalid value".into()))?;
                headers.append(http::header::COOKIE, val);
            }
        }
        out.push(SampleRequest {
            method,
            host: s("host").map(str::to_owned),
            path,
            headers,
            client_ip,
        });
    }
    Ok(out)
}
