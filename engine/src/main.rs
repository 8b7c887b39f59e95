//! The `volley` command line: the daemon and its admin commands.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use volley::config::{Config, EMBEDDED_DEFAULT};
use volley::logging::LogFormat;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "volley",
    version,
    about = "Volley: a thread-per-core mail transfer agent"
)]
struct Cli {
    /// Log lines on stderr as `text` or `json`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA in the foreground (the embedded default without --config).
    Serve {
        /// The configuration file (TOML); reloaded on SIGHUP.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; print each error with its key and line.
    Check {
        /// The configuration file (TOML) to check.
        #[arg(long)]
        config: PathBuf,
        /// The running configuration: also list the changed keys a reload cannot apply.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Also check every VMTA's FCrDNS and DNSBL listings now (the `[reputation]` checks, with
        /// its zones if the file has the section); exit 1 when one fails or is listed.
        #[arg(long)]
        dns: bool,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Make an argon2id PHC string for a customer's `password_hash` (password read from stdin).
    HashPassword,
    /// Show the running daemon's health, its queue totals by state, and the VMTAs out of their
    /// pools with why.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print one JSON object (health, queue totals, VMTAs out) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// List, suspend, resume, retry, bounce or reroute delivery queues.
    Queue {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Show one message (envelope, each recipient's state) or bounce it, by its queue id.
    Message {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: MessageAction,
    },
    /// Hand every queued message to another node and take no new mail (`--to`); show how far
    /// the drain got (no option); or stop draining (`--cancel`).
    Drain {
        #[command(flatten)]
        api: ApiArgs,
        /// The target node's SMTP listener, HOST:PORT.
        #[arg(long, conflicts_with = "cancel")]
        to: Option<String>,
        /// Stop draining: take and deliver mail again.
        #[arg(long)]
        cancel: bool,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's HTTP API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8025")]
    api: String,
    /// Bearer token (also from VOLLEY_API_TOKEN).
    #[arg(long, global = true, env = "VOLLEY_API_TOKEN", default_value = "")]
    token: String,
}

#[derive(Subcommand)]
enum QueueAction {
    /// The queues as a table (`--json`: the API's JSON).
    List {
        /// Print the API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Hand out nothing from the matching queues until resumed (mail arriving later waits too).
    Suspend(QueueTarget),
    /// Let suspended queues deliver again.
    Resume(QueueTarget),
    /// Deferred recipients become ready now (after the receiver was fixed).
    Retry(QueueTarget),
    /// Bounce every queued recipient of the matching queues now, with a DSN to each sender.
    Bounce(QueueTarget),
    /// Move the queued recipients of one queue (VMTA, domain) to VMTAs of another pool.
    Reroute {
        /// The queue's destination domain.
        #[arg(long)]
        domain: String,
        /// The queue's VMTA.
        #[arg(long)]
        vmta: String,
        /// The pool whose VMTAs take the recipients (placement picks one per message).
        #[arg(long)]
        to_pool: String,
    },
}

#[derive(clap::Args)]
struct QueueTarget {
    /// The destination domain whose queues are meant.
    #[arg(long)]
    domain: String,
    /// Only this VMTA's queue of the domain (default: every VMTA's).
    #[arg(long)]
    vmta: Option<String>,
    /// Why, for the log, the queue list and DSNs (suspend, bounce).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum MessageAction {
    /// The message's envelope and each recipient's state, attempts, next attempt and last reply.
    Show {
        /// The queue id (from the 250 reply, the inject answer or the accounting log).
        id: String,
        /// Print the API's JSON instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Bounce every undelivered recipient of the message now, with a DSN to its sender.
    Bounce {
        /// The queue id.
        id: String,
        /// Why, for the DSN and the log.
        #[arg(long)]
        reason: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    volley::logging::init(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check {
            config,
            against,
            dns,
        } => {
            let checked = check(&config, against.as_deref());
            if dns && checked == ExitCode::SUCCESS {
                check_dns(&config)
            } else {
                checked
            }
        }
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
        }
        Command::HashPassword => hash_password(),
        Command::Status { api, json } => status(&api, json),
        Command::Queue { api, action } => {
            let (path, target) = match action {
                QueueAction::List { json: true } => {
                    return admin(&api, "GET", "/v1/queues", None);
                }
                QueueAction::List { json: false } => return queue_table(&api),
                QueueAction::Suspend(t) => ("/v1/queues/suspend", t),
                QueueAction::Resume(t) => ("/v1/queues/resume", t),
                QueueAction::Retry(t) => ("/v1/queues/retry", t),
                QueueAction::Bounce(t) => ("/v1/queues/bounce", t),
                QueueAction::Reroute {
                    domain,
                    vmta,
                    to_pool,
                } => {
                    let body = serde_json::json!({
                        "domain": domain, "vmta": vmta, "to_pool": to_pool,
                    });
                    return admin(&api, "POST", "/v1/queues/reroute", Some(body.to_string()));
                }
            };
            let body = serde_json::json!({
                "domain": target.domain, "vmta": target.vmta, "reason": target.reason,
            });
            admin(&api, "POST", path, Some(body.to_string()))
        }
        Command::Message { api, action } => match action {
            MessageAction::Show { id, json } => message_show(&api, &id, json),
            MessageAction::Bounce { id, reason } => {
                let body = serde_json::json!({ "reason": reason });
                let path = format!("/v1/messages/{}/bounce", path_segment(&id));
                admin(&api, "POST", &path, Some(body.to_string()))
            }
        },
        Command::Drain { api, to, cancel } => match (to, cancel) {
            (Some(to), _) => {
                let body = serde_json::json!({ "to": to });
                admin(&api, "POST", "/v1/drain", Some(body.to_string()))
            }
            (None, true) => admin(&api, "DELETE", "/v1/drain", None),
            (None, false) => admin(&api, "GET", "/v1/drain", None),
        },
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match &path {
        Some(p) => match volley::dkim::load_config(p) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors.0 {
                    eprintln!("{}: {e}", p.display());
                }
                return ExitCode::FAILURE;
            }
        },
        None => Config::embedded_default(),
    };
    // Under systemd (Type=notify): READY=1 once every core serves.
    volley::runtime::notify::enable_from_env();
    volley::runtime::crash_only::abort_on_panic();
    match volley::runtime::serve(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path, against: Option<&std::path::Path>) -> ExitCode {
    let config = match volley::dkim::load_config(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.0 {
                println!("{}: {e}", path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ok", path.display());
    let Some(running_path) = against else {
        return ExitCode::SUCCESS;
    };
    let running = match Config::load(running_path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.0 {
                println!("{}: {e}", running_path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    let restart = volley::config::keys_needing_restart(&running, &config);
    if restart.is_empty() {
        println!("a reload applies every change");
    } else {
        for key in restart {
            println!("{key}: changed; needs a restart (a reload keeps the running value)");
        }
    }
    ExitCode::SUCCESS
}

/// `volley check --dns`: one round of the reputation checks, printed one line per VMTA and zone.
fn check_dns(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            println!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let results = match volley::reputation::check_now(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("volley: DNS checks: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut bad = false;
    for r in &results {
        if let Some(f) = &r.fcrdns {
            bad |= f.status != "pass";
            println!(
                "{} {} fcrdns {}{}",
                r.vmta,
                r.source_ip,
                f.status,
                if f.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", f.detail)
                }
            );
        }
        for z in &r.dnsbl {
            bad |= z.status == "listed";
            println!(
                "{} {} dnsbl {} {}{}",
                r.vmta,
                r.source_ip,
                z.zone,
                z.status,
                if z.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", z.reason)
                }
            );
        }
    }
    if results.is_empty() {
        println!("no VMTA with an address of its own to check");
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn hash_password() -> ExitCode {
    let mut password = String::new();
    if std::io::stdin().read_to_string(&mut password).is_err() {
        eprintln!("cannot read the password from stdin");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "empty password: write it on stdin, e.g. `echo -n secret | volley hash-password`"
        );
        return ExitCode::FAILURE;
    }
    match volley::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hashing failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `volley queue list`: `GET /v1/queues` as a table.
fn queue_table(api: &ApiArgs) -> ExitCode {
    match volley::api::client::request(&api.api, &api.token, "GET", "/v1/queues", None) {
        Ok((200, text)) => {
            let table = serde_json::from_str(&text)
                .ok()
                .and_then(|v| volley::api::queue_table::render(&v));
            match table {
                Some(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("unexpected answer: {text}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok((status, text)) => {
            eprintln!("HTTP {status}: {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach the API at {}: {e}", api.api);
            ExitCode::FAILURE
        }
    }
}

/// A queue id as a path segment: anything but its characters is refused by the API anyway, so
/// only what would change the path's meaning is escaped.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `GET path` as JSON, or the message to print.
fn get_json(api: &ApiArgs, path: &str) -> Result<serde_json::Value, String> {
    match volley::api::client::request(&api.api, &api.token, "GET", path, None) {
        Ok((status, text)) if (200..300).contains(&status) || path == "/v1/health" => {
            serde_json::from_str(&text).map_err(|_| format!("unexpected answer to {path}: {text}"))
        }
        Ok((status, text)) => Err(format!("HTTP {status}: {text}")),
        Err(e) => Err(format!("cannot reach the API at {}: {e}", api.api)),
    }
}

/// `volley status`: health, queue totals and VMTAs out of their pools.
fn status(api: &ApiArgs, json: bool) -> ExitCode {
    let answers = ["/v1/health", "/v1/queues", "/v1/vmta-status"].map(|p| get_json(api, p));
    let [health, queues, vmtas] = match answers {
        [Ok(h), Ok(q), Ok(v)] => [h, q, v],
        answers => {
            for e in answers.into_iter().filter_map(Result::err) {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let summary = volley::api::status_table::summary(&health, &queues, &vmtas);
    let text = match (&summary, json) {
        (Some(s), true) => Some(format!("{s:#}\n")),
        (Some(s), false) => volley::api::status_table::render(s),
        (None, _) => None,
    };
    match text {
        Some(text) => print!("{text}"),
        None => {
            eprintln!("unexpected answers: {queues} {vmtas}");
            return ExitCode::FAILURE;
        }
    }
    // Starting or stopping is a state to see, but not a healthy one.
    if health.get("status").and_then(|s| s.as_str()) == Some("serving") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `volley message show ID`: `GET /v1/messages/{id}` as text (`--json`: as the API gave it).
fn message_show(api: &ApiArgs, id: &str, json: bool) -> ExitCode {
    let path = format!("/v1/messages/{}", path_segment(id));
    if json {
        return admin(api, "GET", &path, None);
    }
    match get_json(api, &path) {
        Ok(answer) => match volley::api::message_text::render(&answer) {
            Some(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("unexpected answer: {answer}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn admin(api: &ApiArgs, method: &str, path: &str, body: Option<String>) -> ExitCode {
    match volley::api::client::request(&api.api, &api.token, method, path, body.as_deref()) {
        Ok((status, text)) => {
            println!("{text}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cannot reach the API at {}: {e}", api.api);
            ExitCode::FAILURE
        }
    }
}
