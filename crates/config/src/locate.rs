//! Finding a key path (`route[1].pool`, `pool.auth.backends[0].weight`) in
//! a config's source, so that a report about a compiled snapshot (a broken
//! standard, a diff) can point at the config line responsible.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// 1-based line and column of the value at `key_path` in `source`, or of
/// the nearest enclosing item that exists; `None` if the source does not
/// parse or the path's first key is absent.
pub fn locate(source: &str, key_path: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse(source).ok()?;
    let mut node: Option<&Spanned<DeValue<'_>>> = None;
    let mut span = None;
    for step in steps(key_path) {
        let next = match (&step, node) {
            (Step::Key(k), None) => root.get_ref().get(k.as_str()),
            (Step::Key(k), Some(n)) => n.get_ref().as_table().and_then(|t| t.get(k.as_str())),
            (Step::Index(i), Some(n)) => n.get_ref().as_array().and_then(|a| a.get(*i)),
            (Step::Index(_), None) => None,
        };
        match next {
            Some(n) => {
                span = Some(n.span());
                node = Some(n);
            }
            None => break,
        }
    }
    let start = span?.start;
    let before = &source[..start.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

enum Step {
    Key(String),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Step::Key(key.to_owned()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Step::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_falls_back_to_the_item() {
        let src = "[[route]]\nname = \"a\"\npool = \"x\"\n\n[pool.x]\nbackends = [{ addr = \"1.2.3.4:80\", weight = 3 }]\n";
        assert_eq!(locate(src, "route[0].pool"), Some((3, 8)));
        assert_eq!(locate(src, "pool.x.backends[0].weight"), Some((6, 45)));
        // Absent key: the enclosing `[pool.x]` table header.
        assert_eq!(locate(src, "pool.x.algorithm"), Some((5, 1)));
        assert_eq!(locate(src, "admin.listen"), None);
    }
}
