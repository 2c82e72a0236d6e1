//! The structured access log: one JSON line per request. Requests hand a
//! small struct to a channel; a writer task formats and writes it, so a
//! slow disk never blocks a request (when the channel is full the entry is
//! dropped and counted instead).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use fulcrum_config::snapshot::LogTarget;
use http::{HeaderValue, Method};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// One request, as the request path knows it; formatted by the writer.
#[derive(Debug)]
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
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub attempts: u32,
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
    /// Starts the writer task for `target`. Must run inside a tokio runtime.
    pub fn start(target: LogTarget) -> AccessLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(target.clone(), rx));
        AccessLog {
            target,
            tx,
            dropped,
        }
    }

    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    /// Entries lost because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    pub fn send(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

async fn write_loop(target: LogTarget, mut rx: mpsc::Receiver<Entry>) {
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
        "request_id": String::from_utf8_lossy(e.request_id.as_bytes()),
        "client_ip": e.client_ip.to_string(),
        "attempts": e.attempts,
    });
    serde_json::to_writer(&mut *out, &v).expect("writing JSON to a Vec cannot fail");
    out.push(b'\n');
}

/// `2024-05-01T12:34:56.789Z`: UTC, millisecond precision.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_566_896_789);
        assert_eq!(rfc3339(t), "2024-05-01T12:34:56.789Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
