//! The guard: watches live traffic a few times a second and judges the
//! last change by it. During a canary the canary's requests are compared
//! with the stable cohort's over the same time; after a change took over,
//! its requests are compared with the window before it (probation). Per
//! route: error rate, the route's outcome signal (its failure statuses),
//! latency; per pool: traffic lost to other pools, backend shares against
//! what weights, health and the algorithm predict, skew onto one backend,
//! and the healthy fraction. A verdict that fails `consecutive` times in a
//! row during a canary or probation rolls the change back by itself;
//! later, an alert names the change and recommends the rollback.

mod expect;
pub mod judge;
mod window;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use fulcrum_config::Snapshot;
use fulcrum_config::snapshot::Guard as Settings;
use serde::Serialize;
use serde_json::json;
use tracing::{error, info, warn};

use crate::change::{Controller, Serving, TransitionKind};
use crate::store::EventKind;
use window::{Counts, Windows};

/// How often the guard samples and judges.
pub const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NoData,
    Pass,
    Marginal,
    Fail,
}

/// What the guard sees now: `GET /guard`, and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// `steady`, `canary`, `probation`, or `disabled` by `[guard] enabled`.
    pub state: &'static str,
    pub change: Option<ChangeInfo>,
    pub verdict: Verdict,
    pub pools: Vec<PoolView>,
    pub routes: Vec<RouteView>,
    /// The alerts raised lately, newest first.
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeInfo {
    pub number: u64,
    pub from: Option<u64>,
    pub author: String,
    pub message: String,
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub name: String,
    pub algorithm: &'static str,
    pub healthy_fraction: f64,
    pub requests: u64,
    pub verdict: Verdict,
    pub reason: String,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub addr: String,
    pub observed: Option<f64>,
    pub expected: Option<f64>,
    pub requests: u64,
    pub healthy: bool,
    pub ejected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub name: String,
    pub pool: String,
    pub requests: u64,
    pub error_rate: Option<f64>,
    pub outcome_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    pub baseline: Option<RouteSide>,
    pub verdict: Verdict,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteSide {
    pub requests: u64,
    pub error_rate: Option<f64>,
    pub outcome_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub time: String,
    pub detector: &'static str,
    pub route: Option<String>,
    pub pool: Option<String>,
    /// The change named as the likely cause.
    pub version: Option<u64>,
    pub summary: String,
}

/// One detector's finding.
#[derive(Debug, Clone)]
struct Finding {
    detector: &'static str,
    route: Option<String>,
    pool: Option<String>,
    verdict: Verdict,
    summary: String,
    /// Marginal on what the change touched for want of traffic, not
    /// explained away (a part the change did not touch, unevenness from
    /// before it): more requests would decide. It holds a canary's
    /// promotion.
    unsure: bool,
}

pub struct Guard {
    controller: Weak<Controller>,
    view: ArcSwap<View>,
}

impl Guard {
    /// Start watching; the task ends with the controller.
    pub fn spawn(controller: &Arc<Controller>) -> Arc<Guard> {
        let guard = Arc::new(Guard {
            controller: Arc::downgrade(controller),
            view: ArcSwap::from_pointee(View {
                state: "steady",
                change: None,
                verdict: Verdict::NoData,
                pools: Vec::new(),
                routes: Vec::new(),
                alerts: Vec::new(),
            }),
        });
        tokio::spawn(run(guard.clone()));
        guard
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }
}

/// The change being judged: what took over, from what, since when, and
/// what it is compared with.
struct Watched {
    number: u64,
    from: Option<u64>,
    /// When it took over (or the canary began), on the guard's clock.
    since: Instant,
    /// The version before it and its counts over the window before the
    /// change, for probation.
    baseline: Option<(Serving, Counts, Duration)>,
    /// The `[guard]` settings of the version before it: a change cannot
    /// switch off or loosen the guard that judges it.
    settings: Settings,
    fails_in_row: u32,
    acted: bool,
    /// Detectors already alerted on for this change.
    alerted: Vec<(String, &'static str)>,
    /// For a canary: the stable change's own watch (its probation), which
    /// goes on if the canary is dropped.
    underneath: Option<Box<Watched>>,
}

/// What the guard remembers of the last tick, to tell what changed since.
#[derive(Default)]
struct Seen {
    stable: Option<u64>,
    canary: Option<u64>,
    previous: Option<Serving>,
    /// The canary's content.
    canary_hash: Option<Arc<str>>,
}

impl Seen {
    fn of(view: &crate::change::View) -> Seen {
        Seen {
            stable: Some(view.stable.meta.number),
            canary: view.canary.as_ref().map(|cv| cv.serving.meta.number),
            previous: Some(view.stable.clone()),
            canary_hash: view
                .canary
                .as_ref()
                .map(|cv| cv.serving.snapshot.hash.clone()),
        }
    }

    /// The content `view` stopped serving by a rollback or a dropped
    /// canary since this look: unwanted, so no baseline includes it.
    fn rolled_back(&self, view: &crate::change::View) -> Option<Arc<str>> {
        let stable = view.stable.meta.number;
        if self.stable.is_some_and(|s| s != stable)
            && view.transition.kind == TransitionKind::RolledBack
        {
            return self.previous.as_ref().map(|p| p.snapshot.hash.clone());
        }
        if view.canary.is_none() && self.stable == Some(stable) {
            return self.canary_hash.clone();
        }
        None
    }
}

async fn run(guard: Arc<Guard>) {
    let mut windows = Windows::default();
    let mut memo = expect::Memo::default();
    let mut flips = Flips::default();
    let mut left_out: Vec<(Arc<str>, Instant)> = Vec::new();
    let mut holding = Holding::default();
    let mut watched: Option<Watched> = None;
    let mut seen = Seen::default();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = guard.controller.upgrade() else {
            return;
        };
        let view = c.view();
        // A change that took over since the last tick is judged by the
        // settings before it, even before `follow` watches it: its own
        // `enabled = false` cannot spare it.
        let settings = match (&watched, &seen.previous) {
            (None, Some(previous)) if seen.stable != Some(view.stable.meta.number) => {
                previous.snapshot.guard.clone()
            }
            _ => in_force(&view, watched.as_ref()),
        };
        if !settings.enabled {
            guard.view.store(Arc::new(View {
                state: "disabled",
                change: None,
                verdict: Verdict::NoData,
                pools: Vec::new(),
                routes: Vec::new(),
                alerts: alerts.clone(),
            }));
            watched = None;
            // What serves now is what the next change is judged against.
            seen = Seen::of(&view);
            continue;
        }
        let now = Instant::now();
        windows.sample(
            &c.plane().stats(),
            now,
            settings.window * 3 + Duration::from_secs(2),
        );
        // Versions rolled back lately: left out of the baseline of a
        // change that follows within a few windows.
        if let Some(hash) = seen.rolled_back(&view) {
            left_out.push((hash, now));
        }
        left_out.retain(|(_, at)| now.duration_since(*at) < settings.window * 3);
        let left: Vec<Arc<str>> = left_out.iter().map(|(h, _)| h.clone()).collect();
        watched = follow(&view, watched, (&seen, &left), &windows, now);
        seen = Seen::of(&view);
        let settings = in_force(&view, watched.as_ref());

        let state = match (&view.canary, &watched) {
            (Some(_), Some(_)) => "canary",
            (None, Some(w)) if now.duration_since(w.since) < settings.probation => "probation",
            _ => "steady",
        };
        let looks = Looks {
            memo: &mut memo,
            flips: &mut flips,
        };
        let judged = judge_now(&c, &windows, watched.as_ref(), &settings, now, looks);
        let verdict = judged
            .findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::NoData);
        // A canary's promotion waits while the guard is unsure of it, or
        // sure it fails and counting its looks in a row before acting.
        if let (Some(cv), Some(w)) = (&view.canary, &watched)
            && cv.serving.meta.number == w.number
        {
            let unsure: Vec<&str> = judged
                .findings
                .iter()
                .filter(|f| f.unsure || f.verdict == Verdict::Fail)
                .map(|f| f.summary.as_str())
                .collect();
            let requests: u64 = judged.routes.iter().map(|r| r.requests).sum();
            c.hold(w.number, holding.look(w.number, &unsure, requests));
        }
        if let Some(w) = watched.as_mut() {
            act(
                &c,
                w,
                state,
                &judged.findings,
                verdict,
                &settings,
                &mut alerts,
            )
            .await;
            if state == "steady" && now.duration_since(w.since) > settings.attribution {
                watched = None;
            }
        }
        alerts.truncate(50);
        let change = watched.as_ref().map(|w| change_info(&view, w));
        guard.view.store(Arc::new(View {
            state,
            change,
            verdict,
            pools: judged.pools,
            routes: judged.routes,
            alerts: alerts.clone(),
        }));
    }
}

/// Why a canary's promotion is held, and on how many of its requests the
/// hold began: requests ageing out of the window are no verdict, so a
/// finding that passes on fewer requests than that does not end it.
#[derive(Default)]
struct Holding {
    number: u64,
    why: Option<String>,
    requests: u64,
}

impl Holding {
    /// This look's word on canary `number`: the unsure or failing
    /// findings, over `requests` of its requests.
    fn look(&mut self, number: u64, unsure: &[&str], requests: u64) -> Option<String> {
        if self.number != number {
            *self = Holding {
                number,
                ..Holding::default()
            };
        }
        if !unsure.is_empty() {
            self.why = Some(unsure.join("; "));
            self.requests = self.requests.max(requests);
        } else if requests >= self.requests {
            self.why = None;
            self.requests = 0;
        }
        self.why.clone().map(|why| {
            if unsure.is_empty() {
                format!(
                    "{why} (now passing on {requests} requests, fewer than the {} it was held on)",
                    self.requests
                )
            } else {
                why
            }
        })
    }
}

/// The guard's settings now: those the judged change's predecessor had,
/// else the serving config's own.
fn in_force(view: &crate::change::View, watched: Option<&Watched>) -> Settings {
    watched.map_or_else(
        || view.stable.snapshot.guard.clone(),
        |w| w.settings.clone(),
    )
}

/// The change to judge after this tick's view: a canary that began, a
/// change that took over (a promoted canary goes on as the same change,
/// on probation from its promotion), none after a rollback or a dropped
/// canary, else the one judged so far.
fn follow(
    view: &crate::change::View,
    watched: Option<Watched>,
    (seen, left_out): (&Seen, &[Arc<str>]),
    windows: &Windows,
    now: Instant,
) -> Option<Watched> {
    let stable = view.stable.meta.number;
    let canary = view.canary.as_ref().map(|cv| cv.serving.meta.number);
    if let Some(n) = canary {
        if canary == seen.canary {
            return watched;
        }
        let settings = view.stable.snapshot.guard.clone();
        let mut w = Watched::new(n, Some(stable), now, None, settings);
        // The stable change's watch (or, for a canary replacing another,
        // the one kept under it) waits under the canary.
        w.underneath = watched.and_then(|w| {
            if w.number == stable {
                Some(Box::new(w))
            } else {
                w.underneath
            }
        });
        return Some(w);
    }
    if seen.stable.is_none() || seen.stable == Some(stable) {
        // Unchanged, or a canary dropped: nothing of it serves to judge,
        // and the stable change's own watch goes on.
        return if seen.canary.is_some() {
            watched.and_then(|w| w.underneath.map(|u| *u))
        } else {
            watched
        };
    }
    // A rollback is what the guard asks for, not a change.
    if view.transition.kind != TransitionKind::Changed {
        return None;
    }
    let previous = seen.previous.as_ref()?;
    let settings = previous.snapshot.guard.clone();
    let from = now.checked_sub(settings.window);
    match watched.filter(|w| w.number == stable) {
        Some(mut w) => {
            // The promoted canary replaces the change it ran on.
            w.underneath = None;
            // The canary's predecessor served beside it: its own counts
            // are what the promoted change is compared with.
            w.baseline = from.and_then(|from| {
                let (counts, _) = windows.between(&previous.snapshot.hash, from, now)?;
                Some((previous.clone(), counts, settings.window))
            });
            w.since = now;
            Some(w)
        }
        None => {
            // Every version of the window before: a reload every second
            // leaves each too little traffic to compare with alone. But
            // not one rolled back lately: a bad version's errors would
            // hide the next bad change's.
            let base = from.map(|from| {
                (
                    previous.clone(),
                    windows.all_between(from, now, left_out),
                    settings.window,
                )
            });
            Some(Watched::new(
                stable,
                view.transition.from,
                now,
                base,
                settings,
            ))
        }
    }
}

impl Watched {
    fn new(
        number: u64,
        from: Option<u64>,
        since: Instant,
        baseline: Option<(Serving, Counts, Duration)>,
        settings: Settings,
    ) -> Watched {
        Watched {
            number,
            from,
            since,
            baseline,
            settings,
            fails_in_row: 0,
            acted: false,
            alerted: Vec::new(),
            underneath: None,
        }
    }
}

fn change_info(view: &crate::change::View, w: &Watched) -> ChangeInfo {
    let meta = match &view.canary {
        Some(c) if c.serving.meta.number == w.number => &c.serving.meta,
        _ => &view.stable.meta,
    };
    let since = SystemTime::now() - Instant::now().duration_since(w.since);
    ChangeInfo {
        number: w.number,
        from: w.from,
        author: meta.author.clone(),
        message: meta.message.clone(),
        since: humantime::format_rfc3339_millis(since).to_string(),
    }
}

/// Roll back (during a canary or probation, after `consecutive` failing
/// verdicts) or alert (later), naming the change.
async fn act(
    c: &Arc<Controller>,
    w: &mut Watched,
    state: &'static str,
    findings: &[Finding],
    verdict: Verdict,
    settings: &Settings,
    alerts: &mut Vec<Alert>,
) {
    w.fails_in_row = if verdict == Verdict::Fail {
        w.fails_in_row + 1
    } else {
        0
    };
    if verdict != Verdict::Fail || w.fails_in_row < settings.consecutive || w.acted {
        return;
    }
    let failing: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .collect();
    let fresh: Vec<&&Finding> = failing
        .iter()
        .filter(|f| {
            !w.alerted
                .iter()
                .any(|(k, d)| *d == f.detector && Some(k) == f.route.as_ref().or(f.pool.as_ref()))
        })
        .collect();
    let reasons: Vec<String> = failing.iter().map(|f| f.summary.clone()).collect();
    let view = c.view();
    // The judged version, and what it changed from: the stable config
    // beside a canary, the baseline's version after a change.
    let (judged, before) = match &view.canary {
        Some(cv) if cv.serving.meta.number == w.number => (&cv.serving, Some(&view.stable)),
        _ if view.stable.meta.number == w.number => {
            (&view.stable, w.baseline.as_ref().map(|(b, _, _)| b))
        }
        _ => return,
    };
    let meta = judged.meta.clone();
    let during = state == "canary" || state == "probation";
    let rolling = during && settings.rollback;
    let diff = before
        .map(|b| fulcrum_safety::diff::semantic(&b.snapshot, &judged.snapshot))
        .unwrap_or_default();
    let recommendation = match (rolling, w.from) {
        (true, _) => "rolling it back".to_owned(),
        (false, Some(p)) => format!("recommended: `fulcrum rollback --to {p}`"),
        (false, None) => "recommended: roll it back".to_owned(),
    };
    if !fresh.is_empty() || rolling {
        let summary = format!(
            "v{} ({} by {}: {:?}) is the likely cause of: {}; {recommendation}",
            w.number,
            state,
            meta.author,
            meta.message,
            reasons.join("; ")
        );
        warn!("guard: {summary}");
        let detail = json!({
            "state": state,
            "change": { "number": w.number, "from": w.from, "author": meta.author, "message": meta.message, "hash": meta.hash },
            "findings": failing.iter().map(|f| json!({ "detector": f.detector, "route": f.route, "pool": f.pool, "summary": f.summary })).collect::<Vec<_>>(),
            "diff": diff,
            "action": if rolling { "rollback" } else { "alert" },
        });
        c.journal()
            .note(
                EventKind::Alert,
                "guard",
                Some(w.number),
                summary.clone(),
                detail.clone(),
            )
            .await;
        for f in &failing {
            alerts.insert(
                0,
                Alert {
                    time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    detector: f.detector,
                    route: f.route.clone(),
                    pool: f.pool.clone(),
                    version: Some(w.number),
                    summary: f.summary.clone(),
                },
            );
            w.alerted.push((
                f.route.clone().or(f.pool.clone()).unwrap_or_default(),
                f.detector,
            ));
        }
        webhook(settings, detail);
    }
    if rolling {
        // Once: a rollback that failed (the version to go back to no
        // longer compiles, say) would fail again; it is journaled instead.
        w.acted = true;
        let to = if state == "canary" { None } else { w.from };
        match c
            .rollback_if(w.number, to, "guard", &reasons.join("; "))
            .await
        {
            Ok(Some(_)) => {}
            // Replaced while the rollback waited its turn (behind an
            // apply's pre-flight, say): the new version is judged next.
            Ok(None) => info!(
                "guard: v{} no longer serves; nothing to roll back",
                w.number
            ),
            Err(e) => {
                let summary = format!(
                    "guard: cannot roll back v{}: {e}; it still serves: roll it back by hand",
                    w.number
                );
                error!("{summary}");
                let detail = json!({ "state": state, "change": { "number": w.number, "from": w.from }, "action": "rollback_failed", "error": e });
                c.journal()
                    .note(
                        EventKind::Alert,
                        "guard",
                        Some(w.number),
                        summary,
                        detail.clone(),
                    )
                    .await;
                webhook(settings, detail);
            }
        }
    }
}

/// POST the alert to `[guard] webhook`, off the request path and off the
/// guard's own loop, retried three times.
fn webhook(settings: &Settings, body: serde_json::Value) {
    let Some(url) = settings.webhook.clone() else {
        return;
    };
    tokio::spawn(async move {
        use http_body_util::Full;
        let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let body = bytes::Bytes::from(body.to_string());
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let Ok(req) = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
            else {
                return;
            };
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => return,
                Ok(Ok(r)) => {
                    warn!(url, status = %r.status(), attempt, "guard webhook refused the alert")
                }
                Ok(Err(e)) => warn!(url, error = %e, attempt, "guard webhook unreachable"),
                Err(_) => warn!(url, attempt, "guard webhook timed out"),
            }
        }
        error!(url, "guard webhook: giving up on an alert after 4 attempts");
    });
}

/// Every detector's findings, and what the dashboard shows.
struct Judged {
    findings: Vec<Finding>,
    pools: Vec<PoolView>,
    routes: Vec<RouteView>,
}

/// When each backend's availability (healthy and not ejected) last
/// changed, as the guard's looks saw it.
#[derive(Default)]
struct Flips {
    last: HashMap<(String, String), (bool, Option<Instant>)>,
}

impl Flips {
    fn note(&mut self, health: &[fulcrum_proxy::BackendStatus], now: Instant) {
        let mut seen = HashMap::with_capacity(health.len());
        for h in health {
            let up = h.healthy && !h.ejected;
            let key = (h.pool.to_string(), h.addr.to_string());
            let at = match self.last.get(&key) {
                Some(&(was, at)) if was == up => at,
                // A first look is no change.
                Some(_) => Some(now),
                None => None,
            };
            seen.insert(key, (up, at));
        }
        self.last = seen;
    }

    /// Backends whose availability changed at or after `from`.
    fn since(&self, from: Instant) -> HashSet<(String, String)> {
        self.last
            .iter()
            .filter(|(_, (_, at))| at.is_some_and(|t| t >= from))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// What the guard judges by on each look besides the counts: the
/// expected-share memo and the backends' availability changes.
struct Looks<'a> {
    memo: &'a mut expect::Memo,
    flips: &'a mut Flips,
}

fn judge_now(
    c: &Controller,
    windows: &Windows,
    watched: Option<&Watched>,
    s: &Settings,
    now: Instant,
    looks: Looks<'_>,
) -> Judged {
    let view = c.view();
    // What is judged: the canary, else the stable config; since the change
    // took over, at most one window back.
    // And what it changed from: the snapshot before, whether or not its
    // counts are there yet (a canary's first look).
    let (new, before, base): (&Serving, Option<&Snapshot>, Option<(Snapshot, Counts)>) =
        match (&view.canary, watched) {
            (Some(cv), Some(w)) => {
                let from = w.since.max(now.checked_sub(s.window).unwrap_or(w.since));
                let base = windows
                    .between(&view.stable.snapshot.hash, from, now)
                    .map(|(counts, _)| ((*view.stable.snapshot).clone(), counts));
                (&cv.serving, Some(&*view.stable.snapshot), base)
            }
            (_, Some(w)) => (
                &view.stable,
                w.baseline.as_ref().map(|(b, _, _)| &*b.snapshot),
                w.baseline
                    .as_ref()
                    .map(|(b, counts, _)| ((*b.snapshot).clone(), counts.clone())),
            ),
            _ => (&view.stable, None, None),
        };
    let from = watched
        .map_or(now.checked_sub(s.window), |w| {
            Some(w.since.max(now.checked_sub(s.window).unwrap_or(w.since)))
        })
        .unwrap_or(now);
    let current = windows.since(&new.snapshot.hash, from);
    let Some((counts, span)) = current else {
        return Judged {
            findings: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
        };
    };
    let health = c.plane().backends();
    looks.flips.note(&health, now);
    let flipped = looks.flips.since(from);
    let touched = before.map(|old| detect::touched(old, &new.snapshot));
    let mut findings = Vec::new();
    let routes = detect::routes(
        &new.snapshot,
        &counts,
        span,
        (base.as_ref(), touched.as_ref()),
        s,
        &mut findings,
    );
    findings.push(detect::unrouted(&counts, base.as_ref(), s));
    let pools = detect::pools(
        &new.snapshot,
        &counts,
        span,
        (base.as_ref(), touched.as_ref()),
        detect::Live {
            health: &health,
            expected: looks.memo,
            flipped: &flipped,
        },
        s,
        &mut findings,
    );
    Judged {
        findings,
        pools,
        routes,
    }
}

mod detect;

#[cfg(test)]
mod tests {
    use super::*;

    /// A hold ends on a verdict over at least as many requests as it
    /// began on: requests ageing out of the window (a burst at a low rate)
    /// turned a likely skew into a pass, and the canary was promoted.
    #[test]
    fn a_hold_ends_on_as_much_traffic_as_it_began_on() {
        let mut h = Holding::default();
        assert_eq!(h.look(2, &[], 10), None);
        assert_eq!(h.look(2, &["skew"], 66).as_deref(), Some("skew"));
        let aged = h.look(2, &[], 55).unwrap();
        assert!(aged.contains("fewer than the 66"), "{aged}");
        assert_eq!(h.look(2, &[], 70), None);
        assert_eq!(h.look(2, &[], 10), None, "a hold that ended stays ended");
        // Another canary starts afresh.
        assert_eq!(h.look(3, &["skew"], 40).as_deref(), Some("skew"));
        assert_eq!(h.look(4, &[], 0), None);
    }

    fn status(addr: &str, healthy: bool) -> fulcrum_proxy::BackendStatus {
        fulcrum_proxy::BackendStatus {
            pool: "auth".into(),
            addr: addr.parse().unwrap(),
            healthy,
            ejected: false,
            in_flight: 0,
            requests: 0,
            failures: 0,
        }
    }

    /// Version `n` serving `comment`'s config.
    fn serving(n: u64, comment: &str) -> Serving {
        let source = format!(
            "# {comment}\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"web\"\npool = \"web\"\n\n\
             [pool.web]\nbackends = [{{ addr = \"127.0.0.1:2\" }}]\n"
        );
        let snapshot = fulcrum_config::check("t", &source).snapshot.unwrap();
        Serving {
            meta: crate::store::VersionMeta {
                number: n,
                hash: snapshot.hash.to_string(),
                parent: None,
                author: "t".into(),
                message: String::new(),
                time: SystemTime::now(),
                standards_hash: None,
                origin: crate::store::Origin::Api,
            },
            source: source.into(),
            snapshot: Arc::new(snapshot),
        }
    }

    fn view(stable: Serving, canary: Option<Serving>, kind: TransitionKind) -> crate::change::View {
        crate::change::View {
            stable,
            canary: canary.map(|serving| crate::change::CanaryView {
                serving,
                fraction: 0.5,
                since: SystemTime::now(),
                bake: Duration::from_secs(60),
            }),
            transition: crate::change::Transition {
                kind,
                at: SystemTime::now(),
                from: None,
            },
        }
    }

    /// What a rollback or a dropped canary stopped serving is named, so
    /// no baseline of a change soon after counts its traffic; a change,
    /// or a canary promoted, names nothing.
    #[test]
    fn the_version_rolled_back_is_left_out_of_baselines() {
        let (v1, v2, v3) = (serving(1, "one"), serving(2, "two"), serving(3, "three"));
        let hash = |s: &Serving| s.snapshot.hash.clone();
        let on_v2 = Seen::of(&view(v2.clone(), None, TransitionKind::Changed));
        let back = view(v1.clone(), None, TransitionKind::RolledBack);
        assert_eq!(on_v2.rolled_back(&back), Some(hash(&v2)));
        let on = view(v3.clone(), None, TransitionKind::Changed);
        assert_eq!(on_v2.rolled_back(&on), None);
        let canary = Seen::of(&view(v1.clone(), Some(v3.clone()), TransitionKind::Changed));
        let dropped = view(v1.clone(), None, TransitionKind::RolledBack);
        assert_eq!(canary.rolled_back(&dropped), Some(hash(&v3)));
        let promoted = view(v3.clone(), None, TransitionKind::Changed);
        assert_eq!(canary.rolled_back(&promoted), None);
    }

    /// A backend's first look is no change; a flip is, from its look on,
    /// until the window has moved past it.
    #[test]
    fn flips_are_the_availability_changes_within_the_window() {
        let mut flips = Flips::default();
        let t0 = Instant::now();
        flips.note(&[status("127.0.0.1:1", true)], t0);
        assert!(flips.since(t0).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        flips.note(&[status("127.0.0.1:1", false)], t1);
        let key = ("auth".to_owned(), "127.0.0.1:1".to_owned());
        assert!(flips.since(t0).contains(&key));
        let t2 = t1 + Duration::from_secs(1);
        flips.note(&[status("127.0.0.1:1", false)], t2);
        assert!(flips.since(t1).contains(&key), "it stays flipped at t1");
        assert!(flips.since(t2).is_empty(), "a window after the flip");
    }
}
