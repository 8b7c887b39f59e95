//! Which CPU serves which NIC queue. Volley runs one executor per core (`server.cores`), executor
//! `i` pinned to CPU `i % online CPUs` (as `runtime::serve` places them), and places each
//! (VMTA, destination domain) queue on core `router::owner_core(vmta, domain)`: a hash, so every
//! VMTA's queues, connections and source-bound sockets are spread over every executor. A VMTA
//! is therefore not bound to one core; the cores that send from a VMTA's address are all the
//! executors. The plan follows from that:
//! - every queue of a NIC that carries a VMTA (or listener) address gets its interrupts on an
//!   executor CPU (queue `q` on executor `q % executors`), never on a CPU without an executor;
//! - XPS gives each executor CPU its own transmit queue(s) on that NIC, so cores never share one;
//! - a NIC with fewer receive queues than executors gets RPS, spreading receive processing over
//!   the executors its queues cannot reach, and the advice to add queues (`ethtool -L`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use volley::config::Config;

use crate::cpuset::CpuSet;
use crate::host::{Host, Nic};

/// A VMTA and the interface its source address is on.
#[derive(Debug)]
pub struct VmtaPlace {
    pub name: String,
    pub source_ip: IpAddr,
    /// None: the address is unspecified (the kernel picks by route) or on no interface.
    pub nic: Option<String>,
}

#[derive(Debug)]
pub struct QueuePlan {
    pub queue: usize,
    pub irqs: Vec<u32>,
    /// The executor CPU that takes this queue's interrupts.
    pub cpu: usize,
}

#[derive(Debug)]
pub struct NicPlan {
    pub nic: Nic,
    /// What makes this NIC matter: `vmta v1 192.0.2.10`, `listener 192.0.2.1:25`.
    pub carries: Vec<String>,
    pub queues: Vec<QueuePlan>,
    /// Transmit queue `tx-N` to the executor CPUs that send on it.
    pub xps: Vec<(usize, CpuSet)>,
    /// Receive queue `rx-N` to the CPUs RPS spreads it over (only with fewer queues than executors).
    pub rps: Vec<(usize, CpuSet)>,
}

#[derive(Debug)]
pub struct Plan {
    pub executors: usize,
    /// Executor `i` runs on `executor_cpus[i]`.
    pub executor_cpus: Vec<usize>,
    pub online: CpuSet,
    pub vmtas: Vec<VmtaPlace>,
    pub nics: Vec<NicPlan>,
    /// Things the operator should know or do by hand.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn executor_set(&self) -> CpuSet {
        CpuSet::of(self.executor_cpus.iter().copied())
    }

    pub fn make(config: &Config, host: &Host) -> Result<Plan, String> {
        let online = host.online_cpus();
        let executors = match config.server.cores {
            0 => online.len(),
            n => n,
        };
        // As runtime::serve pins them: Placement::Fixed(index % CPUs).
        let executor_cpus: Vec<usize> = (0..executors).map(|i| i % online.len()).collect();
        let addresses = host.addresses()?;
        let nic_of = |ip: &IpAddr| {
            addresses
                .iter()
                .find(|(_, list)| list.contains(ip))
                .map(|(name, _)| name.clone())
        };
        let mut notes = Vec::new();
        if executors > online.len() {
            notes.push(format!(
                "server.cores = {executors} is more than the {} online CPUs: executors share CPUs",
                online.len()
            ));
        }
        let nics = host.nics();
        let mut carries: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut every_nic = Vec::new();
        let mut vmtas = Vec::new();
        for v in &config.vmtas {
            let nic = if v.source_ip.is_unspecified() {
                every_nic.push(format!("vmta {} {}", v.name, v.source_ip));
                None
            } else {
                let nic = nic_of(&v.source_ip);
                match &nic {
                    Some(n) => carries
                        .entry(n.clone())
                        .or_default()
                        .push(format!("vmta {} {}", v.name, v.source_ip)),
                    None => notes.push(format!(
                        "vmta {}: {} is on no interface (volley cannot send from it)",
                        v.name, v.source_ip
                    )),
                }
                nic
            };
            vmtas.push(VmtaPlace {
                name: v.name.clone(),
                source_ip: v.source_ip,
                nic,
            });
        }
        for l in &config.listeners {
            let ip = l.address.ip();
            if ip.is_unspecified() {
                every_nic.push(format!("listener {}", l.address));
            } else if let Some(nic) = nic_of(&ip) {
                carries
                    .entry(nic)
                    .or_default()
                    .push(format!("listener {}", l.address));
            }
        }
        if !every_nic.is_empty() {
            notes.push(format!(
                "{} on the unspecified address: every NIC is planned",
                every_nic.join(", ")
            ));
            for nic in &nics {
                carries
                    .entry(nic.name.clone())
                    .or_default()
                    .extend(every_nic.iter().cloned());
            }
        }
        let mut planned = Vec::new();
        for nic in nics {
            let Some(what) = carries.remove(&nic.name) else {
                continue;
            };
            planned.push(plan_nic(nic, what, &executor_cpus, &mut notes));
        }
        for (name, what) in carries {
            notes.push(format!(
                "{name} ({}) has no device in /sys/class/net (virtual or loopback): nothing to tune",
                what.join(", ")
            ));
        }
        if host.irqbalance_running() {
            notes.push(format!(
                "irqbalance is running and will move these interrupts: stop it, or set \
                 IRQBALANCE_BANNED_CPULIST={} in /etc/default/irqbalance",
                CpuSet::of(executor_cpus.iter().copied()).to_list()
            ));
        }
        Ok(Plan {
            executors,
            executor_cpus,
            online,
            vmtas,
            nics: planned,
            notes,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "executors: {} (executor i on CPU i mod {}): CPUs {} of online {}",
            self.executors,
            self.online.len(),
            self.executor_set().to_list(),
            self.online.to_list()
        );
        let _ = writeln!(
            out,
            "  every (VMTA, domain) queue is on core hash(VMTA, domain) mod {}: each VMTA sends from every executor",
            self.executors
        );
        for v in &self.vmtas {
            let _ = writeln!(
                out,
                "vmta {} {} on {}: executors on CPUs {}",
                v.name,
                v.source_ip,
                v.nic.as_deref().unwrap_or("(route's interface)"),
                self.executor_set().to_list()
            );
        }
        for n in &self.nics {
            let _ = writeln!(
                out,
                "nic {}: {} rx / {} tx queues; carries {}",
                n.nic.name,
                n.nic.rx_queues,
                n.nic.tx_queues,
                n.carries.join(", ")
            );
            for q in &n.queues {
                let irqs: Vec<String> = q.irqs.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    out,
                    "  queue {}: irq {} -> CPU {}",
                    q.queue,
                    irqs.join(","),
                    q.cpu
                );
            }
            for (tx, cpus) in &n.xps {
                let _ = writeln!(out, "  tx-{tx}: sent on by CPUs {} (XPS)", cpus.to_list());
            }
            for (rx, cpus) in &n.rps {
                let _ = writeln!(out, "  rx-{rx}: spread over CPUs {} (RPS)", cpus.to_list());
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// `cpus` (one per executor) shared out over `slots` queues: slot `s` gets the executors
/// `c` with `c % slots == s` when there are fewer slots than executors, else executor `s % n`.
fn slot_cpus(slot: usize, slots: usize, cpus: &[usize]) -> CpuSet {
    if slots >= cpus.len() {
        CpuSet::of([cpus[slot % cpus.len()]])
    } else {
        CpuSet::of(
            cpus.iter()
                .enumerate()
                .filter(|(c, _)| c % slots == slot)
                .map(|(_, cpu)| *cpu),
        )
    }
}

fn plan_nic(nic: Nic, carries: Vec<String>, cpus: &[usize], notes: &mut Vec<String>) -> NicPlan {
    let mut by_queue: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (queue, irq) in &nic.queue_irqs {
        by_queue.entry(*queue).or_default().push(*irq);
    }
    let queues = by_queue
        .into_iter()
        .map(|(queue, irqs)| QueuePlan {
            queue,
            irqs,
            cpu: cpus[queue % cpus.len()],
        })
        .collect::<Vec<_>>();
    if queues.is_empty() {
        notes.push(format!(
            "{}: no queue interrupts recognised in /proc/interrupts: set /proc/irq/N/smp_affinity_list by hand",
            nic.name
        ));
    }
    if nic.rx_queues != cpus.len() && nic.rx_queues > 0 {
        notes.push(format!(
            "{}: {} receive queue(s) for {} executors: `ethtool -L {} combined {}` gives one per executor if the NIC has them (not applied)",
            nic.name,
            nic.rx_queues,
            cpus.len(),
            nic.name,
            cpus.len()
        ));
    }
    let xps = (0..nic.tx_queues)
        .map(|t| (t, slot_cpus(t, nic.tx_queues, cpus)))
        .collect();
    let rps = if nic.rx_queues < cpus.len() {
        (0..nic.rx_queues)
            .map(|r| (r, slot_cpus(r, nic.rx_queues, cpus)))
            .collect()
    } else {
        Vec::new()
    };
    NicPlan {
        nic,
        carries,
        queues,
        xps,
        rps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_share_out_every_executor() {
        let cpus = [0, 1, 2, 3];
        // More queues than executors: one executor each, round robin.
        assert_eq!(slot_cpus(5, 8, &cpus), CpuSet::of([1]));
        // Fewer: every executor lands on exactly one queue.
        assert_eq!(slot_cpus(0, 2, &cpus), CpuSet::of([0, 2]));
        assert_eq!(slot_cpus(1, 2, &cpus), CpuSet::of([1, 3]));
        assert_eq!(slot_cpus(0, 1, &cpus), CpuSet::of(cpus));
    }
}
