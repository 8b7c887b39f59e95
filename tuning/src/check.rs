//! `volley-tune check`: the host settings that limit a sending MTA's throughput, on this host.

use crate::sysctl::{self, RULES};

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Advice,
    Fail,
}

pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
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

pub fn check() -> Vec<Finding> {
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
    for rule in RULES {
        let Some(value) = read_trimmed(&sysctl::path(rule.key)) else {
            continue;
        };
        let verdict = if rule.want.target(&value).is_none() {
            Verdict::Ok
        } else {
            Verdict::Advice
        };
        push(
            verdict,
            format!(
                "{} = {value} (recommended {}: {})",
                rule.key,
                rule.want.recommended(),
                rule.why
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
