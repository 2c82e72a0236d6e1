//! Every input of the fuzz corpus (`fuzz/corpus/TARGET/`) replayed through
//! the checks its target runs (`fulcrum_proxy::fuzz`), on stable: an input
//! that once made a target fail stays a test.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        assert!(run.is_ok(), "{target}: {} fails", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "no corpus for {target}");
}

#[test]
fn request_head() {
    replay("request_head", fulcrum_proxy::fuzz::request_head);
}

#[test]
fn response_head() {
    replay("response_head", fulcrum_proxy::fuzz::response_head);
}

#[test]
fn chunked() {
    replay("chunked", fulcrum_proxy::fuzz::chunked);
}

#[test]
fn request_framing() {
    replay("request_framing", fulcrum_proxy::fuzz::request_framing);
}

#[test]
fn config() {
    replay("config", fulcrum_proxy::fuzz::config);
}
