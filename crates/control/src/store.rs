//! The versioned config store and the journal: every config version that
//! was accepted (its exact bytes and who, why, when), which one serves, and
//! an append-only record of every change, refusal, promotion, rollback and
//! health flip. [`Store`] is the seam for other backends (etcd); [`Local`]
//! keeps it all in a directory, written crash-safely.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What is known of a stored version besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// 1, 2, 3… in the order versions were stored; never reused.
    pub number: u64,
    /// `fulcrum_config::content_version` of the bytes.
    pub hash: String,
    /// The version that was serving (the head) when this one was applied.
    pub parent: Option<u64>,
    /// Who applied it: the API caller's `author`, or `file` for the config
    /// file read at start or on SIGHUP.
    pub author: String,
    pub message: String,
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// xxh3 of the standards file it was checked against, when there was one.
    pub standards_hash: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The config file, at start or on SIGHUP.
    File,
    /// `POST /config` (`fulcrum apply`).
    Api,
}

/// A stored version: its metadata and the exact TOML it was applied as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    #[serde(flatten)]
    pub meta: VersionMeta,
    pub source: String,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3…, assigned by [`Store::append`]; 0 before that.
    pub seq: u64,
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub kind: EventKind,
    /// Who caused it: an author, `file`, `guard`, `health`, `fulcrum`.
    pub actor: String,
    /// The version it is about, when there is one.
    pub version: Option<u64>,
    /// What happened and why, in one line.
    pub summary: String,
    /// Structured detail (refusal reasons, diff, backend, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The process started serving a version.
    Start,
    /// A change passed the pipeline and was stored.
    Applied,
    /// A change was refused (invalid, standards, tests, pre-flight, impact,
    /// conflict, listeners, or the store could not record it); nothing
    /// changed.
    Refused,
    /// A stored version went live on a fraction of requests.
    Staged,
    /// A version became the one serving every request.
    Promoted,
    /// A version stopped serving; an earlier one serves again.
    RolledBack,
    /// A backend went up or down (health checks or outlier ejection).
    Health,
    /// The running config and the file, the store or the standards disagree.
    Drift,
    /// A detector fired.
    Alert,
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// `set_head` found another head than the caller expected.
    Conflict {
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// The store's files could not be read or written.
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// A stored file does not parse (never written by us, or damaged).
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
    /// `set_head` named a version that was never stored.
    Missing { number: u64 },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict { expected, found } => write!(
                f,
                "the serving version changed (expected {}, found {}): fetch the current config and apply again",
                show(*expected),
                show(*found)
            ),
            StoreError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            StoreError::Corrupt { path, reason } => {
                write!(f, "{} is damaged: {reason}", path.display())
            }
            StoreError::Missing { number } => write!(
                f,
                "there is no stored version v{number}; `fulcrum history` lists the versions"
            ),
        }
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_owned(), |n| format!("v{n}"))
}

impl std::error::Error for StoreError {}

/// Versions, the head (the version serving every request) and the journal.
/// Small on purpose, so another backend (etcd) can implement it. Every
/// method returns only once its write is durable.
pub trait Store: Send + Sync {
    /// Store a new version; the store assigns its number (last + 1) and
    /// sets its hash from `source`.
    fn put(&self, meta: VersionMeta, source: &str) -> Result<VersionMeta, StoreError>;
    /// Take back version `number`, the newest, when what was to follow
    /// its store failed (the journal could not record it): a version no
    /// change made. Nothing happens to any other version, nor to the head.
    fn discard(&self, number: u64) -> Result<(), StoreError>;
    /// One version, with its bytes.
    fn get(&self, number: u64) -> Result<Option<Version>, StoreError>;
    /// Every version's metadata, oldest first.
    fn list(&self) -> Result<Vec<VersionMeta>, StoreError>;
    /// The version serving every request, if any was ever promoted.
    fn head(&self) -> Result<Option<u64>, StoreError>;
    /// Move the head to `number`, only if it is still `expected`.
    fn set_head(&self, number: u64, expected: Option<u64>) -> Result<(), StoreError>;
    /// Append to the journal; returns the event with its `seq`.
    fn append(&self, event: Event) -> Result<Event, StoreError>;
    /// Journal events with `seq` above `after`, oldest first, at most `limit`.
    fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// The `seq` of the journal's last event; 0 when it is empty.
    fn last_seq(&self) -> Result<u64, StoreError>;
}

/// Whether `versions` hold the config file's content (`hash`) from since
/// the file was last read: the newest version read from it, or one after
/// it (sent with `fulcrum apply`, canaried, rolled back since). Only a
/// config new since then is an edit, at a start as on SIGHUP.
pub fn seen_since_read(versions: &[VersionMeta], hash: &str) -> bool {
    let read = versions
        .iter()
        .rposition(|m| m.origin == Origin::File)
        .unwrap_or(0);
    versions[read..].iter().any(|m| m.hash == hash)
}

/// A [`Store`] in a directory (`serve --state DIR`):
///
/// ```text
/// versions/000001.json   one file per version: metadata and exact source
/// HEAD                   the head's number
/// journal.jsonl          one event per line
/// ```
///
/// Files are replaced, never edited: written to a temp file beside the
/// target, fsynced, renamed over it, and the directory fsynced, so a crash
/// leaves either the old file or the new one. A version's metadata and bytes
/// share one file so one rename makes both durable. The journal is the one
/// file appended to: each event is one `write_all` of a whole line, then
/// `sync_data`; a line torn by a crash (never acknowledged) is cut off on
/// the next [`Local::open`]. The directory is locked (`flock`) while open,
/// so two processes never number versions or events over each other.
#[derive(Debug)]
pub struct Local {
    dir: PathBuf,
    /// One lock for every write: numbering, the head's compare-and-set and
    /// the journal's append order. Only the control plane takes it.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The directory itself: holds the lock, and is fsynced after a rename.
    root: File,
    versions: File,
    /// Every stored version's metadata, by number.
    metas: Vec<VersionMeta>,
    head: Option<u64>,
    /// Opened for reading and appending.
    journal: File,
    /// Where each journal line ends (just past its `\n`); line `i` holds
    /// the event with seq `i + 1`.
    ends: Vec<u64>,
}

const VERSIONS: &str = "versions";
const HEAD: &str = "HEAD";
const JOURNAL: &str = "journal.jsonl";
const TEMP: &str = ".tmp";

impl Local {
    /// Opens the store in `dir`, creating it (mode 0700) if needed, and
    /// recovers from a crash: leftover temp files are removed and a torn
    /// last journal line is cut off. Every version file is read, so a
    /// damaged one is reported here, not when it is needed for a rollback.
    pub fn open(dir: &Path) -> Result<Local, StoreError> {
        let versions_dir = dir.join(VERSIONS);
        create_dir(dir)?;
        let root = File::open(dir).map_err(io_at(dir))?;
        lock(&root, dir)?;
        if create_dir(&versions_dir)? {
            root.sync_all().map_err(io_at(dir))?;
        }
        let versions = File::open(&versions_dir).map_err(io_at(&versions_dir))?;
        remove_temp_files(dir)?;
        remove_temp_files(&versions_dir)?;

        let metas = read_versions(&versions_dir)?;
        let head = read_head(&dir.join(HEAD), &metas)?;
        let (journal, ends) = open_journal(dir, &root)?;
        let newest = metas.last().map_or(0, |m| m.number);
        let local = Local {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                root,
                versions,
                metas,
                head,
                journal,
                ends,
            }),
        };
        // A newest version file deleted by hand would have its number
        // given to the next change: two configs called vN in the journal.
        if let Some(n) = local.newest_applied()?.filter(|&n| n > newest) {
            return Err(StoreError::Corrupt {
                path: local.version_path(n),
                reason: format!(
                    "it is missing, though the journal records v{n} applied: restore it (from a backup), or a new change would take its number"
                ),
            });
        }
        Ok(local)
    }

    /// The version of the journal's last `applied` event: the highest
    /// number a change was given. Read from the end, a page at a time.
    fn newest_applied(&self) -> Result<Option<u64>, StoreError> {
        const PAGE: u64 = 256;
        let mut end = self.last_seq()?;
        while end > 0 {
            let from = end.saturating_sub(PAGE);
            let page = self.events(from, (end - from) as usize)?;
            let applied = page.iter().rev().find(|e| e.kind == EventKind::Applied);
            if let Some(e) = applied {
                return Ok(e.version);
            }
            end = from;
        }
        Ok(None)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Memory is updated only after a write succeeded, so a panic while
        // the lock was held left it consistent with the files.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn version_path(&self, number: u64) -> PathBuf {
        self.dir.join(VERSIONS).join(version_file(number))
    }
}

impl Store for Local {
    fn put(&self, mut meta: VersionMeta, source: &str) -> Result<VersionMeta, StoreError> {
        let mut st = self.state();
        meta.number = st.metas.last().map_or(1, |m| m.number + 1);
        meta.hash = fulcrum_config::content_version(source);
        let path = self.version_path(meta.number);
        let mut bytes = serde_json::to_vec_pretty(&Version {
            meta,
            source: source.to_owned(),
        })
        .expect("a version serializes");
        bytes.push(b'\n');
        // What a later `get` will read (times to the millisecond).
        let stored = parse_version(&path, &bytes)?;
        replace(&path, &st.versions, &bytes)?;
        st.metas.push(stored.meta.clone());
        Ok(stored.meta)
    }

    fn discard(&self, number: u64) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.metas.last().map(|m| m.number) != Some(number) || st.head == Some(number) {
            return Ok(());
        }
        let path = self.version_path(number);
        fs::remove_file(&path).map_err(io_at(&path))?;
        st.versions
            .sync_all()
            .map_err(io_at(&self.dir.join(VERSIONS)))?;
        st.metas.pop();
        Ok(())
    }

    fn get(&self, number: u64) -> Result<Option<Version>, StoreError> {
        let path = self.version_path(number);
        match fs::read(&path) {
            Ok(bytes) => read_version(&path, number, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::Io { path, error }),
        }
    }

    fn list(&self) -> Result<Vec<VersionMeta>, StoreError> {
        Ok(self.state().metas.clone())
    }

    fn head(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.state().head)
    }

    fn set_head(&self, number: u64, expected: Option<u64>) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.head != expected {
            return Err(StoreError::Conflict {
                expected,
                found: st.head,
            });
        }
        if !st.metas.iter().any(|m| m.number == number) {
            return Err(StoreError::Missing { number });
        }
        replace(
            &self.dir.join(HEAD),
            &st.root,
            format!("{number}\n").as_bytes(),
        )?;
        st.head = Some(number);
        Ok(())
    }

    fn append(&self, mut event: Event) -> Result<Event, StoreError> {
        let mut st = self.state();
        let path = self.dir.join(JOURNAL);
        event.seq = st.ends.len() as u64 + 1;
        let mut line = serde_json::to_vec(&event).expect("an event serializes");
        let stored = parse_event(&path, st.ends.len() + 1, &line)?;
        line.push(b'\n');
        let end = st.ends.last().copied().unwrap_or(0);
        let written = (&st.journal)
            .write_all(&line)
            .and_then(|()| st.journal.sync_data());
        if let Err(error) = written {
            // A partial line would sit in front of the next one: cut it off.
            // Should that fail too, the next open finds the line torn.
            let _ = st.journal.set_len(end);
            return Err(StoreError::Io { path, error });
        }
        st.ends.push(end + line.len() as u64);
        Ok(stored)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.state().ends.len() as u64)
    }

    fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let st = self.state();
        let first = usize::try_from(after).map_or(st.ends.len(), |a| a.min(st.ends.len()));
        let last = first.saturating_add(limit).min(st.ends.len());
        if first == last {
            return Ok(Vec::new());
        }
        let from = if first == 0 { 0 } else { st.ends[first - 1] };
        let path = self.dir.join(JOURNAL);
        let mut buf = vec![0; (st.ends[last - 1] - from) as usize];
        st.journal
            .read_exact_at(&mut buf, from)
            .map_err(io_at(&path))?;
        buf.split(|&b| b == b'\n')
            .take(last - first)
            .enumerate()
            .map(|(i, line)| parse_event(&path, first + i + 1, line))
            .collect()
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Creates `dir` (and its parents) with mode 0700; whether it was created.
fn create_dir(dir: &Path) -> Result<bool, StoreError> {
    let existed = dir.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))?;
    Ok(!existed)
}

/// Locks the directory (`flock`) for as long as `root` is open.
fn lock(root: &File, dir: &Path) -> Result<(), StoreError> {
    // A child this process forks shares the lock until it execs: wait
    // that out (milliseconds), not another process holding it for good.
    for attempt in 0.. {
        match root.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if attempt < 50 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => break,
            Err(fs::TryLockError::Error(error)) => return Err(io_at(dir)(error)),
        }
    }
    Err(io_at(dir)(io::Error::new(
        io::ErrorKind::WouldBlock,
        "another fulcrum process is using this state directory; stop it or give this one its own --state",
    )))
}

fn version_file(number: u64) -> String {
    format!("{number:06}.json")
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a mix: a temp file in the same directory, fsynced, renamed
/// over `path`, then the directory (`dir`) fsynced so the rename is durable.
fn replace(path: &Path, dir: &File, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().expect("a file path").to_string_lossy();
    let temp = path.with_file_name(format!(".{name}{TEMP}"));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(error) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(StoreError::Io {
            path: path.to_owned(),
            error,
        });
    }
    dir.sync_all().map_err(io_at(path))
}

/// Removes what a crash between creating a temp file and renaming it left.
fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy());
        if name.is_some_and(|n| n.starts_with('.') && n.ends_with(TEMP)) {
            tracing::info!(file = %path.display(), "removing a temp file a crash left behind");
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

/// Every version's metadata, by number. Any `*.json` in `versions/` is a
/// version file: one that does not parse is reported, never skipped.
fn read_versions(dir: &Path) -> Result<Vec<VersionMeta>, StoreError> {
    let mut metas = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let number = stem
            .parse::<u64>()
            .ok()
            .filter(|&n| version_file(n) == name)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                reason: "not a version file name (NNNNNN.json); move it out of the directory"
                    .into(),
            })?;
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        metas.push(read_version(&path, number, &bytes)?.meta);
    }
    metas.sort_by_key(|m| m.number);
    Ok(metas)
}

fn parse_version(path: &Path, bytes: &[u8]) -> Result<Version, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: format!("not a stored version: {e}"),
    })
}

/// A version file, checked against its name and its own hash.
fn read_version(path: &Path, number: u64, bytes: &[u8]) -> Result<Version, StoreError> {
    let v = parse_version(path, bytes)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if v.meta.number != number {
        return Err(corrupt(format!("it holds version {}", v.meta.number)));
    }
    let hash = fulcrum_config::content_version(&v.source);
    if v.meta.hash != hash {
        return Err(corrupt(format!(
            "its source hashes to {hash}, not the {} it was stored with",
            v.meta.hash
        )));
    }
    Ok(v)
}

fn read_head(path: &Path, metas: &[VersionMeta]) -> Result<Option<u64>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        // A first start stores one version before it writes the head; with
        // more stored, the head was lost, and what served is not known.
        Err(e) if e.kind() == io::ErrorKind::NotFound && metas.len() > 1 => {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "it is missing, though {} versions are stored: write into it the number of the version to serve (the journal's last `promoted` or `rolled_back` names it)",
                    metas.len()
                ),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let number: u64 = text
        .trim()
        .parse()
        .map_err(|_| corrupt(format!("{:?} is not a version number", text.trim())))?;
    if !metas.iter().any(|m| m.number == number) {
        return Err(corrupt(format!("it names v{number}, which is not stored")));
    }
    Ok(Some(number))
}

fn parse_event(path: &Path, seq: usize, line: &[u8]) -> Result<Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason: format!("line {seq}: {reason}"),
    };
    let event: Event =
        serde_json::from_slice(line).map_err(|e| corrupt(format!("not an event: {e}")))?;
    if event.seq != seq as u64 {
        return Err(corrupt(format!("seq {} out of order", event.seq)));
    }
    Ok(event)
}

/// Opens (or creates) the journal, cuts off a torn last line and checks
/// every other line; returns the file and where each line ends.
fn open_journal(dir: &Path, root: &File) -> Result<(File, Vec<u64>), StoreError> {
    let path = dir.join(JOURNAL);
    let existed = path.exists();
    let journal = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    if !existed {
        root.sync_all().map_err(io_at(dir))?;
    }
    let mut bytes = fs::read(&path).map_err(io_at(&path))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        // `append` acknowledges only after the sync, so this line never was.
        tracing::warn!(
            journal = %path.display(),
            bytes = bytes.len() - whole,
            "the journal's last line was cut short by a crash while it was written; removing it (it was never acknowledged)"
        );
        journal.set_len(whole as u64).map_err(io_at(&path))?;
        journal.sync_data().map_err(io_at(&path))?;
        bytes.truncate(whole);
    }
    let mut ends = Vec::new();
    let mut start = 0;
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        parse_event(&path, i + 1, &line[..line.len() - 1])?;
        start += line.len() as u64;
        ends.push(start);
    }
    Ok((journal, ends))
}

/// RFC 3339 timestamps in UTC with milliseconds, as the access log writes.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
