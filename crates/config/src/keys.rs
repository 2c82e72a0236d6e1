//! What of a request a snapshot looks at beyond method, host and path: the
//! header and cookie names its routes match on or its pools hash on. The data
//! plane copies these, and those `[access_log]` adds, into the access log
//! (computed once per snapshot, off the request path) so that
//! `diff --traffic` and `check --traffic` can replay recorded requests
//! through another config. Values of sensitive headers are replaced by
//! [`redact`]ed ones.

use http::HeaderName;

use crate::snapshot::{Algorithm, HashKey, Snapshot};

/// Header and cookie names a snapshot's routing or hashing reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestKeys {
    /// Lower-case, sorted, without duplicates. Never `cookie`: cookies are
    /// listed by name in `cookies`, so one session cookie is logged, not all.
    pub headers: Vec<HeaderName>,
    /// Cookie names `hash` pools key on; sorted, without duplicates.
    pub cookies: Vec<String>,
}

impl RequestKeys {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.cookies.is_empty()
    }
}

impl Snapshot {
    /// The headers and cookies this snapshot's routes and pools read.
    pub fn request_keys(&self) -> RequestKeys {
        let mut keys = RequestKeys::default();
        for route in &self.routes {
            for h in &route.matcher.headers {
                keys.headers.push(h.name.clone());
            }
        }
        for pool in &self.pools {
            if let Algorithm::Hash(policy) = &pool.algorithm {
                match &policy.key {
                    // Hashed as the request's host, which every line has.
                    HashKey::Header(name) if name == http::header::HOST => {}
                    HashKey::Header(name) => keys.headers.push(name.clone()),
                    HashKey::Cookie(name) => keys.cookies.push(name.clone()),
                    HashKey::ClientIp | HashKey::Path => {}
                }
            }
        }
        keys.headers.retain(|h| h != http::header::COOKIE);
        keys.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        keys.headers.dedup();
        keys.cookies.sort();
        keys.cookies.dedup();
        keys
    }

    /// What the access log records of every request: what the config reads
    /// ([`Snapshot::request_keys`]) and what `[access_log]` adds.
    pub fn logged_keys(&self) -> RequestKeys {
        let mut keys = self.request_keys();
        if let Some(log) = &self.access_log {
            keys.headers.extend(log.headers.iter().cloned());
            keys.cookies.extend(log.cookies.iter().cloned());
            keys.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            keys.headers.dedup();
            keys.cookies.sort();
            keys.cookies.dedup();
        }
        keys
    }

    /// Whether the access log must redact this header's values: credentials
    /// always, plus whatever the config's `access_log.redact` lists.
    pub fn is_sensitive(&self, name: &HeaderName) -> bool {
        is_always_sensitive(name)
            || self
                .access_log
                .as_ref()
                .is_some_and(|l| l.redact.iter().any(|r| r == name))
    }
}

/// Headers whose values are credentials in every deployment.
pub fn is_always_sensitive(name: &HeaderName) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::PROXY_AUTHORIZATION
        || name == http::header::COOKIE
}

/// Key of the redaction hash. Fixed so that logs written by any instance,
/// and the replay tools reading them, agree without sharing a secret: the
/// hash is a consistent pseudonym (equal values stay equal, distinct values
/// stay distinct), and being BLAKE3 it cannot be inverted; a value guessable
/// from a small set (not a token) can still be confirmed by hashing guesses.
const REDACT_KEY: [u8; 32] = *b"fulcrum access log redaction v1\0";

/// `h:` and 32 hex digits of the keyed BLAKE3 hash of `value`: what the
/// access log writes instead of a sensitive value, and what replay compares
/// a route's expected value against.
pub fn redact(value: &[u8]) -> String {
    let hash = blake3::keyed_hash(&REDACT_KEY, value);
    let mut out = String::with_capacity(34);
    out.push_str("h:");
    for b in &hash.as_bytes()[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether a logged value is a redacted one.
pub fn is_redacted(value: &str) -> bool {
    value.len() == 34
        && value.starts_with("h:")
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}
