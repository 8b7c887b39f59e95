//! volley-suppression-bench: the suppression list at scale, through the daemon's own code
//! (`volley::suppression`): N entries loaded in bulk requests of 1 M through the journal (fsync
//! included, as the API does), then RSS, the lookup time of hits and misses, and a restart (the
//! journal read back).
//!
//!     cargo run --release -p volley-bench --bin volley-suppression-bench -- --entries 10000000
//!
//! Goals (issue 13): 10 M entries in at most 1 GiB RSS, a lookup in at most 1 us, a bulk load of
//! 1 M addresses in at most 5 s.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use volley::suppression::{CoreSuppressions, SuppressionList};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Entries in the list.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Addresses per bulk request.
    #[arg(long, default_value_t = 1_000_000)]
    bulk: u64,
    /// Lookups timed (half hits, half misses).
    #[arg(long, default_value_t = 2_000_000)]
    lookups: u64,
}

/// Resident memory (VmRSS) in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn address(i: u64) -> String {
    format!("recipient{i}@domain{}.example", i % 100_000)
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("volley-suppression-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let _cleanup = RemoveOnDrop(dir.clone());
    let rss_start = rss();
    let list = Arc::new(SuppressionList::open(&dir).expect("list"));
    let mut worst_bulk_s: f64 = 0.0;
    let mut loaded = 0;
    while loaded < args.entries {
        let n = args.bulk.min(args.entries - loaded);
        let batch: Vec<String> = (loaded..loaded + n).map(address).collect();
        let started = Instant::now();
        list.change("customer", &batch, true).expect("bulk load");
        let s = started.elapsed().as_secs_f64();
        worst_bulk_s = worst_bulk_s.max(s);
        loaded += n;
        eprintln!("{loaded} entries, last bulk of {n}: {s:.2} s");
    }
    let rss_loaded = rss();
    let core = CoreSuppressions::new(list.clone());
    let probes: Vec<(String, bool)> = (0..args.lookups)
        .map(|i| {
            let n = fastrand::u64(0..args.entries);
            if i % 2 == 0 {
                (address(n), true)
            } else {
                (address(n + args.entries), false)
            }
        })
        .collect();
    let started = Instant::now();
    let mut found = 0u64;
    for (a, _) in &probes {
        found += u64::from(core.is_suppressed("customer", a));
    }
    let lookup_ns = started.elapsed().as_nanos() as f64 / args.lookups as f64;
    let expected = probes.iter().filter(|p| p.1).count() as u64;
    assert_eq!(found, expected, "every hit found, no miss found");
    drop(core);
    drop(list);
    let started = Instant::now();
    let reopened = SuppressionList::open(&dir).expect("reopen");
    let restart_s = started.elapsed().as_secs_f64();
    assert_eq!(reopened.snapshot().len() as u64, args.entries);
    println!(
        "entries {}: RSS {:.0} MiB for the list (process {:.0} MiB), worst bulk of {} {:.2} s, \
         lookup {:.0} ns (hash included), restart (journal read back) {:.1} s",
        args.entries,
        (rss_loaded.saturating_sub(rss_start)) as f64 / (1 << 20) as f64,
        rss_loaded as f64 / (1 << 20) as f64,
        args.bulk,
        worst_bulk_s,
        lookup_ns,
        restart_s
    );
}
