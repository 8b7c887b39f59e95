//! Configuration: the TOML schema, validation that names each error's key and line, the embedded
//! default, and the lookups the engine makes in it (customer → pool → VMTA, domain → policy).

mod duration;
mod network;
mod policy;
mod schema;
mod validate;

use std::fmt;
use std::path::Path;

pub use duration::ConfigDuration;
pub use network::Network;
pub use policy::DomainPolicy;
pub use schema::*;
pub use validate::parse_next_hop;

/// The configuration Volley runs on without `--config`: loopback only.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `listener[1].address`; empty for a file-level problem.
    pub key: String,
    /// 1-based line, when the key can be found in the text.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![ConfigError {
                key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
                line,
                message: e.message().trim().to_string(),
            }])
        })?;
        let errors = validate::validate(&config, text);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Checks a configuration changed in memory (API edits); errors carry keys but no lines.
    pub fn revalidate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self, "");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// The embedded default, which always validates (a unit test holds it to that).
    pub fn embedded_default() -> Config {
        match Config::parse(EMBEDDED_DEFAULT) {
            Ok(c) => c,
            Err(e) => panic!("the embedded default configuration is invalid: {e}"),
        }
    }

    /// Executors to run: `server.cores`, or every available core when 0.
    pub fn core_count(&self) -> usize {
        match self.server.cores {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    pub fn customer(&self, name: &str) -> Option<&CustomerConfig> {
        self.customers.iter().find(|c| c.name == name)
    }

    pub fn vmta(&self, name: &str) -> Option<&VmtaConfig> {
        self.vmtas.iter().find(|v| v.name == name)
    }

    /// The pool for mail of `customer` (empty = none): the customer's pool, else the pool named
    /// `default`, else the first pool; `None` when the file has no pool at all.
    pub fn pool_for(&self, customer: &str) -> Option<&PoolConfig> {
        let named = self
            .customer(customer)
            .and_then(|c| c.pool.as_deref())
            .and_then(|p| self.pools.iter().find(|pool| pool.name == p));
        named
            .or_else(|| self.pools.iter().find(|p| p.name == "default"))
            .or_else(|| self.pools.first())
    }
}

/// The dotted key path (`listener[0].tls`) of the key or value at a byte offset, for errors that
/// serde reports with a span only; empty when no key covers it.
fn key_at(text: &str, offset: usize) -> String {
    fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    fn search(table: &toml_edit::Table, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, item) in table.iter() {
            path.push(key.to_string());
            let key_span = table.key(key).and_then(toml_edit::Key::span);
            let found = match item {
                toml_edit::Item::Table(t) => search(t, offset, path),
                toml_edit::Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
                    path.push(format!("[{i}]"));
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
        return String::new();
    };
    let mut path = Vec::new();
    if !search(document.as_table(), offset, &mut path) {
        return String::new();
    }
    path.iter().fold(String::new(), |mut out, step| {
        if !step.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(step);
        out
    })
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_their_key() {
        let text = "[server]\ncores = 1\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\n[[listener]]\naddress = \"127.0.0.1:2526\"\ntls = \"sometimes\"\n";
        let errors = Config::parse(text).unwrap_err();
        assert_eq!(errors.0[0].key, "listener[1].tls", "{errors}");
        assert_eq!(errors.0[0].line, Some(9), "{errors}");
    }

    #[test]
    fn embedded_default_is_valid_and_loopback_only() {
        let c = Config::parse(EMBEDDED_DEFAULT).expect("default parses");
        assert_eq!(c.listeners.len(), 3);
        for l in &c.listeners {
            assert!(
                l.address.ip().is_loopback(),
                "{} is not loopback",
                l.address
            );
        }
        assert!(c.api.address.ip().is_loopback());
        assert_eq!(c.pool_for("").map(|p| p.name.as_str()), Some("default"));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let text = "[server]\nhostname = \"a\"\ncores = \"many\"\n";
        let err = Config::parse(text).unwrap_err();
        assert_eq!(err.0[0].line, Some(3), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let text = "[server]\nhostname = \"a\"\nhostnme = \"b\"\n";
        let err = Config::parse(text).unwrap_err();
        assert_eq!(err.0[0].line, Some(3), "{err}");
        assert!(err.0[0].message.contains("hostnme"), "{err}");
    }
}
