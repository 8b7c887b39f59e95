//! `[server] allocator_purge_delay_ms`: with 0, memory a burst freed leaves the process's resident
//! set at once; with -1 (never purge) the allocator keeps it. Its own process, so no other test's
//! allocations move the figures.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const BURST_BYTES: usize = 128 << 20;
const BLOCK_BYTES: usize = 1024;

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon")
}

/// Allocates and touches `BURST_BYTES` in small blocks, then frees them.
fn burst() {
    let blocks: Vec<Box<[u8]>> = (0..BURST_BYTES / BLOCK_BYTES)
        .map(|i| vec![i as u8; BLOCK_BYTES].into_boxed_slice())
        .collect();
    assert_eq!(blocks.len(), BURST_BYTES / BLOCK_BYTES);
    drop(blocks);
    volley::delivery::return_freed_memory();
}

#[test]
fn purge_delay_zero_gives_a_freed_burst_back_and_never_keeps_it() {
    assert_eq!(
        volley::delivery::allocator_purge_delay(),
        1000,
        "mimalloc v3 default"
    );
    let start = rss_anon_kib() as i64;
    let burst_kib = (BURST_BYTES / 1024) as i64;

    volley::delivery::set_allocator_purge_delay(0);
    burst();
    let left = rss_anon_kib() as i64 - start;

    volley::delivery::set_allocator_purge_delay(-1);
    assert_eq!(volley::delivery::allocator_purge_delay(), -1);
    burst();
    let kept = rss_anon_kib() as i64 - start;
    eprintln!("0 ms: {left} KiB left; then never: {kept} KiB kept");
    assert!(
        kept > burst_kib / 2,
        "with -1 the freed burst stays: {kept} KiB"
    );
    assert!(left < burst_kib / 8, "with 0 it goes: {left} KiB");
}
