//! `serve --standards`: the team's standards file held by the server. A
//! config that breaks it is refused at start and on reload; the file is
//! polled, and when it changes the running config is re-checked against the
//! new standards, and a break (drift) is logged loudly while the running
//! config keeps serving: refusing traffic would turn a policy change into
//! an outage.

use std::path::{Path, PathBuf};

use fulcrum_config::Snapshot;
use fulcrum_config::standards::{Standards, parse_standards};
use fulcrum_safety::Traffic;
use fulcrum_safety::rules::{self, ConfigSource};
use tracing::{error, info};

/// How often the standards file is polled for changes.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Watch {
    path: PathBuf,
    /// xxh3 of the content last read, to notice a change.
    hash: u64,
    standards: Standards,
}

/// Why [`Watch::load`] failed; each holds what to print.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be read (a usage error: exit 2).
    Unreadable(String),
    /// The file is read but is not a valid standards file (exit 78).
    Invalid(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unreadable(m) | LoadError::Invalid(m) => f.write_str(m),
        }
    }
}

impl Watch {
    /// Read and parse the standards file.
    pub fn load(path: &Path) -> Result<Watch, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::Unreadable(format!(
                "fulcrum: cannot read {}: {e} (check the path and its permissions)",
                path.display()
            ))
        })?;
        let label = path.display().to_string();
        let parsed = parse_standards(&label, &text);
        match parsed.standards {
            Some(standards) => Ok(Watch {
                path: path.to_owned(),
                hash: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
                standards,
            }),
            None => Err(LoadError::Invalid(
                parsed
                    .diagnostics
                    .iter()
                    .map(|d| fulcrum_config::render_diagnostic(&text, d))
                    .collect::<String>()
                    + &format!("{label}: invalid standards file"),
            )),
        }
    }

    /// The rules, for pre-flight.
    pub fn standards(&self) -> &Standards {
        &self.standards
    }

    /// xxh3 of the file's content, recorded with every version checked
    /// against it.
    pub fn hash(&self) -> String {
        format!("{:016x}", self.hash)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Err` with the report when `snapshot`, compiled from `text`, breaks
    /// a rule. The text too: rules such as `require_version` read it.
    pub fn judge(&self, snapshot: &Snapshot, text: &str) -> Result<(), String> {
        let traffic = Traffic::Synthetic(self.standards.traffic.clone());
        let config = ConfigSource {
            file: &snapshot.version,
            source: text,
        };
        let e = rules::evaluate(snapshot, Some(config), &self.standards, &traffic);
        if e.ok() {
            Ok(())
        } else {
            let names: Vec<&str> = e.failures().map(|r| r.name.as_str()).collect();
            Err(format!(
                "breaks {} rule(s) of {}: {}\n{}",
                e.failed,
                e.standards,
                names.join("; "),
                rules::render_human(&e)
            ))
        }
    }

    /// Re-read the file; if it changed, adopt it (when valid) and re-check
    /// the running config against it. `Some` with the report when the
    /// running config breaks the new standards (drift).
    pub fn poll(&mut self, running: &Snapshot, config_text: &str) -> Option<String> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return None;
        };
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if hash == self.hash {
            return None;
        }
        self.hash = hash;
        match Watch::load(&self.path) {
            Err(report) => {
                error!(standards = %self.path.display(), "standards file changed but is invalid; still enforcing the previous standards:\n{report}");
                None
            }
            Ok(new) => {
                self.standards = new.standards;
                match self.judge(running, config_text) {
                    Ok(()) => {
                        info!(standards = %self.path.display(), version = %running.version, "standards changed; the running config meets them");
                        None
                    }
                    Err(report) => {
                        error!(
                            standards = %self.path.display(),
                            version = %running.version,
                            "DRIFT: the running config {report}still serving it; fix the config and apply it, which the new standards will gate"
                        );
                        Some(report)
                    }
                }
            }
        }
    }
}
