//! Fulcrum's safety tools as a library: standards and config tests
//! ([`rules`]), the traffic-impact [`diff`], [`explain`], and their machine
//! outputs ([`sarif`]). Every answer comes from the data plane's own code:
//! routes through `Snapshot::route`, backends through
//! `fulcrum_config::balance::Balancer::pick`, driven by [`simulate`] over a
//! [`traffic`] sample. The binary only parses arguments and prints; a control
//! plane calls the same functions for its `apply` pre-flight.
#![forbid(unsafe_code)]

pub mod diff;
pub mod explain;
pub mod rules;
pub mod sarif;
pub mod share;
pub mod simulate;
pub mod traffic;

pub use rules::{Evaluation, evaluate};
pub use traffic::{Traffic, TrafficError};
