//! The change pipeline, the only writer of the running config: read →
//! check (syntax, semantics, standards, the config's own tests) →
//! pre-flight (live probes, traffic impact) → store → stage (canary) →
//! promote, or roll back. Changes are serialised by one lock; what serves
//! is published in a [`View`] that readers load without it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use fulcrum_config::{Environment, Snapshot, content_version};
use fulcrum_proxy::{DataPlane, Writer};
use fulcrum_safety::traffic::Recording;
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::gate::{Outcome, Report, judge};
use crate::journal::{Journal, blocking};
use crate::listeners::Listeners;
use crate::standards::Watch;
use crate::store::{EventKind, Origin, StoreError, VersionMeta};

/// A config that serves: its stored metadata, exact bytes and snapshot.
#[derive(Debug, Clone)]
pub struct Serving {
    pub meta: VersionMeta,
    pub source: Arc<str>,
    pub snapshot: Arc<Snapshot>,
}

/// What serves now; replaced whole by every change.
#[derive(Debug, Clone)]
pub struct View {
    pub stable: Serving,
    pub canary: Option<CanaryView>,
    /// How the stable version came to serve, and when.
    pub transition: Transition,
}

/// The last change of what serves, for the guard: a change is judged from
/// when it took over; a rollback is not a change to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub at: SystemTime,
    /// The version that served before, for a change.
    pub from: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    /// The process started serving it.
    Start,
    /// A change took over every request (applied, or a canary promoted).
    Changed,
    /// A rollback (or a dropped canary) made it serve again.
    RolledBack,
}

#[derive(Debug, Clone)]
pub struct CanaryView {
    pub serving: Serving,
    pub fraction: f64,
    pub since: SystemTime,
    pub bake: Duration,
}

/// How a canary is staged: its share of clients, its bake, and the
/// backends pre-flight found down.
struct Staging<'a> {
    fraction: f64,
    bake: Duration,
    down: &'a [(Arc<str>, std::net::SocketAddr)],
}

/// One change, as the admin API or SIGHUP asks for it.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub source: String,
    /// Names the config in diagnostics: the file, or the name `apply` sent.
    pub label: String,
    pub author: String,
    pub message: String,
    pub origin: Origin,
    /// Serve it to this share of clients first.
    pub canary: Option<f64>,
    /// How long a canary serves before it is promoted.
    pub bake: Duration,
    /// Override the refusals that may be overridden; never the journal.
    pub force: bool,
    /// The version the change was made against; another head is a conflict.
    pub parent: Option<u64>,
    /// Refuse when more than this share of recent requests would land on
    /// another pool or backend.
    pub max_moved: Option<f64>,
}

pub const DEFAULT_BAKE: Duration = Duration::from_secs(60);

/// Where the control plane's inputs are.
pub struct Settings {
    /// The config file: read at start and on SIGHUP, compared by `drift`.
    pub config_path: PathBuf,
    pub standards: Option<Watch>,
    /// Reads the files a config names (certificates, tests) relative to
    /// the config file.
    pub env: Arc<dyn Environment + Send + Sync>,
}

pub struct Controller {
    pub(crate) journal: Journal,
    pub(crate) env: Arc<dyn Environment + Send + Sync>,
    pub(crate) config_path: PathBuf,
    pub(crate) plane: Arc<DataPlane>,
    state: tokio::sync::Mutex<State>,
    view: ArcSwap<View>,
    pub(crate) standards: Mutex<Option<Watch>>,
    pub(crate) started: SystemTime,
    /// The guard's word on the canary at its latest look: its version and
    /// why the guard holds its promotion.
    held: Mutex<Option<(u64, String)>>,
}

/// How often a canary whose bake is over looks again whether the guard
/// still holds it.
const HOLD_LOOK: Duration = Duration::from_millis(250);

/// How a canary's promotion was held past its bake: for how long, and
/// why, when it was still held at the longest hold. Journaled with the
/// `promoted` event (`held_ms`, `held`).
#[derive(Debug, Default)]
pub struct Hold {
    pub ms: u64,
    pub still: Option<String>,
}

/// Held by one change at a time.
struct State {
    writer: Writer,
    listeners: Listeners,
    /// Promotes the canary when its bake time is over.
    bake: Option<JoinHandle<()>>,
    /// The store's head as last written: a head that could not be moved
    /// is moved from where it stayed by the next change.
    head: u64,
}

impl Controller {
    pub(crate) fn new(
        settings: Settings,
        journal: Journal,
        writer: Writer,
        listeners: Listeners,
        stable: Serving,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            journal,
            env: settings.env,
            config_path: settings.config_path,
            plane: writer.plane().clone(),
            state: tokio::sync::Mutex::new(State {
                writer,
                listeners,
                bake: None,
                head: stable.meta.number,
            }),
            view: ArcSwap::from_pointee(View {
                stable,
                canary: None,
                transition: Transition {
                    kind: TransitionKind::Start,
                    at: SystemTime::now(),
                    from: None,
                },
            }),
            standards: Mutex::new(settings.standards),
            started: SystemTime::now(),
            held: Mutex::new(None),
        })
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The guard's word on canary `number` at its latest look: why it
    /// holds the promotion (a finding on what the canary touched that
    /// fails, or is marginal for want of traffic), or `None`. A canary
    /// whose bake is over is promoted once nothing holds it, or after one
    /// more bake.
    pub fn hold(&self, number: u64, why: Option<String>) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = why.map(|w| (number, w));
    }

    /// Why the guard holds canary `number`, if it does.
    pub fn held(&self, number: u64) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(n, _)| *n == number)
            .map(|(_, why)| why.clone())
    }

    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Run `f` with the standards watch (none when `serve` has none).
    pub(crate) fn with_standards<T>(&self, f: impl FnOnce(Option<&mut Watch>) -> T) -> T {
        let mut w = self
            .standards
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(w.as_mut())
    }

    /// Take a change through the whole pipeline. Never panics on bad
    /// input: every way it can end is an [`Outcome`] in the report, and
    /// every end but `Unchanged` is in the journal.
    pub async fn apply(self: &Arc<Self>, req: ChangeRequest) -> Report {
        let mut state = self.state.lock().await;
        let view = self.view();
        let mut report = Report::new();
        report.head = Some(view.stable.meta.number);
        if self.conflict(&view, &req, &mut report) {
            self.journal_refusal(&req, &report).await;
            return report;
        }
        let hash = content_version(&req.source);
        if hash == view.stable.meta.hash && !self.files_changed(&view.stable, &req) {
            info!(author = %req.author, "nothing to change: the same bytes already serve as v{}", view.stable.meta.number);
            report.outcome = Outcome::Unchanged;
            report.step(
                "check",
                true,
                format!(
                    "the same bytes already serve as v{}",
                    view.stable.meta.number
                ),
            );
            return report;
        }
        let snapshot = match self.gates(&view, &req, &mut report).await {
            Some(s) => s,
            None => {
                self.journal_refusal(&req, &report).await;
                return report;
            }
        };
        let stable = view.stable.meta.number;
        // Bind what is new before anything is stored: a listener that
        // cannot be bound refuses the change, `force` or not.
        let bound = if req.canary.is_none() {
            match state.listeners.bind_new(&snapshot) {
                Ok(b) => Some(b),
                Err(e) => {
                    report.step("listeners", false, e.clone());
                    report.refuse("listeners", false, e);
                    report.outcome = Outcome::Refused;
                    self.journal_refusal(&req, &report).await;
                    return report;
                }
            }
        } else {
            None
        };
        let standards_hash = self.with_standards(|w| w.map(|w| w.hash()));
        let meta = VersionMeta {
            number: 0,
            hash,
            parent: Some(stable),
            author: req.author.clone(),
            message: req.message.clone(),
            time: SystemTime::now(),
            standards_hash,
            origin: req.origin,
        };
        let Some(serving) = self.store_version(meta, &req, snapshot, &mut report).await else {
            // Journaled like any refusal (reason `store`), if the journal
            // can still be written.
            self.journal_refusal(&req, &report).await;
            return report;
        };
        let number = serving.meta.number;
        report.version = Some(serving.meta.clone());
        // Found down by pre-flight: their health checks bring them in.
        let down = report.probes.as_ref().map(|p| p.down()).unwrap_or_default();
        match (req.canary, bound) {
            (Some(fraction), _) => {
                let staging = Staging {
                    fraction,
                    bake: req.bake,
                    down: &down,
                };
                self.stage(&mut state, serving, staging, &req.author).await;
                report.outcome = Outcome::Staged;
                report.step(
                    "canary",
                    true,
                    format!(
                        "v{number} serves {:.1}% of clients for {}",
                        fraction * 100.0,
                        humantime::format_duration(req.bake)
                    ),
                );
            }
            (None, Some(bound)) => {
                state.writer.swap_probed((*serving.snapshot).clone(), &down);
                state
                    .listeners
                    .commit(&serving.snapshot, bound, &self.plane);
                let why = match req.origin {
                    // As before there was a store: scripts wait for it.
                    Origin::File => "config reloaded",
                    Origin::Api => "applied",
                };
                let hold = Hold::default();
                self.promote_to(&mut state, serving, stable, hold, &req.author, why)
                    .await;
                report.outcome = Outcome::Applied;
                report.head = Some(number);
                report.step("swap", true, format!("v{number} serves every request"));
            }
            (None, None) => unreachable!("bound is Some exactly when there is no canary"),
        }
        report
    }

    /// Whether the files the config names (certificates) read differently
    /// now: the same bytes then make a new version (a renewal).
    fn files_changed(&self, running: &Serving, req: &ChangeRequest) -> bool {
        let checked = fulcrum_config::check_with(&req.label, &req.source, &*self.env);
        checked.snapshot.is_none_or(|s| {
            s.listeners != running.snapshot.listeners || s.admin != running.snapshot.admin
        })
    }

    /// A canary running, or a parent that is not the head: another change
    /// came first.
    fn conflict(&self, view: &View, req: &ChangeRequest, report: &mut Report) -> bool {
        let why = if let Some(c) = &view.canary {
            Some(format!(
                "v{} is being canaried; wait for its promotion or roll it back first",
                c.serving.meta.number
            ))
        } else {
            req.parent
                .filter(|p| *p != view.stable.meta.number)
                .map(|p| {
                    format!(
                        "the change was made against v{p}, but v{} serves now: fetch the running config, redo the change and apply again",
                        view.stable.meta.number
                    )
                })
        };
        match why {
            Some(why) => {
                report.outcome = Outcome::Conflict;
                report.step("parent", false, why.clone());
                report.refuse("parent", false, why);
                true
            }
            None => false,
        }
    }

    /// Every gate: the check, standards and tests, the diff and traffic
    /// impact, and the live probes. `None` when the change may not serve;
    /// with `force`, only the refusals that may not be overridden stop it.
    async fn gates(
        &self,
        view: &View,
        req: &ChangeRequest,
        report: &mut Report,
    ) -> Option<Snapshot> {
        let snapshot = self
            .with_standards(|w| judge(&req.label, &req.source, &*self.env, w.as_deref(), report))?;
        let old = &view.stable.snapshot;
        // What this server served lately, as the access log records it.
        let recent = recorded(&self.plane);
        if req.canary.is_some() {
            canary_limits(old, &snapshot, req, &recent, report);
        }
        if old.admin != snapshot.admin {
            report.warnings.push(
                "[admin] changed: the admin API keeps its address, TLS and token until the next start".into(),
            );
        }
        report.diff = fulcrum_safety::diff::semantic(old, &snapshot);
        report.step(
            "diff",
            true,
            match report.diff.len() {
                0 => "no change in meaning (only labels or comments)".to_owned(),
                n => format!("{n} change(s)"),
            },
        );
        impact(old, &snapshot, req, &recent, report);
        let rules: Vec<&fulcrum_config::standards::Standards> = snapshot.tests.iter().collect();
        let server_rules = self.with_standards(|w| w.map(|w| w.standards().clone()));
        let mut all = rules;
        if let Some(s) = &server_rules {
            all.push(s);
        }
        let probes = crate::preflight::probe(Some(old), &snapshot, &all).await;
        let refusals = probes.refusals(&snapshot, &all);
        report.warnings.extend(probes.warnings(&snapshot, &all));
        report.step(
            "preflight",
            refusals.is_empty(),
            format!(
                "{} backend(s) probed, {} refusal(s)",
                probes.backends.len(),
                refusals.len()
            ),
        );
        for r in refusals {
            report.refuse("preflight", true, r);
        }
        report.probes = Some(probes);

        if report.refusals.is_empty() {
            return Some(snapshot);
        }
        if req.force && report.refusals.iter().all(|r| r.forceable) {
            report.forced = std::mem::take(&mut report.refusals);
            report.warnings.push(format!(
                "forced past {} refusal(s); the journal records them",
                report.forced.len()
            ));
            return Some(snapshot);
        }
        if report.outcome != Outcome::Invalid {
            report.outcome = Outcome::Refused;
        }
        None
    }

    /// Make the version durable and journal the change; `None` (with the
    /// report saying why) when the store refuses, and nothing serves.
    async fn store_version(
        &self,
        meta: VersionMeta,
        req: &ChangeRequest,
        snapshot: Snapshot,
        report: &mut Report,
    ) -> Option<Serving> {
        let source: Arc<str> = req.source.as_str().into();
        let store = self.journal.store().clone();
        let text = source.clone();
        let stored = blocking(&store, move |s| s.put(meta, &text)).await;
        let stored = match stored {
            Ok(m) => m,
            Err(e) => {
                self.store_failed(report, &e);
                return None;
            }
        };
        report.step("store", true, format!("stored as v{}", stored.number));
        let detail = json!({
            "parent": stored.parent,
            "hash": stored.hash,
            "origin": stored.origin,
            "message": stored.message,
            "diff": report.diff,
            "moved": report.impact.as_ref().map(|i| i.moved),
            "forced": report.forced,
            "warnings": report.warnings,
        });
        let forced = if report.forced.is_empty() {
            String::new()
        } else {
            format!(" (forced past {} refusal(s))", report.forced.len())
        };
        if let Err(e) = self
            .journal
            .record(
                EventKind::Applied,
                &req.author,
                Some(stored.number),
                format!(
                    "v{} applied by {}: {}{forced}",
                    stored.number, req.author, req.message
                ),
                detail,
            )
            .await
        {
            // Unjournaled, the version is no change: left stored, a
            // restart would take the file it came from as seen.
            let number = stored.number;
            if let Err(d) = blocking(&store, move |s| s.discard(number)).await {
                error!(error = %d, "cannot take back v{number}, stored but not journaled");
            }
            self.store_failed(report, &e);
            return None;
        }
        Some(Serving {
            meta: stored,
            source,
            snapshot: Arc::new(snapshot),
        })
    }

    fn store_failed(&self, report: &mut Report, e: &StoreError) {
        error!(error = %e, "cannot store the change; still serving the running config");
        report.step("store", false, e.to_string());
        report.refuse("store", false, format!("cannot store the change: {e}"));
        report.outcome = Outcome::Failed;
    }

    async fn journal_refusal(&self, req: &ChangeRequest, report: &Report) {
        let what = match req.origin {
            Origin::File => "reload",
            Origin::Api => "change",
        };
        warn!(author = %req.author, "{what} refused, still serving the running config: {}", report.summary());
        if let Some(d) = &report.diagnostics {
            warn!("{d}");
        }
        let detail = json!({
            "outcome": report.outcome,
            "hash": content_version(&req.source),
            "origin": req.origin,
            "message": req.message,
            "refusals": report.refusals,
            "steps": report.steps,
        });
        self.journal
            .note(
                EventKind::Refused,
                &req.author,
                None,
                format!("change by {} refused: {}", req.author, report.summary()),
                detail,
            )
            .await;
    }

    /// Serve `serving` to `staging.fraction` of clients, and promote it
    /// when the bake time is over.
    async fn stage(
        self: &Arc<Self>,
        state: &mut State,
        serving: Serving,
        staging: Staging<'_>,
        actor: &str,
    ) {
        let Staging {
            fraction,
            bake,
            down,
        } = staging;
        state
            .writer
            .stage_probed((*serving.snapshot).clone(), fraction, down);
        let number = serving.meta.number;
        let before = self.view();
        self.view.store(Arc::new(View {
            stable: before.stable.clone(),
            transition: before.transition,
            canary: Some(CanaryView {
                serving,
                fraction,
                since: SystemTime::now(),
                bake,
            }),
        }));
        self.journal
            .note(
                EventKind::Staged,
                actor,
                Some(number),
                format!(
                    "v{number} serves {:.1}% of clients as a canary for {}",
                    fraction * 100.0,
                    humantime::format_duration(bake)
                ),
                json!({ "fraction": fraction, "bake_ms": bake.as_millis() as u64 }),
            )
            .await;
        let me = Arc::downgrade(self);
        if let Some(old) = state.bake.replace(tokio::spawn(async move {
            tokio::time::sleep(bake).await;
            // The guard unsure of what the canary touched (a low rate that
            // has not yet shown incident 5's skew, say), or counting its
            // failing looks, holds the promotion for at most one more bake.
            let baked = tokio::time::Instant::now();
            let mut told = false;
            loop {
                let Some(me) = me.upgrade() else { return };
                match me.held(number) {
                    Some(why) if baked.elapsed() < bake => {
                        if !told {
                            told = true;
                            info!(version = number, "canary v{number} baked; its promotion waits while the guard holds it: {why}");
                        }
                    }
                    still => {
                        let ms = baked.elapsed().as_millis() as u64;
                        // Held at all: the journal says for how long.
                        let ms = if told { ms } else { 0 };
                        me.promote(number, Hold { ms, still }).await;
                        return;
                    }
                }
                drop(me);
                tokio::time::sleep(HOLD_LOOK).await;
            }
        })) {
            old.abort();
        }
    }

    /// The bake time of canary `number` is over, and any `hold` with it:
    /// it serves every request. Nothing happens when it was rolled back
    /// meanwhile.
    pub async fn promote(&self, number: u64, hold: Hold) -> bool {
        let mut state = self.state.lock().await;
        let view = self.view();
        let Some(canary) = view
            .canary
            .as_ref()
            .filter(|c| c.serving.meta.number == number)
        else {
            return false;
        };
        state.writer.promote();
        state.bake = None;
        let stable = view.stable.meta.number;
        let why = match &hold.still {
            Some(u) => format!(
                "canary baked; the guard still held it after twice its bake, and judges it on probation: {u}"
            ),
            None if hold.ms > 0 => format!(
                "canary baked; the guard held it {:.1} s past its bake",
                hold.ms as f64 / 1000.0
            ),
            None => "canary baked".to_owned(),
        };
        let serving = canary.serving.clone();
        self.promote_to(&mut state, serving, stable, hold, "fulcrum", &why)
            .await;
        true
    }

    /// `serving` is the stable config now: publish it, move the store's
    /// head and journal it.
    async fn promote_to(
        &self,
        state: &mut State,
        serving: Serving,
        from: u64,
        hold: Hold,
        actor: &str,
        why: &str,
    ) {
        let number = serving.meta.number;
        self.view.store(Arc::new(View {
            stable: serving,
            canary: None,
            transition: Transition {
                kind: TransitionKind::Changed,
                at: SystemTime::now(),
                from: Some(from),
            },
        }));
        self.move_head(state, number).await;
        info!(
            from = from,
            to = number,
            "v{number} serves every request ({why})"
        );
        self.journal
            .note(
                EventKind::Promoted,
                actor,
                Some(number),
                format!("v{number} serves every request ({why}); v{from} before"),
                json!({ "from": from, "held_ms": hold.ms, "held": hold.still }),
            )
            .await;
    }

    /// Make `number`, which serves now, the store's head: what a restart
    /// serves. When the store refuses, the drift is journaled and the next
    /// change moves the head from where it stayed.
    async fn move_head(&self, state: &mut State, number: u64) {
        let store = self.journal.store().clone();
        let head = state.head;
        match blocking(&store, move |s| s.set_head(number, Some(head))).await {
            Ok(()) => state.head = number,
            Err(e) => {
                let summary = format!(
                    "v{number} serves, but the store's head stays v{head} (a restart would serve v{head}): {e}"
                );
                error!("{summary}");
                self.journal
                    .note(
                        EventKind::Drift,
                        "fulcrum",
                        Some(number),
                        summary,
                        json!({ "head": head, "error": e.to_string() }),
                    )
                    .await;
            }
        }
    }

    /// Roll back: drop a running canary at once, or else serve version
    /// `to` (default: the serving version's parent) again, with its exact
    /// bytes. A rollback skips the gates on purpose: it must work in the
    /// middle of an incident; only a config that no longer compiles (a
    /// certificate gone) or binds is refused.
    pub async fn rollback(
        &self,
        to: Option<u64>,
        actor: &str,
        reason: &str,
    ) -> Result<Rollback, String> {
        let mut state = self.state.lock().await;
        self.roll_back(&mut state, to, actor, reason).await
    }

    async fn roll_back(
        &self,
        state: &mut State,
        to: Option<u64>,
        actor: &str,
        reason: &str,
    ) -> Result<Rollback, String> {
        let view = self.view();
        if let Some(c) = &view.canary
            && to.is_none_or(|t| t == view.stable.meta.number)
        {
            state.writer.drop_canary();
            if let Some(t) = state.bake.take() {
                t.abort();
            }
            let dropped = c.serving.meta.number;
            self.view.store(Arc::new(View {
                stable: view.stable.clone(),
                canary: None,
                transition: Transition {
                    kind: TransitionKind::RolledBack,
                    at: SystemTime::now(),
                    from: Some(dropped),
                },
            }));
            let summary = format!(
                "canary v{dropped} dropped by {actor}: {reason}; v{} serves every request",
                view.stable.meta.number
            );
            warn!("{summary}");
            self.journal
                .note(
                    EventKind::RolledBack,
                    actor,
                    Some(dropped),
                    summary,
                    json!({ "from": dropped, "to": view.stable.meta.number, "reason": reason, "canary": true }),
                )
                .await;
            return Ok(Rollback {
                from: dropped,
                to: view.stable.clone(),
            });
        }
        if view.canary.is_some() {
            return Err("a canary is running: roll it back first (without --to)".into());
        }
        let from = view.stable.meta.number;
        let target = to
            .or(view.stable.meta.parent)
            .ok_or("the serving version is the first one: there is nothing to roll back to")?;
        if target == from {
            return Err(format!("v{target} already serves"));
        }
        let store = self.journal.store().clone();
        let version = blocking(&store, move |s| s.get(target))
            .await
            .map_err(|e| format!("cannot read v{target} from the store: {e}"))?
            .ok_or_else(|| {
                format!("there is no v{target}; `fulcrum history` lists the versions")
            })?;
        let checked =
            fulcrum_config::check_with(&format!("v{target}"), &version.source, &*self.env);
        let snapshot = checked.snapshot.ok_or_else(|| {
            format!("v{target} no longer compiles here (a file it names changed?); apply a fixed config instead")
        })?;
        let bound = state.listeners.bind_new(&snapshot)?;
        state.writer.swap(snapshot.clone());
        state.listeners.commit(&snapshot, bound, &self.plane);
        let serving = Serving {
            meta: version.meta,
            source: version.source.into(),
            snapshot: Arc::new(snapshot),
        };
        self.view.store(Arc::new(View {
            stable: serving.clone(),
            canary: None,
            transition: Transition {
                kind: TransitionKind::RolledBack,
                at: SystemTime::now(),
                from: Some(from),
            },
        }));
        self.move_head(state, target).await;
        let summary = format!("rolled back from v{from} to v{target} by {actor}: {reason}");
        warn!("{summary}");
        self.journal
            .note(
                EventKind::RolledBack,
                actor,
                Some(from),
                summary,
                json!({ "from": from, "to": target, "reason": reason, "canary": false }),
            )
            .await;
        Ok(Rollback { from, to: serving })
    }

    /// [`Controller::rollback`], only while version `number` still serves
    /// (as the canary, or to every request): the guard judged that one,
    /// and a change that came since is not its to undo. `Ok(None)` when
    /// another version serves by now.
    pub async fn rollback_if(
        &self,
        number: u64,
        to: Option<u64>,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Rollback>, String> {
        let mut state = self.state.lock().await;
        let view = self.view();
        let serving = view
            .canary
            .as_ref()
            .map_or(view.stable.meta.number, |c| c.serving.meta.number);
        if serving != number {
            return Ok(None);
        }
        self.roll_back(&mut state, to, actor, reason)
            .await
            .map(Some)
    }

    /// SIGHUP: the config file, through the same pipeline as any change.
    pub async fn reload_file(self: &Arc<Self>) -> Report {
        let label = self.config_path.display().to_string();
        let source = match std::fs::read(&self.config_path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => {
                    let mut r = Report::new();
                    r.outcome = Outcome::Invalid;
                    r.refuse(
                        "read",
                        false,
                        format!(
                            "{label} is not UTF-8 text (first bad byte at offset {})",
                            e.utf8_error().valid_up_to()
                        ),
                    );
                    let req = self.file_request(label, String::new());
                    self.journal_refusal(&req, &r).await;
                    return r;
                }
            },
            Err(e) => {
                let mut r = Report::new();
                r.outcome = Outcome::Invalid;
                r.refuse("read", false, format!("cannot read {label}: {e}"));
                let req = self.file_request(label, String::new());
                self.journal_refusal(&req, &r).await;
                return r;
            }
        };
        // A file that holds nothing new since it was last read (an API
        // change or a rollback came since) is no edit, as at a start: a
        // routine SIGHUP must not put the file's stale config back. What
        // serves is reloaded instead, so files it names (a renewed
        // certificate) are read again.
        let view = self.view();
        let hash = content_version(&source);
        let store = self.journal.store().clone();
        let stale = hash != view.stable.meta.hash
            && blocking(&store, |s| s.list())
                .await
                .is_ok_and(|versions| crate::store::seen_since_read(&versions, &hash));
        let mut req = self.file_request(label, source);
        if stale {
            let n = view.stable.meta.number;
            info!(file = %req.label, "the config file holds nothing new since it was last read; v{n} serves on (`fulcrum drift` shows the difference), and the files it names are read again");
            // Its bytes, its origin: the file's last read stays the mark
            // of what the file said.
            req.source = view.stable.source.to_string();
            req.label = format!("v{n}");
            req.origin = view.stable.meta.origin;
            req.message = format!("SIGHUP: the files v{n} names, read again");
        }
        self.apply(req).await
    }

    fn file_request(&self, label: String, source: String) -> ChangeRequest {
        ChangeRequest {
            message: format!("SIGHUP: reload of {label}"),
            source,
            label,
            author: "file".into(),
            origin: Origin::File,
            canary: None,
            bake: DEFAULT_BAKE,
            force: false,
            parent: None,
            max_moved: None,
        }
    }

    /// Poll the standards file; journal drift when the running config
    /// breaks new standards.
    pub async fn poll_standards(&self) {
        let running = self.view().stable.clone();
        let drift =
            self.with_standards(|w| w.and_then(|w| w.poll(&running.snapshot, &running.source)));
        if let Some(report) = drift {
            self.journal_drift(&running, "breaks the changed standards", report)
                .await;
        }
    }

    /// At start, journal drift when the head, served from the store, breaks
    /// the standards in force (tightened since it was applied, or forced
    /// past them). It serves on: refusing to start would turn a restart in
    /// the middle of an incident into an outage.
    pub(crate) async fn judge_head_by_standards(&self) {
        let running = self.view().stable.clone();
        let broken = self
            .with_standards(|w| w.and_then(|w| w.judge(&running.snapshot, &running.source).err()));
        if let Some(report) = broken {
            error!(
                version = %running.snapshot.version,
                "DRIFT: v{} from the store {report}still serving it; fix the config and apply it, which the standards will gate",
                running.meta.number
            );
            self.journal_drift(&running, "from the store breaks the standards", report)
                .await;
        }
    }

    async fn journal_drift(&self, running: &Serving, what: &str, report: String) {
        let n = running.meta.number;
        self.journal
            .note(
                EventKind::Drift,
                "standards",
                Some(n),
                format!("v{n} {what}"),
                json!({ "report": report }),
            )
            .await;
    }

    /// Stop every listener and wait up to `grace` for in-flight requests.
    pub async fn drain(self: Arc<Self>, grace: Duration) -> bool {
        let mut state = self.state.lock().await;
        if let Some(t) = state.bake.take() {
            t.abort();
        }
        let listeners = std::mem::replace(&mut state.listeners, Listeners::new(Vec::new()));
        drop(state);
        listeners.drain(grace).await
    }
}

/// A canary shares the listeners and the admin API with the stable
/// config: it may change routes and pools only.
fn canary_limits(
    old: &Snapshot,
    new: &Snapshot,
    req: &ChangeRequest,
    recent: &Recording,
    report: &mut Report,
) {
    let fraction = req.canary.unwrap_or(0.0);
    if !(fraction > 0.0 && fraction < 1.0) {
        report.refuse(
            "canary",
            false,
            format!("a canary fraction must be above 0 and below 1, not {fraction}"),
        );
    }
    if old.listeners != new.listeners || old.admin != new.admin {
        report.refuse(
            "canary",
            false,
            "the change touches listeners or [admin], which a canary cannot split: apply it without --canary",
        );
    }
    canary_share(fraction, recent, report);
}

/// The share of recent requests the canary would take. Clients are
/// split by address, so a few addresses (a CDN or another balancer in
/// front) can send it every request or none: a "10%" canary of a bad
/// change serving everyone is the outage it was meant to prevent.
fn canary_share(fraction: f64, recent: &Recording, report: &mut Report) {
    let n = recent.requests.len();
    if n == 0 {
        return;
    }
    let threshold = fulcrum_proxy::canary_threshold(fraction);
    let canary = recent
        .requests
        .iter()
        .filter(|r| fulcrum_proxy::cohort_hash(r.client_ip) < threshold)
        .count();
    let clients: std::collections::HashSet<_> =
        recent.requests.iter().map(|r| r.client_ip).collect();
    let share = canary as f64 / n as f64;
    let said = format!(
        "{:.1}% of {n} recent requests, from {} client address(es), would reach the canary of {:.1}% of clients",
        share * 100.0,
        clients.len(),
        fraction * 100.0
    );
    let over = share > (fraction * 2.0).max(fraction + 0.1);
    report.step("canary share", !over, said.clone());
    if over {
        report.refuse(
            "canary",
            true,
            format!("{said}: clients are split by address, and few addresses sent these (a proxy or CDN in front?); lower --canary, or --force"),
        );
    } else if canary == 0 {
        report.warnings.push(format!(
            "{said}: its bake would judge nothing; raise --canary"
        ));
    }
}

/// Replay what this server served recently through both configs.
fn impact(
    old: &Snapshot,
    new: &Snapshot,
    req: &ChangeRequest,
    recent: &Recording,
    report: &mut Report,
) {
    if recent.requests.is_empty() {
        report.step("impact", true, "no recent requests recorded to replay");
        return;
    }
    let spec = fulcrum_config::standards::TrafficSpec::default();
    let impact = fulcrum_safety::diff::impact(old, new, recent, &spec);
    // A header or cookie the new config reads that the sample lacks
    // makes the replay blind to it: the moved share is then a floor,
    // and the reviewer is told so, as `diff --traffic` tells it.
    report
        .warnings
        .extend(impact.unrecorded.iter().map(|u| u.message()));
    let over = req.max_moved.filter(|m| impact.moved > *m);
    report.step(
        "impact",
        over.is_none(),
        format!(
            "{:.1}% of {} recent requests would land on another pool or backend",
            impact.moved * 100.0,
            impact.requests
        ),
    );
    if let Some(max) = over {
        report.refuse(
            "impact",
            true,
            format!(
                "{:.1}% of recent requests would move, over the budget of {:.1}%: raise --max-moved if that is intended",
                impact.moved * 100.0,
                max * 100.0
            ),
        );
    }
    report.impact = Some(impact);
}

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub from: u64,
    pub to: Serving,
}

/// The data plane's recent requests as a replayable sample: written out as
/// access-log lines and read back exactly as `diff --traffic` reads a log,
/// so pre-flight and `diff` can never disagree on what a request carried.
pub fn recorded(plane: &DataPlane) -> Recording {
    let mut text = Vec::new();
    for entry in plane.recent_requests() {
        fulcrum_proxy::access_log::format_entry(&entry, &mut text);
    }
    match std::str::from_utf8(&text).map(fulcrum_safety::traffic::parse_access_log) {
        Ok(Ok(recording)) => recording,
        _ => Recording::default(),
    }
}
