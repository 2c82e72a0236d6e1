//! The `fulcrum` command: parses the command line and hands each verb to its
//! module. Exit codes are part of the contract: 0 ok, 1 a check failed,
//! 2 usage, 78 the config is invalid.
#![forbid(unsafe_code)]

mod demo;
mod env;
mod logging;
mod remote;
mod serve;
mod tools;

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
        /// Worker threads, each accepting and serving its own connections
        /// on its own socket of every listener; default: one per core.
        #[arg(long, value_name = "N")]
        threads: Option<std::num::NonZeroUsize>,
        /// Also start a small demo HTTP server on every backend address of
        /// the config, to try Fulcrum on one machine.
        #[arg(long)]
        demo_backends: bool,
        /// Refuse to start or change to a config that breaks these
        /// standards, and re-check the running config whenever this file
        /// changes.
        #[arg(long, value_name = "FILE")]
        standards: Option<PathBuf>,
        /// Where config versions, the journal and a generated admin token
        /// are kept; default: `NAME.state/` beside the config file.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// How the process log (stderr) is written: text, coloured only on
        /// a terminal, or one JSON object per line.
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        log_format: logging::LogFormat,
    },
    /// Check a config: syntax, types and semantics, with every problem at once.
    /// Exits 78 if the config is invalid, 0 otherwise (warnings included).
    Check {
        /// The config file.
        file: PathBuf,
        /// Also check the config against this standards file ([[rule]]s);
        /// a broken rule exits 1.
        #[arg(long, value_name = "FILE")]
        standards: Option<PathBuf>,
        /// Simulate `max_backend_share` over this recorded access log
        /// instead of the standards file's synthetic [traffic] (needs
        /// --standards: the config's own tests use their own).
        #[arg(long, value_name = "ACCESS_LOG", requires = "standards")]
        traffic: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Run rule files as tests against a config: a PASS/FAIL line per rule
    /// and `N passed, M failed`. Exits 1 on any failure, 78 if the config or
    /// a rules file is invalid.
    Test {
        /// The config file.
        config: PathBuf,
        /// Rule files ([[rule]] tables, as for standards).
        #[arg(required = true, value_name = "TESTS.toml")]
        tests: Vec<PathBuf>,
        /// Fail when a route is exercised by no rule's request.
        #[arg(long)]
        require_coverage: bool,
        /// Simulate `max_backend_share` over this recorded access log.
        #[arg(long, value_name = "ACCESS_LOG")]
        traffic: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show what changes between two configs: routes, pools, backends,
    /// weights, algorithms, health, timeouts. With --traffic, replay a
    /// recorded access log through both and report who moves.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// A Fulcrum access log to replay through both configs.
        #[arg(long, value_name = "ACCESS_LOG")]
        traffic: Option<PathBuf>,
        /// Exit 1 when more than this share of requests lands on another
        /// pool or backend (needs --traffic), e.g. 0.05.
        #[arg(long, value_name = "SHARE", requires = "traffic")]
        max_moved: Option<f64>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Explain where a request goes: each route tried and why it matched or
    /// not, the pool, its backends, and the backend its balancer picks.
    Explain {
        config: PathBuf,
        /// "METHOD URL", e.g. 'POST http://app.example.com/auth/login'.
        request: String,
        /// A request header, 'name: value'; repeatable.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The client's IP, for `hash` on client_ip.
        #[arg(long, value_name = "IP", default_value = "192.0.2.1")]
        client_ip: std::net::IpAddr,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print a JSON Schema for editors: of the config file, or of a rules
    /// file (standards and tests share one language).
    Schema {
        #[arg(value_enum, default_value = "config")]
        kind: SchemaKind,
    },
    /// Apply a config to a running `serve` through its admin API: check,
    /// standards, the config's tests, the diff, the traffic impact over
    /// recent requests and live probes of new backends, then a canary or
    /// the swap. Prints each step. Exits 1 when refused, 78 when invalid.
    Apply {
        /// The new config.
        file: PathBuf,
        #[command(flatten)]
        target: remote::Target,
        /// Serve it to this share of clients first (0 < SHARE < 1).
        #[arg(long, value_name = "SHARE")]
        canary: Option<f64>,
        /// How long the canary serves before it is promoted (default 60s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "canary")]
        bake: Option<Duration>,
        /// Override refusals by standards, tests, pre-flight and impact
        /// (never an invalid config); the journal records it.
        #[arg(long)]
        force: bool,
        /// Why: kept with the version and in the journal.
        #[arg(long, short, value_name = "TEXT")]
        message: Option<String>,
        /// Refuse when more than this share of recent requests would land
        /// on another pool or backend, e.g. 0.05.
        #[arg(long, value_name = "SHARE")]
        max_moved: Option<f64>,
        /// With --canary: return once it is staged, without waiting for
        /// its promotion.
        #[arg(long)]
        no_wait: bool,
    },
    /// Roll back: drop a running canary, or serve an earlier version
    /// again (default: the serving version's parent).
    Rollback {
        /// The version number to serve (see `fulcrum history`).
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Why: kept in the journal.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        target: remote::Target,
    },
    /// The stored config versions, newest first.
    History {
        #[command(flatten)]
        target: remote::Target,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// What serves: versions, canary, backends and drift.
    Status {
        #[command(flatten)]
        target: remote::Target,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Whether the running config, the store's head, the config file on
    /// disk and the standards agree. Exits 1 when they do not.
    Drift {
        #[command(flatten)]
        target: remote::Target,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// A config file (`fulcrum.toml`).
    Config,
    /// A standards or tests file ([[rule]]s).
    #[value(alias = "standards", alias = "tests")]
    Rules,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    /// SARIF 2.1.0, for CI annotations (`check` and `test` only).
    Sarif,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for `serve`, nor for the verbs that talk to its admin API
    // (they print with `say!`, which ends them as quietly).
    if !matches!(
        cli.verb,
        Verb::Serve { .. }
            | Verb::Apply { .. }
            | Verb::Rollback { .. }
            | Verb::History { .. }
            | Verb::Status { .. }
            | Verb::Drift { .. }
    ) {
        die_quietly_on_closed_stdout();
    }
    match cli.verb {
        Verb::Check {
            file,
            standards,
            traffic,
            format,
        } => tools::check(&file, standards.as_deref(), traffic.as_deref(), format),
        Verb::Test {
            config,
            tests,
            require_coverage,
            traffic,
            format,
        } => tools::test(
            &config,
            &tests,
            require_coverage,
            traffic.as_deref(),
            format,
        ),
        Verb::Diff {
            old,
            new,
            traffic,
            max_moved,
            format,
        } => tools::diff(&old, &new, traffic.as_deref(), max_moved, format),
        Verb::Explain {
            config,
            request,
            headers,
            client_ip,
            format,
        } => tools::explain(&config, &request, &headers, client_ip, format),
        Verb::Schema { kind } => tools::schema(kind),
        Verb::Apply {
            file,
            target,
            canary,
            bake,
            force,
            message,
            max_moved,
            no_wait,
        } => remote::apply(remote::ApplyOptions {
            file: &file,
            target: &target,
            canary,
            bake,
            force,
            message,
            max_moved,
            no_wait,
        }),
        Verb::Rollback { to, reason, target } => remote::rollback(&target, to, reason),
        Verb::History { target, format } => remote::history(&target, format == Format::Json),
        Verb::Status { target, format } => remote::status(&target, format == Format::Json),
        Verb::Drift { target, format } => remote::drift(&target, format == Format::Json),
        Verb::Serve {
            config,
            grace,
            threads,
            demo_backends,
            standards,
            state,
            log_format,
        } => {
            logging::init(log_format);
            serve::run(serve::Options {
                config,
                grace,
                threads,
                demo_backends,
                standards,
                state,
            })
        }
    }
}

/// Read a config file and check it exactly as `serve` will: certificates
/// and keys it names are read relative to it. Returns its label (for
/// diagnostics), its text and the outcome, or a one-line reason it could
/// not be read.
pub fn check_file(
    path: &std::path::Path,
) -> Result<(String, String, fulcrum_config::Checked), String> {
    check_file_io(path).map_err(|e| unreadable(path, &e))
}

/// [`check_file`], with the reason a file could not be read as it came.
/// A file that is not UTF-8 is read, and invalid (`not-utf8`).
pub fn check_file_io(
    path: &std::path::Path,
) -> std::io::Result<(String, String, fulcrum_config::Checked)> {
    let bytes = std::fs::read(path)?;
    let label = path.display().to_string();
    let env = env::FileEnv::for_config(path);
    let (source, checked) = fulcrum_config::check_bytes_with(&label, bytes, &env);
    Ok((label, source, checked))
}

/// Read a file a verb was given, or explain in one line why not.
pub fn read_config(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))
}

fn unreadable(path: &std::path::Path, e: &std::io::Error) -> String {
    format!(
        "fulcrum: cannot read {}: {e} (check the path and its permissions)",
        path.display()
    )
}

/// A report piped into `head` ends when its reader goes, as `cat`'s would,
/// instead of panicking on the next print: Rust ignores SIGPIPE, so give
/// it back its default action. Not for `serve`, which must outlive any
/// reader of its access log or stdout, nor for the verbs whose sockets
/// must report a closed peer as an error.
fn die_quietly_on_closed_stdout() {
    sigpipe::reset();
}
