//! The kernel settings Volley recommends, one table for `check` (is the host good enough?),
//! `settings` (a sysctl.d file) and `apply` (what to write). A rule only ever moves a value the
//! good way: a larger somaxconn than ours is left alone.

/// What a good value is.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// One number, at least this.
    AtLeast(u64),
    /// One number, at most this.
    AtMost(u64),
    /// One number, exactly this.
    Exactly(u64),
    /// `low high`: a range at least this wide (the low end lowered, the high end raised).
    Range(u64, u64),
    /// `min default max`: the max at least this (autotuning's ceiling; min and default kept).
    MaxAtLeast(u64),
}

pub struct Rule {
    pub key: &'static str,
    pub want: Want,
    pub why: &'static str,
}

const MIB: u64 = 1 << 20;

pub const RULES: &[Rule] = &[
    Rule {
        key: "net.core.somaxconn",
        want: Want::AtLeast(4096),
        why: "listen backlog for bursts of inbound connections",
    },
    Rule {
        key: "net.ipv4.tcp_max_syn_backlog",
        want: Want::AtLeast(4096),
        why: "half-open inbound connections under load",
    },
    Rule {
        key: "net.ipv4.tcp_tw_reuse",
        // 2 means loopback only: outbound connections to real MX hosts would not reuse ports.
        want: Want::Exactly(1),
        why: "reuse TIME_WAIT ports for outbound connections",
    },
    Rule {
        key: "net.ipv4.tcp_fin_timeout",
        want: Want::AtMost(15),
        why: "free closed outbound sockets sooner",
    },
    Rule {
        key: "net.ipv4.ip_local_port_range",
        want: Want::Range(10_000, 65_535),
        why: "source ports for outbound connections from each VMTA address",
    },
    Rule {
        key: "fs.file-max",
        want: Want::AtLeast(1_048_576),
        why: "sockets and spool files across all cores",
    },
    Rule {
        key: "net.core.netdev_max_backlog",
        want: Want::AtLeast(16_384),
        why: "packets queued per CPU on busy NICs",
    },
    Rule {
        key: "net.core.rmem_max",
        want: Want::AtLeast(16 * MIB),
        why: "receive buffer ceiling for distant receivers",
    },
    Rule {
        key: "net.core.wmem_max",
        want: Want::AtLeast(16 * MIB),
        why: "send buffer ceiling for distant receivers",
    },
    Rule {
        key: "net.ipv4.tcp_rmem",
        want: Want::MaxAtLeast(16 * MIB),
        why: "TCP receive autotuning ceiling",
    },
    Rule {
        key: "net.ipv4.tcp_wmem",
        want: Want::MaxAtLeast(16 * MIB),
        why: "TCP send autotuning ceiling (large bodies to distant MX hosts)",
    },
    Rule {
        key: "vm.dirty_background_ratio",
        want: Want::AtMost(5),
        why: "spool disk: start writeback early so an fdatasync never waits behind a flood",
    },
    Rule {
        key: "vm.dirty_ratio",
        want: Want::AtMost(10),
        why: "spool disk: bound the dirty page cache other writers can pile up",
    },
];

/// The dirty-byte settings that, when set, make the kernel ignore the ratios (and writing a ratio
/// would silently zero them): the ratio rules are skipped then.
pub const DIRTY_BYTES_KEYS: [(&str, &str); 2] = [
    ("vm.dirty_background_ratio", "vm.dirty_background_bytes"),
    ("vm.dirty_ratio", "vm.dirty_bytes"),
];

pub fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn numbers(value: &str) -> Option<Vec<u64>> {
    value.split_whitespace().map(|v| v.parse().ok()).collect()
}

impl Want {
    /// The value to write instead of `current` (None: already good, or unparsable).
    pub fn target(self, current: &str) -> Option<String> {
        let now = numbers(current)?;
        let wanted = match (self, now.as_slice()) {
            (Want::AtLeast(w), [v]) if *v < w => w.to_string(),
            (Want::AtMost(w), [v]) if *v > w => w.to_string(),
            (Want::Exactly(w), [v]) if *v != w => w.to_string(),
            (Want::Range(lo, hi), [a, b]) if *a > lo || *b < hi => {
                format!("{} {}", (*a).min(lo), (*b).max(hi))
            }
            (Want::MaxAtLeast(w), [min, default, max]) if *max < w => {
                format!("{min} {default} {w}")
            }
            _ => return None,
        };
        Some(wanted)
    }

    /// The recommendation as a sysctl.d value.
    pub fn recommended(self) -> String {
        match self {
            Want::AtLeast(w) | Want::AtMost(w) | Want::Exactly(w) => w.to_string(),
            Want::Range(lo, hi) => format!("{lo} {hi}"),
            Want::MaxAtLeast(w) => format!("4096 131072 {w}"),
        }
    }
}

/// Two sysctl values are the same when their numbers are (the kernel prints tabs).
pub fn same(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_only_move_the_good_way() {
        assert_eq!(Want::AtLeast(4096).target("128").as_deref(), Some("4096"));
        assert_eq!(Want::AtLeast(4096).target("65535"), None);
        assert_eq!(Want::AtMost(15).target("60").as_deref(), Some("15"));
        assert_eq!(Want::AtMost(15).target("10"), None);
        assert_eq!(Want::Exactly(1).target("2").as_deref(), Some("1"));
        assert_eq!(Want::Exactly(1).target("1"), None);
        assert_eq!(
            Want::Range(10_000, 65_535)
                .target("32768\t60999")
                .as_deref(),
            Some("10000 65535")
        );
        assert_eq!(
            Want::Range(10_000, 65_535).target("1024 65535").as_deref(),
            None
        );
        assert_eq!(
            Want::MaxAtLeast(16 << 20)
                .target("4096\t16384\t4194304")
                .as_deref(),
            Some("4096 16384 16777216")
        );
        assert_eq!(Want::AtLeast(1).target("garbage"), None);
        assert_eq!(Want::AtLeast(1).target("1 2"), None);
    }

    #[test]
    fn every_recommendation_satisfies_its_own_rule() {
        for rule in RULES {
            assert_eq!(
                rule.want.target(&rule.want.recommended()),
                None,
                "{}",
                rule.key
            );
        }
    }

    #[test]
    fn values_compare_by_their_numbers() {
        assert!(same("4096\t16384 4194304", "4096 16384\t4194304\n"));
        assert!(!same("1 2", "1 3"));
    }
}
