//! Fulcrum's config: TOML parsed into raw structs with spans, validated with
//! every problem collected, and compiled into an immutable [`Snapshot`].
//! Pure: no I/O, no clock, no sockets, so `check`, `test`, `diff` and `serve`
//! all read exactly the same thing.
#![forbid(unsafe_code)]

pub mod diag;
pub mod snapshot;

pub use diag::{Diagnostic, Severity};
pub use snapshot::Snapshot;

/// The outcome of checking one config file.
#[derive(Debug)]
pub struct Checked {
    /// Present exactly when there is no error-severity diagnostic.
    pub snapshot: Option<Snapshot>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parse, validate and compile `source`, read from `file` (used only to
/// label diagnostics).
pub fn check(file: &str, source: &str) -> Checked {
    let _ = (file, source);
    todo!("raw → valid → snapshot")
}
