//! The `fulcrum` command: parses the command line and hands each verb to its
//! module. Exit codes are part of the contract: 0 ok, 1 a check failed,
//! 2 usage, 78 the config is invalid.
#![forbid(unsafe_code)]

mod check;
mod demo;
mod env;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The config is invalid (sysexits' EX_CONFIG).
pub const EXIT_INVALID: u8 = 78;
/// Usage error: bad flag, unreadable file.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "An HTTP load balancer that cannot be silently misconfigured",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the load balancer. SIGHUP reloads the config (a refused config
    /// leaves the running one serving); SIGTERM or Ctrl-C drains and exits.
    Serve {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Worker threads; default: one per core.
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Also start a small demo HTTP server on every backend address of
        /// the config, to try Fulcrum on one machine.
        #[arg(long)]
        demo_backends: bool,
    },
    /// Check a config: syntax, types and semantics, with every problem at once.
    /// Exits 78 if the config is invalid, 0 otherwise (warnings included).
    Check {
        /// The config file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.verb {
        Verb::Check { file, format } => check::run(&file, format),
        Verb::Serve {
            config,
            grace,
            threads,
            demo_backends,
        } => serve::run(&config, grace, threads, demo_backends),
    }
}

/// Read a file a verb was given, or explain in one line why not.
pub fn read_config(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "fulcrum: cannot read {}: {e} (check the path and its permissions)",
            path.display()
        )
    })
}
