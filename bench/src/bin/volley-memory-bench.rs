//! volley-memory-bench: the RAM one core holds per queued recipient.
//!
//! Builds, in one process, what the daemon keeps for N queued recipients, through the daemon's own
//! code and types:
//! 1. a real spool (fsync off, in a temporary directory) is filled with N / R messages of R
//!    recipients each, then closed;
//! 2. it is reopened: recovery rebuilds the spool's in-RAM index (live messages, segments) exactly as
//!    at a daemon start, and returns the live messages (id, record location, recipient states);
//! 3. every recovered message is routed the way `placement::route_recovered` does: its envelope is
//!    read back from its record (`SequentialMessages`: CRC-checked, each segment unmapped once
//!    past it), one `Handoff` per destination domain (VMTA `default`) carrying the record's
//!    location, queued with `delivery::queue_handoff`, the function `CoreDelivery` uses: the
//!    message's entry in the `MessageTable` (record location + pending count) and one
//!    `QueuedRecipient` per recipient in `Queues`. The envelope is dropped once the message is
//!    routed, as in the daemon.
//!
//! RSS is read from /proc/self/status before step 2 and after steps 2 and 3, split into RssAnon
//! (heap: what the queues and indexes cost) and RssFile (pages of the spool's segment files mapped
//! by the reader: page cache, which the kernel can drop and read back). Allocator slack is included.

#[path = "../scratch_executor.rs"]
mod scratch_executor;
#[path = "../spool_fill.rs"]
mod spool_fill;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use volley::delivery::{MessageEntry, MessageTable, Queued, queue_handoff};
use volley::envelope::{Envelope, PackedEnvelope, Recipient, domain_of};
use volley::queue::{QueueKey, QueuePolicy, Queues};
use volley::router::Handoff;
use volley::spool::{
    RecipientState, RecoveredMessage, SegmentReader, SequentialMessages, Spool, SpoolConfig,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Measure the RAM Volley holds per queued recipient")]
struct Args {
    /// Queued recipients in total.
    #[arg(long, default_value_t = 1_000_000)]
    recipients: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 2)]
    per_message: usize,
    /// Destination domains the recipients are spread over.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Body size in bytes (on disk only).
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Directory for the spool files (a fresh subdirectory is made and removed).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

fn main() {
    let args = Args::parse();
    let dir = args.dir.clone();
    scratch_executor::run_in_scratch_dir("volley-memory-bench", dir, move |root| run(args, root));
}

fn config(dir: PathBuf) -> SpoolConfig {
    SpoolConfig {
        max_spool_bytes: u64::MAX / 2,
        fsync: false,
        ..SpoolConfig::new(dir, 0)
    }
}

/// A realistic envelope: a VERP-style sender, addresses like `user123456@example-domain-17.com`,
/// a customer name, no ORCPT or ENVID.
fn envelope(args: &Args, n: usize) -> Envelope {
    Envelope {
        sender: format!("bounces-{n:08}@mail.sender-company.com"),
        recipients: (0..args.per_message)
            .map(|r| {
                let k = n * args.per_message + r;
                let domain = (k * 7919) % args.domains.max(1);
                Recipient::new(format!(
                    "user{:06}@example-domain-{domain}.com",
                    k % 1_000_000
                ))
            })
            .collect(),
        customer: "customer-a".into(),
        received_at_s: 1_790_000_000,
        ..Envelope::default()
    }
}

/// Stores `count` messages with 64 concurrent writers.
async fn fill(spool: &Spool, args: &Args, count: usize) -> Result<(), String> {
    let args = args.clone();
    spool_fill::store_concurrently(spool, count, 64, args.body_bytes, move |n| {
        envelope(&args, n)
    })
    .await
}

/// Resident memory from /proc/self/status, in bytes.
#[derive(Clone, Copy, Default)]
struct Resident {
    total: u64,
    /// Anonymous pages: heap and stacks.
    anon: u64,
    /// File-backed pages: here the mapped spool segments (page cache) and the binary.
    file: u64,
    /// The highest RSS so far (VmHWM), fill phase included.
    peak: u64,
}

fn resident() -> Resident {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Resident {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        peak: field("VmHWM:"),
    }
}

fn show(label: &str, r: Resident) {
    println!(
        "{label}: RSS {:.0} MiB (RssAnon {:.0} MiB, RssFile {:.0} MiB)",
        mib(r.total),
        mib(r.anon),
        mib(r.file)
    );
}

/// Routes one recovered message as `placement::route_recovered` and `hand_off_to` do.
fn route(
    reader: &mut SequentialMessages,
    message: RecoveredMessage,
    queues: &mut Queues,
    messages: &mut MessageTable,
    keys: &mut HashMap<String, QueueKey>,
    vmta: &Arc<str>,
) -> Result<u64, String> {
    let stored = reader
        .message(message.id, message.record)
        .map_err(|e| format!("message {}: {e}", message.id))?;
    let envelope = &stored.envelope;
    let mut groups: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for (i, state) in message.states().enumerate() {
        if state != RecipientState::Pending {
            continue;
        }
        groups
            .entry(domain_of(envelope.address(i).unwrap_or("")))
            .or_default()
            .push((i as u32, 0));
    }
    let mut queued = 0;
    for (domain, recipients) in groups {
        let key = keys
            .entry(domain.clone())
            .or_insert_with(|| QueueKey::new(vmta, &domain))
            .clone();
        let handoff = Handoff {
            id: message.id,
            record: message.record,
            vmta: vmta.clone(),
            domain: Arc::from(domain),
            customer: Arc::from(""),
            recipients,
            not_before_s: 0,
            tls_optional: false,
        };
        queued += u64::from(queue_handoff(
            queues,
            messages,
            &key,
            &handoff,
            1_790_000_000,
        ));
    }
    Ok(queued)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

async fn run(args: Args, root: PathBuf) -> Result<(), String> {
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let per_message = args.per_message.max(1);
    let message_count = args.recipients.div_ceil(per_message);
    let dir = root.join("spool");

    let started = Instant::now();
    let (spool, _) = Spool::open(config(dir.clone())).map_err(|e| e.to_string())?;
    fill(&spool, &args, message_count).await?;
    let spool_bytes = spool.stats().spool_bytes;
    spool.close().await.map_err(|e| e.to_string())?;
    drop(spool);
    println!(
        "stored {message_count} messages of {per_message} recipients ({} MiB of segments) in {:.1} s",
        spool_bytes >> 20,
        started.elapsed().as_secs_f64()
    );

    let before = resident();
    let started = Instant::now();
    let (spool, recovered) = Spool::open(config(dir)).map_err(|e| e.to_string())?;
    let recovery_s = started.elapsed().as_secs_f64();
    let recovered_count = recovered.len();
    let after_recovery = resident();

    let started = Instant::now();
    let reader = SegmentReader::new(root.join("spool"));
    let mut records = SequentialMessages::new(&reader);
    let mut queues: Queues = Queues::new(QueuePolicy::default());
    let mut messages = MessageTable::default();
    let vmta: Arc<str> = Arc::from("default");
    let mut keys: HashMap<String, QueueKey> = HashMap::new();
    let mut queued = 0u64;
    for message in recovered {
        queued += route(
            &mut records,
            message,
            &mut queues,
            &mut messages,
            &mut keys,
            &vmta,
        )?;
    }
    drop(keys);
    drop(records);
    let routing_s = started.elapsed().as_secs_f64();
    let queued_state = resident();

    println!(
        "sizes: Envelope {} B, PackedEnvelope {} B, Recipient {} B, MessageEntry {} B, \
         QueuedRecipient {} B",
        size_of::<Envelope>(),
        size_of::<PackedEnvelope>(),
        size_of::<Recipient>(),
        size_of::<MessageEntry>(),
        size_of::<Queued>(),
    );
    println!(
        "recovered {recovered_count} messages in {recovery_s:.2} s, queued {queued} recipients of \
         {} messages in {routing_s:.2} s over {} queues (reader holds {} segment mappings)",
        messages.len(),
        queues.queue_count(),
        reader.cached_maps()
    );
    show("before recovery", before);
    show(
        "after recovery (recovered list + spool index)",
        after_recovery,
    );
    show("queued (spool index + messages + queues)", queued_state);
    println!(
        "peak RSS of the process (VmHWM): {:.0} MiB",
        mib(queued_state.peak)
    );
    let n = queued.max(1) as f64;
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n;
    println!(
        "per queued recipient: {:.0} B RSS delta = {:.0} B RssAnon + {:.0} B RssFile; \
         peak at recovery {:.0} B",
        per(queued_state.total, before.total),
        per(queued_state.anon, before.anon),
        per(queued_state.file, before.file),
        per(after_recovery.total, before.total),
    );
    assert_eq!(queues.len(), queued as usize);
    drop(queues);
    drop(messages);
    spool.close().await.map_err(|e| e.to_string())?;
    Ok(())
}
