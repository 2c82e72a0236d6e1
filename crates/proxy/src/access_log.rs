//! The structured access log: one JSON line per request. Requests hand a
//! small struct to a channel; a writer task formats and writes it, so a
//! slow disk never blocks a request (when the channel is full the entry is
//! dropped and counted instead).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use fulcrum_config::Snapshot;
use fulcrum_config::keys::redact;
use fulcrum_config::snapshot::LogTarget;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// One request, as the request path knows it; formatted by the writer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes: u64,
    pub version: Arc<str>,
    /// The content hash of the config that served it.
    pub config_hash: Arc<str>,
    /// Which side of a canary served it.
    pub cohort: crate::stats::Cohort,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub attempts: u32,
    /// The headers and cookies the snapshot routes or hashes on, for replay.
    pub captured: Captured,
}

/// Which headers and cookies to copy into each line: those the snapshot's
/// routes match on or its pools hash on, and those `[access_log]` adds
/// (`Snapshot::logged_keys`), so `diff --traffic` can replay the line
/// through another config. Computed once per snapshot, off the request
/// path.
#[derive(Debug, Clone, Default)]
pub struct LogKeys {
    /// Each header name, and whether its values are sensitive (redacted).
    headers: Vec<(HeaderName, bool)>,
    /// Cookie names; cookie values are always redacted.
    cookies: Vec<String>,
}

impl LogKeys {
    pub fn of(snapshot: &Snapshot) -> LogKeys {
        let keys = snapshot.logged_keys();
        LogKeys {
            headers: keys
                .headers
                .into_iter()
                .map(|h| {
                    let sensitive = snapshot.is_sensitive(&h);
                    (h, sensitive)
                })
                .collect(),
            cookies: keys.cookies,
        }
    }
}

/// What a request carried of the [`LogKeys`]: usually one or two short
/// values, so the copy is cheap. Every key is there, `None` when the
/// request lacked it: a line then says what it recorded, and replay can
/// tell "absent" from "not recorded".
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub headers: Vec<(HeaderName, Option<String>)>,
    pub cookies: Vec<(String, Option<String>)>,
}

/// Copy (and redact where sensitive) the logged keys from a request.
pub fn capture(keys: &LogKeys, headers: &HeaderMap) -> Captured {
    let mut out = Captured {
        headers: Vec::with_capacity(keys.headers.len()),
        cookies: Vec::with_capacity(keys.cookies.len()),
    };
    for (name, sensitive) in &keys.headers {
        // The first value: what `hash` keys on; exact header conditions
        // accept any value, and a second one is rare enough to leave out.
        let value = headers.get(name).map(|v| {
            if *sensitive {
                redact(v.as_bytes())
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
        });
        out.headers.push((name.clone(), value));
    }
    for name in &keys.cookies {
        out.cookies.push((name.clone(), None));
    }
    if !keys.cookies.is_empty() {
        for v in headers.get_all(http::header::COOKIE) {
            for pair in v.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let name = pair[..eq].trim_ascii();
                // The first value of each cookie, as `hash` reads it.
                if let Some((_, value @ None)) =
                    out.cookies.iter_mut().find(|(c, _)| c.as_bytes() == name)
                {
                    *value = Some(redact(pair[eq + 1..].trim_ascii()));
                }
            }
        }
    }
    out
}

/// Entries buffered before the request path starts dropping them.
const QUEUE: usize = 8192;

/// The request path's end of the access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    target: LogTarget,
    tx: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer task for `target`, counting the lines it loses
    /// in `dropped`. Must run inside a tokio runtime.
    pub fn start(target: LogTarget, dropped: Arc<AtomicU64>) -> AccessLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(target.clone(), rx, dropped.clone()));
        AccessLog {
            target,
            tx,
            dropped,
        }
    }

    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    /// Queues `entry`; counted as dropped when the writer has fallen
    /// behind, or is gone (the log could not be opened).
    pub fn send(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

async fn write_loop(target: LogTarget, mut rx: mpsc::Receiver<Entry>, dropped: Arc<AtomicU64>) {
    let out: Box<dyn AsyncWrite + Unpin + Send> = match &target {
        LogTarget::Stdout => Box::new(tokio::io::stdout()),
        LogTarget::File(path) => match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the access log; requests will not be logged");
                // What came meanwhile is lost too; later lines are
                // counted by `send`.
                rx.close();
                while rx.try_recv().is_ok() {
                    dropped.fetch_add(1, Relaxed);
                }
                return;
            }
        },
    };
    let mut out = BufWriter::new(out);
    let mut line = Vec::with_capacity(512);
    while let Some(entry) = rx.recv().await {
        let mut next = Some(entry);
        // Drain what is queued, then flush once: one write per burst.
        while let Some(e) = next {
            line.clear();
            format_entry(&e, &mut line);
            if let Err(err) = out.write_all(&line).await {
                dropped.fetch_add(1, Relaxed);
                tracing::error!(error = %err, "access log write failed");
            }
            next = rx.try_recv().ok();
        }
        if let Err(err) = out.flush().await {
            tracing::error!(error = %err, "access log flush failed");
        }
    }
}

/// Appends `e` as one JSON line to `out`.
pub fn format_entry(e: &Entry, out: &mut Vec<u8>) {
    let v = serde_json::json!({
        "time": rfc3339(e.time),
        "method": e.method.as_str(),
        "host": e.host,
        "path": e.path,
        "route": e.route.as_deref(),
        "pool": e.pool.as_deref(),
        "backend": e.backend.map(|b| b.to_string()),
        "status": e.status,
        // Microsecond precision: more digits are float noise, not data.
        "duration_ms": (e.duration_ms * 1000.0).round() / 1000.0,
        "bytes": e.bytes,
        "version": &*e.version,
        "config_hash": &*e.config_hash,
        "cohort": e.cohort.as_str(),
        "request_id": String::from_utf8_lossy(e.request_id.as_bytes()),
        "client_ip": e.client_ip.to_string(),
        "attempts": e.attempts,
    });
    let mut v = v;
    if !e.captured.headers.is_empty() {
        let h: serde_json::Map<String, serde_json::Value> = e
            .captured
            .headers
            .iter()
            .map(|(k, val)| (k.as_str().to_owned(), val.clone().into()))
            .collect();
        v["headers"] = h.into();
    }
    if !e.captured.cookies.is_empty() {
        let c: serde_json::Map<String, serde_json::Value> = e
            .captured
            .cookies
            .iter()
            .map(|(k, val)| (k.clone(), val.clone().into()))
            .collect();
        v["cookies"] = c.into();
    }
    serde_json::to_writer(&mut *out, &v).expect("writing JSON to a Vec cannot fail");
    out.push(b'\n');
}

/// `2024-05-01T12:34:56.789Z`: UTC, millisecond precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry(captured: Captured) -> Entry {
        Entry {
            time: UNIX_EPOCH,
            method: Method::GET,
            host: None,
            path: "/".into(),
            route: None,
            pool: None,
            backend: None,
            status: 404,
            duration_ms: 0.0,
            bytes: 0,
            version: "v".into(),
            config_hash: "0123456789ab".into(),
            request_id: HeaderValue::from_static("r"),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            attempts: 0,
            captured,
            cohort: crate::stats::Cohort::Stable,
        }
    }

    #[test]
    fn captures_only_the_keys_and_redacts_sensitive_values() {
        let src = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[route]]\nname = \"a\"\nmatch = { headers = [{ name = \"authorization\", value = \"Bearer x\" }] }\npool = \"p\"\n[[route]]\nname = \"b\"\npool = \"q\"\n[pool.p]\nalgorithm = \"hash\"\nhash = { key = \"cookie:session\" }\nbackends = [{ addr = \"127.0.0.1:2\" }]\n[pool.q]\nalgorithm = \"hash\"\nhash = { key = \"header:x-user\" }\nbackends = [{ addr = \"127.0.0.1:3\" }]\n";
        let snap = fulcrum_config::check("t.toml", src)
            .snapshot
            .expect("valid");
        let keys = LogKeys::of(&snap);
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("x-other", "no".parse().unwrap());
        h.insert("cookie", "a=1; session=s3cret".parse().unwrap());
        let c = capture(&keys, &h);
        assert_eq!(
            c.headers,
            vec![
                (
                    HeaderName::from_static("authorization"),
                    Some(redact(b"Bearer x"))
                ),
                (HeaderName::from_static("x-user"), Some("alice".to_owned())),
            ]
        );
        assert_eq!(
            c.cookies,
            vec![("session".to_owned(), Some(redact(b"s3cret")))]
        );
        // A request without them still records them, as absent.
        let c = capture(&keys, &HeaderMap::new());
        assert_eq!(
            c.headers,
            vec![
                (HeaderName::from_static("authorization"), None),
                (HeaderName::from_static("x-user"), None),
            ]
        );
        assert_eq!(c.cookies, vec![("session".to_owned(), None)]);
        let mut line = Vec::new();
        format_entry(&entry(c), &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["headers"]["x-user"], serde_json::Value::Null);
        assert_eq!(v["cookies"]["session"], serde_json::Value::Null);
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_566_896_789);
        assert_eq!(rfc3339(t), "2024-05-01T12:34:56.789Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
