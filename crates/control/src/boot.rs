//! What a starting process serves. With an empty store, the config file,
//! if it passes the gates. Otherwise the store's head, the last version
//! promoted — unless the file changed since it was last read, in which
//! case the file is a change like any other: gated, stored, and if refused,
//! the head serves and the refusal is journaled. So a restart neither
//! forgets changes applied through the API nor ignores an edited file.

use std::sync::Arc;
use std::time::SystemTime;

use fulcrum_config::{Snapshot, content_version};
use fulcrum_proxy::DataPlane;
use serde_json::json;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::change::{Controller, Serving, Settings};
use crate::gate::{Outcome, Report, judge};
use crate::journal::{Journal, blocking};
use crate::listeners::Listeners;
use crate::store::{EventKind, Origin, Store, StoreError, VersionMeta};

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
    /// Journaled once the store is known to work.
    refused: Option<Report>,
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
                refused: None,
            });
        };
        let stored = blocking(&store, move |s| s.get(head))
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                BootError::Failed(format!("the store's head names v{head}, which is missing"))
            })?;
        let last_file = blocking(&store, |s| s.list())
            .await
            .map_err(failed)?
            .into_iter()
            .rev()
            .find(|m| m.origin == Origin::File);
        let head_serving = |settings: &Settings| {
            let checked =
                fulcrum_config::check_with(&format!("v{head}"), &stored.source, &*settings.env);
            checked.snapshot.map(|s| Serving {
                meta: stored.meta.clone(),
                source: stored.source.as_str().into(),
                snapshot: Arc::new(s),
            })
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                let e = e.message();
                warn!("{e}; serving v{head} from the store");
                let serving = head_serving(&settings).ok_or_else(|| {
                    BootError::Failed(format!(
                        "v{head} from the store no longer compiles, and {e}"
                    ))
                })?;
                return Ok(Boot {
                    settings,
                    journal,
                    serving,
                    new: false,
                    refused: None,
                });
            }
        };
        let hash = content_version(&file);
        let edited = hash != stored.meta.hash && last_file.is_none_or(|m| m.hash != hash);
        if !edited {
            if hash != stored.meta.hash {
                info!(file = %label, "the config file is unchanged since it was last read; serving v{head} from the store, applied since (`fulcrum drift` shows the difference)");
            }
            if let Some(serving) = head_serving(&settings) {
                return Ok(Boot {
                    settings,
                    journal,
                    serving,
                    new: false,
                    refused: None,
                });
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
                    settings,
                    journal,
                    new: true,
                    refused: None,
                })
            }
            Err(e) => match head_serving(&settings) {
                Some(serving) => {
                    error!(
                        "the edited config file is refused; serving v{head} from the store instead: {}",
                        report.summary()
                    );
                    Ok(Boot {
                        settings,
                        journal,
                        serving,
                        new: false,
                        refused: Some(report),
                    })
                }
                None => Err(e),
            },
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
            refused,
        } = self;
        let failed = |e: StoreError| BootError::Failed(format!("the config store: {e}"));
        if let Some(r) = &refused {
            journal
                .record(
                    EventKind::Refused,
                    "file",
                    None,
                    format!(
                        "the edited config file is refused at start: {}",
                        r.summary()
                    ),
                    json!({ "refusals": r.refusals, "steps": r.steps }),
                )
                .await
                .map_err(failed)?;
        }
        let listeners = Listeners::new(serving);
        let bound = listeners
            .bind_new(&running.snapshot)
            .map_err(BootError::Failed)?;
        if new {
            let store = journal.store().clone();
            let (meta, source) = (running.meta.clone(), running.source.clone());
            let stored = blocking(&store, move |s| s.put(meta, &source))
                .await
                .map_err(failed)?;
            let (number, parent) = (stored.number, stored.parent);
            blocking(&store, move |s| s.set_head(number, parent))
                .await
                .map_err(failed)?;
            running.meta = stored;
        }
        let number = running.meta.number;
        journal
            .record(
                EventKind::Start,
                "fulcrum",
                Some(number),
                format!("started serving v{number} ({})", running.meta.message),
                json!({ "hash": running.meta.hash, "pid": std::process::id() }),
            )
            .await
            .map_err(failed)?;
        info!(version = %running.snapshot.version, number, "config loaded");
        let (plane, writer) = DataPlane::new((*running.snapshot).clone());
        let mut listeners = listeners;
        listeners.commit(&plane.snapshot(), bound, &plane);
        Ok(Controller::new(
            settings, journal, writer, listeners, running,
        ))
    }
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
