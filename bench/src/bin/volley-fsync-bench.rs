//! volley-fsync-bench: the latency of one small durable write on this disk, the floor under the
//! spool's group commit and so under every 250.
//!
//! Each operation writes `--size` bytes (pwrite, the next offset each time, into a pre-allocated
//! file as the spool's segments are) and then makes it durable with `fdatasync`; the histogram
//! holds the time of the fdatasync alone. Two ways, as `--via` says:
//! - `syscall`: a plain thread calls fdatasync(2): the disk and the kernel, nothing else;
//! - `uring`: a glommio executor issues it through io_uring (`BufferedFile::fdatasync`), as the
//!   spool's committer does, and parks until it completes: adds the io_uring worker hand-off and
//!   the executor's wake-up.
//!
//! Prints one JSON object: count and p50, p90, p99, p99.9 and max in microseconds.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    Syscall,
    Uring,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Measure write + fdatasync latency on the disk holding --dir")]
struct Args {
    /// Directory for the scratch file (put it on the spool's file system).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Write + fdatasync operations measured.
    #[arg(long, default_value_t = 5_000)]
    count: u64,
    /// Bytes written before each fdatasync.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Pause between two operations, in microseconds (0: back to back).
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
    /// Who issues the fdatasync.
    #[arg(long, value_enum, default_value_t = Via::Syscall)]
    via: Via,
}

/// The scratch file: as large as the writes need, allocated up front like a spool segment.
const MAX_FILE_BYTES: u64 = 256 << 20;

fn main() {
    let args = Args::parse();
    let path = args
        .dir
        .join(format!("volley-fsync-bench-{}", std::process::id()));
    let result = measure(&args, &path);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(h) => println!(
            "{{\"via\":\"{:?}\",\"size_bytes\":{},\"interval_us\":{},\"count\":{},\"p50_us\":{},\
             \"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
            args.via,
            args.size,
            args.interval_us,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ),
        Err(e) => {
            eprintln!("volley-fsync-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn measure(args: &Args, path: &Path) -> Result<Histogram<u64>, String> {
    if args.size == 0 {
        return Err("--size must be at least 1".into());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let file_bytes = (args.size as u64)
        .saturating_mul(args.count.max(1))
        .min(MAX_FILE_BYTES);
    // SAFETY: plain syscalls on a valid open fd.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, file_bytes as libc::off_t) };
    if allocated != 0 {
        return Err(format!("fallocate: {}", std::io::Error::last_os_error()));
    }
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    match args.via {
        Via::Syscall => run_syscall(args, &file, file_bytes),
        Via::Uring => {
            let args = args.clone();
            let path = path.to_path_buf();
            glommio::LocalExecutorBuilder::default()
                .name("volley-fsync-bench")
                .spawn(move || async move { run_uring(&args, &path, file_bytes).await })
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|e| e.to_string())?
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// The offset of operation `i`: consecutive, wrapping within the allocated file.
fn offset(args: &Args, i: u64, file_bytes: u64) -> u64 {
    let per_file = (file_bytes / args.size as u64).max(1);
    (i % per_file) * args.size as u64
}

fn run_syscall(args: &Args, file: &File, file_bytes: u64) -> Result<Histogram<u64>, String> {
    let data = vec![b'y'; args.size];
    let mut h = histogram();
    for i in 0..args.count {
        file.write_all_at(&data, offset(args, i, file_bytes))
            .map_err(|e| format!("pwrite: {e}"))?;
        let t = Instant::now();
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        record(&mut h, t.elapsed());
        if args.interval_us > 0 {
            std::thread::sleep(Duration::from_micros(args.interval_us));
        }
    }
    Ok(h)
}

async fn run_uring(args: &Args, path: &Path, file_bytes: u64) -> Result<Histogram<u64>, String> {
    let writer = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let syncer = glommio::io::OpenOptions::new()
        .write(true)
        .buffered_open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let data = vec![b'y'; args.size];
    let mut h = histogram();
    for i in 0..args.count {
        // The spool writes its records with pwrite on the reactor too (into the page cache).
        writer
            .write_all_at(&data, offset(args, i, file_bytes))
            .map_err(|e| format!("pwrite: {e}"))?;
        let t = Instant::now();
        syncer
            .fdatasync()
            .await
            .map_err(|e| format!("fdatasync: {e}"))?;
        record(&mut h, t.elapsed());
        if args.interval_us > 0 {
            glommio::timer::sleep(Duration::from_micros(args.interval_us)).await;
        }
    }
    let _ = syncer.close().await;
    Ok(h)
}
