//! The directory store: exact bytes, numbering, the head's compare-and-set,
//! the journal, recovery on open, and a writer killed at random moments.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::*;

fn meta(parent: Option<u64>) -> VersionMeta {
    VersionMeta {
        number: 0,
        hash: String::new(),
        parent,
        author: "alice".into(),
        message: "more auth backends".into(),
        time: SystemTime::now(),
        standards_hash: Some("0123456789ab".into()),
        origin: Origin::Api,
    }
}

fn event(kind: EventKind, version: Option<u64>) -> Event {
    Event {
        seq: 0,
        time: SystemTime::now(),
        kind,
        actor: "alice".into(),
        version,
        summary: format!("{kind:?} {version:?}"),
        detail: serde_json::json!({ "reasons": ["a", "b"] }),
    }
}

fn open(dir: &Path) -> Local {
    Local::open(dir).expect("open the store")
}

#[test]
fn versions_keep_their_exact_bytes_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let source =
        "# Änderung ✓, 日本語\r\n[pool.auth]\r\nbackends = []\n\n\t# trailing \\ \" \u{0}\n";
    let stored = {
        let store = open(&dir);
        let m = store.put(meta(None), source).unwrap();
        assert_eq!(m.number, 1);
        assert_eq!(m.hash, fulcrum_config::content_version(source));
        let v = store.get(1).unwrap().expect("version 1 is stored");
        assert_eq!(v.source, source);
        assert_eq!(v.meta, m);
        assert_eq!(store.list().unwrap(), vec![m.clone()]);
        assert!(store.get(2).unwrap().is_none());
        m
    };
    let mode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the state directory is private");

    let store = open(&dir);
    let v = store.get(1).unwrap().unwrap();
    assert_eq!(v.source.as_bytes(), source.as_bytes());
    assert_eq!(v.meta, stored);
    assert_eq!(store.list().unwrap(), vec![stored]);
}

#[test]
fn numbers_continue_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        assert_eq!(store.put(meta(None), "a = 1\n").unwrap().number, 1);
        store.set_head(1, None).unwrap();
        assert_eq!(store.put(meta(Some(1)), "a = 2\n").unwrap().number, 2);
    }
    let store = open(tmp.path());
    let m = store.put(meta(Some(2)), "a = 3\n").unwrap();
    assert_eq!((m.number, m.parent), (3, Some(2)));
    let numbers: Vec<u64> = store.list().unwrap().iter().map(|m| m.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(tmp.path().join("versions/000003.json").is_file());
}

/// A version whose change failed after its store (the journal could not
/// record it) is taken back, and is gone after a reopen; the head and
/// older versions never are.
#[test]
fn a_discarded_version_is_gone_and_only_the_newest_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v1 = store.put(meta(None), "a").unwrap();
    store.set_head(v1.number, None).unwrap();
    let v2 = store.put(meta(Some(1)), "b").unwrap();
    store.discard(v1.number).unwrap();
    store.discard(v2.number).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.get(2).unwrap().is_none());
    // The head stays, though it is the newest now.
    store.discard(v1.number).unwrap();
    drop(store);
    let store = open(dir.path());
    let numbers: Vec<u64> = store.list().unwrap().iter().map(|m| m.number).collect();
    assert_eq!(numbers, [1]);
    assert_eq!(store.put(meta(Some(1)), "c").unwrap().number, 2);
}

/// A missing head with more than a first start's one version stored is
/// refused: which version served is not known, and a first start's
/// config would silently replace it.
#[test]
fn a_missing_head_over_stored_versions_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put(meta(None), "a").unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join(HEAD)).ok();
    // One version and no head: a first start cut short; it goes on.
    let store = open(dir.path());
    store.set_head(1, None).unwrap();
    store.put(meta(Some(1)), "b").unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join(HEAD)).unwrap();
    let Err(e) = Local::open(dir.path()).map(drop) else {
        panic!("the open was not refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("HEAD") && e.contains("2 versions are stored"),
        "{e}"
    );
}

/// The newest version file deleted by hand is reported at open: the next
/// change would otherwise take its number, and the journal would name two
/// configs vN.
#[test]
fn a_missing_newest_version_the_journal_applied_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put(meta(None), "a").unwrap();
    store.set_head(1, None).unwrap();
    store.put(meta(Some(1)), "b").unwrap();
    store.append(event(EventKind::Applied, Some(2))).unwrap();
    store.append(event(EventKind::Health, None)).unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("versions/000002.json")).unwrap();
    let Err(e) = Local::open(dir.path()).map(drop) else {
        panic!("the open was not refused");
    };
    let e = e.to_string();
    assert!(e.contains("000002.json") && e.contains("v2 applied"), "{e}");
}

#[test]
fn head_moves_only_from_the_expected_version() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        assert_eq!(store.head().unwrap(), None);
        store.put(meta(None), "a = 1\n").unwrap();
        store.put(meta(None), "a = 2\n").unwrap();
        store.set_head(1, None).unwrap();
        match store.set_head(2, None) {
            Err(StoreError::Conflict { expected, found }) => {
                assert_eq!((expected, found), (None, Some(1)));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let e = store.set_head(2, Some(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the serving version changed (expected v2, found v1): fetch the current config and apply again"
        );
        assert_eq!(store.head().unwrap(), Some(1));
        store.set_head(2, Some(1)).unwrap();
        assert!(matches!(
            store.set_head(9, Some(2)),
            Err(StoreError::Missing { number: 9 })
        ));
    }
    let store = open(tmp.path());
    assert_eq!(store.head().unwrap(), Some(2));
    store.set_head(1, Some(2)).unwrap();
    assert_eq!(store.head().unwrap(), Some(1));
}

#[test]
fn journal_seq_continues_across_reopen_and_pages() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        assert_eq!(store.last_seq().unwrap(), 0);
        // The version the events name (an applied one must be stored).
        store.put(meta(None), "a").unwrap();
        for (i, kind) in [EventKind::Start, EventKind::Applied, EventKind::Promoted]
            .into_iter()
            .enumerate()
        {
            let e = store.append(event(kind, Some(1))).unwrap();
            assert_eq!(e.seq, i as u64 + 1);
        }
    }
    let store = open(tmp.path());
    assert_eq!(store.last_seq().unwrap(), 3);
    let e = store.append(event(EventKind::RolledBack, None)).unwrap();
    assert_eq!(e.seq, 4);
    assert_eq!(store.last_seq().unwrap(), 4);
    let all = store.events(0, 100).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(all[3], e);
    assert_eq!(all[1].kind, EventKind::Applied);
    assert_eq!(all[1].detail, serde_json::json!({ "reasons": ["a", "b"] }));
    let page: Vec<u64> = store.events(1, 2).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, [2, 3]);
    assert!(store.events(4, 10).unwrap().is_empty());
    assert!(store.events(u64::MAX, 10).unwrap().is_empty());
    assert!(store.events(0, 0).unwrap().is_empty());
}

#[test]
fn a_torn_journal_line_is_cut_off_and_the_next_append_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join(JOURNAL);
    {
        let store = open(tmp.path());
        store.put(meta(None), "a").unwrap();
        store.set_head(1, None).unwrap();
        store.put(meta(Some(1)), "b").unwrap();
        store.append(event(EventKind::Start, Some(1))).unwrap();
        store.append(event(EventKind::Applied, Some(2))).unwrap();
    }
    let whole = fs::read(&journal).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"seq":3,"time":"2026-"#);
    fs::write(&journal, &torn).unwrap();

    let store = open(tmp.path());
    assert_eq!(fs::read(&journal).unwrap(), whole, "the torn line is gone");
    assert_eq!(store.events(0, 10).unwrap().len(), 2);
    assert_eq!(
        store
            .append(event(EventKind::Promoted, Some(2)))
            .unwrap()
            .seq,
        3
    );
    drop(store);
    let store = open(tmp.path());
    let seqs: Vec<u64> = store.events(0, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn temp_files_left_by_a_crash_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        store.put(meta(None), "a = 1\n").unwrap();
        store.set_head(1, None).unwrap();
    }
    let leftovers = [
        tmp.path().join("versions/.000002.json.tmp"),
        tmp.path().join(".HEAD.tmp"),
    ];
    for f in &leftovers {
        fs::write(f, "half writ").unwrap();
    }
    fs::write(tmp.path().join("notes.tmp"), "the operator's").unwrap();
    let store = open(tmp.path());
    for f in &leftovers {
        assert!(!f.exists(), "{} is removed", f.display());
    }
    assert!(tmp.path().join("notes.tmp").exists(), "not ours: kept");
    assert_eq!(store.head().unwrap(), Some(1));
    assert_eq!(store.put(meta(Some(1)), "a = 2\n").unwrap().number, 2);
}

#[test]
fn a_damaged_version_file_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("versions/000002.json");
    let store = open(tmp.path());
    store.put(meta(None), "a = 1\n").unwrap();
    store.put(meta(Some(1)), "a = 2\n").unwrap();

    // Changed bytes: it still parses, but no longer matches its hash.
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("a = 2", "a = 3")).unwrap();
    match store.get(2) {
        Err(StoreError::Corrupt { path, reason }) => {
            assert_eq!(path, file);
            assert!(reason.contains("hashes to"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    drop(store);

    fs::write(&file, "{\"number\": 2, \"sour").unwrap();
    match Local::open(tmp.path()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let StoreError::Corrupt { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, &file);
            assert!(
                e.to_string()
                    .starts_with(&format!("{} is damaged: ", file.display()))
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    fs::remove_file(&file).unwrap();
    fs::write(tmp.path().join(HEAD), "2\n").unwrap();
    assert!(
        matches!(Local::open(tmp.path()), Err(StoreError::Corrupt { path, .. }) if path.ends_with(HEAD)),
        "a HEAD naming a version that is not stored is damaged"
    );
}

#[test]
fn a_damaged_journal_line_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        store.append(event(EventKind::Start, None)).unwrap();
    }
    let journal = tmp.path().join(JOURNAL);
    let mut bytes = fs::read(&journal).unwrap();
    bytes.extend_from_slice(b"not json\n");
    fs::write(&journal, bytes).unwrap();
    match Local::open(tmp.path()) {
        Err(StoreError::Corrupt { path, reason }) => {
            assert_eq!(path, journal);
            assert!(reason.starts_with("line 2: "), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_second_open_of_one_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = open(tmp.path());
    match Local::open(tmp.path()) {
        Err(StoreError::Io { error, .. }) => {
            assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
            assert!(error.to_string().contains("another fulcrum process"));
        }
        other => panic!("expected the directory to be locked, got {other:?}"),
    }
}

// ---- a writer killed at random moments ----

/// Set in the child: the directory it writes to.
const WRITER: &str = "FULCRUM_STORE_CRASH_WRITER";

/// Acknowledged writes, from the writer's stdout.
#[derive(Debug, Default)]
struct Acked {
    version: u64,
    head: Option<u64>,
    seq: u64,
}

/// The parent starts this same test binary as a writer that applies
/// versions in a tight loop (put, journal, move the head, journal), kills it
/// with SIGKILL at a random moment, reopens the store and checks that
/// every file is whole and nothing acknowledged is missing.
#[test]
fn a_killed_writer_loses_nothing_it_acknowledged() {
    if let Some(dir) = std::env::var_os(WRITER) {
        writer(Path::new(&dir));
    }
    let name = format!(
        "{}::a_killed_writer_loses_nothing_it_acknowledged",
        module_path!().split_once("::").unwrap().1
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut acked = Acked::default();
    for round in 0..30u64 {
        let mut child = Killed(
            Command::new(std::env::current_exe().unwrap())
                .args([&name, "--exact", "--nocapture", "--test-threads=1"])
                .env(WRITER, tmp.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the writer"),
        );
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        // Kill only once it writes: the moment is what varies. (The test
        // harness prints its `test NAME ... ` on the same line.)
        while out.read_line(&mut line).unwrap() > 0 && !line.ends_with("ready\n") {
            line.clear();
        }
        std::thread::sleep(Duration::from_millis(random_below(round, 40)));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the writer stopped by itself ({status}):\n{err}"
        );
        for l in rest.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            match l.trim_end().split_once(' ') {
                Some(("version", n)) => acked.version = n.parse().unwrap(),
                Some(("head", n)) => acked.head = Some(n.parse().unwrap()),
                Some(("seq", n)) => acked.seq = n.parse().unwrap(),
                _ => {}
            }
        }
        verify(tmp.path(), &acked, round);
    }
    assert!(
        acked.version > 0 && acked.seq > 0,
        "the writer acknowledged nothing in 30 rounds: {acked:?}"
    );
}

/// Kills the writer should the test fail before it does.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random_below(salt: u64, n: u64) -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(salt) % n
}

/// Applies versions until killed, printing each write once it returned.
/// Gives up after 20 s, so a parent that never kills it fails, not hangs.
fn writer(dir: &Path) -> ! {
    let started = std::time::Instant::now();
    let store = Local::open(dir).expect("the writer opens the store");
    let mut head = store.head().unwrap();
    let mut out = io::stdout();
    let mut ack = |what: &str, n: u64| {
        writeln!(out, "{what} {n}").unwrap();
        out.flush().unwrap();
    };
    writeln!(io::stdout(), "ready").unwrap();
    io::stdout().flush().unwrap();
    for i in 0u64.. {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the writer was not killed"
        );
        // Non-ASCII, CRLF and varying sizes, so a torn file could not pass.
        let source = format!(
            "# change {i} ✓\r\nversion = \"v{i}\"\n{}",
            "#\n".repeat((i as usize * 97) % 3000)
        );
        let m = store.put(meta(head), &source).unwrap();
        ack("version", m.number);
        let e = store
            .append(event(EventKind::Applied, Some(m.number)))
            .unwrap();
        ack("seq", e.seq);
        store.set_head(m.number, head).unwrap();
        ack("head", m.number);
        head = Some(m.number);
        let e = store
            .append(event(EventKind::Promoted, Some(m.number)))
            .unwrap();
        ack("seq", e.seq);
    }
    unreachable!()
}

fn verify(dir: &Path, acked: &Acked, round: u64) {
    let store = Local::open(dir).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
    for d in [dir.to_owned(), dir.join(VERSIONS)] {
        for entry in fs::read_dir(&d).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                !name.to_string_lossy().ends_with(TEMP),
                "round {round}: {name:?} left"
            );
        }
    }
    let metas = store.list().unwrap();
    let numbers: Vec<u64> = metas.iter().map(|m| m.number).collect();
    assert_eq!(
        numbers,
        (1..=metas.len() as u64).collect::<Vec<_>>(),
        "round {round}: versions are numbered without a gap"
    );
    assert!(
        metas.len() as u64 >= acked.version,
        "round {round}: acknowledged v{} is missing",
        acked.version
    );
    for m in &metas {
        let v = store.get(m.number).unwrap().unwrap();
        assert_eq!(v.meta.hash, fulcrum_config::content_version(&v.source));
        assert!(v.source.starts_with("# change "), "round {round}");
    }
    let head = store.head().unwrap();
    assert!(
        head.is_none_or(|h| numbers.contains(&h)),
        "round {round}: HEAD {head:?} names a stored version"
    );
    assert!(
        head >= acked.head,
        "round {round}: HEAD {head:?} is behind the acknowledged {:?}",
        acked.head
    );
    let events = store.events(0, usize::MAX).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "round {round}"
    );
    assert!(
        events.len() as u64 >= acked.seq,
        "round {round}: acknowledged event {} is missing",
        acked.seq
    );
    let bytes = fs::read(dir.join(JOURNAL)).unwrap();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "round {round}");
}
