//! Fulcrum's data plane: serves listeners (HTTP/1.1, HTTP/2, TLS), routes
//! requests to pools, passes WebSocket upgrades through, balances
//! them over backends, health-checks and ejects backends, retries within a
//! budget, and writes the access log. Reads the config only as an immutable
//! [`Snapshot`] swapped in behind an `ArcSwap`, so reloads never take a lock
//! on the request path.
// One module allows it, with the benchmark that proved the need: `tcp`
// (raw socket calls; bench/RESULTS.md, round 9).
#![deny(unsafe_code)]

pub mod access_log;
pub mod backend;
mod body;
mod conn;
pub mod counters;
pub mod error;
#[doc(hidden)]
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod h2;
pub mod headers;
pub mod health;
mod http1;
mod io;
pub mod listener;
pub mod outlier;
pub mod proxy;
pub mod recent;
mod runtime;
pub mod stats;
#[allow(unsafe_code)]
mod tcp;
mod tls;
mod tunnel;

pub use backend::{BackendState, BackendStatus};
pub use counters::CounterValues;
pub use error::{Cause, ProxyError};
pub use listener::{ConnectionCount, Open, accept, serve};
pub use runtime::{DataPlane, Writer, canary_threshold, cohort_hash};
pub use stats::Cohort;
pub use tls::acceptor as tls_acceptor;

pub use fulcrum_config::Snapshot;
// The balancer is the config crate's, shared with the safety tools; named
// here so the data plane's modules reach it as `crate::balance`.
use fulcrum_config::balance;
