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
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; print each error with its key and line.
    Check {
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
    /// Show the running daemon's health and queue totals.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List, suspend, resume, retry or bounce delivery queues.
    Queue {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: QueueAction,
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
        #[arg(long)]
        json: bool,
    },
    Suspend(QueueTarget),
    Resume(QueueTarget),
    /// Deferred recipients become ready now (after the receiver was fixed).
    Retry(QueueTarget),
    Bounce(QueueTarget),
}

#[derive(clap::Args)]
struct QueueTarget {
    #[arg(long)]
    domain: String,
    #[arg(long)]
    vmta: Option<String>,
    #[arg(long)]
    reason: Option<String>,
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
        Command::Status { api } => admin(&api, "GET", "/v1/health", None),
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
            };
            let body = serde_json::json!({
                "domain": target.domain, "vmta": target.vmta, "reason": target.reason,
            });
            admin(&api, "POST", path, Some(body.to_string()))
        }
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
