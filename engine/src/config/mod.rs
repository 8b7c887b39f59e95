//! Configuration: the TOML schema, validation that names each error's key and line, the embedded
//! default, and the lookups the engine makes in it (customer → pool → VMTA, domain → policy).

mod domain_policy;
mod duration;
pub mod entries;
mod network;
pub mod overlay;
mod reload;
mod schema;
mod shape;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use domain_policy::{DEFAULT_SUSPEND, Deadlines, DomainPolicy, ReplyVerdict, rollup_of};
pub use duration::ConfigDuration;
pub use network::Network;
pub use reload::keys_needing_restart;
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

/// A destination pattern (`*`, `*.suffix` or a domain) in the form recipient domains take.
pub fn normalize_pattern(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(suffix) => format!("*.{}", crate::envelope::normalize_domain(suffix)),
        None if pattern == "*" => pattern.to_string(),
        None => crate::envelope::normalize_domain(pattern),
    }
}

impl Config {
    /// The `[tls] trust_anchors` files (none without `[tls]`).
    pub fn trust_anchor_files(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(|t| t.trust_anchors.clone())
            .unwrap_or_default()
    }

    /// Parses and validates a configuration text; includes are relative to the working directory.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_in(text, None)
    }

    /// Parses and validates a configuration text whose includes are relative to `base`.
    pub fn parse_in(text: &str, base: Option<&Path>) -> Result<Config, ConfigErrors> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigErrors(shape::every_error(text, e)))?;
        config.normalize_domains();
        let mut errors = validate::validate(&config, text);
        errors.extend(config.merge_includes(text, base));
        config.normalize_domains();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads each `include` and merges its entries: included `[[domain]]` entries go before this
    /// file's (so this file's win at equal specificity), included `[[backoff]]` and `[[rollup]]`
    /// entries after (the first match wins). Returns the problems found, keyed by the include.
    fn merge_includes(&mut self, text: &str, base: Option<&Path>) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut domains = Vec::new();
        for (i, name) in self.include.clone().iter().enumerate() {
            let path = base.map_or_else(|| PathBuf::from(name), |b| b.join(name));
            let include_line = text.find(&format!("\"{name}\"")).map(|o| line_of(text, o));
            let included = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError {
                        key: format!("include[{i}]"),
                        line: include_line,
                        message: format!("cannot read {}: {e}", path.display()),
                    });
                    continue;
                }
            };
            let profile: ProfileFile = match toml::from_str(&included) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(ConfigError {
                        key: name.clone(),
                        line: e.span().map(|s| line_of(&included, s.start)),
                        message: e.message().trim().to_string(),
                    });
                    continue;
                }
            };
            errors.extend(validate::validate_profile(&profile, &included, name, self));
            domains.extend(profile.domains);
            self.backoff_rules.extend(profile.backoff_rules);
            self.rollups.extend(profile.rollups);
        }
        domains.append(&mut self.domains);
        self.domains = domains;
        errors
    }

    /// Puts every destination name of the configuration (`[routes]` keys, `[[domain]]` and
    /// `[[backoff]]` matches, `[[rollup]]` domains) in the form recipient domains take
    /// (`envelope::normalize_domain`): a route or policy written `Example.COM.` or as a U-label
    /// applies to the queue of `example.com` or its A-label. Idempotent.
    pub fn normalize_domains(&mut self) {
        let pattern = normalize_pattern;
        self.routes = std::mem::take(&mut self.routes)
            .into_iter()
            .map(|(domain, hop)| (crate::envelope::normalize_domain(&domain), hop))
            .collect();
        for d in &mut self.domains {
            d.pattern = pattern(&d.pattern);
        }
        for b in &mut self.backoff_rules {
            b.domain = b.domain.as_deref().map(pattern);
        }
        for r in &mut self.rollups {
            for d in &mut r.domains {
                *d = crate::envelope::normalize_domain(d);
            }
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

    /// Reads, parses and validates a file, then runs `check` (checks of modules the configuration
    /// must not depend on, e.g. that DKIM keys parse); its errors get their line in the file.
    pub fn load_checked(
        path: &Path,
        check: impl Fn(&Config) -> Vec<ConfigError>,
    ) -> Result<Config, ConfigErrors> {
        let config = Config::load(path)?;
        let mut errors = check(&config);
        if errors.is_empty() {
            return Ok(config);
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for e in &mut errors {
            e.line = e.line.or_else(|| validate::line_of_key(&text, &e.key));
        }
        Err(ConfigErrors(errors))
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
        Config::parse_in(&text, path.parent())
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
    #[test]
    fn route_and_policy_names_take_the_recipient_domain_form() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[routes]\n\"Bücher.Example.\" = \"127.0.0.1:2526\"\n\"MiXed.Test\" = \"127.0.0.1:2527\"\n\n[[domain]]\nmatch = \"*.EXAMPLE.com\"\nmax_connections = 3\n";
        let c = Config::parse(text).unwrap();
        let domain = crate::envelope::domain_of("x@bücher.example");
        assert_eq!(
            c.routes.get(&domain).map(String::as_str),
            Some("127.0.0.1:2526")
        );
        assert!(
            c.routes
                .contains_key(&crate::envelope::domain_of("x@mixed.TEST"))
        );
        assert_eq!(c.policy_for("v", "mx.example.com").queue.max_connections, 3);
        let mut again = c.clone();
        again.normalize_domains();
        assert_eq!(again.routes, c.routes);
    }

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
    fn includes_merge_and_main_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "[[domain]]\nmatch = \"gmail.com\"\nmax_connections = 3\nmax_messages_per_minute = 7\n[[backoff]]\npattern = \"4.7.28\"\naction = \"backoff\"\n",
        )
        .unwrap();
        let main = "include = [\"p.toml\"]\n[[listener]]\naddress = \"127.0.0.1:25\"\n[[domain]]\nmatch = \"gmail.com\"\nmax_connections = 5\n";
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, main).unwrap();
        let c = Config::load(&path).unwrap();
        let p = c.policy_for("v", "gmail.com");
        assert_eq!(p.queue.max_connections, 5);
        assert_eq!(p.queue.max_messages_per_minute, Some(7));
        assert!(c.backoff_verdict("gmail.com", "421 4.7.28 rate").is_some());
    }

    #[test]
    fn include_errors_name_file_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "[[domain]]\nmatch = \"gmail.com\"\n\nmax_connections = 0\n",
        )
        .unwrap();
        let main =
            "include = [\"p.toml\", \"missing.toml\"]\n[[listener]]\naddress = \"127.0.0.1:25\"\n";
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, main).unwrap();
        let e = Config::load(&path).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(
            keys.contains(&("p.toml: domain[0].max_connections", Some(4))),
            "{e}"
        );
        assert!(keys.contains(&("include[1]", Some(1))), "{e}");
    }

    #[test]
    fn shipped_profiles_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/profiles");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        assert!(names.len() >= 8, "{names:?}");
        let include: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        let main = format!(
            "include = [{}]\n[[listener]]\naddress = \"127.0.0.1:25\"\n",
            include.join(", ")
        );
        let c = Config::parse_in(&main, Some(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.policy_for("v", "gmail.com")
                .queue
                .max_messages_per_minute
                .is_some()
        );
        assert_eq!(rollup_of(&c, "googlemail.com"), "gmail.com");
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
