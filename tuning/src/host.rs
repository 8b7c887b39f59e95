//! What the host looks like, read from `/proc` and `/sys` below a root (`/`, or a fake tree in
//! the tests): online CPUs, network interfaces with their queues and queue interrupts, and the
//! addresses on each interface.
//!
//! Addresses are not in `/proc` or `/sys`: they come from `ip -j addr` on a real root, and from
//! the file `ip-addr.json` (the same JSON, saved) at the top of any other root.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::cpuset::CpuSet;

/// Interfaces, queues and interrupts read at most this many each: a bound on a directory listing.
const MAX_ENTRIES: usize = 4096;

pub struct Host {
    root: PathBuf,
}

/// A network interface backed by a device (not `lo`, a bridge or a tunnel).
#[derive(Debug, Clone)]
pub struct Nic {
    pub name: String,
    pub rx_queues: usize,
    pub tx_queues: usize,
    /// (queue number, IRQ), in queue order; an IRQ per direction may share a queue number.
    pub queue_irqs: Vec<(usize, u32)>,
}

impl Host {
    pub fn new(root: &Path) -> Host {
        Host {
            root: root.to_path_buf(),
        }
    }

    pub fn is_real(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Where a host path (`/proc/...`) lies below the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// A file's text, trimmed; None when missing or unreadable.
    pub fn read(&self, host_path: &str) -> Option<String> {
        std::fs::read_to_string(self.path(host_path))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn list_dir(&self, host_path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(host_path))
            .map(|entries| {
                entries
                    .flatten()
                    .take(MAX_ENTRIES)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The online CPUs (`/sys/devices/system/cpu/online`); CPU 0 alone when unreadable.
    pub fn online_cpus(&self) -> CpuSet {
        self.read("/sys/devices/system/cpu/online")
            .and_then(|t| CpuSet::parse_list(&t))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| CpuSet::of([0]))
    }

    /// True when an `irqbalance` process runs (it would move the interrupts back).
    pub fn irqbalance_running(&self) -> bool {
        self.list_dir("/proc")
            .iter()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .any(|pid| self.read(&format!("/proc/{pid}/comm")).as_deref() == Some("irqbalance"))
    }

    /// Interfaces with a device behind them, with their queues and queue IRQs.
    pub fn nics(&self) -> Vec<Nic> {
        let interrupts = self.interrupt_names();
        self.list_dir("/sys/class/net")
            .into_iter()
            .filter(|name| self.path(&format!("/sys/class/net/{name}/device")).exists())
            .map(|name| {
                let queues = self.list_dir(&format!("/sys/class/net/{name}/queues"));
                let count = |prefix: &str| queues.iter().filter(|q| q.starts_with(prefix)).count();
                let msi: Vec<u32> = self
                    .list_dir(&format!("/sys/class/net/{name}/device/msi_irqs"))
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                Nic {
                    rx_queues: count("rx-"),
                    tx_queues: count("tx-"),
                    queue_irqs: queue_irqs(&name, &msi, &interrupts),
                    name,
                }
            })
            .collect()
    }

    /// IRQ number to its action name, the last column of `/proc/interrupts`.
    fn interrupt_names(&self) -> BTreeMap<u32, String> {
        let text = std::fs::read_to_string(self.path("/proc/interrupts")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (irq, rest) = line.trim_start().split_once(':')?;
                let irq: u32 = irq.parse().ok()?;
                let name = rest.split_whitespace().last()?;
                Some((irq, name.to_string()))
            })
            .collect()
    }

    /// Each interface's addresses: `ip -j addr` on the real root, `ip-addr.json` elsewhere.
    pub fn addresses(&self) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
        let json = if self.is_real() {
            let out = std::process::Command::new("ip")
                .args(["-j", "addr", "show"])
                .output()
                .map_err(|e| format!("ip -j addr show: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip -j addr show: exit {}", out.status));
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            let path = self.path("/ip-addr.json");
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?
        };
        parse_ip_addr(&json)
    }
}

/// The output of `ip -j addr`: `[{"ifname": "eth0", "addr_info": [{"local": "192.0.2.1"}, ...]}]`.
pub fn parse_ip_addr(json: &str) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip -j addr output: {e}"))?;
    let mut out = BTreeMap::new();
    for link in value.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = link.get("ifname").and_then(|n| n.as_str()) else {
            continue;
        };
        let addresses = link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .map(|infos| {
                infos
                    .iter()
                    .filter_map(|i| i.get("local")?.as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name.to_string(), addresses);
    }
    Ok(out)
}

/// The queue interrupts of interface `nic`: IRQs named `<nic>-...-<n>` (most drivers:
/// `eth0-TxRx-3`, `eth0-rx-3`), or IRQs of the device's MSI vectors named like a queue
/// (`virtio0-input.3`, `mlx5_comp3@pci:...`, `...-TxRx-3`). The trailing number is the queue.
fn queue_irqs(nic: &str, msi: &[u32], interrupts: &BTreeMap<u32, String>) -> Vec<(usize, u32)> {
    let mut found: Vec<(usize, u32)> = interrupts
        .iter()
        .filter_map(|(&irq, name)| {
            let own = name
                .strip_prefix(nic)
                .is_some_and(|rest| rest.starts_with(['-', '_']));
            let device_queue = msi.contains(&irq) && queue_word(name);
            if !own && !device_queue {
                return None;
            }
            Some((queue_number(name)?, irq))
        })
        .collect();
    found.sort();
    found
}

fn queue_word(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["txrx", "rx", "tx", "input", "output", "comp", "fp"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The number at the end of an IRQ name (before an `@pci:...` suffix): its queue.
fn queue_number(name: &str) -> Option<usize> {
    let name = name.split('@').next().unwrap_or(name);
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let stem = &name[..name.len() - digits.len()];
    // `eth0` alone (a link-status IRQ) ends in the interface's own number, not a queue's.
    if digits.is_empty() || !(stem.ends_with(['-', '.', '_']) || stem.ends_with("comp")) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_irqs_are_found_by_name_and_by_msi_vector() {
        let interrupts: BTreeMap<u32, String> = [
            (30, "eth0"),
            (31, "eth0-TxRx-0"),
            (32, "eth0-TxRx-1"),
            (33, "eth1-TxRx-0"),
            (40, "virtio0-config"),
            (41, "virtio0-input.0"),
            (42, "virtio0-output.0"),
            (50, "mlx5_comp1@pci:0000:3b:00.0"),
            (51, "mlx5_async@pci:0000:3b:00.0"),
            (60, "i40e-0000:02:00.0:misc"),
            (61, "i40e-eth5-TxRx-3"),
        ]
        .into_iter()
        .map(|(i, n)| (i, n.to_string()))
        .collect();
        assert_eq!(
            queue_irqs("eth0", &[], &interrupts),
            [(0, 31), (1, 32)],
            "eth0's link IRQ and eth1's queue are not eth0's queues"
        );
        assert_eq!(
            queue_irqs("ens3", &[40, 41, 42], &interrupts),
            [(0, 41), (0, 42)]
        );
        assert_eq!(queue_irqs("ens4", &[50, 51], &interrupts), [(1, 50)]);
        // Renamed from eth5: the MSI vectors still find the queue, not the misc vector.
        assert_eq!(queue_irqs("enp2s0", &[60, 61], &interrupts), [(3, 61)]);
    }

    #[test]
    fn ip_addr_json_gives_addresses_per_interface() {
        let json = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.10"},{"family":"inet6","local":"2001:db8::1"}]},
            {"ifname":"eth1"}]"#;
        let map = parse_ip_addr(json).unwrap();
        assert_eq!(
            map["eth0"],
            [
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert!(map["eth1"].is_empty());
        assert!(parse_ip_addr("not json").is_err());
    }
}
