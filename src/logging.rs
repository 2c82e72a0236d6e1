//! The process log of `serve`: tracing events to stderr, level from
//! `RUST_LOG` (default `info`). As text, coloured only when stderr is a
//! terminal (and `NO_COLOR` is unset), so a log file or a journal never
//! holds escape codes; or as one JSON object per line (`--log-format
//! json`) for log pipelines.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-11-21T06:29:14.455Z  INFO fulcrum::serve: config loaded version=…`
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":"config loaded","version":…},"target":…}`
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
