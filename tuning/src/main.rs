//! `volley-tune`: checks the host settings that limit a sending MTA's throughput, prints the
//! settings Volley recommends, plans and applies them (sysctls, CPU governor, NIC interrupts and
//! queues placed on the executor cores) with a way back, and lists the provider delivery profiles.

mod apply;
mod changes;
mod check;
mod cpuset;
mod host;
mod plan;
mod profiles;
mod sysctl;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use check::Verdict;
use host::Host;
use plan::Plan;

#[derive(Parser)]
#[command(
    name = "volley-tune",
    version,
    about = "Host checks, tuning and provider profiles for Volley"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this host: kernel, io_uring, limits, TCP settings. Exit 1 when something must change.
    Check,
    /// Print the sysctl settings Volley recommends (for /etc/sysctl.d/90-volley.conf).
    Settings,
    /// Print which CPU takes each NIC queue's interrupts and transmits on it, for the executors
    /// and VMTAs of a configuration.
    Plan(Target),
    /// Print the changes the plan needs (the default: a dry run), write them (`--write`), or
    /// write back what a previous apply changed (`--revert`).
    Apply {
        #[command(flatten)]
        target: Target,
        /// Write the changes (without it nothing is written).
        #[arg(long, conflicts_with = "dry_run")]
        write: bool,
        /// Only print the changes (the default; spelled out for scripts).
        #[arg(long)]
        dry_run: bool,
        /// Restore the values the state file recorded before the last apply.
        #[arg(long)]
        revert: bool,
        /// Where the original values are kept (default: ROOT/var/lib/volley-tune/state.json).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// List the provider profiles (`include` them from the configuration); built into this binary.
    Profiles {
        /// List the profiles found in this directory instead of the built-in ones.
        #[arg(long, conflicts_with_all = ["write", "show"])]
        dir: Option<PathBuf>,
        /// Write the built-in profiles into this directory (created if missing; existing files
        /// are replaced), e.g. /etc/volley/profiles, for `include = ["/etc/volley/profiles/gmail.toml"]`.
        #[arg(long, value_name = "DIR", conflicts_with = "show")]
        write: Option<PathBuf>,
        /// Print one built-in profile (by its file name, with or without `.toml`).
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
}

#[derive(Args)]
struct Target {
    /// The Volley configuration whose executors and VMTAs are planned for.
    #[arg(long, value_name = "FILE", default_value = "/etc/volley/volley.toml")]
    config: PathBuf,
    /// Read and write /proc and /sys below this directory (a fake tree for tests); addresses
    /// then come from ROOT/ip-addr.json (saved `ip -j addr` output) instead of `ip -j addr`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("volley-tune: {message}");
    ExitCode::from(2)
}

fn make_plan(target: &Target) -> Result<(Host, Plan), String> {
    let config = volley::config::Config::load(&target.config)
        .map_err(|e| format!("{}: {e}", target.config.display()))?;
    let host = Host::new(&target.root);
    let plan = Plan::make(&config, &host)?;
    Ok((host, plan))
}

fn run_apply(target: &Target, write: bool, revert: bool, state: Option<PathBuf>) -> ExitCode {
    let host = Host::new(&target.root);
    let state_path = state.unwrap_or_else(|| host.path("/var/lib/volley-tune/state.json"));
    if revert {
        return run_revert(&host, &state_path, write);
    }
    let (host, plan) = match make_plan(target) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    print!("{}", plan.render());
    let (changes, notes) = changes::wanted(&host, &plan);
    for note in notes {
        println!("note: {note}");
    }
    if changes.is_empty() {
        println!("nothing to change");
        return ExitCode::SUCCESS;
    }
    if !write {
        println!(
            "# dry run: {} changes, nothing written (--write writes them; originals go to {})",
            changes.len(),
            state_path.display()
        );
        print!("{}", changes::render(&changes));
        return ExitCode::SUCCESS;
    }
    match apply::apply(&host, &state_path, &changes) {
        Ok(outcome) => report("written", &outcome, &state_path),
        Err(e) => fail(e),
    }
}

fn run_revert(host: &Host, state_path: &Path, write: bool) -> ExitCode {
    if !write {
        return match apply::load_state(state_path) {
            Ok(Some(state)) => {
                println!(
                    "# dry run: {} values to restore from {} (--revert --write restores them)",
                    state.changes.len(),
                    state_path.display()
                );
                for c in state.changes.iter().rev() {
                    println!("{}: -> {}   # {}", c.path, c.before, c.why);
                }
                ExitCode::SUCCESS
            }
            Ok(None) => fail(format!(
                "{}: no state file: nothing to revert",
                state_path.display()
            )),
            Err(e) => fail(e),
        };
    }
    match apply::revert(host, state_path) {
        Ok(outcome) => report("restored", &outcome, state_path),
        Err(e) => fail(e),
    }
}

fn report(verb: &str, outcome: &apply::Outcome, state_path: &Path) -> ExitCode {
    for c in &outcome.written {
        println!("{verb} {}", c.path);
    }
    for (c, e) in &outcome.failed {
        println!("FAILED {}: {e}", c.path);
    }
    println!(
        "{} {verb}, {} failed; state: {}",
        outcome.written.len(),
        outcome.failed.len(),
        state_path.display()
    );
    if outcome.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check => {
            let findings = check::check();
            for f in &findings {
                let tag = match f.verdict {
                    Verdict::Ok => "ok    ",
                    Verdict::Advice => "advice",
                    Verdict::Fail => "FAIL  ",
                };
                println!("{tag} {}", f.what);
            }
            if findings.iter().any(|f| f.verdict == Verdict::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Settings => {
            println!("# /etc/sysctl.d/90-volley.conf (apply with: sysctl --system)");
            for rule in sysctl::RULES {
                println!("# {}\n{} = {}", rule.why, rule.key, rule.want.recommended());
            }
            ExitCode::SUCCESS
        }
        Command::Plan(target) => match make_plan(&target) {
            Ok((_, plan)) => {
                print!("{}", plan.render());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Apply {
            target,
            write,
            dry_run: _,
            revert,
            state,
        } => run_apply(&target, write, revert, state),
        Command::Profiles { dir: Some(dir), .. } => match profiles::profiles(&dir) {
            Ok(list) => {
                for (path, summary) in list {
                    println!("{path}\t{summary}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("volley-tune: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Profiles {
            write: Some(dir), ..
        } => match profiles::write_profiles(&dir) {
            Ok(paths) => {
                for path in paths {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("volley-tune: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Profiles {
            show: Some(name), ..
        } => match profiles::built_in(&name) {
            Some(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "volley-tune: no built-in profile {name:?} (`volley-tune profiles` lists them)"
                );
                ExitCode::FAILURE
            }
        },
        Command::Profiles { .. } => {
            for (file, text) in profiles::BUILT_IN_PROFILES {
                println!("{file}\t{}", profiles::summary(text));
            }
            ExitCode::SUCCESS
        }
    }
}
