//! volley-spool-bench: group-commit throughput and recovery cost of one core's spool.
//!
//! Prints durable commits/s and stored messages/s for N concurrent writers on one executor, the
//! recovery time of a spool of M messages, and the RAM kept per recovered message and recipient
//! (resident-set delta from /proc/self/statm, so allocator slack is included).

#[path = "../scratch_executor.rs"]
mod scratch_executor;
#[path = "../spool_fill.rs"]
mod spool_fill;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use volley::envelope::{Envelope, Recipient};
use volley::spool::{Spool, SpoolConfig};

#[derive(Parser, Debug, Clone)]
#[command(about = "Measure the Volley spool: group commit and recovery")]
struct Args {
    /// Directory for the spool files (a fresh subdirectory is made and removed).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Concurrent writers on the one executor.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Messages stored in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    stores: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 2)]
    recipients: usize,
    /// Skip fdatasync (for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Messages in the spool for the recovery run (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    recovery_messages: usize,
    /// Shorthand for --recovery-messages 1000000.
    #[arg(long)]
    million: bool,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
}

fn main() {
    let mut args = Args::parse();
    if args.million {
        args.recovery_messages = 1_000_000;
    }
    let dir = args.dir.clone();
    scratch_executor::run_in_scratch_dir("volley-spool-bench", dir, move |root| run(args, root));
}

fn config(args: &Args, dir: PathBuf, fsync: bool) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: args.segment_mib << 20,
        max_spool_bytes: u64::MAX / 2,
        fsync,
        ..SpoolConfig::new(dir, 0)
    }
}

fn envelope(args: &Args, n: usize) -> Envelope {
    Envelope {
        sender: format!("bounces+{n}@sender.example"),
        recipients: (0..args.recipients)
            .map(|r| Recipient::new(format!("user{n}.{r}@example.com")))
            .collect(),
        customer: "bench".into(),
        received_at_s: 1_790_000_000,
        ..Envelope::default()
    }
}

/// Stores `count` messages with `writers` concurrent tasks; returns the seconds taken.
async fn fill(spool: &Spool, args: &Args, count: usize, writers: usize) -> Result<f64, String> {
    let started = Instant::now();
    let envelope_args = args.clone();
    spool_fill::store_concurrently(spool, count, writers, args.body_bytes, move |n| {
        envelope(&envelope_args, n)
    })
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

async fn run(args: Args, root: PathBuf) -> Result<(), String> {
    let fsync = !args.no_fsync;
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    // 1. Group commit throughput.
    let dir = root.join("throughput");
    let (spool, _) = Spool::open(config(&args, dir, fsync)).map_err(|e| e.to_string())?;
    let secs = fill(&spool, &args, args.stores, args.writers).await?;
    let stats = spool.stats();
    spool.close().await.map_err(|e| e.to_string())?;
    println!(
        "group commit: {} stores of {} B, {} writers, fsync {}: {:.0} messages/s, {:.0} commits/s, \
         {} fsyncs, {:.1} messages per commit",
        args.stores,
        args.body_bytes,
        args.writers,
        if fsync { "on" } else { "off" },
        args.stores as f64 / secs,
        stats.commits as f64 / secs,
        stats.fsyncs,
        args.stores as f64 / stats.commits.max(1) as f64,
    );

    // 2. Recovery of M messages (written without fsync: only the scan is measured).
    if args.recovery_messages > 0 {
        let dir = root.join("recovery");
        let (spool, _) =
            Spool::open(config(&args, dir.clone(), false)).map_err(|e| e.to_string())?;
        fill(&spool, &args, args.recovery_messages, 64).await?;
        let stored_bytes = spool.stats().spool_bytes;
        spool.close().await.map_err(|e| e.to_string())?;
        drop(spool);
        let rss_before = resident_bytes();
        let started = Instant::now();
        let (spool, recovered) =
            Spool::open(config(&args, dir, false)).map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        let rss_after = resident_bytes();
        let messages = recovered.len().max(1) as f64;
        let delta = rss_after.saturating_sub(rss_before) as f64;
        println!(
            "recovery: {} messages ({} MiB of segments) in {:.3} s ({:.0} messages/s)",
            recovered.len(),
            stored_bytes >> 20,
            secs,
            recovered.len() as f64 / secs
        );
        println!(
            "recovery RAM (RSS delta, recovered list + index): {:.0} B per message, {:.0} B per recipient",
            delta / messages,
            delta / (messages * args.recipients.max(1) as f64)
        );
        drop(recovered);
        spool.close().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
