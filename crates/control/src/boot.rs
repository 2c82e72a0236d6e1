//! What a starting process serves. With an empty store, the config file,
//! if it passes the gates. Otherwise the store's head, the last version
//! promoted — unless the file holds a config the store has not seen since
//! the file was last read, in which case the file is a change like any
//! other: gated, stored, and if refused, the head serves and the refusal
//! is journaled. So a restart neither forgets changes applied through the
//! API (nor brings back one rolled back since) nor ignores an edited file.
//! What the stop cut short — a canary's bake, a change's probation — is
//! journaled, since neither survives it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fulcrum_config::{Snapshot, content_version};
use fulcrum_proxy::DataPlane;
use serde_json::json;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::change::{Controller, Serving, Settings};
use crate::gate::{Outcome, Report, judge};
use crate::journal::{Journal, blocking};
use crate::listeners::Listeners;
use crate::store::{Event, EventKind, Origin, Store, StoreError, VersionMeta, seen_since_read};

impl BootError {
    /// What went wrong, as printed.
    pub fn message(&self) -> &str {
        match self {
            BootError::Unreadable(m)
            | BootError::Invalid(m)
            | BootError::Refused(m)
            | BootError::Failed(m) => m,
        }
    }
}

/// Why the process cannot start.
#[derive(Debug)]
pub enum BootError {
    /// The config file cannot be read (exit 2).
    Unreadable(String),
    /// The config is invalid (exit 78): the rendered diagnostics.
    Invalid(String),
    /// Valid, but refused by the standards or its tests (exit 1).
    Refused(String),
    /// The store cannot be read or written, or a listener bound (exit 1).
    Failed(String),
}

/// The decision, before anything is bound: what will serve, and whether it
/// is new (to be stored) or the store's head.
pub struct Boot {
    settings: Settings,
    journal: Journal,
    serving: Serving,
    /// Set when `serving` is not stored yet.
    new: bool,
    /// The head an edited file takes over from, for the change's diff.
    replaces: Option<Serving>,
    /// Journaled once the store is known to work.
    refused: Option<Report>,
    /// What the last run left unfinished.
    cut: Cut,
}

/// What the journal says the last run left unfinished.
#[derive(Debug, Default, Clone)]
struct Cut {
    /// A canary staged and never promoted nor dropped: the stop dropped it.
    canary: Option<u64>,
    /// The head, promoted at this time, when no restart or rollback came
    /// since: its probation may have been running.
    promoted: Option<(u64, Option<u64>, SystemTime)>,
}

impl Cut {
    /// Replay the journal since the last start: pages read from its end
    /// back to that start, so a long journal costs a start nothing.
    fn read(store: &dyn Store) -> Result<Cut, StoreError> {
        const PAGE: u64 = 1024;
        let mut end = store.last_seq()?;
        let mut since_start = Vec::new();
        while end > 0 {
            let from = end.saturating_sub(PAGE);
            let mut page = store.events(from, (end - from) as usize)?;
            let start = page.iter().rposition(|e| e.kind == EventKind::Start);
            if let Some(i) = start {
                page.drain(..i);
            }
            since_start.push(page);
            if start.is_some() {
                break;
            }
            end = from;
        }
        let mut cut = Cut::default();
        for e in since_start.iter().rev().flatten() {
            cut.see(e);
        }
        Ok(cut)
    }

    fn see(&mut self, e: &Event) {
        match e.kind {
            EventKind::Staged => self.canary = e.version,
            EventKind::Promoted => {
                let from = e.detail["from"].as_u64();
                self.canary = None;
                self.promoted = e.version.map(|v| (v, from, e.time));
            }
            EventKind::RolledBack => {
                // A dropped canary leaves the head's probation running.
                if e.detail["canary"] != true {
                    self.promoted = None;
                }
                self.canary = None;
            }
            // A start settled what came before it (or an older build
            // started without a word on it: too late to say).
            EventKind::Start => *self = Cut::default(),
            _ => {}
        }
    }
}

impl Boot {
    /// Decide what to serve.
    pub async fn decide(settings: Settings, store: Arc<dyn Store>) -> Result<Boot, BootError> {
        let journal = Journal::new(store.clone());
        let failed = |e: StoreError| BootError::Failed(format!("the config store: {e}"));
        let head = blocking(&store, |s| s.head()).await.map_err(failed)?;
        let label = settings.config_path.display().to_string();
        let file = read(&settings.config_path);
        let Some(head) = head else {
            let source = file?;
            let mut report = Report::new();
            let snapshot = gate(&settings, &label, &source, &mut report)?;
            let serving = serving(
                meta(&settings, &source, None, "first start"),
                source,
                snapshot,
            );
            return Ok(Boot {
                settings,
                journal,
                serving,
                new: true,
                replaces: None,
                refused: None,
                cut: Cut::default(),
            });
        };
        let stored = blocking(&store, move |s| s.get(head))
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                BootError::Failed(format!("the store's head names v{head}, which is missing"))
            })?;
        let versions = blocking(&store, |s| s.list()).await.map_err(failed)?;
        let cut = blocking(&store, Cut::read).await.map_err(failed)?;
        let head_checked =
            fulcrum_config::check_with(&format!("v{head}"), &stored.source, &*settings.env);
        // Why it no longer compiles, for when the file cannot serve either.
        let head_error = head_checked
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| format!("{}: {}", d.key_path, d.message))
            .unwrap_or_default();
        // `None` when it no longer compiles here (a certificate it names
        // is gone, say): then only the file can serve.
        let head_serving = head_checked.snapshot.map(|s| Serving {
            meta: stored.meta.clone(),
            source: stored.source.as_str().into(),
            snapshot: Arc::new(s),
        });
        let keep_head = |settings: Settings, refused: Option<Report>, why: String| {
            let serving = head_serving
                .clone()
                .ok_or_else(|| BootError::Failed(format!("v{head} from the store {why}")))?;
            Ok(Boot {
                settings,
                journal: journal.clone(),
                serving,
                new: false,
                replaces: None,
                refused,
                cut: cut.clone(),
            })
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let e = e.message().to_owned();
                warn!("{e}; serving v{head} from the store");
                let mut report = Report::new();
                report.outcome = Outcome::Invalid;
                report.refuse("read", false, e.clone());
                return keep_head(
                    settings,
                    Some(report),
                    format!("no longer compiles, and {e}"),
                );
            }
        };
        let hash = content_version(&file);
        if hash == stored.meta.hash || seen_since_read(&versions, &hash) {
            if hash != stored.meta.hash {
                info!(file = %label, "the config file holds nothing new since it was last read; serving v{head} from the store (`fulcrum drift` shows the difference)");
            }
            if head_serving.is_some() {
                return keep_head(settings, None, String::new());
            }
            warn!("v{head} from the store no longer compiles here; trying the config file");
        }
        // The file changed since it was last read: a change like any other.
        let mut report = Report::new();
        match gate(&settings, &label, &file, &mut report) {
            Ok(snapshot) => {
                let m = meta(&settings, &file, Some(head), "edited while stopped");
                Ok(Boot {
                    serving: serving(m, file, snapshot),
                    replaces: head_serving.clone(),
                    settings,
                    journal,
                    new: true,
                    refused: None,
                    cut,
                })
            }
            Err(e) => {
                if head_serving.is_none() {
                    // Both are broken: the operator must know the head is too.
                    error!(
                        "v{head} from the store no longer compiles here ({head_error}), and the config file is refused (below): fix the file, or give v{head} what it names"
                    );
                    return Err(e);
                }
                error!(
                    "the edited config file is refused; serving v{head} from the store instead: {}",
                    report.summary()
                );
                keep_head(settings, Some(report), "no longer compiles".into())
            }
        }
    }

    /// The snapshot that will serve, to start demo backends for.
    pub fn snapshot(&self) -> &Snapshot {
        &self.serving.snapshot
    }

    /// Store what is new, build the data plane, bind every listener on
    /// `serving` runtimes and hand the writer to the controller.
    pub async fn start(self, serving: Vec<Handle>) -> Result<Arc<Controller>, BootError> {
        let Boot {
            settings,
            journal,
            serving: mut running,
            new,
            replaces,
            refused,
            cut,
        } = self;
        let failed = |e: StoreError| BootError::Failed(format!("the config store: {e}"));
        if let Some(r) = &refused {
            journal
                .record(
                    EventKind::Refused,
                    "file",
                    None,
                    format!("the config file is refused at start: {}", r.summary()),
                    json!({ "outcome": r.outcome, "refusals": r.refusals, "steps": r.steps }),
                )
                .await
                .map_err(failed)?;
        }
        let listeners = Listeners::new(serving);
        let bound = listeners
            .bind_new(&running.snapshot)
            .map_err(BootError::Failed)?;
        if let Some(canary) = cut.canary {
            let to = if new {
                running.meta.parent
            } else {
                Some(running.meta.number)
            };
            journal
                .record(
                    EventKind::RolledBack,
                    "fulcrum",
                    Some(canary),
                    format!("canary v{canary} dropped: the process stopped before its promotion"),
                    json!({ "from": canary, "to": to, "reason": "the process stopped before its promotion", "canary": true }),
                )
                .await
                .map_err(failed)?;
        }
        if new {
            running.meta = adopt(&journal, &running, replaces.as_ref()).await?;
        }
        let number = running.meta.number;
        let cut_short = match cut.promoted {
            Some((n, from, at)) if !new && n == number => {
                let settings = judged_with(&journal, &settings, from, &running).await;
                probation_left(&settings, at)
            }
            _ => None,
        };
        let summary = match &cut_short {
            None => format!("started serving v{number} ({})", running.meta.message),
            Some(left) => format!(
                "started serving v{number} ({}); its probation ends here with {} left unjudged: the guard's baseline does not survive a restart (`fulcrum rollback` if it misbehaves)",
                running.meta.message,
                // Whole seconds: "4m 58s", not down to the nanosecond.
                humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
            ),
        };
        journal
            .record(
                EventKind::Start,
                "fulcrum",
                Some(number),
                summary,
                json!({
                    "hash": running.meta.hash,
                    "pid": std::process::id(),
                    "probation_cut_ms": cut_short.map(|d| d.as_millis() as u64),
                }),
            )
            .await
            .map_err(failed)?;
        info!(version = %running.snapshot.version, number, "config loaded");
        let (plane, writer) = DataPlane::new((*running.snapshot).clone());
        let mut listeners = listeners;
        listeners.commit(&plane.snapshot(), bound, &plane);
        let controller = Controller::new(settings, journal, writer, listeners, running);
        if !new {
            controller.judge_head_by_standards().await;
        }
        Ok(controller)
    }
}

/// Store the config file's new version as the head and journal it as an
/// applied change, with its diff from the head it replaces.
async fn adopt(
    journal: &Journal,
    running: &Serving,
    replaces: Option<&Serving>,
) -> Result<VersionMeta, BootError> {
    let failed = |e: StoreError| BootError::Failed(format!("the config store: {e}"));
    let store = journal.store().clone();
    let (meta, source) = (running.meta.clone(), running.source.clone());
    let stored = blocking(&store, move |s| s.put(meta, &source))
        .await
        .map_err(failed)?;
    let (number, parent) = (stored.number, stored.parent);
    blocking(&store, move |s| s.set_head(number, parent))
        .await
        .map_err(failed)?;
    if let Some(old) = replaces {
        let diff = fulcrum_safety::diff::semantic(&old.snapshot, &running.snapshot);
        journal
            .record(
                EventKind::Applied,
                "file",
                Some(number),
                format!("v{number} applied by file: {}", stored.message),
                json!({
                    "parent": stored.parent,
                    "hash": stored.hash,
                    "origin": stored.origin,
                    "message": stored.message,
                    "diff": diff,
                }),
            )
            .await
            .map_err(failed)?;
    }
    Ok(stored)
}

/// The `[guard]` settings a change was judged with: those of the version
/// it took over from, else its own.
async fn judged_with(
    journal: &Journal,
    settings: &Settings,
    from: Option<u64>,
    running: &Serving,
) -> fulcrum_config::snapshot::Guard {
    let before = match from {
        Some(n) => blocking(journal.store(), move |s| s.get(n))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    before
        .and_then(|v| fulcrum_config::check_with("before", &v.source, &*settings.env).snapshot)
        .map_or_else(|| running.snapshot.guard.clone(), |s| s.guard)
}

/// What was left of a probation that began `at` (a change took over, no
/// rollback or restart since), if any.
fn probation_left(settings: &fulcrum_config::snapshot::Guard, at: SystemTime) -> Option<Duration> {
    let elapsed = SystemTime::now().duration_since(at).unwrap_or_default();
    (settings.enabled && elapsed < settings.probation).then(|| settings.probation - elapsed)
}

/// The config file's text. One that is not UTF-8 is an invalid config
/// (`not-utf8` at the first bad byte, exit 78), as `fulcrum check` says.
fn read(path: &std::path::Path) -> Result<String, BootError> {
    let bytes = std::fs::read(path).map_err(|e| {
        BootError::Unreadable(format!(
            "fulcrum: cannot read {}: {e} (check the path and its permissions)",
            path.display()
        ))
    })?;
    let label = path.display().to_string();
    fulcrum_config::text(&label, bytes).map_err(|e| {
        let checked = fulcrum_config::Checked {
            snapshot: None,
            diagnostics: vec![e.diagnostic],
        };
        BootError::Invalid(fulcrum_config::render_human(&label, &e.source, &checked))
    })
}

/// The static gates, as every change passes them. Pre-flight probes are
/// not run at start: with nothing serving yet there is nothing to keep,
/// and backends often start after their balancer.
fn gate(
    settings: &Settings,
    label: &str,
    source: &str,
    report: &mut Report,
) -> Result<Snapshot, BootError> {
    let standards = settings.standards.as_ref();
    let snapshot = judge(label, source, &*settings.env, standards, report);
    match snapshot {
        None => Err(BootError::Invalid(
            report.diagnostics.clone().unwrap_or_default(),
        )),
        Some(_) if !report.refusals.is_empty() => {
            let lines: Vec<String> = report
                .refusals
                .iter()
                .map(|r| format!("  {}: {}", r.step, r.message))
                .collect();
            Err(BootError::Refused(format!(
                "{label} is refused:\n{}",
                lines.join("\n")
            )))
        }
        Some(s) => {
            debug_assert_ne!(report.outcome, Outcome::Invalid);
            Ok(s)
        }
    }
}

fn meta(settings: &Settings, source: &str, parent: Option<u64>, why: &str) -> VersionMeta {
    VersionMeta {
        number: 0,
        hash: content_version(source),
        parent,
        author: "file".into(),
        message: format!("{}: {why}", settings.config_path.display()),
        time: SystemTime::now(),
        standards_hash: settings.standards.as_ref().map(|w| w.hash()),
        origin: Origin::File,
    }
}

fn serving(meta: VersionMeta, source: String, snapshot: Snapshot) -> Serving {
    Serving {
        meta,
        source: source.into(),
        snapshot: Arc::new(snapshot),
    }
}
