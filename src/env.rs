//! The [`fulcrum_config::Environment`] of a config file on disk: files it
//! names are read relative to the config file's directory, and "now" is
//! the system clock. The only place the config check touches the outside.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct FileEnv {
    dir: PathBuf,
}

impl FileEnv {
    /// For the config file at `config`.
    pub fn for_config(config: &Path) -> FileEnv {
        FileEnv {
            dir: config.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }
}

impl fulcrum_config::Environment for FileEnv {
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.dir.join(path)).map_err(|e| e.to_string())
    }
    fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}
