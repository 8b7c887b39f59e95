//! volley-stall-probe: how long a CPU stops running anything of this machine's, the floor under
//! every latency measured on it.
//!
//! A thread pinned to `--cpu` at real-time priority (SCHED_FIFO 90, so nothing in this kernel
//! makes it wait) sleeps `--period-us` again and again and records how late each wake-up is. A
//! late wake-up past `--threshold-us` is a *stall*: on a virtual machine, time the hypervisor
//! gave the virtual CPU to someone else. Such a stall delays whatever else would have run on that
//! CPU by as much, Volley's executor included.
//!
//! With several `--cpus`, one such thread watches each, and the report adds up the times when at
//! least one of them was stalled (a message crosses the client's CPU and Volley's).
//!
//! It runs until its standard input closes (the benchmark that started it closes the pipe) or
//! `--seconds` pass, then prints one JSON object: the stalls, and what they alone cost messages
//! arriving evenly: the share that waits past 2 ms and 5 ms, and the p99 and p99.9 latency that
//! the stalls alone impose; the same for each CPU under `cpus`.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Measure how long a CPU stalls (wake-ups of a real-time thread made late)")]
struct Args {
    /// The CPUs to watch, one thread each (e.g. `0,1`: the executor's and the load generator's).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    cpus: Vec<usize>,
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
    let started = Instant::now();
    let watchers: Vec<_> = args
        .cpus
        .iter()
        .map(|&cpu| {
            let stop = stop.clone();
            let (period, threshold) = (args.period_us, args.threshold_us);
            let deadline = started + Duration::from_secs(args.seconds);
            std::thread::spawn(move || watch(cpu, period, threshold, started, deadline, &stop))
        })
        .collect();
    let watched: Vec<Watched> = watchers
        .into_iter()
        .map(|w| w.join().expect("watcher"))
        .collect();
    let elapsed_us = started.elapsed().as_micros() as u64;
    let per_cpu: Vec<_> = watched
        .iter()
        .map(|w| {
            let mut report = summary(&w.stalls, elapsed_us);
            report["cpu"] = w.cpu.into();
            report["realtime"] = w.realtime.into();
            report["wakeups"] = w.wakeups.into();
            report
        })
        .collect();
    let all: Vec<Stall> = watched
        .iter()
        .flat_map(|w| w.stalls.iter().copied())
        .collect();
    let mut report = summary(&union(all), elapsed_us);
    report["seconds"] = (elapsed_us as f64 / 1e6).into();
    report["realtime"] = watched.iter().all(|w| w.realtime).into();
    report["cpus"] = per_cpu.into();
    println!("{report}");
}

/// One stall: from when the wake-up was due to when it came, in µs since the probe started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stall {
    from_us: u64,
    to_us: u64,
}

impl Stall {
    fn length_us(&self) -> u64 {
        self.to_us - self.from_us
    }
}

/// What one CPU's watcher saw.
struct Watched {
    cpu: usize,
    realtime: bool,
    wakeups: u64,
    stalls: Vec<Stall>,
}

fn watch(
    cpu: usize,
    period_us: u64,
    threshold_us: u64,
    started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
) -> Watched {
    let realtime = pin_and_raise(cpu);
    let period = Duration::from_micros(period_us);
    let mut watched = Watched {
        cpu,
        realtime,
        wakeups: 0,
        stalls: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let due = Instant::now() + period;
        std::thread::sleep(period);
        let woke = Instant::now();
        watched.wakeups += 1;
        let late = woke.saturating_duration_since(due).as_micros() as u64;
        if late > threshold_us {
            let to_us = woke.duration_since(started).as_micros() as u64;
            watched.stalls.push(Stall {
                from_us: to_us - late,
                to_us,
            });
        }
    }
    watched
}

/// The times when at least one of the CPUs was stalled: a message whose path crosses both
/// (the client on one, Volley on the other) waits for either.
fn union(mut stalls: Vec<Stall>) -> Vec<Stall> {
    stalls.sort_by_key(|s| s.from_us);
    let mut merged: Vec<Stall> = Vec::with_capacity(stalls.len());
    for stall in stalls {
        match merged.last_mut() {
            Some(last) if stall.from_us <= last.to_us => last.to_us = last.to_us.max(stall.to_us),
            _ => merged.push(stall),
        }
    }
    merged
}

fn summary(stalls: &[Stall], elapsed_us: u64) -> serde_json::Value {
    let lengths: Vec<u64> = stalls.iter().map(Stall::length_us).collect();
    serde_json::json!({
        "stalls": lengths.len(),
        "stalled_ms": lengths.iter().sum::<u64>() as f64 / 1e3,
        "max_stall_ms": lengths.iter().max().copied().unwrap_or(0) as f64 / 1e3,
        "share_past_2ms": share_waiting_past(&lengths, elapsed_us, 2_000),
        "share_past_5ms": share_waiting_past(&lengths, elapsed_us, 5_000),
        "p99_floor_ms": latency_floor_us(&lengths, elapsed_us, 0.01) as f64 / 1e3,
        "p999_floor_ms": latency_floor_us(&lengths, elapsed_us, 0.001) as f64 / 1e3,
    })
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
    fn stalls_of_two_cpus_add_up_where_they_do_not_overlap() {
        let stall = |from_us, to_us| Stall { from_us, to_us };
        let merged = union(vec![
            stall(5_000, 8_000),
            stall(0, 2_000),
            stall(1_000, 3_000),
            stall(8_000, 9_000),
        ]);
        assert_eq!(merged, vec![stall(0, 3_000), stall(5_000, 9_000)]);
        assert_eq!(union(Vec::new()), Vec::new());
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
