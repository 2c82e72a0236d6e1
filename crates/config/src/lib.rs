//! Fulcrum's config: TOML parsed into raw structs with spans, validated with
//! every problem collected, and compiled into an immutable [`Snapshot`].
//! Pure: no I/O, no clock, no sockets, so `check`, `test`, `diff` and `serve`
//! all read exactly the same thing.
//!
//! Stages: [`raw`] (shape, per item) → `validate` (rules, references, lints)
//! → `compile` (snapshot). [`render`] prints the diagnostics.
//!
//! The decisions a snapshot drives are here too, also pure: the routing
//! table ([`snapshot::Routes`]) and the balancer with hash-key extraction
//! ([`balance`]). The data plane and the safety tools both call them, so
//! what `check` judges is what `serve` runs.
#![forbid(unsafe_code)]

pub mod balance;
mod compile;
pub mod diag;
pub mod keys;
pub mod locate;
mod raw;
pub mod render;
mod routes;
pub mod schema;
mod shadow;
pub mod snapshot;
pub mod standards;
mod tls;
mod validate;

pub use compile::content_version;
pub use diag::{Diagnostic, Severity};
pub use render::{render_diagnostic, render_human, render_json};
pub use shadow::shadowed_routes;
pub use snapshot::Snapshot;
pub use tls::EXPIRY_WARNING_DAYS;

/// What checking a config needs from outside the file: the files it names
/// (TLS certificates and keys) and the time (certificate expiry). The
/// caller supplies them, so this crate never does I/O or reads a clock.
pub trait Environment {
    /// The contents of `path` exactly as written in the config. The caller
    /// resolves relative paths, from the config file's directory.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String>;
    /// Now, in seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// For checking a config as text alone: any file it names is unreadable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFiles;

impl Environment for NoFiles {
    fn read_file(&self, _: &str) -> Result<Vec<u8>, String> {
        Err("this check has no access to files".into())
    }
    fn now_unix(&self) -> i64 {
        0
    }
}

/// The outcome of checking one config file.
#[derive(Debug)]
pub struct Checked {
    /// Present exactly when there is no error-severity diagnostic.
    pub snapshot: Option<Snapshot>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// Parse, validate and compile `source`, read from `file` (used only to
/// label diagnostics). For configs that name no files; see [`check_with`].
pub fn check(file: &str, source: &str) -> Checked {
    check_with(file, source, &NoFiles)
}

/// [`check`], reading the files the config names (certificates) and the
/// time through `env`.
pub fn check_with(file: &str, source: &str, env: &dyn Environment) -> Checked {
    let mut diags = diag::Diags::new(file, source);
    let valid =
        raw::parse(source, &mut diags).and_then(|doc| validate::validate(&doc, &mut diags, env));
    // `validate` yields a config only when it reported no error, but the
    // invariant "snapshot iff no error" is the contract, so hold it here too.
    let snapshot = valid
        .filter(|_| !diags.has_errors())
        .map(|v| compile::compile(v, source));
    Checked {
        snapshot,
        diagnostics: diags.into_sorted(),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_edge;
