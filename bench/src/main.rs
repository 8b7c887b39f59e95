//! `volley-bench`: Volley's benchmark harness — a fast SMTP sink and a pipelined load generator.
//!
//! Both run one pinned glommio executor per core and share nothing on the hot path. The SMTP code
//! here is deliberately independent of the engine so the bench measures the engine, not itself.

mod blast;
mod clock;
mod counters;
mod placement;
mod relay;
mod sink;
mod sink_tally;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use blast::message::{MessagePlan, SizePlan};
use blast::{BlastConfig, Credentials};
use placement::{CorePlan, parse_cpu_list};
use sink::SinkConfig;
use sink::faults::{Faults, Stage};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "volley-bench",
    version,
    about = "Volley's load generator and SMTP sink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A fast SMTP server that accepts (or fails, on request) every message and discards it; its
    /// fault modes (--tarpit, --stall-tls, --stop-reading-in-data, --reset-percent,
    /// --greeting-421-percent, --tempfail/--permfail-percent with --fail-at, --slow-reply-ms)
    /// make it a hostile receiver.
    Sink(SinkArgs),
    /// Pipelined SMTP load over reused connections.
    Blast(BlastArgs),
    /// Sink, Volley and load in one run, side by side with the direct ceiling and a peer MTA.
    Relay(RelayArgs),
}

/// Where executors run.
#[derive(Debug, Args)]
struct CoreArgs {
    /// Executors (one pinned per core); 0 = every online CPU.
    #[arg(long, default_value_t = 0)]
    cores: usize,
    /// Pin to these CPUs (e.g. `1` or `0,2-3`); overrides --cores.
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<CpuList>,
}

/// A parsed `--cpus` value (a newtype so clap takes it as one value, not many).
#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    parse_cpu_list(text).map(CpuList)
}

impl CoreArgs {
    fn plan(&self) -> CorePlan {
        CorePlan::new(
            self.cores,
            self.cpus.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        )
    }
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long)]
    listen: String,
    /// Append one JSON line per accepted message to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Percentage of replies answered with a 4xx at each --fail-at stage (by default: messages
    /// answered 450 4.2.0 at end of data).
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    tempfail_percent: f64,
    /// Percentage of replies answered with a 5xx at each --fail-at stage (by default: messages
    /// answered 550 5.1.1 at end of data).
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    permfail_percent: f64,
    /// The replies --tempfail-percent and --permfail-percent apply to, each drawn on its own:
    /// mail (451 4.3.0 / 550 5.7.1), rcpt (450 4.2.1 / 550 5.1.1, per recipient), data (DATA or
    /// each BDAT: 451 4.3.0 / 554 5.3.0), end-of-data (450 4.2.0 / 550 5.1.1). Comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "end-of-data")]
    fail_at: Vec<Stage>,
    /// Delay before each end-of-data reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Fault: accept the connection and never send a byte, not even the greeting (per connection;
    /// the percentage of connections, 100 without a value).
    #[arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100",
          default_value_t = 0.0, value_parser = parse_percent)]
    tarpit: f64,
    /// Fault: advertise STARTTLS, answer it 220, then never answer the TLS handshake (per
    /// connection; the percentage of connections, 100 without a value).
    #[arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100",
          default_value_t = 0.0, value_parser = parse_percent)]
    stall_tls: f64,
    /// Fault: once a message body starts (after 354, or at BDAT even when a small pipelined
    /// chunk already arrived whole), never read the socket again nor answer (the sender's writes
    /// block, or it waits for a reply); per connection, the percentage of connections, 100
    /// without a value.
    #[arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100",
          default_value_t = 0.0, value_parser = parse_percent)]
    stop_reading_in_data: f64,
    /// Fault: percentage of message bodies (a DATA body, or each BDAT chunk) aborted with a TCP
    /// reset once some of the body arrived.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    reset_percent: f64,
    /// Fault: percentage of connections greeted with 421 and closed, at random either
    /// "421 4.3.2 Service not available" or "421 4.7.0 ... too many connections from your IP".
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    greeting_421_percent: f64,
    /// Fault: wait this long before each write of replies, greeting included (a pipelined batch
    /// of replies is one write), in milliseconds.
    #[arg(long, default_value_t = 0)]
    slow_reply_ms: u64,
    /// Concurrent connections per source IP, counted per core; beyond it 421 4.7.0. 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_connections_per_ip: u32,
    /// Seconds between live stats lines on stderr; 0 = off.
    #[arg(long, default_value_t = 1)]
    stats_interval_s: u64,
    /// Answer messages whose first recipient is at gmail.test, yahoo.test or outlook.test with
    /// texts in those providers' styles (Gmail's and Yahoo's tempfails are 421 and close).
    #[arg(long)]
    provider_replies: bool,
    /// Refuse clients from this IP at the greeting with 554 5.7.1, like a blocklist (repeatable).
    #[arg(long)]
    refuse_from: Vec<std::net::IpAddr>,
    /// Refuse every recipient of clients from this IP with 554 5.7.1 "blocked using", as a
    /// blocklisting Postfix does at RCPT (repeatable).
    #[arg(long)]
    block_rcpt_from: Vec<std::net::IpAddr>,
    /// Offer STARTTLS with this certificate chain (PEM); needs --tls-key. Messages received over
    /// TLS are logged with `"tls": true`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    cores: CoreArgs,
}

#[derive(Debug, Args)]
struct BlastArgs {
    /// The server to load.
    #[arg(long)]
    to: String,
    /// Messages to send in total.
    #[arg(long)]
    messages: u64,
    /// Size of each message in bytes (headers included).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sizes drawn per message instead of --size: `SIZE:WEIGHT` pairs, e.g.
    /// `1024:70,10240:25,102400:5`.
    #[arg(long, conflicts_with = "size")]
    size_dist: Option<String>,
    /// Seed of the --size-dist draws (default: random; the report says which).
    #[arg(long)]
    seed: Option<u64>,
    /// Upgrade every connection with STARTTLS (any certificate is accepted).
    #[arg(long)]
    starttls: bool,
    /// AUTH PLAIN as `USER:PASS` after STARTTLS.
    #[arg(long, requires = "starttls", value_parser = Credentials::parse)]
    auth: Option<Credentials>,
    /// Recipient domains by name, used in turn (e.g. `gmail.test,yahoo.test`); overrides --domains.
    #[arg(long, value_delimiter = ',')]
    domain_names: Vec<String>,
    /// Concurrent connections in total, spread over the cores.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    recipients: u32,
    /// Recipient domains (d0.test ...).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    domains: u32,
    /// Global pace in messages per second (default: as fast as possible). The connections are
    /// offset from one another so that messages arrive evenly spaced.
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: every connection sends at the same instants instead, so messages arrive in
    /// bursts of --connections (how blast paced before the offsets).
    #[arg(long, requires = "rate")]
    rate_bursts: bool,
    /// Each connection sends its own fixed share of --messages (how blast worked before the
    /// shared pool; --rate always does). Default: every connection takes the next message from
    /// one pool, as smtp-source does, so all of them run until the last message.
    #[arg(long)]
    fixed_shares: bool,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Reverse path and From: address.
    #[arg(long, default_value = "blast@volley-bench.test")]
    from: String,
    /// With DATA, 1: wait for each end-of-data reply before the next envelope; 2 or more: send
    /// the next envelope in the same write as the body (RFC 2920 §3.1). With --chunking:
    /// transactions in flight per connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pipeline_depth: u32,
    /// Send bodies with `BDAT n LAST` (RFC 3030 CHUNKING) and pipeline whole transactions.
    #[arg(long)]
    chunking: bool,
    /// Leave `SIZE=` out of MAIL (by default each MAIL declares its message's size, as real
    /// senders do).
    #[arg(long)]
    no_mail_size: bool,
    /// EHLO name.
    #[arg(long, default_value = "blast.volley-bench.test")]
    ehlo: String,
    /// Extra header `NAME:VALUE` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Seconds between progress lines on stderr; 0 = off.
    #[arg(long, default_value_t = 1)]
    progress_interval_s: u64,
    #[command(flatten)]
    cores: CoreArgs,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// The peer MTA to run the same workload through (`postfix`).
    #[arg(long)]
    peer: Option<String>,
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Size of each message in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    recipients: u32,
    /// Recipient domains (d0.test ...) a message's recipients are spread over, in turn: with
    /// `--recipients 10 --rcpt-domains 10` each message has one recipient in each of ten domains,
    /// which Volley delivers as ten transactions (all routed to the sink).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rcpt_domains: u32,
    /// Concurrent inbound connections (and the peer's delivery concurrency).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Volley's `[[domain]] transactions_in_flight` toward the sink (messages on one
    /// connection's wire at once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    transactions_in_flight: u32,
    /// Blast leaves `SIZE=` out of MAIL (by default it declares each message's size).
    #[arg(long)]
    no_mail_size: bool,
    /// Blast's connections each send a fixed share (`blast --fixed-shares`) instead of taking
    /// from one pool: the harness before 2026-12-03, for comparisons with earlier figures.
    #[arg(long)]
    blast_fixed_shares: bool,
    /// The `volley` binary (default: next to this one).
    #[arg(long)]
    volley: Option<PathBuf>,
    /// Volley's executors; 0 = every core.
    #[arg(long, default_value_t = 0)]
    volley_cores: usize,
    /// Turn Volley's fsync off (comparison only; never a production setting).
    #[arg(long)]
    no_fsync: bool,
    /// Postfix configuration templates (main.cf.in, master.cf.in).
    #[arg(long, default_value = "../shared/peers/postfix")]
    peer_templates: PathBuf,
    /// Where logs, the JSON report and the SVG chart go.
    #[arg(long, default_value = "target/relay")]
    out: PathBuf,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// A TOML file appended to Volley's generated configuration (its `[[domain]]` entries for
    /// `d0.test` win over the generated `match = "*"`): shaping limits for an A/B run.
    #[arg(long)]
    volley_config_extra: Option<PathBuf>,
    /// Do not run the ceiling (blast straight into the sink).
    #[arg(long)]
    no_ceiling: bool,
    /// A header `NAME:VALUE` blast adds to every message (repeatable), e.g.
    /// `X-Volley-Customer:bench` to send as a customer.
    #[arg(long = "blast-header", value_parser = parse_header)]
    blast_headers: Vec<(String, String)>,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|_| format!("not a number: {text}"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err("must be between 0 and 100".into())
    }
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {text:?}"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("bad header name {name:?}"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err("header value must not contain CR or LF".into());
    }
    Ok((name.to_string(), value.to_string()))
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("{text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text}: no address"))
}

fn run_sink(args: SinkArgs) -> ExitCode {
    let faults = Faults {
        tarpit_percent: args.tarpit,
        greeting_421_percent: args.greeting_421_percent,
        stall_tls_percent: args.stall_tls,
        stop_reading_in_data_percent: args.stop_reading_in_data,
        reset_percent: args.reset_percent,
        tempfail_percent: args.tempfail_percent,
        permfail_percent: args.permfail_percent,
        fail_at: args.fail_at,
        slow_reply: Duration::from_millis(args.slow_reply_ms),
    };
    if let Err(e) = faults.check() {
        eprintln!("volley-bench sink: {e}");
        return ExitCode::from(2);
    }
    let listen = match resolve(&args.listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("volley-bench sink: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match sink::tls_config(cert, key) {
            Ok(c) => Some(std::sync::Arc::new(c)),
            Err(e) => {
                eprintln!("volley-bench sink: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let config = SinkConfig {
        tls,
        listen,
        log: args.log,
        faults,
        delay: Duration::from_millis(args.delay_ms),
        plan: args.cores.plan(),
        max_connections_per_ip: args.max_connections_per_ip,
        stats_interval: Duration::from_secs(args.stats_interval_s),
        provider_replies: args.provider_replies,
        refuse_from: args.refuse_from,
        block_rcpt_from: args.block_rcpt_from,
    };
    match sink::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley-bench sink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_blast(args: BlastArgs) -> ExitCode {
    let to = match resolve(&args.to) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("volley-bench blast: {e}");
            return ExitCode::from(2);
        }
    };
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        eprintln!("volley-bench blast: --rate must be a positive number");
        return ExitCode::from(2);
    }
    let now_ms = clock::unix_millis_now();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let sizes = match &args.size_dist {
        None => SizePlan::Fixed(args.size),
        Some(text) => match SizePlan::parse_distribution(text, seed) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("volley-bench blast: --size-dist: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let tls = if args.starttls {
        match blast::tls::client_config() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("volley-bench blast: TLS: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if args.size_dist.is_some() && args.progress_interval_s > 0 {
        eprintln!("blast: size distribution seed {seed}");
    }
    let config = BlastConfig {
        to,
        messages: args.messages,
        connections: args.connections.max(1),
        rate: args.rate,
        rate_bursts: args.rate_bursts,
        fixed_shares: args.fixed_shares,
        ehlo: args.ehlo,
        pipeline_depth: args.pipeline_depth,
        chunking: args.chunking,
        plan: args.cores.plan(),
        message: MessagePlan {
            sizes,
            recipients_per_message: args.recipients,
            domains: args.domains,
            domain_names: args.domain_names,
            from: args.from,
            run_id: format!("{:x}{:04x}", now_ms, fastrand::u16(..)),
            date: clock::rfc5322_date(now_ms / 1000),
            extra_headers: args.headers,
            declare_size: !args.no_mail_size,
        },
        progress_interval: Duration::from_secs(args.progress_interval_s),
        tls,
        auth: args.auth,
    };
    let report = match blast::run(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("volley-bench blast: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("volley-bench blast: {e}"),
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.connections_ok == 0 && args.messages > 0 {
        eprintln!(
            "volley-bench blast: no connection succeeded{}",
            report
                .first_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run_relay(args: RelayArgs) -> ExitCode {
    let volley = args.volley.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("volley")))
            .unwrap_or_else(|| PathBuf::from("volley"))
    });
    let volley_config_extra = match args
        .volley_config_extra
        .as_deref()
        .map(std::fs::read_to_string)
    {
        None => None,
        Some(Ok(text)) => Some(format!("\n{text}")),
        Some(Err(e)) => {
            eprintln!("volley-bench relay: --volley-config-extra: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = relay::RelayPlan {
        messages: args.messages,
        size_bytes: args.size,
        recipients: args.recipients,
        rcpt_domains: args.rcpt_domains,
        connections: args.connections.max(1),
        transactions_in_flight: args.transactions_in_flight,
        no_mail_size: args.no_mail_size,
        blast_fixed_shares: args.blast_fixed_shares,
        volley,
        volley_cores: args.volley_cores,
        peer: args.peer,
        peer_templates: args.peer_templates,
        // Absolute: Postfix and the spool take paths from files written there.
        out_dir: std::path::absolute(&args.out).unwrap_or(args.out),
        fsync: !args.no_fsync,
        timeout: Duration::from_secs(args.timeout_s),
        volley_config_extra,
        skip_ceiling: args.no_ceiling,
        blast_headers: args
            .blast_headers
            .iter()
            .map(|(name, value)| format!("{name}:{value}"))
            .collect(),
    };
    let report = match relay::run(&plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("volley-bench relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.to_text());
    let json = plan.out_dir.join("relay.json");
    let svg = plan.out_dir.join("relay.svg");
    let latency_svg = plan.out_dir.join("relay-latency.svg");
    let written = serde_json::to_string_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|text| std::fs::write(&json, text).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::write(&svg, report.to_svg()).map_err(|e| e.to_string()))
        .and_then(|()| {
            std::fs::write(&latency_svg, report.to_latency_svg()).map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => {
            println!(
                "report: {}  charts: {} {}",
                json.display(),
                svg.display(),
                latency_svg.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volley-bench relay: writing the report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sink(args) => run_sink(args),
        Command::Blast(args) => run_blast(args),
        Command::Relay(args) => run_relay(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_parse() {
        let cli = Cli::try_parse_from([
            "volley-bench",
            "blast",
            "--to",
            "127.0.0.1:25",
            "--messages",
            "5",
            "--cpus",
            "0-1",
            "--header",
            "X-A: b",
            "--header",
            "X-C:d",
        ])
        .unwrap();
        let Command::Blast(args) = cli.command else {
            panic!("not blast")
        };
        assert_eq!(args.cores.plan().cpus, vec![0, 1]);
        assert_eq!(args.headers.len(), 2);
        let cli = Cli::try_parse_from([
            "volley-bench",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
        ])
        .unwrap();
        let Command::Sink(args) = cli.command else {
            panic!("not sink")
        };
        assert_eq!(args.cores.plan(), CorePlan::new(1, vec![]));
        assert_eq!((args.tarpit, args.stall_tls), (0.0, 0.0));
        assert_eq!(args.fail_at, vec![Stage::EndOfData]);
        let cli = Cli::try_parse_from([
            "volley-bench",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--tarpit",
            "--stall-tls",
            "30",
            "--fail-at",
            "mail,rcpt",
            "--stop-reading-in-data",
        ])
        .unwrap();
        let Command::Sink(args) = cli.command else {
            panic!("not sink")
        };
        assert_eq!(
            (args.tarpit, args.stall_tls, args.stop_reading_in_data),
            (100.0, 30.0, 100.0)
        );
        assert_eq!(args.fail_at, vec![Stage::Mail, Stage::Rcpt]);
        assert!(
            Cli::try_parse_from([
                "volley-bench",
                "sink",
                "--listen",
                "x",
                "--tempfail-percent",
                "101"
            ])
            .is_err()
        );
        assert!(parse_header("Bad Name: v").is_err());
    }
}
