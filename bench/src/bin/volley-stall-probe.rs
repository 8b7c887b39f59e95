//! volley-stall-probe: how long a CPU stops running anything of this machine's, the floor under
//! every latency measured on it.
//!
//! A thread pinned to `--cpu` at real-time priority (SCHED_FIFO 90, so nothing in this kernel
//! makes it wait) sleeps `--period-us` again and again and records how late each wake-up is. A
//! late wake-up past `--threshold-us` is a *stall*: on a virtual machine, time the hypervisor
//! gave the virtual CPU to someone else. Such a stall delays whatever else would have run on that
//! CPU by as much, Volley's executor included.
//!
//! It runs until its standard input closes (the benchmark that started it closes the pipe) or
//! `--seconds` pass, then prints one JSON object: the stalls, and what they alone cost messages
//! arriving evenly: the share that waits past 2 ms and 5 ms, and the p99 and p99.9 latency that
//! the stalls alone impose.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Measure how long a CPU stalls (wake-ups of a real-time thread made late)")]
struct Args {
    /// The CPU to watch (where the executor under test runs).
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Sleep between two wake-ups, in microseconds.
    #[arg(long, default_value_t = 1_000)]
    period_us: u64,
    /// A wake-up later than this, in microseconds, counts as a stall.
    #[arg(long, default_value_t = 1_000)]
    threshold_us: u64,
    /// Stop after this many seconds even if standard input stays open.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let stdin_stop = stop.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        stdin_stop.store(true, Ordering::Relaxed);
    });
    let realtime = pin_and_raise(args.cpu);
    let period = Duration::from_micros(args.period_us);
    let threshold = Duration::from_micros(args.threshold_us);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut wakeups = 0u64;
    let mut stalls_us: Vec<u64> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let before = Instant::now();
        std::thread::sleep(period);
        let late = before.elapsed().saturating_sub(period);
        wakeups += 1;
        if late > threshold {
            stalls_us.push(late.as_micros() as u64);
        }
    }
    let elapsed_us = started.elapsed().as_micros() as u64;
    let stalled_us: u64 = stalls_us.iter().sum();
    let report = serde_json::json!({
        "cpu": args.cpu,
        "realtime": realtime,
        "seconds": elapsed_us as f64 / 1e6,
        "wakeups": wakeups,
        "stalls": stalls_us.len(),
        "stalled_ms": stalled_us as f64 / 1e3,
        "max_stall_ms": stalls_us.iter().max().copied().unwrap_or(0) as f64 / 1e3,
        "share_past_2ms": share_waiting_past(&stalls_us, elapsed_us, 2_000),
        "share_past_5ms": share_waiting_past(&stalls_us, elapsed_us, 5_000),
        "p99_floor_ms": latency_floor_us(&stalls_us, elapsed_us, 0.01) as f64 / 1e3,
        "p999_floor_ms": latency_floor_us(&stalls_us, elapsed_us, 0.001) as f64 / 1e3,
    });
    println!("{report}");
}

/// Pins this thread to `cpu` and makes it SCHED_FIFO; false when the priority was refused (then
/// the probe also sees this kernel's own scheduling delays, and the report says so).
fn pin_and_raise(cpu: usize) -> bool {
    // SAFETY: plain syscalls on this thread with a zeroed, then filled, cpu_set_t and param.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
        let param = libc::sched_param { sched_priority: 90 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
    }
}

/// The share of evenly arriving work that a set of stalls alone delays by more than `wait_us`:
/// work arriving in the first `stall - wait` of a stall waits longer than `wait`.
fn share_waiting_past(stalls_us: &[u64], elapsed_us: u64, wait_us: u64) -> f64 {
    if elapsed_us == 0 {
        return 0.0;
    }
    let past: u64 = stalls_us.iter().map(|s| s.saturating_sub(wait_us)).sum();
    past as f64 / elapsed_us as f64
}

/// The smallest latency that no more than `share` of evenly arriving work exceeds because of the
/// stalls alone: the p99 (share 0.01) no code on this machine can beat.
fn latency_floor_us(stalls_us: &[u64], elapsed_us: u64, share: f64) -> u64 {
    let longest = stalls_us.iter().max().copied().unwrap_or(0);
    // share_waiting_past falls as the wait grows: the first wait at or under `share`.
    let (mut low, mut high) = (0u64, longest);
    while low < high {
        let mid = low + (high - low) / 2;
        if share_waiting_past(stalls_us, elapsed_us, mid) <= share {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_arriving_in_a_stall_waits_for_what_is_left_of_it() {
        // One 12 ms stall per 100 ms: 10 % of arrivals wait past 2 ms, 7 % past 5 ms.
        let stalls = vec![12_000; 10];
        let elapsed = 1_000_000;
        assert!((share_waiting_past(&stalls, elapsed, 2_000) - 0.10).abs() < 1e-9);
        assert!((share_waiting_past(&stalls, elapsed, 5_000) - 0.07).abs() < 1e-9);
        // 1 % waits past 11 ms: that is the p99 these stalls impose.
        assert_eq!(latency_floor_us(&stalls, elapsed, 0.01), 11_000);
        assert_eq!(latency_floor_us(&stalls, elapsed, 0.001), 11_900);
    }

    #[test]
    fn no_stall_no_floor() {
        assert_eq!(latency_floor_us(&[], 1_000_000, 0.01), 0);
        assert_eq!(share_waiting_past(&[], 1_000_000, 2_000), 0.0);
        assert_eq!(share_waiting_past(&[5_000], 0, 2_000), 0.0);
        // Twenty 1.5 ms stalls: 1 % of the arrivals come in their first 0.5 ms.
        assert_eq!(latency_floor_us(&[1_500; 20], 1_000_000, 0.01), 1_000);
    }
}
