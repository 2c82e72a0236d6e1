//! The safety verbs' command-line side: `check --standards`, `test`,
//! `diff`, `explain` and `schema`. Reads files and prints; every decision
//! is made by `fulcrum-safety` on the config crate's snapshot, so a
//! control plane's pre-flight gets the same answers.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use fulcrum_config::standards::{CheckedStandards, Standards, TrafficSpec, parse_standards};
use fulcrum_config::{Checked, Diagnostic, Severity, Snapshot};
use fulcrum_safety::rules::{ConfigSource, Evaluation};
use fulcrum_safety::{Traffic, diff as d, explain as x, rules, sarif};
use serde_json::json;

use crate::{EXIT_INVALID, EXIT_USAGE, Format};

/// Exit early from a verb with a code, having printed why.
type Step<T> = Result<T, ExitCode>;

/// A file a verb cannot use: the one-line reason on stderr (exit 2), and
/// for `--format json|sarif` an error document on stdout as well, so a
/// tool reading it never gets nothing. `line` is 0 when the problem is the
/// whole file.
fn unusable(format: Format, file: &Path, line: usize, message: String, hint: &str) -> ExitCode {
    eprintln!("fulcrum: {message} ({hint})");
    let d = Diagnostic {
        severity: Severity::Error,
        code: "unreadable",
        message,
        file: file.display().to_string(),
        line: line.max(1),
        col: 1,
        key_path: String::new(),
        hint: Some(hint.to_owned()),
        span: None,
    };
    match format {
        Format::Human => {}
        Format::Json => {
            let checked = Checked {
                snapshot: None,
                diagnostics: vec![d],
            };
            println!(
                "{}",
                fulcrum_config::render_json(&file.display().to_string(), &checked)
            );
        }
        Format::Sarif => println!("{}", sarif::render_failure(&d)),
    }
    ExitCode::from(EXIT_USAGE)
}

fn cannot_read(format: Format, path: &Path, e: &std::io::Error) -> ExitCode {
    let message = format!("cannot read {}: {e}", path.display());
    unusable(
        format,
        path,
        0,
        message,
        "check the path and its permissions",
    )
}

fn read_bytes(path: &Path, format: Format) -> Step<Vec<u8>> {
    std::fs::read(path).map_err(|e| cannot_read(format, path, &e))
}

/// Read and compile a config; on errors print them (in `format`) and exit 78.
fn config(path: &Path, format: Format) -> Step<(String, String, Checked, Snapshot)> {
    let (label, source, checked) =
        crate::check_file_io(path).map_err(|e| cannot_read(format, path, &e))?;
    match checked.snapshot.clone() {
        Some(s) => Ok((label, source, checked, s)),
        None => {
            match format {
                Format::Human => print!(
                    "{}",
                    fulcrum_config::render_human(&label, &source, &checked)
                ),
                Format::Json => println!("{}", fulcrum_config::render_json(&label, &checked)),
                Format::Sarif => println!("{}", sarif::render(&checked.diagnostics, &[])),
            }
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// Read and parse a rules file; on errors print them and exit 78.
pub fn standards(path: &Path, format: Format) -> Step<Standards> {
    let label = path.display().to_string();
    let (source, parsed) = match fulcrum_config::text(&label, read_bytes(path, format)?) {
        Ok(source) => {
            let parsed = parse_standards(&label, &source);
            (source, parsed)
        }
        Err(e) => (
            e.source,
            CheckedStandards {
                standards: None,
                diagnostics: vec![e.diagnostic],
            },
        ),
    };
    match parsed.standards {
        Some(s) => Ok(s),
        None => {
            match format {
                Format::Human => {
                    for diag in &parsed.diagnostics {
                        print!("{}", fulcrum_config::render_diagnostic(&source, diag));
                    }
                    println!("{label}: invalid rules file, nothing was checked");
                }
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "file": label, "valid": false, "diagnostics": parsed.diagnostics })
                    )
                    .unwrap_or_default()
                ),
                Format::Sarif => println!("{}", sarif::render(&parsed.diagnostics, &[])),
            }
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// The traffic sample: the recorded log when given, else the spec's
/// synthetic sample. A log that cannot be replayed is a usage error.
pub fn traffic(log: Option<&Path>, spec: &TrafficSpec, format: Format) -> Step<Traffic> {
    let Some(path) = log else {
        return Ok(Traffic::Synthetic(spec.clone()));
    };
    let bytes = read_bytes(path, format)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let message = format!("{}: not UTF-8 text (byte offset {at})", path.display());
        unusable(
            format,
            path,
            0,
            message,
            "give the access log `fulcrum serve` writes",
        )
    })?;
    match fulcrum_safety::traffic::parse_access_log(&text) {
        Ok(log) => Ok(Traffic::Recorded {
            log,
            spec: spec.clone(),
            source: path.display().to_string(),
        }),
        Err(e) => {
            let message = match e.line {
                0 => format!("{}: {}", path.display(), e.message),
                n => format!("{}: line {n}: {}", path.display(), e.message),
            };
            Err(unusable(format, path, e.line, message, e.hint()))
        }
    }
}

fn done(r: Step<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|code| code)
}

pub fn check(
    path: &Path,
    standards_path: Option<&Path>,
    log: Option<&Path>,
    format: Format,
) -> ExitCode {
    done((|| {
        let (label, source, checked, snapshot) = config(path, format)?;
        let evaluation = match standards_path {
            Some(p) => {
                let s = standards(p, format)?;
                let t = traffic(log, &s.traffic, format)?;
                Some(rules::evaluate(
                    &snapshot,
                    Some(ConfigSource {
                        file: &label,
                        source: &source,
                    }),
                    &s,
                    &t,
                ))
            }
            None => None,
        };
        // The rule files the config ships with (`tests = [...]`), as every
        // change to a running `serve` must pass them.
        let own: Vec<Evaluation> = snapshot
            .tests
            .iter()
            .map(|t| {
                let config = ConfigSource {
                    file: &label,
                    source: &source,
                };
                let traffic = Traffic::Synthetic(t.traffic.clone());
                rules::evaluate(&snapshot, Some(config), t, &traffic)
            })
            .collect();
        match format {
            Format::Human => {
                print!(
                    "{}",
                    fulcrum_config::render_human(&label, &source, &checked)
                );
                if let Some(e) = &evaluation {
                    println!("\nstandards {}:", e.standards);
                    print!("{}", rules::render_human(e));
                }
                for e in &own {
                    println!("\ntests {}:", e.standards);
                    print!("{}", rules::render_human(e));
                }
            }
            Format::Json => {
                let config: serde_json::Value =
                    serde_json::from_str(&fulcrum_config::render_json(&label, &checked))
                        .unwrap_or_default();
                let mut doc = config;
                doc["standards"] = serde_json::to_value(&evaluation).unwrap_or_default();
                doc["tests"] = serde_json::to_value(&own).unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            Format::Sarif => {
                // The config's own tests gate it as the standards do.
                let all: Vec<&Evaluation> = evaluation.iter().chain(&own).collect();
                println!("{}", sarif::render(&checked.diagnostics, &all));
            }
        }
        let passed =
            evaluation.as_ref().is_none_or(Evaluation::ok) && own.iter().all(Evaluation::ok);
        Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })())
}

pub fn test(
    path: &Path,
    tests: &[std::path::PathBuf],
    require_coverage: bool,
    log: Option<&Path>,
    format: Format,
) -> ExitCode {
    done((|| {
        let (label, source, checked, snapshot) = config(path, format)?;
        let mut all: Vec<Evaluation> = Vec::new();
        for t in tests {
            let s = standards(t, format)?;
            let tr = traffic(log, &s.traffic, format)?;
            all.push(rules::evaluate(
                &snapshot,
                Some(ConfigSource {
                    file: &label,
                    source: &source,
                }),
                &s,
                &tr,
            ));
        }
        let covered: Vec<&str> = all
            .iter()
            .flat_map(|e| &e.rules)
            .flat_map(|r| &r.routes)
            .map(String::as_str)
            .collect();
        let uncovered: Vec<String> = snapshot
            .routes
            .iter()
            .map(|r| r.name.to_string())
            .filter(|r| !covered.contains(&r.as_str()))
            .collect();
        let passed: usize = all.iter().map(|e| e.passed).sum();
        let mut failed: usize = all.iter().map(|e| e.failed).sum();
        let coverage_failed = require_coverage && !uncovered.is_empty();
        failed += coverage_failed as usize;
        match format {
            Format::Human => {
                for e in &all {
                    let text = rules::render_human(e);
                    // Per-file summaries are replaced by the one below.
                    let body = text
                        .rsplit_once(&format!("{} passed", e.passed))
                        .map_or(text.as_str(), |(b, _)| b);
                    print!("{body}");
                }
                if !uncovered.is_empty() {
                    let verdict = if require_coverage { "FAIL" } else { "note:" };
                    println!(
                        "{verdict} routes no test exercises: {}",
                        uncovered.join(", ")
                    );
                }
                println!("{passed} passed, {failed} failed");
            }
            Format::Json => {
                let doc = json!({
                    "config": label,
                    "passed": passed,
                    "failed": failed,
                    "files": all,
                    "uncovered_routes": uncovered,
                    "coverage_required": require_coverage,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            Format::Sarif => {
                let all: Vec<&Evaluation> = all.iter().collect();
                println!("{}", sarif::render(&checked.diagnostics, &all));
            }
        }
        Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })())
}

pub fn diff(
    old: &Path,
    new: &Path,
    log: Option<&Path>,
    max_moved: Option<f64>,
    format: Format,
) -> ExitCode {
    done((|| {
        if format == Format::Sarif {
            eprintln!("fulcrum: diff prints human or json, not sarif");
            return Err(ExitCode::from(EXIT_USAGE));
        }
        if max_moved.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            eprintln!("fulcrum: --max-moved is a share of requests, from 0 to 1 (e.g. 0.05)");
            return Err(ExitCode::from(EXIT_USAGE));
        }
        let (_, _, _, a) = config(old, format)?;
        let (_, _, _, b) = config(new, format)?;
        let recorded = match log {
            Some(_) => match traffic(log, &TrafficSpec::default(), format)? {
                Traffic::Recorded { log, spec, .. } => Some((log, spec)),
                Traffic::Synthetic(_) => None,
            },
            None => None,
        };
        let report = d::diff(&a, &b, recorded.as_ref().map(|(l, s)| (l, s)));
        let exceeded = matches!((&report.impact, max_moved), (Some(i), Some(m)) if i.moved > m);
        match format {
            Format::Json => {
                let mut doc = serde_json::to_value(&report).unwrap_or_default();
                doc["max_moved"] = json!(max_moved);
                doc["exceeded"] = json!(exceeded);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            _ => print!("{}", d::render_human(&report, max_moved)),
        }
        Ok(if exceeded {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })())
}

pub fn explain(
    path: &Path,
    request: &str,
    headers: &[String],
    client_ip: IpAddr,
    format: Format,
) -> ExitCode {
    done((|| {
        if format == Format::Sarif {
            eprintln!("fulcrum: explain prints human or json, not sarif");
            return Err(ExitCode::from(EXIT_USAGE));
        }
        let (_, _, _, snapshot) = config(path, format)?;
        let e = x::explain_text(&snapshot, request, headers, client_ip).map_err(|msg| {
            eprintln!("fulcrum: {msg}");
            ExitCode::from(EXIT_USAGE)
        })?;
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default()),
            _ => print!("{}", x::render_human(&e)),
        }
        Ok(ExitCode::SUCCESS)
    })())
}

pub fn schema(kind: crate::SchemaKind) -> ExitCode {
    let schema = match kind {
        crate::SchemaKind::Config => fulcrum_config::schema::config_schema(),
        crate::SchemaKind::Rules => fulcrum_config::schema::rules_schema(),
    };
    // Often piped into a file or `head`: a closed pipe is not a crash.
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    ExitCode::SUCCESS
}
