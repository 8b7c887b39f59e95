//! Checks that span fields or touch the host (files, references between sections), each error named
//! by its key and, found through toml_edit's spans, its line.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::schema::{
    BackoffRuleConfig, Config, DomainPolicyConfig, ListenerAuth, ListenerConfig, ListenerTls,
    ProfileFile, RollupConfig,
};
use super::{ConfigError, line_of};

/// A step in a key path: a table key or an array index.
#[derive(Debug, Clone)]
enum Step {
    Key(&'static str),
    Index(usize),
    Name(String),
}

struct Checker<'a> {
    text: &'a str,
    document: Option<toml_edit::Document<String>>,
    errors: Vec<ConfigError>,
}

/// The line of a dotted key (`dkim[1].private_key`) in `text`, for errors found outside validation.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, indexes) = part.split_once('[').map_or((part, ""), |(n, i)| (n, i));
        path.push(Step::Name(name.to_string()));
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                path.push(Step::Index(i));
            }
        }
    }
    let checker = Checker {
        text,
        document: text.parse().ok(),
        errors: Vec::new(),
    };
    checker.line(&path)
}

impl Checker<'_> {
    fn error(&mut self, path: &[Step], message: impl Into<String>) {
        let key = path
            .iter()
            .map(|s| match s {
                Step::Key(k) => format!(".{k}"),
                Step::Name(k) => format!(".{k:?}"),
                Step::Index(i) => format!("[{i}]"),
            })
            .collect::<String>()
            .trim_start_matches('.')
            .to_string();
        let line = self.line(path);
        self.errors.push(ConfigError {
            key,
            line,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `path` that the document has.
    fn line(&self, path: &[Step]) -> Option<usize> {
        let document = self.document.as_ref()?;
        let mut item = document.as_item();
        let mut best = None;
        for step in path {
            let next = match step {
                Step::Key(k) => item.get(*k),
                Step::Name(k) => item.get(k.as_str()),
                Step::Index(i) => item.get(*i),
            };
            match next {
                Some(n) => item = n,
                None => break,
            }
            if let Some(span) = item.span() {
                best = Some(line_of(self.text, span.start));
            }
        }
        best
    }
}

pub(super) fn validate(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut c = Checker {
        text,
        document: toml_edit::Document::parse(text.to_string()).ok(),
        errors: Vec::new(),
    };
    check_server(config, &mut c);
    check_listeners(config, &mut c);
    check_delivery(config, &mut c);
    check_shaping(config, &mut c);
    check_metrics(config, &mut c);
    check_customers(config, &mut c);
    check_files(config, &mut c);
    check_api(config, &mut c);
    check_cluster(config, &mut c);
    check_webhooks(config, &mut c);
    check_reputation(config, &mut c);
    check_unsubscribe(config, &mut c);
    c.errors
}

fn check_server(config: &Config, c: &mut Checker) {
    use Step::Key;
    let s = &config.server;
    if s.hostname.is_empty() || s.hostname.contains(char::is_whitespace) {
        c.error(
            &[Key("server"), Key("hostname")],
            "must be a host name without spaces",
        );
    }
    if s.cores > 1024 {
        c.error(&[Key("server"), Key("cores")], "at most 1024");
    }
    if s.spool_dir.is_empty() {
        c.error(&[Key("server"), Key("spool_dir")], "must not be empty");
    }
    if !(1..=super::schema::MAX_BLOCKING_THREADS_PER_CORE).contains(&s.blocking_threads_per_core) {
        c.error(
            &[Key("server"), Key("blocking_threads_per_core")],
            format!("1 to {}", super::schema::MAX_BLOCKING_THREADS_PER_CORE),
        );
    }
    if !(-1..=super::schema::MAX_ALLOCATOR_PURGE_DELAY_MS).contains(&s.allocator_purge_delay_ms) {
        c.error(
            &[Key("server"), Key("allocator_purge_delay_ms")],
            format!(
                "-1 (never) or 0 to {}",
                super::schema::MAX_ALLOCATOR_PURGE_DELAY_MS
            ),
        );
    }
    if !super::schema::ACCOUNTING_FLUSH_MS_RANGE.contains(&s.accounting_flush_ms) {
        let range = super::schema::ACCOUNTING_FLUSH_MS_RANGE;
        c.error(
            &[Key("server"), Key("accounting_flush_ms")],
            format!("{} to {}", range.start(), range.end()),
        );
    }
    if s.max_connections == 0 || s.max_connections_per_ip == 0 {
        c.error(
            &[Key("server"), Key("max_connections")],
            "connection limits must be at least 1",
        );
    }
    let largest_message = config
        .listeners
        .iter()
        .map(|l| l.max_message_bytes as u64)
        .max()
        .unwrap_or(0);
    if s.max_message_bytes_in_flight < largest_message.max(1) {
        // A message that can never fit would get 452 (try again) for ever.
        c.error(
            &[Key("server"), Key("max_message_bytes_in_flight")],
            format!("must be at least the largest listener max_message_bytes ({largest_message})"),
        );
    }
    let sp = &config.spool;
    if !(1 << 20..=1 << 32).contains(&sp.segment_bytes) {
        c.error(
            &[Key("spool"), Key("segment_bytes")],
            "must be between 1 MiB and 4 GiB",
        );
    }
    if sp.max_spool_bytes < sp.segment_bytes {
        c.error(
            &[Key("spool"), Key("max_spool_bytes")],
            "must be at least segment_bytes",
        );
    }
    if sp.min_sync_interval_us > MAX_MIN_SYNC_INTERVAL_US {
        // Every 250 may wait this long on top of the fdatasync.
        c.error(
            &[Key("spool"), Key("min_sync_interval_us")],
            format!("must be at most {MAX_MIN_SYNC_INTERVAL_US} (10 ms)"),
        );
    }
    if sp.free_segment_files > MAX_FREE_SEGMENT_FILES {
        c.error(
            &[Key("spool"), Key("free_segment_files")],
            format!("must be at most {MAX_FREE_SEGMENT_FILES}"),
        );
    }
}

/// Most `[spool] free_segment_files`: a core switches segments one at a time, so a few spare
/// files cover any burst of reclaims; more would only hold disk.
const MAX_FREE_SEGMENT_FILES: usize = 64;

/// Longest `[spool] min_sync_interval_us`: what it adds to an answer must stay well under a client's
/// patience.
const MAX_MIN_SYNC_INTERVAL_US: u64 = 10_000;

fn check_listeners(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    if config.listeners.is_empty() {
        c.error(&[Key("listener")], "at least one [[listener]] is needed");
    }
    let mut seen = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = |k| [Key("listener"), Index(i), Key(k)];
        if !seen.insert(l.address) {
            c.error(&at("address"), format!("{} is used twice", l.address));
        }
        if l.auth != ListenerAuth::Off && l.tls == ListenerTls::None {
            c.error(
                &at("auth"),
                "AUTH is offered only over TLS: set tls = \"starttls\" or \"implicit\", or auth = \"off\"",
            );
        }
        if l.max_message_bytes < 1024 {
            c.error(&at("max_message_bytes"), "must be at least 1024");
        }
        if l.max_recipients == 0 {
            c.error(&at("max_recipients"), "must be at least 1");
        }
        if l.max_errors == 0 {
            c.error(&at("max_errors"), "must be at least 1");
        }
        for (key, value) in [
            ("command_timeout_ms", l.command_timeout_ms),
            ("data_timeout_ms", l.data_timeout_ms),
            ("tls_timeout_ms", l.tls_timeout_ms),
            ("write_timeout_ms", l.write_timeout_ms),
        ] {
            if value == 0 {
                c.error(&at(key), "must be at least 1 ms");
            }
        }
        check_proxy_protocol(i, l, c);
    }
}

/// The longest wait for a PROXY header: a proxy sends it with the connection, so more than a
/// minute only holds connections that will never send one.
const PROXY_TIMEOUT_MS_MAX: u64 = 60_000;

fn check_proxy_protocol(i: usize, l: &ListenerConfig, c: &mut Checker) {
    use Step::{Index, Key};
    let at = |k| [Key("listener"), Index(i), Key(k)];
    if l.proxy_protocol && l.trusted_proxies.is_empty() {
        c.error(
            &at("proxy_protocol"),
            "proxy_protocol = true needs trusted_proxies (the proxies' networks): \
             every connection would be closed",
        );
    }
    if !(1..=PROXY_TIMEOUT_MS_MAX).contains(&l.proxy_timeout_ms) {
        c.error(
            &at("proxy_timeout_ms"),
            format!("must be 1..={PROXY_TIMEOUT_MS_MAX}"),
        );
    }
}

fn check_delivery(config: &Config, c: &mut Checker) {
    use Step::{Index, Key, Name};
    let mut vmtas = HashSet::new();
    for (i, v) in config.vmtas.iter().enumerate() {
        if !vmtas.insert(v.name.as_str()) {
            c.error(&[Key("vmta"), Index(i), Key("name")], "name used twice");
        }
        if v.ehlo_hostname.is_empty() || v.ehlo_hostname.contains(char::is_whitespace) {
            c.error(
                &[Key("vmta"), Index(i), Key("ehlo_hostname")],
                "must be a host name without spaces",
            );
        }
        if v.weight == 0 {
            c.error(
                &[Key("vmta"), Index(i), Key("weight")],
                "must be at least 1",
            );
        }
    }
    let mut pools = HashSet::new();
    for (i, p) in config.pools.iter().enumerate() {
        if !pools.insert(p.name.as_str()) {
            c.error(&[Key("pool"), Index(i), Key("name")], "name used twice");
        }
        if p.vmtas.is_empty() {
            c.error(
                &[Key("pool"), Index(i), Key("vmtas")],
                "a pool needs at least one VMTA",
            );
        }
        for (j, v) in p.vmtas.iter().enumerate() {
            if !vmtas.contains(v.as_str()) {
                c.error(
                    &[Key("pool"), Index(i), Key("vmtas"), Index(j)],
                    format!("no [[vmta]] named {v:?}"),
                );
            }
        }
    }
    check_policy_entries(
        &config.domains,
        &config.backoff_rules,
        &config.rollups,
        &vmtas,
        c,
    );
    for (domain, hop) in &config.routes {
        if parse_next_hop(hop).is_none() {
            c.error(
                &[Key("routes"), Name(domain.clone())],
                format!("{hop:?} is not host:port"),
            );
        }
    }
}

/// Longest refusal window and time out of the pools for a refused VMTA: one week, in seconds.
const VMTA_REFUSAL_S_MAX: u64 = 7 * 86_400;
/// Most refusing domains that may be asked for (each is remembered until the count is reached).
const VMTA_REFUSAL_DOMAINS_MAX: u32 = 1_000;
/// The longest `[shaping] queue_idle_s`: an idle queue costs memory for no purpose past a day.
const QUEUE_IDLE_S_MAX: u64 = 86_400;

/// The most destinations `[metrics] top_destinations` may name: each is 5 series, and 4 sketch
/// slots per core.
pub const TOP_DESTINATIONS_MAX: usize = 1_000;

fn check_metrics(config: &Config, c: &mut Checker) {
    use Step::Key;
    if config.metrics.top_destinations > TOP_DESTINATIONS_MAX {
        c.error(
            &[Key("metrics"), Key("top_destinations")],
            format!("at most {TOP_DESTINATIONS_MAX} (0 = every destination counts as other)"),
        );
    }
}

fn check_shaping(config: &Config, c: &mut Checker) {
    use Step::Key;
    let s = &config.shaping;
    if !(1..=QUEUE_IDLE_S_MAX).contains(&s.queue_idle_s) {
        c.error(
            &[Key("shaping"), Key("queue_idle_s")],
            format!("must be between 1 and {QUEUE_IDLE_S_MAX} seconds"),
        );
    }
    if s.vmta_refusal_domains == 0 {
        return;
    }
    if s.vmta_refusal_domains > VMTA_REFUSAL_DOMAINS_MAX {
        c.error(
            &[Key("shaping"), Key("vmta_refusal_domains")],
            format!("at most {VMTA_REFUSAL_DOMAINS_MAX} (0 = never)"),
        );
    }
    for (key, value) in [
        ("vmta_refusal_window_s", s.vmta_refusal_window_s),
        ("vmta_refusal_out_s", s.vmta_refusal_out_s),
    ] {
        if !(1..=VMTA_REFUSAL_S_MAX).contains(&value) {
            c.error(
                &[Key("shaping"), Key(key)],
                format!("must be between 1 and {VMTA_REFUSAL_S_MAX} seconds"),
            );
        }
    }
}

/// The longest outbound deadline (`[[domain]] *_timeout_ms`) that may be set: one hour. Longer
/// would only hold a connection slot on a receiver that is not answering.
const DEADLINE_MS_MAX: u64 = 3_600_000;

/// Checks `[[domain]]`, `[[backoff]]` and `[[rollup]]` entries (of the file or of an include).
fn check_policy_entries(
    domains: &[DomainPolicyConfig],
    rules: &[BackoffRuleConfig],
    rollups: &[RollupConfig],
    vmtas: &HashSet<&str>,
    c: &mut Checker,
) {
    use Step::{Index, Key};
    for (i, d) in domains.iter().enumerate() {
        let at = |k| [Key("domain"), Index(i), Key(k)];
        if !valid_pattern(&d.pattern) {
            c.error(
                &at("match"),
                "expected a domain, \"*.example.com\" or \"*\"",
            );
        }
        if let Some(v) = d.vmta.as_deref()
            && v != "*"
            && !vmtas.contains(v)
        {
            c.error(&at("vmta"), format!("no [[vmta]] named {v:?}"));
        }
        if d.max_connections == Some(0) {
            c.error(&at("max_connections"), "must be at least 1");
        }
        if d.max_messages_per_connection == Some(0) {
            c.error(&at("max_messages_per_connection"), "must be at least 1");
        }
        if let Some(n) = d.transactions_in_flight
            && !(1..=crate::smtp::client::MAX_TRANSACTIONS_IN_FLIGHT).contains(&n)
        {
            c.error(
                &at("transactions_in_flight"),
                format!("1 to {}", crate::smtp::client::MAX_TRANSACTIONS_IN_FLIGHT),
            );
        }
        if d.backoff_max_connections == Some(0) {
            c.error(&at("backoff_max_connections"), "must be at least 1");
        }
        if d.backoff_max_messages_per_minute == Some(0) {
            c.error(&at("backoff_max_messages_per_minute"), "must be at least 1");
        }
        if d.backoff_recovery_deliveries == Some(0) {
            c.error(&at("backoff_recovery_deliveries"), "must be at least 1");
        }
        if d.max_messages_per_minute == Some(0) || d.max_messages_per_hour == Some(0) {
            c.error(
                &at("max_messages_per_minute"),
                "a rate limit must be at least 1 (leave it out for none)",
            );
        }
        let deadlines = [
            ("connect_timeout_ms", d.connect_timeout_ms),
            ("tls_timeout_ms", d.tls_timeout_ms),
            ("greeting_timeout_ms", d.greeting_timeout_ms),
            ("reply_timeout_ms", d.reply_timeout_ms),
            ("data_timeout_ms", d.data_timeout_ms),
            ("write_timeout_ms", d.write_timeout_ms),
        ];
        for (key, value) in deadlines {
            if let Some(ms) = value
                && !(1..=DEADLINE_MS_MAX).contains(&ms)
            {
                c.error(
                    &at(key),
                    format!("must be 1 to {DEADLINE_MS_MAX} ms (one hour)"),
                );
            }
        }
        if let Some(r) = &d.retry_intervals
            && (r.is_empty() || r.iter().any(|d| d.0.is_zero()))
        {
            c.error(
                &at("retry_intervals"),
                "needs at least one interval, each above zero",
            );
        }
    }
    for (i, r) in rules.iter().enumerate() {
        let at = |k| [Key("backoff"), Index(i), Key(k)];
        if r.pattern.trim().is_empty() {
            c.error(&at("pattern"), "must not be empty");
        }
        if let Some(d) = r.duration
            && d.0.is_zero()
        {
            c.error(&at("duration"), "must be above zero");
        }
        if let Some(p) = r.domain.as_deref()
            && !valid_pattern(p)
        {
            c.error(
                &at("match"),
                "expected a domain, \"*.example.com\" or \"*\"",
            );
        }
    }
    let mut grouped = HashSet::new();
    for (i, r) in rollups.iter().enumerate() {
        if r.name.starts_with('*') || !valid_pattern(&r.name) {
            c.error(&[Key("rollup"), Index(i), Key("name")], "expected a domain");
        }
        if r.domains.is_empty() && r.mx.is_empty() {
            c.error(
                &[Key("rollup"), Index(i), Key("domains")],
                "needs at least one domain or MX pattern (mx)",
            );
        }
        for (j, m) in r.mx.iter().enumerate() {
            if m == "*" || !valid_pattern(m) {
                c.error(
                    &[Key("rollup"), Index(i), Key("mx"), Index(j)],
                    "expected an MX host name or \"*.example.com\"",
                );
            }
        }
        for (j, d) in r.domains.iter().enumerate() {
            if d.starts_with('*') || !valid_pattern(d) {
                c.error(
                    &[Key("rollup"), Index(i), Key("domains"), Index(j)],
                    "expected a domain",
                );
            } else if !grouped.insert(d.to_ascii_lowercase()) {
                c.error(
                    &[Key("rollup"), Index(i), Key("domains"), Index(j)],
                    format!("{d} is in two rollups"),
                );
            }
        }
    }
}

/// Checks an included file against the including configuration (its VMTA names); each error's
/// key starts with `label` (the include's path) and its line is the included file's.
pub(super) fn validate_profile(
    profile: &ProfileFile,
    text: &str,
    label: &str,
    config: &Config,
) -> Vec<ConfigError> {
    let mut c = Checker {
        text,
        document: toml_edit::Document::parse(text.to_string()).ok(),
        errors: Vec::new(),
    };
    let vmtas: HashSet<&str> = config.vmtas.iter().map(|v| v.name.as_str()).collect();
    check_policy_entries(
        &profile.domains,
        &profile.backoff_rules,
        &profile.rollups,
        &vmtas,
        &mut c,
    );
    c.errors
        .into_iter()
        .map(|mut e| {
            e.key = format!("{label}: {}", e.key);
            e
        })
        .collect()
}

fn check_customers(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    let mut names = HashSet::new();
    for (i, cu) in config.customers.iter().enumerate() {
        let at = |k| [Key("customer"), Index(i), Key(k)];
        if !names.insert(cu.name.as_str()) {
            c.error(&at("name"), "name used twice");
        }
        if let Some(p) = cu.pool.as_deref()
            && !config.pools.iter().any(|pool| pool.name == p)
        {
            c.error(&at("pool"), format!("no [[pool]] named {p:?}"));
        }
        if let Some(h) = cu.password_hash.as_deref()
            && argon2::PasswordHash::new(h).is_err()
        {
            c.error(
                &at("password_hash"),
                "not a PHC string; make one with `volley hash-password`",
            );
        }
        if cu
            .max_bounce_percent
            .is_some_and(|p| !(1..=100).contains(&p))
        {
            c.error(&at("max_bounce_percent"), "must be 1 to 100");
        }
        if !(10..=1_000_000).contains(&cu.bounce_window_messages) {
            c.error(&at("bounce_window_messages"), "must be 10 to 1000000");
        }
    }
}

fn check_files(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    if let Some(tls) = &config.tls {
        for (key, path) in [
            ("certificate", &tls.certificate),
            ("private_key", &tls.private_key),
        ] {
            match path {
                Some(path) => {
                    if let Err(e) = std::fs::metadata(path) {
                        c.error(&[Key("tls"), Key(key)], format!("cannot read {path}: {e}"));
                    }
                }
                None if tls.certificate.is_some() || tls.private_key.is_some() => c.error(
                    &[Key("tls"), Key(key)],
                    "certificate and private_key go together",
                ),
                None => {}
            }
        }
        // Here only that each file is there; `transport_security::anchors::check` parses them.
        for (i, path) in tls.trust_anchors.iter().enumerate() {
            if let Err(e) = std::fs::metadata(path) {
                c.error(
                    &[Key("tls"), Key("trust_anchors"), Index(i)],
                    format!("cannot read {path}: {e}"),
                );
            }
        }
    }
    // Here only that the key file is there; `dkim::check_keys` parses it as the cores will (the
    // configuration stays below the modules that use it).
    for (i, d) in config.dkim.iter().enumerate() {
        if let Err(e) = std::fs::metadata(&d.private_key) {
            c.error(
                &[Key("dkim"), Index(i), Key("private_key")],
                format!("cannot read {}: {e}", d.private_key),
            );
        }
        if let Some(second) = &d.second_signature {
            if let Err(e) = std::fs::metadata(&second.private_key) {
                c.error(
                    &[
                        Key("dkim"),
                        Index(i),
                        Key("second_signature"),
                        Key("private_key"),
                    ],
                    format!("cannot read {}: {e}", second.private_key),
                );
            }
            if second.selector.trim() == d.selector.trim() {
                c.error(
                    &[
                        Key("dkim"),
                        Index(i),
                        Key("second_signature"),
                        Key("selector"),
                    ],
                    "must differ from the entry's own selector",
                );
            }
        }
    }
}

fn check_api(config: &Config, c: &mut Checker) {
    use Step::Key;
    if !config.api.address.ip().is_loopback() && config.api.token.is_empty() {
        c.error(
            &[Key("api"), Key("token")],
            "an API on a non-loopback address needs a token",
        );
    }
}

/// Bounds of `[cluster]` timings: a Redis call longer than 10 s, or a heartbeat rarer than a
/// minute, would leave limits and the registry stale for too long.
const MAX_REDIS_TIMEOUT_MS: u64 = 10_000;
const MAX_HEARTBEAT_MS: u64 = 60_000;

fn check_cluster(config: &Config, c: &mut Checker) {
    use Step::Key;
    let Some(cluster) = &config.cluster else {
        return;
    };
    let node_ok = !cluster.node.is_empty()
        && cluster.node.len() <= 64
        && cluster
            .node
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
    if !node_ok {
        c.error(
            &[Key("cluster"), Key("node")],
            "a node name is 1-64 letters, digits, '-', '_' or '.'",
        );
    }
    if !(cluster.redis.starts_with("redis://") || cluster.redis.starts_with("redis+unix://")) {
        c.error(
            &[Key("cluster"), Key("redis")],
            "a Redis URL starts with redis:// (or redis+unix://)",
        );
    }
    if !(1..=MAX_REDIS_TIMEOUT_MS).contains(&cluster.redis_timeout_ms) {
        c.error(
            &[Key("cluster"), Key("redis_timeout_ms")],
            format!("must be 1..={MAX_REDIS_TIMEOUT_MS}"),
        );
    }
    if !(100..=MAX_HEARTBEAT_MS).contains(&cluster.heartbeat_ms) {
        c.error(
            &[Key("cluster"), Key("heartbeat_ms")],
            format!("must be 100..={MAX_HEARTBEAT_MS}"),
        );
    }
}

fn valid_pattern(p: &str) -> bool {
    let domain = p.strip_prefix("*.").unwrap_or(p);
    p == "*"
        || (!domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-')))
}

/// A static next hop: `host:port` or `[v6]:port`; the host may be a name.
pub fn parse_next_hop(hop: &str) -> Option<(String, u16)> {
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = hop.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty() && !host.contains(':')).then(|| (host.to_string(), port))
}

// ---- Webhooks ----

/// `[[webhook]]` entries at most (one sender thread each).
pub const WEBHOOKS_MAX: usize = 16;
/// `batch_max_events` is 1..=this.
const WEBHOOK_BATCH_MAX: u32 = 10_000;
const WEBHOOK_TIMEOUT_MS_MAX: u64 = 300_000;
const WEBHOOK_SECRET_BYTES_MAX: usize = 1024;
const WEBHOOK_NAME_BYTES_MAX: usize = 2048;
/// The journal bound is at least this (its segments are an eighth of it).
const WEBHOOK_JOURNAL_BYTES_MIN: u64 = 1 << 20;

/// DNSBL zones at most (each costs a query per VMTA per round).
const DNSBL_ZONES_MAX: usize = 16;

fn check_reputation(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    let Some(r) = &config.reputation else {
        return;
    };
    if r.dnsbl.len() > DNSBL_ZONES_MAX {
        c.error(
            &[Key("reputation"), Key("dnsbl")],
            format!("at most {DNSBL_ZONES_MAX} zones"),
        );
    }
    for (i, zone) in r.dnsbl.iter().enumerate() {
        let name = zone.trim_end_matches('.');
        let valid = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            c.error(
                &[Key("reputation"), Key("dnsbl"), Index(i)],
                "must be a DNS zone name (e.g. \"zen.spamhaus.org\")",
            );
        }
    }
    if !(1..=7 * 86_400).contains(&r.check_interval_s) {
        c.error(
            &[Key("reputation"), Key("check_interval_s")],
            "must be 1 to 604800 seconds",
        );
    }
}

/// Unsubscribe keys at most (rotation needs two; a few more cost a MAC each per bad token).
const UNSUBSCRIBE_SECRETS_MAX: usize = 4;
/// A key shorter than this is guessable.
const UNSUBSCRIBE_SECRET_BYTES_MIN: usize = 16;

fn check_unsubscribe(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    let secrets = &config.unsubscribe.secrets;
    if secrets.len() > UNSUBSCRIBE_SECRETS_MAX {
        c.error(
            &[Key("unsubscribe"), Key("secrets")],
            format!("at most {UNSUBSCRIBE_SECRETS_MAX} (the first signs, the others verify)"),
        );
    }
    for (i, s) in secrets.iter().enumerate() {
        if s.len() < UNSUBSCRIBE_SECRET_BYTES_MIN {
            c.error(
                &[Key("unsubscribe"), Key("secrets"), Index(i)],
                format!("at least {UNSUBSCRIBE_SECRET_BYTES_MIN} bytes"),
            );
        }
    }
    for (i, customer) in config.customers.iter().enumerate() {
        let Some(url) = &customer.list_unsubscribe else {
            continue;
        };
        let at = [Key("customer"), Index(i), Key("list_unsubscribe")];
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || !url.contains("{token}")
            || url.len() > 500
            || url
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '>')
        {
            c.error(
                &at,
                "an http(s) URL of at most 500 bytes with {token} in it, e.g. \"https://unsub.example.net/u/{token}\"",
            );
        }
        if secrets.is_empty() {
            c.error(&at, "needs [unsubscribe] secrets to sign its tokens");
        }
    }
}

fn check_webhooks(config: &Config, c: &mut Checker) {
    use Step::{Index, Key};
    if config.webhooks.len() > WEBHOOKS_MAX {
        c.error(
            &[Key("webhook")],
            format!("at most {WEBHOOKS_MAX} webhooks"),
        );
    }
    let mut names = HashSet::new();
    for (i, w) in config.webhooks.iter().enumerate() {
        let at = |key| [Key("webhook"), Index(i), Key(key)];
        let name = w.name();
        if name.is_empty()
            || name.len() > WEBHOOK_NAME_BYTES_MAX
            || name.chars().any(char::is_control)
        {
            c.error(
                &at("name"),
                format!("a name is 1-{WEBHOOK_NAME_BYTES_MAX} bytes without control characters"),
            );
        }
        if !names.insert(name) {
            c.error(
                &at("name"),
                format!("webhook {name:?} twice (give each a distinct name)"),
            );
        }
        let scheme_ok = w.url.starts_with("http://") || w.url.starts_with("https://");
        let parsed = ureq::http::Uri::try_from(w.url.as_str());
        match parsed {
            Ok(uri) if scheme_ok && uri.host().is_some_and(|h| !h.is_empty()) => {}
            Ok(_) => c.error(&at("url"), "an http:// or https:// URL with a host"),
            Err(e) => c.error(&at("url"), format!("not a URL: {e}")),
        }
        if w.events.as_ref().is_some_and(|e| e.is_empty()) {
            c.error(
                &at("events"),
                "name at least one event type, or leave the key out for all",
            );
        }
        if !(1..=WEBHOOK_BATCH_MAX).contains(&w.batch_max_events) {
            c.error(
                &at("batch_max_events"),
                format!("must be 1..={WEBHOOK_BATCH_MAX}"),
            );
        }
        if w.secret.len() > WEBHOOK_SECRET_BYTES_MAX {
            c.error(
                &at("secret"),
                format!("at most {WEBHOOK_SECRET_BYTES_MAX} bytes"),
            );
        }
        if !(100..=WEBHOOK_TIMEOUT_MS_MAX).contains(&w.timeout_ms) {
            c.error(
                &at("timeout_ms"),
                format!("must be 100..={WEBHOOK_TIMEOUT_MS_MAX}"),
            );
        }
    }
    if config.webhook_journal.max_bytes < WEBHOOK_JOURNAL_BYTES_MIN {
        c.error(
            &[Key("webhook_journal"), Key("max_bytes")],
            format!("at least {WEBHOOK_JOURNAL_BYTES_MIN}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigErrors};

    fn errors(text: &str) -> ConfigErrors {
        Config::parse(text).expect_err("should be invalid")
    }

    #[test]
    fn blocking_threads_per_core_is_bounded_and_parsed() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[server]\n";
        for bad in [0, 65] {
            let e = errors(&format!("{base}blocking_threads_per_core = {bad}\n"));
            assert_eq!(e.0[0].key, "server.blocking_threads_per_core", "{e}");
        }
        let config = Config::parse(&format!(
            "{base}blocking_threads_per_core = 4\npin_blocking_threads = true\n"
        ))
        .unwrap();
        assert_eq!(config.server.blocking_threads_per_core, 4);
        assert!(config.server.pin_blocking_threads);
    }

    #[test]
    fn allocator_purge_delay_is_bounded_and_parsed() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[server]\n";
        for bad in [-2, 60_001] {
            let e = errors(&format!("{base}allocator_purge_delay_ms = {bad}\n"));
            assert_eq!(e.0[0].key, "server.allocator_purge_delay_ms", "{e}");
        }
        let default = Config::parse(base).unwrap();
        assert_eq!(default.server.allocator_purge_delay_ms, 10);
        let never = Config::parse(&format!("{base}allocator_purge_delay_ms = -1\n")).unwrap();
        assert_eq!(never.server.allocator_purge_delay_ms, -1);
    }

    #[test]
    fn accounting_flush_is_bounded_and_parsed() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[server]\n";
        for bad in [99, 60_001] {
            let e = errors(&format!("{base}accounting_flush_ms = {bad}\n"));
            assert_eq!(e.0[0].key, "server.accounting_flush_ms", "{e}");
        }
        assert_eq!(Config::parse(base).unwrap().server.accounting_flush_ms, 100);
        let slow = Config::parse(&format!("{base}accounting_flush_ms = 5000\n")).unwrap();
        assert_eq!(slow.server.accounting_flush_ms, 5000);
    }

    #[test]
    fn free_segment_files_are_bounded_and_parsed() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[spool]\n";
        let e = errors(&format!("{base}free_segment_files = 65\n"));
        assert_eq!(e.0[0].key, "spool.free_segment_files", "{e}");
        assert_eq!(
            Config::parse(base).unwrap().spool.free_segment_files,
            crate::spool::DEFAULT_FREE_SEGMENT_FILES
        );
        let none = Config::parse(&format!("{base}free_segment_files = 0\n")).unwrap();
        assert_eq!(none.spool.free_segment_files, 0);
    }

    #[test]
    fn min_sync_interval_is_bounded_and_parsed() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[spool]\n";
        let e = errors(&format!("{base}min_sync_interval_us = 10001\n"));
        assert_eq!(e.0[0].key, "spool.min_sync_interval_us", "{e}");
        assert_eq!(
            Config::parse(base).unwrap().spool.min_sync_interval_us,
            crate::spool::DEFAULT_MIN_SYNC_INTERVAL_US
        );
        let spaced = Config::parse(&format!("{base}min_sync_interval_us = 700\n")).unwrap();
        assert_eq!(spaced.spool.min_sync_interval_us, 700);
    }

    #[test]
    fn auth_without_tls_names_key_and_line() {
        let text =
            "[[listener]]\naddress = \"127.0.0.1:25\"\ntls = \"none\"\nauth = \"required\"\n";
        let e = errors(text);
        assert_eq!(e.0[0].key, "listener[0].auth");
        assert_eq!(e.0[0].line, Some(4), "{e}");
    }

    #[test]
    fn tls_trust_anchors_alone_and_certificate_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n[tls]\n";
        let config =
            Config::parse(&format!("{base}trust_anchors = [{:?}]\n", ca.display())).unwrap();
        assert_eq!(
            config.tls.unwrap().trust_anchors,
            [ca.display().to_string()]
        );
        let e = errors(&format!(
            "{base}trust_anchors = [\"/nonexistent/ca.pem\"]\n"
        ));
        assert_eq!(e.0[0].key, "tls.trust_anchors[0]", "{e}");
        let e = errors(&format!("{base}certificate = {:?}\n", ca.display()));
        assert_eq!(e.0[0].key, "tls.private_key", "{e}");
    }

    #[test]
    fn unknown_references() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[[vmta]]\nname = \"a\"\nsource_ip = \"127.0.0.2\"\nehlo_hostname = \"a.test\"\n\n[[pool]]\nname = \"p\"\nvmtas = [\"a\", \"b\"]\n\n[[customer]]\nname = \"c\"\npool = \"q\"\n";
        let e = errors(text);
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("pool[0].vmtas[1]", Some(11))), "{e}");
        assert!(keys.contains(&("customer[0].pool", Some(15))), "{e}");
    }

    #[test]
    fn bad_route_and_pattern() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n[[domain]]\nmatch = \"bad domain\"\n[routes]\n\"x.test\" = \"nope\"\n";
        let e = errors(text);
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("domain[0].match", Some(4))), "{e}");
        assert!(keys.contains(&("routes.\"x.test\"", Some(6))), "{e}");
    }

    #[test]
    fn bad_backoff_rule_and_rollup() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n[[backoff]]\npattern = \"\"\naction = \"backoff\"\n[[rollup]]\nname = \"g.test\"\ndomains = [\"a.test\", \"a.test\"]\n";
        let e = errors(text);
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("backoff[0].pattern", Some(4))), "{e}");
        assert!(keys.contains(&("rollup[0].domains[1]", Some(8))), "{e}");
    }

    #[test]
    fn bad_rollup_mx_and_refusal_window() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n[shaping]\nvmta_refusal_window_s = 0\nvmta_refusal_domains = 5000\n[[rollup]]\nname = \"g.test\"\nmx = [\"*.google.test\", \"*\", \"bad host\"]\n[[rollup]]\nname = \"h.test\"\n";
        let e = errors(text);
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(
            keys.contains(&("shaping.vmta_refusal_window_s", Some(4))),
            "{e}"
        );
        assert!(
            keys.contains(&("shaping.vmta_refusal_domains", Some(5))),
            "{e}"
        );
        assert!(keys.contains(&("rollup[0].mx[1]", Some(8))), "{e}");
        assert!(keys.contains(&("rollup[0].mx[2]", Some(8))), "{e}");
        assert!(keys.contains(&("rollup[1].domains", Some(9))), "{e}");
        assert_eq!(e.0.len(), 5, "{e}");
    }

    #[test]
    fn top_destinations_is_bounded() {
        for (value, ok) in [(0, true), (1_000, true), (1_001, false)] {
            let text = format!(
                "[[listener]]\naddress = \"127.0.0.1:25\"\n[metrics]\ntop_destinations = {value}\n"
            );
            match Config::parse(&text) {
                Ok(config) => {
                    assert!(ok, "{value}");
                    assert_eq!(config.metrics.top_destinations, value);
                }
                Err(e) => {
                    assert!(!ok, "{value}: {e}");
                    let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
                    assert_eq!(keys, ["metrics.top_destinations"]);
                }
            }
        }
        let config = Config::parse("[[listener]]\naddress = \"127.0.0.1:25\"\n").unwrap();
        assert_eq!(config.metrics.top_destinations, 50);
    }

    #[test]
    fn queue_idle_s_is_bounded() {
        for (value, ok) in [(0, false), (1, true), (86_400, true), (86_401, false)] {
            let text = format!(
                "[[listener]]\naddress = \"127.0.0.1:25\"\n[shaping]\nqueue_idle_s = {value}\n"
            );
            let keys: Vec<String> = match Config::parse(&text) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.key.clone()).collect(),
            };
            assert_eq!(keys.is_empty(), ok, "{value}: {keys:?}");
            if !ok {
                assert_eq!(keys, ["shaping.queue_idle_s"], "{value}");
            }
        }
    }

    #[test]
    fn message_bytes_in_flight_holds_the_largest_message() {
        // The listener's default max_message_bytes is 50 MiB.
        for (value, ok) in [(52_428_799u64, false), (52_428_800, true), (1 << 30, true)] {
            let text = format!(
                "[server]\nmax_message_bytes_in_flight = {value}\n[[listener]]\naddress = \"127.0.0.1:25\"\n"
            );
            let keys: Vec<String> = match Config::parse(&text) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.key.clone()).collect(),
            };
            assert_eq!(keys.is_empty(), ok, "{value}: {keys:?}");
            if !ok {
                assert_eq!(keys, ["server.max_message_bytes_in_flight"], "{value}");
            }
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\nproxy_protocol = true\n";
        let e = errors(base);
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(keys, [("listener[0].proxy_protocol", Some(3))], "{e}");
        let trusted = format!("{base}trusted_proxies = [\"127.0.0.1/32\"]\n");
        let config = Config::parse(&trusted).expect("valid");
        assert_eq!(config.listeners[0].proxy_timeout_ms, 5_000);
        // Trusted proxies without the protocol are harmless.
        assert!(
            Config::parse(
                "[[listener]]\naddress = \"127.0.0.1:25\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn proxy_timeout_is_bounded() {
        for (value, ok) in [(0, false), (1, true), (60_000, true), (60_001, false)] {
            let text =
                format!("[[listener]]\naddress = \"127.0.0.1:25\"\nproxy_timeout_ms = {value}\n");
            let keys: Vec<String> = match Config::parse(&text) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.key.clone()).collect(),
            };
            assert_eq!(keys.is_empty(), ok, "{value}: {keys:?}");
            if !ok {
                assert_eq!(keys, ["listener[0].proxy_timeout_ms"], "{value}");
            }
        }
    }

    #[test]
    fn next_hops() {
        assert_eq!(
            super::parse_next_hop("127.0.0.1:2526"),
            Some(("127.0.0.1".into(), 2526))
        );
        assert_eq!(
            super::parse_next_hop("mx.example.test:25"),
            Some(("mx.example.test".into(), 25))
        );
        assert_eq!(super::parse_next_hop("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(super::parse_next_hop("nope"), None);
    }

    #[test]
    fn webhook_entries_are_checked() {
        let base = "[[listener]]\naddress = \"127.0.0.1:25\"\n";
        let ok = format!(
            "{base}[[webhook]]\nname = \"cp\"\nurl = \"https://cp.example/e\"\nevents = [\"bounce\"]\n[[webhook]]\nurl = \"http://127.0.0.1:9/e\"\n"
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.webhooks[0].name(), "cp");
        assert_eq!(c.webhooks[1].name(), "http://127.0.0.1:9/e");
        assert_eq!(c.webhooks[1].batch_max_events, 100);
        let e = errors(&format!(
            "{base}[[webhook]]\nname = \"a\"\nurl = \"ftp://x/\"\nbatch_max_events = 0\nevents = []\n\n[[webhook]]\nname = \"a\"\nurl = \"https://x.example/\"\nbatch_max_events = 10001\ntimeout_ms = 5\n[webhook_journal]\nmax_bytes = 1000\n"
        ));
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhook[0].url",
                "webhook[0].events",
                "webhook[0].batch_max_events",
                "webhook[1].name",
                "webhook[1].batch_max_events",
                "webhook[1].timeout_ms",
                "webhook_journal.max_bytes"
            ],
            "{e}"
        );
        assert_eq!(e.0[0].line, Some(5), "{e}");
        assert!(
            Config::parse(&format!(
                "{base}[[webhook]]\nurl = \"https://cp.example/e\"\nevents = [\"nonsense\"]\n"
            ))
            .is_err()
        );
    }
}
