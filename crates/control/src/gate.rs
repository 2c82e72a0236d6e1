//! The gates a config passes before it may serve: the full check, the
//! server's standards and the config's own tests. Shared by the start of
//! the process and by every change, so both refuse exactly the same
//! configs; and the report a change answers with.

use fulcrum_config::{Environment, Severity, Snapshot};
use fulcrum_safety::diff::{Change, Impact};
use fulcrum_safety::rules::{self, ConfigSource};
use fulcrum_safety::{Evaluation, Traffic};
use serde::Serialize;

use crate::preflight::ProbeReport;
use crate::standards::Watch;
use crate::store::VersionMeta;

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Serves every request.
    Applied,
    /// Serves a fraction of clients until promoted or rolled back.
    Staged,
    /// The same bytes already serve: nothing to do.
    Unchanged,
    /// The config is invalid: it cannot serve, `force` or not.
    Invalid,
    /// A gate refused it; nothing changed.
    Refused,
    /// Another change came first (stale parent, or a canary running).
    Conflict,
    /// The store could not record it; nothing changed.
    Failed,
}

/// One step of the pipeline, as `apply` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Why a change may not serve.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// The step that refused it.
    pub step: &'static str,
    pub message: String,
    /// `force` may override it (standards, tests, pre-flight, impact);
    /// an invalid config or an unbindable listener it may not.
    pub forceable: bool,
}

/// The answer to a change: every step, and why it ended as it did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    /// The stored version, once it was stored.
    pub version: Option<VersionMeta>,
    /// The version serving every request afterwards.
    pub head: Option<u64>,
    pub steps: Vec<Step>,
    pub refusals: Vec<Refusal>,
    /// Refusals `force` overrode; recorded in the journal.
    pub forced: Vec<Refusal>,
    pub warnings: Vec<String>,
    /// The check's diagnostics, rendered, when the config is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    pub diff: Vec<Change>,
    pub impact: Option<Impact>,
    pub probes: Option<ProbeReport>,
}

impl Report {
    pub fn new() -> Report {
        Report {
            outcome: Outcome::Refused,
            version: None,
            head: None,
            steps: Vec::new(),
            refusals: Vec::new(),
            forced: Vec::new(),
            warnings: Vec::new(),
            diagnostics: None,
            diff: Vec::new(),
            impact: None,
            probes: None,
        }
    }

    pub fn step(&mut self, step: &'static str, ok: bool, detail: impl Into<String>) {
        self.steps.push(Step {
            step,
            ok,
            detail: detail.into(),
        });
    }

    pub fn refuse(&mut self, step: &'static str, forceable: bool, message: impl Into<String>) {
        self.refusals.push(Refusal {
            step,
            message: message.into(),
            forceable,
        });
    }

    /// One line: the outcome and the first reason.
    pub fn summary(&self) -> String {
        match self.refusals.first() {
            Some(r) if self.outcome != Outcome::Applied && self.outcome != Outcome::Staged => {
                let more = self.refusals.len() - 1;
                let more = if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                };
                format!("{}: {}{more}", r.step, r.message)
            }
            _ => format!("{:?}", self.outcome).to_lowercase(),
        }
    }
}

impl Default for Report {
    fn default() -> Self {
        Report::new()
    }
}

/// Check `source` (labelled `label` in diagnostics) and judge it against
/// the standards and its own tests, recording each step in `report`.
/// `None` when it is invalid; standards and test failures are refusals
/// with the snapshot still returned, for `force`.
pub fn judge(
    label: &str,
    source: &str,
    env: &dyn Environment,
    standards: Option<&Watch>,
    report: &mut Report,
) -> Option<Snapshot> {
    let checked = fulcrum_config::check_with(label, source, env);
    let warnings: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| format!("{} [{}]", keyed(d), d.code))
        .collect();
    let Some(snapshot) = checked.snapshot.clone() else {
        report.step("check", false, format!("{} error(s)", checked.errors()));
        let first = checked
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map_or_else(String::new, |d| {
                format!("{label}:{}:{}: {}", d.line, d.col, keyed(d))
            });
        report.refuse("check", false, format!("the config is invalid: {first}"));
        report.diagnostics = Some(fulcrum_config::render_human(label, source, &checked));
        report.outcome = Outcome::Invalid;
        return None;
    };
    report.step(
        "check",
        true,
        match warnings.len() {
            0 => "valid".to_owned(),
            n => format!("valid, {n} warning(s)"),
        },
    );
    report.warnings.extend(warnings);
    let config = ConfigSource {
        file: label,
        source,
    };
    if let Some(w) = standards {
        let e = rules::evaluate(
            &snapshot,
            Some(config),
            w.standards(),
            &Traffic::Synthetic(w.standards().traffic.clone()),
        );
        gate_rules("standards", &e, report);
    }
    for tests in &snapshot.tests {
        let e = rules::evaluate(
            &snapshot,
            Some(config),
            tests,
            &Traffic::Synthetic(tests.traffic.clone()),
        );
        gate_rules("tests", &e, report);
    }
    Some(snapshot)
}

fn gate_rules(step: &'static str, e: &Evaluation, report: &mut Report) {
    if e.ok() {
        report.step(
            step,
            true,
            format!("{}: {} rule(s) pass", e.standards, e.passed),
        );
        return;
    }
    report.step(
        step,
        false,
        format!(
            "{}: {} of {} rule(s) fail",
            e.standards,
            e.failed,
            e.passed + e.failed
        ),
    );
    for rule in e.failures() {
        for f in &rule.failures {
            report.refuse(
                step,
                true,
                format!("rule \"{}\" ({}): {}", rule.name, e.standards, f.message),
            );
        }
    }
}

/// A diagnostic's message after its key path, when it has one (a syntax
/// error has none).
fn keyed(d: &fulcrum_config::Diagnostic) -> String {
    if d.key_path.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.key_path, d.message)
    }
}
