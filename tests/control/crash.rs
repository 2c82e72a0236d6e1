//! A process killed (SIGKILL) at random moments while changes are applied
//! loses no version it acknowledged and leaves no torn version file or
//! journal line: every write is a temp file, fsync and rename, or one
//! synced append.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_testkit::Backend;

use super::{TOKEN, admin_addr, call, config};
use crate::{Served, write_config};

/// Every complete journal line parses, and only the last line may be cut
/// short (it was never acknowledged; the next start drops it).
fn check_journal(dir: &Path, after_restart: bool) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if after_restart {
        assert_eq!(
            complete.len(),
            text.len(),
            "a torn journal tail survived a restart"
        );
    }
    let mut seqs = Vec::new();
    for line in complete.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a torn or damaged journal line ({e}): {line:?}"));
        seqs.push(v["seq"].as_u64().unwrap());
    }
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "journal sequence numbers are contiguous");
    seqs
}

/// Every version file parses and holds the bytes its hash names; the
/// head names one of them. Returns the version numbers.
fn check_versions(dir: &Path) -> Vec<u64> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir.join("versions")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue; // a temp file the next start removes
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is torn ({e})"));
        let source = v["source"].as_str().unwrap();
        assert_eq!(
            v["hash"].as_str().unwrap(),
            fulcrum_config::content_version(source),
            "{name}"
        );
        numbers.push(v["number"].as_u64().unwrap());
    }
    numbers.sort();
    if let Ok(head) = std::fs::read_to_string(dir.join("HEAD")) {
        let head: u64 = head.trim().parse().expect("HEAD holds a number");
        assert!(
            numbers.contains(&head),
            "HEAD names v{head}, which is missing"
        );
    }
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_applies_no_acknowledged_version_is_lost_and_nothing_is_torn() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "fulcrum.toml", &config(&[auth.addr], web.addr, ""));
    let state = dir.path().join("fulcrum.state");
    let acknowledged: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut rng = fastrand::Rng::with_seed(7);
    // At least 8 kills, and on until 8 changes were acknowledged: a loaded
    // machine applies fewer before each kill. Bounded.
    for round in 0..40 {
        if round >= 8 && acknowledged.lock().unwrap().len() >= 8 {
            break;
        }
        let served = Served::start_env(&path, &[], &[("FULCRUM_ADMIN_TOKEN", TOKEN)]);
        let admin = admin_addr(&served);
        let applying = tokio::spawn({
            let acknowledged = acknowledged.clone();
            let (auth, web) = (auth.addr, web.addr);
            async move {
                for i in 0.. {
                    let body = config(&[auth], web, &format!("# round {round}, change {i}\n"));
                    let call = call(admin, "POST", "/config?author=crash", &body, Some(TOKEN));
                    let Ok((status, _, text)) =
                        tokio::time::timeout(Duration::from_secs(5), call).await
                    else {
                        return;
                    };
                    if status != 200 {
                        return;
                    }
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(v["version"]["number"].as_u64().unwrap());
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(20..250))).await;
        drop(served); // SIGKILL, then reaped
        // The client sees its connection die; what it was told is final.
        let _ = tokio::time::timeout(Duration::from_secs(10), applying).await;
        check_journal(&state, false);
        check_versions(&state);
    }
    // One more start repairs any torn tail and serves the head.
    let served = Served::start_env(&path, &[], &[("FULCRUM_ADMIN_TOKEN", TOKEN)]);
    let admin = admin_addr(&served);
    check_journal(&state, true);
    let stored = check_versions(&state);
    let acked = acknowledged.lock().unwrap().clone();
    assert!(acked.len() >= 8, "the loop applied changes: {acked:?}");
    for n in &acked {
        assert!(
            stored.contains(n),
            "acknowledged v{n} was lost; stored {stored:?}"
        );
    }
    let head: u64 = std::fs::read_to_string(state.join("HEAD"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_, headers, _) = call(admin, "GET", "/config", "", Some(TOKEN)).await;
    assert_eq!(
        headers["fulcrum-version"].to_str().unwrap(),
        head.to_string(),
        "the head serves after a restart"
    );
    assert!(
        head >= *acked.iter().max().unwrap(),
        "the last acknowledged change serves"
    );
}
