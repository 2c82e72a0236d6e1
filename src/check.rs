//! `fulcrum check`: prints every diagnostic of a config and exits 78 when it
//! is invalid, so CI can gate a change on it.

use std::path::Path;
use std::process::ExitCode;

use crate::{EXIT_INVALID, EXIT_USAGE, Format};

pub fn run(path: &Path, format: Format) -> ExitCode {
    let source = match crate::read_config(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let label = path.display().to_string();
    let env = crate::env::FileEnv::for_config(path);
    let checked = fulcrum_config::check_with(&label, &source, &env);
    let out = match format {
        Format::Human => fulcrum_config::render_human(&label, &source, &checked),
        Format::Json | Format::Sarif => fulcrum_config::render_json(&label, &checked),
    };
    println!("{out}");
    if checked.snapshot.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}
