//! SARIF 2.1.0 output for `check` and `test`, so CI systems annotate the
//! offending lines: config diagnostics at their file:line:col, and broken
//! rules at the rule in the rules file and, where there is one, at the
//! config line responsible.

use fulcrum_config::Diagnostic;
use fulcrum_config::standards::Location;
use serde_json::{Value, json};

use crate::rules::Evaluation;

fn location(file: &str, line: usize, col: usize, text: Option<&str>) -> Value {
    let mut loc = json!({
        "physicalLocation": {
            "artifactLocation": { "uri": file },
            "region": { "startLine": line.max(1), "startColumn": col.max(1) }
        }
    });
    if let Some(t) = text {
        loc["message"] = json!({ "text": t });
    }
    loc
}

fn at(l: &Location, text: Option<&str>) -> Value {
    location(&l.file, l.line, l.col, text)
}

/// A SARIF `reportingDescriptor` for `id`, described by the docs' own
/// reference tables (docs/config.md, docs/standards.md).
fn descriptor(id: &str) -> Value {
    let (short, full, help) = match id.split_once('/') {
        Some(("config", code)) => match fulcrum_config::reference::code(code) {
            Some(d) => (
                format!("config diagnostic `{code}` ({})", d.severity),
                d.meaning.to_owned(),
                format!("{} (docs/config.md#diagnostics)", d.fix),
            ),
            None => (
                format!("config diagnostic `{code}`"),
                format!("The config breaks `{code}`."),
                "See docs/config.md#diagnostics.".to_owned(),
            ),
        },
        Some((_, key)) => (
            format!("standard assertion `{key}`"),
            fulcrum_config::reference::rule_key(key)
                .unwrap_or("A rule of the standards or tests file.")
                .to_owned(),
            format!(
                "A rule asserting `{key}` does not hold: change the config line this result points at first, or, if the standard itself changed, the rule (docs/standards.md)."
            ),
        ),
        None => (id.to_owned(), id.to_owned(), String::new()),
    };
    json!({
        "id": id,
        "shortDescription": { "text": short },
        "fullDescription": { "text": full },
        "help": { "text": help }
    })
}

/// One SARIF log with one run holding every diagnostic and rule failure.
pub fn render(diagnostics: &[Diagnostic], evaluations: &[&Evaluation]) -> String {
    log(diagnostics, evaluations, true)
}

/// The SARIF log of a run that could not check anything (an unreadable
/// file): its one diagnostic, and an invocation that did not succeed.
pub fn render_failure(diagnostic: &Diagnostic) -> String {
    log(std::slice::from_ref(diagnostic), &[], false)
}

fn log(diagnostics: &[Diagnostic], evaluations: &[&Evaluation], ran: bool) -> String {
    let mut results = Vec::new();
    let mut rule_ids: Vec<String> = Vec::new();
    for d in diagnostics {
        let id = format!("config/{}", d.code);
        if !rule_ids.contains(&id) {
            rule_ids.push(id.clone());
        }
        let mut text = d.message.clone();
        if let Some(h) = &d.hint {
            text.push_str(&format!(" (hint: {h})"));
        }
        results.push(json!({
            "ruleId": id,
            "level": if d.is_error() { "error" } else { "warning" },
            "message": { "text": if d.key_path.is_empty() { text } else { format!("{}: {text}", d.key_path) } },
            "locations": [location(&d.file, d.line, d.col, None)]
        }));
    }
    for r in evaluations.iter().flat_map(|e| e.failures()) {
        for f in &r.failures {
            let id = format!("standard/{}", f.assertion);
            if !rule_ids.contains(&id) {
                rule_ids.push(id.clone());
            }
            // The config line first: that is what a reviewer should change.
            let mut locations = Vec::new();
            if let Some(c) = &f.config {
                locations.push(at(c, Some("the config responsible")));
            }
            locations.push(at(&f.location, Some(&format!("rule `{}`", r.name))));
            results.push(json!({
                "ruleId": id,
                "level": "error",
                "message": { "text": format!("rule `{}` is broken: {}", r.name, f.message) },
                "locations": locations,
                "properties": { "rule": r.name, "evidence": f.evidence }
            }));
        }
    }
    let rules: Vec<Value> = rule_ids.iter().map(|id| descriptor(id)).collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "fulcrum",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules
            }},
            "invocations": [{ "executionSuccessful": ran }],
            "results": results
        }]
    });
    serde_json::to_string_pretty(&log).unwrap_or_default()
}
