//! Fulcrum's control plane: the only writer of the running config. A
//! change, from the admin API, `apply` or SIGHUP, goes through one pipeline
//! (read → check → pre-flight → store → stage → promote or roll back), and
//! every step is recorded in the [`store`]'s journal.
#![forbid(unsafe_code)]

pub mod admin;
pub mod boot;
pub mod change;
pub mod gate;
pub mod guard;
pub mod health;
pub mod journal;
pub mod listeners;
pub mod metrics;
pub mod preflight;
pub mod standards;
pub mod status;
pub mod store;
pub mod token;
