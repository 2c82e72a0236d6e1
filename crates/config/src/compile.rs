//! Snapshot stage: a [`Valid`] config assembled into the immutable
//! [`Snapshot`] the data plane runs. Every check happened in `validate`, so
//! nothing here can fail.

use crate::snapshot::{Routes, Snapshot};
use crate::validate::Valid;

pub(crate) fn compile(valid: Valid, source: &str) -> Snapshot {
    let hash = content_version(source);
    Snapshot {
        version: valid.version.unwrap_or_else(|| hash.clone()).into(),
        hash: hash.into(),
        admin: valid.admin,
        listeners: valid.listeners,
        routes: Routes::new(valid.routes),
        pools: valid.pools,
        access_log: valid.access_log,
        guard: valid.guard,
        tests: valid.tests,
    }
}

/// First 12 hex digits of the xxh3 hash of the source: the same file always
/// gets the same version, on every instance, without anyone naming it.
pub fn content_version(source: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(source.as_bytes());
    let mut hex = format!("{hash:016x}");
    hex.truncate(12);
    hex
}
