//! The versioned config store and the journal: every config version that
//! was accepted (its exact bytes and who, why, when), which one serves, and
//! an append-only record of every change, refusal, promotion, rollback and
//! health flip. [`Store`] is the seam for other backends (etcd); [`Local`]
//! keeps it all in a directory, written crash-safely.

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
    /// conflict); nothing changed.
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
    /// Store a new version; the store assigns its number (last + 1).
    fn put(&self, meta: VersionMeta, source: &str) -> Result<VersionMeta, StoreError>;
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
