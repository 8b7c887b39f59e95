//! `volley-tune`: checks the host settings that limit a sending MTA's throughput, prints the
//! settings Volley recommends, and lists the provider delivery profiles of `tuning/profiles/`, which
//! are built into the binary so that it needs no checkout (`profiles --write DIR` puts them where an
//! `include` can name them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "volley-tune",
    version,
    about = "Host checks and provider profiles for Volley"
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

/// The provider profiles, built in: (file name, text). A test checks this list against the
/// directory, so a profile added there and not here fails the build's tests.
const BUILT_IN_PROFILES: &[(&str, &str)] = &[
    ("comcast.toml", include_str!("../profiles/comcast.toml")),
    ("gmail.toml", include_str!("../profiles/gmail.toml")),
    ("gmx-webde.toml", include_str!("../profiles/gmx-webde.toml")),
    ("icloud.toml", include_str!("../profiles/icloud.toml")),
    ("mailru.toml", include_str!("../profiles/mailru.toml")),
    ("orange.toml", include_str!("../profiles/orange.toml")),
    ("outlook.toml", include_str!("../profiles/outlook.toml")),
    ("t-online.toml", include_str!("../profiles/t-online.toml")),
    ("yahoo.toml", include_str!("../profiles/yahoo.toml")),
    ("yandex.toml", include_str!("../profiles/yandex.toml")),
];

/// A profile's first comment line: what it is for.
fn summary(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_string())
        .unwrap_or_default()
}

fn built_in(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".toml").unwrap_or(name);
    BUILT_IN_PROFILES
        .iter()
        .find(|(file, _)| file.strip_suffix(".toml") == Some(name))
        .map(|(_, text)| *text)
}

fn write_profiles(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in BUILT_IN_PROFILES {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A recommended sysctl: key, the least good value, and why.
const SYSCTLS: [(&str, u64, &str); 6] = [
    (
        "net.core.somaxconn",
        4096,
        "listen backlog for bursts of inbound connections",
    ),
    (
        "net.ipv4.tcp_max_syn_backlog",
        4096,
        "half-open inbound connections under load",
    ),
    (
        "net.ipv4.tcp_tw_reuse",
        1,
        "reuse TIME_WAIT ports for outbound connections",
    ),
    (
        "net.ipv4.tcp_fin_timeout",
        15,
        "free closed outbound sockets sooner (at most this)",
    ),
    (
        "fs.file-max",
        1_048_576,
        "sockets and spool files across all cores",
    ),
    (
        "net.core.netdev_max_backlog",
        16_384,
        "packets queued per CPU on busy NICs",
    ),
];

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Advice,
    Fail,
}

struct Finding {
    verdict: Verdict,
    what: String,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0)
        .then_some((limit.rlim_cur, limit.rlim_max))
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(['.', '-'])
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn check() -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |verdict, what: String| out.push(Finding { verdict, what });
    match read_trimmed("/proc/sys/kernel/osrelease") {
        Some(r) if kernel_at_least(&r, 5, 8) => {
            push(Verdict::Ok, format!("kernel {r} (io_uring needs 5.8)"))
        }
        Some(r) => push(
            Verdict::Fail,
            format!("kernel {r} is older than 5.8: io_uring (glommio) will not start"),
        ),
        None => push(Verdict::Advice, "kernel version unknown".into()),
    }
    match read_trimmed("/proc/sys/kernel/io_uring_disabled").as_deref() {
        Some("0") | None => push(Verdict::Ok, "io_uring enabled".into()),
        Some(v) => push(
            Verdict::Fail,
            format!("kernel.io_uring_disabled = {v}: set it to 0"),
        ),
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if let Some((soft, _)) = rlimit(libc::RLIMIT_MEMLOCK) {
        let kib = soft / 1024;
        if root || soft == libc::RLIM_INFINITY || soft >= 8 << 20 {
            push(
                Verdict::Ok,
                format!(
                    "memlock {kib} KiB{}",
                    if root { " (root: not counted)" } else { "" }
                ),
            );
        } else if soft >= 512 << 10 {
            push(
                Verdict::Advice,
                format!(
                    "memlock {kib} KiB: raise to 8 MiB or more (LimitMEMLOCK=64M) so io_uring buffers register"
                ),
            );
        } else {
            push(
                Verdict::Fail,
                format!("memlock {kib} KiB: glommio needs at least 512 KiB (LimitMEMLOCK=64M)"),
            );
        }
    }
    if let Some((soft, hard)) = rlimit(libc::RLIMIT_NOFILE) {
        let verdict = if hard >= 1 << 20 {
            Verdict::Ok
        } else {
            Verdict::Advice
        };
        push(
            verdict,
            format!(
                "open files: soft {soft}, hard {hard} (Volley raises soft to hard; want hard >= 1048576)"
            ),
        );
    }
    for (key, want, why) in SYSCTLS {
        let Some(value) = read_trimmed(&sysctl_path(key)) else {
            continue;
        };
        let first: u64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let good = match key {
            "net.ipv4.tcp_fin_timeout" => first <= want,
            // 2 means loopback only: outbound connections to real MX hosts would not reuse ports.
            "net.ipv4.tcp_tw_reuse" => first == want,
            _ => first >= want,
        };
        let verdict = if good { Verdict::Ok } else { Verdict::Advice };
        push(
            verdict,
            format!("{key} = {value} (recommended {want}: {why})"),
        );
    }
    if let Some(range) = read_trimmed("/proc/sys/net/ipv4/ip_local_port_range") {
        let ports: Vec<u64> = range
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let span = match ports.as_slice() {
            [lo, hi] => hi.saturating_sub(*lo),
            _ => 0,
        };
        let verdict = if span >= 50_000 {
            Verdict::Ok
        } else {
            Verdict::Advice
        };
        push(
            verdict,
            format!(
                "ip_local_port_range {range}: {span} ports per (source IP, destination); recommended 10000 65535"
            ),
        );
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    push(
        Verdict::Ok,
        format!("{cpus} CPUs: Volley runs one executor per core"),
    );
    out
}

fn profiles(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            found.push((path.display().to_string(), summary(&text)));
        }
    }
    found.sort();
    Ok(found)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check => {
            let findings = check();
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
            for (key, want, why) in SYSCTLS {
                println!("# {why}\n{key} = {want}");
            }
            println!(
                "# source ports for outbound connections from each VMTA address\nnet.ipv4.ip_local_port_range = 10000 65535"
            );
            ExitCode::SUCCESS
        }
        Command::Profiles { dir: Some(dir), .. } => match profiles(&dir) {
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
        } => match write_profiles(&dir) {
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
        } => match built_in(&name) {
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
            for (file, text) in BUILT_IN_PROFILES {
                println!("{file}\t{}", summary(text));
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_file_is_built_in_with_the_same_text() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        files.sort();
        let built: Vec<&str> = BUILT_IN_PROFILES.iter().map(|(f, _)| *f).collect();
        assert_eq!(files, built);
        for (file, text) in BUILT_IN_PROFILES {
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), *text);
        }
    }

    #[test]
    fn written_profiles_are_the_built_in_ones_and_show_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_profiles(&dir.path().join("profiles")).unwrap();
        assert_eq!(written.len(), BUILT_IN_PROFILES.len());
        let listed = profiles(&dir.path().join("profiles")).unwrap();
        assert_eq!(listed.len(), BUILT_IN_PROFILES.len());
        assert_eq!(built_in("gmail"), built_in("gmail.toml"));
        assert!(built_in("gmail").is_some_and(|t| t.contains("[[domain]]")));
        assert!(built_in("nonexistent").is_none());
    }

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.44", 5, 8));
        assert!(kernel_at_least("5.8.0-1-amd64", 5, 8));
        assert!(!kernel_at_least("5.4.0", 5, 8));
        assert!(!kernel_at_least("garbage", 5, 8));
    }

    #[test]
    fn check_reports_kernel_and_cpus() {
        let findings = check();
        assert!(findings.iter().any(|f| f.what.starts_with("kernel ")));
        assert!(findings.iter().any(|f| f.what.contains("CPUs")));
    }

    #[test]
    fn shipped_profiles_are_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let list = profiles(&dir).unwrap();
        assert!(
            list.iter().any(|(p, _)| p.ends_with("gmail.toml")),
            "{list:?}"
        );
    }
}
