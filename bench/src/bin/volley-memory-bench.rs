//! volley-memory-bench: the RAM one core holds per queued recipient.
//!
//! Builds, in one process, what the daemon keeps for N queued recipients, through the daemon's own
//! code and types:
//! 1. a real spool (fsync off, in a temporary directory) is filled with N / R messages of R
//!    recipients each, then closed;
//! 2. it is reopened: recovery rebuilds the spool's in-RAM index (live messages, segments) exactly as
//!    at a daemon start, and returns the live messages;
//! 3. every recovered message is handed to the delivery structures the way `placement` does (one
//!    `Handoff` per destination domain, VMTA `default`) and queued with `delivery::queue_handoff`,
//!    the function `CoreDelivery` uses: the message's entry in the `messages` map (with its shared
//!    envelope) and one `QueuedRecipient` per recipient in `Queues`;
//! 4. the recovered list is dropped, as `route_recovered` does.
//!
//! RSS is read from /proc/self/statm before step 2 and after steps 2 and 4; the segment mappings of
//! recovery are gone by then, and the one segment the spool writes to is only touched in its header
//! page. "anon" is resident minus file-backed pages (statm's `shared`). Allocator slack is included.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use glommio::LocalExecutorBuilder;
use volley::delivery::{BodyRef, MessageEntry, Queued, queue_handoff};
use volley::envelope::{Envelope, MessageId, PackedEnvelope, Recipient, domain_of};
use volley::queue::{QueueKey, QueuePolicy, Queues};
use volley::router::Handoff;
use volley::spool::{Spool, SpoolConfig};

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
    let root = args
        .dir
        .join(format!("volley-memory-bench-{}", std::process::id()));
    let result = LocalExecutorBuilder::default()
        .name("memory-bench")
        .spawn({
            let args = args.clone();
            let root = root.clone();
            move || async move { run(args, root).await }
        })
        .expect("executor")
        .join();
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("volley-memory-bench: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("volley-memory-bench: executor failed: {e}");
            std::process::exit(1);
        }
    }
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
    let body = vec![b'x'; args.body_bytes];
    let header = b"Received: from bench by volley; Thu, 1 Jan 2026 00:00:00 +0000\r\n".to_vec();
    let writers = 64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (spool, args, body, header) =
                (spool.clone(), args.clone(), body.clone(), header.clone());
            glommio::spawn_local(async move {
                let mut n = w;
                while n < count {
                    let id = spool.next_id();
                    spool
                        .store(id, &envelope(&args, n), &header, &body)
                        .await
                        .map_err(|e| e.to_string())?;
                    n += writers;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// (resident bytes, resident bytes not backed by files).
fn resident() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let fields: Vec<u64> = statm
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss = fields.get(1).copied().unwrap_or(0) * page;
    let shared = fields.get(2).copied().unwrap_or(0) * page;
    (rss, rss.saturating_sub(shared))
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

    let (rss0, anon0) = resident();
    let started = Instant::now();
    let (spool, recovered) = Spool::open(config(dir)).map_err(|e| e.to_string())?;
    let recovery_s = started.elapsed().as_secs_f64();
    let (rss1, anon1) = resident();

    let started = Instant::now();
    let mut queues: Queues<BodyRef> = Queues::new(QueuePolicy::default());
    let mut messages: HashMap<MessageId, MessageEntry> = HashMap::new();
    let vmta: Arc<str> = Arc::from("default");
    let mut keys: HashMap<String, QueueKey> = HashMap::new();
    let mut queued = 0u64;
    for message in recovered {
        // As `placement::route_recovered` and `hand_off_to`: the envelope packed once, one
        // handoff per destination domain.
        let envelope = Arc::new(PackedEnvelope::new(&message.envelope));
        drop(message.envelope);
        let mut groups: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
        for i in 0..envelope.recipient_count() {
            groups
                .entry(domain_of(envelope.address(i).unwrap_or("")))
                .or_default()
                .push((i as u32, 0));
        }
        for (domain, recipients) in groups {
            let key = keys
                .entry(domain.clone())
                .or_insert_with(|| QueueKey::new(&vmta, &domain))
                .clone();
            let handoff = Handoff {
                id: message.id,
                body: message.body,
                envelope: envelope.clone(),
                vmta: vmta.clone(),
                domain: Arc::from(domain),
                recipients,
                first_queued_s: envelope.received_at_s(),
                not_before_s: 0,
            };
            queued += u64::from(queue_handoff(
                &mut queues,
                &mut messages,
                &key,
                &handoff,
                1_790_000_000,
            ));
        }
    }
    drop(keys);
    let routing_s = started.elapsed().as_secs_f64();
    let (rss2, anon2) = resident();

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
        "recovered {} messages in {recovery_s:.2} s, queued {queued} recipients in {routing_s:.2} s \
         over {} queues",
        messages.len(),
        queues.queue_count()
    );
    println!(
        "RSS before recovery: {:.0} MiB (anon {:.0} MiB)",
        mib(rss0),
        mib(anon0)
    );
    println!(
        "RSS after recovery (recovered list + spool index): {:.0} MiB (anon {:.0} MiB)",
        mib(rss1),
        mib(anon1)
    );
    println!(
        "RSS queued (spool index + messages + queues): {:.0} MiB (anon {:.0} MiB)",
        mib(rss2),
        mib(anon2)
    );
    let n = queued.max(1) as f64;
    println!(
        "per queued recipient: {:.0} B (RSS delta), {:.0} B (anon delta); peak at recovery {:.0} B",
        rss2.saturating_sub(rss0) as f64 / n,
        anon2.saturating_sub(anon0) as f64 / n,
        rss1.saturating_sub(rss0) as f64 / n,
    );
    assert_eq!(queues.len(), queued as usize);
    drop(queues);
    drop(messages);
    spool.close().await.map_err(|e| e.to_string())?;
    Ok(())
}
