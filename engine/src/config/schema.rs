//! The TOML schema, as serde types. Defaults live here; cross-field checks live in `validate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::duration::ConfigDuration;
use super::network::Network;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Files whose `[[domain]]`, `[[backoff]]` and `[[rollup]]` entries are merged in (provider
    /// profiles), relative to this file. Entries of this file win over included ones.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub tls: Option<TlsSection>,
    #[serde(default, rename = "customer")]
    pub customers: Vec<CustomerConfig>,
    #[serde(default, rename = "vmta")]
    pub vmtas: Vec<VmtaConfig>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainPolicyConfig>,
    /// Reply patterns that put a queue in backoff or suspend it; the first match wins.
    #[serde(default, rename = "backoff")]
    pub backoff_rules: Vec<BackoffRuleConfig>,
    /// Domains that share one queue, and so one set of limits, per VMTA (MX rollup).
    #[serde(default, rename = "rollup")]
    pub rollups: Vec<RollupConfig>,
    #[serde(default)]
    pub shaping: ShapingSection,
    #[serde(default)]
    pub dns: DnsSection,
    /// MTA-STS (RFC 8461) for outbound mail (docs/transport-security.md).
    #[serde(default)]
    pub mta_sts: MtaStsSection,
    /// TLS-RPT (RFC 8460) aggregate reports (docs/transport-security.md).
    #[serde(default)]
    pub tls_rpt: TlsRptSection,
    /// Static next hops by recipient domain, tried before MX: `"example.test" = "127.0.0.1:2526"`.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    #[serde(default, rename = "dkim")]
    pub dkim: Vec<DkimConfig>,
    #[serde(default)]
    pub api: ApiSection,
    /// Several nodes as one platform (shared limits in Redis, registry, drain); absent = one node.
    pub cluster: Option<ClusterSection>,
    // Webhooks (docs/webhooks.md): accounting events pushed to a control plane.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub webhook_journal: WebhookJournalSection,
    /// FCrDNS and DNSBL checks of every VMTA's address (docs/reputation.md); absent = none.
    pub reputation: Option<ReputationSection>,
    #[serde(default)]
    pub unsubscribe: UnsubscribeSection,
    /// Outbound content check with rspamd (docs/spam-filter.md); absent = none.
    pub spam_filter: Option<SpamFilterSection>,
    /// `[metrics]`: the bounds of the labelled series of `GET /metrics` (docs/metrics.md).
    #[serde(default)]
    pub metrics: MetricsSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub hostname: String,
    /// Executors, one per core; 0 = every available core.
    pub cores: usize,
    pub spool_dir: String,
    /// JSON Lines accounting log; empty = events kept in memory for the API only.
    pub accounting_log: String,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// Message body octets all inbound sessions together may hold in memory (bodies being received
    /// or spooled); beyond it a body is discarded and answered 452 4.3.1.
    pub max_message_bytes_in_flight: u64,
    /// One INFO log line per delivery outcome (sent, deferred, bounced), Postfix style.
    pub log_deliveries: bool,
    /// Threads per core for work that may take a millisecond (RSA signatures, file I/O, password
    /// hashes): glommio's blocking pool.
    pub blocking_threads_per_core: usize,
    /// `true` pins them to their core's CPU; `false` (default) lets the kernel run them on any
    /// CPU, so an RSA signature need not take the reactor's CPU when another one is idle.
    pub pin_blocking_threads: bool,
    /// How long mimalloc keeps memory freed in a span of its pages before giving it back to the
    /// kernel, in milliseconds (`-1`: never). Its own default (mimalloc v3) is 1 s, but the
    /// delayed purge runs only when the thread that owns the span allocates or collects again:
    /// a core that falls quiet after a burst kept megabytes it no longer used.
    pub allocator_purge_delay_ms: i64,
    /// How often each core writes its accounting lines to the log, in milliseconds (rounded
    /// down to the core's 100 ms tick). Until then they are kept in `spool_dir/unflushed-events`,
    /// which a kill -9 does not lose.
    pub accounting_flush_ms: u64,
    /// For tests only: `POST /v1/clock/advance` moves the process's wall time forward.
    pub test_clock: bool,
}

/// Most `blocking_threads_per_core`.
pub const MAX_BLOCKING_THREADS_PER_CORE: usize = 64;
/// Shortest and longest `accounting_flush_ms`: one core tick, a minute.
pub const ACCOUNTING_FLUSH_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;
/// Longest `allocator_purge_delay_ms`: a minute.
pub const MAX_ALLOCATOR_PURGE_DELAY_MS: i64 = 60_000;

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            hostname: "localhost".into(),
            cores: 0,
            spool_dir: "./volley-spool".into(),
            accounting_log: String::new(),
            max_connections: 10_000,
            max_connections_per_ip: 200,
            max_message_bytes_in_flight: 1 << 30,
            log_deliveries: false,
            blocking_threads_per_core: 1,
            pin_blocking_threads: false,
            allocator_purge_delay_ms: 10,
            accounting_flush_ms: 100,
            test_clock: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub segment_bytes: u64,
    pub max_spool_bytes: u64,
    pub fsync: bool,
    /// Longest a delivered or deferred recipient's state record waits for another commit to
    /// ride with before it starts its own (0: synced at once). See docs/configuration.md.
    pub lazy_state_sync_ms: u64,
    /// Least time between the starts of two commits' fdatasyncs on one core (0: none); records
    /// written meanwhile join the next commit. See docs/configuration.md.
    pub min_sync_interval_us: u64,
    /// Where the fdatasyncs run: io_uring (default) or the core's blocking thread.
    pub sync_on: crate::spool::SyncOn,
    /// Finished segment files each core keeps to reuse as later segments (0: deleted, as
    /// before). See docs/configuration.md.
    pub free_segment_files: usize,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            segment_bytes: 64 << 20,
            max_spool_bytes: 10 << 30,
            fsync: true,
            lazy_state_sync_ms: crate::spool::DEFAULT_LAZY_STATE_SYNC_MS,
            min_sync_interval_us: crate::spool::DEFAULT_MIN_SYNC_INTERVAL_US,
            sync_on: crate::spool::SyncOn::IoUring,
            free_segment_files: crate::spool::DEFAULT_FREE_SEGMENT_FILES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerAuth {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default = "default_listener_tls")]
    pub tls: ListenerTls,
    #[serde(default = "default_listener_auth")]
    pub auth: ListenerAuth,
    /// Who may relay without AUTH.
    #[serde(default)]
    pub relay_networks: Vec<Network>,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Error replies before the session gets 421 and is closed.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// A whole command line, from the end of the previous one (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// A whole message body, from the 354 or the first BDAT.
    #[serde(default = "default_data_timeout_ms")]
    pub data_timeout_ms: u64,
    /// An inbound TLS handshake (STARTTLS or implicit).
    #[serde(default = "default_tls_timeout_ms")]
    pub tls_timeout_ms: u64,
    /// One write to a client that stops reading.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// A PROXY protocol (v1 or v2) header comes first on every connection (HAProxy in front).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Peers whose PROXY header is believed; a connection from anyone else is closed.
    #[serde(default)]
    pub trusted_proxies: Vec<Network>,
    /// Bare LF line ends and lines over 1000 octets: "normalize" (stored as CRLF, folded) or
    /// "strict" (refused with 550 5.6.11 / 500 5.5.6).
    #[serde(default)]
    pub line_endings: LineEndingsMode,
    /// The whole PROXY header, from the accept (a proxy sends it at once).
    #[serde(default = "default_proxy_timeout_ms")]
    pub proxy_timeout_ms: u64,
}

fn default_proxy_timeout_ms() -> u64 {
    5_000
}

fn default_listener_tls() -> ListenerTls {
    ListenerTls::None
}
fn default_listener_auth() -> ListenerAuth {
    ListenerAuth::Off
}
fn default_max_message_bytes() -> usize {
    50 << 20
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_errors() -> u32 {
    20
}
fn default_command_timeout_ms() -> u64 {
    300_000
}
fn default_data_timeout_ms() -> u64 {
    600_000
}
fn default_tls_timeout_ms() -> u64 {
    30_000
}
fn default_write_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The listeners' certificate chain (PEM); with `private_key`, or neither (self-signed).
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA certificates (PEM files) trusted for outbound verification besides the Mozilla roots:
    /// `tls = "required"`, MTA-STS and its policy fetch (docs/transport-security.md).
    #[serde(default)]
    pub trust_anchors: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    pub name: String,
    /// PHC string (argon2id); without it the customer cannot AUTH.
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub max_messages_per_hour: Option<u64>,
    #[serde(default)]
    pub max_messages_per_day: Option<u64>,
    /// Prepaid messages beyond the plan; 0 = none.
    #[serde(default)]
    pub credits: u64,
    /// RFC 8058 one-click unsubscribe URL with `{token}`: added to one-recipient messages that
    /// have no List-Unsubscribe (docs/reputation.md); needs `[unsubscribe] secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_unsubscribe: Option<String>,
    /// Whether `[spam_filter]` checks this customer's mail; absent = yes when the section is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_filter: Option<bool>,
    /// The bounce-rate guard: hard bounces over this share (percent) of the last
    /// `bounce_window_messages` delivery outcomes pause the customer; absent = no guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bounce_percent: Option<u32>,
    #[serde(default = "default_bounce_window_messages")]
    pub bounce_window_messages: u32,
}

fn default_bounce_window_messages() -> u32 {
    1000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmtaConfig {
    pub name: String,
    /// 0.0.0.0 or :: = the system's own source address.
    pub source_ip: IpAddr,
    pub ehlo_hostname: String,
    /// Relative share within a pool (weighted round robin).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub vmtas: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    #[default]
    Opportunistic,
    Required,
    Off,
    /// Only over TLS verified by DANE (validated TLSA records), else defer.
    Dane,
    /// Only under the domain's MTA-STS policy (applied as `enforce`), else defer.
    #[serde(rename = "mta-sts")]
    MtaSts,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicyConfig {
    /// An exact domain, `*.example.com`, or `*`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Scope to one VMTA; `*` or absent = every VMTA.
    #[serde(default)]
    pub vmta: Option<String>,
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_messages_per_connection: Option<u32>,
    #[serde(default)]
    pub max_messages_per_minute: Option<u32>,
    #[serde(default)]
    pub max_messages_per_hour: Option<u32>,
    #[serde(default)]
    pub retry_intervals: Option<Vec<ConfigDuration>>,
    #[serde(default)]
    pub max_queue_age: Option<ConfigDuration>,
    #[serde(default)]
    pub tls: Option<OutboundTls>,
    /// Send bodies with BDAT when the server offers CHUNKING (default true); false = always DATA.
    #[serde(default)]
    pub chunking: Option<bool>,
    /// Transactions on one connection's wire at once (default 1; with PIPELINING and CHUNKING).
    #[serde(default)]
    pub transactions_in_flight: Option<usize>,
    /// Connections while in adaptive backoff (level 1; halved per further level).
    #[serde(default)]
    pub backoff_max_connections: Option<u32>,
    /// Messages per minute while in adaptive backoff (level 1; halved per further level).
    #[serde(default)]
    pub backoff_max_messages_per_minute: Option<u32>,
    /// Retries wait at least this long while in backoff.
    #[serde(default)]
    pub backoff_retry_after: Option<ConfigDuration>,
    /// Deliveries without a new matching reply that end a backoff.
    #[serde(default)]
    pub backoff_recovery_deliveries: Option<u32>,
    /// Time without a matching reply that ends a backoff.
    #[serde(default)]
    pub backoff_quiet_period: Option<ConfigDuration>,
    /// Outbound deadlines (RFC 5321 4.5.3.2 where it gives a value), see `config::Deadlines`.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub tls_timeout_ms: Option<u64>,
    #[serde(default)]
    pub greeting_timeout_ms: Option<u64>,
    #[serde(default)]
    pub reply_timeout_ms: Option<u64>,
    #[serde(default)]
    pub data_timeout_ms: Option<u64>,
    #[serde(default)]
    pub write_timeout_ms: Option<u64>,
    /// Message rate and connection cap of this domain held across the cluster's nodes.
    #[serde(default)]
    pub cluster: Option<bool>,
}

/// What a matching reply does to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffAction {
    /// Adaptive backoff: fewer connections, a lower rate, longer retries, until it recovers.
    Backoff,
    /// No delivery at all for `duration`.
    Suspend,
}

/// `[[backoff]]`: a reply pattern and what it does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffRuleConfig {
    /// Matched case-insensitively as a substring of the whole reply (`421 4.7.0 text`).
    pub pattern: String,
    pub action: BackoffAction,
    /// How long a suspension lasts (default 30m); ignored for `backoff`.
    #[serde(default)]
    pub duration: Option<ConfigDuration>,
    /// Only for destinations matching this (`[[domain]]` syntax); default every destination.
    #[serde(default, rename = "match")]
    pub domain: Option<String>,
}

/// `[[rollup]]`: mail to any of `domains`, and to any other domain whose MX hosts all match `mx`,
/// goes through one queue per VMTA, named `name`, whose MX hosts serve them all (e.g. gmail.com,
/// googlemail.com and every domain hosted on Google Workspace).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// The queue's domain: its MX is used, and `[[domain]]` policies for it apply.
    pub name: String,
    /// Domains in the group by name, without a DNS lookup.
    #[serde(default)]
    pub domains: Vec<String>,
    /// MX host patterns (`aspmx.l.google.com` or `*.google.com`): a domain not listed whose every
    /// MX host matches one of them joins the group (looked up once per domain and cached).
    #[serde(default)]
    pub mx: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingSection {
    /// Apply `[[rollup]]` groups; false = one queue per recipient domain.
    pub mx_rollup: bool,
    /// Distinct destination domains refusing a VMTA (connect refused or reset, a 421/5xx greeting,
    /// an x.7.x reply before any transaction, a transaction whose every recipient got x.7.x) within
    /// `vmta_refusal_window_s`, with none of its mail delivered meanwhile, that take the VMTA out
    /// of its pools; 0 = never.
    pub vmta_refusal_domains: u32,
    /// The window in which those refusals are counted, in seconds.
    pub vmta_refusal_window_s: u64,
    /// How long a VMTA refused everywhere stays out of its pools, in seconds; then it is back.
    pub vmta_refusal_out_s: u64,
    /// A delivery queue that is empty, with no connection, for this many seconds is freed with
    /// everything kept for it (policy, rate state, counters); a suspended queue is kept.
    pub queue_idle_s: u64,
}

impl Default for ShapingSection {
    fn default() -> Self {
        ShapingSection {
            mx_rollup: true,
            vmta_refusal_domains: 3,
            vmta_refusal_window_s: 300,
            vmta_refusal_out_s: 600,
            queue_idle_s: crate::queue::DEFAULT_QUEUE_IDLE_S,
        }
    }
}

/// An included file (a provider profile): only delivery policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainPolicyConfig>,
    #[serde(default, rename = "backoff")]
    pub backoff_rules: Vec<BackoffRuleConfig>,
    #[serde(default, rename = "rollup")]
    pub rollups: Vec<RollupConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Empty = the system resolver (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Whether answers the nameservers mark authentic (the AD bit) count as DNSSEC-validated,
    /// which DANE needs (docs/transport-security.md).
    pub dnssec: Dnssec,
}

/// `[dns] dnssec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Dnssec {
    /// No answer is taken as validated: no DANE.
    #[default]
    Off,
    /// The AD bit of the configured nameservers is trusted: they must be local and validating.
    TrustAd,
}

/// `[mta_sts]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsSection {
    /// Look up, fetch, cache and apply the policies of destination domains.
    pub enabled: bool,
    /// The whole HTTPS fetch of one policy: connect, handshake, request and answer.
    pub fetch_timeout_ms: u64,
}

impl Default for MtaStsSection {
    fn default() -> Self {
        MtaStsSection {
            enabled: true,
            fetch_timeout_ms: 10_000,
        }
    }
}

/// `[tls_rpt]` (RFC 8460).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRptSection {
    /// Record policy outcomes per domain and send aggregate reports to each domain's `rua`.
    pub enabled: bool,
    /// The report period in seconds.
    pub interval_s: u64,
}

impl Default for TlsRptSection {
    fn default() -> Self {
        TlsRptSection {
            enabled: false,
            interval_s: 86_400,
        }
    }
}

/// A `[[dkim]]` entry: mail from `domain` (or a subdomain) is signed with `selector`'s key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    pub private_key: String,
    /// A second key signing the same messages too (RSA beside Ed25519, RFC 8463 §4), under its
    /// own selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_signature: Option<DkimKeyConfig>,
}

/// `[[dkim]] second_signature`: a selector and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    pub selector: String,
    pub private_key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub address: SocketAddr,
    /// Bearer token; empty = loopback clients only, no token.
    pub token: String,
}

/// What a node does about shared limits while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRedisDown {
    /// Each node enforces limit / live nodes on its own count.
    LocalShare,
    /// Mail that needs a shared limit gets 451 until Redis is back.
    Tempfail,
}

/// `[cluster]`: this node's name and the Redis that the nodes share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Unique per node: the registry key and the name in handed-over mail.
    pub node: String,
    /// `redis://host:port/db`.
    pub redis: String,
    #[serde(default = "default_on_redis_down")]
    pub on_redis_down: OnRedisDown,
    /// One Redis command or script, connect included.
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    /// How often this node writes its registry entry; a node silent for 3 periods is not live.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Nodes allowed to hand mail over (drain) with its customer, reception time and attempts.
    #[serde(default)]
    pub peer_networks: Vec<Network>,
}

fn default_on_redis_down() -> OnRedisDown {
    OnRedisDown::LocalShare
}
fn default_redis_timeout_ms() -> u64 {
    500
}
fn default_heartbeat_ms() -> u64 {
    1_000
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            address: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token: String::new(),
        }
    }
}

// ---- Webhooks (docs/webhooks.md) ----

/// `[[webhook]]`: accounting events POSTed as JSON arrays, at least once, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook in `GET /v1/webhooks`, the metrics and its saved position; default the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http://` or `https://` (certificates checked against the Mozilla roots).
    pub url: String,
    /// The event types sent; absent = every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<crate::accounting::EventType>>,
    /// Events per POST at most.
    #[serde(default = "default_webhook_batch_max_events")]
    pub batch_max_events: u32,
    /// HMAC-SHA256 key: the body's MAC, hex, goes in `X-Volley-Signature`; empty = no signature.
    #[serde(default)]
    pub secret: String,
    /// Each step of a POST: resolving, connecting (TLS included), each write, the response.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

impl WebhookConfig {
    /// The webhook's name: `name`, else the URL.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

fn default_webhook_batch_max_events() -> u32 {
    100
}
fn default_webhook_timeout_ms() -> u64 {
    10_000
}

/// `[webhook_journal]`: the events kept in `spool_dir/events/` for the webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookJournalSection {
    /// The journal's size bound: past it the oldest events are dropped, sent or not (logged and
    /// counted per webhook in `volley_webhook_skipped_events_total`).
    pub max_bytes: u64,
}

impl Default for WebhookJournalSection {
    fn default() -> Self {
        WebhookJournalSection { max_bytes: 4 << 30 }
    }
}

// ---- Sender reputation (docs/reputation.md) ----

/// `[reputation]`: checks of every VMTA's sending address, at start, after a reload and every
/// `check_interval_s`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationSection {
    /// Forward-confirmed reverse DNS of each VMTA (PTR names `ehlo_hostname`, which resolves back).
    pub fcrdns: bool,
    /// DNSBL zones asked about every VMTA address.
    pub dnsbl: Vec<String>,
    pub dnsbl_action: DnsblAction,
    pub check_interval_s: u64,
}

impl Default for ReputationSection {
    fn default() -> Self {
        ReputationSection {
            fcrdns: true,
            dnsbl: Vec::new(),
            dnsbl_action: DnsblAction::Warn,
            check_interval_s: 3600,
        }
    }
}

/// What a DNSBL listing of a VMTA's address does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsblAction {
    /// A WARN line, an event and the metric.
    Warn,
    /// Also takes the VMTA out of its pools while listed (back when delisted).
    Remove,
}

/// `[unsubscribe]`: the keys of one-click unsubscribe tokens (HMAC-SHA256), newest first: the first
/// signs, every one verifies (rotation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnsubscribeSection {
    pub secrets: Vec<String>,
}

/// `[spam_filter]`: rspamd's `/checkv2` at the end of data, before the 250.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpamFilterSection {
    /// rspamd's normal worker, e.g. `http://127.0.0.1:11333`.
    pub url: String,
    /// The whole check (connect, send, answer); past it `on_error` decides.
    pub timeout_ms: u64,
    pub on_error: SpamFilterOnError,
    /// Messages larger than this are not sent to rspamd (taken unchecked, counted).
    pub max_scan_bytes: u64,
}

impl Default for SpamFilterSection {
    fn default() -> Self {
        SpamFilterSection {
            url: "http://127.0.0.1:11333".into(),
            timeout_ms: 2_000,
            on_error: SpamFilterOnError::Accept,
            max_scan_bytes: 20 << 20,
        }
    }
}

/// What happens to a message when rspamd cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpamFilterOnError {
    /// Take it unchecked (counted, logged).
    Accept,
    /// 451 4.7.1: the client tries again later.
    Tempfail,
}

/// `[[listener]] line_endings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEndingsMode {
    /// Bare LF stored as CRLF, long lines folded (Postfix's default behaviour).
    #[default]
    Normalize,
    Strict,
}
/// `[metrics]`: how many label values the labelled series may have.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Destination domains named in the `destination` label: the top ones by recipients queued
    /// lately; the rest count as `other`. 0 = every destination is `other`.
    pub top_destinations: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            top_destinations: 50,
        }
    }
}
