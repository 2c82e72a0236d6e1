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
pub mod reference;
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
    /// Where `path`, as written in the config, is for a file the config
    /// names but the check does not read (the access log): relative to the
    /// config file's directory, as for the files it reads. As written when
    /// there is no directory to go by.
    fn resolve(&self, path: &str) -> std::path::PathBuf {
        path.into()
    }
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

/// [`check_with`] on a file's bytes, as read: a file that is not UTF-8 is
/// an invalid config (one `not-utf8` error at the first bad byte), not an
/// unreadable one. Also returns the text checked (decoded lossily when it
/// is not UTF-8), to render the diagnostics against.
pub fn check_bytes_with(file: &str, bytes: Vec<u8>, env: &dyn Environment) -> (String, Checked) {
    match text(file, bytes) {
        Ok(source) => {
            let checked = check_with(file, &source, env);
            (source, checked)
        }
        Err(e) => (
            e.source,
            Checked {
                snapshot: None,
                diagnostics: vec![e.diagnostic],
            },
        ),
    }
}

/// A file that is not UTF-8 text.
#[derive(Debug)]
pub struct NotUtf8 {
    /// The file decoded lossily, to render the diagnostic against.
    pub source: String,
    /// `not-utf8`, at the first byte that is not UTF-8.
    pub diagnostic: Diagnostic,
}

/// A file's bytes as text, or why not. For configs and rules files alike.
pub fn text(file: &str, bytes: Vec<u8>) -> Result<String, Box<NotUtf8>> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let byte = e.as_bytes()[at];
            let source = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let mut d = diag::Diags::new(file, &source);
            // Up to `at` the lossy text is the file itself, so the offset
            // maps to the same line and column in both.
            d.error(
                "not-utf8",
                Some(at..at + 1),
                "",
                format!("the file is not UTF-8 text: byte 0x{byte:02x} at offset {at} is not valid UTF-8"),
            )
            .hint("save the file as UTF-8 (TOML files must be UTF-8)");
            let diagnostic = d.into_sorted().remove(0);
            Err(Box::new(NotUtf8 { source, diagnostic }))
        }
    }
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
