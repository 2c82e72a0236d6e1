//! The admin API's bearer token: where it comes from (`[admin]
//! token_file`, else `FULCRUM_ADMIN_TOKEN`, else one `serve` generates into
//! the state directory with mode 0600) and how a presented one is compared
//! (in constant time, so its bytes cannot be guessed one by one).

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// The variable the token may come from, for `serve` and the CLI alike.
pub const ENV: &str = "FULCRUM_ADMIN_TOKEN";
/// The generated token's file name in the state directory.
pub const GENERATED: &str = "admin.token";

pub struct Token(Vec<u8>);

/// Where the token came from, for the log line that says so (never the
/// token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env,
    Generated(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "[admin] token_file {}", p.display()),
            Source::Env => write!(f, "the {ENV} variable"),
            Source::Generated(p) => write!(f, "{} (generated)", p.display()),
        }
    }
}

impl Token {
    /// `token_file` is the config's, resolved against `config_dir`;
    /// `env` the variable's value.
    pub fn resolve(
        token_file: Option<&str>,
        config_dir: &Path,
        env: Option<String>,
        state_dir: &Path,
    ) -> Result<(Token, Source), String> {
        if let Some(f) = token_file {
            let path = config_dir.join(f);
            return Ok((read(&path)?, Source::File(path)));
        }
        if let Some(v) = env {
            let t = v.trim();
            if t.is_empty() {
                return Err(format!(
                    "{ENV} is set but empty: set it to the token, or unset it to have serve generate one"
                ));
            }
            sendable(t).map_err(|why| format!("{ENV} holds {why}: set it to the token alone"))?;
            return Ok((Token(t.as_bytes().to_vec()), Source::Env));
        }
        let path = state_dir.join(GENERATED);
        if path.exists() {
            return Ok((read(&path)?, Source::Generated(path)));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("cannot generate an admin token: {e}"))?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, text.as_bytes())
            .map_err(|e| format!("cannot write the admin token to {}: {e}", path.display()))?;
        Ok((Token(text.into_bytes()), Source::Generated(path)))
    }

    pub fn new(token: &str) -> Token {
        Token(token.trim().as_bytes().to_vec())
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(presented).into()
    }
}

/// Read a token file: its content, surrounding whitespace ignored. A file
/// others may read is used, with a warning: refusing it would stop a
/// restart, and the operator may have reasons.
pub fn read(path: &Path) -> Result<Token, String> {
    let token = read_text(path).map(|t| Token(t.into_bytes()))?;
    if let Some(mode) = readable_by_others(path) {
        tracing::warn!(
            path = %path.display(),
            "the admin token file has mode {mode:o}: others on this machine can read the token; chmod 600 it"
        );
    }
    Ok(token)
}

/// The file's mode when its group or others may read it.
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

/// [`read`], as text, for a client to send.
pub fn read_text(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token from {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!(
            "the admin token file {} is empty: put the token in it",
            path.display()
        ));
    }
    sendable(t).map_err(|why| {
        format!(
            "the admin token file {} holds {why}: put the token alone on one line",
            path.display()
        )
    })?;
    Ok(t.to_owned())
}

/// A token no `Authorization` header can carry (a line break, a control
/// character) would be accepted by `serve` and never match: refused
/// where it is read, with what is wrong.
pub fn sendable(t: &str) -> Result<(), &'static str> {
    match t.chars().find(|c| c.is_control()) {
        Some('\n' | '\r') => Err("more than one line"),
        Some(_) => Err("a control character"),
        None => Ok(()),
    }
}

/// Created with mode 0600 (owner only) before any byte is written, so the
/// token is never readable by others, even for a moment.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_config_file_wins_then_the_variable_then_a_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "  s3cret \n").unwrap();
        let (t, s) = Token::resolve(Some("t"), dir.path(), Some("env".into()), dir.path()).unwrap();
        assert!(t.matches(b"s3cret"));
        assert_eq!(s, Source::File(dir.path().join("t")));
        let (t, s) = Token::resolve(None, dir.path(), Some(" env ".into()), dir.path()).unwrap();
        assert!(t.matches(b"env") && s == Source::Env);
        let state = dir.path().join("state");
        let (t, s) = Token::resolve(None, dir.path(), None, &state).unwrap();
        let path = state.join(GENERATED);
        assert_eq!(s, Source::Generated(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(t.matches(text.trim().as_bytes()));
        // The next start reads the same one.
        let (again, _) = Token::resolve(None, dir.path(), None, &state).unwrap();
        assert!(again.matches(text.trim().as_bytes()));
    }

    #[test]
    fn empty_or_missing_tokens_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), " \n").unwrap();
        assert!(Token::resolve(Some("t"), dir.path(), None, dir.path()).is_err());
        assert!(Token::resolve(Some("nope"), dir.path(), None, dir.path()).is_err());
        assert!(Token::resolve(None, dir.path(), Some("  ".into()), dir.path()).is_err());
    }

    /// No `Authorization` header carries a line break: such a token would
    /// start `serve` and never match.
    #[test]
    fn a_token_of_two_lines_or_with_a_control_character_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "abc\ndef\n").unwrap();
        let e = Token::resolve(Some("t"), dir.path(), None, dir.path())
            .err()
            .unwrap();
        assert!(e.contains("more than one line"), "{e}");
        assert!(read_text(&dir.path().join("t")).is_err());
        let e = Token::resolve(None, dir.path(), Some("a\tb".into()), dir.path())
            .err()
            .unwrap();
        assert!(e.contains("control character"), "{e}");
    }

    #[test]
    fn a_token_file_others_can_read_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "s3cret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by_others(&path), Some(0o644));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(readable_by_others(&path), None);
    }

    #[test]
    fn compares_whole_tokens_only() {
        let t = Token::new("abc");
        assert!(t.matches(b"abc"));
        assert!(!t.matches(b"ab"));
        assert!(!t.matches(b"abcd"));
        assert!(!t.matches(b""));
    }
}
