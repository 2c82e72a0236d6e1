//! Rendering diagnostics for people (rustc-like, with the source line
//! underlined) and for tools (a stable JSON document). Lives here so that
//! `fulcrum check` and the reload logs of `serve` print the same thing.

use serde::Serialize;

use crate::Checked;
use crate::diag::{Diagnostic, Severity};

/// Every diagnostic as a rustc-like block, then one summary line:
/// `fulcrum.toml: 2 errors, 1 warning`, or for a valid file
/// `fulcrum.toml: ok — 2 listeners, 3 routes, 2 pools, 5 backends`
/// (with `, 1 warning` appended when there are warnings).
pub fn render_human(file_label: &str, source: &str, checked: &Checked) -> String {
    let mut out = String::new();
    for d in &checked.diagnostics {
        out.push_str(&render_diagnostic(source, d));
        out.push('\n');
    }
    out.push_str(&summary(file_label, checked));
    out.push('\n');
    out
}

/// One diagnostic as a rustc-like block, ending in a newline:
///
/// ```text
/// error[unknown-pool]: route[1].pool: no pool named `auht`
///   --> fulcrum.toml:14:8
///    |
/// 14 | pool = "auht"
///    |        ^^^^^^
///    = hint: did you mean `auth`?
/// ```
pub fn render_diagnostic(source: &str, d: &Diagnostic) -> String {
    let mut out = format!("{}[{}]: ", d.severity.as_str(), d.code);
    if !d.key_path.is_empty() {
        out.push_str(&d.key_path);
        out.push_str(": ");
    }
    out.push_str(&d.message);
    out.push('\n');
    let number = d.line.to_string();
    let pad = " ".repeat(number.len());
    out.push_str(&format!("{pad}--> {}:{}:{}\n", d.file, d.line, d.col));
    if let Some(span) = &d.span {
        // `Diagnostic` is public: tolerate a hand-made one with line/col 0.
        let col = d.col.max(1);
        let text = source
            .lines()
            .nth(d.line.saturating_sub(1))
            .unwrap_or_default();
        // Underline the span, but only as far as the end of its first line.
        let rest = text.chars().count().saturating_sub(col - 1);
        let span_chars = source
            .get(span.clone())
            .map_or(1, |s| s.lines().next().unwrap_or_default().chars().count());
        let width = span_chars.min(rest).max(1);
        out.push_str(&format!("{pad} |\n"));
        out.push_str(&format!("{number} | {text}\n"));
        out.push_str(&format!(
            "{pad} | {}{}\n",
            " ".repeat(col - 1),
            "^".repeat(width)
        ));
    }
    if let Some(hint) = &d.hint {
        out.push_str(&format!("{pad} = hint: {hint}\n"));
    }
    out
}

fn summary(file_label: &str, checked: &Checked) -> String {
    let (errors, warnings) = counts(&checked.diagnostics);
    match &checked.snapshot {
        Some(s) => {
            let backends: usize = s.pools.iter().map(|p| p.backends.len()).sum();
            let mut line = format!(
                "{file_label}: ok — {}, {}, {}, {}",
                plural(s.listeners.len(), "listener"),
                plural(s.routes.len(), "route"),
                plural(s.pools.len(), "pool"),
                plural(backends, "backend"),
            );
            if warnings > 0 {
                line.push_str(&format!(", {}", plural(warnings, "warning")));
            }
            line
        }
        None => format!(
            "{file_label}: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        ),
    }
}

fn counts(diags: &[Diagnostic]) -> (usize, usize) {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    (errors, diags.len() - errors)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The stable `--format json` document.
#[derive(Serialize)]
struct JsonReport<'a> {
    file: &'a str,
    valid: bool,
    errors: usize,
    warnings: usize,
    version: Option<&'a str>,
    diagnostics: &'a [Diagnostic],
}

/// `{"file", "valid", "errors", "warnings", "version", "diagnostics": [{severity,
/// code, message, file, line, col, key_path, hint}]}`, pretty-printed, keys
/// in this order. `version` is null when the config is invalid.
pub fn render_json(file_label: &str, checked: &Checked) -> String {
    let (errors, warnings) = counts(&checked.diagnostics);
    let report = JsonReport {
        file: file_label,
        valid: checked.snapshot.is_some(),
        errors,
        warnings,
        version: checked.snapshot.as_ref().map(|s| &*s.version),
        diagnostics: &checked.diagnostics,
    };
    // Serializing plain strings, numbers and options cannot fail.
    serde_json::to_string_pretty(&report).unwrap_or_default()
}
