//! Diagnostics: what is wrong with a config, where, and how to fix it; plus
//! the collector that turns byte spans into line:col and the did-you-mean
//! helper every stage shares.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One problem in a config file. Every serialized field is part of the
/// stable `--format json` output of `fulcrum check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable kebab-case identifier, e.g. `unknown-pool`.
    pub code: &'static str,
    pub message: String,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// Where in the config, e.g. `route[2].pool`.
    pub key_path: String,
    pub hint: Option<String>,
    /// Byte range of the offending key or value in the source, when known;
    /// only used to underline it, so not part of the JSON output.
    #[serde(skip)]
    pub span: Option<Range<usize>>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The one-line form, for logs:
/// `fulcrum.toml:14:8: error[unknown-pool] route[1].pool: no pool named `auht` (hint: did you mean `auth`?)`
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}] ",
            self.file,
            self.line,
            self.col,
            self.severity.as_str(),
            self.code
        )?;
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one source file, resolving byte offsets to
/// line:col once, so the stages only deal in spans and key paths.
pub(crate) struct Diags<'s> {
    file: String,
    source: &'s str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    pub(crate) list: Vec<Diagnostic>,
}

impl<'s> Diags<'s> {
    pub(crate) fn new(file: &str, source: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diags {
            file: file.to_owned(),
            source,
            line_starts,
            list: Vec::new(),
        }
    }

    /// The text being checked.
    pub(crate) fn source(&self) -> &'s str {
        self.source
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        // A span may start mid-character only if the parser says so; count
        // what is safely there rather than panic on a bad boundary.
        let col = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    pub(crate) fn error(
        &mut self,
        code: &'static str,
        span: Option<Range<usize>>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Error, code, span, key_path.into(), message.into())
    }

    pub(crate) fn warning(
        &mut self,
        code: &'static str,
        span: Option<Range<usize>>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(
            Severity::Warning,
            code,
            span,
            key_path.into(),
            message.into(),
        )
    }

    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        span: Option<Range<usize>>,
        key_path: String,
        message: String,
    ) -> &mut Diagnostic {
        let (line, col) = self.line_col(span.as_ref().map_or(0, |s| s.start));
        self.list.push(Diagnostic {
            severity,
            code,
            message,
            file: self.file.clone(),
            line,
            col,
            key_path,
            hint: None,
            span,
        });
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.list.iter().any(Diagnostic::is_error)
    }

    /// In file order; at one position, errors before warnings; findings
    /// about the whole file (no span, such as `no-route`) last. The sort is
    /// stable, so diagnostics at the same spot keep the order they were found.
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|d| {
            (
                d.span.is_none(),
                d.line,
                d.col,
                std::cmp::Reverse(d.severity),
            )
        });
        self.list
    }
}

impl Diagnostic {
    pub(crate) fn hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely
/// typo rather than a different name.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lc = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word_lc, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|&(d, c)| d <= 2.max(c.chars().count() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// "`a`, `b`, `c`": for hints that list the valid values.
pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "did you mean `x`?" when one is close, else the list of valid values.
pub(crate) fn suggest(word: &str, valid: &[&str], what: &str) -> String {
    match did_you_mean(word, valid.iter().copied()) {
        Some(m) => format!("did you mean `{m}`?"),
        None if valid.is_empty() => format!("there are no valid {what}"),
        None => format!("valid {what}: {}", list(valid)),
    }
}
