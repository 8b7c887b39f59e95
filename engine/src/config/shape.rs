//! Errors in the shape of a configuration text (a value of the wrong type, an unknown key): serde
//! stops at the first, so each one found is removed from the text and the text read again, until
//! it reads or `SHAPE_ERRORS_MAX` are listed. A TOML syntax error stops the parser itself: only
//! that one can be named.

use super::{Config, ConfigError, line_of, validate};

/// Errors listed for one file at most; past it the rest go unnamed.
pub const SHAPE_ERRORS_MAX: usize = 50;

/// One step of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every shape error of `text`, `first` being what deserializing it gave.
pub(super) fn every_error(text: &str, first: toml::de::Error) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut current = text.to_string();
    let mut error = first;
    loop {
        let path = error
            .span()
            .map(|s| path_at(&current, s.start))
            .unwrap_or_default();
        let key = render(&path);
        // Lines are the original text's: the first error's from its span, later ones by key
        // (removals above them moved the span's line).
        let line = if errors.is_empty() {
            error.span().map(|s| line_of(text, s.start))
        } else {
            validate::line_of_key(text, &key)
        };
        errors.push(ConfigError {
            key,
            line,
            message: error.message().trim().to_string(),
        });
        if errors.len() >= SHAPE_ERRORS_MAX {
            break;
        }
        // Only a key's value can go without shifting what comes after (removing a whole
        // `[[listener]]` would renumber the next ones): an error about a whole entry ends the list.
        let Some(next) = without(&current, &path) else {
            break;
        };
        current = next;
        match toml::from_str::<Config>(&current) {
            Ok(_) => break,
            Err(e) => error = e,
        }
    }
    // In the file's order, as a reader fixes them (serde finds them in the schema's order).
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    errors
}

/// `listener[0].tls` for a path.
fn render(path: &[Step]) -> String {
    path.iter().fold(String::new(), |mut out, step| {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
        out
    })
}

/// The path of the key or value at a byte offset; empty when no key covers it.
fn path_at(text: &str, offset: usize) -> Vec<Step> {
    fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    fn search(table: &toml_edit::Table, offset: usize, path: &mut Vec<Step>) -> bool {
        for (key, item) in table.iter() {
            path.push(Step::Key(key.to_string()));
            let key_span = table.key(key).and_then(toml_edit::Key::span);
            let found = match item {
                toml_edit::Item::Table(t) => search(t, offset, path),
                toml_edit::Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
                    path.push(Step::Index(i));
                    let found = search(t, offset, path);
                    if !found {
                        path.pop();
                    }
                    found
                }),
                toml_edit::Item::Value(v) => covers(v.span(), offset),
                toml_edit::Item::None => false,
            };
            if found || covers(key_span, offset) {
                return true;
            }
            path.pop();
        }
        false
    }
    let Ok(document) = toml_edit::Document::parse(text.to_string()) else {
        return Vec::new();
    };
    let mut path = Vec::new();
    if !search(document.as_table(), offset, &mut path) {
        path.clear();
    }
    path
}

/// `text` without the key at `path`, when the path ends at a key whose value is not a table of
/// its own.
fn without(text: &str, path: &[Step]) -> Option<String> {
    let (Step::Key(last), parents) = path.split_last()? else {
        return None;
    };
    let mut document: toml_edit::DocumentMut = text.parse().ok()?;
    let mut table = document.as_table_mut();
    let mut steps = parents.iter().peekable();
    while let Some(step) = steps.next() {
        let Step::Key(k) = step else {
            return None;
        };
        table = match table.get_mut(k)? {
            toml_edit::Item::Table(t) => t,
            toml_edit::Item::ArrayOfTables(a) => match steps.next() {
                Some(Step::Index(i)) => a.get_mut(*i)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    let removed = table.remove(last)?;
    if removed.is_table() || removed.is_array_of_tables() {
        return None;
    }
    Some(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wrong_value_and_unknown_key_is_listed_with_its_line() {
        let text = "[server]\ncores = \"two\"\nhostname = 7\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"sometimes\"\nnonsense = 1\n";
        let errors = Config::parse(text).unwrap_err().0;
        let keys: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("server.cores", Some(2)),
                ("server.hostname", Some(3)),
                ("listener[0].tls", Some(7)),
                ("listener[0].nonsense", Some(8)),
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_syntax_error_is_the_only_one_named() {
        let errors = Config::parse("[server\ncores = \"two\"\n").unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(1));
    }

    #[test]
    fn the_list_is_bounded() {
        let mut text = String::from("[server]\n");
        for i in 0..(SHAPE_ERRORS_MAX + 10) {
            text.push_str(&format!("unknown_{i} = 1\n"));
        }
        let errors = Config::parse(&text).unwrap_err().0;
        assert_eq!(errors.len(), SHAPE_ERRORS_MAX);
    }
}
