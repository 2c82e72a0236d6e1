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

/// One SARIF log with one run holding every diagnostic and rule failure.
pub fn render(diagnostics: &[Diagnostic], evaluation: Option<&Evaluation>) -> String {
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
            "message": { "text": format!("{}: {text}", d.key_path) },
            "locations": [location(&d.file, d.line, d.col, None)]
        }));
    }
    for r in evaluation.iter().flat_map(|e| e.failures()) {
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
    let rules: Vec<Value> = rule_ids.iter().map(|id| json!({ "id": id })).collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "fulcrum",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules
            }},
            "results": results
        }]
    });
    serde_json::to_string_pretty(&log).unwrap_or_default()
}
