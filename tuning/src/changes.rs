//! What `volley-tune apply` would write: each change is one file below `/proc` or `/sys` with the
//! value read now and the value wanted. Sysctls come from `sysctl::RULES`; the CPU frequency
//! governor of each executor CPU becomes `performance`; each planned NIC gets its queue IRQ
//! affinities, XPS and RPS masks from the `Plan`.

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::plan::Plan;
use crate::sysctl;

/// How a file's value is compared: the kernel may print what we wrote differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// Numbers separated by whitespace.
    Numbers,
    /// A CPU list, `0-3,8`.
    CpuList,
    /// A hexadecimal CPU mask.
    CpuMask,
    /// One word, e.g. a governor.
    Word,
}

impl Form {
    pub fn same(self, a: &str, b: &str) -> bool {
        match self {
            Form::Numbers => sysctl::same(a, b),
            Form::CpuList => {
                CpuSet::parse_list(a).is_some_and(|x| Some(x) == CpuSet::parse_list(b))
            }
            Form::CpuMask => {
                CpuSet::parse_mask(a).is_some_and(|x| Some(x) == CpuSet::parse_mask(b))
            }
            Form::Word => a.trim() == b.trim(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The host path (`/proc/sys/...`), below the root given on the command line.
    pub path: String,
    pub before: String,
    pub after: String,
    pub form: Form,
    pub why: String,
}

const PERFORMANCE: &str = "performance";

/// Every change the plan needs on this host, and notes on what was skipped and why.
pub fn wanted(host: &Host, plan: &Plan) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let mut absent = Vec::new();
    for rule in sysctl::RULES {
        let path = sysctl::path(rule.key);
        let Some(now) = host.read(&path) else {
            absent.push(rule.key);
            continue;
        };
        let bytes_set = sysctl::DIRTY_BYTES_KEYS
            .iter()
            .find(|(ratio, _)| *ratio == rule.key)
            .and_then(|(_, bytes)| host.read(&sysctl::path(bytes)).map(|v| (*bytes, v)))
            .filter(|(_, v)| v != "0");
        if let Some((bytes, v)) = bytes_set {
            notes.push(format!(
                "{}: skipped, {bytes} = {v} is in force (the kernel ignores the ratio)",
                rule.key
            ));
            continue;
        }
        if let Some(after) = rule.want.target(&now) {
            changes.push(Change {
                path,
                before: now,
                after,
                form: Form::Numbers,
                why: format!("{}: {}", rule.key, rule.why),
            });
        }
    }
    if !absent.is_empty() {
        notes.push(format!(
            "not on this kernel, skipped: {}",
            absent.join(", ")
        ));
    }
    let mut cpus = plan.executor_cpus.clone();
    cpus.sort();
    cpus.dedup();
    let mut no_cpufreq = Vec::new();
    for cpu in cpus {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq");
        let Some(now) = host.read(&format!("{dir}/scaling_governor")) else {
            no_cpufreq.push(cpu);
            continue;
        };
        let available = host
            .read(&format!("{dir}/scaling_available_governors"))
            .unwrap_or_default();
        if now == PERFORMANCE {
            continue;
        }
        if !available.split_whitespace().any(|g| g == PERFORMANCE) {
            notes.push(format!(
                "CPU {cpu}: no `performance` governor (has: {available}), left at {now}"
            ));
            continue;
        }
        changes.push(Change {
            path: format!("{dir}/scaling_governor"),
            before: now,
            after: PERFORMANCE.into(),
            form: Form::Word,
            why: format!("executor CPU {cpu}: full clock, no ramp-up latency"),
        });
    }
    if !no_cpufreq.is_empty() {
        notes.push(format!(
            "CPUs {}: no cpufreq (a VM, or the firmware owns the clock): governor left alone",
            CpuSet::of(no_cpufreq).to_list()
        ));
    }
    for nic in &plan.nics {
        let name = &nic.nic.name;
        for q in &nic.queues {
            for irq in &q.irqs {
                let path = format!("/proc/irq/{irq}/smp_affinity_list");
                let after = q.cpu.to_string();
                match host.read(&path) {
                    Some(now) if Form::CpuList.same(&now, &after) => {}
                    Some(now) => changes.push(Change {
                        path,
                        before: now,
                        after,
                        form: Form::CpuList,
                        why: format!(
                            "{name} queue {} interrupts on executor CPU {}",
                            q.queue, q.cpu
                        ),
                    }),
                    None => notes.push(format!("{path}: missing, skipped")),
                }
            }
        }
        let masks = nic
            .xps
            .iter()
            .map(|(n, cpus)| (format!("tx-{n}/xps_cpus"), cpus, "sent on by"))
            .chain(
                nic.rps
                    .iter()
                    .map(|(n, cpus)| (format!("rx-{n}/rps_cpus"), cpus, "processed on")),
            );
        for (file, cpus, verb) in masks {
            let path = format!("/sys/class/net/{name}/queues/{file}");
            let after = cpus.to_mask();
            match host.read(&path) {
                Some(now) if Form::CpuMask.same(&now, &after) => {}
                Some(now) => changes.push(Change {
                    path,
                    before: now,
                    after,
                    form: Form::CpuMask,
                    why: format!("{name} {file}: {verb} executor CPUs {}", cpus.to_list()),
                }),
                None => notes.push(format!("{path}: missing, skipped")),
            }
        }
    }
    (changes, notes)
}

pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        out.push_str(&format!(
            "{}: {} -> {}   # {}\n",
            c.path, c.before, c.after, c.why
        ));
    }
    out
}
