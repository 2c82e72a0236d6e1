//! The safety verbs end to end: `check --standards`, `test`, `diff`,
//! `explain` and `schema` on the incident fixtures, and proof that the
//! simulator is the data plane's own balancer.

mod live;
mod messages;
mod replay;
mod schema;
mod verbs;

use std::path::PathBuf;
use std::process::Output;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/incidents")
        .join(name)
}

pub fn run(args: &[&str]) -> Output {
    super::fulcrum().args(args).output().unwrap()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
