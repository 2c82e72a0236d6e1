//! What `GET /status` answers: the versions serving, the canary, every
//! backend's live state, the data plane's counters, and drift — whether
//! the running config, the store's head, the config file on disk and the
//! standards still agree.

use fulcrum_config::content_version;
use serde::Serialize;
use serde_json::{Value, json};

use crate::admin::{since, time};
use crate::change::{Controller, Serving};
use crate::journal::blocking;

/// Where the running config disagrees with its sources. Empty `problems`
/// means none.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub running: Version,
    /// The store's head: the version that serves after a restart.
    pub store_head: Option<u64>,
    pub file: FileDrift,
    pub standards: Option<StandardsDrift>,
    /// One line per disagreement.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub number: u64,
    pub hash: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileDrift {
    pub path: String,
    /// `None` when it cannot be read.
    pub hash: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StandardsDrift {
    pub path: String,
    pub hash: String,
    pub ok: bool,
    pub report: Option<String>,
}

fn version(s: &Serving) -> Version {
    Version {
        number: s.meta.number,
        hash: s.meta.hash.clone(),
        label: s.snapshot.version.to_string(),
    }
}

pub async fn drift(c: &Controller) -> Drift {
    let view = c.view();
    let running = &view.stable;
    let store = c.journal().store().clone();
    let store_head = blocking(&store, |s| s.head()).await;
    let mut problems = Vec::new();
    let store_head = match store_head {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("the store cannot be read: {e}"));
            None
        }
    };
    if store_head.is_some_and(|h| h != running.meta.number) {
        problems.push(format!(
            "the store's head is v{}, but v{} serves: a restart would serve v{}",
            store_head.unwrap_or_default(),
            running.meta.number,
            store_head.unwrap_or_default()
        ));
    }
    let path = c.config_path().display().to_string();
    let file = match std::fs::read(c.config_path()) {
        Ok(bytes) => {
            let hash = content_version(&String::from_utf8_lossy(&bytes));
            if hash != running.meta.hash {
                problems.push(format!(
                    "{path} (hash {hash}) differs from the running v{} (hash {}): a SIGHUP would apply the file; `fulcrum apply {path}` shows the diff first",
                    running.meta.number, running.meta.hash
                ));
            }
            FileDrift {
                path,
                hash: Some(hash),
                error: None,
            }
        }
        Err(e) => {
            problems.push(format!("{path} cannot be read: {e}"));
            FileDrift {
                path,
                hash: None,
                error: Some(e.to_string()),
            }
        }
    };
    let standards = c.with_standards(|w| {
        w.map(|w| {
            let judged = w.judge(&running.snapshot, &running.source);
            StandardsDrift {
                path: w.path().display().to_string(),
                hash: w.hash(),
                ok: judged.is_ok(),
                report: judged.err(),
            }
        })
    });
    if let Some(s) = standards.as_ref().filter(|s| !s.ok) {
        problems.push(format!(
            "the running v{} breaks the standards in {}",
            running.meta.number, s.path
        ));
    }
    Drift {
        running: version(running),
        store_head,
        file,
        standards,
        problems,
    }
}

pub async fn status(c: &Controller) -> Value {
    let view = c.view();
    let plane = c.plane();
    let snapshot = &view.stable.snapshot;
    let backends = plane.backends();
    let pools: Vec<Value> = snapshot
        .pools
        .iter()
        .map(|p| {
            let live: Vec<Value> = p
                .backends
                .iter()
                .map(|b| {
                    let s = backends
                        .iter()
                        .find(|s| s.pool == p.name && s.addr == b.addr);
                    json!({
                        "addr": b.addr.to_string(),
                        "weight": b.weight,
                        "healthy": s.is_some_and(|s| s.healthy),
                        "ejected": s.is_some_and(|s| s.ejected),
                        "in_flight": s.map_or(0, |s| s.in_flight),
                        "requests": s.map_or(0, |s| s.requests),
                        "failures": s.map_or(0, |s| s.failures),
                    })
                })
                .collect();
            json!({
                "name": &*p.name,
                "algorithm": p.algorithm.name(),
                "panic": plane.panicking(&p.name),
                "backends": live,
            })
        })
        .collect();
    let canary = view.canary.as_ref().map(|cv| {
        let remaining = cv.bake.saturating_sub(since(cv.since));
        json!({
            "version": cv.serving.meta,
            "label": &*cv.serving.snapshot.version,
            "fraction": cv.fraction,
            "since": time(cv.since),
            "bake_ms": cv.bake.as_millis() as u64,
            "remaining_ms": remaining.as_millis() as u64,
            // Why its promotion waits, once the bake is over.
            "held": remaining.is_zero().then(|| c.held(cv.serving.meta.number)).flatten(),
        })
    });
    let counters: serde_json::Map<String, Value> = plane
        .counters()
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    json!({
        "version": view.stable.meta,
        "label": &*snapshot.version,
        "canary": canary,
        "started": time(c.started),
        "uptime_s": since(c.started).as_secs(),
        "pid": std::process::id(),
        "listeners": snapshot.listeners.iter().map(|l| json!({ "name": &*l.name, "bind": l.bind.to_string() })).collect::<Vec<_>>(),
        "pools": pools,
        "counters": counters,
        "access_log_dropped": plane.access_log_dropped(),
        "drift": drift(c).await,
    })
}
