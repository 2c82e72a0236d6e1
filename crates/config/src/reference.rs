//! The reference tables of `docs/`, compiled in, so that what a tool says
//! about a diagnostic code or a rule assertion (SARIF rule descriptions,
//! the rules file's JSON Schema) is the documentation itself, never a
//! second copy of it that could drift.

const CONFIG_MD: &str = include_str!("../../../docs/config.md");
const STANDARDS_MD: &str = include_str!("../../../docs/standards.md");

/// One diagnostic code, from docs/config.md's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeDoc {
    pub severity: &'static str,
    pub meaning: &'static str,
    pub fix: &'static str,
}

/// The cells of each table row of `md`, trimmed.
fn rows(md: &'static str) -> impl Iterator<Item = Vec<&'static str>> {
    md.lines().filter_map(|l| {
        let inner = l.trim().strip_prefix('|')?.strip_suffix('|')?;
        let cells: Vec<&str> = inner.split(" | ").map(str::trim).collect();
        (cells.len() >= 2 && !cells[0].starts_with("---")).then_some(cells)
    })
}

/// The names a first cell holds: "`a`, `b`" or "`a = true`".
fn names(cell: &'static str) -> impl Iterator<Item = &'static str> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|n| n.split(" = ").next().unwrap_or(n))
}

/// What docs/config.md says of a diagnostic code.
pub fn code(code: &str) -> Option<CodeDoc> {
    rows(CONFIG_MD)
        .filter(|c| c.len() == 4 && matches!(c[1], "error" | "warning"))
        .find(|c| names(c[0]).any(|n| n == code))
        .map(|c| CodeDoc {
            severity: c[1],
            meaning: c[2],
            fix: c[3],
        })
}

/// What docs/standards.md says a rule key means.
pub fn rule_key(key: &str) -> Option<&'static str> {
    rows(STANDARDS_MD)
        .filter(|c| matches!(c.len(), 2 | 3))
        .find(|c| names(c[0]).any(|n| n == key))
        .map(|c| c[c.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the crate reports, found in its own source: literal codes
    /// passed to `error`/`warning`, and the duplicate-name codes passed on.
    fn reported() -> Vec<String> {
        let sources = [
            include_str!("raw.rs"),
            include_str!("validate.rs"),
            include_str!("tls.rs"),
            include_str!("standards.rs"),
            include_str!("lib.rs"),
        ];
        let mut out = vec![
            "duplicate-listener".to_owned(),
            "duplicate-route".to_owned(),
        ];
        for s in sources {
            for (i, _) in s
                .match_indices(".error(")
                .chain(s.match_indices(".warning("))
            {
                let rest = s[i..].split_once('(').map_or("", |x| x.1).trim_start();
                if let Some(code) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    out.push(code.to_owned());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn every_code_is_documented() {
        let codes = reported();
        assert!(codes.len() > 40, "{codes:?}");
        for c in codes {
            assert!(
                code(&c).is_some(),
                "diagnostic code `{c}` has no row in docs/config.md#diagnostics"
            );
        }
        let mut rows: Vec<&str> = super::rows(CONFIG_MD)
            .filter(|c| c.len() == 4 && matches!(c[1], "error" | "warning"))
            .flat_map(|c| names(c[0]))
            .collect();
        let n = rows.len();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), n, "a code has two rows in docs/config.md");
        let d = code("unknown-pool").unwrap();
        assert_eq!(d.severity, "error");
        assert!(d.fix.contains("did-you-mean"), "{d:?}");
    }

    #[test]
    fn every_rule_key_is_documented() {
        for k in crate::standards::RULE_KEYS {
            assert!(
                rule_key(k).is_some(),
                "rule key `{k}` has no row in docs/standards.md"
            );
        }
        assert!(rule_key("connect_timeout").unwrap().contains("range"));
        assert!(
            rule_key("every_pool_used")
                .unwrap()
                .starts_with("Every pool")
        );
    }
}
