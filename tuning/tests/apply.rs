//! `volley-tune plan` and `apply --root` against a fake /proc and /sys: a host with 4 CPUs, two
//! four-queue NICs carrying the VMTAs (eth0 names its IRQs `eth0-TxRx-N`; eth1 is a virtio NIC
//! whose MSI vectors are `virtio1-input.N` / `virtio1-output.N`), and a third NIC, eth2, that
//! carries nothing and must not be touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_volley-tune");

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn put(&self, path: &str, text: &str) {
        let p = self.root().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    fn get(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path.trim_start_matches('/')))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Every file below the root with its text.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root(), &mut out);
        out
    }

    fn config(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("volley.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn state(&self) -> PathBuf {
        self.root().join("var/lib/volley-tune/state.json")
    }

    fn run(&self, args: &[&str], config: &Path) -> (i32, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--root")
            .arg(self.root())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

const SYSCTLS: &[(&str, &str)] = &[
    ("net.core.somaxconn", "128"),
    ("net.ipv4.tcp_max_syn_backlog", "512"),
    ("net.ipv4.tcp_tw_reuse", "2"),
    ("net.ipv4.tcp_fin_timeout", "60"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("fs.file-max", "9223372036854775807"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.core.rmem_max", "212992"),
    ("net.core.wmem_max", "212992"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("vm.dirty_background_ratio", "10"),
    ("vm.dirty_ratio", "20"),
    ("vm.dirty_background_bytes", "0"),
    ("vm.dirty_bytes", "0"),
];

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// The two-NIC, four-queue host.
fn fake_host() -> Fake {
    let fake = Fake {
        dir: tempfile::tempdir().unwrap(),
    };
    fake.put("/sys/devices/system/cpu/online", "0-3");
    for cpu in 0..4 {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq");
        fake.put(&format!("{dir}/scaling_governor"), "powersave");
        fake.put(
            &format!("{dir}/scaling_available_governors"),
            "performance powersave",
        );
    }
    for (key, value) in SYSCTLS {
        fake.put(&sysctl_path(key), value);
    }
    let mut interrupts = String::from("           CPU0       CPU1       CPU2       CPU3\n");
    let mut irq = |n: u32, name: &str| {
        interrupts.push_str(&format!(
            "{n:4}:          5          0          0          0  PCI-MSI 524288-edge      {name}\n"
        ));
        fake.put(&format!("/proc/irq/{n}/smp_affinity_list"), "0-3");
    };
    irq(24, "nvme0q0");
    irq(39, "eth0");
    for q in 0..4 {
        irq(40 + q, &format!("eth0-TxRx-{q}"));
        irq(50 + 2 * q, &format!("virtio1-input.{q}"));
        irq(51 + 2 * q, &format!("virtio1-output.{q}"));
        irq(60 + q, &format!("eth2-TxRx-{q}"));
    }
    fake.put("/proc/interrupts", &interrupts);
    for nic in ["eth0", "eth1", "eth2"] {
        std::fs::create_dir_all(fake.root().join(format!("sys/class/net/{nic}/device"))).unwrap();
        for q in 0..4 {
            fake.put(&format!("/sys/class/net/{nic}/queues/rx-{q}/rps_cpus"), "0");
            fake.put(&format!("/sys/class/net/{nic}/queues/tx-{q}/xps_cpus"), "0");
        }
    }
    for irq in 50..58 {
        fake.put(
            &format!("/sys/class/net/eth1/device/msi_irqs/{irq}"),
            "msix",
        );
    }
    std::fs::create_dir_all(fake.root().join("sys/class/net/lo/queues/rx-0")).unwrap();
    fake.put(
        "/ip-addr.json",
        r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1"}]},
            {"ifname":"eth0","addr_info":[{"local":"192.0.2.10"}]},
            {"ifname":"eth1","addr_info":[{"local":"198.51.100.10"},{"local":"198.51.100.11"}]},
            {"ifname":"eth2","addr_info":[{"local":"203.0.113.5"}]}]"#,
    );
    fake
}

fn config_text(cores: usize) -> String {
    format!(
        r#"
[server]
hostname = "mta.example.test"
cores = {cores}
spool_dir = "/var/spool/volley"

[[listener]]
address = "127.0.0.1:2525"

[[vmta]]
name = "v1"
source_ip = "192.0.2.10"
ehlo_hostname = "v1.example.test"

[[vmta]]
name = "v2"
source_ip = "198.51.100.10"
ehlo_hostname = "v2.example.test"

[[vmta]]
name = "v3"
source_ip = "198.51.100.11"
ehlo_hostname = "v3.example.test"

[[pool]]
name = "default"
vmtas = ["v1", "v2", "v3"]
"#
    )
}

/// The `path: before -> after   # why` lines of a dry run.
fn planned(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(|l| {
            let (path, rest) = l.split_once(": ").unwrap();
            let after = rest
                .split(" -> ")
                .nth(1)
                .unwrap()
                .split("   #")
                .next()
                .unwrap();
            (path.to_string(), after.to_string())
        })
        .collect()
}

fn cpus_of_mask(mask: &str) -> Vec<usize> {
    let digits: String = mask.chars().filter(|c| *c != ',').collect();
    let value = u128::from_str_radix(&digits, 16).unwrap();
    (0..128).filter(|b| value & (1 << b) != 0).collect()
}

#[test]
fn plan_puts_each_vmtas_nic_queues_on_its_executor_cores() {
    let fake = fake_host();
    let config = fake.config(&config_text(2));
    let (code, out) = fake.run(&["plan"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("executors: 2"), "{out}");
    assert!(out.contains("vmta v1 192.0.2.10 on eth0"), "{out}");
    assert!(out.contains("vmta v2 198.51.100.10 on eth1"), "{out}");
    assert!(out.contains("vmta v3 198.51.100.11 on eth1"), "{out}");
    assert!(!out.contains("nic eth2"), "eth2 carries no VMTA: {out}");

    // Applied, the fake tree shows where each queue went.
    let (code, out) = fake.run(&["apply", "--write"], &config);
    assert_eq!(code, 0, "{out}");
    let executors = [0usize, 1];
    // Each VMTA's NIC: queue q's interrupts on executor q mod 2, every executor with its own
    // transmit queue, no interrupt on CPUs 2 and 3 (no executor there).
    let nic_irqs = [
        ("eth0", vec![(0, 40), (1, 41), (2, 42), (3, 43)]),
        (
            "eth1",
            (0..4)
                .flat_map(|q| [(q, 50 + 2 * q), (q, 51 + 2 * q)])
                .collect(),
        ),
    ];
    for (nic, irqs) in &nic_irqs {
        for (queue, irq) in irqs {
            let cpu: usize = fake
                .get(&format!("/proc/irq/{irq}/smp_affinity_list"))
                .parse()
                .unwrap();
            assert_eq!(cpu, executors[*queue as usize % 2], "{nic} queue {queue}");
        }
        let mut senders = Vec::new();
        for q in 0..4 {
            let cpus =
                cpus_of_mask(&fake.get(&format!("/sys/class/net/{nic}/queues/tx-{q}/xps_cpus")));
            assert_eq!(cpus, [executors[q % 2]], "{nic} tx-{q}");
            senders.extend(cpus);
        }
        senders.sort();
        senders.dedup();
        assert_eq!(
            senders, executors,
            "{nic}: every executor transmits on its own queue"
        );
    }
    // Not carrying a VMTA: eth2, the NIC's link IRQ and the disk's IRQ stay as they were.
    for irq in [24, 39, 60, 61, 62, 63] {
        assert_eq!(
            fake.get(&format!("/proc/irq/{irq}/smp_affinity_list")),
            "0-3",
            "irq {irq}"
        );
    }
    assert_eq!(fake.get("/sys/class/net/eth2/queues/tx-0/xps_cpus"), "0");
    // Four queues for two executors: no RPS.
    assert_eq!(fake.get("/sys/class/net/eth0/queues/rx-0/rps_cpus"), "0");
    // Executor CPUs get the performance governor, the others are left alone.
    for (cpu, governor) in [
        (0, "performance"),
        (1, "performance"),
        (2, "powersave"),
        (3, "powersave"),
    ] {
        assert_eq!(
            fake.get(&format!(
                "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
            )),
            governor,
            "cpu {cpu}"
        );
    }
}

#[test]
fn dry_run_writes_nothing_write_does_all_of_it_revert_restores_everything() {
    let fake = fake_host();
    let config = fake.config(&config_text(4));
    let before = fake.snapshot();

    // Without a flag, and with --dry-run: the changes are printed, nothing is written.
    let (code, dry) = fake.run(&["apply"], &config);
    assert_eq!(code, 0, "{dry}");
    assert!(dry.contains("# dry run"), "{dry}");
    let (code, dry_explicit) = fake.run(&["apply", "--dry-run"], &config);
    assert_eq!(code, 0, "{dry_explicit}");
    assert_eq!(dry, dry_explicit);
    assert_eq!(fake.snapshot(), before, "a dry run wrote something");
    assert!(!fake.state().exists());

    let changes = planned(&dry);
    let paths: Vec<&str> = changes.iter().map(|(p, _)| p.as_str()).collect();
    // Every sysctl of the fake tree is below its recommendation, but fs.file-max (above it).
    assert!(!paths.iter().any(|p| p.ends_with("file-max")), "{dry}");
    for (key, _) in SYSCTLS
        .iter()
        .filter(|(k, _)| !k.ends_with("_bytes") && *k != "fs.file-max")
    {
        let key_path = sysctl_path(key);
        assert!(
            paths.contains(&key_path.as_str()),
            "{key} not planned:\n{dry}"
        );
    }
    // Four executors: 4 governors, and per NIC 4 queue IRQs (8 on virtio) and 4 XPS masks.
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.ends_with("scaling_governor"))
            .count(),
        4
    );
    assert_eq!(
        paths.iter().filter(|p| p.starts_with("/proc/irq/")).count(),
        12
    );
    assert_eq!(paths.iter().filter(|p| p.ends_with("xps_cpus")).count(), 8);

    // --write: every planned write happens, with the planned value.
    let (code, out) = fake.run(&["apply", "--write"], &config);
    assert_eq!(code, 0, "{out}");
    for (path, after) in &changes {
        let now = fake.get(path);
        assert!(
            now.split_whitespace().eq(after.split_whitespace()),
            "{path}: {now} instead of {after}"
        );
    }
    assert!(fake.state().exists());
    assert_eq!(
        fake.get("/proc/sys/net/ipv4/ip_local_port_range"),
        "10000 65535"
    );
    assert_eq!(
        fake.get("/proc/sys/net/ipv4/tcp_wmem"),
        "4096 16384 16777216"
    );
    assert_eq!(
        fake.get("/proc/sys/fs/file-max"),
        "9223372036854775807",
        "never lowered"
    );
    let changed: Vec<&PathBuf> = before
        .keys()
        .filter(|p| fake.snapshot()[*p] != before[*p])
        .collect();
    assert_eq!(
        changed.len(),
        changes.len(),
        "only the planned files changed"
    );

    // Applied: nothing left to do.
    let (code, again) = fake.run(&["apply"], &config);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("nothing to change"), "{again}");

    // --revert without --write only prints; with it, every original comes back.
    let (code, out) = fake.run(&["apply", "--revert"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("# dry run: {} values to restore", changes.len())),
        "{out}"
    );
    assert_ne!(fake.snapshot(), before);
    let (code, out) = fake.run(&["apply", "--revert", "--write"], &config);
    assert_eq!(code, 0, "{out}");
    let after = fake.snapshot();
    for (path, text) in &before {
        assert_eq!(
            after[path].trim(),
            text.trim(),
            "{} not restored",
            path.display()
        );
    }
    assert!(
        !fake.state().exists(),
        "the state file goes with the revert"
    );
    let (code, out) = fake.run(&["apply", "--revert", "--write"], &config);
    assert_eq!(code, 2, "a second revert has nothing to restore: {out}");
}

#[test]
fn a_second_apply_keeps_the_first_originals() {
    let fake = fake_host();
    let before = fake.snapshot();
    let (code, out) = fake.run(&["apply", "--write"], &fake.config(&config_text(2)));
    assert_eq!(code, 0, "{out}");
    // The configuration changes to four executors: IRQs of queues 2 and 3 move again.
    let (code, out) = fake.run(&["apply", "--write"], &fake.config(&config_text(4)));
    assert_eq!(code, 0, "{out}");
    assert_eq!(fake.get("/proc/irq/43/smp_affinity_list"), "3");
    let (code, out) = fake.run(
        &["apply", "--revert", "--write"],
        &fake.config(&config_text(4)),
    );
    assert_eq!(code, 0, "{out}");
    let after = fake.snapshot();
    for (path, text) in &before {
        assert_eq!(after[path].trim(), text.trim(), "{}", path.display());
    }
}

#[test]
fn single_queue_nic_gets_rps_over_the_executors_and_dirty_bytes_skip_the_ratios() {
    let fake = fake_host();
    for q in 1..4 {
        std::fs::remove_dir_all(
            fake.root()
                .join(format!("sys/class/net/eth0/queues/rx-{q}")),
        )
        .unwrap();
        std::fs::remove_dir_all(
            fake.root()
                .join(format!("sys/class/net/eth0/queues/tx-{q}")),
        )
        .unwrap();
    }
    fake.put("/proc/sys/vm/dirty_bytes", "268435456");
    fake.put("/proc/irq/30/smp_affinity_list", "0-3");
    fake.put(
        "/proc/interrupts",
        "  30:  1 2 3 4  PCI-MSI 1-edge  eth0-TxRx-0\n",
    );
    let config = fake.config(&config_text(2));
    let (code, out) = fake.run(&["apply", "--write"], &config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        cpus_of_mask(&fake.get("/sys/class/net/eth0/queues/rx-0/rps_cpus")),
        [0, 1]
    );
    assert_eq!(
        cpus_of_mask(&fake.get("/sys/class/net/eth0/queues/tx-0/xps_cpus")),
        [0, 1]
    );
    assert_eq!(fake.get("/proc/irq/30/smp_affinity_list"), "0");
    assert!(out.contains("ethtool -L eth0 combined 2"), "{out}");
    assert!(
        out.contains("eth1: no queue interrupts recognised"),
        "{out}"
    );
    assert_eq!(
        fake.get("/proc/sys/vm/dirty_ratio"),
        "20",
        "dirty_bytes is in force"
    );
    assert!(
        out.contains("vm.dirty_ratio: skipped, vm.dirty_bytes = 268435456"),
        "{out}"
    );
    assert_eq!(fake.get("/proc/sys/vm/dirty_background_ratio"), "5");
}

#[test]
fn plan_warns_of_irqbalance_and_of_an_address_on_no_interface() {
    let fake = fake_host();
    fake.put("/proc/812/comm", "irqbalance");
    let text = config_text(2).replace("192.0.2.10", "192.0.2.99");
    let (code, out) = fake.run(&["plan"], &fake.config(&text));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("irqbalance is running"), "{out}");
    assert!(out.contains("IRQBALANCE_BANNED_CPULIST=0-1"), "{out}");
    assert!(
        out.contains("vmta v1: 192.0.2.99 is on no interface"),
        "{out}"
    );
    assert!(!out.contains("nic eth0"), "{out}");
}

#[test]
fn a_bad_configuration_is_refused_with_exit_2() {
    let fake = fake_host();
    let (code, out) = fake.run(&["plan"], &fake.config("[server]\ncores = \"x\"\n"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cores"), "{out}");
}

#[test]
fn a_write_the_kernel_refuses_is_reported_exits_1_and_is_not_in_the_state() {
    let fake = fake_host();
    // A read-only sysctl of the real kernel (mode 0444: even root's write gets EACCES), reading
    // a number above 15: the plan wants tcp_fin_timeout lowered and the write fails.
    let readonly = Path::new("/proc/sys/kernel/cap_last_cap");
    let value: u64 = std::fs::read_to_string(readonly)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(value > 15, "cap_last_cap {value}");
    let fin = fake.root().join("proc/sys/net/ipv4/tcp_fin_timeout");
    std::fs::remove_file(&fin).unwrap();
    std::os::unix::fs::symlink(readonly, &fin).unwrap();
    let config = fake.config(&config_text(2));
    let (code, out) = fake.run(&["apply", "--write"], &config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED /proc/sys/net/ipv4/tcp_fin_timeout"),
        "{out}"
    );
    assert_eq!(
        fake.get("/proc/sys/net/core/somaxconn"),
        "4096",
        "the others are written"
    );
    let state = std::fs::read_to_string(fake.state()).unwrap();
    assert!(!state.contains("tcp_fin_timeout"), "{state}");
    assert!(state.contains("somaxconn"), "{state}");
    let (code, out) = fake.run(&["apply", "--revert", "--write"], &config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(fake.get("/proc/sys/net/core/somaxconn"), "128");
}

#[test]
fn a_vmta_on_the_unspecified_address_plans_every_nic_and_state_goes_where_asked() {
    let fake = fake_host();
    let text = config_text(2)
        .replace("192.0.2.10", "0.0.0.0")
        .replace("198.51.100.10", "0.0.0.0")
        .replace("198.51.100.11", "0.0.0.0");
    let config = fake.config(&text);
    let (code, out) = fake.run(&["plan"], &config);
    assert_eq!(code, 0, "{out}");
    for nic in ["eth0", "eth1", "eth2"] {
        assert!(
            out.contains(&format!("nic {nic}: 4 rx / 4 tx queues")),
            "{out}"
        );
    }
    let state = fake.dir.path().join("elsewhere/state.json");
    let state_arg = state.to_str().unwrap();
    let (code, out) = fake.run(&["apply", "--write", "--state", state_arg], &config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        fake.get("/proc/irq/63/smp_affinity_list"),
        "1",
        "eth2 queue 3"
    );
    assert!(state.exists() && !fake.state().exists());
    let (code, out) = fake.run(
        &["apply", "--revert", "--write", "--state", state_arg],
        &config,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(fake.get("/proc/irq/63/smp_affinity_list"), "0-3");
    assert!(!state.exists());
}

#[test]
fn settings_name_every_sysctl_apply_plans_with_a_value_apply_would_keep() {
    let out = Command::new(BIN).arg("settings").output().unwrap();
    assert!(out.status.success());
    let settings = String::from_utf8_lossy(&out.stdout).into_owned();
    let values: BTreeMap<&str, &str> = settings
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .collect();
    // A fake host already at the recommended values: apply plans no sysctl at all.
    let fake = fake_host();
    for (key, _) in SYSCTLS.iter().filter(|(k, _)| !k.ends_with("_bytes")) {
        let value = values
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in settings:\n{settings}"));
        fake.put(&sysctl_path(key), value);
    }
    let (code, out) = fake.run(&["apply"], &fake.config(&config_text(2)));
    assert_eq!(code, 0, "{out}");
    assert!(
        !planned(&out)
            .iter()
            .any(|(p, _)| p.starts_with("/proc/sys/")),
        "{out}"
    );
}
